//! A fixture that runs a private PostgreSQL server for integration tests.
//!
//! [`PostgresProcess::start`] runs `initdb` into a fresh temporary directory, starts `postgres`
//! on a free loopback port with its socket directory inside that directory, waits until it
//! accepts connections and creates the database `eventbus`; [`PostgresProcess::url`] is ready
//! for a client. Durability is traded for speed (`fsync` off) and the server is stopped and its
//! directory removed on drop. Output of `initdb` and `postgres` goes to `postgres.log`; when a
//! test panics the directory is kept and the end of the log is printed, as with
//! [`BrokerProcess`](crate::fixture::BrokerProcess).
//!
//! The binaries are Debian's (`/usr/lib/postgresql/<major>/bin`, highest major first) or those
//! beside `initdb` on `PATH`. PostgreSQL refuses to run as root: as root the fixture gives the
//! directory to the user `postgres` (else `nobody`) and runs the server as that user through
//! `setpriv`, which, unlike `runuser` or `su`, replaces itself with the server, so signals and
//! the kill on drop reach the postmaster itself.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventbus_core::{Error, ErrorKind, Result};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::fixture::free_port;
use crate::process::{self, StopSignal};

const FIXTURE: &str = "postgres";
/// The database [`PostgresProcess::start`] creates and [`PostgresProcess::url`] names.
pub const DATABASE: &str = "eventbus";
/// The superuser `initdb` creates; it logs in without a password.
pub const SUPERUSER: &str = "postgres";
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
const INSTALL_HINT: &str = "apt-get install postgresql";
/// Users to run the server as when the tests run as root, in order of preference.
const UNPRIVILEGED_USERS: [&str; 2] = ["postgres", "nobody"];
const LOG_FILE: &str = "postgres.log";
const DATA_DIR: &str = "data";
const BANNER: &str = "=== fixture: ";
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const STOP_GRACE: Duration = Duration::from_secs(10);
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Launches on a fresh port when another process took the chosen one before the server bound it.
const BIND_ATTEMPTS: usize = 3;
const ERROR_LOG_LINES: usize = 20;
const PANIC_LOG_LINES: usize = 40;

/// A running PostgreSQL server with its own port, data directory and log.
#[derive(Debug)]
pub struct PostgresProcess {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    /// The temporary directory: the socket, the log and `data/`.
    root: PathBuf,
    child: Option<Child>,
    // An `Option` so that `Drop` can keep the directory of a failed test.
    dir: Option<TempDir>,
}

impl PostgresProcess {
    /// Initialises a cluster, starts the server on a free port, waits until it accepts
    /// connections and creates the database [`DATABASE`]. Takes about 1.5s, most of it `initdb`.
    ///
    /// Fails with [`ErrorKind::Unsupported`] if PostgreSQL is not installed (the message says
    /// `apt-get install postgresql`), [`ErrorKind::Connection`] if `initdb` or the server fails
    /// and [`ErrorKind::Timeout`] if a step does not finish in time; the latter two include the
    /// end of the log.
    pub async fn start() -> Result<Self> {
        let bin_dir = find_bin_dir(Path::new(DEBIAN_ROOT), std::env::var_os("PATH"))?;
        let run_as = run_as()?;
        let dir = TempDir::with_prefix("eventbus-postgres-").map_err(|e| {
            let error = Error::new(ErrorKind::Config, "cannot create a data directory");
            error.with("fixture", FIXTURE).with_source(e)
        })?;
        let mut postgres = Self {
            bin_dir,
            run_as,
            port: 0,
            root: dir.path().to_path_buf(),
            child: None,
            dir: Some(dir),
        };
        postgres.hand_over_dir().await?;
        postgres.initdb().await?;
        postgres.launch().await?;
        postgres
            .psql_on("postgres", &format!("CREATE DATABASE {DATABASE}"))
            .await?;
        tracing::debug!(port = postgres.port, "postgres is ready");
        Ok(postgres)
    }

