//! `kv`: look into and change a ringkv store from the command line.

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
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
    /// How io_uring commits: syscalls (pwrite + fdatasync by the committing thread, one batch at a time),
    /// dsync (one RWF_DSYNC write through the ring at a time) or linked (pipelined write → fdatasync chains).
    #[arg(long, global = true, default_value = "syscalls")]
    sync_mode: SyncMode,
    /// How read-only commands treat a damaged log before its synced end:
    /// refuse (strict), or show the store as it was before the damage
    /// (point-in-time; nothing is changed). Only `kv repair` drops data.
    #[arg(long, global = true, value_enum, default_value = "strict")]
    recovery: Recovery,
    /// Size of new WAL segment files, in bytes (a multiple of 4096, at least 262144).
    #[arg(long, global = true, default_value_t = wal::SEGMENT_BYTES_DEFAULT, value_parser = parse_segment_bytes)]
    segment_bytes: u64,
    /// Checkpoint the memtable into the page file once it holds this many bytes.
    #[arg(long, global = true)]
    memtable_bytes: Option<usize>,
    /// Keep about this many bytes of WAL on disk (checkpointing to stay under it).
    #[arg(long, global = true)]
    wal_bytes: Option<u64>,
    /// Bytes of page-file nodes cached in memory.
    #[arg(long, global = true)]
    cache_bytes: Option<usize>,
    /// Keys and values given as hex (`--hex get 00ff`), and printed as hex.
    #[arg(long, global = true)]
    hex: bool,
    /// Print `get`, `scan` and `stats` as JSON (one object per line). Keys
    /// and values are strings when UTF-8, else `key_hex`/`value_hex`.
    #[arg(long, global = true)]
    json: bool,
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
    Put {
        key: OsString,
        #[arg(required_unless_present = "value_file")]
        value: Option<OsString>,
        /// Read the value's bytes from this file.
        #[arg(long, conflicts_with = "value")]
        value_file: Option<PathBuf>,
    },
    /// Print the value of KEY (its bytes as they are, then a newline); exit
    /// status 1 if it has none.
    Get { key: OsString },
    /// Remove KEY.
    Del { key: OsString },
    /// Print `key<TAB>value` lines in key order, escaped (`\t`, `\n`,
    /// `\\`, `\xNN` for other control and non-UTF-8 bytes).
    Scan {
        /// First key (inclusive).
        #[arg(long)]
        from: Option<OsString>,
        /// Last key (exclusive).
        #[arg(long)]
        to: Option<OsString>,
        /// Only keys starting with this.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        prefix: Option<OsString>,
        /// In reverse key order.
        #[arg(long)]
        reverse: bool,
        /// At most this many lines.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print the backend, the log's extent, the number of keys, and the
    /// memtable's and page file's sizes.
    Stats,
    /// Fold everything written into the page file now, and drop the log it
    /// no longer needs.
    Checkpoint,
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
                _ if e.is::<Usage>() => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_STORE_ERROR),
            }
        }
    }
}

