//! A login server under a flood of wrong-password logins: its memory, and an honest user's
//! wait. Not a test: a measurement, reported in `BENCHMARKS.md`.
//!
//! Starts `zserver serve` (the binary given, in a child process, fresh data directory),
//! registers an honest user from 127.0.0.6 and logs them in once, then opens `--attempts`
//! connections (default 1,000) spread over `--addresses` loopback addresses (default 4:
//! 127.0.0.2 to 127.0.0.5) and sends a wrong-password login on each, all at once, each for
//! a name of its own. While they are answered, the honest user logs in again from
//! 127.0.0.6. Reported: the server's resident memory before, at its peak (`VmHWM`, and
//! sampled `VmRSS`) and `--settle` seconds (default 10) after the flood; its threads; how
//! long the honest login took; what each flooding attempt got.
//!
//! ```text
//! cargo build --release -p zserver-cli
//! cargo run --release -p zserver-login --example login_flood -- \
//!     [--server target/release/zserver] [--attempts 1000] [--addresses 4] [--settle 10] \
//!     [-- extra `zserver serve` flags]
//! ```

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use zserver::{Error, Transport};
use zserver_login::{LoginClient, LoginError};

use zserver::transport::BoundTransport;

struct Opts {
    server: PathBuf,
    attempts: usize,
    addresses: u8,
    settle: u64,
    extra: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: login_flood [--server PATH] [--attempts N] [--addresses N] [--settle SECONDS] \
         [-- serve flags]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/examples/login_flood → target/release/zserver
    let default_server = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("zserver"))
        .unwrap_or_else(|| PathBuf::from("zserver"));
    let mut o = Opts {
        server: default_server,
        attempts: 1000,
        addresses: 4,
        settle: 10,
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--server" => o.server = PathBuf::from(value()),
            "--attempts" => o.attempts = value().parse().unwrap_or_else(|_| usage()),
            "--addresses" => o.addresses = value().parse().unwrap_or_else(|_| usage()),
            "--settle" => o.settle = value().parse().unwrap_or_else(|_| usage()),
            "--" => {
                o.extra = args.collect();
                break;
            }
            _ => usage(),
        }
    }
    if o.addresses == 0 || o.addresses > 200 {
        usage();
    }
    o
}

