//! SQL for WordPress sites and articles. Money moves here only through `billing::ledger`:
//! an owner's `spend` in the write that opens an article, its `refund` in the write that
//! fails it (both with the article id as reference, so neither can be written twice).

use rusqlite::{Connection, OptionalExtension, Row as SqlRow, params};

use super::{Article, ArticleError, Site};
use crate::billing::{self, ledger};
use crate::{db, timestamp};

/// Ledger description of an article's spend and refund.
const DESCRIPTION: &str = "Статья WordPress";

// ---- sites ----

fn site_from(r: &SqlRow<'_>) -> rusqlite::Result<Site> {
    Ok(Site {
        id: r.get(0)?,
        domain: r.get(1)?,
        name: r.get(2)?,
        owner_user_id: r.get(3)?,
    })
}

/// Why a site could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("a site with this domain already exists")]
    DomainTaken,
    #[error(transparent)]
    Db(#[from] db::Error),
}

impl From<rusqlite::Error> for SiteError {
    fn from(e: rusqlite::Error) -> Self {
        SiteError::Db(e.into())
    }
}

/// Registers a site with the digest of its access password.
pub fn insert_site(
    tx: &Connection,
    domain: &str,
    name: Option<&str>,
    owner_user_id: Option<&str>,
    password_digest: &str,
) -> Result<Site, SiteError> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    let inserted = tx
        .prepare_cached(
            "insert into sites (id, domain, name, owner_user_id, password_sha256, created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             on conflict (domain) do nothing",
        )?
        .execute(params![id, domain, name, owner_user_id, password_digest, now])?;
    if inserted == 0 {
        return Err(SiteError::DomainTaken);
    }
    Ok(Site {
        id,
        domain: domain.to_owned(),
        name: name.map(str::to_owned),
        owner_user_id: owner_user_id.map(str::to_owned),
    })
}

/// The site whose password has this digest, with the stored digest (for a constant-time
/// comparison by the caller).
pub fn site_by_digest(
    conn: &Connection,
    digest: &str,
) -> Result<Option<(Site, String)>, db::Error> {
    Ok(conn
        .prepare_cached(
            "select id, domain, name, owner_user_id, password_sha256 from sites
             where password_sha256 = ?1",
        )?
        .query_row([digest], |r| Ok((site_from(r)?, r.get(4)?)))
        .optional()?)
}

/// A site as `site list` shows it.
pub struct SiteListed {
    pub site: Site,
    pub owner_email: Option<String>,
    pub created_at: String,
    pub articles: i64,
    pub completed: i64,
    pub published: i64,
    pub failed: i64,
}

/// The columns [`listed_from`] reads: each site with its owner's email and article counts
/// (`site list` and the admin UI's sites page add their order and paging).
pub const LISTED_SELECT: &str =
    "select s.id, s.domain, s.name, s.owner_user_id, u.email, s.created_at,
        (select count(*) from articles a where a.site_id = s.id),
        (select count(*) from articles a where a.site_id = s.id and a.status = 'completed'),
        (select count(*) from articles a where a.site_id = s.id and a.status = 'published'),
        (select count(*) from articles a where a.site_id = s.id and a.status = 'failed')
     from sites s left join users u on u.id = s.owner_user_id";

/// A row of [`LISTED_SELECT`].
pub fn listed_from(r: &SqlRow<'_>) -> rusqlite::Result<SiteListed> {
    Ok(SiteListed {
        site: site_from(r)?,
        owner_email: r.get(4)?,
        created_at: r.get(5)?,
        articles: r.get(6)?,
        completed: r.get(7)?,
        published: r.get(8)?,
        failed: r.get(9)?,
    })
}

/// Every site, oldest first, with its owner's email and article counts.
pub fn list_sites(conn: &Connection) -> Result<Vec<SiteListed>, db::Error> {
    let mut stmt = conn.prepare(&format!("{LISTED_SELECT} order by s.created_at, s.id"))?;
    let rows = stmt.query_map([], listed_from)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Replaces a site's password digest; false when no site has this domain.
pub fn set_password(tx: &Connection, domain: &str, digest: &str) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached("update sites set password_sha256 = ?2, updated_at = ?3 where domain = ?1")?
        .execute(params![domain, digest, timestamp::now()])?
        == 1)
}

