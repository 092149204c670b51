//! The hidden `bench-fanout-server` command: the server of one zserver or raw row, in a
//! process of its own (so that its `VmRSS` is its own). It prints `{"addr": "IP:PORT"}` and
//! serves until its standard input closes.

use std::sync::Arc;
use std::time::Duration;

use zserver::channels::{Channels, Namespace};
use zserver::ServerBuilder;

use super::{raw, zs, History, System};
use crate::bench::{run_on, BoxError};

/// Publications each channel keeps with `--history memory`.
pub(crate) const HISTORY_SIZE: usize = 100;

/// Arguments of the hidden `bench-fanout-server` command.
#[derive(clap::Args, Debug)]
pub(crate) struct FanoutServerArgs {
    /// `zserver-plain`, `zserver-encrypted` or `raw`.
    #[arg(long)]
    pub system: String,
    /// The zserver back end.
    #[arg(long, default_value = "tokio")]
    pub backend: String,
    /// The `bench:` namespace's history: `none`, `memory` or `durable`.
    #[arg(long, default_value = "none")]
    pub history: String,
}

pub(crate) fn run(args: FanoutServerArgs) -> Result<(), BoxError> {
    let system = System::parse(&args.system)?;
    let history = History::parse(&args.history)?;
    if system == System::Raw {
        let rt = raw::runtime();
        let addr = rt.block_on(raw::serve())?;
        println!("{}", serde_json::json!({ "addr": addr }));
        wait_for_stdin_eof();
        drop(rt);
        return Ok(());
    }
    let transport = zserver::transport(&args.backend)
        .ok_or_else(|| format!("back end `{}` is not built in", args.backend))?;
    let runtime = transport.runtime();
    let mut namespace = Namespace::new("bench:");
    if history != History::None {
        namespace = namespace.history(HISTORY_SIZE, Some(Duration::from_secs(3600)));
    }
    let mut channels = Channels::new();
    // `durable`: the login server's embedded store, in a folder removed when the row ends.
    let dir = (history == History::Durable).then(|| {
        std::env::temp_dir().join(format!("zserver-bench-durable-{}", std::process::id()))
    });
    if let Some(dir) = &dir {
        let store = zserver_login::Store::open(dir)?;
        channels = channels.store(Arc::new(store));
        namespace = namespace.durable(true);
    }
    let channels = channels.namespace(namespace);
    let mut config = zs::config(system == System::ZserverEncrypted);
    // Every subscriber may come from one address; the bench spreads them over 32.
    config.max_connections_per_ip = 1_000_000;
    let server = run_on(&runtime, async move {
        ServerBuilder::new(transport)
            .channels(channels)
            .config(config)
            .bind("127.0.0.1:0")
            .await
    })?;
    println!("{}", serde_json::json!({ "addr": server.local_addr() }));
    wait_for_stdin_eof();
    drop(server);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn wait_for_stdin_eof() {
    let _ = std::io::stdin().lines().count();
}
