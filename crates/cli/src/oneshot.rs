//! One-shots: `roster ping|tools|call TARGET`, no `up` needed. A one-shot never
//! leaves a process behind: the session is closed (for stdio, the whole process
//! group), or dropped, which kills it.

use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use roster_core::{Failure, FailureClass, ServerSpec, ServerType};
use roster_supervisor::Session;
use serde_json::{Value, json};

use crate::output::{self, Tone, escape, paint};
use crate::up::connector;
use crate::{Cli, config, exit};

/// How a URL target is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum UrlTransport {
    /// Streamable HTTP (MCP 2025-03-26 and later).
    StreamableHttp,
    /// The legacy HTTP+SSE transport (MCP 2024-11-05).
    Sse,
}

/// Which server a one-shot talks to.
#[derive(Debug, clap::Args)]
pub(crate) struct TargetArgs {
    /// A server name from the configuration, or an http(s) URL. For a stdio
    /// server, give `-- COMMAND ARGS...` instead.
    #[arg(value_name = "TARGET", required_unless_present = "command")]
    target: Option<String>,
    /// The transport of a URL target.
    #[arg(long, value_enum, default_value_t = UrlTransport::StreamableHttp)]
    transport: UrlTransport,
    /// A header for a URL target, `'Name: value'` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Seconds to connect and initialize (and for the request).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u32>,
    /// When the server asks for credentials, log in (as `roster login` does) and
    /// go on.
    #[arg(long)]
    login: bool,
    /// A stdio server to run: its command and arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// What a one-shot does once connected.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Ping,
    Tools,
    Call { tool: String, args: String },
}

/// The target's definition, and the HTTP options to reach it (the configuration's
/// for a server named in it).
fn resolve(cli: &Cli, t: &TargetArgs) -> Result<(ServerSpec, roster_http::HttpOptions), String> {
    let mut http = roster_http::HttpOptions::default();
    let mut spec = if let Some((program, args)) = t.command.split_first() {
        let mut s = ServerSpec::stdio("oneshot", program.clone());
        s.args = args.to_vec();
        s
    } else {
        let target = t.target.clone().unwrap_or_default();
        if target.starts_with("http://") || target.starts_with("https://") {
            let kind = match t.transport {
                UrlTransport::StreamableHttp => ServerType::StreamableHttp,
                UrlTransport::Sse => ServerType::Sse,
            };
            let mut s = ServerSpec::remote("oneshot", kind, target);
            for h in &t.headers {
                let (name, value) =
                    h.split_once(':').ok_or_else(|| format!("--header {h:?}: write it as 'Name: value'"))?;
                s.headers.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            s
        } else {
            let config = config::load(&cli.config).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                format!("{} has errors:\n  {}", cli.config.display(), lines.join("\n  "))
            })?;
            http = config.http;
            let found = config.servers.into_iter().map(roster_core::ValidSpec::into_inner).find(|s| s.name == target);
            found.ok_or_else(|| format!("no server named {target:?} in {}", cli.config.display()))?
        }
    };
    if !t.headers.is_empty() && !spec.is_remote() {
        return Err("--header applies to URL targets".to_owned());
    }
    if let Some(secs) = t.timeout {
        spec.timeout = Some(secs);
    }
    spec.validate().map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    Ok((spec, http))
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Prints a failure and returns its exit code.
fn failed(cli: &Cli, failure: &Failure, started: Instant, target: &TargetArgs) -> u8 {
    let challenge = match &failure.class {
        FailureClass::NeedsCredentials(c) => Some(c.as_ref()),
        FailureClass::Transient { .. } | FailureClass::Permanent | FailureClass::Cancelled => None,
    };
    if cli.json {
        let error = json!({"class": failure.kind(), "message": failure.message, "challenge": challenge});
        output::out(json!({"ok": false, "error": error, "elapsed_ms": elapsed_ms(started)}).to_string());
    } else {
        let color = output::stderr_color();
        output::err(format!(
            "{} {}",
            paint(&format!("{}:", failure.kind()), Tone::Bad, color),
            escape(&failure.message, false)
        ));
        if let Some(c) = challenge {
            for (k, v) in [
                ("realm", &c.realm),
                ("scope", &c.scope),
                ("error", &c.error),
                ("resource metadata", &c.resource_metadata),
            ] {
                if let Some(v) = v {
                    output::err(format!("  {k}: {}", escape(v, false)));
                }
            }
            if let Some(name) = &target.target {
                output::err(format!("  to log in: roster login {}", escape(name, false)));
            }
        }
    }
    output::exit_code(failure.kind())
}

