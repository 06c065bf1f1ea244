//! Finding the end of the log after a crash.
//!
//! A batch is one write: its frames, the last flagged `ends_batch`, then
//! zeros to the end of the block; the next batch starts at the next block.
//! The log ends at the end of the last *whole* batch (end E): frames after
//! E whose batch's last frame never made it were never acknowledged. At the
//! first position P ≥ E that is not a valid frame:
//!
//! | what is known                                                          | action                                   |
//! |------------------------------------------------------------------------|------------------------------------------|
//! | nothing valid after E                                                  | end of log = E; nothing to drop          |
//! | valid frames after E (P's batch, or beyond P), none durable past E     | torn tail: end = E, zero them, log bytes |
//! | a valid frame beyond P made when the log was durable past E            | corruption: error naming P's file/offset |
//! | the clean-close marker says the log was durable past E                 | corruption, likewise                     |
//! | ... either, and `RecoveryMode::PointInTime`                            | end = E, zero the rest, warn             |
//!
//! A frame is stamped, when its batch is submitted, with the end of the log
//! acknowledged durable then; a batch written while P's batch was in
//! flight (pipelined) carries an earlier one and cannot vouch for it. A
//! block the device cannot read (EIO) counts as a bad frame.

use std::path::Path;
use std::sync::Arc;

use uring::{AlignedBuf, OpenMode, Storage, BLOCK_BYTES};

use crate::constants::COMMIT_BUFFER_BYTES;
use crate::cursor::{look_beyond, Beyond, Cursor, Step};
use crate::error::{Error, Result};
use crate::frame::{FrameFault, FrameHeader};
use crate::segment::{self, Segment};
use crate::{Lsn, RecoveryMode};

/// The first frame that failed its checks.
#[derive(Clone, Debug)]
pub struct BadFrame {
    /// Its position.
    pub lsn: Lsn,
    /// The segment file.
    pub path: std::path::PathBuf,
    /// Offset in that file.
    pub offset: u64,
    /// What is wrong with it.
    pub fault: FrameFault,
}

/// What a scan of the log found.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// End of the valid log.
    pub(crate) end: Lsn,
    /// Where valid-looking but unacknowledged frames after the end stop.
    pub(crate) junk_end: Option<Lsn>,
    /// The bad frame that ended the log, if one did.
    pub(crate) bad: Option<BadFrame>,
    /// How far the log is known to have been durable, if past `end`: the
    /// bad frame had been acknowledged.
    pub(crate) durable_past: Option<Lsn>,
    /// The replay start asked for is the log's start or a whole batch's end.
    pub(crate) from_is_a_frame_start: bool,
}

