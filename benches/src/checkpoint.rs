//! `checkpoint`: how fast a checkpoint writes the page file, per backend.
//!
//! Each repetition loads `keys` keys (16-byte keys, 100-byte values) into a
//! fresh store with thresholds too high for the checkpointer to run on its
//! own, then times `Kv::checkpoint()`: the first writes the whole tree
//! (consecutive pages: long runs); then two rounds update a scattered 1%
//! of the keys, and the second round's checkpoint is timed: it writes into
//! the pages the first round freed, spread over the file (short runs, the
//! case batched submission is for). Systems
//! alternate within each repetition, so drift hits all alike; the report
//! gives the median over repetitions.
//!
//! Beside the two backends, with `ringkv-syscall`: the same syscall
//! backend writing one page per `pwrite` ([`PageAtATime`]), the naive
//! checkpoint that batched submission is measured against. (The syscall
//! backend itself writes each run of consecutive pages with one call.)

use std::path::Path;
use std::time::Instant;

use std::sync::Arc;

use kv::{Io, Kv, Options, WriteBatch};
use uring::StorageOptions;

use crate::page_at_a_time::PageAtATime;
use crate::workloads::key;

/// How a repetition's store writes its page file.
#[derive(Clone, Copy)]
enum Writes {
    Backend(Io),
    /// The syscall backend, one page per `pwrite`.
    PageAtATime,
}

/// The store under test, opened in `dir`.
fn open(dir: &Path, writes: Writes) -> Kv {
    match writes {
        Writes::Backend(io) => Kv::open_with(dir, options(io)).expect("open ringkv"),
        Writes::PageAtATime => {
            let options = options(Io::Syscall);
            let storage = uring::open_storage(StorageOptions {
                io: Io::Syscall,
                sync_mode: options.sync_mode,
                commit_buffer_bytes: wal::COMMIT_BUFFER_BYTES,
            })
            .expect("open storage");
            Kv::open_on(Arc::new(PageAtATime(storage)), dir, options).expect("open ringkv")
        }
    }
}

/// What one checkpoint took.
#[derive(Clone, Copy)]
struct Timed {
    pages: u64,
    seconds: f64,
}

impl Timed {
    fn pages_per_second(&self) -> f64 {
        self.pages as f64 / self.seconds
    }
}

fn options(io: Io) -> Options {
    let mut options = Options::default();
    options.io = io;
    options.memtable_bytes = usize::MAX / 4;
    options.wal_bytes = u64::MAX / 4;
    // The whole tree cached: the timed part is the writing, not reads of
    // the leaves being updated.
    options.cache_bytes = 1 << 30;
    options
}

fn timed_checkpoint(db: &Kv) -> Timed {
    let began = Instant::now();
    db.checkpoint().expect("checkpoint");
    let seconds = began.elapsed().as_secs_f64();
    Timed { pages: db.stats().expect("stats").page_file.last_checkpoint_pages, seconds }
}

/// Loads, checkpoints, updates a scattered tenth, checkpoints again.
fn one(dir: &Path, writes: Writes, keys: u64) -> (Timed, Timed) {
    let db = open(dir, writes);
    let value = [b'v'; 100];
    for start in (0..keys).step_by(1000) {
        let mut batch = WriteBatch::new();
        for n in start..(start + 1000).min(keys) {
            batch.put(key(b'k', n), value);
        }
        db.write(batch).expect("load");
    }
    let first = timed_checkpoint(&db);
    // Two rounds of updates to a scattered 1%: the first frees pages all
    // over the file, the second (timed) is written into them.
    let mut scattered = first;
    for round in 0..2u64 {
        let mut batch = WriteBatch::new();
        for n in (0..keys).step_by(100) {
            batch.put(key(b'k', (n * 7919 + round * 31) % keys), [b'u'; 100]);
            if batch.len() == 1000 {
                db.write(std::mem::take(&mut batch)).expect("update");
            }
        }
        db.write(batch).expect("update");
        scattered = timed_checkpoint(&db);
    }
    (first, scattered)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the checkpoint workload for the ringkv systems among `systems`
/// and prints its lines.
pub fn run(systems: &[&str], dir: &Path, keys: u64, repetitions: usize) {
    let backends: Vec<(&str, Writes)> = [
        ("ringkv-io_uring", Writes::Backend(Io::Uring)),
        ("ringkv-syscall", Writes::Backend(Io::Syscall)),
        ("ringkv-syscall-page-at-a-time", Writes::PageAtATime),
    ]
    .into_iter()
    .filter(|(name, _)| {
        systems.contains(name) || (*name == "ringkv-syscall-page-at-a-time" && systems.contains(&"ringkv-syscall"))
    })
    .collect();
    if backends.is_empty() {
        return;
    }
    println!(
        "# checkpoint: {keys} keys (16 B keys, 100 B values) loaded, checkpointed (whole tree), a scattered \
         1% updated twice, the second checkpoint timed; {repetitions} repetitions, systems alternating; medians"
    );
    let mut results: Vec<Vec<(Timed, Timed)>> = vec![Vec::new(); backends.len()];
    for rep in 0..repetitions {
        let order: Vec<usize> =
            if rep % 2 == 0 { (0..backends.len()).collect() } else { (0..backends.len()).rev().collect() };
        for i in order {
            let (name, writes) = backends[i];
            crate::progress(&format!("checkpoint: {name}, repetition {}", rep + 1));
            let path = dir.join(format!("checkpoint-{name}-{rep}"));
            results[i].push(one(&path, writes, keys));
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    println!("checkpoint system                       whole_pages  whole_s  whole_pages/s  scattered_pages  scattered_s  scattered_pages/s");
    let mut rates = Vec::new();
    for ((name, _), runs) in backends.iter().zip(&results) {
        let whole = median(runs.iter().map(|r| r.0.pages_per_second()).collect());
        let scattered = median(runs.iter().map(|r| r.1.pages_per_second()).collect());
        let (w, s) = runs[runs.len() / 2];
        println!(
            "checkpoint {name:<31} {:>11} {:>8.3} {whole:>14.0} {:>16} {:>12.3} {scattered:>18.0}",
            w.pages,
            median(runs.iter().map(|r| r.0.seconds).collect()),
            s.pages,
            median(runs.iter().map(|r| r.1.seconds).collect())
        );
        rates.push((*name, whole, scattered));
    }
    let rate = |name: &str| rates.iter().find(|(n, ..)| *n == name).map(|&(_, w, s)| (w, s));
    if let Some((uw, us)) = rate("ringkv-io_uring") {
        for (other, label) in
            [("ringkv-syscall", "syscall"), ("ringkv-syscall-page-at-a-time", "syscall one page at a time")]
        {
            if let Some((w, s)) = rate(other) {
                println!("# checkpoint io_uring / {label}: whole tree {:.2}x, scattered {:.2}x", uw / w, us / s);
            }
        }
    }
}
