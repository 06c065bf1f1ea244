//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kv::{Io, Kv, Options, SyncMode};

/// A real backend configuration the durability tests run over.
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub io: Io,
    pub sync_mode: SyncMode,
}

impl Backend {
    /// The `kv` CLI flags that select it.
    pub fn flags(&self) -> [&'static str; 4] {
        let io = match self.io {
            Io::Uring => "uring",
            Io::Syscall => "syscall",
            Io::Auto => "auto",
        };
        let sync_mode = match self.sync_mode {
            SyncMode::LinkedFsync => "linked",
            SyncMode::RwfDsync => "dsync",
        };
        ["--io", io, "--sync-mode", sync_mode]
    }
}

/// io_uring with either commit primitive, and plain system calls.
pub const REAL_BACKENDS: [Backend; 3] = [
    Backend { io: Io::Uring, sync_mode: SyncMode::RwfDsync },
    Backend { io: Io::Uring, sync_mode: SyncMode::LinkedFsync },
    Backend { io: Io::Syscall, sync_mode: SyncMode::RwfDsync },
];

/// The default configuration.
pub const AUTO: Backend = Backend { io: Io::Auto, sync_mode: SyncMode::RwfDsync };

/// Options for tests: small segments so the log rolls over often.
pub fn options(backend: Backend) -> Options {
    Options {
        io: backend.io,
        sync_mode: backend.sync_mode,
        segment_bytes: wal::SEGMENT_BYTES_MIN,
        ..Options::default()
    }
}

/// A fresh directory on the work disk (ext4 here, where O_DIRECT works),
/// removed on drop.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new().prefix(name).tempdir_in(base).expect("temp dir")
}

pub fn open(dir: &Path, backend: Backend) -> Kv {
    Kv::open(dir, options(backend)).unwrap_or_else(|e| panic!("open {} with {backend:?}: {e}", dir.display()))
}

/// The first segment of a test log.
pub fn first_segment(dir: &Path) -> PathBuf {
    dir.join("wal").join(format!("{:020}.wal", 0))
}

/// The `kv` binary.
pub fn kv_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
}
