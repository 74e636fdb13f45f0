//! The status snapshot of one server (SPEC §9) and the event reasons (SPEC §10).
//!
//! A [`ServerStatus`] is plain data, built from a [`Lifecycle`] at a given
//! instant. The values of `env` and `headers` never enter it: only their keys,
//! each mapped to `<redacted>`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::failure::{Challenge, FailureKind};
use crate::lifecycle::{Health, Lifecycle, State};
use crate::spec::{REDACTED, ServerType};

/// Why an event was published (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// A start began.
    #[serde(rename = "MCPServerStarting")]
    Starting,
    /// A start succeeded.
    #[serde(rename = "MCPServerStarted")]
    Started,
    /// The server is down by request (or as part of a restart).
    #[serde(rename = "MCPServerStopped")]
    Stopped,
    /// A start failed, or the running server died.
    #[serde(rename = "MCPServerFailed")]
    Failed,
    /// The server answered 401.
    #[serde(rename = "MCPServerAuthRequired")]
    AuthRequired,
    /// The server went from healthy to unhealthy (once per episode).
    #[serde(rename = "MCPServerHealthCheckFailed")]
    HealthCheckFailed,
    /// A restart began (by request, definition change, retry or crash recovery).
    #[serde(rename = "MCPServerRecoveryStarted")]
    RecoveryStarted,
    /// The start of a restart succeeded.
    #[serde(rename = "MCPServerRecoverySucceeded")]
    RecoverySucceeded,
    /// The start of a restart failed.
    #[serde(rename = "MCPServerRecoveryFailed")]
    RecoveryFailed,
    /// The start of a restart got a 401.
    #[serde(rename = "MCPServerRecoveryAwaitingAuth")]
    RecoveryAwaitingAuth,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 10] = [
        Reason::Starting,
        Reason::Started,
        Reason::Stopped,
        Reason::Failed,
        Reason::AuthRequired,
        Reason::HealthCheckFailed,
        Reason::RecoveryStarted,
        Reason::RecoverySucceeded,
        Reason::RecoveryFailed,
        Reason::RecoveryAwaitingAuth,
    ];

    /// The wire name (`MCPServerStarting`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Starting => "MCPServerStarting",
            Reason::Started => "MCPServerStarted",
            Reason::Stopped => "MCPServerStopped",
            Reason::Failed => "MCPServerFailed",
            Reason::AuthRequired => "MCPServerAuthRequired",
            Reason::HealthCheckFailed => "MCPServerHealthCheckFailed",
            Reason::RecoveryStarted => "MCPServerRecoveryStarted",
            Reason::RecoverySucceeded => "MCPServerRecoverySucceeded",
            Reason::RecoveryFailed => "MCPServerRecoveryFailed",
            Reason::RecoveryAwaitingAuth => "MCPServerRecoveryAwaitingAuth",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// A snapshot of one server (SPEC §9). Readable at any time; secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's name.
    pub name: String,
    /// Its transport type.
    #[serde(rename = "type")]
    pub server_type: ServerType,
    /// Its state.
    pub state: State,
    /// Its health.
    pub health: Health,
    /// Whether it starts with the supervisor.
    pub auto_start: bool,
    /// stdio: the program.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// stdio: its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// remote: the endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// stdio: the configured variables, values redacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// remote: the configured headers, values redacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The effective connect timeout, in seconds.
    pub timeout_secs: u64,
    /// Human text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tool prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool_prefix: String,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The class of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureKind>,
    /// What the server asked for, while `auth_required` (realm, scope, resource_metadata...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_challenge: Option<Challenge>,
    /// A live session exists.
    pub client_ready: bool,
    /// Failed connection attempts in a row.
    pub consecutive_failures: u32,
    /// Crashes since the server last stayed up for the stable period.
    pub crash_count: u32,
    /// Restarts begun.
    pub restart_count: u32,
    /// When the last start began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<UnixMillis>,
    /// When the next automatic retry runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_after: Option<UnixMillis>,
    /// How long the live session has been up, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// stdio: the server's process id (filled in by the driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// stdio: the last lines of stderr (filled in by the driver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
}

