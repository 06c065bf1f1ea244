//! The write-ahead log of ringkv.
//!
//! What it is: frames (one atomic batch each, CRC-checked, carrying their own
//! LSN = byte offset in the logical log) in preallocated, recycled segment
//! files; group commit in which the writers lead in turn (a flusher thread
//! for frames nobody waits for), making every frame durable with one write
//! and one sync per batch, as the
//! storage's commit queue does it (a `RWF_DSYNC` write, a linked write →
//! fdatasync chain, or `pwrite` + `fdatasync`), each batch in a fresh 4 KiB
//! block, acknowledged in order on its own sync; recovery that makes what it
//! reads durable first, truncates a torn tail, and refuses (typed error with
//! file and offset) a damaged frame before the synced end; a reader from
//! any LSN.
//!
//! What it is not: it does not know what a batch contains (the `kv` crate
//! encodes payloads), and it does no networking.
//!
//! ```
//! use std::sync::Arc;
//! use ringkv_wal::{FrameBuf, Lsn, Wal, WalOptions};
//!
//! let disk = Arc::new(uring::SimStorage::new());
//! let dir = std::path::Path::new("/db/wal");
//! uring::create_dirs(disk.as_ref(), dir)?;
//! let options = WalOptions { segment_bytes: ringkv_wal::SEGMENT_BYTES_MIN, ..WalOptions::default() };
//! let wal = Wal::open(disk.clone(), dir, options, Lsn(0), &mut |_, _| {})?;
//! let mut frame = FrameBuf::new();
//! frame.extend(b"put k v");
//! let lsn = wal.append(frame, true)?; // durable on return
//! drop(wal);
//!
//! let mut seen = Vec::new();
//! let wal = Wal::open(disk, dir, options, Lsn(0), &mut |h, payload| seen.push((h.lsn, payload.to_vec())))?;
//! assert_eq!(seen, vec![(lsn, b"put k v".to_vec())]);
//! # drop(wal);
//! # Ok::<(), ringkv_wal::Error>(())
//! ```

#![forbid(unsafe_code)]

mod bells;
mod clean;
mod committer;
mod constants;
mod cursor;
mod error;
mod frame;
mod recovery;
mod segment;
mod writer;

use std::borrow::Borrow;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use uring::{DirLock, OpenMode, Storage};

pub use constants::{
    COMMIT_BUFFER_BYTES, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN,
};
pub use error::{Error, Result};
pub use frame::{Frame, FrameBuf, FrameFault, FrameHeader, FrameKind};
pub use recovery::{BadFrame, Dropped, Recovered};
pub use writer::Apply;

use committer::Committer;
use cursor::{Cursor, Step};
use writer::{Batch, Shared};

/// The lock file in the WAL directory: one open log per directory.
const LOCK_FILE: &str = "LOCK";

/// A position in the logical log: its byte offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What recovery does with a damaged frame that durable frames follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Refuse to open: a typed [`Error::Corrupt`] naming file and offset.
    /// A torn, never-acknowledged tail is still truncated.
    #[default]
    Strict,
    /// Recover every frame before the damage and drop the rest (logged):
    /// RocksDB's `kPointInTimeRecovery`.
    PointInTime,
}

/// How to open a log.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Size of new segment files; a multiple of 4 KiB, at least [`SEGMENT_BYTES_MIN`].
    pub segment_bytes: u64,
    /// What to do with damage before the synced end.
    pub recovery: RecoveryMode,
    /// Term stamped into new frames (leader epoch; 0 on a single node).
    pub term: u32,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { segment_bytes: SEGMENT_BYTES_DEFAULT, recovery: RecoveryMode::Strict, term: 0 }
    }
}

impl WalOptions {
    /// The largest payload a frame may have in a log with these options.
    pub fn payload_bytes_max(&self) -> usize {
        FRAME_PAYLOAD_BYTES_MAX.min((self.segment_bytes / 2) as usize - FRAME_HEADER_BYTES)
    }
}