/// A field of `/proc/PID/status` (`VmRSS`, `VmHWM` in KiB; `Threads`).
fn status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The server process; killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `zserver serve` on an ephemeral port; its address and key fingerprint.
fn serve(o: &Opts, data: &std::path::Path) -> (Served, SocketAddr, String) {
    let child = Command::new(&o.server)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(&o.extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", o.server.display()));
    let mut served = Served(child);
    let stdout = served.0.stdout.take().expect("piped stdout");
    let (mut addr, mut pin) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("server output");
        if let Some(rest) = line.strip_prefix("zserver listening on ") {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("server key fingerprint: ") {
            pin = Some(rest.trim().to_owned());
        }
        if addr.is_some() && pin.is_some() {
            break;
        }
    }
    match (addr, pin) {
        (Some(addr), Some(pin)) => (served, addr, pin),
        _ => panic!("the server did not print its address and fingerprint"),
    }
}

/// Runs `fut` on `transport`'s runtime and waits for it here.
fn run_on<T: Send + 'static>(
    transport: &Arc<dyn Transport>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    transport.runtime().spawn(Box::pin(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().expect("the task finished")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// What the flooding attempts got.
#[derive(Debug, Default)]
struct Tally {
    wrong: usize,
    busy: usize,
    limited: usize,
    other: usize,
    first_other: Option<String>,
}

fn main() {
    let o = parse_opts();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (served, addr, pin) = serve(&o, dir.path());
    let pid = served.0.id();
    let transport = zserver::transport("tokio").expect("the tokio back end");
    let honest = BoundTransport::from_ip(transport.clone(), ip(2 + o.addresses));

    // An honest user, registered and logged in once: the server has hashed before.
    let setup = {
        let (honest, pin) = (honest.clone(), pin.clone());
        run_on(&transport, async move {
            let client = LoginClient::connect(honest, addr, Some(&pin)).await?;
            client.register("honest", "honest-password").await?;
            client.login("honest", "honest-password").await?;
            Ok::<_, Error>(())
        })
    };
    setup.expect("the honest user registers and logs in");
    std::thread::sleep(Duration::from_secs(2));
    let before = status(pid, "VmRSS");

    // Sample VmRSS every 10 ms while the flood lasts.
    let sampling = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (sampling, most) = (sampling.clone(), most.clone());
        std::thread::spawn(move || {
            let mut most_threads = 0;
            while sampling.load(Ordering::Relaxed) {
                most.fetch_max(status(pid, "VmRSS"), Ordering::Relaxed);
                most_threads = most_threads.max(status(pid, "Threads"));
                std::thread::sleep(Duration::from_millis(10));
            }
            most_threads
        })
    };

    let started = Instant::now();
    let (attempts, addresses) = (o.attempts, o.addresses);
    let flood = {
        let (transport, pin) = (transport.clone(), pin.clone());
        run_on(&transport.clone(), async move {
            let (tx, rx) = async_channel::unbounded();
            for i in 0..attempts {
                let from = BoundTransport::from_ip(
                    transport.clone(),
                    ip(2 + (i % addresses as usize) as u8),
                );
                let (pin, tx) = (pin.clone(), tx.clone());
                transport.runtime().spawn(Box::pin(async move {
                    let result = async {
                        let client = LoginClient::connect(from, addr, Some(&pin)).await?;
                        Ok::<_, LoginError>(client.login(&format!("guess{i}"), "wrong").await)
                    };
                    let _ = tx.send(result.await).await;
                }));
            }
            rx
        })
    };
    // The honest user logs in again while the flood is being answered.
    std::thread::sleep(Duration::from_millis(20));
    let honest_login = {
        let pin = pin.clone();
        run_on(&transport, async move {
            let client = LoginClient::connect(honest, addr, Some(&pin)).await?;
            let t = Instant::now();
            client.login("honest", "honest-password").await?;
            Ok::<_, LoginError>(t.elapsed())
        })
    };
    let tally = run_on(&transport, async move {
        let mut tally = Tally::default();
        for _ in 0..attempts {
            let Ok(result) = flood.recv().await else {
                break;
            };
            match result.and_then(|login| login.map(|_| ())) {
                Ok(()) => panic!("a wrong password logged in"),
                Err(LoginError::WrongPassword) => tally.wrong += 1,
                Err(LoginError::Busy { .. }) => tally.busy += 1,
                Err(LoginError::Limited { .. }) => tally.limited += 1,
                Err(e) => {
                    tally.other += 1;
                    tally.first_other.get_or_insert(e.to_string());
                }
            }
        }
        tally
    });
    let flood_took = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let threads = sampler.join().unwrap_or(0);
    let peak_sampled = most.load(Ordering::Relaxed);
    let peak = status(pid, "VmHWM");
    std::thread::sleep(Duration::from_secs(o.settle));
    let after = status(pid, "VmRSS");

    println!("server {} {}", o.server.display(), o.extra.join(" "));
    println!(
        "flood: {} wrong-password logins from {} addresses, answered in {:.2} s: \
         {} wrong password, {} busy, {} limited, {} other{}",
        attempts,
        addresses,
        flood_took.as_secs_f64(),
        tally.wrong,
        tally.busy,
        tally.limited,
        tally.other,
        tally
            .first_other
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    match honest_login {
        Ok(took) => println!("honest login during the flood: {:.3} s", took.as_secs_f64()),
        Err(e) => println!("honest login during the flood FAILED: {e}"),
    }
    println!(
        "server RSS: before {:.1} MiB, peak {:.1} MiB (VmHWM; sampled {:.1}), {} s after {:.1} MiB \
         ({:.2}x before); most threads {}",
        mib(before),
        mib(peak),
        mib(peak_sampled),
        o.settle,
        mib(after),
        after as f64 / before.max(1) as f64,
        threads
    );
}
