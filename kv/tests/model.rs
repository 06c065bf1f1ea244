//! The store against a `BTreeMap` model: random puts, deletes, batches,
//! gets and scans, with checkpoints (asked for, and on small thresholds)
//! and reopens in between, on the simulated disk and every real backend.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ringkv::{Kv, WriteBatch};
use uring::{SimRng, SimStorage};

/// Mostly a few hot keys; some from a wider space, so that the page
/// file's tree grows branches.
fn key(rng: &mut SimRng) -> Vec<u8> {
    match rng.below(4) {
        0 => format!("key-{:04}", rng.below(3000)).into_bytes(),
        _ => format!("key-{:04}", rng.below(60)).into_bytes(),
    }
}

/// Mostly small values; now and then one too large for a leaf.
fn value(rng: &mut SimRng) -> Vec<u8> {
    let len = match rng.below(40) {
        0 => 1500 + rng.below(9000) as usize,
        _ => rng.below(200) as usize,
    };
    (0..len).map(|_| rng.below(256) as u8).collect()
}

/// Options with thresholds small enough that the checkpointer runs often.
fn checkpointing(backend: common::Backend) -> ringkv::Options {
    let mut options = common::options(backend);
    options.memtable_bytes = 16 << 10;
    options.wal_bytes = 4 * wal::SEGMENT_BYTES_MIN;
    options.cache_bytes = 64 << 10;
    options
}

/// Runs `steps` random operations against `db` and `model`, reopening via
/// `reopen` now and then.
fn run(seed: u64, steps: usize, mut db: Kv, reopen: &dyn Fn(Kv) -> Kv) {
    let mut rng = SimRng::new(seed);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for step in 0..steps {
        let ctx = format!("seed={seed} step={step}");
        match rng.below(100) {
            0..=34 => {
                let (k, v) = (key(&mut rng), value(&mut rng));
                db.put(&k, &v).unwrap();
                model.insert(k, v);
            }
            35..=49 => {
                let k = key(&mut rng);
                db.delete(&k).unwrap();
                model.remove(&k);
            }
            50..=64 => {
                let n = rng.below(8);
                db.write(common::model_batch(&mut rng, &mut model, n, 3, |rng, _| key(rng), value)).unwrap();
            }
            65..=84 => {
                let k = key(&mut rng);
                assert_eq!(db.get(&k).unwrap(), model.get(&k).cloned(), "{ctx}: get");
            }
            85..=89 => {
                let (a, b) = (key(&mut rng), key(&mut rng));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let got: Vec<_> = db.scan(lo.clone()..hi.clone()).map(Result::unwrap).collect();
                let want: Vec<_> = model.range(lo..hi).map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(got, want, "{ctx}: scan");
            }
            90..=92 => {
                let (a, b) = (key(&mut rng), key(&mut rng));
                let got: Vec<_> = db.scan(a.clone()..=b.clone()).rev().map(Result::unwrap).collect();
                let want: Vec<_> = if a <= b {
                    model.range(a..=b).rev().map(|(k, v)| (k.clone(), v.clone())).collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "{ctx}: reverse scan");
            }
            93..=94 => {
                let prefix = format!("key-0{}", rng.below(7)).into_bytes();
                let got: Vec<_> = db.scan_prefix(&prefix).map(Result::unwrap).collect();
                let want: Vec<_> =
                    model.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(got, want, "{ctx}: prefix scan");
            }
            95..=96 => db.checkpoint().unwrap_or_else(|e| panic!("{ctx}: checkpoint: {e}")),
            _ => {
                db = reopen(db);
                let all: Vec<_> = db.scan::<Vec<u8>>(..).map(Result::unwrap).collect();
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(all, want, "{ctx}: after reopen");
            }
        }
    }
}

#[test]
fn model_on_the_simulated_disk() {
    for seed in 0..40 {
        let disk = SimStorage::new();
        let open = |disk: &SimStorage| {
            Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), checkpointing(common::AUTO)).unwrap()
        };
        let reopen = |db: Kv| {
            drop(db);
            open(&disk)
        };
        run(seed, 400, open(&disk), &reopen);
        let db = open(&disk);
        let stats = db.stats().unwrap();
        assert!(stats.page_file.generation > 0, "seed={seed}: no checkpoint ran");
    }
}

#[test]
fn model_on_real_backends() {
    for io in common::REAL_BACKENDS {
        for seed in 0..3 {
            let dir = common::temp_dir("model");
            let open = || Kv::open_with(dir.path(), checkpointing(io)).unwrap();
            let reopen = |db: Kv| {
                drop(db);
                open()
            };
            run(seed, 300, open(), &reopen);
        }
    }
}