/// Exit status: no such key or store, or `check`/`wal-dump` found damage.
const EXIT_NOT_FOUND_OR_UNSOUND: u8 = 1;
/// A usage error clap cannot see (bad hex).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

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
    options.memtable_bytes = cli.memtable_bytes.unwrap_or(options.memtable_bytes);
    options.wal_bytes = cli.wal_bytes.unwrap_or(options.wal_bytes);
    options.cache_bytes = cli.cache_bytes.unwrap_or(options.cache_bytes);
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
    let writes = matches!(
        cli.command,
        Command::Put { .. } | Command::Del { .. } | Command::Checkpoint | Command::CrashWriter { .. }
    );
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
    let bytes = |arg: &OsString| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        if cli.hex {
            Ok(from_hex(arg.as_bytes()).ok_or_else(|| Usage(format!("{arg:?} is not hex")))?)
        } else {
            Ok(arg.as_bytes().to_vec())
        }
    };
    match &cli.command {
        Command::Put { key, value, value_file } => {
            let value = match (value, value_file) {
                (_, Some(path)) => std::fs::read(path).map_err(|e| format!("--value-file {}: {e}", path.display()))?,
                (Some(v), None) if v == "-" => {
                    let mut stdin = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut stdin)?;
                    stdin
                }
                (Some(v), None) => bytes(v)?,
                (None, None) => unreachable!("clap requires a value"),
            };
            open()?.put(bytes(key)?, value)?
        }
        Command::Del { key } => open()?.delete(bytes(key)?)?,
        Command::Get { key } => {
            let key = bytes(key)?;
            match open_existing()?.get(&key)? {
                Some(value) if cli.json => writeln!(out, "{}", json_entry(&key, &value, cli.hex))?,
                Some(value) if cli.hex => writeln!(out, "{}", to_hex(&value))?,
                Some(value) => {
                    out.write_all(&value)?;
                    out.write_all(b"\n")?;
                }
                None => {
                    eprintln!("kv: {} not found", escaped(&key));
                    return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
                }
            }
        }
        Command::Scan { from, to, prefix, reverse, limit } => {
            let db = open_existing()?;
            let scan = match prefix {
                Some(prefix) => db.scan_prefix(bytes(prefix)?),
                None => {
                    let start = from.as_ref().map(&bytes).transpose()?.map_or(Bound::Unbounded, Bound::Included);
                    let end = to.as_ref().map(&bytes).transpose()?.map_or(Bound::Unbounded, Bound::Excluded);
                    db.scan((start, end))
                }
            };
            let items: Box<dyn Iterator<Item = _>> = if *reverse { Box::new(scan.rev()) } else { Box::new(scan) };
            for item in items.take(limit.unwrap_or(usize::MAX)) {
                let (k, v) = item?;
                if cli.json {
                    writeln!(out, "{}", json_entry(&k, &v, cli.hex))?;
                } else if cli.hex {
                    writeln!(out, "{}\t{}", to_hex(&k), to_hex(&v))?;
                } else {
                    writeln!(out, "{}\t{}", escaped(&k), escaped(&v))?;
                }
            }
        }
        Command::Stats => {
            let db = open_existing()?;
            let stats = db.stats()?;
            let mut live_keys = 0u64;
            for item in db.scan::<&[u8]>(..) {
                item?;
                live_keys += 1;
            }
            let p = &stats.page_file;
            let fields: Vec<(&str, serde_json::Value)> = vec![
                ("dir", db.dir().display().to_string().into()),
                ("io_backend", stats.backend.to_string().into()),
                ("durable_lsn", stats.wal.durable_lsn.0.into()),
                ("live_keys", live_keys.into()),
                ("memtable_entries", stats.memtable_entries.into()),
                ("memtable_bytes", stats.memtable_bytes.into()),
                ("wal_retained_bytes", stats.wal_retained_bytes.into()),
                ("page_file_bytes", p.file_bytes.into()),
                ("pages", p.pages.into()),
                ("free_pages", p.free_pages.into()),
                ("tree_height", p.height.into()),
                ("checkpoint_generation", p.generation.into()),
                ("checkpoint_lsn", p.checkpoint_lsn.0.into()),
            ];
            if cli.json {
                let object: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                writeln!(out, "{}", serde_json::Value::Object(object))?;
            } else {
                for (name, value) in fields {
                    match value {
                        serde_json::Value::String(s) => writeln!(out, "{name}\t{s}")?,
                        other => writeln!(out, "{name}\t{other}")?,
                    }
                }
            }
        }
        Command::Checkpoint => {
            let mut existing = options;
            existing.create_if_missing = false;
            let db = Kv::open_with(&cli.db, existing)?;
            db.checkpoint()?;
            let p = db.stats()?.page_file;
            writeln!(
                out,
                "checkpoint {} at LSN {}: {} pages, {} free",
                p.generation, p.checkpoint_lsn, p.pages, p.free_pages
            )?;
        }
        Command::Check => return check(&cli, options, &mut out),
        Command::WalDump => return wal_dump(&cli, options, &mut out),
        Command::Repair => {
            let mut repair = options;
            repair.recovery = RecoveryMode::PointInTime;
            repair.create_if_missing = false;
            let db = Kv::open_with(&cli.db, repair)?;
            let recovered = db.recovered().expect("opened for writing");
            if let Some(dropped) = &recovered.dropped {
                if !dropped.unreadable.is_empty() {
                    writeln!(
                        out,
                        "warning: {} blocks could not be read and are zeros in the copy (offsets in the copy: {:?})",
                        dropped.unreadable.len(),
                        dropped.unreadable
                    )?;
                }
                for earlier in &dropped.earlier_copies {
                    writeln!(
                        out,
                        "note: an earlier, interrupted repair copied from the same point to {}: keep it, it may be the whole copy",
                        earlier.display()
                    )?;
                }
            }
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

/// Bytes for a line of text: UTF-8 as is, except `\\`, `\t`, `\n`, `\r`
/// and other control characters, and bytes that are not UTF-8, as escapes;
/// so a line holds one entry and every byte can be told apart.
fn escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\t' => text.push_str("\\t"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                c if c.is_control() && c.is_ascii() => text.push_str(&format!("\\x{:02x}", c as u8)),
                c if c.is_control() => text.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => text.push(c),
            }
        }
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    text
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// One entry as a JSON object: `key`/`value` strings when UTF-8 (and not
/// `--hex`), else `key_hex`/`value_hex`.
fn json_entry(key: &[u8], value: &[u8], hex: bool) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    let mut field = |name: &str, bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) if !hex => object.insert(name.to_owned(), text.into()),
        _ => object.insert(format!("{name}_hex"), to_hex(bytes).into()),
    };
    field("key", key);
    field("value", value);
    serde_json::Value::Object(object)
}

fn check(cli: &Cli, options: Options, out: &mut impl Write) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (mut frames, mut ops, mut bad_batch, mut first) = (0u64, 0usize, None, None);
    let inspection = ringkv::inspect_log(&cli.db, options, &mut |header, payload| {
        if header.kind == wal::FrameKind::Batch {
            first.get_or_insert(header.lsn);
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
    match ringkv::check_page_file(&cli.db, options) {
        Ok(None) => writeln!(out, "page_file\tnone")?,
        Ok(Some(tree)) => {
            writeln!(
                out,
                "tree_keys\t{}\ntree_height\t{}\npages\t{}\nfree_pages\t{}\ncheckpoint_generation\t{}\ncheckpoint_lsn\t{}",
                tree.keys, tree.height, tree.pages, tree.free_pages, tree.generation, tree.checkpoint_lsn
            )?;
            if let Some(why) = &tree.fell_back {
                writeln!(out, "warning: {why}; the older checkpoint was checked")?;
            }
            if let Some(problem) = tree.problems.first() {
                for problem in &tree.problems {
                    writeln!(out, "damage: {problem}")?;
                }
                writeln!(out, "UNSOUND: the page file is damaged ({problem})")?;
                return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
            }
            if let Some(first) = first.filter(|&first| first > tree.checkpoint_lsn) {
                writeln!(
                    out,
                    "UNSOUND: the log starts at LSN {first}, after the checkpoint's cut at {}",
                    tree.checkpoint_lsn
                )?;
                return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
            }
        }
        Err(e) if e.is_corruption() => {
            writeln!(out, "UNSOUND: {e}")?;
            return Ok(ExitCode::from(EXIT_NOT_FOUND_OR_UNSOUND));
        }
        Err(e) => return Err(e.into()),
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
