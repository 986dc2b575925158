//! The journal against SQLite and a real PostgreSQL (started by the testkit fixture): every
//! status an event passes through, retrigger, retention, and a database outage.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventbus::{Bus, BusConfig, ConsumerHandle, Envelope, Event};
use eventbus_journal::{EventId, Filter, Journal, JournalSettings, Side, Status};
use eventbus_testkit::postgres::PostgresProcess;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(type = "org.example.invoice.issued.v1", key = "invoice_id")]
struct InvoiceIssued {
    invoice_id: i64,
    amount_cents: i64,
}

async fn bus(name: &str) -> Bus {
    eventbus::connect(
        BusConfig::new()
            .url(format!("memory://{name}"))
            .consumer(|s| {
                s.retry.max_attempts = 3;
                s.retry.base = Duration::from_millis(5);
                s.retry.cap = Duration::from_millis(10);
                s.consecutive_error_limit = 0;
            }),
    )
    .await
    .expect("memory bus")
}

/// Polls for up to 30 s: a database on a loaded machine can take seconds to catch up.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1_200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A journalled consumer of `invoices` in group `ledger` that counts what it handles.
async fn counting_consumer(journal: &Journal, bus: &Bus) -> (ConsumerHandle, Arc<AtomicU32>) {
    let handled = Arc::new(AtomicU32::new(0));
    let seen = handled.clone();
    let consumer = journal
        .attach(bus.consumer("invoices", "ledger"))
        .handle(move |_: Envelope<InvoiceIssued>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("consumer");
    (consumer, handled)
}

/// Produce → handle, and produce → retry → dead-letter, as rows.
async fn records_every_status(url: &str, name: &str) {
    let journal = Journal::connect(url, JournalSettings::default())
        .await
        .expect("journal");
    let bus = bus(name).await.producer_layer(journal.publish_layer());
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let consumer = journal
        .attach(bus.consumer("invoices", "ledger"))
        .handle(move |e: Envelope<InvoiceIssued>| {
            let counted = counted.clone();
            async move {
                let call = counted.fetch_add(1, Ordering::Relaxed);
                if e.amount_cents < 0 {
                    return Err(std::io::Error::other("negative amount"));
                }
                // Invoice 3 fails its first attempt only.
                if e.invoice_id == 3 && e.delivery().is_some_and(|d| d.attempt() == 1) && call < 100
                {
                    return Err(std::io::Error::other("ledger busy"));
                }
                Ok(())
            }
        })
        .start()
        .await
        .expect("consumer");
    let producer = bus.producer();
    producer
        .send(
            "invoices",
            &InvoiceIssued {
                invoice_id: 1,
                amount_cents: 500,
            },
        )
        .await
        .expect("send");
    producer
        .send(
            "invoices",
            &InvoiceIssued {
                invoice_id: 2,
                amount_cents: -1,
            },
        )
        .await
        .expect("send");

    producer
        .send(
            "invoices",
            &InvoiceIssued {
                invoice_id: 3,
                amount_cents: 700,
            },
        )
        .await
        .expect("send");

    let dead = Filter::new().status(Status::DeadLettered);
    until("the retried invoice handled", async || {
        journal.flush().await;
        journal
            .events(&Filter::new().key("3").status(Status::Handled))
            .await
            .expect("query")
            .iter()
            .any(|r| r.side == Side::Consume)
    })
    .await;
    let retried = journal
        .events(&Filter::new().key("3"))
        .await
        .expect("query");
    let consumed = retried
        .iter()
        .find(|r| r.side == Side::Consume)
        .expect("consume row");
    assert_eq!(
        consumed.attempts, 2,
        "handled on the second attempt: {consumed:?}"
    );
    assert_eq!(
        consumed
            .last_error
            .as_deref()
            .map(|e| e.contains("ledger busy")),
        Some(true),
        "the failed attempt's error stays"
    );
    until("the dead letter's row", async || {
        journal.flush().await;
        !journal.events(&dead).await.expect("query").is_empty()
    })
    .await;
    until("the handled row", async || {
        journal.flush().await;
        let handled = Filter::new().status(Status::Handled);
        !journal.events(&handled).await.expect("query").is_empty()
    })
    .await;

    let rows = journal.events(&dead).await.expect("query");
    assert_eq!(rows.len(), 1);
    let failed = &rows[0];
    assert_eq!(failed.side, Side::Consume);
    assert_eq!(failed.group, "ledger");
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.key.as_deref(), Some("2"));
    assert_eq!(
        failed.event_type.as_deref(),
        Some("org.example.invoice.issued.v1")
    );
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("negative amount")),
        "{failed:?}"
    );

    // Its history: published by the producer, dead-lettered by the group, and the copy the
    // dead-letter layer published.
    let history = journal.history(&failed.event_id).await.expect("history");
    let steps: Vec<(Side, &str, Status)> = history
        .iter()
        .map(|r| (r.side, r.topic.as_str(), r.status))
        .collect();
    assert!(
        steps.contains(&(Side::Produce, "invoices", Status::Published)),
        "{steps:?}"
    );
    assert!(
        steps.contains(&(Side::Consume, "invoices", Status::DeadLettered)),
        "{steps:?}"
    );
    assert!(
        steps.contains(&(Side::Produce, "invoices.dlq", Status::Published)),
        "{steps:?}"
    );
    let published = history
        .iter()
        .find(|r| r.side == Side::Produce && r.topic == "invoices")
        .expect("published row");
    assert!(published.payload.is_some() && published.payload_size > 0);
    assert!(published.position.is_some());

    // Retrigger it with a new id once the receiver is fixed: handled.
    let before = calls.load(Ordering::Relaxed);
    journal
        .retrigger(&bus, &failed.event_id, EventId::New)
        .await
        .expect("retrigger");
    until("the retriggered event handled", async || {
        calls.load(Ordering::Relaxed) > before
    })
    .await;
    let same = journal
        .retrigger(&bus, &failed.event_id, EventId::Same)
        .await;
    assert!(same.is_ok(), "{same:?}");
    let missing = journal
        .retrigger(&bus, "no-such-event", EventId::Same)
        .await;
    assert!(missing.is_err());

    consumer.shutdown().await.expect("shutdown");
    assert_eq!(journal.losses(), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_records_every_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("journal.db").display());
    records_every_status(&url, "journal-sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_records_every_status() {
    let server = PostgresProcess::start()
        .await
        .expect("start PostgreSQL (apt-get install postgresql)");
    records_every_status(&server.url(), "journal-postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("journal.db").display());
    let settings = JournalSettings::default()
        .max_rows(Some(10))
        .max_age(None)
        .retention_interval(Duration::from_secs(3600));
    let journal = Journal::connect(&url, settings).await.expect("journal");
    let bus = bus("journal-retention")
        .await
        .producer_layer(journal.publish_layer());
    for i in 0..30 {
        bus.producer()
            .send(
                "invoices",
                &InvoiceIssued {
                    invoice_id: i,
                    amount_cents: 1,
                },
            )
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    journal.flush().await;
    assert_eq!(journal.losses(), (0, 0));
    let all = journal.events(&Filter::new()).await.expect("query");
    assert_eq!(all.len(), 30, "{all:?}");
    let deleted = journal.purge().await.expect("purge");
    assert_eq!(deleted, 20);
    let left = journal.events(&Filter::default()).await.expect("query");
    assert_eq!(left.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_outage_loses_no_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.db");
    let url = format!("sqlite://{}", path.display());
    let settings = JournalSettings::default()
        .queue(16)
        .linger(Duration::from_millis(1));
    let journal = Journal::connect(&url, settings).await.expect("journal");
    // The table goes away under the journal: every write fails from now on.
    sqlx::query("DROP TABLE eventbus_journal")
        .execute(journal.store().pool())
        .await
        .expect("drop");
    let bus = bus("journal-outage")
        .await
        .producer_layer(journal.publish_layer());
    let (consumer, handled) = counting_consumer(&journal, &bus).await;
    for i in 0..200 {
        bus.producer()
            .send(
                "invoices",
                &InvoiceIssued {
                    invoice_id: i,
                    amount_cents: 1,
                },
            )
            .await
            .expect("send despite the journal");
    }
    until("every event handled", async || {
        handled.load(Ordering::Relaxed) == 200
    })
    .await;
    consumer.shutdown().await.expect("shutdown");
    journal.flush().await;
    let (dropped, failed) = journal.losses();
    assert_eq!(
        dropped + failed,
        400,
        "one produce and one consume row per event, each counted as lost"
    );
}

/// More rows than one multi-row statement holds (the writer binds 32 rows per statement and
/// the rest one by one): every row reads back with its own values, none shifted into another.
async fn many_rows_read_back_row_for_row(url: &str, name: &str) {
    let journal = Journal::connect(url, JournalSettings::default())
        .await
        .expect("journal");
    let bus = bus(name).await.producer_layer(journal.publish_layer());
    let (consumer, handled) = counting_consumer(&journal, &bus).await;
    let invoices: Vec<InvoiceIssued> = (0..100)
        .map(|i| InvoiceIssued {
            invoice_id: 1_000 + i,
            amount_cents: 7 * i,
        })
        .collect();
    bus.producer()
        .send_batch("invoices", &invoices)
        .await
        .expect("send_batch");
    until("every event handled", async || {
        handled.load(Ordering::Relaxed) == 100
    })
    .await;
    consumer.shutdown().await.expect("shutdown");
    journal.flush().await;
    assert_eq!(journal.losses(), (0, 0));

    let rows = journal
        .events(&Filter::new().limit(1_000))
        .await
        .expect("query");
    assert_eq!(rows.len(), 200, "a produce and a consume row per event");
    for row in &rows {
        assert_eq!(row.headers.get("ce_id"), Some(row.event_id.as_str()));
        let key: i64 = row
            .key
            .as_deref()
            .and_then(|k| k.parse().ok())
            .expect("a numeric key");
        assert!((1_000..1_100).contains(&key), "{row:?}");
        let status = match row.side {
            Side::Produce => Status::Published,
            Side::Consume => Status::Handled,
        };
        assert_eq!(row.status, status);
        let twin = rows
            .iter()
            .find(|other| other.event_id == row.event_id && other.side != row.side)
            .expect("the other side's row");
        assert_eq!(twin.key, row.key);
        assert_eq!(twin.payload, row.payload);
        assert_eq!(twin.payload_size, row.payload_size);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_many_rows_read_back_row_for_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("journal.db").display());
    many_rows_read_back_row_for_row(&url, "journal-sqlite-many").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_many_rows_read_back_row_for_row() {
    let server = PostgresProcess::start()
        .await
        .expect("start PostgreSQL (apt-get install postgresql)");
    many_rows_read_back_row_for_row(&server.url(), "journal-postgres-many").await;
}
