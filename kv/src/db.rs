//! The store: options, open and recovery, reads and writes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use uring::{Backend, DirLock, Io, Storage, StorageOptions, SyncMode};
use wal::{Lsn, RecoveryMode, Wal, WalOptions, WalStats};

use crate::batch::{self, WriteBatch};
use crate::checkpoint::{self, Control};
use crate::constants::{BATCH_BYTES_MAX, SCAN_CHUNK_ENTRIES};
use crate::error::{Error, Result};
use crate::marker::{self, Found, PAGE_FILE};
use crate::memtable::{MemSnapshot, Memtable, Tables, Versions};
use crate::tree::{PageFile, Snapshot, TreeStats, PAGE_BYTES};

/// When a write returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Once its bytes are on stable storage (fdatasync done).
    #[default]
    Sync,
    /// Once it is ordered in the log and applied (readers see it). A
    /// flusher thread writes and syncs it with the batch it joined as soon
    /// as it can, without waiting for another write; until that sync
    /// completes a crash may lose it (and only a suffix of such writes).
    /// [`Kv::sync`] waits for it. Readers see it at once: if its sync
    /// then fails, the store refuses writes, and reads still show it until
    /// the store is reopened without it.
    NoSync,
}

/// How to open a store. Start from `Options::default()` and set fields:
///
/// ```
/// let mut options = ringkv::Options::default();
/// options.durability = ringkv::Durability::NoSync;
/// ```
///
/// More fields will come (page file sizes), so it cannot be built with a
/// struct literal.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Options {
    /// I/O backend: io_uring with fallback (default), io_uring, or syscalls.
    pub io: Io,
    /// How io_uring makes commits durable.
    pub sync_mode: SyncMode,
    /// Durability of `put`, `delete` and `write`.
    pub durability: Durability,
    /// Create the directory if it does not exist.
    pub create_if_missing: bool,
    /// What recovery does with damage before the synced end of the log:
    /// refuse to open (`Strict`, the default), or keep the log up to the
    /// damage (`PointInTime`), which drops acknowledged writes after it and
    /// keeps a copy of the dropped bytes in `wal/dropped-*` (see
    /// `kv repair`).
    pub recovery: RecoveryMode,
    /// Size of new WAL segment files.
    pub segment_bytes: u64,
    /// Memory for memtables: the one taking writes and the one a
    /// checkpoint is folding into the page file. A checkpoint starts once
    /// the active memtable holds half of it (keys, values and per-entry
    /// overhead); writers that outrun the checkpoint wait for it.
    pub memtable_bytes: usize,
    /// Bytes of page-file nodes kept in memory for reads.
    pub cache_bytes: usize,
    /// Read the page file through the kernel's page cache as well (a
    /// buffered handle; pages are still written with O_DIRECT, which drops
    /// the cached copies they cover), so that memory the kernel can spare
    /// serves reads the node cache misses. Off, every miss reads the disk
    /// and `cache_bytes` bounds all caching.
    pub os_page_cache: bool,
    /// The WAL kept on disk stays about under this: a checkpoint starts
    /// once a quarter of it was written since the last one, and writers
    /// wait while a checkpoint runs if the log holds all of it. (The log
    /// keeps what the older of the page file's two checkpoints needs, and
    /// whole segments: keep it at least 4 × `segment_bytes`.)
    pub wal_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            io: Io::Auto,
            sync_mode: SyncMode::default(),
            durability: Durability::Sync,
            create_if_missing: true,
            recovery: RecoveryMode::Strict,
            segment_bytes: wal::SEGMENT_BYTES_DEFAULT,
            memtable_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            os_page_cache: true,
            wal_bytes: 4 * wal::SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// What [`Kv::stats`] reports.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// The I/O backend in use.
    pub backend: Backend,
    /// Group-commit counters of the WAL.
    pub wal: WalStats,
    /// Entries (deletes included) in memory, not yet checkpointed.
    pub memtable_entries: usize,
    /// Bytes of them.
    pub memtable_bytes: usize,
    /// WAL bytes on disk from the oldest LSN kept to the durable end.
    pub wal_retained_bytes: u64,
    /// The page file.
    pub page_file: PageFileStats,
    /// Writes since open that waited for a checkpoint because they
    /// outran it (the memtable or the log past its budget: back-pressure).
    pub write_stalls: u64,
    /// The time they waited in all, in microseconds.
    pub write_stall_micros: u64,
}

