//! One test per rule of SPEC §3–§8, named after the rule.

use std::time::{Duration, Instant};

use std::num::NonZeroU32;

use super::*;
use crate::backoff::Backoff;
use crate::change::{ChangeAction, SpecChange};
use crate::failure::{Challenge, Failure, FailureKind};
use crate::spec::{ServerSpec, ServerType};

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;
/// A ping answered well within `degraded_after`.
const FAST: Duration = Duration::from_millis(1);

/// A lifecycle with a clock that only moves when told to.
struct H {
    l: Lifecycle,
    now: Instant,
}

#[expect(
    clippy::disallowed_methods,
    reason = "tests need an arbitrary base instant; the core itself never reads the clock"
)]
fn base_instant() -> Instant {
    Instant::now()
}

impl H {
    fn stdio() -> H {
        H::with(ServerSpec::stdio("fs", "mcp-fs"))
    }

    fn remote() -> H {
        H::with(ServerSpec::remote("api", ServerType::StreamableHttp, "https://api.example/mcp"))
    }

    fn with(spec: ServerSpec) -> H {
        H { l: Lifecycle::new(spec.validated().unwrap(), Settings::default(), 1), now: base_instant() }
    }

    fn ev(&mut self, e: Event) -> Transition {
        self.l.handle(self.now, e)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Moves the clock to the next deadline and fires it.
    fn fire(&mut self) -> Transition {
        let at = self.l.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.ev(Event::Timeout)
    }

    /// Starts and returns the attempt's generation.
    fn start(&mut self) -> Generation {
        let t = self.ev(Event::StartRequested);
        connect_gen(&t).expect("a Connect effect")
    }

    /// Starts and connects; returns the session's generation.
    fn up(&mut self) -> Generation {
        let generation = self.start();
        let _ = self.ev(Event::ConnectSucceeded { generation });
        generation
    }

    fn fail(&mut self, generation: Generation, failure: Failure) -> Transition {
        self.ev(Event::ConnectFailed { generation, failure })
    }
}

fn connect_gen(t: &Transition) -> Option<Generation> {
    t.effects.iter().find_map(|e| match e {
        Effect::Connect { generation, .. } => Some(*generation),
        Effect::CancelConnect { .. }
        | Effect::CloseSession { .. }
        | Effect::Ping { .. }
        | Effect::ListTools { .. }
        | Effect::CallAuthHook(_)
        | Effect::Publish(_)
        | Effect::Reply(_) => None,
    })
}

fn reasons(t: &Transition) -> Vec<Reason> {
    published(t).into_iter().filter_map(|e| e.reason).collect()
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

fn replies(t: &Transition) -> Vec<Reply> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply(r) => Some(r.clone()),
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

/// A definition change, validated.
fn changed(spec: ServerSpec) -> Event {
    Event::SpecChanged(Box::new(spec.validated().expect("a valid definition")))
}

fn action(t: &Transition) -> Option<ChangeAction> {
    replies(t).into_iter().find_map(|r| match r {
        Reply::Updated(SpecChange { action, .. }) => Some(action),
        Reply::Started(_) | Reply::Stopped | Reply::HealthChecked { .. } => None,
    })
}

fn has(t: &Transition, effect: &Effect) -> bool {
    t.effects.contains(effect)
}

fn transient() -> Failure {
    Failure::transient("connection refused")
}

// ----- §3 Start ----------------------------------------------------------------------

#[test]
fn s3_1_start_when_running_is_refused_and_nothing_changes() {
    let mut h = H::stdio();
    h.up();
    let before = h.l.last_attempt();
    h.advance(S(5));
    let t = h.ev(Event::StartRequested);
    assert_eq!((t.from, t.to), (State::Running, State::Running));
    assert_eq!(replies(&t), [Reply::Started(Err(StartError::AlreadyRunning { name: "fs".into() }))]);
    assert_eq!(t.effects.len(), 1, "only the refusal");
    assert_eq!(h.l.last_attempt(), before, "last_attempt is not updated");
    let err = StartError::AlreadyRunning { name: "fs".into() };
    assert_eq!(err.to_string(), "service fs is already running");
}

#[test]
fn s3_2_start_while_starting_joins_the_attempt_in_flight() {
    let mut h = H::remote();
    let generation = h.start();
    let t = h.ev(Event::StartRequested);
    assert!(t.is_noop(), "no second connection: {t:?}");
    let t = h.ev(Event::ConnectSucceeded { generation });
    // Both callers are answered by the one outcome.
    assert_eq!(replies(&t), [Reply::Started(Ok(()))]);
}

#[test]
fn s3_3_start_records_the_attempt_goes_starting_and_connects_with_the_timeout() {
    let mut h = H::remote();
    let t = h.ev(Event::StartRequested);
    assert_eq!((t.from, t.to), (State::Unknown, State::Starting));
    assert_eq!(h.l.health(), Health::Unknown);
    assert_eq!(h.l.last_attempt(), Some(h.now));
    assert_eq!(reasons(&t), [Reason::Starting]);
    assert!(matches!(t.effects.last(), Some(Effect::Connect { timeout, .. }) if *timeout == S(30)));
    let mut h = H::stdio();
    let t = h.ev(Event::StartRequested);
    assert!(matches!(t.effects.last(), Some(Effect::Connect { timeout, .. }) if *timeout == S(10)));
}

#[test]
fn s3_4_success_resets_failures_and_retry_and_keeps_last_attempt() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    assert_eq!(h.l.consecutive_failures(), 1);
    let _ = h.fire(); // the retry
    let generation = h.l.attempt().unwrap();
    let attempt_at = h.l.last_attempt();
    h.advance(S(1));
    let t = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(t.to, State::Connected);
    assert_eq!(h.l.health(), Health::Healthy);
    assert_eq!(h.l.consecutive_failures(), 0);
    assert_eq!(h.l.next_retry_after(), None);
    assert_eq!(h.l.last_attempt(), attempt_at);
    assert_eq!(reasons(&t), [Reason::Started, Reason::RecoverySucceeded]);

    let mut h = H::stdio();
    let generation = h.start();
    assert_eq!(h.ev(Event::ConnectSucceeded { generation }).to, State::Running);
}

#[test]
fn s3_5_a_401_goes_auth_required_calls_the_hook_first_and_clears_the_counters() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    let _ = h.fire();
    let generation = h.l.attempt().unwrap();
    let challenge =
        Challenge::parse(r#"Bearer resource_metadata="https://api.example/.well-known/oauth-protected-resource""#);
    let t = h.fail(generation, Failure::needs_credentials(challenge.clone(), "HTTP 401 Unauthorized"));
    assert_eq!(t.to, State::AuthRequired);
    assert_eq!(h.l.health(), Health::Unknown);
    let hook = t.effects.iter().position(|e| *e == Effect::CallAuthHook(challenge.clone())).expect("hook");
    let publish = t
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Publish(ev) if ev.state == State::AuthRequired))
        .expect("publish");
    assert!(hook < publish, "the hook runs before the state change is published");
    assert_eq!(reasons(&t), [Reason::AuthRequired, Reason::RecoveryAwaitingAuth]);
    assert_eq!(h.l.consecutive_failures(), 0);
    assert_eq!(h.l.next_retry_after(), None);
    assert_eq!(h.l.poll_timeout(), None, "a 401 is never retried automatically");
    assert_eq!(h.l.auth_challenge(), Some(&challenge), "kept for status");
    let _ = h.ev(Event::StopRequested);
    assert_eq!(h.l.auth_challenge(), None);
}

