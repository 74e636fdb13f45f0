//! `roster serve` driven by rmcp clients, in front of the fixture over stdio,
//! Streamable HTTP and SSE.

// Sampling and logging are deprecated by SEP-2577; roster serves 2025-11-25.
#![allow(deprecated)]

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    CreateMessageRequestParams, CreateMessageResult, ErrorData, GetPromptRequestParams, Implementation, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, ReadResourceRequestParams, SamplingMessage,
    ServerResult, SetLevelRequestParams,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Remote, Tag, assert_gone, stdio_toml, write_config};

/// What the downstream test client saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ToolsChanged,
    Progress(f64),
    Log(String),
}

/// A downstream MCP client that can sample, and reports what it is sent.
#[derive(Clone)]
struct Client {
    seen: mpsc::UnboundedSender<Seen>,
    sampled: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        ClientConfig::new(capabilities, Implementation::new("serve-test", "0"))
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
        Ok(CreateMessageResult::new(SamplingMessage::assistant_text(format!("sampled: {asked}")), "test-model".into()))
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::ToolsChanged);
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::Progress(p.progress));
    }

    async fn on_logging_message(&self, m: LoggingMessageNotificationParam, _: NotificationContext<RoleClient>) {
        let _ = self.seen.send(Seen::Log(format!("{}: {}", m.logger.unwrap_or_default(), m.data)));
    }
}

struct Served {
    client: RunningService<RoleClient, Client>,
    seen: mpsc::UnboundedReceiver<Seen>,
    sampled: Arc<Mutex<Vec<String>>>,
    pid: u32,
}

/// `roster serve --config CONFIG` spawned by an rmcp client over stdio.
async fn serve_stdio(config: &Path) -> Served {
    serve_stdio_with(config, &[]).await
}

async fn serve_stdio_with(config: &Path, env: &[(&str, &Path)]) -> Served {
    serve_stdio_full(config, env, &[]).await
}

/// The same, with `args` after `serve`.
async fn serve_stdio_args(config: &Path, args: &[&std::ffi::OsStr]) -> Served {
    serve_stdio_full(config, &[], args).await
}

async fn serve_stdio_full(config: &Path, env: &[(&str, &Path)], args: &[&std::ffi::OsStr]) -> Served {
    let mut cmd = tokio::process::Command::new(super::ROSTER);
    cmd.arg("--config").arg(config).arg("serve").args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (process, _stderr) =
        TokioChildProcess::builder(cmd).stderr(std::process::Stdio::null()).spawn().expect("roster serve starts");
    let pid = process.id().expect("a pid");
    let (tx, seen) = mpsc::unbounded_channel();
    let sampled = Arc::new(Mutex::new(Vec::new()));
    let handler = Client { seen: tx, sampled: sampled.clone() };
    let client = tokio::time::timeout(Duration::from_secs(20), handler.serve(process))
        .await
        .expect("initialize in time")
        .expect("initialize");
    Served { client, seen, sampled, pid }
}

impl Served {
    fn drain(&mut self) {
        while self.seen.try_recv().is_ok() {}
    }

    async fn tool_names(&self) -> Vec<String> {
        self.client.list_all_tools().await.expect("tools/list").into_iter().map(|t| t.name.to_string()).collect()
    }

