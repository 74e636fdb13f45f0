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
        // The endpoint answers, but not as an MCP server.
        StreamableHttpError::UnexpectedContentType(_)
        | StreamableHttpError::UnexpectedServerResponse(_)
        | StreamableHttpError::Deserialize(_)
        | StreamableHttpError::ResponseBodyTooLarge { .. }
        | StreamableHttpError::MissingSessionIdInResponse
        | StreamableHttpError::ReservedHeaderConflict(_) => Failure::permanent(text),
        // The connection or the stream failed (`TransportChannelClosed`, `Io`,
        // `UnexpectedEndOfStream`, `Sse`, `ControlRequestTimeout`,
        // `TokioJoinError`, `ServerDoesNotSupportSse`,
        // `ServerDoesNotSupportDeleteSession`), and whatever rmcp adds to this
        // non-exhaustive type: a retry may help.
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

#[cfg(test)]
mod tests {
    use rmcp::transport::DynamicTransportError;
    use rmcp::transport::streamable_http_client::{AuthRequiredError, HttpStatusError, InsufficientScopeError};
    use roster_core::{FailureClass, FailureKind};

    use super::*;

    type E = StreamableHttpError<reqwest::Error>;

    fn boxed(e: E) -> DynamicTransportError {
        DynamicTransportError::from_parts("streamable-http", std::any::TypeId::of::<E>(), Box::new(e))
    }

    fn initialize(e: E) -> HttpError {
        let e = ClientInitializeError::TransportError { error: boxed(e), context: "send initialize request".into() };
        HttpError::Initialize(Box::new(e))
    }

    fn request(e: E) -> ServiceError {
        ServiceError::TransportSend(boxed(e))
    }

    /// A real reqwest error: a connection to `port`, which nothing listens on.
    async fn refused(port: u16) -> reqwest::Error {
        let client =
            HttpClients::new(roster_http::HttpOptions::default()).unwrap().for_url("http://127.0.0.1/").unwrap();
        client.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap_err()
    }

    fn challenge(f: &Failure) -> roster_core::Challenge {
        match &f.class {
            FailureClass::NeedsCredentials(challenge) => (**challenge).clone(),
            other => panic!("expected auth required, got {other:?}"),
        }
    }

    fn status(code: u16, retry_after: Option<&str>) -> E {
        E::HttpStatus(HttpStatusError::new(code, retry_after.map(str::to_owned)))
    }

    #[test]
    fn statuses_and_challenges_are_classified_by_roster_http() {
        let f =
            classify_streamable(&E::AuthRequired(AuthRequiredError::new("Bearer realm=\"r\"".into())), Phase::Other);
        assert_eq!(challenge(&f).realm.as_deref(), Some("r"));
        let scope = InsufficientScopeError::new("Bearer error=\"insufficient_scope\", scope=\"admin\"".into(), None);
        let f = classify_streamable(&E::InsufficientScope(scope), Phase::Other);
        assert_eq!(challenge(&f).scope.as_deref(), Some("admin"));
        let f = classify_streamable(&status(503, Some("9")), Phase::Other);
        assert_eq!(f.class, FailureClass::Transient { retry_after: Some(Duration::from_secs(9)) });
        let f = classify_streamable(&status(404, None), Phase::StreamableInitialize);
        assert_eq!(f.kind(), FailureKind::Permanent);
        assert!(
            f.message.contains("type = \"sse\""),
            "a 404 on initialize suggests the legacy transport: {}",
            f.message
        );
    }

    #[test]
    fn rmcps_own_errors_are_transient_when_the_session_may_come_back_and_permanent_when_it_is_not_mcp() {
        for (e, kind) in [
            (E::SessionExpired, FailureKind::Transient),
            (E::SessionRecoveryTimeout, FailureKind::Transient),
            (E::TransportChannelClosed, FailureKind::Transient),
            (E::UnexpectedEndOfStream, FailureKind::Transient),
            (E::ControlRequestTimeout, FailureKind::Transient),
            (E::ServerDoesNotSupportSse, FailureKind::Transient),
            (E::Io(std::io::Error::other("reset")), FailureKind::Transient),
            (E::UnexpectedContentType(Some("text/html".into())), FailureKind::Permanent),
            (E::UnexpectedServerResponse("<html>".into()), FailureKind::Permanent),
            (E::ResponseBodyTooLarge { max_size: 10 }, FailureKind::Permanent),
            (E::MissingSessionIdInResponse, FailureKind::Permanent),
            (E::ReservedHeaderConflict("accept".into()), FailureKind::Permanent),
        ] {
            let text = e.to_string();
            let f = classify_streamable(&e, Phase::Other);
            assert_eq!(f.kind(), kind, "{text}");
            assert!(f.message.contains(&text), "{} names {text}", f.message);
        }
        assert_eq!(
            classify_streamable(&E::SessionExpired, Phase::Other).message,
            "session lost: Session expired (HTTP 404)"
        );
    }

