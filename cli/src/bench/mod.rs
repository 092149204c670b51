//! `zserver bench`: every back end side by side, against a raw tokio echo and tarpc, in one
//! run on one machine.
//!
//! Servers run in child processes (this binary's hidden `bench-server` command, or that of
//! the binary named by the environment variable `ZSERVER_BENCH_SERVER`, to compare builds):
//! one per back end (zserver plain and encrypted) and one for the baselines. Clients run in this
//! process, each zserver client on its own back end's runtime, the baselines on a 2-worker
//! tokio runtime. Timed rows run round-robin, `runs` passes over all of them, so that the
//! machine's noise hits every row alike; each figure is the median over the passes, and each
//! ratio is taken between medians of the same run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use zserver::Runtime;

use crate::options::CompressionArg;

mod bare;
pub(crate) mod baseline;
pub(crate) mod load;
mod partial;
mod report;
pub(crate) mod server;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Payload of every small call and one-way message, in bytes.
pub(crate) const PAYLOAD: usize = 64;
/// Calls kept in flight per connection in the pipelined rows.
pub(crate) const WINDOW: usize = 64;
/// Connections in the multi-connection rows.
pub(crate) const CONNS: usize = 8;

/// Phases of a timed run, shared by the driver and the load tasks.
pub(crate) const RAMP: u8 = 0;
pub(crate) const MEASURE: u8 = 1;
pub(crate) const STOP: u8 = 2;

/// Arguments of `zserver bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Back ends to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tokio,async-std,smol")]
    pub backends: Vec<String>,
    /// A short run (under a minute): 3 passes of 0.2 s, small transfers, 500 connections.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure, with each run's value, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Passes over the timed rows (default 5, quick 3).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Seconds per timed row and pass (default 1.5, quick 0.2).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Run only the timed rows whose key contains this text (e.g. `tokio/enc/bulk`,
    /// `pipelined1`, `raw/`), and no scale rows unless it is `scale`: for profiling.
    #[arg(long)]
    pub only: Option<String>,
    /// Connections opened in the scale rows (default 10000, quick 500); client and server
    /// each need one file descriptor per connection.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Payload compression offered by the zserver clients and servers (it applies to
    /// payloads of 1 KiB or more: the bulk rows).
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}

/// The settings of one run, after defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Settings {
    pub backends: Vec<String>,
    pub quick: bool,
    pub runs: usize,
    pub secs: f64,
    pub ramp: f64,
    pub bulk_bytes: u64,
    pub loopback_bytes: u64,
    pub connections: usize,
    pub scale_runs: usize,
    /// Connections in the partial-frame rows.
    pub partial_connections: usize,
    /// Connections opened all at once in the connect-storm rows.
    pub storms: Vec<usize>,
}

impl Settings {
    fn from_args(a: &BenchArgs) -> Result<Self, BoxError> {
        for b in &a.backends {
            if zserver::transport(b).is_none() {
                return Err(format!("unknown back end `{b}` (tokio, async-std, smol)").into());
            }
        }
        let s = Settings {
            backends: a.backends.clone(),
            quick: a.quick,
            runs: a.runs.unwrap_or(if a.quick { 3 } else { 5 }),
            secs: a.secs.unwrap_or(if a.quick { 0.2 } else { 1.5 }),
            ramp: if a.quick { 0.03 } else { 0.2 },
            bulk_bytes: if a.quick { 64 << 20 } else { 1 << 30 },
            loopback_bytes: if a.quick { 512 << 20 } else { 4 << 30 },
            connections: a.connections.unwrap_or(if a.quick { 500 } else { 10_000 }),
            scale_runs: 3,
            partial_connections: if a.quick { 300 } else { 1000 },
            storms: vec![500, 2000],
        };
        if s.runs == 0 || s.secs <= 0.0 || s.connections == 0 {
            return Err("--runs, --secs and --connections must be positive".into());
        }
        if s.connections > 18_000 {
            return Err("--connections above 18000 would exceed the 20,000 file-descriptor limit per process".into());
        }
        Ok(s)
    }
}

