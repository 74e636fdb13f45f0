//! A real MCP server that misbehaves on demand, for roster's tests and examples.
//!
//! ```text
//! roster-fixture stdio [switches]     serve MCP over stdin/stdout
//! roster-fixture http [switches]      serve Streamable HTTP on 127.0.0.1 (/mcp)
//! roster-fixture sse [switches]       serve the legacy HTTP+SSE transport (/sse, /message)
//! roster-fixture sleeper              sleep until killed (a grandchild)
//! roster-fixture daemon               setsid, fork a sleeper, exit (a daemon's start)
//! roster-fixture pipe PROGRAM ARGS... run PROGRAM, passing stdin and stdout through
//! roster-fixture tcp-pipe HOST:PORT   listen on 127.0.0.1, pass connections through
//!                                     (the two byte relays of the benchmarks)
//! roster-fixture rmcp-proxy PROGRAM ARGS...  serve over stdio, passing tool calls
//!                                     to PROGRAM through rmcp's client (the
//!                                     benchmarks' bare rmcp relay)
//! roster-fixture rmcp-proxy-http URL  the same over Streamable HTTP, in front of URL
//!
//! The HTTP modes print `listening on http://127.0.0.1:PORT` on stdout once bound.
//!
//! switches:
//!   --tag T                 a marker tests use to find leftover processes
//!   --exit-at-start CODE    exit at once with CODE (after --stderr)
//!   --stderr TEXT           write TEXT to stderr at start
//!   --exit-after-init MS    exit with code 1 MS milliseconds after initialize
//!   --never-initialize      read stdin but never answer
//!   --slow-ping MS          answer ping after MS milliseconds
//!   --ignore-sigterm        ignore SIGTERM
//!   --linger                keep running after stdin closes
//!   --grandchild inherit|null   spawn a sleeper with stdout inherited or to /dev/null
//!   --daemonize             start a daemon that escapes the process group: a child
//!                           that calls setsid, forks a sleeper and exits
//!   --stderr-mib N          write N MiB to stderr before serving
//!   --garbage-lines N       print N lines of garbage on stdout before serving
//!   --serve-http PORT       also serve Streamable HTTP on 127.0.0.1:PORT (for demos)
//!   --ping-meta             answer ping with an empty result that carries `_meta`
//!   --no-tools              offer tools in `initialize` but list none (stdio)
//!
//! HTTP and SSE switches:
//!   --port P                listen on P (default: any free port)
//!   --unauthorized challenge|bare   answer 401, with a Bearer challenge carrying
//!                           resource_metadata, or with no WWW-Authenticate at all
//!   --forbidden-scope       answer 403 with error="insufficient_scope"
//!   --unavailable N         answer the first N requests with 503 and Retry-After
//!   --retry-after S         the Retry-After of --unavailable (default 1)
//!   --not-found             answer 404
//!   --hang                  accept requests and never answer
//!   --require-header K:V    answer 403 unless header K has value V
//!   --slow MS               delay every response
//!   --drop-after MS         (sse) end each event stream after MS
//!   --foreign-endpoint      (sse) send an endpoint on another origin
//!   --endless-event WHERE   send one server-sent event that never ends: on the
//!                           GET stream (get), as the reply to a ping (post), or
//!                           after the endpoint event (sse: stream)
//!   --oauth                 be an OAuth authorization server too, and require
//!                           its tokens (see oauth.rs); the tool `add` needs the
//!                           scope mcp:admin
//!   --oauth-admin-only      (with --oauth) every request needs mcp:admin
//!   --oauth-client ID:SECRET  a pre-registered client (client credentials)
//!   --token-ttl S           access tokens live S seconds (default 3600)
//! POST /control/forget-sessions forgets every session, as a restarted server does.
//! ```
//!
//! Tools: `echo {text}`, `add {a, b}`, `sleep {ms}`, `getenv {name}`, `cwd {}`,
//! `header {name}` (the value of an HTTP request header, HTTP mode), `fail {text}`
//! (a tool result with `isError: true`), `progress {steps}` (that many progress
//! notifications, then "done"), `sample {text}` (asks the client to sample, and
//! returns the answer's text), `wait {ms}` (sleeps; a cancellation is written to
//! the `--record` file as `cancelled`), `grow {}` (adds the tool `extra` and sends
//! tools/list_changed), `log {text}` (a log message notification). A
//! `logging/setLevel` is written to the `--record` file as `level LEVEL`.
//! Prompts: `greet {name}`. Resources: `fixture://info`, `notes.txt` (no scheme);
//! template `fixture://item/{id}`.
//!
//! More switches:
//!   --record PATH           append what the fixture was asked to record (cancellations, log levels)

