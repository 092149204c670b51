//! AES-256-GCM with a counter nonce, behind a small provider trait so that the
//! implementation is a choice: `ring` (fast; the default, behind the `ring` feature) or the
//! pure-Rust `aes-gcm` crate (always built).

use std::fmt;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// Bytes in an authentication tag.
pub const TAG_LEN: usize = 16;

/// A failed authentication: the record was forged, corrupted, replayed or reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("record failed authentication")
    }
}

/// Which AES-256-GCM implementation seals and opens records. More may come (and `Ring`
/// is there only with the `ring` feature): match it with a `_` arm, or list what this
/// build has with [`Provider::all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Provider {
    /// `ring`'s assembly implementation (AES-NI, VAES): several GiB/s per core.
    #[cfg(feature = "ring")]
    #[cfg_attr(feature = "ring", default)]
    Ring,
    /// The pure-Rust `aes-gcm` crate.
    #[cfg_attr(not(feature = "ring"), default)]
    RustCrypto,
}

impl Provider {
    /// Every provider compiled into this build.
    pub fn all() -> Vec<Provider> {
        vec![
            #[cfg(feature = "ring")]
            Provider::Ring,
            Provider::RustCrypto,
        ]
    }

    /// A short name: `"ring"` or `"aes-gcm"`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "ring")]
            Provider::Ring => "ring",
            Provider::RustCrypto => "aes-gcm",
        }
    }
}

enum Key {
    #[cfg(feature = "ring")]
    Ring(Box<ring::aead::LessSafeKey>),
    RustCrypto(Box<aes_gcm::Aes256Gcm>),
}

/// One direction's AES-256-GCM key and nonce counter. The counter only moves forward and
/// the key is replaced before it could wrap, so no nonce repeats under a key.
pub struct CipherState {
    provider: Provider,
    key: Key,
    raw: [u8; KEY_LEN],
    counter: u64,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("provider", &self.provider.name())
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl CipherState {
    /// A cipher with `key`, its counter at zero.
    pub fn new(provider: Provider, key: [u8; KEY_LEN]) -> Self {
        Self {
            provider,
            key: make_key(provider, &key),
            raw: key,
            counter: 0,
        }
    }

    /// The nonce for counter `n`: four zero bytes, then `n` little-endian. (Noise's own
    /// AESGCM nonce, used inside the handshake by `snow`, puts `n` big-endian; the records
    /// of `docs/PROTOCOL.md` section 2b are little-endian.)
    fn nonce(n: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        nonce
    }

    /// Encrypts `buf` in place under the next nonce, authenticating `ad`; returns the tag.
    pub fn seal(&mut self, ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = Self::nonce(self.counter);
        // Never reached in practice: rekeying happens long before 2^64 records.
        self.counter = self
            .counter
            .checked_add(1)
            .expect("nonce counter exhausted");
        seal_with(&self.key, nonce, ad, buf)
    }

    /// Decrypts `buf` (ciphertext followed by its tag) in place under the next nonce and
    /// returns the plaintext length. On failure the counter does not move.
    pub fn open(&mut self, ad: &[u8], buf: &mut [u8]) -> Result<usize, AuthError> {
        if buf.len() < TAG_LEN || self.counter == u64::MAX {
            return Err(AuthError);
        }
        let len = open_with(&self.key, Self::nonce(self.counter), ad, buf)?;
        self.counter += 1;
        Ok(len)
    }

    /// Replaces the key with one derived from it (Noise's REKEY: the first 32 bytes of
    /// encrypting 32 zero bytes under nonce 2^64-1) and restarts the counter.
    pub fn rekey(&mut self) {
        let mut next = [0u8; KEY_LEN];
        let _tag = seal_with(&self.key, Self::nonce(u64::MAX), &[], &mut next);
        *self = Self::new(self.provider, next);
    }

    /// Records sealed or opened under the current key.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The provider in use.
    pub fn provider(&self) -> Provider {
        self.provider
    }
}

impl Drop for CipherState {
    fn drop(&mut self) {
        // Best effort: the providers' own key schedules are theirs to wipe.
        self.raw = [0; KEY_LEN];
    }
}

fn make_key(provider: Provider, key: &[u8; KEY_LEN]) -> Key {
    match provider {
        #[cfg(feature = "ring")]
        Provider::Ring => {
            let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                .expect("a 32-byte key is valid for AES-256-GCM");
            Key::Ring(Box::new(ring::aead::LessSafeKey::new(unbound)))
        }
        Provider::RustCrypto => {
            use aes_gcm::KeyInit;
            Key::RustCrypto(Box::new(aes_gcm::Aes256Gcm::new(key.into())))
        }
    }
}

fn seal_with(key: &Key, nonce: [u8; 12], ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    match key {
        #[cfg(feature = "ring")]
        Key::Ring(k) => {
            let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
            let tag = k
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(ad), buf)
                .expect("record sizes are far below AES-GCM's limit");
            let mut out = [0u8; TAG_LEN];
            out.copy_from_slice(tag.as_ref());
            out
        }
        Key::RustCrypto(k) => {
            use aes_gcm::AeadInPlace;
            let tag = k
                .encrypt_in_place_detached(&nonce.into(), ad, buf)
                .expect("record sizes are far below AES-GCM's limit");
            tag.into()
        }
    }
}

