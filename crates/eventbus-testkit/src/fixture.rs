//! A fixture that runs a real broker process for integration tests.
//!
//! [`BrokerProcess::start`] launches the program of a [`BrokerSpec`] on a free loopback port
//! with a private temporary data directory, waits until the port accepts TCP connections and
//! stops the process on drop. The broker's stdout and stderr go to `broker.log` in the data
//! directory; when a test panics the directory is kept and the end of the log is printed, so a
//! failing CI run shows why the broker misbehaved.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventbus_core::{Error, ErrorKind, Result};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::process::{self, StopSignal};

const LOG_FILE: &str = "broker.log";
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const STOP_GRACE: Duration = Duration::from_secs(10);
const ERROR_LOG_LINES: usize = 20;
const PANIC_LOG_LINES: usize = 40;

/// What a [`BrokerSpec::args`] function gets to build the broker's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchContext {
    /// The port clients connect to; readiness is probed here.
    pub port: u16,
    /// [`BrokerSpec::extra_ports`] further free ports, for metrics, admin APIs and the like.
    pub extra_ports: Vec<u16>,
    /// The broker's private data directory; it is the same on every restart of one fixture.
    pub data_dir: PathBuf,
}

/// How to launch one kind of broker.
#[derive(Debug, Clone)]
pub struct BrokerSpec {
    /// Short name used in messages and the data directory's name, e.g. `redis`.
    pub name: &'static str,
    /// The executable, looked up on `PATH` unless it contains a slash, e.g. `redis-server`.
    pub program: String,
    /// Builds the arguments; gets the ports and data directory chosen for this broker.
    pub args: fn(&LaunchContext) -> Vec<String>,
    /// How many free ports besides the main one the broker needs (see [`LaunchContext`]).
    pub extra_ports: usize,
    /// How long the broker may take until its main port accepts connections.
    pub startup_timeout: Duration,
    /// What to run when the program is missing, e.g. `apt-get install redis-server`.
    pub install_hint: &'static str,
}

impl BrokerSpec {
    /// A `redis-server` with append-only persistence fsynced on every write, so that data
    /// survives [`BrokerProcess::restart`], and logging to stdout, which the fixture captures.
    pub fn redis() -> Self {
        Self {
            name: "redis",
            program: "redis-server".to_owned(),
            args: redis_args,
            extra_ports: 0,
            startup_timeout: Duration::from_secs(10),
            install_hint: "apt-get install redis-server",
        }
    }
}

impl BrokerSpec {
    /// A `tansu` broker (Kafka protocol) keeping its data in memory: it does not survive a
    /// restart. Topics are not created automatically; create them with the admin API.
    pub fn tansu() -> Self {
        Self {
            name: "tansu",
            program: "tansu".to_owned(),
            args: tansu_args,
            extra_ports: 0,
            startup_timeout: Duration::from_secs(30),
            install_hint: "cargo install --locked tansu --features dynostore",
        }
    }
}

impl BrokerSpec {
    /// A `pulsar-lite` broker (Pulsar protocol, from the Python package `pulsar-lite`) keeping
    /// its data in RocksDB in the data directory, so it survives a restart. Its metrics
    /// endpoint, which would take port 8080, is switched off.
    ///
    /// The program is `$PULSAR_LITE_BINARY` when set, else `pulsar-lite` on `PATH`, else the
    /// binary inside the installed Python package. Clients built on the `pulsar` crate need
    /// [`PulsarFrameProxy`](crate::pulsar_proxy::PulsarFrameProxy) in front of it.
    pub fn pulsar_lite() -> Self {
        Self {
            name: "pulsar-lite",
            program: pulsar_lite_program(),
            args: pulsar_lite_args,
            extra_ports: 0,
            startup_timeout: Duration::from_secs(30),
            install_hint: "pip install pulsar-lite",
        }
    }
}

fn pulsar_lite_program() -> String {
    if let Some(path) = std::env::var_os("PULSAR_LITE_BINARY") {
        return path.to_string_lossy().into_owned();
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("pulsar-lite").is_file())
    });
    if on_path {
        return "pulsar-lite".to_owned();
    }
    // pip puts the broker inside the package, not on PATH.
    let finder = "from pulsar_lite.binary_finder import find_pulsar_lite_binary as f; print(f())";
    std::process::Command::new("python3")
        .args(["-c", finder])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|path| path.trim().to_owned())
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "pulsar-lite".to_owned())
}

