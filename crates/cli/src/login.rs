//! `roster login` and `roster logout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use roster_auth::{LoginError, LoginOptions, Prompt, Revoked, Store, Target};
use roster_core::ServerType;
use roster_http::{HttpClients, HttpOptions};
use roster_supervisor::Supervisor;
use serde_json::json;

use crate::oneshot::UrlTransport;
use crate::output::{self, Tone, escape, paint};
use crate::{Cli, config, control, exit, paths};

/// Which server to log in to, and how.
#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    /// A remote server's name from the configuration, or an http(s) URL.
    #[arg(value_name = "TARGET")]
    target: String,
    /// The transport of a URL target.
    #[arg(long, value_enum, default_value_t = UrlTransport::StreamableHttp)]
    transport: UrlTransport,
    /// Print the URL to open; start no browser.
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the browser's redirect.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A scope to ask for on top of the configured ones (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
}

/// Which server to log out of.
#[derive(Debug, clap::Args)]
pub(crate) struct LogoutArgs {
    /// A remote server's name from the configuration, or an http(s) URL.
    #[arg(value_name = "TARGET")]
    target: String,
}

/// Where the tokens are kept.
pub(crate) fn store() -> Store {
    Store::new(paths::state_dir().join("credentials"))
}

/// The target, its HTTP options, and whether it is a configured server.
fn resolve(cli: &Cli, target: &str, transport: UrlTransport) -> Result<(Target, HttpOptions, bool), String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        let server_type = match transport {
            UrlTransport::StreamableHttp => ServerType::StreamableHttp,
            UrlTransport::Sse => ServerType::Sse,
        };
        let target = Target { server: roster_auth::URL_ONLY.into(), url: target.into(), server_type, auth: None };
        return Ok((target, HttpOptions::default(), false));
    }
    let config = config::load(&cli.config).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("{} has errors:\n  {}", cli.config.display(), lines.join("\n  "))
    })?;
    let spec = config
        .servers
        .iter()
        .map(roster_core::ValidSpec::spec)
        .find(|s| s.name == target)
        .ok_or_else(|| format!("no server named {target:?} in {}", cli.config.display()))?;
    if !spec.is_remote() {
        return Err(format!("{target} is a stdio server; login applies to remote servers (streamable-http, sse)"));
    }
    let target = Target {
        server: spec.name.clone(),
        url: spec.url.clone(),
        server_type: spec.server_type,
        auth: spec.auth.clone(),
    };
    Ok((target, config.http, true))
}

fn client(options: HttpOptions) -> Result<reqwest::Client, String> {
    HttpClients::new(options).and_then(|c| c.for_url("https://")).map_err(|e| e.to_string())
}

fn exit_code(e: &LoginError) -> u8 {
    match e {
        LoginError::MissingSecret(_) | LoginError::Listener { .. } => exit::USAGE,
        LoginError::Timeout(_) | LoginError::Denied { .. } | LoginError::Token(_) => exit::AUTH,
        LoginError::Probe { .. } => exit::TRANSIENT,
        LoginError::Store(_) | LoginError::Discovery { .. } | LoginError::Registration(_) => exit::PERMANENT,
    }
}

/// A login or logout's target, ready to be talked to.
struct Prepared {
    target: Target,
    http: reqwest::Client,
    /// Whether it is a server of the configuration (not a bare URL).
    configured: bool,
    /// How to name it to the person: its name, or its URL with secrets redacted.
    name: String,
}

/// The target and an HTTP client for it; `None` once the reason is printed.
fn prepare(cli: &Cli, target: &str, transport: UrlTransport) -> Option<Prepared> {
    let prepared = resolve(cli, target, transport).and_then(|(target, options, configured)| {
        let http = client(options)?;
        let name = if configured { target.server.clone() } else { roster_core::redact_url(&target.url) };
        Ok(Prepared { target, http, configured, name })
    });
    prepared.map_err(|e| output::err(format!("roster: {e}"))).ok()
}

