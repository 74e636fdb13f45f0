//! The remote transports (Streamable HTTP and legacy SSE) through the supervisor,
//! against the fixture serving on 127.0.0.1 in a child process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use roster_core::{Challenge, FailureKind, Health, Reason, ServerSpec, ServerType, State};
use roster_supervisor::{Received, Service, ServiceOptions, Subscription, Supervisor};

use crate::common::{FixtureServer, Tag, TagExt, all_transports, eventually, fast_config, fast_settings, valid};

/// Both remote transports: the fixture's mode and the definition's type.
const MODES: [(&str, ServerType); 2] = [("http", ServerType::StreamableHttp), ("sse", ServerType::Sse)];

fn spec(name: &str, server_type: ServerType, url: &str) -> ServerSpec {
    ServerSpec::remote(name, server_type, url)
}

fn service(spec: ServerSpec) -> Service {
    Service::new(
        valid(spec),
        Arc::new(all_transports()),
        ServiceOptions { settings: fast_settings(), ..ServiceOptions::default() },
    )
}

async fn call(svc: &Service, tool: &'static str, args: serde_json::Value) -> String {
    let peer = svc.client().expect("a live session");
    let params = CallToolRequestParams::new(tool).with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = tokio::time::timeout(Duration::from_secs(10), peer.call_tool(params))
        .await
        .expect("the call answers in time")
        .expect("the call succeeds");
    serde_json::to_value(&result.content).unwrap()[0]["text"].as_str().unwrap_or_default().to_owned()
}

fn reasons(events: &mut Subscription) -> Vec<Reason> {
    let mut out = Vec::new();
    while let Some(Received::Event(e)) = events.try_recv() {
        out.extend(e.event.reason);
    }
    out
}

fn failure_kind(svc: &Service) -> Option<FailureKind> {
    svc.status().last_failure
}

#[tokio::test]
async fn connect_ping_list_call_and_stop() {
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &[]).await;
        let svc = service(spec("api", server_type, &server.url()));
        svc.start().await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(svc.state(), State::Connected, "{mode}");
        assert_eq!(svc.check_health().await.health, Health::Healthy, "{mode}");
        let tools = svc.client().unwrap().list_all_tools().await.unwrap();
        assert!(tools.iter().any(|t| t.name == "add"), "{mode}");
        assert_eq!(call(&svc, "add", serde_json::json!({"a": 40, "b": 2})).await, "42", "{mode}");
        let peer = svc.client().unwrap();
        let version = peer.peer_info().map(|i| i.protocol_version.to_string());
        let expected = if mode == "sse" { "2024-11-05" } else { "2025-11-25" };
        assert_eq!(version.as_deref(), Some(expected), "{mode}");
        svc.stop().await;
        assert_eq!(svc.state(), State::Disconnected, "{mode}");
        server.stop().await;
        tag.assert_gone().await;
    }
}

