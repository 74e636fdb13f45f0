//! `roster login`: discovery from the server's challenge, client registration,
//! PKCE, a loopback redirect that accepts one valid callback, the token
//! exchange; and `roster logout`.
//!
//! The protocol steps (metadata discovery, registration in the spec's order,
//! PKCE S256, `state` and `iss` checks, the `resource` parameter) are rmcp's;
//! this module adds the parts a command-line login needs around them: the
//! probe for the challenge, the redirect listener, the browser, the store.

use std::io;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use rmcp::transport::auth::{AuthError, AuthorizationManager, AuthorizationRequest, AuthorizationSession};
use roster_core::{AuthConfig, Challenge, Grant, ServerType};
use tokio::sync::oneshot;
use tracing::debug;

use crate::store::{Entry, Record, Store, StoreError};
use crate::tokens::{MissingSecret, TOKEN_REQUEST_TIMEOUT, Tokens};

/// How long `roster login` waits for the browser's redirect by default.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The server to log in to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name (or [`crate::URL_ONLY`] for a bare URL).
    pub server: String,
    /// Its URL.
    pub url: String,
    /// Its transport: the probe for the challenge differs.
    pub server_type: ServerType,
    /// Its OAuth client settings, if configured.
    pub auth: Option<AuthConfig>,
}

/// How to log in.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Open the authorization URL in a browser (it is always told).
    pub open_browser: bool,
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// Scopes to ask for on top of the configured ones.
    pub scopes: Vec<String>,
}

impl Default for LoginOptions {
    fn default() -> LoginOptions {
        LoginOptions { open_browser: true, timeout: DEFAULT_LOGIN_TIMEOUT, scopes: Vec::new() }
    }
}

/// What the login has to tell the person at the terminal.
#[derive(Debug)]
pub enum Prompt<'a> {
    /// Open this URL to log in.
    OpenUrl(&'a str),
    /// The browser could not be started (the URL was told already).
    NoBrowser(String),
    /// A request reached the redirect listener that was not the expected callback.
    StrayCallback(&'static str),
}

/// A completed login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The access token's lifetime, when the server said.
    pub expires_in: Option<u64>,
    /// Whether roster can renew the token without another login.
    pub renewable: bool,
    /// Where the token file is.
    pub file: std::path::PathBuf,
}

