//! The physical baseline: no store, only the disk's group-commit limit.
//! Writers append records to a shared buffer; one flusher thread takes
//! whatever has gathered, writes it at the end of a zero-filled file with
//! `pwrite` and makes it durable with `fdatasync`, then wakes the writers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::systems::Store;

const FILE_BYTES: u64 = 128 << 20;
const ZERO_CHUNK_BYTES: usize = 4 << 20;

#[derive(Default)]
struct State {
    gathering: Vec<u8>,
    /// Number of the group now gathering; groups below `durable` are on disk.
    group: u64,
    durable: u64,
    syncs: u64,
    commits: u64,
    pending_commits: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    flusher_wake: Condvar,
    writers_wake: Condvar,
}

pub struct Baseline {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Baseline {
    pub fn open(dir: &Path) -> Baseline {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("log"))
            .expect("baseline file");
        // Zero-filled, so fdatasync never has to commit extent changes.
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        for at in (0..FILE_BYTES).step_by(ZERO_CHUNK_BYTES) {
            file.write_all_at(&zeros, at).expect("zero-fill");
        }
        file.sync_all().expect("sync");
        let shared = Arc::new(Shared {
            state: Mutex::new(State { group: 1, durable: 1, ..State::default() }),
            flusher_wake: Condvar::new(),
            writers_wake: Condvar::new(),
        });
        let flusher = std::thread::spawn({
            let shared = shared.clone();
            move || flush_loop(&shared, &file)
        });
        Baseline { shared, flusher: Some(flusher) }
    }

    fn append(&self, record: &[u8], commits: u64) {
        let mut state = self.shared.state.lock().expect("lock");
        state.gathering.extend_from_slice(record);
        state.pending_commits += commits;
        let mine = state.group;
        self.shared.flusher_wake.notify_one();
        while state.durable <= mine {
            state = self.shared.writers_wake.wait(state).expect("lock");
        }
    }
}

fn flush_loop(shared: &Shared, file: &File) {
    let mut offset = 0u64;
    let mut spare = Vec::new();
    loop {
        let (data, group, commits) = {
            let mut state = shared.state.lock().expect("lock");
            while state.gathering.is_empty() && !state.stop {
                state = shared.flusher_wake.wait(state).expect("lock");
            }
            if state.gathering.is_empty() {
                return;
            }
            let data = std::mem::replace(&mut state.gathering, std::mem::take(&mut spare));
            let group = state.group;
            state.group += 1;
            (data, group, std::mem::take(&mut state.pending_commits))
        };
        if offset + data.len() as u64 > FILE_BYTES {
            offset = 0;
        }
        file.write_all_at(&data, offset).expect("baseline pwrite");
        file.sync_data().expect("baseline fdatasync");
        offset += data.len() as u64;
        let mut state = shared.state.lock().expect("lock");
        state.durable = group + 1;
        state.syncs += 1;
        state.commits += commits;
        shared.writers_wake.notify_all();
        spare = data;
        spare.clear();
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.shared.state.lock().expect("lock").stop = true;
        self.shared.flusher_wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Store for Baseline {
    fn put(&self, key: &[u8], value: &[u8]) {
        let mut record = Vec::with_capacity(8 + key.len() + value.len());
        record.extend_from_slice(&(key.len() as u32).to_le_bytes());
        record.extend_from_slice(&(value.len() as u32).to_le_bytes());
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        self.append(&record, 1);
    }

    fn put_batch(&self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        let mut record = Vec::new();
        for (k, v) in pairs {
            record.extend_from_slice(&(k.len() as u32).to_le_bytes());
            record.extend_from_slice(&(v.len() as u32).to_le_bytes());
            record.extend_from_slice(k);
            record.extend_from_slice(v);
        }
        self.append(&record, 1);
    }

    fn get(&self, _key: &[u8]) -> Option<Option<Vec<u8>>> {
        None
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.shared.state.lock().expect("lock").syncs)
    }

    fn commits(&self) -> Option<u64> {
        Some(self.shared.state.lock().expect("lock").commits)
    }
}
