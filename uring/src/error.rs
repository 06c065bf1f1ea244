use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the I/O layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call (or ring operation) on a file or directory failed.
    #[error("{op} {}{}: {source}", path.display(), at(*offset))]
    Io {
        /// The operation: "open", "pwrite", "fdatasync", "mkdir", ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Byte offset in the file, for operations that have one.
        offset: Option<u64>,
        /// What the kernel (or the simulated disk) said.
        #[source]
        source: io::Error,
    },
    /// A read asked for bytes past the end of the file.
    #[error("read of {len} bytes at offset {offset} of {} runs past its end ({file_bytes} bytes)", path.display())]
    ReadPastEnd {
        /// The file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// The file's length.
        file_bytes: u64,
    },
    /// io_uring was asked for explicitly (`Io::Uring`) and cannot be used.
    #[error("io_uring is not available: {reason}: {source}")]
    UringUnavailable {
        /// Which step failed: setup, probe, buffer registration.
        reason: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Another handle holds the lock on this directory.
    #[error("{} is locked by process {pid}", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id, as it wrote it into the lock file (0 if unreadable).
        pid: u32,
    },
}

fn at(offset: Option<u64>) -> String {
    offset.map(|o| format!(" at offset {o}")).unwrap_or_default()
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: impl Into<Option<u64>>,
        source: io::Error,
    ) -> Error {
        Error::Io { op, path: path.into(), offset: offset.into(), source }
    }

    /// The OS error code behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::UringUnavailable { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// An `io::Error` is not `Clone`; its code (or kind and text) is all we keep.
fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Errors are cloned to every writer of a failed group commit.
impl Clone for Error {
    fn clone(&self) -> Error {
        match self {
            Error::Io { op, path, offset, source } => {
                Error::Io { op, path: path.clone(), offset: *offset, source: clone_io(source) }
            }
            Error::ReadPastEnd { path, offset, len, file_bytes } => {
                Error::ReadPastEnd { path: path.clone(), offset: *offset, len: *len, file_bytes: *file_bytes }
            }
            Error::UringUnavailable { reason, source } => Error::UringUnavailable { reason, source: clone_io(source) },
            Error::Locked { path, pid } => Error::Locked { path: path.clone(), pid: *pid },
        }
    }
}

/// Result of the I/O layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
