//! `zserver serve --listen-ws ADDR --web DIR` as a user runs it: the WebSocket port serves
//! the web page's files over plain HTTP, and a user on `zserver client --ws` gets a push
//! from a user on TCP through the one server.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

#[path = "common/child.rs"]
mod child;
use child::{lines, wait_for, Killed};

fn client(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("client").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn serve_with_a_websocket_port_and_a_web_page() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let web = dir.join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<title>chat</title>").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen-ws",
            "127.0.0.1:0",
        ])
        .arg("--web")
        .arg(&web)
        .arg("--data")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let _server = Killed(child);
    let tcp = wait_for(&out, "zserver listening on ");
    let tcp = tcp.split(' ').next().unwrap().to_string();
    let ws = wait_for(&out, "WebSocket on ws://");
    let ws = ws.trim_end_matches('/').to_string();
    let pin = wait_for(&out, "server key fingerprint: ");

    let mut http = std::net::TcpStream::connect(&ws).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.ends_with("<title>chat</title>"), "{page}");

    let on_ws = ["--ws", "--server", &ws, "--pin", &pin, "--password", "pw"];
    let on_tcp = ["--server", &tcp, "--pin", &pin, "--password", "pw"];
    client(&[&on_ws[..], &["--user", "web", "register"]].concat());
    client(&[&on_tcp[..], &["--user", "ann", "register"]].concat());
    let mut listener = Command::new(BIN)
        .arg("client")
        .args(on_ws)
        .args(["--user", "web", "listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let heard = lines(listener.stdout.take().unwrap());
    let _listener = Killed(listener);
    // Once `web` is online, a push from `ann` on TCP is delivered to it over WebSocket.
    let mut delivered = false;
    for _ in 0..100 {
        let who = client(&[&on_tcp[..], &["--user", "ann", "who"]].concat());
        if who.lines().any(|l| l == "web") {
            let pushed = client(
                &[
                    &on_tcp[..],
                    &["--user", "ann", "push", "web", "hi from tcp"],
                ]
                .concat(),
            );
            delivered = pushed.contains("delivered to `web`");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(delivered, "web came online and got the push");
    assert_eq!(wait_for(&heard, "message from ann: "), "hi from tcp");
    let _ = std::fs::remove_dir_all(&dir);
}
