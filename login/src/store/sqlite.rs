//! [`SqliteStorage`]: the embedded back end, one SQLite database (`zserver.db`) opened in WAL
//! mode with `synchronous=FULL`, so a committed write survives a crash or power loss.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use zserver::channels::{StoredHistory, StoredPublication};

use super::{
    change_kind, newer_schema, now_unix_ms, AccountChange, Message, Storage, StoreError,
    ACCOUNT_CHANGE_MEMORY,
};

/// The schema version this back end writes and reads; a database with a newer one is refused.
/// Version 2 added the channel history tables; version 3 the push hand-over claims; version 4
/// the users' `generation` and the account changes the servers watch.
const SCHEMA_VERSION: i64 = 4;

/// Queues a message (`?2` from, `?3` text, `?4` time) for user `?1`: no row if there is no
/// such user.
const QUEUE_MESSAGE: &str = "INSERT INTO messages (to_user, from_user, text, at_unix_ms)
     SELECT name, ?2, ?3, ?4 FROM users WHERE name = ?1";

/// The database file's name inside the directory given to [`SqliteStorage::open`].
const DB_FILE: &str = "zserver.db";
/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name            TEXT PRIMARY KEY NOT NULL,
    hash            TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    generation      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    to_user    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    from_user  TEXT NOT NULL,
    text       TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_to_user ON messages(to_user, id);
-- Version 2: channel history (epochs are u64 stored by bit pattern).
CREATE TABLE IF NOT EXISTS channels (
    name  TEXT PRIMARY KEY NOT NULL,
    epoch INTEGER NOT NULL,
    top   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
    channel    TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    pos        INTEGER NOT NULL,
    at_unix_ms INTEGER NOT NULL,
    from_user  TEXT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (channel, pos)
) WITHOUT ROWID;
-- Version 3: who handles a push another node did not answer for in time.
CREATE TABLE IF NOT EXISTS handovers (
    id         TEXT PRIMARY KEY NOT NULL,
    claimer    TEXT NOT NULL,
    at_unix_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handovers_at ON handovers(at_unix_ms);
-- Version 4: accounts deleted and passwords changed, for the servers to end stale sessions.
CREATE TABLE IF NOT EXISTS account_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    deleted    INTEGER NOT NULL,
    kept       TEXT,
    at_unix_ms INTEGER NOT NULL
);
";

/// Records an account change (`?1` name, `?2` deleted, `?3` kept, `?4` time).
const NOTE_CHANGE: &str =
    "INSERT INTO account_changes (name, deleted, kept, at_unix_ms) VALUES (?1, ?2, ?3, ?4)";

/// Forgets the account changes made before `?1`, but the newest (it numbers the next).
const FORGET_CHANGES: &str = "DELETE FROM account_changes WHERE at_unix_ms < ?1
     AND seq < (SELECT max(seq) FROM account_changes)";

/// Records an account change in `tx` and forgets old ones; its number.
fn note_change(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    deleted: bool,
    kept: Option<&str>,
) -> rusqlite::Result<u64> {
    let now = now_unix_ms();
    tx.prepare_cached(NOTE_CHANGE)?
        .execute(params![name, deleted, kept, now])?;
    let seq = tx.last_insert_rowid();
    let memory = ACCOUNT_CHANGE_MEMORY.as_millis() as i64;
    tx.prepare_cached(FORGET_CHANGES)?.execute([now - memory])?;
    Ok(seq as u64)
}

/// The embedded [`Storage`]: one SQLite database file behind one connection (thread-safe).
/// Several processes may open the same file; SQLite serialises their writes.
pub struct SqliteStorage {
    conn: Mutex<Connection>,
}

/// Maps a SQLite error to [`StoreError::Db`].
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl SqliteStorage {
    /// Opens (creating if needed) the database `dir/zserver.db`; creates `dir` too. Refuses a
    /// database whose schema version is newer than this code's.
    pub fn open(dir: &Path) -> Result<SqliteStorage, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        // Processes opening a new database at once can get SQLITE_BUSY without the busy
        // handler being asked (switching to WAL takes an exclusive lock): try again a while.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            let mut conn = Connection::open(&path).map_err(db)?;
            match set_up(&mut conn) {
                Ok(Ok(())) => {
                    return Ok(SqliteStorage {
                        conn: Mutex::new(conn),
                    })
                }
                Ok(Err(e)) => return Err(e),
                Err(e)
                    if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                        && Instant::now() < deadline =>
                {
                    drop(conn);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(db(e)),
            }
        }
    }

    /// Locks the connection, recovering it if a panicking thread poisoned the lock (an open
    /// transaction is rolled back when dropped, so the connection stays consistent).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one immediate (write-locking) transaction and commits it if `f` returns
    /// `Ok(true)`; otherwise rolls back.
    fn write(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<bool>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let done = f(&tx).map_err(db)?;
        if done {
            tx.commit().map_err(db)?;
        }
        Ok(done)
    }
}

