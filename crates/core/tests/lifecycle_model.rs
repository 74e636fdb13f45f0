//! Model-based and property tests of `Lifecycle`.
//!
//! `Model` below is SPEC §2–§8 written as plain fields and one rule per request
//! or report, without the phases, helpers or generation bookkeeping of the real
//! machine. Its restart verdict for a definition change is derived from SPEC §8's
//! list of fields, not from the generator and not from `configuration_changed`.
//! proptest drives both with the same random sequences of every event (stale
//! reports, clock jumps, edits of every field, type changes between stdio and
//! remote, default and short settings) and compares after every step what they
//! publish, what they ask the driver to do, how they answer callers, and what
//! they show (state, health, counters, last error, next retry, deadline).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use roster_core::{
    AuthConfig, AuthType, Backoff, Challenge, ChangeAction, Effect, Event, Failure, FailureClass, FailureKind,
    Generation, Health, Lifecycle, LifecycleEvent, NonZeroDuration, Reason, Reply, ServerSpec, ServerType, Settings,
    SpecChange, StartError, State, ToolListing, Transition,
};

#[expect(clippy::disallowed_methods, reason = "tests need an arbitrary base instant; the core never reads the clock")]
fn base_instant() -> Instant {
    Instant::now()
}

const NO_CLIENT: &str = "MCP client not available";
/// SPEC §4 (roster): the longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

// ----- the operations ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Transient,
    /// Retry-After in hours/minutes/seconds: from seconds up to beyond the cap.
    TransientAfter(u64),
    Permanent,
    Auth,
    Cancelled,
}

impl Class {
    fn message(self) -> &'static str {
        match self {
            Class::Transient => "connection refused",
            Class::TransientAfter(_) => "HTTP 503",
            Class::Permanent => "HTTP 404",
            Class::Auth => "HTTP 401",
            Class::Cancelled => "cancelled",
        }
    }

    fn failure(self) -> Failure {
        match self {
            Class::Transient => Failure::transient(self.message()),
            Class::TransientAfter(s) => Failure::transient_after(self.message(), Duration::from_secs(s)),
            Class::Permanent => Failure::permanent(self.message()),
            Class::Auth => Failure::needs_credentials(challenge(), self.message()),
            Class::Cancelled => Failure::cancelled(self.message()),
        }
    }
}

fn challenge() -> Challenge {
    Challenge::parse(r#"Bearer realm="r""#)
}

/// An edit of one field of the definition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Edit {
    /// stdio → streamable-http → sse → stdio.
    Type,
    Url,
    Command,
    Args,
    Env,
    Headers,
    Timeout,
    ToolPrefix,
    Auth,
    Cwd,
    InheritEnv,
    Description,
    AutoStartOn,
    AutoStartOff,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Start,
    Stop,
    Restart,
    HealthCheck,
    ConnectOk,
    ConnectFail(Class),
    Lost(Class),
    CloseDone,
    /// An answered ping whose latency is this far from `degraded_after`.
    PingOk(Latency),
    PingFail(Class),
    /// The report of a tool listing of the live session.
    Tools(Listing),
    /// A report for a generation that is not the current one.
    Stale(u8, u64),
    Change(Edit),
    Advance(u64),
    /// Jump to `poll_timeout()` and fire it.
    Fire,
    /// Fire at the current time, due or not.
    TimeoutNow,
}

/// A ping's latency, relative to `degraded_after` (and `ping_timeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Latency {
    Instant,
    AtTheLimit,
    JustOver,
    NearTheTimeout,
}

