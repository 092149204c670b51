//! Two negotiations, client and server, exchanging bytes in memory: no sockets, no clock.

use std::time::Instant;

use bytes::BytesMut;

use super::*;
use crate::compression::Compression;
use crate::secure::record::{Opener, Sealer};

/// A payload codec that only needs an id (the negotiation never runs it).
struct Id(u8);

impl CompressionCodec for Id {
    fn id(&self) -> u8 {
        self.0
    }
    fn name(&self) -> &'static str {
        "test"
    }
    fn encode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(input);
        Ok(())
    }
    fn decode(&self, input: &[u8], _max: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(input);
        Ok(())
    }
}

fn config(encrypted: bool, compression: Compression) -> Config {
    let mut config = if encrypted {
        Config::default()
    } else {
        Config::plain_trusted_link()
    };
    config.compression = compression;
    config
}

/// The outcome of one side, and every byte it sent.
struct Side {
    result: Result<Established, Error>,
    sent: Vec<u8>,
}

/// One end of an in-memory pair.
struct End<'n, 'a> {
    neg: &'n mut Negotiation<'a>,
    client: bool,
    result: Option<Result<Established, Error>>,
    sent: Vec<u8>,
    /// Bytes this end sent that the other has not taken yet.
    unread: Vec<u8>,
}

impl End<'_, '_> {
    /// Takes what the machine has to send (through `tamper`), then its result if ready.
    fn transmit(&mut self, tamper: &mut dyn FnMut(bool, usize, &mut [u8])) {
        let mut out = Vec::new();
        if self.neg.poll_transmit(&mut out) {
            tamper(self.client, self.sent.len(), &mut out);
            self.sent.extend_from_slice(&out);
            self.unread.extend_from_slice(&out);
        }
        if self.result.is_none() {
            self.result = self.neg.poll_established().map(Ok);
        }
    }

    /// Feeds up to `chunk` of the other end's unread bytes; whether there were any.
    fn receive(&mut self, from: &mut Vec<u8>, chunk: usize) -> bool {
        if self.result.is_some() || from.is_empty() {
            return false;
        }
        let n = chunk.min(from.len());
        match self.neg.handle_input(Instant::now(), &from[..n]) {
            Ok(used) => {
                assert!(used <= n);
                from.drain(..used);
            }
            Err(e) => self.result = Some(Err(e)),
        }
        true
    }

    fn side(self) -> Side {
        Side {
            result: self
                .result
                .unwrap_or_else(|| Err(Error::Handshake("unfinished".into()))),
            sent: self.sent,
        }
    }
}

/// Runs a client and a server against each other, handing over at most `chunk` bytes at a
/// time, until neither can go on. `tamper` may change bytes in flight: it is told the
/// direction (true: client to server) and the offset of the piece in that direction.
fn run_pair<'a>(
    client: &mut Negotiation<'a>,
    server: &mut Negotiation<'a>,
    chunk: usize,
    tamper: &mut dyn FnMut(bool, usize, &mut [u8]),
) -> (Side, Side) {
    let end = |neg, client| End {
        neg,
        client,
        result: None,
        sent: Vec::new(),
        unread: Vec::new(),
    };
    let (mut c, mut s) = (end(client, true), end(server, false));
    for _round in 0..10_000 {
        c.transmit(tamper);
        s.transmit(tamper);
        let to_client = c.receive(&mut s.unread, chunk);
        let to_server = s.receive(&mut c.unread, chunk);
        if !to_client && !to_server {
            break;
        }
    }
    (c.side(), s.side())
}

fn pair(client: &Config, server: &Config, pin: Option<[u8; 32]>, chunk: usize) -> (Side, Side) {
    let ck = Keypair::generate();
    let sk = server_key();
    let mut c = Negotiation::client(client, &ck, pin);
    let mut s = Negotiation::server(server, sk);
    run_pair(&mut c, &mut s, chunk, &mut |_, _, _| {})
}

fn server_key() -> &'static Keypair {
    static KEY: std::sync::OnceLock<Keypair> = std::sync::OnceLock::new();
    KEY.get_or_init(Keypair::generate)
}

