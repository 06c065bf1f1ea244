//! The I/O layer of ringkv, and nothing else.
//!
//! One seam, [`Storage`] (a tree of files) and [`File`] (an open file), with
//! three backends behind it:
//!
//! - **io_uring**: commits on a ring of their own with registered (fixed)
//!   buffers, as `RWF_DSYNC` writes or linked write → `Fsync(DATASYNC)`
//!   chains; files opened O_DIRECT with a logged fallback to buffered I/O
//!   where the file system refuses it.
//! - **syscall**: `pwrite` / `pread` / `fdatasync`; also where [`Io::Auto`]
//!   falls back when io_uring is missing or forbidden.
//! - **simulated** ([`SimStorage`]): in memory and deterministic; its fault
//!   model (power cuts, torn and unreadable sectors, lost directory entries,
//!   failed syncs, out-of-order sync completions) is documented there.
//!
//! How a batch of a log is made durable is decided once, by the storage,
//! in the [`CommitQueue`] it returns.
//!
//! This crate knows nothing of logs, keys or pages.
//!
//! ```
//! use std::path::Path;
//! use ringkv_uring::{create_dirs, open_storage, CommitEvent, OpenMode, StorageOptions};
//!
//! let dir = std::env::temp_dir().join(format!("uring-doc-{}", std::process::id()));
//! let storage = open_storage(StorageOptions::default())?;
//! create_dirs(storage.as_ref(), &dir)?; // durable: each parent synced
//! let file = storage.open(&dir.join("data"), OpenMode::Create)?;
//! let mut queue = storage.commit_queue()?;
//! let mut buf = queue.buffers(ringkv_uring::BLOCK_BYTES).pop().unwrap();
//! buf[..5].copy_from_slice(b"hello");
//! let ticket = queue.submit(&file, 0, buf, ringkv_uring::BLOCK_BYTES);
//! loop {
//!     match queue.wait() {
//!         CommitEvent::Written { result, .. } => result?,
//!         CommitEvent::Synced { ticket: t, result } => {
//!             assert_eq!(t, ticket);
//!             break result?; // durable now
//!         }
//!     }
//! }
//! let mut back = ringkv_uring::AlignedBuf::new(ringkv_uring::BLOCK_BYTES);
//! file.read_at(0, &mut back)?;
//! assert_eq!(&back[..5], b"hello");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), ringkv_uring::Error>(())
//! ```

mod buf;
mod constants;
mod error;
mod os;
mod partial;
mod queue;
mod real;
mod ring;
mod sim;
mod storage;

pub use buf::{AlignedBuf, IoBuf};
pub use constants::{BLOCK_BYTES, COMMIT_BUFFERS, PIPELINE_DEPTH, SECTOR_BYTES};
pub use error::{Error, Result};
pub use os::evict_os_cache;
pub use queue::{CommitEvent, CommitQueue};
pub use real::{open_storage, StorageOptions};
pub use sim::{SimRng, SimStorage};
pub use storage::{create_dirs, sync_parent, Backend, DirLock, File, Io, OpenMode, Storage, SyncMode};
