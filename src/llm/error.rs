//! How a provider call failed, classified the way the router acts on it (CONTRACT §4
//! "Tools and generation"): retry on this provider, or move on to the next.

use std::time::Duration;

/// A failed provider call. Messages never contain prompts, keys or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("rate limited (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("quota exhausted: {0}")]
    Quota(String),
    #[error("request refused ({status}): {message}")]
    BadRequest { status: u16, message: String },
    #[error("content refused: {0}")]
    Refused(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("not configured: {0}")]
    NotConfigured(String),
}

impl Error {
    /// Worth another attempt on the same provider.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout | Error::Connect(_) | Error::Server { .. } | Error::RateLimited { .. }
        )
    }

    /// Stable label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Error::Timeout => "timeout",
            Error::Connect(_) => "connect",
            Error::Server { .. } => "server",
            Error::RateLimited { .. } => "rate_limited",
            Error::Auth(_) => "auth",
            Error::Quota(_) => "quota",
            Error::BadRequest { .. } => "bad_request",
            Error::Refused(_) => "refused",
            Error::Malformed(_) => "malformed",
            Error::NotConfigured(_) => "not_configured",
        }
    }

    /// Classifies a transport error from reqwest.
    pub fn from_transport(e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout
        } else if e.is_decode() || e.is_body() {
            Error::Malformed(short(&e.to_string()))
        } else {
            // reqwest's own text is only "error sending request"; the reason (refused,
            // certificate not trusted, proxy failure) is further down the source chain.
            let mut text = without_url(e);
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            Error::Connect(short(&text))
        }
    }

    /// Classifies a non-success HTTP status with the provider's error text.
    pub fn from_status(status: u16, retry_after: Option<Duration>, message: String) -> Error {
        let message = short(&message);
        match status {
            401 | 403 => Error::Auth(message),
            402 => Error::Quota(message),
            429 => Error::RateLimited { retry_after },
            500..=599 => Error::Server { status, message },
            _ => Error::BadRequest { status, message },
        }
    }
}

/// Parses `Retry-After` given in seconds (the HTTP-date form is not used by these providers).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// reqwest's messages include the URL; keep logs free of query strings and hosts' paths.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), url.host_str().unwrap_or("host"));
    }
    text
}

/// Provider error bodies can be long; keep the start.
pub fn short(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        text.chars().take(MAX).chain("…".chars()).collect()
    }
}
