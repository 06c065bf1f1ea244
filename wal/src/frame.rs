//! The frame: a 32-byte header and a payload.
//!
//! ```text
//! offset size field
//!      0    4 crc32        CRC32 (crc32fast) of the payload, then header bytes 4..32
//!      4    4 payload_bytes
//!      8    8 lsn          the frame's own position in the log
//!     16    8 durable_lsn  how far the log was durable when this frame was made
//!     24    1 kind         1 = batch, 2 = padding to the end of the segment
//!     25    3 reserved     zero
//!     28    4 term         leader term (0 on a single node)
//! ```
//! All integers little-endian. The CRC covers the payload first so that it
//! can be computed outside the lock that assigns the LSN.

use crate::constants::{FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};
use crate::Lsn;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A decoded, checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub payload_bytes: u32,
    /// The frame's position.
    pub lsn: Lsn,
    /// The durable end of the log when the frame was made.
    pub durable_lsn: Lsn,
    /// What it carries.
    pub kind: FrameKind,
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
}

/// Why bytes at a position are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    if payload_bytes as usize > FRAME_PAYLOAD_BYTES_MAX || header[25..28] != [0, 0, 0] {
        return Err(FrameFault::BadHeader);
    }
    Ok(FrameHeader { payload_bytes, lsn, durable_lsn: Lsn(u64_at(header, 16)), kind, term: u32_at(header, 28) })
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

    /// Payload length in bytes.
    pub fn payload_bytes(&self) -> usize {
        self.bytes.len() - FRAME_HEADER_BYTES
    }

    /// Header plus payload.
    pub(crate) fn frame_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The CRC of the payload alone, the part that needs no LSN.
    pub(crate) fn payload_crc(&self) -> u32 {
        crc32fast::hash(&self.bytes[FRAME_HEADER_BYTES..])
    }

    /// Writes the header and finishes the CRC begun by `payload_crc`.
    pub(crate) fn seal(&mut self, payload_crc: u32, lsn: Lsn, durable_lsn: Lsn, kind: FrameKind, term: u32) {
        let payload_bytes = u32::try_from(self.payload_bytes()).expect("payload length checked");
        let header = &mut self.bytes[..FRAME_HEADER_BYTES];
        header[4..8].copy_from_slice(&payload_bytes.to_le_bytes());
        header[8..16].copy_from_slice(&lsn.0.to_le_bytes());
        header[16..24].copy_from_slice(&durable_lsn.0.to_le_bytes());
        header[24] = kind.code();
        header[25..28].fill(0);
        header[28..32].copy_from_slice(&term.to_le_bytes());
        let payload_bytes = u64::from(payload_bytes);
        let mut hasher = crc32fast::Hasher::new_with_initial_len(payload_crc, payload_bytes);
        hasher.update(&header[4..]);
        let crc = hasher.finalize();
        header[..4].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(check_crc(&self.bytes), Ok(()));
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
