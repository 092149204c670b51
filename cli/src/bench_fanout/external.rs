//! The peers' servers: Debian's `nats-server` (core NATS) and `mosquitto` (MQTT), each
//! started by the bench on a free loopback port with a configuration file of its own (no
//! auth, no persistence, bounded queues) in a temporary directory, and stopped (killed)
//! when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::BoxError;

/// Where Debian puts them, besides `PATH`.
const DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// The path of program `name`, if installed.
pub(crate) fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running peer server.
pub(crate) struct External {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl External {
    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `nats-server` on a free port: at most 20,000 clients, 64 KiB messages, 64 MiB
    /// pending per client (its slow-consumer limit), a 10 s write deadline.
    pub(crate) fn nats(bin: &Path) -> Result<Self, BoxError> {
        let port = free_port()?;
        let conf = format!(
            "listen: 127.0.0.1:{port}\nmax_connections: 20000\nmax_payload: 65536\n\
             max_pending: 67108864\nwrite_deadline: \"10s\"\n"
        );
        Self::start(bin, "nats", port, &conf)
    }

    /// `mosquitto` on a free port: anonymous, no persistence, at most 20,000 clients,
    /// 1,000 messages queued per client, Nagle off, no log.
    pub(crate) fn mosquitto(bin: &Path) -> Result<Self, BoxError> {
        let port = free_port()?;
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_connections 20000\nmax_queued_messages 1000\nset_tcp_nodelay true\n\
             log_dest none\n"
        );
        Self::start(bin, "mosquitto", port, &conf)
    }

    /// Starts `bin -c CONF` with `conf` written to a file of its own.
    fn start(bin: &Path, name: &str, port: u16, conf: &str) -> Result<Self, BoxError> {
        let dir = std::env::temp_dir().join(format!(
            "zserver-bench-fanout-{name}-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(dir.join("log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Self { child, addr, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > until || server.child.try_wait()?.is_some() {
                let log = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
                return Err(format!("{name} did not start on {addr}: {log}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now (the bench's own servers bind port 0 instead).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
