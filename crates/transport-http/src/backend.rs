//! roster's HTTP backend for rmcp's Streamable HTTP client.
//!
//! rmcp's own reqwest backend reports 401/403 without a challenge, 408 and most
//! 4xx only as text. This one answers every non-2xx with a typed error, so that
//! classification never reads a message: 401 → `AuthRequired` (with the
//! challenge, or an empty one), 403 with `insufficient_scope` → `InsufficientScope`,
//! 404 on a session → `SessionExpired` (rmcp re-initializes once), anything else →
//! `HttpStatus { status, retry_after }`.
//!
//! It also holds what a server sends to a size: a JSON response above the limit
//! is refused before it is read whole, and an event stream (a POST's reply or the
//! `GET` stream) fails at the first event above the limit. Either one also tells
//! the session, which then fails at once with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, StreamableHttpClient, StreamableHttpError,
    StreamableHttpPostResponse,
};
use roster_http::{EventStreamError, limit_events};
use sse_stream::{Error as SseError, Sse, SseStream};
use tokio::sync::watch;
use tracing::{debug, warn};

const SESSION_ID: &str = "mcp-session-id";
const LAST_EVENT_ID: &str = "last-event-id";
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// A reqwest client that types every HTTP status, for one session. Cheap to clone
/// (the connection pool is the shared client's).
#[derive(Clone, Debug)]
pub struct Backend {
    client: reqwest::Client,
    request_timeout: Duration,
    max_message_size: usize,
    /// Where the session hears that the server sent more than it may.
    fault: Arc<watch::Sender<Option<String>>>,
}

impl Backend {
    /// `client` for every request; POST and DELETE requests time out after
    /// `request_timeout` (the long-lived GET stream does not); responses and events
    /// are held to `max_message_size` bytes, and a breach is told to `fault`.
    pub fn new(
        client: reqwest::Client,
        request_timeout: Duration,
        max_message_size: usize,
        fault: Arc<watch::Sender<Option<String>>>,
    ) -> Backend {
        Backend { client, request_timeout, max_message_size, fault }
    }

    fn too_large(&self, what: &str) {
        let why = format!("the server sent {what} larger than {} bytes", self.max_message_size);
        warn!(%why, "dropping the session");
        self.fault.send_replace(Some(why));
    }

    fn sse(&self, response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
        let this = self.clone();
        let body = limit_events(response.bytes_stream(), self.max_message_size).inspect_err(move |e| {
            if let EventStreamError::TooLarge { .. } = e {
                this.too_large("an event");
            }
        });
        SseStream::from_bytes_stream(body).boxed()
    }

    async fn read_json(&self, response: reqwest::Response) -> Result<Vec<u8>, Error> {
        let max = self.max_message_size;
        if response.content_length().is_some_and(|n| n > max as u64) {
            self.too_large("a response");
            return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: max });
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StreamableHttpError::Client(e.without_url()))?;
            if body.len() + chunk.len() > max {
                self.too_large("a response");
                return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: max });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

type Error = StreamableHttpError<reqwest::Error>;

fn with_headers(
    mut request: reqwest::RequestBuilder,
    headers: HashMap<HeaderName, HeaderValue>,
) -> reqwest::RequestBuilder {
    for (name, mut value) in headers {
        // Never shown in reqwest's or hyper's debug output.
        value.set_sensitive(true);
        request = request.header(name, value);
    }
    request
}

fn challenges(headers: &HeaderMap) -> String {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ")
}

/// The typed error for a non-2xx response.
fn status_error(status: StatusCode, headers: &HeaderMap, session_attached: bool) -> Error {
    match status {
        StatusCode::UNAUTHORIZED => StreamableHttpError::AuthRequired(AuthRequiredError::new(challenges(headers))),
        StatusCode::FORBIDDEN => {
            let header = challenges(headers);
            let challenge = roster_core::Challenge::parse(&header);
            if challenge.is_insufficient_scope() {
                StreamableHttpError::InsufficientScope(InsufficientScopeError::new(header, challenge.scope))
            } else {
                StreamableHttpError::HttpStatus(HttpStatusError::new(status.as_u16(), None))
            }
        }
        StatusCode::NOT_FOUND if session_attached => StreamableHttpError::SessionExpired,
        _ => {
            let retry_after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            StreamableHttpError::HttpStatus(HttpStatusError::new(status.as_u16(), retry_after))
        }
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

impl StreamableHttpClient for Backend {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Error> {
        let mut request = self
            .client
            .post(uri.as_ref())
            .timeout(self.request_timeout)
            .header(ACCEPT, format!("{JSON}, {EVENT_STREAM}"))
            .header(CONTENT_TYPE, JSON)
            .body(serde_json::to_vec(&message).map_err(StreamableHttpError::Deserialize)?);
        if let Some(token) = auth_header {
            request = request.bearer_auth(token);
        }
        let session_attached = session_id.is_some();
        if let Some(id) = session_id {
            request = request.header(SESSION_ID, id.as_ref());
        }
        let response = with_headers(request, custom_headers)
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.without_url()))?;
        let status = response.status();
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if !status.is_success() {
            debug!(%status, "POST answered with an error status");
            return Err(status_error(status, response.headers(), session_attached));
        }
        let new_session = response.headers().get(SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let awaits_nothing = matches!(
            message,
            ClientJsonRpcMessage::Notification(_) | ClientJsonRpcMessage::Response(_) | ClientJsonRpcMessage::Error(_)
        );
        match media_type(response.headers()).as_deref() {
            Some(EVENT_STREAM) => Ok(StreamableHttpPostResponse::Sse(self.sse(response), new_session)),
            Some(JSON) => {
                let body = self.read_json(response).await?;
                match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                    Ok(parsed) => Ok(StreamableHttpPostResponse::Json(parsed, new_session)),
                    Err(_) if awaits_nothing => Ok(StreamableHttpPostResponse::Accepted),
                    Err(e) => Err(StreamableHttpError::Deserialize(e)),
                }
            }
            // Servers that answer a notification with 200 and no body are common.
            _ if awaits_nothing => Ok(StreamableHttpPostResponse::Accepted),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Error> {
        let mut request =
            self.client.delete(uri.as_ref()).timeout(self.request_timeout).header(SESSION_ID, session_id.as_ref());
        if let Some(token) = auth_header {
            request = request.bearer_auth(token);
        }
        let response = with_headers(request, custom_headers)
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.without_url()))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(status_error(status, response.headers(), false))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Error> {
        let mut request = self.client.get(uri.as_ref()).header(ACCEPT, format!("{EVENT_STREAM}, {JSON}"));
        let session_attached = session_id.is_some();
        if let Some(id) = session_id {
            request = request.header(SESSION_ID, id.as_ref());
        }
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_ID, id);
        }
        if let Some(token) = auth_header {
            request = request.bearer_auth(token);
        }
        let response = with_headers(request, custom_headers)
            .send()
            .await
            .map_err(|e| StreamableHttpError::Client(e.without_url()))?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if !status.is_success() {
            return Err(status_error(status, response.headers(), session_attached));
        }
        match media_type(response.headers()).as_deref() {
            Some(EVENT_STREAM) => Ok(self.sse(response)),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }
}
