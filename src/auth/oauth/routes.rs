//! `/auth/google`, `/auth/yandex` and their callbacks (CONTRACT §4 "Auth").
//!
//! The start routes answer JSON only when the provider is not configured; the callbacks never
//! do: a browser arrives there, so every outcome is a `302` to the frontend.

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Error, Failure, Provider, state, store};
use crate::app::AppState;
use crate::auth::routes::issue_tokens;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_google_sign_in))
        .routes(routes!(finish_google_sign_in))
        .routes(routes!(start_yandex_sign_in))
        .routes(routes!(finish_yandex_sign_in))
}

/// What a provider sends the browser back with.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Callback {
    /// The authorization code, on success.
    code: Option<String>,
    /// Echo of the `state` sent to the provider; must match the `oauth_state` cookie.
    state: Option<String>,
    /// Set instead of `code` when sign-in did not happen; `access_denied` = the user cancelled.
    error: Option<String>,
}

/// Sends the browser to Google's consent page.
#[utoipa::path(get, path = "/auth/google", tag = "auth",
    responses(
        (status = 302, description = "To Google with `state` and a PKCE (S256) challenge; sets the `oauth_state` cookie for the callback (10 minutes)",
            headers(("location" = String, description = "Google's authorization URL"))),
        (status = 503, description = "`provider_not_configured`", body = ErrorBody),
    ))]
async fn start_google_sign_in(State(state): State<AppState>) -> Result<Response, ApiError> {
    start(&state, Provider::Google)
}

/// Where Google sends the browser back; signs the user in and returns to the frontend.
#[utoipa::path(get, path = "/auth/google/callback", tag = "auth", params(Callback),
    responses(
        (status = 302, description = "To `FRONTEND_URL/auth/callback?token=<access token>` with the refresh cookie set, or to `FRONTEND_URL/login?error=` `cancelled`, `account_exists`, `inactive` or `provider_error`",
            headers(("location" = String))),
    ))]
async fn finish_google_sign_in(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    jar: CookieJar,
) -> Response {
    finish(&state, Provider::Google, query, &jar).await
}

/// Sends the browser to Yandex ID's consent page.
#[utoipa::path(get, path = "/auth/yandex", tag = "auth",
    responses(
        (status = 302, description = "To Yandex ID with `state` and a PKCE (S256) challenge; sets the `oauth_state` cookie for the callback (10 minutes)",
            headers(("location" = String, description = "Yandex's authorization URL"))),
        (status = 503, description = "`provider_not_configured`", body = ErrorBody),
    ))]
async fn start_yandex_sign_in(State(state): State<AppState>) -> Result<Response, ApiError> {
    start(&state, Provider::Yandex)
}

/// Where Yandex ID sends the browser back; signs the user in and returns to the frontend.
#[utoipa::path(get, path = "/auth/yandex/callback", tag = "auth", params(Callback),
    responses(
        (status = 302, description = "To `FRONTEND_URL/auth/callback?token=<access token>` with the refresh cookie set, or to `FRONTEND_URL/login?error=` `cancelled`, `account_exists`, `inactive` or `provider_error`",
            headers(("location" = String))),
    ))]
async fn finish_yandex_sign_in(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    jar: CookieJar,
) -> Response {
    finish(&state, Provider::Yandex, query, &jar).await
}

fn start(state: &AppState, provider: Provider) -> Result<Response, ApiError> {
    let Some(client) = state.oauth.client(provider) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_not_configured",
            format!("Sign-in with {} is not configured", provider.label()),
        ));
    };
    let attempt = state.oauth.states.begin(provider);
    let location = client.authorize_url(&attempt.state, &attempt.code_challenge);
    let cookie = state::cookie(provider, attempt.cookie, state.auth.cookie.secure);
    Ok(found(CookieJar::new().add(cookie), location))
}

async fn finish(
    state: &AppState,
    provider: Provider,
    query: Option<String>,
    jar: &CookieJar,
) -> Response {
    let cleared = state::removal(provider, state.auth.cookie.secure);
    let frontend = state.config.server.frontend_url.trim_end_matches('/');
    match sign_in(state, provider, query.as_deref(), jar).await {
        Ok(signed_in) => {
            tracing::info!(user.id = %signed_in.user_id, oauth.provider = provider.as_str(),
                how = ?signed_in.how, "user signed in with a provider");
            let (jar, token) = issue_tokens(&state.auth, &signed_in.user_id, signed_in.issued);
            found(
                jar.add(cleared),
                format!("{frontend}/auth/callback?token={}", token.access_token),
            )
        }
        Err(e) => {
            let provider = provider.as_str();
            match &e {
                Error::Cancelled => tracing::info!(oauth.provider = provider, "sign-in cancelled"),
                Error::Db(_) | Error::Internal(_) => {
                    tracing::error!(oauth.provider = provider, error = %e, "sign-in failed")
                }
                _ => tracing::warn!(oauth.provider = provider, error = %e, "sign-in refused"),
            }
            found(
                CookieJar::new().add(cleared),
                format!("{frontend}/login?error={}", e.code()),
            )
        }
    }
}

/// The callback's work, in the order the reference asks: the state first, then the provider's
/// verdict, then the code.
async fn sign_in(
    state: &AppState,
    provider: Provider,
    query: Option<&str>,
    jar: &CookieJar,
) -> Result<store::SignedIn, Error> {
    let oauth = &state.oauth;
    let client = oauth.client(provider).ok_or(Failure::NotConfigured)?;
    let params: Callback =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|_| Failure::BadQuery)?;
    let cookie = jar.get(state::COOKIE).map(|c| c.value());
    let verifier = oauth
        .states
        .finish(provider, cookie, params.state.as_deref())?;
    if let Some(error) = params.error {
        return Err(match error.as_str() {
            "access_denied" => Error::Cancelled,
            other => Failure::Refused(super::sanitize(other)).into(),
        });
    }
    let code = params
        .code
        .filter(|c| !c.is_empty())
        .ok_or(Failure::NoCode)?;
    let profile = oauth.profile(client, &code, &verifier).await?;
    let bonus = state.auth.signup_bonus;
    state
        .db
        .write(move |tx| store::sign_in(tx, provider, &profile, bonus))
        .await
}

/// `302 Found` (the contract's status; axum's `Redirect` offers 303 and 307). Not cached: the
/// location may carry an access token.
fn found(jar: CookieJar, location: String) -> Response {
    (
        StatusCode::FOUND,
        jar,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}
