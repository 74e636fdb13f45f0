//! The hub: what upstream servers send back to roster, routed to the client
//! that should see it. It is the [`Relay`] the transports are built with, made
//! before the supervisor; the [`Gateway`](crate::Gateway) then uses it to know
//! its clients and the calls in flight.
//!
//! - Progress of an upstream request goes to the downstream request it serves.
//!   rmcp gives every upstream request a token of its own, known only once the
//!   request is sent, so progress that comes before the call is registered is
//!   held (a few per token) and delivered at registration. The call sends its
//!   progress itself, in order and before its result (over HTTP the result ends
//!   the stream progress rides on); an update that does not advance is dropped
//!   (MCP requires progress to increase).
//! - A request from an upstream server (sampling, elicitation, roots) goes to the
//!   client whose call it belongs to: over Streamable HTTP the transport says
//!   which call; over stdio and SSE it cannot, and the latest call in flight to
//!   that server whose client declared the capability gets it. No such call: an
//!   error to the server.
//! - Log messages go to every client, their logger named after the server.
//! - `list_changed` marks the server for a new listing.

// Sampling, roots and logging are deprecated by SEP-2577 (protocol 2026-07-28);
// roster serves 2025-11-25 and older, where they are current.
#![allow(deprecated)]

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rmcp::RoleServer;
use rmcp::model::{
    ClientCapabilities, ClientResult, CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequest, ElicitRequestParams, ElicitResult, ErrorCode, ErrorData, ListRootsRequest, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken, RequestId, RequestNoParam,
    RootsCapabilities, ServerRequest,
};
use rmcp::service::{OriginatingRequestId, Peer};
use roster_transport::mcp::{Notice, Relay};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, warn};

/// Progress updates held for a token no call has registered yet, at most.
const EARLY_PROGRESS: usize = 256;

/// Notifications waiting to go out to clients, at most; beyond, they are dropped.
const FORWARD_QUEUE: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call in flight, as the hub knows it.
#[derive(Debug)]
struct Call {
    key: u64,
    server: String,
    upstream_id: RequestId,
    upstream_token: ProgressToken,
    client: Peer<RoleServer>,
    client_request: RequestId,
    client_token: Option<ProgressToken>,
    last_progress: Option<f64>,
    /// To the call itself, which sends its progress before its result.
    progress: mpsc::Sender<ProgressNotificationParam>,
}

/// Progress updates waiting in one call, at most.
const CALL_PROGRESS: usize = 256;

/// Something to send to every client, in order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Log(LoggingMessageNotificationParam),
}

/// Routes what servers send back. Build one with [`Hub::new`], give it to every
/// transport (`with_relay`), then to [`Gateway::new`](crate::Gateway::new).
pub struct Hub {
    calls: Mutex<Vec<Call>>,
    next_key: Mutex<u64>,
    early: Mutex<VecDeque<(String, ProgressNotificationParam)>>,
    clients: Mutex<Vec<Peer<RoleServer>>>,
    dirty: Mutex<BTreeSet<String>>,
    pub(crate) wake: Notify,
    outgoing: mpsc::Sender<Outgoing>,
    pub(crate) outgoing_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("calls", &lock(&self.calls).len()).finish_non_exhaustive()
    }
}

/// A registered call; unregisters on drop.
pub(crate) struct CallGuard<'a> {
    hub: &'a Hub,
    key: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        lock(&self.hub.calls).retain(|c| c.key != self.key);
    }
}

impl Hub {
    /// A hub with no clients and no calls.
    pub fn new() -> Arc<Hub> {
        let (outgoing, rx) = mpsc::channel(FORWARD_QUEUE);
        Arc::new(Hub {
            calls: Mutex::new(Vec::new()),
            next_key: Mutex::new(0),
            early: Mutex::new(VecDeque::new()),
            clients: Mutex::new(Vec::new()),
            dirty: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            outgoing,
            outgoing_rx: Mutex::new(Some(rx)),
        })
    }

    /// A downstream client finished its handshake.
    pub(crate) fn add_client(&self, peer: Peer<RoleServer>) {
        let mut clients = lock(&self.clients);
        clients.retain(|p| !p.is_transport_closed());
        clients.push(peer);
    }

    /// The clients still connected.
    pub(crate) fn clients(&self) -> Vec<Peer<RoleServer>> {
        let mut clients = lock(&self.clients);
        clients.retain(|p| !p.is_transport_closed());
        clients.clone()
    }

    /// Servers marked for a new listing since the last call, cleared.
    pub(crate) fn take_dirty(&self) -> BTreeSet<String> {
        std::mem::take(&mut *lock(&self.dirty))
    }

    pub(crate) fn mark_dirty(&self, server: &str) {
        lock(&self.dirty).insert(server.to_owned());
        self.wake.notify_one();
    }

    /// Registers a call sent upstream. Its progress, with the client's token,
    /// comes out of the receiver (early progress at once), for the call to send
    /// before its result.
    pub(crate) fn register(
        &self,
        server: &str,
        upstream_id: RequestId,
        upstream_token: ProgressToken,
        client: Peer<RoleServer>,
        client_request: RequestId,
        client_token: Option<ProgressToken>,
    ) -> (CallGuard<'_>, mpsc::Receiver<ProgressNotificationParam>) {
        let (progress, rx) = mpsc::channel(CALL_PROGRESS);
        let key = {
            let mut next = lock(&self.next_key);
            *next += 1;
            *next
        };
        let held: Vec<ProgressNotificationParam> = {
            let mut early = lock(&self.early);
            let (mine, rest): (Vec<_>, Vec<_>) =
                early.drain(..).partition(|(s, p)| s == server && p.progress_token == upstream_token);
            early.extend(rest);
            mine.into_iter().map(|(_, p)| p).collect()
        };
        lock(&self.calls).push(Call {
            key,
            server: server.to_owned(),
            upstream_id,
            upstream_token,
            client,
            client_request,
            client_token,
            last_progress: None,
            progress,
        });
        for p in held {
            self.progress(server, p);
        }
        (CallGuard { hub: self, key }, rx)
    }

