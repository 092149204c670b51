//! The link negotiation as one sans-IO state machine: the preambles, the codec lists and
//! the Noise XX handshake (`docs/PROTOCOL.md`, sections 2, 2a and 2b), ending in one
//! [`Established`] value or one error.
//!
//! No I/O, no clock, no async: the caller feeds the peer's bytes to
//! [`handle_input`](Negotiation::handle_input), writes what
//! [`poll_transmit`](Negotiation::poll_transmit) gives, and takes the result from
//! [`poll_established`](Negotiation::poll_established). The machine consumes no byte past
//! the end of the negotiation: what follows (the first frames, or the first record, which
//! may share a read with handshake message 3) is left to the caller. Memory is bounded
//! whatever the peer sends: one item at a time (a preamble, a codec list of at most 255
//! ids, a handshake message of at most [`MAX_MESSAGE`] bytes), held as it arrives.
//!
//! ```text
//! both      preamble (8 bytes), sent at once
//! both      codec list (count, ids), when both preambles set flag bit 0
//! client -> server   Noise msg1   (u16 LE length + message)   } encrypted mode only
//! server -> client   Noise msg2                                }
//! client -> server   Noise msg3                                }
//! ```

use std::sync::Arc;
use std::time::Instant;

use super::handshake::{Noise, Secure, LENGTH_PREFIX, MAX_MESSAGE};
use super::{hex, Encryption, Keypair};
use crate::compression::{self, CompressionCodec};
use crate::config::Config;
use crate::error::Error;
use crate::frame::{self, PREAMBLE_CODECS, PREAMBLE_LEN};

/// What a finished negotiation settled: the keys (when encrypted) and the payload codec.
pub(crate) struct Established {
    /// The keys, peer key and handshake hash of an encrypted link; `None` on a plain one.
    pub(crate) secure: Option<Secure>,
    /// The codec both sides chose, if any.
    pub(crate) codec: Option<Arc<dyn CompressionCodec>>,
}

/// Which part of the peer's bytes comes next.
enum Step {
    /// The peer's 8-byte preamble.
    Preamble,
    /// The peer's codec list: its count byte, then that many ids.
    Offer,
    /// The length prefix of the peer's next Noise message.
    MessageLength,
    /// The peer's next Noise message, of this many bytes.
    Message(usize),
    /// Finished; the result waits in `established` (or was taken).
    Done,
    /// Failed; every later input gets this error again.
    Failed(Error),
}

/// One side of the link negotiation.
pub(crate) struct Negotiation<'a> {
    config: &'a Config,
    keypair: &'a Keypair,
    /// The client (initiator) or the server.
    client: bool,
    /// The key the client requires of the server, if any.
    pin: Option<[u8; 32]>,
    ours: [u8; PREAMBLE_LEN],
    /// This side's codec list, once sent.
    our_offer: Vec<u8>,
    /// The Noise prologue: the client's preamble, the server's, then both codec lists.
    prologue: Vec<u8>,
    codec: Option<Arc<dyn CompressionCodec>>,
    noise: Option<Noise>,
    step: Step,
    /// The bytes of the current item received so far (never more than the item).
    item: Vec<u8>,
    /// Bytes to send to the peer.
    outgoing: Vec<u8>,
    established: Option<Established>,
}

impl<'a> Negotiation<'a> {
    /// The client's side: offers what `config` says, and refuses a server whose static
    /// key is not `pin`, if given, before sending handshake message 3.
    pub(crate) fn client(config: &'a Config, keypair: &'a Keypair, pin: Option<[u8; 32]>) -> Self {
        Self::new(config, keypair, true, pin)
    }

    /// The server's side, with `keypair` as its long-term identity.
    pub(crate) fn server(config: &'a Config, keypair: &'a Keypair) -> Self {
        Self::new(config, keypair, false, None)
    }

    fn new(config: &'a Config, keypair: &'a Keypair, client: bool, pin: Option<[u8; 32]>) -> Self {
        let flags = if config.compression.is_off() {
            0
        } else {
            PREAMBLE_CODECS
        };
        let ours = frame::preamble_with(config.encryption.mode_byte(), flags);
        Self {
            config,
            keypair,
            client,
            pin,
            ours,
            our_offer: Vec::new(),
            prologue: Vec::new(),
            codec: None,
            noise: None,
            step: Step::Preamble,
            item: Vec::new(),
            // Each side sends its preamble at once, without waiting for the peer's.
            outgoing: ours.to_vec(),
            established: None,
        }
    }

    /// How many more bytes the current item needs: a reader that reads no more than this
    /// never takes bytes that follow the negotiation. 0 once finished or failed.
    pub(crate) fn wants(&self) -> usize {
        self.item_len() - self.item.len()
    }

