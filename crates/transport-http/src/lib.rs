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
//! TLS is rustls with the ring provider (no aws-lc), and the trust roots are
//! loaded only when an `https://` server needs them. Timeouts: connect, every POST
//! and DELETE (both in `roster_http::HttpOptions`), initialize (the definition's
//! `timeout`, 30 s by default), every ping (the core's `PING_TIMEOUT`).
//!
//! Every JSON response and every server-sent event is held to
//! [`HttpOptions::max_message_size`](roster_http::HttpOptions): a server that sends
//! more fails its session, transiently and with a message saying so.
//!
//! Failures are typed ([`HttpError`]) and classified once, by [`classify`]; the
//! HTTP rules (statuses, `Retry-After`, TLS) live in `roster-http` and are
//! shared with the SSE transport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::RoleClient;
use rmcp::service::{ClientInitializeError, Peer, ServiceError, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::AuthError;
use rmcp::transport::common::client_side_sse::NeverRetry;
use rmcp::transport::streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError};
use roster_auth::{MissingSecret, Store, StoreError, Tokens};
use roster_core::{Failure, ServerSpec};
use roster_http::classify::{Phase, StatusInfo, classify_reqwest, classify_status, reqwest_text};
use roster_http::{BuildError, HttpClients, InvalidHeader, header_map};
use roster_transport::mcp::{self, McpClient, Relay};
use roster_transport::{BoxFuture, CloseError, Connector, Session};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

mod authed;
mod backend;

pub use authed::Authed;
pub use backend::Backend;

/// How long closing waits for rmcp to finish (its `DELETE` has 5 s of its own).
const CLOSE_BOUND: Duration = Duration::from_secs(7);

/// A failure of the Streamable HTTP transport, typed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] BuildError),
    /// A configured header is not a valid HTTP header (validation should have caught it).
    #[error(transparent)]
    InvalidHeader(#[from] InvalidHeader),
    /// No initialize result within the timeout.
    #[error("no answer to initialize within {}s", .0.as_secs_f32())]
    Timeout(Duration),
    /// The handshake failed.
    #[error("initialize failed: {}", init_text(.0))]
    Initialize(#[source] Box<ClientInitializeError>),
    /// A request on a live session failed.
    #[error("{}", service_text(.0))]
    Request(#[source] Box<ServiceError>),
    /// The server's client secret is not in the environment.
    #[error(transparent)]
    MissingSecret(#[from] MissingSecret),
    /// The token store could not be read.
    #[error("credentials: {0}")]
    Store(#[from] StoreError),
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
        StreamableHttpError::Client(re) => reqwest_text(re),
        other => other.to_string(),
    }
}

/// The single place where Streamable HTTP errors become the core's failure classes
/// (SPEC §4, reference/rmcp.md §8), from types only.
pub fn classify(error: &HttpError) -> Failure {
    match error {
        HttpError::Client(_) | HttpError::InvalidHeader(_) | HttpError::MissingSecret(_) | HttpError::Store(_) => {
            Failure::permanent(error.to_string())
        }
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
        StreamableHttpError::Auth(e) => classify_auth(e),
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

/// Failures of a server's token source into classes (see [`roster_auth::classify`]).
pub fn classify_auth(e: &AuthError) -> Failure {
    roster_auth::classify(e)
}

/// The token source of `spec`'s sessions (see [`Store::entry_for`]).
///
/// # Errors
/// When `client_secret_env` is not set, or the store cannot be read.
pub fn tokens_for(store: &Store, spec: &ServerSpec, clients: &HttpClients) -> Result<Option<Tokens>, HttpError> {
    let Some(entry) = store.entry_for(spec)? else { return Ok(None) };
    // Token endpoints are https:// in the wild even for a plain-HTTP server.
    let http = clients.for_url("https://")?;
    Ok(Some(Tokens::new(entry, spec.auth.as_ref(), http)?))
}

/// Connects to Streamable HTTP servers.
#[derive(Clone)]
pub struct HttpConnector {
    clients: HttpClients,
    relay: Option<Arc<dyn Relay>>,
    store: Option<Store>,
}

impl std::fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnector").field("clients", &self.clients).finish_non_exhaustive()
    }
}

impl HttpConnector {
    /// A connector on `clients` (share them across a supervisor).
    pub fn new(clients: HttpClients) -> HttpConnector {
        HttpConnector { clients, relay: None, store: None }
    }

    /// The same, sending the tokens kept in `store` to the servers logged in to.
    #[must_use]
    pub fn with_credentials(mut self, store: Store) -> HttpConnector {
        self.store = Some(store);
        self
    }

    /// The same, passing what servers send to roster on to `relay`.
    #[must_use]
    pub fn with_relay(mut self, relay: Arc<dyn Relay>) -> HttpConnector {
        self.relay = Some(relay);
        self
    }

    /// A connector on clients of its own with default options.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn with_defaults() -> Result<HttpConnector, HttpError> {
        Ok(HttpConnector::new(HttpClients::new(roster_http::HttpOptions::default())?))
    }

    /// Connects and completes the MCP handshake before `deadline`.
    ///
    /// # Errors
    /// Typed; see [`classify`].
    pub async fn open(&self, spec: &ServerSpec, deadline: Instant) -> Result<HttpSession, HttpError> {
        let client = self.clients.for_url(&spec.url)?;
        let mut config = StreamableHttpClientTransportConfig::with_uri(spec.url.as_str());
        config.retry_config = Arc::new(NeverRetry::default());
        config.custom_headers = header_map(spec)?;
        config.reinit_on_expired_session = true;
        let (fault_tx, fault) = watch::channel(None);
        let options = self.clients.options();
        let backend = Backend::new(client, options.request_timeout, options.max_message_size, Arc::new(fault_tx));
        let tokens = match &self.store {
            Some(store) => tokens_for(store, spec, &self.clients)?,
            None => None,
        };
        let backend = Authed::new(backend, tokens);
        let transport = StreamableHttpClientTransport::with_client(backend, config);
        let cancel = CancellationToken::new();
        let handshake = mcp::Client::new(&spec.name, mcp::PROTOCOL_VERSION, self.relay.clone())
            .serve_with_ct(transport, cancel.clone());
        let running = match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return Err(HttpError::Initialize(Box::new(e))),
            Err(_) => return Err(HttpError::Timeout(spec.connect_timeout())),
        };
        let url = spec.display_url();
        debug!(%url, "connected");
        Ok(HttpSession { client: McpClient::new(running, cancel), url, fault })
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
/// itself gives the session up (a forgotten session it could not re-initialize)
/// or when the server sent more than roster reads (an event or a response above
/// the size limit).
#[derive(Debug)]
pub struct HttpSession {
    client: McpClient,
    /// For messages: secrets redacted.
    url: String,
    fault: watch::Receiver<Option<String>>,
}

#[async_trait]
impl Session for HttpSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| classify_request(&e))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let (ended, mut fault, url) = (self.client.ended(), self.fault.clone(), self.url.clone());
        Box::pin(async move {
            tokio::select! {
                () = ended => Failure::transient(format!("session with {url} lost: the client could not re-establish it")),
                Ok(why) = fault.wait_for(Option::is_some) => {
                    Failure::transient(format!("session with {url} failed: {}", why.clone().unwrap_or_default()))
                }
            }
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
