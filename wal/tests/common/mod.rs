//! Helpers shared by the WAL's integration tests.

use ringkv_wal::{FrameBuf, WalOptions, SEGMENT_BYTES_MIN};

/// Where the tests' logs live on the simulated disk.
pub const DIR: &str = "/db/wal";

/// Options with the smallest segments, so logs roll over often.
pub fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

/// A frame holding `payload`.
pub fn frame(payload: &[u8]) -> FrameBuf {
    let mut f = FrameBuf::new();
    f.extend(payload);
    f
}
