//! `roster login`, `roster logout` and the use of their tokens, against the
//! fixture's own authorization server (`--oauth`). The "browser" is the
//! fixture's `browse` mode: it follows the authorization URL's redirect to
//! roster's callback, as a person's browser would after approving.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Remote, Up, code, fixture, stderr, stdout, wait_until};
use roster_tests::Tag;

/// One test's private state directory and configuration.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home { dir: tempfile::tempdir().expect("a temp dir") }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn credentials(&self) -> PathBuf {
        self.state().join("roster/credentials")
    }

    fn config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("roster.toml");
        std::fs::write(&path, toml).expect("write the config");
        path
    }

    fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(super::ROSTER);
        cmd.env("NO_COLOR", "1")
            .env("XDG_STATE_HOME", self.state())
            .env("BROWSER", format!("{} browse", fixture()))
            .env("RUST_LOG", "trace")
            .arg("--config")
            .arg(config)
            .args(args);
        cmd
    }

    fn run(&self, config: &Path, args: &[&str]) -> Output {
        self.command(config, args).output().expect("roster runs")
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.credentials())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files
    }
}

fn oauth_toml(name: &str, url: &str, auth: &str) -> String {
    format!("[servers.{name}]\ntype = \"streamable-http\"\nurl = \"{url}\"\nauth = {{ {auth} }}\n")
}

/// The fixture with `flags`, and a configuration of it as `docs` that asks for
/// the scope `mcp:tools` alone (the tool `add` also needs `mcp:admin`).
fn tools_scope_only(tag: &Tag, flags: &[&str]) -> (Remote, Home, PathBuf) {
    let remote = Remote::start(tag, "http", flags);
    let home = Home::new();
    let auth = r#"type = "oauth", scopes = ["mcp:tools"]"#;
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), auth));
    (remote, home, config)
}

/// The fixture's counters and every secret it issued.
fn stats(remote: &Remote) -> Value {
    http(remote, "GET", "/control/oauth")
}

fn control(remote: &Remote, action: &str) {
    http(remote, "POST", &format!("/control/oauth/{action}"));
}

