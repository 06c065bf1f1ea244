//! The page file: a copy-on-write B+tree of keys → values in 4 KiB pages
//! (`data.db` in the store directory), with two alternating meta pages.
//!
//! A checkpoint folds a sorted run of changes into the tree without
//! overwriting any page the newest durable meta page can reach: it writes
//! the changed leaves and their ancestors to free pages, syncs, then writes
//! the meta page of the next generation into the slot of the older one and
//! syncs again. A crash anywhere in between leaves the previous checkpoint
//! whole. Pages the new tree no longer reaches become free once no reader
//! still reads an older generation.

mod page;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use uring::{AlignedBuf, File, OpenMode, Storage};
use wal::Lsn;

use crate::error::{Error, Result};
pub(crate) use page::PageNo;
pub(crate) use page::PAGE_BYTES;
use page::{Bad, Entry, Kind, Node, Page, PageBuf, PageRef, Stored, Value, BODY_BYTES};

const MAGIC: &[u8; 8] = b"RINGKVPF";
const FORMAT: u32 = 1;
/// Pages 0 and 1 hold the meta pages.
const FIRST_TREE_PAGE: PageNo = 2;
/// What a wiped meta slot holds, over and over: not a page (its CRC
/// fails), so it reads as damaged.
const WIPED: &[u8] = b"ringkv: meta page wiped\n";
/// Consecutive pages written with one call.
const RUN_PAGES_MAX: usize = 64;
/// Pages a checkpoint hands its writer thread at once (4 MiB; a few in
/// the unit tests, so that their checkpoints write in several batches).
/// With one batch queued, one being written and one being made, a
/// checkpoint holds at most three of them.
const FLUSH_PAGES: usize = if cfg!(test) { 7 } else { 1024 };
/// Longest key the tree takes: a leaf or branch then holds at least three.
pub(crate) const TREE_KEY_BYTES_MAX: usize = crate::KEY_BYTES_MAX;
const _: () = assert!(page::INLINE_ENTRY_MAX >= TREE_KEY_BYTES_MAX + 19);
const _: () = assert!(crate::VALUE_BYTES_MAX <= page::INDEX_REFS_MAX * BODY_BYTES);

/// One checkpoint's commit point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) generation: u64,
    pub(crate) root: Option<PageRef>,
    free_map: Option<PageRef>,
    /// Pages [0, high_water) are in use or free; none lies beyond.
    pub(crate) high_water: PageNo,
    /// Every change of the log below it is in the tree.
    pub(crate) lsn: Lsn,
}

impl Meta {
    fn empty() -> Meta {
        Meta { generation: 0, root: None, free_map: None, high_water: FIRST_TREE_PAGE, lsn: Lsn(0) }
    }
}

/// What [`PageFile::stats`] reports.
#[derive(Clone, Debug)]
pub(crate) struct TreeStats {
    pub(crate) file_bytes: u64,
    /// Pages below the high-water mark (meta pages included).
    pub(crate) pages: PageNo,
    /// Of those, free now or once no reader reads an older generation.
    pub(crate) free_pages: usize,
    /// Levels from the root to a leaf (0 for an empty tree).
    pub(crate) height: usize,
    /// Pages the last checkpoint since open wrote.
    pub(crate) last_written: u64,
    pub(crate) meta: Meta,
}

/// What [`PageFile::check`] found.
#[derive(Clone, Debug, Default)]
pub(crate) struct TreeCheck {
    pub(crate) keys: u64,
    pub(crate) pages: u64,
    pub(crate) free_pages: u64,
    pub(crate) height: usize,
    /// Each problem, naming its page.
    pub(crate) problems: Vec<String>,
}

/// The walk of [`PageFile::check`].
struct Checker<'a> {
    pages: &'a PageFile,
    /// Pages reached so far.
    seen: Vec<bool>,
    report: TreeCheck,
}

