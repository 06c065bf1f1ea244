//! Commit queues: how a batch of a log is made durable. One queue per log,
//! owned by the thread that commits; [`crate::Storage::commit_queue`] picks
//! the implementation once, where the storage was opened:
//!
//! - io_uring, [`SyncMode::LinkedFsync`]: a write → `Fsync(DATASYNC)` chain
//!   linked with `IO_LINK`; on O_DIRECT files several batches at once;
//! - io_uring, [`SyncMode::RwfDsync`]: one write carrying `RWF_DSYNC`;
//! - syscalls (the syscall backend, and io_uring's [`SyncMode::Syscalls`],
//!   the default): `pwrite`, then `fdatasync`, on the leader's thread;
//! - the simulated disk's queue (`sim.rs`).
//!
//! The contract every queue keeps: for each ticket, exactly one
//! [`CommitEvent::Written`]; if that was `Ok`, then exactly one
//! [`CommitEvent::Synced`]. `Synced` is `Ok` only if a sync that *began
//! after every byte of this commit was written* succeeded, and no sync
//! issued for this commit failed. Events of different tickets come in any
//! order. A partial write (short, interrupted) is finished here, in
//! [`WriteProgress`], and followed by a standalone sync; so is a chain the
//! kernel did not take whole.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use io_uring::{squeue, types};

use crate::buf::IoBuf;
use crate::constants::{COMMIT_BUFFERS, PIPELINE_DEPTH};
use crate::error::{Error, Result};
use crate::partial::WriteProgress;
use crate::ring::{fsync_entry, write_entry, Ring};
use crate::storage::{File, SyncMode};

/// A completion reported by [`CommitQueue::wait`].
#[derive(Debug)]
pub enum CommitEvent {
    /// Every byte of commit `ticket` was written, or writing failed; its
    /// buffer is handed back either way.
    Written {
        /// Which commit.
        ticket: u64,
        /// The buffer given to `submit`.
        buf: IoBuf,
        /// `Err` names the file and the offset where writing stopped.
        result: Result<()>,
    },
    /// Commit `ticket` is durable (`Ok`), or a sync for it failed.
    Synced {
        /// Which commit.
        ticket: u64,
        /// The sync's outcome.
        result: Result<()>,
    },
}

/// The commit path of one log, used by one thread at a time (it moves
/// between threads with the log's leadership). The thread that submits a
/// commit must wait for its last event before it may exit: io_uring
/// cancels the requests of a thread that exits.
pub trait CommitQueue: Send {
    /// [`COMMIT_BUFFERS`] buffers of at least `len` bytes for `submit`,
    /// registered with the queue's ring where it has one.
    fn buffers(&mut self, len: usize) -> Vec<IoBuf>;

    /// How many commits on `file` may await their syncs at once: 1 unless
    /// overlapping syncs are safe. On a buffered file they are not: a
    /// writeback error is reported to only one of two overlapping syncs.
    fn depth(&self, file: &dyn File) -> usize;

    /// Starts making `buf[..len]` durable at `offset` of `file`; returns the
    /// commit's ticket (increasing). The buffer comes back in `Written`.
    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64;

    /// Blocks until the next event. Panics if nothing is in flight.
    fn wait(&mut self) -> CommitEvent;

    /// Commits whose last event `wait` has not yet returned.
    fn in_flight(&self) -> usize;
}

/// The syscall commit: `pwrite` everything, then `fdatasync`, at submit.
pub(crate) struct SyscallQueue {
    ready: VecDeque<CommitEvent>,
    next_ticket: u64,
    unfinished: usize,
}

impl SyscallQueue {
    pub(crate) fn new() -> SyscallQueue {
        SyscallQueue { ready: VecDeque::new(), next_ticket: 1, unfinished: 0 }
    }
}

