//! What subscribers and status readers see of a server: its [`State`] and [`Health`].
//!
//! Both are derived from the machine's private phase every time they are read;
//! nothing stores them beside it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a server, as published (SPEC §2).
///
/// Every move [`Lifecycle`](crate::Lifecycle) makes, and no other:
///
/// ```text
///   unknown ──────────────┬─ start, restart, change (auto_start on) ──▶ starting
///                         └─ stop ──────────────────────────────────▶ stopped*
///   stopped* ──────────────── start, restart, change (auto_start on) ──▶ starting
///   stopped* (grace) ──────── grace over ─────────────────────────────▶ starting
///   starting ─────────────┬─ connected ─────────────────────────────▶ running*
///                         ├─ failed: transient, permanent ──────────▶ failed
///                         ├─ failed: N-th transient (remote) ───────▶ unreachable
///                         ├─ failed: needs credentials (remote) ────▶ auth_required
///                         ├─ stop ──────────────────────────────────▶ stopped*
///                         └─ restart, change ───────────────────────▶ stopped* (grace)
///   running* ─────────────┬─ stop, restart, change ─────────────────▶ stopping
///                         ├─ lost; N pings failed ──────────────────▶ failed
///                         └─ lost or pinged with 401 (remote) ──────▶ auth_required
///   stopping ─────────────┬─ closed, after a stop ──────────────────▶ stopped*
///                         └─ closed, in a restart ──────────────────▶ stopped* (grace)
///   failed, unreachable ───── retry due ──────────────────────────────▶ starting
///   failed, unreachable, ─┬─ start, restart, change ────────────────▶ starting
///   auth_required         │    ... while a lost session closes ─────▶ stopping
///                         └─ stop ──────────────────────────────────▶ stopped*
///                              ... while a lost session closes ─────▶ stopping
/// ```
///
/// Legend: `running*` is `running` (stdio) or `connected` (remote); `stopped*` is
/// `stopped` (stdio) or `disconnected` (remote), and `stopped* (grace)` is that
/// state between the stop and the start of a restart. "change" is a definition
/// change that needs a restart (SPEC §8). "lost" is a session that died by itself;
/// "N" is the setting's threshold. Health is `healthy`, `degraded` or `unhealthy`
/// while `running*`, `unhealthy` in `failed`, and `unknown` everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never started.
    Unknown,
    /// A connection attempt is in flight.
    Starting,
    /// A stdio server is up.
    Running,
    /// A remote server is up.
    Connected,
    /// The session is being closed.
    Stopping,
    /// A stdio server is down by request (or between the halves of a restart).
    Stopped,
    /// A remote server is down by request (or between the halves of a restart).
    Disconnected,
    /// The last attempt failed, or the running server died.
    Failed,
    /// A remote server failed `unreachable_threshold` times in a row.
    Unreachable,
    /// A remote server answered 401 (or 403 `insufficient_scope`): it wants credentials.
    AuthRequired,
}

impl State {
    /// Every state.
    pub const ALL: [State; 10] = [
        State::Unknown,
        State::Starting,
        State::Running,
        State::Connected,
        State::Stopping,
        State::Stopped,
        State::Disconnected,
        State::Failed,
        State::Unreachable,
        State::AuthRequired,
    ];

    /// The wire name (`unknown`, `starting`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Starting => "starting",
            State::Running => "running",
            State::Connected => "connected",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Disconnected => "disconnected",
            State::Failed => "failed",
            State::Unreachable => "unreachable",
            State::AuthRequired => "auth_required",
        }
    }

    /// `running` or `connected`.
    pub fn is_running(self) -> bool {
        matches!(self, State::Running | State::Connected)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health of a server (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not known (not up, or down by request).
    Unknown,
    /// Up and answering pings.
    Healthy,
    /// (roster) Up and answering pings, but the last answer took longer than
    /// `degraded_after`.
    Degraded,
    /// Failed, or missing pings.
    Unhealthy,
}

impl Health {
    /// Every health value.
    pub const ALL: [Health; 4] = [Health::Unknown, Health::Healthy, Health::Degraded, Health::Unhealthy];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_display_and_serde_agree() {
        let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "unknown",
                "starting",
                "running",
                "connected",
                "stopping",
                "stopped",
                "disconnected",
                "failed",
                "unreachable",
                "auth_required"
            ]
        );
        for s in State::ALL {
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(serde_json::from_value::<State>(s.as_str().into()).unwrap(), s);
        }
        let names: Vec<&str> = Health::ALL.iter().map(|h| h.as_str()).collect();
        assert_eq!(names, ["unknown", "healthy", "degraded", "unhealthy"]);
        for h in Health::ALL {
            assert_eq!(h.to_string(), h.as_str());
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }

    #[test]
    fn only_running_and_connected_are_running() {
        let running: Vec<State> = State::ALL.into_iter().filter(|s| s.is_running()).collect();
        assert_eq!(running, [State::Running, State::Connected]);
    }
}
