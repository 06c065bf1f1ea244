//! Group commit without a committer thread: many writers lead in turn.
//! These tests look for what that can get wrong: a lost wake-up (a writer
//! waiting forever: the test hangs), a frame acknowledged before it is
//! durable, a failure reaching a writer as success, or frames that wait
//! forever because nobody led their batch.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use ringkv_wal::{Error, Lsn, Wal};
use uring::{Io, SimRng, SimStorage, Storage, StorageOptions, SyncMode};

use common::{frame, options, DIR};

fn open(storage: Arc<dyn Storage>, dir: &Path) -> (Wal, BTreeSet<Vec<u8>>) {
    uring::create_dirs(storage.as_ref(), dir).unwrap();
    let mut seen = BTreeSet::new();
    let wal = Wal::open(storage, dir, options(), Lsn(0), &mut |_, p| {
        assert!(seen.insert(p.to_vec()), "a frame replayed twice");
    })
    .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    (wal, seen)
}

/// Runs `threads` writers of `each` appends: mostly waiting, some not,
/// some `sync` calls. Returns the payloads acknowledged durable (waiting
/// appends that returned Ok, and non-waiting ones followed by an Ok sync)
/// and every payload appended.
fn writers(wal: &Wal, threads: u64, each: u64) -> (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>, Vec<String>) {
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = SimRng::new(t);
                    let (mut acked, mut placed, mut unsynced, mut errors) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for i in 0..each {
                        let payload = format!("t{t:03}-{i:05}-{}", "x".repeat(rng.below(300) as usize)).into_bytes();
                        let wait = rng.below(10) != 0;
                        match wal.append(frame(&payload), wait) {
                            Ok(_) if wait => acked.push(payload.clone()),
                            Ok(_) => unsynced.push(payload.clone()),
                            Err(e) => errors.push(format!("t{t} append {i}: {e}")),
                        }
                        placed.push(payload);
                        if rng.below(20) == 0 && wal.sync().is_ok() {
                            acked.append(&mut unsynced);
                        }
                    }
                    (acked, placed, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer")).collect()
    });
    let (mut acked, mut placed, mut errors) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for (a, p, e) in results {
        acked.extend(a);
        placed.extend(p);
        errors.extend(e);
    }
    (acked, placed, errors)
}

