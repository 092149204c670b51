//! The partial-frame row: peers that announce a large frame (plain) or record (encrypted),
//! send 1 KB of it and go quiet, as a hostile client would to make the server hold memory.
//! Written from docs/PROTOCOL.md with blocking sockets and the `snow` Noise library, so that
//! it depends on nothing the server's code decides.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::BoxError;

/// Bytes each peer sends of its frame or record (after the header).
pub(super) const SENT: usize = 1000;

/// Length a peer announces: a whole 4 MiB frame, the default `max_frame`.
const ANNOUNCED: u32 = 4 * 1024 * 1024;

const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Opens one connection to `addr` that announces a 4 MiB frame (or, if `encrypted`, after
/// the Noise handshake, a 4 MiB record) and sends [`SENT`] bytes of it. The caller keeps
/// the socket open for as long as the server should hold the partial frame.
pub(super) fn open(addr: SocketAddr, encrypted: bool) -> Result<TcpStream, BoxError> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let ours = [b'Z', b'S', b'R', b'V', 1, 0, u8::from(encrypted), 0];
    s.write_all(&ours)?;
    let mut theirs = [0u8; 8];
    s.read_exact(&mut theirs)?;
    let mut msg = Vec::with_capacity(4 + 4 + SENT);
    if encrypted {
        handshake(&mut s, &[ours, theirs].concat())?;
        // A record header (length = ciphertext + 16-byte tag, kind 0), then part of it.
        msg.extend_from_slice(&(ANNOUNCED + 16).to_le_bytes());
        msg.push(0);
    } else {
        msg.extend_from_slice(&ANNOUNCED.to_le_bytes());
    }
    msg.resize(msg.len() + SENT, 0x5A);
    s.write_all(&msg)?;
    Ok(s)
}

/// The client side of Noise XX: three messages, each a u16 little-endian length and the
/// message; the prologue is the client's preamble followed by the server's.
fn handshake(s: &mut TcpStream, prologue: &[u8]) -> Result<(), BoxError> {
    let builder = snow::Builder::new(NOISE_PARAMS.parse()?);
    let keys = builder.generate_keypair()?;
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse()?)
        .local_private_key(&keys.private)?
        .prologue(prologue)?
        .build_initiator()?;
    let (mut buf, mut out) = ([0u8; 1024], [0u8; 1024]);
    let send = |s: &mut TcpStream, hs: &mut snow::HandshakeState, buf: &mut [u8; 1024]| {
        let n = hs.write_message(&[], &mut buf[2..])?;
        buf[..2].copy_from_slice(&(n as u16).to_le_bytes());
        s.write_all(&buf[..2 + n])?;
        Ok::<_, BoxError>(())
    };
    send(s, &mut hs, &mut buf)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > buf.len() {
        return Err(format!("handshake message of {len} bytes").into());
    }
    s.read_exact(&mut buf[..len])?;
    hs.read_message(&buf[..len], &mut out)?;
    send(s, &mut hs, &mut buf)?;
    Ok(())
}
