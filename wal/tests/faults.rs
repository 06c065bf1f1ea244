//! The write path's answers to the faults of DESIGN.md's fault model, one
//! test per way an acknowledged write could be lost: never-synced bytes
//! replayed and then vouched for (1), a writeback error reported to only
//! one of overlapping syncs (2), damage to an acknowledged batch that a
//! later batch or the clean close should vouch for (3), torn sectors left
//! garbage or unreadable (7); and the log's own lock.

mod common;

use std::path::Path;
use std::sync::Arc;

use ringkv_wal::{Error, FrameHeader, Lsn, Wal, WalOptions, SEGMENT_BYTES_MIN};
use uring::{OpenMode, SimRng, SimStorage, Storage};

use common::{frame, options, DIR};

fn segment0() -> std::path::PathBuf {
    Path::new(DIR).join(format!("{:020}.wal", 0))
}

fn open(disk: &SimStorage) -> ringkv_wal::Result<(Wal, Vec<Vec<u8>>)> {
    uring::create_dirs(disk, Path::new(DIR)).unwrap();
    let mut seen = Vec::new();
    let wal = Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), Lsn(0), &mut |_, p| seen.push(p.to_vec()))?;
    Ok((wal, seen))
}

/// Finding 1. Regression: recovery replayed bytes its process never
/// synced (still in the page cache after their writeback failed), took them
/// as durable, and the next acknowledged frame vouched for them; a power cut
/// then lost them, and the open refused the log, the new write with it.
#[test]
fn bytes_replayed_after_a_failed_sync_are_not_vouched_for_until_durable() {
    let mut lost_somewhere = false;
    for seed in 0..60 {
        let disk = SimStorage::new().seeded(seed);
        let (wal, _) = open(&disk).unwrap();
        wal.append(frame(b"acked"), true).unwrap();
        // The batch's write passes, its sync fails: the disk keeps what the
        // writeback got to, the page cache all of it.
        disk.fail_file_call(&segment0(), 1, libc::EIO);
        assert!(wal.append(frame(b"never acked"), true).is_err(), "seed={seed}");
        drop(wal);
        // The process restarts (no power cut: the cache is still there).
        let (wal, seen) = open(&disk).unwrap_or_else(|e| panic!("seed={seed}: reopen: {e}"));
        lost_somewhere |= seen.len() == 1;
        wal.append(frame(b"after restart"), true).unwrap();
        disk.power_cut();
        drop(wal);
        let after = disk.after_power_cut(seed);
        let (_, seen) = open(&after).unwrap_or_else(|e| panic!("seed={seed}: open after the power cut: {e}"));
        assert_eq!(seen.first().map(Vec::as_slice), Some(&b"acked"[..]), "seed={seed}");
        assert_eq!(seen.last().map(Vec::as_slice), Some(&b"after restart"[..]), "seed={seed}: acknowledged write lost");
    }
    assert!(lost_somewhere, "some failed writeback must have lost the batch on the disk");
}

