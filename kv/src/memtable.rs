//! The in-memory ordered map over the WAL.
//!
//! Every entry remembers the version (LSN, index in batch) that wrote it,
//! and a change only lands if its version is newer. So batches may be
//! applied in any order (leaders apply acknowledged groups in LSN order,
//! `NoSync` writers their own at once) and the map still ends as the log
//! orders them, which is the state recovery rebuilds.
//!
//! Snapshots: every apply also takes the next number of the store's apply
//! clock ([`Versions`]), its *epoch*, for all its entries. A snapshot is
//! the clock's value when it was opened (with no apply under way in any
//! memtable): it sees, of each key, the newest entry of an epoch at or
//! below it. While snapshots are open, an entry that is replaced keeps the
//! one it replaced (a chain, newest first), down to the first one that
//! every open snapshot can see; with none open, nothing is kept.

use std::borrow::Borrow;
use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use wal::Lsn;

use crate::batch::Op;
use crate::constants::{ARENA_CHUNK_BYTES, ARENA_COPY_BYTES_MAX};
use crate::tree::Change;

/// Bytes an entry costs besides its key and value (its slot in a map
/// node: `Bytes` handles, version, epoch), for sizing the memtable. Twice
/// the slot: a B-tree node that keys are appended to splits half full, so
/// after a load in key order nodes are about half used. (At 96 bytes, a
/// load of 10M keys peaked 40 MiB over the budget; at this, 18.)
const ENTRY_OVERHEAD_BYTES: usize = 2 * std::mem::size_of::<(Key, Entry)>();

/// (LSN of the batch, index of the op in it).
type Version = (u64, u32);

/// No snapshot is open.
const NO_SNAPSHOT: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Entry {
    version: Version,
    /// The apply that wrote it.
    epoch: u64,
    /// None for a delete (a tombstone: it must outlive older puts).
    value: Option<Bytes>,
    /// The entry this one replaced, kept for open snapshots.
    older: Option<Box<Entry>>,
}

impl Entry {
    /// This entry, or the newest older one, that a snapshot at `epoch`
    /// sees (`None`: the newest).
    fn at(&self, epoch: Option<u64>) -> Option<&Entry> {
        let Some(epoch) = epoch else { return Some(self) };
        let mut entry = self;
        while entry.epoch > epoch {
            entry = entry.older.as_deref()?;
        }
        Some(entry)
    }

    /// Drops the older entries no open snapshot can see: those past the
    /// first one the oldest snapshot sees.
    fn prune(&mut self, oldest: u64) {
        let mut entry = self;
        while entry.epoch > oldest {
            match entry.older.as_deref_mut() {
                Some(older) => entry = older,
                None => return,
            }
        }
        entry.older = None;
    }
}

/// The store's apply clock and its open snapshots, shared by its
/// memtables.
#[derive(Debug)]
pub(crate) struct Versions {
    /// Applies so far: each apply's epoch is the next number.
    clock: AtomicU64,
    /// Open snapshots: epoch → how many.
    open: Mutex<BTreeMap<u64, usize>>,
    /// The oldest open snapshot's epoch ([`NO_SNAPSHOT`] if none). Read
    /// by an apply under its memtable's write lock; changed when one opens
    /// under every memtable's read lock, so an apply that began before an
    /// open has ended before it, and one after sees it.
    oldest: AtomicU64,
}

impl Default for Versions {
    fn default() -> Versions {
        Versions { clock: AtomicU64::new(0), open: Mutex::default(), oldest: AtomicU64::new(NO_SNAPSHOT) }
    }
}

impl Versions {
    /// Opens a snapshot at the clock's value. The caller holds every
    /// memtable's read lock (no apply is under way).
    fn open(&self) -> u64 {
        let mut open = self.open.lock().expect("snapshots lock");
        let epoch = self.clock.load(Ordering::SeqCst);
        *open.entry(epoch).or_default() += 1;
        self.oldest.store(*open.keys().next().expect("just added"), Ordering::SeqCst);
        epoch
    }

