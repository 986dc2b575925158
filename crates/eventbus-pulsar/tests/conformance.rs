//! The conformance suite against a pulsar-lite process the test starts on a free port, and
//! against the broker at `PULSAR_URL` when that is set (an Apache Pulsar container, say).

use std::sync::Arc;

use eventbus_pulsar::{GroupMode, PulsarSettings};
use eventbus_testkit::conformance::{Suite, Target};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::pulsar_proxy::PulsarFrameProxy;
use tokio::sync::Mutex;

const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn settings(url: &str, mode: GroupMode) -> PulsarSettings {
    let mut s = PulsarSettings::new(url);
    s.group_mode = mode;
    s
}

/// Runs the suite on a fresh pulsar-lite, behind the frame proxy, with groups in `mode`;
/// returns the number of skipped cases.
async fn run_on_pulsar_lite(mode: GroupMode) -> usize {
    let broker = BrokerProcess::start(BrokerSpec::pulsar_lite())
        .await
        .expect("start pulsar-lite (pip install pulsar-lite)");
    let proxy = PulsarFrameProxy::start(broker.addr())
        .await
        .expect("start the frame proxy");
    let url = proxy.url();
    let broker = Arc::new(Mutex::new(broker));
    let restart_broker = broker.clone();
    let target = Target::new(format!("pulsar-lite ({mode:?})"), move || {
        eventbus_pulsar::connect(settings(&url, mode))
    })
    .with_restart(move || {
        let broker = restart_broker.clone();
        async move {
            // Pulsar acks have no answer: give the acks and the consumer close that the case
            // sent just before a moment to arrive, as before any planned restart (the Kafka
            // fault test waits the same second for its closing commit).
            tokio::time::sleep(RESTART_GRACE).await;
            broker.lock().await.restart().await
        }
    });
    let report = Suite::new(target).run().await;
    println!("{report}");
    println!("proxy: {:?}", proxy.stats());
    if report.failed() > 0 {
        println!("pulsar-lite log:\n{}", broker.lock().await.log_tail(60));
    }
    report.assert_passed();
    report.skipped()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_groups_pass_the_conformance_suite_on_pulsar_lite() {
    // The client prefetches, so the ack of one message does not hold back the next: that case
    // is skipped, and nothing else.
    assert_eq!(run_on_pulsar_lite(GroupMode::KeyShared).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_the_broker_at_pulsar_url() {
    let Ok(url) = std::env::var("PULSAR_URL") else {
        eprintln!("PULSAR_URL is not set: no external Pulsar broker to test against");
        return;
    };
    let target = Target::new("pulsar (PULSAR_URL)", move || {
        eventbus_pulsar::connect(settings(&url, GroupMode::KeyShared))
    });
    let report = Suite::new(target).run().await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_groups_pass_the_conformance_suite_on_pulsar_lite() {
    // Shared groups promise no order per key: three more cases are skipped.
    assert_eq!(run_on_pulsar_lite(GroupMode::Shared).await, 4);
}