/// Why a login failed. No variant carries a token, a code or a secret.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The store could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client secret is not in the environment.
    #[error(transparent)]
    MissingSecret(#[from] MissingSecret),
    /// The server could not be reached for its challenge.
    #[error("could not reach {url}: {why}")]
    Probe {
        /// The server's URL (credentials redacted).
        url: String,
        /// Why.
        why: String,
    },
    /// No usable authorization server was found.
    #[error("no OAuth authorization server found for {url}: {source}")]
    Discovery {
        /// The server's URL (credentials redacted).
        url: String,
        /// rmcp's error.
        #[source]
        source: Box<AuthError>,
    },
    /// The client could not be registered (or no registration method applies).
    #[error("client registration failed: {0}")]
    Registration(#[source] Box<AuthError>),
    /// The redirect listener could not be bound.
    #[error("cannot listen for the login's redirect on 127.0.0.1:{port}: {source}")]
    Listener {
        /// The port asked for (0: any).
        port: u16,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Nobody completed the login in time.
    #[error("no login completed within {}s (the URL stays valid only while roster waits)", .0.as_secs())]
    Timeout(Duration),
    /// The authorization server (or the person) refused.
    #[error("the authorization server refused the login: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        /// The OAuth `error` code.
        error: String,
        /// Its `error_description`.
        description: Option<String>,
    },
    /// The code could not be exchanged for tokens, or a client-credentials
    /// token request failed.
    #[error("token request failed: {0}")]
    Token(#[source] Box<AuthError>),
}

/// Logs in to `target` and keeps the tokens in `store`; `http` carries every
/// request (discovery, registration, tokens); `tell` hears what to show.
///
/// # Errors
/// See [`LoginError`]; nothing is written to the store unless tokens were obtained.
pub async fn login(
    store: &Store,
    target: &Target,
    http: reqwest::Client,
    options: &LoginOptions,
    mut tell: impl FnMut(Prompt<'_>),
) -> Result<LoggedIn, LoginError> {
    store.ensure_dir()?;
    let entry = store.entry(&target.server, &target.url);
    let mut auth = target.auth.clone().unwrap_or_default();
    for scope in &options.scopes {
        if !auth.scopes.contains(scope) {
            auth.scopes.push(scope.clone());
        }
    }
    if auth.grant == Grant::ClientCredentials {
        let tokens = Tokens::new(entry.clone(), Some(&auth), http)?;
        tokens.obtain().await.map_err(|e| LoginError::Token(Box::new(e)))?;
        return logged_in(&entry);
    }
    let old = entry.read()?;
    let challenge = probe(&http, target, old.as_ref().and_then(Record::access_token)).await?;
    let url = roster_core::redact_url(&target.url);
    let mut manager = AuthorizationManager::new(target.url.as_str())
        .await
        .map_err(|source| LoginError::Discovery { url: url.clone(), source: Box::new(source) })?;
    manager.with_client(http.clone()).map_err(|e| LoginError::Registration(Box::new(e)))?;
    let metadata = bounded(manager.resolve_metadata_from_challenge(challenge.as_deref()))
        .await
        .map_err(|source| LoginError::Discovery { url: url.clone(), source: Box::new(source) })?
        .metadata;
    manager.set_metadata(metadata.clone());

    let port = auth.redirect_port.unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| LoginError::Listener { port, source })?;
    let bound = listener.local_addr().map_err(|source| LoginError::Listener { port, source })?.port();
    let redirect_uri = format!("http://127.0.0.1:{bound}/callback");
    manager.set_credential_store(entry.credential_store(Some(metadata), Some(redirect_uri.clone())));

    let mut request = AuthorizationRequest::new(redirect_uri.as_str()).with_client_name("roster");
    if let Some(challenge) = &challenge {
        request = request.with_challenge(challenge.as_str());
    }
    let scopes = wanted_scopes(&auth.scopes, old.as_ref(), challenge.as_deref());
    if !scopes.is_empty() {
        request = request.with_scopes(scopes);
    }
    if let Some(id) = &auth.client_id {
        request = request.with_preregistered_client(id.as_str());
        if let Some(name) = &auth.client_secret_env {
            let secret = std::env::var(name).map_err(|_| MissingSecret(name.clone()))?;
            request = request.with_client_secret(secret);
        }
    }
    if let Some(cimd) = &auth.client_metadata_url {
        request = request.with_client_metadata_url(cimd.as_str());
    }
    let session = tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, AuthorizationSession::new(manager, request))
        .await
        .map_err(|_| LoginError::Registration(Box::new(timed_out())))?
        .map_err(|(_, e)| LoginError::Registration(Box::new(e)))?;
    let auth_url = session.get_authorization_url().to_owned();
    let state = query_param(&auth_url, "state").unwrap_or_default();

    tell(Prompt::OpenUrl(&auth_url));
    let mut browser = None;
    if options.open_browser {
        match open_browser(&auth_url) {
            Ok(child) => browser = Some(child),
            Err(why) => tell(Prompt::NoBrowser(why)),
        }
    }
    let callback = wait_for_callback(listener, &state, options.timeout, &mut tell).await;
    if let Some(child) = browser {
        reap(child);
    }
    let callback = callback?;
    let _lock = entry.lock().await?;
    bounded(session.handle_callback_with_issuer(&callback.code, &state, callback.iss.as_deref()))
        .await
        .map_err(|e| LoginError::Token(Box::new(e)))?;
    if let Some(mut record) = entry.read()?
        && !record.required_scopes.is_empty()
    {
        // Asked for: what the server grants now is its answer.
        record.required_scopes.clear();
        entry.write(&record)?;
    }
    logged_in(&entry)
}

fn logged_in(entry: &Entry) -> Result<LoggedIn, LoginError> {
    let record = entry
        .read()?
        .ok_or_else(|| LoginError::Token(Box::new(AuthError::InternalError("the tokens were not kept".into()))))?;
    Ok(LoggedIn {
        scopes: record.credentials.granted_scopes.clone(),
        expires_in: record.expires_in(),
        renewable: record.has_refresh_token(),
        file: entry.path().to_owned(),
    })
}

fn timed_out() -> AuthError {
    AuthError::TokenRefreshFailed("the authorization server did not answer in time".into())
}

async fn bounded<T>(f: impl Future<Output = Result<T, AuthError>>) -> Result<T, AuthError> {
    tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, f).await.map_err(|_| timed_out())?
}