#![allow(missing_docs)]
// Sampling and logging are deprecated by SEP-2577; the fixture speaks 2025-11-25.
#![allow(deprecated)]

use std::io::Write;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, CreateMessageRequestParams, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptArgument,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceTemplate, Role, SamplingMessage, ServerCapabilities, ServerConfig, SetLevelRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

mod http;
mod oauth;
mod relay;

#[derive(Debug, Default, Clone)]
struct Faults {
    exit_at_start: Option<i32>,
    stderr: Option<String>,
    exit_after_init: Option<u64>,
    never_initialize: bool,
    slow_ping: Option<u64>,
    ignore_sigterm: bool,
    linger: bool,
    grandchild: Option<String>,
    daemonize: bool,
    stderr_mib: usize,
    garbage_lines: usize,
    port: u16,
    unauthorized: Option<String>,
    forbidden_scope: bool,
    unavailable: u64,
    retry_after: Option<u64>,
    not_found: bool,
    hang: bool,
    require_header: Option<(String, String)>,
    slow: Option<u64>,
    drop_after: Option<u64>,
    foreign_endpoint: bool,
    serve_http: Option<u16>,
    ping_meta: bool,
    no_tools: bool,
    endless_event: Option<String>,
    record: Option<String>,
    oauth: bool,
    oauth_admin_only: bool,
    token_ttl: Option<u64>,
    oauth_client: Option<(String, String)>,
}

fn parse(args: &[String]) -> Result<Faults, String> {
    let mut f = Faults::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--tag" => {
                value()?;
            }
            "--exit-at-start" => f.exit_at_start = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--stderr" => f.stderr = Some(value()?),
            "--exit-after-init" => f.exit_after_init = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--never-initialize" => f.never_initialize = true,
            "--slow-ping" => f.slow_ping = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--ignore-sigterm" => f.ignore_sigterm = true,
            "--linger" => f.linger = true,
            "--grandchild" => f.grandchild = Some(value()?),
            "--daemonize" => f.daemonize = true,
            "--stderr-mib" => f.stderr_mib = value()?.parse().map_err(|e| format!("{arg}: {e}"))?,
            "--garbage-lines" => f.garbage_lines = value()?.parse().map_err(|e| format!("{arg}: {e}"))?,
            "--port" => f.port = value()?.parse().map_err(|e| format!("{arg}: {e}"))?,
            "--unauthorized" => f.unauthorized = Some(value()?),
            "--forbidden-scope" => f.forbidden_scope = true,
            "--unavailable" => f.unavailable = value()?.parse().map_err(|e| format!("{arg}: {e}"))?,
            "--retry-after" => f.retry_after = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--not-found" => f.not_found = true,
            "--hang" => f.hang = true,
            "--require-header" => {
                let v = value()?;
                let (k, val) = v.split_once(':').ok_or_else(|| format!("{arg} takes NAME:VALUE"))?;
                f.require_header = Some((k.trim().to_owned(), val.trim().to_owned()));
            }
            "--slow" => f.slow = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--drop-after" => f.drop_after = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--foreign-endpoint" => f.foreign_endpoint = true,
            "--serve-http" => f.serve_http = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--ping-meta" => f.ping_meta = true,
            "--no-tools" => f.no_tools = true,
            "--endless-event" => f.endless_event = Some(value()?),
            "--record" => f.record = Some(value()?),
            "--oauth" => f.oauth = true,
            "--oauth-admin-only" => f.oauth_admin_only = true,
            "--token-ttl" => f.token_ttl = Some(value()?.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--oauth-client" => {
                let v = value()?;
                let (id, secret) = v.split_once(':').ok_or_else(|| format!("{arg}: write ID:SECRET"))?;
                f.oauth_client = Some((id.to_owned(), secret.to_owned()));
            }
            other => return Err(format!("unknown switch {other}")),
        }
    }
    Ok(f)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    ms: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct GetenvArgs {
    name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct HeaderArgs {
    name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct StepsArgs {
    steps: u32,
}

/// Whether `grow` was called (in this process: every HTTP session sees it).
static GROWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone)]
pub(crate) struct Fixture {
    faults: Faults,
    tool_router: ToolRouter<Fixture>,
}

