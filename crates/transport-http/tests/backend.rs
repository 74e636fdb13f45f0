//! roster's Streamable HTTP backend (and its token wrapper) against a real HTTP
//! server on 127.0.0.1 that answers each request as the test told it: what is
//! sent, how every status is typed, how answers are read and held to the size
//! limit. The MCP sessions on top are tested end to end in `roster-tests`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::auth::StoredCredentials;
use rmcp::transport::streamable_http_client::{StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse};
use roster_auth::{Entry, Store, Tokens};
use roster_http::{HttpClients, HttpOptions};
use roster_transport_http::{Authed, Backend};
use tokio::sync::watch;

type Error = StreamableHttpError<reqwest::Error>;

/// One answer: status, headers, and a body in chunks (sent with its length, or
/// chunked without one).
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    chunks: Vec<Vec<u8>>,
    with_length: bool,
}

fn answer(status: u16) -> Canned {
    Canned { status, headers: Vec::new(), chunks: Vec::new(), with_length: true }
}

impl Canned {
    fn header(mut self, name: &'static str, value: &str) -> Canned {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn body(mut self, body: &str) -> Canned {
        self.chunks = vec![body.as_bytes().to_vec()];
        self
    }

    fn json(self, body: &str) -> Canned {
        self.header("content-type", "application/json").body(body)
    }

