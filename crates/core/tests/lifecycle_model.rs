//! Model-based and property tests of `Lifecycle`.
//!
//! `Model` below is a reference model of SPEC §3–§8 written as plain fields and
//! one rule per request or report, without the phases, helpers or generation
//! bookkeeping of the real machine. proptest drives both with the same random
//! sequences of every event (including stale reports and clock jumps) and
//! compares what they publish, what they ask the driver to do, and what they
//! show after every step.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use roster_core::{
    Backoff, Challenge, Effect, Event, Failure, Generation, Health, Lifecycle, LifecycleEvent, Reason, Reply,
    ServerSpec, ServerType, Settings, State, Transition,
};

#[expect(clippy::disallowed_methods, reason = "tests need an arbitrary base instant; the core never reads the clock")]
fn base_instant() -> Instant {
    Instant::now()
}

// ----- the operations ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Transient,
    TransientAfter(u64),
    Permanent,
    Auth,
    Cancelled,
}

impl Class {
    fn failure(self) -> Failure {
        match self {
            Class::Transient => Failure::transient("connection refused"),
            Class::TransientAfter(s) => Failure::transient_after("HTTP 503", Duration::from_secs(s)),
            Class::Permanent => Failure::permanent("HTTP 404"),
            Class::Auth => Failure::auth_required(Challenge::parse(r#"Bearer realm="r""#), "HTTP 401"),
            Class::Cancelled => Failure::cancelled("cancelled"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Edit {
    Description,
    Args,
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
    Closed(Class),
    DisconnectDone,
    PingOk,
    PingFail(Class),
    /// A report for a generation that is not the current one.
    Stale(u8, u64),
    Change(Edit),
    Advance(u64),
    /// Jump to `poll_timeout()` and fire it.
    Fire,
    /// Fire at the current time, due or not.
    TimeoutNow,
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        4 => Just(Class::Transient),
        1 => (0u64..120).prop_map(Class::TransientAfter),
        1 => Just(Class::Permanent),
        1 => Just(Class::Auth),
        1 => Just(Class::Cancelled),
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
        2 => class().prop_map(Op::Closed),
        3 => Just(Op::DisconnectDone),
        3 => Just(Op::PingOk),
        3 => class().prop_map(Op::PingFail),
        2 => (0u8..6, 0u64..4).prop_map(|(k, g)| Op::Stale(k, g)),
        1 => prop_oneof![Just(Edit::Description), Just(Edit::Args), Just(Edit::AutoStartOn), Just(Edit::AutoStartOff)]
            .prop_map(Op::Change),
        2 => (0u64..60_000).prop_map(Op::Advance),
        5 => Just(Op::Fire),
        1 => Just(Op::TimeoutNow),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    remote: bool,
    settings: Settings,
    seed: u64,
    ops: Vec<Op>,
}

fn settings() -> impl Strategy<Value = Settings> {
    (1u32..=4, 1u32..=3, 0u64..=500, 1u64..=3, any::<bool>()).prop_map(
        |(unreachable, unhealthy, grace, mult, jitter)| {
            let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(20), mult as f64).unwrap();
            let backoff = if jitter { backoff.with_jitter(0.5).unwrap() } else { backoff };
            Settings {
                backoff,
                unreachable_threshold: unreachable,
                restart_grace: Duration::from_millis(grace),
                health_check_interval: Duration::from_secs(5),
                ping_timeout: Duration::from_secs(1),
                unhealthy_threshold: unhealthy,
                stable_period: Duration::from_secs(30),
            }
        },
    )
}

fn scenario(max_ops: usize) -> impl Strategy<Value = Scenario> {
    (any::<bool>(), settings(), any::<u64>(), prop::collection::vec(op(), 1..max_ops))
        .prop_map(|(remote, settings, seed, ops)| Scenario { remote, settings, seed, ops })
}

fn spec(remote: bool) -> ServerSpec {
    if remote {
        ServerSpec::remote("api", ServerType::StreamableHttp, "https://api.example/mcp")
    } else {
        ServerSpec::stdio("fs", "mcp-fs")
    }
}

/// Turns an operation into the concrete event for `sut` as it is now.
fn event(op: &Op, sut: &Lifecycle, now: &mut Instant, last_generation: u64) -> Option<Event> {
    let current = |g: Option<Generation>| g.unwrap_or(Generation(last_generation));
    Some(match op {
        Op::Start => Event::StartRequested,
        Op::Stop => Event::StopRequested,
        Op::Restart => Event::RestartRequested,
        Op::HealthCheck => Event::HealthCheckRequested,
        Op::ConnectOk => Event::Connected { generation: current(sut.attempt()) },
        Op::ConnectFail(c) => Event::ConnectFailed { generation: current(sut.attempt()), failure: c.failure() },
        Op::Closed(c) => Event::TransportClosed { generation: current(sut.session()), failure: c.failure() },
        Op::DisconnectDone => Event::Disconnected { generation: current(sut.closing()) },
        Op::PingOk => Event::PingSucceeded { generation: current(sut.session()) },
        Op::PingFail(c) => Event::PingFailed { generation: current(sut.session()), failure: c.failure() },
        Op::Stale(kind, back) => {
            let live = [sut.attempt(), sut.session(), sut.closing()];
            let generation = Generation(last_generation.saturating_sub(*back) + u64::from(*back == 3) * 7);
            if live.contains(&Some(generation)) {
                return None;
            }
            match kind {
                0 => Event::Connected { generation },
                1 => Event::ConnectFailed { generation, failure: Failure::transient("late") },
                2 => Event::TransportClosed { generation, failure: Failure::transient("late") },
                3 => Event::Disconnected { generation },
                4 => Event::PingSucceeded { generation },
                _ => Event::PingFailed { generation, failure: Failure::transient("late") },
            }
        }
        Op::Change(edit) => {
            let mut s = sut.spec().clone();
            match edit {
                Edit::Description => s.description.push('x'),
                Edit::Args => s.args.push("--x".into()),
                Edit::AutoStartOn => s.auto_start = true,
                Edit::AutoStartOff => s.auto_start = false,
            }
            Event::SpecChanged(Box::new(s))
        }
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
    Disconnect(u64),
    Ping(u64),
    Hook,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    Stop,
    Start(bool),
}

#[derive(Debug, Clone, Copy)]
struct Session {
    generation: u64,
    since: Instant,
    ping_in_flight: bool,
    missed: u32,
    next_probe: Instant,
}

struct Model {
    remote: bool,
    settings: Settings,
    auto_start: bool,
    state: State,
    health: Health,
    failures: u32,
    crashes: u32,
    restarts: u32,
    next_retry: Option<Instant>,
    retry_is_jittered: bool,
    last_generation: u64,
    attempt: Option<(u64, bool)>,
    session: Option<Session>,
    closing: Option<(u64, Then)>,
    grace_start: Option<(Instant, bool)>,
    gate: bool,
    // output of the current step
    reasons: Vec<Reason>,
    acts: Vec<Act>,
}

impl Model {
    fn new(remote: bool, settings: Settings) -> Model {
        Model {
            remote,
            settings,
            auto_start: false,
            state: State::Unknown,
            health: Health::Unknown,
            failures: 0,
            crashes: 0,
            restarts: 0,
            next_retry: None,
            retry_is_jittered: false,
            last_generation: 0,
            attempt: None,
            session: None,
            closing: None,
            grace_start: None,
            gate: false,
            reasons: Vec::new(),
            acts: Vec::new(),
        }
    }

    fn up(&self) -> State {
        if self.remote { State::Connected } else { State::Running }
    }

    fn down(&self) -> State {
        if self.remote { State::Disconnected } else { State::Stopped }
    }

    fn idle(&self) -> bool {
        self.attempt.is_none() && self.session.is_none() && self.closing.is_none()
    }

    fn clear_counters(&mut self) {
        self.failures = 0;
        self.crashes = 0;
        self.next_retry = None;
    }

    /// SPEC §3.3.
    fn begin(&mut self, recovery: bool) {
        self.last_generation += 1;
        self.attempt = Some((self.last_generation, recovery));
        self.grace_start = None;
        self.next_retry = None;
        self.state = State::Starting;
        self.health = Health::Unknown;
        self.reasons.push(Reason::Starting);
        self.acts.push(Act::Connect(self.last_generation));
    }

    /// SPEC §6 restart.
    fn restart(&mut self, now: Instant) {
        self.restarts += 1;
        self.reasons.push(Reason::RecoveryStarted);
        if let Some(s) = self.session.take() {
            self.closing = Some((s.generation, Then::Start(true)));
            self.state = State::Stopping;
            self.health = Health::Unknown;
            self.acts.push(Act::Disconnect(s.generation));
        } else if let Some((g, _)) = self.attempt.take() {
            self.acts.push(Act::Cancel(g));
            self.state = self.down();
            self.health = Health::Unknown;
            self.reasons.push(Reason::Stopped);
            self.grace_start = Some((now + self.settings.restart_grace, true));
        } else if let Some((_, then)) = &mut self.closing {
            *then = Then::Start(true);
        } else if let Some((_, recovery)) = &mut self.grace_start {
            *recovery = true;
        } else {
            self.begin(true);
        }
    }

    fn auth_required(&mut self) {
        self.failures = 0;
        self.next_retry = None;
        self.acts.push(Act::Hook);
        self.state = State::AuthRequired;
        self.health = Health::Unknown;
        self.reasons.push(Reason::AuthRequired);
    }

    /// SPEC §7: the live session died.
    fn lost(&mut self, now: Instant, s: Session, class: Class) {
        self.acts.push(Act::Disconnect(s.generation));
        if class == Class::Auth && self.remote {
            self.auth_required();
            return;
        }
        if now.duration_since(s.since) >= self.settings.stable_period {
            self.crashes = 0;
        }
        self.crashes += 1;
        let backoff = self.settings.backoff.base(self.crashes - 1);
        self.retry_is_jittered = self.settings.backoff.jitter() > 0.0 && backoff > self.settings.restart_grace;
        self.next_retry = Some(now + self.settings.restart_grace.max(backoff));
        self.state = State::Failed;
        self.health = Health::Unhealthy;
        self.reasons.push(Reason::Failed);
    }

    /// One step; `edit` says what a `SpecChanged` changed (the generator knows).
    fn step(&mut self, now: Instant, event: &Event, edit: Option<Edit>) {
        self.reasons.clear();
        self.acts.clear();
        match event {
            Event::StartRequested => {
                if let Some((_, then)) = &mut self.closing {
                    if *then == Then::Stop {
                        *then = Then::Start(false);
                    }
                } else if self.session.is_none() && self.attempt.is_none() && self.grace_start.is_none() {
                    self.begin(false);
                }
            }
            Event::StopRequested => {
                self.grace_start = None;
                if let Some(s) = self.session.take() {
                    self.closing = Some((s.generation, Then::Stop));
                    self.state = State::Stopping;
                    self.health = Health::Unknown;
                    self.acts.push(Act::Disconnect(s.generation));
                } else if let Some((_, then)) = &mut self.closing {
                    *then = Then::Stop;
                } else {
                    if let Some((g, _)) = self.attempt.take() {
                        self.acts.push(Act::Cancel(g));
                    }
                    self.clear_counters();
                    if self.state != self.down() {
                        self.state = self.down();
                        self.health = Health::Unknown;
                        self.reasons.push(Reason::Stopped);
                    }
                }
            }
            Event::RestartRequested => self.restart(now),
            Event::HealthCheckRequested => {
                if let Some(s) = &mut self.session
                    && !s.ping_in_flight
                {
                    s.ping_in_flight = true;
                    self.acts.push(Act::Ping(s.generation));
                }
            }
            Event::Connected { generation } => {
                let g = generation.0;
                if let Some((a, recovery)) = self.attempt.filter(|(a, _)| *a == g) {
                    self.attempt = None;
                    self.failures = 0;
                    self.next_retry = None;
                    self.gate = false;
                    let next_probe = now + self.settings.health_check_interval;
                    self.session =
                        Some(Session { generation: a, since: now, ping_in_flight: false, missed: 0, next_probe });
                    self.state = self.up();
                    self.health = Health::Healthy;
                    self.reasons.push(Reason::Started);
                    if recovery {
                        self.reasons.push(Reason::RecoverySucceeded);
                    }
                } else if self.session.map(|s| s.generation) != Some(g) && self.closing.map(|c| c.0) != Some(g) {
                    self.acts.push(Act::Disconnect(g));
                }
            }
            Event::ConnectFailed { generation, failure } => {
                let Some((_, recovery)) = self.attempt.filter(|(a, _)| *a == generation.0) else { return };
                self.attempt = None;
                let class = classify(failure);
                let outcome = match class {
                    Class::Auth if self.remote => {
                        self.auth_required();
                        Reason::RecoveryAwaitingAuth
                    }
                    Class::Transient | Class::TransientAfter(_) => {
                        self.failures += 1;
                        let floor = match class {
                            Class::TransientAfter(s) => Duration::from_secs(s),
                            Class::Transient | Class::Permanent | Class::Auth | Class::Cancelled => Duration::ZERO,
                        };
                        let backoff = self.settings.backoff.base(self.failures);
                        self.retry_is_jittered = self.settings.backoff.jitter() > 0.0 && backoff > floor;
                        self.next_retry = Some(now + backoff.max(floor));
                        if self.remote && self.failures >= self.settings.unreachable_threshold {
                            self.state = State::Unreachable;
                            self.health = Health::Unknown;
                        } else {
                            self.state = State::Failed;
                            self.health = Health::Unhealthy;
                        }
                        self.reasons.push(Reason::Failed);
                        Reason::RecoveryFailed
                    }
                    Class::Permanent | Class::Auth => {
                        self.next_retry = None;
                        self.state = State::Failed;
                        self.health = Health::Unhealthy;
                        self.reasons.push(Reason::Failed);
                        Reason::RecoveryFailed
                    }
                    Class::Cancelled => {
                        self.next_retry = None;
                        self.state = self.down();
                        self.health = Health::Unknown;
                        self.reasons.push(Reason::Stopped);
                        return;
                    }
                };
                if recovery {
                    self.reasons.push(outcome);
                }
            }
            Event::TransportClosed { generation, failure } => {
                if let Some(s) = self.session.filter(|s| s.generation == generation.0) {
                    self.session = None;
                    self.lost(now, s, classify(failure));
                }
            }
            Event::Disconnected { generation } => {
                let Some((_, then)) = self.closing.filter(|(c, _)| *c == generation.0) else { return };
                self.closing = None;
                self.state = self.down();
                self.health = Health::Unknown;
                self.reasons.push(Reason::Stopped);
                match then {
                    Then::Stop => self.clear_counters(),
                    Then::Start(recovery) => self.grace_start = Some((now + self.settings.restart_grace, recovery)),
                }
            }
            Event::PingSucceeded { generation } => {
                if let Some(s) = &mut self.session
                    && s.generation == generation.0
                    && s.ping_in_flight
                {
                    s.ping_in_flight = false;
                    s.missed = 0;
                    s.next_probe = now + self.settings.health_check_interval;
                    self.gate = false;
                    self.health = Health::Healthy;
                }
            }
            Event::PingFailed { generation, failure } => {
                let Some(mut s) = self.session.filter(|s| s.generation == generation.0 && s.ping_in_flight) else {
                    return;
                };
                s.ping_in_flight = false;
                s.missed += 1;
                s.next_probe = now + self.settings.health_check_interval;
                self.session = Some(s);
                if !self.gate {
                    self.reasons.push(Reason::HealthCheckFailed);
                }
                self.gate = true;
                self.health = Health::Unhealthy;
                let class = classify(failure);
                if s.missed >= self.settings.unhealthy_threshold || (class == Class::Auth && self.remote) {
                    self.session = None;
                    self.lost(now, s, if class == Class::Auth { Class::Auth } else { Class::Transient });
                }
            }
            Event::SpecChanged(new) => {
                // SPEC §8: args need a restart; auto_start false→true too; the rest is metadata.
                let auto_on = !self.auto_start && new.auto_start;
                let restart = edit == Some(Edit::Args) || auto_on;
                self.auto_start = new.auto_start;
                if !restart || self.closing.is_some() || self.grace_start.is_some() {
                    return;
                }
                let up_or_trying = self.session.is_some() || self.attempt.is_some();
                if up_or_trying || matches!(self.state, State::Failed | State::Unreachable | State::AuthRequired) {
                    self.restart(now);
                } else if auto_on {
                    self.begin(false);
                }
            }
            Event::Timeout => {
                if self.idle() {
                    if let Some((at, recovery)) = self.grace_start {
                        if now >= at {
                            self.begin(recovery);
                        }
                    } else if self.next_retry.is_some_and(|t| now >= t) {
                        self.restart(now);
                    }
                } else if let Some(s) = &mut self.session {
                    if self.crashes > 0 && now >= s.since + self.settings.stable_period {
                        self.crashes = 0;
                    }
                    if !s.ping_in_flight && now >= s.next_probe {
                        s.ping_in_flight = true;
                        self.acts.push(Act::Ping(s.generation));
                    }
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
        if !self.idle() {
            return None;
        }
        self.grace_start.map(|(at, _)| at).or(self.next_retry)
    }
}

fn classify(f: &Failure) -> Class {
    match &f.class {
        roster_core::FailureClass::Transient { retry_after: None } => Class::Transient,
        roster_core::FailureClass::Transient { retry_after: Some(d) } => Class::TransientAfter(d.as_secs()),
        roster_core::FailureClass::Permanent => Class::Permanent,
        roster_core::FailureClass::AuthRequired(_) => Class::Auth,
        roster_core::FailureClass::Cancelled => Class::Cancelled,
    }
}

fn published(t: &Transition) -> Vec<LifecycleEvent> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(ev) => Some(ev.clone()),
            Effect::Connect { .. }
            | Effect::CancelConnect { .. }
            | Effect::Disconnect { .. }
            | Effect::Ping { .. }
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
            Effect::Disconnect { generation } => Some(Act::Disconnect(generation.0)),
            Effect::Ping { generation, .. } => Some(Act::Ping(generation.0)),
            Effect::CallAuthHook(_) => Some(Act::Hook),
            Effect::Publish(_) | Effect::Reply(_) => None,
        })
        .collect()
}

fn replies(t: &Transition) -> Vec<Reply> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply(r) => Some(r.clone()),
            Effect::Connect { .. }
            | Effect::CancelConnect { .. }
            | Effect::Disconnect { .. }
            | Effect::Ping { .. }
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
    let mut sut = Lifecycle::new(spec(sc.remote), sc.settings, sc.seed);
    let mut model = Model::new(sc.remote, sc.settings);
    let mut waiting_starts = 0usize;
    let mut last_published: Option<(State, Health)> = None;
    for (i, op) in sc.ops.iter().enumerate() {
        let edit = match op {
            Op::Change(edit) => Some(*edit),
            _ => None,
        };
        let Some(ev) = event(op, &sut, &mut now, model.last_generation) else { continue };
        let before = (sut.state(), sut.health());
        let t = sut.handle(now, ev.clone());
        model.step(now, &ev, edit);
        let ctx = || format!("step {i}: {op:?} → {ev:?}\n{t:#?}");

        // Same decisions.
        let reasons: Vec<Reason> = published(&t).iter().filter_map(|e| e.reason).collect();
        prop_assert_eq!(&reasons, &model.reasons, "{}", ctx());
        prop_assert_eq!(acts(&t), model.acts.clone(), "{}", ctx());
        prop_assert_eq!((sut.state(), sut.health()), (model.state, model.health), "{}", ctx());
        prop_assert_eq!(sut.consecutive_failures(), model.failures, "{}", ctx());
        prop_assert_eq!(sut.crash_count(), model.crashes, "{}", ctx());
        prop_assert_eq!(sut.restart_count(), model.restarts, "{}", ctx());
        if model.retry_is_jittered {
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
            model.retry_is_jittered = false;
        } else {
            prop_assert_eq!(sut.next_retry_after(), model.next_retry, "{}", ctx());
            prop_assert_eq!(sut.poll_timeout(), model.poll_timeout(), "{}", ctx());
        }
        prop_assert_eq!(sut.session().map(|g| g.0), model.session.map(|s| s.generation), "{}", ctx());
        prop_assert_eq!(sut.attempt().map(|g| g.0), model.attempt.map(|a| a.0), "{}", ctx());
        prop_assert_eq!(sut.closing().map(|g| g.0), model.closing.map(|c| c.0), "{}", ctx());

        // SPEC §2 invariants.
        prop_assert!(health_fits(sut.state(), sut.health()), "{}", ctx());
        if !sc.remote {
            prop_assert!(
                !matches!(sut.state(), State::Unreachable | State::AuthRequired | State::Connected),
                "{}",
                ctx()
            );
        }
        // Every change published once, chained.
        let evs = published(&t);
        for e in &evs {
            if let Some(prev) = last_published {
                prop_assert_eq!((e.previous_state, e.previous_health), prev, "{}", ctx());
            }
            last_published = Some((e.state, e.health));
        }
        if (sut.state(), sut.health()) != before {
            prop_assert!(
                evs.iter().any(|e| (e.previous_state, e.previous_health) != (e.state, e.health)),
                "a change without a publication: {}",
                ctx()
            );
        } else {
            prop_assert!(evs.iter().all(|e| e.reason.is_some()), "{}", ctx());
        }
        // Every start request is answered, once.
        let answered = replies(&t).iter().filter(|r| matches!(r, Reply::Started(_))).count();
        prop_assert!(answered <= 1, "{}", ctx());
        if matches!(ev, Event::StartRequested | Event::RestartRequested) {
            waiting_starts += 1;
        }
        if answered == 1 {
            waiting_starts = 0;
        }
        if waiting_starts > 0 {
            prop_assert!(
                sut.attempt().is_some()
                    || sut.closing().is_some()
                    || (sut.session().is_none() && sut.poll_timeout().is_some() && sut.next_retry_after().is_none()),
                "a start request is owed but nothing will answer it: {}",
                ctx()
            );
        }
    }
    Ok(())
}

/// Failures are kept in `proptest-regressions/` (committed) and replayed first.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
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
    let mut l = Lifecycle::new(spec(sc.remote), sc.settings, sc.seed);
    let mut out = Vec::new();
    for op in &sc.ops {
        let last = [l.attempt(), l.session(), l.closing()].into_iter().flatten().map(|g| g.0).max().unwrap_or(0);
        if let Some(ev) = event(op, &l, &mut now, last) {
            out.push(l.handle(now, ev));
        }
    }
    (l, now, out)
}

fn first_connect(t: &Transition) -> Option<Generation> {
    acts(t).into_iter().find_map(|a| match a {
        Act::Connect(g) => Some(Generation(g)),
        Act::Cancel(_) | Act::Disconnect(_) | Act::Ping(_) | Act::Hook => None,
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn unreachable_exactly_at_the_threshold_and_only_for_remote_servers(
        remote in any::<bool>(), threshold in 1u32..8, failures in 1u32..12,
    ) {
        let settings = Settings { unreachable_threshold: threshold, ..Settings::default() };
        let mut now = base_instant();
        let mut l = Lifecycle::new(spec(remote), settings, 0);
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
            let _ = l.handle(now, Event::Disconnected { generation: g });
        }
        let mut generation = first_connect(&l.handle(now, Event::StartRequested)).unwrap();
        for _ in 0..failures {
            let _ = l.handle(now, Event::ConnectFailed { generation, failure: Failure::transient("refused") });
            now = l.poll_timeout().unwrap();
            generation = first_connect(&l.handle(now, Event::Timeout)).unwrap();
        }
        let _ = l.handle(now, Event::Connected { generation });
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
    fn stale_generations_never_change_anything(sc in scenario(80), kind in 0u8..6, pick in any::<u64>()) {
        let (mut l, now, ts) = play(&sc);
        let issued: Vec<u64> = ts.iter().flat_map(acts).filter_map(|a| match a {
            Act::Connect(g) => Some(g),
            Act::Cancel(_) | Act::Disconnect(_) | Act::Ping(_) | Act::Hook => None,
        }).collect();
        let live = [l.attempt(), l.session(), l.closing()];
        let candidates: Vec<u64> = issued.iter().copied().chain([0, u64::MAX, issued.len() as u64 + 100])
            .filter(|g| !live.contains(&Some(Generation(*g)))).collect();
        let generation = Generation(candidates[(pick % candidates.len() as u64) as usize]);
        let event = match kind {
            0 => Event::Connected { generation },
            1 => Event::ConnectFailed { generation, failure: Failure::transient("late") },
            2 => Event::TransportClosed { generation, failure: Failure::transient("late") },
            3 => Event::Disconnected { generation },
            4 => Event::PingSucceeded { generation },
            _ => Event::PingFailed { generation, failure: Failure::transient("late") },
        };
        let before = (l.state(), l.health(), l.consecutive_failures(), l.crash_count(), l.next_retry_after(), l.poll_timeout());
        let t = l.handle(now, event.clone());
        let after = (l.state(), l.health(), l.consecutive_failures(), l.crash_count(), l.next_retry_after(), l.poll_timeout());
        prop_assert_eq!(before, after);
        // The only thing a stale report may cause: closing a late session.
        let allowed = if kind == 0 { vec![Effect::Disconnect { generation }] } else { vec![] };
        prop_assert_eq!(t.effects, allowed);
    }

    #[test]
    fn from_any_reachable_state_a_stop_reaches_stopped_or_disconnected(sc in scenario(100)) {
        let (mut l, now, _) = play(&sc);
        let _ = l.handle(now, Event::StopRequested);
        if let Some(generation) = l.closing() {
            let t = l.handle(now, Event::Disconnected { generation });
            prop_assert!(t.effects.contains(&Effect::Reply(Reply::Stopped)));
        }
        let down = if sc.remote { State::Disconnected } else { State::Stopped };
        prop_assert_eq!(l.state(), down);
        prop_assert_eq!(l.health(), Health::Unknown);
        prop_assert_eq!(l.poll_timeout(), None, "nothing restarts a stopped server");
        prop_assert_eq!(l.consecutive_failures(), 0);
        prop_assert!(!l.is_client_ready());
    }
}
