//! The simulated disk: in memory, deterministic from a seed.
//!
//! Every data call (write, sync, allocate, read) is numbered. A power cut
//! can be set to happen at a call number: from that call on every call
//! fails with `EIO`, as a dead disk would. [`SimStorage::after_power_cut`]
//! then yields the disk as it would come back up: each write not covered by
//! a completed sync of its file is dropped, kept, torn to a prefix of whole
//! 512-byte sectors, or kept as a scatter of its sectors, chosen from the
//! seed. A chosen call can also fail with any errno (EIO, ENOSPC).
//!
//! Directory operations (create, rename, remove) are durable at once; the
//! simulation does not model lost directory entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::buf::IoBuf;
use crate::constants::SECTOR_BYTES;
use crate::error::{Error, Result};
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
    /// What reads see: every completed write.
    current: Vec<u8>,
    /// What survives a power cut for sure: the state at the last sync.
    durable: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

#[derive(Debug, Default)]
struct SimState {
    inodes: HashMap<u64, SimFileData>,
    names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    next_inode: u64,
    calls: u64,
    power_cut_at: Option<u64>,
    powered_off: bool,
    faults: BTreeMap<u64, i32>,
    /// Per file: how many of its data calls pass before one fails, and the errno.
    file_faults: BTreeMap<PathBuf, (u64, i32)>,
}

impl SimState {
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
}

/// The simulated disk. Clones share one disk.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    pipelined: bool,
}

impl SimStorage {
    /// An empty disk.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// The same disk, offering (or not) a pipelined commit queue: writes at
    /// submit, syncs in order when waited for.
    pub fn pipelined(mut self, pipelined: bool) -> SimStorage {
        self.pipelined = pipelined;
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

    /// Lets `skip` more data calls on the file at `path` pass, then fails
    /// the next one with `errno`. Unlike [`SimStorage::fail_call`], calls on
    /// other files (a background thread's) do not move it.
    pub fn fail_file_call(&self, path: &Path, skip: u64, errno: i32) {
        self.lock_state().file_faults.insert(path.to_owned(), (skip, errno));
    }

    /// The disk as it comes back after a power cut: synced bytes intact,
    /// every unsynced write dropped, kept, torn to a sector prefix or
    /// scattered by sector, as `seed` decides. Locks are released.
    pub fn after_power_cut(&self, seed: u64) -> SimStorage {
        let state = self.lock_state();
        let mut rng = SimRng::new(seed);
        let mut inodes = HashMap::new();
        for (&inode, file) in &state.inodes {
            let mut image = file.durable.clone();
            for (offset, bytes) in &file.pending {
                survive(&mut rng, &mut image, *offset, bytes);
            }
            inodes.insert(inode, SimFileData { current: image.clone(), durable: image, pending: Vec::new() });
        }
        let next = SimState {
            inodes,
            names: state.names.clone(),
            dirs: state.dirs.clone(),
            next_inode: state.next_inode,
            ..SimState::default()
        };
        SimStorage { state: Arc::new(Mutex::new(next)), pipelined: self.pipelined }
    }
}

/// Applies what a power cut leaves of one unsynced write.
fn survive(rng: &mut SimRng, image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
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
    match rng.below(4) {
        0 => {}
        1 => write_into(image, offset, bytes),
        2 => {
            let keep = rng.below(pieces.len() as u64 + 1) as usize;
            for &(start, end) in &pieces[..keep] {
                write_into(image, offset + start as u64, &bytes[start..end]);
            }
        }
        _ => {
            for &(start, end) in &pieces {
                if rng.below(2) == 0 {
                    write_into(image, offset + start as u64, &bytes[start..end]);
                }
            }
        }
    }
}

fn not_found(op: &'static str, path: &Path) -> Error {
    Error::io(op, path, 0, io::Error::from(io::ErrorKind::NotFound))
}

impl Storage for SimStorage {
    fn backend(&self) -> Backend {
        Backend::Simulated
    }

    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn File>> {
        let mut state = self.lock_state();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !state.dirs.contains(parent) {
            return Err(not_found("open", path));
        }
        let inode = match (state.names.get(path).copied(), mode) {
            (Some(inode), _) => inode,
            (None, OpenMode::Existing) => return Err(not_found("open", path)),
            (None, OpenMode::Create) => {
                state.next_inode += 1;
                let inode = state.next_inode;
                state.inodes.insert(inode, SimFileData::default());
                state.names.insert(path.to_owned(), inode);
                inode
            }
        };
        Ok(Arc::new(SimFile { storage: self.clone(), path: path.to_owned(), inode }))
    }