fn open_with(key: &Key, nonce: [u8; 12], ad: &[u8], buf: &mut [u8]) -> Result<usize, AuthError> {
    let len = buf.len() - TAG_LEN;
    match key {
        #[cfg(feature = "ring")]
        Key::Ring(k) => {
            let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
            k.open_in_place(nonce, ring::aead::Aad::from(ad), buf)
                .map(|plain| plain.len())
                .map_err(|_| AuthError)
        }
        Key::RustCrypto(k) => {
            use aes_gcm::AeadInPlace;
            let (data, tag) = buf.split_at_mut(len);
            k.decrypt_in_place_detached(&nonce.into(), ad, data, aes_gcm::Tag::from_slice(tag))
                .map(|()| len)
                .map_err(|_| AuthError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: Provider) -> (CipherState, CipherState) {
        (
            CipherState::new(p, [7; KEY_LEN]),
            CipherState::new(p, [7; KEY_LEN]),
        )
    }

    fn sealed(c: &mut CipherState, ad: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut buf = msg.to_vec();
        let tag = c.seal(ad, &mut buf);
        buf.extend_from_slice(&tag);
        buf
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        for p in Provider::all() {
            let (mut tx, mut rx) = pair(p);
            let a = sealed(&mut tx, b"ad", b"same message");
            let b = sealed(&mut tx, b"ad", b"same message");
            assert_ne!(a, b, "{}: two records under one nonce", p.name());
            for mut rec in [a, b] {
                let n = rx.open(b"ad", &mut rec).unwrap();
                assert_eq!(&rec[..n], b"same message");
            }
        }
    }

    /// docs/PROTOCOL.md section 2b: record `n` under a key is sealed with the nonce
    /// `00 00 00 00` followed by `n` as u64 little-endian (not Noise's big-endian order).
    #[test]
    fn record_nonces_are_little_endian_counters() {
        use aes_gcm::{AeadInPlace, KeyInit};
        let key = [7; KEY_LEN];
        let reference = aes_gcm::Aes256Gcm::new((&key).into());
        for p in Provider::all() {
            let mut tx = CipherState::new(p, key);
            for n in 0u8..3 {
                let record = sealed(&mut tx, b"ad", b"hello");
                let mut nonce = [0u8; 12];
                nonce[4] = n;
                let mut expected = b"hello".to_vec();
                let tag = reference
                    .encrypt_in_place_detached(&nonce.into(), b"ad", &mut expected)
                    .unwrap();
                expected.extend_from_slice(&tag);
                assert_eq!(record, expected, "{}: record {n}", p.name());
            }
        }
    }

    #[test]
    fn tampering_replay_and_wrong_ad_fail() {
        for p in Provider::all() {
            let (mut tx, mut rx) = pair(p);
            let rec = sealed(&mut tx, b"ad", b"hello");
            let mut flipped = rec.clone();
            flipped[1] ^= 1;
            assert_eq!(rx.open(b"ad", &mut flipped), Err(AuthError));
            assert_eq!(rx.open(b"xx", &mut rec.clone()), Err(AuthError));
            assert!(rx.open(b"ad", &mut rec.clone()).is_ok());
            // The same record again is a replay: the receiver's nonce has moved on.
            assert_eq!(rx.open(b"ad", &mut rec.clone()), Err(AuthError));
        }
    }

    #[test]
    fn rekey_agrees_on_both_sides_and_changes_the_key() {
        for p in Provider::all() {
            let (mut tx, mut rx) = pair(p);
            let before = sealed(&mut CipherState::new(p, [7; KEY_LEN]), b"", b"x");
            tx.rekey();
            rx.rekey();
            assert_eq!(tx.counter(), 0);
            let after = sealed(&mut tx, b"", b"x");
            assert_ne!(before, after);
            assert!(rx.open(b"", &mut after.clone()).is_ok());
        }
    }

    #[test]
    #[cfg(feature = "ring")]
    fn providers_are_interchangeable() {
        let mut ring = CipherState::new(Provider::Ring, [9; KEY_LEN]);
        let mut rc = CipherState::new(Provider::RustCrypto, [9; KEY_LEN]);
        let mut rec = sealed(&mut ring, b"ad", b"interop");
        let n = rc.open(b"ad", &mut rec).unwrap();
        assert_eq!(&rec[..n], b"interop");
        ring.rekey();
        rc.rekey();
        let mut rec = sealed(&mut rc, b"", b"after rekey");
        assert!(ring.open(b"", &mut rec).is_ok());
    }
}
