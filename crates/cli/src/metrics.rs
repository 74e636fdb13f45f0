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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State as Axum;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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

struct Families {
    state: Family<ServerState, Gauge>,
    up: Family<ServerLabel, Gauge>,
    health: Family<ServerHealth, Gauge>,
    failures: Family<ServerLabel, Gauge>,
    crashes: Family<ServerLabel, Gauge>,
    next_retry: Family<ServerLabel, Gauge>,
    servers: Family<StateLabel, Gauge>,
    restarts: Family<ServerLabel, Counter>,
    attempts: Family<Attempt, Counter>,
    connect: Durations,
    pings: Family<Ping, Counter>,
    ping_latency: Durations,
    events: Counter,
    dropped: Counter,
    control: Counter,
    calls: Family<Call, Counter>,
    call_duration: Durations,
}

/// The metrics of one supervisor.
pub(crate) struct Metrics {
    sup: Arc<Supervisor>,
    registry: Registry,
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
    /// The last text's length: the next one is written into that much room, not
    /// grown (and copied) step by step.
    last_len: usize,
}

struct ServerGauges {
    state: [Gauge; State::ALL.len()],
    health: [Gauge; Health::ALL.len()],
    up: Gauge,
    failures: Gauge,
    crashes: Gauge,
}

/// What a scrape reads of one server.
struct Row {
    name: String,
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
        f.calls.get_or_create(&Call { server: server.to_owned(), outcome: outcome.as_str() }).inc();
        f.call_duration.get_or_create(&ServerLabel { server: server.to_owned() }).observe(took.as_secs_f64());
    }
}

