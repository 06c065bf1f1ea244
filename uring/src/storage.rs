//! The storage seam: one trait for a directory tree of files, one for a file.
//! Every byte ringkv reads or writes goes through these, so the simulated
//! disk sees all of it.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

/// Which I/O backend to use, as chosen in options and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Io {
    /// io_uring, falling back to plain system calls (logged once) where the
    /// kernel lacks it or forbids it.
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// `pwrite` / `pread` / `fdatasync`.
    Syscall,
}

impl std::str::FromStr for Io {
    type Err = String;
    fn from_str(s: &str) -> Result<Io, String> {
        match s {
            "auto" => Ok(Io::Auto),
            "uring" | "io_uring" => Ok(Io::Uring),
            "syscall" => Ok(Io::Syscall),
            other => Err(format!("unknown I/O backend {other:?}: expected auto, uring or syscall")),
        }
    }
}

/// The backend actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring with registered buffers.
    Uring,
    /// Plain system calls.
    Syscall,
    /// The in-memory simulated disk of the tests.
    Simulated,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Syscall => "syscall",
            Backend::Simulated => "simulated",
        })
    }
}

/// How the io_uring backend makes a commit durable. Read in one place:
/// where the storage is opened ([`crate::open_storage`]), which returns the
/// matching [`crate::CommitQueue`]; everything else follows from it. (The
/// syscall backend always commits with `pwrite` + `fdatasync`.)
///
/// Chosen by measurement (README, Performance, "Why io_uring trails
/// syscalls"): a durable write through io_uring completes its flush in a
/// kernel worker (`RWF_DSYNC`: the direct-I/O completion work; a linked
/// `Fsync`: an io-wq worker) that must be scheduled before the leader is
/// woken; the system calls flush in the leader's own context. On the
/// 2-core development machine `RwfDsync` made 0.71-0.86× the commits of
/// system calls at 16 writers with a p99 of 0.7-2.9 ms against 0.3, and
/// the io_uring backend committing with system calls was level with the
/// syscall backend; so that is the default, and io_uring carries what it
/// is faster at: a checkpoint's many page writes at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// The leader writes and syncs each batch itself, `pwrite` then
    /// `fdatasync` ([`File::as_syscalls`]), one batch at a time; no
    /// commit buffers are registered.
    #[default]
    Syscalls,
    /// Linked write → `Fsync(DATASYNC)` chains. On O_DIRECT files up to
    /// [`crate::PIPELINE_DEPTH`] batches may await their syncs at once; on
    /// buffered files one at a time (a writeback error may be reported to
    /// only one of two overlapping syncs).
    LinkedFsync,
    /// One `WriteFixed` carrying `RWF_DSYNC` per batch, one batch at a
    /// time.
    RwfDsync,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SyncMode, String> {
        match s {
            "linked" => Ok(SyncMode::LinkedFsync),
            "dsync" => Ok(SyncMode::RwfDsync),
            "syscalls" => Ok(SyncMode::Syscalls),
            other => Err(format!("unknown sync mode {other:?}: expected syscalls, dsync or linked")),
        }
    }
}

/// Whether [`Storage::open`] may create the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create it empty if it does not exist.
    Create,
    /// The file must exist; opened without O_DIRECT, so that its reads go
    /// through (and fill) the kernel's page cache. For reading a file that
    /// another handle writes with O_DIRECT (the kernel drops cached pages
    /// a direct write covers). The simulated disk treats it as `Existing`.
    ExistingBuffered,
}

/// A held directory lock; dropping it releases the lock.
pub type DirLock = Box<dyn Any + Send + Sync>;

/// A tree of files: a real file system or the simulated disk.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Opens a file for reading and writing.
    ///
    /// # Errors
    /// `Io` with `op = "open"` if it does not exist (with [`OpenMode::Existing`])
    /// or cannot be opened.
    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn File>>;

    /// Creates one directory; its parent must exist; no error if it exists.
    /// Like every directory entry, durable only once the parent directory is
    /// synced: [`create_dirs`] does both.
    ///
    /// # Errors
    /// `Io` naming the path.
    fn create_dir(&self, path: &Path) -> Result<()>;

    /// Whether a file or directory exists at `path`.
    ///
    /// # Errors
    /// `Io` if the answer cannot be known (permissions).
    fn exists(&self, path: &Path) -> Result<bool>;

    /// The names of the entries of a directory, in no order.
    ///
    /// # Errors
    /// `Io` naming the directory if it does not exist or cannot be read.
    fn list_dir(&self, path: &Path) -> Result<Vec<String>>;

    /// Removes a file.
    ///
    /// # Errors
    /// `Io` naming the path.
    fn remove_file(&self, path: &Path) -> Result<()>;

    /// Renames a file, replacing `to` if it exists. Durable once the parent
    /// directory is synced.
    ///
    /// # Errors
    /// `Io` naming `from`.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;

    /// Makes the directory's entries (creations, renames, removals) durable.
    ///
    /// # Errors
    /// `Io` naming the directory.
    fn sync_dir(&self, path: &Path) -> Result<()>;

    /// Takes an exclusive lock on `path` (created if missing) and records
    /// this process's id in it. Held until the returned guard is dropped.
    ///
    /// # Errors
    /// [`crate::Error::Locked`] with the holder's pid if another handle holds it.
    fn lock(&self, path: &Path) -> Result<DirLock>;

    /// Takes a shared lock on the lock file at `path`, for readers: it
    /// excludes [`Storage::lock`] holders but not other readers, and never
    /// creates or writes the file. A missing lock file means no writer has
    /// held it: the guard then locks nothing.
    ///
    /// # Errors
    /// [`crate::Error::Locked`] with the writer's pid if a writer holds it.
    fn lock_shared(&self, path: &Path) -> Result<DirLock>;

    /// The commit path of a log: the one object that decides how a batch is
    /// made durable on this storage (which system calls or ring operations,
    /// how many batches at once, how a partial write is finished). Owned by
    /// one thread.
    ///
    /// # Errors
    /// `UringUnavailable` if a ring for it cannot be set up where the
    /// storage was opened with [`Io::Uring`].
    fn commit_queue(&self) -> Result<Box<dyn crate::CommitQueue>>;
}

