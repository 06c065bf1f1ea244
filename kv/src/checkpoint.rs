//! The checkpointer: folds the memtable into the page file, then drops the
//! log the page file no longer needs.
//!
//! A checkpoint cuts the log at the end of the frames placed so far
//! ([`wal::Wal::cut`]) and, in the same moment, freezes the active memtable
//! and starts a new one: frames below the cut belong to the frozen one
//! (also a `Sync` frame whose leader applies it after the cut), frames at
//! or past it to the new one. Once every frame below the cut is durable
//! and applied, the frozen memtable is folded into the page file as the
//! checkpoint of everything below the cut, and dropped; then the log below
//! the *older* of the page file's two checkpoints is reclaimed (the older
//! one is what opening falls back to if the newer meta page is damaged).
//! Writers go on meanwhile; they wait only if they outrun it (see
//! [`Inner::pace`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use wal::{Lsn, Wal};

use crate::db::Inner;
use crate::error::{Error, Result};
use crate::tree::{PageFile, TREE_KEY_BYTES_MAX};

/// The checkpointer's state, under `Inner::control`.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// A writer asked for a checkpoint.
    pub(crate) requested: bool,
    /// A checkpoint runs.
    pub(crate) running: bool,
    /// The store is closing.
    pub(crate) stopping: bool,
    /// The first failed checkpoint: none is tried after it.
    pub(crate) failed: Option<String>,
    /// Checkpoints done since open.
    pub(crate) completed: u64,
    /// Writes held back for a checkpoint since open, and for how long in
    /// all (microseconds).
    pub(crate) stalls: u64,
    pub(crate) stalled_micros: u64,
}

/// Starts the checkpointer thread, which runs a checkpoint whenever a
/// writer asks for one, until the store closes.
pub(crate) fn spawn(inner: Arc<Inner>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("ringkv-checkpointer".into())
        .spawn(move || {
            let mut control = inner.control.lock().expect("checkpointer lock");
            loop {
                while !control.requested && !control.stopping {
                    control = inner.changed.wait(control).expect("checkpointer lock");
                }
                if control.stopping {
                    return;
                }
                control.requested = false;
                drop(control);
                // A failure (a panic too) is logged and recorded by
                // `checkpoint`.
                let _ = inner.checkpoint();
                control = inner.control.lock().expect("checkpointer lock");
            }
        })
        .expect("spawn the checkpointer")
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_owned(),
    }
}