/// Removes a site; its articles stay, detached (`site_id` null). False when unknown.
pub fn delete_site(tx: &Connection, domain: &str) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached("delete from sites where domain = ?1")?
        .execute([domain])?
        == 1)
}

// ---- articles ----

const COLUMNS: &str = "id, site_id, owner_user_id, session_id, title, keywords, language, length, \
     status, markdown, content, tokens_used, cost_raits, wp_post_id, url, error_code, \
     error_message, created_at, updated_at, completed_at, published_at";

/// An article row.
#[derive(Debug, Clone)]
pub struct Row {
    pub site_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub markdown: Option<String>,
    pub article: Article,
}

fn row_from(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    let id: String = r.get(0)?;
    let keywords: String = r.get(5)?;
    let status: String = r.get(8)?;
    let content: Option<String> = r.get(10)?;
    let error_code: Option<String> = r.get(15)?;
    let shows_content = status == "completed" || status == "published";
    Ok(Row {
        site_id: r.get(1)?,
        owner_user_id: r.get(2)?,
        markdown: r.get(9)?,
        article: Article {
            article_id: id.clone(),
            id,
            session_id: r.get(3)?,
            title: r.get(4)?,
            keywords: serde_json::from_str(&keywords).unwrap_or_default(),
            language: r.get(6)?,
            length: r.get(7)?,
            status,
            content: content.filter(|_| shows_content),
            tokens_used: r.get(11)?,
            cost_raits: r.get(12)?,
            wp_post_id: r.get(13)?,
            url: r.get(14)?,
            error: match error_code {
                Some(code) => Some(ArticleError {
                    code,
                    message: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
                }),
                None => None,
            },
            created_at: r.get(17)?,
            updated_at: r.get(18)?,
            completed_at: r.get(19)?,
            published_at: r.get(20)?,
        },
    })
}

/// An article to open.
pub struct NewArticle<'a> {
    pub site_id: &'a str,
    /// Who pays; `None` for an operator's site.
    pub owner_user_id: Option<&'a str>,
    pub session_id: &'a str,
    pub title: &'a str,
    pub keywords: &'a [String],
    pub language: &'a str,
    pub length: &'a str,
    /// The tool's standard price; charged only when there is an owner.
    pub price: i64,
}

/// Inserts a `pending` article and, for an owner's site, debits the price as a `spend` row
/// in the same transaction; `InsufficientBalance` (nothing changed once rolled back) when short.
pub fn open_article(tx: &Connection, new: &NewArticle<'_>) -> Result<Row, billing::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = timestamp::now();
    let cost = if new.owner_user_id.is_some() {
        new.price.max(0)
    } else {
        0
    };
    let keywords = serde_json::to_string(new.keywords).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "insert into articles (id, site_id, owner_user_id, session_id, title, keywords, language,
                               length, status, cost_raits, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?10)",
    )?
    .execute(params![
        id,
        new.site_id,
        new.owner_user_id,
        new.session_id,
        new.title,
        keywords,
        new.language,
        new.length,
        cost,
        now
    ])?;
    if let (Some(owner), true) = (new.owner_user_id, cost > 0) {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id: owner,
                kind: billing::Kind::Spend,
                amount: -cost,
                description: Some(DESCRIPTION),
                payment_id: None,
                reference: Some(&id),
            },
        )?;
    }
    by_id(tx, &id)?.ok_or_else(|| billing::Error::Db(rusqlite::Error::QueryReturnedNoRows.into()))
}

/// Any article by id (for the work itself and recovery).
pub fn by_id(conn: &Connection, id: &str) -> Result<Option<Row>, db::Error> {
    Ok(conn
        .prepare_cached(&format!("select {COLUMNS} from articles where id = ?1"))?
        .query_row([id], row_from)
        .optional()?)
}

/// One of a site's articles; another site's is `None`.
pub fn for_site(conn: &Connection, site_id: &str, id: &str) -> Result<Option<Row>, db::Error> {
    Ok(conn
        .prepare_cached(&format!(
            "select {COLUMNS} from articles where id = ?1 and site_id = ?2"
        ))?
        .query_row([id, site_id], row_from)
        .optional()?)
}

