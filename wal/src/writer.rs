//! Group commit without a committer thread: writers lead in turn.
//!
//! Under the tail lock a writer takes the next LSN and copies its frame
//! into the batch being gathered (its CRC over the payload was computed
//! before, outside the lock). Then, if no one leads, it becomes the leader:
//! it holds the commit state (`committer.rs`: the commit queue, the
//! segment, the batches in flight), swaps the gathered batch out, writes and
//! syncs it, acknowledges it, and steps down once its own frame is durable.
//! A lone writer thus commits on its own thread with no hand-off. Writers
//! arriving meanwhile gather the next batch; each waiting one sleeps on its
//! batch's bell (`bells.rs`, a futex word per batch), so an
//! acknowledgement wakes exactly that batch's writers, with one system call
//! (no herd, no mutex to re-take). A leader steps down only with nothing in
//! flight (io_uring cancels a thread's requests when the thread exits, and
//! a leader is a caller's thread), and wakes one writer of the batch
//! gathered meanwhile to lead it, after the writers it acknowledged.
//!
//! Frames placed without a waiter (`NoSync`) wake a flusher thread, which
//! leads as any writer would, so they are durable as soon as the log can
//! make them, with no other write needed.
//!
//! A batch starts at a block boundary, so no write ever covers bytes an
//! earlier write covered: a write torn by a power cut can only damage its
//! own, unacknowledged, frames. If the batch is full, or the next frame
//! belongs to the next segment, the writer leads to make room, or waits for
//! the leader to.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use uring::{IoBuf, Storage, BLOCK_BYTES};

use crate::bells::Bells;
use crate::committer::Committer;
use crate::constants::{FRAME_HEADER_BYTES, GATHER_WRITERS_MAX, GATHER_YIELDS_MAX};
use crate::error::{Error, Result};
use crate::frame::{seal_frame, FrameBuf, FrameKind, Seal};
use crate::segment::Segment;
use crate::{Lsn, WalOptions, WalStats};

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
    /// Its number: batches are numbered in log order.
    pub(crate) seq: u64,
    /// Writers waiting for it to be durable (asleep on its bell, rung by
    /// whoever acknowledges or fails it).
    pub(crate) waiting: usize,
    /// What its waiting writers run once it is durable, in LSN order.
    pub(crate) applies: Vec<(Lsn, Apply)>,
    /// No more frames fit in its segment: the next one goes into the next
    /// batch, at the next segment's start.
    ends_segment: bool,
    /// A checkpoint cut the log at its end: the next frame goes into the
    /// next batch.
    closed: bool,
}

impl Batch {
    pub(crate) fn new(buf: IoBuf, start: Lsn, seq: u64) -> Batch {
        assert_eq!(start.0 % BLOCK_BYTES as u64, 0, "a batch starts at a block boundary");
        Batch {
            buf,
            start,
            fill: 0,
            slots: Vec::new(),
            seq,
            waiting: 0,
            applies: Vec::new(),
            ends_segment: false,
            closed: false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Batch frames (not padding) it holds.
    pub(crate) fn frames(&self) -> u64 {
        self.slots.iter().filter(|s| s.kind == FrameKind::Batch).count() as u64
    }

    /// Where its frames end (the next frame would go here).
    pub(crate) fn fill_end(&self) -> Lsn {
        Lsn(self.start.0 + self.fill as u64)
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
        if self.ends_segment || self.closed {
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

/// What a caller runs once its frame is durable, given the frame's LSN
/// (the store applies its batch to the memtable): run by the leader that
/// acknowledges the frame, in LSN order with the rest of the group, before
/// the caller is woken; never run if the frame's batch fails.
pub type Apply = Box<dyn FnOnce(Lsn) + Send>;

/// The writers of one batch, as the leader carries them from its taking
/// to its acknowledgement: its number (their bell) and their `Apply`s.
pub(crate) struct Group {
    pub(crate) seq: u64,
    pub(crate) applies: Vec<(Lsn, Apply)>,
}

/// The leadership: the commit state, held by one thread at a time. If its
/// thread panics while it leads, its drop poisons the log and wakes every
/// writer, so that none waits for a leader that is gone. The commit state
/// is left as the panic left it (its batches in flight too) and never led
/// again: its mutex stays poisoned.
pub(crate) struct Leadership<'a> {
    shared: &'a Shared,
    committer: MutexGuard<'a, Committer>,
    /// Its thread was already unwinding when it took the leadership (a
    /// drop that writes): only a panic that began while leading counts,
    /// the rule `MutexGuard` follows for its own poisoning (review 15).
    unwinding_before: bool,
}

impl Deref for Leadership<'_> {
    type Target = Committer;
    fn deref(&self) -> &Committer {
        &self.committer
    }
}

impl DerefMut for Leadership<'_> {
    fn deref_mut(&mut self) -> &mut Committer {
        &mut self.committer
    }
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.unwinding_before {
            self.shared.leader_panicked(&mut self.committer);
        }
    }
}

/// What a writer finds when it tries to lead.
enum Lead<'a> {
    Taken(Leadership<'a>),
    /// Someone leads: wait for it to ring or to make room.
    Busy,
    /// A leader panicked: the log is poisoned.
    Gone,
}

/// A frame's place in the log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) lsn: Lsn,
    /// Where the frame ends: it is durable once the durable end reaches this.
    pub(crate) end: Lsn,
    /// It has an `Apply`: done only once the applied end reaches `end`.
    pub(crate) applies: bool,
    /// The batch it was placed in: its writer sleeps on that bell.
    pub(crate) seq: u64,
}

