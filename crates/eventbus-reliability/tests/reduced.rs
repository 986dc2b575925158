//! Reduced runs of the crash, network and garbage scenarios on every backend, against real
//! brokers the testkit fixtures start: nothing acknowledged may be lost. The full campaign and
//! its table are `scripts/reliability.sh`.

use eventbus_reliability::{Backend, Scale, Scenario};

/// The scenarios the test script runs reduced: crashes, network faults, garbage.
const ALL: [Scenario; 3] = [Scenario::Kill, Scenario::Network, Scenario::Garbage];

/// One scenario at a time in this binary: the brokers and the faults share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn reduced(backend: Backend, scenarios: &[Scenario]) {
    eventbus_reliability::warnings::init_logging(
        "warn,eventbus_core::consumer::dead_letter=error,librdkafka=error,pulsar=error",
        true,
    );
    let _turn = ONE_AT_A_TIME.lock().await;
    for &scenario in scenarios {
        if let Some(why) = scenario.not_applicable(backend) {
            println!("{scenario} on {backend}: not applicable ({why})");
            continue;
        }
        let row = scenario
            .run(backend, Scale::Reduced)
            .await
            .unwrap_or_else(|e| panic!("{scenario} on {backend} could not run: {e:#}"));
        println!("{row}");
        assert!(row.passed(), "{scenario} on {backend} lost events: {row}");
        assert!(
            row.counts.acked > 0 && row.counts.received >= row.counts.acked,
            "{scenario} on {backend} counted nothing: {row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_survives_garbage() {
    reduced(Backend::Memory, &ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_crashes_network_faults_and_garbage() {
    reduced(Backend::Redis, &ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_survives_crashes_network_faults_and_garbage() {
    reduced(Backend::Kafka, &ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_survives_crashes_network_faults_and_garbage() {
    reduced(Backend::Pulsar, &ALL).await;
}