/// The page file's part of [`Stats`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PageFileStats {
    /// Size of `data.db`.
    pub file_bytes: u64,
    /// Pages in use or free, meta pages included.
    pub pages: u64,
    /// Of those, free (or freed, waiting for older readers).
    pub free_pages: u64,
    /// Levels of the tree (0 when empty).
    pub height: usize,
    /// Checkpoints written since the file was made.
    pub generation: u64,
    /// Every write below this LSN is in the page file.
    pub checkpoint_lsn: Lsn,
    /// The open found the newer meta page damaged and used the older
    /// checkpoint (a warning naming the damage was logged).
    pub fell_back: bool,
    /// Pages the last checkpoint since open wrote (its meta page included).
    pub last_checkpoint_pages: u64,
}

impl From<TreeStats> for PageFileStats {
    fn from(t: TreeStats) -> PageFileStats {
        PageFileStats {
            file_bytes: t.file_bytes,
            pages: u64::from(t.pages),
            free_pages: t.free_pages as u64,
            height: t.height,
            generation: t.meta.generation,
            checkpoint_lsn: t.meta.lsn,
            fell_back: false,
            last_checkpoint_pages: t.last_written,
        }
    }
}

/// An open store. `Send + Sync`: share it by reference or `Arc`. Dropping it
/// stops the checkpointer, makes every written batch durable and releases
/// the directory lock.
pub struct Kv {
    inner: Arc<Inner>,
    /// Folds memtables into the page file; `None` for a read-only store.
    checkpointer: Option<JoinHandle<()>>,
}

/// What the store's threads share: the writers, readers and the
/// checkpointer (later the replication sender).
pub(crate) struct Inner {
    /// The log; `None` for a store opened read-only.
    pub(crate) wal: Option<Wal>,
    /// Where the log ends, for a store opened read-only.
    read_only_end: Lsn,
    /// Shared with the log's leaders, which apply acknowledged batches.
    pub(crate) tables: Arc<RwLock<Tables>>,
    /// `None` for a read-only store without one.
    pub(crate) tree: Option<PageFile>,
    /// Where the newest checkpoint cut the log.
    pub(crate) checkpoint_lsn: AtomicU64,
    /// The oldest LSN the log keeps (the older checkpoint's cut).
    pub(crate) kept_lsn: AtomicU64,
    /// The checkpointer's state, and its wake-ups (waiting writers too).
    pub(crate) control: Mutex<Control>,
    pub(crate) changed: Condvar,
    /// One checkpoint at a time.
    pub(crate) checkpointing: Mutex<()>,
    /// The open used the older meta page.
    fell_back: bool,
    pub(crate) memtable_bytes: usize,
    pub(crate) wal_bytes: u64,
    storage: Arc<dyn Storage>,
    durability: Durability,
    batch_bytes_max: usize,
    pub(crate) dir: PathBuf,
    // Dropped last: the lock outlives the WAL's committer.
    _lock: DirLock,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("dir", &self.inner.dir)
            .field("backend", &self.inner.storage.backend())
            .field("read_only", &self.inner.wal.is_none())
            .field("durable_lsn", &self.durable_lsn())
            .finish_non_exhaustive()
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        if let Some(thread) = self.checkpointer.take() {
            self.inner.control.lock().expect("checkpointer lock").stopping = true;
            self.inner.changed.notify_all();
            let _ = thread.join();
        }
    }
}

const LOCK_FILE: &str = "LOCK";

/// The log's batches from a checkpoint's cut on, replayed into a memtable
/// as recovery reads them.
#[derive(Default)]
struct Replay {
    memtable: Memtable,
    /// Frames below it are in the page file.
    from: Lsn,
    /// The first frame the log holds.
    first: Option<Lsn>,
    /// The first frame that did not decode as a batch.
    error: Option<Error>,
    /// The apply clock the memtable's entries were stamped by.
    versions: Versions,
}

impl Replay {
    fn from(from: Lsn) -> Replay {
        Replay { from, ..Replay::default() }
    }

