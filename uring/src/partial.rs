//! The one place that decides how a partial write goes on (TigerBeetle's
//! `storage.zig` does this in one place too): advance past what was
//! written, shorten the rest, resubmit. Every backend's write loop and the
//! commit queues use it.
//!
//! On an O_DIRECT file the rest must start block-aligned, so a short write
//! that ended inside a block is resumed from that block's start: its first
//! bytes are written again, unchanged, from the same buffer. A resubmission
//! that makes no progress (the kernel keeps stopping inside the same block,
//! as under `RLIMIT_FSIZE` at an odd size) is an error, never a loop.

use std::io;
use std::ops::Range;

use crate::constants::BLOCK_BYTES;

/// A write of `len` bytes at `offset`, possibly finished in several parts.
#[derive(Clone, Debug)]
pub(crate) struct WriteProgress {
    offset: u64,
    len: usize,
    /// Bytes known written, from the start.
    done: usize,
    /// Where the part in flight starts: `done`, rounded down to a block on
    /// O_DIRECT files.
    resume: usize,
    direct: bool,
}

impl WriteProgress {
    pub(crate) fn new(offset: u64, len: usize, direct: bool) -> WriteProgress {
        if direct {
            assert_eq!(offset % BLOCK_BYTES as u64, 0, "O_DIRECT offset {offset} is not block-aligned");
            assert_eq!(len % BLOCK_BYTES, 0, "O_DIRECT length {len} is not block-aligned");
        }
        WriteProgress { offset, len, done: 0, resume: 0, direct }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done == self.len
    }

    /// The file offset and the buffer range of the next part to write.
    pub(crate) fn next(&self) -> (u64, Range<usize>) {
        assert!(!self.is_done(), "nothing left to write");
        (self.offset + self.resume as u64, self.resume..self.len)
    }

    /// Records that the part from `next()` wrote `written` bytes.
    ///
    /// # Errors
    /// `WriteZero` if the write advanced nothing past what was already done.
    pub(crate) fn advance(&mut self, written: usize) -> io::Result<()> {
        let reached = self.resume + written;
        assert!(reached <= self.len, "a write reported more than it was given");
        if reached <= self.done {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write made no progress"));
        }
        self.done = reached;
        self.resume = if self.direct { self.done / BLOCK_BYTES * BLOCK_BYTES } else { self.done };
        Ok(())
    }

    /// The offset where writing stopped (for errors).
    pub(crate) fn stopped_at(&self) -> u64 {
        self.offset + self.done as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_short_writes_resume_where_they_stopped() {
        let mut w = WriteProgress::new(100, 1000, false);
        assert_eq!(w.next(), (100, 0..1000));
        w.advance(300).unwrap();
        assert_eq!(w.next(), (400, 300..1000));
        w.advance(700).unwrap();
        assert!(w.is_done());
    }

    /// Regression: the rest of a short O_DIRECT write was resubmitted at an
    /// unaligned offset, and the alignment assertion panicked the committer.
    #[test]
    fn direct_short_write_inside_a_block_resumes_at_the_block_start() {
        let block = BLOCK_BYTES;
        let mut w = WriteProgress::new(0, 4 * block, true);
        w.advance(block + 512).unwrap();
        assert_eq!(w.next(), (block as u64, block..4 * block));
        assert_eq!(w.stopped_at(), (block + 512) as u64);
        // The kernel stops inside the same block again: no progress, an error.
        let err = w.advance(512).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        // Progress past the block is accepted.
        let mut w = WriteProgress::new(0, 4 * block, true);
        w.advance(block + 512).unwrap();
        w.advance(3 * block).unwrap();
        assert!(w.is_done());
    }

    #[test]
    fn a_write_of_nothing_is_no_progress() {
        let mut w = WriteProgress::new(0, 10, false);
        assert!(w.advance(0).is_err());
    }
}
