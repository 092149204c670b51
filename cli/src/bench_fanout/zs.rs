//! zserver's client side of a row: subscribers and a publisher on one back end's runtime,
//! through the library's own `ChannelCalls` (`subscribe`, `publish`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use zserver::channels::{ChannelCalls, Event};
use zserver::{Calls, Client, ClientBuilder, Config, Runtime, Transport};

use super::clients::{ClientsArgs, Row};
use super::probe::Probe;
use super::pump::{self, Pass, PassResult, Publish, Sleep};
use crate::bench::{run_on, BoxError};

/// Handshakes at once while connecting.
const AT_ONCE: usize = 128;

/// The name of channel `i`, in the bench server's `bench:` namespace.
pub(crate) fn channel_name(i: usize) -> String {
    format!("bench:{i}")
}

/// The bench's client or server configuration: plain or encrypted, no heartbeats (idle
/// rows waiting their turn send nothing).
pub(crate) fn config(encrypted: bool) -> Config {
    let mut config = if encrypted {
        Config::default()
    } else {
        Config::plain_trusted_link()
    };
    config.heartbeat = None;
    config
}

/// A zserver row's clients.
pub(crate) struct ZsRow {
    runtime: Arc<dyn Runtime>,
    subscribers: Vec<Client>,
    publisher: Arc<ZsPublisher>,
    probe: Arc<Probe>,
    channels: usize,
}

struct ZsPublisher {
    client: Client,
    runtime: Arc<dyn Runtime>,
    names: Arc<Vec<String>>,
    errors: Arc<AtomicU64>,
}

impl Publish for ZsPublisher {
    /// Starts the `publish` call on its own task (its answer comes after the server's
    /// fan-out; the pump's window bounds how many are in flight).
    fn publish(&self, channel: usize, data: Bytes) -> BoxFuture<'_, Result<(), String>> {
        let (client, names, errors) =
            (self.client.clone(), self.names.clone(), self.errors.clone());
        self.runtime.spawn(Box::pin(async move {
            if client.publish(&names[channel], data).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
        Box::pin(async { Ok(()) })
    }
}

impl ZsRow {
    pub(crate) fn connect(args: &ClientsArgs, encrypted: bool) -> Result<Self, BoxError> {
        let transport: Arc<dyn Transport> = zserver::transport(&args.backend)
            .ok_or_else(|| format!("back end `{}` is not built in", args.backend))?;
        let runtime = transport.runtime();
        let (addr, n, a) = (args.addr, args.subscribers, args.clone());
        let (t, config) = (transport.clone(), config(encrypted));
        let (publisher, subscribers) = run_on(&runtime, async move {
            let publisher = ClientBuilder::new(t.clone())
                .config(config.clone())
                .connect(addr)
                .await
                .map_err(|e| format!("publisher: cannot connect to {addr}: {e}"))?;
            let results: Vec<(usize, Result<Client, zserver::Error>)> = stream::iter(0..n)
                .map(|i| {
                    let builder = ClientBuilder::new(t.clone())
                        .config(config.clone())
                        .bind(a.source(i));
                    // A call on each (a presence query, through the channels' own handlers,
                    // that makes nothing), so that the server's "connected" memory is that of
                    // a connection in use, its first call's answer path included (about 400
                    // bytes on tokio, paid once by any connection that makes a call: a ping
                    // alone does not reach it): what subscribing adds is then the
                    // subscription's own.
                    async move {
                        let connected = match builder.connect(addr).await {
                            Ok(client) => {
                                use zserver::channels::ChannelCalls;
                                let _ = client.presence(&channel_name(0)).await;
                                client.ping().await.map(|_| client)
                            }
                            Err(e) => Err(e),
                        };
                        (i, connected)
                    }
                })
                .buffer_unordered(AT_ONCE)
                .collect()
                .await;
            let mut subscribers = Vec::with_capacity(n);
            for (i, r) in results {
                subscribers.push(r.map_err(|e| {
                    format!("subscriber {i} of {n} (from {}): {e}", a.source(i).ip())
                })?);
            }
            Ok::<_, String>((publisher, subscribers))
        })?;
        let names = Arc::new((0..args.channels).map(channel_name).collect());
        Ok(Self {
            publisher: Arc::new(ZsPublisher {
                client: publisher,
                runtime: runtime.clone(),
                names,
                errors: Arc::default(),
            }),
            runtime,
            subscribers,
            probe: Arc::new(Probe::new()),
            channels: args.channels,
        })
    }
}

impl Row for ZsRow {
    fn connected(&self) -> usize {
        self.subscribers.len()
    }

    fn subscribe(&mut self) -> Result<usize, BoxError> {
        let (clients, probe, rt) = (
            self.subscribers.clone(),
            self.probe.clone(),
            self.runtime.clone(),
        );
        let channels = self.channels;
        let n = run_on(&self.runtime, async move {
            let subs: Vec<_> = stream::iter(clients.into_iter().enumerate())
                .map(|(j, client)| async move {
                    let name = channel_name(j % channels);
                    client.subscribe(&name).await
                })
                .buffer_unordered(AT_ONCE)
                .collect()
                .await;
            let mut n = 0;
            for sub in subs {
                let mut sub = sub.map_err(|e| format!("subscribe: {e}"))?;
                let probe = probe.clone();
                rt.spawn(Box::pin(async move {
                    while let Some(event) = sub.recv().await {
                        if let Event::Publication(p) = event {
                            probe.deliver(&p.data);
                        }
                    }
                }));
                n += 1;
            }
            Ok::<_, String>(n)
        })?;
        Ok(n)
    }

    fn pass(&self, p: Pass) -> Result<PassResult, BoxError> {
        let (probe, publisher, rt) = (
            self.probe.clone(),
            self.publisher.clone(),
            self.runtime.clone(),
        );
        let sleep: Sleep = Arc::new(move |d: Duration| rt.sleep(d));
        let (channels, per) = (self.channels, self.subscribers.len() / self.channels);
        let result = run_on(&self.runtime, async move {
            pump::pass(&probe, &*publisher, &sleep, channels, per, p).await
        })?;
        let errors = self.publisher.errors.swap(0, Ordering::Relaxed);
        if errors > 0 {
            eprintln!("bench-fanout-clients: {errors} publish calls failed");
        }
        Ok(result)
    }
}
