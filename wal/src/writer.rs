//! The group-commit writer.
//!
//! Writers seal their frames (LSN, CRC) under a short lock that hands out
//! positions and send them, in LSN order, to one committer thread. The
//! committer drains everything waiting into its (registered) buffer after
//! the partial tail block, pads to a whole block, and makes it durable with
//! one `write_sync` (a linked write → fdatasync chain on io_uring); then it
//! wakes every writer of the batch. While a batch is in flight the next one
//! gathers in the channel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};
use uring::{File, IoBuf, OpenMode, Storage, BLOCK_BYTES};

use crate::constants::{COMMIT_BUFFER_BYTES, FRAME_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::frame::{FrameBuf, FrameKind};
use crate::segment::{self, Segment};
use crate::{Lsn, WalOptions, WalStats};

/// How the committer tells a writer its frame is durable, or why not.
pub(crate) type Done = Result<(), Arc<uring::Error>>;

/// A frame on its way to the committer.
pub(crate) struct Pending {
    lsn: Lsn,
    frame: FrameBuf,
    waiter: Option<Sender<Done>>,
}

/// Where the next frame goes; guarded by the lock that orders the log.
pub(crate) struct Tail {
    next: Lsn,
    segment_end: Lsn,
    poisoned: Option<Arc<uring::Error>>,
    tx: Option<Sender<Pending>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
}

/// What the writer handles and the committer thread share.
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) payload_bytes_max: usize,
    pub(crate) tail: Mutex<Tail>,
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
        end: Lsn,
    ) -> (Arc<Shared>, Receiver<Pending>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let segment_end = segments.last().expect("a live segment").end();
        let tail = Tail { next: end, segment_end, poisoned: None, tx: Some(tx) };
        let shared = Shared {
            storage,
            dir,
            options,
            payload_bytes_max,
            tail: Mutex::new(tail),
            durable: AtomicU64::new(end.0),
            counters: Counters::default(),
            segments: Mutex::new(segments),
        };
        (Arc::new(shared), rx)
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

    /// Seals `frame` at the next position and hands it to the committer.
    /// Returns its LSN and, if `wait`, the channel its durability is told on.
    pub(crate) fn submit(&self, mut frame: FrameBuf, wait: bool) -> Result<(Lsn, Option<Receiver<Done>>)> {
        let payload_bytes = frame.payload_bytes();
        if payload_bytes > self.payload_bytes_max {
            return Err(Error::FrameTooLarge { bytes: payload_bytes, limit: self.payload_bytes_max });
        }
        let crc = frame.payload_crc();
        let (waiter, done) = if wait {
            let (tx, rx) = crossbeam_channel::bounded(1);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let term = self.options.term;
        let mut tail = self.lock_tail();
        if let Some(cause) = &tail.poisoned {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        let len = frame.frame_bytes() as u64;
        let durable = self.durable_lsn();
        if tail.next.0 + len > tail.segment_end.0 {
            let room = (tail.segment_end.0 - tail.next.0) as usize;
            if room >= FRAME_HEADER_BYTES {
                let mut pad = FrameBuf::with_capacity(room - FRAME_HEADER_BYTES);
                pad.resize_payload(room - FRAME_HEADER_BYTES);
                let pad_crc = pad.payload_crc();
                pad.seal(pad_crc, tail.next, durable, FrameKind::Padding, term);
                let tx = tail.tx.as_ref().ok_or(Error::Closed)?;
                tx.send(Pending { lsn: tail.next, frame: pad, waiter: None }).map_err(|_| Error::Closed)?;
            }
            tail.next = tail.segment_end;
            tail.segment_end = Lsn(tail.segment_end.0 + self.options.segment_bytes);
        }
        let lsn = tail.next;
        frame.seal(crc, lsn, durable, FrameKind::Batch, term);
        tail.next = Lsn(lsn.0 + len);
        let tx = tail.tx.as_ref().ok_or(Error::Closed)?;
        tx.send(Pending { lsn, frame, waiter }).map_err(|_| Error::Closed)?;
        Ok((lsn, done))
    }

    /// Stops taking frames; the committer finishes what it has and exits.
    pub(crate) fn close(&self) {
        self.lock_tail().tx = None;
    }

    fn poison(&self, cause: Arc<uring::Error>) {
        let mut tail = self.lock_tail();
        if tail.poisoned.is_none() {
            tracing::error!(error = %cause, "WAL write failed; refusing further writes");
            tail.poisoned = Some(cause);
        }
    }
}

/// The thread that owns the log's tail block and its buffer.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    rx: Receiver<Pending>,
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
}

impl Committer {
    /// A committer whose log ends at `end`, inside `segment`.
    pub(crate) fn new(shared: Arc<Shared>, rx: Receiver<Pending>, segment: Segment, end: Lsn) -> Result<Committer> {
        assert!(segment.contains(end), "the tail lies in the tail segment");
        let file = shared.storage.open(&segment.path, OpenMode::Existing)?;
        let mut buf = shared.storage.io_buffer(COMMIT_BUFFER_BYTES);
        let offset = end.0 - segment.start.0;
        let block_base = offset / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
        let fill = (offset - block_base) as usize;
        if fill > 0 {
            file.read_at(block_base, &mut buf[..BLOCK_BYTES])?;
            buf[fill..BLOCK_BYTES].fill(0);
        }
        let committer = Committer {
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
        };
        Ok(committer)
    }

    pub(crate) fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(pending) => pending,
                None => match self.rx.recv() {
                    Ok(pending) => pending,
                    Err(_) => return, // closed, and everything sent has been handled
                },
            };
            self.gather(first);
            self.commit();
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

    /// Makes the gathered batch durable and answers its writers.
    fn commit(&mut self) {
        if self.frames > 0 && self.poisoned.is_none() {
            let result = self.write_batch();
            self.answer(result);
        }
        if self.carry.as_ref().is_some_and(|c| c.lsn >= self.segment.end()) && self.poisoned.is_none() {
            let result = self.switch_segment();
            if let Err(e) = result {
                self.poison(e);
            }
        }
    }

    fn write_batch(&mut self) -> Result<(), uring::Error> {
        let padded = self.fill.next_multiple_of(BLOCK_BYTES);
        self.buf[self.fill..padded].fill(0);
        let end_offset = self.block_base + padded as u64;
        assert!(end_offset <= self.segment.size_bytes, "a batch stays inside its segment");
        self.file.write_sync(self.block_base, &self.buf, padded)?;
        let counters = &self.shared.counters;
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters.commits.fetch_add(self.frames, Ordering::Relaxed);
        let durable_before = self.shared.durable_lsn();
        counters.bytes.fetch_add(self.next.0 - durable_before.0, Ordering::Relaxed);
        assert!(self.next > durable_before, "a batch moves the durable end forward");
        self.shared.durable.store(self.next.0, Ordering::Release);
        // Keep the partial last block: the next batch rewrites it whole.
        let keep_from = self.fill / BLOCK_BYTES * BLOCK_BYTES;
        self.buf.copy_within(keep_from..self.fill, 0);
        self.block_base += keep_from as u64;
        self.fill -= keep_from;
        Ok(())
    }

    fn answer(&mut self, result: Result<(), uring::Error>) {
        let outcome = result.map_err(Arc::new);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        self.frames = 0;
        if let Err(cause) = outcome {
            self.poisoned = Some(cause.clone());
            self.shared.poison(cause);
        }
    }

    fn poison(&mut self, e: Error) {
        let cause = match e {
            Error::Storage(e) => Arc::new(e),
            Error::Poisoned { cause } => cause,
            other => Arc::new(uring::Error::Io {
                op: "open segment",
                path: self.shared.dir.clone(),
                offset: 0,
                source: std::io::Error::other(other.to_string()),
            }),
        };
        self.poisoned = Some(cause.clone());
        self.shared.poison(cause);
    }

    /// Moves the tail into the segment that starts where this one ends.
    fn switch_segment(&mut self) -> Result<()> {
        let start = self.segment.end();
        // Padding filled the old segment, or less than a header was left.
        assert!(start.0 - self.next.0 < FRAME_HEADER_BYTES as u64, "the old segment is full");
        self.next = start;
        let shared = &self.shared;
        let segment = segment::create(shared.storage.as_ref(), &shared.dir, start, shared.options.segment_bytes)?;
        self.file = shared.storage.open(&segment.path, OpenMode::Existing)?;
        shared.lock_segments().push(segment.clone());
        self.segment = segment;
        self.block_base = 0;
        self.fill = 0;
        Ok(())
    }
}
