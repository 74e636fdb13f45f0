//! # roster-http: what roster's remote transports share
//!
//! The Streamable HTTP and the legacy SSE transports are siblings; this crate is
//! what both need of HTTP: the shared clients ([`HttpClients`]), the classification
//! of HTTP failures into the core's classes ([`classify`]), the configured headers
//! as HTTP values ([`header_map`]), and a bound on the size of a server-sent event
//! ([`limit_events`]) so that no server can grow roster without limit.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Once, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{HeaderName, HeaderValue};
use roster_core::ServerSpec;

pub mod classify;

/// The largest JSON response or server-sent event read by default: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Settings of the shared HTTP clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOptions {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Every POST and DELETE, response body included (tool calls may stream for a while).
    pub request_timeout: Duration,
    /// The largest JSON response, and the largest server-sent event, read from a
    /// server. A larger one fails that server's request (transiently), never roster.
    pub max_message_size: usize,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// The HTTP client could not be built (its TLS configuration, usually).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the HTTP client: {}", classify::chain(.0.as_ref()))]
pub struct BuildError(#[source] Arc<reqwest::Error>);

/// The reqwest clients every remote session of a supervisor shares (connection
/// reuse): one for `http://` URLs, built at once with no trust roots, and one for
/// `https://` URLs, built the first time one is needed — loading the system's
/// trust roots reads every certificate file of the system store, which a
/// process that talks plain HTTP (a one-shot against a local server) should not
/// pay for. Both use rustls with the ring provider, follow no redirects (a
/// redirect would replay headers to another host or turn a POST into a GET), and
/// bound connects with [`HttpOptions::connect_timeout`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClients {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: HttpOptions,
    plain: reqwest::Client,
    tls: OnceLock<Result<reqwest::Client, BuildError>>,
}

impl HttpClients {
    /// The clients for `options`; only the plain one is built now.
    ///
    /// # Errors
    /// When reqwest cannot build a client.
    pub fn new(options: HttpOptions) -> Result<HttpClients, BuildError> {
        let plain = builder(&options).tls_certs_only([]).build().map_err(|e| BuildError(Arc::new(e)))?;
        Ok(HttpClients { inner: Arc::new(Inner { options, plain, tls: OnceLock::new() }) })
    }

    /// The options the clients were built with.
    pub fn options(&self) -> &HttpOptions {
        &self.inner.options
    }

    /// The client for `url`: the TLS one (built now if it is the first) for
    /// `https://`, the plain one otherwise.
    ///
    /// # Errors
    /// When the TLS client cannot be built.
    pub fn for_url(&self, url: &str) -> Result<reqwest::Client, BuildError> {
        if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
            self.inner
                .tls
                .get_or_init(|| builder(&self.inner.options).build().map_err(|e| BuildError(Arc::new(e))))
                .clone()
        } else {
            Ok(self.inner.plain.clone())
        }
    }

    /// Whether the TLS client has been built.
    pub fn has_tls(&self) -> bool {
        self.inner.tls.get().is_some()
    }
}

fn builder(options: &HttpOptions) -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one first; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("roster/", env!("CARGO_PKG_VERSION")))
}

/// A configured header is not a valid HTTP header (validation should have caught it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name:?} is not a valid HTTP header")]
pub struct InvalidHeader {
    /// The header's name (never its value).
    pub name: String,
}

/// The configured headers as HTTP values, each marked sensitive so that no debug
/// output shows it.
///
/// # Errors
/// [`InvalidHeader`] naming the header, never its value.
pub fn header_map(spec: &ServerSpec) -> Result<HashMap<HeaderName, HeaderValue>, InvalidHeader> {
    spec.headers
        .iter()
        .map(|(name, value)| {
            let invalid = || InvalidHeader { name: name.clone() };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let mut v = HeaderValue::from_str(value).map_err(|_| invalid())?;
            v.set_sensitive(true);
            Ok((n, v))
        })
        .collect()
}

/// Why an event stream's body failed.
#[derive(Debug, thiserror::Error)]
pub enum EventStreamError {
    /// Reading the body failed.
    #[error(transparent)]
    Read(#[from] reqwest::Error),
    /// The server sent an event larger than the limit.
    #[error("the server sent an event larger than {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: usize,
    },
}

/// `body` with every event held to `max` bytes (its lines with their line ends,
/// without the blank line that ends it): the stream fails with
/// [`EventStreamError::TooLarge`] as soon as `max` bytes have arrived without an
/// event's end (a blank line), before any of them is parsed, so that the parser
/// behind it never buffers more than `max`.
pub fn limit_events<S>(body: S, max: usize) -> LimitEvents<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    LimitEvents { body, max, since_boundary: 0, line_empty: true, after_cr: false, failed: false }
}

