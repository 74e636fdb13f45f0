//! Exponential backoff (SPEC §5), as pure arithmetic.
//!
//! `backoff(n) = min(initial × multiplier^(n−1), max)` for `n ≥ 1`; with the
//! defaults (30 s, ×2, 30 min) that is 30 s, 60 s, 120 s, 240 s, 480 s, 960 s,
//! then 1800 s forever. `backoff(0)` is zero: nothing has failed yet.
//!
//! Why this shape: a remote endpoint that is down for a deploy comes back
//! within seconds or minutes, one that is decommissioned never does; doubling
//! finds the first quickly and stops hammering the second. The cap bounds how
//! long a server that recovers stays unused.
//!
//! The policy never sleeps and never draws random numbers: [`Backoff::delay`]
//! takes the attempt number and, for jitter, a sample in `[0, 1)` chosen by the
//! caller. Jitter is off by default, so the sequence above is exact.
//!
//! # Jitter band
//! With jitter `j` (0 ≤ j ≤ 1) the delay is `base × (1 − j × unit)`, so it lies
//! in `[base × (1 − j), base]`: never above the un-jittered delay and never above
//! the cap. It spreads retries of many servers that failed together without ever
//! making one wait longer than the documented sequence.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `INITIAL_BACKOFF`: the delay after the first failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(30);
/// `MAX_BACKOFF`: the cap.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// `BACKOFF_MULTIPLIER`: the growth factor per failure.
pub const BACKOFF_MULTIPLIER: f64 = 2.0;

/// Why a [`Backoff`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    /// `initial` was zero.
    #[error("initial backoff must be greater than zero")]
    ZeroInitial,
    /// `max` was below `initial`.
    #[error("maximum backoff ({max:?}) must not be below the initial backoff ({initial:?})")]
    MaxBelowInitial {
        /// The initial delay given.
        initial: Duration,
        /// The cap given.
        max: Duration,
    },
    /// `multiplier` was below 1, NaN or infinite.
    #[error("backoff multiplier must be a finite number of at least 1, got {0}")]
    BadMultiplier(f64),
    /// `jitter` was outside `[0, 1]` or NaN.
    #[error("jitter must be between 0 and 1, got {0}")]
    BadJitter(f64),
}

/// A validated backoff policy. Build it with [`Backoff::new`]; the fields are private
/// so that an invalid policy cannot exist.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BackoffConfig", into = "BackoffConfig")]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for Backoff {
    /// 30 s, ×2, capped at 30 min, no jitter.
    fn default() -> Backoff {
        Backoff { initial: INITIAL_BACKOFF, max: MAX_BACKOFF, multiplier: BACKOFF_MULTIPLIER, jitter: 0.0 }
    }
}

impl Backoff {
    /// A policy without jitter.
    ///
    /// # Errors
    /// When `initial` is zero, `max < initial`, or `multiplier` is below 1 or not finite.
    pub fn new(initial: Duration, max: Duration, multiplier: f64) -> Result<Backoff, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(BackoffError::BadMultiplier(multiplier));
        }
        Ok(Backoff { initial, max, multiplier, jitter: 0.0 })
    }

    /// The same policy with jitter `j`: delays fall in `[base × (1 − j), base]`.
    ///
    /// # Errors
    /// When `j` is outside `[0, 1]` or NaN.
    pub fn with_jitter(self, j: f64) -> Result<Backoff, BackoffError> {
        if !(0.0..=1.0).contains(&j) {
            return Err(BackoffError::BadJitter(j));
        }
        Ok(Backoff { jitter: j, ..self })
    }

    /// The delay after the first failure.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The growth factor.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The jitter fraction (0 when off).
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The un-jittered delay after `attempt` consecutive failures: 0 for 0,
    /// `initial` for 1, then growing by `multiplier` up to `max`.
    ///
    /// Never panics or overflows for any `attempt`; non-decreasing in `attempt`;
    /// never above `max`; constant once capped.
    pub fn base(&self, attempt: u32) -> Duration {
        match attempt {
            0 => Duration::ZERO,
            1 => self.initial,
            n => {
                // f64 carries the growth. A factor too large for a Duration (or
                // infinite) fails the conversion and means "capped"; so does one above
                // the cap.
                let secs = self.initial.as_secs_f64() * self.multiplier.powf(f64::from(n - 1));
                Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.clamp(self.initial, self.max))
            }
        }
    }

    /// The delay to wait after `attempt` consecutive failures, with jitter applied
    /// from `unit`, a random sample in `[0, 1)` chosen by the caller (values outside
    /// are clamped). Without jitter `unit` is ignored and this equals [`Backoff::base`].
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let unit = if unit.is_nan() { 0.0 } else { unit.clamp(0.0, 1.0) };
        let factor = 1.0 - self.jitter * unit;
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).map_or(base, |d| d.min(base))
    }
}