    /// Waits until the tool list satisfies `ok`; the last list.
    async fn tools_until(&self, limit: Duration, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let until = Instant::now() + limit;
        loop {
            let names = self.tool_names().await;
            if ok(&names) || Instant::now() >= until {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, name: &str, args: Value) -> rmcp::model::CallToolResult {
        let params =
            CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().cloned().unwrap_or_default());
        self.client.call_tool(params).await.expect("tools/call")
    }

    /// Waits for the client to see `want`; everything seen until then.
    async fn wait_for(&mut self, limit: Duration, want: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut all = Vec::new();
        let until = tokio::time::Instant::now() + limit;
        while let Ok(Some(seen)) = tokio::time::timeout_at(until, self.seen.recv()).await {
            let done = want(&seen);
            all.push(seen);
            if done {
                return all;
            }
        }
        panic!("not seen within {limit:?}; saw {all:?}");
    }
}

fn text(result: &rmcp::model::CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect()
}

const FAST: &str = "[defaults]\nauto_start = true\ninitial_backoff = \"200ms\"\nmax_backoff = \"500ms\"\n\n";

#[tokio::test]
async fn tools_prompts_and_resources_of_stdio_http_and_sse_servers_are_served_under_their_prefixes() {
    let tag = Tag::new();
    let remote = Tag::new();
    let http = Remote::start(&remote, "http", &[]);
    let sse = Remote::start(&remote, "sse", &[]);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{FAST}{}tool_prefix = \"local\"\n\n[servers.web]\nurl = \"{}/mcp\"\n\n[servers.old]\ntype = \"sse\"\nurl = \"{}/sse\"\n",
        stdio_toml(&tag, "fs", &[]),
        http.base,
        sse.base
    );
    let config = write_config(dir.path(), &toml);
    let served = serve_stdio(&config).await;
    let info = served.client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("roster"));
    let names = served
        .tools_until(Duration::from_secs(15), |n| {
            ["local__echo", "web__echo", "old__echo"].iter().all(|t| n.iter().any(|x| x == t))
        })
        .await;
    for expected in ["local__echo", "local__add", "web__echo", "old__echo", "roster_status"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    assert!(names.iter().all(|n| n == "roster_status" || n == "roster_login" || n.contains("__")), "{names:?}");
    let instructions = served.client.peer_info().and_then(|i| i.instructions.clone()).unwrap_or_default();
    assert!(
        instructions.contains("fs") && instructions.contains("web") && instructions.contains("old"),
        "{instructions}"
    );

    // Each call reaches its own server.
    assert_eq!(text(&served.call("local__add", json!({"a": 2, "b": 3})).await), "5");
    assert_eq!(text(&served.call("web__echo", json!({"text": "over http"})).await), "over http");
    assert_eq!(text(&served.call("old__echo", json!({"text": "over sse"})).await), "over sse");
    let failed = served.call("web__fail", json!({"text": "as asked"})).await;
    assert_eq!((failed.is_error, text(&failed)), (Some(true), "as asked".to_owned()), "isError passes through");

    // Prompts and resources, under the same rules.
    let prompts: Vec<String> = served.client.list_all_prompts().await.unwrap().into_iter().map(|p| p.name).collect();
    assert!(prompts.contains(&"local__greet".to_owned()) && prompts.contains(&"old__greet".to_owned()), "{prompts:?}");
    let greeting = served
        .client
        .get_prompt(
            GetPromptRequestParams::new("web__greet")
                .with_arguments(json!({"name": "Ada"}).as_object().cloned().unwrap()),
        )
        .await
        .unwrap();
    assert!(format!("{:?}", greeting.messages).contains("Hello, Ada!"), "{greeting:?}");
    let resources: Vec<String> = served.client.list_all_resources().await.unwrap().into_iter().map(|r| r.uri).collect();
    for uri in ["fixture://info", "local__notes.txt", "web__notes.txt", "roster://status"] {
        assert!(resources.contains(&uri.to_owned()), "{uri} in {resources:?}");
    }
    let notes = served.client.read_resource(ReadResourceRequestParams::new("web__notes.txt")).await.unwrap();
    assert!(
        format!("{notes:?}").contains("the fixture's notes") && format!("{notes:?}").contains("web__notes.txt"),
        "{notes:?}"
    );
    let item = served.client.read_resource(ReadResourceRequestParams::new("fixture://item/42")).await.unwrap();
    assert!(format!("{item:?}").contains("item 42"), "{item:?}");
    let status = served.client.read_resource(ReadResourceRequestParams::new("roster://status")).await.unwrap();
    assert!(format!("{status:?}").contains("running"), "{status:?}");

    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

#[tokio::test]
async fn an_on_demand_server_is_listed_from_its_last_run_and_started_by_the_first_call() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let toml = format!("{}start = \"on_demand\"\n", stdio_toml(&tag, "lazy", &[]));
    let config = write_config(dir.path(), &toml);
    let env = [("XDG_STATE_HOME", state.as_path())];
    let state_of = |status: &str| -> String {
        let v: Value = serde_json::from_str(status).unwrap();
        v.as_array().unwrap().iter().find(|s| s["name"] == "lazy").unwrap()["state"].as_str().unwrap().to_owned()
    };

    // The first run has nothing kept: the server is started once to learn its tools.
    let served = serve_stdio_with(&config, &env).await;
    let names = served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "lazy__echo")).await;
    assert!(names.iter().any(|t| t == "lazy__echo"), "{names:?}");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);

    // The next run lists it from the cache without starting it...
    let served = serve_stdio_with(&config, &env).await;
    let names = served.tool_names().await;
    assert!(names.iter().any(|t| t == "lazy__echo"), "listed from the cache: {names:?}");
    assert_eq!(state_of(&text(&served.call("roster_status", json!({})).await)), "unknown", "not started");
    assert!(tag.processes().is_empty(), "no process of it runs");
    // ...and the first call starts it and waits for it.
    assert_eq!(text(&served.call("lazy__echo", json!({"text": "woken"})).await), "woken");
    assert_eq!(state_of(&text(&served.call("roster_status", json!({})).await)), "running");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);

    // A changed definition is not listed from the old run.
    let toml = format!("{}start = \"on_demand\"\ntool_prefix = \"renamed\"\n", stdio_toml(&tag, "lazy", &[]));
    std::fs::write(&config, toml).unwrap();
    let served = serve_stdio_with(&config, &env).await;
    let names = served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "renamed__echo")).await;
    assert!(!names.iter().any(|t| t.starts_with("lazy__")), "{names:?}");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

