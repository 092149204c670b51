//! `zserver soak`: a login server (a `zserver serve` child process on a fresh data
//! directory) holding many connections under mixed load for minutes, reporting its RSS,
//! file descriptors and the load's latency over time, to show that none of them drifts.
//!
//! Most connections are idle (encrypted, heartbeating, spread over the source addresses
//! 127.0.0.2, 127.0.0.3, …); `--users` of them are logged in and drive the load, each
//! kind at `--rate` per second: calls (`ls`), pushes between users (live), publications to
//! ten channels every user subscribes to one of (durable history), uploads and downloads
//! of 64 KiB (a tenth of the rate), and logins (a fiftieth; a tenth of the users log in
//! again and again).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zserver::channels::ChannelCalls;
use zserver::{Client, Transport};
use zserver_login::{LoginClient, Store};

use crate::bench::{run_on, BoxError};

/// Arguments of `zserver soak`.
#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    /// Connections the server holds in all (at most 18,000: each is a descriptor here).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Of those, users logged in who drive the load.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// How long to run, in minutes (after the connections are up).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds between report rows.
    #[arg(long, default_value_t = 60)]
    pub every: u64,
    /// Operations per second of each kind (calls, pushes, publications; streams at a
    /// tenth of it, logins at a fiftieth: each hashes a password).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// The server's back end.
    #[arg(long, default_value = "tokio")]
    pub backend: String,
}

/// The kinds of operation, in report order.
const KINDS: [&str; 5] = ["call", "push", "publish", "stream", "login"];
/// Operations in flight beyond which new ones are skipped (and counted), so that a stalled
/// server shows as skips instead of growing this process without bound.
const MAX_IN_FLIGHT: usize = 2000;
const CHANNELS: usize = 10;

/// Latencies (µs) and errors of one report interval.
#[derive(Default)]
struct Window {
    latencies: HashMap<&'static str, Vec<u64>>,
    errors: HashMap<&'static str, u64>,
    skipped: u64,
}

struct Load {
    transport: Arc<dyn Transport>,
    addr: SocketAddr,
    pin: String,
    /// The users that stay logged in.
    steady: Vec<Arc<LoginClient>>,
    /// Names of the users that log in again and again.
    churning: Vec<String>,
    upload: PathBuf,
    window: Mutex<Window>,
    in_flight: AtomicUsize,
}