    /// `postgres://postgres@127.0.0.1:PORT/eventbus`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs; `None` once it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join(DATA_DIR)
    }

    /// The file that receives the output of `initdb` and the server.
    pub fn log_path(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// The last `lines` lines of the log, or a note saying why it cannot be read.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::fixture::log_tail(&self.log_path(), lines)
    }

    /// Runs SQL with `psql` in the database [`DATABASE`] and returns the rows unaligned
    /// (columns separated by `|`), without headers, trimmed.
    pub async fn psql(&self, sql: &str) -> Result<String> {
        self.psql_on(DATABASE, sql).await
    }

    /// Stops the server with a fast shutdown (connections are closed, not waited for), killing
    /// it if it has not exited within 10s. Stopping a stopped server does nothing; the data
    /// directory stays until drop.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SIGINT is PostgreSQL's fast shutdown; SIGTERM (smart) would wait for clients to leave.
        let stopped = process::stop(&mut child, StopSignal::Interrupt, STOP_GRACE).await;
        stopped.map(drop).map_err(self.io_error("stop"))
    }

    /// As root, gives the directory to the unprivileged user and checks that it can reach it.
    async fn hand_over_dir(&self) -> Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let mut chown = Command::new("chown");
        chown.arg("-R").arg(format!("{}:{}", user.uid, user.gid));
        chown.arg(&self.root).stdin(Stdio::null());
        let output = self.output(chown, "chown", CLIENT_TIMEOUT).await?;
        if !output.status.success() {
            let message = format!(
                "cannot give {} to user {}: {}",
                self.root.display(),
                user.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Err(self.error(ErrorKind::Config, message));
        }
        // Every parent directory must be searchable by the user, which a private TMPDIR is not.
        let mut probe = self.command("test");
        probe.arg("-w").arg(&self.root);
        let output = self.output(probe, "setpriv", CLIENT_TIMEOUT).await?;
        if !output.status.success() {
            let message = format!(
                "user {} (the server refuses to run as root) cannot write {}; \
                 point TMPDIR at a directory every user can search, such as /tmp",
                user.name,
                self.root.display()
            );
            return Err(self.error(ErrorKind::Config, message));
        }
        Ok(())
    }

    async fn initdb(&self) -> Result<()> {
        let data_dir = self.data_dir().display().to_string();
        let args = [
            "-D",
            &data_dir,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ];
        let mut command = self.command(self.tool("initdb"));
        command.args(args);
        self.log_output(&mut command, "initdb", &args)?;
        command.kill_on_drop(true);
        let waited = tokio::time::timeout(INITDB_TIMEOUT, command.status()).await;
        let Ok(status) = waited else {
            let what = format!("initdb did not finish within {INITDB_TIMEOUT:?}");
            return Err(self.startup_error(ErrorKind::Timeout, what));
        };
        let status = status.map_err(|e| self.spawn_error("initdb", e))?;
        if !status.success() {
            return Err(self.startup_error(ErrorKind::Connection, format!("initdb {status}")));
        }
        Ok(())
    }

    /// Starts the server, on a fresh port again if another process took the one chosen.
    async fn launch(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            let launched = self.launch_on_port().await;
            if launched.is_err() && attempt < BIND_ATTEMPTS && self.port_was_taken() {
                tracing::warn!(
                    port = self.port,
                    "port taken before postgres bound it; retrying"
                );
                attempt += 1;
                continue;
            }
            return launched;
        }
    }

    async fn launch_on_port(&mut self) -> Result<()> {
        let (data_dir, socket_dir) = (self.data_dir(), self.root.display().to_string());
        let data_dir = data_dir.display().to_string();
        let port = self.port.to_string();
        let args = [
            "-D",
            &data_dir,
            "-k",
            &socket_dir,
            "-p",
            &port,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            // Small, yet not the minimum of 128kB: with 16 buffers concurrent connections
            // fail with "no unpinned buffers available".
            "-c",
            "shared_buffers=8MB",
        ];
        let mut command = self.command(self.tool("postgres"));
        command.args(args);
        self.log_output(&mut command, "postgres", &args)?;
        command.kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| self.spawn_error("postgres", e))?;
        self.wait_ready(&mut child).await?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `pg_isready` on the socket in the private directory: unlike the TCP port, which
    /// another server may have taken meanwhile, a server answering there is this one.
    async fn wait_ready(&self, child: &mut Child) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(self.io_error("poll"))? {
                return Err(self.startup_error(ErrorKind::Connection, format!("exited ({status})")));
            }
            let mut probe = Command::new(self.tool("pg_isready"));
            probe
                .arg("-q")
                .arg("-h")
                .arg(&self.root)
                .arg("-p")
                .arg(self.port.to_string());
            probe.args(["-U", SUPERUSER, "-d", "postgres", "-t", "1"]);
            probe.stdin(Stdio::null());
            let output = self.output(probe, "pg_isready", CLIENT_TIMEOUT).await?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Waiting for the exit makes the log complete and frees the port.
                let _ = child.kill().await;
                let what = format!("was not ready after {STARTUP_TIMEOUT:?}");
                return Err(self.startup_error(ErrorKind::Timeout, what));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether the last launch failed because the port was in use.
    fn port_was_taken(&self) -> bool {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let last_run = log.rsplit(BANNER).next().unwrap_or_default();
        last_run.contains("Address already in use")
    }

    /// Runs SQL over TCP as the superuser with `psql`; the rows come back unaligned, trimmed.
    async fn psql_on(&self, database: &str, sql: &str) -> Result<String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname={database} \
             sslmode=disable connect_timeout=10",
            self.port
        );
        let mut psql = Command::new(self.tool("psql"));
        psql.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
        ]);
        psql.args(["-c", sql]).stdin(Stdio::null());
        let output = self.output(psql, "psql", CLIENT_TIMEOUT).await?;
        if !output.status.success() {
            let message = format!(
                "psql {} on database {database}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return Err(self.error(ErrorKind::Connection, message).with("sql", sql));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The named program from the server's bin directory, else from `PATH`.
    fn tool(&self, name: &str) -> PathBuf {
        let beside = self.bin_dir.join(name);
        if beside.is_file() {
            beside
        } else {
            PathBuf::from(name)
        }
    }

    /// A command that runs as the unprivileged user when the tests run as root.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut setpriv = Command::new("setpriv");
                setpriv.arg(format!("--reuid={}", user.uid));
                setpriv.arg(format!("--regid={}", user.gid));
                setpriv.args(["--clear-groups", "--"]).arg(program);
                setpriv
            }
            None => Command::new(program),
        };
        command.current_dir(&self.root).stdin(Stdio::null());
        command
    }

    /// Sends the command's output to the log, after a banner telling the runs apart.
    fn log_output(&self, command: &mut Command, program: &str, args: &[&str]) -> Result<()> {
        let mut options = OpenOptions::new();
        let log = options.create(true).append(true).open(self.log_path());
        let mut log = log.map_err(self.io_error("open the log of"))?;
        writeln!(log, "{BANNER}{program} {args:?} ===")
            .map_err(self.io_error("write the log of"))?;
        let stderr = log.try_clone().map_err(self.io_error("share the log of"))?;
        command.stdout(log).stderr(stderr);
        Ok(())
    }

    async fn output(
        &self,
        mut command: Command,
        program: &str,
        limit: Duration,
    ) -> Result<std::process::Output> {
        command.kill_on_drop(true);
        match tokio::time::timeout(limit, command.output()).await {
            Ok(output) => output.map_err(|e| self.spawn_error(program, e)),
            Err(_) => {
                let message = format!("{program} did not finish within {limit:?}");
                Err(self.error(ErrorKind::Timeout, message))
            }
        }
    }

    fn spawn_error(&self, program: &str, e: io::Error) -> Error {
        if e.kind() != io::ErrorKind::NotFound {
            let message = format!("cannot run {program}");
            return self.error(ErrorKind::Connection, message).with_source(e);
        }
        let hint = if program == "setpriv" {
            "apt-get install util-linux"
        } else {
            INSTALL_HINT
        };
        let message = format!("program `{program}` not found; install it with `{hint}`");
        self.error(ErrorKind::Unsupported, message).with_source(e)
    }

    fn error(&self, kind: ErrorKind, message: String) -> Error {
        let error = Error::new(kind, message).with("fixture", FIXTURE);
        let error = error.with("bin_dir", self.bin_dir.display());
        let error = match &self.run_as {
            Some(user) => error.with("user", &user.name),
            None => error,
        };
        error.with("port", self.port)
    }

    fn io_error(&self, doing: &'static str) -> impl Fn(io::Error) -> Error + '_ {
        move |e| {
            let message = format!("cannot {doing} postgres");
            self.error(ErrorKind::Connection, message).with_source(e)
        }
    }

    fn startup_error(&self, kind: ErrorKind, what: String) -> Error {
        let mut message = format!(
            "postgres {what} before accepting connections on 127.0.0.1:{}; \
             last {ERROR_LOG_LINES} lines of {}:\n",
            self.port,
            self.log_path().display()
        );
        message.push_str(&crate::fixture::indented(&self.log_tail(ERROR_LOG_LINES)));
        self.error(kind, message)
    }
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Immediate shutdown: unlike SIGKILL it removes the server's shared memory segment,
            // and once the server has exited no file reappears while the directory is removed.
            if let Err(e) = process::stop_now(child, StopSignal::Quit, DROP_GRACE) {
                tracing::warn!("cannot stop postgres: {e}");
            }
        }
        if let Some(dir) = self.dir.take().filter(|_| std::thread::panicking()) {
            let log = dir.keep().join(LOG_FILE);
            eprintln!("postgres log kept at {}", log.display());
            eprintln!("{}", self.log_tail(PANIC_LOG_LINES));
        }
    }
}

