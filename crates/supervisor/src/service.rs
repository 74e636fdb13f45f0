//! One server: a task owning a [`Lifecycle`], and the [`Service`] handle to it.
//!
//! The task waits on requests, on results from the ports, on the session's
//! death and on one timer at [`Lifecycle::poll_timeout`]; it feeds each to the
//! core and executes the effects in order, all of them, before it takes the next
//! input. After every transition it publishes a copy of the lifecycle to a
//! `watch` channel: status reads, predicates and plans are computed from that
//! copy by the core's own functions, so they never wait on a connect and never
//! decide anything the core did not.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmcp::RoleClient;
use rmcp::service::Peer;
use roster_core::lifecycle::{NO_CLIENT, format_duration};
use roster_core::{
    Challenge, Change, Effect, Event, Failure, Generation, Health, Lifecycle, Reply, ServerSpec, ServerStatus,
    Settings, SpecChange, StartError, State, ToolListing, ValidSpec, ValidationError,
};
use roster_transport::{Connector, Session};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info, warn};

use crate::events::{EventBus, Subscription};
use crate::ports::{Clock, TokioClock};

/// How long the driver waits beyond an adapter's own bound before it gives up on a
/// connect or a ping (a safety net: adapters bound themselves).
const BACKSTOP: Duration = Duration::from_secs(1);
/// Longest the driver lets a close run before it kills and drops the session.
const CLOSE_BACKSTOP: Duration = Duration::from_secs(30);

/// Called when a server wants credentials: with the definition current at that
/// moment and the parsed challenge, before anyone can see the `auth_required`
/// state (status, events, replies). A hook that panics is logged; the server's
/// lifecycle goes on.
pub type AuthHook = Arc<dyn Fn(&ServerSpec, &Challenge) + Send + Sync>;

/// Measurements the driver takes that are no lifecycle event: for a host's
/// metrics. Called on the server's own task, so it must be quick and must not
/// block.
pub trait Observer: Send + Sync + 'static {
    /// A ping of `server` ended after `took`: answered (`ok`), or failed.
    fn pinged(&self, server: &str, took: Duration, ok: bool);
}

/// What services of one supervisor share.
pub(crate) struct Shared {
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) settings: Settings,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) bus: EventBus,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// The host lists every session's tools and reports them
    /// ([`Service::tools_listed`]); the driver does not list.
    pub(crate) listing_delegated: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        connector: Arc<dyn Connector>,
        settings: Settings,
        max_concurrent_connects: usize,
        event_capacity: usize,
        clock: Arc<dyn Clock>,
    ) -> Shared {
        Shared {
            connector,
            settings,
            permits: Arc::new(Semaphore::new(max_concurrent_connects.max(1))),
            bus: EventBus::new(event_capacity),
            clock,
            observer: std::sync::OnceLock::new(),
            listing_delegated: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Options for a [`Service`] that runs on its own, outside a supervisor.
#[derive(Debug, Clone, Copy)]
pub struct ServiceOptions {
    /// The lifecycle's numbers.
    pub settings: Settings,
    /// Connection attempts that may run at once.
    pub max_concurrent_connects: usize,
    /// Events buffered per subscriber.
    pub event_capacity: usize,
}

impl Default for ServiceOptions {
    fn default() -> ServiceOptions {
        ServiceOptions { settings: Settings::default(), max_concurrent_connects: 5, event_capacity: 1024 }
    }
}

/// The health check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The health found.
    pub health: Health,
    /// Why it is unhealthy.
    pub error: Option<String>,
}

/// The service is gone (its supervisor shut down or removed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the service has shut down")]
pub struct ServiceGone;

enum Command {
    Start(Option<oneshot::Sender<Result<(), StartError>>>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<Result<(), StartError>>),
    CheckHealth(oneshot::Sender<HealthReport>),
    Update(Box<ValidSpec>, oneshot::Sender<SpecChange>),
    Kill,
    ToolsListed(Generation, ToolListing),
}

enum Report {
    Connected(Generation, Arc<dyn Session>),
    ConnectFailed(Generation, Failure),
    SessionLost(Generation, Failure),
    SessionClosed(Generation),
    /// How long the ping took, and how it ended.
    Pinged(Generation, Duration, Result<(), Failure>),
    ToolsListed(Generation, ToolListing),
}

/// What readers see: the lifecycle as of the last transition, and its sessions.
#[derive(Clone)]
struct Snapshot {
    lifecycle: Lifecycle,
    session: Option<Arc<dyn Session>>,
    /// The latest session, live or not: its stderr tail stays visible after it died.
    latest: Option<Arc<dyn Session>>,
}

/// Names one session of one service; never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    instance: u64,
    generation: Generation,
}

