//! A store's directories: made durable before anything is written into
//! them, never silently re-created empty, never created by a command that
//! only reads; and a short write inside a block, through the real
//! committer, is a typed error, never a panic.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;

use ringkv::{Error, Kv};
use uring::{SimStorage, Storage};

/// Finding 4. Regression: the store directory and `wal/` were created
/// without syncing their parents; a power cut took them back, and the next
/// open made a new, empty store where acknowledged writes had been.
#[test]
fn a_new_store_keeps_its_first_acknowledged_write_through_a_power_cut() {
    for seed in 0..100 {
        let disk = SimStorage::new().seeded(seed);
        let dir = Path::new("/data/store");
        let db = Kv::open_on(Arc::new(disk.clone()), dir, common::options(common::AUTO)).unwrap();
        db.put("first", "write").unwrap();
        disk.power_cut();
        drop(db);
        let after = disk.after_power_cut(seed);
        let db = Kv::open_on(Arc::new(after), dir, common::options(common::AUTO))
            .unwrap_or_else(|e| panic!("seed={seed}: reopen: {e}"));
        assert_eq!(db.get("first").unwrap(), Some(b"write".to_vec()), "seed={seed}: acknowledged write lost");
    }
}

/// Review findings: a store made before markers existed was refused; and
/// so was one whose marker rename was lost with a failed directory sync
/// (the namespace showed the marker, so a retried open wrote to it), after
/// a power cut (now the retry fails until a remount, which may also lose
/// the marker). Both hold only a store's files and a log with a segment:
/// both open, and a writable open adds the marker.
#[test]
fn a_store_without_its_marker_opens_and_gets_one() {
    let dir = common::temp_dir("format0");
    let db = common::open(dir.path(), common::AUTO);
    db.put("k", "v").unwrap();
    drop(db);
    std::fs::remove_file(dir.path().join("RINGKV")).unwrap(); // the layout before markers
    let out = common::kv_bin().arg("--db").arg(dir.path()).args(["get", "k"]).output().unwrap();
    assert_eq!(out.stdout, b"v\n", "read-only: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("RINGKV").exists(), "a read-only open adds nothing");
    let db = Kv::open_with(dir.path(), common::options(common::AUTO)).expect("a store of format 0");
    assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
    assert!(dir.path().join("RINGKV").exists(), "a writable open adds the marker");

    let path = Path::new("/data/store");
    const MARKER_DIR_SYNC: u64 = 6; // call 6 of a creation: the marker's directory sync
    for seed in 0..8 {
        let disk = SimStorage::new().seeded(seed);
        disk.fail_call(MARKER_DIR_SYNC, libc::EIO);
        let err = Kv::open_on(Arc::new(disk.clone()), path, common::options(common::AUTO)).expect_err("EIO");
        assert!(err.to_string().contains("/data/store"), "seed={seed}: {err}");
        // The file system refuses to sync the directory until a remount
        // (the simulator's model of a journal abort): a retry fails too.
        let err = Kv::open_on(Arc::new(disk.clone()), path, common::options(common::AUTO)).expect_err("EIO");
        assert!(err.to_string().contains("/data/store"), "seed={seed}: {err}");
        disk.power_cut();
        let disk = disk.after_power_cut(seed ^ 0x5eed);
        let db = Kv::open_on(Arc::new(disk.clone()), path, common::options(common::AUTO))
            .unwrap_or_else(|e| panic!("seed={seed}: after a remount: {e}"));
        db.put("k", "v").unwrap();
        disk.power_cut();
        drop(db);
        let after = disk.after_power_cut(seed);
        let db = Kv::open_on(Arc::new(after), path, common::options(common::AUTO))
            .unwrap_or_else(|e| panic!("seed={seed}: a store with an acknowledged write was refused: {e}"));
        assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()), "seed={seed}");
    }
}

