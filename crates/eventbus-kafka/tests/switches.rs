//! Open edX's kill switch for consumers, on rdkafka's mock cluster.

use eventbus::{ErrorKind, Subscription};

mod support;
use support::Mock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_switched_off_refuse_to_subscribe_and_name_the_setting() {
    let mock = Mock::start(1).expect("start the mock cluster");
    let mut settings = mock.settings();
    settings.consumers_enabled = false;
    let transport = eventbus_kafka::connect(settings).await.unwrap();
    let err = match transport
        .subscriber
        .subscribe(Subscription::new("t", "g", "c"))
        .await
    {
        Ok(_) => panic!("subscribed although consumers are switched off"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("EVENT_BUS_KAFKA_CONSUMERS_ENABLED"),
        "{err}"
    );
    // Producing is not affected.
    transport
        .publisher
        .publish("t", vec![support::message("still published")])
        .await
        .unwrap();
}
