//! `SseTransport` against a real HTTP server on 127.0.0.1 whose event stream the
//! test writes byte by byte: the endpoint handshake, where posts go, what reaches
//! rmcp, and why a stream ends. The MCP handshake on top of it is tested end to
//! end in `roster-tests` against the fixture.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use roster_http::{HttpClients, HttpOptions};
use roster_transport_sse::{SseConnector, SseError, SseTransport, StreamEnd};
use tokio::sync::mpsc;

/// How the server answers the `GET` of its event stream.
struct Answer {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl Answer {
    fn stream() -> Answer {
        Answer { status: 200, content_type: "text/event-stream", headers: Vec::new() }
    }
}

/// A request posted to the server.
#[derive(Debug)]
struct Post {
    target: String,
    headers: HeaderMap,
    body: serde_json::Value,
}

struct Shared {
    answer: Answer,
    chunks: Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>,
    posts: mpsc::UnboundedSender<Post>,
    post_status: u16,
    /// When set, `initialize` is answered on the stream (`Some(true)`: with a
    /// result, `Some(false)`: with an error); nothing else is.
    handshake: Option<(bool, mpsc::UnboundedSender<Bytes>)>,
}

/// An HTTP server on 127.0.0.1: `GET /sse` answers as told, with a body the test
/// writes through `chunks`; every `POST` is recorded in `posts`.
struct Server {
    url: String,
    chunks: mpsc::UnboundedSender<Bytes>,
    posts: mpsc::UnboundedReceiver<Post>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stream(State(shared): State<Arc<Shared>>) -> Response {
    let chunks = shared.chunks.lock().unwrap().take().expect("one GET per server");
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), chunks))
    });
    let mut response =
        Response::builder().status(shared.answer.status).header("content-type", shared.answer.content_type);
    for (name, value) in &shared.answer.headers {
        response = response.header(*name, *value);
    }
    response.body(Body::from_stream(body)).unwrap()
}

