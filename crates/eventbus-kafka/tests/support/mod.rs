//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use eventbus::{DeliveryStream, Message};
use eventbus_kafka::KafkaSettings;

/// How long a test waits for one delivery.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Quick group rebalances for tests.
pub(crate) fn quick(settings: KafkaSettings) -> KafkaSettings {
    settings
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .property("topic.metadata.refresh.interval.ms", "1000")
}

/// A message with `body` as payload.
pub(crate) fn message(body: &str) -> Message {
    Message {
        payload: body.as_bytes().to_vec().into(),
        ..Message::default()
    }
}

/// The body of the next delivery that could be acknowledged. A delivery whose partition was
/// revoked before its ack (a rebalance during a fault) is the documented at-least-once path: it
/// comes again, so it is counted and the next one taken, while any other ack error fails.
pub(crate) async fn take(stream: &mut DeliveryStream) -> String {
    loop {
        let d = eventbus_testkit::conformance::support::next_within(stream, WAIT)
            .await
            .unwrap_or_else(|why| panic!("no delivery: {why}"));
        let body = String::from_utf8_lossy(&d.message.payload).into_owned();
        match d.ack().await {
            Ok(()) => return body,
            Err(e) if e.kind() == eventbus::ErrorKind::Reassigned => {
                let n = REASSIGNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprintln!(
                    "{body}: reassigned before its ack ({n} so far), expecting it again: {e}"
                );
            }
            Err(e) => panic!("ack of {body}: {e}"),
        }
    }
}

/// Acknowledgements refused as [`eventbus::ErrorKind::Reassigned`] in this test binary.
pub(crate) static REASSIGNED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// rdkafka's mock cluster, from the crate's `mock` feature.
pub(crate) use eventbus_kafka::mock::MockKafka as Mock;
