//! The two backends on a real file system: io_uring and plain system calls.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::buf::IoBuf;
use crate::error::Result;
use crate::os::{self, OsFile};
use crate::queue::{CommitQueue, UringQueue};
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
    /// Size of each buffer registered with the ring.
    pub buffer_bytes: usize,
    /// How many buffers to register.
    pub buffer_count: usize,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions { io: Io::Auto, sync_mode: SyncMode::default(), buffer_bytes: 4 << 20, buffer_count: 2 }
    }
}

/// Opens the real file system through the backend `options.io` asks for.
///
/// With [`Io::Auto`], a kernel without io_uring, one that forbids it
/// (seccomp, `kernel.io_uring_disabled`), or a locked-memory limit too small
/// for the registered buffers, leads to the syscall backend, logged once.
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

/// The shared ring (file operations) and, for pipelined commits, the
/// committer's own ring. The commit buffers are registered with whichever
/// ring commits: the shared one for one-at-a-time `RWF_DSYNC` commits
/// (`File::write_sync` with a buffer from `io_buffer`), the committer's for
/// pipelined chains. Registering here, at open, is what tells a
/// locked-memory limit too small for them.
fn rings(options: StorageOptions) -> Result<(Ring, Option<Ring>)> {
    let (count, bytes) = (options.buffer_count, options.buffer_bytes);
    Ok(match options.sync_mode {
        SyncMode::RwfDsync => (Ring::new(options.sync_mode, bytes, count)?, None),
        SyncMode::LinkedFsync => {
            (Ring::new(options.sync_mode, 0, 0)?, Some(Ring::new(options.sync_mode, bytes, count)?))
        }
    })
}

/// A real file system, with rings (io_uring backend) or without (syscall).
#[derive(Debug)]
struct OsStorage {
    ring: Option<Arc<Ring>>,
    /// The committer's ring, until a commit queue takes it.
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

    fn io_buffer(&self, len: usize) -> IoBuf {
        self.ring.as_ref().and_then(|ring| ring.take_buffer(len)).unwrap_or_else(|| IoBuf::plain(len))
    }

    fn commit_queue(&self) -> Option<Box<dyn CommitQueue>> {
        // An RWF_DSYNC write completes only once durable, so the next batch's
        // write could not overlap it: that mode commits one at a time.
        if self.options.sync_mode == SyncMode::RwfDsync {
            return None;
        }
        self.ring.as_ref()?;
        let stashed = self.commit_ring.lock().expect("commit ring lock").take();
        let ring = match stashed {
            Some(ring) => ring,
            None => {
                let o = self.options;
                match Ring::new(o.sync_mode, o.buffer_bytes, o.buffer_count) {
                    Ok(ring) => ring,
                    Err(e) => {
                        tracing::warn!("{e}; committing without a pipelined queue");
                        return None;
                    }
                }
            }
        };
        Some(Box::new(UringQueue::new(Arc::new(ring))))
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        os::create_dir_all(path)
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
}

impl File for OsFile {
    fn path(&self) -> &Path {
        &self.path
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

    fn write_sync(&self, offset: u64, buf: &IoBuf, len: usize) -> Result<()> {
        OsFile::write_sync(self, offset, buf, len)
    }
}
