//! `/tools/*`: tabs, a tool's form, and execution (CONTRACT §4 "Tools and generation").
//!
//! A quick execution is at most two write transactions: the debit with the new session (and the
//! idempotency claim), then the result or the refund. The provider is called between them,
//! holding no connection.

use std::collections::BTreeMap;
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
use super::render;
use crate::app::AppState;
use crate::auth::extract::CurrentUser;
use crate::billing;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::generation::store::{self as sessions, NewSession, Outcome};
use crate::generation::{Session, SessionError};
use crate::idempotency::{self, Claim};
use crate::llm::{self, ChatRequest, Quality};
use crate::request::AppJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tabs))
        .routes(routes!(get_tab))
        .routes(routes!(get_tab_tools))
        .routes(routes!(get_schema))
        .routes(routes!(execute))
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
    output_format: OutputFormat,
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
            output_format: t.output_format,
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

fn find_tool(state: &AppState, id: &str) -> Result<std::sync::Arc<Tool>, ApiError> {
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
    mode: Option<String>,
}

/// Runs a tool. Quick mode answers the finished session.
#[utoipa::path(post, path = "/tools/{id}/execute", tag = "tools", security(("bearer" = [])),
    params(("id" = String, Path, description = "tool id"),
           ("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "Quick run finished", body = Session),
        (status = 400, description = "`mode_not_supported`", body = ErrorBody),
        (status = 402, description = "`insufficient_balance` with `required` and `balance`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 501, description = "standard mode and image tools: not yet built", body = ErrorBody),
        (status = 503, description = "`providers_unavailable`, refunded", body = ErrorBody),
    ))]
