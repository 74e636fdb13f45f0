//! The gateway: rmcp's [`ServerHandler`] over a [`Supervisor`], and the task
//! that keeps its catalog in step with the servers that are up.

// Logging is deprecated by SEP-2577 (protocol 2026-07-28); roster serves
// 2025-11-25 and older, where it is current.
#![allow(deprecated)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, ContentBlock, ErrorCode,
    ErrorData, GetPromptRequest, GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
    InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ServerCapabilities, ServerConfig, ServerResult,
    SetLevelRequestParams, Tool,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, ServiceError};
use rmcp::{RoleClient, RoleServer, ServerHandler};
use roster_core::lifecycle::format_duration;
use roster_core::{Failure, ServerStatus, State, ToolListing};
use roster_supervisor::{Received, Session, SessionId, Supervisor};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cache::ListingCache;
use crate::catalog::{Catalog, Changes, Kind, Listing, Route, Source};
use crate::hub::{self, Hub};

/// The URI of roster's own resource: the status of every server.
pub const STATUS_URI: &str = "roster://status";

/// The name of roster's own tool: the status of every server, for an agent that
/// wants to tell its user why a tool is missing. No exposed name can take it
/// (every exposed name has `__` in it).
pub const STATUS_TOOL: &str = "roster_status";

/// What the gateway knows of one server beyond its definition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// How long a call to it may take; the gateway's default when `None`.
    pub tool_timeout: Option<Duration>,
    /// Listed from the cache of its last run while it is not running, and started
    /// by the first call.
    pub on_demand: bool,
}

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// At most one `list_changed` per kind per this long: a crash-looping server
    /// must not flood clients.
    pub debounce: Duration,
    /// How long listing one server's tools, prompts and resources may take.
    pub list_timeout: Duration,
    /// How long a call may take when its server has no `tool_timeout` of its own.
    pub tool_timeout: Duration,
    /// How long after the gateway starts the first answers wait for the servers'
    /// first attempts to end (and their listings to arrive), so that a client that
    /// lists at once sees every server that comes up, not the first few. One answer
    /// waits at most half of it, so that neither `initialize` nor the first list
    /// comes near a client's own request timeout (MCP Inspector's is 10 s).
    pub settle: Duration,
    /// Where on-demand servers' listings are kept between runs; without one they
    /// contribute nothing until started.
    pub cache: Option<ListingCache>,
    /// Starts logins for the `roster_login` tool; without it the tool is not offered.
    pub logins: Option<Arc<dyn Logins>>,
    /// Hears how each forwarded tool call ended (metrics).
    pub calls: Option<Arc<dyn CallObserver>>,
}

/// How a forwarded tool call ended, for [`CallObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The server answered with a result.
    Ok,
    /// The server answered with a result that has `isError`.
    ToolError,
    /// The server was not up: answered at once, not forwarded.
    Unavailable,
    /// The call failed: timed out, cancelled, the session ended, or the server
    /// answered with a JSON-RPC error.
    Failed,
}

impl CallOutcome {
    /// The label value: `ok`, `tool_error`, `unavailable`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ToolError => "tool_error",
            CallOutcome::Unavailable => "unavailable",
            CallOutcome::Failed => "failed",
        }
    }
}

/// Told of every tool call roster routes to a server.
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    /// `server`'s call ended as `outcome` after `took`.
    fn observed(&self, server: &str, outcome: CallOutcome, took: Duration);
}

/// The name of the tool that starts a login to a server in `auth_required`.
pub const LOGIN_TOOL: &str = "roster_login";

/// What `roster_login` asks the host for: start logging in to `server` and say
/// what the person is to do (the URL to open), without waiting for the login to
/// end. When it ends, the host starts the server.
pub trait Logins: Send + Sync + std::fmt::Debug {
    /// Starts the login; `Ok` holds the text for the person (the URL to open),
    /// `Err` why it could not start.
    fn start(&self, server: &str) -> roster_transport::BoxFuture<Result<String, String>>;
}

