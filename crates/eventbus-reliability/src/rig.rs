//! A backend ready for a scenario: its broker process, the proxies in front, the settings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use eventbus::{Bus, BusConfig};
use eventbus_kafka::mock::MockKafka;
use eventbus_testkit::fault_proxy::FaultProxy;
use eventbus_testkit::fixture::{BrokerProcess, BrokerSpec};
use eventbus_testkit::pulsar_proxy::{PulsarFrameProxy, PulsarLite};
use eventbus_testkit::registry::RegistryServer;

/// The backends the campaign covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The in-memory bus, inside the process.
    Memory,
    /// Redis Streams on a fixture redis-server (append-only file, fsync always).
    Redis,
    /// Kafka on tansu with the schema-registry fixture; on rdkafka's mock cluster where the
    /// broker must keep its data across a restart (tansu's build here keeps it in memory) or
    /// evict a member that died (tansu 0.6 does not).
    Kafka,
    /// Pulsar on pulsar-lite (RocksDB) behind the testkit's frame proxy, with Shared
    /// subscriptions (see [`Rig::start`]).
    Pulsar,
}

impl Backend {
    /// Whether the test broker can hold confirmed events back until a consumer leaves or
    /// joins, after network faults and, rarely, without them: pulsar-lite 0.2 (RELIABILITY.md,
    /// finding 4). Real Pulsar dispatches on the consumer's permits.
    pub fn holds_back_messages(self) -> bool {
        self == Backend::Pulsar
    }

    /// Whether the test broker keeps a consumer whose connection was reset, with the messages
    /// it had out, for as long as it runs: pulsar-lite 0.2 (RELIABILITY.md, finding 4). Its
    /// side of a reset connection is then closed in order, as a broker's kernel would see a
    /// client that went away, so that the group gets those messages back.
    pub fn keeps_consumers_of_reset_connections(self) -> bool {
        self == Backend::Pulsar
    }

    /// Every backend, in table order.
    pub const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::Redis,
        Backend::Kafka,
        Backend::Pulsar,
    ];

    /// The short name used in the table and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Kafka => "kafka",
            Backend::Pulsar => "pulsar",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|b| b.name() == s) {
            Some(b) => Ok(b),
            None => bail!("unknown backend `{s}`; known: memory, redis, kafka, pulsar"),
        }
    }
}

/// Whether clients reach the broker through a [`FaultProxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to the broker (or the frame proxy, on Pulsar).
    Direct,
    /// Through a fault proxy the scenario controls.
    Faulty,
}

/// A running backend; see the [module documentation](self). Everything stops on drop.
pub struct Rig {
    backend: Backend,
    vars: Vec<(String, String)>,
    broker: Option<BrokerProcess>,
    frame_proxy: Option<PulsarFrameProxy>,
    fault: Option<FaultProxy>,
    mock: Option<MockKafka>,
    _registry: Option<RegistryServer>,
}

impl fmt::Debug for Rig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rig")
            .field("backend", &self.backend)
            .field("vars", &self.vars)
            .finish_non_exhaustive()
    }
}

