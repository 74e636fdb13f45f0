//! `roster serve`: `up`'s supervision, with one MCP server in front of every
//! supervised server (the gateway of `roster-serve`), over stdio or Streamable
//! HTTP. This module only wires the gateway to its transport.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use roster_serve::Gateway;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod bridge;

pub(crate) use bridge::{Bridge, Bridged};

/// `roster serve`'s own options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// Serve over Streamable HTTP on ADDR (for example 127.0.0.1:8931) at `/mcp`,
    /// instead of over stdio.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,
    /// With --http: a Host the endpoint answers to, besides localhost, 127.0.0.1
    /// and ::1 (DNS-rebinding protection). Repeatable.
    #[arg(long = "allow-host", value_name = "HOST", requires = "http")]
    pub(crate) allow_hosts: Vec<String>,
    /// With --http: a browser Origin allowed to call the endpoint, with its
    /// scheme (`http://localhost:*`). Requests with any other Origin are refused.
    /// Repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN", requires = "http")]
    pub(crate) allow_origins: Vec<String>,
    /// With --http: clients must send `Authorization: Bearer <token>`, the token
    /// read from this file (its first line).
    #[arg(long, value_name = "PATH", requires = "http", conflicts_with = "token_env")]
    pub(crate) token_file: Option<PathBuf>,
    /// With --http: the same, the token read from this environment variable.
    #[arg(long, value_name = "VAR", requires = "http")]
    pub(crate) token_env: Option<String>,
}

impl ServeArgs {
    /// Over stdio: stdout is the MCP channel, so nothing else may be printed there.
    pub(crate) fn over_stdio(&self) -> bool {
        self.http.is_none()
    }

    /// The bearer token downstream clients must present, if one is configured.
    fn token(&self) -> Result<Option<String>, String> {
        let token = match (&self.token_file, &self.token_env) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
                text.lines().next().unwrap_or_default().trim().to_owned()
            }
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| format!("the environment variable {var} is not set"))?
            }
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            return Err("the bearer token is empty".to_owned());
        }
        Ok(Some(token))
    }
}

/// Whether `spec` is this very `roster serve`: a client's configuration that
/// lists roster, read by that roster, would otherwise start itself again and
/// again. It is: the same program, running `serve`, on the same configuration
/// file.
pub(crate) fn serves_itself(spec: &roster_core::ServerSpec, config: &std::path::Path) -> bool {
    let same_program = || {
        let ours = std::env::current_exe().ok().and_then(|p| std::fs::canonicalize(p).ok());
        let theirs = which(&spec.command).and_then(|p| std::fs::canonicalize(p).ok());
        ours.is_some() && ours == theirs
            || std::path::Path::new(&spec.command).file_name().is_some_and(|n| n == "roster")
    };
    let config = std::fs::canonicalize(config).ok();
    let mut args = spec.args.iter();
    let mut serving = false;
    let mut same_config = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "serve" => serving = true,
            "--config" | "-c" => {
                let given = args.next().and_then(|a| {
                    let path = match &spec.cwd {
                        Some(cwd) => std::path::Path::new(cwd).join(a),
                        None => std::path::PathBuf::from(a),
                    };
                    std::fs::canonicalize(path).ok()
                });
                same_config = given.is_some() && given == config;
            }
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    let given = std::fs::canonicalize(path).ok();
                    same_config = given.is_some() && given == config;
                }
            }
        }
    }
    spec.server_type == roster_core::ServerType::Stdio && serving && same_config && same_program()
}

/// The program `command` names, found on `PATH` when it has no slash.
fn which(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(command)).find(|p| p.is_file())
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The client's stdin and stdout. When they are pipes (as when an MCP client
/// spawns roster), the runtime reads and writes them itself, non-blocking:
/// tokio's stdin and stdout hand every read and write to a blocking thread and
/// back, two thread switches on each message. Anything else (a terminal, a
/// file) goes through tokio's.
fn stdio() -> (Reader, Writer) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input = std::io::stdin().as_fd().try_clone_to_owned().and_then(pipe::Receiver::from_owned_fd);
    let output = std::io::stdout().as_fd().try_clone_to_owned().and_then(pipe::Sender::from_owned_fd);
    let input: Reader = match input {
        Ok(pipe) => Box::new(pipe),
        Err(e) => {
            tracing::debug!(error = %e, "stdin is read through tokio's blocking reader");
            Box::new(tokio::io::stdin())
        }
    };
    let output: Writer = match output {
        Ok(pipe) => Box::new(pipe),
        Err(e) => {
            tracing::debug!(error = %e, "stdout is written through tokio's blocking writer");
            Box::new(tokio::io::stdout())
        }
    };
    (input, output)
}

