//! The driver against mocked ports, on tokio's paused clock.
//!
//! mockall mocks stand in for the ports; where a test needs to hold a connect
//! open, a small gate (`Gate`) decides when it finishes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster_core::{Challenge, Failure, Health, Reason, ServerSpec, ServerType, Settings, StartError, State};
use roster_supervisor::{
    Action, BoxFuture, CloseError, Connector, MockConnector, MockSession, Received, ServerEvent, Service,
    ServiceOptions, Session, Subscription, Supervisor, SupervisorConfig,
};
use tokio::sync::Notify;
use tokio::time::Instant;

const S: fn(u64) -> Duration = Duration::from_secs;

fn stdio(name: &str) -> ServerSpec {
    ServerSpec::stdio(name, "mcp-server")
}

fn remote(name: &str) -> ServerSpec {
    ServerSpec::remote(name, ServerType::StreamableHttp, "https://mcp.example/mcp")
}

/// A mocked session: up until `dies` resolves; `ping` and `close` answer as given.
fn mock_session(
    dies: BoxFuture<Failure>,
    ping: impl FnMut(Duration) -> Result<(), Failure> + Send + 'static,
    close: impl FnMut() -> Result<(), CloseError> + Send + 'static,
) -> MockSession {
    let mut s = MockSession::new();
    s.expect_closed().return_once(move || dies);
    s.expect_ping().returning(ping);
    s.expect_close().returning(close);
    s.expect_peer().returning(|| None);
    s.expect_pid().returning(|| Some(4242));
    s.expect_stderr_tail().returning(Vec::new);
    s
}

fn never() -> BoxFuture<Failure> {
    Box::pin(std::future::pending())
}

/// A session that stays up until `dies` resolves.
fn session_until(dies: BoxFuture<Failure>) -> MockSession {
    mock_session(dies, |_| Ok(()), || Ok(()))
}

fn healthy_session() -> MockSession {
    session_until(never())
}

fn service(spec: ServerSpec, connector: impl Connector) -> Service {
    Service::new(spec, Arc::new(connector), ServiceOptions::default())
}

/// Every event buffered for `sub` now.
fn drain(sub: &mut Subscription) -> Vec<Arc<ServerEvent>> {
    std::iter::from_fn(|| match sub.try_recv() {
        Some(Received::Event(e)) => Some(e),
        Some(Received::Missed(n)) => panic!("missed {n} events"),
        None => None,
    })
    .collect()
}

fn reasons(events: &[Arc<ServerEvent>]) -> Vec<Reason> {
    events.iter().filter_map(|e| e.event.reason).collect()
}

/// Records the (paused) instants of calls.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Instant>>>);

