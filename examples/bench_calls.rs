//! End-to-end call throughput and latency: zserver against a hand-written raw tokio echo.
//!
//! ```text
//! cargo run --release --example bench_calls                     # R=5 runs of 2 s per row
//! cargo run --release --example bench_calls -- --quick          # R=3 runs of 0.5 s per row
//! cargo run --release --example bench_calls --features async-std,smol   # more back ends
//! cargo run --release --example bench_calls -- --only zserver-pipelined --runs 1 --secs 10
//! ```
//!
//! Client and server share one process and talk over 127.0.0.1 with 64-byte payloads.
//! Every row is measured in two shapes:
//!
//! - **pipelined**: 64 calls kept in flight on one connection; calls/s.
//! - **ping-pong**: one call in flight; calls/s and p50/p99 round-trip latency.
//!
//! Rows:
//!
//! - `raw-*`: the baseline, no framework. The server reads `u32-LE length + payload`
//!   frames through a tokio `BufReader` and writes them back through a `BufWriter`,
//!   flushing whenever the read buffer is drained. The pipelined client has one task on
//!   the write half (frames into a `BufWriter`, flushed whenever the 64-call window is
//!   full) and one on the read half (a `BufReader`; each reply returns a permit to a
//!   semaphore). The ping-pong client writes one frame and reads one back.
//! - `zserver-*` (tokio; `zserver-<backend>-*` for the others): a server with
//!   `Router::new().stream("echo", |_c, b| async move { Ok(b) })` and a client calling
//!   `call_bytes("echo", payload)`, both with `Config::plain_trusted_link()` so that they
//!   carry the same plaintext bytes as the baseline. `zserver-enc-*` is tokio with the
//!   default config: Noise handshake and AES-256-GCM records. Pipelined client shape
//!   (`--client`):
//!   `unordered` (default) is ONE task driving 64 `call_bytes` futures in a
//!   `futures_util::stream::FuturesUnordered`, refilled as each completes; `tasks` is 64
//!   runtime tasks each looping on `call_bytes`.
//!
//! Everything tokio (baseline and zserver/tokio) runs on one 2-worker multi-threaded tokio
//! runtime; the async-std and smol rows run on those back ends' own executors. Rows run
//! round-robin (a warm-up pass, then R passes over all rows) so that machine noise hits
//! every row alike; the table shows per-row medians, and ratios are zserver/raw medians.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use zserver::{Client, ClientBuilder, Config, Router, Runtime, Server, ServerBuilder, Transport};

const PAYLOAD: usize = 64;
const WINDOW: usize = 64;
const IO_BUF: usize = 64 * 1024;

/// Run phases, shared by the orchestrator and the load tasks.
const RAMP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

// ----- options -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientShape {
    Unordered,
    Tasks,
}

struct Opts {
    runs: usize,
    secs: f64,
    warmup: f64,
    ramp: f64,
    only: Option<Vec<String>>,
    client: ClientShape,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 5,
        secs: 2.0,
        warmup: 0.5,
        ramp: 0.1,
        only: None,
        client: ClientShape::Unordered,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let value = |i: &mut usize| -> String {
        *i += 1;
        args.get(*i)
            .cloned()
            .unwrap_or_else(|| usage(&format!("{} needs a value", args[*i - 1])))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => {
                o.runs = 3;
                o.secs = 0.5;
                o.warmup = 0.2;
                o.ramp = 0.05;
            }
            "--runs" => {
                o.runs = value(&mut i)
                    .parse()
                    .unwrap_or_else(|_| usage("bad --runs"))
            }
            "--secs" => {
                o.secs = value(&mut i)
                    .parse()
                    .unwrap_or_else(|_| usage("bad --secs"))
            }
            "--warmup" => {
                o.warmup = value(&mut i)
                    .parse()
                    .unwrap_or_else(|_| usage("bad --warmup"))
            }
            "--only" => o.only = Some(value(&mut i).split(',').map(str::to_owned).collect()),
            "--client" => {
                o.client = match value(&mut i).as_str() {
                    "unordered" => ClientShape::Unordered,
                    "tasks" => ClientShape::Tasks,
                    _ => usage("--client is `unordered` or `tasks`"),
                }
            }
            "-h" | "--help" => usage(""),
            // `cargo bench` style flags are ignored.
            "--bench" => {}
            other => usage(&format!("unknown argument `{other}`")),
        }
        i += 1;
    }
    if o.runs == 0 || o.secs <= 0.0 {
        usage("--runs and --secs must be positive");
    }
    o
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!(
        "usage: bench_calls [--quick] [--runs N] [--secs S] [--warmup S] \
         [--client unordered|tasks] [--only ROW[,ROW..]]\n\
         rows: raw-pipelined raw-pingpong zserver-pipelined zserver-pingpong (tokio, \
         plain), zserver-enc-pipelined zserver-enc-pingpong (tokio, encrypted) and \
         zserver-<backend>-pipelined / -pingpong (plain) for other compiled-in back ends"
    );
    std::process::exit(if msg.is_empty() { 0 } else { 2 })
}

