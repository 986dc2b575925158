//! Faults injected with rdkafka's in-process mock cluster: the whole conformance suite with a
//! broker restart, brokers down while producing and while consuming, and failing produce and
//! commit requests. Nothing may be lost; duplicates are allowed (at-least-once).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eventbus::Subscription;
use eventbus_testkit::conformance::{Suite, Target};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

mod support;
use support::{message, take, Mock};

/// tansu keeps its data in memory (its SQLite and PostgreSQL engines are not in the build the
/// test script installs), so the suite's restart case runs here: every broker of the mock
/// cluster goes down and comes back with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_on_the_mock_cluster() {
    let mock = Arc::new(Mock::start(3).expect("start the mock cluster"));
    let (for_connect, for_restart) = (mock.clone(), mock.clone());
    let target = Target::new("kafka on MockCluster", move || {
        eventbus_kafka::connect(for_connect.settings())
    })
    .with_restart(move || {
        let mock = for_restart.clone();
        async move {
            // Kafka commits asynchronously: let the closing consumer's commit go out first, as
            // it would before any real restart. (A consumer that crashes instead sees its
            // acknowledged but uncommitted messages again: at-least-once.)
            tokio::time::sleep(Duration::from_secs(1)).await;
            mock.down();
            tokio::time::sleep(Duration::from_secs(1)).await;
            mock.up();
            Ok(())
        }
    });
    let report = Suite::new(target)
        .only(&["broker_restart_loses_nothing"])
        .run()
        .await;
    println!("{report}");
    report.assert_passed();
    assert_eq!((report.passed(), report.skipped()), (1, 0), "{report}");
}

async fn publish_all(transport: &eventbus::Transport, topic: &str, bodies: &[String]) {
    for chunk in bodies.chunks(10) {
        let batch = chunk.iter().map(|b| message(b)).collect();
        transport
            .publisher
            .publish(topic, batch)
            .await
            .expect("publish succeeds in the end");
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_while_producing_and_consuming_lose_nothing() {
    let mock = Arc::new(Mock::start(1).expect("start the mock cluster"));
    let transport = eventbus_kafka::connect(mock.settings()).await.unwrap();
    let sent = bodies("m", 200);

    // Producing: the brokers go away in the middle and come back; librdkafka retries.
    let outage = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mock.down();
            tokio::time::sleep(Duration::from_secs(2)).await;
            mock.up();
        })
    };
    publish_all(&transport, "outage", &sent).await;
    outage.await.unwrap();

    // Consuming: down again after a third was taken.
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("outage", "readers", "r1"))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 70 {
        seen.insert(take(&mut stream).await);
    }
    mock.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.up();
    while seen.len() < sent.len() {
        seen.insert(take(&mut stream).await);
    }
    assert_eq!(seen, sent.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_produce_requests_are_retried_without_duplicates() {
    let mock = Mock::start(1).expect("start the mock cluster");
    let transport = eventbus_kafka::connect(mock.settings()).await.unwrap();
    // Create the topic first, so that the errors hit the messages' own requests.
    publish_all(&transport, "flaky", &["warm-up".to_owned()]).await;
    mock.fail_next(
        RDKafkaApiKey::Produce,
        vec![
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let sent = bodies("p", 50);
    publish_all(&transport, "flaky", &sent).await;

    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("flaky", "readers", "r1"))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() + 1 {
        got.push(take(&mut stream).await);
    }
    let distinct: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        got.len(),
        "idempotence: no duplicates in {got:?}"
    );
    assert!(sent.iter().all(|b| distinct.contains(b)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_skip_nothing() {
    let mock = Mock::start(1).expect("start the mock cluster");
    let transport = eventbus_kafka::connect(mock.settings()).await.unwrap();
    let first = bodies("a", 40);
    publish_all(&transport, "commits", &first).await;
    mock.fail_next(
        RDKafkaApiKey::OffsetCommit,
        vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 4],
    );
    let subscription = Subscription::new("commits", "readers", "r1");
    let mut seen = BTreeSet::new();
    {
        let mut stream = transport
            .subscriber
            .subscribe(subscription.clone())
            .await
            .unwrap();
        while seen.len() < 20 {
            seen.insert(take(&mut stream).await);
        }
        // Some commits failed; later ones, and the one on close, carry the offsets again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let second = bodies("b", 20);
    publish_all(&transport, "commits", &second).await;
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("commits", "readers", "r2"))
        .await
        .unwrap();
    let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    while seen.len() < all.len() {
        seen.insert(take(&mut stream).await);
    }
    assert_eq!(seen, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_is_paused_and_resumed_in_order() {
    let mock = Mock::start(1).expect("start the mock cluster");
    let mut settings = mock.settings();
    settings.partition_buffer = 5;
    let transport = eventbus_kafka::connect(settings).await.unwrap();
    let sent = bodies("k", 300);
    // One key: one partition, whose buffer fills long before the reader catches up.
    for chunk in sent.chunks(50) {
        let batch = chunk
            .iter()
            .map(|b| eventbus::Message {
                key: Some("one-key".into()),
                ..message(b)
            })
            .collect();
        transport.publisher.publish("backlog", batch).await.unwrap();
    }
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("backlog", "slow", "r1"))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        if got.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        got.push(take(&mut stream).await);
    }
    assert_eq!(got, sent, "in order, nothing lost across pauses");
}
