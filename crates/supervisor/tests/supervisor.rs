//! The driver against mocked ports, on tokio's paused clock.
//!
//! mockall mocks stand in for the ports; where a test needs to hold a connect
//! open, a small gate (`Gate`) decides when it finishes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::num::NonZeroU32;

use roster_core::{
    Challenge, Failure, Health, Reason, ServerSpec, ServerType, Settings, StartError, State, ToolListing, ValidSpec,
};
use roster_supervisor::{
    Action, BoxFuture, CloseError, Connector, Received, ServerEvent, Service, ServiceOptions, Session, Subscription,
    Supervisor, SupervisorConfig,
};
use roster_transport::{MockConnector, MockSession};
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
    s.expect_list_tools().returning(|_| ToolListing::NotOffered);
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
    Service::new(valid(spec), Arc::new(connector), ServiceOptions::default())
}

fn valid(spec: ServerSpec) -> ValidSpec {
    spec.validated().expect("a valid definition")
}

fn all_valid(specs: Vec<ServerSpec>) -> Vec<ValidSpec> {
    specs.into_iter().map(valid).collect()
}

/// Awaits `f` for at most an hour of the paused clock: a driver that never gets
/// there fails the test at once (the clock jumps to the bound) instead of hanging it.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(S(3600), f).await {
        Ok(value) => value,
        Err(_) => panic!("not done within an hour (of the paused clock)"),
    }
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
    let status = bounded(svc.wait_for(|s| s.state == State::Unreachable)).await;
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
    let _ = bounded(svc.wait_for(|s| s.state == State::Starting)).await;
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
    let _ = bounded(svc.wait_for(|s| s.state == State::Starting)).await;
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
        Err(Failure::needs_credentials(challenge, "HTTP 401 Unauthorized"))
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
    assert!(matches!(err, StartError::NeedsCredentials { .. }));
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
    sup.apply(vec![valid(spec)]).await.unwrap();
    let svc = sup.get("api").unwrap();
    let _ = bounded(svc.wait_for(|s| s.state == State::Starting)).await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(sup.status()[0].state, State::Starting);
        assert_eq!(svc.status().state, State::Starting);
        assert_eq!(Instant::now(), t, "no waiting at all");
        tokio::time::sleep(S(10)).await;
    }
    // A connect never hangs the server forever: the timeout ends it.
    let status = bounded(svc.wait_for(|s| s.state == State::Failed)).await;
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
        settings: Settings { unhealthy_threshold: NonZeroU32::new(100).unwrap(), ..Settings::default() },
        ..ServiceOptions::default()
    };
    let svc = Service::new(valid(stdio("fs")), Arc::new(connector), options);
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

/// A session whose pings take the next of `latencies` (then 1 ms), on the paused
/// clock, and whose tool listing finds `tools`.
struct Slow {
    latencies: Mutex<Vec<Duration>>,
    tools: ToolListing,
}

#[async_trait::async_trait]
impl Session for Slow {
    async fn ping(&self, _timeout: Duration) -> Result<(), Failure> {
        let next = self.latencies.lock().unwrap().pop().unwrap_or(Duration::from_millis(1));
        tokio::time::sleep(next).await;
        Ok(())
    }

    fn closed(&self) -> BoxFuture<Failure> {
        never()
    }

    async fn close(&self) -> Result<(), CloseError> {
        Ok(())
    }

    fn peer(&self) -> Option<rmcp::service::Peer<rmcp::RoleClient>> {
        None
    }

    async fn list_tools(&self, _timeout: Duration) -> ToolListing {
        self.tools.clone()
    }
}

fn slow_connector(latencies: Vec<Duration>, tools: ToolListing) -> MockConnector {
    let latencies = Mutex::new(Some(latencies));
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(move |_, _| {
        let mut queue = latencies.lock().unwrap().take().unwrap_or_default();
        queue.reverse();
        Ok(Box::new(Slow { latencies: Mutex::new(queue), tools: tools.clone() }))
    });
    connector
}

#[derive(Default)]
struct Pings(Mutex<Vec<(String, Duration, bool)>>);

