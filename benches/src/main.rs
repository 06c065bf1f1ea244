//! The ringkv benchmark suite: group-commit latency and throughput, bulk
//! load, reads and a mixed workload, for ringkv on io_uring and on plain
//! system calls, two baselines (a minimal group-commit loop and inline
//! pwrite + fdatasync), and (with `--features
//! peers`) RocksDB, SQLite, redb and fjall, in one run on the same disk.
//! Writes a table, CSV, JSON and SVG plots.

#![forbid(unsafe_code)]

mod baseline;
mod checkpoint;
mod page_at_a_time;
#[cfg(feature = "peers")]
mod peers;
mod report;
mod systems;
mod workloads;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "benches", about = "ringkv benchmark suite")]
struct Args {
    /// Directory to run in, on the disk to measure. Each run works in a new
    /// subdirectory of its own and removes only that (and this directory,
    /// if the run created it and leaves it empty).
    #[arg(long, default_value = "ringkv-bench")]
    dir: PathBuf,
    /// Where the CSV, JSON and SVG files go.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Writer thread counts of the commit workload.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    threads: Vec<usize>,
    /// Measured seconds per commit, read and mixed run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Puts of the bulk workload (in durable batches of --batch).
    #[arg(long, default_value_t = 1_000_000)]
    bulk: u64,
    /// Batch size of the bulk workload.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Only these systems (comma-separated names); all by default.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only these workloads: commit, bulk, read, mixed, checkpoint.
    #[arg(long, value_delimiter = ',', default_value = "commit,bulk,read,mixed,checkpoint")]
    workloads: Vec<String>,
    /// Read cache for every system (ringkv's page cache, RocksDB's block
    /// cache, redb's and fjall's caches); each keeps its default if unset.
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// ringkv reads its page file with O_DIRECT only, bypassing the
    /// kernel's page cache (`Options::os_page_cache = false`).
    #[arg(long)]
    ringkv_direct_reads: bool,
    /// ringkv's memtable threshold (`Options::memtable_bytes`); a large one
    /// keeps checkpoints out of a commit run, to measure the commit path
    /// alone. Its default if unset.
    #[arg(long)]
    ringkv_memtable_bytes: Option<u64>,
    /// ringkv's WAL threshold (`Options::wal_bytes`), which starts a
    /// checkpoint once a quarter of it was logged. Its default if unset.
    #[arg(long)]
    ringkv_wal_bytes: Option<u64>,
    /// After each system's load and before its reads, write back and evict
    /// its files from the kernel's page cache, so stores that wrote through
    /// it start their reads as cold as ringkv, whose pages are written
    /// with O_DIRECT.
    #[arg(long)]
    cold_reads: bool,
    /// Keys loaded before each timed checkpoint (checkpoint workload).
    #[arg(long, default_value_t = 1_000_000)]
    checkpoint_keys: u64,
    /// A smoke run: 0.3 s per run and 50,000 bulk puts (and checkpoint keys).
    #[arg(long)]
    quick: bool,
}

fn main() {
    // Warnings only (fallbacks), no colour codes unless stderr is a terminal.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 0.3;
        args.bulk = 50_000;
        args.checkpoint_keys = 50_000;
    }
    if let Some(bytes) = args.cache_bytes {
        systems::set_cache_bytes(bytes);
    }
    if let Some(bytes) = args.ringkv_memtable_bytes {
        systems::set_ringkv_memtable_bytes(bytes);
    }
    if let Some(bytes) = args.ringkv_wal_bytes {
        systems::set_ringkv_wal_bytes(bytes);
    }
    if args.ringkv_direct_reads {
        systems::set_ringkv_direct_reads();
    }
    let all = systems::names();
    let systems: Vec<&str> =
        all.iter().copied().filter(|s| args.systems.is_empty() || args.systems.iter().any(|w| w == s)).collect();
    let workspace = RunDir::create(&args.dir);
    let machine = report::Machine::probe(&args.dir);
    println!("# ringkv benchmarks, {} UTC", machine.date_utc);
    println!(
        "# machine: {} cores ({}), kernel {}, {} on {}",
        machine.cores, machine.cpu, machine.kernel, machine.filesystem, machine.device
    );
    println!("# command: {}", machine.command);
    if let Some(limit) = machine.memory_limit {
        println!("# memory: this run's cgroup may use {} MiB, the kernel's page cache included", limit >> 20);
    }
    if args.cold_reads {
        println!(
            "# reads start cold: each system's files are written back and evicted from the kernel's page cache first"
        );
    }
    for (system, note) in systems::setup_notes().into_iter().filter(|(s, _)| systems.contains(s)) {
        println!("# {system}: {note}");
    }
    let (sync_p50, sync_p99) = baseline::disk_sync_us(&workspace.path, DISK_LINE_SAMPLES);
    println!(
        "# disk line: one 4 KiB pwrite + fdatasync into a zero-filled file, {DISK_LINE_SAMPLES} samples: \
         p50 {sync_p50:.0} us, p99 {sync_p99:.0} us; one at a time that is {:.0} commits/s",
        1e6 / sync_p50
    );
    let measurements = run_all(&args, &systems, &workspace.path);
    let rows = report::rows(&measurements);
    println!("{}", report::table_header());
    for row in &rows {
        println!("{}", report::table_line(row));
    }
    for file in report::write_all(&args.out, &machine, &measurements, &rows, &systems) {
        println!("# wrote {}", file.display());
    }
    if args.workloads.iter().any(|w| w == "checkpoint") {
        checkpoint::run(&systems, &workspace.path, args.checkpoint_keys, if args.quick { 1 } else { 3 });
    }
    workspace.remove();
}

