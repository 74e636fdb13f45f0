//! Failures as the core sees them (SPEC §4), and the `WWW-Authenticate` parser.
//!
//! Transports classify their own errors **once**, from types (HTTP status,
//! `io::ErrorKind`, rmcp's error variants), into a [`Failure`]. The core then
//! decides what the class means: count and retry, give up, wait for a login,
//! or nothing at all.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// A failure to connect, or the loss of a live session, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What kind of failure, and what it implies.
    #[serde(flatten)]
    pub class: FailureClass,
    /// Human text naming the cause; for stdio it carries the exit status and the
    /// last lines of stderr.
    pub message: String,
}

impl Failure {
    /// A transient failure: counted and retried with backoff.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::Transient { retry_after: None }, message: message.into() }
    }

    /// A transient failure whose server asked to wait at least `retry_after` (`Retry-After`).
    pub fn transient_after(message: impl Into<String>, retry_after: Duration) -> Failure {
        Failure { class: FailureClass::Transient { retry_after: Some(retry_after) }, message: message.into() }
    }

    /// A permanent failure: not retried until the definition changes or a start is asked for.
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::Permanent, message: message.into() }
    }

    /// The server wants credentials (HTTP 401, or 403 `insufficient_scope`).
    pub fn needs_credentials(challenge: Challenge, message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::NeedsCredentials(Box::new(challenge)), message: message.into() }
    }

    /// The caller cancelled (stop, shutdown): not a failure of the server at all.
    pub fn cancelled(message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::Cancelled, message: message.into() }
    }

    /// The class without its data.
    pub fn kind(&self) -> FailureKind {
        self.class.kind()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The failure classes of SPEC §4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum FailureClass {
    /// Connection refused/reset, timeouts, DNS, HTTP 5xx/408/429, stream or stdout closed
    /// early, process exited during initialize, a live session that dropped.
    Transient {
        /// The server's `Retry-After`: the next retry waits at least this long.
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "millis")]
        retry_after: Option<Duration>,
    },
    /// Spawn errors (not found, permission denied), TLS, bad URL, other HTTP 4xx,
    /// initialize rejected, protocol version mismatch.
    Permanent,
    /// HTTP 401 (or 403 `insufficient_scope`), with the parsed challenge: a login
    /// (or a scope step-up) can fix it, a retry cannot. Wire name `auth_required`.
    #[serde(rename = "auth_required")]
    NeedsCredentials(Box<Challenge>),
    /// The caller cancelled: not a failure.
    Cancelled,
}

impl FailureClass {
    /// The class without its data.
    pub fn kind(&self) -> FailureKind {
        match self {
            FailureClass::Transient { .. } => FailureKind::Transient,
            FailureClass::Permanent => FailureKind::Permanent,
            FailureClass::NeedsCredentials(_) => FailureKind::NeedsCredentials,
            FailureClass::Cancelled => FailureKind::Cancelled,
        }
    }
}

/// [`FailureClass`] without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// See [`FailureClass::Transient`].
    Transient,
    /// See [`FailureClass::Permanent`].
    Permanent,
    /// See [`FailureClass::NeedsCredentials`]. Wire name `auth_required`.
    #[serde(rename = "auth_required")]
    NeedsCredentials,
    /// See [`FailureClass::Cancelled`].
    Cancelled,
}

impl FailureKind {
    /// `transient`, `permanent`, `auth_required` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
            FailureKind::NeedsCredentials => "auth_required",
            FailureKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[expect(clippy::ref_option, reason = "serde's serialize_with passes a reference")]
fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

/// What a server said about the credentials it wants, from its `WWW-Authenticate`
/// header(s) (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9728 §5.1).
///
/// The fields come from the first `Bearer` challenge, or from the first challenge
/// when there is no `Bearer` one; `resource_metadata` falls back to any challenge
/// that carries it. A bare 401 gives the default (every field `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The auth scheme of the chosen challenge, as sent (`Bearer`, `Basic`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `realm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// `scope`: space-separated scopes the server wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `error`, e.g. `invalid_token` or `insufficient_scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `error_description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// `resource_metadata`: the RFC 9728 protected-resource metadata URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_metadata: Option<String>,
}

impl Challenge {
    /// Parses one `WWW-Authenticate` header value. Never panics: a malformed header
    /// yields what could be read.
    pub fn parse(header: &str) -> Challenge {
        Challenge::from_headers([header])
    }

