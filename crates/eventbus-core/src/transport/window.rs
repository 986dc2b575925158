//! Many messages of one partition out at once, for backends whose broker tracks a partition
//! by a committed offset (Kafka, the memory backend): a key's next message is handed out only
//! once the previous one is acknowledged, other keys of the partition flow meanwhile, and the
//! offset to commit is the end of the acknowledged prefix, so nothing unacknowledged is ever
//! skipped by a restart or a new owner of the partition.
//!
//! Without it such a backend holds a whole partition back until each ack, and a slow or
//! retrying key stalls every key that shares its partition. A nacked message stays out (its key
//! busy) until the backend hands it out again and it is acknowledged.

use std::collections::VecDeque;

/// A key as the window tells keys apart: FNV-1a of its bytes. Keys that share a hash are merely
/// handed out one after the other.
fn key_id(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Read, waiting for its key (or a place in the ready line).
    Held,
    /// Handed out, not yet acknowledged (nacked ones too, until handed out again).
    Out,
    /// Acknowledged, but an earlier offset is not: not committable yet.
    Acked,
}

#[derive(Debug)]
struct Slot<T> {
    offset: i64,
    key: Option<u64>,
    state: State,
    item: T,
}

/// One partition's messages from the committed offset on: held, out and acknowledged.
#[derive(Debug)]
pub struct PartitionWindow<T> {
    /// In offset order, oldest first. Offsets come in increasing order and leave from the
    /// front, so a deque with a binary search serves every lookup without the allocation per
    /// message of a tree; offsets may have gaps (a compacted Kafka topic), so they are searched
    /// for rather than computed.
    slots: VecDeque<Slot<T>>,
    /// Keys with a message out, each with the offsets of its later messages.
    busy: crate::FastMap<u64, VecDeque<i64>>,
    /// Offsets that may be handed out now, oldest first.
    ready: VecDeque<i64>,
    limit: usize,
}

/// An acknowledgement of an offset the window does not have out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOut(pub i64);

impl<T> PartitionWindow<T> {
    /// An empty window holding at most `limit` messages (at least 1) before [`has_room`] says
    /// to stop reading.
    ///
    /// [`has_room`]: PartitionWindow::has_room
    pub fn new(limit: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            busy: crate::FastMap::default(),
            ready: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Takes the next message read from the partition. Offsets come in increasing order; one
    /// the window already holds (the client read it again) is ignored, and an older one is
    /// filed in its place.
    pub fn push(&mut self, offset: i64, key: Option<&[u8]>, item: T) {
        let key = key.map(key_id);
        let slot = Slot {
            offset,
            key,
            state: State::Held,
            item,
        };
        match self.slots.back() {
            Some(last) if last.offset >= offset => {
                match self.slots.binary_search_by_key(&offset, |s| s.offset) {
                    Ok(_) => return,
                    Err(at) => self.slots.insert(at, slot),
                }
            }
            _ => self.slots.push_back(slot),
        }
        match key {
            Some(k) => match self.busy.get_mut(&k) {
                Some(behind) => behind.push_back(offset),
                None => {
                    self.busy.insert(k, VecDeque::new());
                    self.ready.push_back(offset);
                }
            },
            None => self.ready.push_back(offset),
        }
    }

    /// Whether the backend may read more of the partition (fewer than the limit held).
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.limit
    }

    /// Messages in the window: held, out, or acknowledged after an unacknowledged one.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the window holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The oldest message that may be handed out now (its key has nothing out), marked out.
    pub fn next_ready(&mut self) -> Option<(i64, &mut T)> {
        let offset = self.ready.pop_front()?;
        let slot = self.slot_mut(offset)?;
        slot.state = State::Out;
        Some((offset, &mut slot.item))
    }

    fn slot_mut(&mut self, offset: i64) -> Option<&mut Slot<T>> {
        let first = self.slots.front()?.offset;
        // Offsets are most often consecutive, which puts each at its distance from the first;
        // a gap sends the lookup to a binary search.
        let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
        let at = match self.slots.get(guess) {
            Some(slot) if slot.offset == offset => guess,
            _ => self
                .slots
                .binary_search_by_key(&offset, |s| s.offset)
                .ok()?,
        };
        self.slots.get_mut(at)
    }

    /// A message that is out, to hand it out again after a nack.
    pub fn out_mut(&mut self, offset: i64) -> Option<&mut T> {
        self.slot_mut(offset)
            .filter(|s| s.state == State::Out)
            .map(|s| &mut s.item)
    }

    /// The messages out, oldest first (a backend looks for nacked ones that are due).
    pub fn iter_out_mut(&mut self) -> impl Iterator<Item = (i64, &mut T)> {
        self.slots
            .iter_mut()
            .filter(|s| s.state == State::Out)
            .map(|s| (s.offset, &mut s.item))
    }

