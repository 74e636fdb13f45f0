//! The gateway in one process: rmcp servers over in-memory pipes behind a real
//! supervisor, an rmcp client in front, on tokio's paused clock. What the
//! end-to-end tests of `roster serve` show with processes, shown here without
//! them, fast enough to measure with `cargo mutants -p roster-serve`.

// Sampling and logging are deprecated by SEP-2577; roster serves 2025-11-25.
#![allow(deprecated, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, ClientResult, ContentBlock, CreateMessageRequestParams, CreateMessageResult, ElicitRequest,
    ElicitRequestParams, ElicitResult, ElicitationAction, ElicitationSchema, ErrorCode, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListRootsResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role, Root,
    SamplingMessage, ServerCapabilities, ServerConfig, ServerRequest, ServerResult, SetLevelRequestParams, Tool,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, RunningService, ServiceError};
use rmcp::{ClientHandler, ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use roster_core::{Challenge, Failure, ServerSpec, ServerType};
use roster_serve::cache::ListingCache;
use roster_serve::{
    CallObserver, CallOutcome, Gateway, GatewayOptions, Hub, LOGIN_TOOL, Logins, STATUS_TOOL, STATUS_URI,
    ServerSettings,
};
use roster_supervisor::{BoxFuture, CloseError, Connector, Session, Supervisor, SupervisorConfig};
use roster_transport::mcp::{self, McpClient, Relay};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

// ----- the servers behind the gateway ------------------------------------------------

/// What every upstream server did, and the switches tests flip.
#[derive(Default)]
struct World {
    /// "server: what happened", in order.
    log: Mutex<Vec<String>>,
    /// Each server's live session, to end it as a crash would.
    sessions: Mutex<BTreeMap<String, CancellationToken>>,
    /// Servers whose tool list has grown (by the `grow` tool).
    grown: Mutex<BTreeSet<String>>,
    /// The version each server's `churn` tool has reached: its tool list names it.
    churned: Mutex<BTreeMap<String, u32>>,
    /// How long connecting to a server takes (none: at once).
    slow: Mutex<BTreeMap<String, Duration>>,
    /// How connecting to a server fails (none: it does not).
    refuse: Mutex<BTreeMap<String, Failure>>,
    /// Servers that offer tools but list none.
    empty: Mutex<BTreeSet<String>>,
}

impl World {
    fn record(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn saw(&self, line: &str) -> bool {
        self.times(line) > 0
    }

    fn times(&self, line: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| *l == line).count()
    }

    /// Ends `server`'s session from the server's side.
    fn crash(&self, server: &str) {
        let token = self.sessions.lock().unwrap().remove(server).expect("a live session");
        token.cancel();
    }
}

#[derive(Clone)]
struct Upstream {
    name: String,
    world: Arc<World>,
}

fn text_of(result: &CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect()
}

fn argument<'a>(request: &'a CallToolRequestParams, key: &str) -> Option<&'a Value> {
    request.arguments.as_ref().and_then(|a| a.get(key))
}

fn schema() -> Arc<serde_json::Map<String, Value>> {
    Arc::new(json!({"type": "object"}).as_object().cloned().unwrap_or_default())
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_resources()
            .enable_logging()
            .build();
        ServerConfig::new(capabilities)
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.world.record(format!("{}: list tools", self.name));
        if self.world.empty.lock().unwrap().contains(&self.name) {
            return Ok(ListToolsResult::with_all_items(Vec::new()));
        }
        let mut names = vec!["echo", "fail", "wait", "progress", "sample", "grow", "churn", "log", "roots", "elicit"];
        if self.world.grown.lock().unwrap().contains(&self.name) {
            names.push("extra");
        }
        let mut tools: Vec<Tool> =
            names.into_iter().map(|n| Tool::new(n, format!("{n} of {}", self.name), schema())).collect();
        if let Some(v) = self.world.churned.lock().unwrap().get(&self.name) {
            tools.push(Tool::new(format!("v{v}"), "the churn's version", schema()));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = argument(&request, "text").and_then(Value::as_str).unwrap_or("").to_owned();
        let me = &self.name;
        self.world.record(format!("{me}: call {}", request.name));
        let result = match request.name.as_ref() {
            "echo" => {
                let mut result = CallToolResult::success(vec![ContentBlock::text(format!("{me}: {text}"))]);
                result.structured_content = Some(json!({"server": me, "text": text}));
                result
            }
            "fail" => CallToolResult::error(vec![ContentBlock::text(format!("{me} failed: {text}"))]),
            "wait" => {
                let ms = argument(&request, "ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = ctx.ct.cancelled() => {
                        // Cancelled, or the session is ending: no answer, as from a
                        // process that is gone.
                        self.world.record(format!("{me}: cancelled"));
                        std::future::pending::<()>().await;
                    }
                }
                CallToolResult::success(vec![ContentBlock::text("waited")])
            }
            "progress" => {
                let token = ctx.meta.get_progress_token().ok_or_else(|| ErrorData::invalid_params("no token", None))?;
                for i in 1..=5 {
                    let p = ProgressNotificationParam::new(token.clone(), f64::from(i)).with_total(5.0);
                    let _ = ctx.peer.notify_progress(p).await;
                }
                CallToolResult::success(vec![ContentBlock::text("done")])
            }
            "sample" => {
                let params = CreateMessageRequestParams::new(vec![SamplingMessage::user_text(text)], 64);
                let reply = ctx
                    .peer
                    .create_message(params)
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                let reply: String = reply
                    .message
                    .content
                    .into_vec()
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect();
                CallToolResult::success(vec![ContentBlock::text(reply)])
            }
            "roots" => {
                let roots = ctx.peer.list_roots().await.map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                let uris: Vec<String> = roots.roots.into_iter().map(|r| r.uri).collect();
                CallToolResult::success(vec![ContentBlock::text(format!("roots: {}", uris.join(" ")))])
            }
            "elicit" => {
                let ask = ElicitRequestParams::FormElicitationParams {
                    meta: None,
                    message: text,
                    requested_schema: ElicitationSchema::new(BTreeMap::new()),
                };
                let asked = ctx.peer.send_request(ServerRequest::ElicitRequest(ElicitRequest::new(ask))).await;
                let answer = match asked.map_err(|e| ErrorData::internal_error(e.to_string(), None))? {
                    ClientResult::ElicitResult(answer) => answer,
                    other => return Err(ErrorData::internal_error(format!("{other:?}"), None)),
                };
                CallToolResult::success(vec![ContentBlock::text(format!("{:?}", answer.action))])
            }
            "grow" => {
                self.world.grown.lock().unwrap().insert(me.clone());
                let _ = ctx.peer.notify_tool_list_changed().await;
                CallToolResult::success(vec![ContentBlock::text("grown")])
            }
            "churn" => {
                // A new tool list every 50 ms for a second, each one announced.
                for v in 0..20 {
                    self.world.churned.lock().unwrap().insert(me.clone(), v);
                    let _ = ctx.peer.notify_tool_list_changed().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                CallToolResult::success(vec![ContentBlock::text("churned")])
            }
            "log" => {
                let message = LoggingMessageNotificationParam::new(LoggingLevel::Warning, json!(text));
                let _ = ctx.peer.notify_logging_message(message).await;
                CallToolResult::success(vec![ContentBlock::text("logged")])
            }
            other => return Err(ErrorData::invalid_params(format!("{me} has no tool {other}"), None)),
        };
        Ok(result.into())
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new("greet", Some("Greets"), None)]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let text = format!("{} from {}", request.name, self.name);
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).into())
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(format!("{}://info", self.name), "info"),
            Resource::new("notes.txt", "notes"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![ResourceTemplate::new(
            format!("{}://item/{{id}}", self.name),
            "item",
        )]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let text = format!("{} read {}", self.name, request.uri);
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri)]).into())
    }

    async fn set_level(&self, request: SetLevelRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.world.record(format!("{}: level {:?}", self.name, request.level));
        Ok(())
    }
}

