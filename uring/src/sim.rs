//! The simulated disk: in memory, deterministic from a seed. Its fault
//! model is the one every durability claim of ringkv rests on
//! (DESIGN.md, "The fault model"):
//!
//! - **Power cut.** Every data call (write, sync, allocate, read, directory
//!   sync) is numbered; a power cut can be set at a call number, and from
//!   then on every call fails with `EIO`. [`SimStorage::after_power_cut`]
//!   yields the disk as it comes back: each write not covered by a completed
//!   sync of its file is dropped, kept, torn to a prefix of whole 512-byte
//!   sectors, or kept as a scatter of its sectors, as the seed decides.
//! - **Strict torn sectors** ([`SimStorage::strict`]): a sector being
//!   written when the power went comes back as garbage, or unreadable (a
//!   read touching it fails with `EIO` until it is written again). A
//!   rewrite makes it readable at once, even if a power cut then loses
//!   the rewrite: the sector reads its old bytes again, as a sector whose
//!   read error was transient does (review of seed 15981: a meta page
//!   that read as damaged at one open and whole at a later one).
//! - **Directory entries.** Creating, renaming and removing files and
//!   creating directories are durable only once their directory is synced:
//!   a power cut keeps a prefix (by the seed) of each directory's unsynced
//!   operations, in order, as a journaling file system would, and nothing
//!   inside a directory whose own entry was lost.
//! - **Failed sync.** A sync can be made to fail (EIO, ...). The writes it
//!   was to make durable then reach the disk only in part (dropped, torn or
//!   kept, by the seed), and are no longer pending: a later sync succeeds
//!   without them. Reads still see them, as a page cache whose writeback
//!   failed does, until [`File::sync_and_evict`] drops the cache. A failed
//!   directory sync likewise keeps a prefix of the directory's operations
//!   on the disk and loses the rest for good, while the namespace still
//!   shows them; and every later sync of that directory fails too, until
//!   the power cut (a remount). That is what file systems do: ext4 aborts
//!   its journal on a failed metadata write, XFS shuts down, btrfs turns
//!   read-only; none goes on to persist later operations on top of lost
//!   ones (a rename whose source the disk never saw would leave one file
//!   under two names).
//! - **Concurrent syncs** on the commit queue complete in any order (by
//!   the seed). On a buffered file a writeback error hits every overlapping
//!   sync's data but is reported to only one of them, at random: the others
//!   succeed.
//! - **O_DIRECT** ([`SimStorage::pipelined`]): files report `is_direct`,
//!   offsets and lengths must be block-aligned, and the commit queue lets
//!   syncs overlap.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::buf::IoBuf;
use crate::constants::{BLOCK_BYTES, COMMIT_BUFFERS, PIPELINE_DEPTH, SECTOR_BYTES};
use crate::error::{Error, Result};
use crate::queue::{is_last, CommitEvent, CommitQueue};
use crate::storage::{Backend, DirLock, File, OpenMode, Storage};

/// A tiny deterministic generator (SplitMix64), so one seed replays a run.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }
}

#[derive(Debug, Default, Clone)]
struct SimFileData {
    /// What reads see: every completed write (a page cache).
    cache: Vec<u8>,
    /// What the disk holds for sure.
    durable: Vec<u8>,
    /// Writes a sync would make durable, in order.
    pending: Vec<(u64, Vec<u8>)>,
    /// Sectors a torn write left unreadable (strict mode).
    unreadable: BTreeSet<u64>,
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

/// What a name in the namespace is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

/// A directory operation not yet made durable by a sync of its directory.
#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, Node),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf, Node),
}

