//! `zserver serve`, `zserver user` and `zserver client` as a user runs them, on each back
//! end: a real server process on loopback with a temporary data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_zserver");

mod common;
use common::free_addr;

struct Served {
    child: Child,
    addr: String,
    fingerprint: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, backend: &str) -> Served {
    serve_at(data, backend, free_addr().to_string())
}

fn serve_at(data: &Path, backend: &str, addr: String) -> Served {
    serve_with(data, backend, addr, &[])
}

/// `zserver serve` at `addr` with `flags` besides.
fn serve_with(data: &Path, backend: &str, addr: String, flags: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--backend", backend, "--data"])
        .arg(data)
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut fingerprint = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(fp) = line.strip_prefix("server key fingerprint: ") {
            fingerprint = fp.to_owned();
            break;
        }
    }
    assert_eq!(fingerprint.len(), 64, "serve printed its fingerprint");
    Served {
        child,
        addr,
        fingerprint,
    }
}

/// `client` and its flags to reach `served` as `user`, pinned to its key.
fn client_args<'a>(served: &'a Served, user: &'a str, password: &'a str) -> Vec<&'a str> {
    let server = ["--server", &served.addr, "--pin", &served.fingerprint];
    let mut args = vec!["client"];
    args.extend(server);
    args.extend(["--user", user, "--password", password]);
    args
}

fn zserver(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(out: Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "`{stderr}` lacks `{needle}`");
}

