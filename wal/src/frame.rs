//! The frame: a 32-byte header and a payload.
//!
//! ```text
//! offset size field
//!      0    4 crc32        CRC32 (crc32fast) of the payload, then header bytes 4..32
//!      4    4 payload_bytes
//!      8    8 lsn          the frame's own position in the log
//!     16    8 durable_lsn  how far the log was durable when this frame's batch was written
//!     24    1 kind         1 = batch, 2 = padding to the end of the segment
//!     25    1 flags        bit 0: ends its batch (the next frame starts at the next block)
//!     26    2 reserved     zero
//!     28    4 term         leader term (0 on a single node)
//! ```
//! All integers little-endian. The CRC covers the payload first so that
//! writers compute that part outside any lock; the committer seals the
//! header (with the durable LSN and the flags) as it submits the batch.

use crate::constants::{FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};
use crate::Lsn;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind {
    /// One atomic batch of the store above.
    Batch,
    /// Filler to the end of a segment; the log goes on in the next segment.
    Padding,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Batch => 1,
            FrameKind::Padding => 2,
        }
    }

    fn from_code(code: u8) -> Option<FrameKind> {
        match code {
            1 => Some(FrameKind::Batch),
            2 => Some(FrameKind::Padding),
            _ => None,
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameKind::Batch => "batch",
            FrameKind::Padding => "padding",
        })
    }
}

/// Flag: the frame is the last of its batch; the rest of its 4 KiB block
/// is zero, and the next batch starts at the next block boundary.
const FLAG_ENDS_BATCH: u8 = 1;

/// A decoded, checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub payload_bytes: u32,
    /// The frame's position.
    pub lsn: Lsn,
    /// The durable end of the log when the frame's batch was written: every
    /// frame before it had been acknowledged durable.
    pub durable_lsn: Lsn,
    /// What it carries.
    pub kind: FrameKind,
    /// Last frame of its batch: the next frame starts at the next block.
    pub ends_batch: bool,
    /// Leader term.
    pub term: u32,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.payload_bytes)
    }

    /// The LSN just past this frame.
    pub fn end(&self) -> Lsn {
        Lsn(self.lsn.0 + self.frame_bytes())
    }

    /// Where the next frame starts: right after this one, or at the next
    /// block boundary if this one ends its batch.
    pub fn next_lsn(&self) -> Lsn {
        let end = self.end().0;
        Lsn(if self.ends_batch { end.next_multiple_of(uring::BLOCK_BYTES as u64) } else { end })
    }
}

/// Why bytes at a position are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameFault {
    /// All zero: never written (or zeroed).
    Zero,
    /// The LSN field is not the position: stale bytes of a recycled segment,
    /// or garbage.
    WrongLsn,
    /// Length or kind out of range.
    BadHeader,
    /// The frame would run past the end of its segment.
    PastSegment,
    /// The checksum does not match.
    BadCrc,
    /// The device could not read it (EIO): a torn sector.
    Unreadable,
}