#[tokio::test]
async fn a_401_goes_auth_required_with_the_challenge_in_status_and_the_hook_called() {
    for (mode, server_type) in MODES {
        for how in ["challenge", "bare"] {
            let tag = Tag::new();
            let server = FixtureServer::start(&tag, mode, &["--unauthorized", how]).await;
            let seen: Arc<Mutex<Vec<Challenge>>> = Arc::default();
            let svc = service(spec("api", server_type, &server.url())).with_auth_required_hook({
                let seen = seen.clone();
                move |_: &ServerSpec, c: &Challenge| seen.lock().unwrap().push(c.clone())
            });
            let err = svc.start().await.unwrap_err();
            assert!(matches!(err, roster_core::StartError::NeedsCredentials { .. }), "{mode}/{how}: {err}");
            let status = svc.status();
            assert_eq!(status.state, State::AuthRequired, "{mode}/{how}");
            assert_eq!(seen.lock().unwrap().len(), 1, "{mode}/{how}: the hook ran once");
            let challenge = status.auth_challenge.expect("the challenge is in the status");
            if how == "challenge" {
                let metadata = format!("{}/.well-known/oauth-protected-resource", server.base);
                assert_eq!(challenge.resource_metadata.as_deref(), Some(metadata.as_str()), "{mode}");
                assert_eq!(challenge.scope.as_deref(), Some("mcp:tools"), "{mode}");
                assert_eq!(challenge.realm.as_deref(), Some("roster-fixture"), "{mode}");
            } else {
                assert_eq!(challenge, Challenge::default(), "{mode}: a bare 401 has an empty challenge");
            }
            assert_eq!(svc.next_retry_after(), None, "{mode}/{how}: no automatic retry");
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_403_with_insufficient_scope_is_auth_required() {
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &["--forbidden-scope"]).await;
        let svc = service(spec("api", server_type, &server.url()));
        let _ = svc.start().await;
        let status = svc.status();
        assert_eq!(status.state, State::AuthRequired, "{mode}");
        assert_eq!(status.auth_challenge.and_then(|c| c.scope).as_deref(), Some("mcp:admin"), "{mode}");
        server.stop().await;
    }
}

#[tokio::test]
async fn three_503s_make_the_server_unreachable_with_retry_after_honoured() {
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        // Backoff would say 300 ms, 600 ms, 1.2 s; the server says 2 s.
        let server = FixtureServer::start(&tag, mode, &["--unavailable", "1000", "--retry-after", "2"]).await;
        let svc = service(spec("api", server_type, &server.url()));
        let mut events = svc.subscribe();
        let err = svc.start().await.unwrap_err();
        assert_eq!(failure_kind(&svc), Some(FailureKind::Transient), "{mode}: {err}");
        assert!(err.to_string().contains("503"), "{mode}: {err}");
        let status = svc.wait_for(|s| s.state == State::Unreachable).await;
        assert_eq!(status.consecutive_failures, 3, "{mode}");
        let wait = status.next_retry_after.unwrap() - status.last_attempt.unwrap();
        assert!((2000..2500).contains(&wait), "{mode}: next retry {wait} ms after the attempt");
        let failed = reasons(&mut events).iter().filter(|r| **r == Reason::Failed).count();
        assert_eq!(failed, 3, "{mode}");
        svc.stop().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_refused_port_is_transient() {
    // Bind and drop a listener: nothing listens on the port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (mode, server_type) in MODES {
        let path = if mode == "sse" { "sse" } else { "mcp" };
        let svc = service(spec("api", server_type, &format!("http://127.0.0.1:{port}/{path}")));
        let err = svc.start().await.unwrap_err();
        assert_eq!(failure_kind(&svc), Some(FailureKind::Transient), "{mode}: {err}");
        assert!(err.to_string().contains("cannot connect"), "{mode}: {err}");
        assert!(svc.next_retry_after().is_some(), "{mode}");
        svc.stop().await;
    }
}

#[tokio::test]
async fn a_hanging_server_fails_transiently_within_the_timeout() {
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &["--hang"]).await;
        let mut s = spec("api", server_type, &server.url());
        s.timeout = Some(1);
        let svc = service(s);
        let started = Instant::now();
        let err = svc.start().await.unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{mode}: {took:?}");
        assert_eq!(failure_kind(&svc), Some(FailureKind::Transient), "{mode}: {err}");
        svc.stop().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_foreign_sse_endpoint_is_permanent_and_nothing_is_posted() {
    let tag = Tag::new();
    let server = FixtureServer::start(&tag, "sse", &["--foreign-endpoint"]).await;
    let svc = service(spec("legacy", ServerType::Sse, &server.url()));
    let err = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&svc), Some(FailureKind::Permanent), "{err}");
    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(svc.next_retry_after(), None);
    server.stop().await;
}

#[tokio::test]
async fn a_404_on_initialize_suggests_the_legacy_transport() {
    let tag = Tag::new();
    let server = FixtureServer::start(&tag, "http", &["--not-found"]).await;
    let svc = service(spec("api", ServerType::StreamableHttp, &server.url()));
    let err = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&svc), Some(FailureKind::Permanent));
    assert!(err.to_string().contains("type = \"sse\""), "{err}");
    server.stop().await;

    // And the other way round: an SSE definition against a Streamable HTTP server.
    let server = FixtureServer::start(&tag, "http", &[]).await;
    let svc = service(spec("api", ServerType::Sse, &server.url()));
    let _ = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&svc), Some(FailureKind::Permanent));
    server.stop().await;
}

