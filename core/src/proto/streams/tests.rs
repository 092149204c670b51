//! The stream state layer driven without sockets: frames in, answers and wake-ups out.

use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use super::stops::MAX_STOP_ANSWERS;
use super::{lock, Answer, Dir, Inbound, Key, Next, Outbound, Streams, HASH_LEN, INITIAL_WINDOW};

use crate::error::Error;
use crate::frame::{self, Frame, FrameDecoder, Header, Kind};

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// A stream frame as the reader hands it over: encoded, then decoded.
fn frame(kind: Kind, key: Key, payload: &[u8]) -> Frame {
    let flags = key.0.flag();
    frame_with_flags(kind, flags, key.1, payload)
}

fn frame_with_flags(kind: Kind, flags: u8, id: u64, payload: &[u8]) -> Frame {
    let mut buf = BytesMut::new();
    let header = Header {
        kind,
        flags,
        id,
        command: "",
    };
    frame::encode(&mut buf, &header, payload, 1 << 24).unwrap();
    FrameDecoder::new(1 << 24)
        .decode(&mut buf)
        .unwrap()
        .unwrap()
}

const UP: Key = (Dir::Upload, 1);

/// A sender's chunk, as the stream pump sends them.
const CHUNK: usize = 64 * 1024;

#[test]
fn data_beyond_the_window_breaks_the_protocol() {
    let mut streams = Streams::default();
    streams.open_incoming(UP, 0).unwrap();
    let full = vec![0; INITIAL_WINDOW as usize];
    assert_eq!(streams.on_frame(frame(Kind::Data, UP, &full)), Ok(None));
    assert!(matches!(
        streams.on_frame(frame(Kind::Data, UP, b"x")),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn credit_follows_consumption_and_bounds_the_buffer() {
    let window = 4 * INITIAL_WINDOW;
    let mut s = Inbound::new(window);
    // Credit past the initial window is granted once the consumer starts taking data
    // (an unread stream costs only the initial window); here, up to its window at once.
    assert_eq!(s.take_credit(), Some(window - INITIAL_WINDOW));
    assert_eq!(s.take_credit(), None);
    let chunk = Bytes::from(vec![7; CHUNK]);
    let mut sent = 0;
    while sent + (CHUNK as u64) <= window {
        s.on_data(chunk.clone()).unwrap();
        sent += CHUNK as u64;
    }
    assert_eq!(s.buffered(), window);
    assert!(s.on_data(chunk.clone()).is_err(), "the window is full");
    let mut cx = noop_cx();
    let mut consumed = 0;
    while consumed < window / 2 {
        assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::Chunk(_))));
        consumed += CHUNK as u64;
        if consumed < window / 2 {
            assert_eq!(s.take_credit(), None, "no credit before half a window");
        }
    }
    assert_eq!(s.take_credit(), Some(window / 2));
}

#[test]
fn end_comes_after_the_last_chunk_and_the_first_end_wins() {
    let mut s = Inbound::new(INITIAL_WINDOW);
    s.on_data(Bytes::from_static(b"abc")).unwrap();
    s.on_end(Ok([1; HASH_LEN]));
    s.on_end(Err(Error::Closed));
    assert!(s.on_data(Bytes::from_static(b"late")).is_err());
    let mut cx = noop_cx();
    assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::Chunk(c)) if &c[..] == b"abc"));
    assert!(matches!(
        s.poll_next(&mut cx),
        Poll::Ready(Next::End(h, 3)) if h == [1; HASH_LEN]
    ));
}

#[test]
fn end_delivers_the_hash_and_data_after_it_is_answered_with_stop() {
    let mut streams = Streams::default();
    let inbound = streams.open_incoming(UP, 0).unwrap();
    assert_eq!(streams.on_frame(frame(Kind::Data, UP, b"abc")), Ok(None));
    assert_eq!(
        streams.on_frame(frame(Kind::End, UP, &[5; HASH_LEN])),
        Ok(None)
    );
    assert_eq!(streams.len(), 0, "the stream is forgotten at its end");
    let mut cx = noop_cx();
    let mut s = lock(&inbound);
    assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::Chunk(c)) if &c[..] == b"abc"));
    assert!(matches!(s.poll_next(&mut cx), Poll::Ready(Next::End(h, 3)) if h == [5; HASH_LEN]));
    drop(s);
    let late = frame(Kind::Data, UP, b"late");
    assert_eq!(streams.on_frame(late), Ok(Some(Answer::Stop(UP))));
}

#[test]
fn abort_fails_the_stream_with_the_senders_reason() {
    let mut streams = Streams::default();
    let inbound = streams.open_incoming(UP, 0).unwrap();
    assert_eq!(streams.on_frame(frame(Kind::Abort, UP, b"disk")), Ok(None));
    assert_eq!(streams.len(), 0);
    assert!(matches!(
        lock(&inbound).poll_next(&mut noop_cx()),
        Poll::Ready(Next::Failed(Error::StreamAborted(why))) if why == "disk"
    ));
}

