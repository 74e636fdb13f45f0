//! Configuration files: roster's own TOML, and the JSON that MCP clients keep
//! (`mcpServers` as in Claude Desktop and Cursor, `servers` as in VS Code, with
//! the comments and trailing commas VS Code allows).
//!
//! Every problem of a file is reported at once, each with `file:line:column` and
//! the server it concerns: a server whose field has an error still gets every
//! other check. Unknown keys are errors in roster's TOML and warnings in the
//! foreign formats (they carry keys roster has no use for); a key given twice is an
//! error in both. A file is read only if it is a regular file of at most
//! [`MAX_CONFIG_BYTES`], nested at most [`MAX_NESTING`] deep. A value that does not
//! fit its field (a number too large, `nan`, `inf`, a date) is an error naming the
//! field; so is every number outside its documented range.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use jsonc_parser::common::Ranged;
use roster_core::{Backoff, Field, NonZeroDuration, ServerSpec, ServerType, Settings, ValidSpec};
use roster_http::HttpOptions;
use roster_serve::ServerSettings;
use roster_supervisor::SupervisorConfig;
use serde::Serialize;
use serde_json::Value;

/// The largest configuration file read: 1 MiB.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The deepest nesting of tables, objects and arrays accepted.
pub(crate) const MAX_NESTING: usize = 32;
/// Accepted `max_message_size`: 64 KiB to 256 MiB.
pub(crate) const MESSAGE_SIZE_RANGE: std::ops::RangeInclusive<u64> = 64 * 1024..=256 * 1024 * 1024;

/// A position in a file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
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
        write!(f, "{}:{}: ", self.file, self.pos)?;
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
    /// `roster serve`: the servers' own settings (`tool_timeout`, `start`).
    pub(crate) serve: BTreeMap<String, ServerSettings>,
    pub(crate) supervisor: SupervisorConfig,
    pub(crate) http: HttpOptions,
    pub(crate) warnings: Vec<Diagnostic>,
}

/// A value of the file, with the position of its key (or of itself). Tables keep
/// their children; leaves keep their value. Each value is built once.
#[derive(Debug, Clone)]
struct Node {
    pos: Pos,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A string, number, boolean or null; `None` when it could not be read (the
    /// error is reported already, where it was found).
    Leaf(Option<Value>),
    Array(Vec<Node>),
    Table(BTreeMap<String, (Pos, Node)>),
}

impl Node {
    fn keys(&self) -> Option<&BTreeMap<String, (Pos, Node)>> {
        match &self.kind {
            Kind::Table(keys) => Some(keys),
            Kind::Leaf(_) | Kind::Array(_) => None,
        }
    }

    /// Whether every value under this one could be read.
    fn is_readable(&self) -> bool {
        match &self.kind {
            Kind::Leaf(v) => v.is_some(),
            Kind::Array(items) => items.iter().all(Node::is_readable),
            Kind::Table(keys) => keys.values().all(|(_, n)| n.is_readable()),
        }
    }

    /// The value as JSON, built on demand (a field at a time).
    fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Leaf(v) => v.clone().unwrap_or(Value::Null),
            Kind::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Table(keys) => Value::Object(keys.iter().map(|(k, (_, n))| (k.clone(), n.to_value())).collect()),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Leaf(Some(Value::String(s))) => Some(s),
            Kind::Leaf(_) | Kind::Array(_) | Kind::Table(_) => None,
        }
    }
}

/// Byte offsets to line:column.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl Lines<'_> {
    fn new(text: &str) -> Lines<'_> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self.text.get(start..offset.min(self.text.len())).map_or(1, |s| s.chars().count() + 1);
        Pos { line, col }
    }
}

/// Loads and validates `path`. Every error of the file comes back at once.
pub(crate) fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = read(path).map_err(|message| {
        vec![Diagnostic { file: file.clone(), pos: Pos { line: 1, col: 1 }, server: None, message }]
    })?;
    parse(&file, &text, path.extension().and_then(|e| e.to_str()))
}

