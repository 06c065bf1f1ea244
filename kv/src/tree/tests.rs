//! The page file against a BTreeMap model, on the simulated disk: random
//! checkpoints of puts (small and overflowing values) and deletes, reads
//! of every kind, reopens, and power cuts inside checkpoints.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use uring::{SimRng, SimStorage, Storage};
use wal::Lsn;

use super::page::{self, Node, PageNo, PageRef, Stored};
use super::{Meta, PageFile, PAGE_BYTES};

/// A change as these tests make them: owned (the store's are borrowed
/// from the memtable).
type Change = (Bytes, Option<Bytes>);

/// Checkpoints of owned changes.
trait CheckpointOwned {
    fn checkpoint_owned(&self, changes: &[Change], lsn: Lsn) -> crate::Result<Meta>;
}

impl CheckpointOwned for PageFile {
    fn checkpoint_owned(&self, changes: &[Change], lsn: Lsn) -> crate::Result<Meta> {
        let borrowed: Vec<super::Change<'_>> = changes.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
        self.checkpoint(&borrowed, lsn)
    }
}

const FILE: &str = "/db/data.db";

fn open(storage: &dyn Storage) -> PageFile {
    uring::create_dirs(storage, Path::new("/db")).unwrap();
    PageFile::open(storage, Path::new(FILE), 64 * PAGE_BYTES, false).unwrap().0
}

