//! The committer thread: it owns the log's tail block and the commit
//! buffers, gathers waiting frames into batches and makes them durable.
//!
//! Two ways to commit, by backend:
//! - **pipelined** (io_uring; the simulated disk when asked): a batch is
//!   one write → sync chain on a commit queue. As soon as its write
//!   completes, the next batch (gathered meanwhile in the second buffer) is
//!   written, while earlier syncs are still in flight. The next write
//!   rewrites the shared partial block only after the previous write
//!   completed, so it never races it; and each sync starts after its own
//!   write, so the sync of batch K makes every batch up to K durable.
//! - **one at a time** (syscalls): `write_sync`, then answer, then the next.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use uring::{CommitEvent, CommitQueue, File, IoBuf, OpenMode, BLOCK_BYTES};

use crate::constants::{COMMIT_BUFFER_BYTES, FRAME_HEADER_BYTES, PIPELINE_DEPTH};
use crate::error::{Error, Result};
use crate::segment::{self, Segment};
use crate::writer::{Done, Pending, Shared};
use crate::Lsn;

/// How long an idle committer polls for the next frame before sleeping.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// A batch written (or being written) and not yet durable.
struct InFlight {
    ticket: u64,
    /// The LSN just past its last frame.
    end: Lsn,
    frames: u64,
    waiters: Vec<Sender<Done>>,
    offset: u64,
    len: usize,
}

/// What the channel had for the committer.
enum Next {
    Frame(Pending),
    Empty,
    Closed,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    rx: Receiver<Pending>,
    /// The buffer the next batch gathers in.
    buf: IoBuf,
    file: Arc<dyn File>,
    segment: Segment,
    /// File offset of `buf[0]`: the start of the block the tail is in.
    block_base: u64,
    /// Bytes of `buf` that hold log data.
    fill: usize,
    /// The LSN the next frame must have.
    next: Lsn,
    /// Writers waiting on the batch being gathered.
    waiters: Vec<Sender<Done>>,
    /// Frames in the batch being gathered.
    frames: u64,
    carry: Option<Pending>,
    poisoned: Option<Arc<uring::Error>>,
    /// Pipelined commits: the queue, the buffer not gathering (home when no
    /// write is in flight), and the batches not yet durable, oldest first.
    queue: Option<Box<dyn CommitQueue>>,
    spare: Option<IoBuf>,
    in_flight: VecDeque<InFlight>,
    write_in_flight: bool,
    /// A commit whose short write was finished by hand: its cancelled sync is expected.
    repaired: Option<u64>,
    /// The next segment, being created (zero-filled, synced) in the
    /// background so that crossing into it does not stall commits.
    preparing: Option<Preparing>,
}

/// A segment being created in the background: its start and its thread.
type Preparing = (Lsn, std::thread::JoinHandle<Result<Segment>>);

impl Committer {
    /// A committer whose log ends at `end`, inside `segment`.
    pub(crate) fn new(shared: Arc<Shared>, rx: Receiver<Pending>, segment: Segment, end: Lsn) -> Result<Committer> {
        assert!(segment.contains(end), "the tail lies in the tail segment");
        let file = shared.storage.open(&segment.path, OpenMode::Existing)?;
        let mut queue = shared.storage.commit_queue();
        let (mut buf, spare) = match queue.as_mut() {
            Some(queue) => {
                let mut buffers = queue.buffers(COMMIT_BUFFER_BYTES);
                let spare = buffers.pop().expect("two commit buffers");
                (buffers.pop().expect("two commit buffers"), Some(spare))
            }
            None => (shared.storage.io_buffer(COMMIT_BUFFER_BYTES), None),
        };
        let offset = end.0 - segment.start.0;
        let block_base = offset / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
        let fill = (offset - block_base) as usize;
        if fill > 0 {
            file.read_at(block_base, &mut buf[..BLOCK_BYTES])?;
            buf[fill..BLOCK_BYTES].fill(0);
        }
        Ok(Committer {
            shared,
            rx,
            buf,
            file,
            segment,
            block_base,
            fill,
            next: end,
            waiters: Vec::new(),
            frames: 0,
            carry: None,
            poisoned: None,
            queue,
            spare,
            in_flight: VecDeque::new(),
            write_in_flight: false,
            repaired: None,
            preparing: None,
        })
    }

    pub(crate) fn run(self) {
        let preparing = if self.queue.is_some() { self.run_pipelined() } else { self.run_one_at_a_time() };
        // No file operation may outlive the log (the store's lock goes next).
        if let Some((_, handle)) = preparing {
            let _ = handle.join();
        }
    }

