//! The stable-session wire format, sans-IO: the hello that opens every TCP link and the
//! records that carry the session's bytes, acknowledgements and end over a link.
//!
//! ```text
//! server -> client  challenge: "ZSTB" version:u8 nonce:[16]
//! client -> server  open:      kind:u8 (0 new, 1 resume) id:[16] received:u64le proof:[32]
//! server -> client  answer:    kind:u8 (0 accepted, 1 resumed, 2 refused) body:[48]
//!                              accepted: id:[16] token:[32]; resumed: received:u64le;
//!                              refused: reason:u8
//! then, both ways:  0x01 len:u32le data | 0x02 received:u64le | 0x03 (end of stream)
//! ```

use crate::error::Error;

/// The magic that opens a stable-session link.
pub const MAGIC: &[u8; 4] = b"ZSTB";
/// The stable-session protocol version.
pub const VERSION: u8 = 1;
/// Length of the server's per-link nonce.
pub const NONCE_LEN: usize = 16;
/// Length of a session id.
pub const ID_LEN: usize = 16;
/// Length of a session token, a resume key and a proof.
pub const KEY_LEN: usize = 32;
/// Largest data record payload.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Length of the server's challenge.
pub const CHALLENGE_LEN: usize = 4 + 1 + NONCE_LEN;
/// Length of the client's open message.
pub const OPEN_LEN: usize = 1 + ID_LEN + 8 + KEY_LEN;
/// Length of the server's answer.
pub const ANSWER_LEN: usize = 1 + ID_LEN + KEY_LEN;
/// Length of a data record's header.
pub const DATA_HEADER: usize = 5;

/// A session id.
pub type SessionId = [u8; ID_LEN];

/// The server's challenge: magic, version and a fresh nonce.
pub fn challenge(nonce: &[u8; NONCE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut out = [0u8; CHALLENGE_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..].copy_from_slice(nonce);
    out
}

/// Checks that `bytes` start with the challenge's magic.
pub fn check_magic(bytes: &[u8]) -> Result<(), Error> {
    if bytes.get(..4) != Some(MAGIC) {
        return Err(Error::Handshake(
            "the server does not use stable sessions (no stable-session challenge)".into(),
        ));
    }
    Ok(())
}

/// Checks a challenge and returns its nonce.
pub fn parse_challenge(bytes: &[u8; CHALLENGE_LEN]) -> Result<[u8; NONCE_LEN], Error> {
    check_magic(bytes)?;
    if bytes[4] != VERSION {
        return Err(Error::Handshake(format!(
            "stable-session version {} is not supported (this side speaks {VERSION})",
            bytes[4]
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[5..]);
    Ok(nonce)
}

/// How the client opens a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Starts a new session.
    New,
    /// Re-attaches to session `id`, having received `received` units of the server's stream,
    /// proving it knows the session's resume key.
    Resume {
        /// The session.
        id: SessionId,
        /// Units of the server's stream the client has (bytes, plus one for its end).
        received: u64,
        /// [`proof`] over the server's nonce.
        proof: [u8; KEY_LEN],
    },
}

impl Open {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; OPEN_LEN] {
        let mut out = [0u8; OPEN_LEN];
        if let Open::Resume {
            id,
            received,
            proof,
        } = self
        {
            out[0] = 1;
            out[1..1 + ID_LEN].copy_from_slice(id);
            out[1 + ID_LEN..9 + ID_LEN].copy_from_slice(&received.to_le_bytes());
            out[9 + ID_LEN..].copy_from_slice(proof);
        }
        out
    }

    /// Parses a client's open message.
    pub fn decode(bytes: &[u8; OPEN_LEN]) -> Result<Self, Error> {
        match bytes[0] {
            0 => Ok(Open::New),
            1 => {
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&bytes[1..1 + ID_LEN]);
                let received = u64::from_le_bytes(array(&bytes[1 + ID_LEN..9 + ID_LEN]));
                let proof = array(&bytes[9 + ID_LEN..]);
                Ok(Open::Resume {
                    id,
                    received,
                    proof,
                })
            }
            other => Err(Error::Handshake(format!(
                "unknown stable-session open kind {other} (is the client using stable sessions?)"
            ))),
        }
    }
}

/// Why a server refused to resume a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such session: it expired, ended, or never existed.
    Unknown = 1,
    /// The proof did not match the session's resume key.
    BadProof = 2,
}

/// The server's answer to an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A new session: its id and the token the resume key derives from.
    Accepted {
        /// The session.
        id: SessionId,
        /// The token.
        token: [u8; KEY_LEN],
    },
    /// Resumed; the server has `received` units of the client's stream.
    Resumed {
        /// Units of the client's stream the server has.
        received: u64,
    },
    /// Refused.
    Refused(Refusal),
}

impl Answer {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; ANSWER_LEN] {
        let mut out = [0u8; ANSWER_LEN];
        match self {
            Answer::Accepted { id, token } => {
                out[1..1 + ID_LEN].copy_from_slice(id);
                out[1 + ID_LEN..].copy_from_slice(token);
            }
            Answer::Resumed { received } => {
                out[0] = 1;
                out[1..9].copy_from_slice(&received.to_le_bytes());
            }
            Answer::Refused(why) => {
                out[0] = 2;
                out[1] = *why as u8;
            }
        }
        out
    }

    /// Parses a server's answer.
    pub fn decode(bytes: &[u8; ANSWER_LEN]) -> Result<Self, Error> {
        match bytes[0] {
            0 => {
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&bytes[1..1 + ID_LEN]);
                Ok(Answer::Accepted {
                    id,
                    token: array(&bytes[1 + ID_LEN..]),
                })
            }
            1 => Ok(Answer::Resumed {
                received: u64::from_le_bytes(array(&bytes[1..9])),
            }),
            2 => Ok(Answer::Refused(match bytes[1] {
                2 => Refusal::BadProof,
                _ => Refusal::Unknown,
            })),
            other => Err(Error::Handshake(format!(
                "unknown stable-session answer kind {other}"
            ))),
        }
    }
}