impl roster_supervisor::Observer for Metrics {
    fn pinged(&self, server: &str, took: std::time::Duration, ok: bool) {
        let f = &self.families;
        let outcome = if ok { "ok" } else { "failed" };
        f.pings.get_or_create(&Ping { server: server.to_owned(), outcome }).inc();
        if ok {
            f.ping_latency.get_or_create(&ServerLabel { server: server.to_owned() }).observe(took.as_secs_f64());
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
            state: Family::default(),
            up: Family::default(),
            health: Family::default(),
            failures: Family::default(),
            crashes: Family::default(),
            next_retry: Family::default(),
            servers: Family::default(),
            restarts: Family::default(),
            attempts: Family::default(),
            connect: Family::new_with_constructor(|| Histogram::new(connect_buckets())),
            pings: Family::default(),
            ping_latency: Family::new_with_constructor(|| Histogram::new(ping_buckets())),
            events: Counter::default(),
            dropped: Counter::default(),
            control,
            calls: Family::default(),
            call_duration: Family::new_with_constructor(|| Histogram::new(connect_buckets())),
        };
        let mut registry = Registry::with_prefix("roster");
        let f = &families;
        registry.register("server_state", "1 for the state each server is in, 0 for the others", f.state.clone());
        registry.register("server_up", "1 when the server is running (stdio) or connected (remote)", f.up.clone());
        registry.register("server_health", "1 for each server's health, 0 for the others", f.health.clone());
        registry.register("server_consecutive_failures", "Failures in a row", f.failures.clone());
        registry.register("server_crash_count", "Crashes not yet cleared by a stable period", f.crashes.clone());
        registry.register(
            "server_next_retry_timestamp_seconds",
            "When the next automatic attempt is due (Unix time); absent when none is",
            f.next_retry.clone(),
        );
        registry.register("servers", "Servers in each state", f.servers.clone());
        registry.register("server_restarts", "Recoveries started (restarts)", f.restarts.clone());
        registry.register(
            "server_connect_attempts",
            "Connect attempts, by how they ended and the failure's class",
            f.attempts.clone(),
        );
        registry.register(
            "server_connect_duration_seconds",
            "From the start of an attempt to its end",
            f.connect.clone(),
        );
        registry.register("server_pings", "Health pings, by how they ended", f.pings.clone());
        registry.register(
            "server_ping_latency_seconds",
            "From sending a health ping to its answer (answered pings)",
            f.ping_latency.clone(),
        );
        registry.register("events_published", "Lifecycle events published", f.events.clone());
        registry.register(
            "events_dropped",
            "Events dropped for subscribers that fell behind (event readers, serve, these metrics)",
            f.dropped.clone(),
        );
        registry.register("control_requests", "Requests to the control socket", f.control.clone());
        registry.register(
            "tool_calls",
            "roster serve: tool calls routed to each server, by how they ended",
            f.calls.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "roster serve: from the client's call to its answer",
            f.call_duration.clone(),
        );
        let metrics = Arc::new(Metrics {
            sup: sup.clone(),
            registry,
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
        f.events.inc();
        let server = ServerLabel { server: e.server.clone() };
        if e.event.reason == Some(roster_core::Reason::RecoveryStarted) {
            f.restarts.get_or_create(&server).inc();
        }
        let mut started = self.attempt_started.lock().unwrap_or_else(PoisonError::into_inner);
        if e.event.state == State::Starting && e.event.previous_state != State::Starting {
            started.insert(e.server.clone(), e.at_unix_ms);
        } else if e.event.previous_state == State::Starting && e.event.state != State::Starting {
            let (outcome, class) = outcome(&e.event);
            let attempt = Attempt { server: e.server.clone(), outcome, class };
            f.attempts.get_or_create(&attempt).inc();
            if let Some(at) = started.remove(&e.server) {
                let secs = e.at_unix_ms.saturating_sub(at) as f64 / 1000.0;
                f.connect.get_or_create(&server).observe(secs);
            }
        }
    }

    /// The text of `/metrics`.
    pub(crate) fn render(&self) -> String {
        let mut scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let f = &self.families;
        let wall = std::time::SystemTime::now();
        let rows = self.sup.inspect_all(|l, now| Row {
            name: l.spec().name.clone(),
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
        // same, the gauges kept from the last scrape are only set again.
        if scrape.names.len() != rows.len() || scrape.names.iter().zip(&rows).any(|(a, b)| *a != b.name) {
            for family in [&f.up, &f.failures, &f.crashes] {
                family.clear();
            }
            f.state.clear();
            f.health.clear();
            let server = |name: &str| ServerLabel { server: name.to_owned() };
            scrape.gauges = rows
                .iter()
                .map(|r| ServerGauges {
                    state: State::ALL.map(|state| {
                        f.state.get_or_create(&ServerState { server: r.name.clone(), state: state.as_str() }).clone()
                    }),
                    health: Health::ALL.map(|health| {
                        let label = ServerHealth { server: r.name.clone(), health: health.as_str() };
                        f.health.get_or_create(&label).clone()
                    }),
                    up: f.up.get_or_create(&server(&r.name)).clone(),
                    failures: f.failures.get_or_create(&server(&r.name)).clone(),
                    crashes: f.crashes.get_or_create(&server(&r.name)).clone(),
                })
                .collect();
            scrape.names = rows.iter().map(|r| r.name.clone()).collect();
        }
        f.next_retry.clear();
        let mut by_state = [0i64; State::ALL.len()];
        for (r, g) in rows.iter().zip(&scrape.gauges) {
            for (i, state) in State::ALL.into_iter().enumerate() {
                g.state[i].set(i64::from(state == r.state));
                if state == r.state {
                    by_state[i] += 1;
                }
            }
            for (i, health) in Health::ALL.into_iter().enumerate() {
                g.health[i].set(i64::from(health == r.health));
            }
            g.up.set(i64::from(r.state.is_running()));
            g.failures.set(i64::from(r.failures));
            g.crashes.set(i64::from(r.crashes));
            if let Some(at) = r.next_retry {
                f.next_retry.get_or_create(&ServerLabel { server: r.name.clone() }).set(at);
            }
        }
        for (state, n) in State::ALL.into_iter().zip(by_state) {
            f.servers.get_or_create(&StateLabel { state: state.as_str() }).set(n);
        }
        f.dropped.inc_by(self.sup.events_dropped().saturating_sub(f.dropped.get()));
        let mut text = String::with_capacity((scrape.last_len + scrape.last_len / 8).max(64 * 1024));
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        scrape.last_len = text.len();
        text
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
    // Encoding 1,000 servers takes milliseconds: off the one runtime thread that
    // also runs every server's supervision.
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n").into_response(),
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
pub(crate) async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint failed");
        }
    });
    Ok(bound)
}