#[tool_router]
impl Fixture {
    pub(crate) fn new(faults: Faults) -> Fixture {
        Fixture { faults, tool_router: Self::tool_router() }
    }

    /// The tools offered now: `extra` only once `grow` was called.
    fn router(&self) -> ToolRouter<Fixture> {
        let mut router = self.tool_router.clone();
        if !GROWN.load(std::sync::atomic::Ordering::SeqCst) {
            router.remove_route("extra");
        }
        router
    }

    fn record(&self, line: &str) {
        if let Some(path) = &self.faults.record {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("the record file");
            writeln!(file, "{line}").expect("a record");
        }
    }

    #[tool(description = "Reports progress steps times, then returns done")]
    async fn progress(
        &self,
        Parameters(StepsArgs { steps }): Parameters<StepsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        if let Some(token) = ctx.meta.get_progress_token() {
            for i in 1..=steps {
                let p = ProgressNotificationParam::new(token.clone(), f64::from(i)).with_total(f64::from(steps));
                let _ = ctx.peer.notify_progress(p).await;
            }
        }
        "done".to_owned()
    }

    #[tool(description = "Asks the client to sample a reply to text; returns the reply's text")]
    async fn sample(
        &self,
        Parameters(EchoArgs { text }): Parameters<EchoArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<String, ErrorData> {
        let params = CreateMessageRequestParams::new(vec![SamplingMessage::user_text(text)], 64);
        let reply =
            ctx.peer.create_message(params).await.map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(reply.message.content.into_vec().iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect())
    }

    #[tool(description = "Sleeps for ms milliseconds; records a cancellation")]
    async fn wait(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => format!("waited {ms} ms"),
            () = ctx.ct.cancelled() => {
                self.record("cancelled");
                "cancelled".to_owned()
            }
        }
    }

    #[tool(description = "Adds the tool extra and says the tool list changed")]
    async fn grow(&self, ctx: RequestContext<RoleServer>) -> String {
        GROWN.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = ctx.peer.notify_tool_list_changed().await;
        "grown".to_owned()
    }

    #[tool(description = "Only there after grow")]
    fn extra(&self) -> String {
        "extra".to_owned()
    }

    #[tool(description = "Sends text as a log message notification")]
    async fn log(
        &self,
        Parameters(EchoArgs { text }): Parameters<EchoArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        let message = LoggingMessageNotificationParam::new(LoggingLevel::Info, serde_json::json!(text));
        let _ = ctx.peer.notify_logging_message(message).await;
        "logged".to_owned()
    }

    #[tool(description = "Returns its text")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Reports a tool error with its text")]
    fn fail(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(text)])
    }

    #[tool(description = "Adds two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Sleeps for ms milliseconds")]
    async fn sleep(&self, Parameters(SleepArgs { ms }): Parameters<SleepArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("slept {ms} ms")
    }

    #[tool(description = "The value of an environment variable, or <unset>")]
    fn getenv(&self, Parameters(GetenvArgs { name }): Parameters<GetenvArgs>) -> String {
        std::env::var(name).unwrap_or_else(|_| "<unset>".to_owned())
    }

    #[tool(description = "The working directory")]
    fn cwd(&self) -> String {
        std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
    }

    #[tool(description = "The value of an HTTP request header, or <unset>")]
    fn header(
        &self,
        Parameters(HeaderArgs { name }): Parameters<HeaderArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        ctx.extensions
            .get::<::http::request::Parts>()
            .and_then(|parts| parts.headers.get(&name))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<unset>")
            .to_owned()
    }
}