/// Reads every frame of the log from the start of the segment holding
/// `from` (every segment starts with a batch), calling `on_frame` with each
/// frame (padding included, header and payload) of each whole batch at or
/// after `from`, and says where the valid log ends.
/// `from_is_a_frame_start` in the result says whether `from` is the log's
/// start or the end of a frame (a checkpoint's cut may fall inside a
/// batch: the batch's frames from `from` on are replayed if it is whole).
///
/// Damage *before* a block-aligned `from` does not end the log: what lies
/// there is in the page file, and `from` (a checkpoint's cut) is a batch's
/// start. The read then starts again at `from`, and what follows is judged
/// as at any batch start (the end of the log, a torn tail, or damage).
///
/// `clean_end` is where a clean close said the log ended (durably): if the
/// log ends there in zeros, nothing was written after it, and the search
/// beyond for witnesses and torn frames is skipped; if it ends before it,
/// that is corruption.
pub(crate) fn scan(
    storage: &Arc<dyn Storage>,
    segments: &[Segment],
    from: Lsn,
    clean_end: Option<Lsn>,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<Scanned> {
    let first = segments.iter().rposition(|s| s.start <= from).unwrap_or(0);
    let segments = &segments[first..];
    let start = segments.first().map_or(Lsn(0), |s| s.start);
    let mut walked = walk(storage, segments, start, from, on_frame)?;
    // Damage before `from`: a cut at a block boundary is a batch's start
    // (`Wal::cut` closes the batch there), so the log can be read from it.
    // Zeros before it count only if a frame follows (else the log just
    // ends before `from`). An older store's cut inside a batch gets no
    // second pass: its damage is reported as before.
    let below = walked.bad.as_ref().filter(|bad| bad.lsn < from).map(|bad| bad.fault);
    if let Some(fault) = below.filter(|_| from.0 % BLOCK_BYTES as u64 == 0) {
        let mut again = walk(storage, segments, from, from, on_frame)?;
        if fault != FrameFault::Zero || again.read_a_frame {
            again.from_is_a_frame_start = true;
            walked = again;
        }
    }
    let Walked { end, held_end, bad, from_is_a_frame_start, .. } = walked;
    let Some(bad) = bad else {
        return Ok(Scanned { end, junk_end: held_end, bad: None, durable_past: None, from_is_a_frame_start });
    };
    let clean_here = clean_end == Some(end) && bad.lsn == end && bad.fault == FrameFault::Zero;
    let beyond = if clean_here { Beyond::default() } else { look_beyond(storage, segments, bad.lsn, end)? };
    let durable_past = clean_end.filter(|&c| c > end).or(beyond.durable_witness.map(|w| w.durable_lsn));
    let junk_end = held_end.max(beyond.furthest_end);
    Ok(Scanned { end, junk_end, bad: Some(bad), durable_past, from_is_a_frame_start })
}

/// What one pass of [`walk`] found.
struct Walked {
    /// End of the last whole batch (`start` if none).
    end: Lsn,
    /// End of the frames of an unfinished batch after `end`.
    held_end: Option<Lsn>,
    /// The bad frame that stopped the pass.
    bad: Option<BadFrame>,
    /// `from` is `start` or a frame's end.
    from_is_a_frame_start: bool,
    /// At least one valid frame was read.
    read_a_frame: bool,
}

/// Reads frames from `start` (a frame start) until the log ends, passing
/// those of whole batches at or after `from` to `on_frame`.
fn walk(
    storage: &Arc<dyn Storage>,
    segments: &[Segment],
    start: Lsn,
    from: Lsn,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<Walked> {
    let mut cursor = Cursor::new(storage.clone(), segments.to_vec(), start);
    // Frames of the batch being read, held until its last frame is seen.
    let mut held: Vec<(FrameHeader, Vec<u8>)> = Vec::new();
    let mut end = start;
    let mut from_is_a_frame_start = from == start;
    let mut read_a_frame = false;
    let bad = loop {
        let step = cursor.step()?;
        read_a_frame |= matches!(step, Step::Frame(..));
        match step {
            Step::Frame(header, bytes) if header.ends_batch => {
                for (h, b) in held.drain(..).filter(|(h, _)| h.lsn >= from) {
                    on_frame(&h, &b);
                }
                if header.lsn >= from {
                    on_frame(&header, bytes);
                }
                end = cursor.pos;
                // A batch's frames end before the block its successor
                // starts at: either is a frame start.
                from_is_a_frame_start |= end == from || header.end() == from;
            }
            Step::Frame(header, bytes) => {
                // A batch is one write from one commit buffer: a longer run
                // of frames without a batch end is no torn batch of this
                // format (an older log, or damage), and is never zeroed.
                if header.end().0 - end.0 > COMMIT_BUFFER_BYTES as u64 {
                    let segment = segments.iter().find(|s| s.contains(end)).expect("the log's end lies in a segment");
                    return Err(Error::Corrupt {
                        path: segment.path.clone(),
                        offset: end.0 - segment.start.0,
                        lsn: end,
                        reason: "frames without a batch end run longer than a batch can (a log of an older format?)",
                    });
                }
                from_is_a_frame_start |= header.end() == from;
                held.push((header, bytes.to_vec()));
            }
            Step::End => break None,
            Step::Bad { lsn, segment, offset, fault } => {
                break Some(BadFrame { lsn, path: segments[segment].path.clone(), offset, fault })
            }
        }
    };
    let held_end = held.last().map(|(h, _)| h.end());
    Ok(Walked { end, held_end, bad, from_is_a_frame_start, read_a_frame })
}

/// What recovery changed in the log.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Recovered {
    /// Batch frames replayed.
    pub frames: u64,
    /// Where the recovered log ends.
    pub end: Lsn,
    /// Bytes of a torn, never-acknowledged tail zeroed.
    pub truncated_bytes: u64,
    /// Acknowledged frames dropped by [`RecoveryMode::PointInTime`].
    pub dropped: Option<Dropped>,
    /// How long the open took.
    pub elapsed: std::time::Duration,
}

/// What [`RecoveryMode::PointInTime`] dropped, and where a copy is kept.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Dropped {
    /// The frame that ended the log.
    pub bad: BadFrame,
    /// How far the log had been durable: acknowledged writes up to here
    /// were dropped.
    pub durable_past: Lsn,
    /// A byte-for-byte copy of the log from `bad.lsn` on, made durable
    /// before anything was dropped.
    pub copy: std::path::PathBuf,
    /// Its length.
    pub copy_bytes: u64,
    /// Blocks the device could not read (zeros in the copy), by offset in
    /// the copy.
    pub unreadable: Vec<u64>,
    /// Copies an earlier, interrupted recovery made from the same point
    /// (`dropped-<lsn>-*.bin`): it may have zeroed part of what it copied
    /// before it was cut short, so the earlier copy can be the whole one.
    pub earlier_copies: Vec<std::path::PathBuf>,
}

