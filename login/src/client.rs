//! A client of the login server: typed methods for every command, and the server's pushed
//! events on a channel.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use zserver::{Client, ClientBuilder, Config, Error, Outgoing, Router, Transport};

use crate::error::LoginError;
use crate::protocol::{
    Credentials, Event, FileInfo, Incoming, NewPassword, PartialUpload, Push, PushReport,
    Recipients, Welcome, WhoPage, WhoRequest, MAX_WHO_PAGE,
};
use zserver::Calls;

/// What [`LoginClient::get`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written by this call.
    pub written: u64,
    /// Where it went on from: the local file's length when resumed, else 0.
    pub resumed_from: u64,
    /// A local partial file was not the server's (or longer than its file), so the
    /// download started over from byte 0.
    pub restarted: bool,
}

/// What [`LoginClient::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes sent by this call.
    pub written: u64,
    /// Where it went on from: the size of the server's partial upload when resumed, else 0.
    pub resumed_from: u64,
    /// The server's partial upload was not this file's start (or the server would not go on
    /// from it), so the upload started over from byte 0.
    pub restarted: bool,
}

/// One connection to a login server.
pub struct LoginClient {
    client: Client,
    events: async_channel::Receiver<Event>,
}

impl LoginClient {
    /// Connects on `transport`; with `pin`, refuses a server whose key fingerprint differs.
    pub async fn connect(
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        pin: Option<&str>,
    ) -> Result<Self, Error> {
        Self::connect_with(transport, addr, pin, Config::default()).await
    }

