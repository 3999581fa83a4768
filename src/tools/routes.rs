//! `/tools/*`: tabs, a tool's form, and execution (CONTRACT §4 "Tools and generation").
//!
//! An execution is at most two write transactions: the debit with the new session (and the
//! idempotency claim), then the result or the refund. A quick run calls the provider between
//! them, holding no connection; a standard run is queued as a job (`generation::run`) and
//! answered `202` at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::catalogue::{Mode, OutputFormat, Tool};
use super::price::Quote;
use crate::app::AppState;
use crate::auth::extract::CurrentUser;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::generation::Session;
use crate::generation::run::{self, Generation};
use crate::generation::store::{self as sessions, NewSession};
use crate::idempotency::{self, Opened, Paid};
use crate::request::AppJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tabs))
        .routes(routes!(get_tab))
        .routes(routes!(get_tab_tools))
        .routes(routes!(get_schema))
        .routes(routes!(execute))
        .routes(routes!(quote))
}

/// A tool in a tab listing.
#[derive(Serialize, ToSchema)]
pub struct ToolSummary {
    id: String,
    name: String,
    description: String,
    icon: String,
    supports_modes: Vec<Mode>,
    /// The quick price in raits (a standard-only tool: its standard price).
    estimated_cost: i64,
    /// Price per mode, or per format/scale for image tools.
    costs: BTreeMap<String, i64>,
    /// How the price grows with the input beyond what `costs` includes; `POST
    /// /tools/{id}/quote` gives the exact price of an input.
    #[serde(skip_serializing_if = "Option::is_none")]
    price_per_unit: Option<UnitRates>,
    output_format: OutputFormat,
    /// For `output_format: json`: the JSON Schema of `result`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result_schema: Option<Value>,
}

/// A tool's rate per unit of its input.
#[derive(Serialize, ToSchema)]
pub struct UnitRates {
    /// The form field measured.
    field: String,
    /// `1000_characters`, `pages`, `100_words`, `words`, `minutes`, `items`.
    unit: String,
    /// Units the base price covers.
    included: u64,
    /// Raits per unit beyond those, per mode.
    rates: BTreeMap<String, i64>,
}

impl From<&Tool> for ToolSummary {
    fn from(t: &Tool) -> Self {
        ToolSummary {
            id: t.id.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            icon: t.icon.clone(),
            supports_modes: t.supports_modes.clone(),
            estimated_cost: t.estimated_cost,
            costs: t.costs.clone(),
            price_per_unit: t.price_per_unit.as_ref().map(|p| UnitRates {
                field: p.field.clone(),
                unit: p.name(),
                included: p.included,
                rates: p.rates.clone(),
            }),
            output_format: t.output_format,
            result_schema: t.result_schema.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TabResponse {
    id: &'static str,
    name: &'static str,
    icon: &'static str,
    tools: Vec<ToolSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct TabsResponse {
    tabs: Vec<TabResponse>,
}

fn tab_response(state: &AppState, id: &str) -> Result<TabResponse, ApiError> {
    let catalogue = state.tools.get();
    let (tab, tools) = catalogue
        .tab(id)
        .ok_or_else(|| ApiError::not_found(format!("No tab {id:?}")))?;
    Ok(TabResponse {
        id: tab.id,
        name: tab.name,
        icon: tab.icon,
        tools: tools
            .iter()
            .map(|t| ToolSummary::from(t.as_ref()))
            .collect(),
    })
}

/// The five tabs with their tools, in the spec's order.
#[utoipa::path(get, path = "/tools/tabs", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = TabsResponse), (status = 401, body = ErrorBody)))]
async fn list_tabs(State(state): State<AppState>, _user: CurrentUser) -> Json<TabsResponse> {
    let catalogue = state.tools.get();
    let tabs = catalogue
        .tabs()
        .iter()
        .map(|(tab, tools)| TabResponse {
            id: tab.id,
            name: tab.name,
            icon: tab.icon,
            tools: tools
                .iter()
                .map(|t| ToolSummary::from(t.as_ref()))
                .collect(),
        })
        .collect();
    Json(TabsResponse { tabs })
}

/// One tab.
#[utoipa::path(get, path = "/tools/tabs/{tab_id}", tag = "tools", security(("bearer" = [])),
    params(("tab_id" = String, Path)),
    responses((status = 200, body = TabResponse), (status = 404, body = ErrorBody)))]
async fn get_tab(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(tab_id): Path<String>,
) -> Result<Json<TabResponse>, ApiError> {
    tab_response(&state, &tab_id).map(Json)
}

/// One tab (the seed spec's spelling of the same endpoint).
#[utoipa::path(get, path = "/tools/{id}/tools", tag = "tools", security(("bearer" = [])),
    params(("id" = String, Path, description = "tab id")),
    responses((status = 200, body = TabResponse), (status = 404, body = ErrorBody)))]
