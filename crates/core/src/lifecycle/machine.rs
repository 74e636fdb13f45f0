//! [`Lifecycle`]: the machine. See the [module docs](super) for how to drive it.

use std::time::{Duration, Instant};

use super::events::{Effect, Event, Generation, LifecycleEvent, Reason, Reply, StartError, ToolListing, Transition};
use super::settings::{MAX_DELAY, MAX_RETRY_AFTER, Settings, format_duration};
use super::state::{Health, State};
use crate::change::{ChangeAction, ChangeKind, SpecChange, configuration_changed};
use crate::failure::{Challenge, Failure, FailureClass, FailureKind};
use crate::spec::{ServerSpec, ValidSpec};

/// The text of a health check that found no session to ping (the reference's).
pub const NO_CLIENT: &str = "MCP client not available";

/// What the machine is doing, with the data that exists only while it does it.
/// The published [`State`] and [`Health`] are derived from this and nothing else.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No attempt and no live session.
    Idle(Idle),
    /// `Connect { generation }` is in flight: `starting`.
    Connecting { generation: Generation, recovery: bool },
    /// Session `generation` is live: `running` or `connected`.
    Up(Up),
    /// `CloseSession { generation }` is in flight at our request: `stopping`.
    Closing { generation: Generation, then: AfterClose },
}

#[derive(Debug, Clone, PartialEq)]
struct Idle {
    /// Why nothing runs; gives the state, the health and the last error.
    rest: Rest,
    /// What happens next by itself, and when.
    next: Option<Next>,
    /// A lost session whose close has not finished yet. The automatic recovery in
    /// `next` waits for it, and a start asked for meanwhile stops it first, so that
    /// two processes of one server never run at once.
    cleanup: Option<Generation>,
}