#[test]
fn an_end_without_a_32_byte_hash_breaks_the_protocol() {
    let mut streams = Streams::default();
    streams.open_incoming(UP, 0).unwrap();
    assert!(matches!(
        streams.on_frame(frame(Kind::End, UP, &[0; 31])),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn unknown_streams_get_one_stop_for_data_and_nothing_else() {
    let mut streams = Streams::default();
    let key = (Dir::Download, 4);
    // Payloads of frames for unknown streams are not checked.
    for kind in [Kind::End, Kind::Abort, Kind::Credit, Kind::Stop] {
        assert_eq!(
            streams.on_frame(frame(kind, key, b"bad")),
            Ok(None),
            "{kind:?}"
        );
    }
    assert_eq!(
        streams.on_frame(frame(Kind::Data, key, b"x")),
        Ok(Some(Answer::Stop(key)))
    );
    // The data in flight behind it draws no second Stop.
    assert_eq!(streams.on_frame(frame(Kind::Data, key, b"y")), Ok(None));
    assert_eq!(streams.len(), 0, "nothing was opened for it");
}

#[test]
fn a_stream_this_side_stopped_draws_no_stop_until_it_opens_again() {
    let mut streams = Streams::default();
    streams.open_incoming(UP, 0).unwrap();
    streams.stop_incoming(UP);
    assert_eq!(streams.len(), 0);
    assert_eq!(streams.on_frame(frame(Kind::Data, UP, b"x")), Ok(None));
    // The peer reuses the id for a new upload, which ends; data after that end is answered.
    streams.open_incoming(UP, 0).unwrap();
    assert_eq!(
        streams.on_frame(frame(Kind::End, UP, &[0; HASH_LEN])),
        Ok(None)
    );
    assert_eq!(
        streams.on_frame(frame(Kind::Data, UP, b"x")),
        Ok(Some(Answer::Stop(UP)))
    );
}

#[test]
fn stops_for_unknown_streams_are_bounded() {
    let mut streams = Streams::default();
    let stops = (0..4 * u64::from(MAX_STOP_ANSWERS))
        .filter(|id| {
            let answer = streams.on_frame(frame(Kind::Data, (Dir::Upload, *id), b""));
            answer.unwrap().is_some()
        })
        .count();
    assert_eq!(stops, MAX_STOP_ANSWERS as usize);
}

#[test]
fn stream_frames_need_exactly_one_direction_flag() {
    let mut streams = Streams::default();
    streams.open_incoming(UP, 0).unwrap();
    for flags in [0, 3] {
        for kind in [Kind::Data, Kind::End, Kind::Abort, Kind::Credit, Kind::Stop] {
            assert!(
                matches!(
                    streams.on_frame(frame_with_flags(kind, flags, 1, b"")),
                    Err(Error::Protocol(_))
                ),
                "{kind:?} with flags {flags}"
            );
        }
    }
}

#[test]
fn a_frame_that_is_not_a_stream_frame_is_refused_not_a_panic() {
    let mut streams = Streams::default();
    let ping = frame_with_flags(Kind::Ping, 1, 1, b"");
    assert!(matches!(streams.on_frame(ping), Err(Error::Protocol(_))));
}

#[test]
fn credit_and_stop_reach_the_sender() {
    let key = (Dir::Download, 2);
    let mut streams = Streams::default();
    let outbound = streams.open_outgoing(key).unwrap();
    let mut cx = noop_cx();
    lock(&outbound).spend(INITIAL_WINDOW);
    assert!(lock(&outbound).poll_credit(&mut cx).is_pending());
    let credit = frame(Kind::Credit, key, &10u64.to_le_bytes());
    assert_eq!(streams.on_frame(credit), Ok(None));
    assert!(matches!(
        lock(&outbound).poll_credit(&mut cx),
        Poll::Ready(Ok(10))
    ));
    assert!(matches!(
        streams.on_frame(frame(Kind::Credit, key, &[1; 7])),
        Err(Error::Protocol(_))
    ));
    assert_eq!(streams.on_frame(frame(Kind::Stop, key, b"")), Ok(None));
    assert!(matches!(
        lock(&outbound).poll_credit(&mut cx),
        Poll::Ready(Err(Error::StreamAborted(_)))
    ));
}

#[test]
fn a_sender_waits_for_credit_and_stops_when_told() {
    let mut s = Outbound::new();
    let mut cx = noop_cx();
    assert!(matches!(
        s.poll_credit(&mut cx),
        Poll::Ready(Ok(INITIAL_WINDOW))
    ));
    s.spend(INITIAL_WINDOW);
    assert!(s.poll_credit(&mut cx).is_pending());
    s.on_credit(10);
    assert!(matches!(s.poll_credit(&mut cx), Poll::Ready(Ok(10))));
    s.on_stop(Error::Closed);
    assert!(matches!(
        s.poll_credit(&mut cx),
        Poll::Ready(Err(Error::Closed))
    ));
}

#[test]
fn closing_fails_every_stream_and_refuses_new_ones() {
    let mut streams = Streams::default();
    let inbound = streams.open_incoming((Dir::Upload, 1), 0).unwrap();
    let outbound = streams.open_outgoing((Dir::Download, 1)).unwrap();
    streams.close(&Error::Closed);
    assert_eq!(streams.len(), 0);
    let mut cx = noop_cx();
    assert!(matches!(
        lock(&inbound).poll_next(&mut cx),
        Poll::Ready(Next::Failed(Error::Closed))
    ));
    assert!(matches!(
        lock(&outbound).poll_credit(&mut cx),
        Poll::Ready(Err(Error::Closed))
    ));
    assert!(streams.open_outgoing((Dir::Upload, 2)).is_err());
    assert!(streams.open_incoming((Dir::Upload, 2), 0).is_err());
}

#[test]
fn a_stream_id_in_use_cannot_be_opened_again() {
    let mut streams = Streams::default();
    streams.open_incoming((Dir::Upload, 7), 0).unwrap();
    streams.open_outgoing((Dir::Download, 7)).unwrap();
    assert!(matches!(
        streams.open_incoming((Dir::Upload, 7), 0),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        streams.open_outgoing((Dir::Download, 7)),
        Err(Error::BadRequest(_))
    ));
    assert_eq!(streams.len(), 2);
}
