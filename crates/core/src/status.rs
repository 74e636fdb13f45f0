//! The status snapshot of one server (SPEC §9).
//!
//! A [`ServerStatus`] is plain data, built from a [`Lifecycle`] at a given
//! instant. No secret enters it: the values of `env` and `headers` are replaced by
//! `<redacted>`, and so are the password, query values and fragment of `url`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::failure::{Challenge, FailureKind};
use crate::lifecycle::{Health, Lifecycle, State};
use crate::spec::{REDACTED, ServerType};

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
    /// remote: the endpoint, its password, query values and fragment redacted.
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
    /// (roster) What the last tool listing found wrong (a server that offers tools
    /// listed none, or could not list them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// (roster) How long the last answered ping took, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_latency_us: Option<u64>,
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
            url: if spec.url.is_empty() { String::new() } else { spec.display_url() },
            env: redact(&spec.env),
            headers: redact(&spec.headers),
            timeout_secs: spec.connect_timeout().as_secs(),
            description: spec.description.clone(),
            tool_prefix: spec.tool_prefix.clone(),
            last_error: lifecycle.last_error().map(str::to_owned),
            last_failure: lifecycle.last_failure(),
            auth_challenge: lifecycle.auth_challenge().cloned(),
            warning: lifecycle.warning().map(str::to_owned),
            ping_latency_us: lifecycle.ping_latency().map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            client_ready: lifecycle.is_client_ready(),
            consecutive_failures: lifecycle.consecutive_failures(),
            crash_count: lifecycle.crash_count(),
            restart_count: lifecycle.restart_count(),
            last_attempt: lifecycle.last_attempt().and_then(wall),
            next_retry_after: lifecycle.next_retry_after().and_then(wall),
            uptime_ms: lifecycle.up_since().map(|since| millis(now.saturating_duration_since(since))),
            pid: None,
            stderr_tail: Vec::new(),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            let l = Lifecycle::new(spec.validated().unwrap(), Settings::default(), 0);
            let json = serde_json::to_string(&ServerStatus::new(&l, crate::test_instant(), UNIX_EPOCH)).unwrap();
            assert!(!json.contains("s3cret") && !json.contains("hunter2"), "{json}");
            assert!(json.contains("<redacted>"), "{json}");
        }
    }

    #[test]
    fn url_credentials_and_query_values_are_never_serialized() {
        let spec =
            ServerSpec::remote("api", ServerType::Sse, "https://bob:s3cret@x.example:8443/sse?token=hunter2&v=1#frag");
        let l = Lifecycle::new(spec.validated().unwrap(), Settings::default(), 0);
        let st = ServerStatus::new(&l, crate::test_instant(), UNIX_EPOCH);
        assert_eq!(st.url, "https://bob:<redacted>@x.example:8443/sse?token=<redacted>&v=<redacted>#<redacted>");
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains("s3cret") && !json.contains("hunter2") && !json.contains("frag"), "{json}");
    }

    #[test]
    fn a_failed_server_shows_its_retry_error_and_counts() {
        let t0 = crate::test_instant();
        let wall0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let spec = ServerSpec::remote("api", ServerType::StreamableHttp, "https://x/mcp").validated().unwrap();
        let mut l = Lifecycle::new(spec, Settings::default(), 0);
        let t = l.handle(t0, Event::StartRequested);
        let generation = t
            .effects
            .iter()
            .find_map(|e| match e {
                crate::Effect::Connect { generation, .. } => Some(*generation),
                _other => None,
            })
            .unwrap();
        let _ = l.handle(t0, Event::ConnectFailed { generation, failure: crate::Failure::transient("refused") });
        let st = ServerStatus::new(&l, t0 + Duration::from_secs(1), wall0 + Duration::from_secs(1));
        assert_eq!(st.next_retry_after, Some(1_700_000_030_000), "a time in the future");
        assert_eq!(st.last_attempt, Some(1_700_000_000_000), "a time in the past");
        assert_eq!((st.state, st.health, st.consecutive_failures), (State::Failed, Health::Unhealthy, 1));
        assert_eq!(st.last_error.as_deref(), Some("refused"));
        assert_eq!(st.last_failure, Some(FailureKind::Transient));
        assert_eq!((st.client_ready, st.uptime_ms, st.timeout_secs), (false, None, 30));
        // A wall clock before 1970 cannot be shown.
        assert_eq!(wall_millis(t0, t0 + Duration::from_secs(5), UNIX_EPOCH), None);
    }

    #[test]
    fn an_up_server_shows_its_uptime() {
        let t0 = crate::test_instant();
        let spec = ServerSpec::stdio("fs", "x").validated().unwrap();
        let mut l = Lifecycle::new(spec, Settings::default(), 0);
        let _ = l.handle(t0, Event::StartRequested);
        let generation = l.attempt().unwrap();
        let _ = l.handle(t0, Event::ConnectSucceeded { generation });
        let st = ServerStatus::new(&l, t0 + Duration::from_millis(1500), UNIX_EPOCH + Duration::from_secs(9));
        assert_eq!(st.uptime_ms, Some(1500));
        assert!(st.client_ready);
        assert_eq!((st.state, st.health), (State::Running, Health::Healthy));
    }

    #[test]
    fn times_are_wall_clock_millis() {
        let t0 = crate::test_instant();
        let wall0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut l = Lifecycle::new(ServerSpec::stdio("s", "x").validated().unwrap(), Settings::default(), 0);
        let _ = l.handle(t0, Event::StartRequested);
        let st = ServerStatus::new(&l, t0 + Duration::from_secs(2), wall0 + Duration::from_secs(2));
        assert_eq!(st.last_attempt, Some(1_700_000_000_000));
        assert_eq!(st.state, State::Starting);
        assert_eq!(st.timeout_secs, 10);
    }
}
