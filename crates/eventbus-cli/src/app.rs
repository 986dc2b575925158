//! [`App`]: the commands, with the event types and named consumers of the program that runs them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use eventbus::{Bus, BusConfig, Consumer};

use crate::args::{Cli, Command, Connection};
use crate::commands;
use crate::config::{ConsumerConfig, FileConfig};
use crate::error::CliError;

type Build = Arc<dyn Fn(Consumer) -> Consumer + Send + Sync>;

/// A consumer registered by name, runnable with `run --name`.
#[derive(Clone)]
pub(crate) struct Named {
    pub(crate) topics: Vec<String>,
    pub(crate) group: String,
    pub(crate) build: Build,
}

impl fmt::Debug for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Named")
            .field("topics", &self.topics)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// The command line of one program: its name, its named consumers, and how it reaches the bus.
#[derive(Debug, Clone)]
pub struct App {
    name: String,
    consumers: BTreeMap<String, Named>,
    config: Option<BusConfig>,
    bus: Option<Bus>,
}

/// Everything a command needs.
pub(crate) struct Session<'a> {
    pub(crate) bus: Bus,
    pub(crate) app: &'a App,
    pub(crate) file: FileConfig,
}

impl App {
    /// The commands for the program `name` (shown in `--help` and AsyncAPI titles).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            consumers: BTreeMap::new(),
            config: None,
            bus: None,
        }
    }

    /// Registers a consumer that `run --name NAME` starts: it reads `topics` (without prefix)
    /// as `group`, unless the command line or the `--config` file says otherwise, and `build`
    /// adds its receivers and layers.
    #[must_use]
    pub fn consumer(
        mut self,
        name: impl Into<String>,
        topics: &[&str],
        group: impl Into<String>,
        build: impl Fn(Consumer) -> Consumer + Send + Sync + 'static,
    ) -> Self {
        self.consumers.insert(
            name.into(),
            Named {
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                group: group.into(),
                build: Arc::new(build),
            },
        );
        self
    }

    /// Uses this configuration instead of the `EVENT_BUS_*` environment (flags still win).
    #[must_use]
    pub fn bus_config(mut self, config: BusConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Runs the commands on this bus instead of connecting one (flags naming a bus are then
    /// refused). With an in-memory bus this is how one process both produces and tails.
    #[must_use]
    pub fn bus(mut self, bus: Bus) -> Self {
        self.bus = Some(bus);
        self
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn named(&self) -> &BTreeMap<String, Named> {
        &self.consumers
    }

    /// Parses the process's arguments, runs the command, prints errors, and returns the exit
    /// code (see `--help`). Logs go to standard error, filtered by `RUST_LOG` (default `warn`).
    pub async fn run(self) -> ExitCode {
        init_logs();
        let mut stdout = std::io::stdout();
        match self.run_from(std::env::args_os(), &mut stdout).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let _ = stdout.flush();
                match &error {
                    // clap's own text (usage, suggestions) is complete as it is.
                    CliError::Usage(text) if text.starts_with("error:") => eprint!("{text}"),
                    _ => eprintln!("error: {error}"),
                }
                error.exit_code()
            }
        }
    }

    /// Runs the command `args` asks for (the first item is the program name), writing results
    /// to `out`. `--help` and `--version` write there too and return `Ok`.
    pub async fn run_from<I, T>(
        &self,
        args: I,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) if !e.use_stderr() => {
                write!(out, "{}", e.render())?;
                return Ok(());
            }
            Err(e) => return Err(CliError::Usage(e.render().to_string())),
        };
        let file = match cli
            .connection
            .config
            .clone()
            .or_else(|| std::env::var_os("EVENT_BUS_CLI_CONFIG").map(Into::into))
        {
            Some(path) => FileConfig::load(&path)?,
            None => FileConfig::default(),
        };
        if let Command::Asyncapi(args) = &cli.command {
            // A description needs no broker.
            let config = self.config_for(&cli.connection)?;
            return commands::asyncapi::run(self, &file, &config, args, out).await;
        }
        if let Command::Types(args) = &cli.command {
            return commands::types::run(args, out);
        }
        let bus = self.connect(&cli.connection).await?;
        let session = Session {
            bus,
            app: self,
            file,
        };
        let result = commands::run(&session, cli.command, out).await;
        if self.bus.is_none() {
            if let Err(e) = session.bus.close().await {
                tracing::warn!(error = %e, "closing the bus failed");
            }
        }
        result
    }

    fn config_for(&self, flags: &Connection) -> Result<BusConfig, CliError> {
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => BusConfig::from_env()?,
        };
        if let Some(url) = &flags.url {
            config = config.url(url);
        }
        if let Some(backend) = &flags.backend {
            config = config.backend(backend);
        }
        if let Some(prefix) = &flags.topic_prefix {
            config = config.topic_prefix(prefix);
        }
        Ok(config)
    }

    async fn connect(&self, flags: &Connection) -> Result<Bus, CliError> {
        if let Some(bus) = &self.bus {
            if flags.url.is_some() || flags.backend.is_some() || flags.topic_prefix.is_some() {
                return Err(CliError::Usage(
                    "this program runs on a bus of its own; --url, --backend and --topic-prefix do not apply".into(),
                ));
            }
            return Ok(bus.clone());
        }
        let config = self.config_for(flags)?;
        Ok(eventbus::connect(config).await?)
    }
}

