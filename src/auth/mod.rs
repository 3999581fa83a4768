//! Accounts and sign-in: passwords, Google and Yandex sign-in (`oauth`), access tokens, refresh
//! token families, login throttling, and the extractors that authenticate requests.
//!
//! Access tokens are short-lived JWTs; refresh tokens are opaque, stored hashed, rotated on
//! every use, and grouped in families (`auth_sessions`) so that reuse of a stolen token revokes
//! the family and a logout or password change ends sessions at once (ARCHITECTURE.md, "Auth").

pub mod extract;
pub mod jwt;
pub mod oauth;
pub mod password;
pub mod recovery;
pub mod routes;
pub mod store;
pub mod throttle;

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};

use crate::config;
use crate::db;
use crate::error::ApiError;

/// Everything sign-in needs besides the database.
pub struct Auth {
    pub keys: jwt::Keys,
    pub hasher: password::Hasher,
    pub throttles: Throttles,
    pub cookie: CookiePolicy,
    pub refresh_grace_secs: u64,
    pub signup_bonus: i64,
    pub limits: Limits,
}

/// The attempt throttles, one per window length and purpose.
pub struct Throttles {
    /// Logins (per email and IP, per email, per IP), 15 minutes.
    pub login: throttle::Throttle,
    /// Wrong `current_password` on a password change, per user, 15 minutes.
    pub password: throttle::Throttle,
    /// Registrations per IP, one hour.
    pub register: throttle::Throttle,
    /// Mail requests (reset, verification) per address and per IP, one hour.
    pub mail: throttle::Throttle,
}

/// How many attempts each throttle allows in its window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failed logins for one email from one IP (`EASY_WRITER_LOGIN_MAX_FAILURES`).
    pub login_per_email: u32,
    /// Failed logins for one email from all IPs together: a ceiling [`EMAIL_CEILING`] times
    /// the per-pair limit, so that guessing someone's email locks them out only from the
    /// guesser's address, while a distributed guess still stops.
    pub login_per_email_total: u32,
    pub login_per_ip: u32,
    pub password_per_user: u32,
    pub register_per_ip: u32,
    pub mail_per_address: u32,
    pub mail_per_ip: u32,
}

/// The per-email login ceiling over all IPs, as a multiple of the per-(email, IP) limit.
pub const EMAIL_CEILING: u32 = 20;
const MINUTE: Duration = Duration::from_secs(60);
/// Bytes each throttle's counters may take at most.
const THROTTLE_BYTES: u64 = 8 << 20;

/// Attributes of the `refresh_token` cookie.
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    pub secure: bool,
    pub same_site: axum_extra::extract::cookie::SameSite,
}

impl Auth {
    pub fn new(cfg: &config::Auth, secret: &[u8]) -> Auth {
        use axum_extra::extract::cookie::SameSite;
        Auth {
            keys: jwt::Keys::new(secret),
            hasher: password::Hasher::new(),
            throttles: Throttles {
                login: throttle::Throttle::new(15 * MINUTE, THROTTLE_BYTES),
                password: throttle::Throttle::new(15 * MINUTE, THROTTLE_BYTES),
                register: throttle::Throttle::new(60 * MINUTE, THROTTLE_BYTES),
                mail: throttle::Throttle::new(60 * MINUTE, THROTTLE_BYTES),
            },
            cookie: CookiePolicy {
                secure: cfg.cookie_secure,
                same_site: match cfg.cookie_samesite.as_str() {
                    "strict" => SameSite::Strict,
                    "none" => SameSite::None,
                    _ => SameSite::Lax,
                },
            },
            refresh_grace_secs: cfg.refresh_grace_secs,
            signup_bonus: cfg.signup_bonus,
            limits: Limits {
                login_per_email: cfg.login_max_failures,
                login_per_email_total: cfg.login_max_failures.saturating_mul(EMAIL_CEILING),
                login_per_ip: cfg.login_max_failures_per_ip,
                password_per_user: cfg.login_max_failures,
                register_per_ip: cfg.register_max_per_ip,
                mail_per_address: 5,
                mail_per_ip: 20,
            },
        }
    }
}

/// How often expired refresh, reset and verification tokens are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes expired refresh, reset and verification tokens and day-old idempotency keys now
/// and then, for as long as the server runs.
pub async fn prune_periodically(db: db::Db) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let pruned = db
            .write(|tx| Ok::<_, db::Error>(store::prune(tx)? + recovery::store::prune(tx)?))
            .await;
        match pruned {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "pruned expired tokens"),
            Err(e) => tracing::warn!(error = %e, "pruning expired tokens failed"),
        }
        match db.write(crate::idempotency::prune).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "forgot idempotency keys older than a day"),
            Err(e) => tracing::warn!(error = %e, "pruning idempotency keys failed"),
        }
    }
}

/// What can go wrong while authenticating; each variant is one documented error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Not authenticated")]
    NotAuthenticated,
    #[error("Token has expired")]
    TokenExpired,
    #[error("Invalid token")]
    InvalidToken,
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("User is inactive")]
    Inactive,
    #[error("Email already registered")]
    EmailTaken,
    #[error("Too many attempts, try again later")]
    TooManyAttempts { retry_after: Duration },
    #[error("Admin rights required")]
    Forbidden,
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Db(e.into())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let detail = e.to_string();
        match e {
            Error::NotAuthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "not_authenticated", detail)
            }
            Error::TokenExpired => ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", detail),
            Error::InvalidToken => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", detail),
            Error::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", detail)
            }
            Error::Inactive => ApiError::new(StatusCode::FORBIDDEN, "inactive", detail),
            Error::Forbidden => ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail),
            Error::EmailTaken => ApiError::new(StatusCode::CONFLICT, "email_taken", detail),
            Error::TooManyAttempts { retry_after } => {
                let secs = retry_after.as_secs().max(1);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", detail)
                    .with("retry_after", secs)
                    .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
            }
            Error::Db(e) => ApiError::internal(&e),
            Error::Internal(e) => ApiError::internal(&e),
        }
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}
