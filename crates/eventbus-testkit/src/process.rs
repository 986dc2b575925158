//! Stopping the processes the fixtures start: a signal, a bounded wait, then a kill, and in
//! every case a return only once the process has exited and been reaped.
//!
//! Signals go through the `kill(2)` system call (with `rustix`), not the `kill(1)` program:
//! a minimal machine may lack procps, and without it every graceful stop silently became a
//! kill. Waiting for the exit matters as much: a port or directory is free only once the
//! process is gone, and a test that checks right after a stop must not race the kernel.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use tokio::process::Child;

/// How long a killed process may take to be reaped before [`stop_now`] gives up waiting.
const KILL_WAIT: Duration = Duration::from_secs(5);
const BLOCKING_POLL: Duration = Duration::from_millis(5);

/// The signal that asks a process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM, the usual polite request.
    Terminate,
    /// SIGINT; PostgreSQL's fast shutdown.
    Interrupt,
    /// SIGQUIT; PostgreSQL's immediate shutdown, which still removes its shared memory.
    Quit,
    /// SIGKILL: no grace, the process cannot refuse.
    Kill,
}

impl StopSignal {
    fn signal(self) -> Signal {
        match self {
            Self::Terminate => Signal::TERM,
            Self::Interrupt => Signal::INT,
            Self::Quit => Signal::QUIT,
            Self::Kill => Signal::KILL,
        }
    }
}

/// Sends `signal` to the child, and reports whether it was delivered (false once the child
/// has been reaped, or if the system refused).
pub fn send(child: &Child, signal: StopSignal) -> bool {
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    let Some(pid) = pid.and_then(Pid::from_raw) else {
        return false;
    };
    rustix::process::kill_process(pid, signal.signal()).is_ok()
}

/// Whether a process with this id exists (a zombie not yet reaped counts). After [`stop`] or
/// [`stop_now`] returns, the child's id no longer does, until the system reuses it.
pub fn exists(pid: u32) -> bool {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    // EPERM: it exists but belongs to another user (a server run through `setpriv`).
    pid.is_some_and(|pid| {
        matches!(
            rustix::process::test_kill_process(pid),
            Ok(()) | Err(Errno::PERM)
        )
    })
}

/// Asks the child to stop with `signal`, waits up to `grace`, kills it if it is still running,
/// and returns its exit status once it has been reaped. Stopping an exited child returns its
/// status at once.
pub async fn stop(
    child: &mut Child,
    signal: StopSignal,
    grace: Duration,
) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if ask(child, signal) {
        if let Ok(waited) = tokio::time::timeout(grace, child.wait()).await {
            return waited;
        }
        ignored(child, signal, grace);
    }
    child.kill().await?;
    child.wait().await
}

/// [`stop`] for `Drop`, which cannot await: blocks the thread, polling every few milliseconds,
/// for as long as the process takes (at most `grace` plus five seconds after the kill).
pub fn stop_now(child: &mut Child, signal: StopSignal, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if ask(child, signal) {
        if let Some(status) = wait_now(child, grace)? {
            return Ok(status);
        }
        ignored(child, signal, grace);
    }
    child.start_kill()?;
    wait_now(child, KILL_WAIT)?.ok_or_else(|| {
        let message = format!("the process was killed but had not exited after {KILL_WAIT:?}");
        io::Error::new(io::ErrorKind::TimedOut, message)
    })
}

/// Sends a signal the process may heed; false for [`StopSignal::Kill`], which comes last anyway.
fn ask(child: &Child, signal: StopSignal) -> bool {
    signal != StopSignal::Kill && send(child, signal)
}

fn ignored(child: &Child, signal: StopSignal, grace: Duration) {
    let pid = child.id();
    tracing::warn!(
        pid,
        ?signal,
        "process ignored the signal within {grace:?}; killing it"
    );
}

fn wait_now(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(BLOCKING_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::process::Command;

    fn sleeper(script: &str) -> Child {
        let mut command = Command::new("sh");
        command.args(["-c", script]).kill_on_drop(true);
        command.spawn().unwrap()
    }

    #[tokio::test]
    async fn a_polite_signal_stops_a_process_that_listens() {
        let mut child = sleeper("exec sleep 30");
        let pid = child.id().unwrap();
        assert!(exists(pid));
        let status = stop(&mut child, StopSignal::Terminate, Duration::from_secs(10)).await;
        assert_eq!(
            status.unwrap().code(),
            None,
            "ended by the signal, not by a kill"
        );
        assert!(!exists(pid), "stop returns once the process is reaped");
        assert!(
            !send(&child, StopSignal::Terminate),
            "nothing left to signal"
        );
        // Stopping it again returns at once.
        stop(&mut child, StopSignal::Terminate, Duration::ZERO)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_process_that_ignores_the_signal_is_killed_after_the_grace() {
        use tokio::io::AsyncReadExt;
        // The shell ignores SIGTERM, so only a kill ends it; its last `sleep` ends by itself.
        let mut command = Command::new("sh");
        let script = "trap '' TERM; echo trapped; while :; do sleep 0.1; done";
        command
            .args(["-c", script])
            .stdout(std::process::Stdio::piped());
        let mut child = command.kill_on_drop(true).spawn().unwrap();
        let pid = child.id().unwrap();
        // Signalled only once the trap is in place, however slow the machine.
        let mut trapped = [0; 8];
        let stdout = child.stdout.as_mut().unwrap();
        stdout.read_exact(&mut trapped).await.unwrap();
        assert_eq!(&trapped, b"trapped\n");
        let started = Instant::now();
        let status = stop(
            &mut child,
            StopSignal::Terminate,
            Duration::from_millis(300),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.unwrap().signal(), Some(9));
        assert!(!exists(pid));
    }

    #[test]
    fn stop_now_blocks_until_the_process_is_reaped() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        for signal in [StopSignal::Quit, StopSignal::Kill] {
            let mut child = sleeper("exec sleep 30");
            let pid = child.id().unwrap();
            let status = stop_now(&mut child, signal, Duration::from_secs(5)).unwrap();
            assert!(!status.success());
            assert!(!exists(pid), "{signal:?}");
        }
    }
}