/// Decides what a scan means under `mode`, and zeroes a torn tail so that
/// frames beyond it can never come back to life once new frames reach them.
/// Under `PointInTime`, acknowledged frames after damage are copied to
/// `dropped-<lsn>-<n>.bin` in the log directory (synced, with the
/// directory) before any of them is zeroed.
pub(crate) fn settle(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    segments: &[Segment],
    scanned: &Scanned,
    mode: RecoveryMode,
) -> Result<Recovered> {
    let mut recovered = Recovered { end: scanned.end, ..Recovered::default() };
    if let (Some(bad), Some(durable_past)) = (&scanned.bad, scanned.durable_past) {
        match mode {
            RecoveryMode::Strict => {
                return Err(Error::Corrupt {
                    path: bad.path.clone(),
                    offset: bad.offset,
                    lsn: bad.lsn,
                    reason: bad.fault.reason(),
                })
            }
            RecoveryMode::PointInTime => {
                let copy_end = scanned.junk_end.unwrap_or(durable_past).max(durable_past);
                let copied = copy_out(storage, dir, segments, scanned.end, copy_end)?;
                let (copy, copy_bytes) = (copied.path, copied.bytes);
                tracing::warn!(
                    path = %bad.path.display(), offset = bad.offset, lsn = %bad.lsn, %durable_past,
                    copy = %copy.display(), copy_bytes,
                    "corrupt WAL frame before durable frames; recovering to the point before it, \
                     dropping acknowledged writes after it (a copy of the dropped log is kept)"
                );
                recovered.dropped = Some(Dropped {
                    bad: bad.clone(),
                    durable_past,
                    copy,
                    copy_bytes,
                    unreadable: copied.unreadable,
                    earlier_copies: copied.earlier,
                });
            }
        }
    }
    let Some(junk_end) = scanned.junk_end.filter(|&j| j > scanned.end) else {
        return Ok(recovered);
    };
    let dropped_bytes = junk_end.0.saturating_sub(scanned.end.0);
    if recovered.dropped.is_none() {
        recovered.truncated_bytes = dropped_bytes;
        tracing::warn!(
            end = %scanned.end, dropped_bytes,
            "WAL ends in a torn, never-acknowledged tail; truncating it"
        );
    }
    for segment in segments {
        let start = scanned.end.max(segment.start);
        let end = junk_end.min(segment.end());
        if start < end {
            zero_range(storage, segment, start.0 - segment.start.0, end.0 - segment.start.0)?;
        }
    }
    Ok(recovered)
}

