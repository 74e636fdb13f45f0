//! `roster check` and `roster up`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use roster_core::{ServerSpec, ServerType, State};
use roster_http::{HttpClients, HttpOptions};
use roster_supervisor::{Connector, Received, Supervisor, SupervisorConfig, Transports};
use roster_transport_http::HttpConnector;
use roster_transport_sse::SseConnector;
use roster_transport_stdio::StdioConnector;
use serde_json::json;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use roster_serve::cache::ListingCache;
use roster_serve::{Gateway, GatewayOptions, Hub};
use roster_transport::mcp::Relay;

use crate::config::{self, Config, Diagnostic};
use crate::output::{self, Tone, escape, paint};
use crate::serve::{Bridge, Bridged, ServeArgs};
use crate::{Cli, control, exit, paths};

/// How long an editor's burst of writes is given to settle before a reload.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How long start-up waits for the first attempts before it shows the table.
const SETTLE: Duration = Duration::from_secs(3);
/// After a second signal: how long the kills are given to be reported.
const FORCE_GRACE: Duration = Duration::from_secs(3);

/// Every transport, the remote ones on one set of shared HTTP clients; what the
/// servers send back goes to `relay` (`roster serve`).
pub(crate) fn transports(options: HttpOptions, relay: Option<Arc<dyn Relay>>) -> Result<Transports, String> {
    let clients = HttpClients::new(options).map_err(|e| e.to_string())?;
    let (mut stdio, mut http, mut sse) = (
        StdioConnector::new(),
        HttpConnector::new(clients.clone()).with_credentials(crate::login::store()),
        SseConnector::new(clients),
    );
    if let Some(relay) = relay {
        stdio = stdio.with_relay(relay.clone());
        http = http.with_relay(relay.clone());
        sse = sse.with_relay(relay);
    }
    Ok(Transports::new(Arc::new(stdio), Arc::new(http), Arc::new(sse)))
}

/// The one transport a one-shot needs: a stdio one-shot builds no HTTP client.
pub(crate) fn connector(server_type: ServerType, options: HttpOptions) -> Result<Arc<dyn Connector>, String> {
    Ok(match server_type {
        ServerType::Stdio => Arc::new(StdioConnector::new()),
        ServerType::StreamableHttp => Arc::new(
            HttpConnector::new(HttpClients::new(options).map_err(|e| e.to_string())?)
                .with_credentials(crate::login::store()),
        ),
        ServerType::Sse => Arc::new(
            SseConnector::new(HttpClients::new(options).map_err(|e| e.to_string())?)
                .with_credentials(crate::login::store()),
        ),
    })
}

/// Configuration errors: with `--json` one object on stdout, or on stderr when
/// stdout carries MCP (`serve` over stdio); otherwise lines on stderr.
pub(crate) fn print_diagnostics(cli: &Cli, errors: &[Diagnostic], to_stderr: bool) {
    if cli.json {
        let text = json!({"ok": false, "errors": errors}).to_string();
        if to_stderr { output::err(text) } else { output::out(text) }
    } else {
        let color = output::stderr_color();
        for e in errors {
            output::err(format!("{} {}", paint("error:", Tone::Bad, color), escape(&e.to_string(), false)));
        }
        let n = errors.len();
        output::err(format!("{n} error{} in {}", if n == 1 { "" } else { "s" }, cli.config.display()));
    }
}

fn print_warnings(cli: &Cli, config: &Config) {
    if cli.json {
        return;
    }
    let color = output::stderr_color();
    for w in &config.warnings {
        output::err(format!("{} {}", paint("warning:", Tone::Warn, color), escape(&w.to_string(), false)));
    }
}

