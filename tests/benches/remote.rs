//! Remote benchmarks, all in one run against the fixture serving Streamable HTTP
//! on 127.0.0.1 in a child process.
//!
//! 1. connect + initialize + ping + close through roster against a bare rmcp client.
//! 2. the time to a classified failure for a 401 and a 503, and the cost of the
//!    classification itself.
//! 3. 1,000 remote servers under one supervisor, pinged every second for a
//!    minute: the supervisor's RSS per server and its CPU time, scaled to the
//!    default 30 s interval; the same load as bare rmcp sessions, and as rmcp's
//!    service layer over the thinnest Streamable HTTP transport (`floor`), each
//!    in a process of its own.
//!
//! Run: `cargo bench -p roster-tests --bench remote` (figures go to BENCHMARKS.md).
//! `ROSTER_BENCH_SCALE_SECS` shortens the scale run (default 60).

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use roster_core::{NonZeroDuration, ServerSpec, ServerType, Settings, State, ValidSpec};
use roster_http::classify::{Phase, StatusInfo, classify_status};
use roster_http::{HttpClients, HttpOptions};
use roster_supervisor::{Connector, Service, ServiceOptions, Supervisor, SupervisorConfig, Transports, Unsupported};
use roster_tests::bench::{bare_ping_cycle, median, ms, rss_kib};
use roster_transport_http::HttpConnector;
use tokio::io::AsyncBufReadExt;

const FIXTURE: &str = env!("CARGO_BIN_EXE_roster-fixture");
const ROUNDS: usize = 50;

struct Fixture {
    _child: tokio::process::Child,
    url: String,
}

async fn fixture(switches: &[&str]) -> Fixture {
    let mut child = tokio::process::Command::new(FIXTURE)
        .arg("http")
        .args(switches)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("fixture");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next_line().await.expect("read").expect("line");
    let base = line.strip_prefix("listening on ").expect("listening").to_owned();
    Fixture { _child: child, url: format!("{base}/mcp") }
}

async fn roster_cycle(svc: &Service) -> Duration {
    let t = Instant::now();
    svc.start().await.expect("start");
    assert!(svc.check_health().await.error.is_none());
    svc.stop().await;
    t.elapsed()
}

/// A bare rmcp client as its docs build one: `from_uri`, which makes a reqwest
/// client (and its TLS configuration) for every transport.
async fn bare_cycle(url: &str) -> Duration {
    bare_ping_cycle(|| StreamableHttpClientTransport::from_uri(url.to_owned())).await
}

/// A bare rmcp client on a shared reqwest client (rmcp's own reqwest backend), the
/// like-for-like comparison with roster's shared client.
async fn bare_shared_cycle(client: &reqwest::Client, url: &str) -> Duration {
    let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    bare_ping_cycle(|| StreamableHttpClientTransport::with_client(client.clone(), config)).await
}

/// The same load without roster: `servers` rmcp client sessions over the
/// transports `make` builds, each pinged every second by a plain task for `secs`.
/// Returns RSS KiB per session.
async fn rmcp_scale<T, E, A>(servers: usize, secs: u64, mut make: impl FnMut() -> T) -> f64
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let before = rss_kib();
    let mut sessions = Vec::new();
    for _ in 0..servers {
        let running = roster_transport::mcp::client_config(roster_transport::mcp::PROTOCOL_VERSION)
            .serve(make())
            .await
            .expect("initialize");
        sessions.push(running);
    }
    let failed = Arc::new(AtomicUsize::new(0));
    let pingers: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (peer, failed) = (s.peer().clone(), failed.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if roster_transport::mcp::ping(&peer, Duration::from_secs(10)).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = rss_kib();
    for p in pingers {
        p.abort();
    }
    for s in sessions {
        let _ = s.cancel().await;
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "pings failed");
    after.saturating_sub(before) as f64 / servers as f64
}

/// Bare rmcp sessions on one shared client.
async fn bare_scale(url: &str, servers: usize, secs: u64) -> f64 {
    let client = plain_client();
    rmcp_scale(servers, secs, || {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.to_owned());
        StreamableHttpClientTransport::with_client(client.clone(), config)
    })
    .await
}

async fn time_to_failure(connector: &HttpConnector, url: &str) -> Duration {
    let spec = ServerSpec::remote("bench", ServerType::StreamableHttp, url);
    let t = Instant::now();
    let result = connector.connect(&spec, Instant::now() + Duration::from_secs(10)).await;
    let took = t.elapsed();
    assert!(result.is_err());
    took
}