impl FrameFault {
    /// A short description for errors and dumps.
    pub fn reason(self) -> &'static str {
        match self {
            FrameFault::Zero => "zeroed",
            FrameFault::WrongLsn => "LSN does not match its position",
            FrameFault::BadHeader => "header out of range",
            FrameFault::PastSegment => "length runs past the segment",
            FrameFault::BadCrc => "checksum mismatch",
            FrameFault::Unreadable => "unreadable (EIO)",
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header fields at the start of `bytes` without checking them.
pub(crate) fn peek_lsn(bytes: &[u8]) -> u64 {
    u64_at(bytes, 8)
}

/// Checks the header in `header` as a frame at `lsn`. Sizes are checked
/// against the format's limit, never an open's: a log written with larger
/// segments holds larger frames. The CRC is checked by [`check_crc`].
pub(crate) fn decode_header(header: &[u8], lsn: Lsn) -> Result<FrameHeader, FrameFault> {
    let header = &header[..FRAME_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(FrameFault::Zero);
    }
    if u64_at(header, 8) != lsn.0 {
        return Err(FrameFault::WrongLsn);
    }
    let payload_bytes = u32_at(header, 4);
    let kind = FrameKind::from_code(header[24]).ok_or(FrameFault::BadHeader)?;
    let flags = header[25];
    if payload_bytes as usize > FRAME_PAYLOAD_BYTES_MAX || flags & !FLAG_ENDS_BATCH != 0 || header[26..28] != [0, 0] {
        return Err(FrameFault::BadHeader);
    }
    Ok(FrameHeader {
        payload_bytes,
        lsn,
        durable_lsn: Lsn(u64_at(header, 16)),
        kind,
        ends_batch: flags & FLAG_ENDS_BATCH != 0,
        term: u32_at(header, 28),
    })
}

/// Checks a whole frame's CRC: `frame` is header then payload.
pub(crate) fn check_crc(frame: &[u8]) -> Result<(), FrameFault> {
    let (header, payload) = frame.split_at(FRAME_HEADER_BYTES);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(payload);
    hasher.update(&header[4..]);
    if hasher.finalize() == u32_at(header, 0) {
        Ok(())
    } else {
        Err(FrameFault::BadCrc)
    }
}

/// What goes into a frame's header besides its length and CRC.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seal {
    pub(crate) lsn: Lsn,
    pub(crate) durable_lsn: Lsn,
    pub(crate) kind: FrameKind,
    pub(crate) ends_batch: bool,
    pub(crate) term: u32,
}

/// Writes the header of `frame` (header room, then payload) and finishes
/// the CRC begun by `payload_crc` (the CRC of the payload alone).
pub(crate) fn seal_frame(frame: &mut [u8], payload_crc: u32, seal: Seal) {
    let payload_bytes = u32::try_from(frame.len() - FRAME_HEADER_BYTES).expect("payload length checked");
    let header = &mut frame[..FRAME_HEADER_BYTES];
    header[4..8].copy_from_slice(&payload_bytes.to_le_bytes());
    header[8..16].copy_from_slice(&seal.lsn.0.to_le_bytes());
    header[16..24].copy_from_slice(&seal.durable_lsn.0.to_le_bytes());
    header[24] = seal.kind.code();
    header[25] = if seal.ends_batch { FLAG_ENDS_BATCH } else { 0 };
    header[26..28].fill(0);
    header[28..32].copy_from_slice(&seal.term.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new_with_initial_len(payload_crc, u64::from(payload_bytes));
    hasher.update(&header[4..]);
    let crc = hasher.finalize();
    header[..4].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(check_crc(frame), Ok(()));
}

/// A frame being built: the header's room first, then the payload, so that
/// appending it to the log copies nothing.
#[derive(Clone, Debug)]
pub struct FrameBuf {
    bytes: Vec<u8>,
}

impl Default for FrameBuf {
    fn default() -> FrameBuf {
        FrameBuf::new()
    }
}

impl FrameBuf {
    /// An empty payload.
    pub fn new() -> FrameBuf {
        FrameBuf::with_capacity(0)
    }

    /// An empty payload with room for `payload_bytes`.
    pub fn with_capacity(payload_bytes: usize) -> FrameBuf {
        let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
        bytes.resize(FRAME_HEADER_BYTES, 0);
        FrameBuf { bytes }
    }

    /// Appends bytes to the payload.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Sets the payload's length, zero-filling any growth.
    pub fn resize_payload(&mut self, payload_bytes: usize) {
        self.bytes.resize(FRAME_HEADER_BYTES + payload_bytes, 0);
    }

    /// The payload so far.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[FRAME_HEADER_BYTES..]
    }

    /// The payload so far, to patch in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[FRAME_HEADER_BYTES..]
    }

    /// Payload length in bytes.
    pub fn payload_bytes(&self) -> usize {
        self.bytes.len() - FRAME_HEADER_BYTES
    }

    /// The CRC of the payload alone, the part that needs no LSN.
    pub(crate) fn payload_crc(&self) -> u32 {
        crc32fast::hash(&self.bytes[FRAME_HEADER_BYTES..])
    }

    /// Seals the frame in place, as the last of its batch (tests build logs by hand with it).
    #[cfg(test)]
    pub(crate) fn seal(&mut self, payload_crc: u32, lsn: Lsn, durable_lsn: Lsn, kind: FrameKind, term: u32) {
        let seal = Seal { lsn, durable_lsn, kind, ends_batch: true, term };
        seal_frame(&mut self.bytes, payload_crc, seal);
    }

    /// The encoded frame.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A frame read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its checked header.
    pub header: FrameHeader,
    /// Its payload.
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_frame_decodes_and_any_flipped_bit_is_caught() {
        let mut frame = FrameBuf::new();
        frame.extend(b"hello, log");
        let crc = frame.payload_crc();
        frame.seal(crc, Lsn(4096), Lsn(1000), FrameKind::Batch, 7);
        let bytes = frame.as_bytes().to_vec();
        let header = decode_header(&bytes, Lsn(4096)).unwrap();
        assert_eq!(header.payload_bytes, 10);
        assert_eq!(header.durable_lsn, Lsn(1000));
        assert_eq!(header.term, 7);
        assert!(header.ends_batch);
        assert_eq!(check_crc(&bytes), Ok(()));
        assert_eq!(decode_header(&bytes, Lsn(4097)), Err(FrameFault::WrongLsn));
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let caught = decode_header(&bad, Lsn(4096)).is_err() || check_crc(&bad).is_err();
            assert!(caught, "flipped bit {bit} went unnoticed");
        }
    }
}