/// The two ends' keys match: what one seals, the other opens, both ways.
fn assert_keys_match(client: Secure, server: Secure) {
    assert_eq!(client.handshake_hash, server.handshake_hash);
    assert_eq!(client.peer_key, server_key().public_key());
    let now = Instant::now();
    let round = |sealer: &mut Sealer, opener: &mut Opener, text: &[u8]| {
        let mut sealed = BytesMut::new();
        sealer.seal(text, &mut sealed, now);
        let mut plain = BytesMut::new();
        opener.open(&mut sealed, &mut plain).expect("opens");
        assert_eq!(&plain[..], text);
    };
    let (mut c_seal, mut c_open) = (client.sealer, client.opener);
    let (mut s_seal, mut s_open) = (server.sealer, server.opener);
    round(&mut c_seal, &mut s_open, b"client to server");
    round(&mut s_seal, &mut c_open, b"server to client");
}

fn codec_id(e: &Established) -> Option<u8> {
    e.codec.as_ref().map(|c| c.id())
}

#[test]
fn every_mode_and_codec_choice_succeeds_whole_and_byte_by_byte() {
    let offers = [
        (Compression::off(), Compression::off(), None),
        (Compression::lz4(), Compression::lz4(), Some(1)),
        // One side offers nothing: no lists, no codec.
        (Compression::lz4(), Compression::off(), None),
        // Both offer, nothing in common.
        (Compression::off().with(Id(200)), Compression::lz4(), None),
        // The client's order wins over the server's.
        (
            Compression::off().with(Id(201)).with(Id(200)),
            Compression::off().with(Id(200)).with(Id(201)),
            Some(201),
        ),
    ];
    for encrypted in [false, true] {
        for (c_offer, s_offer, want) in &offers {
            for chunk in [1, 3, usize::MAX] {
                let cc = config(encrypted, c_offer.clone());
                let sc = config(encrypted, s_offer.clone());
                let (c, s) = pair(&cc, &sc, None, chunk);
                let (c, s) = (c.result.expect("client"), s.result.expect("server"));
                assert_eq!(codec_id(&c), *want, "client, chunk {chunk}");
                assert_eq!(codec_id(&s), *want, "server, chunk {chunk}");
                match (c.secure, s.secure) {
                    (Some(cs), Some(ss)) => {
                        assert!(encrypted);
                        assert_keys_match(cs, ss);
                    }
                    (None, None) => assert!(!encrypted),
                    _ => panic!("one side encrypted, the other not"),
                }
            }
        }
    }
}

#[test]
fn the_bytes_on_the_wire_are_protocol_v1() {
    // Encrypted, no codecs: preamble, then Noise messages of 32, 96 and 64 bytes.
    let cfg = config(true, Compression::off());
    let (c, s) = pair(&cfg, &cfg, None, usize::MAX);
    assert_eq!(&c.sent[..8], &[0x5a, 0x53, 0x52, 0x56, 1, 0, 1, 0]);
    assert_eq!(&s.sent[..8], &[0x5a, 0x53, 0x52, 0x56, 1, 0, 1, 0]);
    assert_eq!(c.sent.len(), 8 + 2 + 32 + 2 + 64);
    assert_eq!(&c.sent[8..10], &[0x20, 0]);
    assert_eq!(&c.sent[42..44], &[0x40, 0]);
    assert_eq!(s.sent.len(), 8 + 2 + 96);
    assert_eq!(&s.sent[8..10], &[0x60, 0]);
    // Plain with LZ4 on both: preamble with flag 1, then the list `01 01`; nothing else.
    let cfg = config(false, Compression::lz4());
    let (c, s) = pair(&cfg, &cfg, None, usize::MAX);
    assert_eq!(c.sent, [0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 1, 1, 1]);
    assert_eq!(s.sent, c.sent);
    // A server that offers nothing never sees a list.
    let (c, s) = pair(&cfg, &config(false, Compression::off()), None, usize::MAX);
    assert_eq!(c.sent, [0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 1]);
    assert_eq!(s.sent, [0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 0]);
}

