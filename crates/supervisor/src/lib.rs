//! # roster-supervisor: the tokio driver of roster
//!
//! `roster-core` decides; this crate acts. A [`Service`] is one task per server
//! that owns a [`roster_core::Lifecycle`], feeds it requests, port results and
//! timer ticks, and executes its effects in order. A [`Supervisor`] runs many
//! services by name, reconciles them from a whole configuration
//! ([`Supervisor::apply`]), publishes one numbered event stream
//! ([`Supervisor::subscribe`]), limits concurrent connects, and stops everything
//! on [`Supervisor::shutdown`].
//!
//! Transports plug in through the [ports](ports): a [`Connector`] opens a
//! [`Session`]. [`Transports`] dispatches on the server's type, so any adapter
//! can be swapped for a fake. With the `mock` feature, mockall mocks of the ports
//! (`MockConnector`, `MockSession`) are available.
//!
//! Time comes from [`TokioClock`]: under `#[tokio::test(start_paused = true)]`
//! the lifecycle sees paused time move as a test advances it.

#![forbid(unsafe_code)]

pub mod events;
pub mod mcp;
pub mod ports;
mod service;
mod supervisor;

pub use events::{Received, ServerEvent, Subscription};
pub use ports::{BoxFuture, Clock, CloseError, Connector, Session, TokioClock, Transports};
#[cfg(any(test, feature = "mock"))]
pub use ports::{MockConnector, MockSession};
pub use service::{AuthHook, HealthReport, Service, ServiceGone, ServiceOptions};
pub use supervisor::{Action, MAX_CONCURRENT_CONNECTS, Plan, ShutdownReport, Step, Supervisor, SupervisorConfig};
