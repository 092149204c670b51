//! Stable sessions (ZServer4D's StableIO, done right): a connection whose TCP link may
//! drop and be re-established within an offline time-out without the application seeing
//! an error, a loss or a duplicate.
//!
//! The session sits below the zserver preamble and encryption: each side keeps every byte
//! it wrote until the peer acknowledges it (`Replay`), counts the bytes it has received,
//! and after a new link both sides resend exactly what the other lacks, in order. The
//! layer above (framing, AES-GCM records with their sequence numbers, calls) sees one
//! unbroken byte stream. The client re-dials with back-off; to resume it must prove it
//! holds a key bound to the session's Noise handshake. The wire format is in [`wire`] and
//! `docs/PROTOCOL.md` §8.
//!
//! Turn it on with [`Config::stable`](crate::Config::stable) on both sides:
//!
//! ```
//! let mut config = zserver_core::Config::default();
//! config.stable = Some(zserver_core::StableSession::default());
//! ```

mod replay;
mod session;
pub(crate) use crate::internal::wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;
use crate::runtime::Runtime;
use crate::transport::{BoxRead, BoxWrite, Transport};
#[cfg(feature = "fuzzing")]
pub(crate) use replay::Replay;
pub(crate) use session::Session;
use session::{Link, Source};
use wire::{Answer, Open, Refusal, SessionId, ANSWER_LEN, CHALLENGE_LEN, OPEN_LEN};

/// Settings of stable sessions. Both ends must turn them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StableSession {
    /// How long a session waits for a new link after the old one dropped before it fails
    /// (and with it every call in flight). Keep it below `Config::idle_timeout`.
    pub offline_timeout: Duration,
    /// A link that carried nothing for this long gets an acknowledgement as a keepalive; a
    /// link silent for three times this long is taken for dead and replaced.
    pub keepalive: Duration,
    /// Bytes sent and not yet acknowledged, per direction, before writers wait: the most
    /// a session holds for resending.
    pub max_unacked: usize,
}

impl Default for StableSession {
    fn default() -> Self {
        Self {
            offline_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(5),
            max_unacked: 4 * 1024 * 1024,
        }
    }
}

/// A server's sessions, by id, while they live (connected or waiting for a new link).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<SessionId, Entry>>,
}

