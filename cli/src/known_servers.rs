//! Trust on first use for `zserver client`, as SSH does it: the first connection to a server
//! address records the key fingerprint it presented in a known-servers file; later
//! connections to that address accept that key only. `--pin` overrides the file (which it
//! then neither reads nor writes).
//!
//! The file (default `known_servers` in the user's config directory, e.g.
//! `~/.config/zserver/known_servers`; `--known-servers FILE` or `ZSERVER_KNOWN_SERVERS`
//! elsewhere) has one `ADDRESS FINGERPRINT` pair per line; `#` starts a comment.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bench::BoxError;

/// The known-servers file's default place, under the user's config directory.
pub(crate) fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("zserver").join("known_servers"))
}

/// The entries of one known-servers file.
#[derive(Debug)]
pub(crate) struct KnownServers {
    path: PathBuf,
    entries: Vec<(String, String)>,
}

impl KnownServers {
    /// Reads `path` (a missing file has no entries).
    pub(crate) fn load(path: &Path) -> Result<Self, BoxError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(addr), Some(fp), None) if zserver::parse_fingerprint(fp).is_some() => {
                    entries.push((addr.to_owned(), fp.to_ascii_lowercase()))
                }
                _ => {
                    return Err(format!(
                        "{}:{}: expected `ADDRESS FINGERPRINT` (64 hex digits)",
                        path.display(),
                        n + 1
                    )
                    .into())
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Every (address, fingerprint), in file order.
    pub(crate) fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The fingerprint recorded for `addr`.
    pub(crate) fn get(&self, addr: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, fp)| fp.as_str())
    }

    /// Records `fingerprint` for `addr` (appended; the directory is created if needed).
    pub(crate) fn add(&mut self, addr: &str, fingerprint: &str) -> Result<(), BoxError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        writeln!(file, "{addr} {fingerprint}")?;
        self.entries.push((addr.to_owned(), fingerprint.to_owned()));
        Ok(())
    }

    /// Forgets `addr`; whether it was known. The file is rewritten whole (a temporary file
    /// renamed over it), comments included only as entries: they are not kept.
    pub(crate) fn forget(&mut self, addr: &str) -> Result<bool, BoxError> {
        let before = self.entries.len();
        self.entries.retain(|(a, _)| a != addr);
        if self.entries.len() == before {
            return Ok(false);
        }
        let text: String = self
            .entries
            .iter()
            .map(|(a, fp)| format!("{a} {fp}\n"))
            .collect();
        let temp = self.path.with_extension("tmp");
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.path)?;
        Ok(true)
    }
}

/// What a client connection trusts: an explicit pin, a recorded key, or (first use) any key,
/// to be recorded once the handshake proves it.
pub(crate) struct Trust {
    addr: String,
    known: Option<KnownServers>,
    /// The key to insist on, if any.
    pub pin: Option<String>,
    from_file: bool,
}

impl Trust {
    /// The trust for a connection to `addr`: `pin` if given; otherwise what `file` records.
    pub(crate) fn new(
        addr: &str,
        pin: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Self, BoxError> {
        if let Some(pin) = pin {
            return Ok(Self {
                addr: addr.to_owned(),
                known: None,
                pin: Some(pin.to_owned()),
                from_file: false,
            });
        }
        let path = file.map(Path::to_owned).or_else(default_path).ok_or(
            "no config directory for the known-servers file: pass --known-servers FILE or --pin",
        )?;
        let known = KnownServers::load(&path)?;
        let pin = known.get(addr).map(str::to_owned);
        Ok(Self {
            addr: addr.to_owned(),
            from_file: pin.is_some(),
            known: Some(known),
            pin,
        })
    }

    /// Explains a refused connection: a key that differs from the recorded one.
    pub(crate) fn explain(&self, error: zserver::Error) -> BoxError {
        match (&error, &self.known) {
            (zserver::Error::KeyMismatch { expected, got }, Some(known)) if self.from_file => {
                format!(
                    "the server at {addr} presented the key {got}, but {file} records {expected} \
                     for that address. Someone may be impersonating the server; if its key was \
                     changed on purpose, run `zserver client known --forget {addr}` (or pass \
                     --pin {got}).",
                    addr = self.addr,
                    file = known.path().display(),
                )
                .into()
            }
            _ => error.into(),
        }
    }

    /// After a successful handshake: on first use, records the server's key `fingerprint`.
    pub(crate) fn connected(&mut self, fingerprint: &str) -> Result<(), BoxError> {
        if let (None, Some(known)) = (&self.pin, &mut self.known) {
            known.add(&self.addr, fingerprint)?;
            eprintln!(
                "zserver: first connection to {}: recorded its key {fingerprint} in {}",
                self.addr,
                known.path().display()
            );
        }
        Ok(())
    }
}

/// `zserver client known [--forget ADDR]`: lists the file's entries, or forgets one.
pub(crate) fn command(file: Option<&Path>, forget: Option<&str>) -> Result<(), BoxError> {
    let path = file
        .map(Path::to_owned)
        .or_else(default_path)
        .ok_or("no config directory: pass --known-servers FILE")?;
    let mut known = KnownServers::load(&path)?;
    match forget {
        Some(addr) if known.forget(addr)? => {
            println!("forgot {addr} (in {})", path.display())
        }
        Some(addr) => return Err(format!("{addr} is not in {}", path.display()).into()),
        None => {
            for (addr, fp) in known.entries() {
                println!("{addr} {fp}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_finds_forgets_and_refuses_bad_lines() {
        let dir = std::env::temp_dir().join(format!("zserver-known-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("known_servers");
        let mut known = KnownServers::load(&path).unwrap();
        assert!(known.entries().is_empty());
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        known.add("127.0.0.1:7100", &a).unwrap();
        known.add("127.0.0.2:7100", &b).unwrap();
        let again = KnownServers::load(&path).unwrap();
        assert_eq!(again.get("127.0.0.1:7100"), Some(a.as_str()));
        assert_eq!(again.get("127.0.0.3:7100"), None);
        let mut again = again;
        assert!(again.forget("127.0.0.1:7100").unwrap());
        assert!(!again.forget("127.0.0.1:7100").unwrap());
        let left = KnownServers::load(&path).unwrap();
        assert_eq!(left.entries(), &[("127.0.0.2:7100".to_owned(), b)]);
        std::fs::write(&path, "# comment\n\n127.0.0.1:1 nothex\n").unwrap();
        let err = KnownServers::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(":3: expected `ADDRESS FINGERPRINT` (64 hex digits)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
