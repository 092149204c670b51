//! `zserver serve --listen-ws ADDR --tls-cert F --tls-key F`: the WebSocket port speaks TLS
//! (the web page comes over `https://`, with the certificate given), and bad certificate
//! files stop the server with a message naming the file.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

#[path = "common/child.rs"]
mod child;
#[path = "common/tls.rs"]
mod tls;
use child::{lines, wait_for, Killed};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("zserver-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("web")).unwrap();
    dir
}

#[test]
fn the_websocket_port_serves_tls_with_the_given_certificate() {
    let dir = temp_dir("tls");
    std::fs::write(dir.join("web/index.html"), "<title>chat</title>").unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let der = tls::write_cert(&cert, &key);
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen-ws",
            "127.0.0.1:0",
        ])
        .arg("--web")
        .arg(dir.join("web"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--data")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let _server = Killed(child);
    let ws = wait_for(&out, "WebSocket on wss://");
    let ws = ws.trim_end_matches('/').to_string();
    assert_eq!(
        wait_for(&out, "web page from "),
        format!("{} on https://{ws}/", dir.join("web").display())
    );

    let mut conn = tls::open(&ws, &der).expect("TLS with the given certificate");
    let shown = conn.conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(shown, der);
    let page = tls::get(&mut conn, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.ends_with("<title>chat</title>"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_certificate_files_stop_the_server_with_their_name() {
    let dir = temp_dir("tls-bad");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    tls::write_cert(&cert, &key);
    std::fs::write(dir.join("garbage.pem"), "not PEM\n").unwrap();
    let serve = |cert: &std::path::Path, key: &std::path::Path| {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--listen-ws",
                "127.0.0.1:0",
            ])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--data")
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = serve(&dir.join("nope.pem"), &key);
    assert!(
        missing.contains("nope.pem") && missing.contains("certificate"),
        "{missing}"
    );
    let garbage = serve(&dir.join("garbage.pem"), &key);
    assert!(
        garbage.contains("garbage.pem") && garbage.contains("BEGIN CERTIFICATE"),
        "{garbage}"
    );
    let swapped = serve(&cert, &cert);
    assert!(swapped.contains("PRIVATE KEY"), "{swapped}");

    // The flags need each other and a WebSocket port.
    let alone = Command::new(BIN)
        .args(["serve", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&alone.stderr);
    assert!(
        !alone.status.success() && text.contains("--listen-ws"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