/// Counters of the group-commit writer since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Frames made durable.
    pub commits: u64,
    /// Batches written, each with one sync.
    pub syncs: u64,
    /// Log bytes made durable.
    pub bytes: u64,
    /// The durable end of the log.
    pub durable_lsn: Lsn,
    /// Times a new leader yielded the CPU to let the writers just woken
    /// join its batch (see ARCHITECTURE.md, "The write path", step 6).
    pub gather_yields: u64,
}

impl WalStats {
    /// Frames per sync: above 1 when group commit is at work.
    pub fn average_batch_frames(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.commits as f64 / self.syncs as f64
        }
    }
}

/// An open log. Its writers commit in turn (group commit without a
/// committer thread: `writer.rs`).
pub struct Wal {
    shared: Arc<Shared>,
    /// Commits frames appended without waiting.
    flusher: Option<JoinHandle<()>>,
    recovered: Recovered,
    // Dropped after the committer has finished (field order).
    _lock: DirLock,
}

impl Wal {
    /// Opens the log in the directory `dir` (starting an empty log there if
    /// it has none), takes its lock, replays every batch frame from `from`
    /// (the log's start or the end of a frame: a checkpoint's cut, see
    /// [`Wal::cut`]) into `on_frame` in LSN order,
    /// truncates a torn tail, and starts the committer. The whole log is
    /// read to find its end; with old segments reclaimed that is little more
    /// than the part replayed. Everything replayed is durable before `open` returns: each
    /// segment is synced, and read from the device rather than a cache,
    /// before it is read.
    ///
    /// # Errors
    /// [`Error::NoLog`] if `dir` does not exist; [`uring::Error::Locked`]
    /// (as [`Error::Storage`]) if the log is open elsewhere;
    /// [`Error::Corrupt`] for damage before the synced end (in
    /// [`RecoveryMode::Strict`]), [`Error::SegmentGap`] for a missing
    /// segment, [`Error::BadSegment`] for a cut-short one,
    /// [`Error::LogStartsLater`] if `from` was reclaimed,
    /// [`Error::NotAFrameStart`] if no frame starts at `from` (past the end,
    /// or inside a frame),
    /// [`Error::InvalidSegmentBytes`] for an unusable segment size, and
    /// storage errors naming the file.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: WalOptions,
        from: Lsn,
        on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
    ) -> Result<Wal> {
        let started = std::time::Instant::now();
        if options.segment_bytes < SEGMENT_BYTES_MIN || options.segment_bytes % uring::BLOCK_BYTES as u64 != 0 {
            return Err(Error::InvalidSegmentBytes {
                segment_bytes: options.segment_bytes,
                min_bytes: SEGMENT_BYTES_MIN,
            });
        }
        if !storage.exists(dir)? {
            return Err(Error::NoLog { dir: dir.to_owned() });
        }
        let lock = storage.lock(&dir.join(LOCK_FILE))?;
        remove_temporaries(storage.as_ref(), dir)?;
        let payload_bytes_max = options.payload_bytes_max();
        let mut segments = segment::list(storage.as_ref(), dir)?;
        make_durable(storage.as_ref(), &segments)?;
        if segments.is_empty() {
            if from != Lsn(0) {
                return Err(Error::LogStartsLater { dir: dir.to_owned(), start: Lsn(0), wanted: from });
            }
            segments.push(segment::create(storage.as_ref(), dir, from, options.segment_bytes)?);
        }
        let start = segments[0].start;
        if from < start {
            return Err(Error::LogStartsLater { dir: dir.to_owned(), start, wanted: from });
        }
        let clean_end = clean::read(storage.as_ref(), dir)?;
        let mut frames = 0u64;
        let scanned = recovery::scan(&storage, &segments, from, clean_end, &mut |header, frame| {
            if header.kind == FrameKind::Batch {
                frames += 1;
                on_frame(header, &frame[FRAME_HEADER_BYTES..]);
            }
        })?;
        if !scanned.from_is_a_frame_start || from > scanned.end {
            return Err(Error::NotAFrameStart { dir: dir.to_owned(), end: scanned.end, wanted: from });
        }
        let mut recovered = recovery::settle(&storage, dir, &segments, &scanned, options.recovery)?;
        // Recovery succeeded: the marker has done its work (a refused open
        // keeps it, so that a retry refuses again).
        clean::remove(storage.as_ref(), dir)?;
        let end = scanned.end;
        // Segments wholly past the end hold nothing of the log: recycle them.
        while segments.len() > 1 && segments.last().expect("non-empty").start > end {
            segment::recycle(storage.as_ref(), &segments.pop().expect("non-empty"))?;
        }
        if segments.last().expect("non-empty").end() == end {
            segments.push(segment::create(storage.as_ref(), dir, end, options.segment_bytes)?);
        }
        storage.sync_dir(dir)?;
        let tail_segment = segments.last().expect("non-empty").clone();
        let file = storage.open(&tail_segment.path, OpenMode::Existing)?;
        let mut queue = storage.commit_queue()?;
        let mut buffers = queue.buffers(COMMIT_BUFFER_BYTES);
        let spare = buffers.pop().expect("two commit buffers");
        let gathering = Batch::new(buffers.pop().expect("two commit buffers"), end, 0);
        let committer = Committer::new(queue, spare, tail_segment, file, end);
        let shared =
            Arc::new(Shared::new(storage, dir.to_owned(), options, payload_bytes_max, segments, gathering, committer));
        recovered.frames = frames;
        recovered.elapsed = started.elapsed();
        tracing::info!(
            dir = %dir.display(), frames, %end, truncated_bytes = recovered.truncated_bytes,
            dropped_bytes = recovered.dropped.as_ref().map_or(0, |d| d.copy_bytes),
            elapsed_ms = recovered.elapsed.as_millis() as u64, "recovered the WAL"
        );
        let flusher = std::thread::Builder::new()
            .name("ringkv-wal-flusher".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run_flusher()
            })
            .expect("spawn the WAL flusher");
        Ok(Wal { shared, flusher: Some(flusher), recovered, _lock: lock })
    }

    /// Appends one frame (given or lent). With `wait`, returns once the frame is durable
    /// (the caller writes and syncs its batch itself if no other caller is
    /// doing so); without, once it is ordered in the log: the flusher
    /// thread writes and syncs it as soon as it can, without waiting for
    /// another write; until that sync completes a crash may lose it (and
    /// only a suffix of such frames). [`Wal::sync`] waits for it.
    /// Returns the frame's LSN.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`]; the storage error that failed this frame's
    /// batch (then the frame may or may not be durable); [`Error::Poisoned`]
    /// naming that error for every later call; [`Error::WithinApply`] or
    /// [`Error::WithinCut`] from inside a callback of the log.
    pub fn append(&self, frame: impl Borrow<FrameBuf>, wait: bool) -> Result<Lsn> {
        let frame = frame.borrow();
        let ticket = self.shared.place(frame, wait, None)?;
        if wait {
            self.shared.await_durable(ticket)?;
        }
        Ok(ticket.lsn)
    }

    /// Appends one frame, waits until it is durable, then has `apply` run
    /// with its LSN before returning: by the leader that acknowledges it,
    /// in LSN order with the rest of its group (one pass for the group
    /// instead of every woken writer contending to apply its own), and
    /// never if its batch fails. [`Wal::applied_lsn`] says how far every
    /// such `apply` has run. An `apply` must not call back into the log
    /// ([`Error::WithinApply`]).
    ///
    /// # Errors
    /// As [`Wal::append`]; [`Error::ApplyPanicked`] if `apply` panicked,
    /// and [`Error::Poisoned`] for every later call.
    pub fn append_then(&self, frame: impl Borrow<FrameBuf>, apply: Apply) -> Result<Lsn> {
        let frame = frame.borrow();
        let ticket = self.shared.place(frame, true, Some(apply))?;
        self.shared.await_durable(ticket)?;
        Ok(ticket.lsn)
    }

    /// Appends one frame without waiting for it (as `append(frame, false)`)
    /// and runs `apply` with its LSN before returning, before any leader
    /// can acknowledge the frame's batch: so [`Wal::applied_lsn`] never
    /// passes a frame whose `apply` has not run. Others wait for the tail
    /// while it runs: keep it short. Runs even if the frame's batch later
    /// fails (it is not durable yet, as `append(frame, false)` promises).
    ///
    /// # Errors
    /// As [`Wal::append`], and [`Error::ApplyPanicked`] if `apply` panicked.
    pub fn append_unsynced_then(&self, frame: impl Borrow<FrameBuf>, apply: Apply) -> Result<Lsn> {
        Ok(self.shared.place(frame.borrow(), false, Some(apply))?.lsn)
    }

    /// Runs `f` with the end of the frames placed so far while no frame can
    /// be placed: every frame below that end was placed (and a `NoSync`
    /// frame's `apply` has run) before `f` runs; every later one lies at or
    /// past it. The end is that of the batch the frames are gathered in (a
    /// block boundary), which is closed: later frames start the next batch
    /// there. So a cut is always a batch's start, and recovery past damage
    /// below it can begin reading at it. A checkpoint cuts the log there.
    /// `f` must not call back into the log (those calls return
    /// [`Error::WithinCut`]). Once [`Wal::sync`] has returned after it, every frame
    /// below the cut is durable, and applied if [`Wal::applied_lsn`] has
    /// reached the cut.
    ///
    /// # Errors
    /// [`Error::WithinApply`] from inside an `apply`, [`Error::WithinCut`]
    /// from inside another cut's `f`.
    pub fn cut<R>(&self, f: impl FnOnce(Lsn) -> R) -> Result<R> {
        self.shared.cut(f)
    }

    /// The end of the log up to which every frame is durable and every
    /// `apply` of [`Wal::append_then`] and [`Wal::append_unsynced_then`]
    /// has run.
    pub fn applied_lsn(&self) -> Lsn {
        self.shared.applied_lsn()
    }

    /// What the open's recovery did: frames replayed, a torn tail
    /// truncated, acknowledged frames dropped (and where they were copied).
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Returns once every frame appended so far (those appended without
    /// waiting included) is durable.
    ///
    /// # Errors
    /// As [`Wal::append`]: the error that failed a batch, or `Poisoned`.
    pub fn sync(&self) -> Result<()> {
        self.shared.sync()
    }

    /// The largest payload [`Wal::append`] accepts.
    pub fn payload_bytes_max(&self) -> usize {
        self.shared.payload_bytes_max
    }

    /// The end of the durable log.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        self.shared.stats()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The oldest LSN the log still holds.
    pub fn start_lsn(&self) -> Lsn {
        self.shared.lock_segments()[0].start
    }

    /// Reads the durable log from `from` (a frame boundary) to the durable
    /// end as of now.
    ///
    /// # Errors
    /// [`Error::LogStartsLater`] if `from` was reclaimed.
    pub fn read_from(&self, from: Lsn) -> Result<WalReader> {
        let segments = self.shared.lock_segments().clone();
        let start = segments[0].start;
        if from < start {
            return Err(Error::LogStartsLater { dir: self.shared.dir.clone(), start, wanted: from });
        }
        let end = self.durable_lsn();
        let cursor = Cursor::new(self.shared.storage.clone(), segments, from);
        Ok(WalReader { cursor, end, failed: false })
    }

    /// Recycles every segment that lies wholly below `lsn` (and below the
    /// durable end). Returns how many were reclaimed.
    ///
    /// # Errors
    /// Storage errors naming the segment. A failed sync of the directory
    /// also poisons the log (the disk may name the files either way).
    /// [`Error::WithinApply`] or [`Error::WithinCut`] from inside a
    /// callback of the log.
    pub fn reclaim_below(&self, lsn: Lsn) -> Result<usize> {
        writer::refuse_reentry()?;
        let limit = lsn.min(self.durable_lsn());
        let mut segments = self.shared.lock_segments();
        let mut reclaimed = 0;
        while segments.len() > 1 && segments[0].end() <= limit {
            segment::recycle(self.shared.storage.as_ref(), &segments[0])?;
            segments.remove(0);
            reclaimed += 1;
        }
        if reclaimed > 0 {
            if let Err(e) = self.shared.storage.sync_dir(&self.shared.dir) {
                // The disk may name the reclaimed files either way: no new
                // segment may be made of them, so the log takes no more
                // writes (a reopen after a remount sorts the names out).
                let e = Error::from(e);
                self.shared.poison(Arc::new(e.clone()), None);
                return Err(e);
            }
        }
        Ok(reclaimed)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // Commits what was gathered, and reaps every operation in flight.
        // (Not if a leader panicked: the log is poisoned, its state unusable.)
        if let Ok(mut leader) = self.shared.lead_blocking() {
            leader.drain(&self.shared);
        }
        // Everything placed was made durable (or the log is poisoned):
        // record where the log ends, so the next open can skip the search
        // beyond it.
        if self.shared.lock_tail().is_healthy() {
            let shared = &self.shared;
            if let Err(e) = clean::mark(shared.storage.as_ref(), &shared.dir, shared.durable_lsn()) {
                tracing::warn!(error = %e, "could not record the clean close of the WAL");
            }
        }
    }
}