/// `roster login`.
pub(crate) async fn login(cli: &Cli, args: &LoginArgs) -> u8 {
    let Some(Prepared { target, http, configured, name }) = prepare(cli, &args.target, args.transport) else {
        return exit::USAGE;
    };
    let options = LoginOptions { open_browser: !args.no_browser, timeout: args.timeout, scopes: args.scopes.clone() };
    let color = output::stderr_color();
    let tell = |prompt: Prompt<'_>| match prompt {
        Prompt::OpenUrl(url) => {
            output::err(format!("To log in to {}, open this URL in a browser:", escape(&name, false)));
            output::err(format!("  {url}"));
            output::err(format!("Waiting up to {} for the login…", humantime::format_duration(args.timeout)));
        }
        Prompt::NoBrowser(why) => output::err(format!("{} {}", paint("note:", Tone::Warn, color), escape(&why, false))),
        Prompt::StrayCallback(why) => {
            output::err(format!("{} ignored {why}", paint("note:", Tone::Warn, color)));
        }
    };
    let store = store();
    let logged_in = tokio::select! {
        result = roster_auth::login(&store, &target, http, &options, tell) => result,
        _ = tokio::signal::ctrl_c() => {
            output::err("roster: login interrupted; nothing was stored");
            return 130;
        }
    };
    let logged_in = match logged_in {
        Ok(l) => l,
        Err(e) => {
            if cli.json {
                output::out(json!({"ok": false, "error": e.to_string()}).to_string());
            } else {
                output::err(format!("{} {}", paint("login failed:", Tone::Bad, color), escape(&e.to_string(), false)));
            }
            return exit_code(&e);
        }
    };
    // A running `up` or `serve` connects at once, with the new tokens.
    let running = if configured { control::notify(cli, "start", &target.server).await } else { None };
    if cli.json {
        output::out(
            json!({
                "ok": true,
                "server": target.server,
                "scopes": logged_in.scopes,
                "expires_in": logged_in.expires_in,
                "renewable": logged_in.renewable,
                "file": logged_in.file,
                "running": running.as_ref().map(|a| a["status"]["state"].clone()),
            })
            .to_string(),
        );
    } else {
        let scopes = if logged_in.scopes.is_empty() {
            String::new()
        } else {
            format!(" (scopes: {})", logged_in.scopes.join(" "))
        };
        output::out(format!("logged in to {}{}", escape(&name, false), escape(&scopes, false)));
        let lifetime = match (logged_in.expires_in, logged_in.renewable) {
            (Some(secs), true) => {
                format!("the token lasts {}; roster renews it", humantime::format_duration(Duration::from_secs(secs)))
            }
            (Some(secs), false) => {
                format!("the token lasts {}; log in again then", humantime::format_duration(Duration::from_secs(secs)))
            }
            (None, _) => "the token has no stated expiry".to_owned(),
        };
        output::out(format!("  {lifetime}; kept in {}", logged_in.file.display()));
        if let Some(answer) = running {
            let state = answer["status"]["state"].as_str().unwrap_or("?");
            output::out(format!("  the running roster connected it: {state}"));
        }
    }
    exit::OK
}

/// The login of a one-shot's `--login`: for `spec`, with a browser, telling
/// the person what `roster login` tells. `Err` holds the exit code.
pub(crate) async fn login_for(cli: &Cli, spec: &roster_core::ServerSpec) -> Result<(), u8> {
    let target = Target {
        server: spec.name.clone(),
        url: spec.url.clone(),
        server_type: spec.server_type,
        auth: spec.auth.clone(),
    };
    let http = client(HttpOptions::default()).map_err(|e| {
        output::err(format!("roster: {e}"));
        exit::USAGE
    })?;
    let name = roster_core::redact_url(&spec.url);
    let tell = |prompt: Prompt<'_>| match prompt {
        Prompt::OpenUrl(url) => {
            output::err(format!("{} wants a login; open this URL in a browser:", escape(&name, false)));
            output::err(format!("  {url}"));
        }
        Prompt::NoBrowser(why) => output::err(format!("note: {}", escape(&why, false))),
        Prompt::StrayCallback(why) => output::err(format!("note: ignored {why}")),
    };
    match roster_auth::login(&store(), &target, http, &LoginOptions::default(), tell).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let color = output::stderr_color();
            if cli.json {
                output::out(json!({"ok": false, "error": e.to_string()}).to_string());
            } else {
                output::err(format!("{} {}", paint("login failed:", Tone::Bad, color), escape(&e.to_string(), false)));
            }
            Err(exit_code(&e))
        }
    }
}

