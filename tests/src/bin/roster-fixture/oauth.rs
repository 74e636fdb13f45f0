//! `--oauth`: the fixture as its own OAuth 2.1 authorization server, for the
//! login tests. Protected-resource metadata, authorization-server metadata,
//! dynamic registration, an authorize endpoint that approves at once (a 302 to
//! the redirect URI with `code`, `state`, `iss`), a token endpoint (PKCE S256
//! checked; authorization code, rotating refresh tokens, client credentials),
//! revocation; and `/mcp` answering 401 without a valid token and 403
//! `insufficient_scope` for the tool `add` without `mcp:admin` (for every
//! request with `--oauth-admin-only`).
//!
//! Test controls: `GET /control/oauth` (counters and every secret issued, so a
//! test can look for them in roster's output), `POST /control/oauth/expire`
//! (every access token stops working), `POST /control/oauth/revoke-refresh`
//! (every refresh token is refused with `invalid_grant`).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// The authorization server's settings and state.
pub(crate) struct Oauth {
    base: String,
    /// The protected resource: `/mcp`, or `/sse` for the legacy transport.
    resource: String,
    ttl: Duration,
    /// A pre-registered confidential client (client credentials), `id:secret`.
    client: Option<(String, String)>,
    /// Every request needs `mcp:admin`, `initialize` too.
    admin_only: bool,
    state: Mutex<State>,
    seq: AtomicU64,
    salt: RandomState,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Vec<String>>,
    codes: HashMap<String, Code>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    issued: Vec<String>,
    registrations: u64,
    authorizations: u64,
    exchanges: u64,
    refreshes: u64,
    client_credentials: u64,
    revocations: u64,
    refused_refreshes: u64,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
}

struct Access {
    until: Instant,
    scope: String,
}

struct Refresh {
    client_id: String,
    scope: String,
}

const SCOPES: [&str; 2] = ["mcp:tools", "mcp:admin"];

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn query(request: &Request) -> HashMap<String, String> {
    form(request.uri().query().unwrap_or_default().as_bytes())
}