// ----- measurement plumbing --------------------------------------------------------------

/// What one load task counted.
#[derive(Default)]
pub(crate) struct Tally {
    calls: u64,
    /// Round trips in nanoseconds (ping-pong rows only).
    rtts: Vec<u64>,
}

impl Tally {
    /// Counts one call finished in `phase`, with its round trip if measured.
    pub(crate) fn record(&mut self, phase: u8, rtt: Option<Duration>) {
        if phase == MEASURE {
            self.calls += 1;
            if let Some(rtt) = rtt {
                self.rtts.push(rtt.as_nanos() as u64);
            }
        }
    }
}

/// One run of one row.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Sample {
    /// Calls, messages or GiB per second.
    pub rate: f64,
    /// Round-trip percentiles in microseconds (NaN where not measured).
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Sample {
    pub(crate) fn rate(rate: f64) -> Self {
        Sample {
            rate,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
        }
    }
}

/// Lets the load tasks ramp up, counts for `secs`, stops them and gathers their tallies.
pub(crate) fn measure(
    phase: &AtomicU8,
    done: mpsc::Receiver<Tally>,
    tasks: usize,
    ramp: f64,
    secs: f64,
) -> Sample {
    std::thread::sleep(Duration::from_secs_f64(ramp));
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Release);
    std::thread::sleep(Duration::from_secs_f64(secs));
    phase.store(STOP, Ordering::Release);
    let elapsed = t0.elapsed().as_secs_f64();
    let mut total = Tally::default();
    for _ in 0..tasks {
        let t = done
            .recv_timeout(Duration::from_secs(60))
            .expect("a load task did not finish within 60 s");
        total.calls += t.calls;
        total.rtts.extend(t.rtts);
    }
    let mut s = Sample::rate(total.calls as f64 / elapsed);
    if !total.rtts.is_empty() {
        total.rtts.sort_unstable();
        let n = total.rtts.len();
        s.p50_us = total.rtts[n / 2] as f64 / 1e3;
        s.p99_us = total.rtts[(n * 99 / 100).min(n - 1)] as f64 / 1e3;
    }
    s
}

/// Runs `fut` on `rt` and blocks this (non-worker) thread for its result.
pub(crate) fn run_on<T: Send + 'static>(
    rt: &Arc<dyn Runtime>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().expect("the task panicked")
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ----- server processes ------------------------------------------------------------------

/// A `bench-server` child process; it exits when dropped (its stdin closes).
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    addrs: BTreeMap<String, SocketAddr>,
}

