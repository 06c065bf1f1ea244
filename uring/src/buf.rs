//! Buffers aligned for O_DIRECT and for registration with a ring.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::constants::BLOCK_BYTES;

/// A zero-initialised heap buffer whose address and length are multiples of
/// [`BLOCK_BYTES`], as O_DIRECT requires.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8]; mutation needs &mut self.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, rounded up to a whole block (at least one).
    pub fn new(len: usize) -> AlignedBuf {
        let len = len.max(1).next_multiple_of(BLOCK_BYTES);
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (len >= BLOCK_BYTES).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK_BYTES).expect("aligned buffer layout")
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from alloc_zeroed with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Where a buffer came back to when dropped: the pool of a ring that has its
/// memory registered.
pub(crate) trait BufHome: Send + Sync {
    fn give_back(&self, buf: AlignedBuf, slot: FixedSlot);
}

/// An I/O buffer handed out by [`crate::CommitQueue::buffers`]. On the io_uring
/// backend it is one of the ring's registered buffers and is written with
/// `WriteFixed`; elsewhere it is a plain [`AlignedBuf`].
pub struct IoBuf {
    buf: Option<AlignedBuf>,
    pub(crate) fixed: Option<FixedSlot>,
    home: Option<Arc<dyn BufHome>>,
}

/// Which ring a registered buffer belongs to, and its index there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FixedSlot {
    pub(crate) ring_id: u64,
    pub(crate) index: u16,
}

impl IoBuf {
    /// A buffer registered nowhere.
    pub fn plain(len: usize) -> IoBuf {
        IoBuf { buf: Some(AlignedBuf::new(len)), fixed: None, home: None }
    }

    pub(crate) fn registered(buf: AlignedBuf, fixed: FixedSlot, home: Arc<dyn BufHome>) -> IoBuf {
        IoBuf { buf: Some(buf), fixed: Some(fixed), home: Some(home) }
    }

    /// Whether this buffer is registered with a ring.
    pub fn is_registered(&self) -> bool {
        self.fixed.is_some()
    }

    fn inner(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("IoBuf holds its buffer until drop")
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner()
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().expect("IoBuf holds its buffer until drop")
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // A registered buffer goes back to its ring's pool, never to the
        // allocator: the ring still refers to its memory by index.
        if let (Some(home), Some(buf), Some(slot)) = (self.home.take(), self.buf.take(), self.fixed) {
            home.give_back(buf, slot);
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes, fixed={:?})", self.inner().len(), self.fixed)
    }
}
