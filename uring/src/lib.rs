//! The I/O layer of ringkv, and nothing else.
//!
//! One seam, [`Storage`] (a tree of files) and [`File`] (an open file), with
//! three backends behind it:
//!
//! - **io_uring**: registered (fixed) buffers; commits as `RWF_DSYNC`
//!   writes, or as pipelined linked write → `Fsync(DATASYNC)` chains on a
//!   [`CommitQueue`]; files opened O_DIRECT with a logged fallback to
//!   buffered I/O where the file system refuses it.
//! - **syscall**: `pwrite` / `pread` / `fdatasync`; also where [`Io::Auto`]
//!   falls back when io_uring is missing or forbidden.
//! - **simulated** ([`SimStorage`]): in memory and deterministic, with power
//!   cuts that drop or tear unsynced writes and injected errors.
//!
//! This crate knows nothing of logs, keys or pages.
//!
//! ```
//! use std::path::Path;
//! use uring::{open_storage, OpenMode, StorageOptions};
//!
//! let dir = std::env::temp_dir().join(format!("uring-doc-{}", std::process::id()));
//! let storage = open_storage(StorageOptions::default())?;
//! storage.create_dir_all(&dir)?;
//! let file = storage.open(&dir.join("data"), OpenMode::Create)?;
//! let mut buf = storage.io_buffer(uring::BLOCK_BYTES);
//! buf[..5].copy_from_slice(b"hello");
//! file.write_sync(0, &buf, uring::BLOCK_BYTES)?; // durable on return
//! let mut back = uring::AlignedBuf::new(uring::BLOCK_BYTES);
//! file.read_at(0, &mut back)?;
//! assert_eq!(&back[..5], b"hello");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), uring::Error>(())
//! ```

mod buf;
mod constants;
mod error;
mod os;
mod queue;
mod real;
mod ring;
mod sim;
mod storage;

pub use buf::{AlignedBuf, IoBuf};
pub use constants::{BLOCK_BYTES, SECTOR_BYTES};
pub use error::{Error, Result};
pub use queue::{CommitEvent, CommitQueue};
pub use real::{open_storage, StorageOptions};
pub use sim::{SimRng, SimStorage};
pub use storage::{Backend, DirLock, File, Io, OpenMode, Storage, SyncMode};