/// Finding 2. On a buffered file a writeback error is reported to only one
/// of two overlapping syncs; the other succeeds without its data on disk.
/// So syncs must never overlap there, and a batch is acknowledged only on
/// its own sync. Concurrent writers, a sync failure, a power cut: every
/// acknowledged frame survives.
#[test]
fn a_writeback_error_never_leaves_a_lost_batch_acknowledged() {
    for seed in 0..150 {
        let disk = SimStorage::new().seeded(seed);
        let (wal, _) = open(&disk).unwrap();
        let mut rng = SimRng::new(seed);
        disk.fail_file_call(&segment0(), 2 + rng.below(40), libc::EIO);
        let acked: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u8)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..20u8 {
                            let p = vec![t, i, 0xAB];
                            match wal.append(frame(&p), true) {
                                Ok(_) => acked.push(p),
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        disk.power_cut();
        drop(wal);
        let (_, seen) = open(&disk.after_power_cut(seed)).unwrap_or_else(|e| panic!("seed={seed}: {e}"));
        for p in &acked {
            assert!(seen.contains(p), "seed={seed}: acknowledged frame {p:?} lost");
        }
    }
}

/// Every frame of a batch carries the end of the log as acknowledged when
/// the batch was written: with one batch at a time, the previous batch's end.
fn batches_vouch_for_their_predecessors(disk: &SimStorage) {
    let mut headers: Vec<FrameHeader> = Vec::new();
    ringkv_wal::inspect(Arc::new(disk.clone()), Path::new(DIR), &mut |h, _| headers.push(*h)).unwrap();
    let mut previous_end = Lsn(0);
    let mut batch_start = Lsn(0);
    for h in headers {
        assert_eq!(h.durable_lsn, previous_end, "frame at {} (batch at {batch_start})", h.lsn);
        if h.ends_batch {
            previous_end = h.next_lsn();
            batch_start = previous_end;
        }
    }
}

/// Finding 3. Regression: writers stamped their frames with the durable
/// LSN when they sealed them, so frames sealed while batch K was in flight
/// could not vouch for K once written after it, and damage to acknowledged
/// K with the log ending in K+1 was truncated as a torn tail.
#[test]
fn damage_to_an_acknowledged_batch_before_the_last_is_corruption() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk).unwrap();
    let lsns: Vec<Lsn> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u8)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || (0..40u8).map(|i| wal.append(frame(&[t, i]), true).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    drop(wal);
    disk.remove_file(&Path::new(DIR).join("CLEAN")).unwrap(); // as a crash leaves it
    batches_vouch_for_their_predecessors(&disk);
    // Damage the second-to-last batch: the last vouches for it.
    let mut headers: Vec<FrameHeader> = Vec::new();
    ringkv_wal::inspect(Arc::new(disk.clone()), Path::new(DIR), &mut |h, _| headers.push(*h)).unwrap();
    let ends: Vec<&FrameHeader> = headers.iter().filter(|h| h.ends_batch).collect();
    let victim = ends[ends.len() - 2];
    assert!(lsns.contains(&victim.lsn));
    flip_bit(&disk, victim.lsn.0 + 33);
    match open(&disk) {
        Err(Error::Corrupt { lsn, offset, .. }) => {
            assert_eq!((lsn, offset), (victim.lsn, victim.lsn.0 % SEGMENT_BYTES_MIN));
        }
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("an acknowledged batch was damaged and the log opened"),
    }
}

/// Flips a bit of the log at LSN `at` (every segment has the same size).
fn flip_bit(disk: &SimStorage, at: u64) {
    let start = at / SEGMENT_BYTES_MIN * SEGMENT_BYTES_MIN;
    let path = Path::new(DIR).join(format!("{start:020}.wal"));
    let file = disk.open(&path, OpenMode::Existing).unwrap();
    let mut b = [0u8; 1];
    file.read_at(at - start, &mut b).unwrap();
    file.write_at(at - start, &[b[0] ^ 0x20]).unwrap();
    file.sync_data().unwrap();
}

/// Finding 3. Regression: the clean-close marker proved the log durable to
/// its end, but damage to the last batch was still truncated as torn.
#[test]
fn damage_to_the_last_batch_after_a_clean_close_is_corruption() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk).unwrap();
    let lsns: Vec<Lsn> = (0..5u8).map(|i| wal.append(frame(&[i; 50]), true).unwrap()).collect();
    drop(wal);
    flip_bit(&disk, lsns[4].0 + 40);
    match open(&disk) {
        Err(Error::Corrupt { lsn, .. }) => assert_eq!(lsn, lsns[4]),
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("the last acknowledged batch was damaged after a clean close and the log opened"),
    }
}

/// Finding 7. Every batch starts in a fresh block, so a write torn by a
/// power cut (sectors left garbage or unreadable) only ever hits frames
/// that were never acknowledged, and unreadable blocks past the end are a
/// torn tail, not a failure to open.
#[test]
fn strict_torn_sectors_only_hit_unacknowledged_frames() {
    let mut unreadable_seen = false;
    for seed in 0..300 {
        let disk = SimStorage::new().strict(true).pipelined(seed % 2 == 1).seeded(seed);
        let (wal, _) = open(&disk).unwrap();
        let mut rng = SimRng::new(seed);
        disk.power_cut_at(disk.calls() + 2 + rng.below(30));
        let acked: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3u8)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..30u8 {
                            let p = vec![t; 40 + 97 * i as usize];
                            match wal.append(frame(&p), i % 3 != 0) {
                                Ok(_) if i % 3 != 0 => acked.push(p),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        disk.power_cut();
        drop(wal);
        let after = disk.after_power_cut(seed);
        let file = after.open(&segment0(), OpenMode::Existing).unwrap();
        let mut block = uring::AlignedBuf::new(SEGMENT_BYTES_MIN as usize);
        unreadable_seen |= file.read_at(0, &mut block).is_err();
        let (_, seen) = open(&after).unwrap_or_else(|e| panic!("seed={seed}: open after a strict power cut: {e}"));
        for p in &acked {
            assert!(seen.contains(p), "seed={seed}: acknowledged frame of {} bytes lost", p.len());
        }
    }
    assert!(unreadable_seen, "some power cut must have left an unreadable sector");
}

#[test]
fn the_log_has_a_lock_of_its_own() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk).unwrap();
    match open(&disk) {
        Err(Error::Storage(uring::Error::Locked { path, .. })) => assert!(path.starts_with(DIR), "{}", path.display()),
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("the log was opened twice"),
    }
    let err = ringkv_wal::inspect(Arc::new(disk.clone()), Path::new(DIR), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, Error::Storage(uring::Error::Locked { .. })), "{err:?}");
    drop(wal);
    open(&disk).unwrap();
}

