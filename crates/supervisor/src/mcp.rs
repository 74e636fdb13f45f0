//! Small pieces of MCP client plumbing every adapter shares.

use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest, ProtocolVersion, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, ServiceError};

/// The protocol version roster offers over stdio and Streamable HTTP: the latest
/// one that still has `initialize` (rmcp's own default has none).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// What roster says about itself in `initialize`, offering `version`.
pub fn client_config(version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("roster", env!("CARGO_PKG_VERSION")))
        .with_protocol_version(version)
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
    match response.await_response().await? {
        ServerResult::EmptyResult(_) => Ok(()),
        _ => Err(ServiceError::UnexpectedResponse),
    }
}
