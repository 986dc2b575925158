//! The broker's state: topics, partitions, groups and their cursors.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
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
    topics: Mutex<HashMap<String, Arc<Topic>>>,
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
    groups: HashMap<String, Group>,
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

/// Where a group stands in one partition. At most one message is in flight, so the next one of
/// the partition waits for its ack: that is what keeps per-key order across nacks.
#[derive(Default)]
struct Cursor {
    next: usize,
    attempt: u32,
    in_flight: Option<u64>,
    not_before: Option<Instant>,
}

/// One message handed to a member.
pub(crate) struct Handout {
    pub(crate) message: Message,
    pub(crate) partition: usize,
    pub(crate) offset: usize,
    pub(crate) attempt: u32,
    pub(crate) time: DateTime<Utc>,
}

/// What polling found.
pub(crate) enum Poll {
    Ready(Handout),
    /// Nothing now; a nacked message becomes ready at this instant, if any.
    Wait(Option<Instant>),
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
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.inner.topics);
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                state: Mutex::new(TopicState {
                    log: (0..self.inner.partitions).map(|_| Vec::new()).collect(),
                    groups: HashMap::new(),
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
                .map(|p| {
                    state.start_offset(p, &start).map(|next| Cursor {
                        next,
                        ..Cursor::default()
                    })
                })
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
            for c in g.cursors.iter_mut().filter(|c| c.in_flight == Some(member)) {
                c.in_flight = None;
            }
            g.wake_all();
        }
    }

    /// The next message for `member`: from the partitions assigned to it (partition p goes to
    /// the member at index p mod n, in join order), whose cursor has nothing in flight.
    pub(crate) fn poll(&self, group: &str, member: u64, rotate: usize) -> Poll {
        let mut state = lock(&self.state);
        let TopicState { log, groups, .. } = &mut *state;
        let Some(g) = groups.get_mut(group) else {
            return Poll::Wait(None);
        };
        let Some(index) = g.members.iter().position(|m| m.id == member) else {
            return Poll::Wait(None);
        };
        let members = g.members.len();
        let partitions = log.len();
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for i in 0..partitions {
            let p = (i + rotate) % partitions;
            if p % members != index {
                continue;
            }
            let cursor = &mut g.cursors[p];
            if cursor.in_flight.is_some() || cursor.next >= log[p].len() {
                continue;
            }
            if let Some(at) = cursor.not_before {
                if at > now {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    continue;
                }
            }
            let stored = &log[p][cursor.next];
            cursor.in_flight = Some(member);
            cursor.attempt += 1;
            cursor.not_before = None;
            return Poll::Ready(Handout {
                message: stored.message.clone(),
                partition: p,
                offset: cursor.next,
                attempt: cursor.attempt,
                time: stored.time,
            });
        }
        Poll::Wait(earliest)
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
            .ok_or_else(|| stale(group, partition, offset))?;
        if cursor.in_flight != Some(member) || cursor.next != offset {
            return Err(stale(group, partition, offset));
        }
        cursor.in_flight = None;
        match nack {
            None => {
                cursor.next += 1;
                cursor.attempt = 0;
                cursor.not_before = None;
            }
            Some(delay) => cursor.not_before = Some(Instant::now() + delay),
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
