//! The configuration reader: formats, positions, every error at once, limits.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn toml(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse("roster.toml", text, Some("toml"))
}

fn json(text: &str) -> Result<Config, Vec<Diagnostic>> {
    parse("claude.json", text, Some("json"))
}

#[test]
fn a_roster_toml_file() {
    let c = toml(
        r#"
[defaults]
initial_backoff = "1s"
max_backoff = 60
auto_start = true

[servers.fs]
command = "mcp-fs"
args = ["/srv"]
env = { TOKEN = "x" }

[servers.api]
url = "https://api.example/mcp"
headers = { Authorization = "Bearer t" }
auto_start = false
timeout = 20
"#,
    )
    .unwrap();
    assert_eq!(c.format, Format::RosterToml);
    assert_eq!(c.servers.len(), 2);
    let api = c.servers.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.server_type, ServerType::StreamableHttp);
    assert!(!api.auto_start);
    let fs = c.servers.iter().find(|s| s.name == "fs").unwrap();
    assert_eq!(fs.server_type, ServerType::Stdio);
    assert!(fs.auto_start, "from [defaults]");
    assert_eq!(c.supervisor.settings.backoff.initial(), Duration::from_secs(1));
    assert_eq!(c.supervisor.settings.backoff.max(), Duration::from_secs(60));
}

#[test]
fn every_error_at_once_with_line_column_and_server() {
    let errors = toml(
        r#"[servers.fs]
comand = "x"

[servers.api]
type = "grpc"

[servers.web]
url = "ftp://x"
timeout = 900

[defaults]
initial_backoff = "soon"
"#,
    )
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "roster.toml:1:10: server \"fs\": type: missing, and neither `command` nor `url` is given to infer it from",
            "roster.toml:2:1: server \"fs\": unknown key `comand` (did you mean `command`?)",
            "roster.toml:5:1: server \"api\": unsupported MCP server type: grpc (supported: stdio, streamable-http, sse)",
            "roster.toml:8:1: server \"web\": url: must start with http:// or https://",
            "roster.toml:9:1: server \"web\": timeout: must be between 1 and 300 seconds, got 900",
            "roster.toml:12:1: defaults.initial_backoff: \"soon\" is not a duration; write a number of seconds or e.g. \"30s\", \"200ms\", \"5m\"",
        ]
    );
}

#[test]
fn toml_syntax_errors_have_positions() {
    let errors = toml("[servers.fs]\ncommand = \n").unwrap_err();
    assert_eq!(errors[0].pos.line, 2, "{errors:?}");
}

#[test]
fn unknown_keys_are_errors_in_toml() {
    let errors = toml("colour = 1\n[servers.fs]\ncommand = \"x\"\n").unwrap_err();
    assert!(errors[0].message.starts_with("unknown key `colour`"), "{errors:?}");
}

#[test]
fn claude_desktop_json() {
    let c = json(
        r#"{
  "mcpServers": {
"filesystem": {
  "command": "npx",
  "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
  "env": {"DEBUG": "1"}
},
"remote": { "type": "http", "url": "https://api.example/mcp", "headers": {"X-Key": "k"} },
"legacy": { "type": "sse", "url": "https://old.example/sse" },
"off": { "command": "x", "disabled": true, "autoApprove": [] },
"odd": { "command": "y", "alwaysAllow": ["a"] }
  }
}"#,
    )
    .unwrap();
    assert_eq!(c.format, Format::McpServersJson);
    let by_name: BTreeMap<&str, &ServerSpec> = c.servers.iter().map(|s| (s.name.as_str(), s.spec())).collect();
    assert_eq!(by_name["filesystem"].server_type, ServerType::Stdio);
    assert!(by_name["filesystem"].auto_start, "clients start every server");
    assert_eq!(by_name["remote"].server_type, ServerType::StreamableHttp);
    assert_eq!(by_name["legacy"].server_type, ServerType::Sse);
    assert!(!by_name["off"].auto_start);
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(
        c.warnings[0].to_string(),
        "claude.json:11:26: server \"odd\": ignoring key `alwaysAllow`: roster has no use for it"
    );
}

#[test]
fn vs_code_json() {
    let c = parse(
        "mcp.json",
        r#"{"inputs": [], "servers": {"gh": {"type": "http", "url": "https://api.example/mcp"}, "fs": {"type": "stdio", "command": "x"}}}"#,
        Some("json"),
    )
    .unwrap();
    assert_eq!(c.format, Format::VsCodeJson);
    assert_eq!(c.servers.len(), 2);
    assert!(c.warnings[0].message.contains("inputs"));
}