/// The bin directory of the newest Debian PostgreSQL under `root` (`<root>/<major>/bin` holding
/// `initdb` and `postgres`), else the real directory of `initdb` on `path`.
fn find_bin_dir(root: &Path, path: Option<OsString>) -> Result<PathBuf> {
    if let Some(dir) = newest_debian_bin_dir(root) {
        return Ok(dir);
    }
    let paths = path.iter().flat_map(std::env::split_paths);
    let initdb = paths.map(|dir| dir.join("initdb")).find(|p| p.is_file());
    // Resolved, as /usr/local/bin/initdb may link into the directory that holds `postgres`.
    let real = initdb.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    if let Some(dir) = real.as_deref().and_then(Path::parent) {
        return Ok(dir.to_path_buf());
    }
    let message = format!(
        "PostgreSQL server binaries not found in {}/<major>/bin nor as `initdb` on PATH; \
         install them with `{INSTALL_HINT}`",
        root.display()
    );
    Err(Error::new(ErrorKind::Unsupported, message).with("fixture", FIXTURE))
}

fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    let complete = entries.filter_map(|entry| {
        let entry = entry.ok()?;
        // `15`, or `9.6` before PostgreSQL 10; compared as numbers.
        let name = entry.file_name().into_string().ok()?;
        let version: Vec<u32> = name
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let bin = entry.path().join("bin");
        let has = |program| bin.join(program).is_file();
        (has("initdb") && has("postgres")).then_some((version, bin))
    });
    complete.max_by(|a, b| a.0.cmp(&b.0)).map(|(_, bin)| bin)
}

