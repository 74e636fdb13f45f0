//! What goes into the machine ([`Event`]) and what comes out of it
//! ([`Transition`]: [`Effect`]s, among them the [`LifecycleEvent`]s to publish and
//! the [`Reply`]s to callers).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{Health, State};
use crate::change::SpecChange;
use crate::failure::{Challenge, Failure};
use crate::spec::ValidSpec;

/// Identifies one connection attempt and the session it opens.
///
/// Every [`Effect::Connect`] carries a fresh generation; the session it opens
/// keeps it until it is closed. Reports that carry an old generation change
/// nothing: that is what stops "the late exit of the old process fails the new one".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An input to [`Lifecycle::handle`](crate::Lifecycle::handle): a request, or a
/// report of work an [`Effect`] started.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request (API `start`, or auto-start). Starts the server unless it is up;
    /// joins an attempt in flight.
    StartRequested,
    /// A request (API `stop`, removal, shutdown). Wins over anything in flight.
    StopRequested,
    /// A request (API `restart`). Stop if something runs, wait the grace period if
    /// something was stopped, start. Joins a restart in progress.
    RestartRequested,
    /// A request (API `check_health`). Pings the session now.
    HealthCheckRequested,
    /// A request (API `update_configuration`, or a reload) with the server's new
    /// definition. Swaps it in and does what [`Lifecycle::change_outcome`] says.
    ///
    /// [`Lifecycle::change_outcome`]: crate::Lifecycle::change_outcome
    SpecChanged(Box<ValidSpec>),
    /// The [`Effect::Connect`] of `generation` produced a live, initialized session.
    ConnectSucceeded {
        /// The attempt's generation.
        generation: Generation,
    },
    /// The [`Effect::Connect`] of `generation` failed, classified.
    ConnectFailed {
        /// The attempt's generation.
        generation: Generation,
        /// What went wrong.
        failure: Failure,
    },
    /// The live session of `generation` died by itself (process exited, stream
    /// ended, session could not be re-established).
    SessionLost {
        /// The session's generation.
        generation: Generation,
        /// Why; for stdio with the exit status and the last lines of stderr.
        failure: Failure,
    },
    /// The [`Effect::CloseSession`] of `generation` has finished: nothing of that
    /// session is left (for stdio, no process of it).
    SessionClosed {
        /// The session's generation.
        generation: Generation,
    },
    /// The [`Effect::Ping`] of `generation` was answered.
    PingSucceeded {
        /// The session's generation.
        generation: Generation,
        /// How long the answer took, as the driver measured it: from sending the
        /// ping to reading its answer. The machine compares it with
        /// [`Settings::degraded_after`](crate::Settings::degraded_after).
        latency: Duration,
    },
    /// The [`Effect::Ping`] of `generation` failed or timed out.
    PingFailed {
        /// The session's generation.
        generation: Generation,
        /// Why.
        failure: Failure,
    },
    /// The [`Effect::ListTools`] of `generation` has finished. A driver may also
    /// report a later listing of the same session (after the server announced a
    /// change of its tools); the last report counts.
    ToolsListed {
        /// The session's generation.
        generation: Generation,
        /// What the listing found.
        listing: ToolListing,
    },
    /// The instant of [`Lifecycle::poll_timeout`](crate::Lifecycle::poll_timeout)
    /// has come. An early `Timeout` changes nothing.
    Timeout,
}

/// What one `tools/list` of a live session found, as the driver reports it in
/// [`Event::ToolsListed`].
#[derive(Debug, Clone, PartialEq)]
pub enum ToolListing {
    /// The server's `initialize` result has no `tools` capability: it offers no
    /// tools, and was not asked for any.
    NotOffered,
    /// The server offers tools and listed this many (every page).
    Listed {
        /// Tools listed.
        count: usize,
    },
    /// The server offers tools but the listing failed.
    Failed(Failure),
}