fn apply(names: &mut BTreeMap<PathBuf, Node>, op: &DirOp) {
    match op {
        DirOp::Link(path, node) => {
            names.insert(path.clone(), *node);
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
        DirOp::Rename(from, to, node) => {
            names.remove(from);
            names.insert(to.clone(), *node);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_owned()
}

#[derive(Debug)]
struct SimState {
    inodes: HashMap<u64, SimFileData>,
    /// The namespace as programs see it.
    names: BTreeMap<PathBuf, Node>,
    /// The namespace as the disk holds it for sure.
    durable_names: BTreeMap<PathBuf, Node>,
    /// Per directory, its operations since it was last synced.
    dir_ops: BTreeMap<PathBuf, Vec<DirOp>>,
    /// Directories whose sync failed: every later sync of one fails too,
    /// until the power cut (a remount).
    broken_dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Shared (reader) locks held, by lock file.
    shared_locks: BTreeMap<PathBuf, usize>,
    next_inode: u64,
    calls: u64,
    power_cut_at: Option<u64>,
    powered_off: bool,
    faults: BTreeMap<u64, i32>,
    /// Per file: how many of its data calls pass before one fails, and the errno.
    file_faults: BTreeMap<PathBuf, (u64, i32)>,
    /// Decides what failed syncs leave and the order of concurrent syncs.
    rng: SimRng,
}

impl SimState {
    fn new(seed: u64) -> SimState {
        let root: BTreeMap<PathBuf, Node> = [(PathBuf::from("/"), Node::Dir)].into();
        SimState {
            inodes: HashMap::new(),
            names: root.clone(),
            durable_names: root,
            dir_ops: BTreeMap::new(),
            broken_dirs: BTreeSet::new(),
            locks: BTreeSet::new(),
            shared_locks: BTreeMap::new(),
            next_inode: 0,
            calls: 0,
            power_cut_at: None,
            powered_off: false,
            faults: BTreeMap::new(),
            file_faults: BTreeMap::new(),
            rng: SimRng::new(seed),
        }
    }

    /// Counts one data call and decides whether it fails.
    fn tick(&mut self) -> std::result::Result<(), io::Error> {
        self.calls += 1;
        if self.power_cut_at == Some(self.calls) {
            self.powered_off = true;
        }
        if self.powered_off {
            return Err(io::Error::other("simulated power cut"));
        }
        if let Some(errno) = self.faults.remove(&self.calls) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// [`SimState::tick`] for a call on the file or directory at `path`:
    /// a fault set for it with [`SimStorage::fail_file_call`] counts too.
    fn tick_on(&mut self, path: &Path) -> std::result::Result<(), io::Error> {
        self.tick()?;
        if let Some((skip, errno)) = self.file_faults.get_mut(path) {
            if *skip == 0 {
                let errno = *errno;
                self.file_faults.remove(path);
                return Err(io::Error::from_raw_os_error(errno));
            }
            *skip -= 1;
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.names.get(path) == Some(&Node::Dir)
    }

    fn log(&mut self, dir: PathBuf, op: DirOp) {
        apply(&mut self.names, &op);
        self.dir_ops.entry(dir).or_default().push(op);
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.inodes.insert(self.next_inode, SimFileData::default());
        self.next_inode
    }
}

/// How a simulated disk behaves.
#[derive(Clone, Copy, Debug, Default)]
struct SimConfig {
    pipelined: bool,
    strict: bool,
}

/// The simulated disk. Clones share one disk.
#[derive(Clone, Debug)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    config: SimConfig,
}

impl Default for SimStorage {
    fn default() -> SimStorage {
        SimStorage::new()
    }
}

impl SimStorage {
    /// An empty disk holding only the root directory `/`.
    pub fn new() -> SimStorage {
        SimStorage { state: Arc::new(Mutex::new(SimState::new(0))), config: SimConfig::default() }
    }

    /// The same disk with files that behave as O_DIRECT (block-aligned I/O)
    /// and a commit queue whose syncs overlap and complete in any order.
    pub fn pipelined(mut self, pipelined: bool) -> SimStorage {
        self.config.pipelined = pipelined;
        self
    }

    /// The same disk where a power cut can leave torn sectors garbage or
    /// unreadable.
    pub fn strict(mut self, strict: bool) -> SimStorage {
        self.config.strict = strict;
        self
    }

    /// The same disk, with `seed` deciding what failed syncs leave behind
    /// and the order concurrent syncs complete in.
    pub fn seeded(self, seed: u64) -> SimStorage {
        self.lock_state().rng = SimRng::new(seed);
        self
    }

    fn lock_state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().expect("sim state lock")
    }

    /// How many data calls have been made so far.
    pub fn calls(&self) -> u64 {
        self.lock_state().calls
    }

    /// Cuts the power when the data call numbered `call` (counting from 1
    /// since the disk was made) is made; that call and all later ones fail.
    pub fn power_cut_at(&self, call: u64) {
        self.lock_state().power_cut_at = Some(call);
    }

    /// Cuts the power now.
    pub fn power_cut(&self) {
        self.lock_state().powered_off = true;
    }

    /// Whether the power is off.
    pub fn is_powered_off(&self) -> bool {
        self.lock_state().powered_off
    }

    /// Makes data call number `call` fail with `errno` (e.g. `libc::EIO`, `libc::ENOSPC`).
    pub fn fail_call(&self, call: u64, errno: i32) {
        self.lock_state().faults.insert(call, errno);
    }

    /// Drops every fault set with [`SimStorage::fail_call`] or
    /// [`SimStorage::fail_file_call`] that has not been hit yet.
    pub fn clear_faults(&self) {
        let mut state = self.lock_state();
        state.faults.clear();
        state.file_faults.clear();
    }

    /// Whether a directory sync failed: its file system then refuses to
    /// persist that directory until a remount ([`SimStorage::power_cut`]
    /// and [`SimStorage::after_power_cut`]).
    pub fn needs_remount(&self) -> bool {
        !self.lock_state().broken_dirs.is_empty()
    }

    /// Lets `skip` more data calls on the file at `path` (or syncs of the
    /// directory at `path`) pass, then fails the next one with `errno`.
    /// Unlike [`SimStorage::fail_call`], calls on other files (a background
    /// thread's) do not move it.
    pub fn fail_file_call(&self, path: &Path, skip: u64, errno: i32) {
        self.lock_state().file_faults.insert(path.to_owned(), (skip, errno));
    }

    /// The disk as it comes back after a power cut: synced bytes intact;
    /// every unsynced write dropped, kept, torn to a sector prefix or
    /// scattered by sector (and in strict mode, a torn sector garbage or
    /// unreadable); of each directory's unsynced operations a prefix; all
    /// as `seed` decides. Locks are released.
    pub fn after_power_cut(&self, seed: u64) -> SimStorage {
        let state = self.lock_state();
        let mut rng = SimRng::new(seed);
        let mut names = state.durable_names.clone();
        for (dir, ops) in &state.dir_ops {
            if state.broken_dirs.contains(dir) {
                continue; // its file system stopped persisting it
            }
            let keep = rng.below(ops.len() as u64 + 1) as usize;
            for op in &ops[..keep] {
                apply(&mut names, op);
            }
        }
        // An entry whose directory did not survive is gone with it.
        let mut orphans: Vec<PathBuf> =
            names.keys().filter(|p| p.parent().is_some_and(|d| names.get(d) != Some(&Node::Dir))).cloned().collect();
        while !orphans.is_empty() {
            for path in &orphans {
                names.remove(path);
            }
            orphans = names
                .keys()
                .filter(|p| p.parent().is_some_and(|d| names.get(d) != Some(&Node::Dir)))
                .cloned()
                .collect();
        }
        let mut inodes = HashMap::new();
        for node in names.values() {
            let Node::File(inode) = *node else { continue };
            let file = &state.inodes[&inode];
            let mut image = file.durable.clone();
            let mut unreadable = file.unreadable.clone();
            for (offset, bytes) in &file.pending {
                survive(&mut rng, &mut image, &mut unreadable, *offset, bytes, self.config.strict);
            }
            inodes.insert(inode, SimFileData { cache: image.clone(), durable: image, pending: Vec::new(), unreadable });
        }
        let mut next = SimState::new(rng.next_u64());
        next.inodes = inodes;
        next.durable_names = names.clone();
        next.names = names;
        next.next_inode = state.next_inode;
        SimStorage { state: Arc::new(Mutex::new(next)), config: self.config }
    }
}

/// Applies what a power cut (or a failed writeback) leaves of one write.
fn survive(
    rng: &mut SimRng,
    image: &mut Vec<u8>,
    unreadable: &mut BTreeSet<u64>,
    offset: u64,
    bytes: &[u8],
    strict: bool,
) {
    let sector = SECTOR_BYTES as u64;
    // Sector boundaries in file offsets that fall inside the write.
    let mut cuts = vec![0usize];
    let mut next = (offset / sector + 1) * sector;
    while next < offset + bytes.len() as u64 {
        cuts.push((next - offset) as usize);
        next += sector;
    }
    cuts.push(bytes.len());
    let pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let mut tear = |rng: &mut SimRng, image: &mut Vec<u8>, (start, end): (usize, usize)| {
        let at = offset + start as u64;
        if rng.below(2) == 0 {
            let garbage: Vec<u8> = (start..end).map(|_| rng.next_u64() as u8).collect();
            write_into(image, at, &garbage);
        } else {
            if image.len() < at as usize + (end - start) {
                image.resize(at as usize + (end - start), 0);
            }
            unreadable.insert(at / sector);
        }
    };
    match rng.below(4) {
        0 => {}
        1 => write_into(image, offset, bytes),
        2 => {
            let keep = rng.below(pieces.len() as u64 + 1) as usize;
            for &(start, end) in &pieces[..keep] {
                write_into(image, offset + start as u64, &bytes[start..end]);
            }
            if strict && keep < pieces.len() && rng.below(2) == 0 {
                tear(rng, image, pieces[keep]);
            }
        }
        _ => {
            for &piece in &pieces {
                match rng.below(if strict { 5 } else { 2 }) {
                    0 => write_into(image, offset + piece.0 as u64, &bytes[piece.0..piece.1]),
                    1 => {}
                    _ if rng.below(2) == 0 => write_into(image, offset + piece.0 as u64, &bytes[piece.0..piece.1]),
                    _ => tear(rng, image, piece),
                }
            }
        }
    }
}

fn not_found(op: &'static str, path: &Path) -> Error {
    Error::io(op, path, None, io::Error::from(io::ErrorKind::NotFound))
}

impl Storage for SimStorage {
    fn backend(&self) -> Backend {
        Backend::Simulated
    }

    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn File>> {
        let mut state = self.lock_state();
        if !state.is_dir(&parent_of(path)) {
            return Err(not_found("open", path));
        }
        let inode = match (state.names.get(path).copied(), mode) {
            (Some(Node::File(inode)), _) => inode,
            (Some(Node::Dir), _) => {
                return Err(Error::io("open", path, None, io::Error::from_raw_os_error(libc::EISDIR)))
            }
            (None, OpenMode::Existing | OpenMode::ExistingBuffered) => return Err(not_found("open", path)),
            (None, OpenMode::Create) => {
                let inode = state.new_inode();
                state.log(parent_of(path), DirOp::Link(path.to_owned(), Node::File(inode)));
                inode
            }
        };
        Ok(Arc::new(SimFile { storage: self.clone(), path: path.to_owned(), inode }))
    }

    fn create_dir(&self, path: &Path) -> Result<()> {
        let mut state = self.lock_state();
        match state.names.get(path) {
            Some(Node::Dir) => return Ok(()),
            Some(Node::File(_)) => {
                return Err(Error::io("mkdir", path, None, io::Error::from_raw_os_error(libc::EEXIST)))
            }
            None => {}
        }
        if !state.is_dir(&parent_of(path)) {
            return Err(not_found("mkdir", path));
        }
        state.log(parent_of(path), DirOp::Link(path.to_owned(), Node::Dir));
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        Ok(self.lock_state().names.contains_key(path))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let state = self.lock_state();
        if !state.is_dir(path) {
            return Err(not_found("readdir", path));
        }
        let children = state.names.keys().filter(|p| p.parent() == Some(path));
        Ok(children.filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        let mut state = self.lock_state();
        if !matches!(state.names.get(path), Some(Node::File(_))) {
            return Err(not_found("unlink", path));
        }
        // The inode stays: a power cut may bring the name back.
        state.log(parent_of(path), DirOp::Unlink(path.to_owned()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut state = self.lock_state();
        let Some(node @ Node::File(_)) = state.names.get(from).copied() else {
            return Err(not_found("rename", from));
        };
        assert_eq!(parent_of(from), parent_of(to), "the simulated disk renames within a directory");
        state.log(parent_of(from), DirOp::Rename(from.to_owned(), to.to_owned(), node));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        let mut guard = self.lock_state();
        let state = &mut *guard;
        if let Err(e) = state.tick_on(path) {
            if !state.powered_off {
                // The directory's writeback failed: a prefix of its operations
                // reached the disk, the rest are lost to it (the namespace
                // still shows them), and no later sync brings them back.
                // The file system stays broken there: no later operation
                // of the directory reaches the disk, and its syncs say so.
                let ops = state.dir_ops.remove(path).unwrap_or_default();
                let keep = state.rng.below(ops.len() as u64 + 1) as usize;
                for op in &ops[..keep] {
                    apply(&mut state.durable_names, op);
                }
                state.broken_dirs.insert(path.to_owned());
            }
            return Err(Error::io("fsync", path, None, e));
        }
        if !state.is_dir(path) {
            return Err(not_found("fsync", path));
        }
        if state.broken_dirs.contains(path) {
            return Err(Error::io("fsync", path, None, io::Error::from_raw_os_error(libc::EIO)));
        }
        for op in state.dir_ops.remove(path).unwrap_or_default() {
            apply(&mut state.durable_names, &op);
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> Result<DirLock> {
        let mut state = self.lock_state();
        if !state.is_dir(&parent_of(path)) {
            return Err(not_found("open", path));
        }
        if state.shared_locks.get(path).is_some_and(|&n| n > 0) || !state.locks.insert(path.to_owned()) {
            return Err(Error::Locked { path: path.to_owned(), pid: std::process::id() });
        }
        if !state.names.contains_key(path) {
            let inode = state.new_inode();
            state.log(parent_of(path), DirOp::Link(path.to_owned(), Node::File(inode)));
        }
        Ok(Box::new(SimLock { storage: self.clone(), path: path.to_owned() }))
    }

    fn lock_shared(&self, path: &Path) -> Result<DirLock> {
        let mut state = self.lock_state();
        if state.locks.contains(path) {
            return Err(Error::Locked { path: path.to_owned(), pid: std::process::id() });
        }
        if !state.names.contains_key(path) {
            return Ok(Box::new(()));
        }
        *state.shared_locks.entry(path.to_owned()).or_default() += 1;
        Ok(Box::new(SimSharedLock { storage: self.clone(), path: path.to_owned() }))
    }

    fn commit_queue(&self) -> Result<Box<dyn CommitQueue>> {
        Ok(Box::new(SimQueue::new(self.clone())))
    }
}

struct SimLock {
    storage: SimStorage,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.storage.lock_state().locks.remove(&self.path);
    }
}

struct SimSharedLock {
    storage: SimStorage,
    path: PathBuf,
}

impl Drop for SimSharedLock {
    fn drop(&mut self) {
        let mut state = self.storage.lock_state();
        if let Some(n) = state.shared_locks.get_mut(&self.path) {
            *n -= 1;
        }
    }
}

/// An open file of the simulated disk.
struct SimFile {
    storage: SimStorage,
    path: PathBuf,
    inode: u64,
}

impl SimFile {
    /// Runs one data call: counts it, fails it if a fault or the power cut
    /// says so (a failed sync settles what its writes left on the disk),
    /// else applies `f`.
    fn with<T>(&self, op: &'static str, offset: u64, f: impl FnOnce(&mut SimFileData) -> Result<T>) -> Result<T> {
        let strict = self.storage.config.strict;
        let mut guard = self.storage.lock_state();
        let state = &mut *guard;
        let failure = state.tick_on(&self.path).err();
        let data = state.inodes.get_mut(&self.inode).ok_or_else(|| not_found(op, &self.path))?;
        if let Some(e) = failure {
            if op == "fdatasync" && !state.powered_off {
                // The writeback failed: what it wrote is on the disk, the rest
                // is lost; the pages are clean now, so no later sync retries.
                for (offset, bytes) in std::mem::take(&mut data.pending) {
                    survive(&mut state.rng, &mut data.durable, &mut data.unreadable, offset, &bytes, strict);
                }
            }
            let offset = (op != "fdatasync").then_some(offset);
            return Err(Error::io(op, &self.path, offset, e));
        }
        f(data)
    }

    fn check_aligned(&self, offset: u64, len: usize) {
        if self.storage.config.pipelined {
            let block = BLOCK_BYTES;
            assert_eq!(offset % block as u64, 0, "O_DIRECT offset {offset} is not block-aligned");
            assert_eq!(len % block, 0, "O_DIRECT length {len} is not block-aligned");
        }
    }

    fn sync(data: &mut SimFileData) {
        for (offset, bytes) in data.pending.drain(..) {
            write_into(&mut data.durable, offset, &bytes);
        }
        // A grown-but-unwritten tail (allocate) is durable after a sync too.
        if data.durable.len() < data.cache.len() {
            data.durable.resize(data.cache.len(), 0);
        }
    }
}

impl File for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn as_syscalls(&self) -> &dyn File {
        self
    }

    fn is_direct(&self) -> bool {
        self.storage.config.pipelined
    }

    fn size_bytes(&self) -> Result<u64> {
        let state = self.storage.lock_state();
        let data = state.inodes.get(&self.inode).ok_or_else(|| not_found("fstat", &self.path))?;
        Ok(data.cache.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_aligned(offset, buf.len());
        self.with("pread", offset, |data| {
            let file_bytes = data.cache.len() as u64;
            let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= file_bytes);
            let Some(end) = end else {
                return Err(Error::ReadPastEnd { path: self.path.clone(), offset, len: buf.len(), file_bytes });
            };
            let sector = SECTOR_BYTES as u64;
            if let Some(&bad) = data.unreadable.range(offset / sector..end.div_ceil(sector)).next() {
                let e = io::Error::from_raw_os_error(libc::EIO);
                return Err(Error::io("pread", &self.path, bad * sector, e));
            }
            buf.copy_from_slice(&data.cache[offset as usize..end as usize]);
            Ok(())
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_aligned(offset, buf.len());
        self.with("pwrite", offset, |data| {
            write_into(&mut data.cache, offset, buf);
            data.pending.push((offset, buf.to_vec()));
            // Sectors written whole are readable again.
            let sector = SECTOR_BYTES as u64;
            let first = offset.div_ceil(sector);
            let end = (offset + buf.len() as u64) / sector;
            let healed: Vec<u64> = data.unreadable.range(first..end.max(first)).copied().collect();
            for s in healed {
                data.unreadable.remove(&s);
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> Result<()> {
        self.with("fdatasync", 0, |data| {
            SimFile::sync(data);
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> Result<()> {
        self.with("fallocate", len, |data| {
            if (data.cache.len() as u64) < len {
                data.cache.resize(len as usize, 0);
            }
            Ok(())
        })
    }

    fn sync_and_evict(&self) -> Result<()> {
        self.with("fdatasync", 0, |data| {
            SimFile::sync(data);
            data.cache = data.durable.clone();
            Ok(())
        })
    }
}

/// The simulated disk's commit queue: a write happens at submit; syncs are
/// in flight until waited for, and then complete in an order the seed
/// picks. On a buffered file, a sync's writeback error may be reported to
/// another overlapping sync of the file instead (and this one succeeds).
pub(crate) struct SimQueue {
    storage: SimStorage,
    syncs: Vec<(u64, Arc<dyn File>)>,
    /// Writeback errors owed to a sync other than the one that hit them.
    owed: HashMap<u64, Error>,
    ready: VecDeque<CommitEvent>,
    next_ticket: u64,
    unfinished: usize,
}

impl SimQueue {
    fn new(storage: SimStorage) -> SimQueue {
        SimQueue {
            storage,
            syncs: Vec::new(),
            owed: HashMap::new(),
            ready: VecDeque::new(),
            next_ticket: 1,
            unfinished: 0,
        }
    }

    fn below(&self, n: usize) -> usize {
        self.storage.lock_state().rng.below(n as u64) as usize
    }
}

impl CommitQueue for SimQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        (0..COMMIT_BUFFERS).map(|_| IoBuf::plain(len)).collect()
    }

    fn depth(&self, file: &dyn File) -> usize {
        if file.is_direct() {
            PIPELINE_DEPTH
        } else {
            1
        }
    }

    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unfinished += 1;
        let result = file.write_at(offset, &buf[..len]);
        if result.is_ok() {
            self.syncs.push((ticket, file.clone()));
        }
        self.ready.push_back(CommitEvent::Written { ticket, buf, result });
        ticket
    }

    fn wait(&mut self) -> CommitEvent {
        let event = match self.ready.pop_front() {
            Some(event) => event,
            None => {
                assert!(!self.syncs.is_empty(), "wait with nothing in flight");
                let (ticket, file) = self.syncs.remove(self.below(self.syncs.len()));
                let mut result = file.sync_data();
                if let Some(e) = self.owed.remove(&ticket) {
                    result = Err(e);
                } else if let Err(e) = &result {
                    let overlapping: Vec<u64> =
                        self.syncs.iter().filter(|(_, f)| f.path() == file.path()).map(|(t, _)| *t).collect();
                    if !file.is_direct() && !self.storage.is_powered_off() && !overlapping.is_empty() {
                        let pick = self.below(overlapping.len() + 1);
                        if pick < overlapping.len() {
                            self.owed.insert(overlapping[pick], e.clone());
                            result = Ok(());
                        }
                    }
                }
                CommitEvent::Synced { ticket, result }
            }
        };
        if is_last(&event) {
            self.unfinished -= 1;
        }
        event
    }

    fn in_flight(&self) -> usize {
        self.unfinished
    }
}
