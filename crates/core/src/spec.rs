//! The definition of one MCP server ([`ServerSpec`]) and its validation.
//!
//! A `ServerSpec` is what a configuration file says about a server: how to reach
//! it and how to treat it. It carries no runtime state. [`ServerSpec::validate`]
//! checks every rule of SPEC §1 and returns **all** problems at once, so that a
//! whole configuration can be reported in one pass. Where the reference
//! implementation (muster) has a message, the message text is the same.
//!
//! Lists and maps have no "nil": a missing list, an explicit `null` and an empty
//! list all deserialize to the same empty value, so they compare equal.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted server name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Longest accepted description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// Smallest accepted `timeout`, in seconds.
pub const MIN_TIMEOUT_SECS: u32 = 1;
/// Largest accepted `timeout`, in seconds.
pub const MAX_TIMEOUT_SECS: u32 = 300;
/// Connect-and-initialize timeout of a remote server when `timeout` is unset (`DEFAULT_REMOTE_TIMEOUT`).
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Initialize timeout of a stdio server when `timeout` is unset (`DEFAULT_STDIO_INIT_TIMEOUT`).
pub const DEFAULT_STDIO_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Header names a transport manages itself; configuring them is an error.
pub const RESERVED_HEADERS: [&str; 3] = ["accept", "mcp-session-id", "last-event-id"];

/// How roster talks to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ServerType {
    /// A local process spoken to over its stdin and stdout.
    #[serde(rename = "stdio")]
    Stdio,
    /// A remote server over Streamable HTTP (MCP 2025-03-26 and later).
    #[serde(rename = "streamable-http")]
    StreamableHttp,
    /// A remote server over the legacy HTTP+SSE transport (MCP 2024-11-05).
    #[serde(rename = "sse")]
    Sse,
}

impl ServerType {
    /// Every type, in the order the error messages list them.
    pub const ALL: [ServerType; 3] = [ServerType::Stdio, ServerType::StreamableHttp, ServerType::Sse];

    /// The wire name: `stdio`, `streamable-http` or `sse`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerType::Stdio => "stdio",
            ServerType::StreamableHttp => "streamable-http",
            ServerType::Sse => "sse",
        }
    }

    /// True for the remote types (`streamable-http`, `sse`).
    pub fn is_remote(self) -> bool {
        match self {
            ServerType::Stdio => false,
            ServerType::StreamableHttp | ServerType::Sse => true,
        }
    }

    /// The connect timeout used when a definition leaves `timeout` unset.
    pub fn default_timeout(self) -> Duration {
        if self.is_remote() { DEFAULT_REMOTE_TIMEOUT } else { DEFAULT_STDIO_INIT_TIMEOUT }
    }

    /// Parses a wire name.
    ///
    /// # Errors
    /// [`UnsupportedType`] for anything but the three wire names; its message is
    /// the reference's `unsupported MCP server type: <t> (supported: stdio, streamable-http, sse)`.
    pub fn parse(s: &str) -> Result<ServerType, UnsupportedType> {
        ServerType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnsupportedType(s.to_owned()))
    }
}

impl fmt::Display for ServerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServerType {
    type Err = UnsupportedType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServerType::parse(s)
    }
}

impl<'de> Deserialize<'de> for ServerType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServerType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A `type` that is none of `stdio`, `streamable-http`, `sse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported MCP server type: {0} (supported: stdio, streamable-http, sse)")]
pub struct UnsupportedType(pub String);

/// Remote authentication mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// No authentication (a 401 still moves the server to `auth_required`).
    #[default]
    None,
    /// OAuth 2.1 as the MCP authorization spec describes it.
    Oauth,
}

/// Remote authentication settings (`auth`). Only valid for remote types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `oauth`.
    #[serde(rename = "type")]
    pub kind: AuthType,
    /// Forward the caller's own token to this server instead of running a flow.
    #[serde(skip_serializing_if = "is_false")]
    pub forward_token: bool,
    /// Audiences a forwarded token must carry.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub required_audiences: Vec<String>,
    /// Exchange the caller's token for one this server accepts (RFC 8693).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchange>,
    /// The authorization server to log in against, when it is not discovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_server: Option<AuthorizationServer>,
    /// OAuth: a client registered with the authorization server beforehand. Without
    /// one, `roster login` uses `client_metadata_url` or dynamic registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// OAuth: the name of the environment variable that holds the client secret
    /// (the secret itself is never written in a configuration file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// OAuth: the `https://` URL of this client's metadata document (CIMD), used as
    /// the client id where the authorization server supports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_metadata_url: Option<String>,
    /// OAuth: the scopes to ask for (default: what the server's challenge or
    /// metadata names).
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// OAuth: the loopback port for the login's redirect (default: any free port).
    /// A pre-registered client usually needs a fixed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_port: Option<u16>,
    /// OAuth: how tokens are obtained.
    #[serde(skip_serializing_if = "Grant::is_default")]
    pub grant: Grant,
}

/// How an OAuth server's tokens are obtained (`auth.grant`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A person logs in once with `roster login` (a browser, PKCE); roster
    /// refreshes the tokens from then on.
    #[default]
    AuthorizationCode,
    /// Machine to machine: roster gets and renews tokens with the client id and
    /// secret, with no person involved.
    ClientCredentials,
}

