//! # roster-core: the pure lifecycle core of roster
//!
//! Everything roster *decides* about an MCP server lives here: its definition and
//! validation ([`spec`]), which definition changes need a restart ([`change`]),
//! the backoff arithmetic ([`backoff`]), failure classes and the
//! `WWW-Authenticate` parser ([`failure`]), the lifecycle state machine
//! ([`lifecycle`]), and the status snapshot ([`status`]).
//!
//! ## The contract
//! - **No I/O.** Nothing here touches a file, a socket, a process or a thread.
//! - **No clock.** Time comes in as a value (`now: Instant`); randomness (jitter)
//!   comes from a seed given at construction. `Instant::now`, `SystemTime::now`
//!   and `thread::sleep` are banned by this crate's `clippy.toml`.
//! - **Total.** [`Lifecycle::handle`] accepts every event in every state and never
//!   panics; an event that does not apply changes nothing.
//! - **Deterministic.** The same seed, definition, settings and sequence of
//!   `(now, event)` always give the same transitions.
//!
//! A driver (roster's is `roster-supervisor`, on tokio) feeds events, executes
//! the returned [`Effect`]s in order, and wakes the machine at
//! [`Lifecycle::poll_timeout`]. Any host can drive it: nothing here assumes an
//! async runtime.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use roster_core::{Effect, Event, Failure, Lifecycle, ServerSpec, ServerType, Settings, State};
//!
//! let spec = ServerSpec::remote("api", ServerType::StreamableHttp, "https://api.example/mcp");
//! let mut server = Lifecycle::new(spec.validated().expect("a valid definition"), Settings::default(), 7);
//! let t0 = Instant::now();
//!
//! let t = server.handle(t0, Event::StartRequested);
//! let Some(Effect::Connect { generation, .. }) = t.effects.iter().find(|e| matches!(e, Effect::Connect { .. })).cloned() else {
//!     unreachable!()
//! };
//! // ...the driver connects; the server is down for a deploy:
//! let t = server.handle(t0, Event::ConnectFailed { generation, failure: Failure::transient("HTTP 503") });
//! assert_eq!(t.to, State::Failed);
//! assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_secs(30)));
//! ```

#![forbid(unsafe_code)]

pub mod backoff;
pub mod change;
pub mod failure;
pub mod lifecycle;
pub mod spec;
pub mod status;

pub use backoff::{Backoff, BackoffError};
pub use change::{Change, ChangeAction, ChangeKind, SpecChange, configuration_changed};
pub use failure::{AuthChallenge, Challenge, Failure, FailureClass, FailureKind, parse_www_authenticate};
pub use lifecycle::{
    Effect, Event, Generation, Health, Lifecycle, LifecycleEvent, NonZeroDuration, Reason, Reply, Settings,
    SettingsError, StartError, State, ToolListing, Transition,
};
pub use spec::{AuthConfig, AuthType, Field, Grant, ServerSpec, ServerType, ValidSpec, ValidationError, redact_url};
pub use status::ServerStatus;

/// An arbitrary base instant for this crate's own tests: the core never reads a clock,
/// but a test needs some `Instant` to count from.
#[cfg(test)]
#[expect(clippy::disallowed_methods, reason = "tests need an arbitrary base instant")]
pub(crate) fn test_instant() -> std::time::Instant {
    std::time::Instant::now()
}