#[test]
fn serve_user_and_client_commands_on_every_back_end() {
    for backend in ["tokio", "async-std", "smol"] {
        let dir =
            std::env::temp_dir().join(format!("zserver-cli-{}-{backend}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let data_arg = data.to_str().unwrap();
        let served = serve(&data, backend);
        let as_user = |user: &str, password: &str, rest: &[&str]| {
            let mut args = client_args(&served, user, password);
            args.extend(["--backend", backend]);
            args.extend_from_slice(rest);
            zserver(&args)
        };

        ok(zserver(&[
            "user",
            "add",
            "ann",
            "--password",
            "ann-pw",
            "--data",
            data_arg,
        ]));
        ok(as_user("bob", "bob-pw", &["register"]));
        assert_eq!(
            ok(zserver(&["user", "list", "--data", data_arg])),
            "ann\nbob\n"
        );
        fails(as_user("bob", "x", &["register"]), "already exists");
        fails(
            as_user("ann", "wrong", &["ls"]),
            "wrong user name or password",
        );

        let file = dir.join("report.bin");
        std::fs::write(&file, vec![7u8; 300_000]).unwrap();
        ok(as_user("ann", "ann-pw", &["put", file.to_str().unwrap()]));
        assert!(ok(as_user("ann", "ann-pw", &["ls"])).contains("report.bin"));
        let copy = dir.join("copy.bin");
        ok(as_user(
            "ann",
            "ann-pw",
            &["get", "report.bin", "--out", copy.to_str().unwrap()],
        ));
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap());
        // --resume goes on from a partial copy that is the server's, and downloads again
        // over one that is not (a flipped byte), never keeping a foreign prefix.
        // An existing file is kept unless --force; a download goes to OUT.part first.
        fails(
            as_user(
                "ann",
                "ann-pw",
                &["get", "report.bin", "--out", copy.to_str().unwrap()],
            ),
            "pass --force",
        );
        let resume = [
            "get",
            "report.bin",
            "--resume",
            "--force",
            "--out",
            copy.to_str().unwrap(),
        ];
        let part = dir.join("copy.bin.part");
        let source = std::fs::read(&file).unwrap();
        std::fs::write(&part, &source[..100_000]).unwrap();
        let out = ok(as_user("ann", "ann-pw", &resume));
        assert!(!part.exists(), "renamed into place");
        assert!(
            out.contains("wrote 200000 bytes") && out.contains("after the 100000"),
            "{out}"
        );
        assert_eq!(std::fs::read(&copy).unwrap(), source);
        let mut corrupt = source[..100_000].to_vec();
        corrupt[5] ^= 0xff;
        std::fs::write(&part, corrupt).unwrap();
        let again = as_user("ann", "ann-pw", &resume);
        let said = String::from_utf8_lossy(&again.stderr).into_owned();
        assert!(ok(again).contains("wrote 300000 bytes"));
        assert!(said.contains("was not the server's"), "{said}");
        assert_eq!(std::fs::read(&copy).unwrap(), source);
        fails(
            as_user("ann", "ann-pw", &["get", "../data/zserver.db"]),
            "bad file name",
        );

        assert!(ok(as_user("ann", "ann-pw", &["push", "bob", "see you"])).contains("stored"));
        assert!(ok(as_user("bob", "bob-pw", &["login"])).contains("message from ann: see you"));
        ok(as_user("ann", "ann-pw", &["rm", "report.bin"]));
        assert!(!ok(as_user("ann", "ann-pw", &["ls"])).contains("report.bin"));
        fails(
            zserver(&[
                "client",
                "--server",
                &served.addr,
                "--pin",
                &"00".repeat(32),
                "--user",
                "ann",
                "--password",
                "ann-pw",
                "ls",
            ]),
            "key mismatch",
        );
        drop(served);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `client put` killed (SIGKILL, as a lost connection or a power cut would) in the middle of
/// an upload: the server keeps what it received, and `put --resume` sends only the rest;
/// the stored file is the local one, byte for byte.
#[test]
fn an_upload_killed_midway_goes_on_with_put_resume() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-put-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let served = serve(&data, "tokio");
    let file = dir.join("big.bin");
    let source: Vec<u8> = (0..256u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &source).unwrap();
    let args = |rest: &[&str]| {
        let mut args = client_args(&served, "ann", "ann-pw");
        args.extend_from_slice(rest);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    ok(Command::new(BIN)
        .args(args(&["register"]))
        .output()
        .unwrap());
    let file_arg = file.to_str().unwrap();
    let mut put = Command::new(BIN)
        .args(args(&["put", file_arg]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the server has written 16 MiB of it.
    let user_dir = data.join("files/ann");
    let started = std::time::Instant::now();
    let written = || -> u64 {
        let entries = std::fs::read_dir(&user_dir).into_iter().flatten().flatten();
        entries
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    while written() < 16 << 20 {
        assert!(
            started.elapsed().as_secs() < 60,
            "the upload never got going"
        );
        assert!(
            put.try_wait().unwrap().is_none(),
            "the upload ended too soon"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    put.kill().unwrap();
    put.wait().unwrap();
    // The server keeps the partial once it has seen the connection go and hashed what it
    // received (a read of all of it): a resume asked before that finds none.
    let partials = user_dir.join(".partial");
    let kept_yet = || std::fs::read_dir(&partials).is_ok_and(|mut d| d.next().is_some());
    while !kept_yet() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the server never kept the partial upload"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = ok(Command::new(BIN)
        .args(args(&["put", file_arg, "--resume"]))
        .output()
        .unwrap());
    let kept: u64 = out
        .split("after the ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{out}` does not say it resumed"));
    assert!(kept >= 16 << 20 && kept < source.len() as u64, "{out}");
    assert!(
        out.contains(&format!("({} bytes", source.len() as u64 - kept)),
        "{out}"
    );
    assert!(std::fs::read(user_dir.join("big.bin")).unwrap() == source);
    drop(served);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a newcomer tripped over (issue 27): user commands on a directory without server
/// data, `--server localhost:PORT`, client flags after the action, `push` to several users,
/// to everyone and from standard input, and a password prompt on a terminal.
#[test]
fn the_cli_as_a_newcomer_found_it() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-newcomer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("not-a-server");
    for action in [
        &["list"][..],
        &["add", "ann", "--password", "pw"],
        &["del", "ann"],
    ] {
        let mut args = vec!["user"];
        args.extend_from_slice(action);
        args.extend(["--data", missing.to_str().unwrap()]);
        fails(zserver(&args), "no server data in");
    }
    assert!(!missing.exists(), "nothing was created");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let served = serve_at(&dir.join("data"), "tokio", format!("127.0.0.1:{port}"));
    let server = format!("localhost:{port}");
    // The flags after the action, and a host name.
    let run = |user: &str, action: &[&str], stdin: Option<&[u8]>| {
        let mut args = vec!["client"];
        args.extend_from_slice(action);
        args.extend(["--server", &server, "--pin", &served.fingerprint]);
        args.extend(["--user", user, "--password", "pw"]);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            std::io::Write::write_all(&mut input, bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };
    for user in ["ann", "bob", "cat"] {
        ok(run(user, &["register"], None));
    }
    let out = ok(run("ann", &["push", "bob,cat", "to you two"], None));
    assert!(
        out.contains("`bob` is offline") && out.contains("`cat` is offline"),
        "{out}"
    );
    assert!(ok(run("ann", &["push", "*", "anyone?"], None)).contains("delivered to"));
    // 300 KB: too long for an argument, fine from standard input.
    let long = "x".repeat(300_000);
    let out = ok(run("ann", &["push", "bob", "-"], Some(long.as_bytes())));
    assert!(out.contains("`bob` is offline"), "{out}");
    let heard = ok(run("bob", &["login"], None));
    assert!(heard.contains("message from ann: to you two"), "{heard}");
    assert!(
        heard.contains(&format!("message from ann: {long}")),
        "the long text, whole"
    );
    assert!(ok(run("cat", &["login"], None)).contains("message from ann: to you two"));
    // Errors in a user's words: the server's refusal without the library's wording, the
    // address that refused, a WebSocket client pointed at the TCP port.
    let missing_file = run("ann", &["get", "nope", "--out", "/nonexistent-dir/x"], None);
    let said = String::from_utf8_lossy(&missing_file.stderr).into_owned();
    assert!(
        said.contains("no file `nope`") && !said.contains("handler"),
        "{said}"
    );
    let closed = free_addr().to_string();
    let refused = Command::new(BIN)
        .args([
            "client",
            "login",
            "--server",
            &closed,
            "--user",
            "ann",
            "--password",
            "pw",
        ])
        .output()
        .unwrap();
    fails(refused, &format!("cannot connect to {closed}"));
    let tcp = format!("127.0.0.1:{port}");
    let ws = Command::new(BIN)
        .args([
            "client",
            "login",
            "--ws",
            "--server",
            &tcp,
            "--pin",
            &served.fingerprint,
        ])
        .args(["--user", "ann", "--password", "pw"])
        .output()
        .unwrap();
    fails(ws, "did not answer as a WebSocket server");
    // No password given: asked for on a terminal (util-linux `script` makes one), and
    // without a terminal the error says how to give it.
    let bare = |user: &str| {
        let mut args = vec!["client".to_owned(), "login".into()];
        args.extend(["--server".into(), server.clone(), "--pin".into()]);
        args.extend([served.fingerprint.clone(), "--user".into(), user.into()]);
        args
    };
    let no_tty = Command::new(BIN)
        .args(bare("ann"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails(
        no_tty,
        "no password: pass --password or set ZSERVER_PASSWORD",
    );
    if Command::new("script").arg("--version").output().is_ok() {
        let line = format!("{BIN} {}", bare("ann").join(" "));
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut input, b"pw\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && !said.contains("password for") {
            eprintln!("skipped the prompt: `script` made no terminal here: {said}");
            return;
        }
        assert!(said.contains("password for `ann`"), "{said}");
        assert!(said.contains("logged in as `ann`"), "{said}");
    }
    drop(served);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["user", "--help"],
        &["client", "--help"],
        &["token", "--help"],
        &["bench", "--help"],
    ] {
        assert!(ok(zserver(args)).contains("Usage"), "{args:?}");
    }
}

/// `client sub`, `pub`, `presence` and `history` against a real server: a subscriber sees
/// publications with their positions, and resumes from one with `--since`.
#[test]
fn channels_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-channels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let served = serve(&dir.join("data"), "tokio");
    let client = |user: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "client",
            "--server",
            &served.addr,
            "--pin",
            &served.fingerprint,
        ])
        .args(["--user", user, "--password", "pw"]);
        cmd
    };
    let run = |user: &str, rest: &[&str]| client(user).args(rest).output().unwrap();
    ok(run("ann", &["register"]));
    ok(run("bob", &["register"]));
    // A subscriber in the background; its stderr says when it is subscribed.
    let mut sub = client("ann")
        .args(["sub", "chat:room"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(sub.stderr.take().unwrap()).lines();
    let first = said.next().unwrap().unwrap();
    assert!(first.contains("subscribed to `chat:room` at "), "{first}");
    let published = ok(run("bob", &["pub", "chat:room", "hello there"]));
    let position = published
        .trim()
        .strip_prefix("published at ")
        .unwrap_or_else(|| panic!("`{published}`"))
        .to_owned();
    let (epoch, offset) = position.split_once(':').unwrap();
    assert_eq!(offset, "1");
    let mut heard = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(
        heard.next().unwrap().unwrap(),
        format!("{epoch}:1 bob: hello there")
    );
    assert_eq!(ok(run("bob", &["presence", "chat:room"])), "ann\n");
    let _ = sub.kill();
    let _ = sub.wait();
    ok(run("bob", &["pub", "chat:room", "while you were away"]));
    // Resumed from the position it printed: only what it missed.
    let mut again = client("ann")
        .args(["sub", "chat:room", "--since", &position])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = BufReader::new(again.stdout.take().unwrap()).lines();
    assert_eq!(
        heard.next().unwrap().unwrap(),
        format!("{epoch}:2 bob: while you were away")
    );
    let _ = again.kill();
    let _ = again.wait();
    let history = ok(run("ann", &["history", "chat:room", "--limit", "5"]));
    assert_eq!(
        history,
        format!("{epoch}:1 bob: hello there\n{epoch}:2 bob: while you were away\n")
    );
    fails(run("ann", &["pub", "nowhere:x", "x"]), "no namespace");
    drop(served);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `zserver client --user bob listen` in one terminal is not kicked by bob pushing from
/// another: the user holds both sessions, and the listener gets the push to bob; `who` names
/// bob once. With `--single-session` the push's login kicks the listener, as it says.
#[test]
fn a_listener_stays_while_the_same_user_pushes_from_another_terminal() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-devices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (flags, kicked) in [(&[][..], false), (&["--single-session"][..], true)] {
        let data = dir.join(format!("data-{kicked}"));
        let served = serve_with(&data, "tokio", free_addr().to_string(), flags);
        let bob = client_args(&served, "bob", "bob-pw");
        let ann = client_args(&served, "ann", "ann-pw");
        ok(zserver(&[&bob[..], &["register"]].concat()));
        ok(zserver(&[&ann[..], &["register"]].concat()));
        let mut listen = Command::new(BIN)
            .args([&bob[..], &["listen"]].concat())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The listener's lines, read on a thread so that a missing one fails, not hangs.
        let (tx, lines) = std::sync::mpsc::channel();
        let out = listen.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let next_line = || lines.recv_timeout(std::time::Duration::from_secs(10));
        // The listener is logged in once ann's `who` names bob.
        let start = std::time::Instant::now();
        while !ok(zserver(&[&ann[..], &["who"]].concat()))
            .lines()
            .any(|u| u == "bob")
        {
            assert!(start.elapsed().as_secs() < 10, "the listener logged in");
        }
        // bob pushes to himself from another terminal.
        let said = ok(zserver(
            &[&bob[..], &["push", "bob", "note to self"]].concat(),
        ));
        if kicked {
            let first = next_line().expect("the listener said it was kicked");
            assert!(
                first.starts_with("kicked: logged in from another connection"),
                "{first}"
            );
            assert!(listen.wait().unwrap().success());
            continue;
        }
        assert!(said.contains("delivered"), "{said}");
        assert_eq!(next_line().as_deref(), Ok("message from bob: note to self"));
        let who = ok(zserver(&[&ann[..], &["who"]].concat()));
        assert_eq!(who, "ann\nbob\n", "bob named once");
        listen.kill().unwrap();
        listen.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `zserver token` mints a token with the server's secret file; `client --token T` logs in
/// with it (no account made by hand); a token signed with another secret is refused, and
/// a token past its `exp` ends a listening client's session.
#[test]
fn token_minted_on_the_command_line_logs_in() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("token.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let secret = secret.to_str().unwrap();
    let served = serve_with(
        &dir.join("data"),
        "tokio",
        free_addr().to_string(),
        &["--token-secret-file", secret],
    );
    let mint = |user: &str, ttl: &str| {
        let args = [
            "token",
            "--secret-file",
            secret,
            "--user",
            user,
            "--ttl",
            ttl,
        ];
        let args = [
            &args[..],
            &["--info", r#"{"team":"red"}"#, "--channel", "$team:red"],
        ]
        .concat();
        ok(zserver(&args)).trim().to_owned()
    };
    let token = mint("ann", "1h");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let client = |token: &str, action: &str| {
        let server = ["--server", &served.addr, "--pin", &served.fingerprint];
        let args = [&["client"][..], &server, &["--token", token, action]].concat();
        zserver(&args)
    };
    assert!(ok(client(&token, "login")).contains("logged in with the token"));
    assert_eq!(ok(client(&token, "who")).trim(), "ann");
    // Another secret: refused, and said why.
    let other = dir.join("other.secret");
    std::fs::write(&other, "another secret of thirty-two bytes!!").unwrap();
    let args = [
        "token",
        "--secret-file",
        other.to_str().unwrap(),
        "--user",
        "ann",
    ];
    let forged = ok(zserver(&args)).trim().to_owned();
    fails(client(&forged, "who"), "invalid token: bad signature");
    // A short secret is refused when minting too.
    std::fs::write(&other, "short").unwrap();
    fails(zserver(&args), "at least 32 bytes");
    // A two-second token: the listener is told and stops.
    let start = std::time::Instant::now();
    let out = ok(client(&mint("bob", "2s"), "listen"));
    assert!(out.contains("kicked: token expired"), "{out}");
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    drop(served);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `zserver user del gina` on the data directory while the server runs ends gina's live
/// session: her listener prints why and exits, `who` no longer names her, a push to her finds
/// no user. `zserver user passwd` ends the sessions of the user it resets the same way.
#[test]
fn user_del_and_passwd_end_live_sessions() {
    let dir = std::env::temp_dir().join(format!("zserver-cli-del-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap();
    let served = serve(&data, "tokio");
    let (gina, hal) = (
        client_args(&served, "gina", "gina-pw"),
        client_args(&served, "hal", "hal-pw"),
    );
    ok(zserver(&[&gina[..], &["register"]].concat()));
    ok(zserver(&[&hal[..], &["register"]].concat()));
    // A listener as `user`, once `who` names them.
    let listen = |who: &[&str], user: &str| {
        let mut child = Command::new(BIN)
            .args([who, &["listen"]].concat())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let start = std::time::Instant::now();
        while !ok(zserver(&[&hal[..], &["who"]].concat()))
            .lines()
            .any(|u| u == user)
        {
            assert!(start.elapsed().as_secs() < 10, "the listener logged in");
        }
        (child, lines)
    };
    // The listener's first line, and that it exits by itself soon after.
    let ended = |(mut child, mut lines): (Child, std::io::Lines<BufReader<ChildStdout>>)| {
        let start = std::time::Instant::now();
        let first = lines.next().unwrap().unwrap();
        assert!(start.elapsed().as_secs() < 10, "kicked within 10 s");
        for _ in 0..100 {
            if child.try_wait().unwrap().is_some() {
                return first;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the kicked listener did not exit ({first})");
    };

    let listener = listen(&gina, "gina");
    let started = std::time::Instant::now();
    assert_eq!(
        ok(zserver(&["user", "del", "gina", "--data", data_arg])),
        "deleted `gina`\n"
    );
    assert_eq!(ended(listener), "kicked: account deleted");
    eprintln!(
        "gina's session ended {:?} after `user del`",
        started.elapsed()
    );
    assert_eq!(ok(zserver(&[&hal[..], &["who"]].concat())), "hal\n");
    fails(
        zserver(&[&hal[..], &["push", "gina", "still there?"]].concat()),
        "no user `gina`",
    );

    // A password reset from the command line ends hal's session too; the new one works.
    let listener = listen(&hal, "hal");
    ok(zserver(&[
        "user",
        "passwd",
        "hal",
        "--password",
        "reset",
        "--data",
        data_arg,
    ]));
    assert_eq!(ended(listener), "kicked: password changed");
    fails(
        zserver(&[&hal[..], &["who"]].concat()),
        "wrong user name or password",
    );
    let hal = client_args(&served, "hal", "reset");
    assert_eq!(ok(zserver(&[&hal[..], &["who"]].concat())), "hal\n");
    drop(served);
    let _ = std::fs::remove_dir_all(&dir);
}
