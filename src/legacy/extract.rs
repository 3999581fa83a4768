//! [`SiteAuth`]: the WordPress site whose access password the request carries in
//! `X-Access-Password`. A Bearer token opens nothing here.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::{Site, store};
use crate::app::AppState;
use crate::auth::throttle::Key;
use crate::error::ApiError;
use crate::request::ClientIp;

/// The header the plugin sends.
pub const HEADER: &str = "x-access-password";
/// Longer than any password `site create` makes; anything longer is not worth hashing.
const PASSWORD_MAX: usize = 256;

/// The calling site.
#[derive(Debug, Clone)]
pub struct SiteAuth(pub Site);

fn invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_password",
        "Missing or invalid X-Access-Password",
    )
}

impl<S> FromRequestParts<S> for SiteAuth
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ClientIp(ip) = match ClientIp::from_request_parts(parts, state).await {
            Ok(ip) => ip,
            Err(never) => match never {},
        };
        let state = AppState::from_ref(state);
        // Counted before the password is checked, so concurrent guesses are limited like
        // sequential ones; a correct password gives its attempt back.
        let key = Key::new("site:ip", &[ip.to_string().as_bytes()]);
        let throttle = &state.auth.throttles.login;
        if let Err(retry_after) = throttle.attempt(key, state.auth.limits.login_per_ip) {
            tracing::warn!(client.ip = %ip, "site password throttled");
            return Err(crate::auth::Error::TooManyAttempts { retry_after }.into());
        }
        let password = parts
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|p| !p.is_empty() && p.len() <= PASSWORD_MAX);
        let Some(password) = password else {
            tracing::debug!(client.ip = %ip, "no site password");
            return Err(invalid());
        };
        let digest = super::password_digest(password);
        let found = {
            let digest = digest.clone();
            state
                .db
                .read(move |c| store::site_by_digest(c, &digest))
                .await
                .map_err(|e| ApiError::internal(&e))?
        };
        match found {
            Some((site, stored)) if super::password_matches(password, &stored) => {
                throttle.forgive(key);
                Ok(SiteAuth(site))
            }
            _ => {
                tracing::info!(client.ip = %ip, "wrong site password");
                Err(invalid())
            }
        }
    }
}
