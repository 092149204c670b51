//! The peers' client side: core NATS through `async-nats` (subject `bench.N`), and MQTT 3.1.1
//! at QoS 0 through `rumqttc` (topic `bench/N`), one client per subscriber connection plus
//! one publisher, on a 2-worker tokio runtime. Neither client lets the bench pick a source
//! address, so their connections all leave from 127.0.0.1 (one server port: far below the
//! ~28,000 ephemeral ports).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::oneshot;

use super::clients::{ClientsArgs, Row};
use super::probe::Probe;
use super::pump::{self, Pass, PassResult, Publish};
use super::raw::{runtime, tokio_sleep};
use crate::bench::BoxError;

/// Runs `pass` on `rt` with every row's tokio sleep.
fn run_pass(
    rt: &tokio::runtime::Runtime,
    probe: &Arc<Probe>,
    publisher: &dyn Publish,
    channels: usize,
    per: usize,
    p: Pass,
) -> Result<PassResult, BoxError> {
    let sleep = tokio_sleep();
    Ok(rt.block_on(pump::pass(probe, publisher, &sleep, channels, per, p))?)
}

// ----- NATS ------------------------------------------------------------------------------

/// A NATS row's clients.
pub(crate) struct NatsRow {
    rt: tokio::runtime::Runtime,
    subscribers: Vec<async_nats::Client>,
    publisher: NatsPublisher,
    probe: Arc<Probe>,
    channels: usize,
}

struct NatsPublisher {
    client: async_nats::Client,
    subjects: Vec<async_nats::Subject>,
}

impl Publish for NatsPublisher {
    fn publish(&self, channel: usize, data: Bytes) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.client
                .publish(self.subjects[channel].clone(), data)
                .await
                .map_err(|e| format!("nats publish: {e}"))
        })
    }
}

async fn nats_connect(url: String) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .no_echo()
        .ping_interval(Duration::from_secs(600))
        .connection_timeout(Duration::from_secs(30))
        .connect(url.as_str())
        .await
        .map_err(|e| format!("nats connect to {url}: {e}"))
}

impl NatsRow {
    pub(crate) fn connect(args: &ClientsArgs) -> Result<Self, BoxError> {
        let rt = runtime();
        let url = format!("nats://{}", args.addr);
        let n = args.subscribers;
        let (publisher, subscribers) = rt.block_on(async move {
            let publisher = nats_connect(url.clone()).await?;
            let subs: Vec<_> = stream::iter(0..n)
                .map(|_| nats_connect(url.clone()))
                .buffer_unordered(64)
                .collect()
                .await;
            let subs = subs.into_iter().collect::<Result<Vec<_>, _>>()?;
            Ok::<_, String>((publisher, subs))
        })?;
        let subjects = (0..args.channels)
            .map(|i| async_nats::Subject::from(format!("bench.{i}")))
            .collect();
        Ok(Self {
            rt,
            subscribers,
            publisher: NatsPublisher {
                client: publisher,
                subjects,
            },
            probe: Arc::new(Probe::new()),
            channels: args.channels,
        })
    }
}

impl Row for NatsRow {
    fn connected(&self) -> usize {
        self.subscribers.len()
    }

