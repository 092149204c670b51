//! [`PostgresStorage`]: the cluster back end, a PostgreSQL database that every node of a
//! cluster connects to, with the same tables as the embedded SQLite one.

use std::error::Error as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, Config, NoTls, SimpleQueryMessage};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use zserver::channels::{StoredHistory, StoredPublication};

use super::{
    change_kind, newer_schema, AccountChange, Message, Storage, StoreError, ACCOUNT_CHANGE_MEMORY,
};

/// The schema version this back end writes and reads; a database with a newer one is refused.
/// Version 2 added the messages' `msg_key`, `taken_by` and `taken_unix_ms`; version 3 the
/// channel history tables; version 4 the push hand-over claims; version 5 the users'
/// `generation` and the account changes the servers watch.
const SCHEMA_VERSION: i64 = 5;
/// How long a login's claim on messages it took but did not get to delete holds them; after
/// that, the next login takes them again.
const CLAIM_EXPIRY_MS: i64 = 60_000;

/// How many connections one [`PostgresStorage`] keeps at most.
const POOL_SIZE: usize = 4;
/// How long connecting may take, unless the URL sets `connect_timeout` itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The key of the transaction-scoped advisory lock that serialises schema creation between
/// nodes connecting at once (advisory locks are per database, so other databases on the same
/// server are not held up).
const SCHEMA_LOCK: i64 = 0x7a73_6572_7665_7231; // "zserver1"
/// The key of the transaction-scoped advisory lock that every transaction recording an
/// account change (and every new account) takes first: the changes then commit in the order
/// of their numbers, so a server that read up to one number has seen every change below it.
const ACCOUNTS_LOCK: i64 = 0x7a73_6572_7665_7232; // "zserver2"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name            TEXT PRIMARY KEY,
    hash            TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id         BIGSERIAL PRIMARY KEY,
    to_user    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    from_user  TEXT NOT NULL,
    text       TEXT NOT NULL,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_to_user ON messages(to_user, id);
