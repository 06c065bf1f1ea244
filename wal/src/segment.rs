//! Segment files: the log is cut into preallocated files named after the
//! LSN they start at (`00000000000000000000.wal`), each covering
//! `[start, start + file length)`. Reclaimed segments are renamed
//! `recycle-<old start>.wal` and later renamed into place as new segments,
//! so that appending never changes a file's size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uring::{AlignedBuf, File, OpenMode, Storage, BLOCK_BYTES};

use crate::constants::{READ_ATTEMPTS, READ_WINDOW_BYTES, SEGMENT_BYTES_MIN, ZERO_FILL_CHUNK_BYTES};
use crate::error::{Error, Result};
use crate::Lsn;

const SUFFIX: &str = ".wal";
const RECYCLE_PREFIX: &str = "recycle-";
/// Recycled segments kept for reuse; more are removed.
const RECYCLED_MAX: usize = 2;

/// One segment file.
#[derive(Clone)]
pub(crate) struct Segment {
    pub(crate) start: Lsn,
    pub(crate) size_bytes: u64,
    pub(crate) path: PathBuf,
}

impl Segment {
    pub(crate) fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.size_bytes)
    }

    pub(crate) fn contains(&self, lsn: Lsn) -> bool {
        self.start <= lsn && lsn < self.end()
    }
}

pub(crate) fn segment_path(dir: &Path, start: Lsn) -> PathBuf {
    dir.join(format!("{:020}{SUFFIX}", start.0))
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// The segments of `dir` in log order, checked to tile the log without gaps.
pub(crate) fn list(storage: &dyn Storage, dir: &Path) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for name in storage.list_dir(dir)? {
        if let Some(start) = parse_name(&name) {
            let path = dir.join(&name);
            let size_bytes = storage.open(&path, OpenMode::Existing)?.size_bytes()?;
            if size_bytes < SEGMENT_BYTES_MIN || size_bytes % BLOCK_BYTES as u64 != 0 {
                return Err(Error::BadSegment { path, size_bytes, min_bytes: SEGMENT_BYTES_MIN });
            }
            segments.push(Segment { start, size_bytes, path });
        }
    }
    segments.sort_by_key(|s| s.start);
    for pair in segments.windows(2) {
        if pair[1].start != pair[0].end() {
            return Err(Error::SegmentGap { path: pair[1].path.clone(), expected: pair[0].end() });
        }
    }
    Ok(segments)
}

