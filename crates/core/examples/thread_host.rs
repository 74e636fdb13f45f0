//! A host that drives `roster-core` with no async runtime at all: one thread
//! loop, a channel for reports, and worker threads that execute the effects.
//!
//! The "server" is a simulated remote one whose behaviour is scripted: two
//! refused connections, then a session that answers pings until it dies, a
//! reconnect, and a stop. Everything the machine asks for is executed here: the
//! connects, pings and closes run on worker threads and report back with their
//! generation; the one timer is `recv_timeout` until `poll_timeout()`; publications
//! are printed; replies are dropped (nobody waits on them in this host).
//!
//! Run: `cargo run -p roster-core --example thread_host`

use std::num::NonZeroU32;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use roster_core::{
    Backoff, Effect, Event, Failure, Lifecycle, NonZeroDuration, ServerSpec, ServerType, Settings, State, ToolListing,
};

/// What the simulated server does on its n-th connection (from 0).
fn connect_outcome(attempt: u32) -> Result<(), Failure> {
    if attempt < 2 { Err(Failure::transient("connection refused (os error 111)")) } else { Ok(()) }
}

/// The session of the first successful connection answers this many pings, then dies.
const PINGS_BEFORE_DEATH: u32 = 3;

/// Runs `work` on a worker thread and sends its report to the loop.
fn run(reports: &Sender<Event>, work: impl FnOnce() -> Event + Send + 'static) {
    let reports = reports.clone();
    std::thread::spawn(move || {
        let _ = reports.send(work());
    });
}

#[expect(clippy::disallowed_methods, reason = "the host reads the clock; the core never does")]
fn now() -> Instant {
    Instant::now()
}

/// The simulated server's own slowness, on a worker thread (never in the core).
#[expect(clippy::disallowed_methods, reason = "the host's workers may block; the core never does")]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn main() {
    let settings = Settings {
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 2.0).expect("a valid backoff"),
        restart_grace: Duration::from_millis(50),
        health_check_interval: NonZeroDuration::from_millis(100),
        ping_timeout: NonZeroDuration::from_millis(100),
        unhealthy_threshold: NonZeroU32::MIN,
        ..Settings::default()
    };
    let spec = ServerSpec::remote("api", ServerType::StreamableHttp, "https://api.example/mcp");
    let mut server = Lifecycle::new(spec.validated().expect("a valid definition"), settings, 7);
    let (reports, inbox) = mpsc::channel::<Event>();
    let started = now();
    let (mut attempts, mut pings, mut sessions) = (0u32, 0u32, 0u32);
    let mut pending = vec![Event::StartRequested];

    loop {
        for event in pending.drain(..) {
            let transition = server.handle(now(), event);
            for effect in transition.effects {
                execute(effect, &reports, &mut attempts, &mut pings, &mut sessions, started);
            }
        }
        if server.state() == State::Disconnected {
            println!("{:>6} ms  done: the server is down by request", started.elapsed().as_millis());
            return;
        }
        // The machine's one timer: wait for a report, at most until its deadline.
        let wait = server.poll_timeout().map_or(Duration::from_secs(5), |t| t.saturating_duration_since(now()));
        match inbox.recv_timeout(wait) {
            Ok(report) => pending.push(report),
            Err(RecvTimeoutError::Timeout) => pending.push(Event::Timeout),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // After a reconnect the host decides it has seen enough.
        if sessions == 2 && server.is_healthy() {
            pending.push(Event::StopRequested);
        }
    }
}

fn execute(
    effect: Effect,
    reports: &Sender<Event>,
    attempts: &mut u32,
    pings: &mut u32,
    sessions: &mut u32,
    t0: Instant,
) {
    let at = t0.elapsed().as_millis();
    match effect {
        Effect::Connect { generation, timeout } => {
            let outcome = connect_outcome(*attempts);
            *attempts += 1;
            if outcome.is_ok() {
                *sessions += 1;
            }
            println!("{at:>6} ms  connect {generation} (within {} ms)", timeout.as_millis());
            run(reports, move || {
                pause(Duration::from_millis(20));
                match outcome {
                    Ok(()) => Event::ConnectSucceeded { generation },
                    Err(failure) => Event::ConnectFailed { generation, failure },
                }
            });
        }
        Effect::CancelConnect { generation } => println!("{at:>6} ms  abandon {generation}"),
        Effect::ListTools { generation, .. } => {
            run(reports, move || Event::ToolsListed { generation, listing: ToolListing::Listed { count: 3 } });
        }
        Effect::Ping { generation, .. } => {
            *pings += 1;
            let dies = *sessions == 1 && *pings > PINGS_BEFORE_DEATH;
            run(reports, move || {
                let sent = now();
                pause(Duration::from_millis(2));
                if dies {
                    Event::SessionLost { generation, failure: Failure::transient("connection reset by peer") }
                } else {
                    Event::PingSucceeded { generation, latency: now() - sent }
                }
            });
        }
        Effect::CloseSession { generation } => {
            println!("{at:>6} ms  close session {generation}");
            run(reports, move || {
                pause(Duration::from_millis(10));
                Event::SessionClosed { generation }
            });
        }
        Effect::CallAuthHook(challenge) => println!("{at:>6} ms  auth hook: {challenge:?}"),
        Effect::Publish(event) => {
            let reason = event.reason.map_or_else(String::new, |r| format!(" {r}"));
            let error = event.error.map_or_else(String::new, |e| format!(": {e}"));
            println!("{at:>6} ms  {} → {} ({}){reason}{error}", event.previous_state, event.state, event.health);
        }
        Effect::Reply(_) => {}
    }
}
