//! `roster serve` against the servers behind it, in one run:
//!
//! 1. a `tools/call` of a trivial tool through `roster serve`, straight to the
//!    fixture, through a byte relay that parses nothing (the fixture's `pipe`
//!    and `tcp-pipe`) and through a bare rmcp relay (`rmcp-proxy` and
//!    `rmcp-proxy-http`), over stdio and over Streamable HTTP: p50 and p99, and
//!    the CPU time per call of each process;
//! 2. `tools/list` of 100 servers with 20 tools each (in-process servers behind
//!    the gateway library): time and bytes;
//! 3. 1,000 concurrent calls spread over 10 upstream servers, through `roster
//!    serve --http` and straight to the servers: throughput, roster's peak RSS,
//!    and the CPU time per call of the servers, the client and roster.
//!
//! Run: `cargo bench -p roster-cli --bench serve` (figures go to BENCHMARKS.md).

#![allow(missing_docs)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    RequestId, ServerCapabilities, ServerConfig, ServerJsonRpcMessage, ServerResult, Tool,
};
use rmcp::service::{Peer, RequestContext, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use roster_core::{Failure, ServerSpec};
use roster_serve::{Gateway, GatewayOptions, Hub};
use roster_supervisor::{
    BoxFuture, CloseError, Connector, Session, Supervisor, SupervisorConfig, Transports, Unsupported,
};
use roster_tests::bench::Reaped;
use roster_transport::mcp::{self, McpClient, Relay};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// The fixture over Streamable HTTP, and its MCP URL.
fn fixture_http(fixture: &Path) -> (Reaped, String) {
    let (child, base) = roster_tests::bench::fixture_http(fixture, &[]);
    (child, format!("{base}/mcp"))
}

/// A byte relay in front of the fixture at `url`, and its base URL.
fn tcp_pipe(fixture: &Path, url: &str) -> (Reaped, String) {
    let target = url.trim_start_matches("http://").trim_end_matches("/mcp");
    roster_tests::bench::fixture_listening(fixture, &["tcp-pipe", target])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn roster_serve_http(config: &Path) -> (Reaped, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(ROSTER)
        .args(["--config", config.to_str().unwrap(), "serve", "--no-watch", "--http", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("roster serve");
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < until, "roster serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Reaped(child), format!("http://{addr}/mcp"))
}

async fn http_client(url: &str) -> RunningService<RoleClient, ()> {
    let http = roster_http::HttpClients::new(roster_http::HttpOptions::default()).unwrap().for_url(url).unwrap();
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        http,
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    ().serve(transport).await.expect("initialize over HTTP")
}

fn echo(name: &str, text: &str) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(json!({"text": text}).as_object().cloned().unwrap())
}

/// Sorted latencies of `n` sequential calls of `tool`, after a warm-up.
async fn latencies(client: &RunningService<RoleClient, ()>, tool: &str, n: usize) -> Vec<Duration> {
    for _ in 0..50 {
        client.call_tool(echo(tool, "warm")).await.expect("call");
    }
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = client.call_tool(echo(tool, &i.to_string())).await.expect("call");
        all.push(t.elapsed());
        assert_eq!(r.is_error, Some(false));
    }
    all.sort();
    all
}

/// Waits until `client` lists `tool`.
async fn wait_for_tool(client: &RunningService<RoleClient, ()>, tool: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let tools = client.list_all_tools().await.expect("tools/list");
        if tools.iter().any(|t| t.name == tool) {
            return;
        }
        assert!(Instant::now() < until, "{tool} never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints the three sets of latencies of one transport: straight to the
/// fixture, through a byte relay that parses nothing (one more process and
/// nothing else: the floor of any relay), and through `roster serve`.
fn report(what: &str, direct: &[Duration], relay: &[Duration], through: &[Duration]) {
    let p50 = |l: &[Duration]| percentile(l, 0.5);
    let ratio = |l: &[Duration]| p50(l).as_secs_f64() / p50(direct).as_secs_f64();
    println!(
        "{what}: direct p50 {} p99 {} | through a byte relay p50 {} p99 {} (ratio {:.2}, added {}) | \
         through roster serve p50 {} p99 {} | p50 ratio {:.2}, added p50 {}; roster serve against the byte relay {:.2}x",
        us(p50(direct)),
        us(percentile(direct, 0.99)),
        us(p50(relay)),
        us(percentile(relay, 0.99)),
        ratio(relay),
        us(p50(relay).saturating_sub(p50(direct))),
        us(p50(through)),
        us(percentile(through, 0.99)),
        ratio(through),
        us(p50(through).saturating_sub(p50(direct))),
        p50(through).as_secs_f64() / p50(relay).as_secs_f64(),
    );
}

const CALLS: usize = 2000;

/// Calls `tool` through a client of `program args` over stdio: the latencies,
/// and the CPU time the program itself spent on them.
async fn over_stdio(program: &Path, args: &[&str], tool: &str) -> (Vec<Duration>, Duration) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    let (process, _) = TokioChildProcess::builder(cmd).stderr(Stdio::null()).spawn().unwrap();
    let pid = process.id().unwrap_or(0);
    let client = ().serve(process).await.expect("initialize");
    wait_for_tool(&client, tool).await;
    let before = cpu_time(pid);
    let l = latencies(&client, tool, CALLS).await;
    let cpu = cpu_time(pid) - before;
    client.cancel().await.unwrap();
    (l, cpu)
}

/// Calls `tool` through a client of the Streamable HTTP endpoint at `url`: the
/// latencies.
async fn over_http(url: &str, tool: &str) -> Vec<Duration> {
    let client = http_client(url).await;
    wait_for_tool(&client, tool).await;
    let l = latencies(&client, tool, CALLS).await;
    client.cancel().await.unwrap();
    l
}

/// Prints the latencies through the bare rmcp relay against the direct ones
/// and roster serve's.
fn report_bare(direct: &[Duration], bare: &[Duration], through: &[Duration]) {
    let p50 = |l: &[Duration]| percentile(l, 0.5);
    println!(
        "  through a bare rmcp relay (rmcp's server and client, nothing else): p50 {} p99 {}, added {}; \
         roster serve against it {:.2}x",
        us(p50(bare)),
        us(percentile(bare, 0.99)),
        us(p50(bare).saturating_sub(p50(direct))),
        p50(through).as_secs_f64() / p50(bare).as_secs_f64(),
    );
}

async fn latency(fixture: &Path, dir: &Path) {
    // stdio: the fixture spawned by the client, against roster serve spawned by the
    // client with the fixture behind it over stdio.
    let fx = fixture.to_str().unwrap();
    let (direct, _) = over_stdio(fixture, &["stdio"], "echo").await;
    let (relay, _) = over_stdio(fixture, &["pipe", fx, "stdio"], "echo").await;
    let (bare, bare_cpu) = over_stdio(fixture, &["rmcp-proxy", fx, "stdio"], "echo").await;
    let config = dir.join("stdio.toml");
    std::fs::write(&config, format!("[servers.fx]\ncommand = {fx:?}\nargs = [\"stdio\"]\nauto_start = true\n"))
        .unwrap();
    let (through, roster_cpu) =
        over_stdio(Path::new(ROSTER), &["--config", config.to_str().unwrap(), "serve", "--no-watch"], "fx__echo").await;
    report("tools/call over stdio", &direct, &relay, &through);
    report_bare(&direct, &bare, &through);
    println!(
        "  CPU per call: the bare rmcp relay {}, roster serve {}",
        us(bare_cpu / CALLS as u32),
        us(roster_cpu / CALLS as u32),
    );

    // Streamable HTTP: the fixture over HTTP, against roster serve --http with the
    // same fixture behind it over HTTP.
    let (server, url) = fixture_http(fixture);
    let fixture_cpu = || cpu_time(server.id());
    let before = fixture_cpu();
    let direct = over_http(&url, "echo").await;
    let fixture_direct = fixture_cpu() - before;
    let relay = {
        let (_pipe, base) = tcp_pipe(fixture, &url);
        over_http(&format!("{base}/mcp"), "echo").await
    };
    let (proxy, proxy_base) = roster_tests::bench::fixture_listening(fixture, &["rmcp-proxy-http", &url]);
    let (before, proxy_before) = (fixture_cpu(), cpu_time(proxy.id()));
    let bare = over_http(&format!("{proxy_base}/mcp"), "echo").await;
    let (fixture_bare, proxy_cpu) = (fixture_cpu() - before, cpu_time(proxy.id()) - proxy_before);
    drop(proxy);
    let config = dir.join("http.toml");
    std::fs::write(&config, format!("[servers.fx]\nurl = {url:?}\nauto_start = true\n")).unwrap();
    let (roster, roster_url) = roster_serve_http(&config);
    let (before, roster_before) = (fixture_cpu(), cpu_time(roster.id()));
    let through = over_http(&roster_url, "fx__echo").await;
    let (fixture_through, roster_through) = (fixture_cpu() - before, cpu_time(roster.id()) - roster_before);
    report("tools/call over Streamable HTTP", &direct, &relay, &through);
    report_bare(&direct, &bare, &through);
    let per_call = |d: Duration| us(d / CALLS as u32);
    println!(
        "  CPU per call: the fixture {} called directly, {} through the bare rmcp relay, {} through roster serve; \
         the bare rmcp relay {}, roster serve {}",
        per_call(fixture_direct),
        per_call(fixture_bare),
        per_call(fixture_through),
        per_call(proxy_cpu),
        per_call(roster_through)
    );
}

// ----- 2. tools/list of 100 servers × 20 tools, in process -----------------------------

#[derive(Clone)]
struct Toolbox;

impl ServerHandler for Toolbox {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema =
            json!({"type": "object", "properties": {"text": {"type": "string", "description": "what to echo"}}});
        let schema = Arc::new(schema.as_object().cloned().unwrap_or_default());
        let tools = (0..20)
            .map(|i| {
                Tool::new(format!("tool_{i:02}"), format!("Tool number {i}, which echoes its text"), schema.clone())
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request.arguments.as_ref().and_then(|a| a.get("text")).and_then(|t| t.as_str()).unwrap_or("");
        Ok(CallToolResult::success(vec![ContentBlock::text(text.to_owned())]).into())
    }
}

struct InProcess {
    relay: Arc<dyn Relay>,
}

#[async_trait]
impl Connector for InProcess {
    async fn connect(&self, spec: &ServerSpec, deadline: std::time::Instant) -> Result<Box<dyn Session>, Failure> {
        let (client_end, server_end) = tokio::io::duplex(256 * 1024);
        let stop = CancellationToken::new();
        let server_stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(running) = Toolbox.serve_with_ct(tokio::io::split(server_end), server_stop).await {
                let _ = running.waiting().await;
            }
        });
        let cancel = CancellationToken::new();
        let handshake = mcp::Client::new(&spec.name, mcp::PROTOCOL_VERSION, Some(self.relay.clone()))
            .serve_with_ct(tokio::io::split(client_end), cancel.clone());
        let running = tokio::time::timeout_at(deadline.into(), handshake)
            .await
            .map_err(|_| Failure::transient("timeout"))?
            .map_err(|e| Failure::transient(e.to_string()))?;
        Ok(Box::new(InSession { client: McpClient::new(running, cancel), stop }))
    }
}

struct InSession {
    client: McpClient,
    stop: CancellationToken,
}

#[async_trait]
impl Session for InSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| Failure::transient(e.to_string()))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let ended = self.client.ended();
        Box::pin(async move {
            ended.await;
            Failure::transient("gone")
        })
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.stop.cancel();
        self.client.close_within(Duration::from_secs(1), "in-process").await
    }

    fn peer(&self) -> Option<Peer<RoleClient>> {
        Some(self.client.peer().clone())
    }

    fn classify(&self, error: &ServiceError) -> Failure {
        Failure::transient(error.to_string())
    }
}

