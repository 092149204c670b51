//! `zserver bench-fanout`: channel fan-out, zserver on every back end (plain and encrypted,
//! history none and in memory) against a raw tokio fan-out (the limit), nats-server and
//! mosquitto, in one run on one machine.
//!
//! Each row is two child processes: its server (this binary's hidden `bench-fanout-server`,
//! or nats-server / mosquitto, started by the bench on a free loopback port) and its clients
//! (the hidden `bench-fanout-clients`: every subscriber connection and the one publisher,
//! within the 20,000 file descriptors a process may have). Subscribers leave from 32
//! loopback source addresses per row (127.0.B.2 …). The rows of one shape (channels ×
//! subscribers) are all set up first, then run round-robin, `runs` passes over all of
//! them and both payloads, so that the machine's noise hits every row alike; each figure
//! is the median over the passes, and each ratio is taken between medians of the same run.
//! How a pass publishes and what it times: [`pump`]; the clock: [`probe`].
//!
//! Server memory per subscription: the server's `VmRSS` with every subscriber connected and
//! subscribed, minus it with the same connections open (each having made one call) but not
//! subscribed, divided by the
//! subscriptions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bench::{median, BoxError};

mod clients;
mod external;
mod peers;
mod probe;
mod procs;
mod pump;
mod raw;
mod report;
mod server;
mod zs;

pub(crate) use clients::{run as run_clients, ClientsArgs};
pub(crate) use server::{run as run_server, FanoutServerArgs};

use external::External;
use procs::{rss_kib, Proc};
use pump::{Pass, PassResult};

/// Arguments of `zserver bench-fanout`.
#[derive(clap::Args, Debug)]
pub(crate) struct FanoutArgs {
    /// zserver back ends to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tokio,async-std,smol")]
    pub backends: Vec<String>,
    /// A short run (well under a minute): 1,000 subscribers, 3 passes of 0.1 s.
    #[arg(long)]
    pub quick: bool,
    /// Also write every row as JSON (`{"rows": [...]}`) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Passes over every row (default 5, quick 3).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Seconds of the throughput phase per row, payload and pass (default 1, quick 0.1);
    /// the latency phase takes half that.
    #[arg(long)]
    pub secs: Option<f64>,
    /// Subscribers per row (default 10000, quick 1000): shapes 1 channel × N and N/10
    /// channels × 10.
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Systems to run, comma-separated: zserver-plain, zserver-encrypted, raw, nats,
    /// mosquitto. nats and mosquitto are skipped, with a message, when Debian's
    /// `nats-server` or `mosquitto` is not installed.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zserver-plain,zserver-encrypted,raw,nats,mosquitto"
    )]
    pub systems: Vec<String>,
    /// zserver's channel history, comma-separated: `none`, `memory` (100 publications per
    /// channel), `durable` (the same, kept in the login server's embedded SQLite store, in a
    /// temporary folder).
    #[arg(long, value_delimiter = ',', default_value = "none,memory")]
    pub history: Vec<String>,
    /// Payload sizes in bytes, comma-separated (at least 8: the send time).
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    pub payloads: Vec<usize>,
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum System {
    ZserverPlain,
    ZserverEncrypted,
    Raw,
    Nats,
    Mosquitto,
}

impl System {
    pub(crate) fn parse(name: &str) -> Result<Self, BoxError> {
        Ok(match name {
            "zserver-plain" => Self::ZserverPlain,
            "zserver-encrypted" => Self::ZserverEncrypted,
            "raw" => Self::Raw,
            "nats" => Self::Nats,
            "mosquitto" => Self::Mosquitto,
            _ => return Err(format!("unknown system `{name}`").into()),
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ZserverPlain => "zserver-plain",
            Self::ZserverEncrypted => "zserver-encrypted",
            Self::Raw => "raw",
            Self::Nats => "nats",
            Self::Mosquitto => "mosquitto",
        }
    }

    fn is_zserver(self) -> bool {
        matches!(self, Self::ZserverPlain | Self::ZserverEncrypted)
    }
}

/// A zserver row's channel history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum History {
    None,
    Memory,
    /// Kept in the login server's embedded store (SQLite, in a temporary folder).
    Durable,
}

impl History {
    pub(crate) fn parse(name: &str) -> Result<Self, BoxError> {
        match name {
            "none" => Ok(Self::None),
            "memory" => Ok(Self::Memory),
            "durable" => Ok(Self::Durable),
            _ => Err(format!("unknown history `{name}` (none, memory, durable)").into()),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Memory => "memory",
            Self::Durable => "durable",
        }
    }
}

/// One row: a system (on a back end, with a history) at a shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Spec {
    pub channels: usize,
    pub subscribers: usize,
    pub system: System,
    pub backend: String,
    pub history: History,
}

/// The settings of one run, after defaults.
struct Settings {
    runs: usize,
    secs: f64,
    subscribers: usize,
    payloads: Vec<usize>,
    connect_secs: f64,
    /// Pause before each memory reading.
    settle: Duration,
}