/// The text of the configuration at `path`: a regular file (never a FIFO, a
/// device or a directory), at most [`MAX_CONFIG_BYTES`], UTF-8.
pub(crate) fn read(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that opening a FIFO does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read the configuration: {e}"))?;
    if !meta.is_file() {
        return Err("the configuration must be a regular file (not a FIFO, a device or a directory)".to_owned());
    }
    let too_big = || format!("the configuration is larger than {} KiB", MAX_CONFIG_BYTES / 1024);
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("the configuration is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

/// Parses `text` (named `file` in messages); `extension` picks the format.
pub(crate) fn parse(file: &str, text: &str, extension: Option<&str>) -> Result<Config, Vec<Diagnostic>> {
    let lines = Lines::new(text);
    let mut out = Diagnostics { file: file.to_owned(), errors: Vec::new(), warnings: Vec::new() };
    let json = matches!(extension, Some(e) if e.eq_ignore_ascii_case("json"));
    let root = if json { parse_json(text, &lines, &mut out) } else { parse_toml(text, &lines, &mut out) };
    let Some(root) = root else { return Err(out.errors) };
    let Loaded { format, servers, serve, supervisor, http } =
        if json { read_json(&root, &mut out) } else { read_toml(&root, &mut out) };
    if out.errors.is_empty() {
        Ok(Config { format, servers, serve, supervisor, http, warnings: out.warnings })
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

/// A dotted key path for messages: `servers.fs.timeout`.
fn dotted(path: &[&str]) -> String {
    path.join(".")
}

// ----- TOML ---------------------------------------------------------------------------

fn parse_toml(text: &str, lines: &Lines<'_>, out: &mut Diagnostics) -> Option<Node> {
    // toml's parser stops at its own recursion limit, with an error.
    let (table, errors) = toml::de::DeTable::parse_recoverable(text);
    for e in &errors {
        let pos = e.span().map_or(Pos { line: 1, col: 1 }, |s| lines.pos(s.start));
        out.error(pos, None, e.message().to_owned());
    }
    if !errors.is_empty() {
        return None;
    }
    let span = table.span();
    let mut path = Vec::new();
    Some(toml_table(table.get_ref(), lines.pos(span.start), lines, &mut path, out))
}

fn toml_table<'a>(
    table: &'a toml::de::DeTable<'_>,
    pos: Pos,
    lines: &Lines<'_>,
    path: &mut Vec<&'a str>,
    out: &mut Diagnostics,
) -> Node {
    let mut keys = BTreeMap::new();
    for (key, value) in table {
        let name: &str = key.get_ref();
        path.push(name);
        let node = toml_value(value.get_ref(), lines.pos(value.span().start), lines, path, out);
        path.pop();
        keys.insert(name.to_owned(), (lines.pos(key.span().start), node));
    }
    Node { pos, kind: Kind::Table(keys) }
}

fn toml_value<'a>(
    value: &'a toml::de::DeValue<'_>,
    pos: Pos,
    lines: &Lines<'_>,
    path: &mut Vec<&'a str>,
    out: &mut Diagnostics,
) -> Node {
    use toml::de::DeValue;
    let bad = |message: String, out: &mut Diagnostics| {
        out.error(pos, None, format!("{}: {message}", dotted(path)));
        Node { pos, kind: Kind::Leaf(None) }
    };
    match value {
        DeValue::String(s) => Node { pos, kind: Kind::Leaf(Some(Value::String(s.to_string()))) },
        DeValue::Integer(i) => match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Node { pos, kind: Kind::Leaf(Some(Value::from(n))) },
            Err(_) => bad(format!("{} does not fit in a 64-bit integer", i.as_str()), out),
        },
        DeValue::Float(f) => {
            let text = f.as_str().replace('_', "");
            match text.parse::<f64>().ok().filter(|x| x.is_finite()).and_then(serde_json::Number::from_f64) {
                Some(n) => Node { pos, kind: Kind::Leaf(Some(Value::Number(n))) },
                None => bad(format!("{} is not a finite number", f.as_str()), out),
            }
        }
        DeValue::Boolean(b) => Node { pos, kind: Kind::Leaf(Some(Value::Bool(*b))) },
        DeValue::Datetime(d) => bad(format!("{d} is a date-time; no setting takes one (quote it if it is text)"), out),
        DeValue::Array(items) => {
            let nodes = items.iter().map(|v| toml_value(v.get_ref(), lines.pos(v.span().start), lines, path, out));
            Node { pos, kind: Kind::Array(nodes.collect()) }
        }
        DeValue::Table(t) => toml_table(t, pos, lines, path, out),
    }
}

const SERVER_KEYS: [&str; 17] = [
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
    "tool_timeout",
    "start",
    "description",
    "auth",
    "name",
];

const DEFAULT_KEYS: [&str; 16] = [
    "auto_start",
    "initial_backoff",
    "max_backoff",
    "backoff_multiplier",
    "jitter",
    "unreachable_threshold",
    "restart_grace",
    "health_check_interval",
    "ping_timeout",
    "degraded_after",
    "unhealthy_threshold",
    "stable_period",
    "max_concurrent_connects",
    "shutdown_timeout",
    "event_buffer",
    "max_message_size",
];

fn unknown_key(key: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (strsim::jaro_winkler(key, k), *k)).max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, k)) if score > 0.8 => format!("unknown key `{key}` (did you mean `{k}`?)"),
        Some(_) | None => format!("unknown key `{key}`; known keys: {}", known.join(", ")),
    }
}

