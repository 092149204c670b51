//! Running `zserver serve` as an operator does, end to end with the real binary on loopback:
//! the metrics endpoint and health check, the config file, trust on first use in the
//! client, compression chosen by flags, JSON logs with per-connection spans, `--version`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

mod common;
use common::free_addr;

/// A `zserver serve` process; killed when dropped. Its standard error is collected.
struct Served {
    child: Child,
    addr: String,
    fingerprint: String,
    metrics: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics.expect("--metrics"), "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends SIGINT (as Ctrl-C does).
    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT");
    }
}

/// Starts `zserver serve ARGS` and reads its standard output up to the line that tells
/// where it listens (and its metrics line, if `--metrics` is given).
fn serve(args: &[&str]) -> Served {
    serve_env(args, &[])
}

/// [`serve`] with environment variables.
fn serve_env(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wants_metrics = args.contains(&"--metrics");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut fingerprint, mut metrics) = (String::new(), String::new(), None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("zserver listening on ") {
            addr = rest.split(' ').next().unwrap().to_owned();
        } else if let Some(fp) = line.strip_prefix("server key fingerprint: ") {
            fingerprint = fp.to_owned();
            if !wants_metrics {
                break;
            }
        } else if let Some(url) = line.strip_prefix("metrics on http://") {
            metrics = Some(url.trim_end_matches("/metrics").parse().unwrap());
            break;
        }
    }
    // Keep reading, so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert_eq!(
        fingerprint.len(),
        64,
        "serve did not start: {}",
        stderr.lock().unwrap()
    );
    Served {
        child,
        addr,
        fingerprint,
        metrics,
        stderr,
    }
}

