//! `zserver`: the command-line tool.
//!
//! - `zserver bench`: the back ends against each other and against the peers (a raw tokio
//!   echo and tarpc), in one run, servers in separate processes. See `BENCHMARKS.md`.

use clap::{Parser, Subcommand};

mod bench;

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
    /// Benchmark the back ends side by side, against a raw tokio echo and tarpc.
    Bench(bench::BenchArgs),
    /// The server side of `zserver bench`, run by it as a child process.
    #[command(hide = true)]
    BenchServer(bench::server::ServerArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::BenchServer(args) => bench::server::run(args),
    };
    if let Err(e) = result {
        eprintln!("zserver: {e}");
        std::process::exit(1);
    }
}
