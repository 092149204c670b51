//! A userspace netem: real IP packets between two network namespaces, through a forwarder
//! in the test process that can delay them, lose them at random, or drop every one of them
//! (a pulled cable: no RST, no FIN, nothing).
//!
//! ```text
//!   client namespace (one per process)          server namespace (one per Netem)
//!   10.X.N.2/24 on zsfN  --TUN fd-->  forwarder  --TUN fd-->  10.X.N.1/24 on zsf0
//!                        <--TUN fd--  (threads)  <--TUN fd--
//! ```
//!
//! `tc netem` needs the `sch_netem` kernel module, which test machines often lack; TUN
//! devices and network namespaces need only root. Each side gets a TUN device (`IFF_TUN |
//! IFF_NO_PI`: the fd reads and writes bare IP packets), and two threads per direction
//! move what one fd yields into the other after the delay, unless the packet is lost.
//!
//! # Which threads are where
//!
//! A socket belongs to the network namespace of the thread that creates it, whichever
//! thread uses it later. The server is easy: [`Netem::bind_server`] binds it from a thread
//! inside the server namespace (every back end creates the listening socket in the caller
//! of `bind`), and accepted connections belong to the listener's namespace. The client is
//! not: tokio creates connecting sockets on its worker threads, and a stable session or a
//! [`zserver::ReconnectingClient`] dials again from a task, on whichever worker runs it.
//! The runtimes are process-wide, so the client side is a process-wide namespace too: the
//! first use of this module creates it and starts every back end's runtime from a thread
//! inside it, so that their worker threads (which inherit the namespace of the thread that
//! spawns them) live there, and [`setup`] moves each test's own thread into it. The test
//! [`traffic_goes_through_the_forwarder`] checks both: tasks on every worker see the client
//! namespace, and a cut link stops the calls.
//!
//! Both namespaces are anonymous (made with `unshare`, kept by a file descriptor), so a
//! test process that dies leaves nothing behind: a namespace goes when its last
//! descriptor, thread and socket do, and the TUN devices with it. If any step fails (not
//! root, no `/dev/net/tun`, no `ip`, namespaces not allowed), [`setup`] prints
//! `skipped: network namespaces not available here: <reason>` and the test passes.
#![allow(unsafe_code)] // unshare, setns, ioctl, poll, read and write on raw descriptors

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::resume_unwind;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{bounded, within, WAIT};
use zserver::{Calls, Error, Router};

/// The namespace file of the calling thread.
const THREAD_NS: &str = "/proc/thread-self/ns/net";

/// Packets one direction holds in flight at most (more are dropped, as by a full queue).
const QUEUE_LIMIT: usize = 10_000;

/// How often the forwarder's readers look at the stop flag.
const POLL_MS: i32 = 50;

// ----- namespaces ----------------------------------------------------------------------

/// A network namespace, kept alive by a descriptor of it.
pub(crate) struct Namespace {
    fd: OwnedFd,
    /// `net:[inode]`, the namespace's identity.
    id: String,
}

impl Namespace {
    /// A new, empty network namespace with its loopback up.
    fn create() -> Result<Self, String> {
        let made = std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; with CLONE_NEWNET it moves only the
            // calling thread (this new one) into a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "unshare(CLONE_NEWNET): {}",
                    io::Error::last_os_error()
                ));
            }
            let fd = File::open(THREAD_NS).map_err(|e| format!("{THREAD_NS}: {e}"))?;
            let ns = Namespace {
                fd: fd.into(),
                id: current_namespace()?,
            };
            ip(&["link", "set", "lo", "up"])?;
            Ok(ns)
        })
        .join();
        made.map_err(|_| "the namespace thread panicked".to_string())?
    }

    /// Moves the calling thread into this namespace: sockets it creates from now on, and
    /// threads and processes it starts, are in it.
    pub(crate) fn enter(&self) -> io::Result<()> {
        // SAFETY: setns takes a descriptor we own and a flag; it changes only the calling
        // thread's network namespace.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside this namespace, with the caller's default back end,
    /// and returns what it returns (a panic in `f` is raised again here).
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let backend = zserver::default_backend();
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                self.enter().expect("enter the network namespace");
                zserver::with_backend(backend, f)
            });
            thread.join().unwrap_or_else(|panic| resume_unwind(panic))
        })
    }

    /// Whether the calling thread is in this namespace.
    pub(crate) fn is_current(&self) -> bool {
        current_namespace().is_ok_and(|id| id == self.id)
    }
}

