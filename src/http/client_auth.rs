//! The integration client of an API request, as an extractor: a handler that takes an
//! [`AuthenticatedClient`] only runs for a client that presented valid HTTP Basic credentials
//! and is within its rate limit, so no handler can forget either check.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use zeroize::Zeroizing;

use super::AppState;
use super::problem::Problem;
use crate::clients::AuthError;
use crate::storage::clients::Client;

/// Still reached here by the dashboard's revocation; the function lives in [`crate::clients`].
pub use crate::clients::wait_for_services_to_notice;

/// An integration client that authenticated (RFC 6749 §2.3.1) and may send this request now.
pub struct AuthenticatedClient(pub Arc<Client>);

impl std::ops::Deref for AuthenticatedClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl FromRequestParts<AppState> for AuthenticatedClient {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let (id, secret) = basic_credentials(&parts.headers).ok_or_else(Problem::invalid_client)?;
        let client = state
            .auth
            .authenticate(&id, &secret)
            .await
            .map_err(|e| match e {
                AuthError::InvalidClient => Problem::invalid_client(),
                AuthError::Storage(_) => storage_unavailable(),
            })?;
        state
            .limiter
            .check(&client.client_id, client.rate_limit_per_minute)
            .map_err(rate_limited)?;
        Ok(Self(client))
    }
}

fn storage_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database is unavailable; retry later",
    )
    .retry_after(Duration::from_secs(5))
}

fn rate_limited(wait: Duration) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this client's request rate limit is exceeded",
    )
    .retry_after(wait)
}

/// HTTP Basic `client_id:client_secret`, both form-urlencoded (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, Zeroizing<String>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = Zeroizing::new(String::from_utf8(decoded).ok()?);
    let (id, secret) = decoded.split_once(':')?;
    let id = form_decoded(id)?.into_owned();
    let secret = Zeroizing::new(form_decoded(secret)?.into_owned());
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// `application/x-www-form-urlencoded` decoding; generated ids and secrets have nothing to
/// decode, so they are borrowed as they are.
fn form_decoded(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains(['%', '+']) {
        return Some(Cow::Borrowed(text));
    }
    let pair = Zeroizing::new(format!("x={text}"));
    let value = url::form_urlencoded::parse(pair.as_bytes()).next()?.1;
    Some(Cow::Owned(value.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed_strictly() {
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode("id%3A1:s%2Bx");
        let (id, secret) = basic_credentials(&header(&format!("Basic {encoded}"))).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("id:1", "s+x"));
        assert!(basic_credentials(&header("Bearer abc")).is_none());
        assert!(basic_credentials(&header("Basic !!!")).is_none());
        let empty = base64::engine::general_purpose::STANDARD.encode("id:");
        assert!(basic_credentials(&header(&format!("Basic {empty}"))).is_none());
        assert!(basic_credentials(&HeaderMap::new()).is_none());
    }

    #[test]
    fn plain_credentials_are_taken_as_they_are() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("a-b_c.d:s3cr~t");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("basic {encoded}").parse().unwrap(),
        );
        let (id, secret) = basic_credentials(&h).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("a-b_c.d", "s3cr~t"));
    }
}
