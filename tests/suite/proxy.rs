//! Real client addresses behind proxies (`Config::trusted_proxies`): a PROXY header
//! (versions 1 and 2) from a trusted proxy names the client, on the TCP and the WebSocket
//! listener; one from any other address, a missing or malformed one from a proxy that must
//! send it, and a silent one are refused; the per-address limit counts the announced
//! addresses; a WebSocket upgrade's `X-Forwarded-For` / `Forwarded` is believed from a
//! trusted proxy only. Loopback stands in for the network: the proxy is 127.0.0.3, an
//! untrusted host 127.0.0.2. Runs on every back end, over TCP (and the suite's
//! WebSocket mode where a case goes through the suite's transport).

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use zserver::proxy::{ProxiedTransport, TrustedProxies, Version};
use zserver::transport::BoundTransport;
use zserver::{Calls, Client, Config, Router, Server, Transport};

use crate::common::*;

/// The trusted proxy's address, and another host's.
const PROXY: [u8; 4] = [127, 0, 0, 3];
const STRANGER: [u8; 4] = [127, 0, 0, 2];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Settings trusting [`PROXY`], which sends a PROXY header if `header`.
fn behind_proxy(mut config: Config, header: bool) -> Config {
    config.trusted_proxies = TrustedProxies::new()
        .trust(ip(PROXY).into())
        .with_proxy_protocol(header);
    config.handshake_timeout = Duration::from_secs(2);
    config
}

/// `whoami` answers the caller's address as the server sees it, and the proxy's IP.
fn whoami() -> Router {
    Router::new().console("whoami", |ctx, _: String| async move {
        Ok(format!(
            "{} via {:?}",
            ctx.peer_addr(),
            ctx.proxy_addr().map(|p| p.ip())
        ))
    })
}

/// The back end's TCP from `from`, starting each connection with a `version` PROXY
/// header announcing `client` (none if `None`), under WebSocket if `ws`.
fn transport(from: [u8; 4], header: Option<(Version, &str)>, ws: bool) -> Arc<dyn Transport> {
    let mut t = BoundTransport::from_ip(zserver::default_transport(), ip(from));
    if let Some((version, client)) = header {
        t = Arc::new(ProxiedTransport::new(t, version, sa(client)));
    }
    match ws {
        #[cfg(feature = "ws")]
        true => Arc::new(zserver::WsTransport::new(t)),
        _ => t,
    }
}

async fn connect(t: Arc<dyn Transport>, addr: SocketAddr) -> Result<Client, zserver::Error> {
    within(
        WAIT,
        "connect",
        zserver::ClientBuilder::new(t)
            .connect_timeout(Duration::from_secs(5))
            .connect(addr),
    )
    .await
}

async fn ask(client: &Client) -> String {
    client.console("whoami", "").await.expect("whoami")
}

/// A server on the suite's transport with `config`, answering `whoami`.
async fn server(addr: &str, config: Config) -> Server {
    start_server(addr, whoami(), config).await
}

/// A PROXY header of either version from the trusted proxy names the client (IPv4 or
/// IPv6, port included); the proxy's own address is `proxy_addr`.
async fn a_trusted_proxy_names_the_client(addr: &str) {
    let server = server(addr, behind_proxy(Config::default(), true)).await;
    let target = server.local_addr();
    for (version, client) in [
        (Version::V1, "192.0.2.7:4242"),
        (Version::V2, "192.0.2.8:1"),
        (Version::V1, "[2001:db8::7]:99"),
        (Version::V2, "[2001:db8::8]:65535"),
    ] {
        let t = transport(PROXY, Some((version, client)), over_ws());
        let c = connect(t, target).await.expect("connect through the proxy");
        assert_eq!(
            ask(&c).await,
            format!("{client} via Some(127.0.0.3)"),
            "{version:?}"
        );
        let conn = server.connections();
        assert!(conn.iter().any(|k| k.peer_addr() == sa(client)), "{conn:?}");
        c.connection().close().await;
    }
    shutdown(&server).await;
}
per_backend!(v4_only, a_trusted_proxy_names_the_client, |addr| {
    zserver::block_on(super::super::a_trusted_proxy_names_the_client(addr))
});

