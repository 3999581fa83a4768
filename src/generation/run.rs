//! Running paid generations to their end: a quick run on the caller's request, a standard
//! run as a queued job, and start-up recovery of whatever a crash left behind.
//!
//! Every run was debited when its session was opened; here it ends `completed`, or `failed`
//! with its refund in the same transaction. Both kinds run as runner tasks from before the
//! debit, so a client that hangs up cannot leave a charged session in progress, and shutdown
//! waits for them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;

use super::pipeline::{self, Failure, Produced};
use super::store::{self, Outcome};
use super::{Session, SessionError};
use crate::app::AppState;
use crate::billing;
use crate::jobs::Handle;
use crate::jobs::hub::Event;
use crate::llm::{self, ChatRequest, ProviderId, Quality};
use crate::tools::Tool;
use crate::tools::catalogue::Mode;
use crate::tools::render;

/// How a run ended, before it is written down.
enum Ended {
    Produced(Produced),
    Failed {
        error: SessionError,
        provider: Option<ProviderId>,
    },
}

impl Ended {
    fn from_failure(failure: Failure, session_id: &str) -> Ended {
        match failure {
            Failure::Unavailable(unavailable) => {
                tracing::warn!(session.id = %session_id, error = %unavailable, "generation failed");
                let refused = !unavailable.attempts.is_empty()
                    && unavailable
                        .attempts
                        .iter()
                        .all(|a| matches!(a.error, llm::Error::Refused(_)));
                let (code, message) = if refused {
                    (
                        "content_refused",
                        "The providers refused to process this text",
                    )
                } else {
                    (
                        "providers_unavailable",
                        "No AI provider could answer; the raits were refunded",
                    )
                };
                Ended::failed(
                    code,
                    message,
                    unavailable.attempts.last().map(|a| a.provider),
                )
            }
            Failure::Provider(provider, error) => {
                tracing::warn!(session.id = %session_id, llm.provider = %provider, error = %error,
                    "generation failed mid-answer");
                Ended::failed(
                    "provider_error",
                    "The AI provider failed while answering; the raits were refunded",
                    Some(provider),
                )
            }
        }
    }

    fn failed(code: &str, message: &str, provider: Option<ProviderId>) -> Ended {
        Ended::Failed {
            error: SessionError {
                code: code.into(),
                message: message.into(),
            },
            provider,
        }
    }

    fn interrupted() -> Ended {
        Ended::failed(
            "interrupted",
            "The server stopped before the generation finished; the raits were refunded",
            None,
        )
    }

    fn panicked(session_id: &str) -> Ended {
        tracing::error!(session.id = %session_id, "generation panicked");
        Ended::failed(
            "provider_error",
            "The generation failed; the raits were refunded",
            None,
        )
    }

    fn timeout() -> Ended {
        Ended::failed(
            "timeout",
            "The generation took too long; the raits were refunded",
            None,
        )
    }
}

/// Writes the outcome: the result, or the failure with its refund. `also` runs in the same
/// transaction (the quick path stores its idempotent answer there).
async fn settle<T: Send + 'static>(
    state: &AppState,
    user_id: &str,
    session_id: &str,
    ended: Ended,
    also: impl FnOnce(&rusqlite::Connection, &Session) -> Result<T, billing::Error> + Send + 'static,
) -> Result<(Session, T), billing::Error> {
    let (user_id, session_id) = (user_id.to_owned(), session_id.to_owned());
    state
        .db
        .write(move |tx| {
            let session = match ended {
                Ended::Produced(produced) => store::complete(
                    tx,
                    &user_id,
                    &session_id,
                    &Outcome {
                        result: &Value::String(produced.text),
                        provider: produced.provider.as_str(),
                        tokens: produced.tokens as i64,
                    },
                )?,
                Ended::Failed { error, provider } => store::fail(
                    tx,
                    &user_id,
                    &session_id,
                    &error,
                    provider.map(ProviderId::as_str),
                )?,
            };
            let extra = also(tx, &session)?;
            Ok((session, extra))
        })
        .await
}

/// The final WebSocket event for a settled session.
pub fn final_event(session: &Session) -> axum::extract::ws::Utf8Bytes {
    match &session.error {
        None => Event::Completed {
            result: &session.result,
        }
        .frame(),
        Some(error) => Event::Error {
            code: &error.code,
            message: &error.message,
        }
        .frame(),
    }
}

/// Publishes the final event and forgets the job.
fn announce(state: &AppState, watch: &Handle, session: &Session) {
    match &session.error {
        None => watch.finish(&Event::Completed {
            result: &session.result,
        }),
        Some(error) => watch.finish(&Event::Error {
            code: &error.code,
            message: &error.message,
        }),
    }
    state.jobs.hub().remove(&watch.id);
}

/// Announces a job whose settlement could not be written; start-up recovery will refund it.
fn announce_unsettled(state: &AppState, watch: &Handle, error: &dyn std::fmt::Display) {
    tracing::error!(session.id = %watch.id, error = %error, "cannot settle a generation");
    watch.finish(&Event::Error {
        code: "interrupted",
        message: "The generation could not be saved; the raits will be refunded",
    });
    state.jobs.hub().remove(&watch.id);
}

