//! The plugin's endpoints (CONTRACT §4 "WordPress plugin"), all behind [`SiteAuth`]:
//! `POST /article/generate`, `GET /article/{id}`, `GET /article`,
//! `POST /article/{id}/published` and `GET /statistics`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::store::{self, Filter, NewArticle, Published};
use super::work::{self, Deps};
use super::{Article, Length, SiteAuth, TOOL};
use crate::app::AppState;
use crate::billing;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::request::{AppJson, AppQuery, Page, Pagination};
use crate::tools::catalogue::Mode;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(generate_article))
        .routes(routes!(list_articles))
        .routes(routes!(get_article))
        .routes(routes!(publish_article))
        .routes(routes!(get_statistics))
}

const TITLE_MIN: usize = 3;
const TITLE_MAX: usize = 500;
const KEYWORDS_MAX: usize = 20;
const KEYWORD_MAX: usize = 100;
const SESSION_ID_MAX: usize = 100;
const LANGUAGE_MAX: usize = 35;
const URL_MAX: usize = 2048;
/// Days covered by `per_day`.
const STAT_DAYS: u32 = 30;
const STATUSES: &[&str] = &["pending", "in_progress", "completed", "failed", "published"];

#[derive(Deserialize, ToSchema)]
pub struct GenerateRequest {
    /// The post's title; the article's topic. 3–500 characters.
    title: String,
    /// Search phrases, the first the main one; at most 20 of at most 100 characters. The
    /// title when none.
    #[serde(default)]
    keywords: Option<Vec<String>>,
    /// The article's language, a code such as `ru` (default) or `en`.
    #[serde(default)]
    language: Option<String>,
    /// `short` (~800 words), `medium` (~1500, default) or `long` (~2500).
    #[serde(default)]
    length: Option<String>,
    /// The batch: any 1–100 characters the plugin chooses; a new UUID when absent.
    #[serde(default)]
    session_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GenerateAccepted {
    article_id: String,
    session_id: String,
    /// `pending`.
    status: String,
}

/// A language code: letters, digits and hyphens, starting with a letter (`ru`, `en-US`).
fn parse_language(raw: Option<&str>) -> Option<String> {
    let text = raw.map(str::trim).unwrap_or("ru");
    let ok = !text.is_empty()
        && text.len() <= LANGUAGE_MAX
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    ok.then(|| text.to_ascii_lowercase())
}

/// The tool's field an input error names, as the plugin's field.
fn plugin_field(tool_field: &str) -> &'static str {
    match tool_field {
        "topic" => "title",
        "keywords" => "keywords",
        "length_words" => "length",
        _ => "language",
    }
}

/// Queues an article: the site's owner is debited the tool's standard price now (an
/// operator's site pays nothing); poll `GET /article/{id}` until it is `completed`.
#[utoipa::path(post, path = "/article/generate", tag = "wordpress",
    security(("access_password" = [])),
    request_body = GenerateRequest,
    responses(
        (status = 202, description = "Paid and queued", body = GenerateAccepted),
        (status = 401, description = "`invalid_password`", body = ErrorBody),
        (status = 402, description = "`insufficient_balance` with `required` and `balance` (the owner's raits)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: wrong passwords from this address", body = ErrorBody),
        (status = 503, description = "`providers_unavailable`: no text provider configured (nothing charged)", body = ErrorBody),
    ))]