/// What a file defines, before the last checks.
struct Loaded {
    format: Format,
    servers: Vec<ValidSpec>,
    serve: BTreeMap<String, ServerSettings>,
    supervisor: SupervisorConfig,
    http: HttpOptions,
}

/// The range of `tool_timeout`.
pub(crate) const TOOL_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

fn read_toml(root: &Node, out: &mut Diagnostics) -> Loaded {
    let keys = root.keys().cloned().unwrap_or_default();
    for (key, (pos, _)) in &keys {
        if key != "servers" && key != "defaults" {
            out.error(*pos, None, unknown_key(key, &["servers", "defaults"]));
        }
    }
    let (supervisor, http, default_auto_start) = match keys.get("defaults") {
        Some((_, node)) => read_defaults(node, out),
        None => (SupervisorConfig::default(), HttpOptions::default(), None),
    };
    let mut servers = Vec::new();
    let mut serve = BTreeMap::new();
    if let Some((_, node)) = keys.get("servers") {
        match node.keys() {
            Some(entries) => {
                for (name, (pos, server)) in entries {
                    if let Some((spec, settings)) =
                        read_server(name, *pos, server, Dialect::Roster, default_auto_start, out)
                    {
                        if settings != ServerSettings::default() {
                            serve.insert(spec.name.clone(), settings);
                        }
                        servers.push(spec);
                    }
                }
            }
            None => out.error(node.pos, None, "`servers` must be a table of servers"),
        }
    }
    Loaded { format: Format::RosterToml, servers, serve, supervisor, http }
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

fn count(value: &Value) -> Result<u32, String> {
    let n = value.as_u64().ok_or_else(|| "must be a whole number".to_owned())?;
    u32::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn non_zero(value: &Value) -> Result<NonZeroU32, String> {
    count(value).and_then(|n| NonZeroU32::new(n).ok_or_else(|| "must be at least 1".to_owned()))
}

fn period(value: &Value) -> Result<NonZeroDuration, String> {
    duration(value).and_then(|d| NonZeroDuration::new(d).ok_or_else(|| "must be greater than zero".to_owned()))
}

fn number(value: &Value) -> Result<f64, String> {
    value.as_f64().filter(|x| x.is_finite()).ok_or_else(|| "must be a number".to_owned())
}

/// A size: a number of bytes, or a string like `"16MiB"`, `"512KiB"`.
fn size(value: &Value) -> Result<u64, String> {
    let bad = || "must be a size: a number of bytes, or a string like \"16MiB\" or \"512KiB\"".to_owned();
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim();
            let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (n, unit) = s.split_at(digits);
            let n: u64 = n.parse().map_err(|_| bad())?;
            let scale: u64 = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                _ => return Err(bad()),
            };
            n.checked_mul(scale).ok_or_else(bad)
        }
        Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => Err(bad()),
    }
}

