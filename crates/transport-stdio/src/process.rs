//! The server's process: spawning it in its own group, draining its stderr,
//! watching it exit, and signalling the whole group.

use std::collections::VecDeque;
use std::io;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use roster_core::ServerSpec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Variables a server gets from roster's environment when `inherit_env = false`,
/// besides those named in `pass_env`: what programs need to run at all.
pub const BASE_ENV_ALLOWLIST: [&str; 12] =
    ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM", "SYSTEMROOT"];

/// Lines of stderr kept for status and failure messages.
pub const STDERR_LINES: usize = 100;
/// Bytes of stderr kept, at most.
pub const STDERR_BYTES: usize = 64 * 1024;
/// A longer stderr line is cut here.
const MAX_LINE: usize = 4096;

/// The command for `spec`: its args, environment and cwd; piped stdio; its own
/// process group; killed when dropped; on Linux, killed when roster dies.
pub(crate) fn command(spec: &ServerSpec) -> Command {
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args);
    if !spec.inherit_env {
        cmd.env_clear();
        for name in BASE_ENV_ALLOWLIST.iter().copied().chain(spec.pass_env.iter().map(String::as_str)) {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
    }
    cmd.envs(&spec.env);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    set_parent_death_signal(&mut cmd);
    cmd
}

/// Asks the kernel to SIGKILL the server when the thread that spawned it dies, so
/// that a crashed roster leaves no server behind. (The group's other members are
/// reached by the group kill on every path roster itself controls.)
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec. It makes one
    // raw prctl(2) system call through rustix, which neither allocates nor takes
    // locks, so it is async-signal-safe as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(io::Error::from)
        });
    }
}

/// The server's process group. Every path that ends a session goes through it, so
/// that no member of the group outlives the session.
#[derive(Debug)]
pub(crate) struct Group {
    pgid: Option<rustix::process::Pid>,
    /// The leader was reaped and stragglers were killed: the id may be reused, so
    /// nothing is signalled any more.
    done: AtomicBool,
}

impl Group {
    pub(crate) fn new(pid: u32) -> Group {
        let pgid = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
        Group { pgid, done: AtomicBool::new(false) }
    }

    /// Sends `signal` to every member of the group, unless the group is done.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        if let Some(pgid) = self.pgid {
            // ESRCH (nobody left) is the expected answer once everyone is gone.
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }

    /// SIGKILL to the whole group.
    pub(crate) fn kill(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// Called once the leader is reaped: kill whatever is left and stop signalling.
    fn finish(&self) {
        self.kill();
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Kills the group if dropped while armed: a connect that is abandoned half-way
/// (stopped, timed out, failed) leaves nothing behind.
pub(crate) struct KillGuard(pub(crate) Option<Arc<Group>>);

impl KillGuard {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(group) = &self.0 {
            group.kill();
        }
    }
}

/// How the server's process ended, as a value until it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited; the status says with which code or signal.
    Status(std::process::ExitStatus),
    /// Waiting for it failed: its status is unknown.
    Unknown(io::ErrorKind),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(status) => status.fmt(f),
            Exit::Unknown(kind) => write!(f, "exit status unknown ({kind})"),
        }
    }
}

/// Owns the child: waits for it, then kills what is left of its group, cancels
/// the MCP session (so pending requests fail now, even when a grandchild still
/// holds stdout) and reports the exit status.
pub(crate) async fn watch_exit(
    mut child: Child,
    group: Arc<Group>,
    cancel: CancellationToken,
    exit: watch::Sender<Option<Exit>>,
) {
    let status = child.wait().await;
    group.finish();
    cancel.cancel();
    let status = match status {
        Ok(status) => Exit::Status(status),
        Err(e) => Exit::Unknown(e.kind()),
    };
    debug!(%status, "server process exited");
    exit.send_replace(Some(status));
}

/// The last lines a server wrote to stderr, bounded in lines and bytes.
#[derive(Debug)]
pub(crate) struct StderrLog {
    lines: Mutex<Ring>,
    eof: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
}

impl StderrLog {
    pub(crate) fn new() -> StderrLog {
        StderrLog { lines: Mutex::new(Ring::default()), eof: watch::channel(false).0 }
    }

    fn push(&self, line: String) {
        let mut ring = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        ring.bytes += line.len();
        ring.lines.push_back(line);
        while ring.lines.len() > STDERR_LINES || ring.bytes > STDERR_BYTES {
            let Some(old) = ring.lines.pop_front() else { break };
            ring.bytes -= old.len();
        }
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).lines.iter().cloned().collect()
    }

    /// The last `n` lines.
    pub(crate) fn tail(&self, n: usize) -> Vec<String> {
        let ring = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        ring.lines.iter().skip(ring.lines.len().saturating_sub(n)).cloned().collect()
    }

    /// Waits until stderr reached its end, at most `limit`.
    pub(crate) async fn drained(&self, limit: std::time::Duration) {
        let mut rx = self.eof.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|eof| *eof)).await;
    }
}

/// Reads stderr to its end, line by line, into tracing and the log. Never stalls
/// the server: it reads as fast as the server writes, whatever the volume.
pub(crate) async fn drain_stderr(stderr: ChildStderr, log: Arc<StderrLog>) {
    let mut reader = BufReader::with_capacity(16 * 1024, stderr);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let mut consumed = 0;
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            consumed += part.len();
            let (body, ends) = match part.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (part, false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&body[..body.len().min(room)]);
            cut |= body.len() > room;
            if ends {
                emit(&log, &mut line, &mut cut);
            }
        }
        reader.consume(consumed);
    }
    if !line.is_empty() {
        emit(&log, &mut line, &mut cut);
    }
    log.eof.send_replace(true);
}

fn emit(log: &StderrLog, line: &mut Vec<u8>, cut: &mut bool) {
    let mut text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
    if std::mem::take(cut) {
        text.push('…');
    }
    debug!(target: "roster::stderr", "{text}");
    log.push(text);
    line.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_log_keeps_the_last_100_lines_and_at_most_64_kib() {
        let log = StderrLog::new();
        for i in 0..250 {
            log.push(format!("line {i}"));
        }
        let lines = log.lines();
        assert_eq!(lines.len(), STDERR_LINES);
        assert_eq!(lines[0], "line 150");
        assert_eq!(log.tail(2), ["line 248", "line 249"]);
        for _ in 0..40 {
            log.push("x".repeat(MAX_LINE));
        }
        let total: usize = log.lines().iter().map(String::len).sum();
        assert!(total <= STDERR_BYTES, "{total}");
    }
}