fn pulsar_lite_args(ctx: &LaunchContext) -> Vec<String> {
    // The broker reads a TOML file only; the one setting needed is metrics off. Should the
    // write fail, the broker still starts, with metrics on port 8080.
    let config = ctx.data_dir.join("pulsar-lite.toml");
    if let Err(e) = std::fs::write(&config, "[metrics]\nenabled = false\n") {
        tracing::warn!(error = %e, "cannot write the pulsar-lite configuration");
    }
    [
        "--config".to_owned(),
        config.display().to_string(),
        "--addr".to_owned(),
        format!("127.0.0.1:{}", ctx.port),
        "--db-path".to_owned(),
        ctx.data_dir.join("db").display().to_string(),
    ]
    .to_vec()
}

impl BrokerSpec {
    /// [`BrokerSpec::tansu`] telling clients to connect to its first extra port instead of the
    /// one it listens on: put a [`FaultProxy`](crate::fault_proxy::FaultProxy) there
    /// (`FaultProxy::start_on(broker.extra_ports()[0], broker.addr())`), or Kafka clients would
    /// leave the proxy after their first metadata answer.
    pub fn tansu_behind_proxy() -> Self {
        Self {
            args: tansu_args_behind_proxy,
            extra_ports: 1,
            ..Self::tansu()
        }
    }
}

fn tansu_args(ctx: &LaunchContext) -> Vec<String> {
    tansu_command(ctx.port, ctx.port)
}

fn tansu_args_behind_proxy(ctx: &LaunchContext) -> Vec<String> {
    tansu_command(
        ctx.port,
        ctx.extra_ports.first().copied().unwrap_or(ctx.port),
    )
}