/// Frames of the durable log, in order. After an error it yields nothing more.
pub struct WalReader {
    cursor: Cursor,
    end: Lsn,
    failed: bool,
}

impl Iterator for WalReader {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        loop {
            if self.failed || self.cursor.pos >= self.end {
                return None;
            }
            let (lsn, segment, offset, fault) = match self.cursor.step() {
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Ok(Step::End) => return None,
                Ok(Step::Frame(header, _)) if header.kind == FrameKind::Padding => continue,
                Ok(Step::Frame(header, bytes)) => {
                    let payload = bytes[FRAME_HEADER_BYTES..].to_vec();
                    return Some(Ok(Frame { header, payload }));
                }
                Ok(Step::Bad { lsn, segment, offset, fault }) => (lsn, segment, offset, fault),
            };
            let path = self.cursor.segments[segment].path.clone();
            self.failed = true;
            return Some(Err(Error::Corrupt { path, offset, lsn, reason: fault.reason() }));
        }
    }
}

/// Syncs every segment and drops its cached pages, so that recovery reads
/// what the device holds and everything it replays is durable before a new
/// frame can vouch for it.
fn make_durable(storage: &dyn Storage, segments: &[segment::Segment]) -> Result<()> {
    for segment in segments {
        storage.open(&segment.path, OpenMode::Existing)?.sync_and_evict()?;
    }
    Ok(())
}