/// A row set up: its server, its clients, the memory its subscriptions took.
struct Live {
    spec: Spec,
    clients: Proc,
    _server: ServerSide,
    subscribers: usize,
    rss_per_sub: f64,
    samples: BTreeMap<usize, Vec<PassResult>>,
}

enum ServerSide {
    Own(Proc),
    Peer(External),
}

impl ServerSide {
    fn pid(&self) -> u32 {
        match self {
            Self::Own(p) => p.pid(),
            Self::Peer(e) => e.pid(),
        }
    }
}

/// Starts `spec`'s server and clients (from loopback block `block`), connects, measures
/// the server's memory before and after subscribing.
fn start(spec: &Spec, s: &Settings, block: u8) -> Result<Live, BoxError> {
    let (server, addr) = match spec.system {
        System::Nats | System::Mosquitto => {
            let bin = if spec.system == System::Nats {
                "nats-server"
            } else {
                "mosquitto"
            };
            let bin = external::find(bin).ok_or("not installed")?;
            let peer = if spec.system == System::Nats {
                External::nats(&bin)?
            } else {
                External::mosquitto(&bin)?
            };
            let addr = peer.addr.to_string();
            (ServerSide::Peer(peer), addr)
        }
        _ => {
            let args = [
                "bench-fanout-server",
                "--system",
                spec.system.name(),
                "--backend",
                &spec.backend,
                "--history",
                spec.history.name(),
            ];
            let mut proc = Proc::spawn(&args.map(String::from), true)?;
            let addr = proc.answer(Duration::from_secs(30))?["addr"]
                .as_str()
                .ok_or("bench-fanout-server gave no address")?
                .to_string();
            (ServerSide::Own(proc), addr)
        }
    };
    let args: Vec<String> = [
        "bench-fanout-clients",
        "--system",
        spec.system.name(),
        "--backend",
        &spec.backend,
        "--addr",
        &addr,
        "--channels",
        &spec.channels.to_string(),
        "--subscribers",
        &spec.subscribers.to_string(),
        "--block",
        &block.to_string(),
        "--connect-secs",
        &s.connect_secs.to_string(),
    ]
    .map(String::from)
    .into();
    let mut clients = Proc::spawn(&args, false)?;
    let wait = Duration::from_secs_f64(s.connect_secs + 60.0);
    let connected = clients.answer(wait)?["connected"].as_u64().unwrap_or(0);
    std::thread::sleep(s.settle);
    let before = rss_kib(server.pid());
    clients.send("subscribe")?;
    let subscribed = clients.answer(wait)?["subscribed"].as_u64().unwrap_or(0);
    if subscribed < connected {
        return Err(format!("only {subscribed} of {connected} subscriptions confirmed").into());
    }
    std::thread::sleep(s.settle);
    let after = rss_kib(server.pid());
    Ok(Live {
        spec: Spec {
            subscribers: connected as usize,
            ..spec.clone()
        },
        clients,
        _server: server,
        subscribers: connected as usize,
        rss_per_sub: (after as f64 - before as f64) * 1024.0 / subscribed.max(1) as f64,
        samples: BTreeMap::new(),
    })
}

impl Live {
    /// The row's figures, one per payload: medians over the passes.
    fn rows(&self) -> Vec<report::Row> {
        let spec = &self.spec;
        self.samples
            .iter()
            .map(|(&payload, runs)| report::Row {
                system: spec.system.name(),
                backend: spec.backend.clone(),
                channels: spec.channels,
                subscribers: self.subscribers,
                payload,
                history: spec.history.name(),
                deliveries_per_s: median(runs.iter().map(|r| r.deliveries_per_s).collect()),
                p50_us: median(runs.iter().map(|r| r.p50_us).collect()),
                p99_us: median(runs.iter().map(|r| r.p99_us).collect()),
                server_rss_per_sub_bytes: self.rss_per_sub,
                lost: runs.iter().map(|r| r.lost).sum(),
                runs: runs.clone(),
            })
            .collect()
    }

    fn pass(&mut self, p: Pass) -> Result<PassResult, BoxError> {
        self.clients.send(&serde_json::to_string(&p)?)?;
        let limit = Duration::from_secs_f64(p.secs * 1.2 + p.lat_secs + 60.0);
        Ok(serde_json::from_value(self.clients.answer(limit)?)?)
    }
}