/// What `copy_out` made.
struct Copied {
    path: std::path::PathBuf,
    bytes: u64,
    /// Offsets in the copy of blocks the device could not read.
    unreadable: Vec<u64>,
    /// Copies from the same point made before.
    earlier: Vec<std::path::PathBuf>,
}

/// Copies the log's bytes `[from, to)` (clamped to the segments, rounded
/// up to whole blocks) into a new file `dropped-<from>-<n>.bin` in `dir`,
/// and makes it durable. A block the device cannot read is copied as zeros
/// and reported.
fn copy_out(storage: &Arc<dyn Storage>, dir: &Path, segments: &[Segment], from: Lsn, to: Lsn) -> Result<Copied> {
    let prefix = format!("{DROPPED_PREFIX}{:020}-", from.0);
    let mut earlier: Vec<String> = storage.list_dir(dir)?.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    earlier.sort();
    let path = (0u32..)
        .map(|n| format!("{prefix}{n}.bin"))
        .find(|name| !earlier.contains(name))
        .map(|name| dir.join(name))
        .expect("a free name");
    let copy = storage.open(&path, OpenMode::Create)?;
    let block = BLOCK_BYTES as u64;
    let (mut written, mut unreadable) = (0u64, Vec::new());
    let mut buf = AlignedBuf::new(COPY_CHUNK_BYTES);
    for segment in segments {
        let start = from.max(segment.start).0 - segment.start.0;
        let end =
            (to.min(segment.end()).0.saturating_sub(segment.start.0)).next_multiple_of(block).min(segment.size_bytes);
        if start >= end {
            continue;
        }
        let file = storage.open(&segment.path, OpenMode::Existing)?;
        let mut at = start;
        while at < end {
            let len = (end - at).min(COPY_CHUNK_BYTES as u64) as usize;
            let mut bad = Vec::new();
            segment::read_lossy(file.as_ref(), at, &mut buf[..len], &mut bad)?;
            unreadable.extend(bad.into_iter().map(|offset| written + (offset - at)));
            copy.write_at(written, &buf[..len])?;
            written += len as u64;
            at += len as u64;
        }
    }
    copy.sync_data()?;
    storage.sync_dir(dir)?;
    Ok(Copied { path, bytes: written, unreadable, earlier: earlier.into_iter().map(|n| dir.join(n)).collect() })
}

