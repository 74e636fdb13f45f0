//! Configuration files: roster's own TOML, and the JSON that MCP clients keep
//! (`mcpServers` as in Claude Desktop and Cursor, `servers` as in VS Code).
//!
//! Every problem of a file is reported at once, each with `file:line:column` and
//! the server it concerns. Unknown keys are errors in roster's TOML and warnings in
//! the foreign formats (they carry keys roster has no use for).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use roster_core::{Backoff, NonZeroDuration, ServerSpec, ServerType, Settings, ValidSpec};
use roster_supervisor::SupervisorConfig;
use serde::Serialize;
use serde_json::Value;
use std::num::NonZeroU32;

/// A position in a file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

/// One problem (or warning) found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Diagnostic {
    pub(crate) file: String,
    #[serde(flatten)]
    pub(crate) pos: Pos,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    pub(crate) message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.pos.line, self.pos.col)?;
        if let Some(server) = &self.server {
            write!(f, "server {server:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Which kind of file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Format {
    /// roster's TOML: `[servers.<name>]` and `[defaults]`.
    RosterToml,
    /// `{"mcpServers": {...}}` (Claude Desktop, Cursor).
    McpServersJson,
    /// `{"servers": {...}}` (VS Code).
    VsCodeJson,
}

/// A loaded configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) format: Format,
    pub(crate) servers: Vec<ValidSpec>,
    pub(crate) supervisor: SupervisorConfig,
    pub(crate) warnings: Vec<Diagnostic>,
}

/// A value with the position of its key (or of itself).
#[derive(Debug, Clone)]
struct Node {
    value: Value,
    pos: Pos,
    /// Positions of the keys of a table, by key.
    keys: BTreeMap<String, (Pos, Node)>,
}

impl Node {
    fn leaf(value: Value, pos: Pos) -> Node {
        Node { value, pos, keys: BTreeMap::new() }
    }
}

/// Byte offsets to line:column.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn pos(&self, text: &str, offset: usize) -> Pos {
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = text.get(start..offset.min(text.len())).map_or(1, |s| s.chars().count() + 1);
        Pos { line, col }
    }
}

/// Loads and validates `path`. Every error of the file comes back at once.
pub(crate) fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostic {
                file,
                pos: Pos { line: 1, col: 1 },
                server: None,
                message: format!("cannot read the configuration: {e}"),
            }]);
        }
    };
    parse(&file, &text, path.extension().and_then(|e| e.to_str()))
}

/// Parses `text` (named `file` in messages); `extension` picks the format.
pub(crate) fn parse(file: &str, text: &str, extension: Option<&str>) -> Result<Config, Vec<Diagnostic>> {
    let lines = Lines::new(text);
    let mut out = Diagnostics { file: file.to_owned(), errors: Vec::new(), warnings: Vec::new() };
    let json = matches!(extension, Some(e) if e.eq_ignore_ascii_case("json"));
    let root = if json { parse_json(text, &lines, &mut out) } else { parse_toml(text, &lines, &mut out) };
    let Some(root) = root else { return Err(out.errors) };
    let (format, servers, supervisor) = if json { read_json(&root, &mut out) } else { read_toml(&root, &mut out) };
    if out.errors.is_empty() {
        Ok(Config { format, servers, supervisor, warnings: out.warnings })
    } else {
        out.errors.sort_by_key(|d| d.pos);
        Err(out.errors)
    }
}

struct Diagnostics {
    file: String,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    fn error(&mut self, pos: Pos, server: Option<&str>, message: impl Into<String>) {
        let server = server.map(str::to_owned);
        self.errors.push(Diagnostic { file: self.file.clone(), pos, server, message: message.into() });
    }

    fn warning(&mut self, pos: Pos, server: Option<&str>, message: impl Into<String>) {
        let server = server.map(str::to_owned);
        self.warnings.push(Diagnostic { file: self.file.clone(), pos, server, message: message.into() });
    }
}

// ----- TOML ---------------------------------------------------------------------------

