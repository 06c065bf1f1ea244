//! The page file's pages: 4 KiB, each with a CRC, its own number and the
//! generation (checkpoint) that wrote it. A reader knows the number and
//! generation it expects (from the meta page or the parent), so a read
//! catches a torn or rotted page (CRC), a misdirected write (number) and a
//! lost write (generation: a reused page's old contents still have a valid
//! CRC). Layout in docs/FORMAT.md.
//!
//! ```text
//! header (24 bytes): crc32 u32 (of bytes 4..4096) | page u32 | generation u64
//!                    | kind u8 | 0 u8 | count u16 | 0 u32
//! leaf:     count × (key_len u16 | stored u8 | value_len u32 | key
//!                    | value (stored 0) or index page ref (stored 1))
//! branch:   child ref, then (count - 1) × (key_len u16 | key | child ref)
//! index:    count × data page ref (the pages of one large value, in order)
//! data:     a large value's bytes
//! free map: bitmap, bit set = page free
//! meta:     see `Meta`
//! page ref = page u32 | generation u64
//! ```
//! All integers little-endian.

use bytes::Bytes;

/// Bytes of a page.
pub(crate) const PAGE_BYTES: usize = 4096;
const HEADER_BYTES: usize = 24;
/// Bytes of a page after its header.
pub(crate) const BODY_BYTES: usize = PAGE_BYTES - HEADER_BYTES;
const REF_BYTES: usize = 12;
const LEAF_ENTRY_HEADER: usize = 7;
/// A leaf entry larger than this keeps its value in overflow pages, so a
/// leaf holds at least three entries.
pub(crate) const INLINE_ENTRY_MAX: usize = BODY_BYTES / 3;
/// Data pages one index page lists.
pub(crate) const INDEX_REFS_MAX: usize = BODY_BYTES / REF_BYTES;
/// Pages one free-map page covers.
pub(crate) const FREE_MAP_PAGE_BITS: usize = BODY_BYTES * 8;

/// A page's number in the file (byte offset / 4096).
pub(crate) type PageNo = u32;

/// Where a child lives and which checkpoint wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageRef {
    pub(crate) page: PageNo,
    pub(crate) generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Meta = 1,
    Leaf = 2,
    Branch = 3,
    Index = 4,
    Data = 5,
    FreeMap = 6,
}

impl Kind {
    fn from_code(code: u8) -> Option<Kind> {
        [Kind::Meta, Kind::Leaf, Kind::Branch, Kind::Index, Kind::Data, Kind::FreeMap]
            .into_iter()
            .find(|k| *k as u8 == code)
    }
}

/// A value as a leaf stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    Inline(Bytes),
    /// `len` bytes in the data pages the index page lists.
    Overflow {
        len: u32,
        index: PageRef,
    },
}

#[cfg(test)]
impl Stored {
    /// As a leaf being written takes it.
    pub(crate) fn as_value(&self) -> Value<'_> {
        match self {
            Stored::Inline(v) => Value::Inline(v),
            Stored::Overflow { len, index } => Value::Overflow { len: *len, index: *index },
        }
    }
}

/// A value of a leaf being written: as [`Stored`], but borrowed (from the
/// memtable a checkpoint folds in, which outlives the leaf's page).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    Inline(&'a [u8]),
    Overflow { len: u32, index: PageRef },
}

/// A decoded tree node. Built with [`Node::leaf`] and [`Node::branch`],
/// which index its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Leaf(Leaf),
    /// Children and, for each but the first, the least key it holds
    /// (slices of the page).
    Branch {
        first: PageRef,
        rest: Vec<(Bytes, PageRef)>,
        heads: Heads,
    },
}

impl Node {
    /// The leaf of `entries` (sorted, unique keys, fitting one page).
    #[cfg(test)]
    pub(crate) fn leaf(entries: &[(Bytes, Stored)]) -> Node {
        Node::Leaf(leaf_page(&new_entries(entries), None).1)
    }

