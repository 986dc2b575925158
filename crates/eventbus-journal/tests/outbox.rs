//! The outbox against SQLite and a real PostgreSQL: a rolled-back write publishes nothing, a
//! committed one is published once with two relays running, in order per key, and a relay
//! killed mid-batch loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::{Bus, BusConfig, Envelope, Event};
use eventbus_journal::{Idempotency, Outbox, RelaySettings, Store};
use eventbus_testkit::postgres::PostgresProcess;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.stock.reserved.v1", key = "sku")]
struct StockReserved {
    sku: String,
    seq: u32,
}

/// What the consumer saw: every event id, and each key's sequence numbers in arrival order.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    per_key: BTreeMap<String, Vec<u32>>,
}

async fn consumer(
    bus: &Bus,
    group: &str,
    store: Option<&Store>,
) -> (Arc<Mutex<Seen>>, eventbus::ConsumerHandle) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let mut consumer = bus.consumer("stock", group);
    if let Some(store) = store {
        consumer = consumer.layer(Idempotency::new(store));
    }
    let handle = consumer
        .handle(move |e: Envelope<StockReserved>| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().expect("lock");
                seen.ids.push(e.metadata().id.to_string());
                seen.per_key.entry(e.sku.clone()).or_default().push(e.seq);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    (seen, handle)
}

