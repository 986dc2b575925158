//! The broker's state: topics, partitions, groups and their cursors.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use eventbus_core::transport::window::PartitionWindow;
use eventbus_core::{Error, ErrorKind, Message, Position, Result, StartPosition};
use tokio::sync::Notify;
use tokio::time::Instant;

/// An in-process broker. Cloning shares it.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    partitions: usize,
    /// Looked up by name on every publish call: a fast hash, as for the groups.
    topics: Mutex<HashMap<String, Arc<Topic>, foldhash::fast::RandomState>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("partitions", &self.inner.partitions)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Topic {
    state: Mutex<TopicState>,
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Topic")
    }
}

struct TopicState {
    log: Vec<Vec<Stored>>,
    // Looked up on every poll and ack: foldhash rather than SipHash.
    groups: HashMap<String, Group, foldhash::fast::RandomState>,
    round_robin: usize,
}

struct Stored {
    message: Message,
    time: DateTime<Utc>,
}

struct Group {
    cursors: Vec<Cursor>,
    members: Vec<Member>,
}

struct Member {
    id: u64,
    wake: Arc<Notify>,
}

/// Messages of one partition a group may have out at once (per-key order still holds: a key's
/// next message waits for the ack of its previous one).
const WINDOW: usize = 1024;

/// Where a group stands in one partition: its committed offset, how far it has read, and the
/// window of messages read since the commit. One member owns a partition's window at a time; a
/// new owner starts again from the committed offset, so what was out is delivered again.
struct Cursor {
    committed: usize,
    read: usize,
    owner: Option<u64>,
    window: PartitionWindow<Handed>,
    /// Messages nacked and not yet handed out again: the window is searched only when some are.
    nacked: usize,
}

impl Cursor {
    fn at(offset: usize) -> Self {
        Self {
            committed: offset,
            read: offset,
            owner: None,
            window: PartitionWindow::new(WINDOW),
            nacked: 0,
        }
    }

    /// Hands the partition to `member`, starting again from the commit if it had another owner.
    fn own(&mut self, member: u64) {
        if self.owner != Some(member) {
            self.owner = Some(member);
            self.window.clear();
            self.nacked = 0;
            self.read = self.committed;
        }
    }
}

/// A message of the window: how often it was handed out, and when a nacked one is due again.
#[derive(Default)]
struct Handed {
    attempt: u32,
    nacked_until: Option<Instant>,
}

/// One message handed to a member.
pub(crate) struct Handout {
    pub(crate) message: Message,
    pub(crate) partition: usize,
    pub(crate) offset: usize,
    pub(crate) attempt: u32,
    pub(crate) time: DateTime<Utc>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every update is one assignment).
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// FNV-1a: stable across runs, so a key keeps its partition for the broker's life.
fn partition_of(key: &[u8], partitions: usize) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % partitions as u64) as usize
}

impl MemoryBroker {
    /// A new, unnamed broker with `partitions` per topic.
    pub fn new(partitions: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                partitions: partitions.max(1),
                topics: Mutex::new(HashMap::default()),
            }),
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.inner.topics);
        // Looked up first: the entry API would copy the name for every publish.
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                state: Mutex::new(TopicState {
                    log: (0..self.inner.partitions).map(|_| Vec::new()).collect(),
                    groups: HashMap::default(),
                    round_robin: 0,
                }),
            })
        }))
    }

    /// Number of messages stored in `topic`, over all partitions.
    pub fn len(&self, topic: &str) -> usize {
        lock(&self.topic(topic).state)
            .log
            .iter()
            .map(Vec::len)
            .sum()
    }

    /// Whether `topic` holds no message.
    pub fn is_empty(&self, topic: &str) -> bool {
        self.len(topic) == 0
    }

    /// Every message of `topic`, partition by partition, in order.
    pub fn messages(&self, topic: &str) -> Vec<Message> {
        let topic = self.topic(topic);
        let state = lock(&topic.state);
        state
            .log
            .iter()
            .flatten()
            .map(|s| s.message.clone())
            .collect()
    }

    pub(crate) fn append(&self, topic: &str, batch: Vec<Message>) -> Vec<Position> {
        let topic = self.topic(topic);
        let mut state = lock(&topic.state);
        let partitions = state.log.len();
        let now = Utc::now();
        let mut positions = Vec::with_capacity(batch.len());
        for message in batch {
            let partition = match &message.key {
                Some(key) => partition_of(key, partitions),
                None => {
                    state.round_robin = state.round_robin.wrapping_add(1);
                    state.round_robin % partitions
                }
            };
            let log = &mut state.log[partition];
            positions.push(Position::Offset {
                partition: partition as i32,
                offset: log.len() as i64,
            });
            log.push(Stored { message, time: now });
        }
        for group in state.groups.values() {
            group.wake_all();
        }
        positions
    }
}

impl Group {
    fn wake_all(&self) {
        for m in &self.members {
            m.wake.notify_one();
        }
    }
}

impl TopicState {
    fn start_offset(&self, partition: usize, start: &StartPosition) -> Result<usize> {
        let log = &self.log[partition];
        match start {
            StartPosition::Earliest => Ok(0),
            StartPosition::Latest => Ok(log.len()),
            StartPosition::Time(t) => Ok(log.partition_point(|s| s.time < *t)),
            StartPosition::At(p) => Err(Error::new(
                ErrorKind::Unsupported,
                "the memory backend has no native positions; start at Earliest, Latest or a Time",
            )
            .with("position", p)),
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                "unknown start position for the memory backend",
            )),
        }
    }
}

