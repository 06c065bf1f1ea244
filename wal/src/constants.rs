//! Limits of the log, with their units, and the relations between them.

use uring::BLOCK_BYTES;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Largest payload one frame may carry (one atomic batch), whatever the
/// segment size. Smaller segments lower it to half a segment.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 2 << 20;

/// Size of the committer's staging buffer (registered with the ring): the
/// partial tail block, then the batch, then padding to a whole block.
pub const COMMIT_BUFFER_BYTES: usize = 4 << 20;

/// Batches whose sync may be in flight at once on a pipelined commit queue.
pub const PIPELINE_DEPTH: usize = 4;

/// Segment size used unless the options say otherwise.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 256 << 10;

/// Window the reader pulls from a segment at a time.
pub const READ_WINDOW_BYTES: usize = 1 << 20;

/// Chunk used to zero-fill a new segment.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(COMMIT_BUFFER_BYTES >= BLOCK_BYTES + FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX + BLOCK_BYTES);
const _: () = assert!(COMMIT_BUFFER_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN % BLOCK_BYTES as u64 == 0);
const _: () = assert!(SEGMENT_BYTES_DEFAULT % BLOCK_BYTES as u64 == 0);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= 2 * FRAME_PAYLOAD_BYTES_MAX as u64);
const _: () = assert!(READ_WINDOW_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(ZERO_FILL_CHUNK_BYTES % BLOCK_BYTES == 0);