async fn execute(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppJson(body): AppJson<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let tool = find_tool(&state, &id)?;
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
    if tool.is_image_tool() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "Image tools are not available yet in this version",
        ));
    }
    if mode == Mode::Standard {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "Standard (multi-step) mode is not available yet in this version",
        ));
    }
    let cost = tool.cost(mode).ok_or_else(|| {
        ApiError::internal(&format!(
            "tool {} has no price for {}",
            tool.id,
            mode.as_str()
        ))
    })?;
    let key = idempotency_key(&headers)?;
    let user_id = current.user.id.clone();

    // Transaction 1: the idempotency claim, the session and its debit.
    let opened = {
        let (user_id, tool_id, input) = (user_id.clone(), tool.id.clone(), body.input.clone());
        let description = format!("Генерация: {}", tool.name);
        let key = key.clone();
        state
            .db
            .write(move |tx| {
                if let Some(key) = &key {
                    let hash =
                        idempotency::request_hash(&[&tool_id, mode.as_str(), &input.to_string()]);
                    match idempotency::claim(tx, &user_id, key, &hash)? {
                        Claim::Fresh => {}
                        other => return Ok(Opened::Claimed(other)),
                    }
                }
                let session = sessions::open(
                    tx,
                    &NewSession {
                        user_id: &user_id,
                        tool_id: &tool_id,
                        mode: mode.as_str(),
                        status: "in_progress",
                        input: &input,
                        cost,
                        description: &description,
                    },
                )?;
                Ok::<_, billing::Error>(Opened::Session(Box::new(session)))
            })
            .await
    };
    let session = match opened {
        Ok(Opened::Session(session)) => *session,
        Ok(Opened::Claimed(Claim::Replay { status, body })) => return Ok(replay(status, body)),
        Ok(Opened::Claimed(Claim::InFlight)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "A request with this Idempotency-Key is still running",
            ));
        }
        Ok(Opened::Claimed(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "This Idempotency-Key was used for a different request",
            ));
        }
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

    // The provider call, bounded by the quick deadline.
    let request = ChatRequest {
        system: tool.system_prompt.clone(),
        user: render::render(&tool.user_template, &body.input, &tool.input_schema, &[]),
        quality: Quality::Quick,
        ..Default::default()
    };
    let preferred = tool
        .recommended_provider
        .unwrap_or_else(|| llm::router::preferred_for(tool.tab, &tool.id));
    let deadline = Duration::from_secs(state.config.llm.quick_deadline_secs.max(1));
    // The rest runs as its own task: a client that hangs up must not stop the session from
    // being settled (its raits kept for a result, or refunded).
    let task_state = state.clone();
    let session_id = session.id.clone();
    let settle = async move {
        let state = task_state;
        let generated =
            tokio::time::timeout(deadline, state.llm.chat(Some(preferred), &request)).await;

        // Transaction 2: the result, or the failure with its refund; and the answer to replay.
        state
            .db
            .write(move |tx| {
                let (session, status) = match generated {
                    Ok(Ok((provider, response))) => {
                        let result = Value::String(response.text);
                        let outcome = Outcome {
                            result: &result,
                            provider: provider.as_str(),
                            tokens: response.usage.total_tokens as i64,
                        };
                        (sessions::complete(tx, &user_id, &session_id, &outcome)?, StatusCode::OK)
                    }
                    Ok(Err(unavailable)) => {
                        let refused = !unavailable.attempts.is_empty()
                            && unavailable.attempts.iter().all(|a| matches!(a.error, llm::Error::Refused(_)));
                        let error = SessionError {
                            code: if refused { "content_refused" } else { "providers_unavailable" }.into(),
                            message: if refused {
                                "The providers refused to process this text".into()
                            } else {
                                "No AI provider could answer; the raits were refunded".into()
                            },
                        };
                        tracing::warn!(session.id = %session_id, error = %unavailable, "generation failed");
                        let provider = unavailable.attempts.last().map(|a| a.provider.as_str());
                        (
                            sessions::fail(tx, &user_id, &session_id, &error, provider)?,
                            StatusCode::SERVICE_UNAVAILABLE,
                        )
                    }
                    Err(_) => {
                        let error = SessionError {
                            code: "timeout".into(),
                            message: "The generation took too long; the raits were refunded".into(),
                        };
                        (
                            sessions::fail(tx, &user_id, &session_id, &error, None)?,
                            StatusCode::SERVICE_UNAVAILABLE,
                        )
                    }
                };
                let response_body = match status {
                    StatusCode::OK => serde_json::to_string(&session).unwrap_or_default(),
                    _ => failure_body(&session),
                };
                if let Some(key) = &key {
                    idempotency::finish(tx, &user_id, key, status.as_u16(), &response_body)?;
                }
                Ok::<_, billing::Error>((status, response_body))
            })
            .await
    };
    match tokio::spawn(settle).await {
        Ok(Ok((status, body))) => Ok(replay(status.as_u16(), body)),
        Ok(Err(e)) => Err(ApiError::internal(&e)),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

enum Opened {
    Session(Box<Session>),
    Claimed(Claim),
}

/// The 503 body of a failed run: the contract's error shape plus the session, so the client
/// can show what happened and that the raits came back.
fn failure_body(session: &Session) -> String {
    let error = session.error.clone().unwrap_or(SessionError {
        code: "providers_unavailable".into(),
        message: String::new(),
    });
    let code = if error.code == "timeout" {
        "timeout"
    } else {
        "providers_unavailable"
    };
    serde_json::json!({
        "detail": error.message,
        "code": code,
        "session_id": session.id,
        "session": session,
    })
    .to_string()
}

/// A stored (or fresh) JSON answer.
fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(key) if !key.is_empty() && key.len() <= idempotency::KEY_MAX => Ok(Some(key.to_owned())),
        _ => Err(ApiError::validation(vec![FieldError {
            loc: vec!["header".into(), "Idempotency-Key".into()],
            msg: format!(
                "must be 1–{} visible ASCII characters",
                idempotency::KEY_MAX
            ),
            kind: "value_error".into(),
        }])),
    }
}
