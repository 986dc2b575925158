//! Running the command line as a user does: a real process, its output and exit code.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

/// The standalone `eventbus` binary.
pub fn eventbus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eventbus"))
}

/// The `orders_service` example: a service's own binary with its event type and a named
/// consumer. `cargo test -p eventbus-cli` builds the examples before it runs tests; a lone
/// `--test NAME` does not, and may run a stale one.
pub fn orders_service_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let bin = dir.join("examples").join("orders_service");
    assert!(
        bin.exists(),
        "{} is missing; `cargo test -p eventbus-cli` builds it",
        bin.display()
    );
    bin
}

/// A command line against one bus URL.
#[derive(Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub url: String,
    pub env: Vec<(String, String)>,
}

impl Cli {
    pub fn new(bin: PathBuf, url: impl Into<String>) -> Self {
        Self {
            bin,
            url: url.into(),
            env: vec![
                ("EVENT_BUS_CONSUMER_MAX_ATTEMPTS".into(), "2".into()),
                ("EVENT_BUS_CONSUMER_BACKOFF_BASE_MS".into(), "5".into()),
                ("EVENT_BUS_CONSUMER_BACKOFF_MAX_MS".into(), "10".into()),
                (
                    "EVENT_BUS_CONSUMER_CONSECUTIVE_ERRORS_LIMIT".into(),
                    "0".into(),
                ),
                ("NO_COLOR".into(), "1".into()),
            ],
        }
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("--url").arg(&self.url).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("EVENT_BUS_") {
                command.env_remove(k);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs to the end with `stdin` as input.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("binary output")
    }

    /// Runs to the end and insists on success.
    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "`{}` failed with {}:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Starts a long-running command (`run`). Its output goes to files, not pipes: a pipe
    /// nobody reads fills up and stops the process at its next log line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let logs = tempfile::tempdir().expect("log dir");
        let file = |name: &str| std::fs::File::create(logs.path().join(name)).expect("log file");
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("start the binary");
        Running { child, logs }
    }
}

/// A process started by [`Cli::spawn`].
pub struct Running {
    child: Child,
    logs: tempfile::TempDir,
}

impl Running {
    /// The rest of the first stdout line that starts with `prefix`, once the process prints it.
    pub fn wait_for_stdout(&self, prefix: &str, limit: Duration) -> String {
        let started = Instant::now();
        while started.elapsed() < limit {
            let text = std::fs::read_to_string(self.logs.path().join("stdout")).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                let rest = &line[prefix.len()..];
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let stderr = std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default();
        panic!("no `{prefix}` line within {limit:?}; stderr: {stderr}");
    }
}

/// A plain HTTP/1.1 GET of `path` from `address` (host:port): status line, headers and body.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("response");
    answer
}

/// How a [`Running`] process ended.
#[derive(Debug)]
pub struct Ended {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Sends SIGTERM, as a supervisor stopping a service does, and waits for the exit.
pub fn terminate(running: Running) -> Ended {
    let Running { mut child, logs } = running;
    let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait().expect("wait") {
            return Ended {
                status,
                stdout: read("stdout"),
                stderr: read("stderr"),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the process did not stop within 30 s of SIGTERM");
}

/// Polls `check` until it holds (true) or `limit` passes (false).
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The JSON lines of an output.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// `n` orders as JSON lines, ids from `first`.
pub fn orders(first: i64, n: i64) -> String {
    (first..first + n)
        .map(|id| {
            format!(
                "{{\"order_id\":{id},\"customer\":\"c{}\",\"total_cents\":{},\"coupon\":null}}\n",
                id % 17,
                id * 3
            )
        })
        .collect()
}

pub const ORDER_TYPE: &str = "org.example.order.placed.v1";
