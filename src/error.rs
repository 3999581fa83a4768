//! The JSON error body every endpoint answers with (CONTRACT §3).
//!
//! `{"detail": "...", "code": "snake_case", ...extra}`; validation failures carry a FastAPI-style
//! list in `detail`. Domain errors convert into [`ApiError`]; a 500 is logged here, once, and
//! says nothing about internals to the client.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// One entry of a 422 `detail` list, shaped as FastAPI's.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path to the offending value, e.g. `["body", "email"]` (an array index is a number).
    #[schema(schema_with = loc_schema)]
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// An error at `body.<field>`.
    pub fn body(field: &str, msg: impl Into<String>, kind: &str) -> Self {
        FieldError {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind: kind.into(),
        }
    }

    /// An error at `query.<field>`.
    pub fn query(field: &str, msg: impl Into<String>, kind: &str) -> Self {
        FieldError {
            loc: vec!["query".into(), field.into()],
            msg: msg.into(),
            kind: kind.into(),
        }
    }
}

/// The error body as documented in the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable text, or the list of validation failures for `422`.
    #[schema(schema_with = detail_schema)]
    pub detail: Value,
    /// Stable machine code, e.g. `insufficient_balance`.
    pub code: String,
}

fn loc_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    ArrayBuilder::new()
        .items(
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(ObjectBuilder::new().schema_type(Type::Integer)),
        )
        .build()
}

fn detail_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::PartialSchema;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ArrayBuilder::new().items(FieldError::schema()))
        .description(Some(
            "Human-readable text, or the list of validation failures for `422`.",
        ))
        .build()
        .into()
}

/// An HTTP error response in the contract's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: Value,
    extra: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: Value::String(detail.into()),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    /// `422 validation_error` with every failure listed.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = serde_json::to_value(errors).unwrap_or(Value::Null);
        ApiError {
            detail,
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", "")
        }
    }

    /// The one 500 body; the cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// Adds a top-level field beside `detail` and `code` (e.g. `required`, `balance`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The JSON body this error is answered with (stored for an `Idempotency-Key` replay).
    pub fn body_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("detail".into(), self.detail.clone());
        body.insert("code".into(), json!(self.code));
        body.extend(self.extra.clone());
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body_json();
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Answers unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

/// Answers known routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method Not Allowed",
    )
}

/// The contract's JSON shape for the plain-text rejections of axum's own extractors (a
/// malformed or repeated query parameter, a plain GET on a WebSocket path): every error a
/// client sees is `{"detail","code"}`, whichever layer produced it.
pub async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !is_text || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let error = match status.as_u16() {
        422 => ApiError::validation(vec![FieldError {
            loc: vec!["query".into()],
            msg: text,
            kind: "value_error".into(),
        }]),
        404 => ApiError::not_found(text),
        405 => ApiError::new(status, "method_not_allowed", text),
        413 => ApiError::new(status, "payload_too_large", text),
        415 => ApiError::new(status, "unsupported_media_type", text),
        426 => ApiError::new(status, "upgrade_required", text),
        500..=599 => ApiError::internal(&text),
        _ => ApiError::new(status, "bad_request", text),
    };
    let mut json = error.into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.drain().filter_map(|(n, v)| n.map(|n| (n, v))) {
        json.headers_mut().entry(name).or_insert(value);
    }
    json
}
