//! Atomic batches and their encoding as a WAL payload.
//!
//! ```text
//! u32 op count
//! per op: u8 kind (1 = put, 2 = delete), u32 key length, u32 value length
//!         (0 for delete), key bytes, value bytes
//! ```
//! All integers little-endian.

use wal::{FrameBuf, Lsn};

use crate::constants::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, KEY_BYTES_MAX, LOG_KEY_BYTES_MAX, OP_HEADER_BYTES, VALUE_BYTES_MAX,
};
use crate::error::{Error, Result};

/// One change, its bytes borrowed from the batch's payload (the memtable
/// copies them into its arena).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// Changes applied all together or not at all, also across a crash.
///
/// A batch is encoded as it is built, straight into the bytes of the WAL
/// frame that carries it; the memtable copies each key and value into its
/// arena (no allocation per key, and the frame is freed once applied).
#[derive(Clone, Debug)]
pub struct WriteBatch {
    /// The frame: an op count (set when it is written), then the ops.
    frame: FrameBuf,
    ops: usize,
    /// The first key or value over its limit (it is not copied in).
    oversize: Option<Oversize>,
}

#[derive(Clone, Copy, Debug)]
enum Oversize {
    Key(usize),
    Value(usize),
}

impl Default for WriteBatch {
    fn default() -> WriteBatch {
        WriteBatch::new()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::with_room(0)
    }

    /// An empty batch with room for ops of `bytes` (keys and values),
    /// sized exactly (the frame is copied into the log's commit buffer and
    /// lives until its batch is applied).
    pub(crate) fn with_room(bytes: usize) -> WriteBatch {
        let mut frame = FrameBuf::with_capacity(BATCH_HEADER_BYTES + bytes);
        frame.resize_payload(BATCH_HEADER_BYTES);
        WriteBatch { frame, ops: 0, oversize: None }
    }

    /// A batch of one op.
    pub(crate) fn one(key: &[u8], value: Option<&[u8]>) -> WriteBatch {
        let bytes = OP_HEADER_BYTES + key.len() + value.map_or(0, <[u8]>::len);
        // No room reserved for an op that will be refused.
        let mut batch = WriteBatch::with_room(if bytes <= BATCH_BYTES_MAX { bytes } else { 0 });
        match value {
            Some(value) => batch.put(key, value),
            None => batch.delete(key),
        };
        batch
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut WriteBatch {
        self.push(1, key.as_ref(), value.as_ref());
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut WriteBatch {
        self.push(2, key.as_ref(), &[]);
        self
    }

    fn push(&mut self, kind: u8, key: &[u8], value: &[u8]) {
        self.ops += 1;
        let oversize = match () {
            _ if key.len() > KEY_BYTES_MAX => Some(Oversize::Key(key.len())),
            _ if value.len() > VALUE_BYTES_MAX => Some(Oversize::Value(value.len())),
            _ => None,
        };
        if oversize.is_some() || self.oversize.is_some() {
            self.oversize = self.oversize.or(oversize);
            return;
        }
        // Within the limits, so the lengths fit in u32.
        self.frame.extend(&[kind]);
        self.frame.extend(&(key.len() as u32).to_le_bytes());
        self.frame.extend(&(value.len() as u32).to_le_bytes());
        self.frame.extend(key);
        self.frame.extend(value);
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Checks limits and finishes the batch's WAL frame.
    pub(crate) fn into_frame(mut self, batch_bytes_max: usize) -> Result<FrameBuf> {
        match self.oversize {
            Some(Oversize::Key(bytes)) => return Err(Error::KeyTooLarge { bytes, limit: KEY_BYTES_MAX }),
            Some(Oversize::Value(bytes)) => return Err(Error::ValueTooLarge { bytes, limit: VALUE_BYTES_MAX }),
            None => {}
        }
        let bytes = self.frame.payload_bytes();
        if bytes > batch_bytes_max {
            return Err(Error::BatchTooLarge { bytes, limit: batch_bytes_max });
        }
        // At least OP_HEADER_BYTES per op, so the count fits.
        debug_assert!(self.ops * OP_HEADER_BYTES < bytes);
        let count = u32::try_from(self.ops).expect("bounded by the batch size");
        self.frame.payload_mut()[..BATCH_HEADER_BYTES].copy_from_slice(&count.to_le_bytes());
        Ok(self.frame)
    }
}

impl PartialEq for WriteBatch {
    fn eq(&self, other: &WriteBatch) -> bool {
        // The count slot is only filled in when the frame is finished.
        let ops = |b: &WriteBatch| b.frame.payload()[BATCH_HEADER_BYTES..].to_vec();
        self.ops == other.ops && ops(self) == ops(other)
    }
}

impl Eq for WriteBatch {}

/// Decodes a batch payload read from the WAL at `lsn`; the ops borrow
/// `payload`.
pub(crate) fn decode(lsn: Lsn, payload: &[u8]) -> Result<Vec<Op<'_>>> {
    let bad = |reason| Error::BadBatch { lsn, reason };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = at.checked_add(n).filter(|&end| end <= payload.len()).ok_or(bad("truncated"))?;
        let bytes = &payload[at..end];
        at = end;
        Ok(bytes)
    };
    let u32_of = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize;
    let count = u32_of(take(4)?);
    let mut ops = Vec::with_capacity(count.min(payload.len() / OP_HEADER_BYTES));
    for _ in 0..count {
        let kind = take(1)?[0];
        let key_len = u32_of(take(4)?);
        let value_len = u32_of(take(4)?);
        if key_len > LOG_KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
            return Err(bad("key or value length over the limit"));
        }
        let key = take(key_len)?;
        let value = take(value_len)?;
        ops.push(match (kind, value_len) {
            (1, _) => Op::Put(key, value),
            (2, 0) => Op::Delete(key),
            _ => return Err(bad("unknown operation kind")),
        });
    }
    if at != payload.len() {
        return Err(bad("trailing bytes after the last operation"));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(frame: &FrameBuf) -> Vec<u8> {
        frame.payload().to_vec()
    }

    proptest! {
        #[test]
        fn batches_round_trip(ops in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..100)), 0..20)) {
            let mut batch = WriteBatch::new();
            for (is_put, k, v) in &ops {
                if *is_put { batch.put(k, v); } else { batch.delete(k); }
            }
            let frame = batch.into_frame(crate::BATCH_BYTES_MAX).unwrap();
            let expected: Vec<Op> = ops
                .iter()
                .map(|(is_put, k, v)| match is_put {
                    true => Op::Put(k, v),
                    false => Op::Delete(k),
                })
                .collect();
            let payload = payload(&frame);
            prop_assert_eq!(decode(Lsn(0), &payload).unwrap(), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Lsn(7), &bytes);
        }
    }

    #[test]
    fn truncated_batch_is_a_typed_error_naming_the_lsn() {
        let mut batch = WriteBatch::new();
        batch.put("key", "value");
        let bytes = payload(&batch.into_frame(crate::BATCH_BYTES_MAX).unwrap());
        let err = decode(Lsn(99), &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, Error::BadBatch { lsn: Lsn(99), reason: "truncated" }), "{err:?}");
    }
}