impl ServerProcess {
    fn start(args: &[&str]) -> Result<Self, BoxError> {
        // Another build's server (say, the one before a change) for side-by-side figures.
        let exe = match std::env::var_os("ZSERVER_BENCH_SERVER") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()?,
        };
        let mut child = Command::new(exe)
            .arg("bench-server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let addrs = serde_json::from_str(&line)
            .map_err(|e| format!("bench-server {args:?} did not start: {e} ({line:?})"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            addrs,
        })
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// Resident memory now, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// ----- the run ---------------------------------------------------------------------------

/// Starts a fresh `b` server, opens `n` connections to its plain or encrypted address with
/// `open` (which returns them and the seconds it took), and returns those seconds and the
/// server's resident memory per connection in KiB, measured while they are open.
fn server_rss_per_conn<T>(
    b: &str,
    encrypted: bool,
    n: usize,
    open: impl FnOnce(SocketAddr) -> Result<(T, f64), BoxError>,
) -> Result<(f64, f64), BoxError> {
    let server = ServerProcess::start(&["--backend", b])?;
    std::thread::sleep(Duration::from_millis(100));
    let before = server.rss_kib();
    let (conns, secs) = open(server.addr(if encrypted { "encrypted" } else { "plain" }))?;
    std::thread::sleep(Duration::from_millis(300));
    let after = server.rss_kib();
    drop(conns);
    Ok((secs, after.saturating_sub(before) as f64 / n as f64))
}

/// A timed row: run once per pass.
struct Job {
    key: String,
    run: Box<dyn Fn(f64) -> Sample>,
    samples: Vec<Sample>,
}

pub(crate) fn run(args: BenchArgs) -> Result<(), BoxError> {
    let s = Settings::from_args(&args)?;
    let started = Instant::now();
    eprintln!(
        "zserver bench: back ends {}, {} passes x {} s per timed row, {PAYLOAD}-byte payloads; servers in child processes",
        s.backends.join(","),
        s.runs,
        s.secs
    );
    let tokio_rt = baseline::runtime();
    let rt = tokio_rt.handle().clone();
    let baselines = ServerProcess::start(&["--baselines"])?;
    let mut servers = BTreeMap::new();
    for b in &s.backends {
        let args = ["--backend", b, "--compression", args.compression.name()];
        servers.insert(b.clone(), ServerProcess::start(&args)?);
    }

    let mut jobs: Vec<Job> = Vec::new();
    let mut add = |key: String, run: Box<dyn Fn(f64) -> Sample>| {
        jobs.push(Job {
            key,
            run,
            samples: Vec::new(),
        })
    };
    let ramp = s.ramp;
    let (raw, sink, tarpc) = (
        baselines.addr("raw_echo"),
        baselines.addr("raw_sink"),
        baselines.addr("tarpc"),
    );
    {
        let h = rt.clone();
        add(
            "raw/pingpong".into(),
            Box::new(move |secs| baseline::raw_pingpong(&h, raw, ramp, secs)),
        );
        let h = rt.clone();
        add(
            "raw/pipelined1".into(),
            Box::new(move |secs| baseline::raw_pipelined(&h, raw, 1, ramp, secs)),
        );
        let h = rt.clone();
        add(
            "raw/pipelined8".into(),
            Box::new(move |secs| baseline::raw_pipelined(&h, raw, CONNS, ramp, secs)),
        );
        let h = rt.clone();
        add(
            "raw/oneway".into(),
            Box::new(move |secs| baseline::raw_oneway(&h, sink, secs)),
        );
        let h = rt.clone();
        add(
            "tarpc/pingpong".into(),
            Box::new(move |secs| baseline::tarpc_pingpong(&h, tarpc, ramp, secs)),
        );
        let h = rt.clone();
        add(
            "tarpc/pipelined1".into(),
            Box::new(move |secs| baseline::tarpc_pipelined(&h, tarpc, 1, ramp, secs)),
        );
        let h = rt.clone();
        add(
            "tarpc/pipelined8".into(),
            Box::new(move |secs| baseline::tarpc_pipelined(&h, tarpc, CONNS, ramp, secs)),
        );
        add(
            "ceiling/aes".into(),
            Box::new(|secs| Sample::rate(baseline::aes_rate(secs))),
        );
        let (h, bytes) = (rt.clone(), s.loopback_bytes);
        add(
            "ceiling/loopback".into(),
            Box::new(move |_| Sample::rate(baseline::loopback_rate(&h, bytes))),
        );
    }
    for (b, server) in &servers {
        // Every row over TCP; over WebSocket (the same server's WebSocket listener) the
        // encrypted latency and call rows and both bulk rows: the transport's cost.
        let transports = [("", "", false), ("ws-", "_ws", true)];
        for ((prefix, suffix, ws), (mode, encrypted)) in transports
            .into_iter()
            .flat_map(|t| [(t, ("plain", false)), (t, ("enc", true))])
        {
            let name = if encrypted { "encrypted" } else { "plain" };
            let addr = server.addr(&format!("{name}{suffix}"));
            let mut target = load::Target::over(b, addr, encrypted, ws);
            target.config.compression = args.compression.compression();
            let target = Arc::new(target);
            let key = |row: &str| format!("{b}/{prefix}{mode}/{row}");
            if encrypted || !ws {
                let t = target.clone();
                add(
                    key("pingpong"),
                    Box::new(move |secs| load::pingpong(&t, ramp, secs)),
                );
                let t = target.clone();
                add(
                    key("pipelined1"),
                    Box::new(move |secs| load::pipelined(&t, 1, ramp, secs)),
                );
                let t = target.clone();
                add(
                    key("pipelined8"),
                    Box::new(move |secs| load::pipelined(&t, CONNS, ramp, secs)),
                );
            }
            if !ws {
                let t = target.clone();
                add(key("oneway"), Box::new(move |secs| load::oneway(&t, secs)));
            }
            let (t, bytes) = (target.clone(), s.bulk_bytes);
            add(key("bulk"), Box::new(move |_| load::bulk(&t, bytes)));
        }
        let target = Arc::new(load::Target::new(b, server.addr("bare"), false));
        add(
            format!("{b}/bare/pingpong"),
            Box::new(move |secs| bare::pingpong(&target, ramp, secs)),
        );
    }

    if let Some(only) = &args.only {
        jobs.retain(|j| j.key.contains(only.as_str()));
    }
    // A warm-up pass, then the measured passes, round-robin.
    let warmup = if s.quick { 0.05 } else { 0.3 };
    for job in &jobs {
        if !job.key.contains("bulk") && !job.key.starts_with("ceiling") {
            (job.run)(warmup);
        }
    }
    for pass in 0..s.runs {
        for job in jobs.iter_mut() {
            let sample = (job.run)(s.secs);
            job.samples.push(sample);
        }
        eprintln!(
            "  pass {}/{} ({:.0} s)",
            pass + 1,
            s.runs,
            started.elapsed().as_secs_f64()
        );
    }
    drop(servers);
    drop(baselines);

    // Connection scale: a fresh server per measurement, so its memory starts clean.
    let mut scale: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let scale_backends = match args.only.as_deref() {
        None | Some("scale") => s.backends.clone(),
        Some(_) => Vec::new(),
    };
    for b in &scale_backends {
        for (mode, encrypted) in [("plain", false), ("enc", true)] {
            let mut runs = Vec::new();
            for _ in 0..s.scale_runs {
                runs.push(server_rss_per_conn(b, encrypted, s.connections, |addr| {
                    let target = load::Target::new(b, addr, encrypted);
                    load::open_many(&target, s.connections, 256)
                })?);
            }
            scale.insert(format!("{b}/{mode}"), runs);
            // Peers that send 1 KB of a 4 MiB frame or record and go quiet.
            let mut runs = Vec::new();
            for _ in 0..s.scale_runs {
                let n = s.partial_connections;
                let (_, per_conn) = server_rss_per_conn(b, encrypted, n, |addr| {
                    let peers = (0..n)
                        .map(|_| partial::open(addr, encrypted))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("partial-frame peer, to {addr}: {e}"))?;
                    Ok((peers, f64::NAN))
                })?;
                runs.push((f64::NAN, per_conn));
            }
            scale.insert(format!("{b}/partial-{mode}"), runs);
        }
        // A connect storm: every connection at once (plain, so that handshake CPU does not
        // hide the listen queue), each on a fresh server.
        for &n in &s.storms {
            let mut runs = Vec::new();
            for _ in 0..s.scale_runs {
                let server = ServerProcess::start(&["--backend", b])?;
                let target = load::Target::new(b, server.addr("plain"), false);
                let (clients, secs) = load::open_many(&target, n, n)?;
                runs.push((secs, f64::NAN));
                drop(clients);
                drop(server);
            }
            scale.insert(format!("{b}/storm{n}"), runs);
        }
        eprintln!(
            "  scale {b} done ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }

    let samples: BTreeMap<String, Vec<Sample>> =
        jobs.into_iter().map(|j| (j.key, j.samples)).collect();
    let report = report::Report::new(&s, &samples, &scale);
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report.json(&s, &samples, &scale))?,
        )?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    drop(tokio_rt);
    Ok(())
}
