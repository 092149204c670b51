//! Link setup, the one path clients and servers share: drives the negotiation state
//! machine ([`Negotiation`]: preambles, codec lists, Noise XX) over a new connection's
//! halves (TCP, WebSocket or a stable-session link) and binds a new stable session to its
//! result. The caller runs it under its time-out (the server's `handshake_timeout`, the
//! client's connect time-out).

use std::sync::Arc;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;
use crate::runtime::Runtime;
use crate::secure::{Established, Negotiation, MAX_HANDSHAKE_MESSAGE};
use crate::stable::Session;
use crate::transport::{BoxRead, BoxWrite};

/// Runs `negotiation` to its end: writes what it has to send, reads what it asks for.
/// `session`, a new stable session this link opens, ends with the negotiation if that
/// fails or is abandoned (dropped at a time-out), and is bound to its handshake hash if
/// it succeeds.
pub(crate) async fn establish(
    read: &mut BoxRead,
    write: &mut BoxWrite,
    mut negotiation: Negotiation<'_>,
    runtime: &dyn Runtime,
    session: Option<&Arc<Session>>,
) -> Result<Established, Error> {
    let guard = session.map(|s| s.abort_on_drop());
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let mut out = Vec::new();
    let established = loop {
        if negotiation.poll_transmit(&mut out) {
            write.write_all(&out).await?;
            write.flush().await?;
            out.clear();
        }
        if let Some(done) = negotiation.poll_established() {
            break done;
        }
        // Never more than the negotiation still needs: the bytes after it (the first
        // frames, or the first record sent with handshake message 3) stay in the socket
        // for the connection's reader.
        let want = negotiation.wants().min(buf.len());
        let n = read.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        negotiation.handle_input(runtime.now(), &buf[..n])?;
    };
    if let Some(session) = session {
        session.bind(established.secure.as_ref().map(|s| &s.handshake_hash[..]));
    }
    if let Some(guard) = guard {
        guard.disarm();
    }
    Ok(established)
}
