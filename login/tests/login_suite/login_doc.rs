//! Keeps `docs/LOGIN.md` true: every value block's hex must be the postcard encoding of its
//! value in the Rust types, every frame block must be the frame its header line describes,
//! every link into PROTOCOL.md must name one of its sections, and the session transcript is
//! replayed against a real login server, byte for byte.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zserver::internal::frame::{encode, FrameDecoder, Header, DEFAULT_MAX_FRAME};
use zserver::Calls;
use zserver::{Client, ClientBuilder, Error, Outgoing, Router};
use zserver_login::protocol::{
    Credentials, FileInfo, Incoming, NewPassword, PartialUpload, Push, PushReport, Welcome,
    WhoPage, WhoRequest,
};
use zserver_login::{LoginConfig, LoginServer};

/// The stream head of an upload `Call` and a download `Reply` (PROTOCOL.md §5b), as
/// zserver's crate-private `StreamHead` has it; postcard encodes bytes and strings alike.
#[derive(Serialize, Deserialize)]
struct StreamHead {
    total: Option<u64>,
    meta: String,
}

/// The payload of a download `Call` (PROTOCOL.md §5b), as zserver's `WantStream` has it.
#[derive(Serialize, Deserialize)]
struct DownloadRequest {
    offset: u64,
    meta: String,
}

/// A fenced block of the document: its info string (after the backticks) and its lines.
struct Block {
    info: String,
    line: usize,
    lines: Vec<String>,
}

fn document(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in doc.lines().enumerate() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(_), Some(block)) => blocks.push(block),
            (Some(info), None) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    line: i + 1,
                    lines: Vec::new(),
                })
            }
            (None, Some(mut block)) => {
                block.lines.push(line.to_owned());
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    blocks
}

/// Hex bytes, with `|` separators and `#` comments (to the end of a line) ignored.
fn hex(text: &str) -> Vec<u8> {
    text.lines()
        .flat_map(|line| {
            line.split('#')
                .next()
                .unwrap_or_default()
                .split_whitespace()
        })
        .flat_map(|t| t.split('|'))
        .filter(|t| !t.is_empty())
        .map(|t| {
            assert_eq!(t.len(), 2, "`{t}` is not one hex byte");
            u8::from_str_radix(t, 16).unwrap_or_else(|e| panic!("`{t}`: {e}"))
        })
        .collect()
}

/// The first word of `s` and the rest after it (without leading spaces).
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

fn spaced(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that `bytes` is the postcard encoding of the value `json` describes as a `T`, and
/// that it decodes back to that value.
fn check_value<T: Serialize + DeserializeOwned>(json: &str, bytes: &[u8]) -> Result<(), String> {
    let value: T = serde_json::from_str(json).map_err(|e| format!("value `{json}`: {e}"))?;
    let encoded = postcard::to_stdvec(&value).map_err(|e| e.to_string())?;
    if encoded != bytes {
        return Err(format!(
            "`{json}` encodes as\n  {}\nthe document says\n  {}",
            spaced(&encoded),
            spaced(bytes)
        ));
    }
    let decoded: T = postcard::from_bytes(bytes).map_err(|e| format!("does not decode: {e}"))?;
    let (back, given): (serde_json::Value, serde_json::Value) = (
        serde_json::to_value(&decoded).map_err(|e| e.to_string())?,
        serde_json::from_str(json).map_err(|e| e.to_string())?,
    );
    match back == given {
        true => Ok(()),
        false => Err(format!("decodes as {back}, not {given}")),
    }
}

/// Checks that `bytes` decode as exactly one `T` that encodes to them again.
fn check_payload<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), String> {
    let value: T = postcard::from_bytes(bytes).map_err(|e| format!("payload: {e}"))?;
    match postcard::to_stdvec(&value).map_err(|e| e.to_string())? == bytes {
        true => Ok(()),
        false => Err("the payload has bytes after its value".into()),
    }
}

/// Runs `check_value` (with a JSON value) or `check_payload` (without) for the type named
/// `ty`.
fn check_typed(ty: &str, json: Option<&str>, bytes: &[u8]) -> Result<(), String> {
    fn one<T: Serialize + DeserializeOwned>(
        json: Option<&str>,
        bytes: &[u8],
    ) -> Result<(), String> {
        match json {
            Some(json) => check_value::<T>(json, bytes),
            None => check_payload::<T>(bytes),
        }
    }
    match ty {
        "Credentials" => one::<Credentials>(json, bytes),
        "Welcome" => one::<Welcome>(json, bytes),
        "Incoming" => one::<Incoming>(json, bytes),
        "NewPassword" => one::<NewPassword>(json, bytes),
        "String" => one::<String>(json, bytes),
        "WhoRequest" => one::<WhoRequest>(json, bytes),
        "WhoPage" => one::<WhoPage>(json, bytes),
        "Push" => one::<Push>(json, bytes),
        "PushReport" => one::<PushReport>(json, bytes),
        "FileInfo" => one::<FileInfo>(json, bytes),
        "Vec<FileInfo>" => one::<Vec<FileInfo>>(json, bytes),
        "Option<PartialUpload>" => one::<Option<PartialUpload>>(json, bytes),
        "StreamHead" => one::<StreamHead>(json, bytes),
        "DownloadRequest" => one::<DownloadRequest>(json, bytes),
        other => Err(format!("unknown type `{other}`")),
    }
}

