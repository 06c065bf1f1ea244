//! The writers' side of group commit.
//!
//! Under the tail lock a writer takes the next LSN and copies its frame
//! into the batch being gathered (its CRC over the payload was computed
//! before, outside the lock); the committer thread (`committer.rs`) swaps
//! the batch out, under the same lock, when it can write one. A batch
//! starts at a block boundary, so no write ever covers bytes an earlier
//! write covered: a write torn by a power cut can only damage its own,
//! unacknowledged, frames. If the batch is full, or the next frame belongs
//! to the next segment, the writer waits for the committer to swap in an
//! empty one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};
use uring::{IoBuf, Storage, BLOCK_BYTES};

use crate::constants::FRAME_HEADER_BYTES;
use crate::error::{Error, Result};
use crate::frame::{seal_frame, FrameBuf, FrameKind, Seal};
use crate::segment::Segment;
use crate::{Lsn, WalOptions, WalStats};

/// How the committer tells a writer its frame is durable, or why not.
pub(crate) type Done = Result<()>;

/// A frame's place in a batch.
struct Slot {
    /// Offset in the batch's buffer.
    at: usize,
    len: usize,
    /// CRC of the payload alone (padding: computed when sealed).
    payload_crc: u32,
    kind: FrameKind,
}

/// Frames gathered into one buffer, written with one write and one sync.
pub(crate) struct Batch {
    pub(crate) buf: IoBuf,
    /// LSN of `buf[0]`: a block boundary.
    pub(crate) start: Lsn,
    fill: usize,
    slots: Vec<Slot>,
    pub(crate) waiters: Vec<Sender<Done>>,
    /// No more frames fit in its segment: the next one goes into the next
    /// batch, at the next segment's start.
    ends_segment: bool,
}

