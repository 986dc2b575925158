//! The conformance suite against a redis-server process the test starts on a free port.

use std::sync::Arc;
use std::time::Duration;

use eventbus_redis::RedisSettings;
use eventbus_testkit::conformance::{Suite, Target};
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use tokio::sync::Mutex;

/// Settings that make the suite quick: a dead member's entries are taken over after a second.
fn settings(url: String) -> RedisSettings {
    let mut s = RedisSettings::new(url);
    s.block = Duration::from_millis(500);
    s.claim_idle = Duration::from_millis(1_000);
    s.claim_interval = Duration::from_millis(250);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_passes_the_conformance_suite() {
    let server = BrokerProcess::start(BrokerSpec::redis())
        .await
        .expect("start redis-server (apt-get install redis-server)");
    let url = format!("redis://{}", server.addr());
    let server = Arc::new(Mutex::new(server));
    let restart_server = server.clone();
    let target = Target::new("redis", move || {
        eventbus_redis::connect(settings(url.clone()))
    })
    .with_restart(move || {
        let server = restart_server.clone();
        async move { server.lock().await.restart().await }
    });
    let report = Suite::new(target).run().await;
    println!("{report}");
    if report.failed() > 0 {
        println!("redis-server log:\n{}", server.lock().await.log_tail(40));
    }
    report.assert_passed();
    // Redis gives no order per key and no gating by ack: the four cases on those are skipped,
    // and nothing else.
    assert_eq!(report.skipped(), 4, "{report}");
}