/// Every row of every shape, in table order.
fn specs(a: &FanoutArgs, s: &Settings) -> Result<Vec<Spec>, BoxError> {
    let n = s.subscribers;
    let wide = (n / 10).max(1);
    let shapes = [(1, n), (wide, if n >= 10 { wide * 10 } else { n })];
    let histories = a
        .history
        .iter()
        .map(|h| History::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    let mut systems = a
        .systems
        .iter()
        .map(|name| System::parse(name))
        .collect::<Result<Vec<_>, _>>()?;
    systems.sort();
    systems.dedup();
    for (system, bin) in [
        (System::Nats, "nats-server"),
        (System::Mosquitto, "mosquitto"),
    ] {
        if systems.contains(&system) && external::find(bin).is_none() {
            eprintln!(
                "zserver bench-fanout: `{bin}` is not installed: skipping the {} rows \
                 (install it with `apt-get install -y nats-server mosquitto`)",
                system.name()
            );
            systems.retain(|&s| s != system);
        }
    }
    let mut specs = Vec::new();
    for (channels, subscribers) in shapes {
        for &system in &systems {
            let spec = |backend: &str, history| Spec {
                channels,
                subscribers,
                system,
                backend: backend.into(),
                history,
            };
            if system.is_zserver() {
                for b in &a.backends {
                    for &h in &histories {
                        specs.push(spec(b, h));
                    }
                }
            } else {
                specs.push(spec("", History::None));
            }
        }
    }
    Ok(specs)
}

pub(crate) fn run(args: FanoutArgs) -> Result<(), BoxError> {
    for b in &args.backends {
        if zserver::transport(b).is_none() {
            return Err(format!("unknown back end `{b}` (tokio, async-std, smol)").into());
        }
    }
    let s = Settings {
        runs: args.runs.unwrap_or(if args.quick { 3 } else { 5 }),
        secs: args.secs.unwrap_or(if args.quick { 0.1 } else { 1.0 }),
        subscribers: args
            .subscribers
            .unwrap_or(if args.quick { 1000 } else { 10_000 }),
        payloads: args.payloads.clone(),
        connect_secs: if args.quick { 15.0 } else { 60.0 },
        // Past the server allocator's dirty-page decay (jemalloc, 1 s), so that what a
        // subscription left behind is measured, not the garbage of making it.
        settle: Duration::from_millis(if args.quick { 100 } else { 1500 }),
    };
    if s.runs == 0 || s.secs <= 0.0 || s.subscribers == 0 || s.payloads.is_empty() {
        return Err("--runs, --secs, --subscribers and --payloads must be positive".into());
    }
    if s.subscribers > 18_000 {
        return Err(
            "--subscribers above 18000 would exceed the 20,000 file descriptors a process may have"
                .into(),
        );
    }
    if let Some(small) = s.payloads.iter().find(|&&p| p < 8) {
        return Err(format!("payload {small} is under 8 bytes (the send time)").into());
    }
    let started = Instant::now();
    let quick = args.quick;
    let specs = specs(&args, &s)?;
    eprintln!(
        "zserver bench-fanout: {} rows x payloads {:?}, {} passes of {} s (+{} s latency); servers and clients in child processes",
        specs.len(),
        s.payloads,
        s.runs,
        s.secs,
        s.secs / 2.0
    );
    let mut rows: Vec<report::Row> = Vec::new();
    let mut failed: Vec<(Spec, String)> = Vec::new();
    let mut shapes: Vec<(usize, usize)> =
        specs.iter().map(|r| (r.channels, r.subscribers)).collect();
    shapes.dedup();
    for (channels, subscribers) in shapes {
        let mut live = Vec::new();
        for (i, spec) in specs
            .iter()
            .filter(|r| (r.channels, r.subscribers) == (channels, subscribers))
            .enumerate()
        {
            match start(spec, &s, 10 + i as u8) {
                Ok(row) => live.push(row),
                Err(e) => {
                    eprintln!("  {}: {e}", report::label(spec));
                    failed.push((spec.clone(), e.to_string()));
                }
            }
        }
        eprintln!(
            "  {channels} x {} subscribers: {} rows connected and subscribed ({:.0} s)",
            subscribers / channels,
            live.len(),
            started.elapsed().as_secs_f64()
        );
        // A warm-up pass (quick: the first payload only), then the measured passes.
        let warm = s.secs.min(if quick { 0.05 } else { 0.2 });
        for pass in 0..=s.runs {
            for row in live.iter_mut() {
                let payloads = if pass == 0 && quick {
                    &s.payloads[..1]
                } else {
                    &s.payloads[..]
                };
                for &payload in payloads {
                    let secs = if pass == 0 { warm } else { s.secs };
                    let p = Pass {
                        payload,
                        secs,
                        lat_secs: secs / 2.0,
                    };
                    match row.pass(p) {
                        Ok(r) if pass > 0 => row.samples.entry(payload).or_default().push(r),
                        Ok(_) => {}
                        Err(e) => eprintln!("  {}: pass failed: {e}", report::label(&row.spec)),
                    }
                }
            }
            if pass > 0 {
                eprintln!(
                    "  pass {pass}/{} ({:.0} s)",
                    s.runs,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        rows.extend(live.iter().flat_map(Live::rows));
        drop(live);
    }
    report::print(&rows, &failed);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report::json(&rows))?)?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
