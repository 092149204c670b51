//! `zserver bench-cluster`: what routing a push through NATS to another node costs, against a
//! push between two users of one node, measured side by side in one run.
//!
//! Two login-server nodes run in this process (tokio back end), sharing a NATS server and a
//! PostgreSQL database. A sender on node 1 pushes to a user on node 1 and to a user on node 2,
//! alternately; each push is timed from the call until the recipient's client has the message.
//! Then each path is driven with many pushes in flight for throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver_login::{ClusterConfig, Event, LoginClient, LoginConfig, LoginServer, Store};

use crate::bench::{median, run_on, BoxError};

/// Arguments of `zserver bench-cluster`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClusterBenchArgs {
    /// The NATS server the two nodes share.
    #[arg(long, env = "ZSERVER_TEST_NATS")]
    pub nats: String,
    /// A PostgreSQL database the bench may add (and then remove) three users in.
    #[arg(long, env = "ZSERVER_TEST_POSTGRES")]
    pub store: String,
    /// Pushes timed one at a time, per path.
    #[arg(long, default_value_t = 2000)]
    pub pushes: usize,
    /// Pushes in flight for the throughput runs.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Pushes per throughput run, per path.
    #[arg(long, default_value_t = 20_000)]
    pub burst: usize,
}

/// Runs the benchmark and prints its table.
pub(crate) fn run(args: ClusterBenchArgs) -> Result<(), BoxError> {
    let transport = zserver::transport("tokio").ok_or("no tokio back end")?;
    let runtime = transport.runtime();
    run_on(&runtime, async move { bench(transport, args).await })
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Waits for the next message event on `client`.
async fn received(client: &LoginClient) -> Result<(), BoxError> {
    match client.next_event().await {
        Some(Event::Message(_)) => Ok(()),
        Some(Event::Kicked(why)) => Err(format!("kicked: {why}").into()),
        None => Err("connection closed".into()),
    }
}

async fn bench(
    transport: Arc<dyn zserver::Transport>,
    args: ClusterBenchArgs,
) -> Result<(), BoxError> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("zserver-bench-cluster-{pid}"));
    let mut config = LoginConfig::new(&dir);
    config.store = args.store.clone();
    let mut cluster = ClusterConfig::new(&args.nats);
    cluster.name = format!("bench{pid}");
    config.cluster = Some(cluster);
    let local = "127.0.0.1:0".parse()?;
    let n1 = LoginServer::start(transport.clone(), local, config.clone()).await?;
    let n2 = LoginServer::start(transport.clone(), local, config).await?;
    let pin = n1.fingerprint();
    let names = [format!("b{pid}s"), format!("b{pid}l"), format!("b{pid}r")];
    let connect = |addr| LoginClient::connect(transport.clone(), addr, Some(&pin));
    let admin = connect(n1.local_addr()).await?;
    for name in &names {
        admin.register(name, "bench-password").await?;
    }
    let sender = connect(n1.local_addr()).await?;
    let near = connect(n1.local_addr()).await?;
    let far = connect(n2.local_addr()).await?;
    for (client, name) in [&sender, &near, &far].into_iter().zip(&names) {
        client.login(name, "bench-password").await?;
    }
    let start = Instant::now();
    while n1.online().len() < 3 {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the nodes did not see each other's users within 10 s".into());
        }
        zserver::sleep(Duration::from_millis(20)).await;
    }

    // Latency: one push at a time, the two paths alternating.
    let targets = [(&near, names[1].as_str()), (&far, names[2].as_str())];
    let mut rtts = [Vec::new(), Vec::new()];
    for i in 0..args.pushes * 2 {
        let (client, name) = targets[i % 2];
        let t0 = Instant::now();
        sender.push(&[name], "ping").await?;
        received(client).await?;
        rtts[i % 2].push(t0.elapsed().as_secs_f64() * 1e6);
    }

    // Throughput: many pushes in flight, one path after the other.
    let sender = Arc::new(sender);
    let in_flight = args.in_flight.max(1);
    let per_task = args.burst.div_ceil(in_flight);
    let total = per_task * in_flight;
    let mut rates = Vec::new();
    for (client, name) in targets {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let (sender, name) = (sender.clone(), name.to_owned());
            let (tx, rx) = tokio::sync::oneshot::channel();
            transport.runtime().spawn(Box::pin(async move {
                let mut result = Ok(());
                for _ in 0..per_task {
                    if let Err(e) = sender.push(&[name.as_str()], "load").await {
                        result = Err(e.to_string());
                        break;
                    }
                }
                let _ = tx.send(result);
            }));
            tasks.push(rx);
        }
        for _ in 0..total {
            received(client).await?;
        }
        for task in tasks {
            task.await.map_err(|_| "a push task ended")??;
        }
        rates.push(total as f64 / t0.elapsed().as_secs_f64());
    }

    println!(
        "push latency, call to delivery ({} each, alternating), and throughput ({} in flight):",
        args.pushes, args.in_flight
    );
    println!("| path | median µs | p99 µs | pushes/s |");
    println!("| --- | --- | --- | --- |");
    let labels = ["same node", "other node (NATS)"];
    for i in 0..2 {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            labels[i],
            median(rtts[i].clone()),
            percentile(rtts[i].clone(), 0.99),
            rates[i]
        );
    }
    println!(
        "other node ÷ same node: latency {:.2}×, throughput {:.2}×",
        median(rtts[1].clone()) / median(rtts[0].clone()),
        rates[1] / rates[0]
    );

    n1.shutdown().await;
    n2.shutdown().await;
    let (store, data) = (args.store.clone(), dir.clone());
    tokio::task::spawn_blocking(move || {
        if let Ok(store) = Store::open_spec(&store, &data) {
            for name in &names {
                let _ = store.delete_user(name);
            }
        }
        let _ = std::fs::remove_dir_all(&data);
    })
    .await?;
    Ok(())
}
