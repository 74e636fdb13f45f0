//! The numbers the lifecycle runs by (SPEC §11), their defaults and their ranges.
//!
//! Every setting has a documented range. [`Settings::check`] reports every value
//! outside its range, naming the setting, so that a configuration that passes a
//! check cannot make the machine misbehave (a crashed server that is never
//! retried, a deadline that does not fit in an [`Instant`](std::time::Instant)).
//! The machine itself stays total whatever it is given: a delay above
//! [`MAX_DELAY`] is treated as [`MAX_DELAY`].
//!
//! Settings that must not be zero have types that cannot be zero
//! ([`NonZeroU32`], [`NonZeroDuration`]).

use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::backoff::Backoff;

/// `UNREACHABLE_THRESHOLD`: consecutive transient failures after which a remote server is unreachable.
pub const UNREACHABLE_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).unwrap();
/// `RESTART_GRACE_PERIOD`: the pause between stopping and starting again in a restart.
pub const RESTART_GRACE_PERIOD: Duration = Duration::from_millis(200);
/// `HEALTH_CHECK_INTERVAL`: how often a running server is pinged.
pub const HEALTH_CHECK_INTERVAL: NonZeroDuration = NonZeroDuration::from_secs(30);
/// `PING_TIMEOUT`: how long one ping may take.
pub const PING_TIMEOUT: NonZeroDuration = NonZeroDuration::from_secs(10);
/// (roster) `DEGRADED_AFTER`: a ping answered more slowly than this makes a
/// server `degraded`.
pub const DEGRADED_AFTER: Duration = Duration::from_secs(5);
/// `UNHEALTHY_THRESHOLD`: failed pings in a row after which the session counts as lost.
pub const UNHEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).unwrap();
/// `STABLE_PERIOD`: how long a server must stay up for its crash count to clear.
pub const STABLE_PERIOD: Duration = Duration::from_secs(5 * 60);

/// The longest `Retry-After` honoured. A server's `Retry-After` is a floor for the
/// next retry, even above the backoff cap; one asking for more than this waits this
/// long, so that a typo on the server (seconds for milliseconds) cannot park a
/// server for weeks. `roster start` retries at once whatever was asked.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The longest delay the machine schedules. Longer delays (possible only with
/// settings that [`Settings::check`] rejects) are cut to this, so that `now + delay`
/// always fits in an `Instant`.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Accepted `initial_backoff`: 1 ms to 24 h.
pub const INITIAL_BACKOFF_RANGE: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(86_400);
/// Accepted `max_backoff`: from `initial_backoff` to 24 h.
pub const MAX_BACKOFF_LIMIT: Duration = Duration::from_secs(86_400);
/// Accepted `backoff_multiplier`: 1 to 100.
pub const MULTIPLIER_RANGE: RangeInclusive<f64> = 1.0..=100.0;
/// Accepted thresholds (`unreachable_threshold`, `unhealthy_threshold`): 1 to 1,000.
pub const THRESHOLD_RANGE: RangeInclusive<u32> = 1..=1000;
/// Accepted `restart_grace`: 0 to 10 min.
pub const RESTART_GRACE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(600);
/// Accepted `health_check_interval`: 100 ms to 24 h.
pub const HEALTH_CHECK_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(86_400);
/// Accepted `ping_timeout`: 100 ms to 10 min.
pub const PING_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(600);
/// Accepted `degraded_after`: from 1 ms to just below `ping_timeout`.
pub const DEGRADED_AFTER_MIN: Duration = Duration::from_millis(1);
/// Accepted `stable_period`: 0 to 7 days.
pub const STABLE_PERIOD_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(7 * 86_400);

/// A [`Duration`] that is not zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonZeroDuration(Duration);

impl NonZeroDuration {
    /// `d`, unless it is zero.
    pub const fn new(d: Duration) -> Option<NonZeroDuration> {
        if d.is_zero() { None } else { Some(NonZeroDuration(d)) }
    }