    fn progress(&self, server: &str, p: ProgressNotificationParam) {
        let mut calls = lock(&self.calls);
        let Some(call) = calls.iter_mut().find(|c| c.server == server && c.upstream_token == p.progress_token) else {
            drop(calls);
            let mut early = lock(&self.early);
            if early.len() >= EARLY_PROGRESS {
                early.pop_front();
            }
            early.push_back((server.to_owned(), p));
            return;
        };
        let Some(token) = call.client_token.clone() else { return };
        if call.last_progress.is_some_and(|last| p.progress <= last) {
            debug!(server, progress = p.progress, "progress that does not advance, dropped");
            return;
        }
        call.last_progress = Some(p.progress);
        let mut param = p;
        param.progress_token = token;
        if call.progress.try_send(param).is_err() {
            debug!(server, "progress dropped: the call has too many waiting");
        }
    }

    fn send(&self, out: Outgoing) {
        if self.outgoing.try_send(out).is_err() {
            debug!("a notification for clients was dropped: too many waiting");
        }
    }

    /// The client that should answer a request `server` sent, with the id of
    /// the client's own request it belongs to.
    fn caller(
        &self,
        server: &str,
        origin: Option<&RequestId>,
        can: impl Fn(&ClientCapabilities) -> bool,
    ) -> Option<(Peer<RoleServer>, RequestId)> {
        let calls = lock(&self.calls);
        let able = |c: &&Call| c.client.peer_info().is_some_and(|info| can(&info.capabilities));
        let call = match origin {
            Some(id) => calls.iter().find(|c| c.server == server && &c.upstream_id == id).filter(able),
            None => calls.iter().rev().filter(|c| c.server == server).find(able),
        }?;
        Some((call.client.clone(), call.client_request.clone()))
    }
}

fn no_caller(server: &str, what: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode::METHOD_NOT_FOUND,
        format!("no client connected through roster can answer {what} for {server} now"),
        None,
    )
}

fn unexpected(what: &str) -> ErrorData {
    ErrorData::internal_error(format!("the client answered {what} with something else"), None)
}

fn relayed(e: rmcp::service::ServiceError) -> ErrorData {
    match e {
        rmcp::service::ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("the client did not answer: {other}"), None),
    }
}

#[async_trait]
impl Relay for Hub {
    fn capabilities(&self) -> ClientCapabilities {
        // Declared to every server: whether a request can be answered depends on
        // the client of the call, and is checked per request.
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.elicitation = Some(Default::default());
        capabilities.roots = Some(RootsCapabilities::default());
        capabilities
    }

    fn notify(&self, server: &str, notice: Notice) {
        match notice {
            Notice::Progress(p) => self.progress(server, p),
            Notice::Log(mut log) => {
                log.logger = Some(match log.logger.take() {
                    Some(logger) => format!("{server}/{logger}"),
                    None => server.to_owned(),
                });
                self.send(Outgoing::Log(log));
            }
            Notice::ToolsChanged | Notice::PromptsChanged | Notice::ResourcesChanged => self.mark_dirty(server),
            Notice::Cancelled(_) | Notice::ResourceUpdated(_) => {}
        }
    }

    async fn create_message(
        &self,
        server: &str,
        origin: Option<RequestId>,
        params: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, ErrorData> {
        let (client, request) = self
            .caller(server, origin.as_ref(), |c| c.sampling.is_some())
            .ok_or_else(|| no_caller(server, "sampling"))?;
        let mut ask = CreateMessageRequest::new(params);
        ask.extensions.insert(OriginatingRequestId(request));
        match client.send_request(ServerRequest::CreateMessageRequest(ask)).await.map_err(relayed)? {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(unexpected("sampling/createMessage")),
        }
    }

    async fn create_elicitation(
        &self,
        server: &str,
        origin: Option<RequestId>,
        params: ElicitRequestParams,
    ) -> Result<ElicitResult, ErrorData> {
        let (client, request) = self
            .caller(server, origin.as_ref(), |c| c.elicitation.is_some())
            .ok_or_else(|| no_caller(server, "elicitation"))?;
        let mut ask = ElicitRequest::new(params);
        ask.extensions.insert(OriginatingRequestId(request));
        match client.send_request(ServerRequest::ElicitRequest(ask)).await.map_err(relayed)? {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(unexpected("elicitation/create")),
        }
    }

    async fn list_roots(&self, server: &str, origin: Option<RequestId>) -> Result<ListRootsResult, ErrorData> {
        let Some((client, request)) = self.caller(server, origin.as_ref(), |c| c.roots.is_some()) else {
            // No client with roots is calling: the server gets none, as from a client without them.
            return Ok(ListRootsResult::default());
        };
        let mut ask: ListRootsRequest = RequestNoParam { method: Default::default(), extensions: Default::default() };
        ask.extensions.insert(OriginatingRequestId(request));
        match client.send_request(ServerRequest::ListRootsRequest(ask)).await.map_err(relayed)? {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(unexpected("roots/list")),
        }
    }
}

/// Sends what the hub queued, in order, until the hub is gone.
pub(crate) async fn forward(hub: &Hub, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Log(log) => {
                for client in hub.clients() {
                    if let Err(e) = client.notify_logging_message(log.clone()).await {
                        debug!(error = %e, "log message not delivered");
                    }
                }
            }
        }
    }
    warn!("the hub's queue closed");
}
