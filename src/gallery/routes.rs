//! `/images/*` (CONTRACT §4 "Images"): generate (paid, queued, watched on `/ws/image/{id}`),
//! list, get, the file itself (signed link or Bearer token), upscale (paid), delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::store::{self, NewImage, UpscaleOpened};
use super::work::{Draw, Upscale};
use super::{Image, Variant};
use crate::app::AppState;
use crate::auth::extract::{CurrentUser, authenticate};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::idempotency::{self, Opened, Paid, Refusal};
use crate::images;
use crate::request::{AppJson, AppQuery, Page, Pagination};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(generate))
        .routes(routes!(list))
        .routes(routes!(get_image, delete_image))
        .routes(routes!(file))
        .routes(routes!(upscale))
}

/// The tools whose prices the image endpoints charge: one price list for execute and here.
const GENERATE_TOOL: &str = "image_generate";
const UPSCALE_TOOL: &str = "image_upscale";
/// Kandinsky's own limit on a prompt.
const PROMPT_MAX: usize = 1000;
const STYLES: &[&str] = &["DEFAULT", "ANIME", "UHD", "KANDINSKY"];

#[derive(Deserialize, ToSchema)]
pub struct GenerateRequest {
    /// What to draw, 1–1000 characters.
    #[schema(min_length = 1, max_length = 1000, pattern = r"\S")]
    prompt: String,
    /// `web` (1024×1024), `banner` (2048×1024), `print` (2048×2048) or `messenger` (512×512).
    #[schema(schema_with = formats)]
    format: String,
    /// `DEFAULT`, `ANIME`, `UHD` or `KANDINSKY`.
    #[serde(default)]
    #[schema(schema_with = styles)]
    style: Option<String>,
    /// What the picture must not show, at most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    negative_prompt: Option<String>,
}

fn formats() -> utoipa::openapi::Object {
    crate::openapi::one_of(crate::images::Format::ALL.map(crate::images::Format::as_str))
}

fn styles() -> utoipa::openapi::Object {
    crate::openapi::or_null(crate::openapi::one_of(STYLES.iter().copied()))
}

/// The price of `key` (a format, a scale) in an image tool's price list.
fn price(state: &AppState, tool: &str, key: &str) -> Result<i64, ApiError> {
    state
        .tools
        .get()
        .tool(tool)
        .and_then(|t| t.costs.get(key).copied())
        .ok_or_else(|| ApiError::internal(&format!("no price for {tool} {key}")))
}

/// Refused before any debit when nothing could draw.
fn require_images(state: &AppState) -> Result<(), ApiError> {
    if state.images.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "providers_unavailable",
            "No image provider is configured on this server",
        ));
    }
    Ok(())
}

fn optional_text(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Draws a picture: debited now, drawn as a job; follow it on `ws_url`.
#[utoipa::path(post, path = "/images/generate", tag = "images", security(("bearer" = [])),
    params(crate::idempotency::KeyHeader),
    request_body = GenerateRequest,
    responses(
        (status = 202, description = "Paid and queued; status `processing`", body = Image),
        (status = 402, description = "`insufficient_balance` with `required` and `balance`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, description = "`providers_unavailable`: no image provider configured (nothing charged)", body = ErrorBody),
    ))]
