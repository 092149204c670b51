//! Password hashing: Argon2id with explicit parameters ([`PasswordParams`]), the length rule,
//! and the constant-cost answer for unknown users.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::StoreError;

/// Longest password, in bytes.
const MAX_PASSWORD: usize = 1024;

/// Argon2id's cost parameters for new password hashes.
///
/// Each hash being computed or checked holds `memory_kib` KiB for its duration, so a server
/// hashing `n` passwords at once needs `n × memory_kib` KiB on top of everything else (the
/// defaults: 19 MiB each). Stored hashes carry the parameters they were made with, so
/// changing these affects new hashes only; old ones still verify, at their own cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash, in KiB (at least 8 × `parallelism`). Default 19,456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over that memory (the time cost, at least 1). Default 2.
    pub iterations: u32,
    /// Lanes (1 to 16,777,215); the hash still runs on one thread. Default 1.
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's recommendation for Argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

impl PasswordParams {
    /// The hasher for these parameters; [`StoreError::Db`] if Argon2 rejects them.
    pub(super) fn hasher(&self) -> Result<Argon2<'static>, StoreError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| StoreError::Db(format!("bad Argon2 parameters {self:?}: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Checks a password's length (1 to 1024 bytes).
pub(super) fn check_password(password: &str) -> Result<(), StoreError> {
    if (1..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(StoreError::BadPassword)
    }
}

/// Hashes a password with `hasher` and a fresh random salt, as a PHC string.
pub(super) fn hash_password(hasher: &Argon2<'_>, password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Db(format!("password hashing failed: {e}")))
}

/// Checks `password` against `stored` (the user's PHC hash, which carries its own
/// parameters; `None` for an unknown user, checked against `dummy`, a hash made with the
/// current parameters, so that it costs the same as a real check). Both cases fail with the
/// same [`StoreError::WrongPassword`].
pub(super) fn verify_hash(
    hasher: &Argon2<'_>,
    stored: Option<&str>,
    dummy: Option<&str>,
    password: &str,
) -> Result<(), StoreError> {
    let found = stored.is_some();
    let Some(phc) = stored.or(dummy) else {
        return Err(StoreError::WrongPassword);
    };
    let parsed = PasswordHash::new(phc)
        .map_err(|e| StoreError::Db(format!("stored password hash unreadable: {e}")))?;
    // A password of a length we never accept cannot match; skip the (costly) hash for it.
    let matched = check_password(password).is_ok()
        && hasher.verify_password(password.as_bytes(), &parsed).is_ok();
    if matched && found {
        Ok(())
    } else {
        Err(StoreError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_explicit_and_old_hashes_still_verify() {
        assert_eq!(
            PasswordParams::default(),
            PasswordParams {
                memory_kib: 19 * 1024,
                iterations: 2,
                parallelism: 1
            }
        );
        let small = PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let hash = hash_password(&small.hasher().unwrap(), "pw").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        // A hasher with other parameters verifies it by the hash's own.
        let other = PasswordParams {
            memory_kib: 128,
            iterations: 3,
            parallelism: 1,
        };
        let hasher = other.hasher().unwrap();
        assert_eq!(verify_hash(&hasher, Some(&hash), None, "pw"), Ok(()));
        assert_eq!(
            verify_hash(&hasher, Some(&hash), None, "wrong"),
            Err(StoreError::WrongPassword)
        );
        // An unknown user fails the same way, after checking the dummy.
        assert_eq!(
            verify_hash(&hasher, None, Some(&hash), "pw"),
            Err(StoreError::WrongPassword)
        );
        let bad = PasswordParams {
            memory_kib: 1,
            ..small
        };
        assert!(bad.hasher().is_err());
    }
}
