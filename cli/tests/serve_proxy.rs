//! `zserver serve --trusted-proxy CIDR --proxy-protocol` as an operator runs it behind a
//! proxy: two users come through one proxy address, each announced in a PROXY header of
//! its own, and the failed-login limit per address holds one of them back, not both; a
//! client that skips the proxy (no header from a trusted address) is refused.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

#[path = "common/child.rs"]
mod child;
use child::{lines, wait_for, Killed};

/// A proxy on loopback in front of `server`: each connection to it is relayed after a
/// PROXY version 1 header announcing `client`.
fn proxy(server: SocketAddr, client: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for down in listener.incoming() {
            let (Ok(down), Ok(mut up)) = (down, TcpStream::connect(server)) else {
                break;
            };
            let header = format!("PROXY TCP4 {client} 127.0.0.1 5000 {}\r\n", server.port());
            if up.write_all(header.as_bytes()).is_err() {
                continue;
            }
            let (mut down_r, mut up_r) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let mut down_w = down;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down_r, &mut up);
                let _ = up.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up_r, &mut down_w);
                let _ = down_w.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

/// Runs `zserver client` against `server`; its success and what it wrote.
fn client(
    server: SocketAddr,
    pin: &str,
    user: &str,
    password: &str,
    action: &str,
) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("client")
        .args(["--server", &server.to_string(), "--pin", pin])
        .args(["--user", user, "--password", password, action])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn users_behind_one_proxy_are_limited_apart() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trusted-proxy",
            "127.0.0.1/32",
        ])
        .args(["--proxy-protocol", "--max-failed-per-address", "2"])
        .args(["--argon2-memory-kib", "8192", "--argon2-iterations", "1"])
        .arg("--data")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let _server = Killed(child);
    let listening = wait_for(&out, "zserver listening on ");
    let server: SocketAddr = listening.split(' ').next().unwrap().parse().unwrap();
    let trusted = wait_for(&out, "trusted proxies: ");
    assert_eq!(trusted, "127.0.0.1/32 (PROXY header expected)");
    let pin = &wait_for(&out, "server key fingerprint: ");

    let (a, b) = (proxy(server, "192.0.2.1"), proxy(server, "192.0.2.2"));
    for user in ["ann", "bob"] {
        let (ok, text) = client(a, pin, user, "right-pw", "register");
        assert!(ok, "register {user}: {text}");
    }
    // ann's address guesses wrong (at bob's account) until the address-wide bound limits
    // it, even with the right password for another account then.
    for _ in 0..2 {
        let (ok, text) = client(a, pin, "bob", "wrong", "login");
        assert!(
            !ok && text.contains("wrong user name or password"),
            "{text}"
        );
    }
    let (ok, text) = client(a, pin, "ann", "right-pw", "login");
    assert!(!ok && text.contains("too many failed logins"), "{text}");
    // Another client behind the same proxy is not held back.
    let (ok, text) = client(b, pin, "ann", "right-pw", "login");
    assert!(ok, "{text}");
    // Straight to the server from the proxy's address, without a header: refused.
    let (ok, text) = client(server, pin, "ann", "right-pw", "login");
    assert!(!ok, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
