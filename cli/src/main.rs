//! `zserver`: the command-line tool.
//!
//! - `zserver serve`: the login server (accounts, files, push, offline messages) on its
//!   embedded SQLite store; `zserver user add|del|list` for the operator;
//!   `zserver client ... register|login|put|get|ls|rm|push|who|listen|sub|pub|presence|history`
//!   for users.
//! - `zserver bench`: the back ends against each other and against the peers (a raw tokio
//!   echo and tarpc), in one run, servers in separate processes. See `BENCHMARKS.md`.
//! - `zserver bench-fanout`: channel fan-out against a raw tokio fan-out, nats-server and
//!   mosquitto, servers and subscribers in separate processes.

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// The `zserver` binary's allocator: jemalloc, with a background thread that gives freed
/// memory back to the system after a second (`dirty_decay_ms:1000`, `muzzy_decay_ms:0`).
/// Chosen by measurement (BENCHMARKS.md, "A login flood"): after 1,000 concurrent logins
/// the server is back to 1.2× its memory before them, against 6.5× with glibc as is, and
/// `zserver bench` is at par. The library crates pick no allocator.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read once, at its start; `_RJEM_MALLOC_CONF` in the environment
/// overrides them).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
#[allow(unsafe_code)] // an exported static jemalloc reads at start
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// mimalloc instead, for comparing (`--features mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod api_args;
mod bench;
mod bench_fanout;
mod channel_actions;
mod channel_config;
mod cluster_bench;
mod config_file;
mod known_servers;
mod login;
mod metrics;
mod options;
mod rate_config;
#[cfg(unix)]
mod reload;
mod soak;
mod token;

#[derive(Parser)]
#[command(
    name = "zserver",
    version,
    about = "zserver: servers for very many long-lived connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per run: the size of `serve`'s many flags costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the login server on its embedded store (prints its key fingerprint).
    Serve(login::ServeArgs),
    /// Manage accounts in a server's data directory.
    User(login::UserArgs),
    /// Act as a user of a running server.
    Client(login::ClientArgs),
    /// Mint a login token (HS256) for testing, as an app's back end would: prints it.
    Token(token::TokenArgs),
    /// Benchmark the back ends side by side, against a raw tokio echo and tarpc.
    Bench(bench::BenchArgs),
    /// Time a push routed through NATS to another node against one within a node.
    BenchCluster(cluster_bench::ClusterBenchArgs),
    /// Hold many connections under mixed load (calls, pushes, channels, streams, logins)
    /// for minutes, reporting the server's RSS, descriptors and latency over time.
    Soak(soak::SoakArgs),
    /// The server side of `zserver bench`, run by it as a child process.
    #[command(hide = true)]
    BenchServer(bench::server::ServerArgs),
    /// Benchmark channel fan-out: zserver on each back end (plain and encrypted, history
    /// none and in memory) against a raw tokio fan-out, nats-server and mosquitto.
    ///
    /// Shapes: 1 channel x N subscribers and N/10 channels x 10 (N = 10,000; --quick
    /// 1,000), 64 B and 1 KiB payloads; figures: deliveries/s, publish-to-delivery p50 and
    /// p99, server RSS per subscription, each a median of several passes. Servers and
    /// subscribers run in child processes. nats and mosquitto rows need Debian's
    /// `nats-server` and `mosquitto` (`apt-get install -y nats-server mosquitto`) and are
    /// skipped with a message without them. History `durable` (the login server's store)
    /// is reserved for later and skipped: not measured yet.
    BenchFanout(bench_fanout::FanoutArgs),
    /// The server side of `zserver bench-fanout`, run by it as a child process.
    #[command(hide = true)]
    BenchFanoutServer(bench_fanout::FanoutServerArgs),
    /// The subscribers and publisher of `zserver bench-fanout`, run by it as a child process.
    #[command(hide = true)]
    BenchFanoutClients(bench_fanout::ClientsArgs),
}

/// The command line's definition, with a version that names the wire protocol too.
fn command() -> clap::Command {
    Cli::command().version(format!(
        "{} (wire protocol {})",
        env!("CARGO_PKG_VERSION"),
        zserver::PROTOCOL_VERSION
    ))
}

/// Parses the command line; for `serve --config FILE`, again with the file's keys as
/// defaults (so that flags given on the command line win).
fn parse() -> Result<ArgMatches, bench::BoxError> {
    let matches = command().get_matches();
    if let Some(("serve", serve)) = matches.subcommand() {
        if let Some(path) = serve.get_one::<std::path::PathBuf>("config") {
            let cmd = config_file::apply(command(), "serve", path)?;
            return Ok(cmd
                .try_get_matches()
                .unwrap_or_else(|e| config_file::parse_error(e, path).exit()));
        }
    }
    Ok(matches)
}

/// `serve`'s arguments parsed again from this process's command line and config file
/// (for a reload).
#[cfg(unix)]
pub(crate) fn serve_args() -> Result<login::ServeArgs, bench::BoxError> {
    let matches = command().try_get_matches()?;
    let matches = match matches.subcommand() {
        Some(("serve", serve)) => match serve.get_one::<std::path::PathBuf>("config") {
            Some(path) => config_file::apply(command(), "serve", path)?
                .try_get_matches()
                .map_err(|e| config_file::parse_error(e, path).render().to_string())?,
            None => matches,
        },
        _ => return Err("not `zserver serve`".into()),
    };
    match Cli::from_arg_matches(&matches)?.command {
        Command::Serve(args) => Ok(args),
        _ => Err("not `zserver serve`".into()),
    }
}

fn main() {
    let cli = match parse() {
        Ok(matches) => Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
        Err(e) => {
            eprintln!("zserver: {e}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => login::serve(args),
        Command::User(args) => login::user(args),
        Command::Client(args) => login::client(args),
        Command::Token(args) => token::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchCluster(args) => cluster_bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::BenchServer(args) => bench::server::run(args),
        Command::BenchFanout(args) => bench_fanout::run(args),
        Command::BenchFanoutServer(args) => bench_fanout::run_server(args),
        Command::BenchFanoutClients(args) => bench_fanout::run_clients(args),
    };
    if let Err(e) = result {
        eprintln!("zserver: {e}");
        std::process::exit(1);
    }
}
