//! The users' files under the data directory: names, paths, listing, quota, uploads. All
//! file-system work runs off the runtime's threads ([`State::on_disk`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zserver::{Context, Error, Incoming as Upload};

use super::State;
use crate::protocol::FileInfo;

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

    fn usage(&self, user: &str) -> Result<u64, Error> {
        Ok(self.list(user)?.iter().map(|f| f.size).sum())
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

/// Stores an upload as `name`: written to a hidden temporary file, renamed into place once
/// complete and verified, refused up front if the announced size would pass the quota.
pub(super) async fn put(
    state: &Arc<State>,
    ctx: &Context,
    mut body: Upload,
) -> Result<Vec<u8>, Error> {
    let user = state.user(ctx)?;
    let name = std::str::from_utf8(body.meta())
        .map_err(|_| Error::BadRequest("file name is not UTF-8".into()))?
        .to_owned();
    let (upload, connection) = (next_upload(), ctx.connection_id());
    let (path, temp, room) = state
        .on_disk(move |state| {
            let path = state.file_path(&user, &name)?;
            let existing = std::fs::metadata(&path).map_or(0, |m| m.len());
            let room = state
                .config
                .quota_bytes
                .saturating_sub(state.usage(&user)? - existing);
            let temp = state
                .user_dir(&user)?
                .join(format!(".upload-{connection}-{upload}"));
            Ok((path, temp, room))
        })
        .await?;
    if body.total().is_some_and(|t| t > room) {
        return Err(Error::msg(format!(
            "quota exceeded: {} bytes free, the file has {}",
            room,
            body.total().unwrap_or(0)
        )));
    }
    let result = async {
        let t = temp.clone();
        let file = Arc::new(blocking::unblock(move || std::fs::File::create(t)).await?);
        let mut written = 0u64;
        while let Some(chunk) = body.chunk().await? {
            written += chunk.len() as u64;
            state.metrics.uploaded(chunk.len() as u64);
            if written > room {
                return Err(Error::msg(format!("quota exceeded: {room} bytes free")));
            }
            let f = file.clone();
            blocking::unblock(move || std::io::Write::write_all(&mut &*f, &chunk)).await?;
        }
        let f = file.clone();
        let t = temp.clone();
        blocking::unblock(move || {
            f.sync_all()?;
            std::fs::rename(t, path)
        })
        .await?;
        Ok(written)
    }
    .await;
    if result.is_err() {
        blocking::unblock(move || {
            let _ = std::fs::remove_file(temp);
        })
        .await;
    }
    Ok(result?.to_le_bytes().to_vec())
}

fn next_upload() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
