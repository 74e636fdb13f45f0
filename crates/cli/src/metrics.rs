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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

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

/// A metric and a count of its changes. A scrape keeps the text of each
/// server's part of each family and encodes it again only when the count
/// moved: with 1,000 servers most of them stay the same between two scrapes.
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

/// A family's name (after the `roster_` prefix) and help text.
struct Desc {
    name: &'static str,
    help: &'static str,
}

// The families with a series (or several) per server, as indexes into
// `SERVER_FAMILIES` and `Series::parts`.
const STATE: usize = 0;
const UP: usize = 1;
const HEALTH: usize = 2;
const FAILURES: usize = 3;
const CRASHES: usize = 4;
const NEXT_RETRY: usize = 5;
const RESTARTS: usize = 6;
const ATTEMPTS: usize = 7;
const CONNECT: usize = 8;
const PINGS: usize = 9;
const PING_LATENCY: usize = 10;
const CALLS: usize = 11;
const CALL_DURATION: usize = 12;

const SERVER_FAMILIES: [Desc; 13] = [
    Desc { name: "server_state", help: "1 for the state each server is in, 0 for the others" },
    Desc { name: "server_up", help: "1 when the server is running (stdio) or connected (remote)" },
    Desc { name: "server_health", help: "1 for each server's health, 0 for the others" },
    Desc { name: "server_consecutive_failures", help: "Failures in a row" },
    Desc { name: "server_crash_count", help: "Crashes not yet cleared by a stable period" },
    Desc {
        name: "server_next_retry_timestamp_seconds",
        help: "When the next automatic attempt is due (Unix time); absent when none is",
    },
    Desc { name: "server_restarts", help: "Recoveries started (restarts)" },
    Desc { name: "server_connect_attempts", help: "Connect attempts, by how they ended and the failure's class" },
    Desc { name: "server_connect_duration_seconds", help: "From the start of an attempt to its end" },
    Desc { name: "server_pings", help: "Health pings, by how they ended" },
    Desc { name: "server_ping_latency_seconds", help: "From sending a health ping to its answer (answered pings)" },
    Desc { name: "tool_calls", help: "roster serve: tool calls routed to each server, by how they ended" },
    Desc { name: "tool_call_duration_seconds", help: "roster serve: from the client's call to its answer" },
];

// The supervisor-wide families, as indexes into `SUPERVISOR_FAMILIES` and
// `Metrics::supervisor`.
const SERVERS: usize = 0;
const EVENTS: usize = 1;
const DROPPED: usize = 2;
const CONTROL: usize = 3;

const SUPERVISOR_FAMILIES: [Desc; 4] = [
    Desc { name: "servers", help: "Servers in each state" },
    Desc { name: "events_published", help: "Lifecycle events published" },
    Desc {
        name: "events_dropped",
        help: "Events dropped for subscribers that fell behind (event readers, serve, these metrics)",
    },
    Desc { name: "control_requests", help: "Requests to the control socket" },
];

/// Where a family's text comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Put together from every server's part.
    Server(usize),
    Supervisor(usize),
}

/// The families in the order of the text.
const LAYOUT: [Place; 17] = [
    Place::Server(STATE),
    Place::Server(UP),
    Place::Server(HEALTH),
    Place::Server(FAILURES),
    Place::Server(CRASHES),
    Place::Server(NEXT_RETRY),
    Place::Supervisor(SERVERS),
    Place::Server(RESTARTS),
    Place::Server(ATTEMPTS),
    Place::Server(CONNECT),
    Place::Server(PINGS),
    Place::Server(PING_LATENCY),
    Place::Supervisor(EVENTS),
    Place::Supervisor(DROPPED),
    Place::Supervisor(CONTROL),
    Place::Server(CALLS),
    Place::Server(CALL_DURATION),
];

/// A registry of one family (or of one server's part of it) and its count of changes.
struct Part {
    registry: Registry,
    changes: Arc<AtomicU64>,
}