#[test]
fn s3_6_a_transient_failure_counts_and_schedules_a_retry() {
    let mut h = H::remote();
    let generation = h.start();
    let t = h.fail(generation, transient());
    assert_eq!(t.to, State::Failed);
    assert_eq!(h.l.health(), Health::Unhealthy);
    assert_eq!(h.l.consecutive_failures(), 1);
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(30)));
    assert_eq!(h.l.last_error(), Some("connection refused"));
    let ev = &published(&t)[0];
    assert_eq!((ev.reason, ev.error.as_deref()), (Some(Reason::Failed), Some("connection refused")));
}

#[test]
fn s3_6_a_remote_server_is_unreachable_at_the_threshold() {
    let mut h = H::remote();
    let mut generation = h.start();
    for n in 1..=3u32 {
        let t = h.fail(generation, transient());
        if n < 3 {
            assert_eq!(t.to, State::Failed);
            let _ = h.fire();
            generation = h.l.attempt().unwrap();
        } else {
            assert_eq!(t.to, State::Unreachable);
            assert_eq!(h.l.health(), Health::Unknown);
            let text = "server unreachable after 3 consecutive failures: connection refused";
            assert_eq!(h.l.last_error(), Some(text));
            assert_eq!(published(&t)[0].error.as_deref(), Some(text));
            assert!(replies(&t).is_empty(), "an automatic retry has no caller to answer");
        }
    }
    assert!(h.l.is_unreachable());
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(120)), "unreachable servers are still retried");
    // A caller who asked for the fourth attempt hears the unreachable error.
    let generation = h.start();
    let t = h.fail(generation, transient());
    let text = "server unreachable after 4 consecutive failures: connection refused";
    assert!(matches!(&replies(&t)[..], [Reply::Started(Err(e))] if e.to_string() == text), "{t:?}");
}

#[test]
fn s3_6_stdio_failures_are_retried_with_backoff_and_never_unreachable() {
    let mut h = H::stdio();
    let mut generation = h.start();
    for n in 1..=8u32 {
        let t = h.fail(generation, Failure::transient("process exited during initialize: exit status: 1"));
        assert_eq!(t.to, State::Failed, "failure {n}");
        assert_eq!(h.l.consecutive_failures(), n);
        assert_eq!(h.l.next_retry_after(), Some(h.now + Settings::default().backoff.base(n)));
        let t = h.fire();
        assert_eq!(t.to, State::Starting);
        generation = connect_gen(&t).unwrap();
    }
}

#[test]
fn s3_6_retries_are_due_at_next_retry_after_and_run_as_restarts() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    let due = h.l.next_retry_after().unwrap();
    h.now = due - MS(1);
    assert!(h.ev(Event::Timeout).is_noop(), "not before the deadline");
    h.now = due;
    let t = h.ev(Event::Timeout);
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting]);
    assert!(connect_gen(&t).is_some());
}

#[test]
fn s3_7_a_permanent_failure_fails_without_counting_or_retry() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    let _ = h.fire();
    let generation = h.l.attempt().unwrap();
    let t = h.fail(generation, Failure::permanent("HTTP 404 Not Found"));
    assert_eq!(t.to, State::Failed);
    assert_eq!(h.l.health(), Health::Unhealthy);
    assert_eq!(h.l.consecutive_failures(), 1, "not counted");
    assert_eq!(h.l.next_retry_after(), None, "no stale retry survives");
    assert_eq!(h.l.poll_timeout(), None);
    assert_eq!(h.l.last_failure(), Some(FailureKind::Permanent));
    let err = StartError::Failed(Failure::permanent("HTTP 404 Not Found"));
    assert_eq!(err.to_string(), "failed to start MCP server: HTTP 404 Not Found");
}

#[test]
fn s3_7_a_permanent_failure_is_retried_after_a_definition_change_or_an_explicit_start() {
    let mut h = H::stdio();
    let generation = h.start();
    let _ = h.fail(generation, Failure::permanent("command not found: mcp-fs"));
    let t = h.ev(Event::StartRequested);
    assert_eq!(t.to, State::Starting);
    let generation = connect_gen(&t).unwrap();
    let _ = h.fail(generation, Failure::permanent("command not found: mcp-fs"));
    let mut spec = h.l.spec().clone();
    spec.command = "/usr/bin/mcp-fs".into();
    let t = h.ev(changed(spec));
    assert_eq!(t.to, State::Starting);
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting]);
}

// ----- §4 Failure classes ------------------------------------------------------------

#[test]
fn s4_an_attempt_roster_cancels_is_never_a_failure() {
    // A stop cancels the attempt; its late result is stale and changes nothing.
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.ev(Event::StopRequested);
    assert!(h.fail(generation, Failure::cancelled("cancelled")).is_noop());
    assert_eq!(h.l.consecutive_failures(), 0);
    assert_eq!(h.l.state(), State::Disconnected);
}

#[test]
fn s4_a_cancellation_roster_did_not_ask_for_is_retried_like_a_transient_failure() {
    // During an automatic retry: the recovery failed, and it is retried.
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    let generation = connect_gen(&h.fire()).unwrap();
    let t = h.fail(generation, Failure::cancelled("the transport was cancelled"));
    assert_eq!(t.to, State::Failed);
    assert_eq!(reasons(&t), [Reason::Failed, Reason::RecoveryFailed]);
    assert_eq!(h.l.consecutive_failures(), 2);
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(60)));
    assert_eq!(h.l.last_failure(), Some(FailureKind::Transient));
    assert_eq!(h.l.last_error(), Some("the transport was cancelled"));
}

#[test]
fn s4_retry_after_is_a_floor_for_the_next_retry() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, Failure::transient_after("HTTP 503", S(90)));
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(90)));
    let _ = h.fire();
    let generation = h.l.attempt().unwrap();
    let _ = h.fail(generation, Failure::transient_after("HTTP 503", S(5)));
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(60)), "a smaller Retry-After does not shorten the backoff");
}

#[test]
fn s4_retry_after_is_honoured_above_the_backoff_cap_up_to_24_hours() {
    let mut h = H::remote();
    let generation = h.start();
    let just_under = S(24 * 3600 - 1);
    let _ = h.fail(generation, Failure::transient_after("HTTP 503", just_under));
    assert_eq!(h.l.next_retry_after(), Some(h.now + just_under), "above max_backoff (30 min), below the cap");
    let generation = connect_gen(&h.fire()).unwrap();
    let _ = h.fail(generation, Failure::transient_after("HTTP 503", S(25 * 3600)));
    assert_eq!(h.l.next_retry_after(), Some(h.now + MAX_RETRY_AFTER), "cut to 24 h");
    assert_eq!(MAX_RETRY_AFTER, S(24 * 3600));
    let generation = connect_gen(&h.fire()).unwrap();
    let _ = h.fail(generation, Failure::transient_after("HTTP 503", S(24 * 3600)));
    assert_eq!(h.l.next_retry_after(), Some(h.now + S(24 * 3600)), "exactly the cap is honoured");
}

#[test]
fn s4_a_401_from_a_stdio_server_is_permanent() {
    let mut h = H::stdio();
    let generation = h.start();
    let t = h.fail(generation, Failure::needs_credentials(Challenge::default(), "401"));
    assert_eq!(t.to, State::Failed);
    assert!(!t.effects.iter().any(|e| matches!(e, Effect::CallAuthHook(_))));
    assert_eq!(h.l.last_failure(), Some(FailureKind::Permanent));
}

// ----- §5 Backoff --------------------------------------------------------------------

#[test]
fn s5_next_retry_after_minus_failure_time_is_the_backoff() {
    let mut h = H::stdio();
    let mut generation = h.start();
    for expected in [30, 60, 120, 240, 480, 960, 1800, 1800] {
        h.advance(S(3)); // the attempt takes a while; the delay counts from the failure
        let _ = h.fail(generation, transient());
        assert_eq!(h.l.next_retry_after().unwrap() - h.now, S(expected));
        generation = connect_gen(&h.fire()).unwrap();
    }
}

