//! The systems compared: ringkv on each backend, the two baselines,
//! and (feature `peers`) the stores users pick instead, each set up for
//! durable writes the way its own documentation recommends.

use std::path::Path;
use std::sync::Arc;

use kv::{Io, Kv, Options, SyncMode, WriteBatch};

use crate::baseline::{GroupLoop, Inline};

/// Bytes of read cache each system is given, when `--cache-bytes` is set
/// (else each keeps its default).
static CACHE_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// ringkv reads its page file with O_DIRECT only (no kernel page cache).
static RINGKV_DIRECT_READS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// ringkv's memtable threshold, when `--ringkv-memtable-bytes` is set.
static RINGKV_MEMTABLE_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sets ringkv's memtable threshold for every store opened from now on.
pub fn set_ringkv_memtable_bytes(bytes: u64) {
    RINGKV_MEMTABLE_BYTES.set(bytes).expect("set once");
}

/// ringkv's WAL threshold, when `--ringkv-wal-bytes` is set.
static RINGKV_WAL_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sets ringkv's WAL threshold for every store opened from now on.
pub fn set_ringkv_wal_bytes(bytes: u64) {
    RINGKV_WAL_BYTES.set(bytes).expect("set once");
}

/// Makes ringkv read its page file with O_DIRECT only.
pub fn set_ringkv_direct_reads() {
    RINGKV_DIRECT_READS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Sets the read cache of every system opened from now on.
pub fn set_cache_bytes(bytes: u64) {
    CACHE_BYTES.set(bytes).expect("set once");
}

/// The read cache asked for, if any.
pub fn cache_bytes() -> Option<u64> {
    CACHE_BYTES.get().copied()
}

/// A store under test: every write returns once durable.
pub trait Store: Send + Sync {
    /// One durable put.
    fn put(&self, key: &[u8], value: &[u8]);
    /// One durable atomic batch.
    fn put_batch(&self, pairs: &[(&[u8], &[u8])]);
    /// A point read; `None` where the system has no reads (the baselines).
    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>>;
    /// Syncs issued so far, where the system counts them.
    fn syncs(&self) -> Option<u64> {
        None
    }
    /// Commits made durable so far, where the system counts them.
    fn commits(&self) -> Option<u64> {
        None
    }
    /// Writes so far that waited for background work (ringkv: for a
    /// checkpoint), and the seconds they waited in all.
    fn stalls(&self) -> Option<(u64, f64)> {
        None
    }
}

/// How each system is set up, for the report.
pub fn setup_notes() -> Vec<(&'static str, &'static str)> {
    let mut notes = vec![
        ("ringkv-io_uring", "Kv::open with default options (Io::Auto on io_uring, SyncMode::Syscalls, Durability::Sync): group commit, the leader's pwrite + fdatasync per batch, one batch at a time, O_DIRECT; checkpoint page writes and page reads on io_uring"),
        ("ringkv-io_uring-dsync", "as ringkv-io_uring but SyncMode::RwfDsync: one RWF_DSYNC WriteFixed per batch through the ring, one batch at a time"),
        ("ringkv-io_uring-linked", "as ringkv-io_uring but SyncMode::LinkedFsync: linked WriteFixed -> Fsync(DATASYNC) chains, pipelined (next batch written while the previous sync is in flight)"),
        ("ringkv-syscall", "Kv::open, Io::Syscall, Durability::Sync: group commit, pwrite + fdatasync per batch, one at a time, O_DIRECT"),
        ("group-loop", "no store: a minimal group-commit loop; writers hand records over a channel to one thread, which pwrites everything queued to a zero-filled file, fdatasyncs once and unparks exactly that group's writers"),
        ("inline", "no store: each caller pwrites its record to a zero-filled file and fdatasyncs it, under a mutex"),
    ];
    if cfg!(feature = "peers") {
        notes.extend([
            ("rocksdb", "rocksdb crate, WriteOptions::set_sync(true) on every write (RocksDB's own group commit)"),
            ("sqlite", "rusqlite (bundled), journal_mode=WAL, synchronous=FULL, one writer connection behind a mutex, one reader connection per thread"),
            ("redb", "one write transaction per put, Durability::Immediate (default), commit"),
            ("fjall", "keyspace batch with durability(Some(PersistMode::SyncData)) per write"),
        ]);
    }
    notes
}

/// Names of the systems in this build, in report order.
pub fn names() -> Vec<&'static str> {
    setup_notes().into_iter().map(|(name, _)| name).collect()
}

/// Opens `name` fresh in `dir`, a directory of this run's own (see `RunDir`).
pub fn open(name: &str, dir: &Path) -> Arc<dyn Store> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    match name {
        "ringkv-io_uring" => Arc::new(ringkv(dir, Io::Uring, SyncMode::Syscalls)),
        "ringkv-io_uring-dsync" => Arc::new(ringkv(dir, Io::Uring, SyncMode::RwfDsync)),
        "ringkv-io_uring-linked" => Arc::new(ringkv(dir, Io::Uring, SyncMode::LinkedFsync)),
        "ringkv-syscall" => Arc::new(ringkv(dir, Io::Syscall, SyncMode::default())),
        "group-loop" => Arc::new(GroupLoop::open(dir)),
        "inline" => Arc::new(Inline::open(dir)),
        #[cfg(feature = "peers")]
        other => crate::peers::open(other, dir),
        #[cfg(not(feature = "peers"))]
        other => panic!("unknown system {other}"),
    }
}

fn ringkv(dir: &Path, io: Io, sync_mode: SyncMode) -> Kv {
    let mut options = Options::default();
    options.io = io;
    options.sync_mode = sync_mode;
    if let Some(bytes) = cache_bytes() {
        options.cache_bytes = bytes as usize;
    }
    if let Some(&bytes) = RINGKV_MEMTABLE_BYTES.get() {
        options.memtable_bytes = bytes as usize;
    }
    if let Some(&bytes) = RINGKV_WAL_BYTES.get() {
        options.wal_bytes = bytes;
    }
    options.os_page_cache = !RINGKV_DIRECT_READS.load(std::sync::atomic::Ordering::Relaxed);
    Kv::open_with(dir, options).unwrap_or_else(|e| panic!("open ringkv in {}: {e}", dir.display()))
}

impl Store for Kv {
    fn put(&self, key: &[u8], value: &[u8]) {
        Kv::put(self, key, value).expect("ringkv put");
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        let mut batch = WriteBatch::new();
        for (k, v) in pairs {
            batch.put(k, v);
        }
        self.write(batch).expect("ringkv batch");
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        Some(Kv::get(self, key).expect("ringkv get"))
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.wal_stats().syncs)
    }

    fn commits(&self) -> Option<u64> {
        Some(self.wal_stats().commits)
    }

    fn stalls(&self) -> Option<(u64, f64)> {
        let stats = self.stats().expect("ringkv stats");
        Some((stats.write_stalls, stats.write_stall_micros as f64 / 1e6))
    }
}
