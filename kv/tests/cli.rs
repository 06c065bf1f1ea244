//! The `kv` command-line tool, end to end: on the work disk (ext4, O_DIRECT),
//! on /dev/shm (tmpfs), and on ramfs, which refuses O_DIRECT, so the
//! buffered fallback is taken and logged once.

mod common;

use std::path::Path;
use std::process::Output;

fn kv(dir: &Path, args: &[&str]) -> Output {
    common::kv_bin()
        .args(["--db", dir.to_str().unwrap(), "--segment-bytes", "262144"])
        .args(args)
        .output()
        .expect("run kv")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = kv(dir, args);
    assert!(out.status.success(), "kv {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every command, and returns all stderr the commands wrote.
fn round_trip(dir: &Path) -> String {
    let mut stderr = String::new();
    let mut run = |args: &[&str]| {
        let out = ok(dir, args);
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    };
    run(&["put", "apple", "red"]);
    run(&["put", "banana", "yellow"]);
    run(&["put", "cherry", "dark red"]);
    assert_eq!(run(&["get", "banana"]), "yellow\n");
    run(&["del", "banana"]);
    assert_eq!(run(&["scan"]), "apple\tred\ncherry\tdark red\n");
    assert_eq!(run(&["scan", "--from", "b", "--to", "d"]), "cherry\tdark red\n");
    assert_eq!(run(&["scan", "--limit", "1"]), "apple\tred\n");
    let stats = run(&["stats"]);
    assert!(stats.contains("io_backend\tio_uring"), "{stats}");
    assert!(stats.contains("live_keys\t2"), "{stats}");
    let check = run(&["check"]);
    assert!(check.contains("frames\t4") && check.ends_with("sound\n"), "{check}");
    let dump = run(&["wal-dump"]);
    assert_eq!(dump.lines().filter(|l| l.contains("\tbatch\t") && l.ends_with("crc=ok")).count(), 4, "{dump}");

    let missing = kv(dir, &["get", "banana"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    stderr
}

#[test]
fn round_trip_on_the_work_disk() {
    let dir = common::temp_dir("cli");
    let stderr = round_trip(dir.path());
    assert!(!stderr.contains("O_DIRECT"), "ext4 takes O_DIRECT: {stderr}");
}

#[test]
fn round_trip_on_dev_shm() {
    let dir = tempfile::Builder::new().prefix("ringkv-cli").tempdir_in("/dev/shm").expect("a dir in /dev/shm");
    let stderr = round_trip(dir.path());
    // Kernels since 6.6 accept O_DIRECT on tmpfs; older ones refuse it.
    let warnings = stderr.matches("refuses O_DIRECT").count();
    assert!(warnings <= 8, "at most one warning per command: {stderr}");
}

#[test]
fn errors_name_the_problem_and_exit_non_zero() {
    let out = common::kv_bin().args(["--db", "/proc/no-such-store", "put", "k", "v"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a store error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/proc/no-such-store"), "{stderr}");
    let out = common::kv_bin().args(["--io", "carrier-pigeon", "stats"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier-pigeon"));
}

#[test]
fn refused_o_direct_falls_back_to_buffered_io_and_says_so_once() {
    let Some(ramfs) = common::Mount::new("ramfs", None) else {
        eprintln!("skipped: this machine does not allow mounting a ramfs");
        return;
    };
    let store = ramfs.path().join("store");
    let out = ok(&store, &["put", "k", "v"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("refuses O_DIRECT").count(), 1, "logged once per process: {stderr}");
    assert_eq!(stdout(&ok(&store, &["get", "k"])), "v\n");
    let check = stdout(&ok(&store, &["check"]));
    assert!(check.ends_with("sound\n"), "{check}");
}

/// Regression: values came only from argv, so a value over the kernel's
/// 128 KiB argument limit failed with "Argument list too long"; and global
/// flags were refused after the subcommand.
#[test]
fn a_large_value_goes_in_through_stdin_and_flags_go_anywhere() {
    use std::io::Write;
    let dir = common::temp_dir("stdin");
    let db = dir.path().to_str().unwrap();
    let value: Vec<u8> = (0..900_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut child =
        common::kv_bin().args(["put", "big", "-", "--db", db]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&value).unwrap();
    assert!(child.wait().unwrap().success());
    let out = common::kv_bin().args(["get", "big", "--db", db]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), value.len() + 1);
    assert_eq!(&out.stdout[..value.len()], &value[..]);
}

/// Keys and values that are not UTF-8, or hold tabs and newlines, go in and
/// come out intact: `--hex` both ways, `--json`, and escaped scan lines (a
/// newline in a value used to split the line).
#[test]
fn binary_keys_through_hex_json_and_escaped_scan_lines() {
    let dir = common::temp_dir("hex");
    ok(dir.path(), &["--hex", "put", "ff00fe", "6869"]);
    ok(dir.path(), &["put", "tab\tkey", "line one\nline two\\"]);
    let file = dir.path().join("value.bin");
    std::fs::write(&file, [0x80u8, b'a', 0x0a]).unwrap();
    ok(dir.path(), &["put", "from-file", "--value-file", file.to_str().unwrap()]);

    assert_eq!(stdout(&ok(dir.path(), &["--hex", "get", "ff00fe"])), "6869\n");
    assert_eq!(ok(dir.path(), &["get", "from-file"]).stdout, [0x80, b'a', 0x0a, b'\n'], "get prints the bytes");
    assert_eq!(
        stdout(&ok(dir.path(), &["scan"])),
        "from-file\t\\x80a\\n\ntab\\tkey\tline one\\nline two\\\\\n\\xff\\x00\\xfe\thi\n"
    );
    assert_eq!(
        stdout(&ok(dir.path(), &["scan", "--hex", "--reverse", "--limit", "1"])),
        "ff00fe\t6869\n",
        "reverse order, hex"
    );
    let json = stdout(&ok(dir.path(), &["scan", "--json"]));
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0], serde_json::json!({"key": "from-file", "value_hex": "80610a"}));
    assert_eq!(lines[1], serde_json::json!({"key": "tab\tkey", "value": "line one\nline two\\"}));
    assert_eq!(lines[2], serde_json::json!({"key_hex": "ff00fe", "value": "hi"}));
    let prefixed = stdout(&ok(dir.path(), &["scan", "--prefix", "tab"]));
    assert!(prefixed.starts_with("tab\\tkey\t") && prefixed.lines().count() == 1, "{prefixed}");
    let stats: serde_json::Value = serde_json::from_str(&stdout(&ok(dir.path(), &["stats", "--json"]))).unwrap();
    assert_eq!(stats["live_keys"], 3);

    let bad = kv(dir.path(), &["--hex", "get", "xyz"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not hex"));
}

/// The page file through the CLI: `kv checkpoint` folds the log into it,
/// `kv stats` and `kv check` describe it; a flipped bit in a tree page is
/// an error naming the page, from `kv get` and from `kv check`.
#[test]
fn checkpoint_stats_and_a_damaged_tree_page() {
    let dir = common::temp_dir("cli-tree");
    let db = common::open(dir.path(), common::AUTO);
    for chunk in (0..3000u32).collect::<Vec<_>>().chunks(500) {
        let mut batch = ringkv::WriteBatch::new();
        for i in chunk {
            batch.put(format!("key-{i:05}"), format!("value-{i}"));
        }
        db.write(batch).unwrap();
    }
    drop(db);
    let out = stdout(&ok(dir.path(), &["checkpoint"]));
    assert!(out.starts_with("checkpoint 1 at LSN "), "{out}");
    let stats = stdout(&ok(dir.path(), &["stats"]));
    for line in ["live_keys\t3000", "memtable_entries\t0", "checkpoint_generation\t1", "tree_height\t2"] {
        assert!(stats.lines().any(|l| l == line), "{line:?} in {stats}");
    }
    let report = stdout(&ok(dir.path(), &["check"]));
    assert!(report.contains("tree_keys\t3000") && report.ends_with("sound\n"), "{report}");

    // Page 2 is the first the checkpoint wrote: a leaf, in the tree.
    let path = dir.path().join("data.db");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 4096 + 100] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let out = kv(dir.path(), &["get", "key-00000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("corrupt page 2 in") && stderr.contains("data.db"), "{stderr}");
    let out = kv(dir.path(), &["check"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("damage: corrupt page 2 in") && report.contains("UNSOUND"), "{report}");
}
