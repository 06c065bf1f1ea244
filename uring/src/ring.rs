//! The io_uring data path: rings with registered buffers, and files whose
//! reads, writes and syncs go through a ring shared by the storage. Commits
//! have their own ring (`queue.rs`).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use crate::buf::{AlignedBuf, BufHome, FixedSlot, IoBuf};
use crate::constants::{OP_BYTES_MAX, RING_COMPLETION_ENTRIES, RING_ENTRIES, WRITES_IN_FLIGHT};
use crate::error::{Error, Result};
use crate::os::OsFile;
use crate::partial::WriteProgress;
use crate::storage::File;

static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's own ring for file reads, writes and syncs (`None` if
    /// it could not be set up): threads reading pages, the checkpointer
    /// writing them and a leader committing never wait for each other's
    /// I/O on one ring's lock.
    static OWN_RING: Option<Ring> = Ring::new(0, 0).ok();
}

/// Runs `f` on the calling thread's own ring, or on `shared` if the thread
/// has none.
fn on_own_ring<R>(shared: &Ring, f: impl FnOnce(&mut IoUring) -> R) -> R {
    OWN_RING.with(|own| match own {
        Some(ring) => f(&mut ring.lock()),
        None => f(&mut shared.lock()),
    })
}

/// The ring, and the registered buffers it refers to by index.
///
/// Field order matters: `ring` drops (and the kernel unregisters the
/// buffers) before `pool` frees their memory.
pub(crate) struct Ring {
    ring: Mutex<IoUring>,
    id: u64,
    pool: Mutex<Vec<(AlignedBuf, FixedSlot)>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring(id={})", self.id)
    }
}

impl Ring {
    /// Sets up a ring, checks the opcodes ringkv uses, and registers
    /// `buffer_count` buffers of `buffer_bytes` each.
    ///
    /// # Errors
    /// `UringUnavailable` naming the step that failed: setup (ENOSYS, EPERM
    /// from seccomp or `kernel.io_uring_disabled`), probe, or buffer
    /// registration (ENOMEM under a small `RLIMIT_MEMLOCK`).
    pub(crate) fn new(buffer_bytes: usize, buffer_count: usize) -> Result<Ring> {
        let unavailable = |reason, source| Error::UringUnavailable { reason, source };
        let ring = IoUring::builder()
            .setup_cqsize(RING_COMPLETION_ENTRIES)
            .build(RING_ENTRIES)
            .map_err(|e| unavailable("io_uring_setup", e))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| unavailable("probe", e))?;
        for (code, name) in [
            (opcode::WriteFixed::CODE, "WriteFixed"),
            (opcode::Write::CODE, "Write"),
            (opcode::Read::CODE, "Read"),
            (opcode::Fsync::CODE, "Fsync"),
        ] {
            if !probe.is_supported(code) {
                let e = io::Error::new(io::ErrorKind::Unsupported, format!("opcode {name} missing"));
                return Err(unavailable("probe", e));
            }
        }
        let id = NEXT_RING_ID.fetch_add(1, Ordering::Relaxed);
        let buffers: Vec<AlignedBuf> = (0..buffer_count).map(|_| AlignedBuf::new(buffer_bytes)).collect();
        let iovecs: Vec<libc::iovec> = buffers
            .iter()
            .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
            .collect();
        if !iovecs.is_empty() {
            // SAFETY: every iovec points at a live AlignedBuf that `pool` keeps
            // until after the ring is dropped (field order of Ring), and a buffer
            // handed out as IoBuf comes back to the pool, never to the allocator.
            unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|e| unavailable("register_buffers", e))?;
        }
        let pool = buffers
            .into_iter()
            .enumerate()
            .map(|(i, b)| (b, FixedSlot { ring_id: id, index: u16::try_from(i).expect("few buffers") }))
            .collect();
        Ok(Ring { ring: Mutex::new(ring), id, pool: Mutex::new(pool) })
    }

    pub(crate) fn take_buffer(self: &Arc<Ring>, len: usize) -> Option<IoBuf> {
        let mut pool = self.pool.lock().expect("buffer pool lock");
        let at = pool.iter().position(|(b, _)| b.len() >= len)?;
        let (mut buf, slot) = pool.swap_remove(at);
        buf.fill(0);
        Some(IoBuf::registered(buf, slot, self.clone()))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, IoUring> {
        self.ring.lock().expect("ring lock")
    }
}

