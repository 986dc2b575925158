//! The backend's settings, read from `EVENT_BUS_PULSAR_*` options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use eventbus_core::config::redact_url;
use eventbus_core::redact::Redactor;
use eventbus_core::registry::BackendConfig;
use eventbus_core::{Error, ErrorKind, Guarantees, Result};

/// How members of one group share a topic: the Pulsar subscription type a group maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupMode {
    /// `Key_Shared`: members share the load, every key goes to one member at a time, in order.
    #[default]
    KeyShared,
    /// `Shared`: members share the load round-robin, without order.
    Shared,
    /// `Failover`: one active member per topic, the others stand by.
    Failover,
    /// `Exclusive`: one member only; a second one is refused.
    Exclusive,
}

impl GroupMode {
    /// What a group in this mode promises.
    pub fn guarantees(self) -> Guarantees {
        Guarantees {
            order_per_key: matches!(self, Self::KeyShared | Self::Failover | Self::Exclusive),
            // The client prefetches: the next message of a key is on its way before the ack.
            ack_gates_next: false,
            redelivery_after_nack: true,
            shared_groups: matches!(self, Self::KeyShared | Self::Shared),
            history_for_new_groups: true,
            replay_from_time: true,
            survives_restart: true,
            pending_per_member: false,
        }
    }

    pub(crate) fn sub_type(self) -> pulsar::SubType {
        match self {
            Self::KeyShared => pulsar::SubType::KeyShared,
            Self::Shared => pulsar::SubType::Shared,
            Self::Failover => pulsar::SubType::Failover,
            Self::Exclusive => pulsar::SubType::Exclusive,
        }
    }
}

impl FromStr for GroupMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "keyshared" => Ok(Self::KeyShared),
            "shared" => Ok(Self::Shared),
            "failover" => Ok(Self::Failover),
            "exclusive" => Ok(Self::Exclusive),
            _ => Err(format!(
                "unknown subscription type `{s}`; expected key_shared, shared, failover or exclusive"
            )),
        }
    }
}

/// Compression of published messages (and batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// LZ4.
    Lz4,
    /// zlib.
    Zlib,
    /// Zstandard.
    Zstd,
    /// Snappy.
    Snappy,
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zlib" => Ok(Self::Zlib),
            "zstd" => Ok(Self::Zstd),
            "snappy" => Ok(Self::Snappy),
            _ => Err(format!(
                "unknown compression `{s}`; expected none, lz4, zlib, zstd or snappy"
            )),
        }
    }
}

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// A JWT, sent with the `token` method.
    Token(String),
    /// OAuth 2.0 client credentials, exchanged for a token at the issuer.
    OAuth2 {
        /// The issuer's URL, e.g. `https://auth.example.com/`.
        issuer_url: String,
        /// Where the client id and secret are: a `file://` path to their JSON key file, or a
        /// `data:` URL holding it.
        credentials_url: String,
        /// The audience, if the issuer asks for one.
        audience: Option<String>,
        /// The scope, if the issuer asks for one.
        scope: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::OAuth2 {
                issuer_url,
                audience,
                scope,
                ..
            } => f
                .debug_struct("OAuth2")
                .field("issuer_url", issuer_url)
                .field("credentials_url", &"***")
                .field("audience", audience)
                .field("scope", scope)
                .finish(),
        }
    }
}

/// How the Pulsar backend talks to its broker.
///
/// Every field has an `EVENT_BUS_PULSAR_*` option; see the crate documentation for the table.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PulsarSettings {
    /// The service URL: `pulsar://host:port` or `pulsar+ssl://host:port`.
    pub url: String,
    /// Tenant and namespace of bare topic names (`public/default`): topic `users` is
    /// `persistent://public/default/users`. A name with a scheme is taken as it is.
    pub namespace: String,
    /// The subscription type a group maps to.
    pub group_mode: GroupMode,
    /// Messages a consumer prefetches.
    pub receiver_queue_size: u32,
    /// Messages per producer batch; 0 sends each message on its own.
    pub batch_size: u32,
    /// Longest time a batch waits to fill before it is sent.
    pub batch_max_delay: Duration,
    /// Compression of published messages.
    pub compression: Compression,
    /// Authentication.
    pub auth: Auth,
    /// A PEM file of certificates to trust for `pulsar+ssl://`, besides the webpki roots.
    pub tls_trust_certs: Option<PathBuf>,
    /// Accept any server certificate (test servers only).
    pub tls_allow_insecure: bool,
    /// Check that the server certificate names the host.
    pub tls_hostname_verification: bool,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long a request (lookup, subscribe, send) may wait for its answer.
    pub operation_timeout: Duration,
    /// How often a lost connection is retried before operations fail.
    pub reconnect_attempts: u32,
    /// How long closing producers and consumers may take.
    pub close_timeout: Duration,
}

