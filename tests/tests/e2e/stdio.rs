//! The stdio transport through the supervisor, against the fixture in real processes.

// Sampling and roots are deprecated by SEP-2577 (protocol 2026-07-28); roster
// speaks 2025-11-25 and older, where they are current, and relays them.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::model::{
    ClientCapabilities, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult, ErrorData,
    ListRootsResult, RequestId, SamplingMessage,
};
use roster_core::{FailureKind, Health, Reason, ServerSpec, StartError, State};
use roster_supervisor::{Received, Service, ServiceOptions, Supervisor};
use roster_transport::Session;
use roster_transport::mcp::{Notice, Relay};
use roster_transport_stdio::{Exit, StdioConnector, StdioOptions, StdioSession};

use crate::common::{Tag, TagExt, eventually, fast_config, fast_settings, stdio_transports, valid};

fn options() -> ServiceOptions {
    ServiceOptions { settings: fast_settings(), ..ServiceOptions::default() }
}

fn service(spec: ServerSpec) -> Service {
    Service::new(valid(spec), Arc::new(StdioConnector::new()), options())
}

fn quick_close() -> StdioConnector {
    StdioConnector::with_options(StdioOptions {
        stdin_grace: Duration::from_millis(300),
        term_grace: Duration::from_millis(300),
        kill_grace: Duration::from_secs(2),
    })
}

async fn call(svc: &Service, tool: &'static str, args: serde_json::Value) -> String {
    let peer = svc.client().expect("a live session");
    let params = CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = peer.call_tool(params).await.expect("the call succeeds");
    let json = serde_json::to_value(&result.content).unwrap();
    json[0]["text"].as_str().unwrap_or_default().to_owned()
}

fn failure_kind(err: &StartError) -> Option<FailureKind> {
    match err {
        StartError::Failed(f) => Some(f.kind()),
        StartError::Unreachable { cause, .. } => Some(cause.kind()),
        StartError::AlreadyRunning { .. } | StartError::NeedsCredentials { .. } | StartError::Cancelled => None,
    }
}

#[tokio::test]
async fn start_ping_list_call_and_stop() {
    let tag = Tag::new();
    let svc = service(tag.stdio("fs", &[]));
    svc.start().await.expect("starts");
    assert_eq!(svc.state(), State::Running);
    assert!(svc.is_healthy());
    let status = svc.status();
    assert!(status.pid.is_some());
    assert_eq!(tag.processes(), [status.pid.unwrap()]);

    let report = svc.check_health().await;
    assert_eq!(report.health, Health::Healthy);
    let tools = svc.client().unwrap().list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        ["add", "cwd", "echo", "fail", "getenv", "grow", "header", "log", "progress", "sample", "sleep", "wait"]
    );
    assert_eq!(call(&svc, "add", serde_json::json!({"a": 2, "b": 3})).await, "5");
    assert_eq!(call(&svc, "echo", serde_json::json!({"text": "hi"})).await, "hi");

    let started = Instant::now();
    svc.stop().await;
    assert_eq!(svc.state(), State::Stopped);
    assert!(started.elapsed() < Duration::from_secs(2), "a well-behaved server stops on stdin EOF");
    assert!(svc.client().is_none());
    tag.assert_gone().await;
}

