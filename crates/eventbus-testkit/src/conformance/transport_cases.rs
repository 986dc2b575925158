//! Cases on the transport contract: publish, subscribe, ack, nack, groups, positions, close.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventbus_core::{ErrorKind, Position, StartPosition};

use super::support::{
    bodies, body, check, next, quiet, require, take_acked, CaseError, Ctx, QUIET_PERIOD,
};
use super::{Case, CaseResultOf};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(publish_subscribe_roundtrip),
        case!(batch_keeps_order),
        case!(concurrent_publishers),
        case!(concurrent_subscribers),
        case!(many_topics),
        case!(topics_isolated),
        case!(redelivery_after_nack),
        case!(no_next_before_ack),
        case!(order_per_key),
        case!(continue_after_errors),
        case!(continue_after_subscriber_close),
        case!(close_flushes),
        case!(groups_each_get_all),
        case!(group_members_share_load),
        case!(new_group_reads_history),
        case!(existing_group_resumes),
        case!(start_latest),
        case!(start_earliest_rewinds),
        case!(start_from_time),
        case!(publish_after_close_fails),
        case!(subscriber_close_ends_streams),
        case!(broker_restart_loses_nothing),
    ]
}

async fn publish_subscribe_roundtrip(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let mut message = ctx.message(Some("key-1"), "hello");
    message
        .headers
        .insert("ce_type", "org.example.conformance.v1");
    message.headers.insert("unicode", "grüße ✓");
    message.payload = vec![0u8, 1, 2, 255, 254, b'h'].into();
    let positions = ctx.publish(&topic, vec![message.clone()]).await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let d = next(&mut stream, "the published message").await?;
    check(d.message.payload == message.payload, || {
        format!("payload changed: {:?}", d.message.payload)
    })?;
    check(d.message.key == message.key, || {
        format!("key changed: {:?}", d.message.key)
    })?;
    for (name, value) in message.headers.iter() {
        check(d.message.headers.get_bytes(name) == Some(value), || {
            format!(
                "header {name} changed: {:?}",
                d.message.headers.get_bytes(name)
            )
        })?;
    }
    check(*d.topic == *topic, || {
        format!("delivery names topic {} instead of {topic}", d.topic)
    })?;
    check(d.attempt == 1, || {
        format!("first delivery has attempt {}", d.attempt)
    })?;
    check(d.position == positions[0], || {
        format!(
            "delivery at {} but publish said {}",
            d.position, positions[0]
        )
    })?;
    d.ack().await?;
    quiet(&mut stream, "an acked message must not come back").await
}

async fn batch_keeps_order(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().order_per_key, "order_per_key")?;
    let topic = ctx.topic("t");
    let sent = bodies("m", 50);
    ctx.publish_bodies(&topic, Some("one-key"), sent.clone())
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let got = take_acked(&mut stream, 50, "the batch").await?;
    check(got == sent, || {
        format!("batch arrived out of order: {got:?}")
    })
}

