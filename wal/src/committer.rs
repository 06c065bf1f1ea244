//! The commit state a leader holds (`writer.rs` says how leadership moves):
//! it swaps out the batch writers gathered, seals it (stamping the durable
//! LSN it vouches for), hands it to the storage's commit queue, and
//! acknowledges batches strictly in log order, each only once its own sync
//! succeeded.
//!
//! How a batch is written and synced, and how many may be in flight at
//! once, is the commit queue's decision (`uring::CommitQueue`, chosen where
//! the storage was opened); the leader follows `depth`. Two state
//! machines: the [`Pipeline`] of batches in flight, and the [`Committer`]
//! around it (taking batches, entering segments, poisoning).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use uring::{CommitEvent, CommitQueue, File, IoBuf, OpenMode};

use crate::error::{Error, Result};
use crate::segment::{self, Segment};
use crate::writer::{self, Batch, Failure, Group, Shared};
use crate::Lsn;

/// A batch handed to the commit queue and not yet acknowledged.
struct InFlight {
    ticket: u64,
    start: Lsn,
    /// Where the next batch starts: the durable end once this one is.
    end: Lsn,
    frames: u64,
    /// How many of its frames have a writer waiting for them.
    waiting: usize,
    /// Writers waiting for it.
    group: Group,
    /// Its own sync succeeded.
    synced: bool,
}

/// The batches in flight, oldest first, and the commit queue they are on.
struct Pipeline {
    queue: Box<dyn CommitQueue>,
    batches: VecDeque<InFlight>,
    /// The buffer not in use: home when no write is in flight.
    spare: Option<IoBuf>,
}

impl Pipeline {
    fn is_empty(&self) -> bool {
        self.queue.in_flight() == 0
    }

    /// Whether another batch may go in: a buffer is free and the queue's
    /// depth for `file` allows one more awaiting its sync.
    fn has_room(&self, file: &dyn File) -> bool {
        self.spare.is_some() && self.batches.len() < self.queue.depth(file)
    }

    /// Marks `ticket` synced; returns the batches now acknowledged, in order.
    fn synced(&mut self, ticket: u64) -> Vec<InFlight> {
        if let Some(batch) = self.batches.iter_mut().find(|b| b.ticket == ticket) {
            batch.synced = true;
        }
        let mut done = Vec::new();
        while self.batches.front().is_some_and(|b| b.synced) {
            done.push(self.batches.pop_front().expect("checked"));
        }
        done
    }
}

/// A segment being created in the background: its start and its thread.
type Preparing = (Lsn, std::thread::JoinHandle<Result<Segment>>);

pub(crate) struct Committer {
    pipeline: Pipeline,
    /// The segment the last batch went into, and its file.
    segment: Segment,
    file: Arc<dyn File>,
    /// End of the last batch submitted.
    submitted_end: Lsn,
    poisoned: bool,
    /// The next segment, being created (zero-filled, synced) in the
    /// background so that crossing into it does not stall commits.
    preparing: Option<Preparing>,
    /// Writers of batches acknowledged (or failed) not yet woken: woken
    /// (their `Apply`s run first) before the leader blocks, or after it
    /// hands over.
    acknowledged: Vec<Group>,
    /// End of the last batch acknowledged whose `Apply`s have not run.
    acknowledged_end: Option<Lsn>,
}

impl Committer {
    /// The commit state of a log ending at `end`, inside `segment` (open as
    /// `file`).
    pub(crate) fn new(
        queue: Box<dyn CommitQueue>,
        spare: IoBuf,
        segment: Segment,
        file: Arc<dyn File>,
        end: Lsn,
    ) -> Committer {
        assert!(segment.contains(end), "the tail lies in the tail segment");
        let pipeline = Pipeline { queue, batches: VecDeque::new(), spare: Some(spare) };
        Committer {
            pipeline,
            segment,
            file,
            submitted_end: end,
            poisoned: false,
            preparing: None,
            acknowledged: Vec::new(),
            acknowledged_end: None,
        }
    }

    /// Commits until the log is durable to `target` (or poisoned, or there
    /// is nothing left to commit), then lets what is still in flight
    /// finish: see [`Committer::settle`].
    pub(crate) fn lead(&mut self, shared: &Shared, target: Lsn) {
        while !self.poisoned && shared.durable_lsn() < target {
            if !self.step(shared) {
                break;
            }
        }
        self.settle(shared);
    }

