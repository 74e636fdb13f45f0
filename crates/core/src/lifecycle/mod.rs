//! The lifecycle of one MCP server as a pure state machine (SPEC §2–§8).
//!
//! [`Lifecycle`] is a value the driver feeds. Every input is an [`Event`] with
//! the current time; every output is a [`Transition`] whose [`Effect`]s the
//! driver executes **in order**. The next moment the machine wants to be woken
//! is [`Lifecycle::poll_timeout`]; the driver keeps one timer and re-arms it
//! after every call to [`Lifecycle::handle`].
//!
//! # Driving it
//! 1. Feed requests (`StartRequested`, `StopRequested`, `RestartRequested`,
//!    `HealthCheckRequested`, `SpecChanged`) as they arrive.
//! 2. Execute the returned effects in order. `Connect`, `Disconnect` and `Ping`
//!    start work whose result comes back later as an event carrying the same
//!    [`Generation`].
//! 3. Feed `Timeout` when the instant of `poll_timeout()` has come. An early
//!    `Timeout` does nothing.
//! 4. Watch the live session: when it dies, feed `TransportClosed`.
//!
//! Results that carry an old generation (a connect that finished after a stop,
//! a ping answered by a session that has since been replaced) change nothing,
//! except that a late successful connect is handed back to be closed.
//!
//! # Generations
//! Each `Connect` carries a fresh generation; the session it opens keeps it
//! until it is closed. That is what stops "the late exit of the old process
//! fails the new one".

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::change::{ChangeKind, configuration_changed};
use crate::failure::{Challenge, Failure, FailureClass, FailureKind};
use crate::spec::ServerSpec;
use crate::status::Reason;

#[cfg(test)]
mod tests;

/// `UNREACHABLE_THRESHOLD`: consecutive transient failures after which a remote server is unreachable.
pub const UNREACHABLE_THRESHOLD: u32 = 3;
/// `RESTART_GRACE_PERIOD`: the pause between stopping and starting again in a restart.
pub const RESTART_GRACE_PERIOD: Duration = Duration::from_millis(200);
/// `HEALTH_CHECK_INTERVAL`: how often a running server is pinged.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// `PING_TIMEOUT`: how long one ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// `UNHEALTHY_THRESHOLD`: failed pings in a row after which the session counts as lost.
pub const UNHEALTHY_THRESHOLD: u32 = 3;
/// `STABLE_PERIOD`: how long a server must stay up for its crash count to clear.
pub const STABLE_PERIOD: Duration = Duration::from_secs(5 * 60);

/// The text of a health check that found no session to ping.
pub const NO_CLIENT: &str = "MCP client not available";

/// The numbers the lifecycle runs by (SPEC §11). Every one is configurable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Delay between failed connection attempts (and between crashes, see SPEC §7).
    pub backoff: Backoff,
    /// Consecutive transient failures that make a remote server unreachable (at least 1).
    pub unreachable_threshold: u32,
    /// Pause between the stop and the start of a restart.
    pub restart_grace: Duration,
    /// Interval between health probes of a running server (greater than zero).
    pub health_check_interval: Duration,
    /// How long one ping may take; carried in [`Effect::Ping`].
    pub ping_timeout: Duration,
    /// Failed pings in a row after which the session counts as lost (at least 1).
    pub unhealthy_threshold: u32,
    /// Uptime after which the crash count clears.
    pub stable_period: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backoff: Backoff::default(),
            unreachable_threshold: UNREACHABLE_THRESHOLD,
            restart_grace: RESTART_GRACE_PERIOD,
            health_check_interval: HEALTH_CHECK_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            unhealthy_threshold: UNHEALTHY_THRESHOLD,
            stable_period: STABLE_PERIOD,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A threshold was zero.
    #[error("{0} must be at least 1")]
    ZeroThreshold(&'static str),
    /// An interval was zero.
    #[error("{0} must be greater than zero")]
    ZeroInterval(&'static str),
}

impl Settings {
    /// Checks the rules in the field docs.
    ///
    /// # Errors
    /// The first setting that breaks its rule. [`Lifecycle`] itself treats a zero
    /// threshold as 1 and a zero interval as one millisecond, so it stays total.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.unreachable_threshold == 0 {
            return Err(SettingsError::ZeroThreshold("unreachable_threshold"));
        }
        if self.unhealthy_threshold == 0 {
            return Err(SettingsError::ZeroThreshold("unhealthy_threshold"));
        }
        if self.health_check_interval.is_zero() {
            return Err(SettingsError::ZeroInterval("health_check_interval"));
        }
        if self.ping_timeout.is_zero() {
            return Err(SettingsError::ZeroInterval("ping_timeout"));
        }
        Ok(())
    }
}

