//! Counters, gauges and histograms through the `metrics` facade: nothing is recorded until the
//! application installs a recorder (the facade's `telemetry` feature installs a Prometheus one).
//! Install it before the first event: handles are looked up once per topic and kept.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::consumer::layer::{Inner, Wrap};
use crate::consumer::{Context, Layer, Next, Outcome};
use crate::error::Result;
use crate::producer::layer::{PublishInner, PublishWrap};
use crate::producer::{Outgoing, PublishLayer, PublishNext};
use crate::transport::Position;

/// The metric names, in Prometheus form.
pub mod name {
    /// Counter: messages the broker confirmed (`topic`).
    pub const PUBLISHED: &str = "eventbus_published_total";
    /// Counter: messages whose publish failed (`topic`).
    pub const PUBLISH_ERRORS: &str = "eventbus_publish_errors_total";
    /// Histogram: seconds per published batch (`topic`).
    pub const PUBLISH_DURATION: &str = "eventbus_publish_duration_seconds";
    /// Counter: deliveries received (`topic`, `group`).
    pub const CONSUMED: &str = "eventbus_consumed_total";
    /// Counter: deliveries handled (`topic`, `group`).
    pub const HANDLED: &str = "eventbus_handled_total";
    /// Counter: extra attempts made in-process (`topic`, `group`).
    pub const RETRIED: &str = "eventbus_retried_total";
    /// Counter: deliveries copied to the dead-letter topic (`topic`, `group`, `reason`).
    pub const DEAD_LETTERED: &str = "eventbus_dead_lettered_total";
    /// Counter: deliveries acknowledged without handling (`topic`, `group`).
    pub const SKIPPED: &str = "eventbus_skipped_total";
    /// Counter: deliveries handed back to the broker (`topic`, `group`).
    pub const RELEASED: &str = "eventbus_released_total";
    /// Histogram: seconds from receipt to outcome, retries included (`topic`, `group`).
    pub const HANDLER_DURATION: &str = "eventbus_handler_duration_seconds";
    /// Histogram: seconds from the event's `ce_time` to handled (`topic`, `group`).
    pub const END_TO_END: &str = "eventbus_end_to_end_latency_seconds";
    /// Gauge: deliveries being handled (`topic`, `group`).
    pub const IN_FLIGHT: &str = "eventbus_in_flight";
    /// Gauge: messages the group has not received yet, where the backend tells (`topic`,
    /// `group`).
    pub const CONSUMER_LAG: &str = "eventbus_consumer_lag";
}

/// Describes every metric to the installed recorder (units and help text).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(name::PUBLISHED, "Messages the broker confirmed.");
    describe_counter!(name::PUBLISH_ERRORS, "Messages whose publish failed.");
    describe_histogram!(
        name::PUBLISH_DURATION,
        Unit::Seconds,
        "Time per published batch."
    );
    describe_counter!(name::CONSUMED, "Deliveries received.");
    describe_counter!(name::HANDLED, "Deliveries handled by receivers.");
    describe_counter!(name::RETRIED, "Extra attempts made in-process.");
    describe_counter!(
        name::DEAD_LETTERED,
        "Deliveries copied to the dead-letter topic."
    );
    describe_counter!(name::SKIPPED, "Deliveries acknowledged without handling.");
    describe_counter!(name::RELEASED, "Deliveries handed back to the broker.");
    describe_histogram!(
        name::HANDLER_DURATION,
        Unit::Seconds,
        "Time from receipt to outcome, retries included."
    );
    describe_histogram!(
        name::END_TO_END,
        Unit::Seconds,
        "Time from the event's ce_time to handled."
    );
    describe_gauge!(name::IN_FLIGHT, "Deliveries being handled.");
    describe_gauge!(
        name::CONSUMER_LAG,
        "Messages the group has not received yet."
    );
}

/// Sets the lag gauge of `group` on `topic`.
pub fn record_lag(topic: &str, group: &str, lag: u64) {
    gauge!(name::CONSUMER_LAG, "topic" => topic.to_owned(), "group" => group.to_owned())
        .set(lag as f64);
}