#[tokio::test]
async fn tls_errors_are_permanent() {
    let tag = Tag::new();
    // A plain-HTTP server answering a TLS handshake: a real rustls error.
    let server = FixtureServer::start(&tag, "http", &[]).await;
    let url = format!("https://127.0.0.1:{}/mcp", server.port);
    let svc = service(spec("api", ServerType::StreamableHttp, &url));
    let err = svc.start().await.unwrap_err();
    assert_eq!(failure_kind(&svc), Some(FailureKind::Permanent), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_sse_stream_fails_the_server_at_once_and_the_retry_reconnects() {
    let tag = Tag::new();
    let server = FixtureServer::start(&tag, "sse", &["--drop-after", "700"]).await;
    let svc = service(spec("legacy", ServerType::Sse, &server.url()));
    let mut events = svc.subscribe();
    svc.start().await.unwrap();
    let up = Instant::now();
    let failed = svc.wait_for(|s| s.state == State::Failed).await;
    let noticed = up.elapsed();
    assert!(noticed < Duration::from_millis(1500), "noticed after {noticed:?}, not at a probe");
    assert!(failed.last_error.unwrap().contains("SSE session"), "stream end named");
    let back = eventually(Duration::from_secs(3), || svc.state() == State::Connected).await;
    assert!(back, "reconnected by the retry: {:?}", svc.status());
    let r = reasons(&mut events);
    assert!(r.contains(&Reason::RecoverySucceeded), "{r:?}");
    svc.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_http_server_is_recovered_without_a_state_change() {
    let tag = Tag::new();
    let mut server = FixtureServer::start(&tag, "http", &[]).await;
    let svc = service(spec("api", ServerType::StreamableHttp, &server.url()));
    svc.start().await.unwrap();
    let mut events = svc.subscribe();
    assert_eq!(call(&svc, "echo", serde_json::json!({"text": "before"})).await, "before");
    server.restart().await;
    // The next request finds the session gone (404), re-initializes once, succeeds.
    assert_eq!(call(&svc, "echo", serde_json::json!({"text": "after"})).await, "after");
    assert_eq!(svc.check_health().await.health, Health::Healthy);
    assert_eq!(svc.state(), State::Connected);
    assert!(reasons(&mut events).is_empty(), "no state change at all");
    // The same through the fixture's own switch.
    reqwest::Client::new().post(format!("{}/control/forget-sessions", server.base)).send().await.unwrap();
    assert_eq!(call(&svc, "add", serde_json::json!({"a": 1, "b": 2})).await, "3");
    assert_eq!(svc.state(), State::Connected);
    svc.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_configured_headers_reach_the_server() {
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &["--require-header", "X-Api-Key:s3cret-value"]).await;
        let mut without = spec("api", server_type, &server.url());
        let err = service(without.clone()).start().await.unwrap_err();
        assert!(err.to_string().contains("403"), "{mode}: {err}");
        without.headers.insert("X-Api-Key".into(), "s3cret-value".into());
        let svc = service(without);
        svc.start().await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        if mode == "http" {
            assert_eq!(call(&svc, "header", serde_json::json!({"name": "x-api-key"})).await, "s3cret-value");
        }
        svc.stop().await;
        server.stop().await;
    }
}

/// A writer that keeps everything logged, for the secrets check.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn header_values_never_appear_in_status_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let secret = "Bearer sup3r-s3cret-t0ken";
    for (mode, server_type) in MODES {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &["--require-header", &format!("Authorization:{secret}")]).await;
        let sup = Supervisor::new(Arc::new(all_transports()), fast_config());
        let mut s = spec("api", server_type, &server.url());
        s.auto_start = true;
        s.headers.insert("Authorization".into(), secret.into());
        sup.apply(vec![valid(s.clone())]).await.unwrap();
        let svc = sup.get("api").unwrap();
        let _ = svc.wait_for(|st| st.state == State::Connected).await;
        let _ = svc.check_health().await;
        // A failing one too: errors must not quote it either.
        s.url = format!("{}/nowhere", server.base);
        sup.apply(vec![valid(s)]).await.unwrap();
        let _ = svc.wait_for(|st| st.state != State::Connected && st.state != State::Stopping).await;
        let status = serde_json::to_string(&sup.status()).unwrap();
        assert!(!status.contains("sup3r-s3cret"), "{mode}: status leaks the header: {status}");
        assert!(status.contains("Authorization"), "{mode}: the header's name is shown");
        let debug = format!("{:?}", svc.spec());
        assert!(!debug.contains("sup3r-s3cret"), "{mode}: Debug leaks it");
        sup.shutdown().await;
        server.stop().await;
    }
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.len() > 1000, "the trace level logged something: {} bytes", logged.len());
    assert!(!logged.contains("sup3r-s3cret"), "a log line leaks the header value");
}

// ----- remote servers cannot exhaust roster ---------------------------------------------

fn rss_kib() -> u64 {
    roster_tests::bench::rss_kib()
}

/// A service whose transports read at most 1 MiB per message.
fn limited(spec: ServerSpec) -> Service {
    let options = roster_http::HttpOptions { max_message_size: 1 << 20, ..roster_http::HttpOptions::default() };
    let clients = roster_http::HttpClients::new(options).expect("HTTP clients");
    let transports = roster_supervisor::Transports::new(
        Arc::new(roster_supervisor::Unsupported),
        Arc::new(roster_transport_http::HttpConnector::new(clients.clone())),
        Arc::new(roster_transport_sse::SseConnector::new(clients)),
    );
    Service::new(
        valid(spec),
        Arc::new(transports),
        ServiceOptions { settings: fast_settings(), ..ServiceOptions::default() },
    )
}

#[tokio::test]
async fn an_endless_event_fails_the_server_transiently_and_never_grows_roster() {
    let cases = [
        ("http", ServerType::StreamableHttp, "get"),
        ("http", ServerType::StreamableHttp, "post"),
        ("sse", ServerType::Sse, "stream"),
    ];
    for (mode, server_type, place) in cases {
        let tag = Tag::new();
        let server = FixtureServer::start(&tag, mode, &["--endless-event", place]).await;
        let svc = limited(spec("flood", server_type, &server.url()));
        let before = rss_kib();
        let started = svc.start().await;
        if place == "post" {
            started.unwrap_or_else(|e| panic!("{place}: {e}"));
            let _ = svc.check_health().await;
        }
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            svc.wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains("larger than 1048576 bytes"))),
        )
        .await
        .unwrap_or_else(|_| panic!("{place}: no failure naming the limit: {:?}", svc.status()));
        assert_eq!(status.last_failure, Some(FailureKind::Transient), "{place}: {status:?}");
        assert!(matches!(status.state, State::Failed | State::Starting), "{place}: {status:?}");
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 64 * 1024, "{place}: roster grew by {grown} KiB");
        svc.stop().await;
        server.stop().await;
        tag.assert_gone().await;
    }
}