/// Runs a quick generation for `user_id`'s open (`in_progress`, paid) session under the quick
/// deadline and settles it; `also` runs in the settling transaction and its value is
/// returned with the session. Call it from a runner task (see `tools::routes::execute`), so
/// that neither a client hanging up nor shutdown can stop it between debit and settlement.
pub async fn quick<T: Send + 'static>(
    state: &AppState,
    user_id: &str,
    tool: &Tool,
    session: &Session,
    also: impl FnOnce(&rusqlite::Connection, &Session) -> Result<T, billing::Error> + Send + 'static,
) -> Result<(Session, T), billing::Error> {
    let watch = state.jobs.hub().register(&session.id, user_id);
    watch.mark_started();
    let request = ChatRequest {
        system: tool.system_prompt.clone(),
        user: render::render(
            &tool.user_template,
            &session.input_data,
            &tool.input_schema,
            &[],
        ),
        quality: Quality::Quick,
        ..Default::default()
    };
    let preferred = tool.preferred_provider();
    let deadline = Duration::from_secs(state.config.llm.quick_deadline_secs.max(1));
    // A panic in the provider path must not hold the raits: it is caught and refunded like
    // any failure, and the watchers hear the end.
    let generate = AssertUnwindSafe(state.llm.chat(Some(preferred), &request)).catch_unwind();
    let ended = tokio::select! {
        generated = tokio::time::timeout(deadline, generate) => {
            match generated {
                Ok(Ok(Ok((provider, response)))) => Ended::Produced(Produced {
                    text: response.text,
                    provider,
                    tokens: response.usage.total_tokens,
                }),
                Ok(Ok(Err(unavailable))) => {
                    Ended::from_failure(Failure::Unavailable(unavailable), &session.id)
                }
                Ok(Err(_)) => Ended::panicked(&session.id),
                Err(_) => Ended::timeout(),
            }
        }
        () = state.jobs.interrupted() => Ended::interrupted(),
    };
    let settled = settle(state, user_id, &session.id, ended, also).await;
    match &settled {
        Ok((session, _)) => announce(state, &watch, session),
        Err(e) => announce_unsettled(state, &watch, e),
    }
    settled
}

/// A standard run waiting for its turn.
pub struct Job {
    pub session_id: String,
    pub user_id: String,
    pub tool: Arc<Tool>,
    pub input: Value,
}

/// Queues a paid `pending` session: it becomes watchable now and runs when a slot is free.
pub fn enqueue(state: &AppState, job: Job) {
    let watch = state.jobs.hub().register(&job.session_id, &job.user_id);
    let task_state = state.clone();
    state.jobs.spawn(async move {
        let state = task_state;
        let Some(_slot) = state.jobs.slot().await else {
            // Shutting down before it started: it stays pending and runs after the next start.
            state.jobs.hub().remove(&job.session_id);
            return;
        };
        let (user_id, session_id) = (job.user_id.clone(), job.session_id.clone());
        let started = state
            .db
            .write(move |tx| store::start(tx, &user_id, &session_id))
            .await;
        match started {
            Ok(true) => watch.mark_started(),
            Ok(false) => {
                // Settled meanwhile (it cannot be: only this task runs it); nothing to do.
                state.jobs.hub().remove(&job.session_id);
                return;
            }
            Err(e) => return announce_unsettled(&state, &watch, &e),
        }
        let work = AssertUnwindSafe(pipeline::run(&state.llm, &job.tool, &job.input, &watch))
            .catch_unwind();
        let ended = tokio::select! {
            outcome = work => match outcome {
                Ok(Ok(produced)) => Ended::Produced(produced),
                Ok(Err(failure)) => Ended::from_failure(failure, &job.session_id),
                Err(_) => Ended::panicked(&job.session_id),
            },
            () = state.jobs.interrupted() => Ended::interrupted(),
        };
        match settle(&state, &job.user_id, &job.session_id, ended, |_, _| Ok(())).await {
            Ok((session, ())) => announce(&state, &watch, &session),
            Err(e) => announce_unsettled(&state, &watch, &e),
        }
    });
}

/// At start-up: sessions a crash or kill left running are failed and refunded (their provider
/// calls are lost); queued standard sessions, which never started, are queued again.
pub async fn recover(state: &AppState) -> anyhow::Result<()> {
    let (interrupted, queued) = state
        .db
        .write(|tx| {
            let interrupted = store::interrupt_running(
                tx,
                &SessionError {
                    code: "interrupted".into(),
                    message: "The server restarted before the generation finished; the raits were refunded".into(),
                },
            )?;
            let queued = store::queued(tx)?;
            Ok::<_, billing::Error>((interrupted, queued))
        })
        .await?;
    let catalogue = state.tools.get();
    let mut requeued = 0;
    for session in queued {
        match catalogue.tool(&session.tool_id) {
            Some(tool)
                if session.mode == Mode::Standard.as_str()
                    && tool.supports_modes.contains(&Mode::Standard)
                    && !tool.is_image_tool() =>
            {
                enqueue(
                    state,
                    Job {
                        session_id: session.id,
                        user_id: session.user_id,
                        tool: tool.clone(),
                        input: session.input_data,
                    },
                );
                requeued += 1;
            }
            _ => {
                let (user_id, id) = (session.user_id, session.id);
                state
                    .db
                    .write(move |tx| {
                        store::fail(
                            tx,
                            &user_id,
                            &id,
                            &SessionError {
                                code: "interrupted".into(),
                                message:
                                    "This tool no longer offers this mode; the raits were refunded"
                                        .into(),
                            },
                            None,
                        )
                    })
                    .await?;
            }
        }
    }
    if interrupted > 0 || requeued > 0 {
        tracing::warn!(
            interrupted,
            requeued,
            "recovered generations left by the last run"
        );
    }
    Ok(())
}