impl Ring {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl BufHome for Ring {
    fn give_back(&self, buf: AlignedBuf, slot: FixedSlot) {
        self.pool.lock().expect("buffer pool lock").push((buf, slot));
    }
}

/// Submits `entries` as one unit (a linked chain goes in whole) and waits
/// for every one of their completions; returns their results in order.
///
/// Holding the ring's lock for the whole call means no other operation is in
/// flight on it, so every completion reaped here is one of ours, and the
/// buffers the entries point at stay borrowed until the kernel is done.
fn submit_and_reap(ring: &mut IoUring, entries: &[squeue::Entry]) -> Vec<i32> {
    // Checked while nothing is in flight. With the window as wide as the
    // unit, every entry is pushed before the first enter.
    assert!(entries.len() <= RING_ENTRIES as usize, "a unit fits an idle ring");
    submit_windowed(ring, entries, entries.len())
}

/// Runs `entries` with up to `window` of them in flight at once (linked
/// ones only if the window covers them all, so that every one is pushed
/// before the first enter: `submit_and_reap`): each completion makes room for the
/// next, so the device sees a steady queue rather than bursts that drain
/// to the slowest of each. Waits for every completion; returns the results
/// in order.
///
/// The caller holds the ring's lock for the whole call, so every
/// completion reaped here is one of ours.
fn submit_windowed(ring: &mut IoUring, entries: &[squeue::Entry], window: usize) -> Vec<i32> {
    let window = window.clamp(1, RING_ENTRIES as usize);
    let mut results = vec![None; entries.len()];
    let (mut pushed, mut reaped) = (0, 0);
    while reaped < entries.len() {
        while pushed < entries.len() && pushed - reaped < window {
            let entry = entries[pushed].clone().user_data(pushed as u64);
            // SAFETY: the entries' buffers are borrowed by our caller for
            // this whole call, and we do not return before every pushed
            // operation's completion has been reaped (an io_uring_enter
            // failure aborts the process instead of returning). At most
            // `window` <= RING_ENTRIES operations are unreaped, those not
            // yet taken by the kernel among them, so the submission queue
            // (RING_ENTRIES) has room, and the completion queue too.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                eprintln!("ringkv: io_uring submission queue full with {} in flight", pushed - reaped);
                std::process::abort();
            }
            pushed += 1;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
            Err(e) => {
                // Operations may be in flight on memory we would hand back:
                // there is no safe way to go on.
                eprintln!("ringkv: io_uring_enter failed with operations in flight: {e}");
                std::process::abort();
            }
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            if i >= pushed || results[i].is_some() {
                // A completion we cannot place: ours are still in flight on
                // memory our caller would get back, so no unwinding.
                eprintln!("ringkv: io_uring completion {i} not expected (of {pushed} submitted)");
                std::process::abort();
            }
            results[i] = Some(cqe.result());
            reaped += 1;
        }
    }
    results.into_iter().map(|r| r.expect("every operation completed")).collect()
}

/// A write of `buf` at `offset`: `WriteFixed` when `buf` lies in a buffer
/// registered with the ring it is submitted to (`fixed`).
pub(crate) fn write_entry(
    fd: types::Fd,
    offset: u64,
    buf: &[u8],
    fixed: Option<FixedSlot>,
    rw_flags: i32,
) -> squeue::Entry {
    let len = u32::try_from(buf.len()).expect("op length bounded by OP_BYTES_MAX");
    match fixed {
        Some(slot) => {
            opcode::WriteFixed::new(fd, buf.as_ptr(), len, slot.index).offset(offset).rw_flags(rw_flags).build()
        }
        None => opcode::Write::new(fd, buf.as_ptr(), len).offset(offset).rw_flags(rw_flags).build(),
    }
}

/// `fdatasync` of `fd`.
pub(crate) fn fsync_entry(fd: types::Fd) -> squeue::Entry {
    opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build()
}

