//! What the syscall and io_uring backends share: opening files (O_DIRECT
//! with a logged fallback), directory operations, locking, and the plain
//! system-call data path.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::partial::WriteProgress;
use crate::storage::{DirLock, OpenMode};

static DIRECT_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// A real file, opened with O_DIRECT where the file system allows it.
#[derive(Debug)]
pub(crate) struct OsFile {
    pub(crate) file: fs::File,
    pub(crate) path: PathBuf,
    pub(crate) direct: bool,
}

impl OsFile {
    pub(crate) fn open(path: &Path, mode: OpenMode) -> Result<OsFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(mode == OpenMode::Create);
        if mode == OpenMode::ExistingBuffered {
            let file = options.open(path).map_err(|e| Error::io("open", path, None, e))?;
            return Ok(OsFile { file, path: path.to_owned(), direct: false });
        }
        let direct = options.clone().custom_flags(libc::O_DIRECT).open(path);
        match direct {
            Ok(file) => Ok(OsFile { file, path: path.to_owned(), direct: true }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if !DIRECT_FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "the file system refuses O_DIRECT; using buffered I/O (durability still comes from fdatasync)"
                    );
                }
                let file = options.open(path).map_err(|e| Error::io("open", path, None, e))?;
                Ok(OsFile { file, path: path.to_owned(), direct: false })
            }
            Err(e) => Err(Error::io("open", path, None, e)),
        }
    }

    pub(crate) fn len(&self) -> Result<u64> {
        let meta = self.file.metadata().map_err(|e| self.err("fstat", None, e))?;
        Ok(meta.len())
    }

    pub(crate) fn err(&self, op: &'static str, offset: impl Into<Option<u64>>, e: io::Error) -> Error {
        Error::io(op, &self.path, offset, e)
    }

    pub(crate) fn check_aligned(&self, offset: u64, len: usize, addr: *const u8) {
        if self.direct {
            let block = crate::BLOCK_BYTES;
            assert_eq!(offset % block as u64, 0, "O_DIRECT offset {offset} is not block-aligned");
            assert_eq!(len % block, 0, "O_DIRECT length {len} is not block-aligned");
            assert_eq!(addr as usize % block, 0, "O_DIRECT buffer is not block-aligned");
        }
    }

    /// Fails with `ReadPastEnd` unless `[offset, offset + len)` lies inside the file.
    pub(crate) fn check_in_bounds(&self, offset: u64, len: usize) -> Result<()> {
        let file_bytes = self.len()?;
        if offset.checked_add(len as u64).is_none_or(|end| end > file_bytes) {
            return Err(Error::ReadPastEnd { path: self.path.clone(), offset, len, file_bytes });
        }
        Ok(())
    }

    pub(crate) fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_aligned(offset, buf.len(), buf.as_ptr());
        self.check_in_bounds(offset, buf.len())?;
        // read_exact_at retries EINTR and short reads.
        self.file.read_exact_at(buf, offset).map_err(|e| self.err("pread", offset, e))
    }

    pub(crate) fn pwrite(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_aligned(offset, buf.len(), buf.as_ptr());
        let mut progress = WriteProgress::new(offset, buf.len(), self.direct);
        while !progress.is_done() {
            let (at, rest) = progress.next();
            match self.file.write_at(&buf[rest], at) {
                Ok(n) => progress.advance(n).map_err(|e| self.err("pwrite", progress.stopped_at(), e))?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("pwrite", at, e)),
            }
        }
        Ok(())
    }

    pub(crate) fn fdatasync(&self) -> Result<()> {
        // sync_data is fdatasync(2); it is not retried on failure (see File::sync_data).
        self.file.sync_data().map_err(|e| self.err("fdatasync", None, e))
    }

    /// fdatasync, then drop the clean cached pages (which include pages whose
    /// writeback failed: the kernel marks them clean) so reads go to the
    /// device. O_DIRECT reads bypass the cache already.
    pub(crate) fn sync_and_evict(&self) -> Result<()> {
        self.fdatasync()?;
        if !self.direct {
            drop_cached_pages(&self.file, &self.path)?;
        }
        Ok(())
    }

    pub(crate) fn allocate(&self, len: u64) -> Result<()> {
        if self.len()? >= len {
            return Ok(());
        }
        let len_off = libc::off_t::try_from(len).expect("file length fits off_t");
        // SAFETY: fallocate only reads its integer arguments; the fd is open
        // for as long as self.file lives.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len_off) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // Some file systems (ramfs) have no fallocate: a size change still zero-fills.
            return self.file.set_len(len).map_err(|e| self.err("ftruncate", len, e));
        }
        Err(self.err("fallocate", len, e))
    }
}

