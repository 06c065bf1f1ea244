//! `kv`: look into and change a ringkv store from the command line.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ringkv::{Io, Kv, Options, RecoveryMode, SyncMode, WriteBatch};

#[derive(Parser)]
#[command(name = "kv", about = "Inspect and change a ringkv store", version)]
struct Cli {
    /// The store's directory.
    #[arg(long, global = true, default_value = "ringkv-data")]
    db: PathBuf,
    /// I/O backend: auto (io_uring, falling back to syscalls), uring, syscall.
    #[arg(long, global = true, default_value = "auto")]
    io: Io,
    /// How io_uring commits: dsync (one RWF_DSYNC write at a time) or linked (pipelined write → fdatasync chains).
    #[arg(long, global = true, default_value = "dsync")]
    sync_mode: SyncMode,
    /// How read-only commands treat a damaged log before its synced end:
    /// refuse (strict), or show the store as it was before the damage
    /// (point-in-time; nothing is changed). Only `kv repair` drops data.
    #[arg(long, global = true, value_enum, default_value = "strict")]
    recovery: Recovery,
    /// Size of new WAL segment files, in bytes (a multiple of 4096, at least 262144).
    #[arg(long, global = true, default_value_t = wal::SEGMENT_BYTES_DEFAULT, value_parser = parse_segment_bytes)]
    segment_bytes: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Recovery {
    /// Refuse to open, naming the file and offset.
    Strict,
    /// Read everything before the damage, ignore the rest.
    PointInTime,
}

#[derive(Subcommand)]
enum Command {
    /// Set KEY to VALUE (durable when the command returns); VALUE `-` reads
    /// the value's bytes from standard input.
    Put { key: String, value: String },
    /// Print the value of KEY; exit status 1 if it has none.
    Get { key: String },
    /// Remove KEY.
    Del { key: String },
    /// Print `key<TAB>value` lines in key order.
    Scan {
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Last key (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// At most this many lines.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print the backend, the log's extent and the number of keys.
    Stats,
    /// Verify every WAL frame and batch; exit status 0 only if sound.
    Check,
    /// One line per WAL frame: LSN, kind, length, CRC; exit status 1 if the log is corrupt.
    WalDump,
    /// Recover a store whose log is damaged before its synced end, keeping
    /// everything before the damage. DROPS the acknowledged writes after it:
    /// their log bytes are first copied to a `wal/dropped-*.bin` file, whose
    /// path is printed. The only command that drops data.
    Repair,
    /// Test helper: durable writes from several threads, printing `ack KEY...`
    /// after each acknowledged write, until killed.
    #[command(hide = true)]
    CrashWriter {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 0)]
        round: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RINGKV_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse(); // a usage error exits with status 2
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv: {e}");
            match e.downcast_ref::<ringkv::Error>() {
                Some(ringkv::Error::NotFound { .. }) => ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND),
                _ => ExitCode::from(EXIT_STORE_ERROR),
            }
        }
    }
}

/// Exit status: no such key or store, or `check`/`wal-dump` found damage.
const EXIT_NOT_FOUND_OR_UNSOUND: u8 = 1;
/// Exit status: bad usage (as clap's own).
const EXIT_USAGE: u8 = 2;
/// Exit status: the store failed (I/O, corruption on open, locked, ...).
const EXIT_STORE_ERROR: u8 = 3;

fn options(cli: &Cli) -> Options {
    let recovery = match cli.recovery {
        Recovery::Strict => RecoveryMode::Strict,
        Recovery::PointInTime => RecoveryMode::PointInTime,
    };
    let mut options = Options::default();
    options.io = cli.io;
    options.sync_mode = cli.sync_mode;
    options.recovery = recovery;
    options.segment_bytes = cli.segment_bytes;
    options
}

