//! The Noise XX handshake over a fresh connection, after the preambles.
//!
//! ```text
//! client -> server   msg1: e
//! server -> client   msg2: e, ee, s, es
//! client -> server   msg3: s, se
//! ```
//! Each message travels as a u16 little-endian length and the Noise message. The prologue
//! is the client's preamble followed by the server's, so a tampered preamble (say, a
//! downgraded mode byte) makes the handshake fail. The client checks its pin against the
//! server's static key as soon as msg2 reveals it, before sending anything else.

use std::time::Instant;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::cipher::{CipherState, KEY_LEN};
use super::record::{Opener, Sealer};
use super::{hex, Encryption, Keypair, NOISE_PARAMS};
use crate::error::Error;
use crate::transport::{BoxRead, BoxWrite};

/// Longest handshake message accepted (XX messages are at most 96 bytes here).
const MAX_MESSAGE: usize = 1024;

/// Which side of the handshake this is.
pub(crate) enum Role<'a> {
    /// The client; refuses a server whose static key is not `pin`, if given.
    Initiator { pin: Option<&'a [u8; 32]> },
    /// The server.
    Responder,
}

/// What a finished handshake gives: this side's sealer and opener, the peer's static key,
/// and the handshake hash (known only to the two ends; it binds stable-session resumption
/// to this handshake).
pub(crate) type Shaken = (Sealer, Opener, [u8; 32], [u8; 32]);

/// Runs the handshake.
pub(crate) async fn handshake(
    read: &mut BoxRead,
    write: &mut BoxWrite,
    role: Role<'_>,
    local: &Keypair,
    encryption: &Encryption,
    prologue: &[u8],
    now: Instant,
) -> Result<Shaken, Error> {
    let Encryption::Noise { provider, rekey } = *encryption else {
        return Err(Error::Handshake(
            "the Noise handshake needs encryption on".into(),
        ));
    };
    let params = NOISE_PARAMS
        .parse()
        .expect("the Noise parameters are valid");
    let builder = snow::Builder::new(params)
        .local_private_key(local.private_key())
        .and_then(|b| b.prologue(prologue))
        .map_err(noise_error)?;
    let initiator = matches!(role, Role::Initiator { .. });
    let mut hs = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise_error)?;
    let mut buf = [0u8; MAX_MESSAGE];
    let mut scratch = [0u8; MAX_MESSAGE];
    if initiator {
        send(write, &mut hs, &mut buf).await?; // -> e
        receive(read, &mut hs, &mut buf, &mut scratch).await?; // <- e, ee, s, es
        if let Role::Initiator { pin: Some(pin) } = role {
            let got = hs.get_remote_static().unwrap_or_default();
            if got != pin.as_slice() {
                return Err(Error::KeyMismatch {
                    expected: hex(pin),
                    got: hex(got),
                });
            }
        }
        send(write, &mut hs, &mut buf).await?; // -> s, se
    } else {
        receive(read, &mut hs, &mut buf, &mut scratch).await?;
        send(write, &mut hs, &mut buf).await?;
        receive(read, &mut hs, &mut buf, &mut scratch).await?;
    }
    if !hs.is_handshake_finished() {
        return Err(Error::Handshake("handshake did not finish".into()));
    }
    let mut remote = [0u8; 32];
    remote.copy_from_slice(
        hs.get_remote_static()
            .ok_or_else(|| Error::Handshake("peer sent no static key".into()))?,
    );
    let mut hash = [0u8; 32];
    hash.copy_from_slice(hs.get_handshake_hash());
    let (to_responder, to_initiator): ([u8; KEY_LEN], [u8; KEY_LEN]) =
        hs.dangerously_get_raw_split();
    let (send_key, recv_key) = if initiator {
        (to_responder, to_initiator)
    } else {
        (to_initiator, to_responder)
    };
    Ok((
        Sealer::new(CipherState::new(provider, send_key), rekey, now),
        Opener::new(CipherState::new(provider, recv_key)),
        remote,
        hash,
    ))
}

async fn send(
    write: &mut BoxWrite,
    hs: &mut snow::HandshakeState,
    buf: &mut [u8; MAX_MESSAGE],
) -> Result<(), Error> {
    let n = hs.write_message(&[], &mut buf[2..]).map_err(noise_error)?;
    buf[..2].copy_from_slice(&(n as u16).to_le_bytes());
    write.write_all(&buf[..2 + n]).await?;
    write.flush().await?;
    Ok(())
}

async fn receive(
    read: &mut BoxRead,
    hs: &mut snow::HandshakeState,
    buf: &mut [u8; MAX_MESSAGE],
    scratch: &mut [u8; MAX_MESSAGE],
) -> Result<(), Error> {
    let mut len = [0u8; 2];
    read.read_exact(&mut len).await?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > MAX_MESSAGE {
        return Err(Error::Handshake(format!(
            "handshake message of {len} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    read.read_exact(&mut buf[..len]).await?;
    hs.read_message(&buf[..len], scratch).map_err(noise_error)?;
    Ok(())
}

fn noise_error(e: snow::Error) -> Error {
    Error::Handshake(e.to_string())
}