#[test]
fn s5_jitter_is_deterministic_for_a_seed() {
    let settings = Settings { backoff: Backoff::default().with_jitter(0.5).unwrap(), ..Settings::default() };
    let run = |seed| {
        let t0 = base_instant();
        let mut l = Lifecycle::new(ServerSpec::stdio("s", "x").validated().unwrap(), settings, seed);
        let t = l.handle(t0, Event::StartRequested);
        let generation = connect_gen(&t).unwrap();
        let _ = l.handle(t0, Event::ConnectFailed { generation, failure: transient() });
        l.next_retry_after().unwrap() - t0
    };
    assert_eq!(run(9), run(9));
    let delays: Vec<Duration> = (0..8).map(run).collect();
    for d in &delays {
        assert!(*d <= S(30) && *d >= S(15), "{d:?}");
    }
    assert!(delays.iter().any(|d| *d != delays[0]), "seeds draw different jitter: {delays:?}");
    assert!(delays.iter().all(|d| *d < S(30)), "jitter only shortens: {delays:?}");
}

// ----- §6 Stop and restart -----------------------------------------------------------

#[test]
fn s6_stop_from_stopped_or_disconnected_does_nothing_and_publishes_nothing() {
    for mut h in [H::stdio(), H::remote()] {
        h.up();
        let t = h.ev(Event::StopRequested);
        let generation = h.l.closing().unwrap();
        assert!(has(&t, &Effect::CloseSession { generation }));
        let _ = h.ev(Event::SessionClosed { generation });
        let t = h.ev(Event::StopRequested);
        assert!(published(&t).is_empty());
        assert_eq!(t.from, t.to);
        assert_eq!(replies(&t), [Reply::Stopped]);
    }
}

#[test]
fn s6_stop_from_starting_cancels_the_attempt_and_wins() {
    let mut h = H::stdio();
    let generation = h.start();
    let t = h.ev(Event::StopRequested);
    assert_eq!(t.to, State::Stopped);
    assert!(has(&t, &Effect::CancelConnect { generation }));
    assert_eq!(reasons(&t), [Reason::Stopped]);
    assert_eq!(replies(&t), [Reply::Started(Err(StartError::Cancelled)), Reply::Stopped]);
    // The late success is closed, not leaked, and does not bring the server up.
    let t = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(t.to, State::Stopped);
    assert_eq!(t.effects, [Effect::CloseSession { generation }]);
    // A late failure changes nothing.
    assert!(h.ev(Event::ConnectFailed { generation, failure: transient() }).is_noop());
}

#[test]
fn s6_stop_from_running_goes_through_stopping_closes_and_publishes_stopped() {
    let mut h = H::remote();
    let generation = h.up();
    let t = h.ev(Event::StopRequested);
    assert_eq!(t.to, State::Stopping);
    assert_eq!(h.l.health(), Health::Unknown, "no stopping/healthy pair");
    assert!(has(&t, &Effect::CloseSession { generation }));
    assert!(replies(&t).is_empty(), "the stop is answered when the close is done");
    let t = h.ev(Event::SessionClosed { generation });
    assert_eq!(t.to, State::Disconnected);
    assert_eq!(h.l.health(), Health::Unknown);
    assert_eq!(h.l.last_error(), None);
    assert_eq!(reasons(&t), [Reason::Stopped]);
    assert_eq!(replies(&t), [Reply::Stopped]);
    assert!(!h.l.is_client_ready());
}

#[test]
fn s6_stop_from_failed_unreachable_auth_required_or_unknown_goes_straight_down() {
    let mut h = H::remote();
    let t = h.ev(Event::StopRequested);
    assert_eq!((t.from, t.to), (State::Unknown, State::Disconnected));
    assert_eq!(reasons(&t), [Reason::Stopped]);

    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, Failure::needs_credentials(Challenge::default(), "401"));
    let t = h.ev(Event::StopRequested);
    assert_eq!((t.from, t.to), (State::AuthRequired, State::Disconnected));
    assert!(!t.effects.iter().any(|e| matches!(e, Effect::CloseSession { .. })), "no session to close");
}

#[test]
fn s6_a_stop_by_request_clears_the_counters_and_is_never_undone_by_a_retry() {
    let mut h = H::remote();
    let mut generation = h.start();
    for _ in 0..2 {
        let _ = h.fail(generation, transient());
        generation = connect_gen(&h.fire()).unwrap();
    }
    let _ = h.fail(generation, transient());
    assert!(h.l.is_unreachable());
    let t = h.ev(Event::StopRequested);
    assert_eq!(t.to, State::Disconnected);
    assert_eq!(h.l.consecutive_failures(), 0);
    assert_eq!(h.l.next_retry_after(), None);
    assert_eq!(h.l.poll_timeout(), None, "nothing will restart it");
    h.advance(S(3600));
    assert!(h.ev(Event::Timeout).is_noop());
    // After a manual stop one failure is one failure, not the fourth.
    let generation = h.start();
    assert_eq!(h.fail(generation, transient()).to, State::Failed);
}

#[test]
fn s6_restart_waits_the_grace_period_only_when_it_stopped_something() {
    let mut h = H::stdio();
    let generation = h.up();
    let t = h.ev(Event::RestartRequested);
    assert_eq!(reasons(&t), [Reason::RecoveryStarted]);
    assert_eq!(t.to, State::Stopping);
    let t = h.ev(Event::SessionClosed { generation });
    assert_eq!(t.to, State::Stopped);
    assert_eq!(reasons(&t), [Reason::Stopped]);
    assert_eq!(h.l.poll_timeout(), Some(h.now + RESTART_GRACE_PERIOD));
    h.advance(MS(199));
    assert!(h.ev(Event::Timeout).is_noop());
    h.advance(MS(1));
    let t = h.ev(Event::Timeout);
    assert_eq!(t.to, State::Starting);
    let generation = connect_gen(&t).unwrap();
    let t = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(reasons(&t), [Reason::Started, Reason::RecoverySucceeded]);
    assert_eq!(replies(&t), [Reply::Started(Ok(()))]);

    // Nothing to stop: the start is immediate.
    let mut h = H::stdio();
    let generation = h.start();
    let _ = h.fail(generation, Failure::permanent("bad"));
    let t = h.ev(Event::RestartRequested);
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting]);
    assert!(connect_gen(&t).is_some());
}

#[test]
fn s6_restart_of_a_starting_server_cancels_the_attempt_then_waits_the_grace_period() {
    let mut h = H::remote();
    let generation = h.start();
    let t = h.ev(Event::RestartRequested);
    assert!(has(&t, &Effect::CancelConnect { generation }));
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Stopped]);
    assert_eq!(h.l.poll_timeout(), Some(h.now + RESTART_GRACE_PERIOD));
    let t = h.fire();
    assert_eq!(t.to, State::Starting);
}

#[test]
fn s6_restart_publishes_failed_or_awaiting_auth_outcomes() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, Failure::permanent("HTTP 400"));
    let t = h.ev(Event::RestartRequested);
    let generation = connect_gen(&t).unwrap();
    let t = h.fail(generation, transient());
    assert_eq!(reasons(&t), [Reason::Failed, Reason::RecoveryFailed]);
    let generation = connect_gen(&h.ev(Event::RestartRequested)).unwrap();
    let t = h.fail(generation, Failure::needs_credentials(Challenge::default(), "401"));
    assert_eq!(reasons(&t), [Reason::AuthRequired, Reason::RecoveryAwaitingAuth]);
}

#[test]
fn s6_a_stop_during_the_restart_grace_period_wins() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::RestartRequested);
    let _ = h.ev(Event::SessionClosed { generation });
    let t = h.ev(Event::StopRequested);
    assert!(published(&t).is_empty(), "already stopped");
    assert_eq!(replies(&t), [Reply::Started(Err(StartError::Cancelled)), Reply::Stopped]);
    assert_eq!(h.l.poll_timeout(), None);
}

