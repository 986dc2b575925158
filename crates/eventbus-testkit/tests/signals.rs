//! Signals: `send` runs receivers and publishes on configured routes; events that came from the
//! bus are dispatched to receivers and never published again (the loop guard).

use std::time::Duration;

use eventbus_core::{BusConfig, Envelope, Event, RoutingTable, StartPosition, TopicRoute};
use eventbus_testkit::capture::{CaptureBus, SignalProbe};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(type = "org.eventbus.test.signal.pinged.v1", key = "id")]
struct Pinged {
    id: i64,
    note: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_publishes_on_routes_and_bus_events_are_not_republished() {
    let routing = RoutingTable::new()
        .route::<Pinged>("pings")
        .add(
            Pinged::EVENT_TYPE,
            TopicRoute::new("audit").key_field("note"),
        )
        .add(
            Pinged::EVENT_TYPE,
            TopicRoute::new("disabled").enabled(false),
        );
    let capture = CaptureBus::with_config(
        BusConfig::new()
            .topic_prefix("dev")
            .service_name("lms")
            .routing(routing),
    );
    capture.install_global();
    let probe = SignalProbe::<Pinged>::connect();
    let failing = Pinged::signal().connect(|e: Envelope<Pinged>| async move {
        if e.id == 13 {
            Err("unlucky")
        } else {
            Ok(())
        }
    });

    // A local send: receivers run, one fails without stopping the others, and it is published.
    let report = Pinged::signal()
        .send(Pinged {
            id: 13,
            note: Some("n-13".into()),
        })
        .await
        .unwrap();
    assert_eq!(report.receivers_run, 2);
    assert_eq!(report.receiver_errors.len(), 1);
    assert_eq!(
        report.published.len(),
        2,
        "two enabled routes: {:?}",
        report.published
    );
    let sent = capture.assert_published::<Pinged>("pings", |p| p.id == 13);
    assert_eq!(sent.metadata().source, "openedx/lms/web");
    assert_eq!(
        capture.messages("pings")[0].key.as_deref(),
        Some(&b"13"[..])
    );
    assert_eq!(
        capture.messages("audit")[0].key.as_deref(),
        Some(&b"n-13"[..]),
        "route key field"
    );
    capture.assert_not_published::<Pinged>("disabled");

    // An event from the bus reaches receivers but is not published again.
    let consumer = capture
        .bus()
        .consumer("inbound", "signals")
        .start_at(StartPosition::Earliest)
        .signal::<Pinged>()
        .start()
        .await
        .unwrap();
    capture
        .bus()
        .producer()
        .send("inbound", &Pinged { id: 99, note: None })
        .await
        .unwrap();
    probe
        .assert_received(Duration::from_secs(10), |p| p.id == 99)
        .await;
    consumer.shutdown().await.unwrap();
    let ids: Vec<i64> = capture
        .published::<Pinged>("pings")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![13], "the event from the bus was published again");

    Pinged::signal().disconnect(failing);
    eventbus_core::Bus::uninstall_global();
}