/// After the client is gone: roster exits, and every server with it.
fn assert_gone_of(pid: u32, tag: &Tag) {
    let until = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(Instant::now() < until, "roster serve did not exit after its client left");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_gone(tag);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

#[tokio::test]
async fn a_server_that_dies_leaves_and_comes_back_and_the_client_is_told() {
    let tag = Tag::new();
    let victim = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{FAST}{}{}", stdio_toml(&tag, "steady", &[]), stdio_toml(&victim, "victim", &[]));
    let config = write_config(dir.path(), &toml);
    let mut served = serve_stdio(&config).await;
    served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "victim__echo")).await;
    // Let the announcements of the start pass.
    tokio::time::sleep(Duration::from_millis(700)).await;
    served.drain();
    // A call in flight when its server dies fails, clearly and at once.
    let in_flight = served.call("victim__sleep", json!({"ms": 10_000}));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pid in victim.processes() {
            roster_tests::kill(pid);
        }
    };
    let started = Instant::now();
    let (died, ()) = tokio::join!(in_flight, killer);
    assert!(started.elapsed() < Duration::from_secs(3), "failed after {:?}", started.elapsed());
    assert_eq!(died.is_error, Some(true));
    assert!(text(&died).contains("victim") && text(&died).contains("ended during the call"), "{}", text(&died));
    // At once, a call to the dead server names it; it never hangs.
    let started = Instant::now();
    let down = served.call("victim__echo", json!({"text": "x"})).await;
    assert!(started.elapsed() < Duration::from_secs(2), "answered in {:?}", started.elapsed());
    assert_eq!(down.is_error, Some(true));
    assert!(text(&down).contains("victim"), "{}", text(&down));
    served.wait_for(Duration::from_secs(10), |s| *s == Seen::ToolsChanged).await;
    let gone = served.tools_until(Duration::from_secs(10), |n| !n.iter().any(|t| t == "victim__echo")).await;
    assert!(!gone.iter().any(|t| t == "victim__echo"), "{gone:?}");
    // Back after the restart, and the client is told again.
    served.wait_for(Duration::from_secs(10), |s| *s == Seen::ToolsChanged).await;
    let names = served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "victim__echo")).await;
    assert!(names.iter().any(|t| t == "victim__echo"), "{names:?}");
    assert!(names.iter().any(|t| t == "steady__echo"), "the other server was never affected: {names:?}");
    assert_eq!(text(&served.call("victim__echo", json!({"text": "back"})).await), "back");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
    assert_gone(&victim);
}