/// A live session, as [`Service::live`] reads it.
#[derive(Clone)]
pub struct Live {
    /// Which session it is.
    pub id: SessionId,
    /// The session (its rmcp peer, its error classification).
    pub session: Arc<dyn Session>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A handle to one supervised server. Cheap to clone; the server's task stops
/// the server and ends when the last handle is dropped.
#[derive(Clone)]
pub struct Service {
    name: Arc<str>,
    /// Unique among the services of this process: a server removed and added
    /// again is another service, whose generations start again.
    instance: u64,
    commands: mpsc::UnboundedSender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    hook: Arc<RwLock<Option<AuthHook>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).field("state", &self.state()).finish()
    }
}

impl Service {
    /// A server on its own (not under a [`crate::Supervisor`]), driven on the
    /// current tokio runtime. Nothing starts until [`Service::start`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(spec: ValidSpec, connector: Arc<dyn Connector>, options: ServiceOptions) -> Service {
        let shared = Arc::new(Shared::new(
            connector,
            options.settings,
            options.max_concurrent_connects,
            options.event_capacity,
            Arc::new(TokioClock),
        ));
        Service::spawn(spec, shared, 0)
    }

    pub(crate) fn spawn(spec: ValidSpec, shared: Arc<Shared>, seed: u64) -> Service {
        let name: Arc<str> = spec.name.as_str().into();
        let lifecycle = Lifecycle::new(spec, shared.settings, seed);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let hook = Arc::new(RwLock::new(None));
        let (actor, report_rx, snapshot_rx) = Actor::new(lifecycle, shared.clone(), hook.clone());
        let span = tracing::info_span!("server", name = %name);
        tokio::spawn(actor.run(command_rx, report_rx).instrument(span));
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Service { name, instance, commands, snapshot: snapshot_rx, hook, shared }
    }

    /// Installs the auth-required hook (SPEC §3.5), replacing any earlier one.
    #[must_use]
    pub fn with_auth_required_hook(self, hook: impl Fn(&ServerSpec, &Challenge) + Send + Sync + 'static) -> Service {
        self.set_hook(Arc::new(hook));
        self
    }

    pub(crate) fn set_hook(&self, hook: AuthHook) {
        *self.hook.write().unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the server and waits for the outcome of the attempt. A start while
    /// one is in flight joins it; a start of a running server is refused.
    ///
    /// # Errors
    /// Why the server did not come up.
    pub async fn start(&self) -> Result<(), StartError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Start(Some(tx)));
        rx.await.unwrap_or(Err(StartError::Cancelled))
    }

    /// Asks for a start without waiting for its outcome.
    pub fn request_start(&self) {
        self.send(Command::Start(None));
    }

    /// Stops the server (cancelling an attempt in flight) and waits until it is
    /// down and nothing of its last session is left.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stop(tx));
        let _ = rx.await;
    }

    /// Restarts: stops what runs, waits the grace period if it stopped something,
    /// starts, and waits for the outcome. A restart in progress is joined.
    ///
    /// # Errors
    /// Why the server did not come up again.
    pub async fn restart(&self) -> Result<(), StartError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Restart(tx));
        rx.await.unwrap_or(Err(StartError::Cancelled))
    }

    /// Kills what runs of the server now, without the grace of a stop: the
    /// processes of a stdio server die at once. The server then goes through its
    /// lifecycle as after a crash (or, while stopping, finishes the stop).
    pub fn kill(&self) {
        self.send(Command::Kill);
    }

    /// Pings the server now and returns what it found.
    pub async fn check_health(&self) -> HealthReport {
        let (tx, rx) = oneshot::channel();
        self.send(Command::CheckHealth(tx));
        rx.await.unwrap_or(HealthReport { health: Health::Unknown, error: Some(ServiceGone.to_string()) })
    }

    /// Swaps in a new definition atomically (readers see the old or the new one)
    /// and does what the core decides for it ([`Lifecycle::change_outcome`]).
    ///
    /// # Errors
    /// The definition's validation errors (or a rename); nothing is changed then.
    pub async fn update_configuration(&self, spec: ServerSpec) -> Result<SpecChange, Vec<ValidationError>> {
        let spec = spec.validated()?;
        self.update(spec).await
    }

    /// [`Service::update_configuration`] for a definition that is validated already.
    ///
    /// # Errors
    /// A rename: a definition keeps its name.
    pub async fn update(&self, spec: ValidSpec) -> Result<SpecChange, Vec<ValidationError>> {
        if spec.name != *self.name {
            return Err(vec![ValidationError::new(
                spec.name.clone(),
                roster_core::Field::Name,
                format!("cannot rename server {:?}: a definition keeps its name", self.name),
            )]);
        }
        let predicted = self.change_outcome(&spec);
        let (tx, rx) = oneshot::channel();
        self.send(Command::Update(Box::new(spec), tx));
        // A service that is gone changed nothing; say what it would have done.
        Ok(rx.await.unwrap_or(predicted))
    }

    /// What `new` would do to the server now: the core's own decision, as
    /// [`Service::update`] would apply it.
    pub fn change_outcome(&self, new: &ServerSpec) -> SpecChange {
        self.snapshot.borrow().lifecycle.change_outcome(new)
    }

    /// Whether `new` differs from the current definition in a way that needs a
    /// restart, and which fields differ (SPEC §8).
    pub fn configuration_changed(&self, new: &ServerSpec) -> Change {
        self.change_outcome(new).change
    }

    /// Validates the current definition: always true, since a service only ever
    /// holds a [`ValidSpec`]. Kept for hosts that mirror the reference's API.
    ///
    /// # Errors
    /// Never.
    pub fn validate_configuration(&self) -> Result<(), Vec<ValidationError>> {
        Ok(())
    }

    /// The current definition.
    pub fn spec(&self) -> ServerSpec {
        self.snapshot.borrow().lifecycle.spec().clone()
    }

    /// A snapshot of the server (SPEC §9), secrets redacted. Never waits.
    pub fn status(&self) -> ServerStatus {
        let snap = self.snapshot.borrow().clone();
        let mut status = ServerStatus::new(&snap.lifecycle, self.shared.clock.now(), self.shared.clock.wall());
        status.pid = snap.session.as_ref().and_then(|s| s.pid());
        status.stderr_tail = snap.latest.as_ref().map(|s| s.stderr_tail()).unwrap_or_default();
        status
    }

    fn read<T>(&self, f: impl FnOnce(&Lifecycle) -> T) -> T {
        f(&self.snapshot.borrow().lifecycle)
    }

    /// Reads the lifecycle as of the last transition, with the driver's clock's
    /// now: for a host that needs a few of its values often (metrics), without
    /// building a whole [`Service::status`]. Never waits on the server; `f` must
    /// be quick (it holds the snapshot).
    pub fn inspect<T>(&self, f: impl FnOnce(&Lifecycle, std::time::Instant) -> T) -> T {
        let now = self.shared.clock.now();
        f(&self.snapshot.borrow().lifecycle, now)
    }

    /// The state.
    pub fn state(&self) -> State {
        self.read(Lifecycle::state)
    }

    /// The health.
    pub fn health(&self) -> Health {
        self.read(Lifecycle::health)
    }

    /// Failed connection attempts in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.read(Lifecycle::consecutive_failures)
    }

    /// When the last start began.
    pub fn last_attempt(&self) -> Option<SystemTime> {
        self.status().last_attempt.map(from_unix_ms)
    }

    /// When the next automatic retry runs.
    pub fn next_retry_after(&self) -> Option<SystemTime> {
        self.status().next_retry_after.map(from_unix_ms)
    }

    /// `running` or `connected`.
    pub fn is_running(&self) -> bool {
        self.read(Lifecycle::is_running)
    }

    /// Running and healthy.
    pub fn is_healthy(&self) -> bool {
        self.read(Lifecycle::is_healthy)
    }

    /// State `unreachable`.
    pub fn is_unreachable(&self) -> bool {
        self.read(Lifecycle::is_unreachable)
    }

    /// A live session exists.
    pub fn is_client_ready(&self) -> bool {
        self.snapshot.borrow().session.is_some()
    }

    /// The rmcp client peer of the live session, for listing and calling tools.
    pub fn client(&self) -> Option<Peer<RoleClient>> {
        self.snapshot.borrow().session.as_ref().and_then(|s| s.peer())
    }

    /// The live session, read at once with its identity: for a host that keeps
    /// something per session (the tools it listed) and must notice a new one.
    pub fn live(&self) -> Option<Live> {
        let snapshot = self.snapshot.borrow();
        let generation = snapshot.lifecycle.session()?;
        let session = snapshot.session.clone()?;
        Some(Live { id: SessionId { instance: self.instance, generation }, session })
    }

    /// How often a running server is probed.
    pub fn health_check_interval(&self) -> Duration {
        self.shared.settings.health_check_interval.get()
    }

    /// The service kind, as the reference names it.
    pub fn service_type(&self) -> &'static str {
        "MCPServer"
    }

    /// Subscribes to the event stream this service publishes to (its supervisor's).
    pub fn subscribe(&self) -> Subscription {
        self.shared.bus.subscribe()
    }

    /// Waits until `pred` holds for the status (or the service is gone).
    pub async fn wait_for(&self, mut pred: impl FnMut(&ServerStatus) -> bool) -> ServerStatus {
        let mut rx = self.snapshot.clone();
        loop {
            rx.borrow_and_update();
            let status = self.status();
            if pred(&status) || rx.changed().await.is_err() {
                return self.status();
            }
        }
    }

    /// Reports what a listing of session `session`'s tools found, made by the
    /// host (see [`crate::Supervisor::delegate_tool_listing`]; also after the
    /// server said its tools changed: the last report counts). A report for a
    /// session of another service, or one that has ended, changes nothing.
    pub fn tools_listed(&self, session: SessionId, listing: ToolListing) {
        if session.instance == self.instance {
            self.send(Command::ToolsListed(session.generation, listing));
        }
    }

    fn send(&self, command: Command) {
        // A closed channel means the task ended; every reply channel then reads as gone.
        let _ = self.commands.send(command);
    }
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct SessionSlot {
    session: Arc<dyn Session>,
    watcher: Option<AbortHandle>,
}