/// The exit code of a one-shot stopped by a signal: 128 + its number.
fn interrupted(stop: crate::up::Stop) -> u8 {
    output::err(format!("roster: {}; the server was closed", stop.describe()));
    match stop {
        crate::up::Stop::Interrupt | crate::up::Stop::StdoutClosed | crate::up::Stop::ClientGone => 130,
        crate::up::Stop::Terminate => 143,
        crate::up::Stop::Hangup => 129,
    }
}

/// Runs one one-shot and returns the exit code.
pub(crate) async fn run(cli: &Cli, target: &TargetArgs, op: Op) -> u8 {
    let (spec, http) = match resolve(cli, target) {
        Ok(s) => s,
        Err(e) => {
            output::err(format!("roster: {e}"));
            return exit::USAGE;
        }
    };
    let arguments = match &op {
        Op::Call { args, .. } => match serde_json::from_str::<Value>(args) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) | Err(_) => {
                output::err("roster: --args must be a JSON object, like '{\"text\": \"hi\"}'");
                return exit::USAGE;
            }
        },
        Op::Ping | Op::Tools => None,
    };
    // Only what the target needs: an HTTP client (with its TLS roots) costs
    // milliseconds that a stdio one-shot should not pay.
    let connector = match connector(spec.server_type, http) {
        Ok(t) => t,
        Err(e) => {
            output::err(format!("roster: {e}"));
            return exit::USAGE;
        }
    };
    // Ctrl-C, SIGTERM or SIGHUP: the server is closed as a stop would close it; a
    // second one kills it at once.
    let mut stops = match crate::up::stops() {
        Ok(s) => s,
        Err(e) => {
            output::err(format!("roster: cannot listen for signals: {e}"));
            return exit::USAGE;
        }
    };
    let started = Instant::now();
    let timeout = spec.connect_timeout();
    let mut session = tokio::select! {
        result = connector.connect(&spec, started + timeout) => result,
        // Dropping the attempt kills what it spawned.
        Some(stop) = stops.recv() => return interrupted(stop),
    };
    // --login: the server wants credentials; log in, then try once more.
    if target.login
        && spec.is_remote()
        && let Err(failure) = &session
        && failure.kind() == roster_core::FailureKind::NeedsCredentials
    {
        if let Err(code) = crate::login::login_for(cli, &spec).await {
            return code;
        }
        let again = Instant::now();
        session = tokio::select! {
            result = connector.connect(&spec, again + timeout) => result,
            Some(stop) = stops.recv() => return interrupted(stop),
        };
    }
    let session = match session {
        Ok(s) => s,
        Err(failure) => return failed(cli, &failure, started, target),
    };
    let mut stopped = None;
    let outcome = tokio::select! {
        outcome = work(session.as_ref(), &op, arguments, timeout) => Some(outcome),
        Some(stop) = stops.recv() => {
            stopped = Some(stop);
            None
        }
    };
    let info = session.peer().and_then(|p| p.peer_info());
    // Close within a bound; a second signal kills at once.
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_secs(10), session.close()) => {}
        Some(_) = stops.recv() => session.kill(),
    }
    drop(session);
    let Some(outcome) = outcome else { return interrupted(stopped.unwrap_or(crate::up::Stop::Interrupt)) };
    let (result, tool_error) = match outcome {
        Ok(x) => x,
        Err(failure) => return failed(cli, &failure, started, target),
    };
    let server =
        info.as_ref().and_then(|i| i.server_info.as_ref()).map(|s| json!({"name": s.name, "version": s.version}));
    let protocol = info.as_ref().map(|i| i.protocol_version.to_string());
    if cli.json {
        let mut out = json!({"ok": !tool_error, "server": server, "protocol_version": protocol, "elapsed_ms": elapsed_ms(started)});
        if let (Value::Object(out), Value::Object(result)) = (&mut out, result) {
            out.extend(result);
        }
        output::out(out.to_string());
    } else {
        print_human(&op, &result, server.as_ref(), protocol.as_deref(), started);
    }
    if tool_error { exit::TOOL_ERROR } else { exit::OK }
}

