//! Baselines: no store, only the disk, written as well as a caller could
//! write them by hand. Both append records to a zero-filled file (so
//! `fdatasync` never commits extent changes) with buffered `pwrite`.
//!
//! - [`GroupLoop`], the group-commit limit: writers hand records to one
//!   flusher thread over a channel; it takes everything queued, writes it
//!   with one `pwrite`, one `fdatasync`, and wakes exactly the writers of
//!   that group (each parked on its own flag: no herd).
//! - [`Inline`], the no-grouping limit: each caller does `pwrite` +
//!   `fdatasync` itself under a mutex (what fjall and a careful embedder do).
//!
//! [`disk_sync_us`] measures one 4 KiB write + `fdatasync`, the line both
//! are judged against.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use crossbeam_channel::{Receiver, Sender};

use crate::systems::Store;

const FILE_BYTES: u64 = 128 << 20;
const ZERO_CHUNK_BYTES: usize = 4 << 20;

/// A zero-filled, synced file of `bytes` (a multiple of `ZERO_CHUNK_BYTES`) at `path`.
fn zero_filled(path: &Path, bytes: u64) -> File {
    let file = File::options().create(true).truncate(true).read(true).write(true).open(path).expect("baseline file");
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    for at in (0..bytes).step_by(ZERO_CHUNK_BYTES) {
        file.write_all_at(&zeros, at).expect("zero-fill");
    }
    file.sync_all().expect("sync");
    file
}

/// Writes `data` at `*offset` (wrapping at the end of the file) and syncs.
fn append_durably(file: &File, offset: &mut u64, data: &[u8]) {
    if *offset + data.len() as u64 > FILE_BYTES {
        *offset = 0;
    }
    file.write_all_at(data, *offset).expect("baseline pwrite");
    file.sync_data().expect("baseline fdatasync");
    *offset += data.len() as u64;
}

fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut record = Vec::new();
    for (k, v) in pairs {
        record.extend_from_slice(&(k.len() as u32).to_le_bytes());
        record.extend_from_slice(&(v.len() as u32).to_le_bytes());
        record.extend_from_slice(k);
        record.extend_from_slice(v);
    }
    record
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    commits: AtomicU64,
}

/// A writer's record and how to tell it its record is durable.
struct Request {
    record: Vec<u8>,
    done: Arc<AtomicBool>,
    writer: Thread,
}

/// The minimal group-commit loop (see the module docs).
pub struct GroupLoop {
    requests: Option<Sender<Request>>,
    counters: Arc<Counters>,
    flusher: Option<JoinHandle<()>>,
}

impl GroupLoop {
    pub fn open(dir: &Path) -> GroupLoop {
        let file = zero_filled(&dir.join("log"), FILE_BYTES);
        let (requests, queue) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let flusher = std::thread::spawn({
            let counters = counters.clone();
            move || flush_loop(&queue, &file, &counters)
        });
        GroupLoop { requests: Some(requests), counters, flusher: Some(flusher) }
    }

    fn append(&self, record: Vec<u8>) {
        let done = Arc::new(AtomicBool::new(false));
        let request = Request { record, done: done.clone(), writer: std::thread::current() };
        self.requests.as_ref().expect("open").send(request).expect("flusher alive");
        while !done.load(Ordering::Acquire) {
            std::thread::park();
        }
    }
}

fn flush_loop(queue: &Receiver<Request>, file: &File, counters: &Counters) {
    let mut offset = 0u64;
    let mut data = Vec::new();
    let mut group = Vec::new();
    // Blocks for the first request of a group, then takes all queued.
    while let Ok(first) = queue.recv() {
        group.push(first);
        group.extend(queue.try_iter());
        data.clear();
        for request in &group {
            data.extend_from_slice(&request.record);
        }
        append_durably(file, &mut offset, &data);
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters.commits.fetch_add(group.len() as u64, Ordering::Relaxed);
        for request in group.drain(..) {
            request.done.store(true, Ordering::Release);
            request.writer.unpark();
        }
    }
}

impl Drop for GroupLoop {
    fn drop(&mut self) {
        drop(self.requests.take()); // the flusher's recv ends
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Store for GroupLoop {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.append(encode(&[(key, value)]));
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        self.append(encode(pairs));
    }

    fn get(&self, _key: &[u8]) -> Option<Option<Vec<u8>>> {
        None
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.counters.syncs.load(Ordering::Relaxed))
    }

    fn commits(&self) -> Option<u64> {
        Some(self.counters.commits.load(Ordering::Relaxed))
    }
}

/// Each caller writes and syncs its own record under a mutex.
pub struct Inline {
    /// The file and the offset of the next record.
    log: Mutex<(File, u64)>,
    counters: Counters,
}

impl Inline {
    pub fn open(dir: &Path) -> Inline {
        Inline { log: Mutex::new((zero_filled(&dir.join("log"), FILE_BYTES), 0)), counters: Counters::default() }
    }

    fn append(&self, record: &[u8]) {
        let mut log = self.log.lock().expect("lock");
        let (file, offset) = &mut *log;
        append_durably(file, offset, record);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
    }
}

impl Store for Inline {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.append(&encode(&[(key, value)]));
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        self.append(&encode(pairs));
    }

    fn get(&self, _key: &[u8]) -> Option<Option<Vec<u8>>> {
        None
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.counters.syncs.load(Ordering::Relaxed))
    }

    fn commits(&self) -> Option<u64> {
        Some(self.counters.commits.load(Ordering::Relaxed))
    }
}

/// One 4 KiB `pwrite` + `fdatasync` into a zero-filled file, `samples`
/// times at successive offsets: the median and 99th percentile, in µs.
pub fn disk_sync_us(dir: &Path, samples: usize) -> (f64, f64) {
    let path = dir.join("disk-line");
    let bytes = (samples as u64 * 4096).next_multiple_of(ZERO_CHUNK_BYTES as u64);
    let file = zero_filled(&path, bytes);
    let block = vec![0xA5u8; 4096];
    let mut times: Vec<f64> = (0..samples)
        .map(|i| {
            let started = std::time::Instant::now();
            file.write_all_at(&block, i as u64 * 4096).expect("pwrite");
            file.sync_data().expect("fdatasync");
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    drop(file);
    let _ = std::fs::remove_file(path);
    times.sort_by(f64::total_cmp);
    (times[samples / 2], times[samples * 99 / 100])
}
