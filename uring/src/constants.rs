//! Limits and sizes of the I/O layer, with their units.

/// The unit a power cut can tear a write at: a write survives as a prefix of
/// whole sectors.
pub const SECTOR_BYTES: usize = 512;

/// Alignment of O_DIRECT buffers, offsets and lengths, and of every
/// [`crate::AlignedBuf`].
pub const BLOCK_BYTES: usize = 4096;

/// Submission queue entries of one ring. A commit chain holds at most two.
pub const RING_ENTRIES: u32 = 64;

/// Writes one `File::write_many` keeps in flight on io_uring. fio on the
/// development machine's disk, 4 KiB O_DIRECT random writes: 42k/s at
/// depth 1, 130k/s at 8, 156-163k/s at 32, no more at 64.
pub const WRITES_IN_FLIGHT: usize = 32;
/// Completion queue entries: at least twice what can be in flight, so the
/// kernel never has to drop or overflow a completion.
pub const RING_COMPLETION_ENTRIES: u32 = 2 * RING_ENTRIES;

/// Largest single read or write one ring operation carries; larger requests
/// are split (the kernel takes a `u32` length).
pub const OP_BYTES_MAX: usize = 1 << 30;

/// Buffers a commit queue hands out: one being written while the next
/// batch gathers in the other.
pub const COMMIT_BUFFERS: usize = 2;

/// Batches whose syncs may be in flight at once on a commit queue that
/// pipelines (linked chains on O_DIRECT files).
pub const PIPELINE_DEPTH: usize = 4;

/// Operations one pipelined commit may have in flight: its write, its
/// linked sync, a resubmitted remainder and a standalone sync.
const OPS_PER_COMMIT_MAX: usize = 4;

const _: () = assert!(BLOCK_BYTES % SECTOR_BYTES == 0);
const _: () = assert!(RING_COMPLETION_ENTRIES >= 2 * RING_ENTRIES);
const _: () = assert!(WRITES_IN_FLIGHT <= RING_ENTRIES as usize);
const _: () = assert!(OP_BYTES_MAX % BLOCK_BYTES == 0);
const _: () = assert!(PIPELINE_DEPTH * OPS_PER_COMMIT_MAX <= RING_ENTRIES as usize);