impl Grant {
    fn is_default(&self) -> bool {
        *self == Grant::AuthorizationCode
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

impl AuthConfig {
    /// Whether any of the OAuth client settings (`client_id` to `grant`) is set.
    pub fn has_client_settings(&self) -> bool {
        self.client_id.is_some()
            || self.client_secret_env.is_some()
            || self.client_metadata_url.is_some()
            || !self.scopes.is_empty()
            || self.redirect_port.is_some()
            || self.grant != Grant::AuthorizationCode
    }

    /// A copy without runtime-only data (resolved client credentials), for comparisons.
    pub fn spec_only(&self) -> AuthConfig {
        let mut copy = self.clone();
        if let Some(te) = copy.token_exchange.as_mut() {
            te.resolved = None;
        }
        copy
    }
}

/// Token exchange settings.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenExchange {
    /// Whether the exchange runs.
    pub enabled: bool,
    /// Token endpoint of the exchanging authorization server (`https://`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token_endpoint: String,
    /// Issuer the exchanged token must come from (`https://`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expected_issuer: String,
    /// Connector id at the exchanging server.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connector_id: String,
    /// Space-separated scopes to request.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scopes: String,
    /// Client credentials resolved at runtime. Never read from or written to a file,
    /// and ignored when deciding whether a definition changed.
    #[serde(skip)]
    pub resolved: Option<ClientCredentials>,
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("enabled", &self.enabled)
            .field("token_endpoint", &self.token_endpoint)
            .field("expected_issuer", &self.expected_issuer)
            .field("connector_id", &self.connector_id)
            .field("scopes", &self.scopes)
            .field("resolved", &self.resolved.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Client credentials resolved at runtime for a token exchange.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
}

/// An explicitly configured authorization server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationServer {
    /// Issuer URL (`https://`, no trailing slash, query or fragment).
    pub issuer: String,
    /// Scopes to request.
    #[serde(deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// The definition of one MCP server (SPEC §1).
///
/// `Debug` redacts the values of `env` and `headers`: they often hold secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Unique id: `^[A-Za-z0-9][A-Za-z0-9_.-]*$`, at most 64 characters.
    pub name: String,
    /// Transport type.
    #[serde(rename = "type")]
    pub server_type: ServerType,
    /// stdio: the program to run (looked up on `PATH`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// stdio: its arguments.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// stdio: environment variables set for the process (on top of the inherited ones).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// stdio: working directory; roster's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// stdio: inherit roster's environment (default true). When false the process
    /// gets only a small allowlist (`PATH`, `HOME`, locale and temp-dir variables),
    /// the variables named in `pass_env`, and `env`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub inherit_env: bool,
    /// stdio: further variables passed through from roster's environment when `inherit_env` is false.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// remote: the endpoint, `http://` or `https://`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// remote: headers sent on every request.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Start when the supervisor starts or the server is added (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_start: bool,
    /// Seconds to connect and initialize, 1..=300; unset means the type's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// Prefix for the server's tools when aggregated: `^[A-Za-z][A-Za-z0-9_-]*$`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool_prefix: String,
    /// Human text, at most 500 characters. Metadata only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// remote: authentication settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

impl fmt::Debug for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSpec")
            .field("name", &self.name)
            .field("server_type", &self.server_type)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &RedactedMap(&self.env))
            .field("cwd", &self.cwd)
            .field("inherit_env", &self.inherit_env)
            .field("pass_env", &self.pass_env)
            .field("url", &self.display_url())
            .field("headers", &RedactedMap(&self.headers))
            .field("auto_start", &self.auto_start)
            .field("timeout", &self.timeout)
            .field("tool_prefix", &self.tool_prefix)
            .field("description", &self.description)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Shows the keys of a map with every value replaced by `<redacted>`.
struct RedactedMap<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, REDACTED))).finish()
    }
}

/// What status output and logs show in place of an env or header value.
pub const REDACTED: &str = "<redacted>";

impl ServerSpec {
    /// A stdio server running `command` with no arguments; everything else default.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>) -> ServerSpec {
        ServerSpec { command: command.into(), ..ServerSpec::empty(name, ServerType::Stdio) }
    }

    /// A remote server of `server_type` at `url`; everything else default.
    pub fn remote(name: impl Into<String>, server_type: ServerType, url: impl Into<String>) -> ServerSpec {
        ServerSpec { url: url.into(), ..ServerSpec::empty(name, server_type) }
    }

    /// A definition with only a name and a type; every other field at its default.
    pub fn empty(name: impl Into<String>, server_type: ServerType) -> ServerSpec {
        ServerSpec {
            name: name.into(),
            server_type,
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            inherit_env: true,
            pass_env: Vec::new(),
            url: String::new(),
            headers: BTreeMap::new(),
            auto_start: false,
            timeout: None,
            tool_prefix: String::new(),
            description: String::new(),
            auth: None,
        }
    }

    /// True for `streamable-http` and `sse`.
    pub fn is_remote(&self) -> bool {
        self.server_type.is_remote()
    }

    /// The connect-and-initialize timeout: `timeout` seconds, or the type's default.
    pub fn connect_timeout(&self) -> Duration {
        match self.timeout {
            Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
            Some(_) | None => self.server_type.default_timeout(),
        }
    }

    /// Checks every rule of SPEC §1 and returns the definition as a [`ValidSpec`].
    ///
    /// # Errors
    /// As [`ServerSpec::validate`]; the definition is dropped then.
    pub fn validated(self) -> Result<ValidSpec, Vec<ValidationError>> {
        self.validate()?;
        Ok(ValidSpec(self))
    }

    /// `url` as it may be shown (status, events, errors, logs): the userinfo
    /// password, every query value and the fragment replaced by `<redacted>`; the
    /// user name and the query's names stay visible.
    pub fn display_url(&self) -> String {
        if self.url.is_empty() { String::new() } else { redact_url(&self.url) }
    }

    /// Checks every rule of SPEC §1 and returns every violation, in field order.
    ///
    /// # Errors
    /// One [`ValidationError`] per problem; an empty list is never returned.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut v = Validator { server: &self.name, errors: Vec::new() };
        self.check_name(&mut v);
        match self.server_type {
            ServerType::Stdio => self.check_stdio(&mut v),
            ServerType::StreamableHttp | ServerType::Sse => self.check_remote(&mut v),
        }
        if let Some(t) = self.timeout
            && !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&t)
        {
            v.push(
                Field::Timeout,
                format!("must be between {MIN_TIMEOUT_SECS} and {MAX_TIMEOUT_SECS} seconds, got {t}"),
            );
        }
        if !self.tool_prefix.is_empty() && !is_identifier(&self.tool_prefix, IdentStart::Letter, "_-") {
            v.push(Field::ToolPrefix, "must match ^[A-Za-z][A-Za-z0-9_-]*$");
        }
        let desc_len = self.description.chars().count();
        if desc_len > MAX_DESCRIPTION_LEN {
            v.push(Field::Description, format!("must be at most {MAX_DESCRIPTION_LEN} characters, got {desc_len}"));
        }
        if let Some(auth) = &self.auth {
            check_auth(auth, self.server_type, &mut v);
        }
        if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
    }

    fn check_name(&self, v: &mut Validator<'_>) {
        if self.name.is_empty() {
            v.push_exact(Field::Name, "MCP server name is required");
            return;
        }
        let len = self.name.chars().count();
        if len > MAX_NAME_LEN || !is_identifier(&self.name, IdentStart::Alphanumeric, "_.-") {
            v.push(
                Field::Name,
                format!("must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$ and be at most {MAX_NAME_LEN} characters"),
            );
        }
    }

    fn check_stdio(&self, v: &mut Validator<'_>) {
        if self.command.trim().is_empty() {
            v.push_exact(Field::Command, "command is required for stdio type");
        } else if self.command.contains('\0') {
            v.push(Field::Command, "must not contain a NUL byte");
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            v.push(Field::Args, "must not contain a NUL byte");
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                v.push(Field::Env, format!("invalid variable name {key:?}: must be non-empty, without '=' or NUL"));
            }
            if value.contains('\0') {
                v.push(Field::Env, format!("value of {key} must not contain a NUL byte"));
            }
        }
        if self.cwd.as_deref().is_some_and(str::is_empty) {
            v.push(Field::Cwd, "must not be empty when set");
        }
        for name in &self.pass_env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                v.push(Field::PassEnv, format!("invalid variable name {name:?}"));
            }
        }
        if !self.url.is_empty() {
            v.push_exact(Field::Url, "url field is only allowed when type is streamable-http or sse");
        }
        if !self.headers.is_empty() {
            v.push_exact(Field::Headers, "headers field is only allowed when type is streamable-http or sse");
        }
    }

    fn check_remote(&self, v: &mut Validator<'_>) {
        if self.url.is_empty() {
            v.push_exact(Field::Url, "url is required for streamable-http and sse types");
        } else if let Err(why) = check_http_url(&self.url) {
            v.push(Field::Url, why);
        }
        for (name, value) in &self.headers {
            if !is_header_name(name) {
                v.push(Field::Headers, format!("invalid header name {name:?}"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                v.push(Field::Headers, format!("{name} is managed by the transport and cannot be configured"));
            }
            if !is_header_value(value) {
                // The value itself is a secret: name the header, never the value.
                v.push(
                    Field::Headers,
                    format!("value of {name} must be visible ASCII, space or tab, without CR or LF"),
                );
            }
        }
        let stdio_only = [
            (!self.command.is_empty(), Field::Command, "command field is only allowed when type is stdio"),
            (!self.args.is_empty(), Field::Args, "args field is only allowed when type is stdio"),
            (!self.env.is_empty(), Field::Env, "env field is only allowed when type is stdio"),
            (self.cwd.is_some(), Field::Cwd, "cwd field is only allowed when type is stdio"),
            (!self.inherit_env, Field::InheritEnv, "inherit_env field is only allowed when type is stdio"),
            (!self.pass_env.is_empty(), Field::PassEnv, "pass_env field is only allowed when type is stdio"),
        ];
        for (present, field, message) in stdio_only {
            if present {
                v.push_exact(field, message);
            }
        }
    }
}

/// A [`ServerSpec`] that passed [`ServerSpec::validate`]. Only
/// [`ServerSpec::validated`] makes one, so code that holds a `ValidSpec` never
/// validates again: a reload validates each definition once.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidSpec(ServerSpec);

impl ValidSpec {
    /// The definition.
    pub fn spec(&self) -> &ServerSpec {
        &self.0
    }

    /// The definition, to edit (it must be validated again to become a `ValidSpec`).
    pub fn into_inner(self) -> ServerSpec {
        self.0
    }
}

impl std::ops::Deref for ValidSpec {
    type Target = ServerSpec;
    fn deref(&self) -> &ServerSpec {
        &self.0
    }
}

impl AsRef<ServerSpec> for ValidSpec {
    fn as_ref(&self) -> &ServerSpec {
        &self.0
    }
}

impl fmt::Debug for ValidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<ServerSpec> for ValidSpec {
    type Error = Vec<ValidationError>;
    fn try_from(spec: ServerSpec) -> Result<ValidSpec, Vec<ValidationError>> {
        spec.validated()
    }
}

impl<'de> Deserialize<'de> for ValidSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ServerSpec::deserialize(d)?.validated().map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            serde::de::Error::custom(text.join("; "))
        })
    }
}