/// The plain, unchecked form of a [`Backoff`], as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffConfig {
    initial_ms: u64,
    max_ms: u64,
    multiplier: f64,
    #[serde(default)]
    jitter: f64,
}

impl TryFrom<BackoffConfig> for Backoff {
    type Error = BackoffError;
    fn try_from(c: BackoffConfig) -> Result<Backoff, BackoffError> {
        Backoff::new(Duration::from_millis(c.initial_ms), Duration::from_millis(c.max_ms), c.multiplier)?
            .with_jitter(c.jitter)
    }
}

impl From<Backoff> for BackoffConfig {
    fn from(b: Backoff) -> BackoffConfig {
        BackoffConfig {
            initial_ms: u64::try_from(b.initial.as_millis()).unwrap_or(u64::MAX),
            max_ms: u64::try_from(b.max.as_millis()).unwrap_or(u64::MAX),
            multiplier: b.multiplier,
            jitter: b.jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn default_sequence_is_exact() {
        let b = Backoff::default();
        let got: Vec<Duration> = (1..=9).map(|n| b.delay(n, 0.7)).collect();
        assert_eq!(got, [S(30), S(60), S(120), S(240), S(480), S(960), S(1800), S(1800), S(1800)]);
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(100, 0.0), MAX_BACKOFF);
        assert_eq!(b.delay(u32::MAX, 0.0), MAX_BACKOFF);
    }

    #[test]
    fn jitter_follows_its_formula() {
        let b = Backoff::default().with_jitter(0.5).unwrap();
        assert_eq!(b.jitter(), 0.5);
        assert_eq!((b.initial(), b.max(), b.multiplier()), (INITIAL_BACKOFF, MAX_BACKOFF, BACKOFF_MULTIPLIER));
        // base × (1 − j × unit)
        assert_eq!(b.delay(1, 0.0), S(30));
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(22_500));
        assert_eq!(b.delay(2, 0.25), Duration::from_millis(52_500));
        assert_eq!(b.delay(1, 0.999_999), Duration::from_secs_f64(30.0 * (1.0 - 0.5 * 0.999_999)));
        // A sample outside [0, 1) is clamped; NaN counts as 0.
        assert_eq!(b.delay(1, 7.0), S(15));
        assert_eq!(b.delay(1, -3.0), S(30));
        assert_eq!(b.delay(1, f64::NAN), S(30));
        let full = Backoff::default().with_jitter(1.0).unwrap();
        assert_eq!(full.delay(3, 0.5), S(60));
    }