/// Runs the soak and prints its report.
pub(crate) fn run(args: SoakArgs) -> Result<(), BoxError> {
    if args.connections > 18_000 {
        return Err("--connections above 18000 would exceed the 20,000 descriptors here".into());
    }
    if args.users < 20 || args.users > args.connections {
        return Err("--users must be at least 20 and at most --connections".into());
    }
    let dir = std::env::temp_dir().join(format!("zserver-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = soak(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn soak(args: &SoakArgs, dir: &Path) -> Result<(), BoxError> {
    eprintln!("soak: adding {} users", args.users);
    add_users(&dir.join("data"), args.users)?;
    let mut server = Server::start(dir, &args.backend)?;
    let transport = zserver::transport(&args.backend).ok_or("unknown back end")?;
    let runtime = transport.runtime();
    let upload = dir.join("upload.bin");
    std::fs::write(&upload, vec![0x5a; 64 << 10])?;
    let (addr, pin) = (server.addr, server.fingerprint.clone());
    let t = transport.clone();
    let idle = args.connections - args.users;
    let users = args.users;
    let started = Instant::now();
    let (load, idle) = run_on(&runtime, async move {
        let idle = connect_idle(&t, addr, &pin, idle).await?;
        let load = Load::connect(t, addr, pin, users, upload).await?;
        Ok::<_, BoxError>((Arc::new(load), idle))
    })?;
    eprintln!(
        "soak: {} connections up in {:.1} s; load for {} min",
        idle.len() + args.users,
        started.elapsed().as_secs_f64(),
        args.minutes
    );
    println!("| minute | server RSS MiB | server fds | ops | p50 µs | p99 µs (call / push / publish / stream / login) | errors | skipped |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let end = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let driver = load.clone();
    let rate = args.rate;
    runtime.spawn(Box::pin(async move { driver.drive(rate, end).await }));
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(args.every).min(end - Instant::now()));
        let window = std::mem::take(&mut *load.window.lock().unwrap());
        let (rss, fds) = server.usage()?;
        samples.push((rss, fds));
        println!("{}", row(t0.elapsed(), rss, fds, &window));
    }
    std::thread::sleep(Duration::from_secs(2)); // the last operations finish
    let first = samples.first().copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    let peak = samples.iter().map(|s| s.0).max().unwrap_or_default();
    println!(
        "\nserver RSS {:.1} MiB at the first row, {:.1} MiB at the last ({:+.1} %), peak {:.1} \
         MiB; descriptors {} -> {}",
        mib(first.0),
        mib(last.0),
        (last.0 as f64 / first.0.max(1) as f64 - 1.0) * 100.0,
        mib(peak),
        first.1,
        last.1
    );
    drop(idle);
    server.stop();
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One report row.
fn row(t: Duration, rss_kib: u64, fds: usize, w: &Window) -> String {
    let mut all: Vec<u64> = w.latencies.values().flatten().copied().collect();
    all.sort_unstable();
    let p = |v: &[u64], q: f64| match v.len() {
        0 => "-".to_owned(),
        n => v[((n - 1) as f64 * q).round() as usize].to_string(),
    };
    let p99s: Vec<String> = KINDS
        .iter()
        .map(|k| {
            let mut v = w.latencies.get(k).cloned().unwrap_or_default();
            v.sort_unstable();
            p(&v, 0.99)
        })
        .collect();
    format!(
        "| {:.1} | {:.1} | {fds} | {} | {} | {} | {} | {} |",
        t.as_secs_f64() / 60.0,
        mib(rss_kib),
        all.len(),
        p(&all, 0.5),
        p99s.join(" / "),
        w.errors.values().sum::<u64>(),
        w.skipped
    )
}

/// Adds users `u0`, `u1`, … with password `pw` to the embedded store in `data` (two
/// threads: each password is hashed with Argon2id).
fn add_users(data: &Path, n: usize) -> Result<(), BoxError> {
    let store = Arc::new(Store::open_spec("embedded", data)?);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (t..n)
                    .step_by(2)
                    .try_for_each(|i| store.add_user(&format!("u{i}"), "pw"))
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "adding users panicked")??;
    }
    Ok(())
}

/// `n` idle connections, 4,000 per source address (127.0.0.2, 127.0.0.3, …), opened 200 at
/// a time.
async fn connect_idle(
    transport: &Arc<dyn Transport>,
    addr: SocketAddr,
    pin: &str,
    n: usize,
) -> Result<Vec<Client>, BoxError> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch: Vec<_> = (clients.len()..n.min(clients.len() + 200))
            .map(|i| {
                let local = SocketAddr::from(([127, 0, 0, 2 + (i / 4000) as u8], 0));
                let builder = Client::builder(transport.clone()).bind(local);
                async move { builder.pin_server_fingerprint(pin)?.connect(addr).await }
            })
            .collect();
        for client in futures::future::join_all(batch).await {
            clients.push(client?);
        }
    }
    Ok(clients)
}