#[test]
fn a_pinned_key_is_accepted_and_a_wrong_one_refused_before_message_3() {
    let cfg = config(true, Compression::off());
    let right = server_key().public_key();
    let (c, s) = pair(&cfg, &cfg, Some(right), 1);
    assert!(c.result.is_ok() && s.result.is_ok());
    let wrong = Keypair::generate().public_key();
    let (c, s) = pair(&cfg, &cfg, Some(wrong), usize::MAX);
    match c.result {
        Err(Error::KeyMismatch { expected, got }) => {
            assert_eq!(expected, hex(&wrong));
            assert_eq!(got, hex(&right));
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a wrong pin was accepted"),
    }
    // The client sent its preamble and message 1 only: no message 3.
    assert_eq!(c.sent.len(), 8 + 2 + 32);
    assert!(s.result.is_err(), "the server never finishes");
}

/// Feeds `input` to a fresh server (encrypted, offering LZ4) and returns its error.
fn server_error(input: &[u8]) -> Error {
    let cfg = config(true, Compression::lz4());
    let mut s = Negotiation::server(&cfg, server_key());
    let err = s
        .handle_input(Instant::now(), input)
        .expect_err("the input is refused");
    // The failure sticks: more input gets the same error, and nothing more is sent.
    assert_eq!(s.handle_input(Instant::now(), b"more"), Err(err.clone()));
    let mut out = Vec::new();
    assert!(!s.poll_transmit(&mut out));
    assert!(s.poll_established().is_none());
    assert_eq!(s.wants(), 0);
    err
}

fn message(text: &str, err: Error) -> String {
    match err {
        Error::Handshake(m) | Error::Protocol(m) => {
            assert!(m.contains(text), "`{m}` lacks `{text}`");
            m
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn bad_preambles_are_refused() {
    let err = server_error(b"GET / HTTP/1.1\r\n");
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    message("magic", err);
    message(
        "version 2",
        server_error(&[0x5a, 0x53, 0x52, 0x56, 2, 0, 1, 0]),
    );
    let plain = message(
        "peer is plain",
        server_error(&[0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 0]),
    );
    assert!(plain.contains("this side is encrypted"));
    message(
        "unknown mode 7",
        server_error(&[0x5a, 0x53, 0x52, 0x56, 1, 0, 7, 0]),
    );
}

const PREAMBLE: [u8; 8] = [0x5a, 0x53, 0x52, 0x56, 1, 0, 1, 0];

#[test]
fn bad_handshake_messages_are_refused() {
    // Longer than 1024: refused at its length, before any of it is held.
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&1025u16.to_le_bytes());
    message("1025 bytes exceeds 1024", server_error(&input));
    // Empty, and garbage of the right size.
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&[0, 0]);
    server_error(&input);
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&[31, 0]);
    input.extend_from_slice(&[7; 31]);
    server_error(&input);
}

#[test]
fn a_tampered_preamble_or_codec_list_fails_the_handshake() {
    let cfg = config(true, Compression::lz4().with(Id(200)));
    for (to_server, at) in [(true, 7), (true, 9), (false, 7), (false, 10)] {
        let ck = Keypair::generate();
        let mut c = Negotiation::client(&cfg, &ck, None);
        let mut s = Negotiation::server(&cfg, server_key());
        let mut tamper = |client: bool, offset: usize, bytes: &mut [u8]| {
            if client == to_server && (offset..offset + bytes.len()).contains(&at) {
                bytes[at - offset] ^= 0x80;
            }
        };
        let (c, s) = run_pair(&mut c, &mut s, usize::MAX, &mut tamper);
        assert!(
            c.result.is_err() || s.result.is_err(),
            "tampering with byte {at} went unnoticed"
        );
        assert!(
            s.result.is_err(),
            "the server never accepts a tampered link"
        );
    }
}

#[test]
fn an_empty_codec_list_is_taken_at_once() {
    let cfg = config(false, Compression::lz4());
    let mut s = Negotiation::server(&cfg, server_key());
    let input = [0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 1, 0];
    assert_eq!(s.handle_input(Instant::now(), &input), Ok(9));
    let mut out = Vec::new();
    assert!(s.poll_transmit(&mut out));
    let done = s.poll_established().expect("done without more input");
    assert!(done.codec.is_none());
}

#[test]
fn bytes_after_the_negotiation_are_left_to_the_caller() {
    // Plain: frames may follow the preamble in the same read.
    let cfg = config(false, Compression::off());
    let mut s = Negotiation::server(&cfg, server_key());
    let mut input = [0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 0].to_vec();
    input.extend_from_slice(b"first frame");
    assert_eq!(s.handle_input(Instant::now(), &input), Ok(8));
    assert_eq!(s.handle_input(Instant::now(), b"more"), Ok(0));
    // Encrypted: the first record may arrive with message 3.
    let cfg = config(true, Compression::off());
    let ck = Keypair::generate();
    let mut c = Negotiation::client(&cfg, &ck, None);
    let mut s = Negotiation::server(&cfg, server_key());
    let now = Instant::now();
    let mut msg3 = up_to_message_3(&mut c, &mut s);
    let client = c.poll_established().expect("client done");
    let mut record = BytesMut::new();
    let mut sealer = client.secure.expect("keys").sealer;
    sealer.seal(b"hello", &mut record, now);
    let sent = msg3.len();
    msg3.extend_from_slice(&record);
    assert_eq!(s.handle_input(now, &msg3), Ok(sent));
    let server = s.poll_established().expect("server done");
    let mut sealed = BytesMut::from(&msg3[sent..]);
    let mut plain = BytesMut::new();
    let mut opener = server.secure.expect("keys").opener;
    opener.open(&mut sealed, &mut plain).expect("opens");
    assert_eq!(&plain[..], b"hello");
}

/// Runs an encrypted pair step by step up to the client's message 3, which it returns
/// (taken from the client, not yet given to the server).
fn up_to_message_3(c: &mut Negotiation<'_>, s: &mut Negotiation<'_>) -> Vec<u8> {
    let now = Instant::now();
    let take = |n: &mut Negotiation<'_>| {
        let mut out = Vec::new();
        n.poll_transmit(&mut out);
        out
    };
    let (c_preamble, s_preamble) = (take(c), take(s));
    assert_eq!(c.handle_input(now, &s_preamble), Ok(8));
    assert_eq!(s.handle_input(now, &c_preamble), Ok(8));
    let msg1 = take(c);
    assert_eq!(s.handle_input(now, &msg1), Ok(2 + 32));
    let msg2 = take(s);
    assert_eq!(c.handle_input(now, &msg2), Ok(2 + 96));
    assert!(c.poll_established().is_none(), "message 3 not yet taken");
    let msg3 = take(c);
    assert_eq!(msg3.len(), 2 + 64);
    msg3
}

