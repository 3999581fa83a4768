//! SQL for generation sessions. Money moves here only through `billing::ledger`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use super::{Session, SessionError};
use crate::billing::{self, ledger};
use crate::{db, idempotency, timestamp};

const COLUMNS: &str = "id, tool_id, mode, status, input_data, result, provider_used, tokens_used, \
                       cost_raits, created_at, completed_at, error_code, error_message";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    let input: String = r.get(4)?;
    let result: Option<String> = r.get(5)?;
    let error_code: Option<String> = r.get(11)?;
    Ok(Session {
        id: r.get(0)?,
        tool_id: r.get(1)?,
        mode: r.get(2)?,
        status: r.get(3)?,
        input_data: serde_json::from_str(&input).unwrap_or(Value::Null),
        result: result
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or(Value::Null),
        provider_used: r.get(6)?,
        tokens_used: r.get(7)?,
        cost_raits: r.get(8)?,
        created_at: r.get(9)?,
        completed_at: r.get(10)?,
        error: match error_code {
            Some(code) => Some(SessionError {
                code,
                message: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
            }),
            None => None,
        },
    })
}

/// A session to open, paid for up front.
pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub tool_id: &'a str,
    pub mode: &'a str,
    /// `in_progress` for quick runs, `pending` for queued jobs.
    pub status: &'a str,
    pub input: &'a Value,
    pub cost: i64,
    pub description: &'a str,
}

/// Inserts the session and debits its price as a `spend` row, in the caller's transaction.
/// Fails with `InsufficientBalance` (and changes nothing once the caller rolls back) when short.
pub fn open(tx: &Connection, new: &NewSession<'_>) -> Result<Session, billing::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into generation_sessions
             (id, user_id, tool_id, mode, status, input_data, cost_raits, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
    )?
    .execute(params![
        id,
        new.user_id,
        new.tool_id,
        new.mode,
        new.status,
        new.input.to_string(),
        new.cost,
        now
    ])?;
    if new.cost > 0 {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id: new.user_id,
                kind: billing::Kind::Spend,
                amount: -new.cost,
                description: Some(new.description),
                payment_id: None,
                reference: Some(&id),
            },
        )?;
    }
    Ok(by_id(tx, new.user_id, &id)?.expect("just inserted"))
}

/// What a finished generation produced.
pub struct Outcome<'a> {
    pub result: &'a Value,
    pub provider: &'a str,
    pub tokens: i64,
}

/// Marks a running session completed.
pub fn complete(
    tx: &Connection,
    user_id: &str,
    id: &str,
    outcome: &Outcome<'_>,
) -> Result<Session, db::Error> {
    let now = timestamp::now();
    tx.prepare_cached(
        "update generation_sessions
         set status = 'completed', result = ?3, provider_used = ?4, tokens_used = ?5,
             completed_at = ?6, updated_at = ?6
         where id = ?1 and user_id = ?2 and status in ('pending', 'in_progress')",
    )?
    .execute(params![
        id,
        user_id,
        outcome.result.to_string(),
        outcome.provider,
        outcome.tokens,
        now
    ])?;
    Ok(by_id(tx, user_id, id)?.expect("session exists"))
}

/// Marks a session failed and refunds what it cost, in the caller's transaction. A session
/// already settled is left as it is (the refund's unique reference makes this idempotent).
pub fn fail(
    tx: &Connection,
    user_id: &str,
    id: &str,
    error: &SessionError,
    provider: Option<&str>,
) -> Result<Session, billing::Error> {
    let now = timestamp::now();
    let changed = tx
        .prepare_cached(
            "update generation_sessions
             set status = 'failed', error_code = ?3, error_message = ?4, provider_used = ?5,
                 completed_at = ?6, updated_at = ?6
             where id = ?1 and user_id = ?2 and status in ('pending', 'in_progress')",
        )?
        .execute(params![
            id,
            user_id,
            error.code,
            error.message,
            provider,
            now
        ])?;
    let session = by_id(tx, user_id, id)?.ok_or(billing::Error::UserNotFound)?;
    if changed == 1 && session.cost_raits > 0 {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id,
                kind: billing::Kind::Refund,
                amount: session.cost_raits,
                description: Some("Возврат: генерация не удалась"),
                payment_id: None,
                reference: Some(id),
            },
        )?;
    }
    Ok(session)
}