impl Checker<'_> {
    /// Records a reached page; a page reached twice, or past the
    /// high-water mark, is a problem.
    fn mark(&mut self, at: PageRef) {
        match self.seen.get_mut(at.page as usize) {
            Some(seen) if *seen => self.report.problems.push(format!("page {} is reached twice", at.page)),
            Some(seen) => *seen = true,
            None => self.report.problems.push(format!("page {} lies past the high-water mark", at.page)),
        }
    }

    /// Lists damage; other errors end the check.
    fn damage(&mut self, e: Error) -> Result<()> {
        match e {
            Error::CorruptPage { .. } => {
                self.report.problems.push(e.to_string());
                Ok(())
            }
            e => Err(e),
        }
    }

    /// Checks the subtree at `at`, whose keys lie in [low, high).
    fn visit(&mut self, at: PageRef, low: Option<&Bytes>, high: Option<&Bytes>, depth: usize) -> Result<()> {
        self.mark(at);
        let node = match self.pages.node(at) {
            Ok(node) => node,
            Err(e) => return self.damage(e),
        };
        let inside = |k: &Bytes| low.is_none_or(|l| k >= l) && high.is_none_or(|h| k < h);
        let problem = |what: &str| format!("page {}: {what}", at.page);
        match &*node {
            Node::Leaf(leaf) => {
                let entries = leaf.entries();
                if self.report.height != 0 && self.report.height != depth {
                    self.report.problems.push(problem("a leaf at another depth than the others"));
                }
                self.report.height = depth;
                if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
                    self.report.problems.push(problem("keys out of order"));
                }
                if !entries.iter().all(|(k, _)| inside(k)) {
                    self.report.problems.push(problem("a key outside its parent's bounds"));
                }
                for (_, stored) in &entries {
                    if let Stored::Overflow { index, .. } = stored {
                        self.mark(*index);
                        match self.pages.data_pages(*index) {
                            Ok(data) => data.into_iter().for_each(|r| self.mark(r)),
                            Err(e) => self.damage(e)?,
                        }
                        if let Err(e) = self.pages.value(stored) {
                            self.damage(e)?;
                        }
                    }
                }
                self.report.keys += entries.len() as u64;
            }
            Node::Branch { first, rest, .. } => {
                if !rest.windows(2).all(|w| w[0].0 < w[1].0) || !rest.iter().all(|(k, _)| inside(k)) {
                    self.report.problems.push(problem("separator keys out of order or outside its bounds"));
                }
                let mut lower = low;
                let mut child = *first;
                for (key, next) in rest {
                    self.visit(child, lower, Some(key), depth + 1)?;
                    lower = Some(key);
                    child = *next;
                }
                self.visit(child, lower, high, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// What [`PageFile::open`] found.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The older meta page, if valid (the log must reach back to its LSN).
    pub(crate) older: Option<Meta>,
    /// Why the newer slot was not used, if it failed its checks.
    pub(crate) fell_back: Option<String>,
}

pub(crate) struct PageFile {
    /// Written with O_DIRECT (where the file system allows it).
    file: Arc<dyn File>,
    /// Read through: `file`, or a buffered handle on it (the kernel's page
    /// cache then holds pages the node cache does not).
    reader: Arc<dyn File>,
    path: PathBuf,
    current: RwLock<Arc<Meta>>,
    older: Mutex<Option<Meta>>,
    alloc: Mutex<Alloc>,
    /// Readers per generation: pages freed by generation g are reused only
    /// once no reader reads a generation below g.
    pins: Arc<Mutex<BTreeMap<u64, usize>>>,
    cache: Cache,
    /// Pages (meta page included) the last checkpoint wrote.
    last_written: std::sync::atomic::AtomicU64,
    /// One checkpoint at a time; the first failure once one failed (the
    /// file's state is then unknown: no retry).
    checkpointing: Mutex<Option<String>>,
    /// Checkpoints write their pages on their own thread (the simulated
    /// disk: see `checkpoint`).
    write_in_line: bool,
    /// A meta slot that failed its checks at open, to be wiped before the
    /// first checkpoint writes a page (see `checkpoint`).
    damaged_slot: Mutex<Option<PageNo>>,
}

#[derive(Debug, Default)]
struct Alloc {
    high_water: PageNo,
    /// Free and reusable now, lowest first.
    free: BTreeSet<PageNo>,
    /// Freed by a generation, reusable once no reader reads an older one.
    pending: Vec<(u64, Vec<PageNo>)>,
}

impl Alloc {
    fn take(&mut self) -> PageNo {
        match self.free.pop_first() {
            Some(page) => page,
            None => {
                let page = self.high_water;
                self.high_water = self.high_water.checked_add(1).expect("page numbers exhausted");
                page
            }
        }
    }

    /// Moves pending pages no reader can still reach to `free`.
    fn release(&mut self, oldest_read: Option<u64>) {
        let (ready, held): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|(g, _)| oldest_read.is_none_or(|r| r >= *g));
        self.pending = held;
        for page in ready.into_iter().flat_map(|(_, pages)| pages) {
            assert!(self.free.insert(page), "page {page} freed twice");
        }
    }
}

/// A reader's hold on one generation of the tree.
pub(crate) struct Snapshot {
    pub(crate) meta: Arc<Meta>,
    pins: Arc<Mutex<BTreeMap<u64, usize>>>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().expect("pins lock");
        let count = pins.get_mut(&self.meta.generation).expect("pinned");
        *count -= 1;
        if *count == 0 {
            pins.remove(&self.meta.generation);
        }
    }
}

/// One cached node.
struct Slot {
    /// The generation that wrote the page.
    generation: u64,
    node: Arc<Node>,
    /// What it is charged against the cache's bytes.
    bytes: usize,
    /// Read since the clock hand last passed it.
    referenced: bool,
}

/// A shard of the cache: the nodes, and the clock (pages in the order
/// they came in; the hand is the front).
#[derive(Default)]
struct Shard {
    slots: HashMap<PageNo, Slot>,
    clock: std::collections::VecDeque<PageNo>,
    bytes: usize,
}

/// Decoded nodes by page number (with the generation that wrote them),
/// within a budget of bytes, evicted by CLOCK (second chance: a node read
/// since the hand last passed it is kept for another round).
struct Cache {
    shards: Vec<Mutex<Shard>>,
    bytes_per_shard: usize,
}

/// Bytes a cached node costs: its page, and per entry a leaf's offset
/// and key head (10 bytes) or a branch's key slice, child and head.
fn node_bytes(node: &Node) -> usize {
    PAGE_BYTES
        + 128
        + match node {
            Node::Leaf(leaf) => leaf.len() * 10,
            Node::Branch { rest, .. } => (rest.len() + 1) * 72,
        }
}

impl Cache {
    fn new(bytes: usize) -> Cache {
        let shards = 16;
        Cache { shards: (0..shards).map(|_| Mutex::default()).collect(), bytes_per_shard: bytes / shards }
    }

    fn shard(&self, page: PageNo) -> &Mutex<Shard> {
        &self.shards[page as usize % self.shards.len()]
    }

    fn get(&self, at: PageRef) -> Option<Arc<Node>> {
        let mut shard = self.shard(at.page).lock().expect("cache lock");
        let slot = shard.slots.get_mut(&at.page).filter(|s| s.generation == at.generation)?;
        slot.referenced = true;
        Some(slot.node.clone())
    }

    /// Drops the node of `at`, if cached (for a page freed in the
    /// checkpoint that wrote it: it may be taken again, under the same
    /// generation, by a page of another kind). Rare: a scan of the clock.
    fn forget(&self, at: PageRef) {
        let mut shard = self.shard(at.page).lock().expect("cache lock");
        let shard = &mut *shard;
        if shard.slots.get(&at.page).is_some_and(|s| s.generation == at.generation) {
            let slot = shard.slots.remove(&at.page).expect("checked");
            shard.bytes -= slot.bytes;
            shard.clock.retain(|&p| p != at.page);
        }
    }

    fn put(&self, at: PageRef, node: Arc<Node>) {
        let bytes = node_bytes(&node);
        let mut shard = self.shard(at.page).lock().expect("cache lock");
        let shard = &mut *shard;
        if let Some(old) =
            shard.slots.insert(at.page, Slot { generation: at.generation, node, bytes, referenced: false })
        {
            shard.bytes -= old.bytes; // a newer generation of the page: same place on the clock
        } else {
            shard.clock.push_back(at.page);
        }
        shard.bytes += bytes;
        while shard.bytes > self.bytes_per_shard {
            let Some(page) = shard.clock.pop_front() else { break };
            let slot = shard.slots.get_mut(&page).expect("every page on the clock is cached");
            if std::mem::take(&mut slot.referenced) && page != at.page {
                shard.clock.push_back(page);
            } else {
                shard.bytes -= slot.bytes;
                shard.slots.remove(&page);
            }
        }
    }
}