fn read_defaults(node: &Node, out: &mut Diagnostics) -> (SupervisorConfig, HttpOptions, Option<bool>) {
    let mut config = SupervisorConfig::default();
    let mut http = HttpOptions::default();
    let mut settings = Settings::default();
    let mut auto_start = None;
    let mut degraded_after = None;
    let (mut initial, mut max, mut multiplier, mut jitter) =
        (settings.backoff.initial(), settings.backoff.max(), settings.backoff.multiplier(), settings.backoff.jitter());
    let Some(keys) = node.keys() else {
        out.error(node.pos, None, "`defaults` must be a table");
        return (config, http, None);
    };
    let mut bad = BTreeSet::new();
    for (key, (pos, value)) in keys {
        if !value.is_readable() {
            bad.insert(key.as_str());
            continue;
        }
        let v = &value.to_value();
        let result: Result<(), String> = match key.as_str() {
            "auto_start" => v.as_bool().map(|b| auto_start = Some(b)).ok_or_else(|| "must be true or false".to_owned()),
            "initial_backoff" => duration(v).map(|d| initial = d),
            "max_backoff" => duration(v).map(|d| max = d),
            "backoff_multiplier" => number(v).map(|m| multiplier = m),
            "jitter" => number(v).map(|j| jitter = j),
            "unreachable_threshold" => non_zero(v).map(|n| settings.unreachable_threshold = n),
            "restart_grace" => duration(v).map(|d| settings.restart_grace = d),
            "health_check_interval" => period(v).map(|d| settings.health_check_interval = d),
            "ping_timeout" => period(v).map(|d| settings.ping_timeout = d),
            "degraded_after" => duration(v).map(|d| degraded_after = Some(d)),
            "unhealthy_threshold" => non_zero(v).map(|n| settings.unhealthy_threshold = n),
            "stable_period" => duration(v).map(|d| settings.stable_period = d),
            "max_concurrent_connects" => count(v).map(|n| config.max_concurrent_connects = n as usize),
            "shutdown_timeout" => duration(v).map(|d| config.shutdown_timeout = d),
            "event_buffer" => count(v).map(|n| config.event_capacity = n as usize),
            "max_message_size" => size(v).and_then(|n| {
                if MESSAGE_SIZE_RANGE.contains(&n) {
                    http.max_message_size = usize::try_from(n).map_err(|_| format!("{n} is too large"))?;
                    Ok(())
                } else {
                    Err(format!("must be between 64KiB and 256MiB, got {n} bytes"))
                }
            }),
            other => Err(unknown_key(other, &DEFAULT_KEYS)),
        };
        if let Err(message) = result {
            bad.insert(key.as_str());
            out.error(*pos, None, format!("defaults.{key}: {message}"));
        }
    }
    match Backoff::new(initial, max, multiplier).and_then(|b| b.with_jitter(jitter)) {
        Ok(b) => settings.backoff = b,
        Err(e)
            if bad.is_disjoint(&BTreeSet::from(["initial_backoff", "max_backoff", "backoff_multiplier", "jitter"])) =>
        {
            out.error(node.pos, None, format!("defaults: {e}"));
        }
        Err(_) => {}
    }
    // Unless given, degraded_after follows a shortened ping_timeout down.
    settings.degraded_after = degraded_after.unwrap_or_else(|| Settings::default_degraded_after(settings.ping_timeout));
    config.settings = settings;
    for e in config.check().err().unwrap_or_default() {
        if bad.contains(e.setting) {
            continue;
        }
        let at = keys.get(e.setting).map_or(node.pos, |(p, _)| *p);
        out.error(at, None, format!("defaults.{e}"));
    }
    (config, http, auto_start)
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

/// The field a configuration key sets.
fn field_of(key: &str) -> Option<Field> {
    Some(match key {
        "type" => Field::Type,
        "command" => Field::Command,
        "args" => Field::Args,
        "env" => Field::Env,
        "cwd" => Field::Cwd,
        "inherit_env" => Field::InheritEnv,
        "pass_env" => Field::PassEnv,
        "url" => Field::Url,
        "headers" => Field::Headers,
        "auto_start" | "disabled" => Field::AutoStart,
        "timeout" => Field::Timeout,
        "tool_prefix" => Field::ToolPrefix,
        "description" => Field::Description,
        "auth" => Field::Auth,
        "name" => Field::Name,
        _ => return None,
    })
}

fn read_server(
    name: &str,
    pos: Pos,
    node: &Node,
    dialect: Dialect,
    default_auto_start: Option<bool>,
    out: &mut Diagnostics,
) -> Option<(ValidSpec, ServerSettings)> {
    let server = Some(name);
    let Some(keys) = node.keys() else {
        out.error(pos, server, "must be a table of settings");
        return None;
    };
    let before = out.errors.len();
    // Fields whose value could not be read: the definition's own checks skip them,
    // so that one error is reported once.
    let mut bad: BTreeSet<Field> = BTreeSet::new();

    // The type: given, or inferred from command / url (also when the given one is
    // wrong, so that the other checks still run).
    let inferred = if keys.contains_key("url") && !keys.contains_key("command") {
        ServerType::StreamableHttp
    } else {
        ServerType::Stdio
    };
    let server_type = match keys.get("type") {
        Some((tpos, t)) => match t.as_str().map(|s| parse_type(s, dialect)) {
            Some(Ok(t)) => t,
            Some(Err(message)) => {
                out.error(*tpos, server, message);
                bad.insert(Field::Type);
                inferred
            }
            None => {
                if t.is_readable() {
                    out.error(*tpos, server, "type: must be a string");
                }
                bad.insert(Field::Type);
                inferred
            }
        },
        None if keys.contains_key("command") || keys.contains_key("url") => inferred,
        None => {
            out.error(pos, server, "type: missing, and neither `command` nor `url` is given to infer it from");
            bad.insert(Field::Type);
            inferred
        }
    };
    let mut spec = ServerSpec::empty(name, server_type);
    let mut settings = ServerSettings::default();
    spec.auto_start = match dialect {
        Dialect::Roster => default_auto_start.unwrap_or(false),
        // The clients that own these files start every server unless disabled.
        Dialect::Client => true,
    };

    for (key, (kpos, value)) in keys {
        if !value.is_readable() {
            bad.extend(field_of(key));
            continue;
        }
        let mut failed = false;
        let mut field = |e: serde_json::Error| {
            out.error(*kpos, server, format!("{key}: {e}"));
            failed = true;
        };
        let v = value.to_value();
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
            ("command", _) => set(&mut spec.command, v, &mut field),
            ("args", _) => set(&mut spec.args, v, &mut field),
            ("env", _) => set(&mut spec.env, v, &mut field),
            ("cwd", _) => set(&mut spec.cwd, v, &mut field),
            ("url", _) => set(&mut spec.url, v, &mut field),
            ("headers", _) => set(&mut spec.headers, v, &mut field),
            ("timeout", _) => set(&mut spec.timeout, v, &mut field),
            ("description", _) => set(&mut spec.description, v, &mut field),
            ("auth", Dialect::Client) if is_cursor_auth(&v) => match cursor_auth(&v) {
                Ok((auth, warnings)) => {
                    spec.auth = Some(auth);
                    for w in warnings {
                        out.warning(*kpos, server, w);
                    }
                }
                Err(message) => out.error(*kpos, server, message),
            },
            ("auth", _) => set(&mut spec.auth, v, &mut field),
            ("inherit_env", Dialect::Roster) => set(&mut spec.inherit_env, v, &mut field),
            ("pass_env", Dialect::Roster) => set(&mut spec.pass_env, v, &mut field),
            ("auto_start", Dialect::Roster) => set(&mut spec.auto_start, v, &mut field),
            ("tool_prefix", Dialect::Roster) => set(&mut spec.tool_prefix, v, &mut field),
            ("tool_timeout", Dialect::Roster) => match duration(&v) {
                Ok(d) if TOOL_TIMEOUT_RANGE.contains(&d) => settings.tool_timeout = Some(d),
                Ok(d) => out.error(*kpos, server, format!("tool_timeout: must be between 1s and 24h, got {d:?}")),
                Err(message) => out.error(*kpos, server, format!("tool_timeout: {message}")),
            },
            ("start", Dialect::Roster) => match v.as_str() {
                Some("on_demand") => settings.on_demand = true,
                _ => out.error(
                    *kpos,
                    server,
                    "start: the one value is \"on_demand\" (started by `roster serve` at the first call); \
                     auto_start says whether a server starts with roster",
                ),
            },
            ("disabled", Dialect::Client) => {
                let mut disabled = false;
                set(&mut disabled, v, &mut field);
                spec.auto_start = !disabled;
            }
            (other, Dialect::Roster) => out.error(*kpos, server, unknown_key(other, &SERVER_KEYS)),
            (other, Dialect::Client) => {
                if !CLIENT_KEYS.contains(&other) {
                    out.warning(*kpos, server, format!("ignoring key `{other}`: roster has no use for it"));
                }
            }
        }
        if failed {
            bad.extend(field_of(key));
        }
    }
    if settings.on_demand {
        spec.auto_start = false;
    }
    let checked = spec.clone().validated();
    if let Err(errors) = &checked {
        // With the type unknown, what the inferred type requires is no news.
        let unknown_type = bad.contains(&Field::Type);
        let shown = |e: &&roster_core::ValidationError| {
            !bad.contains(&e.field) && (!unknown_type || keys.contains_key(e.field.as_str()))
        };
        for e in errors.iter().filter(shown) {
            let at = keys.get(e.field.as_str()).map_or(pos, |(p, _)| *p);
            // The server's name is already part of the diagnostic.
            let mut e = e.clone();
            e.server = String::new();
            out.error(at, server, e.to_string());
        }
    }
    if settings.on_demand
        && let Some((apos, v)) = keys.get("auto_start")
        && v.to_value().as_bool() == Some(true)
    {
        out.error(
            *apos,
            server,
            "auto_start: a server with start = \"on_demand\" starts at its first call, not with roster",
        );
    }
    if out.errors.len() > before {
        return None;
    }
    checked.ok().map(|spec| (spec, settings))
}