// ----- measurement plumbing --------------------------------------------------------------

/// What one load task reports when it ends.
#[derive(Default)]
struct Tally {
    calls: u64,
    /// Round-trip times in nanoseconds (ping-pong only).
    rtts: Vec<u64>,
}

#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Process CPU time (all threads, client and server) per second of the run.
    cores: f64,
    /// Process CPU time per completed call, in nanoseconds.
    cpu_ns_per_call: f64,
}

/// CPU time used by this process so far (user + system, all threads), from /proc on
/// Linux (10 ms resolution); `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

/// Drives one timed run: the load tasks are already started and count only while the phase
/// is `MEASURE`; each sends one `Tally` on `done` when it ends.
fn measure(
    phase: &AtomicU8,
    done: mpsc::Receiver<Tally>,
    tasks: usize,
    ramp: f64,
    secs: f64,
) -> Sample {
    std::thread::sleep(Duration::from_secs_f64(ramp));
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Release);
    std::thread::sleep(Duration::from_secs_f64(secs));
    phase.store(STOP, Ordering::Release);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    let mut total = Tally::default();
    for _ in 0..tasks {
        let t = done
            .recv_timeout(Duration::from_secs(30))
            .expect("a load task did not finish within 30 s");
        total.calls += t.calls;
        total.rtts.extend(t.rtts);
    }
    let (mut p50_us, mut p99_us) = (f64::NAN, f64::NAN);
    if !total.rtts.is_empty() {
        total.rtts.sort_unstable();
        let n = total.rtts.len();
        p50_us = total.rtts[n / 2] as f64 / 1e3;
        p99_us = total.rtts[(n * 99 / 100).min(n - 1)] as f64 / 1e3;
    }
    Sample {
        rate: total.calls as f64 / elapsed,
        p50_us,
        p99_us,
        cores: cpu / elapsed,
        cpu_ns_per_call: cpu * 1e9 / total.calls as f64,
    }
}

/// Runs `fut` on `rt` and blocks the calling (non-worker) thread for its result.
fn run_on<T: Send + 'static>(
    rt: &Arc<dyn Runtime>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().expect("setup task failed")
}

fn frame() -> [u8; 4 + PAYLOAD] {
    let mut f = [0xA5u8; 4 + PAYLOAD];
    f[..4].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
    f
}

// ----- baseline: raw tokio length-prefixed echo ------------------------------------------

async fn raw_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        stream.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let _ = raw_echo(stream).await;
        });
    }
}

async fn raw_echo(stream: TcpStream) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let mut w = BufWriter::with_capacity(IO_BUF, w);
    let mut body = vec![0u8; 1024];
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if body.len() < n {
            body.resize(n, 0);
        }
        r.read_exact(&mut body[..n]).await?;
        w.write_all(&len).await?;
        w.write_all(&body[..n]).await?;
        // Flush only when nothing more is already buffered to answer.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