/// Metric handles per topic, made on first use: registering labels with the recorder costs a
/// lookup and allocations that per-event code should not pay.
struct PerTopic<H> {
    handles: RwLock<crate::FastMap<String, Arc<H>>>,
    /// The handles a delivery found last, by its topic's shared name. A backend hands every
    /// delivery of a topic one `Arc<str>`, so comparing pointers finds a consumer's handles
    /// without hashing the name or taking the map's lock. Holding the name keeps its pointer
    /// from being reused for another.
    last: Mutex<Option<(Arc<str>, Arc<H>)>>,
}

impl<H> Default for PerTopic<H> {
    fn default() -> Self {
        Self {
            handles: RwLock::new(crate::FastMap::default()),
            last: Mutex::new(None),
        }
    }
}

impl<H> PerTopic<H> {
    /// As [`PerTopic::get`], looking at the handles found last first. Never waits for the
    /// lock on them: a layer shared by consumers on several threads goes to the map instead.
    fn get_shared(
        &self,
        topic: &Arc<str>,
        fits: impl Fn(&H) -> bool,
        make: impl FnOnce() -> H,
    ) -> Arc<H> {
        if let Ok(last) = self.last.try_lock() {
            if let Some((name, h)) = last.as_ref() {
                if Arc::ptr_eq(name, topic) && fits(h) {
                    return Arc::clone(h);
                }
            }
        }
        let h = self.get(topic, &fits, make);
        if let Ok(mut last) = self.last.try_lock() {
            *last = Some((Arc::clone(topic), Arc::clone(&h)));
        }
        h
    }

    /// The cached handles of `topic` when `fits` accepts them, else new ones from `make`
    /// (cached when the topic had none).
    fn get(&self, topic: &str, fits: impl Fn(&H) -> bool, make: impl FnOnce() -> H) -> Arc<H> {
        let cached = self.handles.read().ok().and_then(|m| m.get(topic).cloned());
        match cached {
            Some(h) if fits(&h) => h,
            Some(_) => Arc::new(make()),
            None => {
                let h = Arc::new(make());
                if let Ok(mut map) = self.handles.write() {
                    map.insert(topic.to_owned(), Arc::clone(&h));
                }
                h
            }
        }
    }
}

struct ConsumerHandles {
    group: String,
    consumed: Counter,
    handled: Counter,
    retried: Counter,
    skipped: Counter,
    released: Counter,
    duration: Histogram,
    end_to_end: Histogram,
    in_flight: Gauge,
}

impl ConsumerHandles {
    fn new(topic: &str, group: &str) -> Self {
        let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
        Self {
            group: group.to_owned(),
            consumed: counter!(name::CONSUMED, &labels),
            handled: counter!(name::HANDLED, &labels),
            retried: counter!(name::RETRIED, &labels),
            skipped: counter!(name::SKIPPED, &labels),
            released: counter!(name::RELEASED, &labels),
            duration: histogram!(name::HANDLER_DURATION, &labels),
            end_to_end: histogram!(name::END_TO_END, &labels),
            in_flight: gauge!(name::IN_FLIGHT, &labels),
        }
    }
}

/// Consumer metrics (`metrics`): consumed, handled, retried, dead-lettered (by reason),
/// skipped, released, handler duration, end-to-end latency and in-flight, labelled by topic and
/// group.
#[derive(Default)]
pub struct MetricsLayer {
    handles: PerTopic<ConsumerHandles>,
}

impl MetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    fn handles(&self, topic: &Arc<str>, group: &str) -> Arc<ConsumerHandles> {
        // One layer shared by consumers of different groups caches the first group only.
        self.handles.get_shared(
            topic,
            |h| h.group == group,
            || ConsumerHandles::new(topic, group),
        )
    }
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer").finish_non_exhaustive()
    }
}

#[async_trait]
impl Layer for MetricsLayer {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
        self.wrap(ctx, next).await
    }
}

