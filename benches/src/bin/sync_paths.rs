//! `sync_paths`: the latency of one durable 4 KiB O_DIRECT write by each
//! way the kernel offers, side by side, optionally with threads keeping
//! every core busy (as a store's own writers do at 16 or 64 writers on a
//! small machine).
//!
//!   cargo run --release -p benches --bin sync_paths -- DIR [SPINNERS] [SAMPLES]
//!
//! The paths differ in which threads the kernel wakes before the write is
//! durable: `pwrite` + `fdatasync` and `pwritev2(RWF_DSYNC)` run the flush
//! in the caller's own context; through io_uring, an `RWF_DSYNC` write's
//! flush runs in a kernel worker (the O_DIRECT completion work) and a
//! linked `Fsync` in an io-wq worker, each a thread that must be scheduled
//! before the caller is woken. The samples interleave the paths, so drift
//! on a shared machine hits all alike.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};
use uring::{AlignedBuf, BLOCK_BYTES};

/// Blocks the samples rotate over, in a file written once beforehand (so
/// no write allocates or converts an extent).
const BLOCKS: u64 = 256;

#[derive(Clone, Copy)]
enum Path {
    PwriteFdatasync,
    PwriteDsync,
    UringDsync,
    UringLinkedFsync,
    UringWriteThenFdatasync,
}

impl Path {
    const ALL: [Path; 5] = [
        Path::PwriteFdatasync,
        Path::PwriteDsync,
        Path::UringDsync,
        Path::UringLinkedFsync,
        Path::UringWriteThenFdatasync,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::PwriteFdatasync => "pwrite + fdatasync",
            Path::PwriteDsync => "pwritev2 RWF_DSYNC",
            Path::UringDsync => "io_uring Write RWF_DSYNC",
            Path::UringLinkedFsync => "io_uring Write -> Fsync (linked)",
            Path::UringWriteThenFdatasync => "io_uring Write, then fdatasync",
        }
    }
}

fn check(rc: isize, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Waits for `n` completions, each a success of at least `min` bytes.
fn reap(ring: &mut IoUring, n: usize, min: i32) {
    let mut seen = 0;
    while seen < n {
        ring.submit_and_wait(1).expect("io_uring_enter");
        for cqe in ring.completion() {
            assert!(cqe.result() >= min, "io_uring op failed: {}", cqe.result());
            seen += 1;
        }
    }
}

/// One durable write of `buf` at `offset` by `path`.
fn durable_write(path: Path, ring: &mut IoUring, fd: i32, buf: &AlignedBuf, offset: u64) {
    let len = buf.len();
    let write = || opcode::Write::new(types::Fd(fd), buf.as_ptr(), len as u32).offset(offset);
    match path {
        Path::PwriteFdatasync => {
            // SAFETY: `buf` is a live, aligned buffer of `len` bytes.
            check(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len, offset as i64) }, "pwrite");
            // SAFETY: a plain system call on an open descriptor.
            check(unsafe { libc::fdatasync(fd) } as isize, "fdatasync");
        }
        Path::PwriteDsync => {
            let iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: len };
            // SAFETY: `iov` points at `buf`, live for the call.
            check(unsafe { libc::pwritev2(fd, &iov, 1, offset as i64, libc::RWF_DSYNC) }, "pwritev2");
        }
        Path::UringDsync => {
            let entry = write().rw_flags(libc::RWF_DSYNC).build();
            // SAFETY: `buf` outlives the operation: `reap` returns only
            // after its completion.
            unsafe { ring.submission().push(&entry) }.expect("an idle ring has room");
            reap(ring, 1, len as i32);
        }
        Path::UringLinkedFsync => {
            let entries = [
                write().build().flags(squeue::Flags::IO_LINK),
                opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build(),
            ];
            // SAFETY: as above, for both operations of the chain.
            unsafe { ring.submission().push_multiple(&entries) }.expect("an idle ring has room");
            reap(ring, 2, 0);
        }
        Path::UringWriteThenFdatasync => {
            let entry = write().build();
            // SAFETY: as above.
            unsafe { ring.submission().push(&entry) }.expect("an idle ring has room");
            reap(ring, 1, len as i32);
            // SAFETY: a plain system call on an open descriptor.
            check(unsafe { libc::fdatasync(fd) } as isize, "fdatasync");
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: sync_paths DIR [SPINNERS] [SAMPLES]"));
    let spinners: usize = args.next().map_or(0, |s| s.parse().expect("SPINNERS: a number"));
    let samples: usize = args.next().map_or(4000, |s| s.parse().expect("SAMPLES: a number"));
    std::fs::create_dir_all(&dir).expect("create DIR");
    let path = dir.join("sync-paths.dat");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", path.display()));
    let fd = file.as_raw_fd();
    let mut buf = AlignedBuf::new(BLOCK_BYTES);
    buf.fill(0x5a);
    let mut ring = IoUring::new(8).expect("io_uring_setup");
    for block in 0..BLOCKS {
        durable_write(Path::PwriteFdatasync, &mut ring, fd, &buf, block * BLOCK_BYTES as u64);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spinning: Vec<_> = (0..spinners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let mut micros: Vec<Vec<u64>> = vec![Vec::with_capacity(samples); Path::ALL.len()];
    for i in 0..samples {
        for (k, &p) in Path::ALL.iter().enumerate() {
            let block = (i * Path::ALL.len() + k) as u64 % BLOCKS;
            let began = Instant::now();
            durable_write(p, &mut ring, fd, &buf, block * BLOCK_BYTES as u64);
            micros[k].push(began.elapsed().as_micros() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    spinning.into_iter().for_each(|t| t.join().expect("spinner"));
    drop(file);
    let _ = std::fs::remove_file(&path);
    println!("# one durable 4 KiB O_DIRECT write, {samples} samples per path, {spinners} spinning threads");
    println!("{:<34} {:>7} {:>7} {:>9}", "path", "p50_us", "p99_us", "p99.9_us");
    for (k, p) in Path::ALL.iter().enumerate() {
        let mut v = std::mem::take(&mut micros[k]);
        v.sort_unstable();
        println!(
            "{:<34} {:>7} {:>7} {:>9}",
            p.name(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            percentile(&v, 0.999)
        );
    }
}
