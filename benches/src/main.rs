//! Group-commit benchmark: T writer threads doing durable puts (16-byte
//! keys, 100-byte values) for a fixed time, once per I/O backend, in one
//! run on the same disk. Prints commits/s, commit latency percentiles and
//! the average number of commits per sync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use kv::{Io, Kv, Options, SyncMode};

#[derive(Parser)]
#[command(name = "benches", about = "ringkv group-commit benchmark")]
struct Args {
    /// Directory to run in (on the disk to measure); removed and recreated per run.
    #[arg(long, default_value = "ringkv-bench")]
    dir: PathBuf,
    /// Writer thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    threads: Vec<usize>,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Short runs (0.5 s each): a smoke test.
    #[arg(long)]
    quick: bool,
    /// Also run io_uring with linked write → Fsync(DATASYNC) chains (the
    /// default commit is one write with RWF_DSYNC).
    #[arg(long)]
    linked: bool,
}

#[derive(Clone, Copy)]
struct System {
    name: &'static str,
    io: Io,
    sync_mode: SyncMode,
}

struct Row {
    system: &'static str,
    threads: usize,
    commits_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    batch_commits: f64,
}

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let seconds = if args.quick { 0.5 } else { args.seconds };
    let mut systems = vec![
        System { name: "ringkv-io_uring", io: Io::Uring, sync_mode: SyncMode::RwfDsync },
        System { name: "ringkv-syscall", io: Io::Syscall, sync_mode: SyncMode::RwfDsync },
    ];
    if args.linked {
        systems.push(System { name: "ringkv-io_uring-linked", io: Io::Uring, sync_mode: SyncMode::LinkedFsync });
    }
    println!(
        "# group-commit: durable puts of {KEY_BYTES}-byte keys and {VALUE_BYTES}-byte values, {seconds} s per row"
    );
    println!("# dir={} kernel={}", args.dir.display(), kernel());
    println!(
        "{:<24} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "system", "threads", "commits/s", "p50_us", "p99_us", "p99.9_us", "max_us", "batch_avg"
    );
    let mut rows = Vec::new();
    // Interleave systems per thread count so drift on a shared machine hits both.
    for &threads in &args.threads {
        for system in &systems {
            let row = run(&args.dir, *system, threads, Duration::from_secs_f64(seconds));
            print_row(&row);
            rows.push(row);
        }
    }
    summary(&rows, &args.threads);
    let _ = std::fs::remove_dir_all(&args.dir);
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn print_row(r: &Row) {
    println!(
        "{:<24} {:>7} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>11.1}",
        r.system, r.threads, r.commits_per_second, r.p50_us, r.p99_us, r.p999_us, r.max_us, r.batch_commits
    );
}

fn summary(rows: &[Row], threads: &[usize]) {
    let find = |system: &str, t: usize| rows.iter().find(|r| r.system == system && r.threads == t);
    println!("# ratios measured in this run");
    for &t in threads {
        if let (Some(u), Some(s)) = (find("ringkv-io_uring", t), find("ringkv-syscall", t)) {
            println!(
                "#   {t:>2} writers: io_uring/syscall commits/s = {:.2}",
                u.commits_per_second / s.commits_per_second
            );
        }
    }
    if let (Some(&lo), Some(&hi)) = (threads.first(), threads.last()) {
        for system in ["ringkv-io_uring", "ringkv-syscall"] {
            if let (Some(a), Some(b)) = (find(system, lo), find(system, hi)) {
                println!(
                    "#   {system}: {hi} writers / {lo} writer commits/s = {:.1}",
                    b.commits_per_second / a.commits_per_second
                );
            }
        }
    }
}

fn run(base: &Path, system: System, threads: usize, duration: Duration) -> Row {
    let dir = base.join(format!("{}-{threads}", system.name));
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options { io: system.io, sync_mode: system.sync_mode, ..Options::default() };
    let db = Kv::open(&dir, options).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let before = db.stats().wal;
    let (histogram, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (db, stop, start) = (&db, &stop, &start);
                s.spawn(move || writer(db, t, stop, start))
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut total = Histogram::<u64>::new(3).expect("histogram");
        for worker in workers {
            total.add(worker.join().expect("writer")).expect("same bounds");
        }
        (total, began.elapsed())
    });
    let after = db.stats().wal;
    let syncs = after.syncs - before.syncs;
    let commits = after.commits - before.commits;
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        system: system.name,
        threads,
        commits_per_second: histogram.len() as f64 / elapsed.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        batch_commits: if syncs == 0 { 0.0 } else { commits as f64 / syncs as f64 },
    }
}

fn writer(db: &Kv, thread: usize, stop: &AtomicBool, start: &Barrier) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let value = [0x5Au8; VALUE_BYTES];
    start.wait();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{thread:04}{i:012}");
        debug_assert_eq!(key.len(), KEY_BYTES);
        let began = Instant::now();
        db.put(&key, value).expect("durable put");
        histogram.record(began.elapsed().as_micros() as u64).expect("in range");
        i += 1;
    }
    histogram
}
