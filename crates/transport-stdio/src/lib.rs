//! # roster-transport-stdio: MCP servers as local processes
//!
//! roster owns the child, not rmcp: [`StdioConnector`] spawns the server with
//! tokio's `Command` in a process group of its own, and hands rmcp only the
//! stdout/stdin pipes. That is what lets it report the exit status, kill what
//! `npx` or shell wrappers leave behind, and notice a dead server at once even
//! when a grandchild still holds its stdout.
//!
//! On Linux every server runs under a keeper (a forked child subreaper, see
//! `keeper.rs`): processes that leave the server's group (a daemon that
//! double-forks and calls `setsid`) are re-parented to it, so they are killed with
//! the server; and the keeper's parent-death signal kills every process of the
//! server when roster dies, whatever it dies of. Elsewhere the process group is
//! the boundary, and a process that leaves it is not followed.
//!
//! - stderr is drained line by line into tracing (target `roster::stderr`) and a
//!   ring buffer (the last 100 lines, at most 64 KiB) shown in status and quoted
//!   in failure messages.
//! - An exit watcher reaps the process, kills what is left of its group, and
//!   resolves [`Session::closed`] with the exit status.
//! - Closing follows SPEC §6 against the whole group: close stdin, wait 2 s,
//!   SIGTERM, wait 3 s, SIGKILL, reap.
//! - Errors are typed ([`StdioError`]) and classified once, by [`classify`].
//!
//! The adapter never sleeps between attempts, retries or counts: the core does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::RoleClient;
use rmcp::service::{Peer, ServiceError, ServiceExt};
use roster_core::{Failure, ServerSpec};
use roster_transport::mcp::{self, McpClient, Relay};
use roster_transport::{BoxFuture, CloseError, Connector, Session};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod error;
#[cfg(target_os = "linux")]
mod keeper;
mod process;

pub use error::{StdioError, classify, classify_request};
pub use process::{BASE_ENV_ALLOWLIST, Exit, STDERR_BYTES, STDERR_LINES};
use process::{Group, KillGuard, StderrLog};

/// The timings of the close sequence (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioOptions {
    /// How long to wait for the server to exit after its stdin is closed.
    pub stdin_grace: Duration,
    /// How long to wait after SIGTERM to the group before SIGKILL.
    pub term_grace: Duration,
    /// How long to wait for the reap after SIGKILL.
    pub kill_grace: Duration,
}

impl Default for StdioOptions {
    fn default() -> StdioOptions {
        StdioOptions {
            stdin_grace: Duration::from_secs(2),
            term_grace: Duration::from_secs(3),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// Connects to stdio servers by spawning them.
#[derive(Clone, Default)]
pub struct StdioConnector {
    options: StdioOptions,
    relay: Option<Arc<dyn Relay>>,
}

impl std::fmt::Debug for StdioConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioConnector").field("options", &self.options).finish_non_exhaustive()
    }
}

impl StdioConnector {
    /// A connector with the SPEC's close timings.
    pub fn new() -> StdioConnector {
        StdioConnector::default()
    }

    /// A connector with other close timings.
    pub fn with_options(options: StdioOptions) -> StdioConnector {
        StdioConnector { options, relay: None }
    }

    /// The same, passing what servers send to roster on to `relay`.
    #[must_use]
    pub fn with_relay(mut self, relay: Arc<dyn Relay>) -> StdioConnector {
        self.relay = Some(relay);
        self
    }

    /// Spawns the server and completes the MCP handshake before `deadline`.
    ///
    /// # Errors
    /// Typed; see [`classify`] for what each means.
    pub async fn open(&self, spec: &ServerSpec, deadline: Instant) -> Result<StdioSession, StdioError> {
        if let Some(cwd) = &spec.cwd
            && !std::path::Path::new(cwd).is_dir()
        {
            return Err(StdioError::Cwd { cwd: cwd.clone() });
        }
        let mut child = process::command(spec)
            .spawn()
            .map_err(|source| StdioError::Spawn { command: spec.command.clone(), source })?;
        let spawned = child.id().unwrap_or_default();
        let group = Arc::new(Group::new(spawned));
        let pid = process::server_pid(spawned).unwrap_or(spawned);
        // From here on, any way out of this function but success kills the group.
        let mut guard = KillGuard(Some(group.clone()));
        let stdin = child.stdin.take().ok_or(StdioError::MissingPipe("stdin"))?;
        let stdout = child.stdout.take().ok_or(StdioError::MissingPipe("stdout"))?;
        let stderr = child.stderr.take().ok_or(StdioError::MissingPipe("stderr"))?;
        let log = Arc::new(StderrLog::new());
        tokio::spawn(process::drain_stderr(stderr, log.clone()));
        let cancel = CancellationToken::new();
        let (exit_tx, exit) = watch::channel::<Option<Exit>>(None);
        tokio::spawn(process::watch_exit(child, group.clone(), cancel.clone(), exit_tx));
        debug!(pid, command = %spec.command, "spawned");

        let handshake = mcp::Client::new(&spec.name, mcp::PROTOCOL_VERSION, self.relay.clone())
            .serve_with_ct((stdout, stdin), cancel.clone());
        let mut exited = exit.clone();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout_at(deadline.into(), handshake) => outcome,
            // The process died: do not wait for a stdout EOF a grandchild may hold back.
            true = has_exited(&mut exited) => {
                return Err(exited_during_init(&exit, &log).await);
            }
        };
        let running = match outcome {
            Ok(Ok(running)) => running,
            Ok(Err(source)) => {
                // A handshake that broke because the process is exiting says so.
                let mut exited = exit.clone();
                if tokio::time::timeout(Duration::from_millis(500), has_exited(&mut exited)).await == Ok(true) {
                    return Err(exited_during_init(&exit, &log).await);
                }
                return Err(StdioError::Initialize { source: Box::new(source), stderr: log.tail(STDERR_LINES) });
            }
            Err(_) => {
                group.kill();
                let after = spec.connect_timeout();
                log.drained(Duration::from_millis(200)).await;
                return Err(StdioError::InitTimeout { after, stderr: log.tail(STDERR_LINES) });
            }
        };
        guard.disarm();
        let client = McpClient::new(running, cancel);
        Ok(StdioSession { client, exit, group, pid, log, options: self.options })
    }
}

