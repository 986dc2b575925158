//! The Pulsar client: opening it from the settings, topic names, message ids, and turning
//! Pulsar errors into the core's.

use std::time::Duration;

use eventbus_core::config::redact_url;
use eventbus_core::{Error, ErrorKind, Result};
use pulsar::authentication::oauth2::{OAuth2Authentication, OAuth2Params};
use pulsar::error::{ConnectionError, ConsumerError, ProducerError, ServiceDiscoveryError};
use pulsar::proto::MessageIdData;
use pulsar::{
    Authentication, ConnectionRetryOptions, OperationRetryOptions, Pulsar, TokioExecutor,
};

use crate::settings::{Auth, PulsarSettings};

/// The client type every part of the backend shares (it is a cheap handle).
pub(crate) type Client = Pulsar<TokioExecutor>;

/// Opens a client. A broker that does not answer fails at once with a temporary
/// [`ErrorKind::Connection`] naming its address, rather than after the client's reconnect
/// schedule.
pub(crate) async fn connect(settings: &PulsarSettings) -> Result<Client> {
    probe(settings).await?;
    // rustls (TLS, and the OAuth2 token exchange) needs one process-wide crypto provider; an
    // application may have chosen its own, which then stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = Pulsar::builder(settings.url.clone(), TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retries: settings.reconnect_attempts,
            connection_timeout: settings.connect_timeout,
            ..ConnectionRetryOptions::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: settings.operation_timeout,
            retry_delay: Duration::from_millis(500),
            max_retries: Some(settings.reconnect_attempts),
        })
        .with_allow_insecure_connection(settings.tls_allow_insecure)
        .with_tls_hostname_verification_enabled(settings.tls_hostname_verification);
    if let Some(path) = &settings.tls_trust_certs {
        builder = builder.with_certificate_chain_file(path).map_err(|e| {
            Error::new(ErrorKind::Config, "cannot read the trusted certificates")
                .with("setting", "EVENT_BUS_PULSAR_TLS_TRUST_CERTS_FILE")
                .with("path", path.display())
                .with_source(e)
        })?;
    }
    builder = match &settings.auth {
        Auth::None => builder,
        Auth::Token(token) => builder.with_auth(Authentication {
            name: "token".to_owned(),
            data: token.clone().into_bytes(),
        }),
        Auth::OAuth2 {
            issuer_url,
            credentials_url,
            audience,
            scope,
        } => builder.with_auth_provider(OAuth2Authentication::client_credentials(OAuth2Params {
            issuer_url: issuer_url.clone(),
            credentials_url: credentials_url.clone(),
            audience: audience.clone(),
            scope: scope.clone(),
        })),
    };
    builder.build().await.map_err(|e| {
        failed(ErrorKind::Connection, "connecting", e)
            .with("url", redact_url(&settings.url))
            .with(
                "hint",
                "check the URL, the broker, TLS and authentication settings",
            )
    })
}

/// A TCP connect to the service address, so that a wrong address is reported in seconds (and
/// readiness checks see a stopped broker at once).
pub(crate) async fn probe(settings: &PulsarSettings) -> Result<()> {
    let address = settings.address();
    let connect = tokio::net::TcpStream::connect(address.as_str());
    let error = |why: String| {
        Error::new(
            ErrorKind::Connection,
            format!(
                "cannot reach the Pulsar broker: {why}; check that it runs and the URL is right"
            ),
        )
        .with("address", &address)
        .temporary()
    };
    match tokio::time::timeout(settings.connect_timeout, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(error(e.to_string())),
        Err(_) => Err(error(format!(
            "no answer within {:?}",
            settings.connect_timeout
        ))),
    }
}

/// The full name of a topic: a bare name goes into the configured namespace.
pub(crate) fn full_topic(namespace: &str, topic: &str) -> String {
    if topic.contains("://") {
        topic.to_owned()
    } else {
        format!("persistent://{}/{topic}", namespace.trim_matches('/'))
    }
}

/// A message id as Pulsar prints it: `ledger:entry:partition[:batch index]`.
pub(crate) fn format_id(id: &MessageIdData) -> String {
    let partition = id.partition.unwrap_or(-1);
    // Pulsar's default batch index is -1: not part of a batch.
    match id.batch_index.filter(|b| *b >= 0) {
        Some(batch) => format!("{}:{}:{partition}:{batch}", id.ledger_id, id.entry_id),
        None => format!("{}:{}:{partition}", id.ledger_id, id.entry_id),
    }
}