/// The state of a server, as published (SPEC §2).
///
/// ```text
///                 StartRequested / RestartRequested / retry due
///   ┌────────────┐ ───────────────────────────────────────────▶ ┌──────────┐
///   │ unknown    │                                              │ starting │──── ConnectFailed ───┐
///   │ stopped    │ ◀──────── StopRequested (cancels) ────────── └──────────┘   transient/perm.    │
///   │ disconnect.│                                                   │ Connected                  ▼
///   └────────────┘                                                   ▼                      ┌──────────┐
///        ▲    ▲                                            ┌──────────────────┐  crash    │ failed   │
///        │    │          Disconnected          ┌────────┐  │ running (stdio)  │──────────▶│          │
///        │    └────────────────────────────────│stopping│◀─│ connected (rem.) │           └──────────┘
///        │                                     └────────┘  └──────────────────┘  3rd transient │ (remote)
///        │                     StopRequested ───────────────────┘     ▲                         ▼
///        │                                                            │ Connected     ┌─────────────┐
///        │                                                            └───────────────│ unreachable │
///        │                                         401 ┌───────────────┐              └─────────────┘
///        └─────────── StopRequested ───────────────────│ auth_required │◀── ConnectFailed(401), remote
///                     (from failed, unreachable,       └───────────────┘
///                      auth_required, unknown)
/// ```
///
/// `failed` and `unreachable` are left by a retry at `next_retry_after`, an
/// explicit start or restart, or a definition change; `auth_required` only by the
/// last two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never started.
    Unknown,
    /// A connection attempt is in flight.
    Starting,
    /// A stdio server is up.
    Running,
    /// A remote server is up.
    Connected,
    /// The session is being closed.
    Stopping,
    /// A stdio server is down by request.
    Stopped,
    /// A remote server is down by request.
    Disconnected,
    /// The last attempt failed, or the running server died.
    Failed,
    /// A remote server failed `UNREACHABLE_THRESHOLD` times in a row.
    Unreachable,
    /// A remote server answered 401: it wants credentials.
    AuthRequired,
}

