//! The hidden `bench-fanout-clients` command: one row's subscribers and its publisher, in
//! a process of their own (a child of `zserver bench-fanout`), driven over stdin/stdout.
//!
//! It connects every subscriber and the publisher, prints `{"connected": N}`; on the line
//! `subscribe` subscribes them all and prints `{"subscribed": N}`; on a [`Pass`] (a JSON
//! line) runs it and prints its [`PassResult`]; it exits when its standard input closes.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};

use super::pump::{Pass, PassResult};
use super::{peers, raw, zs, System};
use crate::bench::BoxError;

/// Source addresses per row: connection `i` leaves from the `i % SOURCES`-th.
const SOURCES: usize = 32;

/// Arguments of the hidden `bench-fanout-clients` command.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClientsArgs {
    /// The system under test (`zserver-plain`, `zserver-encrypted`, `raw`, `nats`, `mosquitto`).
    #[arg(long)]
    pub system: String,
    /// The zserver back end (zserver rows).
    #[arg(long, default_value = "tokio")]
    pub backend: String,
    /// The server's address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Channels; subscriber `i` joins channel `i % channels`.
    #[arg(long)]
    pub channels: usize,
    /// Subscriber connections.
    #[arg(long)]
    pub subscribers: usize,
    /// This row's block of loopback source addresses (127.0.BLOCK.2, 127.0.BLOCK.3, …).
    #[arg(long, default_value_t = 10)]
    pub block: u8,
    /// Seconds to connect every subscriber; a system that has not accepted them all by
    /// then is measured with those it did (mosquitto) or fails the row (the others).
    #[arg(long, default_value_t = 60.0)]
    pub connect_secs: f64,
}

impl ClientsArgs {
    /// The local address subscriber `i` binds to.
    pub(crate) fn source(&self, i: usize) -> SocketAddr {
        let ip = Ipv4Addr::new(127, 0, self.block, 2 + (i % SOURCES) as u8);
        SocketAddr::new(ip.into(), 0)
    }

    /// The subscribers kept out of `connected`: a multiple of the channel count, so that
    /// every channel has as many.
    pub(crate) fn keep(&self, connected: usize) -> usize {
        connected / self.channels * self.channels
    }
}

/// One row's client side, connected.
pub(crate) trait Row {
    /// Subscribers connected and kept.
    fn connected(&self) -> usize;
    /// Subscribes every kept subscriber (subscriber `j` to channel `j % channels`); how
    /// many the system confirmed.
    fn subscribe(&mut self) -> Result<usize, BoxError>;
    /// Runs one pass.
    fn pass(&self, p: Pass) -> Result<PassResult, BoxError>;
}

pub(crate) fn run(args: ClientsArgs) -> Result<(), BoxError> {
    let system = System::parse(&args.system)?;
    let mut row: Box<dyn Row> = match system {
        System::ZserverPlain | System::ZserverEncrypted => Box::new(zs::ZsRow::connect(
            &args,
            system == System::ZserverEncrypted,
        )?),
        System::Raw => Box::new(raw::RawRow::connect(&args)?),
        System::Nats => Box::new(peers::NatsRow::connect(&args)?),
        System::Mosquitto => Box::new(peers::MqttRow::connect(&args)?),
    };
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{}",
        serde_json::json!({ "connected": row.connected() })
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = if line.trim() == "subscribe" {
            serde_json::json!({ "subscribed": row.subscribe()? })
        } else {
            let pass: Pass = serde_json::from_str(&line)?;
            serde_json::to_value(row.pass(pass)?)?
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}
