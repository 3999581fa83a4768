//! `/user/*`: profile, balance, transactions and password (CONTRACT §4 "User").

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{User, UserResponse};
use crate::app::AppState;
use crate::auth;
use crate::auth::extract::CurrentUser;
use crate::auth::store as sessions;
use crate::auth::throttle::Key;
use crate::billing::ledger;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::request::{AppJson, Page, Pagination};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_profile, update_profile))
        .routes(routes!(get_balance))
        .routes(routes!(list_transactions))
        .routes(routes!(change_password))
}

#[derive(Serialize, ToSchema)]
pub struct Profile {
    #[serde(flatten)]
    user: UserResponse,
    /// True once a provider has verified the email.
    is_verified: bool,
    updated_at: String,
}

impl From<&User> for Profile {
    fn from(u: &User) -> Self {
        Profile {
            user: UserResponse::from(u),
            is_verified: u.is_verified,
            updated_at: u.updated_at.clone(),
        }
    }
}

/// The caller's profile.
#[utoipa::path(get, path = "/user/profile", tag = "user", security(("bearer" = [])),
    responses((status = 200, body = Profile), (status = 401, body = ErrorBody)))]
async fn get_profile(current: CurrentUser) -> Json<Profile> {
    Json(Profile::from(&current.user))
}

#[derive(Deserialize, ToSchema)]
pub struct ProfileUpdate {
    /// At most 100 characters; empty clears it.
    #[schema(max_length = 100)]
    name: Option<String>,
}

/// Changes the display name.
#[utoipa::path(put, path = "/user/profile", tag = "user", security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses((status = 200, body = Profile), (status = 422, body = ErrorBody)))]
async fn update_profile(
    State(state): State<AppState>,
    current: CurrentUser,
    AppJson(body): AppJson<ProfileUpdate>,
) -> Result<Json<Profile>, ApiError> {
    let name = super::parse_name(body.name.as_deref())
        .map_err(|m| ApiError::validation(vec![FieldError::body("name", m, "value_error")]))?;
    let id = current.user.id.clone();
    let user = state
        .db
        .write(move |tx| {
            super::store::set_name(tx, &id, name.as_deref())?;
            super::store::by_id(tx, &id)
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("No such user"))?;
    Ok(Json(Profile::from(&user)))
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    /// Raits.
    balance: i64,
    /// Always `raits`.
    currency: &'static str,
    /// Raits per rouble.
    exchange_rate: i64,
    /// Top-ups started and not yet settled.
    pending_payments: i64,
}

/// The caller's balance.
#[utoipa::path(get, path = "/user/balance", tag = "user", security(("bearer" = [])),
    responses((status = 200, body = Balance)))]
async fn get_balance(
    State(state): State<AppState>,
    current: CurrentUser,
) -> Result<Json<Balance>, ApiError> {
    let user_id = current.user.id.clone();
    let pending = state
        .db
        .read(move |c| crate::payments::store::pending_count(c, &user_id))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Balance {
        balance: current.user.balance,
        currency: "raits",
        exchange_rate: state.config.payments.raits_per_rub,
        pending_payments: pending,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct TransactionList {
    transactions: Vec<ledger::Row>,
    pagination: Page,
}

/// The caller's ledger, newest first.
#[utoipa::path(get, path = "/user/transactions", tag = "user", security(("bearer" = [])),
    params(crate::request::Pagination),
    responses((status = 200, body = TransactionList), (status = 422, body = ErrorBody)))]
async fn list_transactions(
    State(state): State<AppState>,
    current: CurrentUser,
    page: Pagination,
) -> Result<Json<TransactionList>, ApiError> {
    let user_id = current.user.id;
    let (transactions, total) = state
        .db
        .read(move |c| ledger::page(c, &user_id, page.limit, page.offset))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(TransactionList {
        transactions,
        pagination: page.page(total),
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    #[schema(max_length = 1024)]
    current_password: String,
    /// At least 8 characters.
    #[schema(min_length = 8, max_length = 1024)]
    new_password: String,
}

/// Changes the password and signs out every other session of the user.
#[utoipa::path(put, path = "/user/password", tag = "user", security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; other sessions revoked"),
        (status = 400, description = "`invalid_current_password` or `password_not_set`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`too_many_attempts` after repeated wrong `current_password`, with `Retry-After`", body = ErrorBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    current: CurrentUser,
    AppJson(body): AppJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    super::check_password(&body.new_password).map_err(|m| {
        ApiError::validation(vec![FieldError::body("new_password", m, "value_error")])
    })?;
    super::within(
        "current_password",
        &body.current_password,
        super::PASSWORD_MAX,
    )?;
    let Some(stored) = current.user.hashed_password.clone() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "password_not_set",
            "This account signs in through Google or Yandex and has no password",
        ));
    };
    // Counted before the check, so concurrent guesses are limited like sequential ones.
    let guesses = Key::new("password:user", &[current.user.id.as_bytes()]);
    let throttle = &state.auth.throttles.password;
    if let Err(retry_after) = throttle.attempt(guesses, state.auth.limits.password_per_user) {
        tracing::warn!(user.id = %current.user.id, "password change throttled");
        return Err(auth::Error::TooManyAttempts { retry_after }.into());
    }
    if !state
        .auth
        .hasher
        .verify(body.current_password, Some(stored))
        .await
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_current_password",
            "The current password is wrong",
        ));
    }
    throttle.forgive(guesses);
    let hashed = state
        .auth
        .hasher
        .hash(body.new_password)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let (user_id, keep) = (current.user.id.clone(), current.session_id.clone());
    let revoked = state
        .db
        .write(move |tx| {
            super::store::set_password(tx, &user_id, &hashed)?;
            sessions::revoke_other_sessions(tx, &user_id, &keep, "password changed")
        })
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(user.id = %current.user.id, revoked, "password changed");
    Ok(StatusCode::NO_CONTENT)
}
