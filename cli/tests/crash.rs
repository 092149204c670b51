//! Issue 28, scenario 1: a `zserver serve` process killed with SIGKILL under load, on each
//! back end. While it runs, clients push to a user who is offline (stored messages),
//! upload files, publish to a channel with durable history, register accounts and change a
//! password, each
//! noting what the server acknowledged. After the kill and a restart on the same data
//! directory, everything acknowledged is there exactly once; what was not acknowledged is
//! there at most once, and never half (a file is whole or absent).
//!
//! The figures (operations acknowledged before the kill, the time to restart) are printed:
//! `cargo test -p zserver-cli --test crash -- --nocapture`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::channels::{ChannelCalls, Position};
use zserver::{Error, Transport};
use zserver_login::LoginClient;

const BIN: &str = env!("CARGO_BIN_EXE_zserver");
/// How long the load runs before the kill.
const LOAD: Duration = Duration::from_millis(800);

mod common;
use common::free_addr;
#[path = "../../login/tests/support/mod.rs"]
mod support;

/// A `zserver serve` process.
struct Served {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, backend: &str) -> Served {
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string(), "--backend", backend])
        .arg("--config")
        .arg(dir.join("zserver.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let fingerprint = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("server key fingerprint: ")
                .map(str::to_owned)
        })
        .expect("serve printed its fingerprint");
    std::thread::spawn(move || lines.for_each(drop));
    Served {
        child,
        addr,
        fingerprint,
    }
}

/// What the server acknowledged before it died.
#[derive(Default, Debug)]
struct Acked {
    pushes: Vec<String>,
    uploads: Vec<usize>,
    publications: Vec<(u64, String)>,
    accounts: Vec<String>,
    /// Password changes of `eve` (`pw` → `pw-1` → `pw-2` ...): how many were acknowledged.
    changes: usize,
}

/// `eve`'s password after `n` changes.
fn password(n: usize) -> String {
    match n {
        0 => "pw".into(),
        n => format!("pw-{n}"),
    }
}

/// The bytes of upload `i` (sizes vary, up to 1 MiB, so some are in flight at the kill).
fn upload_bytes(i: usize) -> Vec<u8> {
    let len = 1000 + (i * 77_777) % (1 << 20);
    (0..len).map(|j| (j as u8) ^ (i as u8)).collect()
}

async fn logged_in(
    transport: &Arc<dyn Transport>,
    served: (SocketAddr, &str),
    user: &str,
) -> Result<LoginClient, Error> {
    let client = LoginClient::connect(transport.clone(), served.0, Some(served.1)).await?;
    client.login(user, "pw").await?;
    Ok(client)
}

/// Runs the four kinds of load until the server dies, noting what it acknowledged.
async fn load(transport: Arc<dyn Transport>, addr: SocketAddr, pin: String, dir: PathBuf) -> Acked {
    let to = (addr, pin.as_str());
    let (ann, cat, dan) = (
        logged_in(&transport, to, "ann").await.unwrap(),
        logged_in(&transport, to, "cat").await.unwrap(),
        logged_in(&transport, to, "dan").await.unwrap(),
    );
    let pushes = async {
        let mut acked = Vec::new();
        for i in 0.. {
            let text = format!("m-{i}");
            match ann.push(&["bob"], &text).await {
                Ok(report) if report.stored == ["bob"] => acked.push(text),
                Ok(report) => panic!("bob is offline, yet {report:?}"),
                Err(_) => break,
            }
        }
        acked
    };
    let uploads = async {
        let mut acked = Vec::new();
        for i in 0.. {
            let path = dir.join(format!("up-{i}"));
            std::fs::write(&path, upload_bytes(i)).unwrap();
            let name = format!("f-{i}");
            match cat.put(&path, &name, false, |_, _| {}).await {
                Ok(_) => acked.push(i),
                Err(_) => break,
            }
        }
        acked
    };
    let publications = async {
        let mut acked = Vec::new();
        for i in 0.. {
            let data = format!("p-{i}");
            match dan.client().publish("log:all", &data).await {
                Ok(Some(Position { offset, .. })) => acked.push((offset, data)),
                Ok(None) => panic!("log: has history, so a publication has a position"),
                Err(_) => break,
            }
        }
        acked
    };
    let accounts = async {
        let mut acked = Vec::new();
        for i in 0.. {
            let user = format!("u{i}");
            let Ok(client) = LoginClient::connect(transport.clone(), addr, Some(&pin)).await else {
                break;
            };
            match client.register(&user, "pw").await {
                Ok(()) => acked.push(user),
                Err(_) => break,
            }
        }
        acked
    };
    let eve = logged_in(&transport, to, "eve").await.unwrap();
    let changes = async {
        let mut acked = 0;
        while eve
            .change_password(&password(acked), &password(acked + 1))
            .await
            .is_ok()
        {
            acked += 1;
        }
        acked
    };
    let ((pushes, uploads), (publications, (accounts, changes))) = futures_lite::future::zip(
        futures_lite::future::zip(pushes, uploads),
        futures_lite::future::zip(publications, futures_lite::future::zip(accounts, changes)),
    )
    .await;
    Acked {
        pushes,
        uploads,
        publications,
        accounts,
        changes,
    }
}

