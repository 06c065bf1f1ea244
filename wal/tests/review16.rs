//! Review 16: attacks on the bells (8ece938): waiting writers sleep on a
//! futex word per batch number modulo 8; an acknowledgement rings all, the
//! hand-over rings one.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_wal::{Lsn, Wal};
use uring::{CommitEvent, CommitQueue, File, IoBuf, SimRng, SimStorage};

use common::{frame, options, DIR};

/// The simulated disk, its commit queue jittered (short sleeps / yields in
/// `wait`), to widen the windows between a leader's steps.
#[derive(Debug)]
struct JitterDisk {
    disk: SimStorage,
    seed: u64,
    /// Panic in the `panic_at`-th `wait` (0: never), counted over all queues.
    panic_at: u64,
    calls: Arc<AtomicU64>,
}

struct JitterQueue {
    queue: Box<dyn CommitQueue>,
    rng: SimRng,
    panic_at: u64,
    calls: Arc<AtomicU64>,
}

impl CommitQueue for JitterQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        self.queue.buffers(len)
    }
    fn depth(&self, file: &dyn File) -> usize {
        self.queue.depth(file)
    }
    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        self.queue.submit(file, offset, buf, len)
    }
    fn wait(&mut self) -> CommitEvent {
        if self.panic_at != 0 && self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_at {
            panic!("simulated bug in the commit queue");
        }
        match self.rng.below(8) {
            0 => std::thread::sleep(Duration::from_micros(self.rng.below(300))),
            1 | 2 => std::thread::yield_now(),
            _ => {}
        }
        self.queue.wait()
    }
    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }
}

common::sim_storage_with_queue!(JitterDisk, |this, queue| JitterQueue {
    queue,
    rng: SimRng::new(this.seed),
    panic_at: this.panic_at,
    calls: this.calls.clone()
});

/// Many writers mixing every call (waiting and not, with and without an
/// `Apply`, syncs, cuts, frames that fill a batch or end a segment): no
/// writer waits forever, every writer told Ok had its `Apply` run, and
/// every acknowledged frame survives a power cut.
#[test]
fn mixed_writers_never_hang_and_lose_nothing_acknowledged() {
    mixed(false, false);
}

/// The same with a leader panicking part way.
#[test]
fn mixed_writers_with_a_panicking_leader_never_hang_and_lose_nothing_acknowledged() {
    mixed(false, true);
}

/// The same with a sync failing on the first segment part way: every
/// writer still returns, none told Ok wrongly.
#[test]
fn mixed_writers_with_a_failed_sync_never_hang_and_lose_nothing_acknowledged() {
    mixed(true, false);
}

fn mixed(fail: bool, panic: bool) {
    const THREADS: u64 = 48;
    const EACH: u64 = 250;
    for seed in 0..8u64 {
        let pipelined = seed % 2 == 0;
        let disk = SimStorage::new().pipelined(pipelined).seeded(seed);
        uring::create_dirs(&disk, Path::new(DIR)).unwrap();
        if fail {
            disk.fail_file_call(&Path::new(DIR).join(format!("{:020}.wal", 0)), 3 + seed, libc::EIO);
        }
        let panic_at = if panic { 3 + seed * 11 } else { 0 };
        let storage = Arc::new(JitterDisk { disk: disk.clone(), seed, panic_at, calls: Arc::default() });
        let wal = Arc::new(Wal::open(storage, Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap());
        let progress = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(BTreeSet::<Vec<u8>>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut handles = Vec::new();
        for t in 0..THREADS {
            let (wal, progress, done, acked, errors) =
                (wal.clone(), progress.clone(), done.clone(), acked.clone(), errors.clone());
            handles.push(std::thread::spawn(move || {
                struct OnPanic(Arc<AtomicU64>, Arc<AtomicU64>);
                impl Drop for OnPanic {
                    fn drop(&mut self) {
                        if std::thread::panicking() {
                            self.0.fetch_add(1, Ordering::SeqCst);
                            self.1.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                let _on_panic = OnPanic(done.clone(), progress.clone());
                let mut rng = SimRng::new(seed * 1000 + t);
                let mut unsynced = Vec::new();
                for i in 0..EACH {
                    let len = match rng.below(40) {
                        0 => 40_000 + rng.below(60_000) as usize,
                        _ => rng.below(2000) as usize,
                    };
                    let payload = format!("t{t:03}-{i:05}-{}", "x".repeat(len)).into_bytes();
                    let r = match rng.below(20) {
                        0..=11 => wal.append(frame(&payload), true).map(|_| true),
                        12 | 13 => wal.append(frame(&payload), false).map(|_| false),
                        14..=17 => {
                            let ran = Arc::new(AtomicBool::new(false));
                            let r2 = ran.clone();
                            let r = wal.append_then(
                                frame(&payload),
                                Box::new(move |_| {
                                    r2.store(true, Ordering::SeqCst);
                                }),
                            );
                            if r.is_ok() && !ran.load(Ordering::SeqCst) {
                                errors.lock().unwrap().push(format!("t{t} {i}: Ok before its Apply ran"));
                            }
                            r.map(|_| true)
                        }
                        18 => {
                            let r = wal.append(frame(&payload), false).map(|_| false);
                            let _ = wal.cut(|end| end);
                            r
                        }
                        _ => {
                            let r = wal.append(frame(&payload), false);
                            match wal.sync() {
                                Ok(()) => {
                                    acked.lock().unwrap().extend(unsynced.drain(..));
                                    r.map(|_| true)
                                }
                                Err(e) => Err(e),
                            }
                        }
                    };
                    match r {
                        Ok(true) => {
                            acked.lock().unwrap().insert(payload[..11].to_vec());
                        }
                        Ok(false) => unsynced.push(payload[..11].to_vec()),
                        Err(e) => errors.lock().unwrap().push(format!("t{t} {i}: {e}")),
                    }
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let mut last = (0, Instant::now());
        while done.load(Ordering::SeqCst) < THREADS {
            std::thread::sleep(Duration::from_millis(50));
            let p = progress.load(Ordering::SeqCst);
            if p != last.0 {
                last = (p, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(20),
                "seed {seed} pipelined {pipelined}: no call returned for 20 s ({} of {} threads done, {p} calls done): a writer waits forever",
                done.load(Ordering::SeqCst),
                THREADS
            );
        }
        let panicked = handles.into_iter().map(|h| h.join()).filter(|r| r.is_err()).count();
        // (The leader that panics may be the flusher.)
        assert!(panicked <= panic as usize, "seed {seed}");
        let errors = errors.lock().unwrap().clone();
        assert!(!(fail || panic) || !errors.is_empty(), "seed {seed}: the fault never hit");
        let wrong: Vec<_> = errors.iter().filter(|e| !(fail || panic) || e.contains("before its Apply")).collect();
        assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
        disk.power_cut();
        drop(Arc::into_inner(wal).unwrap());
        let mut seen = BTreeSet::new();
        Wal::open(Arc::new(disk.after_power_cut(seed)), Path::new(DIR), options(), Lsn(0), &mut |_, p| {
            seen.insert(p[..11].to_vec());
        })
        .unwrap();
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked.difference(&seen).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: {} acknowledged frames lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}
