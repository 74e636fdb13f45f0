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

mod login;
mod serve;

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");

/// The fixture server, built (or found up to date) once per run.
fn fixture() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "roster-tests", "--bin", "roster-fixture"]);
        // Cargo sets these for a test; build scripts (ring's) rerun when they change.
        // Without them, this build and one from a shell share their artifacts
        // instead of rebuilding in turn.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_PRIMARY_"].iter().any(|p| key.starts_with(p)) {
                build.env_remove(&*key);
            }
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "the fixture builds");
        let dir = Path::new(ROSTER).parent().expect("a target directory");
        dir.join("roster-fixture").display().to_string()
    })
}

use roster_tests::Tag;
use roster_tests::bench::Reaped;

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
        Up::start_with_env(toml, extra, &[])
    }

    /// The same, with `env` set for roster.
    fn start_with_env(toml: &str, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Up {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("roster.toml");
        std::fs::write(&config, toml).expect("write the config");
        let mut child = Command::new(ROSTER)
            .envs(env.iter().copied())
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

/// `roster events --json [--since SEQ]`, its lines gathered by a thread.
fn follow(up: &Up, since: Option<u64>) -> (Child, mpsc::Receiver<Value>) {
    let mut cmd = Command::new(ROSTER);
    cmd.args(["--json", "--config", up.config(), "events"]);
    if let Some(seq) = since {
        cmd.args(["--since", &seq.to_string()]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

/// The next `n` lines that are events or losses, within 10 s.
fn next_lines(rx: &mpsc::Receiver<Value>, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v.get("ok").is_some() => {}
            Ok(v) => got.push(v),
            Err(_) => panic!("only {got:?} within 10 s"),
        }
    }
    got
}

#[test]
fn events_since_replays_what_a_reader_missed_and_says_what_is_no_longer_kept() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}event_buffer = 16\n\n{}", stdio_toml(&tag, "fs", &[])), &[]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    // A reader sees everything from the start, then goes away.
    let (mut reader, lines) = follow(&up, Some(0));
    let mut first = next_lines(&lines, 1);
    while first.last().unwrap()["event"]["reason"] != "MCPServerStarted" {
        first.extend(next_lines(&lines, 1));
    }
    let seqs: Vec<u64> = first.iter().map(|v| v["event"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "from the first event, in order: {first:?}");
    let _ = reader.kill();
    let _ = reader.wait();
    let last = up.server("fs");
    assert_eq!(last["state"], "running");
    let seen = *seqs.last().unwrap();

    // While nobody reads, the server restarts: four events.
    assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let (mut resumed, lines) = follow(&up, Some(seen));
    let mut missed = next_lines(&lines, 1);
    while missed.last().unwrap()["event"]["reason"] != "MCPServerStarted" {
        missed.extend(next_lines(&lines, 1));
    }
    let reasons: Vec<&str> = missed.iter().filter_map(|v| v["event"]["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        ["MCPServerRecoveryStarted", "MCPServerStopped", "MCPServerStarting", "MCPServerStarted"],
        "{missed:?}"
    );
    let seqs: Vec<u64> = missed.iter().map(|v| v["event"]["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (seen + 1..=seen + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "exactly the missed ones, once each, in order");
    let seen = *seqs.last().unwrap();
    // ...and then it follows.
    assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    let live = next_lines(&lines, 1);
    assert_eq!(live[0]["event"]["seq"], seen + 1, "{live:?}");
    let _ = resumed.kill();
    let _ = resumed.wait();

    // Only the last 16 are kept: after three more restarts (12 events), a
    // reader from 0 is told how many are gone.
    for _ in 0..3 {
        assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    }
    up.wait_for(Duration::from_secs(10), |v| v["event"]["seq"].as_u64() >= Some(seen + 16));
    std::thread::sleep(Duration::from_millis(200));
    let (mut late, lines) = follow(&up, Some(0));
    let head = next_lines(&lines, 2);
    let lost = head[0]["lost"].as_u64().unwrap_or_else(|| panic!("a loss first: {head:?}"));
    assert_eq!(head[1]["event"]["seq"].as_u64(), Some(lost + 1), "then the oldest kept: {head:?}");
    let _ = late.kill();
    let _ = late.wait();
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the endpoint listens");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_follow_the_lifecycle_and_their_names_are_stable() {
    let tag = Tag::new();
    let web = Remote::start(&tag, "http", &["--unauthorized", "challenge"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Pings every 200 ms; a server that crashes 300 ms after each start.
    let defaults = FAST.replace("auto_start = true\n", "auto_start = true\nhealth_check_interval = \"200ms\"\n");
    let toml = format!(
        "{defaults}{}{}[servers.web]\nurl = \"{}/mcp\"\n",
        stdio_toml(&tag, "fs", &[]),
        stdio_toml(&tag, "crashy", &["--exit-after-init", "300"]),
        web.base
    );
    let up = Up::start(&toml, &["--metrics", &format!("127.0.0.1:{port}")]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    up.wait_event("crashy", "MCPServerRecoverySucceeded", Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || up.server("web")["state"] == "auth_required"));
    assert!(wait_until(Duration::from_secs(10), || up.server("fs")["ping_latency_us"].is_u64()), "pinged");
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200, "every server has had its first attempt");

    assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text: {text}");
    let m = samples(&text);
    let get = |key: &str| m.get(key).copied().unwrap_or_else(|| panic!("no {key} in\n{text}"));
    assert_eq!(get(r#"roster_server_state{server="fs",state="running"}"#), 1.0);
    assert_eq!(get(r#"roster_server_state{server="fs",state="failed"}"#), 0.0);
    assert_eq!(get(r#"roster_server_state{server="web",state="auth_required"}"#), 1.0);
    assert_eq!(get(r#"roster_server_up{server="fs"}"#), 1.0);
    assert_eq!(get(r#"roster_server_up{server="web"}"#), 0.0);
    assert!(get(r#"roster_servers{state="running"}"#) >= 1.0);
    assert_eq!(get(r#"roster_servers{state="auth_required"}"#), 1.0);
    assert_eq!(get(r#"roster_server_restarts_total{server="fs"}"#), 1.0);
    assert_eq!(get(r#"roster_server_connect_attempts_total{server="fs",outcome="ok",class="none"}"#), 2.0);
    assert_eq!(
        get(r#"roster_server_connect_attempts_total{server="web",outcome="auth_required",class="needs_credentials"}"#),
        1.0
    );
    // The crash: counted, recovered by a restart.
    assert!(get(r#"roster_server_crash_count{server="crashy"}"#) >= 1.0);
    assert!(get(r#"roster_server_restarts_total{server="crashy"}"#) >= 1.0);
    assert!(get(r#"roster_server_connect_attempts_total{server="crashy",outcome="ok",class="none"}"#) >= 2.0);
    // Pings: counted, and their latency histogram moved.
    assert!(get(r#"roster_server_pings_total{server="fs",outcome="ok"}"#) >= 1.0);
    assert!(get(r#"roster_server_ping_latency_seconds_count{server="fs"}"#) >= 1.0);
    assert!(get(r#"roster_server_ping_latency_seconds_sum{server="fs"}"#) > 0.0);
    assert_eq!(get("roster_events_dropped_total"), 0.0, "nobody fell behind");
    assert_eq!(get(r#"roster_server_health{server="fs",health="degraded"}"#), 0.0, "every health value has a line");
    assert_eq!(get(r#"roster_server_connect_duration_seconds_count{server="fs"}"#), 2.0, "the histogram moved");
    assert!(get(r#"roster_server_connect_duration_seconds_sum{server="fs"}"#) > 0.0);
    assert!(get("roster_events_published_total") >= 8.0);
    assert!(get("roster_control_requests_total") >= 2.0, "the status and restart requests");

    // The names and their types, as dashboards and alerts depend on them
    // (`roster_server_next_retry_timestamp_seconds` too, but only while a retry
    // is due: the crashing server may or may not be waiting for one now).
    let retry_type = "roster_server_next_retry_timestamp_seconds gauge";
    let mut types: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter(|t| *t != retry_type).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "roster_control_requests counter",
            "roster_events_dropped counter",
            "roster_events_published counter",
            "roster_server_connect_attempts counter",
            "roster_server_connect_duration_seconds histogram",
            "roster_server_consecutive_failures gauge",
            "roster_server_crash_count gauge",
            "roster_server_health gauge",
            "roster_server_ping_latency_seconds histogram",
            "roster_server_pings counter",
            "roster_server_restarts counter",
            "roster_server_state gauge",
            "roster_server_up gauge",
            "roster_servers gauge",
        ]
    );

    // A scrape after a change shows it (a scrape keeps the texts of families
    // that did not change, so this is what tells a kept text from a stale one).
    assert_eq!(code(&up.cli(&["stop", "fs"])), 0);
    assert!(wait_until(Duration::from_secs(10), || up.server("fs")["state"] == "stopped"));
    let (_, text) = http_get(port, "/metrics");
    let m = samples(&text);
    let get = |key: &str| m.get(key).copied().unwrap_or_else(|| panic!("no {key} in\n{text}"));
    assert_eq!(get(r#"roster_server_state{server="fs",state="stopped"}"#), 1.0);
    assert_eq!(get(r#"roster_server_state{server="fs",state="running"}"#), 0.0);
    assert_eq!(get(r#"roster_server_up{server="fs"}"#), 0.0);
    assert!(get(r#"roster_servers{state="stopped"}"#) >= 1.0);
    assert_eq!(get(r#"roster_server_health{server="fs",health="healthy"}"#), 0.0);
    assert_eq!(get(r#"roster_server_health{server="fs",health="unknown"}"#), 1.0, "down by request");
    assert!(get("roster_control_requests_total") >= 4.0, "and the stop, and its status");
    assert_eq!(up.terminate(), 0);
    drop(web);
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

// ----- the edges: output, signals, local files, bounds ----------------------------------

/// `roster [--json] --config CONFIG up`, with colour off.
fn up_command(config: &Path, json: bool) -> Command {
    let mut cmd = Command::new(ROSTER);
    if json {
        cmd.arg("--json");
    }
    cmd.arg("--config").arg(config).arg("up").env("NO_COLOR", "1");
    cmd
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let config = dir.join("roster.toml");
    std::fs::write(&config, toml).unwrap();
    config
}

/// Waits up to `limit` for `child` to exit; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(
                status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)),
            );
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `roster --config CONFIG status --json`, given at most `limit` to answer.
fn status_within(config: &Path, limit: Duration) -> Option<Vec<Value>> {
    let mut child = Command::new(ROSTER)
        .args(["status", "--json", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let code = exit_within(&mut child, limit);
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["servers"].as_array().cloned()
}

fn state_of(servers: &[Value], name: &str) -> String {
    servers.iter().find(|s| s["name"] == name).map(|s| s["state"].as_str().unwrap_or("").to_owned()).unwrap_or_default()
}

fn wait_running(config: &Path, names: &[&str]) {
    assert!(
        wait_until(Duration::from_secs(15), || status_within(config, Duration::from_secs(5))
            .is_some_and(|s| names.iter().all(|n| state_of(&s, n) == "running"))),
        "{names:?} running"
    );
}

#[test]
fn a_closed_stdout_stops_up_like_sigterm() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let mut child = up_command(&config, true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    wait_running(&config, &["fs"]);
    drop(out); // `roster up | head -1`
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(0), "a graceful stop, not a panic");
    assert_gone(&tag);
}

#[test]
fn a_full_disk_is_a_warning_and_supervision_goes_on() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut child = up_command(&config, false).stdout(full).stderr(Stdio::piped()).spawn().map(Reaped).unwrap();
    wait_running(&config, &["fs"]);
    roster_tests::terminate(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err.matches("cannot write to stdout").count(), 1, "one warning: {err}");
    assert_gone(&tag);
}

#[test]
fn a_reader_that_stops_reading_never_freezes_supervision() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    // A remote server on a closed port, retried every few milliseconds: events by the thousand.
    let flood = "[defaults]\ninitial_backoff = \"1ms\"\nmax_backoff = \"2ms\"\nauto_start = true\n\n";
    let crashy =
        "[servers.crashy]\nurl = \"http://127.0.0.1:1/mcp\"\n[servers.crashy2]\nurl = \"http://127.0.0.1:1/mcp\"\n";
    let config = write_config(dir.path(), &format!("{flood}{crashy}{}", stdio_toml(&tag, "ok", &[])));
    let mut child = up_command(&config, true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let out = child.stdout.take().unwrap(); // held, not read: the pipe fills up
    std::thread::sleep(Duration::from_secs(6));
    let servers = status_within(&config, Duration::from_secs(5)).expect("status answers while nobody reads");
    assert_eq!(state_of(&servers, "ok"), "running");
    let failures =
        |s: &[Value]| s.iter().find(|s| s["name"] == "crashy").and_then(|s| s["consecutive_failures"].as_u64());
    let before = failures(&servers).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let later = failures(&status_within(&config, Duration::from_secs(5)).unwrap()).unwrap_or(0);
    assert!(later > before, "retries go on ({before} → {later})");
    // Reading again: what was dropped is counted.
    let dropped = BufReader::new(out).lines().map_while(Result::ok).take(20_000).find(|l| l.contains("\"dropped\""));
    assert!(dropped.is_some(), "a line says how many were dropped");
    roster_tests::terminate(child.id());
    let _ = exit_within(&mut child, Duration::from_secs(15));
    assert_gone(&tag);
}

#[test]
fn sighup_stops_up_gracefully() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let mut child = up_command(&config, true).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    wait_running(&config, &["fs"]);
    roster_tests::hang_up(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(0), "not killed by SIGHUP");
    assert_gone(&tag);
    assert!(status_within(&config, Duration::from_secs(5)).is_none(), "the socket is gone");
}

#[test]
fn a_ctrl_c_during_start_up_is_not_lost() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let slow = stdio_toml(&tag, "slow", &["--never-initialize"]);
    let config = write_config(dir.path(), &format!("{FAST}{slow}timeout = 10\n"));
    let mut child = up_command(&config, true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !tag.processes().is_empty()), "the server is starting");
    let t = Instant::now();
    roster_tests::interrupt(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(10)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "not after the start-up settled: {:?}", t.elapsed());
    assert_gone(&tag);
}

#[test]
fn a_second_ctrl_c_kills_at_once() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "stubborn", &["--ignore-sigterm", "--linger"])));
    let mut child = up_command(&config, true).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    wait_running(&config, &["stubborn"]);
    roster_tests::interrupt(child.id());
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    roster_tests::interrupt(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(5)), Some(130));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    tag.assert_gone_within(Duration::from_secs(2));
}

#[test]
fn a_shutdown_that_has_to_kill_names_the_servers_and_fails() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let defaults = "[defaults]\nshutdown_timeout = \"1s\"\nauto_start = true\n\n";
    let config = write_config(
        dir.path(),
        &format!(
            "{defaults}{}{}",
            stdio_toml(&tag, "stubborn", &["--ignore-sigterm", "--linger"]),
            stdio_toml(&tag, "fine", &[])
        ),
    );
    let mut child = up_command(&config, true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let out = child.stdout.take().unwrap();
    wait_running(&config, &["stubborn", "fine"]);
    roster_tests::terminate(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(15)), Some(1), "not a clean stop");
    let notes: Vec<String> =
        BufReader::new(out).lines().map_while(Result::ok).filter(|l| l.contains("\"note\"")).collect();
    let last = notes.last().cloned().unwrap_or_default();
    assert!(last.contains("killed: stubborn"), "{notes:?}");
    assert_gone(&tag);
}

#[test]
fn a_one_shot_interrupted_closes_its_server() {
    let tag = Tag::new();
    let mut child = Command::new(ROSTER)
        .args(["call", "sleep", "--args", r#"{"ms": 20000}"#, "--", fixture(), "stdio", "--tag", tag.as_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !tag.processes().is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    roster_tests::interrupt(child.id());
    assert_eq!(exit_within(&mut child, Duration::from_secs(5)), Some(130));
    assert_gone(&tag);
}

#[test]
fn a_runtime_directory_others_may_write_is_refused_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(runtime.join("roster")).unwrap();
    std::fs::set_permissions(runtime.join("roster"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = up_command(&config, false).env("XDG_RUNTIME_DIR", &runtime).output().unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("may be written by its group or others (mode 777)"), "{}", stderr(&out));
    assert_gone(&tag);
}

#[test]
fn a_second_up_is_refused_through_a_hard_link_and_with_another_runtime_dir() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let mut first = up_command(&config, true).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    wait_running(&config, &["fs"]);
    let link = dir.path().join("same.toml");
    std::fs::hard_link(&config, &link).unwrap();
    let other_runtime = dir.path().join("elsewhere");
    std::fs::create_dir(&other_runtime).unwrap();
    for (path, runtime) in [(&link, None), (&config, Some(&other_runtime))] {
        let mut cmd = up_command(path, false);
        if let Some(r) = runtime {
            cmd.env("XDG_RUNTIME_DIR", r);
        }
        let out = cmd.output().unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    }
    assert_eq!(tag.processes().len(), 1, "the server runs once");
    roster_tests::terminate(first.id());
    let _ = exit_within(&mut first, Duration::from_secs(15));
    assert_gone(&tag);
}

#[test]
fn url_secrets_appear_in_no_output_and_no_log() {
    let tag = Tag::new();
    let server = Remote::start(&tag, "http", &[]);
    let url = server.base.replace("http://", "http://bob:s3cret@") + "/mcp?token=hunter2&v=1";
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}[servers.api]\nurl = {url:?}\n"));
    let mut seen = String::new();
    let mut run = |args: &[&str]| {
        let out = Command::new(ROSTER).args(args).env("RUST_LOG", "trace").env("NO_COLOR", "1").output().unwrap();
        seen.push_str(&stdout(&out));
        seen.push_str(&stderr(&out));
    };
    let cfg = config.to_str().unwrap();
    run(&["--config", cfg, "check"]);
    run(&["--json", "--config", cfg, "check"]);
    run(&["tools", &url]);
    run(&["--json", "tools", &(server.base.replace("http://", "http://bob:s3cret@127.0.0.1:1/") + "?token=hunter2")]);
    let log = dir.path().join("up.log");
    let mut up = up_command(&config, true)
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(dir.path().join("up.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Reaped)
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || status_within(&config, Duration::from_secs(5))
        .is_some_and(|s| state_of(&s, "api") == "connected")));
    run(&["--json", "--config", cfg, "status"]);
    run(&["--config", cfg, "status"]);
    roster_tests::terminate(up.id());
    let _ = exit_within(&mut up, Duration::from_secs(15));
    seen.push_str(&std::fs::read_to_string(&log).unwrap());
    seen.push_str(&std::fs::read_to_string(dir.path().join("up.out")).unwrap());
    assert!(seen.contains("bob:<redacted>@") && seen.contains("token=<redacted>"), "the URLs are shown, redacted");
    assert!(!seen.contains("s3cret") && !seen.contains("hunter2"), "a secret leaked");
    drop(server);
    assert_gone(&tag);
}

#[test]
fn the_control_socket_bounds_its_clients() {
    use std::os::unix::net::UnixStream;
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &[])));
    let mut up = up_command(&config, true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // Keep reading: a closed stdout would stop `up`.
    std::thread::spawn(move || for _ in out.lines() {});
    let socket = first.trim().rsplit("control socket ").next().unwrap().trim_end_matches("\"}").to_owned();
    wait_running(&config, &["fs"]);
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    let before = rss(up.id());
    // Many clients that say nothing, and one that sends an endless line.
    let idle: Vec<UnixStream> = (0..300).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    let mut flood = UnixStream::connect(&socket).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        if flood.write_all(&chunk).is_err() {
            break; // roster hung up on it: the line was too long
        }
    }
    let servers = status_within(&config, Duration::from_secs(10)).expect("status answers for everyone else");
    assert_eq!(state_of(&servers, "fs"), "running");
    let grown = rss(up.id()).saturating_sub(before);
    assert!(grown < 32 * 1024, "up grew by {grown} KiB");
    drop(idle);
    roster_tests::terminate(up.id());
    let _ = exit_within(&mut up, Duration::from_secs(15));
    assert_gone(&tag);
}

#[test]
fn a_same_size_edit_that_keeps_the_mtime_is_reloaded() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{FAST}{}", stdio_toml(&tag, "fs", &["--stderr", "aaaa"])));
    let up = Up::start(&std::fs::read_to_string(&config).unwrap(), &[]);
    let _ = up.wait_event("fs", "MCPServerStarted", Duration::from_secs(15));
    let path = Path::new(up.config());
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(path).unwrap().replace("aaaa", "bbbb");
    std::fs::write(path, &text).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    let _ = up.wait_event("fs", "MCPServerRecoveryStarted", Duration::from_secs(10));
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

/// The text lines of a child's stdout, gathered by a thread.
struct TextLines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn text_lines(child: &mut Child) -> TextLines {
    let out = BufReader::new(child.stdout.take().expect("a piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    TextLines { rx, seen: Vec::new() }
}

impl TextLines {
    /// The first line (seen before or arriving within `limit`) that matches.
    fn wait(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        let until = Instant::now() + limit;
        while let Ok(line) = self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
        None
    }

    /// Waits until `count` lines match (or `limit` passes); every line seen.
    fn gather(&mut self, limit: Duration, count: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let until = Instant::now() + limit;
        while self.seen.iter().filter(|l| pred(l)).count() < count {
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        self.seen.clone()
    }
}

/// Without -v, `up` says one line per attempt of a retrying server and one line
/// per change of a crashing one; no starting, stopping or Recovery* steps.
#[test]
fn up_prints_one_line_per_attempt_and_per_change() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let toml = format!(
        "{FAST}[servers.gone]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\n{}",
        stdio_toml(&tag, "fs", &["--exit-after-init", "300"])
    );
    let config = write_config(dir.path(), &toml);
    let mut child =
        up_command(&config, false).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let mut lines = text_lines(&mut child);
    let attempt = |l: &str| l.contains(" gone ") && l.contains(" attempt ");
    let seen = lines.gather(Duration::from_secs(20), 4, attempt);
    roster_tests::terminate(child.id());
    let _ = exit_within(&mut child, Duration::from_secs(15));
    assert_gone(&tag);

    let events: Vec<&String> = seen.iter().filter(|l| l.contains(" gone ") || l.contains(" fs ")).collect();
    let gone: Vec<&&String> = events.iter().filter(|l| l.contains(" gone ")).collect();
    assert!(gone.len() >= 4, "{seen:#?}");
    for (i, line) in gone.iter().take(4).enumerate() {
        let n = i + 1;
        assert!(line.contains(&format!("attempt {n} failed: ")), "one line per attempt, numbered: {line}");
        assert!(line.contains("; next in "), "and when the next is due: {line}");
    }
    assert!(gone[2].contains("gone  unreachable: attempt 3"), "{}", gone[2]);
    let fs: Vec<&&String> = events.iter().filter(|l| l.contains(" fs ")).collect();
    assert!(fs.iter().any(|l| l.contains("unknown → running")), "{fs:#?}");
    assert!(fs.iter().any(|l| l.contains("running → failed: ") && l.contains("; restart in ")), "{fs:#?}");
    // Back up after the crash (through `stopped` if the lost process was still
    // being closed when the recovery was due).
    assert!(fs.iter().any(|l| l.contains("failed → running") || l.contains("stopped → running")), "{fs:#?}");
    for line in &events {
        assert!(!line.contains("starting") && !line.contains("stopping"), "no steps: {line}");
        assert!(!line.contains("Recovery"), "no Recovery* reasons: {line}");
    }
}

/// `status --watch` off a terminal: the table once, then a line per change, and
/// it ends by itself when `up` does.
#[test]
fn status_watch_prints_the_table_then_a_line_per_change_and_ends_with_up() {
    let tag = Tag::new();
    let up = Up::start(&format!("{FAST}{}", stdio_toml(&tag, "fs", &[])), &[]);
    up.wait_event("fs", "MCPServerStarted", Duration::from_secs(10));
    let mut watch = Command::new(ROSTER)
        .args(["--config", up.config(), "status", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = text_lines(&mut watch);
    assert!(lines.wait(Duration::from_secs(10), |l| l.starts_with("NAME")).is_some(), "the table first");
    assert!(lines.wait(Duration::from_secs(5), |l| l.starts_with("fs ") && l.contains("running")).is_some());
    // The events connection is open before the table is drawn: nothing is missed.
    assert_eq!(code(&up.cli(&["restart", "fs"])), 0);
    let stopped = lines.wait(Duration::from_secs(10), |l| l.contains("fs  running → stopped"));
    assert!(stopped.is_some(), "{:#?}", lines.seen);
    assert!(
        lines.wait(Duration::from_secs(10), |l| l.contains("fs  stopped → running")).is_some(),
        "{:#?}",
        lines.seen
    );
    assert_eq!(up.terminate(), 0);
    let status = exit_within(&mut watch, Duration::from_secs(10));
    assert_eq!(status, Some(0), "watch ends when up does");
    assert_gone(&tag);
}

#[test]
fn a_slow_server_is_degraded_and_one_listing_no_tools_is_reported() {
    let tag = Tag::new();
    let defaults = "[defaults]\nauto_start = true\nhealth_check_interval = \"200ms\"\nping_timeout = \"3s\"\ndegraded_after = \"150ms\"\n\n";
    let toml = format!(
        "{defaults}{}\n{}",
        stdio_toml(&tag, "slow", &["--slow-ping", "400"]),
        stdio_toml(&tag, "empty", &["--no-tools"])
    );
    let up = Up::start(&toml, &[]);
    let degraded = up.wait_event("slow", "MCPServerHealthDegraded", Duration::from_secs(10));
    let error = degraded["event"]["error"].as_str().unwrap();
    assert!(error.starts_with("MCP ping took ") && error.ends_with("more than degraded_after (150ms)"), "{error}");
    assert_eq!(degraded["event"]["health"], "degraded");
    let missing = up.wait_event("empty", "MCPServerToolsMissing", Duration::from_secs(10));
    assert_eq!(missing["event"]["state"], "running");
    let slow = up.server("slow");
    assert_eq!(slow["health"], "degraded");
    assert!(slow["ping_latency_us"].as_u64().unwrap() >= 400_000, "{slow}");
    let empty = up.server("empty");
    assert_eq!(empty["health"], "healthy");
    assert_eq!(empty["warning"], "offers tools but listed none: it may have started only half-way");
    let table = stdout(&up.cli(&["status"]));
    assert!(table.contains("degraded ("), "{table}");
    assert!(table.contains("warning: offers tools but listed none"), "{table}");
    assert_eq!(up.terminate(), 0);
    assert_gone(&tag);
}

#[test]
fn text_from_servers_is_shown_with_its_control_characters_escaped() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    // TOML's own escapes: the server writes ESC [2J ESC ]0;pwned BEL to stderr.
    let toml = format!(
        "[servers.rude]\ncommand = {:?}\nargs = [\"stdio\", \"--tag\", {:?}, \"--stderr\", \"\\u001b[2J\\u001b]0;pwned\\u0007\", \"--exit-at-start\", \"1\"]\n",
        fixture(),
        tag.as_str()
    );
    let config = write_config(dir.path(), &format!("{FAST}{toml}"));
    let mut child =
        up_command(&config, false).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map(Reaped).unwrap();
    let mut lines = text_lines(&mut child);
    let line = lines.wait(Duration::from_secs(10), |l| l.contains("failed")).expect("a failure line");
    assert!(line.contains("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"), "{line}");
    assert!(!line.contains('\u{1b}') && !line.contains('\u{7}'), "{line:?}");
    roster_tests::terminate(child.id());
    let _ = exit_within(&mut child, Duration::from_secs(15));
    assert_gone(&tag);
}

#[test]
fn commands_that_print_and_exit_take_a_closed_or_full_stdout_quietly() {
    let tag = Tag::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &stdio_toml(&tag, "fs", &[]));
    let config = config.to_str().unwrap();
    let server = [fixture(), "stdio", "--tag", tag.as_str()];
    let cases: Vec<Vec<&str>> = vec![
        vec!["--config", config, "check"],
        [&["tools", "--"][..], &server].concat(),
        [&["--json", "tools", "--"][..], &server].concat(),
        [&["ping", "--"][..], &server].concat(),
        vec!["completions", "bash"],
    ];
    for args in &cases {
        // `roster … | head -0`: the reader is gone before the first line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(ROSTER).args(args).stdout(writer).output().unwrap();
        assert_eq!((code(&out), stderr(&out)), (0, String::new()), "{args:?} into a closed pipe");
        // `roster … > /dev/full`: one warning, and a code that says the output is lost.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = Command::new(ROSTER).args(args).stdout(full).output().unwrap();
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?} into a full disk: {err}");
        assert_eq!(err.matches("cannot write to stdout").count(), 1, "{args:?}: one warning: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_gone(&tag);
}
