//! HTTP failures into the core's classes (SPEC §4), from types only: the status
//! code, the `WWW-Authenticate` and `Retry-After` headers, and reqwest's error
//! kinds. Shared by the Streamable HTTP and the SSE transports.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use roster_core::{Challenge, Failure};

/// Which request failed, where it changes the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The `initialize` POST of a Streamable HTTP session: a 404 or 405 there
    /// suggests a legacy SSE endpoint.
    StreamableInitialize,
    /// Any other request.
    Other,
}

/// What an HTTP error response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// The status code.
    pub status: u16,
    /// Every `WWW-Authenticate` value, in order.
    pub www_authenticate: Vec<String>,
    /// The raw `Retry-After` value.
    pub retry_after: Option<String>,
}

/// Classifies a non-2xx response.
///
/// 401 → auth required with the parsed challenge; 403 with `insufficient_scope` →
/// auth required; 408, 429, 5xx → transient, `Retry-After` a floor; 404/405 on a
/// Streamable HTTP initialize → permanent, suggesting `type = "sse"`; any other
/// 4xx (and anything else) → permanent.
pub fn classify_status(info: &StatusInfo, phase: Phase) -> Failure {
    let status = info.status;
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let text = format!("HTTP {status} {reason}").trim_end().to_owned();
    let challenge = Challenge::from_headers(info.www_authenticate.iter().map(String::as_str));
    match status {
        401 => Failure::needs_credentials(challenge, text),
        403 if challenge.is_insufficient_scope() => {
            let scope = challenge.scope.clone().unwrap_or_default();
            Failure::needs_credentials(challenge, format!("{text}: insufficient scope {scope}").trim_end().to_owned())
        }
        408 | 429 | 500..=599 => {
            match info.retry_after.as_deref().and_then(|v| parse_retry_after(v, SystemTime::now())) {
                Some(floor) => Failure::transient_after(format!("{text} (retry after {}s)", floor.as_secs()), floor),
                None => Failure::transient(text),
            }
        }
        404 | 405 if phase == Phase::StreamableInitialize => Failure::permanent(format!(
            "{text} on initialize: this endpoint may be a legacy HTTP+SSE server; try type = \"sse\""
        )),
        _ => Failure::permanent(text),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to
/// `now`. `None` when unreadable. How long is honoured is the core's rule
/// ([`roster_core::lifecycle::MAX_RETRY_AFTER`]), not the transport's.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => Some(httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO)),
    }
}

/// Classifies a failure to talk to the server at all.
///
/// TLS and certificate errors → permanent (retrying cannot fix them); a bad URL →
/// permanent; refused, reset, DNS, timeouts and broken bodies → transient.
pub fn classify_reqwest(error: &reqwest::Error) -> Failure {
    let text = reqwest_text(error);
    if is_tls(error) || error.is_builder() { Failure::permanent(text) } else { Failure::transient(text) }
}