/// The batch whose write or sync failed.
pub(crate) struct Failure {
    /// Its extent in the log.
    pub(crate) start: Lsn,
    pub(crate) end: Lsn,
    pub(crate) error: Error,
}

/// What writers share under the tail lock.
pub(crate) struct Tail {
    /// The batch writers copy frames into.
    pub(crate) gathering: Batch,
    /// End of the segment the gathering batch lies in.
    pub(crate) segment_end: Lsn,
    pub(crate) poisoned: Option<Arc<Error>>,
    /// The batch that failed (its writers get the error itself).
    pub(crate) failure: Option<Failure>,
    /// Frames whose `Apply` panicked, with the error their writers get.
    pub(crate) apply_panics: Vec<(Lsn, Arc<Error>)>,
    pub(crate) closed: bool,
    /// Writers asleep on `Shared::room`.
    pub(crate) writers_waiting: usize,
    /// A frame was placed without a waiter since the flusher last led.
    nosync_pending: bool,
    /// The flusher is asleep on `Shared::flush`.
    flusher_sleeping: bool,
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
    pub(crate) gather_yields: AtomicU64,
}

/// What the writer handles share.
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) payload_bytes_max: usize,
    pub(crate) tail: Mutex<Tail>,
    /// Writers wait here for room in the gathering batch.
    pub(crate) room: Condvar,
    /// The flusher waits here for frames placed without a waiter.
    flush: Condvar,
    /// The commit state; whoever holds it leads. A waiter that finds it
    /// held sleeps, and is not left asleep: every ring or `room` wake-up
    /// follows the publication of a state the waiter re-checks (durable or
    /// applied end, a batch swapped out under the tail lock, poison), and
    /// every normal release is followed by a `step_down` that reads the
    /// tail after releasing and rings the gathering batch or wakes `room`.
    /// Holders that ring nothing: `Lead::Gone` and `lead_blocking`'s error
    /// (the log was poisoned, with `ring_every`, before any poisoned hold)
    /// and `Wal::drop` (no concurrent callers).
    leader: Mutex<Committer>,
    /// Set (under the tail lock) when the log is poisoned.
    poisoned: AtomicBool,
    /// Where waiting writers sleep, by batch.
    pub(crate) bells: Bells,
    /// The end of the log acknowledged durable.
    pub(crate) durable: AtomicU64,
    /// Frames placed so far with a writer waiting for them (counted under
    /// the tail lock, read without it).
    waited_placed: AtomicU64,
    /// Writers that waited for the batch acknowledged last.
    last_batch_waiting: AtomicU64,
    /// The end of the log whose frames' `Apply`s have all run (behind
    /// `durable` while a leader runs them).
    pub(crate) applied: AtomicU64,
    /// An `Apply` panicked: no further `Apply` runs and the applied end
    /// stays where that frame starts.
    applies_stopped: AtomicBool,
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
        committer: Committer,
    ) -> Shared {
        let segment_end = segments.last().expect("a live segment").end();
        let end = gathering.start;
        let tail = Tail {
            gathering,
            segment_end,
            poisoned: None,
            failure: None,
            apply_panics: Vec::new(),
            closed: false,
            writers_waiting: 0,
            nosync_pending: false,
            flusher_sleeping: false,
        };
        Shared {
            storage,
            dir,
            options,
            payload_bytes_max,
            tail: Mutex::new(tail),
            room: Condvar::new(),
            flush: Condvar::new(),
            leader: Mutex::new(committer),
            poisoned: AtomicBool::new(false),
            bells: Bells::new(),
            durable: AtomicU64::new(end.0),
            waited_placed: AtomicU64::new(0),
            last_batch_waiting: AtomicU64::new(0),
            applied: AtomicU64::new(end.0),
            applies_stopped: AtomicBool::new(false),
            counters: Counters::default(),
            segments: Mutex::new(segments),
        }
    }

    pub(crate) fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().expect("WAL tail lock")
    }

    pub(crate) fn lock_segments(&self) -> MutexGuard<'_, Vec<Segment>> {
        self.segments.lock().expect("WAL segments lock")
    }

    pub(crate) fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::SeqCst))
    }

    pub(crate) fn stats(&self) -> WalStats {
        WalStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
            gather_yields: self.counters.gather_yields.load(Ordering::Relaxed),
        }
    }

    /// Places `frame` at the next position of the gathering batch, leading
    /// (or waiting for the leader) to make room if it does not fit. With
    /// `wait`, the calling thread is registered to be woken when the batch
    /// is durable.
    pub(crate) fn place(&self, frame: &FrameBuf, wait: bool, mut apply: Option<Apply>) -> Result<Ticket> {
        let payload_bytes = frame.payload_bytes();
        if payload_bytes > self.payload_bytes_max {
            return Err(Error::FrameTooLarge { bytes: payload_bytes, limit: self.payload_bytes_max });
        }
        refuse_reentry()?;
        let crc = frame.payload_crc();
        let mut tail = self.lock_tail();
        loop {
            if let Some(cause) = &tail.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if tail.closed {
                return Err(Error::Closed);
            }
            let segment_end = tail.segment_end;
            if let Some(lsn) = tail.gathering.place(frame, crc, segment_end) {
                let end = Lsn(lsn.0 + frame.as_bytes().len() as u64);
                let applies = apply.is_some();
                let seq = tail.gathering.seq;
                if wait {
                    tail.gathering.waiting += 1;
                    self.waited_placed.fetch_add(1, Ordering::Relaxed);
                    if let Some(apply) = apply.take() {
                        tail.gathering.applies.push((lsn, apply));
                    }
                } else {
                    if let Some(apply) = apply.take() {
                        // Applied before the tail lock is released, so before
                        // any leader can take this batch and publish an
                        // applied end past it.
                        if let Err(message) = run_apply(apply, lsn) {
                            // Stopped and poisoned in one critical section:
                            // a writer whose Apply a leader skips must see
                            // the poison when it is woken (else it parks
                            // again and nobody wakes it).
                            self.applies_stopped.store(true, Ordering::SeqCst);
                            return Err(self.apply_panicked_locked(&mut tail, lsn, message));
                        }
                    }
                    // Nobody waits for it: the flusher commits it.
                    tail.nosync_pending = true;
                    if std::mem::take(&mut tail.flusher_sleeping) {
                        self.flush.notify_one();
                    }
                }
                return Ok(Ticket { lsn, end, applies, seq });
            }
            // Tried holding the tail (`try_lock` never blocks, so the lock
            // order, leader then tail, still holds): a leader busy now
            // takes the tail to step down only after this writer waits.
            match self.try_lead() {
                Lead::Taken(mut leader) => {
                    drop(tail);
                    leader.make_room(self);
                    self.step_down(leader);
                    tail = self.lock_tail();
                }
                Lead::Busy => {
                    // The leader swaps the batch out, or wakes us when it
                    // leaves.
                    tail.writers_waiting += 1;
                    tail = self.room.wait(tail).expect("WAL tail lock");
                    tail.writers_waiting -= 1;
                }
                // A leader panicked: it poisoned the log (under this tail
                // lock) before it let the leadership go.
                Lead::Gone => continue,
            }
        }
    }

    /// Returns once the frame of `ticket` (placed with `wait`) is durable,
    /// leading when no one else does.
    ///
    /// # Errors
    /// The error that failed its batch; `Poisoned` if another batch failed
    /// first.
    pub(crate) fn await_durable(&self, ticket: Ticket) -> Result<()> {
        loop {
            let seen = self.bells.seen(ticket.seq);
            if let Some(outcome) = self.outcome(ticket) {
                return outcome;
            }
            match self.try_lead() {
                Lead::Taken(mut leader) => {
                    self.gather(ticket.end);
                    leader.lead(self, ticket.end);
                    self.step_down(leader);
                }
                // Woken when the batch is acknowledged or failed, or to lead
                // it (spuriously too: every wake-up re-checks). The holder
                // releases it and then, in `step_down`, rings the batch
                // gathering (this one, if it was not swapped out) or the
                // batches it settled: a ring after the failed `try_lock`,
                // so after `seen` was read (see `Shared::leader`).
                Lead::Busy => self.bells.wait(ticket.seq, seen),
                // A leader panicked; it poisoned the log first, so the
                // outcome is known now.
                Lead::Gone => {
                    return self
                        .outcome(ticket)
                        .unwrap_or(Err(Error::Poisoned { cause: Arc::new(Error::LeaderPanicked) }))
                }
            }
        }
    }

    /// A new leader lets the writers just woken join its batch before it
    /// takes it: if more than one writer and fewer than
    /// [`GATHER_WRITERS_MAX`] waited for the last batch, it yields the CPU
    /// while waiting writers keep arriving, at most [`GATHER_YIELDS_MAX`]
    /// times (a `sched_yield` returns at once where nothing else is
    /// runnable). `NoSync` frames count for neither, so a lone writer never
    /// yields (review 21). Nor does a leader whose frame up to `end` became
    /// durable between its check and taking the lead.
    ///
    /// Without it the first writer back from an acknowledged batch led at
    /// once with the few frames gathered during the sync, and the writers
    /// settled into two cohorts taking turns, half of them per sync. Where
    /// syncs are the bound that halves the commits per sync. A/B on this
    /// machine's disk, three alternating runs, io_uring: 4 writers
    /// 23.9-26.6k -> 32.9-35.0k commits/s (2.5 -> 3.6 per sync), 16 writers
    /// 46-57k -> 67-74k (8.6 -> 13.7 per sync; p99 2.7-5.0 -> 0.4-1.0 ms).
    /// Past the limit two cohorts, overlapping one's CPU work with the
    /// other's sync, do better: 64 writers gave 122-133k when gathering
    /// after any batch (55 per sync), 133-170k stopping at 32 (32 per sync).
    /// Measured again once waiters no longer spun on a busy leader
    /// (2026-12-04, no checkpoints, three alternating runs, 64 writers):
    /// gathering after any batch 110-134k (0.65-0.99x the loop, 51-55 per
    /// sync, p99 1.3-3.2 ms) against 122-138k stopping at 32 (0.77-1.05x,
    /// 32 per sync, p99 0.9-1.2 ms).
    fn gather(&self, end: Lsn) {
        let last = self.last_batch_waiting.load(Ordering::Relaxed);
        if last <= 1 || last >= GATHER_WRITERS_MAX || self.durable_lsn() >= end {
            return;
        }
        for _ in 0..GATHER_YIELDS_MAX {
            let before = self.waited_placed.load(Ordering::Relaxed);
            self.counters.gather_yields.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            if self.waited_placed.load(Ordering::Relaxed) == before {
                return;
            }
        }
    }

    /// How `ticket` ended, if it has: durable (and, with an `Apply`,
    /// applied), or failed.
    fn outcome(&self, ticket: Ticket) -> Option<Result<()>> {
        let done = |shared: &Shared| match ticket.applies {
            true => shared.applied.load(Ordering::SeqCst) >= ticket.end.0,
            false => shared.durable.load(Ordering::SeqCst) >= ticket.end.0,
        };
        // Done, then the flag: the flag is raised before a panicked
        // `Apply`'s end is published, so a writer that sees that end sees
        // the flag too.
        let done_now = done(self);
        if !self.poisoned.load(Ordering::SeqCst) {
            return done_now.then_some(Ok(()));
        }
        let tail = self.lock_tail();
        if let Some((_, error)) = tail.apply_panics.iter().find(|(lsn, _)| *lsn == ticket.lsn) {
            return Some(Err((**error).clone()));
        }
        // A batch acknowledged before the failure stays acknowledged (and
        // its leader still applies it).
        if done(self) {
            return Some(Ok(()));
        }
        let cause = tail.poisoned.clone().expect("the flag is set with the cause");
        // After an `Apply` panicked no other runs: this one never will.
        if ticket.applies && self.applies_stopped.load(Ordering::SeqCst) {
            return Some(Err(Error::Poisoned { cause }));
        }
        if self.durable.load(Ordering::SeqCst) >= ticket.end.0 {
            return None;
        }
        Some(Err(match &tail.failure {
            Some(f) if f.start <= ticket.lsn && ticket.lsn < f.end => f.error.clone(),
            _ => Error::Poisoned { cause },
        }))
    }

    /// Returns once every frame placed so far is durable: takes the
    /// leadership (waiting for the current leader, who leaves nothing in
    /// flight) and commits up to the last frame placed.
    pub(crate) fn sync(&self) -> Result<()> {
        refuse_reentry()?;
        let mut leader = self.lead_blocking()?;
        let ticket = {
            let tail = self.lock_tail();
            let end = tail.gathering.fill_end();
            Ticket { lsn: Lsn(end.0.saturating_sub(1)), end, applies: false, seq: tail.gathering.seq }
        };
        leader.lead(self, ticket.end);
        self.step_down(leader);
        self.outcome(ticket).expect("a leader commits up to its target or the log is poisoned")
    }

    /// Runs `f` with the end of the batch being gathered, holding the
    /// tail, and closes that batch: a cut is always where a batch starts (a
    /// block boundary), so that recovery can begin reading at a cut.
    pub(crate) fn cut<R>(&self, f: impl FnOnce(Lsn) -> R) -> Result<R> {
        refuse_reentry()?;
        let mut tail = self.lock_tail();
        if !tail.gathering.is_empty() {
            tail.gathering.closed = true;
        }
        // A panic in `f` (the caller's code) must not poison the tail
        // mutex, which a leader stepping down needs before it wakes anyone
        // (review 15: a writer parked for good): it poisons the log instead.
        let end = tail.gathering.end();
        match run_within(Within::Cut, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(end)))) {
            Ok(r) => Ok(r),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let error = Error::CutPanicked { lsn: end, message };
                self.applies_stopped.store(true, Ordering::SeqCst);
                self.poison_locked(&mut tail, Arc::new(error.clone()), None);
                Err(error)
            }
        }
    }

    /// Takes the leadership if no one has it.
    fn try_lead(&self) -> Lead<'_> {
        match self.leader.try_lock() {
            Ok(committer) => {
                Lead::Taken(Leadership { shared: self, committer, unwinding_before: std::thread::panicking() })
            }
            Err(TryLockError::WouldBlock) => Lead::Busy,
            // A leader that panicked left the mutex poisoned: no one leads
            // again. (A thread already unwinding when it led does not
            // poison it: `MutexGuard` follows the rule `Leadership` does.)
            Err(TryLockError::Poisoned(_)) => Lead::Gone,
        }
    }

    /// Takes the leadership, waiting for the current leader to step down.
    ///
    /// # Errors
    /// `Poisoned` if a leader panicked: the commit state is unusable.
    pub(crate) fn lead_blocking(&self) -> Result<Leadership<'_>> {
        let Ok(committer) = self.leader.lock() else {
            let cause = self.tail.lock().unwrap_or_else(PoisonError::into_inner).poisoned.clone();
            return Err(Error::Poisoned { cause: cause.unwrap_or_else(|| Arc::new(Error::LeaderPanicked)) });
        };
        Ok(Leadership { shared: self, committer, unwinding_before: std::thread::panicking() })
    }

    /// A leader's thread panicked: no `Apply` runs any more, the log is
    /// poisoned, and every waiting writer
    /// (those of the batches the leader held too, wherever the panic left
    /// them) is woken, to find the log poisoned: only after the poisoning,
    /// else one could find the log healthy and a leader busy, and sleep
    /// again for good. Runs during the unwinding, so nothing here may
    /// panic: locks are taken even if poisoned.
    /// It rings before its guard is released: a writer woken while the
    /// guard is still held finds the log poisoned, and returns, before it
    /// would look at the leadership.
    fn leader_panicked(&self, committer: &mut Committer) {
        self.applies_stopped.store(true, Ordering::SeqCst);
        // Never run now: free what they hold rather than keep it to close.
        committer.drop_applies();
        {
            let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
            // Also wakes those waiting for room.
            self.poison_locked(&mut tail, Arc::new(Error::LeaderPanicked), None);
        }
        self.bells.ring_every();
    }

    /// Gives up the leadership (with nothing in flight): wakes the writers
    /// waiting for room and those of the batches this leader acknowledged,
    /// then one writer of the batch gathered meanwhile to lead it (last:
    /// one of the writers just woken often leads it first, with the frames
    /// they added). Their `Apply`s run before the leadership is released.
    pub(crate) fn step_down(&self, mut leader: Leadership<'_>) {
        assert!(leader.is_idle(), "a leader leaves nothing in flight");
        let (mut acknowledged, acknowledged_end) = leader.take_acknowledged();
        // Applied while still leading: the next leader's group must not be
        // published as applied before this one has run (review of the CI
        // failure: a writer saw the next group's applied end and returned
        // before its own write was in the memtable).
        apply(self, &mut acknowledged, acknowledged_end);
        // Released before anyone is woken: a writer that found it held
        // sleeps, and must find it free when it wakes.
        drop(leader);
        let next = {
            // Even if a panic elsewhere poisoned the tail mutex: the
            // writers below must be woken whatever happened.
            let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.writers_waiting > 0 {
                self.room.notify_all();
            }
            (tail.gathering.waiting > 0).then_some(tail.gathering.seq)
        };
        for group in &acknowledged {
            self.bells.ring_all(group.seq);
        }
        if let Some(next) = next {
            // Nothing is in flight, so a writer asleep on this bell is one
            // of that batch's, and the one woken leads it; unless an earlier
            // leader, descheduled before it rang its own groups, still owes
            // a ring to a batch eight back: then this wake-up may reach one
            // of those writers, and that leader's ring (of the whole word)
            // wakes this batch's writers too, later but never lost.
            self.bells.ring_one(next);
        }
    }

    /// Publishes `end` as the durable end of the log.
    pub(crate) fn made_durable(&self, end: Lsn, frames: u64, waiting: usize) {
        let before = self.durable_lsn();
        assert!(end > before, "a batch moves the durable end forward");
        self.counters.commits.fetch_add(frames, Ordering::Relaxed);
        self.last_batch_waiting.store(waiting as u64, Ordering::Relaxed);
        self.counters.bytes.fetch_add(end.0 - before.0, Ordering::Relaxed);
        self.durable.store(end.0, Ordering::SeqCst);
    }

    /// The applied end of the log.
    pub(crate) fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::SeqCst))
    }

    /// Stops taking frames (and the flusher).
    pub(crate) fn close(&self) {
        let mut tail = self.lock_tail();
        tail.closed = true;
        self.room.notify_all();
        self.flush.notify_one();
    }

    /// The flusher thread: leads whenever frames were placed without a
    /// waiter (`NoSync`), so that they are written and synced as soon as
    /// the log can, not only with the next waiting write. It waits for its
    /// own I/O, like every leader. Returns once the log is closed.
    pub(crate) fn run_flusher(&self) {
        loop {
            {
                let mut tail = self.lock_tail();
                while !tail.closed && !tail.nosync_pending {
                    tail.flusher_sleeping = true;
                    tail = self.flush.wait(tail).expect("WAL tail lock");
                }
                if tail.closed {
                    return;
                }
                tail.nosync_pending = false;
            }
            let Ok(mut leader) = self.lead_blocking() else { return };
            let target = self.lock_tail().gathering.fill_end();
            leader.lead(self, target);
            self.step_down(leader);
        }
    }

    /// Records that the `Apply` of the frame at `lsn` panicked: its writer
    /// gets [`Error::ApplyPanicked`], and the log refuses further writes
    /// (the store no longer matches it).
    fn apply_panicked(&self, lsn: Lsn, message: String) -> Error {
        self.apply_panicked_locked(&mut self.lock_tail(), lsn, message)
    }

    /// [`Shared::apply_panicked`], holding the tail.
    fn apply_panicked_locked(&self, tail: &mut Tail, lsn: Lsn, message: String) -> Error {
        let error = Arc::new(Error::ApplyPanicked { lsn, message });
        tail.apply_panics.push((lsn, error.clone()));
        self.poison_locked(tail, error.clone(), None);
        Error::clone(&error)
    }

    /// Refuses every later write with `Poisoned { cause }`; the writers of
    /// `failure`'s batch get its error, every other writer not yet answered
    /// `Poisoned`. Wakes the gathering batch's writers (the leader wakes
    /// those of the batches it held).
    pub(crate) fn poison(&self, cause: Arc<Error>, failure: Option<Failure>) {
        let mut tail = self.lock_tail();
        self.poison_locked(&mut tail, cause, failure);
    }

    fn poison_locked(&self, tail: &mut Tail, cause: Arc<Error>, failure: Option<Failure>) {
        if tail.poisoned.is_none() {
            tracing::error!(error = %cause, "WAL write failed; refusing further writes");
            tail.poisoned = Some(cause);
            tail.failure = failure;
        }
        self.poisoned.store(true, Ordering::SeqCst);
        self.room.notify_all();
        self.bells.ring_every();
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

/// Runs the `Apply`s of acknowledged writers in order, publishes the
/// applied end (`end`, the last acknowledged batch's), then wakes them.
/// Groups of failed batches carry no `Apply` and are only woken.
pub(crate) fn wake(shared: &Shared, mut groups: Vec<Group>, end: Option<Lsn>) {
    apply(shared, &mut groups, end);
    for group in &groups {
        shared.bells.ring_all(group.seq);
    }
}

/// Runs the `Apply`s of acknowledged writers in order and publishes the
/// applied end. Only while leading: a later leader publishes a further
/// end, which must not come before these have run.
pub(crate) fn apply(shared: &Shared, groups: &mut [Group], end: Option<Lsn>) {
    for (lsn, apply) in groups.iter_mut().flat_map(|g| g.applies.drain(..)) {
        if shared.applies_stopped.load(Ordering::SeqCst) {
            continue; // its writer gets `Poisoned`
        }
        if let Err(message) = run_apply(apply, lsn) {
            // Every frame before this one is applied; none from it on
            // will be. Published before the log is poisoned, so a writer
            // that sees the poison sees its own frame as applied if it is.
            shared.applied.fetch_max(lsn.0, Ordering::SeqCst);
            shared.applies_stopped.store(true, Ordering::SeqCst);
            shared.apply_panicked(lsn, message);
        }
    }
    if let Some(end) = end {
        if !shared.applies_stopped.load(Ordering::SeqCst) {
            shared.applied.fetch_max(end.0, Ordering::SeqCst);
        }
    }
}

/// A callback of the log this thread is running: calling back into the
/// log from one would wait for itself (an `Apply` runs holding the
/// leadership or the tail, a cut's function holding the tail).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Nothing,
    Apply,
    Cut,
}

