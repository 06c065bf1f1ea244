//! The store marker: `RINGKV` in the store's directory says that the
//! directory is a ringkv store, and of which format.
//!
//! ```text
//! "ringkv store\nformat 2\n", then zeros to 4096 bytes (one block, for O_DIRECT)
//! ```
//!
//! Format 2 adds the page file (`data.db`), after which the log no longer
//! holds every write: a ringkv that reads only format 1 must refuse it. A
//! writable open of a format 1 store rewrites its marker as format 2 before
//! it makes the page file.
//!
//! A store is created as: the directories (`wal/` included, each parent
//! synced), then the marker, written to `RINGKV.tmp`, synced, renamed into
//! place and the directory synced; only then does the log get its first
//! segment. So a directory without a marker holds, at most, an empty `wal/`
//! and a `RINGKV.tmp` left by an interrupted creation, which the next open
//! completes. Two exceptions hold only a store's own files and a log with
//! a segment: a store made before markers existed (format 0, the same
//! layout otherwise), and one whose marker rename was lost because the
//! directory sync after it failed (the namespace showed the marker, so a
//! retried open went on); both are stores, and a writable open adds the
//! marker. Anything else in a directory without a marker means it is not a
//! store, and it is refused, never adopted.

use std::path::Path;

use uring::{AlignedBuf, OpenMode, Storage, BLOCK_BYTES};

use crate::error::{Error, Result};

/// The marker's file name.
pub(crate) const MARKER: &str = "RINGKV";
/// The format this code writes.
pub(crate) const FORMAT: u32 = 2;
/// The oldest format this code reads (format 1: the log alone).
const FORMAT_OLDEST: u32 = 1;
/// The page file's name.
pub(crate) const PAGE_FILE: &str = "data.db";
/// The marker before its rename.
const TEMPORARY: &str = "RINGKV.tmp";
const MAGIC: &[u8] = b"ringkv store\nformat ";

/// What a directory holds.
pub(crate) enum Found {
    /// A store (its marker checked) of this format.
    Store,
    /// A store of an older format this code reads; a writable open
    /// rewrites its marker.
    Older(u32),
    /// A store without its marker: made before markers existed (format 0,
    /// the same layout), or one whose marker's rename was lost with a
    /// failed directory sync. Only a store's own files are in it, and its
    /// log has a segment. A writable open adds the marker.
    Unmarked,
    /// Nothing: missing, empty, or an interrupted creation.
    Nothing,
    /// Files of something else (one of them named).
    Foreign(String),
}

/// Looks at `dir` (the `wal_dir` name is what an interrupted creation may
/// have left).
///
/// # Errors
/// [`Error::UnsupportedFormat`] or [`Error::NotAStore`] for a marker that
/// is not ours; storage errors.
pub(crate) fn recognise(storage: &dyn Storage, dir: &Path, wal_dir: &str) -> Result<Found> {
    if !storage.exists(dir)? {
        return Ok(Found::Nothing);
    }
    let marker = dir.join(MARKER);
    if storage.exists(&marker)? {
        return Ok(match check(storage, dir)? {
            FORMAT => Found::Store,
            older => Found::Older(older),
        });
    }
    let mut found = storage.list_dir(dir)?;
    found.sort();
    if is_unmarked_store(storage, dir, &found, wal_dir)? {
        return Ok(Found::Unmarked);
    }
    for name in found {
        let interrupted = name == TEMPORARY || name == wal_dir && storage.list_dir(&dir.join(wal_dir))?.is_empty();
        if !interrupted {
            return Ok(Found::Foreign(name));
        }
    }
    Ok(Found::Nothing)
}

/// Whether `dir` (holding `found`) holds only a store's files, with a log
/// of at least one segment in `wal_dir`.
fn is_unmarked_store(storage: &dyn Storage, dir: &Path, found: &[String], wal_dir: &str) -> Result<bool> {
    let store_file = |name: &str| name == "LOCK" || name == TEMPORARY || name == wal_dir || name == PAGE_FILE;
    if !found.iter().any(|n| n == wal_dir) || !found.iter().all(|n| store_file(n)) {
        return Ok(false);
    }
    let log = storage.list_dir(&dir.join(wal_dir))?;
    let segment =
        |name: &str| name.len() == 24 && name.ends_with(".wal") && name[..20].bytes().all(|b| b.is_ascii_digit());
    let log_file = |name: &str| {
        segment(name)
            || name == "LOCK"
            || name == "CLEAN"
            || (name.len() == 24 && name.ends_with(".tmp") && name[..20].bytes().all(|b| b.is_ascii_digit()))
            || (name.starts_with("recycle-") && name.ends_with(".wal"))
            || (name.starts_with("dropped-") && name.ends_with(".bin"))
    };
    Ok(log.iter().any(|n| segment(n)) && log.iter().all(|n| log_file(n)))
}

/// Writes the marker durably (temporary file, sync, rename, directory sync).
///
/// # Errors
/// Storage errors naming the file.
pub(crate) fn write(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut block = AlignedBuf::new(BLOCK_BYTES);
    let text = format!("ringkv store\nformat {FORMAT}\n");
    block[..text.len()].copy_from_slice(text.as_bytes());
    let tmp = dir.join(TEMPORARY);
    let file = storage.open(&tmp, OpenMode::Create)?;
    file.write_at(0, &block)?;
    file.sync_data()?;
    storage.rename(&tmp, &dir.join(MARKER))?;
    storage.sync_dir(dir)?;
    Ok(())
}

/// Checks that the marker in `dir` is ours, of a format this code reads,
/// and returns the format.
fn check(storage: &dyn Storage, dir: &Path) -> Result<u32> {
    let path = dir.join(MARKER);
    let file = storage.open(&path, OpenMode::Existing)?;
    let mut block = AlignedBuf::new(BLOCK_BYTES);
    let size = file.size_bytes()?;
    if size != BLOCK_BYTES as u64 {
        return Err(Error::NotAStore { path: dir.to_owned(), found: format!("{MARKER} of {size} bytes") });
    }
    file.read_at(0, &mut block)?;
    let Some(rest) = block.strip_prefix(MAGIC) else {
        return Err(Error::NotAStore { path: dir.to_owned(), found: format!("{MARKER} of another program") });
    };
    let digits: Vec<u8> = rest.iter().copied().take_while(u8::is_ascii_digit).collect();
    let format = std::str::from_utf8(&digits).ok().and_then(|d| d.parse::<u32>().ok());
    match format {
        Some(format @ FORMAT_OLDEST..=FORMAT) => Ok(format),
        Some(format) => Err(Error::UnsupportedFormat { path, format, supported: FORMAT }),
        None => Err(Error::NotAStore { path: dir.to_owned(), found: format!("{MARKER} without a format") }),
    }
}
