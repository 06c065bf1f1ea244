//! Where waiting writers sleep: one futex word per batch number (modulo
//! [`BELLS`]), so an acknowledgement wakes exactly its batch's writers with
//! one system call, not one unpark per writer. A chain of unparks let each
//! woken writer preempt the leader in the middle of the chain (~0.2
//! involuntary context switches per commit at 64 writers on 2 cores, seen
//! with `perf record -e sched:sched_switch`).
//!
//! The protocol that loses no wake-up: a writer reads its bell
//! ([`Bells::seen`]), then checks whether its frame is done, and only then
//! sleeps on the value it read ([`Bells::wait`]); whoever settles a batch
//! publishes the outcome first and rings after ([`Bells::ring_all`]): a
//! ring between the read and the sleep changed the word, so the sleep
//! returns at once. Wake-ups may be spurious; every one re-checks. Two
//! batches eight apart share a word: a ring of either wakes both batches'
//! writers, so sharing delays a hand-over's single wake-up (until the
//! other batch is rung) but never loses it.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::constants::BELLS;

pub(crate) struct Bells {
    words: [AtomicU32; BELLS],
}

impl Bells {
    pub(crate) fn new() -> Bells {
        Bells { words: std::array::from_fn(|_| AtomicU32::new(0)) }
    }

    fn word(&self, seq: u64) -> &AtomicU32 {
        &self.words[(seq % BELLS as u64) as usize]
    }

    /// The bell of batch `seq` as it is now: read before checking whether
    /// the frame is done.
    pub(crate) fn seen(&self, seq: u64) -> u32 {
        self.word(seq).load(Ordering::SeqCst)
    }

    /// Sleeps until the bell of batch `seq` rings after it read `seen`.
    pub(crate) fn wait(&self, seq: u64, seen: u32) {
        atomic_wait::wait(self.word(seq), seen);
    }

    /// Wakes every writer of batch `seq`: once its outcome is published.
    pub(crate) fn ring_all(&self, seq: u64) {
        let word = self.word(seq);
        word.fetch_add(1, Ordering::SeqCst);
        atomic_wait::wake_all(word);
    }

    /// Wakes one writer of batch `seq` (to lead it). The word changes for
    /// all of them, so a writer about to sleep returns at once.
    pub(crate) fn ring_one(&self, seq: u64) {
        let word = self.word(seq);
        word.fetch_add(1, Ordering::SeqCst);
        atomic_wait::wake_one(word);
    }

    /// Wakes every waiting writer: once the log is poisoned.
    pub(crate) fn ring_every(&self) {
        for word in &self.words {
            word.fetch_add(1, Ordering::SeqCst);
            atomic_wait::wake_all(word);
        }
    }
}
