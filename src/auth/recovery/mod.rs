//! Password reset and email verification (CONTRACT §4 "Auth"): single-use tokens that prove
//! the holder reads the account's mailbox, mailed as links to the frontend.
//!
//! A token is 32 random bytes (base64url) handed out once, in the letter; only its SHA-256 is
//! stored. Using one is a single guarded write, so it works once even when two requests race
//! with it. Asking for a letter answers the same way whether or not the address has an
//! account, and the letter itself leaves on its own task (`mail::Mailer`).

pub mod routes;
pub mod store;

pub use routes::router;

use axum::http::StatusCode;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::db;
use crate::error::ApiError;

/// What a token is for; stored as its `purpose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /auth/password/reset`: valid one hour.
    Reset,
    /// `POST /auth/verify-email/confirm`: valid 24 hours.
    Verify,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Reset => "reset",
            Purpose::Verify => "verify",
        }
    }

    /// How long a token stays usable (CONTRACT §4).
    pub fn ttl(self) -> time::Duration {
        match self {
            Purpose::Reset => time::Duration::hours(1),
            Purpose::Verify => time::Duration::hours(24),
        }
    }
}

/// A new token as the letter carries it: 256 random bits, base64url without padding.
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What is stored of a token: its SHA-256, lowercase hex.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What can go wrong in a reset or a verification; each variant is one documented code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("The link is invalid, already used or expired")]
    InvalidToken,
    #[error("The email is already verified")]
    AlreadyVerified,
    #[error("Mail is not configured on this server")]
    MailNotConfigured,
    #[error(transparent)]
    Db(#[from] db::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let detail = e.to_string();
        match e {
            Error::InvalidToken => ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", detail),
            Error::AlreadyVerified => {
                ApiError::new(StatusCode::CONFLICT, "already_verified", detail)
            }
            Error::MailNotConfigured => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "mail_not_configured",
                detail,
            ),
            Error::Db(e) => ApiError::internal(&e),
            Error::Internal(e) => ApiError::internal(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_url_safe_and_hashed_to_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