    /// Feeds bytes from the peer; returns how many were used. Fewer than given only once
    /// the negotiation has finished: the rest belongs to the link that follows.
    pub(crate) fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<usize, Error> {
        if let Step::Failed(e) = &self.step {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < input.len() {
            let want = self.wants();
            if want == 0 {
                break;
            }
            let take = want.min(input.len() - used);
            self.item.extend_from_slice(&input[used..used + take]);
            used += take;
            if self.wants() == 0 {
                if let Err(e) = self.complete_items(now) {
                    self.fail(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    /// Moves the bytes to send to the peer onto the end of `out`; whether there were any.
    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.outgoing.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.outgoing);
        } else {
            out.append(&mut self.outgoing);
        }
        true
    }

    /// The result, once the negotiation has finished and everything it had to send has
    /// been taken by [`poll_transmit`](Self::poll_transmit) (the client's handshake
    /// message 3 must leave before the first record). Given once.
    pub(crate) fn poll_established(&mut self) -> Option<Established> {
        if !self.outgoing.is_empty() {
            return None;
        }
        self.established.take()
    }

    /// The full size of the item being read (0 when nothing is).
    fn item_len(&self) -> usize {
        match self.step {
            Step::Preamble => PREAMBLE_LEN,
            // The count byte, then the ids it announces.
            Step::Offer => 1 + self.item.first().map_or(0, |&n| usize::from(n)),
            Step::Message(n) => n,
            Step::MessageLength => LENGTH_PREFIX,
            Step::Done | Step::Failed(_) => 0,
        }
    }

    fn fail(&mut self, e: Error) {
        self.step = Step::Failed(e);
        self.item = Vec::new();
        self.outgoing = Vec::new();
        self.noise = None;
    }

    /// Acts on the item just completed, then on any empty item that follows (a Noise
    /// message of length 0), until the next one needs bytes or the negotiation is over.
    fn complete_items(&mut self, now: Instant) -> Result<(), Error> {
        loop {
            self.step = self.complete_item(now)?;
            self.item.clear();
            if matches!(self.step, Step::Done) || self.item_len() > 0 {
                return Ok(());
            }
        }
    }

    /// Acts on the complete item in `self.item`; returns the next step.
    fn complete_item(&mut self, now: Instant) -> Result<Step, Error> {
        match self.step {
            Step::Preamble => self.on_preamble(),
            Step::Offer => self.on_offer(),
            Step::MessageLength => {
                let len = usize::from(u16::from_le_bytes([self.item[0], self.item[1]]));
                if len > MAX_MESSAGE {
                    return Err(Error::Handshake(format!(
                        "handshake message of {len} bytes exceeds {MAX_MESSAGE}"
                    )));
                }
                Ok(Step::Message(len))
            }
            Step::Message(_) => self.on_message(now),
            Step::Done | Step::Failed(_) => Err(Error::Handshake("the negotiation is over".into())),
        }
    }

    fn on_preamble(&mut self) -> Result<Step, Error> {
        let mut theirs = [0u8; PREAMBLE_LEN];
        theirs.copy_from_slice(&self.item);
        let (_version, mode) = frame::check_preamble(&theirs)?;
        let ours = self.ours;
        if mode != ours[6] {
            let name = |m: u8| match m {
                0 => "plain (trusted link)".to_string(),
                1 => "encrypted (Noise XX)".to_string(),
                other => format!("unknown mode {other}"),
            };
            return Err(Error::Handshake(format!(
                "this side is {} but the peer is {}",
                name(ours[6]),
                name(mode)
            )));
        }
        let (first, second) = if self.client {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        self.prologue.extend_from_slice(&first);
        self.prologue.extend_from_slice(&second);
        if ours[7] & theirs[7] & PREAMBLE_CODECS != 0 {
            // Both offer codecs: each sends its list (a count, then the ids) at once.
            self.our_offer = self.config.compression.offer();
            self.outgoing.extend_from_slice(&self.our_offer);
            return Ok(Step::Offer);
        }
        self.after_offers()
    }

    fn on_offer(&mut self) -> Result<Step, Error> {
        let theirs = &self.item;
        let ours = &self.our_offer;
        let (client, server) = if self.client {
            (&ours[..], &theirs[..])
        } else {
            (&theirs[..], &ours[..])
        };
        // Both pick the first of the client's ids that the server lists too.
        self.codec = compression::choose(&client[1..], &server[1..])
            .and_then(|id| self.config.compression.find(id).cloned());
        self.prologue.extend_from_slice(client);
        self.prologue.extend_from_slice(server);
        self.after_offers()
    }

    /// After the preambles and codec lists: done on a plain link, else Noise begins.
    fn after_offers(&mut self) -> Result<Step, Error> {
        if self.config.encryption == Encryption::PlainTrustedLink {
            return Ok(self.finish(None));
        }
        let mut noise = Noise::new(self.client, self.keypair, &self.prologue)?;
        self.prologue = Vec::new();
        if noise.my_turn() {
            noise.write_message(&mut self.outgoing)?; // client -> e
        }
        self.noise = Some(noise);
        Ok(Step::MessageLength)
    }

    fn on_message(&mut self, now: Instant) -> Result<Step, Error> {
        let Some(noise) = self.noise.as_mut() else {
            return Err(Error::Handshake("Noise has not begun".into()));
        };
        noise.read_message(&self.item)?;
        if let (true, Some(pin)) = (self.client, &self.pin) {
            // msg2 revealed the server's static key: check it before sending anything else.
            let got = noise.remote_static().unwrap_or_default();
            if got != pin.as_slice() {
                return Err(Error::KeyMismatch {
                    expected: hex(pin),
                    got: hex(got),
                });
            }
        }
        if !noise.finished() && noise.my_turn() {
            noise.write_message(&mut self.outgoing)?;
        }
        if !noise.finished() {
            return Ok(Step::MessageLength);
        }
        let Some(noise) = self.noise.take() else {
            return Err(Error::Handshake("Noise has not begun".into()));
        };
        let secure = noise.split(&self.config.encryption, now)?;
        Ok(self.finish(Some(secure)))
    }

    fn finish(&mut self, secure: Option<Secure>) -> Step {
        self.established = Some(Established {
            secure,
            codec: self.codec.take(),
        });
        Step::Done
    }
}

#[cfg(test)]
mod tests;
