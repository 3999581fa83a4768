//! Writing ledger rows together with the balance they change.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Error, Kind};
use crate::timestamp;

/// One balance change to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub user_id: &'a str,
    pub kind: Kind,
    /// Signed raits: negative takes money, positive gives it.
    pub amount: i64,
    pub description: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    /// What this row settles; `(kind, reference)` is unique, making the write idempotent.
    pub reference: Option<&'a str>,
}

/// Applies `entry` inside `tx`: a guarded balance update plus its ledger row. Returns the new
/// balance. A change that would take the balance below zero fails with `InsufficientBalance`
/// and changes nothing.
pub fn record(tx: &Connection, entry: &Entry<'_>) -> Result<i64, Error> {
    debug_assert!(entry.amount != 0, "a zero ledger row says nothing");
    let new_balance: Option<i64> = tx
        .prepare_cached(
            "update users set balance = balance + ?1, updated_at = ?3
             where id = ?2 and balance + ?1 >= 0
             returning balance",
        )?
        .query_row(
            params![entry.amount, entry.user_id, timestamp::now()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(balance_after) = new_balance else {
        let balance: Option<i64> = tx
            .query_row(
                "select balance from users where id = ?1",
                [entry.user_id],
                |r| r.get(0),
            )
            .optional()?;
        return Err(match balance {
            Some(balance) => Error::InsufficientBalance {
                required: -entry.amount,
                balance,
            },
            None => Error::UserNotFound,
        });
    };
    let now = timestamp::now();
    let inserted = tx
        .prepare_cached(
            "insert into transactions
                 (id, user_id, type, amount, balance_after, description, payment_id, reference,
                  created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
             on conflict (type, reference) where reference is not null do nothing",
        )?
        .execute(params![
            uuid::Uuid::now_v7().to_string(),
            entry.user_id,
            entry.kind.as_str(),
            entry.amount,
            balance_after,
            entry.description,
            entry.payment_id,
            entry.reference,
            now,
        ])?;
    if inserted == 0 {
        // The balance update above must not stand without its row: the caller rolls back.
        return Err(Error::AlreadyRecorded {
            kind: entry.kind.as_str(),
            reference: entry.reference.unwrap_or_default().to_owned(),
        });
    }
    Ok(balance_after)
}

/// Credits `EASY_WRITER_SIGNUP_BONUS` to a user created in the same transaction: an
/// `adjustment` whose reference is the user id, so it can be paid only once. Zero credits nothing.
pub fn signup_bonus(tx: &Connection, user_id: &str, amount: i64) -> Result<(), Error> {
    if amount <= 0 {
        return Ok(());
    }
    let entry = Entry {
        user_id,
        kind: Kind::Adjustment,
        amount,
        description: Some("Signup bonus"),
        payment_id: None,
        reference: Some(user_id),
    };
    record(tx, &entry).map(|_| ())
}

/// The sum of a user's ledger rows; equal to their balance (checked by tests and `user list`).
pub fn sum(conn: &Connection, user_id: &str) -> Result<i64, Error> {
    Ok(conn.query_row(
        "select coalesce(sum(amount), 0) from transactions where user_id = ?1",
        [user_id],
        |r| r.get(0),
    )?)
}

/// A ledger row as the API shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Row {
    pub id: String,
    /// `topup`, `spend`, `refund` or `adjustment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Signed raits.
    pub amount: i64,
    pub description: Option<String>,
    pub payment_id: Option<String>,
    pub created_at: String,
}

/// A page of a user's ledger rows, newest first, with the total count.
pub fn page(
    conn: &Connection,
    user_id: &str,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Row>, i64), Error> {
    let total: i64 = conn
        .prepare_cached("select count(*) from transactions where user_id = ?1")?
        .query_row([user_id], |r| r.get(0))?;
    let rows = conn
        .prepare_cached(
            "select id, type, amount, description, payment_id, created_at from transactions
             where user_id = ?1 order by created_at desc, id desc limit ?2 offset ?3",
        )?
        .query_map(params![user_id, limit, offset], |r| {
            Ok(Row {
                id: r.get(0)?,
                kind: r.get(1)?,
                amount: r.get(2)?,
                description: r.get(3)?,
                payment_id: r.get(4)?,
                created_at: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok((rows, total))
}
