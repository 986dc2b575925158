//! Behaviour beyond the conformance suite: a subscription rides out a broker restart, a group
//! starts at a message id, and a Failover group has one active member.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eventbus::{DeliveryStream, Message, StartPosition, Subscription, Transport};
use eventbus_pulsar::{GroupMode, PulsarSettings};
use eventbus_testkit::pulsar_proxy::PulsarLite;
use futures::StreamExt;

fn message(body: &str) -> Message {
    Message {
        key: Some("k".into()),
        payload: body.as_bytes().to_vec().into(),
        ..Message::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_rides_out_a_broker_restart() {
    let mut lite = PulsarLite::start().await.unwrap();
    let transport = eventbus_pulsar::connect(PulsarSettings::new(lite.url()))
        .await
        .unwrap();
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("restart", "g", "member-1"))
        .await
        .unwrap();
    transport
        .publisher
        .publish("restart", vec![message("before")])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .unwrap();
    first.unwrap().unwrap().ack().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    lite.broker.restart().await.unwrap();
    // Publishing fails until the client has reconnected; a caller retries, as here.
    let deadline = Instant::now() + Duration::from_secs(30);
    for body in ["after-0", "after-1", "after-2"] {
        while let Err(e) = transport
            .publisher
            .publish("restart", vec![message(body)])
            .await
        {
            assert!(
                Instant::now() < deadline,
                "still failing after the restart: {e}"
            );
            assert!(e.is_temporary(), "a lost broker is a temporary error: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut got = BTreeSet::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        let delivery = next
            .expect("the reader delivers again after the restart")
            .unwrap();
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                assert!(e.is_temporary(), "{e}");
                continue;
            }
        };
        let body = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        delivery.ack().await.unwrap();
        // At-least-once: the ack of "before" (acks have no answer) may not have reached the
        // broker before it went down, and then it comes again.
        if body != "before" {
            got.insert(body);
        }
    }
    assert_eq!(
        got,
        BTreeSet::from(["after-0".into(), "after-1".into(), "after-2".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_starts_at_a_message_id_a_publish_returned() {
    let lite = PulsarLite::start().await.unwrap();
    let transport = eventbus_pulsar::connect(PulsarSettings::new(lite.url()))
        .await
        .unwrap();
    let batch = ["m-0", "m-1", "m-2"].map(message).to_vec();
    let positions = transport.publisher.publish("at", batch).await.unwrap();
    let start = StartPosition::At(positions[1].to_string());
    let subscription = Subscription::new("at", "from-m-1", "member-1").starting_at(start);
    let mut stream = transport.subscriber.subscribe(subscription).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.next()).await;
        let delivery = next.expect("a delivery in time").unwrap().unwrap();
        got.push(String::from_utf8_lossy(&delivery.message.payload).into_owned());
        delivery.ack().await.unwrap();
    }
    // A seek to a message id starts with that message.
    assert_eq!(got, ["m-1", "m-2"]);
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        more.is_err(),
        "nothing before the start: {:?}",
        more.map(|d| d.map(|d| d.map(|d| d.position.clone())))
    );

    let bad = Subscription::new("at", "g", "m").starting_at(StartPosition::At("12-x".into()));
    let err = transport
        .subscriber
        .subscribe(bad)
        .await
        .err()
        .expect("a malformed id is refused");
    assert_eq!(err.kind(), eventbus::ErrorKind::Config);
    assert!(err.to_string().contains("ledger:entry"), "{err}");
}

async fn publish_one(transport: &Transport, topic: &str, body: &str) {
    transport
        .publisher
        .publish(topic, vec![message(body)])
        .await
        .unwrap();
}

/// Takes deliveries until the one with `body`, acknowledging each. Acks have no answer, so one
/// may still be on its way when the next message reaches pulsar-lite, whose Failover dispatcher
/// then sends the acknowledged message again: a repeat of an `earlier` body is acknowledged
/// again and skipped, as at-least-once allows; anything else fails.
async fn take_and_ack(stream: &mut DeliveryStream, body: &str, earlier: &[&str]) {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.next()).await;
        let delivery = next.expect("a delivery in time").unwrap().unwrap();
        let got = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        delivery.ack().await.unwrap();
        if got == body {
            break;
        }
        assert!(
            earlier.contains(&got.as_str()),
            "{got} where {body} was due"
        );
    }
    // Give this ack time to reach the broker before the next message does.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn nothing_on(stream: &mut DeliveryStream, what: &str) {
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        more.is_err(),
        "{what}: {:?}",
        more.map(|d| d.map(|d| d.map(|d| d.message.payload.clone())))
    );
}

/// The Failover mapping, message by message. The conformance suite's Failover run is opt-in on
/// pulsar-lite (see tests/conformance.rs): its Failover dispatcher sends every unacknowledged
/// message again whenever a new one arrives. Here each message is acknowledged before the next
/// is published, which keeps clear of that fault while checking what Failover promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_group_has_one_active_member_and_hands_over_when_it_leaves() {
    let lite = PulsarLite::start().await.unwrap();
    let mut settings = PulsarSettings::new(lite.url());
    settings.group_mode = GroupMode::Failover;
    let transport = eventbus_pulsar::connect(settings).await.unwrap();
    let guarantees = transport.guarantees;
    assert!(guarantees.order_per_key && !guarantees.shared_groups);
    let subscribe = |member: &'static str| {
        transport
            .subscriber
            .subscribe(Subscription::new("failover", "g", member))
    };
    let mut one = subscribe("member-1").await.unwrap();
    let mut two = subscribe("member-2").await.unwrap();

    // The broker picks the active member; the first message shows which.
    publish_one(&transport, "failover", "m-0").await;
    let (first, active_is_one) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            d = one.next() => (d, true),
            d = two.next() => (d, false),
        }
    })
    .await
    .expect("one member gets the first message");
    let first = first.unwrap().unwrap();
    assert_eq!(&first.message.payload[..], b"m-0");
    first.ack().await.unwrap();
    let (mut active, mut standby) = if active_is_one {
        (one, two)
    } else {
        (two, one)
    };
    let bodies = ["m-0", "m-1", "m-2", "m-3", "m-4", "m-5"];
    for n in 1..=3 {
        publish_one(&transport, "failover", bodies[n]).await;
        take_and_ack(&mut active, bodies[n], &bodies[..n]).await;
    }
    nothing_on(&mut standby, "the standby member got a message").await;

    // The active member leaves: the standby one takes over where it stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(active);
    for n in 4..=5 {
        publish_one(&transport, "failover", bodies[n]).await;
        take_and_ack(&mut standby, bodies[n], &bodies[..n]).await;
    }
    nothing_on(&mut standby, "acknowledged messages came again").await;
}
