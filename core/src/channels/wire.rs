//! Channel messages as they travel: postcard values in the payloads of ordinary calls and
//! one-way sends under the reserved `$ch.` commands (`docs/PROTOCOL.md`, section 6c).

use serde::{Deserialize, Serialize, Serializer};

/// Subscribes to a channel (a call; the answer is [`Subscribed`]).
pub const SUBSCRIBE: &str = "$ch.sub";
/// Unsubscribes from a channel (a call with the channel's name; the answer is empty).
pub const UNSUBSCRIBE: &str = "$ch.unsub";
/// Publishes to a channel (a call with [`PublishRequest`]; the answer is
/// `Option<Position>`).
pub const PUBLISH: &str = "$ch.pub";
/// Asks for a channel's presence (a call with the channel's name; the answer is
/// `Vec<Member>`).
pub const PRESENCE: &str = "$ch.presence";
/// Reads a channel's history (a call with [`HistoryRequest`]; the answer is
/// [`HistoryPage`]).
pub const HISTORY: &str = "$ch.history";
/// A publication delivered to a subscriber (a one-way send from the server: `Delivery`).
pub const DELIVERY: &str = "$ch.p";
/// A member joined a channel (a one-way send from the server: [`PresenceEvent`]).
pub const JOIN: &str = "$ch.join";
/// A member left a channel (a one-way send from the server: [`PresenceEvent`]).
pub const LEAVE: &str = "$ch.leave";
/// The server ended a subscription (a one-way send: [`Unsubscribed`]).
pub const UNSUBSCRIBED: &str = "$ch.unsubscribed";

/// Where a publication stands in its channel's history: `offset` counts publications
/// from 1; `epoch` names one unbroken history (it changes when the history is lost, as
/// after a restart of a server that keeps it in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The history's identity.
    pub epoch: u64,
    /// The publication's offset (0: before the first).
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Parses `EPOCH:OFFSET`, as [`Display`](std::fmt::Display) prints it.
    fn from_str(s: &str) -> Result<Self, String> {
        let (epoch, offset) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not EPOCH:OFFSET"))?;
        let number = |part: &str| {
            part.parse::<u64>()
                .map_err(|e| format!("`{part}` in `{s}`: {e}"))
        };
        Ok(Position {
            epoch: number(epoch)?,
            offset: number(offset)?,
        })
    }
}

/// The request of `$ch.sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The channel's name.
    pub channel: String,
    /// Recover from this position: every publication after it comes in the answer.
    pub since: Option<Position>,
}

/// One publication as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// Its offset in the channel (0 in a channel without history).
    pub offset: u64,
    /// The user who published it, as the server knows them (empty: the server itself).
    pub from: String,
    /// What was published.
    pub data: Vec<u8>,
}

/// The answer to `$ch.sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The channel's position now (`None`: the channel keeps no history). Every
    /// publication delivered after this answer has a greater offset.
    pub position: Option<Position>,
    /// With `since`: whether every publication after it is in `publications` (false when
    /// the epoch changed or the gap is older than the history; the app reloads its state).
    pub recovered: bool,
    /// With `since` and `recovered`: the publications after `since`, oldest first.
    pub publications: Vec<Publication>,
}

/// The request of `$ch.pub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The channel's name.
    pub channel: String,
    /// What to publish.
    pub data: Vec<u8>,
}

/// The request of `$ch.pub`, to encode (the data copied at once, not byte by byte).
#[derive(Serialize)]
pub(crate) struct PublishOut<'a> {
    pub(crate) channel: &'a str,
    pub(crate) data: Blob<'a>,
}

/// The request of `$ch.pub`, decoded borrowing the frame's bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishRef<'a> {
    pub(crate) channel: &'a str,
    pub(crate) data: &'a [u8],
}

/// The request of `$ch.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The channel's name.
    pub channel: String,
    /// Only publications after this position (`None`: from the oldest kept).
    pub since: Option<Position>,
    /// At most this many publications (the oldest first).
    pub limit: u32,
}

/// The answer to `$ch.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The channel's position now.
    pub position: Position,
    /// The publications asked for, oldest first.
    pub publications: Vec<Publication>,
}

/// One subscriber as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The subscribed connection's id, unique among the channel's members: its connection
    /// id on the server it is connected to (in a cluster, a member on another server gets
    /// an id its relay makes unique in the cluster).
    pub client: u64,
    /// The user, as the app identified the connection (empty when it did not).
    pub user: String,
    /// What the app attached to the connection ([`Identity::info`](super::Identity)).
    pub info: Vec<u8>,
}