impl Oauth {
    pub(crate) fn new(
        port: u16,
        resource: &str,
        ttl: Duration,
        client: Option<(String, String)>,
        admin_only: bool,
    ) -> Oauth {
        let mut state = State::default();
        if let Some((id, _)) = &client {
            state.clients.insert(id.clone(), Vec::new());
        }
        Oauth {
            base: format!("http://127.0.0.1:{port}"),
            resource: format!("http://127.0.0.1:{port}{resource}"),
            ttl,
            client,
            admin_only,
            state: Mutex::new(state),
            seq: AtomicU64::new(1),
            salt: RandomState::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn secret(&self, kind: &str, state: &mut State) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let value = format!("{kind}-{n}-{:016x}", self.salt.hash_one(n));
        state.issued.push(value.clone());
        value
    }

    /// The challenge of a 401.
    fn challenge(&self, error: Option<&str>) -> String {
        let error = error.map(|e| format!(r#", error="{e}""#)).unwrap_or_default();
        format!(
            r#"Bearer realm="roster-fixture", resource_metadata="{}/.well-known/oauth-protected-resource"{error}"#,
            self.base
        )
    }

    /// The gate in front of `/mcp`: `None` lets the request through.
    pub(crate) fn gate(&self, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let Some(token) = token else {
            return Some(
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, self.challenge(None))]).into_response(),
            );
        };
        let scope = {
            let state = self.state();
            match state.access.get(&token) {
                Some(a) if a.until > Instant::now() => a.scope.clone(),
                Some(_) | None => {
                    drop(state);
                    let challenge = self.challenge(Some("invalid_token"));
                    return Some((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response());
                }
            }
        };
        let call: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let needs_admin = self.admin_only || (call["method"] == "tools/call" && call["params"]["name"] == "add");
        if needs_admin && !scope.split(' ').any(|s| s == "mcp:admin") {
            let challenge = format!(
                r#"Bearer error="insufficient_scope", scope="mcp:tools mcp:admin", resource_metadata="{}/.well-known/oauth-protected-resource""#,
                self.base
            );
            return Some((StatusCode::FORBIDDEN, [(header::WWW_AUTHENTICATE, challenge)]).into_response());
        }
        None
    }

    pub(crate) fn resource_metadata(&self) -> Response {
        json(
            StatusCode::OK,
            &serde_json::json!({
                "resource": self.resource,
                "authorization_servers": [self.base],
                "scopes_supported": SCOPES,
            }),
        )
    }

    pub(crate) fn server_metadata(&self) -> Response {
        let b = &self.base;
        json(
            StatusCode::OK,
            &serde_json::json!({
                "issuer": b,
                "authorization_endpoint": format!("{b}/authorize"),
                "token_endpoint": format!("{b}/token"),
                "registration_endpoint": format!("{b}/register"),
                "revocation_endpoint": format!("{b}/revoke"),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
                "scopes_supported": SCOPES,
                "authorization_response_iss_parameter_supported": true,
            }),
        )
    }

    pub(crate) fn register(&self, body: &[u8]) -> Response {
        let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let redirects: Vec<String> = request["redirect_uris"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if redirects.is_empty() {
            return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "invalid_redirect_uri"}));
        }
        let mut state = self.state();
        state.registrations += 1;
        let id = format!("client-{}", state.registrations);
        state.clients.insert(id.clone(), redirects.clone());
        json(
            StatusCode::CREATED,
            &serde_json::json!({
                "client_id": id,
                "redirect_uris": redirects,
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }),
        )
    }

    pub(crate) fn authorize(&self, request: &Request) -> Response {
        let q = query(request);
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        let (client_id, redirect_uri) = (get("client_id"), get("redirect_uri"));
        let mut state = self.state();
        let known = state.clients.get(&client_id).is_some_and(|r| r.is_empty() || r.contains(&redirect_uri));
        if !known || get("response_type") != "code" || get("code_challenge_method") != "S256" {
            return (StatusCode::BAD_REQUEST, "unknown client, redirect URI, response type or PKCE method")
                .into_response();
        }
        state.authorizations += 1;
        let code = self.secret("code", &mut state);
        let scope = if q.contains_key("scope") { get("scope") } else { "mcp:tools".to_owned() };
        state.codes.insert(
            code.clone(),
            Code { client_id, redirect_uri: redirect_uri.clone(), challenge: get("code_challenge"), scope },
        );
        let mut to = url::Url::parse(&redirect_uri).expect("a registered redirect URI");
        to.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &get("state"))
            .append_pair("iss", &self.base);
        (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
    }

    fn tokens(&self, state: &mut State, client_id: &str, scope: &str, refresh: bool) -> Response {
        let access = self.secret("access", state);
        state.access.insert(access.clone(), Access { until: Instant::now() + self.ttl, scope: scope.to_owned() });
        let mut body = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.ttl.as_secs(),
            "scope": scope,
        });
        if refresh {
            let token = self.secret("refresh", state);
            state.refresh.insert(token.clone(), Refresh { client_id: client_id.to_owned(), scope: scope.to_owned() });
            body["refresh_token"] = token.into();
        }
        json(StatusCode::OK, &body)
    }

    pub(crate) fn token(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let f = form(body);
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let invalid = |error: &str| json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": error}));
        let mut state = self.state();
        match get("grant_type").as_str() {
            "authorization_code" => {
                let Some(code) = state.codes.remove(&get("code")) else { return invalid("invalid_grant") };
                let digest = ring::digest::digest(&ring::digest::SHA256, get("code_verifier").as_bytes());
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
                if challenge != code.challenge
                    || code.client_id != get("client_id")
                    || code.redirect_uri != get("redirect_uri")
                {
                    return invalid("invalid_grant");
                }
                state.exchanges += 1;
                self.tokens(&mut state, &code.client_id, &code.scope, true)
            }
            "refresh_token" => {
                // Rotating: a refresh token works once.
                let Some(grant) = state.refresh.remove(&get("refresh_token")) else {
                    state.refused_refreshes += 1;
                    return invalid("invalid_grant");
                };
                state.refreshes += 1;
                self.tokens(&mut state, &grant.client_id, &grant.scope, true)
            }
            "client_credentials" => {
                let (id, secret) = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
                    Some(basic) => basic_credentials(basic).unwrap_or_default(),
                    None => (get("client_id"), get("client_secret")),
                };
                if self.client.as_ref() != Some(&(id.clone(), secret)) {
                    return json(StatusCode::UNAUTHORIZED, &serde_json::json!({"error": "invalid_client"}));
                }
                state.client_credentials += 1;
                let scope = if f.contains_key("scope") { get("scope") } else { "mcp:tools".to_owned() };
                self.tokens(&mut state, &id, &scope, false)
            }
            _ => invalid("unsupported_grant_type"),
        }
    }

    pub(crate) fn revoke(&self, body: &[u8]) -> Response {
        let token = form(body).remove("token").unwrap_or_default();
        let mut state = self.state();
        state.revocations += 1;
        state.access.remove(&token);
        state.refresh.remove(&token);
        StatusCode::OK.into_response()
    }

    pub(crate) fn control(&self, action: &str) -> Response {
        let mut state = self.state();
        match action {
            "expire" => state.access.clear(),
            "revoke-refresh" => state.refresh.clear(),
            _ => {}
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "registrations": state.registrations,
                "authorizations": state.authorizations,
                "exchanges": state.exchanges,
                "refreshes": state.refreshes,
                "refused_refreshes": state.refused_refreshes,
                "client_credentials": state.client_credentials,
                "revocations": state.revocations,
                "issued": state.issued,
            }),
        )
    }
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape =
        |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

/// Reads a request's body (small: these are OAuth and MCP requests).
pub(crate) async fn body(request: Request) -> (axum::http::request::Parts, Bytes) {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    (parts, bytes)
}

/// Puts a read body back.
pub(crate) fn rebuild(parts: axum::http::request::Parts, bytes: Bytes) -> Request {
    Request::from_parts(parts, Body::from(bytes))
}