impl Topic {
    /// Adds a member to `group`, creating the group at `start` (or the earliest message), or
    /// moving an existing group there when `start` is given.
    pub(crate) fn join(
        &self,
        group: &str,
        member: u64,
        wake: Arc<Notify>,
        start: Option<&StartPosition>,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        let exists = state.groups.contains_key(group);
        if !exists || start.is_some() {
            let start = start.cloned().unwrap_or(StartPosition::Earliest);
            let cursors = (0..state.log.len())
                .map(|p| state.start_offset(p, &start).map(Cursor::at))
                .collect::<Result<Vec<_>>>()?;
            let entry = state
                .groups
                .entry(group.to_owned())
                .or_insert_with(|| Group {
                    cursors: Vec::new(),
                    members: Vec::new(),
                });
            entry.cursors = cursors;
        }
        if let Some(g) = state.groups.get_mut(group) {
            g.members.push(Member { id: member, wake });
            g.wake_all();
        }
        Ok(())
    }

    /// Removes a member; what it had in flight goes back to the group.
    pub(crate) fn leave(&self, group: &str, member: u64) {
        let mut state = lock(&self.state);
        if let Some(g) = state.groups.get_mut(group) {
            g.members.retain(|m| m.id != member);
            for c in g.cursors.iter_mut().filter(|c| c.owner == Some(member)) {
                c.owner = None;
            }
            g.wake_all();
        }
    }

    /// Up to `max` messages for `member`, appended to `out`: from the partitions assigned to it
    /// (partition p goes to the member at index p mod n, in join order), nacked ones that are
    /// due first, then the oldest whose key has nothing out. Taking several under one lock
    /// spares the stream a lock, a group lookup and a wake-up per message. When nothing could
    /// be taken, returns the instant the first nacked message becomes due, if any.
    pub(crate) fn poll(
        &self,
        group: &str,
        member: u64,
        rotate: usize,
        max: usize,
        out: &mut Vec<Handout>,
    ) -> Option<Instant> {
        let mut state = lock(&self.state);
        let TopicState { log, groups, .. } = &mut *state;
        let g = groups.get_mut(group)?;
        let index = g.members.iter().position(|m| m.id == member)?;
        let members = g.members.len();
        let partitions = log.len();
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let limit = out.len() + max;
        for i in 0..partitions {
            let p = (i + rotate) % partitions;
            if p % members != index {
                continue;
            }
            let cursor = &mut g.cursors[p];
            cursor.own(member);
            let log = &log[p];
            let handout = |offset: i64, handed: &mut Handed| {
                handed.attempt += 1;
                handed.nacked_until = None;
                let stored = &log[offset as usize];
                Handout {
                    message: stored.message.clone(),
                    partition: p,
                    offset: offset as usize,
                    attempt: handed.attempt,
                    time: stored.time,
                }
            };
            if cursor.nacked > 0 {
                for (offset, handed) in cursor.window.iter_out_mut() {
                    match handed.nacked_until {
                        Some(at) if at <= now && out.len() < limit => {
                            cursor.nacked -= 1;
                            out.push(handout(offset, handed));
                        }
                        Some(at) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                        None => {}
                    }
                }
            }
            while cursor.window.has_room() && cursor.read < log.len() {
                let offset = cursor.read;
                let key = log[offset].message.key.as_deref();
                cursor.window.push(offset as i64, key, Handed::default());
                cursor.read += 1;
            }
            while out.len() < limit {
                let Some((offset, handed)) = cursor.window.next_ready() else {
                    break;
                };
                out.push(handout(offset, handed));
            }
            if out.len() == limit {
                break;
            }
        }
        earliest
    }

    /// Settles a message handed to `member`: `None` acks, `Some(delay)` nacks.
    pub(crate) fn settle(
        &self,
        group: &str,
        partition: usize,
        offset: usize,
        member: u64,
        nack: Option<std::time::Duration>,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        let g = state
            .groups
            .get_mut(group)
            .ok_or_else(|| stale(group, partition, offset))?;
        let cursor = g
            .cursors
            .get_mut(partition)
            .filter(|c| c.owner == Some(member))
            .ok_or_else(|| stale(group, partition, offset))?;
        let out = cursor
            .window
            .out_mut(offset as i64)
            .filter(|h| h.nacked_until.is_none())
            .ok_or_else(|| stale(group, partition, offset))?;
        match nack {
            None => {
                let committed = cursor
                    .window
                    .ack(offset as i64)
                    .map_err(|_| stale(group, partition, offset))?;
                if let Some(next) = committed {
                    cursor.committed = next as usize;
                }
            }
            Some(delay) => {
                out.nacked_until = Some(Instant::now() + delay);
                cursor.nacked += 1;
            }
        }
        g.wake_all();
        Ok(())
    }
}

fn stale(group: &str, partition: usize, offset: usize) -> Error {
    Error::new(
        ErrorKind::Subscribe,
        "the delivery is no longer held by this consumer (it left the group or the group was moved); it will be redelivered",
    )
    .with("group", group)
    .with("position", format!("{partition}@{offset}"))
}