    pub(crate) fn branch(first: PageRef, rest: Vec<(Bytes, PageRef)>) -> Node {
        let heads = Heads::new(rest.iter().map(|(k, _)| &k[..]));
        Node::Branch { first, rest, heads }
    }
}

/// A leaf read in place: the body of its page, where each entry starts in
/// it, and its keys' heads. Keys and values stay in the page's own bytes,
/// so a cached leaf costs its page plus 10 bytes an entry (decoded into
/// a slice per key and value, it cost 72 more an entry: a third more
/// than the page).
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    body: Bytes,
    /// Offset of each entry's header in `body`, in key order.
    starts: Vec<u16>,
    heads: Heads,
}

impl Leaf {
    /// The leaf of a page body holding `count` entries; checks that every
    /// entry lies within the body and that the keys ascend.
    fn decode(body: Bytes, count: usize) -> Result<Leaf, Bad> {
        let mut starts = Vec::with_capacity(count);
        let mut r = Reader::new(body);
        let mut previous: Option<(usize, usize)> = None;
        for _ in 0..count {
            let start = r.at;
            let key_len = usize::from(r.u16()?);
            let stored = r.u8()?;
            let len = r.u32()?;
            let key = (r.at, r.at + key_len);
            r.next(key_len)?;
            match stored {
                0 => r.next(len as usize)?,
                1 => r.next(REF_BYTES)?,
                _ => return Err(Bad::Layout("unknown value storage")),
            };
            if previous.is_some_and(|(a, b)| r.body[a..b] >= r.body[key.0..key.1]) {
                return Err(Bad::Layout("leaf keys out of order"));
            }
            previous = Some(key);
            starts.push(u16::try_from(start).expect("a body is shorter than 64 KiB"));
        }
        let body = r.body;
        let heads = Heads::new(starts.iter().map(|&s| entry_key(&body, s)));
        Ok(Leaf { body, starts, heads })
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    pub(crate) fn key(&self, i: usize) -> &[u8] {
        entry_key(&self.body, self.starts[i])
    }

    /// Entry `i`'s key, sharing the page's bytes.
    pub(crate) fn key_bytes(&self, i: usize) -> Bytes {
        self.body.slice_ref(self.key(i))
    }

    /// The bytes entry `i` takes in the page, its header included.
    fn raw(&self, i: usize) -> &[u8] {
        let start = usize::from(self.starts[i]);
        let b = &self.body[start..];
        let key_len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let rest = match b[2] {
            0 => u32::from_le_bytes([b[3], b[4], b[5], b[6]]) as usize,
            _ => REF_BYTES,
        };
        &b[..LEAF_ENTRY_HEADER + key_len + rest]
    }

    /// The value of entry `i` (an inline value shares the page's bytes).
    pub(crate) fn value(&self, i: usize) -> Stored {
        let start = usize::from(self.starts[i]);
        let mut r = Reader { body: self.body.clone(), at: start };
        let (key_len, stored, len) = (r.u16().expect("checked"), r.u8().expect("checked"), r.u32().expect("checked"));
        r.at += usize::from(key_len);
        match stored {
            0 => Stored::Inline(r.take(len as usize).expect("checked")),
            _ => Stored::Overflow { len, index: r.page_ref().expect("checked") },
        }
    }

    /// Entry `i`: its key (sharing the page's bytes) and value.
    pub(crate) fn entry(&self, i: usize) -> (Bytes, Stored) {
        (self.key_bytes(i), self.value(i))
    }

    /// Every entry, in key order.
    pub(crate) fn entries(&self) -> Vec<(Bytes, Stored)> {
        (0..self.len()).map(|i| self.entry(i)).collect()
    }

    /// Bytes entry `i` takes in the page (entries lie end to end, as
    /// decoding checked).
    fn entry_len(&self, i: usize) -> usize {
        match self.starts.get(i + 1) {
            Some(&next) => usize::from(next - self.starts[i]),
            None => self.raw(i).len(),
        }
    }

    /// The index of the first entry whose key is at least `key`.
    pub(crate) fn partition(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = self.heads.span((!self.starts.is_empty()).then(|| self.key(0)), key);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid) < key {
                true => lo = mid + 1,
                false => hi = mid,
            }
        }
        lo
    }

    /// The index of `key`'s entry, if the leaf holds it.
    pub(crate) fn find(&self, key: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = self.heads.span((!self.starts.is_empty()).then(|| self.key(0)), key);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

/// `entries` as new entries of a leaf being written.
#[cfg(test)]
pub(crate) fn new_entries(entries: &[(Bytes, Stored)]) -> Vec<Entry<'_>> {
    entries.iter().map(|(k, v)| Entry::New(k, v.as_value())).collect()
}

