//! The fixture over HTTP: Streamable HTTP through rmcp's server, the legacy
//! HTTP+SSE transport by hand, and the HTTP-level faults in front of both.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::{SinkExt, StreamExt, stream};
use rmcp::ServiceExt;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::ServiceExt as _;

use crate::oauth::{self, Oauth};
use crate::{Faults, Fixture};

type McpService = StreamableHttpService<Fixture, LocalSessionManager>;

struct Shared {
    faults: Faults,
    port: u16,
    /// Requests still to be answered with 503.
    unavailable: AtomicU64,
    /// The Streamable HTTP service; replaced to forget every session.
    mcp: Mutex<McpService>,
    /// SSE sessions: where POSTed messages go.
    sse_sessions: Mutex<HashMap<String, futures::channel::mpsc::Sender<ClientJsonRpcMessage>>>,
    next_session: AtomicU64,
    /// `--oauth`: the authorization server.
    oauth: Option<Oauth>,
}

fn mcp_service(faults: &Faults) -> McpService {
    let faults = faults.clone();
    StreamableHttpService::new(
        move || Ok(Fixture::new(faults.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}

/// Where the `listening on` line goes: stdout for the HTTP modes, stderr when the
/// stdio server also serves HTTP (its stdout is the MCP channel).
pub(crate) enum Announce {
    Stdout,
    Stderr,
}

pub(crate) async fn serve(
    sse: bool,
    faults: Faults,
    announce: Announce,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", faults.port)).await?;
    let port = listener.local_addr()?.port();
    let oauth = faults.oauth.then(|| {
        Oauth::new(
            port,
            if sse { "/sse" } else { "/mcp" },
            Duration::from_secs(faults.token_ttl.unwrap_or(3600)),
            faults.oauth_client.clone(),
            faults.oauth_admin_only,
        )
    });
    let shared = Arc::new(Shared {
        oauth,
        unavailable: AtomicU64::new(faults.unavailable),
        mcp: Mutex::new(mcp_service(&faults)),
        sse_sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        faults,
        port,
    });
    let routes = if sse {
        Router::new().route("/sse", get(sse_stream)).route("/message", post(sse_message))
    } else {
        Router::new().route("/mcp", any(mcp)).route("/mcp/{*rest}", any(mcp))
    };
    let app = routes
        .route_layer(middleware::from_fn_with_state(shared.clone(), faults_layer))
        .route("/.well-known/oauth-protected-resource", get(resource_metadata))
        .route("/.well-known/oauth-protected-resource/mcp", get(resource_metadata))
        .route("/.well-known/oauth-protected-resource/sse", get(resource_metadata))
        .route("/.well-known/oauth-authorization-server", get(oauth_route))
        .route("/register", post(oauth_route))
        .route("/authorize", get(oauth_route))
        .route("/token", post(oauth_route))
        .route("/revoke", post(oauth_route))
        .route("/control/oauth", get(oauth_route))
        .route("/control/oauth/{action}", post(oauth_route))
        .route("/control/forget-sessions", post(forget_sessions))
        .with_state(shared);
    match announce {
        Announce::Stdout => println!("listening on http://127.0.0.1:{port}"),
        Announce::Stderr => eprintln!("listening on http://127.0.0.1:{port}"),
    }
    // Without TCP_NODELAY an event after the headers waits for the client's
    // delayed ACK (40 ms): a slow server roster would not be measured against.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// A server-sent event that never ends: `data:` lines without the blank line
/// that would end the event, as fast as the client reads.
fn endless(prefix: String) -> Response {
    let line = axum::body::Bytes::from(format!("data: {}\n", "x".repeat(8 * 1024)));
    let head = stream::once(async move { Ok::<_, Infallible>(axum::body::Bytes::from(prefix)) });
    let body = head.chain(stream::repeat_with(move || Ok::<_, Infallible>(line.clone())));
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
}

/// The HTTP-level faults, in front of every MCP route.
async fn faults_layer(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let f = &shared.faults;
    match f.endless_event.as_deref() {
        Some("get") if request.method() == axum::http::Method::GET => return endless(String::new()),
        Some("post") if request.method() == axum::http::Method::POST => {
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            if String::from_utf8_lossy(&bytes).contains("\"ping\"") {
                return endless(String::new());
            }
            return next.run(Request::from_parts(parts, Body::from(bytes))).await;
        }
        Some(_) | None => {}
    }
    if let Some(ms) = f.slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let request = match &shared.oauth {
        Some(oauth) => {
            let (parts, body) = oauth::body(request).await;
            if let Some(refused) = oauth.gate(&parts.headers, &body) {
                return refused;
            }
            oauth::rebuild(parts, body)
        }
        None => request,
    };
    if f.hang {
        std::future::pending::<()>().await;
    }
    if let Some((name, value)) = &f.require_header
        && request.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return (StatusCode::FORBIDDEN, format!("missing or wrong {name}")).into_response();
    }
    match f.unauthorized.as_deref() {
        Some("bare") => return StatusCode::UNAUTHORIZED.into_response(),
        Some(_) => {
            let challenge = format!(
                r#"Bearer realm="roster-fixture", resource_metadata="http://127.0.0.1:{}/.well-known/oauth-protected-resource", scope="mcp:tools""#,
                shared.port
            );
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response();
        }
        None => {}
    }
    if f.forbidden_scope {
        let challenge =
            r#"Bearer error="insufficient_scope", scope="mcp:admin", error_description="admin scope needed""#;
        return (StatusCode::FORBIDDEN, [(header::WWW_AUTHENTICATE, challenge)]).into_response();
    }
    let unavailable = shared.unavailable.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if unavailable {
        let retry_after = f.retry_after.unwrap_or(1).to_string();
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, retry_after)], "deploying").into_response();
    }
    if f.not_found {
        return StatusCode::NOT_FOUND.into_response();
    }
    next.run(request).await
}