/// The stream of [`limit_events`].
#[derive(Debug)]
pub struct LimitEvents<S> {
    body: S,
    max: usize,
    /// Bytes since the last event ended.
    since_boundary: usize,
    /// The current line has no characters yet.
    line_empty: bool,
    /// The last byte was a CR (a LF right after it ends the same line).
    after_cr: bool,
    failed: bool,
}

impl<S> LimitEvents<S> {
    /// Counts `chunk`; false once an event has grown past the limit.
    fn count(&mut self, chunk: &[u8]) -> bool {
        for &b in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => continue,
                b'\n' | b'\r' if self.line_empty => {
                    self.since_boundary = 0;
                    continue;
                }
                b'\n' | b'\r' => self.line_empty = true,
                _ => self.line_empty = false,
            }
            self.since_boundary += 1;
            if self.since_boundary > self.max {
                return false;
            }
        }
        true
    }
}

impl<S> Stream for LimitEvents<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    type Item = Result<Bytes, EventStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.count(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.failed = true;
                    Poll::Ready(Some(Err(EventStreamError::TooLarge { max: self.max })))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(EventStreamError::Read(e.without_url())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize) -> LimitEvents<futures::stream::Empty<Result<Bytes, reqwest::Error>>> {
        limit_events(futures::stream::empty(), max)
    }

    #[test]
    fn events_up_to_the_limit_pass_and_the_count_restarts_after_each() {
        let mut l = limiter(11);
        assert!(l.count(b"data: 1234\n\n"), "11 bytes with its line end");
        assert!(l.count(b"data: 1234\r\n\r\n"), "CRLF");
        assert!(l.count(b"data: 1234\r\r"), "CR");
        assert!(l.count(b"data: 12"));
        assert!(l.count(b"34\n\n"), "split across chunks");
        assert!(!l.count(b"data: 12345\n\n"), "12 bytes");
    }

    #[test]
    fn an_endless_event_fails_as_soon_as_it_passes_the_limit() {
        let mut l = limiter(1000);
        let line = b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let mut passed = 0;
        while l.count(line) {
            passed += line.len();
            assert!(passed <= 1000);
        }
        assert!(passed > 1000 - line.len(), "not before the limit");
    }

    #[test]
    fn a_crlf_is_one_line_end_not_a_blank_line() {
        let mut l = limiter(4);
        assert!(l.count(b"a\r\nb\r\n"), "4 bytes counted: a, CR, b, CR");
        assert!(!l.count(b"c"), "no blank line yet: the event goes on");
    }

    #[test]
    fn header_values_are_sensitive_and_bad_ones_name_only_the_header() {
        let mut spec = ServerSpec::remote("r", roster_core::ServerType::StreamableHttp, "https://x/mcp");
        spec.headers.insert("Authorization".into(), "Bearer t".into());
        let map = header_map(&spec).unwrap();
        assert!(map.values().all(HeaderValue::is_sensitive));
        spec.headers.insert("X-Bad".into(), "s3cret\nx".into());
        let err = header_map(&spec).unwrap_err();
        assert_eq!(err.to_string(), "header \"X-Bad\" is not a valid HTTP header");
    }

    #[test]
    fn the_tls_client_is_built_only_for_an_https_url() {
        let clients = HttpClients::new(HttpOptions::default()).unwrap();
        clients.for_url("http://127.0.0.1:1/mcp").unwrap();
        assert!(!clients.has_tls(), "no trust roots for plain HTTP");
        clients.for_url("HTTPS://example.com/mcp").unwrap();
        assert!(clients.has_tls());
    }

    #[test]
    fn the_clients_keep_their_options_and_a_message_may_be_16_mib() {
        assert_eq!(DEFAULT_MAX_MESSAGE_SIZE, 16_777_216);
        assert_eq!(HttpOptions::default().max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        let options = HttpOptions {
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(7),
            max_message_size: 1024,
        };
        assert_eq!(HttpClients::new(options).unwrap().options(), &options);
    }

    #[test]
    fn the_stream_passes_chunks_as_they_are_and_ends_after_the_one_too_large() {
        let chunks: Vec<Result<Bytes, reqwest::Error>> = vec![
            Ok(Bytes::from_static(b"data: a\n\n")),
            Ok(Bytes::from_static(b"data: 0123456789")),
            Ok(Bytes::from_static(b"\n\n")),
        ];
        let mut stream = limit_events(futures::stream::iter(chunks), 12);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut next = || Pin::new(&mut stream).poll_next(&mut cx);
        let Poll::Ready(Some(Ok(first))) = next() else { panic!("the first event passes") };
        assert_eq!(&first[..], b"data: a\n\n");
        let Poll::Ready(Some(Err(EventStreamError::TooLarge { max: 12 }))) = next() else {
            panic!("16 bytes without an end")
        };
        assert!(matches!(next(), Poll::Ready(None)), "nothing after the failure, though the body goes on");
    }
}