struct Actor {
    lifecycle: Lifecycle,
    shared: Arc<Shared>,
    hook: Arc<RwLock<Option<AuthHook>>>,
    reports: mpsc::UnboundedSender<Report>,
    attempts: HashMap<Generation, AbortHandle>,
    sessions: HashMap<Generation, SessionSlot>,
    latest: Option<Arc<dyn Session>>,
    start_waiters: Vec<oneshot::Sender<Result<(), StartError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    health_waiters: Vec<oneshot::Sender<HealthReport>>,
    update_waiters: Vec<oneshot::Sender<SpecChange>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Actor {
    fn new(
        lifecycle: Lifecycle,
        shared: Arc<Shared>,
        hook: Arc<RwLock<Option<AuthHook>>>,
    ) -> (Actor, mpsc::UnboundedReceiver<Report>, watch::Receiver<Arc<Snapshot>>) {
        let (reports, report_rx) = mpsc::unbounded_channel();
        let first = Snapshot { lifecycle: lifecycle.clone(), session: None, latest: None };
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(first));
        let actor = Actor {
            lifecycle,
            shared,
            hook,
            reports,
            attempts: HashMap::new(),
            sessions: HashMap::new(),
            latest: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            health_waiters: Vec::new(),
            update_waiters: Vec::new(),
            snapshot,
        };
        (actor, report_rx, snapshot_rx)
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut handles_gone = false;
        loop {
            let deadline = self.lifecycle.poll_timeout();
            let sleep = deadline.map(|d| self.shared.clock.sleep_until(d));
            tokio::select! {
                biased;
                report = reports.recv() => {
                    // The actor holds a sender itself, so this channel never closes.
                    if let Some(report) = report {
                        self.on_report(report);
                    }
                }
                command = commands.recv(), if !handles_gone => match command {
                    Some(command) => self.on_command(command),
                    None => {
                        // Every handle is gone: stop the server, then end.
                        handles_gone = true;
                        self.feed(Event::StopRequested);
                    }
                },
                () = async { sleep.expect("guarded by deadline.is_some()").await }, if deadline.is_some() => {
                    self.feed(Event::Timeout);
                }
            }
            if handles_gone && self.is_quiet() {
                debug!("stopped; task ends");
                return;
            }
        }
    }

