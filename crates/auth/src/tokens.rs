//! The access token of one server's sessions: read from the store, renewed
//! before it expires, renewed once more when the server refuses it.
//!
//! A renewal runs under the entry's cross-process lock and re-reads the store
//! under it: a token another roster process renewed meanwhile is adopted, not
//! renewed again (a rotating refresh token used twice revokes the whole family
//! at many providers). The renewal runs in a task of its own, so a caller that
//! goes away (a cancelled request) never aborts it halfway, after the old
//! refresh token was spent and before the new one was saved.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmcp::transport::auth::{AuthError, AuthorizationManager, ClientCredentialsConfig, OAuthClientConfig};
use roster_core::{AuthConfig, Grant};
use tracing::{debug, info, warn};

use crate::store::{Entry, Record, StoreError};

/// How long one token request may take.
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// How many times a client-credentials server asks for more scopes in a row.
pub const MAX_SCOPE_UPGRADES: u32 = 3;

/// The redirect URI given to the OAuth client when only refreshing (a refresh
/// sends none; rmcp's client wants one).
const REFRESH_REDIRECT: &str = "http://127.0.0.1/callback";

/// Whether a token received at `received_at` (seconds since the epoch) that
/// lives `expires_in` seconds is to be renewed at `now`: when less than
/// 30 s, or half its lifetime if that is shorter (but at least 1 s), is left.
/// A token of unknown age or lifetime is used until the server refuses it.
pub fn needs_renewal(received_at: Option<u64>, expires_in: Option<u64>, now: u64) -> bool {
    let (Some(received_at), Some(expires_in)) = (received_at, expires_in) else { return false };
    let left = expires_in.saturating_sub(now.saturating_sub(received_at));
    left < (expires_in / 2).clamp(1, 30)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The token source of one server (cheap to clone).
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    entry: Entry,
    http: reqwest::Client,
    grant: Grant,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Vec<String>,
    upgrades: AtomicU32,
    /// The token last read or renewed, so that a request reads no file while
    /// the token is fresh. Another process's renewal is seen when this one goes
    /// stale or is refused: both re-read the store.
    cached: Mutex<Option<Cached>>,
}

#[derive(Clone)]
struct Cached {
    token: String,
    received_at: Option<u64>,
    expires_in: Option<u64>,
}

impl Cached {
    fn of(record: &Record) -> Option<Cached> {
        Some(Cached {
            token: record.access_token()?.to_owned(),
            received_at: record.credentials.token_received_at,
            expires_in: record.expires_in(),
        })
    }