/// Every acknowledged payload is among those seen after the reopen.
fn assert_none_lost(acked: &BTreeSet<Vec<u8>>, seen: &BTreeSet<Vec<u8>>, case: &str) {
    let lost: Vec<_> = acked.difference(seen).map(|p| String::from_utf8_lossy(&p[..11]).into_owned()).collect();
    assert!(lost.is_empty(), "{case}: {} acknowledged frames lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

/// 48 writers on every real backend and on the simulated disk (buffered
/// and O_DIRECT-like, syncs completing in any order): every append
/// returns, and after the close every frame is in the log exactly once.
#[test]
fn many_writers_lead_in_turn_and_nothing_is_lost_or_stuck() {
    let real = [
        (Io::Uring, SyncMode::Syscalls),
        (Io::Uring, SyncMode::RwfDsync),
        (Io::Uring, SyncMode::LinkedFsync),
        (Io::Syscall, SyncMode::Syscalls),
    ];
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (n, (io, sync_mode)) in real.into_iter().enumerate() {
        let options = StorageOptions { io, sync_mode, commit_buffer_bytes: ringkv_wal::COMMIT_BUFFER_BYTES };
        let storage = match uring::open_storage(options) {
            Ok(storage) => storage,
            Err(e) if io == Io::Uring => {
                eprintln!("skipped {io:?}: {e}");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let dir = base.path().join(format!("wal-{n}"));
        let (wal, _) = open(storage.clone(), &dir);
        let (acked, placed, errors) = writers(&wal, 48, 150);
        assert!(errors.is_empty(), "{errors:?}");
        drop(wal);
        let (_, seen) = open(storage, &dir);
        let missing: Vec<_> =
            placed.difference(&seen).map(|p| String::from_utf8_lossy(&p[..11]).into_owned()).collect();
        let acked_missing = acked.difference(&seen).count();
        assert!(
            missing.is_empty() && seen.len() == placed.len(),
            "{io:?}/{sync_mode:?}: {} of {} placed frames missing after the close ({acked_missing} acknowledged), e.g. {:?}",
            missing.len(),
            placed.len(),
            &missing[..missing.len().min(5)]
        );
    }
    for pipelined in [false, true] {
        let disk = SimStorage::new().pipelined(pipelined).seeded(7);
        let (wal, _) = open(Arc::new(disk.clone()), Path::new(DIR));
        let (acked, placed, errors) = writers(&wal, 48, 100);
        assert!(errors.is_empty(), "{errors:?}");
        // A power cut right after the last acknowledgement: what was
        // acknowledged is there.
        disk.power_cut();
        drop(wal);
        let (_, seen) = open(Arc::new(disk.after_power_cut(7)), Path::new(DIR));
        assert_none_lost(&acked, &seen, &format!("pipelined={pipelined}"));
        assert!(seen.is_subset(&placed));
    }
}

/// A sync fails while many writers wait: every writer returns (none hangs),
/// none whose batch failed or came later is told Ok, and after a power
/// cut every frame that was acknowledged is there.
#[test]
fn a_failed_sync_under_many_writers_answers_everyone_and_loses_nothing_acknowledged() {
    for seed in 0..12u64 {
        let disk = SimStorage::new().pipelined(seed % 2 == 1).seeded(seed);
        let (wal, _) = open(Arc::new(disk.clone()), Path::new(DIR));
        disk.fail_file_call(&Path::new(DIR).join(format!("{:020}.wal", 0)), 6 + seed * 3, libc::EIO);
        let (acked, _, _) = writers(&wal, 24, 60);
        let poisoned = wal.append(frame(b"after"), true);
        assert!(matches!(poisoned, Err(Error::Poisoned { .. })), "seed={seed}: {poisoned:?}");
        disk.power_cut();
        drop(wal);
        let (_, seen) = open(Arc::new(disk.after_power_cut(seed)), Path::new(DIR));
        assert_none_lost(&acked, &seen, &format!("seed={seed}"));
    }
}

/// Review finding: without a committer thread, a frame appended without
/// waiting stayed in memory until another write, a sync or the close came
/// along; a crash any time later lost it. The flusher commits it on its
/// own.
#[test]
fn a_frame_nobody_waits_for_becomes_durable_on_its_own() {
    let disk = SimStorage::new().seeded(1);
    let (wal, _) = open(Arc::new(disk.clone()), Path::new(DIR));
    wal.append(frame(b"acked"), true).unwrap();
    let lsn = wal.append(frame(b"nosync"), false).unwrap();
    // Nothing else happens in this log: poll its durable end (no timing
    // threshold: the test only ends once the flusher has done its work).
    while wal.durable_lsn() <= lsn {
        std::thread::yield_now();
    }
    disk.power_cut();
    drop(wal);
    let (_, seen) = open(Arc::new(disk.after_power_cut(1)), Path::new(DIR));
    assert!(seen.contains(&b"nosync"[..]), "{seen:?}");
}

/// An `Apply` that panics must not unwind through the leader (which would
/// leave the leadership poisoned and every writer parked for good): its
/// writer gets `ApplyPanicked`, every writer returns, the applies of the
/// others still run, and the log refuses further writes.
#[test]
fn a_panicking_apply_answers_its_writer_and_hangs_no_one() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let disk = SimStorage::new().seeded(3);
    let (wal, _) = open(Arc::new(disk), Path::new(DIR));
    let applied = Arc::new(AtomicU64::new(0));
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                let (wal, applied) = (&wal, &applied);
                scope.spawn(move || {
                    (0..20u64)
                        .map(|i| {
                            let bomb = t == 5 && i == 10;
                            let applied = Arc::clone(applied);
                            wal.append_then(
                                frame(format!("t{t}-{i}").as_bytes()),
                                Box::new(move |_| {
                                    assert!(!bomb, "the bomb goes off");
                                    applied.fetch_add(1, Ordering::SeqCst);
                                }),
                            )
                            .map(|_| ())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer")).collect()
    });
    let bomb = &results[5][10];
    assert!(matches!(bomb, Err(Error::ApplyPanicked { message, .. }) if message == "the bomb goes off"), "{bomb:?}");
    let ok = results.iter().flatten().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(applied.load(Ordering::SeqCst), ok, "every writer told Ok had its Apply run");
    assert!(results
        .iter()
        .flatten()
        .all(|r| r.is_ok() || matches!(r, Err(Error::ApplyPanicked { .. } | Error::Poisoned { .. }))));
    let after = wal.append(frame(b"after"), true);
    assert!(matches!(after, Err(Error::Poisoned { .. })), "{after:?}");
}

/// A lone writer never yields to let others join its batch (there are
/// none), also when it mixes frames nobody waits for with waiting ones:
/// only waiting writers count (review 21: counting every frame, a lone
/// writer yielded before each waiting append that followed non-waiting
/// ones, as a batch then held several frames).
#[test]
fn a_lone_writer_never_yields_to_gather() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let real = uring::open_storage(StorageOptions {
        io: Io::Syscall,
        sync_mode: SyncMode::RwfDsync,
        commit_buffer_bytes: ringkv_wal::COMMIT_BUFFER_BYTES,
    })
    .unwrap();
    let disks: [(Arc<dyn Storage>, &Path); 2] =
        [(real, &base.path().join("wal")), (Arc::new(SimStorage::new().seeded(5)), Path::new(DIR))];
    for (storage, dir) in disks {
        let (wal, _) = open(storage, dir);
        for i in 0..300u32 {
            for j in 0..3u32 {
                wal.append(frame(format!("nosync-{i}-{j}").as_bytes()), false).unwrap();
            }
            wal.append(frame(format!("sync-{i}").as_bytes()), true).unwrap();
            if i % 50 == 0 {
                wal.sync().unwrap();
            }
        }
        let stats = wal.stats();
        assert!(stats.average_batch_frames() > 1.0, "batches held several frames: {stats:?}");
        assert_eq!(stats.gather_yields, 0, "{}", dir.display());
    }
}
