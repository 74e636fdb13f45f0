//! Many servers: a set of [`Service`]s by name, reconciled from a whole configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roster_core::lifecycle::format_duration;
use roster_core::{
    Challenge, ChangeAction, Field, ServerSpec, ServerStatus, Settings, SettingsError, SpecChange, ValidSpec,
    ValidationError,
};
use roster_transport::Connector;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::events::Subscription;
use crate::ports::{Clock, TokioClock};
use crate::service::{AuthHook, Observer, Service, Shared};

/// `MAX_CONCURRENT_CONNECTS`: connection attempts that may run at once across a supervisor.
pub const MAX_CONCURRENT_CONNECTS: usize = 5;
/// Accepted `max_concurrent_connects`: 1 to 1,000.
pub const CONCURRENT_CONNECTS_RANGE: RangeInclusive<usize> = 1..=1000;
/// Accepted `event_buffer` (events buffered per subscriber): 16 to 100,000.
pub const EVENT_BUFFER_RANGE: RangeInclusive<usize> = 16..=100_000;
/// Accepted `shutdown_timeout`: 1 s to 1 h.
pub const SHUTDOWN_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);
/// How long [`Supervisor::shutdown`] waits, after killing what outlived the
/// timeout, for the kills to be reported.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// How a supervisor runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisorConfig {
    /// The lifecycle's numbers, for every server.
    pub settings: Settings,
    /// Connection attempts that may run at once.
    pub max_concurrent_connects: usize,
    /// Events buffered per subscriber before it is told it missed some.
    pub event_capacity: usize,
    /// How long [`Supervisor::shutdown`] waits for servers to stop before it kills them.
    pub shutdown_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> SupervisorConfig {
        SupervisorConfig {
            settings: Settings::default(),
            max_concurrent_connects: MAX_CONCURRENT_CONNECTS,
            event_capacity: 1024,
            shutdown_timeout: Duration::from_secs(15),
        }
    }
}

impl SupervisorConfig {
    /// Checks every number against its documented range (the lifecycle's own, see
    /// [`Settings::check`], and this config's `*_RANGE` constants).
    ///
    /// # Errors
    /// One [`SettingsError`] per value out of range, named as configuration files name it.
    pub fn check(&self) -> Result<(), Vec<SettingsError>> {
        let mut errors = self.settings.check().err().unwrap_or_default();
        let mut count = |setting: &'static str, value: usize, range: RangeInclusive<usize>| {
            if !range.contains(&value) {
                let message = format!("must be between {} and {}, got {value}", range.start(), range.end());
                errors.push(SettingsError { setting, message });
            }
        };
        count("max_concurrent_connects", self.max_concurrent_connects, CONCURRENT_CONNECTS_RANGE);
        count("event_buffer", self.event_capacity, EVENT_BUFFER_RANGE);
        if !SHUTDOWN_TIMEOUT_RANGE.contains(&self.shutdown_timeout) {
            errors.push(SettingsError {
                setting: "shutdown_timeout",
                message: format!(
                    "must be between {} and {}, got {}",
                    format_duration(*SHUTDOWN_TIMEOUT_RANGE.start()),
                    format_duration(*SHUTDOWN_TIMEOUT_RANGE.end()),
                    format_duration(self.shutdown_timeout)
                ),
            });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// What [`Supervisor::apply`] does to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// New: registered, and started when it says `auto_start`.
    Add {
        /// Whether it is started.
        start: bool,
    },
    /// Gone from the configuration: stopped and dropped.
    Remove,
    /// Its connection changed while it is up, starting, failing or restarting: restarted.
    Restart,
    /// Its connection changed while it is down or being stopped: swapped in, not started.
    Update,
    /// `auto_start` was switched on while it is down: swapped in and started.
    Start,
    /// Only metadata changed: updated in place.
    Metadata,
    /// Nothing changed.
    Unchanged,
}

impl From<ChangeAction> for Action {
    fn from(action: ChangeAction) -> Action {
        match action {
            ChangeAction::Unchanged => Action::Unchanged,
            ChangeAction::Metadata => Action::Metadata,
            ChangeAction::Restart => Action::Restart,
            ChangeAction::Start => Action::Start,
            ChangeAction::Update => Action::Update,
        }
    }
}

/// One line of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The server.
    pub server: String,
    /// What happens to it.
    pub action: Action,
    /// The fields that differ (why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
}

impl Step {
    fn change(server: String, outcome: SpecChange) -> Step {
        let fields = match outcome.action {
            ChangeAction::Metadata => outcome.change.metadata_fields,
            ChangeAction::Unchanged => Vec::new(),
            ChangeAction::Restart | ChangeAction::Start | ChangeAction::Update => outcome.change.restart_fields,
        };
        Step { server, action: outcome.action.into(), fields }
    }
}

