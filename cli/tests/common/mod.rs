//! What the CLI's end-to-end tests share.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU8, Ordering};

/// A free address for a server that must listen at an address known before it starts (a
/// config file, a restart at the same address), on a loopback address of its own:
/// 127.77.P.N, with P from this process and N counting up.
///
/// A port found free on 127.0.0.1 can be taken, before the server binds it, as the source
/// port of any other test's outgoing connection; nothing else uses these addresses.
pub(crate) fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8, n);
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}
