//! The checkpoint's naive baseline: plain system calls, one `pwrite` per
//! 4 KiB page. A storage that wraps the syscall backend and splits every
//! write (a checkpoint's runs of consecutive pages, its batches of runs)
//! into single-page writes, issued one after another. Everything else
//! passes through unchanged.

use std::path::Path;
use std::sync::Arc;

use uring::{Backend, CommitQueue, DirLock, File, OpenMode, Result, Storage};

/// What a write is cut into.
const PAGE_BYTES: usize = 4096;

/// [`Storage`] whose files write one page per call.
#[derive(Debug)]
pub struct PageAtATime(pub Arc<dyn Storage>);

impl Storage for PageAtATime {
    fn backend(&self) -> Backend {
        self.0.backend()
    }
    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn File>> {
        Ok(Arc::new(PageFile(self.0.open(path, mode)?)))
    }
    fn create_dir(&self, path: &Path) -> Result<()> {
        self.0.create_dir(path)
    }
    fn exists(&self, path: &Path) -> Result<bool> {
        self.0.exists(path)
    }
    fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        self.0.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        self.0.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.0.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> Result<()> {
        self.0.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> Result<DirLock> {
        self.0.lock(path)
    }
    fn lock_shared(&self, path: &Path) -> Result<DirLock> {
        self.0.lock_shared(path)
    }
    fn commit_queue(&self) -> Result<Box<dyn CommitQueue>> {
        self.0.commit_queue()
    }
}

struct PageFile(Arc<dyn File>);

impl File for PageFile {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn as_syscalls(&self) -> &dyn File {
        self.0.as_syscalls()
    }
    fn is_direct(&self) -> bool {
        self.0.is_direct()
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.raw_fd()
    }
    fn size_bytes(&self) -> Result<u64> {
        self.0.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        for (k, page) in buf.chunks(PAGE_BYTES).enumerate() {
            self.0.write_at(offset + (k * PAGE_BYTES) as u64, page)?;
        }
        Ok(())
    }
    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<()> {
        for (offset, buf) in writes {
            self.write_at(*offset, buf)?;
        }
        Ok(())
    }
    fn sync_data(&self) -> Result<()> {
        self.0.sync_data()
    }
    fn allocate(&self, len: u64) -> Result<()> {
        self.0.allocate(len)
    }
    fn sync_and_evict(&self) -> Result<()> {
        self.0.sync_and_evict()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uring::{AlignedBuf, SimStorage};

    /// Every write reaches the file, cut at page boundaries: a run of
    /// three pages written through the wrapper reads back whole.
    #[test]
    fn writes_arrive_whole() {
        let sim: Arc<dyn Storage> = Arc::new(SimStorage::new());
        let storage = PageAtATime(sim);
        let file = storage.open(Path::new("/f"), OpenMode::Create).unwrap();
        let mut run = AlignedBuf::new(3 * PAGE_BYTES);
        for (i, b) in run.iter_mut().enumerate() {
            *b = (i / PAGE_BYTES) as u8 + 1;
        }
        let one = AlignedBuf::new(PAGE_BYTES);
        file.write_many(&[(0, &run[..]), (5 * PAGE_BYTES as u64, &one[..])]).unwrap();
        let mut back = AlignedBuf::new(6 * PAGE_BYTES);
        file.read_at(0, &mut back).unwrap();
        assert_eq!(&back[..3 * PAGE_BYTES], &run[..]);
        assert!(back[3 * PAGE_BYTES..].iter().all(|&b| b == 0));
    }
}
