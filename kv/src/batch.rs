//! Atomic batches and their encoding as a WAL payload.
//!
//! ```text
//! u32 op count
//! per op: u8 kind (1 = put, 2 = delete), u32 key length, u32 value length
//!         (0 for delete), key bytes, value bytes
//! ```
//! All integers little-endian.

use wal::{FrameBuf, Lsn};

use crate::constants::{BATCH_HEADER_BYTES, KEY_BYTES_MAX, OP_HEADER_BYTES, VALUE_BYTES_MAX};
use crate::error::{Error, Result};

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Changes applied all together or not at all, also across a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<Op>,
    encoded_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch { ops: Vec::new(), encoded_bytes: BATCH_HEADER_BYTES }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut WriteBatch {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        self.encoded_bytes += OP_HEADER_BYTES + key.len() + value.len();
        self.ops.push(Op::Put(key, value));
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut WriteBatch {
        let key = key.as_ref().to_vec();
        self.encoded_bytes += OP_HEADER_BYTES + key.len();
        self.ops.push(Op::Delete(key));
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks limits and encodes the batch as one WAL frame.
    pub(crate) fn encode(&self, batch_bytes_max: usize) -> Result<FrameBuf> {
        for op in &self.ops {
            match op {
                Op::Put(k, v) => check_sizes(k, v)?,
                Op::Delete(k) => check_sizes(k, &[])?,
            }
        }
        let encoded = self.encoded_bytes.max(BATCH_HEADER_BYTES);
        if encoded > batch_bytes_max {
            return Err(Error::BatchTooLarge { bytes: encoded, limit: batch_bytes_max });
        }
        let mut frame = FrameBuf::with_capacity(encoded);
        let count = u32::try_from(self.ops.len()).expect("bounded by batch size");
        frame.extend(&count.to_le_bytes());
        for op in &self.ops {
            let (kind, key, value): (u8, &[u8], &[u8]) = match op {
                Op::Put(k, v) => (1, k, v),
                Op::Delete(k) => (2, k, &[]),
            };
            frame.extend(&[kind]);
            frame.extend(&(key.len() as u32).to_le_bytes());
            frame.extend(&(value.len() as u32).to_le_bytes());
            frame.extend(key);
            frame.extend(value);
        }
        assert_eq!(frame.payload_bytes(), encoded, "encoded size matches the running count");
        Ok(frame)
    }
}

pub(crate) fn check_sizes(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::KeyTooLarge { bytes: key.len(), limit: KEY_BYTES_MAX });
    }
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::ValueTooLarge { bytes: value.len(), limit: VALUE_BYTES_MAX });
    }
    Ok(())
}

/// Decodes a batch payload read from the WAL at `lsn`.
pub(crate) fn decode(lsn: Lsn, payload: &[u8]) -> Result<Vec<Op>> {
    let bad = |reason| Error::BadBatch { lsn, reason };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = at.checked_add(n).filter(|&end| end <= payload.len()).ok_or(bad("truncated"))?;
        let bytes = &payload[at..end];
        at = end;
        Ok(bytes)
    };
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = u32_of(take(4)?);
    let mut ops = Vec::with_capacity(count.min(payload.len() / OP_HEADER_BYTES));
    for _ in 0..count {
        let kind = take(1)?[0];
        let key_len = u32_of(take(4)?);
        let value_len = u32_of(take(4)?);
        if key_len > KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
            return Err(bad("key or value length over the limit"));
        }
        let key = take(key_len)?.to_vec();
        let value = take(value_len)?.to_vec();
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
            let frame = batch.encode(crate::BATCH_BYTES_MAX).unwrap();
            prop_assert_eq!(decode(Lsn(0), &payload(&frame)).unwrap(), batch.ops);
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
        let bytes = payload(&batch.encode(crate::BATCH_BYTES_MAX).unwrap());
        let err = decode(Lsn(99), &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, Error::BadBatch { lsn: Lsn(99), reason: "truncated" }), "{err:?}");
    }
}
