//! Small pieces of MCP client plumbing every adapter shares: the client roster is
//! to every server ([`Client`]), with a [`Relay`] for what a server sends back.

// Sampling, roots and logging are deprecated by SEP-2577 (protocol 2026-07-28);
// roster speaks 2025-11-25 and older, where they are current, and relays them.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{
    CancelledNotificationParam, ClientCapabilities, ClientConfig, ClientRequest, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequestParams, ElicitResult, ErrorData, Implementation, ListRootsResult,
    LoggingMessageNotificationParam, PingRequest, ProgressNotificationParam, ProtocolVersion, RequestId,
    ResourceUpdatedNotificationParam, ServerResult,
};
use rmcp::service::{
    ClientInitializeError, InboundStreamOrigin, NotificationContext, Peer, PeerRequestOptions, RequestContext,
    RunningService, ServiceError,
};
use rmcp::{ClientHandler, RoleClient};
use roster_core::Failure;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::CloseError;

/// The protocol version roster offers over stdio and Streamable HTTP: the latest
/// one that still has `initialize` (rmcp's own default has none).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// What roster says about itself in `initialize`, offering `version`.
pub fn client_config(version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("roster", env!("CARGO_PKG_VERSION")))
        .with_protocol_version(version)
}

/// Where the requests and notifications a server sends to roster (its client)
/// go: `roster serve` passes them on to the MCP client it serves. Without a relay
/// roster answers as a plain client (no sampling, no elicitation, no roots) and
/// drops the notifications.
#[async_trait]
pub trait Relay: Send + Sync + 'static {
    /// The client capabilities roster declares to every server, beyond a plain
    /// client's (sampling, elicitation, roots).
    fn capabilities(&self) -> ClientCapabilities;

    /// A notification from `server`.
    fn notify(&self, server: &str, notice: Notice);

    /// `sampling/createMessage` from `server`.
    ///
    /// # Errors
    /// The MCP error to answer with.
    async fn create_message(
        &self,
        server: &str,
        origin: Option<RequestId>,
        params: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, ErrorData>;

    /// `elicitation/create` from `server`.
    ///
    /// # Errors
    /// The MCP error to answer with.
    async fn create_elicitation(
        &self,
        server: &str,
        origin: Option<RequestId>,
        params: ElicitRequestParams,
    ) -> Result<ElicitResult, ErrorData>;

    /// `roots/list` from `server`.
    ///
    /// # Errors
    /// The MCP error to answer with.
    async fn list_roots(&self, server: &str, origin: Option<RequestId>) -> Result<ListRootsResult, ErrorData>;
}

/// The request roster sent to a server that a request from the server belongs
/// to, where the transport can tell (Streamable HTTP: the server's request came
/// on that request's response stream). Over stdio and SSE it cannot.
fn origin(context: &RequestContext<RoleClient>) -> Option<RequestId> {
    match context.extensions.get::<InboundStreamOrigin>() {
        Some(InboundStreamOrigin::OutboundRequest(id)) => Some(id.clone()),
        Some(InboundStreamOrigin::Unassociated) | None => None,
    }
}

/// A notification a server sent to roster.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `notifications/progress`, for a request roster sent.
    Progress(ProgressNotificationParam),
    /// `notifications/message`: a log line.
    Log(LoggingMessageNotificationParam),
    /// `notifications/cancelled`: the server gave up on a request it sent.
    Cancelled(CancelledNotificationParam),
    /// `notifications/resources/updated`.
    ResourceUpdated(ResourceUpdatedNotificationParam),
    /// `notifications/tools/list_changed`.
    ToolsChanged,
    /// `notifications/prompts/list_changed`.
    PromptsChanged,
    /// `notifications/resources/list_changed`.
    ResourcesChanged,
}

/// roster as the client of one server: rmcp's handler for the session, passing
/// what the server sends on to the [`Relay`], if there is one.
#[derive(Clone)]
pub struct Client {
    config: ClientConfig,
    server: Arc<str>,
    relay: Option<Arc<dyn Relay>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.server).field("relay", &self.relay.is_some()).finish()
    }
}

impl Client {
    /// The client of `server`, offering `version`.
    pub fn new(server: &str, version: ProtocolVersion, relay: Option<Arc<dyn Relay>>) -> Client {
        let mut config = client_config(version);
        if let Some(relay) = &relay {
            config.capabilities = relay.capabilities();
        }
        Client { config, server: server.into(), relay }
    }

    fn pass(&self, notice: Notice) {
        if let Some(relay) = &self.relay {
            relay.notify(&self.server, notice);
        }
    }
}

fn no_relay(what: &str) -> ErrorData {
    ErrorData::new(rmcp::model::ErrorCode::METHOD_NOT_FOUND, format!("roster does not handle {what} here"), None)
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let Some(relay) = &self.relay else { return Err(no_relay("sampling/createMessage")) };
        tokio::select! {
            answer = relay.create_message(&self.server, origin(&context), params) => answer,
            () = context.ct.cancelled() => Err(ErrorData::internal_error("cancelled by the server", None)),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let Some(relay) = &self.relay else { return Err(no_relay("elicitation/create")) };
        tokio::select! {
            answer = relay.create_elicitation(&self.server, origin(&context), params) => answer,
            () = context.ct.cancelled() => Err(ErrorData::internal_error("cancelled by the server", None)),
        }
    }

    async fn list_roots(&self, context: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        let Some(relay) = &self.relay else { return Ok(ListRootsResult::default()) };
        tokio::select! {
            answer = relay.list_roots(&self.server, origin(&context)) => answer,
            () = context.ct.cancelled() => Err(ErrorData::internal_error("cancelled by the server", None)),
        }
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.pass(Notice::Progress(params));
    }

    async fn on_logging_message(&self, params: LoggingMessageNotificationParam, _: NotificationContext<RoleClient>) {
        self.pass(Notice::Log(params));
    }

    async fn on_cancelled(&self, params: CancelledNotificationParam, _: NotificationContext<RoleClient>) {
        self.pass(Notice::Cancelled(params));
    }

    async fn on_resource_updated(&self, params: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
        self.pass(Notice::ResourceUpdated(params));
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.pass(Notice::ToolsChanged);
    }

    async fn on_prompt_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.pass(Notice::PromptsChanged);
    }

    async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.pass(Notice::ResourcesChanged);
    }
}