impl Session<'_> {
    /// The named consumer `name`, with the file's settings and the command line's overrides.
    pub(crate) fn consumer(
        &self,
        name: &str,
        group: Option<&str>,
        topics: &[String],
    ) -> Result<Consumer, CliError> {
        let named = self.app.named().get(name).ok_or_else(|| {
            let known: Vec<&str> = self.app.named().keys().map(String::as_str).collect();
            CliError::Usage(format!(
                "no consumer is registered as `{name}` in {}; {}",
                self.app.name(),
                if known.is_empty() {
                    "it registers none (register consumers with eventbus_cli::App::consumer in your own binary)".to_owned()
                } else {
                    format!("it registers: {}", known.join(", "))
                }
            ))
        })?;
        let file = self.file.consumers.get(name).cloned().unwrap_or_default();
        let (topics, group) = resolve(named, &file, group, topics);
        let Some((first, rest)) = topics.split_first() else {
            return Err(CliError::Usage(format!(
                "consumer `{name}` has no topics; give --topics"
            )));
        };
        Ok(build_named(
            &self.bus, name, named, &file, &group, first, rest,
        ))
    }
}

/// A named consumer on `bus`: its topics, group, a member name that survives restarts, the
/// file's settings, then the receivers its code adds.
pub(crate) fn build_named(
    bus: &eventbus::Bus,
    name: &str,
    named: &Named,
    file: &ConsumerConfig,
    group: &str,
    first: &str,
    rest: &[String],
) -> Consumer {
    let mut consumer = bus.consumer(first, group);
    for topic in rest {
        consumer = consumer.topic(topic);
    }
    let consumer = consumer
        .name(format!("{name}-{}", eventbus::metadata::host_name()))
        .configure(|s| file.apply(s));
    (named.build)(consumer)
}

/// Topics and group: the command line's, else the file's, else the code's.
pub(crate) fn resolve(
    named: &Named,
    file: &ConsumerConfig,
    group: Option<&str>,
    topics: &[String],
) -> (Vec<String>, String) {
    let topics = if topics.is_empty() {
        file.topics.clone().unwrap_or_else(|| named.topics.clone())
    } else {
        topics.to_vec()
    };
    let group = group
        .map(str::to_owned)
        .or_else(|| file.group.clone())
        .unwrap_or_else(|| named.group.clone());
    (topics, group)
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
