//! Helpers: the fixture's path, process tags and the leftover check, settings
//! with short timings.

use std::time::{Duration, Instant};

use roster_core::{Backoff, ServerSpec, Settings};
use roster_supervisor::{SupervisorConfig, Transports};

/// The fixture binary built by cargo for these tests.
pub(crate) const FIXTURE: &str = env!("CARGO_BIN_EXE_roster-fixture");

/// Short backoff and grace so that tests of retries run in a second or two.
pub(crate) fn fast_settings() -> Settings {
    Settings {
        backoff: Backoff::new(Duration::from_millis(300), Duration::from_secs(2), 2.0).expect("valid backoff"),
        restart_grace: Duration::from_millis(100),
        ..Settings::default()
    }
}

pub(crate) fn fast_config() -> SupervisorConfig {
    SupervisorConfig {
        settings: fast_settings(),
        shutdown_timeout: Duration::from_secs(20),
        ..SupervisorConfig::default()
    }
}

pub(crate) use roster_tests::Tag;

/// What the e2e tests need of a tag beyond the shared helper.
pub(crate) trait TagExt {
    /// A stdio spec running the fixture with this tag and `switches`.
    fn stdio(&self, name: &str, switches: &[&str]) -> ServerSpec;
    /// Waits up to 2 s for every tagged process to be gone; panics naming them if
    /// not. (Blocking is fine: what is left dies by signal, not by this runtime.)
    async fn assert_gone(&self);
}

impl TagExt for Tag {
    fn stdio(&self, name: &str, switches: &[&str]) -> ServerSpec {
        let mut spec = ServerSpec::stdio(name, FIXTURE);
        spec.args = ["stdio", "--tag", self.as_str()].iter().chain(switches).map(|s| (*s).to_owned()).collect();
        spec
    }

    async fn assert_gone(&self) {
        self.assert_gone_within(Duration::from_secs(2));
    }
}

/// Every transport; only stdio is expected to be used.
pub(crate) fn stdio_transports() -> Transports {
    all_transports()
}

/// A definition, validated.
pub(crate) fn valid(spec: ServerSpec) -> roster_core::ValidSpec {
    spec.validated().expect("a valid definition")
}

/// Polls `f` every 10 ms until it returns true, at most `limit`.
pub(crate) async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A fixture serving HTTP or SSE in a child process, tagged; killed when dropped.
pub(crate) struct FixtureServer {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`
    pub(crate) base: String,
    pub(crate) port: u16,
    mode: &'static str,
    switches: Vec<String>,
    tag: String,
}

impl FixtureServer {
    /// Starts `roster-fixture MODE --tag TAG SWITCHES...` and waits until it listens.
    pub(crate) async fn start(tag: &Tag, mode: &'static str, switches: &[&str]) -> FixtureServer {
        FixtureServer::start_on(tag.as_str(), mode, switches.iter().map(|s| (*s).to_owned()).collect(), 0).await
    }

    async fn start_on(tag: &str, mode: &'static str, switches: Vec<String>, port: u16) -> FixtureServer {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(FIXTURE);
        cmd.arg(mode).arg("--tag").arg(tag).args(&switches).arg("--port").arg(port.to_string());
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("the fixture starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the fixture listens within 10 s")
            .expect("stdout readable")
            .expect("a first line");
        let base = line.strip_prefix("listening on ").expect("the listening line").to_owned();
        let port = base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        FixtureServer { child, base, port, mode, switches, tag: tag.to_owned() }
    }

    /// The MCP URL of this fixture: `/mcp` for HTTP, `/sse` for SSE.
    pub(crate) fn url(&self) -> String {
        match self.mode {
            "sse" => format!("{}/sse", self.base),
            _ => format!("{}/mcp", self.base),
        }
    }

    /// Kills the server and starts it again on the same port: every session is gone.
    pub(crate) async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let fresh = FixtureServer::start_on(&self.tag, self.mode, self.switches.clone(), self.port).await;
        *self = fresh;
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Every transport, the remote ones on one set of shared HTTP clients.
pub(crate) fn all_transports() -> Transports {
    let clients = roster_http::HttpClients::new(roster_http::HttpOptions::default()).expect("HTTP clients");
    Transports::new(
        std::sync::Arc::new(roster_transport_stdio::StdioConnector::new()),
        std::sync::Arc::new(roster_transport_http::HttpConnector::new(clients.clone())),
        std::sync::Arc::new(roster_transport_sse::SseConnector::new(clients)),
    )
}