    /// `secs` seconds.
    ///
    /// # Panics
    /// When `secs` is zero (in a `const` this is a compile error).
    pub const fn from_secs(secs: u64) -> NonZeroDuration {
        NonZeroDuration::new(Duration::from_secs(secs)).expect("a non-zero number of seconds")
    }

    /// `ms` milliseconds.
    ///
    /// # Panics
    /// When `ms` is zero (in a `const` this is a compile error).
    pub const fn from_millis(ms: u64) -> NonZeroDuration {
        NonZeroDuration::new(Duration::from_millis(ms)).expect("a non-zero number of milliseconds")
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<NonZeroDuration> for Duration {
    fn from(d: NonZeroDuration) -> Duration {
        d.0
    }
}

/// The numbers the lifecycle runs by (SPEC §11). Every one is configurable; see
/// the `*_RANGE` constants for what [`Settings::check`] accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Delay between failed connection attempts (and between crashes, see SPEC §7).
    pub backoff: Backoff,
    /// Consecutive transient failures that make a remote server unreachable.
    pub unreachable_threshold: NonZeroU32,
    /// Pause between the stop and the start of a restart.
    pub restart_grace: Duration,
    /// Interval between health probes of a running server.
    pub health_check_interval: NonZeroDuration,
    /// How long one ping may take; carried in [`Effect::Ping`](crate::Effect::Ping).
    pub ping_timeout: NonZeroDuration,
    /// A ping answered more slowly than this makes a running server `degraded`
    /// (roster); below `ping_timeout`, or no answer could ever be slow.
    pub degraded_after: Duration,
    /// Failed pings in a row after which the session counts as lost.
    pub unhealthy_threshold: NonZeroU32,
    /// Uptime after which the crash count clears.
    pub stable_period: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backoff: Backoff::default(),
            unreachable_threshold: UNREACHABLE_THRESHOLD,
            restart_grace: RESTART_GRACE_PERIOD,
            health_check_interval: HEALTH_CHECK_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            degraded_after: DEGRADED_AFTER,
            unhealthy_threshold: UNHEALTHY_THRESHOLD,
            stable_period: STABLE_PERIOD,
        }
    }
}

/// A setting outside its documented range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SettingsError {
    /// The setting, as configuration files name it (`restart_grace`, ...).
    pub setting: &'static str,
    /// What is wrong, with the accepted range.
    pub message: String,
}

impl Settings {
    /// The default `degraded_after` for a `ping_timeout`: [`DEGRADED_AFTER`], or
    /// half the timeout when that is shorter, so that a configuration that only
    /// shortens `ping_timeout` stays valid.
    pub fn default_degraded_after(ping_timeout: NonZeroDuration) -> Duration {
        DEGRADED_AFTER.min(ping_timeout.get() / 2).max(DEGRADED_AFTER_MIN)
    }

