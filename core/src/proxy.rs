//! Real client addresses behind proxies: which proxies are trusted
//! ([`TrustedProxies`], in [`Config::trusted_proxies`](crate::Config::trusted_proxies)),
//! the PROXY protocol (versions 1 and 2, as HAProxy and nginx send it) and the
//! `Forwarded` / `X-Forwarded-For` headers of a WebSocket upgrade.
//!
//! A connection from a trusted proxy is known by the address the proxy announces (its
//! [`Connection::peer_addr`](crate::Connection::peer_addr), the per-address connection
//! limit, the connection's tracing span), the proxy's own address by
//! [`Connection::proxy_addr`](crate::Connection::proxy_addr). Nothing any other peer
//! says is believed: a PROXY header from an address that is not trusted is not a preamble
//! and closes the connection, and its forwarding headers are ignored.
//!
//! The parser ([`parse`]) is sans-IO: it looks at the bytes received so far and says
//! whether they hold a complete header, need more, or are not one. It never allocates;
//! the server reads at most [`MAX_V1`] bytes of a version 1 header and 16 + [`MAX_V2_BODY`]
//! of a version 2 one, whatever the peer announces, under the handshake time-out.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;
use crate::transport::{BoxRead, ClientIo, Listener, Prefixed, SplitClient, Transport};

/// The longest version 1 header, its `\r\n` included (from the specification).
pub const MAX_V1: usize = 107;

/// The most bytes after the 16-byte version 2 header (addresses and TLVs) accepted; a
/// header announcing more is refused before anything past its first 16 bytes is read.
pub const MAX_V2_BODY: usize = 4096;

/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a version 1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";

// ----- trusted addresses ---------------------------------------------------------------

/// An IP address range: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`), or one
/// address (`127.0.0.1`, `::1`) when parsed without a `/`. An IPv4-mapped IPv6 address
/// (`::ffff:10.1.2.3`) matches as the IPv4 address it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of the addresses whose first `prefix` bits are `addr`'s (at most 32 for
    /// IPv4, 128 for IPv6); `None` if `prefix` is longer.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        (prefix <= bits(addr)).then_some(Self { addr, prefix })
    }

    /// The range holding just `addr`.
    pub fn single(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        Self {
            addr,
            prefix: bits(addr),
        }
    }

    /// Whether `ip` is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let shift = |len: u8, prefix: u8| u32::from(len - prefix);
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let (net, ip) = (u32::from(net), u32::from(ip));
                net.checked_shr(shift(32, self.prefix)).unwrap_or(0)
                    == ip.checked_shr(shift(32, self.prefix)).unwrap_or(0)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let (net, ip) = (u128::from(net), u128::from(ip));
                net.checked_shr(shift(128, self.prefix)).unwrap_or(0)
                    == ip.checked_shr(shift(128, self.prefix)).unwrap_or(0)
            }
            _ => false,
        }
    }
}

