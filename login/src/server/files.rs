//! The users' files under the data directory: names, paths, listing, quota, uploads. All
//! file-system work runs off the runtime's threads ([`State::on_disk`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zserver::{Context, Error, Incoming as Upload};

use super::{partials, State};
use crate::protocol::{FileInfo, PartialUpload};

impl State {
    /// Runs blocking file-system `work` on a blocking thread, not the runtime's.
    pub(super) async fn on_disk<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&State) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let state = self.clone();
        blocking::unblock(move || work(&state)).await
    }

    /// The user's file directory, created if needed.
    pub(super) fn user_dir(&self, user: &str) -> Result<PathBuf, Error> {
        let dir = self.files.join(user);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The path of `name` in `user`'s directory; refuses names that could leave it and
    /// existing symbolic links.
    pub(super) fn file_path(&self, user: &str, name: &str) -> Result<PathBuf, Error> {
        check_file_name(name)?;
        let path = self.user_dir(user)?.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::BadRequest(format!("`{name}` is a symbolic link")));
        }
        Ok(path)
    }

    pub(super) fn list(&self, user: &str) -> Result<Vec<FileInfo>, Error> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.user_dir(user)?)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if meta.is_file() && check_file_name(&name).is_ok() {
                files.push(FileInfo {
                    name,
                    size: meta.len(),
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// The bytes `user` holds: files and partial uploads (removing those kept too long).
    fn usage(&self, user: &str) -> Result<u64, Error> {
        let files: u64 = self.list(user)?.iter().map(|f| f.size).sum();
        let partial = partials::usage(&self.user_dir(user)?, self.config().keep_partial_uploads);
        Ok(files + partial)
    }

    /// The partial upload kept of `user`'s `name`, if any.
    pub(super) fn partial_upload(
        &self,
        user: &str,
        name: &str,
    ) -> Result<Option<PartialUpload>, Error> {
        check_file_name(name)?;
        let dir = self.user_dir(user)?;
        partials::usage(&dir, self.config().keep_partial_uploads);
        Ok(partials::status(&dir, name))
    }
}

/// A file name a user may use: 1 to 255 bytes, no path separators, NUL or leading dot
/// (which also rules out `.` and `..`).
pub fn check_file_name(name: &str) -> Result<(), Error> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || Path::new(name).is_absolute();
    if bad {
        return Err(Error::BadRequest(format!(
            "bad file name `{name}`: 1 to 255 bytes, no `/`, `\\` or NUL, not starting with `.`"
        )));
    }
    Ok(())
}

/// Where an upload goes: the file, its temporary file, the room the quota leaves for it,
/// and how many of its bytes a resumed partial already holds.
struct Target {
    path: PathBuf,
    dir: PathBuf,
    temp: PathBuf,
    room: u64,
    resumed: u64,
}

/// How an upload ended.
enum Ended {
    Stored(u64),
    /// The stream broke off (the connection, or the client gave up): its bytes are kept as
    /// a partial upload to resume.
    BrokeOff(Error),
    /// Refused (quota), failed its check or could not be written: nothing is kept.
    Failed(Error),
}

/// Stores an upload as `name`: written to a hidden temporary file, synced, renamed into
/// place once complete and verified (the directory synced too) before the reply; refused
/// up front if the announced size would pass the quota. A stream head with `prefix`
/// resumes the partial upload of that hash; a stream that breaks off leaves its bytes as
/// the partial upload of `name` ([`partials`]).
pub(super) async fn put(
    state: &Arc<State>,
    ctx: &Context,
    mut body: Upload,
) -> Result<Vec<u8>, Error> {
    let user = state.user(ctx)?;
    let name = std::str::from_utf8(body.meta())
        .map_err(|_| Error::BadRequest("file name is not UTF-8".into()))?
        .to_owned();
    let prefix = body.prefix_hash();
    let (upload, connection) = (next_upload(), ctx.connection_id());
    let n = name.clone();
    let target = state
        .on_disk(move |state| {
            let path = state.file_path(&user, &n)?;
            let dir = state.user_dir(&user)?;
            // What this upload replaces: the file, and any partial of the same name.
            let replaced =
                std::fs::metadata(&path).map_or(0, |m| m.len()) + partials::size_of(&dir, &n);
            let room = state
                .config()
                .quota_bytes
                .saturating_sub(state.usage(&user)?.saturating_sub(replaced));
            let temp = dir.join(format!(".upload-{connection}-{upload}"));
            let resumed = match prefix {
                None => 0,
                Some(hash) => partials::take(&dir, &n, &hash, &temp)?.ok_or_else(|| {
                    Error::msg(format!(
                        "no partial upload of `{n}` to resume: upload it from the start"
                    ))
                })?,
            };
            Ok(Target {
                path,
                dir,
                temp,
                room,
                resumed,
            })
        })
        .await?;
    let ended = receive(state, &mut body, &target).await;
    let Target {
        path,
        dir,
        temp,
        resumed,
        ..
    } = target;
    state
        .on_disk(move |_| match ended {
            Ended::Stored(size) => {
                std::fs::rename(&temp, path)?;
                // The new name on the disk too, so that an acknowledged upload outlives a
                // power cut, not only a crash of this process.
                std::fs::File::open(&dir)?.sync_all()?;
                partials::discard(&dir, &name);
                Ok(size.to_le_bytes().to_vec())
            }
            Ended::BrokeOff(e) => {
                if let Err(keep) = keep_partial(&dir, &name, &temp, resumed, prefix) {
                    tracing::warn!(error = %keep, "could not keep a partial upload");
                    let _ = std::fs::remove_file(&temp);
                }
                Err(e)
            }
            Ended::Failed(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        })
        .await
}

/// Receives `body` into the target's temporary file (appending to a resumed partial).
async fn receive(state: &Arc<State>, body: &mut Upload, target: &Target) -> Ended {
    let (room, resumed) = (target.room, target.resumed);
    if body.total().is_some_and(|t| resumed + t > room) {
        let total = resumed + body.total().unwrap_or(0);
        let e = format!("quota exceeded: {room} bytes free, the file has {total}");
        return match resumed {
            0 => Ended::Failed(Error::msg(e)),
            // A resumed partial stays for later: only this attempt is refused.
            _ => Ended::BrokeOff(Error::msg(e)),
        };
    }
    let temp = target.temp.clone();
    let opened = blocking::unblock(move || {
        let mut options = std::fs::OpenOptions::new();
        match resumed {
            0 => options.write(true).create(true).truncate(true),
            _ => options.append(true),
        };
        options.open(temp)
    });
    let file = match opened.await {
        Ok(file) => Arc::new(file),
        Err(e) => return Ended::Failed(e.into()),
    };
    let mut written = 0u64;
    loop {
        let chunk = match body.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e @ Error::Integrity(_)) => return Ended::Failed(e),
            Err(e) => return Ended::BrokeOff(e),
        };
        written += chunk.len() as u64;
        state.metrics.uploaded(chunk.len() as u64);
        if resumed + written > room {
            return Ended::Failed(Error::msg(format!("quota exceeded: {room} bytes free")));
        }
        let f = file.clone();
        let wrote = blocking::unblock(move || std::io::Write::write_all(&mut &*f, &chunk));
        if let Err(e) = wrote.await {
            return Ended::Failed(e.into());
        }
    }
    match blocking::unblock(move || file.sync_all()).await {
        Ok(()) => Ended::Stored(resumed + written),
        Err(e) => Ended::Failed(e.into()),
    }
}

/// Keeps what an upload that broke off wrote as the partial upload of `name`. Hashing it
/// costs a read of the whole partial, so a resumed attempt that added less than an eighth
/// of what it resumed is cut back to the resumed part, whose hash is known: each attempt's
/// hashing stays within nine times the bytes it received.
fn keep_partial(
    dir: &Path,
    name: &str,
    temp: &Path,
    resumed: u64,
    prefix: Option<[u8; 32]>,
) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new().write(true).open(temp)?;
    let len = file.metadata()?.len();
    let hash = match prefix {
        Some(hash) if resumed > 0 && len - resumed < resumed / 8 => {
            file.set_len(resumed)?;
            hash
        }
        _ if len == 0 => return Err(Error::msg("nothing to keep")),
        _ => partials::hash_file(temp)?,
    };
    file.sync_all()?;
    partials::keep(dir, name, temp, &hash)
}

fn next_upload() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
