//! A real full disk: a small tmpfs fills up under durable writes. The write
//! that hits ENOSPC fails with a typed error naming the file, the store
//! refuses further writes, and once there is room again every acknowledged
//! write is there.

mod common;

use ringkv::{Error, Kv};

#[test]
fn full_disk_is_a_typed_error_and_loses_nothing_acknowledged() {
    let Some(mount) = common::Mount::new("tmpfs", Some("size=1536k")) else {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    };
    let dir = mount.path().join("store");
    let options = common::options(common::AUTO);
    let db = Kv::open_with(&dir, options).expect("open on the small tmpfs");
    let value = vec![0xA5u8; 50_000];
    let mut acked = Vec::new();
    let err = loop {
        let key = format!("key-{:05}", acked.len());
        match db.put(&key, &value) {
            Ok(()) => acked.push(key),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "1.5 MiB cannot hold 50 MB");
    };
    // The write that hit the full disk gets the real error.
    let Error::Wal(wal::Error::Storage(real)) = &err else { panic!("expected the storage error, got {err:?}") };
    assert_eq!(real.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(err.to_string().contains(dir.to_str().unwrap()), "names the file: {err}");
    assert!(!acked.is_empty());
    assert!(matches!(db.put("after", "x"), Err(Error::Wal(wal::Error::Poisoned { .. }))), "later writes are refused");
    // A user tells a full disk without looking into the log's errors.
    let later = db.put("after", "x").unwrap_err();
    assert!(later.is_poisoned() && later.is_write_failure() && !later.is_corruption(), "{later}");
    assert_eq!(later.raw_os_error(), Some(libc::ENOSPC), "through the poisoned log: {later}");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert!(err.is_write_failure() && !err.is_poisoned());
    drop(db);

    assert!(mount.remount("size=16m"), "grow the tmpfs");
    let db = Kv::open_with(&dir, options).expect("reopen with room");
    for key in &acked {
        assert_eq!(db.get(key).unwrap().as_deref(), Some(&value[..]), "acknowledged {key} lost");
    }
    db.put("after", "room again").unwrap();
}
