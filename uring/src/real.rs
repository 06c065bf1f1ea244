//! The two backends on a real file system: io_uring and plain system calls.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::constants::COMMIT_BUFFERS;
use crate::error::Result;
use crate::os::{self, OsFile};
use crate::queue::{CommitQueue, SyscallQueue, UringQueue};
use crate::ring::{Ring, UringFile};
use crate::storage::{Backend, DirLock, File, Io, OpenMode, Storage, SyncMode};

static URING_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// How to set up a real-file-system storage.
#[derive(Clone, Copy, Debug)]
pub struct StorageOptions {
    /// Which backend to use.
    pub io: Io,
    /// How io_uring commits are made durable.
    pub sync_mode: SyncMode,
    /// Size of each commit buffer registered with the commit ring; 0 for a
    /// storage that will not commit (read-only inspection).
    pub commit_buffer_bytes: usize,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions { io: Io::Auto, sync_mode: SyncMode::default(), commit_buffer_bytes: 1 << 20 }
    }
}

/// Opens the real file system through the backend `options.io` asks for.
///
/// With [`Io::Auto`], a kernel without io_uring, one that forbids it
/// (seccomp, `kernel.io_uring_disabled`), or a locked-memory limit too small
/// for the rings (or, in the io_uring commit modes `RwfDsync` and
/// `LinkedFsync`, for the registered commit buffers), leads to the syscall
/// backend, logged once. Setting up the rings here, at open, is what tells.
///
/// # Errors
/// With [`Io::Uring`], `UringUnavailable` naming the step that failed.
pub fn open_storage(options: StorageOptions) -> Result<Arc<dyn Storage>> {
    let rings = match options.io {
        Io::Syscall => None,
        Io::Uring => Some(rings(options)?),
        Io::Auto => match rings(options) {
            Ok(rings) => Some(rings),
            Err(e) => {
                if !URING_FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!("{e}; falling back to the syscall backend");
                }
                None
            }
        },
    };
    let (ring, commit_ring) = match rings {
        Some((ring, commit_ring)) => (Some(Arc::new(ring)), Mutex::new(commit_ring)),
        None => (None, Mutex::new(None)),
    };
    Ok(Arc::new(OsStorage { ring, commit_ring, options }))
}

/// The shared ring (file operations, no buffers) and, in the io_uring
/// commit modes, the first commit ring, with the commit buffers registered.
fn rings(options: StorageOptions) -> Result<(Ring, Option<Ring>)> {
    let shared = Ring::new(0, 0)?;
    // Only an io_uring commit queue registers commit buffers.
    let commit = match (options.commit_buffer_bytes, options.sync_mode) {
        (0, _) | (_, SyncMode::Syscalls) => None,
        (bytes, _) => Some(Ring::new(bytes, COMMIT_BUFFERS)?),
    };
    Ok((shared, commit))
}

/// A real file system, with rings (io_uring backend) or without (syscall).
#[derive(Debug)]
struct OsStorage {
    ring: Option<Arc<Ring>>,
    /// The commit ring set up at open, until a commit queue takes it.
    commit_ring: Mutex<Option<Ring>>,
    options: StorageOptions,
}

impl Storage for OsStorage {
    fn backend(&self) -> Backend {
        if self.ring.is_some() {
            Backend::Uring
        } else {
            Backend::Syscall
        }
    }

    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn File>> {
        let os = OsFile::open(path, mode)?;
        Ok(match &self.ring {
            Some(ring) => Arc::new(UringFile { os, ring: ring.clone() }),
            None => Arc::new(os),
        })
    }

    /// The one place the commit strategy is decided.
    fn commit_queue(&self) -> Result<Box<dyn CommitQueue>> {
        if self.ring.is_none() || self.options.sync_mode == SyncMode::Syscalls {
            return Ok(Box::new(SyscallQueue::new()));
        }
        let stashed = self.commit_ring.lock().expect("commit ring lock").take();
        let ring = match stashed {
            Some(ring) => ring,
            None => match Ring::new(self.options.commit_buffer_bytes.max(1), COMMIT_BUFFERS) {
                Ok(ring) => ring,
                Err(e) if self.options.io == Io::Auto => {
                    tracing::warn!("{e}; committing with system calls");
                    return Ok(Box::new(SyscallQueue::new()));
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Box::new(UringQueue::new(Arc::new(ring), self.options.sync_mode)))
    }

    fn create_dir(&self, path: &Path) -> Result<()> {
        os::create_dir(path)
    }
    fn exists(&self, path: &Path) -> Result<bool> {
        os::exists(path)
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        os::list_dir(path)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        os::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        os::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        os::sync_dir(path)
    }

    fn lock(&self, path: &Path) -> Result<DirLock> {
        os::lock(path)
    }

    fn lock_shared(&self, path: &Path) -> Result<DirLock> {
        os::lock_shared(path)
    }
}

impl File for OsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn as_syscalls(&self) -> &dyn File {
        self
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.file.as_raw_fd())
    }

    fn is_direct(&self) -> bool {
        self.direct
    }

    fn size_bytes(&self) -> Result<u64> {
        OsFile::len(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.pread(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.pwrite(offset, buf)
    }

    fn sync_data(&self) -> Result<()> {
        self.fdatasync()
    }

    fn allocate(&self, len: u64) -> Result<()> {
        OsFile::allocate(self, len)
    }

    fn sync_and_evict(&self) -> Result<()> {
        OsFile::sync_and_evict(self)
    }
}