/// Creates `path` and its missing parents, each made durable by syncing
/// the directory it was created in, so a power cut cannot take back a
/// directory that anything was written into.
///
/// # Errors
/// `Io` naming the directory that could not be created or synced.
pub fn create_dirs(storage: &dyn Storage, path: &Path) -> Result<()> {
    let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.as_os_str().is_empty()).collect();
    let mut first_missing = missing.len();
    for (i, dir) in missing.iter().enumerate() {
        if storage.exists(dir)? {
            first_missing = i;
            break;
        }
    }
    for dir in missing[..first_missing].iter().rev() {
        storage.create_dir(dir)?;
        sync_parent(storage, dir)?;
    }
    Ok(())
}

/// Makes the entry of `path` in its parent directory durable (syncs the
/// parent; `.` for a relative path of one component).
///
/// # Errors
/// `Io` naming the parent directory.
pub fn sync_parent(storage: &dyn Storage, path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    storage.sync_dir(parent)
}

/// An open file. Offsets are bytes from the start of the file.
///
/// Where [`File::is_direct`] is true (O_DIRECT), every offset, length and
/// buffer address given to `read_at` and `write_at` must be a multiple of
/// [`crate::BLOCK_BYTES`].
pub trait File: Send + Sync {
    /// The path it was opened at.
    fn path(&self) -> &Path;

    /// Whether writes bypass the page cache (O_DIRECT).
    fn is_direct(&self) -> bool;

    /// This file with its operations as plain system calls on the calling
    /// thread (an io_uring backend's file holds one; other files are
    /// themselves): for a caller that waits for each operation anyway,
    /// where a ring would only add a kernel worker's wake-up before a
    /// sync returns. The commit path of [`SyncMode::Syscalls`] (and of the
    /// syscall backend) writes and syncs through it, so a wrapper that
    /// must see those calls (fault injection, accounting) returns itself,
    /// not the file it wraps.
    fn as_syscalls(&self) -> &dyn File;

    /// The OS file descriptor, where there is one (not on the simulated disk).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The file's length in bytes.
    ///
    /// # Errors
    /// `Io` naming the file.
    fn size_bytes(&self) -> Result<u64>;

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// [`crate::Error::ReadPastEnd`] if the file ends before the buffer is
    /// full; `Io` if the read fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Writes all of `buf` at `offset`, growing the file if needed. Not
    /// durable until a later sync.
    ///
    /// # Errors
    /// `Io` naming the file and offset (`ENOSPC`, `EIO`, ...).
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Writes each `(offset, buf)` as [`File::write_at`] would, many in
    /// flight at once where the backend can (io_uring: up to
    /// `WRITES_IN_FLIGHT`, on the calling thread's own ring); returns once every
    /// write is done, or with the first error (then any of them may or may
    /// not be written). Not durable until a later sync.
    ///
    /// # Errors
    /// As [`File::write_at`].
    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<()> {
        for (offset, buf) in writes {
            self.write_at(*offset, buf)?;
        }
        Ok(())
    }

    /// Makes every completed write of this file durable (`fdatasync`).
    ///
    /// # Errors
    /// `Io` naming the file. After a failed sync the file's state on disk is
    /// unknown: callers must not retry, but stop writing (poison).
    fn sync_data(&self) -> Result<()>;

    /// Grows the file to at least `len` bytes; the new bytes read as zeros.
    ///
    /// # Errors
    /// `Io` naming the file (`ENOSPC`).
    fn allocate(&self, len: u64) -> Result<()>;

    /// Syncs the file, then drops its cached pages, so that later reads
    /// return what the device holds. Recovery calls it before reading a
    /// log: after a failed writeback the page cache may still hold pages the
    /// disk does not (they are marked clean), and bytes read back without a
    /// sync may sit only in a volatile cache; neither may be vouched for.
    ///
    /// # Errors
    /// `Io` naming the file (a failed sync).
    fn sync_and_evict(&self) -> Result<()>;
}