    /// Closes a snapshot [`Versions::open`] returned. (An apply that still
    /// sees it keeps an entry more than it needs to: harmless.)
    fn close(&self, epoch: u64) {
        let mut open = self.open.lock().expect("snapshots lock");
        let count = open.get_mut(&epoch).expect("an open snapshot");
        *count -= 1;
        if *count == 0 {
            open.remove(&epoch);
        }
        self.oldest.store(open.keys().next().copied().unwrap_or(NO_SNAPSHOT), Ordering::SeqCst);
    }
}

/// A memtable key: a slice of an arena chunk, with its first 16 bytes
/// kept inline (zero-padded, as a big-endian number) so that most
/// comparisons in a map search decide without reading the key's bytes,
/// which lie wherever its chunk is: a search makes tens of
/// comparisons, and loading each compared key was a fifth of a bulk
/// load's CPU. Ordered as `[u8]` orders the bytes.
#[derive(Clone, Debug)]
struct Key {
    head: u128,
    bytes: Bytes,
}

impl Key {
    fn new(bytes: Bytes) -> Key {
        let mut head = [0u8; 16];
        let n = bytes.len().min(16);
        head[..n].copy_from_slice(&bytes[..n]);
        Key { head: u128::from_be_bytes(head), bytes }
    }
}

/// Heads that differ order their keys as the bytes do: at the first byte
/// where the padded heads differ, either both keys have a byte, or one
/// ended there (a padding zero) and the other has a nonzero byte, so the
/// shorter key, a prefix of the other, comes first. Equal heads leave it
/// to the bytes.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.head.cmp(&other.head).then_with(|| self.bytes.cmp(&other.bytes))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl Eq for Key {}

/// Searches by `&[u8]` (gets, scans) use `[u8]`'s order, the same order.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.bytes
    }
}

/// Where a memtable keeps its keys and values: copied in at apply, into
/// chunks of [`ARENA_CHUNK_BYTES`] that the entries' `Bytes` share. So a
/// batch's frame is freed once applied, and dropping a memtable frees a
/// few hundred chunks and the map's nodes, not an allocation or three per
/// write. (Keeping slices of the frames, a checkpoint's drop of the frozen
/// memtable took ~100 ms at 64 writers, glibc freeing on one thread what
/// the leaders had allocated on theirs, and commits slowed meanwhile: p50
/// ~0.7-1.5 ms, p99 ~9-10 ms during the drop against ~0.35 / ~1 ms
/// between checkpoints. Copying the ~116 bytes costs less than the frees
/// it saves.)
#[derive(Debug, Default)]
struct Arena {
    chunk: BytesMut,
}

impl Arena {
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > ARENA_COPY_BYTES_MAX {
            return Bytes::copy_from_slice(bytes);
        }
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK_BYTES);
        }
        self.chunk.extend_from_slice(bytes);
        // The rest of the chunk stays here; the returned handle shares it.
        self.chunk.split().freeze()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Memtable {
    /// Keys and values are slices of the arena's chunks.
    map: RwLock<BTreeMap<Key, Entry>>,
    /// Taken by an apply before the map's write lock. Applies seldom
    /// overlap (a leader's, and a `NoSync` writer's under the log's tail
    /// lock, may), so it is hardly ever contended.
    arena: Mutex<Arena>,
    /// Bytes applied (keys, values and overhead; replaced entries count
    /// until the memtable is checkpointed).
    bytes: AtomicUsize,
}