async fn big_list() {
    let hub = Hub::new();
    let connector = Arc::new(InProcess { relay: hub.clone() });
    let transports = Transports::new(connector, Arc::new(Unsupported), Arc::new(Unsupported));
    let config = SupervisorConfig { max_concurrent_connects: 100, ..SupervisorConfig::default() };
    let sup = Arc::new(Supervisor::new(Arc::new(transports), config));
    let gateway = Gateway::new(sup.clone(), hub, GatewayOptions::default());
    let sync = gateway.clone();
    tokio::spawn(async move { sync.run().await });
    let specs = (0..100)
        .map(|i| {
            let mut s = ServerSpec::stdio(format!("server-{i:03}"), "in-process");
            s.auto_start = true;
            s.validated().unwrap()
        })
        .collect();
    sup.apply(specs).await.unwrap();
    let (down, up) = tokio::io::duplex(4 << 20);
    let served = gateway.clone();
    tokio::spawn(async move {
        if let Ok(running) = served.serve(tokio::io::split(up)).await {
            let _ = running.waiting().await;
        }
    });
    let client = ().serve(tokio::io::split(down)).await.expect("initialize");
    let until = Instant::now() + Duration::from_secs(30);
    while gateway.catalog().tools().len() < 2000 {
        assert!(Instant::now() < until, "only {} tools listed", gateway.catalog().tools().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let result = client.list_tools(None).await.expect("tools/list");
        times.push(t.elapsed());
        bytes = serde_json::to_vec(&result).unwrap().len();
        assert_eq!(result.tools.len(), 2001);
    }
    times.sort();
    // Where the time goes: roster's part (copying the table, writing the JSON)
    // and the client's (reading the JSON back into rmcp's types).
    let last = client.list_tools(None).await.expect("tools/list");
    let text = serde_json::to_vec(&last).unwrap();
    // What rmcp's client reads is the whole JSON-RPC message, an untagged enum
    // of every result type, which serde first buffers and then tries in turn.
    let message = ServerJsonRpcMessage::response(ServerResult::ListToolsResult(last), RequestId::Number(7));
    let line = serde_json::to_vec(&message).unwrap();
    let (mut copy, mut write, mut read, mut read_message) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        let tools = gateway.catalog().tools().to_vec();
        copy.push(t.elapsed());
        std::hint::black_box(tools);
        let t = Instant::now();
        std::hint::black_box(serde_json::to_vec(&message).unwrap());
        write.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(serde_json::from_slice::<rmcp::model::ListToolsResult>(&text).unwrap());
        read.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(serde_json::from_slice::<ServerJsonRpcMessage>(&line).unwrap());
        read_message.push(t.elapsed());
    }
    for v in [&mut copy, &mut write, &mut read, &mut read_message] {
        v.sort();
    }
    println!(
        "tools/list of 100 servers x 20 tools (2,001 with roster_status), in process: round trip p50 {} p99 {}, {} KiB; \
         of it roster's table copy p50 {} + JSON writing p50 {}, the client's JSON reading p50 {} \
         (as rmcp's client reads it, the whole JSON-RPC message: p50 {})",
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99)),
        bytes / 1024,
        us(percentile(&copy, 0.5)),
        us(percentile(&write, 0.5)),
        us(percentile(&read, 0.5)),
        us(percentile(&read_message, 0.5)),
    );
    client.cancel().await.unwrap();
    sup.shutdown().await;
}

