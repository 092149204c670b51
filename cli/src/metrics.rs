//! `zserver serve --metrics ADDR`: Prometheus metrics on `/metrics` and a health check on
//! `/health`, served by a small blocking HTTP server (`tiny_http`) on a thread of its own.
//!
//! A thread rather than a task: the login server may run on any of three runtimes
//! (`--backend`), and a scrape must not wait behind (or hold up) connection work. The
//! figures are read when scraped, from the library's counters: [`zserver::Server::stats`]
//! per transport, [`zserver_login::LoginServer::metrics`] and the store's message count.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use zserver_login::LoginServer;

use crate::bench::BoxError;

/// One series: its labels and its value.
type Series<'a> = (Vec<(&'a str, &'a str)>, u64);

/// The running metrics endpoint; stops when dropped.
pub(crate) struct Exporter {
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    serving: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Exporter {
    /// Serves `figures` on `addr` (`/metrics`, `/health`).
    pub(crate) fn start(addr: SocketAddr, figures: Figures) -> Result<Self, BoxError> {
        let http = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?,
        );
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or("metrics endpoint: not an IP address")?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(figures));
        let serving = Arc::new(AtomicBool::new(true));
        let (h, s) = (http.clone(), serving.clone());
        let thread = std::thread::Builder::new()
            .name("zserver-metrics".into())
            .spawn(move || answer_requests(&h, &registry, &s))?;
        Ok(Self {
            http,
            thread: Some(thread),
            serving,
            addr,
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `/health` answers 503: the server is shutting down.
    pub(crate) fn shutting_down(&self) {
        self.serving.store(false, Ordering::Release);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_requests(http: &tiny_http::Server, registry: &Registry, serving: &AtomicBool) {
    for request in http.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let (status, content_type, body) = match path {
            "/metrics" => {
                let mut text = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
                    Ok(()) => (
                        200,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        text,
                    ),
                    Err(_) => (500, "text/plain", "encoding failed\n".into()),
                }
            }
            "/health" if serving.load(Ordering::Acquire) => (200, "text/plain", "ok\n".into()),
            "/health" => (503, "text/plain", "shutting down\n".into()),
            _ => (
                404,
                "text/plain",
                "not found: try /metrics or /health\n".into(),
            ),
        };
        let header =
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        let _ = request.respond(response);
    }
}

/// What `/metrics` reports, read at each scrape.
pub(crate) struct Figures {
    login: Arc<LoginServer>,
    /// Listeners by transport label (`tcp`, later `ws`): add one with [`Figures::transport`].
    transports: Vec<(&'static str, zserver::Server)>,
}

impl fmt::Debug for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Figures")
            .field("transports", &self.transports.len())
            .finish()
    }
}

impl Figures {
    /// The figures of `login`, whose own listener is the `tcp` transport.
    pub(crate) fn new(login: Arc<LoginServer>) -> Self {
        let tcp = login.server().clone();
        Self {
            login,
            transports: vec![("tcp", tcp)],
        }
    }

