//! `--metrics ADDR`: Prometheus / OpenMetrics text on `/metrics`, and
//! `/healthz` and `/readyz`, for `up` and `serve`.
//!
//! Two sources: the servers' status, read at each scrape (state, health,
//! failures, next retry: gauges), and the event stream, counted as it goes
//! (events, restarts, connect attempts by outcome, connect durations), and the
//! driver's measurements through [`roster_supervisor::Observer`] (pings). Names
//! follow Prometheus conventions: `roster_` prefix, `_total` counters,
//! `_seconds` units. Label values are server names and fixed words only, never
//! anything a server sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State as Axum;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use roster_core::{Health, State};
use roster_supervisor::{Received, Supervisor};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerState {
    server: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerHealth {
    server: String,
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    server: String,
    outcome: &'static str,
    /// The failure class: `none` for a success, `transient`, `permanent`,
    /// `needs_credentials`, `cancelled`.
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ping {
    server: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    server: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Durations (connects, tool calls): 5 ms to 1 min, in 11 buckets (few: with
/// 1,000 servers every bucket is 1,000 lines of every scrape).
fn connect_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0].into_iter()
}

/// Ping latencies: 1 ms to 10 s (the default ping timeout), in 10 buckets.
fn ping_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0].into_iter()
}

type Durations = Family<ServerLabel, Histogram, fn() -> Histogram>;

/// A metric and a count of its changes. A scrape keeps each family's text and
/// encodes the family again only when the count moved: with 1,000 servers most
/// families (states, health, connect durations) stay the same between scrapes.
struct Tracked<M> {
    metric: M,
    changes: Arc<AtomicU64>,
}

impl<M> Tracked<M> {
    fn new(metric: M) -> Self {
        Tracked { metric, changes: Arc::default() }
    }

    /// Changes the metric through `change`, then counts it. Counted after, and a
    /// scrape reads the count before it encodes: a text kept under a count
    /// always holds every change counted up to it.
    fn change<R>(&self, change: impl FnOnce(&M) -> R) -> R {
        let r = change(&self.metric);
        self.touch();
        r
    }

    /// Counts a change made through a handle of the metric kept elsewhere.
    fn touch(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }
}

struct Families {
    state: Tracked<Family<ServerState, Gauge>>,
    up: Tracked<Family<ServerLabel, Gauge>>,
    health: Tracked<Family<ServerHealth, Gauge>>,
    failures: Tracked<Family<ServerLabel, Gauge>>,
    crashes: Tracked<Family<ServerLabel, Gauge>>,
    next_retry: Tracked<Family<ServerLabel, Gauge>>,
    servers: Tracked<Family<StateLabel, Gauge>>,
    restarts: Tracked<Family<ServerLabel, Counter>>,
    attempts: Tracked<Family<Attempt, Counter>>,
    connect: Tracked<Durations>,
    pings: Tracked<Family<Ping, Counter>>,
    ping_latency: Tracked<Durations>,
    events: Tracked<Counter>,
    dropped: Tracked<Counter>,
    /// Incremented by the control socket: counted as changed at every scrape.
    control: Tracked<Counter>,
    calls: Tracked<Family<Call, Counter>>,
    call_duration: Tracked<Durations>,
}

/// The metrics of one supervisor.
pub(crate) struct Metrics {
    sup: Arc<Supervisor>,
    /// One registry per family, in the order of the text, with the family's
    /// count of changes: a scrape encodes the changed ones on several threads at
    /// once and puts the texts together in this order.
    registries: Vec<Part>,
    families: Families,
    /// When each server's current attempt began (ms since the epoch).
    attempt_started: Mutex<HashMap<String, u64>>,
    /// One scrape at a time; the servers the gauges were last set for, and their gauges.
    scrape: Mutex<Scrape>,
}

/// The per-server gauges, kept while the set of servers stays the same: a scrape
/// then sets values without looking up labels or allocating.
#[derive(Default)]
struct Scrape {
    names: Vec<String>,
    gauges: Vec<ServerGauges>,
    /// Each family's last text and the count of changes it was encoded at.
    kept: Vec<Kept>,
}

/// A family's registry and its count of changes.
struct Part {
    registry: Registry,
    changes: Arc<AtomicU64>,
}

