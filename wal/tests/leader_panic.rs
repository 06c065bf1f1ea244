//! A panic inside a leader (a bug in the commit path or the I/O layer
//! under it) must not leave the other writers parked for good: the log
//! is poisoned, every writer not yet answered gets an error, later calls
//! (`append`, `sync`, the flusher, close) get errors too, and what was
//! acknowledged before the panic is still in the log after a power cut.
//!
//! Before this was handled, the panic unwound through the leader's guard
//! of the commit state: its mutex was poisoned and the "someone leads" flag
//! stayed set, so every other writer parked waiting for a leader that was
//! gone, and `sync` or dropping the log panicked on the poisoned mutex.
//!
//! The panic is made by a storage wrapper whose commit queue panics in its
//! `wait` after a chosen number of events (the leader's thread is the only
//! one that calls it).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ringkv_wal::{Error, Lsn, Wal};
use uring::{CommitEvent, CommitQueue, File, IoBuf, SimStorage};

use common::{frame, options, DIR};

/// The simulated disk, but its commit queue panics on the `panic_at`-th
/// `wait` (or with `in_submit`, `submit`: the batch is then neither in
/// flight nor gathering), counted over every queue it hands out.
#[derive(Debug)]
struct PanickyDisk {
    disk: SimStorage,
    calls: Arc<AtomicU64>,
    panic_at: u64,
    in_submit: bool,
}

struct PanickyQueue {
    queue: Box<dyn CommitQueue>,
    calls: Arc<AtomicU64>,
    panic_at: u64,
    in_submit: bool,
}

impl PanickyQueue {
    fn call(&self, submit: bool) {
        if submit == self.in_submit && self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_at {
            panic!("simulated bug in the commit queue");
        }
    }
}

impl CommitQueue for PanickyQueue {
    fn buffers(&mut self, len: usize) -> Vec<IoBuf> {
        self.queue.buffers(len)
    }
    fn depth(&self, file: &dyn File) -> usize {
        self.queue.depth(file)
    }
    fn submit(&mut self, file: &Arc<dyn File>, offset: u64, buf: IoBuf, len: usize) -> u64 {
        self.call(true);
        self.queue.submit(file, offset, buf, len)
    }
    fn wait(&mut self) -> CommitEvent {
        self.call(false);
        self.queue.wait()
    }
    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }
}

common::sim_storage_with_queue!(PanickyDisk, |this, queue| PanickyQueue {
    queue,
    calls: this.calls.clone(),
    panic_at: this.panic_at,
    in_submit: this.in_submit
});

/// What a writer thread ended with.
enum Outcome {
    Acknowledged,
    Refused(String),
    Panicked,
}

#[test]
fn a_leader_that_panics_leaves_no_writer_parked_and_loses_no_acknowledged_write() {
    const WRITERS: u64 = 16;
    const PER_WRITER: u64 = 40;
    let mut acknowledged_before_a_panic = 0;
    for (panic_at, in_submit, pipelined) in [1u64, 2, 5, 9, 17, 40]
        .into_iter()
        .flat_map(|at| [(at, false, false), (at, false, true), (at, true, false), (at, true, true)])
    {
        {
            let disk = SimStorage::new().pipelined(pipelined).seeded(panic_at);
            uring::create_dirs(&disk, Path::new(DIR)).unwrap();
            let storage = Arc::new(PanickyDisk { disk: disk.clone(), calls: Arc::default(), panic_at, in_submit });
            let wal = Arc::new(Wal::open(storage, Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap());
            let (done_tx, done_rx) = mpsc::channel::<Outcome>();
            let acknowledged = Arc::new(Mutex::new(Vec::new()));
            let mut threads = Vec::new();
            for t in 0..WRITERS {
                let (wal, done_tx, acknowledged) = (wal.clone(), done_tx.clone(), acknowledged.clone());
                threads.push(std::thread::spawn(move || {
                    // Reports a panic of this thread (it led when the queue
                    // panicked) as an outcome, so the test can count it.
                    struct OnPanic(mpsc::Sender<Outcome>);
                    impl Drop for OnPanic {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                let _ = self.0.send(Outcome::Panicked);
                            }
                        }
                    }
                    let _on_panic = OnPanic(done_tx.clone());
                    for i in 0..PER_WRITER {
                        let payload = (t * 1000 + i).to_le_bytes();
                        // Half the writers carry an `Apply` (run by a leader).
                        let appended = match t % 2 {
                            0 => wal.append(frame(&payload), true),
                            _ => wal.append_then(frame(&payload), Box::new(|_| {})),
                        };
                        match appended {
                            Ok(_) => acknowledged.lock().unwrap().push(t * 1000 + i),
                            Err(e) => {
                                let _ = done_tx.send(Outcome::Refused(e.to_string()));
                                return;
                            }
                        }
                    }
                    let _ = done_tx.send(Outcome::Acknowledged);
                }));
            }
            drop(done_tx);
            let (mut panicked, mut refused) = (0, Vec::new());
            for _ in 0..WRITERS {
                match done_rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(Outcome::Panicked) => panicked += 1,
                    Ok(Outcome::Refused(e)) => refused.push(e),
                    Ok(Outcome::Acknowledged) => {}
                    Err(_) => panic!("panic_at {panic_at}, in_submit {in_submit}, pipelined {pipelined}: a writer never returned (parked for good)"),
                }
            }
            let case = format!("panic_at {panic_at}, in_submit {in_submit}, pipelined {pipelined}");
            assert_eq!(panicked, 1, "{case}: the leader's thread panicked, and only it");
            assert!(!refused.is_empty(), "{case}: writers after the panic are refused");
            for e in &refused {
                assert!(e.contains("poisoned") && e.contains("panicked"), "{case}: refused with {e}");
            }
            for thread in threads {
                let _ = thread.join(); // every one has answered: this returns
            }
            // Later calls are refused, not hung or panicking.
            let later = wal.append(frame(b"after"), true).unwrap_err();
            assert!(matches!(later, Error::Poisoned { .. }), "{case}: {later}");
            assert!(matches!(wal.sync(), Err(Error::Poisoned { .. })), "{case}: sync after the panic");
            // Dropping the log (its close leads to drain) returns.
            drop(Arc::into_inner(wal).expect("every writer has returned"));
            // What was acknowledged survives a power cut.
            disk.power_cut();
            let after = disk.after_power_cut(panic_at);
            let mut found = std::collections::BTreeSet::new();
            Wal::open(Arc::new(after), Path::new(DIR), options(), Lsn(0), &mut |_, payload| {
                found.insert(u64::from_le_bytes(payload[..8].try_into().unwrap()));
            })
            .unwrap();
            for n in acknowledged.lock().unwrap().iter() {
                assert!(found.contains(n), "{case}: acknowledged write {n} lost");
            }
            acknowledged_before_a_panic += acknowledged.lock().unwrap().len();
        }
    }
    assert!(acknowledged_before_a_panic > 0, "some writes were acknowledged before the panics");
}
