//! # roster-transport-http: remote MCP servers over Streamable HTTP
//!
//! [`HttpConnector`] runs rmcp's Streamable HTTP client on one shared reqwest
//! client (connection reuse across every session of a supervisor) through
//! roster's own [`Backend`], which turns every non-2xx status into a typed error.
//! The configured headers go on every request; rmcp's SSE reconnects are off
//! (backoff has one owner: the core); a session the server forgot (HTTP 404)
//! is re-initialized once by rmcp, a second failure is reported. Closing sends
//! `DELETE` for the session.
//!
//! TLS is rustls with the ring provider (no aws-lc). Timeouts: connect
//! ([`HttpOptions::connect_timeout`]), initialize (the definition's `timeout`,
//! 30 s by default), every POST and DELETE ([`HttpOptions::request_timeout`]),
//! every ping (the core's `PING_TIMEOUT`).
//!
//! Failures are typed ([`HttpError`]) and classified once, by [`classify`]; the
//! HTTP rules (statuses, `Retry-After`, TLS) live in [`classify`](mod@classify)
//! and are shared with the SSE transport.

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use rmcp::RoleClient;
use rmcp::service::{ClientInitializeError, Peer, ServiceError, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::NeverRetry;
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};
use roster_core::{Failure, ServerSpec};
use roster_supervisor::mcp::{self, McpClient};
use roster_supervisor::{BoxFuture, CloseError, Connector, Session};
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod backend;
pub mod classify;

pub use backend::Backend;
use classify::{Phase, StatusInfo, classify_reqwest, classify_status};

/// How long closing waits for rmcp to finish (its `DELETE` has 5 s of its own).
const CLOSE_BOUND: Duration = Duration::from_secs(7);

/// Settings of the shared HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Every POST and DELETE, response body included (tool calls may stream for a while).
    pub request_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions { connect_timeout: Duration::from_secs(10), request_timeout: Duration::from_secs(300) }
    }
}

/// Builds the reqwest client every remote session of a supervisor shares:
/// rustls with the ring provider, no redirects (a redirect would replay headers to
/// another host or turn a POST into a GET), the connect timeout of `options`.
///
/// # Errors
/// When reqwest cannot build its TLS configuration.
pub fn build_client(options: &HttpOptions) -> Result<reqwest::Client, HttpError> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one first; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("roster/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(HttpError::Client)
}

/// A failure of the Streamable HTTP transport, typed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {}", classify::chain(.0))]
    Client(#[source] reqwest::Error),
    /// A configured header is not a valid HTTP header (validation should have caught it).
    #[error("header {name:?} is not a valid HTTP header")]
    InvalidHeader {
        /// The header's name.
        name: String,
    },
    /// No initialize result within the timeout.
    #[error("no answer to initialize within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    /// The handshake failed.
    #[error("initialize failed: {}", init_text(.0))]
    Initialize(#[source] Box<ClientInitializeError>),
    /// A request on a live session failed.
    #[error("{}", service_text(.0))]
    Request(#[source] Box<ServiceError>),
}

fn transport_error(e: &ClientInitializeError) -> Option<&StreamableHttpError<reqwest::Error>> {
    match e {
        ClientInitializeError::TransportError { error, .. } => error.error.downcast_ref(),
        _ => None,
    }
}

fn init_text(e: &ClientInitializeError) -> String {
    match transport_error(e) {
        Some(inner) => streamable_text(inner),
        None => e.to_string(),
    }
}

fn service_text(e: &ServiceError) -> String {
    match e {
        ServiceError::TransportSend(dte) => match dte.error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            Some(inner) => streamable_text(inner),
            None => e.to_string(),
        },
        ServiceError::McpError(_)
        | ServiceError::TransportClosed
        | ServiceError::UnexpectedResponse
        | ServiceError::SubscriptionLagged { .. }
        | ServiceError::Cancelled { .. }
        | ServiceError::Timeout { .. }
        | ServiceError::InputRequiredRoundsExceeded { .. } => e.to_string(),
        _ => e.to_string(),
    }
}

fn streamable_text(e: &StreamableHttpError<reqwest::Error>) -> String {
    match e {
        StreamableHttpError::Client(re) => classify::chain(re),
        other => other.to_string(),
    }
}

/// The single place where Streamable HTTP errors become the core's failure classes
/// (SPEC §4, reference/rmcp.md §8), from types only.
pub fn classify(error: &HttpError) -> Failure {
    match error {
        HttpError::Client(e) => Failure::permanent(format!("cannot build the HTTP client: {}", classify::chain(e))),
        HttpError::InvalidHeader { .. } => Failure::permanent(error.to_string()),
        HttpError::Timeout(_) => Failure::transient(error.to_string()),
        HttpError::Initialize(e) => match transport_error(e) {
            Some(inner) => classify_streamable(inner, Phase::StreamableInitialize),
            None => classify_init(e),
        },
        HttpError::Request(e) => classify_request(e),
    }
}

/// A request on a live session, classified from the transport error inside it (a
/// 401 mid-session is auth required); the server's own rejection is permanent.
pub fn classify_request(error: &ServiceError) -> Failure {
    let text = service_text(error);
    match error {
        ServiceError::TransportSend(dte) => match dte.error.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            Some(inner) => classify_streamable(inner, Phase::Other),
            None => Failure::transient(text),
        },
        ServiceError::McpError(_) => Failure::permanent(text),
        _ => Failure::transient(text),
    }
}

/// The handshake's protocol-level failures (see [`mcp::classify_init`]).
pub fn classify_init(e: &ClientInitializeError) -> Failure {
    mcp::classify_init(e, format!("initialize failed: {e}"))
}