/// The calling thread's network namespace, as `net:[inode]`.
fn current_namespace() -> Result<String, String> {
    std::fs::read_link(THREAD_NS)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("{THREAD_NS}: {e}"))
}

/// Runs `ip ARGS` (in the calling thread's namespace, which the child inherits).
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Creates the TUN device `name` in the calling thread's namespace, with `addr` (CIDR) on
/// it, and brings it up. The device lives as long as the returned descriptor.
fn tun(name: &str, addr: &str) -> Result<OwnedFd, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain data (a name and a union of plain fields); all zeroes is a
    // valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(name.len() < libc::IFNAMSIZ, "interface name too long");
    for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, for as long as the
    // call lasts; the descriptor is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } != 0 {
        return Err(format!("TUNSETIFF {name}: {}", io::Error::last_os_error()));
    }
    // No IPv6 link-local address, hence no router solicitations on the link: the counters
    // then count the test's own traffic.
    let _ = ip(&["link", "set", "dev", name, "addrgenmode", "none"]);
    ip(&["addr", "add", addr, "dev", name])?;
    ip(&["link", "set", "dev", name, "up"])?;
    Ok(file.into())
}

// ----- the client side -----------------------------------------------------------------

/// The process's client namespace, made (and the runtimes started in it) on first use.
fn client_namespace() -> Result<&'static Namespace, String> {
    static CLIENT: OnceLock<Result<Namespace, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let ns = Namespace::create()?;
            ns.run(start_runtimes);
            Ok(ns)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Starts every back end's runtime from the calling thread: their worker threads are
/// spawned from it (tokio's when its runtime is built, smol's and async-std's at their
/// first task) and so share its network namespace.
fn start_runtimes() {
    for backend in zserver::backends() {
        zserver::with_backend(backend, || {
            zserver::block_on(async {
                let (tx, rx) = async_channel::bounded(1);
                zserver::spawn(async move {
                    let _ = tx.send(()).await;
                });
                rx.recv().await.expect("a first task on the runtime");
            })
        });
    }
}

/// The link, set up for one test: the calling thread moved into the client namespace and
/// a new [`Netem`] to the server namespace. `None` (having said why) where namespaces or
/// TUN devices are not available, for the test to return and pass.
pub(crate) fn setup(test: &str) -> Option<Netem> {
    let made = client_namespace().and_then(|client| {
        client
            .enter()
            .map_err(|e| format!("setns into the client namespace: {e}"))?;
        Netem::new(client)
    });
    match made {
        Ok(net) => Some(net),
        Err(why) => {
            let backend = zserver::default_backend();
            eprintln!("{test} ({backend}): skipped: network namespaces not available here: {why}");
            None
        }
    }
}

// ----- the link --------------------------------------------------------------------------

/// One direction of the link: the packets on the wire, each with the time it arrives.
#[derive(Default)]
struct Wire {
    packets: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    arrived: Condvar,
    /// The one-way delay, in microseconds.
    delay_us: AtomicU64,
    /// The loss probability, in millionths.
    loss_ppm: AtomicU32,
    /// Held while a packet taken off the queue is written and counted, so that a cut can
    /// wait for the one on its way out.
    writing: Mutex<()>,
}

impl Wire {
    fn packets(&self) -> MutexGuard<'_, VecDeque<(Instant, Vec<u8>)>> {
        self.packets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the forwarder's threads share with the [`Link`] handle.
#[derive(Default)]
struct Shared {
    /// Client to server, server to client.
    wires: [Wire; 2],
    cut: AtomicBool,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    syns: AtomicU64,
}

/// The handle on the link's behaviour and counters; cheap to clone, usable from any
/// thread.
#[derive(Clone)]
pub(crate) struct Link(Arc<Shared>);

/// The direction from the client namespace to the server's.
const UP: usize = 0;
/// The direction from the server namespace to the client's.
const DOWN: usize = 1;

impl Link {
    /// Sets the one-way delay of both directions (the round trip is twice this).
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.set_delays(delay, delay);
    }