async fn generate_article(
    State(state): State<AppState>,
    SiteAuth(site): SiteAuth,
    AppJson(body): AppJson<GenerateRequest>,
) -> Result<(StatusCode, Json<GenerateAccepted>), ApiError> {
    let mut errors = Vec::new();
    let title = body.title.trim().to_owned();
    if !(TITLE_MIN..=TITLE_MAX).contains(&title.chars().count()) {
        errors.push(FieldError::body(
            "title",
            format!("must be {TITLE_MIN}–{TITLE_MAX} characters"),
            "value_error",
        ));
    }
    let keywords: Vec<String> = body
        .keywords
        .unwrap_or_default()
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if keywords.len() > KEYWORDS_MAX || keywords.iter().any(|k| k.chars().count() > KEYWORD_MAX) {
        errors.push(FieldError::body(
            "keywords",
            format!("at most {KEYWORDS_MAX} phrases of at most {KEYWORD_MAX} characters"),
            "value_error",
        ));
    }
    let language = parse_language(body.language.as_deref());
    if language.is_none() {
        errors.push(FieldError::body(
            "language",
            "must be a language code such as 'ru' or 'en'",
            "value_error",
        ));
    }
    let length = Length::parse(body.length.as_deref().unwrap_or("medium"));
    if length.is_none() {
        errors.push(FieldError::body(
            "length",
            "Input should be 'short', 'medium' or 'long'",
            "enum",
        ));
    }
    let session_id = body
        .session_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    if !(1..=SESSION_ID_MAX).contains(&session_id.chars().count()) {
        errors.push(FieldError::body(
            "session_id",
            format!("must be 1–{SESSION_ID_MAX} characters"),
            "value_error",
        ));
    }
    let (Some(language), Some(length), true) = (language, length, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };

    let tool = state
        .tools
        .get()
        .tool(TOOL)
        .filter(|t| t.supports_modes.contains(&Mode::Standard))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tool_unavailable",
                "Articles cannot be written on this server now",
            )
        })?;
    let input = work::tool_input(&title, &keywords, &language, length);
    let invalid = tool.validate(&input);
    if !invalid.is_empty() {
        return Err(ApiError::validation(
            invalid
                .into_iter()
                .map(|(path, msg)| {
                    let field = path.first().map_or("title", |f| plugin_field(f));
                    FieldError::body(field, msg, "value_error")
                })
                .collect(),
        ));
    }
    let price = tool
        .quote(Mode::Standard, &input)
        .ok_or_else(|| ApiError::internal(&"seo_article has no standard price"))?
        .cost_raits;
    if let Some(reason) = state.llm.cannot_serve(tool.min_tier) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "providers_unavailable",
            reason,
        ));
    }

    let opened = {
        let (site, session_id) = (site.clone(), session_id.clone());
        let length = length.as_str();
        state
            .db
            .write(move |tx| {
                store::open_article(
                    tx,
                    &NewArticle {
                        site_id: &site.id,
                        owner_user_id: site.owner_user_id.as_deref(),
                        session_id: &session_id,
                        title: &title,
                        keywords: &keywords,
                        language: &language,
                        length,
                        price,
                    },
                )
            })
            .await
    };
    let row = match opened {
        Ok(row) => row,
        Err(billing::Error::InsufficientBalance { required, balance }) => {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_balance",
                format!("Not enough raits: {required} required, {balance} available"),
            )
            .with("required", required)
            .with("balance", balance));
        }
        Err(e) => return Err(ApiError::internal(&e)),
    };
    tracing::info!(site.id = %site.id, article.id = %row.article.id, "article queued");
    let accepted = GenerateAccepted {
        article_id: row.article.id.clone(),
        session_id: row.article.session_id.clone(),
        status: row.article.status.clone(),
    };
    let deps = Deps {
        db: state.db.clone(),
        llm: state.llm.clone(),
    };
    state
        .jobs
        .enqueue(work::Article::new(deps, tool, &row, input));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// One of the calling site's articles; `content` (HTML) once completed. Another site's → 404.
#[utoipa::path(get, path = "/article/{id}", tag = "wordpress",
    security(("access_password" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Article),
        (status = 401, description = "`invalid_password`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "`too_many_attempts`", body = ErrorBody),
    ))]
async fn get_article(
    State(state): State<AppState>,
    SiteAuth(site): SiteAuth,
    Path(id): Path<String>,
) -> Result<Json<Article>, ApiError> {
    let row = state
        .db
        .read(move |c| store::for_site(c, &site.id, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("No such article"))?;
    Ok(Json(row.article))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this batch.
    session_id: Option<String>,
    /// Only articles in this state.
    #[param(schema_with = statuses)]
    status: Option<String>,
}

fn statuses() -> utoipa::openapi::Object {
    crate::openapi::one_of(STATUSES.iter().copied())
}

#[derive(Serialize, ToSchema)]
pub struct ArticleList {
    articles: Vec<Article>,
    pagination: Page,
}

/// The calling site's articles, newest first, optionally one batch or one status.
#[utoipa::path(get, path = "/article", tag = "wordpress",
    security(("access_password" = [])),
    params(ListQuery, crate::request::Pagination),
    responses(
        (status = 200, body = ArticleList),
        (status = 401, description = "`invalid_password`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`too_many_attempts`", body = ErrorBody),
    ))]
