//! The command line, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, shown under every `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0    done
  1    the command failed (broker unreachable, bad input, …); the message says what and where
  2    the command line is wrong (unknown flag, missing argument)
  3    a consumer started by `run` stopped on errors (too many failures in a row)
  130  interrupted before it was done (Ctrl-C)

Settings come from the same environment as the library: EVENT_BUS_URL, EVENT_BUS_BACKEND,
EVENT_BUS_TOPIC_PREFIX, EVENT_BUS_SERIALIZER, EVENT_BUS_<BACKEND>_*, …; flags win over them.";

#[derive(Debug, Parser)]
#[command(
    name = "eventbus",
    version,
    about = "Produce, inspect, replay and consume eventbus topics from a terminal",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: Connection,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the bus is; flags override the `EVENT_BUS_*` environment.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Connection URL: memory://, redis://HOST:PORT, kafka://HOST:PORT, pulsar://HOST:PORT
    /// [default: EVENT_BUS_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Backend name (memory, redis, kafka, pulsar) [default: EVENT_BUS_BACKEND, else the URL's scheme]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) backend: Option<String>,
    /// Topic prefix: topics become PREFIX-TOPIC [default: EVENT_BUS_TOPIC_PREFIX]
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) topic_prefix: Option<String>,
    /// TOML file of named consumers (see `run --help`) [default: EVENT_BUS_CLI_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish events given as JSON, one per line on standard input or with --data
    #[command(after_help = "Examples:
  echo '{\"user\":{\"id\":7,\"is_active\":true,\"pii\":{\"username\":\"ada\",\"email\":\"ada@example.org\",\"name\":\"Ada\"}}}' \\
    | eventbus produce user-login --type org.openedx.learning.auth.session.login.completed.v1
  eventbus produce orders --type org.example.order.placed.v1 --data @order.json --count 1000 --rate 200
  eventbus produce raw-topic --raw --data 'hello' --key k1")]
    Produce(Produce),
    /// Print the events of topics as JSON lines or a table
    #[command(after_help = "Examples:
  eventbus tail user-login --from earliest --max 10
  eventbus tail orders payments --filter type=org.example.order.placed.v1 --format table
  eventbus tail orders --group audit --from 2026-12-01T00:00:00Z")]
    Tail(Tail),
    /// Re-publish a time window of one topic into another, keeping keys and headers
    #[command(after_help = "Example:
  eventbus replay orders --from 2026-12-01T10:00:00Z --to 2026-12-01T11:00:00Z --into orders-replay")]
    Replay(Replay),
    /// Inspect and redrive dead letters
    #[command(subcommand)]
    Dlq(Dlq),
    /// Publish generated events of a type at a rate, and report rate and latency
    #[command(after_help = "Example:
  eventbus simulate orders --type org.example.order.placed.v1 --rate 500 --duration 30s --keys 50")]
    Simulate(Simulate),
    /// Run a consumer that this program registered by name
    #[command(
        after_help = "Named consumers are registered in code (eventbus_cli::App::consumer) and may be
configured in the TOML file given by --config:

  [consumers.billing]
  topics = [\"orders\"]
  group = \"billing\"
  concurrency = 4
  max_attempts = 5

Example:
  my-service run --name billing --group billing-eu"
    )]
    Run(Run),
    /// Print an AsyncAPI 3.0 document of the event types and named consumers
    #[command(after_help = "Example:
  eventbus asyncapi --format yaml > asyncapi.yaml")]
    Asyncapi(Asyncapi),
    /// List the event types this program knows, with their schemas
    Types(Types),
    /// Read the journal of produced and consumed events, and re-publish from it
    #[cfg(feature = "journal")]
    #[command(subcommand)]
    Journal(Journal),
    /// Serve the web dashboard over the journal, with this program's named consumers
    #[cfg(feature = "journal")]
    #[command(after_help = "Example:
  EVENT_BUS_DASHBOARD_TOKEN=s3cret eventbus dashboard --listen 127.0.0.1:8088")]
    Dashboard(DashboardArgs),
}

/// Where the journal is.
#[cfg(feature = "journal")]
#[derive(Debug, Args, Clone)]
pub(crate) struct JournalUrl {
    /// Journal database: sqlite://FILE or postgres://USER@HOST/DB
    #[arg(
        long = "journal",
        env = "EVENT_BUS_JOURNAL_URL",
        default_value = "sqlite://eventbus.db"
    )]
    pub(crate) journal_url: String,
}