/// A bare HTTP/1.1 request to the fixture; its JSON body.
fn http(remote: &Remote, method: &str, path: &str) -> Value {
    let addr = remote.base.strip_prefix("http://").expect("an http URL");
    let mut stream = std::net::TcpStream::connect(addr).expect("the fixture listens");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("an answer");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn count(stats: &Value, what: &str) -> u64 {
    stats[what].as_u64().unwrap_or_else(|| panic!("no {what} in {stats}"))
}

/// No secret the authorization server issued appears in `outputs`.
fn assert_no_secret(remote: &Remote, outputs: &[&Output]) {
    let issued = stats(remote)["issued"].as_array().cloned().unwrap_or_default();
    assert!(!issued.is_empty(), "the fixture issued secrets");
    for out in outputs {
        let text = format!("{}{}", stdout(out), stderr(out));
        for secret in &issued {
            let secret = secret.as_str().unwrap();
            assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_by_name_makes_the_calls_carry_a_token_kept_in_private_files() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));

    let before = home.run(&config, &["call", "echo", "docs", "--args", r#"{"text":"hi"}"#]);
    assert_eq!(code(&before), 3, "auth required before the login: {}", stderr(&before));
    assert!(stderr(&before).contains("roster login docs"), "the way out is named: {}", stderr(&before));

    let login = home.run(&config, &["login", "docs"]);
    assert_eq!(code(&login), 0, "{}{}", stdout(&login), stderr(&login));
    assert!(stdout(&login).starts_with("logged in to docs"), "{}", stdout(&login));
    assert!(stderr(&login).contains("/authorize?"), "the URL is always shown: {}", stderr(&login));

    let files = home.files();
    assert_eq!(files.len(), 1, "one file for the server: {files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&home.credentials()), 0o700);
    let record: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(record["version"], 1, "the format is versioned");
    assert_eq!(record["server"], "docs");

    let call = home.run(&config, &["call", "echo", "docs", "--args", r#"{"text":"hi"}"#]);
    assert_eq!(code(&call), 0, "{}", stderr(&call));
    assert_eq!(stdout(&call).lines().next(), Some("hi"));
    let s = stats(&remote);
    assert_eq!((count(&s, "registrations"), count(&s, "exchanges")), (1, 1), "{s}");
    assert_no_secret(&remote, &[&before, &login, &call]);
}

#[test]
fn login_to_a_url_serves_the_one_shots_of_that_url() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config("");
    let url = format!("{}/mcp", remote.base);
    let login = home.run(&config, &["login", &url, "--json"]);
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    let answer: Value = serde_json::from_slice(&login.stdout).unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["renewable"], true);
    let tools = home.run(&config, &["tools", &url]);
    assert_eq!(code(&tools), 0, "{}", stderr(&tools));
    assert!(stdout(&tools).contains("echo"));
    assert_no_secret(&remote, &[&login, &tools]);
}

#[test]
fn two_processes_renewing_one_rotating_token_refresh_it_once() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    assert_eq!(code(&home.run(&config, &["login", "docs"])), 0);
    // Every access token stops working: both processes get a 401 and renew.
    control(&remote, "expire");
    let calls: Vec<_> = ["a", "b"]
        .iter()
        .map(|text| {
            home.command(&config, &["call", "echo", "docs", "--args", &format!(r#"{{"text":"{text}"}}"#)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("roster runs")
        })
        .collect();
    let outs: Vec<Output> = calls.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for out in &outs {
        assert_eq!(code(out), 0, "{}", stderr(out));
    }
    let s = stats(&remote);
    assert_eq!(count(&s, "refreshes"), 1, "one refresh for both: {s}");
    assert_eq!(count(&s, "refused_refreshes"), 0, "no refresh token spent twice: {s}");
    // What is kept works, without another refresh.
    let again = home.run(&config, &["call", "echo", "docs", "--args", r#"{"text":"c"}"#]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(count(&stats(&remote), "refreshes"), 1);
    assert_no_secret(&remote, &[&outs[0], &outs[1], &again]);
}

#[test]
fn a_refused_refresh_is_auth_required_with_a_login_again() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    assert_eq!(code(&home.run(&config, &["login", "docs"])), 0);
    control(&remote, "expire");
    control(&remote, "revoke-refresh");
    let out = home.run(&config, &["call", "echo", "docs", "--args", r#"{"text":"a"}"#]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("refused to renew the token"), "{}", stderr(&out));
    assert!(stderr(&out).contains("roster login docs"), "{}", stderr(&out));
    assert_eq!(count(&stats(&remote), "refused_refreshes"), 1);
}

#[test]
fn a_call_refused_for_its_scope_makes_the_next_login_ask_for_it() {
    let tag = Tag::new();
    let (remote, home, config) = tools_scope_only(&tag, &["--oauth"]);
    let login = home.run(&config, &["login", "docs"]);
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    assert!(stdout(&login).contains("(scopes: mcp:tools)"), "the configured scope: {}", stdout(&login));

    // `add` needs mcp:admin. The session's initialize passes with mcp:tools, so
    // only the call itself is refused, and a probe at login time would not see it.
    let add = ["call", "add", "docs", "--args", r#"{"a":2,"b":3}"#];
    let refused = home.run(&config, &add);
    assert_eq!(code(&refused), 3, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("insufficient scope"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("roster login docs"), "{}", stderr(&refused));

    let again = home.run(&config, &["login", "docs"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stdout(&again).contains("(scopes: mcp:tools mcp:admin)"), "stepped up: {}", stdout(&again));
    let record: Value = serde_json::from_slice(&std::fs::read(&home.files()[0]).unwrap()).unwrap();
    assert!(record.get("required_scopes").is_none(), "asked for, so no longer kept: {record}");

    let added = home.run(&config, &add);
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    assert_eq!(stdout(&added).lines().next(), Some("5"));
    assert_no_secret(&remote, &[&login, &refused, &again, &added]);
}

#[test]
fn a_server_that_refuses_every_request_for_its_scope_gets_it_at_the_next_login() {
    let tag = Tag::new();
    let (_remote, home, config) = tools_scope_only(&tag, &["--oauth", "--oauth-admin-only"]);
    let login = home.run(&config, &["login", "docs"]);
    assert!(stdout(&login).contains("(scopes: mcp:tools)"), "{}{}", stdout(&login), stderr(&login));
    // No request has been refused yet: what login's own probe, made with the
    // kept token, is told decides the step-up.
    let again = home.run(&config, &["login", "docs"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stdout(&again).contains("(scopes: mcp:tools mcp:admin)"), "stepped up: {}", stdout(&again));
    let ping = home.run(&config, &["ping", "docs"]);
    assert_eq!(code(&ping), 0, "{}", stderr(&ping));
}

#[test]
fn a_scope_given_to_login_is_asked_for_with_the_configured_ones() {
    let tag = Tag::new();
    let (_remote, home, config) = tools_scope_only(&tag, &["--oauth"]);
    let login = home.run(&config, &["login", "docs", "--scope", "mcp:admin", "--scope", "mcp:tools"]);
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    assert!(stdout(&login).contains("(scopes: mcp:tools mcp:admin)"), "each once: {}", stdout(&login));
    let added = home.run(&config, &["call", "add", "docs", "--args", r#"{"a":2,"b":3}"#]);
    assert_eq!(stdout(&added).lines().next(), Some("5"), "{}", stderr(&added));
}

#[test]
fn a_changed_url_does_not_reuse_the_old_token() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    assert_eq!(code(&home.run(&config, &["login", "docs"])), 0);
    let moved = home.config(&oauth_toml("docs", &format!("{}/mcp/v2", remote.base), "type = \"oauth\""));
    let out = home.run(&moved, &["ping", "docs"]);
    assert_eq!(code(&out), 3, "no token for the new URL: {}", stderr(&out));
}

#[test]
fn logout_revokes_and_removes_the_tokens() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    assert_eq!(code(&home.run(&config, &["login", "docs"])), 0);
    let out = home.run(&config, &["logout", "docs"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("tokens removed, revoked"), "{}", stdout(&out));
    assert!(home.files().is_empty(), "the file is gone");
    assert_eq!(count(&stats(&remote), "revocations"), 2, "the refresh and the access token");
    let again = home.run(&config, &["logout", "docs"]);
    assert!(stdout(&again).contains("no tokens kept for docs"), "{}", stdout(&again));
    let call = home.run(&config, &["ping", "docs"]);
    assert_eq!(code(&call), 3, "the token no longer works: {}", stderr(&call));
}

#[test]
fn client_credentials_get_their_token_and_a_wider_one_with_no_person() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth", "--oauth-client", "svc:s3cret-value"]);
    let home = Home::new();
    let auth =
        r#"type = "oauth", grant = "client_credentials", client_id = "svc", client_secret_env = "ROSTER_TEST_SECRET""#;
    let config = home.config(&oauth_toml("svc", &format!("{}/mcp", remote.base), auth));

    let missing = home.run(&config, &["ping", "svc"]);
    assert_eq!(code(&missing), 5, "{}", stderr(&missing));
    assert!(stderr(&missing).contains("ROSTER_TEST_SECRET, which is not set"), "{}", stderr(&missing));

    let mut call = home.command(&config, &["call", "echo", "svc", "--args", r#"{"text":"m2m"}"#]);
    let out = call.env("ROSTER_TEST_SECRET", "s3cret-value").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(count(&stats(&remote), "client_credentials"), 1);

    // `add` needs mcp:admin: a 403 insufficient_scope, a wider token, the call.
    let mut add = home.command(&config, &["call", "add", "svc", "--args", r#"{"a":2,"b":3}"#]);
    let added = add.env("ROSTER_TEST_SECRET", "s3cret-value").output().unwrap();
    assert_eq!(code(&added), 0, "{}", stderr(&added));
    assert_eq!(stdout(&added).lines().next(), Some("5"));
    assert_eq!(count(&stats(&remote), "client_credentials"), 2, "one more token, for both scopes");
    let text = format!("{}{}{}", stderr(&missing), stderr(&out), stderr(&added));
    assert!(!text.contains("s3cret-value"), "the client secret leaked: {text}");
    assert_no_secret(&remote, &[&out, &added]);
}

#[test]
fn the_redirect_listener_ignores_a_foreign_state_and_reports_a_refusal() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    let mut login = home
        .command(&config, &["login", "docs", "--no-browser", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(login.stderr.take().unwrap());
    let mut url = None;
    for _ in 0..50 {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(u) = line.trim().strip_prefix("http://").filter(|l| l.contains("/authorize?")) {
            url = Some(format!("http://{u}"));
            break;
        }
    }
    let url = url.expect("the authorization URL on stderr");
    let param = |name: &str| {
        url.split(['?', '&']).find_map(|p| p.strip_prefix(&format!("{name}="))).map(str::to_owned).unwrap()
    };
    let redirect = param("redirect_uri").replace("%3A", ":").replace("%2F", "/");
    let callback = |query: &str| {
        let addr = redirect.strip_prefix("http://").unwrap().split('/').next().unwrap().to_owned();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(stream, "GET /callback?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.lines().next().unwrap_or_default().to_owned()
    };
    assert!(callback("code=forged&state=not-this-login").contains("400"), "a foreign state is refused");
    let state = param("state");
    assert!(callback(&format!("state={state}&error=access_denied&error_description=no")).contains("200"));
    assert!(wait_until(Duration::from_secs(10), || login.try_wait().unwrap().is_some()), "login ends");
    let status = login.wait().unwrap();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("refused the login: access_denied (no)"), "{rest}");
    assert!(rest.contains("ignored a callback with another state"), "{rest}");
    assert!(home.files().is_empty(), "nothing stored");
}

#[test]
fn a_login_nobody_completes_times_out_and_stores_nothing() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config(&oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\""));
    let out = home.run(&config, &["login", "docs", "--no-browser", "--timeout", "1s"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("no login completed within 1s"), "{}", stderr(&out));
    assert!(home.files().is_empty());
}

#[test]
fn a_login_reaches_the_running_up_and_its_tokens_are_renewed_there() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let toml = format!(
        "{}[defaults]\nauto_start = true\nhealth_check_interval = \"200ms\"\n\n{}",
        "",
        oauth_toml("docs", &format!("{}/mcp", remote.base), "type = \"oauth\"")
    );
    let state = home.state();
    let up = Up::start_with_env(&toml, &[], &[("XDG_STATE_HOME", state.as_os_str())]);
    assert!(
        wait_until(Duration::from_secs(10), || up.server("docs")["state"] == "auth_required"),
        "{:?}",
        up.server("docs")
    );
    let config = PathBuf::from(up.config());
    let table = home.run(&config, &["status"]);
    assert!(stdout(&table).contains("docs waits for a login: roster login docs"), "{}", stdout(&table));
    let login = home.run(&config, &["login", "docs"]);
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    assert!(stdout(&login).contains("the running roster connected it: connected"), "{}", stdout(&login));
    assert_eq!(up.server("docs")["state"], "connected", "no restart of roster needed");
    // The server stops accepting the token: the next ping renews it, and the
    // server stays up.
    control(&remote, "expire");
    assert!(wait_until(Duration::from_secs(10), || count(&stats(&remote), "refreshes") == 1), "renewed under up");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(up.server("docs")["state"], "connected", "{:?}", up.server("docs"));
    assert_eq!(up.terminate(), 0);
}

#[test]
fn a_legacy_sse_server_gets_the_token_too() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "sse", &["--oauth"]);
    let home = Home::new();
    let toml = format!("[servers.old]\ntype = \"sse\"\nurl = \"{}/sse\"\nauth = {{ type = \"oauth\" }}\n", remote.base);
    let config = home.config(&toml);
    assert_eq!(code(&home.run(&config, &["ping", "old"])), 3, "auth required before the login");
    let login = home.run(&config, &["login", "old"]);
    assert_eq!(code(&login), 0, "{}", stderr(&login));
    let call = home.run(&config, &["call", "echo", "old", "--args", r#"{"text":"sse"}"#]);
    assert_eq!(code(&call), 0, "{}", stderr(&call));
    assert_eq!(stdout(&call).lines().next(), Some("sse"));
    assert_no_secret(&remote, &[&login, &call]);
}

#[test]
fn a_one_shot_with_login_logs_in_when_challenged_and_does_its_work() {
    let tag = Tag::new();
    let remote = Remote::start(&tag, "http", &["--oauth"]);
    let home = Home::new();
    let config = home.config("");
    let url = format!("{}/mcp", remote.base);
    let out = home.run(&config, &["call", "echo", &url, "--login", "--args", r#"{"text":"after login"}"#]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().next(), Some("after login"));
    assert!(stderr(&out).contains("wants a login"), "{}", stderr(&out));
    assert_eq!(home.files().len(), 1, "the tokens are kept for the next one-shot");
    let again = home.run(&config, &["ping", &url, "--login"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(!stderr(&again).contains("wants a login"), "no second login: {}", stderr(&again));
    assert_eq!(count(&stats(&remote), "exchanges"), 1);
    assert_no_secret(&remote, &[&out, &again]);
}
