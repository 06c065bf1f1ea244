//! Damage in the log below a checkpoint's cut (review 13): recovery reads
//! on from the cut, which is always a batch's start, and loses nothing
//! acknowledged after it.
mod common;

use std::path::Path;
use std::sync::Arc;

use ringkv_wal::{Lsn, Wal};
use uring::{OpenMode, SimStorage, Storage, BLOCK_BYTES};

use common::{frame, options, DIR};

fn open_from(disk: &SimStorage, from: Lsn) -> ringkv_wal::Result<(Wal, Vec<Vec<u8>>)> {
    let mut seen = Vec::new();
    let wal = Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), from, &mut |_, p| seen.push(p.to_vec()))?;
    Ok((wal, seen))
}

/// A cut is always a batch's start: `Wal::cut` closes the batch being
/// gathered, so frames placed after the cut start the next batch, at the
/// block boundary the cut names. (Review 13: a cut inside a batch, or one
/// after a batch's last frame but before its block's end, could not be
/// told apart from damage when the log below it was damaged.)
#[test]
fn a_cut_is_a_block_boundary_where_the_next_frame_starts() {
    let disk = SimStorage::new();
    uring::create_dirs(&disk, Path::new(DIR)).unwrap();
    let (wal, _) = open_from(&disk, Lsn(0)).unwrap();
    let mut cuts = Vec::new();
    for round in 0..50u8 {
        let placed = wal.append(frame(&vec![round; 10 + usize::from(round) * 37]), false).unwrap();
        let cut = wal.cut(|end| end).unwrap();
        assert_eq!(cut.0 % BLOCK_BYTES as u64, 0, "round {round}: cut {cut}");
        assert!(cut > placed, "round {round}");
        let next = wal.append(frame(b"after the cut"), round % 2 == 0).unwrap();
        assert_eq!(next, cut, "round {round}: the first frame after a cut starts at it");
        cuts.push(cut);
    }
    wal.sync().unwrap();
    drop(wal);
    // The log reopens from every cut, each frame after it replayed.
    for cut in cuts {
        let (_, seen) = open_from(&disk, cut).unwrap();
        assert_eq!(seen.first().map(Vec::as_slice), Some(&b"after the cut"[..]), "from {cut}");
    }
}

fn zero(disk: &SimStorage, at: u64, len: usize) {
    let path = Path::new(DIR).join(format!("{:020}.wal", 0));
    let file = disk.open(&path, OpenMode::Existing).unwrap();
    file.write_at(at, &vec![0u8; len]).unwrap();
    file.sync_data().unwrap();
}

/// A checkpoint cuts the log while `f1` is gathered; `f2` and `f2b` are
/// placed after the cut and acknowledged (`Wal::sync`): only the log has
/// them. The 512-byte sector holding f1 (the page file has it) then reads
/// back as zeros. Recovery from the cut replays f2 and f2b (or refuses):
/// nothing acknowledged after the cut is dropped without a word. (Review
/// 13, finding 1: when a cut could fall inside a batch, f1, f2 and f2b
/// shared one, the zeros at the cut were taken for a batch's end and f2
/// and f2b were skipped; now `Wal::cut` closes f1's batch.)
#[test]
fn a_zeroed_sector_just_below_a_cut_drops_nothing_acknowledged_after_it() {
    for attempt in 0..1000 {
        let disk = SimStorage::new();
        uring::create_dirs(&disk, Path::new(DIR)).unwrap();
        let (wal, _) = open_from(&disk, Lsn(0)).unwrap();
        let before = wal.append(frame(b"before"), true).unwrap();
        let f1 = wal.append(frame(&[1u8; 50]), false).unwrap();
        let cut = wal.cut(|end| end).unwrap();
        let f2 = wal.append(frame(&[2u8; 450]), false).unwrap();
        let f2b = wal.append(frame(b"f2b: acknowledged, intact"), false).unwrap();
        wal.sync().unwrap(); // f2 and f2b are acknowledged durable
        let f3 = wal.append(frame(b"f3"), true).unwrap();
        drop(wal);
        // f1 alone in a batch at a block's start, f2 and f2b at the cut.
        if !(f1.0 % BLOCK_BYTES as u64 == 0 && f2 == cut && f2b.0 == f2.0 + 32 + 450) {
            assert!(attempt < 999, "never got f1 alone in its batch");
            continue;
        }
        assert!(before < f1 && f3.0 > f2b.0 && f2b.0 >= f1.0 + 512, "{f1} {f2b}");
        disk.remove_file(&Path::new(DIR).join("CLEAN")).unwrap(); // a crash, or not: either way
        zero(&disk, f1.0, 512);
        match open_from(&disk, cut) {
            // Refused (Corrupt, or NotAFrameStart as before b0ff6bb): nothing lost.
            Err(_) => {}
            Ok((wal, seen)) => {
                let seen: Vec<String> =
                    seen.iter().map(|p| String::from_utf8_lossy(&p[..p.len().min(30)]).into_owned()).collect();
                assert!(
                    seen.iter().any(|p| p.starts_with("f2b")),
                    "Strict open from the cut {cut} succeeded and replayed {seen:?}: the acknowledged \
                     frames f2 at {f2} (damaged) and f2b at {f2b} (intact) are silently gone"
                );
                drop(wal);
            }
        }
        return;
    }
}
