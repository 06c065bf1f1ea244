//! Crash sequences on the simulated disk, over 1,000 seeds per fault mode:
//! each seed opens the store, runs concurrent writers until a power cut at
//! a random call, reopens, and does it again, three rounds. One seed picks
//! the workload, the call the power dies at, what survives of unsynced
//! writes and directory entries, and the order concurrent syncs complete
//! in; a failure prints `seed=N`. (Thread interleaving is the OS's, so a
//! rerun may take another path.) The disk loses unsynced directory entries
//! always; odd seeds have O_DIRECT-like files whose syncs overlap and
//! complete in any order, even seeds buffered files synced one at a time;
//! the strict run leaves torn sectors garbage or unreadable. A third run
//! alternates I/O errors followed by clean reopens on the same disk (the
//! page cache still holding what a failed sync did not write back) with
//! power cuts.
//!
//! The memtable threshold is a few KiB and one writer asks for checkpoints
//! too, so the power cut lands inside checkpoints as often as between
//! them: in page writes, between them and the meta page, in the log's
//! reclaim.
//!
//! After every recovery: every acknowledged `Sync` write of every round is
//! there with its value (or a later write of the same key), an
//! acknowledged delete is not undone by an older value, no batch is
//! half-applied, and nothing that was never written appears.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ringkv::{Durability, Kv, WriteBatch};
use uring::{SimRng, SimStorage};

const THREADS: u64 = 4;
const OPS_PER_THREAD: u64 = 40;
const SLOTS: u64 = 6;

/// A slot's versions attempted (`true` for a delete), and the last
/// acknowledged (durable) one.
type Slot = (Vec<(u64, bool)>, Option<u64>);

/// What one writer thread did.
#[derive(Default)]
struct Log {
    /// Per overwritten key.
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Batches: (keys, acknowledged durable).
    batches: Vec<(Vec<Vec<u8>>, bool)>,
}

const ROUNDS: u64 = 3;

fn slot_key(round: u64, t: u64, s: u64) -> Vec<u8> {
    format!("slot-{round}-{t}-{s}").into_bytes()
}

/// A slot's value at `version`. Every third seed pads values to 3 KB so the
/// log crosses segment boundaries (padding frames, segment switches and the
/// background preparer all meet the power cut).
fn slot_value(key: &[u8], version: u64, seed: u64) -> Vec<u8> {
    let mut value = format!("{}@{version:06}", String::from_utf8_lossy(key)).into_bytes();
    if seed % 3 == 2 {
        value.resize(3000, b'.');
    }
    value
}

