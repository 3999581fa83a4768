//! The admin UI's read-only lists: generation sessions, images, payments, the webhook log,
//! the ledger and WordPress articles. Each is newest first, `PAGE` rows a page (one more
//! read says whether there is a next), filtered in SQL by columns the indexes of
//! `0009_admin.sql` and earlier migrations serve. Filter values are checked here: an unknown
//! status or type is ignored, free text is bounded. Users' own texts (generation inputs and
//! results, article bodies) are never shown.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::Value;
use rusqlite::types::Value as Sql;
use serde::{Deserialize, Serialize};

use super::{Admin, context, view};
use crate::app::AppState;
use crate::db;
use crate::payments::Slug;

/// Longest free-text filter value (ids are UUIDs; tool ids and verdicts are short).
pub(super) const FILTER_MAX: usize = 100;

pub(super) const SESSION_STATUSES: &[&str] = &["pending", "in_progress", "completed", "failed"];
pub(super) const IMAGE_STATUSES: &[&str] = &["processing", "completed", "failed"];
pub(super) const PAYMENT_STATUSES: &[&str] = &["pending", "completed", "failed", "refunded"];
pub(super) const TRANSACTION_TYPES: &[&str] = &["topup", "spend", "refund", "adjustment"];
pub(super) const ARTICLE_STATUSES: &[&str] =
    &["pending", "in_progress", "completed", "failed", "published"];

// The lists' queries (each with its `order by`), kept together so a test can check their plans.
const SESSIONS_SELECT: &str =
    "select g.created_at, g.user_id, u.email, g.tool_id, g.mode, g.status, g.provider_used,
                g.tokens_used, g.cost_raits, g.error_code
         from generation_sessions g left join users u on u.id = g.user_id";
const SESSIONS_ORDER: &str = "g.created_at desc, g.id desc";
const IMAGES_SELECT: &str =
    "select i.id, i.user_id, u.email, i.prompt, i.format, i.width, i.height, i.status,
                i.provider, i.error_code, i.created_at, i.file is not null, i.upscale_status
         from images i left join users u on u.id = i.user_id";
const IMAGES_ORDER: &str = "i.created_at desc, i.id desc";
const PAYMENTS_SELECT: &str =
    "select p.id, p.number, p.created_at, p.user_id, u.email, p.provider, p.status,
                p.amount_rub, p.amount_raits, p.provider_status, p.external_id, p.test,
                p.refunded_kopecks, p.shortfall_raits, p.error
         from payments p left join users u on u.id = p.user_id";
const PAYMENTS_ORDER: &str = "p.created_at desc, p.id desc";
const WEBHOOKS_SELECT: &str =
    "select w.created_at, w.provider, w.method, w.remote_ip, w.verdict, w.payment_id,
                w.detail, w.headers, w.body
         from payment_webhooks w";
// Its index is `(created_at desc)`; the rowid every index ends with breaks ties in its order.
const WEBHOOKS_ORDER: &str = "w.created_at desc, w.rowid";
const TRANSACTIONS_SELECT: &str =
    "select t.created_at, t.user_id, u.email, t.type, t.amount, t.balance_after,
                t.description, t.payment_id
         from transactions t left join users u on u.id = t.user_id";
const TRANSACTIONS_ORDER: &str = "t.created_at desc, t.id desc";
const ARTICLES_SELECT: &str =
    "select a.created_at, a.site_id, s.domain, a.title, a.status, a.tokens_used,
                a.cost_raits, a.wp_post_id, a.url, a.error_code
         from articles a left join sites s on s.id = a.site_id";
const ARTICLES_ORDER: &str = "a.created_at desc, a.id desc";

/// A free-text filter: trimmed, empty as none, at most [`FILTER_MAX`] characters.
pub(super) fn text(raw: Option<&str>) -> Option<String> {
    let t = raw?.trim();
    (!t.is_empty()).then(|| t.chars().take(FILTER_MAX).collect())
}