/// A file whose data path is the ring.
#[derive(Debug)]
pub(crate) struct UringFile {
    pub(crate) os: OsFile,
    pub(crate) ring: Arc<Ring>,
}

impl UringFile {
    fn fd(&self) -> types::Fd {
        use std::os::fd::AsRawFd;
        types::Fd(self.os.file.as_raw_fd())
    }

    /// Writes all of `buf` at `offset` with plain ring writes.
    fn write_all(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut progress = WriteProgress::new(offset, buf.len(), self.os.direct);
        while !progress.is_done() {
            let (at, rest) = progress.next();
            let end = rest.end.min(rest.start + OP_BYTES_MAX);
            let entry = write_entry(self.fd(), at, &buf[rest.start..end], None, 0);
            match on_own_ring(&self.ring, |ring| submit_and_reap(ring, &[entry]))[0] {
                n if n >= 0 => {
                    progress.advance(n as usize).map_err(|e| self.os.err("write", progress.stopped_at(), e))?
                }
                e if e == -libc::EINTR || e == -libc::EAGAIN => {}
                e => return Err(self.os.err("write", at, io::Error::from_raw_os_error(-e))),
            }
        }
        Ok(())
    }

    fn fsync(&self) -> Result<()> {
        loop {
            let res = on_own_ring(&self.ring, |ring| submit_and_reap(ring, &[fsync_entry(self.fd())]))[0];
            match res {
                0 => return Ok(()),
                e if e == -libc::EINTR => continue,
                e => return Err(self.os.err("fdatasync", None, io::Error::from_raw_os_error(-e))),
            }
        }
    }
}

impl File for UringFile {
    fn path(&self) -> &Path {
        &self.os.path
    }

    fn as_syscalls(&self) -> &dyn File {
        &self.os
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.os.file.as_raw_fd())
    }

    fn is_direct(&self) -> bool {
        self.os.direct
    }

    fn size_bytes(&self) -> Result<u64> {
        self.os.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.os.check_aligned(offset, buf.len(), buf.as_ptr());
        self.os.check_in_bounds(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let end = buf.len().min(done + OP_BYTES_MAX);
            let at = offset + done as u64;
            let part = &mut buf[done..end];
            let len = u32::try_from(part.len()).expect("bounded by OP_BYTES_MAX");
            let entry = opcode::Read::new(self.fd(), part.as_mut_ptr(), len).offset(at).build();
            let res = on_own_ring(&self.ring, |ring| submit_and_reap(ring, &[entry]))[0];
            match res {
                n if n > 0 => done += n as usize,
                0 => {
                    let file_bytes = self.os.len()?;
                    return Err(Error::ReadPastEnd { path: self.os.path.clone(), offset, len: buf.len(), file_bytes });
                }
                e if e == -libc::EINTR || e == -libc::EAGAIN => {}
                e => return Err(self.os.err("read", at, io::Error::from_raw_os_error(-e))),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.os.check_aligned(offset, buf.len(), buf.as_ptr());
        self.write_all(offset, buf)
    }

    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<()> {
        let entries: Vec<squeue::Entry> = writes
            .iter()
            .map(|&(offset, buf)| {
                self.os.check_aligned(offset, buf.len(), buf.as_ptr());
                assert!(buf.len() <= OP_BYTES_MAX, "one write of at most OP_BYTES_MAX");
                write_entry(self.fd(), offset, buf, None, 0)
            })
            .collect();
        let results = on_own_ring(&self.ring, |ring| submit_windowed(ring, &entries, WRITES_IN_FLIGHT));
        for (&(offset, buf), res) in writes.iter().zip(results) {
            match res {
                n if n >= 0 && n as usize == buf.len() => {}
                // Short, interrupted or refused for now: write it again
                // whole, one piece at a time.
                n if n >= 0 || n == -libc::EINTR || n == -libc::EAGAIN => self.write_all(offset, buf)?,
                e => return Err(self.os.err("write", offset, io::Error::from_raw_os_error(-e))),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<()> {
        self.fsync()
    }

    fn allocate(&self, len: u64) -> Result<()> {
        self.os.allocate(len)
    }

    fn sync_and_evict(&self) -> Result<()> {
        self.os.sync_and_evict()
    }
}