impl Latency {
    fn of(self, settings: &Settings) -> Duration {
        let limit = settings.degraded_after;
        match self {
            Latency::Instant => Duration::ZERO,
            Latency::AtTheLimit => limit,
            Latency::JustOver => limit + Duration::from_nanos(1),
            Latency::NearTheTimeout => settings.ping_timeout.get(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Listing {
    NotOffered,
    Listed(usize),
    Failed,
}

fn latency() -> impl Strategy<Value = Latency> {
    prop_oneof![
        3 => Just(Latency::Instant),
        1 => Just(Latency::AtTheLimit),
        2 => Just(Latency::JustOver),
        1 => Just(Latency::NearTheTimeout),
    ]
}

fn listing() -> impl Strategy<Value = Listing> {
    prop_oneof![
        Just(Listing::NotOffered),
        Just(Listing::Listed(0)),
        (1usize..40).prop_map(Listing::Listed),
        Just(Listing::Failed)
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        4 => Just(Class::Transient),
        1 => prop_oneof![0u64..120, Just(23 * 3600), Just(25 * 3600)].prop_map(Class::TransientAfter),
        1 => Just(Class::Permanent),
        1 => Just(Class::Auth),
        1 => Just(Class::Cancelled),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        Just(Edit::Type),
        Just(Edit::Url),
        Just(Edit::Command),
        Just(Edit::Args),
        Just(Edit::Env),
        Just(Edit::Headers),
        Just(Edit::Timeout),
        Just(Edit::ToolPrefix),
        Just(Edit::Auth),
        Just(Edit::Cwd),
        Just(Edit::InheritEnv),
        Just(Edit::Description),
        Just(Edit::AutoStartOn),
        Just(Edit::AutoStartOff),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Start),
        1 => Just(Op::Stop),
        1 => Just(Op::Restart),
        2 => Just(Op::HealthCheck),
        4 => Just(Op::ConnectOk),
        4 => class().prop_map(Op::ConnectFail),
        2 => class().prop_map(Op::Lost),
        3 => Just(Op::CloseDone),
        3 => latency().prop_map(Op::PingOk),
        3 => class().prop_map(Op::PingFail),
        2 => listing().prop_map(Op::Tools),
        2 => (0u8..6, 0u64..4).prop_map(|(k, g)| Op::Stale(k, g)),
        2 => edit().prop_map(Op::Change),
        2 => (0u64..60_000).prop_map(Op::Advance),
        5 => Just(Op::Fire),
        1 => Just(Op::TimeoutNow),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    spec: ServerSpec,
    settings: Settings,
    seed: u64,
    ops: Vec<Op>,
}

fn short_settings() -> impl Strategy<Value = Settings> {
    (1u32..=4, 1u32..=3, 0u64..=500, 1u64..=3, any::<bool>(), 1u64..1000).prop_map(
        |(unreachable, unhealthy, grace, mult, jitter, degraded_ms)| {
            let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(20), mult as f64).unwrap();
            let backoff = if jitter { backoff.with_jitter(0.5).unwrap() } else { backoff };
            Settings {
                backoff,
                unreachable_threshold: NonZeroU32::new(unreachable).unwrap(),
                restart_grace: Duration::from_millis(grace),
                health_check_interval: NonZeroDuration::from_secs(5),
                ping_timeout: NonZeroDuration::from_secs(1),
                degraded_after: Duration::from_millis(degraded_ms),
                unhealthy_threshold: NonZeroU32::new(unhealthy).unwrap(),
                stable_period: Duration::from_secs(30),
            }
        },
    )
}

fn settings() -> impl Strategy<Value = Settings> {
    prop_oneof![1 => Just(Settings::default()), 3 => short_settings()]
}

fn first_spec() -> impl Strategy<Value = ServerSpec> {
    prop_oneof![Just(ServerType::Stdio), Just(ServerType::StreamableHttp), Just(ServerType::Sse)].prop_map(of_type)
}

fn of_type(t: ServerType) -> ServerSpec {
    match t {
        ServerType::Stdio => ServerSpec::stdio("srv", "mcp-fs"),
        ServerType::StreamableHttp | ServerType::Sse => ServerSpec::remote("srv", t, "https://api.example/mcp"),
    }
}

fn scenario(max_ops: usize) -> impl Strategy<Value = Scenario> {
    (first_spec(), settings(), any::<u64>(), prop::collection::vec(op(), 1..max_ops))
        .prop_map(|(spec, settings, seed, ops)| Scenario { spec, settings, seed, ops })
}

/// `spec` with `edit` applied, kept valid: an edit that does not apply to the type
/// changes nothing.
fn edited(spec: &ServerSpec, edit: Edit) -> ServerSpec {
    let mut s = spec.clone();
    let stdio = !s.is_remote();
    match edit {
        Edit::Type => {
            let next = match s.server_type {
                ServerType::Stdio => ServerType::StreamableHttp,
                ServerType::StreamableHttp => ServerType::Sse,
                ServerType::Sse => ServerType::Stdio,
            };
            let mut fresh = of_type(next);
            fresh.auto_start = s.auto_start;
            fresh.timeout = s.timeout;
            fresh.tool_prefix = s.tool_prefix.clone();
            fresh.description = s.description.clone();
            s = fresh;
        }
        Edit::Url if !stdio => s.url.push_str("/v2"),
        Edit::Headers if !stdio => {
            let n = s.headers.len();
            s.headers.insert(format!("X-H{n}"), "v".into());
        }
        Edit::Auth if !stdio => {
            s.auth = match s.auth {
                None => Some(AuthConfig { kind: AuthType::Oauth, ..AuthConfig::default() }),
                Some(_) => None,
            }
        }
        Edit::Command if stdio => s.command.push('2'),
        Edit::Args if stdio => s.args.push("--x".into()),
        Edit::Env if stdio => {
            let n = s.env.len();
            s.env.insert(format!("K{n}"), "v".into());
        }
        Edit::Cwd if stdio => s.cwd = if s.cwd.is_some() { None } else { Some("/srv".into()) },
        Edit::InheritEnv if stdio => s.inherit_env = !s.inherit_env,
        Edit::Url
        | Edit::Headers
        | Edit::Auth
        | Edit::Command
        | Edit::Args
        | Edit::Env
        | Edit::Cwd
        | Edit::InheritEnv => {}
        Edit::Timeout => s.timeout = Some(s.timeout.map_or(20, |t| if t >= 300 { 1 } else { t + 1 })),
        Edit::ToolPrefix => s.tool_prefix.push('p'),
        Edit::Description => s.description.push('d'),
        Edit::AutoStartOn => s.auto_start = true,
        Edit::AutoStartOff => s.auto_start = false,
    }
    s
}

/// Turns an operation into the concrete event for `sut` as it is now.
fn event(op: &Op, sut: &Lifecycle, now: &mut Instant, last_generation: u64) -> Option<Event> {
    let current = |g: Option<Generation>| g.unwrap_or(Generation(last_generation));
    Some(match op {
        Op::Start => Event::StartRequested,
        Op::Stop => Event::StopRequested,
        Op::Restart => Event::RestartRequested,
        Op::HealthCheck => Event::HealthCheckRequested,
        Op::ConnectOk => Event::ConnectSucceeded { generation: current(sut.attempt()) },
        Op::ConnectFail(c) => Event::ConnectFailed { generation: current(sut.attempt()), failure: c.failure() },
        Op::Lost(c) => Event::SessionLost { generation: current(sut.session()), failure: c.failure() },
        Op::CloseDone => Event::SessionClosed { generation: current(sut.closing()) },
        Op::PingOk(l) => Event::PingSucceeded { generation: current(sut.session()), latency: l.of(sut.settings()) },
        Op::Tools(l) => Event::ToolsListed {
            generation: current(sut.session()),
            listing: match l {
                Listing::NotOffered => ToolListing::NotOffered,
                Listing::Listed(count) => ToolListing::Listed { count: *count },
                Listing::Failed => ToolListing::Failed(Failure::transient("timed out")),
            },
        },
        Op::PingFail(c) => Event::PingFailed { generation: current(sut.session()), failure: c.failure() },
        Op::Stale(kind, back) => {
            let live = [sut.attempt(), sut.session(), sut.closing()];
            let generation = Generation(last_generation.saturating_sub(*back) + u64::from(*back == 3) * 7);
            if live.contains(&Some(generation)) {
                return None;
            }
            match kind {
                0 => Event::ConnectSucceeded { generation },
                1 => Event::ConnectFailed { generation, failure: Failure::transient("late") },
                2 => Event::SessionLost { generation, failure: Failure::transient("late") },
                3 => Event::SessionClosed { generation },
                4 => Event::PingSucceeded { generation, latency: Duration::ZERO },
                _ => Event::PingFailed { generation, failure: Failure::transient("late") },
            }
        }
        Op::Change(e) => Event::SpecChanged(Box::new(edited(sut.spec(), *e).validated().expect("edits stay valid"))),
        Op::Advance(ms) => {
            *now += Duration::from_millis(*ms);
            return None;
        }
        Op::Fire => {
            *now = (*now).max(sut.poll_timeout()?);
            Event::Timeout
        }
        Op::TimeoutNow => Event::Timeout,
    })
}

// ----- the reference model -----------------------------------------------------------

/// What the driver is asked to do, without publications and replies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Connect(u64),
    Cancel(u64),
    Close(u64),
    Ping(u64),
    ListTools(u64),
    Hook,
}

/// A reply, as callers see it.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Started,
    AlreadyRunning,
    NeedsCredentials,
    Unreachable(u32),
    Failed(FailureKind),
    Cancelled,
    Stopped,
    Checked(Health, Option<String>),
    Updated(ChangeAction),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    Stop,
    Start(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Requested,
    SpecChanged,
    Automatic,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    generation: u64,
    since: Instant,
    ping_in_flight: bool,
    missed: u32,
    next_probe: Instant,
    latency: Option<Duration>,
    warning: Option<&'static str>,
}

struct Model {
    spec: ServerSpec,
    settings: Settings,
    state: State,
    health: Health,
    last_error: Option<String>,
    failures: u32,
    crashes: u32,
    restarts: u32,
    next_retry: Option<Instant>,
    retry_is_jittered: bool,
    last_generation: u64,
    attempt: Option<(u64, bool)>,
    session: Option<Session>,
    /// A close at our request (`stopping`).
    closing: Option<(u64, Then)>,
    /// A lost session still being closed: nothing starts until it is gone.
    cleanup: Option<u64>,
    /// The start of a restart: when, and whether a recovery.
    pending_start: Option<(Instant, bool)>,
    owed_start: bool,
    owed_stop: bool,
    // output of the current step
    reasons: Vec<Reason>,
    acts: Vec<Act>,
    answers: Vec<Answer>,
}

impl Model {
    fn new(spec: ServerSpec, settings: Settings) -> Model {
        Model {
            spec,
            settings,
            state: State::Unknown,
            health: Health::Unknown,
            last_error: None,
            failures: 0,
            crashes: 0,
            restarts: 0,
            next_retry: None,
            retry_is_jittered: false,
            last_generation: 0,
            attempt: None,
            session: None,
            closing: None,
            cleanup: None,
            pending_start: None,
            owed_start: false,
            owed_stop: false,
            reasons: Vec::new(),
            acts: Vec::new(),
            answers: Vec::new(),
        }
    }

    fn remote(&self) -> bool {
        self.spec.is_remote()
    }

    fn up(&self) -> State {
        if self.remote() { State::Connected } else { State::Running }
    }

    fn down(&self) -> State {
        if self.remote() { State::Disconnected } else { State::Stopped }
    }

    fn is_down(&self) -> bool {
        matches!(self.state, State::Stopped | State::Disconnected)
    }

    fn show(&mut self, state: State, health: Health, error: Option<String>) {
        self.state = state;
        self.health = health;
        self.last_error = error;
    }

    fn answer_start(&mut self, answer: Answer) {
        if std::mem::take(&mut self.owed_start) {
            self.answers.push(answer);
        }
    }

    fn answer_ping_waiters(&mut self, s: &Session) {
        if s.ping_in_flight {
            self.answers.push(Answer::Checked(Health::Unhealthy, Some(NO_CLIENT.into())));
        }
    }

    /// SPEC §3.3; while a lost session is still being closed, stop it first.
    fn begin(&mut self, recovery: bool) {
        if let Some(g) = self.cleanup.take() {
            self.closing = Some((g, Then::Start(recovery)));
            self.next_retry = None;
            self.show(State::Stopping, Health::Unknown, None);
            return;
        }
        self.last_generation += 1;
        self.attempt = Some((self.last_generation, recovery));
        self.pending_start = None;
        self.next_retry = None;
        self.show(State::Starting, Health::Unknown, None);
        self.reasons.push(Reason::Starting);
        self.acts.push(Act::Connect(self.last_generation));
    }

    fn close(&mut self, then: Then) {
        let s = self.session.take().expect("a session");
        self.owed_stop |= then == Then::Stop;
        self.answer_ping_waiters(&s);
        self.closing = Some((s.generation, then));
        self.show(State::Stopping, Health::Unknown, None);
        self.acts.push(Act::Close(s.generation));
    }

    fn finish_stop(&mut self) {
        self.failures = 0;
        self.crashes = 0;
        self.next_retry = None;
        self.pending_start = None;
        self.owed_stop = false;
        self.show(self.down(), Health::Unknown, None);
        self.reasons.push(Reason::Stopped);
        self.answer_start(Answer::Cancelled);
        self.answers.push(Answer::Stopped);
    }

    fn restart_in_progress(&self) -> bool {
        self.attempt.is_some_and(|(_, r)| r)
            || self.closing.is_some_and(|(_, t)| t == Then::Start(true))
            || self.pending_start.is_some_and(|(_, r)| r)
    }

    /// SPEC §6 restart.
    fn restart(&mut self, now: Instant, cause: Cause) {
        let joining = self.restart_in_progress();
        if !joining {
            self.restarts += 1;
            self.reasons.push(Reason::RecoveryStarted);
        }
        let grace_over = now + self.settings.restart_grace;
        if self.session.is_some() {
            self.close(Then::Start(true));
        } else if let Some((g, _)) = self.attempt {
            if joining && cause == Cause::Requested {
                return;
            }
            self.attempt = None;
            self.acts.push(Act::Cancel(g));
            self.show(self.down(), Health::Unknown, None);
            self.reasons.push(Reason::Stopped);
            self.pending_start = Some((grace_over, true));
        } else if let Some((_, then)) = &mut self.closing {
            *then = Then::Start(true);
        } else if let Some((_, recovery)) = &mut self.pending_start {
            *recovery = true;
        } else {
            self.begin(true);
        }
    }

    /// SPEC §3.5.
    fn auth_required(&mut self, cleanup: Option<u64>) {
        self.failures = 0;
        self.next_retry = None;
        self.cleanup = cleanup;
        self.acts.push(Act::Hook);
        self.show(State::AuthRequired, Health::Unknown, Some(Class::Auth.message().into()));
        self.reasons.push(Reason::AuthRequired);
    }

    /// SPEC §7: the live session died.
    fn lost(&mut self, now: Instant, s: Session, class: Class, message: String, answer: Option<Answer>) {
        if class == Class::Auth && self.remote() {
            self.auth_required(Some(s.generation));
        } else {
            if now.duration_since(s.since) >= self.settings.stable_period {
                self.crashes = 0;
            }
            self.crashes += 1;
            let backoff = self.settings.backoff.base(self.crashes - 1);
            self.retry_is_jittered = self.settings.backoff.jitter() > 0.0 && backoff > self.settings.restart_grace;
            self.next_retry = Some(now + self.settings.restart_grace.max(backoff));
            self.cleanup = Some(s.generation);
            self.show(State::Failed, Health::Unhealthy, Some(message));
            self.reasons.push(Reason::Failed);
        }
        self.acts.push(Act::Close(s.generation));
        match answer {
            Some(a) => self.answers.push(a),
            None => self.answer_ping_waiters(&s),
        }
    }

    /// SPEC §8, field by field: what a new definition does now.
    fn verdict(&self, new: &ServerSpec) -> ChangeAction {
        let old = &self.spec;
        let auto_on = !old.auto_start && new.auto_start;
        let restart = old.url != new.url
            || old.command != new.command
            || old.server_type != new.server_type
            || old.args != new.args
            || old.env != new.env
            || old.headers != new.headers
            || old.timeout != new.timeout
            || old.tool_prefix != new.tool_prefix
            || old.auth != new.auth
            || old.cwd != new.cwd
            || old.inherit_env != new.inherit_env
            || old.pass_env != new.pass_env
            || auto_on;
        let metadata = old.description != new.description || (old.auto_start && !new.auto_start);
        if !restart {
            return if metadata { ChangeAction::Metadata } else { ChangeAction::Unchanged };
        }
        if self.session.is_some() || self.attempt.is_some() || self.pending_start.is_some() {
            return ChangeAction::Restart;
        }
        match self.closing {
            Some((_, Then::Start(_))) => return ChangeAction::Restart,
            Some((_, Then::Stop)) => return ChangeAction::Update,
            None => {}
        }
        if self.state == State::Unknown || self.is_down() {
            if auto_on { ChangeAction::Start } else { ChangeAction::Update }
        } else {
            ChangeAction::Restart
        }
    }

    /// Fires what is due, once nothing else runs.
    fn due(&mut self, now: Instant) {
        if self.attempt.is_some() || self.session.is_some() || self.closing.is_some() || self.cleanup.is_some() {
            return;
        }
        if let Some((at, recovery)) = self.pending_start {
            if now >= at {
                self.begin(recovery);
            }
        } else if self.next_retry.is_some_and(|t| now >= t) {
            self.restart(now, Cause::Automatic);
        }
    }

    fn step(&mut self, now: Instant, event: &Event) {
        self.reasons.clear();
        self.acts.clear();
        self.answers.clear();
        match event {
            Event::StartRequested => {
                if self.session.is_some() {
                    self.answers.push(Answer::AlreadyRunning);
                } else if let Some((_, then)) = &mut self.closing {
                    if *then == Then::Stop {
                        *then = Then::Start(false);
                    }
                    self.owed_start = true;
                } else {
                    self.owed_start = true;
                    if self.attempt.is_none() && self.pending_start.is_none() {
                        self.begin(false);
                    }
                }
            }
            Event::StopRequested => {
                if self.session.is_some() {
                    self.close(Then::Stop);
                } else if let Some((g, _)) = self.attempt.take() {
                    self.acts.push(Act::Cancel(g));
                    self.finish_stop();
                } else if let Some((_, then)) = &mut self.closing {
                    *then = Then::Stop;
                    self.owed_stop = true;
                    self.answer_start(Answer::Cancelled);
                } else if let Some(g) = self.cleanup.take() {
                    self.owed_stop = true;
                    self.closing = Some((g, Then::Stop));
                    self.next_retry = None;
                    self.pending_start = None;
                    self.show(State::Stopping, Health::Unknown, None);
                    self.answer_start(Answer::Cancelled);
                } else if self.is_down() {
                    self.pending_start = None;
                    self.failures = 0;
                    self.crashes = 0;
                    self.answer_start(Answer::Cancelled);
                    self.answers.push(Answer::Stopped);
                } else {
                    self.finish_stop();
                }
            }
            Event::RestartRequested => {
                self.owed_start = true;
                self.restart(now, Cause::Requested);
            }
            Event::HealthCheckRequested => match &mut self.session {
                Some(s) => {
                    if !s.ping_in_flight {
                        s.ping_in_flight = true;
                        self.acts.push(Act::Ping(s.generation));
                    }
                }
                None => self.answers.push(Answer::Checked(Health::Unhealthy, Some(NO_CLIENT.into()))),
            },
            Event::SpecChanged(new) => {
                let action = self.verdict(new);
                self.spec = new.spec().clone();
                // The down state is named after the type.
                if self.is_down() {
                    self.state = self.down();
                }
                match action {
                    ChangeAction::Restart => self.restart(now, Cause::SpecChanged),
                    ChangeAction::Start => self.begin(false),
                    ChangeAction::Unchanged | ChangeAction::Metadata | ChangeAction::Update => {}
                }
                self.answers.push(Answer::Updated(action));
            }
            Event::ConnectSucceeded { generation } => {
                let g = generation.0;
                if let Some((_, recovery)) = self.attempt.filter(|(a, _)| *a == g) {
                    self.attempt = None;
                    self.failures = 0;
                    let next_probe = now + self.settings.health_check_interval.get();
                    self.session = Some(Session {
                        generation: g,
                        since: now,
                        ping_in_flight: false,
                        missed: 0,
                        next_probe,
                        latency: None,
                        warning: None,
                    });
                    self.show(self.up(), Health::Healthy, None);
                    self.reasons.push(Reason::Started);
                    if recovery {
                        self.reasons.push(Reason::RecoverySucceeded);
                    }
                    self.answer_start(Answer::Started);
                    self.acts.push(Act::ListTools(g));
                } else if self.session.map(|s| s.generation) != Some(g)
                    && self.closing.map(|c| c.0) != Some(g)
                    && self.cleanup != Some(g)
                {
                    self.acts.push(Act::Close(g));
                }
            }
            Event::ConnectFailed { generation, failure } => {
                let Some((_, recovery)) = self.attempt.filter(|(a, _)| *a == generation.0) else { return };
                self.attempt = None;
                let class = classify(failure);
                let message = class.message().to_owned();
                let outcome = match class {
                    Class::Auth if self.remote() => {
                        self.auth_required(None);
                        self.answer_start(Answer::NeedsCredentials);
                        Reason::RecoveryAwaitingAuth
                    }
                    Class::Transient | Class::TransientAfter(_) | Class::Cancelled => {
                        self.failures += 1;
                        let floor = match class {
                            Class::TransientAfter(s) => Duration::from_secs(s).min(MAX_RETRY_AFTER),
                            Class::Transient | Class::Cancelled | Class::Permanent | Class::Auth => Duration::ZERO,
                        };
                        let backoff = self.settings.backoff.base(self.failures);
                        self.retry_is_jittered = self.settings.backoff.jitter() > 0.0 && backoff > floor;
                        self.next_retry = Some(now + backoff.max(floor));
                        let threshold = self.settings.unreachable_threshold.get();
                        if self.remote() && self.failures >= threshold {
                            let text =
                                format!("server unreachable after {} consecutive failures: {message}", self.failures);
                            self.show(State::Unreachable, Health::Unknown, Some(text));
                            self.answer_start(Answer::Unreachable(self.failures));
                        } else {
                            self.show(State::Failed, Health::Unhealthy, Some(message));
                            self.answer_start(Answer::Failed(FailureKind::Transient));
                        }
                        self.reasons.push(Reason::Failed);
                        Reason::RecoveryFailed
                    }
                    Class::Permanent | Class::Auth => {
                        self.next_retry = None;
                        self.show(State::Failed, Health::Unhealthy, Some(message));
                        self.reasons.push(Reason::Failed);
                        self.answer_start(Answer::Failed(FailureKind::Permanent));
                        Reason::RecoveryFailed
                    }
                };
                if recovery {
                    self.reasons.push(outcome);
                }
            }
            Event::SessionLost { generation, failure } => {
                if let Some(s) = self.session.filter(|s| s.generation == generation.0) {
                    self.session = None;
                    let class = classify(failure);
                    self.lost(now, s, class, class.message().to_owned(), None);
                }
            }
            Event::SessionClosed { generation } => {
                let g = generation.0;
                if let Some((_, then)) = self.closing.filter(|(c, _)| *c == g) {
                    self.closing = None;
                    match then {
                        Then::Stop => self.finish_stop(),
                        Then::Start(recovery) => {
                            self.show(self.down(), Health::Unknown, None);
                            self.reasons.push(Reason::Stopped);
                            self.pending_start = Some((now + self.settings.restart_grace, recovery));
                            if std::mem::take(&mut self.owed_stop) {
                                self.answers.push(Answer::Stopped);
                            }
                        }
                    }
                } else if self.cleanup == Some(g) {
                    self.cleanup = None;
                    self.due(now);
                }
            }
            Event::PingSucceeded { generation, latency } => {
                if let Some(s) = &mut self.session
                    && s.generation == generation.0
                    && s.ping_in_flight
                {
                    s.ping_in_flight = false;
                    s.missed = 0;
                    s.latency = Some(*latency);
                    s.next_probe = now + self.settings.health_check_interval.get();
                    // (roster) Slower than degraded_after: degraded, announced on the way in.
                    let health = if *latency > self.settings.degraded_after {
                        if self.health != Health::Degraded {
                            self.reasons.push(Reason::HealthDegraded);
                        }
                        Health::Degraded
                    } else {
                        Health::Healthy
                    };
                    let error = (health == Health::Degraded).then(|| degraded_text(*latency, &self.settings));
                    // A degraded server has no error of its own: its last error is cleared.
                    self.show(self.up(), health, None);
                    self.answers.push(Answer::Checked(health, error));
                }
            }
            Event::ToolsListed { generation, listing } => {
                if let Some(s) = &mut self.session
                    && s.generation == generation.0
                {
                    let warning = match listing {
                        ToolListing::NotOffered => None,
                        ToolListing::Listed { count } if *count > 0 => None,
                        ToolListing::Listed { .. } => Some("listed none"),
                        ToolListing::Failed(_) => Some("could not list"),
                    };
                    if warning.is_some() && s.warning.is_none() {
                        self.reasons.push(Reason::ToolsMissing);
                    }
                    s.warning = warning;
                }
            }
            Event::PingFailed { generation, failure } => {
                let Some(mut s) = self.session.filter(|s| s.generation == generation.0 && s.ping_in_flight) else {
                    return;
                };
                let class = classify(failure);
                let error = format!("MCP ping failed: {}", class.message());
                let checked = Answer::Checked(Health::Unhealthy, Some(error.clone()));
                s.ping_in_flight = false;
                if class == Class::Auth && self.remote() {
                    self.session = None;
                    self.lost(now, s, Class::Auth, String::new(), Some(checked));
                    return;
                }
                s.missed += 1;
                s.next_probe = now + self.settings.health_check_interval.get();
                if s.missed == 1 {
                    self.reasons.push(Reason::HealthCheckFailed);
                }
                self.show(self.up(), Health::Unhealthy, Some(error));
                if s.missed >= self.settings.unhealthy_threshold.get() {
                    self.session = None;
                    let message = format!(
                        "session lost: {} health checks failed in a row, the last with: {}",
                        s.missed,
                        class.message()
                    );
                    self.lost(now, s, Class::Transient, message, Some(checked));
                } else {
                    self.session = Some(s);
                    self.answers.push(checked);
                }
            }
            Event::Timeout => {
                if let Some(s) = &mut self.session {
                    if !s.ping_in_flight && now >= s.next_probe {
                        s.ping_in_flight = true;
                        self.acts.push(Act::Ping(s.generation));
                    }
                    if self.crashes > 0 && now >= s.since + self.settings.stable_period {
                        self.crashes = 0;
                    }
                } else {
                    self.due(now);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if let Some(s) = &self.session {
            let probe = (!s.ping_in_flight).then_some(s.next_probe);
            let stable = (self.crashes > 0).then(|| s.since + self.settings.stable_period);
            return match (probe, stable) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if self.attempt.is_some() || self.closing.is_some() || self.cleanup.is_some() {
            return None;
        }
        self.pending_start.map(|(at, _)| at).or(self.next_retry)
    }
}

/// The degraded reply's text, from SPEC's wording: the latency in whole
/// milliseconds (at least one) against the setting.
fn degraded_text(latency: Duration, settings: &Settings) -> String {
    let ms = Duration::from_millis((latency.as_millis() as u64).max(1));
    format!(
        "MCP ping took {}, more than degraded_after ({})",
        roster_core::lifecycle::format_duration(ms),
        roster_core::lifecycle::format_duration(settings.degraded_after)
    )
}

fn classify(f: &Failure) -> Class {
    match &f.class {
        FailureClass::Transient { retry_after: None } => Class::Transient,
        FailureClass::Transient { retry_after: Some(d) } => Class::TransientAfter(d.as_secs()),
        FailureClass::Permanent => Class::Permanent,
        FailureClass::NeedsCredentials(_) => Class::Auth,
        FailureClass::Cancelled => Class::Cancelled,
    }
}

fn published(t: &Transition) -> Vec<LifecycleEvent> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(ev) => Some(ev.clone()),
            Effect::Connect { .. }
            | Effect::CancelConnect { .. }
            | Effect::CloseSession { .. }
            | Effect::Ping { .. }
            | Effect::ListTools { .. }
            | Effect::CallAuthHook(_)
            | Effect::Reply(_) => None,
        })
        .collect()
}

fn acts(t: &Transition) -> Vec<Act> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Connect { generation, .. } => Some(Act::Connect(generation.0)),
            Effect::CancelConnect { generation } => Some(Act::Cancel(generation.0)),
            Effect::CloseSession { generation } => Some(Act::Close(generation.0)),
            Effect::Ping { generation, .. } => Some(Act::Ping(generation.0)),
            Effect::ListTools { generation, .. } => Some(Act::ListTools(generation.0)),
            Effect::CallAuthHook(_) => Some(Act::Hook),
            Effect::Publish(_) | Effect::Reply(_) => None,
        })
        .collect()
}