async fn list_articles(
    State(state): State<AppState>,
    SiteAuth(site): SiteAuth,
    page: Pagination,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<ArticleList>, ApiError> {
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::validation(vec![FieldError::query(
            "status",
            format!("Input should be one of {}", STATUSES.join(", ")),
            "enum",
        )]));
    }
    let filter = Filter {
        session_id: query.session_id,
        status: query.status,
    };
    let (rows, total) = state
        .db
        .read(move |c| store::list(c, &site.id, &filter, page.limit, page.offset))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(ArticleList {
        articles: rows.into_iter().map(|r| r.article).collect(),
        pagination: page.page(total),
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct PublishRequest {
    /// The WordPress post's id, a positive integer.
    wp_post_id: i64,
    /// The post's address (http or https, at most 2048 characters).
    #[serde(default)]
    url: Option<String>,
}

/// Marks a completed article published as a WordPress post; the same post again answers
/// the article unchanged.
#[utoipa::path(post, path = "/article/{id}/published", tag = "wordpress",
    security(("access_password" = [])),
    params(("id" = String, Path)),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published", body = Article),
        (status = 401, description = "`invalid_password`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`article_not_completed`, or `already_published` as another post", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`too_many_attempts`", body = ErrorBody),
    ))]
async fn publish_article(
    State(state): State<AppState>,
    SiteAuth(site): SiteAuth,
    Path(id): Path<String>,
    AppJson(body): AppJson<PublishRequest>,
) -> Result<Json<Article>, ApiError> {
    let mut errors = Vec::new();
    if body.wp_post_id <= 0 {
        errors.push(FieldError::body(
            "wp_post_id",
            "must be a positive integer",
            "value_error",
        ));
    }
    let url = body
        .url
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty());
    if let Some(url) = &url {
        let web = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if url.len() > URL_MAX || !web {
            errors.push(FieldError::body(
                "url",
                format!("must be an http or https URL of at most {URL_MAX} characters"),
                "value_error",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let wp_post_id = body.wp_post_id;
    let published = state
        .db
        .write(move |tx| store::publish(tx, &site.id, &id, wp_post_id, url.as_deref()))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    match published {
        Published::Done(row) => Ok(Json(row.article)),
        Published::NotFound => Err(ApiError::not_found("No such article")),
        Published::Conflict(status) if status == "published" => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_published",
            "The article is already published as another post",
        )),
        Published::Conflict(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "article_not_completed",
            format!("Only a completed article can be published; this one is {status}"),
        )
        .with("status", status)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Counts {
    total: i64,
    pending: i64,
    in_progress: i64,
    completed: i64,
    failed: i64,
    published: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DayStat {
    /// `YYYY-MM-DD`, UTC.
    date: String,
    articles: i64,
    tokens: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Statistics {
    site_id: String,
    articles: Counts,
    tokens_used: i64,
    /// The last 30 UTC days, oldest first, today last; days without articles included.
    per_day: Vec<DayStat>,
}

/// The calling site's articles by status, tokens used, and articles per day for 30 days.
#[utoipa::path(get, path = "/statistics", tag = "wordpress",
    security(("access_password" = [])),
    responses(
        (status = 200, body = Statistics),
        (status = 401, description = "`invalid_password`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`", body = ErrorBody),
    ))]
async fn get_statistics(
    State(state): State<AppState>,
    SiteAuth(site): SiteAuth,
) -> Result<Json<Statistics>, ApiError> {
    let today = time::OffsetDateTime::now_utc().date();
    let today = format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    let site_id = site.id.clone();
    let (totals, days) = state
        .db
        .read(move |c| store::statistics(c, &site_id, &today, STAT_DAYS))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Statistics {
        site_id: site.id,
        articles: Counts {
            total: totals.total,
            pending: totals.pending,
            in_progress: totals.in_progress,
            completed: totals.completed,
            failed: totals.failed,
            published: totals.published,
        },
        tokens_used: totals.tokens_used,
        per_day: days
            .into_iter()
            .map(|(date, articles, tokens)| DayStat {
                date,
                articles,
                tokens,
            })
            .collect(),
    }))
}
