//! The back end's transport alone: the raw tokio baseline's length-prefixed ping-pong, on
//! a back end's own sockets and runtime, with no zserver protocol in between. Where a
//! zserver row on that back end trails raw tokio, this row splits the gap between the
//! runtime (its reactor and wake-ups) and the protocol engine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use zserver::transport::{BoxRead, BoxWrite};
use zserver::Transport;

use super::load::Target;
use super::{measure, run_on, Sample, Tally, PAYLOAD, RAMP, STOP};

/// Listens on `transport` and answers each `u32-LE length + payload` frame with itself;
/// returns the address.
pub(super) fn serve(transport: Arc<dyn Transport>) -> std::io::Result<SocketAddr> {
    let runtime = transport.runtime();
    let rt = runtime.clone();
    run_on(&runtime, async move {
        let listener = transport.listen("127.0.0.1:0".parse().unwrap()).await?;
        let addr = listener.local_addr()?;
        let spawner = rt.clone();
        rt.spawn(Box::pin(async move {
            while let Ok(conn) = listener.accept().await {
                let (r, w) = conn.into_halves();
                spawner.spawn(Box::pin(async move {
                    let _ = echo(r, w).await;
                }));
            }
        }));
        Ok(addr)
    })
}

async fn echo(mut r: BoxRead, mut w: BoxWrite) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4 + PAYLOAD];
    loop {
        r.read_exact(&mut buf[..4]).await?;
        let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        if buf.len() < 4 + n {
            buf.resize(4 + n, 0);
        }
        r.read_exact(&mut buf[4..4 + n]).await?;
        w.write_all(&buf[..4 + n]).await?;
        w.flush().await?;
    }
}

/// One frame in flight over the back end's transport: frames/s and round-trip percentiles.
pub(super) fn pingpong(t: &Target, ramp: f64, secs: f64) -> Sample {
    let (transport, addr) = (t.transport.clone(), t.addr);
    let conn = run_on(&t.runtime, async move { transport.connect(addr).await })
        .unwrap_or_else(|e| panic!("cannot connect to the bare echo at {addr}: {e}"));
    let (mut r, mut w) = conn.into_halves();
    let phase = Arc::new(AtomicU8::new(RAMP));
    let (tx, rx) = mpsc::channel();
    let p = phase.clone();
    t.runtime.spawn(Box::pin(async move {
        let mut frame = [0xA5u8; 4 + PAYLOAD];
        frame[..4].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
        let mut buf = [0u8; 4 + PAYLOAD];
        let mut tally = Tally::default();
        loop {
            let now = p.load(Ordering::Relaxed);
            if now == STOP {
                break;
            }
            let start = Instant::now();
            w.write_all(&frame).await.expect("bare write");
            r.read_exact(&mut buf).await.expect("bare read");
            tally.record(now, Some(start.elapsed()));
        }
        let _ = tx.send(tally);
    }));
    measure(&phase, rx, 1, ramp, secs)
}