#[test]
fn s6_a_stop_while_a_restart_is_closing_wins() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::RestartRequested);
    let t = h.ev(Event::StopRequested);
    assert_eq!(replies(&t), [Reply::Started(Err(StartError::Cancelled))]);
    let t = h.ev(Event::SessionClosed { generation });
    assert_eq!(t.to, State::Stopped);
    assert_eq!(h.l.poll_timeout(), None);
    assert_eq!(replies(&t), [Reply::Stopped]);
}

#[test]
fn s6_a_start_while_stopping_starts_after_the_close() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::StopRequested);
    let t = h.ev(Event::StartRequested);
    assert!(t.is_noop());
    let t = h.ev(Event::SessionClosed { generation });
    assert_eq!(replies(&t), [Reply::Stopped]);
    let t = h.fire();
    assert_eq!(reasons(&t), [Reason::Starting], "a plain start, not a recovery");
}

// ----- §7 Health ---------------------------------------------------------------------

#[test]
fn s7_a_successful_ping_makes_the_server_healthy_and_resets_the_gate() {
    let mut h = H::remote();
    let generation = h.up();
    let _ = h.ev(Event::HealthCheckRequested);
    let _ = h.ev(Event::PingFailed { generation, failure: Failure::transient("timeout") });
    assert_eq!(h.l.health(), Health::Unhealthy);
    let _ = h.ev(Event::HealthCheckRequested);
    let t = h.ev(Event::PingSucceeded { generation, latency: FAST });
    assert_eq!(h.l.health(), Health::Healthy);
    assert_eq!(published(&t).len(), 1, "the health change is published");
    assert_eq!(published(&t)[0].reason, None);
    assert_eq!(replies(&t), [Reply::HealthChecked { health: Health::Healthy, error: None }]);
    assert_eq!(h.l.missed_pings(), 0);
}

#[test]
fn s7_health_check_failed_is_published_once_per_unhealthy_episode() {
    let settings = Settings { unhealthy_threshold: NonZeroU32::new(100).unwrap(), ..Settings::default() };
    let mut h = H::stdio();
    h.l = Lifecycle::new(h.l.spec().clone().validated().unwrap(), settings, 1);
    let generation = h.up();
    let mut count = 0;
    let mut run = |h: &mut H, n: usize, fail: bool| {
        for _ in 0..n {
            let _ = h.ev(Event::HealthCheckRequested);
            let t = if fail {
                h.ev(Event::PingFailed { generation, failure: Failure::transient("timeout") })
            } else {
                h.ev(Event::PingSucceeded { generation, latency: FAST })
            };
            count += reasons(&t).iter().filter(|r| **r == Reason::HealthCheckFailed).count();
        }
    };
    run(&mut h, 10, true);
    run(&mut h, 1, false);
    run(&mut h, 5, true);
    assert_eq!(count, 2);
}

#[test]
fn s7_the_failed_ping_error_reads_mcp_ping_failed() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::HealthCheckRequested);
    let t = h.ev(Event::PingFailed { generation, failure: Failure::transient("request timed out") });
    let ev = &published(&t)[0];
    assert_eq!(ev.reason, Some(Reason::HealthCheckFailed));
    assert_eq!(ev.error.as_deref(), Some("MCP ping failed: request timed out"));
    assert_eq!(t.to, State::Running, "one missed ping is not a crash");
}

#[test]
fn s7_a_health_check_without_a_session_answers_client_not_available() {
    let mut h = H::stdio();
    let t = h.ev(Event::HealthCheckRequested);
    assert_eq!(replies(&t), [Reply::HealthChecked { health: Health::Unhealthy, error: Some(NO_CLIENT.into()) }]);
    assert!(published(&t).is_empty());
}

#[test]
fn s7_running_servers_are_probed_every_interval() {
    let mut h = H::remote();
    let generation = h.up();
    assert_eq!(h.l.poll_timeout(), Some(h.now + HEALTH_CHECK_INTERVAL.get()));
    for _ in 0..3 {
        let t = h.fire();
        assert_eq!(t.effects, [Effect::Ping { generation, timeout: PING_TIMEOUT.get() }]);
        assert_eq!(h.l.poll_timeout(), None, "one ping at a time");
        h.advance(MS(3));
        let _ = h.ev(Event::PingSucceeded { generation, latency: FAST });
        assert_eq!(h.l.poll_timeout(), Some(h.now + HEALTH_CHECK_INTERVAL.get()));
    }
}

#[test]
fn s7_unhealthy_threshold_missed_pings_count_as_a_crash() {
    let mut h = H::remote();
    let generation = h.up();
    for n in 1..=3 {
        let _ = h.fire();
        let t = h.ev(Event::PingFailed { generation, failure: Failure::transient("timeout") });
        if n < 3 {
            assert_eq!(t.to, State::Connected);
        } else {
            assert_eq!(t.to, State::Failed);
            assert!(has(&t, &Effect::CloseSession { generation }), "the dead session is closed");
            assert_eq!(h.l.crash_count(), 1);
            assert_eq!(h.l.next_retry_after(), Some(h.now + RESTART_GRACE_PERIOD));
        }
    }
    let _ = h.ev(Event::SessionClosed { generation });
    let t = h.fire();
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting]);
}

#[test]
fn s7_a_transport_that_dies_while_running_fails_the_server_at_once() {
    let mut h = H::stdio();
    let generation = h.up();
    let failure = Failure::transient("process exited with exit status: 3; stderr: panic at main.rs:1");
    let t = h.ev(Event::SessionLost { generation, failure });
    assert_eq!(t.to, State::Failed);
    assert_eq!(h.l.health(), Health::Unhealthy);
    assert_eq!(reasons(&t), [Reason::Failed]);
    assert!(published(&t)[0].error.as_deref().unwrap().contains("exit status: 3"));
    assert_eq!(h.l.consecutive_failures(), 0, "a crash is not a failed connection attempt");
}

#[test]
fn s7_the_first_crash_recovers_after_the_grace_period_later_ones_with_backoff() {
    let mut h = H::stdio();
    let mut generation = h.up();
    for (k, wait) in [(1, RESTART_GRACE_PERIOD), (2, S(30)), (3, S(60)), (4, S(120))] {
        h.advance(S(1));
        let _ = h.ev(Event::SessionLost { generation, failure: transient() });
        assert_eq!(h.l.crash_count(), k);
        assert_eq!(h.l.next_retry_after(), Some(h.now + wait), "crash {k}");
        let _ = h.ev(Event::SessionClosed { generation });
        let t = h.fire();
        generation = connect_gen(&t).unwrap();
        let _ = h.ev(Event::ConnectSucceeded { generation });
    }
}

#[test]
fn s7_staying_up_for_the_stable_period_clears_the_crash_count() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::SessionLost { generation, failure: transient() });
    let _ = h.ev(Event::SessionClosed { generation });
    let generation = connect_gen(&h.fire()).unwrap();
    let _ = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(h.l.crash_count(), 1);
    let deadline = h.now + STABLE_PERIOD;
    while h.now < deadline {
        let _ = h.fire();
        if h.l.crash_count() == 0 {
            break;
        }
        let _ = h.ev(Event::PingSucceeded { generation, latency: FAST });
    }
    assert_eq!(h.l.crash_count(), 0);
    assert_eq!(h.now, deadline, "cleared exactly at the end of the stable period");
    let _ = h.ev(Event::PingSucceeded { generation, latency: FAST });
    let _ = h.ev(Event::SessionLost { generation, failure: transient() });
    assert_eq!(h.l.next_retry_after(), Some(h.now + RESTART_GRACE_PERIOD), "treated as a first crash again");
}