fn writer(db: &Kv, round: u64, t: u64, seed: u64) -> Log {
    let mut rng = SimRng::new(seed ^ (t + 1).wrapping_mul(0x9E37_79B9) ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut log = Log::default();
    for i in 0..OPS_PER_THREAD {
        let durability = if rng.below(5) == 0 { Durability::NoSync } else { Durability::Sync };
        let acked_durable = |r: ringkv::Result<()>| r.is_ok() && durability == Durability::Sync;
        if rng.below(3) == 0 {
            let keys: Vec<Vec<u8>> = (0..3).map(|j| format!("batch-{round}-{t}-{i}-{j}").into_bytes()).collect();
            let mut batch = WriteBatch::new();
            for k in &keys {
                batch.put(k, k);
            }
            log.batches.push((keys, false));
            let result = db.write_with(batch, durability);
            let failed = result.is_err();
            log.batches.last_mut().expect("pushed").1 = acked_durable(result);
            if failed {
                break;
            }
        } else {
            let key = slot_key(round, t, rng.below(SLOTS));
            let entry = log.slots.entry(key.clone()).or_default();
            let delete = rng.below(6) == 0;
            entry.0.push((i, delete));
            let mut batch = WriteBatch::new();
            match delete {
                true => batch.delete(&key),
                false => batch.put(&key, slot_value(&key, i, seed)),
            };
            let result = db.write_with(batch, durability);
            let failed = result.is_err();
            if acked_durable(result) {
                entry.1 = Some(i);
            }
            if failed {
                break;
            }
        }
        if t == 0 && i % 8 == 7 {
            // Fails once the power is cut, like the writes.
            let _ = db.checkpoint();
        }
    }
    log
}

fn check(seed: u64, db: &Kv, logs: &[Log]) {
    let mut expected_keys = 0;
    let mut known = std::collections::BTreeSet::new();
    for log in logs {
        for (key, (attempted, acked)) in &log.slots {
            known.insert(key.clone());
            let got = db.get(key).unwrap_or_else(|e| panic!("seed={seed}: get {key:?}: {e}"));
            // The versions the key's state may be: the put that wrote its
            // value, or, if it has none, any delete.
            let versions: Vec<u64> = match &got {
                Some(v) => vec![
                    attempted
                        .iter()
                        .find(|&&(i, delete)| !delete && slot_value(key, i, seed) == *v)
                        .unwrap_or_else(|| panic!("seed={seed}: {key:?} holds a value never written: {v:?}"))
                        .0,
                ],
                None => attempted.iter().filter(|(_, delete)| *delete).map(|(i, _)| *i).collect(),
            };
            if let Some(acked) = acked {
                assert!(
                    versions.iter().any(|&v| v >= *acked),
                    "seed={seed}: acknowledged {key:?}@{acked} lost: it holds {got:?} (attempted {attempted:?})"
                );
            }
            expected_keys += usize::from(got.is_some());
        }
        for (keys, acked) in &log.batches {
            let present: Vec<bool> = keys.iter().map(|k| db.get(k).unwrap().is_some_and(|v| v == *k)).collect();
            assert!(
                present.iter().all(|&p| p) || present.iter().all(|&p| !p),
                "seed={seed}: batch half-applied: {keys:?} {present:?}"
            );
            if *acked {
                assert!(present[0], "seed={seed}: acknowledged batch {keys:?} lost");
            }
            expected_keys += if present[0] { 3 } else { 0 };
            known.extend(keys.iter().cloned());
        }
    }
    for item in db.scan::<Vec<u8>>(..) {
        let (key, _) = item.unwrap_or_else(|e| panic!("seed={seed}: scan: {e}"));
        assert!(known.contains(&key), "seed={seed}: key {key:?} was never written");
    }
    assert_eq!(db.scan::<Vec<u8>>(..).count(), expected_keys, "seed={seed}");
}

/// What ends a round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// A power cut at a random call (strict: torn sectors garbage or
    /// unreadable).
    PowerCut { strict: bool },
    /// Even rounds: one random data call fails with EIO (a log write or
    /// sync, a page-file write or sync, a directory sync...), the store is
    /// closed and reopened on the same disk, no power cut (the page cache
    /// keeps what a failed sync did not write back); if a directory sync
    /// failed, the file system needs a remount first, as ext4 after a
    /// journal abort does (the power cut stands in for it). Odd rounds end
    /// with a power cut.
    IoErrorThenReopen,
}

/// What one seed's sequence went through.
#[derive(Default)]
struct Seen {
    /// The log reached past its first segment.
    crossed_segments: bool,
    /// Checkpoints made.
    checkpoints: u64,
    /// I/O errors the workload ran into.
    io_errors: u64,
    /// Reopens that needed a remount first.
    remounts: u64,
}

