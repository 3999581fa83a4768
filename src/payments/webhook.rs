//! A webhook call from start to answer: authenticate it (the provider module), apply it (one
//! write, with its log row), answer the way the provider expects. A call that is refused
//! changes nothing but its log row, and never gets a 5xx — except a YooKassa notification we
//! could not confirm because YooKassa's API did not answer, which it should send again.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::settle::{self, Applied};
use super::store::{self, Call};
use super::{Gateway, Incoming, Outcome, Refused, Slug};
use crate::auth::throttle::{Key, Throttle};
use crate::db::Db;
use crate::error::ApiError;

/// Longest body stored in the log.
const LOGGED_BODY_MAX: usize = 16 * 1024;
/// Longest body stored for a refused call (anyone can send those).
const REFUSED_BODY_MAX: usize = 2 * 1024;
/// Fields that are secrets or act as one (card tokens for repeat charges, signatures that
/// prove a payment to anyone who has them); removed before a call is stored.
const SECRET_FIELDS: &[&str] = &[
    "Token",
    "RebillId",
    "CardId",
    "SignatureValue",
    "Password",
    "AuthCode",
];
/// Headers worth keeping in the log; signature headers are kept as "present".
const LOGGED_HEADERS: &[&str] = &["content-type", "user-agent", "x-forwarded-for"];
const SIGNATURE_HEADERS: &[&str] = &["content-hmac", "x-content-hmac"];

/// Handles one call for a configured provider and answers it.
pub async fn handle(
    db: &Db,
    gateway: &Gateway,
    refusals_logged: &Throttle,
    incoming: &Incoming<'_>,
    remote_ip: Option<String>,
) -> Response {
    let slug = gateway.slug();
    if let Some(refused) = unknown_yookassa_payment(db, gateway, incoming).await {
        log_refusal(db, refusals_logged, slug, incoming, remote_ip, &refused).await;
        return answer(slug, &refused.outcome);
    }
    let applied = match gateway.notice(incoming).await {
        Ok(notice) => {
            let call = logged(slug, incoming, remote_ip.clone());
            let result = db
                .write(move |tx| {
                    let applied = settle::apply(tx, slug, &notice)?;
                    call.write(tx, &applied)?;
                    Ok::<_, crate::billing::Error>(applied)
                })
                .await;
            match result {
                Ok(applied) => applied,
                Err(e) => {
                    // Nothing was written; the provider sends it again.
                    tracing::error!(provider = %slug, error = %e, "cannot apply a payment notice");
                    return ApiError::internal(&e).into_response();
                }
            }
        }
        Err(rejection) => {
            tracing::warn!(provider = %slug, %rejection, "payment webhook refused");
            let applied = Applied {
                outcome: Outcome::Rejected(Refused::from(&rejection)),
                verdict: settle::verdict_of(Refused::from(&rejection)),
                payment_id: None,
                detail: Some(rejection.to_string()),
            };
            log_refusal(db, refusals_logged, slug, incoming, remote_ip, &applied).await;
            applied
        }
    };
    answer(slug, &applied.outcome)
}

