//! ringkv: an embeddable key-value store whose writes are durable when
//! they return.
//!
//! Every write goes to a write-ahead log first; concurrent writers are
//! grouped into one durable write per batch (`RWF_DSYNC` on io_uring,
//! `pwrite` + `fdatasync` otherwise). An ordered in-memory table serves
//! reads; on open the log is replayed into it, a torn tail left by a crash
//! is truncated, and damage before the synced end is refused with an error
//! naming the file and offset.
//!
//! What it is not (yet): the data set lives in memory and in the log; the
//! B-tree page file and checkpointer come later. No networking here.
//!
//! # Aborts
//! With the io_uring backend, if the `io_uring_enter` call itself fails
//! (other than `EINTR`/`EAGAIN`/`EBUSY`; I/O errors are typed errors) while
//! operations are in flight, the kernel may still use buffers the store
//! would free or reuse: ringkv prints the error and aborts the process
//! rather than risk memory corruption. This does not happen on a working
//! kernel; [`Io::Syscall`] never aborts.
//!
//! ```
//! use ringkv::{Kv, WriteBatch};
//!
//! let dir = std::env::temp_dir().join(format!("ringkv-doc-{}", std::process::id()));
//! let db = Kv::open(&dir)?;
//! db.put("apple", "red")?;                 // durable when it returns
//! let mut batch = WriteBatch::new();
//! batch.put("banana", "yellow").delete("apple");
//! db.write(batch)?;                        // all or nothing
//! assert_eq!(db.get("banana")?, Some(b"yellow".to_vec()));
//! assert_eq!(db.get("apple")?, None);
//! let keys = db.scan::<&str>(..).map(|item| item.map(|(k, _)| k)).collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(keys, vec![b"banana".to_vec()]);
//! # drop(db); std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), ringkv::Error>(())
//! ```

#![forbid(unsafe_code)]

mod batch;
mod checkpoint;
mod constants;
mod db;
mod error;
mod marker;
mod memtable;
mod tree;

pub use batch::WriteBatch;
pub use constants::{BATCH_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
pub use db::{
    check_batch, check_page_file, inspect_log, Durability, Kv, Options, PageFileCheck, PageFileStats, Scan, Stats,
};
pub use error::{Error, Result};
pub use uring::{Backend, Io, SyncMode};
pub use wal::{BadFrame, Dropped, Recovered, RecoveryMode};