impl Batch {
    pub(crate) fn new(buf: IoBuf, start: Lsn) -> Batch {
        assert_eq!(start.0 % BLOCK_BYTES as u64, 0, "a batch starts at a block boundary");
        Batch { buf, start, fill: 0, slots: Vec::new(), waiters: Vec::new(), ends_segment: false }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Batch frames (not padding) it holds.
    pub(crate) fn frames(&self) -> u64 {
        self.slots.iter().filter(|s| s.kind == FrameKind::Batch).count() as u64
    }

    /// Where the next batch starts: the block after its last byte (the end
    /// of its segment, when it fills it).
    pub(crate) fn end(&self) -> Lsn {
        Lsn((self.start.0 + self.fill as u64).next_multiple_of(BLOCK_BYTES as u64))
    }

    /// Copies `frame` in at the next LSN and returns it; `None` if it must
    /// wait for the next batch (this one is full or ends its segment). A
    /// frame that does not fit in the rest of the segment is preceded by a
    /// padding frame to the segment's end (or, with less than a header's
    /// room left, by nothing) and waits for the next batch.
    fn place(&mut self, frame: &FrameBuf, payload_crc: u32, segment_end: Lsn) -> Option<Lsn> {
        if self.ends_segment {
            return None;
        }
        let at = Lsn(self.start.0 + self.fill as u64);
        assert!(at <= segment_end, "a batch stays inside its segment");
        let bytes = frame.as_bytes();
        let room = (segment_end.0 - at.0) as usize;
        if bytes.len() > room {
            if room >= FRAME_HEADER_BYTES {
                if self.fill + room > self.buf.len() {
                    return None; // the padding goes first thing in the next batch
                }
                self.buf[self.fill..self.fill + room].fill(0);
                self.slots.push(Slot { at: self.fill, len: room, payload_crc: 0, kind: FrameKind::Padding });
                self.fill += room;
            }
            self.ends_segment = true;
            return None;
        }
        if self.fill + bytes.len() > self.buf.len() {
            return None;
        }
        self.buf[self.fill..self.fill + bytes.len()].copy_from_slice(bytes);
        self.slots.push(Slot { at: self.fill, len: bytes.len(), payload_crc, kind: FrameKind::Batch });
        self.fill += bytes.len();
        Some(at)
    }

    /// Seals every frame's header with `durable` (how far the log was
    /// acknowledged durable before this batch: the batch vouches for it)
    /// and marks the last frame as ending the batch; zeroes the rest of the
    /// last block. Returns the length to write.
    pub(crate) fn seal(&mut self, durable: Lsn, term: u32) -> usize {
        assert!(!self.is_empty(), "an empty batch is never written");
        assert!(durable <= self.start, "the durable end lies before the batch");
        let last = self.slots.len() - 1;
        for (i, slot) in self.slots.iter().enumerate() {
            let frame = &mut self.buf[slot.at..slot.at + slot.len];
            let payload_crc = match slot.kind {
                FrameKind::Batch => slot.payload_crc,
                FrameKind::Padding => crc32fast::hash(&frame[FRAME_HEADER_BYTES..]),
            };
            let lsn = Lsn(self.start.0 + slot.at as u64);
            let seal = Seal { lsn, durable_lsn: durable, kind: slot.kind, ends_batch: i == last, term };
            seal_frame(frame, payload_crc, seal);
        }
        let len = self.fill.next_multiple_of(BLOCK_BYTES);
        self.buf[self.fill..len].fill(0);
        len
    }
}

/// What writers and the committer share under the tail lock.
pub(crate) struct Tail {
    /// The batch writers copy frames into.
    pub(crate) gathering: Batch,
    /// End of the segment the gathering batch lies in.
    pub(crate) segment_end: Lsn,
    pub(crate) poisoned: Option<Arc<Error>>,
    pub(crate) closed: bool,
    /// The committer is asleep on `Shared::work`.
    pub(crate) committer_sleeping: bool,
    /// Writers asleep on `Shared::room`.
    pub(crate) writers_waiting: usize,
}

impl Tail {
    /// No write or sync has failed.
    pub(crate) fn is_healthy(&self) -> bool {
        self.poisoned.is_none()
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// What the writer handles and the committer thread share.
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) payload_bytes_max: usize,
    pub(crate) tail: Mutex<Tail>,
    /// Writers wait here for an empty batch.
    pub(crate) room: Condvar,
    /// The committer waits here for frames.
    pub(crate) work: Condvar,
    /// `sync` callers wait here for the durable end to move.
    pub(crate) synced: Condvar,
    /// How many callers wait on `synced` (the committer signals only then).
    pub(crate) sync_waiters: AtomicU64,
    /// A frame was placed since the committer last took a batch (polled by
    /// the idle committer before it sleeps).
    pub(crate) has_frames: AtomicBool,
    /// The end of the log acknowledged durable.
    pub(crate) durable: AtomicU64,
    pub(crate) counters: Counters,
    /// The live segments, oldest first.
    pub(crate) segments: Mutex<Vec<Segment>>,
}

impl Shared {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        options: WalOptions,
        payload_bytes_max: usize,
        segments: Vec<Segment>,
        gathering: Batch,
    ) -> Arc<Shared> {
        let segment_end = segments.last().expect("a live segment").end();
        let end = gathering.start;
        let tail = Tail {
            gathering,
            segment_end,
            poisoned: None,
            closed: false,
            committer_sleeping: false,
            writers_waiting: 0,
        };
        Arc::new(Shared {
            storage,
            dir,
            options,
            payload_bytes_max,
            tail: Mutex::new(tail),
            room: Condvar::new(),
            work: Condvar::new(),
            synced: Condvar::new(),
            sync_waiters: AtomicU64::new(0),
            has_frames: AtomicBool::new(false),
            durable: AtomicU64::new(end.0),
            counters: Counters::default(),
            segments: Mutex::new(segments),
        })
    }

