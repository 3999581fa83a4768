//! `Idempotency-Key` for POSTs that cost money (CONTRACT §3): the same key from the same user
//! within 24 hours gets the first answer again and is charged nothing.
//!
//! The key is claimed in the same transaction as the debit, so a claim exists exactly when the
//! money was taken; the final answer is stored in the transaction that settles the work.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{db, timestamp};

/// How long a key is remembered.
pub const WINDOW_SECS: i64 = 24 * 3600;
/// Longest accepted key.
pub const KEY_MAX: usize = 255;

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
