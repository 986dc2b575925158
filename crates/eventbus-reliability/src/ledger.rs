//! Bookkeeping of which events were sent, acknowledged and received.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// What a scenario counts; cheap to clone and share between publishers and consumers.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    attempts: u64,
    acked: BTreeSet<u64>,
    received: HashMap<u64, u32>,
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Publish calls, retries included.
    pub attempts: u64,
    /// Distinct events the broker confirmed.
    pub acked: u64,
    /// Distinct events received.
    pub received: u64,
    /// Receipts beyond the first of an event.
    pub duplicates: u64,
    /// Confirmed events never received.
    pub lost: u64,
}

impl Ledger {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panicking publisher must not hide the others' counts.
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// One publish call was made.
    pub fn attempted(&self) {
        self.with(|i| i.attempts += 1);
    }

    /// The broker confirmed event `seq`.
    pub fn acked(&self, seq: u64) {
        self.with(|i| i.acked.insert(seq));
    }

    /// Events `seqs` were confirmed.
    pub fn acked_all(&self, seqs: impl IntoIterator<Item = u64>) {
        self.with(|i| i.acked.extend(seqs));
    }

    /// Event `seq` was received (handled) once more.
    pub fn received(&self, seq: u64) {
        self.with(|i| *i.received.entry(seq).or_insert(0) += 1);
    }

    /// How many distinct events were confirmed so far.
    pub fn acked_count(&self) -> u64 {
        self.with(|i| i.acked.len() as u64)
    }

    /// Whether every confirmed event was received.
    pub fn complete(&self) -> bool {
        self.with(|i| i.acked.iter().all(|s| i.received.contains_key(s)))
    }

    /// How many distinct events were received.
    pub fn received_count(&self) -> u64 {
        self.with(|i| i.received.len() as u64)
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        self.with(|i| Counts {
            attempts: i.attempts,
            acked: i.acked.len() as u64,
            received: i.received.len() as u64,
            duplicates: i.received.values().map(|n| u64::from(n - 1)).sum(),
            lost: i
                .acked
                .iter()
                .filter(|s| !i.received.contains_key(s))
                .count() as u64,
        })
    }

    /// The first few confirmed events never received, for an error message.
    pub fn missing(&self, at_most: usize) -> Vec<u64> {
        self.with(|i| {
            let missing = i.acked.iter().filter(|s| !i.received.contains_key(s));
            missing.take(at_most).copied().collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_losses_and_duplicates() {
        let ledger = Ledger::default();
        for seq in 0..4 {
            ledger.attempted();
            ledger.acked(seq);
        }
        ledger.attempted();
        ledger.received(0);
        ledger.received(1);
        ledger.received(1);
        ledger.received(9); // sent, its confirmation lost: received but never acked
        let c = ledger.counts();
        assert_eq!(
            (c.attempts, c.acked, c.received, c.duplicates, c.lost),
            (5, 4, 3, 1, 2)
        );
        assert_eq!(ledger.missing(10), vec![2, 3]);
        assert!(!ledger.complete());
    }
}
