//! # roster-transport-sse: remote MCP servers over the legacy HTTP+SSE transport
//!
//! rmcp 3.x has no client for the 2024-11-05 transport, so this crate implements
//! rmcp's `Transport<RoleClient>` itself ([`SseTransport`]): `GET` the stream with
//! `Accept: text/event-stream` and the configured headers, wait (bounded by the
//! definition's timeout) for the `endpoint` event, resolve it against the base URL
//! and refuse another origin, `POST` every message there, and read responses from
//! `message` events. The stream lives as long as the session: when it ends, the
//! transport closes at once and the session is failed without waiting for a ping.
//!
//! Every event is held to `roster_http::HttpOptions::max_message_size`: a server
//! that streams more without ending an event fails its session at once,
//! transiently, with a message saying so.
//!
//! Errors are typed ([`SseError`]) and classified once, by [`classify`], with the
//! HTTP rules shared with the Streamable HTTP transport (`roster_http::classify`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ProtocolVersion, ServerJsonRpcMessage};
use rmcp::service::{ClientInitializeError, Peer, ServiceError, ServiceExt};
use rmcp::transport::Transport;
use roster_core::{Failure, ServerSpec};
use roster_http::classify::{Phase, StatusInfo, classify_reqwest, classify_status, reqwest_text};
use roster_http::{BuildError, EventStreamError, HttpClients, HttpOptions, InvalidHeader, header_map, limit_events};
use roster_transport::mcp::{self, McpClient, Relay};
use roster_transport::{BoxFuture, CloseError, Connector, Session};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