fn parse_toml(text: &str, lines: &Lines, out: &mut Diagnostics) -> Option<Node> {
    let (table, errors) = toml::de::DeTable::parse_recoverable(text);
    for e in &errors {
        let pos = e.span().map_or(Pos { line: 1, col: 1 }, |s| lines.pos(text, s.start));
        out.error(pos, None, e.message().to_owned());
    }
    if !errors.is_empty() {
        return None;
    }
    let span = table.span();
    Some(toml_table(table.get_ref(), lines.pos(text, span.start), text, lines))
}

fn toml_table(table: &toml::de::DeTable<'_>, pos: Pos, text: &str, lines: &Lines) -> Node {
    let mut keys = BTreeMap::new();
    let mut map = serde_json::Map::new();
    for (key, value) in table {
        let key_pos = lines.pos(text, key.span().start);
        let node = toml_value(value.get_ref(), lines.pos(text, value.span().start), text, lines);
        map.insert(key.get_ref().to_string(), node.value.clone());
        keys.insert(key.get_ref().to_string(), (key_pos, node));
    }
    Node { value: Value::Object(map), pos, keys }
}

fn toml_value(value: &toml::de::DeValue<'_>, pos: Pos, text: &str, lines: &Lines) -> Node {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) => Node::leaf(Value::String(s.to_string()), pos),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).map_or(Value::Null, Value::from);
            Node::leaf(n, pos)
        }
        DeValue::Float(f) => {
            let n = f.as_str().replace('_', "").parse::<f64>().ok().and_then(serde_json::Number::from_f64);
            Node::leaf(n.map_or(Value::Null, Value::Number), pos)
        }
        DeValue::Boolean(b) => Node::leaf(Value::Bool(*b), pos),
        DeValue::Datetime(d) => Node::leaf(Value::String(d.to_string()), pos),
        DeValue::Array(items) => {
            let values =
                items.iter().map(|v| toml_value(v.get_ref(), lines.pos(text, v.span().start), text, lines).value);
            Node::leaf(Value::Array(values.collect()), pos)
        }
        DeValue::Table(t) => toml_table(t, pos, text, lines),
    }
}

const SERVER_KEYS: [&str; 15] = [
    "type",
    "command",
    "args",
    "env",
    "cwd",
    "inherit_env",
    "pass_env",
    "url",
    "headers",
    "auto_start",
    "timeout",
    "tool_prefix",
    "description",
    "auth",
    "name",
];

const DEFAULT_KEYS: [&str; 14] = [
    "auto_start",
    "initial_backoff",
    "max_backoff",
    "backoff_multiplier",
    "jitter",
    "unreachable_threshold",
    "restart_grace",
    "health_check_interval",
    "ping_timeout",
    "unhealthy_threshold",
    "stable_period",
    "max_concurrent_connects",
    "shutdown_timeout",
    "event_buffer",
];

fn unknown_key(key: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (strsim::jaro_winkler(key, k), *k)).max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, k)) if score > 0.8 => format!("unknown key `{key}` (did you mean `{k}`?)"),
        Some(_) | None => format!("unknown key `{key}`; known keys: {}", known.join(", ")),
    }
}

fn read_toml(root: &Node, out: &mut Diagnostics) -> (Format, Vec<ValidSpec>, SupervisorConfig) {
    for (key, (pos, _)) in &root.keys {
        if key != "servers" && key != "defaults" {
            out.error(*pos, None, unknown_key(key, &["servers", "defaults"]));
        }
    }
    let (supervisor, default_auto_start) = match root.keys.get("defaults") {
        Some((_, node)) => read_defaults(node, out),
        None => (SupervisorConfig::default(), None),
    };
    let mut servers = Vec::new();
    match root.keys.get("servers") {
        Some((pos, node)) if !node.value.is_object() => out.error(*pos, None, "`servers` must be a table of servers"),
        Some((_, node)) => {
            for (name, (pos, server)) in &node.keys {
                if let Some(spec) = read_server(name, *pos, server, Dialect::Roster, default_auto_start, out) {
                    servers.push(spec);
                }
            }
        }
        None => {}
    }
    (Format::RosterToml, servers, supervisor)
}

fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| "must be a non-negative number of seconds".to_owned()),
        Value::String(s) => humantime::parse_duration(s).map_err(|_| {
            format!("{s:?} is not a duration; write a number of seconds or e.g. \"30s\", \"200ms\", \"5m\"")
        }),
        Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            Err("must be a duration: a number of seconds or a string like \"30s\"".to_owned())
        }
    }
}

fn non_zero(value: &Value) -> Result<NonZeroU32, String> {
    count(value).and_then(|n| NonZeroU32::new(n).ok_or_else(|| "must be at least 1".to_owned()))
}

fn period(value: &Value) -> Result<NonZeroDuration, String> {
    duration(value).and_then(|d| NonZeroDuration::new(d).ok_or_else(|| "must be greater than zero".to_owned()))
}

fn count(value: &Value) -> Result<u32, String> {
    value.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| "must be a whole number".to_owned())
}

fn read_defaults(node: &Node, out: &mut Diagnostics) -> (SupervisorConfig, Option<bool>) {
    let mut config = SupervisorConfig::default();
    let mut settings = Settings::default();
    let mut auto_start = None;
    let (mut initial, mut max, mut multiplier, mut jitter) =
        (settings.backoff.initial(), settings.backoff.max(), settings.backoff.multiplier(), settings.backoff.jitter());
    if !node.value.is_object() {
        out.error(node.pos, None, "`defaults` must be a table");
        return (config, None);
    }
    for (key, (pos, value)) in &node.keys {
        let v = &value.value;
        let result: Result<(), String> = match key.as_str() {
            "auto_start" => v.as_bool().map(|b| auto_start = Some(b)).ok_or_else(|| "must be true or false".to_owned()),
            "initial_backoff" => duration(v).map(|d| initial = d),
            "max_backoff" => duration(v).map(|d| max = d),
            "backoff_multiplier" => v.as_f64().map(|m| multiplier = m).ok_or_else(|| "must be a number".to_owned()),
            "jitter" => v.as_f64().map(|j| jitter = j).ok_or_else(|| "must be a number between 0 and 1".to_owned()),
            "unreachable_threshold" => non_zero(v).map(|n| settings.unreachable_threshold = n),
            "restart_grace" => duration(v).map(|d| settings.restart_grace = d),
            "health_check_interval" => period(v).map(|d| settings.health_check_interval = d),
            "ping_timeout" => period(v).map(|d| settings.ping_timeout = d),
            "unhealthy_threshold" => non_zero(v).map(|n| settings.unhealthy_threshold = n),
            "stable_period" => duration(v).map(|d| settings.stable_period = d),
            "max_concurrent_connects" => count(v).map(|n| config.max_concurrent_connects = n as usize),
            "shutdown_timeout" => duration(v).map(|d| config.shutdown_timeout = d),
            "event_buffer" => count(v).map(|n| config.event_capacity = n as usize),
            other => Err(unknown_key(other, &DEFAULT_KEYS)),
        };
        if let Err(message) = result {
            out.error(*pos, None, format!("defaults.{key}: {message}"));
        }
    }
    match Backoff::new(initial, max, multiplier).and_then(|b| b.with_jitter(jitter)) {
        Ok(b) => settings.backoff = b,
        Err(e) => out.error(node.pos, None, format!("defaults: {e}")),
    }
    config.settings = settings;
    for e in config.check().err().unwrap_or_default() {
        let at = node.keys.get(e.setting).map_or(node.pos, |(p, _)| *p);
        out.error(at, None, format!("defaults.{e}"));
    }
    (config, auto_start)
}

// ----- servers ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// roster's TOML: snake_case keys, unknown keys are errors.
    Roster,
    /// The JSON of MCP clients: their keys, `disabled`, unknown keys are warnings.
    Client,
}

/// Keys MCP clients use that roster reads, or knows to ignore.
const CLIENT_KEYS: [&str; 12] = [
    "type",
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "headers",
    "disabled",
    "timeout",
    "description",
    "auth",
    "autoApprove",
];