/// A downstream endpoint being served.
pub(crate) struct Endpoint {
    /// Serves, and resolves when serving ends by itself: over stdio, when the
    /// client closes stdin (the client has gone). Poll it to serve.
    pub(crate) ended: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
    /// Stops serving.
    pub(crate) stop: CancellationToken,
    /// Where it listens, for the start-up note.
    pub(crate) address: String,
    /// What the user should know about how it listens.
    pub(crate) warning: Option<String>,
}

/// The socket through which other `roster serve` processes on the same
/// configuration share this one, beside the control socket.
pub(crate) fn sharing_path(control_socket: &Path) -> PathBuf {
    control_socket.with_extension("mcp")
}

/// Binds the sharing socket (owner only). Called as soon as the configuration
/// is locked, so a second `serve` that finds the lock held finds the socket
/// too; connections wait in the backlog until [`start`] serves them.
pub(crate) fn share(path: &Path) -> Result<(UnixListener, Unlink), String> {
    use std::os::unix::fs::PermissionsExt;
    // A socket a dead roster left here is gone: `up` removes it on taking the lock.
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let file = Unlink(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok((listener, file))
}

/// Removes the sharing socket when dropped (while the lock is still held).
pub(crate) struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves every client that attaches through `listener` until `stop`; the
/// number being served.
fn serve_shared(listener: UnixListener, gateway: Gateway, stop: CancellationToken) -> watch::Receiver<usize> {
    let (count, attached) = watch::channel(0usize);
    let count = Arc::new(count);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: try again shortly.
                        tracing::warn!(error = %e, "cannot accept a client on the sharing socket");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            count.send_modify(|n| *n += 1);
            let (gateway, count, cancel) = (gateway.clone(), count.clone(), stop.child_token());
            tokio::spawn(async move {
                match gateway.serve_with_ct(stream, cancel).await {
                    Ok(running) => {
                        let _ = running.waiting().await;
                    }
                    Err(e) => tracing::warn!(error = %e, "an attached MCP client did not initialize"),
                }
                count.send_modify(|n| *n -= 1);
            });
        }
    });
    attached
}

