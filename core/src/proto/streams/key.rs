//! Which stream a stream frame belongs to: the direction and the call's request id.

use crate::error::Error;
use crate::frame::{FLAG_DOWNLOAD, FLAG_UPLOAD};

/// Which stream of a call a stream frame belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Dir {
    /// The caller's body; `id` is the caller's request id.
    Upload,
    /// The handler's answer; `id` is the caller's request id.
    Download,
}

impl Dir {
    pub(crate) fn flag(self) -> u8 {
        match self {
            Dir::Upload => FLAG_UPLOAD,
            Dir::Download => FLAG_DOWNLOAD,
        }
    }

    pub(crate) fn from_flags(flags: u8) -> Result<Self, Error> {
        match flags & (FLAG_UPLOAD | FLAG_DOWNLOAD) {
            FLAG_UPLOAD => Ok(Dir::Upload),
            FLAG_DOWNLOAD => Ok(Dir::Download),
            _ => Err(Error::Protocol(format!(
                "stream frame with flags {flags:#04x}: exactly one direction flag is required"
            ))),
        }
    }
}

/// Names one stream on a connection.
pub(crate) type Key = (Dir, u64);
