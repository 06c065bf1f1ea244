//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kv::{Io, Kv, Options};

/// The real backends every durability test runs over.
pub const REAL_BACKENDS: [Io; 2] = [Io::Uring, Io::Syscall];

/// Options for tests: small segments so the log rolls over often.
pub fn options(io: Io) -> Options {
    Options {
        io,
        segment_bytes: wal::SEGMENT_BYTES_MIN,
        ..Options::default()
    }
}

/// A fresh directory on the work disk (ext4 here, where O_DIRECT works),
/// removed on drop.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .expect("temp dir")
}

pub fn open(dir: &Path, io: Io) -> Kv {
    Kv::open(dir, options(io)).unwrap_or_else(|e| panic!("open {} with {io:?}: {e}", dir.display()))
}

/// The only segment a small test log has.
pub fn first_segment(dir: &Path) -> PathBuf {
    dir.join("wal").join(format!("{:020}.wal", 0))
}

/// The `kv` binary.
pub fn kv_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
}
