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
/// process group. On Linux it runs under a [keeper](crate::keeper), which kills
/// every process of the server when the server exits, when asked, or when roster
/// dies; elsewhere the process is killed when its handle is dropped.
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
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    crate::keeper::install(&mut cmd);
    // A SIGKILL to the keeper would let the server's other processes escape: on
    // Linux every path ends through `Group::kill` instead.
    #[cfg(not(target_os = "linux"))]
    cmd.kill_on_drop(true);
    cmd
}

/// Every process of the server. Every path that ends a session goes through it, so
/// that none of them outlives the session.
///
/// On Linux the spawned process is the server's keeper: signals go to it (it
/// passes SIGTERM on to the server's group), and a kill asks it to kill
/// everything. Elsewhere the spawned process leads the server's process group,
/// and signals go to the group.
#[derive(Debug)]
pub(crate) struct Group {
    leader: Option<rustix::process::Pid>,
    /// The spawned process was reaped (and, on Linux, everything else is dead): the
    /// id may be reused, so nothing is signalled any more.
    done: AtomicBool,
}

impl Group {
    pub(crate) fn new(pid: u32) -> Group {
        let leader = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
        Group { leader, done: AtomicBool::new(false) }
    }

    /// Sends `signal` to the server (through its keeper on Linux), unless it is done.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        if let Some(leader) = self.leader {
            // ESRCH (nobody left) is the expected answer once everyone is gone.
            let _ = rustix::process::kill_process_group(leader, signal);
        }
    }

    /// Kills every process of the server now.
    pub(crate) fn kill(&self) {
        #[cfg(target_os = "linux")]
        if let Some(keeper) = self.leader
            && !self.done.load(Ordering::SeqCst)
        {
            let kill_all = rustix::process::Signal::from_named_raw(crate::keeper::KILL_ALL);
            if let Some(signal) = kill_all {
                let _ = rustix::process::kill_process(keeper, signal);
            }
        }
        #[cfg(not(target_os = "linux"))]
        self.signal(rustix::process::Signal::KILL);
    }

    /// Kills the keeper itself: the last resort when it does not exit after
    /// [`Group::kill`] (the server dies with it; its other processes may not).
    pub(crate) fn kill_keeper(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// Called once the spawned process is reaped: on Linux its keeper killed
    /// everything before exiting; elsewhere what is left of the group is killed.
    /// Nothing is signalled afterwards.
    fn finish(&self) {
        #[cfg(not(target_os = "linux"))]
        self.signal(rustix::process::Signal::KILL);
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The server's own process: on Linux the keeper's child, found in /proc; the
/// spawned process elsewhere. `None` if it is already gone.
pub(crate) fn server_pid(spawned: u32) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let keeper = libc::pid_t::try_from(spawned).ok()?;
        let mut found = None;
        crate::keeper::for_each_child(keeper, |pid| found = found.or(u32::try_from(pid).ok()));
        found
    }
    #[cfg(not(target_os = "linux"))]
    Some(spawned)
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
    use std::time::Duration;

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
        // 64 KiB hold exactly 16 lines of 4 KiB: the byte limit is reached, not passed.
        assert_eq!(log.lines().len(), 16);
        log.push("y".into());
        assert_eq!(log.lines().len(), 16);
        assert_eq!(log.tail(1), ["y"]);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_end_of_stderr_but_no_longer_than_its_limit() {
        let log = StderrLog::new();
        let started = tokio::time::Instant::now();
        log.drained(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5), "no end yet: the whole limit");
        log.eof.send_replace(true);
        let started = tokio::time::Instant::now();
        log.drained(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "ended: at once");
    }

    /// What `drain_stderr` keeps of what `script` writes to stderr.
    async fn drained(script: &str) -> Vec<String> {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(StderrLog::new());
        drain_stderr(child.stderr.take().unwrap(), log.clone()).await;
        child.wait().await.unwrap();
        assert!(*log.eof.borrow(), "the end is marked");
        log.lines()
    }

    #[tokio::test]
    async fn stderr_is_split_into_lines_and_a_last_line_without_newline_is_kept() {
        assert_eq!(drained(r"printf 'one\ntwo\r\n\nthree' >&2").await, ["one", "two", "", "three"]);
        assert_eq!(drained(r"printf 'four\n' >&2").await, ["four"]);
        assert!(drained("true").await.is_empty());
    }

    #[tokio::test]
    async fn a_line_longer_than_4_kib_is_cut_and_marked_and_one_of_4_kib_is_not() {
        let script = "head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; \
                      head -c 4096 /dev/zero | tr '\\0' y >&2; echo >&2; echo short >&2";
        let lines = drained(script).await;
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], format!("{}…", "x".repeat(MAX_LINE)));
        assert_eq!(lines[1], "y".repeat(MAX_LINE));
        assert_eq!(lines[2], "short");
    }

    #[tokio::test]
    async fn a_long_line_written_in_pieces_is_cut_once() {
        // Pieces of 1,000 bytes, flushed apart: the line grows across reads.
        let script = "for i in 1 2 3 4 5 6; do head -c 1000 /dev/zero | tr '\\0' z >&2; sleep 0.02; done; echo >&2";
        let lines = drained(script).await;
        assert_eq!(lines, [format!("{}…", "z".repeat(MAX_LINE))]);
    }

    /// A `sleep` leading a process group of its own, as a server's keeper does.
    fn sleeper() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap()
    }

    fn died_of(mut child: std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        child.wait().unwrap().signal()
    }

    #[test]
    fn signal_reaches_the_group_and_kill_keeper_is_sigkill() {
        let child = sleeper();
        Group::new(child.id()).signal(rustix::process::Signal::TERM);
        assert_eq!(died_of(child), Some(rustix::process::Signal::TERM.as_raw()));
        let child = sleeper();
        Group::new(child.id()).kill_keeper();
        assert_eq!(died_of(child), Some(rustix::process::Signal::KILL.as_raw()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kill_asks_the_keeper_and_an_armed_guard_kills_when_dropped() {
        let child = sleeper();
        Group::new(child.id()).kill();
        assert_eq!(died_of(child), Some(crate::keeper::KILL_ALL));
        let child = sleeper();
        drop(KillGuard(Some(Arc::new(Group::new(child.id())))));
        assert_eq!(died_of(child), Some(crate::keeper::KILL_ALL));
    }

    // Elsewhere `finish` kills what is left of the group, by design.
    #[cfg(target_os = "linux")]
    #[test]
    fn nothing_is_signalled_once_the_process_is_reaped_or_the_guard_disarmed() {
        let mut child = sleeper();
        let group = Arc::new(Group::new(child.id()));
        let mut guard = KillGuard(Some(group.clone()));
        guard.disarm();
        drop(guard);
        group.finish();
        group.signal(rustix::process::Signal::TERM);
        group.kill();
        group.kill_keeper();
        // A signal sent above would have decided the exit already; this one does.
        child.kill().unwrap();
        assert_eq!(died_of(child), Some(rustix::process::Signal::KILL.as_raw()));
    }
}