/// rmcp's Streamable HTTP errors (from roster's backend) into classes.
pub fn classify_streamable(e: &StreamableHttpError<reqwest::Error>, phase: Phase) -> Failure {
    let text = streamable_text(e);
    match e {
        StreamableHttpError::AuthRequired(a) => classify_status(
            &StatusInfo { status: 401, www_authenticate: vec![a.www_authenticate_header.clone()], retry_after: None },
            phase,
        ),
        StreamableHttpError::InsufficientScope(i) => classify_status(
            &StatusInfo { status: 403, www_authenticate: vec![i.www_authenticate_header.clone()], retry_after: None },
            phase,
        ),
        StreamableHttpError::HttpStatus(h) => classify_status(
            &StatusInfo { status: h.status, www_authenticate: Vec::new(), retry_after: h.retry_after.clone() },
            phase,
        ),
        StreamableHttpError::Client(re) => classify_reqwest(re),
        StreamableHttpError::SessionExpired
        | StreamableHttpError::SessionRecoveryTimeout
        | StreamableHttpError::ReinitializationFailed(_) => Failure::transient(format!("session lost: {text}")),
        StreamableHttpError::TransportChannelClosed
        | StreamableHttpError::Io(_)
        | StreamableHttpError::UnexpectedEndOfStream
        | StreamableHttpError::Sse(_)
        | StreamableHttpError::ControlRequestTimeout
        | StreamableHttpError::TokioJoinError(_)
        | StreamableHttpError::ServerDoesNotSupportSse
        | StreamableHttpError::ServerDoesNotSupportDeleteSession => Failure::transient(text),
        // The endpoint answers, but not as an MCP server.
        StreamableHttpError::UnexpectedContentType(_)
        | StreamableHttpError::UnexpectedServerResponse(_)
        | StreamableHttpError::Deserialize(_)
        | StreamableHttpError::ResponseBodyTooLarge { .. }
        | StreamableHttpError::MissingSessionIdInResponse
        | StreamableHttpError::ReservedHeaderConflict(_) => Failure::permanent(text),
        _ => Failure::transient(text),
    }
}

/// The configured headers as HTTP header values.
///
/// # Errors
/// [`HttpError::InvalidHeader`] naming the header (never its value).
pub fn header_map(spec: &ServerSpec) -> Result<HashMap<HeaderName, HeaderValue>, HttpError> {
    spec.headers
        .iter()
        .map(|(name, value)| {
            let n =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| HttpError::InvalidHeader { name: name.clone() })?;
            let mut v = HeaderValue::from_str(value).map_err(|_| HttpError::InvalidHeader { name: name.clone() })?;
            v.set_sensitive(true);
            Ok((n, v))
        })
        .collect()
}

/// Connects to Streamable HTTP servers.
#[derive(Debug, Clone)]
pub struct HttpConnector {
    backend: Backend,
}

impl HttpConnector {
    /// A connector on `client` (share one per supervisor).
    pub fn new(client: reqwest::Client, options: &HttpOptions) -> HttpConnector {
        HttpConnector { backend: Backend::new(client, options.request_timeout) }
    }

    /// A connector on its own client with default options.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn with_defaults() -> Result<HttpConnector, HttpError> {
        let options = HttpOptions::default();
        Ok(HttpConnector::new(build_client(&options)?, &options))
    }

    /// Connects and completes the MCP handshake before `deadline`.
    ///
    /// # Errors
    /// Typed; see [`classify`].
    pub async fn open(&self, spec: &ServerSpec, deadline: Instant) -> Result<HttpSession, HttpError> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(spec.url.as_str());
        config.retry_config = Arc::new(NeverRetry::default());
        config.custom_headers = header_map(spec)?;
        config.reinit_on_expired_session = true;
        let transport = StreamableHttpClientTransport::with_client(self.backend.clone(), config);
        let cancel = CancellationToken::new();
        let handshake = mcp::client_config(mcp::PROTOCOL_VERSION).serve_with_ct(transport, cancel.clone());
        let running = match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return Err(HttpError::Initialize(Box::new(e))),
            Err(_) => return Err(HttpError::Timeout(spec.connect_timeout())),
        };
        debug!(url = %spec.url, "connected");
        Ok(HttpSession { client: McpClient::new(running, cancel), url: spec.url.clone() })
    }
}

#[async_trait]
impl Connector for HttpConnector {
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        match self.open(spec, deadline).await {
            Ok(session) => Ok(Box::new(session)),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// A live Streamable HTTP session.
///
/// rmcp does not report a dead server as a closed transport (requests just
/// fail), so the health probes find it; [`Session::closed`] resolves when rmcp
/// itself gives the session up (a forgotten session it could not re-initialize).
#[derive(Debug)]
pub struct HttpSession {
    client: McpClient,
    url: String,
}

#[async_trait]
impl Session for HttpSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| classify_request(&e))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let ended = self.client.ended();
        let url = self.url.clone();
        Box::pin(async move {
            ended.await;
            Failure::transient(format!("session with {url} lost: the client could not re-establish it"))
        })
    }

    async fn close(&self) -> Result<(), CloseError> {
        // Ends the session; rmcp sends DELETE for it on the way out.
        self.client.close_within(CLOSE_BOUND, &format!("the session with {}", self.url)).await
    }

    fn peer(&self) -> Option<Peer<RoleClient>> {
        Some(self.client.peer().clone())
    }

    fn classify(&self, error: &ServiceError) -> Failure {
        classify_request(error)
    }
}
