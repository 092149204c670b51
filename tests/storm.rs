//! Issue 28, scenario 4: a reconnect storm. 18,000 reconnecting clients (`ReconnectingClient`,
//! back-off 100 ms doubling to 2 s with jitter, spread over the source addresses
//! 127.0.0.2, 127.0.0.3, …) hold connections to a server in a child process; the server is
//! killed (SIGKILL) and started again at the same address, and every client comes back by
//! itself: all within the stated time, none giving up, no SYN dropped at the listen queue
//! (the kernel's `ListenOverflows`/`ListenDrops` counters do not move), calls working again,
//! and the new server's memory with every client back at the old one's idle figure.
//!
//! On each back end compiled in, in turn (the server and the clients on the same one). The figures are
//! printed: `cargo test --test storm -- --nocapture`. `ZSERVER_STORM_CLIENTS` sets the
//! count (default 18,000: with this process's other descriptors, near the 20,000 limit).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zserver::Calls;
use zserver::{Backoff, Client, LinkState, ReconnectingClient, Router, Server};

/// Every client must be back within this long after the restart.
const BACK_WITHIN: Duration = Duration::from_secs(30);
const SERVE_ENV: &str = "ZSERVER_STORM_SERVE";

fn clients() -> usize {
    std::env::var("ZSERVER_STORM_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(18_000)
}

/// The server process: this test binary run again with [`SERVE_ENV`] set to the address,
/// serving `echo` until it is killed.
#[test]
#[ignore = "the server side of the storm tests, run by them as a child process"]
fn storm_server_process() {
    let Ok(addr) = std::env::var(SERVE_ENV) else {
        return;
    };
    let backend = std::env::var("ZSERVER_BACKEND").unwrap_or_else(|_| "tokio".into());
    let transport = zserver::transport(&backend).expect("a back end");
    let runtime = transport.runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(Box::pin(async move {
        let router = Router::new().console("echo", |_ctx, text: String| async move { Ok(text) });
        let server = Server::builder(transport)
            .router(router)
            .bind(addr.as_str())
            .await;
        let _ = tx.send(server.map(|s| (s.local_addr(), s)));
    }));
    let (local, _server) = rx.recv().unwrap().expect("the storm server binds");
    println!("storm server on {local}");
    loop {
        std::thread::park();
    }
}

struct ServerProcess(Child);

impl ServerProcess {
    /// Starts the server at `addr` on `backend` and waits until it listens (retrying while
    /// the address is not free again after a kill).
    fn start(addr: SocketAddr, backend: &str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "storm_server_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(SERVE_ENV, addr.to_string())
                .env("ZSERVER_BACKEND", backend)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            if lines
                .map_while(Result::ok)
                .any(|l| l.starts_with("storm server on"))
            {
                return Self(child);
            }
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "the storm server did not start at {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory (KiB) and open descriptors.
    fn usage(&self) -> (u64, usize) {
        let pid = self.0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        (
            rss,
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count(),
        )
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel's counts of connections dropped at a full listen queue.
fn listen_drops() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines();
    let mut total = 0;
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if name == "ListenOverflows" || name == "ListenDrops" {
                total += value.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Waits until every client is connected; how long it took.
async fn all_connected(clients: &[ReconnectingClient], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let gave_up = clients
            .iter()
            .filter(|c| c.state() == LinkState::GaveUp)
            .count();
        assert_eq!(gave_up, 0, "no client gives up");
        let up = clients
            .iter()
            .filter(|c| c.state() == LinkState::Connected)
            .count();
        if up == clients.len() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{up} of {} clients connected after {limit:?}",
            clients.len()
        );
        zserver::sleep(Duration::from_millis(50)).await;
    }
}

fn storm(backend: &'static str) {
    eprintln!("{backend}: the storm");
    let n = clients();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = ServerProcess::start(addr, backend);
    let transport = zserver::transport(backend).unwrap();
    let runtime = transport.runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(Box::pin(async move {
        let started = Instant::now();
        let clients: Vec<ReconnectingClient> = (0..n)
            .map(|i| {
                let local = SocketAddr::from(([127, 0, 0, 2 + (i / 4000) as u8], 0));
                let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
                    .with_jitter(0.5);
                Client::builder(transport.clone())
                    .bind(local)
                    .reconnecting(addr)
                    .unwrap()
                    .backoff(backoff)
                    .start()
            })
            .collect();
        let first = all_connected(&clients, Duration::from_secs(120)).await;
        let _ = tx.send((clients, first, started.elapsed()));
    }));
    let (clients, first, _) = rx.recv().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, idle_fds) = server.usage();
    let drops_before = listen_drops();

    // The restart: killed, and started again at the same address.
    let killed = Instant::now();
    server.kill();
    let server = ServerProcess::start(addr, backend);
    let restarted = killed.elapsed();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(Box::pin(async move {
        let back = all_connected(&clients, BACK_WITHIN).await;
        // Every client calls again, a thousand at a time.
        for batch in clients.chunks(1000) {
            let calls = batch.iter().map(|c| c.console("echo", "back"));
            for answer in futures_util::future::join_all(calls).await {
                assert_eq!(answer.unwrap(), "back");
            }
        }
        let reconnected = clients.iter().filter(|c| c.reconnects() >= 1).count();
        let _ = tx.send((clients, back, reconnected));
    }));
    let (clients, back, reconnected) = rx.recv().unwrap();
    let since_kill = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (rss, fds) = server.usage();
    let drops = listen_drops() - drops_before;
    eprintln!(
        "{backend}: {n} clients connected in {first:?}; server idle {:.1} MiB, {idle_fds} \
         descriptors. Killed and restarted in {restarted:?}; every client back {back:?} after \
         that ({since_kill:?} after the kill, calls included), {reconnected} reconnected; \
         server then {:.1} MiB, {fds} descriptors; listen-queue drops {drops}",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    assert_eq!(reconnected, n, "every client reconnected by itself");
    assert_eq!(drops, 0, "no SYN was dropped at the listen queue");
    assert!(
        fds >= n,
        "the new server holds every client: {fds} descriptors"
    );
    assert!(
        rss * 10 <= idle_rss * 13,
        "the server's memory with every client back ({rss} KiB) is near its idle figure \
         before ({idle_rss} KiB)"
    );
    drop(clients);
}

#[test]
fn a_reconnect_storm_after_a_restart() {
    for backend in zserver::backends() {
        storm(backend);
    }
}