impl Memtable {
    /// Applies a batch's ops as of `lsn`, atomically for readers and
    /// snapshots, as the next epoch of `versions`' clock.
    pub(crate) fn apply(&self, versions: &Versions, lsn: Lsn, ops: &[Op<'_>]) {
        // Copied before the map's lock is taken: readers need not wait for
        // it.
        let copies: Vec<(Bytes, Option<Bytes>)> = {
            let mut arena = self.arena.lock().expect("memtable arena lock");
            ops.iter()
                .map(|op| match op {
                    Op::Put(k, v) => (arena.copy(k), Some(arena.copy(v))),
                    Op::Delete(k) => (arena.copy(k), None),
                })
                .collect()
        };
        let mut map = self.map.write().expect("memtable lock");
        let epoch = versions.clock.fetch_add(1, Ordering::SeqCst) + 1;
        let oldest = versions.oldest.load(Ordering::SeqCst);
        let mut bytes = 0;
        for (index, (key, value)) in copies.into_iter().enumerate() {
            let version = (lsn.0, index as u32);
            bytes += key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD_BYTES;
            let new = Entry { version, epoch, value, older: None };
            // One search of the map per key.
            match map.entry(Key::new(key)) {
                btree_map::Entry::Occupied(entry) if entry.get().version >= version => {}
                btree_map::Entry::Occupied(mut entry) => {
                    let mut replaced = std::mem::replace(entry.get_mut(), new);
                    if oldest != NO_SNAPSHOT {
                        replaced.prune(oldest);
                        entry.get_mut().older = Some(Box::new(replaced));
                    }
                }
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(new);
                }
            }
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What the memtable says of `key`: `Some(None)` for a delete, `None`
    /// if it says nothing (look further down).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<Bytes>> {
        self.map.read().expect("memtable lock").get(key).map(|e| e.value.clone())
    }

    /// Up to `limit` entries of `(start, end)`, deletes included (as
    /// `None`): the first ones in key order, or with `from_back` the last
    /// ones in reverse key order. None for a range that ends before it
    /// starts.
    ///
    /// `at`: as a snapshot at that epoch sees them (`None`: the newest).
    pub(crate) fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        from_back: bool,
        limit: usize,
        at: Option<u64>,
    ) -> Vec<(Bytes, Option<Bytes>)> {
        if is_empty_range(start, end) {
            return Vec::new(); // BTreeMap::range would panic
        }
        let map = self.map.read().expect("memtable lock");
        let entry = |(k, e): (&Key, &Entry)| e.at(at).map(|e| (k.bytes.clone(), e.value.clone()));
        let range = map.range::<[u8], _>((start, end));
        if from_back {
            range.rev().filter_map(entry).take(limit).collect()
        } else {
            range.filter_map(entry).take(limit).collect()
        }
    }

    /// Calls `f` with every entry in key order, deletes included (what a
    /// checkpoint folds into the page file), borrowed under the map's read
    /// lock: a frozen memtable, once applied up to its cut, takes no more
    /// writes that would wait for it.
    pub(crate) fn with_changes<R>(&self, f: impl FnOnce(&[Change<'_>]) -> R) -> R {
        let map = self.map.read().expect("memtable lock");
        let changes: Vec<Change<'_>> = map.iter().map(|(k, e)| (&k.bytes[..], e.value.as_deref())).collect();
        f(&changes)
    }

    /// Entries (deletes included).
    pub(crate) fn len(&self) -> usize {
        self.map.read().expect("memtable lock").len()
    }

    /// Bytes applied so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The memtables: `active` takes new writes; `frozen`, while a checkpoint
/// folds it into the page file, holds every frame below its cut that the
/// page file does not.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) active: Arc<Memtable>,
    pub(crate) frozen: Option<(Arc<Memtable>, Lsn)>,
    pub(crate) versions: Arc<Versions>,
}

impl Tables {
    /// Applies the batch at `lsn` where it belongs: below the frozen cut
    /// into the frozen memtable (a `Sync` frame placed before the cut whose
    /// leader applies it after), so that every frame in `active` is newer
    /// than every frame in `frozen`.
    pub(crate) fn apply(&self, lsn: Lsn, ops: &[Op<'_>]) {
        match &self.frozen {
            Some((frozen, cut)) if lsn < *cut => frozen.apply(&self.versions, lsn, ops),
            _ => self.active.apply(&self.versions, lsn, ops),
        }
    }

    /// Opens a snapshot of both memtables as they are now: what every
    /// apply that has ended wrote, nothing of one that has not.
    pub(crate) fn snapshot(&self) -> MemSnapshot {
        let active = self.active.clone();
        let frozen = self.frozen.as_ref().map(|(f, _)| f.clone());
        let epoch = {
            let _active = active.map.read().expect("memtable lock");
            let _frozen = frozen.as_ref().map(|f| f.map.read().expect("memtable lock"));
            self.versions.open()
        };
        MemSnapshot { active, frozen, epoch, versions: self.versions.clone() }
    }
}

/// The memtables as they were when it was opened (see [`Tables::snapshot`]);
/// closed on drop.
#[derive(Debug)]
pub(crate) struct MemSnapshot {
    pub(crate) active: Arc<Memtable>,
    pub(crate) frozen: Option<Arc<Memtable>>,
    pub(crate) epoch: u64,
    versions: Arc<Versions>,
}

impl Drop for MemSnapshot {
    fn drop(&mut self) {
        self.versions.close(self.epoch);
    }
}

/// Whether no key lies in `(start, end)`: it ends before it starts, or at
/// its start with either end excluded.
fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys near the 16-byte head's edge, zero bytes (the head's padding)
    /// and prefixes of each other are where the head could misorder.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xff]), 0..20)
    }

