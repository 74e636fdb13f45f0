//! The driver's own port: time.

use std::time::{Instant, SystemTime};

pub use roster_transport::BoxFuture;

/// Time as the driver sees it.
pub trait Clock: Send + Sync + 'static {
    /// The monotonic now, fed to the core.
    fn now(&self) -> Instant;
    /// The wall-clock now, for timestamps in events and status.
    fn wall(&self) -> SystemTime;
    /// Sleeps until `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;
}

/// tokio's clock: under `#[tokio::test(start_paused = true)]` the core sees
/// paused time move as the test advances it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)))
    }
}