fn set<T: serde::de::DeserializeOwned>(slot: &mut T, value: Value, on_error: &mut impl FnMut(serde_json::Error)) {
    match serde_json::from_value(value) {
        Ok(v) => *slot = v,
        Err(e) => on_error(e),
    }
}

/// Cursor's form of a static OAuth client: `"auth": {"CLIENT_ID": ..,
/// "CLIENT_SECRET": .., "scopes": [..]}`, values possibly `${env:NAME}`.
fn is_cursor_auth(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.keys().any(|k| k == "CLIENT_ID" || k == "CLIENT_SECRET"))
}

/// The name in a `${env:NAME}` reference.
fn env_reference(s: &str) -> Option<&str> {
    s.strip_prefix("${env:").and_then(|r| r.strip_suffix('}')).filter(|n| !n.is_empty())
}

/// Cursor's static OAuth client as roster's `auth`, with warnings for what
/// roster does not take. The secret is only taken as a variable's name: roster
/// never keeps a secret from a file.
fn cursor_auth(v: &Value) -> Result<(roster_core::AuthConfig, Vec<String>), String> {
    let mut auth = roster_core::AuthConfig { kind: roster_core::AuthType::Oauth, ..roster_core::AuthConfig::default() };
    let mut warnings = Vec::new();
    for (key, value) in v.as_object().into_iter().flatten() {
        match (key.as_str(), value) {
            ("CLIENT_ID", Value::String(id)) => {
                auth.client_id = Some(match env_reference(id) {
                    Some(name) => std::env::var(name)
                        .map_err(|_| format!("auth.CLIENT_ID: the environment variable {name} is not set"))?,
                    None => id.clone(),
                });
            }
            ("CLIENT_SECRET", Value::String(secret)) => match env_reference(secret) {
                Some(name) => auth.client_secret_env = Some(name.to_owned()),
                None => warnings.push(
                    "auth.CLIENT_SECRET: roster reads a client secret only from the environment; \
                     write \"${env:NAME}\" (the secret given here is ignored)"
                        .to_owned(),
                ),
            },
            ("scopes", Value::Array(scopes)) => {
                auth.scopes = scopes.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect();
            }
            ("CLIENT_ID" | "CLIENT_SECRET", _) => return Err(format!("auth.{key}: must be a string")),
            ("scopes", _) => return Err("auth.scopes: must be a list of strings".to_owned()),
            (other, _) => warnings.push(format!("ignoring key `auth.{other}`: roster has no use for it")),
        }
    }
    if auth.client_secret_env.is_some() && auth.client_id.is_none() {
        return Err("auth.CLIENT_SECRET needs auth.CLIENT_ID".to_owned());
    }
    Ok((auth, warnings))
}

