//! rdkafka's in-process mock Kafka cluster, for tests that inject broker faults.
//!
//! `rdkafka::mocking::MockCluster` is tied to the thread that created it, so [`MockKafka`] keeps
//! it on a thread of its own and drives it through a channel; the handle can be shared across
//! tasks and threads. Topics are created automatically on first use (the mock has no
//! CreateTopics). The cluster stops when the handle is dropped.

use std::sync::mpsc;

use eventbus_core::{Error, ErrorKind, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::KafkaSettings;

enum Op {
    Down,
    Up,
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
}

/// A running mock cluster; see the [module documentation](self).
#[derive(Debug)]
pub struct MockKafka {
    bootstrap: String,
    brokers: i32,
    ops: mpsc::Sender<(Op, mpsc::Sender<()>)>,
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self> {
        let (ops, rx) = mpsc::channel::<(Op, mpsc::Sender<()>)>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let cluster = match MockCluster::new(brokers) {
                Ok(cluster) => cluster,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            if ready_tx.send(Ok(cluster.bootstrap_servers())).is_err() {
                return;
            }
            // Ends when the handle (the only sender) is dropped.
            for (op, done) in rx {
                match op {
                    Op::Down => (1..=brokers).for_each(|b| drop(cluster.broker_down(b))),
                    Op::Up => (1..=brokers).for_each(|b| drop(cluster.broker_up(b))),
                    Op::RequestErrors(api, errors) => cluster.request_errors(api, &errors),
                }
                let _ = done.send(());
            }
        });
        let started = ready.recv().map_err(|e| e.to_string()).and_then(|r| r);
        let bootstrap = started.map_err(|why| {
            Error::new(ErrorKind::Connection, "cannot start rdkafka's mock cluster")
                .with("error", why)
        })?;
        Ok(Self {
            bootstrap,
            brokers,
            ops,
        })
    }

    fn run(&self, op: Op) {
        let (done, wait) = mpsc::channel();
        // The thread only ends with the handle, so both always succeed.
        if self.ops.send((op, done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Every broker down: connections drop and requests fail until [`MockKafka::up`].
    pub fn down(&self) {
        self.run(Op::Down);
    }

    /// Every broker back, with its data.
    pub fn up(&self) {
        self.run(Op::Up);
    }

    /// The next requests of `api` fail with `errors`, one each, in order.
    pub fn fail_next(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) {
        self.run(Op::RequestErrors(api, errors));
    }

    /// The bootstrap servers, `host:port,…`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// How many brokers the cluster has.
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    /// Settings for this cluster: automatic topic creation instead of CreateTopics, and quick
    /// group rebalances (6 s session timeout) as tests want them.
    pub fn settings(&self) -> KafkaSettings {
        let mut s = KafkaSettings::new(&self.bootstrap)
            .property("allow.auto.create.topics", "true")
            .property("session.timeout.ms", "6000")
            .property("heartbeat.interval.ms", "500")
            .property("topic.metadata.refresh.interval.ms", "1000");
        s.create_topics = false;
        s
    }
}