fn check_auth(auth: &AuthConfig, server_type: ServerType, v: &mut Validator<'_>) {
    if !server_type.is_remote() {
        if auth.kind != AuthType::None
            || auth.forward_token
            || auth.token_exchange.is_some()
            || auth.authorization_server.is_some()
            || auth.has_client_settings()
        {
            v.push_exact(
                Field::Auth,
                "auth configuration is only supported for remote server types (streamable-http or sse)",
            );
        }
        return;
    }
    if let Some(server) = &auth.authorization_server {
        if auth.kind != AuthType::Oauth {
            v.push_exact(Field::Auth, "authorizationServer is only valid when type is oauth");
        }
        if auth.forward_token {
            v.push_exact(Field::Auth, "forwardToken bypasses per-backend OAuth; set one or the other, not both");
        }
        if auth.token_exchange.as_ref().is_some_and(|te| te.enabled) {
            v.push_exact(
                Field::Auth,
                "tokenExchange has its own issuer/endpoint config; set one or the other, not both",
            );
        }
        if let Err(why) = check_issuer(&server.issuer) {
            v.push(Field::Auth, format!("authorization_server.issuer {why}"));
        }
    }
    check_oauth_client(auth, v);
    if let Some(te) = &auth.token_exchange {
        for (value, what) in [(&te.token_endpoint, "token_endpoint"), (&te.expected_issuer, "expected_issuer")] {
            if te.enabled && (!value.starts_with("https://") || check_http_url(value).is_err()) {
                v.push(Field::Auth, format!("token_exchange.{what} must be an https:// URL"));
            }
        }
        if !te.connector_id.is_empty() && !is_identifier(&te.connector_id, IdentStart::Letter, "_-") {
            v.push(Field::Auth, "token_exchange.connector_id must match ^[A-Za-z][A-Za-z0-9_-]*$");
        }
    }
}

/// The OAuth client settings: only with `type = "oauth"`, and consistent.
fn check_oauth_client(auth: &AuthConfig, v: &mut Validator<'_>) {
    let set = [
        ("client_id", auth.client_id.is_some()),
        ("client_secret_env", auth.client_secret_env.is_some()),
        ("client_metadata_url", auth.client_metadata_url.is_some()),
        ("scopes", !auth.scopes.is_empty()),
        ("redirect_port", auth.redirect_port.is_some()),
        ("grant", auth.grant != Grant::AuthorizationCode),
    ];
    if auth.kind != AuthType::Oauth {
        for (what, _) in set.iter().filter(|(_, is_set)| *is_set) {
            v.push(Field::Auth, format!("auth.{what} is only valid when auth.type is \"oauth\""));
        }
        return;
    }
    if auth.client_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        v.push(Field::Auth, "auth.client_id must not be empty");
    }
    if let Some(name) = &auth.client_secret_env {
        if !is_identifier(name, IdentStart::LetterOrUnderscore, "_") {
            v.push(Field::Auth, "auth.client_secret_env must name an environment variable (^[A-Za-z_][A-Za-z0-9_]*$)");
        }
        if auth.client_id.is_none() {
            v.push(Field::Auth, "auth.client_secret_env needs auth.client_id: a secret belongs to a registered client");
        }
    }
    if let Some(url) = &auth.client_metadata_url {
        let path = url.strip_prefix("https://").and_then(|rest| rest.find('/').map(|i| &rest[i..]));
        if check_http_url(url).is_err() || path.is_none_or(|p| p == "/") {
            v.push(Field::Auth, "auth.client_metadata_url must be an https:// URL with a path");
        }
    }
    for scope in &auth.scopes {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\') {
            v.push(Field::Auth, format!("auth.scopes: {scope:?} is not a scope (no spaces, quotes or backslashes)"));
        }
    }
    if auth.redirect_port == Some(0) {
        v.push(Field::Auth, "auth.redirect_port must be 1 to 65535 (leave it out for any free port)");
    }
    if auth.grant == Grant::ClientCredentials && (auth.client_id.is_none() || auth.client_secret_env.is_none()) {
        v.push(Field::Auth, "auth.grant = \"client_credentials\" needs auth.client_id and auth.client_secret_env");
    }
}