/// What `check` shows of a server: never env or header values, nor URL secrets.
fn summary(spec: &ServerSpec) -> serde_json::Value {
    json!({
        "name": spec.name,
        "type": spec.server_type,
        "auto_start": spec.auto_start,
        "command": (!spec.command.is_empty()).then_some(&spec.command),
        "args": spec.args,
        "url": (!spec.url.is_empty()).then(|| spec.display_url()),
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
            print_diagnostics(cli, &errors, false);
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
        let v = json!({"ok": true, "format": config.format, "servers": servers, "warnings": config.warnings});
        output::out(v.to_string());
        return exit::OK;
    }
    let width = config.servers.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    output::out(format!("{:width$}  {:15}  {:10}  TARGET", "NAME", "TYPE", "AUTO-START"));
    for s in &config.servers {
        let target = if s.server_type.is_remote() {
            s.display_url()
        } else {
            std::iter::once(&s.command).chain(&s.args).cloned().collect::<Vec<_>>().join(" ")
        };
        output::out(format!(
            "{:width$}  {:15}  {:10}  {}",
            s.name,
            s.server_type.as_str(),
            if s.auto_start { "yes" } else { "no" },
            escape(&target, false)
        ));
    }
    let starting = config.servers.iter().filter(|s| s.auto_start).count();
    output::out(format!(
        "{} servers in {}; {starting} start with `roster up`",
        config.servers.len(),
        cli.config.display()
    ));
    exit::OK
}

#[derive(Clone, Copy)]
struct Printer {
    json: bool,
    color: bool,
    /// The longest server name, to align event lines.
    width: usize,
    /// `roster serve` over stdio: stdout is the MCP channel, so everything goes to stderr.
    to_stderr: bool,
    /// `-v`: every event, as it comes; otherwise the compact lines.
    verbose: bool,
}

impl Printer {
    fn line(&self, text: String) {
        if self.to_stderr { output::err(text) } else { output::out(text) }
    }

    fn event(&self, received: &Received, compact: &mut output::Compact) {
        self.line(match received {
            Received::Event(e) if self.json => json!({"event": **e}).to_string(),
            Received::Event(e) if self.verbose => output::event_line(e, self.width, self.color),
            Received::Event(e) => match compact.line(e, self.width, self.color) {
                Some(line) => line,
                None => return,
            },
            Received::Missed(n) if self.json => json!({"missed": n}).to_string(),
            Received::Missed(n) => paint(&format!("… {n} events missed"), Tone::Warn, self.color),
        });
    }

    fn note(&self, text: &str) {
        self.line(if self.json { json!({"note": text}).to_string() } else { paint(text, Tone::Dim, self.color) });
    }

    fn table(&self, sup: &Supervisor) {
        if self.json {
            self.line(json!({"servers": sup.status()}).to_string());
        } else {
            for line in output::status_table(&sup.status(), self.color).lines() {
                self.line(line.to_owned());
            }
        }
    }

    fn plan(&self, label: &str, plan: &roster_supervisor::Plan) {
        if self.json {
            self.line(json!({"plan": plan}).to_string());
        } else {
            for line in output::plan_lines(plan) {
                self.line(paint(&format!("{label}: {line}"), Tone::Dim, self.color));
            }
        }
    }
}

/// Why `up` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Interrupt,
    Terminate,
    /// The terminal closed (or an ssh session dropped).
    Hangup,
    /// Nobody reads stdout any more.
    StdoutClosed,
    /// `roster serve`: the MCP client went away (closed stdin).
    ClientGone,
}

impl Stop {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stop::Interrupt => "interrupted",
            Stop::Terminate => "terminated",
            Stop::Hangup => "the terminal closed (SIGHUP)",
            Stop::StdoutClosed => "stdout was closed",
            Stop::ClientGone => "the MCP client disconnected",
        }
    }
}

/// Every request to stop, in order, from the moment `up` starts: SIGINT, SIGTERM,
/// SIGHUP, and stdout closing. Taken in every wait of `up`, so none is missed.
pub(crate) fn stops() -> Result<mpsc::UnboundedReceiver<Stop>, String> {
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stdout_open = true;
        loop {
            let stop = tokio::select! {
                Some(()) = interrupt.recv() => Stop::Interrupt,
                Some(()) = terminate.recv() => Stop::Terminate,
                Some(()) = hangup.recv() => Stop::Hangup,
                () = output::stdout_closed(), if stdout_open => {
                    stdout_open = false;
                    Stop::StdoutClosed
                }
            };
            if tx.send(stop).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Notices changes of the configuration file through the OS (inotify on Linux),
/// watching its directory so that a file replaced by an editor is seen too.
struct FileWatch {
    _watcher: Box<dyn notify::Watcher + Send>,
    changed: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    fn new(config: &Path) -> Result<FileWatch, String> {
        let mut names: Vec<(PathBuf, std::ffi::OsString)> = Vec::new();
        for path in [config.to_path_buf(), std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf())] {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            if let Some(name) = path.file_name() {
                names.push((dir, name.to_owned()));
            }
        }
        let (tx, changed) = mpsc::unbounded_channel();
        let wanted: Vec<std::ffi::OsString> = names.iter().map(|(_, n)| n.clone()).collect();
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && event.paths.iter().any(|p| p.file_name().is_some_and(|n| wanted.iter().any(|w| w == n)))
            {
                let _ = tx.send(());
            }
        };
        let mut watcher: Box<dyn notify::Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
            Ok(w) => Box::new(w),
            Err(_) => {
                let config = notify::Config::default()
                    .with_poll_interval(Duration::from_millis(500))
                    .with_compare_contents(true);
                Box::new(notify::PollWatcher::new(handler, config).map_err(|e| e.to_string())?)
            }
        };
        for (dir, _) in &names {
            watcher.watch(dir, notify::RecursiveMode::NonRecursive).map_err(|e| e.to_string())?;
        }
        Ok(FileWatch { _watcher: watcher, changed })
    }
}