/// The scopes to ask for: the configured ones; on a step-up (the server said
/// `insufficient_scope`, to the probe or, kept in the record, to an earlier
/// request), those granted before and those it named.
/// Empty: let rmcp choose (the challenge's, then the metadata's).
fn wanted_scopes(configured: &[String], old: Option<&Record>, challenge: Option<&str>) -> Vec<String> {
    let mut scopes: Vec<String> = configured.to_vec();
    let challenge = challenge.map(Challenge::parse).unwrap_or_default();
    let kept = old.map(|r| r.required_scopes.as_slice()).unwrap_or_default();
    if challenge.is_insufficient_scope() || !kept.is_empty() {
        let granted = old.map(|r| r.credentials.granted_scopes.clone()).unwrap_or_default();
        let named = challenge.scope.as_deref().unwrap_or_default().split(' ').map(str::to_owned);
        let required = kept.iter().cloned().chain(named);
        for scope in granted.into_iter().chain(required) {
            if !scope.is_empty() && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
    }
    scopes
}

/// Asks the server without a token (or with the kept one) and returns its
/// `WWW-Authenticate` challenge, if it sends one.
async fn probe(http: &reqwest::Client, target: &Target, token: Option<&str>) -> Result<Option<String>, LoginError> {
    let request = match target.server_type {
        ServerType::Sse => http.get(&target.url).header(reqwest::header::ACCEPT, "text/event-stream"),
        ServerType::StreamableHttp | ServerType::Stdio => {
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "roster", "version": env!("CARGO_PKG_VERSION")}
                }
            });
            http.post(&target.url)
                .header(reqwest::header::ACCEPT, "application/json, text/event-stream")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
        }
    };
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.timeout(Duration::from_secs(30)).send().await.map_err(|e| LoginError::Probe {
        url: roster_core::redact_url(&target.url),
        why: roster_http::classify::reqwest_text(&e),
    })?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.trim().is_empty())
        .map(str::to_owned);
    if (200..300).contains(&status)
        && let Some(session) = response.headers().get("mcp-session-id").cloned()
    {
        // The server let the probe in: end the session it opened.
        let _ = http.delete(&target.url).header("mcp-session-id", session).timeout(Duration::from_secs(5)).send().await;
    }
    debug!(status, challenged = challenge.is_some(), "probed for the challenge");
    Ok(if matches!(status, 401 | 403) { challenge } else { None })
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Starts the browser on `url`: each command of `$BROWSER` (colon-separated,
/// `%s` standing for the URL, else the URL is the last argument) in turn, then
/// the platform's opener.
fn open_browser(url: &str) -> Result<Child, String> {
    let mut commands: Vec<String> = std::env::var("BROWSER")
        .unwrap_or_default()
        .split(':')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| if c.contains("%s") { c.replace("%s", "\"$1\"") } else { format!("{c} \"$1\"") })
        .collect();
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    commands.push(format!("{opener} \"$1\""));
    let mut last = String::new();
    for script in commands {
        match Command::new("sh")
            .args(["-c", &script, "sh", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => return Ok(child),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("could not start a browser ({last}); open the URL above yourself"))
}

/// Waits a little for the browser command to end, so that it is not left behind.
fn reap(mut child: Child) {
    for _ in 0..40 {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Still running (a real browser that stays open): let it be, and reap it later.
    std::thread::spawn(move || child.wait());
}

struct Callback {
    code: String,
    iss: Option<String>,
}

struct Waiting {
    state: String,
    done: Mutex<Option<oneshot::Sender<Result<Callback, LoginError>>>>,
    stray: Mutex<Vec<&'static str>>,
}

async fn wait_for_callback(
    listener: tokio::net::TcpListener,
    state: &str,
    timeout: Duration,
    tell: &mut impl FnMut(Prompt<'_>),
) -> Result<Callback, LoginError> {
    let (tx, rx) = oneshot::channel();
    let waiting =
        Arc::new(Waiting { state: state.to_owned(), done: Mutex::new(Some(tx)), stray: Mutex::new(Vec::new()) });
    let app = Router::new().fallback(on_callback).with_state(waiting.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    let result = tokio::time::timeout(timeout, rx).await;
    let _ = stop_tx.send(());
    // The last page is on its way; a browser keeping its connection open must
    // not hold the login.
    if tokio::time::timeout(Duration::from_secs(1), server).await.is_err() {
        debug!("redirect listener still had a connection; dropped");
    }
    for why in waiting.stray.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
        tell(Prompt::StrayCallback(why));
    }
    match result {
        Ok(Ok(callback)) => callback,
        Ok(Err(_)) => Err(LoginError::Timeout(timeout)),
        Err(_) => Err(LoginError::Timeout(timeout)),
    }
}

async fn on_callback(State(waiting): State<Arc<Waiting>>, uri: Uri) -> Response {
    if uri.path() != "/callback" {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let stray = |why: &'static str| {
        waiting.stray.lock().unwrap_or_else(PoisonError::into_inner).push(why);
        (StatusCode::BAD_REQUEST, page("This is not the login roster is waiting for.", why)).into_response()
    };
    if get("state").as_deref() != Some(waiting.state.as_str()) {
        return stray("a callback with another state (not from this login)");
    }
    let outcome = match (get("code"), get("error")) {
        (_, Some(error)) => Err(LoginError::Denied { error, description: get("error_description") }),
        (Some(code), None) => Ok(Callback { code, iss: get("iss") }),
        (None, None) => return stray("a callback without a code"),
    };
    let refused = outcome.is_err();
    let Some(tx) = waiting.done.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return (StatusCode::GONE, page("roster has already been answered.", "")).into_response();
    };
    let _ = tx.send(outcome);
    if refused {
        (StatusCode::OK, page("The login was refused.", "roster says why in the terminal.")).into_response()
    } else {
        (StatusCode::OK, page("roster is logged in.", "You can close this tab.")).into_response()
    }
}

fn page(title: &str, text: &str) -> Html<String> {
    Html(format!("<!doctype html><title>roster</title><h1>{title}</h1><p>{text}</p>"))
}

/// Removes the tokens of `server` at `url`, revoking them first where the
/// authorization server has a revocation endpoint (RFC 7009). Returns whether
/// there were any, and what went wrong with the revocation (the tokens are
/// removed either way).
///
/// # Errors
/// When the store cannot be read or the file cannot be removed.
pub async fn logout(store: &Store, server: &str, url: &str, http: &reqwest::Client) -> Result<Logout, StoreError> {
    let entry = store.entry(server, url);
    let _lock = match entry.read()? {
        Some(_) => Some(entry.lock().await?),
        None => None,
    };
    let Some(record) = entry.read()? else {
        return Ok(Logout { removed: false, revoked: Revoked::NotSupported });
    };
    let revoked = revoke(&record, http).await;
    entry.remove()?;
    Ok(Logout { removed: true, revoked })
}

/// What `logout` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    /// Whether tokens were kept (and are now removed).
    pub removed: bool,
    /// The revocation.
    pub revoked: Revoked,
}

/// The revocation at the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The authorization server revoked the tokens.
    Yes,
    /// It has no revocation endpoint.
    NotSupported,
    /// The request failed (why).
    Failed(String),
}

async fn revoke(record: &Record, http: &reqwest::Client) -> Revoked {
    use oauth2::TokenResponse as _;
    let Some(endpoint) =
        record.metadata.as_ref().and_then(|m| m.additional_fields.get("revocation_endpoint")).and_then(|v| v.as_str())
    else {
        return Revoked::NotSupported;
    };
    let Some(tokens) = record.credentials.token_response.as_ref() else { return Revoked::NotSupported };
    let mut sent = Vec::new();
    if let Some(refresh) = tokens.refresh_token() {
        sent.push((refresh.secret().clone(), "refresh_token"));
    }
    sent.push((tokens.access_token().secret().clone(), "access_token"));
    for (token, hint) in sent {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", &token)
            .append_pair("token_type_hint", hint)
            .append_pair("client_id", &record.credentials.client_id)
            .finish();
        let answer = http
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Revoked::Failed(format!("HTTP {}", r.status().as_u16())),
            Err(e) => return Revoked::Failed(roster_http::classify::reqwest_text(&e)),
        }
    }
    Revoked::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_scopes_are_the_configured_ones_and_on_a_step_up_the_granted_and_the_required_too() {
        let configured = strings(&["read"]);
        let entry = Store::new("/nowhere").entry("docs", "https://mcp.example/mcp");
        let token = serde_json::json!({"access_token": "t", "token_type": "Bearer"});
        let credentials = rmcp::transport::auth::StoredCredentials::new(
            "c".into(),
            Some(serde_json::from_value(token).unwrap()),
            strings(&["read", "files"]),
            None,
        );
        let old = entry.record(credentials);
        let step_up = r#"Bearer error="insufficient_scope", scope="admin  files""#;
        assert_eq!(wanted_scopes(&configured, Some(&old), Some(step_up)), strings(&["read", "files", "admin"]));
        assert_eq!(wanted_scopes(&[], None, Some(step_up)), strings(&["admin", "files"]), "none granted before");
        let plain = r#"Bearer scope="admin""#;
        assert_eq!(wanted_scopes(&configured, Some(&old), Some(plain)), configured, "not a step-up: rmcp picks");
        assert_eq!(wanted_scopes(&configured, Some(&old), None), configured);
        // A 403 to an earlier request, kept with the tokens: a step-up too,
        // with what the probe's challenge names on top.
        let kept = Record { required_scopes: strings(&["admin"]), ..old };
        assert_eq!(wanted_scopes(&configured, Some(&kept), None), strings(&["read", "files", "admin"]));
        assert_eq!(wanted_scopes(&[], Some(&kept), Some(plain)), strings(&["read", "files", "admin"]));
        let more = r#"Bearer error="insufficient_scope", scope="audit""#;
        assert_eq!(wanted_scopes(&[], Some(&kept), Some(more)), strings(&["read", "files", "admin", "audit"]));
    }

    #[test]
    fn a_query_parameter_is_read_by_its_exact_name() {
        let url = "https://as.example/authorize?client_id=c&state=a%20b&statex=no";
        assert_eq!(query_param(url, "state").as_deref(), Some("a b"));
        assert_eq!(query_param(url, "client_id").as_deref(), Some("c"));
        assert_eq!(query_param(url, "scope"), None);
        assert_eq!(query_param("not a url", "state"), None);
    }

    fn waiting() -> (Arc<Waiting>, oneshot::Receiver<Result<Callback, LoginError>>) {
        let (tx, rx) = oneshot::channel();
        let waiting =
            Arc::new(Waiting { state: "s-1".into(), done: Mutex::new(Some(tx)), stray: Mutex::new(Vec::new()) });
        (waiting, rx)
    }

    async fn call(waiting: &Arc<Waiting>, uri: &str) -> (StatusCode, String) {
        let response = on_callback(State(waiting.clone()), uri.parse().unwrap()).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_callback_takes_one_code_with_the_right_state_and_reports_the_rest() {
        let (waiting, mut rx) = waiting();
        assert_eq!(call(&waiting, "/other?state=s-1&code=c").await.0, StatusCode::NOT_FOUND);
        let (status, page) = call(&waiting, "/callback?state=s-2&code=c").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("<h1>This is not the login roster is waiting for.</h1>"), "{page}");
        assert_eq!(call(&waiting, "/callback?state=s-1").await.0, StatusCode::BAD_REQUEST, "no code");
        assert!(rx.try_recv().is_err(), "nothing taken yet");
        let (status, page) = call(&waiting, "/callback?code=c-9&state=s-1&iss=https%3A%2F%2Fas.example").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("roster is logged in.") && page.contains("You can close this tab."), "{page}");
        let callback = rx.try_recv().unwrap().unwrap();
        assert_eq!((callback.code.as_str(), callback.iss.as_deref()), ("c-9", Some("https://as.example")));
        assert_eq!(call(&waiting, "/callback?state=s-1&code=c").await.0, StatusCode::GONE, "answered once");
        let stray = waiting.stray.lock().unwrap().clone();
        assert_eq!(stray, ["a callback with another state (not from this login)", "a callback without a code"]);
    }

    #[tokio::test]
    async fn a_refusal_in_the_callback_ends_the_wait_with_the_reason() {
        let (waiting, mut rx) = waiting();
        let (status, page) = call(&waiting, "/callback?state=s-1&error=access_denied&error_description=no").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("The login was refused."), "{page}");
        let Err(LoginError::Denied { error, description }) = rx.try_recv().unwrap() else { panic!("a refusal") };
        assert_eq!((error.as_str(), description.as_deref()), ("access_denied", Some("no")));
    }
}
