//! Review 15: attacks on the leader-panic handling (abf7885), both failing
//! before their fixes: a panicking `Wal::cut` closure poisoned the tail
//! mutex, so a leader stepping down panicked before it woke the writer
//! parked behind it; and a thread that wrote while already unwinding was
//! taken for a panicking leader and poisoned a healthy log.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_wal::{Error, Lsn, Wal};
use uring::{CommitEvent, CommitQueue, File, IoBuf, SimStorage};

use common::{frame, options, DIR};

/// Holds the first `Synced` event (once armed) until the test releases it:
/// the leader is then blocked in its commit queue's `wait` with its batch
/// written and synced but not yet handled.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

#[derive(Debug)]
struct GatedDisk {
    disk: SimStorage,
    gate: Arc<Gate>,
}

struct GatedQueue {
    queue: Box<dyn CommitQueue>,
    gate: Arc<Gate>,
}

impl CommitQueue for GatedQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        self.queue.buffers(len)
    }
    fn depth(&self, file: &dyn File) -> usize {
        self.queue.depth(file)
    }
    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        self.queue.submit(file, offset, buf, len)
    }
    fn wait(&mut self) -> CommitEvent {
        let event = self.queue.wait();
        if matches!(event, CommitEvent::Synced { .. }) && self.gate.armed.swap(false, Ordering::SeqCst) {
            let entered = self.gate.entered.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            let release = self.gate.release.lock().unwrap().take().unwrap();
            release.recv().unwrap();
        }
        event
    }
    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }
}

common::sim_storage_with_queue!(GatedDisk, |this, queue| GatedQueue { queue, gate: this.gate.clone() });

/// Scheduler state of a thread of this process ('S': asleep, 'R': running).
fn thread_state(task: &str) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{task}/stat")).unwrap();
    // "tid (comm) S ..."
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

/// What a writer thread ended with.
#[derive(Debug)]
enum Outcome {
    Returned(Result<Lsn, String>),
    Panicked,
}

fn spawn_writer(
    wal: Arc<Wal>,
    payload: &'static [u8],
    tx: mpsc::Sender<(&'static [u8], Outcome)>,
) -> mpsc::Receiver<String> {
    let (task_tx, task_rx) = mpsc::channel();
    std::thread::spawn(move || {
        struct OnPanic(&'static [u8], mpsc::Sender<(&'static [u8], Outcome)>);
        impl Drop for OnPanic {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let _ = self.1.send((self.0, Outcome::Panicked));
                }
            }
        }
        let _on_panic = OnPanic(payload, tx.clone());
        // "/proc/thread-self" -> "<pid>/task/<tid>"
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        task_tx.send(link.file_name().unwrap().to_string_lossy().into_owned()).unwrap();
        let r = wal.append(frame(payload), true).map_err(|e| e.to_string());
        let _ = tx.send((payload, Outcome::Returned(r)));
    });
    task_rx
}

/// A panic in `Wal::cut`'s closure (public API, user code) poisons the tail
/// mutex. The commit's ARCHITECTURE note says "every writer then panics on
/// that mutex". Not so: a leader whose batch is done steps down, releases
/// the leadership normally (no `leader_panicked`), then panics on the tail
/// lock in `step_down`; the writer parked for the next batch is never
/// unparked (its wake-up came after that lock) and never returns.
#[test]
fn a_writer_parked_behind_a_leader_that_panics_after_stepping_down_is_never_woken() {
    let disk = SimStorage::new().seeded(7);
    uring::create_dirs(&disk, Path::new(DIR)).unwrap();
    let gate = Arc::new(Gate::default());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    *gate.entered.lock().unwrap() = Some(entered_tx);
    *gate.release.lock().unwrap() = Some(release_rx);
    let storage = Arc::new(GatedDisk { disk: disk.clone(), gate: gate.clone() });
    let wal = Arc::new(Wal::open(storage, Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap());
    let (tx, rx) = mpsc::channel();

    // L leads its own batch and blocks in the commit queue, its batch synced.
    gate.armed.store(true, Ordering::SeqCst);
    let _l_task = spawn_writer(wal.clone(), b"L", tx.clone());
    entered_rx.recv_timeout(Duration::from_secs(10)).expect("L leads and waits for its sync");

    // W places its frame in the next batch and parks (L is marked as leading).
    let before = wal.cut(|end| end).unwrap();
    let w_task = spawn_writer(wal.clone(), b"W", tx.clone()).recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.cut(|end| end).unwrap() == before {
        assert!(Instant::now() < deadline, "W never placed its frame");
        std::thread::yield_now();
    }
    // Placed, the tail released: the only place W can sleep now is `park`.
    while thread_state(&w_task) != 'S' {
        assert!(Instant::now() < deadline, "W never parked");
        std::thread::yield_now();
    }

    // A cut closure that panics (a bug in the caller's code) poisoned the
    // tail mutex; now it poisons the log and the cut returns the error.
    let wal2 = wal.clone();
    let cut = std::thread::spawn(move || wal2.cut(|_| -> () { panic!("bug in a cut closure") })).join();
    assert!(matches!(cut, Ok(Err(Error::CutPanicked { .. }))), "the cut closure panicked: {cut:?}");

    // L goes on: its batch is acknowledged, it steps down.
    release_tx.send(()).unwrap();

    let mut outcomes = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(o) => outcomes.push(o),
            Err(_) => panic!("a writer never returned (parked for good); {} returned", outcomes.len()),
        }
    }
    // L's batch was synced before the cut: acknowledged. W's was never
    // written: refused with the poisoned log.
    for (payload, outcome) in outcomes {
        match (payload, outcome) {
            (b"L", Outcome::Returned(r)) => assert!(r.is_ok(), "L: {r:?}"),
            (b"W", Outcome::Returned(r)) => assert!(r.as_ref().is_err_and(|e| e.contains("poisoned")), "W: {r:?}"),
            (p, o) => panic!("{}: {o:?}", String::from_utf8_lossy(p)),
        }
    }
}

/// A thread that writes while it is unwinding (a Drop guard that logs an
/// abort record, a store dropped by a failing test...) leads its own batch;
/// its `Leadership` is then dropped while `thread::panicking()` is true, so
/// `leader_panicked` poisons the log with `LeaderPanicked` although no
/// leader panicked: every later write of every thread is refused.
#[test]
fn a_write_from_an_unwinding_thread_poisons_the_log() {
    let disk = SimStorage::new().seeded(3);
    uring::create_dirs(&disk, Path::new(DIR)).unwrap();
    let wal = Arc::new(Wal::open(Arc::new(disk.clone()), Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap());
    wal.append(frame(b"before"), true).unwrap();

    struct LogOnUnwind(Arc<Wal>, mpsc::Sender<Result<Lsn, String>>);
    impl Drop for LogOnUnwind {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let r = self.0.append(frame(b"aborted"), true).map_err(|e| e.to_string());
                let _ = self.1.send(r);
            }
        }
    }
    let (tx, rx) = mpsc::channel();
    let w = wal.clone();
    let joined = std::thread::spawn(move || {
        let _guard = LogOnUnwind(w, tx);
        panic!("an unrelated panic in the application");
    })
    .join();
    assert!(joined.is_err());
    let during_unwind = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(during_unwind.is_ok(), "the write during unwinding: {during_unwind:?}");

    // Nothing went wrong in the log: another thread's write must succeed.
    let after = wal.append(frame(b"after"), true);
    assert!(
        after.is_ok(),
        "a healthy log refuses writes after a thread merely wrote while unwinding: {:?}",
        after.map_err(|e| e.to_string())
    );
    let _ = Error::Closed;
}
