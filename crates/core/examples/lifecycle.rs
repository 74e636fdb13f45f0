//! Walks a remote and a stdio server through roster's lifecycle on a simulated
//! clock, printing every transition with its effects.
//!
//! The remote server fails to connect (transient), backs off, becomes
//! unreachable, answers 401, recovers after a definition change and is stopped.
//! The stdio server starts, crashes twice (once recovered at once, once after
//! backoff), gets a new argument (restart) and is stopped.
//!
//! Run: `cargo run -p roster-core --example lifecycle`

use std::time::{Duration, Instant};

use roster_core::{
    Challenge, Effect, Event, Failure, Generation, Lifecycle, ServerSpec, ServerType, Settings, Transition,
};

struct Demo {
    t0: Instant,
    now: Instant,
}

impl Demo {
    fn feed(&mut self, server: &mut Lifecycle, event: Event) -> Transition {
        let label = describe(&event);
        let t = server.handle(self.now, event);
        let at = self.now - self.t0;
        let arrow = if t.from == t.to { format!("{}", t.to) } else { format!("{} → {}", t.from, t.to) };
        println!("{:>9.3}s  {:<4} {:<34} {}", at.as_secs_f64(), server.spec().name, label, arrow);
        for effect in &t.effects {
            println!("{:>16}↳ {}", "", effect_text(effect));
        }
        if let Some(next) = server.next_retry_after() {
            println!("{:>16}  next retry at {:.3}s", "", (next - self.t0).as_secs_f64());
        }
        t
    }

    /// Moves the clock to the server's next deadline and fires it.
    fn wait(&mut self, server: &mut Lifecycle) -> Transition {
        let at = server.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.feed(server, Event::Timeout)
    }

    fn pass(&mut self, d: Duration) {
        self.now += d;
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::StartRequested => "start requested".into(),
        Event::StopRequested => "stop requested".into(),
        Event::RestartRequested => "restart requested".into(),
        Event::HealthCheckRequested => "health check requested".into(),
        Event::ConnectSucceeded { generation } => format!("connect {generation} succeeded"),
        Event::ConnectFailed { generation, failure } => format!("connect {generation} failed ({})", failure.kind()),
        Event::SessionLost { generation, failure } => {
            format!("session {generation} lost ({})", failure.kind())
        }
        Event::SessionClosed { generation } => format!("session {generation} closed"),
        Event::PingSucceeded { generation, latency } => format!("ping {generation} ok in {} ms", latency.as_millis()),
        Event::ToolsListed { generation, listing } => format!("tools of {generation}: {listing:?}"),
        Event::PingFailed { generation, .. } => format!("ping {generation} failed"),
        Event::SpecChanged(_) => "definition changed".into(),
        Event::Timeout => "timer".into(),
    }
}

fn effect_text(effect: &Effect) -> String {
    match effect {
        Effect::Connect { generation, timeout } => format!("connect {generation} within {}s", timeout.as_secs()),
        Effect::CancelConnect { generation } => format!("cancel attempt {generation}"),
        Effect::CloseSession { generation } => format!("close session {generation}"),
        Effect::Ping { generation, timeout } => format!("ping {generation} within {}s", timeout.as_secs()),
        Effect::ListTools { generation, timeout } => {
            format!("list the tools of {generation} within {}s", timeout.as_secs())
        }
        Effect::CallAuthHook(c) => {
            format!("call auth hook (resource_metadata: {})", c.resource_metadata.as_deref().unwrap_or("none"))
        }
        Effect::Publish(e) => {
            let what = e.reason.map_or_else(|| "state".to_owned(), |r| r.to_string());
            let error = e.error.as_deref().map(|x| format!(": {x}")).unwrap_or_default();
            format!("publish {what} [{}/{}]{error}", e.state, e.health)
        }
        Effect::Reply(r) => format!("reply {r:?}"),
    }
}

fn connect_of(t: &Transition) -> Generation {
    t.effects
        .iter()
        .find_map(|e| match e {
            Effect::Connect { generation, .. } => Some(*generation),
            Effect::CancelConnect { .. }
            | Effect::CloseSession { .. }
            | Effect::Ping { .. }
            | Effect::ListTools { .. }
            | Effect::CallAuthHook(_)
            | Effect::Publish(_)
            | Effect::Reply(_) => None,
        })
        .expect("a connect effect")
}