#[tokio::test]
async fn an_upstream_list_changed_reaches_the_client_with_the_new_tool() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &[])));
    let mut served = serve_stdio(&config).await;
    let before = served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "fx__grow")).await;
    assert!(!before.iter().any(|t| t == "fx__extra"), "{before:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    served.drain();
    assert_eq!(text(&served.call("fx__grow", json!({})).await), "grown");
    served.wait_for(Duration::from_secs(10), |s| *s == Seen::ToolsChanged).await;
    let after = served.tool_names().await;
    assert!(after.iter().any(|t| t == "fx__extra"), "{after:?}");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

#[tokio::test]
async fn calls_are_bounded_cancelled_upstream_and_carry_progress_sampling_and_logs() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.txt");
    let record_arg = record.display().to_string();
    let toml = format!("{FAST}{}tool_timeout = \"1s\"\n", stdio_toml(&tag, "fx", &["--record", &record_arg]));
    let config = write_config(dir.path(), &toml);
    let mut served = serve_stdio(&config).await;
    served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "fx__sleep")).await;

    // tool_timeout bounds the call.
    let started = Instant::now();
    let slow = served.call("fx__sleep", json!({"ms": 10_000})).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(slow.is_error, Some(true));
    assert!(text(&slow).contains("did not answer within 1s"), "{}", text(&slow));

    // A cancelled call is cancelled upstream too.
    let params =
        CallToolRequestParams::new("fx__wait").with_arguments(json!({"ms": 900}).as_object().cloned().unwrap());
    let handle = served
        .client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.cancel(Some("test".into())).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&record).unwrap_or_default().contains("cancelled") {
        assert!(Instant::now() < until, "the fixture never saw the cancellation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Progress arrives, in order, for the client's own token.
    let params =
        CallToolRequestParams::new("fx__progress").with_arguments(json!({"steps": 20}).as_object().cloned().unwrap());
    let handle = served
        .client
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let done = handle.await_response().await.unwrap();
    assert!(matches!(&done, ServerResult::CallToolResult(r) if text(r) == "done"), "{done:?}");
    let seen = served.wait_for(Duration::from_secs(5), |s| *s == Seen::Progress(20.0)).await;
    let progress: Vec<f64> =
        seen.iter().filter_map(|s| if let Seen::Progress(p) = s { Some(*p) } else { None }).collect();
    assert_eq!(progress, (1..=20).map(f64::from).collect::<Vec<_>>());

    // A sampling request from the server reaches this client, and the answer goes back.
    let sampled = served.call("fx__sample", json!({"text": "a haiku"})).await;
    assert_eq!(text(&sampled), "sampled: a haiku");
    assert_eq!(served.sampled.lock().unwrap().as_slice(), ["a haiku"]);

    // Log messages come with the server's name.
    served.call("fx__log", json!({"text": "hello"})).await;
    let seen = served.wait_for(Duration::from_secs(5), |s| matches!(s, Seen::Log(_))).await;
    assert!(seen.iter().any(|s| matches!(s, Seen::Log(l) if l.starts_with("fx") && l.contains("hello"))), "{seen:?}");

    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

#[test]
fn colliding_prefixes_are_resolved_by_server_name_and_reported() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let long = "p".repeat(60);
    // beta and alpha want the same names; delta's are too long; gamma comes and
    // goes, so the catalog is built again and again.
    let toml = format!(
        "{FAST}{}tool_prefix = \"same\"\nenv = {{ WHO = \"beta\" }}\n\n\
         {}tool_prefix = \"same\"\nenv = {{ WHO = \"alpha\" }}\n\n\
         {}tool_prefix = \"{long}\"\n\n{}",
        stdio_toml(&tag, "beta", &[]),
        stdio_toml(&tag, "alpha", &[]),
        stdio_toml(&tag, "delta", &[]),
        stdio_toml(&tag, "gamma", &["--exit-after-init", "300"]),
    );
    let config = write_config(dir.path(), &toml);
    let log = dir.path().join("serve.log");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let served = serve_stdio_args(&config, &["--log-file".as_ref(), log.as_os_str()]).await;
        let wanted = |n: &[String]| {
            n.iter().filter(|t| t.starts_with("same__getenv")).count() == 2 && n.iter().any(|t| t.starts_with("ppp"))
        };
        let names = served.tools_until(Duration::from_secs(15), wanted).await;
        let getenv: Vec<&String> = names.iter().filter(|t| t.starts_with("same__getenv")).collect();
        assert_eq!(getenv.len(), 2, "{names:?}");
        // alpha sorts first and keeps the plain name; beta's is suffixed.
        let who = json!({"name": "WHO"});
        assert_eq!(text(&served.call("same__getenv", who.clone()).await), "alpha");
        let other = getenv.iter().find(|n| n.as_str() != "same__getenv").expect("beta's");
        assert!(other.len() <= 64 && other.starts_with("same__getenv_"), "{other}");
        assert_eq!(text(&served.call(other, who).await), "beta");

        // delta's names are cut to 64 characters and end in a hash, each its own.
        let tools = served.client.list_all_tools().await.unwrap();
        let delta: Vec<&rmcp::model::Tool> = tools.iter().filter(|t| t.name.starts_with(&long[..40])).collect();
        assert!(delta.len() > 3, "{names:?}");
        let pattern = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        assert!(delta.iter().all(|t| pattern(&t.name)), "{names:?}");
        let distinct: std::collections::HashSet<&str> = delta.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(distinct.len(), delta.len(), "no two alike");
        let echo = delta.iter().find(|t| t.description.as_deref() == Some("Returns its text")).expect("echo");
        assert_eq!(text(&served.call(&echo.name, json!({"text": "long"})).await), "long");

        // gamma comes and goes: the catalog is built again each time, and no
        // collision is reported again.
        let logged = || std::fs::read_to_string(&log).unwrap_or_default();
        let back = |text: &str| text.lines().filter(|l| l.contains("gamma") && l.contains("failed → running")).count();
        let collisions = |text: &str| text.lines().filter(|l| l.contains("name collision")).count();
        let until = Instant::now() + Duration::from_secs(15);
        let mut counted = None;
        let text = loop {
            // Each time gamma is back, its lists follow its state line shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let text = logged();
            match counted {
                None if back(&text) >= 1 => counted = Some((back(&text), collisions(&text))),
                Some((first, _)) if back(&text) >= first + 3 => break text,
                _ => {}
            }
            assert!(Instant::now() < until, "gamma did not come and go: {text}");
        };
        let (_, before) = counted.unwrap_or_default();
        assert_eq!(collisions(&text), before, "reported again: {text}");
        let reported: Vec<&str> =
            text.lines().filter(|l| l.contains("name collision") && l.contains("\"same__getenv\"")).collect();
        assert_eq!(reported.len(), 1, "{text}");
        assert!(
            reported[0].contains("alpha:getenv (kept)") && reported[0].contains("beta:getenv (served as"),
            "{text}"
        );
        served.client.cancel().await.unwrap();
        assert_gone_of(served.pid, &tag);
    });
}

/// Two MCP clients (two editor windows) spawn `roster serve` on the same file:
/// the second is served by the first, through the same servers, and the servers
/// stop only when the last client has gone, whichever leaves first.
#[tokio::test]
async fn a_second_serve_on_the_same_file_is_served_by_the_first_until_the_last_client_leaves() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &[])));
    // The first client only closes stdin when it leaves (rmcp's child transport
    // would also signal the process after 3 s, as the MCP spec has clients do).
    let mut holder = tokio::process::Command::new(super::ROSTER)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pipes = (holder.stdout.take().unwrap(), holder.stdin.take().unwrap());
    let (tx, seen) = mpsc::unbounded_channel();
    let handler = Client { seen: tx, sampled: Arc::default() };
    let first = Served {
        client: handler.serve(pipes).await.expect("initialize"),
        seen,
        sampled: Arc::default(),
        pid: holder.id().unwrap(),
    };
    first.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "fx__echo")).await;
    let server = tag.processes();
    assert!(!server.is_empty());
    let second = serve_stdio(&config).await;
    let names = second.tool_names().await;
    assert!(names.iter().any(|t| t == "fx__echo"), "{names:?}");
    assert_eq!(text(&second.call("fx__echo", json!({"text": "two"})).await), "two");
    assert_eq!(text(&first.call("fx__echo", json!({"text": "one"})).await), "one");
    assert_eq!(tag.processes(), server, "both clients use the one server");
    // The first client leaves: the second is still served, by the same server.
    first.client.cancel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!is_zombie(first.pid) && Path::new(&format!("/proc/{}", first.pid)).exists(), "the first serve ended");
    assert_eq!(text(&second.call("fx__echo", json!({"text": "still"})).await), "still");
    assert_eq!(tag.processes(), server);
    // The last leaves: everything stops, both processes exit.
    second.client.cancel().await.unwrap();
    assert_gone_of(second.pid, &tag);
    let status = tokio::time::timeout(Duration::from_secs(15), holder.wait()).await.expect("the first serve exits");
    assert_eq!(status.unwrap().code(), Some(0));
    assert_gone(&tag);
}

