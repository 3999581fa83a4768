//! `/auth/*`: register, login, refresh, logout, me (CONTRACT §4 "Auth"); the Google and Yandex
//! routes are in `oauth::routes` and merged here.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum_extra::extract::cookie::{Cookie, CookieJar};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::CurrentUser;
use super::store::{self, REFRESH_TTL_SECS, Rotation};
use super::throttle::Key;
use super::{Auth, Error, jwt};
use crate::app::AppState;
use crate::billing::ledger;
use crate::error::{ApiError, ErrorBody};
use crate::request::{AppJson, ClientIp};
use crate::users::{self, UserResponse};

/// Name and path of the refresh cookie (CONTRACT §4).
pub const REFRESH_COOKIE: &str = "refresh_token";
const COOKIE_PATH: &str = "/api/v1/auth";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .merge(super::oauth::routes::router())
        .merge(super::recovery::router())
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// At most 255 characters; unique regardless of case.
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    /// At least 8 characters.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    /// At most 100 characters.
    #[serde(default)]
    #[schema(max_length = 100)]
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(max_length = 255)]
    pub email: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// HS256 JWT, valid for `expires_in` seconds.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds: 900.
    pub expires_in: i64,
}

/// The response of every successful password sign-in: an access token, and the refresh token
/// in the cookie jar.
type SignedIn = (CookieJar, Json<TokenResponse>);

/// What every sign-in hands out, whichever way the user proved who they are: an access token
/// for the new session (`sid`) and a jar setting the refresh cookie. Password sign-ins answer
/// it as JSON; OAuth puts the access token in the redirect to the frontend.
pub fn issue_tokens(
    auth: &Auth,
    user_id: &str,
    issued: store::Issued,
) -> (CookieJar, TokenResponse) {
    let access_token = auth.keys.issue(user_id, &issued.session_id);
    let cookie = refresh_cookie(
        auth,
        issued.refresh_token,
        time::Duration::seconds(REFRESH_TTL_SECS),
    );
    (
        CookieJar::new().add(cookie),
        TokenResponse {
            access_token,
            token_type: "bearer",
            expires_in: jwt::ACCESS_TTL_SECS,
        },
    )
}

fn signed_in(auth: &Auth, user_id: &str, issued: store::Issued) -> SignedIn {
    let (jar, token) = issue_tokens(auth, user_id, issued);
    (jar, Json(token))
}

/// The `refresh_token` cookie with the contract's attributes; the one place they are set, so
/// the cookie that logout clears is the cookie sign-in set.
fn refresh_cookie(auth: &Auth, value: String, max_age: time::Duration) -> Cookie<'static> {
    Cookie::build((REFRESH_COOKIE, value))
        .http_only(true)
        .secure(auth.cookie.secure)
        .same_site(auth.cookie.same_site)
        .path(COOKIE_PATH)
        .max_age(max_age)
        .build()
}

fn cleared_cookie(auth: &Auth) -> CookieJar {
    CookieJar::new().add(refresh_cookie(auth, String::new(), time::Duration::ZERO))
}

/// Creates a local account and signs it in.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and signed in; sets the refresh cookie", body = TokenResponse),
        (status = 409, description = "`email_taken`", body = ErrorBody),
        (status = 422, description = "`validation_error`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` (registrations from this IP), with `Retry-After`", body = ErrorBody),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<RegisterRequest>,
) -> Result<(StatusCode, SignedIn), ApiError> {
    let (email, name) = users::validate_signup(&body.email, &body.password, body.name.as_deref())
        .map_err(ApiError::validation)?;
    let per_ip = Key::new("register:ip", &[ip.to_string().as_bytes()]);
    if let Err(retry_after) = state
        .auth
        .throttles
        .register
        .attempt(per_ip, state.auth.limits.register_per_ip)
    {
        tracing::warn!(client.ip = %ip, "registration throttled");
        return Err(Error::TooManyAttempts { retry_after }.into());
    }
    let taken = {
        let email = email.clone();
        state
            .db
            .read(move |c| users::store::by_email(c, email.as_str()))
            .await
            .map_err(Error::from)?
            .is_some()
    };
    if taken {
        return Err(Error::EmailTaken.into());
    }
    let hashed = state
        .auth
        .hasher
        .hash(body.password)
        .await
        .map_err(Error::from)?;
    let bonus = state.auth.signup_bonus;
    let (user_id, issued) = state
        .db
        .write(move |tx| {
            let new = users::store::NewUser {
                email: email.as_str(),
                hashed_password: &hashed,
                name: name.as_deref(),
                is_admin: false,
            };
            let user = users::store::insert(tx, &new).map_err(|e| match e {
                users::store::InsertError::EmailTaken => Error::EmailTaken,
                users::store::InsertError::Db(e) => Error::Db(e),
            })?;
            ledger::signup_bonus(tx, &user.id, bonus).map_err(|e| Error::Internal(e.into()))?;
            let issued = store::start_session(tx, &user.id)?;
            Ok::<_, Error>((user.id, issued))
        })
        .await?;
    tracing::info!(user.id = %user_id, "user registered");
    Ok((
        StatusCode::CREATED,
        signed_in(&state.auth, &user_id, issued),
    ))
}

