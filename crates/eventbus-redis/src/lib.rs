//! The Redis Streams backend of eventbus (`redis://`, `rediss://`, name `redis`).
//!
//! A topic is a stream, named by the prefixed topic as Open edX names it; a group is a Redis
//! consumer group. Entries are laid out field by field as Open edX's `edx-event-bus-redis`
//! writes them (see [`entry`](crate#entries)), so Python and Rust services share a stream.
//!
//! ```no_run
//! # async fn demo() -> eventbus_core::Result<()> {
//! use eventbus_core::{Bus, BusConfig};
//!
//! eventbus_redis::register();
//! let bus = Bus::connect(BusConfig::new().url("redis://127.0.0.1:6379")).await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! - **Publishing** pipelines one `XADD … MAXLEN ~ N * field value …` per message: a batch is
//!   one round trip, and `publish` returns once Redis has answered, with each entry's id.
//! - **Groups** are created with `MKSTREAM` where the subscription starts: the earliest entry
//!   for a new group (it reads the history the stream keeps), `$` for latest, the id just before
//!   a time for a replay (stream ids are milliseconds), or a given id. An existing group keeps its
//!   position unless a start is asked for; then it is moved there (`XGROUP SETID`).
//! - **Reading** is `XREADGROUP … BLOCK` on a connection of the reader's own, whose answer
//!   timeout exceeds the block time. A reader first takes back what its consumer name left
//!   pending, then reads new entries, and every claim interval takes over (`XAUTOCLAIM`) entries
//!   other members left unacknowledged for the claim idle time. The delivery count Redis keeps
//!   becomes the delivery's attempt, which drives the core's retry and dead-letter policy. The
//!   same round removes (`XGROUP DELCONSUMER`) members that hold nothing and were idle for the
//!   claim idle time, so consumers that restarted under new names do not pile up in the group.
//!   Pending entries belong to a member's name: give consumers names that survive a restart
//!   (`Consumer::name`), or what a member held waits the claim idle time for another one; the
//!   consumer warns when it has none.
//! - **Acknowledging** is `XACK`, after success only; acks that meet go out together, one `XACK`
//!   per stream with all their ids (the core's batching, `EVENT_BUS_CONSUMER_ACK_BATCH_SIZE`), and
//!   each is reported done once Redis answered. A nack leaves the entry pending and claims it back
//!   after the delay.
//! - **Connections.** Commands share one connection that reconnects with exponential backoff; a
//!   command sent while Redis is away fails with a temporary error. A reader that loses Redis
//!   reports the error on its delivery stream (the core logs and counts it) and retries with
//!   backoff (100 ms doubling to 5 s) until its subscriber closes.
//!
//! What Redis does not give, the backend does not declare: a group hands entries to whichever
//! member asks, whatever their key, and a nacked entry comes back after later ones, so there is
//! no order per key; and several entries are in flight at once.
//!
//! # Entries
//!
//! Open edX's fields `type`, `id`, `source`, `time`, `minorversion`, `sourcehost`, `sourcelib`
//! and `event_data` (the bare Avro datum) carry an event. A message key travels in a `key`
//! field and other headers in fields of their own names; Open edX's consumer ignores both.
//!
//! # Settings
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `EVENT_BUS_URL` | (required) | `redis://[user[:password]@]host[:port][/db]`; `rediss://` for TLS |
//! | `EVENT_BUS_REDIS_CONNECTION_URL` | | Open edX's name for the URL, read when `EVENT_BUS_URL` is not set |
//! | `EVENT_BUS_REDIS_CONSUMER_POLL_TIMEOUT`, `…_POLL_FAILURE_SLEEP` | | Open edX's; recognised, no effect (reads block for `EVENT_BUS_REDIS_BLOCK_MS`) |
//! | `EVENT_BUS_REDIS_STREAM_MAX_LEN` | 10000 | approximate stream length kept (`MAXLEN ~`); 0 keeps all |
//! | `EVENT_BUS_REDIS_BLOCK_MS` | 2000 | how long one read waits for new entries |
//! | `EVENT_BUS_REDIS_READ_COUNT` | 64 | entries per read |
//! | `EVENT_BUS_REDIS_CLAIM_IDLE_MS` | 60000 | idle time after which another member takes an entry over; keep it above the slowest receiver plus the longest retry delay |
//! | `EVENT_BUS_REDIS_CLAIM_INTERVAL_MS` | 5000 | how often a reader looks for such entries |
//! | `EVENT_BUS_REDIS_RESPONSE_TIMEOUT_MS` | 5000 | how long a command waits for its answer |
//! | `EVENT_BUS_REDIS_CONNECT_TIMEOUT_MS` | 5000 | how long opening a connection may take |
//!
//! A password or ACL user goes in the URL (`redis://user:secret@host:6379`). `rediss://` uses
//! rustls with the webpki root certificates; add `#insecure` to the URL to skip verification
//! for a self-signed test server only.
#![forbid(unsafe_code)]

mod backlog;
mod conn;
mod entry;
mod publisher;
mod reader;
mod reply;
mod settings;
mod subscriber;

use std::sync::Arc;

use eventbus_core::registry::BackendConfig;
use eventbus_core::serializer::SerializerKind;
use eventbus_core::{BackendFactory, Guarantees, Result, Transport};

pub use publisher::append_pipeline;
pub use settings::RedisSettings;

/// For the fuzz targets of `crates/eventbus-fuzz` only (issue 15): the reply parsers, which are
/// crate-private, and the URL check of the client. Not an API; may change at any time.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::reply::fuzz::*;

    /// Whether the `redis` client accepts the settings' URL (parsing only; nothing is opened).
    pub fn check_url(settings: &crate::RedisSettings) -> eventbus_core::Result<()> {
        crate::conn::client(settings).map(drop)
    }
}

/// The backend name.
pub const NAME: &str = "redis";
/// The URL schemes.
pub const SCHEMES: &[&str] = &["redis", "rediss"];

/// What the Redis backend promises.
pub const GUARANTEES: Guarantees = Guarantees {
    order_per_key: false,
    ack_gates_next: false,
    redelivery_after_nack: true,
    shared_groups: true,
    history_for_new_groups: true,
    replay_from_time: true,
    survives_restart: true,
    pending_per_member: true,
};

inventory::submit! {
    BackendFactory {
        name: NAME,
        qualified_name: "eventbus_redis",
        schemes: SCHEMES,
        wire_format: SerializerKind::Avro,
        connect: |config| Box::pin(async move { connect_config(&config).await }),
    }
}

/// Makes sure this crate, and with it the registration above, is linked. The `eventbus` facade
/// calls it; a binary that names the Redis backend only through configuration must too.
pub fn register() {}

/// Connects with the URL and `EVENT_BUS_REDIS_*` options of a backend configuration.
pub async fn connect_config(config: &BackendConfig) -> Result<Transport> {
    connect(RedisSettings::from_config(config)?).await
}

/// Connects to the server the settings name; fails at once when it cannot be reached.
pub async fn connect(settings: RedisSettings) -> Result<Transport> {
    settings.check()?;
    let client = conn::client(&settings)?;
    let commands = conn::commands(&client, &settings).await?;
    let settings = Arc::new(settings);
    Ok(Transport {
        backend: NAME,
        publisher: Arc::new(publisher::RedisPublisher::new(
            commands.clone(),
            settings.stream_max_len,
        )),
        subscriber: Arc::new(subscriber::RedisSubscriber::new(client, commands, settings)),
        guarantees: GUARANTEES,
        schema_registry: None,
    })
}