/// The protocol version of this transport.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2024_11_05;
/// Messages buffered between the stream reader and rmcp.
const INCOMING_BUFFER: usize = 64;
/// How long closing waits for rmcp's loop to end.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// A failure of the SSE transport, typed.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] BuildError),
    /// A configured header is not a valid HTTP header.
    #[error(transparent)]
    InvalidHeader(#[from] InvalidHeader),
    /// The request could not be sent, or its response not read.
    #[error("{}", reqwest_text(.0))]
    Http(#[source] reqwest::Error),
    /// The server answered with an error status.
    #[error("HTTP {}", .0.status)]
    Status(StatusInfo),
    /// The `GET` was answered with something other than an event stream.
    #[error("the server did not answer with an event stream (content type {0:?})")]
    NotAnEventStream(Option<String>),
    /// No `endpoint` event arrived in time.
    #[error("no endpoint event within {}s", .0.as_secs_f32())]
    NoEndpoint(Duration),
    /// The stream ended (or broke) before the `endpoint` event.
    #[error("the event stream ended before the endpoint event{}", reason_suffix(.0))]
    StreamEnded(Option<String>),
    /// The server sent an event larger than the limit.
    #[error("the server sent an event larger than {0} bytes")]
    EventTooLarge(usize),
    /// The `endpoint` event does not hold a URL.
    #[error("the endpoint event holds no usable URL: {0:?}")]
    BadEndpoint(String),
    /// The `endpoint` event points to another origin; nothing is sent there.
    #[error("the server sent an endpoint on another origin ({endpoint}, not {base}); refusing to post there")]
    ForeignEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// The origin of the configured URL.
        base: String,
    },
    /// The server's client secret is not in the environment.
    #[error(transparent)]
    MissingSecret(#[from] roster_auth::MissingSecret),
    /// The token store could not be read.
    #[error("credentials: {0}")]
    Store(#[from] roster_auth::StoreError),
    /// No token could be had (expired, refused, or the authorization server is down).
    #[error("{}", roster_auth::classify(.0).message)]
    Token(#[source] roster_auth::AuthError),
    /// A message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[source] serde_json::Error),
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

fn reason_suffix(reason: &Option<String>) -> String {
    reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
}

fn as_sse<'a>(e: &'a (dyn std::error::Error + Send + Sync + 'static)) -> Option<&'a SseError> {
    e.downcast_ref::<SseError>()
}

fn init_text(e: &ClientInitializeError) -> String {
    match e {
        ClientInitializeError::TransportError { error, .. } => match as_sse(error.error.as_ref()) {
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

fn service_text(e: &ServiceError) -> String {
    match e {
        ServiceError::TransportSend(dte) => match as_sse(dte.error.as_ref()) {
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// The single place where SSE errors become the core's failure classes (SPEC §4).
pub fn classify(error: &SseError) -> Failure {
    let text = error.to_string();
    match error {
        SseError::Http(e) => classify_reqwest(e),
        SseError::Status(info) => classify_status(info, Phase::Other),
        SseError::NoEndpoint(_) | SseError::StreamEnded(_) | SseError::EventTooLarge(_) | SseError::Timeout(_) => {
            Failure::transient(text)
        }
        SseError::Client(_)
        | SseError::InvalidHeader(_)
        | SseError::NotAnEventStream(_)
        | SseError::BadEndpoint(_)
        | SseError::ForeignEndpoint { .. }
        | SseError::MissingSecret(_)
        | SseError::Store(_)
        | SseError::Encode(_) => Failure::permanent(text),
        SseError::Token(e) => roster_auth::classify(e),
        SseError::Initialize(e) => match e.as_ref() {
            ClientInitializeError::TransportError { error, .. } => match as_sse(error.error.as_ref()) {
                Some(inner) => classify(inner),
                None => classify_init(e),
            },
            _ => classify_init(e),
        },
        SseError::Request(e) => classify_request(e),
    }
}

/// A request on a live session, classified from the transport error inside it;
/// the server's own rejection is permanent.
pub fn classify_request(error: &ServiceError) -> Failure {
    match error {
        ServiceError::TransportSend(dte) => match as_sse(dte.error.as_ref()) {
            Some(inner) => classify(inner),
            None => Failure::transient(service_text(error)),
        },
        ServiceError::McpError(_) => Failure::permanent(service_text(error)),
        _ => Failure::transient(service_text(error)),
    }
}

fn classify_init(e: &ClientInitializeError) -> Failure {
    mcp::classify_init(e, format!("initialize failed: {e}"))
}

/// Whether a broken event stream broke on an event above the limit.
fn too_large(e: &sse_stream::Error) -> Option<usize> {
    match e {
        sse_stream::Error::Body(body) => match body.downcast_ref::<EventStreamError>() {
            Some(EventStreamError::TooLarge { max }) => Some(*max),
            Some(EventStreamError::Read(_)) | None => None,
        },
        _ => None,
    }
}

fn status_info(response: &reqwest::Response) -> StatusInfo {
    let headers = response.headers();
    StatusInfo {
        status: response.status().as_u16(),
        www_authenticate: headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect(),
        retry_after: headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned),
    }
}

fn to_header_map(spec: &ServerSpec) -> Result<HeaderMap, SseError> {
    Ok(header_map(spec)?.into_iter().collect::<HeaderMap<HeaderValue>>())
}

/// Why an event stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server ended it.
    Closed,
    /// It broke (the connection, or a malformed stream).
    Broke(String),
    /// The server sent an event larger than this many bytes.
    TooLarge(usize),
    /// roster closed it.
    ClientClosed,
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Closed => f.write_str("the server ended the event stream"),
            StreamEnd::Broke(why) => write!(f, "the event stream broke: {why}"),
            StreamEnd::TooLarge(max) => write!(f, "the server sent an event larger than {max} bytes"),
            StreamEnd::ClientClosed => f.write_str("the client closed"),
        }
    }
}

/// Sends client messages to the current endpoint.
#[derive(Clone)]
struct Poster {
    client: reqwest::Client,
    endpoint: Arc<RwLock<Url>>,
    headers: HeaderMap,
    timeout: Duration,
}

impl Poster {
    async fn post(self, message: ClientJsonRpcMessage) -> Result<(), SseError> {
        let body = serde_json::to_vec(&message).map_err(SseError::Encode)?;
        let url = self.endpoint.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let response = self
            .client
            .post(url)
            .timeout(self.timeout)
            .headers(self.headers)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SseError::Http(e.without_url()))?;
        if response.status().is_success() { Ok(()) } else { Err(SseError::Status(status_info(&response))) }
    }
}

/// rmcp's `Transport<RoleClient>` for the 2024-11-05 HTTP+SSE transport.
pub struct SseTransport {
    incoming: mpsc::Receiver<ServerJsonRpcMessage>,
    poster: Poster,
    reader: tokio::task::JoinHandle<()>,
    ended: watch::Receiver<Option<StreamEnd>>,
}

impl std::fmt::Debug for SseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseTransport").finish_non_exhaustive()
    }
}

impl SseTransport {
    /// Opens the event stream at `url` with `headers` and waits, until `deadline`,
    /// for the server's `endpoint`.
    ///
    /// # Errors
    /// Typed; see [`classify`].
    pub async fn connect(
        client: reqwest::Client,
        url: &str,
        headers: HeaderMap,
        deadline: Instant,
        options: &HttpOptions,
    ) -> Result<SseTransport, SseError> {
        let base = Url::parse(url).map_err(|_| SseError::BadEndpoint(url.to_owned()))?;
        let deadline = tokio::time::Instant::from_std(deadline);
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let request = client
            .get(base.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(response) => response.map_err(|e| SseError::Http(e.without_url()))?,
            Err(_) => return Err(SseError::NoEndpoint(timeout)),
        };
        if !response.status().is_success() {
            return Err(SseError::Status(status_info(&response)));
        }
        let media = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if !media
            .as_deref()
            .is_some_and(|m| m.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/event-stream"))
        {
            return Err(SseError::NotAnEventStream(media));
        }
        let body = limit_events(response.bytes_stream(), options.max_message_size);
        let mut events = sse_stream::SseStream::from_bytes_stream(body);
        let endpoint = loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Err(SseError::NoEndpoint(timeout)),
                Ok(None) => return Err(SseError::StreamEnded(None)),
                Ok(Some(Err(e))) => {
                    return Err(match too_large(&e) {
                        Some(max) => SseError::EventTooLarge(max),
                        None => SseError::StreamEnded(Some(e.to_string())),
                    });
                }
                Ok(Some(Ok(event))) if event.event.as_deref() == Some("endpoint") => {
                    break resolve(&base, event.data.as_deref().unwrap_or_default())?;
                }
                Ok(Some(Ok(_))) => {}
            }
        };
        debug!(endpoint = %roster_core::redact_url(endpoint.as_str()), "SSE endpoint");
        let endpoint = Arc::new(RwLock::new(endpoint));
        let (tx, incoming) = mpsc::channel(INCOMING_BUFFER);
        let (ended_tx, ended) = watch::channel(None);
        let reader = tokio::spawn(read_events(events, tx, base, endpoint.clone(), ended_tx));
        Ok(SseTransport {
            incoming,
            poster: Poster { client, endpoint, headers, timeout: options.request_timeout },
            reader,
            ended,
        })
    }

    /// Why the stream ended, once it has.
    pub fn ended(&self) -> watch::Receiver<Option<StreamEnd>> {
        self.ended.clone()
    }
}

/// Resolves an `endpoint` event's data against the base URL (absolute URLs,
/// absolute paths and relative forms), on the base's origin only.
fn resolve(base: &Url, data: &str) -> Result<Url, SseError> {
    let endpoint = base.join(data.trim()).map_err(|_| SseError::BadEndpoint(data.to_owned()))?;
    if endpoint.origin() != base.origin() {
        return Err(SseError::ForeignEndpoint {
            endpoint: roster_core::redact_url(endpoint.as_str()),
            base: base.origin().ascii_serialization(),
        });
    }
    Ok(endpoint)
}

async fn read_events<S>(
    mut events: S,
    tx: mpsc::Sender<ServerJsonRpcMessage>,
    base: Url,
    endpoint: Arc<RwLock<Url>>,
    ended: watch::Sender<Option<StreamEnd>>,
) where
    S: futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Unpin,
{
    let reason = loop {
        match events.next().await {
            None => break StreamEnd::Closed,
            Some(Err(e)) => match too_large(&e) {
                Some(max) => break StreamEnd::TooLarge(max),
                None => break StreamEnd::Broke(e.to_string()),
            },
            Some(Ok(event)) => match (event.event.as_deref(), event.data) {
                (Some("endpoint"), Some(data)) => match resolve(&base, &data) {
                    Ok(url) => *endpoint.write().unwrap_or_else(std::sync::PoisonError::into_inner) = url,
                    Err(e) => warn!(error = %e, "ignoring a new endpoint"),
                },
                (None | Some("message"), Some(data)) => match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            break StreamEnd::ClientClosed;
                        }
                    }
                    Err(e) => debug!(error = %e, "ignoring a message that is not JSON-RPC"),
                },
                (_, _) => {}
            },
        }
    };
    debug!(%reason, "SSE stream ended");
    ended.send_replace(Some(reason));
    // Dropping `tx` makes `receive` return None: rmcp's loop ends at once.
}

