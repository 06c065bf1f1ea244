//! Limits and sizes of the I/O layer, with their units.

/// The unit a power cut can tear a write at: a write survives as a prefix of
/// whole sectors.
pub const SECTOR_BYTES: usize = 512;

/// Alignment of O_DIRECT buffers, offsets and lengths, and of every
/// [`crate::AlignedBuf`].
pub const BLOCK_BYTES: usize = 4096;

/// Submission queue entries of one ring. A commit chain holds at most two.
pub const RING_ENTRIES: u32 = 64;

/// Completion queue entries: at least twice what can be in flight, so the
/// kernel never has to drop or overflow a completion.
pub const RING_COMPLETION_ENTRIES: u32 = 2 * RING_ENTRIES;

/// Largest single read or write one ring operation carries; larger requests
/// are split (the kernel takes a `u32` length).
pub const OP_BYTES_MAX: usize = 1 << 30;

const _: () = assert!(BLOCK_BYTES % SECTOR_BYTES == 0);
const _: () = assert!(RING_COMPLETION_ENTRIES >= 2 * RING_ENTRIES);
const _: () = assert!(OP_BYTES_MAX % BLOCK_BYTES == 0);