/// Writes back and then drops the kernel's cached pages of every file
/// under `path` (a file, or a directory walked recursively), so the next
/// reads of them go to the device. Benchmarks use it to start stores that
/// wrote through the page cache as cold as one that wrote with O_DIRECT.
/// Files that vanish during the walk (a store compacting meanwhile) are
/// skipped.
///
/// # Errors
/// `Io` naming the file or directory and the step that failed.
pub fn evict_os_cache(path: &Path) -> Result<()> {
    evict_under(path, false)
}

fn evict_under(path: &Path, listed: bool) -> Result<()> {
    // Under a directory, an entry can vanish between the listing and its turn.
    let gone = |e: &Error| listed && e.raw_os_error() == Some(libc::ENOENT);
    let skip_gone = |r: Result<()>| match r {
        Err(e) if gone(&e) => Ok(()),
        other => other,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => return skip_gone(Err(Error::io("stat", path, None, e))),
    };
    if meta.is_dir() {
        let names = match list_dir(path) {
            Ok(names) => names,
            Err(e) => return skip_gone(Err(e)),
        };
        return names.iter().try_for_each(|name| evict_under(&path.join(name), true));
    }
    if !meta.is_file() {
        return Ok(());
    }
    // fdatasync writes back dirty pages of the inode, whoever dirtied them:
    // DONTNEED drops only clean ones. Read-only is enough for both.
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return skip_gone(Err(Error::io("open", path, None, e))),
    };
    file.sync_data().map_err(|e| Error::io("fdatasync", path, None, e))?;
    drop_cached_pages(&file, path)
}

/// posix_fadvise(DONTNEED) over the whole of `file`: the kernel drops its
/// clean cached pages.
fn drop_cached_pages(file: &fs::File, path: &Path) -> Result<()> {
    // SAFETY: posix_fadvise only takes the fd (valid while `file` lives) and
    // integers; it changes no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(Error::io("posix_fadvise", path, None, io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

pub(crate) fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io("mkdir", path, None, e)),
        _ => Ok(()),
    }
}

pub(crate) fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|e| Error::io("stat", path, None, e))
}

pub(crate) fn list_dir(path: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(path).map_err(|e| Error::io("readdir", path, None, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("readdir", path, None, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

pub(crate) fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io("unlink", path, None, e))
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("rename", from, None, e))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).map_err(|e| Error::io("open", path, None, e))?;
    dir.sync_all().map_err(|e| Error::io("fsync", path, None, e))
}

/// A `flock` on a lock file holding the owner's pid.
struct FlockGuard {
    file: fs::File,
    /// The process that took it.
    owner: u32,
}

impl FlockGuard {
    fn new(file: fs::File) -> FlockGuard {
        FlockGuard { file, owner: std::process::id() }
    }
}

impl Drop for FlockGuard {
    /// The owner unlocks before the close. A flock belongs to the open
    /// file description, and a child forked by any thread of this process
    /// holds a copy of it until it execs or exits: a bare close would
    /// leave the store locked for that while, and a reopen by this process
    /// would fail with `Locked` naming its own pid. LOCK_UN through any
    /// copy releases it for all of them, so a forked child (which did not
    /// take the lock) only closes its copy: its unlock would free the
    /// store under its parent (review 20).
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        // SAFETY: flock only takes the fd (valid until `file` drops, after
        // this) and flags; its result is not needed, the close follows.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Takes `flock(mode | LOCK_NB)` on `file`; if another holder has it, the
/// error names the pid the holder wrote into the file.
fn flock(file: &mut fs::File, path: &Path, mode: libc::c_int) -> Result<()> {
    // SAFETY: flock only takes the fd (valid while `file` lives) and flags.
    let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(Error::Locked { path: path.to_owned(), pid: text.trim().parse().unwrap_or(0) });
    }
    Err(Error::io("flock", path, None, e))
}

pub(crate) fn lock_shared(path: &Path) -> Result<DirLock> {
    let mut file = match OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Box::new(())),
        Err(e) => return Err(Error::io("open", path, None, e)),
    };
    flock(&mut file, path, libc::LOCK_SH)?;
    Ok(Box::new(FlockGuard::new(file)))
}

pub(crate) fn lock(path: &Path) -> Result<DirLock> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open", path, None, e))?;
    flock(&mut file, path, libc::LOCK_EX)?;
    // Held by the guard from here, so a failed pid write unlocks too.
    let mut guard = FlockGuard::new(file);
    let write_pid = |file: &mut fs::File| -> io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_data()
    };
    write_pid(&mut guard.file).map_err(|e| Error::io("write", path, None, e))?;
    Ok(Box::new(guard))
}
