//! `Idempotency-Key` for POSTs that cost money (CONTRACT §3): the same key from the same user
//! within 24 hours gets the first answer again and is charged nothing.
//!
//! The key is claimed in the same transaction as the debit ([`open_paid`]), so a claim exists
//! exactly when the money was taken; the final answer is stored in the transaction that
//! settles the work, or at once for a queued job's `202`.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::billing;
use crate::db::Db;
use crate::error::{ApiError, FieldError};
use crate::{db, timestamp};

/// How long a key is remembered.
pub const WINDOW_SECS: i64 = 24 * 3600;
/// Longest accepted key.
pub const KEY_MAX: usize = 255;

/// The `Idempotency-Key` header as the OpenAPI document describes it: visible ASCII, spaces only
/// inside, at most [`KEY_MAX`] characters.
pub struct KeyHeader;

impl utoipa::IntoParams for KeyHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(utoipa::openapi::Required::False)
                .description(Some(
                    "The same key within 24 h replays the first answer and charges nothing again",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[!-~]([ -~]*[!-~])?$"))
                        .max_length(Some(KEY_MAX)),
                ))
                .build(),
        ]
    }
}

/// What a key says about a request.
pub enum Claim {
    /// First use: go ahead.
    Fresh,
    /// Already answered: send this again.
    Replay { status: u16, body: String },
    /// The first request with this key is still running.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

/// A stable digest of what the request asked for.
pub fn request_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Claims `key` for `user_id`; an entry older than the window is forgotten first.
pub fn claim(tx: &Connection, user_id: &str, key: &str, hash: &str) -> Result<Claim, db::Error> {
    let now = time::OffsetDateTime::now_utc();
    let cutoff = timestamp::format(now - time::Duration::seconds(WINDOW_SECS));
    tx.prepare_cached(
        "delete from idempotency_keys where user_id = ?1 and key = ?2 and created_at < ?3",
    )?
    .execute(params![user_id, key, cutoff])?;
    let existing: Option<(String, Option<u16>, Option<String>)> = tx
        .prepare_cached(
            "select request_hash, response_status, response_body from idempotency_keys
             where user_id = ?1 and key = ?2",
        )?
        .query_row(params![user_id, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(match existing {
        None => {
            let stamp = timestamp::format(now);
            tx.prepare_cached(
                "insert into idempotency_keys (user_id, key, request_hash, created_at, updated_at)
                 values (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![user_id, key, hash, stamp])?;
            Claim::Fresh
        }
        Some((stored, _, _)) if stored != hash => Claim::Mismatch,
        Some((_, Some(status), Some(body))) => Claim::Replay { status, body },
        Some(_) => Claim::InFlight,
    })
}

/// Records which paid work (a session's id) the key opened, in the transaction that opened it.
pub fn attach(tx: &Connection, user_id: &str, key: &str, work_id: &str) -> Result<(), db::Error> {
    tx.prepare_cached("update idempotency_keys set work_id = ?3 where user_id = ?1 and key = ?2")?
        .execute(params![user_id, key, work_id])?;
    Ok(())
}

/// Stores `status`/`body` as the answer for the key that opened `work_id`, if that key has no
/// answer yet (start-up recovery: the run was cut off before it could answer).
pub fn finish_work(
    tx: &Connection,
    work_id: &str,
    status: u16,
    body: &str,
) -> Result<(), db::Error> {
    tx.prepare_cached(
        "update idempotency_keys set response_status = ?2, response_body = ?3, updated_at = ?4
         where work_id = ?1 and response_status is null",
    )?
    .execute(params![work_id, status, body, timestamp::now()])?;
    Ok(())
}

/// Forgets every key older than the window; returns how many.
pub fn prune(tx: &Connection) -> Result<usize, db::Error> {
    let cutoff =
        timestamp::format(time::OffsetDateTime::now_utc() - time::Duration::seconds(WINDOW_SECS));
    Ok(tx
        .prepare_cached("delete from idempotency_keys where created_at < ?1")?
        .execute(params![cutoff])?)
}

/// Stores the answer to replay.
pub fn finish(
    tx: &Connection,
    user_id: &str,
    key: &str,
    status: u16,
    body: &str,
) -> Result<(), db::Error> {
    tx.prepare_cached(
        "update idempotency_keys set response_status = ?3, response_body = ?4, updated_at = ?5
         where user_id = ?1 and key = ?2",
    )?
    .execute(params![user_id, key, status, body, timestamp::now()])?;
    Ok(())
}

/// Paid work just opened in [`open_paid`]'s transaction.
pub struct Paid<T> {
    /// The opened row.
    pub row: T,
    /// Its id, which the key records.
    pub work_id: String,
    /// For queued work: the answer (`202`) the caller gets now, stored for the key at once.
    pub accepted: Option<(u16, String)>,
}

/// Why [`open_paid`]'s `open` stopped; either way its transaction, the key's claim
/// included, is rolled back.
pub enum Refusal {
    /// A ledger or store failure; `402` for a short balance, else `500`.
    Billing(billing::Error),
    /// The request cannot be served as asked (the caller's answer, e.g. `404`, `409`).
    Answer(ApiError),
}

impl From<billing::Error> for Refusal {
    fn from(e: billing::Error) -> Self {
        Refusal::Billing(e)
    }
}

impl From<db::Error> for Refusal {
    fn from(e: db::Error) -> Self {
        Refusal::Billing(e.into())
    }
}

/// What opening paid work under an optional key gave.
pub enum Opened<T> {
    /// Opened and paid for: run it.
    Fresh(T),
    /// The key was used before: its stored answer, sent again; nothing was charged.
    Answer(Response),
}

/// Opens paid work in one write: claims `key` (when given) for `user_id` and this request's
/// `hash`, runs `open` (the row and its `spend`), records the work on the key, and stores a
/// queued job's answer. A replayed key answers its first response; a key still running or
/// used for another request is `409`; a short balance is `402` — each changing nothing.
pub async fn open_paid<T, F>(
    db: &Db,
    user_id: &str,
    key: Option<String>,
    hash: String,
    open: F,
) -> Result<Opened<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<Paid<T>, Refusal> + Send + 'static,
{
    enum Step<T> {
        Paid(T),
        Claimed(Claim),
    }
    let user_id = user_id.to_owned();
    let step = db
        .write(move |tx| {
            if let Some(key) = &key {
                match claim(tx, &user_id, key, &hash)? {
                    Claim::Fresh => {}
                    other => return Ok(Step::Claimed(other)),
                }
            }
            let paid = open(tx)?;
            if let Some(key) = &key {
                attach(tx, &user_id, key, &paid.work_id)?;
                if let Some((status, body)) = &paid.accepted {
                    finish(tx, &user_id, key, *status, body)?;
                }
            }
            Ok::<_, Refusal>(Step::Paid(paid.row))
        })
        .await;
    match step {
        Ok(Step::Paid(row)) => Ok(Opened::Fresh(row)),
        Ok(Step::Claimed(Claim::Replay { status, body })) => {
            Ok(Opened::Answer(answer(status, body)))
        }
        Ok(Step::Claimed(Claim::InFlight)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "A request with this Idempotency-Key is still running",
        )),
        Ok(Step::Claimed(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "This Idempotency-Key was used for a different request",
        )),
        Err(Refusal::Answer(answer)) => Err(answer),
        Err(Refusal::Billing(billing::Error::InsufficientBalance { required, balance })) => {
            Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_balance",
                format!("Not enough raits: {required} required, {balance} available"),
            )
            .with("required", required)
            .with("balance", balance))
        }
        Err(Refusal::Billing(e)) => Err(ApiError::internal(&e)),
    }
}

/// A stored (or fresh) JSON answer.
pub fn answer(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The `Idempotency-Key` header, if sent: 1–255 visible ASCII characters (`422` otherwise).
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        // Visible ASCII and inner spaces, as documented by [`KeyHeader`] (a header may also
        // carry tabs and bytes beyond ASCII).
        Ok(key)
            if !key.is_empty()
                && key.len() <= KEY_MAX
                && key.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::validation(vec![FieldError {
            loc: vec!["header".into(), "Idempotency-Key".into()],
            msg: format!("must be 1–{KEY_MAX} visible ASCII characters"),
            kind: "value_error".into(),
        }])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &[u8]) -> Result<Option<String>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes(value).unwrap(),
        );
        key_from(&headers).map_err(|_| ())
    }

    #[test]
    fn a_key_is_what_the_document_says() {
        assert_eq!(key(b"order 42-a").unwrap().as_deref(), Some("order 42-a"));
        assert_eq!(key(b" padded ").unwrap().as_deref(), Some("padded"));
        assert_eq!(
            key(&[b'k'; KEY_MAX]).unwrap().map(|k| k.len()),
            Some(KEY_MAX)
        );
        for refused in [
            &b""[..],
            b"   ",
            b"tab\there",
            "ключ".as_bytes(),
            &[b'k'; KEY_MAX + 1],
        ] {
            assert!(key(refused).is_err(), "{refused:?}");
        }
        assert_eq!(key_from(&HeaderMap::new()).ok(), Some(None));
    }
}