fn raw_pipelined(rt: &tokio::runtime::Handle, addr: SocketAddr, o: &Opts, secs: f64) -> Sample {
    let stream = rt
        .block_on(async { TcpStream::connect(addr).await })
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = stream.into_split();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let window = Arc::new(Semaphore::new(WINDOW));
    let (tx, rx) = mpsc::channel();
    {
        let (phase, window) = (phase.clone(), window.clone());
        rt.spawn(async move {
            let mut w = BufWriter::with_capacity(IO_BUF, w);
            let f = frame();
            while phase.load(Ordering::Relaxed) != STOP {
                match window.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => {
                        w.flush().await.unwrap();
                        window.acquire().await.unwrap().forget();
                    }
                }
                w.write_all(&f).await.unwrap();
            }
            w.flush().await.unwrap();
            w.shutdown().await.unwrap();
        });
    }
    {
        let phase = phase.clone();
        rt.spawn(async move {
            let mut r = BufReader::with_capacity(IO_BUF, r);
            let mut buf = [0u8; 4 + PAYLOAD];
            let mut calls = 0;
            loop {
                match r.read_exact(&mut buf).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => panic!("{e}"),
                }
                assert_eq!(
                    u32::from_le_bytes(buf[..4].try_into().unwrap()),
                    PAYLOAD as u32
                );
                if phase.load(Ordering::Relaxed) == MEASURE {
                    calls += 1;
                }
                window.add_permits(1);
            }
            let _ = tx.send(Tally {
                calls,
                rtts: vec![],
            });
        });
    }
    measure(&phase, rx, 1, o.ramp, secs)
}

fn raw_pingpong(rt: &tokio::runtime::Handle, addr: SocketAddr, o: &Opts, secs: f64) -> Sample {
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    {
        let phase = phase.clone();
        rt.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let f = frame();
            let mut buf = [0u8; 4 + PAYLOAD];
            let mut tally = Tally {
                calls: 0,
                rtts: Vec::with_capacity(1 << 20),
            };
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p == STOP {
                    break;
                }
                let t = Instant::now();
                s.write_all(&f).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                let rtt = t.elapsed().as_nanos() as u64;
                if p == MEASURE {
                    tally.calls += 1;
                    tally.rtts.push(rtt);
                }
            }
            let _ = tx.send(tally);
        });
    }
    measure(&phase, rx, 1, o.ramp, secs)
}

// ----- zserver ---------------------------------------------------------------------------

struct ZBackend {
    config: Config,
    transport: Arc<dyn Transport>,
    runtime: Arc<dyn Runtime>,
    server: Server,
}

impl ZBackend {
    /// A server on back end `name`, encrypted (Noise + AES-256-GCM, zserver's default) or
    /// plain (`Config::plain_trusted_link()`, comparable with the plaintext baseline).
    fn start(name: &str, encrypted: bool) -> Self {
        let transport = zserver::transport(name).expect("compiled-in back end");
        let runtime = transport.runtime();
        let config = if encrypted {
            Config::default()
        } else {
            Config::plain_trusted_link()
        };
        let (t, c) = (transport.clone(), config.clone());
        let server = run_on(&runtime, async move {
            let router = Router::new().stream("echo", |_c, b| async move { Ok(b) });
            ServerBuilder::new(t)
                .config(c)
                .router(router)
                .bind("127.0.0.1:0")
                .await
                .expect("bind")
        });
        ZBackend {
            config,
            transport,
            runtime,
            server,
        }
    }

    fn connect(&self) -> Client {
        let (t, c) = (self.transport.clone(), self.config.clone());
        let addr = self.server.local_addr();
        run_on(&self.runtime, async move {
            ClientBuilder::new(t)
                .config(c)
                .connect(addr)
                .await
                .expect("connect")
        })
    }
}