/// Logs a call refused before it reached a payment, at most
/// [`REFUSALS_LOGGED_PER_MINUTE`](super::REFUSALS_LOGGED_PER_MINUTE) per client IP and with a
/// shorter body: anyone can send those, and a flood of them must not fill the disk.
async fn log_refusal(
    db: &Db,
    refusals_logged: &Throttle,
    slug: Slug,
    incoming: &Incoming<'_>,
    remote_ip: Option<String>,
    applied: &Applied,
) {
    let ip = remote_ip.as_deref().unwrap_or("unknown");
    let key = Key::new("payments:refusal-log", &[ip.as_bytes()]);
    if refusals_logged
        .attempt(key, super::REFUSALS_LOGGED_PER_MINUTE)
        .is_err()
    {
        tracing::warn!(provider = %slug, client.ip = ip, "refused payment webhooks not logged: too many");
        return;
    }
    let mut call = logged(slug, incoming, remote_ip);
    cap(&mut call.body, REFUSED_BODY_MAX);
    let applied = applied.clone();
    if let Err(e) = db.write(move |tx| call.write(tx, &applied)).await {
        tracing::error!(provider = %slug, error = %e, "cannot log a payment webhook");
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn cap(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// A YooKassa notification about a payment we never opened, refused before it can make us
/// re-fetch anything: a flood of invented ids must not turn into requests to YooKassa.
async fn unknown_yookassa_payment(
    db: &Db,
    gateway: &Gateway,
    incoming: &Incoming<'_>,
) -> Option<Applied> {
    if !matches!(gateway, Gateway::YooKassa(_)) {
        return None;
    }
    let id = super::yookassa::YooKassa::claimed_payment(incoming.body)?;
    let find = super::Find::External(id.clone());
    let known = db
        .read(move |c| store::find(c, Slug::YooKassa, &find))
        .await
        .ok()?;
    known.is_none().then(|| Applied {
        outcome: Outcome::Rejected(Refused::UnknownPayment),
        verdict: settle::verdict_of(Refused::UnknownPayment),
        payment_id: None,
        detail: Some(format!("no yookassa payment {id}")),
    })
}

/// The provider's own answer.
pub fn answer(slug: Slug, outcome: &Outcome) -> Response {
    let plain = |text: String| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()
    };
    match (slug, outcome) {
        (Slug::CloudPayments, outcome) => {
            let code = match outcome {
                Outcome::Accepted { .. } => 0,
                Outcome::Rejected(Refused::UnknownPayment) => 10,
                Outcome::Rejected(Refused::Mismatch) => 12,
                Outcome::Rejected(Refused::NotPending) => 20,
                Outcome::Rejected(_) => 13,
            };
            (StatusCode::OK, axum::Json(json!({ "code": code }))).into_response()
        }
        (Slug::YooKassa, Outcome::Accepted { .. }) => {
            (StatusCode::OK, axum::Json(json!({}))).into_response()
        }
        (Slug::Robokassa, Outcome::Accepted { number }) => plain(format!("OK{number}")),
        (Slug::TBank, Outcome::Accepted { .. }) => plain("OK".into()),
        (_, Outcome::Rejected(Refused::Unverifiable)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            "The payment could not be confirmed with the provider now; send it again later",
        )
        .into_response(),
        (_, Outcome::Rejected(Refused::Malformed)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_notification",
            "Not a notification in this provider's format",
        )
        .into_response(),
        (_, Outcome::Rejected(_)) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_notification",
            "The notification is not authentic or does not match a payment",
        )
        .into_response(),
    }
}

/// A call prepared for the log before anything is decided.
struct Logged {
    provider: Slug,
    remote_ip: Option<String>,
    method: String,
    headers: String,
    body: String,
}

impl Logged {
    fn write(&self, tx: &rusqlite::Connection, applied: &Applied) -> Result<(), crate::db::Error> {
        store::log_call(
            tx,
            &Call {
                provider: self.provider.as_str(),
                payment_id: applied.payment_id.as_deref(),
                remote_ip: self.remote_ip.as_deref(),
                method: &self.method,
                headers: &self.headers,
                body: &self.body,
                verdict: applied.verdict,
                detail: applied.detail.as_deref(),
            },
        )
    }
}

fn logged(provider: Slug, incoming: &Incoming<'_>, remote_ip: Option<String>) -> Logged {
    let mut body = redact(incoming);
    cap(&mut body, LOGGED_BODY_MAX);
    Logged {
        provider,
        remote_ip,
        method: incoming.method.to_string(),
        headers: headers_json(incoming.headers).to_string(),
        body,
    }
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for name in LOGGED_HEADERS {
        if let Some(v) = headers.get(*name).and_then(|v| v.to_str().ok()) {
            out.insert(
                (*name).into(),
                v.chars().take(256).collect::<String>().into(),
            );
        }
    }
    for name in SIGNATURE_HEADERS {
        if headers.contains_key(*name) {
            out.insert((*name).into(), "present".into());
        }
    }
    Value::Object(out)
}

/// The call's parameters (query and body) with secret fields replaced, as text.
fn redact(incoming: &Incoming<'_>) -> String {
    let is_secret = |k: &str| SECRET_FIELDS.iter().any(|s| s.eq_ignore_ascii_case(k));
    let mut parts = Vec::new();
    if let Some(query) = incoming.query.filter(|q| !q.is_empty()) {
        parts.push(format!("?{}", redact_form(query.as_bytes(), &is_secret)));
    }
    if !incoming.body.is_empty() {
        let body = match serde_json::from_slice::<Value>(incoming.body) {
            Ok(mut value) => {
                redact_json(&mut value, &is_secret);
                value.to_string()
            }
            Err(_) if looks_like_form(incoming.body) => redact_form(incoming.body, &is_secret),
            Err(_) => format!("<{} bytes, not JSON or a form>", incoming.body.len()),
        };
        parts.push(body);
    }
    parts.join("\n")
}

fn looks_like_form(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| s.contains('=') && !s.contains(char::is_whitespace))
}

fn redact_form(raw: &[u8], is_secret: &dyn Fn(&str) -> bool) -> String {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw).unwrap_or_default();
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| {
            let v = if is_secret(&k) {
                "[redacted]".to_owned()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn redact_json(value: &mut Value, is_secret: &dyn Fn(&str) -> bool) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret(k) {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact_json(v, is_secret);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(v, is_secret)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn secrets_never_reach_the_log() {
        let headers = HeaderMap::new();
        let method = Method::POST;
        let body =
            br#"{"TerminalKey":"T","Token":"abc","Data":{"CardId":"9"},"Status":"CONFIRMED"}"#;
        let incoming = Incoming {
            method: &method,
            query: Some("OutSum=1&SignatureValue=deadbeef&Shp_x=1"),
            headers: &headers,
            body,
            kind: None,
        };
        let text = redact(&incoming);
        assert!(!text.contains("abc") && !text.contains("deadbeef") && !text.contains("\"9\""));
        assert!(
            text.contains("CONFIRMED") && text.contains("Shp_x=1"),
            "{text}"
        );
    }
}