    /// Checks every setting against its documented range.
    ///
    /// # Errors
    /// One [`SettingsError`] per setting out of range, in field order.
    pub fn check(&self) -> Result<(), Vec<SettingsError>> {
        let b = &self.backoff;
        let mut errors = Vec::new();
        let mut duration = |setting: &'static str, value: Duration, range: RangeInclusive<Duration>| {
            if !range.contains(&value) {
                errors.push(SettingsError { setting, message: out_of_range(&value, &range, |d| format_duration(*d)) });
            }
        };
        duration("initial_backoff", b.initial(), INITIAL_BACKOFF_RANGE);
        duration("max_backoff", b.max(), b.initial()..=MAX_BACKOFF_LIMIT.max(b.initial()));
        duration("restart_grace", self.restart_grace, RESTART_GRACE_RANGE);
        duration("health_check_interval", self.health_check_interval.get(), HEALTH_CHECK_INTERVAL_RANGE);
        duration("ping_timeout", self.ping_timeout.get(), PING_TIMEOUT_RANGE);
        duration("stable_period", self.stable_period, STABLE_PERIOD_RANGE);
        let below_ping_timeout = self.ping_timeout.get().saturating_sub(Duration::from_millis(1));
        if !(DEGRADED_AFTER_MIN..=below_ping_timeout).contains(&self.degraded_after) {
            errors.push(SettingsError {
                setting: "degraded_after",
                message: format!(
                    "must be at least {} and below ping_timeout ({}), got {}",
                    format_duration(DEGRADED_AFTER_MIN),
                    format_duration(self.ping_timeout.get()),
                    format_duration(self.degraded_after)
                ),
            });
        }
        if !MULTIPLIER_RANGE.contains(&b.multiplier()) {
            errors.push(SettingsError {
                setting: "backoff_multiplier",
                message: out_of_range(&b.multiplier(), &MULTIPLIER_RANGE, ToString::to_string),
            });
        }
        for (setting, value) in
            [("unreachable_threshold", self.unreachable_threshold), ("unhealthy_threshold", self.unhealthy_threshold)]
        {
            if !THRESHOLD_RANGE.contains(&value.get()) {
                errors.push(SettingsError {
                    setting,
                    message: out_of_range(&value.get(), &THRESHOLD_RANGE, ToString::to_string),
                });
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn out_of_range<T>(value: &T, range: &RangeInclusive<T>, show: impl Fn(&T) -> String) -> String {
    format!("must be between {} and {}, got {}", show(range.start()), show(range.end()), show(value))
}

/// `0s`, `200ms`, `30s`, `1.5s`, `10m`, `24h`: the shortest exact spelling.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}ns", d.as_nanos());
    }
    if d.subsec_millis() != 0 {
        return if d.as_secs() == 0 { format!("{ms}ms") } else { format!("{}s", d.as_secs_f64()) };
    }
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(s: &Settings) -> Vec<&'static str> {
        s.check().err().unwrap_or_default().into_iter().map(|e| e.setting).collect()
    }