    /// Sets the one-way delay of each direction: client to server, server to client.
    pub(crate) fn set_delays(&self, up: Duration, down: Duration) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.wires[UP].delay_us.store(us(up), Ordering::Relaxed);
        self.0.wires[DOWN]
            .delay_us
            .store(us(down), Ordering::Relaxed);
    }

    /// Sets the probability (0 to 1) that a packet is lost, in each direction.
    pub(crate) fn set_loss(&self, loss: f64) {
        let ppm = (loss.clamp(0.0, 1.0) * 1e6).round() as u32;
        for wire in &self.0.wires {
            wire.loss_ppm.store(ppm, Ordering::Relaxed);
        }
    }

    /// Cuts the link: every packet is dropped, those on the wire included, silently. Returns
    /// once a packet already on its way out has been written and counted, so that the
    /// counters read after it stay still while the link is cut.
    pub(crate) fn cut(&self) {
        self.0.cut.store(true, Ordering::SeqCst);
        for wire in &self.0.wires {
            let lost = std::mem::take(&mut *wire.packets()).len();
            self.0.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            drop(wire.writing());
        }
    }

    /// Ends a cut: packets pass again (with the delay and loss set).
    pub(crate) fn restore(&self) {
        self.0.cut.store(false, Ordering::SeqCst);
    }

    /// Packets delivered to the other side so far.
    pub(crate) fn forwarded(&self) -> u64 {
        self.0.forwarded.load(Ordering::Relaxed)
    }

    /// Packets dropped so far (lost at random, cut, or over the queue's limit).
    pub(crate) fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// TCP connection openings (SYN without ACK) passed from the client to the server
    /// so far: the links a client made.
    pub(crate) fn syns(&self) -> u64 {
        self.0.syns.load(Ordering::Relaxed)
    }
}

/// A link between the process's client namespace and a server namespace of its own.
/// Dropping it stops the forwarder and removes the server namespace's TUN device (and,
/// once the server's sockets are gone, the namespace).
pub(crate) struct Netem {
    link: Link,
    server_ns: Namespace,
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
    threads: Vec<JoinHandle<()>>,
}