    /// Commits until the gathering batch has been swapped out (so a frame
    /// that did not fit may try again), or the log is poisoned; then lets
    /// what is in flight finish.
    pub(crate) fn make_room(&mut self, shared: &Shared) {
        let gathering = shared.lock_tail().gathering.seq;
        while !self.poisoned && shared.lock_tail().gathering.seq == gathering {
            if !self.step(shared) {
                break;
            }
        }
        self.settle(shared);
    }

    /// Commits everything gathered, lets it finish, and joins the segment
    /// preparer.
    pub(crate) fn drain(&mut self, shared: &Shared) {
        while !self.poisoned && self.step(shared) {}
        self.settle(shared);
        if let Some((_, handle)) = self.preparing.take() {
            let _ = handle.join();
        }
    }

    /// Handles events until nothing is in flight (also after a failure).
    /// A leader steps down only then: io_uring cancels the requests a
    /// thread submitted when that thread exits, and a leader is any
    /// caller's thread, free to exit once its write returns.
    fn settle(&mut self, shared: &Shared) {
        while !self.pipeline.is_empty() {
            self.wait(shared);
        }
    }

    /// Handles the next event, having first woken the writers already
    /// acknowledged (they must not wait for a later batch's I/O).
    fn wait(&mut self, shared: &Shared) {
        let (acknowledged, end) = self.take_acknowledged();
        writer::wake(shared, acknowledged, end);
        let event = self.pipeline.queue.wait();
        self.handle(shared, event);
    }

    /// The writers acknowledged (or failed) and not yet woken, and the end
    /// of the last batch acknowledged.
    pub(crate) fn take_acknowledged(&mut self) -> (Vec<Group>, Option<Lsn>) {
        (std::mem::take(&mut self.acknowledged), self.acknowledged_end.take())
    }

    /// Moves the writers of a failed batch to be woken, without their
    /// `Apply`s (nothing of a failed batch is applied).
    fn failed(&mut self, mut group: Group) {
        group.applies.clear();
        self.acknowledged.push(group);
    }

    /// One step: submit the gathered batch if there is room, else handle
    /// the next event. False if there was nothing to do.
    fn step(&mut self, shared: &Shared) -> bool {
        if self.pipeline.has_room(self.file.as_ref()) {
            if let Some(batch) = self.take_batch(shared) {
                self.commit(shared, batch);
                return true;
            }
        }
        if self.pipeline.is_empty() {
            return false;
        }
        self.wait(shared);
        true
    }

    /// Drops the `Apply`s of every batch it holds (after a leader's panic,
    /// when none will run). The batches in flight stay: their buffers may
    /// still be in the kernel's hands.
    pub(crate) fn drop_applies(&mut self) {
        let in_flight = self.pipeline.batches.iter_mut().map(|b| &mut b.group);
        for group in self.acknowledged.iter_mut().chain(in_flight) {
            group.applies.clear();
        }
    }

    /// Whether nothing is in flight (as a leader leaves it).
    pub(crate) fn is_idle(&self) -> bool {
        self.pipeline.is_empty()
    }

    /// Swaps the gathered batch out for an empty one in the spare buffer;
    /// `None` if nothing is gathered.
    fn take_batch(&mut self, shared: &Shared) -> Option<Batch> {
        let mut tail = shared.lock_tail();
        // Poisoned elsewhere (a panicked `Apply`): its writers were told
        // so, and nothing gathered is written any more.
        if tail.gathering.is_empty() || !tail.is_healthy() {
            return None;
        }
        let next_start = tail.gathering.end();
        if next_start == tail.segment_end {
            tail.segment_end = Lsn(tail.segment_end.0 + shared.options.segment_bytes);
        }
        let spare = self.pipeline.spare.take().expect("room was checked");
        let next_seq = tail.gathering.seq + 1;
        let batch = std::mem::replace(&mut tail.gathering, Batch::new(spare, next_start, next_seq));
        if tail.writers_waiting > 0 {
            shared.room.notify_all();
        }
        Some(batch)
    }

    /// Seals `batch` and hands it to the commit queue.
    fn commit(&mut self, shared: &Shared, mut batch: Batch) {
        if let Err(e) = self.enter_segment_of(shared, batch.start) {
            let (start, end) = (batch.start, batch.end());
            self.failed(Group { seq: batch.seq, applies: std::mem::take(&mut batch.applies) });
            self.pipeline.spare = Some(batch.buf);
            self.poison(shared, e, Some((start, end)));
            return;
        }
        let durable = shared.durable_lsn();
        let len = batch.seal(durable, shared.options.term);
        let (start, end, frames, waiting) = (batch.start, batch.end(), batch.frames(), batch.waiting);
        let group = Group { seq: batch.seq, applies: std::mem::take(&mut batch.applies) };
        let offset = batch.start.0 - self.segment.start.0;
        assert!(offset + len as u64 <= self.segment.size_bytes, "a batch stays inside its segment");
        let ticket = self.pipeline.queue.submit(&self.file, offset, batch.buf, len);
        self.pipeline.batches.push_back(InFlight { ticket, start, end, frames, waiting, group, synced: false });
        self.submitted_end = end;
        self.prepare_next_segment(shared);
    }