    /// Down, with nothing in flight.
    fn is_quiet(&self) -> bool {
        self.lifecycle.attempt().is_none()
            && self.lifecycle.session().is_none()
            && self.lifecycle.closing().is_none()
            && self.sessions.is_empty()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start(reply) => {
                self.start_waiters.extend(reply);
                self.feed(Event::StartRequested);
            }
            Command::Stop(reply) => {
                self.stop_waiters.push(reply);
                self.feed(Event::StopRequested);
            }
            Command::Restart(reply) => {
                self.start_waiters.push(reply);
                self.feed(Event::RestartRequested);
            }
            Command::CheckHealth(reply) => {
                self.health_waiters.push(reply);
                self.feed(Event::HealthCheckRequested);
            }
            Command::Update(spec, reply) => {
                self.update_waiters.push(reply);
                self.feed(Event::SpecChanged(spec));
            }
            Command::Kill => {
                // Attempts die with their tasks; sessions are killed, and their
                // closes (or exit watchers) then report as usual.
                for (_, task) in self.attempts.drain() {
                    task.abort();
                }
                for slot in self.sessions.values() {
                    slot.session.kill();
                }
            }
            Command::ToolsListed(generation, listing) => self.feed(Event::ToolsListed { generation, listing }),
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Connected(generation, session) => {
                self.attempts.remove(&generation);
                self.sessions.insert(generation, SessionSlot { session: session.clone(), watcher: None });
                self.feed(Event::ConnectSucceeded { generation });
                if self.lifecycle.session() == Some(generation) {
                    let reports = self.reports.clone();
                    let closed = session.closed();
                    let watcher = tokio::spawn(async move {
                        let failure = closed.await;
                        let _ = reports.send(Report::SessionLost(generation, failure));
                    });
                    if let Some(slot) = self.sessions.get_mut(&generation) {
                        slot.watcher = Some(watcher.abort_handle());
                    }
                }
            }
            Report::ConnectFailed(generation, failure) => {
                self.attempts.remove(&generation);
                self.feed(Event::ConnectFailed { generation, failure });
            }
            Report::SessionLost(generation, failure) => self.feed(Event::SessionLost { generation, failure }),
            Report::SessionClosed(generation) => {
                self.sessions.remove(&generation);
                self.feed(Event::SessionClosed { generation });
            }
            Report::Pinged(generation, latency, result) => {
                if let Some(observer) = self.shared.observer.get() {
                    observer.pinged(&self.lifecycle.spec().name, latency, result.is_ok());
                }
                match result {
                    Ok(()) => self.feed(Event::PingSucceeded { generation, latency }),
                    Err(failure) => self.feed(Event::PingFailed { generation, failure }),
                }
            }
            Report::ToolsListed(generation, listing) => self.feed(Event::ToolsListed { generation, listing }),
        }
    }

    fn feed(&mut self, event: Event) {
        let now = self.shared.clock.now();
        let transition = self.lifecycle.handle(now, event);
        if transition.from != transition.to {
            debug!(from = %transition.from, to = %transition.to, "transition");
        }
        // Status readers must never lag behind what they are told: the snapshot is
        // published after the auth hook (which the core puts first) and before the
        // first event or reply.
        let mut published = false;
        for effect in transition.effects {
            if !published && matches!(effect, Effect::Publish(_) | Effect::Reply(_)) {
                self.publish_snapshot();
                published = true;
            }
            self.execute(effect);
        }
        self.publish_snapshot();
    }

    fn publish_snapshot(&mut self) {
        let session = self.lifecycle.session().and_then(|g| self.sessions.get(&g)).map(|slot| slot.session.clone());
        if let Some(session) = &session {
            self.latest = Some(session.clone());
        }
        let snapshot = Snapshot { lifecycle: self.lifecycle.clone(), session, latest: self.latest.clone() };
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::Connect { generation, timeout } => self.connect(generation, timeout),
            Effect::CancelConnect { generation } => {
                if let Some(task) = self.attempts.remove(&generation) {
                    task.abort();
                }
            }
            Effect::CloseSession { generation } => self.close(generation),
            Effect::Ping { generation, timeout } => self.ping(generation, timeout),
            Effect::ListTools { generation, timeout } => self.list_tools(generation, timeout),
            Effect::CallAuthHook(challenge) => self.call_hook(&challenge),
            Effect::Publish(event) => {
                match (&event.reason, &event.error) {
                    (Some(reason), Some(error)) => info!(%reason, state = %event.state, %error, "event"),
                    (Some(reason), None) => info!(%reason, state = %event.state, "event"),
                    (None, _) => debug!(state = %event.state, health = %event.health, "state changed"),
                }
                self.shared.bus.publish(&self.lifecycle.spec().name, event, self.shared.clock.wall());
            }
            Effect::Reply(Reply::Started(result)) => {
                for waiter in self.start_waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
            Effect::Reply(Reply::Stopped) => {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
            Effect::Reply(Reply::HealthChecked { health, error }) => {
                for waiter in self.health_waiters.drain(..) {
                    let _ = waiter.send(HealthReport { health, error: error.clone() });
                }
            }
            Effect::Reply(Reply::Updated(outcome)) => {
                // Updates are fed one at a time, so the oldest waiter is this one's.
                if !self.update_waiters.is_empty() {
                    let _ = self.update_waiters.remove(0).send(outcome);
                }
            }
        }
    }

    /// SPEC §3.5: the host's hook, isolated: a panic in it is the host's bug, not
    /// a reason to stop supervising the server.
    fn call_hook(&self, challenge: &Challenge) {
        let hook = self.hook.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(hook) = hook {
            let spec = self.lifecycle.spec();
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(spec, challenge))).is_err() {
                warn!("the auth-required hook panicked; the server's lifecycle goes on");
            }
        }
    }

    fn connect(&mut self, generation: Generation, timeout: Duration) {
        let spec = self.lifecycle.spec().clone();
        let shared = self.shared.clone();
        let reports = self.reports.clone();
        let task = tokio::spawn(async move {
            // SPEC §5: at most MAX_CONCURRENT_CONNECTS at once, first come first served
            // (tokio's semaphore is fair). The timeout starts once the attempt may run.
            let Ok(_permit) = shared.permits.clone().acquire_owned().await else { return };
            let deadline = shared.clock.now() + timeout;
            let report = tokio::select! {
                result = shared.connector.connect(&spec, deadline) => match result {
                    Ok(session) => Report::Connected(generation, Arc::from(session)),
                    Err(failure) => Report::ConnectFailed(generation, failure),
                },
                () = shared.clock.sleep_until(deadline + BACKSTOP) => Report::ConnectFailed(
                    generation,
                    Failure::transient(format!(
                        "timed out after {}s connecting and initializing",
                        timeout.as_secs_f32()
                    )),
                ),
            };
            let _ = reports.send(report);
        });
        self.attempts.insert(generation, task.abort_handle());
    }

    fn close(&mut self, generation: Generation) {
        let reports = self.reports.clone();
        let Some(slot) = self.sessions.remove(&generation) else {
            let _ = reports.send(Report::SessionClosed(generation));
            return;
        };
        if let Some(watcher) = slot.watcher {
            watcher.abort();
        }
        // Kept in the map while it closes: a kill reaches it, and the actor does
        // not end before it is gone.
        self.sessions.insert(generation, SessionSlot { session: slot.session.clone(), watcher: None });
        let (session, clock) = (slot.session, self.shared.clock.clone());
        let backstop = clock.now() + CLOSE_BACKSTOP;
        tokio::spawn(async move {
            tokio::select! {
                result = session.close() => match result {
                    Ok(()) => debug!(%generation, "session closed"),
                    Err(e) => warn!(%generation, error = %e, "closing the session did not go cleanly"),
                },
                () = clock.sleep_until(backstop) => {
                    warn!(%generation, "closing the session took too long; killing it");
                    session.kill();
                }
            }
            drop(session);
            let _ = reports.send(Report::SessionClosed(generation));
        });
    }

    fn ping(&mut self, generation: Generation, timeout: Duration) {
        let reports = self.reports.clone();
        let Some(session) = self.sessions.get(&generation).map(|slot| slot.session.clone()) else {
            let _ = reports.send(Report::Pinged(generation, Duration::ZERO, Err(Failure::transient(NO_CLIENT))));
            return;
        };
        let clock = self.shared.clock.clone();
        let sent = clock.now();
        let backstop = sent + timeout + BACKSTOP;
        tokio::spawn(async move {
            let result = tokio::select! {
                result = session.ping(timeout) => result,
                () = clock.sleep_until(backstop) => {
                    Err(Failure::transient(format!("no answer to ping within {}", format_duration(timeout))))
                }
            };
            // The driver only measures; the core decides what a slow answer means.
            let took = clock.now().saturating_duration_since(sent);
            let _ = reports.send(Report::Pinged(generation, took, result));
        });
    }

    fn list_tools(&mut self, generation: Generation, timeout: Duration) {
        if self.shared.listing_delegated.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Some(session) = self.sessions.get(&generation).map(|slot| slot.session.clone()) else { return };
        let (reports, clock) = (self.reports.clone(), self.shared.clock.clone());
        let backstop = clock.now() + timeout + BACKSTOP;
        tokio::spawn(async move {
            let listing = tokio::select! {
                listing = session.list_tools(timeout) => listing,
                () = clock.sleep_until(backstop) => ToolListing::Failed(Failure::transient(format!(
                    "no answer to tools/list within {}",
                    format_duration(timeout)
                ))),
            };
            let _ = reports.send(Report::ToolsListed(generation, listing));
        });
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        for (_, task) in self.attempts.drain() {
            task.abort();
        }
        for (_, slot) in self.sessions.drain() {
            if let Some(watcher) = slot.watcher {
                watcher.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use roster_transport::{MockConnector, MockSession};

    use super::*;

    /// The race a test through the public API cannot force: an attempt succeeds,
    /// but its report reaches the service after a stop abandoned the attempt.
    #[tokio::test(start_paused = true)]
    async fn a_late_success_of_an_abandoned_attempt_is_closed_not_leaked() {
        let mut connector = MockConnector::new();
        connector.expect_connect().returning(|_, _| Err(Failure::transient("not reached")));
        let shared = Arc::new(Shared::new(Arc::new(connector), Settings::default(), 5, 16, Arc::new(TokioClock)));
        let spec = ServerSpec::stdio("fs", "server").validated().unwrap();
        let lifecycle = Lifecycle::new(spec, Settings::default(), 0);
        let (mut actor, mut reports, _snapshot) = Actor::new(lifecycle, shared, Arc::default());
        actor.on_command(Command::Start(None));
        let attempt = actor.lifecycle.attempt().expect("an attempt in flight");
        actor.on_command(Command::Stop(oneshot::channel().0));
        assert_eq!(actor.lifecycle.state(), State::Stopped);

        let closed = Arc::new(AtomicBool::new(false));
        let mut session = MockSession::new();
        let flag = closed.clone();
        session.expect_close().times(1).returning(move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        actor.on_report(Report::Connected(attempt, Arc::new(session)));
        assert_eq!(actor.lifecycle.state(), State::Stopped, "the late success does not bring the server up");
        assert!(!actor.is_quiet(), "the task may not end while the late session closes");
        match reports.recv().await {
            Some(Report::SessionClosed(g)) => assert_eq!(g, attempt),
            Some(_) | None => panic!("expected the late session to be closed"),
        }
        actor.on_report(Report::SessionClosed(attempt));
        assert!(closed.load(Ordering::SeqCst));
        assert!(actor.sessions.is_empty(), "nothing left open");
        assert!(actor.is_quiet(), "and now it may");
    }
}
