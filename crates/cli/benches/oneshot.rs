//! The one-shots as users run them, side by side in one run with a bare rmcp
//! client (`bare-mcp`, built as rmcp's examples build one) doing the same work:
//! whole processes, start to exit, and their peak RSS.
//!
//! Run: `cargo bench -p roster-cli --bench oneshot` (figures go to BENCHMARKS.md).

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roster_tests::bench::{median, ms};

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");
const ROUNDS: usize = 30;

/// A release binary of roster-tests.
fn sibling(name: &str) -> PathBuf {
    roster_tests::bench::release_bin(ROSTER, name)
}

fn run(program: &str, args: &[&str]) -> (Duration, bool) {
    let t = Instant::now();
    let status = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("runs");
    (t.elapsed(), status.success())
}

/// Peak RSS in KiB, from GNU time.
fn peak_rss(program: &str, args: &[&str]) -> u64 {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("time runs");
    String::from_utf8_lossy(&out.stderr).lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

struct Server(std::process::Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(fixture: &str, switches: &[&str]) -> Server {
    let mut child = Command::new(fixture)
        .arg("http")
        .args(switches)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fixture");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    let base = line.trim().strip_prefix("listening on ").expect("listening").to_owned();
    Server(child, format!("{base}/mcp"))
}

/// The official Python SDK's server (tests/benches/python/server.py), if Python
/// and the `mcp` package are there.
fn serve_python() -> Option<Server> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/benches/python/server.py");
    let importable = Command::new("python3").args(["-c", "import mcp.server.mcpserver"]).status().ok()?.success();
    if !importable {
        println!("(no Python SDK: `pip install mcp` to compare against its server)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child, format!("http://127.0.0.1:{port}/mcp"));
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

fn compare(label: &str, goal: &str, roster: &[&str], bare_bin: &str, bare: &[&str]) {
    let (mut r, mut b) = (Vec::new(), Vec::new());
    let _ = run(ROSTER, roster);
    let _ = run(bare_bin, bare);
    for _ in 0..ROUNDS {
        r.push(run(ROSTER, roster).0);
        b.push(run(bare_bin, bare).0);
    }
    let (r, b) = (median(r), median(b));
    let rss_r = median((0..5).map(|_| peak_rss(ROSTER, roster)).collect());
    let rss_b = median((0..5).map(|_| peak_rss(bare_bin, bare)).collect());
    println!(
        "{label}: roster {} vs bare rmcp {} (ratio {:.3}, goal {goal}); peak RSS roster {rss_r} KiB, bare {rss_b} KiB",
        ms(r),
        ms(b),
        r.as_secs_f64() / b.as_secs_f64()
    );
}

fn main() {
    let fixture = sibling("roster-fixture").display().to_string();
    let bare = sibling("bare-mcp").display().to_string();

    let mut roster_stdio = vec!["tools", "--"];
    roster_stdio.extend([fixture.as_str(), "stdio"]);
    let mut bare_stdio = vec!["tools", "--"];
    bare_stdio.extend([fixture.as_str(), "stdio"]);
    compare("tools over stdio (-- fixture)", "≤ 1.15x", &roster_stdio, &bare, &bare_stdio);

    let ok = serve(&fixture, &[]);
    compare("tools over Streamable HTTP", "≤ 1.2x", &["tools", &ok.1], &bare, &["tools", &ok.1]);

    if let Some(python) = serve_python() {
        compare(
            "tools over Streamable HTTP, Python SDK server",
            "≤ 1.2x",
            &["tools", &python.1],
            &bare,
            &["tools", &python.1],
        );
    }

    let locked = serve(&fixture, &["--unauthorized", "challenge"]);
    let (_, ok_exit) = run(ROSTER, &["ping", &locked.1]);
    assert!(!ok_exit, "a 401 is a failure");
    compare("ping against a 401 endpoint (roster exits 3)", "—", &["ping", &locked.1], &bare, &["ping", &locked.1]);
}
