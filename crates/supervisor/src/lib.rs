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
//! Transports plug in through the ports of `roster-transport` (re-exported
//! here): a [`Connector`] opens a [`Session`]; [`Transports`] routes each
//! server to the adapter of its type.
//!
//! Time is this crate's own port, [`Clock`]: every timer of a service and of
//! the supervisor goes through it. [`TokioClock`], the default, follows tokio's
//! clock, so under `#[tokio::test(start_paused = true)]` the lifecycle sees
//! paused time move as a test advances it.

#![forbid(unsafe_code)]

pub mod events;
pub mod ports;
mod service;
mod supervisor;

pub use events::{Received, ServerEvent, Subscription};
pub use ports::{Clock, TokioClock};
pub use roster_transport::{BoxFuture, CloseError, Connector, Session, Transports, Unsupported};
pub use service::{AuthHook, HealthReport, Live, Observer, Service, ServiceGone, ServiceOptions, SessionId};
pub use supervisor::{
    Action, CONCURRENT_CONNECTS_RANGE, EVENT_BUFFER_RANGE, MAX_CONCURRENT_CONNECTS, Plan, SHUTDOWN_TIMEOUT_RANGE,
    ShutdownReport, Step, Supervisor, SupervisorConfig,
};
