//! # roster-transport: the ports roster's transports plug into
//!
//! A transport adapter implements [`Connector`] (open a session) and [`Session`]
//! (ping it, notice its death, close it). Adapters translate and classify; they
//! never sleep between attempts, retry or count: the core decides all of that.
//! roster's own adapters (`roster-transport-stdio`, `-http`, `-sse`) are siblings
//! that depend on this crate alone among roster's crates besides `roster-core`,
//! and so can a host's own transport: the driver (`roster-supervisor`) and the
//! one-shots of the command line use nothing but these ports.
//!
//! [`Transports`] routes each server to the adapter of its type; all three are
//! given when it is built, so a missing one is a compile error, not a failure at
//! run time. [`mcp`] holds the MCP client plumbing every adapter shares. With the
//! `mock` feature, mockall mocks of the ports (`MockConnector`, `MockSession`) are
//! available.

#![forbid(unsafe_code)]

pub mod mcp;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmcp::RoleClient;
use rmcp::service::{Peer, ServiceError};
use roster_core::{Failure, ServerSpec, ServerType, ToolListing};

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

    /// Ends the session now, without grace: for stdio, every process of the
    /// server is killed at once. A [`Session::close`] in progress then ends
    /// quickly. The default does nothing: a remote session has nothing to kill.
    fn kill(&self) {}

    /// The rmcp client peer, for listing and calling tools.
    fn peer(&self) -> Option<Peer<RoleClient>>;

    /// Lists the server's tools (every page) within `timeout`, if its
    /// `initialize` result offers tools; the driver does this once after every
    /// start (SPEC, roster: "healthy with no tools"). The default asks through
    /// [`Session::peer`]; a session without a peer offers no tools.
    async fn list_tools(&self, timeout: Duration) -> ToolListing {
        let Some(peer) = self.peer() else { return ToolListing::NotOffered };
        if peer.peer_info().is_none_or(|info| info.capabilities.tools.is_none()) {
            return ToolListing::NotOffered;
        }
        match tokio::time::timeout(timeout, peer.list_all_tools()).await {
            Ok(Ok(tools)) => ToolListing::Listed { count: tools.len() },
            Ok(Err(e)) => ToolListing::Failed(self.classify(&e)),
            Err(_) => ToolListing::Failed(Failure::transient(format!(
                "no answer to tools/list within {}",
                roster_core::lifecycle::format_duration(timeout)
            ))),
        }
    }

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

/// A [`Connector`] for every server type: each server goes to the adapter of its
/// type. All three adapters are given to [`Transports::new`], so forgetting one is
/// a compile error; a host that does not offer a type says so explicitly with
/// [`Unsupported`].
#[derive(Clone)]
pub struct Transports {
    stdio: Arc<dyn Connector>,
    streamable_http: Arc<dyn Connector>,
    sse: Arc<dyn Connector>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").finish_non_exhaustive()
    }
}

impl Transports {
    /// The adapters for `stdio`, `streamable-http` and `sse` servers.
    pub fn new(stdio: Arc<dyn Connector>, streamable_http: Arc<dyn Connector>, sse: Arc<dyn Connector>) -> Transports {
        Transports { stdio, streamable_http, sse }
    }

    /// The same, with the adapter for `server_type` replaced (a fake, in tests).
    #[must_use]
    pub fn with(mut self, server_type: ServerType, connector: Arc<dyn Connector>) -> Transports {
        *match server_type {
            ServerType::Stdio => &mut self.stdio,
            ServerType::StreamableHttp => &mut self.streamable_http,
            ServerType::Sse => &mut self.sse,
        } = connector;
        self
    }

    /// The adapter for `server_type`.
    pub fn get(&self, server_type: ServerType) -> &Arc<dyn Connector> {
        match server_type {
            ServerType::Stdio => &self.stdio,
            ServerType::StreamableHttp => &self.streamable_http,
            ServerType::Sse => &self.sse,
        }
    }
}

#[async_trait]
impl Connector for Transports {
    async fn connect(&self, spec: &ServerSpec, deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        self.get(spec.server_type).connect(spec, deadline).await
    }
}

/// A [`Connector`] for a type a host does not offer: every connect fails
/// permanently, naming the type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsupported;

#[async_trait]
impl Connector for Unsupported {
    async fn connect(&self, spec: &ServerSpec, _deadline: Instant) -> Result<Box<dyn Session>, Failure> {
        Err(Failure::permanent(format!("{} servers are not supported here", spec.server_type)))
    }
}