    #[test]
    fn a_token_source_failure_is_classified_by_roster_auth() {
        let f = classify_streamable(&E::Auth(AuthError::AuthorizationRequired), Phase::Other);
        assert_eq!(f.kind(), FailureKind::NeedsCredentials);
        assert_eq!(f, classify_auth(&AuthError::AuthorizationRequired));
    }

    #[test]
    fn sessions_carry_tokens_only_for_servers_set_up_for_oauth_or_logged_in_to() {
        let store = Store::new(std::env::temp_dir().join(format!("roster-transport-http-{}", std::process::id())));
        let clients = HttpClients::new(roster_http::HttpOptions::default()).unwrap();
        let mut spec = ServerSpec::remote("s", roster_core::ServerType::StreamableHttp, "http://127.0.0.1:1/mcp");
        assert!(tokens_for(&store, &spec, &clients).unwrap().is_none(), "no auth, no login: no tokens");
        spec.auth = Some(roster_core::AuthConfig { kind: roster_core::AuthType::Oauth, ..Default::default() });
        assert!(tokens_for(&store, &spec, &clients).unwrap().is_some());
        assert!(!store.dir().exists(), "nothing was written");
    }

    #[tokio::test]
    async fn a_client_error_is_classified_and_told_as_reqwests() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = || refused(port);
        let re = refused().await;
        let expected = reqwest_text(&re);
        assert!(expected.starts_with("cannot connect"), "{expected}");
        let f = classify_streamable(&E::Client(refused().await), Phase::Other);
        assert_eq!(f.kind(), FailureKind::Transient);
        assert_eq!(f.message, expected);

        let init = initialize(E::Client(refused().await));
        assert_eq!(init.to_string(), format!("initialize failed: {expected}"));
        assert_eq!(classify(&init).kind(), FailureKind::Transient);
        assert_eq!(HttpError::Request(Box::new(request(E::Client(refused().await)))).to_string(), expected);
    }

    #[test]
    fn a_transport_error_inside_initialize_is_classified_by_its_own_type() {
        let f = classify(&initialize(status(429, Some("3"))));
        assert_eq!(f.class, FailureClass::Transient { retry_after: Some(Duration::from_secs(3)) });
        let f = classify(&initialize(status(404, None)));
        assert!(f.message.contains("type = \"sse\""), "initialize's phase is kept: {}", f.message);
        let other = ClientInitializeError::ConnectionClosed("eof".into());
        let text = format!("initialize failed: {other}");
        let e = HttpError::Initialize(Box::new(other));
        assert_eq!(e.to_string(), text);
        assert_eq!(classify(&e).kind(), FailureKind::Transient);
        let e = HttpError::Initialize(Box::new(ClientInitializeError::Cancelled));
        assert_eq!(classify(&e).kind(), FailureKind::Cancelled);
    }

    #[test]
    fn a_request_is_classified_by_the_transport_error_inside_it() {
        let f = classify_request(&request(E::AuthRequired(AuthRequiredError::new(String::new()))));
        assert_eq!(f.kind(), FailureKind::NeedsCredentials, "a 401 mid-session is auth required");
        let foreign = DynamicTransportError::from_parts(
            "x",
            std::any::TypeId::of::<()>(),
            Box::new(std::io::Error::other("boom")),
        );
        let f = classify_request(&ServiceError::TransportSend(foreign));
        assert_eq!(f.kind(), FailureKind::Transient);
        assert!(f.message.contains("boom"), "{}", f.message);
        let refused = ServiceError::McpError(rmcp::ErrorData::invalid_params("no such tool", None));
        assert_eq!(classify_request(&refused).kind(), FailureKind::Permanent, "the server's own rejection");
        let f = classify_request(&ServiceError::TransportClosed);
        assert_eq!((f.kind(), f.message), (FailureKind::Transient, ServiceError::TransportClosed.to_string()));
    }

    #[test]
    fn configuration_errors_are_permanent_and_a_slow_handshake_transient() {
        let e = HttpError::InvalidHeader(InvalidHeader { name: "bad name".into() });
        assert_eq!(classify(&e).kind(), FailureKind::Permanent);
        let f = classify(&HttpError::Timeout(Duration::from_secs(2)));
        assert_eq!((f.kind(), f.message.as_str()), (FailureKind::Transient, "no answer to initialize within 2s"));
    }

    #[test]
    fn debug_output_shows_no_internals() {
        let connector = HttpConnector::new(HttpClients::new(roster_http::HttpOptions::default()).unwrap());
        assert!(format!("{connector:?}").starts_with("HttpConnector { clients: "));
    }
}