#[test]
fn a_missing_log_directory_is_an_error_not_a_new_log() {
    let disk = SimStorage::new();
    let err = Wal::open(Arc::new(disk.clone()), Path::new("/nowhere/wal"), options(), Lsn(0), &mut |_, _| {})
        .err()
        .expect("no directory, no log");
    assert!(matches!(&err, Error::NoLog { dir } if dir == Path::new("/nowhere/wal")), "{err:?}");
    assert!(!disk.exists(Path::new("/nowhere")).unwrap(), "nothing was created");
}

/// `Wal::sync` makes frames appended without waiting durable: after it
/// returns, a power cut keeps them all.
#[test]
fn sync_makes_every_appended_frame_durable() {
    for seed in 0..100 {
        let disk = SimStorage::new().pipelined(seed % 2 == 1).seeded(seed);
        let (wal, _) = open(&disk).unwrap();
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + 300 * usize::from(i)]).collect();
        for p in &payloads {
            wal.append(frame(p), false).unwrap();
        }
        wal.sync().unwrap();
        wal.sync().unwrap(); // nothing new: returns at once
        disk.power_cut();
        drop(wal);
        let (_, seen) = open(&disk.after_power_cut(seed)).unwrap();
        assert_eq!(seen, payloads, "seed={seed}");
    }
}

/// Review finding: point-in-time recovery read the log it copies out with
/// plain reads, so a block the device could not read (a media error inside
/// an acknowledged frame) failed every repair. Now the block is copied as
/// zeros and reported, and the recovery goes on.
#[test]
fn point_in_time_recovery_copies_around_an_unreadable_block() {
    let frames = 12u8;
    let damaged = 5usize;
    let mut tested = false;
    for seed in 0..200 {
        let disk = SimStorage::new().strict(true).seeded(seed);
        let (wal, _) = open(&disk).unwrap();
        let lsns: Vec<Lsn> = (0..frames).map(|i| wal.append(frame(&[i; 100]), true).unwrap()).collect();
        drop(wal);
        disk.remove_file(&Path::new(DIR).join("CLEAN")).unwrap(); // as a crash leaves it
                                                                  // An unsynced overwrite torn by a power cut leaves, on a strict
                                                                  // disk, sectors that fail to read: a media error in an acknowledged
                                                                  // batch, before later acknowledged ones.
        let file = disk.open(&segment0(), OpenMode::Existing).unwrap();
        file.write_at(lsns[damaged].0, &[0x55; 512]).unwrap();
        disk.power_cut();
        let after = disk.after_power_cut(seed);
        let mut probe = [0u8; 512];
        let file = after.open(&segment0(), OpenMode::Existing).unwrap();
        if file.read_at(lsns[damaged].0, &mut probe).is_ok() {
            continue; // this seed left the sector readable
        }
        tested = true;
        let options = WalOptions { recovery: ringkv_wal::RecoveryMode::PointInTime, ..options() };
        let mut seen = 0;
        let wal = Wal::open(Arc::new(after.clone()), Path::new(DIR), options, Lsn(0), &mut |_, _| seen += 1)
            .unwrap_or_else(|e| panic!("seed={seed}: point-in-time recovery failed: {e}"));
        assert_eq!(seen, damaged, "seed={seed}");
        let dropped = wal.recovered().dropped.clone().expect("acknowledged frames dropped");
        assert_eq!(dropped.unreadable, vec![0], "seed={seed}: the unreadable block is the copy's first");
        break;
    }
    assert!(tested, "no seed left an unreadable sector");
}