fn parse_type(s: &str, dialect: Dialect) -> Result<ServerType, String> {
    match (s, dialect) {
        ("http" | "streamableHttp", Dialect::Client) => Ok(ServerType::StreamableHttp),
        _ => ServerType::parse(s).map_err(|e| e.to_string()),
    }
}

// ----- JSON ---------------------------------------------------------------------------

/// How deep `text` nests objects and arrays, outside strings and comments (a
/// guard before the parser, which recurses).
fn json_depth(text: &str) -> usize {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        Text { escaped: bool },
        LineComment,
        BlockComment { star: bool },
    }
    let (mut depth, mut deepest, mut state) = (0usize, 0usize, In::Code);
    let mut prev = 0u8;
    for &b in text.as_bytes() {
        state = match (state, b) {
            (In::Code, b'"') => In::Text { escaped: false },
            (In::Code, b'/') if prev == b'/' => In::LineComment,
            (In::Code, b'*') if prev == b'/' => In::BlockComment { star: false },
            (In::Code, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
                In::Code
            }
            (In::Code, b'}' | b']') => {
                depth = depth.saturating_sub(1);
                In::Code
            }
            (In::Code, _) => In::Code,
            (In::Text { escaped: false }, b'"') => In::Code,
            (In::Text { escaped: false }, b'\\') => In::Text { escaped: true },
            (In::Text { .. }, _) => In::Text { escaped: false },
            (In::LineComment, b'\n') => In::Code,
            (In::LineComment, _) => In::LineComment,
            (In::BlockComment { star: true }, b'/') => In::Code,
            (In::BlockComment { .. }, c) => In::BlockComment { star: c == b'*' },
        };
        // A `/` that opened a comment does not open another one.
        prev = if matches!(state, In::Code) { b } else { 0 };
    }
    deepest
}

