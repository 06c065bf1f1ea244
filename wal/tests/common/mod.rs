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

/// Implements `uring::Storage` for a test type whose `disk` field is a
/// `SimStorage`: every call goes to the simulated disk, and each commit
/// queue it hands out is `$wrap` (with `$this` the storage and `$queue`
/// the disk's own queue), so a test can hold or break a leader's I/O.
#[allow(unused_macros)]
macro_rules! sim_storage_with_queue {
    ($ty:ty, |$this:ident, $queue:ident| $wrap:expr) => {
        impl uring::Storage for $ty {
            fn backend(&self) -> uring::Backend {
                self.disk.backend()
            }
            fn open(
                &self,
                path: &std::path::Path,
                mode: uring::OpenMode,
            ) -> uring::Result<std::sync::Arc<dyn uring::File>> {
                self.disk.open(path, mode)
            }
            fn create_dir(&self, path: &std::path::Path) -> uring::Result<()> {
                self.disk.create_dir(path)
            }
            fn exists(&self, path: &std::path::Path) -> uring::Result<bool> {
                self.disk.exists(path)
            }
            fn list_dir(&self, path: &std::path::Path) -> uring::Result<Vec<String>> {
                self.disk.list_dir(path)
            }
            fn remove_file(&self, path: &std::path::Path) -> uring::Result<()> {
                self.disk.remove_file(path)
            }
            fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> uring::Result<()> {
                self.disk.rename(from, to)
            }
            fn sync_dir(&self, path: &std::path::Path) -> uring::Result<()> {
                self.disk.sync_dir(path)
            }
            fn lock(&self, path: &std::path::Path) -> uring::Result<uring::DirLock> {
                self.disk.lock(path)
            }
            fn lock_shared(&self, path: &std::path::Path) -> uring::Result<uring::DirLock> {
                self.disk.lock_shared(path)
            }
            fn commit_queue(&self) -> uring::Result<Box<dyn uring::CommitQueue>> {
                let ($this, $queue) = (self, self.disk.commit_queue()?);
                Ok(Box::new($wrap))
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use sim_storage_with_queue;
