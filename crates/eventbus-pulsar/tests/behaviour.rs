//! Behaviour beyond the conformance suite: a subscription rides out a broker restart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eventbus::{Message, Subscription};
use eventbus_pulsar::PulsarSettings;
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::pulsar_proxy::PulsarFrameProxy;
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
    let mut broker = BrokerProcess::start(BrokerSpec::pulsar_lite())
        .await
        .unwrap();
    let proxy = PulsarFrameProxy::start(broker.addr()).await.unwrap();
    let transport = eventbus_pulsar::connect(PulsarSettings::new(proxy.url()))
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

    broker.restart().await.unwrap();
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
