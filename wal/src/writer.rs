//! The group-commit writer.
//!
//! Writers seal their frames (LSN, CRC) under a short lock that hands out
//! positions and send them, in LSN order, to one committer thread
//! (`committer.rs`), which batches them, makes each batch durable and wakes
//! its writers. While a batch is in flight the next one gathers in the
//! channel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};
use uring::Storage;

use crate::constants::FRAME_HEADER_BYTES;
use crate::error::{Error, Result};
use crate::frame::{FrameBuf, FrameKind};
use crate::segment::Segment;
use crate::{Lsn, WalOptions, WalStats};

/// How the committer tells a writer its frame is durable, or why not.
pub(crate) type Done = Result<(), Arc<uring::Error>>;

/// A frame on its way to the committer.
pub(crate) struct Pending {
    pub(crate) lsn: Lsn,
    pub(crate) frame: FrameBuf,
    pub(crate) waiter: Option<Sender<Done>>,
}

/// Where the next frame goes; guarded by the lock that orders the log.
pub(crate) struct Tail {
    next: Lsn,
    segment_end: Lsn,
    poisoned: Option<Arc<uring::Error>>,
    tx: Option<Sender<Pending>>,
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

    pub(crate) fn poison(&self, cause: Arc<uring::Error>) {
        let mut tail = self.lock_tail();
        if tail.poisoned.is_none() {
            tracing::error!(error = %cause, "WAL write failed; refusing further writes");
            tail.poisoned = Some(cause);
        }
    }
}
