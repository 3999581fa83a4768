//! A generation session as paid work ([`jobs::Work`]): a quick run is one provider call, a
//! standard run the tool's steps; settling completes the session, or fails it with its
//! refund. [`Recovery`] is its start-up recovery. The path from debit to settlement itself
//! lives in `jobs::work`, shared with every other kind of paid work.

use std::sync::Arc;

use serde_json::Value;

use super::pipeline::{self, Produced};
use super::store::{self, Outcome};
use super::{Session, SessionError};
use crate::billing;
use crate::db::Db;
use crate::idempotency;
use crate::jobs::hub::Event;
use crate::jobs::work::{Failure, Recover, Settled, Work};
use crate::jobs::{Handle, Runner};
use crate::llm::{self, ChatRequest, LlmRouter, Quality};
use crate::tools::catalogue::{self, Mode};
use crate::tools::{Tool, render};

/// What a generation needs besides its session.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub llm: Arc<LlmRouter>,
}

/// An open, paid session and what running it takes.
pub struct Generation {
    pub deps: Deps,
    pub session_id: String,
    pub user_id: String,
    pub tool: Arc<Tool>,
    pub mode: Mode,
    pub input: Value,
}

/// The contract's failure for what the text providers said.
fn failure(failure: pipeline::Failure) -> Failure {
    match failure {
        pipeline::Failure::Unavailable(unavailable) => {
            let refused = !unavailable.attempts.is_empty()
                && unavailable
                    .attempts
                    .iter()
                    .all(|a| matches!(a.error, llm::Error::Refused(_)));
            let mut failure = if refused {
                Failure::new(
                    "content_refused",
                    "The providers refused to process this text",
                )
            } else {
                Failure::new(
                    "providers_unavailable",
                    "No AI provider could answer; the raits were refunded",
                )
            };
            failure.provider = unavailable.attempts.last().map(|a| a.provider.as_str());
            failure
        }
        pipeline::Failure::Provider(provider, _) => Failure {
            provider: Some(provider.as_str()),
            ..Failure::new(
                "provider_error",
                "The AI provider failed while answering; the raits were refunded",
            )
        },
    }
}

impl Generation {
    /// A quick run: the tool's prompt in one call.
    async fn quick(&self) -> Result<Produced, pipeline::Failure> {
        let tool = &self.tool;
        let request = ChatRequest {
            system: tool.system_prompt.clone(),
            user: render::render(&tool.user_template, &self.input, &tool.input_schema, &[]),
            quality: Quality::Quick,
            ..Default::default()
        };
        let (provider, response) = self
            .deps
            .llm
            .chat(Some(tool.preferred_provider()), &request)
            .await
            .map_err(pipeline::Failure::Unavailable)?;
        Ok(Produced {
            text: response.text,
            provider,
            tokens: response.usage.total_tokens,
        })
    }
}

#[async_trait::async_trait]
impl Work for Generation {
    type Output = Produced;
    type Settled = Session;
    type Error = billing::Error;

    fn kind(&self) -> &'static str {
        "generation"
    }

    fn id(&self) -> &str {
        &self.session_id
    }

    fn user_id(&self) -> &str {
        &self.user_id
    }

    async fn start(&self) -> Result<bool, billing::Error> {
        let (user_id, id) = (self.user_id.clone(), self.session_id.clone());
        Ok(self
            .deps
            .db
            .write(move |tx| store::start(tx, &user_id, &id))
            .await?)
    }

    async fn run(&self, watch: &Handle) -> Result<Produced, Failure> {
        let produced = match self.mode {
            Mode::Quick => self.quick().await,
            Mode::Standard => pipeline::run(&self.deps.llm, &self.tool, &self.input, watch).await,
        };
        produced.map_err(failure)
    }

    async fn settle(&self, ended: Result<Produced, Failure>) -> Result<Session, billing::Error> {
        let (user_id, id) = (self.user_id.clone(), self.session_id.clone());
        self.deps
            .db
            .write(move |tx| {
                let session = match ended {
                    Ok(produced) => store::complete(
                        tx,
                        &user_id,
                        &id,
                        &Outcome {
                            result: &Value::String(produced.text),
                            provider: produced.provider.as_str(),
                            tokens: produced.tokens as i64,
                        },
                    )?,
                    Err(failure) => store::fail(
                        tx,
                        &user_id,
                        &id,
                        &SessionError {
                            code: failure.code.into(),
                            message: failure.message,
                        },
                        failure.provider,
                    )?,
                };
                let (status, body) = session.answer();
                idempotency::finish_work(tx, &id, status, &body)?;
                Ok(session)
            })
            .await
    }
}

impl Settled for Session {
    fn final_event(&self) -> Event<'_> {
        match &self.error {
            None => Event::Completed {
                result: &self.result,
            },
            Some(error) => Event::Error {
                code: &error.code,
                message: &error.message,
            },
        }
    }
}

/// Start-up recovery of generation sessions: running ones are failed and refunded; queued
/// ones are queued again if their tool still offers standard mode (else failed and refunded).
pub struct Recovery {
    pub deps: Deps,
    pub tools: catalogue::Current,
}

#[async_trait::async_trait]
impl Recover for Recovery {
    fn kind(&self) -> &'static str {
        "generation"
    }

    async fn recover(&self, runner: &Runner) -> anyhow::Result<(usize, usize)> {
        let (refunded, queued) = self
            .deps
            .db
            .write(|tx| {
                let refunded = store::interrupt_running(
                    tx,
                    &SessionError {
                        code: "interrupted".into(),
                        message: "The server restarted before the generation finished; the raits were refunded".into(),
                    },
                )?;
                Ok::<_, billing::Error>((refunded, store::queued(tx)?))
            })
            .await?;
        let catalogue = self.tools.get();
        let mut requeued = 0;
        let mut dropped = 0;
        for session in queued {
            match catalogue.tool(&session.tool_id) {
                Some(tool)
                    if session.mode == Mode::Standard.as_str()
                        && tool.supports_modes.contains(&Mode::Standard)
                        && !tool.is_image_tool() =>
                {
                    runner.enqueue(Generation {
                        deps: self.deps.clone(),
                        session_id: session.id,
                        user_id: session.user_id,
                        tool: tool.clone(),
                        mode: Mode::Standard,
                        input: session.input_data,
                    });
                    requeued += 1;
                }
                _ => {
                    let (user_id, id) = (session.user_id, session.id);
                    let error = SessionError {
                        code: "interrupted".into(),
                        message: "This tool no longer offers this mode; the raits were refunded"
                            .into(),
                    };
                    self.deps
                        .db
                        .write(move |tx| store::fail(tx, &user_id, &id, &error, None))
                        .await?;
                    dropped += 1;
                }
            }
        }
        Ok((refunded + dropped, requeued))
    }
}

/// The final WebSocket event of a settled session, as a frame.
pub fn final_event(session: &Session) -> axum::extract::ws::Utf8Bytes {
    session.final_event().frame()
}