    proptest! {
        #[test]
        fn keys_order_as_their_bytes(a in key(), b in key()) {
            let (x, y) = (Key::new(Bytes::from(a.clone())), Key::new(Bytes::from(b.clone())));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
        }
    }

    /// What an apply keeps is copied: the payload its ops borrow can be
    /// overwritten once it returns (small keys and values go to the arena,
    /// large ones get their own allocation).
    #[test]
    fn an_applied_batch_keeps_no_part_of_its_payload() {
        let large_bytes = 2 * ARENA_COPY_BYTES_MAX;
        let mut payload: Vec<u8> = (0..200 + large_bytes).map(|i| (i % 251) as u8).collect();
        let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (payload[0..16].to_vec(), Some(payload[48..148].to_vec())),
            (payload[16..32].to_vec(), Some(payload[200..].to_vec())),
            (payload[32..48].to_vec(), None),
        ];
        let memtable = Memtable::default();
        {
            let ops = [
                Op::Put(&payload[0..16], &payload[48..148]),
                Op::Put(&payload[16..32], &payload[200..]),
                Op::Delete(&payload[32..48]),
            ];
            memtable.apply(&Versions::default(), Lsn(1), &ops);
        }
        payload.fill(0xee);
        for (key, value) in want {
            assert_eq!(memtable.get(&key), Some(value.map(Bytes::from)), "{key:?}");
        }
    }

    /// Entries copied across chunk boundaries keep their own bytes.
    #[test]
    fn arena_copies_stay_whole_across_chunks() {
        let mut arena = Arena::default();
        let copies: Vec<(Vec<u8>, Bytes)> = (0..3 * ARENA_CHUNK_BYTES / 1000)
            .map(|i| {
                let want: Vec<u8> = (0..1000 + i % 7).map(|j| (i * 31 + j) as u8).collect();
                let copy = arena.copy(&want);
                (want, copy)
            })
            .collect();
        for (want, copy) in &copies {
            assert_eq!(&copy[..], &want[..]);
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Key → (version, epoch, value) of every op applied to it.
    type History = BTreeMap<Vec<u8>, Vec<(Version, u64, Option<Vec<u8>>)>>;

    const SIZES: [usize; 12] = [0, 1, 15, 16, 17, 100, 4095, 4096, 4097, 9000, 2000, 3000];

    fn bytes_of(tag: u64, len: usize) -> Vec<u8> {
        (0..len).map(|j| (tag.wrapping_mul(2654435761).wrapping_add(j as u64 * 7) >> 3) as u8).collect()
    }

    /// Review 20: batches applied out of LSN order, keys and values at the
    /// arena's edges (empty, 4095/4096/4097, over), deletes and open
    /// snapshots (older chains), across many chunks; every read matches a
    /// model, and every `Bytes` read earlier still holds what it held.
    #[test]
    fn arena_entries_match_a_model_across_chunks_snapshots_and_out_of_order_applies() {
        for seed in 1..=6u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let memtable = Memtable::default();
            let versions = Versions::default();
            // key -> [(version, epoch, value)] of every op applied to it
            let mut history: History = BTreeMap::new();
            let keys: Vec<Vec<u8>> =
                (0..300u64).map(|i| bytes_of(i + 1_000_000, SIZES[(i % 9) as usize].min(1024))).collect();
            let mut lsns: Vec<u64> = (1..=4000).collect();
            for i in (1..lsns.len()).rev() {
                // mostly in order, sometimes swapped with a neighbour
                if rng.below(4) == 0 {
                    let j = i.saturating_sub(1 + rng.below(5) as usize);
                    lsns.swap(i, j);
                }
            }
            let mut open: Vec<u64> = Vec::new();
            let mut kept: Vec<(Bytes, Vec<u8>)> = Vec::new();
            let mut epoch = 0u64;
            let model_at = |history: &History, at: Option<u64>| {
                let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                for (k, ops) in history {
                    let best = ops.iter().filter(|(_, e, _)| at.is_none_or(|a| *e <= a)).max_by_key(|(v, _, _)| *v);
                    if let Some((_, _, v)) = best {
                        out.push((k.clone(), v.clone()));
                    }
                }
                out
            };
            for (n, &lsn) in lsns.iter().enumerate() {
                let count = 1 + rng.below(8) as usize;
                let mut rec = Vec::new();
                for index in 0..count {
                    let key = keys[rng.below(keys.len() as u64) as usize].clone();
                    let value = match rng.below(5) {
                        0 => None,
                        _ => Some(bytes_of(lsn * 100 + index as u64, SIZES[rng.below(SIZES.len() as u64) as usize])),
                    };
                    rec.push((key, (lsn, index as u32), value));
                }
                let ops: Vec<Op> = rec
                    .iter()
                    .map(|(key, _, value)| match value {
                        Some(v) => Op::Put(key, v),
                        None => Op::Delete(key),
                    })
                    .collect();
                memtable.apply(&versions, Lsn(lsn), &ops);
                epoch += 1;
                for (key, version, value) in rec {
                    history.entry(key).or_default().push((version, epoch, value));
                }
                // snapshots: open (under no apply) / close
                match rng.below(50) {
                    0 if open.len() < 4 => open.push(versions.open()),
                    1 if !open.is_empty() => {
                        let e = open.remove(rng.below(open.len() as u64) as usize);
                        versions.close(e);
                    }
                    _ => {}
                }
                if n % 400 == 399 || n + 1 == lsns.len() {
                    let ats: Vec<Option<u64>> = std::iter::once(None).chain(open.iter().map(|&e| Some(e))).collect();
                    for at in ats {
                        let want = model_at(&history, at);
                        let got = memtable.range(Bound::Unbounded, Bound::Unbounded, false, usize::MAX, at);
                        assert_eq!(got.len(), want.len(), "seed {seed} n {n} at {at:?}");
                        for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
                            assert_eq!(&gk[..], &wk[..], "seed {seed} n {n} at {at:?}");
                            assert_eq!(gv.as_deref(), wv.as_deref(), "seed {seed} n {n} at {at:?} key {wk:?}");
                            if let Some(v) = gv {
                                kept.push((v.clone(), v.to_vec()));
                            }
                            kept.push((gk.clone(), gk.to_vec()));
                        }
                        let back = memtable.range(Bound::Unbounded, Bound::Unbounded, true, usize::MAX, at);
                        assert_eq!(back.len(), want.len());
                    }
                    let want = model_at(&history, None);
                    memtable.with_changes(|changes| {
                        assert_eq!(changes.len(), want.len());
                        for (&(ck, cv), (wk, wv)) in changes.iter().zip(&want) {
                            assert_eq!(ck, &wk[..]);
                            assert_eq!(cv, wv.as_deref());
                        }
                    });
                    for (k, wv) in &want {
                        assert_eq!(memtable.get(k).map(|v| v.map(|b| b.to_vec())), Some(wv.clone()));
                    }
                }
            }
            for (b, want) in &kept {
                assert_eq!(&b[..], &want[..], "seed {seed}: a Bytes read earlier changed");
            }
        }
    }

    #[test]
    fn a_prefix_padded_with_zeros_orders_before_the_longer_key() {
        let short = Key::new(Bytes::from_static(b"ab"));
        let long = Key::new(Bytes::from_static(b"ab\0"));
        assert_eq!(short.head, long.head);
        assert!(short < long);
    }
}
