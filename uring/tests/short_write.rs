//! A short write breaks a linked chain: the kernel cancels the linked
//! fsync. The commit must then write the remainder itself and report what
//! stops it, never acknowledge. A child process under `RLIMIT_FSIZE` gets a
//! real short write (the kernel writes up to the limit) and then EFBIG.

use std::path::Path;
use std::process::Command;

use uring::{open_storage, AlignedBuf, Io, OpenMode, StorageOptions, SyncMode, BLOCK_BYTES};

const CHILD: &str = "RINGKV_SHORT_WRITE_CHILD";

fn child(dir: &Path) {
    // SAFETY: ignoring SIGXFSZ only changes this process's signal disposition,
    // so writes past the limit fail with EFBIG instead of killing it.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let limit = libc::rlimit { rlim_cur: BLOCK_BYTES as u64, rlim_max: BLOCK_BYTES as u64 };
    // SAFETY: limit is a valid rlimit that lives across the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    for (name, io, sync_mode) in [
        ("linked", Io::Uring, SyncMode::LinkedFsync),
        ("dsync", Io::Uring, SyncMode::RwfDsync),
        ("syscall", Io::Syscall, SyncMode::RwfDsync),
    ] {
        let storage = open_storage(StorageOptions { io, sync_mode, ..StorageOptions::default() }).unwrap();
        let path = dir.join(name);
        let file = storage.open(&path, OpenMode::Create).unwrap();
        let mut buf = storage.io_buffer(2 * BLOCK_BYTES);
        buf.fill(7);
        let err = file.write_sync(0, &buf, 2 * BLOCK_BYTES).expect_err("a commit past the size limit must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{name}: {err}");
        assert!(
            err.to_string().contains(&format!("at offset {BLOCK_BYTES}")),
            "{name}: the remainder was tried: {err}"
        );
        let mut back = AlignedBuf::new(BLOCK_BYTES);
        file.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 7), "{name}: the short write's part is in the file");
        println!("{name}: short write then {err}");
    }
    println!("CHILD-OK");
}

#[test]
fn short_write_breaks_the_chain_and_the_remainder_is_written_or_reported() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "short_write_breaks_the_chain_and_the_remainder_is_written_or_reported", "--nocapture"])
        .env(CHILD, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("CHILD-OK"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
