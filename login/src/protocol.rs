//! The login server's commands and the values they carry (postcard on the wire), shared by
//! [`LoginServer`](crate::LoginServer) and [`LoginClient`](crate::LoginClient).
//!
//! | command | kind | in | out |
//! | --- | --- | --- | --- |
//! | `register` | typed | [`Credentials`] | `()` |
//! | `login` | typed | [`Credentials`] | [`Welcome`] (offline messages, oldest first) |
//! | `login_token` | typed | token `String` (a JWT, see [`tokens`](crate::tokens)) | [`Welcome`] |
//! | `refresh_token` | typed | token `String` (same `sub`) | `()` |
//! | `channel_token` | typed | subscribe token `String` (same `sub`, `channels`) | `()` |
//! | `logout` | typed | `()` | `()` |
//! | `passwd` | typed | [`NewPassword`] | `()` |
//! | `delete` | typed | password `String` | `()` (account, messages and files) |
//! | `who` | typed | [`WhoRequest`] | [`WhoPage`]: a page of the online user names, sorted |
//! | `push` | typed | [`Push`] | [`PushReport`] |
//! | `put` | upload | meta: file name | size stored (u64 LE) |
//! | `get` | download | meta: file name, offset | the file |
//! | `ls` | typed | `()` | [`FileInfo`]s |
//! | `stat` | typed | file name | [`FileInfo`] |
//! | `rm` | typed | file name | `()` |
//!
//! The server pushes two one-way events to a client: `message` ([`Event::Message`] as
//! [`Incoming`]) and `kicked` (a reason string; `token expired` when a token session's
//! `exp` passed).
//!
//! `register`, `login`, `passwd` and `delete` hash a password, in a bounded pool, after
//! counting the attempt against the server's limits. Their refusals are ordinary handler
//! errors (`Error` frame, code 1) with fixed messages, which
//! [`LoginError`](crate::LoginError) reads back into variants of their own:
//!
//! | message | meaning |
//! | --- | --- |
//! | `server busy, retry in N s` | the hashing pool is full (or this address has too many attempts in progress); nothing was checked, nothing counted; retry after N seconds |
//! | `too many failed logins; try again in N s` | the address or the account reached its failed-login limit (attempts in progress count) |
//! | `too many registrations from this address; try again in N s` | the address reached its registration limit |
//! | `wrong user name or password` | the check failed (also for an unknown user, at the same cost) |
//! | `invalid token: REASON` | `login_token` or `refresh_token` refused the token (counted as a failed login of the address) |

use serde::{Deserialize, Serialize};

/// A user name and password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// What a successful login returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Messages sent while the user was offline, oldest first.
    pub offline: Vec<Incoming>,
}

/// A message as its recipient sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Who sent it.
    pub from: String,
    /// The text.
    pub text: String,
}

/// A password change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPassword {
    /// The current password.
    pub old: String,
    /// The new one.
    pub new: String,
}

/// Whom a push goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Recipients {
    /// These users (stored for those offline).
    Users(Vec<String>),
    /// Everyone online now.
    Everyone,
}

/// A message to push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Push {
    /// Whom to.
    pub to: Recipients,
    /// The text.
    pub text: String,
}

/// What became of a push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// Users it was delivered to now. For a push to everyone, at most
    /// [`MAX_REPORTED`] names (see [`Self::delivered_count`]).
    pub delivered: Vec<String>,
    /// Users it was stored for, to be delivered at their next login. For a push to everyone,
    /// at most [`MAX_REPORTED`] names (see [`Self::stored_count`]).
    pub stored: Vec<String>,
    /// How many users it was delivered to now.
    pub delivered_count: u64,
    /// How many users it was stored for.
    pub stored_count: u64,
    /// Users whose node took the push but did not confirm in time (NATS held the answer
    /// up): it is delivered to them live or stored for their next login, exactly once, but
    /// this node cannot tell which. At most [`MAX_REPORTED`] names.
    #[serde(default)]
    pub unconfirmed: Vec<String>,
}

/// Most names a push-to-everyone's [`PushReport`] lists in each of its lists (the counts are
/// always whole): the report of a push to a million users must still fit in one reply.
pub const MAX_REPORTED: usize = 10_000;

/// A request for a page of `who`: the online users whose names sort after `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoRequest {
    /// Start after this name (`None`: from the first).
    pub after: Option<String>,
    /// Most names wanted; the server gives at most [`MAX_WHO_PAGE`].
    pub limit: u32,
}

/// Most names in one [`WhoPage`] (at most 32 bytes each, so a page stays far below the
/// largest frame).
pub const MAX_WHO_PAGE: u32 = 65_536;

/// A page of the users online, in byte order of their names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoPage {
    /// The names on this page.
    pub users: Vec<String>,
    /// How many users are online in all, on every node.
    pub online: u64,
    /// Whether names follow this page (ask again with `after` = its last name).
    pub more: bool,
}

/// One file of the user's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What the server keeps of an upload that broke off (`put_partial`'s answer): its first
/// `size` bytes, whose BLAKE3 hash is `hash`. An upload whose stream head states that
/// hash as its `prefix` goes on from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialUpload {
    /// The bytes kept.
    pub size: u64,
    /// Their BLAKE3 hash.
    pub hash: [u8; 32],
}

/// What the server pushes to a logged-in client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from another user.
    Message(Incoming),
    /// This session was ended by the server (e.g. the user logged in elsewhere).
    Kicked(String),
}
