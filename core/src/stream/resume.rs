//! Downloads into a local file, resumed only from a part that is the sender's:
//! [`FileDownload`]. The sender states the hash of its bytes before the offset (the stream
//! head's `prefix`); the downloader hashes the part it keeps and starts over from byte 0
//! when the two differ, when the sender does not say, or when the local part is longer
//! than the sender's whole.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::incoming::Incoming;
use super::HASH_LEN;
use crate::connection::Connection;
use crate::error::Error;

/// The BLAKE3 hash of the first `len` bytes of `file`, read from where it stands (the
/// start, for a file just opened). Fewer bytes than `len` is an error.
pub(crate) fn hash_prefix(file: &std::fs::File, len: u64) -> std::io::Result<[u8; HASH_LEN]> {
    let mut hasher = blake3::Hasher::new();
    let read = std::io::copy(&mut file.take(len), &mut hasher)?;
    if read != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ended after {read} of {len} bytes"),
        ));
    }
    Ok(*hasher.finalize().as_bytes())
}

/// A download into a local file, opened and checked, ready to [`save`](Self::save).
///
/// Opened with resume, it goes on from the local file's length only when the sender's hash
/// of its first bytes is the local file's; otherwise (a corrupt or foreign partial file, a
/// sender that does not say, a local file longer than the sender's) it starts over, and
/// [`restarted`](Self::restarted) says so. The bytes sent now are checked against the
/// sender's hash as in every stream, so a saved file is the sender's, byte for byte.
///
/// ```no_run
/// # async fn demo(client: zserver_core::Client) -> Result<(), zserver_core::Error> {
/// use zserver_core::Calls;
/// let mut download = client.open_file_download("get", "report.pdf", "report.pdf", true).await?;
/// if download.restarted() {
///     eprintln!("the partial file was not the server's: downloading it again");
/// }
/// download.incoming_mut().on_progress(|done, total| eprintln!("{done} of {total:?}"));
/// let written = download.save().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileDownload {
    incoming: Incoming,
    path: PathBuf,
    offset: u64,
    restarted: bool,
}

impl FileDownload {
    /// Where the local file goes on from: its length when resumed, else 0.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether a local partial file was found unusable, so the download starts over.
    pub fn restarted(&self) -> bool {
        self.restarted
    }

    /// The stream (its total, meta, progress).
    pub fn incoming_mut(&mut self) -> &mut Incoming {
        &mut self.incoming
    }

    /// Receives the rest into the file (appending when resumed, else replacing it), each
    /// byte checked; returns the bytes written now.
    pub async fn save(self) -> Result<u64, Error> {
        self.incoming.save(self.path, self.offset > 0).await
    }
}

impl Connection {
    /// Opens a download of `command`/`meta` into the file at `path`, resumed from the
    /// local file's length when `resume` and its bytes are the sender's (see
    /// [`FileDownload`]).
    pub(crate) async fn open_file_download(
        &self,
        command: &str,
        meta: &[u8],
        path: &Path,
        resume: bool,
    ) -> Result<FileDownload, Error> {
        let kept = match resume {
            true => local_prefix(path.to_owned()).await?,
            false => None,
        };
        let mut restarted = false;
        if let Some((offset, hash)) = kept {
            match self.open_download(command, meta, offset).await {
                Ok(incoming) if incoming.prefix_hash() == Some(hash) => {
                    let path = path.to_owned();
                    return Ok(FileDownload {
                        incoming,
                        path,
                        offset,
                        restarted,
                    });
                }
                // Dropping the stream stops the sender.
                Ok(_) => {}
                // An offset past the sender's end (or a sender that cannot resume at all):
                // starting over is answered for good, below.
                Err(Error::BadRequest(_)) => {}
                Err(e) => return Err(e),
            }
            restarted = true;
        }
        let incoming = self.open_download(command, meta, 0).await?;
        Ok(FileDownload {
            incoming,
            path: path.to_owned(),
            offset: 0,
            restarted,
        })
    }
}

/// The length and hash of the local file at `path`, if it exists and is not empty.
async fn local_prefix(path: PathBuf) -> Result<Option<(u64, [u8; HASH_LEN])>, Error> {
    blocking::unblock(move || {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(format!("{}: {e}", path.display()))),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(None);
        }
        Ok(Some((len, hash_prefix(&file, len)?)))
    })
    .await
}
