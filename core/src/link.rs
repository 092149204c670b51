//! Link setup, the one path clients and servers share: drives the negotiation state
//! machine ([`Negotiation`]: preambles, codec lists, Noise XX) over a new connection's
//! halves (TCP, WebSocket or a stable-session link) and binds a new stable session to its
//! result. The caller runs it under its time-out (the server's `handshake_timeout`, the
//! client's connect time-out).

use std::sync::Arc;
use std::time::Instant;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;
use crate::secure::{Established, Negotiation, MAX_HANDSHAKE_MESSAGE};
use crate::stable::Session;
use crate::transport::{BoxRead, BoxWrite};

/// Runs `negotiation` to its end: writes what it has to send, reads what it asks for;
/// `clock` tells the time (the record keys' rekey clock starts at the end).
/// `session`, a new stable session this link opens, ends with the negotiation if that
/// fails or is abandoned (dropped at a time-out), and is bound to its handshake hash if
/// it succeeds.
pub(crate) async fn establish(
    read: &mut BoxRead,
    write: &mut BoxWrite,
    mut negotiation: Negotiation<'_>,
    clock: &(dyn Fn() -> Instant + Sync),
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
        let used = negotiation.handle_input(clock(), &buf[..n])?;
        debug_assert_eq!(used, n, "read no further than wanted");
    };
    if let Some(session) = session {
        session.bind(established.secure.as_ref().map(|s| &s.handshake_hash[..]));
    }
    if let Some(guard) = guard {
        guard.disarm();
    }
    Ok(established)
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use futures_lite::io::Cursor;

    use super::*;
    use crate::config::Config;
    use crate::frame;
    use crate::secure::Keypair;

    fn pipe() -> (BoxRead, BoxWrite) {
        let (r, w) = piper::pipe(64 * 1024);
        (Box::new(r), Box::new(w))
    }

    #[test]
    fn client_and_server_establish_over_a_byte_stream_and_leave_what_follows() {
        let config = Config::default();
        let (server_key, client_key) = (Keypair::generate(), Keypair::generate());
        let (mut s_read, mut c_write) = pipe();
        let (mut c_read, mut s_write) = pipe();
        let pin = Some(server_key.public_key());
        let client = async {
            let neg = Negotiation::client(&config, &client_key, pin);
            let done = establish(&mut c_read, &mut c_write, neg, &Instant::now, None).await?;
            // The first record leaves right after message 3, as the connection writes it.
            let mut sealer = done.secure.expect("encrypted").sealer;
            let mut record = bytes::BytesMut::new();
            sealer.seal(b"first", &mut record, Instant::now());
            c_write.write_all(&record).await?;
            Ok::<_, Error>(())
        };
        let server = async {
            let neg = Negotiation::server(&config, &server_key);
            let done = establish(&mut s_read, &mut s_write, neg, &Instant::now, None).await?;
            let secure = done.secure.expect("encrypted");
            assert_eq!(secure.peer_key, client_key.public_key());
            Ok::<_, Error>(secure)
        };
        let (c, s) = block_on(futures_lite::future::zip(client, server));
        c.expect("client");
        // Nothing more comes: a driver that read past its end would now fail, not hang.
        drop(c_write);
        let mut opener = s.expect("server").opener;
        // The record is still in the stream, whole, for the connection's reader.
        let mut sealed = bytes::BytesMut::new();
        while opener.bytes_wanted(&sealed) > 0 {
            let mut byte = [0u8; 1];
            block_on(s_read.read_exact(&mut byte)).expect("record bytes");
            sealed.extend_from_slice(&byte);
        }
        let mut plain = bytes::BytesMut::new();
        opener.open(&mut sealed, &mut plain).expect("opens");
        assert_eq!(&plain[..], b"first");
    }

    #[test]
    fn frames_sent_with_a_plain_preamble_stay_in_the_stream() {
        let config = Config::plain_trusted_link();
        let key = Keypair::generate();
        let mut input = frame::preamble(0).to_vec();
        input.extend_from_slice(b"frames");
        let mut read: BoxRead = Box::new(Cursor::new(input));
        let mut write: BoxWrite = Box::new(Cursor::new(Vec::new()));
        let neg = Negotiation::server(&config, &key);
        block_on(establish(&mut read, &mut write, neg, &Instant::now, None)).expect("plain");
        let mut rest = Vec::new();
        block_on(read.read_to_end(&mut rest)).expect("read");
        assert_eq!(rest, b"frames");
    }

    #[test]
    fn an_early_end_of_stream_is_an_io_error() {
        let config = Config::default();
        let key = Keypair::generate();
        let mut read: BoxRead = Box::new(Cursor::new(frame::preamble(1)[..5].to_vec()));
        let mut write: BoxWrite = Box::new(Cursor::new(Vec::new()));
        let neg = Negotiation::server(&config, &key);
        let err = block_on(establish(&mut read, &mut write, neg, &Instant::now, None));
        assert!(matches!(err, Err(Error::Io(ref m)) if m.contains("end of file")));
    }
}
