//! The committer thread: it swaps out the batch writers gathered, seals it
//! (stamping the durable LSN it vouches for), hands it to the storage's
//! commit queue, and acknowledges batches strictly in log order, each only
//! once its own sync succeeded.
//!
//! How a batch is written and synced, and how many may be in flight at
//! once, is the commit queue's decision (`uring::CommitQueue`, chosen where
//! the storage was opened); the committer follows `depth`. Two state
//! machines: the [`Pipeline`] of batches in flight, and the committer
//! around it (taking batches, entering segments, poisoning).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use uring::{CommitEvent, CommitQueue, File, IoBuf, OpenMode};

use crate::error::{Error, Result};
use crate::segment::{self, Segment};
use crate::writer::{Batch, Done, Shared};
use crate::Lsn;

/// How long an idle committer polls for the next frame before sleeping:
/// a writer just answered usually sends its next frame within microseconds.
const IDLE_POLL: Duration = Duration::from_micros(50);

/// A batch handed to the commit queue and not yet acknowledged.
struct InFlight {
    ticket: u64,
    /// Where the next batch starts: the durable end once this one is.
    end: Lsn,
    frames: u64,
    waiters: Vec<Sender<Done>>,
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

/// What `take_batch` found.
enum Take {
    Batch(Batch),
    /// Nothing gathered (and not asked to wait).
    Empty,
    /// Closed, and nothing gathered.
    Closed,
}

/// A segment being created in the background: its start and its thread.
type Preparing = (Lsn, std::thread::JoinHandle<Result<Segment>>);

pub(crate) struct Committer {
    shared: Arc<Shared>,
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
}

impl Committer {
    /// A committer whose log ends at `end`, inside `segment` (open as `file`).
    pub(crate) fn new(
        shared: Arc<Shared>,
        queue: Box<dyn CommitQueue>,
        spare: IoBuf,
        segment: Segment,
        file: Arc<dyn File>,
        end: Lsn,
    ) -> Committer {
        assert!(segment.contains(end), "the tail lies in the tail segment");
        let pipeline = Pipeline { queue, batches: VecDeque::new(), spare: Some(spare) };
        Committer { shared, pipeline, segment, file, submitted_end: end, poisoned: false, preparing: None }
    }

    pub(crate) fn run(mut self) {
        loop {
            let idle = self.pipeline.is_empty();
            if !self.poisoned && self.pipeline.has_room(self.file.as_ref()) {
                match self.take_batch(idle) {
                    Take::Batch(batch) => {
                        self.commit(batch);
                        continue;
                    }
                    Take::Closed => break,
                    Take::Empty => {}
                }
            }
            if self.pipeline.is_empty() {
                if self.poisoned {
                    break;
                }
                continue;
            }
            let event = self.pipeline.queue.wait();
            self.handle(event);
        }
        // No file operation may outlive the log (its lock goes next).
        if let Some((_, handle)) = self.preparing.take() {
            let _ = handle.join();
        }
    }

    /// Swaps the gathered batch out for an empty one in the spare buffer.
    /// With `block`, waits for frames (or the close) first.
    fn take_batch(&mut self, block: bool) -> Take {
        if block {
            let polling_until = Instant::now() + IDLE_POLL;
            while !self.shared.has_frames.load(Ordering::Acquire) && Instant::now() < polling_until {
                std::thread::yield_now();
            }
        }
        let shared = &*self.shared;
        let mut tail = shared.lock_tail();
        if tail.gathering.is_empty() {
            if !block {
                return Take::Empty;
            }
            while tail.gathering.is_empty() && !tail.closed {
                tail.committer_sleeping = true;
                tail = shared.work.wait(tail).expect("WAL tail lock");
            }
            if tail.gathering.is_empty() {
                return Take::Closed;
            }
        }
        let next_start = tail.gathering.end();
        if next_start == tail.segment_end {
            tail.segment_end = Lsn(tail.segment_end.0 + shared.options.segment_bytes);
        }
        let spare = self.pipeline.spare.take().expect("room was checked");
        let batch = std::mem::replace(&mut tail.gathering, Batch::new(spare, next_start));
        shared.has_frames.store(false, Ordering::Release);
        if tail.writers_waiting > 0 {
            shared.room.notify_all();
        }
        Take::Batch(batch)
    }

    /// Seals `batch` and hands it to the commit queue.
    fn commit(&mut self, mut batch: Batch) {
        if let Err(e) = self.enter_segment_of(batch.start) {
            let waiters = std::mem::take(&mut batch.waiters);
            self.pipeline.spare = Some(batch.buf);
            self.poison(e, waiters);
            return;
        }
        let durable = self.shared.durable_lsn();
        let len = batch.seal(durable, self.shared.options.term);
        let (end, frames) = (batch.end(), batch.frames());
        let offset = batch.start.0 - self.segment.start.0;
        assert!(offset + len as u64 <= self.segment.size_bytes, "a batch stays inside its segment");
        let ticket = self.pipeline.queue.submit(&self.file, offset, batch.buf, len);
        self.pipeline.batches.push_back(InFlight { ticket, end, frames, waiters: batch.waiters, synced: false });
        self.submitted_end = end;
        self.prepare_next_segment();
    }

