//! A host's own transport, plugged into a `Supervisor` through the `Connector`
//! port: the "server" is an MCP server running in this very process, reached over
//! an in-memory pipe. The supervisor does to it what it does to any server: it
//! connects, health-checks, lists and calls its tools through the session's peer,
//! notices its death, restarts it, and stops it.
//!
//! Run: `cargo run -p roster-supervisor --example custom_transport`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext, ServiceError, ServiceExt};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler};
use roster_core::{Failure, ServerSpec, State};
use roster_supervisor::{
    BoxFuture, CloseError, Connector, Received, Session, Supervisor, SupervisorConfig, Transports, Unsupported,
};
use roster_transport::mcp::{self, McpClient};
use tokio_util::sync::CancellationToken;

/// The in-process server: one tool, `shout`, which upper-cases its text.
#[derive(Clone)]
struct Shouter;

impl ServerHandler for Shouter {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}});
        let schema = Arc::new(schema.as_object().cloned().unwrap_or_default());
        Ok(ListToolsResult::with_all_items(vec![Tool::new("shout", "Upper-cases its text", schema)]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request.arguments.as_ref().and_then(|a| a.get("text")).and_then(|t| t.as_str()).unwrap_or("");
        Ok(CallToolResult::success(vec![ContentBlock::text(text.to_uppercase())]).into())
    }
}

/// Connects by starting a `Shouter` on one end of a pipe and rmcp's client on the
/// other. The first session it makes dies after a while, to show a recovery.
#[derive(Default)]
struct InProcess {
    made_one: AtomicBool,
}

#[async_trait]
impl Connector for InProcess {
    async fn connect(&self, _spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let server_stop = CancellationToken::new();
        let stop = server_stop.clone();
        tokio::spawn(async move {
            let (read, write) = tokio::io::split(server_end);
            if let Ok(running) = Shouter.serve_with_ct((read, write), stop).await {
                let _ = running.waiting().await;
            }
        });
        let (read, write) = tokio::io::split(client_end);
        let cancel = CancellationToken::new();
        let handshake =
            mcp::Client::new("in-process", mcp::PROTOCOL_VERSION, None).serve_with_ct((read, write), cancel.clone());
        let running = match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return Err(mcp::classify_init(&e, format!("initialize failed: {e}"))),
            Err(_) => return Err(Failure::transient("no answer to initialize in time")),
        };
        // The first server "crashes" 300 ms after it came up.
        if !self.made_one.swap(true, Ordering::SeqCst) {
            let crash = server_stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                crash.cancel();
            });
        }
        Ok(Box::new(InProcessSession { client: McpClient::new(running, cancel), server_stop }))
    }
}

struct InProcessSession {
    client: McpClient,
    server_stop: CancellationToken,
}

#[async_trait]
impl Session for InProcessSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| self.classify(&e))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let ended = self.client.ended();
        Box::pin(async move {
            ended.await;
            Failure::transient("the in-process server went away")
        })
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.server_stop.cancel();
        self.client.close_within(Duration::from_secs(1), "the in-process session").await
    }

    fn kill(&self) {
        self.server_stop.cancel();
    }

    fn peer(&self) -> Option<Peer<RoleClient>> {
        Some(self.client.peer().clone())
    }

    fn classify(&self, error: &ServiceError) -> Failure {
        Failure::transient(error.to_string())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The in-process transport serves the servers of type `stdio` here; this host
    // offers no remote servers, and says so.
    let transports = Transports::new(Arc::new(InProcess::default()), Arc::new(Unsupported), Arc::new(Unsupported));
    let mut config = SupervisorConfig::default();
    config.settings.restart_grace = Duration::from_millis(50);
    let sup = Supervisor::new(Arc::new(transports), config);
    let mut events = sup.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(Received::Event(e)) = events.recv().await {
            let reason = e.event.reason.map_or_else(String::new, |r| format!(" {r}"));
            let error = e.event.error.as_deref().map_or_else(String::new, |x| format!(": {x}"));
            println!("event {:>2}  {}: {} → {}{reason}{error}", e.seq, e.server, e.event.previous_state, e.event.state);
        }
    });

    let mut spec = ServerSpec::stdio("shouter", "in-process");
    spec.auto_start = true;
    sup.apply(vec![spec.validated().expect("a valid definition")]).await.expect("unique names");
    let svc = sup.get("shouter").expect("registered");
    let _ = svc.wait_for(|s| s.state == State::Running).await;

    let peer = svc.client().expect("a live session");
    let tools = peer.list_all_tools().await.expect("tools");
    println!("tools: {:?}", tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>());
    let args = serde_json::json!({"text": "hello"}).as_object().cloned().unwrap_or_default();
    let result = peer.call_tool(CallToolRequestParams::new("shout").with_arguments(args)).await.expect("a result");
    println!("shout: {}", serde_json::to_value(&result.content).unwrap_or_default()[0]["text"]);

    // The first session dies; the supervisor notices at once and recovers.
    let _ = svc.wait_for(|s| s.restart_count >= 1 && s.state == State::Running).await;
    println!("recovered: crash count {}, health {}", svc.status().crash_count, svc.health());

    let report = sup.shutdown().await;
    println!("stopped: {:?}, killed: {:?}", report.stopped, report.timed_out);
    printer.abort();
}
