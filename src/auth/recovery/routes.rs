//! `/auth/password/forgot`, `/auth/password/reset`, `/auth/verify-email` and
//! `/auth/verify-email/confirm` (CONTRACT §4 "Auth").

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Error, Purpose, store};
use crate::app::AppState;
use crate::auth::extract::CurrentUser;
use crate::auth::throttle::Key;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::mail::{self, Letter};
use crate::request::{AppJson, ClientIp};
use crate::users::{self, routes::Profile};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(forgot_password))
        .routes(routes!(reset_password))
        .routes(routes!(request_verification))
        .routes(routes!(confirm_email))
}

#[derive(Deserialize, ToSchema)]
pub struct ForgotRequest {
    /// At most 255 characters. Whatever it is, the answer is the same `202`.
    #[schema(max_length = 255)]
    pub email: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ResetRequest {
    /// The token from the letter's link.
    pub token: String,
    /// At least 8 characters.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ConfirmRequest {
    /// The token from the letter's link.
    pub token: String,
}

/// The answer to a request for a letter; the same whether or not a letter leaves.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub detail: &'static str,
}

/// Counts a letter request against the recipient's address and the client's IP (CONTRACT §4
/// "Throttling"), before anything else is done with it.
fn count_mail_request(state: &AppState, address: &str, ip: IpAddr) -> Result<(), ApiError> {
    let auth = &state.auth;
    let folded = address.trim().to_lowercase();
    let ip_text = ip.to_string();
    auth.throttles
        .mail
        .attempt_all(&[
            (
                Key::new("mail:address", &[folded.as_bytes()]),
                auth.limits.mail_per_address,
            ),
            (
                Key::new("mail:ip", &[ip_text.as_bytes()]),
                auth.limits.mail_per_ip,
            ),
        ])
        .map_err(|retry_after| {
            tracing::warn!(client.ip = %ip, "mail request throttled");
            crate::auth::Error::TooManyAttempts { retry_after }.into()
        })
}

/// Sends a password reset link to the address, if it belongs to an active account.
///
/// The answer is the same `202` for unknown, deactivated and provider-only addresses alike,
/// and takes the same path (one throttle count, one database write; the letter leaves on its
/// own task), so it tells nothing about which addresses have accounts.
#[utoipa::path(post, path = "/auth/password/forgot", tag = "auth", request_body = ForgotRequest,
    responses(
        (status = 202, description = "Accepted, whatever the address; a letter with `FRONTEND_URL/auth/reset?token=…` goes to a known, active user", body = Accepted),
        (status = 422, description = "`validation_error` (an email over 255 characters)", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` for this address or IP, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`mail_not_configured`: no `SMTP_URL`", body = ErrorBody),
    ))]
async fn forgot_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(body): AppJson<ForgotRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let Some(mailer) = state.mailer.clone() else {
        return Err(Error::MailNotConfigured.into());
    };
    // Bounded before anything is keyed or looked up.
    users::within("email", &body.email, users::EMAIL_MAX)?;
    count_mail_request(&state, &body.email, ip)?;
    let email = body.email;
    let issued = state
        .db
        .write(move |tx| {
            let Some(user) = users::store::by_email(tx, &email)? else {
                return Ok(None);
            };
            // A provider-only account may set a password this way too: it proves the mailbox.
            if !user.is_active {
                return Ok(None);
            }
            let token = store::issue(tx, &user.id, Purpose::Reset)?;
            Ok::<_, Error>(Some((user, token)))
        })
        .await?;
    if let Some((user, token)) = issued {
        tracing::info!(user.id = %user.id, "password reset requested");
        mailer.send(Letter {
            kind: mail::Kind::Reset,
            to: user.email,
            user_id: user.id,
            token,
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            detail: "If the address belongs to an account, a letter with a link is on its way",
        }),
    ))
}

/// Sets a new password with the token from a reset letter; every session of the user ends
/// and the email counts as verified.
#[utoipa::path(post, path = "/auth/password/reset", tag = "auth", request_body = ResetRequest,
    responses(
        (status = 204, description = "The password is set; every session of the user is revoked"),
        (status = 400, description = "`invalid_token`: unknown, used, or older than an hour", body = ErrorBody),
        (status = 422, description = "`validation_error` (a password under 8 characters)", body = ErrorBody),
    ))]
async fn reset_password(
    State(state): State<AppState>,
    AppJson(body): AppJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    users::check_password(&body.new_password).map_err(|m| {
        ApiError::validation(vec![FieldError::body("new_password", m, "value_error")])
    })?;
    // A look first, so that made-up tokens cost no password hashing.
    let token = body.token;
    let usable = {
        let token = token.clone();
        state
            .db
            .read(move |c| store::is_usable(c, &token, Purpose::Reset))
            .await
            .map_err(Error::from)?
    };
    if !usable {
        return Err(Error::InvalidToken.into());
    }
    let hashed = state
        .auth
        .hasher
        .hash(body.new_password)
        .await
        .map_err(Error::from)?;
    // The write decides: of two requests with one token, one sets its password.
    let user_id = state
        .db
        .write(move |tx| store::reset_password(tx, &token, &hashed))
        .await
        .map_err(Error::from)?
        .ok_or(Error::InvalidToken)?;
    tracing::info!(user.id = %user_id, "password reset; every session revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Sends the signed-in user a link that verifies their email.
#[utoipa::path(post, path = "/auth/verify-email", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 202, description = "A letter with `FRONTEND_URL/auth/verify?token=…` is on its way", body = Accepted),
        (status = 401, description = "`not_authenticated`, `token_expired` or `invalid_token`", body = ErrorBody),
        (status = 403, description = "`inactive`", body = ErrorBody),
        (status = 409, description = "`already_verified`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` for this address or IP, with `Retry-After`", body = ErrorBody),
        (status = 503, description = "`mail_not_configured`: no `SMTP_URL`", body = ErrorBody),
    ))]
async fn request_verification(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    current: CurrentUser,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let user = current.user;
    if user.is_verified {
        return Err(Error::AlreadyVerified.into());
    }
    let Some(mailer) = state.mailer.clone() else {
        return Err(Error::MailNotConfigured.into());
    };
    count_mail_request(&state, &user.email, ip)?;
    let token = {
        let user_id = user.id.clone();
        state
            .db
            .write(move |tx| store::issue(tx, &user_id, Purpose::Verify))
            .await
            .map_err(Error::from)?
    };
    tracing::info!(user.id = %user.id, "email verification requested");
    mailer.send(Letter {
        kind: mail::Kind::Verify,
        to: user.email,
        user_id: user.id,
        token,
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            detail: "A letter with a link is on its way",
        }),
    ))
}

/// Verifies the email with the token from a verification letter. Needs no sign-in: the link
/// may be opened in another browser.
#[utoipa::path(post, path = "/auth/verify-email/confirm", tag = "auth", request_body = ConfirmRequest,
    responses(
        (status = 200, description = "Verified", body = Profile),
        (status = 400, description = "`invalid_token`: unknown, used, or older than 24 hours", body = ErrorBody),
        (status = 422, description = "`validation_error`", body = ErrorBody),
    ))]
async fn confirm_email(
    State(state): State<AppState>,
    AppJson(body): AppJson<ConfirmRequest>,
) -> Result<Json<Profile>, ApiError> {
    let token = body.token;
    let user = state
        .db
        .write(move |tx| store::confirm_email(tx, &token))
        .await
        .map_err(Error::from)?
        .ok_or(Error::InvalidToken)?;
    tracing::info!(user.id = %user.id, "email verified by letter");
    Ok(Json(Profile::from(&user)))
}