async fn get_tab_tools(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<TabResponse>, ApiError> {
    tab_response(&state, &id).map(Json)
}

fn find_tool(state: &AppState, id: &str) -> Result<Arc<Tool>, ApiError> {
    state
        .tools
        .get()
        .tool(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("No tool {id:?}")))
}

/// The JSON Schema of a tool's input form.
#[utoipa::path(get, path = "/tools/{id}/schema", tag = "tools", security(("bearer" = [])),
    params(("id" = String, Path, description = "tool id")),
    responses((status = 200, description = "JSON Schema", body = Object), (status = 404, body = ErrorBody)))]
async fn get_schema(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(find_tool(&state, &id)?.input_schema.clone()))
}

#[derive(Deserialize, ToSchema)]
pub struct ExecuteRequest {
    /// The form's values; must satisfy the tool's schema.
    #[schema(value_type = Object)]
    input: Value,
    /// `quick` or `standard`; default: quick when the tool offers it, else its first mode.
    #[serde(default)]
    #[schema(schema_with = modes)]
    mode: Option<String>,
}

fn modes() -> utoipa::openapi::Object {
    crate::openapi::or_null(crate::openapi::one_of(["quick", "standard"]))
}

/// Runs a tool. Quick mode answers the finished session; standard mode queues a job and
/// answers `202` with the WebSocket to watch it on.
#[utoipa::path(post, path = "/tools/{id}/execute", tag = "tools", security(("bearer" = [])),
    params(("id" = String, Path, description = "tool id"),
           crate::idempotency::KeyHeader),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "Quick run finished", body = Session),
        (status = 202, description = "Standard run or image tool queued: `{session_id, status, ws_url}`", body = Object),
        (status = 400, description = "`mode_not_supported`", body = ErrorBody),
        (status = 402, description = "`insufficient_balance` with `required` and `balance`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`; `image_not_ready` (image_upscale of a picture not completed)", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, description = "`providers_unavailable`: none configured (nothing charged), or none answered (refunded)", body = ErrorBody),
    ))]
async fn execute(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppJson(body): AppJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let tool = find_tool(&state, &id)?;
    let (mode, price) = priced(&tool, &body)?;
    let cost = price.cost_raits;
    let key = idempotency::key_from(&headers)?;
    // Refused before the debit, with the reason: nothing to refund.
    let needs_text = !matches!(tool.id.as_str(), "image_generate" | "image_upscale");
    let text_refusal = needs_text
        .then(|| state.llm.cannot_serve(tool.min_tier))
        .flatten();
    let image_refusal = (tool.is_image_tool() && state.images.is_empty())
        .then_some("No AI provider for this tool is configured on this server");
    if let Some(reason) = text_refusal.or(image_refusal) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "providers_unavailable",
            reason,
        ));
    }
    if tool.id == "image_upscale" {
        upscalable(&state, &current.user.id, &body.input).await?;
    }
    let user_id = current.user.id.clone();

    // From the debit to the settlement the run is a runner task: a client that hangs up
    // cannot stop it half-way, and shutdown waits for it.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_state = state.clone();
    state.jobs.spawn(async move {
        let _ = tx.send(paid_run(task_state, tool, mode, cost, key, user_id, body.input).await);
    });
    rx.await
        .unwrap_or_else(|_| Err(ApiError::internal(&"the execution task ended unexpectedly")))
}

/// A run's price.
#[derive(Serialize, ToSchema)]
pub struct QuoteResponse {
    tool_id: String,
    mode: Mode,
    #[serde(flatten)]
    quote: Quote,
}

/// The exact price `execute` would charge for this input and mode now: the mode's base price,
/// plus the tool's rate for each unit (1,000 characters, pages, words, minutes) beyond those
/// the base includes. Nothing is charged or run.
#[utoipa::path(post, path = "/tools/{id}/quote", tag = "tools", security(("bearer" = [])),
    params(("id" = String, Path, description = "tool id")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, body = QuoteResponse),
        (status = 400, description = "`mode_not_supported`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn quote(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<String>,
    AppJson(body): AppJson<ExecuteRequest>,
) -> Result<Json<QuoteResponse>, ApiError> {
    let tool = find_tool(&state, &id)?;
    let (mode, quote) = priced(&tool, &body)?;
    Ok(Json(QuoteResponse {
        tool_id: tool.id.clone(),
        mode,
        quote,
    }))
}

