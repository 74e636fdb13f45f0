//! A scrape of `/metrics` with 1,000 servers: `roster up --metrics` over 1,000
//! Streamable HTTP servers (on one fixture process), once every one has
//! finished its first attempt (`/readyz`) and been pinged; the time of a whole
//! scrape (connect, request, the encoded text read to its end) and its size,
//! with the servers pinged every 30 s (the default) and every second; then the
//! CPU that counting costs, with pings every second. Figures go to
//! BENCHMARKS.md. With the argument `scrape`, only the scrapes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roster_tests::bench::{Reaped, fixture_http, release_fixture};

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");
const SERVERS: usize = 1000;

fn get(port: u16, path: &str) -> (u16, usize) {
    get_into(port, path, &mut Vec::new())
}

/// GET `path`: the status and the body's length. The response is read into
/// `text` (cleared first): a buffer kept across scrapes, so what is timed is
/// roster's answer, not this reader growing its buffer.
fn get_into(port: u16, path: &str, text: &mut Vec<u8>) -> (u16, usize) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("listening");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    text.clear();
    stream.read_to_end(text).unwrap();
    let head_end = text.windows(4).position(|w| w == b"\r\n\r\n").map_or(text.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&text[..head_end]);
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.len() - head_end)
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process lives");
    // Fields after the command's closing parenthesis: state is the 3rd, utime the 14th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `roster up` over `SERVERS` servers at `url` (pinged every `interval`), with
/// metrics on `metrics` if given; returns once every server had its first attempt.
fn roster_up(url: &str, dir: &std::path::Path, interval: &str, metrics: Option<u16>) -> Reaped {
    let mut toml = format!(
        "[defaults]\nauto_start = true\nmax_concurrent_connects = 50\nhealth_check_interval = {interval:?}\n\n"
    );
    for i in 0..SERVERS {
        toml.push_str(&format!("[servers.r{i:04}]\nurl = {url:?}\n"));
    }
    let config = dir.join("roster.toml");
    std::fs::write(&config, toml).unwrap();
    let mut args = vec!["--config".to_owned(), config.to_str().unwrap().to_owned(), "up".into(), "--no-watch".into()];
    if let Some(port) = metrics {
        args.extend(["--metrics".to_owned(), format!("127.0.0.1:{port}")]);
    }
    let roster = Reaped(
        Command::new(ROSTER)
            .args(&args)
            .env("XDG_RUNTIME_DIR", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(120);
    let ready = || match metrics {
        Some(port) => TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/readyz").0 == 200,
        // Without metrics: the status of every server says it has had an attempt.
        None => {
            let out = Command::new(ROSTER)
                .args(["--json", "--config", config.to_str().unwrap(), "status"])
                .env("XDG_RUNTIME_DIR", dir)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success() && text.matches("\"state\":\"connected\"").count() == SERVERS
        }
    };
    while !ready() {
        assert!(Instant::now() < until, "not ready within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    roster
}

/// The number of servers pinged at least once, read from a scrape.
fn pinged(port: u16) -> usize {
    let mut text = Vec::new();
    get_into(port, "/metrics", &mut text);
    text.split(|&b| b == b'\n').filter(|l| l.starts_with(b"roster_server_ping_latency_seconds_count{")).count()
}

/// Once every server has been pinged, `n` scrapes `gap` apart.
///
/// A scrape encodes again only the families that changed since the last one.
/// With pings every second about 100 land between two of the 50, so the ping
/// families (about 14,000 of the 47,000 lines) are encoded again each time; at
/// 30 s they come in bursts (each server's interval runs from its connect, and
/// they connected together), so most of the 50 find nothing changed but the
/// state gauges read at every scrape. With pings every second and scrapes
/// 1.5 s apart, every server has been pinged since the scrape before: the ping
/// parts of all of them are encoded again each time.
fn scrapes(port: u16, interval: &str, n: usize, gap: Duration) {
    let until = Instant::now() + Duration::from_secs(90);
    while pinged(port) < SERVERS {
        assert!(Instant::now() < until, "every server pinged within 90 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut bytes = 0;
    let mut times = Vec::new();
    let mut buffer = Vec::with_capacity(4 << 20);
    for _ in 0..n {
        std::thread::sleep(gap);
        let t = Instant::now();
        let (status, size) = get_into(port, "/metrics", &mut buffer);
        times.push(t.elapsed());
        assert_eq!(status, 200);
        bytes = size;
    }
    times.sort();
    println!(
        "scrape of /metrics with {SERVERS} servers pinged every {interval}, median of {n} {} ms apart: \
         {:.2} ms (p90 {:.2} ms), {} KiB",
        gap.as_millis(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
        bytes / 1024,
    );
}

fn main() {
    let fixture = release_fixture(ROSTER);

    // 1. Scrapes, with every server connected and pinged once (the ping
    // histograms filled): at the default 30 s interval, then every second,
    // and every second with scrapes far enough apart that each finds every
    // server pinged since the one before.
    // Each run has a fixture of its own: one that still holds the sessions of
    // an earlier run (and their streams) would be slower.
    let often = Duration::from_millis(100);
    for (interval, n, gap) in [("30s", 50, often), ("1s", 50, often), ("1s", 20, Duration::from_millis(1500))] {
        let (_server, base) = fixture_http(&fixture, &[]);
        let url = format!("{base}/mcp");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let roster = roster_up(&url, dir.path(), interval, Some(port));
        scrapes(port, interval, n, gap);
        drop(roster);
    }
    // `cargo bench -p roster-cli --bench metrics -- scrape` stops here.
    if std::env::args().skip(1).any(|a| a == "scrape") {
        return;
    }

    // 2. What counting costs: the CPU of `up` over 1,000 servers pinged every
    // second, with and without --metrics (scraped every 15 s), over the same 30 s,
    // alternated twice (run-to-run noise is of the order of the difference).
    const SECS: u64 = 30;
    let mut cpu = Vec::new();
    for with_metrics in [false, true, false, true] {
        let (_server, base) = fixture_http(&fixture, &[]);
        let url = format!("{base}/mcp");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let roster = roster_up(&url, dir.path(), "1s", with_metrics.then_some(port));
        std::thread::sleep(Duration::from_secs(3));
        let before = cpu_ticks(roster.0.id());
        // Scraped every 15 s, as a Prometheus would: the refresh ahead of the
        // scrapes and the scrapes themselves are part of what counting costs.
        for _ in 0..SECS / 15 {
            std::thread::sleep(Duration::from_secs(15));
            if with_metrics {
                assert_eq!(get(port, "/metrics").0, 200);
            }
        }
        let ticks = cpu_ticks(roster.0.id()) - before;
        cpu.push(ticks as f64 / 100.0 / SECS as f64);
        if with_metrics {
            let (_, size) = get(port, "/metrics");
            println!("after the run, /metrics is {} KiB", size / 1024);
        }
        drop(roster);
    }
    let (without, with) = ((cpu[0] + cpu[2]) / 2.0, (cpu[1] + cpu[3]) / 2.0);
    println!(
        "1,000 servers pinged every second: {without:.3} cores without --metrics ({:.3}, {:.3}), \
         {with:.3} with ({:.3}, {:.3}): {:+.1} %",
        cpu[0],
        cpu[2],
        cpu[1],
        cpu[3],
        (with / without - 1.0) * 100.0
    );
}