    #[test]
    fn the_defaults_are_the_references_and_pass() {
        let s = Settings::default();
        assert_eq!(s.unreachable_threshold.get(), 3);
        assert_eq!(s.restart_grace, Duration::from_millis(200));
        assert_eq!(s.health_check_interval.get(), Duration::from_secs(30));
        assert_eq!(s.ping_timeout.get(), Duration::from_secs(10));
        assert_eq!(s.degraded_after, Duration::from_secs(5));
        assert_eq!(s.unhealthy_threshold.get(), 3);
        assert_eq!(s.stable_period, Duration::from_secs(300));
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn each_range_is_checked_on_both_sides_and_names_its_setting() {
        let ok = Settings::default();
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { restart_grace: Duration::from_secs(601), ..ok }, "restart_grace"),
            (Settings { health_check_interval: NonZeroDuration::from_millis(99), ..ok }, "health_check_interval"),
            (Settings { health_check_interval: NonZeroDuration::from_secs(86_401), ..ok }, "health_check_interval"),
            (
                Settings {
                    ping_timeout: NonZeroDuration::from_millis(99),
                    degraded_after: Duration::from_millis(1),
                    ..ok
                },
                "ping_timeout",
            ),
            (Settings { ping_timeout: NonZeroDuration::from_secs(601), ..ok }, "ping_timeout"),
            (Settings { stable_period: Duration::from_secs(7 * 86_400 + 1), ..ok }, "stable_period"),
            (Settings { degraded_after: Duration::ZERO, ..ok }, "degraded_after"),
            (Settings { degraded_after: Duration::from_secs(10), ..ok }, "degraded_after"),
            (Settings { ping_timeout: NonZeroDuration::from_secs(4), ..ok }, "degraded_after"),
            (Settings { unreachable_threshold: NonZeroU32::new(1001).unwrap(), ..ok }, "unreachable_threshold"),
            (Settings { unhealthy_threshold: NonZeroU32::new(1001).unwrap(), ..ok }, "unhealthy_threshold"),
            (
                Settings {
                    backoff: Backoff::new(Duration::from_secs(86_401), Duration::from_secs(86_402), 2.0).unwrap(),
                    ..ok
                },
                "initial_backoff max_backoff",
            ),
            (
                Settings {
                    backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(86_401), 2.0).unwrap(),
                    ..ok
                },
                "max_backoff",
            ),
            (
                Settings {
                    backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(2), 100.5).unwrap(),
                    ..ok
                },
                "backoff_multiplier",
            ),
        ];
        for (settings, setting) in cases {
            assert_eq!(errors(&settings), setting.split(' ').collect::<Vec<_>>(), "{settings:?}");
        }
        let edges = Settings {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_secs(86_400), 100.0).unwrap(),
            unreachable_threshold: NonZeroU32::new(1000).unwrap(),
            restart_grace: Duration::from_secs(600),
            health_check_interval: NonZeroDuration::from_millis(100),
            ping_timeout: NonZeroDuration::from_secs(600),
            degraded_after: Duration::from_millis(599_999),
            unhealthy_threshold: NonZeroU32::MIN,
            stable_period: Duration::ZERO,
        };
        assert_eq!(edges.check(), Ok(()), "the ends of every range are accepted");
        let other_ends = Settings {
            backoff: Backoff::new(Duration::from_secs(86_400), Duration::from_secs(86_400), 1.0).unwrap(),
            unreachable_threshold: NonZeroU32::MIN,
            restart_grace: Duration::ZERO,
            health_check_interval: NonZeroDuration::from_secs(86_400),
            ping_timeout: NonZeroDuration::from_millis(100),
            degraded_after: Duration::from_millis(1),
            unhealthy_threshold: NonZeroU32::new(1000).unwrap(),
            stable_period: Duration::from_secs(7 * 86_400),
        };
        assert_eq!(other_ends.check(), Ok(()), "and the other ends");
    }

    #[test]
    fn degraded_after_says_its_bound_and_defaults_below_a_short_ping_timeout() {
        let s = Settings { degraded_after: Duration::from_secs(12), ..Settings::default() };
        assert_eq!(
            s.check().unwrap_err()[0].to_string(),
            "degraded_after: must be at least 1ms and below ping_timeout (10s), got 12s"
        );
        let cases = [(10_000, 5_000), (11_000, 5_000), (4_000, 2_000), (100, 50), (1, 1)];
        for (timeout_ms, expected_ms) in cases {
            let timeout = NonZeroDuration::from_millis(timeout_ms);
            assert_eq!(Settings::default_degraded_after(timeout), Duration::from_millis(expected_ms), "{timeout_ms}");
        }
        for timeout_ms in [100, 101, 4_000, 9_999, 10_000, 600_000] {
            let ping_timeout = NonZeroDuration::from_millis(timeout_ms);
            let s = Settings {
                ping_timeout,
                degraded_after: Settings::default_degraded_after(ping_timeout),
                ..Settings::default()
            };
            assert_eq!(s.check(), Ok(()), "{timeout_ms}");
        }
    }

    #[test]
    fn the_caps_are_a_day_for_retry_after_and_a_year_for_any_delay() {
        assert_eq!(MAX_RETRY_AFTER, Duration::from_secs(86_400));
        assert_eq!(MAX_DELAY, Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn the_message_says_the_range_and_the_value() {
        let s = Settings { restart_grace: Duration::from_secs(3600), ..Settings::default() };
        let e = &s.check().unwrap_err()[0];
        assert_eq!(e.to_string(), "restart_grace: must be between 0s and 10m, got 1h");
    }

    #[test]
    fn durations_are_spelled_shortest_and_exact() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(200), "200ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_nanos(5), "5ns"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn a_zero_duration_is_not_a_non_zero_duration() {
        assert_eq!(NonZeroDuration::new(Duration::ZERO), None);
        assert_eq!(
            NonZeroDuration::new(Duration::from_nanos(1)).map(NonZeroDuration::get),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(Duration::from(NonZeroDuration::from_millis(7)), Duration::from_millis(7));
    }
}
