//! The store: options, open and recovery, reads and writes.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use uring::{Backend, DirLock, Io, Storage, StorageOptions, SyncMode};
use wal::{Lsn, RecoveryMode, Wal, WalOptions, WalStats};

use crate::batch::{self, Payload, WriteBatch};
use crate::constants::{BATCH_BYTES_MAX, SCAN_CHUNK_ENTRIES};
use crate::error::{Error, Result};
use crate::marker::{self, Found};
use crate::memtable::Memtable;

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
    /// Keys with a value.
    pub live_keys: usize,
}

/// An open store. `Send + Sync`: share it by reference or `Arc`. Dropping it
/// makes every written batch durable and releases the directory lock.
pub struct Kv {
    /// The log; `None` for a store opened read-only.
    wal: Option<Wal>,
    /// Where the log ends, for a store opened read-only.
    read_only_end: Lsn,
    /// Shared with the log's leaders, which apply acknowledged batches.
    memtable: Arc<Memtable>,
    storage: Arc<dyn Storage>,
    durability: Durability,
    batch_bytes_max: usize,
    dir: PathBuf,
    // Dropped last: the lock outlives the WAL's committer.
    _lock: DirLock,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("dir", &self.dir)
            .field("backend", &self.storage.backend())
            .field("read_only", &self.wal.is_none())
            .field("durable_lsn", &self.stats().wal.durable_lsn)
            .finish_non_exhaustive()
    }
}

const LOCK_FILE: &str = "LOCK";

/// The log's batches replayed into a memtable, as recovery reads them.
#[derive(Default)]
struct Replay {
    memtable: Memtable,
    /// The first frame that did not decode as a batch.
    error: Option<Error>,
}