fn answers(t: &Transition) -> Vec<Answer> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply(r) => Some(match r {
                Reply::Started(Ok(())) => Answer::Started,
                Reply::Started(Err(StartError::AlreadyRunning { .. })) => Answer::AlreadyRunning,
                Reply::Started(Err(StartError::NeedsCredentials { .. })) => Answer::NeedsCredentials,
                Reply::Started(Err(StartError::Unreachable { failures, .. })) => Answer::Unreachable(*failures),
                Reply::Started(Err(StartError::Failed(f))) => Answer::Failed(f.kind()),
                Reply::Started(Err(StartError::Cancelled)) => Answer::Cancelled,
                Reply::Stopped => Answer::Stopped,
                Reply::HealthChecked { health, error } => Answer::Checked(*health, error.clone()),
                Reply::Updated(SpecChange { action, .. }) => Answer::Updated(*action),
            }),
            Effect::Connect { .. }
            | Effect::CancelConnect { .. }
            | Effect::CloseSession { .. }
            | Effect::Ping { .. }
            | Effect::ListTools { .. }
            | Effect::CallAuthHook(_)
            | Effect::Publish(_) => None,
        })
        .collect()
}

/// Health that SPEC §2 allows in each state.
fn health_fits(state: State, health: Health) -> bool {
    match state {
        State::Running | State::Connected => health != Health::Unknown,
        State::Failed => health == Health::Unhealthy,
        State::Unknown
        | State::Starting
        | State::Stopping
        | State::Stopped
        | State::Disconnected
        | State::Unreachable
        | State::AuthRequired => health == Health::Unknown,
    }
}