impl Load {
    /// Logs the users in: nine tenths stay, each subscribed to one of the channels, their
    /// events and publications read by a task of their own.
    async fn connect(
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        pin: String,
        users: usize,
        upload: PathBuf,
    ) -> Result<Self, BoxError> {
        let churning: Vec<String> = (users - users / 10..users)
            .map(|i| format!("u{i}"))
            .collect();
        let mut steady = Vec::new();
        for i in 0..users - churning.len() {
            let client = LoginClient::connect(transport.clone(), addr, Some(&pin)).await?;
            client.login(&format!("u{i}"), "pw").await?;
            let mut sub = client
                .client()
                .subscribe(&format!("chat:soak{}", i % CHANNELS))
                .await?;
            let client = Arc::new(client);
            let reader = client.clone();
            transport.runtime().spawn(Box::pin(async move {
                while reader.next_event().await.is_some() {}
            }));
            transport
                .runtime()
                .spawn(Box::pin(async move { while sub.recv().await.is_some() {} }));
            steady.push(client);
        }
        Ok(Self {
            transport,
            addr,
            pin,
            steady,
            churning,
            upload,
            window: Mutex::default(),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Starts operations at `rate` per second of each kind until `end`.
    async fn drive(self: Arc<Self>, rate: f64, end: Instant) {
        let start = Instant::now();
        let mut started = [0u64; KINDS.len()];
        let mut n = 0usize;
        while Instant::now() < end {
            zserver::sleep(Duration::from_millis(10)).await;
            let elapsed = start.elapsed().as_secs_f64();
            for (k, count) in started.iter_mut().enumerate() {
                let kind_rate = match KINDS[k] {
                    "stream" => rate / 10.0,
                    "login" => rate / 50.0,
                    _ => rate,
                };
                while (*count as f64) < elapsed * kind_rate {
                    *count += 1;
                    n += 1;
                    if self.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                        self.window.lock().unwrap().skipped += 1;
                        continue;
                    }
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    let load = self.clone();
                    let op = async move {
                        let t = Instant::now();
                        let ok = load.op(KINDS[k], n).await;
                        let mut w = load.window.lock().unwrap();
                        match ok {
                            Ok(()) => w
                                .latencies
                                .entry(KINDS[k])
                                .or_default()
                                .push(t.elapsed().as_micros() as u64),
                            Err(_) => *w.errors.entry(KINDS[k]).or_default() += 1,
                        }
                        drop(w);
                        load.in_flight.fetch_sub(1, Ordering::Relaxed);
                    };
                    self.transport.runtime().spawn(Box::pin(op));
                }
            }
        }
    }

    /// One operation of `kind`; `n` picks its users.
    async fn op(&self, kind: &str, n: usize) -> Result<(), BoxError> {
        let user = &self.steady[n % self.steady.len()];
        match kind {
            "call" => drop(user.ls().await?),
            "push" => {
                let to = format!("u{}", (n * 7 + 1) % self.steady.len());
                user.push(&[&to], "soak").await?;
            }
            "publish" => {
                let channel = format!("chat:soak{}", n % CHANNELS);
                user.client().publish(&channel, b"soak").await?;
            }
            "stream" => {
                let name = format!("soak-{}.bin", n % 4);
                user.put(&self.upload, &name, false, |_, _| {}).await?;
                let back = self.upload.with_extension(format!("{n}"));
                user.get(&name, &back, false, |_, _| {}).await?;
                let _ = std::fs::remove_file(back);
            }
            _ => {
                let name = &self.churning[n % self.churning.len()];
                let t = self.transport.clone();
                let client = LoginClient::connect(t, self.addr, Some(&self.pin)).await?;
                client.login(name, "pw").await?;
                client.ls().await?;
            }
        }
        Ok(())
    }
}

/// The `zserver serve` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Server {
    fn start(dir: &Path, backend: &str) -> Result<Self, BoxError> {
        use std::io::{BufRead, BufReader};
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", &addr.to_string(), "--backend", backend])
            .arg("--data")
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let fingerprint = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("server key fingerprint: ")
                    .map(str::to_owned)
            })
            .ok_or("the server did not start")?;
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            addr,
            fingerprint,
        })
    }

    /// The server's resident memory (KiB) and open descriptors.
    fn usage(&self) -> Result<(u64, usize), BoxError> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok((rss, fds))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
