//! Arbitrary bytes where the log should be: recovery and inspection never
//! panic, and either open (treating the garbage as a torn tail, or reading
//! frames that really are valid) or fail with a typed error. Frames that
//! were durable before the garbage was written after them survive.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use ringkv_wal::{FrameBuf, Lsn, Wal, WalOptions, SEGMENT_BYTES_MIN};
use uring::{OpenMode, SimStorage, Storage};

const DIR: &str = "/fuzz/wal";

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

fn replay(disk: &SimStorage) -> ringkv_wal::Result<Vec<Vec<u8>>> {
    uring::create_dirs(disk, Path::new(DIR)).unwrap();
    let mut seen = Vec::new();
    let wal = Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), Lsn(0), &mut |_, p| seen.push(p.to_vec()))?;
    drop(wal);
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Garbage written over the start of a fresh log.
    #[test]
    fn garbage_log_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000), at in 0u64..4096) {
        let disk = SimStorage::new();
        drop(replay(&disk).unwrap());
        let path = Path::new(DIR).join(format!("{:020}.wal", 0));
        let file = disk.open(&path, OpenMode::Existing).unwrap();
        file.write_at(at, &bytes).unwrap();
        file.sync_data().unwrap();
        let _ = replay(&disk);
        let _ = ringkv_wal::inspect(Arc::new(disk.clone()), Path::new(DIR), &mut |_, _| {});
    }

    /// Garbage after durable frames: the frames are still there, or the
    /// open fails with a typed error (garbage that forges a witness frame
    /// would need a matching CRC and LSN).
    #[test]
    fn garbage_after_durable_frames_keeps_them(bytes in proptest::collection::vec(any::<u8>(), 1..5000), gap in 0u64..3000) {
        let disk = SimStorage::new();
        uring::create_dirs(&disk, Path::new(DIR)).unwrap();
        let wal = Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap();
        let mut end = 0;
        for i in 0..10u8 {
            let mut frame = FrameBuf::new();
            frame.extend(&[i; 100]);
            end = wal.append(frame, true).unwrap().0 + 132;
        }
        drop(wal);
        // As a crash would leave it: no clean-close marker.
        disk.remove_file(&Path::new(DIR).join("CLEAN")).unwrap();
        let path = Path::new(DIR).join(format!("{:020}.wal", 0));
        let file = disk.open(&path, OpenMode::Existing).unwrap();
        file.write_at(end + gap, &bytes).unwrap();
        file.sync_data().unwrap();
        match replay(&disk) {
            Ok(seen) => {
                prop_assert!(seen.len() >= 10);
                for (i, payload) in seen.iter().take(10).enumerate() {
                    prop_assert_eq!(payload, &vec![i as u8; 100]);
                }
            }
            Err(e) => prop_assert!(matches!(e, ringkv_wal::Error::Corrupt { .. }), "untyped failure: {e:?}"),
        }
    }
}
