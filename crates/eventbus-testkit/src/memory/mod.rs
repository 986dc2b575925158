//! The in-memory backend (`memory://`, name `memory`): the embedded default.
//!
//! Topics keep their whole history in partitions (a key always lands in the same partition).
//! A consumer group has one cursor per partition; many messages of a partition may be out at
//! once, but a key's next message only after the previous one's ack, so per-key order holds even
//! across nacks while other keys flow (`eventbus_core::transport::window`); members of a group
//! split the partitions between them. Brokers are named by the URL's host (`memory://orders`), live for the whole process and
//! are shared by every connection with the same name; `memory://` is the broker named `default`.
//! `?partitions=N` (default 8) applies when a broker is first created.

mod broker;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use eventbus_core::registry::BackendConfig;
use eventbus_core::serializer::SerializerKind;
use eventbus_core::transport::{closed_error, PublishGate};
use eventbus_core::{
    BackendFactory, DeliveryStream, Error, ErrorKind, Guarantees, Message, Position, Publisher,
    Result, Subscriber, Subscription, Transport,
};

pub use broker::MemoryBroker;

/// The backend name.
pub const NAME: &str = "memory";
/// The URL schemes.
pub const SCHEMES: &[&str] = &["memory"];

/// What the memory backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    order_per_key: true,
    ack_gates_next: true,
    redelivery_after_nack: true,
    shared_groups: true,
    history_for_new_groups: true,
    replay_from_time: true,
    survives_restart: false,
    pending_per_member: false,
};

inventory::submit! {
    BackendFactory {
        name: NAME,
        qualified_name: "eventbus_testkit::memory",
        schemes: SCHEMES,
        wire_format: SerializerKind::Avro,
        connect: |config| Box::pin(async move { connect(&config) }),
    }
}

/// Makes sure this crate, and with it the registration above, is linked. The `eventbus` facade
/// calls it; a binary that names the memory backend only through configuration must too.
pub fn register() {}

/// Connects to the broker a `memory://name?partitions=N` URL names.
pub fn connect(config: &BackendConfig) -> Result<Transport> {
    let (name, partitions) = parse_url(config.url.as_deref().unwrap_or("memory://"))?;
    Ok(MemoryBroker::named(&name, partitions).transport())
}

fn parse_url(url: &str) -> Result<(String, usize)> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Config,
            format!("bad memory URL: {why}; expected memory://[name][?partitions=N]"),
        )
        .with("url", url)
    };
    let rest = url
        .strip_prefix("memory://")
        .ok_or_else(|| bad("the scheme must be memory"))?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let name = name.trim_end_matches('/');
    let mut partitions = 8;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("partitions", n)) => {
                partitions = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("partitions must be a positive number"))?;
            }
            _ => return Err(bad(&format!("unknown parameter `{pair}`"))),
        }
    }
    Ok((
        if name.is_empty() {
            "default".to_owned()
        } else {
            name.to_owned()
        },
        partitions,
    ))
}

fn brokers() -> &'static Mutex<HashMap<String, MemoryBroker>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

impl MemoryBroker {
    /// The process-wide broker called `name`, created with `partitions` on first use.
    pub fn named(name: &str, partitions: usize) -> MemoryBroker {
        let mut all = brokers()
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        all.entry(name.to_owned())
            .or_insert_with(|| MemoryBroker::new(partitions))
            .clone()
    }

    /// A new connection to this broker: its own publisher and subscriber, each closable alone.
    pub fn transport(&self) -> Transport {
        Transport {
            backend: NAME,
            publisher: Arc::new(MemoryPublisher {
                broker: self.clone(),
                gate: PublishGate::new(),
            }),
            subscriber: Arc::new(MemorySubscriber {
                broker: self.clone(),
                closed: Default::default(),
            }),
            guarantees: GUARANTEES,
            schema_registry: None,
        }
    }
}

#[derive(Debug)]
struct MemoryPublisher {
    broker: MemoryBroker,
    gate: PublishGate,
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &str, batch: Vec<Message>) -> Result<Vec<Position>> {
        let _admitted = self.gate.enter("memory publisher", topic).await?;
        Ok(self.broker.append(topic, batch))
    }

    async fn flush(&self) -> Result<()> {
        // Publishing is synchronous: everything returned is already stored.
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.gate.close().await;
        Ok(())
    }
}

#[derive(Debug)]
struct MemorySubscriber {
    broker: MemoryBroker,
    closed: stream::CloseSignal,
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if self.closed.is_closed() {
            return Err(closed_error("memory subscriber"));
        }
        stream::open(&self.broker, subscription, self.closed.clone())
    }

    async fn close(&self) -> Result<()> {
        self.closed.close();
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        // The broker lives in this process: it answers while the subscriber is open.
        if self.closed.is_closed() {
            return Err(closed_error("memory subscriber"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_names_broker_and_partitions() {
        assert_eq!(parse_url("memory://").unwrap(), ("default".into(), 8));
        assert_eq!(
            parse_url("memory://orders?partitions=2").unwrap(),
            ("orders".into(), 2)
        );
        let err = parse_url("memory://x?partitions=0").unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        assert!(parse_url("memory://x?color=red").is_err());
    }
}