/// Two leaves are equal if they hold the same entries (however laid out).
impl PartialEq for Leaf {
    fn eq(&self, other: &Leaf) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.entry(i) == other.entry(i))
    }
}

impl Eq for Leaf {}

/// The key of the leaf entry whose header starts at `start` (checked).
fn entry_key(body: &[u8], start: u16) -> &[u8] {
    let start = usize::from(start);
    let key_len = usize::from(u16::from_le_bytes([body[start], body[start + 1]]));
    &body[start + LEAF_ENTRY_HEADER..start + LEAF_ENTRY_HEADER + key_len]
}

/// A node's keys as a lookup searches them: the prefix all of them share,
/// and of each the next 8 bytes after it as a big-endian integer (zero
/// padded), in one array. A binary search over that array touches a few
/// cache lines where one over the keys touches two per probe (the slice,
/// then its bytes in the page); only keys whose head equals the sought
/// key's are compared in full.
///
/// Heads never decrease along sorted keys: two keys that differ within the
/// 8 bytes differ there in the same order, and a key that ends within them
/// is padded with zeros, below any byte of a longer one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heads {
    prefix: usize,
    heads: Vec<u64>,
}

impl Heads {
    fn new<'a>(keys: impl Iterator<Item = &'a [u8]> + Clone) -> Heads {
        let (Some(first), Some(last)) = (keys.clone().next(), keys.clone().last()) else { return Heads::default() };
        // Sorted: what the first and last share, all share.
        let prefix = first.iter().zip(last).take_while(|(a, b)| a == b).count();
        Heads { prefix, heads: keys.map(|k| head(&k[prefix..])).collect() }
    }

    /// The heads of a leaf being written: a kept entry's is the one its
    /// leaf has, where the prefix is the same length (the usual case: a
    /// change lands among the keys), so only new entries' keys are read.
    fn of_entries(entries: &[Entry], from: Option<&Leaf>) -> Heads {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Heads::default() };
        let (first, last) = (first.key(from), last.key(from));
        let prefix = first.iter().zip(last).take_while(|(a, b)| a == b).count();
        let same = from.filter(|leaf| leaf.heads.prefix == prefix);
        let heads = entries
            .iter()
            .map(|e| match (e, same) {
                (Entry::Kept(i), Some(leaf)) => leaf.heads.heads[*i],
                _ => head(&e.key(from)[prefix..]),
            })
            .collect();
        Heads { prefix, heads }
    }

    /// Indices `(lo, hi)` such that keys below `lo` are less than `key`
    /// and keys from `hi` on greater; those between share its head.
    /// `first` is the node's first key (any key would do: all share the
    /// prefix).
    pub(crate) fn span(&self, first: Option<&[u8]>, key: &[u8]) -> (usize, usize) {
        let Some(first) = first else { return (0, 0) };
        let prefix = &first[..self.prefix];
        if !key.starts_with(prefix) {
            // Every key of the node starts with the prefix: the key is on
            // one side of all of them.
            return if key < prefix { (0, 0) } else { (self.heads.len(), self.heads.len()) };
        }
        let h = head(&key[self.prefix..]);
        let lo = self.heads.partition_point(|&x| x < h);
        let hi = lo + self.heads[lo..].partition_point(|&x| x == h);
        (lo, hi)
    }
}