// ----- 3. 1,000 concurrent calls over 10 upstream servers ------------------------------

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user and system, every thread) a process has used, from
/// `/proc/PID/stat`, in clock ticks of 10 ms (Linux's `USER_HZ`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which sits in parentheses.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time used by the processes `pids` together.
fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| cpu_time(p)).sum()
}

async fn concurrent(fixture: &Path, dir: &Path) {
    const SERVERS: usize = 10;
    const TOTAL: usize = 1000;
    let servers: Vec<(Reaped, String)> = (0..SERVERS).map(|_| fixture_http(fixture)).collect();

    // Straight to the servers: one client per server, TOTAL / SERVERS calls each, all at once.
    let mut clients = Vec::new();
    for (_, url) in &servers {
        clients.push(http_client(url).await);
    }
    let upstream: Vec<u32> = servers.iter().map(|(child, _)| child.id()).collect();
    let me = std::process::id();
    let (fixtures_before, me_before) = (cpu_of(&upstream), cpu_time(me));
    let mut direct_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let calls = (0..TOTAL).map(|i| clients[i % SERVERS].call_tool(echo("echo", "x")));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.expect("call").is_error, Some(false));
        }
        direct_best = direct_best.min(t.elapsed());
    }
    let direct_cpu = (cpu_of(&upstream) - fixtures_before, cpu_time(me) - me_before);
    for c in clients {
        c.cancel().await.unwrap();
    }

    let mut toml = String::from("[defaults]\nauto_start = true\n");
    for (i, (_, url)) in servers.iter().enumerate() {
        toml.push_str(&format!("[servers.s{i}]\nurl = {url:?}\n"));
    }
    let config = dir.join("ten.toml");
    std::fs::write(&config, toml).unwrap();
    let (roster, url) = roster_serve_http(&config);
    let client = http_client(&url).await;
    wait_for_tool(&client, &format!("s{}__echo", SERVERS - 1)).await;
    let names: Vec<String> = (0..SERVERS).map(|i| format!("s{i}__echo")).collect();
    let (fixtures_before, me_before, roster_before) = (cpu_of(&upstream), cpu_time(me), cpu_time(roster.0.id()));
    let mut through_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let calls = (0..TOTAL).map(|i| client.call_tool(echo(&names[i % SERVERS], "x")));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.expect("call").is_error, Some(false));
        }
        through_best = through_best.min(t.elapsed());
    }
    let through_cpu =
        (cpu_of(&upstream) - fixtures_before, cpu_time(me) - me_before, cpu_time(roster.0.id()) - roster_before);
    let rss = peak_rss_kib(roster.0.id());
    client.cancel().await.unwrap();
    let per_sec = |d: Duration| TOTAL as f64 / d.as_secs_f64();
    // On a machine whose cores are all busy, throughput is set by the CPU time
    // each call costs the client, the servers and roster together.
    let per_call = |d: Duration| us(d / (3 * TOTAL as u32));
    println!(
        "1,000 concurrent calls over 10 servers: direct {:.0} calls/s, through roster serve {:.0} calls/s ({:.2}x of direct); roster serve peak RSS {} KiB",
        per_sec(direct_best),
        per_sec(through_best),
        per_sec(through_best) / per_sec(direct_best),
        rss
    );
    println!(
        "  CPU per call: direct: servers {} + client {}; through roster serve: servers {} + client {} + roster {}",
        per_call(direct_cpu.0),
        per_call(direct_cpu.1),
        per_call(through_cpu.0),
        per_call(through_cpu.1),
        per_call(through_cpu.2),
    );
}

fn main() {
    let fixture = roster_tests::bench::release_fixture(ROSTER);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        latency(&fixture, dir.path()).await;
        big_list().await;
        concurrent(&fixture, dir.path()).await;
    });
}