#[test]
fn s7_the_gate_resets_on_every_successful_start() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::HealthCheckRequested);
    let t = h.ev(Event::PingFailed { generation, failure: transient() });
    assert_eq!(reasons(&t), [Reason::HealthCheckFailed]);
    let _ = h.ev(Event::RestartRequested);
    let _ = h.ev(Event::SessionClosed { generation });
    let generation = connect_gen(&h.fire()).unwrap();
    let _ = h.ev(Event::ConnectSucceeded { generation });
    let _ = h.ev(Event::HealthCheckRequested);
    let t = h.ev(Event::PingFailed { generation, failure: transient() });
    assert_eq!(reasons(&t), [Reason::HealthCheckFailed], "a new episode after a start");
}

#[test]
fn s7_a_failed_reconnect_after_a_crash_follows_the_start_rules() {
    let mut h = H::remote();
    let generation = h.up();
    let _ = h.ev(Event::SessionLost { generation, failure: transient() });
    let _ = h.ev(Event::SessionClosed { generation });
    let mut generation = connect_gen(&h.fire()).unwrap();
    for n in 1..=3 {
        let t = h.fail(generation, transient());
        assert_eq!(h.l.consecutive_failures(), n);
        assert_eq!(reasons(&t), [Reason::Failed, Reason::RecoveryFailed]);
        if n < 3 {
            generation = connect_gen(&h.fire()).unwrap();
        }
    }
    assert!(h.l.is_unreachable());
}

#[test]
fn s7_a_401_on_a_live_remote_session_goes_auth_required() {
    let mut h = H::remote();
    let generation = h.up();
    let _ = h.ev(Event::HealthCheckRequested);
    let failure = Failure::needs_credentials(Challenge::parse("Bearer"), "HTTP 401");
    let t = h.ev(Event::PingFailed { generation, failure });
    assert_eq!(t.to, State::AuthRequired);
    assert!(has(&t, &Effect::CloseSession { generation }));
    assert_eq!(t.effects[0], Effect::CallAuthHook(Challenge::parse("Bearer")), "the hook before anything is seen");
    assert_eq!(reasons(&t), [Reason::AuthRequired], "no unhealthy episode: the server wants credentials");
    assert_eq!(
        replies(&t),
        [Reply::HealthChecked { health: Health::Unhealthy, error: Some("MCP ping failed: HTTP 401".into()) }]
    );
    assert_eq!(h.l.poll_timeout(), None);
    // The same order when the session is lost with a 401.
    let mut h = H::remote();
    let generation = h.up();
    let failure = Failure::needs_credentials(Challenge::parse("Bearer"), "HTTP 401");
    let t = h.ev(Event::SessionLost { generation, failure });
    assert_eq!(t.effects[0], Effect::CallAuthHook(Challenge::parse("Bearer")));
    assert_eq!(t.to, State::AuthRequired);
}

// ----- roster: degraded health and missing tools -------------------------------------

/// Pings once, answered after `latency`.
fn ping(h: &mut H, generation: Generation, latency: Duration) -> Transition {
    let _ = h.ev(Event::HealthCheckRequested);
    h.ev(Event::PingSucceeded { generation, latency })
}

#[test]
fn degraded_a_ping_slower_than_degraded_after_degrades_and_a_fast_one_heals() {
    let mut h = H::stdio();
    let generation = h.up();
    let t = ping(&mut h, generation, DEGRADED_AFTER);
    assert_eq!(h.l.health(), Health::Healthy, "exactly degraded_after is not slower than it");
    assert!(published(&t).is_empty());

    let t = ping(&mut h, generation, DEGRADED_AFTER + MS(1_234));
    assert_eq!(h.l.health(), Health::Degraded);
    assert!(!h.l.is_healthy(), "degraded is not healthy");
    assert!(h.l.is_running(), "but still up");
    let text = "MCP ping took 6.234s, more than degraded_after (5s)";
    let ev = &published(&t)[..];
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, Some(Reason::HealthDegraded));
    assert_eq!((ev[0].previous_health, ev[0].health), (Health::Healthy, Health::Degraded));
    assert_eq!(ev[0].error.as_deref(), Some(text));
    assert_eq!(replies(&t), [Reply::HealthChecked { health: Health::Degraded, error: Some(text.into()) }]);
    assert_eq!(h.l.ping_latency(), Some(DEGRADED_AFTER + MS(1_234)));
    assert_eq!(h.l.last_error(), None, "slow is not an error");

    let t = ping(&mut h, generation, S(7));
    assert!(published(&t).is_empty(), "once per episode");
    assert_eq!(
        replies(&t)[0],
        Reply::HealthChecked {
            health: Health::Degraded,
            error: Some("MCP ping took 7s, more than degraded_after (5s)".into())
        }
    );

    let t = ping(&mut h, generation, FAST);
    assert_eq!(h.l.health(), Health::Healthy);
    let ev = &published(&t)[..];
    assert_eq!(ev.len(), 1, "healing is published, as a plain health change");
    assert_eq!((ev[0].reason, ev[0].previous_health, ev[0].health), (None, Health::Degraded, Health::Healthy));
    assert_eq!(replies(&t), [Reply::HealthChecked { health: Health::Healthy, error: None }]);

    let t = ping(&mut h, generation, S(6));
    assert_eq!(reasons(&t), [Reason::HealthDegraded], "a new episode is announced again");
}

#[test]
fn degraded_a_failed_ping_wins_and_a_slow_answer_after_it_degrades_again() {
    let mut h = H::remote();
    let generation = h.up();
    let _ = ping(&mut h, generation, S(6));
    let _ = h.ev(Event::HealthCheckRequested);
    let t = h.ev(Event::PingFailed { generation, failure: Failure::transient("timed out") });
    assert_eq!(h.l.health(), Health::Unhealthy);
    assert_eq!(reasons(&t), [Reason::HealthCheckFailed]);
    let t = ping(&mut h, generation, S(6));
    assert_eq!(h.l.health(), Health::Degraded);
    assert_eq!(reasons(&t), [Reason::HealthDegraded]);
    assert_eq!(h.l.missed_pings(), 0);
    assert_eq!(h.l.last_error(), None);
}

#[test]
fn degraded_ends_with_the_session_and_a_new_session_starts_healthy() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = ping(&mut h, generation, S(6));
    let t = h.ev(Event::StopRequested);
    assert_eq!(h.l.health(), Health::Unknown);
    assert_eq!(published(&t)[0].previous_health, Health::Degraded);
    let _ = h.ev(Event::SessionClosed { generation });
    let _ = h.up();
    assert_eq!(h.l.health(), Health::Healthy);
    assert_eq!(h.l.ping_latency(), None, "no ping answered yet");
}

#[test]
fn degraded_after_is_the_settings_own() {
    let settings = Settings { degraded_after: MS(300), ..Settings::default() };
    let mut h = H::stdio();
    h.l = Lifecycle::new(h.l.spec().clone().validated().unwrap(), settings, 1);
    let generation = h.up();
    let _ = ping(&mut h, generation, MS(301));
    assert_eq!(h.l.health(), Health::Degraded);
    let _ = ping(&mut h, generation, MS(300));
    assert_eq!(h.l.health(), Health::Healthy);
}

#[test]
fn tools_are_listed_once_after_every_start_within_the_ping_timeout() {
    let mut h = H::stdio();
    let generation = h.start();
    let t = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(t.effects.last(), Some(&Effect::ListTools { generation, timeout: PING_TIMEOUT.get() }));
    assert_eq!(t.effects.iter().filter(|e| matches!(e, Effect::ListTools { .. })).count(), 1);
    // The listing comes after the start is published and answered.
    let first_list = t.effects.iter().position(|e| matches!(e, Effect::ListTools { .. }));
    let last_publish = t.effects.iter().rposition(|e| matches!(e, Effect::Publish(_) | Effect::Reply(_)));
    assert!(first_list > last_publish);
    let t = h.fire();
    assert!(!t.effects.iter().any(|e| matches!(e, Effect::ListTools { .. })), "a ping does not list");
}