fn run_against_model(sc: &Scenario) -> Result<(), TestCaseError> {
    let mut now = base_instant();
    let mut sut = Lifecycle::new(sc.spec.clone().validated().unwrap(), sc.settings, sc.seed);
    let mut model = Model::new(sc.spec.clone(), sc.settings);
    let mut last_published: Option<(State, Health)> = None;
    for (i, op) in sc.ops.iter().enumerate() {
        let Some(ev) = event(op, &sut, &mut now, model.last_generation) else { continue };
        let before = (sut.state(), sut.health());
        let t = sut.handle(now, ev.clone());
        model.step(now, &ev);
        let ctx = || format!("step {i}: {op:?} → {ev:?}\n{t:#?}");

        // Same decisions, same answers.
        let reasons: Vec<Reason> = published(&t).iter().filter_map(|e| e.reason).collect();
        prop_assert_eq!(&reasons, &model.reasons, "{}", ctx());
        prop_assert_eq!(acts(&t), model.acts.clone(), "{}", ctx());
        prop_assert_eq!(answers(&t), model.answers.clone(), "{}", ctx());
        // Same view.
        prop_assert_eq!((sut.state(), sut.health()), (model.state, model.health), "{}", ctx());
        prop_assert_eq!(sut.last_error(), model.last_error.as_deref(), "{}", ctx());
        let model_session = model.session.as_ref();
        prop_assert_eq!(sut.ping_latency(), model_session.and_then(|s| s.latency), "{}", ctx());
        prop_assert_eq!(
            sut.warning().map(|w| if w.contains("listed none") { "listed none" } else { "could not list" }),
            model_session.and_then(|s| s.warning),
            "{}",
            ctx()
        );
        prop_assert_eq!(sut.consecutive_failures(), model.failures, "{}", ctx());
        prop_assert_eq!(sut.crash_count(), model.crashes, "{}", ctx());
        prop_assert_eq!(sut.restart_count(), model.restarts, "{}", ctx());
        if model.retry_is_jittered && model.next_retry.is_some() {
            prop_assert_eq!(sut.next_retry_after().is_some(), model.next_retry.is_some(), "{}", ctx());
            if let (Some(a), Some(b)) = (sut.next_retry_after(), model.next_retry) {
                prop_assert!(a <= b, "jitter never lengthens the delay: {}", ctx());
                prop_assert!(
                    b - a <= (b - now).mul_f64(0.5) + Duration::from_nanos(1),
                    "jitter stays in its band: {}",
                    ctx()
                );
            }
            // The model cannot know the random sample: it adopts the machine's deadline.
            model.next_retry = sut.next_retry_after();
        }
        model.retry_is_jittered &= model.next_retry.is_some();
        prop_assert_eq!(sut.next_retry_after(), model.next_retry, "{}", ctx());
        prop_assert_eq!(sut.poll_timeout(), model.poll_timeout(), "{}", ctx());
        prop_assert_eq!(sut.session().map(|g| g.0), model.session.map(|s| s.generation), "{}", ctx());
        prop_assert_eq!(sut.attempt().map(|g| g.0), model.attempt.map(|a| a.0), "{}", ctx());
        prop_assert_eq!(sut.closing().map(|g| g.0), model.closing.map(|c| c.0).or(model.cleanup), "{}", ctx());

        // SPEC §2 invariants.
        prop_assert!(health_fits(sut.state(), sut.health()), "{}", ctx());
        if !sut.spec().is_remote() {
            prop_assert!(
                !matches!(sut.state(), State::Unreachable | State::AuthRequired | State::Connected),
                "{}",
                ctx()
            );
        }
        // SPEC §3.5: the hook runs before anything of its transition is seen.
        if let Some(hook) = t.effects.iter().position(|e| matches!(e, Effect::CallAuthHook(_))) {
            let seen = t.effects.iter().position(|e| matches!(e, Effect::Publish(_) | Effect::Reply(_)));
            prop_assert!(seen.is_none_or(|p| p > hook), "{}", ctx());
        }
        // Every change published once, chained, and nothing published that changes nothing.
        let evs = published(&t);
        for e in &evs {
            if let Some(prev) = last_published {
                prop_assert_eq!((e.previous_state, e.previous_health), prev, "{}", ctx());
            }
            prop_assert!(
                e.reason.is_some() || (e.previous_state, e.previous_health) != (e.state, e.health),
                "{}",
                ctx()
            );
            last_published = Some((e.state, e.health));
        }
        let after = (sut.state(), sut.health());
        if after != before {
            prop_assert_eq!(evs.last().map(|e| (e.state, e.health)), Some(after), "{}", ctx());
        } else {
            prop_assert!(evs.is_empty() || evs.last().map(|e| (e.state, e.health)) == Some(after), "{}", ctx());
        }
    }
    Ok(())
}