/// Parses [`format_id`]'s text (for `StartPosition::At`).
pub(crate) fn parse_id(text: &str) -> Result<MessageIdData> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let number = |i: usize| parts.get(i).map(|p| p.parse::<i64>());
    let bad = || {
        Error::new(
            ErrorKind::Config,
            "a Pulsar start position is a message id `ledger:entry[:partition[:batch]]`",
        )
        .with("position", text)
    };
    let (Some(Ok(ledger)), Some(Ok(entry))) = (number(0), number(1)) else {
        return Err(bad());
    };
    if parts.len() > 4 || ledger < 0 || entry < 0 {
        return Err(bad());
    }
    let optional = |i: usize| match number(i) {
        None => Ok(None),
        Some(Ok(n)) => i32::try_from(n).map(Some).map_err(|_| bad()),
        Some(Err(_)) => Err(bad()),
    };
    Ok(MessageIdData {
        ledger_id: ledger as u64,
        entry_id: entry as u64,
        partition: optional(2)?,
        batch_index: optional(3)?,
        ..MessageIdData::default()
    })
}

/// The core error for a failed Pulsar call: `kind` says which side failed, `what` the call.
/// Lost connections and timeouts are temporary.
pub(crate) fn failed(kind: ErrorKind, what: &str, e: pulsar::Error) -> Error {
    let temporary = is_temporary(&e);
    let error = Error::new(kind, format!("Pulsar {what} failed")).with_source(e);
    if temporary {
        error.temporary()
    } else {
        error
    }
}

fn is_temporary(e: &pulsar::Error) -> bool {
    match e {
        pulsar::Error::Connection(c) => connection_temporary(c),
        pulsar::Error::Consumer(ConsumerError::Connection(c)) => connection_temporary(c),
        pulsar::Error::Consumer(ConsumerError::Io(_) | ConsumerError::ChannelFull) => true,
        pulsar::Error::Producer(ProducerError::Connection(c)) => connection_temporary(c),
        pulsar::Error::Producer(ProducerError::Io(_)) => true,
        pulsar::Error::Producer(ProducerError::Batch(inner)) => is_temporary(inner),
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(c)) => {
            connection_temporary(c)
        }
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(Some(code), _)) => {
            server_temporary(*code)
        }
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Canceled) => true,
        _ => false,
    }
}

fn connection_temporary(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::Io(_)
        | ConnectionError::Disconnected
        | ConnectionError::SlowDown
        | ConnectionError::Canceled
        | ConnectionError::Shutdown => true,
        ConnectionError::PulsarError(Some(code), _) => server_temporary(*code),
        _ => e.establish_retryable(),
    }
}

fn server_temporary(code: pulsar::proto::ServerError) -> bool {
    use pulsar::proto::ServerError;
    matches!(
        code,
        ServerError::ServiceNotReady
            | ServerError::TooManyRequests
            | ServerError::ConsumerBusy
            | ServerError::ProducerBusy
            | ServerError::ProducerBlockedQuotaExceededError
            | ServerError::PersistenceError
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_topics_go_into_the_namespace() {
        assert_eq!(
            full_topic("public/default", "dev-user-login"),
            "persistent://public/default/dev-user-login"
        );
        assert_eq!(
            full_topic("public/default", "non-persistent://a/b/c"),
            "non-persistent://a/b/c"
        );
    }

    #[test]
    fn message_ids_print_and_parse_back() {
        let id = MessageIdData {
            ledger_id: 7,
            entry_id: 42,
            partition: Some(-1),
            batch_index: Some(3),
            ..MessageIdData::default()
        };
        assert_eq!(format_id(&id), "7:42:-1:3");
        let back = parse_id("7:42:-1:3").unwrap();
        assert_eq!(
            (back.ledger_id, back.entry_id, back.batch_index),
            (7, 42, Some(3))
        );
        assert_eq!(parse_id("7:42").unwrap().partition, None);
        for bad in ["", "7", "a:b", "7:42:x", "1:2:3:4:5", "-1:2"] {
            assert_eq!(
                parse_id(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
    }
}
