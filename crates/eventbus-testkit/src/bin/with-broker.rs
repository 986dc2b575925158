//! Runs a command against a broker started by the testkit fixture, then stops the broker.
//!
//! ```text
//! cargo run -p eventbus-testkit --features fixtures --bin with-broker -- redis -- cargo run --example quickstart --features redis
//! ```
//!
//! The command gets `EVENT_BUS_URL` pointing at the broker; its exit code is passed on. This is
//! how the test script runs the examples against real brokers without starting any by hand.
//!
//! `kafka` starts tansu and, when the testkit is built with its `registry` feature, the schema
//! registry fixture too, exported as `EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL`. `pulsar` starts
//! pulsar-lite with the frame proxy in front (see `eventbus_testkit::pulsar_proxy`) and points
//! `EVENT_BUS_URL` at the proxy.

use std::process::ExitCode;

use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::pulsar_proxy::PulsarFrameProxy;

const USAGE: &str = "usage: with-broker <redis|kafka|pulsar> -- <command> [args…]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (broker, command) = match args.split_first() {
        Some((broker, rest))
            if rest.first().map(String::as_str) == Some("--") && rest.len() > 1 =>
        {
            (broker.as_str(), &rest[1..])
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (spec, scheme) = match broker {
        "redis" => (BrokerSpec::redis(), "redis"),
        "kafka" => (BrokerSpec::tansu(), "kafka"),
        "pulsar" => (BrokerSpec::pulsar_lite(), "pulsar"),
        other => {
            eprintln!("with-broker: unknown broker `{other}`; {USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut server = match BrokerProcess::start(spec).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("with-broker: cannot start {broker}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The `pulsar` crate needs the frame proxy in front of pulsar-lite.
    let proxy = match broker {
        "pulsar" => match PulsarFrameProxy::start(server.addr()).await {
            Ok(proxy) => Some(proxy),
            Err(e) => {
                eprintln!("with-broker: cannot start the Pulsar frame proxy: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let url = match &proxy {
        Some(proxy) => proxy.url(),
        None => format!("{scheme}://{}", server.addr()),
    };
    eprintln!("with-broker: {broker} at {url}");
    let mut child = tokio::process::Command::new(&command[0]);
    child.args(&command[1..]).env("EVENT_BUS_URL", &url);
    #[cfg(feature = "registry")]
    let _registry = if broker == "kafka" {
        let registry = match eventbus_testkit::registry::RegistryServer::start().await {
            Ok(registry) => registry,
            Err(e) => {
                eprintln!("with-broker: cannot start the schema registry fixture: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("with-broker: schema registry at {}", registry.url());
        child.env("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", registry.url());
        // tansu 0.6 cannot fetch from inside a record batch: one message per batch.
        child.env("EVENT_BUS_KAFKA_PRODUCER_BATCH_NUM_MESSAGES", "1");
        Some(registry)
    } else {
        None
    };
    let status = child.status().await;
    drop(proxy);
    if let Err(e) = server.stop().await {
        eprintln!("with-broker: stopping {broker} failed: {e}");
    }
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("with-broker: `{}` failed: {s}", command.join(" "));
            ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("with-broker: cannot run `{}`: {e}", command[0]);
            ExitCode::FAILURE
        }
    }
}