/// The default `tool_timeout`.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for GatewayOptions {
    fn default() -> GatewayOptions {
        GatewayOptions {
            debounce: Duration::from_millis(500),
            list_timeout: Duration::from_secs(30),
            tool_timeout: DEFAULT_TOOL_TIMEOUT,
            settle: Duration::from_secs(10),
            cache: None,
            logins: None,
            calls: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

/// What the gateway holds of one server that is up.
#[derive(Debug, Clone)]
struct Held {
    /// The session it was listed from; `None`: from the cache.
    session: Option<SessionId>,
    listing: Listing,
}

struct Inner {
    supervisor: Arc<Supervisor>,
    hub: Arc<Hub>,
    options: GatewayOptions,
    /// Per-server settings, from the configuration.
    settings: RwLock<BTreeMap<String, ServerSettings>>,
    held: Mutex<BTreeMap<String, Held>>,
    catalog: RwLock<Arc<Catalog>>,
    /// Every tool name ever served, with its server: a call to a tool whose server
    /// went down is answered with that server's state, not "unknown tool".
    known: Mutex<HashMap<String, String>>,
    /// The level the clients asked for, applied to servers as they come up.
    level: Mutex<Option<SetLevelRequestParams>>,
    /// Every item that lost a collision and was reported, with the name it
    /// wanted: each is reported once, not again each time a server comes and goes.
    reported: Mutex<HashSet<(Kind, String, Route)>>,
    /// Set once the first attempts have ended and their listings arrived.
    ready: tokio::sync::watch::Sender<bool>,
}

/// One MCP server in front of every server of a [`Supervisor`]. Cheap to clone:
/// rmcp's HTTP service makes one per session, all sharing one state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("servers", &self.inner.supervisor.names()).finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `supervisor`, whose transports were built with `hub` as
    /// their relay. Nothing is listed until [`Gateway::run`] runs; from now on
    /// the supervisor leaves listing tools to the gateway
    /// ([`Supervisor::delegate_tool_listing`]), so each session is listed once.
    pub fn new(supervisor: Arc<Supervisor>, hub: Arc<Hub>, options: GatewayOptions) -> Gateway {
        // The gateway lists every session to aggregate it: the supervisor takes
        // the tool count from that listing instead of making its own.
        supervisor.delegate_tool_listing();
        Gateway {
            inner: Arc::new(Inner {
                supervisor,
                hub,
                options,
                settings: RwLock::new(BTreeMap::new()),
                held: Mutex::new(BTreeMap::new()),
                catalog: RwLock::new(Arc::new(Catalog::default())),
                known: Mutex::new(HashMap::new()),
                level: Mutex::new(None),
                reported: Mutex::new(HashSet::new()),
                ready: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Sets the servers' own settings (the others get the defaults); called again
    /// on every reload.
    pub fn configure(&self, settings: BTreeMap<String, ServerSettings>) {
        *self.inner.settings.write().unwrap_or_else(PoisonError::into_inner) = settings;
        for name in self.inner.supervisor.names() {
            self.inner.hub.mark_dirty(&name);
        }
    }

    fn settings(&self, server: &str) -> ServerSettings {
        read(&self.inner.settings).get(server).copied().unwrap_or_default()
    }

    /// The catalog served now.
    pub fn catalog(&self) -> Arc<Catalog> {
        read(&self.inner.catalog).clone()
    }

    /// Keeps the catalog in step with the servers until the supervisor is gone:
    /// lists a server when a session of it comes up or says its lists changed,
    /// drops it when it goes down, and tells clients what changed. Run it once,
    /// beside the server.
    pub async fn run(&self) {
        let forward = {
            let rx = lock(&self.inner.hub.outgoing_rx).take();
            let hub = self.inner.hub.clone();
            async move {
                match rx {
                    Some(rx) => hub::forward(&hub, rx).await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = forward => {}
            () = self.sync() => {}
        }
    }

    async fn sync(&self) {
        let inner = &self.inner;
        let mut events = inner.supervisor.subscribe();
        let mut sync = SyncState::default();
        let mut pending = Changes::default();
        let mut last_sent: Option<Instant> = None;
        let mut forced: Vec<String> = inner.supervisor.names();
        let settle_at = Instant::now() + inner.options.settle;
        loop {
            // Look at every server something happened to.
            let mut look: Vec<String> = std::mem::take(&mut forced);
            let dirty = inner.hub.take_dirty();
            look.extend(dirty.iter().cloned());
            sync.stale.extend(dirty);
            let mut changed = false;
            for name in look {
                changed |= self.reconcile(&name, &mut sync);
            }
            if changed {
                pending = pending.union(self.rebuild());
            }
            if !*inner.ready.borrow() {
                // A server still `unknown` that is to start (auto-start, or an
                // on-demand one started to be listed) has not begun its first
                // attempt yet: the supervisor's actor has not taken the start.
                let starting = inner.supervisor.status().iter().any(|s| {
                    s.state == State::Starting
                        || (s.state == State::Unknown && (s.auto_start || sync.primed.contains(&s.name)))
                });
                if (sync.fetching.is_empty() && !starting) || Instant::now() >= settle_at {
                    debug!("the first lists are ready");
                    inner.ready.send_replace(true);
                }
            }
            let settling = !*inner.ready.borrow();
            let notify_at = pending.any().then(|| {
                let soon = Instant::now() + Duration::from_millis(20);
                last_sent.map_or(soon, |at| (at + inner.options.debounce).max(soon))
            });
            tokio::select! {
                received = events.recv() => match received {
                    Some(Received::Event(e)) => forced.push(e.server.clone()),
                    Some(Received::Missed(_)) => forced = inner.supervisor.names(),
                    None => return,
                },
                () = inner.hub.wake.notified() => {}
                Some(done) = sync.fetches.join_next() => {
                    if let Ok((name, session, result)) = done {
                        sync.fetching.remove(&name);
                        if self.store(&name, session, result) {
                            pending = pending.union(self.rebuild());
                        }
                        // Another session by now, or a list_changed during the fetch.
                        forced.push(name);
                    }
                }
                () = tokio::time::sleep_until(settle_at), if settling => {}
                () = sleep_until(notify_at) => {
                    self.announce(pending).await;
                    pending = Changes::default();
                    last_sent = Some(Instant::now());
                }
            }
        }
    }

    /// Brings what is held of `name` in line with its live session; true if
    /// something held was dropped.
    fn reconcile(&self, name: &str, sync: &mut SyncState) -> bool {
        let inner = &self.inner;
        let service = inner.supervisor.get(name);
        let live = service.as_ref().filter(|s| s.is_running()).and_then(|s| s.live());
        let Some(live) = live else {
            sync.fetching.remove(name);
            sync.stale.remove(name);
            let on_demand = service.as_ref().filter(|_| self.settings(name).on_demand);
            let cached = on_demand.and_then(|s| self.cached(&s.spec()));
            if let Some(service) = on_demand
                && cached.is_none()
                && service.state() == State::Unknown
                && sync.primed.insert(name.to_owned())
            {
                // Never listed under this definition: started once to learn its
                // tools (and kept running); the next run lists it from the cache.
                info!(server = name, "starting an on-demand server once to learn what it offers");
                service.request_start();
            }
            let mut held = lock(&inner.held);
            return match cached {
                Some(listing) => {
                    let same = held.get(name).is_some_and(|h| h.session.is_none() && h.listing == listing);
                    held.insert(name.to_owned(), Held { session: None, listing });
                    !same
                }
                None => held.remove(name).is_some(),
            };
        };
        let (fetches, fetching, stale) = (&mut sync.fetches, &mut sync.fetching, &mut sync.stale);
        if fetching.contains_key(name) {
            // One fetch at a time per server; its end looks again.
            return false;
        }
        let held = lock(&inner.held).get(name).and_then(|h| h.session);
        if held == Some(live.id) && !stale.contains(name) {
            return false;
        }
        let Some(service) = service else { return false };
        let Some(peer) = live.session.peer() else {
            // Nothing to list through: it offers nothing.
            service.tools_listed(live.id, ToolListing::NotOffered);
            return false;
        };
        stale.remove(name);
        fetching.insert(name.to_owned(), live.id);
        let timeout = inner.options.list_timeout;
        let level = lock(&inner.level).clone();
        let name = name.to_owned();
        fetches.spawn(async move {
            if let Some(level) = level {
                let _ = tokio::time::timeout(timeout, peer.set_level(level)).await;
            }
            let (tools, result) = list(&peer, &*live.session, timeout).await;
            // The supervisor does not list on its own (`delegate_tool_listing`).
            service.tools_listed(live.id, tools);
            (name, live.id, result)
        });
        false
    }

    /// Keeps a listing if its session is still the live one; false if not.
    fn store(&self, name: &str, session: SessionId, result: Result<Listing, String>) -> bool {
        let inner = &self.inner;
        let service = inner.supervisor.get(name);
        let live = service.as_ref().filter(|s| s.is_running()).and_then(|s| s.live());
        if live.map(|l| l.id) != Some(session) {
            return false;
        }
        let listing = match result {
            Ok(listing) => {
                if let (Some(cache), Some(service)) = (&inner.options.cache, &service)
                    && self.settings(name).on_demand
                    && let Err(e) = cache.store(&service.spec(), &listing)
                {
                    warn!(server = name, error = %e, dir = %cache.dir().display(), "cannot keep the listing for next time");
                }
                listing
            }
            Err(e) => {
                warn!(server = name, error = %e, "could not list what the server offers; it contributes nothing");
                Listing::default()
            }
        };
        debug!(server = name, tools = listing.tools.len(), "listed");
        lock(&inner.held).insert(name.to_owned(), Held { session: Some(session), listing });
        true
    }

    /// Builds the catalog from what is held; what changed.
    fn rebuild(&self) -> Changes {
        let inner = &self.inner;
        let prefixes: BTreeMap<String, String> = inner
            .supervisor
            .status()
            .into_iter()
            .map(|s| {
                let prefix = if s.tool_prefix.is_empty() { s.name.clone() } else { s.tool_prefix };
                (s.name, prefix)
            })
            .collect();
        let held = lock(&inner.held);
        let catalog =
            Catalog::build(held.iter().filter_map(|(name, h)| {
                Some(Source { server: name, prefix: prefixes.get(name)?, listing: &h.listing })
            }));
        drop(held);
        {
            let mut known = lock(&inner.known);
            for tool in catalog.tools() {
                if let Some(route) = catalog.tool(&tool.name) {
                    known.insert(tool.name.to_string(), route.server.clone());
                }
            }
        }
        // A collision is reported when an item loses one for the first time: not
        // again at every server that comes and goes (a crash loop would repeat it).
        {
            let mut reported = lock(&inner.reported);
            for collision in catalog.collisions() {
                let mut new = false;
                for (loser, _) in &collision.others {
                    new |= reported.insert((collision.kind, collision.wanted.clone(), loser.clone()));
                }
                if new {
                    warn!(%collision, "name collision");
                }
            }
        }
        let mut current = inner.catalog.write().unwrap_or_else(PoisonError::into_inner);
        let changes = current.changes(&catalog);
        *current = Arc::new(catalog);
        changes
    }

    /// Tells every client what changed.
    async fn announce(&self, changes: Changes) {
        let clients = self.inner.hub.clients();
        info!(
            tools = changes.tools,
            prompts = changes.prompts,
            resources = changes.resources,
            clients = clients.len(),
            "lists changed"
        );
        for client in clients {
            if changes.tools {
                let _ = client.notify_tool_list_changed().await;
            }
            if changes.prompts {
                let _ = client.notify_prompt_list_changed().await;
            }
            if changes.resources {
                let _ = client.notify_resource_list_changed().await;
            }
        }
    }

    /// Waits for the first lists: until the first attempts have ended, `settle`
    /// after the start at the latest, and never more than half of it.
    async fn settled(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = tokio::time::timeout(self.inner.options.settle / 2, ready.wait_for(|r| *r)).await;
    }

    fn cached(&self, spec: &roster_core::ServerSpec) -> Option<Listing> {
        self.inner.options.cache.as_ref()?.load(spec)
    }

    fn tool_timeout(&self, server: &str) -> Duration {
        self.settings(server).tool_timeout.unwrap_or(self.inner.options.tool_timeout)
    }

    /// The live session's peer; an on-demand server that is not running is
    /// started first (the wait is bounded by its connect timeout).
    async fn peer_or_start(&self, server: &str) -> Option<Peer<RoleClient>> {
        if let Some(peer) = self.peer_of(server) {
            return Some(peer);
        }
        if !self.settings(server).on_demand {
            return None;
        }
        let service = self.inner.supervisor.get(server)?;
        info!(server, "starting on demand");
        if let Err(e) = service.start().await {
            debug!(server, error = %e, "the on-demand start failed");
        }
        self.peer_of(server)
    }

    fn status(&self) -> Vec<ServerStatus> {
        self.inner.supervisor.status()
    }

    /// What the clients are told about the servers behind roster.
    fn instructions(&self) -> String {
        let catalog = self.catalog();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for tool in catalog.tools() {
            if let Some(route) = catalog.tool(&tool.name) {
                *counts.entry(route.server.as_str()).or_default() += 1;
            }
        }
        let mut text = String::from(
            "roster keeps these MCP servers running and serves their tools as <server prefix>__<tool>. \
             A server that is down contributes no tools; the roster_status tool and the roster://status \
             resource say why and when it is retried.\n",
        );
        for s in self.status() {
            let tools = counts.get(s.name.as_str()).copied().unwrap_or(0);
            text.push_str(&format!("- {}: {}", s.name, describe(&s)));
            if s.state == State::Running || s.state == State::Connected {
                text.push_str(&format!(", {tools} tools"));
            } else if self.settings(&s.name).on_demand && tools > 0 {
                text.push_str(&format!(", {tools} tools (it starts at the first call)"));
            }
            text.push('\n');
        }
        text
    }

    /// `status --json`'s data; a server that waits for a login also says how.
    fn server_names(&self) -> String {
        let names: Vec<String> = self.status().into_iter().map(|s| s.name).collect();
        names.join(", ")
    }

    fn status_json(&self) -> String {
        let servers: Vec<serde_json::Value> = self
            .status()
            .iter()
            .map(|s| {
                let mut value = serde_json::to_value(s).unwrap_or_default();
                if s.state == State::AuthRequired
                    && let Some(map) = value.as_object_mut()
                {
                    map.insert("login".into(), login_command(&s.name).into());
                }
                value
            })
            .collect();
        serde_json::to_string_pretty(&servers).unwrap_or_else(|_| "[]".to_owned())
    }

    /// A call that cannot be forwarded: the server is not up. Says which server,
    /// its state and when it is retried.
    fn unavailable(&self, server: &str) -> CallToolResult {
        let text = match self.inner.supervisor.get(server) {
            Some(service) => format!("roster: the server {server:?} is {}", describe(&service.status())),
            None => format!("roster: the server {server:?} is no longer configured"),
        };
        CallToolResult::error(vec![ContentBlock::text(text)])
    }

    fn peer_of(&self, server: &str) -> Option<Peer<RoleClient>> {
        self.inner.supervisor.get(server).filter(|s| s.is_running()).and_then(|s| s.client())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Everything `peer` offers, every page, for the kinds it declared, all within
/// `timeout`; and what the listing of its tools found, for the supervisor.
async fn list(
    peer: &Peer<RoleClient>,
    session: &dyn Session,
    timeout: Duration,
) -> (ToolListing, Result<Listing, String>) {
    let step = Step { deadline: Instant::now() + timeout, timeout, session };
    let capabilities = peer.peer_info().map(|info| info.capabilities.clone()).unwrap_or_default();
    let mut listing = Listing::default();
    let tools = if capabilities.tools.is_some() {
        match step.run("tools/list", peer.list_all_tools()).await {
            Ok(tools) => {
                listing.tools = tools;
                ToolListing::Listed { count: listing.tools.len() }
            }
            Err(failure) => return (ToolListing::Failed(failure.clone()), Err(failure.message)),
        }
    } else {
        ToolListing::NotOffered
    };
    let rest = async {
        if capabilities.prompts.is_some() {
            listing.prompts = step.run("prompts/list", peer.list_all_prompts()).await?;
        }
        if capabilities.resources.is_some() {
            listing.resources = step.run("resources/list", peer.list_all_resources()).await?;
            listing.templates = step.run("resources/templates/list", peer.list_all_resource_templates()).await?;
        }
        Ok::<_, Failure>(listing)
    };
    (tools, rest.await.map_err(|failure| failure.message))
}

/// One request of a listing: within what is left of its time, its failure
/// classified by the session's rules.
struct Step<'a> {
    deadline: Instant,
    timeout: Duration,
    session: &'a dyn Session,
}

impl Step<'_> {
    async fn run<T>(&self, what: &str, request: impl Future<Output = Result<T, ServiceError>>) -> Result<T, Failure> {
        match tokio::time::timeout_at(self.deadline, request).await {
            Ok(Ok(items)) => Ok(items),
            Ok(Err(e)) => Err(self.session.classify(&e)),
            Err(_) => Err(Failure::transient(format!("no answer to {what} within {}", format_duration(self.timeout)))),
        }
    }
}

/// What the sync loop keeps between its rounds.
#[derive(Default)]
struct SyncState {
    fetches: JoinSet<(String, SessionId, Result<Listing, String>)>,
    /// The session each listing in flight is of.
    fetching: BTreeMap<String, SessionId>,
    /// Servers that said their lists changed: listed again even in the same session.
    stale: BTreeSet<String>,
    /// On-demand servers started once to be listed.
    primed: BTreeSet<String>,
}

/// A server's state in words: "running", "failed (connection refused); retried
/// in 12s", "waiting for credentials (log in with `roster login NAME`)".
pub fn describe(s: &ServerStatus) -> String {
    let mut text = s.state.to_string();
    if let Some(error) = &s.last_error
        && !s.state.is_running()
    {
        text.push_str(&format!(" ({error})"));
    }
    if let Some(at) = s.next_retry_after {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let secs = at.saturating_sub(now).div_ceil(1000);
        text.push_str(&format!("; next attempt in {secs}s"));
    }
    if s.state == State::AuthRequired {
        text.push_str(&format!("; it waits for a login: run `{}`", login_command(&s.name)));
    }
    text
}

/// The command that logs in to `server`.
pub fn login_command(server: &str) -> String {
    format!("roster login {server}")
}

/// No tool, prompt or resource goes by `name`. What is asked for may belong to
/// a server that is not running (one that never came up is not in any table),
/// so the error says which servers those are and why.
fn unknown(gateway: &Gateway, what: &str, name: &str) -> ErrorData {
    let mut text = format!("roster serves no {what} named {name:?}");
    let down: Vec<String> = gateway
        .status()
        .iter()
        .filter(|s| !s.state.is_running())
        .map(|s| match s.state {
            State::Unknown => format!("{:?} has not been started", s.name),
            _ => format!("{:?} is {}", s.name, describe(s)),
        })
        .collect();
    if !down.is_empty() {
        text.push_str(&format!(". Not running, so not listed: {}", down.join("; ")));
    }
    ErrorData::new(ErrorCode::INVALID_PARAMS, text, None)
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_logging()
            .build();
        let mut info = ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("roster", env!("CARGO_PKG_VERSION")))
            .with_protocol_version(ProtocolVersion::V_2025_11_25);
        info.instructions = Some(self.instructions());
        info
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        // Up to the last version with `initialize` and server-sent list_changed.
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // The instructions name each server with its state and tools, and are
        // read once: written after the first attempts, as the first lists are.
        self.settled().await;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.hub.add_client(context.peer);
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.settled().await;
        let mut tools: Vec<Tool> = self.catalog().tools().to_vec();
        tools.push(status_tool());
        if self.inner.options.logins.is_some() {
            tools.push(login_tool());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == STATUS_TOOL {
            return Ok(CallToolResult::success(vec![ContentBlock::text(self.status_json())]).into());
        }
        if request.name == LOGIN_TOOL
            && let Some(logins) = self.inner.options.logins.clone()
        {
            let server = request.arguments.as_ref().and_then(|a| a.get("server")).and_then(|v| v.as_str());
            let Some(server) = server.filter(|s| self.inner.supervisor.get(s).is_some()) else {
                let text =
                    format!("roster: name a configured server: {{\"server\": \"NAME\"}} ({})", self.server_names());
                return Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into());
            };
            return Ok(match logins.start(server).await {
                Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
                Err(why) => CallToolResult::error(vec![ContentBlock::text(format!("roster: {why}"))]),
            }
            .into());
        }
        self.settled().await;
        let catalog = self.catalog();
        let Some(route) = catalog.tool(&request.name).cloned() else {
            let server = lock(&self.inner.known).get(request.name.as_ref()).cloned();
            return match server {
                Some(server) => {
                    self.observe(&server, CallOutcome::Unavailable, std::time::Instant::now());
                    Ok(self.unavailable(&server).into())
                }
                None => Err(unknown(self, "tool", &request.name)),
            };
        };
        let started = std::time::Instant::now();
        let (result, outcome) = self.forward(&route, request, context).await;
        self.observe(&route.server, outcome, started);
        result
    }
    async fn list_prompts(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.settled().await;
        Ok(ListPromptsResult::with_all_items(self.catalog().prompts().to_vec()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let catalog = self.catalog();
        let route = catalog.prompt(&request.name).cloned().ok_or_else(|| unknown(self, "prompt", &request.name))?;
        let peer = self.peer_or_start(&route.server).await.ok_or_else(|| down(self, &route.server))?;
        let mut params = request;
        params.name = route.name.clone();
        let request = ClientRequest::GetPromptRequest(GetPromptRequest::new(params));
        match send(&peer, request, self.tool_timeout(&route.server)).await? {
            ServerResult::GetPromptResult(result) => Ok(result.into()),
            _ => Err(ErrorData::internal_error(
                format!("{} answered prompts/get with something else", route.server),
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.settled().await;
        let mut resources: Vec<Resource> = self.catalog().resources().to_vec();
        resources.push(
            Resource::new(STATUS_URI, "roster status")
                .with_description("The state of every server roster runs, as `roster status --json` prints it")
                .with_mime_type("application/json"),
        );
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.settled().await;
        Ok(ListResourceTemplatesResult::with_all_items(self.catalog().templates().to_vec()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri == STATUS_URI {
            let contents = ResourceContents::TextResourceContents {
                uri: STATUS_URI.to_owned(),
                mime_type: Some("application/json".to_owned()),
                text: self.status_json(),
                meta: None,
            };
            return Ok(ReadResourceResult::new(vec![contents]).into());
        }
        let catalog = self.catalog();
        let route = catalog.resource(&request.uri).ok_or_else(|| unknown(self, "resource", &request.uri))?;
        let peer = self.peer_or_start(&route.server).await.ok_or_else(|| down(self, &route.server))?;
        let exposed = request.uri.clone();
        let mut params = request;
        params.uri = route.name.clone();
        let request = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params));
        match send(&peer, request, self.tool_timeout(&route.server)).await? {
            ServerResult::ReadResourceResult(mut result) => {
                // A URI exposed under a prefix is shown under it in the contents too.
                if exposed != route.name {
                    for c in &mut result.contents {
                        if let ResourceContents::TextResourceContents { uri, .. }
                        | ResourceContents::BlobResourceContents { uri, .. } = c
                            && *uri == route.name
                        {
                            uri.clone_from(&exposed);
                        }
                    }
                }
                Ok(result.into())
            }
            _ => Err(ErrorData::internal_error(
                format!("{} answered resources/read with something else", route.server),
                None,
            )),
        }
    }

    async fn set_level(&self, request: SetLevelRequestParams, _: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        *lock(&self.inner.level) = Some(request.clone());
        for name in self.inner.supervisor.names() {
            if let Some(peer) = self.peer_of(&name) {
                let level = request.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), peer.set_level(level)).await;
                });
            }
        }
        Ok(())
    }
}

impl Gateway {
    fn observe(&self, server: &str, outcome: CallOutcome, started: std::time::Instant) {
        if let Some(calls) = &self.inner.options.calls {
            calls.observed(server, outcome, started.elapsed());
        }
    }

    /// Forwards a call to the server that owns the tool: the answer for the
    /// client, and how the call ended. A call roster fails itself (timed out, the
    /// session ended) is a tool error to the client but `Failed` here.
    async fn forward(
        &self,
        route: &Route,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> (Result<CallToolResponse, ErrorData>, CallOutcome) {
        let Some(peer) = self.peer_or_start(&route.server).await else {
            return (Ok(self.unavailable(&route.server).into()), CallOutcome::Unavailable);
        };
        let timeout = self.tool_timeout(&route.server);
        let mut params = request;
        params.name = route.name.clone().into();
        // rmcp sets a progress token of its own upstream.
        let client_token = context.meta.get_progress_token();
        if let Some(meta) = params.meta.as_mut() {
            meta.remove("progressToken");
        }
        let sent = peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                PeerRequestOptions::with_timeout(timeout),
            )
            .await;
        let handle = match sent {
            Ok(handle) => handle,
            Err(e) => return (Ok(failed(&route.server, &e, timeout).into()), CallOutcome::Failed),
        };
        let upstream_id = handle.id.clone();
        let (_call, mut progress) = self.inner.hub.register(
            &route.server,
            handle.id.clone(),
            handle.progress_token.clone(),
            context.peer.clone(),
            context.id.clone(),
            client_token,
        );
        let cancel_peer = handle.peer.clone();
        let answer = handle.await_response();
        tokio::pin!(answer);
        let answer = loop {
            tokio::select! {
                answer = &mut answer => break answer,
                Some(p) = progress.recv() => {
                    let _ = context.peer.notify_progress(p).await;
                }
                () = context.ct.cancelled() => {
                    // The client gave up: so does the server.
                    let cancel = rmcp::model::CancelledNotificationParam::new(
                        Some(upstream_id),
                        Some("cancelled by the client".to_owned()),
                    );
                    let _ = cancel_peer.notify_cancelled(cancel).await;
                    return (Err(ErrorData::internal_error("cancelled", None)), CallOutcome::Failed);
                }
            }
        };
        // Progress the server sent just before its result is handled by tasks of
        // their own: let them run, then send what came, still before the result.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        while let Ok(p) = progress.try_recv() {
            let _ = context.peer.notify_progress(p).await;
        }
        match answer {
            Ok(ServerResult::CallToolResult(result)) => {
                let outcome = if result.is_error == Some(true) { CallOutcome::ToolError } else { CallOutcome::Ok };
                (Ok(result.into()), outcome)
            }
            Ok(_) => {
                let text =
                    format!("roster: {} answered tools/call with something other than a tool result", route.server);
                (Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into()), CallOutcome::Failed)
            }
            Err(ServiceError::McpError(e)) => (Err(e), CallOutcome::Failed),
            Err(e) => (Ok(failed(&route.server, &e, timeout).into()), CallOutcome::Failed),
        }
    }
}

fn login_tool() -> Tool {
    let schema: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"type": "object", "properties": {"server": {"type": "string", "description": "The server's name"}}, "required": ["server"]}"#,
    )
    .unwrap_or_default();
    Tool::new(
        LOGIN_TOOL,
        "Starts an OAuth login to a server that waits for one (state auth_required) and returns the URL the \
         user opens in a browser; roster connects the server when the login completes.",
        Arc::new(schema),
    )
}

fn status_tool() -> Tool {
    let schema: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"type": "object", "properties": {}}"#).unwrap_or_default();
    Tool::new(
        STATUS_TOOL,
        "The state of every MCP server roster runs: running or not, the last error, when it is retried. \
         Use it when a tool you expected is missing.",
        Arc::new(schema),
    )
}

/// A request roster sent that did not come back, as the caller sees it.
fn failed(server: &str, e: &ServiceError, timeout: Duration) -> CallToolResult {
    let text = match e {
        ServiceError::Timeout { .. } => {
            format!("roster: {server} did not answer within {}s (its tool_timeout)", timeout.as_secs())
        }
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
            format!("roster: the session with {server} ended during the call; roster restarts it")
        }
        other => format!("roster: the call to {server} failed: {other}"),
    };
    CallToolResult::error(vec![ContentBlock::text(text)])
}