/// A family's text as a scrape encoded it, and the family's count of changes
/// read just before (`None` before the first scrape).
#[derive(Default)]
struct Kept {
    changes: Option<u64>,
    text: Bytes,
}

/// The text of a scrape: the families' texts in order, then the end marker,
/// sent one after the other (not copied into one).
#[derive(Debug)]
pub(crate) struct Text(Vec<Bytes>);

impl Text {
    fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

/// Families registered one per registry, all under the `roster` prefix.
#[derive(Default)]
struct Registries(Vec<Part>);

impl Registries {
    fn register<M>(&mut self, name: &str, help: &str, metric: &Tracked<M>)
    where
        M: prometheus_client::registry::Metric + Clone,
    {
        let mut registry = Registry::with_prefix("roster");
        registry.register(name, help, metric.metric.clone());
        self.0.push(Part { registry, changes: metric.changes.clone() });
    }
}

/// How many threads a scrape encodes on: the machine's cores, at most four.
fn encoders() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// The text of every registry, in order, then the end marker. With 1,000 servers
/// that is about 47,000 lines, milliseconds of encoding: only the registries
/// whose count of changes moved since `kept` are encoded again, shared out among
/// `threads` threads, each taking the next one not yet taken, longest first.
/// `kept` is updated.
fn encode(parts: &[Part], kept: &mut Vec<Kept>, threads: usize) -> Result<Text, std::fmt::Error> {
    use std::sync::OnceLock;
    kept.resize_with(parts.len(), Kept::default);
    // Read before encoding (see `Tracked::change`).
    let now: Vec<u64> = parts.iter().map(|p| p.changes.load(Ordering::Acquire)).collect();
    let mut order: Vec<usize> = (0..parts.len()).filter(|&i| kept[i].changes != Some(now[i])).collect();
    // The longest first (by the last texts), so no thread is left with a long
    // one at the end while the others wait.
    order.sort_by_key(|&i| std::cmp::Reverse(kept[i].text.len()));
    let next = AtomicUsize::new(0);
    let fresh: Vec<OnceLock<String>> = parts.iter().map(|_| OnceLock::new()).collect();
    let last = &kept[..];
    let work = || -> Result<(), std::fmt::Error> {
        loop {
            let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
            // Into the room the last text needed, not grown (and copied) step by step.
            let room = last[i].text.len();
            let mut text = String::with_capacity(room + room / 8 + 256);
            prometheus_client::encoding::text::encode_registry(&mut text, &parts[i].registry)?;
            // Each index is taken once, so it is set once.
            let _ = fresh[i].set(text);
        }
    };
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads.min(order.len())).map(|_| s.spawn(work)).collect();
        let mine = work();
        for other in others {
            other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        mine
    })?;
    for ((kept, fresh), changes) in kept.iter_mut().zip(fresh).zip(now) {
        if let Some(text) = fresh.into_inner() {
            *kept = Kept { changes: Some(changes), text: Bytes::from(text) };
        }
    }
    let mut eof = String::new();
    prometheus_client::encoding::text::encode_eof(&mut eof)?;
    Ok(Text(kept.iter().map(|k| k.text.clone()).chain([Bytes::from(eof)]).collect()))
}

struct ServerGauges {
    state: [Gauge; State::ALL.len()],
    health: [Gauge; Health::ALL.len()],
    up: Gauge,
    failures: Gauge,
    crashes: Gauge,
    /// The values last set (`None` before the first scrape).
    shown: Option<Shown>,
}

/// The values a server's gauges were last set to.
#[derive(Clone, Copy)]
struct Shown {
    state: State,
    health: Health,
    failures: u32,
    crashes: u32,
}