    /// Acknowledges `offset`: its key's next message becomes ready. Returns the offset to commit
    /// (the next one to read after the acknowledged prefix) when that prefix grew.
    pub fn ack(&mut self, offset: i64) -> Result<Option<i64>, NotOut> {
        let slot = self
            .slot_mut(offset)
            .filter(|s| s.state == State::Out)
            .ok_or(NotOut(offset))?;
        slot.state = State::Acked;
        if let Some(k) = slot.key {
            match self.busy.get_mut(&k).and_then(VecDeque::pop_front) {
                Some(next) => self.ready.push_back(next),
                None => {
                    self.busy.remove(&k);
                }
            }
        }
        let mut commit = None;
        while let Some(first) = self.slots.front() {
            if first.state != State::Acked {
                break;
            }
            commit = Some(first.offset + 1);
            self.slots.pop_front();
        }
        Ok(commit)
    }

    /// Forgets everything (the partition was revoked, or its owner changed).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.busy.clear();
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(keys: &[&str]) -> PartitionWindow<&'static str> {
        let mut w = PartitionWindow::new(100);
        for (offset, key) in keys.iter().enumerate() {
            let key = (!key.is_empty()).then_some(key.as_bytes());
            w.push(offset as i64, key, "m");
        }
        w
    }

    fn ready(w: &mut PartitionWindow<&'static str>) -> Vec<i64> {
        std::iter::from_fn(|| w.next_ready().map(|(o, _)| o)).collect()
    }

    #[test]
    fn a_key_waits_for_its_ack_and_other_keys_flow() {
        let mut w = window(&["a", "a", "b", "", "a", "b"]);
        assert_eq!(ready(&mut w), [0, 2, 3]);
        // b and the keyless message are acked while a's first is still out (retrying, say):
        // b's next goes out, and nothing is committable, since offset 0 is not acked.
        assert_eq!(w.ack(2), Ok(None));
        assert_eq!(w.ack(3), Ok(None));
        assert_eq!(ready(&mut w), [5]);
        assert_eq!(w.ack(0), Ok(Some(1)));
        assert_eq!(ready(&mut w), [1]);
        assert_eq!(w.ack(1), Ok(Some(4)), "2 and 3 were acked already");
        assert_eq!(ready(&mut w), [4]);
        assert_eq!(w.ack(5), Ok(None));
        assert_eq!(w.ack(4), Ok(Some(6)));
        assert!(w.is_empty());
    }

    #[test]
    fn acks_of_what_is_not_out_are_refused() {
        let mut w = window(&["a", "a"]);
        assert_eq!(w.ack(1), Err(NotOut(1)), "held, not out");
        assert_eq!(ready(&mut w), [0]);
        assert_eq!(w.ack(0), Ok(Some(1)));
        assert_eq!(w.ack(0), Err(NotOut(0)), "acked twice");
        assert!(w.out_mut(1).is_none());
        assert_eq!(ready(&mut w), [1]);
        assert!(w.out_mut(1).is_some(), "out, so it can be handed out again");
    }

    #[test]
    fn room_counts_everything_from_the_commit_point() {
        let mut w = PartitionWindow::new(2);
        w.push(0, Some(b"a"), ());
        assert!(w.has_room());
        w.push(1, Some(b"b"), ());
        assert!(!w.has_room());
        assert_eq!(ready_unit(&mut w), [0, 1]);
        assert_eq!(w.ack(1), Ok(None));
        assert!(!w.has_room(), "1 is acked but 0 is not: both still count");
        assert_eq!(w.ack(0), Ok(Some(2)));
        assert!(w.has_room());
        w.clear();
        assert!(w.is_empty());
    }

    #[test]
    fn offsets_read_again_or_out_of_order_keep_the_window_sound() {
        let mut w = PartitionWindow::new(100);
        w.push(10, Some(b"a"), "first");
        w.push(30, Some(b"b"), "m");
        w.push(10, Some(b"a"), "again");
        w.push(20, None, "late");
        assert_eq!(w.len(), 3, "the offset read again is not held twice");
        assert_eq!(w.next_ready().map(|(o, m)| (o, *m)), Some((10, "first")));
        assert_eq!(ready(&mut w), [30, 20]);
        assert_eq!(w.ack(20), Ok(None));
        assert_eq!(w.ack(10), Ok(Some(21)));
        assert_eq!(w.ack(30), Ok(Some(31)));
        assert!(w.is_empty());
    }

    #[test]
    fn gaps_between_offsets_are_fine() {
        let mut w = PartitionWindow::new(100);
        for offset in [3, 7, 1_000_000] {
            w.push(offset, None, "m");
        }
        assert_eq!(ready(&mut w), [3, 7, 1_000_000]);
        assert_eq!(w.ack(7), Ok(None));
        assert!(w.out_mut(1_000_000).is_some());
        assert!(w.out_mut(5).is_none());
        assert_eq!(w.ack(3), Ok(Some(8)));
        assert_eq!(w.ack(1_000_000), Ok(Some(1_000_001)));
    }

    fn ready_unit(w: &mut PartitionWindow<()>) -> Vec<i64> {
        std::iter::from_fn(|| w.next_ready().map(|(o, _)| o)).collect()
    }
}