async fn mcp(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let service = shared.mcp.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match service.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

async fn forget_sessions(State(shared): State<Arc<Shared>>) -> StatusCode {
    *shared.mcp.lock().unwrap_or_else(PoisonError::into_inner) = mcp_service(&shared.faults);
    shared.sse_sessions.lock().unwrap_or_else(PoisonError::into_inner).clear();
    eprintln!("fixture: forgot every session");
    StatusCode::NO_CONTENT
}

/// The authorization server's routes (`--oauth`); 404 without it.
async fn oauth_route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let Some(oauth) = &shared.oauth else { return StatusCode::NOT_FOUND.into_response() };
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/.well-known/oauth-authorization-server" => oauth.server_metadata(),
        "/authorize" => oauth.authorize(&request),
        "/control/oauth" => oauth.control(""),
        _ => {
            let (parts, body) = oauth::body(request).await;
            match path.as_str() {
                "/register" => oauth.register(&body),
                "/token" => oauth.token(&parts.headers, &body),
                "/revoke" => oauth.revoke(&body),
                action => oauth.control(action.trim_start_matches("/control/oauth/")),
            }
        }
    }
}

async fn resource_metadata(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(oauth) = &shared.oauth {
        return oauth.resource_metadata();
    }
    let body = serde_json::json!({
        "resource": format!("http://127.0.0.1:{}/mcp", shared.port),
        "authorization_servers": [format!("http://127.0.0.1:{}", shared.port)],
        "scopes_supported": ["mcp:tools"],
    });
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

type EventStream = futures::stream::BoxStream<'static, Result<Event, Infallible>>;

/// `GET /sse`: a new session; the endpoint first, then every server message.
async fn sse_stream(State(shared): State<Arc<Shared>>) -> Response {
    if shared.faults.endless_event.is_some() {
        // A real session's endpoint, then one event that never ends.
        let id = shared.next_session.fetch_add(1, Ordering::SeqCst).to_string();
        let (tx, mut rx) = futures::channel::mpsc::channel::<ClientJsonRpcMessage>(64);
        shared.sse_sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), tx);
        // Messages are accepted, and never answered: the stream has no room for it.
        tokio::spawn(async move { while rx.next().await.is_some() {} });
        return endless(format!("event: endpoint\ndata: /message?sessionId={id}\n\n"));
    }
    sse_session(shared).into_response()
}

fn sse_session(shared: Arc<Shared>) -> Sse<EventStream> {
    let id = shared.next_session.fetch_add(1, Ordering::SeqCst).to_string();
    let (in_tx, in_rx) = futures::channel::mpsc::channel::<ClientJsonRpcMessage>(64);
    let (out_tx, out_rx) = futures::channel::mpsc::channel::<ServerJsonRpcMessage>(64);
    shared.sse_sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), in_tx);
    let fixture = Fixture::new(shared.faults.clone());
    tokio::spawn(async move {
        if let Ok(running) = fixture.serve((out_tx.sink_map_err(|e| std::io::Error::other(e.to_string())), in_rx)).await
        {
            let _ = running.waiting().await;
        }
    });
    let endpoint = if shared.faults.foreign_endpoint {
        format!("http://foreign.invalid:{}/message?sessionId={id}", shared.port)
    } else {
        format!("/message?sessionId={id}")
    };
    let first = stream::once(async move { Ok(Event::default().event("endpoint").data(endpoint)) });
    let messages =
        out_rx.map(|m| Ok(Event::default().event("message").data(serde_json::to_string(&m).unwrap_or_default())));
    let events = first.chain(messages);
    let events: EventStream = match shared.faults.drop_after {
        Some(ms) => events.take_until(tokio::time::sleep(Duration::from_millis(ms))).boxed(),
        None => events.boxed(),
    };
    Sse::new(events)
}

#[derive(serde::Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `POST /message?sessionId=`: a client message for a session.
async fn sse_message(State(shared): State<Arc<Shared>>, Query(q): Query<SessionQuery>, body: String) -> StatusCode {
    let Ok(message) = serde_json::from_str::<ClientJsonRpcMessage>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let sender = shared.sse_sessions.lock().unwrap_or_else(PoisonError::into_inner).get(&q.session_id).cloned();
    let Some(mut tx) = sender else { return StatusCode::NOT_FOUND };
    if tx.send(message).await.is_ok() { StatusCode::ACCEPTED } else { StatusCode::NOT_FOUND }
}
