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
    /// The directory holds files but no store marker (`RINGKV`), or a
    /// marker but no `wal/` (a store whose log was removed): never opened
    /// as an empty store.
    #[error("{} is not a ringkv store (or has lost its log): it holds {found:?}", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// One of the entries found in it.
        found: String,
    },
    /// The store was written by a ringkv of another on-disk format.
    #[error("{} says format {format}; this ringkv reads format {supported}", path.display())]
    UnsupportedFormat {
        /// The marker file.
        path: PathBuf,
        /// The format it names.
        format: u32,
        /// The format this code reads.
        supported: u32,
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
    /// A page of the page file fails its checks.
    #[error("corrupt page {page} in {}: {reason}", path.display())]
    CorruptPage {
        /// The page file.
        path: PathBuf,
        /// The page's number (its byte offset / 4096).
        page: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint failed; the page file takes no more until the store is
    /// reopened (its state on disk is unknown, and a failed sync is never
    /// retried). Writes go on until they would have to wait for a
    /// checkpoint (a full memtable budget, or half the WAL budget), then
    /// fail with this error too.
    #[error("a checkpoint of {} failed ({cause}); reopen the store", path.display())]
    CheckpointFailed {
        /// The page file.
        path: PathBuf,
        /// The first failure.
        cause: String,
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

impl Error {
    /// The OS error code behind this error, looking through a poisoned
    /// log to the failure that poisoned it: `Some(libc::ENOSPC)` for a full
    /// disk, `Some(libc::EIO)` for a device error.
    pub fn raw_os_error(&self) -> Option<i32> {
        fn of_wal(e: &wal::Error) -> Option<i32> {
            match e {
                wal::Error::Storage(e) => e.raw_os_error(),
                wal::Error::Poisoned { cause } => of_wal(cause),
                _ => None,
            }
        }
        match self {
            Error::Storage(e) => e.raw_os_error(),
            Error::Wal(e) => of_wal(e),
            _ => None,
        }
    }

    /// Whether the store's files are damaged (a frame that fails its
    /// checks before the log's durable end, a batch that does not decode, a
    /// segment missing or cut short): opening again will not help.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::BadBatch { .. }
                | Error::CorruptPage { .. }
                | Error::Wal(
                    wal::Error::Corrupt { .. } | wal::Error::SegmentGap { .. } | wal::Error::BadSegment { .. }
                )
        )
    }

    /// Whether a write failed (or an earlier one did): the store refuses
    /// writes until it is reopened; the write may or may not be durable.
    pub fn is_write_failure(&self) -> bool {
        matches!(self, Error::Wal(wal::Error::Poisoned { .. } | wal::Error::Storage(_)))
    }

    /// Whether the store refuses writes because an earlier one failed.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Wal(wal::Error::Poisoned { .. }))
    }
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
