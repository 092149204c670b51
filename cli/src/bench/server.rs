//! The server process of `zserver bench`: zserver on one back end (plain and encrypted,
//! each on TCP and on WebSocket, and a bare echo on the back end's transport), or the
//! baselines (a raw tokio echo and a tarpc echo). It prints its addresses as one JSON line
//! and serves until its standard input closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zserver::{Config, Incoming, Router, ServerBuilder, WsOptions};

use super::{baseline, run_on, BoxError};
use crate::options::CompressionArg;

/// Arguments of the hidden `bench-server` command.
#[derive(clap::Args, Debug)]
pub(crate) struct ServerArgs {
    /// Serve zserver on this back end (plain and encrypted).
    #[arg(long, conflicts_with = "baselines")]
    pub backend: Option<String>,
    /// Serve the baselines instead: raw tokio echo, raw tokio sink, tarpc echo.
    #[arg(long)]
    pub baselines: bool,
    /// Payload compression the zserver servers offer.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}

/// The bench handlers: `echo` (a call), `sink` (one-way, counted), `count` (the count so
/// far) and `bulk` (an upload, drained; answers with its length). `echo` and `sink` are
/// synchronous handlers (`Router::sync_bytes`), run on the connection's task as they are read.
pub(crate) fn router() -> Router {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    Router::new()
        .sync_bytes("echo", |_ctx, b| Ok(b))
        .sync_bytes("sink", move |_ctx, _b| {
            received.fetch_add(1, Ordering::Relaxed);
            Ok([])
        })
        .call("count", move |_ctx, (): ()| {
            let n = counter.load(Ordering::Relaxed);
            async move { Ok::<_, zserver::Error>(n) }
        })
        .upload("bulk", |_ctx, mut body: Incoming| async move {
            let mut n = 0u64;
            while let Some(chunk) = body.chunk().await? {
                n += chunk.len() as u64;
            }
            Ok(n.to_le_bytes().to_vec())
        })
}

pub(crate) fn run(args: ServerArgs) -> Result<(), BoxError> {
    let mut addrs: BTreeMap<&str, SocketAddr> = BTreeMap::new();
    let _keep_alive;
    if let Some(name) = &args.backend {
        let transport =
            zserver::transport(name).ok_or_else(|| format!("back end `{name}` is not built in"))?;
        let runtime = transport.runtime();
        addrs.insert("bare", super::bare::serve(transport.clone())?);
        let mut plain_config = Config::plain_trusted_link();
        plain_config.compression = args.compression.compression();
        let mut config = Config::default();
        config.compression = args.compression.compression();
        let servers = run_on(&runtime, async move {
            let plain = ServerBuilder::new(transport.clone())
                .config(plain_config)
                .router(router())
                .bind("127.0.0.1:0")
                .await?;
            let encrypted = ServerBuilder::new(transport)
                .config(config)
                .router(router())
                .bind("127.0.0.1:0")
                .await?;
            let plain_ws = plain.listen_ws("127.0.0.1:0", WsOptions::new()).await?;
            let encrypted_ws = encrypted.listen_ws("127.0.0.1:0", WsOptions::new()).await?;
            Ok::<_, zserver::Error>(((plain, encrypted), (plain_ws, encrypted_ws)))
        })?;
        let (servers, (plain_ws, encrypted_ws)) = servers;
        addrs.insert("plain", servers.0.local_addr());
        addrs.insert("encrypted", servers.1.local_addr());
        addrs.insert("plain_ws", plain_ws);
        addrs.insert("encrypted_ws", encrypted_ws);
        _keep_alive = Some(servers);
    } else if args.baselines {
        let rt = baseline::runtime();
        let (raw_echo, raw_sink, tarpc) = rt.block_on(baseline::serve())?;
        addrs.insert("raw_echo", raw_echo);
        addrs.insert("raw_sink", raw_sink);
        addrs.insert("tarpc", tarpc);
        _keep_alive = None;
        println!("{}", serde_json::to_string(&addrs)?);
        wait_for_stdin_eof();
        drop(rt);
        return Ok(());
    } else {
        return Err("bench-server needs --backend NAME or --baselines".into());
    }
    println!("{}", serde_json::to_string(&addrs)?);
    wait_for_stdin_eof();
    Ok(())
}

fn wait_for_stdin_eof() {
    let _ = std::io::stdin().lines().count();
}