/// `roster logout`.
pub(crate) async fn logout(cli: &Cli, args: &LogoutArgs) -> u8 {
    let Some(Prepared { target, http, configured, name }) = prepare(cli, &args.target, UrlTransport::StreamableHttp)
    else {
        return exit::USAGE;
    };
    let done = match roster_auth::logout(&store(), &target.server, &target.url, &http).await {
        Ok(d) => d,
        Err(e) => {
            output::err(format!("roster: {}", escape(&e.to_string(), false)));
            return exit::PERMANENT;
        }
    };
    // A running roster drops the session that still holds the token.
    if done.removed && configured {
        let _ = control::notify(cli, "restart", &target.server).await;
    }
    let revoked = match &done.revoked {
        Revoked::Yes => "revoked".to_owned(),
        Revoked::NotSupported => "not revoked (the authorization server offers no revocation)".to_owned(),
        Revoked::Failed(why) => format!("not revoked ({why})"),
    };
    if cli.json {
        output::out(json!({"ok": true, "server": target.server, "removed": done.removed, "revoked": done.revoked == Revoked::Yes}).to_string());
    } else if done.removed {
        output::out(format!("logged out of {}: tokens removed, {}", escape(&name, false), escape(&revoked, false)));
    } else {
        output::out(format!("no tokens kept for {}", escape(&name, false)));
    }
    exit::OK
}

/// `roster serve`'s `roster_login` tool: starts a login in the background and
/// answers with the URL to open; when the login completes, the server is started.
#[derive(Debug)]
pub(crate) struct ServeLogins {
    sup: Arc<Supervisor>,
    http: reqwest::Client,
    /// Whether to open a browser too (`serve` over stdio runs on the user's machine).
    open_browser: bool,
    /// The URL of each login under way, so that asking twice gives the same one.
    pending: Arc<Mutex<HashMap<String, String>>>,
}

impl ServeLogins {
    /// `None` when no HTTP client can be built (the tool is then not offered).
    pub(crate) fn new(sup: Arc<Supervisor>, options: HttpOptions, open_browser: bool) -> Option<ServeLogins> {
        let http = client(options).ok()?;
        Some(ServeLogins { sup, http, open_browser, pending: Arc::default() })
    }
}

fn opened(server: &str, url: &str) -> String {
    format!(
        "Open this URL in a browser to log in to {server}:\n{url}\nroster connects {server} as soon as the login \
         completes (it waits {}).",
        humantime::format_duration(roster_auth::DEFAULT_LOGIN_TIMEOUT)
    )
}

impl roster_serve::Logins for ServeLogins {
    fn start(&self, server: &str) -> roster_transport::BoxFuture<Result<String, String>> {
        let server = server.to_owned();
        if let Some(url) = self.pending.lock().unwrap_or_else(PoisonError::into_inner).get(&server) {
            let text = opened(&server, url);
            return Box::pin(async move { Ok(text) });
        }
        let Some(service) = self.sup.get(&server) else {
            return Box::pin(async move { Err(format!("no server named {server:?}")) });
        };
        let spec = service.spec();
        if !spec.is_remote() {
            return Box::pin(async move { Err(format!("{server} is a stdio server: it needs no login")) });
        }
        let target =
            Target { server: spec.name.clone(), url: spec.url.clone(), server_type: spec.server_type, auth: spec.auth };
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let (sup, http, pending) = (self.sup.clone(), self.http.clone(), self.pending.clone());
        let options = LoginOptions { open_browser: self.open_browser, ..LoginOptions::default() };
        let name = server.clone();
        tokio::spawn(async move {
            let answer = |text: Result<String, String>| {
                if let Some(tx) = tx.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    let _ = tx.send(text);
                }
            };
            let tell = |prompt: Prompt<'_>| {
                if let Prompt::OpenUrl(url) = prompt {
                    pending.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone(), url.to_owned());
                    answer(Ok(opened(&name, url)));
                }
            };
            let result = roster_auth::login(&store(), &target, http, &options, tell).await;
            pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&name);
            match result {
                Ok(_) => {
                    answer(Ok(format!("roster has a token for {name}; it is connecting now")));
                    tracing::info!(server = %name, "logged in through roster_login");
                    if let Some(service) = sup.get(&name) {
                        let _ = service.start().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "roster_login failed");
                    answer(Err(format!("the login to {name} failed: {e}")));
                }
            }
        });
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("the login ended before it had a URL".to_owned())) })
    }
}