/// What a scrape reads of one server.
struct Row {
    /// The name, when it is not the one the last scrape had in this place.
    renamed: Option<String>,
    state: State,
    health: Health,
    failures: u32,
    crashes: u32,
    /// Unix seconds.
    next_retry: Option<i64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl roster_serve::CallObserver for Metrics {
    fn observed(&self, server: &str, outcome: roster_serve::CallOutcome, took: std::time::Duration) {
        let f = &self.families;
        f.calls.change(|c| c.get_or_create(&Call { server: server.to_owned(), outcome: outcome.as_str() }).inc());
        f.call_duration
            .change(|d| d.get_or_create(&ServerLabel { server: server.to_owned() }).observe(took.as_secs_f64()));
    }
}

impl roster_supervisor::Observer for Metrics {
    fn pinged(&self, server: &str, took: std::time::Duration, ok: bool) {
        let f = &self.families;
        let outcome = if ok { "ok" } else { "failed" };
        f.pings.change(|p| p.get_or_create(&Ping { server: server.to_owned(), outcome }).inc());
        if ok {
            f.ping_latency
                .change(|l| l.get_or_create(&ServerLabel { server: server.to_owned() }).observe(took.as_secs_f64()));
        }
    }
}

/// What an attempt ended as, from the state it went to, and the failure's class
/// (a failed attempt with no retry scheduled was permanent).
fn outcome(event: &roster_core::LifecycleEvent) -> (&'static str, &'static str) {
    match event.state {
        State::Running | State::Connected => ("ok", "none"),
        State::Failed if event.retry_in_ms.is_none() => ("failed", "permanent"),
        State::Failed => ("failed", "transient"),
        State::Unreachable => ("unreachable", "transient"),
        State::AuthRequired => ("auth_required", "needs_credentials"),
        State::Stopping | State::Stopped | State::Disconnected => ("cancelled", "cancelled"),
        State::Unknown | State::Starting => ("other", "none"),
    }
}

impl Metrics {
    /// The metrics of `sup`; counting starts now (call before the first start).
    /// `control` counts the control socket's requests (the socket increments it).
    pub(crate) fn start(sup: Arc<Supervisor>, control: Counter) -> Arc<Metrics> {
        let families = Families {
            state: Tracked::new(Family::default()),
            up: Tracked::new(Family::default()),
            health: Tracked::new(Family::default()),
            failures: Tracked::new(Family::default()),
            crashes: Tracked::new(Family::default()),
            next_retry: Tracked::new(Family::default()),
            servers: Tracked::new(Family::default()),
            restarts: Tracked::new(Family::default()),
            attempts: Tracked::new(Family::default()),
            connect: Tracked::new(Family::new_with_constructor(|| Histogram::new(connect_buckets()))),
            pings: Tracked::new(Family::default()),
            ping_latency: Tracked::new(Family::new_with_constructor(|| Histogram::new(ping_buckets()))),
            events: Tracked::new(Counter::default()),
            dropped: Tracked::new(Counter::default()),
            control: Tracked::new(control),
            calls: Tracked::new(Family::default()),
            call_duration: Tracked::new(Family::new_with_constructor(|| Histogram::new(connect_buckets()))),
        };
        let mut registry = Registries::default();
        let f = &families;
        registry.register("server_state", "1 for the state each server is in, 0 for the others", &f.state);
        registry.register("server_up", "1 when the server is running (stdio) or connected (remote)", &f.up);
        registry.register("server_health", "1 for each server's health, 0 for the others", &f.health);
        registry.register("server_consecutive_failures", "Failures in a row", &f.failures);
        registry.register("server_crash_count", "Crashes not yet cleared by a stable period", &f.crashes);
        registry.register(
            "server_next_retry_timestamp_seconds",
            "When the next automatic attempt is due (Unix time); absent when none is",
            &f.next_retry,
        );
        registry.register("servers", "Servers in each state", &f.servers);
        registry.register("server_restarts", "Recoveries started (restarts)", &f.restarts);
        registry.register(
            "server_connect_attempts",
            "Connect attempts, by how they ended and the failure's class",
            &f.attempts,
        );
        registry.register("server_connect_duration_seconds", "From the start of an attempt to its end", &f.connect);
        registry.register("server_pings", "Health pings, by how they ended", &f.pings);
        registry.register(
            "server_ping_latency_seconds",
            "From sending a health ping to its answer (answered pings)",
            &f.ping_latency,
        );
        registry.register("events_published", "Lifecycle events published", &f.events);
        registry.register(
            "events_dropped",
            "Events dropped for subscribers that fell behind (event readers, serve, these metrics)",
            &f.dropped,
        );
        registry.register("control_requests", "Requests to the control socket", &f.control);
        registry.register("tool_calls", "roster serve: tool calls routed to each server, by how they ended", &f.calls);
        registry.register(
            "tool_call_duration_seconds",
            "roster serve: from the client's call to its answer",
            &f.call_duration,
        );
        let metrics = Arc::new(Metrics {
            sup: sup.clone(),
            registries: registry.0,
            families,
            attempt_started: Mutex::default(),
            scrape: Mutex::default(),
        });
        // Another observer installed first keeps its place; pings then go uncounted.
        if sup.observe(metrics.clone()).is_err() {
            tracing::warn!("another observer of pings is installed; roster_server_pings stay empty");
        }
        let mut events = sup.subscribe();
        let counting = metrics.clone();
        tokio::spawn(async move {
            while let Some(received) = events.recv().await {
                match received {
                    Received::Event(e) => counting.count(&e),
                    // Counted by the bus, with every other subscriber's drops.
                    Received::Missed(_) => {}
                }
            }
        });
        metrics
    }

