//! Throughput of `Lifecycle::handle` over a realistic event mix.
//!
//! A tiny in-memory driver plays 64 servers (half stdio, half remote) for a
//! simulated day: starts, health probes every 30 s (2 % of pings fail), connect
//! failures (5 %) with retries, crashes (1 per 2,000 pings), restarts and stops.
//! Every event is answered the way a real driver would. The figure is events fed
//! to `handle` per second; the driver's own bookkeeping is counted against it.
//!
//! Run: `cargo bench -p roster-core --bench handle`

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roster_core::{Effect, Event, Failure, Lifecycle, ServerSpec, ServerType, Settings, ToolListing};

const SERVERS: usize = 64;
const EVENTS: u64 = 100_000;

struct Sim {
    servers: Vec<Lifecycle>,
    inbox: Vec<(usize, Event)>,
    now: Instant,
    rng: fastrand::Rng,
}

impl Sim {
    #[expect(clippy::disallowed_methods, reason = "the bench needs a base instant")]
    fn new() -> Sim {
        let servers = (0..SERVERS)
            .map(|i| {
                let spec = if i % 2 == 0 {
                    ServerSpec::stdio(format!("s{i}"), "server")
                } else {
                    ServerSpec::remote(format!("r{i}"), ServerType::StreamableHttp, "https://example.com/mcp")
                };
                Lifecycle::new(spec.validated().expect("a valid definition"), Settings::default(), i as u64)
            })
            .collect();
        let inbox = (0..SERVERS).map(|i| (i, Event::StartRequested)).collect();
        Sim { servers, inbox, now: Instant::now(), rng: fastrand::Rng::with_seed(42) }
    }

    /// Feeds `n` events and returns how many were fed.
    fn run(&mut self, n: u64) -> u64 {
        let mut fed = 0;
        while fed < n {
            if let Some((i, ev)) = self.inbox.pop() {
                let t = self.servers[i].handle(self.now, ev);
                fed += 1;
                for effect in t.effects {
                    self.answer(i, effect);
                }
                continue;
            }
            // Nothing queued: jump to the earliest deadline (the driver's timer).
            let next = self.servers.iter().enumerate().filter_map(|(i, s)| s.poll_timeout().map(|t| (t, i))).min();
            match next {
                Some((t, i)) => {
                    self.now = self.now.max(t);
                    self.inbox.push((i, Event::Timeout));
                    // Now and then an operator restarts or stops a server.
                    match self.rng.u32(0..5000) {
                        0 => self.inbox.push((i, Event::RestartRequested)),
                        1 => {
                            self.inbox.push((i, Event::StopRequested));
                            self.inbox.push((i, Event::StartRequested));
                        }
                        _ => {}
                    }
                }
                None => self.inbox.extend((0..SERVERS).map(|i| (i, Event::StartRequested))),
            }
        }
        fed
    }

    fn answer(&mut self, i: usize, effect: Effect) {
        let roll = self.rng.u32(0..10_000);
        let reply = match effect {
            Effect::Connect { generation, .. } if roll < 500 => {
                Event::ConnectFailed { generation, failure: Failure::transient("connection refused") }
            }
            Effect::Connect { generation, .. } => Event::ConnectSucceeded { generation },
            Effect::CloseSession { generation } => Event::SessionClosed { generation },
            Effect::Ping { generation, .. } if roll < 5 => {
                Event::SessionLost { generation, failure: Failure::transient("process exited") }
            }
            Effect::Ping { generation, .. } if roll < 200 => {
                Event::PingFailed { generation, failure: Failure::transient("timed out") }
            }
            Effect::Ping { generation, .. } => Event::PingSucceeded { generation, latency: Duration::from_millis(2) },
            Effect::ListTools { generation, .. } => {
                Event::ToolsListed { generation, listing: ToolListing::Listed { count: 12 } }
            }
            Effect::CancelConnect { .. } | Effect::CallAuthHook(_) | Effect::Publish(_) | Effect::Reply(_) => return,
        };
        self.now += Duration::from_millis(3);
        self.inbox.push((i, reply));
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("handle_realistic_mix", |b| {
        b.iter_batched_ref(Sim::new, |sim| black_box(sim.run(EVENTS)), criterion::BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
