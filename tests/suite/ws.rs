//! The WebSocket transport through the facade: one server on TCP and WebSocket at once,
//! clients on both reaching each other, the upgrade's options (origins, static files),
//! and hostile peers on the WebSocket port (garbage, half requests, silence, oversized
//! and text messages, floods from one address). Runs on every back end like the others.
//!
//! The behavioural suites (engine, streams, secure, reconnect, ...) also run over
//! WebSocket as a whole with `ZSERVER_TEST_TRANSPORT=ws` (see `tests/common/mod.rs`).
#![cfg(feature = "ws")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tungstenite::protocol::Message;
use zserver::ws::{max_message, WsOptions};
use zserver::{Bytes, Client, Config, Error, Router, Server};

use crate::common::*;
use zserver::Calls;

/// A server on TCP `addr` that also listens for WebSocket on the same host, with
/// `echo` and `relay` (sends `note` with the payload to every other connection).
async fn dual(addr: &str, config: Config, options: WsOptions) -> (Server, SocketAddr) {
    let me: Arc<OnceLock<Server>> = Arc::new(OnceLock::new());
    let m = me.clone();
    let router = Router::new()
        .console("echo", |_ctx, text: String| async move { Ok(text) })
        .bytes("relay", move |ctx, payload: Bytes| {
            let m = m.clone();
            async move {
                let server = m.get().expect("server set");
                let mut reached = 0u32;
                for conn in server.connections() {
                    if conn.id() != ctx.connection_id() {
                        conn.send_bytes("note", &payload).await?;
                        reached += 1;
                    }
                }
                Ok(Bytes::from(reached.to_le_bytes().to_vec()))
            }
        });
    let server = start_server(addr, router, config).await;
    let ws = server
        .listen_ws(addr, options)
        .await
        .expect("listen on WebSocket");
    assert_ne!(ws.port(), 0);
    assert_ne!(ws.port(), server.local_addr().port());
    let _ = me.set(server.clone());
    (server, ws)
}

/// A client router that records every `note` it is sent.
fn notes() -> (Router, Arc<Watch<Vec<Bytes>>>) {
    let seen = Watch::new(Vec::new());
    let s = seen.clone();
    let router = Router::new().bytes("note", move |_ctx, payload: Bytes| {
        s.update(|v| v.push(payload.clone()));
        async move { Ok(Bytes::new()) }
    });
    (router, seen)
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

async fn ws_client(addr: SocketAddr, router: Router) -> Client {
    within(
        WAIT,
        "WebSocket connect",
        zserver::client().router(router).connect_ws(&ws_url(addr)),
    )
    .await
    .expect("WebSocket connect")
}

// ----- one server, both transports -----------------------------------------------------

/// A TCP client and a WebSocket client of one server push to each other through it.
async fn tcp_and_ws_clients_reach_each_other(addr: &str) {
    let (server, ws) = dual(addr, Config::default(), WsOptions::new()).await;
    let (tcp_router, tcp_seen) = notes();
    let (ws_router, ws_seen) = notes();
    let tcp = connect_client(&server, tcp_router, Config::default()).await;
    let web = ws_client(ws, ws_router).await;
    assert_eq!(web.console("echo", "over ws").await.unwrap(), "over ws");
    until("both connected", || server.connection_count() == 2).await;

    let reached = web
        .call_bytes("relay", b"from the browser side")
        .await
        .unwrap();
    assert_eq!(&reached[..], &1u32.to_le_bytes());
    tcp_seen
        .wait_for("the TCP client gets the push", |v| v.len() == 1)
        .await;
    assert_eq!(&tcp_seen.snapshot()[0][..], b"from the browser side");

    let big = vec![7u8; 3 << 20]; // several WebSocket messages, one frame
    tcp.call_bytes("relay", &big).await.unwrap();
    ws_seen
        .wait_for("the WebSocket client gets the push", |v| v.len() == 1)
        .await;
    assert_eq!(ws_seen.snapshot()[0], big);
    shutdown(&server).await;
}
both!(tcp_and_ws_clients_reach_each_other);

/// The WebSocket client pins the server's key like a TCP one: the wrong key is refused.
async fn ws_client_pins_the_server_key(addr: &str) {
    let (server, ws) = dual(addr, Config::default(), WsOptions::new()).await;
    let pinned = zserver::client()
        .pin_server_key(server.public_key())
        .connect_ws(&ws_url(ws))
        .await
        .expect("the right key");
    assert_eq!(pinned.console("echo", "x").await.unwrap(), "x");
    let wrong = zserver::client()
        .pin_server_key([9; 32])
        .connect_ws(&ws_url(ws))
        .await;
    assert!(matches!(wrong, Err(Error::KeyMismatch { .. })), "{wrong:?}");
    shutdown(&server).await;
}
both!(ws_client_pins_the_server_key);

/// Shutdown stops the WebSocket listener too: no connection is accepted afterwards.
async fn shutdown_closes_the_ws_listener(addr: &str) {
    let (server, ws) = dual(addr, Config::default(), WsOptions::new()).await;
    shutdown(&server).await;
    let after = zserver::client()
        .connect_timeout(Duration::from_secs(2))
        .connect_ws(&ws_url(ws))
        .await;
    assert!(after.is_err(), "connected after shutdown: {after:?}");
    assert!(matches!(
        server.listen_ws(addr, WsOptions::new()).await,
        Err(Error::ShuttingDown)
    ));
}
both!(shutdown_closes_the_ws_listener);

// ----- raw HTTP on the WebSocket port --------------------------------------------------

/// Sends `request` on a fresh socket and reads the whole response (the server closes).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = raw_connect(addr);
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade_request(origin: Option<&str>, host: &str) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET /any/path HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    )
    .into_bytes()
}