/// Runs one seed's crash sequence.
fn one_seed(seed: u64, fault: Fault) -> Seen {
    let strict = fault == Fault::PowerCut { strict: true };
    let mut disk = SimStorage::new().pipelined(seed % 2 == 1).strict(strict).seeded(seed);
    let dir = Path::new("/db");
    let mut options = common::options(common::AUTO);
    options.memtable_bytes = 4 << 10;
    options.wal_bytes = 4 * wal::SEGMENT_BYTES_MIN;
    options.cache_bytes = 64 << 10;
    let mut logs: Vec<Log> = Vec::new();
    let mut seen = Seen::default();
    let rounds = if fault == Fault::IoErrorThenReopen { 2 * ROUNDS } else { ROUNDS };
    for round in 0..rounds {
        let db = match Kv::open_on(Arc::new(disk.clone()), dir, options) {
            Err(e) if disk.needs_remount() => {
                assert!(e.to_string().contains("fsync"), "seed={seed} round={round}: {e}");
                seen.remounts += 1;
                disk.power_cut();
                disk = disk.after_power_cut(seed.wrapping_mul(rounds) + round + 0x5eed);
                Kv::open_on(Arc::new(disk.clone()), dir, options)
            }
            other => other,
        }
        .unwrap_or_else(|e| panic!("seed={seed} round={round}: recovery failed: {e}"));
        check(seed, &db, &logs);
        let mut rng = SimRng::new(seed.wrapping_mul(rounds) + round);
        // Each write costs a few calls; some seeds fault past the end of the workload.
        let at = disk.calls() + 1 + rng.below(THREADS * OPS_PER_THREAD * 2);
        let power_cut = fault != Fault::IoErrorThenReopen || round % 2 == 1;
        match power_cut {
            true => disk.power_cut_at(at),
            false => disk.fail_call(at, libc::EIO),
        }
        let round_logs: Vec<Log> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    s.spawn({
                        let db = &db;
                        move || writer(db, round, t, seed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
        });
        logs.extend(round_logs);
        seen.crossed_segments |= db.wal_stats().durable_lsn.0 > wal::SEGMENT_BYTES_MIN;
        seen.checkpoints = db.stats().map_or(seen.checkpoints, |s| s.page_file.generation);
        seen.io_errors += u64::from(!power_cut && disk.calls() >= at);
        if power_cut {
            disk.power_cut();
            drop(db);
            disk = disk.after_power_cut(seed.wrapping_mul(rounds) + round);
        } else {
            drop(db);
            disk.clear_faults(); // one not reached must not hit the reopen
        }
    }
    let db = Kv::open_on(Arc::new(disk), dir, options)
        .unwrap_or_else(|e| panic!("seed={seed}: recovery after the last round failed: {e}"));
    check(seed, &db, &logs);
    seen
}

fn run_seeds(fault: Fault) {
    let seeds: u64 = std::env::var("RINGKV_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let first: u64 = std::env::var("RINGKV_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut crossed, mut checkpoints, mut io_errors, mut remounts) = (0, 0, 0, 0);
    for seed in first..first + seeds {
        let seen = one_seed(seed, fault);
        crossed += u64::from(seen.crossed_segments);
        checkpoints += seen.checkpoints;
        io_errors += seen.io_errors;
        remounts += seen.remounts;
    }
    eprintln!(
        "{crossed} of {seeds} seeds crossed a segment boundary, {checkpoints} checkpoints in all, {io_errors} I/O \
         errors hit, {remounts} remounts ({fault:?})"
    );
    assert!(checkpoints >= seeds, "only {checkpoints} checkpoints in {seeds} seeds");
    if fault == Fault::IoErrorThenReopen {
        // Most rounds' errors must land inside the workload.
        assert!(io_errors >= seeds, "only {io_errors} I/O errors hit in {seeds} seeds");
    }
    // The padded seeds must really exercise segment roll-over under power cuts.
    assert!(seeds < 100 || crossed >= seeds / 20, "only {crossed} of {seeds} seeds crossed a segment");
}

#[test]
fn acknowledged_writes_survive_sequences_of_power_cuts() {
    run_seeds(Fault::PowerCut { strict: false });
}

#[test]
fn acknowledged_writes_survive_power_cuts_that_leave_torn_sectors_garbage_or_unreadable() {
    run_seeds(Fault::PowerCut { strict: true });
}

#[test]
fn acknowledged_writes_survive_io_errors_followed_by_clean_reopens() {
    run_seeds(Fault::IoErrorThenReopen);
}
