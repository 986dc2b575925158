//! The configuration target.

use eventbus_core::redact::{is_secret_name, redact_url, MASK};
use eventbus_core::registry::{self, BackendConfig};
use eventbus_core::BusConfig;
use eventbus_redis::RedisSettings;

/// The variables a value goes to, by its place in the input (after the core's, the Redis
/// backend's options, then names that are secret by name).
const NAMES: &[&str] = &[
    "EVENT_BUS_URL",
    "EVENT_BUS_BACKEND",
    "EVENT_BUS_PRODUCER",
    "EVENT_BUS_CONSUMER",
    "EVENT_BUS_TOPIC_PREFIX",
    "EVENTS_SERVICE_NAME",
    "EVENT_BUS_SERIALIZER",
    "EVENT_BUS_PRODUCER_CONFIG",
    "EVENT_BUS_CONSUMER_MAX_ATTEMPTS",
    "EVENT_BUS_CONSUMER_BACKOFF_BASE_MS",
    "EVENT_BUS_CONSUMER_BACKOFF_MAX_MS",
    "EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
    "EVENT_BUS_KAFKA_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
    "EVENT_BUS_REDIS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT",
    "EVENT_BUS_CONSUMER_CONCURRENCY",
    "EVENT_BUS_CONSUMER_SHUTDOWN_TIMEOUT_MS",
    "EVENT_BUS_DEAD_LETTER_TOPIC",
    "EVENT_BUS_CONSUMER_HANDLER_TIMEOUT_MS",
    "EVENT_BUS_CONSUMER_UNKNOWN_EVENT_TYPES",
    "EVENT_BUS_CONSUMER_LAG_INTERVAL_MS",
    "EVENT_BUS_CONSUMER_ACK_BATCH_SIZE",
    "EVENT_BUS_CONSUMER_ACK_LINGER_MS",
    "EVENT_BUS_REDIS_CONNECTION_URL",
    "EVENT_BUS_REDIS_STREAM_MAX_LEN",
    "EVENT_BUS_REDIS_BLOCK_MS",
    "EVENT_BUS_REDIS_READ_COUNT",
    "EVENT_BUS_REDIS_CLAIM_IDLE_MS",
    "EVENT_BUS_REDIS_CLAIM_INTERVAL_MS",
    "EVENT_BUS_REDIS_RESPONSE_TIMEOUT_MS",
    "EVENT_BUS_REDIS_CONNECT_TIMEOUT_MS",
    "EVENT_BUS_REDIS_PASSWORD",
    "EVENT_BUS_KAFKA_API_SECRET",
];

/// Configuration from the environment: the input is cut into values at each `0x00` byte; a value
/// holding a `0x01` byte is `NAME 0x01 VALUE` with a name of its own, any other goes to the
/// variable of its place in a fixed list of the core's and the Redis backend's variables. The
/// variables go through [`BusConfig::from_vars`], backend selection by name and URL scheme, the
/// configuration's redacted `Debug`, and the Redis settings with the client's URL parser.
///
/// Checked: the value of a secret-named option and the URL's password (four characters or more,
/// no `*`) appear in no `Debug` output (configuration, backend configuration, Redis settings),
/// as they are or escaped as `Debug` writes strings, unless the same output shows them with the
/// URL's password and the secret options masked beforehand (a secret that is also a name, a
/// number or part of another setting shows there by right).
pub fn config_url(data: &[u8]) {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (i, part) in crate::split(data, 0).enumerate() {
        let text = String::from_utf8_lossy(part);
        match text.split_once('\u{1}') {
            Some((name, value)) => vars.push((name.to_owned(), value.to_owned())),
            None => vars.push((NAMES[i % NAMES.len()].to_owned(), text.into_owned())),
        }
    }
    let Ok(config) = BusConfig::from_vars(vars) else {
        return;
    };
    let _ = registry::select(&config);
    let mut secrets: Vec<&str> = config
        .options
        .iter()
        .filter(|(name, _)| is_secret_name(name))
        .map(|(_, value)| value.as_str())
        .chain(config.url.as_deref().and_then(url_password))
        .filter(|s| s.chars().count() >= 4 && !s.contains('*'))
        .collect();
    secrets.dedup();
    // The same configuration as it shows with its secrets already masked.
    let mut bare = config.clone();
    bare.url = config.url.as_deref().map(redact_url);
    for (name, value) in bare.options.iter_mut() {
        if is_secret_name(name) {
            *value = MASK.to_owned();
        }
    }
    hides(&secrets, &format!("{config:?}"), &format!("{bare:?}"));

    let mut backend = BackendConfig::new(config.url.clone());
    for (name, value) in &config.options {
        backend = backend.option(name.as_str(), value.as_str());
    }
    let mut bare_backend = BackendConfig::new(bare.url.clone());
    for (name, value) in &bare.options {
        bare_backend = bare_backend.option(name.as_str(), value.as_str());
    }
    hides(
        &secrets,
        &format!("{backend:?}"),
        &format!("{bare_backend:?}"),
    );
    if let Ok(settings) = RedisSettings::from_config(&backend) {
        let _ = eventbus_redis::__fuzz::check_url(&settings);
        let _ = settings.check();
        let mut bare_settings = settings.clone();
        bare_settings.url = redact_url(&settings.url);
        hides(
            &secrets,
            &format!("{settings:?}"),
            &format!("{bare_settings:?}"),
        );
    }
}

/// The password of `scheme://user:password@host…`, as the redaction finds it.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// Panics when a secret shows in `text`, as it is or escaped the way `Debug` escapes strings,
/// unless `bare` (the same output without the secrets' settings) shows it too.
fn hides(secrets: &[&str], text: &str, bare: &str) {
    for secret in secrets {
        let escaped = format!("{secret:?}");
        let escaped = &escaped[1..escaped.len() - 1];
        for form in [*secret, escaped] {
            assert!(
                bare.contains(form) || !text.contains(form),
                "a secret shows: {form} in {text}"
            );
        }
    }
}