fn zserver(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary directory of this test, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zserver-op-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Temp(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GET `path` over HTTP/1.0: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of the sample `series` (name and labels, as written) in a scrape.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{series}` in:\n{scrape}"))
        .parse()
        .unwrap()
}

/// Polls `cond` every 20 ms for up to ten seconds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client invocation as `user` against `served`, pinned to its key.
fn as_user(served: &Served, user: &str, password: &str, rest: &[&str]) -> Output {
    let mut args = vec![
        "client",
        "--server",
        &served.addr,
        "--pin",
        &served.fingerprint,
        "--user",
        user,
        "--password",
        password,
    ];
    args.extend_from_slice(rest);
    zserver(&args)
}

#[test]
fn metrics_move_with_real_traffic_and_health_turns_503_on_shutdown() {
    let temp = Temp::new("metrics");
    let data = temp.path("data");
    let served = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data,
        "--metrics",
        "127.0.0.1:0",
        "--drain-secs",
        "3",
    ]);
    let metrics = served.metrics.unwrap();
    assert_eq!(http_get(metrics, "/health").0, 200);
    assert_eq!(http_get(metrics, "/nope").0, 404);
    let before = served.scrape();
    assert!(
        before.contains("# TYPE zserver_call_duration_seconds histogram"),
        "{before}"
    );
    let tcp = |name: &str| format!("{name}{{transport=\"tcp\"}}");

    ok(zserver(&[
        "user",
        "add",
        "ann",
        "--password",
        "ann-pw",
        "--data",
        &data,
    ]));
    ok(zserver(&[
        "user",
        "add",
        "bob",
        "--password",
        "bob-pw",
        "--data",
        &data,
    ]));
    let file = temp.path("report.bin");
    let size = 200_000;
    std::fs::write(&file, vec![3u8; size]).unwrap();
    let copy = temp.path("copy.bin");
    ok(as_user(&served, "ann", "ann-pw", &["put", &file]));
    ok(as_user(
        &served,
        "ann",
        "ann-pw",
        &["get", "report.bin", "--out", &copy],
    ));
    ok(as_user(&served, "ann", "ann-pw", &["push", "bob", "hello"]));
    fails(as_user(&served, "ann", "wrong", &["ls"]));
    // Garbage instead of a preamble: a failed handshake.
    let mut junk = TcpStream::connect(&served.addr).unwrap();
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = junk.read_to_end(&mut rest);
    // The server counts a failed handshake as it lets the link go, so the junk peer can see
    // the close a moment before the count: wait for it, then read every series at once.
    let failed = tcp("zserver_handshakes_failed_total");
    eventually("the failed handshake counted", || {
        sample(&served.scrape(), &failed) > sample(&before, &failed)
    });
    let mid = served.scrape();
    let moved = |series: &str| sample(&mid, series) - sample(&before, series);

    // Four client connections and the junk one; three logins succeeded, one did not.
    assert_eq!(moved(&tcp("zserver_connections_total")), 4.0 + 1.0, "{mid}");
    assert_eq!(moved(&tcp("zserver_handshakes_failed_total")), 1.0);
    assert_eq!(moved("zserver_logins_total{outcome=\"ok\"}"), 3.0);
    assert_eq!(
        moved("zserver_logins_total{outcome=\"wrong_password\"}"),
        1.0
    );
    assert_eq!(moved("zserver_pushes_total{delivery=\"stored\"}"), 1.0);
    assert_eq!(moved("zserver_stored_messages"), 1.0);
    assert_eq!(
        moved("zserver_transfer_bytes_total{direction=\"up\"}"),
        size as f64
    );
    assert_eq!(
        moved("zserver_transfer_bytes_total{direction=\"down\"}"),
        size as f64
    );
    assert!(moved(&tcp("zserver_bytes_received_total")) > size as f64);
    assert!(moved(&tcp("zserver_bytes_sent_total")) > size as f64);
    // login x4, put, get, push: each a call, upload or download.
    let calls = ["call", "upload", "download"]
        .map(|k| moved(&format!("zserver_calls_total{{kind=\"{k}\"}}")));
    assert_eq!(calls, [5.0, 1.0, 1.0]);
    // Error series appear once an error of their kind and code has happened.
    let failed_calls = "zserver_call_errors_total{kind=\"call\",code=\"handler\"}";
    assert!(!before.contains(failed_calls));
    assert_eq!(sample(&mid, failed_calls), 1.0);
    assert_eq!(moved("zserver_call_duration_seconds_count"), 7.0);
    assert!(moved("zserver_call_duration_seconds_sum") > 0.0);

    // A client that stays: the open-connections gauge goes up, then down. Its login takes
    // the stored message.
    let mut listen = Command::new(BIN)
        .args([
            "client",
            "--server",
            &served.addr,
            "--pin",
            &served.fingerprint,
        ])
        .args(["--user", "bob", "--password", "bob-pw", "listen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(listen.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "message from ann: hello\n");
    let open = |s: &str| sample(s, &tcp("zserver_connections_open"));
    assert_eq!(open(&served.scrape()), open(&before) + 1.0);
    assert_eq!(sample(&served.scrape(), "zserver_stored_messages"), 0.0);
    listen.kill().unwrap();
    listen.wait().unwrap();
    eventually("the listener's connection closed", || {
        open(&served.scrape()) == open(&before)
    });

    // Shutdown: /health answers 503 while draining, then the process exits cleanly.
    assert_eq!(http_get(metrics, "/health").0, 200);
    served.interrupt();
    eventually("/health answers 503", || {
        http_get(metrics, "/health").0 == 503
    });
    let mut served = served;
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{}", served.stderr());
}

#[test]
fn a_config_file_sets_where_the_server_listens_and_flags_win() {
    let temp = Temp::new("config");
    let addr = free_addr();
    let config = temp.path("zserver.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\ndata = \"{}\"\nquota-mib = 1\ncompression = \"lz4\"\n",
            temp.path("data")
        ),
    )
    .unwrap();
    let served = serve(&["--config", &config]);
    assert_eq!(served.addr, addr.to_string());
    // The file's quota (1 MiB) is in force.
    let big = temp.path("big.bin");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    ok(as_user(&served, "ann", "pw-ann", &["register"]));
    let err = String::from_utf8_lossy(&as_user(&served, "ann", "pw-ann", &["put", &big]).stderr)
        .into_owned();
    assert!(err.contains("quota exceeded"), "{err}");
    drop(served);

    let listen = free_addr().to_string();
    let served = serve(&["--config", &config, "--listen", &listen]);
    assert_eq!(served.addr, listen, "the command line wins");
    drop(served);

    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nquota = 5\n").unwrap();
    let err = fails(zserver(&["serve", "--config", &config]));
    assert!(err.contains("unknown key `quota`"), "{err}");
    assert!(err.contains(&config), "names the file: {err}");
}

#[test]
fn a_changed_server_key_is_refused_with_both_fingerprints_until_forgotten() {
    let temp = Temp::new("tofu");
    let known = temp.path("known_servers");
    let listen = free_addr().to_string();
    let first = serve(&["--listen", &listen, "--data", &temp.path("one")]);
    let client = |rest: &[&str]| {
        let mut args = vec!["client", "--server", &listen, "--known-servers", &known];
        args.extend_from_slice(rest);
        zserver(&args)
    };
    let (_, stderr) = ok(client(&[
        "--user",
        "ann",
        "--password",
        "pw-ann",
        "register",
    ]));
    assert!(stderr.contains("recorded its key"), "{stderr}");
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert_eq!(recorded, format!("{listen} {}\n", first.fingerprint));
    // The second connection checks the recorded key, and records nothing more.
    let (_, stderr) = ok(client(&["--user", "ann", "--password", "pw-ann", "login"]));
    assert!(!stderr.contains("recorded"), "{stderr}");
    drop(first);

    // Another server (another key) at the same address.
    let second = serve(&["--listen", &listen, "--data", &temp.path("two")]);
    assert_ne!(second.fingerprint, first_fingerprint(&recorded));
    let err = fails(client(&[
        "--user",
        "ann",
        "--password",
        "pw-ann",
        "register",
    ]));
    for needle in [
        &known,
        &first_fingerprint(&recorded),
        &second.fingerprint,
        &listen,
    ] {
        assert!(err.contains(needle.as_str()), "`{err}` lacks `{needle}`");
    }
    assert!(err.contains("known --forget"), "{err}");
    // --pin overrides the file.
    ok(client(&[
        "--pin",
        &second.fingerprint,
        "--user",
        "bob",
        "--password",
        "pw-bob",
        "register",
    ]));
    // `known` lists, `known --forget` forgets; then the new key is accepted and recorded.
    let (list, _) = ok(client(&["known"]));
    assert_eq!(list, recorded);
    ok(client(&["known", "--forget", &listen]));
    assert_eq!(ok(client(&["known"])).0, "");
    ok(client(&[
        "--user",
        "ann",
        "--password",
        "pw-ann",
        "register",
    ]));
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("{listen} {}\n", second.fingerprint)
    );
}

fn first_fingerprint(line: &str) -> String {
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn compression_is_negotiated_from_the_flags() {
    let temp = Temp::new("compression");
    let file = temp.path("text.bin");
    std::fs::write(&file, "all work and no play ".repeat(20_000)).unwrap();
    let zstd = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        &temp.path("z"),
        "--compression",
        "zstd",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let plain = serve(&["--listen", "127.0.0.1:0", "--data", &temp.path("p")]);
    let received =
        "zserver_compressed_payload_bytes_total{transport=\"tcp\",direction=\"received\"}";
    let put = |served: &Served, compression: &str| {
        let out = as_user(
            served,
            "ann",
            "pw-ann",
            &["--compression", compression, "put", &file],
        );
        ok(out).1
    };
    ok(as_user(&zstd, "ann", "pw-ann", &["register"]));
    ok(as_user(&plain, "ann", "pw-ann", &["register"]));

    let before = sample(&zstd.scrape(), received);
    assert!(
        put(&zstd, "none").is_empty(),
        "no codec asked, none reported"
    );
    assert_eq!(
        sample(&zstd.scrape(), received),
        before,
        "nothing compressed"
    );
    assert!(put(&zstd, "lz4").contains("payload compression lz4"));
    let after_lz4 = sample(&zstd.scrape(), received);
    assert!(after_lz4 > before, "the upload travelled compressed");
    assert!(put(&zstd, "zstd").contains("payload compression zstd"));
    assert!(sample(&zstd.scrape(), received) > after_lz4);
    // A server that offers nothing: the client's wish is not met.
    assert!(put(&plain, "zstd").contains("payload compression none"));
}

#[test]
fn json_logs_carry_the_connection_and_the_user() {
    let temp = Temp::new("logs");
    let mut served = serve_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            &temp.path("data"),
            "--log-format",
            "json",
        ],
        &[("RUST_LOG", "info,zserver_core=debug")],
    );
    ok(as_user(&served, "ann", "pw-ann", &["register"]));
    ok(as_user(&served, "ann", "pw-ann", &["ls"]));
    served.interrupt();
    served.child.wait().unwrap();
    let logs = served.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "{logs}");
    // The login event names the user in its connection span, with the peer's address.
    let login = lines
        .iter()
        .find(|l| l["fields"]["message"] == "logged in")
        .unwrap_or_else(|| panic!("no login event in {logs}"));
    let conn = &login["spans"][0];
    assert_eq!(conn["name"], "connection", "{login}");
    assert_eq!(conn["user"], "ann", "{login}");
    assert!(conn["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    // Each call's span closes with its command and duration, inside its connection's.
    let ls = lines
        .iter()
        .find(|l| l["span"]["name"] == "call" && l["span"]["command"] == "ls")
        .unwrap_or_else(|| panic!("no call span for `ls` in {logs}"));
    assert_eq!(ls["fields"]["message"], "close");
    assert!(ls["fields"]["time.busy"].is_string(), "{ls}");
    assert_eq!(ls["spans"][0]["user"], "ann", "{ls}");
}

#[test]
fn version_names_the_wire_protocol() {
    let (stdout, _) = ok(zserver(&["--version"]));
    let expected = format!("wire protocol {}", zserver::PROTOCOL_VERSION);
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}
