//! The raw tokio fan-out, the limit: no protocol, no encryption, no history. Every
//! connection first sends a `u32` LE hello: a channel number to subscribe to it (the server
//! answers with an empty frame once it has), or `u32::MAX` to publish. A publisher sends
//! `u32 LE length, u32 LE channel, payload` frames (the length counts channel and payload);
//! the server writes the same `u32 LE length + payload` frame, built once, to the socket of
//! every subscriber of that channel, through a bounded queue per subscriber drained by
//! that subscriber's own task (a full queue drops, as a slow subscriber would be cut off).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::clients::{ClientsArgs, Row};
use super::probe::Probe;
use super::pump::{self, Pass, PassResult, Publish, Sleep};
use crate::bench::BoxError;

const PUBLISHER: u32 = u32::MAX;
/// Frames queued per subscriber at most.
const QUEUE: usize = 4096;
const IO_BUF: usize = 16 * 1024;

type Hub = RwLock<HashMap<u32, Vec<mpsc::Sender<Bytes>>>>;

/// Starts the raw fan-out server on the current tokio runtime; its address.
pub(crate) async fn serve() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hub: Arc<Hub> = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_conn(stream, hub.clone()));
        }
    });
    Ok(addr)
}

async fn serve_conn(mut stream: TcpStream, hub: Arc<Hub>) -> std::io::Result<()> {
    let hello = stream.read_u32_le().await?;
    let (r, w) = stream.into_split();
    if hello == PUBLISHER {
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let mut body = vec![0u8; 1024];
        loop {
            let len = r.read_u32_le().await? as usize;
            let channel = r.read_u32_le().await?;
            let n = len.saturating_sub(4);
            if body.len() < n {
                body.resize(n, 0);
            }
            r.read_exact(&mut body[..n]).await?;
            let mut frame = BytesMut::with_capacity(4 + n);
            frame.put_u32_le(n as u32);
            frame.put_slice(&body[..n]);
            let frame = frame.freeze();
            let subs = hub.read().unwrap_or_else(|e| e.into_inner());
            for tx in subs.get(&channel).into_iter().flatten() {
                let _ = tx.try_send(frame.clone());
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let _ = tx.try_send(Bytes::from_static(&[0, 0, 0, 0]));
    hub.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(hello)
        .or_default()
        .push(tx);
    drop(r);
    let mut w = BufWriter::with_capacity(IO_BUF, w);
    while let Some(frame) = rx.recv().await {
        w.write_all(&frame).await?;
        while let Ok(frame) = rx.try_recv() {
            w.write_all(&frame).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

/// The 2-worker tokio runtime of the raw server and of the peers' clients.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    crate::bench::baseline::runtime()
}

/// A tokio sleep, for the pump.
pub(crate) fn tokio_sleep() -> Sleep {
    Arc::new(|d: Duration| Box::pin(tokio::time::sleep(d)))
}

/// A raw row's clients.
pub(crate) struct RawRow {
    rt: tokio::runtime::Runtime,
    streams: Vec<TcpStream>,
    publisher: Arc<RawPublisher>,
    probe: Arc<Probe>,
    channels: usize,
    per_channel: usize,
}

struct RawPublisher(mpsc::Sender<Bytes>);

impl Publish for RawPublisher {
    fn publish(&self, channel: usize, data: Bytes) -> BoxFuture<'_, Result<(), String>> {
        let mut frame = BytesMut::with_capacity(8 + data.len());
        frame.put_u32_le(4 + data.len() as u32);
        frame.put_u32_le(channel as u32);
        frame.put_slice(&data);
        Box::pin(async move {
            self.0
                .send(frame.freeze())
                .await
                .map_err(|_| "the raw publisher's connection closed".to_string())
        })
    }
}

impl RawRow {
    pub(crate) fn connect(args: &ClientsArgs) -> Result<Self, BoxError> {
        let rt = runtime();
        let a = args.clone();
        let (publisher, streams) = rt.block_on(async move {
            let mut publisher = TcpStream::connect(a.addr).await?;
            publisher.set_nodelay(true)?;
            publisher.write_u32_le(PUBLISHER).await?;
            let streams: Vec<std::io::Result<TcpStream>> = stream::iter(0..a.subscribers)
                .map(|i| {
                    let (local, addr) = (a.source(i), a.addr);
                    async move {
                        let socket = TcpSocket::new_v4()?;
                        socket.bind(local)?;
                        let stream = socket.connect(addr).await?;
                        stream.set_nodelay(true)?;
                        Ok(stream)
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            let streams = streams.into_iter().collect::<std::io::Result<Vec<_>>>()?;
            Ok::<_, std::io::Error>((publisher, streams))
        })?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        rt.spawn(async move {
            let mut w = BufWriter::with_capacity(64 * 1024, publisher);
            while let Some(frame) = rx.recv().await {
                w.write_all(&frame).await?;
                while let Ok(frame) = rx.try_recv() {
                    w.write_all(&frame).await?;
                }
                w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        });
        Ok(Self {
            rt,
            streams,
            publisher: Arc::new(RawPublisher(tx)),
            probe: Arc::new(Probe::new()),
            channels: args.channels,
            per_channel: 0,
        })
    }
}

/// Reads `u32 LE length + payload` frames, counting each; the first (empty) one confirms
/// the subscription.
async fn read_frames(stream: TcpStream, probe: Arc<Probe>, subscribed: oneshot::Sender<()>) {
    let mut r = BufReader::with_capacity(IO_BUF, stream);
    let mut subscribed = Some(subscribed);
    let mut body = vec![0u8; 1024];
    while let Ok(len) = r.read_u32_le().await {
        let n = len as usize;
        if n == 0 {
            if let Some(s) = subscribed.take() {
                let _ = s.send(());
            }
            continue;
        }
        if body.len() < n {
            body.resize(n, 0);
        }
        if r.read_exact(&mut body[..n]).await.is_err() {
            break;
        }
        probe.deliver(&body[..n]);
    }
}

impl Row for RawRow {
    fn connected(&self) -> usize {
        self.streams.len()
    }

    fn subscribe(&mut self) -> Result<usize, BoxError> {
        let streams = std::mem::take(&mut self.streams);
        let n = streams.len();
        let (probe, channels) = (self.probe.clone(), self.channels);
        let confirmed = self.rt.block_on(async move {
            let mut acks = Vec::with_capacity(n);
            for (j, mut stream) in streams.into_iter().enumerate() {
                stream.write_u32_le((j % channels) as u32).await?;
                let (tx, rx) = oneshot::channel();
                tokio::spawn(read_frames(stream, probe.clone(), tx));
                acks.push(rx);
            }
            let mut confirmed = 0;
            for ack in acks {
                if tokio::time::timeout(Duration::from_secs(30), ack)
                    .await
                    .is_ok()
                {
                    confirmed += 1;
                }
            }
            Ok::<_, std::io::Error>(confirmed)
        })?;
        self.per_channel = n / channels;
        Ok(confirmed)
    }

    fn pass(&self, p: Pass) -> Result<PassResult, BoxError> {
        let (probe, publisher) = (self.probe.clone(), self.publisher.clone());
        let (channels, per) = (self.channels, self.per_channel);
        let sleep = tokio_sleep();
        Ok(self.rt.block_on(async move {
            pump::pass(&probe, &*publisher, &sleep, channels, per, p).await
        })?)
    }
}