    fn frame(&mut self, header: &wal::FrameHeader, payload: &[u8]) {
        self.first.get_or_insert(header.lsn);
        if header.lsn < self.from {
            return;
        }
        match batch::decode(header.lsn, payload) {
            Ok(ops) => self.memtable.apply(&self.versions, header.lsn, &ops),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// # Errors
    /// [`Error::BadBatch`] for the first frame that did not decode.
    fn finish(self) -> Result<Tables> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(Tables { active: Arc::new(self.memtable), frozen: None, versions: Arc::new(self.versions) }),
        }
    }
}
const WAL_DIR: &str = "wal";

impl Kv {
    /// Opens (or creates) the store in `dir` with default [`Options`].
    ///
    /// # Errors
    /// As [`Kv::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Kv> {
        Kv::open_with(dir, Options::default())
    }

    /// Opens (or creates) the store in `dir` on the real file system,
    /// replaying its log.
    ///
    /// A new store's directories are made durable (each parent synced)
    /// before anything is written into them.
    ///
    /// # Errors
    /// [`Error::NotFound`] if `dir` is missing (or empty) and
    /// `create_if_missing` is off; [`Error::NotAStore`] if `dir` holds files
    /// but no store marker, or a marker but no `wal/` (a store whose log
    /// was removed must not reopen empty); [`Error::UnsupportedFormat`];
    /// [`Error::Locked`] naming the holder's pid if another process has it
    /// open; [`Error::Wal`] with [`wal::Error::Corrupt`] (file, offset) for a
    /// damaged log; storage errors naming the path.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Kv> {
        let storage_options = StorageOptions {
            io: options.io,
            sync_mode: options.sync_mode,
            commit_buffer_bytes: wal::COMMIT_BUFFER_BYTES,
        };
        let storage = uring::open_storage(storage_options)?;
        Kv::open_on(storage, dir.as_ref(), options)
    }

    /// Opens the store in `dir` on the given storage: the simulated disk in
    /// tests, or a storage shared by several stores.
    ///
    /// # Errors
    /// As [`Kv::open_with`].
    pub fn open_on(storage: Arc<dyn Storage>, dir: &Path, options: Options) -> Result<Kv> {
        let wal_dir = dir.join(WAL_DIR);
        match marker::recognise(storage.as_ref(), dir, WAL_DIR)? {
            Found::Store | Found::Older(_) if !storage.exists(&wal_dir)? => {
                return Err(not_a_store(storage.as_ref(), dir)?)
            }
            Found::Store => {}
            Found::Older(format) => {
                tracing::info!(dir = %dir.display(), format, to = marker::FORMAT, "upgrading the store's format");
                marker::write(storage.as_ref(), dir)?;
            }
            Found::Unmarked => {
                tracing::info!(dir = %dir.display(), "a store without its marker (format 0); adding it");
                marker::write(storage.as_ref(), dir)?;
            }
            Found::Foreign(found) => return Err(Error::NotAStore { path: dir.to_owned(), found }),
            Found::Nothing if !options.create_if_missing => return Err(Error::NotFound { path: dir.to_owned() }),
            Found::Nothing => {
                uring::create_dirs(storage.as_ref(), &wal_dir)?;
                marker::write(storage.as_ref(), dir)?;
            }
        }
        // A creator killed between a mkdir and its parent's sync leaves
        // entries that exist but may not be durable: make them so before
        // anything is acknowledged (`Wal::open` does `wal/`'s own).
        uring::sync_parent(storage.as_ref(), dir)?;
        storage.sync_dir(dir)?;
        let lock = storage.lock(&dir.join(LOCK_FILE))?;
        let (tree, opened) =
            PageFile::open(storage.as_ref(), &dir.join(PAGE_FILE), cache_bytes(&options), options.os_page_cache)?;
        let meta = tree.meta();
        // The log must reach back to the older checkpoint's cut: if the
        // newer meta page is ever damaged, the older one is used.
        let kept = opened.older.as_ref().map_or(meta.lsn, |older| older.lsn);
        let wal_options = WalOptions { segment_bytes: options.segment_bytes, recovery: options.recovery, term: 0 };
        let mut replay = Replay::from(meta.lsn);
        let wal = Wal::open(storage.clone(), &wal_dir, wal_options, meta.lsn, &mut |h, p| replay.frame(h, p))?;
        let tables = replay.finish()?;
        let batch_bytes_max = BATCH_BYTES_MAX.min(wal.payload_bytes_max());
        tracing::debug!(
            dir = %dir.display(), backend = %storage.backend(), durable_lsn = %wal.durable_lsn(),
            checkpoint_lsn = %meta.lsn, generation = meta.generation, "opened"
        );
        let inner = Arc::new(Inner {
            wal: Some(wal),
            read_only_end: Lsn(0),
            tables: Arc::new(RwLock::new(tables)),
            tree: Some(tree),
            checkpoint_lsn: AtomicU64::new(meta.lsn.0),
            kept_lsn: AtomicU64::new(kept.0),
            control: Mutex::default(),
            changed: Condvar::new(),
            checkpointing: Mutex::new(()),
            fell_back: opened.fell_back.is_some(),
            memtable_bytes: options.memtable_bytes,
            wal_bytes: options.wal_bytes,
            storage,
            durability: options.durability,
            batch_bytes_max,
            dir: dir.to_owned(),
            _lock: lock,
        });
        let checkpointer = checkpoint::spawn(inner.clone());
        Ok(Kv { inner, checkpointer: Some(checkpointer) })
    }

    /// Opens the store in `dir` for reading only: its log is replayed as
    /// [`Kv::open`] would, but **no byte of the store changes** (a torn tail
    /// is left in place, past the end; under `RecoveryMode::PointInTime`
    /// damage ends the replay without truncating anything; nothing is
    /// created). Holds shared locks: other readers may open it too, a
    /// writer may not. Writes fail with [`Error::ReadOnly`].
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no store at `dir`; [`Error::Locked`]
    /// if a writer has it open; [`Error::Wal`] with `Corrupt` in `Strict`
    /// mode, or `LogStartsLater` if the log no longer reaches back to the
    /// page file's checkpoint; `CorruptPage`; storage errors naming the path.
    pub fn open_read_only(dir: impl AsRef<Path>, options: Options) -> Result<Kv> {
        let dir = dir.as_ref();
        let read_only = StorageOptions { io: options.io, sync_mode: options.sync_mode, commit_buffer_bytes: 0 };
        let storage = uring::open_storage(read_only)?;
        let wal_dir = dir.join(WAL_DIR);
        existing_store(storage.as_ref(), dir)?;
        let lock = storage.lock_shared(&dir.join(LOCK_FILE))?;
        let page_file = dir.join(PAGE_FILE);
        let (tree, fell_back) = match storage.exists(&page_file)? {
            true => {
                let (tree, opened) =
                    PageFile::open(storage.as_ref(), &page_file, cache_bytes(&options), options.os_page_cache)?;
                (Some(tree), opened.fell_back.is_some())
            }
            false => (None, false),
        };
        let from = tree.as_ref().map_or(Lsn(0), |t| t.meta().lsn);
        let mut replay = Replay::from(from);
        let end = wal::read_only(storage.clone(), &wal_dir, from, options.recovery, &mut |h, p| replay.frame(h, p))?;
        if let Some(first) = replay.first.filter(|&first| first > from) {
            return Err(wal::Error::LogStartsLater { dir: wal_dir, start: first, wanted: from }.into());
        }
        let tables = replay.finish()?;
        let inner = Arc::new(Inner {
            wal: None,
            read_only_end: end,
            tables: Arc::new(RwLock::new(tables)),
            tree,
            checkpoint_lsn: AtomicU64::new(from.0),
            kept_lsn: AtomicU64::new(from.0),
            control: Mutex::default(),
            changed: Condvar::new(),
            checkpointing: Mutex::new(()),
            fell_back,
            memtable_bytes: options.memtable_bytes,
            wal_bytes: options.wal_bytes,
            storage,
            durability: options.durability,
            batch_bytes_max: 0,
            dir: dir.to_owned(),
            _lock: lock,
        });
        Ok(Kv { inner, checkpointer: None })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::KeyTooLarge`], [`Error::ValueTooLarge`]; [`Error::Wal`] if
    /// the log failed (then the write may or may not be durable, and the
    /// store refuses further writes); [`Error::CheckpointFailed`] once
    /// checkpoints fail and a writer would have to wait for one.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.write(WriteBatch::one(key.as_ref(), Some(value.as_ref())))
    }

    /// Removes `key` (no error if absent).
    ///
    /// # Errors
    /// As [`Kv::put`].
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.write(WriteBatch::one(key.as_ref(), None))
    }

    /// Applies every change of `batch`, or none, with the store's durability.
    ///
    /// # Errors
    /// As [`Kv::put`], and [`Error::BatchTooLarge`].
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.write_with(batch, self.inner.durability)
    }

    /// Applies `batch` with the given durability.
    ///
    /// # Errors
    /// As [`Kv::write`].
    pub fn write_with(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let wal = inner.wal.as_ref().ok_or_else(|| Error::ReadOnly { path: inner.dir.clone() })?;
        let frame = Arc::new(batch.into_frame(inner.batch_bytes_max)?);
        inner.pace()?;
        // A frame that did not decode would be in the log before its apply
        // found out: the log poisoned, and every reopen refused (review 22).
        // The encoder is tested against the decoder (`batches_round_trip`);
        // debug builds check every write too.
        debug_assert!(batch::decode(Lsn(0), frame.payload()).is_ok(), "a batch decodes as it was encoded");
        // Decoded where it is applied (by the leader, or here for NoSync),
        // into the memtable its LSN belongs to (see `Tables::apply`), which
        // copies the keys and values.
        let (tables, payload) = (inner.tables.clone(), Arc::clone(&frame));
        let apply = Box::new(move |lsn| {
            let ops = batch::decode(lsn, payload.payload()).expect("a batch decodes as it was encoded");
            tables.read().expect("tables lock").apply(lsn, &ops);
        });
        match durability {
            // Applied by the leader that acknowledges it, with its group.
            Durability::Sync => wal.append_then(&*frame, apply)?,
            // Applied before the log can acknowledge it, so the applied
            // end never passes it.
            Durability::NoSync => wal.append_unsynced_then(&*frame, apply)?,
        };
        Ok(())
    }

    /// Returns once every write made so far (`NoSync` ones included) is
    /// durable. Nothing to do on a read-only store.
    ///
    /// # Errors
    /// [`Error::Wal`] if the log failed: then those writes may or may not
    /// be durable.
    pub fn sync(&self) -> Result<()> {
        match &self.inner.wal {
            Some(wal) => Ok(wal.sync()?),
            None => Ok(()),
        }
    }

    /// Folds everything written so far into the page file now (the
    /// checkpointer does so on its own when the memtable or the log pass
    /// their thresholds), then drops the log it no longer needs. Waits for
    /// a checkpoint already running, then runs its own.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::Wal`] if the log failed;
    /// [`Error::CheckpointFailed`] after an I/O error on the page file
    /// (the previous checkpoint and the log keep every write);
    /// [`Error::CorruptPage`].
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Makes every write durable and closes the store, reporting a failure
    /// that dropping it would only log.
    ///
    /// # Errors
    /// As [`Kv::sync`].
    pub fn close(self) -> Result<()> {
        self.sync()
    }

    /// The value of `key`, if it has one.
    ///
    /// # Errors
    /// [`Error::CorruptPage`] naming the page, and storage errors, from
    /// the page file.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.get(key.as_ref())
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    /// As [`Kv::get`].
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Keys and values in `range`, in key order (`.rev()` for reverse
    /// order); nothing for a range that ends before it starts. Items are
    /// `Result`s: a page-file read can fail (and ends the scan).
    ///
    /// A snapshot: the scan sees the store as it was when `scan` was
    /// called (every write that had returned, none that began after), also
    /// while checkpoints run. While it is alive, entries it may still read
    /// are kept: overwritten memtable entries, and the page-file pages of
    /// its checkpoint (which are not reused), so a scan held open for long
    /// under heavy writes costs memory and file space; drop it when done.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan<'_> {
        let owned = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Scan {
            view: self.inner.view(),
            kv: self,
            low: owned(range.start_bound()),
            high: owned(range.end_bound()),
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
            failed: false,
        }
    }

    /// Keys starting with `prefix` and their values, in key order (`.rev()`
    /// for reverse order).
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan<'_> {
        let prefix = prefix.as_ref();
        let end = prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        self.scan::<Vec<u8>>((Bound::Included(prefix.to_vec()), end))
    }

    /// What recovery did when this store was opened (frames replayed, a
    /// torn tail truncated, acknowledged writes dropped under
    /// `RecoveryMode::PointInTime` and where their copy is); `None` for a
    /// store opened read-only, which changes nothing.
    pub fn recovered(&self) -> Option<&wal::Recovered> {
        self.inner.wal.as_ref().map(Wal::recovered)
    }

    /// The I/O backend in use.
    pub fn io_backend(&self) -> Backend {
        self.inner.storage.backend()
    }

    fn durable_lsn(&self) -> Lsn {
        self.inner.wal.as_ref().map_or(self.inner.read_only_end, Wal::durable_lsn)
    }

    /// The log's group-commit counters (cheaper than [`Kv::stats`]).
    pub fn wal_stats(&self) -> WalStats {
        match &self.inner.wal {
            Some(wal) => wal.stats(),
            None => WalStats { durable_lsn: self.inner.read_only_end, ..WalStats::default() },
        }
    }

    /// Counters and sizes.
    ///
    /// # Errors
    /// As [`Kv::get`] (the tree's height is read from the page file).
    pub fn stats(&self) -> Result<Stats> {
        let inner = &self.inner;
        let wal = self.wal_stats();
        let (memtable_entries, memtable_bytes) = {
            let tables = inner.tables.read().expect("tables lock");
            let frozen = tables.frozen.as_ref().map(|(f, _)| f.as_ref());
            std::iter::once(tables.active.as_ref()).chain(frozen).fold((0, 0), |(e, b), m| (e + m.len(), b + m.bytes()))
        };
        let start = inner.wal.as_ref().map_or(Lsn(inner.kept_lsn.load(Ordering::SeqCst)), Wal::start_lsn);
        let page_file = match &inner.tree {
            Some(tree) => PageFileStats { fell_back: inner.fell_back, ..tree.stats()?.into() },
            None => PageFileStats::default(),
        };
        let (write_stalls, write_stall_micros) = {
            let control = inner.control.lock().expect("checkpointer lock");
            (control.stalls, control.stalled_micros)
        };
        Ok(Stats {
            backend: self.io_backend(),
            write_stalls,
            write_stall_micros,
            wal,
            memtable_entries,
            memtable_bytes,
            wal_retained_bytes: wal.durable_lsn.0.saturating_sub(start.0),
            page_file,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// The page cache's budget: at least a few pages per shard.
fn cache_bytes(options: &Options) -> usize {
    options.cache_bytes.max(64 * PAGE_BYTES)
}

impl Inner {
    /// The value of `key`: the newest memtable that says anything of it,
    /// else the page file.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (active, frozen) = self.memtables();
        for memtable in std::iter::once(active).chain(frozen) {
            if let Some(found) = memtable.get(key) {
                return Ok(found.map(|v| v.to_vec()));
            }
        }
        // A checkpoint that ended since the memtables were taken left the
        // page file newer, never older, than they were.
        match &self.tree {
            Some(tree) => tree.get(&tree.snapshot(), key),
            None => Ok(None),
        }
    }

    /// A snapshot of the store for a scan: the memtables and the page
    /// file's checkpoint as they are now.
    fn view(&self) -> View {
        // Under the tables' lock no checkpoint freezes a memtable or drops
        // the frozen one; so the checkpoint taken here is the one below
        // the frozen memtable (or the one folded from it, which holds
        // what it does), and holds only writes the memtables' snapshot
        // sees (a checkpoint folds only applied writes).
        let tables = self.tables.read().expect("tables lock");
        let tree = self.tree.as_ref().map(PageFile::snapshot);
        View { memtables: tables.snapshot(), tree }
    }

    /// The active memtable and the frozen one, newest first.
    fn memtables(&self) -> (Arc<Memtable>, Option<Arc<Memtable>>) {
        let tables = self.tables.read().expect("tables lock");
        (tables.active.clone(), tables.frozen.as_ref().map(|(f, _)| f.clone()))
    }
}

/// Reads the log of the store in `dir` without changing a byte of it (for
/// `kv check` and `kv wal-dump`): every valid frame with its payload, then
/// where the log ends and why. Holds shared locks (no writer) meanwhile.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Locked`], storage errors.
pub fn inspect_log(
    dir: &Path,
    options: Options,
    on_frame: &mut dyn FnMut(&wal::FrameHeader, &[u8]),
) -> Result<wal::Inspection> {
    let read_only = StorageOptions { io: options.io, sync_mode: options.sync_mode, commit_buffer_bytes: 0 };
    let storage = uring::open_storage(read_only)?;
    existing_store(storage.as_ref(), dir)?;
    let _lock = storage.lock_shared(&dir.join(LOCK_FILE))?;
    Ok(wal::inspect(storage, &dir.join(WAL_DIR), on_frame)?)
}

/// What [`check_page_file`] found.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PageFileCheck {
    /// Keys in the tree.
    pub keys: u64,
    /// Pages below the high-water mark, meta pages included.
    pub pages: u64,
    /// Of those, free.
    pub free_pages: u64,
    /// Levels of the tree.
    pub height: usize,
    /// The checkpoint checked.
    pub generation: u64,
    /// Where it cut the log: the log must reach back to here.
    pub checkpoint_lsn: Lsn,
    /// The newer meta page was damaged and the older one was checked.
    pub fell_back: Option<String>,
    /// Damage found, each naming its page; empty if sound.
    pub problems: Vec<String>,
}

/// Verifies the page file of the store in `dir` without changing it (for
/// `kv check`): page checksums, key order, large values, and every page
/// either in the tree or free, exactly once. `None` if the store has no
/// page file (format 1, or never opened for writing since). Holds the
/// store's shared lock meanwhile.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Locked`]; [`Error::CorruptPage`] if
/// neither meta page is valid; storage errors.
pub fn check_page_file(dir: &Path, options: Options) -> Result<Option<PageFileCheck>> {
    let read_only = StorageOptions { io: options.io, sync_mode: options.sync_mode, commit_buffer_bytes: 0 };
    let storage = uring::open_storage(read_only)?;
    existing_store(storage.as_ref(), dir)?;
    let _lock = storage.lock_shared(&dir.join(LOCK_FILE))?;
    let path = dir.join(PAGE_FILE);
    if !storage.exists(&path)? {
        return Ok(None);
    }
    let (tree, opened) = PageFile::open(storage.as_ref(), &path, cache_bytes(&options), options.os_page_cache)?;
    let report = tree.check()?;
    let meta = tree.meta();
    Ok(Some(PageFileCheck {
        keys: report.keys,
        pages: report.pages,
        free_pages: report.free_pages,
        height: report.height,
        generation: meta.generation,
        checkpoint_lsn: meta.lsn,
        fell_back: opened.fell_back,
        problems: report.problems,
    }))
}

/// Checks that `dir` holds a store with its log, for opening it without
/// changing it.
///
/// # Errors
/// [`Error::NotFound`] for nothing there, [`Error::NotAStore`] for
/// something else (or a store without its log).
fn existing_store(storage: &dyn Storage, dir: &Path) -> Result<()> {
    match marker::recognise(storage, dir, WAL_DIR)? {
        Found::Store | Found::Older(_) if storage.exists(&dir.join(WAL_DIR))? => Ok(()),
        Found::Store | Found::Older(_) => Err(not_a_store(storage, dir)?),
        Found::Unmarked => Ok(()),
        Found::Foreign(found) => Err(Error::NotAStore { path: dir.to_owned(), found }),
        Found::Nothing => Err(Error::NotFound { path: dir.to_owned() }),
    }
}

/// The error for a store whose log is gone, naming what is left.
fn not_a_store(storage: &dyn Storage, dir: &Path) -> Result<Error> {
    let mut found = storage.list_dir(dir)?;
    found.sort();
    Ok(Error::NotAStore { path: dir.to_owned(), found: found.join(", ") })
}

/// Checks that a WAL payload decodes as a batch.
///
/// # Errors
/// [`Error::BadBatch`] naming the LSN.
pub fn check_batch(lsn: Lsn, payload: &[u8]) -> Result<usize> {
    Ok(batch::decode(lsn, payload)?.len())
}

/// What a scan reads: the memtables and a checkpoint of the page file,
/// as they were when it began.
struct View {
    memtables: MemSnapshot,
    tree: Option<Snapshot>,
}

/// An ordered scan; see [`Kv::scan`]. Iterates forwards with `next` and
/// backwards with `next_back` (`.rev()`); the two ends meet without
/// repeating an item.
pub struct Scan<'a> {
    kv: &'a Kv,
    /// What the scan reads.
    view: View,
    /// Keys not yet fetched lie between `low` and `high`.
    low: Bound<Vec<u8>>,
    high: Bound<Vec<u8>>,
    /// Entries fetched from the front, not yet returned, next first.
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Entries fetched from the back, not yet returned, next (greatest) first.
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// A fetch came back short: nothing was left between the ends. From
    /// then on only the fetched entries are returned, so a key written
    /// meanwhile cannot appear out of order (and the scan stays ended).
    exhausted: bool,
    /// A read failed: the error was returned, nothing more is.
    failed: bool,
}

