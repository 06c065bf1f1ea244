//! A short write breaks a linked chain: the kernel cancels the linked
//! fsync. The commit queue must then write the remainder itself and report
//! what stops it, never acknowledge. A child process under `RLIMIT_FSIZE`
//! gets a real short write (the kernel writes up to the limit) and then
//! EFBIG; at a limit inside a block, an O_DIRECT remainder cannot start
//! there, and the queue must fail with a typed error, not panic.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ringkv_uring::{open_storage, AlignedBuf, CommitEvent, Io, OpenMode, StorageOptions, SyncMode, BLOCK_BYTES};

const CHILD: &str = "RINGKV_SHORT_WRITE_CHILD";

const BACKENDS: [(&str, Io, SyncMode); 4] = [
    ("linked", Io::Uring, SyncMode::LinkedFsync),
    ("dsync", Io::Uring, SyncMode::RwfDsync),
    ("uring-syscalls", Io::Uring, SyncMode::Syscalls),
    ("syscall", Io::Syscall, SyncMode::Syscalls),
];

/// Commits `len` bytes of 7s at offset 0 of a new file; returns the error.
fn commit_fails(dir: &Path, name: &str, io: Io, sync_mode: SyncMode, len: usize) -> ringkv_uring::Error {
    let storage = open_storage(StorageOptions { io, sync_mode, commit_buffer_bytes: len }).unwrap();
    let file: Arc<dyn ringkv_uring::File> = storage.open(&dir.join(name), OpenMode::Create).unwrap();
    let mut queue = storage.commit_queue().unwrap();
    let mut buf = queue.buffers(len).pop().unwrap();
    buf.fill(7);
    let ticket = queue.submit(&file, 0, buf, len);
    match queue.wait() {
        CommitEvent::Written { ticket: t, result: Err(e), .. } => {
            assert_eq!(t, ticket);
            assert_eq!(queue.in_flight(), 0, "{name}: a failed write ends the commit");
            e
        }
        CommitEvent::Written { .. } => panic!("{name}: a write past the size limit completed"),
        CommitEvent::Synced { .. } => panic!("{name}: a commit past the size limit was synced"),
    }
}

fn set_file_size_limit(bytes: u64) {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: limit is a valid rlimit that lives across the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
}

fn child(dir: &Path) {
    // SAFETY: ignoring SIGXFSZ only changes this process's signal disposition,
    // so writes past the limit fail with EFBIG instead of killing it.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    set_file_size_limit(BLOCK_BYTES as u64);
    for (name, io, sync_mode) in BACKENDS {
        let err = commit_fails(dir, name, io, sync_mode, 2 * BLOCK_BYTES);
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{name}: {err}");
        assert!(
            err.to_string().contains(&format!("at offset {BLOCK_BYTES}")),
            "{name}: the remainder was tried: {err}"
        );
        let storage = open_storage(StorageOptions { io, sync_mode, commit_buffer_bytes: 0 }).unwrap();
        let file = storage.open(&dir.join(name), OpenMode::Existing).unwrap();
        let mut back = AlignedBuf::new(BLOCK_BYTES);
        file.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 7), "{name}: the short write's part is in the file");
        println!("{name}: short write then {err}");
    }
    // Regression: a short write that stopped inside a block was resumed at
    // the unaligned offset, and the O_DIRECT alignment assertion panicked.
    let inside_block = BLOCK_BYTES as u64 + 512;
    set_file_size_limit(inside_block);
    for (name, io, sync_mode) in BACKENDS {
        let name = format!("{name}-odd");
        let err = commit_fails(dir, &name, io, sync_mode, 4 * BLOCK_BYTES);
        let text = err.to_string();
        // Resumed at the block start, the kernel again stops at the limit.
        assert!(text.contains("no progress"), "{name}: resumed block-aligned, then a typed error: {text}");
        assert!(text.contains(&format!("at offset {inside_block}")), "{name}: where it stopped: {text}");
        assert!(text.contains(&name), "{name}: names the file: {text}");
        println!("{name}: short write inside a block then {text}");
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
