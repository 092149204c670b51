//! Many concurrent downloads from one server process: ZServer4D's "1000 users downloading
//! big files at once", on loopback, per back end.
//!
//! The server runs in a child process (this binary with `--serve`), serving one generated
//! file with `Outgoing::file`; this process opens `--clients` encrypted connections on the
//! same back end and downloads the file once over each, all at once, checking every hash.
//! Reported per back end: aggregate throughput, and the server's resident memory before the
//! run and at its peak (`VmHWM`), also per connection.
//!
//! ```text
//! cargo run --release --features async-std,smol --example bench_streams -- \
//!     [--clients 1000] [--mib 64] [--backends tokio,async-std,smol] [--quick] [--stable]
//! ```
//! `--quick` is 100 clients of 16 MiB each. `--stable` runs every connection as a stable
//! session (`Config::stable`), to see what the resend buffers cost.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use zserver::Calls;
use zserver::{
    ClientBuilder, Config, Error, Outgoing, Router, Runtime, ServerBuilder, StableSession,
};

const MIB: u64 = 1024 * 1024;
const FILE: &str = "payload.bin";

struct Opts {
    clients: usize,
    mib: u64,
    backends: Vec<String>,
    stable: bool,
}

/// The connection settings of both ends: the defaults, as stable sessions if asked.
fn config(stable: bool) -> Config {
    let mut config = Config::default();
    if stable {
        config.stable = Some(StableSession::default());
    }
    config
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        clients: 1000,
        mib: 64,
        backends: zserver::backends().iter().map(|s| s.to_string()).collect(),
        stable: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage(arg));
        match arg.as_str() {
            "--clients" => o.clients = value().parse().unwrap_or_else(|_| usage("--clients")),
            "--mib" => o.mib = value().parse().unwrap_or_else(|_| usage("--mib")),
            "--backends" => o.backends = value().split(',').map(str::to_string).collect(),
            "--quick" => (o.clients, o.mib) = (100, 16),
            "--stable" => o.stable = true,
            other => usage(other),
        }
    }
    for b in &o.backends {
        if zserver::transport(b).is_none() {
            usage(&format!("back end `{b}` is not compiled in"));
        }
    }
    o
}

fn usage(bad: &str) -> ! {
    eprintln!("bad argument `{bad}`\nusage: bench_streams [--clients N] [--mib M] [--backends a,b] [--quick] [--stable]");
    std::process::exit(2)
}

/// Runs `fut` on `rt` and blocks this (non-worker) thread for its result.
fn run_on<T: Send + 'static>(
    rt: &Arc<dyn Runtime>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().expect("task failed")
}

/// The child: serves `dir/FILE` on back end `name`, prints its address, and exits when
/// its standard input closes.
fn serve(name: &str, dir: PathBuf, stable: bool) {
    let transport = zserver::transport(name).expect("compiled-in back end");
    let runtime = transport.runtime();
    let server = run_on(&runtime, async move {
        let router = Router::new().download("file", move |_ctx, req| {
            let path = dir.join(FILE);
            async move { Outgoing::file(path, req.offset).await }
        });
        ServerBuilder::new(transport)
            .router(router)
            .config(config(stable))
            .bind("127.0.0.1:0")
            .await
            .expect("bind")
    });
    println!("ADDR {}", server.local_addr());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().lines().count();
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Writes `mib` MiB of pseudo-random bytes; returns their hash.
fn write_payload(path: &Path, mib: u64) -> blake3::Hash {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&block);
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
    hasher.finalize()
}

struct Row {
    backend: String,
    seconds: f64,
    gib_per_s: f64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    per_conn_kib: f64,
    failures: usize,
}

fn run(name: &str, dir: &Path, expected: blake3::Hash, o: &Opts) -> Row {
    let exe = std::env::current_exe().unwrap();
    let mut child: Child = Command::new(exe)
        .args(["--serve", name, dir.to_str().unwrap()])
        .arg(if o.stable { "stable" } else { "normal" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line.trim().trim_start_matches("ADDR ").parse().unwrap();
    let pid = child.id();
    let rss_before = status_kib(pid, "VmRSS");

    let transport = zserver::transport(name).unwrap();
    let runtime = transport.runtime();
    let clients = run_on(&runtime, {
        let (transport, n, stable) = (transport.clone(), o.clients, o.stable);
        async move {
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(
                    ClientBuilder::new(transport.clone())
                        .config(config(stable))
                        .connect(addr)
                        .await?,
                );
            }
            Ok::<_, Error>(clients)
        }
    })
    .expect("connect");
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for client in &clients {
        let (client, tx) = (client.clone(), tx.clone());
        runtime.spawn(Box::pin(async move {
            let result = async {
                let mut body = client.download("file", FILE, 0).await?;
                let mut hasher = blake3::Hasher::new();
                while let Some(chunk) = body.chunk().await? {
                    hasher.update(&chunk);
                }
                Ok::<_, Error>(hasher.finalize())
            }
            .await;
            let _ = tx.send(result);
        }));
    }
    drop(tx);
    let failures = rx
        .iter()
        .filter(|r| !matches!(r, Ok(h) if *h == expected))
        .count();
    let seconds = start.elapsed().as_secs_f64();
    let rss_peak = status_kib(pid, "VmHWM");
    drop(clients);
    drop(child.stdin.take());
    let _ = child.wait();
    let bytes = o.clients as u64 * o.mib * MIB;
    Row {
        backend: name.to_string(),
        seconds,
        gib_per_s: bytes as f64 / seconds / (1u64 << 30) as f64,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_peak_mib: rss_peak as f64 / 1024.0,
        per_conn_kib: rss_peak.saturating_sub(rss_before) as f64 / o.clients as f64,
        failures,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(
            &args[1],
            PathBuf::from(&args[2]),
            args.get(3).is_some_and(|a| a == "stable"),
        );
    }
    let o = parse_opts(&args);
    let dir = std::env::temp_dir().join(format!("zserver-bench-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let expected = write_payload(&dir.join(FILE), o.mib);
    println!(
        "{} encrypted{} connections, each downloading one {} MiB file ({} GiB in all), server in its own process",
        o.clients,
        if o.stable { " stable-session" } else { "" },
        o.mib,
        o.clients as u64 * o.mib / 1024
    );
    println!(
        "{:<10} {:>9} {:>9} {:>14} {:>14} {:>14} {:>9}",
        "back end",
        "seconds",
        "GiB/s",
        "RSS before MiB",
        "RSS peak MiB",
        "peak KiB/conn",
        "bad hash"
    );
    for name in &o.backends {
        let r = run(name, &dir, expected, &o);
        println!(
            "{:<10} {:>9.1} {:>9.2} {:>14.1} {:>14.1} {:>14.0} {:>9}",
            r.backend,
            r.seconds,
            r.gib_per_s,
            r.rss_before_mib,
            r.rss_peak_mib,
            r.per_conn_kib,
            r.failures
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