thread_local! {
    static WITHIN: std::cell::Cell<Within> = const { std::cell::Cell::new(Within::Nothing) };
}

/// Runs `f` marked as `within` (catching nothing: the callers do).
fn run_within<R>(within: Within, f: impl FnOnce() -> R) -> R {
    /// Clears the mark even if `f` unwinds.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            WITHIN.with(|flag| flag.set(Within::Nothing));
        }
    }
    WITHIN.with(|flag| flag.set(within));
    let _clear = Clear;
    f()
}

/// Runs `apply`, catching a panic: one must not unwind through a leader
/// (it would leave the leadership poisoned and every writer parked for
/// good). Returns the panic's message.
fn run_apply(apply: Apply, lsn: Lsn) -> std::result::Result<(), String> {
    let result = run_within(Within::Apply, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(lsn))));
    result.map_err(|panic| {
        let message = panic_message(panic.as_ref());
        // Not dropped: a payload whose Drop panics would unwind from here.
        std::mem::forget(panic);
        message
    })
}

/// Refuses a call back into the log from one of its callbacks.
pub(crate) fn refuse_reentry() -> Result<()> {
    match WITHIN.with(std::cell::Cell::get) {
        Within::Nothing => Ok(()),
        Within::Apply => Err(Error::WithinApply),
        Within::Cut => Err(Error::WithinCut),
    }
}