/// Connects each server to an [`Upstream`] of its name over an in-memory pipe.
struct InProcess {
    world: Arc<World>,
    relay: Arc<dyn Relay>,
}

#[async_trait]
impl Connector for InProcess {
    async fn connect(&self, spec: &ServerSpec, deadline: std::time::Instant) -> Result<Box<dyn Session>, Failure> {
        // The pipe runs through a copy that a crash ends: both sides see it
        // close at once, as with a process that is gone.
        let (client_end, mut near) = tokio::io::duplex(64 * 1024);
        let (mut far, server_end) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let cut = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut near, &mut far) => {}
                () = cut.cancelled() => {}
            }
        });
        self.world.record(format!("{}: connect", spec.name));
        let slow = self.world.slow.lock().unwrap().get(&spec.name).copied();
        if let Some(slow) = slow {
            tokio::time::sleep(slow).await;
        }
        let refused = self.world.refuse.lock().unwrap().get(&spec.name).cloned();
        if let Some(failure) = refused {
            return Err(failure);
        }
        self.world.sessions.lock().unwrap().insert(spec.name.clone(), stop.clone());
        let upstream = Upstream { name: spec.name.clone(), world: self.world.clone() };
        let server_stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(running) = upstream.serve_with_ct(tokio::io::split(server_end), server_stop).await {
                let _ = running.waiting().await;
            }
        });
        let cancel = CancellationToken::new();
        let handshake = mcp::Client::new(&spec.name, mcp::PROTOCOL_VERSION, Some(self.relay.clone()))
            .serve_with_ct(tokio::io::split(client_end), cancel.clone());
        let running = tokio::time::timeout_at(deadline.into(), handshake)
            .await
            .map_err(|_| Failure::transient("no handshake in time"))?
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
            Failure::transient("the session ended")
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

// ----- the client in front -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ToolsChanged(Instant),
    PromptsChanged,
    ResourcesChanged,
    Progress(f64),
    Log(String),
}

#[derive(Clone)]
struct Downstream {
    seen: mpsc::UnboundedSender<Seen>,
    sampled: Arc<Mutex<Vec<String>>>,
    can_sample: bool,
}

impl ClientHandler for Downstream {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        if self.can_sample {
            capabilities.sampling = Some(Default::default());
            capabilities.roots = Some(Default::default());
            capabilities.elicitation = Some(Default::default());
        }
        ClientConfig::new(capabilities, Implementation::new("gateway-test", "0"))
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let asked: String = params
            .messages
            .iter()
            .flat_map(|m| m.content.clone().into_vec())
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        self.sampled.lock().unwrap().push(asked.clone());
        Ok(CreateMessageResult::new(SamplingMessage::assistant_text(format!("sampled: {asked}")), "model".into()))
    }

    async fn list_roots(&self, _: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![Root::new("file:///work")]))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Err(ErrorData::invalid_params("a form was expected", None));
        };
        self.sampled.lock().unwrap().push(format!("elicited: {message}"));
        Ok(ElicitResult::new(ElicitationAction::Decline))
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::ToolsChanged(Instant::now()));
    }

    async fn on_prompt_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::PromptsChanged);
    }

    async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::ResourcesChanged);
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::Progress(p.progress));
    }

    async fn on_logging_message(&self, m: LoggingMessageNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::Log(format!("{}: {}", m.logger.unwrap_or_default(), m.data)));
    }
}

