//! Pipelined commits: a queue that takes a write and its sync, returns at
//! once, and reports their completions as events, so that the next batch
//! can be gathered and written while earlier syncs are in flight.
//!
//! Contract: the write of a commit is followed by a sync of the same file
//! that starts only after the write completed (an `IO_LINK` chain on
//! io_uring). A successful sync of commit K therefore covers the writes of
//! every commit up to K. A short write breaks the chain (its sync reports
//! `ECANCELED`); the caller must finish it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};

use crate::buf::IoBuf;
use crate::error::{Error, Result};
use crate::ring::Ring;
use crate::sim::SimStorage;
use crate::storage::File;

/// A completion reported by [`CommitQueue::wait`].
#[derive(Debug)]
pub enum CommitEvent {
    /// The write of commit `ticket` finished; its buffer is handed back.
    Written {
        /// Which commit.
        ticket: u64,
        /// The buffer given to `submit`.
        buf: IoBuf,
        /// Bytes written (less than asked for: a short write), or the error.
        result: Result<usize>,
    },
    /// The sync after the write of commit `ticket` finished.
    Synced {
        /// Which commit.
        ticket: u64,
        /// `Err` with `ECANCELED` if the write came up short.
        result: Result<()>,
    },
}

/// A queue of write → sync commits on one thread (the WAL committer).
pub trait CommitQueue: Send {
    /// Registered buffers for `submit`, at least `len` bytes each (two).
    fn buffers(&mut self, len: usize) -> Vec<IoBuf>;

    /// Starts writing `buf[..len]` at `offset` of `file`, then a data sync
    /// of `file`. Returns the commit's ticket (increasing). The buffer comes
    /// back in [`CommitEvent::Written`].
    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64;

    /// Blocks until the next completion. Panics if nothing is in flight.
    fn wait(&mut self) -> CommitEvent;

    /// Operations (writes and syncs) submitted and not yet reported.
    fn in_flight(&self) -> usize;
}

enum Op {
    Write { ticket: u64, buf: IoBuf, path: std::path::PathBuf, offset: u64, _file: Arc<dyn File> },
    Sync { ticket: u64, path: std::path::PathBuf, _file: Arc<dyn File> },
}

/// The io_uring commit queue: a ring of its own, owned by one thread.
pub(crate) struct UringQueue {
    ring: Arc<Ring>,
    ops: HashMap<u64, Op>,
    ready: VecDeque<CommitEvent>,
    next_ticket: u64,
}

impl UringQueue {
    pub(crate) fn new(ring: Arc<Ring>) -> UringQueue {
        UringQueue { ring, ops: HashMap::new(), ready: VecDeque::new(), next_ticket: 1 }
    }

    fn reap(&mut self) {
        let mut ring = self.ring.lock();
        let mut cqes = Vec::new();
        for cqe in ring.completion() {
            cqes.push((cqe.user_data(), cqe.result()));
        }
        drop(ring);
        for (user_data, res) in cqes {
            let op = self.ops.remove(&user_data).expect("a completion for an operation we submitted");
            let os = |op: &'static str, path: &std::path::Path, offset: u64, errno: i32| {
                Error::io(op, path, offset, io::Error::from_raw_os_error(errno))
            };
            self.ready.push_back(match op {
                Op::Write { ticket, buf, path, offset, .. } => {
                    let result = if res >= 0 { Ok(res as usize) } else { Err(os("write", &path, offset, -res)) };
                    CommitEvent::Written { ticket, buf, result }
                }
                Op::Sync { ticket, path, .. } => {
                    let result = if res == 0 { Ok(()) } else { Err(os("fdatasync", &path, 0, -res)) };
                    CommitEvent::Synced { ticket, result }
                }
            });
        }
    }
}

impl CommitQueue for UringQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        (0..2).map(|_| self.ring.take_buffer(len).unwrap_or_else(|| IoBuf::plain(len))).collect()
    }

    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        let fd = types::Fd(file.raw_fd().expect("io_uring commits need a real file"));
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let data = &buf[..len];
        let len32 = u32::try_from(len).expect("a batch fits a u32");
        let write = match buf.fixed {
            Some(slot) if slot.ring_id == self.ring.id() => {
                opcode::WriteFixed::new(fd, data.as_ptr(), len32, slot.index).offset(offset).build()
            }
            _ => opcode::Write::new(fd, data.as_ptr(), len32).offset(offset).build(),
        };
        let write = write.flags(squeue::Flags::IO_LINK).user_data(ticket * 2);
        let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(ticket * 2 + 1);
        let path = file.path().to_owned();
        {
            let mut ring = self.ring.lock();
            // SAFETY: the buffer is moved into `ops` below and stays there,
            // alive and untouched, until the write's completion is reaped;
            // the file is kept open likewise. The chain goes in whole.
            unsafe { ring.submission().push_multiple(&[write, sync]) }
                .expect("the ring has room: in-flight is bounded");
            loop {
                match ring.submit() {
                    Ok(_) => break,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {
                        drop(ring);
                        self.reap();
                        ring = self.ring.lock();
                    }
                    Err(e) => {
                        eprintln!("ringkv: io_uring_enter failed while submitting a commit: {e}");
                        std::process::abort();
                    }
                }
            }
        }
        self.ops.insert(ticket * 2, Op::Write { ticket, buf, path: path.clone(), offset, _file: file.clone() });
        self.ops.insert(ticket * 2 + 1, Op::Sync { ticket, path, _file: file.clone() });
        ticket
    }

    fn wait(&mut self) -> CommitEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            assert!(!self.ops.is_empty(), "wait with nothing in flight");
            match self.ring.lock().submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    eprintln!("ringkv: io_uring_enter failed with commits in flight: {e}");
                    std::process::abort();
                }
            }
            self.reap();
        }
    }

    fn in_flight(&self) -> usize {
        self.ops.len() + self.ready.len()
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still read the buffers: wait for every completion.
        while !self.ops.is_empty() {
            let _ = self.wait();
        }
    }
}

/// The simulated disk's commit queue: a write happens at submit; syncs
/// happen, in order, when waited for. So a later batch's write can reach
/// the disk before an earlier batch's sync, and a power cut can fall between.
pub(crate) struct SimQueue {
    pending_syncs: VecDeque<(u64, Arc<dyn File>)>,
    ready: VecDeque<CommitEvent>,
    next_ticket: u64,
    _storage: SimStorage,
}

impl SimQueue {
    pub(crate) fn new(storage: SimStorage) -> SimQueue {
        SimQueue { pending_syncs: VecDeque::new(), ready: VecDeque::new(), next_ticket: 1, _storage: storage }
    }
}

impl CommitQueue for SimQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        (0..2).map(|_| IoBuf::plain(len)).collect()
    }

    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let result = file.write_at(offset, &buf[..len]).map(|()| len);
        let failed = result.is_err();
        self.ready.push_back(CommitEvent::Written { ticket, buf, result });
        if failed {
            let cancelled = Error::io("fdatasync", file.path(), 0, io::Error::from_raw_os_error(libc::ECANCELED));
            self.ready.push_back(CommitEvent::Synced { ticket, result: Err(cancelled) });
        } else {
            self.pending_syncs.push_back((ticket, file.clone()));
        }
        ticket
    }

    fn wait(&mut self) -> CommitEvent {
        if let Some(event) = self.ready.pop_front() {
            return event;
        }
        let (ticket, file) = self.pending_syncs.pop_front().expect("wait with nothing in flight");
        CommitEvent::Synced { ticket, result: file.sync_data() }
    }

    fn in_flight(&self) -> usize {
        self.pending_syncs.len() + self.ready.len()
    }
}