    fn handle(&mut self, event: CommitEvent) {
        match event {
            CommitEvent::Written { ticket, buf, result } => {
                assert!(self.pipeline.spare.is_none(), "one write at a time: the other buffer gathers");
                self.pipeline.spare = Some(buf);
                if let Err(e) = result {
                    self.fail(ticket, Error::Storage(e));
                }
            }
            CommitEvent::Synced { ticket, result: Ok(()) } => {
                self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                for batch in self.pipeline.synced(ticket) {
                    self.made_durable(batch.end, batch.frames);
                    for waiter in batch.waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            CommitEvent::Synced { ticket, result: Err(e) } => self.fail(ticket, Error::Storage(e)),
        }
    }

    /// Publishes `end` as the durable end of the log.
    fn made_durable(&self, end: Lsn, frames: u64) {
        let counters = &self.shared.counters;
        let before = self.shared.durable_lsn();
        assert!(end > before, "a batch moves the durable end forward");
        counters.commits.fetch_add(frames, Ordering::Relaxed);
        counters.bytes.fetch_add(end.0 - before.0, Ordering::Relaxed);
        self.shared.durable.store(end.0, Ordering::SeqCst);
        self.shared.wake_syncers();
    }

    /// Batch `ticket` failed with `error`: its writers get that error.
    fn fail(&mut self, ticket: u64, error: Error) {
        if self.poisoned {
            return; // a later event of a batch already failed
        }
        let at = self.pipeline.batches.iter().position(|b| b.ticket == ticket).expect("a batch in flight");
        let batch = self.pipeline.batches.remove(at).expect("found");
        self.poison(error, batch.waiters);
    }

    /// `error` failed the writers in `failed`, who get it; every other
    /// writer not yet answered, and every later one, gets `Poisoned` naming
    /// it. Batches in flight are failed too: a sync that succeeds after
    /// another failed proves nothing of the failed one's data.
    fn poison(&mut self, error: Error, failed: Vec<Sender<Done>>) {
        let cause = Arc::new(error.clone());
        for waiter in failed {
            let _ = waiter.send(Err(error.clone()));
        }
        for batch in self.pipeline.batches.drain(..) {
            for waiter in batch.waiters {
                let _ = waiter.send(Err(Error::Poisoned { cause: cause.clone() }));
            }
        }
        self.poisoned = true;
        self.shared.poison(cause);
    }

    /// Opens the segment a batch starting at `start` goes into, if it is
    /// the next one.
    fn enter_segment_of(&mut self, start: Lsn) -> Result<()> {
        if self.segment.contains(start) {
            return Ok(());
        }
        assert_eq!(start, self.segment.end(), "batches fill segments in order");
        let segment = self.take_segment(start)?;
        self.file = self.shared.storage.open(&segment.path, OpenMode::Existing)?;
        self.shared.lock_segments().push(segment.clone());
        self.segment = segment;
        Ok(())
    }

    /// Starts creating the segment after the current one in the background,
    /// once the current one is half full: early enough to be ready, late
    /// enough that its zeros do not compete with commits just after open.
    fn prepare_next_segment(&mut self) {
        let used = self.submitted_end.0 - self.segment.start.0;
        if self.preparing.is_some() || used < self.segment.size_bytes / 2 {
            return;
        }
        let start = self.segment.end();
        let shared = &self.shared;
        let (storage, dir, size_bytes) = (shared.storage.clone(), shared.dir.clone(), shared.options.segment_bytes);
        let handle = std::thread::Builder::new()
            .name("ringkv-wal-segment".into())
            .spawn(move || segment::create(storage.as_ref(), &dir, start, size_bytes))
            .expect("spawn the segment preparer");
        self.preparing = Some((start, handle));
    }

    /// The segment starting at `start`: the one prepared in the background
    /// if it is ready and right, else one created now.
    fn take_segment(&mut self, start: Lsn) -> Result<Segment> {
        if let Some((prepared_start, handle)) = self.preparing.take() {
            match handle.join() {
                Ok(Ok(segment)) if prepared_start == start => return Ok(segment),
                Ok(Err(e)) => tracing::warn!(error = %e, "preparing the next WAL segment failed; creating it now"),
                _ => {}
            }
        }
        let shared = &self.shared;
        segment::create(shared.storage.as_ref(), &shared.dir, start, shared.options.segment_bytes)
    }
}