    fn io_buffer(&self, len: usize) -> IoBuf {
        IoBuf::plain(len)
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        let mut state = self.lock_state();
        for dir in path.ancestors() {
            state.dirs.insert(dir.to_owned());
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        let state = self.lock_state();
        Ok(state.dirs.contains(path) || state.names.contains_key(path))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let state = self.lock_state();
        if !state.dirs.contains(path) {
            return Err(not_found("readdir", path));
        }
        let files = state.names.keys().filter(|p| p.parent() == Some(path));
        let dirs = state.dirs.iter().filter(|p| p.parent() == Some(path));
        Ok(files.chain(dirs).filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        let mut state = self.lock_state();
        let inode = state.names.remove(path).ok_or_else(|| not_found("unlink", path))?;
        state.inodes.remove(&inode);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut state = self.lock_state();
        let inode = state.names.remove(from).ok_or_else(|| not_found("rename", from))?;
        if let Some(old) = state.names.insert(to.to_owned(), inode) {
            state.inodes.remove(&old);
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        let mut state = self.lock_state();
        state.tick().map_err(|e| Error::io("fsync", path, 0, e))
    }

    fn lock(&self, path: &Path) -> Result<DirLock> {
        let mut state = self.lock_state();
        if !state.locks.insert(path.to_owned()) {
            return Err(Error::Locked { path: path.to_owned(), pid: std::process::id() });
        }
        Ok(Box::new(SimLock { storage: self.clone(), path: path.to_owned() }))
    }

    fn commit_queue(&self) -> Option<Box<dyn crate::CommitQueue>> {
        self.pipelined.then(|| Box::new(crate::queue::SimQueue::new(self.clone())) as Box<dyn crate::CommitQueue>)
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

/// An open file of the simulated disk.
struct SimFile {
    storage: SimStorage,
    path: PathBuf,
    inode: u64,
}

impl SimFile {
    fn with<T>(&self, op: &'static str, offset: u64, f: impl FnOnce(&mut SimFileData) -> Result<T>) -> Result<T> {
        let mut state = self.storage.lock_state();
        state.tick().map_err(|e| Error::io(op, &self.path, offset, e))?;
        if let Some((skip, errno)) = state.file_faults.get_mut(&self.path) {
            if *skip == 0 {
                let errno = *errno;
                state.file_faults.remove(&self.path);
                return Err(Error::io(op, &self.path, offset, io::Error::from_raw_os_error(errno)));
            }
            *skip -= 1;
        }
        let data = state.inodes.get_mut(&self.inode).ok_or_else(|| not_found(op, &self.path))?;
        f(data)
    }

    fn write(data: &mut SimFileData, offset: u64, buf: &[u8]) {
        write_into(&mut data.current, offset, buf);
        data.pending.push((offset, buf.to_vec()));
    }

    fn sync(data: &mut SimFileData) {
        for (offset, bytes) in data.pending.drain(..) {
            write_into(&mut data.durable, offset, &bytes);
        }
        // A grown-but-unwritten tail (allocate) is durable after a sync too.
        if data.durable.len() < data.current.len() {
            data.durable.resize(data.current.len(), 0);
        }
    }
}

impl File for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn is_direct(&self) -> bool {
        false
    }

    fn size_bytes(&self) -> Result<u64> {
        let state = self.storage.lock_state();
        let data = state.inodes.get(&self.inode).ok_or_else(|| not_found("fstat", &self.path))?;
        Ok(data.current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.with("pread", offset, |data| {
            let file_bytes = data.current.len() as u64;
            let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= file_bytes);
            let Some(end) = end else {
                return Err(Error::ReadPastEnd { path: self.path.clone(), offset, len: buf.len(), file_bytes });
            };
            buf.copy_from_slice(&data.current[offset as usize..end as usize]);
            Ok(())
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.with("pwrite", offset, |data| {
            SimFile::write(data, offset, buf);
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
            if (data.current.len() as u64) < len {
                data.current.resize(len as usize, 0);
            }
            Ok(())
        })
    }

    fn write_sync(&self, offset: u64, buf: &IoBuf, len: usize) -> Result<()> {
        self.write_at(offset, &buf[..len])?;
        self.sync_data()
    }
}