/// An instruction from the machine to its driver. The driver executes the effects
/// of a [`Transition`] in order, all of them, before it feeds the next event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open a session to [`Lifecycle::spec`](crate::Lifecycle::spec): connect and
    /// initialize within `timeout`, then report [`Event::ConnectSucceeded`] or
    /// [`Event::ConnectFailed`] with this generation.
    Connect {
        /// Carry it in the report.
        generation: Generation,
        /// The connect-and-initialize timeout.
        timeout: Duration,
    },
    /// Abandon the attempt `generation`: drop it, and kill a process it spawned. No
    /// report is needed; should the attempt have succeeded anyway, report
    /// [`Event::ConnectSucceeded`] and the machine asks for the session to be closed.
    CancelConnect {
        /// The attempt to abandon.
        generation: Generation,
    },
    /// Close the session `generation` gracefully and within a bound (for stdio,
    /// SPEC §6 against every process of the server), drop it whatever happens, then
    /// report [`Event::SessionClosed`].
    CloseSession {
        /// The session to close.
        generation: Generation,
    },
    /// Ping the session `generation` within `timeout`, then report
    /// [`Event::PingSucceeded`] or [`Event::PingFailed`].
    Ping {
        /// The session to ping.
        generation: Generation,
        /// The ping timeout.
        timeout: Duration,
    },
    /// List the tools of session `generation` within `timeout` (only if its server
    /// offers tools), then report [`Event::ToolsListed`]. Asked for once after
    /// every successful start.
    ListTools {
        /// The session to list.
        generation: Generation,
        /// The listing's timeout.
        timeout: Duration,
    },
    /// Call the auth-required hook with the current definition and this challenge.
    /// It always comes before the [`Effect::Publish`] and [`Effect::Reply`] effects
    /// of its transition, so no one sees `auth_required` before the hook has run.
    CallAuthHook(Challenge),
    /// Publish this event to subscribers (stamping it with name, sequence and time).
    Publish(LifecycleEvent),
    /// Answer the callers waiting on a request.
    Reply(Reply),
}

/// An answer to callers that wait on a request. The machine does not know who
/// waits: the driver keeps the callers of each kind and answers all of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Every caller waiting for a start (or a restart) gets this outcome.
    Started(Result<(), StartError>),
    /// Every caller waiting for a stop: the server is down, and nothing of its
    /// last session is left.
    Stopped,
    /// Every caller waiting on a health check gets this result.
    HealthChecked {
        /// The health found.
        health: Health,
        /// Why it is unhealthy (`MCP ping failed: ...` or `MCP client not available`)
        /// or degraded (`MCP ping took ...`).
        error: Option<String>,
    },
    /// The caller of a definition change: what the change did.
    Updated(SpecChange),
}

/// Why a start (or restart) did not bring the server up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The server is already up; nothing changed.
    #[error("service {name} is already running")]
    AlreadyRunning {
        /// The server's name.
        name: String,
    },
    /// The server wants credentials (HTTP 401, or 403 `insufficient_scope`).
    #[error("authentication required: {message}")]
    NeedsCredentials {
        /// The parsed challenge.
        challenge: Box<Challenge>,
        /// The transport's description.
        message: String,
    },
    /// A remote server reached the unreachable threshold.
    #[error("server unreachable after {failures} consecutive failures: {cause}")]
    Unreachable {
        /// Consecutive failures so far.
        failures: u32,
        /// The last failure.
        cause: Failure,
    },
    /// The attempt failed (transiently or permanently; see the failure's class).
    #[error("failed to start MCP server: {0}")]
    Failed(Failure),
    /// A stop (or shutdown) won over the start.
    #[error("start was cancelled by a stop")]
    Cancelled,
}