impl Transport<RoleClient> for SseTransport {
    type Error = SseError;

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), SseError>> + Send + 'static {
        self.poster.clone().post(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), SseError> {
        self.reader.abort();
        self.incoming.close();
        Ok(())
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects to legacy SSE servers.
#[derive(Clone)]
pub struct SseConnector {
    clients: HttpClients,
    relay: Option<Arc<dyn Relay>>,
    store: Option<roster_auth::Store>,
}

impl std::fmt::Debug for SseConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseConnector").field("clients", &self.clients).finish_non_exhaustive()
    }
}

impl SseConnector {
    /// A connector on `clients` (share them across a supervisor).
    pub fn new(clients: HttpClients) -> SseConnector {
        SseConnector { clients, relay: None, store: None }
    }

    /// The same, passing what servers send to roster on to `relay`.
    #[must_use]
    pub fn with_relay(mut self, relay: Arc<dyn Relay>) -> SseConnector {
        self.relay = Some(relay);
        self
    }

    /// A connector on clients of its own with default options.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn with_defaults() -> Result<SseConnector, SseError> {
        Ok(SseConnector::new(HttpClients::new(HttpOptions::default())?))
    }

    /// The same, sending the tokens kept in `store` to the servers logged in to.
    #[must_use]
    pub fn with_credentials(mut self, store: roster_auth::Store) -> SseConnector {
        self.store = Some(store);
        self
    }

    /// The token for a new session of `spec` (renewed first if it is about to
    /// expire). A session keeps its token: one that expires mid-session makes
    /// the server answer 401, and the next session renews it.
    async fn token(&self, spec: &ServerSpec) -> Result<Option<String>, SseError> {
        let Some(store) = &self.store else { return Ok(None) };
        let Some(entry) = store.entry_for(spec)? else { return Ok(None) };
        let tokens = roster_auth::Tokens::new(entry, spec.auth.as_ref(), self.clients.for_url("https://")?)?;
        tokens.current().await.map_err(SseError::Token)
    }

    /// Opens the stream and completes the MCP handshake before `deadline`.
    ///
    /// # Errors
    /// Typed; see [`classify`].
    pub async fn open(&self, spec: &ServerSpec, deadline: Instant) -> Result<SseSession, SseError> {
        let mut headers = to_header_map(spec)?;
        if let Some(token) = self.token(spec).await? {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| SseError::Token(roster_auth::AuthError::InvalidTokenType("not a header value".into())))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let client = self.clients.for_url(&spec.url)?;
        let transport = SseTransport::connect(client, &spec.url, headers, deadline, self.clients.options()).await?;
        let ended = transport.ended();
        let cancel = CancellationToken::new();
        let handshake =
            mcp::Client::new(&spec.name, PROTOCOL_VERSION, self.relay.clone()).serve_with_ct(transport, cancel.clone());
        let running = match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(running)) => running,
            // The stream's own end says more than the handshake's failure.
            Ok(Err(_)) if *ended.borrow() == Some(StreamEnd::TooLarge(self.clients.options().max_message_size)) => {
                return Err(SseError::EventTooLarge(self.clients.options().max_message_size));
            }
            Ok(Err(e)) => return Err(SseError::Initialize(Box::new(e))),
            Err(_) => return Err(SseError::Timeout(spec.connect_timeout())),
        };
        Ok(SseSession { client: McpClient::new(running, cancel), ended, url: spec.display_url() })
    }
}