/// How each forwarded call ended, as the gateway reported it.
#[derive(Debug, Default)]
struct Outcomes(Mutex<Vec<(String, CallOutcome)>>);

impl CallObserver for Outcomes {
    fn observed(&self, server: &str, outcome: CallOutcome, _: Duration) {
        self.0.lock().unwrap().push((server.to_owned(), outcome));
    }
}

/// A supervisor over in-process servers, the gateway in front, one client.
struct Setup {
    world: Arc<World>,
    supervisor: Arc<Supervisor>,
    gateway: Gateway,
    client: RunningService<RoleClient, Downstream>,
    seen: mpsc::UnboundedReceiver<Seen>,
    sampled: Arc<Mutex<Vec<String>>>,
    outcomes: Arc<Outcomes>,
}

/// `servers` as (name, tool_prefix, auto_start); `settings` per server.
async fn setup(servers: &[(&str, &str, bool)], settings: &[(&str, ServerSettings)]) -> Setup {
    setup_full(servers, settings, Opts::default()).await
}

/// What a test sets beyond the servers.
#[derive(Default)]
struct Opts<'a> {
    /// The client declares neither sampling nor roots nor elicitation.
    cannot_sample: bool,
    /// Made beforehand, to set what the servers do.
    world: Arc<World>,
    /// Where on-demand listings are kept.
    cache: Option<&'a std::path::Path>,
    logins: Option<Arc<dyn Logins>>,
}

async fn setup_full(servers: &[(&str, &str, bool)], settings: &[(&str, ServerSettings)], opts: Opts<'_>) -> Setup {
    let world = opts.world;
    let hub = Hub::new();
    let connector = Arc::new(InProcess { world: world.clone(), relay: hub.clone() });
    let supervisor = Arc::new(Supervisor::new(connector, SupervisorConfig::default()));
    let outcomes = Arc::new(Outcomes::default());
    let options = GatewayOptions {
        calls: Some(outcomes.clone()),
        cache: opts.cache.map(ListingCache::new),
        logins: opts.logins,
        ..GatewayOptions::default()
    };
    let gateway = Gateway::new(supervisor.clone(), hub, options);
    gateway.configure(settings.iter().map(|(name, s)| ((*name).to_owned(), *s)).collect());
    let sync = gateway.clone();
    tokio::spawn(async move { sync.run().await });
    let specs = servers
        .iter()
        .map(|(name, prefix, auto_start)| {
            // A server named remote-… is a remote one (auth_required is for those).
            let mut spec = if name.starts_with("remote-") {
                ServerSpec::remote(*name, ServerType::StreamableHttp, "http://127.0.0.1:9/mcp")
            } else {
                ServerSpec::stdio(*name, "in-process")
            };
            spec.tool_prefix = (*prefix).to_owned();
            spec.auto_start = *auto_start;
            spec.validated().unwrap()
        })
        .collect();
    supervisor.apply(specs).await.unwrap();
    let (down, up) = tokio::io::duplex(1 << 20);
    let served = gateway.clone();
    tokio::spawn(async move {
        if let Ok(running) = served.serve(tokio::io::split(up)).await {
            let _ = running.waiting().await;
        }
    });
    let (tx, seen) = mpsc::unbounded_channel();
    let sampled = Arc::new(Mutex::new(Vec::new()));
    let downstream = Downstream { seen: tx, sampled: sampled.clone(), can_sample: !opts.cannot_sample };
    let client = downstream.serve(tokio::io::split(down)).await.expect("initialize");
    Setup { world, supervisor, gateway, client, seen, sampled, outcomes }
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(arguments.as_object().cloned().unwrap_or_default())
}

impl Setup {
    async fn tool_names(&self) -> Vec<String> {
        let tools = self.client.list_all_tools().await.expect("tools/list");
        tools.into_iter().map(|t| t.name.to_string()).collect()
    }

    async fn call(&self, name: &str, arguments: Value) -> CallToolResult {
        self.client.call_tool(call(name, arguments)).await.expect("tools/call")
    }