/// Starts serving `gateway` as `args` say, and to every `serve` that attaches
/// through `shared`. Over stdio, serving ends once its own client and every
/// attached one have gone; `note` says when the first leaves before the others.
///
/// `adopted` is a client that was served by another `serve` until it stopped
/// (this process took over): its session goes on here, through the bridge.
pub(crate) async fn start(
    gateway: Gateway,
    args: &ServeArgs,
    shared: UnixListener,
    adopted: Option<Bridge>,
    note: impl Fn(String) + 'static,
) -> Result<Endpoint, String> {
    let stop = CancellationToken::new();
    let mut attached = serve_shared(shared, gateway.clone(), stop.clone());
    match args.http {
        None => {
            // The handshake is part of serving: signals are heard while it waits.
            let cancel = stop.child_token();
            let ended = Box::pin(async move {
                match adopted {
                    None => match gateway.serve_with_ct(stdio(), cancel).await {
                        Ok(running) => {
                            let _ = running.waiting().await;
                        }
                        Err(e) => tracing::warn!(error = %e, "the MCP client on stdin did not initialize"),
                    },
                    Some(mut bridge) => {
                        let (ours, theirs) = tokio::io::duplex(1 << 20);
                        let session = async move {
                            match gateway.serve_with_ct(theirs, cancel).await {
                                Ok(running) => {
                                    let _ = running.waiting().await;
                                }
                                Err(e) => tracing::warn!(error = %e, "the adopted MCP client's session did not resume"),
                            }
                        };
                        let relay = async move {
                            if let Err(e) = bridge.run(ours).await {
                                tracing::warn!(error = %e, "the MCP client's stdin or stdout failed");
                            }
                        };
                        tokio::join!(session, relay);
                    }
                }
                let others = *attached.borrow();
                if others > 0 {
                    note(format!(
                        "the MCP client disconnected; serving the {} attached until they leave",
                        crate::output::count(others, "other client")
                    ));
                }
                let _ = attached.wait_for(|n| *n == 0).await;
            });
            Ok(Endpoint { ended, stop, address: "stdio".to_owned(), warning: None })
        }
        Some(addr) => {
            let token = args.token()?;
            let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            hosts.extend(args.allow_hosts.iter().cloned());
            let config = StreamableHttpServerConfig::default()
                .with_allowed_hosts(hosts)
                .with_allowed_origins(args.allow_origins.clone())
                .enforce_origin_validation()
                .with_cancellation_token(stop.child_token());
            let service = StreamableHttpService::new(
                move || Ok(gateway.clone()),
                Arc::new(LocalSessionManager::default()),
                config,
            );
            let without_token = token.is_none();
            let token: Option<Arc<str>> = token.map(Into::into);
            let router = axum::Router::new().nest_service("/mcp", service).layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let token = token.clone();
                    async move {
                        match token {
                            Some(token) if !bearer_matches(request.headers(), &token) => unauthorized(),
                            Some(_) | None => next.run(request).await,
                        }
                    }
                },
            ));
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let address = listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string());
            let warning = open_warning(addr, without_token);
            let shutdown = stop.clone();
            // Responses are written in pieces (headers, then events): without
            // TCP_NODELAY the second waits for the client's delayed ACK, 40 ms a call.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server =
                axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await });
            let ended = Box::pin(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "the HTTP endpoint failed");
                }
            });
            Ok(Endpoint { ended, stop, address: format!("http://{address}/mcp"), warning })
        }
    }
}

/// A warning for an endpoint that other machines can reach with no token asked.
fn open_warning(addr: SocketAddr, without_token: bool) -> Option<String> {
    (without_token && !addr.ip().is_loopback()).then(|| {
        format!(
            "warning: {addr} is reachable beyond this machine and asks for no bearer token: a client that \
             reaches it with an allowed Host can call every server's tools (--token-file or --token-env)"
        )
    })
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a bearer token is required\n").into_response()
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in time
/// that does not depend on where they differ.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, value)) = given.split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (value.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_endpoint_beyond_loopback_without_a_token_is_warned_of() {
        let any: SocketAddr = "0.0.0.0:8931".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:8931".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8931".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:8931".parse().unwrap();
        let warning = open_warning(any, true).expect("warned");
        assert!(warning.contains("0.0.0.0:8931") && warning.contains("--token-file"), "{warning}");
        assert!(open_warning(lan, true).is_some());
        assert_eq!(open_warning(any, false), None);
        assert_eq!(open_warning(loopback, true), None);
        assert_eq!(open_warning(loopback6, true), None);
    }

    #[test]
    fn a_server_that_is_this_roster_serve_is_recognized() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("claude.json");
        std::fs::write(&config, "{}").unwrap();
        let other = dir.path().join("other.json");
        std::fs::write(&other, "{}").unwrap();
        let spec = |args: &[&str]| {
            let mut s = roster_core::ServerSpec::stdio("roster", "roster");
            s.args = args.iter().map(|a| (*a).to_owned()).collect();
            s
        };
        let path = config.to_str().unwrap();
        assert!(serves_itself(&spec(&["serve", "--config", path]), &config));
        assert!(serves_itself(&spec(&["--config", path, "serve"]), &config));
        assert!(serves_itself(&spec(&[&format!("--config={path}"), "serve"]), &config));
        assert!(!serves_itself(&spec(&["serve", "--config", other.to_str().unwrap()]), &config), "another file");
        assert!(!serves_itself(&spec(&["up", "--config", path]), &config), "not serve");
        let mut elsewhere = spec(&["serve", "--config", path]);
        elsewhere.command = "/usr/bin/node".into();
        assert!(!serves_itself(&elsewhere, &config), "another program");
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        assert!(bearer_matches(&headers("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&headers("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3creT"), "s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&headers("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&headers("s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }
}