#[test]
fn tools_missing_is_a_warning_published_once_until_tools_are_found() {
    let mut h = H::remote();
    let generation = h.up();
    let listed = |count| Event::ToolsListed { generation, listing: ToolListing::Listed { count } };
    let t = h.ev(listed(0));
    let warning = "offers tools but listed none: it may have started only half-way";
    assert_eq!(h.l.warning(), Some(warning));
    let ev = &published(&t)[..];
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, Some(Reason::ToolsMissing));
    assert_eq!(ev[0].error.as_deref(), Some(warning));
    assert_eq!((ev[0].state, ev[0].health), (State::Connected, Health::Healthy), "state and health stay");
    assert_eq!(t.to, State::Connected);
    assert!(h.ev(listed(0)).effects.is_empty(), "once");

    let t = h.ev(listed(4));
    assert_eq!(h.l.warning(), None);
    assert!(t.effects.is_empty(), "the warning clears quietly");

    let t = h.ev(Event::ToolsListed { generation, listing: ToolListing::Failed(Failure::transient("timed out")) });
    assert_eq!(h.l.warning(), Some("offers tools but could not list them: timed out"));
    assert_eq!(reasons(&t), [Reason::ToolsMissing]);
    let _ = h.ev(Event::ToolsListed { generation, listing: ToolListing::NotOffered });
    assert_eq!(h.l.warning(), None, "a server that offers no tools is not missing any");
}

#[test]
fn tools_missing_belongs_to_its_session() {
    let mut h = H::stdio();
    let generation = h.up();
    let t = h
        .ev(Event::ToolsListed { generation: Generation(generation.0 + 1), listing: ToolListing::Listed { count: 0 } });
    assert!(t.is_noop(), "another generation changes nothing");
    let _ = h.ev(Event::ToolsListed { generation, listing: ToolListing::Listed { count: 0 } });
    assert!(h.l.warning().is_some());
    let _ = h.ev(Event::SessionLost { generation, failure: Failure::transient("exited") });
    assert_eq!(h.l.warning(), None, "no session, no warning");
    let t = h.ev(Event::ToolsListed { generation, listing: ToolListing::Listed { count: 0 } });
    assert!(!t.effects.iter().any(|e| matches!(e, Effect::Publish(_))), "a listing after the loss is stale");
    assert_eq!(h.l.warning(), None);
}

#[test]
fn events_carry_the_failure_count_and_when_the_retry_is_due() {
    let mut h = H::remote();
    let generation = h.start();
    let t = h.fail(generation, transient());
    let failed = published(&t).into_iter().find(|e| e.reason == Some(Reason::Failed)).unwrap();
    assert_eq!((failed.failures, failed.retry_in_ms), (1, Some(30_000)));
    h.advance(S(10));
    let t = h.fire();
    let starting = published(&t).into_iter().find(|e| e.reason == Some(Reason::Starting)).unwrap();
    assert_eq!((starting.failures, starting.retry_in_ms), (1, None), "the retry is under way");
    let generation = connect_gen(&t).unwrap();
    let t = h.fail(generation, transient());
    let failed = published(&t).into_iter().find(|e| e.reason == Some(Reason::Failed)).unwrap();
    assert_eq!((failed.failures, failed.retry_in_ms), (2, Some(60_000)));
    let t = h.ev(Event::StopRequested);
    let stopped = published(&t).pop().unwrap();
    assert_eq!((stopped.failures, stopped.retry_in_ms), (0, None), "a stop clears both");

    let mut h = H::stdio();
    let generation = h.up();
    let t = h.ev(Event::SessionLost { generation, failure: transient() });
    let crashed = published(&t).pop().unwrap();
    assert_eq!((crashed.failures, crashed.retry_in_ms), (0, Some(200)), "a crash recovers after the grace period");
}

proptest::proptest! {
    /// The degraded rule as a number: degraded exactly when the answer took longer
    /// than `degraded_after`, for any setting and any latency.
    #[test]
    fn degraded_iff_slower_than_degraded_after(limit_us in 1u64..600_000_000, latency_us in 0u64..700_000_000) {
        let settings = Settings {
            ping_timeout: NonZeroDuration::from_secs(600),
            degraded_after: Duration::from_micros(limit_us),
            ..Settings::default()
        };
        let mut h = H::stdio();
        h.l = Lifecycle::new(h.l.spec().clone().validated().unwrap(), settings, 1);
        let generation = h.up();
        let t = ping(&mut h, generation, Duration::from_micros(latency_us));
        let slow = latency_us > limit_us;
        proptest::prop_assert_eq!(h.l.health(), if slow { Health::Degraded } else { Health::Healthy });
        proptest::prop_assert_eq!(reasons(&t), if slow { vec![Reason::HealthDegraded] } else { vec![] });
    }
}

// ----- §8 Configuration changes ------------------------------------------------------

#[test]
fn s8_a_change_that_needs_a_restart_restarts_a_running_server() {
    let mut h = H::stdio();
    let generation = h.up();
    let mut spec = h.l.spec().clone();
    spec.args = vec!["--verbose".into()];
    let t = h.ev(changed(spec.clone()));
    assert_eq!(h.l.spec(), &spec, "the definition is swapped");
    assert_eq!(reasons(&t), [Reason::RecoveryStarted]);
    assert!(has(&t, &Effect::CloseSession { generation }));
    let _ = h.ev(Event::SessionClosed { generation });
    let t = h.fire();
    assert_eq!(t.to, State::Starting);
}

#[test]
fn s8_a_metadata_change_is_applied_in_place() {
    let mut h = H::stdio();
    h.up();
    let mut spec = h.l.spec().clone();
    spec.description = "the file system".into();
    spec.auto_start = false;
    let t = h.ev(changed(spec));
    assert_eq!(action(&t), Some(ChangeAction::Metadata));
    assert_eq!(t.effects.len(), 1, "only the answer: {t:?}");
    assert_eq!(h.l.spec().description, "the file system");
    assert!(h.l.is_running());
}

#[test]
fn s8_a_server_down_by_request_stays_down_unless_auto_start_is_switched_on() {
    let mut h = H::stdio();
    let _ = h.ev(Event::StopRequested);
    let mut spec = h.l.spec().clone();
    spec.args = vec!["x".into()];
    let t = h.ev(changed(spec.clone()));
    assert_eq!(action(&t), Some(ChangeAction::Update));
    assert_eq!((t.from, t.to, t.effects.len()), (State::Stopped, State::Stopped, 1));
    spec.auto_start = true;
    let t = h.ev(changed(spec));
    assert_eq!(action(&t), Some(ChangeAction::Start));
    assert_eq!(t.to, State::Starting);
    assert_eq!(reasons(&t), [Reason::Starting]);
}

#[test]
fn s8_a_changed_type_renames_the_down_state() {
    let mut h = H::stdio();
    let _ = h.ev(Event::StopRequested);
    let spec = ServerSpec::remote("fs", ServerType::Sse, "http://127.0.0.1:9/sse");
    let t = h.ev(changed(spec));
    assert_eq!((t.from, t.to), (State::Stopped, State::Disconnected));
}

#[test]
fn s8_a_failed_or_unreachable_server_is_retried_at_once_on_a_change() {
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    let mut spec = h.l.spec().clone();
    spec.url = "https://api2.example/mcp".into();
    let t = h.ev(changed(spec));
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting]);
}

#[test]
fn s8_a_change_during_a_restart_is_used_by_the_coming_start() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::RestartRequested);
    let mut spec = h.l.spec().clone();
    spec.command = "other".into();
    assert!(published(&h.ev(changed(spec))).is_empty());
    let _ = h.ev(Event::SessionClosed { generation });
    let t = h.fire();
    assert!(connect_gen(&t).is_some());
    assert_eq!(h.l.spec().command, "other");
}