impl Part {
    fn new<M>(desc: &Desc, metric: &Tracked<M>) -> Part
    where
        M: prometheus_client::registry::Metric + Clone,
    {
        let mut registry = Registry::with_prefix("roster");
        registry.register(desc.name, desc.help, metric.metric.clone());
        Part { registry, changes: metric.changes.clone() }
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// One server's series, each family's part in a registry of its own with its
/// count of changes: a ping moves that server's ping parts and nothing else.
struct Series {
    state: Tracked<Family<ServerState, Gauge>>,
    up: Tracked<Family<ServerLabel, Gauge>>,
    health: Tracked<Family<ServerHealth, Gauge>>,
    failures: Tracked<Family<ServerLabel, Gauge>>,
    crashes: Tracked<Family<ServerLabel, Gauge>>,
    next_retry: Tracked<Family<ServerLabel, Gauge>>,
    restarts: Tracked<Family<ServerLabel, Counter>>,
    attempts: Tracked<Family<Attempt, Counter>>,
    connect: Tracked<Durations>,
    pings: Tracked<Family<Ping, Counter>>,
    ping_latency: Tracked<Durations>,
    calls: Tracked<Family<Call, Counter>>,
    call_duration: Tracked<Durations>,
    /// The parts, in the order of `SERVER_FAMILIES`.
    parts: Vec<Part>,
    label: ServerLabel,
    gauges: Gauges,
    /// When the current attempt began (ms since the epoch).
    attempt_started: Mutex<Option<u64>>,
    /// What the scrapes left here; only a scrape locks it, one at a time.
    scraped: Mutex<Scraped>,
}

/// Handles of a server's gauges, set at each scrape where a value moved.
struct Gauges {
    state: [Gauge; State::ALL.len()],
    health: [Gauge; Health::ALL.len()],
    up: Gauge,
    failures: Gauge,
    crashes: Gauge,
}

/// What the last scrape set a server's gauges to and the texts of its parts.
#[derive(Default)]
struct Scraped {
    /// `None` before the first scrape that showed the server.
    shown: Option<Shown>,
    /// In the order of `SERVER_FAMILIES`.
    kept: Vec<Kept>,
}

/// The values a server's gauges were last set to.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shown {
    state: State,
    health: Health,
    failures: u32,
    crashes: u32,
    /// Unix seconds.
    next_retry: Option<i64>,
}

impl Series {
    fn new(name: &str) -> Series {
        let label = ServerLabel { server: name.to_owned() };
        let state = Tracked::new(Family::<ServerState, Gauge>::default());
        let up = Tracked::new(Family::<ServerLabel, Gauge>::default());
        let health = Tracked::new(Family::<ServerHealth, Gauge>::default());
        let failures = Tracked::new(Family::<ServerLabel, Gauge>::default());
        let crashes = Tracked::new(Family::<ServerLabel, Gauge>::default());
        let gauges = Gauges {
            state: State::ALL.map(|s| {
                state.metric.get_or_create(&ServerState { server: name.to_owned(), state: s.as_str() }).clone()
            }),
            health: Health::ALL.map(|h| {
                health.metric.get_or_create(&ServerHealth { server: name.to_owned(), health: h.as_str() }).clone()
            }),
            up: up.metric.get_or_create(&label).clone(),
            failures: failures.metric.get_or_create(&label).clone(),
            crashes: crashes.metric.get_or_create(&label).clone(),
        };
        let mut s = Series {
            state,
            up,
            health,
            failures,
            crashes,
            next_retry: Tracked::new(Family::default()),
            restarts: Tracked::new(Family::default()),
            attempts: Tracked::new(Family::default()),
            connect: Tracked::new(Family::new_with_constructor(|| Histogram::new(connect_buckets()))),
            pings: Tracked::new(Family::default()),
            ping_latency: Tracked::new(Family::new_with_constructor(|| Histogram::new(ping_buckets()))),
            calls: Tracked::new(Family::default()),
            call_duration: Tracked::new(Family::new_with_constructor(|| Histogram::new(connect_buckets()))),
            parts: Vec::new(),
            label,
            gauges,
            attempt_started: Mutex::default(),
            scraped: Mutex::default(),
        };
        let d = &SERVER_FAMILIES;
        s.parts = vec![
            Part::new(&d[STATE], &s.state),
            Part::new(&d[UP], &s.up),
            Part::new(&d[HEALTH], &s.health),
            Part::new(&d[FAILURES], &s.failures),
            Part::new(&d[CRASHES], &s.crashes),
            Part::new(&d[NEXT_RETRY], &s.next_retry),
            Part::new(&d[RESTARTS], &s.restarts),
            Part::new(&d[ATTEMPTS], &s.attempts),
            Part::new(&d[CONNECT], &s.connect),
            Part::new(&d[PINGS], &s.pings),
            Part::new(&d[PING_LATENCY], &s.ping_latency),
            Part::new(&d[CALLS], &s.calls),
            Part::new(&d[CALL_DURATION], &s.call_duration),
        ];
        s
    }