    fn count(&self, e: &roster_supervisor::ServerEvent) {
        let f = &self.families;
        f.events.change(Counter::inc);
        let server = ServerLabel { server: e.server.clone() };
        if e.event.reason == Some(roster_core::Reason::RecoveryStarted) {
            f.restarts.change(|r| r.get_or_create(&server).inc());
        }
        let mut started = self.attempt_started.lock().unwrap_or_else(PoisonError::into_inner);
        if e.event.state == State::Starting && e.event.previous_state != State::Starting {
            started.insert(e.server.clone(), e.at_unix_ms);
        } else if e.event.previous_state == State::Starting && e.event.state != State::Starting {
            let (outcome, class) = outcome(&e.event);
            let attempt = Attempt { server: e.server.clone(), outcome, class };
            f.attempts.change(|a| a.get_or_create(&attempt).inc());
            if let Some(at) = started.remove(&e.server) {
                let secs = e.at_unix_ms.saturating_sub(at) as f64 / 1000.0;
                f.connect.change(|c| c.get_or_create(&server).observe(secs));
            }
        }
    }

    /// The text of `/metrics`.
    ///
    /// # Errors
    /// When the text cannot be written (prometheus-client's encoder failed).
    pub(crate) fn render(&self) -> Result<Text, std::fmt::Error> {
        let mut scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let f = &self.families;
        let wall = std::time::SystemTime::now();
        // Names are compared with the last scrape's, in place, and copied only
        // where they differ.
        let mut at = 0;
        let rows = self.sup.inspect_all(|l, now| Row {
            renamed: {
                let name = &l.spec().name;
                at += 1;
                (scrape.names.get(at - 1) != Some(name)).then(|| name.clone())
            },
            state: l.state(),
            health: l.health(),
            failures: l.consecutive_failures(),
            crashes: l.crash_count(),
            next_retry: l.next_retry_after().map(|at| {
                let due = wall + at.saturating_duration_since(now);
                let secs = due.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                i64::try_from(secs).unwrap_or(i64::MAX)
            }),
        });
        // Servers that went away go from the gauges; while the set stays the
        // same, the gauges kept from the last scrape are set again where a
        // value changed, and only those families are encoded again.
        if scrape.names.len() != rows.len() || rows.iter().any(|r| r.renamed.is_some()) {
            let mut names = std::mem::take(&mut scrape.names);
            names.truncate(rows.len());
            names.resize_with(rows.len(), String::new);
            for (name, r) in names.iter_mut().zip(&rows) {
                if let Some(renamed) = &r.renamed {
                    name.clone_from(renamed);
                }
            }
            for family in [&f.up, &f.failures, &f.crashes] {
                family.change(Family::clear);
            }
            f.state.change(Family::clear);
            f.health.change(Family::clear);
            let server = |name: &str| ServerLabel { server: name.to_owned() };
            let (state, health) = (&f.state.metric, &f.health.metric);
            scrape.gauges = names
                .iter()
                .map(|name| ServerGauges {
                    state: State::ALL
                        .map(|s| state.get_or_create(&ServerState { server: name.clone(), state: s.as_str() }).clone()),
                    health: Health::ALL.map(|h| {
                        health.get_or_create(&ServerHealth { server: name.clone(), health: h.as_str() }).clone()
                    }),
                    up: f.up.metric.get_or_create(&server(name)).clone(),
                    failures: f.failures.metric.get_or_create(&server(name)).clone(),
                    crashes: f.crashes.metric.get_or_create(&server(name)).clone(),
                    shown: None,
                })
                .collect();
            scrape.names = names;
        }
        let mut by_state = [0i64; State::ALL.len()];
        let (mut states, mut healths, mut failures, mut crashes) = (false, false, false, false);
        for (r, g) in rows.iter().zip(&mut scrape.gauges) {
            let i = State::ALL.iter().position(|&s| s == r.state).unwrap_or_default();
            by_state[i] += 1;
            let now = Shown { state: r.state, health: r.health, failures: r.failures, crashes: r.crashes };
            let was = g.shown.replace(now);
            if was.map(|w| w.state) != Some(now.state) {
                for (i, state) in State::ALL.into_iter().enumerate() {
                    g.state[i].set(i64::from(state == r.state));
                }
                g.up.set(i64::from(r.state.is_running()));
                states = true;
            }
            if was.map(|w| w.health) != Some(now.health) {
                for (i, health) in Health::ALL.into_iter().enumerate() {
                    g.health[i].set(i64::from(health == r.health));
                }
                healths = true;
            }
            if was.map(|w| w.failures) != Some(now.failures) {
                g.failures.set(i64::from(r.failures));
                failures = true;
            }
            if was.map(|w| w.crashes) != Some(now.crashes) {
                g.crashes.set(i64::from(r.crashes));
                crashes = true;
            }
        }
        if states {
            f.state.touch();
            f.up.touch();
        }
        if healths {
            f.health.touch();
        }
        if failures {
            f.failures.touch();
        }
        if crashes {
            f.crashes.touch();
        }
        // Small families, set afresh at every scrape (the time of the next
        // retry is read against the clock; the control socket counts on its own).
        f.next_retry.change(|next| {
            next.clear();
            for (r, name) in rows.iter().zip(&scrape.names) {
                if let Some(at) = r.next_retry {
                    next.get_or_create(&ServerLabel { server: name.clone() }).set(at);
                }
            }
        });
        f.servers.change(|servers| {
            for (state, n) in State::ALL.into_iter().zip(by_state) {
                servers.get_or_create(&StateLabel { state: state.as_str() }).set(n);
            }
        });
        f.dropped.change(|d| d.inc_by(self.sup.events_dropped().saturating_sub(d.get())));
        f.control.touch();
        encode(&self.registries, &mut scrape.kept, encoders())
    }