impl Replay {
    fn frame(&mut self, header: &wal::FrameHeader, payload: &[u8]) {
        match batch::decode(header.lsn, &Bytes::copy_from_slice(payload)) {
            Ok(ops) => self.memtable.apply(header.lsn, ops),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// # Errors
    /// [`Error::BadBatch`] for the first frame that did not decode.
    fn finish(self) -> Result<Memtable> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.memtable),
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
            Found::Store if !storage.exists(&wal_dir)? => return Err(not_a_store(storage.as_ref(), dir)?),
            Found::Store => {}
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
        let wal_options = WalOptions { segment_bytes: options.segment_bytes, recovery: options.recovery, term: 0 };
        let mut replay = Replay::default();
        let wal = Wal::open(storage.clone(), &wal_dir, wal_options, Lsn(0), &mut |h, p| replay.frame(h, p))?;
        let memtable = replay.finish()?;
        let batch_bytes_max = BATCH_BYTES_MAX.min(wal.payload_bytes_max());
        tracing::debug!(dir = %dir.display(), backend = %storage.backend(), durable_lsn = %wal.durable_lsn(), "opened");
        Ok(Kv {
            wal: Some(wal),
            read_only_end: Lsn(0),
            memtable: Arc::new(memtable),
            storage,
            durability: options.durability,
            batch_bytes_max,
            dir: dir.to_owned(),
            _lock: lock,
        })
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
    /// mode; storage errors naming the path.
    pub fn open_read_only(dir: impl AsRef<Path>, options: Options) -> Result<Kv> {
        let dir = dir.as_ref();
        let read_only = StorageOptions { io: options.io, sync_mode: options.sync_mode, commit_buffer_bytes: 0 };
        let storage = uring::open_storage(read_only)?;
        let wal_dir = dir.join(WAL_DIR);
        existing_store(storage.as_ref(), dir)?;
        let lock = storage.lock_shared(&dir.join(LOCK_FILE))?;
        let mut replay = Replay::default();
        let end = wal::read_only(storage.clone(), &wal_dir, options.recovery, &mut |h, p| replay.frame(h, p))?;
        let memtable = replay.finish()?;
        Ok(Kv {
            wal: None,
            read_only_end: end,
            memtable: Arc::new(memtable),
            storage,
            durability: options.durability,
            batch_bytes_max: 0,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::KeyTooLarge`], [`Error::ValueTooLarge`]; [`Error::Wal`] if
    /// the log failed (then the write may or may not be durable, and the
    /// store refuses further writes).
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
        self.write_with(batch, self.durability)
    }

    /// Applies `batch` with the given durability.
    ///
    /// # Errors
    /// As [`Kv::write`].
    pub fn write_with(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let wal = self.wal.as_ref().ok_or_else(|| Error::ReadOnly { path: self.dir.clone() })?;
        let frame = Arc::new(batch.into_frame(self.batch_bytes_max)?);
        // The memtable's keys and values: slices of the frame's payload.
        let payload = Bytes::from_owner(Payload(Arc::clone(&frame)));
        let ops = batch::decode(Lsn(0), &payload).expect("a batch decodes as it was encoded");
        match durability {
            // Applied by the leader that acknowledges it, with its group.
            Durability::Sync => {
                let memtable = self.memtable.clone();
                wal.append_then(&*frame, Box::new(move |lsn| memtable.apply(lsn, ops)))?;
            }
            // Applied before the log can acknowledge it, so the applied
            // end never passes it.
            Durability::NoSync => {
                let memtable = self.memtable.clone();
                wal.append_unsynced_then(&*frame, Box::new(move |lsn| memtable.apply(lsn, ops)))?;
            }
        }
        Ok(())
    }

    /// Returns once every write made so far (`NoSync` ones included) is
    /// durable. Nothing to do on a read-only store.
    ///
    /// # Errors
    /// [`Error::Wal`] if the log failed: then those writes may or may not
    /// be durable.
    pub fn sync(&self) -> Result<()> {
        match &self.wal {
            Some(wal) => Ok(wal.sync()?),
            None => Ok(()),
        }
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
    /// None yet (the page file will add read errors); kept for that.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.memtable.get(key.as_ref()))
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    /// As [`Kv::get`].
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.memtable.get(key.as_ref()).is_some())
    }

    /// Keys and values in `range`, in key order (`.rev()` for reverse
    /// order); nothing for a range that ends before it starts. Items are
    /// `Result`s: reads can fail once data lives in the page file. Not a
    /// snapshot: a write that commits during the scan may or may not be
    /// seen, but every item is a committed value.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan<'_> {
        let owned = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Scan {
            kv: self,
            low: owned(range.start_bound()),
            high: owned(range.end_bound()),
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
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
        self.wal.as_ref().map(Wal::recovered)
    }

    /// The I/O backend in use.
    pub fn io_backend(&self) -> Backend {
        self.storage.backend()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        let wal = match &self.wal {
            Some(wal) => wal.stats(),
            None => WalStats { durable_lsn: self.read_only_end, ..WalStats::default() },
        };
        Stats { backend: self.io_backend(), wal, live_keys: self.memtable.live_keys() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

/// Checks that `dir` holds a store with its log, for opening it without
/// changing it.
///
/// # Errors
/// [`Error::NotFound`] for nothing there, [`Error::NotAStore`] for
/// something else (or a store without its log).
fn existing_store(storage: &dyn Storage, dir: &Path) -> Result<()> {
    match marker::recognise(storage, dir, WAL_DIR)? {
        Found::Store if storage.exists(&dir.join(WAL_DIR))? => Ok(()),
        Found::Store => Err(not_a_store(storage, dir)?),
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
    Ok(batch::decode(lsn, &Bytes::copy_from_slice(payload))?.len())
}

/// An ordered scan; see [`Kv::scan`]. Iterates forwards with `next` and
/// backwards with `next_back` (`.rev()`); the two ends meet without
/// repeating an item.
pub struct Scan<'a> {
    kv: &'a Kv,
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
}

impl Scan<'_> {
    /// Fetches the next chunk from one end of the unfetched range, and
    /// narrows the range past it.
    fn fetch(&mut self, from_back: bool) -> VecDeque<(Vec<u8>, Vec<u8>)> {
        if self.exhausted {
            return VecDeque::new();
        }
        let low = self.low.as_ref().map(Vec::as_slice);
        let high = self.high.as_ref().map(Vec::as_slice);
        let chunk = self.kv.memtable.range(low, high, from_back, SCAN_CHUNK_ENTRIES);
        self.exhausted = chunk.len() < SCAN_CHUNK_ENTRIES;
        if let Some((last, _)) = chunk.last() {
            let past = Bound::Excluded(last.clone());
            if from_back {
                self.high = past;
            } else {
                self.low = past;
            }
        }
        chunk.into()
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() {
            self.front = self.fetch(false);
        }
        // Once nothing is left between the ends, the front continues into
        // what the back fetched.
        self.front.pop_front().or_else(|| self.back.pop_back()).map(Ok)
    }
}

impl std::iter::FusedIterator for Scan<'_> {}

impl DoubleEndedIterator for Scan<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() {
            self.back = self.fetch(true);
        }
        self.back.pop_front().or_else(|| self.front.pop_back()).map(Ok)
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