#[expect(clippy::disallowed_methods, reason = "the example needs a base instant for its simulated clock")]
fn main() {
    let t0 = Instant::now();
    let mut demo = Demo { t0, now: t0 };

    println!("— a remote server: failures, backoff, unreachable, 401, recovery, stop —");
    let mut api = Lifecycle::new(
        ServerSpec::remote("api", ServerType::StreamableHttp, "https://api.example/mcp").validated().expect("valid"),
        Settings::default(),
        1,
    );
    let mut g = connect_of(&demo.feed(&mut api, Event::StartRequested));
    for _ in 0..3 {
        demo.pass(Duration::from_millis(40));
        let failure = Failure::transient("connection refused (os error 111)");
        let _ = demo.feed(&mut api, Event::ConnectFailed { generation: g, failure });
        if !api.is_unreachable() {
            g = connect_of(&demo.wait(&mut api));
        }
    }
    g = connect_of(&demo.wait(&mut api));
    demo.pass(Duration::from_millis(30));
    let challenge = Challenge::parse(
        r#"Bearer realm="api", resource_metadata="https://api.example/.well-known/oauth-protected-resource""#,
    );
    let _ = demo.feed(
        &mut api,
        Event::ConnectFailed { generation: g, failure: Failure::needs_credentials(challenge, "HTTP 401 Unauthorized") },
    );
    let mut spec = api.spec().clone();
    spec.headers.insert("Authorization".into(), "Bearer <token from login>".into());
    g = connect_of(&demo.feed(&mut api, Event::SpecChanged(Box::new(spec.validated().expect("a valid definition")))));
    demo.pass(Duration::from_millis(80));
    let _ = demo.feed(&mut api, Event::ConnectSucceeded { generation: g });
    let _ = demo.wait(&mut api);
    demo.pass(Duration::from_millis(2));
    let _ = demo.feed(&mut api, Event::PingSucceeded { generation: g, latency: Duration::from_millis(3) });
    let _ = demo.feed(&mut api, Event::StopRequested);
    demo.pass(Duration::from_millis(5));
    let _ = demo.feed(&mut api, Event::SessionClosed { generation: g });

    println!();
    println!("— a stdio server: crash, crash again, definition change, stop —");
    demo.t0 = demo.now;
    let mut fs = Lifecycle::new(
        ServerSpec::stdio("fs", "mcp-server-filesystem").validated().expect("valid"),
        Settings::default(),
        2,
    );
    let mut g = connect_of(&demo.feed(&mut fs, Event::StartRequested));
    demo.pass(Duration::from_millis(120));
    let _ = demo.feed(&mut fs, Event::ConnectSucceeded { generation: g });
    for _ in 0..2 {
        demo.pass(Duration::from_secs(4));
        let failure = Failure::transient("process exited with exit status: 1; stderr: Error: EACCES /data");
        let _ = demo.feed(&mut fs, Event::SessionLost { generation: g, failure });
        // Recovery waits until nothing of the old process is left.
        demo.pass(Duration::from_millis(10));
        let _ = demo.feed(&mut fs, Event::SessionClosed { generation: g });
        g = connect_of(&demo.wait(&mut fs));
        demo.pass(Duration::from_millis(110));
        let _ = demo.feed(&mut fs, Event::ConnectSucceeded { generation: g });
    }
    let mut spec = fs.spec().clone();
    spec.args = vec!["/srv/data".into()];
    let _ = demo.feed(&mut fs, Event::SpecChanged(Box::new(spec.validated().expect("a valid definition"))));
    demo.pass(Duration::from_millis(15));
    let _ = demo.feed(&mut fs, Event::SessionClosed { generation: g });
    g = connect_of(&demo.wait(&mut fs));
    demo.pass(Duration::from_millis(100));
    let _ = demo.feed(&mut fs, Event::ConnectSucceeded { generation: g });
    let _ = demo.feed(&mut fs, Event::StopRequested);
    demo.pass(Duration::from_millis(8));
    let _ = demo.feed(&mut fs, Event::SessionClosed { generation: g });
}
