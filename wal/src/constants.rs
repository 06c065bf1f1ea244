//! Limits of the log, with their units, and the relations between them.

use uring::BLOCK_BYTES;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Largest payload one frame may carry (one atomic batch), whatever the
/// segment size. Smaller segments lower it to half a segment.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 2 << 20;

/// Size of each buffer a batch gathers in (registered with the commit
/// ring): the largest frame, padded to a whole block. A batch starts at a
/// fresh block, so nothing else needs room.
pub const COMMIT_BUFFER_BYTES: usize = (FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX).next_multiple_of(BLOCK_BYTES);

/// Segment size used unless the options say otherwise.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 256 << 10;

/// Window the reader pulls from a segment at a time.
pub const READ_WINDOW_BYTES: usize = 1 << 20;

/// Reads of a block that fails with EIO before recovery takes it for a torn
/// sector: a transient error must not end the log early.
pub const READ_ATTEMPTS: usize = 3;

/// Chunk used to zero-fill a new segment.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(COMMIT_BUFFER_BYTES >= FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX);
const _: () = assert!(COMMIT_BUFFER_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN % BLOCK_BYTES as u64 == 0);
const _: () = assert!(SEGMENT_BYTES_DEFAULT % BLOCK_BYTES as u64 == 0);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= 2 * FRAME_PAYLOAD_BYTES_MAX as u64);
const _: () = assert!(READ_WINDOW_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(ZERO_FILL_CHUNK_BYTES % BLOCK_BYTES == 0);

/// Futex words writers wait on, one per batch number modulo this: more
/// than the batches in flight and the one gathering, so that within one
/// leadership the writers of two live batches never share a word (a
/// sharing costs spurious wake-ups and, for the hand-over's single
/// wake-up, a delay until the other batch's ring: `bells.rs`).
pub(crate) const BELLS: usize = 8;

/// Times a new leader yields the CPU while writers keep joining its batch
/// (see `Shared::gather`).
pub(crate) const GATHER_YIELDS_MAX: usize = 8;

/// A new leader gathers only after a batch that fewer writers than this
/// waited for: larger batches amortize their sync well enough that
/// overlapping the writers' CPU work with the next sync gains more
/// (measured in `Shared::gather`).
pub(crate) const GATHER_WRITERS_MAX: u64 = 32;

const _: () = assert!(BELLS > uring::PIPELINE_DEPTH + 1);
