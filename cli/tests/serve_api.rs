//! `zserver serve --api ADDR --api-key-file F` as an operator runs it: the back end adds a
//! user through the API, a `zserver client listen` logs in as them, and the API pushes to
//! them, sees their session, and disconnects them; a missing key, a wrong one and a short
//! key file are refused.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

#[path = "common/child.rs"]
mod child;
use child::{lines, wait_for, Killed};

#[path = "../../login/tests/support/http.rs"]
mod http;

const KEY: &str = "cli-test-key-0123456789abcdef";

/// `POST /api/CALL` with `body` and `auth` (an `Authorization` value).
fn call(api: SocketAddr, auth: &str, call: &str, body: &str) -> http::Reply {
    let path = format!("/api/{call}");
    http::request(api, "POST", &path, &[("Authorization", auth)], Some(body))
}

#[test]
fn serve_with_the_api_pushes_to_and_disconnects_a_user() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("api.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();

    // A short key is refused at the start, naming the file.
    std::fs::write(dir.join("short.key"), "short").unwrap();
    let short = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--api-key-file")
        .arg(dir.join("short.key"))
        .arg("--data")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&short.stderr);
    assert!(
        !short.status.success() && said.contains("short.key") && said.contains("at least 16"),
        "{said}"
    );
    // --api without a key file is a usage error.
    let keyless = Command::new(BIN)
        .args(["serve", "--api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!keyless.status.success());
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("--api-key-file"));

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .arg("--api-key-file")
        .arg(&key_file)
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
    let server = listening.split(' ').next().unwrap().to_owned();
    let pin = wait_for(&out, "server key fingerprint: ");
    let at = wait_for(&out, "server API on http://");
    let api: SocketAddr = at.split('/').next().unwrap().parse().unwrap();
    let auth = format!("Bearer {KEY}");

    // Without the key, and with a wrong one: 401.
    let none = http::request(api, "POST", "/api/users", &[], Some("{}"));
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        call(api, "Bearer wrong-key-0123456789", "users", "{}").status,
        401
    );

    let added = call(
        api,
        &auth,
        "users/add",
        r#"{"user": "ann", "password": "ann-pw"}"#,
    );
    assert_eq!(added.status, 201, "{added:?}");
    let mut listener = Command::new(BIN)
        .args(["client", "--server", &server, "--pin", &pin])
        .args(["--user", "ann", "--password", "ann-pw", "listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let heard = lines(listener.stdout.take().unwrap());
    let _listener = Killed(listener);
    // Logged in once the API sees the session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let sessions = call(api, &auth, "sessions", r#"{"user": "ann"}"#);
        if sessions.json()["sessions"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sessions:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pushed = call(
        api,
        &auth,
        "push",
        r#"{"to": "ann", "text": "from the back end"}"#,
    );
    assert_eq!(
        pushed.json()["delivered"],
        serde_json::json!(["ann"]),
        "{pushed:?}"
    );
    assert_eq!(
        wait_for(&heard, "message from $server: "),
        "from the back end"
    );
    let gone = call(api, &auth, "disconnect", r#"{"user": "ann"}"#);
    assert_eq!(gone.json()["disconnected"], 1, "{gone:?}");
    assert_eq!(wait_for(&heard, "kicked: "), "disconnected by the server");
    let info = call(api, &auth, "info", "{}");
    assert_eq!(info.status, 200, "{info:?}");
    assert!(info.json()["nodes"][0]["node"].is_string(), "{info:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
