//! Generation sessions: one row per tool execution, from the debit that pays for it to its
//! result or its refund, and the history endpoints.
//!
//! A session that was charged ends `completed`, or `failed` with a `refund` ledger row of the
//! same amount written in the same transaction (ARCHITECTURE.md, "Invariants").

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