fn read_server(
    name: &str,
    pos: Pos,
    node: &Node,
    dialect: Dialect,
    default_auto_start: Option<bool>,
    out: &mut Diagnostics,
) -> Option<ValidSpec> {
    let server = Some(name);
    if !node.value.is_object() {
        out.error(pos, server, "must be a table of settings");
        return None;
    }
    let get = |key: &str| node.keys.get(key);
    let before = out.errors.len();

    // The type: given, or inferred from command / url.
    let server_type = match get("type") {
        Some((tpos, t)) => match t.value.as_str().map(|s| parse_type(s, dialect)) {
            Some(Ok(t)) => Some(t),
            Some(Err(message)) => {
                out.error(*tpos, server, message);
                None
            }
            None => {
                out.error(*tpos, server, "type: must be a string");
                None
            }
        },
        None if get("command").is_some() => Some(ServerType::Stdio),
        None if get("url").is_some() => Some(ServerType::StreamableHttp),
        None => {
            out.error(pos, server, "type: missing, and neither `command` nor `url` is given to infer it from");
            None
        }
    };
    let mut spec = ServerSpec::empty(name, server_type.unwrap_or(ServerType::Stdio));
    spec.auto_start = match dialect {
        Dialect::Roster => default_auto_start.unwrap_or(false),
        // The clients that own these files start every server unless disabled.
        Dialect::Client => true,
    };

    for (key, (kpos, value)) in &node.keys {
        let field = |out: &mut Diagnostics, e: serde_json::Error| out.error(*kpos, server, format!("{key}: {e}"));
        let v = value.value.clone();
        match (key.as_str(), dialect) {
            ("type", _) => {}
            ("name", Dialect::Roster) => {
                if v.as_str() != Some(name) {
                    out.error(
                        *kpos,
                        server,
                        "name: the table's key is the server's name; remove `name` or make it match",
                    );
                }
            }
            ("command", _) => set(&mut spec.command, v, |e| field(out, e)),
            ("args", _) => set(&mut spec.args, v, |e| field(out, e)),
            ("env", _) => set(&mut spec.env, v, |e| field(out, e)),
            ("cwd", _) => set(&mut spec.cwd, v, |e| field(out, e)),
            ("url", _) => set(&mut spec.url, v, |e| field(out, e)),
            ("headers", _) => set(&mut spec.headers, v, |e| field(out, e)),
            ("timeout", _) => set(&mut spec.timeout, v, |e| field(out, e)),
            ("description", _) => set(&mut spec.description, v, |e| field(out, e)),
            ("auth", _) => set(&mut spec.auth, v, |e| field(out, e)),
            ("inherit_env", Dialect::Roster) => set(&mut spec.inherit_env, v, |e| field(out, e)),
            ("pass_env", Dialect::Roster) => set(&mut spec.pass_env, v, |e| field(out, e)),
            ("auto_start", Dialect::Roster) => set(&mut spec.auto_start, v, |e| field(out, e)),
            ("tool_prefix", Dialect::Roster) => set(&mut spec.tool_prefix, v, |e| field(out, e)),
            ("disabled", Dialect::Client) => {
                let mut disabled = false;
                set(&mut disabled, v, |e| field(out, e));
                spec.auto_start = !disabled;
            }
            (other, Dialect::Roster) => out.error(*kpos, server, unknown_key(other, &SERVER_KEYS)),
            (other, Dialect::Client) => {
                if !CLIENT_KEYS.contains(&other) {
                    out.warning(*kpos, server, format!("ignoring key `{other}`: roster has no use for it"));
                }
            }
        }
    }
    if out.errors.len() > before {
        return None;
    }
    match spec.validated() {
        Ok(spec) => Some(spec),
        Err(errors) => {
            for e in errors {
                let at = node.keys.get(e.field.as_str()).map_or(pos, |(p, _)| *p);
                // The server's name is already part of the diagnostic.
                let mut e = e;
                e.server = String::new();
                out.error(at, server, e.to_string());
            }
            None
        }
    }
}

fn set<T: serde::de::DeserializeOwned>(slot: &mut T, value: Value, mut on_error: impl FnMut(serde_json::Error)) {
    match serde_json::from_value(value) {
        Ok(v) => *slot = v,
        Err(e) => on_error(e),
    }
}

