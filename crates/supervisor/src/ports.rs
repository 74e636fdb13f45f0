//! The ports: where transports and time plug into the driver.
//!
//! A transport adapter implements [`Connector`] (open a session) and [`Session`]
//! (ping it, notice its death, close it). Adapters translate and classify; they
//! never sleep, retry or count: the core decides all of that.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rmcp::RoleClient;
use rmcp::service::{Peer, ServiceError};
use roster_core::{Failure, ServerSpec, ServerType};

/// Opens sessions to MCP servers.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Connects to `spec` and completes the MCP handshake before `deadline`.
    ///
    /// # Errors
    /// A [`Failure`] classified from the transport's own error types. Dropping the
    /// returned future must abandon the attempt and release what it holds (a
    /// spawned process must die).
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure>;
}

/// A live, initialized MCP session.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Session: Send + Sync + 'static {
    /// Sends an MCP `ping` and waits at most `timeout` for the answer.
    ///
    /// # Errors
    /// The classified failure (a timeout is transient).
    async fn ping(&self, timeout: Duration) -> Result<(), Failure>;

    /// A future that resolves when the transport dies by itself (process exited,
    /// stream ended, session lost), with the cause. It never resolves for a healthy
    /// session; after [`Session::close`] it may or may not resolve. It owns what it
    /// needs (`'static`), so the driver can watch it beside every other call.
    fn closed(&self) -> BoxFuture<Failure>;

    /// Closes the session gracefully and within a bound of the adapter's own
    /// (for stdio: the whole process group). Whatever happens, the session is
    /// unusable afterwards.
    ///
    /// # Errors
    /// What went wrong while closing; the driver logs it and carries on.
    async fn close(&self) -> Result<(), CloseError>;

    /// The rmcp client peer, for listing and calling tools.
    fn peer(&self) -> Option<Peer<RoleClient>>;

    /// Classifies the failure of a request made through [`Session::peer`], by the
    /// adapter's own rules (a 401 in the middle of a session is auth required).
    fn classify(&self, error: &ServiceError) -> Failure {
        Failure::transient(error.to_string())
    }

    /// The server's process id, for stdio.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// The last lines the server wrote to stderr, for stdio.
    fn stderr_tail(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A boxed, sendable, owning future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Something went wrong while closing a session. Logged, never returned to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CloseError(pub String);

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

/// A [`Connector`] that dispatches on the server's type, so that any adapter can be
/// swapped for a fake. A type without an adapter fails permanently.
#[derive(Clone, Default)]
pub struct Transports {
    stdio: Option<std::sync::Arc<dyn Connector>>,
    streamable_http: Option<std::sync::Arc<dyn Connector>>,
    sse: Option<std::sync::Arc<dyn Connector>>,
}

impl Transports {
    /// No adapters.
    pub fn new() -> Transports {
        Transports::default()
    }

    /// Uses `connector` for servers of `server_type`.
    #[must_use]
    pub fn with(mut self, server_type: ServerType, connector: std::sync::Arc<dyn Connector>) -> Transports {
        *self.slot(server_type) = Some(connector);
        self
    }

    fn slot(&mut self, server_type: ServerType) -> &mut Option<std::sync::Arc<dyn Connector>> {
        match server_type {
            ServerType::Stdio => &mut self.stdio,
            ServerType::StreamableHttp => &mut self.streamable_http,
            ServerType::Sse => &mut self.sse,
        }
    }

    fn get(&self, server_type: ServerType) -> Option<&std::sync::Arc<dyn Connector>> {
        match server_type {
            ServerType::Stdio => self.stdio.as_ref(),
            ServerType::StreamableHttp => self.streamable_http.as_ref(),
            ServerType::Sse => self.sse.as_ref(),
        }
    }
}

#[async_trait]
impl Connector for Transports {
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        match self.get(spec.server_type) {
            Some(connector) => connector.connect(spec, deadline).await,
            None => Err(Failure::permanent(format!("no transport for {} servers in this build", spec.server_type))),
        }
    }
}
