//! The backend registry: each backend crate submits a [`BackendFactory`] through `inventory`;
//! configuration picks one by name, fully qualified name, Open edX factory path or URL scheme.
//!
//! **Linker caveat.** `inventory` registrations live in the backend crate's object code, and a
//! crate that nothing references is not linked, so its registration vanishes. The `eventbus`
//! facade references every backend its features enable; if you depend on a backend crate
//! directly, call its `register()` (or reference any item of it) once.

use std::collections::BTreeMap;
use std::fmt;

use futures::future::BoxFuture;

use crate::config::{redact_url, BusConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::serializer::SerializerKind;
use crate::transport::Transport;

/// What a backend factory receives.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackendConfig {
    /// The connection URL, if one was given.
    pub url: Option<String>,
    /// Backend options by variable name (`EVENT_BUS_REDIS_STREAM_MAX_LEN`, …).
    pub options: BTreeMap<String, String>,
}

impl BackendConfig {
    /// A configuration with a URL and no options.
    pub fn new(url: Option<String>) -> Self {
        Self {
            url,
            options: BTreeMap::new(),
        }
    }

    /// Adds an option.
    #[must_use]
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(name.into(), value.into());
        self
    }

    /// The value of option `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// Option `name` parsed, or `default` when absent; an unparsable value names the option.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &'static str, default: T) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| {
                Error::new(ErrorKind::Config, "the option has a malformed value")
                    .with("setting", name)
                    .with("value", v)
                    .with_source(e)
            }),
        }
    }
}

impl BackendConfig {
    /// The secrets of this configuration (secret options, the URL's password), for a backend's
    /// settings to hide wherever they appear.
    pub fn redactor(&self) -> crate::redact::Redactor {
        let options = self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        crate::redact::Redactor::for_config(self.url.as_deref(), options)
    }
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redactor = self.redactor();
        let options = redactor.shown(&self.options);
        let url = self.url.as_deref().map(|u| redactor.redact(u));
        f.debug_struct("BackendConfig")
            .field("url", &url)
            .field("options", &options)
            .finish()
    }
}

/// How a backend connects: registered with `inventory::submit!`.
#[derive(Debug)]
pub struct BackendFactory {
    /// Short name, e.g. `redis`.
    pub name: &'static str,
    /// Fully qualified name, e.g. `eventbus_redis::RedisBackend`.
    pub qualified_name: &'static str,
    /// URL schemes, e.g. `["redis", "rediss"]`.
    pub schemes: &'static [&'static str],
    /// The serializer matching the backend's Open edX wire format.
    pub wire_format: SerializerKind,
    /// Connects.
    pub connect: fn(BackendConfig) -> BoxFuture<'static, Result<Transport>>,
}

inventory::collect!(BackendFactory);

/// Every backend eventbus knows, with the Cargo feature of the `eventbus` crate that adds it.
pub const KNOWN_BACKENDS: &[(&str, &str)] = &[
    ("kafka", "kafka"),
    ("memory", "memory"),
    ("pulsar", "pulsar"),
    ("redis", "redis"),
];

/// Every backend compiled into this binary, sorted by name.
pub fn available() -> Vec<&'static BackendFactory> {
    let mut all: Vec<_> = inventory::iter::<BackendFactory>.into_iter().collect();
    all.sort_by_key(|f| f.name);
    all.dedup_by_key(|f| f.name);
    all
}

/// Whether `wanted` names `factory`: its name, qualified name, or a path with a segment such as
/// `redis`, `edx_event_bus_redis` or `eventbus_redis` (`edx_event_bus_redis.create_producer`).
fn names(factory: &BackendFactory, wanted: &str) -> bool {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted == factory.name || wanted == factory.qualified_name.to_ascii_lowercase() {
        return true;
    }
    let aliases = [
        factory.name.to_owned(),
        format!("edx_event_bus_{}", factory.name),
        format!("eventbus_{}", factory.name),
    ];
    wanted
        .split(['.', ':'])
        .filter(|s| !s.is_empty())
        .any(|segment| aliases.iter().any(|a| a == segment))
}

fn known_name(wanted: &str) -> Option<(&'static str, &'static str)> {
    let wanted = wanted.to_ascii_lowercase();
    KNOWN_BACKENDS.iter().copied().find(|(name, _)| {
        wanted == *name
            || wanted.split(['.', ':']).any(|s| {
                s == *name
                    || s == format!("edx_event_bus_{name}")
                    || s == format!("eventbus_{name}")
            })
    })
}

