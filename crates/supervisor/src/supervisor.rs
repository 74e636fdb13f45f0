//! Many servers: a set of [`Service`]s by name, reconciled from a whole configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roster_core::{Challenge, ChangeKind, Field, ServerSpec, ServerStatus, Settings, State, ValidationError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::events::{EventBus, Subscription};
use crate::ports::{Clock, Connector, TokioClock};
use crate::service::{AuthHook, Service, Shared};

/// `MAX_CONCURRENT_CONNECTS`: connection attempts that may run at once across a supervisor.
pub const MAX_CONCURRENT_CONNECTS: usize = 5;

/// How a supervisor runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisorConfig {
    /// The lifecycle's numbers, for every server.
    pub settings: Settings,
    /// Connection attempts that may run at once (at least 1).
    pub max_concurrent_connects: usize,
    /// Events buffered per subscriber before it is told it missed some.
    pub event_capacity: usize,
    /// How long [`Supervisor::shutdown`] waits for servers to stop.
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
    /// Its connection changed while it is up, starting or failing: restarted.
    Restart,
    /// Its connection changed while it is down by request: swapped in, not started.
    Update,
    /// `auto_start` was switched on while it is down: swapped in and started.
    Start,
    /// Only metadata changed: updated in place.
    Metadata,
    /// Nothing changed.
    Unchanged,
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
    /// Servers that stopped in time.
    pub stopped: Vec<String>,
    /// Servers still stopping when the timeout passed.
    pub timed_out: Vec<String>,
}

/// Supervises many servers by name. Every method may be called concurrently.
pub struct Supervisor {
    shared: Arc<Shared>,
    config: SupervisorConfig,
    services: Mutex<BTreeMap<String, Service>>,
    hook: Option<AuthHook>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("servers", &self.names()).finish()
    }
}

impl Supervisor {
    /// A supervisor with no servers, connecting through `connector` (usually a
    /// [`crate::Transports`]).
    pub fn new(connector: Arc<dyn Connector>, config: SupervisorConfig) -> Supervisor {
        Supervisor::with_clock(connector, config, Arc::new(TokioClock))
    }

