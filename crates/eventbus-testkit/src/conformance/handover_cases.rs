//! Cases on what must come through untouched or come back: binary keys and header values through
//! publish, consume and the dead-letter topic, and a delivery dropped without ack or nack.

use eventbus_core::consumer::dead_letter::header as dlq;
use eventbus_core::{Envelope, Message};

use super::consumer_cases::{dead_letters, ConformanceItem};
use super::support::{body, check, next, quiet, CaseError, Ctx};
use super::{Case, CaseResultOf};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(binary_key_and_headers_roundtrip),
        case!(binary_key_and_headers_reach_dead_letters),
        case!(dropped_delivery_comes_back),
    ]
}

/// Not UTF-8: a NUL, a lone continuation byte, 0xff.
const BINARY_KEY: &[u8] = &[0x00, 0x9f, 0x92, 0x96, 0xff, b'k'];
const BINARY_VALUE: &[u8] = &[0xff, 0x00, 0xfe, 0x80, b'v'];

fn binary(mut message: Message) -> Message {
    message.key = Some(BINARY_KEY.into());
    message.headers.insert("binary", BINARY_VALUE);
    message
}

fn check_binary(m: &Message, where_: &str) -> Result<(), CaseError> {
    check(m.key.as_deref() == Some(BINARY_KEY), || {
        format!("{where_}: the binary key changed to {:?}", m.key)
    })?;
    check(m.headers.get_bytes("binary") == Some(BINARY_VALUE), || {
        format!(
            "{where_}: the binary header changed to {:?}",
            m.headers.get_bytes("binary")
        )
    })
}

async fn binary_key_and_headers_roundtrip(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    ctx.publish(&topic, vec![binary(ctx.message(None, "bin"))])
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let d = next(&mut stream, "the binary message").await?;
    check_binary(&d.message, "consumed")?;
    check(d.message.headers.get("seq") == Some("bin"), || {
        "a text header next to the binary one changed".into()
    })?;
    d.ack().await?;
    quiet(&mut stream, "an acked message must not come back").await
}

async fn binary_key_and_headers_reach_dead_letters(ctx: &Ctx) -> CaseResultOf {
    let bus = ctx.bus().await?;
    let topic = ctx.topic("t");
    let handle = bus
        .consumer(&topic, &ctx.group("g"))
        .handle(|_: Envelope<ConformanceItem>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await?;
    let mut unknown = ctx.message(None, "nobody handles this");
    unknown
        .headers
        .insert("ce_id", uuid::Uuid::new_v4().to_string());
    unknown
        .headers
        .insert("ce_type", "org.eventbus.conformance.nobody.v1");
    ctx.publish(&topic, vec![binary(unknown)]).await?;
    let letters = dead_letters(ctx, &bus, &topic, 1).await?;
    check(
        letters[0].headers.get(dlq::REASON) == Some("unknown-event-type"),
        || {
            format!(
                "dead-letter reason {:?}",
                letters[0].headers.get(dlq::REASON)
            )
        },
    )?;
    check_binary(&letters[0], "dead-lettered")?;
    handle.shutdown().await.map_err(Into::into)
}

async fn dropped_delivery_comes_back(ctx: &Ctx) -> CaseResultOf {
    let topic = ctx.topic("t");
    ctx.publish_bodies(&topic, Some("k"), ["dropped".to_owned()])
        .await?;
    let mut stream = ctx.subscribe(&[&topic], &ctx.group("g"), None).await?;
    let first = next(&mut stream, "the first delivery").await?;
    check(body(&first) == "dropped", || {
        format!("delivered `{}`", body(&first))
    })?;
    drop(first);
    let again = next(&mut stream, "the dropped message, handed back").await?;
    check(body(&again) == "dropped", || {
        format!("after the drop came `{}`", body(&again))
    })?;
    again.ack().await?;
    quiet(&mut stream, "an acked message must not come back").await
}
