//! `/generation/sessions`: a user's generation history.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::Session;
use super::store::{self, Filter};
use crate::app::AppState;
use crate::auth::extract::CurrentUser;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::gallery;
use crate::request::{AppQuery, Page, Pagination};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(get_session))
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<Session>,
    pagination: Page,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FilterQuery {
    /// Only this tool's sessions.
    tool_id: Option<String>,
    /// Only sessions in this state.
    #[param(schema_with = statuses)]
    status: Option<String>,
}

fn statuses() -> utoipa::openapi::Object {
    crate::openapi::one_of(STATUSES.iter().copied())
}

const STATUSES: &[&str] = &["pending", "in_progress", "completed", "failed"];

/// The caller's sessions, newest first.
#[utoipa::path(get, path = "/generation/sessions", tag = "generation", security(("bearer" = [])),
    params(crate::request::Pagination, FilterQuery),
    responses((status = 200, body = SessionList), (status = 422, body = ErrorBody)))]
async fn list_sessions(
    State(state): State<AppState>,
    current: CurrentUser,
    page: Pagination,
    AppQuery(query): AppQuery<FilterQuery>,
) -> Result<Json<SessionList>, ApiError> {
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
        tool_id: query.tool_id.filter(|t| !t.is_empty()),
        status: query.status,
    };
    let user_id = current.user.id;
    let (sessions, total) = state
        .db
        .read(move |c| store::list(c, &user_id, &filter, page.limit, page.offset))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut sessions = sessions;
    for session in &mut sessions {
        gallery::refresh_result_links(&session.tool_id, &mut session.result, &state.gallery.links);
    }
    Ok(Json(SessionList {
        sessions,
        pagination: page.page(total),
    }))
}

/// One of the caller's sessions; another user's is a 404.
#[utoipa::path(get, path = "/generation/sessions/{id}", tag = "generation", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 404, body = ErrorBody)))]
async fn get_session(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    let user_id = current.user.id;
    state
        .db
        .read(move |c| store::by_id(c, &user_id, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(|mut session| {
            gallery::refresh_result_links(
                &session.tool_id,
                &mut session.result,
                &state.gallery.links,
            );
            Json(session)
        })
        .ok_or_else(|| ApiError::not_found("No such session"))
}