/// What applying a configuration does, server by server (sorted by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// One step per server in the old or the new configuration.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The steps that change something.
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.action != Action::Unchanged)
    }
}

/// What [`Supervisor::shutdown`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Servers that stopped in time, sorted.
    pub stopped: Vec<String>,
    /// Servers still stopping when the shutdown timeout passed, sorted: they were
    /// killed.
    pub timed_out: Vec<String>,
}

/// Supervises many servers by name. Every method may be called concurrently.
pub struct Supervisor {
    shared: Arc<Shared>,
    config: SupervisorConfig,
    services: Mutex<BTreeMap<String, Service>>,
    /// Servers being stopped by a removal or a shutdown: still reachable by
    /// [`Supervisor::kill_all`].
    leaving: Mutex<BTreeMap<String, Service>>,
    hook: Option<AuthHook>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("servers", &self.names()).finish()
    }
}

impl Supervisor {
    /// A supervisor with no servers, connecting through `connector` (usually a
    /// [`roster_transport::Transports`]). Values outside the documented ranges
    /// (see [`SupervisorConfig::check`]) are brought into them.
    pub fn new(connector: Arc<dyn Connector>, config: SupervisorConfig) -> Supervisor {
        Supervisor::with_clock(connector, config, Arc::new(TokioClock))
    }

    /// Like [`Supervisor::new`] with another clock: every timer of the supervisor
    /// and its services goes through it.
    pub fn with_clock(connector: Arc<dyn Connector>, config: SupervisorConfig, clock: Arc<dyn Clock>) -> Supervisor {
        let config = SupervisorConfig {
            max_concurrent_connects: config
                .max_concurrent_connects
                .clamp(*CONCURRENT_CONNECTS_RANGE.start(), *CONCURRENT_CONNECTS_RANGE.end()),
            event_capacity: config.event_capacity.clamp(*EVENT_BUFFER_RANGE.start(), *EVENT_BUFFER_RANGE.end()),
            shutdown_timeout: config
                .shutdown_timeout
                .clamp(*SHUTDOWN_TIMEOUT_RANGE.start(), *SHUTDOWN_TIMEOUT_RANGE.end()),
            settings: config.settings,
        };
        let shared = Arc::new(Shared::new(
            connector,
            config.settings,
            config.max_concurrent_connects,
            config.event_capacity,
            clock,
        ));
        Supervisor {
            shared,
            config,
            services: Mutex::new(BTreeMap::new()),
            leaving: Mutex::new(BTreeMap::new()),
            hook: None,
        }
    }

