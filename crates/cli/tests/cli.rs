//! The `roster` binary, driven as users drive it, against the fixture server in
//! real processes. Every fixture process carries a tag; each test checks that
//! none is left when it ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");

/// The fixture server, built (or found up to date) once per run.
fn fixture() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "roster-tests", "--bin", "roster-fixture"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the fixture builds");
        let dir = Path::new(ROSTER).parent().expect("a target directory");
        dir.join("roster-fixture").display().to_string()
    })
}

use roster_tests::Tag;

/// TOML for a stdio fixture server carrying `tag`.
fn stdio_toml(tag: &Tag, name: &str, extra_args: &[&str]) -> String {
    let args: Vec<String> =
        ["stdio", "--tag", tag.as_str()].iter().chain(extra_args).map(|a| format!("{a:?}")).collect();
    format!("[servers.{name}]\ncommand = {:?}\nargs = [{}]\n", fixture(), args.join(", "))
}

fn assert_gone(tag: &Tag) {
    tag.assert_gone_within(Duration::from_secs(3));
}

/// A fixture serving HTTP or SSE; killed when dropped.
struct Remote {
    child: Child,
    base: String,
}

impl Remote {
    fn start(tag: &Tag, mode: &str, switches: &[&str]) -> Remote {
        let mut child = Command::new(fixture())
            .arg(mode)
            .args(["--tag", tag.as_str()])
            .args(switches)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the fixture starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("a line");
        let base = line.trim().strip_prefix("listening on ").expect("the listening line").to_owned();
        Remote { child, base }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn roster(args: &[&str]) -> Output {
    Command::new(ROSTER).args(args).env("NO_COLOR", "1").output().expect("roster runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(out), stderr(out)))
}

/// A running `roster up --json`, its output lines gathered by a thread.
struct Up {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Mutex<Vec<Value>>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start(toml: &str, extra: &[&str]) -> Up {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("roster.toml");
        std::fs::write(&config, toml).expect("write the config");
        let mut child = Command::new(ROSTER)
            .args(["--json", "--config"])
            .arg(&config)
            .arg("up")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("roster up starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let up = Up { child, lines, seen: Mutex::new(Vec::new()), config, _dir: dir };
        // The first status table means start-up is done.
        up.wait_for(Duration::from_secs(20), |v| v.get("servers").is_some());
        up
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("a UTF-8 path")
    }

    /// Waits for an output line matching `pred` (also among lines already seen).
    fn wait_for(&self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.lock().unwrap().iter().find(|v| pred(v)) {
            return v.clone();
        }
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.lock().unwrap().push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no matching line within {limit:?}; saw {:#?}", self.seen.lock().unwrap()),
            }
        }
    }

    /// Waits for an event of `server` with `reason`.
    fn wait_event(&self, server: &str, reason: &str, limit: Duration) -> Value {
        self.wait_for(limit, |v| v["event"]["server"] == server && v["event"]["reason"] == reason)
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config()];
        all.extend_from_slice(args);
        roster(&all)
    }

    fn status(&self) -> Vec<Value> {
        let out = self.cli(&["status", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        json(&out)["servers"].as_array().cloned().unwrap_or_default()
    }

    fn server(&self, name: &str) -> Value {
        self.status().into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> i32 {
        roster_tests::terminate(self.child.id());
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < until, "roster up did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FAST: &str =
    "[defaults]\ninitial_backoff = \"300ms\"\nmax_backoff = \"2s\"\nrestart_grace = \"100ms\"\nauto_start = true\n\n";

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

// ----- check -------------------------------------------------------------------------

#[test]
fn check_lists_a_good_file_and_reports_every_error_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("roster.toml");
    std::fs::write(
        &good,
        "[servers.fs]\ncommand = \"mcp-fs\"\nauto_start = true\n\n[servers.api]\nurl = \"https://api.example/mcp\"\n",
    )
    .unwrap();
    let out = roster(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("fs") && stdout(&out).contains("streamable-http"), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 servers"), "{}", stdout(&out));
    let out = roster(&["check", "--json", "--config", good.to_str().unwrap()]);
    assert_eq!(json(&out)["servers"].as_array().map(Vec::len), Some(2));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[servers.fs]\ncomand = \"x\"\n\n[servers.api]\nurl = \"ftp://nope\"\ntimeout = 0\n").unwrap();
    let out = roster(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!("{file}:2:1: server \"fs\": unknown key `comand` (did you mean `command`?)")),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:5:1: server \"api\": url: must start with http:// or https://")), "{err}");
    assert!(err.contains(&format!("{file}:6:1: server \"api\": timeout: must be between 1 and 300 seconds")), "{err}");
    let out = roster(&["check", "--json", "--config", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(json(&out)["errors"].as_array().is_some_and(|e| e.len() >= 4), "{}", stdout(&out));
}

#[test]
fn claude_desktop_and_vs_code_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude_desktop_config.json");
    std::fs::write(
        &claude,
        r#"{"mcpServers": {"filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]}, "remote": {"type": "sse", "url": "https://mcp.example/sse"}}}"#,
    )
    .unwrap();
    let out = roster(&["check", "--json", "--config", claude.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["format"], "mcp-servers-json");
    assert_eq!(v["servers"][0]["auto_start"], true);

    let vscode = dir.path().join("mcp.json");
    std::fs::write(&vscode, r#"{"servers": {"gh": {"type": "http", "url": "https://api.example/mcp", "headers": {"Authorization": "Bearer x"}}}}"#).unwrap();
    let out = roster(&["check", "--json", "--config", vscode.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["format"], "vs-code-json");
    assert_eq!(v["servers"][0]["type"], "streamable-http");
    assert!(!stdout(&out).contains("Bearer x"), "header values are never shown");
}

// ----- up ---------------------------------------------------------------------------

#[test]
fn up_runs_stdio_http_and_sse_servers() {
    let tag = Tag::new();
    let http = Remote::start(&tag, "http", &[]);
    let sse = Remote::start(&tag, "sse", &[]);
    let toml = format!(
        "{FAST}{}\n[servers.web]\nurl = \"{}/mcp\"\n\n[servers.legacy]\ntype = \"sse\"\nurl = \"{}/sse\"\n",
        stdio_toml(&tag, "local", &[]),
        http.base,
        sse.base
    );
    let up = Up::start(&toml, &[]);
    let ok = wait_until(Duration::from_secs(10), || {
        let s = up.status();
        s.iter().any(|x| x["name"] == "local" && x["state"] == "running")
            && s.iter().filter(|x| x["state"] == "connected").count() == 2
    });
    assert!(ok, "{:#?}", up.status());
    assert_eq!(up.terminate(), 0);
    drop((http, sse));
    assert_gone(&tag);
}

#[test]
fn a_killed_server_fails_and_comes_back_after_the_backoff() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}{}", stdio_toml(&tag, "fs", &[])), &[]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    let pid = up.server("fs")["pid"].as_u64().expect("a pid");
    roster_tests::kill(u32::try_from(pid).expect("a pid"));
    let failed = up.wait_event("fs", "MCPServerFailed", Duration::from_secs(5));
    assert!(failed["event"]["error"].as_str().unwrap_or_default().contains("signal: 9"), "{failed}");
    up.wait_event("fs", "MCPServerRecoverySucceeded", Duration::from_secs(5));
    let now = up.server("fs");
    assert_eq!(now["state"], "running");
    assert_ne!(now["pid"].as_u64(), Some(pid), "a new process");
    assert_eq!(now["crash_count"], 1);
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

#[test]
fn an_edited_file_restarts_only_the_changed_server_and_plan_says_why() {
    let tag = Tag::new();
    let first = format!("{FAST}{}{}", stdio_toml(&tag, "a", &[]), stdio_toml(&tag, "b", &[]));
    // Without watching: `plan` shows what a reload would do.
    let up = Up::start(&first, &["--no-watch"]);
    assert!(wait_until(Duration::from_secs(10), || up.status().iter().all(|s| s["state"] == "running")));
    let out = up.cli(&["plan"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "no changes");
    let second = format!("{FAST}{}{}", stdio_toml(&tag, "a", &[]), stdio_toml(&tag, "b", &["--slow-ping", "1"]));
    std::fs::write(&up.config, &second).unwrap();
    let out = up.cli(&["plan"]);
    assert_eq!(stdout(&out).trim(), "b: restart (args)", "{}", stderr(&out));
    let out = up.cli(&["plan", "--json"]);
    assert_eq!(
        json(&out)["plan"]["steps"][1],
        serde_json::json!({"server": "b", "action": "restart", "fields": ["args"]})
    );
    assert_eq!(up.terminate(), 0);

    // Watching (the default): the edit is applied, to b only.
    let up = Up::start(&first, &[]);
    assert!(wait_until(Duration::from_secs(10), || up.status().iter().all(|s| s["state"] == "running")));
    let (a, b) = (up.server("a")["pid"].clone(), up.server("b")["pid"].clone());
    std::fs::write(&up.config, &second).unwrap();
    let plan = up.wait_for(Duration::from_secs(5), |v| v.get("plan").is_some());
    let steps = plan["plan"]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["action"], "unchanged");
    assert_eq!(steps[1]["action"], "restart");
    up.wait_event("b", "MCPServerRecoverySucceeded", Duration::from_secs(5));
    assert_eq!(up.server("a")["pid"], a, "a was not touched");
    assert_ne!(up.server("b")["pid"], b, "b was restarted");
    // A broken edit keeps the running configuration.
    std::fs::write(&up.config, "[servers.b]\ncomand = 1\n").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(up.status().len(), 2);
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

#[test]
fn stop_start_and_restart_through_the_socket() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}{}", stdio_toml(&tag, "fs", &[])), &[]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    let out = up.cli(&["stop", "fs"]);
    assert_eq!((code(&out), stdout(&out).trim()), (0, "fs: stopped"), "{}", stderr(&out));
    assert!(tag.processes().is_empty(), "stopped means gone");
    let out = up.cli(&["start", "fs"]);
    assert_eq!((code(&out), stdout(&out).trim()), (0, "fs: running"), "{}", stderr(&out));
    let pid = up.server("fs")["pid"].clone();
    let out = up.cli(&["restart", "fs", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["status"]["state"], "running");
    assert_ne!(up.server("fs")["pid"], pid);
    let out = up.cli(&["start", "nope"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("no server named \"nope\""), "{}", stderr(&out));
    let out = up.cli(&["start", "fs"]);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

#[test]
fn events_follow_the_stream() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}{}", stdio_toml(&tag, "fs", &[])), &[]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    let mut events = Command::new(ROSTER)
        .args(["--json", "--config", up.config(), "events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(events.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    let mut reasons = Vec::new();
    let mut line = String::new();
    while reasons.len() < 4 && reader.read_line(&mut line).unwrap_or(0) > 0 {
        let v: Value = serde_json::from_str(&line).unwrap();
        if let Some(r) = v["event"]["reason"].as_str() {
            reasons.push(r.to_owned());
        }
        assert!(v["event"]["seq"].as_u64().is_some() || v.get("ok").is_some(), "{v}");
        line.clear();
    }
    assert_eq!(reasons, ["MCPServerRecoveryStarted", "MCPServerStopped", "MCPServerStarting", "MCPServerStarted"]);
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

#[test]
fn a_second_up_on_the_same_config_refuses() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}{}", stdio_toml(&tag, "fs", &[])), &[]);
    let out = roster(&["--config", up.config(), "up"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(up.terminate(), 0);
    let out = roster(&["--config", "/nonexistent/roster.toml", "status"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("no `roster up` is running"), "{}", stderr(&out));
    assert_gone(&tag);
}

#[test]
fn up_says_when_no_server_would_start() {
    let tag = Tag::new();
    let toml = stdio_toml(&tag, "fs", &[]);
    let up = Up::start(&toml, &[]);
    up.wait_for(Duration::from_secs(5), |v| {
        v["note"].as_str().is_some_and(|n| n.contains("no server starts on its own"))
    });
    assert_eq!(up.server("fs")["state"], "unknown");
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

// ----- one-shots ---------------------------------------------------------------------

fn with_fixture(tag: &Tag, args: &[&str], switches: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--", fixture(), "stdio", "--tag", tag.as_str()]);
    all.extend_from_slice(switches);
    roster(&all)
}

#[test]
fn one_shots_over_stdio() {
    let tag = Tag::new();
    let out = with_fixture(&tag, &["ping"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("pong in"), "{}", stdout(&out));
    let out = with_fixture(&tag, &["tools", "--json"], &[]);
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["protocol_version"], "2025-11-25");
    assert!(v["tools"].as_array().unwrap().iter().any(|t| t["name"] == "echo"));
    assert!(v["elapsed_ms"].as_u64().is_some());
    let out = with_fixture(&tag, &["call", "echo", "--args", r#"{"text": "hello"}"#], &[]);
    assert_eq!((code(&out), stdout(&out).lines().next()), (0, Some("hello")), "{}", stderr(&out));
    let out = with_fixture(&tag, &["call", "fail", "--json", "--args", r#"{"text": "nope"}"#], &[]);
    assert_eq!(code(&out), 1, "a tool error");
    assert_eq!(json(&out)["result"]["isError"], true);
    let out = with_fixture(&tag, &["call", "no-such-tool"], &[]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert_gone(&tag);
}

#[test]
fn one_shot_failures_have_their_exit_codes() {
    let tag = Tag::new();
    // 2: usage.
    assert_eq!(code(&roster(&["ping"])), 2);
    assert_eq!(code(&roster(&["call", "echo", "--args", "[1]", "--", "x"])), 2);
    assert_eq!(code(&roster(&["--config", "/nonexistent.toml", "ping", "some-name"])), 2);
    // 4: transient, with the server's stderr.
    let out = with_fixture(&tag, &["ping", "--json"], &["--stderr", "boom: no API key", "--exit-at-start", "3"]);
    assert_eq!(code(&out), 4);
    let v = json(&out);
    assert_eq!(v["error"]["class"], "transient");
    assert!(v["error"]["message"].as_str().unwrap().contains("boom: no API key"), "{v}");
    // 5: permanent.
    let out = roster(&["ping", "--", "/nonexistent/mcp-server"]);
    assert_eq!(code(&out), 5);
    assert!(stderr(&out).contains("command not found"), "{}", stderr(&out));
    // 4: a server that never answers, within --timeout; nothing left behind.
    let started = Instant::now();
    let out = with_fixture(&tag, &["ping", "--timeout", "1"], &["--never-initialize", "--grandchild", "inherit"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    // 4: a refused port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_eq!(code(&roster(&["ping", &format!("http://127.0.0.1:{port}/mcp")])), 4);
    assert_gone(&tag);
}

#[test]
fn one_shots_over_http_and_sse() {
    let tag = Tag::new();
    let http = Remote::start(&tag, "http", &["--require-header", "X-Api-Key:k"]);
    let url = format!("{}/mcp", http.base);
    let out = roster(&["tools", "--json", &url, "--header", "X-Api-Key: k"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(json(&out)["tools"].as_array().unwrap().len() >= 5);
    let out = roster(&["call", "add", &url, "--header", "X-Api-Key: k", "--args", r#"{"a": 1, "b": 2}"#]);
    assert_eq!(stdout(&out).lines().next(), Some("3"), "{}", stderr(&out));
    let out = roster(&["ping", &url]);
    assert_eq!(code(&out), 5, "403 without the header is permanent: {}", stderr(&out));

    let sse = Remote::start(&tag, "sse", &[]);
    let out = roster(&["tools", "--json", "--transport", "sse", &format!("{}/sse", sse.base)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["protocol_version"], "2024-11-05");

    // 3: auth required, with the challenge.
    let locked = Remote::start(&tag, "http", &["--unauthorized", "challenge"]);
    let out = roster(&["ping", "--json", &format!("{}/mcp", locked.base)]);
    assert_eq!(code(&out), 3);
    let v = json(&out);
    assert_eq!(v["error"]["class"], "auth_required");
    assert_eq!(
        v["error"]["challenge"]["resource_metadata"],
        format!("{}/.well-known/oauth-protected-resource", locked.base)
    );
    let out = roster(&["ping", &format!("{}/mcp", locked.base)]);
    assert!(stderr(&out).contains("resource metadata:"), "{}", stderr(&out));
    drop((http, sse, locked));
    assert_gone(&tag);
}

#[test]
fn a_one_shot_by_name_uses_the_configuration() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roster.toml");
    std::fs::write(&config, stdio_toml(&tag, "fx", &[])).unwrap();
    let out = roster(&["--config", config.to_str().unwrap(), "call", "echo", "fx", "--args", r#"{"text": "by name"}"#]);
    assert_eq!(stdout(&out).lines().next(), Some("by name"), "{}", stderr(&out));
    let out = roster(&["--config", config.to_str().unwrap(), "ping", "nope"]);
    assert_eq!(code(&out), 2);
    assert_gone(&tag);
}

#[test]
fn completions_and_help() {
    let out = roster(&["completions", "bash"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("roster"));
    let out = roster(&["--help"]);
    assert!(stdout(&out).contains("keeps MCP servers alive"));
    let _ = std::io::stdout().flush();
}

// ----- containment: nothing of a server outlives roster ---------------------------------

#[test]
fn whatever_roster_dies_of_every_process_of_every_server_is_gone() {
    let tag = Tag::new();
    let sh_wrapped = format!(
        "[servers.wrapped]\ncommand = \"sh\"\nargs = [\"-c\", {:?}]\n",
        format!("{} stdio --tag {} --grandchild null", fixture(), tag.as_str())
    );
    let toml = format!(
        "{FAST}{}{}{}",
        stdio_toml(&tag, "daemonizer", &["--daemonize"]),
        stdio_toml(&tag, "parent", &["--grandchild", "null"]),
        sh_wrapped
    );
    let up = Up::start(&toml, &[]);
    for name in ["daemonizer", "parent", "wrapped"] {
        assert!(wait_until(Duration::from_secs(10), || up.server(name)["state"] == "running"), "{name}");
    }
    // daemonizer + its daemon, parent + its grandchild, the wrapped server + its grandchild.
    assert!(wait_until(Duration::from_secs(5), || tag.processes().len() == 6), "{:?}", tag.processes());
    roster_tests::kill(up.child.id());
    tag.assert_gone_within(Duration::from_secs(2));
}

#[test]
fn a_one_shot_takes_the_servers_daemon_with_it() {
    let tag = Tag::new();
    let out = with_fixture(&tag, &["ping"], &["--daemonize"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_gone(&tag);
}