    /// Like [`connect`](Self::connect), with connection settings (such as
    /// [`Config::compression`]; the server must offer a codec for it to be used).
    pub async fn connect_with(
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        pin: Option<&str>,
        config: Config,
    ) -> Result<Self, Error> {
        let (tx, events) = async_channel::unbounded();
        let kicked = tx.clone();
        let router = Router::new()
            .call("message", move |_ctx, m: Incoming| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Event::Message(m)).await;
                    Ok::<_, Error>(())
                }
            })
            .call("kicked", move |_ctx, why: String| {
                let tx = kicked.clone();
                async move {
                    let _ = tx.send(Event::Kicked(why)).await;
                    Ok::<_, Error>(())
                }
            });
        let mut builder = ClientBuilder::new(transport).router(router).config(config);
        if let Some(pin) = pin {
            builder = builder.pin_server_fingerprint(pin)?;
        }
        let client = builder.connect(addr).await?;
        Ok(Self { client, events })
    }

    /// The next event the server pushed (a message, or being kicked); `None` once the
    /// connection has closed and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.recv().await.ok()
    }

    /// Closes gracefully: what is queued is sent first, such as the answer that confirms
    /// the stored messages [`login`](Self::login) returned (a client that just drops the
    /// connection may get them again at its next login).
    pub async fn close(&self) {
        self.client.connection().close().await;
    }

    /// Events already received, without waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The underlying zserver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates an account. A busy server or an address that registered too often is told
    /// apart ([`LoginError::Busy`], [`LoginError::RegistrationsLimited`]).
    pub async fn register(&self, user: &str, password: &str) -> Result<(), LoginError> {
        Ok(self.client.call("register", &creds(user, password)).await?)
    }

    /// Logs in; returns the messages stored while the user was offline, oldest first. A
    /// wrong password, too many failures and a busy server are told apart
    /// ([`LoginError::WrongPassword`], [`LoginError::Limited`], [`LoginError::Busy`]).
    pub async fn login(&self, user: &str, password: &str) -> Result<Vec<Incoming>, LoginError> {
        let welcome: Welcome = self.client.call("login", &creds(user, password)).await?;
        Ok(welcome.offline)
    }

    /// Logs in with a signed token (JWT) that the app's back end minted (see
    /// [`crate::tokens`]); returns the messages stored while the user was offline, as
    /// [`Self::login`] does. A refused token is [`LoginError::BadToken`] with the reason
    /// (`expired`, `bad signature` ...). Before the token's `exp`, send a newer one with
    /// [`Self::refresh_token`], or the server ends the session then (a
    /// [`Event::Kicked`] with `token expired`, and the connection closes).
    pub async fn login_token(&self, token: &str) -> Result<Vec<Incoming>, LoginError> {
        let welcome: Welcome = self.client.call("login_token", token).await?;
        Ok(welcome.offline)
    }

    /// Replaces the token of a session that logged in with [`Self::login_token`] by a newer
    /// one for the same user: its `exp`, `info` and `channels` take effect.
    pub async fn refresh_token(&self, token: &str) -> Result<(), LoginError> {
        Ok(self.client.call("refresh_token", token).await?)
    }

    /// Adds the private channels of a subscribe token (a token for this session's user,
    /// with a `channels` claim) to what this connection may subscribe and publish to, until
    /// the token's `exp`; after any login, password or token.
    pub async fn channel_token(&self, token: &str) -> Result<(), LoginError> {
        Ok(self.client.call("channel_token", token).await?)
    }

    /// Ends the session (the connection stays open).
    pub async fn logout(&self) -> Result<(), Error> {
        self.client.call("logout", &()).await
    }

    /// Changes the password (refusals as for [`Self::login`]).
    pub async fn change_password(&self, old: &str, new: &str) -> Result<(), LoginError> {
        let p = NewPassword {
            old: old.into(),
            new: new.into(),
        };
        Ok(self.client.call("passwd", &p).await?)
    }

    /// Deletes the account with its messages and files (refusals as for [`Self::login`]).
    pub async fn delete_account(&self, password: &str) -> Result<(), LoginError> {
        Ok(self.client.call("delete", password).await?)
    }

    /// Users online now, on every node, sorted (page after page; see [`Self::who_page`]).
    pub async fn who(&self) -> Result<Vec<String>, Error> {
        let mut users = Vec::new();
        let mut after = None;
        loop {
            let page = self.who_page(after, MAX_WHO_PAGE).await?;
            users.extend(page.users);
            if !page.more {
                return Ok(users);
            }
            after = users.last().cloned();
        }
    }

    /// One page of the users online: at most `limit` names (and at most
    /// [`MAX_WHO_PAGE`]) sorting after `after`.
    pub async fn who_page(&self, after: Option<String>, limit: u32) -> Result<WhoPage, Error> {
        self.client.call("who", &WhoRequest { after, limit }).await
    }

    /// Sends `text` to `users` (stored for those offline).
    pub async fn push(&self, users: &[&str], text: &str) -> Result<PushReport, Error> {
        let to = Recipients::Users(users.iter().map(|u| u.to_string()).collect());
        self.client.call("push", &push(to, text)).await
    }

    /// Sends `text` to everyone online.
    pub async fn push_all(&self, text: &str) -> Result<PushReport, Error> {
        self.client
            .call("push", &push(Recipients::Everyone, text))
            .await
    }

    /// Uploads the local file `path` as `name`; `progress(done, total)` follows this call's
    /// part. With `resume`, an upload of `name` that broke off goes on from what the server
    /// kept of it, if those bytes are this file's first ones (checked by hash, here and on
    /// the server); otherwise it starts over and says so.
    pub async fn put(
        &self,
        path: &Path,
        name: &str,
        resume: bool,
        progress: impl FnMut(u64, Option<u64>) + Send + 'static,
    ) -> Result<Uploaded, Error> {
        let partial = match resume {
            true => self.partial_upload(name).await?,
            false => None,
        };
        let from = match partial {
            Some(partial) => resumable(path, partial).await?,
            None => 0,
        };
        let restarted = partial.is_some() && from == 0;
        let mut progress = Some(progress);
        if from > 0 {
            let body = Outgoing::file(path, from).await?;
            let body = body.on_progress(progress.take().expect("progress is there"));
            match self.client.upload("put", name, body).await {
                Ok(reply) => return uploaded(&reply, from, false),
                // Another upload took the partial, or it expired: start over.
                Err(Error::Remote(message)) if message.starts_with("no partial upload") => {}
                Err(e) => return Err(e),
            }
        }
        let body = Outgoing::file(path, 0).await?;
        let body = match progress {
            Some(progress) => body.on_progress(progress),
            None => body,
        };
        let reply = self.client.upload("put", name, body).await?;
        uploaded(&reply, 0, restarted || from > 0)
    }

    /// What the server kept of an upload of `name` that broke off, if anything.
    pub async fn partial_upload(&self, name: &str) -> Result<Option<PartialUpload>, Error> {
        self.client.call("put_partial", name).await
    }

    /// Downloads `name` into the local file `path`. With `resume`, a local file is kept and
    /// the download goes on from its length if its bytes are the server's (checked by hash;
    /// otherwise it starts over and says so). `progress(done, total)` follows this call's
    /// part.
    pub async fn get(
        &self,
        name: &str,
        path: &Path,
        resume: bool,
        progress: impl FnMut(u64, Option<u64>) + Send + 'static,
    ) -> Result<Downloaded, Error> {
        let mut download = self
            .client
            .open_file_download("get", name, path, resume)
            .await?;
        download.incoming_mut().on_progress(progress);
        let (resumed_from, restarted) = (download.offset(), download.restarted());
        let written = download.save().await?;
        Ok(Downloaded {
            written,
            resumed_from,
            restarted,
        })
    }

    /// The user's files.
    pub async fn ls(&self) -> Result<Vec<FileInfo>, Error> {
        self.client.call("ls", &()).await
    }

    /// One file's size.
    pub async fn stat(&self, name: &str) -> Result<FileInfo, Error> {
        self.client.call("stat", name).await
    }

    /// Deletes a file.
    pub async fn rm(&self, name: &str) -> Result<(), Error> {
        self.client.call("rm", name).await
    }
}

/// How much of the local file at `path` the server's `partial` already holds: its size when
/// the file's first bytes hash to the partial's hash, else 0.
async fn resumable(path: &Path, partial: PartialUpload) -> Result<u64, Error> {
    let path = path.to_owned();
    blocking::unblock(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        if partial.size == 0 || file.metadata()?.len() < partial.size {
            return Ok(0);
        }
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut std::io::Read::take(file, partial.size), &mut hasher)?;
        Ok(match *hasher.finalize().as_bytes() == partial.hash {
            true => partial.size,
            false => 0,
        })
    })
    .await
}

/// Reads `put`'s reply (the stored file's size) into what the call did.
fn uploaded(reply: &[u8], from: u64, restarted: bool) -> Result<Uploaded, Error> {
    let n: [u8; 8] = reply
        .try_into()
        .map_err(|_| Error::Payload("bad put reply".into()))?;
    Ok(Uploaded {
        written: u64::from_le_bytes(n).saturating_sub(from),
        resumed_from: from,
        restarted,
    })
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.into(),
        password: password.into(),
    }
}

fn push(to: Recipients, text: &str) -> Push {
    Push {
        to,
        text: text.into(),
    }
}