#[tokio::test]
async fn environment_and_working_directory() {
    let tag = Tag::new();
    let mut spec = tag.stdio("env", &[]);
    spec.env.insert("CONFIGURED".into(), "yes".into());
    spec.cwd = Some("/tmp".into());
    spec.inherit_env = false;
    spec.pass_env = vec!["ROSTER_TEST_PASSED".into()];
    let svc = service(spec);
    svc.start().await.unwrap();
    assert_eq!(call(&svc, "getenv", serde_json::json!({"name": "CONFIGURED"})).await, "yes");
    assert_eq!(
        call(&svc, "getenv", serde_json::json!({"name": "HOME"})).await,
        std::env::var("HOME").unwrap_or("<unset>".into())
    );
    assert_eq!(call(&svc, "getenv", serde_json::json!({"name": "CARGO_PKG_NAME"})).await, "<unset>", "not inherited");
    assert_eq!(call(&svc, "cwd", serde_json::json!({})).await, "/tmp");
    svc.stop().await;

    // Inheriting (the default): the parent's variables are there too.
    let mut spec = tag.stdio("env2", &[]);
    spec.env.insert("CONFIGURED".into(), "also".into());
    let svc = service(spec);
    svc.start().await.unwrap();
    assert_eq!(call(&svc, "getenv", serde_json::json!({"name": "CARGO_PKG_NAME"})).await, "roster-tests");
    assert_eq!(call(&svc, "getenv", serde_json::json!({"name": "CONFIGURED"})).await, "also");
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn exit_at_start_is_transient_with_the_stderr_text_and_is_retried() {
    let tag = Tag::new();
    let svc = service(tag.stdio("crashy", &["--stderr", "boom: API_KEY is not set", "--exit-at-start", "3"]));
    let mut events = svc.subscribe();
    let err = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&err), Some(FailureKind::Transient), "{err}");
    let text = err.to_string();
    assert!(text.contains("boom: API_KEY is not set"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
    assert_eq!(svc.state(), State::Failed);
    assert!(svc.status().last_error.unwrap().contains("boom: API_KEY is not set"));
    assert!(svc.next_retry_after().is_some());
    // Retried with backoff (300 ms, then 600 ms).
    assert!(eventually(Duration::from_secs(5), || svc.consecutive_failures() >= 3).await);
    let mut recoveries = 0;
    while let Some(Received::Event(e)) = events.try_recv() {
        recoveries += usize::from(e.event.reason == Some(Reason::RecoveryStarted));
    }
    assert!(recoveries >= 2);
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_crash_while_running_is_noticed_at_once_and_restarted_with_backoff() {
    let tag = Tag::new();
    let svc = service(tag.stdio("dies", &["--exit-after-init", "400"]));
    let mut events = svc.subscribe();
    svc.start().await.unwrap();
    let up = Instant::now();
    // Noticed at once: long before the first health probe (30 s).
    let failed = svc.wait_for(|s| s.state == State::Failed).await;
    assert!(up.elapsed() < Duration::from_secs(2), "noticed after {:?}", up.elapsed());
    assert!(failed.last_error.as_deref().unwrap().contains("exit status: 1"), "{failed:?}");
    assert!(failed.last_error.as_deref().unwrap().contains("exiting 400 ms after initialize"), "{failed:?}");
    assert_eq!(failed.crash_count, 1);
    // First crash: back after the grace period; second: after backoff.
    assert!(eventually(Duration::from_secs(5), || svc.status().crash_count >= 2).await);
    let status = svc.status();
    assert!(status.next_retry_after.is_some() || status.state == State::Starting || status.state == State::Running);
    let mut reasons = Vec::new();
    while let Some(Received::Event(e)) = events.try_recv() {
        reasons.extend(e.event.reason);
    }
    assert!(reasons.contains(&Reason::RecoverySucceeded), "{reasons:?}");
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_transiently_and_is_killed() {
    let tag = Tag::new();
    let mut spec = tag.stdio("mute", &["--never-initialize", "--stderr", "waiting for nothing"]);
    spec.timeout = Some(1);
    let svc = service(spec);
    let started = Instant::now();
    let err = svc.start().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(failure_kind(&err), Some(FailureKind::Transient));
    assert!(err.to_string().contains("no answer to initialize within 1s"), "{err}");
    assert!(err.to_string().contains("waiting for nothing"), "{err}");
    tag.assert_gone().await;
    svc.stop().await;
}

#[tokio::test]
async fn command_not_found_is_permanent_and_not_retried() {
    let svc = service(ServerSpec::stdio("ghost", "/nonexistent/roster-no-such-server"));
    let err = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&err), Some(FailureKind::Permanent));
    assert_eq!(err.to_string(), "failed to start MCP server: command not found: /nonexistent/roster-no-such-server");
    assert_eq!(svc.next_retry_after(), None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(svc.consecutive_failures(), 0);
    assert_eq!(svc.state(), State::Failed);

    let mut spec = ServerSpec::stdio("nowhere", crate::common::FIXTURE);
    spec.cwd = Some("/nonexistent/dir".into());
    let err = service(spec).start().await.unwrap_err();
    assert_eq!(failure_kind(&err), Some(FailureKind::Permanent));
    assert!(err.to_string().contains("/nonexistent/dir"), "{err}");
}

#[tokio::test]
async fn a_server_that_ignores_sigterm_is_killed_within_the_bound() {
    let tag = Tag::new();
    let svc = Service::new(
        valid(tag.stdio("stubborn", &["--ignore-sigterm", "--linger"])),
        Arc::new(quick_close()),
        options(),
    );
    svc.start().await.unwrap();
    let started = Instant::now();
    svc.stop().await;
    let took = started.elapsed();
    // stdin grace (300 ms) + SIGTERM grace (300 ms), then SIGKILL.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(svc.state(), State::Stopped);
    tag.assert_gone().await;
}

#[tokio::test]
async fn the_default_close_sequence_is_bounded() {
    let tag = Tag::new();
    let svc = service(tag.stdio("stubborn", &["--ignore-sigterm", "--linger"]));
    svc.start().await.unwrap();
    let started = Instant::now();
    svc.stop().await;
    let took = started.elapsed();
    // 2 s after stdin EOF, 3 s after SIGTERM, then SIGKILL.
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(8), "{took:?}");
    tag.assert_gone().await;
}

#[tokio::test]
async fn grandchildren_are_gone_after_a_stop() {
    for how in ["inherit", "null"] {
        let tag = Tag::new();
        let svc = service(tag.stdio("wrapper", &["--grandchild", how]));
        svc.start().await.unwrap();
        assert!(
            eventually(Duration::from_secs(2), || tag.processes().len() == 2).await,
            "{how}: server and grandchild"
        );
        svc.stop().await;
        tag.assert_gone().await;
    }
}

#[tokio::test]
async fn grandchildren_are_gone_after_the_server_exits_by_itself() {
    for how in ["inherit", "null"] {
        let tag = Tag::new();
        let svc = service(tag.stdio("wrapper", &["--grandchild", how, "--exit-after-init", "300"]));
        svc.start().await.unwrap();
        let up = Instant::now();
        // Even with the grandchild holding stdout, the death is noticed at once.
        let _ = svc.wait_for(|s| s.state == State::Failed).await;
        assert!(up.elapsed() < Duration::from_secs(2), "{how}: {:?}", up.elapsed());
        svc.stop().await;
        tag.assert_gone().await;
    }
}

/// The session (not the process group) of `pid`, from /proc.
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test]
async fn a_daemon_that_leaves_the_process_group_is_gone_after_a_stop() {
    let tag = Tag::new();
    let svc = service(tag.stdio("daemonizer", &["--daemonize"]));
    svc.start().await.unwrap();
    let server = svc.status().pid.unwrap();
    assert!(eventually(Duration::from_secs(2), || tag.processes().len() == 2).await, "server and daemon");
    let daemon = tag.processes().into_iter().find(|p| *p != server).unwrap();
    assert_ne!(session_of(daemon), session_of(server), "the daemon left the server's session");
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_crash_looping_daemonizer_leaves_no_daemon_behind() {
    let tag = Tag::new();
    let svc = service(tag.stdio("leaky", &["--daemonize", "--exit-after-init", "100"]));
    let _ = svc.start().await;
    // Crash after crash (the first at once, then with a 300 ms backoff...).
    assert!(eventually(Duration::from_secs(5), || svc.status().crash_count >= 3).await);
    // Every crash took its daemon with it: at most the current run's two processes.
    assert!(tag.processes().len() <= 2, "{:?}", tag.processes());
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_daemon_is_gone_when_its_server_exits_by_itself() {
    let tag = Tag::new();
    let svc = service(tag.stdio("once", &["--daemonize", "--exit-after-init", "300"]));
    svc.start().await.unwrap();
    assert!(eventually(Duration::from_secs(2), || tag.processes().len() == 2).await);
    let _ = svc.wait_for(|s| s.state == State::Failed).await;
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_ping_answered_with_meta_is_healthy() {
    let tag = Tag::new();
    let svc = service(tag.stdio("meta", &["--ping-meta"]));
    svc.start().await.unwrap();
    let report = svc.check_health().await;
    assert_eq!((report.health, report.error), (Health::Healthy, None));
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn ten_mib_of_stderr_does_not_stall_the_server() {
    let tag = Tag::new();
    let svc = service(tag.stdio("chatty", &["--stderr-mib", "10"]));
    svc.start().await.expect("the flood is drained while the server starts");
    assert_eq!(call(&svc, "add", serde_json::json!({"a": 1, "b": 1})).await, "2");
    let tail = svc.status().stderr_tail;
    assert!(!tail.is_empty() && tail.len() <= 100, "{}", tail.len());
    assert!(tail.iter().map(String::len).sum::<usize>() <= 64 * 1024);
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn garbage_on_stdout_does_not_break_the_session() {
    let tag = Tag::new();
    let svc = service(tag.stdio("noisy", &["--garbage-lines", "50"]));
    svc.start().await.unwrap();
    assert_eq!(call(&svc, "echo", serde_json::json!({"text": "still fine"})).await, "still fine");
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_slow_ping_fails_the_health_check_without_killing_the_server() {
    let tag = Tag::new();
    let mut settings = fast_settings();
    settings.ping_timeout = roster_core::NonZeroDuration::from_millis(300);
    let svc = Service::new(
        valid(tag.stdio("slow", &["--slow-ping", "2000"])),
        Arc::new(StdioConnector::new()),
        ServiceOptions { settings, ..ServiceOptions::default() },
    );
    svc.start().await.unwrap();
    let report = svc.check_health().await;
    assert_eq!(report.health, Health::Unhealthy);
    assert!(report.error.unwrap().starts_with("MCP ping failed:"));
    assert_eq!(svc.state(), State::Running);
    svc.stop().await;
    tag.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_a_supervisor_with_20_running_servers_leaves_no_process() {
    let tag = Tag::new();
    let sup = Supervisor::new(Arc::new(stdio_transports()), fast_config());
    let specs: Vec<ServerSpec> = (0..20)
        .map(|i| {
            let mut s = tag.stdio(&format!("s{i:02}"), if i % 4 == 0 { &["--grandchild", "null"] } else { &[] });
            s.auto_start = true;
            s
        })
        .collect();
    sup.apply(specs.into_iter().map(valid).collect()).await.unwrap();
    let all_up = eventually(Duration::from_secs(20), || sup.status().iter().all(|s| s.state == State::Running)).await;
    assert!(all_up, "{:?}", sup.status().iter().map(|s| (&s.name, s.state)).collect::<Vec<_>>());
    assert_eq!(tag.processes().len(), 25);
    let report = sup.shutdown().await;
    assert_eq!(report.stopped.len(), 20);
    tag.assert_gone().await;
}

// The adapter on its own: each way a session ends, and what it keeps.

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

async fn open(connector: &StdioConnector, spec: &ServerSpec) -> StdioSession {
    connector.open(spec, soon()).await.expect("the fixture starts")
}

/// The parent of `pid`, from /proc: a stdio server's keeper.
fn parent_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

fn died_of(exit: Option<Exit>) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    match exit {
        Some(Exit::Status(status)) => status.signal(),
        other => panic!("no exit status: {other:?}"),
    }
}

#[tokio::test]
async fn a_session_dropped_without_a_close_leaves_no_process() {
    let tag = Tag::new();
    let session = open(&quick_close(), &tag.stdio("dropped", &["--linger", "--ignore-sigterm"])).await;
    assert_eq!(tag.processes().len(), 1);
    drop(session);
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_kill_ends_the_session_at_once_with_its_exit_status() {
    let tag = Tag::new();
    let session = open(&quick_close(), &tag.stdio("killed", &["--linger", "--ignore-sigterm"])).await;
    assert_eq!(session.exit_status(), None, "running");
    session.kill();
    let failure = tokio::time::timeout(Duration::from_secs(2), session.closed()).await.expect("ends after a kill");
    assert_eq!(failure.kind(), FailureKind::Transient);
    assert!(failure.message.starts_with("server process exited ("), "{failure}");
    // The keeper reports the server's own end: killed by SIGKILL.
    assert_eq!(died_of(session.exit_status()), Some(rustix::process::Signal::KILL.as_raw()));
    tag.assert_gone().await;
    drop(session);
}

#[tokio::test]
async fn a_server_that_ignores_stdin_eof_is_stopped_by_sigterm() {
    let tag = Tag::new();
    let session = open(&quick_close(), &tag.stdio("lingering", &["--linger"])).await;
    let err = session.close().await.expect_err("stdin EOF was not enough");
    assert_eq!(err.to_string(), "server ignored stdin EOF for 300ms; stopped by SIGTERM");
    assert_eq!(died_of(session.exit_status()), Some(rustix::process::Signal::TERM.as_raw()));
    assert!(
        session.stderr_tail().contains(&"fixture: stdin closed; lingering".to_owned()),
        "{:?}",
        session.stderr_tail()
    );
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_keeper_that_does_not_answer_a_kill_is_killed_and_the_server_with_it() {
    let tag = Tag::new();
    let connector = StdioConnector::with_options(StdioOptions {
        stdin_grace: Duration::from_millis(200),
        term_grace: Duration::from_millis(200),
        kill_grace: Duration::from_millis(500),
    });
    let session = open(&connector, &tag.stdio("stuck", &["--linger", "--ignore-sigterm"])).await;
    let keeper = parent_of(session.pid().unwrap()).and_then(rustix::process::Pid::from_raw).unwrap();
    // A stopped keeper holds every signal but SIGKILL.
    rustix::process::kill_process(keeper, rustix::process::Signal::STOP).unwrap();
    let err = session.close().await.expect_err("the keeper had to be killed");
    assert_eq!(err.to_string(), "server ignored SIGTERM and its keeper a kill; both killed with SIGKILL");
    tag.assert_gone().await;
}

#[tokio::test]
async fn a_connect_abandoned_half_way_leaves_no_process() {
    let tag = Tag::new();
    let spec = tag.stdio("mute", &["--never-initialize", "--linger"]);
    let connector = quick_close();
    let opening = tokio::time::timeout(Duration::from_millis(500), connector.open(&spec, soon()));
    assert!(opening.await.is_err(), "the fixture never answers initialize");
    tag.assert_gone().await;
}

#[tokio::test]
async fn stderr_is_kept_line_by_line() {
    let tag = Tag::new();
    let session = open(&quick_close(), &tag.stdio("talkative", &["--stderr", "first words"])).await;
    assert!(
        eventually(Duration::from_secs(2), || session.stderr_tail() == ["first words"]).await,
        "{:?}",
        session.stderr_tail()
    );
    assert!(format!("{session:?}").contains(&format!("pid: {}", session.pid().unwrap())));
    session.close().await.expect("exits on stdin EOF");
    assert_eq!(session.exit_status().map(|e| e.to_string()), Some("exit status: 0".to_owned()));
    tag.assert_gone().await;
}

/// A client that answers every sampling request with the same text.
struct Sampler;

#[async_trait::async_trait]
impl Relay for Sampler {
    fn capabilities(&self) -> ClientCapabilities {
        ClientCapabilities::builder().enable_sampling().build()
    }

    fn notify(&self, _: &str, _: Notice) {}

    async fn create_message(
        &self,
        server: &str,
        _: Option<RequestId>,
        _: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, ErrorData> {
        Ok(CreateMessageResult::new(SamplingMessage::assistant_text(format!("sampled for {server}")), "model".into()))
    }

    async fn create_elicitation(
        &self,
        _: &str,
        _: Option<RequestId>,
        _: ElicitRequestParams,
    ) -> Result<ElicitResult, ErrorData> {
        Err(ErrorData::invalid_request("no elicitation here", None))
    }

    async fn list_roots(&self, _: &str, _: Option<RequestId>) -> Result<ListRootsResult, ErrorData> {
        Err(ErrorData::invalid_request("no roots here", None))
    }
}

#[tokio::test]
async fn requests_from_the_server_reach_the_relay() {
    let tag = Tag::new();
    let connector = quick_close().with_relay(Arc::new(Sampler));
    let session = open(&connector, &tag.stdio("asker", &[])).await;
    let peer = session.peer().unwrap();
    let args = serde_json::json!({"text": "hi"}).as_object().cloned().unwrap();
    let result = peer.call_tool(CallToolRequestParams::new("sample").with_arguments(args)).await.unwrap();
    assert_eq!(serde_json::to_value(&result.content).unwrap()[0]["text"], "sampled for asker");
    session.close().await.unwrap();
    tag.assert_gone().await;
}
