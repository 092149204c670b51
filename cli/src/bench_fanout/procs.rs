//! The bench's child processes: this binary's hidden `bench-fanout-server` and
//! `bench-fanout-clients` commands, spoken to by JSON lines over their stdin and stdout,
//! with a time limit on every answer; each exits when its stdin closes (on drop), and is
//! killed if it has not within a few seconds.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bench::BoxError;

/// A child running one of this binary's hidden commands.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `zserver ARGS…` (the binary named by `ZSERVER_BENCH_SERVER` for the server
    /// side, to compare builds, as `zserver bench` does).
    pub(crate) fn spawn(args: &[String], server: bool) -> Result<Self, BoxError> {
        let exe = match std::env::var_os("ZSERVER_BENCH_SERVER") {
            Some(path) if server => path.into(),
            _ => std::env::current_exe()?,
        };
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: args.join(" "),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line.
    pub(crate) fn send(&mut self, line: &str) -> Result<(), BoxError> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("`zserver {}` is gone: {e}", self.name).into())
    }

    /// The next line, parsed as JSON, within `timeout`.
    pub(crate) fn answer(&mut self, timeout: Duration) -> Result<serde_json::Value, BoxError> {
        let line = self.lines.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => format!(
                "`zserver {}` did not answer within {} s",
                self.name,
                timeout.as_secs()
            ),
            mpsc::RecvTimeoutError::Disconnected => {
                format!("`zserver {}` exited (see its message above)", self.name)
            }
        })?;
        Ok(serde_json::from_str(&line)
            .map_err(|e| format!("`zserver {}` said {line:?}: {e}", self.name))?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Process `pid`'s resident memory now, in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}