impl fmt::Debug for PulsarSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redactor = Redactor::new().url(&self.url);
        let redactor = match &self.auth {
            Auth::None => redactor,
            Auth::Token(token) => redactor.secret(token),
            Auth::OAuth2 {
                credentials_url, ..
            } => redactor.secret(credentials_url),
        };
        redactor.debug(f, &ShownPulsarSettings(self))
    }
}

/// [`PulsarSettings`] with the authentication masked, before the redaction by value.
struct ShownPulsarSettings<'a>(&'a PulsarSettings);

impl fmt::Debug for ShownPulsarSettings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        f.debug_struct("PulsarSettings")
            .field("url", &&s.url)
            .field("namespace", &s.namespace)
            .field("group_mode", &s.group_mode)
            .field("receiver_queue_size", &s.receiver_queue_size)
            .field("batch_size", &s.batch_size)
            .field("batch_max_delay", &s.batch_max_delay)
            .field("compression", &s.compression)
            .field("auth", &s.auth)
            .field("tls_trust_certs", &s.tls_trust_certs)
            .field("tls_allow_insecure", &s.tls_allow_insecure)
            .field("tls_hostname_verification", &s.tls_hostname_verification)
            .field("connect_timeout", &s.connect_timeout)
            .field("operation_timeout", &s.operation_timeout)
            .field("reconnect_attempts", &s.reconnect_attempts)
            .field("close_timeout", &s.close_timeout)
            .finish()
    }
}

