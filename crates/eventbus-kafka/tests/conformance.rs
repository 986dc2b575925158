//! The conformance suite against a tansu broker (Kafka protocol) the test starts on a free port.

use eventbus_kafka::KafkaSettings;
use eventbus_testkit::conformance::{Suite, Target};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};

/// Quick group rebalances for tests; the rest as in production, but for one tansu quirk.
pub fn settings(bootstrap: &str) -> KafkaSettings {
    let mut s = KafkaSettings::new(bootstrap)
        // tansu 0.6.0 answers a fetch from an offset inside a record batch with nothing (only a
        // batch's first offset works), so a group resuming mid-batch would stall. One message
        // per batch keeps every offset a batch start. Apache Kafka needs no such setting.
        .producer_property("batch.num.messages", "1")
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .property("topic.metadata.refresh.interval.ms", "1000");
    s.topic_partitions = 4;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_passes_the_conformance_suite_on_tansu() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let broker = BrokerProcess::start(BrokerSpec::tansu())
        .await
        .expect("start tansu (cargo install --locked tansu --features dynostore)");
    let bootstrap = broker.addr();
    let target = Target::new("kafka on tansu", move || {
        eventbus_kafka::connect(settings(&bootstrap))
    });
    let report = Suite::new(target).run().await;
    println!("{report}");
    if report.failed() > 0 {
        println!("tansu log:\n{}", broker.log_tail(60));
    }
    report.assert_passed();
    // tansu keeps its data in memory: the restart case runs on the mock cluster instead
    // (tests/faults.rs). Kafka declares every other guarantee.
    assert_eq!(report.skipped(), 1, "{report}");
}