impl Netem {
    /// A new server namespace and a link to it from `client`, with no delay and no loss.
    fn new(client: &Namespace) -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n > 255 {
            return Err("more than 256 links in one process".into());
        }
        // Only the client namespace holds several links, so only it needs distinct subnets;
        // the pid in the second byte just makes them easy to tell apart between processes.
        let x = 100 + (std::process::id() % 100) as u8;
        let server_ip = Ipv4Addr::new(10, x, n as u8, 1);
        let client_ip = Ipv4Addr::new(10, x, n as u8, 2);
        let server_ns = Namespace::create()?;
        let server_tun = server_ns.run(|| tun("zsf0", &format!("{server_ip}/24")))?;
        let client_tun = client.run(|| tun(&format!("zsf{n}"), &format!("{client_ip}/24")))?;
        let shared = Arc::new(Shared::default());
        let (client_tun, server_tun) = (Arc::new(client_tun), Arc::new(server_tun));
        let mut threads = Vec::new();
        for (dir, from, to) in [
            (UP, client_tun.clone(), server_tun.clone()),
            (DOWN, server_tun, client_tun),
        ] {
            let s = shared.clone();
            let reader = std::thread::Builder::new()
                .name(format!("netem-{n}-read-{dir}"))
                .spawn(move || read_loop(&s, dir, &from))
                .map_err(|e| format!("spawn: {e}"))?;
            let s = shared.clone();
            let writer = std::thread::Builder::new()
                .name(format!("netem-{n}-write-{dir}"))
                .spawn(move || write_loop(&s, dir, &to))
                .map_err(|e| format!("spawn: {e}"))?;
            threads.extend([reader, writer]);
        }
        Ok(Self {
            link: Link(shared),
            server_ns,
            server_ip,
            client_ip,
            threads,
        })
    }

    /// The handle on the link.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The server namespace's address.
    pub(crate) fn server_ip(&self) -> IpAddr {
        self.server_ip.into()
    }

    /// The client namespace's address on this link.
    pub(crate) fn client_ip(&self) -> IpAddr {
        self.client_ip.into()
    }

    /// Binds `builder`'s server on the server namespace's address (any port) from a thread
    /// inside that namespace, so that it listens there.
    pub(crate) fn bind_server(
        &self,
        builder: zserver::ServerBuilder,
    ) -> Result<zserver::Server, Error> {
        let addr = SocketAddr::new(self.server_ip(), 0);
        self.server_ns
            .run(move || zserver::block_on(builder.bind(addr)))
    }

    /// Runs `f` on a thread inside the server namespace.
    pub(crate) fn on_server_side<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.server_ns.run(f)
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.link.0.stop.store(true, Ordering::SeqCst);
        for wire in &self.link.0.wires {
            wire.arrived.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads packets from `from` and puts those not lost on the wire of direction `dir`.
fn read_loop(shared: &Shared, dir: usize, from: &OwnedFd) {
    let wire = &shared.wires[dir];
    let mut rng = Rng::new(dir as u64);
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its whole length during the call.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            std::thread::sleep(Duration::from_millis(1)); // EAGAIN, EINTR: try again
            continue;
        };
        let packet = &buf[..n];
        let lost = shared.cut.load(Ordering::SeqCst)
            || rng.below_ppm(wire.loss_ppm.load(Ordering::Relaxed));
        if lost {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let due = Instant::now() + Duration::from_micros(wire.delay_us.load(Ordering::Relaxed));
        let mut packets = wire.packets();
        // Checked again under the lock, so that a cut also catches a packet read just
        // before it.
        if packets.len() >= QUEUE_LIMIT || shared.cut.load(Ordering::SeqCst) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if dir == UP && is_syn(packet) {
            shared.syns.fetch_add(1, Ordering::Relaxed);
        }
        packets.push_back((due, packet.to_vec()));
        drop(packets);
        wire.arrived.notify_one();
    }
}