#[test]
fn the_result_waits_until_message_3_is_taken() {
    let cfg = config(true, Compression::off());
    let ck = Keypair::generate();
    let mut c = Negotiation::client(&cfg, &ck, None);
    let mut s = Negotiation::server(&cfg, server_key());
    up_to_message_3(&mut c, &mut s);
    assert!(c.poll_established().is_some());
    assert!(c.poll_established().is_none(), "given once");
}

#[test]
fn memory_stays_bounded_whatever_the_peer_sends() {
    let cfg = config(true, Compression::lz4());
    let mut s = Negotiation::server(&cfg, server_key());
    let now = Instant::now();
    let mut input = [0x5a, 0x53, 0x52, 0x56, 1, 0, 1, 1, 255].to_vec();
    input.extend_from_slice(&[9; 255]);
    input.extend_from_slice(&1024u16.to_le_bytes());
    input.extend_from_slice(&[1; 1023]);
    for byte in &input {
        assert_eq!(s.handle_input(now, std::slice::from_ref(byte)), Ok(1));
        assert!(s.item.capacity() <= MAX_MESSAGE);
        assert!(s.prologue.capacity() <= 2 * PREAMBLE_LEN + 2 * 256);
    }
    // The last byte of a 1024-byte message 1: its 992 bytes of (clear) payload are
    // ignored, and the server answers with message 2.
    assert_eq!(s.handle_input(now, &[1]), Ok(1));
    let mut out = Vec::new();
    assert!(s.poll_transmit(&mut out));
    assert_eq!(&out[out.len() - 98..out.len() - 96], &[0x60, 0]);
    // A forged message 3 fails, and the state is freed.
    let mut forged = 64u16.to_le_bytes().to_vec();
    forged.extend_from_slice(&[3; 64]);
    assert!(s.handle_input(now, &forged).is_err());
    assert_eq!(s.item.capacity(), 0);
    assert!(s.noise.is_none());
}