fn down(gateway: &Gateway, server: &str) -> ErrorData {
    let text = gateway.unavailable(server).content.first().and_then(|c| c.as_text().map(|t| t.text.clone()));
    ErrorData::internal_error(text.unwrap_or_else(|| format!("{server} is down")), None)
}

async fn send(peer: &Peer<RoleClient>, request: ClientRequest, timeout: Duration) -> Result<ServerResult, ErrorData> {
    let handle = peer
        .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    handle.await_response().await.map_err(|e| match e {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(other.to_string(), None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> ServerStatus {
        let mut base = serde_json::json!({
            "name": "fs", "type": "stdio", "state": "running", "health": "healthy", "auto_start": true,
            "timeout_secs": 10, "client_ready": true, "consecutive_failures": 0, "restart_count": 0,
            "crash_count": 0,
        });
        for (k, v) in json.as_object().cloned().unwrap_or_default() {
            base[k] = v;
        }
        serde_json::from_value(base).expect("a status")
    }

    #[test]
    fn a_state_in_words_carries_the_error_only_while_not_running_and_the_retry_and_the_login() {
        assert_eq!(describe(&status(serde_json::json!({"last_error": "old news"}))), "running");
        let failed = status(serde_json::json!({"state": "failed", "last_error": "connection refused"}));
        assert_eq!(describe(&failed), "failed (connection refused)");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let retried = status(serde_json::json!({"state": "failed", "next_retry_after": now + 11_500}));
        assert_eq!(describe(&retried), "failed; next attempt in 12s");
        let passed = status(serde_json::json!({"state": "failed", "next_retry_after": now - 5_000}));
        assert_eq!(describe(&passed), "failed; next attempt in 0s");
        let locked = status(serde_json::json!({"name": "gh", "state": "auth_required"}));
        assert_eq!(describe(&locked), "auth_required; it waits for a login: run `roster login gh`");
    }

    #[test]
    fn every_call_outcome_has_its_label() {
        let labels = [CallOutcome::Ok, CallOutcome::ToolError, CallOutcome::Unavailable, CallOutcome::Failed]
            .map(CallOutcome::as_str);
        assert_eq!(labels, ["ok", "tool_error", "unavailable", "failed"]);
    }

    #[test]
    fn a_call_roster_ended_says_why_in_the_servers_name() {
        let text = |e: ServiceError| {
            let r = failed("fs", &e, Duration::from_secs(5));
            assert_eq!(r.is_error, Some(true));
            r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<String>()
        };
        assert_eq!(
            text(ServiceError::Timeout { timeout: Duration::from_secs(5) }),
            "roster: fs did not answer within 5s (its tool_timeout)"
        );
        assert_eq!(
            text(ServiceError::TransportClosed),
            "roster: the session with fs ended during the call; roster restarts it"
        );
        assert!(text(ServiceError::Cancelled { reason: None }).starts_with("roster: the call to fs failed: "));
    }

    #[tokio::test]
    async fn a_gateway_shows_its_servers_when_debugged() {
        let supervisor = Arc::new(Supervisor::new(
            Arc::new(roster_supervisor::Unsupported),
            roster_supervisor::SupervisorConfig::default(),
        ));
        supervisor.apply(vec![roster_core::ServerSpec::stdio("fs", "x").validated().unwrap()]).await.unwrap();
        let gateway = Gateway::new(supervisor.clone(), Hub::new(), GatewayOptions::default());
        assert_eq!(format!("{gateway:?}"), r#"Gateway { servers: ["fs"], .. }"#);
        supervisor.shutdown().await;
    }
}
