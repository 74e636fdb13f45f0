//! stdio benchmarks, all in one run so that ratios compare like with like.
//!
//! 1. start + ping + stop of the fixture through roster (`Service`) against a bare
//!    rmcp client doing the same (`TokioChildProcess`, ping, cancel).
//! 2. SIGKILL of a running server → the `MCPServerFailed` event.
//! 3. 100 stdio servers under one supervisor: time until all run, and RSS.
//!
//! Run: `cargo bench -p roster-tests --bench stdio` (figures go to BENCHMARKS.md).

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::transport::TokioChildProcess;
use roster_core::{Reason, ServerSpec, State, ValidSpec};
use roster_supervisor::{Received, Service, ServiceOptions, Supervisor, SupervisorConfig, Transports, Unsupported};
use roster_tests::bench::{bare_ping_cycle, median, ms, rss_kib};
use roster_transport_stdio::StdioConnector;

const FIXTURE: &str = env!("CARGO_BIN_EXE_roster-fixture");
const ROUNDS: usize = 50;

fn spec(name: &str) -> ValidSpec {
    let mut s = ServerSpec::stdio(name, FIXTURE);
    s.args = vec!["stdio".into()];
    s.validated().expect("a valid definition")
}

/// One start + ping + stop of a server roster already supervises (as `roster up`
/// or a host does: the service exists; the cycle is the lifecycle).
async fn roster_cycle(svc: &Service) -> Duration {
    let t = Instant::now();
    svc.start().await.expect("start");
    let report = svc.check_health().await;
    assert!(report.error.is_none(), "{report:?}");
    svc.stop().await;
    t.elapsed()
}

async fn bare_cycle() -> Duration {
    bare_ping_cycle(|| {
        let mut cmd = tokio::process::Command::new(FIXTURE);
        cmd.arg("stdio");
        TokioChildProcess::new(cmd).expect("spawn")
    })
    .await
}

async fn kill_to_failed() -> Duration {
    let svc = Service::new(spec("victim"), Arc::new(StdioConnector::new()), ServiceOptions::default());
    let mut events = svc.subscribe();
    svc.start().await.expect("start");
    while events.try_recv().is_some() {}
    let pid = svc.status().pid.expect("pid");
    roster_tests::kill(pid);
    let sent = Instant::now();
    loop {
        match events.recv().await {
            Some(Received::Event(e)) if e.event.reason == Some(Reason::Failed) => break,
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
    let took = sent.elapsed();
    svc.stop().await;
    took
}

/// Spawning alone: with a `pre_exec` hook (what the parent-death signal needs),
/// std must fork; without one it uses posix_spawn (vfork). The difference is most
/// of roster's overhead in the start+ping+stop cycle.
#[allow(unsafe_code)]
fn spawn_cost(with_hook: bool) -> Duration {
    use std::os::unix::process::CommandExt;
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.process_group(0);
        if with_hook {
            // SAFETY: an empty hook; nothing runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| Ok(()));
            }
        }
        let t = Instant::now();
        let mut child = cmd.spawn().expect("spawn /bin/true");
        times.push(t.elapsed());
        let _ = child.wait();
    }
    median(times)
}

async fn hundred_servers() -> (Duration, u64, u64) {
    let before = rss_kib();
    let transports = Transports::new(Arc::new(StdioConnector::new()), Arc::new(Unsupported), Arc::new(Unsupported));
    let sup = Supervisor::new(Arc::new(transports), SupervisorConfig::default());
    let specs: Vec<ValidSpec> = (0..100)
        .map(|i| {
            let mut s = spec(&format!("s{i:03}")).into_inner();
            s.auto_start = true;
            s.validated().expect("a valid definition")
        })
        .collect();
    let t = Instant::now();
    sup.apply(specs).await.expect("apply");
    while !sup.status().iter().all(|s| s.state == State::Running) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    let after = rss_kib();
    sup.shutdown().await;
    (took, before, after)
}

async fn cycles(flavor: &str) {
    let svc = Service::new(spec("bench"), Arc::new(StdioConnector::new()), ServiceOptions::default());
    // Warm up the page cache and the binary.
    let _ = roster_cycle(&svc).await;
    let _ = bare_cycle().await;
    let (mut roster, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        roster.push(roster_cycle(&svc).await);
        bare.push(bare_cycle().await);
    }
    let (r, b) = (median(roster), median(bare));
    println!(
        "start+ping+stop over stdio ({flavor} runtime), median of {ROUNDS}: roster {}, bare rmcp {}, ratio {:.3}",
        ms(r),
        ms(b),
        r.as_secs_f64() / b.as_secs_f64()
    );
}

async fn rest() {
    println!(
        "spawn alone: {} with a pre_exec hook (fork, needed for the parent-death signal), {} without (posix_spawn)",
        ms(spawn_cost(true)),
        ms(spawn_cost(false))
    );

    let mut kills = Vec::new();
    for _ in 0..ROUNDS {
        kills.push(kill_to_failed().await);
    }
    kills.sort();
    println!(
        "SIGKILL → MCPServerFailed, {ROUNDS} runs: median {}, p90 {}, max {}",
        ms(kills[ROUNDS / 2]),
        ms(kills[ROUNDS * 9 / 10]),
        ms(kills[ROUNDS - 1])
    );

    let (took, before, after) = hundred_servers().await;
    println!(
        "100 stdio servers: all running after {}; process RSS {} KiB before, {} KiB with 100 running (+{} KiB, {} KiB per server)",
        ms(took),
        before,
        after,
        after.saturating_sub(before),
        after.saturating_sub(before) / 100
    );
}

fn main() {
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    current.block_on(cycles("current-thread"));
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    multi.block_on(cycles("multi-thread (2 workers)"));
    drop(multi);
    current.block_on(rest());
}