impl Calls {
    fn record(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }

    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.0.lock().unwrap().iter().map(|t| *t - t0).collect()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A connector whose attempts finish only when the test opens the gate; it counts
/// attempts in flight, and each attempt holds a resource whose release is recorded.
#[derive(Clone, Default)]
struct Gate(Arc<GateState>);

impl std::ops::Deref for Gate {
    type Target = GateState;
    fn deref(&self) -> &GateState {
        &self.0
    }
}

#[derive(Default)]
struct GateState {
    open: Notify,
    started: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    released: AtomicUsize,
    order: Mutex<Vec<String>>,
}

struct Resource(Arc<GateState>);

impl Drop for Resource {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Connector for Gate {
    async fn connect(&self, spec: &ServerSpec, _deadline: std::time::Instant) -> Result<Box<dyn Session>, Failure> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.order.lock().unwrap().push(spec.name.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _resource = Resource(self.0.clone());
        self.open.notified().await;
        Ok(Box::new(healthy_session()))
    }
}

// ----- retries and thresholds --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retries_fire_at_30_60_120_seconds_after_the_failures() {
    let t0 = Instant::now();
    let calls = Calls::default();
    let mut connector = MockConnector::new();
    let c = calls.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        Err(Failure::transient("connection refused"))
    });
    let svc = service(stdio("fs"), connector);
    let err = svc.start().await.unwrap_err();
    assert_eq!(err.to_string(), "failed to start MCP server: connection refused");
    tokio::time::sleep(S(30 + 60 + 120 + 1)).await;
    assert_eq!(calls.offsets(t0), [S(0), S(30), S(90), S(210)]);
    assert_eq!(svc.consecutive_failures(), 4);
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_remote_server_is_unreachable_after_3_failures() {
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(|_, _| Err(Failure::transient("HTTP 503 Service Unavailable")));
    let svc = service(remote("api"), connector);
    let mut sub = svc.subscribe();
    let _ = svc.start().await;
    let status = svc.wait_for(|s| s.state == State::Unreachable).await;
    assert_eq!(status.consecutive_failures, 3);
    assert_eq!(
        status.last_error.as_deref(),
        Some("server unreachable after 3 consecutive failures: HTTP 503 Service Unavailable")
    );
    let next = status.next_retry_after.unwrap() - status.last_attempt.unwrap();
    assert_eq!(next, 120_000, "retried after backoff(3)");
    assert!(svc.is_unreachable());
    let failed: Vec<_> = drain(&mut sub).into_iter().filter(|e| e.event.reason == Some(Reason::Failed)).collect();
    assert_eq!(failed.len(), 3);
    assert_eq!(failed[2].event.state, State::Unreachable);
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stdio_server_crash_loops_with_backoff_and_is_never_unreachable() {
    let t0 = Instant::now();
    let calls = Calls::default();
    let mut connector = MockConnector::new();
    let c = calls.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        // Comes up, then dies a second later.
        let dies: BoxFuture<Failure> = Box::pin(async {
            tokio::time::sleep(S(1)).await;
            Failure::transient("process exited with exit status: 1")
        });
        Ok(Box::new(session_until(dies)))
    });
    let svc = service(stdio("fs"), connector);
    let mut sub = svc.subscribe();
    svc.start().await.unwrap();
    tokio::time::sleep(S(215)).await;
    let ms = Duration::from_millis;
    assert_eq!(calls.offsets(t0), [S(0), ms(1_200), ms(32_200), ms(93_200), ms(214_200)]);
    let events = drain(&mut sub);
    assert!(events.iter().all(|e| e.event.state != State::Unreachable));
    assert_eq!(svc.status().crash_count, 4, "the fifth run is still up");
    assert_eq!(svc.consecutive_failures(), 0, "crashes are not failed connection attempts");
    svc.stop().await;
}

// ----- start, stop, restart ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_connect_that_hangs_wins_and_the_attempt_is_released() {
    let gate = Gate::default();
    let svc = service(stdio("fs"), gate.clone());
    let starter = tokio::spawn({
        let svc = svc.clone();
        async move { svc.start().await }
    });
    let _ = svc.wait_for(|s| s.state == State::Starting).await;
    tokio::task::yield_now().await;
    assert_eq!(gate.started.load(Ordering::SeqCst), 1);
    svc.stop().await;
    assert_eq!(svc.state(), State::Stopped);
    assert_eq!(starter.await.unwrap(), Err(StartError::Cancelled));
    tokio::task::yield_now().await;
    assert_eq!(gate.released.load(Ordering::SeqCst), 1, "what the attempt held is released");
    // Opening the gate now reaches nobody: the server stays stopped.
    gate.open.notify_waiters();
    tokio::time::sleep(S(3600)).await;
    assert_eq!(svc.state(), State::Stopped);
    assert!(!svc.is_client_ready());
}

