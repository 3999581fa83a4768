//! The `payments`, `payment_refunds` and `payment_webhooks` rows.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Find, Slug, Started};
use crate::{db, timestamp};

/// A payment as stored.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: String,
    pub number: i64,
    pub user_id: String,
    pub provider: Slug,
    pub status: String,
    pub amount_rub: i64,
    pub amount_kopecks: i64,
    pub amount_raits: i64,
    pub external_id: Option<String>,
    pub provider_status: Option<String>,
    pub payment_url: Option<String>,
    pub refunded_kopecks: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
}

const COLUMNS: &str = "id, number, user_id, provider, status, amount_rub, amount_kopecks, \
     amount_raits, external_id, provider_status, payment_url, refunded_kopecks, created_at, \
     completed_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Payment> {
    let provider: String = r.get(3)?;
    Ok(Payment {
        id: r.get(0)?,
        number: r.get(1)?,
        user_id: r.get(2)?,
        provider: Slug::parse(&provider).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown provider {provider}").into(),
            )
        })?,
        status: r.get(4)?,
        amount_rub: r.get(5)?,
        amount_kopecks: r.get(6)?,
        amount_raits: r.get(7)?,
        external_id: r.get(8)?,
        provider_status: r.get(9)?,
        payment_url: r.get(10)?,
        refunded_kopecks: r.get(11)?,
        created_at: r.get(12)?,
        completed_at: r.get(13)?,
    })
}

/// Opens a `pending` payment with the next number.
pub fn open(
    tx: &Connection,
    user_id: &str,
    provider: Slug,
    amount_rub: i64,
    amount_raits: i64,
) -> Result<Payment, db::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    // One writer: max + 1 cannot race.
    let row = tx
        .prepare_cached(&format!(
            "insert into payments (id, number, user_id, provider, status, amount_rub,
                 amount_kopecks, amount_raits, created_at, updated_at)
             values (?1, (select coalesce(max(number), 0) + 1 from payments), ?2, ?3, 'pending',
                 ?4, ?4 * 100, ?5, ?6, ?6)
             returning {COLUMNS}"
        ))?
        .query_row(
            params![
                id,
                user_id,
                provider.as_str(),
                amount_rub,
                amount_raits,
                now
            ],
            from_row,
        )?;
    Ok(row)
}

/// Records what the provider answered to a create; false when the payment is no longer
/// `pending` (a notification settled it meanwhile).
pub fn started(tx: &Connection, id: &str, started: &Started) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached(
            "update payments set external_id = ?2, payment_url = ?3, provider_status = ?4,
                 updated_at = ?5
             where id = ?1 and status = 'pending'",
        )?
        .execute(params![
            id,
            started.external_id,
            started.payment_url,
            started.provider_status,
            timestamp::now()
        ])?
        == 1)
}

/// Moves a `pending` payment to `failed`; false when it was not pending.
pub fn fail(
    tx: &Connection,
    id: &str,
    provider_status: Option<&str>,
    error: &str,
) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached(
            "update payments set status = 'failed', error = ?3,
                 provider_status = coalesce(?2, provider_status), updated_at = ?4
             where id = ?1 and status = 'pending'",
        )?
        .execute(params![id, provider_status, error, timestamp::now()])?
        == 1)
}

/// Moves a `pending` (or `failed`: money that arrives late is still money) payment to
/// `completed`; false when it already was completed or refunded.
pub fn complete(
    tx: &Connection,
    id: &str,
    external_id: Option<&str>,
    provider_status: &str,
    test: bool,
) -> Result<bool, db::Error> {
    let now = timestamp::now();
    Ok(tx
        .prepare_cached(
            "update payments set status = 'completed', completed_at = ?4, updated_at = ?4,
                 external_id = coalesce(external_id, ?2), provider_status = ?3, test = ?5,
                 error = null
             where id = ?1 and status in ('pending', 'failed')",
        )?
        .execute(params![id, external_id, provider_status, now, test])?
        == 1)
}