/// A reqwest error as roster shows it: what failed, the URL with its secrets
/// redacted (if the error still carries one: roster's transports strip it, with
/// `reqwest::Error::without_url`, before an error can reach anyone's log), and the
/// causes. (reqwest's own text carries the URL as given, query included.)
pub fn reqwest_text(error: &reqwest::Error) -> String {
    let url = error.url().map(|u| format!(" to {}", roster_core::redact_url(u.as_str()))).unwrap_or_default();
    let what = if is_tls(error) {
        "TLS error"
    } else if error.is_builder() {
        "invalid request"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    // The sources below reqwest's own error do not carry the URL.
    match error.source() {
        Some(source) => format!("{what}{url}: {}", chain(source)),
        None => format!("{what}{url}"),
    }
}

/// The innermost error of a chain: what actually happened ("Connection refused").
pub fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Whether a rustls error is anywhere in the chain, including inside `io::Error`
/// payloads (which `source()` skips).
pub fn is_tls(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_tls(inner)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// An error and its sources, joined with `: `, without repeats.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use roster_core::FailureKind;

    use super::*;

    fn status(code: u16) -> StatusInfo {
        StatusInfo { status: code, ..StatusInfo::default() }
    }

    #[test]
    fn status_table() {
        let table = [
            (401, Phase::Other, FailureKind::NeedsCredentials),
            (401, Phase::StreamableInitialize, FailureKind::NeedsCredentials),
            (403, Phase::Other, FailureKind::Permanent),
            (400, Phase::Other, FailureKind::Permanent),
            (404, Phase::Other, FailureKind::Permanent),
            (404, Phase::StreamableInitialize, FailureKind::Permanent),
            (405, Phase::StreamableInitialize, FailureKind::Permanent),
            (408, Phase::Other, FailureKind::Transient),
            (410, Phase::Other, FailureKind::Permanent),
            (429, Phase::Other, FailureKind::Transient),
            (500, Phase::Other, FailureKind::Transient),
            (502, Phase::Other, FailureKind::Transient),
            (503, Phase::StreamableInitialize, FailureKind::Transient),
            (504, Phase::Other, FailureKind::Transient),
            (511, Phase::Other, FailureKind::Transient),
            (302, Phase::Other, FailureKind::Permanent),
        ];
        for (code, phase, kind) in table {
            assert_eq!(classify_status(&status(code), phase).kind(), kind, "{code} {phase:?}");
        }
    }

    #[test]
    fn a_401_carries_the_parsed_challenge() {
        let info = StatusInfo {
            status: 401,
            www_authenticate: vec![r#"Bearer realm="mcp", resource_metadata="https://x/.well-known/oauth-protected-resource", scope="read""#.into()],
            retry_after: None,
        };
        let f = classify_status(&info, Phase::StreamableInitialize);
        assert_eq!(f.message, "HTTP 401 Unauthorized");
        let roster_core::FailureClass::NeedsCredentials(c) = f.class else { panic!("{f:?}") };
        assert_eq!(c.resource_metadata.as_deref(), Some("https://x/.well-known/oauth-protected-resource"));
        assert_eq!(c.realm.as_deref(), Some("mcp"));
        assert_eq!(c.scope.as_deref(), Some("read"));
    }

    #[test]
    fn a_403_with_insufficient_scope_is_auth_required() {
        let info = StatusInfo {
            status: 403,
            www_authenticate: vec![r#"Bearer error="insufficient_scope", scope="admin""#.into()],
            retry_after: None,
        };
        let f = classify_status(&info, Phase::Other);
        assert_eq!(f.kind(), FailureKind::NeedsCredentials);
        assert!(f.message.contains("insufficient scope admin"), "{}", f.message);
    }

    #[test]
    fn legacy_sse_hint_on_initialize() {
        let f = classify_status(&status(404), Phase::StreamableInitialize);
        assert!(f.message.contains("type = \"sse\""), "{}", f.message);
        assert!(!classify_status(&status(404), Phase::Other).message.contains("sse"));
    }

    #[test]
    fn retry_after_is_a_floor_in_seconds_or_a_date() {
        let info = StatusInfo { status: 503, retry_after: Some("7".into()), ..StatusInfo::default() };
        assert_eq!(
            classify_status(&info, Phase::Other).class,
            roster_core::FailureClass::Transient { retry_after: Some(Duration::from_secs(7)) }
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(0)));
        let later = now - Duration::from_secs(90);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", later), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("999999", now), Some(Duration::from_secs(999_999)), "the core caps it");
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert!(is_tls(&outer));
        assert!(!is_tls(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
    }

    /// An error whose text is `0` and whose source is `1`.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn a_chain_skips_a_cause_its_outer_error_already_quotes_and_the_root_is_the_innermost() {
        let error = Layer(
            "error sending request",
            Some(Box::new(Layer("connect: Connection refused", Some(Box::new(Layer("Connection refused", None)))))),
        );
        assert_eq!(chain(&error), "error sending request: connect: Connection refused");
        assert_eq!(root_cause(&error), "Connection refused");
        let flat = Layer("alone", None);
        assert_eq!((chain(&flat), root_cause(&flat)), ("alone".to_owned(), "alone".to_owned()));
    }

    fn client() -> reqwest::Client {
        crate::HttpClients::new(crate::HttpOptions::default()).unwrap().for_url("http://127.0.0.1/").unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient_and_its_text_has_the_cause_and_no_secret() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://ann:hunter2@127.0.0.1:{port}/mcp?token=s3cret");
        let error = client().get(&url).send().await.unwrap_err();
        let f = classify_reqwest(&error);
        assert_eq!(f.kind(), FailureKind::Transient);
        // reqwest moves the URL's credentials into an Authorization header.
        let prefix = format!("cannot connect to http://127.0.0.1:{port}/mcp?token=<redacted>: ");
        assert!(f.message.starts_with(&prefix), "{}", f.message);
        assert!(f.message.len() > prefix.len(), "the causes follow: {}", f.message);
        assert!(!f.message.contains("hunter2") && !f.message.contains("s3cret"), "{}", f.message);
        assert_eq!(reqwest_text(&error.without_url()), format!("cannot connect: {}", &f.message[prefix.len()..]));
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_permanent() {
        let error = client().get("no scheme here").send().await.unwrap_err();
        let f = classify_reqwest(&error);
        assert_eq!(f.kind(), FailureKind::Permanent);
        assert!(f.message.starts_with("invalid request"), "{}", f.message);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_failed_read_and_transient() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort").await.unwrap();
        });
        let response = client().get(&url).send().await.unwrap();
        let error = response.bytes().await.unwrap_err();
        server.await.unwrap();
        let f = classify_reqwest(&error);
        assert_eq!(f.kind(), FailureKind::Transient);
        assert!(f.message.starts_with("reading the response failed"), "{}", f.message);
    }
}
