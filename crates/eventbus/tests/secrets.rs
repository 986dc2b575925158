//! No secret reaches a log: every backend's whole configuration, set with every kind of secret,
//! is shown (`Debug`, plain and pretty), logged through `tracing`, and made to fail a connection,
//! and none of the secret values appears anywhere in what was written.

use std::io::Write;
use std::sync::{Arc, Mutex};

use eventbus::registry::BackendConfig;
use eventbus::BusConfig;

/// Every secret value set below; none may show.
const SECRETS: &[&str] = &[
    "url-pass-Zq81",
    "api-secret-Zq82",
    "registry-secret-Zq83",
    "sasl-pass-Zq84",
    "-----BEGIN PRIVATE KEY-----Zq85",
    "key-pass-Zq86",
    "pulsar-token-Zq87",
    "oauth-creds-Zq88",
];

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kafka_config() -> BusConfig {
    BusConfig::new()
        .url("kafka://127.0.0.1:1")
        .option("EVENT_BUS_KAFKA_API_KEY", "api-key-Zq80")
        .option("EVENT_BUS_KAFKA_API_SECRET", "api-secret-Zq82")
        .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:2")
        .option("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_KEY", "reg-user")
        .option(
            "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_SECRET",
            "registry-secret-Zq83",
        )
        .option("EVENT_BUS_KAFKA_SASL_PASSWORD", "sasl-pass-Zq84")
        .option(
            "EVENT_BUS_KAFKA_SSL_KEY_PEM",
            "-----BEGIN PRIVATE KEY-----Zq85",
        )
        .option("EVENT_BUS_KAFKA_SSL_KEY_PASSWORD", "key-pass-Zq86")
}

fn redis_config() -> BusConfig {
    BusConfig::new().url("redis://user:url-pass-Zq81@127.0.0.1:1/0")
}

fn pulsar_config() -> BusConfig {
    BusConfig::new()
        .url("pulsar://127.0.0.1:1")
        .option("EVENT_BUS_PULSAR_AUTH_TOKEN", "pulsar-token-Zq87")
}

fn pulsar_oauth_config() -> BusConfig {
    BusConfig::new()
        .url("pulsar://127.0.0.1:1")
        .option(
            "EVENT_BUS_PULSAR_OAUTH2_ISSUER_URL",
            "https://issuer.invalid/",
        )
        .option(
            "EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL",
            "oauth-creds-Zq88",
        )
}

fn backend_config(config: &BusConfig) -> BackendConfig {
    let mut backend = BackendConfig::new(config.url.clone());
    for (name, value) in &config.options {
        backend = backend.option(name, value);
    }
    backend
}

#[tokio::test]
async fn no_backend_configuration_shows_or_logs_a_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut shown = String::new();
    let mut show = |what: &str, value: &dyn std::fmt::Debug| {
        let text = format!("{what}: {value:?}\n{what}: {value:#?}\n");
        tracing::info!(config = ?value, "{what}");
        shown.push_str(&text);
    };
    for config in [
        redis_config(),
        kafka_config(),
        pulsar_config(),
        pulsar_oauth_config(),
    ] {
        show("BusConfig", &config);
        let backend = backend_config(&config);
        show("BackendConfig", &backend);
        if let Ok(s) = eventbus_redis::RedisSettings::from_config(&backend) {
            show("RedisSettings", &s);
        }
        if let Ok(s) = eventbus_kafka::KafkaSettings::from_config(&backend) {
            show("KafkaSettings", &s);
        }
        if let Ok(s) = eventbus_pulsar::PulsarSettings::from_config(&backend) {
            show("PulsarSettings", &s);
        }
    }
    // Failing connections log and return errors that name the address.
    for config in [redis_config(), pulsar_config()] {
        let error = eventbus::connect(config)
            .await
            .expect_err("nothing listens on port 1");
        tracing::error!(%error, "connect failed");
        shown.push_str(&format!("{error}\n{error:?}\n"));
    }

    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("KafkaSettings"),
        "the configurations were logged: {logged}"
    );
    for secret in SECRETS {
        assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        assert!(!logged.contains(secret), "{secret} logged in:\n{logged}");
    }
    assert!(shown.contains("***"), "secrets are masked, not dropped");
}
