//! Finding the end of the log after a crash.
//!
//! | state at the first frame that fails its checks (position P)          | action                                   |
//! |----------------------------------------------------------------------|------------------------------------------|
//! | nothing valid after P                                                | end of log = P; nothing to drop          |
//! | valid frames after P, all made when the log was durable only to ≤ P  | torn tail: end = P, zero them, log bytes |
//! | a valid frame after P made when the log was durable past P           | corruption: error naming file and offset |
//! | ... and `RecoveryMode::PointInTime`                                  | end = P, zero the rest, warn             |
//!
//! A frame written in the same batch as P, or in a batch in flight with it,
//! was made while the log was durable only up to some point ≤ P, so it
//! cannot vouch for P. A frame made after P was acknowledged can.

use std::sync::Arc;

use uring::{AlignedBuf, OpenMode, Storage, BLOCK_BYTES};

use crate::cursor::{look_beyond, Beyond, Cursor, Step};
use crate::error::{Error, Result};
use crate::frame::{FrameFault, FrameHeader};
use crate::segment::Segment;
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
    /// A frame proving that the bad one had been durable.
    pub(crate) witness: Option<FrameHeader>,
}

/// Reads every frame from `from`, calling `on_frame` with each valid frame
/// (padding included, header and payload), and says where the valid log ends.
///
/// `clean_end` is where a clean close said the log ended: if the log ends
/// there in zeros, nothing was written after it, so the search beyond for
/// witnesses and torn frames is skipped.
pub(crate) fn scan(
    storage: &Arc<dyn Storage>,
    segments: &[Segment],
    from: Lsn,
    clean_end: Option<Lsn>,
    on_frame: &mut dyn FnMut(&FrameHeader, &[u8]),
) -> Result<Scanned> {
    let mut cursor = Cursor::new(storage.clone(), segments.to_vec(), from);
    loop {
        match cursor.step()? {
            Step::Frame(header, bytes) => on_frame(&header, bytes),
            Step::End => return Ok(Scanned { end: cursor.pos, junk_end: None, bad: None, witness: None }),
            Step::Bad { lsn, segment, offset, fault } => {
                let path = segments[segment].path.clone();
                let closed_cleanly_here = clean_end == Some(lsn) && fault == FrameFault::Zero;
                let beyond = if closed_cleanly_here { Beyond::default() } else { look_beyond(storage, segments, lsn)? };
                let bad = BadFrame { lsn, path, offset, fault };
                return Ok(Scanned {
                    end: lsn,
                    junk_end: beyond.furthest_end,
                    bad: Some(bad),
                    witness: beyond.durable_witness,
                });
            }
        }
    }
}

/// Decides what a scan means under `mode`, and zeroes a torn tail so that
/// frames beyond it can never come back to life once new frames reach them.
pub(crate) fn settle(
    storage: &Arc<dyn Storage>,
    segments: &[Segment],
    scanned: &Scanned,
    mode: RecoveryMode,
) -> Result<()> {
    if let (Some(bad), Some(witness)) = (&scanned.bad, &scanned.witness) {
        match mode {
            RecoveryMode::Strict => {
                return Err(Error::Corrupt {
                    path: bad.path.clone(),
                    offset: bad.offset,
                    lsn: bad.lsn,
                    reason: bad.fault.reason(),
                })
            }
            RecoveryMode::PointInTime => tracing::warn!(
                path = %bad.path.display(), offset = bad.offset, lsn = %bad.lsn, witness = %witness.lsn,
                "corrupt WAL frame before durable frames; recovering to the point before it, later frames dropped"
            ),
        }
    }
    let Some(junk_end) = scanned.junk_end else {
        return Ok(());
    };
    let dropped_bytes = junk_end.0.saturating_sub(scanned.end.0);
    tracing::warn!(
        end = %scanned.end, dropped_bytes,
        "WAL ends in a torn, never-acknowledged tail; truncating it"
    );
    for segment in segments {
        let start = scanned.end.max(segment.start);
        let end = junk_end.min(segment.end());
        if start < end {
            zero_range(storage, segment, start.0 - segment.start.0, end.0 - segment.start.0)?;
        }
    }
    Ok(())
}

/// Zeroes `[from, to)` of a segment in whole blocks, keeping the bytes
/// before `from` in its first block, then syncs.
fn zero_range(storage: &Arc<dyn Storage>, segment: &Segment, from: u64, to: u64) -> Result<()> {
    let block = BLOCK_BYTES as u64;
    let file = storage.open(&segment.path, OpenMode::Existing)?;
    let first = from / block * block;
    let last = to.next_multiple_of(block).min(segment.size_bytes);
    let mut buf = AlignedBuf::new((last - first) as usize);
    file.read_at(first, &mut buf[..block as usize])?;
    buf[(from - first) as usize..].fill(0);
    file.write_at(first, &buf[..(last - first) as usize])?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use uring::SimStorage;

    use super::*;
    use crate::frame::{FrameBuf, FrameKind};
    use crate::{Wal, WalOptions, FRAME_HEADER_BYTES, SEGMENT_BYTES_MIN};

    fn replay(disk: &SimStorage, options: WalOptions) -> (Wal, Vec<Vec<u8>>) {
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

    /// Regression: a torn tail's surviving frames were left in place, and a
    /// later frame ending exactly where one of them began brought it back.
    #[test]
    fn torn_tail_is_zeroed_so_a_stale_frame_cannot_return_at_a_new_boundary() {
        let options = WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() };
        let disk = SimStorage::new();
        let (wal, _) = replay(&disk, options);
        let mut a = FrameBuf::new();
        a.extend(b"acknowledged");
        let t = Lsn(wal.append(a, true).unwrap().0 + FRAME_HEADER_BYTES as u64 + 12);
        drop(wal);
        // A batch torn by a power cut: its first frame (at t) is garbage, a
        // later one (at block boundary b, made when the log was durable to t) survived.
        let file = disk.open(Path::new("/w/00000000000000000000.wal"), uring::OpenMode::Existing).unwrap();
        let b = Lsn(2 * uring::BLOCK_BYTES as u64);
        file.write_at(t.0, &[0xAB; 100]).unwrap();
        file.write_at(b.0, &sealed(b"never acknowledged", b, t)).unwrap();
        file.sync_data().unwrap();

        let (wal, seen) = replay(&disk, options);
        assert_eq!(seen, vec![b"acknowledged".to_vec()]);
        // A new frame that ends exactly at b.
        let mut z = FrameBuf::new();
        z.resize_payload((b.0 - t.0) as usize - FRAME_HEADER_BYTES);
        assert_eq!(wal.append(z, true).unwrap(), t);
        drop(wal);
        let (_, seen) = replay(&disk, options);
        assert_eq!(seen.len(), 2, "the stale frame at {b} came back");
    }
}
