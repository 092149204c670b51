//! The login server's durable store: user accounts (Argon2id password hashes) and queued
//! offline messages, in one SQLite database (`zserver.db`) opened in WAL mode with
//! `synchronous=FULL`, so a committed write survives a crash or power loss.
//!
//! Every method is blocking (SQLite I/O, and Argon2 takes tens of milliseconds): call them from
//! a blocking thread pool, not directly from an async task. Argon2 runs outside the connection
//! lock, so slow password checks do not serialise the other operations.
//!
//! User names are compared exactly (case-sensitive): `Alice` and `alice` are two users.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// The database file's name inside the directory given to [`Store::open`].
const DB_FILE: &str = "zserver.db";
/// The schema version this code writes and reads (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Longest user name, in characters (all allowed characters are ASCII, so also bytes).
const MAX_NAME: usize = 32;
/// Longest password, in bytes.
const MAX_PASSWORD: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name            TEXT PRIMARY KEY NOT NULL,
    hash            TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    to_user    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    from_user  TEXT NOT NULL,
    text       TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_to_user ON messages(to_user, id);
";

/// The login server's durable store of accounts and offline messages (thread-safe).
pub struct Store {
    conn: Mutex<Connection>,
}

/// An offline message, as returned by [`Store::take_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's user name.
    pub from: String,
    /// The message text.
    pub text: String,
    /// When the message was queued, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
}

/// Why a [`Store`] operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The user name breaks the naming rule.
    #[error("bad user name `{0}`: 1 to 32 characters of a-z, A-Z, 0-9, `_`, `-`, `.`, not starting with `.`")]
    BadName(String),
    /// The password is empty or longer than 1024 bytes.
    #[error("bad password: 1 to 1024 bytes")]
    BadPassword,
    /// A user with that name is already registered.
    #[error("user `{0}` already exists")]
    Duplicate(String),
    /// Wrong password, or no such user (deliberately indistinguishable).
    #[error("wrong user name or password")]
    WrongPassword,
    /// The named user does not exist.
    #[error("no user `{0}`")]
    NoSuchUser(String),
    /// The database (or the password hasher) failed; the text says how.
    #[error("storage error: {0}")]
    Db(String),
}

/// Maps a SQLite error to [`StoreError::Db`].
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Checks a user name (the rule in [`StoreError::BadName`]).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// Checks a password's length (1 to 1024 bytes).
fn check_password(password: &str) -> Result<(), StoreError> {
    if (1..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(StoreError::BadPassword)
    }
}

/// Hashes a password with Argon2id (default parameters) and a fresh random salt, as a PHC string.
fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Db(format!("password hashing failed: {e}")))
}

/// A hash of a fixed password with the same parameters as real ones, verified against when the
/// user is unknown so that such a check costs the same time as a real one.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password("zserver-login: no such user").ok())
        .as_deref()
}