fn unknown(what: &str, wanted: &str, setting: &str) -> Error {
    let available: Vec<&str> = available().iter().map(|f| f.name).collect();
    let mut message = format!(
        "no backend `{wanted}` is available ({what}); compiled in: {}",
        if available.is_empty() {
            "none".to_owned()
        } else {
            available.join(", ")
        }
    );
    match known_name(wanted) {
        Some((name, feature)) => message.push_str(&format!(
            "; `{name}` is not compiled in: enable the Cargo feature `{feature}` of the `eventbus` crate"
        )),
        None => {
            let missing: Vec<String> = KNOWN_BACKENDS
                .iter()
                .filter(|(n, _)| !available.contains(n))
                .map(|(n, f)| format!("{n} (feature `{f}`)"))
                .collect();
            if !missing.is_empty() {
                message.push_str(&format!("; others exist behind features: {}", missing.join(", ")));
            }
        }
    }
    Error::new(ErrorKind::UnknownBackend, message).with("setting", setting)
}

/// The scheme of a URL, checked for shape.
fn scheme_of(url: &str) -> Result<String> {
    let malformed = || {
        Error::new(
            ErrorKind::Config,
            "the URL is malformed; expected scheme://host[:port][/…], e.g. redis://127.0.0.1:6379",
        )
        .with("setting", "EVENT_BUS_URL")
        .with("url", redact_url(url))
    };
    let (scheme, _) = url.split_once("://").ok_or_else(malformed)?;
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if valid {
        Ok(scheme.to_ascii_lowercase())
    } else {
        Err(malformed())
    }
}

/// Picks the factory the configuration asks for.
pub fn select(config: &BusConfig) -> Result<&'static BackendFactory> {
    let all = available();
    let setting = config.backend_setting.unwrap_or("backend");
    if let (Some(p), Some(c)) = (
        config.options.get("EVENT_BUS_PRODUCER"),
        config.options.get("EVENT_BUS_CONSUMER"),
    ) {
        let p_f = all.iter().find(|f| names(f, p)).map(|f| f.name);
        let c_f = all.iter().find(|f| names(f, c)).map(|f| f.name);
        if p_f != c_f {
            return Err(Error::new(
                ErrorKind::Config,
                "EVENT_BUS_PRODUCER and EVENT_BUS_CONSUMER name different backends; one bus uses one backend",
            )
            .with("EVENT_BUS_PRODUCER", p)
            .with("EVENT_BUS_CONSUMER", c));
        }
    }
    let scheme = config.url.as_deref().map(scheme_of).transpose()?;
    let by_name = match &config.backend {
        Some(wanted) => Some(
            all.iter()
                .copied()
                .find(|f| names(f, wanted))
                .ok_or_else(|| unknown(&format!("asked by {setting}"), wanted, setting))?,
        ),
        None => None,
    };
    match (by_name, scheme) {
        (Some(factory), Some(scheme)) if !factory.schemes.contains(&scheme.as_str()) => {
            Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the URL scheme `{scheme}` does not belong to backend `{}`, which takes {}",
                    factory.name,
                    factory
                        .schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .with("setting", "EVENT_BUS_URL"))
        }
        (Some(factory), _) => Ok(factory),
        (None, Some(scheme)) => all
            .iter()
            .copied()
            .find(|f| f.schemes.contains(&scheme.as_str()))
            .ok_or_else(|| {
                unknown(
                    &format!("for URL scheme `{scheme}://`"),
                    &scheme,
                    "EVENT_BUS_URL",
                )
            }),
        (None, None) => all
            .iter()
            .copied()
            .find(|f| f.name == "memory")
            .inspect(|_| {
                // Right for development and tests, a surprise in production: say so, once.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        "no backend is configured (neither EVENT_BUS_BACKEND nor EVENT_BUS_URL is set): using the in-memory bus, so events stay inside this process"
                    );
                });
            })
            .ok_or_else(|| {
                unknown(
                    "the default, as neither EVENT_BUS_BACKEND nor EVENT_BUS_URL is set",
                    "memory",
                    "EVENT_BUS_BACKEND",
                )
            }),
    }
}

/// Connects the backend the configuration asks for.
pub async fn connect(config: &BusConfig) -> Result<(&'static BackendFactory, Transport)> {
    let factory = select(config)?;
    let backend_config = BackendConfig {
        url: config.url.clone(),
        options: config.options.clone(),
    };
    let transport = (factory.connect)(backend_config)
        .await
        .map_err(|e| e.with("backend", factory.name))?;
    Ok((factory, transport))
}
