//! What the conformance suite cannot see from outside: claims from dead members with their
//! delivery counts, a stable consumer name taking back its own pending entries, a running
//! consumer riding out a server restart, trimming, credentials and TLS.

use std::time::Duration;

use eventbus::{ErrorKind, Subscription};
use eventbus_redis::RedisSettings;
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec, LaunchContext};

mod support;
use support::{message, raw};

const WAIT: Duration = Duration::from_secs(15);

fn fast(url: String) -> RedisSettings {
    let mut s = RedisSettings::new(url);
    s.block = Duration::from_millis(300);
    s.claim_idle = Duration::from_millis(500);
    s.claim_interval = Duration::from_millis(100);
    s
}

/// A fresh redis-server and a transport on it with the quick settings.
async fn started() -> (BrokerProcess, eventbus::Transport) {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let transport = eventbus_redis::connect(fast(format!("redis://{}", server.addr())))
        .await
        .unwrap();
    (server, transport)
}

async fn next(stream: &mut eventbus::DeliveryStream) -> eventbus::Delivery {
    eventbus_testkit::conformance::support::next_within(stream, WAIT)
        .await
        .unwrap_or_else(|why| panic!("no delivery: {why}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_member_are_taken_over_with_their_delivery_count() {
    let (server, transport) = started().await;
    transport
        .publisher
        .publish("orders", vec![message("orphan")])
        .await
        .unwrap();
    // A member that reads the entry and dies without acknowledging it.
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("orders")
        .arg("billing")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("billing")
        .arg("dead-member")
        .arg("STREAMS")
        .arg("orders")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("orders", "billing", "survivor"))
        .await
        .unwrap();
    let d = next(&mut stream).await;
    assert_eq!(&d.message.payload[..], b"orphan");
    assert_eq!(d.attempt, 2, "one delivery to the dead member, one now");
    d.ack().await.unwrap();
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg("orders")
        .arg("billing")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "nothing is left pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_consumer_name_takes_back_its_pending_entries_first() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let mut settings = fast(format!("redis://{}", server.addr()));
    // Nobody else may claim them: only the restart with the same name brings them back.
    settings.claim_idle = Duration::from_secs(3600);
    let transport = eventbus_redis::connect(settings).await.unwrap();
    let batch = ["a", "b", "c"].map(message).to_vec();
    transport.publisher.publish("jobs", batch).await.unwrap();
    let subscription = Subscription::new("jobs", "workers", "worker-1");
    {
        let mut stream = transport
            .subscriber
            .subscribe(subscription.clone())
            .await
            .unwrap();
        for _ in 0..3 {
            // Read and never settled, as by a process that crashes: forgotten, since dropping
            // a delivery hands it back at once.
            std::mem::forget(next(&mut stream).await);
        }
    }
    let mut stream = transport.subscriber.subscribe(subscription).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stream).await;
        assert_eq!(d.attempt, 2, "{d:?}");
        seen.push(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, ["a", "b", "c"], "oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_rides_out_a_server_restart() {
    let mut server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let transport = eventbus_redis::connect(fast(format!("redis://{}", server.addr())))
        .await
        .unwrap();
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("ticks", "g", "reader"))
        .await
        .unwrap();
    transport
        .publisher
        .publish("ticks", vec![message("before")])
        .await
        .unwrap();
    next(&mut stream).await.ack().await.unwrap();

    server.stop().await.unwrap();
    // Down for longer than a read blocks: the reader notices, reports it on the stream (where
    // the core's runner logs and counts it), backs off and retries.
    let reported = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut stream))
        .await
        .expect("the lost server is reported in time")
        .expect("the stream stays open");
    let error = reported.expect_err("a fetch error, not a delivery");
    assert!(error.is_temporary(), "{error}");
    let failed = transport
        .publisher
        .publish("ticks", vec![message("lost?")])
        .await;
    let error = failed.expect_err("publishing to a stopped server fails");
    assert!(error.is_temporary(), "{error}");
    server.restart().await.unwrap();

    let mut published = false;
    for _ in 0..50 {
        if transport
            .publisher
            .publish("ticks", vec![message("after")])
            .await
            .is_ok()
        {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "the publisher reconnected");
    let d = next(&mut stream).await;
    assert_eq!(&d.message.payload[..], b"after");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_to_about_the_configured_length() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let url = format!("redis://{}", server.addr());
    let mut conn = raw(&server).await;
    for (max_len, stream) in [(100, "trimmed"), (0, "kept")] {
        let mut settings = RedisSettings::new(url.clone());
        settings.stream_max_len = max_len;
        let transport = eventbus_redis::connect(settings).await.unwrap();
        for chunk in 0..10 {
            let batch = (0..100).map(|i| message(&format!("{chunk}-{i}"))).collect();
            transport.publisher.publish(stream, batch).await.unwrap();
        }
        let len: usize = redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        if max_len == 0 {
            assert_eq!(len, 1000, "0 keeps everything");
        } else {
            // `~` trims whole nodes only: at least N stay, far fewer than all.
            assert!((100..=300).contains(&len), "{stream} has {len} entries");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_used_and_bad_ones_reported() {
    let server = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("events")
        .arg("on")
        .arg(">s3cret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let good = format!("redis://events:s3cret@{}", server.addr());
    let transport = eventbus_redis::connect(RedisSettings::new(good))
        .await
        .unwrap();
    transport
        .publisher
        .publish("acl", vec![message("ok")])
        .await
        .unwrap();

    let bad = format!("redis://events:wrong@{}", server.addr());
    let error = eventbus_redis::connect(RedisSettings::new(bad))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connection);
    let text = error.to_string();
    assert!(text.contains("user and password"), "{text}");
    assert!(!text.contains("wrong"), "the password leaked into {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let refusing = eventbus_testkit::fixture::RefusingPort::new().unwrap();
    let port = refusing.port();
    let mut settings = RedisSettings::new(format!("redis://127.0.0.1:{port}"));
    settings.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let error = eventbus_redis::connect(settings).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connection);
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// redis-server serving TLS only, with a self-signed certificate made at launch.
fn tls_args(ctx: &LaunchContext) -> Vec<String> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a certificate");
    let (cert_file, key_file) = (ctx.data_dir.join("cert.pem"), ctx.data_dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write the certificate");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write the key");
    let file = |p: std::path::PathBuf| p.display().to_string();
    [
        "--port",
        "0",
        "--tls-port",
        &ctx.port.to_string(),
        "--tls-cert-file",
        &file(cert_file.clone()),
        "--tls-key-file",
        &file(key_file),
        "--tls-ca-cert-file",
        &file(cert_file),
        "--tls-auth-clients",
        "no",
        "--bind",
        "127.0.0.1",
        "--dir",
        &ctx.data_dir.display().to_string(),
        "--save",
        "",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_speak_tls() {
    let spec = BrokerSpec {
        name: "redis-tls",
        args: tls_args,
        ..BrokerSpec::redis()
    };
    let server = BrokerProcess::start(spec).await.unwrap();
    // The certificate is self-signed, so verification is off for this test server only.
    let url = format!("rediss://{}/#insecure", server.addr());
    let transport = eventbus_redis::connect(fast(url)).await.unwrap();
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("secure", "g", "c"))
        .await
        .unwrap();
    transport
        .publisher
        .publish("secure", vec![message("over tls")])
        .await
        .unwrap();
    let d = next(&mut stream).await;
    assert_eq!(&d.message.payload[..], b"over tls");
    d.ack().await.unwrap();

    // Plain text to a TLS port is refused, not hung on.
    let plain = format!("redis://{}", server.addr());
    let mut settings = RedisSettings::new(plain);
    settings.connect_timeout = Duration::from_secs(1);
    settings.response_timeout = Duration::from_secs(1);
    assert!(eventbus_redis::connect(settings).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_recreates_a_group_that_vanished() {
    let (server, transport) = started().await;
    let mut stream = transport
        .subscriber
        .subscribe(Subscription::new("audit", "g", "reader"))
        .await
        .unwrap();
    // As after a restart of a server that keeps nothing: stream and group are gone.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    // Let the reader run into NOGROUP and create the group again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    transport
        .publisher
        .publish("audit", vec![message("after the flush")])
        .await
        .unwrap();
    let d = next(&mut stream).await;
    assert_eq!(&d.message.payload[..], b"after the flush");
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_position_that_is_no_stream_id_is_refused_before_redis_sees_it() {
    let (_server, transport) = started().await;
    let subscription = Subscription::new("t", "g", "c")
        .starting_at(eventbus::StartPosition::At("last tuesday".into()));
    let error = match transport.subscriber.subscribe(subscription).await {
        Ok(_) => panic!("a malformed start position was accepted"),
        Err(e) => e,
    };
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("last tuesday"), "{error}");
}

/// Publishes a login event, lets a member read it and die, optionally bumps its delivery count,
/// then runs a bus consumer whose receiver always fails; returns the receiver's calls and the
/// dead letter's `dlq_attempts`.
async fn dead_member_then_failing_receiver(extra_deliveries: u32) -> (usize, String) {
    use eventbus::{BusConfig, Envelope};
    use eventbus_testkit::openedx::{sample_login, SessionLoginCompleted};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let (server, transport) = started().await;
    let config = BusConfig::new().consumer(|c| {
        c.retry.max_attempts = 2;
        c.retry.base = Duration::from_millis(10);
    });
    let bus = eventbus::Bus::with_transport(transport, eventbus::SerializerKind::Avro, config);
    let position = bus
        .producer()
        .send("logins", &sample_login())
        .await
        .unwrap();
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("logins")
        .arg("audit")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("dead-member")
        .arg("STREAMS")
        .arg("logins")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    if extra_deliveries > 0 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg("logins")
            .arg("audit")
            .arg("dead-member")
            .arg(0)
            .arg(position.to_string())
            .arg("RETRYCOUNT")
            .arg(1 + extra_deliveries)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let consumer = bus
        .consumer("logins", "audit")
        .handle(move |_: Envelope<SessionLoginCompleted>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(std::io::Error::other("always fails")) }
        })
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let attempts = loop {
        let letters: Vec<(String, std::collections::BTreeMap<String, String>)> =
            redis::cmd("XRANGE")
                .arg("logins.dlq")
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
        if let Some((_, fields)) = letters.first() {
            break fields["dlq_attempts"].clone();
        }
        assert!(started.elapsed() < WAIT, "no dead letter within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    consumer.shutdown().await.unwrap();
    (calls.load(Ordering::SeqCst), attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_a_dead_member_count_against_the_retry_policy() {
    // Delivered once to the dead member: one attempt is left of two.
    assert_eq!(
        dead_member_then_failing_receiver(0).await,
        (1, "2".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_too_often_is_dead_lettered_without_running() {
    // Already delivered three times (a member crashing on it each time): none is left.
    assert_eq!(
        dead_member_then_failing_receiver(2).await,
        (0, "4".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_left_holding_nothing_are_removed_from_the_group() {
    let (server, transport) = started().await;
    let members = || async {
        let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("jobs")
            .arg("g")
            .query_async(&mut raw(&server).await)
            .await
            .unwrap();
        let mut names: Vec<String> = reply.consumers.into_iter().map(|c| c.name).collect();
        names.sort();
        names
    };
    transport
        .publisher
        .publish("jobs", vec![message("one")])
        .await
        .unwrap();
    // A member under a one-off name reads, acknowledges and goes away, as after a restart.
    let mut gone = transport
        .subscriber
        .subscribe(Subscription::new("jobs", "g", "restarted-7f3a"))
        .await
        .unwrap();
    next(&mut gone).await.ack().await.unwrap();
    drop(gone);
    // Checked before a live reader exists: its first claim round may already remove it.
    assert!(members().await.contains(&"restarted-7f3a".to_owned()));
    let mut stays = transport
        .subscriber
        .subscribe(Subscription::new("jobs", "g", "stable"))
        .await
        .unwrap();
    // After the claim idle time (500 ms here) the next claim round removes it. (Redis 7.0 lists
    // a member only once it was handed an entry, so the live one is not listed yet.)
    let deadline = tokio::time::Instant::now() + WAIT;
    while members().await.contains(&"restarted-7f3a".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {:?}",
            members().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    transport
        .publisher
        .publish("jobs", vec![message("two")])
        .await
        .unwrap();
    let two = next(&mut stays).await;
    assert_eq!(&two.message.payload[..], b"two");
    assert_eq!(members().await, ["stable"], "the live member reads on");
    two.ack().await.unwrap();
}