/// The work of the one-shot: `(fields for the JSON answer, whether the tool failed)`.
async fn work(
    session: &dyn Session,
    op: &Op,
    arguments: Option<serde_json::Map<String, Value>>,
    timeout: Duration,
) -> Result<(Value, bool), Failure> {
    let peer = session.peer().ok_or_else(|| Failure::permanent("the session has no MCP client"))?;
    let limit = |d: Duration| Failure::transient(format!("no answer within {}s", d.as_secs_f32()));
    match op {
        Op::Ping => {
            let t = Instant::now();
            session.ping(timeout).await?;
            Ok((json!({"ping_ms": t.elapsed().as_secs_f64() * 1e3}), false))
        }
        Op::Tools => {
            let tools = tokio::time::timeout(timeout, peer.list_all_tools())
                .await
                .map_err(|_| limit(timeout))?
                .map_err(|e| session.classify(&e))?;
            Ok((json!({"tools": tools}), false))
        }
        Op::Call { tool, .. } => {
            let params = CallToolRequestParams::new(tool.clone()).with_arguments(arguments.unwrap_or_default());
            let result = tokio::time::timeout(timeout, peer.call_tool(params))
                .await
                .map_err(|_| limit(timeout))?
                .map_err(|e| session.classify(&e))?;
            let is_error = result.is_error == Some(true);
            Ok((json!({"result": result}), is_error))
        }
    }
}

fn print_human(op: &Op, result: &Value, server: Option<&Value>, protocol: Option<&str>, started: Instant) {
    use std::io::IsTerminal;
    let color = output::stdout_color();
    let who = server
        .map(|s| format!("{} {}", s["name"].as_str().unwrap_or("?"), s["version"].as_str().unwrap_or("")))
        .unwrap_or_else(|| "server".to_owned());
    let meta = paint(
        &format!("{} · protocol {} · {} ms", escape(who.trim(), false), protocol.unwrap_or("?"), elapsed_ms(started)),
        Tone::Dim,
        color,
    );
    match op {
        Op::Ping => {
            let ms = result["ping_ms"].as_f64().unwrap_or_default();
            output::out(format!("pong in {ms:.2} ms"));
        }
        Op::Tools => {
            let tools = result["tools"].as_array().cloned().unwrap_or_default();
            let width = tools.iter().filter_map(|t| t["name"].as_str()).map(str::len).max().unwrap_or(0);
            for t in &tools {
                let name = escape(t["name"].as_str().unwrap_or_default(), false);
                let description = t["description"].as_str().unwrap_or_default().lines().next().unwrap_or_default();
                output::out(format!("{name:width$}  {}", escape(description, false)));
            }
            output::out(paint(&format!("{} tools", tools.len()), Tone::Dim, color));
        }
        Op::Call { .. } => {
            // What the tool returned is the user's, as it came; on a terminal its
            // control characters are escaped, so it cannot drive the terminal.
            let terminal = std::io::stdout().is_terminal();
            let content = result["result"]["content"].as_array().cloned().unwrap_or_default();
            for block in content {
                let text = match block["text"].as_str() {
                    Some(text) => text.to_owned(),
                    None => block.to_string(),
                };
                output::out_lines(&if terminal { escape(&text, true).into_owned() } else { text });
            }
            if result["result"]["isError"] == true {
                output::err(paint("the tool reported an error", Tone::Bad, output::stderr_color()));
            }
        }
    }
    output::out(meta);
}