/// Checks an `http://` / `https://` URL with a host and no whitespace (the CRD's
/// `^https?://[^\s/$.?#].[^\s]*$`), parsed as a WHATWG URL (so the port must be a
/// number up to 65535 and the host must be a valid host).
fn check_http_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    if rest.starts_with(['/', '.', '$', '?', '#']) || rest.is_empty() {
        return Err("must name a host");
    }
    let parsed = url::Url::parse(url).map_err(|e| match e {
        url::ParseError::InvalidPort => "has an invalid port (a number from 0 to 65535)",
        url::ParseError::EmptyHost => "must name a host",
        url::ParseError::InvalidIpv4Address | url::ParseError::InvalidIpv6Address => "has an invalid IP address",
        url::ParseError::InvalidDomainCharacter | url::ParseError::IdnaError => "has an invalid host name",
        _ => "is not a valid URL",
    })?;
    match parsed.host_str() {
        Some(host) if !host.is_empty() && !host.starts_with('.') => Ok(()),
        Some(_) | None => Err("must name a host"),
    }
}

/// `url` as it may be shown: the userinfo password, every query value and the
/// fragment replaced by `<redacted>`; the scheme, user name, host, port, path and
/// query names stay. A text that is not a URL is shown as `<invalid URL>`, since
/// it might hold anything.
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "<invalid URL>".to_owned();
    };
    let mut out = format!("{}://", parsed.scheme());
    if !parsed.username().is_empty() || parsed.password().is_some() {
        out.push_str(parsed.username());
        if parsed.password().is_some() {
            out.push(':');
            out.push_str(REDACTED);
        }
        out.push('@');
    }
    if let Some(host) = parsed.host_str() {
        out.push_str(host);
    }
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(parsed.path());
    if let Some(query) = parsed.query() {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None if pair.is_empty() => String::new(),
                // A bare word may be a token (`?s3cret`): only names with `=` stay.
                None => REDACTED.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if parsed.fragment().is_some() {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

fn check_issuer(issuer: &str) -> Result<(), &'static str> {
    if !issuer.starts_with("https://") || check_http_url(issuer).is_err() {
        return Err("must be an https:// URL");
    }
    if issuer.ends_with('/') || issuer.contains(['?', '#']) {
        return Err("must not end with '/' or carry a query or fragment");
    }
    Ok(())
}

/// An RFC 9110 token: the characters allowed in a header name.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, space and tab (no CR, LF, NUL or other controls).
fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

#[derive(Clone, Copy)]
enum IdentStart {
    Letter,
    LetterOrUnderscore,
    Alphanumeric,
}

fn is_identifier(s: &str, start: IdentStart, extra: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    let first_ok = match start {
        IdentStart::Letter => first.is_ascii_alphabetic(),
        IdentStart::LetterOrUnderscore => first.is_ascii_alphabetic() || first == '_',
        IdentStart::Alphanumeric => first.is_ascii_alphanumeric(),
    };
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// A field of [`ServerSpec`], as named in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `name`
    Name,
    /// `type`
    Type,
    /// `command`
    Command,
    /// `args`
    Args,
    /// `env`
    Env,
    /// `cwd`
    Cwd,
    /// `inherit_env`
    InheritEnv,
    /// `pass_env`
    PassEnv,
    /// `url`
    Url,
    /// `headers`
    Headers,
    /// `auto_start`
    AutoStart,
    /// `timeout`
    Timeout,
    /// `tool_prefix`
    ToolPrefix,
    /// `description`
    Description,
    /// `auth`
    Auth,
}

impl Field {
    /// The field's name in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Type => "type",
            Field::Command => "command",
            Field::Args => "args",
            Field::Env => "env",
            Field::Cwd => "cwd",
            Field::InheritEnv => "inherit_env",
            Field::PassEnv => "pass_env",
            Field::Url => "url",
            Field::Headers => "headers",
            Field::AutoStart => "auto_start",
            Field::Timeout => "timeout",
            Field::ToolPrefix => "tool_prefix",
            Field::Description => "description",
            Field::Auth => "auth",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found by [`ServerSpec::validate`].
///
/// `message` is the bare rule (the reference's exact text where it has one);
/// `Display` adds the server and the field: `server "github": url: must start with http:// or https://`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// The server's name as given (empty when the name is missing).
    pub server: String,
    /// The field at fault.
    pub field: Field,
    /// What is wrong, without the server or field.
    pub message: String,
    /// Whether `message` already names the field (the reference's texts do).
    #[serde(skip)]
    self_describing: bool,
}

impl ValidationError {
    /// A problem with `field` of `server`.
    pub fn new(server: impl Into<String>, field: Field, message: impl Into<String>) -> ValidationError {
        ValidationError { server: server.into(), field, message: message.into(), self_describing: false }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.server.is_empty() {
            write!(f, "server {:?}: ", self.server)?;
        }
        if self.self_describing { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

impl std::error::Error for ValidationError {}

impl From<UnsupportedType> for ValidationError {
    fn from(e: UnsupportedType) -> ValidationError {
        ValidationError { server: String::new(), field: Field::Type, message: e.to_string(), self_describing: true }
    }
}

struct Validator<'a> {
    server: &'a str,
    errors: Vec<ValidationError>,
}

impl Validator<'_> {
    fn push(&mut self, field: Field, message: impl Into<String>) {
        self.errors.push(ValidationError::new(self.server, field, message));
    }

    /// A message that names its field itself (the reference's texts).
    fn push_exact(&mut self, field: Field, message: &str) {
        self.errors.push(ValidationError {
            server: self.server.to_owned(),
            field,
            message: message.to_owned(),
            self_describing: true,
        });
    }
}

/// Deserializes `null` as the type's default, so that a missing list, `null` and `[]` are equal.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn default_true() -> bool {
    true
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_false(b: &bool) -> bool {
    !*b
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_true(b: &bool) -> bool {
    *b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(spec: &ServerSpec) -> Vec<String> {
        spec.validate().err().unwrap_or_default().into_iter().map(|e| e.message).collect()
    }

    // Reference §8.1 TestValidateConfiguration.
    #[test]
    fn valid_stdio_server() {
        assert_eq!(ServerSpec::stdio("test-server", "echo").validate(), Ok(()));
    }

    #[test]
    fn stdio_server_missing_command() {
        assert_eq!(messages(&ServerSpec::stdio("test-server", "")), ["command is required for stdio type"]);
    }

    #[test]
    fn valid_streamable_http_server() {
        let mut spec = ServerSpec::remote("test-server", ServerType::StreamableHttp, "http://localhost:8080/mcp");
        spec.timeout = Some(30);
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn streamable_http_server_missing_url() {
        let spec = ServerSpec::remote("test-server", ServerType::StreamableHttp, "");
        assert_eq!(messages(&spec), ["url is required for streamable-http and sse types"]);
    }

    #[test]
    fn streamable_http_server_with_default_timeout() {
        // The reference's `timeout: 0` means "unset"; here that is `None`.
        let spec = ServerSpec::remote("test-server", ServerType::StreamableHttp, "http://localhost:8080/mcp");
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.connect_timeout(), DEFAULT_REMOTE_TIMEOUT);
    }

    #[test]
    fn default_timeouts_match_the_reference() {
        assert_eq!(DEFAULT_REMOTE_TIMEOUT, Duration::from_secs(30));
        assert_eq!(DEFAULT_STDIO_INIT_TIMEOUT, Duration::from_secs(10));
        assert_eq!(ServerSpec::stdio("a", "b").connect_timeout(), Duration::from_secs(10));
        let mut spec = ServerSpec::remote("a", ServerType::Sse, "http://h/sse");
        spec.timeout = Some(60);
        assert_eq!(spec.connect_timeout(), Duration::from_secs(60));
        spec.timeout = Some(1);
        assert_eq!(spec.connect_timeout(), Duration::from_secs(1));
        // The reference's zero, "unset", read from a file: the type's default.
        spec.timeout = Some(0);
        assert_eq!(spec.connect_timeout(), DEFAULT_REMOTE_TIMEOUT);
    }

    #[test]
    fn token_exchange_debug_shows_the_settings_and_never_the_credentials() {
        let te = TokenExchange {
            enabled: true,
            token_endpoint: "https://dex/token".into(),
            connector_id: "github".into(),
            resolved: Some(ClientCredentials { client_id: "id-1".into(), client_secret: "hunter2".into() }),
            ..TokenExchange::default()
        };
        let text = format!("{te:?}");
        assert!(text.starts_with("TokenExchange {"), "{text}");
        assert!(text.contains("https://dex/token") && text.contains("github") && text.contains("<redacted>"), "{text}");
        assert!(!text.contains("hunter2") && !text.contains("id-1"), "{text}");
    }

    #[test]
    fn name_is_required() {
        assert_eq!(messages(&ServerSpec::stdio("", "echo")), ["MCP server name is required"]);
        let err = &ServerSpec::stdio("", "echo").validate().unwrap_err()[0];
        assert_eq!(err.to_string(), "MCP server name is required");
    }

    #[test]
    fn name_pattern_and_length() {
        for bad in ["-x", "a b", "a/b", "ä", &"a".repeat(65)] {
            let errs = ServerSpec::stdio(bad, "echo").validate().unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(errs[0].field, Field::Name);
        }
        for good in ["a", "0", "a.b-c_d", &"a".repeat(64)] {
            assert_eq!(ServerSpec::stdio(good, "echo").validate(), Ok(()), "{good}");
        }
    }

    #[test]
    fn unsupported_type_message_is_the_references() {
        let err = ServerType::parse("websocket").unwrap_err();
        assert_eq!(err.to_string(), "unsupported MCP server type: websocket (supported: stdio, streamable-http, sse)");
        let json = r#"{"name":"x","type":"grpc","command":"a"}"#;
        let err = serde_json::from_str::<ServerSpec>(json).unwrap_err().to_string();
        assert!(err.starts_with("unsupported MCP server type: grpc (supported: stdio, streamable-http, sse)"), "{err}");
    }

    #[test]
    fn timeout_must_be_between_1_and_300() {
        for (t, ok) in [(0, false), (1, true), (300, true), (301, false)] {
            let mut spec = ServerSpec::stdio("s", "echo");
            spec.timeout = Some(t);
            assert_eq!(spec.validate().is_ok(), ok, "timeout {t}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once_and_names_server_and_field() {
        let mut spec = ServerSpec::remote("api", ServerType::Sse, "ftp://x");
        spec.args = vec!["--x".into()];
        spec.timeout = Some(0);
        spec.tool_prefix = "9lives".into();
        spec.description = "d".repeat(501);
        let errs = spec.validate().unwrap_err();
        let fields: Vec<Field> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, [Field::Url, Field::Args, Field::Timeout, Field::ToolPrefix, Field::Description]);
        assert_eq!(errs[0].to_string(), "server \"api\": url: must start with http:// or https://");
        assert_eq!(errs[1].to_string(), "server \"api\": args field is only allowed when type is stdio");
    }

    #[test]
    fn stdio_only_and_remote_only_fields() {
        let mut stdio = ServerSpec::stdio("s", "echo");
        stdio.headers.insert("X-Key".into(), "v".into());
        stdio.url = "http://x".into();
        assert_eq!(
            messages(&stdio),
            [
                "url field is only allowed when type is streamable-http or sse",
                "headers field is only allowed when type is streamable-http or sse"
            ]
        );
        let mut remote = ServerSpec::remote("r", ServerType::StreamableHttp, "https://x/mcp");
        remote.command = "echo".into();
        remote.env.insert("A".into(), "b".into());
        remote.cwd = Some("/tmp".into());
        assert_eq!(remote.validate().unwrap_err().len(), 3);
    }

    #[test]
    fn urls() {
        for good in [
            "http://localhost:8080/mcp",
            "https://example.com",
            "http://127.0.0.1:1",
            "http://[::1]:80/x",
            "https://user@h/p?q#f",
        ] {
            assert_eq!(check_http_url(good), Ok(()), "{good}");
        }
        for bad in ["", "localhost", "ftp://x", "http://", "http:///path", "http://a b", "https://.x", "http://:80"] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }

    /// One definition per rule, each broken in one way: exactly that error.
    #[test]
    fn every_rule_rejects_what_it_should_and_nothing_else() {
        type Edit = fn(&mut ServerSpec);
        let stdio: Vec<(Edit, Field, &str)> = vec![
            (|s| s.command = "   ".into(), Field::Command, "command is required for stdio type"),
            (|s| s.command = "a\0b".into(), Field::Command, "NUL"),
            (|s| s.args = vec!["ok".into(), "x\0".into()], Field::Args, "NUL"),
            (|s| _ = s.env.insert(String::new(), "v".into()), Field::Env, "invalid variable name"),
            (|s| _ = s.env.insert("A=B".into(), "v".into()), Field::Env, "invalid variable name"),
            (|s| _ = s.env.insert("A\0".into(), "v".into()), Field::Env, "invalid variable name"),
            (|s| _ = s.env.insert("A".into(), "v\0".into()), Field::Env, "value of A"),
            (|s| s.cwd = Some(String::new()), Field::Cwd, "must not be empty"),
            (|s| s.pass_env = vec![String::new()], Field::PassEnv, "invalid variable name"),
            (|s| s.pass_env = vec!["A=1".into()], Field::PassEnv, "invalid variable name"),
            (|s| s.pass_env = vec!["A\0".into()], Field::PassEnv, "invalid variable name"),
            (|s| s.timeout = Some(301), Field::Timeout, "between 1 and 300"),
            (|s| s.tool_prefix = "_x".into(), Field::ToolPrefix, "must match"),
            (|s| s.tool_prefix = "a.b".into(), Field::ToolPrefix, "must match"),
            (|s| s.description = "d".repeat(501), Field::Description, "at most 500"),
            (|s| s.name = "a".repeat(65), Field::Name, "at most 64"),
            (|s| s.name = "_a".into(), Field::Name, "must match"),
        ];
        let remote: Vec<(Edit, Field, &str)> = vec![
            (|s| s.url = String::new(), Field::Url, "url is required for streamable-http and sse types"),
            (|s| s.url = "https://h/\u{7f}".into(), Field::Url, "control characters"),
            (|s| _ = s.headers.insert("Bad Name".into(), "v".into()), Field::Headers, "invalid header name"),
            (|s| _ = s.headers.insert(String::new(), "v".into()), Field::Headers, "invalid header name"),
            (|s| _ = s.headers.insert("ACCEPT".into(), "v".into()), Field::Headers, "managed by the transport"),
            (|s| _ = s.headers.insert("X".into(), "a\u{7f}".into()), Field::Headers, "visible ASCII"),
            (|s| _ = s.headers.insert("X".into(), "a\nb".into()), Field::Headers, "visible ASCII"),
            (|s| _ = s.headers.insert("X".into(), "é".into()), Field::Headers, "visible ASCII"),
            (|s| s.command = "c".into(), Field::Command, "command field is only allowed"),
            (|s| s.args = vec!["a".into()], Field::Args, "args field is only allowed"),
            (|s| _ = s.env.insert("A".into(), "v".into()), Field::Env, "env field is only allowed"),
            (|s| s.cwd = Some("/".into()), Field::Cwd, "cwd field is only allowed"),
            (|s| s.inherit_env = false, Field::InheritEnv, "inherit_env field is only allowed"),
            (|s| s.pass_env = vec!["A".into()], Field::PassEnv, "pass_env field is only allowed"),
            (
                |s| {
                    s.auth = Some(AuthConfig {
                        kind: AuthType::Oauth,
                        authorization_server: Some(AuthorizationServer {
                            issuer: "https://dex.example?x=1".into(),
                            scopes: vec![],
                        }),
                        ..AuthConfig::default()
                    })
                },
                Field::Auth,
                "authorization_server.issuer must not end with",
            ),
            (
                |s| {
                    s.auth = Some(AuthConfig {
                        kind: AuthType::Oauth,
                        authorization_server: Some(AuthorizationServer { issuer: "http://dex".into(), scopes: vec![] }),
                        ..AuthConfig::default()
                    })
                },
                Field::Auth,
                "must be an https:// URL",
            ),
            (
                |s| {
                    s.auth = Some(AuthConfig {
                        token_exchange: Some(TokenExchange {
                            enabled: true,
                            token_endpoint: "http://dex/token".into(),
                            expected_issuer: "https://dex".into(),
                            ..TokenExchange::default()
                        }),
                        ..AuthConfig::default()
                    })
                },
                Field::Auth,
                "token_exchange.token_endpoint",
            ),
            (
                |s| {
                    s.auth = Some(AuthConfig {
                        token_exchange: Some(TokenExchange {
                            enabled: true,
                            token_endpoint: "https://dex/token".into(),
                            expected_issuer: "dex".into(),
                            ..TokenExchange::default()
                        }),
                        ..AuthConfig::default()
                    })
                },
                Field::Auth,
                "token_exchange.expected_issuer",
            ),
            (
                |s| {
                    s.auth = Some(AuthConfig {
                        token_exchange: Some(TokenExchange { connector_id: "1x".into(), ..TokenExchange::default() }),
                        ..AuthConfig::default()
                    })
                },
                Field::Auth,
                "connector_id",
            ),
        ];
        for (base, cases) in [
            (ServerSpec::stdio("s", "echo"), stdio),
            (ServerSpec::remote("r", ServerType::StreamableHttp, "https://x/mcp"), remote),
        ] {
            assert_eq!(base.validate(), Ok(()));
            for (edit, field, text) in cases {
                let mut spec = base.clone();
                edit(&mut spec);
                let errors = spec.validate().unwrap_err();
                assert_eq!(errors.len(), 1, "{spec:?}: {errors:?}");
                assert_eq!(errors[0].field, field, "{errors:?}");
                assert!(errors[0].to_string().contains(text), "{text:?} not in {}", errors[0]);
            }
        }
    }

    /// The edges of each rule are accepted.
    #[test]
    fn the_edges_of_every_rule_are_accepted() {
        let mut s = ServerSpec::stdio("a", "echo");
        s.description = "d".repeat(500);
        s.tool_prefix = "A-_9".into();
        s.timeout = Some(1);
        s.env.insert("A".into(), "value with = and spaces".into());
        s.cwd = Some("/".into());
        s.pass_env = vec!["HTTPS_PROXY".into()];
        assert_eq!(s.validate(), Ok(()));
        let mut r = ServerSpec::remote("9", ServerType::Sse, "http://h/p");
        r.headers.insert("X-Tab".into(), "a\tb ~".into());
        r.auth = Some(AuthConfig {
            kind: AuthType::Oauth,
            authorization_server: Some(AuthorizationServer { issuer: "https://dex.example".into(), scopes: vec![] }),
            token_exchange: Some(TokenExchange { connector_id: "gh_1".into(), ..TokenExchange::default() }),
            ..AuthConfig::default()
        });
        assert_eq!(r.validate(), Ok(()));
        // A disabled token exchange needs no endpoints.
        r.auth = Some(AuthConfig { token_exchange: Some(TokenExchange::default()), ..AuthConfig::default() });
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn type_names_and_defaults() {
        for t in ServerType::ALL {
            assert_eq!(ServerType::parse(t.as_str()), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            assert_eq!(t.as_str().parse::<ServerType>(), Ok(t));
        }
        assert!(
            !ServerType::Stdio.is_remote() && ServerType::Sse.is_remote() && ServerType::StreamableHttp.is_remote()
        );
        assert_eq!(ServerType::Sse.default_timeout(), DEFAULT_REMOTE_TIMEOUT);
        assert_eq!(Field::PassEnv.to_string(), "pass_env");
        let e = ValidationError::new("api", Field::Url, "bad");
        assert_eq!(e.to_string(), "server \"api\": url: bad");
        assert_eq!(ValidationError::new("", Field::Url, "bad").to_string(), "url: bad");
    }

    #[test]
    fn ports_and_hosts_must_be_valid() {
        for bad in ["http://127.0.0.1:99999/mcp", "http://h:65536", "http://h:port/x", "http://300.1.1.1/"] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
        assert_eq!(check_http_url("http://h:65535/x"), Ok(()));
        let spec = ServerSpec::remote("r", ServerType::StreamableHttp, "http://127.0.0.1:99999/mcp");
        assert_eq!(messages(&spec), ["has an invalid port (a number from 0 to 65535)"]);
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        let cases = [
            ("https://api.example/mcp", "https://api.example/mcp"),
            ("http://bob:s3cret@h:8080/p", "http://bob:<redacted>@h:8080/p"),
            ("http://bob@h/p", "http://bob@h/p"),
            ("http://h/p?token=abc&x=1", "http://h/p?token=<redacted>&x=<redacted>"),
            ("http://h/p?s3cret", "http://h/p?<redacted>"),
            ("http://h/p?a=1&&b=2", "http://h/p?a=<redacted>&&b=<redacted>"),
            ("http://h/p#access_token=abc", "http://h/p#<redacted>"),
            ("not a url s3cret", "<invalid URL>"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let spec = ServerSpec::remote("r", ServerType::StreamableHttp, "http://u:pw@h/mcp?key=k");
        assert!(!format!("{spec:?}").contains("pw") && !format!("{spec:?}").contains("key=k"));
        assert_eq!(spec.display_url(), "http://u:<redacted>@h/mcp?key=<redacted>");
    }

    #[test]
    fn url_parse_errors_have_their_own_words() {
        assert_eq!(check_http_url("http://:80/x"), Err("must name a host"));
        assert_eq!(check_http_url("http://1.2.3.256/"), Err("has an invalid IP address"));
        assert_eq!(check_http_url("http://[::g]/"), Err("has an invalid IP address"));
        assert_eq!(check_http_url("http://exa<mple.com/"), Err("has an invalid host name"));
        assert_eq!(check_http_url("http://%2eexample.com/"), Err("must name a host"));
    }

    #[test]
    fn any_auth_setting_on_a_stdio_server_is_an_error() {
        let only: [fn(&mut AuthConfig); 4] = [
            |a| a.kind = AuthType::Oauth,
            |a| a.forward_token = true,
            |a| a.token_exchange = Some(TokenExchange::default()),
            |a| {
                a.authorization_server = Some(AuthorizationServer { issuer: "https://dex".into(), scopes: vec![] });
            },
        ];
        for set in only {
            let mut auth = AuthConfig::default();
            set(&mut auth);
            let mut spec = ServerSpec::stdio("fs", "echo");
            spec.auth = Some(auth);
            assert_eq!(
                messages(&spec),
                ["auth configuration is only supported for remote server types (streamable-http or sse)"],
                "{spec:?}"
            );
        }
        let mut spec = ServerSpec::stdio("fs", "echo");
        spec.auth = Some(AuthConfig::default());
        assert_eq!(spec.validate(), Ok(()), "an empty auth table is no auth");
    }

    #[test]
    fn boolean_defaults_in_files_and_in_what_is_written_back() {
        let spec: ServerSpec = serde_json::from_str(r#"{"name": "fs", "type": "stdio", "command": "echo"}"#).unwrap();
        assert!(spec.inherit_env, "inherit_env defaults to true");
        assert!(!spec.auto_start, "auto_start defaults to false");
        let json = serde_json::to_value(&spec).unwrap();
        assert!(
            json.get("inherit_env").is_none() && json.get("auto_start").is_none(),
            "defaults are not written: {json}"
        );
        let mut changed = spec.clone();
        changed.inherit_env = false;
        changed.auto_start = true;
        let json = serde_json::to_value(&changed).unwrap();
        assert_eq!((json["inherit_env"].as_bool(), json["auto_start"].as_bool()), (Some(false), Some(true)));
        let mut auth = AuthConfig::default();
        assert!(serde_json::to_value(&auth).unwrap().get("forward_token").is_none());
        auth.forward_token = true;
        assert_eq!(serde_json::to_value(&auth).unwrap()["forward_token"], true);
    }

    #[test]
    fn a_valid_spec_debugs_as_its_definition() {
        let spec = ServerSpec::stdio("fs", "echo");
        assert_eq!(format!("{:?}", spec.clone().validated().unwrap()), format!("{spec:?}"));
    }

    #[test]
    fn only_validated_specs_become_valid_specs() {
        let good = ServerSpec::stdio("fs", "echo").validated().unwrap();
        assert_eq!(good.command, "echo");
        assert_eq!(good.spec(), &ServerSpec::stdio("fs", "echo"));
        assert_eq!(good.clone().into_inner(), ServerSpec::stdio("fs", "echo"));
        assert!(ValidSpec::try_from(ServerSpec::stdio("fs", "")).is_err());
        let parsed: ValidSpec = serde_json::from_str(r#"{"name":"x","type":"stdio","command":"c"}"#).unwrap();
        assert_eq!(parsed.name, "x");
        let err = serde_json::from_str::<ValidSpec>(r#"{"name":"x","type":"stdio"}"#).unwrap_err();
        assert!(err.to_string().contains("command is required for stdio type"), "{err}");
    }

    #[test]
    fn header_rules_never_echo_the_value() {
        let mut spec = ServerSpec::remote("r", ServerType::StreamableHttp, "https://x/mcp");
        spec.headers.insert("Authorization".into(), "Bearer s3cret\r\nX: y".into());
        spec.headers.insert("bad name".into(), "v".into());
        spec.headers.insert("Mcp-Session-Id".into(), "v".into());
        let errs = spec.validate().unwrap_err();
        assert_eq!(errs.len(), 3);
        assert!(errs.iter().all(|e| !e.to_string().contains("s3cret")));
    }

    #[test]
    fn auth_only_for_remote_types() {
        let mut spec = ServerSpec::stdio("s", "echo");
        spec.auth = Some(AuthConfig { kind: AuthType::Oauth, ..AuthConfig::default() });
        assert_eq!(
            messages(&spec),
            ["auth configuration is only supported for remote server types (streamable-http or sse)"]
        );
        spec.auth = Some(AuthConfig::default());
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn auth_cross_field_rules() {
        let mut spec = ServerSpec::remote("r", ServerType::StreamableHttp, "https://x/mcp");
        spec.auth = Some(AuthConfig {
            kind: AuthType::None,
            forward_token: true,
            authorization_server: Some(AuthorizationServer { issuer: "https://dex.example/".into(), scopes: vec![] }),
            token_exchange: Some(TokenExchange { enabled: true, ..TokenExchange::default() }),
            ..AuthConfig::default()
        });
        let got = messages(&spec);
        assert_eq!(
            got[..3],
            [
                "authorizationServer is only valid when type is oauth",
                "forwardToken bypasses per-backend OAuth; set one or the other, not both",
                "tokenExchange has its own issuer/endpoint config; set one or the other, not both",
            ]
        );
        assert!(got[3].contains("issuer"), "{got:?}");
    }

    #[test]
    fn nil_and_empty_lists_and_maps_are_equal() {
        let a: ServerSpec = serde_json::from_str(r#"{"name":"x","type":"stdio","command":"c"}"#).unwrap();
        let b: ServerSpec = serde_json::from_str(
            r#"{"name":"x","type":"stdio","command":"c","args":null,"env":null,"headers":{},"pass_env":[]}"#,
        )
        .unwrap();
        let c: ServerSpec =
            serde_json::from_str(r#"{"name":"x","type":"stdio","command":"c","args":[],"env":{}}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn debug_redacts_env_and_header_values() {
        let mut spec = ServerSpec::remote("r", ServerType::StreamableHttp, "https://x/mcp");
        spec.headers.insert("Authorization".into(), "Bearer s3cret".into());
        spec.env.insert("TOKEN".into(), "hunter2".into());
        let dbg = format!("{spec:?}");
        assert!(dbg.contains("Authorization") && dbg.contains("TOKEN"));
        assert!(!dbg.contains("s3cret") && !dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn serde_round_trip_keeps_every_field() {
        let mut spec = ServerSpec::stdio("s", "npx");
        spec.args = vec!["-y".into(), "server".into()];
        spec.env.insert("K".into(), "V".into());
        spec.cwd = Some("/srv".into());
        spec.inherit_env = false;
        spec.pass_env = vec!["HTTPS_PROXY".into()];
        spec.auto_start = true;
        spec.timeout = Some(20);
        spec.tool_prefix = "fs".into();
        spec.description = "files".into();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ServerSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<ServerSpec>(r#"{"name":"x","type":"stdio","command":"c","comand":"d"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("comand"), "{err}");
    }

    fn oauth(edit: impl FnOnce(&mut AuthConfig)) -> Vec<String> {
        let mut spec = ServerSpec::remote("s", ServerType::StreamableHttp, "https://mcp.example/mcp");
        let mut auth = AuthConfig { kind: AuthType::Oauth, ..AuthConfig::default() };
        edit(&mut auth);
        spec.auth = Some(auth);
        messages(&spec)
    }

    #[test]
    fn oauth_client_settings_are_checked_one_by_one() {
        let ok: [fn(&mut AuthConfig); 5] = [
            |_| {},
            |a| a.client_id = Some("roster".into()),
            |a| {
                a.client_id = Some("roster".into());
                a.client_secret_env = Some("_ROSTER_SECRET1".into());
                a.grant = Grant::ClientCredentials;
            },
            |a| {
                a.client_metadata_url = Some("https://roster.example/client.json".into());
                a.scopes = vec!["read".into(), "mcp:tools".into()];
                a.redirect_port = Some(65535);
            },
            |a| a.redirect_port = Some(1),
        ];
        for edit in ok {
            assert_eq!(oauth(edit), Vec::<String>::new());
        }
        type Edit = fn(&mut AuthConfig);
        let bad: [(Edit, &str); 12] = [
            (|a| a.client_id = Some(" ".into()), "auth.client_id must not be empty"),
            (|a| a.client_secret_env = Some("SECRET".into()), "needs auth.client_id"),
            (
                |a| {
                    a.client_id = Some("c".into());
                    a.client_secret_env = Some("1SECRET".into());
                },
                "must name an environment variable",
            ),
            (
                |a| {
                    a.client_id = Some("c".into());
                    a.client_secret_env = Some("A-B".into());
                },
                "must name an environment variable",
            ),
            (|a| a.client_metadata_url = Some("http://roster.example/c.json".into()), "https:// URL with a path"),
            (|a| a.client_metadata_url = Some("https://roster.example/".into()), "https:// URL with a path"),
            (|a| a.client_metadata_url = Some("https://roster.example".into()), "https:// URL with a path"),
            (|a| a.scopes = vec!["a b".into()], "\"a b\" is not a scope"),
            (|a| a.scopes = vec![String::new()], "is not a scope"),
            (|a| a.redirect_port = Some(0), "auth.redirect_port must be 1 to 65535"),
            (|a| a.grant = Grant::ClientCredentials, "needs auth.client_id and auth.client_secret_env"),
            (
                |a| {
                    a.grant = Grant::ClientCredentials;
                    a.client_id = Some("c".into());
                },
                "needs auth.client_id and auth.client_secret_env",
            ),
        ];
        for (edit, want) in bad {
            let got = oauth(edit);
            assert_eq!(got.len(), 1, "{want}: {got:?}");
            assert!(got[0].contains(want), "{want}: {got:?}");
        }
    }

    #[test]
    fn oauth_client_settings_need_type_oauth() {
        let mut spec = ServerSpec::remote("s", ServerType::Sse, "https://mcp.example/sse");
        spec.auth = Some(AuthConfig {
            client_id: Some("c".into()),
            scopes: vec!["x".into()],
            redirect_port: Some(8080),
            grant: Grant::ClientCredentials,
            client_secret_env: Some("S".into()),
            client_metadata_url: Some("https://roster.example/c.json".into()),
            ..AuthConfig::default()
        });
        let got = messages(&spec);
        let fields = ["client_id", "client_secret_env", "client_metadata_url", "scopes", "redirect_port", "grant"];
        assert_eq!(got.len(), fields.len(), "{got:?}");
        for (message, field) in got.iter().zip(fields) {
            assert!(message.contains(&format!("auth.{field} is only valid when auth.type is \"oauth\"")), "{message}");
        }
    }

    #[test]
    fn oauth_client_settings_on_stdio_are_refused_as_auth_on_stdio() {
        let mut spec = ServerSpec::stdio("s", "c");
        spec.auth = Some(AuthConfig { redirect_port: Some(1), ..AuthConfig::default() });
        assert_eq!(
            messages(&spec),
            ["auth configuration is only supported for remote server types (streamable-http or sse)"]
        );
        for auth in [
            AuthConfig { client_id: Some("c".into()), ..AuthConfig::default() },
            AuthConfig { client_secret_env: Some("c".into()), ..AuthConfig::default() },
            AuthConfig { client_metadata_url: Some("c".into()), ..AuthConfig::default() },
            AuthConfig { scopes: vec!["c".into()], ..AuthConfig::default() },
            AuthConfig { redirect_port: Some(1), ..AuthConfig::default() },
            AuthConfig { grant: Grant::ClientCredentials, ..AuthConfig::default() },
        ] {
            assert!(auth.has_client_settings(), "{auth:?}");
        }
        assert!(!AuthConfig::default().has_client_settings());
    }

    #[test]
    fn grant_reads_and_writes_its_configuration_names() {
        for grant in [Grant::AuthorizationCode, Grant::ClientCredentials] {
            let text = serde_json::to_string(&grant).unwrap();
            assert_eq!(text, format!("\"{}\"", grant.as_str()));
            assert_eq!(serde_json::from_str::<Grant>(&text).unwrap(), grant);
        }
        let auth: AuthConfig = serde_json::from_str(r#"{"type":"oauth"}"#).unwrap();
        assert_eq!(auth.grant, Grant::AuthorizationCode);
        assert!(!serde_json::to_string(&auth).unwrap().contains("grant"), "the default is not written");
    }
}
