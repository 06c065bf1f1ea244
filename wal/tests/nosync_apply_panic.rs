//! A `NoSync` `Apply` that panics stops every later `Apply`
//! (`applies_stopped`) before the log is poisoned, from the writer's own
//! thread, outside the leadership. In that gap a pipelined leader settling
//! its batches in flight acknowledges them and wakes their writers
//! (`Committer::wait` → `writer::wake`), whose `Apply`s were skipped: each
//! finds its frame neither applied nor the log poisoned, parks (the leader
//! still leads), and nothing ever wakes it again (`poison` unparks only
//! the gathering batch's writers; the leader already woke these).
//!
//! The gap is made wide here by a tracing subscriber on the panicking
//! writer's thread whose `event` sleeps: `Shared::poison` logs its
//! `tracing::error!` under the tail lock *before* it sets the `poisoned`
//! flag that waiting writers read. (Any slow log sink does that in
//! production; without one the gap is a few instructions and the hang is
//! rare, not impossible.) Review 14 found it; `place` now stops applies
//! and poisons the log in one critical section of the tail lock.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ringkv_wal::{Lsn, Wal};
use uring::SimStorage;

use common::{frame, options, DIR};

/// A subscriber whose every event takes a while (a slow log sink).
struct SlowSink;

impl tracing::Subscriber for SlowSink {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        std::thread::sleep(Duration::from_millis(300));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_panicking_nosync_apply_never_leaves_a_sync_writer_parked_for_good() {
    for seed in 0..20u64 {
        let disk = SimStorage::new().pipelined(true).seeded(seed);
        uring::create_dirs(&disk, Path::new(DIR)).unwrap();
        let wal = Arc::new(Wal::open(Arc::new(disk), Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap());
        let acks = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = mpsc::channel::<(u64, String)>();
        const WRITERS: u64 = 24;
        for t in 0..WRITERS {
            let (wal, acks, done_tx) = (wal.clone(), acks.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                let outcome = loop {
                    let payload = format!("t{t}-{i}-{}", "y".repeat((i as usize * 37 + t as usize * 101) % 900));
                    match wal.append_then(frame(payload.as_bytes()), Box::new(|_| {})) {
                        Ok(_) => {
                            acks.fetch_add(1, Ordering::SeqCst);
                            i += 1;
                        }
                        Err(e) => break format!("{e}"),
                    }
                };
                done_tx.send((t, outcome)).unwrap();
            });
        }
        // Let the writers get going, then one NoSync write's Apply panics.
        while acks.load(Ordering::SeqCst) < 500 {
            std::thread::yield_now();
        }
        {
            let wal = wal.clone();
            std::thread::spawn(move || {
                tracing::subscriber::with_default(SlowSink, || {
                    let r = wal.append_unsynced_then(frame(b"bomb"), Box::new(|_| panic!("NoSync apply")));
                    assert!(r.is_err());
                });
            });
        }
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < WRITERS as usize {
            match done_rx.recv_timeout(Duration::from_secs(10)) {
                Ok((t, _)) => {
                    answered.insert(t);
                }
                Err(_) => {
                    let hung: Vec<u64> = (0..WRITERS).filter(|t| !answered.contains(t)).collect();
                    panic!(
                        "seed={seed}: writers {hung:?} still waiting 10 s after the log was poisoned \
                         (parked for good)"
                    );
                }
            }
        }
    }
}