fn parse_type(s: &str, dialect: Dialect) -> Result<ServerType, String> {
    match (s, dialect) {
        ("http" | "streamableHttp", Dialect::Client) => Ok(ServerType::StreamableHttp),
        _ => ServerType::parse(s).map_err(|e| e.to_string()),
    }
}

// ----- JSON ---------------------------------------------------------------------------

fn parse_json(text: &str, lines: &Lines, out: &mut Diagnostics) -> Option<Node> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.error(Pos { line: e.line().max(1), col: e.column().max(1) }, None, format!("invalid JSON: {e}"));
            return None;
        }
    };
    let mut keys = BTreeMap::new();
    scan_keys(text, lines, &mut keys);
    Some(json_node(value, Pos { line: 1, col: 1 }, &[], &keys))
}

/// Positions of every object key in a JSON text, by path. (serde_json gives
/// positions only for syntax errors; the text is valid JSON at this point.)
fn scan_keys(text: &str, lines: &Lines, out: &mut BTreeMap<Vec<String>, Pos>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    // The path of the object being read; `pending` is the key just read.
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut pending: Option<(String, usize)> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                let mut s = Vec::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    if let Some(b) = bytes.get(i) {
                        s.push(*b);
                    }
                    i += 1;
                }
                let s = String::from_utf8_lossy(&s).into_owned();
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) == Some(&b':') {
                    let mut key_path = path.clone();
                    key_path.push(s.clone());
                    out.entry(key_path).or_insert_with(|| lines.pos(text, start));
                    pending = Some((s, start));
                }
            }
            b'{' => {
                let key = pending.take().map(|(k, _)| k);
                if let Some(k) = &key {
                    path.push(k.clone());
                }
                stack.push(key);
            }
            b'}' => {
                if let Some(Some(_)) = stack.pop() {
                    path.pop();
                }
            }
            b'[' => pending = None,
            _ => {}
        }
        i += 1;
    }
}

fn json_node(value: Value, pos: Pos, path: &[String], positions: &BTreeMap<Vec<String>, Pos>) -> Node {
    let mut keys = BTreeMap::new();
    if let Value::Object(map) = &value {
        for (k, v) in map {
            let mut p = path.to_vec();
            p.push(k.clone());
            let kpos = positions.get(&p).copied().unwrap_or(pos);
            keys.insert(k.clone(), (kpos, json_node(v.clone(), kpos, &p, positions)));
        }
    }
    Node { value, pos, keys }
}

fn read_json(root: &Node, out: &mut Diagnostics) -> (Format, Vec<ValidSpec>, SupervisorConfig) {
    let (format, key) = if root.keys.contains_key("mcpServers") {
        (Format::McpServersJson, "mcpServers")
    } else if root.keys.contains_key("servers") {
        (Format::VsCodeJson, "servers")
    } else {
        out.error(
            root.pos,
            None,
            "expected a JSON object with `mcpServers` (Claude Desktop, Cursor) or `servers` (VS Code)",
        );
        return (Format::McpServersJson, Vec::new(), SupervisorConfig::default());
    };
    for (other, (pos, _)) in root.keys.iter().filter(|(k, _)| k.as_str() != key) {
        let note =
            if other == "inputs" { ": input variables are not supported; values are used as written" } else { "" };
        out.warning(*pos, None, format!("ignoring `{other}`{note}"));
    }
    let mut servers = Vec::new();
    let (pos, node) = &root.keys[key];
    if !node.value.is_object() {
        out.error(*pos, None, format!("`{key}` must be an object of servers"));
    }
    for (name, (spos, server)) in &node.keys {
        if let Some(spec) = read_server(name, *spos, server, Dialect::Client, None, out) {
            servers.push(spec);
        }
    }
    (format, servers, SupervisorConfig::default())
}

#[cfg(test)]
mod tests {
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
            "claude.json:11:30: server \"odd\": ignoring key `alwaysAllow`: roster has no use for it"
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
}