fn bits(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl From<IpAddr> for Cidr {
    fn from(addr: IpAddr) -> Self {
        Self::single(addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDRESS` or `ADDRESS/PREFIX`, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}` is not an address or CIDR range: {why}");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        match prefix {
            None => Ok(Self::single(addr)),
            Some(p) => {
                let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                let p: u8 = digits
                    .then(|| p.parse().ok())
                    .flatten()
                    .ok_or_else(|| bad("the prefix length is not a number"))?;
                Self::new(addr, p).ok_or_else(|| bad("the prefix length is too long"))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The proxies whose word on a client's address a server believes, and whether they
/// send a PROXY header. Empty by default: every peer is taken for the client itself.
///
/// ```
/// use zserver_core::proxy::TrustedProxies;
/// let mut config = zserver_core::Config::default();
/// config.trusted_proxies = TrustedProxies::new()
///     .trust("10.0.0.0/8".parse().unwrap())
///     .with_proxy_protocol(true);
/// assert!(config.trusted_proxies.trusts("10.1.2.3".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrustedProxies {
    /// The proxies' addresses. A connection from one of them is known by the client
    /// address it announces: in a PROXY header (with [`proxy_protocol`](Self::proxy_protocol)),
    /// or in the `Forwarded` or `X-Forwarded-For` header of a WebSocket upgrade.
    pub addrs: Vec<Cidr>,
    /// Every connection from a trusted proxy, on the TCP and WebSocket listeners alike,
    /// starts with a PROXY header (version 1 or 2); one without (or with a malformed one)
    /// is closed. Off: no header is read, and one sent fails the preamble.
    pub proxy_protocol: bool,
}

impl TrustedProxies {
    /// No proxy trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the proxies in `range`.
    pub fn trust(mut self, range: Cidr) -> Self {
        self.addrs.push(range);
        self
    }

    /// Sets [`proxy_protocol`](Self::proxy_protocol).
    pub fn with_proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Whether `ip` is a trusted proxy's.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.addrs.iter().any(|range| range.contains(ip))
    }

    /// Whether a connection from `ip` must start with a PROXY header.
    pub(crate) fn expects_header(&self, ip: IpAddr) -> bool {
        self.proxy_protocol && self.trusts(ip)
    }
}

// ----- the PROXY protocol: parsing ----------------------------------------------------

/// What [`parse`] made of the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header may be complete once more bytes arrive.
    Incomplete,
    /// A complete header of `len` bytes (the connection's own bytes follow it), announcing
    /// the client's address `source`; `None` when it names none (version 1 `UNKNOWN`,
    /// version 2 `LOCAL`, such as a proxy's health check, or a family without addresses):
    /// the connection's own address is the client's then.
    Complete {
        /// The header's length in bytes.
        len: usize,
        /// The client's address, as the proxy announced it.
        source: Option<SocketAddr>,
    },
}

/// Why some bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// They start with neither a version 1 nor a version 2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A version 1 line longer than [`MAX_V1`], or a version 2 header announcing more than
    /// [`MAX_V2_BODY`] bytes.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// A signature, then something the specification does not allow.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Looks for a PROXY protocol header (version 1 or 2) at the start of `buf`, the bytes
/// received so far. Never panics and never allocates, whatever `buf` holds.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if starts_like(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts_like(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(HeaderError::Missing)
    }
}

/// Whether `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let malformed = HeaderError::Malformed;
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return match buf.len() >= MAX_V1 {
            true => Err(HeaderError::TooLong),
            false => Ok(Parsed::Incomplete),
        };
    };
    let end = match lf.checked_sub(1) {
        Some(cr) if window[cr] == b'\r' => cr,
        _ => return Err(malformed("a version 1 line ends in \\r\\n")),
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| malformed("version 1 header is not text"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // Whatever follows UNKNOWN is ignored (the specification says so).
        Some("UNKNOWN") => return Ok(Parsed::Complete { len, source: None }),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (src, dst) = (v1_addr(fields.next())?, v1_addr(fields.next())?);
            let v4 = proto == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(malformed("a version 1 address of the wrong family"));
            }
            src
        }
        _ => return Err(malformed("unknown version 1 protocol")),
    };
    let (sport, _dport) = (v1_port(fields.next())?, v1_port(fields.next())?);
    if fields.next().is_some() {
        return Err(malformed("extra fields in a version 1 header"));
    }
    Ok(Parsed::Complete {
        len,
        source: Some(SocketAddr::new(source, sport)),
    })
}

fn v1_addr(field: Option<&str>) -> Result<IpAddr, HeaderError> {
    field
        .and_then(|f| f.parse().ok())
        .ok_or(HeaderError::Malformed("bad address in a version 1 header"))
}