    /// Waits (on the paused clock, so no real time passes) until `f` holds for
    /// the tools listed, at most `within`.
    async fn tools_until(&self, within: Duration, f: impl Fn(&[String]) -> bool) -> Vec<String> {
        let until = Instant::now() + within;
        loop {
            let names = self.tool_names().await;
            if f(&names) {
                return names;
            }
            assert!(Instant::now() < until, "tools now: {names:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the client was sent until `f` matched one of it, at most `within`.
    async fn seen_until(&mut self, within: Duration, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        let until = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, self.seen.recv()).await {
                Ok(Some(s)) => {
                    let done = f(&s);
                    seen.push(s);
                    if done {
                        return seen;
                    }
                }
                Ok(None) | Err(_) => panic!("not seen within {within:?}; seen: {seen:?}"),
            }
        }
    }

    /// Everything the client was sent in the next `during`.
    async fn seen_during(&mut self, during: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        let until = Instant::now() + during;
        while let Ok(Some(s)) = tokio::time::timeout_at(until, self.seen.recv()).await {
            seen.push(s);
        }
        seen
    }

    async fn until_logged(&self, within: Duration, line: &str) {
        let until = Instant::now() + within;
        while !self.world.saw(line) {
            assert!(Instant::now() < until, "never logged {line:?}: {:?}", self.world.log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn outcomes(&self) -> Vec<(String, CallOutcome)> {
        self.outcomes.0.lock().unwrap().clone()
    }

    async fn end(self) {
        self.client.cancel().await.unwrap();
        self.supervisor.shutdown().await;
    }
}

const WAIT: Duration = Duration::from_secs(30);

// ----- aggregation and routing ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_servers_items_are_listed_under_its_prefix_and_reach_their_owner() {
    let s = setup(&[("alpha", "", true), ("beta", "b", true)], &[]).await;
    let names = s.tool_names().await;
    for tool in ["echo", "fail", "wait", "progress", "sample"] {
        assert!(names.contains(&format!("alpha__{tool}")), "{names:?}");
        assert!(names.contains(&format!("b__{tool}")), "{names:?}");
    }
    assert!(names.contains(&STATUS_TOOL.to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("beta__")), "beta's tool_prefix is b: {names:?}");

    // A call goes to the owner under its own name, and its result comes back as is.
    let result = s.call("b__echo", json!({"text": "hi"})).await;
    assert_eq!(text_of(&result), "beta: hi");
    assert_eq!(result.structured_content, Some(json!({"server": "beta", "text": "hi"})));
    assert_eq!(result.is_error, Some(false));
    let failed = s.call("alpha__fail", json!({"text": "no"})).await;
    assert_eq!((failed.is_error, text_of(&failed)), (Some(true), "alpha failed: no".to_owned()));
    assert!(s.world.saw("beta: call echo") && s.world.saw("alpha: call fail"));
    assert!(!s.world.saw("alpha: call echo"));

    // Prompts under the prefix too.
    let prompts: Vec<String> = s.client.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["alpha__greet", "b__greet"]);
    let prompt = s.client.get_prompt(GetPromptRequestParams::new("b__greet")).await.unwrap();
    let said = serde_json::to_value(&prompt.messages).unwrap().to_string();
    assert!(said.contains("greet from beta"), "{said}");

    // Resources: a URI with a scheme passes through, one without gets the
    // prefix, and the contents read back carry the URI the client asked for.
    let uris: Vec<String> = s.client.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["alpha://info", "alpha__notes.txt", "b__notes.txt", "beta://info", STATUS_URI]);
    let read = s.client.read_resource(ReadResourceRequestParams::new("b__notes.txt")).await.unwrap();
    let ResourceContents::TextResourceContents { uri, text, .. } = &read.contents[0] else { panic!("{read:?}") };
    assert_eq!((uri.as_str(), text.as_str()), ("b__notes.txt", "beta read notes.txt"));
    let read = s.client.read_resource(ReadResourceRequestParams::new("alpha://info")).await.unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else { panic!("{read:?}") };
    assert_eq!(text, "alpha read alpha://info");

    // Templates pass through, and a URI they match goes to their server.
    let templates: Vec<String> =
        s.client.list_all_resource_templates().await.unwrap().into_iter().map(|t| t.uri_template.clone()).collect();
    assert_eq!(templates, ["alpha://item/{id}", "beta://item/{id}"]);
    let read = s.client.read_resource(ReadResourceRequestParams::new("beta://item/7")).await.unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else { panic!("{read:?}") };
    assert_eq!(text, "beta read beta://item/7");

    // serverInfo says who is behind it.
    let info = s.client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("roster"));
    let instructions = info.instructions.clone().unwrap_or_default();
    assert!(instructions.contains("- alpha: running, 10 tools"), "{instructions}");
    assert!(instructions.contains("- beta: running, 10 tools"), "{instructions}");

    assert_eq!(s.outcomes(), [("beta".to_owned(), CallOutcome::Ok), ("alpha".to_owned(), CallOutcome::ToolError)]);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn the_status_tool_and_resource_hold_every_servers_state() {
    let s = setup(&[("alpha", "", true), ("idle", "", false)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned())).await;
    let status = s.call(STATUS_TOOL, json!({})).await;
    let value: Value = serde_json::from_str(&text_of(&status)).unwrap();
    let states: Vec<(&str, &str)> =
        value.as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(states, [("alpha", "running"), ("idle", "unknown")]);
    let read = s.client.read_resource(ReadResourceRequestParams::new(STATUS_URI)).await.unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else { panic!("{read:?}") };
    let read: Value = serde_json::from_str(text).unwrap();
    for (from_tool, from_resource) in value.as_array().unwrap().iter().zip(read.as_array().unwrap()) {
        for field in ["name", "state", "health", "auto_start", "consecutive_failures"] {
            assert_eq!(from_tool[field], from_resource[field], "{field}");
        }
    }
    // roster's own tool is not a forwarded call.
    assert_eq!(s.outcomes(), []);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_name_is_an_error_that_says_which_servers_are_not_running() {
    let s = setup(&[("alpha", "", true), ("idle", "", false)], &[]).await;
    let error = s.client.call_tool(call("nope__echo", json!({}))).await.unwrap_err();
    let ServiceError::McpError(error) = error else { panic!("{error:?}") };
    assert_eq!(error.code, ErrorCode::INVALID_PARAMS);
    assert!(error.message.contains("no tool named \"nope__echo\""), "{}", error.message);
    assert!(error.message.contains("\"idle\" has not been started"), "{}", error.message);
    assert!(!error.message.contains("\"alpha\""), "alpha runs: {}", error.message);
    let error = s.client.get_prompt(GetPromptRequestParams::new("nope__greet")).await.unwrap_err();
    assert!(error.to_string().contains("no prompt named"), "{error}");
    let error = s.client.read_resource(ReadResourceRequestParams::new("nope://x")).await.unwrap_err();
    assert!(error.to_string().contains("no resource named"), "{error}");
    s.end().await;
}

// ----- servers coming and going ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_server_that_dies_takes_its_items_away_and_brings_them_back_and_clients_are_told() {
    let mut s = setup(&[("alpha", "", true), ("beta", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned()) && n.contains(&"beta__echo".to_owned())).await;
    s.seen_during(Duration::from_secs(2)).await;

    s.world.crash("alpha");
    let seen = s.seen_until(WAIT, |x| matches!(x, Seen::ToolsChanged(_))).await;
    assert!(!seen.iter().any(|x| matches!(x, Seen::Progress(_) | Seen::Log(_))), "{seen:?}");
    let names = s.tool_names().await;
    assert!(!names.iter().any(|n| n.starts_with("alpha__")), "{names:?}");
    assert!(names.contains(&"beta__echo".to_owned()), "{names:?}");
    let prompts: Vec<String> = s.client.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["beta__greet"]);

    // A call to it meanwhile answers at once, naming the server and its state.
    let started = Instant::now();
    let down = s.call("alpha__echo", json!({"text": "x"})).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "answered without waiting");
    assert_eq!(down.is_error, Some(true));
    let why = text_of(&down);
    assert!(why.starts_with("roster: the server \"alpha\" is "), "{why}");
    assert!(why.contains("next attempt in"), "{why}");
    assert!(!s.world.saw("alpha: call echo"));

