//! Generation sessions: one row per tool execution, from the debit that pays for it to its
//! result or its refund, and the history endpoints.
//!
//! A session that was charged ends `completed`, or `failed` with a `refund` ledger row of the
//! same amount written in the same transaction (ARCHITECTURE.md, "Invariants").

pub mod document;
pub mod export;
pub mod pipeline;
pub mod routes;
pub mod run;
pub mod store;

use serde::Serialize;
use serde_json::Value;

/// A session as the API shows it (CONTRACT §4 "Tools and generation").
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: String,
    pub tool_id: String,
    /// `quick` or `standard`.
    pub mode: String,
    /// `pending`, `in_progress`, `completed` or `failed`.
    pub status: String,
    #[schema(value_type = Object)]
    pub input_data: Value,
    /// A string for text tools; an object for image tools.
    #[schema(value_type = Object)]
    pub result: Value,
    pub provider_used: Option<String>,
    pub tokens_used: i64,
    pub cost_raits: i64,
    pub created_at: String,
    pub completed_at: Option<String>,
    pub error: Option<SessionError>,
}

/// Why a session failed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionError {
    /// `providers_unavailable`, `provider_error`, `content_refused`, `timeout` or `interrupted`.
    pub code: String,
    pub message: String,
}

impl Session {
    /// The answer a settled quick run gives (and replays for its `Idempotency-Key`): `200`
    /// with the session, or `503` with [`failure_body`](Session::failure_body).
    pub fn answer(&self) -> (u16, String) {
        if self.error.is_none() {
            (200, serde_json::to_string(self).unwrap_or_default())
        } else {
            (503, self.failure_body())
        }
    }

    /// The `503` body a failed quick run answers with: the contract's error shape plus the
    /// session, so the client can show what happened and that the raits came back. Stored
    /// for its `Idempotency-Key` too, also when start-up recovery fails the run.
    pub fn failure_body(&self) -> String {
        let (code, message) = match &self.error {
            Some(error) => (error.code.as_str(), error.message.as_str()),
            None => ("providers_unavailable", ""),
        };
        let code = match code {
            "timeout" | "interrupted" => code,
            _ => "providers_unavailable",
        };
        serde_json::json!({
            "detail": message,
            "code": code,
            "session_id": self.id,
            "session": self,
        })
        .to_string()
    }
}
