//! Members of a group that are still leaving it.
//!
//! Dropping a subscription's stream returns at once, while the backend closes its consumer in
//! the background and the broker hands what it held to the rest of the group. A member of the
//! same process that joins the same group in that moment overlaps with the leaving one, which
//! costs an extra rebalance on any broker and trips bugs on some: pulsar-lite 0.2 dropped a
//! handed-over message, and tansu 0.6 keeps a leader that left while the group was forming, so
//! the newcomer waits for an assignment that never comes. A backend therefore marks a member
//! as leaving when its stream is dropped ([`Membership::leave`]) and as gone once its consumer
//! is closed ([`Membership::gone`]), and [`wait_for_departures`] before it joins.
//!
//! This only orders members of one process; a member of another process that leaves while
//! this one joins is the broker's to handle.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Names a group at a broker, in whatever parts the backend needs: the broker's address and
/// the group for Kafka, the service URL, topic and subscription for Pulsar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey(Vec<String>);

impl GroupKey {
    /// The key made of `parts`, compared part by part.
    pub fn new<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(parts.into_iter().map(Into::into).collect())
    }
}

static LEAVING: LazyLock<Departures> = LazyLock::new(Departures::default);

/// How many members of each group are leaving, process-wide.
#[derive(Default)]
struct Departures {
    leaving: Mutex<HashMap<GroupKey, usize>>,
    left: Notify,
}

impl Departures {
    fn started(&self, key: &GroupKey) {
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        *leaving.entry(key.clone()).or_default() += 1;
    }

    fn finished(&self, key: &GroupKey) {
        {
            let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = leaving.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    leaving.remove(key);
                }
            }
        }
        self.left.notify_waiters();
    }

    fn any_leaving(&self, keys: &[GroupKey]) -> bool {
        let leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| leaving.contains_key(k))
    }
}

/// Waits until no member of this process is leaving one of `keys`, or `limit` has passed (then
/// it logs a warning and returns: joining late is worse than joining into a rebalance).
pub async fn wait_for_departures(keys: &[GroupKey], limit: Duration) {
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    let mut waited = false;
    loop {
        // Registered before the check, so a departure between the two is not missed.
        let left = LEAVING.left.notified();
        if !LEAVING.any_leaving(keys) {
            if waited {
                tracing::debug!(?keys, waited = ?started.elapsed(), "members of this process left the group; joining");
            }
            return;
        }
        waited = true;
        if tokio::time::timeout_at(deadline, left).await.is_err() {
            tracing::warn!(
                ?keys,
                ?limit,
                "members of this process leaving the group did not finish in time; joining anyway"
            );
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Member,
    Leaving,
    Gone,
}

#[derive(Debug)]
struct Place {
    key: GroupKey,
    state: Mutex<State>,
}

impl Place {
    fn set(&self, next: State) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (*state, next) {
            (State::Member, State::Leaving) => LEAVING.started(&self.key),
            (State::Leaving, State::Gone) => LEAVING.finished(&self.key),
            // Gone without having left: the subscriber was closed, nobody waits for it.
            (State::Member, State::Gone) => {}
            // Leaving twice, or anything after gone.
            _ => return,
        }
        *state = next;
    }
}

impl Drop for Place {
    // A task that ends without saying so must not hold joiners back until the limit.
    fn drop(&mut self) {
        self.set(State::Gone);
    }
}

/// One member's place in its group, shared by its stream and whatever closes its consumer.
#[derive(Debug, Clone)]
pub struct Membership(Arc<Place>);

impl Membership {
    /// A member of the group `key`.
    pub fn new(key: GroupKey) -> Self {
        Self(Arc::new(Place {
            key,
            state: Mutex::new(State::Member),
        }))
    }

    /// The application let go of the stream: the member is leaving until [`Self::gone`] (or
    /// until the last clone of this membership is dropped).
    pub fn leave(&self) {
        self.0.set(State::Leaving);
    }

    /// The member's consumer is closed; joiners waiting for it go on.
    pub fn gone(&self) {
        self.0.set(State::Gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> GroupKey {
        GroupKey::new(["departures-test", name])
    }

    #[tokio::test]
    async fn a_join_waits_until_the_leaving_member_is_gone() {
        let member = Membership::new(key("a"));
        member.leave();
        member.leave();
        let leaving = member.clone();
        let gone = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            leaving.gone();
            tokio::time::Instant::now()
        });
        wait_for_departures(&[key("a")], Duration::from_secs(10)).await;
        let returned = tokio::time::Instant::now();
        let gone_at = gone.await.expect("the task ends");
        assert!(returned >= gone_at, "returned before the member was gone");
        assert!(!LEAVING.any_leaving(&[key("a")]));
    }

    #[tokio::test]
    async fn members_and_other_groups_do_not_hold_a_join_back() {
        let staying = Membership::new(key("b"));
        let other = Membership::new(key("c"));
        other.leave();
        tokio::time::timeout(
            Duration::from_secs(1),
            wait_for_departures(&[key("b")], Duration::from_secs(10)),
        )
        .await
        .expect("nobody is leaving group b");
        drop((staying, other));
        assert!(
            !LEAVING.any_leaving(&[key("c")]),
            "a dropped membership is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_departure_that_never_ends_holds_a_join_back_only_until_the_limit() {
        let stuck = Membership::new(key("d"));
        stuck.leave();
        let started = tokio::time::Instant::now();
        wait_for_departures(&[key("d")], Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        stuck.gone();
    }
}
