//! `/generation/sessions`: a user's generation history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::Session;
use super::export::{self, Format};
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
        .routes(routes!(export_session))
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// The file's kind; `docx` when absent.
    #[param(schema_with = formats)]
    format: Option<String>,
}

/// The file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Documents the answer; never built.
struct ExportFile(Vec<u8>);

fn formats() -> utoipa::openapi::Object {
    crate::openapi::one_of(Format::ALL.map(Format::as_str))
}

/// One of the caller's completed sessions as a file to download.
///
/// A Word document laid out after ГОСТ 7.32 (a title page from the form for `abstract`, `report`
/// and `essay_academic`), the Markdown as stored, or plain text. Another user's session is a
/// 404; a picture has no text to export.
#[utoipa::path(get, path = "/generation/sessions/{id}/export", tag = "generation",
    security(("bearer" = [])),
    params(("id" = String, Path), ExportQuery),
    responses(
        (status = 200, description = "The file (`Content-Disposition: attachment`)",
            content(
                (ExportFile = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
                (ExportFile = "text/markdown"), (ExportFile = "text/plain"))),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`not_completed`: the session has no result yet or failed; \
            `not_exportable`: its result is a picture", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn export_session(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
    AppQuery(query): AppQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = match query.format.as_deref() {
        None => Format::Docx,
        Some(value) => Format::parse(value).ok_or_else(|| {
            let names = Format::ALL.map(Format::as_str);
            ApiError::validation(vec![FieldError::query(
                "format",
                format!("Input should be one of {}", names.join(", ")),
                "enum",
            )])
        })?,
    };
    let user_id = current.user.id;
    let session = state
        .db
        .read(move |c| store::by_id(c, &user_id, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("No such session"))?;
    if session.status != "completed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_completed",
            "The session has no result to export",
        ));
    }
    let Some(markdown) = export::text_of(&session.result).map(str::to_owned) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_exportable",
            "A picture cannot be exported as a document",
        ));
    };
    let tool = state.tools.get().tool(&session.tool_id).cloned();
    let tool_name = tool
        .as_ref()
        .map_or_else(|| session.tool_id.clone(), |tool| tool.name.clone());
    let (bytes, disposition) = tokio::task::spawn_blocking(move || {
        let document = export::Document {
            tool_id: &session.tool_id,
            tool_name: &tool_name,
            title_kind: tool
                .as_ref()
                .and_then(|t| t.title_page.as_ref())
                .map(|p| p.kind.as_str()),
            markdown: &markdown,
            input: &session.input_data,
            created_at: &session.created_at,
        };
        export::render(format, &document)
            .map(|bytes| (bytes, export::content_disposition(&document, format)))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    let disposition = HeaderValue::from_str(&disposition).map_err(|e| ApiError::internal(&e))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        bytes,
    )
        .into_response())
}
