//! The clean-close marker: `CLEAN` in the WAL directory holds the LSN where
//! the log ended when it was closed with everything durable. Open reads it
//! first: it proves the log durable to that LSN (damage before it is
//! corruption), and if the log ends exactly there, in zeros, nothing was
//! written after the close, so recovery skips searching the rest of the log
//! for torn frames and witnesses. Open removes it (durably) only once
//! recovery has succeeded, before anything new is written: a refused open
//! leaves it, so a retried open refuses again.
//!
//! ```text
//! offset size
//!      0    8 end LSN (little-endian)
//!      8    4 CRC32 of bytes 0..8
//!     12 4084 zero (the marker is one 4 KiB block, for O_DIRECT)
//! ```

use std::path::Path;

use uring::{AlignedBuf, OpenMode, Storage, BLOCK_BYTES};

use crate::error::Result;
use crate::Lsn;

const FILE: &str = "CLEAN";

/// Records a clean close at `end`, durably.
pub(crate) fn mark(storage: &dyn Storage, dir: &Path, end: Lsn) -> Result<()> {
    let mut block = AlignedBuf::new(BLOCK_BYTES);
    block[..8].copy_from_slice(&end.0.to_le_bytes());
    let crc = crc32fast::hash(&block[..8]);
    block[8..12].copy_from_slice(&crc.to_le_bytes());
    let file = storage.open(&dir.join(FILE), OpenMode::Create)?;
    file.write_at(0, &block)?;
    file.sync_data()?;
    storage.sync_dir(dir)?;
    Ok(())
}

/// Reads the marker. `None` if there is none, or it is damaged (then
/// recovery just does the full search).
pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<Lsn>> {
    let path = dir.join(FILE);
    if !storage.exists(&path)? {
        return Ok(None);
    }
    let file = storage.open(&path, OpenMode::Existing)?;
    // Read what the device holds, as for the segments.
    file.sync_and_evict()?;
    let mut block = AlignedBuf::new(BLOCK_BYTES);
    Ok(match file.read_at(0, &mut block) {
        Ok(()) => {
            let crc = u32::from_le_bytes(block[8..12].try_into().expect("4 bytes"));
            let lsn = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
            (crc32fast::hash(&block[..8]) == crc).then_some(Lsn(lsn))
        }
        Err(_) => None,
    })
}

/// Removes the marker durably, if there is one.
pub(crate) fn remove(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    if storage.exists(&path)? {
        storage.remove_file(&path)?;
        storage.sync_dir(dir)?;
    }
    Ok(())
}