/// Checks a frame block: the hex is one whole frame with the header of the first line
/// (and, with a type, a payload of that type).
fn check_frame(ty: Option<&str>, header: &str, bytes: &[u8]) -> Result<(), String> {
    let header: Header<'_> =
        serde_json::from_str(header).map_err(|e| format!("header `{header}`: {e}"))?;
    let mut buf = BytesMut::from(bytes);
    let frame = FrameDecoder::new(DEFAULT_MAX_FRAME)
        .decode(&mut buf)
        .map_err(|e| format!("does not decode: {e}"))?
        .ok_or("not a whole frame")?;
    if !buf.is_empty() {
        return Err(format!("{} bytes after the frame", buf.len()));
    }
    let mut again = BytesMut::new();
    encode(&mut again, &header, &frame.payload, DEFAULT_MAX_FRAME).map_err(|e| e.to_string())?;
    if again[..] != *bytes {
        return Err(format!(
            "{header:?} with that payload encodes as\n  {}",
            spaced(&again)
        ));
    }
    match ty {
        Some(ty) => check_typed(ty, None, &frame.payload),
        None => Ok(()),
    }
}

#[test]
fn every_value_and_frame_in_login_md_is_exact() {
    let doc = document("LOGIN.md");
    let mut failures = Vec::new();
    let (mut values, mut frames) = (0, 0);
    for block in blocks(&doc) {
        let mut words = block.info.split_whitespace();
        let (kind, ty) = (words.next(), words.next());
        let result = match kind {
            Some("postcard") => {
                values += 1;
                let (json, rest) = block.lines.split_first().expect("a value line");
                let ty = ty.expect("`postcard TYPE`");
                check_typed(ty, Some(json), &hex(&rest.join("\n")))
            }
            Some("frame") => {
                frames += 1;
                let (header, rest) = block.lines.split_first().expect("a header line");
                let bytes: Vec<u8> = rest.iter().flat_map(|l| hex(l)).collect();
                check_frame(ty, header, &bytes)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            failures.push(format!("LOGIN.md line {}: {e}", block.line));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The document keeps its examples (a parser that found none would prove nothing).
    assert!(
        values >= 15 && frames >= 4,
        "{values} values, {frames} frames"
    );
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn links_from_login_md_name_existing_sections() {
    let anchors = |doc: &str| -> Vec<String> {
        doc.lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|l| anchor(l.trim_start_matches('#')))
            .collect()
    };
    let (login, protocol) = (document("LOGIN.md"), document("PROTOCOL.md"));
    let (own, theirs) = (anchors(&login), anchors(&protocol));
    let mut links = 0;
    for (target, sections) in [("(PROTOCOL.md#", &theirs), ("(#", &own)] {
        for piece in login.split(target).skip(1) {
            let name = piece.split(')').next().unwrap_or_default();
            assert!(sections.iter().any(|a| a == name), "no section `{name}`");
            links += 1;
        }
    }
    assert!(links >= 10, "only {links} links checked");
}

/// An answer to a call in the transcript.
#[derive(Debug, PartialEq)]
enum Answer {
    Reply(Vec<u8>),
    Stream(Vec<u8>),
    Error(String),
}

/// The error as the transcript writes it: its code, a space, its message.
fn error_line(e: &Error) -> String {
    match e {
        Error::Remote(m) => format!("1 {m}"),
        Error::UnknownCommand(m) => format!("2 {m}"),
        Error::BadRequest(m) => format!("3 {m}"),
        Error::ShuttingDown => "5 the peer is shutting down".into(),
        other => format!("? {other}"),
    }
}

/// One connection of the transcript: the events pushed to it, and its call in flight.
struct Conn {
    client: Client,
    events: async_channel::Receiver<(String, Vec<u8>)>,
    answer: Option<async_channel::Receiver<Answer>>,
}

/// A connection to `server` over TCP, or over WebSocket with `ws`, pinning its key.
async fn connect(server: &LoginServer, ws: bool) -> Conn {
    let (tx, events) = async_channel::unbounded();
    let mut router = Router::new();
    for name in ["message", "kicked"] {
        let tx = tx.clone();
        router = router.bytes(name, move |_ctx, payload: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((name.to_owned(), payload.to_vec())).await;
                Ok::<_, Error>(Vec::new())
            }
        });
    }
    let builder = ClientBuilder::new(zserver::transport("tokio").unwrap())
        .router(router)
        .pin_server_fingerprint(&server.fingerprint())
        .unwrap();
    let client = match ws {
        true => {
            let addr = server.ws_addr().expect("the server listens on WebSocket");
            builder.connect_ws(&format!("ws://{addr}/")).await
        }
        false => builder.connect(server.local_addr()).await,
    }
    .expect("connects");
    Conn {
        client,
        events,
        answer: None,
    }
}

/// Starts the call a `->` line describes (`command HEX`, `upload COMMAND NAME HEX` or
/// `download COMMAND NAME OFFSET`) on its own task, so that events and other connections'
/// lines can be handled while it runs.
fn start(conn: &mut Conn, command: &str, rest: &str) {
    let client = conn.client.clone();
    let (tx, rx) = async_channel::bounded(1);
    let (command, rest) = (command.to_owned(), rest.to_owned());
    let task = async move {
        let answer = match command.as_str() {
            "upload" => {
                let (command, rest) = word(&rest);
                let (name, body) = word(rest);
                let body = Outgoing::bytes(hex(body));
                client
                    .upload(command, name, body)
                    .await
                    .map(|r| Answer::Reply(r.to_vec()))
            }
            "download" => {
                let (command, rest) = word(&rest);
                let (name, offset) = word(rest);
                let offset: u64 = offset.trim().parse().expect("an offset");
                match client.download(command, name, offset).await {
                    Ok(incoming) => incoming
                        .read_all(1 << 20)
                        .await
                        .map(|b| Answer::Stream(b.to_vec())),
                    Err(e) => Err(e),
                }
            }
            _ => client
                .call_bytes(&command, hex(&rest))
                .await
                .map(|r| Answer::Reply(r.to_vec())),
        };
        let _ = tx
            .send(answer.unwrap_or_else(|e| Answer::Error(error_line(&e))))
            .await;
    };
    zserver::transport("tokio")
        .unwrap()
        .runtime()
        .spawn(Box::pin(task));
    assert!(conn.answer.replace(rx).is_none(), "two calls in flight");
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    crate::support::within(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|| panic!("{what}: nothing within 10 s"))
}

/// Replays the transcript `lines` against a fresh server with its data in `dir`, every
/// connection over WebSocket with `ws` (else TCP); how many lines it replayed.
async fn replay(
    lines: Vec<(usize, String)>,
    dir: std::path::PathBuf,
    ws: bool,
) -> Result<usize, String> {
    let transport = zserver::transport("tokio").unwrap();
    let mut config = LoginConfig::new(dir);
    config.ws_listen = ws.then(|| "127.0.0.1:0".parse().unwrap());
    let server = LoginServer::start(transport, "127.0.0.1:0".parse().unwrap(), config)
        .await
        .map_err(|e| e.to_string())?;
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut steps = 0;
    for (n, line) in lines {
        let at = |e: String| format!("LOGIN.md line {n}: {e}\n  {line}");
        let (who, rest) = word(&line);
        let (arrow, rest) = word(rest);
        let (word, after) = word(rest);
        if !conns.contains_key(who) {
            conns.insert(who.to_owned(), connect(&server, ws).await);
        }
        let conn = conns.get_mut(who).expect("just made");
        steps += 1;
        match arrow {
            "->" => start(conn, word, after),
            "<-" => match word {
                "message" | "kicked" => {
                    let (name, payload) = within(&line, conn.events.recv())
                        .await
                        .map_err(|_| at("the connection closed".into()))?;
                    let want = (word.to_owned(), hex(after));
                    if (name.clone(), payload.clone()) != want {
                        return Err(at(format!("got {name} {}", spaced(&payload))));
                    }
                }
                _ => {
                    let rx = conn.answer.take().ok_or_else(|| at("no call".into()))?;
                    let got = within(&line, rx.recv())
                        .await
                        .map_err(|e| at(e.to_string()))?;
                    let want = match word {
                        "reply" => Answer::Reply(hex(after)),
                        "stream" => Answer::Stream(hex(after)),
                        "error" => Answer::Error(after.trim().to_owned()),
                        other => return Err(at(format!("unknown answer `{other}`"))),
                    };
                    if got != want {
                        return Err(at(format!("got {got:?}")));
                    }
                }
            },
            _ => return Err(at("neither `->` nor `<-`".into())),
        }
    }
    if let Some(who) = conns
        .iter()
        .find_map(|(w, c)| c.answer.is_some().then_some(w))
    {
        return Err(format!("`{who}`'s last call has no answer line"));
    }
    server.shutdown().await;
    Ok(steps)
}

#[test]
fn the_session_in_login_md_replays_against_a_real_server_over_tcp_and_websocket() {
    let doc = document("LOGIN.md");
    let session = blocks(&doc)
        .into_iter()
        .find(|b| b.info == "session")
        .expect("a session block");
    // `#` starts a comment, except inside an error's message (those are compared whole).
    let lines: Vec<(usize, String)> = session
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let l = match l.contains(" <- error ") {
                true => l.clone(),
                false => l.split('#').next().unwrap_or_default().to_owned(),
            };
            (session.line + 1 + i, l)
        })
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    for ws in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let replayed = replay(lines.clone(), data, ws);
        let steps = crate::support::run_on("tokio", Duration::from_secs(60), replayed);
        let over = if ws { "WebSocket" } else { "TCP" };
        let steps = steps.unwrap_or_else(|e| panic!("over {over}: {e}"));
        assert!(steps >= 40, "only {steps} steps replayed over {over}");
    }
}