impl State {
    /// The wire name (`unknown`, `starting`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Starting => "starting",
            State::Running => "running",
            State::Connected => "connected",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Disconnected => "disconnected",
            State::Failed => "failed",
            State::Unreachable => "unreachable",
            State::AuthRequired => "auth_required",
        }
    }

    /// `running` or `connected`.
    pub fn is_running(self) -> bool {
        matches!(self, State::Running | State::Connected)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health of a server (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not known (not up, or down by request).
    Unknown,
    /// Up and answering pings.
    Healthy,
    /// Failed, or missing pings.
    Unhealthy,
}

impl Health {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one connection attempt and the session it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An input to [`Lifecycle::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sent by the API (`start`) or the supervisor (auto-start). Starts the server
    /// unless it is up; joins an attempt in flight.
    StartRequested,
    /// Sent by the API (`stop`) or the supervisor (removal, shutdown). Wins over
    /// anything in flight.
    StopRequested,
    /// Sent by the API (`restart`). Stop if something runs, wait the grace period
    /// if something was stopped, start.
    RestartRequested,
    /// Sent by the API (`check_health`). Pings the session now.
    HealthCheckRequested,
    /// Sent by the driver when the `Connect` of `generation` produced a live session.
    Connected {
        /// The attempt's generation.
        generation: Generation,
    },
    /// Sent by the driver when the `Connect` of `generation` failed, classified.
    ConnectFailed {
        /// The attempt's generation.
        generation: Generation,
        /// What went wrong.
        failure: Failure,
    },
    /// Sent by the driver when the live session of `generation` died by itself (process
    /// exited, stream ended, session could not be re-established).
    TransportClosed {
        /// The session's generation.
        generation: Generation,
        /// Why, with exit status and stderr for stdio.
        failure: Failure,
    },
    /// Sent by the driver when the `Disconnect` of `generation` has finished.
    Disconnected {
        /// The session's generation.
        generation: Generation,
    },
    /// Sent by the driver when the `Ping` of `generation` was answered.
    PingSucceeded {
        /// The session's generation.
        generation: Generation,
    },
    /// Sent by the driver when the `Ping` of `generation` failed or timed out.
    PingFailed {
        /// The session's generation.
        generation: Generation,
        /// Why.
        failure: Failure,
    },
    /// Sent by the API (`update_configuration`) or the supervisor (reload) with the
    /// server's new definition. Swaps it in, and restarts when SPEC §8 says so.
    SpecChanged(Box<ServerSpec>),
    /// Sent by the driver when the instant of [`Lifecycle::poll_timeout`] has come.
    Timeout,
}

/// An instruction from the core to the driver. Execute effects in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open a connection to [`Lifecycle::spec`] within `timeout`, then report
    /// `Connected { generation }` or `ConnectFailed { generation, .. }`.
    Connect {
        /// Carry it in the report.
        generation: Generation,
        /// The connect-and-initialize timeout.
        timeout: Duration,
    },
    /// Abandon the attempt `generation` (drop it; a process it spawned must die). If it
    /// already succeeded, report `Connected { generation }` anyway: the core will ask
    /// for the session to be closed.
    CancelConnect {
        /// The attempt to abandon.
        generation: Generation,
    },
    /// Close the session `generation` gracefully and boundedly (for stdio the whole
    /// process group), drop it whatever happens, then report `Disconnected { generation }`.
    Disconnect {
        /// The session to close.
        generation: Generation,
    },
    /// Ping the session `generation` with `timeout`, then report `PingSucceeded` or `PingFailed`.
    Ping {
        /// The session to ping.
        generation: Generation,
        /// The ping timeout.
        timeout: Duration,
    },
    /// Call the auth-required hook with the current definition and this challenge,
    /// before executing the effects that follow (the state change is among them).
    CallAuthHook(Challenge),
    /// Publish this event to subscribers (stamping it with name, sequence and time).
    Publish(LifecycleEvent),
    /// Answer the callers waiting on a request.
    Reply(Reply),
}

/// An answer to callers that wait on a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Every caller waiting for a start (or a restart) gets this outcome.
    Started(Result<(), StartError>),
    /// Every caller waiting for a stop: the server is down.
    Stopped,
    /// Every caller waiting on a health check gets this result.
    HealthChecked {
        /// The health found.
        health: Health,
        /// Why it is unhealthy (`MCP ping failed: ...` or `MCP client not available`).
        error: Option<String>,
    },
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
    /// The server answered 401.
    #[error("authentication required: {message}")]
    AuthRequired {
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

/// An event published to subscribers (SPEC §10): one per state or health change,
/// and one per lifecycle reason, each exactly once.
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
}

/// The output of [`Lifecycle::handle`].
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

/// What the machine is doing, with the data that only exists in that phase.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No session and no attempt; maybe something scheduled.
    Idle { pending: Option<Pending> },
    /// `Connect { generation }` is in flight (state `starting`).
    Connecting { generation: Generation, recovery: bool },
    /// Session `generation` is live since `since` (state `running`/`connected`).
    Up { generation: Generation, since: Instant, probe: Probe },
    /// `Disconnect { generation }` is in flight (state `stopping`).
    Closing { generation: Generation, then: AfterClose },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    at: Instant,
    kind: PendingKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PendingKind {
    /// A retry after a failed attempt (SPEC §3.6).
    Retry,
    /// Recovery after the server died while up (SPEC §7).
    CrashRecovery,
    /// The start of a restart, after the grace period.
    Start { recovery: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    /// When the next ping is due; `None` while one is in flight.
    next_at: Option<Instant>,
    in_flight: bool,
    missed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterClose {
    Stop,
    Start { recovery: bool },
}

/// The lifecycle of one server. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    spec: ServerSpec,
    settings: Settings,
    rng: fastrand::Rng,
    state: State,
    health: Health,
    phase: Phase,
    last_error: Option<String>,
    last_failure: Option<FailureKind>,
    /// The challenge of the 401 that put the server in `auth_required`.
    challenge: Option<Challenge>,
    consecutive_failures: u32,
    crash_count: u32,
    restart_count: u32,
    last_attempt: Option<Instant>,
    next_retry_after: Option<Instant>,
    /// `MCPServerHealthCheckFailed` was published in this unhealthy episode.
    health_gate: bool,
    last_gen: u64,
    /// Some caller waits for the outcome of a start.
    owed_start: bool,
    /// Some caller waits for a stop to finish.
    owed_stop: bool,
}

impl Lifecycle {
    /// A server in state `unknown`. `seed` feeds the jitter (if the backoff has any),
    /// so that the same seed and events give the same transitions.
    pub fn new(spec: ServerSpec, settings: Settings, seed: u64) -> Lifecycle {
        Lifecycle {
            spec,
            settings,
            rng: fastrand::Rng::with_seed(seed),
            state: State::Unknown,
            health: Health::Unknown,
            phase: Phase::Idle { pending: None },
            last_error: None,
            last_failure: None,
            challenge: None,
            consecutive_failures: 0,
            crash_count: 0,
            restart_count: 0,
            last_attempt: None,
            next_retry_after: None,
            health_gate: false,
            last_gen: 0,
            owed_start: false,
            owed_stop: false,
        }
    }

    /// The current definition.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// `running` or `connected`.
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// Running and healthy.
    pub fn is_healthy(&self) -> bool {
        self.is_running() && self.health == Health::Healthy
    }

    /// State `unreachable`.
    pub fn is_unreachable(&self) -> bool {
        self.state == State::Unreachable
    }

    /// A live session exists.
    pub fn is_client_ready(&self) -> bool {
        self.session().is_some()
    }

    /// The live session's generation.
    pub fn session(&self) -> Option<Generation> {
        match self.phase {
            Phase::Up { generation, .. } => Some(generation),
            Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The attempt in flight.
    pub fn attempt(&self) -> Option<Generation> {
        match self.phase {
            Phase::Connecting { generation, .. } => Some(generation),
            Phase::Idle { .. } | Phase::Up { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The session being closed.
    pub fn closing(&self) -> Option<Generation> {
        match self.phase {
            Phase::Closing { generation, .. } => Some(generation),
            Phase::Idle { .. } | Phase::Up { .. } | Phase::Connecting { .. } => None,
        }
    }

    /// When the live session came up.
    pub fn up_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Up { since, .. } => Some(since),
            Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The last error, cleared by a start, a success or a stop.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The class of the last failure, cleared with the error.
    pub fn last_failure(&self) -> Option<FailureKind> {
        self.last_failure
    }

    /// What the server asked for when it answered 401 (while `auth_required`).
    pub fn auth_challenge(&self) -> Option<&Challenge> {
        self.challenge.as_ref()
    }

    /// Failed connection attempts in a row; reset by a successful start or a stop.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Crashes (deaths while up) since the server last stayed up for the stable period.
    pub fn crash_count(&self) -> u32 {
        self.crash_count
    }

    /// Restarts begun (by request, definition change, retry or crash recovery).
    pub fn restart_count(&self) -> u32 {
        self.restart_count
    }

    /// Failed pings in a row of the live session.
    pub fn missed_pings(&self) -> u32 {
        match self.phase {
            Phase::Up { probe, .. } => probe.missed,
            Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => 0,
        }
    }

    /// When the last start began.
    pub fn last_attempt(&self) -> Option<Instant> {
        self.last_attempt
    }

    /// When the next automatic retry or crash recovery runs.
    pub fn next_retry_after(&self) -> Option<Instant> {
        self.next_retry_after
    }

    /// The next instant at which the machine wants a [`Event::Timeout`]: a retry,
    /// the end of a grace period, a health probe, or the end of the stable period.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { pending } => pending.map(|p| p.at),
            Phase::Up { since, probe, .. } => {
                let stable = (self.crash_count > 0).then(|| since.checked_add(self.settings.stable_period)).flatten();
                match (probe.next_at, stable) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// Feeds one event. Never fails: an event that does not apply returns a
    /// transition with `from == to` and no effects.
    pub fn handle(&mut self, now: Instant, event: Event) -> Transition {
        let from = self.state;
        let mut fx = Vec::new();
        match event {
            Event::StartRequested => self.on_start_requested(now, &mut fx),
            Event::StopRequested => self.on_stop_requested(&mut fx),
            Event::RestartRequested => self.on_restart_requested(now, &mut fx),
            Event::HealthCheckRequested => self.on_health_check_requested(&mut fx),
            Event::Connected { generation } => self.on_connected(now, generation, &mut fx),
            Event::ConnectFailed { generation, failure } => self.on_connect_failed(now, generation, failure, &mut fx),
            Event::TransportClosed { generation, failure } => {
                self.on_transport_closed(now, generation, failure, &mut fx)
            }
            Event::Disconnected { generation } => self.on_disconnected(now, generation, &mut fx),
            Event::PingSucceeded { generation } => self.on_ping_succeeded(now, generation, &mut fx),
            Event::PingFailed { generation, failure } => self.on_ping_failed(now, generation, failure, &mut fx),
            Event::SpecChanged(spec) => self.on_spec_changed(now, *spec, &mut fx),
            Event::Timeout => self.on_timeout(now, &mut fx),
        }
        Transition { from, to: self.state, effects: fx }
    }

    // ----- requests -------------------------------------------------------------------

    fn on_start_requested(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match &mut self.phase {
            Phase::Up { .. } => {
                fx.push(Effect::Reply(Reply::Started(Err(StartError::AlreadyRunning {
                    name: self.spec.name.clone(),
                }))));
            }
            // SPEC §3.2: join the attempt in flight.
            Phase::Connecting { .. } => self.owed_start = true,
            Phase::Closing { then, .. } => {
                if let AfterClose::Stop = then {
                    *then = AfterClose::Start { recovery: false };
                }
                self.owed_start = true;
            }
            Phase::Idle { pending: Some(Pending { kind: PendingKind::Start { .. }, .. }) } => self.owed_start = true,
            Phase::Idle {
                pending: None | Some(Pending { kind: PendingKind::Retry | PendingKind::CrashRecovery, .. }),
            } => {
                self.owed_start = true;
                self.begin_attempt(now, false, fx);
            }
        }
    }

    fn on_stop_requested(&mut self, fx: &mut Vec<Effect>) {
        match &mut self.phase {
            Phase::Up { generation, probe, .. } => {
                let (generation, ping_in_flight) = (*generation, probe.in_flight);
                self.owed_stop = true;
                self.begin_close(generation, AfterClose::Stop, ping_in_flight, fx);
            }
            Phase::Connecting { generation, .. } => {
                let generation = *generation;
                fx.push(Effect::CancelConnect { generation });
                self.finish_stop(fx);
            }
            Phase::Closing { then, .. } => {
                if let AfterClose::Start { .. } = then {
                    *then = AfterClose::Stop;
                }
                self.owed_stop = true;
                self.reply_start(Err(StartError::Cancelled), fx);
            }
            Phase::Idle { .. } => {
                if self.is_down_by_request() {
                    // SPEC §6: nothing happens and nothing is published; a pending
                    // restart (in its grace period) is cancelled.
                    self.phase = Phase::Idle { pending: None };
                    self.clear_counters();
                    self.reply_start(Err(StartError::Cancelled), fx);
                    fx.push(Effect::Reply(Reply::Stopped));
                } else {
                    self.finish_stop(fx);
                }
            }
        }
    }

    fn on_restart_requested(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        self.owed_start = true;
        self.begin_restart(now, fx);
    }

    fn on_health_check_requested(&mut self, fx: &mut Vec<Effect>) {
        match &mut self.phase {
            Phase::Up { generation, probe, .. } => {
                if !probe.in_flight {
                    probe.in_flight = true;
                    probe.next_at = None;
                    fx.push(Effect::Ping { generation: *generation, timeout: self.settings.ping_timeout });
                }
            }
            Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => {
                fx.push(Effect::Reply(Reply::HealthChecked {
                    health: Health::Unhealthy,
                    error: Some(NO_CLIENT.to_owned()),
                }));
            }
        }
    }

    fn on_spec_changed(&mut self, now: Instant, spec: ServerSpec, fx: &mut Vec<Effect>) {
        let change = configuration_changed(&self.spec, &spec);
        let auto_start_enabled = !self.spec.auto_start && spec.auto_start;
        self.spec = spec;
        match change.kind {
            ChangeKind::None | ChangeKind::MetadataOnly => {}
            ChangeKind::Restart => match self.phase {
                Phase::Up { .. } | Phase::Connecting { .. } => self.begin_restart(now, fx),
                // A restart in progress, or a stop by request: the new definition is
                // used by the coming start, or not at all.
                Phase::Closing { .. }
                | Phase::Idle { pending: Some(Pending { kind: PendingKind::Start { .. }, .. }) } => {}
                Phase::Idle {
                    pending: None | Some(Pending { kind: PendingKind::Retry | PendingKind::CrashRecovery, .. }),
                } => {
                    match self.state {
                        State::Stopped | State::Disconnected | State::Unknown => {
                            // Down by request (or never started): stays down, unless
                            // auto_start was just switched on. The name of "down"
                            // follows the type.
                            if self.is_down_by_request() && self.state != self.down_state() {
                                let down = self.down_state();
                                self.set(down, Health::Unknown, None, None, fx);
                            }
                            if auto_start_enabled {
                                self.begin_attempt(now, false, fx);
                            }
                        }
                        State::Failed
                        | State::Unreachable
                        | State::AuthRequired
                        | State::Starting
                        | State::Running
                        | State::Connected
                        | State::Stopping => self.begin_restart(now, fx),
                    }
                }
            },
        }
    }

    // ----- reports from the driver ------------------------------------------------------

    fn on_connected(&mut self, now: Instant, generation: Generation, fx: &mut Vec<Effect>) {
        match self.phase {
            Phase::Connecting { generation: current, recovery } if current == generation => {
                self.consecutive_failures = 0;
                self.next_retry_after = None;
                self.last_error = None;
                self.last_failure = None;
                self.health_gate = false;
                let next_at = now.checked_add(self.health_interval());
                self.phase =
                    Phase::Up { generation, since: now, probe: Probe { next_at, in_flight: false, missed: 0 } };
                let up = self.up_state();
                self.set(up, Health::Healthy, Some(Reason::Started), None, fx);
                if recovery {
                    self.announce(Reason::RecoverySucceeded, None, fx);
                }
                self.reply_start(Ok(()), fx);
            }
            Phase::Connecting { .. } | Phase::Idle { .. } | Phase::Up { .. } | Phase::Closing { .. } => {
                // A late success of an abandoned attempt: close it so it does not leak.
                if !self.owns(generation) {
                    fx.push(Effect::Disconnect { generation });
                }
            }
        }
    }

    fn on_connect_failed(&mut self, now: Instant, generation: Generation, failure: Failure, fx: &mut Vec<Effect>) {
        match self.phase {
            Phase::Connecting { generation: current, recovery } if current == generation => {
                self.attempt_failed(now, failure, recovery, fx)
            }
            Phase::Connecting { .. } | Phase::Idle { .. } | Phase::Up { .. } | Phase::Closing { .. } => {}
        }
    }

    fn on_transport_closed(&mut self, now: Instant, generation: Generation, failure: Failure, fx: &mut Vec<Effect>) {
        match self.phase {
            Phase::Up { generation: current, since, probe } if current == generation => {
                self.session_lost(now, generation, since, probe.in_flight, failure, fx);
            }
            Phase::Up { .. } | Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    fn on_disconnected(&mut self, now: Instant, generation: Generation, fx: &mut Vec<Effect>) {
        match self.phase {
            Phase::Closing { generation: current, then } if current == generation => match then {
                AfterClose::Stop => self.finish_stop(fx),
                AfterClose::Start { recovery } => {
                    let pending = now
                        .checked_add(self.settings.restart_grace)
                        .map(|at| Pending { at, kind: PendingKind::Start { recovery } });
                    self.phase = Phase::Idle { pending };
                    let down = self.down_state();
                    self.set(down, Health::Unknown, Some(Reason::Stopped), None, fx);
                    if std::mem::take(&mut self.owed_stop) {
                        fx.push(Effect::Reply(Reply::Stopped));
                    }
                    if pending.is_none() {
                        // The grace period does not fit in an Instant: start right away.
                        self.begin_attempt(now, recovery, fx);
                    }
                }
            },
            Phase::Closing { .. } | Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Up { .. } => {}
        }
    }

    fn on_ping_succeeded(&mut self, now: Instant, generation: Generation, fx: &mut Vec<Effect>) {
        let interval = self.health_interval();
        match &mut self.phase {
            Phase::Up { generation: current, probe, .. } if *current == generation && probe.in_flight => {
                *probe = Probe { next_at: now.checked_add(interval), in_flight: false, missed: 0 };
                self.health_gate = false;
                let state = self.state;
                self.set(state, Health::Healthy, None, None, fx);
                fx.push(Effect::Reply(Reply::HealthChecked { health: Health::Healthy, error: None }));
            }
            Phase::Up { .. } | Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    fn on_ping_failed(&mut self, now: Instant, generation: Generation, failure: Failure, fx: &mut Vec<Effect>) {
        let interval = self.health_interval();
        let threshold = self.settings.unhealthy_threshold.max(1);
        let auth_lost = self.is_auth_failure(&failure);
        let Phase::Up { generation: current, since, probe } = &mut self.phase else { return };
        if *current != generation || !probe.in_flight {
            return;
        }
        probe.in_flight = false;
        probe.missed = probe.missed.saturating_add(1);
        let missed = probe.missed;
        let since = *since;
        let lost = missed >= threshold || auth_lost;
        if !lost {
            probe.next_at = now.checked_add(interval);
        }
        let error = format!("MCP ping failed: {}", failure.message);
        let reason = (!std::mem::replace(&mut self.health_gate, true)).then_some(Reason::HealthCheckFailed);
        let state = self.state;
        self.set(state, Health::Unhealthy, reason, Some(error.clone()), fx);
        fx.push(Effect::Reply(Reply::HealthChecked { health: Health::Unhealthy, error: Some(error) }));
        if lost {
            let failure = if auth_lost {
                failure
            } else {
                Failure::transient(format!(
                    "session lost: {missed} health checks failed in a row, the last with: {}",
                    failure.message
                ))
            };
            self.session_lost(now, generation, since, false, failure, fx);
        }
    }

    fn on_timeout(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match &mut self.phase {
            Phase::Idle { pending: Some(p) } if now >= p.at => match p.kind {
                // SPEC §5, §7: automatic retries and crash recovery run as restarts.
                PendingKind::Retry | PendingKind::CrashRecovery => self.begin_restart(now, fx),
                PendingKind::Start { recovery } => self.begin_attempt(now, recovery, fx),
            },
            Phase::Up { generation, since, probe } => {
                let generation = *generation;
                if self.crash_count > 0 && since.checked_add(self.settings.stable_period).is_some_and(|t| now >= t) {
                    self.crash_count = 0;
                }
                if probe.next_at.is_some_and(|t| now >= t) && !probe.in_flight {
                    probe.in_flight = true;
                    probe.next_at = None;
                    fx.push(Effect::Ping { generation, timeout: self.settings.ping_timeout });
                }
            }
            Phase::Idle { .. } | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    // ----- the moves ------------------------------------------------------------------

    /// SPEC §3.3: record the attempt, go to `starting`, connect.
    fn begin_attempt(&mut self, now: Instant, recovery: bool, fx: &mut Vec<Effect>) {
        self.last_gen = self.last_gen.wrapping_add(1);
        let generation = Generation(self.last_gen);
        self.last_attempt = Some(now);
        self.next_retry_after = None;
        self.last_error = None;
        self.last_failure = None;
        self.challenge = None;
        self.phase = Phase::Connecting { generation, recovery };
        self.set(State::Starting, Health::Unknown, Some(Reason::Starting), None, fx);
        fx.push(Effect::Connect { generation, timeout: self.spec.connect_timeout() });
    }

    /// SPEC §6 restart: publish RecoveryStarted; stop what runs; grace only if
    /// something was stopped; start.
    fn begin_restart(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        self.restart_count = self.restart_count.saturating_add(1);
        self.announce(Reason::RecoveryStarted, None, fx);
        match &mut self.phase {
            Phase::Up { generation, probe, .. } => {
                let (generation, ping_in_flight) = (*generation, probe.in_flight);
                self.begin_close(generation, AfterClose::Start { recovery: true }, ping_in_flight, fx);
            }
            Phase::Connecting { generation, .. } => {
                let generation = *generation;
                fx.push(Effect::CancelConnect { generation });
                match now.checked_add(self.settings.restart_grace) {
                    Some(at) => {
                        self.phase =
                            Phase::Idle { pending: Some(Pending { at, kind: PendingKind::Start { recovery: true } }) };
                        let down = self.down_state();
                        self.set(down, Health::Unknown, Some(Reason::Stopped), None, fx);
                    }
                    None => self.begin_attempt(now, true, fx),
                }
            }
            Phase::Closing { then, .. } => *then = AfterClose::Start { recovery: true },
            Phase::Idle { pending: Some(Pending { kind: PendingKind::Start { recovery }, .. }) } => *recovery = true,
            Phase::Idle {
                pending: None | Some(Pending { kind: PendingKind::Retry | PendingKind::CrashRecovery, .. }),
            } => {
                self.begin_attempt(now, true, fx);
            }
        }
    }

    fn begin_close(&mut self, generation: Generation, then: AfterClose, ping_in_flight: bool, fx: &mut Vec<Effect>) {
        self.phase = Phase::Closing { generation, then };
        if ping_in_flight {
            fx.push(Effect::Reply(Reply::HealthChecked {
                health: Health::Unhealthy,
                error: Some(NO_CLIENT.to_owned()),
            }));
        }
        self.set(State::Stopping, Health::Unknown, None, None, fx);
        fx.push(Effect::Disconnect { generation });
    }

    /// Down by request: stopped (stdio) or disconnected (remote), counters cleared.
    fn finish_stop(&mut self, fx: &mut Vec<Effect>) {
        self.phase = Phase::Idle { pending: None };
        self.clear_counters();
        self.last_error = None;
        self.last_failure = None;
        self.challenge = None;
        let down = self.down_state();
        self.set(down, Health::Unknown, Some(Reason::Stopped), None, fx);
        self.reply_start(Err(StartError::Cancelled), fx);
        self.owed_stop = false;
        fx.push(Effect::Reply(Reply::Stopped));
    }

    /// SPEC §6 (roster): a stop by request clears the failure and crash counts and
    /// any scheduled retry.
    fn clear_counters(&mut self) {
        self.consecutive_failures = 0;
        self.crash_count = 0;
        self.next_retry_after = None;
    }

    /// SPEC §3.5–§3.7 and §4: what a failed attempt means.
    fn attempt_failed(&mut self, now: Instant, failure: Failure, recovery: bool, fx: &mut Vec<Effect>) {
        let kind = failure.kind();
        match failure.class {
            FailureClass::AuthRequired(challenge) if self.spec.is_remote() => {
                self.enter_auth_required((*challenge).clone(), failure.message.clone(), fx);
                if recovery {
                    self.announce(Reason::RecoveryAwaitingAuth, Some(failure.message.clone()), fx);
                }
                self.reply_start(Err(StartError::AuthRequired { challenge, message: failure.message }), fx);
            }
            FailureClass::Transient { retry_after } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let failures = self.consecutive_failures;
                let delay = self.backoff_delay(failures).max(retry_after.unwrap_or_default());
                self.next_retry_after = now.checked_add(delay);
                self.phase =
                    Phase::Idle { pending: self.next_retry_after.map(|at| Pending { at, kind: PendingKind::Retry }) };
                let unreachable = self.spec.is_remote() && failures >= self.settings.unreachable_threshold.max(1);
                let error = if unreachable {
                    StartError::Unreachable { failures, cause: failure }
                } else {
                    StartError::Failed(failure)
                };
                // The reference's texts: the event and the status carry the cause, or
                // the unreachable wrapper around it.
                let text = match &error {
                    StartError::Unreachable { .. } => error.to_string(),
                    StartError::Failed(f) => f.message.clone(),
                    StartError::AlreadyRunning { .. } | StartError::AuthRequired { .. } | StartError::Cancelled => {
                        error.to_string()
                    }
                };
                self.last_error = Some(text.clone());
                self.last_failure = Some(kind);
                let (state, health) = if unreachable {
                    (State::Unreachable, Health::Unknown)
                } else {
                    (State::Failed, Health::Unhealthy)
                };
                self.set(state, health, Some(Reason::Failed), Some(text.clone()), fx);
                if recovery {
                    self.announce(Reason::RecoveryFailed, Some(text), fx);
                }
                self.reply_start(Err(error), fx);
            }
            // SPEC §3.7 (roster: no stale retry); a 401 from a stdio server cannot be
            // answered by a login, so it is permanent too.
            FailureClass::Permanent | FailureClass::AuthRequired(_) => {
                self.next_retry_after = None;
                self.phase = Phase::Idle { pending: None };
                self.last_error = Some(failure.message.clone());
                self.last_failure = Some(FailureKind::Permanent);
                self.set(State::Failed, Health::Unhealthy, Some(Reason::Failed), Some(failure.message.clone()), fx);
                if recovery {
                    self.announce(Reason::RecoveryFailed, Some(failure.message.clone()), fx);
                }
                self.reply_start(
                    Err(StartError::Failed(Failure { class: FailureClass::Permanent, message: failure.message })),
                    fx,
                );
            }
            // SPEC §4 (roster): a cancelled attempt is not a failure. The driver only
            // reports it for its own reasons (shutdown); the server is down, not failed.
            FailureClass::Cancelled => {
                self.next_retry_after = None;
                self.phase = Phase::Idle { pending: None };
                let down = self.down_state();
                self.set(down, Health::Unknown, Some(Reason::Stopped), None, fx);
                self.reply_start(Err(StartError::Cancelled), fx);
            }
        }
    }

    fn enter_auth_required(&mut self, challenge: Challenge, message: String, fx: &mut Vec<Effect>) {
        // SPEC §3.5 (roster): a 401 proves the server is reachable.
        self.consecutive_failures = 0;
        self.next_retry_after = None;
        self.phase = Phase::Idle { pending: None };
        self.last_error = Some(message.clone());
        self.last_failure = Some(FailureKind::AuthRequired);
        self.challenge = Some(challenge.clone());
        fx.push(Effect::CallAuthHook(challenge));
        self.set(State::AuthRequired, Health::Unknown, Some(Reason::AuthRequired), Some(message), fx);
    }

    /// SPEC §7: the live session died (or stopped answering). A crash, recovered
    /// after the grace period the first time, then with backoff until the server
    /// stays up for the stable period.
    fn session_lost(
        &mut self,
        now: Instant,
        generation: Generation,
        since: Instant,
        ping_in_flight: bool,
        failure: Failure,
        fx: &mut Vec<Effect>,
    ) {
        if ping_in_flight {
            fx.push(Effect::Reply(Reply::HealthChecked {
                health: Health::Unhealthy,
                error: Some(NO_CLIENT.to_owned()),
            }));
        }
        // Whatever is left of the session is cleaned up (for stdio: the process group).
        fx.push(Effect::Disconnect { generation });
        if let FailureClass::AuthRequired(challenge) = failure.class.clone()
            && self.spec.is_remote()
        {
            self.enter_auth_required(*challenge, failure.message, fx);
            return;
        }
        if now.saturating_duration_since(since) >= self.settings.stable_period {
            self.crash_count = 0;
        }
        self.crash_count = self.crash_count.saturating_add(1);
        let delay = self.settings.restart_grace.max(self.backoff_delay(self.crash_count - 1));
        self.next_retry_after = now.checked_add(delay);
        self.phase =
            Phase::Idle { pending: self.next_retry_after.map(|at| Pending { at, kind: PendingKind::CrashRecovery }) };
        self.last_error = Some(failure.message.clone());
        self.last_failure = Some(failure.kind());
        self.set(State::Failed, Health::Unhealthy, Some(Reason::Failed), Some(failure.message), fx);
    }

    // ----- helpers --------------------------------------------------------------------

    fn backoff_delay(&mut self, attempt: u32) -> Duration {
        let unit = if self.settings.backoff.jitter() > 0.0 { self.rng.f64() } else { 0.0 };
        self.settings.backoff.delay(attempt, unit)
    }

    fn health_interval(&self) -> Duration {
        self.settings.health_check_interval.max(Duration::from_millis(1))
    }

    fn is_auth_failure(&self, failure: &Failure) -> bool {
        self.spec.is_remote() && failure.kind() == FailureKind::AuthRequired
    }

    /// `generation` is the live session or the one being closed.
    fn owns(&self, generation: Generation) -> bool {
        self.session() == Some(generation) || self.closing() == Some(generation)
    }

    fn up_state(&self) -> State {
        if self.spec.is_remote() { State::Connected } else { State::Running }
    }

    fn down_state(&self) -> State {
        if self.spec.is_remote() { State::Disconnected } else { State::Stopped }
    }

    fn is_down_by_request(&self) -> bool {
        matches!(self.state, State::Stopped | State::Disconnected)
    }

    /// Moves to `state`/`health` and publishes one event if either changed or a
    /// reason is given.
    fn set(
        &mut self,
        state: State,
        health: Health,
        reason: Option<Reason>,
        error: Option<String>,
        fx: &mut Vec<Effect>,
    ) {
        let (previous_state, previous_health) = (self.state, self.health);
        self.state = state;
        self.health = health;
        if reason.is_some() || previous_state != state || previous_health != health {
            fx.push(Effect::Publish(LifecycleEvent { reason, previous_state, state, previous_health, health, error }));
        }
    }

    /// Publishes a reason that comes with no state change.
    fn announce(&self, reason: Reason, error: Option<String>, fx: &mut Vec<Effect>) {
        fx.push(Effect::Publish(LifecycleEvent {
            reason: Some(reason),
            previous_state: self.state,
            state: self.state,
            previous_health: self.health,
            health: self.health,
            error,
        }));
    }

    fn reply_start(&mut self, result: Result<(), StartError>, fx: &mut Vec<Effect>) {
        if std::mem::take(&mut self.owed_start) {
            fx.push(Effect::Reply(Reply::Started(result)));
        }
    }
}