#[async_trait]
impl Connector for SseConnector {
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        match self.open(spec, deadline).await {
            Ok(session) => Ok(Box::new(session)),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// A live SSE session.
#[derive(Debug)]
pub struct SseSession {
    client: McpClient,
    ended: watch::Receiver<Option<StreamEnd>>,
    /// For messages: secrets redacted.
    url: String,
}

#[async_trait]
impl Session for SseSession {
    async fn ping(&self, timeout: Duration) -> Result<(), Failure> {
        self.client.ping(timeout).await.map_err(|e| classify_request(&e))
    }

    fn closed(&self) -> BoxFuture<Failure> {
        let (session_ended, mut stream_ended, url) = (self.client.ended(), self.ended.clone(), self.url.clone());
        Box::pin(async move {
            session_ended.await;
            let reason = match stream_ended.wait_for(Option::is_some).await {
                Ok(reason) => reason.as_ref().map(ToString::to_string).unwrap_or_default(),
                Err(_) => "the session ended".to_owned(),
            };
            Failure::transient(format!("SSE session with {url} lost: {reason}"))
        })
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.client.close_within(CLOSE_BOUND, &format!("the SSE session with {}", self.url)).await
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
    use roster_core::FailureKind;

    use super::*;

    #[test]
    fn endpoints_resolve_against_the_base_and_stay_on_its_origin() {
        let base = Url::parse("http://127.0.0.1:8080/mcp/sse").unwrap();
        assert_eq!(
            resolve(&base, "/message?sessionId=1").unwrap().as_str(),
            "http://127.0.0.1:8080/message?sessionId=1"
        );
        assert_eq!(
            resolve(&base, "message?sessionId=1").unwrap().as_str(),
            "http://127.0.0.1:8080/mcp/message?sessionId=1"
        );
        assert_eq!(resolve(&base, "http://127.0.0.1:8080/other").unwrap().as_str(), "http://127.0.0.1:8080/other");
        for foreign in ["http://evil.example/message", "https://127.0.0.1:8080/message", "http://127.0.0.1:9090/m"] {
            assert!(matches!(resolve(&base, foreign), Err(SseError::ForeignEndpoint { .. })), "{foreign}");
        }
    }

    #[test]
    fn classification_table() {
        let table = [
            (SseError::Status(StatusInfo { status: 401, ..StatusInfo::default() }), FailureKind::NeedsCredentials),
            (SseError::Status(StatusInfo { status: 503, ..StatusInfo::default() }), FailureKind::Transient),
            (SseError::Status(StatusInfo { status: 404, ..StatusInfo::default() }), FailureKind::Permanent),
            (SseError::NoEndpoint(Duration::from_secs(1)), FailureKind::Transient),
            (SseError::StreamEnded(None), FailureKind::Transient),
            (SseError::EventTooLarge(1024), FailureKind::Transient),
            (SseError::NotAnEventStream(Some("text/html".into())), FailureKind::Permanent),
            (SseError::BadEndpoint("::".into()), FailureKind::Permanent),
            (
                SseError::ForeignEndpoint { endpoint: "http://x/".into(), base: "http://y".into() },
                FailureKind::Permanent,
            ),
            (SseError::Timeout(Duration::from_secs(1)), FailureKind::Transient),
            (
                SseError::Initialize(Box::new(ClientInitializeError::ConnectionClosed("x".into()))),
                FailureKind::Transient,
            ),
            (SseError::Initialize(Box::new(ClientInitializeError::Cancelled)), FailureKind::Cancelled),
            (SseError::Request(Box::new(ServiceError::TransportClosed)), FailureKind::Transient),
        ];
        for (error, kind) in table {
            assert_eq!(classify(&error).kind(), kind, "{error}");
        }
    }

    fn in_transport(e: SseError) -> rmcp::transport::DynamicTransportError {
        rmcp::transport::DynamicTransportError::new::<SseTransport, RoleClient>(e)
    }

    #[test]
    fn texts_name_the_transport_error_inside_rmcps() {
        assert_eq!(SseError::StreamEnded(None).to_string(), "the event stream ended before the endpoint event");
        assert_eq!(
            SseError::StreamEnded(Some("reset".into())).to_string(),
            "the event stream ended before the endpoint event: reset"
        );
        let status = || SseError::Status(StatusInfo { status: 503, ..StatusInfo::default() });
        let init = ClientInitializeError::transport::<SseTransport>(status(), "send initialize request");
        assert_eq!(SseError::Initialize(Box::new(init)).to_string(), "initialize failed: HTTP 503");
        let closed = ClientInitializeError::ConnectionClosed("eof".into());
        let text = closed.to_string();
        assert_eq!(SseError::Initialize(Box::new(closed)).to_string(), format!("initialize failed: {text}"));
        let send = ServiceError::TransportSend(in_transport(SseError::EventTooLarge(10)));
        assert_eq!(SseError::Request(Box::new(send)).to_string(), "the server sent an event larger than 10 bytes");
        assert_eq!(
            SseError::Request(Box::new(ServiceError::TransportClosed)).to_string(),
            ServiceError::TransportClosed.to_string()
        );
    }

    #[test]
    fn a_request_is_classified_by_the_transport_error_inside_it() {
        let send = |e| ServiceError::TransportSend(in_transport(e));
        let f = classify_request(&send(SseError::Status(StatusInfo { status: 401, ..StatusInfo::default() })));
        assert_eq!(f.kind(), FailureKind::NeedsCredentials);
        assert_eq!(f.message, "HTTP 401 Unauthorized");
        let f = classify_request(&send(SseError::BadEndpoint("x".into())));
        assert_eq!(f.kind(), FailureKind::Permanent, "{}", f.message);
        let foreign = rmcp::transport::DynamicTransportError::from_parts(
            "other",
            std::any::TypeId::of::<()>(),
            Box::new(std::io::Error::other("boom")),
        );
        let f = classify_request(&ServiceError::TransportSend(foreign));
        assert_eq!(f.kind(), FailureKind::Transient);
        assert!(f.message.contains("boom"), "{}", f.message);
        let refused = ServiceError::McpError(rmcp::ErrorData::invalid_params("no such tool", None));
        assert_eq!(classify_request(&refused).kind(), FailureKind::Permanent, "the server's own rejection");
        assert_eq!(classify_request(&ServiceError::TransportClosed).kind(), FailureKind::Transient);
    }

    #[test]
    fn only_a_body_error_over_the_limit_counts_as_too_large() {
        let over = sse_stream::Error::Body(Box::new(EventStreamError::TooLarge { max: 7 }));
        assert_eq!(too_large(&over), Some(7));
        let other = sse_stream::Error::Body(Box::new(std::io::Error::other("reset")));
        assert_eq!(too_large(&other), None);
        assert_eq!(too_large(&sse_stream::Error::InvalidLine), None);
    }

    #[test]
    fn stream_ends_say_why() {
        assert_eq!(StreamEnd::Closed.to_string(), "the server ended the event stream");
        assert_eq!(StreamEnd::Broke("reset".into()).to_string(), "the event stream broke: reset");
        assert_eq!(StreamEnd::TooLarge(9).to_string(), "the server sent an event larger than 9 bytes");
        assert_eq!(StreamEnd::ClientClosed.to_string(), "the client closed");
    }

    #[test]
    fn configured_headers_become_sensitive_header_values_and_a_bad_one_is_named() {
        let mut spec = ServerSpec::remote("s", roster_core::ServerType::Sse, "http://127.0.0.1/sse");
        spec.headers.insert("X-Api-Key".into(), "k".into());
        let map = to_header_map(&spec).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-api-key"], "k");
        assert!(map["x-api-key"].is_sensitive());
        spec.headers.insert("bad name".into(), "v".into());
        match to_header_map(&spec) {
            Err(SseError::InvalidHeader(e)) => assert_eq!(e.name, "bad name"),
            other => panic!("expected InvalidHeader, got {other:?}"),
        }
    }

    #[test]
    fn debug_output_shows_no_internals() {
        let connector = SseConnector::new(HttpClients::new(HttpOptions::default()).unwrap());
        assert!(format!("{connector:?}").starts_with("SseConnector { clients: "));
    }

    #[test]
    fn a_transport_error_inside_initialize_is_classified_by_its_own_type() {
        let inner =
            SseError::Status(StatusInfo { status: 503, retry_after: Some("9".into()), ..StatusInfo::default() });
        let e = ClientInitializeError::transport::<SseTransport>(inner, "send initialize request");
        let f = classify(&SseError::Initialize(Box::new(e)));
        assert_eq!(f.class, roster_core::FailureClass::Transient { retry_after: Some(Duration::from_secs(9)) });
    }
}
