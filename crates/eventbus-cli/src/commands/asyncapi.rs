//! `asyncapi`: the AsyncAPI 3.0 document of this program's event types and named consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use eventbus::catalog;
use eventbus::producer::ProducerSettings;
use eventbus::{Bus, BusConfig};

use crate::app::{resolve, App};
use crate::args::{Asyncapi, DocFormat};
use crate::asyncapi::{self as doc, Action, ChannelSpec, MessageSpec, OperationSpec, Server, Spec};
use crate::config::FileConfig;
use crate::error::CliError;

pub(crate) async fn run(
    app: &App,
    file: &FileConfig,
    config: &BusConfig,
    args: &Asyncapi,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let spec = spec(app, file, config, args.title.clone()).await?;
    let document = doc::document(&spec);
    match args.format {
        DocFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).map_err(|e| CliError::Usage(e.to_string()))?
        )?,
        DocFormat::Yaml => write!(
            out,
            "{}",
            doc::to_yaml(&document).map_err(|e| CliError::Usage(e.to_string()))?
        )?,
    }
    Ok(())
}

/// What the document describes: every registered type, the topics the routing table sends
/// them to, and the topics each named consumer receives them from.
pub(crate) async fn spec(
    app: &App,
    file: &FileConfig,
    config: &BusConfig,
    title: Option<String>,
) -> Result<Spec, CliError> {
    let types = catalog::event_types();
    let mut messages = Vec::new();
    for t in &types {
        messages.push(MessageSpec {
            event_type: t.name().to_owned(),
            minor_version: t.minor_version(),
            avro_schema_json: t.schema()?.json().to_owned(),
            key_field: t.key_field().map(str::to_owned),
        });
    }
    let settings = ProducerSettings::default().with_topic_prefix(config.topic_prefix.clone());
    let mut channels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut operations = Vec::new();
    for t in &types {
        for route in config.routing.routes(t.name()).iter().filter(|r| r.enabled) {
            let topic = settings.full_topic(&route.topic);
            channels
                .entry(topic.clone())
                .or_default()
                .insert(t.name().to_owned());
            operations.push(OperationSpec {
                name: format!("send-{}", t.name()),
                action: Action::Send,
                topic,
                group: None,
            });
        }
    }
    let bus = description_bus().await;
    for (name, named) in app.named() {
        let file_config = file.consumers.get(name).cloned().unwrap_or_default();
        let (topics, group) = resolve(named, &file_config, None, &[]);
        let handled: Vec<String> = match (&bus, topics.first()) {
            (Some(bus), Some(first)) => (named.build)(bus.consumer(first, &group))
                .event_types()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        // A consumer without routes of its own takes every registered type.
        let handled = if handled.is_empty() {
            types.iter().map(|t| t.name().to_owned()).collect()
        } else {
            handled
        };
        for topic in &topics {
            let topic = settings.full_topic(topic);
            channels
                .entry(topic.clone())
                .or_default()
                .extend(handled.iter().cloned());
            operations.push(OperationSpec {
                name: if topics.len() > 1 {
                    format!("{name}-{topic}")
                } else {
                    name.clone()
                },
                action: Action::Receive,
                topic,
                group: Some(group.clone()),
            });
        }
    }
    Ok(Spec {
        title: title.unwrap_or_else(|| app.name().to_owned()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        description: Some(format!(
            "Events of {}, as eventbus writes them (CloudEvents attributes in headers, Avro payloads).",
            app.name()
        )),
        servers: vec![server(config)],
        messages,
        channels: channels
            .into_iter()
            .map(|(topic, types)| ChannelSpec {
                topic,
                event_types: types.into_iter().collect(),
            })
            .collect(),
        operations,
    })
}

/// A bus to build consumers on only to ask them what they handle; nothing is connected.
async fn description_bus() -> Option<Bus> {
    #[cfg(feature = "memory")]
    {
        eventbus::connect(BusConfig::new().url("memory://eventbus-cli-asyncapi"))
            .await
            .ok()
    }
    #[cfg(not(feature = "memory"))]
    {
        None
    }
}

fn server(config: &BusConfig) -> Server {
    let url = config.url.clone().unwrap_or_else(|| "memory://".to_owned());
    let protocol = config
        .backend
        .clone()
        .or_else(|| url.split_once("://").map(|(scheme, _)| scheme.to_owned()))
        .unwrap_or_else(|| "memory".to_owned());
    Server {
        name: protocol.clone(),
        url: eventbus::redact::redact_url(&url),
        protocol,
    }
}
