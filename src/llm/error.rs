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

    /// A failure of the provider itself, the same whoever asked, which counts towards its
    /// breaker: not one user's refused content nor a request the provider rejected as bad
    /// (CONTRACT §2, `EASY_WRITER_BREAKER_FAILURES`).
    pub fn is_provider_side(&self) -> bool {
        !matches!(
            self,
            Error::Refused(_) | Error::BadRequest { .. } | Error::NotConfigured(_)
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

/// Longest `Retry-After` taken as given; anything longer (or absurd, like `1e20`) is capped —
/// the router moves on to the next provider past ten seconds either way.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` given in seconds (the HTTP-date form is not used by these providers).
/// Whatever the provider sends, this never panics: non-numbers are ignored, huge values capped.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::try_from_secs_f64(seconds).map_or(RETRY_AFTER_MAX, |d| d.min(RETRY_AFTER_MAX)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_never_panics_and_caps() {
        let parse = |v: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1e20"), Some(RETRY_AFTER_MAX));
        assert_eq!(parse("1e300"), Some(RETRY_AFTER_MAX));
        assert_eq!(parse("inf"), None);
        assert_eq!(parse("NaN"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn refusals_and_bad_requests_are_not_the_providers_fault() {
        assert!(!Error::Refused("x".into()).is_provider_side());
        let bad = Error::BadRequest {
            status: 400,
            message: String::new(),
        };
        assert!(!bad.is_provider_side());
        assert!(Error::Timeout.is_provider_side());
        assert!(Error::RateLimited { retry_after: None }.is_provider_side());
        assert!(Error::Malformed(String::new()).is_provider_side());
    }
}
