//! Members of a group that are still leaving it.
//!
//! Dropping a subscription's stream returns at once, while its consumer closes in the
//! background and the broker hands the consumer's unacknowledged messages to the rest of the
//! group. A member of the same process that joins the same group in that moment would overlap
//! with the leaving one: a `Key_Shared` broker then holds the newcomer back, and pulsar-lite 0.2
//! was seen to drop one of the handed-over messages. So a join waits (up to the close timeout)
//! until members of this process that are leaving that group have left.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// A group on a topic of one broker: `(service URL, full topic, group)`.
pub(crate) type GroupKey = (String, String, String);

static LEAVING: LazyLock<Departures> = LazyLock::new(Departures::default);

#[derive(Default)]
struct Departures {
    leaving: Mutex<HashMap<GroupKey, usize>>,
    left: Notify,
}

impl Departures {
    fn count(&self, key: &GroupKey, change: isize) {
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        let n = leaving.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(change);
        if *n == 0 {
            leaving.remove(key);
        }
    }

    fn any_leaving(&self, keys: &[GroupKey]) -> bool {
        let leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| leaving.contains_key(k))
    }
}

/// Waits until no member of this process is leaving one of `keys`, or `limit` has passed.
pub(crate) async fn wait_for_departures(keys: &[GroupKey], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = LEAVING.left.notified();
        if !LEAVING.any_leaving(keys) {
            return;
        }
        if tokio::time::timeout_at(deadline, left).await.is_err() {
            tracing::warn!(
                ?keys,
                "members leaving the group did not finish in time; joining anyway"
            );
            return;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Member,
    Leaving,
    Gone,
}

/// One member's place in its group, shared by its stream and its task.
#[derive(Debug, Clone)]
pub(crate) struct Membership {
    key: GroupKey,
    state: Arc<Mutex<State>>,
}

impl Membership {
    pub(crate) fn new(key: GroupKey) -> Self {
        Self {
            key,
            state: Arc::new(Mutex::new(State::Member)),
        }
    }

    /// The application let go of the stream: the member is leaving until [`Self::gone`].
    pub(crate) fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state == State::Member {
            *state = State::Leaving;
            LEAVING.count(&self.key, 1);
        }
    }

    /// The member's consumer is closed.
    pub(crate) fn gone(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state == State::Leaving {
            LEAVING.count(&self.key, -1);
            LEAVING.left.notify_waiters();
        }
        *state = State::Gone;
    }
}