impl Idle {
    fn resting(rest: Rest) -> Idle {
        Idle { rest, next: None, cleanup: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Rest {
    /// Never started: `unknown`.
    New,
    /// Down by request, or between the halves of a restart: `stopped` or `disconnected`.
    Down,
    /// The last attempt failed, or the live session died: `failed` or `unreachable`.
    Failed { error: String, kind: FailureKind, unreachable: bool },
    /// The server wants credentials: `auth_required`.
    AuthRequired { challenge: Challenge, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Next {
    at: Instant,
    what: NextStep,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NextStep {
    /// An automatic retry or crash recovery, run as a restart (SPEC §5, §7).
    Restart,
    /// The start of a restart, after its grace period.
    Start { recovery: bool },
}

#[derive(Debug, Clone, PartialEq)]
struct Up {
    generation: Generation,
    since: Instant,
    ping: Ping,
    /// Failed pings in a row; the server is unhealthy while this is not zero.
    missed: u32,
    /// Why the last ping failed, while `missed` is not zero.
    ping_error: Option<(String, FailureKind)>,
    /// How long the last answered ping took.
    latency: Option<Duration>,
    /// The last answered ping took longer than `degraded_after`.
    slow: bool,
    /// What the last tool listing found wrong: none listed, or the listing failed.
    warning: Option<String>,
}

impl Up {
    fn new(generation: Generation, since: Instant, due: Instant) -> Up {
        Up {
            generation,
            since,
            ping: Ping::Due(due),
            missed: 0,
            ping_error: None,
            latency: None,
            slow: false,
            warning: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ping {
    /// The next probe is due then.
    Due(Instant),
    /// A ping is in flight.
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterClose {
    Stop,
    Start { recovery: bool },
}

/// What a restart is for: a request joins a restart in progress; a definition
/// change also replaces an attempt in flight, which uses the old definition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Requested,
    SpecChanged,
    Automatic,
}

/// The effects of one call to `handle`, and what subscribers were last told.
struct Out {
    now: Instant,
    effects: Vec<Effect>,
    shown: (State, Health),
}

impl Out {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

/// The lifecycle of one server. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    spec: ValidSpec,
    settings: Settings,
    rng: fastrand::Rng,
    phase: Phase,
    consecutive_failures: u32,
    crash_count: u32,
    restart_count: u32,
    last_attempt: Option<Instant>,
    last_generation: u64,
    /// Some caller waits for the outcome of a start.
    owed_start: bool,
    /// Some caller waits for a stop to finish.
    owed_stop: bool,
}

impl Lifecycle {
    /// A server in state `unknown`. `seed` feeds the jitter (if the backoff has any),
    /// so that the same seed and events give the same transitions.
    pub fn new(spec: ValidSpec, settings: Settings, seed: u64) -> Lifecycle {
        Lifecycle {
            spec,
            settings,
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Idle(Idle::resting(Rest::New)),
            consecutive_failures: 0,
            crash_count: 0,
            restart_count: 0,
            last_attempt: None,
            last_generation: 0,
            owed_start: false,
            owed_stop: false,
        }
    }

    // ----- reading it -----------------------------------------------------------------

    /// The current definition.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The state (SPEC §2).
    pub fn state(&self) -> State {
        match &self.phase {
            Phase::Idle(idle) => match &idle.rest {
                Rest::New => State::Unknown,
                Rest::Down => self.down_state(),
                Rest::Failed { unreachable: true, .. } => State::Unreachable,
                Rest::Failed { unreachable: false, .. } => State::Failed,
                Rest::AuthRequired { .. } => State::AuthRequired,
            },
            Phase::Connecting { .. } => State::Starting,
            Phase::Up(_) => self.up_state(),
            Phase::Closing { .. } => State::Stopping,
        }
    }

    /// The health (SPEC §2): healthy, degraded (roster: the last ping was slow) or
    /// unhealthy while up, unhealthy when failed, unknown otherwise.
    pub fn health(&self) -> Health {
        match &self.phase {
            Phase::Up(up) if up.missed == 0 && up.slow => Health::Degraded,
            Phase::Up(up) if up.missed == 0 => Health::Healthy,
            Phase::Up(_) | Phase::Idle(Idle { rest: Rest::Failed { unreachable: false, .. }, .. }) => Health::Unhealthy,
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => Health::Unknown,
        }
    }

    /// `running` or `connected`.
    pub fn is_running(&self) -> bool {
        self.state().is_running()
    }

    /// Running and healthy.
    pub fn is_healthy(&self) -> bool {
        self.is_running() && self.health() == Health::Healthy
    }

    /// State `unreachable`.
    pub fn is_unreachable(&self) -> bool {
        self.state() == State::Unreachable
    }

    /// A live session exists.
    pub fn is_client_ready(&self) -> bool {
        self.session().is_some()
    }

    /// The live session's generation.
    pub fn session(&self) -> Option<Generation> {
        match &self.phase {
            Phase::Up(up) => Some(up.generation),
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The attempt in flight.
    pub fn attempt(&self) -> Option<Generation> {
        match &self.phase {
            Phase::Connecting { generation, .. } => Some(*generation),
            Phase::Idle(_) | Phase::Up(_) | Phase::Closing { .. } => None,
        }
    }

    /// The session being closed: by request (`stopping`), or a lost one whose
    /// close the next start waits for.
    pub fn closing(&self) -> Option<Generation> {
        match &self.phase {
            Phase::Closing { generation, .. } => Some(*generation),
            Phase::Idle(idle) => idle.cleanup,
            Phase::Up(_) | Phase::Connecting { .. } => None,
        }
    }

    /// When the live session came up.
    pub fn up_since(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Up(up) => Some(up.since),
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The error of the current condition: why the server failed, is unreachable,
    /// wants credentials, or is unhealthy. Cleared by a start, a success or a stop.
    pub fn last_error(&self) -> Option<&str> {
        match &self.phase {
            Phase::Idle(Idle { rest: Rest::Failed { error, .. }, .. }) => Some(error),
            Phase::Idle(Idle { rest: Rest::AuthRequired { message, .. }, .. }) => Some(message),
            Phase::Up(Up { ping_error: Some((error, _)), .. }) => Some(error),
            Phase::Idle(_) | Phase::Up(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The class of [`Lifecycle::last_error`].
    pub fn last_failure(&self) -> Option<FailureKind> {
        match &self.phase {
            Phase::Idle(Idle { rest: Rest::Failed { kind, .. }, .. }) => Some(*kind),
            Phase::Idle(Idle { rest: Rest::AuthRequired { .. }, .. }) => Some(FailureKind::NeedsCredentials),
            Phase::Up(Up { ping_error: Some((_, kind)), .. }) => Some(*kind),
            Phase::Idle(_) | Phase::Up(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// What the server asked for when it demanded credentials (while `auth_required`).
    pub fn auth_challenge(&self) -> Option<&Challenge> {
        match &self.phase {
            Phase::Idle(Idle { rest: Rest::AuthRequired { challenge, .. }, .. }) => Some(challenge),
            Phase::Idle(_) | Phase::Up(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
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

    /// How long the live session's last answered ping took.
    pub fn ping_latency(&self) -> Option<Duration> {
        match &self.phase {
            Phase::Up(up) => up.latency,
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// What the live session's tool listing found wrong (roster): a server that
    /// offers tools listed none, or the listing failed. `None` when its tools
    /// were listed, when it offers none, and when no session is live.
    pub fn warning(&self) -> Option<&str> {
        match &self.phase {
            Phase::Up(up) => up.warning.as_deref(),
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// Failed pings in a row of the live session.
    pub fn missed_pings(&self) -> u32 {
        match &self.phase {
            Phase::Up(up) => up.missed,
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => 0,
        }
    }

    /// When the last start began.
    pub fn last_attempt(&self) -> Option<Instant> {
        self.last_attempt
    }

    /// When the next automatic retry or crash recovery runs (it may wait longer for
    /// a lost session's close).
    pub fn next_retry_after(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle(Idle { next: Some(Next { at, what: NextStep::Restart }), .. }) => Some(*at),
            Phase::Idle(_) | Phase::Up(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// The next instant at which the machine wants an [`Event::Timeout`]: a retry,
    /// the end of a grace period, a health probe, or the end of the stable period.
    /// `None` while it waits for a report instead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle(Idle { next: Some(next), cleanup: None, .. }) => Some(next.at),
            Phase::Up(up) => {
                let probe = match up.ping {
                    Ping::Due(at) => Some(at),
                    Ping::InFlight => None,
                };
                let stable = (self.crash_count > 0).then(|| self.after(up.since, self.settings.stable_period));
                match (probe, stable) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => None,
        }
    }

    /// What `new` would do to this server now (SPEC §8 and the server's phase).
    /// [`Event::SpecChanged`] does exactly this; a reload plan shows it.
    pub fn change_outcome(&self, new: &ServerSpec) -> SpecChange {
        let change = configuration_changed(&self.spec, new);
        let action = match change.kind {
            ChangeKind::None => ChangeAction::Unchanged,
            ChangeKind::MetadataOnly => ChangeAction::Metadata,
            ChangeKind::Restart => match &self.phase {
                Phase::Up(_) | Phase::Connecting { .. } | Phase::Closing { then: AfterClose::Start { .. }, .. } => {
                    ChangeAction::Restart
                }
                Phase::Closing { then: AfterClose::Stop, .. } => ChangeAction::Update,
                Phase::Idle(Idle { next: Some(Next { what: NextStep::Start { .. }, .. }), .. }) => {
                    ChangeAction::Restart
                }
                Phase::Idle(idle) => match idle.rest {
                    Rest::New | Rest::Down if !self.spec.auto_start && new.auto_start => ChangeAction::Start,
                    Rest::New | Rest::Down => ChangeAction::Update,
                    Rest::Failed { .. } | Rest::AuthRequired { .. } => ChangeAction::Restart,
                },
            },
        };
        SpecChange { action, change }
    }

    // ----- feeding it -----------------------------------------------------------------

    /// Feeds one event. Never fails and never panics: an event that does not apply
    /// returns a transition with `from == to` and no effects.
    pub fn handle(&mut self, now: Instant, event: Event) -> Transition {
        let from = self.state();
        let mut out = Out { now, effects: Vec::new(), shown: (from, self.health()) };
        match event {
            Event::StartRequested => self.on_start_requested(now, &mut out),
            Event::StopRequested => self.on_stop_requested(&mut out),
            Event::RestartRequested => {
                self.owed_start = true;
                self.restart(now, Cause::Requested, &mut out);
            }
            Event::HealthCheckRequested => self.on_health_check_requested(&mut out),
            Event::SpecChanged(spec) => self.on_spec_changed(now, *spec, &mut out),
            Event::ConnectSucceeded { generation } => self.on_connect_succeeded(now, generation, &mut out),
            Event::ConnectFailed { generation, failure } => self.on_connect_failed(now, generation, failure, &mut out),
            Event::SessionLost { generation, failure } => self.on_session_lost(now, generation, failure, &mut out),
            Event::SessionClosed { generation } => self.on_session_closed(now, generation, &mut out),
            Event::PingSucceeded { generation, latency } => self.on_ping_succeeded(now, generation, latency, &mut out),
            Event::PingFailed { generation, failure } => self.on_ping_failed(now, generation, failure, &mut out),
            Event::ToolsListed { generation, listing } => self.on_tools_listed(generation, listing, &mut out),
            Event::Timeout => self.on_timeout(now, &mut out),
        }
        // A change nothing announced (a type change renames the down state) is
        // still published: every change reaches subscribers, exactly once.
        self.publish(None, None, &mut out);
        Transition { from, to: self.state(), effects: out.effects }
    }

    // ----- requests -------------------------------------------------------------------

    fn on_start_requested(&mut self, now: Instant, out: &mut Out) {
        match &mut self.phase {
            Phase::Up(_) => {
                out.push(Effect::Reply(Reply::Started(Err(StartError::AlreadyRunning {
                    name: self.spec.name.clone(),
                }))));
            }
            // SPEC §3.2: join the attempt in flight, or the restart in progress.
            Phase::Connecting { .. }
            | Phase::Idle(Idle { next: Some(Next { what: NextStep::Start { .. }, .. }), .. }) => {
                self.owed_start = true;
            }
            Phase::Closing { then, .. } => {
                if *then == AfterClose::Stop {
                    *then = AfterClose::Start { recovery: false };
                }
                self.owed_start = true;
            }
            Phase::Idle(_) => {
                self.owed_start = true;
                self.start_or_wait(now, false, out);
            }
        }
    }

    fn on_stop_requested(&mut self, out: &mut Out) {
        match &mut self.phase {
            Phase::Up(up) => {
                let (generation, ping_in_flight) = (up.generation, up.ping == Ping::InFlight);
                self.owed_stop = true;
                self.begin_close(generation, AfterClose::Stop, ping_in_flight, out);
            }
            Phase::Connecting { generation, .. } => {
                out.push(Effect::CancelConnect { generation: *generation });
                self.finish_stop(out);
            }
            Phase::Closing { then, .. } => {
                *then = AfterClose::Stop;
                self.owed_stop = true;
                self.reply_start(Err(StartError::Cancelled), out);
            }
            // SPEC §6: a lost session still closing; the stop answers once it is gone.
            Phase::Idle(Idle { cleanup: Some(generation), .. }) => {
                let generation = *generation;
                self.phase = Phase::Closing { generation, then: AfterClose::Stop };
                self.owed_stop = true;
                self.reply_start(Err(StartError::Cancelled), out);
                self.publish(None, None, out);
            }
            // SPEC §6: nothing happens and nothing is published; a restart waiting
            // out its grace period is cancelled.
            Phase::Idle(idle @ Idle { rest: Rest::Down, .. }) => {
                idle.next = None;
                self.clear_counters();
                self.reply_start(Err(StartError::Cancelled), out);
                out.push(Effect::Reply(Reply::Stopped));
            }
            Phase::Idle(Idle { rest: Rest::New | Rest::Failed { .. } | Rest::AuthRequired { .. }, .. }) => {
                self.finish_stop(out);
            }
        }
    }

    fn on_health_check_requested(&mut self, out: &mut Out) {
        match &mut self.phase {
            Phase::Up(up) => {
                if let Ping::Due(_) = up.ping {
                    up.ping = Ping::InFlight;
                    out.push(Effect::Ping { generation: up.generation, timeout: self.settings.ping_timeout.get() });
                }
            }
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => {
                out.push(Effect::Reply(Reply::HealthChecked {
                    health: Health::Unhealthy,
                    error: Some(NO_CLIENT.to_owned()),
                }));
            }
        }
    }

    fn on_spec_changed(&mut self, now: Instant, spec: ValidSpec, out: &mut Out) {
        let outcome = self.change_outcome(&spec);
        self.spec = spec;
        match outcome.action {
            ChangeAction::Unchanged | ChangeAction::Metadata | ChangeAction::Update => {}
            ChangeAction::Start => self.start_or_wait(now, false, out),
            ChangeAction::Restart => self.restart(now, Cause::SpecChanged, out),
        }
        out.push(Effect::Reply(Reply::Updated(outcome)));
    }

    // ----- reports from the driver ----------------------------------------------------

    fn on_connect_succeeded(&mut self, now: Instant, generation: Generation, out: &mut Out) {
        match self.phase {
            Phase::Connecting { generation: current, recovery } if current == generation => {
                self.consecutive_failures = 0;
                let due = self.after(now, self.settings.health_check_interval.get());
                self.phase = Phase::Up(Up::new(generation, now, due));
                self.publish(Some(Reason::Started), None, out);
                if recovery {
                    self.publish(Some(Reason::RecoverySucceeded), None, out);
                }
                self.reply_start(Ok(()), out);
                // (roster) "Healthy with no tools" is how a half-started server looks.
                out.push(Effect::ListTools { generation, timeout: self.settings.ping_timeout.get() });
            }
            Phase::Connecting { .. } | Phase::Idle(_) | Phase::Up(_) | Phase::Closing { .. } => {
                // A late success of an abandoned attempt: close it so it does not leak.
                if !self.owns(generation) {
                    out.push(Effect::CloseSession { generation });
                }
            }
        }
    }

    fn on_connect_failed(&mut self, now: Instant, generation: Generation, failure: Failure, out: &mut Out) {
        match self.phase {
            Phase::Connecting { generation: current, recovery } if current == generation => {
                self.attempt_failed(now, failure, recovery, out);
            }
            Phase::Connecting { .. } | Phase::Idle(_) | Phase::Up(_) | Phase::Closing { .. } => {}
        }
    }

    fn on_session_lost(&mut self, now: Instant, generation: Generation, failure: Failure, out: &mut Out) {
        match &self.phase {
            Phase::Up(up) if up.generation == generation => {
                let up = up.clone();
                self.session_lost(now, up, failure, None, out);
            }
            Phase::Up(_) | Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    fn on_session_closed(&mut self, now: Instant, generation: Generation, out: &mut Out) {
        match &mut self.phase {
            Phase::Closing { generation: current, then } if *current == generation => match *then {
                AfterClose::Stop => self.finish_stop(out),
                AfterClose::Start { recovery } => {
                    let at = self.after(now, self.settings.restart_grace);
                    self.phase = Phase::Idle(Idle {
                        rest: Rest::Down,
                        next: Some(Next { at, what: NextStep::Start { recovery } }),
                        cleanup: None,
                    });
                    self.publish(Some(Reason::Stopped), None, out);
                    if std::mem::take(&mut self.owed_stop) {
                        out.push(Effect::Reply(Reply::Stopped));
                    }
                }
            },
            // The lost session is gone: what waited for it may run now.
            Phase::Idle(idle) if idle.cleanup == Some(generation) => {
                idle.cleanup = None;
                self.on_timeout(now, out);
            }
            Phase::Closing { .. } | Phase::Idle(_) | Phase::Connecting { .. } | Phase::Up(_) => {}
        }
    }

    /// SPEC §7, and (roster) a slow answer: `degraded` from the first ping slower
    /// than `degraded_after`, with [`Reason::HealthDegraded`] on the way in; the
    /// next fast one makes the server healthy again.
    fn on_ping_succeeded(&mut self, now: Instant, generation: Generation, latency: Duration, out: &mut Out) {
        let due = self.after(now, self.settings.health_check_interval.get());
        let limit = self.settings.degraded_after;
        let was = self.health();
        match &mut self.phase {
            Phase::Up(up) if up.generation == generation && up.ping == Ping::InFlight => {
                up.ping = Ping::Due(due);
                up.missed = 0;
                up.ping_error = None;
                up.latency = Some(latency);
                up.slow = latency > limit;
                let slow = up.slow.then(|| {
                    format!(
                        "MCP ping took {}, more than degraded_after ({})",
                        format_duration(round_to_millis(latency)),
                        format_duration(limit)
                    )
                });
                let entered = slow.is_some() && was != Health::Degraded;
                self.publish(entered.then_some(Reason::HealthDegraded), slow.clone(), out);
                out.push(Effect::Reply(Reply::HealthChecked { health: self.health(), error: slow }));
            }
            Phase::Up(_) | Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    fn on_ping_failed(&mut self, now: Instant, generation: Generation, failure: Failure, out: &mut Out) {
        let due = self.after(now, self.settings.health_check_interval.get());
        let threshold = self.settings.unhealthy_threshold.get();
        let Phase::Up(up) = &mut self.phase else { return };
        if up.generation != generation || up.ping != Ping::InFlight {
            return;
        }
        let error = format!("MCP ping failed: {}", failure.message);
        let checked = Reply::HealthChecked { health: Health::Unhealthy, error: Some(error.clone()) };
        // SPEC §3.5: a demand for credentials on a live session ends it; the hook
        // runs before anyone hears of it.
        if self.spec.is_remote() && failure.kind() == FailureKind::NeedsCredentials {
            let up = up.clone();
            self.session_lost(now, up, failure, Some(checked), out);
            return;
        }
        up.missed = up.missed.saturating_add(1);
        up.ping_error = Some((error.clone(), normal_kind(&failure)));
        let (missed, first) = (up.missed, up.missed == 1);
        up.ping = Ping::Due(due);
        let up = up.clone();
        // SPEC §7: HealthCheckFailed on the healthy → unhealthy edge only.
        self.publish(first.then_some(Reason::HealthCheckFailed), Some(error), out);
        if missed >= threshold {
            let lost = Failure::transient(format!(
                "session lost: {missed} health checks failed in a row, the last with: {}",
                failure.message
            ));
            self.session_lost(now, up, lost, Some(checked), out);
        } else {
            out.push(Effect::Reply(checked));
        }
    }

    /// (roster) A server that offers tools but lists none (or cannot list them)
    /// gets a warning, published with [`Reason::ToolsMissing`] when it appears;
    /// a listing that finds tools clears it. State and health do not change.
    fn on_tools_listed(&mut self, generation: Generation, listing: ToolListing, out: &mut Out) {
        let Phase::Up(up) = &mut self.phase else { return };
        if up.generation != generation {
            return;
        }
        let warning = match listing {
            ToolListing::NotOffered | ToolListing::Listed { count: 1.. } => None,
            ToolListing::Listed { count: 0 } => {
                Some("offers tools but listed none: it may have started only half-way".to_owned())
            }
            ToolListing::Failed(failure) => Some(format!("offers tools but could not list them: {}", failure.message)),
        };
        let appeared = warning.is_some() && up.warning.is_none();
        up.warning = warning.clone();
        if appeared {
            self.publish(Some(Reason::ToolsMissing), warning, out);
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Out) {
        let stable_at = self.up_since().map(|since| self.after(since, self.settings.stable_period));
        let timeout = self.settings.ping_timeout.get();
        match &mut self.phase {
            Phase::Idle(Idle { next: Some(next), cleanup: None, .. }) if now >= next.at => {
                let what = next.what;
                match what {
                    // SPEC §5, §7: automatic retries and crash recovery run as restarts.
                    NextStep::Restart => self.restart(now, Cause::Automatic, out),
                    NextStep::Start { recovery } => self.begin_attempt(now, recovery, out),
                }
            }
            Phase::Up(up) => {
                if let Ping::Due(at) = up.ping
                    && now >= at
                {
                    up.ping = Ping::InFlight;
                    out.push(Effect::Ping { generation: up.generation, timeout });
                }
                if self.crash_count > 0 && stable_at.is_some_and(|t| now >= t) {
                    self.crash_count = 0;
                }
            }
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Closing { .. } => {}
        }
    }

    // ----- the moves ------------------------------------------------------------------

    /// Starts now; or, while a lost session is still being closed, stops it first:
    /// the server is `stopping` until it is gone, then the start follows the grace
    /// period, as in any restart.
    fn start_or_wait(&mut self, now: Instant, recovery: bool, out: &mut Out) {
        match &self.phase {
            Phase::Idle(Idle { cleanup: Some(generation), .. }) => {
                self.phase = Phase::Closing { generation: *generation, then: AfterClose::Start { recovery } };
                self.publish(None, None, out);
            }
            Phase::Idle(_) | Phase::Connecting { .. } | Phase::Up(_) | Phase::Closing { .. } => {
                self.begin_attempt(now, recovery, out);
            }
        }
    }

    /// SPEC §3.3: record the attempt, go to `starting`, connect.
    fn begin_attempt(&mut self, now: Instant, recovery: bool, out: &mut Out) {
        self.last_generation = self.last_generation.wrapping_add(1);
        let generation = Generation(self.last_generation);
        self.last_attempt = Some(now);
        self.phase = Phase::Connecting { generation, recovery };
        self.publish(Some(Reason::Starting), None, out);
        out.push(Effect::Connect { generation, timeout: self.spec.connect_timeout() });
    }

    /// A restart is under way: its close, its grace period, or its connect.
    fn restart_in_progress(&self) -> bool {
        match &self.phase {
            Phase::Connecting { recovery, .. } => *recovery,
            Phase::Closing { then, .. } => *then == AfterClose::Start { recovery: true },
            Phase::Idle(Idle { next: Some(Next { what: NextStep::Start { recovery }, .. }), .. }) => *recovery,
            Phase::Idle(_) | Phase::Up(_) => false,
        }
    }

    /// SPEC §6 restart: publish RecoveryStarted; stop what runs; wait the grace
    /// period only if something was stopped; start. A restart in progress is
    /// joined, not begun again.
    fn restart(&mut self, now: Instant, cause: Cause, out: &mut Out) {
        let joining = self.restart_in_progress();
        if !joining {
            self.restart_count = self.restart_count.saturating_add(1);
            self.publish(Some(Reason::RecoveryStarted), None, out);
        }
        let grace_over = self.after(now, self.settings.restart_grace);
        match &mut self.phase {
            Phase::Up(up) => {
                let (generation, ping_in_flight) = (up.generation, up.ping == Ping::InFlight);
                self.begin_close(generation, AfterClose::Start { recovery: true }, ping_in_flight, out);
            }
            // A requested restart joins the restart's own connect; a new definition
            // replaces any attempt made with the old one.
            Phase::Connecting { .. } if joining && cause == Cause::Requested => {}
            Phase::Connecting { generation, .. } => {
                out.push(Effect::CancelConnect { generation: *generation });
                self.phase = Phase::Idle(Idle {
                    rest: Rest::Down,
                    next: Some(Next { at: grace_over, what: NextStep::Start { recovery: true } }),
                    cleanup: None,
                });
                self.publish(Some(Reason::Stopped), None, out);
            }
            Phase::Closing { then, .. } => *then = AfterClose::Start { recovery: true },
            Phase::Idle(Idle { next: Some(Next { what: NextStep::Start { recovery }, .. }), .. }) => *recovery = true,
            // Something is still being stopped (a lost session): stopping, then the grace.
            Phase::Idle(Idle { cleanup: Some(_), .. }) => self.start_or_wait(now, true, out),
            Phase::Idle(_) => self.begin_attempt(now, true, out),
        }
    }

    fn begin_close(&mut self, generation: Generation, then: AfterClose, ping_in_flight: bool, out: &mut Out) {
        self.phase = Phase::Closing { generation, then };
        if ping_in_flight {
            out.push(Effect::Reply(Reply::HealthChecked {
                health: Health::Unhealthy,
                error: Some(NO_CLIENT.to_owned()),
            }));
        }
        self.publish(None, None, out);
        out.push(Effect::CloseSession { generation });
    }

    /// Down by request: `stopped` (stdio) or `disconnected` (remote), counters cleared.
    fn finish_stop(&mut self, out: &mut Out) {
        self.phase = Phase::Idle(Idle::resting(Rest::Down));
        self.clear_counters();
        self.publish(Some(Reason::Stopped), None, out);
        self.reply_start(Err(StartError::Cancelled), out);
        self.owed_stop = false;
        out.push(Effect::Reply(Reply::Stopped));
    }

    /// SPEC §6 (roster): a stop by request clears the failure and crash counts.
    fn clear_counters(&mut self) {
        self.consecutive_failures = 0;
        self.crash_count = 0;
    }

    /// SPEC §3.5–§3.7 and §4: what a failed attempt means.
    fn attempt_failed(&mut self, now: Instant, failure: Failure, recovery: bool, out: &mut Out) {
        let kind = normal_kind(&failure);
        match failure.class {
            FailureClass::NeedsCredentials(challenge) if self.spec.is_remote() => {
                let message = failure.message;
                self.enter_auth_required((*challenge).clone(), message.clone(), None, out);
                if recovery {
                    self.publish(Some(Reason::RecoveryAwaitingAuth), Some(message.clone()), out);
                }
                self.reply_start(Err(StartError::NeedsCredentials { challenge, message }), out);
            }
            // SPEC §4 (roster): a cancelled attempt is not a failure when roster
            // cancelled it, but then its result is never reported. One that is
            // reported was cancelled by something else: it is retried like any
            // transient failure.
            FailureClass::Transient { .. } | FailureClass::Cancelled => {
                let retry_after = match failure.class {
                    FailureClass::Transient { retry_after } => retry_after,
                    FailureClass::Cancelled | FailureClass::Permanent | FailureClass::NeedsCredentials(_) => None,
                };
                let cause = Failure { class: FailureClass::Transient { retry_after }, ..failure };
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let failures = self.consecutive_failures;
                // SPEC §4: Retry-After is a floor, honoured up to MAX_RETRY_AFTER.
                let delay = self.backoff_delay(failures).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
                let unreachable = self.spec.is_remote() && failures >= self.settings.unreachable_threshold.get();
                let (error, text) = if unreachable {
                    let error = StartError::Unreachable { failures, cause };
                    let text = error.to_string();
                    (error, text)
                } else {
                    let text = cause.message.clone();
                    (StartError::Failed(cause), text)
                };
                self.phase = Phase::Idle(Idle {
                    rest: Rest::Failed { error: text.clone(), kind, unreachable },
                    next: Some(Next { at: self.after(now, delay), what: NextStep::Restart }),
                    cleanup: None,
                });
                self.publish(Some(Reason::Failed), Some(text.clone()), out);
                if recovery {
                    self.publish(Some(Reason::RecoveryFailed), Some(text), out);
                }
                self.reply_start(Err(error), out);
            }
            // SPEC §3.7 (roster: no stale retry). A 401 from a stdio server cannot
            // be answered by a login, so it is permanent too.
            FailureClass::Permanent | FailureClass::NeedsCredentials(_) => {
                let message = failure.message;
                self.phase = Phase::Idle(Idle::resting(Rest::Failed {
                    error: message.clone(),
                    kind: FailureKind::Permanent,
                    unreachable: false,
                }));
                self.publish(Some(Reason::Failed), Some(message.clone()), out);
                if recovery {
                    self.publish(Some(Reason::RecoveryFailed), Some(message.clone()), out);
                }
                self.reply_start(Err(StartError::Failed(Failure::permanent(message))), out);
            }
        }
    }

    /// SPEC §3.5: the hook first, then the state change.
    fn enter_auth_required(
        &mut self,
        challenge: Challenge,
        message: String,
        cleanup: Option<Generation>,
        out: &mut Out,
    ) {
        // (roster) A demand for credentials proves the server is reachable.
        self.consecutive_failures = 0;
        out.push(Effect::CallAuthHook(challenge.clone()));
        self.phase =
            Phase::Idle(Idle { rest: Rest::AuthRequired { challenge, message: message.clone() }, next: None, cleanup });
        self.publish(Some(Reason::AuthRequired), Some(message), out);
    }

    /// SPEC §7: the live session died or stopped answering. Whatever is left of it
    /// is closed, and nothing starts again until that close has finished. A
    /// crash is recovered after the grace period the first time, then with
    /// backoff until the server stays up for the stable period. `checked` answers
    /// the health check that found the loss.
    fn session_lost(&mut self, now: Instant, up: Up, failure: Failure, checked: Option<Reply>, out: &mut Out) {
        let generation = up.generation;
        if let FailureClass::NeedsCredentials(challenge) = &failure.class
            && self.spec.is_remote()
        {
            let challenge = (**challenge).clone();
            self.enter_auth_required(challenge, failure.message, Some(generation), out);
        } else {
            if now.saturating_duration_since(up.since) >= self.settings.stable_period {
                self.crash_count = 0;
            }
            self.crash_count = self.crash_count.saturating_add(1);
            let delay = self.settings.restart_grace.max(self.backoff_delay(self.crash_count - 1));
            self.phase = Phase::Idle(Idle {
                rest: Rest::Failed { error: failure.message.clone(), kind: normal_kind(&failure), unreachable: false },
                next: Some(Next { at: self.after(now, delay), what: NextStep::Restart }),
                cleanup: Some(generation),
            });
            self.publish(Some(Reason::Failed), Some(failure.message), out);
        }
        out.push(Effect::CloseSession { generation });
        let answer = checked.or_else(|| {
            (up.ping == Ping::InFlight)
                .then(|| Reply::HealthChecked { health: Health::Unhealthy, error: Some(NO_CLIENT.to_owned()) })
        });
        out.effects.extend(answer.map(Effect::Reply));
    }

    // ----- helpers --------------------------------------------------------------------

    /// Publishes one event when `reason` is given or what subscribers were last
    /// told differs from the state and health now.
    fn publish(&self, reason: Option<Reason>, error: Option<String>, out: &mut Out) {
        let now = (self.state(), self.health());
        if reason.is_some() || now != out.shown {
            let (previous_state, previous_health) = out.shown;
            out.push(Effect::Publish(LifecycleEvent {
                reason,
                previous_state,
                state: now.0,
                previous_health,
                health: now.1,
                error,
                failures: self.consecutive_failures,
                retry_in_ms: self
                    .next_retry_after()
                    .map(|at| u64::try_from(at.saturating_duration_since(out.now).as_millis()).unwrap_or(u64::MAX)),
            }));
            out.shown = now;
        }
    }

    fn reply_start(&mut self, result: Result<(), StartError>, out: &mut Out) {
        if std::mem::take(&mut self.owed_start) {
            out.push(Effect::Reply(Reply::Started(result)));
        }
    }

    fn backoff_delay(&mut self, attempt: u32) -> Duration {
        let unit = if self.settings.backoff.jitter() > 0.0 { self.rng.f64() } else { 0.0 };
        self.settings.backoff.delay(attempt, unit)
    }

    /// `from + d`, with `d` cut to [`MAX_DELAY`] so that it always fits.
    fn after(&self, from: Instant, d: Duration) -> Instant {
        from.checked_add(d.min(MAX_DELAY)).unwrap_or(from)
    }

    /// `generation` is the live session, or one being closed.
    fn owns(&self, generation: Generation) -> bool {
        self.session() == Some(generation) || self.closing() == Some(generation)
    }

    fn up_state(&self) -> State {
        if self.spec.is_remote() { State::Connected } else { State::Running }
    }

    fn down_state(&self) -> State {
        if self.spec.is_remote() { State::Disconnected } else { State::Stopped }
    }
}

/// `d` to whole milliseconds (at least one), for messages.
fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// The kind a failure is recorded with: a reported cancellation counts as
/// transient (see `attempt_failed`).
fn normal_kind(failure: &Failure) -> FailureKind {
    match failure.kind() {
        FailureKind::Cancelled => FailureKind::Transient,
        kind @ (FailureKind::Transient | FailureKind::Permanent | FailureKind::NeedsCredentials) => kind,
    }
}