    /// Parses every `WWW-Authenticate` header of a response (a response may carry
    /// several; their challenges are taken in order).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = &'a str>) -> Challenge {
        let all: Vec<AuthChallenge> = headers.into_iter().flat_map(parse_www_authenticate).collect();
        let chosen = all.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer")).or_else(|| all.first());
        let Some(chosen) = chosen else { return Challenge::default() };
        let get = |name: &str| chosen.param(name).map(str::to_owned);
        Challenge {
            scheme: Some(chosen.scheme.clone()),
            realm: get("realm"),
            scope: get("scope"),
            error: get("error"),
            error_description: get("error_description"),
            resource_metadata: get("resource_metadata")
                .or_else(|| all.iter().find_map(|c| c.param("resource_metadata")).map(str::to_owned)),
        }
    }

    /// True when the server says the token lacks scope (RFC 6750 `insufficient_scope`).
    pub fn is_insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The auth scheme as sent; compare it case-insensitively.
    pub scheme: String,
    /// The token68 form of the credentials, when the challenge uses it.
    pub token68: Option<String>,
    /// Auth parameters in order; names are lowercased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl AuthChallenge {
    /// The first value of parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 9110 §11.6.1):
/// several challenges separated by commas, `token68` or auth-params, quoted
/// strings with backslash escapes, token values, optional whitespace around `=`.
///
/// Never panics. Malformed parts are skipped up to the next comma; an
/// unterminated quoted string runs to the end of the input.
pub fn parse_www_authenticate(header: &str) -> Vec<AuthChallenge> {
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip_list_separators();
        if p.eof() {
            return out;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            p.skip_item();
            continue;
        }
        let mut challenge = AuthChallenge { scheme: scheme.to_owned(), token68: None, params: Vec::new() };
        // A scheme stands alone, or is followed by at least one space and its credentials.
        // Anything else after the scheme is not part of it: the next round skips it.
        if p.peek() == Some(b' ') || p.peek() == Some(b'\t') {
            p.skip_ows();
            p.parse_credentials(&mut challenge);
        }
        out.push(challenge);
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// After optional whitespace: the end of the input or a comma.
    fn at_item_end(&mut self) -> bool {
        self.skip_ows();
        matches!(self.peek(), None | Some(b','))
    }

    /// Skips to the next comma that is not inside a quoted string.
    fn skip_item(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => return,
                b'"' => {
                    self.quoted();
                }
                _ => self.i += 1,
            }
        }
    }

    fn take_while(&mut self, ok: impl Fn(u8) -> bool) -> &str {
        let start = self.i;
        while self.peek().is_some_and(&ok) {
            self.i += 1;
        }
        // Only ASCII bytes are accepted by every predicate used here, so the slice is UTF-8.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }

    fn token(&mut self) -> &str {
        self.take_while(is_tchar)
    }

    /// A quoted string starting at `"`; returns its unescaped content. Runs to the end
    /// of the input when the closing quote is missing.
    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        self.i += 1; // the opening quote
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// token68 or a comma-separated list of auth-params, up to the next challenge.
    fn parse_credentials(&mut self, challenge: &mut AuthChallenge) {
        let mut first = true;
        loop {
            let item_start = self.i;
            if let Some((name, value)) = self.auth_param() {
                challenge.params.push((name, value));
            } else {
                self.i = item_start;
                if first && let Some(t68) = self.token68() {
                    challenge.token68 = Some(t68);
                } else {
                    self.i = item_start;
                    // A token followed by a space, a comma or the end starts the next challenge.
                    let t = self.token().len();
                    if !first && t > 0 && matches!(self.peek(), None | Some(b' ' | b'\t' | b',')) {
                        self.i = item_start;
                        return;
                    }
                    self.i = item_start;
                    self.skip_item();
                }
            }
            first = false;
            // Now at the end of the input or at a comma: continue with the next item,
            // which may be a parameter of this challenge or the scheme of the next one.
            self.skip_list_separators();
            if self.eof() {
                return;
            }
        }
    }

    /// `token BWS "=" BWS ( token / quoted-string )`, then the end of the item.
    fn auth_param(&mut self) -> Option<(String, String)> {
        let name = self.token().to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        self.skip_ows();
        if self.peek() != Some(b'=') {
            return None;
        }
        self.i += 1;
        self.skip_ows();
        let value = match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b) if is_tchar(b) => self.token().to_owned(),
            Some(_) | None => return None,
        };
        self.at_item_end().then_some((name, value))
    }

    /// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`, then the end of the item.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        let body = self.take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)).len();
        if body == 0 {
            return None;
        }
        self.take_while(|b| b == b'=');
        let end = self.i;
        self.at_item_end().then(|| String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn params(c: &AuthChallenge) -> Vec<(&str, &str)> {
        c.params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    #[test]
    fn bearer_with_resource_metadata() {
        let c = Challenge::parse(
            r#"Bearer realm="mcp", error="invalid_token", error_description="expired", resource_metadata="https://api.example/.well-known/oauth-protected-resource", scope="files:read files:write""#,
        );
        assert_eq!(c.scheme.as_deref(), Some("Bearer"));
        assert_eq!(c.realm.as_deref(), Some("mcp"));
        assert_eq!(c.error.as_deref(), Some("invalid_token"));
        assert_eq!(c.error_description.as_deref(), Some("expired"));
        assert_eq!(c.resource_metadata.as_deref(), Some("https://api.example/.well-known/oauth-protected-resource"));
        assert_eq!(c.scope.as_deref(), Some("files:read files:write"));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let all = parse_www_authenticate(
            r#"Basic realm="simple", Newauth realm="apps", type=1, title="Login to \"apps\"", Bearer"#,
        );
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].scheme, "Basic");
        assert_eq!(params(&all[0]), [("realm", "simple")]);
        assert_eq!(all[1].scheme, "Newauth");
        assert_eq!(params(&all[1]), [("realm", "apps"), ("type", "1"), ("title", r#"Login to "apps""#)]);
        assert_eq!(all[2].scheme, "Bearer");
        assert!(all[2].params.is_empty());
    }

    #[test]
    fn bearer_is_preferred_over_earlier_schemes() {
        let c = Challenge::parse(r#"Basic realm="b", Bearer realm="a", scope=read"#);
        assert_eq!(c.scheme.as_deref(), Some("Bearer"));
        assert_eq!(c.realm.as_deref(), Some("a"));
        assert_eq!(c.scope.as_deref(), Some("read"));
    }

    #[test]
    fn token_values_and_whitespace_around_equals() {
        let all = parse_www_authenticate("Bearer realm = example , error=invalid_token");
        assert_eq!(params(&all[0]), [("realm", "example"), ("error", "invalid_token")]);
    }

    #[test]
    fn token68() {
        let all = parse_www_authenticate("Negotiate a87421000492aa874209af8bc028==, Bearer realm=x");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].token68.as_deref(), Some("a87421000492aa874209af8bc028=="));
        assert_eq!(all[1].param("realm"), Some("x"));
        let all = parse_www_authenticate("Custom abc/def+g~h");
        assert_eq!(all[0].token68.as_deref(), Some("abc/def+g~h"));
    }

    #[test]
    fn scheme_and_parameter_names_are_case_insensitive() {
        let c = Challenge::parse(r#"bEaReR REALM="r", Resource_Metadata="https://m""#);
        assert_eq!(c.scheme.as_deref(), Some("bEaReR"));
        assert_eq!(c.realm.as_deref(), Some("r"));
        assert_eq!(c.resource_metadata.as_deref(), Some("https://m"));
    }

    #[test]
    fn commas_inside_quoted_strings_do_not_split() {
        let c = Challenge::parse(r#"Bearer error_description="a, b, c", scope="x""#);
        assert_eq!(c.error_description.as_deref(), Some("a, b, c"));
        assert_eq!(c.scope.as_deref(), Some("x"));
    }

    #[test]
    fn several_header_lines() {
        let c = Challenge::from_headers([r#"Basic realm="b""#, r#"Bearer resource_metadata="https://m""#]);
        assert_eq!(c.scheme.as_deref(), Some("Bearer"));
        assert_eq!(c.resource_metadata.as_deref(), Some("https://m"));
    }

    #[test]
    fn resource_metadata_falls_back_to_any_challenge() {
        let c = Challenge::parse(r#"Bearer realm="a", DPoP resource_metadata="https://m""#);
        assert_eq!(c.realm.as_deref(), Some("a"));
        assert_eq!(c.resource_metadata.as_deref(), Some("https://m"));
    }

    #[test]
    fn malformed_headers_yield_what_could_be_read() {
        assert_eq!(Challenge::parse(""), Challenge::default());
        assert_eq!(Challenge::parse(",,, ,"), Challenge::default());
        let c = Challenge::parse(r#"Bearer realm="unterminated"#);
        assert_eq!(c.realm.as_deref(), Some("unterminated"));
        let c = Challenge::parse(r#"Bearer ="x", realm=ok, junk junk, scope="s""#);
        assert_eq!(c.realm.as_deref(), Some("ok"));
        let all = parse_www_authenticate(r#"Bearer realm="a" trailing, error=e"#);
        assert_eq!(all[0].param("error"), Some("e"));
        let all = parse_www_authenticate("\"quoted\" Bearer, Basic realm=x");
        assert!(all.iter().any(|c| c.scheme == "Basic" && c.param("realm") == Some("x")), "{all:?}");
        // Two tokens as the first item are neither token68 nor a new challenge: skipped.
        let all = parse_www_authenticate("Bearer xyz abc");
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!((all[0].token68.as_deref(), all[0].params.len()), (None, 0));
        // A parameter without a value is no parameter; the next one still counts.
        let all = parse_www_authenticate("Bearer realm=, error=e");
        assert_eq!((all[0].param("realm"), all[0].param("error")), (None, Some("e")), "{all:?}");
        // A comma inside a skipped quoted string does not end the skipped item.
        let all = parse_www_authenticate(r#""x, Evil realm=y", Basic realm=x"#);
        assert_eq!(all.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["Basic"], "{all:?}");
    }

    #[test]
    fn a_tab_may_separate_the_scheme_from_its_parameters() {
        let c = Challenge::parse("Bearer\trealm=\"r\"");
        assert_eq!((c.scheme.as_deref(), c.realm.as_deref()), (Some("Bearer"), Some("r")));
        // Garbage glued to a scheme is skipped up to the next challenge.
        let all = parse_www_authenticate("Bearer/x=1 y, Basic realm=b");
        assert_eq!(all.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["Bearer", "Basic"]);
        assert!(all[0].params.is_empty());
        assert_eq!(all[1].param("realm"), Some("b"));
    }

    #[test]
    fn failure_kinds_have_wire_names() {
        let kinds = [
            (FailureKind::Transient, "transient"),
            (FailureKind::Permanent, "permanent"),
            (FailureKind::NeedsCredentials, "auth_required"),
            (FailureKind::Cancelled, "cancelled"),
        ];
        for (kind, name) in kinds {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
        }
        assert_eq!(Failure::permanent("x").kind(), FailureKind::Permanent);
        assert_eq!(Failure::cancelled("x").kind(), FailureKind::Cancelled);
        assert_eq!(Failure::transient("boom").to_string(), "boom");
    }

    #[test]
    fn insufficient_scope() {
        assert!(Challenge::parse(r#"Bearer error="insufficient_scope", scope="admin""#).is_insufficient_scope());
        assert!(!Challenge::parse("Bearer").is_insufficient_scope());
    }

    #[test]
    fn failure_classes_serialize_flat() {
        let f = Failure::transient_after("HTTP 503", Duration::from_secs(7));
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"class":"transient","retry_after":7000,"message":"HTTP 503"})
        );
        let f = Failure::needs_credentials(Challenge::parse(r#"Bearer realm="r""#), "401");
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["class"], "auth_required");
        assert_eq!(f.kind(), FailureKind::NeedsCredentials);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in any::<String>()) {
            let _ = Challenge::parse(&s);
        }

        #[test]
        fn never_panics_on_header_like_input(s in r#"[A-Za-z ,=\\"/+~.-]{0,64}"#) {
            let all = parse_www_authenticate(&s);
            prop_assert!(all.iter().all(|c| !c.scheme.is_empty()));
        }

        #[test]
        fn quoted_values_round_trip(v in r#"[ -~]{0,40}"#) {
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
            let c = Challenge::parse(&format!(r#"Bearer realm="{escaped}", scope=s"#));
            prop_assert_eq!(c.realm.as_deref(), Some(v.as_str()));
            prop_assert_eq!(c.scope.as_deref(), Some("s"));
        }
    }
}