/// Stores the provider's latest status word (and, for reconciliation, when it was asked).
pub fn touch(
    tx: &Connection,
    id: &str,
    provider_status: Option<&str>,
    checked: bool,
) -> Result<(), db::Error> {
    let now = timestamp::now();
    tx.prepare_cached(
        "update payments set provider_status = coalesce(?2, provider_status), updated_at = ?3,
             checked_at = case when ?4 then ?3 else checked_at end
         where id = ?1",
    )?
    .execute(params![id, provider_status, now, checked])?;
    Ok(())
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Payment>, db::Error> {
    Ok(conn
        .prepare_cached(&format!("select {COLUMNS} from payments where id = ?1"))?
        .query_row([id], from_row)
        .optional()?)
}

/// The payment of `provider` a notice points at.
pub fn find(conn: &Connection, provider: Slug, find: &Find) -> Result<Option<Payment>, db::Error> {
    let (column, value): (&str, rusqlite::types::Value) = match find {
        Find::Id(id) => ("id", id.clone().into()),
        Find::Number(n) => ("number", (*n).into()),
        Find::External(e) => ("external_id", e.clone().into()),
    };
    Ok(conn
        .prepare_cached(&format!(
            "select {COLUMNS} from payments where {column} = ?1 and provider = ?2"
        ))?
        .query_row(params![value, provider.as_str()], from_row)
        .optional()?)
}

/// How many of the user's payments are still waiting for the payer.
pub fn pending_count(conn: &Connection, user_id: &str) -> Result<i64, db::Error> {
    Ok(conn
        .prepare_cached("select count(*) from payments where user_id = ?1 and status = 'pending'")?
        .query_row([user_id], |r| r.get(0))?)
}

/// Pending payments created before `before` whose provider was last asked before
/// `asked_before` (or never), oldest first.
pub fn due(
    conn: &Connection,
    before: &str,
    asked_before: &str,
    limit: i64,
) -> Result<Vec<Payment>, db::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "select {COLUMNS} from payments
         where status = 'pending' and created_at < ?1
           and (checked_at is null or checked_at < ?2)
         order by created_at limit ?3"
    ))?;
    let rows = stmt
        .query_map(params![before, asked_before, limit], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Pending payments whose create never got the provider's answer (the server stopped
/// between opening the row and recording the answer).
pub fn unstarted(conn: &Connection) -> Result<Vec<String>, db::Error> {
    let mut stmt = conn.prepare_cached(
        "select id from payments where status = 'pending' and payment_url is null",
    )?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Whether this refund was already applied.
pub fn refund_seen(tx: &Connection, provider: Slug, refund_id: &str) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached("select 1 from payment_refunds where provider = ?1 and refund_id = ?2")?
        .query_row(params![provider.as_str(), refund_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Records an applied refund and adds it to its payment (`refunded` once the whole amount
/// is back with the payer).
pub fn add_refund(
    tx: &Connection,
    provider: Slug,
    refund_id: &str,
    payment: &Payment,
    amount_kopecks: i64,
    raits_debited: i64,
    shortfall_raits: i64,
) -> Result<(), db::Error> {
    let now = timestamp::now();
    tx.prepare_cached(
        "insert into payment_refunds (provider, refund_id, payment_id, amount_kopecks,
             raits_debited, shortfall_raits, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        provider.as_str(),
        refund_id,
        payment.id,
        amount_kopecks,
        raits_debited,
        shortfall_raits,
        now
    ])?;
    tx.prepare_cached(
        "update payments set refunded_kopecks = refunded_kopecks + ?2,
             shortfall_raits = shortfall_raits + ?3,
             status = case when refunded_kopecks + ?2 >= amount_kopecks then 'refunded'
                           else status end,
             updated_at = ?4
         where id = ?1",
    )?
    .execute(params![payment.id, amount_kopecks, shortfall_raits, now])?;
    Ok(())
}

/// One webhook call (or reconciliation answer) for the log.
pub struct Call<'a> {
    pub provider: &'a str,
    pub payment_id: Option<&'a str>,
    pub remote_ip: Option<&'a str>,
    pub method: &'a str,
    pub headers: &'a str,
    pub body: &'a str,
    pub verdict: &'a str,
    pub detail: Option<&'a str>,
}

pub fn log_call(tx: &Connection, call: &Call<'_>) -> Result<(), db::Error> {
    tx.prepare_cached(
        "insert into payment_webhooks (id, provider, payment_id, remote_ip, method, headers,
             body, verdict, detail, created_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        uuid::Uuid::now_v7().to_string(),
        call.provider,
        call.payment_id,
        call.remote_ip,
        call.method,
        call.headers,
        call.body,
        call.verdict,
        call.detail,
        timestamp::now()
    ])?;
    Ok(())
}

/// Keeps the webhook log bounded: 90 days, and at most `keep` rows.
pub fn prune_calls(tx: &Connection, keep: i64) -> Result<usize, db::Error> {
    let cutoff = timestamp::format(time::OffsetDateTime::now_utc() - time::Duration::days(90));
    let old = tx
        .prepare_cached("delete from payment_webhooks where created_at < ?1")?
        .execute([cutoff])?;
    let over = tx
        .prepare_cached(
            "delete from payment_webhooks where id in (
                 select id from payment_webhooks order by created_at desc limit -1 offset ?1)",
        )?
        .execute([keep])?;
    Ok(old + over)
}
