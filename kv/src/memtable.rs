//! The in-memory ordered map over the WAL.
//!
//! Every entry remembers the version (LSN, index in batch) that wrote it,
//! and a change only lands if its version is newer. So batches may be
//! applied in any order (leaders apply acknowledged groups in LSN order,
//! `NoSync` writers their own at once) and the map still ends as the log
//! orders them, which is the state recovery rebuilds.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use wal::Lsn;

use crate::batch::Op;
use crate::tree::Change;

/// Bytes an entry costs besides its key and value (map node, `Bytes`
/// handles, version), for sizing the memtable.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// (LSN of the batch, index of the op in it).
type Version = (u64, u32);

#[derive(Clone, Debug)]
struct Entry {
    version: Version,
    /// None for a delete (a tombstone: it must outlive older puts).
    value: Option<Bytes>,
}

#[derive(Debug, Default)]
pub(crate) struct Memtable {
    /// Keys and values are slices of their batches' payloads.
    map: RwLock<BTreeMap<Bytes, Entry>>,
    /// Bytes applied (keys, values and overhead; replaced entries count
    /// until the memtable is checkpointed).
    bytes: AtomicUsize,
}

impl Memtable {
    /// Applies a batch's ops as of `lsn`, atomically for readers.
    pub(crate) fn apply(&self, lsn: Lsn, ops: Vec<Op>) {
        let mut map = self.map.write().expect("memtable lock");
        let mut bytes = 0;
        for (index, op) in ops.into_iter().enumerate() {
            let version = (lsn.0, index as u32);
            let (key, value) = match op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
            bytes += key.len() + value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD_BYTES;
            match map.get_mut(&key) {
                Some(entry) if entry.version >= version => {}
                Some(entry) => *entry = Entry { version, value },
                None => {
                    map.insert(key, Entry { version, value });
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
    pub(crate) fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        from_back: bool,
        limit: usize,
    ) -> Vec<(Bytes, Option<Bytes>)> {
        if is_empty_range(start, end) {
            return Vec::new(); // BTreeMap::range would panic
        }
        let map = self.map.read().expect("memtable lock");
        let entry = |(k, e): (&Bytes, &Entry)| (k.clone(), e.value.clone());
        let range = map.range::<[u8], _>((start, end));
        if from_back {
            range.rev().take(limit).map(entry).collect()
        } else {
            range.take(limit).map(entry).collect()
        }
    }

    /// Every entry in key order, deletes included: what a checkpoint folds
    /// into the page file.
    pub(crate) fn changes(&self) -> Vec<Change> {
        self.map.read().expect("memtable lock").iter().map(|(k, e)| (k.clone(), e.value.clone())).collect()
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
}

impl Tables {
    /// Applies the batch at `lsn` where it belongs: below the frozen cut
    /// into the frozen memtable (a `Sync` frame placed before the cut whose
    /// leader applies it after), so that every frame in `active` is newer
    /// than every frame in `frozen`.
    pub(crate) fn apply(&self, lsn: Lsn, ops: Vec<Op>) {
        match &self.frozen {
            Some((frozen, cut)) if lsn < *cut => frozen.apply(lsn, ops),
            _ => self.active.apply(lsn, ops),
        }
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