fn v1_port(field: Option<&str>) -> Result<u16, HeaderError> {
    field
        .filter(|f| (1..=5).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|f| f.parse().ok())
        .ok_or(HeaderError::Malformed("bad port in a version 1 header"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let malformed = HeaderError::Malformed;
    let Some(&[ver_cmd, family, hi, lo]) = buf.get(12..16) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(malformed("version 2 signature, another version"));
    }
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    if body_len > MAX_V2_BODY {
        return Err(HeaderError::TooLong);
    }
    let len = 16 + body_len;
    if (family >> 4) > 3 || (family & 0x0f) > 2 {
        return Err(malformed("unknown version 2 address family"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(malformed("unknown version 2 command")),
    };
    let Some(body) = buf.get(16..len) else {
        return Ok(Parsed::Incomplete);
    };
    if local {
        return Ok(Parsed::Complete { len, source: None });
    }
    let source = match family >> 4 {
        // AF_INET: source and destination addresses (4 bytes each), then ports.
        1 => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or(malformed("version 2 IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[8], b[9]])))
        }
        // AF_INET6: 16 bytes each, then ports.
        2 => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or(malformed("version 2 IPv6 addresses cut short"))?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(ip);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        // AF_UNSPEC, AF_UNIX: no IP address; the connection's own is used.
        _ => None,
    };
    Ok(Parsed::Complete { len, source })
}

/// Reads a PROXY header from the start of `read`: the client's address it announces (see
/// [`Parsed::Complete`]) and the rest of the stream. Reads at most what [`parse`] allows
/// plus one read's worth; bytes after the header are kept for the stream's next reader.
pub(crate) async fn read_header(mut read: BoxRead) -> io::Result<(Option<SocketAddr>, BoxRead)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = read.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Complete { len, source }) => {
                let rest = buf.split_off(len);
                let read: BoxRead = match rest.is_empty() {
                    true => read,
                    false => Box::new(Prefixed::new(rest, read)),
                };
                return Ok((source.map(canonical), read));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it maps, so that one
/// client has one key in the per-address limits.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

// ----- the PROXY protocol: writing ------------------------------------------------------

/// The PROXY header a proxy sends for a connection from `source` to `destination`:
/// version 1 (text) or version 2 (binary). Mixed families are written as IPv6 (an IPv4
/// address as IPv4-mapped).
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    let (sport, dport) = (source.port(), destination.port());
    match version {
        Version::V1 => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            let body: Vec<u8> = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
                (s, d) => [v6(s).octets(), v6(d).octets()].concat(),
            };
            let family = if src.is_ipv4() { 0x11 } else { 0x21 };
            let len = (body.len() + 4) as u16;
            out.extend_from_slice(&[0x21, family]);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

/// The version 2 `LOCAL` header (a proxy's own connection, such as a health check).
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A PROXY protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Version 1: one line of text.
    V1,
    /// Version 2: binary.
    V2,
}

/// A transport whose connections start with a PROXY header announcing `source` as the
/// client, as a proxy in front of a server would send it: for tests and tools that act as
/// clients behind a proxy. Wrap it in [`WsTransport`](crate::ws::WsTransport) for the
/// header to precede a WebSocket upgrade.
pub struct ProxiedTransport {
    inner: Arc<dyn Transport>,
    version: Version,
    source: SocketAddr,
}

impl ProxiedTransport {
    /// Connections over `inner`, each starting with a `version` header announcing `source`.
    pub fn new(inner: Arc<dyn Transport>, version: Version, source: SocketAddr) -> Self {
        Self {
            inner,
            version,
            source,
        }
    }
}

#[async_trait]
impl Transport for ProxiedTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn runtime(&self) -> Arc<dyn Runtime> {
        self.inner.runtime()
    }
    async fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        self.inner.listen(addr).await
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn ClientIo>> {
        let io = self.inner.connect(addr).await?;
        let (peer, local) = (io.peer_addr(), io.local_addr());
        let (read, mut write) = io.into_halves();
        write
            .write_all(&encode(self.version, self.source, peer))
            .await?;
        write.flush().await?;
        Ok(Box::new(SplitClient {
            peer,
            local,
            halves: (read, write),
        }))
    }
}

// ----- Forwarded and X-Forwarded-For ----------------------------------------------------

/// The client's address as a trusted proxy's HTTP request names it: from the `Forwarded`
/// header's `for=` parameters (RFC 7239) if the request has one, else from
/// `X-Forwarded-For`; each given as its header lines' values in order. Of the addresses
/// listed, the right-most that is not itself a trusted proxy is the client's (the left
/// ones could be anything the client wrote); if every one is trusted, the left-most.
/// `None` when the request names none, or the entry that would be the client's is not
/// an address (`unknown`, an obfuscated name): the connection's own address stands then.
/// A port is taken where the header gives one, else 0.
#[cfg(feature = "ws")]
pub(crate) fn forwarded_client(
    forwarded: &[String],
    x_forwarded_for: &[String],
    trusted: &TrustedProxies,
) -> Option<SocketAddr> {
    let hops: Vec<Option<SocketAddr>> = if !forwarded.is_empty() {
        elements(forwarded)
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| node(value))
            })
            .collect()
    } else {
        elements(x_forwarded_for).map(node).collect()
    };
    let mut leftmost_trusted = None;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(addr) if trusted.trusts(addr.ip()) => leftmost_trusted = Some(addr),
            Some(addr) => return Some(addr),
            None => return None,
        }
    }
    leftmost_trusted
}