/// A filter that must be one of `allowed`; anything else is ignored.
pub(super) fn one_of(raw: Option<&str>, allowed: &[&str]) -> Option<String> {
    let t = raw?.trim();
    allowed.contains(&t).then(|| t.to_owned())
}

/// A payment provider's slug, or none.
fn provider(raw: Option<&str>) -> Option<String> {
    Slug::parse(raw?.trim()).map(|s| s.as_str().to_owned())
}

/// `%` and `_` taken literally in a `like … escape '\'` prefix.
pub(super) fn like_prefix(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 1);
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The `where` clauses of a list and their parameters, in order.
#[derive(Default)]
pub(super) struct Where {
    clauses: Vec<&'static str>,
    params: Vec<Sql>,
}

impl Where {
    fn add(&mut self, clause: &'static str, value: &Option<String>) {
        if let Some(v) = value {
            self.clauses.push(clause);
            self.params.push(Sql::Text(v.clone()));
        }
    }

    /// A clause with several parameters, always applied.
    pub(super) fn add_all(&mut self, clause: &'static str, values: Vec<Sql>) {
        self.clauses.push(clause);
        self.params.extend(values);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" where {}", self.clauses.join(" and "))
        }
    }
}

/// One page of `select … from … [where …] order by … limit PAGE+1 offset`, and whether
/// there is a next one.
pub(super) async fn page_of<T, F>(
    state: &AppState,
    select: &'static str,
    filter: Where,
    order: &'static str,
    offset: i64,
    map: F,
) -> Result<(Vec<T>, bool), db::Error>
where
    T: Send + 'static,
    F: Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
{
    let sql = format!("{select}{} order by {order} limit ? offset ?", filter.sql());
    let mut params = filter.params;
    params.push(Sql::Integer(view::PAGE + 1));
    params.push(Sql::Integer(offset));
    let mut rows: Vec<T> = state
        .db
        .read(move |c| {
            c.prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(params), map)?
                .collect::<Result<Vec<T>, _>>()
                .map_err(db::Error::from)
        })
        .await?;
    let more = rows.len() as i64 > view::PAGE;
    rows.truncate(view::PAGE as usize);
    Ok((rows, more))
}

/// A list page: its rows, the filters (kept by the pager and shown in the form), paging.
#[allow(clippy::too_many_arguments)]
pub(super) fn render<T: Serialize>(
    admin: &Admin,
    section: &str,
    template: &str,
    what: &str,
    result: Result<(Vec<T>, bool), db::Error>,
    filters: Vec<(&'static str, Option<String>)>,
    offset: i64,
    extra: Vec<(&'static str, Value)>,
) -> Response {
    let (rows, more) = match result {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, list = what, "admin list");
            return view::page_with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.html",
                Value::from_iter([("message", format!("Не удалось прочитать: {what}"))]),
            );
        }
    };
    let keep = keep_query(&filters);
    let filters = Value::from_iter(
        filters
            .into_iter()
            .map(|(k, v)| (k, Value::from(v.unwrap_or_default()))),
    );
    let mut own = vec![
        ("rows", Value::from_serialize(&rows)),
        ("filters", filters),
        ("keep", Value::from(keep)),
        ("offset", Value::from(offset)),
        ("next", Value::from(more.then_some(offset + view::PAGE))),
        (
            "prev",
            Value::from((offset > 0).then(|| (offset - view::PAGE).max(0))),
        ),
    ];
    own.extend(extra);
    view::page(template, context(admin, section, own))
}