/// A power cut at any call of a store's creation leaves a directory the
/// next open completes as a store (a half-written marker is no foreign
/// file), never refuses.
#[test]
fn a_creation_cut_short_anywhere_is_completed_by_the_next_open() {
    let dir = Path::new("/data/store");
    let calls = {
        let disk = SimStorage::new();
        drop(Kv::open_on(Arc::new(disk.clone()), dir, common::options(common::AUTO)).unwrap());
        disk.calls()
    };
    for cut in 1..=calls {
        for seed in 0..4 {
            let disk = SimStorage::new().seeded(seed);
            disk.power_cut_at(cut);
            let _ = Kv::open_on(Arc::new(disk.clone()), dir, common::options(common::AUTO));
            let after = disk.after_power_cut(seed);
            let db = Kv::open_on(Arc::new(after), dir, common::options(common::AUTO))
                .unwrap_or_else(|e| panic!("cut at call {cut} of {calls}, seed={seed}: {e}"));
            db.put("k", "v").unwrap();
        }
    }
}

/// Finding 4. Regression: a store whose `wal/` was gone opened as a new,
/// empty store.
#[test]
fn a_store_whose_log_directory_is_gone_is_refused() {
    let dir = common::temp_dir("no-wal");
    let db = common::open(dir.path(), common::AUTO);
    db.put("k", "v").unwrap();
    drop(db);
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    match Kv::open_with(dir.path(), common::options(common::AUTO)) {
        Err(Error::NotAStore { path, found }) => {
            assert_eq!(path, dir.path());
            assert_eq!(found, "LOCK, RINGKV, data.db");
        }
        Err(e) => panic!("expected NotAStore, got {e:?}"),
        Ok(_) => panic!("a store without its log opened empty"),
    }
    assert!(!dir.path().join("wal").exists(), "nothing was re-created");
    // Any other non-empty directory is not a store either.
    let other = common::temp_dir("not-a-store");
    std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
    let err = Kv::open_with(other.path(), common::options(common::AUTO)).expect_err("not a store");
    assert!(err.to_string().contains("notes.txt"), "{err}");
}