/// Failures are kept in `proptest-regressions/` (committed) and replayed first.
/// `PROPTEST_CASES` asks for a longer run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/lifecycle_model.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn lifecycle_matches_the_reference_model(sc in scenario(120)) {
        run_against_model(&sc)?;
    }
}

// ----- properties --------------------------------------------------------------------

/// Plays `ops` and returns the lifecycle and the clock.
fn play(sc: &Scenario) -> (Lifecycle, Instant, Vec<Transition>) {
    play_from(base_instant(), sc)
}

fn play_from(mut now: Instant, sc: &Scenario) -> (Lifecycle, Instant, Vec<Transition>) {
    let mut l = Lifecycle::new(sc.spec.clone().validated().unwrap(), sc.settings, sc.seed);
    let mut out = Vec::new();
    let mut last = 0;
    for op in &sc.ops {
        if let Some(ev) = event(op, &l, &mut now, last) {
            let t = l.handle(now, ev);
            for a in acts(&t) {
                if let Act::Connect(g) = a {
                    last = g;
                }
            }
            out.push(t);
        }
    }
    (l, now, out)
}

fn first_connect(t: &Transition) -> Option<Generation> {
    acts(t).into_iter().find_map(|a| match a {
        Act::Connect(g) => Some(Generation(g)),
        Act::Cancel(_) | Act::Close(_) | Act::Ping(_) | Act::ListTools(_) | Act::Hook => None,
    })
}

