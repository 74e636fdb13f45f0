//! A scrape of `/metrics` with 1,000 servers: `roster up --metrics` over 1,000
//! Streamable HTTP servers (all on one fixture process), once every one has
//! finished its first attempt (`/readyz`); the time of a whole scrape (connect,
//! request, the encoded text read to its end) and its size. Figures go to
//! BENCHMARKS.md.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roster_tests::bench::{Reaped, fixture_http, release_fixture};

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");
const SERVERS: usize = 1000;

fn get(port: u16, path: &str) -> (u16, usize) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("listening");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = Vec::new();
    stream.read_to_end(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    (status, body)
}

fn main() {
    let fixture = release_fixture(ROSTER);
    let (_server, base) = fixture_http(&fixture, &[]);
    let url = format!("{base}/mcp");
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from("[defaults]\nauto_start = true\nmax_concurrent_connects = 50\n\n");
    for i in 0..SERVERS {
        toml.push_str(&format!("[servers.r{i:04}]\nurl = {url:?}\n"));
    }
    let config = dir.path().join("roster.toml");
    std::fs::write(&config, toml).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _roster = Reaped(
        Command::new(ROSTER)
            .args(["--config", config.to_str().unwrap(), "up", "--no-watch", "--metrics", &format!("127.0.0.1:{port}")])
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || get(port, "/readyz").0 != 200 {
        assert!(Instant::now() < until, "not ready within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let (status, size) = get(port, "/metrics");
        times.push(t.elapsed());
        assert_eq!(status, 200);
        bytes = size;
    }
    times.sort();
    println!(
        "scrape of /metrics with {SERVERS} servers, median of 50: {:.2} ms (p90 {:.2} ms), {} KiB",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
        bytes / 1024
    );
}
