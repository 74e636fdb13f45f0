//! `roster check` and `roster up`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use roster_core::{ServerSpec, ServerType, State};
use roster_http::{HttpClients, HttpOptions};
use roster_supervisor::{Connector, Received, Supervisor, Transports};
use roster_transport_http::HttpConnector;
use roster_transport_sse::SseConnector;
use roster_transport_stdio::StdioConnector;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config, Diagnostic};
use crate::output::{self, Tone, paint};
use crate::{Cli, control, exit, paths};

/// Every transport, the remote ones on one set of shared HTTP clients.
pub(crate) fn transports(options: HttpOptions) -> Result<Transports, String> {
    let clients = HttpClients::new(options).map_err(|e| e.to_string())?;
    Ok(Transports::new(
        Arc::new(StdioConnector::new()),
        Arc::new(HttpConnector::new(clients.clone())),
        Arc::new(SseConnector::new(clients)),
    ))
}

/// The one transport a one-shot needs: a stdio one-shot builds no HTTP client.
pub(crate) fn connector(server_type: ServerType, options: HttpOptions) -> Result<Arc<dyn Connector>, String> {
    Ok(match server_type {
        ServerType::Stdio => Arc::new(StdioConnector::new()),
        ServerType::StreamableHttp => {
            Arc::new(HttpConnector::new(HttpClients::new(options).map_err(|e| e.to_string())?))
        }
        ServerType::Sse => Arc::new(SseConnector::new(HttpClients::new(options).map_err(|e| e.to_string())?)),
    })
}

fn print_diagnostics(cli: &Cli, errors: &[Diagnostic]) {
    if cli.json {
        println!("{}", json!({"ok": false, "errors": errors}));
    } else {
        let color = output::stderr_color();
        for e in errors {
            eprintln!("{} {e}", paint("error:", Tone::Bad, color));
        }
        eprintln!("{} error{} in {}", errors.len(), if errors.len() == 1 { "" } else { "s" }, cli.config.display());
    }
}

fn print_warnings(cli: &Cli, config: &Config) {
    if cli.json {
        return;
    }
    let color = output::stderr_color();
    for w in &config.warnings {
        eprintln!("{} {w}", paint("warning:", Tone::Warn, color));
    }
}

/// What `check` shows of a server: never env or header values.
fn summary(spec: &ServerSpec) -> serde_json::Value {
    json!({
        "name": spec.name,
        "type": spec.server_type,
        "auto_start": spec.auto_start,
        "command": (!spec.command.is_empty()).then_some(&spec.command),
        "args": spec.args,
        "url": (!spec.url.is_empty()).then_some(&spec.url),
        "env": spec.env.keys().collect::<Vec<_>>(),
        "headers": spec.headers.keys().collect::<Vec<_>>(),
        "timeout_secs": spec.connect_timeout().as_secs(),
    })
}

fn load(cli: &Cli) -> Result<Config, u8> {
    match config::load(&cli.config) {
        Ok(c) => {
            print_warnings(cli, &c);
            Ok(c)
        }
        Err(errors) => {
            print_diagnostics(cli, &errors);
            Err(exit::USAGE)
        }
    }
}

/// `roster check`: validate and list the servers; 0, or 2 with every error.
pub(crate) fn check(cli: &Cli) -> u8 {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.json {
        let servers: Vec<_> = config.servers.iter().map(|s| summary(s)).collect();
        println!("{}", json!({"ok": true, "format": config.format, "servers": servers, "warnings": config.warnings}));
        return exit::OK;
    }
    let width = config.servers.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:15}  {:10}  TARGET", "NAME", "TYPE", "AUTO-START");
    for s in &config.servers {
        let target = if s.server_type.is_remote() {
            s.url.clone()
        } else {
            std::iter::once(&s.command).chain(&s.args).cloned().collect::<Vec<_>>().join(" ")
        };
        println!(
            "{:width$}  {:15}  {:10}  {target}",
            s.name,
            s.server_type.as_str(),
            if s.auto_start { "yes" } else { "no" }
        );
    }
    let starting = config.servers.iter().filter(|s| s.auto_start).count();
    println!("{} servers in {}; {starting} start with `roster up`", config.servers.len(), cli.config.display());
    exit::OK
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Printer {
    json: bool,
    color: bool,
    /// The longest server name, to align event lines.
    width: usize,
}

impl Printer {
    fn event(&self, received: &Received) {
        match received {
            Received::Event(e) if self.json => println!("{}", json!({"event": **e})),
            Received::Event(e) => println!("{}", output::event_line(e, self.width, self.color)),
            Received::Missed(n) if self.json => println!("{}", json!({"missed": n})),
            Received::Missed(n) => println!("{}", paint(&format!("… {n} events missed"), Tone::Warn, self.color)),
        }
    }

    fn note(&self, text: &str) {
        if self.json {
            println!("{}", json!({"note": text}));
        } else {
            println!("{}", paint(text, Tone::Dim, self.color));
        }
    }