/// Sets up a new connection: busy timeout, WAL, `synchronous=FULL`, foreign keys, and the
/// schema (refusing a newer version). The outer error is SQLite's, the inner one ours.
fn set_up(conn: &mut Connection) -> rusqlite::Result<Result<(), StoreError>> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(Err(StoreError::Db(format!(
            "cannot switch to WAL journal mode (got `{mode}`)"
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(Err(newer_schema(version, SCHEMA_VERSION)));
    }
    // Version 0 is a new (empty) database; migrations from older versions go here.
    tx.execute_batch(SCHEMA)?;
    // Version 4: a users table made before has no generation (every account's is 0).
    let has_generation: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('users') WHERE name = 'generation')",
        [],
        |row| row.get(0),
    )?;
    if !has_generation {
        tx.execute_batch("ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(Ok(()))
}

impl Storage for SqliteStorage {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn insert_user(
        &self,
        name: &str,
        hash: &str,
        created_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            // Its generation: the newest change so far, so that no change made before it (a
            // deletion of an account of the same name) ends its sessions.
            let inserted = tx.execute(
                "INSERT INTO users (name, hash, created_unix_ms, generation)
                 VALUES (?1, ?2, ?3, (SELECT coalesce(max(seq), 0) FROM account_changes))
                 ON CONFLICT(name) DO NOTHING",
                params![name, hash, created_unix_ms],
            )?;
            Ok(inserted > 0)
        })
    }

    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT hash FROM users WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map_err(db)
    }

    fn user_record(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.conn()
            .query_row(
                "SELECT hash, generation FROM users WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(db)
    }

    fn replace_hash(&self, name: &str, old_hash: &str, new_hash: &str) -> Result<bool, StoreError> {
        Ok(self.change_hash(name, old_hash, new_hash, None)?.is_some())
    }

    fn change_hash(
        &self,
        name: &str,
        old_hash: &str,
        new_hash: &str,
        kept: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let mut generation = None;
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE users SET hash = ?1 WHERE name = ?2 AND hash = ?3",
                params![new_hash, name, old_hash],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            let seq = note_change(tx, name, false, kept)?;
            tx.execute(
                "UPDATE users SET generation = ?1 WHERE name = ?2",
                params![seq as i64, name],
            )?;
            generation = Some(seq);
            Ok(true)
        })?;
        Ok(generation)
    }

    fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        self.remove_user(name, None)
    }

    fn remove_user(&self, name: &str, kept: Option<&str>) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM messages WHERE to_user = ?1", [name])?;
            let deleted = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
            if deleted > 0 {
                note_change(tx, name, true, kept)?;
            }
            Ok(deleted > 0)
        })
    }

    fn account_changes(&self, after: u64, limit: usize) -> Result<Vec<AccountChange>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, name, deleted, kept FROM account_changes
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after as i64, limit], |row| {
                let deleted: bool = row.get(2)?;
                Ok(AccountChange {
                    seq: row.get::<_, i64>(0)? as u64,
                    user: row.get(1)?,
                    kind: change_kind(deleted, row.get(3)?),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn last_account_change(&self) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT coalesce(max(seq), 0) FROM account_changes",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|seq| seq as u64)
            .map_err(db)
    }

    fn users(&self) -> Result<Vec<String>, StoreError> {
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

    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                [name],
                |row| row.get(0),
            )
            .map_err(db)
    }

    fn queue_message(
        &self,
        to: &str,
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let inserted = tx.execute(QUEUE_MESSAGE, params![to, from, text, at_unix_ms])?;
            Ok(inserted > 0)
        })
    }

    fn queue_for_many(
        &self,
        to: &[String],
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut stored = Vec::with_capacity(to.len());
        self.write(|tx| {
            let mut insert = tx.prepare_cached(QUEUE_MESSAGE)?;
            for user in to {
                if insert.execute(params![user, from, text, at_unix_ms])? > 0 {
                    stored.push(user.clone());
                }
            }
            Ok(true)
        })?;
        Ok(stored)
    }

    fn load_channel(
        &self,
        channel: &str,
        keep: usize,
    ) -> Result<Option<StoredHistory>, StoreError> {
        let conn = self.conn();
        let head: Option<(i64, i64)> = conn
            .query_row(
                "SELECT epoch, top FROM channels WHERE name = ?1",
                [channel],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        let Some((epoch, top)) = head else {
            return Ok(None);
        };
        let from = top.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
        let mut stmt = conn
            .prepare_cached(
                "SELECT pos, at_unix_ms, from_user, data FROM publications
                 WHERE channel = ?1 AND pos > ?2 ORDER BY pos",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![channel, from], |row| {
                Ok(StoredPublication {
                    offset: row.get::<_, i64>(0)? as u64,
                    at_unix_ms: row.get(1)?,
                    from: row.get(2)?,
                    data: row.get(3)?,
                })
            })
            .map_err(db)?;
        let publications = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
        Ok(Some(StoredHistory {
            epoch: epoch as u64,
            top: top as u64,
            publications,
        }))
    }

    fn create_channel(&self, channel: &str, epoch: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO channels (name, epoch, top) VALUES (?1, ?2, 0)
                 ON CONFLICT (name) DO NOTHING",
                params![channel, epoch as i64],
            )?;
            Ok(true)
        })
        .map(drop)
    }

    fn append_publication(
        &self,
        channel: &str,
        p: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mut offset = None;
        self.write(|tx| {
            let top: Option<i64> = tx
                .query_row(
                    "UPDATE channels SET top = top + 1 WHERE name = ?1 RETURNING top",
                    [channel],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(pos) = top else {
                return Ok(false);
            };
            tx.prepare_cached(
                "INSERT INTO publications (channel, pos, at_unix_ms, from_user, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![channel, pos, p.at_unix_ms, p.from, p.data])?;
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            tx.prepare_cached("DELETE FROM publications WHERE channel = ?1 AND pos <= ?2")?
                .execute(params![channel, pos.saturating_sub(keep)])?;
            offset = Some(pos as u64);
            Ok(true)
        })?;
        Ok(offset)
    }

    fn claim_handover(&self, id: &str, claimer: &str, at_unix_ms: i64) -> Result<bool, StoreError> {
        let mut holder = String::new();
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO handovers (id, claimer, at_unix_ms) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, claimer, at_unix_ms],
            )?;
            holder = tx.query_row("SELECT claimer FROM handovers WHERE id = ?1", [id], |row| {
                row.get(0)
            })?;
            Ok(true)
        })?;
        Ok(holder == claimer)
    }

    fn forget_handovers(&self, before_unix_ms: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM handovers WHERE at_unix_ms < ?1",
                [before_unix_ms],
            )?;
            Ok(true)
        })?;
        Ok(())
    }

    fn count_messages(&self) -> Result<u64, StoreError> {
        self.conn()
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .map_err(db)
    }

    fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        let mut messages = Vec::new();
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT from_user, text, at_unix_ms FROM messages
                 WHERE to_user = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([user], |row| {
                Ok(Message {
                    from: row.get(0)?,
                    text: row.get(1)?,
                    at_unix_ms: row.get(2)?,
                })
            })?;
            messages = rows.collect::<Result<Vec<_>, _>>()?;
            if messages.is_empty() {
                return Ok(false);
            }
            tx.execute("DELETE FROM messages WHERE to_user = ?1", [user])?;
            Ok(true)
        })?;
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[test]
    fn hash_at_rest_is_argon2id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.backend_name(), "sqlite");
        store.add_user("alice", "s3cret pass").unwrap();

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
    fn delete_user_leaves_no_message_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("dave", "pw").unwrap();
        store.queue_message("dave", "erin", "hello").unwrap();
        store.delete_user("dave").unwrap();
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let left: i64 = raw
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn schema_settings_in_a_nested_dir() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("nested").join("dir");
        let storage = SqliteStorage::open(&dir).unwrap();

        let raw = Connection::open(dir.join(DB_FILE)).unwrap();
        let version: i64 = raw
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = raw
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = storage
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn channel_history_appends_in_order_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load_channel("chat:a", 10).unwrap(), None);
        let publication = |text: &str| StoredPublication {
            offset: 0,
            at_unix_ms: 7,
            from: "ann".into(),
            data: text.as_bytes().to_vec(),
        };
        assert_eq!(
            storage
                .append_publication("chat:a", &publication("x"), 3)
                .unwrap(),
            None
        );
        storage.create_channel("chat:a", u64::MAX - 1).unwrap();
        for offset in 1..=4 {
            let at = storage
                .append_publication("chat:a", &publication("x"), 3)
                .unwrap();
            assert_eq!(at, Some(offset), "the store gives the offsets");
        }
        let loaded = storage.load_channel("chat:a", 2).unwrap().unwrap();
        assert_eq!((loaded.epoch, loaded.top), (u64::MAX - 1, 4));
        let offsets: Vec<u64> = loaded.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [3, 4]);
        assert_eq!(
            storage
                .load_channel("chat:a", 10)
                .unwrap()
                .unwrap()
                .publications
                .len(),
            3
        );
        // A history once made stays: a second create (another node's) changes nothing.
        storage.create_channel("chat:a", 5).unwrap();
        let same = storage.load_channel("chat:a", 10).unwrap().unwrap();
        assert_eq!((same.epoch, same.top), (u64::MAX - 1, 4));
    }

    #[test]
    fn a_version_3_database_gets_generations_and_account_changes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        raw.execute_batch(
            "CREATE TABLE users (
                 name TEXT PRIMARY KEY NOT NULL, hash TEXT NOT NULL,
                 created_unix_ms INTEGER NOT NULL);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        drop(raw);
        let old = Store::open(dir.path()).unwrap();
        drop(old);
        // The old accounts are at generation 0; a new password records a change.
        let store = Store::open(dir.path()).unwrap();
        store.add_user("kim", "pw").unwrap();
        assert_eq!(store.check_login("kim", "pw"), Ok(0));
        store.change_password("kim", "pw", "pw2").unwrap();
        assert_eq!(store.check_login("kim", "pw2"), Ok(1));
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: i64 = raw
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
        raw.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(raw);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Db(msg)) if msg.contains(&format!("version {}", SCHEMA_VERSION + 1))
        ));
    }
}
