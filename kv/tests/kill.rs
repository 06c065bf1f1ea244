//! Real processes killed with SIGKILL mid-write: a child does durable
//! writes from four threads and prints each acknowledged key; it is killed
//! at a random moment (after a seed-chosen number of acknowledgements), and
//! every acknowledged key must be there after reopening. 20 rounds on each
//! real backend, the same directory throughout. The memtable threshold is
//! 32 KiB and the WAL budget 1 MiB, so checkpoints run (and are killed)
//! all along, and the log is reclaimed behind them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use uring::SimRng;

/// Runs one child until `acks` acknowledgements, kills it, and returns
/// every key it acknowledged (including lines still in the pipe).
fn run_child(dir: &std::path::Path, backend: common::Backend, round: u64, acks: usize) -> Vec<String> {
    let mut child = common::kv_bin()
        .args(["--db", dir.to_str().unwrap(), "--segment-bytes", "262144"])
        .args(["--memtable-bytes", "32768", "--wal-bytes", "1048576"])
        .args(backend.flags())
        .args(["crash-writer", "--threads", "4", "--round", &round.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kv crash-writer");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut keys = Vec::new();
    let mut seen = 0;
    while seen < acks {
        let line = lines.next().expect("child ended early").expect("read child output");
        keys.extend(line.strip_prefix("ack ").expect("ack line").split(' ').map(str::to_owned));
        seen += 1;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("ack ") {
            keys.extend(rest.split(' ').map(str::to_owned));
        }
    }
    keys
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    for backend in common::REAL_BACKENDS {
        let dir = common::temp_dir("kill");
        let mut rng = SimRng::new(0x5EED);
        let mut all_acked = Vec::new();
        for round in 0..20 {
            let acks = 1 + rng.below(400) as usize;
            let acked = run_child(dir.path(), backend, round, acks);
            all_acked.extend(acked);
            // The log as the kill left it (a torn tail at most) checks sound.
            let check = common::kv_bin().args(["--db", dir.path().to_str().unwrap(), "check"]).output().unwrap();
            let report = String::from_utf8_lossy(&check.stdout);
            assert!(check.status.success(), "{backend:?} round {round}: kv check after SIGKILL: {report}");
            let db = common::open(dir.path(), backend);
            let wal_bytes: u64 =
                std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
            // Whole segments are kept: the budget, give or take a few.
            assert!(wal_bytes <= 4 << 20, "{backend:?} round {round}: the WAL holds {wal_bytes} bytes");
            for key in &all_acked {
                let value = db.get(key).unwrap();
                assert_eq!(
                    value.as_deref(),
                    Some(format!("value-of-{key}").as_bytes()),
                    "{backend:?} round {round}: acknowledged key {key} lost"
                );
            }
            for item in db.scan::<Vec<u8>>(..) {
                let (key, value) = item.expect("scan");
                let key = String::from_utf8(key).expect("utf-8 key");
                assert_eq!(
                    value,
                    format!("value-of-{key}").into_bytes(),
                    "{backend:?}: {key} has a value never written"
                );
            }
        }
        let pages = common::open(dir.path(), backend).stats().unwrap().page_file;
        assert!(pages.generation >= 10, "{backend:?}: only {} checkpoints", pages.generation);
    }
}
