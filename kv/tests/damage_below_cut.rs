//! Damage in the log below a checkpoint's cut (review 13): a store whose
//! log ends in a recycled segment (stale frames of an earlier lap past the
//! end) still opens with every write, in every mode.

mod common;

use std::path::Path;
use std::sync::Arc;

use ringkv::{Kv, RecoveryMode};
use uring::{OpenMode, SimStorage, Storage};

fn key(i: u64) -> String {
    format!("key-{i:05}")
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8 + 1; 6000];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Every frame of the log in `dir/wal` as (lsn, segment start, frame bytes),
/// and where the log ends.
fn frames(disk: &SimStorage, dir: &Path) -> (Vec<(u64, u64)>, wal::Inspection) {
    let mut frames = Vec::new();
    let inspection = wal::inspect(Arc::new(disk.clone()), &dir.join("wal"), &mut |h, _| {
        if h.kind == wal::FrameKind::Batch {
            frames.push((h.lsn.0, h.frame_bytes()))
        }
    })
    .unwrap();
    (frames, inspection)
}

fn segments(disk: &SimStorage, dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let wal_dir = dir.join("wal");
    let mut s: Vec<(u64, std::path::PathBuf)> = disk
        .list_dir(&wal_dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal") && !n.starts_with("recycle-"))
        .map(|n| (n[..20].parse().unwrap(), wal_dir.join(n)))
        .collect();
    s.sort();
    s
}

/// A long-running store: checkpoints reclaim segments, which are recycled,
/// so the segment the log currently ends in holds stale frames of an
/// earlier lap past the end. A bit rots in a frame below the newest
/// checkpoint's cut, in the segment holding the cut: the page file holds
/// that frame, every write is in data.db or in the log after the cut. The
/// store must open (this is exactly the case b0ff6bb says it handles).
///
/// It does not: the second pass from the cut ends at the log's end, where
/// the stale bytes of the recycled segment are a non-zero bad frame, which
/// `scan` takes for "garbage at the restart point" and clears
/// `from_is_a_frame_start`: `NotAFrameStart`, in every mode, writable and
/// read-only alike.
#[test]
fn damage_below_the_cut_with_the_log_ending_in_a_recycled_segment_still_opens() {
    damage_below_the_cut(false);
}

/// Control: the same with the stale bytes past the log's end zeroed (as
/// in a fresh, zero-filled segment) opens with every write.
#[test]
fn control_damage_below_the_cut_with_zeros_past_the_end_opens() {
    damage_below_the_cut(true);
}

fn damage_below_the_cut(zero_past_the_end: bool) {
    let dir = Path::new("/db");
    let disk = SimStorage::new().seeded(7);
    let mut options = common::options(common::AUTO);
    options.wal_bytes = 1 << 40; // checkpoints only when asked
    options.memtable_bytes = 1 << 30;
    let db = Kv::open_on(Arc::new(disk.clone()), dir, options).unwrap();
    let mut n = 0u64;
    // Laps of the log: 256 KiB segments, 8 KiB a put (two blocks).
    for _ in 0..8 {
        for _ in 0..37 {
            db.put(key(n), value(n)).unwrap();
            n += 1;
        }
        db.checkpoint().unwrap();
    }
    // A few puts after the last checkpoint, so that the cut is inside a
    // segment with frames on both sides of it.
    let cut = db.stats().unwrap().page_file.checkpoint_lsn.0;
    for _ in 0..5 {
        db.put(key(n), value(n)).unwrap();
        n += 1;
    }
    drop(db);

    let (frames, inspection) = frames(&disk, dir);
    let segs = segments(&disk, dir);
    let (seg_start, seg_path) = segs.iter().rev().find(|(s, _)| *s <= cut).unwrap().clone();
    // Precondition: the log ends in a recycled segment (non-zero bytes past its end).
    let (end_start, end_path) = segs.iter().rev().find(|(s, _)| *s <= inspection.end.0).unwrap().clone();
    let file = disk.open(&end_path, OpenMode::Existing).unwrap();
    let mut past = [0u8; 64];
    file.read_at(inspection.end.0 - end_start, &mut past).unwrap();
    assert_ne!(past, [0u8; 64], "precondition: stale bytes past the log's end at {}", inspection.end);
    if zero_past_the_end {
        let from = inspection.end.0 - end_start;
        let size = file.size_bytes().unwrap();
        file.write_at(from, &vec![0u8; (size - from) as usize]).unwrap();
        file.sync_data().unwrap();
    }
    // A frame below the cut, in the segment holding it.
    let &(lsn, _) = frames
        .iter()
        .find(|(lsn, _)| *lsn >= seg_start && *lsn < cut)
        .expect("precondition: a frame below the cut in its segment");
    let file = disk.open(&seg_path, OpenMode::Existing).unwrap();
    let mut b = [0u8; 1];
    let at = lsn - seg_start + 40;
    file.read_at(at, &mut b).unwrap();
    file.write_at(at, &[b[0] ^ 0x04]).unwrap();
    file.sync_data().unwrap();

    for mode in [RecoveryMode::Strict, RecoveryMode::PointInTime] {
        let mut options = options;
        options.recovery = mode;
        let db = Kv::open_on(Arc::new(disk.clone()), dir, options)
            .unwrap_or_else(|e| panic!("{mode:?}: the store holds every write but does not open: {e}"));
        for i in 0..n {
            assert_eq!(db.get(key(i)).unwrap(), Some(value(i)), "{mode:?}: {}", key(i));
        }
    }
}