/// The `serve` a second client is attached to is stopped by the SIGTERM that
/// MCP clients send after closing stdin: the attached one takes over, starts the
/// servers itself, and its client's session goes on without a new handshake; a
/// call in flight gets rmcp's "cancelled" from the first.
#[tokio::test]
async fn an_attached_serve_takes_over_when_the_one_it_is_attached_to_stops() {
    take_over(false, "cancelled").await;
}

/// The same when the first dies (SIGKILL): the call in flight is answered by
/// the attached one's bridge.
#[tokio::test]
async fn an_attached_serve_takes_over_when_the_one_it_is_attached_to_dies() {
    take_over(true, "stopped before answering").await;
}

async fn take_over(kill: bool, answer: &str) {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.txt");
    let record_arg = record.display().to_string();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &["--record", &record_arg])));
    let mut holder = roster_tests::bench::Reaped(
        std::process::Command::new(super::ROSTER)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(15);
    while tag.processes().is_empty() {
        assert!(Instant::now() < until, "the first serve never started its server");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_server = tag.processes();
    let mut attached = serve_stdio(&config).await;
    assert_eq!(text(&attached.call("fx__echo", json!({"text": "before"})).await), "before");
    attached.client.set_level(SetLevelRequestParams::new(LoggingLevel::Warning)).await.unwrap();
    attached.drain();
    // A call in flight when the first serve goes away is answered, with an error.
    let params =
        CallToolRequestParams::new("fx__sleep").with_arguments(json!({"ms": 20_000}).as_object().cloned().unwrap());
    let in_flight = tokio::time::timeout(Duration::from_secs(10), attached.client.call_tool(params));
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if kill {
            roster_tests::kill(holder.id());
        } else {
            roster_tests::terminate(holder.id());
        }
        let until = Instant::now() + Duration::from_secs(15);
        while holder.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "the first serve did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let started = Instant::now();
    let (lost, ()) = tokio::join!(in_flight, stopper);
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    match lost {
        Ok(Err(rmcp::ServiceError::McpError(e))) => assert!(e.message.contains(answer), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // The tools went away with the first serve's server and come back with the
    // attached one's, and the client is told.
    attached.wait_for(Duration::from_secs(15), |s| *s == Seen::ToolsChanged).await;
    assert_eq!(text(&attached.call("fx__echo", json!({"text": "after"})).await), "after");
    let second_server = tag.processes();
    assert!(!second_server.is_empty() && second_server != first_server, "{first_server:?} {second_server:?}");
    // The client's log level went to the first server, and to the second with the replay.
    let levels = |record: &Path| {
        std::fs::read_to_string(record).unwrap_or_default().lines().filter(|l| *l == "level warning").count()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while levels(&record) < 2 {
        assert!(Instant::now() < until, "{:?}", std::fs::read_to_string(&record));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    attached.client.cancel().await.unwrap();
    assert_gone_of(attached.pid, &tag);
}

/// An attached `serve` has nothing of its own to stop: a signal ends it at once,
/// and the `serve` it was attached to goes on.
#[test]
fn a_signal_ends_an_attached_serve_at_once_and_leaves_the_first_alone() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &stdio_toml(&tag, "fx", &[]));
    let spawn = || {
        let mut child = roster_tests::bench::Reaped(
            Command::new(super::ROSTER)
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        (child, line)
    };
    let (mut holder, said) = spawn();
    assert!(said.contains("1 server from"), "{said}");
    let (mut attached, said) = spawn();
    assert!(said.contains("this client is served by it"), "{said}");
    roster_tests::terminate(attached.id());
    assert!(
        super::exit_within(&mut attached, Duration::from_secs(5)).is_some(),
        "the attached serve did not stop on SIGTERM"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(holder.try_wait().unwrap().is_none(), "the first serve stopped with it");
    drop(holder.stdin.take());
    assert!(
        super::exit_within(&mut holder, Duration::from_secs(15)).is_some(),
        "the first serve did not exit when its stdin closed"
    );
    assert_gone(&tag);
}

/// A `serve` that finds the file locked and the sharing socket there but not
/// answering (a `serve` on its way out) waits for the lock and takes over; its
/// client's handshake is answered once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_that_finds_one_stopping_waits_for_its_lock_and_takes_over() {
    use std::io::BufRead as _;
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.txt");
    let record_arg = record.display().to_string();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &["--record", &record_arg])));
    let mut holder = roster_tests::bench::Reaped(
        std::process::Command::new(super::ROSTER)
            .arg("--json")
            .arg("--config")
            .arg(&config)
            .arg("up")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kept open: `up` stops when its stdout closes.
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let note: Value = serde_json::from_str(&first).unwrap();
    let socket = note["note"].as_str().and_then(|n| n.rsplit("control socket ").next()).unwrap().to_owned();
    // What a stopping `serve` leaves for a moment: its socket, answering no more.
    let sharing = Path::new(&socket).with_extension("mcp");
    drop(std::os::unix::net::UnixListener::bind(&sharing).unwrap());
    let serving = {
        let config = config.clone();
        tokio::spawn(async move { serve_stdio(&config).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!serving.is_finished(), "served while another roster held the file");
    roster_tests::terminate(holder.id());
    let served = tokio::time::timeout(Duration::from_secs(20), serving).await.expect("taken over").unwrap();
    let names = served.tools_until(Duration::from_secs(15), |n| n.iter().any(|t| t == "fx__echo")).await;
    assert!(names.iter().any(|t| t == "fx__echo"), "{names:?}");
    assert_eq!(text(&served.call("fx__echo", json!({"text": "mine"})).await), "mine");
    assert!(holder.try_wait().unwrap().is_some(), "the first roster is still running");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

/// The first lists wait until the first attempts have ended: a client that
/// lists at once, before any server is up, sees every server that starts.
#[tokio::test]
async fn a_client_that_lists_at_once_sees_every_server_that_starts() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{FAST}{}{}", stdio_toml(&tag, "one", &[]), stdio_toml(&tag, "two", &[]));
    let config = write_config(dir.path(), &toml);
    let served = serve_stdio(&config).await;
    let names = served.tool_names().await;
    assert!(names.iter().any(|t| t == "one__echo") && names.iter().any(|t| t == "two__echo"), "{names:?}");
    served.client.cancel().await.unwrap();
    assert_gone_of(served.pid, &tag);
}

/// A name no table holds may be a tool of a server that never came up: the
/// error says which servers are not running, and why.
#[tokio::test]
async fn a_call_to_an_unknown_name_says_which_servers_are_not_running() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let toml = format!(
        "{FAST}{}auto_start = false\n\n[servers.gone]\nurl = \"http://127.0.0.1:{port}/mcp\"\n",
        stdio_toml(&tag, "idle", &[])
    );
    let config = write_config(dir.path(), &toml);
    let served = serve_stdio(&config).await;
    let params = CallToolRequestParams::new("gone__echo").with_arguments(Default::default());
    let started = Instant::now();
    let error = served.client.call_tool(params).await.expect_err("no such tool");
    assert!(started.elapsed() < Duration::from_secs(5), "answered in {:?}", started.elapsed());
    let rmcp::ServiceError::McpError(error) = error else { panic!("{error:?}") };
    assert_eq!(error.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    let message = error.message.to_string();
    assert!(message.starts_with("roster serves no tool named \"gone__echo\""), "{message}");
    assert!(message.contains("\"gone\" is failed (") && message.contains("next attempt in"), "{message}");
    assert!(message.contains("\"idle\" has not been started"), "{message}");
    served.client.cancel().await.unwrap();
    assert_gone(&tag);
}

/// The JSON objects among `text`'s lines.
fn objects(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(Value::is_object).collect()
}

/// Over stdio, stdout is the MCP channel, `--json` or not: a configuration with
/// errors, when `serve` starts and when the file is reloaded, is reported on
/// stderr and nothing but MCP reaches stdout.
#[test]
fn over_stdio_configuration_errors_go_to_stderr_even_with_json() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let bad = "[servers.fs]\ncomand = \"x\"\n";
    let config = write_config(dir.path(), bad);
    let out = Command::new(super::ROSTER)
        .arg("--json")
        .arg("--config")
        .arg(&config)
        .args(["serve", "--no-watch"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let reported = objects(&String::from_utf8_lossy(&out.stderr));
    assert!(reported.iter().any(|v| v["ok"] == false && v["errors"][0]["message"].is_string()), "{reported:?}");

    // Running, then the file goes bad: the reload's errors go to stderr too.
    write_config(dir.path(), &stdio_toml(&tag, "fs", &[]));
    let mut child = roster_tests::bench::Reaped(
        Command::new(super::ROSTER)
            .arg("--json")
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |what: &dyn Fn(&Value) -> bool| {
        let until = Instant::now() + Duration::from_secs(15);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Ok(line) = seen.recv_timeout(left) else { break };
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| what(&v)) {
                return true;
            }
        }
        false
    };
    assert!(wait_for(&|v| v["note"].as_str().is_some_and(|n| n.contains(" server from "))), "serve never started");
    std::fs::write(&config, bad).unwrap();
    assert!(wait_for(&|v| v["ok"] == false && v["errors"].is_array()), "no reload errors on stderr");
    // The client goes away: roster stops, and it wrote nothing to stdout.
    drop(child.stdin.take());
    assert!(
        super::exit_within(&mut child, Duration::from_secs(15)).is_some(),
        "roster serve did not exit when its stdin closed"
    );
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(stdout, "", "only MCP goes to stdout");
    assert_gone(&tag);
}

#[test]
fn with_a_log_file_what_would_go_to_stderr_goes_there_appended() {
    use std::process::{Command, Stdio};
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &stdio_toml(&tag, "fs", &[]));
    let log = dir.path().join("roster.log");
    let mut child = roster_tests::bench::Reaped(
        Command::new(super::ROSTER)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--no-watch", "--log-file"])
            .arg(&log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(15);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    while !logged().contains("serving MCP on stdio") {
        assert!(Instant::now() < until, "no start note in the log file: {}", logged());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client goes away: roster stops, and says so in the file.
    drop(child.stdin.take());
    assert!(super::exit_within(&mut child, Duration::from_secs(15)).is_some(), "roster serve did not exit");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(stderr, "", "nothing on stderr");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(stdout, "", "nothing on stdout but MCP");
    let served = logged();
    assert!(served.lines().count() > 2, "the stop was noted too: {served}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600, "created owner-only");
    assert_gone(&tag);

    // The next run appends.
    let out = Command::new(super::ROSTER)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("--log-file")
        .arg(&log)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!((out.status.code(), out.stderr.len()), (Some(2), 0), "{out:?}");
    let text = logged();
    assert!(text.starts_with(&served), "appended, not replaced: {text}");
    assert!(text[served.len()..].contains("missing.toml"), "the error is in the file: {text}");

    // A log file that cannot be opened is an error, on stderr.
    let out = Command::new(super::ROSTER)
        .arg("--config")
        .arg(&config)
        .arg("--log-file")
        .arg(dir.path().join("missing/roster.log"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing/roster.log"), "{out:?}");
}

/// `roster serve --http` on a free port, once it listens (killed when dropped,
/// so a failing test leaves nothing behind); its address.
fn serve_http(config: &Path, extra: &[&str]) -> (roster_tests::bench::Reaped, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(super::ROSTER)
        .args(["--config", config.to_str().unwrap(), "serve", "--http", &addr])
        .args(extra)
        .env("ROSTER_TEST_TOKEN", "s3cret")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < until, "the endpoint never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (roster_tests::bench::Reaped(child), addr)
}

#[tokio::test]
async fn an_http_client_gets_the_same_service_with_progress_and_sampling() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &[])));
    let (mut child, addr) = serve_http(&config, &[]);
    let url = format!("http://{addr}/mcp");
    let http = roster_http::HttpClients::new(roster_http::HttpOptions::default()).unwrap().for_url(&url).unwrap();
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        http,
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url),
    );
    let (tx, mut seen) = mpsc::unbounded_channel();
    let sampled = Arc::new(Mutex::new(Vec::new()));
    let client = Client { seen: tx, sampled: sampled.clone() }.serve(transport).await.expect("initialize over HTTP");
    // The server's tools are served once it is up and listed (the endpoint
    // listens before that).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> =
            client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
        if names.iter().any(|n| n == "fx__echo") {
            break;
        }
        assert!(Instant::now() < until, "fx__echo is not served within 10 s: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |name: &str, args: Value| {
        CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().cloned().unwrap_or_default())
    };
    let echoed = client.call_tool(call("fx__echo", json!({"text": "over http"}))).await.unwrap();
    assert_eq!(text(&echoed), "over http");
    // A sampling request from the server rides the call's own response stream.
    let reply = client.call_tool(call("fx__sample", json!({"text": "a limerick"}))).await.unwrap();
    assert_eq!(text(&reply), "sampled: a limerick");
    let handle = client
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(call("fx__progress", json!({"steps": 5})))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    handle.await_response().await.unwrap();
    let mut progress = Vec::new();
    while progress.last() != Some(&5.0) {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some(Seen::Progress(p))) => progress.push(p),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("progress so far: {progress:?}"),
        }
    }
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0, 5.0]);
    client.cancel().await.unwrap();
    roster_tests::terminate(child.0.id());
    assert_eq!(super::exit_within(&mut child.0, Duration::from_secs(15)), Some(0));
    assert_gone(&tag);
}

