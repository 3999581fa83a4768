//! `/admin/sites`: the WordPress sites (never their password digests) with their article
//! counts, and rotating a site's access password through the code `easy-writer site
//! rotate-password` uses. The new password is shown once, on the answer to the form, and is
//! neither stored nor logged.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::Value;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::{Admin, audit, context, view};
use crate::app::AppState;
use crate::{db, legacy};

#[derive(Deserialize)]
pub struct Paged {
    offset: Option<i64>,
}

#[derive(Serialize)]
struct SiteRow {
    id: String,
    domain: String,
    name: Option<String>,
    owner_user_id: Option<String>,
    owner_email: Option<String>,
    created_at: String,
    articles: i64,
    completed: i64,
    published: i64,
    failed: i64,
}

impl From<legacy::store::SiteListed> for SiteRow {
    fn from(listed: legacy::store::SiteListed) -> Self {
        SiteRow {
            id: listed.site.id,
            domain: listed.site.domain,
            name: listed.site.name,
            owner_user_id: listed.site.owner_user_id,
            owner_email: listed.owner_email,
            created_at: listed.created_at,
            articles: listed.articles,
            completed: listed.completed,
            published: listed.published,
            failed: listed.failed,
        }
    }
}

pub async fn sites(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<Paged>,
) -> Response {
    let offset = view::offset(q.offset);
    let rows = super::lists::page_of(
        &state,
        legacy::store::LISTED_SELECT,
        super::lists::Where::default(),
        "s.created_at desc, s.id desc",
        offset,
        |r| legacy::store::listed_from(r).map(SiteRow::from),
    )
    .await;
    super::lists::render(
        &admin,
        "sites",
        "sites.html",
        "сайты",
        rows,
        Vec::new(),
        offset,
        Vec::new(),
    )
}

/// A new access password for the site: its digest replaces the old one (the plugin signed in
/// with the old password stops working), in the same write as the audit row.
pub async fn rotate_site(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<view::CsrfForm>,
) -> Response {
    if !admin.csrf_ok(&form.csrf) {
        return view::stale_form();
    }
    let password = legacy::new_password();
    let digest = legacy::password_digest(&password);
    let who = admin.clone();
    let rotated = state
        .db
        .write(move |tx| {
            let domain: Option<String> = tx
                .prepare_cached("select domain from sites where id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            let Some(domain) = domain else {
                return Ok(None);
            };
            if !legacy::store::set_password(tx, &domain, &digest)? {
                return Ok(None);
            }
            audit::record(tx, &who, "rotate_site_password", Some(&id), Some(&domain))?;
            Ok::<_, db::Error>(Some(domain))
        })
        .await;
    match rotated {
        Ok(Some(domain)) => view::page(
            "site_password.html",
            context(
                &admin,
                "sites",
                vec![
                    ("domain", Value::from(domain)),
                    ("password", Value::from(password)),
                ],
            ),
        ),
        Ok(None) => view::page_with(
            StatusCode::NOT_FOUND,
            "error.html",
            Value::from_iter([("message", "Нет такого сайта")]),
        ),
        Err(e) => {
            tracing::error!(error = %e, "admin site password rotation");
            view::failed("Не удалось сменить пароль сайта")
        }
    }
}