    /// Whether every server that starts on its own has finished its first attempt.
    fn ready(&self) -> bool {
        self.sup
            .inspect_all(|l, _| match l.state() {
                _ if !l.spec().auto_start => true,
                State::Unknown => false,
                State::Starting => l.consecutive_failures() > 0 || l.restart_count() > 0,
                _ => true,
            })
            .into_iter()
            .all(|done| done)
    }
}

async fn scrape(Axum(m): Axum<Arc<Metrics>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    // Encoding 1,000 servers takes milliseconds: not on the thread that serves
    // `/healthz` and `/readyz` meanwhile.
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(Ok(text)) => {
            let len = text.len();
            let body =
                axum::body::Body::from_stream(futures::stream::iter(text.0.into_iter().map(Ok::<_, Infallible>)));
            ([(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_LENGTH, len.to_string())], body)
                .into_response()
        }
        Ok(Err(_)) | Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n").into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(Axum(m): Axum<Arc<Metrics>>) -> Response {
    if m.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: not every auto_start server has finished its first attempt\n")
            .into_response()
    }
}

/// Serves the metrics on `addr` until the process ends. Returns the bound address.
///
/// # Errors
/// When `addr` cannot be bound.
pub(crate) fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the metrics endpoint: {e}"))?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    // A thread and a runtime of its own: writing a scrape of megabytes does not
    // wait behind the supervision's tasks, nor they behind it. It lives as long
    // as the process.
    std::thread::Builder::new()
        .name("roster-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    // A scrape is written in pieces (the families' texts): the
                    // last, short one must not wait for the scraper's delayed ACK.
                    Ok(listener) => {
                        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                            let _ = tcp.set_nodelay(true);
                        });
                        axum::serve(listener, app).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the metrics endpoint failed");
                }
            });
        })
        .map_err(|e| format!("cannot start the metrics endpoint: {e}"))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three families with a few series each, registered both ways: one
    /// registry per family (as `/metrics` does) and all in one registry.
    struct Both {
        apart: Registries,
        together: Registry,
        up: Tracked<Family<ServerLabel, Gauge>>,
        pings: Tracked<Family<Ping, Counter>>,
        latency: Tracked<Durations>,
    }

    fn both() -> Both {
        let (mut apart, mut together) = (Registries::default(), Registry::with_prefix("roster"));
        let up = Tracked::new(Family::<ServerLabel, Gauge>::default());
        let pings = Tracked::new(Family::<Ping, Counter>::default());
        let latency: Tracked<Durations> = Tracked::new(Family::new_with_constructor(|| Histogram::new(ping_buckets())));
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let server = ServerLabel { server: name.to_owned() };
            up.change(|u| u.get_or_create(&server).set(i64::try_from(i % 2).unwrap()));
            pings.change(|p| p.get_or_create(&Ping { server: name.to_owned(), outcome: "ok" }).inc_by(i as u64 + 1));
            latency.change(|l| l.get_or_create(&server).observe(0.002 * i as f64));
        }
        apart.register("server_up", "up", &up);
        apart.register("server_pings", "pings", &pings);
        apart.register("server_ping_latency_seconds", "latency", &latency);
        together.register("server_up", "up", up.metric.clone());
        together.register("server_pings", "pings", pings.metric.clone());
        together.register("server_ping_latency_seconds", "latency", latency.metric.clone());
        Both { apart, together, up, pings, latency }
    }

    fn joined(text: &Text) -> String {
        text.0.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
    }

    fn whole(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        text
    }

    #[test]
    fn families_encoded_apart_on_any_number_of_threads_read_as_one_registry() {
        let both = both();
        let expected = whole(&both.together);
        for threads in [1, 2, 3, 8] {
            let mut kept = Vec::new();
            let text = encode(&both.apart.0, &mut kept, threads).unwrap();
            assert_eq!(text.len(), expected.len());
            assert_eq!(joined(&text), expected, "{threads} threads");
            assert_eq!(kept.len(), 3);
            assert_eq!(kept.iter().map(|k| k.text.len()).sum::<usize>() + "# EOF\n".len(), expected.len());
            assert!(kept.iter().all(|k| !k.text.is_empty() && k.changes.is_some()));
        }
    }

    #[test]
    fn a_family_is_encoded_again_exactly_when_its_count_of_changes_moved() {
        let both = both();
        let mut kept = Vec::new();
        let first = joined(&encode(&both.apart.0, &mut kept, 2).unwrap());
        // Changed behind the count's back: the kept text is what the scrape shows.
        both.pings.metric.get_or_create(&Ping { server: "a".into(), outcome: "failed" }).inc();
        assert_eq!(joined(&encode(&both.apart.0, &mut kept, 2).unwrap()), first);
        // Counted: that family is encoded again, and the text is the whole truth.
        both.pings.touch();
        let second = joined(&encode(&both.apart.0, &mut kept, 2).unwrap());
        assert_ne!(second, first);
        assert!(second.contains("roster_server_pings_total{server=\"a\",outcome=\"failed\"} 1"), "{second}");
        assert_eq!(second, whole(&both.together));
        // Each family on its own: changed through `change`, shown at the next scrape.
        both.up.change(|u| u.get_or_create(&ServerLabel { server: "e".into() }).set(7));
        both.latency.change(|l| l.get_or_create(&ServerLabel { server: "a".into() }).observe(3.0));
        let third = joined(&encode(&both.apart.0, &mut kept, 1).unwrap());
        assert!(third.contains("roster_server_up{server=\"e\"} 7"), "{third}");
        assert!(third.contains("roster_server_ping_latency_seconds_sum{server=\"a\"} 3"), "{third}");
        assert_eq!(third, whole(&both.together));
    }
}