async fn concurrent_publishers(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let mut tasks = Vec::new();
    for p in 0..8 {
        let publisher = ctx.connect().await?.publisher;
        let topic = topic.clone();
        let batch: Vec<_> = bodies(&format!("p{p}"), 40)
            .iter()
            .map(|b| ctx.message(None, b))
            .collect();
        tasks.push(tokio::spawn(async move {
            for m in batch {
                publisher.publish(&topic, vec![m]).await?;
            }
            Ok::<_, eventbus_core::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| CaseError::Fail(format!("publisher task failed: {e}")))??;
    }
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let got: BTreeSet<_> = take_acked(&mut stream, 320, "messages of 8 publishers")
        .await?
        .into_iter()
        .collect();
    check(got.len() == 320, || {
        format!("{} distinct messages of 320", got.len())
    })
}

async fn concurrent_subscribers(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, None, bodies("m", 60)).await?;
    let mut tasks = Vec::new();
    for g in 0..4 {
        let transport = ctx.connect().await?;
        let mut stream = ctx
            .subscribe_on(&transport, &[&topic], &ctx.group(&format!("g{g}")), None)
            .await?;
        tasks.push(tokio::spawn(async move {
            let got = take_acked(&mut stream, 60, "every message in each group").await?;
            drop(transport);
            Ok::<_, CaseError>(got.into_iter().collect::<BTreeSet<_>>().len())
        }));
    }
    for t in tasks {
        let distinct = t
            .await
            .map_err(|e| CaseError::Fail(format!("subscriber task failed: {e}")))??;
        check(distinct == 60, || {
            format!("a group saw {distinct} distinct messages of 60")
        })?;
    }
    Ok(())
}

async fn many_topics(ctx: &Ctx) -> CaseResultOf {
    let topics: Vec<String> = (0..20).map(|i| ctx.topic(&format!("t{i}"))).collect();
    for t in &topics {
        ctx.publish_bodies(t, None, bodies(t, 5)).await?;
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut stream = ctx.subscribe(&names, &ctx.group("g"), None).await?;
    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..100 {
        let d = next(
            &mut stream,
            &format!("message {} of 100 over 20 topics", i + 1),
        )
        .await?;
        check(body(&d).starts_with(&*d.topic), || {
            format!("message `{}` delivered as from {}", body(&d), d.topic)
        })?;
        *per_topic.entry(d.topic.to_string()).or_default() += 1;
        d.ack().await?;
    }
    check(
        per_topic.len() == 20 && per_topic.values().all(|n| *n == 5),
        || format!("per topic: {per_topic:?}"),
    )
}

async fn topics_isolated(ctx: &Ctx) -> CaseResultOf {
    let (a, b) = (ctx.topic("a"), ctx.topic("b"));
    let mut on_b = ctx.subscribe(&[&b], &ctx.group("g"), None).await?;
    ctx.publish_bodies(&a, None, bodies("for-a", 10)).await?;
    quiet(
        &mut on_b,
        "messages of topic a reached a subscriber of topic b",
    )
    .await?;
    ctx.publish_bodies(&b, None, ["for-b".to_owned()]).await?;
    let d = next(&mut on_b, "the message of topic b").await?;
    check(body(&d) == "for-b", || format!("got `{}`", body(&d)))
}

async fn redelivery_after_nack(ctx: &Ctx) -> CaseResultOf {
    let declared = ctx.guarantees().redelivery_after_nack;
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, Some("k"), ["again".to_owned()])
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let first = next(&mut stream, "the first delivery").await?;
    let delay = Duration::from_millis(400);
    let nacked_at = Instant::now();
    first.nack(delay).await?;
    if !declared {
        return Err(CaseError::Skip(
            "the backend does not declare `redelivery_after_nack`".into(),
        ));
    }
    let again = next(&mut stream, "the nacked message").await?;
    let waited = nacked_at.elapsed();
    check(body(&again) == "again", || {
        format!("redelivered `{}`", body(&again))
    })?;
    check(again.attempt >= 2, || {
        format!("redelivery reports attempt {}", again.attempt)
    })?;
    check(waited >= delay / 2, || {
        format!("redelivered after {waited:?}, before the {delay:?} delay")
    })?;
    again.ack().await?;
    quiet(&mut stream, "an acked redelivery must not come back").await
}

async fn no_next_before_ack(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().ack_gates_next, "ack_gates_next")?;
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, Some("k"), bodies("m", 2))
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let first = next(&mut stream, "the first message").await?;
    check(body(&first) == "m-0", || {
        format!("first was `{}`", body(&first))
    })?;
    quiet(
        &mut stream,
        "the next message of a key arrived before the ack",
    )
    .await?;
    first.ack().await?;
    let second = next(&mut stream, "the second message after the ack").await?;
    check(body(&second) == "m-1", || {
        format!("second was `{}`", body(&second))
    })?;
    second.ack().await.map_err(Into::into)
}