/// The filters that are set, as the start of a query string the pager's links keep
/// (`tool=x&status=failed&`), percent-encoded; empty when none is set.
pub(super) fn keep_query(filters: &[(&'static str, Option<String>)]) -> String {
    let set: Vec<(&str, &str)> = filters
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    match serde_urlencoded::to_string(&set) {
        Ok(query) if !query.is_empty() => format!("{query}&"),
        _ => String::new(),
    }
}

fn options(values: &[&str]) -> Value {
    Value::from_iter(values.iter().map(|v| Value::from(*v)))
}

fn payment_providers() -> Value {
    Value::from_iter(Slug::ALL.iter().map(|s| Value::from(s.as_str())))
}

// --- generation sessions ---------------------------------------------------------------

#[derive(Deserialize)]
pub struct SessionsQuery {
    tool: Option<String>,
    status: Option<String>,
    user: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct SessionRow {
    created_at: String,
    user_id: String,
    email: Option<String>,
    tool_id: String,
    mode: String,
    status: String,
    provider_used: Option<String>,
    tokens_used: i64,
    cost_raits: i64,
    error_code: Option<String>,
}

pub async fn sessions(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<SessionsQuery>,
) -> Response {
    let tool = text(q.tool.as_deref());
    let status = one_of(q.status.as_deref(), SESSION_STATUSES);
    let user = text(q.user.as_deref());
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("g.tool_id = ?", &tool);
    filter.add("g.status = ?", &status);
    filter.add("g.user_id = ?", &user);
    let result = page_of(
        &state,
        SESSIONS_SELECT,
        filter,
        SESSIONS_ORDER,
        offset,
        |r| {
            Ok(SessionRow {
                created_at: r.get(0)?,
                user_id: r.get(1)?,
                email: r.get(2)?,
                tool_id: r.get(3)?,
                mode: r.get(4)?,
                status: r.get(5)?,
                provider_used: r.get(6)?,
                tokens_used: r.get(7)?,
                cost_raits: r.get(8)?,
                error_code: r.get(9)?,
            })
        },
    )
    .await;
    render(
        &admin,
        "sessions",
        "sessions.html",
        "генерации",
        result,
        vec![("tool", tool), ("status", status), ("user", user)],
        offset,
        vec![("statuses", options(SESSION_STATUSES))],
    )
}

// --- images ------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ImagesQuery {
    status: Option<String>,
    user: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct ImageRow {
    id: String,
    user_id: String,
    email: Option<String>,
    prompt: String,
    format: String,
    width: i64,
    height: i64,
    status: String,
    provider: Option<String>,
    error_code: Option<String>,
    created_at: String,
    /// The last extra upscale's state, if one was ordered.
    upscale_status: Option<String>,
    /// A signed link to the picture, as a same-origin path (the CSP allows `img-src 'self'`).
    url: Option<String>,
}

/// The path and query of an absolute URL (`https://host/x?y` → `/x?y`); a relative one as is.
pub(super) fn same_origin(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => url.to_owned(),
    }
}

pub async fn images(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ImagesQuery>,
) -> Response {
    let status = one_of(q.status.as_deref(), IMAGE_STATUSES);
    let user = text(q.user.as_deref());
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("i.status = ?", &status);
    filter.add("i.user_id = ?", &user);
    let links = state.gallery.links.clone();
    let result = page_of(
        &state,
        IMAGES_SELECT,
        filter,
        IMAGES_ORDER,
        offset,
        move |r| {
            let id: String = r.get(0)?;
            let has_file: bool = r.get(11)?;
            let url =
                has_file.then(|| same_origin(&links.url(&id, crate::gallery::Variant::Original)));
            Ok(ImageRow {
                id,
                user_id: r.get(1)?,
                email: r.get(2)?,
                prompt: r.get(3)?,
                format: r.get(4)?,
                width: r.get(5)?,
                height: r.get(6)?,
                status: r.get(7)?,
                provider: r.get(8)?,
                error_code: r.get(9)?,
                created_at: r.get(10)?,
                upscale_status: r.get(12)?,
                url,
            })
        },
    )
    .await;
    render(
        &admin,
        "images",
        "images.html",
        "изображения",
        result,
        vec![("status", status), ("user", user)],
        offset,
        vec![("statuses", options(IMAGE_STATUSES))],
    )
}

// --- payments ------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct PaymentsQuery {
    provider: Option<String>,
    status: Option<String>,
    user: Option<String>,
    payment: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct PaymentRow {
    id: String,
    number: i64,
    created_at: String,
    user_id: String,
    email: Option<String>,
    provider: String,
    status: String,
    amount_rub: i64,
    amount_raits: i64,
    provider_status: Option<String>,
    external_id: Option<String>,
    test: bool,
    refunded_kopecks: i64,
    shortfall_raits: i64,
    error: Option<String>,
}

pub async fn payments(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<PaymentsQuery>,
) -> Response {
    let provider = provider(q.provider.as_deref());
    let status = one_of(q.status.as_deref(), PAYMENT_STATUSES);
    let user = text(q.user.as_deref());
    let payment = text(q.payment.as_deref());
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("p.id = ?", &payment);
    filter.add("p.provider = ?", &provider);
    filter.add("p.status = ?", &status);
    filter.add("p.user_id = ?", &user);
    let result = page_of(
        &state,
        PAYMENTS_SELECT,
        filter,
        PAYMENTS_ORDER,
        offset,
        |r| {
            Ok(PaymentRow {
                id: r.get(0)?,
                number: r.get(1)?,
                created_at: r.get(2)?,
                user_id: r.get(3)?,
                email: r.get(4)?,
                provider: r.get(5)?,
                status: r.get(6)?,
                amount_rub: r.get(7)?,
                amount_raits: r.get(8)?,
                provider_status: r.get(9)?,
                external_id: r.get(10)?,
                test: r.get(11)?,
                refunded_kopecks: r.get(12)?,
                shortfall_raits: r.get(13)?,
                error: r.get(14)?,
            })
        },
    )
    .await;
    render(
        &admin,
        "payments",
        "payments.html",
        "платежи",
        result,
        vec![
            ("provider", provider),
            ("status", status),
            ("user", user),
            ("payment", payment),
        ],
        offset,
        vec![
            ("statuses", options(PAYMENT_STATUSES)),
            ("providers", payment_providers()),
        ],
    )
}

// --- the webhook log ---------------------------------------------------------------------

#[derive(Deserialize)]
pub struct WebhooksQuery {
    provider: Option<String>,
    verdict: Option<String>,
    payment: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct WebhookRow {
    created_at: String,
    provider: String,
    method: String,
    remote_ip: Option<String>,
    verdict: String,
    rejected: bool,
    payment_id: Option<String>,
    detail: Option<String>,
    headers: String,
    body: String,
}

/// The stored headers (a JSON object), one per line for reading.
fn headers_text(raw: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw) {
        Ok(map) => map
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}: {s}"),
                None => format!("{k}: {v}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => raw.to_owned(),
    }
}

/// Verdicts as `payments::settle` writes them, offered in the filter (a prefix matches).
const VERDICTS: &[&str] = &[
    "credited",
    "duplicate",
    "failed",
    "ignored",
    "refunded",
    "rejected",
    "rejected:forged",
    "rejected:malformed",
    "rejected:unknown_payment",
    "rejected:mismatch",
    "rejected:not_pending",
    "rejected:unverifiable",
];

pub async fn webhooks(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<WebhooksQuery>,
) -> Response {
    let provider = provider(q.provider.as_deref());
    let verdict = text(q.verdict.as_deref());
    let payment = text(q.payment.as_deref());
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("w.payment_id = ?", &payment);
    filter.add("w.provider = ?", &provider);
    filter.add(
        "w.verdict like ? escape '\\'",
        &verdict.as_deref().map(like_prefix),
    );
    let result = page_of(
        &state,
        WEBHOOKS_SELECT,
        filter,
        WEBHOOKS_ORDER,
        offset,
        |r| {
            let verdict: String = r.get(4)?;
            let headers: String = r.get(7)?;
            Ok(WebhookRow {
                created_at: r.get(0)?,
                provider: r.get(1)?,
                method: r.get(2)?,
                remote_ip: r.get(3)?,
                rejected: verdict.starts_with("rejected"),
                verdict,
                payment_id: r.get(5)?,
                detail: r.get(6)?,
                headers: headers_text(&headers),
                body: r.get(8)?,
            })
        },
    )
    .await;
    render(
        &admin,
        "webhooks",
        "webhooks.html",
        "журнал вебхуков",
        result,
        vec![
            ("provider", provider),
            ("verdict", verdict),
            ("payment", payment),
        ],
        offset,
        vec![
            ("providers", payment_providers()),
            ("verdicts", options(VERDICTS)),
        ],
    )
}

// --- the ledger --------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct TransactionsQuery {
    user: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct TransactionRow {
    created_at: String,
    user_id: String,
    email: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    amount: i64,
    balance_after: i64,
    description: Option<String>,
    payment_id: Option<String>,
}

pub async fn transactions(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<TransactionsQuery>,
) -> Response {
    let user = text(q.user.as_deref());
    let kind = one_of(q.kind.as_deref(), TRANSACTION_TYPES);
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("t.user_id = ?", &user);
    filter.add("t.type = ?", &kind);
    let result = page_of(
        &state,
        TRANSACTIONS_SELECT,
        filter,
        TRANSACTIONS_ORDER,
        offset,
        |r| {
            Ok(TransactionRow {
                created_at: r.get(0)?,
                user_id: r.get(1)?,
                email: r.get(2)?,
                kind: r.get(3)?,
                amount: r.get(4)?,
                balance_after: r.get(5)?,
                description: r.get(6)?,
                payment_id: r.get(7)?,
            })
        },
    )
    .await;
    render(
        &admin,
        "transactions",
        "transactions.html",
        "операции",
        result,
        vec![("user", user), ("type", kind)],
        offset,
        vec![("types", options(TRANSACTION_TYPES))],
    )
}

// --- WordPress articles ----------------------------------------------------------------------

#[derive(Deserialize)]
pub struct ArticlesQuery {
    site: Option<String>,
    status: Option<String>,
    offset: Option<i64>,
}

#[derive(Serialize)]
struct ArticleRow {
    created_at: String,
    site_id: Option<String>,
    domain: Option<String>,
    title: String,
    status: String,
    tokens_used: i64,
    cost_raits: i64,
    wp_post_id: Option<i64>,
    url: Option<String>,
    /// Only `http(s)` addresses become links.
    url_is_web: bool,
    error_code: Option<String>,
}

pub async fn articles(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ArticlesQuery>,
) -> Response {
    let site = text(q.site.as_deref());
    let status = one_of(q.status.as_deref(), ARTICLE_STATUSES);
    let offset = view::offset(q.offset);
    let mut filter = Where::default();
    filter.add("a.site_id = ?", &site);
    filter.add("a.status = ?", &status);
    let result = page_of(
        &state,
        ARTICLES_SELECT,
        filter,
        ARTICLES_ORDER,
        offset,
        |r| {
            let url: Option<String> = r.get(8)?;
            let url_is_web = url.as_deref().is_some_and(|u| {
                let u = u.to_ascii_lowercase();
                u.starts_with("https://") || u.starts_with("http://")
            });
            Ok(ArticleRow {
                created_at: r.get(0)?,
                site_id: r.get(1)?,
                domain: r.get(2)?,
                title: r.get(3)?,
                status: r.get(4)?,
                tokens_used: r.get(5)?,
                cost_raits: r.get(6)?,
                wp_post_id: r.get(7)?,
                url,
                url_is_web,
                error_code: r.get(9)?,
            })
        },
    )
    .await;
    render(
        &admin,
        "articles",
        "articles.html",
        "статьи",
        result,
        vec![("site", site), ("status", status)],
        offset,
        vec![("statuses", options(ARTICLE_STATUSES))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_bounded_and_checked() {
        assert_eq!(text(Some("  ")), None);
        assert_eq!(text(Some(" a ")).as_deref(), Some("a"));
        assert_eq!(text(Some(&"x".repeat(500))).unwrap().len(), FILTER_MAX);
        assert_eq!(
            one_of(Some("failed"), SESSION_STATUSES).as_deref(),
            Some("failed")
        );
        assert_eq!(one_of(Some("failed' or 1=1"), SESSION_STATUSES), None);
        assert_eq!(provider(Some("tbank")).as_deref(), Some("tbank"));
        assert_eq!(provider(Some("paypal")), None);
        assert_eq!(like_prefix("a_b%"), "a\\_b\\%%");
    }

    #[test]
    fn the_pager_keeps_the_filters_encoded() {
        assert_eq!(keep_query(&[("tool", None), ("status", None)]), "");
        assert_eq!(
            keep_query(&[
                ("tool", Some("a&b c".into())),
                ("status", None),
                ("user", Some("u-1".into()))
            ]),
            "tool=a%26b+c&user=u-1&"
        );
    }

    #[test]
    fn image_links_load_from_this_origin() {
        assert_eq!(
            same_origin("https://ew.example/api/v1/images/x/file?sig=1"),
            "/api/v1/images/x/file?sig=1"
        );
        assert_eq!(
            same_origin("http://127.0.0.1:8000/ew/api/v1/images/x/file"),
            "/ew/api/v1/images/x/file"
        );
        assert_eq!(same_origin("/api/v1/images/x"), "/api/v1/images/x");
    }

    #[test]
    fn stored_headers_read_one_per_line() {
        assert_eq!(
            headers_text(r#"{"content-type":"application/json","x-n":3}"#),
            "content-type: application/json\nx-n: 3"
        );
        assert_eq!(headers_text("not json"), "not json");
    }

    /// Every list, with each filter alone and all together, reads through an index in its
    /// order: no full-table sort, whatever the table's size (a filter without an index of
    /// its own walks the newest-first index and stops after a page).
    #[test]
    fn lists_read_through_indexes() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        let lists: &[(&str, &str, &[&'static str])] = &[
            (
                SESSIONS_SELECT,
                SESSIONS_ORDER,
                &["g.tool_id = ?", "g.status = ?", "g.user_id = ?"],
            ),
            (
                IMAGES_SELECT,
                IMAGES_ORDER,
                &["i.status = ?", "i.user_id = ?"],
            ),
            (
                PAYMENTS_SELECT,
                PAYMENTS_ORDER,
                &[
                    "p.id = ?",
                    "p.provider = ?",
                    "p.status = ?",
                    "p.user_id = ?",
                ],
            ),
            (
                WEBHOOKS_SELECT,
                WEBHOOKS_ORDER,
                &[
                    "w.payment_id = ?",
                    "w.provider = ?",
                    "w.verdict like ? escape '\\'",
                ],
            ),
            (
                TRANSACTIONS_SELECT,
                TRANSACTIONS_ORDER,
                &["t.user_id = ?", "t.type = ?"],
            ),
            (
                ARTICLES_SELECT,
                ARTICLES_ORDER,
                &["a.site_id = ?", "a.status = ?"],
            ),
        ];
        for (select, order, clauses) in lists {
            let mut variants: Vec<Vec<&'static str>> = vec![Vec::new(), clauses.to_vec()];
            variants.extend(clauses.iter().map(|c| vec![*c]));
            for chosen in variants {
                let filter = Where {
                    params: chosen.iter().map(|_| Sql::Text("x".into())).collect(),
                    clauses: chosen,
                };
                let sql = format!(
                    "explain query plan {select}{} order by {order} limit 51 offset 0",
                    filter.sql()
                );
                let plan: Vec<String> = conn
                    .prepare(&sql)
                    .unwrap()
                    .query_map(rusqlite::params_from_iter(filter.params.clone()), |r| {
                        r.get::<_, String>(3)
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let plan = plan.join(" | ");
                // One payment's webhook calls are a handful: sorting them is fine.
                let few = plan.contains("payment_webhooks_payment (payment_id=?)");
                assert!(
                    few || !plan.contains("USE TEMP B-TREE FOR ORDER BY"),
                    "{sql}: {plan}"
                );
                assert!(
                    plan.starts_with("SEARCH") || plan.contains("USING INDEX"),
                    "{sql}: {plan}"
                );
            }
        }
    }
}