/// What a reload needs between reloads: the lock (a replaced file is locked too),
/// and the text last applied (an unchanged text is not applied again).
struct Reloader {
    lock: paths::Lock,
    text: String,
}

type Reload<'a> = Pin<Box<dyn Future<Output = Reloader> + 'a>>;

/// `roster up`: supervise in the foreground until Ctrl-C, SIGTERM, SIGHUP, or
/// stdout closing. With `serve`, `roster serve`: the same, and one MCP server in
/// front of every server, until the client goes too.
/// What `up` and `serve` share of their flags.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct UpOptions {
    /// Do not reload the configuration when the file changes.
    #[arg(long)]
    pub(crate) no_watch: bool,
    /// Serve Prometheus metrics at ADDR/metrics (and /healthz, /readyz),
    /// for example 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Show every event as it comes (starting, stopping, each step of a
    /// recovery), not one line per attempt and per change.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
}

pub(crate) async fn up(cli: &Cli, options: UpOptions, serve: Option<&ServeArgs>) -> u8 {
    let (watch, metrics) = (!options.no_watch, options.metrics);
    // From the very start: a Ctrl-C during start-up is not lost.
    let mut stops = match stops() {
        Ok(s) => s,
        Err(e) => {
            output::err(format!("roster: cannot listen for signals: {e}"));
            return exit::USAGE;
        }
    };
    // Watching begins before the file is read: no change after this read is missed.
    let (mut file_watch, watch_error) = if watch {
        match FileWatch::new(&cli.config) {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let text = match config::read(&cli.config) {
        Ok(t) => t,
        Err(message) => {
            print_diagnostics(
                cli,
                &[Diagnostic {
                    file: cli.config.display().to_string(),
                    pos: Default::default(),
                    server: None,
                    message,
                }],
                serve.is_some_and(ServeArgs::over_stdio),
            );
            return exit::USAGE;
        }
    };
    let config = match config::parse(
        &cli.config.display().to_string(),
        &text,
        cli.config.extension().and_then(|e| e.to_str()),
    ) {
        Ok(c) => {
            print_warnings(cli, &c);
            c
        }
        Err(errors) => {
            print_diagnostics(cli, &errors, serve.is_some_and(ServeArgs::over_stdio));
            return exit::USAGE;
        }
    };
    let mut config = config;
    if serve.is_some() {
        config.servers = leave_out_itself(cli, config.servers);
    }
    if let Err(why) = paths::ensure_runtime_dir(&paths::runtime_dir()) {
        output::err(format!("roster: {why}"));
        return exit::USAGE;
    }
    let socket = paths::socket_path(&cli.config);
    let (lock, adopted) = match paths::Lock::acquire(&cli.config, &socket) {
        Ok(lock) => (lock, None),
        Err(paths::LockError::Held(held)) => {
            let pid = held.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            // A second MCP client (another editor window) on the same file: the
            // `serve` already running serves it too.
            let sharing = crate::serve::sharing_path(&socket);
            let over_stdio = serve.is_some_and(ServeArgs::over_stdio);
            let stream = if over_stdio { Bridge::connect(&sharing, ATTACH_WAIT).await } else { None };
            // A `serve` whose socket is there but does not answer is stopping:
            // wait for its lock as when taking over.
            if over_stdio && (stream.is_some() || sharing.exists()) {
                let note =
                    |text: String| output::err(if cli.json { json!({ "note": text }).to_string() } else { text });
                note(match stream {
                    Some(_) => format!(
                        "roster serve already runs for {}{pid}: this client is served by it",
                        cli.config.display()
                    ),
                    None => format!("the roster serve of {}{pid} is stopping; taking over", cli.config.display()),
                });
                match attached(cli, &socket, config.supervisor.shutdown_timeout, stream, note, &mut stops).await {
                    Ok((lock, client)) => (lock, Some(client)),
                    Err(code) => return code,
                }
            } else {
                let what = if serve.is_some() {
                    "; only `roster serve` over stdio shares a running `roster serve`"
                } else {
                    ""
                };
                output::err(format!(
                    "roster: roster is already running for {}{pid}; use `roster status`, or stop that one first{what}",
                    cli.config.display()
                ));
                return exit::USAGE;
            }
        }
        Err(paths::LockError::Unusable(why)) => {
            output::err(format!("roster: {why}"));
            return exit::USAGE;
        }
    };
    // A sharing socket left by a `serve` that was killed would make a second
    // `serve` wait for this one to stop.
    let sharing = crate::serve::sharing_path(&socket);
    let _ = std::fs::remove_file(&sharing);
    // Bound at once, so a second `serve` that finds the lock held can attach.
    let shared = match serve.map(|_| crate::serve::share(&sharing)).transpose() {
        Ok(shared) => shared,
        Err(why) => {
            output::err(format!("roster: {why}"));
            return exit::USAGE;
        }
    };
    // A socket left by an `up` that was killed: the lock proves nobody uses it.
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            output::err(format!("roster: cannot listen on {}: {e}", socket.display()));
            return exit::USAGE;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)) {
            output::err(format!("roster: cannot restrict {}: {e}", socket.display()));
            return exit::USAGE;
        }
    }
    let hub = serve.map(|_| Hub::new());
    let transports = match transports(config.http, hub.clone().map(|h| h as Arc<dyn Relay>)) {
        Ok(t) => t,
        Err(e) => {
            output::err(format!("roster: {e}"));
            return exit::USAGE;
        }
    };
    let running_config = config.supervisor;
    let running_http = config.http;
    let sup = Arc::new(Supervisor::new(Arc::new(transports), config.supervisor));
    let mut events = sup.subscribe();
    let recent = control::Recent::start(&sup, running_config.event_capacity);
    let width = config.servers.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let to_stderr = serve.is_some_and(ServeArgs::over_stdio);
    let color = if to_stderr { output::stderr_color() } else { output::stdout_color() };
    let printer = Printer { json: cli.json, color, width, to_stderr, verbose: options.verbose };
    let mut compact = output::Compact::default();
    printer.note(&format!(
        "roster {}: {} from {}; control socket {}",
        env!("CARGO_PKG_VERSION"),
        output::count(config.servers.len(), "server"),
        cli.config.display(),
        socket.display()
    ));
    if let Some(e) = watch_error {
        printer.note(&format!("cannot watch {} for changes ({e}); reload by restarting", cli.config.display()));
    }
    let control_requests = prometheus_client::metrics::counter::Counter::default();
    let metrics = match metrics {
        Some(addr) => {
            let metrics = crate::metrics::Metrics::start(sup.clone(), control_requests.clone());
            match crate::metrics::serve(metrics.clone(), addr) {
                Ok(bound) => printer.note(&format!("metrics on http://{bound}/metrics")),
                Err(e) => {
                    output::err(format!("roster: --metrics: {e}"));
                    return exit::USAGE;
                }
            }
            Some(metrics)
        }
        None => None,
    };
    let starting = config.servers.iter().filter(|s| s.auto_start).count();
    // The gateway first: it sees every event from the first start on.
    let gateway = match (serve, hub) {
        (Some(args), Some(hub)) => {
            let cache = ListingCache::new(paths::listing_cache_dir(&cli.config));
            let logins = crate::login::ServeLogins::new(sup.clone(), running_http, args.over_stdio())
                .map(|l| Arc::new(l) as Arc<dyn roster_serve::Logins>);
            let calls = metrics.clone().map(|m| m as Arc<dyn roster_serve::CallObserver>);
            let options = GatewayOptions { cache: Some(cache), logins, calls, ..GatewayOptions::default() };
            let gateway = Gateway::new(sup.clone(), hub, options);
            gateway.configure(config.serve.clone());
            let sync = gateway.clone();
            tokio::spawn(async move { sync.run().await });
            Some(gateway)
        }
        _ => None,
    };
    if let Err(errors) = sup.apply(config.servers).await {
        for e in errors {
            output::err(format!("roster: {e}"));
        }
        return exit::USAGE;
    }
    if starting == 0 {
        printer.note("no server starts on its own: set auto_start = true (per server, or in [defaults]), or run `roster start NAME`");
    }
    let control = tokio::spawn(control::serve(listener, sup.clone(), recent, control_requests, cli.config.clone()));
    let (shared, _unlink) = shared.unzip();
    let mut endpoint = match (serve, gateway.clone(), shared) {
        (Some(args), Some(gateway), Some(shared)) => {
            match crate::serve::start(gateway, args, shared, adopted, move |text| {
                printer.note(&text);
            })
            .await
            {
                Ok(endpoint) => {
                    printer.note(&format!("serving MCP on {}", endpoint.address));
                    if let Some(warning) = &endpoint.warning {
                        printer.note(warning);
                    }
                    Some(endpoint)
                }
                Err(e) => {
                    output::err(format!("roster: {e}"));
                    sup.shutdown().await;
                    control.abort();
                    let _ = std::fs::remove_file(&socket);
                    return exit::USAGE;
                }
            }
        }
        _ => None,
    };
    let client_gone = async |endpoint: &mut Option<crate::serve::Endpoint>| match endpoint {
        Some(e) => (&mut e.ended).await,
        None => std::future::pending().await,
    };

    // Let the first starts settle (at most SETTLE), then show where things stand.
    let mut stopped: Option<Stop> = None;
    let settle = tokio::time::Instant::now() + SETTLE;
    loop {
        tokio::select! {
            Some(received) = events.recv() => printer.event(&received, &mut compact),
            Some(stop) = stops.recv() => {
                stopped = Some(stop);
                break;
            }
            () = client_gone(&mut endpoint) => {
                stopped = Some(Stop::ClientGone);
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let busy = sup.status().iter().any(|s| s.state == State::Starting);
                if !busy || tokio::time::Instant::now() >= settle {
                    break;
                }
            }
        }
    }
    if stopped.is_none() {
        printer.table(&sup);
    }

    let mut reloader = Some(Reloader { lock, text });
    let mut reloading: Option<Reload<'_>> = None;
    let mut due: Option<tokio::time::Instant> = None;
    let mut again = false;
    while stopped.is_none() {
        tokio::select! {
            Some(received) = events.recv() => printer.event(&received, &mut compact),
            Some(stop) = stops.recv() => stopped = Some(stop),
            () = client_gone(&mut endpoint) => stopped = Some(Stop::ClientGone),
            Some(()) = async { file_watch.as_mut()?.changed.recv().await }, if file_watch.is_some() => {
                // Editors write in steps: wait until the file holds still.
                due = Some(tokio::time::Instant::now() + DEBOUNCE);
            }
            () = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {
                due = None;
                match reloader.take() {
                    Some(r) => reloading = Some(Box::pin(reload(cli, &sup, gateway.as_ref(), printer, (running_config, running_http), r))),
                    None => again = true,
                }
            }
            done = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                reloading = None;
                reloader = Some(done);
                if std::mem::take(&mut again) {
                    due = Some(tokio::time::Instant::now());
                }
            }
        }
    }
    drop(reloading);
    if let Some(endpoint) = &endpoint {
        endpoint.stop.cancel();
    }
    let stop = stopped.unwrap_or(Stop::Terminate);
    printer.note(&format!(
        "{}: stopping {} (Ctrl-C again to kill them now)",
        stop.describe(),
        output::count(sup.names().len(), "server")
    ));
    let shutdown = sup.shutdown();
    tokio::pin!(shutdown);
    let report = tokio::select! {
        report = &mut shutdown => report,
        Some(_) = stops.recv() => {
            sup.kill_all();
            let _ = tokio::time::timeout(FORCE_GRACE, &mut shutdown).await;
            output::err(format!("roster: killed every server at once ({} left running)", sup.names().len()));
            control.abort();
            let _ = std::fs::remove_file(&socket);
            return exit::FORCED;
        }
    };
    while let Some(received) = events.try_recv() {
        printer.event(&received, &mut compact);
    }
    control.abort();
    let _ = std::fs::remove_file(&socket);
    if report.timed_out.is_empty() {
        printer.note("all servers stopped");
        exit::OK
    } else {
        printer.note(&format!("not stopped within the shutdown timeout, so killed: {}", report.timed_out.join(", ")));
        exit::UNCLEAN
    }
}

