//! The control socket of a running `up`: JSON lines over a Unix socket (mode
//! 0600). One request per connection; `events` then streams.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"start"|"stop"|"restart","server":NAME}`,
//! `{"cmd":"plan"}`, `{"cmd":"events","since":SEQ?}`. Answers: `{"ok":true,...}` or
//! `{"ok":false,"error":TEXT,"class":CLASS?}`; `events` sends `{"event":{...}}` and
//! `{"missed":N}` lines until the connection closes. With `since`, it first sends
//! the kept events numbered after SEQ (preceded by `{"lost":N}` when some of them
//! are no longer kept), then follows.
//!
//! The socket is bounded: a request is one line of at most [`MAX_REQUEST`] bytes,
//! sent within [`REQUEST_TIMEOUT`]; at most [`MAX_PENDING`] connections may be
//! waiting to send theirs (beyond that the oldest is dropped, so that new clients
//! are always heard), and at most [`MAX_ACTIVE`] may be served at once (events
//! followers and commands in progress; beyond that a client is told the socket is
//! busy).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roster_core::{FailureKind, StartError};
use roster_supervisor::{Received, ServerEvent, Supervisor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::output::{self, Tone, escape, paint};
use crate::{Cli, config, exit, paths};

/// The longest request line.
pub(crate) const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections that may be waiting to send their request.
pub(crate) const MAX_PENDING: usize = 64;
/// Connections that may be served at once.
pub(crate) const MAX_ACTIVE: usize = 128;

/// A request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    /// `events`: replay the kept events numbered after this one first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<u64>,
}

/// The most recent events, for `events --since`: kept from `up`'s start, the
/// last `capacity` of them.
#[derive(Clone)]
pub(crate) struct Recent {
    kept: Arc<Mutex<VecDeque<Arc<ServerEvent>>>>,
    capacity: usize,
}

impl Recent {
    /// Starts keeping `sup`'s events (subscribe before anything can happen).
    pub(crate) fn start(sup: &Supervisor, capacity: usize) -> Recent {
        let recent = Recent { kept: Arc::default(), capacity: capacity.max(1) };
        let mut events = sup.subscribe();
        let keeper = recent.clone();
        tokio::spawn(async move {
            while let Some(received) = events.recv().await {
                if let Received::Event(e) = received {
                    keeper.push(e);
                }
            }
        });
        recent
    }

    fn push(&self, event: Arc<ServerEvent>) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= self.capacity {
            kept.pop_front();
        }
        kept.push_back(event);
    }

    /// The kept events numbered after `since`, and how many of those are no
    /// longer kept.
    fn after(&self, since: u64) -> (Vec<Arc<ServerEvent>>, u64) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let lost = kept.front().map_or(0, |oldest| oldest.seq.saturating_sub(since.saturating_add(1)));
        (kept.iter().filter(|e| e.seq > since).cloned().collect(), lost)
    }
}