/// Recycled segment files waiting for reuse, with their sizes.
pub(crate) fn list_recycled(storage: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut names: Vec<String> =
        storage.list_dir(dir)?.into_iter().filter(|n| n.starts_with(RECYCLE_PREFIX) && n.ends_with(SUFFIX)).collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Makes the segment starting at `start`: a recycled file of the right size
/// renamed into place, or a new file zero-filled and synced (so that
/// `fdatasync` on the append path never has to commit size or extent
/// changes). Durable in the directory on return.
pub(crate) fn create(storage: &dyn Storage, dir: &Path, start: Lsn, size_bytes: u64) -> Result<Segment> {
    let path = segment_path(dir, start);
    let mut recycled = None;
    for candidate in list_recycled(storage, dir)? {
        if storage.open(&candidate, OpenMode::Existing)?.size_bytes()? == size_bytes {
            recycled = Some(candidate);
            break;
        }
    }
    match recycled {
        Some(old) => storage.rename(&old, &path)?,
        None => {
            let tmp = dir.join(format!("{:020}.tmp", start.0));
            let file = storage.open(&tmp, OpenMode::Create)?;
            file.allocate(size_bytes)?;
            zero_fill(file.as_ref(), size_bytes)?;
            file.sync_data()?;
            storage.rename(&tmp, &path)?;
        }
    }
    storage.sync_dir(dir)?;
    Ok(Segment { start, size_bytes, path })
}

fn zero_fill(file: &dyn File, size_bytes: u64) -> Result<()> {
    let zeros = AlignedBuf::new(ZERO_FILL_CHUNK_BYTES);
    let mut at = 0;
    while at < size_bytes {
        let len = (size_bytes - at).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_at(at, &zeros[..len])?;
        at += len as u64;
    }
    Ok(())
}

/// Moves a whole segment out of the log, for reuse; removes it instead if
/// enough are already waiting, so that reclaiming many segments at once
/// shrinks the directory.
pub(crate) fn recycle(storage: &dyn Storage, segment: &Segment) -> Result<()> {
    let dir = segment.path.parent().expect("segment has a directory");
    if list_recycled(storage, dir)?.len() >= RECYCLED_MAX {
        return Ok(storage.remove_file(&segment.path)?);
    }
    let to = dir.join(format!("{RECYCLE_PREFIX}{:020}{SUFFIX}", segment.start.0));
    storage.rename(&segment.path, &to)?;
    Ok(())
}

/// Reads a segment through an aligned window, so that frame-sized reads
/// of an O_DIRECT file cost one large read per window. A block the device
/// cannot read (EIO: a sector torn by a power cut) is remembered, and a
/// read that touches it answers `None`.
pub(crate) struct WindowReader {
    pub(crate) file: Arc<dyn File>,
    size_bytes: u64,
    window: AlignedBuf,
    window_start: u64,
    window_len: usize,
    /// File offsets of the window's unreadable blocks (read as zeros).
    unreadable: Vec<u64>,
}

/// Whether a read failed because the device could not read the bytes.
fn is_media_error(e: &uring::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl WindowReader {
    pub(crate) fn new(file: Arc<dyn File>, size_bytes: u64) -> WindowReader {
        WindowReader {
            file,
            size_bytes,
            window: AlignedBuf::new(READ_WINDOW_BYTES),
            window_start: 0,
            window_len: 0,
            unreadable: Vec::new(),
        }
    }

    /// `len` bytes at file offset `offset` (the range must lie in the file),
    /// or `None` if they touch an unreadable block.
    pub(crate) fn bytes(&mut self, offset: u64, len: usize) -> Result<Option<&[u8]>> {
        self.load(offset, len)?;
        let end = offset + len as u64;
        let block = BLOCK_BYTES as u64;
        if self.unreadable.iter().any(|&b| b < end && offset < b + block) {
            return Ok(None);
        }
        let at = (offset - self.window_start) as usize;
        Ok(Some(&self.window[at..at + len]))
    }

    /// As `bytes`, with unreadable blocks read as zeros.
    pub(crate) fn bytes_lossy(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        self.load(offset, len)?;
        let at = (offset - self.window_start) as usize;
        Ok(&self.window[at..at + len])
    }

    fn load(&mut self, offset: u64, len: usize) -> Result<()> {
        let end = offset + len as u64;
        assert!(end <= self.size_bytes, "read past the segment's end");
        let window_end = self.window_start + self.window_len as u64;
        if offset >= self.window_start && end <= window_end {
            return Ok(());
        }
        let block = BLOCK_BYTES as u64;
        let start = offset / block * block;
        let want = (end - start).max(READ_WINDOW_BYTES as u64).next_multiple_of(block);
        let read_len = want.min(self.size_bytes - start) as usize;
        if self.window.len() < read_len {
            self.window = AlignedBuf::new(read_len);
        }
        let read_len_aligned = read_len.next_multiple_of(BLOCK_BYTES);
        self.unreadable.clear();
        self.window_len = 0;
        read_lossy(self.file.as_ref(), start, &mut self.window[..read_len_aligned], &mut self.unreadable)?;
        self.window_start = start;
        self.window_len = read_len;
        Ok(())
    }
}

/// Reads `buf` (whole blocks) at `offset`. On a media error, reads block by
/// block: a block that fails every one of `READ_ATTEMPTS` reads is zeroed
/// in `buf` and its offset pushed to `unreadable`.
///
/// # Errors
/// Errors other than media errors, naming the file.
pub(crate) fn read_lossy(file: &dyn File, offset: u64, buf: &mut [u8], unreadable: &mut Vec<u64>) -> Result<()> {
    match file.read_at(offset, buf) {
        Ok(()) => Ok(()),
        Err(e) if is_media_error(&e) => {
            for (n, block) in buf.chunks_mut(BLOCK_BYTES).enumerate() {
                let at = offset + (n * BLOCK_BYTES) as u64;
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match file.read_at(at, block) {
                        Ok(()) => break,
                        Err(e) if is_media_error(&e) && attempts < READ_ATTEMPTS => {}
                        Err(e) if is_media_error(&e) => {
                            block.fill(0);
                            unreadable.push(at);
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