/// How long a `serve` that found the configuration locked tries to reach the
/// sharing socket (the holder may be between its lock and its bind).
const ATTACH_WAIT: Duration = Duration::from_millis(500);

/// Serves this process's client through the `serve` that holds the
/// configuration. When that one stops and the client is still there, the first
/// of the attached to take the lock runs the configuration, and the others
/// attach to it: the lock and the client, for this process to go on as the
/// holder; or the exit code. A signal (or stdout closing) ends it at once:
/// this process has nothing of its own to stop.
async fn attached(
    cli: &Cli,
    socket: &Path,
    shutdown_timeout: Duration,
    stream: Option<tokio::net::UnixStream>,
    note: impl Fn(String),
    stops: &mut mpsc::UnboundedReceiver<Stop>,
) -> Result<(paths::Lock, Bridge), u8> {
    tokio::select! {
        taken = take_over(cli, socket, shutdown_timeout, stream, note) => taken,
        Some(stop) = stops.recv() => {
            tracing::debug!(stop = stop.describe(), "an attached serve stops");
            Err(exit::OK)
        }
    }
}

async fn take_over(
    cli: &Cli,
    socket: &Path,
    shutdown_timeout: Duration,
    mut stream: Option<tokio::net::UnixStream>,
    note: impl Fn(String),
) -> Result<(paths::Lock, Bridge), u8> {
    let sharing = crate::serve::sharing_path(socket);
    let mut bridge = Bridge::new();
    loop {
        if let Some(stream) = stream.take() {
            match bridge.run(stream).await {
                Ok(Bridged::ClientGone) => return Err(exit::OK),
                Ok(Bridged::HolderGone) => {
                    note("the roster serve this client was served by has stopped; taking over".to_owned());
                }
                Err(e) => {
                    output::err(format!("roster: the MCP client's stdin or stdout failed: {e}"));
                    return Err(exit::TRANSIENT);
                }
            }
        }
        // The old holder lets go of the lock once its servers have stopped.
        let until = tokio::time::Instant::now() + shutdown_timeout + Duration::from_secs(10);
        loop {
            match paths::Lock::acquire(&cli.config, socket) {
                Ok(lock) => return Ok((lock, bridge)),
                Err(paths::LockError::Held(_)) => {
                    if let Some(next) = Bridge::connect(&sharing, Duration::ZERO).await {
                        stream = Some(next);
                        break;
                    }
                }
                Err(paths::LockError::Unusable(why)) => {
                    output::err(format!("roster: {why}"));
                    return Err(exit::USAGE);
                }
            }
            if tokio::time::Instant::now() >= until {
                output::err(
                    "roster: the roster serve this client was served by stopped and did not let go of the configuration; start this client again",
                );
                return Err(exit::TRANSIENT);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client's file that lists this roster: serving it would start roster again.
fn leave_out_itself(cli: &Cli, servers: Vec<roster_core::ValidSpec>) -> Vec<roster_core::ValidSpec> {
    let (itself, others): (Vec<_>, Vec<_>) =
        servers.into_iter().partition(|s| crate::serve::serves_itself(s, &cli.config));
    for s in itself {
        output::err(format!("roster: leaving out {:?}: it is this `roster serve` on {}", s.name, cli.config.display()));
    }
    others
}

async fn reload(
    cli: &Cli,
    sup: &Supervisor,
    gateway: Option<&Gateway>,
    printer: Printer,
    running: (SupervisorConfig, HttpOptions),
    mut state: Reloader,
) -> Reloader {
    if let Err(why) = state.lock.follow(&cli.config) {
        output::err(format!("roster: warning: {why}"));
    }
    let text = match config::read(&cli.config) {
        Ok(t) => t,
        Err(message) => {
            printer.note(&format!("reload: {message}; the running configuration stays"));
            return state;
        }
    };
    if text == state.text {
        // Touched, or written back unchanged: nothing to apply.
        return state;
    }
    let name = cli.config.display().to_string();
    match config::parse(&name, &text, cli.config.extension().and_then(|e| e.to_str())) {
        Err(errors) => {
            printer.note(&format!("reload: {name} has errors; the running configuration stays"));
            print_diagnostics(cli, &errors, printer.to_stderr);
        }
        Ok(config) => {
            print_warnings(cli, &config);
            if (config.supervisor, config.http) != running {
                printer.note("reload: [defaults] changed; they apply when `roster up` starts again");
            }
            let servers = match gateway {
                Some(gateway) => {
                    gateway.configure(config.serve);
                    leave_out_itself(cli, config.servers)
                }
                None => config.servers,
            };
            match sup.apply(servers).await {
                Ok(plan) => printer.plan("reload", &plan),
                Err(errors) => {
                    for e in errors {
                        output::err(format!("roster: reload: {e}"));
                    }
                }
            }
            state.text = text;
        }
    }
    state
}
