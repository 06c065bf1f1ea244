//! The store against a `BTreeMap` model: random puts, deletes, batches,
//! gets and scans, with reopen in between, on every backend.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ringkv::{Kv, WriteBatch};
use uring::{SimRng, SimStorage};

fn key(rng: &mut SimRng) -> Vec<u8> {
    format!("key-{:03}", rng.below(60)).into_bytes()
}

fn value(rng: &mut SimRng) -> Vec<u8> {
    let len = rng.below(200) as usize;
    (0..len).map(|_| rng.below(256) as u8).collect()
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
                let mut batch = WriteBatch::new();
                for _ in 0..rng.below(8) {
                    let k = key(&mut rng);
                    if rng.below(3) == 0 {
                        batch.delete(&k);
                        model.remove(&k);
                    } else {
                        let v = value(&mut rng);
                        batch.put(&k, &v);
                        model.insert(k, v);
                    }
                }
                db.write(batch).unwrap();
            }
            65..=84 => {
                let k = key(&mut rng);
                assert_eq!(db.get(&k).unwrap(), model.get(&k).cloned(), "{ctx}: get");
            }
            85..=95 => {
                let (a, b) = (key(&mut rng), key(&mut rng));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let got: Vec<_> = db.scan(lo.clone()..hi.clone()).collect();
                let want: Vec<_> = model.range(lo..hi).map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(got, want, "{ctx}: scan");
            }
            _ => {
                db = reopen(db);
                let all: Vec<_> = db.scan::<Vec<u8>>(..).collect();
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
            Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), common::options(common::AUTO)).unwrap()
        };
        let reopen = |db: Kv| {
            drop(db);
            open(&disk)
        };
        run(seed, 400, open(&disk), &reopen);
    }
}

#[test]
fn model_on_real_backends() {
    for io in common::REAL_BACKENDS {
        for seed in 0..3 {
            let dir = common::temp_dir("model");
            let reopen = |db: Kv| {
                drop(db);
                common::open(dir.path(), io)
            };
            run(seed, 300, common::open(dir.path(), io), &reopen);
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