/// One raw HTTP request to `addr`; the status code.
fn raw_status(addr: &str, host: &str, extra: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn the_http_endpoint_refuses_a_wrong_host_origin_or_token() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &[])));
    let (mut child, addr) = serve_http(&config, &["--token-env", "ROSTER_TEST_TOKEN"]);
    let good = "Authorization: Bearer s3cret\r\n";
    assert_eq!(raw_status(&addr, &addr, good), 200, "the right host and token");
    assert_eq!(raw_status(&addr, &addr, ""), 401, "no token");
    assert_eq!(raw_status(&addr, &addr, "Authorization: Bearer wrong\r\n"), 401, "a wrong token");
    assert_eq!(raw_status(&addr, "evil.example:80", good), 403, "a foreign Host (DNS rebinding)");
    assert_eq!(raw_status(&addr, &addr, &format!("{good}Origin: http://evil.example\r\n")), 403, "a foreign Origin");
    roster_tests::terminate(child.0.id());
    assert_eq!(super::exit_within(&mut child.0, Duration::from_secs(15)), Some(0));
    assert_gone(&tag);
}

/// A configuration in `dir` with one OAuth server, `docs`, at `remote`, and the
/// state directory its tokens go to.
fn oauth_docs(dir: &Path, remote: &super::Remote) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("roster.toml");
    let toml = format!(
        "[defaults]\nauto_start = true\n[servers.docs]\nurl = \"{}/mcp\"\nauth = {{ type = \"oauth\" }}\n",
        remote.base
    );
    std::fs::write(&config, toml).unwrap();
    (config, dir.join("state"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_waiting_for_a_login_says_how_and_comes_in_after_it() {
    let tag = Tag::new();
    let remote = super::Remote::start(&tag, "http", &["--oauth"]);
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = oauth_docs(dir.path(), &remote);
    let mut served = serve_stdio_with(&config, &[("XDG_STATE_HOME", &state)]).await;
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status: Value = serde_json::from_str(&text(&served.call("roster_status", json!({})).await)).unwrap();
        if status[0]["state"] == "auth_required" || Instant::now() > until {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status[0]["state"], "auth_required", "{status}");
    assert_eq!(status[0]["login"], "roster login docs", "{status}");
    let call = served.call("roster_login", json!({})).await;
    assert_eq!(call.is_error, Some(true), "roster_login needs a server");

    let browser = format!("{} browse", super::fixture());
    let login = std::process::Command::new(super::ROSTER)
        .args(["--config"])
        .arg(&config)
        .arg("login")
        .arg("docs")
        .env("XDG_STATE_HOME", &state)
        .env("BROWSER", browser)
        .output()
        .unwrap();
    assert_eq!(login.status.code(), Some(0), "{}", String::from_utf8_lossy(&login.stderr));
    served.wait_for(Duration::from_secs(10), |s| matches!(s, Seen::ToolsChanged)).await;
    assert_eq!(text(&served.call("docs__echo", json!({"text": "in"})).await), "in");
    served.client.cancel().await.unwrap();
    drop(remote);
    assert_gone_of(served.pid, &tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_login_tool_returns_the_url_and_the_server_comes_in_after_the_login() {
    let tag = Tag::new();
    let remote = super::Remote::start(&tag, "http", &["--oauth"]);
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = oauth_docs(dir.path(), &remote);
    // No browser may start: the test opens the URL itself.
    let no_browser = dir.path().join("no-browser");
    let mut served = serve_stdio_with(&config, &[("XDG_STATE_HOME", &state), ("BROWSER", &no_browser)]).await;
    let names = served.tool_names().await;
    assert!(names.iter().any(|n| n == "roster_login"), "{names:?}");
    let refused = served.call("roster_login", json!({"server": "nope"})).await;
    assert_eq!(refused.is_error, Some(true));
    assert!(text(&refused).contains("docs"), "the servers are named: {}", text(&refused));

    let answer = text(&served.call("roster_login", json!({"server": "docs"})).await);
    let url = answer.lines().find(|l| l.starts_with("http://")).unwrap_or_else(|| panic!("a URL in {answer}"));
    let again = text(&served.call("roster_login", json!({"server": "docs"})).await);
    assert!(again.contains(url), "asking twice gives the same login: {again}");
    let browsed = std::process::Command::new(super::fixture()).args(["browse", url]).status().unwrap();
    assert!(browsed.success());
    served.wait_for(Duration::from_secs(10), |s| matches!(s, Seen::ToolsChanged)).await;
    let names = served.tools_until(Duration::from_secs(10), |n| n.iter().any(|t| t == "docs__echo")).await;
    assert!(names.iter().any(|t| t == "docs__echo"), "{names:?}");
    assert_eq!(text(&served.call("docs__echo", json!({"text": "in"})).await), "in");
    served.client.cancel().await.unwrap();
    drop(remote);
    assert_gone_of(served.pid, &tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_counts_tool_calls_by_server_and_outcome() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fx", &[])));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut child, addr) = serve_http(&config, &["--metrics", &format!("127.0.0.1:{port}")]);
    let url = format!("http://{addr}/mcp");
    let http = roster_http::HttpClients::new(roster_http::HttpOptions::default()).unwrap().for_url(&url).unwrap();
    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
        http,
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url),
    );
    let (tx, _seen) = mpsc::unbounded_channel();
    let client = Client { seen: tx, sampled: Arc::default() }.serve(transport).await.expect("initialize over HTTP");
    let call = |name: &str, args: Value| {
        CallToolRequestParams::new(name.to_owned()).with_arguments(args.as_object().cloned().unwrap_or_default())
    };
    // The server's tools are served once it is up and listed.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !client.list_all_tools().await.unwrap().iter().any(|t| t.name == "fx__echo") {
        assert!(std::time::Instant::now() < until, "fx__echo is not served within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.call_tool(call("fx__echo", json!({"text": "a"}))).await.unwrap();
    client.call_tool(call("fx__echo", json!({"text": "b"}))).await.unwrap();
    let failed = client.call_tool(call("fx__fail", json!({"text": "no"}))).await.unwrap();
    assert_eq!(failed.is_error, Some(true));
    let (status, text) = tokio::task::spawn_blocking(move || super::http_get(port, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    let m = super::samples(&text);
    let get = |key: &str| m.get(key).copied().unwrap_or_else(|| panic!("no {key} in\n{text}"));
    assert_eq!(get(r#"roster_tool_calls_total{server="fx",outcome="ok"}"#), 2.0);
    assert_eq!(get(r#"roster_tool_calls_total{server="fx",outcome="tool_error"}"#), 1.0);
    assert_eq!(get(r#"roster_tool_call_duration_seconds_count{server="fx"}"#), 3.0);
    client.cancel().await.unwrap();
    roster_tests::terminate(child.0.id());
    assert_eq!(super::exit_within(&mut child.0, Duration::from_secs(15)), Some(0));
    assert_gone(&tag);
}