fn zs_pipelined(z: &ZBackend, o: &Opts, secs: f64) -> Sample {
    let client = z.connect();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    let payload = [0xA5u8; PAYLOAD];
    let tasks = match o.client {
        ClientShape::Unordered => {
            let (phase, client) = (phase.clone(), client.clone());
            z.runtime.spawn(Box::pin(async move {
                let mut calls = 0;
                let mut inflight = FuturesUnordered::new();
                for _ in 0..WINDOW {
                    inflight.push(client.call_bytes("echo", &payload));
                }
                while let Some(reply) = inflight.next().await {
                    assert_eq!(reply.expect("echo call").len(), PAYLOAD);
                    match phase.load(Ordering::Relaxed) {
                        STOP => continue,
                        MEASURE => calls += 1,
                        _ => {}
                    }
                    inflight.push(client.call_bytes("echo", &payload));
                }
                let _ = tx.send(Tally {
                    calls,
                    rtts: vec![],
                });
            }));
            1
        }
        ClientShape::Tasks => {
            for _ in 0..WINDOW {
                let (phase, client, tx) = (phase.clone(), client.clone(), tx.clone());
                z.runtime.spawn(Box::pin(async move {
                    let mut calls = 0;
                    loop {
                        let p = phase.load(Ordering::Relaxed);
                        if p == STOP {
                            break;
                        }
                        let reply = client.call_bytes("echo", &payload).await;
                        assert_eq!(reply.expect("echo call").len(), PAYLOAD);
                        if p == MEASURE {
                            calls += 1;
                        }
                    }
                    let _ = tx.send(Tally {
                        calls,
                        rtts: vec![],
                    });
                }));
            }
            drop(tx);
            WINDOW
        }
    };
    let s = measure(&phase, rx, tasks, o.ramp, secs);
    drop(client);
    s
}

fn zs_pingpong(z: &ZBackend, o: &Opts, secs: f64) -> Sample {
    let client = z.connect();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    {
        let (phase, client) = (phase.clone(), client.clone());
        z.runtime.spawn(Box::pin(async move {
            let payload = [0xA5u8; PAYLOAD];
            let mut tally = Tally {
                calls: 0,
                rtts: Vec::with_capacity(1 << 20),
            };
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p == STOP {
                    break;
                }
                let t = Instant::now();
                let reply = client.call_bytes("echo", &payload).await;
                let rtt = t.elapsed().as_nanos() as u64;
                assert_eq!(reply.expect("echo call").len(), PAYLOAD);
                if p == MEASURE {
                    tally.calls += 1;
                    tally.rtts.push(rtt);
                }
            }
            let _ = tx.send(tally);
        }));
    }
    let s = measure(&phase, rx, 1, o.ramp, secs);
    drop(client);
    s
}

// ----- rows and report -------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Pipelined,
    PingPong,
}

enum Target {
    Raw,
    Z(usize),
}

struct Row {
    id: String,
    label: String,
    shape: Shape,
    target: Target,
    samples: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // zserver::transport("tokio") picks up this runtime (Handle::try_current).
    let _entered = rt.enter();
    let handle = rt.handle().clone();

    let raw_listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind raw");
    let raw_addr = raw_listener.local_addr().unwrap();
    rt.spawn(raw_server(raw_listener));

    let mut backends = Vec::new();
    let mut rows = Vec::new();
    let mut add = |id: String, label: String, shape, target| {
        rows.push(Row {
            id,
            label,
            shape,
            target,
            samples: Vec::new(),
        })
    };
    let names = zserver::backends();
    // zserver variants: every compiled-in back end in plain mode, plus tokio encrypted.
    let mut variants: Vec<(&str, bool)> = names.iter().map(|n| (*n, false)).collect();
    variants.insert(1, ("tokio", true));
    for shape in [Shape::Pipelined, Shape::PingPong] {
        let (sid, sname) = match shape {
            Shape::Pipelined => ("pipelined", format!("pipelined x{WINDOW}")),
            Shape::PingPong => ("pingpong", "ping-pong x1".to_owned()),
        };
        add(
            format!("raw-{sid}"),
            format!("{:<17} {sname}", "raw tokio"),
            shape,
            Target::Raw,
        );
        for (i, &(name, encrypted)) in variants.iter().enumerate() {
            let (id, label) = match (name, encrypted) {
                ("tokio", false) => (format!("zserver-{sid}"), "zserver/tokio".to_owned()),
                ("tokio", true) => (format!("zserver-enc-{sid}"), "zserver/tokio+enc".to_owned()),
                _ => (format!("zserver-{name}-{sid}"), format!("zserver/{name}")),
            };
            add(id, format!("{label:<17} {sname}"), shape, Target::Z(i));
        }
    }
    if let Some(only) = &o.only {
        for want in only {
            if !rows.iter().any(|r| &r.id == want) {
                usage(&format!("no row `{want}` in this build"));
            }
        }
        rows.retain(|r| only.contains(&r.id));
    }
    // Start only the servers some remaining row uses.
    for (i, &(name, encrypted)) in variants.iter().enumerate() {
        let used = rows
            .iter()
            .any(|r| matches!(r.target, Target::Z(j) if j == i));
        backends.push(used.then(|| ZBackend::start(name, encrypted)));
    }

