//! The access token on every request of a logged-in server's session.
//!
//! [`Authed`] wraps roster's [`Backend`]: each request carries the token that
//! [`Tokens`] gives (renewed before it expires); a `401` to a request that had
//! a token asks for a new one once (another process's, or a refresh) and
//! retries once; a `403 insufficient_scope` of a client-credentials server asks
//! for the wider token (at most three times in a row). What cannot be fixed here
//! goes up typed: `AuthRequired`, `InsufficientScope`, or `Auth(AuthError)`,
//! which [`classify`](crate::classify) turns into failure classes.
//!
//! roster does this itself rather than through rmcp's `AuthClient` because a
//! renewal must re-read the store under the cross-process lock and adopt a
//! token another roster process renewed: rmcp's refresh always spends the
//! refresh token it loaded.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::auth::AuthError;
use rmcp::transport::streamable_http_client::{StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse};
use roster_auth::Tokens;
use sse_stream::{Error as SseError, Sse};

use crate::backend::Backend;

type Error = StreamableHttpError<reqwest::Error>;

/// [`Backend`] with the server's token, when it has one.
#[derive(Clone, Debug)]
pub struct Authed {
    inner: Backend,
    tokens: Option<Tokens>,
}

impl Authed {
    /// `inner`, sending the tokens of `tokens` (none: no `Authorization` header).
    pub fn new(inner: Backend, tokens: Option<Tokens>) -> Authed {
        Authed { inner, tokens }
    }

    async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let Some(tokens) = &self.tokens else { return call(None).await };
        let token = tokens.current().await?;
        let result = match (call(token.clone()).await, token) {
            (Err(StreamableHttpError::AuthRequired(challenge)), Some(sent)) => {
                match tokens.after_rejection(&sent).await {
                    Ok(fresh) if fresh != sent => call(Some(fresh)).await,
                    Ok(_) | Err(AuthError::AuthorizationRequired) => Err(StreamableHttpError::AuthRequired(challenge)),
                    Err(e) => Err(e.into()),
                }
            }
            (Err(StreamableHttpError::InsufficientScope(scope)), Some(sent)) => {
                let required = scope.required_scope.clone().unwrap_or_default();
                match tokens.upgrade_scope(&sent, &required).await {
                    Ok(Some(wider)) => call(Some(wider)).await,
                    Ok(None) => Err(StreamableHttpError::InsufficientScope(scope)),
                    Err(e) => Err(e.into()),
                }
            }
            (result, _) => result,
        };
        if result.is_ok() {
            tokens.accepted();
        }
        result
    }
}

impl StreamableHttpClient for Authed {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Error> {
        self.with_token(|token| {
            self.inner.post_message(uri.clone(), message.clone(), session_id.clone(), token, custom_headers.clone())
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Error> {
        self.with_token(|token| {
            self.inner.delete_session(uri.clone(), session_id.clone(), token, custom_headers.clone())
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Error> {
        self.with_token(|token| {
            self.inner.get_stream(uri.clone(), session_id.clone(), last_event_id.clone(), token, custom_headers.clone())
        })
        .await
    }
}
