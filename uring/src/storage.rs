//! The storage seam: one trait for a directory tree of files, one for a file.
//! Every byte ringkv reads or writes goes through these, so the simulated
//! disk sees all of it.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use crate::buf::IoBuf;
use crate::error::Result;

/// Which I/O backend to use, as chosen in options and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// How the io_uring backend makes a commit durable.
///
/// Chosen by measurement: in one run of `cargo run --release -p benches --
/// --workloads commit --systems ringkv-io_uring,ringkv-io_uring-dsync,ringkv-syscall
/// --threads 1,4,16,64,1,4,16,64` on the development machine, `RwfDsync`
/// made 186–189k commits/s at 64 writers against 138–157k for the
/// pipelined chains, and was level or ahead at 1, 4 and 16 writers.
/// Pipelining doubles the syncs for the same commits, and the 2-core
/// machine is CPU-bound at 64 writers. See README, Performance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Linked write → `Fsync(DATASYNC)` chains, pipelined: the next batch is
    /// written while the previous batch's sync is in flight.
    LinkedFsync,
    /// One write carrying `RWF_DSYNC` per batch, one batch at a time (the
    /// write completes only once durable, so nothing can overlap it).
    #[default]
    RwfDsync,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SyncMode, String> {
        match s {
            "linked" => Ok(SyncMode::LinkedFsync),
            "dsync" => Ok(SyncMode::RwfDsync),
            other => Err(format!("unknown sync mode {other:?}: expected linked or dsync")),
        }
    }
}

/// Whether [`Storage::open`] may create the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create it empty if it does not exist.
    Create,
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

    /// A buffer for [`File::write_sync`] of at least `len` bytes; registered
    /// with the ring where the backend has one free.
    fn io_buffer(&self, len: usize) -> IoBuf;

    /// Creates a directory and its parents; no error if it exists.
    ///
    /// # Errors
    /// `Io` naming the path.
    fn create_dir_all(&self, path: &Path) -> Result<()>;

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

    /// A pipelined commit queue for one thread, where the backend has one
    /// (io_uring; the simulated disk when asked). `None`: commit with
    /// [`File::write_sync`], one at a time.
    fn commit_queue(&self) -> Option<Box<dyn crate::CommitQueue>> {
        None
    }
}

/// An open file. Offsets are bytes from the start of the file.
///
/// Where [`File::is_direct`] is true (O_DIRECT), every offset, length and
/// buffer address given to `read_at`, `write_at` and `write_sync` must be a
/// multiple of [`crate::BLOCK_BYTES`].
pub trait File: Send + Sync {
    /// The path it was opened at.
    fn path(&self) -> &Path;

    /// Whether writes bypass the page cache (O_DIRECT).
    fn is_direct(&self) -> bool;

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

    /// Writes `buf[..len]` at `offset` and returns only once those bytes are
    /// durable: the commit primitive. On io_uring this is one linked
    /// write → `Fsync(DATASYNC)` chain using the registered buffer. A short
    /// write or a cancelled link is finished with the remainder and a
    /// standalone sync; success is returned only after a sync that followed
    /// complete writes.
    ///
    /// # Errors
    /// `Io` naming the file and offset. As with `sync_data`, a failure
    /// leaves the file's durable state unknown.
    fn write_sync(&self, offset: u64, buf: &IoBuf, len: usize) -> Result<()>;
}