/// Checks, on the restarted server, that what was acknowledged is there once and nothing is
/// there twice or half.
async fn check(
    transport: Arc<dyn Transport>,
    addr: SocketAddr,
    pin: String,
    acked: Acked,
    out: PathBuf,
) {
    let to = (addr, pin.as_str());
    // Offline messages: every acknowledged one, once; none twice.
    let bob = LoginClient::connect(transport.clone(), addr, Some(&pin))
        .await
        .unwrap();
    let stored: Vec<String> = bob
        .login("bob", "pw")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    let mut seen = HashMap::new();
    for text in &stored {
        *seen.entry(text.as_str()).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a message stored twice: {stored:?}"
    );
    for text in &acked.pushes {
        assert!(
            seen.contains_key(text.as_str()),
            "acknowledged `{text}` was lost"
        );
    }
    // Files: every acknowledged one whole; any other one listed is whole too.
    let cat = logged_in(&transport, to, "cat").await.unwrap();
    let listed = cat.ls().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|f| f.name.as_str()).collect();
    for i in &acked.uploads {
        assert!(
            names.contains(&format!("f-{i}").as_str()),
            "acknowledged f-{i} was lost"
        );
    }
    for file in &listed {
        let i: usize = file.name.strip_prefix("f-").unwrap().parse().unwrap();
        cat.get(&file.name, &out, false, |_, _| {}).await.unwrap();
        assert!(
            std::fs::read(&out).unwrap() == upload_bytes(i),
            "{} is not whole",
            file.name
        );
    }
    // The channel's history: every acknowledged publication at its offset; none twice.
    let dan = logged_in(&transport, to, "dan").await.unwrap();
    let history = dan
        .client()
        .history("log:all", None, 100_000)
        .await
        .unwrap();
    let kept: HashMap<u64, String> = history
        .publications
        .iter()
        .map(|p| (p.offset, String::from_utf8(p.data.clone()).unwrap()))
        .collect();
    let mut datas: Vec<&String> = kept.values().collect();
    datas.sort();
    datas.dedup();
    assert_eq!(
        datas.len(),
        history.publications.len(),
        "a publication kept twice"
    );
    for (offset, data) in &acked.publications {
        assert_eq!(
            kept.get(offset),
            Some(data),
            "acknowledged {data} at {offset}"
        );
    }
    // Accounts: every acknowledged registration logs in; the last acknowledged password
    // works, or the one whose change was in flight.
    for user in &acked.accounts {
        logged_in(&transport, to, user).await.unwrap();
    }
    let eve = LoginClient::connect(transport.clone(), addr, Some(&pin))
        .await
        .unwrap();
    let (last, next) = (password(acked.changes), password(acked.changes + 1));
    if eve.login("eve", &last).await.is_err() {
        eve.login("eve", &next)
            .await
            .expect("eve's acknowledged password, or the next");
    }
}

fn crash_under_load(backend: &'static str) {
    let dir = std::env::temp_dir().join(format!("zserver-crash-{backend}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("zserver.toml"),
        "[channels.log]\nhistory = 100000\n",
    )
    .unwrap();
    let transport = zserver::transport(backend).unwrap();
    let limit = Duration::from_secs(60);
    let served = serve(&dir, backend);
    let (addr, pin) = (served.addr, served.fingerprint.clone());
    let (t, p) = (transport.clone(), pin.clone());
    support::run_on(backend, limit, async move {
        let client = LoginClient::connect(t, addr, Some(&p)).await.unwrap();
        for user in ["ann", "bob", "cat", "dan", "eve"] {
            client.register(user, "pw").await.unwrap();
        }
    });
    // The kill, from another thread, while the load runs.
    let mut served = served;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(LOAD);
        served.child.kill().unwrap(); // SIGKILL
        served.child.wait().unwrap();
        drop(served);
    });
    let (t, work) = (transport.clone(), dir.clone());
    let acked = support::run_on(backend, limit, load(t, addr, pin, work));
    killer.join().unwrap();
    eprintln!(
        "{backend}: acknowledged before the kill: {} pushes, {} uploads, {} publications, {} \
         accounts, {} password changes",
        acked.pushes.len(),
        acked.uploads.len(),
        acked.publications.len(),
        acked.accounts.len(),
        acked.changes
    );
    assert!(
        !acked.pushes.is_empty() && !acked.uploads.is_empty() && !acked.publications.is_empty(),
        "the load ran: {acked:?}"
    );
    let started = Instant::now();
    let again = serve(&dir, backend);
    eprintln!("{backend}: restarted in {:?}", started.elapsed());
    let (addr, pin) = (again.addr, again.fingerprint.clone());
    support::run_on(
        backend,
        limit,
        check(transport, addr, pin, acked, dir.join("got")),
    );
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_server_killed_under_load_keeps_what_it_acknowledged_on_tokio() {
    crash_under_load("tokio");
}

#[test]
fn a_server_killed_under_load_keeps_what_it_acknowledged_on_async_std() {
    crash_under_load("async-std");
}

#[test]
fn a_server_killed_under_load_keeps_what_it_acknowledged_on_smol() {
    crash_under_load("smol");
}
