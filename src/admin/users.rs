//! `/admin/users`: search and pages, a user's detail (balance, transactions, sessions,
//! identities, payments) and the actions on them — each through the domain code the API uses,
//! each in the audit log — and `/admin/audit`.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::{Admin, audit, context, lists, view};
use crate::app::AppState;
use crate::billing::{self, Kind, ledger};
use crate::{db, mail, users};

/// Largest single balance adjustment, either way.
const ADJUST_MAX: i64 = 1_000_000_000;
const REASON_MAX: usize = 200;

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct Row {
    id: String,
    email: String,
    name: Option<String>,
    provider: String,
    balance: i64,
    is_active: bool,
    is_admin: bool,
    is_verified: bool,
    created_at: String,
}

pub async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<ListQuery>,
) -> Response {
    let q = query
        .q
        .map(|q| q.trim().chars().take(255).collect::<String>())
        .filter(|q| !q.is_empty());
    let offset = view::offset(query.offset);
    let map = |r: &rusqlite::Row<'_>| {
        Ok(Row {
            id: r.get(0)?,
            email: r.get(1)?,
            name: r.get(2)?,
            provider: r.get(3)?,
            balance: r.get(4)?,
            is_active: r.get(5)?,
            is_admin: r.get(6)?,
            is_verified: r.get(7)?,
            created_at: r.get(8)?,
        })
    };
    const SELECT: &str = "select id, email, name, provider, balance, is_active, is_admin, \
                          is_verified, created_at from users";
    let mut filter = lists::Where::default();
    let order = match &q {
        // An email prefix (the nocase index serves it), or an exact id.
        Some(q) => {
            filter.add_all(
                "(email like ? escape '\\' or id = ?)",
                vec![lists::like_prefix(q).into(), q.clone().into()],
            );
            "email"
        }
        None => "created_at desc, id desc",
    };
    let rows = lists::page_of(&state, SELECT, filter, order, offset, map).await;
    lists::render(
        &admin,
        "users",
        "users.html",
        "пользователей",
        rows,
        vec![("q", q)],
        offset,
        Vec::new(),
    )
}

#[derive(Serialize)]
struct Detail {
    user: Row,
    transactions: Vec<billing::ledger::Row>,
    sessions: Vec<SessionRow>,
    identities: Vec<IdentityRow>,
    payments: Vec<PaymentRow>,
    ledger_sum: i64,
}

#[derive(Serialize)]
struct SessionRow {
    id: String,
    created_at: String,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
}

#[derive(Serialize)]
struct IdentityRow {
    provider: String,
    email: Option<String>,
    created_at: String,
}

#[derive(Serialize)]
struct PaymentRow {
    id: String,
    number: i64,
    provider: String,
    status: String,
    amount_rub: i64,
    amount_raits: i64,
    created_at: String,
}