/// The handshake's protocol-level failures, the same for every transport: a
/// closed connection or a transport error is transient, a cancellation is not a
/// failure, a rejected or incompatible handshake is permanent. (Each adapter
/// looks inside `TransportError` itself first: only it knows its error types.)
pub fn classify_init(error: &ClientInitializeError, message: String) -> Failure {
    match error {
        ClientInitializeError::Cancelled => Failure::cancelled(message),
        ClientInitializeError::ConnectionClosed(_) | ClientInitializeError::TransportError { .. } => {
            Failure::transient(message)
        }
        ClientInitializeError::JsonRpcError(_)
        | ClientInitializeError::ExpectedInitResponse(_)
        | ClientInitializeError::ExpectedInitResult(_)
        | ClientInitializeError::ConflictInitResponseId(..)
        | ClientInitializeError::UncorrelatedErrorResponse { .. }
        | ClientInitializeError::NoCompatibleProtocolVersion { .. }
        | ClientInitializeError::NoPreferredProtocolVersion
        | ClientInitializeError::LegacyFallbackFailed { .. } => Failure::permanent(message),
        // rmcp's enum is non-exhaustive: what it adds later is retried.
        _ => Failure::transient(message),
    }
}

/// Sends an MCP `ping` and waits at most `timeout` for the empty result (rmcp has
/// no helper for the client side).
///
/// # Errors
/// rmcp's error: `Timeout` when no answer came in time, `TransportClosed` or
/// `TransportSend` when the transport is gone, `McpError` when the server
/// answered with an error, `UnexpectedResponse` for anything but an empty result.
pub async fn ping(peer: &Peer<RoleClient>, timeout: Duration) -> Result<(), ServiceError> {
    let request = ClientRequest::PingRequest(PingRequest::default());
    let response = peer.send_request_with_option(request, PeerRequestOptions::with_timeout(timeout)).await?;
    let result = response.await_response().await?;
    if is_empty_result(&result) { Ok(()) } else { Err(ServiceError::UnexpectedResponse) }
}

/// An empty result, with or without `_meta` (which any MCP result may carry).
/// rmcp reads `{}` as `EmptyResult` and `{"_meta": {...}}` as a custom result.
pub fn is_empty_result(result: &ServerResult) -> bool {
    match result {
        ServerResult::EmptyResult(_) => true,
        ServerResult::CustomResult(custom) => custom.0.as_object().is_some_and(|o| o.keys().all(|k| k == "_meta")),
        _ => false,
    }
}

/// A running rmcp client session, as every adapter holds it: the peer for
/// requests, a token that ends the session, and a signal for when it has ended
/// (transport closed, or cancelled).
#[derive(Debug)]
pub struct McpClient {
    peer: Peer<RoleClient>,
    cancel: CancellationToken,
    ended: watch::Receiver<bool>,
}

impl McpClient {
    /// Takes over `running`, which was served with `cancel`.
    pub fn new(running: RunningService<RoleClient, Client>, cancel: CancellationToken) -> McpClient {
        let peer = running.peer().clone();
        let (tx, ended) = watch::channel(false);
        tokio::spawn(async move {
            let reason = running.waiting().await;
            debug!(?reason, "MCP session ended");
            tx.send_replace(true);
        });
        McpClient { peer, cancel, ended }
    }

    /// The peer, for listing and calling tools.
    pub fn peer(&self) -> &Peer<RoleClient> {
        &self.peer
    }

    /// Sends an MCP `ping`; see [`ping`].
    ///
    /// # Errors
    /// As [`ping`].
    pub async fn ping(&self, timeout: Duration) -> Result<(), ServiceError> {
        ping(&self.peer, timeout).await
    }

    /// Resolves once the session's loop has ended.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            let _ = ended.wait_for(|e| *e).await;
        }
    }

    /// Whether the session's loop has ended.
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Ends the session (rmcp closes the transport) and waits at most `bound`;
    /// true if it ended in time.
    pub async fn close(&self, bound: Duration) -> bool {
        self.cancel.cancel();
        tokio::time::timeout(bound, self.ended()).await.is_ok()
    }

    /// [`McpClient::close`] as a [`Session::close`](crate::Session::close) reports it:
    /// an error naming `what` when the bound passed.
    ///
    /// # Errors
    /// When the session did not end within `bound`.
    pub async fn close_within(&self, bound: Duration, what: &str) -> Result<(), CloseError> {
        if self.close(bound).await {
            Ok(())
        } else {
            Err(CloseError(format!("closing {what} took longer than {bound:?}")))
        }
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(json: &str) -> ServerResult {
        serde_json::from_str(json).expect("a result")
    }

    #[test]
    fn an_empty_result_may_carry_meta() {
        assert!(is_empty_result(&result("{}")));
        assert!(is_empty_result(&result(r#"{"_meta": {"traceId": "abc"}}"#)));
        assert!(is_empty_result(&result(r#"{"_meta": {}}"#)));
        assert!(!is_empty_result(&result(r#"{"_meta": {}, "x": 1}"#)));
        assert!(!is_empty_result(&result(r#"{"tools": []}"#)));
    }
}
