//! The in-memory ordered map over the WAL.
//!
//! Every entry remembers the version (LSN, index in batch) that wrote it,
//! and a change only lands if its version is newer. So batches may be
//! applied in any order (leaders apply acknowledged groups in LSN order,
//! `NoSync` writers their own at once) and the map still ends as the log
//! orders them, which is the state recovery rebuilds.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use bytes::Bytes;
use wal::Lsn;

use crate::batch::Op;

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
}

impl Memtable {
    /// Applies a batch's ops as of `lsn`, atomically for readers.
    pub(crate) fn apply(&self, lsn: Lsn, ops: Vec<Op>) {
        let mut map = self.map.write().expect("memtable lock");
        for (index, op) in ops.into_iter().enumerate() {
            let version = (lsn.0, index as u32);
            let (key, value) = match op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
            match map.get_mut(&key) {
                Some(entry) if entry.version >= version => {}
                Some(entry) => *entry = Entry { version, value },
                None => {
                    map.insert(key, Entry { version, value });
                }
            }
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().expect("memtable lock").get(key).and_then(|e| e.value.as_deref().map(<[u8]>::to_vec))
    }

    /// Up to `limit` live entries of `(start, end)`: the first ones in key
    /// order, or with `from_back` the last ones in reverse key order. None
    /// for a range that ends before it starts.
    pub(crate) fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        from_back: bool,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        if is_empty_range(start, end) {
            return Vec::new(); // BTreeMap::range would panic
        }
        let map = self.map.read().expect("memtable lock");
        let live = |(k, e): (&Bytes, &Entry)| e.value.as_ref().map(|v| (k.to_vec(), v.to_vec()));
        let range = map.range::<[u8], _>((start, end));
        if from_back {
            range.rev().filter_map(live).take(limit).collect()
        } else {
            range.filter_map(live).take(limit).collect()
        }
    }

    /// Live keys.
    pub(crate) fn live_keys(&self) -> usize {
        self.map.read().expect("memtable lock").values().filter(|e| e.value.is_some()).count()
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