    // The supervisor restarts it; its tools come back and the client hears of it.
    let seen = s.seen_until(WAIT, |x| matches!(x, Seen::ToolsChanged(_))).await;
    assert!(seen.iter().any(|x| matches!(x, Seen::ToolsChanged(_))));
    s.tools_until(Duration::from_secs(1), |n| n.contains(&"alpha__echo".to_owned())).await;
    assert_eq!(text_of(&s.call("alpha__echo", json!({"text": "back"})).await), "alpha: back");
    assert_eq!(s.outcomes(), [("alpha".to_owned(), CallOutcome::Unavailable), ("alpha".to_owned(), CallOutcome::Ok)]);
    // Each session was listed once: by the gateway, which told the supervisor.
    assert_eq!((s.world.times("alpha: list tools"), s.world.times("beta: list tools")), (2, 1));
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_lists_no_tools_carries_the_warning_from_the_gateways_listing() {
    let world = Arc::new(World::default());
    world.empty.lock().unwrap().insert("bare".to_owned());
    let s = setup_full(&[("bare", "", true), ("alpha", "", true)], &[], Opts { world, ..Opts::default() }).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned())).await;
    let bare = s.supervisor.get("bare").unwrap();
    let status = timeout(WAIT, bare.wait_for(|s| s.warning.is_some())).await.expect("the warning");
    assert_eq!(status.warning.as_deref(), Some("offers tools but listed none: it may have started only half-way"));
    assert_eq!(s.supervisor.get("alpha").unwrap().status().warning, None);
    assert_eq!(s.world.times("bare: list tools"), 1);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_server_is_named_with_its_state_and_a_call_to_it_never_reaches_it() {
    let mut s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned())).await;
    s.supervisor.get("alpha").unwrap().stop().await;
    s.seen_until(WAIT, |x| matches!(x, Seen::ToolsChanged(_))).await;
    let down = s.call("alpha__echo", json!({})).await;
    assert_eq!((down.is_error, text_of(&down)), (Some(true), "roster: the server \"alpha\" is stopped".to_owned()));
    let info = s.gateway.catalog();
    assert!(info.tools().is_empty(), "{:?}", info.tools());
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_servers_list_changed_relists_it_and_tells_clients_of_that_kind_only() {
    let mut s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned())).await;
    s.seen_during(Duration::from_secs(2)).await;
    assert_eq!(text_of(&s.call("alpha__grow", json!({})).await), "grown");
    s.seen_until(WAIT, |x| matches!(x, Seen::ToolsChanged(_))).await;
    assert!(s.tool_names().await.contains(&"alpha__extra".to_owned()));
    let later = s.seen_during(Duration::from_secs(2)).await;
    assert!(!later.iter().any(|x| matches!(x, Seen::PromptsChanged | Seen::ResourcesChanged)), "{later:?}");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_of_list_changes_reaches_clients_debounced() {
    let mut s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__echo".to_owned())).await;
    s.seen_during(Duration::from_secs(2)).await;
    // Twenty new lists over a second.
    assert_eq!(text_of(&s.call("alpha__churn", json!({})).await), "churned");
    let seen = s.seen_during(Duration::from_secs(3)).await;
    let at: Vec<Instant> =
        seen.iter().filter_map(|x| if let Seen::ToolsChanged(at) = x { Some(*at) } else { None }).collect();
    assert!(!at.is_empty(), "{seen:?}");
    assert!(at.len() <= 3, "at most one per 500 ms over a second: {seen:?}");
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= GatewayOptions::default().debounce, "{at:?}");
    }
    // The last list is the one served.
    let names = s.tool_names().await;
    assert!(names.contains(&"alpha__v19".to_owned()), "{names:?}");
    assert!(!names.contains(&"alpha__v18".to_owned()), "{names:?}");
    s.end().await;
}

