//! Every subcommand as a user runs it: real processes against a real redis-server started by the
//! testkit fixture.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec, RefusingPort};
use support::{eventually, json_lines, orders, orders_service_bin, terminate, Cli, ORDER_TYPE};

async fn redis() -> (BrokerProcess, String) {
    let server = BrokerProcess::start(BrokerSpec::redis())
        .await
        .expect("start redis-server (apt-get install redis-server)");
    let url = format!("redis://{}", server.addr());
    (server, url)
}

fn ids(lines: &[serde_json::Value]) -> BTreeSet<i64> {
    lines
        .iter()
        .map(|l| l["data"]["order_id"].as_i64().expect("order_id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_then_tail_shows_every_event() {
    let (_server, url) = redis().await;
    let cli = Cli::new(orders_service_bin(), url);
    let produced = cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE],
        &orders(1, 1000),
    );
    assert_eq!(produced.lines().count(), 1000, "one position per event");
    assert!(
        produced.lines().all(|l| l.starts_with("orders ")),
        "{produced}"
    );

    let tailed = json_lines(&cli.ok(
        &["tail", "orders", "--from", "earliest", "--max", "1000"],
        "",
    ));
    assert_eq!(tailed.len(), 1000);
    assert_eq!(ids(&tailed), (1..=1000).collect());
    let first = &tailed[0];
    assert_eq!(first["metadata"]["type"], ORDER_TYPE);
    assert_eq!(first["metadata"]["source"], "openedx/eventbus/web");
    assert_eq!(first["key"], "1", "keyed by order_id");
    assert!(first.get("decode_error").is_none(), "{first}");

    // Filters and the table format.
    let filtered = json_lines(&cli.ok(
        &[
            "tail", "orders", "--from", "earliest", "--idle", "2s", "--filter", "key=42",
        ],
        "",
    ));
    assert_eq!(ids(&filtered), BTreeSet::from([42]));
    let table = cli.ok(
        &[
            "tail", "orders", "--from", "earliest", "--max", "3", "--format", "table",
        ],
        "",
    );
    assert!(table.starts_with("POSITION"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_redriven_to_a_fixed_consumer() {
    let (_server, url) = redis().await;
    let cli = Cli::new(orders_service_bin(), url);
    cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(1, 300),
    );

    let broken = cli.clone().with_env("BILLING_BROKEN", "1");
    let consumer = broken.spawn(&["run", "--name", "billing"]);
    let count_dead =
        || json_lines(&cli.ok(&["dlq", "list", "orders.dlq", "--idle", "1s"], "")).len();
    eventually(Duration::from_secs(90), "300 dead letters", || {
        count_dead() == 300
    });
    let stopped = terminate(consumer);
    assert!(
        stopped.status.success(),
        "SIGTERM is a clean stop: {stopped:?}"
    );

    let dead = json_lines(&cli.ok(&["dlq", "list", "orders.dlq"], ""));
    assert_eq!(ids(&dead), (1..=300).collect());
    assert!(
        dead.iter().all(|d| d["reason"] == "receiver-failed"),
        "{}",
        dead[0]
    );
    assert!(dead.iter().all(|d| d["original_topic"] == "orders"));
    assert!(
        dead[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("payment provider")),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["attempts"], "2");

    let dry = cli.ok(
        &[
            "dlq",
            "redrive",
            "orders.dlq",
            "--filter",
            "reason=receiver-failed",
            "--dry-run",
        ],
        "",
    );
    assert_eq!(dry.trim(), "would redrive 300 dead letter(s) to orders");
    let none = cli.ok(
        &[
            "dlq",
            "redrive",
            "orders.dlq",
            "--filter",
            "reason=undecodable",
            "--idle",
            "1s",
        ],
        "",
    );
    assert_eq!(none.trim(), "", "the filter matches nothing");
    let moved = cli.ok(
        &[
            "dlq",
            "redrive",
            "orders.dlq",
            "--filter",
            "reason=receiver-failed",
        ],
        "",
    );
    assert_eq!(moved.trim(), "redrove 300 dead letter(s) to orders");
    let again = cli.ok(&["dlq", "redrive", "orders.dlq", "--idle", "1s"], "");
    assert_eq!(again.trim(), "", "a second redrive moves nothing");

    let log = tempfile::NamedTempFile::new().expect("temp file");
    let fixed = cli
        .clone()
        .with_env("BILLING_LOG", log.path().to_str().expect("path"));
    let consumer = fixed.spawn(&["run", "--name", "billing"]);
    let billed = || -> BTreeSet<i64> {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let all = support::wait_for(Duration::from_secs(60), || billed().len() == 300);
    let stopped = terminate(consumer);
    assert!(
        all,
        "{} of 300 billed; the consumer said: {stopped:?}",
        billed().len()
    );
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(billed(), (1..=300).collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_republishes_exactly_the_window() {
    let (_server, url) = redis().await;
    let cli = Cli::new(orders_service_bin(), url);
    cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(1, 100),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = chrono::Utc::now();
    cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(101, 50),
    );
    let to = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(151, 100),
    );

    let from = from.to_rfc3339();
    let to = to.to_rfc3339();
    let summary = cli.ok(
        &[
            "replay",
            "orders",
            "--from",
            &from,
            "--to",
            &to,
            "--into",
            "orders-again",
            "--idle",
            "2s",
        ],
        "",
    );
    assert!(summary.starts_with("replayed 50 event(s)"), "{summary}");
    let replayed = json_lines(&cli.ok(
        &["tail", "orders-again", "--from", "earliest", "--idle", "2s"],
        "",
    ));
    assert_eq!(ids(&replayed), (101..=150).collect());
    let original = json_lines(&cli.ok(
        &[
            "tail", "orders", "--from", "earliest", "--idle", "2s", "--filter", "key=101",
        ],
        "",
    ));
    // Keys and headers travel unchanged: the same event id and key.
    assert_eq!(replayed[0]["metadata"]["id"], original[0]["metadata"]["id"]);
    assert_eq!(replayed[0]["key"], "101");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_stopped_by_errors_exits_with_3() {
    let (_server, url) = redis().await;
    let cli = Cli::new(orders_service_bin(), url).with_env("BILLING_BROKEN", "1");
    cli.ok(
        &["produce", "invoices", "--type", ORDER_TYPE, "-q"],
        &orders(1, 20),
    );
    // The file moves the consumer to another topic and sets its error limit.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("consumers.toml");
    std::fs::write(
        &config,
        "[consumers.billing]\ntopics = [\"invoices\"]\nconsecutive_errors_limit = 3\n",
    )
    .expect("write config");
    let config = config.to_str().expect("path");
    let out = cli.run(&["run", "--name", "billing", "--config", config], "");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the consumer stopped"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_and_where() {
    let (_server, url) = redis().await;
    let cli = Cli::new(orders_service_bin(), url);
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = cli.run(
        &[
            "produce",
            "orders",
            "--type",
            "org.example.nope.v1",
            "--data",
            "{}",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown event type `org.example.nope.v1`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(ORDER_TYPE),
        "lists the known types: {}",
        stderr(&out)
    );

    let input = format!("{}{{\"order_id\": 2,, }}\n", orders(1, 1));
    let out = cli.run(&["produce", "orders", "--type", ORDER_TYPE], &input);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("input line 2, column 16"),
        "{}",
        stderr(&out)
    );

    let out = cli.run(
        &[
            "produce",
            "orders",
            "--type",
            ORDER_TYPE,
            "--data",
            "{\"order_id\": \"x\"}",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not fit the event's fields"),
        "{}",
        stderr(&out)
    );

    let out = cli.run(&["tail", "orders", "--frm", "earliest"], "");
    assert_eq!(out.status.code(), Some(2), "a wrong flag is a usage error");

    let out = cli.run(&["run", "--name", "shipping"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("it registers: billing"),
        "{}",
        stderr(&out)
    );

    let refusing = RefusingPort::new().expect("port");
    let down = Cli::new(
        orders_service_bin(),
        format!("redis://127.0.0.1:{}", refusing.port()),
    );
    let out = down.run(
        &[
            "produce",
            "orders",
            "--type",
            ORDER_TYPE,
            "--data",
            &orders(1, 1),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{}", refusing.port())),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standalone_binary_reads_schema_files_raw_bytes_and_simulates() {
    let (_server, url) = redis().await;
    let cli = Cli::new(support::eventbus_bin(), url);
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = dir.path().join("order.avsc");
    std::fs::write(
        &schema,
        r#"{"type":"record","name":"CloudEvent","namespace":"org.example.order.placed.v1","fields":[
            {"name":"order_id","type":"long"},{"name":"customer","type":"string"},
            {"name":"total_cents","type":"long"},{"name":"coupon","type":["null","string"],"default":null}]}"#,
    )
    .expect("write schema");
    let schema = schema.to_str().expect("path");
    let with_schema = [
        "--type",
        ORDER_TYPE,
        "--schema",
        schema,
        "--key-field",
        "order_id",
    ];

    let mut args = vec!["produce", "orders"];
    args.extend(with_schema);
    cli.ok(&args, &orders(1, 5));
    let mut args = vec!["tail", "orders", "--from", "earliest", "--max", "5"];
    args.extend(&with_schema[..4]);
    let tailed = json_lines(&cli.ok(&args, ""));
    assert_eq!(ids(&tailed), (1..=5).collect());
    assert_eq!(tailed[0]["key"], "1");

    // The service's own binary reads what the schema file wrote: the same bytes.
    let service = Cli::new(orders_service_bin(), cli.url.clone());
    let decoded =
        json_lines(&service.ok(&["tail", "orders", "--from", "earliest", "--max", "5"], ""));
    assert_eq!(ids(&decoded), (1..=5).collect());

    cli.ok(
        &["produce", "notes", "--raw", "--key", "k", "-H", "lang=en"],
        "hello\nworld\n",
    );
    let notes = json_lines(&cli.ok(&["tail", "notes", "--from", "earliest", "--max", "2"], ""));
    assert_eq!(notes[0]["data"], "hello");
    assert_eq!(notes[1]["data"], "world");
    assert_eq!(notes[0]["headers"]["lang"], "en");
    assert_eq!(notes[0]["key"], "k");

    let mut args = vec![
        "simulate",
        "orders",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--keys",
        "10",
    ];
    args.extend(with_schema);
    let report = cli.ok(&args, "");
    assert!(report.starts_with("sent 400 event(s)"), "{report}");
    assert!(report.contains("p99"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_journal_records_run_and_retriggers_from_the_command_line() {
    let (_server, url) = redis().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = format!("sqlite://{}", dir.path().join("journal.db").display());
    let cli = Cli::new(orders_service_bin(), url).with_env("EVENT_BUS_JOURNAL_URL", &journal);
    cli.ok(
        &["produce", "orders", "--type", ORDER_TYPE, "-q"],
        &orders(1, 3),
    );

    let broken = cli.clone().with_env("BILLING_BROKEN", "1");
    let consumer = broken.spawn(&["run", "--name", "billing"]);
    let dead = || json_lines(&cli.ok(&["journal", "list", "--status", "dead-lettered"], ""));
    eventually(Duration::from_secs(30), "3 dead-lettered rows", || {
        dead().len() == 3
    });
    assert!(terminate(consumer).status.success());
    let rows = dead();
    assert_eq!(rows[0]["group"], "billing");
    assert!(rows[0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("payment provider")));
    let id = rows[0]["metadata"]["id"]
        .as_str()
        .expect("event id")
        .to_owned();
    let history = json_lines(&cli.ok(&["journal", "show", &id], ""));
    assert!(
        history.iter().any(|r| r["status"] == "dead-lettered"),
        "{history:?}"
    );

    let out = cli.run(&["journal", "retrigger", &id], "");
    assert_eq!(out.status.code(), Some(2), "new or same id must be chosen");
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let fixed = cli
        .clone()
        .with_env("BILLING_LOG", log.path().to_str().expect("path"));
    let consumer = fixed.spawn(&["run", "--name", "billing"]);
    let said = cli.ok(&["journal", "retrigger", &id, "--new-id"], "");
    assert!(said.starts_with(&format!("retriggered {id} at ")), "{said}");
    eventually(
        Duration::from_secs(30),
        "the retriggered order billed",
        || {
            !std::fs::read_to_string(log.path())
                .unwrap_or_default()
                .is_empty()
        },
    );
    assert!(terminate(consumer).status.success());

    // The dashboard over the same journal answers.
    let dashboard = cli.spawn(&["dashboard", "--listen", "127.0.0.1:0"]);
    let address = dashboard.wait_for_stdout("dashboard on http://", Duration::from_secs(20));
    let page = support::http_get(address.trim_end_matches('/'), "/failures");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("dead-lettered") && page.contains(&id),
        "{page}"
    );
    terminate(dashboard);
}
