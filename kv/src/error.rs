use std::path::PathBuf;

use wal::Lsn;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write-ahead log failed (corruption, a failed sync, ...).
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// The I/O layer failed.
    #[error(transparent)]
    Storage(uring::Error),
    /// Another process (or handle) has the store open.
    #[error("{} is in use: locked by process {pid}", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id.
        pid: u32,
    },
    /// There is no store in the directory (it does not exist, or is
    /// empty) and `create_if_missing` is off.
    #[error("no store at {}", path.display())]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
    /// The directory holds files but no `wal/`: not a store, or a store
    /// whose log was removed. Never opened as an empty store.
    #[error("{} is not a ringkv store: it holds {found:?} but no wal/ directory", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// One of the entries found in it.
        found: String,
    },
    /// A write to a store opened with [`crate::Kv::open_read_only`].
    #[error("{} is open read-only", path.display())]
    ReadOnly {
        /// The store's directory.
        path: PathBuf,
    },
    /// A key longer than [`crate::KEY_BYTES_MAX`].
    #[error("key of {bytes} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A value longer than [`crate::VALUE_BYTES_MAX`].
    #[error("value of {bytes} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch whose encoding exceeds [`crate::BATCH_BYTES_MAX`] (or what
    /// the configured segment size allows).
    #[error("batch of {bytes} encoded bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A WAL frame passed its checksum but does not decode as a batch.
    #[error("WAL frame at LSN {lsn} does not decode as a batch: {reason}")]
    BadBatch {
        /// The frame's position.
        lsn: Lsn,
        /// What is wrong.
        reason: &'static str,
    },
}

impl From<uring::Error> for Error {
    fn from(e: uring::Error) -> Error {
        match e {
            uring::Error::Locked { path, pid } => Error::Locked { path, pid },
            other => Error::Storage(other),
        }
    }
}

/// Result of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
