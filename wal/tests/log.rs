//! The log on the simulated disk: round trips, segment roll-over and
//! recycling, and every row of the recovery table.

mod common;

use std::path::Path;
use std::sync::Arc;

use ringkv_wal::{Error, Lsn, RecoveryMode, Wal, WalOptions, SEGMENT_BYTES_MIN};
use uring::{OpenMode, SimStorage, Storage};

use common::{frame, options, DIR};

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// Opens the log and returns it with every replayed (lsn, payload).
type Replayed = Vec<(Lsn, Vec<u8>)>;

fn open(disk: &SimStorage, options: WalOptions) -> ringkv_wal::Result<(Wal, Replayed)> {
    uring::create_dirs(disk, Path::new(DIR)).unwrap();
    let mut seen = Vec::new();
    let wal =
        Wal::open(Arc::new(disk.clone()), Path::new(DIR), options, Lsn(0), &mut |h, p| seen.push((h.lsn, p.to_vec())))?;
    Ok((wal, seen))
}

fn segment_files(disk: &SimStorage) -> Vec<String> {
    let mut names = disk.list_dir(Path::new(DIR)).unwrap();
    names.sort();
    names
}

#[test]
fn frames_survive_reopen_in_order_across_segments() {
    let disk = SimStorage::new();
    let (wal, seen) = open(&disk, options()).unwrap();
    assert!(seen.is_empty());
    let mut written = Vec::new();
    for i in 0..500 {
        let p = payload(i, 100 + i * 7 % 3000);
        let lsn = wal.append(frame(&p), i % 3 != 0).unwrap();
        written.push((lsn, p));
    }
    drop(wal); // a clean close syncs what was not waited for
    let (wal, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, written);
    assert!(segment_files(&disk).len() >= 3, "the log rolled over into new segments");
    let read: Vec<_> = wal.read_from(written[10].0).unwrap().map(|f| f.unwrap()).collect();
    assert_eq!(read.len(), written.len() - 10);
    assert_eq!(read[0].payload, written[10].1);
}

#[test]
fn reclaimed_segments_are_recycled_and_the_log_goes_on() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    let mut last = Lsn(0);
    for i in 0..200 {
        last = wal.append(frame(&payload(i, 4000)), true).unwrap();
    }
    let reclaimed = wal.reclaim_below(last).unwrap();
    assert!(reclaimed >= 2, "reclaimed {reclaimed}");
    assert!(wal.start_lsn() > Lsn(0));
    for i in 0..200 {
        wal.append(frame(&payload(i, 4000)), true).unwrap();
    }
    let names = segment_files(&disk);
    assert!(names.iter().all(|n| !n.starts_with("recycle-")) || reclaimed > 2, "recycled files were reused: {names:?}");
    let start = wal.start_lsn();
    drop(wal);
    // Reopening from before the oldest segment is refused with a typed error.
    let err = Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), Lsn(0), &mut |_, _| {});
    assert!(matches!(err, Err(Error::LogStartsLater { .. })), "{:?}", err.err());
    let mut count = 0;
    Wal::open(Arc::new(disk), Path::new(DIR), options(), start, &mut |_, _| count += 1).unwrap();
    assert!(count > 0);
}

/// Writes `n` durable frames, then crashes (no clean-close marker), and
/// returns their LSNs and payloads.
fn write_frames(disk: &SimStorage, n: usize) -> Vec<(Lsn, Vec<u8>)> {
    let (wal, _) = open(disk, options()).unwrap();
    let frames: Vec<_> = (0..n)
        .map(|i| {
            let p = payload(i, 200);
            (wal.append(frame(&p), true).unwrap(), p)
        })
        .collect();
    drop(wal);
    disk.remove_file(&Path::new(DIR).join("CLEAN")).unwrap();
    frames
}

fn flip_bit(disk: &SimStorage, lsn: Lsn, byte: u64) {
    // Segment 0 starts at LSN 0, so the file offset is the LSN.
    let path = Path::new(DIR).join(format!("{:020}.wal", 0));
    let file = disk.open(&path, OpenMode::Existing).unwrap();
    let mut b = [0u8; 1];
    file.read_at(lsn.0 + byte, &mut b).unwrap();
    b[0] ^= 0x10;
    file.write_at(lsn.0 + byte, &b).unwrap();
    file.sync_data().unwrap();
}

#[test]
fn flipped_bit_in_the_last_frame_is_a_torn_tail_and_is_truncated() {
    let disk = SimStorage::new();
    let frames = write_frames(&disk, 20);
    flip_bit(&disk, frames[19].0, 40);
    let (wal, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, frames[..19]);
    // New writes take the truncated frame's place, and survive.
    let lsn = wal.append(frame(b"after"), true).unwrap();
    assert_eq!(lsn, frames[19].0);
    drop(wal);
    let (_, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen.last().unwrap().1, b"after");
    assert_eq!(seen.len(), 20);
}