impl Scan<'_> {
    /// Fetches the next chunk of live entries from one end of the unfetched
    /// range, and narrows the range past it.
    ///
    /// Each layer (active memtable, frozen memtable, page file) gives up to
    /// a chunk's worth of entries from that end, deletes included. A layer
    /// that gave a full chunk may hold more beyond its last key, so only
    /// keys up to the nearest such last key are settled; of each, the
    /// newest layer's entry counts.
    fn fetch(&mut self, from_back: bool) -> Result<VecDeque<(Vec<u8>, Vec<u8>)>> {
        while !self.exhausted {
            let inner = &self.kv.inner;
            let low = self.low.as_ref().map(Vec::as_slice);
            let high = self.high.as_ref().map(Vec::as_slice);
            // Newest first.
            let View { memtables, tree: snapshot } = &self.view;
            let at = Some(memtables.epoch);
            let mut layers = vec![memtables.active.range(low, high, from_back, SCAN_CHUNK_ENTRIES, at)];
            if let Some(frozen) = &memtables.frozen {
                layers.push(frozen.range(low, high, from_back, SCAN_CHUNK_ENTRIES, at));
            }
            if let (Some(tree), Some(snapshot)) = (&inner.tree, snapshot) {
                let entries = tree.range(snapshot, low, high, from_back, SCAN_CHUNK_ENTRIES)?;
                layers.push(entries.into_iter().map(|(k, v)| (k.into(), Some(v.into()))).collect());
            }
            // The settled end: the nearest last key of a full layer.
            let full_ends = layers.iter().filter(|e| e.len() == SCAN_CHUNK_ENTRIES).map(|e| &e[e.len() - 1].0);
            let settled: Option<Bytes> = match from_back {
                false => full_ends.min().cloned(),
                true => full_ends.max().cloned(),
            };
            let mut merged: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
            for entries in layers {
                for (key, value) in entries {
                    let beyond = settled.as_ref().is_some_and(|s| if from_back { key < *s } else { key > *s });
                    if beyond {
                        break;
                    }
                    // The newest layer's entry came first.
                    merged.entry(key).or_insert(value);
                }
            }
            let live = |(k, v): (Bytes, Option<Bytes>)| v.map(|v| (k.to_vec(), v.to_vec()));
            let chunk: VecDeque<_> = match from_back {
                false => merged.into_iter().filter_map(live).collect(),
                true => merged.into_iter().rev().filter_map(live).collect(),
            };
            match settled {
                None => self.exhausted = true,
                Some(end) => {
                    let past = Bound::Excluded(end.to_vec());
                    if from_back {
                        self.high = past;
                    } else {
                        self.low = past;
                    }
                }
            }
            if !chunk.is_empty() {
                return Ok(chunk);
            }
        }
        Ok(VecDeque::new())
    }

    /// The next item from one end: what that end fetched, then (once
    /// nothing is left between the ends) what the other end fetched.
    fn step(&mut self, from_back: bool) -> Option<Result<(Vec<u8>, Vec<u8>)>> {
        if self.failed {
            return None;
        }
        if self.ends(from_back).0.is_empty() {
            match self.fetch(from_back) {
                Ok(chunk) => *self.ends(from_back).0 = chunk,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let (near, far) = self.ends(from_back);
        near.pop_front().or_else(|| far.pop_back()).map(Ok)
    }

    /// The fetched entries of the end iterated from, and of the other end.
    #[allow(clippy::type_complexity)]
    fn ends(&mut self, from_back: bool) -> (&mut VecDeque<(Vec<u8>, Vec<u8>)>, &mut VecDeque<(Vec<u8>, Vec<u8>)>) {
        match from_back {
            true => (&mut self.back, &mut self.front),
            false => (&mut self.front, &mut self.back),
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

impl std::iter::FusedIterator for Scan<'_> {}

impl DoubleEndedIterator for Scan<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

/// The smallest key greater than every key starting with `prefix`, if there
/// is one (there is none for an empty prefix or one of all `0xff` bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    /// `Kv` is shared across threads by reference or `Arc`.
    #[test]
    fn prefix_ends_after_every_key_with_the_prefix() {
        use super::prefix_end;
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn kv_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Kv>();
        shareable::<std::sync::Arc<super::Kv>>();
    }
}
