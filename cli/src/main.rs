//! `zserver`: the command-line tool.
//!
//! - `zserver serve`: the login server (accounts, files, push, offline messages) on its
//!   embedded SQLite store; `zserver user add|del|list` for the operator;
//!   `zserver client ... register|login|put|get|ls|rm|push|who|listen` for users.
//! - `zserver bench`: the back ends against each other and against the peers (a raw tokio
//!   echo and tarpc), in one run, servers in separate processes. See `BENCHMARKS.md`.

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod cluster_bench;
mod login;

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
enum Command {
    /// Run the login server on its embedded store (prints its key fingerprint).
    Serve(login::ServeArgs),
    /// Manage accounts in a server's data directory.
    User(login::UserArgs),
    /// Act as a user of a running server.
    Client(login::ClientArgs),
    /// Benchmark the back ends side by side, against a raw tokio echo and tarpc.
    Bench(bench::BenchArgs),
    /// Time a push routed through NATS to another node against one within a node.
    BenchCluster(cluster_bench::ClusterBenchArgs),
    /// The server side of `zserver bench`, run by it as a child process.
    #[command(hide = true)]
    BenchServer(bench::server::ServerArgs),
}

/// glibc's allocator keeps what a burst took: its mmap threshold rises to the largest block
/// freed (Argon2's 19 MiB), and freed memory stays in its arenas unless the top of a heap
/// passes the trim threshold. Fixed thresholds (which also turn off that rise) give memory
/// back after a burst: a login flood's aftermath went from 6.5× to 1.5× the resident memory
/// before it, at no cost in `zserver bench` (BENCHMARKS.md, "A login flood").
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "mimalloc", feature = "jemalloc"))
))]
fn tune_allocator() {
    const THRESHOLD: libc::c_int = 128 << 10;
    // SAFETY: mallopt only sets the allocator's parameters; called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "mimalloc", feature = "jemalloc"))
)))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => login::serve(args),
        Command::User(args) => login::user(args),
        Command::Client(args) => login::client(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchCluster(args) => cluster_bench::run(args),
        Command::BenchServer(args) => bench::server::run(args),
    };
    if let Err(e) = result {
        eprintln!("zserver: {e}");
        std::process::exit(1);
    }
}