/// A change to fold in: a key and its new value, or None for a delete;
/// borrowed from the memtable being folded in.
pub(crate) type Change<'a> = (&'a [u8], Option<&'a [u8]>);

impl PageFile {
    /// Opens (creating if missing) the page file at `path`: reads both
    /// meta pages and takes the newer valid one, then its free map.
    ///
    /// # Errors
    /// `CorruptPage` if neither meta page is valid in a non-empty file, or
    /// the free map is damaged; `Storage` for I/O.
    pub(crate) fn open(
        storage: &dyn Storage,
        path: &Path,
        cache_bytes: usize,
        os_cache: bool,
    ) -> Result<(PageFile, Opened)> {
        let existed = storage.exists(path)?;
        let file = storage.open(path, OpenMode::Create)?;
        if !existed {
            // Its directory entry must be durable before any checkpoint in
            // it can be.
            uring::sync_parent(storage, path)?;
        }
        // Whatever a process that died left written but unsynced is made
        // durable, and cached pages dropped, before a meta page is trusted
        // (as the log does): after a failed sync the cache may hold a meta
        // page the device does not (review 12, finding 1).
        file.sync_and_evict()?;
        let reader = match os_cache {
            true => storage.open(path, OpenMode::ExistingBuffered)?,
            false => file.clone(),
        };
        let size = file.size_bytes()?;
        let pages = PageFile {
            file,
            reader,
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Meta::empty())),
            older: Mutex::new(None),
            alloc: Mutex::new(Alloc { high_water: FIRST_TREE_PAGE, ..Alloc::default() }),
            pins: Arc::default(),
            cache: Cache::new(cache_bytes),
            last_written: Default::default(),
            checkpointing: Mutex::new(None),
            write_in_line: storage.backend() == uring::Backend::Simulated,
            damaged_slot: Mutex::new(None),
        };
        let mut slots = Vec::new();
        for slot in 0..2u32 {
            if u64::from(slot + 1) * PAGE_BYTES as u64 > size {
                slots.push(Err(None));
                continue;
            }
            let bytes = match pages.read_page(slot) {
                Ok(bytes) => bytes,
                // A meta write torn by a power cut may leave its sector
                // unreadable: that slot is damaged, the other may be fine.
                Err(Error::Storage(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    slots.push(Err(Some(format!("unreadable ({e})"))));
                    continue;
                }
                Err(e) => return Err(e),
            };
            slots.push(match bytes.iter().all(|&b| b == 0) {
                true => Err(None),
                false => read_meta(bytes, slot).map_err(|bad| Some(bad.to_string())),
            });
        }
        let mut valid: Vec<Meta> = slots.iter().filter_map(|s| s.as_ref().ok().cloned()).collect();
        valid.sort_by_key(|m| std::cmp::Reverse(m.generation));
        let damaged: Vec<String> = slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| s.as_ref().err().and_then(|e| e.as_ref().map(|e| format!("meta page {slot}: {e}"))))
            .collect();
        // A damaged slot is wiped before this file's next checkpoint (only
        // a writer makes one); never a valid one.
        *pages.damaged_slot.lock().expect("damaged slot lock") =
            slots.iter().position(|s| matches!(s, Err(Some(_)))).map(|slot| slot as PageNo);
        let opened = match valid.len() {
            // Slot 0 was never written, so slot 1 held the first
            // checkpoint: its meta write was torn, and the checkpoint
            // before it is the empty tree (the log is kept from LSN 0
            // until a second checkpoint).
            0 if matches!(slots[..], [Err(None), Err(Some(_))]) => {
                let why = damaged.join("; ");
                tracing::warn!(path = %path.display(), "{why}; using the empty tree before the first checkpoint");
                Opened { older: None, fell_back: Some(why) }
            }
            0 if !damaged.is_empty() => {
                return Err(Error::CorruptPage { path: path.to_owned(), page: 0, reason: damaged.join("; ") });
            }
            0 => Opened { older: None, fell_back: None },
            _ => {
                let newest = valid[0].clone();
                // A damaged slot held the newer generation (a torn meta
                // write) or the older one (rot): either way only this one
                // can be trusted.
                let fell_back = damaged.first().cloned();
                if let Some(why) = &fell_back {
                    tracing::warn!(path = %path.display(), "{why}; using the other meta page (generation {})", newest.generation);
                }
                let older = valid.get(1).cloned();
                *pages.current.write().expect("meta lock") = Arc::new(newest.clone());
                *pages.older.lock().expect("older lock") = older.clone();
                let free = pages.read_free_map(&newest)?;
                *pages.alloc.lock().expect("alloc lock") =
                    Alloc { high_water: newest.high_water, free, pending: Vec::new() };
                Opened { older, fell_back }
            }
        };
        Ok((pages, opened))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The newest checkpoint.
    pub(crate) fn meta(&self) -> Arc<Meta> {
        self.current.read().expect("meta lock").clone()
    }

    /// The checkpoint before it, if its meta page is valid.
    pub(crate) fn older_meta(&self) -> Option<Meta> {
        self.older.lock().expect("older lock").clone()
    }

    /// Sizes of the newest checkpoint's tree (reads the leftmost path).
    ///
    /// # Errors
    /// As [`PageFile::get`].
    pub(crate) fn stats(&self) -> Result<TreeStats> {
        let meta = self.meta();
        let mut height = 0;
        let mut at = meta.root;
        while let Some(r) = at {
            height += 1;
            at = match &*self.node(r)? {
                Node::Branch { first, .. } => Some(*first),
                Node::Leaf(..) => None,
            };
        }
        let alloc = self.alloc.lock().expect("alloc lock");
        let free_pages = alloc.free.len() + alloc.pending.iter().map(|(_, p)| p.len()).sum::<usize>();
        Ok(TreeStats {
            file_bytes: self.file.size_bytes()?,
            pages: meta.high_water,
            free_pages,
            height,
            last_written: self.last_written.load(std::sync::atomic::Ordering::Relaxed),
            meta: (*meta).clone(),
        })
    }

    /// Verifies the newest checkpoint's tree: every page's checks (CRC,
    /// number, generation), keys in order and inside their parent's
    /// bounds, large values whole, and every page below the high-water
    /// mark either reachable or free, exactly once. Damage is listed in
    /// the result, not returned as an error, so that all of it is seen.
    ///
    /// # Errors
    /// Storage errors other than damage.
    pub(crate) fn check(&self) -> Result<TreeCheck> {
        let _pin = self.snapshot();
        let meta = self.meta();
        let mut c = Checker { pages: self, seen: vec![false; meta.high_water as usize], report: TreeCheck::default() };
        c.mark(PageRef { page: 0, generation: 0 });
        c.mark(PageRef { page: 1, generation: 0 });
        if let Some(root) = meta.root {
            c.visit(root, None, None, 1)?;
        }
        let free = match meta.free_map {
            Some(map) => {
                c.mark(map);
                match self.data_pages(map) {
                    Ok(pages) => pages.into_iter().for_each(|r| c.mark(r)),
                    Err(e) => c.damage(e)?,
                }
                match self.read_free_map(&meta) {
                    Ok(free) => free,
                    Err(e) => {
                        c.damage(e)?;
                        BTreeSet::new()
                    }
                }
            }
            None => BTreeSet::new(),
        };
        // Below a damaged page the walk could not go: its pages are not
        // reported as lost.
        let walked_all = c.report.problems.is_empty();
        for page in FIRST_TREE_PAGE..meta.high_water {
            match (c.seen[page as usize], free.contains(&page)) {
                (true, true) => c.report.problems.push(format!("page {page} is both in the tree and free")),
                (false, false) if walked_all => {
                    c.report.problems.push(format!("page {page} is neither in the tree nor free"))
                }
                _ => {}
            }
        }
        c.report.free_pages = free.len() as u64;
        c.report.pages = u64::from(meta.high_water);
        Ok(c.report)
    }

    /// Pins the newest generation for a reader.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut pins = self.pins.lock().expect("pins lock");
        let meta = self.meta();
        *pins.entry(meta.generation).or_default() += 1;
        Snapshot { meta, pins: self.pins.clone() }
    }

    /// The value of `key` in `snapshot`, if it has one.
    ///
    /// # Errors
    /// `CorruptPage` naming a page that fails its checks; `Storage`.
    pub(crate) fn get(&self, snapshot: &Snapshot, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(mut at) = snapshot.meta.root else { return Ok(None) };
        loop {
            match &*self.node(at)? {
                Node::Branch { first, rest, heads } => {
                    let (lo, hi) = heads.span(rest.first().map(|(k, _)| &k[..]), key);
                    let i = lo + rest[lo..hi].partition_point(|(k, _)| k[..] <= *key);
                    at = if i == 0 { *first } else { rest[i - 1].1 };
                }
                Node::Leaf(leaf) => {
                    return match leaf.find(key) {
                        Some(i) => Ok(Some(self.value(&leaf.value(i))?)),
                        None => Ok(None),
                    };
                }
            }
        }
    }

    /// Up to `limit` entries of `(start, end)` in `snapshot`, in key order
    /// or, with `from_back`, in reverse.
    ///
    /// # Errors
    /// As [`PageFile::get`].
    pub(crate) fn range(
        &self,
        snapshot: &Snapshot,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        from_back: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(root) = snapshot.meta.root {
            self.collect(root, (start, end), from_back, limit, &mut out)?;
        }
        Ok(out)
    }

    fn collect(
        &self,
        at: PageRef,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        from_back: bool,
        limit: usize,
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let node = self.node(at)?;
        match &*node {
            Node::Leaf(leaf) => {
                let inside = |k: &[u8]| {
                    let after_start = match range.0 {
                        Bound::Included(s) => k >= s,
                        Bound::Excluded(s) => k > s,
                        Bound::Unbounded => true,
                    };
                    let before_end = match range.1 {
                        Bound::Included(e) => k <= e,
                        Bound::Excluded(e) => k < e,
                        Bound::Unbounded => true,
                    };
                    after_start && before_end
                };
                let order: Box<dyn Iterator<Item = usize>> =
                    if from_back { Box::new((0..leaf.len()).rev()) } else { Box::new(0..leaf.len()) };
                for i in order {
                    if out.len() >= limit {
                        break;
                    }
                    let k = leaf.key(i);
                    if inside(k) {
                        out.push((k.to_vec(), self.value(&leaf.value(i))?));
                    }
                }
            }
            Node::Branch { first, rest, .. } => {
                // Child i holds keys in [low_i, low_{i+1}).
                let children: Vec<(Option<&[u8]>, PageRef)> =
                    std::iter::once((None, *first)).chain(rest.iter().map(|(k, r)| (Some(&k[..]), *r))).collect();
                let overlaps = |i: usize| {
                    let low = children[i].0;
                    let high = children.get(i + 1).and_then(|c| c.0);
                    let after_start = match (high, range.0) {
                        (Some(h), Bound::Included(s) | Bound::Excluded(s)) => h > s,
                        _ => true,
                    };
                    let before_end = match (low, range.1) {
                        (Some(l), Bound::Included(e)) => l <= e,
                        (Some(l), Bound::Excluded(e)) => l < e,
                        _ => true,
                    };
                    after_start && before_end
                };
                let order: Vec<usize> =
                    if from_back { (0..children.len()).rev().collect() } else { (0..children.len()).collect() };
                for i in order {
                    if out.len() >= limit {
                        break;
                    }
                    if overlaps(i) {
                        self.collect(children[i].1, range, from_back, limit, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Folds `changes` (sorted by key, each key once) into the tree as
    /// the checkpoint of everything below `lsn`, and makes it durable.
    ///
    /// # Errors
    /// `Storage` (then the file refuses further checkpoints: its state is
    /// unknown and a failed sync is never retried), `CorruptPage`.
    pub(crate) fn checkpoint(&self, changes: &[Change<'_>], lsn: Lsn) -> Result<Meta> {
        let mut failed = self.checkpointing.lock().expect("checkpoint lock");
        if let Some(cause) = &*failed {
            return Err(Error::CheckpointFailed { path: self.path.clone(), cause: cause.clone() });
        }
        debug_assert!(changes.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique keys");
        let old = self.meta();
        let mut alloc = self.alloc.lock().expect("alloc lock");
        let oldest_read = self.pins.lock().expect("pins lock").keys().next().copied();
        alloc.release(oldest_read);
        self.last_written.store(1, std::sync::atomic::Ordering::Relaxed); // the meta page
        let generation = old.generation + 1;
        let result: Result<(Meta, Vec<PageNo>)> = std::thread::scope(|scope| {
            self.wipe_damaged_slot()?;
            // A writer thread writes the pages in batches while the fold
            // makes the next ones, so the disk and the CPU work at once.
            // The fold writes each batch itself where no thread could be
            // spawned, and on the simulated disk, which numbers its calls
            // as they come: two threads calling it would make a seed's run
            // unrepeatable (its cuts and faults must land on the same calls).
            let (sender, batches) = std::sync::mpsc::sync_channel::<Vec<(PageNo, Page)>>(1);
            let (sink, writer) = if self.write_in_line {
                (Sink::Inline, None)
            } else {
                let writer = std::thread::Builder::new().name("ringkv-pages".into()).spawn_scoped(scope, move || {
                    let mut scratch = AlignedBuf::new(FLUSH_PAGES * PAGE_BYTES);
                    batches.into_iter().try_for_each(|batch| self.write_pages(batch, generation, &mut scratch))
                });
                match writer {
                    Ok(writer) => (Sink::Thread(sender), Some(writer)),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "no page writer thread; writing in line");
                        (Sink::Inline, None)
                    }
                }
            };
            let mut w = Writer {
                pages: self,
                generation,
                alloc: &mut alloc,
                out: Vec::new(),
                sink,
                freed: Vec::new(),
                only_child: HashMap::new(),
                failed: None,
            };
            let folded = w.fold(&old, changes, lsn);
            if folded.is_ok() {
                w.flush();
            }
            let Writer { freed, failed, sink, .. } = w;
            // The writer ends once it has written every batch sent: every
            // page is written before the syncs below.
            drop(sink);
            let written = writer.map_or(Ok(()), |w| w.join().expect("the page writer does not panic"));
            let meta = folded?;
            failed.map_or(Ok(()), Err)?;
            written?;
            self.commit(&meta)?;
            Ok((meta, freed))
        });
        match result {
            Ok((meta, freed)) => {
                alloc.pending.push((meta.generation, freed));
                drop(alloc);
                let previous =
                    std::mem::replace(&mut *self.current.write().expect("meta lock"), Arc::new(meta.clone()));
                *self.older.lock().expect("older lock") = Some((*previous).clone());
                Ok(meta)
            }
            Err(e) => {
                *failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Writes pages of a checkpoint (runs of consecutive pages as one
    /// write, the whole batch handed to [`File::write_many`], which keeps
    /// many in flight where the backend can), sealed into `scratch` (grown
    /// if it is too small: a writer keeps one for all its batches). No
    /// meta page reaches them yet.
    fn write_pages(&self, mut out: Vec<(PageNo, Page)>, generation: u64, scratch: &mut AlignedBuf) -> Result<()> {
        self.last_written.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        out.sort_by_key(|(no, _)| *no);
        if scratch.len() < out.len() * PAGE_BYTES {
            *scratch = AlignedBuf::new(out.len() * PAGE_BYTES);
        }
        for (k, (no, page)) in out.iter().enumerate() {
            page.seal(*no, generation, &mut scratch[k * PAGE_BYTES..(k + 1) * PAGE_BYTES]);
        }
        // Runs of consecutive pages: (first page, index of it in `out`, pages).
        let mut runs: Vec<(PageNo, usize, usize)> = Vec::new();
        for (k, (no, _)) in out.iter().enumerate() {
            match runs.last_mut() {
                Some((first, _, n)) if *n < RUN_PAGES_MAX && *first + *n as PageNo == *no => *n += 1,
                _ => runs.push((*no, k, 1)),
            }
        }
        let writes: Vec<(u64, &[u8])> = runs
            .iter()
            .map(|&(first, k, n)| {
                (u64::from(first) * PAGE_BYTES as u64, &scratch[k * PAGE_BYTES..(k + n) * PAGE_BYTES])
            })
            .collect();
        self.file.write_many(&writes)?;
        Ok(())
    }

    /// Wipes (zeros, durably) a meta slot that failed its checks at open.
    ///
    /// It may have held the newest checkpoint and read as damaged only
    /// then (a transient EIO, a torn sector written again later): open
    /// fell back to the other slot, and this checkpoint takes the damaged
    /// one's generation again and writes into pages its tree reaches. Were
    /// that meta page to read fine at a later open (this checkpoint's own
    /// meta write lost to a power cut), it would name pages now holding
    /// other contents under its own generation, which no check catches.
    /// Once wiped it cannot come back; the log is kept back to the
    /// checkpoint open used, so nothing it held is lost. The wiped page
    /// still reads as damaged (`WIPED`: not zeros, which mean "never
    /// written", and which open would take, were the other slot to fail
    /// too, for a file before its first checkpoint: the empty tree).
    fn wipe_damaged_slot(&self) -> Result<()> {
        let mut damaged = self.damaged_slot.lock().expect("damaged slot lock");
        if let Some(slot) = *damaged {
            let mut buf = AlignedBuf::new(PAGE_BYTES);
            for (b, w) in buf.iter_mut().zip(WIPED.iter().cycle()) {
                *b = *w;
            }
            self.file.write_at(u64::from(slot) * PAGE_BYTES as u64, &buf)?;
            self.file.sync_data()?;
            *damaged = None;
        }
        Ok(())
    }

    /// Makes a checkpoint's pages durable, then its meta page: fdatasync,
    /// the meta page into its slot, fdatasync.
    fn commit(&self, meta: &Meta) -> Result<()> {
        self.file.sync_data()?;
        let mut buf = AlignedBuf::new(PAGE_BYTES);
        let slot = (meta.generation & 1) as PageNo;
        meta_page(meta).freeze().seal(slot, meta.generation, &mut buf);
        self.file.write_at(u64::from(slot) * PAGE_BYTES as u64, &buf)?;
        self.file.sync_data()?;
        Ok(())
    }

    fn read_page(&self, page: PageNo) -> Result<Bytes> {
        let mut buf = AlignedBuf::new(PAGE_BYTES);
        self.reader.read_at(u64::from(page) * PAGE_BYTES as u64, &mut buf)?;
        Ok(Bytes::from_owner(Aligned(buf)))
    }

    fn corrupt(&self, page: PageNo, bad: Bad) -> Error {
        Error::CorruptPage { path: self.path.clone(), page: u64::from(page), reason: bad.to_string() }
    }

    fn checked(&self, at: PageRef) -> Result<page::Checked> {
        page::check(self.read_page(at.page)?, at).map_err(|bad| self.corrupt(at.page, bad))
    }

    fn node(&self, at: PageRef) -> Result<Arc<Node>> {
        if let Some(node) = self.cache.get(at) {
            return Ok(node);
        }
        let node = Arc::new(page::node(self.checked(at)?).map_err(|bad| self.corrupt(at.page, bad))?);
        self.cache.put(at, node.clone());
        Ok(node)
    }

    /// The data pages of a large value, from its index page.
    fn data_pages(&self, index: PageRef) -> Result<Vec<PageRef>> {
        let checked = self.checked(index)?;
        if checked.kind != Kind::Index {
            return Err(self.corrupt(index.page, Bad::Kind(checked.kind as u8)));
        }
        let mut r = page::Reader::new(checked.body);
        (0..checked.count).map(|_| r.page_ref().map_err(|bad| self.corrupt(index.page, bad))).collect()
    }

    fn value(&self, stored: &Stored) -> Result<Vec<u8>> {
        match stored {
            Stored::Inline(v) => Ok(v.to_vec()),
            Stored::Overflow { len, index } => {
                let mut value = Vec::with_capacity(*len as usize);
                for at in self.data_pages(*index)? {
                    let checked = self.checked(at)?;
                    let take = (*len as usize - value.len()).min(BODY_BYTES);
                    value.extend_from_slice(&checked.body[..take]);
                }
                if value.len() != *len as usize {
                    return Err(self.corrupt(index.page, Bad::Layout("a large value's pages hold too few bytes")));
                }
                Ok(value)
            }
        }
    }

    fn read_free_map(&self, meta: &Meta) -> Result<BTreeSet<PageNo>> {
        let Some(index) = meta.free_map else { return Ok(BTreeSet::new()) };
        let mut free = BTreeSet::new();
        for (n, at) in self.data_pages(index)?.into_iter().enumerate() {
            let checked = self.checked(at)?;
            let base = n * page::FREE_MAP_PAGE_BITS;
            for (byte, bits) in checked.body.iter().enumerate() {
                for bit in 0..8 {
                    let page = base + byte * 8 + bit;
                    if bits & (1 << bit) != 0 && page < meta.high_water as usize {
                        free.insert(page as PageNo);
                    }
                }
            }
        }
        Ok(free)
    }
}

/// An aligned buffer as the owner of `Bytes`.
struct Aligned(AlignedBuf);

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn meta_page(meta: &Meta) -> PageBuf {
    let mut page = PageBuf::new(Kind::Meta);
    page.put(MAGIC);
    page.put(&FORMAT.to_le_bytes());
    page.put(&(PAGE_BYTES as u32).to_le_bytes());
    page.put_ref(meta.root.unwrap_or(PageRef { page: 0, generation: 0 }));
    page.put_ref(meta.free_map.unwrap_or(PageRef { page: 0, generation: 0 }));
    page.put(&meta.high_water.to_le_bytes());
    page.put(&meta.lsn.0.to_le_bytes());
    page
}

fn read_meta(bytes: Bytes, slot: PageNo) -> std::result::Result<Meta, Bad> {
    let (checked, generation) = page::check_unanchored(bytes, slot)?;
    if checked.kind != Kind::Meta {
        return Err(Bad::Kind(checked.kind as u8));
    }
    if generation & 1 != u64::from(slot) {
        return Err(Bad::Layout("a meta page in the other generation's slot"));
    }
    let mut r = page::Reader::new(checked.body);
    if &r.take(8)?[..] != MAGIC {
        return Err(Bad::Layout("not a ringkv page file (bad magic)"));
    }
    let format = r.u32()?;
    if format != FORMAT || r.u32()? != PAGE_BYTES as u32 {
        return Err(Bad::Layout("unsupported page file format or page size"));
    }
    let some = |r: PageRef| (r.page != 0).then_some(r);
    let root = some(r.page_ref()?);
    let free_map = some(r.page_ref()?);
    let high_water = r.u32()?;
    let lsn = Lsn(r.u64()?);
    let below = |r: Option<PageRef>| r.is_none_or(|r| r.page >= FIRST_TREE_PAGE && r.page < high_water);
    if !below(root) || !below(free_map) {
        return Err(Bad::Layout("the root or free map lies outside the file's pages"));
    }
    Ok(Meta { generation, root, free_map, high_water, lsn })
}

/// One checkpoint's work: new pages and the pages they replace.
struct Writer<'a> {
    pages: &'a PageFile,
    generation: u64,
    alloc: &'a mut Alloc,
    /// Pages made and not yet handed to `sink`.
    out: Vec<(PageNo, Page)>,
    sink: Sink,
    freed: Vec<PageNo>,
    /// New branches with a single child, and that child.
    only_child: HashMap<PageNo, PageRef>,
    /// A write of pages already made failed (written in line).
    failed: Option<Error>,
}

/// Where a checkpoint's batches of pages go.
enum Sink {
    /// To the page writer thread.
    Thread(std::sync::mpsc::SyncSender<Vec<(PageNo, Page)>>),
    /// Written by the fold itself.
    Inline,
    /// Nowhere: a write failed (the writer thread's error is reported
    /// when it is joined, an inline one is in `failed`).
    Stopped,
}

impl Writer<'_> {
    fn fold(&mut self, old: &Meta, changes: &[Change<'_>], lsn: Lsn) -> Result<Meta> {
        let mut level = match old.root {
            Some(root) => self.merge(root, None, changes)?,
            None => self.fresh(changes)?,
        };
        while level.len() > 1 {
            level = self.branches(level);
        }
        let mut root = level.pop().map(|(_, r)| r);
        // A root branch with one child gives way to the child (only new
        // branches can have one child: a root is never left so).
        while let Some(child) = root.and_then(|at| self.only_child.get(&at.page).copied()) {
            let at = root.expect("checked");
            // Not reachable from any meta page: free at once (written
            // already, if a batch of pages went out with it).
            self.out.retain(|(no, _)| *no != at.page);
            self.pages.cache.forget(at);
            self.alloc.free.insert(at.page);
            root = Some(child);
        }
        if let Some(map) = old.free_map {
            self.freed.push(map.page);
            self.freed.extend(self.pages.data_pages(map)?.into_iter().map(|r| r.page));
        }
        let free_map = self.free_map();
        Ok(Meta { generation: self.generation, root, free_map: Some(free_map), high_water: self.alloc.high_water, lsn })
    }

    /// Allocates a page for `page`. Pages are written as they pile up, a
    /// batch at a time, so that a large checkpoint does not hold them all
    /// in memory (they are unreachable until the meta page is written).
    fn page(&mut self, page: Page) -> PageRef {
        let no = self.alloc.take();
        self.out.push((no, page));
        if self.out.len() >= FLUSH_PAGES {
            self.flush();
        }
        PageRef { page: no, generation: self.generation }
    }

    /// Hands the pages made so far to be written.
    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.out);
        match &self.sink {
            // Refused once the writer stopped on an error.
            Sink::Thread(sender) => {
                if sender.send(batch).is_err() {
                    self.sink = Sink::Stopped;
                }
            }
            Sink::Inline => {
                if let Err(e) = self.pages.write_pages(batch, self.generation, &mut AlignedBuf::new(0)) {
                    self.failed = Some(e);
                    self.sink = Sink::Stopped;
                }
            }
            Sink::Stopped => {}
        }
    }

    /// Stores a value: inline, or in data pages listed by an index page.
    fn store<'a>(&mut self, key: &[u8], value: &'a [u8]) -> Result<Value<'a>> {
        assert!(key.len() <= TREE_KEY_BYTES_MAX, "keys are capped");
        if page::fits_inline(key, value.len()) {
            return Ok(Value::Inline(value));
        }
        let chunks: Vec<&[u8]> = value.chunks(BODY_BYTES).collect();
        assert!(chunks.len() <= page::INDEX_REFS_MAX, "values are capped below one index page's reach");
        let mut index = PageBuf::new(Kind::Index);
        for chunk in chunks {
            let mut data = PageBuf::new(Kind::Data);
            data.put(chunk);
            let at = self.page(data.freeze());
            index.put_ref(at);
            index.counted();
        }
        let len = u32::try_from(value.len()).expect("values are capped");
        Ok(Value::Overflow { len, index: self.page(index.freeze()) })
    }

    fn free_value(&mut self, stored: &Stored) -> Result<()> {
        if let Stored::Overflow { index, .. } = stored {
            self.freed.extend(self.pages.data_pages(*index)?.into_iter().map(|r| r.page));
            self.freed.push(index.page);
        }
        Ok(())
    }

    /// Folds `changes` (all within this subtree's key range) into the
    /// subtree at `at`. Returns its replacement: nodes with their least
    /// keys, the first one's key being `low` (the parent's separator).
    fn merge(
        &mut self,
        at: PageRef,
        low: Option<Bytes>,
        changes: &[Change<'_>],
    ) -> Result<Vec<(Option<Bytes>, PageRef)>> {
        let node = self.pages.node(at)?;
        self.freed.push(at.page);
        match &*node {
            Node::Leaf(leaf) => {
                // The leaf's entries that no change touches are copied as
                // its page holds them; each change finds its place by a
                // search, not by comparing every entry before it.
                let mut merged = Vec::with_capacity(leaf.len() + changes.len());
                let mut i = 0;
                for &(ck, cv) in changes {
                    let at = leaf.partition(ck).max(i);
                    merged.extend((i..at).map(Entry::Kept));
                    i = at;
                    if i < leaf.len() && leaf.key(i) == ck {
                        self.free_value(&leaf.value(i))?;
                        i += 1;
                    }
                    if let Some(v) = cv {
                        merged.push(Entry::New(ck, self.store(ck, v)?));
                    }
                }
                merged.extend((i..leaf.len()).map(Entry::Kept));
                Ok(self.leaves(&merged, Some(leaf), low))
            }
            Node::Branch { first, rest, .. } => {
                let mut out = Vec::new();
                let children: Vec<(Option<Bytes>, PageRef)> = std::iter::once((low.clone(), *first))
                    .chain(rest.iter().map(|(k, r)| (Some(k.clone()), *r)))
                    .collect();
                let mut from = 0;
                for (i, (key, child)) in children.iter().enumerate() {
                    let to = match children.get(i + 1) {
                        Some((Some(next), _)) => from + changes[from..].partition_point(|&(k, _)| k < &next[..]),
                        _ => changes.len(),
                    };
                    if from == to {
                        out.push((key.clone(), *child));
                    } else {
                        out.extend(self.merge(*child, key.clone(), &changes[from..to])?);
                    }
                    from = to;
                }
                if let Some(first) = out.first_mut() {
                    first.0 = low;
                }
                Ok(self.branches(out))
            }
        }
    }

    /// Packs entries (kept ones from `from`) into leaves of even fill.
    fn leaves(
        &mut self,
        entries: &[Entry<'_>],
        from: Option<&page::Leaf>,
        low: Option<Bytes>,
    ) -> Vec<(Option<Bytes>, PageRef)> {
        let sizes: Vec<usize> = entries.iter().map(|e| e.bytes(from)).collect();
        let mut out = Vec::new();
        let mut at = 0;
        for count in split_evenly(&sizes, 0) {
            let group = &entries[at..at + count];
            at += count;
            let first = out.is_empty();
            out.push(self.leaf(group, from, first.then(|| low.clone())));
        }
        out
    }

    /// The leaves of a tree that held nothing: the puts of `changes`,
    /// packed by the rule of [`split_evenly`], without a list of every
    /// entry and its size first (for a large first checkpoint those lists
    /// were tens of megabytes of fresh memory, each page of it faulted in
    /// and zeroed).
    fn fresh(&mut self, changes: &[Change<'_>]) -> Result<Vec<(Option<Bytes>, PageRef)>> {
        let puts = || changes.iter().filter_map(|&(k, v)| v.map(|v| (k, v)));
        let mut fill = EvenFill::new(puts().map(|(k, v)| page::new_entry_bytes(k, v.len())).sum(), 0);
        let mut out = Vec::new();
        let mut group: Vec<Entry<'_>> = Vec::new();
        for (k, v) in puts() {
            if fill.add(page::new_entry_bytes(k, v.len())) {
                let first = out.is_empty();
                out.push(self.leaf(&group, None, first.then_some(None)));
                group.clear();
            }
            group.push(Entry::New(k, self.store(k, v)?));
        }
        if !group.is_empty() {
            let first = out.is_empty();
            out.push(self.leaf(&group, None, first.then_some(None)));
        }
        Ok(out)
    }

    /// Writes one leaf of `group` (kept entries from `from`) and caches
    /// it; returns it with its separator: `low` for the first leaf of a
    /// replacement (`Some`), else its own least key.
    fn leaf(
        &mut self,
        group: &[Entry<'_>],
        from: Option<&page::Leaf>,
        low: Option<Option<Bytes>>,
    ) -> (Option<Bytes>, PageRef) {
        // Cached as written: the node shares its page's bytes (a copy of
        // its entries), so it keeps none of the log frames they came from
        // alive; so does its separator, a slice of the page.
        let (page, leaf) = page::leaf_page(group, from);
        let key = low.unwrap_or_else(|| Some(leaf.key_bytes(0)));
        let at = self.page(page);
        self.pages.cache.put(at, Arc::new(Node::Leaf(leaf)));
        (key, at)
    }

    /// Packs children into branches of even fill.
    fn branches(&mut self, children: Vec<(Option<Bytes>, PageRef)>) -> Vec<(Option<Bytes>, PageRef)> {
        let sizes: Vec<usize> = children
            .iter()
            .enumerate()
            .map(|(i, (k, _))| match i {
                0 => page::BRANCH_FIRST_BYTES,
                _ => page::branch_entry_bytes(k.as_deref().unwrap_or_default()),
            })
            .collect();
        let groups = split_evenly(&sizes, page::BRANCH_FIRST_BYTES);
        let mut out = Vec::new();
        let mut children = children.into_iter();
        for count in groups {
            let group: Vec<_> = children.by_ref().take(count).collect();
            let key = group[0].0.clone();
            let first = group[0].1;
            let rest: Vec<(Bytes, PageRef)> =
                group[1..].iter().map(|(k, r)| (k.clone().expect("only the first child has no key"), *r)).collect();
            let at = self.page(page::branch_page(first, &rest).freeze());
            if rest.is_empty() {
                self.only_child.insert(at.page, first);
            }
            let keys: Vec<&[u8]> = rest.iter().map(|(k, _)| &k[..]).collect();
            let rest = pack(&keys).into_iter().zip(rest.iter()).map(|(k, (_, r))| (k, *r)).collect();
            self.pages.cache.put(at, Arc::new(Node::branch(first, rest)));
            out.push((key, at));
        }
        out
    }

    /// Allocates the free map's pages, then fills them: every page below
    /// the high-water mark that the new tree does not reach.
    fn free_map(&mut self) -> PageRef {
        // Enough bitmap pages for the high-water mark after they (and the
        // index page) are allocated.
        let mut bitmaps = Vec::new();
        let index = self.alloc.take();
        while bitmaps.len() * page::FREE_MAP_PAGE_BITS < self.alloc.high_water as usize {
            bitmaps.push(self.alloc.take());
        }
        let mut free: BTreeSet<PageNo> = self.alloc.free.clone();
        free.extend(self.alloc.pending.iter().flat_map(|(_, p)| p.iter().copied()));
        free.extend(self.freed.iter().copied());
        assert!(bitmaps.len() <= page::INDEX_REFS_MAX, "page file too large for one free-map index");
        let mut index_page = PageBuf::new(Kind::Index);
        for (n, no) in bitmaps.iter().enumerate() {
            let mut bits = vec![0u8; BODY_BYTES];
            let base = n * page::FREE_MAP_PAGE_BITS;
            for &p in free.range(base as PageNo..(base + page::FREE_MAP_PAGE_BITS).min(PageNo::MAX as usize) as PageNo)
            {
                let bit = p as usize - base;
                bits[bit / 8] |= 1 << (bit % 8);
            }
            let mut page = PageBuf::new(Kind::FreeMap);
            page.put(&bits);
            self.out.push((*no, page.freeze()));
            index_page.put_ref(PageRef { page: *no, generation: self.generation });
            index_page.counted();
        }
        self.out.push((index, index_page.freeze()));
        PageRef { page: index, generation: self.generation }
    }
}

/// Copies `parts` into one buffer of their own and returns each as a
/// slice of it.
///
/// A checkpoint caches the nodes it writes, and their entries come from
/// the memtable (slices of the log frames that carried them) or from older
/// nodes: cached as they are, a node would keep each whole frame (up to a
/// megabyte) alive for one key of it, and a leaf updated over many
/// checkpoints would keep one frame per update, none of it counted against
/// the cache's budget.
fn pack(parts: &[&[u8]]) -> Vec<Bytes> {
    let arena = Bytes::from(parts.concat());
    let mut at = 0;
    parts
        .iter()
        .map(|part| {
            let slice = arena.slice(at..at + part.len());
            at += part.len();
            slice
        })
        .collect()
}

/// Splits items of `sizes` bytes into the fewest pages of at most
/// `BODY_BYTES` (each page also spending `base`), filled evenly. Returns
/// items per page.
fn split_evenly(sizes: &[usize], base: usize) -> Vec<usize> {
    if sizes.is_empty() {
        return Vec::new();
    }
    let mut fill = EvenFill::new(sizes.iter().sum(), base);
    let mut groups = Vec::new();
    let mut count = 0;
    for &size in sizes {
        if fill.add(size) {
            groups.push(count);
            count = 0;
        }
        count += 1;
    }
    groups.push(count);
    groups
}

/// The rule of [`split_evenly`], one item at a time: items of `total`
/// bytes in all fill the fewest pages that hold them, each page up to the
/// mean fill.
struct EvenFill {
    /// Bytes a page holds.
    limit: usize,
    /// The mean fill: a page that reached it takes no more items.
    target: usize,
    /// Items and bytes in the page being filled.
    count: usize,
    bytes: usize,
}

impl EvenFill {
    fn new(total: usize, base: usize) -> EvenFill {
        let limit = BODY_BYTES - base;
        let pages = total.div_ceil(limit).max(1);
        EvenFill { limit, target: total.div_ceil(pages), count: 0, bytes: 0 }
    }

    /// Adds an item of `size` bytes; returns whether it starts a new page
    /// (the items added before it make one).
    fn add(&mut self, size: usize) -> bool {
        let new = self.count > 0 && (self.bytes + size > self.limit || self.bytes >= self.target);
        if new {
            (self.count, self.bytes) = (0, 0);
        }
        self.count += 1;
        self.bytes += size;
        new
    }
}

#[cfg(test)]
mod tests;