#[cfg(feature = "journal")]
#[derive(Debug, Subcommand)]
pub(crate) enum Journal {
    /// Journal rows, newest first, as JSON lines or a table
    #[command(after_help = "Example:
  eventbus journal list --status dead-lettered --format table")]
    List(JournalList),
    /// Every row of one event: the producer's and each consumer group's
    Show(JournalShow),
    /// Publish a journalled event again to its topic, with its key and headers
    #[command(after_help = "Example:
  eventbus journal retrigger 8e9a4d23-de80-4b98-aa72-3d9190ab3a03 --new-id")]
    Retrigger(JournalRetrigger),
}

#[cfg(feature = "journal")]
#[derive(Debug, Args)]
pub(crate) struct JournalList {
    #[command(flatten)]
    pub(crate) journal: JournalUrl,
    /// Only this event type
    #[arg(long = "type")]
    pub(crate) event_type: Option<String>,
    /// Only this full topic
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Only this status (published, publish-failed, handled, retried, dead-lettered, skipped)
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Only this key
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Event ids starting with this
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// At most this many rows
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: TailFormat,
}

#[cfg(feature = "journal")]
#[derive(Debug, Args)]
pub(crate) struct JournalShow {
    #[command(flatten)]
    pub(crate) journal: JournalUrl,
    /// The event id (ce_id)
    pub(crate) id: String,
}

#[cfg(feature = "journal")]
#[derive(Debug, Args)]
pub(crate) struct JournalRetrigger {
    #[command(flatten)]
    pub(crate) journal: JournalUrl,
    /// The event id (ce_id)
    pub(crate) id: String,
    /// Give it a new id (and time): a new event with the same data
    #[arg(long, conflicts_with = "same_id", required_unless_present = "same_id")]
    pub(crate) new_id: bool,
    /// Keep its id: consumers that deduplicate by id will skip it
    #[arg(long)]
    pub(crate) same_id: bool,
}

#[cfg(feature = "journal")]
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    pub(crate) journal: JournalUrl,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub(crate) listen: String,
    /// Require `Authorization: Bearer TOKEN`
    #[arg(long, env = "EVENT_BUS_DASHBOARD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Start the named consumers at once (else from the consumers page)
    #[arg(long)]
    pub(crate) start_consumers: bool,
}

