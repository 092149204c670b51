//! `kill -HUP` on `zserver serve --config FILE` after the file was rewritten: a new channel
//! namespace opens, the TLS certificate files are read again (a new TLS connection sees the
//! new certificate), a changed listen address is reported as needing a restart, and a
//! logged-in client stays connected throughout.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

#[path = "common/child.rs"]
mod child;
#[path = "common/tls.rs"]
mod tls;
use child::{lines, wait_for, Killed};

fn client(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("client").args(args).output().unwrap()
}

fn config(dir: &std::path::Path, ws_port: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nlisten-ws = \"127.0.0.1:{ws_port}\"\n\
         data = \"{data}\"\ntls-cert = \"{cert}\"\ntls-key = \"{key}\"\n\
         [channels.chat]\n{extra}",
        data = dir.join("data").display(),
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

#[test]
fn sighup_reloads_namespaces_and_the_certificate_and_keeps_connections() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("zserver.toml");
    let old = tls::write_cert(&dir.join("cert.pem"), &dir.join("key.pem"));
    std::fs::write(&file, config(&dir, "0", "")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let out = lines(child.stdout.take().unwrap());
    let _server = Killed(child);
    let tcp = wait_for(&out, "zserver listening on ");
    let tcp = tcp.split(' ').next().unwrap().to_string();
    let ws = wait_for(&out, "WebSocket on wss://");
    let ws = ws.trim_end_matches('/').to_string();
    let pin = wait_for(&out, "server key fingerprint: ");

    let on = [
        "--server",
        &tcp,
        "--pin",
        &pin,
        "--user",
        "ann",
        "--password",
        "pw",
    ];
    assert!(client(&[&on[..], &["register"]].concat()).status.success());
    let mut listener = Command::new(BIN)
        .arg("client")
        .args(on)
        .arg("listen")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let heard = lines(listener.stdout.take().unwrap());
    let _listener = Killed(listener);
    let online = || {
        let who = client(&[&on[..], &["who"]].concat());
        String::from_utf8_lossy(&who.stdout)
            .lines()
            .any(|l| l == "ann")
    };
    let mut up = false;
    for _ in 0..100 {
        if online() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "the listener logged in");
    let publish = || client(&[&on[..], &["pub", "news:today", "hello"]].concat());
    assert!(!publish().status.success(), "news: is not a namespace yet");

    // New certificate files and a [channels.news]; a different --listen-ws port too.
    let new = tls::write_cert(&dir.join("cert.pem"), &dir.join("key.pem"));
    std::fs::write(&file, config(&dir, "1", "[channels.news]\n")).unwrap();
    let killed = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(killed.success());
    let applied = wait_for(&out, "reloaded: ");
    assert!(
        applied.contains("channels") && applied.contains("tls-cert"),
        "{applied}"
    );
    let skipped = wait_for(&out, "not reloaded: ");
    assert!(skipped.starts_with("listen-ws"), "{skipped}");

    let published = publish();
    assert!(published.status.success(), "{published:?}");
    let shown = tls::open(&ws, &new).expect("TLS with the new certificate");
    assert_eq!(shown.conn.peer_certificates().unwrap()[0], new);
    assert!(
        tls::open(&ws, &old).is_err(),
        "the old certificate is still served"
    );
    assert!(online(), "the listener stayed connected");
    let pushed = client(&[&on[..], &["push", "ann", "after the reload"]].concat());
    assert!(String::from_utf8_lossy(&pushed.stdout).contains("delivered"));
    assert_eq!(wait_for(&heard, "message from ann: "), "after the reload");
    let _ = std::fs::remove_dir_all(&dir);
}