    fn handle(&mut self, shared: &Shared, event: CommitEvent) {
        match event {
            CommitEvent::Written { ticket, buf, result } => {
                assert!(self.pipeline.spare.is_none(), "one write at a time: the other buffer gathers");
                self.pipeline.spare = Some(buf);
                if let Err(e) = result {
                    self.fail(shared, ticket, Error::Storage(e));
                }
            }
            CommitEvent::Synced { ticket, result: Ok(()) } => {
                if self.poisoned {
                    return; // proves nothing once another batch failed
                }
                shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                for batch in self.pipeline.synced(ticket) {
                    shared.made_durable(batch.end, batch.frames, batch.waiting);
                    self.acknowledged.push(batch.group);
                    self.acknowledged_end = Some(batch.end);
                }
            }
            CommitEvent::Synced { ticket, result: Err(e) } => self.fail(shared, ticket, Error::Storage(e)),
        }
    }

    /// Batch `ticket` failed with `error`: its writers get that error.
    fn fail(&mut self, shared: &Shared, ticket: u64, error: Error) {
        if self.poisoned {
            return; // a later event of a batch already failed
        }
        let batch = self.pipeline.batches.iter().find(|b| b.ticket == ticket).expect("a batch in flight");
        let range = (batch.start, batch.end);
        self.poison(shared, error, Some(range));
    }

    /// `error` failed the batch at `failed`, whose writers get it; every
    /// other writer not yet answered, and every later one, gets `Poisoned`
    /// naming it. Batches in flight are failed too: a sync that succeeds
    /// after another failed proves nothing of the failed one's data.
    fn poison(&mut self, shared: &Shared, error: Error, failed: Option<(Lsn, Lsn)>) {
        let cause = Arc::new(error.clone());
        let failure = failed.map(|(start, end)| Failure { start, end, error });
        let in_flight: Vec<InFlight> = self.pipeline.batches.drain(..).collect();
        for batch in in_flight {
            self.failed(batch.group);
        }
        self.poisoned = true;
        shared.poison(cause, failure);
    }

    /// Opens the segment a batch starting at `start` goes into, if it is
    /// the next one.
    fn enter_segment_of(&mut self, shared: &Shared, start: Lsn) -> Result<()> {
        if self.segment.contains(start) {
            return Ok(());
        }
        assert_eq!(start, self.segment.end(), "batches fill segments in order");
        let segment = self.take_segment(shared, start)?;
        self.file = shared.storage.open(&segment.path, OpenMode::Existing)?;
        shared.lock_segments().push(segment.clone());
        self.segment = segment;
        Ok(())
    }

    /// Starts creating the segment after the current one in the background,
    /// once the current one is half full: early enough to be ready, late
    /// enough that its zeros do not compete with commits just after open.
    fn prepare_next_segment(&mut self, shared: &Shared) {
        let used = self.submitted_end.0 - self.segment.start.0;
        if self.preparing.is_some() || used < self.segment.size_bytes / 2 {
            return;
        }
        let start = self.segment.end();
        let (storage, dir, size_bytes) = (shared.storage.clone(), shared.dir.clone(), shared.options.segment_bytes);
        let handle = std::thread::Builder::new()
            .name("ringkv-wal-segment".into())
            .spawn(move || segment::create(storage.as_ref(), &dir, start, size_bytes))
            .expect("spawn the segment preparer");
        self.preparing = Some((start, handle));
    }

    /// The segment starting at `start`: the one prepared in the background
    /// if it is ready and right, else one created now.
    fn take_segment(&mut self, shared: &Shared, start: Lsn) -> Result<Segment> {
        if let Some((prepared_start, handle)) = self.preparing.take() {
            match handle.join() {
                Ok(Ok(segment)) if prepared_start == start => return Ok(segment),
                Ok(Err(e)) => tracing::warn!(error = %e, "preparing the next WAL segment failed; creating it now"),
                _ => {}
            }
        }
        segment::create(shared.storage.as_ref(), &shared.dir, start, shared.options.segment_bytes)
    }
}
