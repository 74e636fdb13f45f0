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

#[cfg(test)]
mod tests {
    use rmcp::model::{ClientConfig, Implementation, LoggingLevel, NumberOrString};
    use rmcp::service::RunningService;
    use rmcp::{RoleClient, ServerHandler, ServiceExt};

    use super::*;

    struct Quiet;
    impl ServerHandler for Quiet {}

    /// A downstream client named `name` declaring `capabilities`, connected to a
    /// server that does nothing: the server side's peer, as the hub holds it.
    struct Downstream {
        peer: Peer<RoleServer>,
        _client: RunningService<RoleClient, ClientConfig>,
        _server: RunningService<RoleServer, Quiet>,
    }

    async fn downstream(name: &str, capabilities: ClientCapabilities) -> Downstream {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { Quiet.serve(tokio::io::split(b)).await });
        let config = ClientConfig::new(capabilities, Implementation::new(name, "0"));
        let client = config.serve(tokio::io::split(a)).await.expect("initialize");
        let server = server.await.unwrap().expect("initialized");
        Downstream { peer: server.peer().clone(), _client: client, _server: server }
    }

    fn sampling() -> ClientCapabilities {
        let mut c = ClientCapabilities::default();
        c.sampling = Some(Default::default());
        c
    }

    fn name_of(peer: &Peer<RoleServer>) -> String {
        peer.peer_info().map(|i| i.client_info.name.clone()).unwrap_or_default()
    }

    fn token(n: i64) -> ProgressToken {
        ProgressToken(NumberOrString::Number(n))
    }

    fn id(n: i64) -> RequestId {
        NumberOrString::Number(n)
    }

    fn progress(t: i64, value: f64) -> Notice {
        Notice::Progress(ProgressNotificationParam::new(token(t), value))
    }

    fn received(rx: &mut mpsc::Receiver<ProgressNotificationParam>) -> Vec<(ProgressToken, f64)> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|p| (p.progress_token, p.progress)).collect()
    }

    #[tokio::test]
    async fn progress_goes_to_its_call_under_the_clients_token_and_only_forward() {
        let hub = Hub::new();
        let d = downstream("one", ClientCapabilities::default()).await;
        // Upstream tokens are counters per session: two servers use the same one.
        let (_a, mut a) = hub.register("a", id(1), token(1), d.peer.clone(), id(10), Some(token(100)));
        let (_b, mut b) = hub.register("b", id(1), token(1), d.peer.clone(), id(11), Some(token(200)));
        hub.notify("a", progress(1, 1.0));
        hub.notify("b", progress(1, 5.0));
        hub.notify("a", progress(1, 2.0));
        hub.notify("a", progress(1, 2.0));
        hub.notify("a", progress(1, 1.5));
        hub.notify("a", progress(1, 3.0));
        assert_eq!(received(&mut a), [(token(100), 1.0), (token(100), 2.0), (token(100), 3.0)]);
        assert_eq!(received(&mut b), [(token(200), 5.0)]);
    }

    #[tokio::test]
    async fn a_call_without_a_client_token_gets_no_progress() {
        let hub = Hub::new();
        let d = downstream("one", ClientCapabilities::default()).await;
        let (_call, mut rx) = hub.register("a", id(1), token(1), d.peer.clone(), id(10), None);
        hub.notify("a", progress(1, 1.0));
        assert_eq!(received(&mut rx), []);
        assert!(lock(&hub.early).is_empty(), "not held for later either");
    }

    #[tokio::test]
    async fn progress_before_the_call_is_registered_is_held_for_it_alone_and_bounded() {
        let hub = Hub::new();
        let d = downstream("one", ClientCapabilities::default()).await;
        hub.notify("b", progress(1, 0.5));
        hub.notify("a", progress(2, 0.5));
        for i in 0..EARLY_PROGRESS + 10 {
            hub.notify("a", progress(1, i as f64));
        }
        assert_eq!(lock(&hub.early).len(), EARLY_PROGRESS, "the oldest were dropped");
        let (_call, mut rx) = hub.register("a", id(1), token(1), d.peer.clone(), id(10), Some(token(7)));
        let got = received(&mut rx);
        // The newest EARLY_PROGRESS: b's, a's token 2 and the first ten fell out.
        assert_eq!(got.len(), EARLY_PROGRESS);
        assert_eq!(got.first(), Some(&(token(7), 10.0)));
        assert_eq!(got.last(), Some(&(token(7), (EARLY_PROGRESS + 9) as f64)));
        assert!(lock(&hub.early).is_empty());
    }

    #[tokio::test]
    async fn held_progress_of_other_calls_stays_held() {
        let hub = Hub::new();
        let d = downstream("one", ClientCapabilities::default()).await;
        hub.notify("b", progress(1, 1.0));
        hub.notify("a", progress(2, 1.0));
        hub.notify("a", progress(1, 1.0));
        let (_call, mut rx) = hub.register("a", id(1), token(1), d.peer.clone(), id(10), Some(token(7)));
        assert_eq!(received(&mut rx), [(token(7), 1.0)]);
        let left: Vec<(String, ProgressToken)> =
            lock(&hub.early).iter().map(|(s, p)| (s.clone(), p.progress_token.clone())).collect();
        assert_eq!(left, [("b".to_owned(), token(1)), ("a".to_owned(), token(2))]);
    }

    #[tokio::test]
    async fn a_call_ends_when_its_guard_drops_and_only_that_call() {
        let hub = Hub::new();
        let d = downstream("one", ClientCapabilities::default()).await;
        let (first, _rx1) = hub.register("a", id(1), token(1), d.peer.clone(), id(10), Some(token(7)));
        let (_second, mut rx2) = hub.register("a", id(2), token(2), d.peer.clone(), id(11), Some(token(8)));
        assert_eq!(lock(&hub.calls).len(), 2);
        drop(first);
        let left: Vec<RequestId> = lock(&hub.calls).iter().map(|c| c.upstream_id.clone()).collect();
        assert_eq!(left, [id(2)]);
        hub.notify("a", progress(2, 1.0));
        assert_eq!(received(&mut rx2), [(token(8), 1.0)]);
        // The ended call's progress now waits for a call that may yet come.
        hub.notify("a", progress(1, 1.0));
        assert_eq!(lock(&hub.early).len(), 1);
        assert_eq!(format!("{hub:?}"), "Hub { calls: 1, .. }");
    }

    #[tokio::test]
    async fn a_request_from_a_server_goes_to_the_client_of_its_call_if_that_client_can_answer() {
        let hub = Hub::new();
        let able = downstream("able", sampling()).await;
        let unable = downstream("unable", ClientCapabilities::default()).await;
        let _x = hub.register("a", id(1), token(1), able.peer.clone(), id(10), None);
        let _y = hub.register("a", id(2), token(2), unable.peer.clone(), id(20), None);
        let _z = hub.register("b", id(3), token(3), able.peer.clone(), id(30), None);
        let can = |c: &ClientCapabilities| c.sampling.is_some();
        let who = |found: Option<(Peer<RoleServer>, RequestId)>| found.map(|(p, r)| (name_of(&p), r));

        // Over Streamable HTTP the server says which request it serves.
        assert_eq!(who(hub.caller("a", Some(&id(1)), can)), Some(("able".to_owned(), id(10))));
        assert_eq!(who(hub.caller("a", Some(&id(2)), can)), None, "that call's client cannot sample");
        assert_eq!(who(hub.caller("a", Some(&id(3)), can)), None, "request 3 is b's, not a's");
        assert_eq!(who(hub.caller("b", Some(&id(3)), can)), Some(("able".to_owned(), id(30))));
        // Without: the latest call to that server whose client can.
        assert_eq!(who(hub.caller("a", None, can)), Some(("able".to_owned(), id(10))));
        let _w = hub.register("a", id(4), token(4), able.peer.clone(), id(40), None);
        assert_eq!(who(hub.caller("a", None, can)), Some(("able".to_owned(), id(40))));
        assert_eq!(who(hub.caller("c", None, can)), None);
        assert_eq!(who(hub.caller("a", None, |c: &ClientCapabilities| c.roots.is_some())), None);
    }

    #[tokio::test]
    async fn a_server_asking_with_no_call_that_can_answer_gets_an_error_or_no_roots() {
        let hub = Hub::new();
        let unable = downstream("unable", ClientCapabilities::default()).await;
        let _x = hub.register("a", id(1), token(1), unable.peer.clone(), id(10), None);
        let params = CreateMessageRequestParams::new(vec![], 16);
        let error = hub.create_message("a", None, params).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::METHOD_NOT_FOUND);
        assert_eq!(error.message, "no client connected through roster can answer sampling for a now");
        let ask = ElicitRequestParams::UrlElicitationParams {
            meta: None,
            message: "why".into(),
            url: "https://example.com".into(),
            elicitation_id: "e1".into(),
        };
        let error = hub.create_elicitation("a", None, ask).await;
        assert!(error.unwrap_err().message.contains("answer elicitation for a"));
        assert_eq!(hub.list_roots("a", None).await.unwrap(), ListRootsResult::default());
    }

    #[tokio::test]
    async fn every_server_is_offered_what_a_client_may_answer() {
        let c = Hub::new().capabilities();
        assert!(c.sampling.is_some() && c.elicitation.is_some() && c.roots.is_some(), "{c:?}");
    }

    #[tokio::test]
    async fn clients_that_left_are_forgotten() {
        let hub = Hub::new();
        let one = downstream("one", ClientCapabilities::default()).await;
        let two = downstream("two", ClientCapabilities::default()).await;
        hub.add_client(one.peer.clone());
        hub.add_client(two.peer.clone());
        assert_eq!(hub.clients().iter().map(name_of).collect::<Vec<_>>(), ["one", "two"]);
        drop(one);
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while hub.clients().len() > 1 {
            assert!(tokio::time::Instant::now() < until, "one never went");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(hub.clients().iter().map(name_of).collect::<Vec<_>>(), ["two"]);
        let three = downstream("three", ClientCapabilities::default()).await;
        hub.add_client(three.peer.clone());
        assert_eq!(lock(&hub.clients).len(), 2);
    }

    #[tokio::test]
    async fn log_lines_are_queued_under_the_servers_name_and_list_changes_mark_it() {
        let hub = Hub::new();
        let mut rx = lock(&hub.outgoing_rx).take().unwrap();
        hub.notify("a", Notice::Log(LoggingMessageNotificationParam::new(LoggingLevel::Info, "x".into())));
        let mut named = LoggingMessageNotificationParam::new(LoggingLevel::Info, "y".into());
        named.logger = Some("db".into());
        hub.notify("b", Notice::Log(named));
        let loggers: Vec<Option<String>> =
            std::iter::from_fn(|| rx.try_recv().ok()).map(|Outgoing::Log(l)| l.logger).collect();
        assert_eq!(loggers, [Some("a".to_owned()), Some("b/db".to_owned())]);

        hub.notify("a", Notice::ToolsChanged);
        hub.notify("b", Notice::PromptsChanged);
        hub.notify("c", Notice::ResourcesChanged);
        hub.notify("d", progress(1, 1.0));
        assert_eq!(hub.take_dirty().into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(hub.take_dirty().is_empty());
    }

    #[test]
    fn what_a_client_answered_wrongly_is_told_as_such() {
        assert_eq!(unexpected("roots/list").message, "the client answered roots/list with something else");
        let mcp = ErrorData::new(ErrorCode::INVALID_PARAMS, "bad", None);
        assert_eq!(relayed(rmcp::service::ServiceError::McpError(mcp.clone())), mcp);
        let gone = relayed(rmcp::service::ServiceError::TransportClosed);
        assert_eq!(gone.code, ErrorCode::INTERNAL_ERROR);
        assert!(gone.message.starts_with("the client did not answer: "), "{}", gone.message);
    }
}
