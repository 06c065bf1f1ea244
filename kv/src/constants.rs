//! Limits of the store, with their units.

/// Largest key accepted: a page-file leaf or branch page holds at least
/// three keys of this size.
pub const KEY_BYTES_MAX: usize = 1 << 10;

/// Largest key a log batch may hold: format 1 stores took keys up to 16
/// KiB, and their logs must still open (such a key is read, but a
/// checkpoint refuses it with `KeyTooLarge`).
pub(crate) const LOG_KEY_BYTES_MAX: usize = 16 << 10;

/// Largest value accepted.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Largest encoded batch accepted (one WAL frame's payload).
pub const BATCH_BYTES_MAX: usize = wal::FRAME_PAYLOAD_BYTES_MAX;

/// Bytes a batch's encoding spends besides keys and values: the op count.
pub(crate) const BATCH_HEADER_BYTES: usize = 4;

/// Bytes an operation's encoding spends besides its key and value: kind,
/// key length, value length.
pub(crate) const OP_HEADER_BYTES: usize = 9;

/// Bytes of one memtable arena chunk: keys and values are copied into
/// chunks of this size at apply.
pub(crate) const ARENA_CHUNK_BYTES: usize = 256 << 10;

/// Keys and values longer than this get an allocation of their own rather
/// than a place in an arena chunk (so a chunk wastes at most this much at
/// its end).
pub(crate) const ARENA_COPY_BYTES_MAX: usize = 4 << 10;

/// Entries a scan copies out of the memtable per lock hold.
pub(crate) const SCAN_CHUNK_ENTRIES: usize = 256;

const _: () = assert!(BATCH_HEADER_BYTES + OP_HEADER_BYTES + KEY_BYTES_MAX + VALUE_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= wal::FRAME_PAYLOAD_BYTES_MAX);
const _: () = assert!(ARENA_COPY_BYTES_MAX * 16 <= ARENA_CHUNK_BYTES);