    /// Like [`Supervisor::new`] with another clock.
    pub fn with_clock(connector: Arc<dyn Connector>, config: SupervisorConfig, clock: Arc<dyn Clock>) -> Supervisor {
        let shared = Arc::new(Shared {
            connector,
            settings: config.settings,
            permits: Arc::new(Semaphore::new(config.max_concurrent_connects.max(1))),
            bus: EventBus::new(config.event_capacity),
            clock,
        });
        Supervisor { shared, config, services: Mutex::new(BTreeMap::new()), hook: None }
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

    /// Subscribes to every server's events, in one numbered stream.
    pub fn subscribe(&self) -> Subscription {
        self.shared.bus.subscribe()
    }

    /// The server named `name`.
    pub fn get(&self, name: &str) -> Option<Service> {
        self.lock().get(name).cloned()
    }

    /// The servers' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A status snapshot of every server, sorted by name. Never waits on a connect.
    pub fn status(&self) -> Vec<ServerStatus> {
        self.lock().values().map(Service::status).collect()
    }

    /// What [`Supervisor::apply`] would do with `specs` now, without doing it.
    ///
    /// # Errors
    /// Every validation error of every definition, and duplicate names.
    pub fn plan(&self, specs: &[ServerSpec]) -> Result<Plan, Vec<ValidationError>> {
        validate_all(specs)?;
        let services = self.lock();
        Ok(plan(&services, specs))
    }

    /// Reconciles the whole configuration: adds (and auto-starts) new servers,
    /// stops and drops removed ones, restarts changed ones, updates metadata in
    /// place. Validates everything first: on any error nothing is applied.
    ///
    /// Returns once every change is under way; starts are not waited for, stops of
    /// removed servers are.
    ///
    /// # Errors
    /// Every validation error of every definition, and duplicate names.
    pub async fn apply(&self, specs: Vec<ServerSpec>) -> Result<Plan, Vec<ValidationError>> {
        validate_all(&specs)?;
        let mut removed = Vec::new();
        let mut updates = Vec::new();
        let plan = {
            let mut services = self.lock();
            let plan = plan(&services, &specs);
            let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let gone: Vec<String> = services.keys().filter(|n| !wanted.contains(n.as_str())).cloned().collect();
            for name in gone {
                removed.extend(services.remove(&name));
            }
            for spec in specs {
                match services.get(&spec.name) {
                    Some(service) => updates.push((service.clone(), spec)),
                    None => {
                        let start = spec.auto_start;
                        let service = self.spawn(spec);
                        if start {
                            service.request_start();
                        }
                        services.insert(service.name().to_owned(), service);
                    }
                }
            }
            plan
        };
        for step in plan.changes() {
            info!(server = %step.server, action = ?step.action, fields = ?step.fields, "apply");
        }
        for (service, spec) in updates {
            if let Err(errors) = service.update_configuration(spec).await {
                // Validated above; only a concurrent rename could get here.
                warn!(server = service.name(), ?errors, "definition not applied");
            }
        }
        let mut stops = JoinSet::new();
        for service in removed {
            stops.spawn(async move { service.stop().await });
        }
        while stops.join_next().await.is_some() {}
        Ok(plan)
    }

    /// Stops every server in parallel and waits, at most the configured shutdown
    /// timeout; then drops them all (a server still stopping finishes on its own).
    pub async fn shutdown(&self) -> ShutdownReport {
        let services: Vec<Service> = std::mem::take(&mut *self.lock()).into_values().collect();
        let mut stops = JoinSet::new();
        for service in services {
            stops.spawn(async move {
                service.stop().await;
                service.name().to_owned()
            });
        }
        let mut report = ShutdownReport::default();
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        loop {
            match tokio::time::timeout_at(deadline, stops.join_next()).await {
                Ok(Some(Ok(name))) => report.stopped.push(name),
                Ok(Some(Err(e))) => warn!(error = %e, "a stop task failed"),
                Ok(None) => break,
                Err(_) => {
                    warn!(remaining = stops.len(), "shutdown timed out; servers still stopping are dropped");
                    break;
                }
            }
        }
        // Whatever did not stop in time: its task keeps running until it is down.
        stops.detach_all();
        report.stopped.sort();
        report
    }

    fn spawn(&self, spec: ServerSpec) -> Service {
        let mut h = DefaultHasher::new();
        spec.name.hash(&mut h);
        let service = Service::spawn(spec, self.shared.clone(), h.finish());
        match &self.hook {
            Some(hook) => {
                let hook = hook.clone();
                service.with_auth_required_hook(move |spec, challenge| hook(spec, challenge))
            }
            None => service,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Service>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn validate_all(specs: &[ServerSpec]) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for spec in specs {
        if let Err(mut e) = spec.validate() {
            errors.append(&mut e);
        }
        if !spec.name.is_empty() && !seen.insert(spec.name.as_str()) {
            errors.push(ValidationError::new(spec.name.clone(), Field::Name, "defined more than once"));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn plan(services: &BTreeMap<String, Service>, specs: &[ServerSpec]) -> Plan {
    let mut steps = Vec::new();
    let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in services.keys().filter(|n| !wanted.contains(n.as_str())) {
        steps.push(Step { server: name.clone(), action: Action::Remove, fields: Vec::new() });
    }
    for spec in specs {
        let Some(service) = services.get(&spec.name) else {
            steps.push(Step {
                server: spec.name.clone(),
                action: Action::Add { start: spec.auto_start },
                fields: Vec::new(),
            });
            continue;
        };
        let change = service.configuration_changed(spec);
        let (action, fields) = match change.kind {
            ChangeKind::None => (Action::Unchanged, Vec::new()),
            ChangeKind::MetadataOnly => (Action::Metadata, change.metadata_fields),
            ChangeKind::Restart => {
                let auto_start_on = !service.spec().auto_start && spec.auto_start;
                let action = match service.state() {
                    State::Starting
                    | State::Running
                    | State::Connected
                    | State::Failed
                    | State::Unreachable
                    | State::AuthRequired => Action::Restart,
                    State::Stopped | State::Disconnected | State::Unknown if auto_start_on => Action::Start,
                    State::Stopped | State::Disconnected | State::Unknown | State::Stopping => Action::Update,
                };
                (action, change.restart_fields)
            }
        };
        steps.push(Step { server: spec.name.clone(), action, fields });
    }
    steps.sort_by(|a, b| a.server.cmp(&b.server));
    Plan { steps }
}