/// One session of `user_id`; another user's session is `None`.
pub fn by_id(conn: &Connection, user_id: &str, id: &str) -> Result<Option<Session>, db::Error> {
    Ok(conn
        .prepare_cached(&format!(
            "select {COLUMNS} from generation_sessions where id = ?1 and user_id = ?2"
        ))?
        .query_row(params![id, user_id], from_row)
        .optional()?)
}

/// Filters of the history list.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub tool_id: Option<String>,
    pub status: Option<String>,
}

/// A page of `user_id`'s sessions, newest first, with the total count.
pub fn list(
    conn: &Connection,
    user_id: &str,
    filter: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Session>, i64), db::Error> {
    let condition = "user_id = ?1 and (?2 is null or tool_id = ?2) and (?3 is null or status = ?3)";
    let total: i64 = conn
        .prepare_cached(&format!(
            "select count(*) from generation_sessions where {condition}"
        ))?
        .query_row(params![user_id, filter.tool_id, filter.status], |r| {
            r.get(0)
        })?;
    let sessions = conn
        .prepare_cached(&format!(
            "select {COLUMNS} from generation_sessions where {condition}
             order by created_at desc, id desc limit ?4 offset ?5"
        ))?
        .query_map(
            params![user_id, filter.tool_id, filter.status, limit, offset],
            from_row,
        )?
        .collect::<Result<_, _>>()?;
    Ok((sessions, total))
}

/// Moves a queued session to `in_progress`; false when it is no longer queued.
pub fn start(tx: &Connection, user_id: &str, id: &str) -> Result<bool, db::Error> {
    let changed = tx
        .prepare_cached(
            "update generation_sessions set status = 'in_progress', updated_at = ?3
             where id = ?1 and user_id = ?2 and status = 'pending'",
        )?
        .execute(params![id, user_id, timestamp::now()])?;
    Ok(changed == 1)
}

/// Fails and refunds every `in_progress` session (start-up: nothing is running yet, so these
/// were cut off by a crash or kill), and stores the refunded failure as the answer of the
/// `Idempotency-Key` that opened each, so a retry learns the outcome instead of hearing
/// "still running" for a day. Returns how many.
pub fn interrupt_running(tx: &Connection, error: &SessionError) -> Result<usize, billing::Error> {
    let running: Vec<(String, String)> = tx
        .prepare_cached("select user_id, id from generation_sessions where status = 'in_progress'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (user_id, id) in &running {
        let session = fail(tx, user_id, id, error, None)?;
        idempotency::finish_work(tx, id, 503, &session.failure_body())?;
    }
    Ok(running.len())
}

/// A session waiting in the queue.
pub struct Queued {
    pub id: String,
    pub user_id: String,
    pub tool_id: String,
    pub mode: String,
    pub input_data: Value,
    pub cost_raits: i64,
}

/// Every `pending` session, oldest first.
pub fn queued(conn: &Connection) -> Result<Vec<Queued>, db::Error> {
    Ok(conn
        .prepare_cached(
            "select id, user_id, tool_id, mode, input_data, cost_raits from generation_sessions
             where status = 'pending' order by created_at, id",
        )?
        .query_map([], |r| {
            let input: String = r.get(4)?;
            Ok(Queued {
                id: r.get(0)?,
                user_id: r.get(1)?,
                tool_id: r.get(2)?,
                mode: r.get(3)?,
                input_data: serde_json::from_str(&input).unwrap_or(Value::Null),
                cost_raits: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}