/// The first 8 bytes of `suffix`, zero padded, as a big-endian integer.
fn head(suffix: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = suffix.len().min(8);
    bytes[..n].copy_from_slice(&suffix[..n]);
    u64::from_be_bytes(bytes)
}

/// Why a page failed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    Crc,
    /// It says it is another page (a misdirected write).
    Number(PageNo),
    /// Another generation wrote it (a lost or stale write).
    Generation(u64),
    Kind(u8),
    /// Its contents do not decode.
    Layout(&'static str),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Crc => f.write_str("checksum mismatch (torn or corrupt page)"),
            Bad::Number(n) => write!(f, "the page says it is page {n} (misdirected write)"),
            Bad::Generation(g) => write!(f, "written by generation {g}, not the one its parent names (lost write)"),
            Bad::Kind(k) => write!(f, "unexpected page kind {k}"),
            Bad::Layout(why) => f.write_str(why),
        }
    }
}

/// Bytes a leaf entry takes.
pub(crate) fn leaf_entry_bytes(key: &[u8], value: Value<'_>) -> usize {
    LEAF_ENTRY_HEADER
        + key.len()
        + match value {
            Value::Inline(v) => v.len(),
            Value::Overflow { .. } => REF_BYTES,
        }
}

/// Bytes a new leaf entry of `key` and a value of `value_bytes` takes:
/// what [`leaf_entry_bytes`] gives once the value is stored.
pub(crate) fn new_entry_bytes(key: &[u8], value_bytes: usize) -> usize {
    LEAF_ENTRY_HEADER + key.len() + if fits_inline(key, value_bytes) { value_bytes } else { REF_BYTES }
}

/// Whether a value of `value_bytes` for `key` stays in the leaf.
pub(crate) fn fits_inline(key: &[u8], value_bytes: usize) -> bool {
    LEAF_ENTRY_HEADER + key.len() + value_bytes <= INLINE_ENTRY_MAX
}

/// Bytes a branch spends on a child after the first.
pub(crate) fn branch_entry_bytes(key: &[u8]) -> usize {
    2 + key.len() + REF_BYTES
}

/// Bytes the first child of a branch takes.
pub(crate) const BRANCH_FIRST_BYTES: usize = REF_BYTES;

/// A page being written.
pub(crate) struct PageBuf {
    bytes: Vec<u8>,
    count: u16,
}

impl PageBuf {
    pub(crate) fn new(kind: Kind) -> PageBuf {
        let mut bytes = Vec::with_capacity(PAGE_BYTES);
        bytes.resize(HEADER_BYTES, 0);
        bytes[16] = kind as u8;
        PageBuf { bytes, count: 0 }
    }

    pub(crate) fn room(&self) -> usize {
        PAGE_BYTES - self.bytes.len()
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= self.room(), "page overflow");
        self.bytes.extend_from_slice(bytes);
    }

    pub(crate) fn put_ref(&mut self, r: PageRef) {
        self.put(&r.page.to_le_bytes());
        self.put(&r.generation.to_le_bytes());
    }

    pub(crate) fn counted(&mut self) {
        self.count += 1;
    }

    /// The page as it will be written: its bytes no longer change, and a
    /// cached node may share them.
    pub(crate) fn freeze(self) -> Page {
        Page { bytes: Bytes::from(self.bytes), count: self.count }
    }
}

/// A page made and not yet written: its header's number, generation and
/// CRC are filled in as it is sealed.
pub(crate) struct Page {
    bytes: Bytes,
    count: u16,
}