impl PulsarSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "public/default".to_owned(),
            group_mode: GroupMode::KeyShared,
            receiver_queue_size: 1000,
            batch_size: 0,
            batch_max_delay: Duration::from_millis(10),
            compression: Compression::None,
            auth: Auth::None,
            tls_trust_certs: None,
            tls_allow_insecure: false,
            tls_hostname_verification: true,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            reconnect_attempts: 12,
            close_timeout: Duration::from_secs(10),
        }
    }

    /// Reads the URL and the `EVENT_BUS_PULSAR_*` options of a backend configuration.
    pub fn from_config(config: &BackendConfig) -> Result<Self> {
        let url = config.url.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "the Pulsar backend needs a URL; set EVENT_BUS_URL=pulsar://host:6650",
            )
            .with("setting", "EVENT_BUS_URL")
        })?;
        let d = Self::new(url);
        let millis = |name: &'static str, default: Duration| -> Result<Duration> {
            let ms: u64 = config.parse_or(name, default.as_millis() as u64)?;
            Ok(Duration::from_millis(ms))
        };
        let text = |name: &str| config.get(name).map(str::trim).filter(|v| !v.is_empty());
        let settings = Self {
            namespace: text("EVENT_BUS_PULSAR_NAMESPACE")
                .map_or(d.namespace.clone(), str::to_owned),
            group_mode: parse_named(config, "EVENT_BUS_PULSAR_SUBSCRIPTION_TYPE", d.group_mode)?,
            receiver_queue_size: config.parse_or(
                "EVENT_BUS_PULSAR_RECEIVER_QUEUE_SIZE",
                d.receiver_queue_size,
            )?,
            batch_size: config.parse_or("EVENT_BUS_PULSAR_BATCH_SIZE", d.batch_size)?,
            batch_max_delay: millis("EVENT_BUS_PULSAR_BATCH_MAX_DELAY_MS", d.batch_max_delay)?,
            compression: parse_named(config, "EVENT_BUS_PULSAR_COMPRESSION", d.compression)?,
            auth: auth(config)?,
            tls_trust_certs: text("EVENT_BUS_PULSAR_TLS_TRUST_CERTS_FILE").map(PathBuf::from),
            tls_allow_insecure: config
                .parse_or("EVENT_BUS_PULSAR_TLS_ALLOW_INSECURE", d.tls_allow_insecure)?,
            tls_hostname_verification: config.parse_or(
                "EVENT_BUS_PULSAR_TLS_HOSTNAME_VERIFICATION",
                d.tls_hostname_verification,
            )?,
            connect_timeout: millis("EVENT_BUS_PULSAR_CONNECT_TIMEOUT_MS", d.connect_timeout)?,
            operation_timeout: millis(
                "EVENT_BUS_PULSAR_OPERATION_TIMEOUT_MS",
                d.operation_timeout,
            )?,
            reconnect_attempts: config
                .parse_or("EVENT_BUS_PULSAR_RECONNECT_ATTEMPTS", d.reconnect_attempts)?,
            close_timeout: millis("EVENT_BUS_PULSAR_CLOSE_TIMEOUT_MS", d.close_timeout)?,
            ..d
        };
        settings.check()?;
        Ok(settings)
    }

    /// Rejects settings that cannot work, naming the option to change.
    pub fn check(&self) -> Result<()> {
        let bad = |setting: &'static str, why: String| {
            Err(Error::new(ErrorKind::Config, why).with("setting", setting))
        };
        let scheme_ok = ["pulsar://", "pulsar+ssl://"]
            .iter()
            .any(|s| self.url.starts_with(s));
        if !scheme_ok || url::Url::parse(&self.url).map_or(true, |u| u.host_str().is_none()) {
            return bad(
                "EVENT_BUS_URL",
                format!(
                    "`{}` is not a Pulsar service URL; expected pulsar://host:port or pulsar+ssl://host:port",
                    redact_url(&self.url)
                ),
            );
        }
        if self.namespace.split('/').filter(|p| !p.is_empty()).count() != 2 {
            return bad(
                "EVENT_BUS_PULSAR_NAMESPACE",
                format!(
                    "`{}` is not a namespace; expected tenant/namespace such as public/default",
                    self.namespace
                ),
            );
        }
        if self.receiver_queue_size == 0 {
            return bad(
                "EVENT_BUS_PULSAR_RECEIVER_QUEUE_SIZE",
                "the receiver queue needs room for at least one message".to_owned(),
            );
        }
        if self.connect_timeout.is_zero() || self.operation_timeout.is_zero() {
            return bad(
                "EVENT_BUS_PULSAR_OPERATION_TIMEOUT_MS",
                "timeouts must be above zero; a dead broker would otherwise hang every call"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// `host:port` of the service URL, for messages and the reachability probe.
    pub(crate) fn address(&self) -> String {
        let Ok(url) = url::Url::parse(&self.url) else {
            return redact_url(&self.url);
        };
        let default_port = if self.url.starts_with("pulsar+ssl://") {
            6651
        } else {
            6650
        };
        let host = url.host_str().unwrap_or_default();
        format!("{host}:{}", url.port().unwrap_or(default_port))
    }
}

fn parse_named<T>(config: &BackendConfig, name: &'static str, default: T) -> Result<T>
where
    T: FromStr<Err = String>,
{
    match config.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|why: String| {
            Error::new(ErrorKind::Config, why)
                .with("setting", name)
                .with("value", v)
        }),
    }
}