    /// The body in the given chunks, without a content length.
    fn chunked(mut self, chunks: &[&str]) -> Canned {
        self.chunks = chunks.iter().map(|c| c.as_bytes().to_vec()).collect();
        self.with_length = false;
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Shared {
    answers: Mutex<VecDeque<Canned>>,
    seen: Mutex<Vec<Seen>>,
}

async fn respond(State(shared): State<Arc<Shared>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    shared.seen.lock().unwrap().push(Seen { method, headers, body });
    let canned = shared.answers.lock().unwrap().pop_front().unwrap_or_else(|| answer(599));
    let mut response = Response::builder().status(canned.status);
    for (name, value) in &canned.headers {
        response = response.header(*name, value);
    }
    let body = if canned.with_length {
        Body::from(canned.chunks.concat())
    } else {
        Body::from_stream(futures::stream::iter(canned.chunks.into_iter().map(Ok::<_, std::convert::Infallible>)))
    };
    response.body(body).unwrap()
}

struct Server {
    uri: Arc<str>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(answers: impl IntoIterator<Item = Canned>) -> Server {
        let shared = Arc::new(Shared::default());
        shared.answers.lock().unwrap().extend(answers);
        let app = Router::new().fallback(respond).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/mcp", listener.local_addr().unwrap()).into();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { uri, shared, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

fn client() -> reqwest::Client {
    HttpClients::new(HttpOptions::default()).unwrap().for_url("http://127.0.0.1/").unwrap()
}

/// A backend reading at most `max` bytes, and where it reports a breach.
fn backend(max: usize) -> (Backend, watch::Receiver<Option<String>>) {
    let (tx, rx) = watch::channel(None);
    (Backend::new(client(), Duration::from_secs(5), max, Arc::new(tx)), rx)
}

fn message(value: serde_json::Value) -> ClientJsonRpcMessage {
    serde_json::from_value(value).unwrap()
}

fn ping() -> ClientJsonRpcMessage {
    message(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
}

fn initialized() -> ClientJsonRpcMessage {
    message(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
}

/// The answer to `ping`, padded with spaces to `len` bytes.
fn result(len: usize) -> String {
    let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
    format!("{body}{}", " ".repeat(len - body.len()))
}

fn no_headers() -> HashMap<HeaderName, HeaderValue> {
    HashMap::new()
}

async fn post(
    backend: &Backend,
    server: &Server,
    message: ClientJsonRpcMessage,
    session: Option<&str>,
) -> Result<StreamableHttpPostResponse, Error> {
    backend.post_message(server.uri.clone(), message, session.map(Arc::from), None, no_headers()).await
}

#[tokio::test]
async fn a_post_carries_the_session_token_and_headers_and_its_json_answer_is_read_whole() {
    let server = Server::start([answer(200)
        .header("content-type", "Application/JSON; charset=utf-8")
        .header("mcp-session-id", "s-2")
        .body(&result(40))])
    .await;
    let (backend, _) = backend(1024);
    let custom = HashMap::from([(HeaderName::from_static("x-api-key"), HeaderValue::from_static("k-1"))]);
    let response =
        backend.post_message(server.uri.clone(), ping(), Some("s-1".into()), Some("tok".into()), custom).await.unwrap();
    match response {
        StreamableHttpPostResponse::Json(parsed, session) => {
            assert_eq!(serde_json::to_value(&parsed).unwrap()["id"], 1);
            assert_eq!(session.as_deref(), Some("s-2"));
        }
        other => panic!("expected a JSON answer, got {other:?}"),
    }
    let seen = &server.seen()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.headers["accept"], "application/json, text/event-stream");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["authorization"], "Bearer tok");
    assert_eq!(seen.headers["mcp-session-id"], "s-1");
    assert_eq!(seen.headers["x-api-key"], "k-1");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["method"], "ping");
}

#[tokio::test]
async fn json_answers_are_held_to_the_limit_whether_their_length_is_told_or_not() {
    let at_limit = result(100);
    let (first, second) = at_limit.split_at(50);
    let over = result(101);
    let (over_first, over_second) = over.split_at(50);
    let server = Server::start([
        answer(200).json(&at_limit),
        answer(200).header("content-type", "application/json").chunked(&[first, second]),
        answer(200).json(&over),
        answer(200).header("content-type", "application/json").chunked(&[over_first, over_second]),
    ])
    .await;
    let (backend, fault) = backend(100);
    for how in ["with its length", "chunked"] {
        let response = post(&backend, &server, ping(), None).await;
        assert!(matches!(response, Ok(StreamableHttpPostResponse::Json(..))), "{how}: {response:?}");
    }
    assert_eq!(*fault.borrow(), None, "nothing over the limit yet");
    for how in ["with its length", "chunked"] {
        let response = post(&backend, &server, ping(), None).await;
        assert!(
            matches!(response, Err(StreamableHttpError::ResponseBodyTooLarge { max_size: 100 })),
            "{how}: {response:?}"
        );
    }
    assert_eq!(fault.borrow().as_deref(), Some("the server sent a response larger than 100 bytes"));
}

#[tokio::test]
async fn every_error_status_is_typed_with_what_it_carries() {
    let server = Server::start([
        answer(401).header("www-authenticate", "Bearer realm=\"a\"").header("www-authenticate", "Basic realm=\"b\""),
        answer(403).header("www-authenticate", "Bearer error=\"insufficient_scope\", scope=\"admin\""),
        answer(403).header("www-authenticate", "Bearer realm=\"a\""),
        answer(404),
        answer(404),
        answer(503).header("retry-after", "4"),
        answer(400),
    ])
    .await;
    let (backend, _) = backend(1024);
    match post(&backend, &server, ping(), Some("s")).await {
        Err(StreamableHttpError::AuthRequired(e)) => {
            assert_eq!(e.www_authenticate_header, "Bearer realm=\"a\", Basic realm=\"b\"");
        }
        other => panic!("401: {other:?}"),
    }
    match post(&backend, &server, ping(), Some("s")).await {
        Err(StreamableHttpError::InsufficientScope(e)) => assert_eq!(e.required_scope.as_deref(), Some("admin")),
        other => panic!("403 insufficient_scope: {other:?}"),
    }
    match post(&backend, &server, ping(), Some("s")).await {
        Err(StreamableHttpError::HttpStatus(e)) => assert_eq!((e.status, e.retry_after), (403, None)),
        other => panic!("403: {other:?}"),
    }
    let response = post(&backend, &server, ping(), Some("s")).await;
    assert!(matches!(response, Err(StreamableHttpError::SessionExpired)), "404 on a session: {response:?}");
    match post(&backend, &server, ping(), None).await {
        Err(StreamableHttpError::HttpStatus(e)) => assert_eq!(e.status, 404, "404 without a session"),
        other => panic!("404 without a session: {other:?}"),
    }
    match post(&backend, &server, ping(), Some("s")).await {
        Err(StreamableHttpError::HttpStatus(e)) => assert_eq!((e.status, e.retry_after.as_deref()), (503, Some("4"))),
        other => panic!("503: {other:?}"),
    }
    match post(&backend, &server, ping(), Some("s")).await {
        Err(StreamableHttpError::HttpStatus(e)) => assert_eq!(e.status, 400),
        other => panic!("400: {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_that_is_neither_json_nor_a_stream_is_accepted_only_for_a_notification() {
    let server = Server::start([
        answer(202),
        answer(204),
        answer(200),
        answer(200).json("not json"),
        answer(200).header("content-type", "text/html").body("<html>"),
        answer(200).json("not json"),
    ])
    .await;
    let (backend, _) = backend(1024);
    for (message, what) in
        [(ping(), "202"), (ping(), "204"), (initialized(), "200, no body"), (initialized(), "200, bad JSON")]
    {
        let response = post(&backend, &server, message, None).await;
        assert!(matches!(response, Ok(StreamableHttpPostResponse::Accepted)), "{what}: {response:?}");
    }
    match post(&backend, &server, ping(), None).await {
        Err(StreamableHttpError::UnexpectedContentType(media)) => assert_eq!(media.as_deref(), Some("text/html")),
        other => panic!("HTML for a request: {other:?}"),
    }
    let response = post(&backend, &server, ping(), None).await;
    assert!(matches!(response, Err(StreamableHttpError::Deserialize(_))), "bad JSON for a request: {response:?}");
}

#[tokio::test]
async fn an_event_stream_answer_is_read_as_events() {
    let server = Server::start([answer(200)
        .header("content-type", "text/event-stream")
        .header("mcp-session-id", "s-9")
        .body("id: e-1\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n")])
    .await;
    let (backend, _) = backend(1024);
    match post(&backend, &server, ping(), None).await {
        Ok(StreamableHttpPostResponse::Sse(mut events, session)) => {
            assert_eq!(session.as_deref(), Some("s-9"));
            let event = events.next().await.unwrap().unwrap();
            assert_eq!(event.id.as_deref(), Some("e-1"));
            assert!(event.data.unwrap().contains("\"result\""));
        }
        other => panic!("expected a stream, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_is_deleted_with_its_id_and_a_server_that_cannot_delete_is_fine() {
    let server = Server::start([answer(200), answer(405), answer(404), answer(500)]).await;
    let (backend, _) = backend(1024);
    for status in [200, 405, 404] {
        let result = backend.delete_session(server.uri.clone(), "s-1".into(), Some("tok".into()), no_headers()).await;
        assert!(result.is_ok(), "{status}: {result:?}");
    }
    match backend.delete_session(server.uri.clone(), "s-1".into(), None, no_headers()).await {
        Err(StreamableHttpError::HttpStatus(e)) => assert_eq!(e.status, 500),
        other => panic!("500: {other:?}"),
    }
    let seen = &server.seen()[0];
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.headers["mcp-session-id"], "s-1");
    assert_eq!(seen.headers["authorization"], "Bearer tok");
}

#[tokio::test]
async fn the_get_stream_is_typed_like_a_post_and_its_events_are_held_to_the_limit() {
    let big = format!("data: {}\n\n", "x".repeat(200));
    let server = Server::start([
        answer(405),
        answer(404),
        answer(200).header("content-type", "text/html").body("<html>"),
        answer(200).header("content-type", "text/event-stream").chunked(&["data: one\n\n", &big]),
    ])
    .await;
    let (backend, fault) = backend(100);
    let get = |session: Option<&str>, last: Option<&str>| {
        backend.get_stream(
            server.uri.clone(),
            session.map(Arc::from),
            last.map(str::to_owned),
            Some("tok".into()),
            no_headers(),
        )
    };
    let result = get(Some("s"), None).await;
    assert!(matches!(result, Err(StreamableHttpError::ServerDoesNotSupportSse)), "405: {:?}", result.err());
    let result = get(Some("s"), None).await;
    assert!(matches!(result, Err(StreamableHttpError::SessionExpired)), "404: {:?}", result.err());
    match get(Some("s"), None).await {
        Err(StreamableHttpError::UnexpectedContentType(media)) => assert_eq!(media.as_deref(), Some("text/html")),
        other => panic!("HTML: {:?}", other.err()),
    }
    let mut events = get(Some("s"), Some("e-7")).await.unwrap();
    assert_eq!(events.next().await.unwrap().unwrap().data.as_deref(), Some("one"));
    assert!(events.next().await.unwrap().is_err(), "an event over the limit breaks the stream");
    assert_eq!(fault.borrow().as_deref(), Some("the server sent an event larger than 100 bytes"));
    let seen = &server.seen()[3];
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.headers["accept"], "text/event-stream, application/json");
    assert_eq!(seen.headers["mcp-session-id"], "s");
    assert_eq!(seen.headers["last-event-id"], "e-7");
    assert_eq!(seen.headers["authorization"], "Bearer tok");
}

/// Keeps `access` for `entry`, received now, living an hour, without a refresh token.
fn keep(entry: &Entry, access: &str) {
    let token = serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let credentials =
        StoredCredentials::new("c".into(), Some(serde_json::from_value(token).unwrap()), vec![], Some(now));
    entry.write(&entry.record(credentials)).unwrap();
}

fn authorizations(server: &Server) -> Vec<String> {
    server.seen().iter().map(|s| s.headers["authorization"].to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_by_the_one_another_process_saved() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start([answer(401), answer(200).json(&result(40))]).await;
    let entry = Store::new(dir.path().join("creds")).entry("docs", &server.uri);
    keep(&entry, "tok-1");
    let tokens = Tokens::new(entry.clone(), None, client()).unwrap();
    assert_eq!(tokens.current().await.unwrap().as_deref(), Some("tok-1"));
    keep(&entry, "tok-2");
    let authed = Authed::new(backend(1024).0, Some(tokens));
    let response = authed.post_message(server.uri.clone(), ping(), None, None, no_headers()).await;
    assert!(matches!(response, Ok(StreamableHttpPostResponse::Json(..))), "{response:?}");
    assert_eq!(authorizations(&server), ["Bearer tok-1", "Bearer tok-2"]);
}

#[tokio::test]
async fn a_refused_token_with_nothing_newer_is_auth_required_after_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start([answer(401).header("www-authenticate", "Bearer realm=\"r\""), answer(200)]).await;
    let entry = Store::new(dir.path().join("creds")).entry("docs", &server.uri);
    keep(&entry, "tok-1");
    let authed = Authed::new(backend(1024).0, Some(Tokens::new(entry, None, client()).unwrap()));
    match authed.post_message(server.uri.clone(), ping(), None, None, no_headers()).await {
        Err(StreamableHttpError::AuthRequired(e)) => assert_eq!(e.www_authenticate_header, "Bearer realm=\"r\""),
        other => panic!("expected auth required, got {other:?}"),
    }
    assert_eq!(authorizations(&server), ["Bearer tok-1"]);
}

#[tokio::test]
async fn deletes_and_streams_carry_the_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start([answer(200), answer(200).header("content-type", "text/event-stream").body("data: x\n\n")]).await;
    let entry = Store::new(dir.path().join("creds")).entry("docs", &server.uri);
    keep(&entry, "tok-1");
    let authed = Authed::new(backend(1024).0, Some(Tokens::new(entry, None, client()).unwrap()));
    authed.delete_session(server.uri.clone(), "s-1".into(), None, no_headers()).await.unwrap();
    let mut events = authed.get_stream(server.uri.clone(), Some("s-1".into()), None, None, no_headers()).await.unwrap();
    assert_eq!(events.next().await.unwrap().unwrap().data.as_deref(), Some("x"));
    assert_eq!(authorizations(&server), ["Bearer tok-1", "Bearer tok-1"]);
    let unauthed = Authed::new(backend(1024).0, None);
    let server = Server::start([answer(200)]).await;
    unauthed.delete_session(server.uri.clone(), "s-1".into(), None, no_headers()).await.unwrap();
    assert!(!server.seen()[0].headers.contains_key("authorization"), "no token source, no header");
}
