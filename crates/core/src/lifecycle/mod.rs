//! The lifecycle of one MCP server as a pure state machine (SPEC §2–§8).
//!
//! [`Lifecycle`] is a value its driver feeds. Every input is an [`Event`] with the
//! current time; every output is a [`Transition`] whose [`Effect`]s the driver
//! executes. The machine never does I/O, never reads a clock and never fails.
//!
//! # The driver's contract
//!
//! 1. **Feed requests** as they arrive: [`Event::StartRequested`],
//!    [`Event::StopRequested`], [`Event::RestartRequested`],
//!    [`Event::HealthCheckRequested`], [`Event::SpecChanged`].
//! 2. **Execute every effect of a transition, in order, before feeding the next
//!    event.** `Connect`, `CloseSession`, `Ping` and `ListTools` start work that
//!    reports back later as an event carrying the same [`Generation`] (a ping's
//!    report with the latency the driver measured); `CancelConnect` abandons
//!    work and needs no report. `CallAuthHook` runs the host's hook before anything
//!    of the transition is published. `Publish` goes to subscribers. `Reply`
//!    answers callers.
//! 3. **Keep one timer** at [`Lifecycle::poll_timeout`], re-armed after every
//!    call to [`Lifecycle::handle`], and feed [`Event::Timeout`] when it fires. An
//!    early `Timeout` does nothing.
//! 4. **Watch the live session** and feed [`Event::SessionLost`] when it dies by
//!    itself.
//!
//! Reports with a generation that is not current (a connect that finished after a
//! stop, a ping answered by a session that has since been replaced) change
//! nothing, except that a late successful connect is handed back to be closed.
//!
//! ## Replies
//! The machine does not know its callers. A driver keeps the callers waiting on a
//! start (or restart), on a stop and on a health check, and answers all callers of
//! a kind when a [`Reply`] of that kind comes out: a start joins the attempt in
//! flight and is answered with its outcome; a stop is answered once nothing of the
//! server's last session is left; a health check is answered with the ping's
//! result; a definition change is answered with what it did ([`Reply::Updated`]).
//!
//! ## Publications
//! Every change of [`State`] or [`Health`] (healthy, degraded, unhealthy) is
//! published exactly once, in order:
//! each [`LifecycleEvent`]'s `previous_*` values are the last event's new ones.
//! A lifecycle [`Reason`] is published even when nothing visible changes.
//!
//! # The methods, by group
//!
//! - **Building it:** [`Lifecycle::new`] with a [`ValidSpec`](crate::ValidSpec),
//!   [`Settings`] and a jitter seed.
//! - **Feeding it:** [`Lifecycle::handle`], the only method that changes it.
//! - **Its timer:** [`Lifecycle::poll_timeout`].
//! - **What it shows** (SPEC §2, §9): [`Lifecycle::state`], [`Lifecycle::health`],
//!   [`Lifecycle::is_running`], [`Lifecycle::is_healthy`],
//!   [`Lifecycle::is_unreachable`], [`Lifecycle::is_client_ready`],
//!   [`Lifecycle::last_error`], [`Lifecycle::last_failure`],
//!   [`Lifecycle::auth_challenge`], [`Lifecycle::consecutive_failures`],
//!   [`Lifecycle::crash_count`], [`Lifecycle::restart_count`],
//!   [`Lifecycle::missed_pings`], [`Lifecycle::ping_latency`],
//!   [`Lifecycle::warning`], [`Lifecycle::last_attempt`],
//!   [`Lifecycle::next_retry_after`], [`Lifecycle::up_since`],
//!   [`Lifecycle::spec`], [`Lifecycle::settings`].
//! - **What is in flight**, for a driver that keeps its work by generation:
//!   [`Lifecycle::attempt`], [`Lifecycle::session`], [`Lifecycle::closing`].
//! - **Planning:** [`Lifecycle::change_outcome`], the decision that
//!   [`Event::SpecChanged`] applies, for a plan to show before anything changes.
//!
//! # Files
//! `events` (what goes in and comes out), `state` (what is shown, with the state
//! diagram), `settings` (the numbers and their ranges), `machine` (the machine).

mod events;
mod machine;
mod settings;
mod state;
#[cfg(test)]
mod tests;

pub use events::{Effect, Event, Generation, LifecycleEvent, Reason, Reply, StartError, ToolListing, Transition};
pub use machine::{Lifecycle, NO_CLIENT};
pub use settings::{
    DEGRADED_AFTER, DEGRADED_AFTER_MIN, HEALTH_CHECK_INTERVAL, HEALTH_CHECK_INTERVAL_RANGE, INITIAL_BACKOFF_RANGE,
    MAX_BACKOFF_LIMIT, MAX_DELAY, MAX_RETRY_AFTER, MULTIPLIER_RANGE, NonZeroDuration, PING_TIMEOUT, PING_TIMEOUT_RANGE,
    RESTART_GRACE_PERIOD, RESTART_GRACE_RANGE, STABLE_PERIOD, STABLE_PERIOD_RANGE, Settings, SettingsError,
    THRESHOLD_RANGE, UNHEALTHY_THRESHOLD, UNREACHABLE_THRESHOLD, format_duration,
};
pub use state::{Health, State};