impl Inner {
    /// Runs one checkpoint (after any running one), and records how it
    /// ended for the writers that wait on it.
    ///
    /// # Errors
    /// As [`crate::Kv::checkpoint`].
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let wal = self.wal.as_ref().ok_or_else(|| Error::ReadOnly { path: self.dir.clone() })?;
        let tree = self.tree.as_ref().expect("a writable store has a page file");
        // Poisoned only by a panicked checkpoint, recorded in `failed`.
        let _one = self.checkpointing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let earlier = {
            let mut control = self.control.lock().expect("checkpointer lock");
            control.running = true;
            control.failed.clone()
        };
        // A failed checkpoint left its frozen memtable in place, and the
        // page file's state unknown: no other runs.
        let failed = |cause| Error::CheckpointFailed { path: tree.path().to_owned(), cause };
        let result = match earlier {
            Some(cause) => Err(failed(cause)),
            // A panic (a bug) fails the checkpoint like an error, so that
            // no writer waits for one that will never end.
            None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fold(wal, tree))).unwrap_or_else(
                |panic| {
                    let message = panic_message(panic.as_ref());
                    std::mem::forget(panic); // its drop might panic too
                    Err(failed(format!("the checkpoint panicked: {message}")))
                },
            ),
        };
        let mut control = self.control.lock().expect("checkpointer lock");
        control.running = false;
        match &result {
            Ok(()) => control.completed += 1,
            Err(e) => {
                if control.failed.is_none() {
                    tracing::error!(dir = %self.dir.display(), error = %e, "checkpoint failed; the log keeps every write");
                }
                control.failed.get_or_insert_with(|| e.to_string());
            }
        }
        drop(control);
        self.changed.notify_all();
        result
    }

    /// Freezes the memtable at a cut, folds it into the page file, drops
    /// it, and reclaims the log below the older checkpoint.
    fn fold(&self, wal: &Wal, tree: &PageFile) -> Result<()> {
        let started = std::time::Instant::now();
        let previous = Lsn(self.checkpoint_lsn.load(Ordering::SeqCst));
        let frozen = wal.cut(|cut| {
            if cut == previous {
                return None; // nothing written since the last checkpoint
            }
            let mut tables = self.tables.write().expect("tables lock");
            let frozen = std::mem::take(&mut tables.active);
            tables.frozen = Some((frozen.clone(), cut));
            Some((frozen, cut))
        })?;
        let Some((frozen, cut)) = frozen else { return Ok(()) };
        // Writers held back for the memtable may go on (taking the control
        // lock first: a writer that measured before the freeze is waiting).
        drop(self.control.lock().expect("checkpointer lock"));
        self.changed.notify_all();
        // Frames below the cut: durable once this returns (`NoSync` ones
        // too), and applied once the applied end reaches the cut.
        wal.sync()?;
        let applied = wal.applied_lsn();
        if applied < cut {
            return Err(Error::CheckpointFailed {
                path: tree.path().to_owned(),
                cause: format!("the log was applied up to LSN {applied} only, short of the cut at {cut}"),
            });
        }
        let (meta, changes) = frozen.with_changes(|all| {
            // The tree never held a key over its limit: deleting one is
            // nothing.
            let long = |key: &[u8]| key.len() > TREE_KEY_BYTES_MAX;
            if let Some((key, _)) = all.iter().find(|&&(k, v)| v.is_some() && long(k)) {
                // Only a log written by an older ringkv (16 KiB keys) holds one.
                return Err(Error::KeyTooLarge { bytes: key.len(), limit: TREE_KEY_BYTES_MAX });
            }
            let meta = match all.iter().any(|&(k, _)| long(k)) {
                true => {
                    let changes: Vec<_> = all.iter().copied().filter(|&(k, _)| !long(k)).collect();
                    tree.checkpoint(&changes, cut)?
                }
                false => tree.checkpoint(all, cut)?,
            };
            Ok((meta, all.len()))
        })?;
        // The page file now holds everything the frozen memtable did.
        self.tables.write().expect("tables lock").frozen = None;
        self.checkpoint_lsn.store(meta.lsn.0, Ordering::SeqCst);
        let kept = tree.older_meta().map_or(meta.lsn, |older| older.lsn);
        let reclaimed = wal.reclaim_below(kept)?;
        self.kept_lsn.store(kept.0, Ordering::SeqCst);
        tracing::debug!(
            dir = %self.dir.display(), %cut, generation = meta.generation, changes,
            reclaimed_segments = reclaimed, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint"
        );
        Ok(())
    }

    /// Called before each write: asks for a checkpoint once the active
    /// memtable holds half the memtable budget or the log since the last
    /// checkpoint a quarter of its budget, and holds the writer back until
    /// the checkpoint has frozen the memtable (for the memtable), or until
    /// it ends if meanwhile the new memtable fills half the budget too, or
    /// the log half its budget. So the active and frozen memtables stay
    /// within the budget together.
    ///
    /// # Errors
    /// [`Error::CheckpointFailed`] if checkpoints fail and the writer would
    /// have to wait for one.
    pub(crate) fn pace(&self) -> Result<()> {
        let Some(wal) = &self.wal else { return Ok(()) };
        // (memtable bytes, log bytes since the last checkpoint)
        let load = || {
            let active = self.tables.read().expect("tables lock").active.bytes();
            let since = wal.durable_lsn().0.saturating_sub(self.checkpoint_lsn.load(Ordering::SeqCst));
            (active, since)
        };
        // Strictly past each limit: right after a checkpoint the memtable
        // is empty and the log holds nothing since, so even a budget of 0
        // (a checkpoint after every write) lets the writer go.
        let half = self.memtable_bytes / 2;
        let over = |(active, since): (usize, u64)| active > half || since > self.wal_bytes / 4;
        let stalled = |(active, since): (usize, u64)| active > half || since > self.wal_bytes / 2;
        if !over(load()) {
            return Ok(());
        }
        let mut control = self.control.lock().expect("checkpointer lock");
        let mut stalled_since = None;
        let result = loop {
            // Measured under the control lock: a checkpoint that ends
            // after this wakes the wait below.
            let now = load();
            if !over(now) {
                break Ok(());
            }
            if let Some(cause) = &control.failed {
                break match stalled(now) {
                    true => Err(Error::CheckpointFailed { path: self.dir.clone(), cause: cause.clone() }),
                    false => Ok(()),
                };
            }
            if !control.running && !control.requested {
                control.requested = true;
                self.changed.notify_all();
            }
            if !stalled(now) {
                break Ok(());
            }
            stalled_since.get_or_insert_with(std::time::Instant::now);
            control = self.changed.wait(control).expect("checkpointer lock");
        };
        if let Some(since) = stalled_since {
            control.stalls += 1;
            control.stalled_micros += since.elapsed().as_micros() as u64;
        }
        result
    }
}
