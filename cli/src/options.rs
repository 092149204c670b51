//! Options shared by several commands: payload compression, and `serve`'s operator flags
//! (config file, metrics endpoint, log format, drain time).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use tracing_subscriber::fmt::format::FmtSpan;

/// `--compression`: the payload codecs a side offers ([`zserver::compression`]). Both sides must
/// offer a codec for it to be used; the client's preference wins.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum CompressionArg {
    /// Offer nothing: payloads travel as they are (the handshake is the same as without
    /// codecs).
    #[default]
    None,
    /// Offer LZ4 (fast, moderate ratio).
    Lz4,
    /// Offer Zstandard, then LZ4 (better ratio; LZ4 for peers without Zstandard).
    Zstd,
}

impl CompressionArg {
    /// The library setting this choice stands for.
    pub(crate) fn compression(self) -> zserver::Compression {
        match self {
            CompressionArg::None => zserver::Compression::off(),
            CompressionArg::Lz4 => zserver::Compression::lz4(),
            CompressionArg::Zstd => zserver::Compression::zstd(),
        }
    }

    /// The flag's value as written on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CompressionArg::None => "none",
            CompressionArg::Lz4 => "lz4",
            CompressionArg::Zstd => "zstd",
        }
    }
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the spans (connection id, peer, user) of each event.
    Json,
}

/// `serve`'s operator flags (flattened into its arguments, so each is a config-file key too).
#[derive(clap::Args, Debug)]
pub(crate) struct ServeOps {
    /// Read flags from this TOML file: each key is a flag's name (`quota-mib = 2048`); a
    /// flag given on the command line wins. See zserver.example.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics and a health check on /health
    /// (200 while serving, 503 once shutting down).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log format on standard error (RUST_LOG filters, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Payload compression offered to clients.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// On Ctrl-C or SIGTERM, answer 503 on /health for this many seconds before stopping,
    /// so that a load balancer sends no new clients.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub drain_secs: f64,
}

/// Installs the global log subscriber: `format` on standard error, filtered by RUST_LOG
/// (default `info`). A span's close is logged with its duration (`time.busy`, `time.idle`):
/// a connection's at `info`, each call's at `debug` (`RUST_LOG=zserver_core=debug`).
pub(crate) fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