#[test]
fn json_errors_carry_the_key_position() {
    let errors = json("{\n  \"mcpServers\": {\n    \"bad\": {\n      \"command\": 3\n    }\n  }\n}").unwrap_err();
    assert_eq!(errors[0].pos, Pos { line: 4, col: 7 }, "{errors:?}");
    assert_eq!(errors[0].server.as_deref(), Some("bad"));
    let errors = json("{\"mcpServers\": {\"x\": {\"command\": }}}").unwrap_err();
    assert!(errors[0].message.starts_with("invalid JSON"), "{errors:?}");
}

#[test]
fn unreadable_file() {
    let errors = load(Path::new("/nonexistent/roster.toml")).unwrap_err();
    assert!(errors[0].message.starts_with("cannot read the configuration"));
}

// ----- values that do not fit, ranges, limits ------------------------------------------

fn messages(errors: &[Diagnostic]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn values_that_do_not_fit_are_errors_naming_the_field() {
    let errors = toml(
        "[defaults]\njitter = nan\ninitial_backoff = inf\n\n[servers.fs]\ncommand = \"x\"\ntimeout = 99999999999999999999\ndescription = 1979-05-27T07:32:00Z\n",
    )
    .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "roster.toml:2:10: defaults.jitter: nan is not a finite number",
            "roster.toml:3:19: defaults.initial_backoff: inf is not a finite number",
            "roster.toml:7:11: servers.fs.timeout: 99999999999999999999 does not fit in a 64-bit integer",
            "roster.toml:8:15: servers.fs.description: 1979-05-27T07:32:00Z is a date-time; no setting takes one (quote it if it is text)",
        ]
    );
}

#[test]
fn numbers_outside_their_ranges_are_errors_naming_the_setting() {
    let errors = toml(
        "[defaults]\nshutdown_timeout = 1e19\nevent_buffer = 100000000\nrestart_grace = \"1day\"\nmax_concurrent_connects = 0\nmax_message_size = \"1GiB\"\nhealth_check_interval = 0\n",
    )
    .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "roster.toml:2:1: defaults.shutdown_timeout: must be between 1s and 1h, got 10000000000000000000s",
            "roster.toml:3:1: defaults.event_buffer: must be between 16 and 100000, got 100000000",
            "roster.toml:4:1: defaults.restart_grace: must be between 0s and 10m, got 24h",
            "roster.toml:5:1: defaults.max_concurrent_connects: must be between 1 and 1000, got 0",
            "roster.toml:6:1: defaults.max_message_size: must be between 64KiB and 256MiB, got 1073741824 bytes",
            "roster.toml:7:1: defaults.health_check_interval: must be greater than zero",
        ]
    );
}

#[test]
fn degraded_after_is_read_checked_against_ping_timeout_and_follows_a_short_one_by_default() {
    let c = toml("[defaults]\ndegraded_after = \"2s\"\n").unwrap();
    assert_eq!(c.supervisor.settings.degraded_after, Duration::from_secs(2));
    let c = toml("[defaults]\nping_timeout = \"3s\"\n").unwrap();
    assert_eq!(c.supervisor.settings.degraded_after, Duration::from_millis(1500), "half of a short ping_timeout");
    let c = toml("[defaults]\nping_timeout = \"30s\"\n").unwrap();
    assert_eq!(c.supervisor.settings.degraded_after, Duration::from_secs(5), "5s below a long one");
    let errors = toml("[defaults]\nping_timeout = \"3s\"\ndegraded_after = \"4s\"\n").unwrap_err();
    assert_eq!(
        messages(&errors),
        ["roster.toml:3:1: defaults.degraded_after: must be at least 1ms and below ping_timeout (3s), got 4s"]
    );
}

#[test]
fn sizes_are_bytes_or_binary_units() {
    let c = toml("[defaults]\nmax_message_size = \"8MiB\"\n").unwrap();
    assert_eq!(c.http.max_message_size, 8 << 20);
    let c = toml("[defaults]\nmax_message_size = 65536\n").unwrap();
    assert_eq!(c.http.max_message_size, 65536);
    assert!(toml("[defaults]\nmax_message_size = \"8MB\"\n").is_err());
}

