//! Logging in and using tokens, against the fixture's own authorization server
//! (`roster-fixture http --oauth`): the time `roster login` takes from start to
//! tokens stored (the "browser" is the fixture's `browse`, which approves at
//! once), and a ping on a logged-in session against one on a session without
//! a token. Figures go to BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

use roster_core::{AuthConfig, AuthType, ServerSpec, ServerType};
use roster_http::{HttpClients, HttpOptions};
use roster_tests::bench::{fixture_http, release_fixture};
use roster_transport::Connector;
use roster_transport_http::HttpConnector;

const ROSTER: &str = env!("CARGO_BIN_EXE_roster");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn pings(connector: &HttpConnector, spec: &ServerSpec, n: usize) -> Vec<Duration> {
    let session = connector.connect(spec, Instant::now() + Duration::from_secs(10)).await.expect("connects");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        session.ping(Duration::from_secs(5)).await.expect("ping");
        times.push(t.elapsed());
    }
    let _ = session.close().await;
    times
}

fn main() {
    let fixture = release_fixture(ROSTER);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (_oauth, base) = fixture_http(&fixture, &["--oauth"]);
    let oauth_url = format!("{base}/mcp");
    let config = dir.path().join("roster.toml");
    std::fs::write(&config, "").unwrap();

    // 1. `roster login URL`, whole process, start to tokens stored.
    let mut logins = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let out = Command::new(ROSTER)
            .args(["--config", config.to_str().unwrap(), "login", &oauth_url])
            .env("XDG_STATE_HOME", &state)
            .env("BROWSER", format!("{} browse", fixture.display()))
            .output()
            .expect("roster login");
        logins.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "roster login (discovery, registration, browser redirect, exchange), median of 10: {}",
        ms(median(logins))
    );

    // 2. A ping through roster's token source against the same ping with the
    //    same token as a fixed header: same server, same token, one session
    //    each, interleaved rounds. The difference is what the token source costs.
    let token = {
        let file = std::fs::read_dir(state.join("roster/credentials"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a token file");
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        record["credentials"]["token_response"]["access_token"].as_str().expect("a token").to_owned()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let clients = HttpClients::new(HttpOptions::default()).unwrap();
        let store = roster_auth::Store::new(state.join("roster/credentials"));
        let connector = HttpConnector::new(clients).with_credentials(store);
        let mut tokened = ServerSpec::remote(roster_auth::URL_ONLY, ServerType::StreamableHttp, oauth_url.as_str());
        tokened.auth = Some(AuthConfig { kind: AuthType::Oauth, ..AuthConfig::default() });
        let mut fixed = ServerSpec::remote("fixed", ServerType::StreamableHttp, oauth_url.as_str());
        fixed.headers.insert("Authorization".into(), format!("Bearer {token}"));
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            with.extend(pings(&connector, &tokened, 400).await);
            without.extend(pings(&connector, &fixed, 400).await);
        }
        let (a, b) = (median(with), median(without));
        println!(
            "ping on a Streamable HTTP session, median of 2000: token from roster's store {}, the same token as a fixed header {} (difference {:+.1} µs)",
            us(a),
            us(b),
            (a.as_secs_f64() - b.as_secs_f64()) * 1e6
        );
    });
}