    /// Starts creating the segment after the current one in the background,
    /// once the current one is half full: early enough to be ready, late
    /// enough that its 64 MiB of zeros do not compete with commits just
    /// after open.
    fn prepare_next_segment(&mut self) {
        let used = self.next.0 - self.segment.start.0;
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

    fn run_one_at_a_time(mut self) -> Option<Preparing> {
        loop {
            let first = match self.next_frame(true) {
                Next::Frame(pending) => pending,
                Next::Empty | Next::Closed => return self.preparing.take(), // closed, all handled
            };
            self.gather(first);
            if self.frames > 0 && self.poisoned.is_none() {
                let result = self.write_batch();
                self.answer(result);
            }
            self.switch_if_due();
            self.prepare_next_segment();
        }
    }

    fn run_pipelined(mut self) -> Option<Preparing> {
        loop {
            let idle = self.in_flight.is_empty() && !self.write_in_flight;
            if !self.write_in_flight && self.in_flight.len() < PIPELINE_DEPTH {
                match self.next_frame(idle) {
                    Next::Frame(first) => {
                        self.gather(first);
                        if self.frames > 0 && self.poisoned.is_none() {
                            self.submit();
                            self.prepare_next_segment();
                            continue;
                        }
                    }
                    Next::Closed if idle => return self.preparing.take(),
                    Next::Closed | Next::Empty => {}
                }
                if idle {
                    self.switch_if_due();
                    continue;
                }
            }
            if self.in_flight.is_empty() && !self.write_in_flight {
                continue;
            }
            let event = self.queue.as_mut().expect("pipelined").wait();
            self.handle(event);
        }
    }

    /// The carried frame, or one from the channel (waiting for it if `block`).
    fn next_frame(&mut self, block: bool) -> Next {
        if let Some(pending) = self.carry.take() {
            return Next::Frame(pending);
        }
        if block {
            // A writer just answered usually sends its next frame within
            // microseconds: poll briefly before sleeping, which saves it a
            // wake-up of this thread.
            let polling_until = std::time::Instant::now() + IDLE_POLL;
            loop {
                match self.rx.try_recv() {
                    Ok(pending) => return Next::Frame(pending),
                    Err(TryRecvError::Disconnected) => return Next::Closed,
                    Err(TryRecvError::Empty) if std::time::Instant::now() < polling_until => std::thread::yield_now(),
                    Err(TryRecvError::Empty) => break,
                }
            }
            return self.rx.recv().map_or(Next::Closed, Next::Frame);
        }
        match self.rx.try_recv() {
            Ok(pending) => Next::Frame(pending),
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) => Next::Closed,
        }
    }

    /// Places `first` and then everything already waiting, until the buffer
    /// is full or the log moves on to the next segment.
    fn gather(&mut self, first: Pending) {
        let mut next = Some(first);
        while let Some(pending) = next.take() {
            if !self.place(pending) {
                break;
            }
            next = self.rx.try_recv().ok();
        }
    }

    /// Copies a frame into the batch. Returns false (and keeps the frame
    /// for the next batch) if it belongs to a new segment or does not fit.
    fn place(&mut self, pending: Pending) -> bool {
        if let Some(cause) = &self.poisoned {
            if let Some(waiter) = pending.waiter {
                let _ = waiter.send(Err(cause.clone()));
            }
            return true;
        }
        if pending.lsn >= self.segment.end() {
            self.carry = Some(pending);
            return false;
        }
        assert_eq!(pending.lsn, self.next, "frames reach the committer in LSN order");
        let bytes = pending.frame.as_bytes();
        if (self.fill + bytes.len()).next_multiple_of(BLOCK_BYTES) > self.buf.len() {
            assert!(self.frames > 0, "an empty buffer holds any frame");
            self.carry = Some(pending);
            return false;
        }
        self.buf[self.fill..self.fill + bytes.len()].copy_from_slice(bytes);
        self.fill += bytes.len();
        self.next = Lsn(self.next.0 + bytes.len() as u64);
        self.frames += 1;
        if let Some(waiter) = pending.waiter {
            self.waiters.push(waiter);
        }
        true
    }

    /// Pads the gathered batch to a whole block; returns its length.
    fn pad(&mut self) -> usize {
        let padded = self.fill.next_multiple_of(BLOCK_BYTES);
        self.buf[self.fill..padded].fill(0);
        assert!(self.block_base + padded as u64 <= self.segment.size_bytes, "a batch stays inside its segment");
        padded
    }

    /// Moves past the whole blocks of the batch just written, keeping the
    /// partial last block at the start of `into` (the next batch rewrites it).
    fn advance(&mut self, into_spare: bool) {
        let keep_from = self.fill / BLOCK_BYTES * BLOCK_BYTES;
        if into_spare {
            let mut next = self.spare.take().expect("the spare buffer is home when no write is in flight");
            next[..self.fill - keep_from].copy_from_slice(&self.buf[keep_from..self.fill]);
            let written = std::mem::replace(&mut self.buf, next);
            self.spare = Some(written);
        } else {
            self.buf.copy_within(keep_from..self.fill, 0);
        }
        self.block_base += keep_from as u64;
        self.fill -= keep_from;
        self.frames = 0;
    }

    fn write_batch(&mut self) -> Result<(), uring::Error> {
        let padded = self.pad();
        self.file.write_sync(self.block_base, &self.buf, padded)?;
        self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
        let end = self.next;
        self.made_durable(end, self.frames);
        self.advance(false);
        Ok(())
    }