/// Samples of the disk line (one write + fdatasync each).
const DISK_LINE_SAMPLES: usize = 500;

/// The directory one run works in: created new inside `--dir` (never an
/// existing one), and the only thing the run removes, with `--dir` itself
/// if the run created it and it is left empty.
struct RunDir {
    path: PathBuf,
    parent: PathBuf,
    created_parent: bool,
}

impl RunDir {
    fn create(parent: &std::path::Path) -> RunDir {
        let created_parent = !parent.exists();
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = parent.join(format!("ringkv-bench-run-{}-{stamp}", std::process::id()));
        // create_dir, not create_dir_all: it fails rather than reuse a directory.
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        RunDir { path, parent: parent.to_owned(), created_parent }
    }

    fn remove(self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("benches: could not remove {}: {e}", self.path.display());
        }
        if self.created_parent {
            // Fails, harmlessly, if anything else is in it now.
            let _ = std::fs::remove_dir(&self.parent);
        }
    }
}

/// A progress line on stderr, only when it is a terminal (files and pipes
/// get no carriage returns or escape codes).
fn progress(line: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    }
}

/// Bytes the file system allocated to the files under `path` (as `du`).
fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
    entries.map(|entry| disk_bytes(&entry.path())).sum()
}

fn run_all(args: &Args, systems: &[&str], dir: &std::path::Path) -> Vec<workloads::Measurement> {
    let seconds = Duration::from_secs_f64(args.seconds);
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    let mut out = Vec::new();
    if wants("commit") {
        // Systems interleaved per thread count, so drift on a shared machine hits all.
        for &threads in &args.threads {
            for system in systems {
                progress(&format!("commit: {system} with {threads} writers"));
                let store = systems::open(system, &dir.join(system));
                out.push(workloads::commit(store.as_ref(), system, threads, seconds));
            }
        }
    }
    if wants("bulk") || wants("read") || wants("mixed") {
        for system in systems {
            let store = systems::open(system, &dir.join(system));
            progress(&format!("bulk: {system}, {} puts in batches of {}", args.bulk, args.batch));
            let bulk = workloads::bulk(store.as_ref(), system, args.bulk, args.batch);
            println!(
                "# {system}: {:.0} MiB on disk after loading {} keys",
                disk_bytes(&dir.join(system)) as f64 / f64::from(1 << 20),
                args.bulk
            );
            if let Some((stalls, seconds)) = store.stalls() {
                println!("# {system}: {stalls} batches of the load waited for a checkpoint, {seconds:.1} s in all");
            }
            if wants("bulk") {
                out.push(bulk);
            }
            if args.cold_reads && (wants("read") || wants("mixed")) {
                uring::evict_os_cache(&dir.join(system)).expect("evict the page cache");
            }
            if wants("read") {
                progress(&format!("read: {system}"));
                out.extend(workloads::read(store.as_ref(), system, args.bulk, 2, seconds));
            }
            if wants("mixed") {
                progress(&format!("mixed: {system}"));
                out.extend(workloads::mixed(store.as_ref(), system, args.bulk, 16, seconds));
            }
        }
        if wants("bulk") && systems.len() > 1 {
            // The same loads again in the reverse order, each merged with
            // the first: in one process a system loaded later measured up to
            // 1.4x the same system loaded first (a warmer heap and file
            // system), which favoured whatever came last.
            for system in systems.iter().rev() {
                progress(&format!("bulk (reverse order): {system}"));
                let again = dir.join(format!("{system}-again"));
                let store = systems::open(system, &again);
                let second = workloads::bulk(store.as_ref(), system, args.bulk, args.batch);
                drop(store);
                let _ = std::fs::remove_dir_all(&again);
                if let Some(first) = out.iter_mut().find(|m| m.workload == "bulk" && m.system == *system) {
                    first.merge(second);
                }
            }
        }
    }
    progress("");
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    out
}