/// Name prefix of the copies [`RecoveryMode::PointInTime`] keeps.
pub(crate) const DROPPED_PREFIX: &str = "dropped-";
/// Bytes copied per read.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Zeroes `[from, to)` of a segment (`from` a block boundary) in whole
/// blocks, then syncs. Nothing before `from` is read or rewritten.
fn zero_range(storage: &Arc<dyn Storage>, segment: &Segment, from: u64, to: u64) -> Result<()> {
    let block = BLOCK_BYTES as u64;
    assert_eq!(from % block, 0, "the log ends at a block boundary");
    let file = storage.open(&segment.path, OpenMode::Existing)?;
    let last = to.next_multiple_of(block).min(segment.size_bytes);
    let zeros = AlignedBuf::new((last - from) as usize);
    file.write_at(from, &zeros[..(last - from) as usize])?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use uring::SimStorage;

    use super::*;
    use crate::frame::{FrameBuf, FrameKind};
    use crate::{Wal, WalOptions, FRAME_HEADER_BYTES, SEGMENT_BYTES_MIN};

    fn replay(disk: &SimStorage, options: WalOptions) -> (Wal, Vec<Vec<u8>>) {
        uring::create_dirs(disk, Path::new("/w")).unwrap();
        let mut seen = Vec::new();
        let wal =
            Wal::open(Arc::new(disk.clone()), Path::new("/w"), options, Lsn(0), &mut |_, p| seen.push(p.to_vec()));
        (wal.unwrap(), seen)
    }

    fn sealed(payload: &[u8], lsn: Lsn, durable: Lsn) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.extend(payload);
        let crc = f.payload_crc();
        f.seal(crc, lsn, durable, FrameKind::Batch, 0);
        f.as_bytes().to_vec()
    }

    /// A log of the format before batches had an end flag (frames back to
    /// back, none flagged) is refused, never zeroed as a torn tail.
    #[test]
    fn a_log_without_batch_ends_is_refused_not_zeroed() {
        let segment_bytes = 4 << 20;
        let options = WalOptions { segment_bytes, ..WalOptions::default() };
        let disk = SimStorage::new();
        drop(replay(&disk, options).0);
        disk.remove_file(Path::new("/w/CLEAN")).unwrap();
        let file = disk.open(Path::new("/w/00000000000000000000.wal"), uring::OpenMode::Existing).unwrap();
        let mut at = 0u64;
        for i in 0..400u32 {
            let mut f = FrameBuf::new();
            f.extend(&[i as u8; 10_000]);
            let crc = f.payload_crc();
            let seal = crate::frame::Seal {
                lsn: Lsn(at),
                durable_lsn: Lsn(at),
                kind: FrameKind::Batch,
                ends_batch: false,
                term: 0,
            };
            let mut bytes = f.as_bytes().to_vec();
            crate::frame::seal_frame(&mut bytes, crc, seal);
            if at + bytes.len() as u64 > segment_bytes {
                break;
            }
            file.write_at(at, &bytes).unwrap();
            at += bytes.len() as u64;
        }
        file.sync_data().unwrap();
        let mut seen = 0;
        let err = Wal::open(Arc::new(disk.clone()), Path::new("/w"), options, Lsn(0), &mut |_, _| seen += 1);
        assert!(matches!(err, Err(crate::Error::Corrupt { lsn: Lsn(0), .. })), "{:?}", err.err());
        let mut first = [0u8; 16];
        file.read_at(0, &mut first).unwrap();
        assert_ne!(first, [0u8; 16], "nothing was zeroed");
    }

    /// Regression: a torn tail's surviving frames were left in place, and a
    /// later frame ending exactly where one of them began brought it back.
    #[test]
    fn torn_tail_is_zeroed_so_a_stale_frame_cannot_return_at_a_new_boundary() {
        let options = WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() };
        let disk = SimStorage::new();
        let (wal, _) = replay(&disk, options);
        let mut a = FrameBuf::new();
        a.extend(b"acknowledged");
        assert_eq!(wal.append(a, true).unwrap(), Lsn(0));
        drop(wal);
        disk.remove_file(Path::new("/w/CLEAN")).unwrap(); // as a crash leaves it
                                                          // The next batch starts at the next block (t). A power cut tore it:
                                                          // its first block is garbage, a later frame of it (at b, made when the
                                                          // log was durable to t) survived.
        let t = Lsn(uring::BLOCK_BYTES as u64);
        let b = Lsn(3 * uring::BLOCK_BYTES as u64);
        let file = disk.open(Path::new("/w/00000000000000000000.wal"), uring::OpenMode::Existing).unwrap();
        file.write_at(t.0, &[0xAB; 100]).unwrap();
        file.write_at(b.0, &sealed(b"never acknowledged", b, t)).unwrap();
        file.sync_data().unwrap();

        let (wal, seen) = replay(&disk, options);
        assert_eq!(seen, vec![b"acknowledged".to_vec()]);
        // A new batch that ends exactly at b.
        let mut z = FrameBuf::new();
        z.resize_payload((b.0 - t.0) as usize - FRAME_HEADER_BYTES);
        assert_eq!(wal.append(z, true).unwrap(), t);
        drop(wal);
        let (_, seen) = replay(&disk, options);
        assert_eq!(seen.len(), 2, "the stale frame at {b} came back");
    }
}