fn remote_or_stdio(remote: bool) -> ServerSpec {
    of_type(if remote { ServerType::StreamableHttp } else { ServerType::Stdio })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn unreachable_exactly_at_the_threshold_and_only_for_remote_servers(
        remote in any::<bool>(), threshold in 1u32..8, failures in 1u32..12,
    ) {
        let settings = Settings { unreachable_threshold: NonZeroU32::new(threshold).unwrap(), ..Settings::default() };
        let mut now = base_instant();
        let mut l = Lifecycle::new(remote_or_stdio(remote).validated().unwrap(), settings, 0);
        let mut generation = first_connect(&l.handle(now, Event::StartRequested)).unwrap();
        for k in 1..=failures {
            let t = l.handle(now, Event::ConnectFailed { generation, failure: Failure::transient("refused") });
            let expect = if remote && k >= threshold { State::Unreachable } else { State::Failed };
            prop_assert_eq!(t.to, expect, "failure {}", k);
            now = l.poll_timeout().unwrap();
            generation = first_connect(&l.handle(now, Event::Timeout)).unwrap();
        }
    }

    #[test]
    fn one_success_resets_the_failure_count(sc in scenario(60), failures in 0u32..10) {
        let (mut l, mut now, _) = play(&sc);
        let _ = l.handle(now, Event::StopRequested);
        if let Some(g) = l.closing() {
            let _ = l.handle(now, Event::SessionClosed { generation: g });
        }
        let mut generation = first_connect(&l.handle(now, Event::StartRequested)).unwrap();
        for _ in 0..failures {
            let _ = l.handle(now, Event::ConnectFailed { generation, failure: Failure::transient("refused") });
            now = l.poll_timeout().unwrap();
            generation = first_connect(&l.handle(now, Event::Timeout)).unwrap();
        }
        let _ = l.handle(now, Event::ConnectSucceeded { generation });
        prop_assert_eq!(l.consecutive_failures(), 0);
        prop_assert_eq!(l.next_retry_after(), None);
        prop_assert!(l.is_healthy());
    }

    #[test]
    fn same_seed_and_events_give_the_same_transitions(sc in scenario(80)) {
        let t0 = base_instant();
        let (a, _, ta) = play_from(t0, &sc);
        let (b, _, tb) = play_from(t0, &sc);
        prop_assert_eq!(ta, tb);
        prop_assert_eq!(a.next_retry_after(), b.next_retry_after());
    }

    #[test]
    fn a_timeout_before_the_deadline_is_a_no_op(sc in scenario(80), fraction in 0.0f64..1.0) {
        let (mut l, now, _) = play(&sc);
        let (state, retry, poll) = (l.state(), l.next_retry_after(), l.poll_timeout());
        let early = match poll {
            Some(t) if t > now => now + (t - now).mul_f64(fraction),
            Some(_) => return Ok(()),
            None => now + Duration::from_secs(86_400),
        };
        prop_assume!(poll.is_none_or(|t| early < t));
        let t = l.handle(early, Event::Timeout);
        prop_assert!(t.is_noop(), "{:?}", t);
        prop_assert_eq!((l.state(), l.next_retry_after(), l.poll_timeout()), (state, retry, poll));
    }

    #[test]
    fn stale_generations_never_change_anything(sc in scenario(80), kind in 0u8..7, pick in any::<u64>()) {
        let (mut l, now, ts) = play(&sc);
        let issued: Vec<u64> = ts.iter().flat_map(acts).filter_map(|a| match a {
            Act::Connect(g) => Some(g),
            Act::Cancel(_) | Act::Close(_) | Act::Ping(_) | Act::ListTools(_) | Act::Hook => None,
        }).collect();
        let live = [l.attempt(), l.session(), l.closing()];
        let candidates: Vec<u64> = issued.iter().copied().chain([0, u64::MAX, issued.len() as u64 + 100])
            .filter(|g| !live.contains(&Some(Generation(*g)))).collect();
        let generation = Generation(candidates[(pick % candidates.len() as u64) as usize]);
        let event = match kind {
            0 => Event::ConnectSucceeded { generation },
            1 => Event::ConnectFailed { generation, failure: Failure::transient("late") },
            2 => Event::SessionLost { generation, failure: Failure::transient("late") },
            3 => Event::SessionClosed { generation },
            4 => Event::PingSucceeded { generation, latency: Duration::from_secs(9) },
            5 => Event::ToolsListed { generation, listing: ToolListing::Listed { count: 0 } },
            _ => Event::PingFailed { generation, failure: Failure::transient("late") },
        };
        let before = (l.state(), l.health(), l.consecutive_failures(), l.crash_count(), l.next_retry_after(), l.poll_timeout(), l.warning().map(str::to_owned), l.ping_latency());
        let t = l.handle(now, event.clone());
        let after = (l.state(), l.health(), l.consecutive_failures(), l.crash_count(), l.next_retry_after(), l.poll_timeout(), l.warning().map(str::to_owned), l.ping_latency());
        prop_assert_eq!(before, after);
        // The only thing a stale report may cause: closing a late session.
        let allowed = if kind == 0 { vec![Effect::CloseSession { generation }] } else { vec![] };
        prop_assert_eq!(t.effects, allowed);
    }

    #[test]
    fn from_any_reachable_state_a_stop_reaches_stopped_or_disconnected(sc in scenario(100)) {
        let (mut l, now, _) = play(&sc);
        let t = l.handle(now, Event::StopRequested);
        let mut stopped = answers(&t).contains(&Answer::Stopped);
        if let Some(generation) = l.closing() {
            prop_assert!(!stopped, "not answered before the close is done");
            let t = l.handle(now, Event::SessionClosed { generation });
            stopped = answers(&t).contains(&Answer::Stopped);
        }
        prop_assert!(stopped, "the stop is answered");
        // The down state is named after the type the definition has now.
        let down = if l.spec().is_remote() { State::Disconnected } else { State::Stopped };
        prop_assert_eq!(l.state(), down);
        prop_assert_eq!(l.health(), Health::Unknown);
        prop_assert_eq!(l.poll_timeout(), None, "nothing restarts a stopped server");
        prop_assert_eq!(l.consecutive_failures(), 0);
        prop_assert!(!l.is_client_ready());
    }
}
