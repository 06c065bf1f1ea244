//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ringkv::{Io, Kv, Options, SyncMode};

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
            other => panic!("no CLI flag for {other:?}"),
        };
        let sync_mode = match self.sync_mode {
            SyncMode::LinkedFsync => "linked",
            SyncMode::RwfDsync => "dsync",
            SyncMode::Syscalls => "syscalls",
            other => panic!("no CLI flag for {other:?}"),
        };
        ["--io", io, "--sync-mode", sync_mode]
    }
}

/// io_uring with each way of committing (its default commits with system
/// calls; its page I/O is on rings either way), and plain system calls.
pub const REAL_BACKENDS: [Backend; 4] = [
    Backend { io: Io::Uring, sync_mode: SyncMode::Syscalls },
    Backend { io: Io::Uring, sync_mode: SyncMode::RwfDsync },
    Backend { io: Io::Uring, sync_mode: SyncMode::LinkedFsync },
    Backend { io: Io::Syscall, sync_mode: SyncMode::Syscalls },
];

/// The default configuration.
pub const AUTO: Backend = Backend { io: Io::Auto, sync_mode: SyncMode::Syscalls };

/// Options for tests: small segments so the log rolls over often.
pub fn options(backend: Backend) -> Options {
    let mut options = Options::default();
    options.io = backend.io;
    options.sync_mode = backend.sync_mode;
    options.segment_bytes = wal::SEGMENT_BYTES_MIN;
    options
}

/// A fresh directory on the work disk (ext4 here, where O_DIRECT works),
/// removed on drop.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new().prefix(name).tempdir_in(base).expect("temp dir")
}

pub fn open(dir: &Path, backend: Backend) -> Kv {
    Kv::open_with(dir, options(backend)).unwrap_or_else(|e| panic!("open {} with {backend:?}: {e}", dir.display()))
}

/// The first segment of a test log.
pub fn first_segment(dir: &Path) -> PathBuf {
    dir.join("wal").join(format!("{:020}.wal", 0))
}

/// The `kv` binary.
pub fn kv_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
}

/// A file system mounted on a fresh directory for a test's life (needs
/// root: `None` where mounting is not allowed).
pub struct Mount(tempfile::TempDir);

impl Mount {
    pub fn new(fstype: &str, data: Option<&str>) -> Option<Mount> {
        let dir = temp_dir(fstype);
        let target = std::ffi::CString::new(dir.path().to_str()?).ok()?;
        let fstype = std::ffi::CString::new(fstype).ok()?;
        let data = data.map(|d| std::ffi::CString::new(d).expect("mount options"));
        let data_ptr = data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
        // SAFETY: every pointer is to a NUL-terminated string that lives across the call.
        let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data_ptr) };
        (rc == 0).then_some(Mount(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Changes the mount's options (e.g. a tmpfs's size).
    pub fn remount(&self, data: &str) -> bool {
        let target = std::ffi::CString::new(self.0.path().to_str().unwrap()).unwrap();
        let data = std::ffi::CString::new(data).unwrap();
        // SAFETY: as in `new`; a remount takes no source or type.
        let rc = unsafe {
            libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), libc::MS_REMOUNT, data.as_ptr().cast())
        };
        rc == 0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.path().to_str().unwrap()).unwrap();
        // SAFETY: target is a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A batch of `n` random changes, applied to `model` too: a delete one
/// time in `delete_one_in`, else a put of `value`; keys from `key`, which
/// sees the model as it is so far.
pub fn model_batch(
    rng: &mut uring::SimRng,
    model: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    n: u64,
    delete_one_in: u64,
    key: impl Fn(&mut uring::SimRng, &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8>,
    value: impl Fn(&mut uring::SimRng) -> Vec<u8>,
) -> ringkv::WriteBatch {
    let mut batch = ringkv::WriteBatch::new();
    for _ in 0..n {
        let k = key(rng, model);
        if rng.below(delete_one_in) == 0 {
            batch.delete(&k);
            model.remove(&k);
        } else {
            let v = value(rng);
            batch.put(&k, &v);
            model.insert(k, v);
        }
    }
    batch
}
