//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test file uses a different part

use std::sync::mpsc;
use std::time::Duration;

use eventbus::{DeliveryStream, Message};
use eventbus_kafka::KafkaSettings;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

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

enum Op {
    Down,
    Up,
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
}

/// rdkafka's in-process mock cluster, on a thread of its own (it cannot cross threads), driven
/// through a channel. Topics are created automatically on first use.
pub(crate) struct Mock {
    bootstrap: String,
    brokers: i32,
    ops: mpsc::Sender<(Op, mpsc::Sender<()>)>,
}

impl Mock {
    pub(crate) fn start(brokers: i32) -> Self {
        let (ops, rx) = mpsc::channel::<(Op, mpsc::Sender<()>)>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let cluster = MockCluster::new(brokers).expect("create the mock cluster");
            ready_tx
                .send(cluster.bootstrap_servers())
                .expect("report the bootstrap servers");
            for (op, done) in rx {
                match op {
                    Op::Down => (1..=brokers).for_each(|b| drop(cluster.broker_down(b))),
                    Op::Up => (1..=brokers).for_each(|b| drop(cluster.broker_up(b))),
                    Op::RequestErrors(api, errors) => cluster.request_errors(api, &errors),
                }
                let _ = done.send(());
            }
        });
        let bootstrap = ready.recv().expect("the mock cluster started");
        Self {
            bootstrap,
            brokers,
            ops,
        }
    }

    fn run(&self, op: Op) {
        let (done, wait) = mpsc::channel();
        self.ops.send((op, done)).expect("the mock cluster runs");
        wait.recv().expect("the mock cluster answered");
    }

    /// Every broker down: connections drop, requests fail until [`Mock::up`].
    pub(crate) fn down(&self) {
        self.run(Op::Down);
    }

    /// Every broker back.
    pub(crate) fn up(&self) {
        self.run(Op::Up);
    }

    /// The next requests of `api` fail with `errors`, one each, in order.
    pub(crate) fn fail_next(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) {
        self.run(Op::RequestErrors(api, errors));
    }

    /// Settings for this cluster: no CreateTopics (the mock lacks it), automatic creation instead.
    pub(crate) fn settings(&self) -> KafkaSettings {
        let mut s =
            quick(KafkaSettings::new(&self.bootstrap)).property("allow.auto.create.topics", "true");
        s.create_topics = false;
        s
    }

    /// How many brokers the cluster has.
    pub(crate) fn brokers(&self) -> i32 {
        self.brokers
    }
}
