//! The store against a `BTreeMap` model with keys chosen against the page
//! file's key heads: long shared prefixes, zero and 0xff bytes, keys that
//! are prefixes of others, the empty key, keys at the size cap; gets of
//! near misses (truncated, zero-extended keys). Checkpoints often, with
//! a node cache large (nodes as checkpoints cached them) or tiny (read
//! back from disk), and reopens.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ringkv::{Kv, KEY_BYTES_MAX};
use uring::{SimRng, SimStorage};

fn key(rng: &mut SimRng) -> Vec<u8> {
    let alphabet = [0u8, 1, 0xff];
    let n = rng.below(14) as usize;
    let suffix: Vec<u8> = (0..n).map(|_| alphabet[rng.below(3) as usize]).collect();
    let base: Vec<u8> = match rng.below(8) {
        0 => Vec::new(),
        1 => vec![0; 300],
        2 => vec![b'x'; 9],
        3 => vec![0xff; KEY_BYTES_MAX - n],
        4 => vec![0; KEY_BYTES_MAX - n],
        5 => vec![7; 7],
        6 => vec![7; 8],
        _ => b"p".to_vec(),
    };
    [base, suffix].concat()
}

fn value(rng: &mut SimRng) -> Vec<u8> {
    let len = match rng.below(30) {
        0 => 1500 + rng.below(9000) as usize,
        1..=3 => 0,
        _ => rng.below(200) as usize,
    };
    (0..len).map(|_| rng.below(256) as u8).collect()
}

fn near(rng: &mut SimRng, model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let Some(k) =
        (!model.is_empty()).then(|| model.keys().nth(rng.below(model.len() as u64) as usize).unwrap().clone())
    else {
        return key(rng);
    };
    match rng.below(4) {
        0 => k.clone(),
        1 => k[..rng.below(k.len() as u64 + 1) as usize].to_vec(),
        2 => {
            let mut k = [k.clone(), vec![0; 1 + rng.below(9) as usize]].concat();
            k.truncate(KEY_BYTES_MAX);
            k
        }
        _ => key(rng),
    }
}

fn run(seed: u64, cache_bytes: usize) {
    let disk = SimStorage::new();
    let open = |disk: &SimStorage| {
        let mut options = common::options(common::AUTO);
        options.memtable_bytes = 32 << 10;
        options.wal_bytes = 4 * wal::SEGMENT_BYTES_MIN;
        options.cache_bytes = cache_bytes;
        Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), options).unwrap()
    };
    let mut db = open(&disk);
    let mut rng = SimRng::new(seed);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for step in 0..1500 {
        let ctx = format!("seed={seed} cache={cache_bytes} step={step}");
        match rng.below(100) {
            0..=29 => {
                let n = 1 + rng.below(12);
                db.write(common::model_batch(&mut rng, &mut model, n, 4, near, value)).unwrap();
            }
            30..=79 => {
                for _ in 0..20 {
                    let k = near(&mut rng, &model);
                    assert_eq!(db.get(&k).unwrap(), model.get(&k).cloned(), "{ctx}: get {:?}", &k[..k.len().min(20)]);
                }
            }
            80..=84 => {
                let (a, b) = (near(&mut rng, &model), near(&mut rng, &model));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let got: Vec<_> = db.scan(lo.clone()..hi.clone()).map(Result::unwrap).collect();
                let want: Vec<_> = model.range(lo..hi).map(|(k, v)| (k.clone(), v.clone())).collect();
                assert!(got == want, "{ctx}: scan");
            }
            85..=94 => db.checkpoint().unwrap_or_else(|e| panic!("{ctx}: checkpoint: {e}")),
            _ => {
                drop(db);
                db = open(&disk);
                for (k, v) in &model {
                    assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{ctx}: after reopen");
                }
                let all: Vec<_> = db.scan::<Vec<u8>>(..).map(Result::unwrap).collect();
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert!(all == want, "{ctx}: scan after reopen");
            }
        }
    }
    db.checkpoint().unwrap();
    let stats = db.stats().unwrap().page_file;
    assert!(stats.generation > 20 && stats.height >= 3, "seed={seed}: a deep tree, many checkpoints: {stats:?}");
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "seed={seed}: final");
    }
}

#[test]
fn nasty_keys_against_a_model_with_large_and_tiny_caches() {
    for seed in 0..6 {
        run(seed, 64 << 20);
        run(seed, 4 << 10);
    }
}
