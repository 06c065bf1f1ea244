//! Walks frames across segments: the one decoding loop under recovery,
//! the reader, and inspection.

use std::sync::Arc;

use uring::{OpenMode, Storage};

use crate::constants::{FRAME_HEADER_BYTES, READ_WINDOW_BYTES};
use crate::error::Result;
use crate::frame::{check_crc, decode_header, peek_lsn, FrameFault, FrameHeader, FrameKind};
use crate::segment::{Segment, WindowReader};
use crate::Lsn;

/// What is at the cursor.
pub(crate) enum Step<'a> {
    /// A checked frame (batch or padding); the cursor has moved past it.
    Frame(FrameHeader, &'a [u8]),
    /// Bytes that are not a frame at `lsn`, in `segment` at `offset`.
    Bad { lsn: Lsn, segment: usize, offset: u64, fault: FrameFault },
    /// The last segment is used up.
    End,
}

pub(crate) struct Cursor {
    storage: Arc<dyn Storage>,
    pub(crate) segments: Vec<Segment>,
    seg: usize,
    reader: Option<WindowReader>,
    pub(crate) pos: Lsn,
}

impl Cursor {
    /// A cursor at `pos`, which must lie in one of `segments` (or at the end
    /// of the last).
    pub(crate) fn new(storage: Arc<dyn Storage>, segments: Vec<Segment>, pos: Lsn) -> Cursor {
        let seg = segments.iter().position(|s| s.contains(pos)).unwrap_or(segments.len());
        Cursor { storage, segments, seg, reader: None, pos }
    }

    fn reader(&mut self) -> Result<&mut WindowReader> {
        if self.reader.is_none() {
            let segment = &self.segments[self.seg];
            let file = self.storage.open(&segment.path, OpenMode::Existing)?;
            self.reader = Some(WindowReader::new(file, segment.size_bytes));
        }
        Ok(self.reader.as_mut().expect("just opened"))
    }

    fn next_segment(&mut self) {
        self.pos = self.segments[self.seg].end();
        self.seg += 1;
        self.reader = None;
    }

    pub(crate) fn step(&mut self) -> Result<Step<'_>> {
        loop {
            let Some(segment) = self.segments.get(self.seg) else {
                return Ok(Step::End);
            };
            let offset = self.pos.0 - segment.start.0;
            let room = segment.size_bytes - offset;
            if room < FRAME_HEADER_BYTES as u64 {
                self.next_segment();
                continue;
            }
            let (pos, seg) = (self.pos, self.seg);
            let bad = |fault| Ok(Step::Bad { lsn: pos, segment: seg, offset, fault });
            let Some(header_bytes) = self.reader()?.bytes(offset, FRAME_HEADER_BYTES)? else {
                return bad(FrameFault::Unreadable);
            };
            let header = match decode_header(header_bytes, pos) {
                Ok(h) if h.frame_bytes() > room => Err(FrameFault::PastSegment),
                other => other,
            };
            let header = match header {
                Ok(h) => h,
                Err(fault) => return bad(fault),
            };
            let frame_len = header.frame_bytes() as usize;
            match self.reader()?.bytes(offset, frame_len)? {
                None => return bad(FrameFault::Unreadable),
                Some(frame) => {
                    if let Err(fault) = check_crc(frame) {
                        return bad(fault);
                    }
                }
            }
            // Padding ends exactly at the segment's end; the next step moves on.
            debug_assert!(header.kind != FrameKind::Padding || header.frame_bytes() == room);
            self.pos = header.next_lsn();
            let frame = self.reader.as_mut().expect("open").bytes(offset, frame_len)?.expect("read just now");
            return Ok(Step::Frame(header, frame));
        }
    }
}

/// What lies beyond a bad frame.
#[derive(Debug, Default)]
pub(crate) struct Beyond {
    /// End of the furthest valid frame found, if any.
    pub(crate) furthest_end: Option<Lsn>,
    /// A valid frame that says the log was durable past the bad frame.
    pub(crate) durable_witness: Option<FrameHeader>,
}

/// Searches every position after `bad` (in its segment and all later ones)
/// for valid frames: one whose `durable_lsn` lies past `end` (the end of
/// the last whole batch before `bad`) proves that the batch `bad` is in had
/// been acknowledged durable, so it is corruption, not a torn tail.
/// Unreadable blocks are searched as zeros (no frame there).
pub(crate) fn look_beyond(storage: &Arc<dyn Storage>, segments: &[Segment], bad: Lsn, end: Lsn) -> Result<Beyond> {
    let mut beyond = Beyond::default();
    let first = segments.iter().position(|s| s.contains(bad)).unwrap_or(segments.len());
    for segment in &segments[first..] {
        let file = storage.open(&segment.path, OpenMode::Existing)?;
        let mut reader = WindowReader::new(file, segment.size_bytes);
        let mut offset = if segment.contains(bad) { bad.0 - segment.start.0 + 1 } else { 0 };
        while offset + FRAME_HEADER_BYTES as u64 <= segment.size_bytes {
            let len = (segment.size_bytes - offset).min(READ_WINDOW_BYTES as u64) as usize;
            let window = reader.bytes_lossy(offset, len)?;
            let Some(at) = find_lsn_field(window, segment.start.0 + offset) else {
                // Headers that straddle the window's end are looked at again.
                offset += (len - FRAME_HEADER_BYTES + 1) as u64;
                continue;
            };
            offset += at as u64;
            let lsn = Lsn(segment.start.0 + offset);
            let header = match reader.bytes(offset, FRAME_HEADER_BYTES)?.map(|b| decode_header(b, lsn)) {
                Some(Ok(h)) if offset + h.frame_bytes() <= segment.size_bytes => Some(h),
                _ => None,
            };
            let valid = match header {
                Some(h) => reader.bytes(offset, h.frame_bytes() as usize)?.is_some_and(|f| check_crc(f).is_ok()),
                None => false,
            };
            match header.filter(|_| valid) {
                Some(h) => {
                    beyond.furthest_end = Some(h.end());
                    if h.durable_lsn > end && beyond.durable_witness.is_none() {
                        beyond.durable_witness = Some(h);
                    }
                    offset += h.frame_bytes();
                }
                None => offset += 1,
            }
        }
    }
    Ok(beyond)
}

/// The first index `i` of `window` (with a whole header after it) whose
/// LSN field holds `base + i`: a candidate frame. Runs of zero bytes, where
/// no LSN field past 0 can lie, are skipped in one go.
fn find_lsn_field(window: &[u8], base: u64) -> Option<usize> {
    let last = window.len().checked_sub(FRAME_HEADER_BYTES)?;
    let mut i = 0;
    while i <= last {
        if peek_lsn(&window[i..]) == base + i as u64 {
            return Some(i);
        }
        // The next non-zero byte at or after this LSN field: any LSN field
        // (8 bytes, non-zero) that ends before it is all zero.
        match window[i + 8..].iter().position(|&b| b != 0) {
            Some(nonzero) => i = (i + 1).max((i + 8 + nonzero).saturating_sub(15)),
            None => return None,
        }
    }
    None
}