async fn order_per_key(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().order_per_key, "order_per_key")?;
    let topic = ctx.topic("t");
    let keys = ["a", "b", "c", "d", "e"];
    for i in 0..40 {
        let batch = keys
            .iter()
            .map(|k| ctx.message(Some(k), &format!("{k}-{i}")))
            .collect();
        ctx.publish(&topic, batch).await?;
    }
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let got = take_acked(&mut stream, 200, "keyed messages").await?;
    for k in keys {
        let seq: Vec<usize> = got
            .iter()
            .filter_map(|b| b.strip_prefix(&format!("{k}-")))
            .filter_map(|n| n.parse().ok())
            .collect();
        check(seq == (0..40).collect::<Vec<_>>(), || {
            format!("key {k} arrived as {seq:?}")
        })?;
    }
    Ok(())
}

async fn continue_after_errors(ctx: &Ctx) -> CaseResultOf {
    require(
        ctx.guarantees().redelivery_after_nack,
        "redelivery_after_nack",
    )?;
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, None, bodies("m", 30)).await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let mut acked = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    while acked.len() < 30 {
        let d = next(
            &mut stream,
            &format!(
                "message {} of 30 while nacking every third",
                acked.len() + 1
            ),
        )
        .await?;
        let b = body(&d);
        let n: usize = b.trim_start_matches("m-").parse().unwrap_or(0);
        if n % 3 == 0 && nacked.insert(b.clone()) {
            d.nack(Duration::from_millis(10)).await?;
        } else {
            acked.insert(b);
            d.ack().await?;
        }
    }
    check(nacked.len() == 10, || {
        format!("{} messages were nacked, expected 10", nacked.len())
    })?;
    quiet(&mut stream, "everything was acked").await
}

async fn continue_after_subscriber_close(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    ctx.publish_bodies(&topic, None, bodies("m", 30)).await?;
    let mut seen = BTreeSet::new();
    {
        let first = ctx.connect().await?;
        let mut stream = ctx.subscribe_on(&first, &[&topic], &group, None).await?;
        seen.extend(take_acked(&mut stream, 10, "the first ten").await?);
        // Held but never acked: the consumer dies with it.
        let _abandoned = next(&mut stream, "an eleventh message").await?;
        drop(stream);
        first.subscriber.close().await?;
    }
    let mut stream = ctx.subscribe(&[&topic], &group, None).await?;
    while seen.len() < 30 {
        let d = next(
            &mut stream,
            &format!(
                "the rest after a subscriber closed ({} of 30 seen)",
                seen.len()
            ),
        )
        .await?;
        seen.insert(body(&d));
        d.ack().await?;
    }
    Ok(())
}

async fn close_flushes(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let writer = ctx.connect().await?;
    let mut sends = Vec::new();
    for b in bodies("m", 100) {
        let publisher = writer.publisher.clone();
        let message = ctx.message(None, &b);
        let topic = topic.clone();
        sends.push(tokio::spawn(async move {
            publisher.publish(&topic, vec![message]).await
        }));
    }
    let mut ok = 0;
    for s in sends {
        if matches!(s.await, Ok(Ok(_))) {
            ok += 1;
        }
    }
    writer.publisher.close().await?;
    check(ok == 100, || {
        format!("only {ok} of 100 sends succeeded before close")
    })?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let got: BTreeSet<_> = take_acked(&mut stream, 100, "everything published before close")
        .await?
        .into_iter()
        .collect();
    check(got.len() == 100, || {
        format!("{} distinct of 100", got.len())
    })
}

async fn groups_each_get_all(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let mut one = ctx.subscribe(&[&topic], &ctx.group("one"), None).await?;
    let mut two = ctx.subscribe(&[&topic], &ctx.group("two"), None).await?;
    ctx.publish_bodies(&topic, None, bodies("m", 20)).await?;
    let a: BTreeSet<_> = take_acked(&mut one, 20, "group one")
        .await?
        .into_iter()
        .collect();
    let b: BTreeSet<_> = take_acked(&mut two, 20, "group two")
        .await?
        .into_iter()
        .collect();
    check(a.len() == 20 && a == b, || {
        format!("group one saw {}, group two {}", a.len(), b.len())
    })
}

