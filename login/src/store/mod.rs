//! The login server's durable store: user accounts (Argon2id password hashes) and queued
//! offline messages.
//!
//! [`Store`] holds the rules (user names, password lengths, Argon2id hashing with explicit
//! [`PasswordParams`], the constant-cost answer for unknown users) and keeps the data in one of two [`Storage`] back ends with the
//! same schema and behaviour:
//!
//! - [`SqliteStorage`], the embedded default: one SQLite database (`zserver.db` in the data
//!   directory) in WAL mode with `synchronous=FULL`, so a committed write survives a crash or
//!   power loss ([`Store::open`]);
//! - [`PostgresStorage`], for a cluster: a PostgreSQL database shared by every node
//!   ([`Store::connect_postgres`]).
//!
//! [`Store::open_spec`] picks one from a configuration string.
//!
//! Every method is blocking (database I/O, and Argon2 takes tens of milliseconds): call them
//! from a blocking thread pool (such as `blocking::unblock`), not directly from an async task.
//! The PostgreSQL back end in particular drives its connections with a private Tokio runtime
//! and must not be called from a thread that is running a Tokio runtime. Argon2 runs outside
//! any database lock or connection, so slow password checks do not serialise the other
//! operations.
//!
//! User names are compared exactly (case-sensitive): `Alice` and `alice` are two users.

mod password;
mod postgres;
mod sqlite;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use zserver::channels::{HistoryStore, StoredHistory, StoredPublication};

pub use self::password::PasswordParams;
use self::password::{check_password, hash_password, verify_hash};
pub use self::postgres::PostgresStorage;
pub use self::sqlite::SqliteStorage;

/// Longest user name, in characters (all allowed characters are ASCII, so also bytes).
const MAX_NAME: usize = 32;

/// The login server's durable store of accounts and offline messages (thread-safe).
pub struct Store {
    storage: Box<dyn Storage>,
    /// The parameters of new hashes, and their hasher.
    params: PasswordParams,
    hasher: Argon2<'static>,
    /// A hash of a fixed password made with `params`, checked against for unknown users so
    /// that such a check costs the same as a real one (`None` if hashing failed).
    dummy: Option<String>,
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

/// An account deleted, or its password changed, as the store records it for the servers
/// using it ([`Store::account_changes`]): each ends the sessions it makes stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountChange {
    /// Its place in the store's order of changes (increasing, never reused).
    pub seq: u64,
    /// The account.
    pub user: String,
    /// What changed.
    pub kind: ChangeKind,
}

/// What an [`AccountChange`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// The account was deleted: every session of it ends, but the one tagged `kept`, if any
    /// (the session that deleted it, which its server ends itself after its answer).
    Deleted {
        /// The session its server ends itself, as its server tagged it.
        kept: Option<String>,
    },
    /// The password was changed: the sessions logged in before end, but the one tagged
    /// `kept`, if any (the session that changed it, named by its server).
    PasswordChanged {
        /// The session that stays, as its server tagged it.
        kept: Option<String>,
    },
}

/// How long account changes are kept for the servers watching them (the newest is always
/// kept: it numbers the next).
pub const ACCOUNT_CHANGE_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

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

/// The primitive operations of a store back end: rows in, rows out, no password rules and no
/// hashing (those live in [`Store`], once for every back end).
///
/// Names and hashes are stored as given and compared exactly. Every method is blocking; each
/// one is atomic on its own (one transaction), also against other processes or nodes using the
/// same database at the same time.
pub trait Storage: Send + Sync {
    /// The back end's short name, as [`Store::backend_name`] reports it.
    fn backend_name(&self) -> &'static str;

    /// Adds a user with this password hash and creation time; `false` (and no change) if the
    /// name is already taken.
    fn insert_user(&self, name: &str, hash: &str, created_unix_ms: i64)
        -> Result<bool, StoreError>;

    /// The stored password hash of `name`, `None` if there is no such user.
    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Sets `name`'s hash to `new_hash` only if it is still `old_hash`; `false` (and no change)
    /// if the user is gone or the hash was changed meanwhile.
    fn replace_hash(&self, name: &str, old_hash: &str, new_hash: &str) -> Result<bool, StoreError>;

    /// Removes the user and every message queued for them, in one transaction; `false` if
    /// there was no such user. The built-in back ends record the deletion as an
    /// [`AccountChange`] in the same transaction.
    fn delete_user(&self, name: &str) -> Result<bool, StoreError>;

