//! # roster-auth: OAuth for remote MCP servers
//!
//! A remote MCP server that answers `401` wants the client to log in with OAuth
//! 2.1 as the MCP authorization spec describes. This crate is roster's side of
//! it, around rmcp's implementation of the protocol steps:
//!
//! - [`login`]: the server's challenge, discovery of its authorization server,
//!   client registration (pre-registered, client metadata document, dynamic
//!   registration, in that order), PKCE, a redirect listener on 127.0.0.1 that
//!   accepts one callback with the right `state`, the token exchange. Or, for
//!   `grant = "client_credentials"`, a token request with no person involved.
//! - [`Store`]: one file per (server, URL) under the user's state directory,
//!   versioned, private (0700 directory, 0600 files), written atomically.
//! - [`Tokens`]: the token a session sends, renewed before it expires and once
//!   after the server refuses it, under a cross-process lock that makes two
//!   roster processes share one refresh instead of spending a rotating refresh
//!   token twice.
//! - [`logout`]: revokes (where the authorization server can) and removes.
//!
//! Tokens, codes, verifiers and secrets never appear in this crate's errors,
//! `Debug` output or logs.

mod login;
mod store;
mod tokens;

pub use login::{
    DEFAULT_LOGIN_TIMEOUT, LoggedIn, LoginError, LoginOptions, Logout, Prompt, Revoked, Target, login, logout,
};
pub use rmcp::transport::auth::AuthError;
pub use store::{Entry, FORMAT_VERSION, FileCredentials, LOCK_WAIT, Lock, Record, Store, StoreError, URL_ONLY};
pub use tokens::{MAX_SCOPE_UPGRADES, MissingSecret, TOKEN_REQUEST_TIMEOUT, Tokens, needs_renewal};

use roster_core::{Challenge, Failure};

/// Failures of a server's token source into classes: a token that cannot be
/// renewed without a person is auth required; an authorization server that
/// cannot be reached is transient; a store that cannot be read is permanent
/// (it needs the user: `roster logout`, then `roster login`).
pub fn classify(e: &AuthError) -> Failure {
    let login = "log in again with `roster login`";
    match e {
        AuthError::AuthorizationRequired => Failure::needs_credentials(
            Challenge::default(),
            format!("the access token expired and cannot be renewed: {login}"),
        ),
        AuthError::TokenRefreshRejected(_) => Failure::needs_credentials(
            Challenge::default(),
            format!("the authorization server refused to renew the token: {login}"),
        ),
        AuthError::CredentialStoreError(why) => Failure::permanent(format!("credentials: {why}")),
        AuthError::ClientCredentialsError(why) => Failure::permanent(format!("client credentials: {why}")),
        // The rest (`TokenRefreshFailed`, `TokenExchangeFailed`, `HttpError`,
        // `DiscoveryRequestFailed`, and what rmcp may add: the type is
        // non-exhaustive) is the authorization server down, slow or odd: retried.
        _ => Failure::transient(format!("token renewal failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use roster_core::FailureKind;

    use super::*;

    #[test]
    fn token_failures_are_auth_required_only_when_a_person_must_log_in() {
        let kind = |e: AuthError| classify(&e).kind();
        assert_eq!(kind(AuthError::AuthorizationRequired), FailureKind::NeedsCredentials);
        assert_eq!(kind(AuthError::TokenRefreshRejected("invalid_grant".into())), FailureKind::NeedsCredentials);
        // The authorization server down or slow: retried with backoff, never a login.
        assert_eq!(kind(AuthError::TokenRefreshFailed("connection refused".into())), FailureKind::Transient);
        assert_eq!(kind(AuthError::TokenExchangeFailed("HTTP 503".into())), FailureKind::Transient);
        // Nothing a retry fixes: the store, the client's own settings.
        assert_eq!(kind(AuthError::CredentialStoreError("corrupt".into())), FailureKind::Permanent);
        assert_eq!(kind(AuthError::ClientCredentialsError("no secret".into())), FailureKind::Permanent);
        let text = classify(&AuthError::TokenRefreshRejected("x".into())).message;
        assert!(text.contains("roster login"), "{text}");
    }
}