async fn wait_for(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

async fn bus(name: &str) -> Bus {
    eventbus::connect(BusConfig::new().url(format!("memory://{name}")))
        .await
        .expect("memory bus")
}

/// The scenario on any database: `begin` opens the caller's own transaction.
async fn committed_once_rolled_back_never(store: Store, name: &str) {
    let bus = bus(name).await;
    let outbox = Outbox::new(&store, &bus);
    let (seen, handle) = consumer(&bus, "warehouse", None).await;

    let mut tx = store.pool().begin().await.expect("begin");
    outbox
        .send_in(
            &mut tx,
            "stock",
            &StockReserved {
                sku: "rolled-back".into(),
                seq: 0,
            },
        )
        .await
        .expect("write");
    tx.rollback().await.expect("rollback");

    for seq in 0..100u32 {
        let mut tx = store.pool().begin().await.expect("begin");
        let event = StockReserved {
            sku: format!("sku-{}", seq % 7),
            seq,
        };
        outbox
            .send_in(&mut tx, "stock", &event)
            .await
            .expect("write");
        tx.commit().await.expect("commit");
    }
    assert_eq!(outbox.pending().await.expect("pending"), 100);

    // Two relays at once, as two processes would run.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for n in 0..2 {
        let relay =
            outbox.relay(RelaySettings::new(format!("relay-{n}")).idle(Duration::from_millis(10)));
        let mut stop = stop.clone();
        relays.push(tokio::spawn(async move {
            relay
                .run_until(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    wait_for("100 events", Duration::from_secs(20), || {
        seen.lock().expect("lock").ids.len() >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send_replace(true);
    for relay in relays {
        relay.await.expect("relay task");
    }
    handle.shutdown().await.expect("shutdown");
    assert_eq!(outbox.pending().await.expect("pending"), 0);

    let seen = seen.lock().expect("lock");
    assert_eq!(seen.ids.len(), 100, "each committed event exactly once");
    assert_eq!(seen.ids.iter().collect::<BTreeSet<_>>().len(), 100);
    assert!(
        !seen.per_key.contains_key("rolled-back"),
        "a rolled-back write is never published"
    );
    for (key, seqs) in &seen.per_key {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "order of {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_outbox_publishes_committed_events_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("outbox.db").display()
    ))
    .await
    .expect("store");
    committed_once_rolled_back_never(store, "outbox-sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outbox_publishes_committed_events_once() {
    let server = PostgresProcess::start()
        .await
        .expect("start PostgreSQL (apt-get install postgresql)");
    let store = Store::connect(&server.url()).await.expect("store");
    committed_once_rolled_back_never(store, "outbox-postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typed_postgres_transaction_writes_with_the_business_row() {
    let server = PostgresProcess::start().await.expect("start PostgreSQL");
    let store = Store::connect(&server.url()).await.expect("store");
    let pool = sqlx::PgPool::connect(&server.url())
        .await
        .expect("typed pool");
    sqlx::query("CREATE TABLE reservations (sku TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("table");
    let bus = bus("outbox-typed").await;
    let outbox = Outbox::new(&store, &bus);

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO reservations (sku) VALUES ('a')")
        .execute(&mut *tx)
        .await
        .expect("business row");
    outbox
        .send_in(
            &mut tx,
            "stock",
            &StockReserved {
                sku: "a".into(),
                seq: 1,
            },
        )
        .await
        .expect("outbox row");
    tx.commit().await.expect("commit");

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO reservations (sku) VALUES ('b')")
        .execute(&mut *tx)
        .await
        .expect("business row");
    outbox
        .send_in(
            &mut tx,
            "stock",
            &StockReserved {
                sku: "b".into(),
                seq: 2,
            },
        )
        .await
        .expect("outbox row");
    tx.rollback().await.expect("rollback");

    assert_eq!(
        outbox.pending().await.expect("pending"),
        1,
        "only the committed one"
    );
    let (seen, handle) = consumer(&bus, "warehouse", None).await;
    let relay = outbox.relay(RelaySettings::new("typed"));
    assert_eq!(relay.relay_once().await.expect("relay"), 1);
    wait_for("the event", Duration::from_secs(10), || {
        !seen.lock().expect("lock").ids.is_empty()
    })
    .await;
    handle.shutdown().await.expect("shutdown");
    assert_eq!(
        seen.lock()
            .expect("lock")
            .per_key
            .keys()
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_killed_mid_batch_loses_nothing() {
    let server = PostgresProcess::start().await.expect("start PostgreSQL");
    let store = Store::connect(&server.url()).await.expect("store");
    // The first publish never ends, so the first relay dies holding a claim with rows not yet
    // sent, however slow or fast the machine.
    let stall = StallFirst::default();
    let stalled = stall.started.clone();
    let bus = bus("outbox-killed").await.producer_layer(stall);
    let outbox = Outbox::new(&store, &bus);
    for seq in 0..50u32 {
        let mut tx = store.pool().begin().await.expect("begin");
        outbox
            .send_in(
                &mut tx,
                "stock",
                &StockReserved {
                    sku: format!("sku-{seq}"),
                    seq,
                },
            )
            .await
            .expect("write");
        tx.commit().await.expect("commit");
    }
    let (seen, handle) = consumer(&bus, "warehouse", Some(&store)).await;

    let doomed = outbox.relay(RelaySettings::new("doomed").lease(Duration::from_millis(500)));
    let task = tokio::spawn(async move { doomed.run_until(std::future::pending()).await });
    tokio::time::timeout(Duration::from_secs(30), stalled.notified())
        .await
        .expect("the first relay publishes its batch");
    task.abort();
    let _ = task.await;
    assert!(
        outbox.pending().await.expect("pending") > 0,
        "the killed relay left rows behind"
    );

    let survivor = outbox.relay(RelaySettings::new("survivor").idle(Duration::from_millis(20)));
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move {
        survivor
            .run_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    wait_for("every row sent", Duration::from_secs(30), || {
        let seen = seen.lock().expect("lock");
        seen.per_key.len() == 50
    })
    .await;
    stop_tx.send_replace(true);
    running.await.expect("relay");
    handle.shutdown().await.expect("shutdown");
    assert_eq!(outbox.pending().await.expect("pending"), 0);
    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.ids.iter().collect::<BTreeSet<_>>().len(),
        50,
        "every event at least once"
    );
    assert_eq!(
        seen.ids.len(),
        50,
        "and the idempotency layer dropped any repeat"
    );
}

/// Holds the first publish until the task making it is aborted; later ones pass at once.
#[derive(Default)]
struct StallFirst {
    started: Arc<tokio::sync::Notify>,
    stalled: AtomicBool,
}

#[eventbus::async_trait]
impl eventbus::PublishLayer for StallFirst {
    fn name(&self) -> &str {
        "stall-first"
    }
    async fn publish(
        &self,
        out: &mut eventbus::Outgoing,
        next: eventbus::PublishNext<'_>,
    ) -> eventbus::Result<Vec<eventbus::Position>> {
        if !self.stalled.swap(true, Ordering::SeqCst) {
            // `notify_one` keeps the permit if the test is not waiting yet.
            self.started.notify_one();
            std::future::pending::<()>().await;
        }
        next.run(out).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idempotency_layer_drops_a_repeat() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("ids.db").display()))
        .await
        .expect("store");
    let bus = bus("outbox-idempotency").await;
    let (seen, handle) = consumer(&bus, "warehouse", Some(&store)).await;
    let producer = bus.producer();
    let event = StockReserved {
        sku: "x".into(),
        seq: 1,
    };
    let metadata = producer.metadata::<StockReserved>();
    // Keyed, so the second copy comes after the first is handled, as a redelivery does.
    let key = producer
        .encode_key::<StockReserved>("stock", Some("x"), Some("sku"))
        .expect("key");
    let message = producer
        .encode("stock", &event, &metadata, key)
        .expect("encode");
    // The same event (same id) twice, as a relay that died after publishing would send it.
    producer
        .publish("stock", vec![message.clone(), message])
        .await
        .expect("publish");
    let other = StockReserved {
        sku: "y".into(),
        seq: 2,
    };
    producer.send("stock", &other).await.expect("send");
    wait_for("the other event", Duration::from_secs(10), || {
        seen.lock().expect("lock").per_key.contains_key("y")
    })
    .await;
    handle.shutdown().await.expect("shutdown");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.per_key["x"], [1], "handled once");
    assert_eq!(seen.ids.len(), 2);
}