// ----- calls -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_call_outliving_its_servers_tool_timeout_fails_and_the_others_keep_the_default() {
    let short = ServerSettings { tool_timeout: Some(Duration::from_secs(2)), on_demand: false };
    let s = setup(&[("alpha", "", true), ("beta", "", true)], &[("alpha", short)]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__wait".to_owned()) && n.contains(&"beta__wait".to_owned())).await;
    let started = Instant::now();
    let slow = s.call("alpha__wait", json!({"ms": 600_000})).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(slow.is_error, Some(true));
    assert_eq!(text_of(&slow), "roster: alpha did not answer within 2s (its tool_timeout)");
    // Within the default of 60 s, beta's call ends as the server ends it.
    let started = Instant::now();
    let fine = s.call("beta__wait", json!({"ms": 59_000})).await;
    assert_eq!((fine.is_error, text_of(&fine)), (Some(false), "waited".to_owned()));
    assert!(started.elapsed() >= Duration::from_secs(59));
    let slow = s.call("beta__wait", json!({"ms": 61_000})).await;
    assert_eq!(text_of(&slow), "roster: beta did not answer within 60s (its tool_timeout)");
    assert_eq!(
        s.outcomes().into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
        [CallOutcome::Failed, CallOutcome::Ok, CallOutcome::Failed]
    );
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_server_dies_fails_with_that_reason_and_nothing_else_is_touched() {
    let s = setup(&[("alpha", "", true), ("beta", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__wait".to_owned()) && n.contains(&"beta__wait".to_owned())).await;
    let peer = s.client.peer().clone();
    let waiting = tokio::spawn(async move { peer.call_tool(call("alpha__wait", json!({"ms": 10_000}))).await });
    s.until_logged(WAIT, "alpha: call wait").await;
    s.world.crash("alpha");
    let ended = timeout(Duration::from_millis(10), waiting).await.expect("ended at once").unwrap().unwrap();
    assert_eq!(ended.is_error, Some(true));
    assert!(text_of(&ended).contains("the session with alpha ended during the call"), "{}", text_of(&ended));
    assert_eq!(s.outcomes(), [("alpha".to_owned(), CallOutcome::Failed)]);
    assert_eq!(text_of(&s.call("beta__echo", json!({"text": "still"})).await), "beta: still");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_cancelled_upstream() {
    let s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__wait".to_owned())).await;
    let handle = s
        .client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(call("alpha__wait", json!({"ms": 30_000})))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    s.until_logged(WAIT, "alpha: call wait").await;
    let sent = Instant::now();
    handle.cancel(Some("enough".into())).await.unwrap();
    s.until_logged(Duration::from_secs(1), "alpha: cancelled").await;
    assert!(sent.elapsed() < Duration::from_secs(1));
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn progress_reaches_the_caller_in_order_and_before_the_result() {
    let mut s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__progress".to_owned())).await;
    s.seen_during(Duration::from_secs(2)).await;
    let handle = s
        .client
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(call("alpha__progress", json!({})))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let done = handle.await_response().await.unwrap();
    assert!(matches!(&done, ServerResult::CallToolResult(r) if text_of(r) == "done"), "{done:?}");
    // Progress was sent before the result, so it is all there by now.
    let mut progress = Vec::new();
    while let Ok(seen) = s.seen.try_recv() {
        if let Seen::Progress(p) = seen {
            progress.push(p);
        }
    }
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0, 5.0]);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_sampling_request_reaches_the_calling_client_and_its_answer_goes_back() {
    let s = setup(&[("alpha", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__sample".to_owned())).await;
    let sampled = s.call("alpha__sample", json!({"text": "a haiku"})).await;
    assert_eq!((sampled.is_error, text_of(&sampled)), (Some(false), "sampled: a haiku".to_owned()));
    assert_eq!(s.sampled.lock().unwrap().as_slice(), ["a haiku"]);

    // Roots and elicitation go the same way.
    let roots = s.call("alpha__roots", json!({})).await;
    assert_eq!((roots.is_error, text_of(&roots)), (Some(false), "roots: file:///work".to_owned()));
    let elicited = s.call("alpha__elicit", json!({"text": "your name?"})).await;
    assert_eq!((elicited.is_error, text_of(&elicited)), (Some(false), "Decline".to_owned()));
    assert_eq!(s.sampled.lock().unwrap().last().map(String::as_str), Some("elicited: your name?"));
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_cannot_sample_is_not_asked_and_the_server_hears_so() {
    let s = setup_full(&[("alpha", "", true)], &[], Opts { cannot_sample: true, ..Opts::default() }).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__sample".to_owned())).await;
    let error = s.client.call_tool(call("alpha__sample", json!({"text": "x"}))).await.unwrap_err();
    // The server's request was refused, so the server failed the call.
    assert!(error.to_string().contains("sampling"), "{error}");
    let error = s.client.call_tool(call("alpha__elicit", json!({"text": "x"}))).await.unwrap_err();
    assert!(error.to_string().contains("elicitation"), "{error}");
    assert!(s.sampled.lock().unwrap().is_empty());
    // No roots from a client without them: the server is told there are none.
    assert_eq!(text_of(&s.call("alpha__roots", json!({})).await), "roots: ");
    assert_eq!(
        s.outcomes(),
        [
            ("alpha".to_owned(), CallOutcome::Failed),
            ("alpha".to_owned(), CallOutcome::Failed),
            ("alpha".to_owned(), CallOutcome::Ok)
        ]
    );
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn log_levels_go_upstream_and_log_messages_come_back_named_after_their_server() {
    let mut s = setup(&[("alpha", "", true), ("beta", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"alpha__log".to_owned()) && n.contains(&"beta__log".to_owned())).await;
    s.client.set_level(SetLevelRequestParams::new(LoggingLevel::Debug)).await.unwrap();
    s.until_logged(WAIT, "alpha: level Debug").await;
    s.until_logged(WAIT, "beta: level Debug").await;

    s.call("beta__log", json!({"text": "careful"})).await;
    let seen = s.seen_until(WAIT, |x| matches!(x, Seen::Log(_))).await;
    assert_eq!(seen.last(), Some(&Seen::Log("beta: \"careful\"".to_owned())));

    // A server that comes up later is given the level as it is listed.
    s.world.crash("alpha");
    let until = Instant::now() + WAIT;
    while s.world.log.lock().unwrap().iter().filter(|l| *l == "alpha: level Debug").count() < 2 {
        assert!(Instant::now() < until, "{:?}", s.world.log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.end().await;
}

// ----- the first lists, and servers started on demand --------------------------------------

#[tokio::test(start_paused = true)]
async fn the_first_answers_wait_for_servers_that_are_still_connecting() {
    let world = Arc::new(World::default());
    world.slow.lock().unwrap().insert("slow".into(), Duration::from_secs(3));
    let started = Instant::now();
    let s = setup_full(&[("quick", "", true), ("slow", "", true)], &[], Opts { world, ..Opts::default() }).await;
    // initialize waited for the first attempts: its instructions count both.
    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(instructions.contains("- slow: running, 10 tools"), "{instructions}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let names = s.tool_names().await;
    assert!(names.contains(&"slow__echo".to_owned()) && names.contains(&"quick__echo".to_owned()), "{names:?}");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn the_first_answers_wait_at_most_the_settle_time() {
    let world = Arc::new(World::default());
    world.slow.lock().unwrap().insert("stuck".into(), Duration::from_secs(3600));
    let started = Instant::now();
    let s = setup_full(&[("quick", "", true), ("stuck", "", true)], &[], Opts { world, ..Opts::default() }).await;
    let settle = GatewayOptions::default().settle;
    assert_eq!(started.elapsed(), settle / 2, "one answer waits at most half the settle time");
    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(instructions.contains("- stuck: starting"), "{instructions}");
    let names = s.tool_names().await;
    assert_eq!(started.elapsed(), settle, "the first list, the rest of it");
    assert!(names.contains(&"quick__echo".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("stuck__")), "{names:?}");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_not_started_by_itself_is_not_waited_for() {
    let started = Instant::now();
    let s = setup(&[("quick", "", true), ("idle", "", false)], &[]).await;
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(!s.world.saw("idle: connect"));
    s.end().await;
}

/// An on-demand server, listed from the cache while it is not running.
const LAZY: ServerSettings = ServerSettings { tool_timeout: None, on_demand: true };

/// A first run with the on-demand server `lazy`, never listed before: it is
/// started once to learn what it offers (and kept running), and its listing is
/// kept in `cache`.
async fn listed_once(cache: &std::path::Path) {
    let s = setup_full(&[("lazy", "", false)], &[("lazy", LAZY)], Opts { cache: Some(cache), ..Opts::default() }).await;
    s.tools_until(WAIT, |n| n.contains(&"lazy__echo".to_owned())).await;
    assert!(s.world.saw("lazy: connect"));
    assert!(cache.join("lazy.json").exists());
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_on_demand_server_is_run_once_to_be_listed_then_listed_from_the_cache_and_started_by_a_call() {
    let dir = tempfile::tempdir().unwrap();
    listed_once(dir.path()).await;

    // The next run lists it from the cache without starting it.
    let s = setup_full(&[("lazy", "", false)], &[("lazy", LAZY)], Opts { cache: Some(dir.path()), ..Opts::default() })
        .await;
    let names = s.tool_names().await;
    assert!(names.contains(&"lazy__echo".to_owned()), "{names:?}");
    let prompts: Vec<String> = s.client.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(prompts, ["lazy__greet"]);
    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(instructions.contains("10 tools (it starts at the first call)"), "{instructions}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!s.world.saw("lazy: connect"), "{:?}", s.world.log.lock().unwrap());

    // The first call starts it and is answered by it.
    let answer = s.call("lazy__echo", json!({"text": "wake"})).await;
    assert_eq!(text_of(&answer), "lazy: wake");
    assert!(s.world.saw("lazy: connect"));
    // A prompt goes to it as well.
    let prompt = s.client.get_prompt(GetPromptRequestParams::new("lazy__greet")).await.unwrap();
    assert!(serde_json::to_value(&prompt.messages).unwrap().to_string().contains("greet from lazy"));
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_neither_on_demand_nor_running_is_not_started_by_a_call() {
    let dir = tempfile::tempdir().unwrap();
    listed_once(dir.path()).await;
    // The same server, no longer on demand: the cache is not used, nothing starts it.
    let s = setup_full(&[("lazy", "", false)], &[], Opts { cache: Some(dir.path()), ..Opts::default() }).await;
    let names = s.tool_names().await;
    assert!(!names.iter().any(|n| n.starts_with("lazy__")), "{names:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!s.world.saw("lazy: connect"));
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_on_demand_server_that_cannot_start_is_named_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    listed_once(dir.path()).await;

    let world = Arc::new(World::default());
    world.refuse.lock().unwrap().insert("lazy".into(), Failure::permanent("no such program"));
    let opts = Opts { cache: Some(dir.path()), world, ..Opts::default() };
    let s = setup_full(&[("lazy", "", false)], &[("lazy", LAZY)], opts).await;
    let answer = s.call("lazy__echo", json!({})).await;
    assert_eq!(answer.is_error, Some(true));
    let why = text_of(&answer);
    assert!(why.starts_with("roster: the server \"lazy\" is failed (no such program)"), "{why}");
    let error = s.client.get_prompt(GetPromptRequestParams::new("lazy__greet")).await.unwrap_err();
    let ServiceError::McpError(error) = error else { panic!("{error:?}") };
    assert!(error.message.starts_with("roster: the server \"lazy\" is failed (no such program)"), "{}", error.message);
    let error = s.client.read_resource(ReadResourceRequestParams::new("lazy://info")).await.unwrap_err();
    assert!(error.to_string().contains("the server \"lazy\" is failed"), "{error}");
    assert_eq!(s.outcomes(), [("lazy".to_owned(), CallOutcome::Unavailable)]);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_not_running_is_named_without_tools_in_the_instructions() {
    let s = setup(&[("alpha", "", true), ("idle", "", false)], &[]).await;
    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(instructions.contains("\n- alpha: running, 10 tools\n"), "{instructions}");
    assert!(instructions.ends_with("\n- idle: unknown\n"), "{instructions}");
    s.end().await;
}

#[derive(Debug, Default)]
struct FakeLogins(Mutex<Vec<String>>);

impl Logins for FakeLogins {
    fn start(&self, server: &str) -> roster_transport::BoxFuture<Result<String, String>> {
        self.0.lock().unwrap().push(server.to_owned());
        let answer = if server == "remote-locked" {
            Ok(format!("open https://login.example/{server}"))
        } else {
            Err("it has no login".to_owned())
        };
        Box::pin(async move { answer })
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_waiting_for_a_login_says_how_and_roster_login_starts_one() {
    let world = Arc::new(World::default());
    world
        .refuse
        .lock()
        .unwrap()
        .insert("remote-locked".into(), Failure::needs_credentials(Challenge::parse("Bearer"), "401 from the server"));
    let logins = Arc::new(FakeLogins::default());
    let opts = Opts { world, logins: Some(logins.clone()), ..Opts::default() };
    let s = setup_full(&[("alpha", "", true), ("remote-locked", "", true)], &[], opts).await;
    let names = s.tool_names().await;
    assert!(names.contains(&LOGIN_TOOL.to_owned()) && names.contains(&"alpha__echo".to_owned()), "{names:?}");

    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(instructions.contains("- remote-locked: auth_required"), "{instructions}");
    assert!(instructions.contains("it waits for a login: run `roster login remote-locked`"), "{instructions}");
    let status: Value = serde_json::from_str(&text_of(&s.call(STATUS_TOOL, json!({})).await)).unwrap();
    let logins_shown: Vec<(&str, Option<&str>)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e.get("login").and_then(Value::as_str)))
        .collect();
    assert_eq!(logins_shown, [("alpha", None), ("remote-locked", Some("roster login remote-locked"))]);

    // roster_login: a configured server is needed, and its answer is the host's.
    let none = s.call(LOGIN_TOOL, json!({})).await;
    assert_eq!(none.is_error, Some(true));
    assert_eq!(text_of(&none), "roster: name a configured server: {\"server\": \"NAME\"} (alpha, remote-locked)");
    let unknown = s.call(LOGIN_TOOL, json!({"server": "nope"})).await;
    assert_eq!(text_of(&unknown), text_of(&none));
    let started = s.call(LOGIN_TOOL, json!({"server": "remote-locked"})).await;
    assert_eq!(
        (started.is_error, text_of(&started)),
        (Some(false), "open https://login.example/remote-locked".to_owned())
    );
    let refused = s.call(LOGIN_TOOL, json!({"server": "alpha"})).await;
    assert_eq!((refused.is_error, text_of(&refused)), (Some(true), "roster: it has no login".to_owned()));
    assert_eq!(logins.0.lock().unwrap().as_slice(), ["remote-locked", "alpha"]);
    // Other calls still go where they go.
    assert_eq!(text_of(&s.call("alpha__echo", json!({"text": "x"})).await), "alpha: x");
    assert_eq!(s.outcomes(), [("alpha".to_owned(), CallOutcome::Ok)]);
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_login_host_there_is_no_login_tool() {
    let s = setup(&[("alpha", "", true)], &[]).await;
    assert!(!s.tool_names().await.contains(&LOGIN_TOOL.to_owned()));
    let error = s.client.call_tool(call(LOGIN_TOOL, json!({"server": "alpha"}))).await.unwrap_err();
    assert!(error.to_string().contains("no tool named \"roster_login\""), "{error}");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn servers_that_go_down_at_nearly_the_same_time_are_announced_once() {
    let mut s = setup(&[("alpha", "", true), ("beta", "", true), ("gamma", "", true)], &[]).await;
    s.tools_until(WAIT, |n| n.contains(&"gamma__echo".to_owned())).await;
    s.seen_during(Duration::from_secs(2)).await;
    // Changes less than 20 ms apart go out together.
    s.world.crash("alpha");
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.world.crash("beta");
    let second = Instant::now();
    // Before they are back (a first crash is restarted after restart_grace, 200 ms).
    let seen = s.seen_during(Duration::from_millis(150)).await;
    let at: Vec<Instant> =
        seen.iter().filter_map(|x| if let Seen::ToolsChanged(at) = x { Some(*at) } else { None }).collect();
    assert_eq!(at.len(), 1, "{seen:?}");
    assert!(at[0] >= second, "the one notice comes after both changes");
    let names = s.tool_names().await;
    assert!(!names.iter().any(|n| n.starts_with("alpha__") || n.starts_with("beta__")), "{names:?}");
    s.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_on_demand_server_with_nothing_listed_promises_no_tools() {
    let world = Arc::new(World::default());
    world.refuse.lock().unwrap().insert("lazy".into(), Failure::permanent("no such program"));
    let s = setup_full(&[("lazy", "", false)], &[("lazy", LAZY)], Opts { world, ..Opts::default() }).await;
    // Started once to be listed (and failed): nothing to offer, nothing promised.
    assert!(s.world.saw("lazy: connect"));
    let instructions = s.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    let line = instructions.lines().find(|l| l.starts_with("- lazy: ")).unwrap_or_default();
    assert!(line.starts_with("- lazy: failed (no such program)"), "{instructions}");
    assert!(!line.contains("tools"), "{instructions}");
    s.end().await;
}
