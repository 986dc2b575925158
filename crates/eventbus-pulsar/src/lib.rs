#![doc = include_str!("docs.md")]
#![forbid(unsafe_code)]

mod client;
mod mapping;
mod publisher;
mod reader;
mod settings;
mod subscriber;

use std::sync::Arc;

use eventbus_core::registry::BackendConfig;
use eventbus_core::serializer::SerializerKind;
use eventbus_core::{BackendFactory, Result, Transport};

pub use mapping::{from_pulsar, to_pulsar, BINARY_PROPERTIES};
pub use publisher::producer_options;
pub use settings::{Auth, Compression, GroupMode, PulsarSettings};

/// The backend name.
pub const NAME: &str = "pulsar";
/// The URL schemes.
pub const SCHEMES: &[&str] = &["pulsar", "pulsar+ssl"];

inventory::submit! {
    BackendFactory {
        name: NAME,
        qualified_name: "eventbus_pulsar",
        schemes: SCHEMES,
        wire_format: SerializerKind::Avro,
        connect: |config| Box::pin(async move { connect_config(&config).await }),
    }
}

/// Makes sure this crate, and with it the registration above, is linked. The `eventbus` facade
/// calls it; a binary that names the Pulsar backend only through configuration must too.
pub fn register() {}

/// Connects with the URL and `EVENT_BUS_PULSAR_*` options of a backend configuration.
pub async fn connect_config(config: &BackendConfig) -> Result<Transport> {
    connect(PulsarSettings::from_config(config)?).await
}

/// Connects to the broker the settings name; fails at once when it cannot be reached.
pub async fn connect(settings: PulsarSettings) -> Result<Transport> {
    settings.check()?;
    let client = client::connect(&settings).await?;
    let settings = Arc::new(settings);
    Ok(Transport {
        backend: NAME,
        publisher: Arc::new(publisher::PulsarPublisher::new(
            client.clone(),
            settings.clone(),
        )),
        subscriber: Arc::new(subscriber::PulsarSubscriber::new(client, settings.clone())),
        guarantees: settings.group_mode.guarantees(),
        schema_registry: None,
    })
}
