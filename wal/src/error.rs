use std::path::PathBuf;
use std::sync::Arc;

use crate::Lsn;

/// Everything that can go wrong in the log. `Clone`: every writer of a
/// failed group commit gets the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The I/O layer failed.
    #[error(transparent)]
    Storage(#[from] uring::Error),
    /// A frame that fails its checks lies before a point the log is known to
    /// have been durable to (a later frame, or the clean-close marker, says
    /// so): the log is damaged before its synced end.
    #[error("corrupt WAL frame in {} at offset {offset} (LSN {lsn}): {reason}; the log was durable past it", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad frame in that file.
        offset: u64,
        /// Its position in the log.
        lsn: Lsn,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Segment files do not tile the log: one is missing or has a wrong size.
    #[error("WAL segment {} does not follow the one before (expected it to start at LSN {expected})", path.display())]
    SegmentGap {
        /// The segment that does not fit.
        path: PathBuf,
        /// Where it should have started.
        expected: Lsn,
    },
    /// A segment file whose size no segment ever had: segments are
    /// preallocated whole, so it was truncated or is not a ringkv segment.
    #[error("WAL segment {} has {size_bytes} bytes, not a whole preallocated segment (a multiple of 4096, at least {min_bytes}): truncated or foreign", path.display())]
    BadSegment {
        /// The segment file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The smallest segment size.
        min_bytes: u64,
    },
    /// The options ask for a segment size that cannot be used.
    #[error(
        "WAL segment size of {segment_bytes} bytes is unusable: it must be a multiple of 4096 and at least {min_bytes}"
    )]
    InvalidSegmentBytes {
        /// The size asked for.
        segment_bytes: u64,
        /// The smallest segment size.
        min_bytes: u64,
    },
    /// Replay was asked to start where the log no longer reaches.
    #[error("WAL in {} starts at LSN {start}, after the requested LSN {wanted}", dir.display())]
    LogStartsLater {
        /// The WAL directory.
        dir: PathBuf,
        /// The oldest LSN the log holds.
        start: Lsn,
        /// The LSN asked for.
        wanted: Lsn,
    },
    /// Replay was asked to start where no frame starts: past the end of the
    /// log, or inside a frame.
    #[error("WAL in {} has no frame starting at LSN {wanted} (the log ends at LSN {end})", dir.display())]
    NotAFrameStart {
        /// The WAL directory.
        dir: PathBuf,
        /// Where the recovered log ends.
        end: Lsn,
        /// The LSN asked for.
        wanted: Lsn,
    },
    /// A frame's payload is larger than this log accepts.
    #[error("WAL frame payload of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The payload's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// An earlier write, sync or segment switch failed; the log accepts no
    /// more writes (a failed fsync is never retried).
    #[error("WAL is poisoned by an earlier failure: {cause}")]
    Poisoned {
        /// The failure that poisoned it, as the calls that failed saw it.
        #[source]
        cause: Arc<Error>,
    },
    /// The WAL directory does not exist.
    #[error("no WAL directory at {}", dir.display())]
    NoLog {
        /// The directory.
        dir: PathBuf,
    },
    /// The log is shutting down.
    #[error("WAL is closed")]
    Closed,
    /// The `Apply` of the frame at `lsn` panicked. The frame is durable
    /// but what it should have changed was not (fully) applied; the log
    /// accepts no more writes.
    #[error("the apply step of the WAL frame at LSN {lsn} panicked: {message}")]
    ApplyPanicked {
        /// The frame's position in the log.
        lsn: Lsn,
        /// The panic's message.
        message: String,
    },
    /// A thread panicked while it led the log's commits (a bug in the
    /// commit path or the I/O layer under it). The writers of its batches
    /// were told so; the log accepts no more writes.
    #[error("a thread panicked while it wrote and synced the WAL (a bug); the log accepts no more writes")]
    LeaderPanicked,
    /// The function [`crate::Wal::cut`] runs at the cut panicked; the log
    /// accepts no more writes.
    #[error("the function run at a WAL cut (LSN {lsn}) panicked: {message}; the log accepts no more writes")]
    CutPanicked {
        /// The cut.
        lsn: Lsn,
        /// The panic's message.
        message: String,
    },
    /// An `Apply` called back into the log, which would wait for itself.
    #[error("an Apply called back into the WAL (append or sync from within an Apply would wait for itself)")]
    WithinApply,
    /// The function run at a cut called back into the log, which would
    /// wait for itself.
    #[error("the function run at a WAL cut called back into the WAL (it runs while no frame can be placed)")]
    WithinCut,
}

/// Result of the log.
pub type Result<T, E = Error> = std::result::Result<T, E>;