impl CommitQueue for SyscallQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        (0..COMMIT_BUFFERS).map(|_| IoBuf::plain(len)).collect()
    }

    fn depth(&self, _file: &dyn File) -> usize {
        1
    }

    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unfinished += 1;
        // System calls even on an io_uring backend's file: the caller waits
        // for both anyway (see `SyncMode`).
        let file = file.as_syscalls();
        let result = file.write_at(offset, &buf[..len]);
        let written = result.is_ok();
        self.ready.push_back(CommitEvent::Written { ticket, buf, result });
        if written {
            self.ready.push_back(CommitEvent::Synced { ticket, result: file.sync_data() });
        }
        ticket
    }

    fn wait(&mut self) -> CommitEvent {
        let event = self.ready.pop_front().expect("wait with nothing in flight");
        if is_last(&event) {
            self.unfinished -= 1;
        }
        event
    }

    fn in_flight(&self) -> usize {
        self.unfinished
    }
}

/// Whether `event` is the last one of its commit.
pub(crate) fn is_last(event: &CommitEvent) -> bool {
    matches!(event, CommitEvent::Synced { .. } | CommitEvent::Written { result: Err(_), .. })
}

/// One operation on the ring, by `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    /// The sync submitted linked to the first write.
    LinkedSync,
    /// A sync submitted after the whole write completed.
    StandaloneSync,
}

/// A commit on the io_uring queue.
struct Commit {
    file: Arc<dyn File>,
    /// With the kernel while a write is in flight.
    buf: Option<IoBuf>,
    progress: WriteProgress,
    /// The linked sync proves the write durable: the chain went in whole and
    /// the first write wrote everything. Otherwise a standalone sync must
    /// follow the finished write.
    linked_sync_counts: bool,
    /// Write operations submitted so far.
    writes: u32,
    /// For `RWF_DSYNC`: the first write wrote everything, so it is durable.
    dsync_whole: bool,
    ops_in_flight: u32,
    syncs_in_flight: u32,
    standalone_issued: bool,
    /// A counting sync succeeded.
    synced: bool,
    /// The first failure of a sync for this commit.
    sync_failure: Option<Error>,
    write_failed: bool,
}

/// The io_uring commit queue: a ring of its own (with the commit buffers
/// registered), owned by one thread.
pub(crate) struct UringQueue {
    ring: Arc<Ring>,
    mode: SyncMode,
    commits: HashMap<u64, Commit>,
    /// In-flight operations by `user_data`: their commit and kind.
    ops: HashMap<u64, (u64, Op)>,
    /// Completions taken off the ring, not yet acted on.
    completions: VecDeque<(u64, i32)>,
    ready: VecDeque<CommitEvent>,
    next_ticket: u64,
    next_op: u64,
    unfinished: usize,
    /// Test hook: push the next chain in two submissions, as a kernel that
    /// takes only part of a submission would.
    #[cfg(test)]
    split_next_chain: bool,
    /// Test hook: the operations submitted, in order.
    #[cfg(test)]
    trace: Vec<(u64, Op)>,
}

impl UringQueue {
    pub(crate) fn new(ring: Arc<Ring>, mode: SyncMode) -> UringQueue {
        UringQueue {
            ring,
            mode,
            commits: HashMap::new(),
            ops: HashMap::new(),
            completions: VecDeque::new(),
            ready: VecDeque::new(),
            next_ticket: 1,
            next_op: 1,
            unfinished: 0,
            #[cfg(test)]
            split_next_chain: false,
            #[cfg(test)]
            trace: Vec::new(),
        }
    }

    fn fd(file: &dyn File) -> types::Fd {
        types::Fd(file.raw_fd().expect("io_uring commits need a real file"))
    }

