//! Helpers shared by roster's end-to-end tests (this package's and roster-cli's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A marker passed to every process a test starts (`--tag`), so that the test can
/// find them in `/proc`. Dropping it kills whatever still carries it, so that a
/// failing test leaves nothing behind either.
#[derive(Debug)]
pub struct Tag(String);

impl Tag {
    /// A tag unique to this process and call.
    pub fn new() -> Tag {
        static N: AtomicU64 = AtomicU64::new(0);
        Tag(format!("roster-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
    }

    /// The tag's text, to pass as `--tag`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Live processes (not zombies) whose command line carries the tag.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
                    .unwrap_or(true);
                !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == self.0.as_bytes())
            })
            .collect()
    }

    /// Waits (blocking the thread) up to `limit` for every tagged process to be
    /// gone; panics naming them if not.
    pub fn assert_gone_within(&self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < until, "processes left behind: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for Tag {
    fn default() -> Tag {
        Tag::new()
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill(pid);
        }
    }
}

/// SIGKILL to `pid` (as a crashing server would die).
pub fn kill(pid: u32) {
    send(pid, rustix::process::Signal::KILL);
}

/// SIGTERM to `pid` (as a service manager stops a daemon).
pub fn terminate(pid: u32) {
    send(pid, rustix::process::Signal::TERM);
}

/// SIGINT to `pid` (as Ctrl-C does).
pub fn interrupt(pid: u32) {
    send(pid, rustix::process::Signal::INT);
}

/// SIGHUP to `pid` (as a closed terminal does).
pub fn hang_up(pid: u32) {
    send(pid, rustix::process::Signal::HUP);
}

fn send(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        // ESRCH: it is gone already, which is what the caller wants.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Helpers shared by the benchmarks.
pub mod bench {
    use std::time::{Duration, Instant};

    use rmcp::RoleClient;
    use rmcp::ServiceExt;
    use rmcp::transport::IntoTransport;

    /// The release `roster-fixture`: [`release_bin`] of it.
    pub fn release_fixture(beside: &str) -> std::path::PathBuf {
        release_bin(beside, "roster-fixture")
    }

    /// The release binary `name` of roster-tests, built first or found up to
    /// date, in a target directory of its own (`fixture/` in the target
    /// directory of `beside`, a release binary). Its own: built with only its
    /// package's features, in the benchmarks' target directory it would replace
    /// the benchmarks' build of the shared dependencies, and the next benchmark
    /// would build them all again.
    pub fn release_bin(beside: &str, name: &str) -> std::path::PathBuf {
        let target = std::path::Path::new(beside)
            .parent()
            .and_then(std::path::Path::parent)
            .expect("a binary in <target>/release")
            .join("fixture");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "-p", "roster-tests", "--bin", name, "--target-dir"])
            .arg(&target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "{name} builds");
        target.join("release").join(name)
    }

    /// A child process, killed and reaped when dropped.
    #[derive(Debug)]
    pub struct Reaped(pub std::process::Child);

    impl std::ops::Deref for Reaped {
        type Target = std::process::Child;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl std::ops::DerefMut for Reaped {
        fn deref_mut(&mut self) -> &mut Self::Target {
            &mut self.0
        }
    }

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `fixture http SWITCHES...`, and the base URL it listens on.
    pub fn fixture_http(fixture: &std::path::Path, switches: &[&str]) -> (Reaped, String) {
        let args: Vec<&str> = std::iter::once("http").chain(switches.iter().copied()).collect();
        fixture_listening(fixture, &args)
    }

    /// `fixture ARGS...` in a mode that listens (`http`, `sse`, `tcp-pipe`), and
    /// the base URL it prints.
    pub fn fixture_listening(fixture: &std::path::Path, args: &[&str]) -> (Reaped, String) {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(fixture)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the fixture starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("a line");
        let base = line.trim().strip_prefix("listening on ").expect("the listening line").to_owned();
        (Reaped(child), base)
    }

    /// The median of `values` (the upper one for an even count).
    pub fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
        values.sort();
        values[values.len() / 2]
    }

    /// `1.23 ms`.
    pub fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    /// This process's resident set size, in KiB.
    pub fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// One initialize + ping + close of a bare rmcp client over the transport that
    /// `make` builds (its building is timed too).
    pub async fn bare_ping_cycle<T, E, A>(make: impl FnOnce() -> T) -> Duration
    where
        T: IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let t = Instant::now();
        let client = bare_config().serve(make()).await.expect("initialize");
        let request = rmcp::model::ClientRequest::PingRequest(rmcp::model::PingRequest::default());
        client.send_request(request).await.expect("ping");
        client.cancel().await.expect("close");
        t.elapsed()
    }

    /// What a bare client offers: the same protocol version as roster.
    fn bare_config() -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::default(),
            rmcp::model::Implementation::new("bare-bench", "0"),
        )
        .with_protocol_version(rmcp::model::ProtocolVersion::V_2025_11_25)
    }
}