    /// Sets the gauges whose value moved since `was` to `now`, and counts those
    /// parts as changed.
    fn show(&self, was: Option<Shown>, now: Shown) {
        let g = &self.gauges;
        if was.map(|w| w.state) != Some(now.state) {
            for (gauge, state) in g.state.iter().zip(State::ALL) {
                gauge.set(i64::from(state == now.state));
            }
            g.up.set(i64::from(now.state.is_running()));
            self.state.touch();
            self.up.touch();
        }
        if was.map(|w| w.health) != Some(now.health) {
            for (gauge, health) in g.health.iter().zip(Health::ALL) {
                gauge.set(i64::from(health == now.health));
            }
            self.health.touch();
        }
        if was.map(|w| w.failures) != Some(now.failures) {
            g.failures.set(i64::from(now.failures));
            self.failures.touch();
        }
        if was.map(|w| w.crashes) != Some(now.crashes) {
            g.crashes.set(i64::from(now.crashes));
            self.crashes.touch();
        }
        // Absent while no retry is due.
        if was.map(|w| w.next_retry) != Some(now.next_retry) {
            self.next_retry.change(|next| {
                next.clear();
                if let Some(at) = now.next_retry {
                    next.get_or_create(&self.label).set(at);
                }
            });
        }
    }
}

/// The metrics of one supervisor.
pub(crate) struct Metrics {
    sup: Arc<Supervisor>,
    servers: Tracked<Family<StateLabel, Gauge>>,
    events: Tracked<Counter>,
    dropped: Tracked<Counter>,
    /// Incremented by the control socket: counted as changed at every scrape.
    control: Tracked<Counter>,
    /// The supervisor-wide families' registries, in the order of `SUPERVISOR_FAMILIES`.
    supervisor: Vec<Part>,
    /// Every server's series by name, made at its first event, ping or scrape.
    /// A server removed from the config keeps its series (its counters go on
    /// if it comes back) but no scrape shows them.
    series: RwLock<HashMap<String, Arc<Series>>>,
    /// One scrape at a time, and what it leaves for the next.
    scrape: Mutex<Scrape>,
}

/// What a scrape leaves for the next one.
#[derive(Default)]
struct Scrape {
    /// The servers shown, in order, and their series.
    names: Vec<String>,
    shown: Vec<Arc<Series>>,
    /// The supervisor-wide families' texts, in the order of `SUPERVISOR_FAMILIES`.
    kept: Vec<Kept>,
    /// Each per-server family's text, its servers' parts put together, in the
    /// order of `SERVER_FAMILIES`.
    joined: Vec<Bytes>,
    /// The families one of whose parts was encoded again since they were last
    /// put together.
    stale: [bool; SERVER_FAMILIES.len()],
}

/// A text as a scrape encoded it, and its count of changes read just before
/// (`None` before the first scrape).
#[derive(Default)]
struct Kept {
    changes: Option<u64>,
    text: Bytes,
    /// Where the samples begin, after the descriptor lines.
    samples: usize,
}

impl Kept {
    fn new(changes: u64, text: String) -> Kept {
        Kept { changes: Some(changes), samples: samples_at(&text), text: Bytes::from(text) }
    }
}

/// Where a family's samples begin in its text: after its descriptor lines
/// (`# HELP`, `# TYPE`, `# UNIT`), which begin with `#`; samples never do.
fn samples_at(text: &str) -> usize {
    let mut at = 0;
    while text[at..].starts_with('#') {
        at += text[at..].find('\n').map_or(text.len() - at, |n| n + 1);
    }
    at
}

/// One family's text from its parts, one per server: the first part that has
/// series whole, the others without their descriptor lines (the same in every
/// part), so the family is described once and its samples follow together.
fn join<'k>(parts: impl Iterator<Item = &'k Kept> + Clone) -> Bytes {
    let mut first = true;
    let mut len = 0;
    for k in parts.clone().filter(|k| !k.text.is_empty()) {
        len += if std::mem::take(&mut first) { k.text.len() } else { k.text.len() - k.samples };
    }
    let mut text = Vec::with_capacity(len);
    let mut first = true;
    for k in parts.filter(|k| !k.text.is_empty()) {
        let from = if std::mem::take(&mut first) { 0 } else { k.samples };
        text.extend_from_slice(&k.text[from..]);
    }
    Bytes::from(text)
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

/// How many threads a scrape encodes on: the machine's cores, at most four.
fn encoders() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// The text of each registry, in order. Each is written into `room` bytes (its
/// last text's length), not grown and copied step by step; they are shared out
/// among `threads` threads, each taking the next one not yet taken, the longest
/// first, so no thread is left with a long one at the end while the others wait.
fn encode(registries: &[(&Registry, usize)], threads: usize) -> Result<Vec<String>, std::fmt::Error> {
    use std::sync::OnceLock;
    let mut order: Vec<usize> = (0..registries.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(registries[i].1));
    let next = AtomicUsize::new(0);
    let texts: Vec<OnceLock<String>> = registries.iter().map(|_| OnceLock::new()).collect();
    let work = || -> Result<(), std::fmt::Error> {
        loop {
            let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
            let (registry, room) = registries[i];
            let mut text = String::with_capacity(room + room / 8 + 64);
            prometheus_client::encoding::text::encode_registry(&mut text, registry)?;
            // Each index is taken once, so it is set once.
            let _ = texts[i].set(text);
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
    Ok(texts.into_iter().map(|t| t.into_inner().unwrap_or_default()).collect())
}

/// Encodes again, on up to `threads` threads, every part whose count of
/// changes moved since the text kept of it (each count read before encoding,
/// see [`Tracked::change`]), and marks `stale` the per-server families one of
/// whose parts changed, to be put together again.
fn encode_moved(
    supervisor: &[Part],
    kept: &mut Vec<Kept>,
    shown: &[Arc<Series>],
    scraped: &mut [MutexGuard<'_, Scraped>],
    stale: &mut [bool; SERVER_FAMILIES.len()],
    threads: usize,
) -> Result<(), std::fmt::Error> {
    enum Whose {
        Supervisor(usize),
        Server(usize, usize),
    }
    let mut registries = Vec::new();
    let mut whose = Vec::new();
    kept.resize_with(supervisor.len(), Kept::default);
    for (i, (part, kept)) in supervisor.iter().zip(&*kept).enumerate() {
        let now = part.changes();
        if kept.changes != Some(now) {
            registries.push((&part.registry, kept.text.len()));
            whose.push((Whose::Supervisor(i), now));
        }
    }
    for (k, (s, scraped)) in shown.iter().zip(&mut *scraped).enumerate() {
        scraped.kept.resize_with(s.parts.len(), Kept::default);
        for (f, (part, kept)) in s.parts.iter().zip(&scraped.kept).enumerate() {
            let now = part.changes();
            if kept.changes != Some(now) {
                registries.push((&part.registry, kept.text.len()));
                whose.push((Whose::Server(k, f), now));
            }
        }
    }
    let texts = encode(&registries, threads)?;
    for ((whose, now), text) in whose.into_iter().zip(texts) {
        match whose {
            Whose::Supervisor(i) => kept[i] = Kept::new(now, text),
            Whose::Server(k, f) => {
                scraped[k].kept[f] = Kept::new(now, text);
                stale[f] = true;
            }
        }
    }
    Ok(())
}

/// How often the endpoint encodes ahead the parts that moved ([`Metrics::refresh`]).
const REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// What a scrape reads of one server.
struct Row {
    /// The name, when it is not the one the last scrape had in this place.
    renamed: Option<String>,
    shown: Shown,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl roster_serve::CallObserver for Metrics {
    fn observed(&self, server: &str, outcome: roster_serve::CallOutcome, took: std::time::Duration) {
        let s = self.series(server);
        s.calls.change(|c| c.get_or_create(&Call { server: server.to_owned(), outcome: outcome.as_str() }).inc());
        s.call_duration.change(|d| d.get_or_create(&s.label).observe(took.as_secs_f64()));
    }
}

impl roster_supervisor::Observer for Metrics {
    fn pinged(&self, server: &str, took: std::time::Duration, ok: bool) {
        let s = self.series(server);
        let outcome = if ok { "ok" } else { "failed" };
        s.pings.change(|p| p.get_or_create(&Ping { server: server.to_owned(), outcome }).inc());
        if ok {
            s.ping_latency.change(|l| l.get_or_create(&s.label).observe(took.as_secs_f64()));
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
        let servers = Tracked::new(Family::default());
        let events = Tracked::new(Counter::default());
        let dropped = Tracked::new(Counter::default());
        let control = Tracked::new(control);
        let d = &SUPERVISOR_FAMILIES;
        let supervisor = vec![
            Part::new(&d[SERVERS], &servers),
            Part::new(&d[EVENTS], &events),
            Part::new(&d[DROPPED], &dropped),
            Part::new(&d[CONTROL], &control),
        ];
        let metrics = Arc::new(Metrics {
            sup: sup.clone(),
            servers,
            events,
            dropped,
            control,
            supervisor,
            series: RwLock::default(),
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

    /// The series of `server`, made if it has none yet.
    fn series(&self, server: &str) -> Arc<Series> {
        if let Some(s) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(server) {
            return s.clone();
        }
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(server.to_owned()).or_insert_with(|| Arc::new(Series::new(server))).clone()
    }

    fn count(&self, e: &roster_supervisor::ServerEvent) {
        self.events.change(Counter::inc);
        let s = self.series(&e.server);
        if e.event.reason == Some(roster_core::Reason::RecoveryStarted) {
            s.restarts.change(|r| r.get_or_create(&s.label).inc());
        }
        let mut started = s.attempt_started.lock().unwrap_or_else(PoisonError::into_inner);
        if e.event.state == State::Starting && e.event.previous_state != State::Starting {
            *started = Some(e.at_unix_ms);
        } else if e.event.previous_state == State::Starting && e.event.state != State::Starting {
            let (outcome, class) = outcome(&e.event);
            let attempt = Attempt { server: e.server.clone(), outcome, class };
            s.attempts.change(|a| a.get_or_create(&attempt).inc());
            if let Some(at) = started.take() {
                let secs = e.at_unix_ms.saturating_sub(at) as f64 / 1000.0;
                s.connect.change(|c| c.get_or_create(&s.label).observe(secs));
            }
        }
    }

    /// The text of `/metrics`.
    ///
    /// Each server's part of each family is kept as the last scrape encoded it,
    /// with the count of changes it was encoded at; a scrape encodes again only
    /// the parts whose count moved (with pings every second, a tenth of the
    /// servers between two scrapes 100 ms apart), on several threads, and puts
    /// the families together again only where a part changed.
    ///
    /// # Errors
    /// When the text cannot be written (prometheus-client's encoder failed).
    pub(crate) fn render(&self) -> Result<Text, std::fmt::Error> {
        let mut scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let scrape = &mut *scrape;
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
            shown: Shown {
                state: l.state(),
                health: l.health(),
                failures: l.consecutive_failures(),
                crashes: l.crash_count(),
                next_retry: l.next_retry_after().map(|at| {
                    let due = wall + at.saturating_duration_since(now);
                    let secs = due.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    i64::try_from(secs).unwrap_or(i64::MAX)
                }),
            },
        });
        // Servers that came or went: every per-server family is put together anew.
        let moved = scrape.names.len() != rows.len() || rows.iter().any(|r| r.renamed.is_some());
        if moved {
            scrape.names.truncate(rows.len());
            scrape.names.resize_with(rows.len(), String::new);
            for (name, r) in scrape.names.iter_mut().zip(&rows) {
                if let Some(renamed) = &r.renamed {
                    name.clone_from(renamed);
                }
            }
            scrape.shown = scrape.names.iter().map(|n| self.series(n)).collect();
        }
        let mut scraped: Vec<_> =
            scrape.shown.iter().map(|s| s.scraped.lock().unwrap_or_else(PoisonError::into_inner)).collect();
        let mut by_state = [0i64; State::ALL.len()];
        for ((r, s), scraped) in rows.iter().zip(&scrape.shown).zip(&mut scraped) {
            let i = State::ALL.iter().position(|&s| s == r.shown.state).unwrap_or_default();
            by_state[i] += 1;
            s.show(scraped.shown.replace(r.shown), r.shown);
        }
        self.servers.change(|servers| {
            for (state, n) in State::ALL.into_iter().zip(by_state) {
                servers.get_or_create(&StateLabel { state: state.as_str() }).set(n);
            }
        });
        self.dropped.change(|d| d.inc_by(self.sup.events_dropped().saturating_sub(d.get())));
        self.control.touch();

        if moved {
            scrape.stale = [true; SERVER_FAMILIES.len()];
        }
        encode_moved(&self.supervisor, &mut scrape.kept, &scrape.shown, &mut scraped, &mut scrape.stale, encoders())?;
        scrape.joined.resize_with(SERVER_FAMILIES.len(), Bytes::new);
        for (f, (joined, stale)) in scrape.joined.iter_mut().zip(&mut scrape.stale).enumerate() {
            if std::mem::take(stale) {
                *joined = join(scraped.iter().map(|s| &s.kept[f]));
            }
        }
        let mut eof = String::new();
        prometheus_client::encoding::text::encode_eof(&mut eof)?;
        let texts = LAYOUT.iter().map(|place| match *place {
            Place::Server(f) => scrape.joined[f].clone(),
            Place::Supervisor(i) => scrape.kept[i].text.clone(),
        });
        Ok(Text(texts.filter(|t| !t.is_empty()).chain([Bytes::from(eof)]).collect()))
    }

    /// Encodes, on one thread, the parts that moved since the last scrape or
    /// refresh, so that a scrape finds most of its text ready: with pings every
    /// second, a Prometheus scraping every 15 s would otherwise find every
    /// server's ping parts to encode again. Called every [`REFRESH`] while the
    /// endpoint serves; a part changed many times between two calls is encoded
    /// once, so the work is bounded by the number of parts, not of changes.
    ///
    /// # Errors
    /// When a text cannot be written (prometheus-client's encoder failed).
    fn refresh(&self) -> Result<(), std::fmt::Error> {
        let mut scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let scrape = &mut *scrape;
        let mut scraped: Vec<_> =
            scrape.shown.iter().map(|s| s.scraped.lock().unwrap_or_else(PoisonError::into_inner)).collect();
        encode_moved(&self.supervisor, &mut scrape.kept, &scrape.shown, &mut scraped, &mut scrape.stale, 1)
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
    let refreshing = metrics.clone();
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
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(REFRESH);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        let m = refreshing.clone();
                        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || m.refresh()).await {
                            tracing::warn!(error = %e, "the metrics could not be encoded");
                        }
                    }
                });
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
    use roster_supervisor::Observer as _;

    use super::*;

    fn text(t: &Text) -> String {
        t.0.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
    }

    /// The descriptor lines and the samples of a text, the samples sorted (a
    /// family's series come in its hash map's order).
    fn read(text: &str) -> (Vec<&str>, Vec<&str>) {
        let (mut head, mut samples): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with('#'));
        head.sort_unstable();
        samples.sort_unstable();
        (head, samples)
    }

    fn servers(names: &[&str]) -> Vec<Series> {
        let all: Vec<Series> = names.iter().map(|n| Series::new(n)).collect();
        for (i, s) in all.iter().enumerate() {
            let now = Shown {
                state: State::ALL[i % State::ALL.len()],
                health: Health::ALL[i % Health::ALL.len()],
                failures: u32::try_from(i).unwrap(),
                crashes: 1,
                next_retry: (i % 2 == 0).then_some(1_700_000_000 + i64::try_from(i).unwrap()),
            };
            s.show(None, now);
            s.pings.change(|p| p.get_or_create(&Ping { server: names[i].into(), outcome: "ok" }).inc_by(i as u64 + 1));
            s.ping_latency.change(|l| l.get_or_create(&s.label).observe(0.002 * i as f64));
        }
        all
    }

    #[test]
    fn texts_come_back_in_order_on_any_number_of_threads() {
        let all = servers(&["a", "b", "c"]);
        let registries: Vec<(&Registry, usize)> =
            all.iter().flat_map(|s| s.parts.iter().map(|p| (&p.registry, 0))).collect();
        let one: Vec<String> = registries
            .iter()
            .map(|(r, _)| {
                let mut t = String::new();
                prometheus_client::encoding::text::encode_registry(&mut t, r).unwrap();
                t
            })
            .collect();
        assert!(one.iter().any(|t| t.contains("roster_server_pings_total{server=\"c\",outcome=\"ok\"} 3")));
        for threads in [1, 2, 3, 8] {
            assert_eq!(encode(&registries, threads).unwrap(), one, "{threads} threads");
        }
        assert!(encode(&[], 4).unwrap().is_empty());
    }

    #[test]
    fn the_servers_parts_put_together_read_as_one_family_described_once() {
        let names = ["a", "b", "c", "d"];
        let all = servers(&names);
        // The same series, in one registry of whole families.
        let mut together = Registry::with_prefix("roster");
        let state = Family::<ServerState, Gauge>::default();
        let next = Family::<ServerLabel, Gauge>::default();
        let latency: Durations = Family::new_with_constructor(|| Histogram::new(ping_buckets()));
        for (i, name) in names.into_iter().enumerate() {
            for s in State::ALL {
                let on = i64::from(s == State::ALL[i % State::ALL.len()]);
                state.get_or_create(&ServerState { server: name.into(), state: s.as_str() }).set(on);
            }
            if i % 2 == 0 {
                next.get_or_create(&ServerLabel { server: name.into() }).set(1_700_000_000 + i as i64);
            }
            latency.get_or_create(&ServerLabel { server: name.into() }).observe(0.002 * i as f64);
        }
        together.register(SERVER_FAMILIES[STATE].name, SERVER_FAMILIES[STATE].help, state);
        together.register(SERVER_FAMILIES[NEXT_RETRY].name, SERVER_FAMILIES[NEXT_RETRY].help, next);
        together.register(SERVER_FAMILIES[PING_LATENCY].name, SERVER_FAMILIES[PING_LATENCY].help, latency);
        let mut whole = String::new();
        prometheus_client::encoding::text::encode_registry(&mut whole, &together).unwrap();

        let kept: Vec<Vec<Kept>> = all
            .iter()
            .map(|s| {
                let registries: Vec<_> = s.parts.iter().map(|p| (&p.registry, 0)).collect();
                encode(&registries, 2).unwrap().into_iter().map(|t| Kept::new(0, t)).collect()
            })
            .collect();
        let joined: String = [STATE, NEXT_RETRY, PING_LATENCY]
            .into_iter()
            .map(|f| String::from_utf8(join(kept.iter().map(|k| &k[f])).to_vec()).unwrap())
            .collect();
        assert_eq!(read(&joined), read(&whole), "{joined}");
        assert_eq!(joined.matches("# TYPE roster_server_state gauge\n").count(), 1);
        // Every part of a family begins with the family's description, the
        // same each time, and its samples after it.
        let head = "# HELP roster_server_state 1 for the state each server is in, 0 for the others.\n\
                    # TYPE roster_server_state gauge\n";
        for k in &kept {
            assert_eq!(
                (std::str::from_utf8(&k[STATE].text[..k[STATE].samples]).unwrap(), k[STATE].samples),
                (head, head.len())
            );
        }
        // A family no server has series of is no text at all (b and d have no retry due).
        assert_eq!(join(kept.iter().map(|k| &k[CALLS])), Bytes::new());
        assert!(kept[1][NEXT_RETRY].text.is_empty());
        assert!(joined.contains("roster_server_next_retry_timestamp_seconds{server=\"c\"} 1700000002\n"));
        assert!(!joined.contains("{server=\"b\"} 17"));
    }

    #[test]
    fn samples_begin_after_every_descriptor_line() {
        assert_eq!(samples_at(""), 0);
        assert_eq!(samples_at("x 1\n"), 0);
        assert_eq!(samples_at("# HELP x h\n# TYPE x gauge\nx 1\n"), 26);
        assert_eq!(samples_at("# HELP x h\n# TYPE x gauge\n"), 26);
        assert_eq!(samples_at("# HELP x h"), 10);
    }

    fn supervisor(names: &[&str]) -> (Arc<Supervisor>, Vec<roster_core::ValidSpec>) {
        let mut toml = String::new();
        for name in names {
            toml.push_str(&format!("[servers.{name}]\ncommand = \"x\"\n"));
        }
        let config = crate::config::parse("roster.toml", &toml, Some("toml")).unwrap();
        let unsupported = Arc::new(roster_transport::Unsupported);
        let transports = roster_supervisor::Transports::new(unsupported.clone(), unsupported.clone(), unsupported);
        (Arc::new(Supervisor::new(Arc::new(transports), config.supervisor)), config.servers)
    }

    #[tokio::test]
    async fn a_scrape_encodes_again_only_the_parts_that_moved_and_shows_every_change_counted() {
        let (sup, specs) = supervisor(&["a", "b", "c"]);
        sup.apply(specs).await.unwrap();
        let m = Metrics::start(sup.clone(), Counter::default());
        let first = text(&m.render().unwrap());
        assert_eq!(first.matches("# TYPE roster_server_state gauge\n").count(), 1, "{first}");
        for name in ["a", "b", "c"] {
            assert!(first.contains(&format!("roster_server_state{{server=\"{name}\",state=\"unknown\"}} 1\n")));
        }
        assert!(!first.contains("roster_server_pings_total"), "nothing pinged yet");
        assert!(first.ends_with("# EOF\n"));

        m.pinged("a", std::time::Duration::from_millis(3), true);
        m.pinged("b", std::time::Duration::from_millis(4), false);
        let second = text(&m.render().unwrap());
        assert!(second.contains("roster_server_pings_total{server=\"a\",outcome=\"ok\"} 1\n"), "{second}");
        assert!(second.contains("roster_server_pings_total{server=\"b\",outcome=\"failed\"} 1\n"), "{second}");
        assert!(second.contains("roster_server_ping_latency_seconds_count{server=\"a\"} 1\n"), "{second}");
        assert_eq!(second.matches("# TYPE roster_server_pings counter\n").count(), 1, "{second}");

        // Changed behind its count's back: a's part is what the last scrape
        // kept, while b's, counted, is encoded again.
        let a = m.series("a");
        a.pings.metric.get_or_create(&Ping { server: "a".into(), outcome: "ok" }).inc();
        m.pinged("b", std::time::Duration::from_millis(4), true);
        let third = text(&m.render().unwrap());
        assert!(third.contains("roster_server_pings_total{server=\"a\",outcome=\"ok\"} 1\n"), "{third}");
        assert!(third.contains("roster_server_pings_total{server=\"b\",outcome=\"ok\"} 1\n"), "{third}");
        a.pings.touch();
        let fourth = text(&m.render().unwrap());
        assert!(fourth.contains("roster_server_pings_total{server=\"a\",outcome=\"ok\"} 2\n"), "{fourth}");

        // A refresh encodes ahead what moved, and the next scrape puts it
        // together: c's ping, refreshed, then changed behind its count's back,
        // is shown as the refresh encoded it.
        m.pinged("c", std::time::Duration::from_millis(5), true);
        m.refresh().unwrap();
        let c = m.series("c");
        c.pings.metric.get_or_create(&Ping { server: "c".into(), outcome: "ok" }).inc();
        let refreshed = text(&m.render().unwrap());
        assert!(refreshed.contains("roster_server_pings_total{server=\"c\",outcome=\"ok\"} 1\n"), "{refreshed}");
        assert!(refreshed.contains("roster_server_pings_total{server=\"a\",outcome=\"ok\"} 2\n"), "{refreshed}");

        // A server removed from the config is shown no more; one added is.
        let (_, specs) = supervisor(&["b", "c", "d"]);
        sup.apply(specs).await.unwrap();
        let fifth = text(&m.render().unwrap());
        assert!(!fifth.contains("server=\"a\""), "{fifth}");
        assert!(fifth.contains("roster_server_state{server=\"d\",state=\"unknown\"} 1\n"), "{fifth}");
        assert!(fifth.contains("roster_server_pings_total{server=\"b\",outcome=\"failed\"} 1\n"), "{fifth}");
        assert!(fifth.contains("roster_servers{state=\"unknown\"} 3\n"), "{fifth}");
        assert_eq!(fifth.matches("# TYPE roster_server_state gauge\n").count(), 1, "{fifth}");
        // Back again: its counters go on from where they were.
        let (_, specs) = supervisor(&["a", "b", "c", "d"]);
        sup.apply(specs).await.unwrap();
        let sixth = text(&m.render().unwrap());
        assert!(sixth.contains("roster_server_pings_total{server=\"a\",outcome=\"ok\"} 2\n"), "{sixth}");
        assert!(sixth.contains("roster_server_state{server=\"a\",state=\"unknown\"} 1\n"), "{sixth}");
        sup.shutdown().await;
    }
}