impl Wrap for MetricsLayer {
    async fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> Outcome {
        let h = self.handles(ctx.topic_shared(), ctx.group());
        h.consumed.increment(1);
        h.in_flight.increment(1.0);
        let started = Instant::now();
        let first_attempt = ctx.attempt();
        let outcome = inner.run(ctx).await;
        h.in_flight.decrement(1.0);
        h.duration.record(started.elapsed().as_secs_f64());
        let retries = ctx.attempt().saturating_sub(first_attempt);
        if retries > 0 {
            h.retried.increment(u64::from(retries));
        }
        match &outcome {
            Outcome::Handled => {
                h.handled.increment(1);
                // A raw receiver's delivery has no parsed metadata: its time alone will do.
                // Measured against the system clock as it reads, not as a calendar time:
                // `Utc::now() - sent` turned seconds into a date and back, for every event.
                let age = ctx.delivery().sent_at().and_then(|sent| {
                    SystemTime::now()
                        .duration_since(SystemTime::from(sent))
                        .ok()
                });
                if let Some(age) = age {
                    h.end_to_end.record(age.as_secs_f64());
                }
            }
            Outcome::Skipped { .. } => h.skipped.increment(1),
            Outcome::DeadLettered { reason, .. } => counter!(
                name::DEAD_LETTERED,
                "topic" => ctx.topic().to_owned(),
                "group" => ctx.group().to_owned(),
                "reason" => reason.as_str()
            )
            .increment(1),
            _ => h.released.increment(1),
        }
        outcome
    }
}

struct PublishHandles {
    published: Counter,
    errors: Counter,
    duration: Histogram,
}

/// Producer metrics (`metrics`): published, publish errors and publish duration by topic.
#[derive(Default)]
pub struct PublishMetricsLayer {
    handles: PerTopic<PublishHandles>,
}

impl PublishMetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    fn handles(&self, topic: &str) -> Arc<PublishHandles> {
        self.handles.get(
            topic,
            |_| true,
            || {
                let labels = [("topic", topic.to_owned())];
                PublishHandles {
                    published: counter!(name::PUBLISHED, &labels),
                    errors: counter!(name::PUBLISH_ERRORS, &labels),
                    duration: histogram!(name::PUBLISH_DURATION, &labels),
                }
            },
        )
    }
}

impl std::fmt::Debug for PublishMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishMetricsLayer")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PublishLayer for PublishMetricsLayer {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn publish(&self, out: &mut Outgoing, next: PublishNext<'_>) -> Result<Vec<Position>> {
        self.wrap(out, next).await
    }
}

impl PublishWrap for PublishMetricsLayer {
    async fn wrap<I: PublishInner>(&self, out: &mut Outgoing, inner: I) -> Result<Vec<Position>> {
        let h = self.handles(&out.topic);
        let count = out.messages.len() as u64;
        let started = Instant::now();
        let result = inner.run(out).await;
        h.duration.record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => h.published.increment(count),
            Err(_) => h.errors.increment(count),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles made for a group, counting how many were made.
    fn handles_of<'a>(
        cache: &'a PerTopic<String>,
        made: &'a std::cell::Cell<u32>,
    ) -> impl Fn(&Arc<str>, &str) -> Arc<String> + 'a {
        move |topic, group| {
            cache.get_shared(
                topic,
                |h| h == group,
                || {
                    made.set(made.get() + 1);
                    group.to_owned()
                },
            )
        }
    }

    #[test]
    fn the_handles_found_last_are_those_of_the_same_topic_and_group() {
        let cache = PerTopic::default();
        let made = std::cell::Cell::new(0);
        let handles = handles_of(&cache, &made);
        let orders: Arc<str> = Arc::from("orders");
        let first = handles(&orders, "billing");
        assert!(Arc::ptr_eq(&first, &handles(&orders, "billing")));
        // Another `Arc` of the same name: found in the map by name.
        assert!(Arc::ptr_eq(
            &first,
            &handles(&Arc::from("orders"), "billing")
        ));
        assert_eq!(made.get(), 1);

        let refunds: Arc<str> = Arc::from("refunds");
        let other = handles(&refunds, "billing");
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(Arc::ptr_eq(&first, &handles(&orders, "billing")));
        assert!(Arc::ptr_eq(&other, &handles(&refunds, "billing")));
        assert_eq!(made.get(), 2);

        // A group the cached handles are not for gets its own, each time.
        assert_eq!(*handles(&orders, "audit"), "audit");
        assert_eq!(*handles(&orders, "billing"), "billing");
        assert_eq!(made.get(), 3);
    }
}