/// The resume key: bound to the Noise handshake when the session is encrypted (so that
/// only the two ends can resume it), else the token itself (trusted links only).
pub fn resume_key(token: &[u8; KEY_LEN], handshake_hash: Option<&[u8]>) -> [u8; KEY_LEN] {
    match handshake_hash {
        Some(hash) => *blake3::keyed_hash(token, hash).as_bytes(),
        None => *token,
    }
}

/// The client's proof that it holds the resume key, for one link's nonce.
pub fn proof(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    id: &SessionId,
    received: u64,
) -> [u8; KEY_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(nonce);
    hasher.update(id);
    hasher.update(&received.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// Compares two proofs in constant time.
pub fn proofs_match(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// One record on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Bytes of the sender's stream, next in order.
    Data(&'a [u8]),
    /// The sender has received this many units of the receiver's stream.
    Ack(u64),
    /// The sender's stream ends here.
    Fin,
}

/// Record kinds.
const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;

/// A data record's header.
pub fn data_header(len: usize) -> [u8; DATA_HEADER] {
    debug_assert!(len <= MAX_CHUNK);
    let mut out = [DATA, 0, 0, 0, 0];
    out[1..].copy_from_slice(&(len as u32).to_le_bytes());
    out
}

/// An ack record.
pub fn ack(received: u64) -> [u8; 9] {
    let mut out = [ACK; 9];
    out[1..].copy_from_slice(&received.to_le_bytes());
    out
}

/// The end-of-stream record.
pub const FIN_RECORD: [u8; 1] = [FIN];

/// Decodes the record at the start of `buf`: `Ok(None)` if it is not complete yet, else
/// the record and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, Error> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        DATA => {
            if buf.len() < DATA_HEADER {
                return Ok(None);
            }
            let len = u32::from_le_bytes(array(&buf[1..5])) as usize;
            if len == 0 || len > MAX_CHUNK {
                return Err(Error::Protocol(format!(
                    "stable-session data record of {len} bytes (1..={MAX_CHUNK} allowed)"
                )));
            }
            Ok(buf
                .get(DATA_HEADER..DATA_HEADER + len)
                .map(|data| (Record::Data(data), DATA_HEADER + len)))
        }
        ACK => Ok(buf
            .get(1..9)
            .map(|n| (Record::Ack(u64::from_le_bytes(array(n))), 9))),
        FIN => Ok(Some((Record::Fin, 1))),
        other => Err(Error::Protocol(format!(
            "unknown stable-session record kind {other}"
        ))),
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_messages_round_trip() {
        let nonce = [7u8; NONCE_LEN];
        assert_eq!(parse_challenge(&challenge(&nonce)).unwrap(), nonce);
        for open in [
            Open::New,
            Open::Resume {
                id: [1; ID_LEN],
                received: 1 << 40,
                proof: [9; KEY_LEN],
            },
        ] {
            assert_eq!(Open::decode(&open.encode()).unwrap(), open);
        }
        for answer in [
            Answer::Accepted {
                id: [3; ID_LEN],
                token: [4; KEY_LEN],
            },
            Answer::Resumed { received: 12345 },
            Answer::Refused(Refusal::BadProof),
            Answer::Refused(Refusal::Unknown),
        ] {
            assert_eq!(Answer::decode(&answer.encode()).unwrap(), answer);
        }
    }

    #[test]
    fn a_zserver_preamble_is_not_a_challenge() {
        let mut bytes = [0u8; CHALLENGE_LEN];
        bytes[..4].copy_from_slice(b"ZSRV");
        let err = parse_challenge(&bytes).unwrap_err();
        assert!(err.to_string().contains("does not use stable sessions"));
    }

    #[test]
    fn records_decode_whole_or_not_at_all() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&data_header(3));
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&ack(77));
        buf.extend_from_slice(&FIN_RECORD);
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((record, used)) = decode(&buf[at..]).unwrap() {
            seen.push(format!("{record:?}"));
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(seen, ["Data([97, 98, 99])", "Ack(77)", "Fin"]);
        for cut in 0..8 {
            assert_eq!(decode(&buf[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn bad_records_are_errors_not_allocations() {
        let mut huge = vec![DATA];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        assert!(decode(&[DATA, 0, 0, 0, 0]).is_err());
        assert!(decode(&[9]).is_err());
    }

    #[test]
    fn proofs_depend_on_key_nonce_id_and_count() {
        let key = [1u8; KEY_LEN];
        let p = proof(&key, &[2; NONCE_LEN], &[3; ID_LEN], 4);
        assert!(proofs_match(
            &p,
            &proof(&key, &[2; NONCE_LEN], &[3; ID_LEN], 4)
        ));
        assert!(!proofs_match(
            &p,
            &proof(&[0; KEY_LEN], &[2; NONCE_LEN], &[3; ID_LEN], 4)
        ));
        assert!(!proofs_match(
            &p,
            &proof(&key, &[0; NONCE_LEN], &[3; ID_LEN], 4)
        ));
        assert!(!proofs_match(
            &p,
            &proof(&key, &[2; NONCE_LEN], &[0; ID_LEN], 4)
        ));
        assert!(!proofs_match(
            &p,
            &proof(&key, &[2; NONCE_LEN], &[3; ID_LEN], 5)
        ));
        let token = [5u8; KEY_LEN];
        assert_eq!(resume_key(&token, None), token);
        assert_ne!(resume_key(&token, Some(b"hash")), token);
    }
}