/// Signs in with email and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; sets the refresh cookie", body = TokenResponse),
        (status = 401, description = "`invalid_credentials` (also for an unknown email)", body = ErrorBody),
        (status = 403, description = "`inactive`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`, with `Retry-After`", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<LoginRequest>,
) -> Result<SignedIn, ApiError> {
    let user = check_credentials(&state, &body.email, body.password, ip).await?;
    let user_id = user.id.clone();
    let issued = state
        .db
        .write(move |tx| store::start_session(tx, &user_id))
        .await
        .map_err(Error::from)?;
    tracing::info!(user.id = %user.id, "user signed in");
    Ok(signed_in(&state.auth, &user.id, issued))
}

/// The active user these credentials belong to, under the login throttles (counted before the
/// password is checked; a correct password gives its attempts back). Shared by the API's
/// login and the admin UI's.
pub async fn check_credentials(
    state: &AppState,
    email: &str,
    password: String,
    ip: std::net::IpAddr,
) -> Result<users::User, ApiError> {
    let auth = &state.auth;
    // Bounded before anything is keyed or looked up.
    users::within("email", email, users::EMAIL_MAX)?;
    users::within("password", &password, users::PASSWORD_MAX)?;
    let email = email.trim().to_owned();
    let folded = email.to_lowercase();
    let limits = auth.limits;
    let ip_text = ip.to_string();
    let pair = Key::new("login:email+ip", &[folded.as_bytes(), ip_text.as_bytes()]);
    let all_ips = Key::new("login:email", &[folded.as_bytes()]);
    let from_ip = Key::new("login:ip", &[ip_text.as_bytes()]);
    if let Err(retry_after) = auth.throttles.login.attempt_all(&[
        (pair, limits.login_per_email),
        (all_ips, limits.login_per_email_total),
        (from_ip, limits.login_per_ip),
    ]) {
        tracing::warn!(client.ip = %ip, "login throttled");
        return Err(Error::TooManyAttempts { retry_after }.into());
    }
    let user = state
        .db
        .read(move |c| users::store::by_email(c, &email))
        .await
        .map_err(Error::from)?;
    let stored = user.as_ref().and_then(|u| u.hashed_password.clone());
    if !auth.hasher.verify(password, stored).await {
        tracing::info!(client.ip = %ip, "login failed");
        return Err(Error::InvalidCredentials.into());
    }
    let Some(user) = user else {
        return Err(Error::InvalidCredentials.into());
    };
    auth.throttles.login.reset(pair);
    auth.throttles.login.forgive(all_ips);
    auth.throttles.login.forgive(from_ip);
    if !user.is_active {
        return Err(Error::Inactive.into());
    }
    Ok(user)
}

/// Exchanges the refresh cookie for a new access token and a new refresh cookie.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth",
    responses(
        (status = 200, description = "Rotated; sets the new refresh cookie", body = TokenResponse),
        (status = 401, description = "missing, expired, revoked or reused refresh token", body = ErrorBody),
        (status = 403, description = "`inactive`", body = ErrorBody),
    ))]
async fn refresh(State(state): State<AppState>, jar: CookieJar) -> Result<SignedIn, ApiError> {
    let token = jar
        .get(REFRESH_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(Error::NotAuthenticated)?;
    let grace = state.auth.refresh_grace_secs;
    let rotation = state
        .db
        .write(move |tx| store::rotate(tx, &token, grace))
        .await
        .map_err(Error::from)?;
    match rotation {
        Rotation::Rotated { issued, user_id } => Ok(signed_in(&state.auth, &user_id, issued)),
        Rotation::Inactive => Err(Error::Inactive.into()),
        Rotation::Expired => Err(Error::TokenExpired.into()),
        Rotation::Reused => {
            tracing::warn!("rotated refresh token reused; its family is revoked");
            Err(Error::InvalidToken.into())
        }
        Rotation::Unknown | Rotation::Revoked => Err(Error::InvalidToken.into()),
    }
}

/// Ends the session of the refresh cookie and clears the cookie.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "Signed out; the refresh cookie is cleared")))]
async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
) -> Result<(StatusCode, CookieJar), ApiError> {
    if let Some(token) = jar
        .get(REFRESH_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
    {
        state
            .db
            .write(move |tx| store::revoke_by_token(tx, &token))
            .await
            .map_err(Error::from)?;
    }
    Ok((StatusCode::NO_CONTENT, cleared_cookie(&state.auth)))
}

/// The signed-in user.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, body = UserResponse),
        (status = 401, description = "`not_authenticated`, `token_expired` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`inactive`", body = ErrorBody),
    ))]
async fn me(current: CurrentUser) -> Json<UserResponse> {
    Json(UserResponse::from(&current.user))
}