    pub(crate) fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().expect("WAL tail lock")
    }

    pub(crate) fn lock_segments(&self) -> MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().expect("WAL segments lock")
    }

    pub(crate) fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    pub(crate) fn stats(&self) -> WalStats {
        WalStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
        }
    }

    /// Places `frame` at the next position of the gathering batch. Returns
    /// its LSN and, if `wait`, the channel its durability is told on.
    pub(crate) fn submit(&self, frame: FrameBuf, wait: bool) -> Result<(Lsn, Option<Receiver<Done>>)> {
        let payload_bytes = frame.payload_bytes();
        if payload_bytes > self.payload_bytes_max {
            return Err(Error::FrameTooLarge { bytes: payload_bytes, limit: self.payload_bytes_max });
        }
        let crc = frame.payload_crc();
        let mut tail = self.lock_tail();
        let lsn = loop {
            if let Some(cause) = &tail.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if tail.closed {
                return Err(Error::Closed);
            }
            let segment_end = tail.segment_end;
            if let Some(lsn) = tail.gathering.place(&frame, crc, segment_end) {
                break lsn;
            }
            tail.writers_waiting += 1;
            if tail.committer_sleeping {
                // The batch cannot take this frame: the committer must swap it out.
                tail.committer_sleeping = false;
                self.work.notify_one();
            }
            tail = self.room.wait(tail).expect("WAL tail lock");
            tail.writers_waiting -= 1;
        };
        let done = if wait {
            let (tx, rx) = crossbeam_channel::bounded(1);
            tail.gathering.waiters.push(tx);
            Some(rx)
        } else {
            None
        };
        self.has_frames.store(true, Ordering::Release);
        let wake = std::mem::take(&mut tail.committer_sleeping);
        drop(tail);
        if wake {
            self.work.notify_one();
        }
        Ok((lsn, done))
    }

    /// Returns once every frame placed so far is durable.
    pub(crate) fn sync(&self) -> Result<()> {
        let mut tail = self.lock_tail();
        if !tail.gathering.is_empty() {
            // Its batch is acknowledged after every batch before it.
            let (tx, rx) = crossbeam_channel::bounded(1);
            tail.gathering.waiters.push(tx);
            let wake = std::mem::take(&mut tail.committer_sleeping);
            drop(tail);
            if wake {
                self.work.notify_one();
            }
            return rx.recv().map_err(|_| Error::Closed)?;
        }
        // Everything placed lies in batches in flight, before this one.
        let target = tail.gathering.start;
        // Counted before the check: a committer that publishes after the
        // check sees the count and wakes us (under this lock).
        self.sync_waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            if let Some(cause) = &tail.poisoned {
                break Err(Error::Poisoned { cause: cause.clone() });
            }
            if self.durable.load(Ordering::SeqCst) >= target.0 {
                break Ok(());
            }
            tail = self.synced.wait(tail).expect("WAL tail lock");
        };
        self.sync_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Wakes `sync` callers after the durable end moved (called by the
    /// committer after publishing it; the lock orders it after their check).
    pub(crate) fn wake_syncers(&self) {
        if self.sync_waiters.load(Ordering::SeqCst) > 0 {
            let _tail = self.lock_tail();
            self.synced.notify_all();
        }
    }

    /// Stops taking frames; the committer finishes what it has and exits.
    pub(crate) fn close(&self) {
        let mut tail = self.lock_tail();
        tail.closed = true;
        tail.committer_sleeping = false;
        self.work.notify_one();
        self.room.notify_all();
    }

    /// Refuses every later write with `Poisoned { cause }`, and fails the
    /// writers of the batch being gathered likewise.
    pub(crate) fn poison(&self, cause: Arc<Error>) {
        let mut tail = self.lock_tail();
        if tail.poisoned.is_none() {
            tracing::error!(error = %cause, "WAL write failed; refusing further writes");
            tail.poisoned = Some(cause.clone());
        }
        for waiter in tail.gathering.waiters.drain(..) {
            let _ = waiter.send(Err(Error::Poisoned { cause: cause.clone() }));
        }
        self.room.notify_all();
        self.synced.notify_all();
    }
}