impl roster_supervisor::Observer for Pings {
    fn pinged(&self, server: &str, took: Duration, ok: bool) {
        self.0.lock().unwrap().push((server.to_owned(), took, ok));
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_ping_degrades_the_server_once_and_a_fast_one_heals_it() {
    let ms = Duration::from_millis;
    let connector = slow_connector(vec![ms(6_000), ms(7_000), ms(20)], ToolListing::NotOffered);
    let sup = Supervisor::new(Arc::new(connector), SupervisorConfig::default());
    let pings = Arc::new(Pings::default());
    assert!(sup.observe(pings.clone()).is_ok());
    assert!(sup.observe(Arc::new(Pings::default())).is_err(), "one observer");
    let mut sub = sup.subscribe();
    let mut spec = remote("api");
    spec.auto_start = true;
    sup.apply(all_valid(vec![spec])).await.unwrap();
    let svc = sup.get("api").unwrap();
    bounded(svc.wait_for(|s| s.state == State::Connected)).await;

    // The first probe is due after 30 s and answers after 6 s.
    tokio::time::sleep(S(36) + ms(1)).await;
    assert_eq!(svc.health(), Health::Degraded);
    let status = svc.status();
    assert_eq!(status.ping_latency_us, Some(6_000_000));
    assert_eq!(status.last_error, None);
    let events = drain(&mut sub);
    let degraded: Vec<_> = events.iter().filter(|e| e.event.reason == Some(Reason::HealthDegraded)).collect();
    assert_eq!(degraded.len(), 1);
    assert_eq!(degraded[0].event.error.as_deref(), Some("MCP ping took 6s, more than degraded_after (5s)"));

    // Still slow: no second announcement. Then fast: healthy again.
    tokio::time::sleep(S(37)).await;
    assert_eq!(svc.health(), Health::Degraded);
    assert!(reasons(&drain(&mut sub)).is_empty(), "once per episode");
    tokio::time::sleep(S(31)).await;
    assert_eq!(svc.health(), Health::Healthy);
    let healed = drain(&mut sub);
    assert_eq!(healed.len(), 1);
    assert_eq!((healed[0].event.previous_health, healed[0].event.health), (Health::Degraded, Health::Healthy));

    let seen = pings.0.lock().unwrap().clone();
    let took: Vec<Duration> = seen.iter().map(|(_, d, _)| *d).collect();
    assert_eq!(took, [ms(6_000), ms(7_000), ms(20)], "the driver measures each ping on its clock");
    assert!(seen.iter().all(|(server, _, ok)| server == "api" && *ok));
    sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_that_lists_tools_itself_reports_them_and_the_driver_does_not_list() {
    // Every session lists none: a listing by the driver would raise the warning.
    let connector = slow_connector(vec![], ToolListing::Listed { count: 0 });
    let sup = Supervisor::new(Arc::new(connector), SupervisorConfig::default());
    sup.delegate_tool_listing();
    let mut sub = sup.subscribe();
    let (mut a, mut b) = (remote("a"), remote("b"));
    (a.auto_start, b.auto_start) = (true, true);
    sup.apply(all_valid(vec![a, b])).await.unwrap();
    let (a, b) = (sup.get("a").unwrap(), sup.get("b").unwrap());
    bounded(a.wait_for(|s| s.state == State::Connected)).await;
    bounded(b.wait_for(|s| s.state == State::Connected)).await;
    tokio::time::sleep(S(1)).await;
    assert_eq!((a.status().warning, b.status().warning), (None, None), "the driver did not list");

    // A report names its session: one of `a` says nothing of `b`.
    let session = a.live().expect("a live session").id;
    b.tools_listed(session, ToolListing::Listed { count: 0 });
    a.tools_listed(session, ToolListing::Listed { count: 0 });
    let status = bounded(a.wait_for(|s| s.warning.is_some())).await;
    assert_eq!(status.warning.as_deref(), Some("offers tools but listed none: it may have started only half-way"));
    assert_eq!(b.status().warning, None);
    let missing: Vec<String> = drain(&mut sub)
        .into_iter()
        .filter(|e| e.event.reason == Some(Reason::ToolsMissing))
        .map(|e| e.server.clone())
        .collect();
    assert_eq!(missing, ["a"]);

    // The last report counts.
    a.tools_listed(session, ToolListing::Listed { count: 2 });
    bounded(a.wait_for(|s| s.warning.is_none())).await;
    sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_offers_tools_but_lists_none_is_reported_once_per_session() {
    let svc = service(stdio("fs"), slow_connector(vec![], ToolListing::Listed { count: 0 }));
    let mut sub = svc.subscribe();
    svc.start().await.unwrap();
    let status = bounded(svc.wait_for(|s| s.warning.is_some())).await;
    assert_eq!(status.warning.as_deref(), Some("offers tools but listed none: it may have started only half-way"));
    assert_eq!((status.state, status.health), (State::Running, Health::Healthy));
    let r = reasons(&drain(&mut sub));
    assert_eq!(r, [Reason::Starting, Reason::Started, Reason::ToolsMissing]);
    svc.stop().await;
    assert_eq!(svc.status().warning, None, "the warning belongs to the session");

    let listed = service(stdio("ok"), slow_connector(vec![], ToolListing::Listed { count: 3 }));
    let mut sub = listed.subscribe();
    listed.start().await.unwrap();
    tokio::time::sleep(S(1)).await;
    assert_eq!(listed.status().warning, None);
    assert_eq!(reasons(&drain(&mut sub)), [Reason::Starting, Reason::Started]);
    listed.stop().await;
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
    let plan = sup.apply(all_valid(first.clone())).await.unwrap();
    assert!(plan.steps.iter().all(|s| matches!(s.action, Action::Add { .. })));
    for name in ["a", "b", "c", "e"] {
        let _ = bounded(sup.get(name).unwrap().wait_for(|s| s.state.is_running())).await;
    }
    assert_eq!(sup.get("idle").unwrap().state(), State::Unknown, "auto_start = false: registered, not started");

    let mut second = first.clone();
    second.retain(|s| s.name != "e");
    second[1].args = vec!["--verbose".into()];
    second[2].description = "the API".into();
    second.push(auto(stdio("d")));
    let predicted = sup.plan(&all_valid(second.clone())).unwrap();
    let plan = sup.apply(all_valid(second)).await.unwrap();
    assert_eq!(predicted, plan, "the plan is the core's decision, before and after");
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
    let changed: Vec<&str> = plan.changes().map(|s| s.server.as_str()).collect();
    assert_eq!(changed, ["b", "c", "d", "e"], "changes() leaves out what stays as it is");
    let inspected = sup.inspect_all(|lifecycle, _| lifecycle.spec().name.clone());
    assert_eq!(inspected, ["a", "b", "c", "d", "idle"], "every server, in name order");
    assert_eq!(format!("{sup:?}"), r#"Supervisor { servers: ["a", "b", "c", "d", "idle"] }"#);
    let b = sup.get("b").unwrap();
    tokio::time::sleep(S(1)).await;
    let _ = bounded(b.wait_for(|s| s.state.is_running())).await;
    let _ = bounded(sup.get("d").unwrap().wait_for(|s| s.state.is_running())).await;
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
async fn apply_refuses_a_name_given_twice_and_applies_nothing() {
    let counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let sup = Supervisor::new(Arc::new(counting_connector(counts.clone())), SupervisorConfig::default());
    let errors = sup.apply(all_valid(vec![stdio("ok"), stdio("other"), stdio("ok")])).await.unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text, ["server \"ok\": name: defined more than once"]);
    assert!(sup.names().is_empty());
    assert!(sup.plan(&all_valid(vec![stdio("ok"), stdio("ok")])).is_err());
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
        let mut all: Vec<ServerSpec> = sup.names().into_iter().map(|n| sup.get(&n).unwrap().spec()).collect();
        all.push(spec);
        sup.apply(all_valid(all)).await.unwrap();
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
    sup.apply(all_valid(specs)).await.unwrap();
    for name in sup.names() {
        let _ = bounded(sup.get(&name).unwrap().wait_for(|s| s.state == State::Running)).await;
    }
    let report = sup.shutdown().await;
    assert_eq!(report.stopped.len(), 20);
    assert!(report.timed_out.is_empty());
    assert_eq!(closed.load(Ordering::SeqCst), 20);
    assert!(sup.names().is_empty());
}

// ----- one process at a time, a shutdown that names what it had to kill --------------

/// A session whose close takes `close_takes` (or forever), and that records kills.
struct SlowClose {
    close_takes: Option<Duration>,
    dies: Mutex<Option<BoxFuture<Failure>>>,
    killed: Arc<Notify>,
    kills: Arc<AtomicUsize>,
    closes: Calls,
}

#[async_trait::async_trait]
impl Session for SlowClose {
    async fn ping(&self, _timeout: Duration) -> Result<(), Failure> {
        Ok(())
    }

    fn closed(&self) -> BoxFuture<Failure> {
        self.dies.lock().unwrap().take().unwrap_or_else(never)
    }

    async fn close(&self) -> Result<(), CloseError> {
        let killed = self.killed.notified();
        match self.close_takes {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = killed => {}
            },
            None => killed.await,
        }
        self.closes.record();
        Ok(())
    }

    fn kill(&self) {
        self.kills.fetch_add(1, Ordering::SeqCst);
        self.killed.notify_waiters();
    }

    fn peer(&self) -> Option<rmcp::service::Peer<rmcp::RoleClient>> {
        None
    }
}

#[derive(Clone, Default)]
struct SlowCloses {
    connects: Calls,
    closes: Calls,
    kills: Arc<AtomicUsize>,
}

impl SlowCloses {
    /// A connector whose sessions close in `close_takes` (None: only when killed);
    /// the first session dies after `first_dies`, if given.
    fn connector(&self, close_takes: Option<Duration>, first_dies: Option<Duration>) -> MockConnector {
        let mut connector = MockConnector::new();
        let this = self.clone();
        connector.expect_connect().returning(move |_, _| {
            let first = this.connects.count() == 0;
            this.connects.record();
            let dies: Option<BoxFuture<Failure>> = match first_dies {
                Some(after) if first => Some(Box::pin(async move {
                    tokio::time::sleep(after).await;
                    Failure::transient("session lost: 3 health checks failed in a row")
                })),
                Some(_) | None => None,
            };
            Ok(Box::new(SlowClose {
                close_takes,
                dies: Mutex::new(dies),
                killed: Arc::new(Notify::new()),
                kills: this.kills.clone(),
                closes: this.closes.clone(),
            }))
        });
        connector
    }
}

#[tokio::test(start_paused = true)]
async fn recovery_starts_the_new_session_only_after_the_old_one_is_closed() {
    let t0 = Instant::now();
    let probe = SlowCloses::default();
    let svc = service(stdio("fs"), probe.connector(Some(S(7)), Some(S(1))));
    svc.start().await.unwrap();
    tokio::time::sleep(S(10)).await;
    // Lost at 1 s; the hung server takes 7 s to close; only then the new one starts.
    assert_eq!(probe.closes.offsets(t0), [S(8)]);
    assert_eq!(probe.connects.offsets(t0), [S(0), S(8)], "never two processes of one server");
    assert_eq!(svc.state(), State::Running);
    // The close of this stop takes 7 s too: the stop returns after it, not before.
    let stopped_at = Instant::now();
    svc.stop().await;
    assert_eq!(Instant::now() - stopped_at, S(7));
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_lost_session_closes_returns_once_it_is_gone() {
    let t0 = Instant::now();
    let probe = SlowCloses::default();
    let svc = service(stdio("fs"), probe.connector(Some(S(7)), Some(S(1))));
    svc.start().await.unwrap();
    tokio::time::sleep(S(2)).await;
    assert_eq!(svc.state(), State::Failed);
    svc.stop().await;
    assert_eq!(Instant::now() - t0, S(8), "the stop waited for the old process");
    assert_eq!(probe.closes.offsets(t0), [S(8)]);
    assert_eq!(svc.state(), State::Stopped);
    assert_eq!(probe.connects.count(), 1, "and nothing restarted it");
}

#[tokio::test(start_paused = true)]
async fn shutdown_names_and_kills_the_servers_that_outlive_its_timeout() {
    let probe = SlowCloses::default();
    let config = SupervisorConfig { shutdown_timeout: S(2), ..SupervisorConfig::default() };
    let mut slow = MockConnector::new();
    let quick = Arc::new(AtomicUsize::new(0));
    let (stuck, q) = (probe.connector(None, None), quick.clone());
    slow.expect_connect().returning(move |spec, deadline| {
        if spec.name == "stuck" {
            return tokio_test_block(stuck.connect(spec, deadline));
        }
        q.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(healthy_session()))
    });
    let sup = Supervisor::new(Arc::new(slow), config);
    let specs = ["ok", "stuck"].map(|n| {
        let mut s = stdio(n);
        s.auto_start = true;
        s
    });
    sup.apply(all_valid(specs.to_vec())).await.unwrap();
    for name in ["ok", "stuck"] {
        let _ = bounded(sup.get(name).unwrap().wait_for(|s| s.state == State::Running)).await;
    }
    let t = Instant::now();
    let report = sup.shutdown().await;
    assert_eq!(report.stopped, ["ok"]);
    assert_eq!(report.timed_out, ["stuck"]);
    assert_eq!(probe.kills.load(Ordering::SeqCst), 1, "what outlived the timeout was killed");
    assert_eq!(probe.closes.count(), 1, "and its close then finished");
    assert!(Instant::now() - t < S(2) + S(3), "bounded: the timeout, then the kill's grace");
}

/// Runs a mocked connector's future to its end (it never waits).
fn tokio_test_block<T>(f: impl std::future::Future<Output = T>) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the mocked connect waited"),
    }
}

#[tokio::test(start_paused = true)]
async fn kill_all_reaches_servers_that_are_being_stopped() {
    let probe = SlowCloses::default();
    let sup = Arc::new(Supervisor::new(Arc::new(probe.connector(None, None)), SupervisorConfig::default()));
    let mut spec = stdio("stuck");
    spec.auto_start = true;
    sup.apply(vec![valid(spec)]).await.unwrap();
    let _ = bounded(sup.get("stuck").unwrap().wait_for(|s| s.state == State::Running)).await;
    let removal = tokio::spawn({
        let sup = sup.clone();
        async move { sup.apply(Vec::new()).await }
    });
    tokio::time::sleep(S(1)).await;
    assert!(!removal.is_finished(), "its close hangs");
    let killed_at = Instant::now();
    sup.kill_all();
    removal.await.unwrap().unwrap();
    assert_eq!(probe.kills.load(Ordering::SeqCst), 1);
    assert!(Instant::now() - killed_at < S(1), "by the kill, not by the close's own backstop");
}

// ----- the auth hook: before anyone sees it, and isolated ------------------------------

#[tokio::test(start_paused = true)]
async fn a_401_on_a_ping_runs_the_hook_before_status_or_events_show_it() {
    let mut connector = MockConnector::new();
    connector.expect_connect().returning(|_, _| {
        let ping = |_| Err(Failure::needs_credentials(Challenge::parse("Bearer realm=\"r\""), "HTTP 401 Unauthorized"));
        Ok(Box::new(mock_session(never(), ping, || Ok(()))))
    });
    let svc = service(remote("api"), connector);
    let me: Arc<Mutex<Option<(Service, Subscription)>>> = Arc::default();
    /// What the hook saw: the state readers saw, and the reasons published so far.
    type Seen = Vec<(State, Vec<Reason>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let svc = svc.with_auth_required_hook({
        let (me, seen) = (me.clone(), seen.clone());
        move |_, _| {
            let mut me = me.lock().unwrap();
            let (svc, sub) = me.as_mut().unwrap();
            seen.lock().unwrap().push((svc.state(), reasons(&drain(sub))));
        }
    });
    svc.start().await.unwrap();
    *me.lock().unwrap() = Some((svc.clone(), svc.subscribe()));
    let report = svc.check_health().await;
    assert_eq!(report.error.as_deref(), Some("MCP ping failed: HTTP 401 Unauthorized"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(State::Connected, vec![])], "the hook ran while the old state was all anyone could see");
    assert_eq!(svc.state(), State::AuthRequired);
    let (_, mut sub) = me.lock().unwrap().take().unwrap();
    assert_eq!(reasons(&drain(&mut sub)), [Reason::AuthRequired]);
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_hook_is_logged_and_the_lifecycle_goes_on() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut connector = MockConnector::new();
    let a = attempts.clone();
    connector.expect_connect().returning(move |_, _| {
        if a.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(Failure::needs_credentials(Challenge::default(), "HTTP 401 Unauthorized"))
        } else {
            Ok(Box::new(healthy_session()))
        }
    });
    let svc = service(remote("api"), connector).with_auth_required_hook(|_, _| panic!("the host's bug"));
    let err = svc.start().await.unwrap_err();
    assert!(matches!(err, StartError::NeedsCredentials { .. }), "{err}");
    assert_eq!(svc.state(), State::AuthRequired, "status follows");
    // The server is not stuck: commands are answered, and it can start.
    svc.start().await.unwrap();
    assert_eq!(svc.state(), State::Connected);
    svc.stop().await;
    assert_eq!(svc.state(), State::Disconnected);
}

// ----- every timer goes through the clock --------------------------------------------

/// A clock that moves only when the test says so.
#[derive(Clone, Default)]
struct ManualClock(Arc<ManualState>);

#[derive(Default)]
struct ManualState {
    offset: Mutex<Duration>,
    moved: Notify,
    base: std::sync::OnceLock<std::time::Instant>,
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        *self.0.offset.lock().unwrap() += d;
        self.0.moved.notify_waiters();
    }
}

impl roster_supervisor::Clock for ManualClock {
    fn now(&self) -> std::time::Instant {
        *self.0.base.get_or_init(|| Instant::now().into_std()) + *self.0.offset.lock().unwrap()
    }