    println!(
        "bench_calls: payload {PAYLOAD} B, window {WINDOW}, {} runs x {} s per row after a {} s \
         warm-up, round-robin; tokio runtime 2 workers; zserver pipelined client: {}; \
         back ends: {}",
        o.runs,
        o.secs,
        o.warmup,
        match o.client {
            ClientShape::Unordered => "1 task + FuturesUnordered of 64 call_bytes futures",
            ClientShape::Tasks => "64 tasks each looping call_bytes",
        },
        names.join(",")
    );

    let run = |row: &Row, secs: f64| -> Sample {
        match (&row.target, row.shape) {
            (Target::Raw, Shape::Pipelined) => raw_pipelined(&handle, raw_addr, &o, secs),
            (Target::Raw, Shape::PingPong) => raw_pingpong(&handle, raw_addr, &o, secs),
            (Target::Z(i), Shape::Pipelined) => {
                zs_pipelined(backends[*i].as_ref().unwrap(), &o, secs)
            }
            (Target::Z(i), Shape::PingPong) => {
                zs_pingpong(backends[*i].as_ref().unwrap(), &o, secs)
            }
        }
    };
    for row in &rows {
        run(row, o.warmup);
    }
    let started = Instant::now();
    for pass in 0..o.runs {
        for row in rows.iter_mut() {
            let s = run(row, o.secs);
            row.samples.push(s);
        }
        eprintln!(
            "  pass {}/{} done ({:.0} s)",
            pass + 1,
            o.runs,
            started.elapsed().as_secs_f64()
        );
    }

    // Report.
    println!();
    println!(
        "{:<32} {:>10} {:>23} {:>7} {:>7} {:>7} {:>7} {:>6} {:>7}",
        "row (median of runs)",
        "calls/s",
        "[min .. max]",
        "vs raw",
        "paired",
        "p50 us",
        "p99 us",
        "cores",
        "cpu ns"
    );
    for row in &rows {
        let rates: Vec<f64> = row.samples.iter().map(|s| s.rate).collect();
        let rate = median(rates.clone());
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let p50 = median(row.samples.iter().map(|s| s.p50_us).collect());
        let p99 = median(row.samples.iter().map(|s| s.p99_us).collect());
        let cores = median(row.samples.iter().map(|s| s.cores).collect());
        let cpu_ns = median(row.samples.iter().map(|s| s.cpu_ns_per_call).collect());
        let raw = rows
            .iter()
            .find(|r| matches!(r.target, Target::Raw) && r.shape == row.shape);
        let (ratio, paired) = match raw {
            Some(raw) if !matches!(row.target, Target::Raw) => {
                let rr: Vec<f64> = raw.samples.iter().map(|s| s.rate).collect();
                let paired: Vec<f64> = rates.iter().zip(&rr).map(|(z, r)| z / r).collect();
                (
                    format!("{:.2}x", rate / median(rr)),
                    format!("{:.2}x", median(paired)),
                )
            }
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let lat = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{:<32} {:>10.0} {:>23} {:>7} {:>7} {:>7} {:>7} {:>6.2} {:>7.0}",
            row.label,
            rate,
            format!("[{min:.0} .. {max:.0}]"),
            ratio,
            paired,
            lat(p50),
            lat(p99),
            cores,
            cpu_ns
        );
    }
    println!(
        "\nvs raw = median(zserver calls/s) / median(raw calls/s), same shape; \
         paired = median over passes of the per-pass ratio (adjacent runs);\n\
         cores = process CPU time / wall time; cpu ns = process CPU time per call \
         (client + server, user + kernel)."
    );

    for z in backends.into_iter().flatten() {
        let rt = z.runtime.clone();
        run_on(&rt, async move { z.server.shutdown().await });
    }
}
