//! Small pieces of MCP client plumbing every adapter shares.

use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest, ProtocolVersion, ServerResult,
};
use rmcp::service::{ClientInitializeError, Peer, PeerRequestOptions, RunningService, ServiceError};
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
    pub fn new(running: RunningService<RoleClient, ClientConfig>, cancel: CancellationToken) -> McpClient {
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