fn parse_segment_bytes(text: &str) -> Result<u64, String> {
    let bytes: u64 = text.parse().map_err(|e| format!("{e}"))?;
    if bytes < wal::SEGMENT_BYTES_MIN || bytes % 4096 != 0 {
        return Err(format!("must be a multiple of 4096 and at least {}", wal::SEGMENT_BYTES_MIN));
    }
    Ok(bytes)
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let options = options(&cli);
    let writes = matches!(cli.command, Command::Put { .. } | Command::Del { .. } | Command::CrashWriter { .. });
    if writes && matches!(cli.recovery, Recovery::PointInTime) {
        eprintln!("kv: --recovery point-in-time would drop acknowledged writes; only `kv repair` does that");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let open = || Kv::open_with(&cli.db, options);
    // Commands that only read never create, repair or change a store.
    let open_existing = || Kv::open_read_only(&cli.db, options);
    if let Command::CrashWriter { threads, round } = cli.command {
        // Its threads print themselves: stdout must not be held here.
        crash_writer(Arc::new(open()?), threads, round);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    match &cli.command {
        Command::Put { key, value } if value == "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)?;
            open()?.put(key, bytes)?
        }
        Command::Put { key, value } => open()?.put(key, value)?,
        Command::Del { key } => open()?.delete(key)?,
        Command::Get { key } => match open_existing()?.get(key)? {
            Some(value) => writeln!(out, "{}", String::from_utf8_lossy(&value))?,
            None => {
                eprintln!("kv: {key:?} not found");
                return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
            }
        },
        Command::Scan { from, to, limit } => {
            let db = open_existing()?;
            let start = from.clone().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
            let end = to.clone().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            for item in db.scan((start, end)).take(limit.unwrap_or(usize::MAX)) {
                let (k, v) = item?;
                writeln!(out, "{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v))?;
            }
        }
        Command::Stats => {
            let db = open_existing()?;
            let stats = db.stats();
            writeln!(out, "dir\t{}", db.dir().display())?;
            writeln!(out, "io_backend\t{}", stats.backend)?;
            writeln!(out, "durable_lsn\t{}", stats.wal.durable_lsn)?;
            writeln!(out, "live_keys\t{}", stats.live_keys)?;
        }
        Command::Check => return check(&cli, options, &mut out),
        Command::WalDump => return wal_dump(&cli, options, &mut out),
        Command::Repair => {
            let mut repair = options;
            repair.recovery = RecoveryMode::PointInTime;
            repair.create_if_missing = false;
            let db = Kv::open_with(&cli.db, repair)?;
            let recovered = db.recovered().expect("opened for writing");
            match &recovered.dropped {
                Some(dropped) => writeln!(
                    out,
                    "repaired: the log now ends at LSN {} before a corrupt frame in {} at offset {} ({}); \
                     acknowledged writes up to LSN {} were dropped; a copy of the {} dropped log bytes is in {}",
                    recovered.end,
                    dropped.bad.path.display(),
                    dropped.bad.offset,
                    dropped.bad.fault.reason(),
                    dropped.durable_past,
                    dropped.copy_bytes,
                    dropped.copy.display()
                )?,
                None => writeln!(out, "sound; nothing dropped (log ends at LSN {})", recovered.end)?,
            }
            db.close()?;
        }
        Command::CrashWriter { threads, round } => crash_writer(Arc::new(open()?), *threads, *round),
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn check(cli: &Cli, options: Options, out: &mut impl Write) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (mut frames, mut ops, mut bad_batch) = (0u64, 0usize, None);
    let inspection = ringkv::inspect_log(&cli.db, options, &mut |header, payload| {
        if header.kind == wal::FrameKind::Batch {
            frames += 1;
            match ringkv::check_batch(header.lsn, payload) {
                Ok(n) => ops += n,
                Err(e) => {
                    bad_batch.get_or_insert(e);
                }
            }
        }
    })?;
    writeln!(out, "frames\t{frames}\noperations\t{ops}\nlog_end\t{}", inspection.end)?;
    if let Some(e) = bad_batch {
        writeln!(out, "UNSOUND: {e}")?;
        return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
    }
    match (&inspection.bad, inspection.corrupt) {
        (Some(bad), true) => {
            writeln!(
                out,
                "UNSOUND: corrupt frame in {} at offset {} (LSN {}): {}; durable frames follow it",
                bad.path.display(),
                bad.offset,
                bad.lsn,
                bad.fault.reason()
            )?;
            return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
        }
        (Some(bad), false) if inspection.junk_end.is_some() => writeln!(
            out,
            "sound; torn unacknowledged tail at LSN {} ({}) will be truncated on open",
            bad.lsn,
            bad.fault.reason()
        )?,
        _ => writeln!(out, "sound")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn wal_dump(cli: &Cli, options: Options, out: &mut impl Write) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut lines = Vec::new();
    let inspection = ringkv::inspect_log(&cli.db, options, &mut |h, _| {
        lines.push(format!("{}\t{}\t{}\tcrc=ok", h.lsn, h.kind, h.frame_bytes()));
    })?;
    writeln!(out, "lsn\tkind\tbytes\tcrc")?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    if let Some(bad) = &inspection.bad {
        let what = if inspection.corrupt { "CORRUPT" } else { "end" };
        writeln!(
            out,
            "{}\t-\t-\tcrc=bad ({}) {what} at {} offset {}",
            bad.lsn,
            bad.fault.reason(),
            bad.path.display(),
            bad.offset
        )?;
        if inspection.corrupt {
            return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes until killed: every thread puts its own keys (every fifth write a
/// batch of three), and prints the keys once the write is acknowledged.
fn crash_writer(db: Arc<Kv>, threads: usize, round: u64) {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for seq in 0u64.. {
                    let key = |part: &str| format!("r{round}-t{t}-{seq:09}{part}");
                    let keys: Vec<String> =
                        if seq % 5 == 4 { vec![key("a"), key("b"), key("c")] } else { vec![key("")] };
                    let mut batch = WriteBatch::new();
                    for k in &keys {
                        batch.put(k, format!("value-of-{k}"));
                    }
                    if let Err(e) = db.write(batch) {
                        eprintln!("kv: write failed: {e}");
                        std::process::exit(2);
                    }
                    let line = format!("ack {}\n", keys.join(" "));
                    let mut stdout = std::io::stdout().lock();
                    if stdout.write_all(line.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