/// Puts of keys `keys`, each of `len` bytes of `byte`.
fn puts(keys: std::ops::Range<u64>, byte: u8, len: usize) -> Vec<Change> {
    keys.map(|i| (key(i), Some(Bytes::from(vec![byte; len])))).collect()
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

fn value(rng: &mut SimRng, i: u64) -> Bytes {
    let len = match rng.below(20) {
        0 => 2000 + rng.below(20_000) as usize, // overflow pages
        1 => 0,
        _ => rng.below(200) as usize,
    };
    Bytes::from(format!("v{i}-").into_bytes().into_iter().cycle().take(len).collect::<Vec<u8>>())
}

/// A batch of random changes over keys 0..span, sorted and unique.
fn changes(rng: &mut SimRng, span: u64, n: usize, model: &mut BTreeMap<Bytes, Bytes>) -> Vec<Change> {
    let mut batch: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
    for _ in 0..n {
        let i = rng.below(span);
        let v = if rng.below(4) == 0 { None } else { Some(value(rng, i)) };
        batch.insert(key(i), v);
    }
    for (k, v) in &batch {
        match v {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
    batch.into_iter().collect()
}

fn assert_matches(pages: &PageFile, model: &BTreeMap<Bytes, Bytes>, rng: &mut SimRng, span: u64) {
    let snap = pages.snapshot();
    for _ in 0..50 {
        let k = key(rng.below(span + 10));
        assert_eq!(pages.get(&snap, &k).unwrap(), model.get(&k).map(|v| v.to_vec()), "get {k:?}");
    }
    let all = pages.range(&snap, Bound::Unbounded, Bound::Unbounded, false, usize::MAX).unwrap();
    let expected: Vec<_> = model.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(all.len(), expected.len());
    assert!(all == expected, "full scan differs");
    for _ in 0..10 {
        let (a, b) = (key(rng.below(span)), key(rng.below(span)));
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let limit = 1 + rng.below(40) as usize;
        let from_back = rng.below(2) == 0;
        let got = pages.range(&snap, Bound::Included(&a[..]), Bound::Excluded(&b[..]), from_back, limit).unwrap();
        let range = model.range::<[u8], _>((Bound::Included(&a[..]), Bound::Excluded(&b[..])));
        let want: Vec<_> = match from_back {
            true => range.rev().take(limit).map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            false => range.take(limit).map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
        };
        assert!(got == want, "range {a:?}..{b:?} from_back={from_back} limit={limit}");
    }
}

/// `check` finds nothing wrong, and as many keys as the model holds.
fn assert_sound(pages: &PageFile, model: &BTreeMap<Bytes, Bytes>) {
    let report = pages.check().unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(report.keys, model.len() as u64);
}

#[test]
fn checkpoints_match_a_model_across_reopens_and_the_file_stops_growing() {
    for seed in 0..4u64 {
        let disk = SimStorage::new().seeded(seed);
        let mut rng = SimRng::new(seed);
        let mut model = BTreeMap::new();
        let span = 3000;
        let mut pages = open(&disk);
        let mut high_water = Vec::new();
        for round in 1..=40u64 {
            let n = 1 + rng.below(600) as usize;
            let batch = changes(&mut rng, span, n, &mut model);
            let meta = pages.checkpoint_owned(&batch, Lsn(round)).unwrap();
            assert_eq!(meta.lsn, Lsn(round));
            high_water.push(meta.high_water);
            assert_matches(&pages, &model, &mut rng, span);
            assert_sound(&pages, &model);
            if rng.below(5) == 0 {
                drop(pages);
                pages = open(&disk);
                assert_eq!(pages.meta().lsn, Lsn(round));
                assert_matches(&pages, &model, &mut rng, span);
            }
        }
        // Updates over a fixed key space: once warm, freed pages are reused.
        let late = &high_water[30..];
        let growth = late.last().unwrap() - late.first().unwrap();
        assert!(growth < late.first().unwrap() / 2, "seed {seed}: the file kept growing: {high_water:?}");
    }
}

#[test]
fn deleting_everything_leaves_an_empty_tree() {
    let disk = SimStorage::new().seeded(9);
    let pages = open(&disk);
    pages.checkpoint_owned(&puts(0..2000, 7, 300), Lsn(1)).unwrap();
    let deletes: Vec<Change> = (0..2000).map(|i| (key(i), None)).collect();
    let meta = pages.checkpoint_owned(&deletes, Lsn(2)).unwrap();
    assert_eq!(meta.root, None);
    let snap = pages.snapshot();
    assert_eq!(pages.range(&snap, Bound::Unbounded, Bound::Unbounded, false, 10).unwrap(), vec![]);
}

/// A power cut at every storage call of a checkpoint: the reopened file
/// holds either the checkpoint before or the new one, whole.
#[test]
fn a_power_cut_anywhere_in_a_checkpoint_leaves_one_whole_checkpoint() {
    let mut rng = SimRng::new(5);
    let mut before = BTreeMap::new();
    let span = 1500;
    let first = changes(&mut rng, span, 800, &mut before);
    let mut after = before.clone();
    let second = changes(&mut rng, span, 400, &mut after);
    cut_at_every_call_of_the_second(&first, &second, (&before, &after), span, &mut rng);
}

/// A power cut at every call of the checkpoint of `second` (after that of
/// `first`, on a fresh disk each time): each reopened file holds one whole
/// checkpoint, `before` or `after` (every key read back), `check` passes,
/// and the next checkpoint works on what is there.
fn cut_at_every_call_of_the_second(
    first: &[Change],
    second: &[Change],
    (before, after): (&BTreeMap<Bytes, Bytes>, &BTreeMap<Bytes, Bytes>),
    span: u64,
    rng: &mut SimRng,
) {
    let probe = SimStorage::new().seeded(1);
    let pages = open(&probe);
    pages.checkpoint_owned(first, Lsn(1)).unwrap();
    let start = probe.calls();
    pages.checkpoint_owned(second, Lsn(2)).unwrap();
    let calls = probe.calls() - start;
    assert!(calls >= 4, "a checkpoint writes, syncs, writes the meta, syncs");
    for cut in 0..=calls + 1 {
        let disk = SimStorage::new().seeded(cut);
        let pages = open(&disk);
        pages.checkpoint_owned(first, Lsn(1)).unwrap();
        disk.power_cut_at(disk.calls() + cut);
        let _ = pages.checkpoint_owned(second, Lsn(2));
        drop(pages);
        let disk = disk.after_power_cut(cut);
        let pages = open(&disk);
        let model = match pages.meta().lsn {
            Lsn(1) => before,
            Lsn(2) => after,
            other => panic!("cut {cut}: checkpoint LSN {other}"),
        };
        assert_matches(&pages, model, rng, span);
        assert_sound(&pages, model);
        let snap = pages.snapshot();
        for (k, v) in model {
            assert_eq!(pages.get(&snap, k).unwrap().as_deref(), Some(&v[..]), "cut {cut}: {k:?}");
        }
        drop(snap);
        pages.checkpoint_owned(second, Lsn(2)).unwrap();
        assert_matches(&pages, after, rng, span);
    }
}

/// A flipped bit in a tree page is a typed error naming the page; a
/// damaged newer meta page falls back to the older one.
#[test]
fn corruption_is_named_and_a_bad_newer_meta_falls_back() {
    let disk = SimStorage::new().seeded(3);
    let pages = open(&disk);
    pages.checkpoint_owned(&puts(0..3000, 1, 100), Lsn(1)).unwrap();
    let meta = pages.checkpoint_owned(&puts(0..10, 2, 100), Lsn(2)).unwrap();
    let root = meta.root.unwrap().page;
    drop(pages);
    let file = disk.open(Path::new(FILE), uring::OpenMode::Existing).unwrap();
    let flip = |page: u64, byte: u64| {
        let mut buf = uring::AlignedBuf::new(4096);
        file.read_at(page * 4096, &mut buf).unwrap();
        buf[byte as usize] ^= 0x10;
        file.write_at(page * 4096, &buf).unwrap();
        file.sync_data().unwrap();
    };
    flip(u64::from(root), 100);
    let pages = PageFile::open(&disk, Path::new(FILE), 64 * PAGE_BYTES, false).unwrap().0;
    let err = pages.get(&pages.snapshot(), &key(5)).unwrap_err();
    assert!(matches!(&err, crate::Error::CorruptPage { page, .. } if *page == u64::from(root)), "{err:?}");
    assert!(err.to_string().contains(&format!("corrupt page {root}")), "{err}");
    let report = pages.check().unwrap();
    assert!(
        matches!(&report.problems[..], [one] if one.contains(&format!("corrupt page {root}"))),
        "check names the page: {:?}",
        report.problems
    );
    flip(u64::from(root), 100); // repaired
    flip(meta.generation & 1, 64); // the newer meta
    let (pages, opened) = PageFile::open(&disk, Path::new(FILE), 64 * PAGE_BYTES, false).unwrap();
    assert_eq!(pages.meta().lsn, Lsn(1), "fell back to the older checkpoint");
    assert!(opened.fell_back.is_some());
    let snap = pages.snapshot();
    assert_eq!(pages.get(&snap, &key(5)).unwrap(), Some(vec![1u8; 100]));
}

/// A failed write or sync inside a checkpoint: the checkpoint fails, the
/// file takes no further one (a failed sync is never retried), and after a power cut
/// the previous checkpoint is there, whole.
#[test]
fn a_failed_call_fails_the_checkpoint_and_keeps_the_previous_one() {
    let mut rng = SimRng::new(11);
    // Every call the checkpoint makes on data.db fails once: the page
    // writes (several batches, from the page writer thread), the sync,
    // the meta page, the last sync.
    for skip in 0u64.. {
        let disk = SimStorage::new().seeded(skip);
        let pages = open(&disk);
        pages.checkpoint_owned(&puts(0..1500, 3, 120), Lsn(1)).unwrap();
        disk.fail_file_call(Path::new(FILE), skip, libc::EIO);
        let failed = pages.checkpoint_owned(&puts(0..800, 4, 120), Lsn(2));
        if failed.is_ok() {
            assert!(skip > 10, "skip={skip}: the checkpoint made more calls than that");
            break;
        }
        let again = pages.checkpoint_owned(&puts(0..10, 5, 120), Lsn(3));
        assert!(matches!(again, Err(crate::Error::CheckpointFailed { .. })), "skip={skip}: {again:?}");
        disk.power_cut();
        drop(pages);
        let disk = disk.after_power_cut(skip);
        let pages = open(&disk);
        let model: BTreeMap<Bytes, Bytes> =
            puts(0..1500, 3, 120).into_iter().map(|(k, v)| (k, v.expect("a put"))).collect();
        match pages.meta().lsn {
            Lsn(1) => assert_matches(&pages, &model, &mut rng, 1500),
            // The failure hit only the last sync, after the meta was
            // written: the new checkpoint may have reached the disk whole.
            Lsn(2) => {
                let mut model = model;
                model.extend(puts(0..800, 4, 120).into_iter().map(|(k, v)| (k, v.expect("a put"))));
                assert_matches(&pages, &model, &mut rng, 1500);
            }
            other => panic!("skip={skip}: checkpoint LSN {other}"),
        }
    }
}

/// The node cache stays within its bytes, and a node read since the clock
/// hand last passed it outlives one that was not.
#[test]
fn the_cache_keeps_to_its_bytes_and_gives_read_nodes_a_second_chance() {
    let node = |i: u64| Arc::new(Node::leaf(&[(key(i), Stored::Inline(Bytes::from_static(b"v")))]));
    let at = |page: PageNo| PageRef { page: page * 16, generation: 1 }; // all in shard 0
    let per_node = super::node_bytes(&node(0));
    let cache = super::Cache::new(16 * 4 * per_node); // four nodes per shard
    for p in 0..4 {
        cache.put(at(p), node(u64::from(p)));
    }
    assert!(cache.get(at(0)).is_some()); // read: a second chance
    for p in 4..6 {
        cache.put(at(p), node(u64::from(p)));
    }
    assert!(cache.get(at(0)).is_some(), "a node read since the hand passed is kept");
    assert!(cache.get(at(1)).is_none() && cache.get(at(2)).is_none(), "unread nodes go first");
    assert!(cache.get(PageRef { page: at(3).page, generation: 2 }).is_none(), "another generation is a miss");
    for p in 6..100 {
        cache.put(at(p), node(u64::from(p)));
        assert!(cache.shards[0].lock().unwrap().bytes <= 4 * per_node);
    }
}

/// Adversarial keys for the key heads: a few families sharing long
/// prefixes, zero and 0xff bytes, keys that are prefixes of others, the
/// empty key, keys at the size cap.
fn nasty_key(rng: &mut SimRng) -> Bytes {
    let alphabet = [0u8, 1, 0xff];
    let suffix = |rng: &mut SimRng, n: usize| -> Vec<u8> { (0..n).map(|_| alphabet[rng.below(3) as usize]).collect() };
    let n = rng.below(14) as usize;
    let k = match rng.below(8) {
        0 => suffix(rng, n),
        1 => [vec![0u8; 300], suffix(rng, n)].concat(),
        2 => [vec![b'x'; 9], suffix(rng, n)].concat(),
        3 => {
            let mut k = vec![0xffu8; super::TREE_KEY_BYTES_MAX - n];
            k.extend(suffix(rng, n));
            k
        }
        4 => {
            let mut k = vec![0u8; super::TREE_KEY_BYTES_MAX - n];
            k.extend(suffix(rng, n));
            k
        }
        5 => [vec![7u8; 7], suffix(rng, n)].concat(),
        6 => [vec![7u8; 8], suffix(rng, n)].concat(),
        _ => [b"p".to_vec(), suffix(rng, n)].concat(),
    };
    Bytes::from(k)
}

fn nasty_probes(rng: &mut SimRng, model: &BTreeMap<Bytes, Bytes>) -> Vec<Bytes> {
    let mut probes: Vec<Bytes> = model.keys().cloned().collect();
    for k in model.keys() {
        if !k.is_empty() {
            probes.push(k.slice(..k.len() - 1));
            probes.push(k.slice(..rng.below(k.len() as u64) as usize));
        }
        let mut longer = k.to_vec();
        longer.push(0);
        probes.push(Bytes::from(longer.clone()));
        longer.extend([0u8; 8]);
        probes.push(Bytes::from(longer));
    }
    for _ in 0..200 {
        probes.push(nasty_key(rng));
    }
    probes.push(Bytes::new());
    probes
}

fn assert_nasty(pages: &PageFile, model: &BTreeMap<Bytes, Bytes>, rng: &mut SimRng, what: &str) {
    let snap = pages.snapshot();
    for p in nasty_probes(rng, model) {
        assert_eq!(
            pages.get(&snap, &p).unwrap(),
            model.get(&p).map(|v| v.to_vec()),
            "{what}: get {:?}",
            &p[..p.len().min(40)]
        );
    }
    let all = pages.range(&snap, Bound::Unbounded, Bound::Unbounded, false, usize::MAX).unwrap();
    let expected: Vec<_> = model.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert!(all == expected, "{what}: full scan differs");
    assert_sound(pages, model);
    // Every cached node is the node its page decodes to, heads included.
    let mut cached = 0;
    for shard in &pages.cache.shards {
        let shard = shard.lock().unwrap();
        for (&page, slot) in &shard.slots {
            let at = PageRef { page, generation: slot.generation };
            let Ok(checked) = pages.checked(at) else { continue };
            if !matches!(checked.kind, super::Kind::Leaf | super::Kind::Branch) {
                continue;
            }
            if let Ok(decoded) = super::page::node(checked) {
                if decoded != *slot.node {
                    panic!("{what}: cached node of page {page} differs from its page");
                }
                cached += 1;
            }
        }
    }
    let _ = cached;
}

#[test]
fn nasty_keys_match_a_model_warm_and_cold() {
    for seed in 0..6u64 {
        let mut rng = SimRng::new(100 + seed);
        let disk = SimStorage::new().seeded(seed);
        uring::create_dirs(&disk, Path::new("/db")).unwrap();
        // Large cache: nodes stay as the checkpoint cached them.
        let cache = if seed % 2 == 0 { 1 << 26 } else { 4 * PAGE_BYTES };
        let reopen = |d: &SimStorage| PageFile::open(d, Path::new(FILE), cache, false).unwrap().0;
        let mut pages = reopen(&disk);
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut held: Vec<(super::Snapshot, BTreeMap<Bytes, Bytes>)> = Vec::new();
        for round in 1..=30u64 {
            let mut batch: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
            for _ in 0..1 + rng.below(300) {
                let k = if !model.is_empty() && rng.below(3) == 0 {
                    model.keys().nth(rng.below(model.len() as u64) as usize).unwrap().clone()
                } else {
                    nasty_key(&mut rng)
                };
                let v = if rng.below(4) == 0 { None } else { Some(value(&mut rng, round)) };
                batch.insert(k, v);
            }
            for (k, v) in &batch {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
            let batch: Vec<Change> = batch.into_iter().collect();
            pages.checkpoint_owned(&batch, Lsn(round)).unwrap();
            assert_nasty(&pages, &model, &mut rng, &format!("seed {seed} round {round}"));
            if rng.below(4) == 0 {
                held.push((pages.snapshot(), model.clone()));
            }
            for (snap, m) in &held {
                for (k, v) in m {
                    assert_eq!(
                        pages.get(snap, k).unwrap().as_deref(),
                        Some(&v[..]),
                        "seed {seed} round {round}: held snapshot"
                    );
                }
            }
            if held.len() > 2 {
                held.remove(0);
            }
            if rng.below(5) == 0 {
                held.clear();
                drop(pages);
                pages = reopen(&disk);
                assert_nasty(&pages, &model, &mut rng, &format!("seed {seed} round {round} reopened"));
            }
        }
    }
}

// ---- review 18 ----

/// A large value for key `i` of round `round` (several data pages).
fn big(i: u64, round: u64) -> Bytes {
    let len = 5000 + ((i * 7919 + round * 104729) % 9000) as usize;
    Bytes::from(format!("big{i}/{round}-").into_bytes().into_iter().cycle().take(len).collect::<Vec<u8>>())
}

/// Overflow values whose leaves are rewritten around them (their entries
/// copied raw, `Entry::Kept`) over many checkpoints stay readable, whole
/// and reached exactly once; replacing or deleting them frees their pages
/// (the file stops growing), across reopens and with a cold or warm cache.
#[test]
fn kept_overflow_entries_stay_whole_and_their_pages_are_freed_once() {
    for (seed, cache) in [(1u64, 4 * PAGE_BYTES), (2, 1 << 26), (3, 64 * PAGE_BYTES)] {
        let disk = SimStorage::new().seeded(seed);
        uring::create_dirs(&disk, Path::new("/db")).unwrap();
        let reopen = |d: &SimStorage| PageFile::open(d, Path::new(FILE), cache, false).unwrap().0;
        let mut pages = reopen(&disk);
        let mut rng = SimRng::new(seed);
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        // Every third key holds a large value; the others small ones.
        let first: Vec<Change> = (0..600u64)
            .map(|i| (key(i), Some(if i % 3 == 0 { big(i, 0) } else { Bytes::from(vec![b's'; 50]) })))
            .collect();
        for (k, v) in &first {
            model.insert(k.clone(), v.clone().unwrap());
        }
        pages.checkpoint_owned(&first, Lsn(1)).unwrap();
        let mut high_water = Vec::new();
        for round in 2..=60u64 {
            let mut batch: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
            for _ in 0..1 + rng.below(40) {
                let i = rng.below(620);
                let v = match (i % 3, rng.below(6)) {
                    (_, 0) => None,
                    (0, 1) => Some(big(i, round)), // a large value replaced
                    (0, _) => continue,            // large ones mostly kept
                    _ => Some(Bytes::from(vec![b'a' + (round % 26) as u8; rng.below(120) as usize])),
                };
                batch.insert(key(i), v);
            }
            for (k, v) in &batch {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
            let batch: Vec<Change> = batch.into_iter().collect();
            let meta = pages.checkpoint_owned(&batch, Lsn(round)).unwrap();
            high_water.push(meta.high_water);
            assert_matches(&pages, &model, &mut rng, 620);
            assert_sound(&pages, &model);
            if rng.below(6) == 0 {
                drop(pages);
                pages = reopen(&disk);
                assert_matches(&pages, &model, &mut rng, 620);
            }
        }
        let snap = pages.snapshot();
        for (k, v) in &model {
            assert_eq!(pages.get(&snap, k).unwrap().as_deref(), Some(&v[..]), "seed {seed}: {k:?}");
        }
        drop(snap);
        let late = &high_water[30..];
        assert!(late.last().unwrap() - late.first().unwrap() < late.first().unwrap() / 2, "grew: {high_water:?}");
        // Deleting every key: every page is free again, none lost.
        let deletes: Vec<Change> = model.keys().map(|k| (k.clone(), None)).collect();
        pages.checkpoint_owned(&deletes, Lsn(100)).unwrap();
        let report = pages.check().unwrap();
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!(report.keys, 0);
    }
}

/// A root branch left with one child gives way to it even after the batch
/// holding it went to the writer thread (so it was written, and its page
/// is free at once and may be taken by the free map in the same
/// checkpoint): the file is sound and reads right, before and after a
/// reopen, for every size of deletion (every position of the root in its
/// batch).
#[test]
fn a_collapsed_root_whose_batch_went_out_leaves_a_sound_file() {
    let mut collapsed = 0;
    for keep in 1..120u64 {
        let disk = SimStorage::new().seeded(keep);
        let pages = open(&disk);
        pages.checkpoint_owned(&puts(0..3000, 1, 60), Lsn(1)).unwrap();
        let height = pages.stats().unwrap().height;
        // Delete everything but a few keys at the end (one subtree), one
        // of them given a large value of 1 to 14 data pages (so that the
        // root falls at every place in its batch).
        let mut deletes: Vec<Change> = (0..3000 - keep).map(|i| (key(i), None)).collect();
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        for i in 3000 - keep..3000 {
            model.insert(key(i), Bytes::from(vec![1u8; 60]));
        }
        let large = Bytes::from(vec![9u8; 2000 + (keep as usize % 14) * page::BODY_BYTES]);
        deletes.push((key(2999), Some(large.clone())));
        model.insert(key(2999), large);
        pages.checkpoint_owned(&deletes, Lsn(2)).unwrap();
        if pages.stats().unwrap().height < height {
            collapsed += 1;
        }
        let mut rng = SimRng::new(keep);
        assert_matches(&pages, &model, &mut rng, 3000);
        assert_sound(&pages, &model);
        drop(pages);
        let pages = open(&disk);
        assert_matches(&pages, &model, &mut rng, 3000);
        assert_sound(&pages, &model);
        // And the next checkpoint reuses what is free.
        pages.checkpoint_owned(&puts(0..500, 2, 60), Lsn(3)).unwrap();
        for i in 0..500 {
            model.insert(key(i), Bytes::from(vec![2u8; 60]));
        }
        assert_matches(&pages, &model, &mut rng, 3000);
        assert_sound(&pages, &model);
    }
    assert!(collapsed > 10, "only {collapsed} collapses");
}

/// A failed write of a later batch (from the writer thread): in the same
/// process, without a reopen, reads still see the previous checkpoint
/// (no cached node of the failed one is reached) and `check` passes.
#[test]
fn after_a_failed_batch_the_same_process_still_reads_the_previous_checkpoint() {
    let mut rng = SimRng::new(21);
    let mut before = BTreeMap::new();
    let first = changes(&mut rng, 2000, 1200, &mut before);
    let mut after = before.clone();
    let second = changes(&mut rng, 2000, 900, &mut after);
    for skip in 0u64..200 {
        let disk = SimStorage::new().seeded(skip);
        uring::create_dirs(&disk, Path::new("/db")).unwrap();
        let pages = PageFile::open(&disk, Path::new(FILE), 1 << 26, false).unwrap().0;
        pages.checkpoint_owned(&first, Lsn(1)).unwrap();
        assert_matches(&pages, &before, &mut rng, 2000);
        disk.fail_file_call(Path::new(FILE), skip, libc::EIO);
        if pages.checkpoint_owned(&second, Lsn(2)).is_ok() {
            assert!(skip > 10, "skip={skip}: the checkpoint made more calls than that");
            break;
        }
        assert_eq!(pages.meta().lsn, Lsn(1), "skip={skip}: a failed checkpoint is not published");
        assert_matches(&pages, &before, &mut rng, 2000);
        assert_sound(&pages, &before);
    }
}

/// A power cut at every call of a checkpoint of many batches that keeps
/// overflow entries raw, replaces and deletes others, and collapses the
/// root: the reopened file holds one whole checkpoint.
#[test]
fn a_power_cut_in_a_many_batch_checkpoint_with_kept_overflow_values() {
    let mut before: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    let first: Vec<Change> =
        (0..900u64).map(|i| (key(i), Some(if i % 4 == 0 { big(i, 0) } else { Bytes::from(vec![b'x'; 90]) }))).collect();
    for (k, v) in &first {
        before.insert(k.clone(), v.clone().unwrap());
    }
    // Delete most small values, replace some large ones, keep the rest.
    let second: Vec<Change> = (0..900u64)
        .filter(|i| i % 4 != 0 || i % 12 == 0)
        .filter(|i| *i < 860)
        .map(|i| (key(i), if i % 12 == 0 { Some(big(i, 1)) } else { None }))
        .collect();
    let mut after = before.clone();
    for (k, v) in &second {
        match v {
            Some(v) => after.insert(k.clone(), v.clone()),
            None => after.remove(k),
        };
    }
    cut_at_every_call_of_the_second(&first, &second, (&before, &after), 900, &mut SimRng::new(77));
}

/// Every cached node is what its page, read back with the same number and
/// generation, decodes to.
fn assert_cache_matches_disk(pages: &PageFile, what: &str) {
    for shard in &pages.cache.shards {
        let shard = shard.lock().unwrap();
        for (&page, slot) in &shard.slots {
            let at = PageRef { page, generation: slot.generation };
            let checked = pages.checked(at).unwrap_or_else(|e| panic!("{what}: cached page {page}: {e}"));
            assert!(
                matches!(checked.kind, super::Kind::Leaf | super::Kind::Branch),
                "{what}: page {page} generation {} is cached as a node but holds a {:?} page",
                slot.generation,
                checked.kind
            );
            assert!(super::page::node(checked).unwrap() == *slot.node, "{what}: cached node of page {page} differs");
        }
    }
}

/// A collapsed root whose batch went out is cached under its page and
/// generation, and the free map's index page then takes that page in the
/// same generation: the cache holds a branch for a page whose disk copy
/// (same number, same generation) is an index page.
#[test]
fn a_collapsed_root_leaves_no_cached_node_for_a_page_the_free_map_took() {
    for keep in 1..120u64 {
        let disk = SimStorage::new().seeded(keep);
        uring::create_dirs(&disk, Path::new("/db")).unwrap();
        let pages = PageFile::open(&disk, Path::new(FILE), 1 << 26, false).unwrap().0;
        pages.checkpoint_owned(&puts(0..3000, 1, 60), Lsn(1)).unwrap();
        let mut changes: Vec<Change> = (0..3000 - keep).map(|i| (key(i), None)).collect();
        changes.push((key(2999), Some(Bytes::from(vec![9u8; 2000 + (keep as usize % 14) * page::BODY_BYTES]))));
        pages.checkpoint_owned(&changes, Lsn(2)).unwrap();
        assert_cache_matches_disk(&pages, &format!("keep {keep}"));
    }
}

/// One seed, one outcome: the same checkpoint on the same simulated disk,
/// cut at the same call, leaves the same bytes (a failing seed re-runs).
#[test]
fn a_power_cut_at_one_call_leaves_the_same_file_every_run() {
    let mut rng = SimRng::new(3);
    let mut model = BTreeMap::new();
    let first = changes(&mut rng, 3000, 2000, &mut model);
    let second = changes(&mut rng, 3000, 1500, &mut model);
    for cut in [5u64, 20, 40, 60] {
        let mut outcomes = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let disk = SimStorage::new().seeded(cut);
            uring::create_dirs(&disk, Path::new("/db")).unwrap();
            // A small cache: the fold reads pages while the writer writes.
            let pages = PageFile::open(&disk, Path::new(FILE), 4 * PAGE_BYTES, false).unwrap().0;
            pages.checkpoint_owned(&first, Lsn(1)).unwrap();
            disk.power_cut_at(disk.calls() + cut);
            let _ = pages.checkpoint_owned(&second, Lsn(2));
            drop(pages);
            let disk = disk.after_power_cut(cut);
            let file = disk.open(Path::new(FILE), uring::OpenMode::Existing).unwrap();
            let size = file.size_bytes().unwrap() as usize;
            let mut buf = uring::AlignedBuf::new(size);
            file.read_at(0, &mut buf[..size]).unwrap();
            outcomes.insert(crc32fast::hash(&buf[..size]));
        }
        assert_eq!(outcomes.len(), 1, "cut {cut}: {} different files from one seed", outcomes.len());
    }
}

/// Many incarnations of one file: checkpoints of random changes over a
/// small key space (deep deletes collapse the root, overflow values come
/// and go), each possibly cut by a power cut at a random call (strict
/// mode: torn sectors garbage or unreadable, odd seeds), then reopened.
/// A generation cut short is written again by the next incarnation under
/// the same number. After every reopen the file holds one whole
/// checkpoint (the last durable one or the one cut), and `check` passes.
/// `RINGKV_TREE_SEEDS=N` runs more seeds.
#[test]
fn incarnations_cut_by_power_cuts_each_leave_one_whole_checkpoint() {
    let seeds: u64 = std::env::var("RINGKV_TREE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in 0..seeds {
        let mut rng = SimRng::new(seed);
        let mut disk = SimStorage::new().strict(seed % 2 == 1).seeded(seed);
        let mut durable: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let (mut lsn, mut durable_lsn) = (0u64, 0u64);
        let mut pages = open(&disk);
        // A reader's snapshot held across a few checkpoints (what it pins
        // is not reused meanwhile), taken and dropped at random.
        let mut held = Vec::new();
        for step in 0..30u64 {
            let span = 300;
            match rng.below(4) {
                0 => held.push(pages.snapshot()),
                1 => held.clear(),
                _ => {}
            }
            let mut attempted = durable.clone();
            let batch = match rng.below(6) {
                // Delete all but a few: the root gives way to a child.
                0 => {
                    let keep = rng.below(4);
                    let deletes: Vec<Change> =
                        attempted.keys().skip(keep as usize).map(|k| (k.clone(), None)).collect();
                    for (k, _) in &deletes {
                        attempted.remove(k);
                    }
                    deletes
                }
                _ => {
                    let n = 1 + rng.below(200) as usize;
                    changes(&mut rng, span, n, &mut attempted)
                }
            };
            lsn += 1;
            let cut = rng.below(3) == 0;
            if cut {
                disk.power_cut_at(disk.calls() + rng.below(60));
            }
            let done = pages.checkpoint_owned(&batch, Lsn(lsn));
            if !cut {
                done.unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                (durable, durable_lsn) = (attempted, lsn);
                continue;
            }
            disk.power_cut();
            held.clear();
            drop(pages);
            disk = disk.after_power_cut(seed * 1000 + step);
            pages = open(&disk);
            let got = pages.meta().lsn;
            if got == Lsn(lsn) {
                (durable, durable_lsn) = (attempted, lsn);
            } else {
                assert_eq!(got, Lsn(durable_lsn), "seed {seed} step {step}: the checkpoint before the cut one");
            }
            let what = format!("seed {seed} step {step}");
            let snap = pages.snapshot();
            for (k, v) in &durable {
                assert_eq!(pages.get(&snap, k).unwrap().as_deref(), Some(&v[..]), "{what}: {k:?}");
            }
            drop(snap);
            assert_matches(&pages, &durable, &mut rng, span);
            let report = pages.check().unwrap();
            assert_eq!(report.problems, Vec::<String>::new(), "{what}");
            assert_eq!(report.keys, durable.len() as u64, "{what}");
        }
    }
}

/// A newer meta page that reads as damaged at open (a transient EIO here;
/// the strict power-cut soak found it as a torn sector that read fine
/// again once rewritten) makes the store fall back to the older one, and
/// the next checkpoint takes the damaged one's generation again and
/// writes its pages into that tree's. If the damaged meta page could come
/// back (the new one's write lost to a power cut), it would name pages
/// holding other contents under its own generation: so it is wiped,
/// durably, before any of them is written. After a cut at every call of
/// that checkpoint, the file holds one whole checkpoint. And the wiped
/// page still reads as damaged, not as never written (review 19: zeros
/// there, with the other slot then unreadable too, opened as the empty
/// tree before a first checkpoint, silently): such an open fails loudly
/// or finds a whole checkpoint.
#[test]
fn a_meta_page_damaged_at_open_cannot_come_back_after_its_tree_is_reused() {
    let mut rng = SimRng::new(41);
    let (mut first_model, span) = (BTreeMap::new(), 400);
    let first = changes(&mut rng, span, 300, &mut first_model);
    let mut second_model = first_model.clone();
    let second = changes(&mut rng, span, 300, &mut second_model);
    let mut third_model = first_model.clone();
    let third = changes(&mut rng, span, 300, &mut third_model);
    // Two checkpoints, then an open that finds the newer meta page
    // (generation 2's, in slot 0) unreadable: open's calls on data.db are
    // a sync, slot 0, slot 1.
    let fallen_back = |seed: u64| {
        let disk = SimStorage::new().seeded(seed);
        let pages = open(&disk);
        pages.checkpoint_owned(&first, Lsn(1)).unwrap();
        pages.checkpoint_owned(&second, Lsn(2)).unwrap();
        drop(pages);
        disk.fail_file_call(Path::new(FILE), 1, libc::EIO);
        let (pages, opened) = PageFile::open(&disk, Path::new(FILE), 64 * PAGE_BYTES, false).unwrap();
        disk.clear_faults();
        assert!(opened.fell_back.is_some(), "the newer meta page read as damaged");
        assert_eq!(pages.meta().lsn, Lsn(1));
        (disk, pages)
    };
    let (probe, pages) = fallen_back(0);
    let start = probe.calls();
    pages.checkpoint_owned(&third, Lsn(3)).unwrap();
    let calls = probe.calls() - start;
    for cut in 0..=calls + 1 {
        let (disk, pages) = fallen_back(cut);
        disk.power_cut_at(disk.calls() + cut);
        let _ = pages.checkpoint_owned(&third, Lsn(3));
        disk.power_cut();
        drop(pages);
        let disk = disk.after_power_cut(cut);
        // Slot 1 (generation 1's) unreadable once: open's calls are a
        // sync, slot 0, slot 1.
        disk.fail_file_call(Path::new(FILE), 2, libc::EIO);
        match PageFile::open(&disk, Path::new(FILE), 64 * PAGE_BYTES, false) {
            Err(e) => assert!(e.to_string().contains("meta page"), "cut {cut}: {e}"),
            Ok((pages, _)) => assert_ne!(pages.meta().lsn, Lsn(0), "cut {cut}: the empty tree, silently"),
        }
        disk.clear_faults();
        let pages = open(&disk);
        let model = match pages.meta().lsn {
            Lsn(1) => &first_model,
            Lsn(2) => &second_model,
            Lsn(3) => &third_model,
            other => panic!("cut {cut}: checkpoint LSN {other}"),
        };
        assert_matches(&pages, model, &mut rng, span);
        assert_sound(&pages, model);
    }
}