fn parse_json(text: &str, lines: &Lines<'_>, out: &mut Diagnostics) -> Option<Node> {
    if json_depth(text) > MAX_NESTING {
        out.error(Pos { line: 1, col: 1 }, None, format!("the file nests deeper than {MAX_NESTING} levels"));
        return None;
    }
    let options = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_loose_object_property_names: false,
        allow_trailing_commas: true,
    };
    let parsed = match jsonc_parser::parse_to_ast(text, &jsonc_parser::CollectOptions::default(), &options) {
        Ok(parsed) => parsed,
        Err(e) => {
            out.error(lines.pos(e.range().start), None, format!("invalid JSON: {}", e.kind()));
            return None;
        }
    };
    let Some(value) = parsed.value else {
        out.error(Pos { line: 1, col: 1 }, None, "the file is empty: expected a JSON object");
        return None;
    };
    let mut path = Vec::new();
    Some(json_node(&value, lines.pos(value.range().start), lines, &mut path, out))
}

fn json_node(
    value: &jsonc_parser::ast::Value<'_>,
    pos: Pos,
    lines: &Lines<'_>,
    path: &mut Vec<String>,
    out: &mut Diagnostics,
) -> Node {
    use jsonc_parser::ast::Value as J;
    let leaf = |v: Value| Node { pos, kind: Kind::Leaf(Some(v)) };
    match value {
        J::StringLit(s) => leaf(Value::String(s.value.to_string())),
        J::BooleanLit(b) => leaf(Value::Bool(b.value)),
        J::NullKeyword(_) => leaf(Value::Null),
        J::NumberLit(n) => match serde_json::from_str::<serde_json::Number>(n.value) {
            Ok(number) if number.as_f64().is_some_and(f64::is_finite) => leaf(Value::Number(number)),
            Ok(_) | Err(_) => {
                out.error(pos, None, format!("{}: {} is not a number roster can read", path.join("."), n.value));
                Node { pos, kind: Kind::Leaf(None) }
            }
        },
        J::Array(a) => {
            let items = a.elements.iter().enumerate().map(|(i, v)| {
                path.push(i.to_string());
                let node = json_node(v, lines.pos(v.range().start), lines, path, out);
                path.pop();
                node
            });
            Node { pos, kind: Kind::Array(items.collect()) }
        }
        J::Object(o) => {
            let mut keys: BTreeMap<String, (Pos, Node)> = BTreeMap::new();
            for prop in &o.properties {
                let name = prop.name.as_str().to_owned();
                let key_pos = lines.pos(prop.name.range().start);
                if let Some((first, _)) = keys.get(&name) {
                    path.push(name.clone());
                    out.error(key_pos, None, format!("{}: given twice (first at {first})", path.join(".")));
                    path.pop();
                    continue;
                }
                path.push(name.clone());
                let node = json_node(&prop.value, key_pos, lines, path, out);
                path.pop();
                keys.insert(name, (key_pos, node));
            }
            Node { pos, kind: Kind::Table(keys) }
        }
    }
}