/// Settings every Kafka rig shares: quick rebalances, one message per batch for tansu 0.6
/// (it cannot fetch from inside a record batch), four partitions.
const KAFKA_VARS: [(&str, &str); 5] = [
    ("EVENT_BUS_KAFKA_SESSION_TIMEOUT_MS", "6000"),
    ("EVENT_BUS_KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
    ("EVENT_BUS_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS", "1000"),
    ("EVENT_BUS_KAFKA_PRODUCER_BATCH_NUM_MESSAGES", "1"),
    ("EVENT_BUS_KAFKA_TOPIC_PARTITIONS", "4"),
];

impl Rig {
    /// Starts `backend`'s broker (nothing for memory), with a fault proxy in front when `path`
    /// is [`Path::Faulty`].
    pub async fn start(backend: Backend, path: Path) -> anyhow::Result<Self> {
        let mut rig = Self::empty(backend);
        let url = match backend {
            Backend::Memory => {
                if path == Path::Faulty {
                    bail!("the in-memory bus has no network to break");
                }
                format!("memory://reliability-{}", fastrand::u64(..))
            }
            Backend::Redis => {
                let broker = BrokerProcess::start(BrokerSpec::redis()).await?;
                let addr = rig.maybe_proxy(path, None, broker.addr()).await?;
                rig.broker = Some(broker);
                // A member that dies leaves its entries pending: others claim them after 2 s.
                rig.set("EVENT_BUS_REDIS_CLAIM_IDLE_MS", "2000");
                rig.set("EVENT_BUS_REDIS_CLAIM_INTERVAL_MS", "500");
                format!("redis://{addr}")
            }
            Backend::Kafka => {
                let spec = match path {
                    Path::Direct => BrokerSpec::tansu(),
                    Path::Faulty => BrokerSpec::tansu_behind_proxy(),
                };
                let broker = BrokerProcess::start(spec).await?;
                let advertised = broker.extra_ports().first().copied();
                let addr = rig.maybe_proxy(path, advertised, broker.addr()).await?;
                rig.broker = Some(broker);
                rig.kafka_vars().await?;
                format!("kafka://{addr}")
            }
            Backend::Pulsar => {
                let broker = BrokerProcess::start(BrokerSpec::pulsar_lite()).await?;
                // The fault proxy goes between the frame proxy and the broker: the frame proxy
                // names itself in lookup answers, so clients never bypass it.
                let addr = rig.maybe_proxy(path, None, broker.addr()).await?;
                let proxy = PulsarFrameProxy::start(addr).await?;
                let url = proxy.url();
                let lite = PulsarLite { broker, proxy };
                lite.wait_ready().await?;
                let PulsarLite { broker, proxy } = lite;
                rig.broker = Some(broker);
                rig.frame_proxy = Some(proxy);
                // pulsar-lite 0.2 does not hand a Key_Shared subscription's messages on once a
                // consumer of it is gone or a reader joins late (measured in RELIABILITY.md:
                // the new member stalls for good), so the campaign reads with Shared, which
                // pulsar-lite serves right. The backend's default stays Key_Shared.
                rig.set("EVENT_BUS_PULSAR_SUBSCRIPTION_TYPE", "Shared");
                url
            }
        };
        rig.set("EVENT_BUS_URL", &url);
        Ok(rig)
    }

    /// Kafka on rdkafka's mock cluster, whose brokers keep their data while down and which
    /// expires the session of a group member that died: the stand-in for tansu in the restart
    /// and crash scenarios. Its port is real TCP, so worker processes reach it too.
    pub async fn start_kafka_mock() -> anyhow::Result<Self> {
        let mock = MockKafka::start(1)?;
        let mut rig = Self::empty(Backend::Kafka);
        rig.kafka_vars().await?;
        rig.set("EVENT_BUS_URL", &format!("kafka://{}", mock.bootstrap()));
        rig.set("EVENT_BUS_KAFKA_CREATE_TOPICS", "false");
        rig.set("EVENT_BUS_KAFKA_ALLOW_AUTO_CREATE_TOPICS", "true");
        rig.mock = Some(mock);
        Ok(rig)
    }

    fn empty(backend: Backend) -> Self {
        Self {
            backend,
            vars: Vec::new(),
            broker: None,
            frame_proxy: None,
            fault: None,
            mock: None,
            _registry: None,
        }
    }

    async fn kafka_vars(&mut self) -> anyhow::Result<()> {
        let registry = RegistryServer::start().await?;
        self.set("EVENT_BUS_KAFKA_SCHEMA_REGISTRY_URL", &registry.url());
        for (name, value) in KAFKA_VARS {
            self.set(name, value);
        }
        self._registry = Some(registry);
        Ok(())
    }

    /// Starts a fault proxy on `port` (or a free one) in front of `upstream` when asked;
    /// returns the address clients should use.
    async fn maybe_proxy(
        &mut self,
        path: Path,
        port: Option<u16>,
        upstream: String,
    ) -> anyhow::Result<String> {
        if path == Path::Direct {
            return Ok(upstream);
        }
        let proxy = FaultProxy::start_on(port.unwrap_or(0), &upstream).await?;
        let addr = proxy.addr().to_string();
        self.fault = Some(proxy);
        Ok(addr)
    }

    /// Sets one `EVENT_BUS_*` variable for buses and worker processes of this rig.
    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_owned(), value.to_owned()));
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `EVENT_BUS_*` variables a bus (or a worker process's environment) needs.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The configuration of a bus on this rig, with `service` as its service name.
    pub fn config(&self, service: &str) -> anyhow::Result<BusConfig> {
        let config = BusConfig::from_vars(self.vars.iter().cloned())?;
        Ok(config.service_name(service))
    }

    /// Connects a bus on this rig, `tweak`ing its configuration first.
    pub async fn connect(
        &self,
        service: &str,
        tweak: impl FnOnce(BusConfig) -> BusConfig,
    ) -> anyhow::Result<Bus> {
        let config = tweak(self.config(service)?);
        let bus = eventbus::connect(config).await;
        bus.with_context(|| format!("connect to {} ({:?})", self.backend, self.vars))
    }

    /// The fault proxy, on a rig started with [`Path::Faulty`].
    pub fn fault(&self) -> anyhow::Result<&FaultProxy> {
        self.fault.as_ref().context("this rig has no fault proxy")
    }

    /// Whether [`Rig::stop_broker`] and [`Rig::start_broker`] keep the broker's data: a
    /// redis-server with its append-only file, pulsar-lite with RocksDB, the Kafka mock cluster.
    pub fn survives_restart(&self) -> bool {
        match self.backend {
            Backend::Memory => false,
            Backend::Kafka => self.mock.is_some(),
            Backend::Redis | Backend::Pulsar => self.broker.is_some(),
        }
    }

    /// Stops the broker (every broker of the mock cluster); clients see it gone.
    pub async fn stop_broker(&mut self) -> anyhow::Result<()> {
        if let Some(mock) = &self.mock {
            mock.down();
            return Ok(());
        }
        match &mut self.broker {
            Some(broker) => Ok(broker.stop().await?),
            None => bail!("{} has no broker to stop", self.backend),
        }
    }

    /// Starts the stopped broker again on the same port with the same data.
    pub async fn start_broker(&mut self) -> anyhow::Result<()> {
        if let Some(mock) = &self.mock {
            mock.up();
            return Ok(());
        }
        let Some(broker) = &mut self.broker else {
            bail!("{} has no broker to start", self.backend);
        };
        broker.restart().await?;
        if let Some(proxy) = self.frame_proxy.take() {
            // pulsar-lite accepts connections a moment before it answers them.
            let lite = PulsarLite {
                broker: self.broker.take().context("the broker is there")?,
                proxy,
            };
            let ready = lite.wait_ready().await;
            let PulsarLite { broker, proxy } = lite;
            self.broker = Some(broker);
            self.frame_proxy = Some(proxy);
            ready?;
        }
        Ok(())
    }

    /// The end of the broker's log, for a failure message.
    pub fn log_tail(&self) -> String {
        match &self.broker {
            Some(broker) => broker.log_tail(30),
            None => String::new(),
        }
    }
}

/// Waits until `ledger` is complete, for at most `limit`; gives up early, returning `false`, once
/// nothing new was received for `quiet`.
pub async fn wait_until_complete_or_quiet(
    ledger: &crate::ledger::Ledger,
    limit: Duration,
    quiet: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let (mut seen, mut since) = (ledger.received_count(), tokio::time::Instant::now());
    while !ledger.complete() {
        let now = tokio::time::Instant::now();
        if now >= deadline || now - since >= quiet {
            return false;
        }
        let received = ledger.received_count();
        if received != seen {
            (seen, since) = (received, now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Waits until `done` holds, checking every 50 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