fn proc_stat() -> (u64, u64) {
    // utime and stime, in clock ticks (fields 14 and 15 of /proc/self/stat).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (get(11), get(12))
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

async fn scale(url: &str, servers: usize, secs: u64) {
    let transports = http_only(HttpConnector::new(HttpClients::new(HttpOptions::default()).expect("clients")));
    let settings = Settings { health_check_interval: NonZeroDuration::from_secs(1), ..Settings::default() };
    let config = SupervisorConfig { settings, max_concurrent_connects: 50, ..SupervisorConfig::default() };
    let before = rss_kib();
    let sup = Supervisor::new(Arc::new(transports), config);
    let specs: Vec<ValidSpec> = (0..servers)
        .map(|i| {
            let mut s = ServerSpec::remote(format!("r{i:04}"), ServerType::StreamableHttp, url);
            s.auto_start = true;
            s.validated().expect("a valid definition")
        })
        .collect();
    let t = Instant::now();
    sup.apply(specs).await.expect("apply");
    while !sup.status().iter().all(|s| s.state == State::Connected) {
        let failed = sup.status().iter().filter(|s| s.state == State::Failed).count();
        assert!(failed == 0, "{failed} servers failed to connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected_after = t.elapsed();
    let mut events = sup.subscribe();
    let (u0, s0) = proc_stat();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = start.elapsed().as_secs_f64();
    let (u1, s1) = proc_stat();
    let cpu = ((u1 - u0) + (s1 - s0)) as f64 / ticks_per_second();
    let after = rss_kib();
    let mut unhealthy = 0;
    while let Some(roster_supervisor::Received::Event(e)) = events.try_recv() {
        unhealthy += usize::from(e.event.health == roster_core::Health::Unhealthy);
    }
    let healthy = sup.status().iter().filter(|s| s.health == roster_core::Health::Healthy).count();
    let per_minute_at_1s = cpu * 60.0 / wall;
    println!(
        "{servers} Streamable HTTP servers: connected after {}; {healthy} healthy after {secs} s of pings every 1 s ({unhealthy} unhealthy events)",
        ms(connected_after)
    );
    println!(
        "  supervisor RSS {before} KiB before, {after} KiB with {servers} connected: {:.1} KiB per server",
        (after.saturating_sub(before)) as f64 / servers as f64
    );
    println!(
        "  CPU {cpu:.2} core-seconds over {wall:.1} s = {per_minute_at_1s:.2} core-seconds per minute at a 1 s interval, {:.3} at the default 30 s",
        per_minute_at_1s / 30.0
    );
    sup.shutdown().await;
}

/// rmcp's fixed cost per session, apart from its Streamable HTTP worker: rmcp's
/// service layer (`serve`, `Peer`) over the thinnest transport that can carry
/// initialize and ping — each message one POST, the session id kept, the reply
/// (JSON or an SSE stream) queued for `receive`; no `GET` stream, no channels, no
/// session recovery, no error typing. Not a transport for use: a measuring stick
/// for how far below rmcp's own client a session can go while rmcp is the client.
mod floor {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, PoisonError};

    use futures::StreamExt;
    use rmcp::RoleClient;
    use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
    use tokio::sync::Notify;

    struct Shared {
        inbox: Mutex<VecDeque<RxJsonRpcMessage<RoleClient>>>,
        arrived: Notify,
        session: Mutex<Option<Arc<str>>>,
    }

    struct Thin {
        client: reqwest::Client,
        url: Arc<str>,
        shared: Arc<Shared>,
    }

    async fn post(client: reqwest::Client, url: Arc<str>, shared: Arc<Shared>, body: Vec<u8>) -> std::io::Result<()> {
        let session = shared.session.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut request = client
            .post(&*url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .body(body);
        if let Some(id) = session {
            request = request
                .header("mcp-session-id", &*id)
                .header("mcp-protocol-version", roster_transport::mcp::PROTOCOL_VERSION.as_str());
        }
        let response =
            request.send().await.map_err(std::io::Error::other)?.error_for_status().map_err(std::io::Error::other)?;
        if let Some(id) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            *shared.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(id.into());
        }
        if response.status() == reqwest::StatusCode::ACCEPTED {
            return Ok(());
        }
        let is_sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if is_sse {
            let mut events = sse_stream::SseStream::from_bytes_stream(response.bytes_stream());
            while let Some(event) = events.next().await {
                let event = event.map_err(std::io::Error::other)?;
                if let Some(data) = event.data.filter(|d| !d.is_empty()) {
                    deliver(&shared, serde_json::from_str(&data)?);
                }
            }
        } else {
            deliver(&shared, serde_json::from_slice(&response.bytes().await.map_err(std::io::Error::other)?)?);
        }
        Ok(())
    }

    fn deliver(shared: &Shared, message: RxJsonRpcMessage<RoleClient>) {
        shared.inbox.lock().unwrap_or_else(PoisonError::into_inner).push_back(message);
        shared.arrived.notify_one();
    }

    impl rmcp::transport::Transport<RoleClient> for Thin {
        type Error = std::io::Error;

        fn send(
            &mut self,
            item: TxJsonRpcMessage<RoleClient>,
        ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
            let body = serde_json::to_vec(&item);
            let (client, url, shared) = (self.client.clone(), self.url.clone(), self.shared.clone());
            async move { post(client, url, shared, body?).await }
        }

        fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
            let shared = self.shared.clone();
            async move {
                loop {
                    if let Some(message) = shared.inbox.lock().unwrap_or_else(PoisonError::into_inner).pop_front() {
                        return Some(message);
                    }
                    shared.arrived.notified().await;
                }
            }
        }

        async fn close(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `servers` sessions over [`Thin`] under the same load as the bare ones.
    pub(crate) async fn scale(url: &str, servers: usize, secs: u64) -> f64 {
        let client = super::plain_client();
        let url: Arc<str> = url.into();
        super::rmcp_scale(servers, secs, || Thin {
            client: client.clone(),
            url: url.clone(),
            shared: Arc::new(Shared {
                inbox: Mutex::new(VecDeque::new()),
                arrived: Notify::new(),
                session: Mutex::new(None),
            }),
        })
        .await
    }
}

/// The reqwest client roster uses for `http://` servers, for the bare runs.
fn plain_client() -> reqwest::Client {
    HttpClients::new(HttpOptions::default()).expect("clients").for_url("http://127.0.0.1/").expect("client")
}

fn http_only(connector: HttpConnector) -> Transports {
    Transports::new(Arc::new(Unsupported), Arc::new(connector), Arc::new(Unsupported))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if let Ok(which) = std::env::var("ROSTER_BENCH_SCALE") {
        let secs = std::env::var("ROSTER_BENCH_SCALE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        rt.block_on(async {
            let server = fixture(&[]).await;
            if which == "bare" {
                let per = bare_scale(&server.url, 1000, secs).await;
                println!("  the same 1000 sessions as bare rmcp clients on a shared client, pinged every 1 s by plain tasks (own process): {per:.1} KiB per session");
            } else if which == "floor" {
                let per = floor::scale(&server.url, 1000, secs).await;
                println!("  the same 1000 sessions as rmcp's service layer over the thinnest Streamable HTTP transport (own process): {per:.1} KiB per session");
            } else {
                scale(&server.url, 1000, secs).await;
            }
        });
        return;
    }
    rt.block_on(async {
        let ok = fixture(&[]).await;
        let connector = HttpConnector::new(HttpClients::new(HttpOptions::default()).expect("clients"));
        let transports = http_only(connector.clone());
        let svc = Service::new(
            ServerSpec::remote("bench", ServerType::StreamableHttp, &ok.url).validated().expect("valid"),
            Arc::new(transports),
            ServiceOptions::default(),
        );
        let shared = reqwest::Client::new();
        let _ = roster_cycle(&svc).await;
        let _ = bare_cycle(&ok.url).await;
        let _ = bare_shared_cycle(&shared, &ok.url).await;
        let (mut roster, mut bare, mut bare_shared) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            roster.push(roster_cycle(&svc).await);
            bare_shared.push(bare_shared_cycle(&shared, &ok.url).await);
            bare.push(bare_cycle(&ok.url).await);
        }
        let (r, bs, b) = (median(roster), median(bare_shared), median(bare));
        println!(
            "connect+initialize+ping+close over Streamable HTTP, median of {ROUNDS}: roster {}, bare rmcp on a shared client {} (ratio {:.3}), bare rmcp from_uri {} (ratio {:.3})",
            ms(r),
            ms(bs),
            r.as_secs_f64() / bs.as_secs_f64(),
            ms(b),
            r.as_secs_f64() / b.as_secs_f64()
        );

        let unauthorized = fixture(&["--unauthorized", "challenge"]).await;
        let unavailable = fixture(&["--unavailable", "1000000", "--retry-after", "5"]).await;
        let mut t401 = Vec::new();
        let mut t503 = Vec::new();
        for _ in 0..ROUNDS {
            t401.push(time_to_failure(&connector, &unauthorized.url).await);
            t503.push(time_to_failure(&connector, &unavailable.url).await);
        }
        let info401 = StatusInfo {
            status: 401,
            www_authenticate: vec![r#"Bearer realm="x", resource_metadata="https://x/.well-known/oauth-protected-resource", scope="a b""#.into()],
            retry_after: None,
        };
        let info503 = StatusInfo { status: 503, www_authenticate: vec![], retry_after: Some("5".into()) };
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(classify_status(std::hint::black_box(&info401), Phase::StreamableInitialize));
        }
        let c401 = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(classify_status(std::hint::black_box(&info503), Phase::StreamableInitialize));
        }
        let c503 = t.elapsed() / n;
        println!(
            "connect to a classified failure, median of {ROUNDS}: 401 {}, 503 {}; classification alone: 401 {:.2} µs, 503 {:.2} µs",
            ms(median(t401)),
            ms(median(t503)),
            c401.as_secs_f64() * 1e6,
            c503.as_secs_f64() * 1e6
        );
        drop((unauthorized, unavailable));

        drop(ok);
        // Each scale run in a process of its own, so that none inherits
        // another's freed memory.
        for which in ["roster", "bare", "floor"] {
            let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
                .env("ROSTER_BENCH_SCALE", which)
                .output()
                .expect("the scale run");
            print!("{}", String::from_utf8_lossy(&out.stdout));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    });
}