/// Filters of the article list.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub session_id: Option<String>,
    pub status: Option<String>,
}

/// A page of a site's articles, newest first, and how many match in all. The filters are
/// written into the SQL only when given, so each shape finds its index
/// (`articles_site`, `articles_site_session`, `articles_site_status`).
pub fn list(
    conn: &Connection,
    site_id: &str,
    filter: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Row>, i64), db::Error> {
    let mut condition = String::from("site_id = ?1");
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&site_id];
    if let Some(session_id) = &filter.session_id {
        args.push(session_id);
        condition.push_str(&format!(" and session_id = ?{}", args.len()));
    }
    if let Some(status) = &filter.status {
        args.push(status);
        condition.push_str(&format!(" and status = ?{}", args.len()));
    }
    let total: i64 = conn
        .prepare_cached(&format!("select count(*) from articles where {condition}"))?
        .query_row(args.as_slice(), |r| r.get(0))?;
    let n = args.len();
    args.push(&limit);
    args.push(&offset);
    let rows = conn
        .prepare_cached(&format!(
            "select {COLUMNS} from articles where {condition}
             order by created_at desc, id desc limit ?{} offset ?{}",
            n + 1,
            n + 2
        ))?
        .query_map(args.as_slice(), row_from)?
        .collect::<Result<_, _>>()?;
    Ok((rows, total))
}

/// Queued → running; false when it is no longer queued.
pub fn start(tx: &Connection, id: &str) -> Result<bool, db::Error> {
    Ok(tx
        .prepare_cached(
            "update articles set status = 'in_progress', updated_at = ?2
             where id = ?1 and status = 'pending'",
        )?
        .execute(params![id, timestamp::now()])?
        == 1)
}

/// What a finished run wrote.
pub struct Written<'a> {
    pub markdown: &'a str,
    pub content: &'a str,
    pub provider: &'a str,
    pub tokens: i64,
}

/// Completes an unsettled article; a settled one is left as it is. Returns the row.
pub fn complete(
    tx: &Connection,
    id: &str,
    written: &Written<'_>,
) -> Result<Option<Row>, db::Error> {
    let now = timestamp::now();
    tx.prepare_cached(
        "update articles set status = 'completed', markdown = ?2, content = ?3, provider_used = ?4,
                tokens_used = ?5, updated_at = ?6, completed_at = ?6
         where id = ?1 and status in ('pending', 'in_progress')",
    )?
    .execute(params![
        id,
        written.markdown,
        written.content,
        written.provider,
        written.tokens.max(0),
        now
    ])?;
    by_id(tx, id)
}

