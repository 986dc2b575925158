//! The command line on Kafka (tansu from the testkit fixture) with the schema-registry fixture:
//! Confluent-framed payloads and keys written by one binary and read by the other.

mod support;

use std::collections::BTreeSet;

use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::registry::RegistryServer;
use support::{json_lines, orders, orders_service_bin, Cli, ORDER_TYPE};

fn ids(lines: &[serde_json::Value]) -> BTreeSet<i64> {
    lines
        .iter()
        .map(|l| {
            l["data"]["order_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("no order_id in {l}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_lets_either_binary_read_the_other() {
    let server = BrokerProcess::start(BrokerSpec::tansu())
        .await
        .expect("start tansu (cargo install --locked tansu --features dynostore)");
    let registry = RegistryServer::start()
        .await
        .expect("schema registry fixture");
    let url = format!("kafka://{}", server.addr());
    let configure = |cli: Cli| {
        cli.with_env("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", &registry.url())
            // tansu 0.6 cannot fetch from inside a record batch: one message per batch.
            .with_env("EVENT_BUS_KAFKA_PRODUCER_BATCH_NUM_MESSAGES", "1")
    };
    let service = configure(Cli::new(orders_service_bin(), url.clone()));
    let standalone = configure(Cli::new(support::eventbus_bin(), url));

    // The service writes its typed events; the standalone binary, which knows no types,
    // decodes them through the registry.
    service.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(1, 20),
    );
    let tailed =
        json_lines(&standalone.ok(&["tail", "orders", "--from", "earliest", "--max", "20"], ""));
    assert_eq!(ids(&tailed), (1..=20).collect());
    assert_eq!(tailed[0]["metadata"]["type"], ORDER_TYPE);
    assert!(
        tailed
            .iter()
            .all(|t| t["key"].as_str() == Some(t["data"]["order_id"].to_string().as_str())),
        "{}",
        tailed[0]
    );

    // The standalone binary writes with a schema file; the service reads them as its type.
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order.avsc");
    standalone.ok(
        &[
            "produce",
            "invoices",
            "--type",
            ORDER_TYPE,
            "--schema",
            schema,
            "--key-field",
            "order_id",
            "-q",
        ],
        &orders(100, 5),
    );
    let read = json_lines(&service.ok(
        &["tail", "invoices", "--from", "earliest", "--max", "5"],
        "",
    ));
    assert_eq!(ids(&read), (100..105).collect());
    assert!(
        read.iter().all(|r| r.get("decode_error").is_none()),
        "{}",
        read[0]
    );
    assert_eq!(
        read[0]["key"].as_str(),
        Some(read[0]["data"]["order_id"].to_string().as_str())
    );
}