#[tool_handler(router = self.router())]
impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_resources()
            .enable_logging()
            .build();
        ServerConfig::new(capabilities).with_instructions("roster's test fixture")
    }

    async fn set_level(&self, request: SetLevelRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level).ok().and_then(|v| v.as_str().map(str::to_owned));
        self.record(&format!("level {}", level.as_deref().unwrap_or("?")));
        Ok(())
    }

    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let name = PromptArgument::new("name").with_required(true);
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new("greet", Some("Greets someone"), Some(vec![name]))]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "greet" {
            return Err(ErrorData::invalid_params(format!("no prompt {}", request.name), None));
        }
        let who = request.arguments.and_then(|a| a.get("name").and_then(|v| v.as_str()).map(str::to_owned));
        let text = format!("Hello, {}!", who.unwrap_or_else(|| "you".to_owned()));
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).into())
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("fixture://info", "info"),
            Resource::new("notes.txt", "notes"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![ResourceTemplate::new("fixture://item/{id}", "item")]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let text = match request.uri.as_str() {
            "fixture://info" => "the fixture's info".to_owned(),
            "notes.txt" => "the fixture's notes".to_owned(),
            uri => match uri.strip_prefix("fixture://item/") {
                Some(id) => format!("item {id}"),
                None => return Err(ErrorData::resource_not_found(format!("no resource {uri}"), None)),
            },
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri)]).into())
    }

    async fn ping(&self, _ctx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        if let Some(ms) = self.faults.slow_ping {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(())
    }

    async fn on_initialized(&self, _ctx: NotificationContext<RoleServer>) {
        if let Some(ms) = self.faults.exit_after_init {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                eprintln!("fixture: exiting {ms} ms after initialize, as asked");
                std::process::exit(1);
            });
        }
    }
}

/// The fixture with quirks no handler method can show: with `--ping-meta` it
/// answers ping with `{"_meta": {...}}` (an empty result, as MCP allows any
/// result to carry `_meta`); with `--no-tools` it lists no tools.
struct MetaPing(Fixture);

impl rmcp::Service<RoleServer> for MetaPing {
    async fn handle_request(
        &self,
        request: rmcp::model::ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ServerResult, ErrorData> {
        match request {
            rmcp::model::ClientRequest::PingRequest(_) if self.0.faults.ping_meta => {
                Ok(rmcp::model::ServerResult::CustomResult(rmcp::model::CustomResult(
                    serde_json::json!({"_meta": {"fixture": "ping with meta"}}),
                )))
            }
            // Started half-way: it says it has tools, and lists none.
            rmcp::model::ClientRequest::ListToolsRequest(_) if self.0.faults.no_tools => {
                Ok(rmcp::model::ServerResult::ListToolsResult(rmcp::model::ListToolsResult::default()))
            }
            other => rmcp::Service::handle_request(&self.0, other, context).await,
        }
    }

    async fn handle_notification(
        &self,
        notification: rmcp::model::ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        rmcp::Service::handle_notification(&self.0, notification, context).await
    }

    fn get_info(&self) -> ServerConfig {
        rmcp::Service::<RoleServer>::get_info(&self.0)
    }
}

fn spawn_grandchild(how: &str, args: &[String]) -> std::io::Result<()> {
    let stdout = match how {
        "inherit" => std::process::Stdio::inherit(),
        _ => std::process::Stdio::null(),
    };
    // The sleeper carries the same tag, so tests can see it.
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("sleeper").args(args).stdin(std::process::Stdio::null()).stdout(stdout).stderr(std::process::Stdio::null());
    let child = cmd.spawn()?;
    eprintln!("fixture: spawned grandchild {}", child.id());
    Ok(())
}

/// A daemon's start, as many do it: a child leaves the session (setsid), forks the
/// long-lived process and exits, so that the daemon belongs to no group of ours.
fn daemonize(args: &[String]) -> std::io::Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("daemon")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    eprintln!("fixture: daemon launcher exited with {status}");
    Ok(())
}