fn detail_of(c: &Connection, id: &str) -> Result<Option<Detail>, db::Error> {
    let Some(u) = users::store::by_id(c, id)? else {
        return Ok(None);
    };
    let (transactions, _) = ledger::page(c, id, 20, 0).map_err(|e| match e {
        billing::Error::Db(e) => e,
        other => db::Error::Task(other.to_string()),
    })?;
    let sessions = c
        .prepare_cached(
            "select id, created_at, revoked_at, revoked_reason from auth_sessions
             where user_id = ?1 order by created_at desc limit 20",
        )?
        .query_map([id], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                created_at: r.get(1)?,
                revoked_at: r.get(2)?,
                revoked_reason: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let identities = c
        .prepare_cached(
            "select provider, email, created_at from user_identities where user_id = ?1",
        )?
        .query_map([id], |r| {
            Ok(IdentityRow {
                provider: r.get(0)?,
                email: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let payments = c
        .prepare_cached(
            "select id, number, provider, status, amount_rub, amount_raits, created_at
             from payments where user_id = ?1 order by created_at desc limit 20",
        )?
        .query_map([id], |r| {
            Ok(PaymentRow {
                id: r.get(0)?,
                number: r.get(1)?,
                provider: r.get(2)?,
                status: r.get(3)?,
                amount_rub: r.get(4)?,
                amount_raits: r.get(5)?,
                created_at: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let ledger_sum = c.query_row(
        "select coalesce(sum(amount), 0) from transactions where user_id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(Some(Detail {
        user: Row {
            id: u.id,
            email: u.email,
            name: u.name,
            provider: u.provider,
            balance: u.balance,
            is_active: u.is_active,
            is_admin: u.is_admin,
            is_verified: u.is_verified,
            created_at: u.created_at,
        },
        transactions,
        sessions,
        identities,
        payments,
        ledger_sum,
    }))
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// What a finished action says, by its code (never text from the query string).
fn message(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "adjusted" => "Баланс изменён",
        "short" => "Списание больше баланса: баланс не может стать отрицательным",
        "bad_amount" => "Сумма — целое число райтов, не ноль, по модулю не больше миллиарда",
        "bad_reason" => "Укажите причину (до 200 символов)",
        "activated" => "Пользователь включён",
        "deactivated" => "Пользователь отключён, его сессии завершены",
        "made_admin" => "Назначен администратором",
        "revoked_admin" => "Права администратора сняты",
        "last_admin" => "Это последний администратор: его нельзя отключить или лишить прав",
        "reset_sent" => "Письмо для сброса пароля отправлено",
        "no_mail" => "Почта не настроена (SMTP_URL): письмо не отправить",
        _ => return None,
    })
}

pub async fn detail(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let found = state.db.read(move |c| detail_of(c, &id)).await;
    match found {
        Ok(Some(detail)) => view::page(
            "user.html",
            context(
                &admin,
                "users",
                vec![
                    ("d", Value::from_serialize(&detail)),
                    ("message", Value::from(message(done.done.as_deref()))),
                    ("mail", Value::from(state.mailer.is_some())),
                ],
            ),
        ),
        Ok(None) => view::not_found(),
        Err(e) => {
            tracing::error!(error = %e, "admin user detail");
            view::failed("Не удалось прочитать пользователя")
        }
    }
}

fn back(id: &str, done: &str) -> Response {
    Redirect::to(&format!("/admin/users/{id}?done={done}")).into_response()
}

#[derive(Deserialize)]
pub struct Adjust {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
}

/// A balance adjustment through the ledger, with the reason in the row and the audit log.
pub async fn adjust(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<Adjust>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let Some(amount) = form
        .amount
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|a| *a != 0 && a.abs() <= ADJUST_MAX)
    else {
        return back(&id, "bad_amount");
    };
    let reason = form.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > REASON_MAX {
        return back(&id, "bad_reason");
    }
    let target = id.clone();
    let result = state
        .db
        .write(move |tx| {
            let description = format!("Корректировка администратором: {reason}");
            let balance = ledger::record(
                tx,
                &ledger::Entry {
                    user_id: &target,
                    kind: Kind::Adjustment,
                    amount,
                    description: Some(&description),
                    payment_id: None,
                    reference: None,
                },
            )?;
            audit::record(
                tx,
                &admin,
                "adjust_balance",
                Some(&target),
                Some(&format!("{amount:+} raits ({reason}); balance {balance}")),
            )?;
            Ok::<_, billing::Error>(())
        })
        .await;
    match result {
        Ok(()) => back(&id, "adjusted"),
        Err(billing::Error::InsufficientBalance { .. }) => back(&id, "short"),
        Err(billing::Error::UserNotFound) => view::not_found(),
        Err(e) => {
            tracing::error!(error = %e, "admin balance adjustment");
            view::failed("Не удалось изменить баланс")
        }
    }
}

#[derive(Deserialize)]
pub struct Flag {
    #[serde(default)]
    csrf: String,
    /// `1` to set, anything else to clear.
    #[serde(default)]
    value: String,
}

/// Why a flag change is refused, or the result code.
enum Changed {
    Done(&'static str),
    LastAdmin,
    Missing,
}

/// Active admins other than `id`.
fn other_admins(tx: &Connection, id: &str) -> Result<i64, db::Error> {
    Ok(tx.query_row(
        "select count(*) from users where is_admin = 1 and is_active = 1 and id != ?1",
        [id],
        |r| r.get(0),
    )?)
}

/// The two flags an admin sets on a user.
#[derive(Clone, Copy)]
enum Which {
    Active,
    Admin,
}

pub async fn set_active(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<Flag>,
) -> Response {
    change(state, admin, id, form, Which::Active).await
}

pub async fn set_admin(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<Flag>,
) -> Response {
    change(state, admin, id, form, Which::Admin).await
}

/// Sets or clears a flag in one write with its audit row. Clearing either flag of the last
/// active admin is refused; losing either also ends the user's admin sessions, and
/// deactivation ends their API sessions too.
async fn change(state: AppState, admin: Admin, id: String, form: Flag, which: Which) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let set = form.value == "1";
    let target = id.clone();
    let result = state
        .db
        .write(move |tx| {
            let Some(user) = users::store::by_id(tx, &target)? else {
                return Ok(Changed::Missing);
            };
            if !set && user.is_admin && other_admins(tx, &target)? == 0 {
                return Ok(Changed::LastAdmin);
            }
            let (action, done) = match (which, set) {
                (Which::Active, true) => ("activate", "activated"),
                (Which::Active, false) => ("deactivate", "deactivated"),
                (Which::Admin, true) => ("make_admin", "made_admin"),
                (Which::Admin, false) => ("revoke_admin", "revoked_admin"),
            };
            match which {
                Which::Active => {
                    users::store::set_active(tx, &user.email, set)?;
                }
                Which::Admin => users::store::set_admin(tx, &target, set)?,
            }
            if !set {
                if matches!(which, Which::Active) {
                    crate::auth::store::revoke_all_sessions(tx, &target, "deactivated")?;
                }
                tx.execute("delete from admin_sessions where user_id = ?1", [&target])?;
            }
            audit::record(tx, &admin, action, Some(&target), Some(&user.email))?;
            Ok::<_, db::Error>(Changed::Done(done))
        })
        .await;
    flag_answer(&id, result)
}

fn flag_answer(id: &str, result: Result<Changed, db::Error>) -> Response {
    match result {
        Ok(Changed::Done(code)) => back(id, code),
        Ok(Changed::LastAdmin) => back(id, "last_admin"),
        Ok(Changed::Missing) => view::not_found(),
        Err(e) => {
            tracing::error!(error = %e, "admin flag change");
            view::failed("Не удалось сохранить")
        }
    }
}

/// Sends the user a password reset letter, as `/auth/password/forgot` would.
pub async fn send_reset(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<view::CsrfForm>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let Some(mailer) = state.mailer.clone() else {
        return back(&id, "no_mail");
    };
    let target = id.clone();
    let issued = state
        .db
        .write(move |tx| {
            let Some(user) = users::store::by_id(tx, &target)? else {
                return Ok(None);
            };
            let token = crate::auth::recovery::store::issue(
                tx,
                &user.id,
                crate::auth::recovery::Purpose::Reset,
            )?;
            audit::record(tx, &admin, "send_password_reset", Some(&user.id), None)?;
            Ok::<_, db::Error>(Some((user, token)))
        })
        .await;
    match issued {
        Ok(Some((user, token))) => {
            mailer.send(mail::Letter {
                kind: mail::Kind::Reset,
                to: user.email,
                user_id: user.id,
                token,
            });
            back(&id, "reset_sent")
        }
        Ok(None) => view::not_found(),
        Err(e) => {
            tracing::error!(error = %e, "admin password reset");
            view::failed("Не удалось отправить письмо")
        }
    }
}

#[derive(Serialize)]
struct AuditRow {
    admin_email: String,
    action: String,
    target: Option<String>,
    detail: Option<String>,
    created_at: String,
}

#[derive(Deserialize)]
pub struct Paged {
    offset: Option<i64>,
}

pub async fn audit(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<Paged>,
) -> Response {
    let offset = view::offset(query.offset);
    let rows = lists::page_of(
        &state,
        "select admin_email, action, target, detail, created_at from admin_audit",
        lists::Where::default(),
        "created_at desc, id desc",
        offset,
        |r| {
            Ok(AuditRow {
                admin_email: r.get(0)?,
                action: r.get(1)?,
                target: r.get(2)?,
                detail: r.get(3)?,
                created_at: r.get(4)?,
            })
        },
    )
    .await;
    lists::render(
        &admin,
        "audit",
        "audit.html",
        "журнал",
        rows,
        Vec::new(),
        offset,
        Vec::new(),
    )
}