#[test]
fn flipped_bit_in_an_early_frame_is_corruption_naming_file_and_offset() {
    let disk = SimStorage::new();
    let frames = write_frames(&disk, 20);
    flip_bit(&disk, frames[5].0, 50);
    let err = open(&disk, options()).err().expect("corruption must refuse to open");
    match &err {
        Error::Corrupt { path, offset, lsn, .. } => {
            assert_eq!(*lsn, frames[5].0);
            assert_eq!(*offset, frames[5].0 .0);
            assert!(path.ends_with("00000000000000000000.wal"), "{}", path.display());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("00000000000000000000.wal") && text.contains(&format!("offset {}", frames[5].0)), "{text}");

    // Point-in-time recovery keeps what came before the damage.
    let pit = WalOptions { recovery: RecoveryMode::PointInTime, ..options() };
    let (_, seen) = open(&disk, pit).unwrap();
    assert_eq!(seen, frames[..5]);
}

#[test]
fn pipelined_commits_survive_reopen_in_order_across_segments() {
    let disk = SimStorage::new().pipelined(true);
    let (wal, _) = open(&disk, options()).unwrap();
    let written: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || {
                    (0..150)
                        .map(|i| {
                            let p = payload(t * 1000 + i, 50 + (i * 37) % 2000);
                            (wal.append(frame(&p), i % 4 != 0).unwrap(), p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let stats = wal.stats();
    assert!(stats.commits >= 450, "every waited-for frame was counted durable: {stats:?}");
    drop(wal);
    let mut written = written;
    written.sort();
    let (_, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, written);
}

#[test]
fn torn_unsynced_tail_is_truncated_and_stale_frames_never_come_back() {
    // A batch torn by a power cut: frames at its end may survive while its
    // start does not. They were never acknowledged and must not reappear,
    // not even once later writes line up with them.
    for seed in 0..200 {
        let disk = SimStorage::new();
        let (wal, _) = open(&disk, options()).unwrap();
        let acked: Vec<_> = (0..5).map(|i| wal.append(frame(&payload(i, 300)), true).unwrap()).collect();
        for i in 5..40 {
            wal.append(frame(&payload(i, 300)), false).unwrap();
        }
        disk.power_cut();
        drop(wal);
        let after = disk.after_power_cut(seed);
        let (wal, seen) = open(&after, options()).unwrap();
        assert!(seen.len() >= acked.len(), "seed={seed}: lost acknowledged frames");
        for (i, (lsn, p)) in seen.iter().enumerate() {
            assert_eq!(p, &payload(i, 300), "seed={seed}: frame {i} at {lsn}");
        }
        // Rewrite the same sizes: any stale frame would now sit exactly at a boundary.
        let n = seen.len();
        for i in n..40 {
            wal.append(frame(&payload(i + 1000, 300)), true).unwrap();
        }
        drop(wal);
        let (_, seen) = open(&after, options()).unwrap();
        assert_eq!(seen.len(), 40, "seed={seed}");
        for (i, (_, p)) in seen.iter().enumerate().skip(n) {
            assert_eq!(p, &payload(i + 1000, 300), "seed={seed}: a stale frame came back at {i}");
        }
    }
}

/// The call that failed gets the real error; later calls get `Poisoned`
/// naming it.
#[test]
fn failed_sync_poisons_the_log() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    wal.append(frame(b"one"), true).unwrap();
    // The commit's write passes, its sync fails.
    disk.fail_file_call(&Path::new(DIR).join(format!("{:020}.wal", 0)), 1, libc::EIO);
    let err = wal.append(frame(b"two"), true).unwrap_err();
    let Error::Storage(real) = &err else { panic!("the failing call gets the real error: {err:?}") };
    assert_eq!(real.raw_os_error(), Some(libc::EIO));
    assert!(err.to_string().contains("fdatasync"), "{err}");
    let again = wal.append(frame(b"three"), true).unwrap_err();
    let Error::Poisoned { cause } = &again else { panic!("later writes are refused: {again:?}") };
    assert!(matches!(**cause, Error::Storage(_)), "{cause:?}");
    assert!(again.to_string().contains("fdatasync"), "{again}");
}

#[test]
fn full_disk_on_write_is_a_typed_error() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    disk.fail_file_call(&Path::new(DIR).join(format!("{:020}.wal", 0)), 0, libc::ENOSPC);
    let err = wal.append(frame(b"x"), true).unwrap_err();
    let Error::Storage(real) = &err else { panic!("{err:?}") };
    assert_eq!(real.raw_os_error(), Some(libc::ENOSPC));
    assert!(err.to_string().contains("/db/wal/00000000000000000000.wal"), "{err}");
    assert!(matches!(wal.append(frame(b"y"), true), Err(Error::Poisoned { .. })));
}

#[test]
fn oversized_frame_is_refused() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    let big = vec![0u8; wal.payload_bytes_max() + 1];
    assert!(matches!(wal.append(frame(&big), true), Err(Error::FrameTooLarge { .. })));
    let max = vec![7u8; wal.payload_bytes_max()];
    wal.append(frame(&max), true).unwrap();
}

/// Regression: the reader returned the same Corrupt error forever, so
/// collecting it never ended.
#[test]
fn reader_reports_damage_once_with_file_and_offset_then_stops() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    let lsns: Vec<Lsn> = (0..6).map(|i| wal.append(frame(&payload(i, 64)), true).unwrap()).collect();
    flip_bit(&disk, lsns[3], 40);
    let read: Vec<_> = wal.read_from(Lsn(0)).unwrap().collect();
    assert_eq!(read.len(), 4, "three frames, then the error, then nothing");
    for (i, frame) in read[..3].iter().enumerate() {
        assert_eq!(frame.as_ref().unwrap().payload, payload(i, 64));
    }
    match &read[3] {
        Err(Error::Corrupt { offset, lsn, path, .. }) => {
            assert_eq!((*lsn, *offset), (lsns[3], lsns[3].0));
            assert!(path.ends_with("00000000000000000000.wal"));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Regression: recovery read frames with the limit of the options it was
/// opened with, so a log written with larger segments (and frames) and
/// reopened with smaller ones lost its large frames as "bad headers".
#[test]
fn reopening_with_smaller_segments_still_reads_large_frames() {
    let disk = SimStorage::new();
    let big = WalOptions { segment_bytes: 4 << 20, ..WalOptions::default() };
    let (wal, _) = open(&disk, big).unwrap();
    let large = payload(1, 300_000);
    assert!(large.len() > options().payload_bytes_max());
    let lsn = wal.append(frame(&large), true).unwrap();
    let small = wal.append(frame(b"after"), true).unwrap();
    drop(wal);
    let (wal, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, vec![(lsn, large), (small, b"after".to_vec())]);
    assert_eq!(wal.read_from(lsn).unwrap().count(), 2);
}

#[test]
fn failed_background_segment_preparation_is_retried_by_the_committer() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    // The preparer creates the second segment as a .tmp file first: fail its first write.
    let tmp = Path::new(DIR).join(format!("{:020}.tmp", SEGMENT_BYTES_MIN));
    disk.fail_file_call(&tmp, 0, libc::EIO);
    let written: Vec<_> = (0..120)
        .map(|i| {
            let p = payload(i, 4000);
            (wal.append(frame(&p), true).unwrap(), p)
        })
        .collect();
    assert!(written.last().unwrap().0 .0 > SEGMENT_BYTES_MIN, "the log crossed into the second segment");
    drop(wal);
    let (_, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, written);
}

#[test]
fn clean_close_lets_the_next_open_skip_the_search_beyond_the_end() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    let written: Vec<_> =
        (0..10).map(|i| (wal.append(frame(&payload(i, 100)), true).unwrap(), payload(i, 100))).collect();
    drop(wal);
    assert!(segment_files(&disk).contains(&"CLEAN".to_string()), "a clean close leaves the marker");
    let before = disk.calls();
    let (wal, seen) = open(&disk, options()).unwrap();
    let with_marker = disk.calls() - before;
    assert_eq!(seen, written);
    assert!(!segment_files(&disk).contains(&"CLEAN".to_string()), "open removes the marker");
    // Without the marker (a crash), open searches the rest of the log.
    disk.power_cut();
    drop(wal);
    let after = disk.after_power_cut(1);
    let before = after.calls();
    let (_, seen) = open(&after, options()).unwrap();
    let without_marker = after.calls() - before;
    assert_eq!(seen, written);
    assert!(with_marker < without_marker, "{with_marker} calls with the marker, {without_marker} without");
}

#[test]
fn damaged_clean_marker_is_ignored_and_removed() {
    let disk = SimStorage::new();
    let (wal, _) = open(&disk, options()).unwrap();
    let written: Vec<_> = (0..5).map(|i| (wal.append(frame(&payload(i, 80)), true).unwrap(), payload(i, 80))).collect();
    drop(wal);
    let marker = Path::new(DIR).join("CLEAN");
    let file = disk.open(&marker, OpenMode::Existing).unwrap();
    file.write_at(3, &[0xFF]).unwrap(); // the end LSN no longer matches its CRC
    file.sync_data().unwrap();
    let (wal, seen) = open(&disk, options()).unwrap();
    assert_eq!(seen, written, "a damaged marker means the full search, nothing lost");
    assert!(!segment_files(&disk).contains(&"CLEAN".to_string()));
    drop(wal);
}