/// The user to run the server as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// Who runs the server: `None` (this process's user) unless that user is root.
fn run_as() -> Result<Option<RunAs>> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = UNPRIVILEGED_USERS
        .iter()
        .find_map(|name| passwd_entry(&passwd, name));
    user.map(Some).ok_or_else(|| {
        let message = format!(
            "PostgreSQL refuses to run as root and none of the users {UNPRIVILEGED_USERS:?} \
             exists; install PostgreSQL with `{INSTALL_HINT}`, which creates `postgres`"
        );
        Error::new(ErrorKind::Unsupported, message).with("fixture", FIXTURE)
    })
}

/// The effective uid, from `/proc/self/status` or else `id -u`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // `Uid:` is followed by the real, effective, saved and filesystem uids.
    let from_proc = status.lines().find_map(|line| {
        let ids = line.strip_prefix("Uid:")?;
        ids.split_whitespace().nth(1)?.parse().ok()
    });
    from_proc.or_else(|| {
        let output = std::process::Command::new("id").arg("-u").output().ok()?;
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    })
}

fn passwd_entry(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != name {
            return None;
        }
        Some(RunAs {
            name: name.to_owned(),
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }

    #[tokio::test]
    async fn two_servers_run_side_by_side_and_stopping_one_leaves_the_other_serving() {
        let (a, b) = tokio::join!(PostgresProcess::start(), PostgresProcess::start());
        let (mut a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.port(), b.port());
        assert_ne!(a.data_dir(), b.data_dir());
        let expected = format!("postgres://postgres@127.0.0.1:{}/eventbus", a.port());
        assert_eq!(a.url(), expected);
        for server in [&a, &b] {
            assert_eq!(server.psql("select 1").await.unwrap(), "1");
            let db = server.psql("select current_database()").await.unwrap();
            assert_eq!(db, "eventbus");
        }
        // Each answers from its own cluster.
        a.psql("create table only_in_a (id int)").await.unwrap();
        let count = "select count(*) from pg_tables where tablename = 'only_in_a'";
        assert_eq!(b.psql(count).await.unwrap(), "0");

        // Checked by process id: once the port is free, a parallel test's server may take it.
        let pid = a.pid().unwrap();
        a.stop().await.unwrap();
        a.stop().await.unwrap();
        assert!(!process::exists(pid));
        let err = a.psql("select 1").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert_eq!(b.psql("select 1").await.unwrap(), "1");
        assert!(
            a.data_dir().join("PG_VERSION").is_file(),
            "stop keeps the data"
        );
    }

    #[tokio::test]
    async fn drop_stops_the_server_and_removes_its_directory() {
        let postgres = PostgresProcess::start().await.unwrap();
        assert!(postgres
            .log_tail(40)
            .contains("ready to accept connections"));
        let (pid, dir) = (postgres.pid().unwrap(), postgres.data_dir());
        assert!(dir.join("postgresql.conf").is_file());
        drop(postgres);
        assert!(!dir.parent().unwrap().exists(), "{}", dir.display());
        assert!(
            !process::exists(pid),
            "drop returns once the server has exited"
        );
    }

    #[test]
    fn missing_binaries_say_to_install_postgresql() {
        let empty = TempDir::new().unwrap();
        let err = find_bin_dir(empty.path(), Some(OsString::new())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(
            err.to_string().contains("apt-get install postgresql"),
            "{err}"
        );
    }

    #[test]
    fn the_highest_complete_major_version_wins() {
        let root = TempDir::new().unwrap();
        for version in ["9.6", "15"] {
            touch(&root.path().join(version).join("bin/initdb"));
            touch(&root.path().join(version).join("bin/postgres"));
        }
        // A client-only install has no server to start.
        touch(&root.path().join("16/bin/psql"));
        let dir = find_bin_dir(root.path(), None).unwrap();
        assert_eq!(dir, root.path().join("15/bin"));
    }

    #[test]
    fn initdb_on_path_is_followed_to_its_real_directory() {
        let (root, path) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let real = root.path().join("pgsql/bin/initdb");
        touch(&real);
        std::os::unix::fs::symlink(&real, path.path().join("initdb")).unwrap();
        let search = std::env::join_paths([path.path()]).unwrap();
        let dir = find_bin_dir(&root.path().join("none"), Some(search)).unwrap();
        assert_eq!(
            dir,
            std::fs::canonicalize(root.path().join("pgsql/bin")).unwrap()
        );
    }

    #[test]
    fn passwd_entries_give_uid_and_gid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        let user = passwd_entry(passwd, "postgres").unwrap();
        assert_eq!(
            (user.name.as_str(), user.uid, user.gid),
            ("postgres", 101, 104)
        );
        assert_eq!(passwd_entry(passwd, "nobody"), None);
    }
}