/// A store is recognised by its marker: another program's directory is
/// refused even if it has a `wal/` of its own, a marker of a later format is
/// refused naming it, and a creation cut short (only an empty `wal/`) is
/// completed.
#[test]
fn a_store_is_recognised_by_its_marker() {
    let options = common::options(common::AUTO);
    let foreign = common::temp_dir("foreign");
    std::fs::create_dir(foreign.path().join("wal")).unwrap();
    std::fs::write(foreign.path().join("wal/000001.log"), "someone else's log").unwrap();
    let err = Kv::open_with(foreign.path(), options).expect_err("not ours");
    assert!(matches!(&err, Error::NotAStore { found, .. } if found == "wal"), "{err:?}");
    let out = common::kv_bin().arg("--db").arg(foreign.path()).arg("stats").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(foreign.path().join("wal")).unwrap().count(), 1, "nothing added");

    let interrupted = common::temp_dir("interrupted");
    std::fs::create_dir(interrupted.path().join("wal")).unwrap();
    let db = Kv::open_with(interrupted.path(), options).expect("creation completed");
    db.put("k", "v").unwrap();
    drop(db);
    let marker = std::fs::read(interrupted.path().join("RINGKV")).unwrap();
    assert!(marker.starts_with(b"ringkv store\nformat 2\n") && marker.len() == 4096);

    // A format 1 store (the log alone) is read, and a writable open
    // upgrades its marker.
    let mut older = marker.clone();
    older[20] = b'1';
    std::fs::write(interrupted.path().join("RINGKV"), &older).unwrap();
    let db = Kv::open_read_only(interrupted.path(), options).expect("format 1 is read");
    assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
    drop(db);
    assert_eq!(std::fs::read(interrupted.path().join("RINGKV")).unwrap(), older, "a read-only open changes nothing");
    let db = Kv::open_with(interrupted.path(), options).expect("format 1 is upgraded");
    assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
    drop(db);
    assert_eq!(std::fs::read(interrupted.path().join("RINGKV")).unwrap(), marker, "upgraded to format 2");

    let mut later = marker.clone();
    later[20] = b'7';
    std::fs::write(interrupted.path().join("RINGKV"), &later).unwrap();
    let err = Kv::open_with(interrupted.path(), options).expect_err("a later format");
    assert!(matches!(err, Error::UnsupportedFormat { format: 7, supported: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("RINGKV"), "{err}");
}

#[test]
fn an_empty_directory_on_the_simulated_disk_becomes_a_store() {
    let disk = SimStorage::new();
    uring::create_dirs(&disk, Path::new("/empty")).unwrap();
    let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/empty"), common::options(common::AUTO)).unwrap();
    db.put("a", "b").unwrap();
    let mut strict = common::options(common::AUTO);
    strict.create_if_missing = false;
    drop(db);
    Kv::open_on(Arc::new(disk.clone()), Path::new("/empty"), strict).unwrap();
    let err = Kv::open_on(Arc::new(disk.clone()), Path::new("/nothing"), strict).expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(!disk.exists(Path::new("/nothing")).unwrap());
}

/// Regression: `kv --db TYPO get x` created a store (with a 64 MiB segment)
/// at the typo.
#[test]
fn commands_that_only_read_never_create_a_store() {
    let dir = common::temp_dir("typo");
    let typo = dir.path().join("TYPO");
    for args in [&["get", "x"][..], &["scan"], &["stats"], &["check"], &["wal-dump"]] {
        let out = common::kv_bin().arg("--db").arg(&typo).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: no store there: {stderr}");
        assert!(stderr.contains("TYPO"), "{args:?}: the error names the directory: {stderr}");
        assert!(!stderr.contains("offset"), "{args:?}: a directory has no offset: {stderr}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
}

/// Finding 6. Regression: a short write that stopped inside a block (a
/// 512-byte-aligned `RLIMIT_FSIZE`) was finished at the unaligned offset,
/// the O_DIRECT alignment assertion panicked the committer, and writers
/// were told only that the log was closed. Now: a typed error, no panic.
#[test]
fn a_short_write_inside_a_block_is_a_typed_error_through_the_committer() {
    for backend in common::REAL_BACKENDS {
        let dir = common::temp_dir("odd-short");
        let out = common::kv_bin()
            .arg("--db")
            .arg(dir.path())
            .args(["--segment-bytes", "262144"])
            .args(backend.flags())
            .args(["put", "small", "value"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{backend:?}: {}", String::from_utf8_lossy(&out.stderr));
        // The next batch starts at 4096; the limit lies inside its second block.
        let limit = 2 * 4096 + 512;
        let mut child = common::kv_bin();
        child.arg("--db").arg(dir.path()).args(["--segment-bytes", "262144"]).args(backend.flags());
        child.args(["put", "big", &"v".repeat(20_000)]);
        // SAFETY: the closure only calls async-signal-safe functions
        // (signal, setrlimit) between fork and exec.
        unsafe {
            child.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = child.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{backend:?}: a typed store error, exit status 3: {stderr}");
        assert!(!stderr.contains("panicked"), "{backend:?}: {stderr}");
        assert!(stderr.contains("no progress") && stderr.contains(".wal"), "{backend:?}: says why and where: {stderr}");
        // Nothing acknowledged was lost, and the store opens again.
        let db = common::open(dir.path(), backend);
        assert_eq!(db.get("small").unwrap(), Some(b"value".to_vec()), "{backend:?}");
        db.put("after", "x").unwrap();
    }
}

/// A creator killed between `mkdir` and the parent's sync leaves
/// directories that exist but whose entries are not durable: the next open
/// must make them durable before acknowledging anything written in them.
#[test]
fn directories_left_unsynced_by_a_killed_creator_are_made_durable_on_open() {
    for seed in 0..100 {
        let disk = SimStorage::new().seeded(seed);
        disk.create_dir(Path::new("/db")).unwrap();
        disk.create_dir(Path::new("/db/wal")).unwrap();
        let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), common::options(common::AUTO)).unwrap();
        db.put("k", "v").unwrap();
        disk.power_cut();
        drop(db);
        let after = disk.after_power_cut(seed);
        let db = Kv::open_on(Arc::new(after), Path::new("/db"), common::options(common::AUTO))
            .unwrap_or_else(|e| panic!("seed={seed}: {e}"));
        assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()), "seed={seed}: acknowledged write lost");
    }
}

/// Every file of a store, with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Regression: `kv --recovery point-in-time stats` truncated durable frames,
/// and every read-only command opened the store for writing (zeroing a torn
/// tail, removing the clean-close marker, rewriting LOCK). Now no command
/// that only reads changes a byte, whatever the damage.
#[test]
fn commands_that_only_read_never_change_a_byte_of_the_store() {
    let dir = common::temp_dir("read-only");
    let db = dir.path().to_str().unwrap().to_owned();
    for i in 0..20 {
        let out = common::kv_bin()
            .args(["--db", &db, "--segment-bytes", "262144", "put", &format!("k{i:02}"), "v"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // Damage an early frame (corruption), as a bit flip on the disk would.
    let segment = common::first_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[5 * 4096 + 40] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let before = snapshot(dir.path());
    let reads: [&[&str]; 6] = [&["get", "k00"], &["get", "k19"], &["scan"], &["stats"], &["check"], &["wal-dump"]];
    for recovery in ["strict", "point-in-time"] {
        for args in reads {
            let out = common::kv_bin().args(["--db", &db, "--recovery", recovery]).args(args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{recovery} {args:?}: {stderr}");
            assert!(snapshot(dir.path()) == before, "{recovery} {args:?} changed the store: {stderr}");
        }
    }
    // Point-in-time reads see the batches before the damage.
    let out = common::kv_bin().args(["--db", &db, "--recovery", "point-in-time", "get", "k04"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v\n");
    // Strict reads refuse the damaged log, naming it.
    let out = common::kv_bin().args(["--db", &db, "get", "k04"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_read_only_store_refuses_writes_and_writers_exclude_it() {
    let dir = common::temp_dir("ro-api");
    let db = common::open(dir.path(), common::AUTO);
    db.put("k", "v").unwrap();
    match Kv::open_read_only(dir.path(), common::options(common::AUTO)) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id()),
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("opened read-only under a writer"),
    }
    drop(db);
    let a = Kv::open_read_only(dir.path(), common::options(common::AUTO)).unwrap();
    let b = Kv::open_read_only(dir.path(), common::options(common::AUTO)).unwrap();
    assert_eq!(a.get("k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(b.wal_stats().durable_lsn, a.wal_stats().durable_lsn);
    assert!(matches!(a.put("x", "y"), Err(Error::ReadOnly { .. })));
    assert!(
        matches!(Kv::open_with(dir.path(), common::options(common::AUTO)), Err(Error::Locked { .. })),
        "readers exclude a writer"
    );
    drop((a, b));
    common::open(dir.path(), common::AUTO).put("x", "y").unwrap();
}

#[test]
fn sync_and_close_make_no_sync_writes_durable_and_report_failure() {
    for seed in 0..50 {
        let disk = SimStorage::new().seeded(seed);
        let mut options = common::options(common::AUTO);
        options.durability = ringkv::Durability::NoSync;
        let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), options).unwrap();
        for i in 0..10 {
            db.put(format!("k{i}"), "v").unwrap();
        }
        db.sync().unwrap();
        disk.power_cut();
        drop(db);
        let db = Kv::open_on(Arc::new(disk.after_power_cut(seed)), Path::new("/db"), options).unwrap();
        assert_eq!(db.scan::<&str>(..).count(), 10, "seed={seed}");
        db.put("last", "v").unwrap();
        db.close().unwrap();
    }
    // A failure at close is reported, not only logged.
    let disk = SimStorage::new();
    let mut options = common::options(common::AUTO);
    options.durability = ringkv::Durability::NoSync;
    let db = Kv::open_on(Arc::new(disk.clone()), Path::new("/db"), options).unwrap();
    disk.fail_file_call(Path::new("/db/wal/00000000000000000000.wal"), 1, libc::EIO);
    let _ = db.put("doomed", "v");
    let err = db.close().expect_err("the failed sync is reported at close");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