async fn generate(
    State(state): State<AppState>,
    current: CurrentUser,
    headers: HeaderMap,
    AppJson(body): AppJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let prompt = body.prompt.trim().to_owned();
    if prompt.is_empty() || prompt.chars().count() > PROMPT_MAX {
        errors.push(FieldError::body(
            "prompt",
            format!("must be 1–{PROMPT_MAX} characters"),
            "value_error",
        ));
    }
    let format = images::Format::parse(&body.format);
    if format.is_none() {
        errors.push(FieldError::body(
            "format",
            "Input should be 'web', 'banner', 'print' or 'messenger'",
            "enum",
        ));
    }
    let style = optional_text(body.style);
    if style.as_deref().is_some_and(|s| !STYLES.contains(&s)) {
        errors.push(FieldError::body(
            "style",
            format!("Input should be one of {}", STYLES.join(", ")),
            "enum",
        ));
    }
    let negative = optional_text(body.negative_prompt);
    if negative
        .as_deref()
        .is_some_and(|n| n.chars().count() > PROMPT_MAX)
    {
        errors.push(FieldError::body(
            "negative_prompt",
            format!("must be at most {PROMPT_MAX} characters"),
            "value_error",
        ));
    }
    let Some(format) = format.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let cost = price(&state, GENERATE_TOOL, format.as_str())?;
    let key = idempotency::key_from(&headers)?;
    require_images(&state)?;

    let user_id = current.user.id.clone();
    let hash = idempotency::request_hash(&[
        "images/generate",
        &prompt,
        format.as_str(),
        style.as_deref().unwrap_or(""),
        negative.as_deref().unwrap_or(""),
    ]);
    let request = images::Request {
        prompt: prompt.clone(),
        negative_prompt: negative.clone(),
        style: style.clone(),
        format,
    };
    let links = state.gallery.links.clone();
    let (width, height) = format.size();
    let opened = idempotency::open_paid(&state.db, &user_id.clone(), key, hash, move |tx| {
        let row = store::open(
            tx,
            &NewImage {
                user_id: &user_id,
                prompt: &prompt,
                negative_prompt: negative.as_deref(),
                style: style.as_deref(),
                format: format.as_str(),
                width,
                height,
                cost,
            },
        )?;
        let image = Image::from_row(&row, &links);
        Ok(Paid {
            work_id: row.id.clone(),
            accepted: Some((202, serde_json::to_string(&image).unwrap_or_default())),
            row: (row, image),
        })
    })
    .await?;
    let (row, image) = match opened {
        Opened::Fresh(opened) => opened,
        Opened::Answer(response) => return Ok(response),
    };
    state.jobs.enqueue(Draw {
        deps: state.gallery.clone(),
        image_id: row.id.clone(),
        user_id: row.user_id,
        request,
    });
    Ok((StatusCode::ACCEPTED, Json(image)).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ImageList {
    images: Vec<Image>,
    pagination: Page,
}

/// The caller's images, newest first.
#[utoipa::path(get, path = "/images", tag = "images", security(("bearer" = [])),
    params(crate::request::Pagination),
    responses((status = 200, body = ImageList), (status = 422, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    current: CurrentUser,
    page: Pagination,
) -> Result<Json<ImageList>, ApiError> {
    let user_id = current.user.id;
    let (rows, total) = state
        .db
        .read(move |c| store::list(c, &user_id, page.limit, page.offset))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let links = &state.gallery.links;
    Ok(Json(ImageList {
        images: rows.iter().map(|r| Image::from_row(r, links)).collect(),
        pagination: page.page(total),
    }))
}

async fn find(state: &AppState, user_id: &str, id: &str) -> Result<store::Row, ApiError> {
    let (user_id, image_id) = (user_id.to_owned(), id.to_owned());
    state
        .db
        .read(move |c| store::by_id(c, &user_id, &image_id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("No such image"))
}

/// One of the caller's images; another user's is a 404.
#[utoipa::path(get, path = "/images/{id}", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
async fn get_image(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Image>, ApiError> {
    let row = find(&state, &current.user.id, &id).await?;
    Ok(Json(Image::from_row(&row, &state.gallery.links)))
}

/// Deletes an image and its files.
#[utoipa::path(delete, path = "/images/{id}", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted; its files are removed"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`image_processing`: it is being drawn or upscaled", body = ErrorBody),
    ))]
async fn delete_image(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user_id = current.user.id.clone();
    let deleted = state
        .db
        .write(move |tx| store::delete(tx, &user_id, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let files = match deleted {
        Ok(files) => files,
        Err(true) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "image_processing",
                "The image is being drawn or upscaled; delete it when it is done",
            ));
        }
        Err(false) => return Err(ApiError::not_found("No such image")),
    };
    let disk = state.gallery.files.clone();
    let removed = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|f| disk.remove(f))
            .collect::<std::io::Result<Vec<()>>>()
    })
    .await;
    if !matches!(removed, Ok(Ok(_))) {
        tracing::warn!(user.id = %current.user.id, "an image file could not be removed");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FileQuery {
    /// `original` (default: the delivered picture) or `upscaled`.
    #[param(schema_with = variants)]
    variant: Option<String>,
    /// From a signed link.
    expires: Option<u64>,
    /// From a signed link.
    sig: Option<String>,
}

fn variants() -> utoipa::openapi::Object {
    crate::openapi::one_of([Variant::Original, Variant::Upscaled].map(Variant::as_str))
}

fn scales() -> utoipa::openapi::Object {
    crate::openapi::one_of([2, 4])
}

/// The picture itself: with a signed link (as in `url`) or the owner's Bearer token.
#[utoipa::path(get, path = "/images/{id}/file", tag = "images",
    params(("id" = String, Path), FileQuery),
    responses(
        (status = 200, description = "PNG bytes", content_type = "image/png"),
        (status = 401, description = "no valid signature and no token", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AppQuery(query): AppQuery<FileQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let variant = match query.variant.as_deref() {
        None => Variant::Original,
        Some(v) => Variant::parse(v).ok_or_else(|| {
            ApiError::validation(vec![FieldError::query(
                "variant",
                "Input should be 'original' or 'upscaled'",
                "enum",
            )])
        })?,
    };
    let row = match (query.expires, query.sig.as_deref()) {
        (Some(expires), Some(sig)) => {
            if !state.gallery.links.verify(&id, variant, expires, sig) {
                return Err(crate::auth::Error::InvalidToken.into());
            }
            let image_id = id.clone();
            state
                .db
                .read(move |c| store::by_id_any(c, &image_id))
                .await
                .map_err(|e| ApiError::internal(&e))?
                .ok_or_else(|| ApiError::not_found("No such image"))?
        }
        _ => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or(crate::auth::Error::NotAuthenticated)?;
            let user = authenticate(&state.auth, &state.db, token.trim()).await?;
            find(&state, &user.user.id, &id).await?
        }
    };
    let relative = match variant {
        Variant::Original => row.file,
        Variant::Upscaled => row.upscaled_file,
    }
    .ok_or_else(|| ApiError::not_found("This picture does not exist (yet)"))?;
    let disk = state.gallery.files.clone();
    let etag = format!(
        "\"{}\"",
        idempotency::request_hash(&[&relative])
            .get(..16)
            .unwrap_or_default()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let bytes = tokio::task::spawn_blocking(move || disk.read(&relative))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|_| ApiError::not_found("The picture's file is gone"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_owned()),
            // A file's content never changes under its name; a new upscale is a new file.
            (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
            (header::ETAG, etag),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
pub struct UpscaleRequest {
    /// 2 or 4.
    #[schema(schema_with = scales)]
    scale: u32,
}

/// Upscales a completed picture 2× or 4× as a paid job; the result is `upscaled_url`.
#[utoipa::path(post, path = "/images/{id}/upscale", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path),
           crate::idempotency::KeyHeader),
    request_body = UpscaleRequest,
    responses(
        (status = 202, description = "Paid and queued; status `processing`", body = Image),
        (status = 402, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`image_not_ready`: not completed, or already upscaling", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn upscale(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppJson(body): AppJson<UpscaleRequest>,
) -> Result<Response, ApiError> {
    if !matches!(body.scale, 2 | 4) {
        return Err(ApiError::validation(vec![FieldError::body(
            "scale",
            "Input should be 2 or 4",
            "enum",
        )]));
    }
    let scale = body.scale;
    let cost = price(&state, UPSCALE_TOOL, &scale.to_string())?;
    let key = idempotency::key_from(&headers)?;
    let user_id = current.user.id.clone();
    let hash = idempotency::request_hash(&["images/upscale", &id, &scale.to_string()]);
    let links = state.gallery.links.clone();
    let image_id = id.clone();
    let opened = idempotency::open_paid(&state.db, &user_id.clone(), key, hash, move |tx| {
        let row = match store::open_upscale(tx, &user_id, &image_id, scale, cost)? {
            UpscaleOpened::Opened(row) => *row,
            UpscaleOpened::NotFound => {
                return Err(Refusal::Answer(ApiError::not_found("No such image")));
            }
            UpscaleOpened::NotReady => {
                return Err(Refusal::Answer(ApiError::new(
                    StatusCode::CONFLICT,
                    "image_not_ready",
                    "Only a completed picture that is not already being upscaled can be upscaled",
                )));
            }
        };
        let accepted = serde_json::to_string(&Image::from_row(&row, &links)).unwrap_or_default();
        Ok(Paid {
            work_id: row.upscale_id.clone().unwrap_or_default(),
            accepted: Some((202, accepted)),
            row,
        })
    })
    .await?;
    let row = match opened {
        Opened::Answer(response) => return Ok(response),
        Opened::Fresh(row) => row,
    };
    let image = Image::from_row(&row, &state.gallery.links);
    state.jobs.enqueue(Upscale {
        deps: state.gallery.clone(),
        image_id: row.id,
        user_id: row.user_id,
        upscale_id: row.upscale_id.unwrap_or_default(),
        scale,
        cost,
        source: row.file.unwrap_or_default(),
    });
    Ok((StatusCode::ACCEPTED, Json(image)).into_response())
}