/// The payload of `$ch.join` and `$ch.leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// The channel's name.
    pub channel: String,
    /// Who joined or left.
    pub member: Member,
}

/// The payload of `$ch.unsubscribed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The channel's name.
    pub channel: String,
    /// Why, for people.
    pub reason: String,
}

/// The payload of `$ch.p`, decoded (borrowing the frame's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Delivery<'a> {
    pub(crate) channel: &'a str,
    pub(crate) offset: u64,
    pub(crate) from: &'a str,
    pub(crate) data: &'a [u8],
}

/// The payload of `$ch.p`, to encode: the same fields, bytes written as postcard bytes
/// (a length and the bytes) in one copy.
#[derive(Serialize)]
pub(crate) struct DeliveryOut<'a> {
    pub(crate) channel: &'a str,
    pub(crate) offset: u64,
    pub(crate) from: &'a str,
    pub(crate) data: Blob<'a>,
}

/// Bytes serialized with `serialize_bytes` (postcard: varint length, then the bytes), the
/// same encoding as a `Vec<u8>` but copied at once instead of element by element.
pub(crate) struct Blob<'a>(pub(crate) &'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_encodes_as_documented() {
        let out = DeliveryOut {
            channel: "chat:a",
            offset: 300,
            from: "ann",
            data: Blob(b"hi"),
        };
        let bytes = postcard::to_allocvec(&out).unwrap();
        assert_eq!(
            bytes,
            [
                6, b'c', b'h', b'a', b't', b':', b'a', 0xac, 0x02, 3, b'a', b'n', b'n', 2, b'h',
                b'i'
            ]
        );
        let back: Delivery<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            (back.channel, back.offset, back.from, back.data),
            ("chat:a", 300, "ann", &b"hi"[..])
        );
        // A Vec<u8> encodes the same way.
        let publication = Publication {
            offset: 300,
            from: "ann".into(),
            data: b"hi".to_vec(),
        };
        assert_eq!(postcard::to_allocvec(&publication).unwrap(), bytes[7..]);
    }

    /// The worked example of docs/PROTOCOL.md, section 6c, byte for byte.
    #[test]
    fn the_documented_example_is_what_is_sent() {
        use crate::frame::{self, Header, Kind};
        let hex = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let framed = |kind, id, command, payload: &[u8]| {
            let mut out = bytes::BytesMut::new();
            let header = Header {
                kind,
                flags: 0,
                id,
                command,
            };
            frame::encode(&mut out, &header, payload, 1 << 20).unwrap();
            hex(&out)
        };
        let since = Some(Position {
            epoch: 7,
            offset: 2,
        });
        let request = SubscribeRequest {
            channel: "chat:a".into(),
            since,
        };
        let call = framed(
            Kind::Call,
            1,
            SUBSCRIBE,
            &postcard::to_allocvec(&request).unwrap(),
        );
        let answer = Subscribed {
            position: Some(Position {
                epoch: 7,
                offset: 3,
            }),
            recovered: true,
            publications: vec![Publication {
                offset: 3,
                from: "ann".into(),
                data: b"x".to_vec(),
            }],
        };
        let reply = framed(Kind::Reply, 1, "", &postcard::to_allocvec(&answer).unwrap());
        let delivery = DeliveryOut {
            channel: "chat:a",
            offset: 4,
            from: "ann",
            data: Blob(b"y"),
        };
        let send = framed(
            Kind::Send,
            0,
            DELIVERY,
            &postcard::to_allocvec(&delivery).unwrap(),
        );
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let example: Vec<String> = doc
            .lines()
            .filter(|l| {
                l.starts_with("Call   15")
                    || l.starts_with("Reply  10")
                    || l.starts_with("Send   17")
            })
            .map(|l| l[7..].replace(" | ", " "))
            .collect();
        assert_eq!(example, [call, reply, send]);
    }

    #[test]
    fn positions_print_and_parse() {
        let p = Position {
            epoch: 7,
            offset: 42,
        };
        assert_eq!(p.to_string(), "7:42");
        assert_eq!("7:42".parse::<Position>(), Ok(p));
        assert!("7".parse::<Position>().is_err());
        assert!("x:1".parse::<Position>().is_err());
    }
}