    fn wall(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + *self.0.offset.lock().unwrap()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> BoxFuture<()> {
        let clock = self.clone();
        Box::pin(async move {
            loop {
                let moved = clock.0.moved.notified();
                if clock.now() >= deadline {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_with_another_clock_waits_on_that_clock_only() {
    let calls = Calls::default();
    let mut connector = MockConnector::new();
    let c = calls.clone();
    connector.expect_connect().returning(move |_, _| {
        c.record();
        Err(Failure::transient("connection refused"))
    });
    let clock = ManualClock::default();
    let sup = Supervisor::with_clock(Arc::new(connector), SupervisorConfig::default(), Arc::new(clock.clone()));
    let mut spec = stdio("fs");
    spec.auto_start = true;
    sup.apply(vec![valid(spec)]).await.unwrap();
    let svc = sup.get("fs").unwrap();
    let _ = bounded(svc.wait_for(|s| s.state == State::Failed)).await;
    tokio::time::sleep(S(3600)).await;
    assert_eq!(calls.count(), 1, "tokio's time passing does not fire the retry");
    clock.advance(S(29));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(calls.count(), 1);
    clock.advance(S(1));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(calls.count(), 2, "the clock's 30 s fire it");
    assert_eq!(svc.status().next_retry_after, Some(60_000 + 30_000), "status reads the clock too");
    sup.shutdown().await;
}

// ----- the reference's accessors -------------------------------------------------------

/// A real rmcp client peer, connected over an in-memory pipe to a server that
/// offers nothing: what a session's `peer()` hands out. The two services are
/// returned to be kept alive.
async fn in_memory_peer() -> (
    rmcp::service::Peer<rmcp::RoleClient>,
    rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tokio::task::JoinHandle<()>,
) {
    use rmcp::ServiceExt;

    #[derive(Clone)]
    struct Nothing;
    impl rmcp::ServerHandler for Nothing {}

    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        if let Ok(running) = Nothing.serve(tokio::io::split(server_end)).await {
            let _ = running.waiting().await;
        }
    });
    let client = ().serve(tokio::io::split(client_end)).await.expect("the in-memory handshake");
    (client.peer().clone(), client, server)
}

#[tokio::test(start_paused = true)]
async fn the_accessors_read_the_server_as_it_is_at_each_step() {
    let (peer, _client, _server) = in_memory_peer().await;
    let connects = Arc::new(AtomicUsize::new(0));
    let mut connector = MockConnector::new();
    let count = connects.clone();
    connector.expect_connect().returning(move |_, _| {
        if count.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(Failure::transient("connection refused"));
        }
        // The first session is up for 40 s, then lost; every reconnect fails.
        let dies: BoxFuture<Failure> = Box::pin(async {
            tokio::time::sleep(S(40)).await;
            Failure::transient("stream ended")
        });
        let mut session = MockSession::new();
        let peer = peer.clone();
        session.expect_closed().return_once(move || dies);
        session.expect_ping().returning(|_| Ok(()));
        session.expect_close().returning(|| Ok(()));
        session.expect_peer().returning(move || Some(peer.clone()));
        session.expect_list_tools().returning(|_| ToolListing::NotOffered);
        session.expect_pid().returning(|| None);
        session.expect_stderr_tail().returning(Vec::new);
        Ok(Box::new(session))
    });
    let settings =
        Settings { health_check_interval: roster_core::NonZeroDuration::new(S(20)).unwrap(), ..Settings::default() };
    let options = ServiceOptions { settings, ..ServiceOptions::default() };
    let svc = Service::new(valid(remote("api")), Arc::new(connector), options);

    // Never started.
    assert_eq!(svc.service_type(), "MCPServer");
    assert_eq!(svc.health_check_interval(), S(20));
    assert_eq!(format!("{svc:?}"), r#"Service { name: "api", state: Unknown }"#);
    assert!(!svc.is_running() && !svc.is_healthy() && !svc.is_unreachable() && !svc.is_client_ready());
    assert!(svc.client().is_none() && svc.live().is_none());
    assert_eq!((svc.last_attempt(), svc.next_retry_after()), (None, None));

    // Up, and pinged once (at 20 s).
    svc.start().await.unwrap();
    tokio::time::sleep(S(21)).await;
    assert!(svc.is_running() && svc.is_healthy() && svc.is_client_ready() && !svc.is_unreachable());
    let client = svc.client().expect("the live session's peer");
    assert!(client.peer_info().is_some(), "it is the session's own, initialized peer");
    let live = svc.live().expect("a live session");
    assert_eq!(svc.live().map(|l| l.id), Some(live.id), "the same session reads as the same one");
    assert!(format!("{live:?}").starts_with("Live { id: SessionId {"), "{live:?}");
    // 21 s ago on the paused clock, told as wall-clock time.
    let attempt = svc.last_attempt().expect("it was started");
    let ago = std::time::SystemTime::now().duration_since(attempt).expect("the attempt is in the past");
    assert!((S(21)..S(23)).contains(&ago), "the attempt was {ago:?} ago");
    assert_eq!(svc.next_retry_after(), None);

    // Lost at 40 s; its reconnects fail until it is unreachable.
    let status = bounded(svc.wait_for(|s| s.state == State::Unreachable)).await;
    assert!(svc.is_unreachable() && !svc.is_running() && !svc.is_healthy() && !svc.is_client_ready());
    assert!(svc.client().is_none() && svc.live().is_none());
    let next = svc.next_retry_after().expect("an unreachable server is still retried");
    assert_eq!(next, std::time::UNIX_EPOCH + Duration::from_millis(status.next_retry_after.unwrap()));
    assert!(next > svc.last_attempt().unwrap());
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_server_then_ends_its_task() {
    let probe = SlowCloses::default();
    let connector: Arc<dyn Connector> = Arc::new(probe.connector(Some(S(5)), None));
    let svc = Service::new(valid(stdio("fs")), connector.clone(), ServiceOptions::default());
    svc.start().await.unwrap();
    let t0 = Instant::now();
    drop(svc);
    // The close takes 5 s: the task stays until it is done, then lets go of all it held.
    tokio::time::sleep(S(4)).await;
    assert_eq!(probe.closes.count(), 0);
    assert!(Arc::strong_count(&connector) > 1, "the task waits for the close");
    tokio::time::sleep(S(2)).await;
    assert_eq!(probe.closes.offsets(t0), [S(5)], "dropping the handle stopped the server");
    assert_eq!(Arc::strong_count(&connector), 1, "and then the task ended");
    assert_eq!(probe.kills.load(Ordering::SeqCst), 0, "gracefully");
}

#[tokio::test(start_paused = true)]
async fn a_ping_or_listing_that_ignores_its_timeout_fails_one_second_after_it() {
    // The session's own calls should end at their timeout (ping_timeout, 10 s);
    // the driver's backstop ends them a second later, and not before.
    struct Deaf {
        ping_takes: Duration,
        listing_takes: Duration,
    }

    #[async_trait::async_trait]
    impl Session for Deaf {
        async fn ping(&self, _timeout: Duration) -> Result<(), Failure> {
            tokio::time::sleep(self.ping_takes).await;
            Ok(())
        }

        fn closed(&self) -> BoxFuture<Failure> {
            never()
        }

        async fn close(&self) -> Result<(), CloseError> {
            Ok(())
        }

        fn peer(&self) -> Option<rmcp::service::Peer<rmcp::RoleClient>> {
            None
        }

        async fn list_tools(&self, _timeout: Duration) -> ToolListing {
            tokio::time::sleep(self.listing_takes).await;
            ToolListing::Listed { count: 0 }
        }
    }

    let ms = Duration::from_millis;
    let connector = |ping_takes, listing_takes| {
        let mut connector = MockConnector::new();
        connector.expect_connect().returning(move |_, _| Ok(Box::new(Deaf { ping_takes, listing_takes })));
        connector
    };
    // Late but within the backstop (10.5 s): they count.
    let svc = service(stdio("late"), connector(ms(10_500), ms(10_500)));
    svc.start().await.unwrap();
    tokio::time::sleep(S(11)).await;
    assert_eq!(
        svc.status().warning.as_deref(),
        Some("offers tools but listed none: it may have started only half-way"),
        "the listing that answered at 10.5 s was taken"
    );
    let report = bounded(svc.check_health()).await;
    assert_eq!(
        (report.health, report.error),
        (Health::Degraded, Some("MCP ping took 10.5s, more than degraded_after (5s)".to_owned()))
    );
    svc.stop().await;

    // Never answering: failed at 11 s.
    let svc = service(stdio("deaf"), connector(S(3600), S(3600)));
    svc.start().await.unwrap();
    let asked = Instant::now();
    let report = bounded(svc.check_health()).await;
    assert_eq!(Instant::now() - asked, S(11));
    assert_eq!(report.health, Health::Unhealthy);
    assert_eq!(report.error.as_deref(), Some("MCP ping failed: no answer to ping within 10s"));
    svc.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_subscription_waits_for_the_next_event_and_ends_with_the_supervisor() {
    let counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let config = SupervisorConfig { event_capacity: 16, ..SupervisorConfig::default() };
    let sup = Supervisor::new(Arc::new(counting_connector(counts)), config);
    let mut waiting = sup.subscribe();
    let mut lagging = sup.subscribe();
    let next = tokio::spawn(async move {
        let first = waiting.recv().await;
        (first, waiting)
    });
    let mut spec = stdio("fs");
    spec.auto_start = true;
    sup.apply(all_valid(vec![spec])).await.unwrap();
    let (first, mut waiting) = bounded(next).await.unwrap();
    match first {
        Some(Received::Event(e)) => assert_eq!((e.server.as_str(), e.event.state), ("fs", State::Starting)),
        other => panic!("expected the first event, got {other:?}"),
    }
    // 20 restarts publish more than the 16 the lagging subscriber can hold.
    assert_eq!(sup.events_dropped(), 0);
    for _ in 0..20 {
        sup.get("fs").unwrap().restart().await.unwrap();
    }
    let missed = match lagging.try_recv() {
        Some(Received::Missed(n)) => n,
        other => panic!("expected to be told of missed events, got {other:?}"),
    };
    assert!(missed > 0);
    assert_eq!(sup.events_dropped(), missed, "its losses are counted once they are learnt");
    sup.shutdown().await;
    drop(sup);
    let rest = bounded(async {
        let mut rest = 0;
        while let Some(received) = waiting.recv().await {
            assert!(matches!(received, Received::Event(_) | Received::Missed(_)));
            rest += 1;
        }
        rest
    })
    .await;
    assert!(rest > 0, "the events after the first were delivered before the stream ended");
}
