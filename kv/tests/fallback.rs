//! Where io_uring cannot be used, `Io::Auto` falls back to system calls and
//! says so once; `Io::Uring` fails with a typed error. Both are tested for
//! real in child processes: one under a seccomp filter that answers
//! `io_uring_setup` with EPERM (a container that forbids io_uring), one
//! whose locked-memory limit is too small to register the commit buffer.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

/// Held by each test here for its whole run. The kernel charges io_uring's
/// rings and registered buffers to the user's locked memory, all of its
/// processes together, against the limit of the process asking: a child
/// under a 64 KiB limit fails `io_uring_setup` while another test's
/// processes hold rings, so these tests run one at a time. (Rings are also
/// released asynchronously after a process exits: a test of the default
/// mode under the limit, whose processes set up a ring per thread, made
/// the next test's restricted child fail `io_uring_setup` on a clean CI
/// run, and was dropped.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const CAP_IPC_LOCK: libc::c_ulong = 14;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs, in the calling (child) process, a filter that makes
/// `io_uring_setup` fail with EPERM and allows everything else.
fn forbid_io_uring() -> std::io::Result<()> {
    let setup = libc::SYS_io_uring_setup as u32;
    let mut program = [
        insn(BPF_LD_W_ABS, 0, 0, 0), // the syscall number
        insn(BPF_JEQ_K, 0, 1, setup),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: prctl with integer arguments only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fprog points at `program`, which outlives the call; the kernel
    // copies the filter before returning.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Limits locked memory to 64 KiB in the calling (child) process, and drops
/// CAP_IPC_LOCK from its bounding set so that, even as root, the limit binds
/// after exec.
fn shrink_memlock() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only changes this process's capabilities.
    if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error();
        // Not root: CAP_IPC_LOCK is not ours to begin with, and the limit binds anyway.
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
    }
    let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
    // SAFETY: limit is a valid rlimit that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn kv_under(dir: &Path, io: &str, args: &[&str], restrict: fn() -> std::io::Result<()>) -> Output {
    kv_with(dir, io, "syscalls", args, restrict)
}

fn kv_with(dir: &Path, io: &str, sync_mode: &str, args: &[&str], restrict: fn() -> std::io::Result<()>) -> Output {
    let mut command: Command = common::kv_bin();
    command.args(["--db", dir.to_str().unwrap(), "--io", io, "--sync-mode", sync_mode, "--segment-bytes", "262144"]);
    command.args(args);
    // SAFETY: the hook runs between fork and exec and only makes prctl and
    // setrlimit system calls, which are async-signal-safe.
    unsafe { command.pre_exec(restrict) };
    command.output().expect("run kv")
}

/// `sync_mode`: how the writing commands commit (only `dsync` and `linked`
/// register commit buffers); `read_only_backend`: what a command that only
/// reads uses under the restriction (it registers no buffers, so a
/// locked-memory limit does not stop it from using io_uring).
fn check_fallback(restrict: fn() -> std::io::Result<()>, reason: &str, sync_mode: &str, read_only_backend: &str) {
    let dir = common::temp_dir("fallback");
    let put = kv_with(dir.path(), "auto", sync_mode, &["put", "k", "v"], restrict);
    let stderr = String::from_utf8_lossy(&put.stderr);
    assert!(put.status.success(), "{stderr}");
    assert_eq!(stderr.matches("falling back to the syscall backend").count(), 1, "{stderr}");
    assert!(stderr.contains(reason), "names the failed step: {stderr}");

    let stats = kv_under(dir.path(), "auto", &["stats"], restrict);
    let stdout = String::from_utf8_lossy(&stats.stdout);
    assert!(stdout.contains(&format!("io_backend\t{read_only_backend}")), "{stdout}");
    let get = kv_under(dir.path(), "auto", &["get", "k"], restrict);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "v\n");

    let strict = kv_with(dir.path(), "uring", sync_mode, &["put", "k2", "v"], restrict);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(3), "a store error: {stderr}");
    assert!(stderr.contains("io_uring is not available") && stderr.contains(reason), "{stderr}");

    // Unrestricted, the same store opens on io_uring.
    let out = common::kv_bin().args(["--db", dir.path().to_str().unwrap(), "stats"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("io_backend\tio_uring"));
}

#[test]
fn seccomp_forbidding_io_uring_falls_back_to_syscalls() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    check_fallback(forbid_io_uring, "io_uring_setup", "syscalls", "syscall");
}

#[test]
fn locked_memory_limit_too_small_for_buffers_falls_back_to_syscalls() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    check_fallback(shrink_memlock, "register_buffers", "dsync", "io_uring");
}