    /// Publishes `end` as the durable end of the log.
    fn made_durable(&self, end: Lsn, frames: u64) {
        let counters = &self.shared.counters;
        let before = self.shared.durable_lsn();
        assert!(end > before, "a batch moves the durable end forward");
        counters.commits.fetch_add(frames, Ordering::Relaxed);
        counters.bytes.fetch_add(end.0 - before.0, Ordering::Relaxed);
        self.shared.durable.store(end.0, Ordering::Release);
    }

    fn answer(&mut self, result: Result<(), uring::Error>) {
        let outcome = result.map_err(Arc::new);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        self.frames = 0;
        if let Err(cause) = outcome {
            self.poison(cause);
        }
    }

    /// Starts the gathered batch on the queue; the next batch gathers in the spare buffer.
    fn submit(&mut self) {
        let padded = self.pad();
        let (offset, frames, end) = (self.block_base, self.frames, self.next);
        let waiters = std::mem::take(&mut self.waiters);
        self.advance(true);
        let written = self.spare.take().expect("the batch's buffer");
        let ticket = self.queue.as_mut().expect("pipelined").submit(&self.file, offset, written, padded);
        self.in_flight.push_back(InFlight { ticket, end, frames, waiters, offset, len: padded });
        self.write_in_flight = true;
    }

    fn handle(&mut self, event: CommitEvent) {
        match event {
            CommitEvent::Written { ticket, buf, result } => {
                self.write_in_flight = false;
                let batch = self.in_flight.iter().find(|b| b.ticket == ticket).map(|b| (b.offset, b.len));
                if let (Some((offset, len)), None) = (batch, &self.poisoned) {
                    match result {
                        Ok(n) if n == len => {}
                        Ok(n) => self.finish_short_write(ticket, &buf, offset, n, len),
                        Err(e) => self.poison(Arc::new(e)),
                    }
                }
                self.spare = Some(buf);
            }
            CommitEvent::Synced { ticket, result } => match result {
                Ok(()) => {
                    self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    self.durable_through(ticket);
                }
                Err(e) if self.repaired == Some(ticket) && e.raw_os_error() == Some(libc::ECANCELED) => {}
                Err(e) => self.poison(Arc::new(e)),
            },
        }
    }

    /// A short write broke the chain (its sync is cancelled): write the rest
    /// and sync on our own; the batch is durable only if both succeed.
    fn finish_short_write(&mut self, ticket: u64, buf: &IoBuf, offset: u64, written: usize, len: usize) {
        let rest = self.file.write_at(offset + written as u64, &buf[written..len]).and_then(|()| self.file.sync_data());
        match rest {
            Ok(()) => {
                self.repaired = Some(ticket);
                self.durable_through(ticket);
            }
            Err(e) => self.poison(Arc::new(e)),
        }
    }

    /// Answers every batch up to `ticket`: a sync covers all writes before it.
    fn durable_through(&mut self, ticket: u64) {
        while self.in_flight.front().is_some_and(|b| b.ticket <= ticket) {
            let batch = self.in_flight.pop_front().expect("checked");
            self.made_durable(batch.end, batch.frames);
            for waiter in batch.waiters {
                let _ = waiter.send(Ok(()));
            }
        }
    }

    /// Fails every writer not yet answered, and all later ones.
    fn poison(&mut self, cause: Arc<uring::Error>) {
        for batch in self.in_flight.drain(..) {
            for waiter in batch.waiters {
                let _ = waiter.send(Err(cause.clone()));
            }
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(cause.clone()));
        }
        self.frames = 0;
        self.poisoned = Some(cause.clone());
        self.shared.poison(cause);
    }

    /// Moves to the next segment if the carried frame belongs there. Only
    /// called with nothing in flight: a sync of the new segment would not
    /// cover writes to the old one.
    fn switch_if_due(&mut self) {
        let due = self.carry.as_ref().is_some_and(|c| c.lsn >= self.segment.end());
        if due && self.poisoned.is_none() {
            if let Err(e) = self.switch_segment() {
                let cause = match e {
                    Error::Storage(e) => Arc::new(e),
                    Error::Poisoned { cause } => cause,
                    other => Arc::new(uring::Error::Io {
                        op: "create segment",
                        path: self.shared.dir.clone(),
                        offset: 0,
                        source: std::io::Error::other(other.to_string()),
                    }),
                };
                self.poison(cause);
            }
        }
    }

    fn switch_segment(&mut self) -> Result<()> {
        let start = self.segment.end();
        // Padding filled the old segment, or less than a header was left.
        assert!(start.0 - self.next.0 < FRAME_HEADER_BYTES as u64, "the old segment is full");
        self.next = start;
        let segment = self.take_segment(start)?;
        self.file = self.shared.storage.open(&segment.path, OpenMode::Existing)?;
        self.shared.lock_segments().push(segment.clone());
        self.segment = segment;
        self.block_base = 0;
        self.fill = 0;
        Ok(())
    }
}
