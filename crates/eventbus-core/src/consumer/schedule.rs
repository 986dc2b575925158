//! Which fetched deliveries may be handled now: one at a time per key, in the order they came,
//! and any number of keys at once. A key whose event is being handled (retrying with backoff,
//! say) parks its later events; other keys go on. Deliveries without a key are never held back.

use std::collections::VecDeque;

use crate::FastMap;

/// A key as the scheduler tells keys apart: a hash of its bytes. Two keys with one hash are
/// merely handled one after the other.
pub(super) type KeyId = u64;

/// The deliveries a consumer holds, from fetch until handled.
pub(super) struct KeyQueue<T> {
    /// Keys with an event ready or being handled, each with the events parked behind it.
    busy: FastMap<KeyId, VecDeque<T>>,
    /// Events that may be handled as soon as there is room, oldest first.
    ready: VecDeque<(Option<KeyId>, T)>,
    /// Everything pushed and not yet done: ready, parked and being handled.
    held: usize,
}

impl<T> KeyQueue<T> {
    pub(super) fn new() -> Self {
        Self {
            busy: FastMap::default(),
            ready: VecDeque::new(),
            held: 0,
        }
    }

    /// Takes a fetched delivery: ready at once, or parked behind its key's earlier event.
    // Inlined, so that the delivery is moved once, into the queue, not through this frame.
    #[inline]
    pub(super) fn push(&mut self, key: Option<KeyId>, item: T) {
        self.held += 1;
        match key {
            Some(k) => match self.busy.get_mut(&k) {
                Some(parked) => parked.push_back(item),
                None => {
                    self.busy.insert(k, VecDeque::new());
                    self.ready.push_back((key, item));
                }
            },
            None => self.ready.push_back((None, item)),
        }
    }

    /// The oldest delivery that may be handled now.
    pub(super) fn next_ready(&mut self) -> Option<(Option<KeyId>, T)> {
        self.ready.pop_front()
    }

    /// The delivery of `key` handed out by [`KeyQueue::next_ready`] is handled: the key's next
    /// parked event becomes ready, or the key is free.
    pub(super) fn done(&mut self, key: Option<KeyId>) {
        self.held = self.held.saturating_sub(1);
        let Some(k) = key else { return };
        let next = self.busy.get_mut(&k).and_then(VecDeque::pop_front);
        match next {
            Some(item) => self.ready.push_back((key, item)),
            None => {
                self.busy.remove(&k);
            }
        }
    }

    /// Deliveries held, from fetch until done.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Drops what is ready or parked (not what is being handled): on shutdown, those go back to
    /// the broker unhandled. Returns how many were dropped.
    pub(super) fn abandon(&mut self) -> usize {
        let dropped = self.ready.len() + self.busy.values().map(VecDeque::len).sum::<usize>();
        for (key, _) in self.ready.drain(..) {
            if let Some(k) = key {
                self.busy.remove(&k);
            }
        }
        // Keys being handled stay busy until their `done`.
        for parked in self.busy.values_mut() {
            parked.clear();
        }
        self.held -= dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut KeyQueue<&'static str>) -> Vec<(Option<KeyId>, &'static str)> {
        std::iter::from_fn(|| q.next_ready()).collect()
    }

    #[test]
    fn a_busy_key_parks_its_later_events_and_others_flow() {
        let mut q = KeyQueue::new();
        q.push(Some(1), "a1");
        q.push(Some(1), "a2");
        q.push(Some(2), "b1");
        q.push(None, "x");
        q.push(Some(1), "a3");
        q.push(Some(2), "b2");
        assert_eq!(q.held(), 6);
        assert_eq!(
            drain(&mut q),
            [(Some(1), "a1"), (Some(2), "b1"), (None, "x")]
        );
        // b1 and x are handled while a1 is still being retried.
        q.done(Some(2));
        q.done(None);
        assert_eq!(drain(&mut q), [(Some(2), "b2")]);
        q.done(Some(2));
        assert_eq!(drain(&mut q), []);
        // a1 done at last: a2, then a3, one at a time.
        q.done(Some(1));
        assert_eq!(drain(&mut q), [(Some(1), "a2")]);
        q.done(Some(1));
        assert_eq!(drain(&mut q), [(Some(1), "a3")]);
        q.done(Some(1));
        assert_eq!(q.held(), 0);
        assert!(q.busy.is_empty());
    }

    #[test]
    fn abandoning_keeps_only_what_is_being_handled() {
        let mut q = KeyQueue::new();
        q.push(Some(1), "a1");
        q.push(Some(1), "a2");
        q.push(Some(2), "b1");
        assert_eq!(q.next_ready(), Some((Some(1), "a1")));
        assert_eq!(q.abandon(), 2);
        assert_eq!(q.held(), 1);
        q.done(Some(1));
        assert_eq!(q.held(), 0);
        assert_eq!(q.next_ready(), None);
        assert!(q.busy.is_empty());
    }
}
