//! Regression: the benchmark removed the whole `--dir` at the end of a run,
//! and any `--dir/<system name>` before it: a user's directory. It must
//! remove only what it created.

use std::process::Command;

fn bench(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_benches"))
        .args(["--quick", "--workloads", "commit", "--threads", "1", "--systems", "ringkv-syscall,group-loop,inline"])
        .arg("--dir")
        .arg(dir)
        .arg("--out")
        .arg(dir.with_extension("report"))
        .output()
        .unwrap()
}

#[test]
fn the_benchmark_never_removes_what_it_did_not_create() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("mine");
    std::fs::create_dir_all(dir.join("ringkv-syscall")).unwrap();
    std::fs::write(dir.join("ringkv-syscall/keep.txt"), "user data").unwrap();
    std::fs::write(dir.join("notes.txt"), "user data").unwrap();
    let out = bench(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "user data");
    assert_eq!(std::fs::read_to_string(dir.join("ringkv-syscall/keep.txt")).unwrap(), "user data");
    let mut left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "ringkv-syscall"], "the run removed its own directory and nothing else");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "no terminal codes into a pipe: {stderr:?}");

    // A --dir the run created is removed again.
    let fresh = tmp.path().join("fresh");
    assert!(bench(&fresh).status.success());
    assert!(!fresh.exists(), "the directory the run created is gone");
}