async fn group_members_share_load(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().shared_groups, "shared_groups")?;
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    let other = ctx.connect().await?;
    let mut a = ctx
        .subscribe(&[&topic], &group, Some(StartPosition::Earliest))
        .await?;
    let mut b = ctx.subscribe_on(&other, &[&topic], &group, None).await?;
    // Let the group settle before publishing, as brokers rebalance when members join.
    tokio::time::sleep(QUIET_PERIOD).await;
    let batch = (0..60)
        .map(|i| ctx.message(Some(&format!("k{}", i % 12)), &format!("m-{i}")))
        .collect();
    ctx.publish(&topic, batch).await?;
    let mut by_a = BTreeSet::new();
    let mut by_b = BTreeSet::new();
    let deadline = Instant::now() + super::support::RECEIVE_TIMEOUT;
    while by_a.union(&by_b).count() < 60 && Instant::now() < deadline {
        tokio::select! {
            Some(Ok(d)) = futures::StreamExt::next(&mut a) => { by_a.insert(body(&d)); d.ack().await?; }
            Some(Ok(d)) = futures::StreamExt::next(&mut b) => { by_b.insert(body(&d)); d.ack().await?; }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let all = by_a.union(&by_b).count();
    check(all == 60, || format!("the group saw {all} of 60"))?;
    check(!by_a.is_empty() && !by_b.is_empty(), || {
        format!(
            "load not shared: member a got {}, member b got {}",
            by_a.len(),
            by_b.len()
        )
    })
}

async fn new_group_reads_history(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, None, bodies("old", 10)).await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("late"), None).await?;
    if !ctx.guarantees().history_for_new_groups {
        quiet(
            &mut stream,
            "the backend does not declare history, yet a new group read it",
        )
        .await?;
        return Err(CaseError::Skip(
            "the backend does not declare `history_for_new_groups`".into(),
        ));
    }
    let got: BTreeSet<_> = take_acked(&mut stream, 10, "history")
        .await?
        .into_iter()
        .collect();
    check(got.len() == 10, || {
        format!("{} of 10 old messages", got.len())
    })
}

async fn existing_group_resumes(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    ctx.publish_bodies(&topic, None, bodies("first", 5)).await?;
    {
        let mut stream = ctx
            .subscribe(&[&topic], &group, Some(StartPosition::Earliest))
            .await?;
        take_acked(&mut stream, 5, "the first five").await?;
    }
    ctx.publish_bodies(&topic, None, bodies("second", 5))
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &group, None).await?;
    let got = take_acked(&mut stream, 5, "what arrived while away").await?;
    check(got.iter().all(|b| b.starts_with("second")), || {
        format!("resumed with {got:?}")
    })?;
    quiet(&mut stream, "an existing group must resume, not re-read").await
}

async fn start_latest(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, None, bodies("old", 5)).await?;
    let mut stream = ctx
        .subscribe(&[&topic], &ctx.group("g"), Some(StartPosition::Latest))
        .await?;
    // At once: what is published after `subscribe` returns is after the start.
    ctx.publish_bodies(&topic, None, bodies("new", 5)).await?;
    let got = take_acked(&mut stream, 5, "messages after subscribing").await?;
    check(got.iter().all(|b| b.starts_with("new")), || {
        format!("latest start read {got:?}")
    })?;
    quiet(&mut stream, "nothing else was published").await
}

async fn start_earliest_rewinds(ctx: &Ctx) -> CaseResultOf {
    require(
        ctx.guarantees().history_for_new_groups,
        "history_for_new_groups",
    )?;
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    ctx.publish_bodies(&topic, None, bodies("m", 5)).await?;
    {
        let mut stream = ctx.subscribe(&[&topic], &group, None).await?;
        take_acked(&mut stream, 5, "a first pass").await?;
    }
    let mut stream = ctx
        .subscribe(&[&topic], &group, Some(StartPosition::Earliest))
        .await?;
    let got: BTreeSet<_> = take_acked(&mut stream, 5, "a second pass from the earliest")
        .await?
        .into_iter()
        .collect();
    check(got.len() == 5, || format!("rewound to {got:?}"))
}