struct Entry {
    session: Arc<Session>,
    links: async_channel::Sender<Link>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions alive now.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

/// What opening a link on the server gave.
pub(crate) enum Accepted {
    /// A new session: the halves the connection runs on.
    New {
        read: BoxRead,
        write: BoxWrite,
        session: Arc<Session>,
    },
    /// The link was handed to an existing session.
    Resumed,
}

/// Server side of a new link: challenge, then a new session or a resumed one.
pub(crate) async fn accept(
    mut read: BoxRead,
    mut write: BoxWrite,
    sessions: &Arc<Sessions>,
    config: &StableSession,
    runtime: &Arc<dyn Runtime>,
) -> Result<Accepted, Error> {
    let nonce: [u8; wire::NONCE_LEN] = random();
    write.write_all(&wire::challenge(&nonce)).await?;
    write.flush().await?;
    let mut open = [0u8; OPEN_LEN];
    read.read_exact(&mut open).await?;
    match Open::decode(&open)? {
        Open::New => {
            let id: SessionId = random();
            let token = random();
            write
                .write_all(&Answer::Accepted { id, token }.encode())
                .await?;
            write.flush().await?;
            let (tx, rx) = async_channel::unbounded();
            let session = Session::new(id, token, *config, runtime.clone());
            sessions.map().insert(
                id,
                Entry {
                    session: session.clone(),
                    links: tx,
                },
            );
            let table = Arc::downgrade(sessions);
            let on_end = Box::new(move || {
                if let Some(table) = table.upgrade() {
                    table.map().remove(&id);
                }
            });
            let link = Link::new(read, write, 0);
            let (read, write) = session
                .clone()
                .start(link, Source::Server(rx), Some(on_end));
            Ok(Accepted::New {
                read,
                write,
                session,
            })
        }
        Open::Resume {
            id,
            received,
            proof,
        } => {
            let found = sessions
                .map()
                .get(&id)
                .map(|e| (e.session.resume_key(), e.links.clone()));
            let refusal = match &found {
                None | Some((None, _)) => Some(Refusal::Unknown),
                Some((Some(key), _)) => {
                    let expected = wire::proof(key, &nonce, &id, received);
                    (!wire::proofs_match(&proof, &expected)).then_some(Refusal::BadProof)
                }
            };
            if let Some(why) = refusal {
                write.write_all(&Answer::Refused(why).encode()).await?;
                write.flush().await?;
                return Err(Error::Handshake(format!(
                    "stable session resume refused: {why:?}"
                )));
            }
            let (_, links) = found.expect("checked above");
            // The session answers on this link once it has let go of the old one, so
            // that the count it sends is final.
            links
                .send(Link::new(read, write, received))
                .await
                .map_err(|_| Error::Closed)?;
            Ok(Accepted::Resumed)
        }
    }
}

/// Client side: opens the first link of a new session on `addr`.
pub(crate) async fn connect(
    transport: &Arc<dyn Transport>,
    addr: SocketAddr,
    config: &StableSession,
) -> Result<(SocketAddr, BoxRead, BoxWrite, Arc<Session>), Error> {
    let io = transport.connect(addr).await?;
    let peer = io.peer_addr();
    let (mut read, mut write) = io.into_halves();
    read_challenge(&mut read).await?;
    write.write_all(&Open::New.encode()).await?;
    write.flush().await?;
    let Answer::Accepted { id, token } = read_answer(&mut read).await? else {
        return Err(Error::Handshake(
            "the server did not accept a new stable session".into(),
        ));
    };
    let session = Session::new(id, token, *config, transport.runtime());
    let source = Source::Client {
        transport: transport.clone(),
        addr,
    };
    let (read, write) = session
        .clone()
        .start(Link::new(read, write, 0), source, None);
    Ok((peer, read, write, session))
}

/// Client side: opens a link to resume `session`, having received `received` units.
async fn reconnect(
    transport: &Arc<dyn Transport>,
    addr: SocketAddr,
    id: &SessionId,
    key: &[u8; wire::KEY_LEN],
    received: u64,
) -> Result<Link, ResumeError> {
    let io = transport.connect(addr).await.map_err(Error::from)?;
    let (mut read, mut write) = io.into_halves();
    let nonce = read_challenge(&mut read).await?;
    let proof = wire::proof(key, &nonce, id, received);
    let open = Open::Resume {
        id: *id,
        received,
        proof,
    };
    write.write_all(&open.encode()).await.map_err(Error::from)?;
    write.flush().await.map_err(Error::from)?;
    match read_answer(&mut read).await? {
        Answer::Resumed { received } => Ok(Link::new(read, write, received)),
        Answer::Refused(why) => Err(ResumeError::Refused(why)),
        Answer::Accepted { .. } => Err(ResumeError::Failed(Error::Handshake(
            "the server opened a new session instead of resuming".into(),
        ))),
    }
}

/// Why a resume attempt failed: refused for good, or worth another try.
enum ResumeError {
    Refused(Refusal),
    Failed(Error),
}

impl From<Error> for ResumeError {
    fn from(e: Error) -> Self {
        ResumeError::Failed(e)
    }
}

async fn read_challenge(read: &mut BoxRead) -> Result<[u8; wire::NONCE_LEN], Error> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    // The magic first: a server without stable sessions sends a shorter preamble and
    // then waits, so waiting for a whole challenge would hang until the time-out.
    read.read_exact(&mut challenge[..wire::MAGIC.len()]).await?;
    wire::check_magic(&challenge)?;
    read.read_exact(&mut challenge[wire::MAGIC.len()..]).await?;
    wire::parse_challenge(&challenge)
}

async fn read_answer(read: &mut BoxRead) -> Result<Answer, Error> {
    let mut answer = [0u8; ANSWER_LEN];
    read.read_exact(&mut answer).await?;
    Answer::decode(&answer)
}

/// Random bytes from the operating system.
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system supplies randomness");
    out
}