/// The mode a request runs in and its price, or why it cannot run: `422` for a bad mode or
/// input, `400` for a mode the tool does not offer.
fn priced(tool: &Tool, body: &ExecuteRequest) -> Result<(Mode, Quote), ApiError> {
    let mode = match body.mode.as_deref() {
        None => {
            if tool.supports_modes.contains(&Mode::Quick) {
                Mode::Quick
            } else {
                tool.supports_modes[0]
            }
        }
        Some("quick") => Mode::Quick,
        Some("standard") => Mode::Standard,
        Some(other) => {
            return Err(ApiError::validation(vec![FieldError::body(
                "mode",
                format!("Input should be 'quick' or 'standard', got {other:?}"),
                "enum",
            )]));
        }
    };
    let errors: Vec<FieldError> = tool
        .validate(&body.input)
        .into_iter()
        .map(|(path, msg)| {
            let mut loc: Vec<Value> = vec!["body".into(), "input".into()];
            loc.extend(path.into_iter().map(Value::from));
            FieldError {
                loc,
                msg,
                kind: "value_error".into(),
            }
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if !tool.supports_modes.contains(&mode) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "mode_not_supported",
            format!("Tool {} does not offer {} mode", tool.id, mode.as_str()),
        ));
    }
    let quote = tool.quote(mode, &body.input).ok_or_else(|| {
        ApiError::internal(&format!(
            "tool {} has no price for {}",
            tool.id,
            mode.as_str()
        ))
    })?;
    Ok((mode, quote))
}

/// Debits and opens the session, then runs it quick or queues it standard.
async fn paid_run(
    state: AppState,
    tool: Arc<Tool>,
    mode: Mode,
    cost: i64,
    key: Option<String>,
    user_id: String,
    input: Value,
) -> Result<Response, ApiError> {
    // Transaction 1: the idempotency claim, the session and its debit (and, for a queued
    // job, the answer a retry will get).
    let hash = idempotency::request_hash(&[&tool.id, mode.as_str(), &input.to_string()]);
    let opened = {
        let (user_id, tool_id, input) = (user_id.clone(), tool.id.clone(), input.clone());
        let description = format!("Генерация: {}", tool.name);
        // Standard runs and pictures take long: queued, answered `202` at once.
        let queued = mode == Mode::Standard || tool.is_image_tool();
        idempotency::open_paid(&state.db, &user_id.clone(), key, hash, move |tx| {
            let session = sessions::open(
                tx,
                &NewSession {
                    user_id: &user_id,
                    tool_id: &tool_id,
                    mode: mode.as_str(),
                    status: if queued { "pending" } else { "in_progress" },
                    input: &input,
                    cost,
                    description: &description,
                },
            )?;
            Ok(Paid {
                work_id: session.id.clone(),
                accepted: queued.then(|| (202, accepted_body(&session.id))),
                row: session,
            })
        })
        .await?
    };
    let session = match opened {
        Opened::Fresh(session) => session,
        Opened::Answer(response) => return Ok(response),
    };

    let generation = Generation {
        deps: run::Deps {
            db: state.db.clone(),
            llm: state.llm.clone(),
            gallery: state.gallery.clone(),
        },
        session_id: session.id.clone(),
        user_id,
        tool,
        mode,
        input,
        cost,
    };
    if mode == Mode::Standard || generation.tool.is_image_tool() {
        state.jobs.enqueue(generation);
        let location = format!("/api/v1/generation/sessions/{}", session.id);
        return Ok((
            StatusCode::ACCEPTED,
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/json".to_owned(),
                ),
                (axum::http::header::LOCATION, location),
            ],
            accepted_body(&session.id),
        )
            .into_response());
    }

    // Transaction 2, after the provider call: the result, or the failure with its refund,
    // and the answer a retry with the same key will get.
    let deadline = Duration::from_secs(state.config.llm.quick_deadline_secs.max(1));
    match state.jobs.run_now(generation, deadline).await {
        Ok(session) => {
            let (status, body) = session.answer();
            Ok(idempotency::answer(status, body))
        }
        Err(e) => Err(ApiError::internal(&e)),
    }
}

/// `image_upscale` takes one of the caller's completed pictures: `404` for any other id,
/// `409` for one not completed — before anything is charged.
async fn upscalable(state: &AppState, user_id: &str, input: &Value) -> Result<(), ApiError> {
    let id = input["image_id"].as_str().unwrap_or_default().to_owned();
    let user_id = user_id.to_owned();
    let row = state
        .db
        .read(move |c| crate::gallery::store::by_id(c, &user_id, &id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found("No such image"))?;
    if row.status != "completed" || row.file.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "image_not_ready",
            "Only a completed picture can be upscaled",
        ));
    }
    Ok(())
}

/// The `202` answer to a queued standard run (CONTRACT §4).
fn accepted_body(session_id: &str) -> String {
    serde_json::json!({
        "session_id": session_id,
        "status": "pending",
        "ws_url": format!("/ws/generation/{session_id}"),
    })
    .to_string()
}