/// Serves the control socket until the listener is dropped.
pub(crate) async fn serve(
    listener: UnixListener,
    sup: Arc<Supervisor>,
    recent: Recent,
    requests: prometheus_client::metrics::counter::Counter,
    config_path: std::path::PathBuf,
) {
    let active = Arc::new(Semaphore::new(MAX_ACTIVE));
    let pending: Arc<Mutex<VecDeque<(u64, AbortHandle)>>> = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        requests.inc();
        let (sup, path, active, list) = (sup.clone(), config_path.clone(), active.clone(), pending.clone());
        let recent = recent.clone();
        // Listed before the task can run, so that it can take itself off the list.
        let mut waiting = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let task = tokio::spawn(async move {
            let result = handle(stream, &sup, &recent, &path, &active, || {
                list.lock().unwrap_or_else(PoisonError::into_inner).retain(|(i, _)| *i != id);
            })
            .await;
            list.lock().unwrap_or_else(PoisonError::into_inner).retain(|(i, _)| *i != id);
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
        waiting.push_back((id, task.abort_handle()));
        // Too many clients that say nothing: the oldest goes, so a new one is heard.
        while waiting.len() > MAX_PENDING {
            if let Some((_, idle)) = waiting.pop_front() {
                idle.abort();
            }
        }
    }
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`].
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Option<String>, &'static str> {
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    let mut line = String::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err("no request within 5 s"),
        Ok(Err(_)) => Err("the request is not a line of UTF-8 text"),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() as u64 > MAX_REQUEST => {
            Err("the request is longer than 64 KiB")
        }
        Ok(Ok(_)) => Ok(Some(line)),
    }
}

async fn handle(
    stream: UnixStream,
    sup: &Supervisor,
    recent: &Recent,
    config_path: &Path,
    active: &Semaphore,
    heard: impl FnOnce(),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let line = match read_request(read).await {
        Ok(Some(line)) => line,
        Ok(None) => return Ok(()),
        Err(why) => {
            let answer = json!({"ok": false, "error": why});
            return write.write_all(format!("{answer}\n").as_bytes()).await;
        }
    };
    heard();
    let Ok(_permit) = active.try_acquire() else {
        let answer = json!({"ok": false, "error": "the control socket is busy; try again"});
        return write.write_all(format!("{answer}\n").as_bytes()).await;
    };
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        Ok(req) => match (req.cmd.as_str(), req.server.as_deref()) {
            ("status", _) => json!({"ok": true, "servers": sup.status()}),
            ("plan", _) => match config::load(config_path) {
                Ok(cfg) => match sup.plan(&cfg.servers) {
                    Ok(plan) => json!({"ok": true, "plan": plan}),
                    Err(errors) => {
                        json!({"ok": false, "error": "invalid configuration", "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>()})
                    }
                },
                Err(diags) => {
                    json!({"ok": false, "error": "invalid configuration", "errors": diags.iter().map(ToString::to_string).collect::<Vec<_>>()})
                }
            },
            ("events", _) => {
                // Subscribed first: an event published during the replay is
                // both kept and live, and is sent once.
                let mut events = sup.subscribe();
                write.write_all(b"{\"ok\":true}\n").await?;
                let mut sent = 0;
                if let Some(since) = req.since {
                    let (replay, lost) = recent.after(since);
                    if lost > 0 {
                        write.write_all(format!("{}\n", json!({"lost": lost, "since": since})).as_bytes()).await?;
                    }
                    for e in replay {
                        sent = e.seq;
                        write.write_all(format!("{}\n", json!({"event": *e})).as_bytes()).await?;
                    }
                }
                while let Some(received) = events.recv().await {
                    let line = match received {
                        Received::Event(e) if e.seq <= sent => continue,
                        Received::Event(e) => json!({"event": *e}),
                        Received::Missed(n) => json!({"missed": n}),
                    };
                    write.write_all(format!("{line}\n").as_bytes()).await?;
                }
                return Ok(());
            }
            (cmd @ ("start" | "stop" | "restart"), Some(name)) => match sup.get(name) {
                None => json!({"ok": false, "error": format!("no server named {name:?}")}),
                Some(svc) => {
                    let result = match cmd {
                        "start" => svc.start().await,
                        "restart" => svc.restart().await,
                        _ => {
                            svc.stop().await;
                            Ok(())
                        }
                    };
                    match result {
                        Ok(()) => json!({"ok": true, "status": svc.status()}),
                        Err(e) => start_error(&e),
                    }
                }
            },
            ("start" | "stop" | "restart", None) => {
                json!({"ok": false, "error": "which server? (\"server\" is missing)"})
            }
            (other, _) => json!({"ok": false, "error": format!("unknown command {other:?}")}),
        },
    };
    write.write_all(format!("{answer}\n").as_bytes()).await
}

fn start_error(e: &StartError) -> Value {
    let class = match e {
        StartError::AlreadyRunning { .. } => None,
        StartError::NeedsCredentials { .. } => Some(FailureKind::NeedsCredentials),
        StartError::Unreachable { cause, .. } | StartError::Failed(cause) => Some(cause.kind()),
        StartError::Cancelled => Some(FailureKind::Cancelled),
    };
    let challenge = match e {
        StartError::NeedsCredentials { challenge, .. } => serde_json::to_value(challenge).ok(),
        StartError::AlreadyRunning { .. }
        | StartError::Unreachable { .. }
        | StartError::Failed(_)
        | StartError::Cancelled => None,
    };
    json!({"ok": false, "error": e.to_string(), "class": class, "challenge": challenge})
}

/// Connects to the `up` running for the configuration, or says why not.
async fn connect(cli: &Cli) -> Result<UnixStream, u8> {
    let socket = paths::socket_path(&cli.config);
    match UnixStream::connect(&socket).await {
        Ok(s) => Ok(s),
        Err(e) => {
            output::err(format!(
                "roster: no `roster up` is running for {} (cannot connect to {}: {e})",
                cli.config.display(),
                socket.display()
            ));
            Err(exit::USAGE)
        }
    }
}

async fn request(
    cli: &Cli,
    req: &Request,
) -> Result<(Value, tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>), u8> {
    let stream = connect(cli).await?;
    let (read, mut write) = stream.into_split();
    let line = serde_json::to_string(req).unwrap_or_default();
    let mut lines = BufReader::new(read).lines();
    let io = async {
        write.write_all(format!("{line}\n").as_bytes()).await?;
        lines.next_line().await
    };
    match io.await {
        Ok(Some(answer)) => match serde_json::from_str(&answer) {
            Ok(v) => Ok((v, lines)),
            Err(e) => {
                output::err(format!("roster: unreadable answer from `roster up`: {e}"));
                Err(exit::USAGE)
            }
        },
        Ok(None) => {
            output::err("roster: `roster up` closed the connection");
            Err(exit::USAGE)
        }
        Err(e) => {
            output::err(format!("roster: talking to `roster up`: {e}"));
            Err(exit::USAGE)
        }
    }
}

/// Sends `req` and returns the answer when it says ok; otherwise reports the
/// failure and returns the exit code.
async fn ask(cli: &Cli, req: Request) -> Result<(Value, AnswerLines), u8> {
    let (answer, lines) = request(cli, &req).await?;
    if answer["ok"] == true { Ok((answer, lines)) } else { Err(fail(cli, &answer)) }
}

type AnswerLines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

fn fail(cli: &Cli, answer: &Value) -> u8 {
    let class: Option<FailureKind> = answer.get("class").and_then(|c| serde_json::from_value(c.clone()).ok());
    if cli.json {
        output::out(answer.to_string());
    } else {
        output::err(format!("roster: {}", escape(answer["error"].as_str().unwrap_or("failed"), false)));
        if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
            for e in errors {
                output::err(format!("  {}", escape(e.as_str().unwrap_or_default(), false)));
            }
        }
    }
    class.map_or(exit::USAGE, output::exit_code)
}

/// `roster status`, and with `--watch` the table kept up to date.
pub(crate) async fn status(cli: &Cli, watch: bool) -> u8 {
    if watch {
        return watch_status(cli).await;
    }
    let servers = match servers(cli).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if cli.json {
        output::out(json!({"servers": servers}).to_string());
    } else {
        let servers: Vec<roster_core::ServerStatus> = serde_json::from_value(servers).unwrap_or_default();
        output::out_lines(&output::status_table(&servers, output::stdout_color()));
    }
    exit::OK
}

/// The status of every server, as `up` sends it.
async fn servers(cli: &Cli) -> Result<Value, u8> {
    let (answer, _) = ask(cli, Request { cmd: "status".into(), server: None, since: None }).await?;
    Ok(answer["servers"].clone())
}

/// How long `status --watch` gathers events before it redraws, and how often it
/// redraws anyway (uptimes and countdowns move).
const REDRAW_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
const REDRAW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `roster status --watch`: on a terminal, the table redrawn in place after
/// every change (and every second); otherwise the table once, then one line per
/// change (the compact lines of `up`), or with `--json` one event per line.
async fn watch_status(cli: &Cli) -> u8 {
    use std::io::IsTerminal;
    // Events first: no change between the first table and the stream is missed.
    let mut lines = match ask(cli, Request { cmd: "events".into(), server: None, since: None }).await {
        Ok((_, lines)) => lines,
        Err(code) => return code,
    };
    let first = match servers(cli).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let color = output::stdout_color();
    let in_place = !cli.json && std::io::stdout().is_terminal();
    let draw = |servers: Value| {
        let servers: Vec<roster_core::ServerStatus> = serde_json::from_value(servers).unwrap_or_default();
        let table = output::status_table(&servers, color);
        if in_place {
            // Home, clear, the table: one write, so the screen never shows half of it.
            output::out(format!("\x1b[H\x1b[2J{}", table.trim_end()));
        } else {
            output::out_lines(&table);
        }
    };
    if cli.json {
        output::out(json!({"servers": first}).to_string());
    } else {
        draw(first);
    }
    let mut compact = output::Compact::default();
    let follow = async {
        let mut due: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(REDRAW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let redraw = tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { return };
                    if cli.json {
                        output::out(line);
                    } else if in_place {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + REDRAW_AFTER);
                    } else if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && let Some(e) = v.get("event")
                        && let Ok(e) = serde_json::from_value::<roster_supervisor::ServerEvent>(e.clone())
                        && let Some(text) = compact.line(&e, 0, color)
                    {
                        output::out(text);
                    }
                    false
                }
                () = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                    due = None;
                    true
                }
                _ = tick.tick(), if in_place => true,
            };
            if redraw {
                match servers(cli).await {
                    Ok(s) => draw(s),
                    Err(_) => return,
                }
            }
        }
    };
    tokio::select! {
        () = follow => {}
        () = output::stdout_closed() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    exit::OK
}

/// `roster start|stop|restart NAME`.
pub(crate) async fn act(cli: &Cli, cmd: &str, name: &str) -> u8 {
    let answer = match ask(cli, Request { cmd: cmd.into(), server: Some(name.into()), since: None }).await {
        Ok((a, _)) => a,
        Err(code) => return code,
    };
    if cli.json {
        output::out(answer.to_string());
    } else {
        let state = answer["status"]["state"].as_str().unwrap_or("?");
        output::out(format!("{name}: {state}"));
    }
    exit::OK
}

/// `roster events`: follows the stream until `up` ends or Ctrl-C.
pub(crate) async fn events(cli: &Cli, since: Option<u64>) -> u8 {
    let mut lines = match ask(cli, Request { cmd: "events".into(), server: None, since }).await {
        Ok((_, lines)) => lines,
        Err(code) => return code,
    };
    let color = output::stdout_color();
    let follow = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if cli.json {
                output::out(line);
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if let Some(n) = v.get("lost").and_then(Value::as_u64) {
                output::out(paint(
                    &format!(
                        "… {n} events after {} are no longer kept (roster keeps the last event_buffer events)",
                        since.unwrap_or(0)
                    ),
                    Tone::Warn,
                    color,
                ));
            } else if let Some(n) = v.get("missed").and_then(Value::as_u64) {
                output::out(paint(&format!("… {n} events missed (this terminal fell behind)"), Tone::Warn, color));
            } else if let Some(e) = v.get("event") {
                match serde_json::from_value::<roster_supervisor::ServerEvent>(e.clone()) {
                    Ok(e) => output::out(output::event_line(&e, 0, color)),
                    Err(_) => output::out(escape(&e.to_string(), false)),
                }
            }
        }
    };
    // Following ends when `up` does, when stdout closes, or on Ctrl-C.
    tokio::select! {
        () = follow => {}
        () = output::stdout_closed() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    exit::OK
}

/// `roster plan`.
pub(crate) async fn plan(cli: &Cli) -> u8 {
    let answer = match ask(cli, Request { cmd: "plan".into(), server: None, since: None }).await {
        Ok((a, _)) => a,
        Err(code) => return code,
    };
    if cli.json {
        output::out(json!({"plan": answer["plan"]}).to_string());
    } else {
        let plan: roster_supervisor::Plan = serde_json::from_value(answer["plan"].clone()).unwrap_or_default();
        for line in output::plan_lines(&plan) {
            output::out(line);
        }
    }
    exit::OK
}

/// Sends `cmd` for `server` to a running `up` or `serve`, quietly: `None` when
/// none runs for this configuration (or it does not answer in time).
pub(crate) async fn notify(cli: &Cli, cmd: &str, server: &str) -> Option<Value> {
    let socket = paths::socket_path(&cli.config);
    let exchange = async {
        let stream = UnixStream::connect(&socket).await.ok()?;
        let (read, mut write) = stream.into_split();
        let line =
            serde_json::to_string(&Request { cmd: cmd.into(), server: Some(server.into()), since: None }).ok()?;
        write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
        let answer = BufReader::new(read).lines().next_line().await.ok()??;
        serde_json::from_str(&answer).ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), exchange).await.ok()?
}