impl ServerStatus {
    /// The snapshot of `lifecycle` at `now`, whose wall-clock time is `wall_now`
    /// (both passed in: the core reads no clock). `pid` and `stderr_tail` are left
    /// empty for the driver to fill.
    pub fn new(lifecycle: &Lifecycle, now: Instant, wall_now: SystemTime) -> ServerStatus {
        let spec = lifecycle.spec();
        let redact = |m: &BTreeMap<String, String>| m.keys().map(|k| (k.clone(), REDACTED.to_owned())).collect();
        let wall = |t: Instant| wall_millis(t, now, wall_now);
        ServerStatus {
            name: spec.name.clone(),
            server_type: spec.server_type,
            state: lifecycle.state(),
            health: lifecycle.health(),
            auto_start: spec.auto_start,
            command: spec.command.clone(),
            args: spec.args.clone(),
            url: spec.url.clone(),
            env: redact(&spec.env),
            headers: redact(&spec.headers),
            timeout_secs: spec.connect_timeout().as_secs(),
            description: spec.description.clone(),
            tool_prefix: spec.tool_prefix.clone(),
            last_error: lifecycle.last_error().map(str::to_owned),
            last_failure: lifecycle.last_failure(),
            auth_challenge: lifecycle.auth_challenge().cloned(),
            client_ready: lifecycle.is_client_ready(),
            consecutive_failures: lifecycle.consecutive_failures(),
            crash_count: lifecycle.crash_count(),
            restart_count: lifecycle.restart_count(),
            last_attempt: lifecycle.last_attempt().and_then(wall),
            next_retry_after: lifecycle.next_retry_after().and_then(wall),
            uptime_ms: lifecycle
                .up_since()
                .map(|since| u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)),
            pid: None,
            stderr_tail: Vec::new(),
        }
    }
}

/// The wall-clock time of `t`, given that `now` is `wall_now`.
fn wall_millis(t: Instant, now: Instant, wall_now: SystemTime) -> Option<UnixMillis> {
    let wall = if t >= now { wall_now.checked_add(t - now)? } else { wall_now.checked_sub(now - t)? };
    u64::try_from(wall.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lifecycle::{Event, Settings};
    use crate::spec::ServerSpec;

    #[test]
    fn env_and_header_values_are_never_serialized() {
        let mut spec = ServerSpec::remote("api", ServerType::StreamableHttp, "https://x/mcp");
        spec.headers.insert("Authorization".into(), "Bearer s3cret-token".into());
        let mut stdio = ServerSpec::stdio("fs", "server");
        stdio.env.insert("API_KEY".into(), "hunter2".into());
        for spec in [spec, stdio] {
            let l = Lifecycle::new(spec, Settings::default(), 0);
            let json = serde_json::to_string(&ServerStatus::new(&l, crate::test_instant(), UNIX_EPOCH)).unwrap();
            assert!(!json.contains("s3cret") && !json.contains("hunter2"), "{json}");
            assert!(json.contains("<redacted>"), "{json}");
        }
    }

    #[test]
    fn times_are_wall_clock_millis() {
        let t0 = crate::test_instant();
        let wall0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut l = Lifecycle::new(ServerSpec::stdio("s", "x"), Settings::default(), 0);
        let _ = l.handle(t0, Event::StartRequested);
        let st = ServerStatus::new(&l, t0 + Duration::from_secs(2), wall0 + Duration::from_secs(2));
        assert_eq!(st.last_attempt, Some(1_700_000_000_000));
        assert_eq!(st.state, State::Starting);
        assert_eq!(st.timeout_secs, 10);
    }

    #[test]
    fn reason_wire_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