    /// Pushes `entries` (tagged as `(ticket, op)`) and enters the kernel
    /// until it has taken them all. Returns whether the first enter that
    /// took any took all of them: a chain taken in parts is not linked
    /// across the parts (the kernel submits an unfinished link as it is).
    fn push(&mut self, ticket: u64, entries: Vec<(squeue::Entry, Op)>) -> bool {
        let mut tagged = Vec::with_capacity(entries.len());
        for (entry, op) in entries {
            let id = self.next_op;
            self.next_op += 1;
            self.ops.insert(id, (ticket, op));
            #[cfg(test)]
            self.trace.push((ticket, op));
            tagged.push(entry.user_data(id));
        }
        #[cfg(test)]
        if std::mem::take(&mut self.split_next_chain) && tagged.len() > 1 {
            let rest = tagged.split_off(1);
            self.enter_all(&tagged);
            self.enter_all(&rest);
            return false;
        }
        self.enter_all(&tagged) == tagged.len()
    }

    /// Submits `entries` until the kernel took them all; returns how many
    /// the first enter that took any of them took.
    fn enter_all(&mut self, entries: &[squeue::Entry]) -> usize {
        let mut ring = self.ring.lock();
        // SAFETY: every entry's buffer is owned by a `Commit` in
        // `self.commits` and stays there, untouched, until the operation's
        // completion is reaped; the file is kept open by the commit too.
        unsafe { ring.submission().push_multiple(entries) }.expect("the ring has room: commits in flight are bounded");
        let mut first_taken = None;
        while !ring.submission().is_empty() {
            match ring.submit() {
                Ok(n) => {
                    if n > 0 && first_taken.is_none() {
                        first_taken = Some(n);
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {
                    // The completion queue is full: make room; act on them in `wait`.
                    self.completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
                }
                Err(e) => {
                    // The kernel may own buffers we would hand back: no safe way on.
                    eprintln!("ringkv: io_uring_enter failed while submitting a commit: {e}");
                    std::process::abort();
                }
            }
        }
        first_taken.unwrap_or(0)
    }

    fn submit_write(&mut self, ticket: u64, linked_sync: bool) {
        let commit = self.commits.get_mut(&ticket).expect("a live commit");
        let (at, range) = commit.progress.next();
        let buf = commit.buf.as_ref().expect("the buffer is ours between writes");
        let fixed = buf.fixed.filter(|slot| slot.ring_id == self.ring.id());
        let fd = UringQueue::fd(commit.file.as_ref());
        let first = commit.writes == 0;
        let rw_flags = if first && self.mode == SyncMode::RwfDsync { libc::RWF_DSYNC } else { 0 };
        let write = write_entry(fd, at, &buf[range], fixed, rw_flags);
        commit.writes += 1;
        commit.ops_in_flight += 1;
        let mut entries = vec![(write, Op::Write)];
        if linked_sync {
            entries[0].0 = entries[0].0.clone().flags(squeue::Flags::IO_LINK);
            entries.push((fsync_entry(fd), Op::LinkedSync));
            commit.ops_in_flight += 1;
            commit.syncs_in_flight += 1;
        }
        let whole = self.push(ticket, entries);
        if linked_sync && !whole {
            // The sync went in on its own and may run before the write.
            self.commits.get_mut(&ticket).expect("live").linked_sync_counts = false;
        }
    }

    fn submit_standalone_sync(&mut self, ticket: u64) {
        let commit = self.commits.get_mut(&ticket).expect("a live commit");
        commit.standalone_issued = true;
        commit.ops_in_flight += 1;
        commit.syncs_in_flight += 1;
        let entry = fsync_entry(UringQueue::fd(commit.file.as_ref()));
        self.push(ticket, vec![(entry, Op::StandaloneSync)]);
    }

    /// Blocks until at least one completion arrives, and takes them all.
    fn wait_for_completions(&mut self) {
        match self.ring.lock().submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
            Err(e) => {
                // The kernel may still own buffers we would free: no safe way on.
                eprintln!("ringkv: io_uring_enter failed with commits in flight: {e}");
                std::process::abort();
            }
        }
        self.reap();
    }

    /// Takes every completion off the ring.
    fn reap(&mut self) {
        let mut ring = self.ring.lock();
        self.completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
    }

    /// Acts on the completions taken so far.
    fn process(&mut self) {
        while let Some((id, res)) = self.completions.pop_front() {
            let (ticket, op) = self.ops.remove(&id).expect("a completion for an operation we submitted");
            self.complete(ticket, op, res);
        }
    }

    fn complete(&mut self, ticket: u64, op: Op, res: i32) {
        let commit = self.commits.get_mut(&ticket).expect("a live commit");
        commit.ops_in_flight -= 1;
        match op {
            Op::Write => self.write_done(ticket, res),
            Op::LinkedSync | Op::StandaloneSync => {
                commit.syncs_in_flight -= 1;
                match res {
                    0 if op == Op::StandaloneSync || commit.linked_sync_counts => commit.synced = true,
                    // Another sync proves it, or the write failed.
                    0 => {}
                    // Cancelled because the linked write came up short.
                    e if e == -libc::ECANCELED && op == Op::LinkedSync => {}
                    e if e == -libc::EINTR || e == -libc::EAGAIN => {
                        if op == Op::StandaloneSync {
                            commit.standalone_issued = false;
                        } else {
                            commit.linked_sync_counts = false;
                        }
                    }
                    e => {
                        let path = commit.file.path().to_owned();
                        let err = Error::io("fdatasync", path, None, io::Error::from_raw_os_error(-e));
                        commit.sync_failure.get_or_insert(err);
                    }
                }
            }
        }
        self.go_on(ticket);
    }

    fn write_done(&mut self, ticket: u64, res: i32) {
        let commit = self.commits.get_mut(&ticket).expect("a live commit");
        let path = commit.file.path().to_owned();
        let outcome = match res {
            n if n >= 0 => {
                let advanced = commit.progress.advance(n as usize);
                commit.dsync_whole = commit.writes == 1 && commit.progress.is_done();
                advanced.map_err(|e| Error::io("write", path, commit.progress.stopped_at(), e))
            }
            e if e == -libc::EINTR || e == -libc::EAGAIN => Ok(()),
            e => Err(Error::io("write", path, commit.progress.stopped_at(), io::Error::from_raw_os_error(-e))),
        };
        match outcome {
            Err(e) => {
                commit.write_failed = true;
                let buf = commit.buf.take().expect("the write's buffer");
                self.ready.push_back(CommitEvent::Written { ticket, buf, result: Err(e) });
            }
            Ok(()) if commit.progress.is_done() => {
                let buf = commit.buf.take().expect("the write's buffer");
                self.ready.push_back(CommitEvent::Written { ticket, buf, result: Ok(()) });
            }
            Ok(()) => {
                // Short or interrupted: the link (if any) is broken.
                commit.linked_sync_counts = false;
                commit.dsync_whole = false;
                self.submit_write(ticket, false);
            }
        }
    }

    /// What follows an operation's completion: a standalone sync once the
    /// write is done and no other sync of this commit is in flight (two
    /// overlapping syncs may split a writeback error between them), and the
    /// commit's `Synced` once nothing of it is in flight.
    fn go_on(&mut self, ticket: u64) {
        let commit = self.commits.get_mut(&ticket).expect("a live commit");
        if commit.write_failed {
            if commit.ops_in_flight == 0 {
                self.commits.remove(&ticket);
            }
            return;
        }
        if !commit.progress.is_done() {
            return; // a write is still in flight
        }
        if self.mode == SyncMode::RwfDsync && commit.dsync_whole {
            commit.synced = true;
        }
        let needs_sync = !commit.synced && commit.sync_failure.is_none() && !commit.standalone_issued;
        if needs_sync && commit.syncs_in_flight == 0 {
            self.submit_standalone_sync(ticket);
            return;
        }
        if commit.ops_in_flight == 0 && (commit.synced || commit.sync_failure.is_some()) {
            let commit = self.commits.remove(&ticket).expect("live");
            let result = match commit.sync_failure {
                Some(e) => Err(e),
                None => Ok(()),
            };
            self.ready.push_back(CommitEvent::Synced { ticket, result });
        }
    }
}

impl CommitQueue for UringQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        (0..COMMIT_BUFFERS).map(|_| self.ring.take_buffer(len).unwrap_or_else(|| IoBuf::plain(len))).collect()
    }

    fn depth(&self, file: &dyn File) -> usize {
        if self.mode == SyncMode::LinkedFsync && file.is_direct() {
            PIPELINE_DEPTH
        } else {
            1
        }
    }

    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unfinished += 1;
        let progress = WriteProgress::new(offset, len, file.is_direct());
        let linked = self.mode == SyncMode::LinkedFsync;
        let commit = Commit {
            file: file.clone(),
            buf: Some(buf),
            progress,
            linked_sync_counts: linked,
            writes: 0,
            dsync_whole: false,
            ops_in_flight: 0,
            syncs_in_flight: 0,
            standalone_issued: false,
            synced: false,
            sync_failure: None,
            write_failed: false,
        };
        self.commits.insert(ticket, commit);
        self.submit_write(ticket, linked);
        ticket
    }

    fn wait(&mut self) -> CommitEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                if is_last(&event) {
                    self.unfinished -= 1;
                }
                return event;
            }
            if !self.completions.is_empty() {
                self.process();
                continue;
            }
            assert!(!self.ops.is_empty(), "wait with nothing in flight");
            self.wait_for_completions();
        }
    }

    fn in_flight(&self) -> usize {
        self.unfinished
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still read the buffers: wait for every completion.
        loop {
            for (id, _) in self.completions.drain(..) {
                self.ops.remove(&id);
            }
            if self.ops.is_empty() {
                break;
            }
            self.wait_for_completions();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::OsFile;
    use crate::storage::OpenMode;
    use crate::BLOCK_BYTES;

    /// Runs one commit of a block of 9s through a linked-chain queue whose
    /// chain the kernel takes in two submissions (`split`); returns the
    /// operations the queue submitted.
    fn commit_split(split: bool) -> Option<Vec<(u64, Op)>> {
        let Ok(ring) = Ring::new(BLOCK_BYTES, COMMIT_BUFFERS) else {
            eprintln!("skipped: io_uring is not available here");
            return None;
        };
        let dir = tempfile_dir();
        let file: Arc<dyn File> = Arc::new(OsFile::open(&dir.join("chain"), OpenMode::Create).unwrap());
        let mut queue = UringQueue::new(Arc::new(ring), SyncMode::LinkedFsync);
        queue.split_next_chain = split;
        let mut buf = queue.buffers(BLOCK_BYTES).pop().unwrap();
        buf.fill(9);
        let ticket = queue.submit(&file, 0, buf, BLOCK_BYTES);
        let mut events = Vec::new();
        while queue.in_flight() > 0 {
            events.push(match queue.wait() {
                CommitEvent::Written { ticket: t, result, .. } => format!("written {t} {}", result.is_ok()),
                CommitEvent::Synced { ticket: t, result } => format!("synced {t} {}", result.is_ok()),
            });
        }
        assert_eq!(events, vec![format!("written {ticket} true"), format!("synced {ticket} true")]);
        std::fs::remove_dir_all(&dir).unwrap();
        Some(queue.trace.clone())
    }

    fn tempfile_dir() -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringkv-queue-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_whole_chain_is_proved_by_its_linked_sync() {
        let Some(trace) = commit_split(false) else { return };
        assert_eq!(trace, vec![(1, Op::Write), (1, Op::LinkedSync)]);
    }

    /// Regression: the count `submit` returns was ignored, so a chain whose
    /// sync went in on its own (and may run before the write) counted as
    /// proof the write was durable.
    #[test]
    fn a_chain_taken_in_parts_gets_a_standalone_sync_after_its_write() {
        let Some(trace) = commit_split(true) else { return };
        assert_eq!(trace, vec![(1, Op::Write), (1, Op::LinkedSync), (1, Op::StandaloneSync)]);
    }
}