    #[test]
    fn constructor_rejects_invalid_policies() {
        assert_eq!(Backoff::new(Duration::ZERO, S(1), 2.0), Err(BackoffError::ZeroInitial));
        assert!(matches!(Backoff::new(S(2), S(1), 2.0), Err(BackoffError::MaxBelowInitial { .. })));
        for m in [0.99, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(Backoff::new(S(1), S(2), m), Err(BackoffError::BadMultiplier(_))), "{m}");
        }
        for j in [-0.1, 1.1, f64::NAN] {
            assert!(matches!(Backoff::default().with_jitter(j), Err(BackoffError::BadJitter(_))), "{j}");
        }
        assert!(Backoff::new(S(1), S(1), 1.0).is_ok());
    }

    #[test]
    fn reference_calculate_next_retry_time() {
        // muster TestCalculateNextRetryTime: 1 → initial, 2 → 2×, 3 → 4×, 4 → 8×, 100 → max.
        let b = Backoff::default();
        assert_eq!(b.base(1), INITIAL_BACKOFF);
        assert_eq!(b.base(2), INITIAL_BACKOFF * 2);
        assert_eq!(b.base(3), INITIAL_BACKOFF * 4);
        assert_eq!(b.base(4), INITIAL_BACKOFF * 8);
        assert_eq!(b.base(100), MAX_BACKOFF);
    }

    #[test]
    fn serde_validates() {
        let b: Backoff = serde_json::from_str(r#"{"initial_ms":1000,"max_ms":5000,"multiplier":1.5}"#).unwrap();
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(1500));
        assert!(serde_json::from_str::<Backoff>(r#"{"initial_ms":0,"max_ms":5000,"multiplier":1.5}"#).is_err());
        let round: Backoff = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(round, b);
    }

    prop_compose! {
        fn policy()(initial_ms in 1u64..=10_000_000, extra_ms in 0u64..=1_000_000_000, multiplier in prop_oneof![Just(1.0), 1.0f64..=16.0]) -> Backoff {
            Backoff::new(Duration::from_millis(initial_ms), Duration::from_millis(initial_ms + extra_ms), multiplier).unwrap()
        }
    }

    fn attempt() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..=64, any::<u32>(), Just(u32::MAX), Just(u32::MAX - 1)]
    }

    proptest! {
        #[test]
        fn never_panics_and_never_exceeds_the_cap(b in policy(), n in attempt(), unit in 0.0f64..1.0) {
            let d = b.delay(n, unit);
            prop_assert!(d <= b.max());
        }

        #[test]
        fn first_delay_is_initial(b in policy(), unit in 0.0f64..1.0) {
            prop_assert_eq!(b.delay(1, unit), b.initial());
        }

        #[test]
        fn non_decreasing(b in policy(), n in attempt()) {
            let n = n.min(u32::MAX - 1);
            prop_assert!(b.base(n) <= b.base(n + 1), "{:?} > {:?} at {}", b.base(n), b.base(n + 1), n);
        }

        #[test]
        fn at_least_initial_after_a_failure(b in policy(), n in 1u32..) {
            prop_assert!(b.base(n) >= b.initial());
        }

        #[test]
        fn constant_once_capped(b in policy(), n in attempt(), later in attempt()) {
            let (n, later) = (n.min(later), n.max(later));
            if b.base(n) == b.max() {
                prop_assert_eq!(b.base(later), b.max());
            }
        }

        #[test]
        fn grows_by_the_multiplier_until_capped(b in policy(), n in 1u32..=40) {
            let (this, next) = (b.base(n).as_secs_f64(), b.base(n + 1).as_secs_f64());
            if next < b.max().as_secs_f64() {
                let ratio = next / this;
                prop_assert!((ratio - b.multiplier()).abs() <= 1e-6 * b.multiplier(), "ratio {} vs {}", ratio, b.multiplier());
            }
        }

        #[test]
        fn jitter_stays_within_its_band(b in policy(), j in 0.0f64..=1.0, n in attempt(), unit in 0.0f64..1.0) {
            let jb = b.with_jitter(j).unwrap();
            let base = b.base(n);
            let d = jb.delay(n, unit);
            prop_assert!(d <= base);
            prop_assert!(d >= base.mul_f64(1.0 - j).saturating_sub(Duration::from_nanos(1)));
        }

        #[test]
        fn without_jitter_the_unit_is_ignored(b in policy(), n in attempt(), u1 in 0.0f64..1.0, u2 in 0.0f64..1.0) {
            prop_assert_eq!(b.delay(n, u1), b.delay(n, u2));
        }
    }
}
