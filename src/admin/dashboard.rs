//! `/admin`: the service at a glance — totals, 30 days of sign-ups, money and generations as
//! charts, providers since start, payments by provider and status. The numbers are SQL
//! aggregates over indexed date ranges, cached for a few seconds per database.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use minijinja::Value;
use rusqlite::Connection;
use serde::Serialize;

use super::{Admin, context, view};
use crate::app::AppState;
use crate::db;

const DAYS: i64 = 30;
/// How long the aggregates are reused; a page of a busy service stays fast.
const FRESH: Duration = Duration::from_secs(10);

static CACHE: LazyLock<moka::sync::Cache<PathBuf, Arc<Stats>>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .time_to_live(FRESH)
        .max_capacity(64)
        .build()
});

#[derive(Debug, Serialize)]
struct Stats {
    users: i64,
    admins: i64,
    raits_held: i64,
    pending_payments: i64,
    /// Oldest first, one entry per UTC day.
    days: Vec<String>,
    signups: Vec<i64>,
    spent: Vec<i64>,
    topped_up: Vec<i64>,
    generations: Vec<i64>,
    failures: Vec<i64>,
    payments: Vec<PaymentGroup>,
}

#[derive(Debug, Serialize)]
struct PaymentGroup {
    provider: String,
    status: String,
    count: i64,
    amount_rub: i64,
}

pub async fn page(State(state): State<AppState>, admin: Admin) -> Response {
    let key = state.db.path().to_owned();
    let stats = match CACHE.get(&key) {
        Some(stats) => stats,
        None => match state.db.read(collect).await {
            Ok(stats) => {
                let stats = Arc::new(stats);
                CACHE.insert(key, stats.clone());
                stats
            }
            Err(e) => {
                tracing::error!(error = %e, "admin dashboard");
                return view::page_with(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "error.html",
                    Value::from_iter([("message", "Не удалось прочитать базу данных")]),
                );
            }
        },
    };
    let chart = |v: &[i64]| Value::from_safe_string(view::bars(v));
    let total = |v: &[i64]| v.iter().sum::<i64>();
    let charts = vec![
        ("Регистрации", chart(&stats.signups), total(&stats.signups)),
        ("Потрачено райтов", chart(&stats.spent), total(&stats.spent)),
        (
            "Пополнено райтов",
            chart(&stats.topped_up),
            total(&stats.topped_up),
        ),
        (
            "Генерации",
            chart(&stats.generations),
            total(&stats.generations),
        ),
        (
            "Ошибки генераций",
            chart(&stats.failures),
            total(&stats.failures),
        ),
    ];
    let charts: Vec<Value> = charts
        .into_iter()
        .map(|(title, svg, sum)| {
            Value::from_iter([
                ("title", Value::from(title)),
                ("svg", svg),
                ("total", Value::from(sum)),
            ])
        })
        .collect();
    let providers = state.llm.metrics().totals();
    view::page(
        "dashboard.html",
        context(
            &admin,
            "dashboard",
            vec![
                ("stats", Value::from_serialize(&*stats)),
                ("charts", Value::from(charts)),
                ("providers", Value::from_serialize(&providers)),
                ("first_day", Value::from(stats.days.first().cloned())),
                ("last_day", Value::from(stats.days.last().cloned())),
            ],
        ),
    )
}

fn collect(c: &Connection) -> Result<Stats, db::Error> {
    let today = time::OffsetDateTime::now_utc().date();
    let days: Vec<String> = (0..DAYS)
        .rev()
        .map(|back| (today - time::Duration::days(back)).to_string())
        .collect();
    let since = format!("{}T00:00:00Z", days[0]);
    let scalar = |sql: &str| -> Result<i64, db::Error> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
    let per_day = |sql: &str| -> Result<Vec<i64>, db::Error> {
        let mut by_day = BTreeMap::new();
        let mut stmt = c.prepare_cached(sql)?;
        let rows = stmt.query_map([&since], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (day, n) = row?;
            by_day.insert(day, n);
        }
        Ok(days
            .iter()
            .map(|d| by_day.get(d).copied().unwrap_or(0))
            .collect())
    };
    let mut payments = Vec::new();
    {
        let mut stmt = c.prepare_cached(
            "select provider, status, count(*), coalesce(sum(amount_rub), 0) from payments
             group by provider, status order by provider, status",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PaymentGroup {
                provider: r.get(0)?,
                status: r.get(1)?,
                count: r.get(2)?,
                amount_rub: r.get(3)?,
            })
        })?;
        for row in rows {
            payments.push(row?);
        }
    }
    Ok(Stats {
        users: scalar("select count(*) from users")?,
        admins: scalar("select count(*) from users where is_admin = 1")?,
        raits_held: scalar("select coalesce(sum(balance), 0) from users")?,
        pending_payments: scalar("select count(*) from payments where status = 'pending'")?,
        signups: per_day(
            "select substr(created_at, 1, 10), count(*) from users where created_at >= ?1
             group by 1",
        )?,
        spent: per_day(
            "select substr(created_at, 1, 10), -sum(amount) from transactions
             where created_at >= ?1 and type = 'spend' group by 1",
        )?,
        topped_up: per_day(
            "select substr(created_at, 1, 10), sum(amount) from transactions
             where created_at >= ?1 and type = 'topup' group by 1",
        )?,
        generations: per_day(
            "select substr(created_at, 1, 10), count(*) from generation_sessions
             where created_at >= ?1 group by 1",
        )?,
        failures: per_day(
            "select substr(created_at, 1, 10), count(*) from generation_sessions
             where created_at >= ?1 and status = 'failed' group by 1",
        )?,
        days,
        payments,
    })
}