fn tansu_command(port: u16, advertised: u16) -> Vec<String> {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &advertised,
        "--storage-engine",
        "memory://tansu/",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn redis_args(ctx: &LaunchContext) -> Vec<String> {
    let flags = [
        ("--port", ctx.port.to_string()),
        ("--bind", "127.0.0.1".to_owned()),
        ("--dir", ctx.data_dir.display().to_string()),
        ("--appendonly", "yes".to_owned()),
        ("--appendfsync", "always".to_owned()),
        ("--save", String::new()),
        ("--daemonize", "no".to_owned()),
        ("--logfile", String::new()),
    ];
    flags
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago; another process may take it before use.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// A port on 127.0.0.1 that refuses connections for as long as this value lives: bound but
/// never listening. Tests of "unreachable broker" errors use it instead of [`free_port`],
/// whose port the next broker a parallel test starts may take.
#[derive(Debug)]
pub struct RefusingPort {
    // Bound without SO_REUSEADDR, so no other socket can bind the port meanwhile.
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl RefusingPort {
    /// Reserves a port; connecting to it fails at once with "connection refused".
    pub fn new() -> Result<Self> {
        let bind_error =
            |e| Error::new(ErrorKind::Connection, "cannot bind a loopback port").with_source(e);
        let socket = tokio::net::TcpSocket::new_v4().map_err(bind_error)?;
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(bind_error)?;
        let port = socket.local_addr().map_err(bind_error)?.port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Several distinct free ports: all listeners are held until every port is known, because a
/// port released early may be handed out again by the very next bind.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let bind_error =
        |e| Error::new(ErrorKind::Connection, "cannot bind a loopback port").with_source(e);
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(bind_error)?);
    }
    let ports = listeners.iter().map(|l| l.local_addr().map(|a| a.port()));
    ports.collect::<io::Result<_>>().map_err(bind_error)
}

/// A running broker process with its own ports, data directory and log.
#[derive(Debug)]
pub struct BrokerProcess {
    spec: BrokerSpec,
    ctx: LaunchContext,
    child: Option<Child>,
    // An `Option` so that `Drop` can keep the directory of a failed test.
    dir: Option<TempDir>,
}

impl BrokerProcess {
    /// Starts the broker on a free port and waits until the port accepts connections.
    ///
    /// Fails with [`ErrorKind::Unsupported`] if the program is not installed (the message
    /// carries the install hint), [`ErrorKind::Connection`] if the process exits before it
    /// listens and [`ErrorKind::Timeout`] if it is not listening within the startup timeout;
    /// the latter two include the end of the broker's log.
    pub async fn start(spec: BrokerSpec) -> Result<Self> {
        let dir = TempDir::with_prefix(format!("eventbus-{}-", spec.name)).map_err(|e| {
            let error = Error::new(ErrorKind::Config, "cannot create a data directory");
            error.with("broker", spec.name).with_source(e)
        })?;
        let mut extra_ports = free_ports(1 + spec.extra_ports)?;
        let port = extra_ports.remove(0);
        let data_dir = dir.path().to_path_buf();
        let ctx = LaunchContext {
            port,
            extra_ports,
            data_dir,
        };
        let mut broker = Self {
            spec,
            ctx,
            child: None,
            dir: Some(dir),
        };
        broker.launch().await?;
        Ok(broker)
    }

    /// The main port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.ctx.port
    }

    /// The broker's process id while it runs; `None` once it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The extra ports requested by [`BrokerSpec::extra_ports`], in the order given to `args`.
    pub fn extra_ports(&self) -> &[u16] {
        &self.ctx.extra_ports
    }

    /// `127.0.0.1:PORT` of the main port.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.ctx.port)
    }

    /// The broker's data directory, which also holds the log.
    pub fn data_dir(&self) -> &Path {
        &self.ctx.data_dir
    }

    /// The file that receives the broker's stdout and stderr across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.ctx.data_dir.join(LOG_FILE)
    }

    /// The last `lines` lines of the log, or a note saying why it cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Stops the broker gracefully with SIGTERM, killing it if it has not exited within 10s.
    /// Stopping a stopped broker does nothing.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let stopped = process::stop(&mut child, StopSignal::Terminate, STOP_GRACE).await;
        stopped.map(drop).map_err(self.io_error("stop"))
    }

    /// Stops the broker and starts it again on the same port with the same data directory,
    /// so that persistence can be tested; the log keeps growing.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        let args = (self.spec.args)(&self.ctx);
        let mut options = OpenOptions::new();
        let log = options.create(true).append(true).open(self.log_path());
        let mut log = log.map_err(self.io_error("open the log of"))?;
        // A banner per launch tells the runs apart in the appended log.
        let banner = format!("=== fixture: {} {args:?} ===", self.spec.program);
        writeln!(log, "{banner}").map_err(self.io_error("write the log of"))?;
        let stderr = log.try_clone().map_err(self.io_error("share the log of"))?;
        let mut command = Command::new(&self.spec.program);
        command.args(&args).current_dir(&self.ctx.data_dir);
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        command.kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let message = format!(
                    "broker {}: program `{}` not found; install it with `{}`",
                    self.spec.name, self.spec.program, self.spec.install_hint
                );
                return Err(self.error(ErrorKind::Unsupported, message).with_source(e));
            }
            Err(e) => return Err(self.io_error("spawn")(e)),
        };
        self.wait_ready(&mut child).await?;
        tracing::debug!(port = self.ctx.port, "broker {} is ready", self.spec.name);
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<()> {
        let deadline = Instant::now() + self.spec.startup_timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ctx.port));
        loop {
            if let Some(status) = child.try_wait().map_err(self.io_error("poll"))? {
                return Err(self.startup_error(ErrorKind::Connection, format!("exited ({status})")));
            }
            let probe = tokio::time::timeout(POLL_INTERVAL, TcpStream::connect(addr)).await;
            if let Ok(Ok(stream)) = probe {
                // A connect to a port nobody listens on can, now and then, connect to itself
                // (TCP simultaneous open, when the kernel picks that same port as the source):
                // that is no broker.
                if stream.local_addr().ok() != stream.peer_addr().ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                // Waiting for the exit makes the log complete and frees the port.
                let _ = child.kill().await;
                let what = format!("was not listening after {:?}", self.spec.startup_timeout);
                return Err(self.startup_error(ErrorKind::Timeout, what));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn error(&self, kind: ErrorKind, message: String) -> Error {
        Error::new(kind, message)
            .with("broker", self.spec.name)
            .with("program", &self.spec.program)
            .with("port", self.ctx.port)
    }

    fn io_error(&self, doing: &'static str) -> impl Fn(io::Error) -> Error + '_ {
        move |e| {
            let message = format!("cannot {doing} broker {}", self.spec.name);
            self.error(ErrorKind::Connection, message).with_source(e)
        }
    }

    fn startup_error(&self, kind: ErrorKind, what: String) -> Error {
        let (name, program, log) = (self.spec.name, &self.spec.program, self.log_path());
        let mut message = format!(
            "broker {name} (`{program}`) {what} before accepting connections on {}; \
             last {ERROR_LOG_LINES} lines of {}:\n",
            self.addr(),
            log.display()
        );
        message.push_str(&indented(&self.log_tail(ERROR_LOG_LINES)));
        self.error(kind, message)
    }
}

/// The last `lines` lines of the log at `path`, or a note saying why it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A log excerpt for an error message: indented, and ended by a newline so that the error's
/// context pairs do not run into the log.
pub(crate) fn indented(log: &str) -> String {
    log.lines().map(|line| format!("  | {line}\n")).collect()
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Waited for, so that the port and the directory are free once drop returns.
            if let Err(e) = process::stop_now(child, StopSignal::Kill, Duration::ZERO) {
                tracing::warn!(broker = self.spec.name, "cannot stop the broker: {e}");
            }
        }
        if let Some(dir) = self.dir.take().filter(|_| std::thread::panicking()) {
            let (name, log) = (self.spec.name, dir.keep().join(LOG_FILE));
            eprintln!("broker {name} log kept at {}", log.display());
            eprintln!("{}", self.log_tail(PANIC_LOG_LINES));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one inline command and reads until the reply has `lines` CRLF-terminated lines.
    async fn send(addr: &str, command: &str, lines: usize) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = Vec::new();
        while reply.windows(2).filter(|w| w == b"\r\n").count() < lines {
            let mut chunk = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk));
            let n = read.await.unwrap().unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(reply).unwrap()
    }

    async fn start_fake(program: &str, startup_timeout: Duration) -> Error {
        let spec = BrokerSpec {
            name: "fake",
            program: program.to_owned(),
            args: |_| vec!["30".to_owned()],
            extra_ports: 2,
            startup_timeout,
            install_hint: "apt-get install fake-broker-9f3a",
        };
        BrokerProcess::start(spec).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_refusing_port_refuses_at_once_and_cannot_be_taken() {
        let refusing = RefusingPort::new().unwrap();
        let started = Instant::now();
        let err = TcpStream::connect((Ipv4Addr::LOCALHOST, refusing.port()))
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, refusing.port())).is_err());
    }

    #[tokio::test]
    async fn redis_keeps_port_and_data_across_restart_and_stops_idempotently() {
        let mut redis = BrokerProcess::start(BrokerSpec::redis()).await.unwrap();
        assert_eq!(send(&redis.addr(), "PING", 1).await, "+PONG\r\n");
        assert_eq!(send(&redis.addr(), "SET k v", 1).await, "+OK\r\n");
        let (port, dir) = (redis.port(), redis.data_dir().to_path_buf());

        redis.restart().await.unwrap();
        assert_eq!((redis.port(), redis.data_dir()), (port, dir.as_path()));
        assert_eq!(send(&redis.addr(), "GET k", 2).await, "$1\r\nv\r\n");
        let log = std::fs::read_to_string(redis.log_path()).unwrap();
        assert_eq!(
            log.matches("=== fixture: redis-server [").count(),
            2,
            "{log}"
        );

        // Checked by process id: once the port is free, a parallel test's server may take it.
        let pid = redis.pid().unwrap();
        redis.stop().await.unwrap();
        redis.stop().await.unwrap();
        assert!(!process::exists(pid));
        assert_eq!(redis.pid(), None);
        let dir = redis.data_dir().to_path_buf();
        drop(redis);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn missing_program_names_the_install_hint() {
        let err = start_fake("no-such-broker-9f3a", Duration::from_secs(5)).await;
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(
            err.to_string().contains("apt-get install fake-broker-9f3a"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn early_exit_fails_fast_with_the_log() {
        let started = Instant::now();
        let err = start_fake("false", Duration::from_secs(30)).await;
        // Well short of the 30 s startup timeout, with room for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), ErrorKind::Connection);
        let (text, port) = (err.to_string(), err.context("port").unwrap());
        assert!(text.contains("broker fake (`false`) exited"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("  | === fixture: false [\"30\"]"), "{text}");
    }

    #[tokio::test]
    async fn silent_process_times_out() {
        let err = start_fake("sleep", Duration::from_millis(300)).await;
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(8).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
    }
}