fn auth(config: &BackendConfig) -> Result<Auth> {
    let text = |name: &str| config.get(name).map(str::trim).filter(|v| !v.is_empty());
    let token = match (
        text("EVENT_BUS_PULSAR_AUTH_TOKEN"),
        text("EVENT_BUS_PULSAR_AUTH_TOKEN_FILE"),
    ) {
        (Some(token), _) => Some(token.to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::new(ErrorKind::Config, "cannot read the token file")
                        .with("setting", "EVENT_BUS_PULSAR_AUTH_TOKEN_FILE")
                        .with("path", path)
                        .with_source(e)
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let issuer = text("EVENT_BUS_PULSAR_OAUTH2_ISSUER_URL");
    let credentials = text("EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL");
    match (token, issuer, credentials) {
        (Some(_), Some(_), _) => Err(Error::new(
            ErrorKind::Config,
            "both a token and OAuth2 are configured; set only one of them",
        )
        .with("setting", "EVENT_BUS_PULSAR_AUTH_TOKEN")),
        (Some(token), None, _) => Ok(Auth::Token(token)),
        (None, Some(issuer), Some(credentials)) => Ok(Auth::OAuth2 {
            issuer_url: issuer.to_owned(),
            credentials_url: credentials.to_owned(),
            audience: text("EVENT_BUS_PULSAR_OAUTH2_AUDIENCE").map(str::to_owned),
            scope: text("EVENT_BUS_PULSAR_OAUTH2_SCOPE").map(str::to_owned),
        }),
        (None, Some(_), None) | (None, None, Some(_)) => Err(Error::new(
            ErrorKind::Config,
            "OAuth2 needs both EVENT_BUS_PULSAR_OAUTH2_ISSUER_URL and EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL",
        )
        .with("setting", "EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL")),
        (None, None, None) => Ok(Auth::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackendConfig {
        BackendConfig::new(Some("pulsar://127.0.0.1:6650".into()))
    }

    #[test]
    fn options_override_defaults() {
        let c = config()
            .option("EVENT_BUS_PULSAR_SUBSCRIPTION_TYPE", "Shared")
            .option("EVENT_BUS_PULSAR_BATCH_SIZE", "100")
            .option("EVENT_BUS_PULSAR_COMPRESSION", "zstd")
            .option("EVENT_BUS_PULSAR_NAMESPACE", "acme/events")
            .option("EVENT_BUS_PULSAR_AUTH_TOKEN", "eyJhbGciOi");
        let s = PulsarSettings::from_config(&c).unwrap();
        assert_eq!(s.group_mode, GroupMode::Shared);
        assert_eq!(s.batch_size, 100);
        assert_eq!(s.compression, Compression::Zstd);
        assert_eq!(s.namespace, "acme/events");
        assert_eq!(s.auth, Auth::Token("eyJhbGciOi".into()));
        assert_eq!(s.receiver_queue_size, 1000);
        assert!(!format!("{s:?}").contains("eyJhbGciOi"), "{s:?}");
        assert_eq!(s.address(), "127.0.0.1:6650");
    }

    #[test]
    fn group_modes_parse_in_pulsar_and_snake_spelling() {
        for (text, mode) in [
            ("Key_Shared", GroupMode::KeyShared),
            ("key-shared", GroupMode::KeyShared),
            ("failover", GroupMode::Failover),
            ("EXCLUSIVE", GroupMode::Exclusive),
        ] {
            assert_eq!(text.parse::<GroupMode>(), Ok(mode));
        }
        assert!(GroupMode::KeyShared.guarantees().order_per_key);
        assert!(!GroupMode::Shared.guarantees().order_per_key);
        assert!(!GroupMode::Failover.guarantees().shared_groups);
    }

    #[test]
    fn bad_values_name_the_option() {
        let cases = [
            ("EVENT_BUS_PULSAR_SUBSCRIPTION_TYPE", "round_robin"),
            ("EVENT_BUS_PULSAR_COMPRESSION", "brotli"),
            ("EVENT_BUS_PULSAR_NAMESPACE", "just-one"),
            ("EVENT_BUS_PULSAR_RECEIVER_QUEUE_SIZE", "0"),
            ("EVENT_BUS_PULSAR_BATCH_SIZE", "many"),
        ];
        for (name, value) in cases {
            let err = PulsarSettings::from_config(&config().option(name, value)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        let err = PulsarSettings::from_config(&config().option(
            "EVENT_BUS_PULSAR_OAUTH2_ISSUER_URL",
            "https://auth.example/",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("CREDENTIALS_URL"), "{err}");
        let err = PulsarSettings::from_config(&BackendConfig::new(Some("http://h:1".into())))
            .unwrap_err();
        assert!(err.to_string().contains("pulsar://host:port"), "{err}");
        let err = PulsarSettings::from_config(&BackendConfig::new(None)).unwrap_err();
        assert!(err.to_string().contains("EVENT_BUS_URL"), "{err}");
    }

    #[test]
    fn oauth2_reads_every_option_and_hides_the_credentials() {
        let c = config()
            .option(
                "EVENT_BUS_PULSAR_OAUTH2_ISSUER_URL",
                "https://auth.example/",
            )
            .option(
                "EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL",
                "file:///secret.json",
            )
            .option("EVENT_BUS_PULSAR_OAUTH2_AUDIENCE", "urn:pulsar")
            .option("EVENT_BUS_PULSAR_OAUTH2_SCOPE", "events");
        let s = PulsarSettings::from_config(&c).unwrap();
        assert!(matches!(&s.auth, Auth::OAuth2 { audience: Some(a), .. } if a == "urn:pulsar"));
        assert!(!format!("{s:?}").contains("secret.json"), "{s:?}");
    }
}
