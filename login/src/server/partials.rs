//! Partial uploads: what the server keeps of an upload that broke off, so that the client
//! can go on from there ([`crate::LoginClient::put`] with `resume`).
//!
//! A partial is one file in the user's hidden `.partial` directory, named
//! `KEY-SIZE-HASH`: `KEY` stands for the file name (its BLAKE3 hash, so that any name fits),
//! `SIZE` and `HASH` are the partial's length and the BLAKE3 hash of its bytes. Since the
//! name says it all, taking a partial to resume it is one atomic rename, and two uploads
//! cannot both take it. At most [`MAX_PARTIALS`] are kept per user (the oldest goes
//! first). A partial counts against the user's quota, and is removed once
//! older than [`LoginConfig::keep_partial_uploads`](super::LoginConfig) (looked at whenever
//! the user's usage is counted), or when an upload of the same name completes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use zserver::Error;

use crate::protocol::PartialUpload;

/// Most partial uploads kept per user: keeping one more removes the oldest.
pub(super) const MAX_PARTIALS: usize = 16;

/// A hidden upload file nobody wrote for this long was left by a crash: it is removed.
const STALE_UPLOAD: Duration = Duration::from_secs(3600);

/// The key standing for `name` in partial file names.
fn key(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex()[..32].to_owned()
}

/// The directory of `user_dir`'s partial uploads (not created).
fn dir(user_dir: &Path) -> PathBuf {
    user_dir.join(".partial")
}

/// A partial found on disk.
struct Found {
    path: PathBuf,
    upload: PartialUpload,
}

/// Reads a partial's name: `KEY-SIZE-HASH`.
fn parse(file_name: &str) -> Option<(&str, PartialUpload)> {
    let mut parts = file_name.splitn(3, '-');
    let (key, size, hash) = (parts.next()?, parts.next()?, parts.next()?);
    let hash = blake3::Hash::from_hex(hash).ok()?;
    let upload = PartialUpload {
        size: size.parse().ok()?,
        hash: *hash.as_bytes(),
    };
    Some((key, upload))
}

/// The partials of `name` (normally at most one; more only after a race or a crash).
fn find(user_dir: &Path, name: &str) -> Vec<Found> {
    let key = key(name);
    let Ok(entries) = fs::read_dir(dir(user_dir)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((k, upload)) = file_name.to_str().and_then(parse) else {
            continue;
        };
        if k == key {
            found.push(Found {
                path: entry.path(),
                upload,
            });
        }
    }
    found
}

/// The partial upload of `name`, if one is kept and whole (a file whose length is not its
/// stated size is removed).
pub(super) fn status(user_dir: &Path, name: &str) -> Option<PartialUpload> {
    let mut best: Option<PartialUpload> = None;
    for found in find(user_dir, name) {
        let len = fs::metadata(&found.path).map_or(u64::MAX, |m| m.len());
        if len != found.upload.size {
            let _ = fs::remove_file(&found.path);
        } else if best.as_ref().is_none_or(|b| b.size < len) {
            best = Some(found.upload);
        }
    }
    best
}

/// The bytes the partials of `name` hold.
pub(super) fn size_of(user_dir: &Path, name: &str) -> u64 {
    find(user_dir, name).iter().map(|f| f.upload.size).sum()
}

/// Moves the partial of `name` whose hash is `hash` to `to` (a fresh upload's temporary
/// file), returning its length; `None` if there is no such partial (or another upload took
/// it first).
pub(super) fn take(
    user_dir: &Path,
    name: &str,
    hash: &[u8; 32],
    to: &Path,
) -> Result<Option<u64>, Error> {
    for found in find(user_dir, name) {
        if &found.upload.hash != hash {
            continue;
        }
        match fs::rename(&found.path, to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
        if fs::metadata(to)?.len() == found.upload.size {
            return Ok(Some(found.upload.size));
        }
        fs::remove_file(to)?;
    }
    Ok(None)
}

/// Keeps `temp` (an upload's temporary file, synced) as the partial of `name`, whose bytes
/// hash to `hash`, in place of any other partial of that name.
pub(super) fn keep(user_dir: &Path, name: &str, temp: &Path, hash: &[u8; 32]) -> Result<(), Error> {
    let size = fs::metadata(temp)?.len();
    let dir = dir(user_dir);
    fs::create_dir_all(&dir)?;
    discard(user_dir, name);
    let hex = blake3::Hash::from_bytes(*hash).to_hex();
    fs::rename(temp, dir.join(format!("{}-{size}-{hex}", key(name))))?;
    let mut kept: Vec<(SystemTime, PathBuf)> = fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if kept.len() > MAX_PARTIALS {
        kept.sort();
        for (_, path) in &kept[..kept.len() - MAX_PARTIALS] {
            let _ = fs::remove_file(path);
        }
    }
    Ok(())
}

/// Removes every partial of `name`.
pub(super) fn discard(user_dir: &Path, name: &str) {
    for found in find(user_dir, name) {
        let _ = fs::remove_file(found.path);
    }
}

/// The BLAKE3 hash of the whole file at `path`.
pub(super) fn hash_file(path: &Path) -> Result<[u8; 32], Error> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(fs::File::open(path)?)?;
    Ok(*hasher.finalize().as_bytes())
}

/// The bytes `user_dir`'s partials hold, after removing those older than `keep_for`, and
/// hidden upload files nobody has written to for an hour (left by a crash).
pub(super) fn usage(user_dir: &Path, keep_for: Duration) -> u64 {
    let old = |path: &Path, age: Duration| {
        let modified = fs::metadata(path).and_then(|m| m.modified());
        modified.is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age)
    };
    if let Ok(entries) = fs::read_dir(user_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = name.to_str().is_some_and(|n| n.starts_with(".upload-"));
            if stale && old(&entry.path(), STALE_UPLOAD) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let Ok(entries) = fs::read_dir(dir(user_dir)) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let upload = entry.file_name().to_str().and_then(parse).map(|(_, u)| u);
        match upload {
            Some(_) if old(&path, keep_for) => {
                let _ = fs::remove_file(&path);
            }
            Some(upload) => total += upload.size,
            None => {}
        }
    }
    total
}