/// Checks `password` against `stored` (the user's PHC hash, `None` for an unknown user).
/// Both cases run one Argon2 verification and fail with the same [`StoreError::WrongPassword`].
fn verify_hash(stored: Option<&str>, password: &str) -> Result<(), StoreError> {
    let found = stored.is_some();
    let phc = match stored {
        Some(phc) => phc,
        None => match dummy_hash() {
            Some(dummy) => dummy,
            None => return Err(StoreError::WrongPassword),
        },
    };
    let parsed = PasswordHash::new(phc)
        .map_err(|e| StoreError::Db(format!("stored password hash unreadable: {e}")))?;
    // A password of a length we never accept cannot match; skip the (costly) hash for it.
    let matched = check_password(password).is_ok()
        && Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
    if matched && found {
        Ok(())
    } else {
        Err(StoreError::WrongPassword)
    }
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it).
fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database `dir/zserver.db`; creates `dir` too.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let mut conn = Connection::open(dir.join(DB_FILE)).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!(
                "cannot switch to WAL journal mode (got `{mode}`)"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "database schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )));
        }
        // Version 0 is a new (empty) database; migrations from older versions go here.
        tx.execute_batch(SCHEMA).map_err(db)?;
        if version < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;

        // Compute the dummy hash now so the first unknown-user check is not slower than others.
        let _ = dummy_hash();
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Locks the connection, recovering it if a panicking thread poisoned the lock (an open
    /// transaction is rolled back when dropped, so the connection stays consistent).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored PHC hash of `name`'s password, `None` if there is no such user.
    fn stored_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT hash FROM users WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db)
    }

    /// Registers a new user (BadName, BadPassword, or Duplicate if the name is taken).
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        check_name(name)?;
        check_password(password)?;
        if self.exists(name)? {
            return Err(StoreError::Duplicate(name.to_owned()));
        }
        let hash = hash_password(password)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        // The name may have been taken while hashing: insert only if it is still free.
        let inserted = tx
            .execute(
                "INSERT INTO users (name, hash, created_unix_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO NOTHING",
                params![name, hash, now_unix_ms()],
            )
            .map_err(db)?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(name.to_owned()));
        }
        tx.commit().map_err(db)
    }

    /// Ok if the password matches; WrongPassword for a wrong password or an unknown user.
    pub fn verify(&self, name: &str, password: &str) -> Result<(), StoreError> {
        let stored = self.hash_if_valid(name)?;
        verify_hash(stored.as_deref(), password)
    }

    /// The stored hash of `name`; `None` for an unknown user or a malformed name.
    fn hash_if_valid(&self, name: &str) -> Result<Option<String>, StoreError> {
        match check_name(name) {
            Ok(()) => self.stored_hash(name),
            Err(_) => Ok(None),
        }
    }

    /// Checks `old` first (WrongPassword), then stores the hash of `new` (BadPassword if `new`
    /// breaks the length rule).
    pub fn change_password(&self, name: &str, old: &str, new: &str) -> Result<(), StoreError> {
        let stored = self.hash_if_valid(name)?;
        verify_hash(stored.as_deref(), old)?;
        let Some(old_hash) = stored else {
            return Err(StoreError::WrongPassword);
        };
        check_password(new)?;
        let new_hash = hash_password(new)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        // Only if the hash is still the one `old` was checked against (no concurrent change).
        let updated = tx
            .execute(
                "UPDATE users SET hash = ?1 WHERE name = ?2 AND hash = ?3",
                params![new_hash, name, old_hash],
            )
            .map_err(db)?;
        if updated == 0 {
            return Err(StoreError::WrongPassword);
        }
        tx.commit().map_err(db)
    }

    /// Removes the user and their queued messages (NoSuchUser if absent).
    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        tx.execute("DELETE FROM messages WHERE to_user = ?1", [name])
            .map_err(db)?;
        let deleted = tx
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(db)?;
        if deleted == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        tx.commit().map_err(db)
    }

    /// All user names, sorted.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM users ORDER BY name")
            .map_err(db)?;
        let names = stmt
            .query_map([], |row| row.get(0))
            .map_err(db)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(db)?;
        Ok(names)
    }

    /// Whether a user with this name exists.
    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                [name],
                |row| row.get(0),
            )
            .map_err(db)
    }

    /// Stores a message for `to` durably (NoSuchUser if `to` does not exist); delivered later in order.
    pub fn queue_message(&self, to: &str, from: &str, text: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let inserted = tx
            .execute(
                "INSERT INTO messages (to_user, from_user, text, at_unix_ms)
                 SELECT name, ?2, ?3, ?4 FROM users WHERE name = ?1",
                params![to, from, text, now_unix_ms()],
            )
            .map_err(db)?;
        if inserted == 0 {
            return Err(StoreError::NoSuchUser(to.to_owned()));
        }
        tx.commit().map_err(db)
    }

    /// Removes and returns every message queued for `user`, oldest first, in one transaction.
    /// An unknown user simply has no messages.
    pub fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let messages = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT from_user, text, at_unix_ms FROM messages
                     WHERE to_user = ?1 ORDER BY id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([user], |row| {
                    Ok(Message {
                        from: row.get(0)?,
                        text: row.get(1)?,
                        at_unix_ms: row.get(2)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)?
        };
        if !messages.is_empty() {
            tx.execute("DELETE FROM messages WHERE to_user = ?1", [user])
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
    }

    #[test]
    fn add_verify_wrong_unknown_duplicate_and_hash_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("alice", "s3cret pass").unwrap();
        assert_eq!(store.verify("alice", "s3cret pass"), Ok(()));
        assert_eq!(
            store.verify("alice", "wrong"),
            Err(StoreError::WrongPassword)
        );
        assert_eq!(
            store.verify("nobody", "s3cret pass"),
            Err(StoreError::WrongPassword)
        );
        // Refused before any hashing.
        assert_eq!(store.verify("../x", "x"), Err(StoreError::WrongPassword));
        assert_eq!(store.verify("alice", ""), Err(StoreError::WrongPassword));
        assert_eq!(
            store.add_user("alice", "other"),
            Err(StoreError::Duplicate("alice".into()))
        );
        assert!(store.exists("alice").unwrap());
        assert!(!store.exists("Alice").unwrap());

        // The stored hash is an Argon2id PHC string, not the password.
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let hash: String = raw
            .query_row("SELECT hash FROM users WHERE name = 'alice'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_ne!(hash, "s3cret pass");
        assert!(!hash.contains("s3cret"));
        assert!(hash.starts_with("$argon2id$"), "{hash}");
    }

    #[test]
    fn bad_names_and_passwords_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long = "a".repeat(33);
        for bad in ["", "../x", ".hidden", long.as_str(), "a/b", "a b", "é"] {
            assert_eq!(check_name(bad), Err(StoreError::BadName(bad.into())));
            assert_eq!(
                store.add_user(bad, "pw"),
                Err(StoreError::BadName(bad.into()))
            );
        }
        for good in ["a", "A.b-c_9", "x.", &"z".repeat(32)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert_eq!(store.add_user("bob", ""), Err(StoreError::BadPassword));
        assert_eq!(
            store.add_user("bob", &"p".repeat(1025)),
            Err(StoreError::BadPassword)
        );
        assert!(store.users().unwrap().is_empty());
    }

    #[test]
    fn change_password() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("carol", "old-pw").unwrap();
        assert_eq!(
            store.change_password("carol", "not-it", "new-pw"),
            Err(StoreError::WrongPassword)
        );
        assert_eq!(
            store.change_password("nobody", "old-pw", "new-pw"),
            Err(StoreError::WrongPassword)
        );
        assert_eq!(
            store.change_password("carol", "old-pw", ""),
            Err(StoreError::BadPassword)
        );
        store.change_password("carol", "old-pw", "new-pw").unwrap();
        assert_eq!(
            store.verify("carol", "old-pw"),
            Err(StoreError::WrongPassword)
        );
        assert_eq!(store.verify("carol", "new-pw"), Ok(()));
    }

    #[test]
    fn delete_user_removes_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("dave", "pw").unwrap();
        store.queue_message("dave", "erin", "hello").unwrap();
        store.delete_user("dave").unwrap();
        assert!(!store.exists("dave").unwrap());
        assert_eq!(
            store.delete_user("dave"),
            Err(StoreError::NoSuchUser("dave".into()))
        );
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let left: i64 = raw
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        assert!(store.take_messages("dave").unwrap().is_empty());
        assert_eq!(
            store.queue_message("dave", "erin", "again"),
            Err(StoreError::NoSuchUser("dave".into()))
        );
    }

    #[test]
    fn messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let before = now_unix_ms();
        {
            let store = Store::open(dir.path()).unwrap();
            store.add_user("frank", "pw").unwrap();
            for (i, from) in ["x", "y", "z"].iter().enumerate() {
                store
                    .queue_message("frank", from, &format!("message {i}"))
                    .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let got = store.take_messages("frank").unwrap();
        let texts: Vec<_> = got
            .iter()
            .map(|m| (m.from.as_str(), m.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [("x", "message 0"), ("y", "message 1"), ("z", "message 2")]
        );
        assert!(got
            .iter()
            .all(|m| m.at_unix_ms >= before && m.at_unix_ms <= now_unix_ms()));
        assert!(store.take_messages("frank").unwrap().is_empty());
        assert!(store.take_messages("nobody").unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.take_messages("frank").unwrap().is_empty());
        assert_eq!(store.verify("frank", "pw"), Ok(()));
    }

    #[test]
    fn users_sorted_and_schema_settings() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("nested").join("dir");
        let store = Store::open(&dir).unwrap();
        for name in ["mike", "Zed", "alpha", "beta"] {
            store.add_user(name, "pw").unwrap();
        }
        assert_eq!(store.users().unwrap(), ["Zed", "alpha", "beta", "mike"]);

        let raw = Connection::open(dir.join(DB_FILE)).unwrap();
        let version: i64 = raw
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = raw
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        raw.pragma_update(None, "user_version", 2).unwrap();
        drop(raw);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Db(msg)) if msg.contains("version 2")
        ));
    }
}