/// How event payloads are read and written.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Format {
    /// Event type name; a type this program registered, or with --schema any type
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub(crate) event_type: Option<String>,
    /// Avro schema file (.avsc) of the type, for types this program does not know
    #[arg(long, value_name = "FILE", requires = "event_type")]
    pub(crate) schema: Option<PathBuf>,
    /// Minor version written into the metadata with --schema
    #[arg(long, default_value_t = 0, requires = "schema")]
    pub(crate) minor_version: u32,
    /// Dotted path of the field whose value keys the events (with --schema), e.g. user.id
    #[arg(long, value_name = "PATH", requires = "schema")]
    pub(crate) key_field: Option<String>,
    /// Payloads are bytes (text) sent or shown as they are, without metadata
    #[arg(long, conflicts_with_all = ["event_type", "schema"])]
    pub(crate) raw: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Produce {
    /// Topic, without prefix
    pub(crate) topic: String,
    #[command(flatten)]
    pub(crate) format: Format,
    /// One event as JSON (or text with --raw); `@FILE` reads it from a file
    #[arg(long, short = 'd', value_name = "JSON")]
    pub(crate) data: Option<String>,
    /// Key of every event, instead of the type's key field
    #[arg(long, short = 'k')]
    pub(crate) key: Option<String>,
    /// Extra header NAME=VALUE (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub(crate) headers: Vec<(String, String)>,
    /// Send each event this many times
    #[arg(long, short = 'n', default_value_t = 1)]
    pub(crate) count: u64,
    /// At most this many events per second (0: as fast as the broker takes them)
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Print nothing per event, only the summary
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

/// Where reading starts.
#[derive(Debug, Clone)]
pub(crate) enum From {
    Earliest,
    Latest,
    Time(chrono::DateTime<chrono::Utc>),
    Position(String),
}

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub(crate) enum TailFormat {
    /// One JSON object per line: topic, position, key, metadata, data
    #[default]
    Json,
    /// A readable table
    Table,
}

#[derive(Debug, Args)]
pub(crate) struct Tail {
    /// Topics, without prefix
    #[arg(required = true)]
    pub(crate) topics: Vec<String>,
    /// Read as this consumer group and acknowledge what was shown; without it a throw-away
    /// group reads and no real group's position moves
    #[arg(long, short = 'g')]
    pub(crate) group: Option<String>,
    /// earliest, latest, a time (RFC 3339, e.g. 2026-12-01T10:00:00Z) or a backend position
    #[arg(long, value_parser = parse_from)]
    pub(crate) from: Option<From>,
    /// Only events whose NAME has VALUE (type, key, source, id, or a header name); repeatable
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub(crate) filter: Vec<(String, String)>,
    /// Stop after this many events
    #[arg(long)]
    pub(crate) max: Option<u64>,
    /// Stop when nothing came for this long (e.g. 5s)
    #[arg(long, value_parser = parse_duration)]
    pub(crate) idle: Option<Duration>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: TailFormat,
    /// How to read payloads of a type this program does not know (--type with --schema);
    /// registered types and the schema registry need nothing
    #[command(flatten)]
    pub(crate) payload: Format,
}

#[derive(Debug, Args)]
pub(crate) struct Replay {
    /// Topic to read, without prefix
    pub(crate) topic: String,
    /// Start of the window (RFC 3339)
    #[arg(long, value_parser = parse_time)]
    pub(crate) from: chrono::DateTime<chrono::Utc>,
    /// End of the window, exclusive (RFC 3339) [default: now]
    #[arg(long, value_parser = parse_time)]
    pub(crate) to: Option<chrono::DateTime<chrono::Utc>>,
    /// Topic to publish into, without prefix
    #[arg(long)]
    pub(crate) into: String,
    /// Stop when nothing came for this long
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) idle: Duration,
    /// Count what would be re-published without publishing
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Dlq {
    /// List dead letters with their reason, error, attempts and origin
    #[command(after_help = "Example:
  eventbus dlq list orders.dlq --format table")]
    List(DlqList),
    /// Publish dead letters back to their original topic
    #[command(after_help = "Example:
  eventbus dlq redrive orders.dlq --filter reason=receiver-failed --dry-run")]
    Redrive(DlqRedrive),
}

#[derive(Debug, Args)]
pub(crate) struct DlqList {
    /// Dead-letter topic, without prefix (e.g. orders.dlq)
    pub(crate) topic: String,
    /// Only dead letters whose NAME has VALUE (reason, type, group, original_topic, …)
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub(crate) filter: Vec<(String, String)>,
    /// Stop when nothing came for this long
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) idle: Duration,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: TailFormat,
}

#[derive(Debug, Args)]
pub(crate) struct DlqRedrive {
    /// Dead-letter topic, without prefix (e.g. orders.dlq)
    pub(crate) topic: String,
    /// Only dead letters whose NAME has VALUE (reason, type, group, original_topic, …)
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub(crate) filter: Vec<(String, String)>,
    /// Count what would be redriven, and move nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The group that tracks what was redriven, so a second redrive skips it
    #[arg(long, default_value = "eventbus-redrive")]
    pub(crate) group: String,
    /// Stop when nothing came for this long
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub(crate) idle: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct Simulate {
    /// Topic, without prefix
    pub(crate) topic: String,
    #[command(flatten)]
    pub(crate) format: Format,
    /// Events per second
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// How long to run (e.g. 30s, 2m)
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) duration: Duration,
    /// Spread the events over this many distinct keys
    #[arg(long, default_value_t = 16)]
    pub(crate) keys: u64,
    /// Random seed, for the same events again
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Sends in flight at once
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
}

#[derive(Debug, Args)]
pub(crate) struct Run {
    /// Name the consumer was registered under
    #[arg(long)]
    pub(crate) name: String,
    /// Consumer group, instead of the configured one
    #[arg(long, short = 'g')]
    pub(crate) group: Option<String>,
    /// Topics, instead of the configured ones
    #[arg(long, num_args = 1..)]
    pub(crate) topics: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum DocFormat {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct Asyncapi {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: DocFormat,
    /// Document title [default: the service name]
    #[arg(long)]
    pub(crate) title: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Types {
    /// Print each type's Avro schema too
    #[arg(long)]
    pub(crate) schemas: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 5s or 2m: {e}"))
}

pub(crate) fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2026-12-01T10:00:00Z: {e}"))
}

fn parse_from(s: &str) -> Result<From, String> {
    Ok(match s {
        "earliest" | "beginning" => From::Earliest,
        "latest" | "end" => From::Latest,
        _ => match parse_time(s) {
            Ok(t) => From::Time(t),
            Err(_) => From::Position(s.to_owned()),
        },
    })
}
