//! The workloads. Each returns one measurement per run; speeds are
//! measured here and never asserted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::systems::Store;

pub const KEY_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 100;

/// What one run measured. Latencies are in microseconds.
pub struct Measurement {
    pub workload: &'static str,
    pub system: String,
    pub threads: usize,
    pub ops_per_second: f64,
    pub latency_us: Histogram<u64>,
    pub syncs_per_second: Option<f64>,
    pub batch_avg: Option<f64>,
    pub megabytes_per_second: Option<f64>,
    pub seconds: f64,
}

impl Measurement {
    /// Folds in another run of the same workload: rates over the two runs'
    /// time together, latencies from both.
    pub fn merge(&mut self, other: Measurement) {
        let seconds = self.seconds + other.seconds;
        let rate = |a: f64, b: f64| (a * self.seconds + b * other.seconds) / seconds;
        self.ops_per_second = rate(self.ops_per_second, other.ops_per_second);
        self.megabytes_per_second = match (self.megabytes_per_second, other.megabytes_per_second) {
            (Some(a), Some(b)) => Some(rate(a, b)),
            _ => None,
        };
        self.latency_us.add(&other.latency_us).expect("same histogram bounds");
        self.seconds = seconds;
    }

    /// A run of `latency_us.len()` operations in `elapsed`, with no sync counts.
    fn of_ops(
        workload: &'static str,
        system: &str,
        threads: usize,
        latency_us: Histogram<u64>,
        elapsed: Duration,
    ) -> Measurement {
        let seconds = elapsed.as_secs_f64();
        Measurement {
            workload,
            system: system.to_owned(),
            threads,
            ops_per_second: latency_us.len() as f64 / seconds,
            latency_us,
            syncs_per_second: None,
            batch_avg: None,
            megabytes_per_second: None,
            seconds,
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("histogram bounds")
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().max(1) as u64
}

/// A key of exactly KEY_BYTES from a prefix letter and a number.
pub fn key(prefix: u8, n: u64) -> [u8; KEY_BYTES] {
    // The last 15 decimal digits of n, zero padded (no formatter: the
    // bulk load makes 10M of them).
    let mut key = [b'0'; KEY_BYTES];
    key[0] = prefix;
    let mut rest = n;
    for digit in key[1..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// A small deterministic generator for key choice (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Values of VALUE_BYTES that do not compress: slices of a pool of
/// pseudo-random bytes at scattered offsets. (Values of one repeated byte
/// let RocksDB and fjall, which compress their blocks by default, store a
/// tenth of what the others store, and cache all of it in a cache sized
/// to a tenth of the data.)
pub struct Values(Vec<u8>);

impl Values {
    const POOL_BYTES: usize = 1 << 20;

    pub fn new() -> Values {
        let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
        Values((0..Values::POOL_BYTES / 8).flat_map(|_| rng.next().to_le_bytes()).collect())
    }

    /// The value of the `n`th write.
    pub fn get(&self, n: u64) -> &[u8] {
        let at = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).below((Values::POOL_BYTES - VALUE_BYTES) as u64);
        &self.0[at as usize..at as usize + VALUE_BYTES]
    }
}

/// Runs `work` on `threads` threads for `duration`, merging their latency
/// histograms; returns the histogram and the measured wall time.
fn timed<F>(threads: usize, duration: Duration, work: F) -> (Histogram<u64>, Duration)
where
    F: Fn(usize, &AtomicBool) -> Histogram<u64> + Sync,
{
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (work, stop, start) = (&work, &stop, &start);
                s.spawn(move || {
                    start.wait();
                    work(t, stop)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut total = histogram();
        for worker in workers {
            total.add(worker.join().expect("worker")).expect("same bounds");
        }
        (total, began.elapsed())
    })
}

/// `commit`: T threads of durable single puts.
pub fn commit(store: &dyn Store, system: &str, threads: usize, duration: Duration) -> Measurement {
    let (syncs_before, commits_before) = (store.syncs(), store.commits());
    let values = Values::new();
    let (latency_us, elapsed) = timed(threads, duration, |t, stop| {
        let mut h = histogram();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let k = key(b'c', (t as u64) << 40 | i);
            let value = values.get(i);
            let began = Instant::now();
            store.put(&k, value);
            h.record(micros(began)).expect("in range");
            i += 1;
        }
        h
    });
    let seconds = elapsed.as_secs_f64();
    let syncs = store.syncs().zip(syncs_before).map(|(a, b)| a - b);
    let commits = store.commits().zip(commits_before).map(|(a, b)| a - b);
    Measurement {
        syncs_per_second: syncs.map(|s| s as f64 / seconds),
        batch_avg: syncs.zip(commits).filter(|(s, _)| *s > 0).map(|(s, c)| c as f64 / s as f64),
        ..Measurement::of_ops("commit", system, threads, latency_us, elapsed)
    }
}

/// `bulk`: `total` puts in durable batches of `batch` from one thread.
pub fn bulk(store: &dyn Store, system: &str, total: u64, batch: u64) -> Measurement {
    let values = Values::new();
    let mut latency_us = histogram();
    let began = Instant::now();
    let mut next = 0;
    while next < total {
        let end = (next + batch).min(total);
        // Built as cheaply as a caller could (the harness's own work is
        // in the rate, the same for every system).
        let keys: Vec<[u8; KEY_BYTES]> = (next..end).map(|i| key(b'b', i)).collect();
        let pairs: Vec<(&[u8], &[u8])> = keys.iter().zip(next..end).map(|(k, i)| (&k[..], values.get(i))).collect();
        let t = Instant::now();
        store.put_batch(&pairs);
        latency_us.record(micros(t)).expect("in range");
        next = end;
    }
    let seconds = began.elapsed().as_secs_f64();
    let bytes = total as f64 * (KEY_BYTES + VALUE_BYTES) as f64;
    Measurement {
        workload: "bulk",
        system: system.to_owned(),
        threads: 1,
        ops_per_second: total as f64 / seconds,
        latency_us,
        syncs_per_second: None,
        batch_avg: None,
        megabytes_per_second: Some(bytes / seconds / 1e6),
        seconds,
    }
}

/// `read`: random gets of keys `bulk` wrote, from `threads` threads.
pub fn read(store: &dyn Store, system: &str, keys: u64, threads: usize, duration: Duration) -> Option<Measurement> {
    store.get(&key(b'b', 0))?;
    let (latency_us, elapsed) = timed(threads, duration, |t, stop| {
        let mut h = histogram();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
        while !stop.load(Ordering::Relaxed) {
            let k = key(b'b', rng.below(keys));
            let began = Instant::now();
            let value = store.get(&k).expect("reads");
            h.record(micros(began)).expect("in range");
            assert!(value.is_some(), "{system}: a bulk-loaded key is missing");
        }
        h
    });
    Some(Measurement::of_ops("read", system, threads, latency_us, elapsed))
}

/// `mixed`: 90% gets of bulk keys, 10% durable puts, from `threads` threads.
pub fn mixed(store: &dyn Store, system: &str, keys: u64, threads: usize, duration: Duration) -> Option<Measurement> {
    store.get(&key(b'b', 0))?;
    let values = Values::new();
    let (latency_us, elapsed) = timed(threads, duration, |t, stop| {
        let mut h = histogram();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (t as u64 + 1));
        while !stop.load(Ordering::Relaxed) {
            let k = key(b'b', rng.below(keys));
            let began = Instant::now();
            if rng.below(10) == 0 {
                store.put(&k, values.get(rng.next()));
            } else {
                store.get(&k).expect("reads");
            }
            h.record(micros(began)).expect("in range");
        }
        h
    });
    Some(Measurement::of_ops("mixed", system, threads, latency_us, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_prefix_and_the_last_15_digits() {
        assert_eq!(&key(b'b', 42), b"b000000000000042");
        assert_eq!(&key(b'c', 1 << 50), format!("c{:015}", (1u64 << 50) % 1_000_000_000_000_000).as_bytes());
        assert_eq!(&key(b'k', u64::MAX), format!("k{}", &u64::MAX.to_string()[5..]).as_bytes());
    }

    #[test]
    fn values_differ_and_do_not_repeat_a_byte() {
        let values = Values::new();
        assert_ne!(values.get(0), values.get(1));
        let v = values.get(7);
        assert_eq!(v.len(), VALUE_BYTES);
        assert!(v.iter().collect::<std::collections::BTreeSet<_>>().len() > 50, "incompressible-looking bytes");
    }
}