/// Why an event was published (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// A start began.
    #[serde(rename = "MCPServerStarting")]
    Starting,
    /// A start succeeded.
    #[serde(rename = "MCPServerStarted")]
    Started,
    /// The server is down by request (or as part of a restart).
    #[serde(rename = "MCPServerStopped")]
    Stopped,
    /// A start failed, or the running server died.
    #[serde(rename = "MCPServerFailed")]
    Failed,
    /// The server wants credentials.
    #[serde(rename = "MCPServerAuthRequired")]
    AuthRequired,
    /// The server went from healthy to unhealthy (once per episode).
    #[serde(rename = "MCPServerHealthCheckFailed")]
    HealthCheckFailed,
    /// A restart began (by request, definition change, retry or crash recovery).
    #[serde(rename = "MCPServerRecoveryStarted")]
    RecoveryStarted,
    /// The start of a restart succeeded.
    #[serde(rename = "MCPServerRecoverySucceeded")]
    RecoverySucceeded,
    /// The start of a restart failed.
    #[serde(rename = "MCPServerRecoveryFailed")]
    RecoveryFailed,
    /// The start of a restart was answered with a demand for credentials.
    #[serde(rename = "MCPServerRecoveryAwaitingAuth")]
    RecoveryAwaitingAuth,
    /// (roster) The server became `degraded`: a ping answered more slowly than
    /// `degraded_after` (once per slow episode, like `HealthCheckFailed`).
    #[serde(rename = "MCPServerHealthDegraded")]
    HealthDegraded,
    /// (roster) A server that offers tools listed none, or could not list them,
    /// after a start (once per session, until a listing finds tools again).
    #[serde(rename = "MCPServerToolsMissing")]
    ToolsMissing,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 12] = [
        Reason::Starting,
        Reason::Started,
        Reason::Stopped,
        Reason::Failed,
        Reason::AuthRequired,
        Reason::HealthCheckFailed,
        Reason::RecoveryStarted,
        Reason::RecoverySucceeded,
        Reason::RecoveryFailed,
        Reason::RecoveryAwaitingAuth,
        Reason::HealthDegraded,
        Reason::ToolsMissing,
    ];

    /// The wire name (`MCPServerStarting`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Starting => "MCPServerStarting",
            Reason::Started => "MCPServerStarted",
            Reason::Stopped => "MCPServerStopped",
            Reason::Failed => "MCPServerFailed",
            Reason::AuthRequired => "MCPServerAuthRequired",
            Reason::HealthCheckFailed => "MCPServerHealthCheckFailed",
            Reason::RecoveryStarted => "MCPServerRecoveryStarted",
            Reason::RecoverySucceeded => "MCPServerRecoverySucceeded",
            Reason::RecoveryFailed => "MCPServerRecoveryFailed",
            Reason::RecoveryAwaitingAuth => "MCPServerRecoveryAwaitingAuth",
            Reason::HealthDegraded => "MCPServerHealthDegraded",
            Reason::ToolsMissing => "MCPServerToolsMissing",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event published to subscribers (SPEC §10): one per state or health change,
/// and one per lifecycle reason, each exactly once and in order: each event's
/// `previous_*` is the previous event's new values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// The lifecycle reason, or `None` for a plain state or health change.
    pub reason: Option<Reason>,
    /// State before.
    pub previous_state: State,
    /// State after.
    pub state: State,
    /// Health before.
    pub previous_health: Health,
    /// Health after.
    pub health: Health,
    /// The error, where one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// (roster) Failed connection attempts in a row, as of this event.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// (roster) While an automatic retry or crash recovery is scheduled: in how
    /// many milliseconds from this event it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The output of [`Lifecycle::handle`](crate::Lifecycle::handle).
#[must_use = "the effects must be executed"]
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// State before the event.
    pub from: State,
    /// State after the event.
    pub to: State,
    /// What the driver must do, in order.
    pub effects: Vec<Effect>,
}

impl Transition {
    /// True when the event changed nothing visible and asked for nothing.
    pub fn is_noop(&self) -> bool {
        self.from == self.to && self.effects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_wire_names() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "MCPServerStarting",
                "MCPServerStarted",
                "MCPServerStopped",
                "MCPServerFailed",
                "MCPServerAuthRequired",
                "MCPServerHealthCheckFailed",
                "MCPServerRecoveryStarted",
                "MCPServerRecoverySucceeded",
                "MCPServerRecoveryFailed",
                "MCPServerRecoveryAwaitingAuth",
                "MCPServerHealthDegraded",
                "MCPServerToolsMissing"
            ]
        );
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(r.to_string(), r.as_str());
        }
    }

    #[test]
    fn a_transition_is_a_no_op_only_without_a_move_and_without_effects() {
        let quiet = Transition { from: State::Stopped, to: State::Stopped, effects: vec![] };
        assert!(quiet.is_noop());
        let moved = Transition { from: State::Stopped, to: State::Starting, effects: vec![] };
        assert!(!moved.is_noop());
        let asked =
            Transition { from: State::Running, to: State::Running, effects: vec![Effect::Reply(Reply::Stopped)] };
        assert!(!asked.is_noop());
    }

    #[test]
    fn start_errors_read_as_the_reference_writes_them() {
        assert_eq!(StartError::AlreadyRunning { name: "fs".into() }.to_string(), "service fs is already running");
        let e = StartError::Unreachable { failures: 3, cause: Failure::transient("connection refused") };
        assert_eq!(e.to_string(), "server unreachable after 3 consecutive failures: connection refused");
        assert_eq!(
            StartError::Failed(Failure::permanent("HTTP 404")).to_string(),
            "failed to start MCP server: HTTP 404"
        );
        assert_eq!(Generation(7).to_string(), "#7");
    }
}