/// Writes the packets of direction `dir` into `to` once they are due, in order.
fn write_loop(shared: &Shared, dir: usize, to: &OwnedFd) {
    let wire = &shared.wires[dir];
    loop {
        let (packet, _writing) = {
            let mut packets = wire.packets();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                let wait = match packets.front() {
                    Some((due, _)) if *due <= now => break,
                    Some((due, _)) => *due - now,
                    None => Duration::from_millis(100),
                };
                packets = wire
                    .arrived
                    .wait_timeout(packets, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Taken before the queue's lock is let go: a cut that drains the queue then
            // waits for this packet's write.
            let writing = wire.writing();
            (packets.pop_front().expect("a due packet").1, writing)
        };
        // SAFETY: `packet` is readable for its whole length during the call.
        let n = unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n >= 0 {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `packet` is an IPv4 TCP segment opening a connection (SYN, no ACK).
fn is_syn(packet: &[u8]) -> bool {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 6 {
        return false;
    }
    let flags = usize::from(packet[0] & 0x0f) * 4 + 13;
    packet.get(flags).is_some_and(|f| f & 0x12 == 0x02)
}

/// splitmix64: enough randomness for losing packets, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `ppm` in a million.
    fn below_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.next() % 1_000_000 < u64::from(ppm)
    }
}

// ----- the harness's own check -----------------------------------------------------------

every_backend!(traffic_goes_through_the_forwarder);
/// The harness does what it says: the back end's worker threads are in the client
/// namespace, calls travel as packets through the forwarder (its counter grows with them),
/// a cut stops them (a call times out, packets are counted as dropped, none forwarded),
/// and after the cut the connection works again, with the added delay.
fn traffic_goes_through_the_forwarder() {
    let Some(net) = setup("traffic_goes_through_the_forwarder") else {
        return;
    };
    let client_ns = client_namespace().expect("made by setup");
    zserver::block_on(async {
        // Tasks land on every worker (several of each per worker): all in the namespace.
        let seen = crate::common::Watch::new(Vec::new());
        for _ in 0..32 {
            let seen = seen.clone();
            zserver::spawn(async move {
                let here = client_ns.is_current();
                seen.update(|v| v.push(here));
            });
        }
        seen.wait_for("the tasks", |v| v.len() == 32).await;
        assert!(
            seen.snapshot().iter().all(|&inside| inside),
            "a runtime worker thread is outside the client namespace"
        );
        assert!(client_ns.is_current(), "the test's thread is in it too");

        let in_server_ns = Arc::new(AtomicBool::new(false));
        let router = {
            let flag = in_server_ns.clone();
            Router::new().console("where", move |ctx, _: String| {
                flag.store(true, Ordering::Relaxed);
                let peer = ctx.connection().peer_addr().ip().to_string();
                async move { Ok(peer) }
            })
        };
        let server = net
            .bind_server(crate::common::suite_server().router(router))
            .expect("bind in the server namespace");
        assert_eq!(server.local_addr().ip(), net.server_ip());
        // The listening socket is in the server namespace: its port is taken there.
        let again = net.on_server_side(|| std::net::TcpListener::bind(server.local_addr()));
        assert_eq!(
            again.map(drop).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse),
            "the server listens in the server namespace"
        );
        let link = net.link();
        let before = link.forwarded();
        let client = within(
            WAIT,
            "connect",
            crate::common::suite_client().connect(server.local_addr()),
        )
        .await
        .expect("connect through the link");
        for _ in 0..20 {
            let peer = client.console("where", "").await.expect("a call");
            assert_eq!(peer, net.client_ip().to_string(), "the client's address");
        }
        let through = link.forwarded() - before;
        assert!(
            through >= 40,
            "20 calls and a handshake took only {through} packets through the forwarder"
        );
        assert_eq!(link.syns(), 1, "one TCP connection");
        assert!(in_server_ns.load(Ordering::Relaxed));

        link.cut();
        let (forwarded, dropped) = (link.forwarded(), link.dropped());
        let cut = client
            .request("where")
            .timeout(Duration::from_millis(500))
            .console("")
            .await;
        assert_eq!(cut, Err(Error::Timeout), "a call over a cut link");
        assert_eq!(link.forwarded(), forwarded, "nothing passes a cut link");
        assert!(link.dropped() > dropped, "the call's packets were dropped");

        link.restore();
        link.set_delay(Duration::from_millis(50));
        // The first call after the cut waits for TCP to retransmit what the cut lost.
        let start = Instant::now();
        let peer = within(WAIT, "a call after the cut", client.console("where", ""))
            .await
            .expect("the connection works again");
        assert_eq!(peer, net.client_ip().to_string());
        let after_cut = start.elapsed();
        let start = Instant::now();
        client.console("where", "").await.expect("a call");
        let rtt = start.elapsed();
        assert!(
            rtt >= Duration::from_millis(100) && rtt < Duration::from_secs(1),
            "a call took {rtt:?} with 50 ms each way"
        );
        eprintln!(
            "{}: {through} packets for 20 calls; first call after the cut {after_cut:?}; \
             a call with 50 ms each way {rtt:?}",
            zserver::default_backend()
        );
        drop(client);
        crate::common::shutdown(&server).await;
    });
}

/// A plain check of the harness's parts that need no privileges.
#[test]
fn syn_detection_and_loss_rate() {
    bounded(|| {
        let mut syn = vec![0u8; 40];
        syn[0] = 0x45;
        syn[9] = 6;
        syn[33] = 0x02;
        assert!(is_syn(&syn));
        syn[33] = 0x12;
        assert!(!is_syn(&syn), "SYN+ACK answers, it does not open");
        let mut rng = Rng::new(7);
        let lost = (0..100_000).filter(|_| rng.below_ppm(50_000)).count();
        assert!(
            (4_000..6_000).contains(&lost),
            "{lost} of 100,000 lost at 5 %"
        );
        assert!(!(0..1000).any(|_| rng.below_ppm(0)));
    });
}