/// Reads the status line of the response to an upgrade request (without waiting for
/// the server to close, since a successful upgrade keeps the socket open).
fn upgrade_status(addr: SocketAddr, origin: Option<&str>, host: &str) -> String {
    let mut s = raw_connect(addr);
    s.write_all(&upgrade_request(origin, host)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_string()
}

/// A browser's origin must be the page's own, or listed; a client sending no `Origin`
/// (not a browser) is accepted; `*` accepts any.
async fn origins_are_checked_at_the_upgrade(addr: &str) {
    let options = WsOptions::new().allow_origin("https://chat.example");
    let (server, ws) = dual(addr, Config::default(), options).await;
    let host = ws.to_string();
    let own = format!("http://{host}");
    let statuses = on_thread(move || {
        [
            upgrade_status(ws, None, &host),
            upgrade_status(ws, Some(&own), &host),
            upgrade_status(ws, Some("https://chat.example"), &host),
            upgrade_status(ws, Some("https://evil.example"), &host),
            upgrade_status(ws, Some("null"), &host),
        ]
    })
    .await;
    let ok = "HTTP/1.1 101 Switching Protocols";
    let refused = "HTTP/1.1 403 Forbidden";
    assert_eq!(statuses, [ok, ok, ok, refused, refused]);

    let any = server
        .listen_ws(addr, WsOptions::new().allow_origin("*"))
        .await
        .unwrap();
    let host = any.to_string();
    let status = on_thread(move || upgrade_status(any, Some("https://evil.example"), &host)).await;
    assert_eq!(status, ok);
    shutdown(&server).await;
}
both!(origins_are_checked_at_the_upgrade);

/// RFC 6455 §4.2.2, written by hand here (not by the WebSocket library the server uses): an
/// upgrade with a version other than 13 gets `400` and `Sec-WebSocket-Version: 13`, one
/// without `Sec-WebSocket-Key` gets `400`, both as HTTP answers before the close.
async fn bad_upgrades_get_an_http_error(addr: &str) {
    let (server, ws) = dual(addr, Config::default(), WsOptions::new()).await;
    let host = ws.to_string();
    let (version, keyless) = on_thread(move || {
        let request = String::from_utf8(upgrade_request(None, &host)).unwrap();
        let version = request.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
        let keyless = request.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        (http(ws, version.as_bytes()), http(ws, keyless.as_bytes()))
    })
    .await;
    assert!(version.starts_with("HTTP/1.1 400 "), "{version}");
    assert!(
        version.contains("\r\nSec-WebSocket-Version: 13\r\n"),
        "{version}"
    );
    assert!(keyless.starts_with("HTTP/1.1 400 "), "{keyless}");
    shutdown(&server).await;
}
both!(bad_upgrades_get_an_http_error);

/// RFC 6455 §5.5.1: a Close from the client is answered with a Close, by a client written
/// by hand from the RFC (a masked Close frame, then the server's frames read raw).
async fn a_close_is_answered_with_a_close(addr: &str) {
    let (server, ws) = dual(addr, Config::default(), WsOptions::new()).await;
    let host = ws.to_string();
    let answer = on_thread(move || {
        let mut s = raw_connect(ws);
        s.write_all(&upgrade_request(None, &host)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        // FIN + Close, masked, payload: status 1000.
        let mask = [1u8, 2, 3, 4];
        let payload = [0x03u8, 0xe8];
        let mut frame = vec![0x88, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        // Whatever the server sends until it closes: its first frame must be a Close.
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    })
    .await;
    // The server's frames (unmasked, short here): its preamble in a binary message, then
    // the Close answering ours, echoing its status code.
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= answer.len() && answer[at + 1] < 126 {
        let len = answer[at + 1] as usize;
        frames.push((
            answer[at] & 0x0f,
            answer[at + 2..(at + 2 + len).min(answer.len())].to_vec(),
        ));
        at += 2 + len;
    }
    let close = frames.iter().find(|(op, _)| *op == 0x8);
    assert_eq!(
        close.map(|(_, p)| &p[..2]),
        Some(&[0x03, 0xe8][..]),
        "{answer:02x?}"
    );
    shutdown(&server).await;
}
both!(a_close_is_answered_with_a_close);

/// Plain GETs get the web root's files with their content types; nothing outside it.
async fn static_files_are_served_from_the_web_root(addr: &str) {
    // A directory per test: the runs of every back end and address family share the
    // process, run at once, and each removes its own directory at the end.
    let dir = std::env::temp_dir().join(format!(
        "zserver-web-{}-{}-{}",
        std::process::id(),
        zserver::default_backend(),
        addr.len()
    ));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("js")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>chat</h1>").unwrap();
    std::fs::write(root.join("js/app.js"), "export {};").unwrap();
    std::fs::write(root.join("app.css"), "body{}").unwrap();
    std::fs::write(root.join("app.js.map"), "{}").unwrap();
    std::fs::write(root.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(dir.join("secret.txt"), "outside").unwrap();
    let options = WsOptions::new().web_root(&root);
    let (server, ws) = dual(addr, Config::default(), options).await;
    let responses = on_thread(move || {
        let get = |path: &str| {
            http(
                ws,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
        };
        [
            get("/"),
            get("/js/app.js?v=2"),
            get("/app.css"),
            get("/app.js.map"),
            get("/logo.png"),
            get("/../secret.txt"),
            get("/js/%2e%2e/%2e%2e/secret.txt"),
            get("/missing.html"),
            http(
                ws,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            ),
            http(ws, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ]
    })
    .await;
    let expect_ok = |r: &str, ty: &str, body: &str| {
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains(&format!("Content-Type: {ty}\r\n")), "{r}");
        assert!(r.ends_with(body), "{r}");
    };
    expect_ok(&responses[0], "text/html; charset=utf-8", "<h1>chat</h1>");
    expect_ok(
        &responses[1],
        "text/javascript; charset=utf-8",
        "export {};",
    );
    expect_ok(&responses[2], "text/css; charset=utf-8", "body{}");
    expect_ok(&responses[3], "application/json", "{}");
    expect_ok(&responses[4], "image/png", "\u{fffd}PNG");
    for r in &responses[5..8] {
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(!r.contains("outside"), "{r}");
    }
    assert!(
        responses[8].starts_with("HTTP/1.1 405 "),
        "{}",
        responses[8]
    );
    assert!(
        responses[9].starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        responses[9]
    );
    assert!(responses[9].ends_with("\r\n\r\n"), "HEAD has no body");

    // Without a web root a plain GET is told to upgrade.
    let bare = server.listen_ws(addr, WsOptions::new()).await.unwrap();
    let r = on_thread(move || http(bare, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
    // The server still serves its clients.
    let client = ws_client(ws, Router::new()).await;
    assert_eq!(
        client.console("echo", "still up").await.unwrap(),
        "still up"
    );
    shutdown(&server).await;
    let _ = std::fs::remove_dir_all(&dir);
}
both!(static_files_are_served_from_the_web_root);

// ----- hostile peers -------------------------------------------------------------------

/// A config whose handshake time-out is short, so that silent peers are dropped fast.
fn quick() -> Config {
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_millis(500);
    config
}

/// Runs `hostile` against the WebSocket port while an honest WebSocket client is
/// connected; the hostile connection must be closed and the honest one keep working.
async fn survives(
    server: &Server,
    ws: SocketAddr,
    hostile: impl FnOnce(SocketAddr) -> Result<(), String> + Send + 'static,
) {
    let honest = ws_client(ws, Router::new()).await;
    until("the honest client is registered", || {
        server.connection_count() == 1
    })
    .await;
    let closed = on_thread(move || hostile(ws)).await;
    assert_eq!(
        closed,
        Ok(()),
        "the server must close the hostile connection"
    );
    assert_eq!(honest.console("echo", "fine").await.unwrap(), "fine");
    until("only the honest connection is left", || {
        server.connection_count() == 1
    })
    .await;
    let again = ws_client(ws, Router::new()).await;
    assert_eq!(again.console("echo", "new").await.unwrap(), "new");
}

/// Garbage instead of an HTTP request (here a TCP client's preamble) gets 400 and a close.
async fn garbage_before_the_upgrade_is_refused(addr: &str) {
    let (server, ws) = dual(addr, quick(), WsOptions::new()).await;
    survives(&server, ws, |ws| {
        let mut s = raw_connect(ws);
        s.write_all(&PREAMBLE).unwrap();
        s.write_all(b"\r\n\r\n\x00\xff garbage").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        if text.starts_with("HTTP/1.1 400 ") {
            Ok(())
        } else {
            Err(format!("expected 400, got {text:?}"))
        }
    })
    .await;
    shutdown(&server).await;
}
both!(garbage_before_the_upgrade_is_refused);

/// A request head that never ends gets 431 once it passes the bound, not more memory.
async fn an_endless_request_head_is_cut(addr: &str) {
    let (server, ws) = dual(addr, quick(), WsOptions::new()).await;
    survives(&server, ws, |ws| {
        let mut s = raw_connect(ws);
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        for _ in 0..64 {
            if s.write_all(line.as_bytes()).is_err() {
                break; // closed on us: fine
            }
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        if text.starts_with("HTTP/1.1 431 ") {
            Ok(())
        } else {
            Err(format!("expected 431, got {text:?}"))
        }
    })
    .await;
    shutdown(&server).await;
}
both!(an_endless_request_head_is_cut);

/// Silent sockets and half-sent upgrade requests are dropped at the handshake time-out.
async fn silent_and_half_open_upgrades_time_out(addr: &str) {
    let (server, ws) = dual(addr, quick(), WsOptions::new()).await;
    survives(&server, ws, |ws| {
        let mut silent = raw_connect(ws);
        let mut half = raw_connect(ws);
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: webs")
            .unwrap();
        // Upgraded, then silent: the preamble never comes.
        let mut upgraded = raw_connect(ws);
        upgraded.write_all(&upgrade_request(None, "x")).unwrap();
        for s in [&mut silent, &mut half, &mut upgraded] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            expect_closed(s)?;
        }
        Ok(())
    })
    .await;
    shutdown(&server).await;
}
both!(silent_and_half_open_upgrades_time_out);

/// Opens a WebSocket with a plain tungstenite client on a std socket.
fn raw_ws(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let (ws, _) = tungstenite::client(format!("ws://{addr}/"), raw_connect(addr)).expect("upgrade");
    ws
}

/// Reads messages until the server closes; Err if it keeps the socket open.
fn ws_closed(ws: &mut tungstenite::WebSocket<TcpStream>) -> Result<(), String> {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("still open after the read time-out: {e}"))
            }
            Ok(Message::Close(_)) | Err(_) => return Ok(()),
            Ok(_) => continue,
        }
    }
}

/// A message over the limit, a text message, or bytes that are not WebSocket frames
/// after the upgrade each close that connection alone.
async fn bad_messages_close_the_connection(addr: &str) {
    let (server, ws) = dual(addr, quick(), WsOptions::new()).await;
    survives(&server, ws, |ws| {
        let mut text = raw_ws(ws);
        text.send(Message::text("hello"))
            .map_err(|e| e.to_string())?;
        ws_closed(&mut text)?;

        let mut oversized = raw_ws(ws);
        let huge = vec![0u8; max_message(Config::default().max_frame) + 1];
        // The server may close while the message is still being written.
        let _ = oversized.send(Message::binary(huge));
        ws_closed(&mut oversized)?;

        let mut garbage = raw_ws(ws);
        garbage
            .get_mut()
            .write_all(b"\xff\xff\xff\xff not a frame")
            .unwrap();
        ws_closed(&mut garbage)
    })
    .await;
    until("the protocol errors are counted", || {
        server.stats().totals.errors_in >= 2
    })
    .await;
    shutdown(&server).await;
}
both!(bad_messages_close_the_connection);

/// The protocol's bytes may arrive cut anywhere across messages: a raw WebSocket client
/// sends the preamble and a plain call one byte per message and gets its reply.
async fn message_boundaries_carry_no_meaning(addr: &str) {
    let (server, ws) = dual(addr, Config::plain_trusted_link(), WsOptions::new()).await;
    let reply = on_thread(move || {
        let mut c = raw_ws(ws);
        let plain = *b"ZSRV\x01\x00\x00\x00";
        for byte in plain.iter().chain(ECHO_HI_CALL.iter()) {
            c.send(Message::binary(vec![*byte])).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 8 + ECHO_HI_REPLY.len() {
            match c.read().unwrap() {
                Message::Binary(b) => got.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    })
    .await;
    assert_eq!(&reply[..8], b"ZSRV\x01\x00\x00\x00");
    assert_eq!(&reply[8..], &ECHO_HI_REPLY);
    shutdown(&server).await;
}
both!(message_boundaries_carry_no_meaning);

/// The per-address connection limit counts WebSocket connections like TCP ones.
async fn the_per_ip_limit_applies_to_ws(addr: &str) {
    let mut config = Config::default();
    config.max_connections_per_ip = 2;
    let (server, ws) = dual(addr, config, WsOptions::new()).await;
    let a = ws_client(ws, Router::new()).await;
    let b = ws_client(ws, Router::new()).await;
    let third = zserver::client()
        .connect_timeout(Duration::from_secs(3))
        .connect_ws(&ws_url(ws))
        .await;
    assert!(
        third.is_err(),
        "a third connection from one address: {third:?}"
    );
    assert!(server.stats().connections_refused >= 1);
    assert_eq!(a.console("echo", "a").await.unwrap(), "a");
    assert_eq!(b.console("echo", "b").await.unwrap(), "b");
    shutdown(&server).await;
}
both!(the_per_ip_limit_applies_to_ws);