#[tokio::test(start_paused = true)]
async fn a_start_during_starting_joins_the_attempt() {
    let gate = Gate::default();
    let svc = service(remote("api"), gate.clone());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.start().await }
    });
    let _ = svc.wait_for(|s| s.state == State::Starting).await;
    let second = tokio::spawn({
        let svc = svc.clone();
        async move { svc.start().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    gate.open.notify_waiters();
    assert_eq!(first.await.unwrap(), Ok(()));
    assert_eq!(second.await.unwrap(), Ok(()));
    assert_eq!(gate.started.load(Ordering::SeqCst), 1, "one connection, not two");
    assert_eq!(svc.state(), State::Connected);
    assert_eq!(svc.start().await, Err(StartError::AlreadyRunning { name: "api".into() }));
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_waits_the_grace_period_only_when_it_stopped_something() {
    let closes = Calls::default();
    let connects = Calls::default();
    let mut connector = MockConnector::new();
    let (c, k) = (connects.clone(), closes.clone());
    connector.expect_connect().returning(move |_, _| {
        c.record();
        let k = k.clone();
        Ok(Box::new(mock_session(
            never(),
            |_| Ok(()),
            move || {
                k.record();
                Ok(())
            },
        )))
    });
    let svc = service(stdio("fs"), connector);
    svc.start().await.unwrap();
    svc.restart().await.unwrap();
    let closed_at = closes.0.lock().unwrap()[0];
    let reconnected_at = connects.0.lock().unwrap()[1];
    assert_eq!(reconnected_at - closed_at, Duration::from_millis(200));
    svc.stop().await;

    // Nothing to stop: the start is immediate.
    let mut connector = MockConnector::new();
    let c = Calls::default();
    let c2 = c.clone();
    connector.expect_connect().returning(move |_, _| {
        c2.record();
        Err(Failure::permanent("command not found: mcp-server"))
    });
    let svc = service(stdio("fs"), connector);
    let _ = svc.start().await;
    let t = Instant::now();
    let _ = svc.restart().await;
    assert_eq!(c.offsets(t)[1..], [Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn a_user_stopped_server_is_never_restarted_by_a_retry() {
    let calls = Calls::default();
    let mut connector = MockConnector::new();
    let c = calls.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        Err(Failure::transient("connection refused"))
    });
    let svc = service(remote("api"), connector);
    let _ = svc.start().await;
    assert!(svc.next_retry_after().is_some());
    svc.stop().await;
    assert_eq!(svc.state(), State::Disconnected);
    assert_eq!(svc.next_retry_after(), None);
    tokio::time::sleep(S(7200)).await;
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn command_not_found_is_permanent_and_not_retried() {
    let calls = Calls::default();
    let mut connector = MockConnector::new();
    let c = calls.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        Err(Failure::permanent("command not found: mcp-server"))
    });
    let svc = service(stdio("fs"), connector);
    let err = svc.start().await.unwrap_err();
    assert!(matches!(err, StartError::Failed(ref f) if f.kind() == roster_core::FailureKind::Permanent));
    tokio::time::sleep(S(7200)).await;
    assert_eq!(calls.count(), 1);
    assert_eq!(svc.state(), State::Failed);
    assert_eq!(svc.next_retry_after(), None);
}

// ----- auth ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_auth_hook_runs_before_the_event_and_sees_the_current_definition() {
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(|_, _| {
        let challenge =
            Challenge::parse(r#"Bearer resource_metadata="https://mcp.example/.well-known/oauth-protected-resource""#);
        Err(Failure::auth_required(challenge, "HTTP 401 Unauthorized"))
    });
    let mut spec = remote("api");
    spec.tool_prefix = "before-update".into();
    /// What the hook saw: the tool prefix, the challenge's metadata URL, the reasons published so far.
    type Seen = (String, Option<String>, Vec<Reason>);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hook_sub = Arc::new(Mutex::new(None::<Subscription>));
    let svc = service(spec.clone(), connector);
    *hook_sub.lock().unwrap() = Some(svc.subscribe());
    let svc = svc.with_auth_required_hook({
        let (seen, hook_sub) = (seen.clone(), hook_sub.clone());
        move |def: &ServerSpec, challenge: &Challenge| {
            let published = drain(hook_sub.lock().unwrap().as_mut().unwrap());
            seen.lock().unwrap().push((
                def.tool_prefix.clone(),
                challenge.resource_metadata.clone(),
                reasons(&published),
            ));
        }
    });
    spec.tool_prefix = "after-update".into();
    svc.update_configuration(spec).await.unwrap();
    let err = svc.start().await.unwrap_err();
    assert!(matches!(err, StartError::AuthRequired { .. }));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (prefix, metadata, before) = &seen[0];
    assert_eq!(prefix, "after-update");
    assert_eq!(metadata.as_deref(), Some("https://mcp.example/.well-known/oauth-protected-resource"));
    assert!(!before.contains(&Reason::AuthRequired), "the hook ran before the event: {before:?}");
    let after = drain(hook_sub.lock().unwrap().as_mut().unwrap());
    assert_eq!(reasons(&after), [Reason::AuthRequired]);
    assert_eq!(svc.state(), State::AuthRequired);
}

// ----- status never waits ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn status_answers_while_a_connect_hangs_forever() {
    let gate = Gate::default();
    let sup = Supervisor::new(Arc::new(gate.clone()), SupervisorConfig::default());
    let mut spec = remote("api");
    spec.auto_start = true;
    spec.timeout = Some(60);
    sup.apply(vec![spec]).await.unwrap();
    let svc = sup.get("api").unwrap();
    let _ = svc.wait_for(|s| s.state == State::Starting).await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(sup.status()[0].state, State::Starting);
        assert_eq!(svc.status().state, State::Starting);
        assert_eq!(Instant::now(), t, "no waiting at all");
        tokio::time::sleep(S(10)).await;
    }
    // A connect never hangs the server forever: the timeout ends it.
    let status = svc.wait_for(|s| s.state == State::Failed).await;
    assert!(status.last_error.unwrap().contains("timed out"));
    sup.shutdown().await;
}

// ----- health --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn three_missed_pings_lead_to_recovery() {
    let t0 = Instant::now();
    let connects = Calls::default();
    let mut connector = MockConnector::new();
    let c = connects.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        Ok(Box::new(mock_session(never(), |_| Err(Failure::transient("request timed out")), || Ok(()))))
    });
    let svc = service(remote("api"), connector);
    let mut sub = svc.subscribe();
    svc.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(90_300)).await;
    assert_eq!(connects.offsets(t0), [S(0), Duration::from_millis(90_200)]);
    let r = reasons(&drain(&mut sub));
    assert_eq!(
        r,
        [
            Reason::Starting,
            Reason::Started,
            Reason::HealthCheckFailed,
            Reason::Failed,
            Reason::RecoveryStarted,
            Reason::Starting,
            Reason::Started,
            Reason::RecoverySucceeded,
        ]
    );
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_check_failed_is_published_once_per_unhealthy_episode() {
    let answers = Arc::new(Mutex::new(vec![true, false, false, false, false, false, false, true, false, false]));
    let mut connector = MockConnector::new();
    let a = answers.clone();
    connector.expect_connect().returning(move |_, _| {
        let a = a.clone();
        let ping = move |_| {
            let ok = a.lock().unwrap().pop().unwrap_or(true);
            if ok { Ok(()) } else { Err(Failure::transient("timed out")) }
        };
        Ok(Box::new(mock_session(never(), ping, || Ok(()))))
    });
    let options = ServiceOptions {
        settings: Settings { unhealthy_threshold: 100, ..Settings::default() },
        ..ServiceOptions::default()
    };
    let svc = Service::new(stdio("fs"), Arc::new(connector), options);
    let mut sub = svc.subscribe();
    svc.start().await.unwrap();
    for _ in 0..10 {
        let report = svc.check_health().await;
        assert_eq!(report.health == Health::Healthy, report.error.is_none());
    }
    let r = reasons(&drain(&mut sub));
    assert_eq!(r.iter().filter(|r| **r == Reason::HealthCheckFailed).count(), 2, "{r:?}");
    assert_eq!(svc.health(), Health::Healthy);
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_health_check_reports_ping_failures_and_missing_clients() {
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(|_, _| {
        Ok(Box::new(mock_session(never(), |_| Err(Failure::transient("connection reset")), || Ok(()))))
    });
    let svc = service(stdio("fs"), connector);
    let report = svc.check_health().await;
    assert_eq!(report.error.as_deref(), Some("MCP client not available"));
    svc.start().await.unwrap();
    let report = svc.check_health().await;
    assert_eq!(report.health, Health::Unhealthy);
    assert_eq!(report.error.as_deref(), Some("MCP ping failed: connection reset"));
    assert!(svc.is_running() && !svc.is_healthy());
    svc.stop().await;
}

// ----- the supervisor ------------------------------------------------------------------

fn counting_connector(counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>>) -> MockConnector {
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(move |spec: &ServerSpec, _| {
        *counts.lock().unwrap().entry(spec.name.clone()).or_default() += 1;
        Ok(Box::new(healthy_session()))
    });
    connector
}

#[tokio::test(start_paused = true)]
async fn apply_restarts_only_changed_servers_and_updates_metadata_in_place() {
    let counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let sup = Supervisor::new(Arc::new(counting_connector(counts.clone())), SupervisorConfig::default());
    let auto = |mut s: ServerSpec| {
        s.auto_start = true;
        s
    };
    let first = vec![auto(stdio("a")), auto(stdio("b")), auto(remote("c")), auto(stdio("e")), stdio("idle")];
    let plan = sup.apply(first.clone()).await.unwrap();
    assert!(plan.steps.iter().all(|s| matches!(s.action, Action::Add { .. })));
    for name in ["a", "b", "c", "e"] {
        let _ = sup.get(name).unwrap().wait_for(|s| s.state.is_running()).await;
    }
    assert_eq!(sup.get("idle").unwrap().state(), State::Unknown, "auto_start = false: registered, not started");

    let mut second = first.clone();
    second.retain(|s| s.name != "e");
    second[1].args = vec!["--verbose".into()];
    second[2].description = "the API".into();
    second.push(auto(stdio("d")));
    let plan = sup.apply(second).await.unwrap();
    let actions: Vec<(&str, Action)> = plan.steps.iter().map(|s| (s.server.as_str(), s.action)).collect();
    assert_eq!(
        actions,
        [
            ("a", Action::Unchanged),
            ("b", Action::Restart),
            ("c", Action::Metadata),
            ("d", Action::Add { start: true }),
            ("e", Action::Remove),
            ("idle", Action::Unchanged),
        ]
    );
    assert_eq!(plan.steps[1].fields, [roster_core::Field::Args]);
    let b = sup.get("b").unwrap();
    tokio::time::sleep(S(1)).await;
    let _ = b.wait_for(|s| s.state.is_running()).await;
    let _ = sup.get("d").unwrap().wait_for(|s| s.state.is_running()).await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.get("a"), Some(&1));
    assert_eq!(counts.get("b"), Some(&2), "restarted");
    assert_eq!(counts.get("c"), Some(&1), "metadata only: not restarted");
    assert_eq!(counts.get("d"), Some(&1));
    assert_eq!(sup.get("c").unwrap().status().description, "the API");
    assert_eq!(b.spec().args, ["--verbose"]);
    assert!(sup.get("e").is_none());
    sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn apply_validates_everything_first_and_applies_nothing_on_error() {
    let counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let sup = Supervisor::new(Arc::new(counting_connector(counts.clone())), SupervisorConfig::default());
    let mut bad = remote("api");
    bad.url = "ftp://nope".into();
    let errors = sup.apply(vec![stdio("ok"), bad, stdio(""), stdio("ok")]).await.unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "server \"api\": url: must start with http:// or https://",
            "MCP server name is required",
            "server \"ok\": name: defined more than once",
        ]
    );
    assert!(sup.names().is_empty());
}

