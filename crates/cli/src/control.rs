//! The control socket of a running `up`: JSON lines over a Unix socket (mode
//! 0600). One request per connection; `events` then streams.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"start"|"stop"|"restart","server":NAME}`,
//! `{"cmd":"plan"}`, `{"cmd":"events"}`. Answers: `{"ok":true,...}` or
//! `{"ok":false,"error":TEXT,"class":CLASS?}`; `events` sends `{"event":{...}}` and
//! `{"missed":N}` lines until the connection closes.

use std::path::Path;
use std::sync::Arc;

use roster_core::{FailureKind, StartError};
use roster_supervisor::{Received, Supervisor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::output::{self, Tone, paint};
use crate::{Cli, config, exit, paths};

/// A request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
}

/// Serves the control socket until the listener is dropped.
pub(crate) async fn serve(listener: UnixListener, sup: Arc<Supervisor>, config_path: std::path::PathBuf) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (sup, path) = (sup.clone(), config_path.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &sup, &path).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn handle(stream: UnixStream, sup: &Supervisor, config_path: &Path) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let Some(line) = lines.next_line().await? else { return Ok(()) };
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
                let mut events = sup.subscribe();
                write.write_all(b"{\"ok\":true}\n").await?;
                while let Some(received) = events.recv().await {
                    let line = match received {
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
            eprintln!(
                "roster: no `roster up` is running for {} (cannot connect to {}: {e})",
                cli.config.display(),
                socket.display()
            );
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
                eprintln!("roster: unreadable answer from `roster up`: {e}");
                Err(exit::USAGE)
            }
        },
        Ok(None) => {
            eprintln!("roster: `roster up` closed the connection");
            Err(exit::USAGE)
        }
        Err(e) => {
            eprintln!("roster: talking to `roster up`: {e}");
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
        println!("{answer}");
    } else {
        eprintln!("roster: {}", answer["error"].as_str().unwrap_or("failed"));
        if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
            for e in errors {
                eprintln!("  {}", e.as_str().unwrap_or_default());
            }
        }
    }
    class.map_or(exit::USAGE, output::exit_code)
}

/// `roster status`.
pub(crate) async fn status(cli: &Cli) -> u8 {
    let answer = match ask(cli, Request { cmd: "status".into(), server: None }).await {
        Ok((a, _)) => a,
        Err(code) => return code,
    };
    if cli.json {
        println!("{}", json!({"servers": answer["servers"]}));
    } else {
        let servers: Vec<roster_core::ServerStatus> =
            serde_json::from_value(answer["servers"].clone()).unwrap_or_default();
        print!("{}", output::status_table(&servers, output::stdout_color()));
    }
    exit::OK
}

/// `roster start|stop|restart NAME`.
pub(crate) async fn act(cli: &Cli, cmd: &str, name: &str) -> u8 {
    let answer = match ask(cli, Request { cmd: cmd.into(), server: Some(name.into()) }).await {
        Ok((a, _)) => a,
        Err(code) => return code,
    };
    if cli.json {
        println!("{answer}");
    } else {
        let state = answer["status"]["state"].as_str().unwrap_or("?");
        println!("{name}: {state}");
    }
    exit::OK
}

/// `roster events`: follows the stream until `up` ends or Ctrl-C.
pub(crate) async fn events(cli: &Cli) -> u8 {
    let mut lines = match ask(cli, Request { cmd: "events".into(), server: None }).await {
        Ok((_, lines)) => lines,
        Err(code) => return code,
    };
    let color = output::stdout_color();
    while let Ok(Some(line)) = lines.next_line().await {
        if cli.json {
            println!("{line}");
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(n) = v.get("missed").and_then(Value::as_u64) {
            println!("{}", paint(&format!("… {n} events missed (this terminal fell behind)"), Tone::Warn, color));
        } else if let Some(e) = v.get("event") {
            match serde_json::from_value::<roster_supervisor::ServerEvent>(e.clone()) {
                Ok(e) => println!("{}", output::event_line(&e, 0, color)),
                Err(_) => println!("{e}"),
            }
        }
    }
    exit::OK
}

/// `roster plan`.
pub(crate) async fn plan(cli: &Cli) -> u8 {
    let answer = match ask(cli, Request { cmd: "plan".into(), server: None }).await {
        Ok((a, _)) => a,
        Err(code) => return code,
    };
    if cli.json {
        println!("{}", json!({"plan": answer["plan"]}));
    } else {
        let plan: roster_supervisor::Plan = serde_json::from_value(answer["plan"].clone()).unwrap_or_default();
        for line in output::plan_lines(&plan) {
            println!("{line}");
        }
    }
    exit::OK
}