/// Regression: a range that ends before it starts panicked inside
/// `BTreeMap::range` (`db.scan("c".."a")`, `kv scan --from z --to a`).
#[test]
fn backwards_and_empty_ranges_scan_nothing() {
    let disk = uring::SimStorage::new();
    let db =
        Kv::open_on(std::sync::Arc::new(disk), std::path::Path::new("/db"), common::options(common::AUTO)).unwrap();
    for k in ["a", "b", "c"] {
        db.put(k, k).unwrap();
    }
    assert_eq!(db.scan("c".."a").count(), 0);
    assert!(db.contains_key("b").unwrap() && !db.contains_key("z").unwrap());
    let shown = format!("{db:?}");
    assert!(shown.contains("/db") && shown.contains("Simulated"), "{shown}");
    assert_eq!(db.scan("b".."b").count(), 0);
    assert_eq!(db.scan("c"..="a").count(), 0);
    assert_eq!(db.scan("b"..="b").count(), 1);
    use std::ops::Bound::Excluded;
    assert_eq!(db.scan::<&str>((Excluded("b"), Excluded("b"))).count(), 0);
    assert_eq!(db.scan::<&str>((Excluded("a"), Excluded("c"))).count(), 1);
    let dir = common::temp_dir("backwards");
    let db = dir.path().to_str().unwrap();
    assert!(common::kv_bin().args(["--db", db, "put", "m", "v"]).output().unwrap().status.success());
    let out = common::kv_bin().args(["--db", db, "scan", "--from", "z", "--to", "a"]).output().unwrap();
    assert!(out.status.success(), "no panic: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// A scan read from both ends (`next` and `next_back` interleaved, over
/// several fetch chunks) yields every item exactly once, in order from each
/// end; prefix scans stop at the prefix, also for `0xff` bytes.
#[test]
fn scans_from_both_ends_meet_without_repeating() {
    let disk = SimStorage::new();
    let db = Kv::open_on(Arc::new(disk), Path::new("/db"), common::options(common::AUTO)).unwrap();
    let keys: Vec<Vec<u8>> = (0..1500u32).map(|i| format!("{i:05}").into_bytes()).collect();
    for chunk in keys.chunks(100) {
        let mut batch = WriteBatch::new();
        for k in chunk {
            batch.put(k, k);
        }
        db.write(batch).unwrap();
    }
    for (seed, pattern) in [(1u64, 2u64), (2, 3), (3, 7)] {
        let mut rng = SimRng::new(seed);
        let mut scan = db.scan::<&[u8]>(..);
        let (mut front, mut back) = (Vec::new(), Vec::new());
        loop {
            let item = if rng.below(pattern) == 0 {
                scan.next_back().map(|i| (true, i))
            } else {
                scan.next().map(|i| (false, i))
            };
            match item {
                Some((true, i)) => back.push(i.unwrap().0),
                Some((false, i)) => front.push(i.unwrap().0),
                None => break,
            }
        }
        assert!(scan.next().is_none() && scan.next_back().is_none(), "stays ended");
        back.reverse();
        front.extend(back);
        assert_eq!(front, keys, "seed={seed}");
    }
    db.put([0x01, 0xff], "a").unwrap();
    db.put([0x01, 0xff, 0xff], "b").unwrap();
    db.put([0x02], "c").unwrap();
    let got: Vec<_> = db.scan_prefix([0x01, 0xff]).map(|i| i.unwrap().1).collect();
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(db.scan_prefix("").count(), 1503);
    assert_eq!(db.scan_prefix("0149").next_back().unwrap().unwrap().0, b"01499".to_vec());
}

/// Review finding: once the two ends of a scan had met, the front fetched
/// again, and a key put meanwhile below one already returned came out of
/// order.
#[test]
fn a_double_ended_scan_stays_in_key_order_under_a_concurrent_put() {
    let db = Kv::open_on(Arc::new(SimStorage::new()), Path::new("/db"), common::options(common::AUTO)).unwrap();
    db.put("b", "1").unwrap();
    db.put("d", "1").unwrap();
    let mut scan = db.scan::<&str>(..);
    assert_eq!(scan.next_back().unwrap().unwrap().0, b"d");
    assert_eq!(scan.next().unwrap().unwrap().0, b"b");
    db.put("a", "1").unwrap();
    let forward: Vec<Vec<u8>> = std::iter::from_fn(|| scan.next()).map(|i| i.unwrap().0).collect();
    assert!(forward.iter().all(|k| k.as_slice() > b"b".as_slice()), "after b, forward yielded {forward:?}");
}

/// Sync writes are applied to the memtable by the leader that acknowledges
/// them, for the whole group: every writer still reads its own write the
/// moment `put` returns, and a batch that failed is never applied.
#[test]
fn writers_read_their_own_writes_when_leaders_apply_for_them() {
    let disk = SimStorage::new().seeded(3);
    let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), common::options(common::AUTO)).unwrap();
    std::thread::scope(|s| {
        for t in 0..24 {
            let db = &db;
            s.spawn(move || {
                for i in 0..150 {
                    let key = format!("t{t:02}-{i:04}");
                    db.put(&key, &key).unwrap();
                    assert_eq!(db.get(&key).unwrap().as_deref(), Some(key.as_bytes()), "{key} not visible on return");
                }
            });
        }
    });
    assert_eq!(db.scan::<&str>(..).count(), 24 * 150);
    // A failed sync: the failing write reports it, and is not applied.
    let disk = SimStorage::new().seeded(4);
    let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), common::options(common::AUTO)).unwrap();
    db.put("first", "x").unwrap();
    disk.fail_file_call(&common::first_segment(Path::new("/db")), 1, libc::EIO);
    let err = db.put("failed", "x").expect_err("its sync failed");
    assert!(err.is_write_failure(), "{err}");
    assert_eq!(db.get("failed").unwrap(), None, "a failed write was applied");
}