#[tokio::test(start_paused = true)]
async fn at_most_five_connects_run_at_once_first_come_first_served() {
    let gate = Gate::default();
    let sup = Supervisor::new(Arc::new(gate.clone()), SupervisorConfig::default());
    let specs: Vec<ServerSpec> = (0..8)
        .map(|i| {
            let mut s = stdio(&format!("s{i}"));
            s.auto_start = true;
            s
        })
        .collect();
    for spec in specs {
        // One at a time, so that the order of arrival is known.
        let mut all: Vec<ServerSpec> =
            sup.names().into_iter().map(|n| (*sup.get(&n).unwrap().spec()).clone()).collect();
        all.push(spec);
        sup.apply(all).await.unwrap();
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.started.load(Ordering::SeqCst), 5);
    gate.open.notify_waiters();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.started.load(Ordering::SeqCst), 8);
    gate.open.notify_waiters();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.max_in_flight.load(Ordering::SeqCst), 5);
    let order = gate.order.lock().unwrap().clone();
    assert_eq!(order, ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]);
    assert!(sup.status().iter().all(|s| s.state == State::Running));
    sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_server_in_parallel() {
    let mut connector = MockConnector::new();
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    connector.expect_connect().returning(move |_, _| {
        let c = c.clone();
        Ok(Box::new(mock_session(
            never(),
            |_| Ok(()),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )))
    });
    let sup = Supervisor::new(Arc::new(connector), SupervisorConfig::default());
    let specs: Vec<ServerSpec> = (0..20)
        .map(|i| {
            let mut s = stdio(&format!("s{i:02}"));
            s.auto_start = true;
            s
        })
        .collect();
    sup.apply(specs).await.unwrap();
    for name in sup.names() {
        let _ = sup.get(&name).unwrap().wait_for(|s| s.state == State::Running).await;
    }
    let report = sup.shutdown().await;
    assert_eq!(report.stopped.len(), 20);
    assert!(report.timed_out.is_empty());
    assert_eq!(closed.load(Ordering::SeqCst), 20);
    assert!(sup.names().is_empty());
}