// ----- generations -------------------------------------------------------------------

#[test]
fn stale_reports_change_nothing() {
    let mut h = H::stdio();
    let old = h.up();
    let _ = h.ev(Event::SessionLost { generation: old, failure: transient() });
    let _ = h.ev(Event::SessionClosed { generation: old });
    let new = connect_gen(&h.fire()).unwrap();
    let _ = h.ev(Event::ConnectSucceeded { generation: new });
    let before = h.l.clone();
    for e in [
        Event::SessionLost { generation: old, failure: transient() },
        Event::PingFailed { generation: old, failure: transient() },
        Event::PingSucceeded { generation: old, latency: FAST },
        Event::SessionClosed { generation: old },
        Event::ConnectFailed { generation: old, failure: transient() },
        Event::ConnectSucceeded { generation: new },
    ] {
        assert!(h.ev(e.clone()).is_noop(), "{e:?}");
    }
    assert_eq!(h.l.state(), before.state());
    assert_eq!(h.l.session(), Some(new));
}

#[test]
fn an_unrequested_ping_result_is_ignored() {
    let mut h = H::stdio();
    let generation = h.up();
    assert!(h.ev(Event::PingFailed { generation, failure: transient() }).is_noop());
}

#[test]
fn every_state_and_health_change_is_published_exactly_once() {
    let mut h = H::remote();
    let mut seen: Vec<LifecycleEvent> = Vec::new();
    let mut track = |t: &Transition, l: &Lifecycle| {
        let evs = published(t);
        for e in &evs {
            assert!(
                e.reason.is_some() || (e.previous_state, e.previous_health) != (e.state, e.health),
                "a plain event must change something: {e:?}"
            );
        }
        // The events of a transition lead from where it started to where it ended.
        let first = evs.first().map(|e| e.previous_state).unwrap_or(t.from);
        let last = evs.last().map(|e| (e.state, e.health)).unwrap_or((t.to, l.health()));
        assert_eq!(first, t.from, "{t:?}");
        assert_eq!(last, (l.state(), l.health()), "{t:?}");
        seen.extend(evs);
    };
    let generation = h.start();
    track(&h.fail(generation, transient()), &h.l);
    let t = h.fire();
    track(&t, &h.l);
    let generation = connect_gen(&t).unwrap();
    track(&h.ev(Event::ConnectSucceeded { generation }), &h.l);
    let _ = h.ev(Event::HealthCheckRequested);
    track(&h.ev(Event::PingFailed { generation, failure: transient() }), &h.l);
    let _ = h.ev(Event::HealthCheckRequested);
    track(&h.ev(Event::PingSucceeded { generation, latency: FAST }), &h.l);
    track(&h.ev(Event::StopRequested), &h.l);
    track(&h.ev(Event::SessionClosed { generation }), &h.l);
    for pair in seen.windows(2) {
        assert_eq!((pair[0].state, pair[0].health), (pair[1].previous_state, pair[1].previous_health), "{pair:?}");
    }
    let kinds: Vec<(State, Health)> = seen.iter().map(|e| (e.state, e.health)).collect();
    assert_eq!(
        kinds,
        [
            (State::Failed, Health::Unhealthy),
            (State::Failed, Health::Unhealthy),
            (State::Starting, Health::Unknown),
            (State::Connected, Health::Healthy),
            (State::Connected, Health::Healthy),
            (State::Connected, Health::Unhealthy),
            (State::Connected, Health::Healthy),
            (State::Stopping, Health::Unknown),
            (State::Disconnected, Health::Unknown),
        ],
        "one event per change, and one per reason"
    );
}

// ----- one process at a time (a lost session is closed before anything starts) ------

/// Up, then lost: returns the old session's generation.
fn lose(h: &mut H) -> Generation {
    let generation = h.up();
    let _ = h.ev(Event::SessionLost { generation, failure: transient() });
    generation
}

#[test]
fn recovery_waits_for_the_lost_sessions_close() {
    let mut h = H::stdio();
    let old = lose(&mut h);
    assert_eq!(h.l.closing(), Some(old), "the old session is being closed");
    assert_eq!(h.l.next_retry_after(), Some(h.now + RESTART_GRACE_PERIOD), "when the recovery is due");
    assert_eq!(h.l.poll_timeout(), None, "but no timer while the close runs");
    // The close of a hung server takes seconds: nothing starts meanwhile.
    h.advance(S(7));
    assert!(h.ev(Event::Timeout).is_noop());
    let t = h.ev(Event::SessionClosed { generation: old });
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Starting], "due long ago: it starts at once");
    assert!(connect_gen(&t).is_some());
}

#[test]
fn a_close_that_ends_before_the_recovery_is_due_leaves_the_timer_to_it() {
    let mut h = H::stdio();
    let old = lose(&mut h);
    let due = h.l.next_retry_after().unwrap();
    let t = h.ev(Event::SessionClosed { generation: old });
    assert!(t.is_noop());
    assert_eq!(h.l.poll_timeout(), Some(due));
    assert_eq!(h.l.closing(), None);
}

#[test]
fn a_start_or_restart_while_a_lost_session_closes_waits_for_it() {
    for restart in [false, true] {
        let mut h = H::stdio();
        let old = lose(&mut h);
        let t = h.ev(if restart { Event::RestartRequested } else { Event::StartRequested });
        assert!(connect_gen(&t).is_none(), "no second process while the first is alive: {t:?}");
        assert_eq!(t.to, State::Stopping, "it is being stopped");
        assert!(replies(&t).is_empty());
        h.advance(S(1));
        let t = h.ev(Event::SessionClosed { generation: old });
        assert_eq!(t.to, State::Stopped);
        assert_eq!(h.l.poll_timeout(), Some(h.now + RESTART_GRACE_PERIOD), "then the grace, as in any restart");
        let generation = connect_gen(&h.fire()).expect("the start follows the close");
        let t = h.ev(Event::ConnectSucceeded { generation });
        assert_eq!(replies(&t), [Reply::Started(Ok(()))]);
        let expected: &[Reason] =
            if restart { &[Reason::Started, Reason::RecoverySucceeded] } else { &[Reason::Started] };
        assert_eq!(reasons(&t), expected);
    }
}

#[test]
fn a_stop_while_a_lost_session_closes_is_answered_once_it_is_gone() {
    let mut h = H::stdio();
    let old = lose(&mut h);
    let t = h.ev(Event::StopRequested);
    assert_eq!((t.from, t.to), (State::Failed, State::Stopping));
    assert!(!has(&t, &Effect::CloseSession { generation: old }), "the close is already running");
    assert!(replies(&t).is_empty(), "not answered while the process may live");
    let t = h.ev(Event::SessionClosed { generation: old });
    assert_eq!(t.to, State::Stopped);
    assert_eq!(replies(&t), [Reply::Stopped]);
    assert_eq!(h.l.poll_timeout(), None, "a stopped server is not recovered");
    assert_eq!(h.l.crash_count(), 0);
}

#[test]
fn a_definition_change_while_a_lost_session_closes_waits_for_it_too() {
    let mut h = H::stdio();
    let old = lose(&mut h);
    let mut spec = h.l.spec().clone();
    spec.args = vec!["--v2".into()];
    let t = h.ev(changed(spec));
    assert_eq!(action(&t), Some(ChangeAction::Restart));
    assert!(connect_gen(&t).is_none());
    h.advance(S(1));
    let _ = h.ev(Event::SessionClosed { generation: old });
    assert!(connect_gen(&h.fire()).is_some());
    assert_eq!(h.l.spec().args, ["--v2"]);

    // A remote server waiting for credentials whose lost session still closes, made
    // a stdio server: stopping, never a stdio server in auth_required.
    let mut h = H::remote();
    let generation = h.up();
    let failure = Failure::needs_credentials(Challenge::default(), "HTTP 401");
    let _ = h.ev(Event::SessionLost { generation, failure });
    let t = h.ev(changed(ServerSpec::stdio("api", "mcp-api")));
    assert_eq!((t.from, t.to), (State::AuthRequired, State::Stopping));
}

