//! The Noise XX handshake, sans-IO: the Noise half of the link negotiation
//! ([`super::negotiate`]), which frames its messages and decides when to call these.
//!
//! ```text
//! client -> server   msg1: e
//! server -> client   msg2: e, ee, s, es
//! client -> server   msg3: s, se
//! ```
//! Each message travels as a u16 little-endian length and the Noise message. The prologue
//! is the client's preamble followed by the server's (then both codec lists, when they
//! were exchanged), so a tampered preamble (say, a downgraded mode byte) makes the
//! handshake fail.

use std::time::Instant;

use super::cipher::{CipherState, KEY_LEN};
use super::record::{Opener, Sealer};
use super::{Encryption, Keypair, NOISE_PARAMS};
use crate::error::Error;

/// Longest handshake message accepted (XX messages are at most 96 bytes here).
pub(crate) const MAX_MESSAGE: usize = 1024;

/// Size of the length prefix in front of each handshake message.
pub(crate) const LENGTH_PREFIX: usize = 2;

/// The keys of an encrypted link and what the handshake proved.
pub(crate) struct Secure {
    /// Seals this side's records.
    pub(crate) sealer: Sealer,
    /// Opens the peer's records.
    pub(crate) opener: Opener,
    /// The peer's static public key.
    pub(crate) peer_key: [u8; 32],
    /// The Noise handshake hash (known only to the two ends; it binds stable-session
    /// resumption to this handshake).
    pub(crate) handshake_hash: [u8; 32],
}

/// One side's Noise XX state.
pub(crate) struct Noise {
    state: snow::HandshakeState,
    initiator: bool,
}

impl Noise {
    /// Starts the handshake with `local` as this side's static key.
    pub(crate) fn new(initiator: bool, local: &Keypair, prologue: &[u8]) -> Result<Self, Error> {
        let params = NOISE_PARAMS
            .parse()
            .expect("the Noise parameters are valid");
        let builder = snow::Builder::new(params)
            .local_private_key(local.private_key())
            .and_then(|b| b.prologue(prologue))
            .map_err(noise_error)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(noise_error)?;
        Ok(Self { state, initiator })
    }

    /// Whether the next message is this side's to write.
    pub(crate) fn my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// Whether all three messages have passed.
    pub(crate) fn finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Appends this side's next message, with its length prefix, to `out`.
    pub(crate) fn write_message(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = self
            .state
            .write_message(&[], &mut buf)
            .map_err(noise_error)?;
        let len = u16::try_from(n).expect("a handshake message fits its prefix");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Reads the peer's next message (without its length prefix); its payload, if any,
    /// is ignored.
    pub(crate) fn read_message(&mut self, message: &[u8]) -> Result<(), Error> {
        let mut payload = [0u8; MAX_MESSAGE];
        self.state
            .read_message(message, &mut payload)
            .map_err(noise_error)?;
        Ok(())
    }

    /// The peer's static key, once a message has revealed it.
    pub(crate) fn remote_static(&self) -> Option<&[u8]> {
        self.state.get_remote_static()
    }

    /// The finished handshake's keys: records from the client use the first split key.
    pub(crate) fn split(mut self, encryption: &Encryption, now: Instant) -> Result<Secure, Error> {
        let Encryption::Noise { provider, rekey } = *encryption else {
            return Err(Error::Handshake(
                "the Noise handshake needs encryption on".into(),
            ));
        };
        if !self.finished() {
            return Err(Error::Handshake("handshake did not finish".into()));
        }
        let mut peer_key = [0u8; 32];
        peer_key.copy_from_slice(
            self.remote_static()
                .ok_or_else(|| Error::Handshake("peer sent no static key".into()))?,
        );
        let mut handshake_hash = [0u8; 32];
        handshake_hash.copy_from_slice(self.state.get_handshake_hash());
        let (to_responder, to_initiator): ([u8; KEY_LEN], [u8; KEY_LEN]) =
            self.state.dangerously_get_raw_split();
        let (send_key, recv_key) = if self.initiator {
            (to_responder, to_initiator)
        } else {
            (to_initiator, to_responder)
        };
        Ok(Secure {
            sealer: Sealer::new(CipherState::new(provider, send_key), rekey, now),
            opener: Opener::new(CipherState::new(provider, recv_key)),
            peer_key,
            handshake_hash,
        })
    }
}

fn noise_error(e: snow::Error) -> Error {
    Error::Handshake(e.to_string())
}