    fn subscribe(&mut self) -> Result<usize, BoxError> {
        let (clients, probe, channels) =
            (self.subscribers.clone(), self.probe.clone(), self.channels);
        let n = self.rt.block_on(async move {
            let done: Vec<Result<(), String>> = stream::iter(clients.into_iter().enumerate())
                .map(|(j, client)| {
                    let probe = probe.clone();
                    async move {
                        let subject = format!("bench.{}", j % channels);
                        let mut sub = client.subscribe(subject).await.map_err(|e| e.to_string())?;
                        // A round trip: the server has the subscription once it answers.
                        client.flush().await.map_err(|e| e.to_string())?;
                        tokio::spawn(async move {
                            while let Some(msg) = sub.next().await {
                                probe.deliver(&msg.payload);
                            }
                        });
                        Ok(())
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            done.into_iter().filter(Result::is_ok).count()
        });
        Ok(n)
    }

    fn pass(&self, p: Pass) -> Result<PassResult, BoxError> {
        let per = self.subscribers.len() / self.channels;
        run_pass(
            &self.rt,
            &self.probe,
            &self.publisher,
            self.channels,
            per,
            p,
        )
    }
}

// ----- MQTT ------------------------------------------------------------------------------

/// An MQTT row's clients; each client's event loop runs on a task of its own.
pub(crate) struct MqttRow {
    rt: tokio::runtime::Runtime,
    subscribers: Vec<MqttSub>,
    publisher: MqttPublisher,
    probe: Arc<Probe>,
    channels: usize,
    kept: usize,
}

struct MqttSub {
    client: AsyncClient,
    suback: Option<oneshot::Receiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct MqttPublisher {
    client: AsyncClient,
    topics: Vec<String>,
}

impl Publish for MqttPublisher {
    fn publish(&self, channel: usize, data: Bytes) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.client
                .publish_bytes(self.topics[channel].clone(), QoS::AtMostOnce, false, data)
                .await
                .map_err(|e| format!("mqtt publish: {e}"))
        })
    }
}

/// Starts client `id`'s event loop; it reports its CONNACK and its first SUBACK, and counts
/// what it receives into `probe`.
fn mqtt_client(
    id: String,
    port: u16,
    probe: Option<Arc<Probe>>,
) -> (MqttSub, oneshot::Receiver<()>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(600))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_request_channel_capacity(1024);
    let (client, mut events) = AsyncClient::new(options, 1024);
    // Nagle off, as every other row has it.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let (connack_tx, connack) = oneshot::channel();
    let (suback_tx, suback) = oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut connack_tx, mut suback_tx) = (Some(connack_tx), Some(suback_tx));
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(probe) = &probe {
                        probe.deliver(&p.payload);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connack_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let sub = MqttSub {
        client,
        suback: Some(suback),
        task,
    };
    (sub, connack)
}

impl MqttRow {
    /// Connects what mosquitto accepts within `--connect-secs`, 256 handshakes at a time.
    pub(crate) fn connect(args: &ClientsArgs) -> Result<Self, BoxError> {
        let rt = runtime();
        let port = args.addr.port();
        let (n, deadline) = (
            args.subscribers,
            Instant::now() + Duration::from_secs_f64(args.connect_secs),
        );
        let probe = Arc::new(Probe::new());
        let p = probe.clone();
        let (publisher, mut subscribers) = rt.block_on(async move {
            let (publisher, connack) = mqtt_client("bench-publisher".into(), port, None);
            tokio::time::timeout(Duration::from_secs(10), connack)
                .await
                .map_err(|_| "mosquitto: the publisher got no CONNACK".to_string())?
                .map_err(|_| "mosquitto: the publisher's connection failed".to_string())?;
            let results: Vec<Option<MqttSub>> = stream::iter(0..n)
                .map(|i| {
                    let p = p.clone();
                    async move {
                        let (sub, connack) = mqtt_client(format!("bench-sub-{i}"), port, Some(p));
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(wait, connack).await {
                            Ok(Ok(())) => Some(sub),
                            _ => {
                                sub.task.abort();
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            Ok::<_, String>((publisher, results.into_iter().flatten().collect::<Vec<_>>()))
        })?;
        let kept = args.keep(subscribers.len());
        for extra in subscribers.drain(kept..) {
            extra.task.abort();
        }
        if kept < n {
            eprintln!(
                "bench-fanout-clients: mosquitto accepted {kept} of {n} subscribers within {} s; measuring those",
                args.connect_secs
            );
        }
        Ok(Self {
            rt,
            subscribers,
            publisher: MqttPublisher {
                client: publisher.client,
                topics: (0..args.channels).map(|i| format!("bench/{i}")).collect(),
            },
            probe,
            channels: args.channels,
            kept,
        })
    }
}

impl Row for MqttRow {
    fn connected(&self) -> usize {
        self.kept
    }

    fn subscribe(&mut self) -> Result<usize, BoxError> {
        let channels = self.channels;
        let mut waits = Vec::with_capacity(self.subscribers.len());
        for (j, sub) in self.subscribers.iter_mut().enumerate() {
            let client = sub.client.clone();
            let suback = sub.suback.take();
            waits.push(async move {
                let topic = format!("bench/{}", j % channels);
                client.subscribe(topic, QoS::AtMostOnce).await.ok()?;
                tokio::time::timeout(Duration::from_secs(30), suback?)
                    .await
                    .ok()?
                    .ok()
            });
        }
        let done: Vec<Option<()>> = self.rt.block_on(
            stream::iter(waits)
                .buffer_unordered(256)
                .collect::<Vec<_>>(),
        );
        Ok(done.into_iter().flatten().count())
    }

    fn pass(&self, p: Pass) -> Result<PassResult, BoxError> {
        let per = self.kept / self.channels;
        run_pass(
            &self.rt,
            &self.probe,
            &self.publisher,
            self.channels,
            per,
            p,
        )
    }
}