fn read_json(root: &Node, out: &mut Diagnostics) -> Loaded {
    let defaults = (SupervisorConfig::default(), HttpOptions::default());
    let Some(keys) = root.keys() else {
        out.error(
            root.pos,
            None,
            "expected a JSON object with `mcpServers` (Claude Desktop, Cursor) or `servers` (VS Code)",
        );
        return Loaded {
            format: Format::McpServersJson,
            servers: Vec::new(),
            serve: BTreeMap::new(),
            supervisor: defaults.0,
            http: defaults.1,
        };
    };
    let (format, key) = if keys.contains_key("mcpServers") {
        (Format::McpServersJson, "mcpServers")
    } else if keys.contains_key("servers") {
        (Format::VsCodeJson, "servers")
    } else {
        out.error(
            root.pos,
            None,
            "expected a JSON object with `mcpServers` (Claude Desktop, Cursor) or `servers` (VS Code)",
        );
        return Loaded {
            format: Format::McpServersJson,
            servers: Vec::new(),
            serve: BTreeMap::new(),
            supervisor: defaults.0,
            http: defaults.1,
        };
    };
    for (other, (pos, _)) in keys.iter().filter(|(k, _)| k.as_str() != key) {
        let note =
            if other == "inputs" { ": input variables are not supported; values are used as written" } else { "" };
        out.warning(*pos, None, format!("ignoring `{other}`{note}"));
    }
    let mut servers = Vec::new();
    let (pos, node) = &keys[key];
    match node.keys() {
        Some(entries) => {
            for (name, (spos, server)) in entries {
                if let Some((spec, _)) = read_server(name, *spos, server, Dialect::Client, None, out) {
                    servers.push(spec);
                }
            }
        }
        None => out.error(*pos, None, format!("`{key}` must be an object of servers")),
    }
    Loaded { format, servers, serve: BTreeMap::new(), supervisor: defaults.0, http: defaults.1 }
}

#[cfg(test)]
mod tests;