-- Version 2: what makes a retried statement safe (see PostgresStorage).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS msg_key TEXT UNIQUE;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS taken_by TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS taken_unix_ms BIGINT;
-- Version 3: channel history (epochs are u64 stored by bit pattern).
CREATE TABLE IF NOT EXISTS channels (
    name  TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    top   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
    channel    TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    pos        BIGINT NOT NULL,
    at_unix_ms BIGINT NOT NULL,
    from_user  TEXT NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (channel, pos)
);
-- Version 4: who handles a push another node did not answer for in time.
CREATE TABLE IF NOT EXISTS handovers (
    id         TEXT PRIMARY KEY,
    claimer    TEXT NOT NULL,
    at_unix_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS handovers_at ON handovers(at_unix_ms);
-- Version 5: accounts deleted and passwords changed, for the servers to end stale sessions.
ALTER TABLE users ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS account_changes (
    seq        BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL,
    deleted    BOOLEAN NOT NULL,
    kept       TEXT,
    at_unix_ms BIGINT NOT NULL
);
";

/// PostgreSQL's clock in milliseconds since the Unix epoch, as SQL (one clock for every node).
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A random 128-bit key, in hex: a stored message's idempotency key, or a login's claim.
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster [`Storage`]: a PostgreSQL database shared by every node (thread-safe).
///
/// It keeps up to four connections, opened as they are needed, and gives each operation a free
/// one. A connection that broke (the server restarted, or the backend was terminated) is
/// replaced transparently: the operation is retried once on a new connection. If PostgreSQL
/// is down, operations fail with [`StoreError::Db`] after the connect timeout (five seconds
/// unless the URL sets `connect_timeout`).
///
/// A connection can also break after a statement committed but before its answer arrived;
/// every operation is written so that its retry then does not apply it twice:
///
/// - a queued message carries a random key (`msg_key`, unique), and the retry's insert of the
///   same key does nothing;
/// - taking messages is two steps: a login first claims them with a random token
///   (`taken_by`; a retry claims the same rows again, and a concurrent login skips them), then
///   deletes what it claimed. A claim whose delete never came (PostgreSQL went away in
///   between: the login failed) expires after a minute, and the next login takes the
///   messages;
/// - a retried add, password change or delete that finds its own result already there (its
///   hash, or no user) reports success.
///
/// One narrow case is left: if a retried queue's first attempt committed and the recipient
/// took the message in the milliseconds before the retry, the retry stores it again.
///
/// The connections are driven by the `postgres` crate's private Tokio runtime: call this from
/// plain threads (such as `blocking::unblock`'s), never from a thread running a Tokio runtime.
pub struct PostgresStorage {
    config: Config,
    pool: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

/// Maps a PostgreSQL error to [`StoreError::Db`], with its causes (the crate's own text for a
/// server error is only "db error").
fn pg(e: ::postgres::Error) -> StoreError {
    StoreError::Db(pg_text(&e))
}

/// A PostgreSQL error's text followed by its causes'.
fn pg_text(e: &::postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `e` means the connection is gone (so a new one may succeed), rather than that the
/// statement failed.
fn broken(client: &Client, e: &::postgres::Error) -> bool {
    if client.is_closed() || e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08: connection exception; 57P01-57P03: the server is shutting down, crashed
        // or is starting up (57P01 is also what pg_terminate_backend sends).
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code);
    }
    // Socket errors (reset, broken pipe) reach us as an I/O error source.
    e.source()
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

impl PostgresStorage {
    /// Connects to the database at `url` (a `postgres://` or `postgresql://` URL, or a
    /// `key=value` connection string; no TLS) and creates the tables if they are missing.
    /// Nodes connecting at once are safe: the schema is created under an advisory lock. A
    /// database with a newer schema version is refused.
    pub fn connect(url: &str) -> Result<PostgresStorage, StoreError> {
        let mut config = Config::from_str(url)
            .map_err(|e| StoreError::Db(format!("bad PostgreSQL URL: {}", pg_text(&e))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let storage = PostgresStorage {
            config,
            pool: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        storage.with_client(|c, _| migrate(c))??;
        Ok(storage)
    }

    /// Opens a new connection.
    fn connect_one(&self) -> Result<Client, StoreError> {
        self.config
            .connect(NoTls)
            .map_err(|e| StoreError::Db(format!("cannot connect to PostgreSQL: {}", pg_text(&e))))
    }

    /// A pool slot for one operation: the first free one, starting round-robin, or (all
    /// busy) waits for the round-robin one. A slot poisoned by a panic is still usable: an
    /// open transaction is rolled back when dropped.
    fn slot(&self) -> MutexGuard<'_, Option<Client>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.pool.len();
        for i in 0..n {
            match self.pool[(start + i) % n].try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.pool[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on a pooled connection, opening one if the slot has none or a closed one, and
    /// retrying once on a new connection if it fails because the connection broke. `op`'s
    /// flag says it is that retry: the first attempt may have been applied.
    fn with_client<T>(
        &self,
        mut op: impl FnMut(&mut Client, bool) -> Result<T, ::postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.slot();
        let mut retried = false;
        loop {
            let client = match slot.take() {
                Some(client) if !client.is_closed() => slot.insert(client),
                _ => slot.insert(self.connect_one()?),
            };
            match op(client, retried) {
                Ok(value) => return Ok(value),
                Err(e) if !retried && broken(client, &e) => {
                    tracing::warn!(error = %pg(e), "PostgreSQL connection lost; reconnecting");
                    *slot = None;
                    retried = true;
                }
                Err(e) => {
                    if broken(client, &e) {
                        *slot = None;
                    }
                    return Err(pg(e));
                }
            }
        }
    }
}

impl PostgresStorage {
    /// The one `bigint` a query without parameters yields (a negative one as 0).
    fn number(&self, query: &str) -> Result<u64, StoreError> {
        let n: i64 = self.with_client(|c, _| c.query_one(query, &[])?.try_get(0))?;
        Ok(n.max(0) as u64)
    }
}

/// Creates the tables if they are missing and records the schema version, in one transaction
/// under an advisory lock (so nodes connecting at once do not race); refuses a newer version.
fn migrate(client: &mut Client) -> Result<Result<(), StoreError>, ::postgres::Error> {
    let mut tx = client.transaction()?;
    // `IF NOT EXISTS` notices ("already exists, skipping") are not worth a log line per node.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS zserver_schema (version INT NOT NULL)")?;
    let version: Option<i32> = tx
        .query_one("SELECT max(version) FROM zserver_schema", &[])?
        .try_get(0)?;
    let version = i64::from(version.unwrap_or(0));
    if version > SCHEMA_VERSION {
        return Ok(Err(newer_schema(version, SCHEMA_VERSION)));
    }
    // Version 0 is a new (empty) database; version 1 lacks the columns `SCHEMA` adds last.
    tx.batch_execute(SCHEMA)?;
    if version < SCHEMA_VERSION {
        tx.execute("DELETE FROM zserver_schema", &[])?;
        tx.execute(
            "INSERT INTO zserver_schema (version) VALUES ($1)",
            &[&(SCHEMA_VERSION as i32)],
        )?;
    }
    tx.commit()?;
    Ok(Ok(()))
}

impl Storage for PostgresStorage {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn insert_user(
        &self,
        name: &str,
        hash: &str,
        created_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with_client(|c, retry| {
            // Its generation: the newest change so far (read under the lock, after every
            // change before it committed), so that no change made before it (a deletion of
            // an account of the same name) ends its sessions.
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACCOUNTS_LOCK])?;
            let inserted = tx.execute(
                "INSERT INTO users (name, hash, created_unix_ms, generation)
                 VALUES ($1, $2, $3, (SELECT coalesce(max(seq), 0) FROM account_changes))
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &hash, &created_unix_ms],
            )?;
            tx.commit()?;
            // A retry finding our hash (its salt is random) finds our own first insert.
            Ok(inserted > 0 || retry && current_hash(c, name)?.as_deref() == Some(hash))
        })
    }

    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with_client(|c, _| current_hash(c, name))
    }

    fn user_record(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.with_client(|c, _| {
            c.query_opt(
                "SELECT hash, generation FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|row| Ok((row.try_get(0)?, row.try_get::<_, i64>(1)? as u64)))
            .transpose()
        })
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
        self.with_client(|c, retry| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACCOUNTS_LOCK])?;
            let updated = tx.execute(
                "UPDATE users SET hash = $1 WHERE name = $2 AND hash = $3",
                &[&new_hash, &name, &old_hash],
            )?;
            let mut generation = None;
            if updated > 0 {
                let seq = note_change(&mut tx, name, false, kept)?;
                tx.execute(
                    "UPDATE users SET generation = $1 WHERE name = $2",
                    &[&seq, &name],
                )?;
                generation = Some(seq as u64);
            }
            tx.commit()?;
            if generation.is_none() && retry {
                // A retry finding our hash (its salt is random): the first attempt changed it.
                let ours = c.query_opt(
                    "SELECT generation FROM users WHERE name = $1 AND hash = $2",
                    &[&name, &new_hash],
                )?;
                generation = ours
                    .map(|row| row.try_get::<_, i64>(0))
                    .transpose()?
                    .map(|g| g as u64);
            }
            Ok(generation)
        })
    }

    fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        self.remove_user(name, None)
    }

    fn remove_user(&self, name: &str, kept: Option<&str>) -> Result<bool, StoreError> {
        self.with_client(|c, retry| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACCOUNTS_LOCK])?;
            tx.execute("DELETE FROM messages WHERE to_user = $1", &[&name])?;
            let deleted = tx.execute("DELETE FROM users WHERE name = $1", &[&name])?;
            if deleted > 0 {
                note_change(&mut tx, name, true, kept)?;
            }
            tx.commit()?;
            // A retry finding no user: the first attempt deleted it.
            Ok(deleted > 0 || retry)
        })
    }

    fn account_changes(&self, after: u64, limit: usize) -> Result<Vec<AccountChange>, StoreError> {
        let (after, limit) = (after as i64, i64::try_from(limit).unwrap_or(i64::MAX));
        self.with_client(|c, _| {
            c.query(
                "SELECT seq, name, deleted, kept FROM account_changes
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )?
            .iter()
            .map(|row| {
                Ok(AccountChange {
                    seq: row.try_get::<_, i64>(0)? as u64,
                    user: row.try_get(1)?,
                    kind: change_kind(row.try_get(2)?, row.try_get(3)?),
                })
            })
            .collect()
        })
    }

    fn last_account_change(&self) -> Result<u64, StoreError> {
        self.number("SELECT coalesce(max(seq), 0) FROM account_changes")
    }

    fn users(&self) -> Result<Vec<String>, StoreError> {
        // Byte order, as SQLite sorts, whatever the database's collation.
        self.with_client(|c, _| {
            c.query("SELECT name FROM users ORDER BY name COLLATE \"C\"", &[])?
                .iter()
                .map(|row| row.try_get(0))
                .collect()
        })
    }

    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.with_client(|c, _| user_exists(c, name))
    }

    fn load_channel(
        &self,
        channel: &str,
        keep: usize,
    ) -> Result<Option<StoredHistory>, StoreError> {
        self.with_client(|c, _| {
            let Some(head) = c.query_opt(
                "SELECT epoch, top FROM channels WHERE name = $1",
                &[&channel],
            )?
            else {
                return Ok(None);
            };
            let (epoch, top): (i64, i64) = (head.get(0), head.get(1));
            let from = top.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
            let rows = c.query(
                "SELECT pos, at_unix_ms, from_user, data FROM publications
                 WHERE channel = $1 AND pos > $2 ORDER BY pos",
                &[&channel, &from],
            )?;
            let publications = rows
                .iter()
                .map(|row| StoredPublication {
                    offset: row.get::<_, i64>(0) as u64,
                    at_unix_ms: row.get(1),
                    from: row.get(2),
                    data: row.get(3),
                })
                .collect();
            Ok(Some(StoredHistory {
                epoch: epoch as u64,
                top: top as u64,
                publications,
            }))
        })
    }

    fn create_channel(&self, channel: &str, epoch: u64) -> Result<(), StoreError> {
        let epoch = epoch as i64;
        self.with_client(|c, _| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO channels (name, epoch, top) VALUES ($1, $2, 0)
                 ON CONFLICT (name) DO NOTHING",
                &[&channel, &epoch],
            )?;
            tx.commit()
        })
    }

    fn append_publication(
        &self,
        channel: &str,
        p: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.with_client(|c, retry| {
            if retry {
                // The first attempt's outcome is unknown (it may have committed): no second
                // append, which could store the publication twice.
                return Err(c.query_opt("SELECT 1/0", &[]).unwrap_err());
            }
            let mut tx = c.transaction()?;
            // The row lock orders concurrent appends: one order per channel for all nodes.
            let Some(row) = tx.query_opt(
                "UPDATE channels SET top = top + 1 WHERE name = $1 RETURNING top",
                &[&channel],
            )?
            else {
                return Ok(None);
            };
            let pos: i64 = row.get(0);
            tx.execute(
                "INSERT INTO publications (channel, pos, at_unix_ms, from_user, data)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&channel, &pos, &p.at_unix_ms, &p.from, &p.data],
            )?;
            tx.execute(
                "DELETE FROM publications WHERE channel = $1 AND pos <= $2",
                &[&channel, &pos.saturating_sub(keep)],
            )?;
            tx.commit()?;
            Ok(Some(pos as u64))
        })
    }

    fn claim_handover(&self, id: &str, claimer: &str, at_unix_ms: i64) -> Result<bool, StoreError> {
        // One round trip: a simple query (no statement to prepare first), committed without
        // waiting for the WAL to reach the disk (a claim matters for the seconds a late
        // request may take; a PostgreSQL crash just before the WAL writer's next flush is a
        // far smaller risk than a disk round trip on every push between nodes). It yields
        // the insert's row, or (on a conflict) the one already there; after a conflict
        // with a claim that committed while it waited, only a new statement sees that one.
        // The values are checked to be plain words, so inlining them is safe.
        let plain = |v: &str| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !plain(id) || !plain(claimer) {
            return Err(StoreError::Db(format!("bad hand-over id `{id}`")));
        }
        let claim = format!(
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)),
             ins AS (
                 INSERT INTO handovers (id, claimer, at_unix_ms)
                 SELECT '{id}', '{claimer}', {at_unix_ms} FROM cfg
                 ON CONFLICT (id) DO NOTHING
                 RETURNING claimer
             )
             SELECT claimer FROM ins
             UNION ALL SELECT claimer FROM handovers WHERE id = '{id}'"
        );
        let holder = |messages: Vec<SimpleQueryMessage>| {
            messages.into_iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
        };
        self.with_client(|c, _| {
            let holder = match holder(c.simple_query(&claim)?) {
                Some(holder) => holder,
                None => {
                    let again = format!("SELECT claimer FROM handovers WHERE id = '{id}'");
                    holder(c.simple_query(&again)?).unwrap_or_default()
                }
            };
            Ok(holder == claimer)
        })
    }

    fn forget_handovers(&self, before_unix_ms: i64) -> Result<(), StoreError> {
        self.with_client(|c, _| {
            c.execute(
                "DELETE FROM handovers WHERE at_unix_ms < $1",
                &[&before_unix_ms],
            )
        })?;
        Ok(())
    }

    fn queue_message(
        &self,
        to: &str,
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = random_key();
        self.with_client(|c, retry| {
            let inserted = c.execute(
                "INSERT INTO messages (to_user, from_user, text, at_unix_ms, msg_key)
                 SELECT name, $2, $3, $4, $5 FROM users WHERE name = $1
                 ON CONFLICT (msg_key) DO NOTHING",
                &[&to, &from, &text, &at_unix_ms, &key],
            );
            match inserted {
                Ok(n) if n > 0 => Ok(true),
                // On a retry the key may already be there: stored by the first attempt.
                Ok(_) if retry => user_exists(c, to),
                Ok(_) => Ok(false),
                // The user was deleted between the SELECT and the foreign key check.
                Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn queue_for_many(
        &self,
        to: &[String],
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        // One statement: the recipients that exist are found once, their rows inserted (each
        // keyed by this call's key and its place in `to`, so a retry inserts nothing twice),
        // and those recipients returned.
        let key = random_key();
        self.with_client(|c, _| {
            c.query(
                "WITH known AS (
                     SELECT u.name, r.ord
                     FROM unnest($1::text[]) WITH ORDINALITY AS r(name, ord)
                     JOIN users u ON u.name = r.name
                 ), inserted AS (
                     INSERT INTO messages (to_user, from_user, text, at_unix_ms, msg_key)
                     SELECT name, $2, $3, $4, $5 || ':' || ord FROM known ORDER BY ord
                     ON CONFLICT (msg_key) DO NOTHING
                 )
                 SELECT name FROM known ORDER BY ord",
                &[&to, &from, &text, &at_unix_ms, &key],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
        })
    }

    fn count_messages(&self) -> Result<u64, StoreError> {
        self.number("SELECT count(*) FROM messages")
    }

    fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        // First claim the messages under a fresh token. Concurrent takers block on the same
        // rows, and the later one skips the rows the earlier one claimed, so each message goes
        // to exactly one; a retry claims the same rows again (`taken_by = token`).
        let token = random_key();
        let claim = format!(
            "WITH taken AS (
                 UPDATE messages SET taken_by = $2, taken_unix_ms = {DB_NOW_MS}
                 WHERE to_user = $1
                   AND (taken_by IS NULL OR taken_by = $2 OR taken_unix_ms < {DB_NOW_MS} - $3)
                 RETURNING id, from_user, text, at_unix_ms
             )
             SELECT from_user, text, at_unix_ms FROM taken ORDER BY id"
        );
        let messages = self.with_client(|c, _| {
            c.query(&claim, &[&user, &token, &CLAIM_EXPIRY_MS])?
                .iter()
                .map(|row| {
                    Ok(Message {
                        from: row.try_get(0)?,
                        text: row.try_get(1)?,
                        at_unix_ms: row.try_get(2)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        // Then delete what was claimed (a retry deletes whatever is left of it).
        if !messages.is_empty() {
            self.with_client(|c, _| {
                c.execute(
                    "DELETE FROM messages WHERE to_user = $1 AND taken_by = $2",
                    &[&user, &token],
                )
            })?;
        }
        Ok(messages)
    }
}

/// Records an account change in `tx` (which holds [`ACCOUNTS_LOCK`]) and forgets old ones
/// (but the newest: it numbers the next); its number.
fn note_change(
    tx: &mut ::postgres::Transaction<'_>,
    name: &str,
    deleted: bool,
    kept: Option<&str>,
) -> Result<i64, ::postgres::Error> {
    let memory = ACCOUNT_CHANGE_MEMORY.as_millis() as i64;
    tx.execute(
        &format!(
            "DELETE FROM account_changes WHERE at_unix_ms < {DB_NOW_MS} - $1
             AND seq < (SELECT max(seq) FROM account_changes)"
        ),
        &[&memory],
    )?;
    tx.query_one(
        &format!(
            "INSERT INTO account_changes (name, deleted, kept, at_unix_ms)
             VALUES ($1, $2, $3, {DB_NOW_MS}) RETURNING seq"
        ),
        &[&name, &deleted, &kept],
    )?
    .try_get(0)
}

/// `name`'s stored hash, `None` if there is no such user.
fn current_hash(c: &mut Client, name: &str) -> Result<Option<String>, ::postgres::Error> {
    c.query_opt("SELECT hash FROM users WHERE name = $1", &[&name])?
        .map(|row| row.try_get(0))
        .transpose()
}

/// Whether a user called `name` exists.
fn user_exists(c: &mut Client, name: &str) -> Result<bool, ::postgres::Error> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM users WHERE name = $1)",
        &[&name],
    )?
    .try_get(0)
}

impl Drop for PostgresStorage {
    /// A `postgres::Client` owns a small tokio runtime, which panics when dropped on an async
    /// runtime's thread (a server dropping its store on shutdown, or after a failed start):
    /// the clients are closed on a plain thread instead.
    fn drop(&mut self) {
        let clients: Vec<Client> = self
            .pool
            .iter_mut()
            .filter_map(|slot| slot.get_mut().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        if !clients.is_empty() {
            let _ = std::thread::Builder::new()
                .name("zserver-pg-close".into())
                .spawn(move || drop(clients));
        }
    }
}