// ----- joining, small cases -------------------------------------------------------------

#[test]
fn a_restart_during_a_restart_joins_it() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::RestartRequested);
    let t = h.ev(Event::RestartRequested);
    assert!(t.is_noop(), "joined while closing: {t:?}");
    let _ = h.ev(Event::SessionClosed { generation });
    assert!(h.ev(Event::RestartRequested).is_noop(), "joined in the grace period");
    let t = h.fire();
    let generation = connect_gen(&t).unwrap();
    assert!(h.ev(Event::RestartRequested).is_noop(), "joined while its connect runs");
    let t = h.ev(Event::ConnectSucceeded { generation });
    assert_eq!(replies(&t), [Reply::Started(Ok(()))]);
    assert_eq!(h.l.restart_count(), 1);
}

#[test]
fn a_type_change_in_a_restarts_grace_then_a_stop_leaves_a_remote_server_disconnected() {
    let mut h = H::stdio();
    let generation = h.up();
    let _ = h.ev(Event::RestartRequested);
    let _ = h.ev(Event::SessionClosed { generation });
    let t = h.ev(changed(ServerSpec::remote("fs", ServerType::StreamableHttp, "http://127.0.0.1:9/mcp")));
    assert_eq!((t.from, t.to), (State::Stopped, State::Disconnected));
    assert_eq!(published(&t).len(), 1, "the rename is published");
    let t = h.ev(Event::StopRequested);
    assert_eq!(t.to, State::Disconnected);
    assert_eq!(h.l.state(), State::Disconnected);
}

#[test]
fn a_definition_change_replaces_a_connect_made_with_the_old_one() {
    let mut h = H::stdio();
    let generation = h.start();
    let mut spec = h.l.spec().clone();
    spec.args = vec!["--v2".into()];
    let t = h.ev(changed(spec.clone()));
    assert!(has(&t, &Effect::CancelConnect { generation }));
    assert_eq!(reasons(&t), [Reason::RecoveryStarted, Reason::Stopped]);
    let generation = connect_gen(&h.fire()).unwrap();
    // A second change during the restart's own connect: cancelled again, not announced again.
    spec.args = vec!["--v3".into()];
    let t = h.ev(changed(spec));
    assert!(has(&t, &Effect::CancelConnect { generation }));
    assert_eq!(reasons(&t), [Reason::Stopped]);
    assert_eq!(h.l.restart_count(), 1);
}

// ----- what a change does, by phase ----------------------------------------------------

#[test]
fn change_outcome_in_every_phase() {
    let args = |h: &H| {
        let mut s = h.l.spec().clone();
        s.args.push("--x".into());
        s
    };
    let described = |h: &H| {
        let mut s = h.l.spec().clone();
        s.description = "new".into();
        s
    };
    let auto_on = |h: &H| {
        let mut s = args(h);
        s.auto_start = true;
        s
    };
    let same = |h: &H| h.l.spec().clone();
    let timeout = |h: &H| {
        let mut s = h.l.spec().clone();
        s.timeout = Some(5);
        s
    };
    let check = |h: &mut H, make: &dyn Fn(&H) -> ServerSpec, expected: ChangeAction, what: &str| {
        let spec = make(h);
        assert_eq!(h.l.change_outcome(&spec).action, expected, "{what}: predicted");
        let t = h.ev(changed(spec));
        assert_eq!(action(&t), Some(expected), "{what}: applied");
    };
    let mut h = H::stdio();
    check(&mut h, &same, ChangeAction::Unchanged, "unknown, same");
    check(&mut h, &described, ChangeAction::Metadata, "unknown, description");
    check(&mut h, &args, ChangeAction::Update, "unknown, args");
    check(&mut h, &auto_on, ChangeAction::Start, "unknown, args and auto_start on");
    let mut h = H::stdio();
    let _ = h.start();
    check(&mut h, &args, ChangeAction::Restart, "starting");
    let mut h = H::stdio();
    h.up();
    check(&mut h, &args, ChangeAction::Restart, "running");
    let mut h = H::stdio();
    h.up();
    let _ = h.ev(Event::StopRequested);
    check(&mut h, &auto_on, ChangeAction::Update, "stopping: the stop wins");
    let mut h = H::stdio();
    h.up();
    let _ = h.ev(Event::RestartRequested);
    check(&mut h, &args, ChangeAction::Restart, "restarting: joined");
    let mut h = H::stdio();
    let generation = h.start();
    let _ = h.fail(generation, transient());
    check(&mut h, &args, ChangeAction::Restart, "failed");
    let mut h = H::remote();
    let generation = h.start();
    let _ = h.fail(generation, Failure::needs_credentials(Challenge::default(), "401"));
    check(&mut h, &timeout, ChangeAction::Restart, "auth_required");
    let mut h = H::stdio();
    let _ = h.ev(Event::StopRequested);
    check(&mut h, &args, ChangeAction::Update, "stopped");
}

// ----- what it shows ---------------------------------------------------------------------

#[test]
fn the_predicates_follow_state_and_health() {
    let mut h = H::remote();
    assert!(!h.l.is_running() && !h.l.is_healthy() && !h.l.is_client_ready() && !h.l.is_unreachable());
    let generation = h.up();
    assert!(h.l.is_running() && h.l.is_healthy() && h.l.is_client_ready());
    assert_eq!(h.l.up_since(), Some(h.now));
    let _ = h.ev(Event::HealthCheckRequested);
    let _ = h.ev(Event::PingFailed { generation, failure: transient() });
    assert!(h.l.is_running() && !h.l.is_healthy(), "running but unhealthy");
    assert_eq!(h.l.missed_pings(), 1);
    assert_eq!(h.l.last_error(), Some("MCP ping failed: connection refused"));
    assert_eq!(h.l.last_failure(), Some(FailureKind::Transient));
    let _ = h.ev(Event::HealthCheckRequested);
    let _ = h.ev(Event::PingSucceeded { generation, latency: FAST });
    assert_eq!((h.l.missed_pings(), h.l.last_error()), (0, None));
    let _ = h.ev(Event::StopRequested);
    assert!(!h.l.is_client_ready() && !h.l.is_running());
    assert_eq!((h.l.up_since(), h.l.missed_pings()), (None, 0));
    assert_eq!(h.l.settings(), &Settings::default());
    let custom = Settings { unhealthy_threshold: std::num::NonZeroU32::new(7).unwrap(), ..Settings::default() };
    let other = Lifecycle::new(ServerSpec::stdio("a", "b").validated().unwrap(), custom, 0);
    assert_eq!(other.settings(), &custom, "the settings it was made with");
}

#[test]
fn every_accessor_is_cleared_by_a_stop() {
    let mut h = H::remote();
    let mut generation = h.start();
    for n in 1..=3 {
        let _ = h.fail(generation, transient());
        if n < 3 {
            generation = connect_gen(&h.fire()).unwrap();
        }
    }
    assert!(h.l.is_unreachable());
    assert_eq!(h.l.health(), Health::Unknown);
    assert_eq!(h.l.consecutive_failures(), 3);
    assert!(h.l.last_error().is_some() && h.l.next_retry_after().is_some());
    assert_eq!(h.l.last_failure(), Some(FailureKind::Transient));
    let _ = h.ev(Event::StopRequested);
    assert_eq!(
        (h.l.consecutive_failures(), h.l.crash_count(), h.l.last_error(), h.l.last_failure(), h.l.next_retry_after()),
        (0, 0, None, None, None)
    );
    assert_eq!(h.l.restart_count(), 2, "restarts begun are history, not state");
}
