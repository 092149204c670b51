//! The secure channel: a Noise XX handshake (X25519, AES-256-GCM, SHA-256, through the
//! reviewed `snow` crate) gives each connection fresh keys, one per direction; after it,
//! every byte travels in AES-256-GCM records ([`record`]) that rekey in-band.
//!
//! The preambles, codec lists and Noise handshake run as one sans-IO state machine
//! (`negotiate`), which ends in the keys.
//!
//! The server has a long-term key pair ([`Keypair`], kept in a file it creates on first
//! start); a client may pin the server's public key and then refuses any other server
//! before a single command is sent.

pub(crate) use crate::internal::cipher;
mod handshake;
pub(crate) mod negotiate;
pub(crate) use crate::internal::record;

use std::fmt;
use std::io;
use std::path::Path;

pub use cipher::Provider;
pub(crate) use handshake::MAX_MESSAGE as MAX_HANDSHAKE_MESSAGE;
pub(crate) use negotiate::{Established, Negotiation};
pub use record::RekeyPolicy;

/// The Noise protocol name used for the handshake.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Whether and how a connection is encrypted. Both ends must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// Noise XX handshake, then AES-256-GCM records (the default).
    Noise {
        /// The AES-256-GCM implementation.
        provider: Provider,
        /// When each direction replaces its key.
        rekey: RekeyPolicy,
    },
    /// No encryption and no authentication. Only for links that are already trusted
    /// (the same host, a private network under your control, a tunnel).
    PlainTrustedLink,
}

impl Default for Encryption {
    fn default() -> Self {
        Encryption::Noise {
            provider: Provider::default(),
            rekey: RekeyPolicy::default(),
        }
    }
}

impl Encryption {
    /// The mode byte this setting puts in the preamble: 0 plain, 1 Noise XX.
    pub(crate) fn mode_byte(&self) -> u8 {
        match self {
            Encryption::PlainTrustedLink => 0,
            Encryption::Noise { .. } => 1,
        }
    }
}

/// An X25519 key pair: a server's long-term identity, or a client's.
#[derive(Clone, PartialEq, Eq)]
pub struct Keypair {
    private: [u8; 32],
    public: [u8; 32],
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A new random key pair.
    pub fn generate() -> Self {
        let params = NOISE_PARAMS
            .parse()
            .expect("the Noise parameters are valid");
        let kp = snow::Builder::new(params)
            .generate_keypair()
            .expect("the operating system supplies randomness");
        let mut out = Self {
            private: [0; 32],
            public: [0; 32],
        };
        out.private.copy_from_slice(&kp.private);
        out.public.copy_from_slice(&kp.public);
        out
    }

    /// Loads the key pair kept at `path`, or creates one there (readable by its owner only)
    /// if the file does not exist. The file holds two lines of hex: private, then public.
    pub fn load_or_create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a zserver key file", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let kp = Self::generate();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let text = format!("{}\n{}\n", hex(&kp.private), hex(&kp.public));
                write_private_file(path, text.as_bytes())?;
                Ok(kp)
            }
            Err(e) => Err(e),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let private = unhex(lines.next()?.trim())?;
        let public = unhex(lines.next()?.trim())?;
        Some(Self { private, public })
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as 64 hex digits: what an operator shows and a client pins.
    pub fn fingerprint(&self) -> String {
        hex(&self.public)
    }

    pub(crate) fn private_key(&self) -> &[u8; 32] {
        &self.private
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        self.private = [0; 32];
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::write(path, bytes)
}

/// A public key as its fingerprint: 64 lower-case hex digits (what
/// [`Keypair::fingerprint`] prints, and what
/// [`ClientBuilder::pin_server_fingerprint`](crate::ClientBuilder::pin_server_fingerprint)
/// takes).
pub fn fingerprint(key: &[u8; 32]) -> String {
    hex(key)
}

/// Parses a fingerprint (64 hex digits) back into a public key; `None` if it is not one.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    unhex(text)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a 32-byte key.
pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("zserver-key-{}", std::process::id()));
        let path = dir.join("nested").join("server.key");
        let _ = std::fs::remove_dir_all(&dir);
        let first = Keypair::load_or_create(&path).unwrap();
        let again = Keypair::load_or_create(&path).unwrap();
        assert_eq!(first, again);
        assert_eq!(unhex(&first.fingerprint()), Some(first.public_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(Keypair::load_or_create(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            Keypair::generate().public_key(),
            Keypair::generate().public_key()
        );
        assert_eq!(unhex("zz"), None);
    }
}