    /// Adds another listener's connections and bytes under the label `transport` (such
    /// as `ws` for a WebSocket listener): one call per listener.
    #[allow(dead_code, reason = "for listeners other than TCP, such as WebSocket")]
    pub(crate) fn transport(mut self, transport: &'static str, server: zserver::Server) -> Self {
        self.transports.push((transport, server));
        self
    }
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let stats: Vec<_> = self
            .transports
            .iter()
            .map(|(t, s)| (*t, s.stats()))
            .collect();
        let per = |f: fn(&zserver::ServerStats) -> u64| -> Vec<Series<'_>> {
            stats
                .iter()
                .map(|(t, s)| (vec![("transport", *t)], f(s)))
                .collect()
        };
        let version = env!("CARGO_PKG_VERSION");
        let protocol = zserver::PROTOCOL_VERSION.to_string();
        let info = [(
            vec![("version", version), ("protocol", protocol.as_str())],
            1,
        )];
        write(
            e,
            "zserver_build_info",
            "Version and wire protocol version.",
            MetricType::Gauge,
            &info,
        )?;
        let gauge = MetricType::Gauge;
        let counter = MetricType::Counter;
        write(
            e,
            "zserver_connections_open",
            "Connections open now.",
            gauge,
            &per(|s| s.connections_open),
        )?;
        write(
            e,
            "zserver_connections",
            "Connections accepted since start.",
            counter,
            &per(|s| s.connections_accepted),
        )?;
        write(
            e,
            "zserver_connections_refused",
            "Connections closed at once over a connection limit.",
            counter,
            &per(|s| s.connections_refused),
        )?;
        write(
            e,
            "zserver_handshakes_failed",
            "Accepted connections whose handshake failed or timed out.",
            counter,
            &per(|s| s.handshakes_failed),
        )?;
        write(
            e,
            "zserver_bytes_received",
            "Bytes received, framing and encryption included.",
            counter,
            &per(|s| s.totals.bytes_in),
        )?;
        write(
            e,
            "zserver_bytes_sent",
            "Bytes sent, framing and encryption included.",
            counter,
            &per(|s| s.totals.bytes_out),
        )?;
        write(
            e,
            "zserver_auth_failures",
            "Encrypted records that failed authentication (each closed its connection).",
            counter,
            &per(|s| s.totals.auth_failures),
        )?;
        let compressed: Vec<Series<'_>> = stats
            .iter()
            .flat_map(|(t, s)| {
                [
                    (
                        vec![("transport", *t), ("direction", "received")],
                        s.totals.compressed_in,
                    ),
                    (
                        vec![("transport", *t), ("direction", "sent")],
                        s.totals.compressed_out,
                    ),
                ]
            })
            .collect();
        write(
            e,
            "zserver_compressed_payload_bytes",
            "Payload bytes that travelled compressed, as they travelled.",
            counter,
            &compressed,
        )?;

        let calls = self.login.metrics().calls().snapshot();
        let by_kind: Vec<Series<'_>> = calls
            .calls
            .iter()
            .map(|(kind, n)| (vec![("kind", *kind)], *n))
            .collect();
        write(
            e,
            "zserver_calls",
            "Commands handled, by kind (call, send, upload, download).",
            counter,
            &by_kind,
        )?;
        let errors: Vec<Series<'_>> = calls
            .errors
            .iter()
            .map(|(kind, code, n)| (vec![("kind", *kind), ("code", *code)], *n))
            .collect();
        write(
            e,
            "zserver_call_errors",
            "Commands that failed, by kind and error code.",
            counter,
            &errors,
        )?;
        let mut m = e.encode_descriptor(
            "zserver_call_duration_seconds",
            "Time from a command's arrival to its answer.",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(calls.sum_secs, calls.count, &calls.buckets, None)?;

        let login = self.login.metrics().snapshot();
        let logins: Vec<Series<'_>> = login
            .logins
            .iter()
            .map(|(outcome, n)| (vec![("outcome", *outcome)], *n))
            .collect();
        write(
            e,
            "zserver_logins",
            "Login attempts, by outcome.",
            counter,
            &logins,
        )?;
        let pushes = [
            (vec![("delivery", "live")], login.pushes_live),
            (vec![("delivery", "stored")], login.pushes_stored),
        ];
        write(
            e,
            "zserver_pushes",
            "Messages pushed, per recipient: delivered live or stored for later.",
            counter,
            &pushes,
        )?;
        let transfer = [
            (vec![("direction", "up")], login.bytes_up),
            (vec![("direction", "down")], login.bytes_down),
        ];
        write(
            e,
            "zserver_transfer_bytes",
            "File bytes uploaded (up) and downloaded (down).",
            counter,
            &transfer,
        )?;
        // A store that cannot be asked now leaves the gauge out of this scrape.
        if let Ok(stored) = self.login.stored_messages() {
            let stored = [(Vec::new(), stored)];
            write(
                e,
                "zserver_stored_messages",
                "Messages waiting in the store for their recipients' next login.",
                gauge,
                &stored,
            )?;
        }
        Ok(())
    }
}

/// Writes one metric family: a counter (named without `_total`, which the encoder adds) or
/// a gauge, one sample per series.
fn write(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: &[Series<'_>],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let sample = m.encode_family(labels)?;
        let mut sample = sample;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(value, None)?,
            _ => sample.encode_gauge(value)?,
        }
    }
    Ok(())
}