async fn post(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let target = uri.path_and_query().map(ToString::to_string).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if let Some((accept, stream)) = &shared.handshake
        && body["method"] == "initialize"
    {
        let outcome = if *accept {
            serde_json::json!({"result": {"protocolVersion": "2024-11-05", "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}}})
        } else {
            serde_json::json!({"error": {"code": -32600, "message": "refused"}})
        };
        let mut answer = serde_json::json!({"jsonrpc": "2.0", "id": body["id"]});
        answer.as_object_mut().unwrap().extend(outcome.as_object().unwrap().clone());
        let _ = stream.send(Bytes::from(format!("event: message\ndata: {answer}\n\n")));
    }
    let _ = shared.posts.send(Post { target, headers, body });
    StatusCode::from_u16(shared.post_status).unwrap()
}

impl Server {
    async fn start(answer: Answer, post_status: u16) -> Server {
        Server::serve(answer, post_status, None).await
    }

    /// A server that answers `initialize` on its stream (with a result if
    /// `accept`, else with an error) and nothing else, not even `ping`.
    async fn handshaking(accept: bool) -> Server {
        Server::serve(Answer::stream(), 202, Some(accept)).await
    }

    async fn serve(answer: Answer, post_status: u16, handshake: Option<bool>) -> Server {
        let (chunks, chunks_rx) = mpsc::unbounded_channel();
        let (posts_tx, posts) = mpsc::unbounded_channel();
        let handshake = handshake.map(|accept| (accept, chunks.clone()));
        let shared =
            Arc::new(Shared { answer, chunks: Mutex::new(Some(chunks_rx)), posts: posts_tx, post_status, handshake });
        let app = Router::new().route("/sse", get(stream)).fallback(post).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sse", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { url, chunks, posts, task }
    }

    /// Writes `text` to the event stream.
    fn write(&self, text: &str) {
        self.chunks.send(Bytes::from(text.to_owned())).expect("the stream is open");
    }

    /// Ends the event stream's body, as a server closing it does.
    fn end(&mut self) {
        self.chunks = mpsc::unbounded_channel().0;
    }

    async fn next_post(&mut self) -> Post {
        tokio::time::timeout(Duration::from_secs(5), self.posts.recv())
            .await
            .expect("a post within 5 s")
            .expect("the server runs")
    }
}

fn options(max_message_size: usize) -> HttpOptions {
    HttpOptions { max_message_size, ..HttpOptions::default() }
}

fn client(options: &HttpOptions) -> reqwest::Client {
    HttpClients::new(*options).unwrap().for_url("http://127.0.0.1/").unwrap()
}

async fn connect_with(server: &Server, headers: HeaderMap, options: &HttpOptions) -> Result<SseTransport, SseError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    SseTransport::connect(client(options), &server.url, headers, deadline, options).await
}

async fn connect(server: &Server) -> Result<SseTransport, SseError> {
    connect_with(server, HeaderMap::new(), &options(64 * 1024)).await
}

fn ping(id: u32) -> ClientJsonRpcMessage {
    serde_json::from_value(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"})).unwrap()
}

/// A `message` event holding the answer to request `id`.
fn answer(id: u32) -> String {
    format!("event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}\n\n")
}

fn id_of(message: &ServerJsonRpcMessage) -> serde_json::Value {
    serde_json::to_value(message).unwrap()["id"].clone()
}

async fn receive(transport: &mut SseTransport) -> Option<ServerJsonRpcMessage> {
    tokio::time::timeout(Duration::from_secs(5), Transport::<RoleClient>::receive(transport))
        .await
        .expect("receive answers within 5 s")
}

async fn ended(transport: &SseTransport) -> StreamEnd {
    let mut ended = transport.ended();
    let end = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(Option::is_some))
        .await
        .expect("the stream ends within 5 s")
        .expect("the reader reports its end");
    end.clone().unwrap()
}

#[tokio::test]
async fn an_error_status_is_typed_with_its_challenges_and_retry_after() {
    let server = Server::start(
        Answer {
            status: 401,
            content_type: "text/plain",
            headers: vec![
                ("www-authenticate", "Bearer realm=\"a\""),
                ("www-authenticate", "Basic realm=\"b\""),
                ("retry-after", "7"),
            ],
        },
        202,
    )
    .await;
    match connect(&server).await {
        Err(SseError::Status(info)) => {
            assert_eq!(info.status, 401);
            assert_eq!(info.www_authenticate, ["Bearer realm=\"a\"", "Basic realm=\"b\""]);
            assert_eq!(info.retry_after.as_deref(), Some("7"));
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_that_is_not_an_event_stream_is_refused_with_its_type() {
    let server = Server::start(Answer { content_type: "text/html", ..Answer::stream() }, 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    match connect(&server).await {
        Err(SseError::NotAnEventStream(media)) => assert_eq!(media.as_deref(), Some("text/html")),
        other => panic!("expected NotAnEventStream, got {other:?}"),
    }
}

#[tokio::test]
async fn the_event_stream_type_is_matched_without_case_or_parameters() {
    let server =
        Server::start(Answer { content_type: "Text/Event-Stream; charset=utf-8", ..Answer::stream() }, 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    assert!(connect(&server).await.is_ok());
}

#[tokio::test]
async fn the_endpoint_event_is_awaited_past_other_events_and_posts_go_there_with_the_headers() {
    let mut server = Server::start(Answer::stream(), 202).await;
    server.write(": a comment\n\nevent: message\ndata: /not-the-endpoint\n\nevent: ping\ndata: /nor-this\n\n");
    server.write("event: endpoint\ndata: /messages?session=1\n\n");
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", "k-1".parse().unwrap());
    let mut transport = connect_with(&server, headers, &options(64 * 1024)).await.unwrap();
    Transport::<RoleClient>::send(&mut transport, ping(1)).await.unwrap();
    let post = server.next_post().await;
    assert_eq!(post.target, "/messages?session=1");
    assert_eq!(post.headers["content-type"], "application/json");
    assert_eq!(post.headers["x-api-key"], "k-1");
    assert_eq!(post.body["method"], "ping");
    assert_eq!(post.body["id"], 1);
}

#[tokio::test]
async fn a_post_answered_with_an_error_status_fails_the_send() {
    let server = Server::start(Answer::stream(), 500).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let mut transport = connect(&server).await.unwrap();
    match Transport::<RoleClient>::send(&mut transport, ping(1)).await {
        Err(SseError::Status(info)) => assert_eq!(info.status, 500),
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_reach_rmcp_and_a_new_endpoint_on_the_same_origin_moves_the_posts() {
    let mut server = Server::start(Answer::stream(), 202).await;
    server.write("event: endpoint\ndata: /first\n\n");
    let mut transport = connect(&server).await.unwrap();
    server.write(&answer(1));
    assert_eq!(id_of(&receive(&mut transport).await.unwrap()), 1);
    // Not JSON-RPC, or not a message: skipped. No event name means `message`.
    server.write("event: message\ndata: not json\n\n");
    server.write("event: other\ndata: {\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{}}\n\n");
    server.write("data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n");
    assert_eq!(id_of(&receive(&mut transport).await.unwrap()), 2);
    // An endpoint on another origin is ignored; one on the same origin is taken.
    server.write("event: endpoint\ndata: http://192.0.2.1/elsewhere\n\n");
    server.write(&answer(3));
    assert_eq!(id_of(&receive(&mut transport).await.unwrap()), 3);
    Transport::<RoleClient>::send(&mut transport, ping(4)).await.unwrap();
    assert_eq!(server.next_post().await.target, "/first");
    server.write("event: endpoint\ndata: /second?s=2\n\n");
    server.write(&answer(5));
    assert_eq!(id_of(&receive(&mut transport).await.unwrap()), 5);
    Transport::<RoleClient>::send(&mut transport, ping(6)).await.unwrap();
    assert_eq!(server.next_post().await.target, "/second?s=2");
}

#[tokio::test]
async fn the_server_ending_the_stream_ends_the_transport_and_says_so() {
    let server = Server::start(Answer::stream(), 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let mut transport = connect(&server).await.unwrap();
    assert_eq!(format!("{transport:?}"), "SseTransport { .. }");
    assert_eq!(*transport.ended().borrow(), None, "not ended while the stream is open");
    server.write(&answer(1));
    drop(server);
    assert_eq!(id_of(&receive(&mut transport).await.unwrap()), 1, "what came before the end is kept");
    assert!(receive(&mut transport).await.is_none());
    assert_eq!(ended(&transport).await, StreamEnd::Closed);
}

#[tokio::test]
async fn a_stream_that_ends_or_breaks_before_the_endpoint_fails_the_connect() {
    let mut server = Server::start(Answer::stream(), 202).await;
    server.write("event: message\ndata: {}\n\n");
    server.end();
    let result = connect(&server).await;
    assert!(matches!(result, Err(SseError::StreamEnded(None))), "{result:?}");

    let server = Server::start(Answer::stream(), 202).await;
    server.chunks.send(Bytes::from_static(b"data: \xff\xfe\n\n")).unwrap();
    match connect(&server).await {
        Err(SseError::StreamEnded(Some(why))) => assert!(!why.is_empty()),
        other => panic!("expected StreamEnded with a reason, got {other:?}"),
    }
}

#[tokio::test]
async fn no_endpoint_before_the_deadline_is_a_timeout() {
    let server = Server::start(Answer::stream(), 202).await;
    server.write(": keep-alive\n\n");
    let options = options(64 * 1024);
    let deadline = Instant::now() + Duration::from_millis(300);
    let result = SseTransport::connect(client(&options), &server.url, HeaderMap::new(), deadline, &options).await;
    assert!(matches!(result, Err(SseError::NoEndpoint(_))), "{result:?}");
}

#[tokio::test]
async fn an_event_over_the_limit_fails_the_connect_or_ends_the_stream() {
    let big = format!("event: message\ndata: {}\n\n", "x".repeat(1000));

    let server = Server::start(Answer::stream(), 202).await;
    server.write(&big);
    let result = connect_with(&server, HeaderMap::new(), &options(256)).await;
    assert!(matches!(result, Err(SseError::EventTooLarge(256))), "{result:?}");

    let server = Server::start(Answer::stream(), 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let mut transport = connect_with(&server, HeaderMap::new(), &options(256)).await.unwrap();
    server.write(&big);
    assert!(receive(&mut transport).await.is_none());
    assert_eq!(ended(&transport).await, StreamEnd::TooLarge(256));
}

#[tokio::test]
async fn closing_or_dropping_the_transport_lets_go_of_the_stream() {
    let server = Server::start(Answer::stream(), 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let mut transport = connect(&server).await.unwrap();
    Transport::<RoleClient>::close(&mut transport).await.unwrap();
    assert!(receive(&mut transport).await.is_none(), "receive ends at once after close");
    gone(&server).await;

    let server = Server::start(Answer::stream(), 202).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let transport = connect(&server).await.unwrap();
    drop(transport);
    gone(&server).await;
}

/// Waits (at most 5 s) until the client has dropped the event stream's connection.
async fn gone(server: &Server) {
    let closed = tokio::time::timeout(Duration::from_secs(5), server.chunks.closed()).await;
    assert!(closed.is_ok(), "the client let go of the stream");
}

/// Keeps `access` for `entry`, received now, living an hour.
fn keep(entry: &roster_auth::Entry, access: &str) {
    let token = serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let credentials = rmcp::transport::auth::StoredCredentials::new(
        "c".into(),
        Some(serde_json::from_value(token).unwrap()),
        vec![],
        Some(now),
    );
    entry.write(&entry.record(credentials)).unwrap();
}

#[tokio::test]
async fn a_session_sends_the_kept_token_and_fails_its_ping_when_the_server_stops_answering() {
    use roster_transport::Session as _;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::handshaking(true).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let store = roster_auth::Store::new(dir.path().join("creds"));
    keep(&store.entry("docs", &server.url), "tok-1");
    let spec = roster_core::ServerSpec::remote("docs", roster_core::ServerType::Sse, server.url.clone());
    let connector = SseConnector::new(HttpClients::new(options(64 * 1024)).unwrap()).with_credentials(store);
    let session = connector.open(&spec, Instant::now() + Duration::from_secs(5)).await.unwrap();
    let initialize = server.next_post().await;
    assert_eq!(initialize.body["method"], "initialize");
    assert_eq!(initialize.headers["authorization"], "Bearer tok-1");
    let failure = session.ping(Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(failure.kind(), roster_core::FailureKind::Transient, "{failure}");
}

#[tokio::test]
async fn a_refused_handshake_is_told_as_such_while_the_stream_lives() {
    let server = Server::handshaking(false).await;
    server.write("event: endpoint\ndata: /messages\n\n");
    let spec = roster_core::ServerSpec::remote("docs", roster_core::ServerType::Sse, server.url.clone());
    let connector = SseConnector::new(HttpClients::new(options(64 * 1024)).unwrap());
    match connector.open(&spec, Instant::now() + Duration::from_secs(5)).await {
        Err(e @ SseError::Initialize(_)) => {
            assert_eq!(roster_transport_sse::classify(&e).kind(), roster_core::FailureKind::Permanent, "{e}");
        }
        other => panic!("expected an initialize error, got {other:?}"),
    }
}