    /// Installs an auth-required hook on every server this supervisor runs.
    #[must_use]
    pub fn with_auth_required_hook(
        mut self,
        hook: impl Fn(&ServerSpec, &Challenge) + Send + Sync + 'static,
    ) -> Supervisor {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The configuration in force (values brought into their ranges).
    pub fn config(&self) -> &SupervisorConfig {
        &self.config
    }

    /// Subscribes to every server's events, in one numbered stream.
    pub fn subscribe(&self) -> Subscription {
        self.shared.bus.subscribe()
    }

    /// Events dropped so far for subscribers that fell behind, all together.
    pub fn events_dropped(&self) -> u64 {
        self.shared.bus.dropped()
    }

    /// Installs the one [`Observer`] of the driver's measurements (every ping).
    ///
    /// # Errors
    /// One is installed already; it stays.
    pub fn observe(&self, observer: Arc<dyn Observer>) -> Result<(), Arc<dyn Observer>> {
        self.shared.observer.set(observer)
    }

    /// Hands the listing of tools after every start to the host, which lists
    /// each session itself anyway (as `roster serve` does to aggregate) and
    /// reports what it found with [`Service::tools_listed`]: every session is
    /// then listed once, not twice. Until a report comes, a server shows no
    /// "tools missing" warning. Takes effect for sessions that start afterwards.
    pub fn delegate_tool_listing(&self) {
        self.shared.listing_delegated.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The server named `name`.
    pub fn get(&self, name: &str) -> Option<Service> {
        lock(&self.services).get(name).cloned()
    }

    /// The servers' names, sorted.
    pub fn names(&self) -> Vec<String> {
        lock(&self.services).keys().cloned().collect()
    }

    /// A status snapshot of every server, sorted by name. Never waits on a connect.
    pub fn status(&self) -> Vec<ServerStatus> {
        lock(&self.services).values().map(Service::status).collect()
    }

    /// [`Service::inspect`] for every server, in name order.
    pub fn inspect_all<T>(&self, mut f: impl FnMut(&roster_core::Lifecycle, std::time::Instant) -> T) -> Vec<T> {
        lock(&self.services).values().map(|s| s.inspect(&mut f)).collect()
    }

    /// What [`Supervisor::apply`] would do with `specs` now, without doing it: for
    /// each server the core's own decision ([`roster_core::Lifecycle::change_outcome`]).
    ///
    /// # Errors
    /// A name defined more than once.
    pub fn plan(&self, specs: &[ValidSpec]) -> Result<Plan, Vec<ValidationError>> {
        unique_names(specs)?;
        let services = lock(&self.services);
        let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut steps: Vec<Step> = services
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .map(|n| Step { server: n.clone(), action: Action::Remove, fields: Vec::new() })
            .collect();
        for spec in specs {
            steps.push(match services.get(&spec.name) {
                Some(service) => Step::change(spec.name.clone(), service.change_outcome(spec)),
                None => {
                    Step { server: spec.name.clone(), action: Action::Add { start: spec.auto_start }, fields: vec![] }
                }
            });
        }
        steps.sort_by(|a, b| a.server.cmp(&b.server));
        Ok(Plan { steps })
    }

    /// Reconciles the whole configuration: adds (and auto-starts) new servers,
    /// stops and drops removed ones, and hands each existing server its new
    /// definition, which the core applies as it decides (restart, update, start,
    /// metadata in place). The definitions are validated already ([`ValidSpec`]);
    /// their names must be unique, or nothing is applied. The plan returned is what
    /// the core decided, server by server.
    ///
    /// Returns once every change is under way; starts are not waited for, stops of
    /// removed servers are.
    ///
    /// # Errors
    /// A name defined more than once.
    pub async fn apply(&self, specs: Vec<ValidSpec>) -> Result<Plan, Vec<ValidationError>> {
        unique_names(&specs)?;
        let mut steps = Vec::new();
        let mut updates = Vec::new();
        let removed: Vec<Service> = {
            let mut services = lock(&self.services);
            let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let gone: Vec<String> = services.keys().filter(|n| !wanted.contains(n.as_str())).cloned().collect();
            let removed: Vec<Service> = gone.iter().filter_map(|name| services.remove(name)).collect();
            for spec in specs {
                match services.get(&spec.name) {
                    Some(service) => updates.push((service.clone(), spec)),
                    None => {
                        let start = spec.auto_start;
                        steps.push(Step { server: spec.name.clone(), action: Action::Add { start }, fields: vec![] });
                        let service = self.spawn(spec);
                        if start {
                            service.request_start();
                        }
                        services.insert(service.name().to_owned(), service);
                    }
                }
            }
            removed
        };
        for (service, spec) in updates {
            match service.update(spec).await {
                Ok(outcome) => steps.push(Step::change(service.name().to_owned(), outcome)),
                // Validated above, and names are the keys: a rename cannot get here.
                Err(errors) => warn!(server = service.name(), ?errors, "definition not applied"),
            }
        }
        for service in &removed {
            steps.push(Step { server: service.name().to_owned(), action: Action::Remove, fields: Vec::new() });
        }
        steps.sort_by(|a, b| a.server.cmp(&b.server));
        let plan = Plan { steps };
        for step in plan.changes() {
            info!(server = %step.server, action = ?step.action, fields = ?step.fields, "apply");
        }
        self.stop_all(removed).await;
        Ok(plan)
    }

    /// Stops `services` in parallel and waits, while [`Supervisor::kill_all`] can
    /// still reach them.
    async fn stop_all(&self, services: Vec<Service>) {
        let mut stops = JoinSet::new();
        for service in services {
            lock(&self.leaving).insert(service.name().to_owned(), service.clone());
            stops.spawn(async move {
                service.stop().await;
                service.name().to_owned()
            });
        }
        while let Some(done) = stops.join_next().await {
            if let Ok(name) = done {
                lock(&self.leaving).remove(&name);
            }
        }
    }

    /// Stops every server in parallel and waits at most the configured shutdown
    /// timeout; what is still stopping then is killed (and named in the report).
    pub async fn shutdown(&self) -> ShutdownReport {
        let services: Vec<Service> = std::mem::take(&mut *lock(&self.services)).into_values().collect();
        let mut names: BTreeSet<String> = services.iter().map(|s| s.name().to_owned()).collect();
        let clock = self.shared.clock.clone();
        let deadline = clock.now() + self.config.shutdown_timeout;
        let mut report = ShutdownReport::default();
        let stopped = tokio::select! {
            () = self.stop_all(services) => true,
            () = clock.sleep_until(deadline) => false,
        };
        let left: Vec<Service> = std::mem::take(&mut *lock(&self.leaving)).into_values().collect();
        if !stopped {
            for service in &left {
                warn!(server = service.name(), "still stopping when the shutdown timeout passed; killing it");
                service.kill();
                names.remove(service.name());
                report.timed_out.push(service.name().to_owned());
            }
            // The kills are reported at once; wait for them, boundedly.
            let mut waits = JoinSet::new();
            for service in left {
                waits.spawn(async move { service.stop().await });
            }
            let grace = clock.now() + KILL_GRACE;
            tokio::select! {
                () = async { while waits.join_next().await.is_some() {} } => {}
                () = clock.sleep_until(grace) => warn!("killed servers did not report in time"),
            }
        }
        report.stopped = names.into_iter().collect();
        report.timed_out.sort();
        report
    }

    /// Kills every server now, including those being stopped: for stdio servers,
    /// every process at once (a second Ctrl-C).
    pub fn kill_all(&self) {
        for service in lock(&self.services).values().chain(lock(&self.leaving).values()) {
            service.kill();
        }
    }

    fn spawn(&self, spec: ValidSpec) -> Service {
        let mut h = DefaultHasher::new();
        spec.name.hash(&mut h);
        let service = Service::spawn(spec, self.shared.clone(), h.finish());
        if let Some(hook) = &self.hook {
            service.set_hook(hook.clone());
        }
        service
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Each name at most once.
fn unique_names(specs: &[ValidSpec]) -> Result<(), Vec<ValidationError>> {
    let mut seen = BTreeSet::new();
    let errors: Vec<ValidationError> = specs
        .iter()
        .filter(|spec| !seen.insert(spec.name.as_str()))
        .map(|spec| ValidationError::new(spec.name.clone(), Field::Name, "defined more than once"))
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(config: &SupervisorConfig) -> Vec<String> {
        config.check().err().unwrap_or_default().iter().map(|e| format!("{}: {}", e.setting, e.message)).collect()
    }

    #[test]
    fn the_defaults_are_in_range_and_each_bound_is_inclusive() {
        assert!(SupervisorConfig::default().check().is_ok());
        let edges = [
            SupervisorConfig {
                max_concurrent_connects: 1,
                event_capacity: 16,
                shutdown_timeout: Duration::from_secs(1),
                ..SupervisorConfig::default()
            },
            SupervisorConfig {
                max_concurrent_connects: 1000,
                event_capacity: 100_000,
                shutdown_timeout: Duration::from_secs(3600),
                ..SupervisorConfig::default()
            },
        ];
        for config in edges {
            assert_eq!(errors(&config), Vec::<String>::new(), "{config:?}");
        }
    }

    #[test]
    fn every_value_out_of_range_is_named_as_the_file_names_it() {
        let config = SupervisorConfig {
            max_concurrent_connects: 0,
            event_capacity: 100_001,
            shutdown_timeout: Duration::from_millis(999),
            ..SupervisorConfig::default()
        };
        assert_eq!(
            errors(&config),
            [
                "max_concurrent_connects: must be between 1 and 1000, got 0",
                "event_buffer: must be between 16 and 100000, got 100001",
                "shutdown_timeout: must be between 1s and 1h, got 999ms",
            ]
        );
        let settings = Settings { restart_grace: Duration::from_secs(100_000), ..Settings::default() };
        let config = SupervisorConfig { settings, max_concurrent_connects: 1001, ..SupervisorConfig::default() };
        let text = errors(&config);
        assert_eq!(text.len(), 2, "the lifecycle's own errors come first, then this config's: {text:?}");
        assert!(text[0].starts_with("restart_grace: "), "{text:?}");
        assert_eq!(text[1], "max_concurrent_connects: must be between 1 and 1000, got 1001");
    }

    #[tokio::test]
    async fn a_supervisor_brings_its_numbers_into_their_ranges() {
        let config = SupervisorConfig {
            max_concurrent_connects: 0,
            event_capacity: 1,
            shutdown_timeout: Duration::ZERO,
            ..SupervisorConfig::default()
        };
        let sup = Supervisor::new(Arc::new(crate::Unsupported), config);
        let used = sup.config();
        assert_eq!((used.max_concurrent_connects, used.event_capacity), (1, 16));
        assert_eq!(used.shutdown_timeout, Duration::from_secs(1));
        assert!(used.check().is_ok());
        let config = SupervisorConfig {
            max_concurrent_connects: 5000,
            event_capacity: usize::MAX,
            shutdown_timeout: Duration::MAX,
            ..SupervisorConfig::default()
        };
        let sup = Supervisor::new(Arc::new(crate::Unsupported), config);
        let used = sup.config();
        assert_eq!((used.max_concurrent_connects, used.event_capacity), (1000, 100_000));
        assert_eq!(used.shutdown_timeout, Duration::from_secs(3600));
    }
}