impl Page {
    /// Seals it as page `page` of `generation` into `out` (4096 bytes).
    pub(crate) fn seal(&self, page: PageNo, generation: u64, out: &mut [u8]) {
        let out = &mut out[..PAGE_BYTES];
        out[..self.bytes.len()].copy_from_slice(&self.bytes);
        out[self.bytes.len()..].fill(0);
        out[4..8].copy_from_slice(&page.to_le_bytes());
        out[8..16].copy_from_slice(&generation.to_le_bytes());
        out[18..20].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// An entry of a leaf being written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Entry<'a> {
    /// Entry `i` of the leaf it replaces, copied as its page holds it.
    Kept(usize),
    New(&'a [u8], Value<'a>),
}

impl<'e> Entry<'e> {
    /// Its key; `from` is the leaf a kept entry comes from.
    pub(crate) fn key<'a>(&'a self, from: Option<&'a Leaf>) -> &'a [u8] {
        match self {
            Entry::Kept(i) => from.expect("a kept entry has a leaf").key(*i),
            Entry::New(key, _) => key,
        }
    }

    /// Bytes it takes in a leaf.
    pub(crate) fn bytes(&self, from: Option<&Leaf>) -> usize {
        match self {
            Entry::Kept(i) => from.expect("a kept entry has a leaf").entry_len(*i),
            Entry::New(key, value) => leaf_entry_bytes(key, *value),
        }
    }
}

/// The page of a leaf of `entries` (sorted, unique keys, fitting one
/// page; kept ones from `from`), and the leaf to cache, which shares the
/// page's bytes.
pub(crate) fn leaf_page(entries: &[Entry], from: Option<&Leaf>) -> (Page, Leaf) {
    let mut page = PageBuf::new(Kind::Leaf);
    let mut starts = Vec::with_capacity(entries.len());
    let mut k = 0;
    while k < entries.len() {
        let at = page.bytes.len() - HEADER_BYTES;
        let offset = |n: usize| u16::try_from(at + n).expect("a body is shorter than 64 KiB");
        match &entries[k] {
            // A run of entries kept in their order: one copy of their bytes.
            &Entry::Kept(first) => {
                let from = from.expect("a kept entry has a leaf");
                let mut last = first;
                while matches!(entries.get(k + 1 + last - first), Some(Entry::Kept(n)) if *n == last + 1) {
                    last += 1;
                }
                let base = usize::from(from.starts[first]);
                for n in first..=last {
                    starts.push(offset(usize::from(from.starts[n]) - base));
                    page.counted();
                }
                page.put(&from.body[base..usize::from(from.starts[last]) + from.entry_len(last)]);
                k += last - first + 1;
            }
            Entry::New(key, value) => {
                starts.push(offset(0));
                page.put(&(key.len() as u16).to_le_bytes());
                match value {
                    Value::Inline(v) => {
                        page.put(&[0]);
                        page.put(&(v.len() as u32).to_le_bytes());
                        page.put(key);
                        page.put(v);
                    }
                    Value::Overflow { len, index } => {
                        page.put(&[1]);
                        page.put(&len.to_le_bytes());
                        page.put(key);
                        page.put_ref(*index);
                    }
                }
                page.counted();
                k += 1;
            }
        }
    }
    let heads = Heads::of_entries(entries, from);
    let page = page.freeze();
    let leaf = Leaf { body: page.bytes.slice(HEADER_BYTES..), starts, heads };
    (page, leaf)
}

pub(crate) fn branch_page(first: PageRef, rest: &[(Bytes, PageRef)]) -> PageBuf {
    let mut page = PageBuf::new(Kind::Branch);
    page.put_ref(first);
    page.counted();
    for (key, child) in rest {
        page.put(&(key.len() as u16).to_le_bytes());
        page.put(key);
        page.put_ref(*child);
        page.counted();
    }
    page
}

/// A checked page: its kind, entry count and body.
pub(crate) struct Checked {
    pub(crate) kind: Kind,
    pub(crate) count: usize,
    pub(crate) body: Bytes,
}

/// Checks a page read from where `expected` says it lives.
pub(crate) fn check(page: Bytes, expected: PageRef) -> Result<Checked, Bad> {
    let (checked, generation) = check_unanchored(page, expected.page)?;
    if generation != expected.generation {
        return Err(Bad::Generation(generation));
    }
    Ok(checked)
}

/// Checks CRC and number only; returns the page and the generation its
/// header names (for the meta pages, whose generation nothing else
/// records).
pub(crate) fn check_unanchored(page: Bytes, number: PageNo) -> Result<(Checked, u64), Bad> {
    assert_eq!(page.len(), PAGE_BYTES);
    let crc = u32::from_le_bytes(page[..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&page[4..]) != crc {
        return Err(Bad::Crc);
    }
    let found = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    if found != number {
        return Err(Bad::Number(found));
    }
    let kind = Kind::from_code(page[16]).ok_or(Bad::Kind(page[16]))?;
    let count = usize::from(u16::from_le_bytes(page[18..20].try_into().expect("2 bytes")));
    let generation = u64::from_le_bytes(page[8..16].try_into().expect("8 bytes"));
    Ok((Checked { kind, count, body: page.slice(HEADER_BYTES..) }, generation))
}

/// Reads a page's body field by field.
pub(crate) struct Reader {
    body: Bytes,
    at: usize,
}

impl Reader {
    pub(crate) fn new(body: Bytes) -> Reader {
        Reader { body, at: 0 }
    }

    /// The next `n` bytes, borrowed.
    fn next(&mut self, n: usize) -> Result<&[u8], Bad> {
        let start = self.at;
        let end =
            start.checked_add(n).filter(|&e| e <= self.body.len()).ok_or(Bad::Layout("an entry runs past the page"))?;
        self.at = end;
        Ok(&self.body[start..end])
    }

    /// The next `n` bytes, as a slice sharing the page (a reference count
    /// taken: fields read as integers use [`Reader::next`] instead).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, Bad> {
        let start = self.at;
        self.next(n)?;
        Ok(self.body.slice(start..self.at))
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.next(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Bad> {
        Ok(u16::from_le_bytes(self.next(2)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(self.next(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(self.next(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn page_ref(&mut self) -> Result<PageRef, Bad> {
        Ok(PageRef { page: self.u32()?, generation: self.u64()? })
    }
}

/// Decodes a checked tree page.
pub(crate) fn node(page: Checked) -> Result<Node, Bad> {
    match page.kind {
        Kind::Leaf => Ok(Node::Leaf(Leaf::decode(page.body, page.count)?)),
        Kind::Branch => {
            let mut r = Reader::new(page.body);
            if page.count == 0 {
                return Err(Bad::Layout("a branch without children"));
            }
            let first = r.page_ref()?;
            let mut rest: Vec<(Bytes, PageRef)> = Vec::with_capacity(page.count - 1);
            for _ in 1..page.count {
                let key_len = usize::from(r.u16()?);
                let key = r.take(key_len)?;
                if rest.last().is_some_and(|(p, _)| *p >= key) {
                    return Err(Bad::Layout("branch keys out of order"));
                }
                rest.push((key, r.page_ref()?));
            }
            Ok(Node::branch(first, rest))
        }
        other => Err(Bad::Kind(other as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(page: Page, no: PageNo, generation: u64) -> Bytes {
        let mut out = vec![0xaa; PAGE_BYTES];
        page.seal(no, generation, &mut out);
        Bytes::from(out)
    }

    #[test]
    fn leaves_and_branches_round_trip_and_every_flipped_bit_is_caught() {
        let entries = vec![
            (Bytes::from_static(b"a"), Stored::Inline(Bytes::from_static(b"1"))),
            (Bytes::from_static(b"b"), Stored::Overflow { len: 9000, index: PageRef { page: 9, generation: 3 } }),
        ];
        let at = PageRef { page: 7, generation: 4 };
        let page = sealed(leaf_page(&new_entries(&entries), None).0, 7, 4);
        assert_eq!(node(check(page.clone(), at).unwrap()).unwrap(), Node::leaf(&entries));
        for bit in [0, 40, 130, 200, 8 * PAGE_BYTES - 1] {
            let mut bad = page.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(check(Bytes::from(bad), at).err(), Some(Bad::Crc), "bit {bit}");
        }
        assert_eq!(check(page.clone(), PageRef { page: 8, generation: 4 }).err(), Some(Bad::Number(7)));
        assert_eq!(check(page, PageRef { page: 7, generation: 5 }).err(), Some(Bad::Generation(4)));

        let first = PageRef { page: 2, generation: 1 };
        let rest = vec![(Bytes::from_static(b"m"), PageRef { page: 3, generation: 2 })];
        let page = sealed(branch_page(first, &rest).freeze(), 11, 2);
        let node = node(check(page, PageRef { page: 11, generation: 2 }).unwrap()).unwrap();
        assert_eq!(node, Node::branch(first, rest));
    }

    /// A page whose CRC holds but whose leaf layout does not (a writer's
    /// bug, or a crafted file) is a typed error, never a panic.
    #[test]
    fn a_malformed_leaf_is_a_layout_error() {
        let entries = vec![
            (Bytes::from_static(b"a"), Stored::Inline(Bytes::from_static(b"12"))),
            (Bytes::from_static(b"b"), Stored::Overflow { len: 9000, index: PageRef { page: 9, generation: 3 } }),
        ];
        let (good, leaf) = leaf_page(&new_entries(&entries), None);
        let body = || good.bytes[HEADER_BYTES..].to_vec();
        // The leaf built while encoding is the one decoding finds.
        let decoded = Leaf::decode(Bytes::from(body()), 2).unwrap();
        assert_eq!((&decoded.starts, &decoded.heads), (&leaf.starts, &leaf.heads));
        let decode = |body: Vec<u8>, count| Leaf::decode(Bytes::from(body), count).map(|_| ());
        let mut long_key = body();
        long_key[..2].copy_from_slice(&60_000u16.to_le_bytes());
        assert_eq!(decode(long_key, 2), Err(Bad::Layout("an entry runs past the page")));
        let mut long_value = body();
        long_value[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(long_value, 2), Err(Bad::Layout("an entry runs past the page")));
        let mut storage = body();
        storage[2] = 2;
        assert_eq!(decode(storage, 2), Err(Bad::Layout("unknown value storage")));
        let mut order = body();
        order[7] = b'c'; // "c" before "b"
        assert_eq!(decode(order, 2), Err(Bad::Layout("leaf keys out of order")));
        assert_eq!(decode(body(), 3), Err(Bad::Layout("an entry runs past the page")));
    }

    proptest::proptest! {
        /// A leaf's `partition` and `find` agree with a plain search over
        /// its keys, and a leaf written from a mix of kept and new entries
        /// holds exactly them, in place.
        #[test]
        fn leaf_searches_and_kept_runs_agree_with_plain_ones(
            keys in proptest::collection::btree_set(proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(0xffu8), proptest::num::u8::ANY], 0..12), 1..40),
            probes in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..20),
            keep in proptest::collection::vec(proptest::bool::ANY, 40),
        ) {
            let keys: Vec<Bytes> = keys.into_iter().map(Bytes::from).collect();
            let entries: Vec<(Bytes, Stored)> =
                keys.iter().map(|k| (k.clone(), Stored::Inline(Bytes::from(vec![k.len() as u8; k.len() % 5])))).collect();
            let (_, leaf) = leaf_page(&new_entries(&entries), None);
            for probe in probes.iter().map(|p| &p[..]).chain(keys.iter().map(|k| &k[..])) {
                proptest::prop_assert_eq!(leaf.partition(probe), keys.partition_point(|k| &k[..] < probe));
                proptest::prop_assert_eq!(leaf.find(probe), keys.iter().position(|k| &k[..] == probe));
            }
            // Rewrite it keeping some entries (runs of them) and giving the
            // others new values.
            let mixed: Vec<Entry> = (0..keys.len())
                .map(|i| match keep[i] {
                    true => Entry::Kept(i),
                    false => Entry::New(&keys[i], Value::Inline(b"new")),
                })
                .collect();
            let (_, rewritten) = leaf_page(&mixed, Some(&leaf));
            let decoded = Leaf::decode(rewritten.body.clone(), keys.len()).unwrap();
            proptest::prop_assert_eq!((&decoded.starts, &decoded.heads), (&rewritten.starts, &rewritten.heads));
            for (i, key) in keys.iter().enumerate() {
                let (k, v) = rewritten.entry(i);
                proptest::prop_assert_eq!(&k, key);
                let want = if keep[i] { entries[i].1.clone() } else { Stored::Inline(Bytes::from_static(b"new")) };
                proptest::prop_assert_eq!(v, want);
            }
        }

        /// Any body decodes to an error or to a leaf whose every key and
        /// value can be read, in order.
        #[test]
        fn any_leaf_body_decodes_or_errs(
            body in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(1u8), proptest::num::u8::ANY], 0..200),
            count in 0usize..12,
        ) {
            if let Ok(leaf) = Leaf::decode(Bytes::from(body), count) {
                proptest::prop_assert_eq!(leaf.len(), count);
                let entries = leaf.entries();
                proptest::prop_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
                for (i, (k, _)) in entries.iter().enumerate() {
                    proptest::prop_assert_eq!(leaf.find(k), Some(i));
                }
            }
        }

        /// Where a key falls by the heads is where it falls among the keys
        /// themselves, in a leaf's search (found or not) and a branch's
        /// (which child): keys over all byte values (0, 1 and 0xff
        /// weighted) with shared prefixes and keys that are prefixes of
        /// others, probes derived from the keys (truncated, extended with
        /// zeros, last byte bumped) and random ones.
        #[test]
        fn heads_agree_with_a_plain_search_over_wide_keys(
            keys in proptest::collection::btree_set(
                proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(0xffu8), proptest::strategy::Just(1u8), proptest::num::u8::ANY], 0..30), 0..60),
            extra in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..30), 0..20),
            common in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(0xffu8), proptest::num::u8::ANY], 0..20),
            cut in 0usize..40,
        ) {
            let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| [&common[..], &k[..]].concat()).collect();
            let heads = Heads::new(keys.iter().map(|k| &k[..]));
            let first = keys.first().map(|k| &k[..]);
            let mut probes: Vec<Vec<u8>> = extra.clone();
            probes.extend(extra.iter().map(|e| [common.as_slice(), e].concat()));
            for k in &keys {
                probes.push(k.clone());
                probes.push(k[..cut.min(k.len())].to_vec());
                probes.push([k.as_slice(), &[0u8; 9]].concat());
                probes.push([k.as_slice(), &[0u8]].concat());
                let mut bumped = k.clone();
                if let Some(b) = bumped.last_mut() { *b = b.wrapping_add(1); }
                probes.push(bumped);
                probes.push([common.as_slice(), &k[..cut.min(k.len())]].concat());
            }
            for probe in probes {
                let (lo, hi) = heads.span(first, &probe);
                proptest::prop_assert!(lo <= hi && hi <= keys.len());
                proptest::prop_assert!(keys[..lo].iter().all(|k| *k < probe));
                proptest::prop_assert!(keys[hi..].iter().all(|k| *k > probe));
                let plain = keys.partition_point(|k| *k <= probe);
                proptest::prop_assert_eq!(lo + keys[lo..hi].partition_point(|k| *k <= probe), plain);
                let found = keys[lo..hi].binary_search(&probe).map(|i| lo + i).ok();
                proptest::prop_assert_eq!(found, keys.binary_search(&probe).ok());
            }
        }
    }
}