#[test]
fn a_server_with_a_bad_field_still_gets_every_other_check() {
    let errors =
        toml("[servers.api]\nurl = \"http://127.0.0.1:99999/mcp\"\ntimeout = \"soon\"\ntool_prefix = \"9x\"\n")
            .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "roster.toml:2:1: server \"api\": url: has an invalid port (a number from 0 to 65535)",
            "roster.toml:3:1: server \"api\": timeout: invalid type: string \"soon\", expected u32",
            "roster.toml:4:1: server \"api\": tool_prefix: must match ^[A-Za-z][A-Za-z0-9_-]*$",
        ]
    );
    // An unknown type does not hide the other fields' errors.
    let errors = toml("[servers.x]\ntype = \"grpc\"\ncommand = \"c\"\ntimeout = 0\n").unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn a_key_given_twice_in_json_is_an_error_with_both_positions() {
    let errors =
        json("{\n  \"mcpServers\": {\n    \"fs\": {\"command\": \"a\"},\n    \"fs\": {\"command\": \"b\"}\n  }\n}")
            .unwrap_err();
    assert_eq!(messages(&errors), ["claude.json:4:5: mcpServers.fs: given twice (first at 3:5)"]);
    let errors = json(r#"{"mcpServers": {"fs": {"command": "a", "command": "b"}}}"#).unwrap_err();
    assert!(errors[0].message.contains("mcpServers.fs.command: given twice"), "{errors:?}");
}

#[test]
fn vs_code_files_may_carry_comments_and_trailing_commas() {
    let c = parse(
        "mcp.json",
        "{\n  // my servers\n  \"servers\": {\n    /* the files */ \"fs\": {\"command\": \"x\", \"args\": [\"a\",],},\n  },\n}\n",
        Some("json"),
    )
    .unwrap();
    assert_eq!(c.servers[0].args, ["a"]);
}

#[test]
fn only_regular_files_of_bounded_size_are_read() {
    assert_eq!(
        read(Path::new("/dev/zero")).unwrap_err(),
        "the configuration must be a regular file (not a FIFO, a device or a directory)"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(read(dir.path()).unwrap_err().contains("regular file"));
    let fifo = dir.path().join("fifo.toml");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let t = std::time::Instant::now();
    assert!(read(&fifo).unwrap_err().contains("regular file"), "a FIFO is refused without waiting for a writer");
    assert!(t.elapsed() < Duration::from_secs(1));
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
    assert_eq!(read(&big).unwrap_err(), "the configuration is larger than 1024 KiB");
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, [b'a', 0xff, b'b']).unwrap();
    assert!(read(&bin).unwrap_err().contains("not UTF-8"));
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = format!("{{\"mcpServers\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let errors = json(&deep).unwrap_err();
    assert_eq!(errors[0].message, "the file nests deeper than 32 levels");
    // Brackets in strings and comments do not count.
    let fine = format!("{{\"mcpServers\": {{\"fs\": {{\"command\": \"{}\"}}}}}} // {}", "[".repeat(50), "{".repeat(50));
    assert!(json(&fine).is_ok());
    let errors = toml(&format!("a = {}1{}", "[".repeat(100_000), "]".repeat(100_000))).unwrap_err();
    assert!(!errors.is_empty());
}

#[test]
fn nesting_depth_skips_strings_escapes_and_comments() {
    assert_eq!(json_depth(r#"{"a": [1, {"b": "]]]]"}]}"#), 3);
    assert_eq!(json_depth(r#"{"a": "\"[[[["}"#), 1);
    assert_eq!(json_depth("// [[[[\n{/* {{{{ */}"), 1);
    assert_eq!(json_depth("{\"a\": 1 / 2}"), 1);
}

// ----- `check` passing means the supervisor runs --------------------------------------

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}0")),
        any::<f64>().prop_map(|x| format!("{x:?}").replace("inf", "inf")),
        prop_oneof![Just("nan"), Just("inf"), Just("-inf"), Just("true"), Just("1979-05-27")].prop_map(str::to_owned),
        "[0-9]{1,6}(ms|s|m|h|d|KiB|MiB)?".prop_map(|s| format!("{s:?}")),
        "[a-z ]{0,8}".prop_map(|s| format!("{s:?}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn whatever_check_accepts_the_supervisor_runs(
        defaults in prop::collection::vec((0..DEFAULT_KEYS.len(), toml_value()), 0..6),
        timeout in toml_value(),
    ) {
        let mut text = String::from("[defaults]\n");
        for (k, v) in &defaults {
            text.push_str(&format!("{} = {v}\n", DEFAULT_KEYS[*k]));
        }
        text.push_str(&format!("\n[servers.fs]\ncommand = \"x\"\nauto_start = true\ntimeout = {timeout}\n"));
        let Ok(config) = toml(&text) else { return Ok(()) };
        prop_assert!(config.supervisor.check().is_ok(), "{text}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let unsupported = Arc::new(roster_transport::Unsupported);
            let transports = roster_supervisor::Transports::new(unsupported.clone(), unsupported.clone(), unsupported);
            let sup = roster_supervisor::Supervisor::new(Arc::new(transports), config.supervisor);
            sup.apply(config.servers).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let report = sup.shutdown().await;
            assert_eq!(report.stopped, ["fs"]);
        });
    }
}

#[test]
fn serve_settings_tool_timeout_and_on_demand() {
    let c = toml(
        r#"
[defaults]
auto_start = true

[servers.slow]
command = "a"
tool_timeout = "5m"

[servers.lazy]
command = "b"
start = "on_demand"

[servers.plain]
command = "c"
"#,
    )
    .unwrap();
    assert_eq!(c.serve["slow"], ServerSettings { tool_timeout: Some(Duration::from_secs(300)), on_demand: false });
    assert_eq!(c.serve["lazy"], ServerSettings { tool_timeout: None, on_demand: true });
    assert!(!c.serve.contains_key("plain"), "only servers with settings of their own");
    let lazy = c.servers.iter().find(|s| s.name == "lazy").unwrap();
    assert!(!lazy.auto_start, "an on-demand server does not start with roster, whatever [defaults] says");
    assert!(c.servers.iter().find(|s| s.name == "plain").unwrap().auto_start);

    let errors = messages(
        &toml(
            r#"
[servers.a]
command = "a"
tool_timeout = "0s"
[servers.b]
command = "b"
tool_timeout = "2d"
[servers.c]
command = "c"
start = "always"
[servers.d]
command = "d"
start = "on_demand"
auto_start = true
"#,
        )
        .unwrap_err(),
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[0].contains("tool_timeout: must be between 1s and 24h"), "{errors:?}");
    assert!(errors[1].contains("tool_timeout: must be between 1s and 24h"), "{errors:?}");
    assert!(errors[2].contains("start: the one value is \"on_demand\""), "{errors:?}");
    assert!(errors[3].contains("auto_start: a server with start = \"on_demand\""), "{errors:?}");
}

#[test]
fn cursors_static_oauth_client_becomes_roster_auth() {
    // A variable every test run has (setting one would need unsafe code).
    let home = std::env::var("HOME").expect("HOME is set");
    let c = json(
        r#"{"mcpServers": {
            "a": {"url": "https://a.example/mcp", "auth": {"CLIENT_ID": "cid", "CLIENT_SECRET": "${env:A_SECRET}", "scopes": ["mcp", "offline_access"]}},
            "b": {"url": "https://b.example/mcp", "auth": {"CLIENT_ID": "${env:HOME}", "CLIENT_SECRET": "literal-secret", "extra": 1}}
        }}"#,
    )
    .unwrap();
    let auth = |name: &str| c.servers.iter().find(|s| s.name == name).unwrap().auth.clone().unwrap();
    let a = auth("a");
    assert_eq!(a.kind, roster_core::AuthType::Oauth);
    assert_eq!(a.client_id.as_deref(), Some("cid"));
    assert_eq!(a.client_secret_env.as_deref(), Some("A_SECRET"));
    assert_eq!(a.scopes, ["mcp", "offline_access"]);
    let b = auth("b");
    assert_eq!(b.client_id.as_deref(), Some(home.as_str()));
    assert_eq!(b.client_secret_env, None, "a literal secret is not kept");
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("CLIENT_SECRET") && !w.contains("literal-secret")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("auth.extra")), "{warnings:?}");

    let errors = json(r#"{"mcpServers": {"c": {"url": "https://c.example/mcp", "auth": {"CLIENT_ID": "${env:ROSTER_TEST_UNSET_ID}"}}}}"#)
        .unwrap_err();
    assert!(errors[0].to_string().contains("ROSTER_TEST_UNSET_ID is not set"), "{}", errors[0]);
    let errors =
        json(r#"{"mcpServers": {"c": {"url": "https://c.example/mcp", "auth": {"CLIENT_SECRET": "${env:S}"}}}}"#)
            .unwrap_err();
    assert!(errors[0].to_string().contains("needs auth.CLIENT_ID"), "{}", errors[0]);
}