    fn table(&self, sup: &Supervisor) {
        if self.json {
            println!("{}", json!({"servers": sup.status()}));
        } else {
            print!("{}", output::status_table(&sup.status(), self.color));
        }
    }

    fn plan(&self, label: &str, plan: &roster_supervisor::Plan) {
        if self.json {
            println!("{}", json!({"plan": plan}));
        } else {
            for line in output::plan_lines(plan) {
                println!("{}", paint(&format!("{label}: {line}"), Tone::Dim, self.color));
            }
        }
    }
}

/// `roster up`: supervise in the foreground until Ctrl-C or SIGTERM.
pub(crate) async fn up(cli: &Cli, watch: bool) -> u8 {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = paths::socket_path(&cli.config);
    let _lock = match paths::Lock::acquire(&socket) {
        Ok(Ok(lock)) => lock,
        Ok(Err(held)) => {
            let pid = held.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            eprintln!(
                "roster: `roster up` is already running for {}{pid}; use `roster status`, or stop that one first",
                cli.config.display()
            );
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("roster: cannot take the lock beside {}: {e}", socket.display());
            return exit::USAGE;
        }
    };
    // A socket left by an `up` that was killed: the lock proves nobody uses it.
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("roster: cannot listen on {}: {e}", socket.display());
            return exit::USAGE;
        }
    };
    if let Err(e) = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)) {
        eprintln!("roster: cannot restrict {}: {e}", socket.display());
        return exit::USAGE;
    }
    // Every type: a reload may add any.
    let transports = match transports(HttpOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("roster: {e}");
            return exit::USAGE;
        }
    };
    let running_config = config.supervisor;
    let sup = Arc::new(Supervisor::new(Arc::new(transports), config.supervisor));
    let mut events = sup.subscribe();
    let width = config.servers.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let printer = Printer { json: cli.json, color: output::stdout_color(), width };
    printer.note(&format!(
        "roster {}: {} servers from {}; control socket {}",
        env!("CARGO_PKG_VERSION"),
        config.servers.len(),
        cli.config.display(),
        socket.display()
    ));
    let starting = config.servers.iter().filter(|s| s.auto_start).count();
    if let Err(errors) = sup.apply(config.servers).await {
        // Validated on load; only a race with the file could get here.
        for e in errors {
            eprintln!("roster: {e}");
        }
        return exit::USAGE;
    }
    if starting == 0 {
        printer.note("no server starts on its own: set auto_start = true (per server, or in [defaults]), or run `roster start NAME`");
    }
    tokio::spawn(control::serve(listener, sup.clone(), cli.config.clone()));

    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        eprintln!("roster: cannot listen for signals");
        return exit::USAGE;
    };

    // Let the first starts settle (at most 3 s), then show where things stand.
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        tokio::select! {
            Some(received) = events.recv() => printer.event(&received),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let busy = sup.status().iter().any(|s| s.state == State::Starting);
                if !busy || tokio::time::Instant::now() >= settle {
                    break;
                }
            }
        }
    }
    printer.table(&sup);

    let mut last = stamp(&cli.config);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            Some(received) = events.recv() => printer.event(&received),
            _ = tick.tick(), if watch => {
                let now = stamp(&cli.config);
                if now != last {
                    // Editors write in steps: wait until the file holds still.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    last = stamp(&cli.config);
                    reload(cli, &sup, &printer, &running_config).await;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }

    let pids: Vec<u32> = sup.status().iter().filter_map(|s| s.pid).collect();
    printer.note(&format!("stopping {} servers (Ctrl-C again to kill them now)", sup.names().len()));
    let report = tokio::select! {
        report = sup.shutdown() => report,
        _ = interrupt.recv() => return force(&pids),
        _ = terminate.recv() => return force(&pids),
    };
    while let Some(received) = events.try_recv() {
        printer.event(&received);
    }
    let _ = std::fs::remove_file(&socket);
    if report.timed_out.is_empty() {
        printer.note("all servers stopped");
    } else {
        printer.note(&format!("still stopping when the shutdown timeout passed: {}", report.timed_out.join(", ")));
    }
    exit::OK
}

async fn reload(cli: &Cli, sup: &Supervisor, printer: &Printer, running: &roster_supervisor::SupervisorConfig) {
    match config::load(&cli.config) {
        Err(errors) => {
            printer.note(&format!("reload: {} has errors; the running configuration stays", cli.config.display()));
            print_diagnostics(cli, &errors);
        }
        Ok(config) => {
            print_warnings(cli, &config);
            if config.supervisor != *running {
                printer.note("reload: [defaults] changed; they apply when `roster up` starts again");
            }
            match sup.apply(config.servers).await {
                Ok(plan) => printer.plan("reload", &plan),
                Err(errors) => {
                    for e in errors {
                        eprintln!("roster: reload: {e}");
                    }
                }
            }
        }
    }
}

/// The second Ctrl-C: kill every server's process group now.
fn force(pids: &[u32]) -> u8 {
    for pid in pids {
        if let Some(pid) = i32::try_from(*pid).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    eprintln!("roster: killed {} server process groups", pids.len());
    130
}