async fn serve(faults: Faults, args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    if faults.ignore_sigterm {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            while term.recv().await.is_some() {
                eprintln!("fixture: ignoring SIGTERM");
            }
        });
    }
    if let Some(text) = &faults.stderr {
        eprintln!("{text}");
    }
    if let Some(code) = faults.exit_at_start {
        std::process::exit(code);
    }
    if let Some(how) = &faults.grandchild {
        spawn_grandchild(how, args)?;
    }
    if faults.daemonize {
        daemonize(args)?;
    }
    if let Some(port) = faults.serve_http {
        let http = Faults { port, serve_http: None, ..Faults::default() };
        tokio::spawn(async move {
            if let Err(e) = http::serve(false, http, http::Announce::Stderr).await {
                eprintln!("roster-fixture: cannot serve HTTP on port {port}: {e}");
            }
        });
    }
    if faults.stderr_mib > 0 {
        let line = format!("{}\n", "e".repeat(1023));
        let mut err = std::io::stderr().lock();
        for _ in 0..faults.stderr_mib * 1024 {
            err.write_all(line.as_bytes())?;
        }
    }
    if faults.garbage_lines > 0 {
        let mut out = std::io::stdout().lock();
        for i in 0..faults.garbage_lines {
            writeln!(out, "garbage line {i} {{ not json")?;
        }
        out.flush()?;
    }
    if faults.never_initialize {
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await?;
    } else {
        let linger = faults.linger;
        let waiting = if faults.ping_meta || faults.no_tools {
            MetaPing(Fixture::new(faults)).serve(rmcp::transport::stdio()).await?.waiting().await
        } else {
            Fixture::new(faults).serve(rmcp::transport::stdio()).await?.waiting().await
        };
        let _ = waiting;
        if !linger {
            return Ok(());
        }
    }
    eprintln!("fixture: stdin closed; lingering");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = args.split_first().map_or(("", &[][..]), |(m, r)| (m.as_str(), r));
    match mode {
        "stdio" => {
            let faults = match parse(rest) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("roster-fixture: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = serve(faults, rest).await {
                eprintln!("roster-fixture: {e}");
                std::process::exit(1);
            }
        }
        "http" | "sse" => {
            let faults = match parse(rest) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("roster-fixture: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = http::serve(mode == "sse", faults, http::Announce::Stdout).await {
                eprintln!("roster-fixture: {e}");
                std::process::exit(1);
            }
        }
        "browse" => {
            // A browser for the login tests: follows the authorization URL's
            // redirects to roster's callback, as a person's browser would.
            let url = rest.first().cloned().unwrap_or_default();
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build();
            let status = match client {
                Ok(c) => c.get(&url).send().await.map(|r| r.status()),
                Err(e) => Err(e),
            };
            match status {
                Ok(s) if s.is_success() => {}
                Ok(s) => {
                    eprintln!("roster-fixture browse: HTTP {s}");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("roster-fixture browse: {e}");
                    std::process::exit(1);
                }
            }
        }
        "pipe" => std::process::exit(relay::pipe(rest)),
        "tcp-pipe" => std::process::exit(relay::tcp(rest.first().map_or("", String::as_str))),
        "rmcp-proxy" => std::process::exit(relay::rmcp_proxy(rest).await),
        "rmcp-proxy-http" => std::process::exit(relay::rmcp_proxy_http(rest.first().map_or("", String::as_str)).await),
        "sleeper" => loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        },
        "daemon" => {
            if let Err(e) = rustix::process::setsid() {
                eprintln!("roster-fixture: setsid: {e}");
                std::process::exit(1);
            }
            let sleeper = std::process::Command::new(std::env::current_exe().unwrap_or_default())
                .arg("sleeper")
                .args(rest)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            std::process::exit(i32::from(sleeper.is_err()));
        }
        _ => {
            eprintln!("usage: roster-fixture stdio|http|sse [switches] | roster-fixture sleeper|daemon");
            std::process::exit(2);
        }
    }
}