/// A PROXY header from an address that is not a trusted proxy is not believed: the
/// connection is refused. The same host without a header is served as itself.
async fn a_header_from_elsewhere_is_refused(addr: &str) {
    let server = server(addr, behind_proxy(Config::default(), true)).await;
    let target = server.local_addr();
    for version in [Version::V1, Version::V2] {
        let t = transport(STRANGER, Some((version, "192.0.2.7:4242")), over_ws());
        let refused = connect(t, target).await;
        assert!(refused.is_err(), "{version:?}: {refused:?}");
    }
    assert_eq!(server.connection_count(), 0);
    until("the refusals are counted", || {
        server.stats().handshakes_failed >= 2
    })
    .await;
    let plain = connect(transport(STRANGER, None, over_ws()), target)
        .await
        .expect("a direct client");
    let seen = ask(&plain).await;
    assert!(
        seen.starts_with("127.0.0.2:") && seen.ends_with(" via None"),
        "{seen}"
    );
    shutdown(&server).await;
}
per_backend!(v4_only, a_header_from_elsewhere_is_refused, |addr| {
    zserver::block_on(super::super::a_header_from_elsewhere_is_refused(addr))
});

/// A raw socket from `from` to `to`.
fn raw_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip(from), 0).into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The trusted proxy must send a header: none, a malformed one, one announcing more than
/// the cap, or one cut short (silence after `PROXY `) closes the connection, within the
/// handshake time-out; nothing is admitted.
async fn a_missing_or_bad_header_is_refused(addr: &str) {
    let server = server(addr, behind_proxy(Config::default(), true)).await;
    let target = server.local_addr();
    let none = connect(transport(PROXY, None, over_ws()), target).await;
    assert!(none.is_err(), "no header: {none:?}");
    let mut huge = zserver::proxy::V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let bad: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 1.2.3.4\r\nZSRV\x01\0\0\0".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
        [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 300]].concat(),
        huge,
        b"PROXY ".to_vec(),
    ];
    let closed = on_thread(move || {
        bad.iter()
            .map(|bytes| {
                let mut s = raw_from(PROXY, target);
                s.write_all(bytes).unwrap();
                expect_closed(&mut s).map_err(|e| format!("{bytes:?}: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .await;
    assert!(closed.iter().all(Result::is_ok), "{closed:?}");
    assert_eq!(server.connection_count(), 0);
    until("the refusals are counted", || {
        server.stats().handshakes_failed >= 6
    })
    .await;
    shutdown(&server).await;
}
per_backend!(v4_only, a_missing_or_bad_header_is_refused, |addr| {
    zserver::block_on(super::super::a_missing_or_bad_header_is_refused(addr))
});

/// The per-address limit counts the addresses the proxy announces, not the proxy's: two
/// clients behind it are one connection each, a second from one of them is refused.
async fn limits_count_the_announced_address(addr: &str) {
    let mut config = behind_proxy(Config::default(), true);
    config.max_connections_per_ip = 1;
    let server = server(addr, config).await;
    let target = server.local_addr();
    let via = |client| transport(PROXY, Some((Version::V2, client)), over_ws());
    let a = connect(via("192.0.2.1:1000"), target).await.expect("a");
    let b = connect(via("192.0.2.2:1000"), target).await.expect("b");
    let again = connect(via("192.0.2.1:1001"), target).await;
    assert!(again.is_err(), "a second from 192.0.2.1: {again:?}");
    until("the refusal is counted", || {
        server.stats().connections_refused >= 1
    })
    .await;
    assert!(ask(&a).await.starts_with("192.0.2.1:1000"));
    assert!(ask(&b).await.starts_with("192.0.2.2:1000"));
    // Once a's connection is gone, its address may connect again.
    a.connection().close().await;
    until("a's connection is gone", || server.connection_count() == 1).await;
    let c = connect(via("192.0.2.1:1002"), target)
        .await
        .expect("a again");
    assert!(ask(&c).await.starts_with("192.0.2.1:1002"));
    shutdown(&server).await;
}
per_backend!(v4_only, limits_count_the_announced_address, |addr| {
    zserver::block_on(super::super::limits_count_the_announced_address(addr))
});

#[cfg(feature = "ws")]
mod ws {
    use super::*;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::protocol::Message;
    use zserver::ws::WsOptions;

    /// A server on TCP `addr` (the back end's) and WebSocket, with `config`.
    async fn dual(addr: &str, config: Config) -> (Server, SocketAddr) {
        let server = zserver::server()
            .router(whoami())
            .config(config)
            .bind(addr)
            .await
            .expect("bind");
        let ws = server
            .listen_ws(addr, WsOptions::new())
            .await
            .expect("listen on WebSocket");
        (server, ws)
    }

    /// Upgrades a raw socket from `from` with `headers` and exchanges plain preambles;
    /// returns the address the server then holds the connection under, and its proxy's.
    async fn seen_as(
        server: &Server,
        ws: SocketAddr,
        from: [u8; 4],
        headers: &[(&'static str, &'static str)],
    ) -> (SocketAddr, Option<SocketAddr>) {
        let headers = headers.to_vec();
        let socket = on_thread(move || {
            let mut request = format!("ws://{ws}/").into_client_request().unwrap();
            for (name, value) in headers {
                request.headers_mut().append(name, value.parse().unwrap());
            }
            let (mut c, _) = tungstenite::client(request, raw_from(from, ws)).expect("upgrade");
            c.send(Message::binary(PREAMBLE.to_vec())).unwrap();
            match c.read().unwrap() {
                Message::Binary(b) => assert_eq!(&b[..], PREAMBLE),
                other => panic!("unexpected {other:?}"),
            }
            c
        })
        .await;
        until("the connection is admitted", || {
            server.connection_count() == 1
        })
        .await;
        let conn = server.connections().pop().expect("one connection");
        drop(socket);
        until("the connection is gone", || server.connection_count() == 0).await;
        (conn.peer_addr(), conn.proxy_addr())
    }

    /// `X-Forwarded-For` and `Forwarded` from the trusted proxy name the client (the
    /// right-most address that is not a trusted proxy; `Forwarded` wins); from any other
    /// host they are ignored.
    async fn forwarding_headers_from_a_trusted_proxy_only(addr: &str) {
        let config = behind_proxy(Config::plain_trusted_link(), false);
        let (server, ws) = dual(addr, config).await;
        let xff = [("X-Forwarded-For", "6.6.6.6, 192.0.2.9, 127.0.0.3")];
        let fwd = [
            ("Forwarded", "for=\"[2001:db8::5]:4711\";proto=https"),
            ("X-Forwarded-For", "6.6.6.6"),
        ];
        let (peer, proxy) = seen_as(&server, ws, PROXY, &xff).await;
        assert_eq!(
            (peer, proxy.map(|p| p.ip())),
            (sa("192.0.2.9:0"), Some(ip(PROXY)))
        );
        let (peer, _) = seen_as(&server, ws, PROXY, &fwd).await;
        assert_eq!(peer, sa("[2001:db8::5]:4711"));
        let (peer, proxy) = seen_as(&server, ws, STRANGER, &xff).await;
        assert_eq!((peer.ip(), proxy), (ip(STRANGER), None));
        let (peer, proxy) = seen_as(&server, ws, STRANGER, &fwd).await;
        assert_eq!((peer.ip(), proxy), (ip(STRANGER), None));
        // The trusted proxy without a header: its own address.
        let (peer, proxy) = seen_as(&server, ws, PROXY, &[]).await;
        assert_eq!((peer.ip(), proxy), (ip(PROXY), None));
        shutdown(&server).await;
    }
    per_backend!(
        v4_only,
        forwarding_headers_from_a_trusted_proxy_only,
        |addr| {
            zserver::block_on(super::super::forwarding_headers_from_a_trusted_proxy_only(
                addr,
            ))
        }
    );

    /// The PROXY header precedes the HTTP upgrade on the WebSocket listener; from
    /// elsewhere it is refused there too.
    async fn a_proxy_header_on_the_ws_listener(addr: &str) {
        let (server, ws) = dual(addr, behind_proxy(Config::default(), true)).await;
        let t = transport(PROXY, Some((Version::V1, "192.0.2.44:44")), true);
        let c = connect(t, ws).await.expect("connect through the proxy");
        assert_eq!(ask(&c).await, "192.0.2.44:44 via Some(127.0.0.3)");
        let t = transport(STRANGER, Some((Version::V2, "192.0.2.44:44")), true);
        assert!(connect(t, ws).await.is_err());
        c.connection().close().await;
        shutdown(&server).await;
    }
    per_backend!(v4_only, a_proxy_header_on_the_ws_listener, |addr| {
        zserver::block_on(super::super::a_proxy_header_on_the_ws_listener(addr))
    });
}