    fn fresh(&self, now: u64) -> bool {
        !needs_renewal(self.received_at, self.expires_in, now)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("entry", &self.inner.entry.path())
            .field("grant", &self.inner.grant)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.client_secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A client secret named by `client_secret_env` that is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth.client_secret_env names {0}, which is not set in roster's environment")]
pub struct MissingSecret(pub String);

impl Tokens {
    /// The token source for `entry`, with the client settings of `auth` (if the
    /// server has any) and `http` for the token requests.
    ///
    /// # Errors
    /// When `auth.client_secret_env` names a variable that is not set.
    pub fn new(entry: Entry, auth: Option<&AuthConfig>, http: reqwest::Client) -> Result<Tokens, MissingSecret> {
        let default = AuthConfig::default();
        let auth = auth.unwrap_or(&default);
        let client_secret = match &auth.client_secret_env {
            Some(name) => Some(std::env::var(name).map_err(|_| MissingSecret(name.clone()))?),
            None => None,
        };
        Ok(Tokens {
            inner: Arc::new(Inner {
                entry,
                http,
                grant: auth.grant,
                client_id: auth.client_id.clone(),
                client_secret,
                scopes: auth.scopes.clone(),
                upgrades: AtomicU32::new(0),
                cached: Mutex::new(None),
            }),
        })
    }

    /// The store entry.
    pub fn entry(&self) -> &Entry {
        &self.inner.entry
    }

    /// The token to send now: `None` when nobody has logged in (the request goes
    /// without one, and the server's 401 says what to do). Renews first when the
    /// kept token is about to expire; a client-credentials server gets its first
    /// token here.
    ///
    /// # Errors
    /// [`AuthError::AuthorizationRequired`] when the token expired and cannot be
    /// renewed without a login; `TokenRefreshFailed` when the authorization
    /// server could not be reached (transient); `CredentialStoreError` when the
    /// store cannot be read.
    pub async fn current(&self) -> Result<Option<String>, AuthError> {
        let now = now_secs();
        let cached = self.inner.cached.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let cached = match cached {
            Some(c) => Some(c),
            None => self.inner.entry.read()?.as_ref().and_then(Cached::of),
        };
        match cached {
            Some(c) if c.fresh(now) => {
                let token = c.token.clone();
                *self.inner.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
                Ok(Some(token))
            }
            Some(c) => self.renew(Some(c.token), None).await.map(Some),
            None if self.inner.grant == Grant::ClientCredentials => self.renew(None, None).await.map(Some),
            None => Ok(None),
        }
    }

    /// A token now, renewed or (client credentials) requested unless the kept
    /// one is fresh: what `roster login` does for a client-credentials server.
    ///
    /// # Errors
    /// As for [`Tokens::current`].
    pub async fn obtain(&self) -> Result<String, AuthError> {
        self.renew(None, None).await
    }

    /// A new token after the server refused `rejected`: the one another process
    /// saved meanwhile, or a renewed one.
    ///
    /// # Errors
    /// As for [`Tokens::current`].
    pub async fn after_rejection(&self, rejected: &str) -> Result<String, AuthError> {
        self.renew(Some(rejected.to_owned()), None).await
    }

    /// The server answered 403 `insufficient_scope`, naming the `required`
    /// scopes (space-separated). Client credentials: a token for the scopes it
    /// has and `required`, at most [`MAX_SCOPE_UPGRADES`] times in a row (a
    /// successful request resets the count); `None` once the attempts are
    /// spent. A person's grant: `None`, as a person must log in again; the
    /// scopes are kept with the tokens ([`Record::required_scopes`]) so that
    /// the next login asks for them.
    ///
    /// # Errors
    /// As for [`Tokens::current`].
    pub async fn upgrade_scope(&self, rejected: &str, required: &str) -> Result<Option<String>, AuthError> {
        if self.inner.grant != Grant::ClientCredentials {
            if let Err(e) = self.keep_required(required).await {
                warn!(server = self.inner.entry.server(), error = %e, "could not keep the scopes the server asked for");
            }
            return Ok(None);
        }
        if self.inner.upgrades.fetch_add(1, Ordering::Relaxed) >= MAX_SCOPE_UPGRADES {
            return Ok(None);
        }
        self.renew(Some(rejected.to_owned()), Some(required.to_owned())).await.map(Some)
    }

    /// Adds `required` to the kept record's scopes for the next login.
    async fn keep_required(&self, required: &str) -> Result<(), StoreError> {
        let entry = &self.inner.entry;
        let _lock = entry.lock().await?;
        let Some(mut record) = entry.read()? else { return Ok(()) };
        let before = record.required_scopes.len();
        for scope in required.split(' ').filter(|s| !s.is_empty()) {
            if !record.required_scopes.iter().any(|kept| kept == scope) {
                record.required_scopes.push(scope.to_owned());
            }
        }
        if record.required_scopes.len() == before {
            return Ok(());
        }
        info!(server = entry.server(), scopes = required, "the server wants more scopes: the next login asks for them");
        entry.write(&record)
    }

    /// A request with the current token succeeded.
    pub fn accepted(&self) {
        self.inner.upgrades.store(0, Ordering::Relaxed);
    }

    async fn renew(&self, stale: Option<String>, more_scope: Option<String>) -> Result<String, AuthError> {
        let this = self.clone();
        // Its own task: the caller going away must not abort a refresh after the
        // authorization server rotated the refresh token and before it is saved.
        tokio::spawn(async move {
            let token = this.renew_locked(stale, more_scope).await?;
            let kept = this.inner.entry.read().ok().flatten().as_ref().and_then(Cached::of);
            *this.inner.cached.lock().unwrap_or_else(PoisonError::into_inner) = match kept {
                Some(c) if c.token == token => Some(c),
                _ => Some(Cached { token: token.clone(), received_at: None, expires_in: None }),
            };
            Ok(token)
        })
        .await
        .map_err(|e| AuthError::InternalError(format!("token renewal task failed: {e}")))?
    }

    async fn renew_locked(&self, stale: Option<String>, more_scope: Option<String>) -> Result<String, AuthError> {
        let inner = &self.inner;
        let _lock = inner.entry.lock().await?;
        let record = inner.entry.read()?;
        if let Some(r) = &record
            && let Some(token) = r.access_token()
            && stale.as_deref() != Some(token)
            && more_scope.is_none()
            && !needs_renewal(r.credentials.token_received_at, r.expires_in(), now_secs())
        {
            debug!(server = inner.entry.server(), "adopting a token another process renewed");
            return Ok(token.to_owned());
        }
        let renewed = match inner.grant {
            Grant::ClientCredentials => self.client_credentials(record.as_ref(), more_scope).await,
            Grant::AuthorizationCode => self.refresh(record).await,
        };
        // Each network step inside is bounded by `bounded`.
        let token = renewed?;
        info!(server = inner.entry.server(), "access token renewed");
        Ok(token)
    }

    async fn manager(&self, record: Option<&Record>) -> Result<AuthorizationManager, AuthError> {
        let inner = &self.inner;
        let mut manager = AuthorizationManager::new(inner.entry.url()).await?;
        manager.with_client(inner.http.clone())?;
        let metadata = match record.and_then(|r| r.metadata.clone()) {
            Some(metadata) => metadata,
            None => bounded(manager.resolve_metadata()).await?.metadata,
        };
        manager.set_metadata(metadata.clone());
        let redirect = record.and_then(|r| r.redirect_uri.clone());
        manager.set_credential_store(inner.entry.credential_store(Some(metadata), redirect));
        Ok(manager)
    }

    async fn refresh(&self, record: Option<Record>) -> Result<String, AuthError> {
        let Some(record) = record.filter(Record::has_refresh_token) else {
            return Err(AuthError::AuthorizationRequired);
        };
        let mut manager = self.manager(Some(&record)).await?;
        let redirect = record.redirect_uri.clone().unwrap_or_else(|| REFRESH_REDIRECT.to_owned());
        let mut client = OAuthClientConfig::new(record.credentials.client_id.clone(), redirect);
        if let Some(secret) = &self.inner.client_secret
            && self.inner.client_id.as_deref() == Some(record.credentials.client_id.as_str())
        {
            client = client.with_client_secret(secret.clone());
        }
        manager.configure_client(client)?;
        use oauth2::TokenResponse as _;
        let response = bounded(manager.refresh_token()).await?;
        Ok(response.access_token().secret().clone())
    }

    async fn client_credentials(
        &self,
        record: Option<&Record>,
        more_scope: Option<String>,
    ) -> Result<String, AuthError> {
        let inner = &self.inner;
        let (Some(client_id), Some(client_secret)) = (inner.client_id.clone(), inner.client_secret.clone()) else {
            return Err(AuthError::ClientCredentialsError(
                "client_credentials needs auth.client_id and auth.client_secret_env".into(),
            ));
        };
        let mut scopes = record.map(|r| r.credentials.granted_scopes.clone()).unwrap_or_default();
        for scope in inner.scopes.iter().cloned().chain(more_scope.iter().flat_map(|s| s.split(' ').map(str::to_owned)))
        {
            if !scope.is_empty() && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let manager = {
            let mut manager = self.manager(record).await?;
            let config = ClientCredentialsConfig::ClientSecret {
                client_id,
                client_secret,
                scopes,
                resource: Some(inner.entry.url().to_owned()),
            };
            manager.validate_client_credentials_metadata(&config)?;
            manager.configure_client_credentials(&config)?;
            (manager, config)
        };
        use oauth2::TokenResponse as _;
        let response = bounded(manager.0.exchange_client_credentials(&manager.1)).await?;
        Ok(response.access_token().secret().clone())
    }
}

async fn bounded<T>(f: impl Future<Output = Result<T, AuthError>>) -> Result<T, AuthError> {
    tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| AuthError::TokenRefreshFailed("the authorization server did not answer in time".into()))?
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::needs_renewal;

    #[test]
    fn renewal_starts_thirty_seconds_or_half_a_lifetime_before_expiry() {
        // An hour-long token: renewed in its last 30 s.
        assert!(!needs_renewal(Some(1000), Some(3600), 1000 + 3569));
        assert!(needs_renewal(Some(1000), Some(3600), 1000 + 3571));
        // A 20 s token: in its last 10 s.
        assert!(!needs_renewal(Some(0), Some(20), 10));
        assert!(needs_renewal(Some(0), Some(20), 11));
        // A 1 s token: at once after its first second.
        assert!(!needs_renewal(Some(0), Some(1), 0));
        assert!(needs_renewal(Some(0), Some(1), 1));
        // Unknown age or lifetime: used until refused.
        assert!(!needs_renewal(None, Some(1), u64::MAX));
        assert!(!needs_renewal(Some(0), None, u64::MAX));
        // A clock that went back: the token is as new as it was.
        assert!(!needs_renewal(Some(5000), Some(60), 10));
    }

    proptest! {
        #[test]
        fn renewal_is_monotonic_in_time_and_never_late(received in 0u64..1 << 40, life in 1u64..1 << 20, a in 0u64..1 << 21, b in 0u64..1 << 21) {
            let (early, late) = (a.min(b), a.max(b));
            if needs_renewal(Some(received), Some(life), received + early) {
                prop_assert!(needs_renewal(Some(received), Some(life), received + late));
            }
            // Always renewed by the time it expires, never before its middle.
            prop_assert!(needs_renewal(Some(received), Some(life), received + life));
            prop_assert!(!needs_renewal(Some(received), Some(life), received + life / 2));
        }
    }

    mod source {
        use rmcp::transport::auth::{AuthError, StoredCredentials};
        use roster_core::{AuthConfig, Grant};

        use super::super::{MissingSecret, Tokens, now_secs};
        use crate::store::{Entry, Store};

        /// A kept token `access`, received `age` seconds ago, living an hour.
        fn keep(entry: &Entry, access: &str, age: u64, refresh: bool) {
            let mut token = serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
            if refresh {
                token["refresh_token"] = "r".into();
            }
            let token = serde_json::from_value(token).unwrap();
            let credentials = StoredCredentials::new("c".into(), Some(token), vec![], Some(now_secs() - age));
            entry.write(&entry.record(credentials)).unwrap();
        }

        /// An entry in a store of its own, which lives as long as the directory.
        fn scratch() -> (tempfile::TempDir, Entry) {
            let dir = tempfile::tempdir().unwrap();
            let entry = Store::new(dir.path().join("creds")).entry("docs", "http://127.0.0.1:1/mcp");
            (dir, entry)
        }

        fn tokens(entry: &Entry, auth: &AuthConfig) -> Tokens {
            let http = roster_http::HttpClients::new(roster_http::HttpOptions::default()).unwrap();
            Tokens::new(entry.clone(), Some(auth), http.for_url("http://127.0.0.1/").unwrap()).unwrap()
        }

        fn code() -> AuthConfig {
            AuthConfig::default()
        }

        /// Client credentials with no client id: a renewal fails before any request.
        fn credentials_without_id() -> AuthConfig {
            AuthConfig { grant: Grant::ClientCredentials, ..AuthConfig::default() }
        }

        #[tokio::test]
        async fn a_fresh_kept_token_is_sent_as_it_is_and_no_login_sends_none() {
            let (_dir, entry) = scratch();
            let source = tokens(&entry, &code());
            assert_eq!(source.entry().path(), entry.path());
            assert_eq!(source.current().await.unwrap(), None, "nobody logged in");
            keep(&entry, "tok-A", 60, false);
            assert_eq!(source.current().await.unwrap().as_deref(), Some("tok-A"));
            // Fresh in the store: adopted rather than renewed (no request made).
            assert_eq!(source.obtain().await.unwrap(), "tok-A");
            assert_eq!(source.after_rejection("tok-OLD").await.unwrap(), "tok-A", "another process renewed it");
            std::fs::remove_file(entry.path()).unwrap();
            assert_eq!(source.current().await.unwrap().as_deref(), Some("tok-A"), "while fresh, no file is read");
        }

        #[tokio::test]
        async fn a_stale_or_refused_token_with_nothing_to_renew_it_needs_a_login() {
            let (_dir, entry) = scratch();
            keep(&entry, "tok-A", 3590, false);
            let source = tokens(&entry, &code());
            assert!(matches!(source.current().await, Err(AuthError::AuthorizationRequired)), "10 s left of an hour");
            keep(&entry, "tok-B", 0, false);
            assert!(matches!(source.after_rejection("tok-B").await, Err(AuthError::AuthorizationRequired)));
        }

        #[tokio::test]
        async fn client_credentials_get_a_first_token_unasked_and_step_up_at_most_three_times_in_a_row() {
            let (_dir, entry) = scratch();
            let source = tokens(&entry, &credentials_without_id());
            assert!(
                matches!(source.current().await, Err(AuthError::ClientCredentialsError(_))),
                "no token kept: one is requested at once"
            );
            for attempt in 1..=3 {
                let upgrade = source.upgrade_scope("tok", "admin").await;
                assert!(matches!(upgrade, Err(AuthError::ClientCredentialsError(_))), "attempt {attempt}");
            }
            assert_eq!(source.upgrade_scope("tok", "admin").await.unwrap(), None, "the attempts are spent");
            source.accepted();
            assert!(source.upgrade_scope("tok", "admin").await.is_err(), "a success resets the count");
            let person = tokens(&entry, &code());
            assert_eq!(person.upgrade_scope("tok", "admin").await.unwrap(), None, "a person must log in again");
            assert!(!entry.path().exists(), "nothing kept, nothing to add the scopes to");
        }

        #[tokio::test]
        async fn a_person_s_grant_keeps_the_scopes_a_server_wants_for_the_next_login() {
            let (_dir, entry) = scratch();
            keep(&entry, "tok-A", 60, true);
            let source = tokens(&entry, &code());
            for _ in 0..5 {
                assert_eq!(source.upgrade_scope("tok-A", "mcp:tools  mcp:admin").await.unwrap(), None);
            }
            assert_eq!(source.upgrade_scope("tok-A", "mcp:audit").await.unwrap(), None);
            let record = entry.read().unwrap().unwrap();
            assert_eq!(record.required_scopes, ["mcp:tools", "mcp:admin", "mcp:audit"], "each once, in order");
            assert_eq!(record.access_token(), Some("tok-A"), "the tokens stay as they were");
            assert_eq!(source.current().await.unwrap().as_deref(), Some("tok-A"), "and are still sent");
        }

        #[test]
        fn the_client_secret_comes_from_the_environment_and_debug_hides_it() {
            let secret = std::env::var("PATH").expect("PATH is set");
            let (_dir, entry) = scratch();
            let auth = AuthConfig {
                client_id: Some("roster-ci".into()),
                client_secret_env: Some("PATH".into()),
                ..credentials_without_id()
            };
            let text = format!("{:?}", tokens(&entry, &auth));
            assert!(text.contains("roster-ci") && text.contains("<redacted>"), "{text}");
            assert!(!text.contains(&secret), "{text}");
            let unset = AuthConfig { client_secret_env: Some("ROSTER_TEST_NEVER_SET_9F2".into()), ..auth };
            let http = roster_http::HttpClients::new(roster_http::HttpOptions::default()).unwrap();
            let err = Tokens::new(entry, Some(&unset), http.for_url("http://127.0.0.1/").unwrap()).unwrap_err();
            assert_eq!(err, MissingSecret("ROSTER_TEST_NEVER_SET_9F2".into()));
        }
    }
}
