//! The checkpointer under load and under failure: readers see every
//! acknowledged write while memtables are frozen, folded and dropped under
//! them; a checkpoint whose page-file I/O fails loses nothing, and writers
//! are refused once they would outgrow memory.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringkv::{Durability, Error, Kv, Options, WriteBatch};
use uring::SimStorage;

fn small(backend: common::Backend) -> Options {
    let mut options = common::options(backend);
    options.memtable_bytes = 16 << 10;
    options.wal_bytes = 4 * wal::SEGMENT_BYTES_MIN;
    options.cache_bytes = 64 << 10;
    options
}

fn value(key: u64, version: u64) -> Vec<u8> {
    format!("{key:05}@{version:08}").into_bytes()
}

fn version_of(key: &[u8], value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).expect("utf-8 value");
    let (k, v) = text.split_once('@').unwrap_or_else(|| panic!("malformed value {text:?}"));
    assert_eq!(k.as_bytes(), &key[..5], "value of another key");
    v.parse().expect("version")
}

/// Writers overwrite and delete keys (each writer its own keys, versions
/// rising) while readers get and scan: a get never returns a version older
/// than one already acknowledged, a delete acknowledged is not undone, and
/// every scan is in order without repeats. Checkpoints run all along (a
/// 16 KiB memtable); on the simulated disk and on the real backends.
#[test]
fn readers_see_every_acknowledged_write_while_checkpoints_run() {
    let sim = SimStorage::new().pipelined(true).seeded(7);
    let dirs: Vec<_> = common::REAL_BACKENDS.iter().map(|_| common::temp_dir("ckpt-load")).collect();
    let stores: Vec<(String, Kv)> =
        std::iter::once(("sim".to_owned(), Kv::open_on(Arc::new(sim), Path::new("/db"), small(common::AUTO)).unwrap()))
            .chain(
                common::REAL_BACKENDS
                    .iter()
                    .zip(&dirs)
                    .map(|(&b, dir)| (format!("{b:?}"), Kv::open_with(dir.path(), small(b)).unwrap())),
            )
            .collect();
    for (name, db) in &stores {
        const WRITERS: u64 = 3;
        const KEYS: u64 = 40;
        // Per key: the last acknowledged version, and whether it was a delete.
        let acked: Vec<AtomicU64> = (0..WRITERS * KEYS).map(|_| AtomicU64::new(0)).collect();
        // Per key: the version being written (a reader may see it before
        // its writer records the acknowledgement).
        let attempted: Vec<AtomicU64> = (0..WRITERS * KEYS).map(|_| AtomicU64::new(0)).collect();
        let done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (db, acked, attempted, done) = (db, &acked, &attempted, &done);
                s.spawn(move || {
                    for version in 1..=400u64 {
                        let key = w * KEYS + version % KEYS;
                        let k = format!("{key:05}");
                        let durability = if version % 5 == 0 { Durability::NoSync } else { Durability::Sync };
                        attempted[key as usize].store(version, Ordering::SeqCst);
                        let mut batch = WriteBatch::new();
                        match version % 7 == 3 {
                            true => batch.delete(&k),
                            false => batch.put(&k, value(key, version)),
                        };
                        db.write_with(batch, durability).unwrap();
                        // Delete versions are recorded with the low bit set.
                        acked[key as usize].store(version * 2 + u64::from(version % 7 == 3), Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            for _ in 0..2 {
                let (db, acked, attempted, done) = (db, &acked, &attempted, &done);
                s.spawn(move || {
                    while done.load(Ordering::SeqCst) < WRITERS {
                        for key in 0..WRITERS * KEYS {
                            let before = acked[key as usize].load(Ordering::SeqCst);
                            let k = format!("{key:05}");
                            let got = db.get(&k).unwrap();
                            let (version, deleted) = (before / 2, before % 2 == 1);
                            match got {
                                Some(v) => assert!(
                                    version_of(k.as_bytes(), &v) > version
                                        || !deleted && version_of(k.as_bytes(), &v) == version,
                                    "{name}: {k} went back to {:?} after @{version} (deleted: {deleted})",
                                    String::from_utf8_lossy(&v)
                                ),
                                None => assert!(
                                    version == 0 || deleted || attempted[key as usize].load(Ordering::SeqCst) > version,
                                    "{name}: {k} lost @{version}"
                                ),
                            }
                        }
                        let keys: Vec<Vec<u8>> = db.scan::<&str>(..).map(|i| i.unwrap().0).collect();
                        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{name}: a scan out of order or repeating");
                        let back: Vec<Vec<u8>> = db.scan::<&str>(..).rev().map(|i| i.unwrap().0).collect();
                        assert!(back.windows(2).all(|w| w[0] > w[1]), "{name}: a reverse scan out of order");
                    }
                });
            }
        });
        let generation = db.stats().unwrap().page_file.generation;
        assert!(generation >= 3, "{name}: only {generation} checkpoints ran");
    }
}

/// A checkpoint whose page-file sync fails: it reports the error, reads
/// still see everything (the frozen memtable stays), writes go on until
/// the memtable reaches twice its threshold and are then refused with
/// `CheckpointFailed`; after a power cut every acknowledged write is there.
#[test]
fn a_failed_checkpoint_loses_nothing_and_writers_are_then_refused() {
    let disk = SimStorage::new().seeded(21);
    let dir = Path::new("/db");
    let db = Kv::open_on(Arc::new(disk.clone()), dir, small(common::AUTO)).unwrap();
    let mut acked = Vec::new();
    for i in 0..100u64 {
        db.put(format!("{i:05}"), value(i, 1)).unwrap();
        acked.push(i);
    }
    db.checkpoint().unwrap();
    for i in 100..150u64 {
        db.put(format!("{i:05}"), value(i, 1)).unwrap();
        acked.push(i);
    }
    // The next call on data.db is the checkpoint's first page write... fail
    // its sync instead: the second call.
    disk.fail_file_call(&dir.join("data.db"), 2, libc::EIO);
    let err = db.checkpoint().expect_err("the page file's sync failed");
    assert!(err.raw_os_error() == Some(libc::EIO), "{err:?}");
    for &i in &acked {
        assert_eq!(db.get(format!("{i:05}")).unwrap(), Some(value(i, 1)), "{i} unreadable after the failure");
    }
    let refused = (150..5000u64).find_map(|i| match db.put(format!("{i:05}"), value(i, 1)) {
        Ok(()) => {
            acked.push(i);
            None
        }
        Err(e) => Some(e),
    });
    let refused = refused.expect("writes were never refused: memory would grow without bound");
    assert!(matches!(refused, Error::CheckpointFailed { .. }), "{refused:?}");
    assert!(refused.to_string().contains("Input/output error"), "names the cause: {refused}");
    assert!(matches!(db.checkpoint(), Err(Error::CheckpointFailed { .. })));
    disk.power_cut();
    drop(db);
    let db = Kv::open_on(Arc::new(disk.after_power_cut(1)), dir, small(common::AUTO)).unwrap();
    for &i in &acked {
        assert_eq!(db.get(format!("{i:05}")).unwrap(), Some(value(i, 1)), "acknowledged {i} lost");
    }
    db.checkpoint().expect("a reopened store checkpoints again");
    assert_eq!(db.scan::<&str>(..).count(), acked.len());
}