/// Waits for the exit status; false if the watcher is gone without one.
async fn has_exited(exit: &mut watch::Receiver<Option<Exit>>) -> bool {
    exit.wait_for(Option::is_some).await.is_ok()
}

async fn exited_during_init(exit: &watch::Receiver<Option<Exit>>, log: &StderrLog) -> StdioError {
    log.drained(Duration::from_millis(500)).await;
    StdioError::ExitedDuringInit { status: exit.borrow().clone(), stderr: log.tail(STDERR_LINES) }
}

#[async_trait]
impl Connector for StdioConnector {
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        match self.open(spec, deadline).await {
            Ok(session) => Ok(Box::new(session)),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// A live stdio session: the process, its group, and the rmcp client over its pipes.
pub struct StdioSession {
    client: McpClient,
    exit: watch::Receiver<Option<Exit>>,
    group: Arc<Group>,
    pid: u32,
    log: Arc<StderrLog>,
    options: StdioOptions,
}

impl std::fmt::Debug for StdioSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioSession").field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl StdioSession {
    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut exit = self.exit.clone();
        tokio::time::timeout(limit, has_exited(&mut exit)).await == Ok(true)
    }
}

#[async_trait]
impl Session for StdioSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| classify_request(&e))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let (mut exit, ended, log) = (self.exit.clone(), self.client.ended(), self.log.clone());
        Box::pin(async move {
            tokio::select! {
                true = has_exited(&mut exit) => {}
                () = ended => {
                    // The session ended; the exit status usually follows at once.
                    let _ = tokio::time::timeout(Duration::from_millis(200), has_exited(&mut exit)).await;
                }
            }
            log.drained(Duration::from_millis(200)).await;
            let status = exit.borrow().clone();
            classify(&StdioError::Exited { status, stderr: log.tail(STDERR_LINES) })
        })
    }

    async fn close(&self) -> Result<(), CloseError> {
        // 1. Close stdin (rmcp drops the transport once its loop ends).
        self.client.close(Duration::ZERO).await;
        if self.wait_exit(self.options.stdin_grace).await {
            return Ok(());
        }
        // 2. SIGTERM to the whole group.
        self.group.signal(rustix::process::Signal::TERM);
        if self.wait_exit(self.options.term_grace).await {
            return Err(CloseError(format!(
                "server ignored stdin EOF for {:?}; stopped by SIGTERM",
                self.options.stdin_grace
            )));
        }
        // 3. SIGKILL to every process of the server, and reap.
        self.group.kill();
        if self.wait_exit(self.options.kill_grace).await {
            return Err(CloseError("server ignored SIGTERM; killed with SIGKILL".to_owned()));
        }
        // The keeper did not answer: kill it (the server dies with it).
        self.group.kill_keeper();
        if self.wait_exit(self.options.kill_grace).await {
            Err(CloseError("server ignored SIGTERM and its keeper a kill; both killed with SIGKILL".to_owned()))
        } else {
            Err(CloseError(format!("process {} did not exit after SIGKILL", self.pid)))
        }
    }

    fn kill(&self) {
        self.group.kill();
    }

    fn peer(&self) -> Option<Peer<RoleClient>> {
        Some(self.client.peer().clone())
    }

    fn classify(&self, error: &ServiceError) -> Failure {
        classify_request(error)
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn stderr_tail(&self) -> Vec<String> {
        self.log.lines()
    }
}

impl Drop for StdioSession {
    fn drop(&mut self) {
        // Dropped without a close (an aborted task, a shutdown): nothing survives.
        self.group.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_shows_its_timings() {
        let shown = format!(
            "{:?}",
            StdioConnector::with_options(StdioOptions {
                stdin_grace: Duration::from_millis(7),
                ..StdioOptions::default()
            })
        );
        assert!(shown.starts_with("StdioConnector {"), "{shown}");
        assert!(shown.contains("stdin_grace: 7ms"), "{shown}");
        assert_eq!(StdioConnector::new().options, StdioOptions::default());
        assert_eq!(StdioOptions::default().term_grace, Duration::from_secs(3));
    }
}