/// Fails an unsettled article and refunds its owner what was charged, in the caller's
/// transaction; a settled one is left as it is. Returns the row.
pub fn fail(
    tx: &Connection,
    id: &str,
    error: &ArticleError,
    provider: Option<&str>,
) -> Result<Option<Row>, billing::Error> {
    let now = timestamp::now();
    let failed = tx
        .prepare_cached(
            "update articles set status = 'failed', error_code = ?2, error_message = ?3,
                    provider_used = coalesce(?4, provider_used), updated_at = ?5, completed_at = ?5
             where id = ?1 and status in ('pending', 'in_progress')
             returning owner_user_id, cost_raits",
        )?
        .query_row(params![id, error.code, error.message, provider, now], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    if let Some((Some(owner), cost)) = failed
        && cost > 0
    {
        ledger::record(
            tx,
            &ledger::Entry {
                user_id: &owner,
                kind: billing::Kind::Refund,
                amount: cost,
                description: Some(DESCRIPTION),
                payment_id: None,
                reference: Some(id),
            },
        )?;
    }
    Ok(by_id(tx, id)?)
}

/// Fails and refunds every article a crash left `in_progress`; returns how many.
pub fn interrupt_running(tx: &Connection, error: &ArticleError) -> Result<usize, billing::Error> {
    let ids: Vec<String> = tx
        .prepare("select id from articles where status = 'in_progress'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        fail(tx, id, error, None)?;
    }
    Ok(ids.len())
}

/// Articles still queued, oldest first.
pub fn queued(conn: &Connection) -> Result<Vec<Row>, db::Error> {
    Ok(conn
        .prepare(&format!(
            "select {COLUMNS} from articles where status = 'pending' order by created_at, id"
        ))?
        .query_map([], row_from)?
        .collect::<Result<_, _>>()?)
}

/// How marking an article published went.
pub enum Published {
    Done(Box<Row>),
    NotFound,
    /// Not completed (or published as another post): its status.
    Conflict(String),
}

/// Marks a site's completed article published as WordPress post `wp_post_id`. The same
/// post again is a no-op that answers the row (a retried request); a different one is a
/// conflict.
pub fn publish(
    tx: &Connection,
    site_id: &str,
    id: &str,
    wp_post_id: i64,
    url: Option<&str>,
) -> Result<Published, db::Error> {
    let Some(row) = for_site(tx, site_id, id)? else {
        return Ok(Published::NotFound);
    };
    match row.article.status.as_str() {
        "completed" => {
            let now = timestamp::now();
            tx.prepare_cached(
                "update articles set status = 'published', wp_post_id = ?2, url = ?3,
                        updated_at = ?4, published_at = ?4
                 where id = ?1 and status = 'completed'",
            )?
            .execute(params![id, wp_post_id, url, now])?;
            Ok(for_site(tx, site_id, id)?
                .map_or(Published::NotFound, |r| Published::Done(Box::new(r))))
        }
        "published" if row.article.wp_post_id == Some(wp_post_id) => {
            if url.is_some() && url != row.article.url.as_deref() {
                tx.prepare_cached("update articles set url = ?2, updated_at = ?3 where id = ?1")?
                    .execute(params![id, url, timestamp::now()])?;
                return Ok(for_site(tx, site_id, id)?
                    .map_or(Published::NotFound, |r| Published::Done(Box::new(r))));
            }
            Ok(Published::Done(Box::new(row)))
        }
        status => Ok(Published::Conflict(status.to_owned())),
    }
}

/// Counts by status of a site's articles, and the tokens they used.
#[derive(Debug, Default)]
pub struct Totals {
    pub total: i64,
    pub pending: i64,
    pub in_progress: i64,
    pub completed: i64,
    pub failed: i64,
    pub published: i64,
    pub tokens_used: i64,
}

/// One UTC day of a site's articles: `(date, articles, tokens)`.
pub type Day = (String, i64, i64);

/// A site's totals and its last `days` UTC days up to `today` (`YYYY-MM-DD`), oldest first,
/// days without articles included — all from the `articles_site` index.
pub fn statistics(
    conn: &Connection,
    site_id: &str,
    today: &str,
    days: u32,
) -> Result<(Totals, Vec<Day>), db::Error> {
    let totals = conn
        .prepare_cached(
            "select count(*),
                    coalesce(sum(status = 'pending'), 0),
                    coalesce(sum(status = 'in_progress'), 0),
                    coalesce(sum(status = 'completed'), 0),
                    coalesce(sum(status = 'failed'), 0),
                    coalesce(sum(status = 'published'), 0),
                    coalesce(sum(tokens_used), 0)
             from articles where site_id = ?1",
        )?
        .query_row([site_id], |r| {
            Ok(Totals {
                total: r.get(0)?,
                pending: r.get(1)?,
                in_progress: r.get(2)?,
                completed: r.get(3)?,
                failed: r.get(4)?,
                published: r.get(5)?,
                tokens_used: r.get(6)?,
            })
        })?;
    let back = format!("-{} days", days.saturating_sub(1));
    let per_day = conn
        .prepare_cached(
            "with recursive days (day) as (
                 select date(?2, ?3)
                 union all
                 select date(day, '+1 day') from days where day < date(?2)
             )
             select day, count(a.id), coalesce(sum(a.tokens_used), 0)
             from days left join articles a
                  on a.site_id = ?1 and a.created_at >= day and a.created_at < date(day, '+1 day')
             group by day order by day",
        )?
        .query_map(params![site_id, today, back], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok((totals, per_day))
}
