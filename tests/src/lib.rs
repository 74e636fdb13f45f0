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

fn send(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        // ESRCH: it is gone already, which is what the caller wants.
        let _ = rustix::process::kill_process(pid, signal);
    }
}