fn remove_temporaries(storage: &dyn Storage, dir: &Path) -> Result<()> {
    for name in storage.list_dir(dir)? {
        if name.ends_with(".tmp") {
            storage.remove_file(&dir.join(name))?;
        }
    }
    Ok(())
}

/// What [`inspect`] found.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The end of the valid log.
    pub end: Lsn,
    /// The frame that ended it, if one did.
    pub bad: Option<BadFrame>,
    /// Where valid-looking frames past the end stop (a torn tail).
    pub junk_end: Option<Lsn>,
    /// Whether the log is known to have been durable past the bad frame
    /// (a later frame or the clean-close marker says so): corruption, not a
    /// torn tail.
    pub corrupt: bool,
}

/// Replays the log in `dir` as [`Wal::open`] would, without changing a
/// byte of it: every batch frame's payload up to the end goes to
/// `on_frame`; a torn tail is left in place (it is simply past the end);
/// under [`RecoveryMode::PointInTime`] damage ends the replay there, under
/// `Strict` it is an error. Reading starts at the segment holding `from`
/// (as [`Wal::open`]'s does), so damage in earlier segments does not
/// matter; that segment's frames before `from` are passed on too. Returns
/// where the log ends. Holds a shared lock (no writer) for the duration.
///
/// # Errors
/// As [`inspect`]; [`Error::Corrupt`] in `Strict` mode;
/// [`Error::LogStartsLater`] if `from` was reclaimed;
/// [`Error::NotAFrameStart`] if the log ends before `from` or no frame
/// starts there (also in `PointInTime` mode: what the caller holds up to
/// `from` would then be newer than the log).
pub fn read_only(
    storage: Arc<dyn Storage>,
    dir: &Path,
    from: Lsn,
    recovery: RecoveryMode,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<Lsn> {
    let (inspection, from_is_a_frame_start) = inspect_from(storage, dir, Some(from), &mut |header, payload| {
        if header.kind == FrameKind::Batch {
            on_frame(header, payload);
        }
    })?;
    if let (Some(bad), true, RecoveryMode::Strict) = (&inspection.bad, inspection.corrupt, recovery) {
        return Err(Error::Corrupt {
            path: bad.path.clone(),
            offset: bad.offset,
            lsn: bad.lsn,
            reason: bad.fault.reason(),
        });
    }
    if !from_is_a_frame_start || from > inspection.end {
        return Err(Error::NotAFrameStart { dir: dir.to_owned(), end: inspection.end, wanted: from });
    }
    Ok(inspection.end)
}

/// Reads the whole log in `dir` without changing it, calling `on_frame`
/// with every frame (padding included) of every whole batch, and says where
/// it ends and why. Holds a shared lock (no writer) for the duration; reads
/// what the device holds (each segment is synced and its cache dropped
/// first, which changes no byte).
///
/// # Errors
/// [`Error::NoLog`], storage errors ([`uring::Error::Locked`] if the log is
/// open for writing), [`Error::SegmentGap`], [`Error::BadSegment`].
pub fn inspect(
    storage: Arc<dyn Storage>,
    dir: &Path,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<Inspection> {
    Ok(inspect_from(storage, dir, None, on_frame)?.0)
}

/// [`inspect`] from the segment holding `from` (`None`: the first), and
/// whether a frame starts at `from`.
fn inspect_from(
    storage: Arc<dyn Storage>,
    dir: &Path,
    from: Option<Lsn>,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<(Inspection, bool)> {
    if !storage.exists(dir)? {
        return Err(Error::NoLog { dir: dir.to_owned() });
    }
    let _lock = storage.lock_shared(&dir.join(LOCK_FILE))?;
    let segments = segment::list(storage.as_ref(), dir)?;
    make_durable(storage.as_ref(), &segments)?;
    let start = segments.first().map_or(Lsn(0), |s| s.start);
    let from = from.unwrap_or(start);
    if from < start {
        return Err(Error::LogStartsLater { dir: dir.to_owned(), start, wanted: from });
    }
    let clean_end = clean::read(storage.as_ref(), dir)?;
    let scanned = recovery::scan(&storage, &segments, from, clean_end, &mut |h, frame| {
        on_frame(h, &frame[FRAME_HEADER_BYTES..])
    })?;
    let inspection = Inspection {
        end: scanned.end,
        corrupt: scanned.durable_past.is_some(),
        bad: scanned.bad,
        junk_end: scanned.junk_end,
    };
    Ok((inspection, scanned.from_is_a_frame_start))
}