async fn start_from_time(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().replay_from_time, "replay_from_time")?;
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, None, bodies("before", 5))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.publish_bodies(&topic, None, bodies("after", 5)).await?;
    let mut stream = ctx
        .subscribe(&[&topic], &ctx.group("g"), Some(StartPosition::Time(from)))
        .await?;
    let got = take_acked(&mut stream, 5, "messages after the start time").await?;
    check(got.iter().all(|b| b.starts_with("after")), || {
        format!("replay from time read {got:?}")
    })?;
    quiet(&mut stream, "older messages must not be replayed").await?;
    // Replay keeps going with new messages (Open edX's replay stops; ours must not).
    ctx.publish_bodies(&topic, None, ["later".to_owned()])
        .await?;
    let d = next(&mut stream, "a message published after the replay").await?;
    check(body(&d) == "later", || format!("got `{}`", body(&d)))
}

async fn publish_after_close_fails(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let transport = ctx.connect().await?;
    transport.publisher.close().await?;
    match transport
        .publisher
        .publish(&topic, vec![ctx.message(None, "late")])
        .await
    {
        Ok(p) => Err(CaseError::Fail(format!(
            "publishing after close succeeded at {}",
            p.first().map_or(String::new(), Position::to_string)
        ))),
        Err(e) if e.kind() == ErrorKind::Closed => Ok(()),
        Err(e) => Err(CaseError::Fail(format!(
            "publishing after close failed with the wrong kind: {e}"
        ))),
    }
}

async fn subscriber_close_ends_streams(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    let transport = ctx.connect().await?;
    let mut stream = ctx
        .subscribe_on(&transport, &[&topic], &ctx.group("g"), None)
        .await?;
    let limit = Duration::from_secs(5);
    let started = Instant::now();
    tokio::time::timeout(limit, transport.subscriber.close())
        .await
        .map_err(|_| CaseError::Fail(format!("close did not return within {limit:?}")))??;
    let ended = tokio::time::timeout(limit, async {
        while let Some(item) = futures::StreamExt::next(&mut stream).await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    check(ended.is_ok(), || {
        format!("the stream did not end within {limit:?} of close")
    })?;
    check(started.elapsed() < limit * 2, || {
        "close took too long".into()
    })
}

async fn broker_restart_loses_nothing(ctx: &Ctx) -> CaseResultOf {
    require(ctx.guarantees().survives_restart, "survives_restart")?;
    let topic = ctx.topic("t");
    let group = ctx.group("g");
    ctx.publish_bodies(&topic, None, bodies("before", 25))
        .await?;
    let acked: BTreeSet<String> = {
        let mut stream = ctx.subscribe(&[&topic], &group, None).await?;
        let acked = take_acked(&mut stream, 10, "messages before the restart").await?;
        acked.into_iter().collect()
    };
    ctx.restart_broker().await?;
    // Publishing may fail until the client reconnects; retry, as a producer's caller would.
    let after = ctx.connect().await?;
    for b in bodies("after", 25) {
        let deadline = Instant::now() + super::support::RECEIVE_TIMEOUT;
        loop {
            match after
                .publisher
                .publish(&topic, vec![ctx.message(None, &b)])
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "publish after restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut stream = ctx.subscribe_on(&after, &[&topic], &group, None).await?;
    // Every message not acknowledged before the restart comes back, and the new ones. An
    // acknowledged one may come again too, as at-least-once allows, if its ack had not reached
    // the broker when it went down (Pulsar's acks have no answer); anything else is a fault.
    let mut due: BTreeSet<String> = bodies("before", 25)
        .into_iter()
        .filter(|b| !acked.contains(b))
        .chain(bodies("after", 25))
        .collect();
    while !due.is_empty() {
        let what = format!("the unacked and the new messages ({} to come)", due.len());
        for got in take_acked(&mut stream, 1, &what).await? {
            check(due.remove(&got) || acked.contains(&got), || {
                format!("`{got}` was not due: it was delivered and acknowledged after the restart already")
            })?;
        }
    }
    Ok(())
}
