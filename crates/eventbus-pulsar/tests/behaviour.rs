//! Behaviour beyond the conformance suite: a subscription rides out a broker restart, and a
//! group starts at a message id.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eventbus::{Message, StartPosition, Subscription};
use eventbus_pulsar::PulsarSettings;
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
        got.insert(String::from_utf8_lossy(&delivery.message.payload).into_owned());
        delivery.ack().await.unwrap();
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
        more.map(|d| d.map(|d| d.map(|d| d.position)))
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