/// The comma-separated elements of every line of a list header, skipping empty ones.
#[cfg(feature = "ws")]
fn elements(lines: &[String]) -> impl Iterator<Item = &str> {
    lines
        .iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// A node as a forwarding header writes it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`, perhaps in double quotes.
#[cfg(feature = "ws")]
fn node(value: &str) -> Option<SocketAddr> {
    let v = value.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    let addr = if let Ok(ip) = v.parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else if let Ok(addr) = v.parse::<SocketAddr>() {
        addr
    } else {
        let ip = v.strip_prefix('[')?.strip_suffix(']')?;
        SocketAddr::new(ip.parse::<Ipv6Addr>().ok()?.into(), 0)
    };
    Some(canonical(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(buf) {
            Ok(Parsed::Complete { len, source }) => (len, source),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let r: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains("10.255.1.2".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.3".parse().unwrap();
        assert!(one.contains("127.0.0.3".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!("::/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert_eq!(one.to_string(), "127.0.0.3/32");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1.2.3.4/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn version_1_headers() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nZSRV";
        assert_eq!(complete(h), (h.len() - 4, Some(sa("192.0.2.1:56324"))));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(complete(h), (h.len(), Some(sa("[2001:db8::1]:1"))));
        let h = b"PROXY UNKNOWN ff:ff 1 2\r\n";
        assert_eq!(complete(h), (h.len(), None));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (15, None));
        for partial in [&b"P"[..], b"PROXY", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"] {
            assert_eq!(parse(partial), Ok(Parsed::Incomplete), "{partial:?}");
        }
    }

    #[test]
    fn malformed_version_1_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        assert_eq!(parse(b"ZSRV\x01\0\0\0"), Err(HeaderError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
    }

    #[test]
    fn version_2_headers() {
        let h = encode(Version::V2, sa("192.0.2.1:56324"), sa("10.0.0.1:443"));
        assert_eq!(complete(&h), (28, Some(sa("192.0.2.1:56324"))));
        let h = encode(Version::V2, sa("[2001:db8::1]:7"), sa("[::1]:443"));
        assert_eq!(complete(&h), (52, Some(sa("[2001:db8::1]:7"))));
        assert_eq!(complete(&encode_v2_local()), (16, None));
        // TLVs after the addresses are skipped; bytes after the header are not taken.
        let mut h = encode(Version::V2, sa("192.0.2.1:1"), sa("10.0.0.1:2"));
        h[15] += 5;
        h.extend_from_slice(&[0x04, 0, 2, b'o', b'k', b'Z']);
        assert_eq!(complete(&h), (33, Some(sa("192.0.2.1:1"))));
        // Every proper prefix is incomplete.
        for n in 0..h.len() - 1 {
            assert_eq!(parse(&h[..n]), Ok(Parsed::Incomplete), "{n}");
        }
        // AF_UNIX: no IP address.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(complete(&unix), (232, None));
    }

    #[test]
    fn malformed_version_2_headers_are_refused() {
        let good = encode(Version::V2, sa("192.0.2.1:1"), sa("10.0.0.1:2"));
        let with = |at: usize, byte: u8| {
            let mut h = good.clone();
            h[at] = byte;
            h
        };
        assert!(matches!(
            parse(&with(12, 0x11)),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&with(12, 0x22)),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&with(13, 0x41)),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&with(13, 0x13)),
            Err(HeaderError::Malformed(_))
        ));
        // An IPv6 family with an IPv4-sized body.
        assert!(matches!(
            parse(&with(13, 0x21)),
            Err(HeaderError::Malformed(_))
        ));
        // Announcing more than the cap: refused on the first 16 bytes.
        let mut big = good[..16].to_vec();
        big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&big), Err(HeaderError::TooLong));
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic generator: random bytes, and random bytes after each signature.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut buf: Vec<u8> = match round % 3 {
                0 => V2_SIGNATURE.to_vec(),
                1 => V1_PREFIX.to_vec(),
                _ => Vec::new(),
            };
            buf.extend((0..len).map(|_| next() as u8));
            if round % 7 == 0 && buf.len() > 16 {
                buf[12] = 0x21;
            }
            if let Ok(Parsed::Complete { len, .. }) = parse(&buf) {
                assert!(len <= buf.len());
            }
        }
    }

    #[test]
    fn encoded_headers_parse_back() {
        for version in [Version::V1, Version::V2] {
            for (src, dst) in [
                ("1.2.3.4:5", "6.7.8.9:10"),
                ("[::1]:5", "[::2]:10"),
                ("1.2.3.4:5", "[::2]:10"),
            ] {
                let h = encode(version, sa(src), sa(dst));
                let (len, source) = complete(&h);
                assert_eq!(len, h.len());
                assert_eq!(source.map(canonical), Some(sa(src)), "{version:?} {src}");
            }
        }
    }

    #[cfg(feature = "ws")]
    fn proxies() -> TrustedProxies {
        TrustedProxies::new()
            .trust("10.0.0.0/8".parse().unwrap())
            .trust("::1".parse().unwrap())
    }

    #[cfg(feature = "ws")]
    fn xff(lines: &[&str]) -> Option<SocketAddr> {
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        forwarded_client(&[], &lines, &proxies())
    }

    #[test]
    #[cfg(feature = "ws")]
    fn x_forwarded_for_takes_the_rightmost_untrusted() {
        assert_eq!(xff(&["192.0.2.1"]), Some(sa("192.0.2.1:0")));
        assert_eq!(
            xff(&["6.6.6.6, 192.0.2.1, 10.0.0.2"]),
            Some(sa("192.0.2.1:0"))
        );
        assert_eq!(
            xff(&["6.6.6.6", "192.0.2.1,10.1.1.1"]),
            Some(sa("192.0.2.1:0"))
        );
        assert_eq!(xff(&["10.0.0.9, 10.0.0.2"]), Some(sa("10.0.0.9:0")));
        assert_eq!(xff(&["[2001:db8::1]:80"]), Some(sa("[2001:db8::1]:80")));
        assert_eq!(xff(&["2001:db8::1"]), Some(sa("[2001:db8::1]:0")));
        assert_eq!(xff(&["::ffff:192.0.2.1"]), Some(sa("192.0.2.1:0")));
        assert_eq!(xff(&["192.0.2.1, unknown"]), None);
        assert_eq!(xff(&[]), None);
        assert_eq!(xff(&[" , "]), None);
    }

    #[test]
    #[cfg(feature = "ws")]
    fn forwarded_wins_over_x_forwarded_for() {
        let fwd = |lines: &[&str]| {
            let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            forwarded_client(&lines, &["7.7.7.7".into()], &proxies())
        };
        assert_eq!(
            fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            Some(sa("192.0.2.60:0"))
        );
        assert_eq!(
            fwd(&[r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711", for=10.0.0.1"#]),
            Some(sa("[2001:db8:cafe::17]:4711"))
        );
        assert_eq!(fwd(&["for=_hidden"]), None);
        assert_eq!(fwd(&["proto=https"]), None);
    }
}