    /// Like [`Self::delete_user`], naming in the [`AccountChange`] the session `kept` (if
    /// any) that its server ends itself. This default records nothing more than
    /// [`Self::delete_user`] does.
    fn remove_user(&self, name: &str, kept: Option<&str>) -> Result<bool, StoreError> {
        let _ = kept;
        self.delete_user(name)
    }

    /// The stored hash of `name` and its generation (see [`Store::check_login`]), read
    /// together; `None` if there is no such user. This default gives generation 0.
    fn user_record(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self.user_hash(name)?.map(|hash| (hash, 0)))
    }

    /// Like [`Self::replace_hash`], and records the change as an [`AccountChange`] in the
    /// same transaction, naming the session `kept` (if any) that stays; the user's new
    /// generation (the change's number), or `None` (and no change) if the user is gone or the
    /// hash was changed meanwhile. This default records nothing (generation 0): the servers
    /// then end no sessions.
    fn change_hash(
        &self,
        name: &str,
        old_hash: &str,
        new_hash: &str,
        kept: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let _ = kept;
        Ok(self.replace_hash(name, old_hash, new_hash)?.then_some(0))
    }

    /// The account changes numbered above `after`, oldest first, at most `limit` of them.
    /// This default has none.
    fn account_changes(&self, after: u64, limit: usize) -> Result<Vec<AccountChange>, StoreError> {
        let _ = (after, limit);
        Ok(Vec::new())
    }

    /// The number of the newest account change (0 if none): where a server starts watching.
    fn last_account_change(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// All user names, sorted by their bytes (so `Zed` comes before `alpha`).
    fn users(&self) -> Result<Vec<String>, StoreError>;

    /// Whether a user with this name exists.
    fn exists(&self, name: &str) -> Result<bool, StoreError>;

    /// Queues a message for `to`, stamped `at_unix_ms`, durably; `false` (and nothing stored)
    /// if there is no user `to`.
    fn queue_message(
        &self,
        to: &str,
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Queues one message from `from` for each of `to` (a name given twice gets two), stamped
    /// `at_unix_ms`, durably; returns the recipients it was stored for (those who exist), in
    /// the order given. The back ends store them all in one transaction; this default stores
    /// them one by one.
    fn queue_for_many(
        &self,
        to: &[String],
        from: &str,
        text: &str,
        at_unix_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut stored = Vec::new();
        for user in to {
            if self.queue_message(user, from, text, at_unix_ms)? {
                stored.push(user.clone());
            }
        }
        Ok(stored)
    }

    /// Removes and returns every message queued for `user`, oldest first, atomically: of two
    /// concurrent takers each message goes to exactly one. An unknown user has no messages.
    fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError>;

    /// The channel history of `channel`: its epoch, last offset and at most `keep` of its
    /// newest publications, oldest first; `None` if it has none.
    fn load_channel(&self, channel: &str, keep: usize)
        -> Result<Option<StoredHistory>, StoreError>;

    /// Records a new history for `channel` with `epoch` and no publications, unless it has
    /// one.
    fn create_channel(&self, channel: &str, epoch: u64) -> Result<(), StoreError>;

    /// Appends a publication to `channel`'s history at the offset one above the stored last
    /// one (its own `offset` is not used) and drops all but the newest `keep`, in one
    /// transaction that orders it against every other writer; the offset it got, or `None`
    /// (nothing stored) if the channel has no history.
    fn append_publication(
        &self,
        channel: &str,
        publication: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, StoreError>;

    /// Claims the hand-over `id` (a batch of pushes one node asked another to deliver) for
    /// `claimer`, durably, stamped `at_unix_ms`: of every claimer of one id exactly one wins,
    /// however often each asks (a retry of the winner's claim wins again). Whether `claimer`
    /// holds it.
    fn claim_handover(&self, id: &str, claimer: &str, at_unix_ms: i64) -> Result<bool, StoreError>;

    /// Forgets the hand-over claims made before `before_unix_ms`.
    fn forget_handovers(&self, before_unix_ms: i64) -> Result<(), StoreError>;

    /// How many messages are stored and not yet taken, for every user (for monitoring).
    /// Back ends that cannot count say so with an error; the built-in ones count.
    fn count_messages(&self) -> Result<u64, StoreError> {
        Err(StoreError::Db(format!(
            "the {} store does not count its messages",
            self.backend_name()
        )))
    }
}

/// The store keeps the history of the login server's durable channel namespaces.
impl HistoryStore for Store {
    fn load(&self, channel: &str, keep: usize) -> Result<Option<StoredHistory>, zserver::Error> {
        self.storage
            .load_channel(channel, keep)
            .map_err(history_err)
    }

    fn create(&self, channel: &str, epoch: u64) -> Result<(), zserver::Error> {
        self.storage
            .create_channel(channel, epoch)
            .map_err(history_err)
    }

    fn append(
        &self,
        channel: &str,
        publication: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, zserver::Error> {
        self.storage
            .append_publication(channel, publication, keep)
            .map_err(history_err)
    }
}

fn history_err(e: StoreError) -> zserver::Error {
    zserver::Error::msg(format!("channel history: {e}"))
}

/// The stored "hash" of an account made by a token login ([`Store::ensure_account`]): no
/// password hash, so no password matches it.
const NO_PASSWORD: &str = "!token-only";

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

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long hand-over claims are kept: far longer than any NATS request can be held up and
/// still be answered (a request older than this that reaches a node finds no claim, and is
/// delivered).
pub const HANDOVER_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The error for a database that carries a schema version (`found`) newer than this code's
/// (`ours`).
fn newer_schema(found: i64, ours: i64) -> StoreError {
    StoreError::Db(format!(
        "database schema version {found} is newer than this server's {ours}"
    ))
}

/// What an unrecognised store spec is called in an error: its scheme if it has one, so that
/// a mistyped URL's credentials are not repeated in logs.
fn describe_spec(spec: &str) -> String {
    match spec.split_once("://") {
        Some((scheme, _)) => format!("a `{scheme}://` URL"),
        None if spec.contains('@') => "a spec with `@` in it".to_owned(),
        None => format!("`{spec}`"),
    }
}

/// An account change's kind, from its stored columns.
fn change_kind(deleted: bool, kept: Option<String>) -> ChangeKind {
    match deleted {
        true => ChangeKind::Deleted { kept },
        false => ChangeKind::PasswordChanged { kept },
    }
}

/// The password the dummy hash is made of.
const DUMMY_PASSWORD: &str = "zserver-login: no such user";

impl Store {
    /// Opens (creating if needed) the embedded SQLite database `dir/zserver.db`; creates `dir`
    /// too.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::with_storage(Box::new(SqliteStorage::open(dir)?)))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host:port/db`,
    /// without TLS), creating the tables if they are missing. Fails with [`StoreError::Db`]
    /// within about five seconds (unless the URL sets `connect_timeout`) if the server does not
    /// answer. See [`PostgresStorage`].
    pub fn connect_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store::with_storage(Box::new(PostgresStorage::connect(
            url,
        )?)))
    }

    /// Opens the store a configuration string names: `embedded` (or an empty string) for the
    /// SQLite database in `data_dir` ([`Store::open`]), or a `postgres://` or `postgresql://`
    /// URL ([`Store::connect_postgres`]). Anything else is a [`StoreError::Db`].
    pub fn open_spec(spec: &str, data_dir: &Path) -> Result<Store, StoreError> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "embedded" {
            Store::open(data_dir)
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Store::connect_postgres(spec)
        } else {
            Err(StoreError::Db(format!(
                "unknown store {}: expected `embedded` (or nothing) for SQLite in the data \
                 directory, or a `postgres://` or `postgresql://` URL",
                describe_spec(spec)
            )))
        }
    }

    /// A store over any [`Storage`] back end.
    /// New hashes use the default [`PasswordParams`] (see [`Self::with_password_params`]).
    pub fn with_storage(storage: Box<dyn Storage>) -> Store {
        let params = PasswordParams::default();
        let hasher = Argon2::default();
        // The dummy hash is made now so the first unknown-user check is not slower than others.
        let dummy = hash_password(&hasher, DUMMY_PASSWORD).ok();
        Store {
            storage,
            params,
            hasher,
            dummy,
        }
    }

    /// This store with new hashes made with `params` (stored hashes keep theirs: they still
    /// verify); [`StoreError::Db`] if Argon2 rejects them. Computes one hash (the dummy).
    pub fn with_password_params(self, params: PasswordParams) -> Result<Store, StoreError> {
        if params == self.params {
            return Ok(self);
        }
        let hasher = params.hasher()?;
        let dummy = hash_password(&hasher, DUMMY_PASSWORD).ok();
        Ok(Store {
            params,
            hasher,
            dummy,
            ..self
        })
    }

    /// The parameters new hashes are made with.
    pub fn password_params(&self) -> PasswordParams {
        self.params
    }

    /// The back end's short name: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        self.storage.backend_name()
    }

    /// What [`Self::add_user`] checks before it hashes: the name (BadName), the password
    /// (BadPassword), and that the name is free (Duplicate). Cheap: no hash.
    pub fn check_new_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        check_name(name)?;
        check_password(password)?;
        if self.storage.exists(name)? {
            return Err(StoreError::Duplicate(name.to_owned()));
        }
        Ok(())
    }

    /// Registers a new user (BadName, BadPassword, or Duplicate if the name is taken).
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_new_user(name, password)?;
        let hash = hash_password(&self.hasher, password)?;
        // The name may have been taken while hashing: the insert happens only if it is free.
        if self.storage.insert_user(name, &hash, now_unix_ms())? {
            Ok(())
        } else {
            Err(StoreError::Duplicate(name.to_owned()))
        }
    }

    /// Makes sure `name` has an account, for a user who logs in with tokens only: one
    /// without a password (no password login matches it) if there is none, so that
    /// messages sent while they are offline are stored. BadName for a name breaking the rule.
    /// Returns the account's generation (see [`Self::check_login`]), which the session
    /// remembers: a deletion or password change after it ends the session.
    pub fn ensure_account(&self, name: &str) -> Result<u64, StoreError> {
        check_name(name)?;
        if !self.storage.exists(name)? {
            // Taken meanwhile (a registration, another node): the account is there anyway.
            self.storage.insert_user(name, NO_PASSWORD, now_unix_ms())?;
        }
        Ok(self
            .record_if_valid(name)?
            .map_or(0, |(_, generation)| generation))
    }

    /// Ok if the password matches; WrongPassword for a wrong password or an unknown user.
    pub fn verify(&self, name: &str, password: &str) -> Result<(), StoreError> {
        self.check_login(name, password).map(drop)
    }

    /// Like [`Self::verify`], for a login: the account's generation, read with the hash
    /// checked. A session remembers it; an [`AccountChange`] numbered above it (the password
    /// changed since, or the account deleted) ends the session. A new account's generation
    /// is the newest change's number when it was made, a changed password's the change's.
    pub fn check_login(&self, name: &str, password: &str) -> Result<u64, StoreError> {
        let stored = self.record_if_valid(name)?;
        self.verify_against(stored.as_ref().map(|(hash, _)| hash.as_str()), password)?;
        Ok(stored.map_or(0, |(_, generation)| generation))
    }

    /// Checks `password` against `stored` (the dummy hash if `None`, or for an account
    /// without a password).
    fn verify_against(&self, stored: Option<&str>, password: &str) -> Result<(), StoreError> {
        let stored = stored.filter(|hash| *hash != NO_PASSWORD);
        verify_hash(&self.hasher, stored, self.dummy.as_deref(), password)
    }

    /// The stored hash and generation of `name`; `None` for an unknown user or a malformed
    /// name.
    fn record_if_valid(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        match check_name(name) {
            Ok(()) => self.storage.user_record(name),
            Err(_) => Ok(None),
        }
    }

    /// Checks `old` first (WrongPassword), then stores the hash of `new` (BadPassword if `new`
    /// breaks the length rule). Every session of the user then ends (see
    /// [`Self::change_password_keeping`]).
    pub fn change_password(&self, name: &str, old: &str, new: &str) -> Result<(), StoreError> {
        self.change_password_keeping(name, old, new, None).map(drop)
    }

    /// Like [`Self::change_password`], with the session tagged `kept` (its server's tag for
    /// the session that asked) left alone when the servers end the user's sessions logged in
    /// before; the user's new generation.
    pub fn change_password_keeping(
        &self,
        name: &str,
        old: &str,
        new: &str,
        kept: Option<&str>,
    ) -> Result<u64, StoreError> {
        let stored = self.record_if_valid(name)?;
        self.verify_against(stored.as_ref().map(|(hash, _)| hash.as_str()), old)?;
        let Some((old_hash, _)) = stored else {
            return Err(StoreError::WrongPassword);
        };
        check_password(new)?;
        let new_hash = hash_password(&self.hasher, new)?;
        // Only if the hash is still the one `old` was checked against (no concurrent change).
        self.storage
            .change_hash(name, &old_hash, &new_hash, kept)?
            .ok_or(StoreError::WrongPassword)
    }

    /// Sets `name`'s password to `new` without the old one (an administrator's reset:
    /// `zserver user passwd`): NoSuchUser if there is no such user, BadPassword if `new`
    /// breaks the length rule. Every session of the user then ends.
    pub fn set_password(&self, name: &str, new: &str) -> Result<(), StoreError> {
        check_password(new)?;
        let missing = || StoreError::NoSuchUser(name.to_owned());
        let (old_hash, _) = self.record_if_valid(name)?.ok_or_else(missing)?;
        let new_hash = hash_password(&self.hasher, new)?;
        match self.storage.change_hash(name, &old_hash, &new_hash, None)? {
            Some(_) => Ok(()),
            None if self.storage.exists(name)? => Err(StoreError::Db(format!(
                "the password of `{name}` was changed meanwhile: try again"
            ))),
            None => Err(missing()),
        }
    }

    /// Removes the user and their queued messages (NoSuchUser if absent). Every session of
    /// the user then ends.
    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        self.delete_user_keeping(name, None)
    }

    /// Like [`Self::delete_user`], with the session tagged `kept` (its server's tag for the
    /// session that asked, which that server ends itself) left alone by the servers.
    pub fn delete_user_keeping(&self, name: &str, kept: Option<&str>) -> Result<(), StoreError> {
        if self.storage.remove_user(name, kept)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(name.to_owned()))
        }
    }

    /// All user names, sorted.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        self.storage.users()
    }

    /// Whether a user with this name exists.
    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.storage.exists(name)
    }

    /// Stores a message for `to` durably (NoSuchUser if `to` does not exist); delivered later in order.
    pub fn queue_message(&self, to: &str, from: &str, text: &str) -> Result<(), StoreError> {
        if self.storage.queue_message(to, from, text, now_unix_ms())? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(to.to_owned()))
        }
    }

    /// Stores a message for each of `to` durably, all at once (one transaction in the built-in
    /// back ends). If some of them do not exist, it is stored for the others and the first
    /// unknown one is reported as NoSuchUser.
    pub fn queue_for_many(&self, to: &[String], from: &str, text: &str) -> Result<(), StoreError> {
        if to.is_empty() {
            return Ok(());
        }
        let stored = self.storage.queue_for_many(to, from, text, now_unix_ms())?;
        if stored.len() == to.len() {
            return Ok(());
        }
        let known: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
        match to.iter().find(|u| !known.contains(u.as_str())) {
            Some(unknown) => Err(StoreError::NoSuchUser(unknown.clone())),
            None => Ok(()),
        }
    }

    /// Like [`Self::queue_for_many`], without an error for recipients that do not exist: the
    /// ones it was stored for, in the order given.
    pub fn queue_for_existing(
        &self,
        to: &[String],
        from: &str,
        text: &str,
    ) -> Result<Vec<String>, StoreError> {
        if to.is_empty() {
            return Ok(Vec::new());
        }
        self.storage.queue_for_many(to, from, text, now_unix_ms())
    }

    /// Claims the hand-over `id` for `claimer` (see [`Storage::claim_handover`]); every so
    /// often also forgets claims older than [`HANDOVER_MEMORY`].
    pub fn claim_handover(&self, id: &str, claimer: &str) -> Result<bool, StoreError> {
        static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = now_unix_ms();
        if CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024 == 0 {
            self.storage
                .forget_handovers(now - HANDOVER_MEMORY.as_millis() as i64)?;
        }
        self.storage.claim_handover(id, claimer, now)
    }

    /// Removes and returns every message queued for `user`, oldest first, in one transaction.
    /// An unknown user simply has no messages.
    pub fn take_messages(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        self.storage.take_messages(user)
    }

    /// How many messages wait in the store, for every user.
    pub fn count_messages(&self) -> Result<u64, StoreError> {
        self.storage.count_messages()
    }

    /// The account changes (deletions, password changes) numbered above `after`, oldest
    /// first, at most 1000: what a server watching the store acts on.
    pub fn account_changes(&self, after: u64) -> Result<Vec<AccountChange>, StoreError> {
        self.storage.account_changes(after, 1000)
    }

    /// The number of the newest account change (0 if none).
    pub fn last_account_change(&self) -> Result<u64, StoreError> {
        self.storage.last_account_change()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
        assert_send_sync::<SqliteStorage>();
        assert_send_sync::<PostgresStorage>();
    }

    #[test]
    fn spec_errors_do_not_repeat_credentials() {
        assert_eq!(describe_spec("mysql://u:pw@h/db"), "a `mysql://` URL");
        assert_eq!(describe_spec("u:pw@h"), "a spec with `@` in it");
        assert_eq!(describe_spec("sqlite"), "`sqlite`");
    }
}
