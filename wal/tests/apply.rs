//! The `Apply` step (a store applying its batch to its memtable) and the
//! applied end it publishes: what review 10 found, kept as tests. A
//! checkpointer trusts `applied_lsn`: every frame below it is durable and
//! applied.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use ringkv_wal::{Error, Lsn, Wal};
use uring::{SimStorage, Storage};

use common::{frame, options, DIR};

fn open(storage: Arc<dyn Storage>) -> Wal {
    uring::create_dirs(storage.as_ref(), Path::new(DIR)).unwrap();
    Wal::open(storage, Path::new(DIR), options(), Lsn(0), &mut |_, _| {}).unwrap()
}

/// Review 10, F1: a NoSync writer applied its batch after `append`
/// returned, and a leader could publish the applied end past it first.
/// `append_unsynced_then` applies before the batch can be acknowledged:
/// whenever a waiting writer returns, every unsynced frame below the
/// applied end has been applied.
#[test]
fn the_applied_end_never_passes_an_unsynced_frame_not_yet_applied() {
    let wal = open(Arc::new(SimStorage::new().seeded(1)));
    let applied: Arc<Mutex<BTreeSet<Lsn>>> = Arc::default();
    let unsynced: Mutex<Vec<Lsn>> = Mutex::default();
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let (wal, applied, unsynced) = (&wal, &applied, &unsynced);
            scope.spawn(move || {
                for i in 0..200u8 {
                    let payload = [t, i];
                    if i % 2 == 0 {
                        let set = Arc::clone(applied);
                        let lsn = wal
                            .append_unsynced_then(
                                frame(&payload),
                                Box::new(move |lsn| assert!(set.lock().unwrap().insert(lsn))),
                            )
                            .unwrap();
                        unsynced.lock().unwrap().push(lsn);
                    } else {
                        wal.append_then(frame(&payload), Box::new(|_| {})).unwrap();
                        let end = wal.applied_lsn();
                        let applied = applied.lock().unwrap();
                        let missing: Vec<_> = unsynced
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|&&l| l < end && !applied.contains(&l))
                            .copied()
                            .collect();
                        assert!(missing.is_empty(), "applied end {end} passes unapplied unsynced frames {missing:?}");
                    }
                }
            });
        }
    });
}

/// Review 10, F2: the frame whose `Apply` panicked was counted as applied.
#[test]
fn the_applied_end_stops_at_a_frame_whose_apply_panicked() {
    let wal = open(Arc::new(SimStorage::new().seeded(2)));
    wal.append_then(frame(b"fine"), Box::new(|_| {})).unwrap();
    let result = wal.append_then(frame(b"bomb"), Box::new(|_| panic!("bomb")));
    let Err(Error::ApplyPanicked { lsn, .. }) = result else { panic!("{result:?}") };
    assert_eq!(wal.applied_lsn(), lsn, "applied up to the panicked frame, not past it");
    let after = wal.append_then(frame(b"after"), Box::new(|_| {}));
    assert!(matches!(after, Err(Error::Poisoned { .. })), "{after:?}");
}

/// Review 10, F3: after an `Apply` panicked, a frame gathered meanwhile
/// (its writer told `Poisoned`) was still written and synced by the next
/// `sync`, which returned Ok. Nothing gathered is written any more.
#[test]
fn nothing_gathered_is_written_after_an_apply_panicked() {
    let wal = open(Arc::new(SimStorage::new().seeded(3)));
    let (placed_tx, placed_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| {
            wal.append_then(
                frame(b"A"),
                Box::new(move |_| {
                    go_tx.send(()).unwrap();
                    placed_rx.recv().unwrap(); // B is in the gathering batch
                    panic!("A's apply");
                }),
            )
        });
        go_rx.recv().unwrap();
        let b = wal.append(frame(b"B"), false).unwrap();
        placed_tx.send(()).unwrap();
        let a = leader.join().unwrap();
        assert!(matches!(a, Err(Error::ApplyPanicked { .. })), "{a:?}");
        let sync = wal.sync();
        assert!(matches!(sync, Err(Error::Poisoned { .. })), "sync after the panic: {sync:?}");
        assert!(wal.durable_lsn() <= b, "B's frame was made durable after the log was poisoned");
    });
}

/// Review 10, F4: an `Apply` that appended or synced parked its own leader
/// for good (the whole log hung). It gets `WithinApply` instead.
#[test]
fn an_apply_calling_back_into_the_log_gets_an_error_not_a_hang() {
    let wal = Arc::new(open(Arc::new(SimStorage::new().seeded(4))));
    let inner = Arc::new(Mutex::new(Vec::new()));
    let (w, seen) = (Arc::clone(&wal), Arc::clone(&inner));
    wal.append_then(
        frame(b"outer"),
        Box::new(move |_| {
            let mut seen = seen.lock().unwrap();
            seen.push(format!("{:?}", w.append(frame(b"inner"), true)));
            seen.push(format!("{:?}", w.sync()));
        }),
    )
    .unwrap();
    assert_eq!(*inner.lock().unwrap(), ["Err(WithinApply)", "Err(WithinApply)"]);
    wal.append(frame(b"after"), true).unwrap();
}

/// Review 16, finding 2: the function run at a cut holds the tail, so an
/// append, sync, cut or reclaim from inside it waited for itself. Each
/// gets `WithinCut` instead, and the log goes on afterwards.
#[test]
fn a_cut_calling_back_into_the_log_gets_an_error_not_a_hang() {
    let wal = open(Arc::new(SimStorage::new().seeded(5)));
    wal.append(frame(b"before"), true).unwrap();
    let inner = wal
        .cut(|cut| {
            [
                format!("{:?}", wal.append(frame(b"inner"), true)),
                format!("{:?}", wal.append(frame(b"inner"), false)),
                format!("{:?}", wal.sync()),
                format!("{:?}", wal.cut(|_| ())),
                format!("{:?}", wal.reclaim_below(cut)),
            ]
        })
        .unwrap();
    assert_eq!(inner, ["Err(WithinCut)"; 5]);
    // The mark is gone once the cut returned.
    wal.append(frame(b"after"), true).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.reclaim_below(Lsn(0)).unwrap(), 0);
}

/// Review 10, F5: a panic payload whose `Drop` panics unwound through the
/// leader after `catch_unwind`, poisoning the leadership: every later
/// `sync`, and the drop of the log, panicked.
#[test]
fn a_panic_payload_that_panics_when_dropped_does_not_escape() {
    struct Nasty;
    impl Drop for Nasty {
        fn drop(&mut self) {
            panic!("drop of the payload");
        }
    }
    let wal = open(Arc::new(SimStorage::new().seeded(5)));
    let result = wal.append_then(frame(b"one"), Box::new(|_| std::panic::panic_any(Nasty)));
    assert!(matches!(result, Err(Error::ApplyPanicked { .. })), "{result:?}");
    let unwound = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if scope.spawn(|| wal.sync()).join().is_err() {
            unwound.store(true, Ordering::SeqCst);
        }
    });
    assert!(!unwound.load(Ordering::SeqCst), "sync panicked");
    drop(wal);
}
