//! A generation session as paid work ([`jobs::Work`]): a quick run is one provider call, a
//! standard run the tool's steps; settling completes the session, or fails it with its
//! refund. [`Recovery`] is its start-up recovery. The path from debit to settlement itself
//! lives in `jobs::work`, shared with every other kind of paid work.

use std::sync::Arc;

use serde_json::Value;

use super::document;
use super::pipeline::{self, Produced};
use super::store::{self, Outcome};
use super::{Session, SessionError};
use crate::billing;
use crate::db::Db;
use crate::gallery::{self, work::Stored};
use crate::idempotency;
use crate::images;
use crate::jobs::hub::Event;
use crate::jobs::work::{Failure, Recover, Settled, Work};
use crate::jobs::{Handle, Runner};
use crate::llm::{self, LlmRouter, Quality};
use crate::tools::catalogue::{self, Mode};
use crate::tools::{Tool, render};

/// What a generation needs besides its session.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub llm: Arc<LlmRouter>,
    /// Pictures, for the image tools.
    pub gallery: gallery::work::Deps,
}

/// What a run produced, before it is written down.
pub enum Output {
    Text(Produced),
    /// A tool with `output_format: json`: the model's object, checked against its schema.
    Json {
        result: Value,
        provider: llm::ProviderId,
        tokens: u64,
    },
    /// A new picture (`image_generate`; with its text, `greeting_card`).
    Picture {
        stored: Stored,
        request: images::Request,
        text: Option<Produced>,
    },
    /// An upscale of one of the user's pictures (`image_upscale`).
    Upscaled {
        image_id: String,
        provider: Option<String>,
        stored: Stored,
    },
}

/// An open, paid session and what running it takes.
pub struct Generation {
    pub deps: Deps,
    pub session_id: String,
    pub user_id: String,
    pub tool: Arc<Tool>,
    pub mode: Mode,
    pub input: Value,
    /// What the session was charged (its quote when it was opened).
    pub cost: i64,
}

/// The contract's failure for what the text providers said (shared with WordPress articles).
pub fn failure(failure: pipeline::Failure) -> Failure {
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
    /// `image_generate`: the description becomes a drawing prompt (one text call; the
    /// description itself when no text provider answers), then the picture is drawn.
    async fn image_generate(&self, watch: &Handle) -> Result<Output, Failure> {
        let request = picture_request(&self.input);
        watch.processing(0);
        let prompt = match self.quick().await {
            Ok(produced) if !produced.text.trim().is_empty() => produced.text.trim().to_owned(),
            Ok(_) | Err(_) => request.prompt.clone(),
        };
        let drawing = images::Request {
            prompt,
            ..request.clone()
        };
        let id = uuid::Uuid::now_v7().to_string();
        let stored =
            gallery::work::draw(&self.deps.gallery, &self.user_id, &id, &drawing, watch).await?;
        Ok(Output::Picture {
            stored,
            request,
            text: None,
        })
    }

    /// `image_upscale`: one of the user's completed pictures, 2× or 4×.
    async fn image_upscale(&self, watch: &Handle) -> Result<Output, Failure> {
        let image_id = self.input["image_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let scale = self.input["scale"].as_u64().unwrap_or(2) as u32;
        let (user_id, id) = (self.user_id.clone(), image_id.clone());
        let row = self
            .deps
            .db
            .read(move |c| gallery::store::by_id(c, &user_id, &id))
            .await
            .ok()
            .flatten()
            .filter(|r| r.status == "completed");
        let Some((source, provider)) = row.and_then(|r| r.file.map(|f| (f, r.provider))) else {
            return Err(Failure::new(
                "providers_unavailable",
                "The picture to upscale is not there; the raits were refunded",
            ));
        };
        watch.processing(0);
        let stored =
            gallery::work::upscale(&self.deps.gallery, &self.user_id, &source, scale, watch)
                .await?;
        Ok(Output::Upscaled {
            image_id,
            provider,
            stored,
        })
    }

    /// `greeting_card`: the card's text, a drawing prompt from it, then the picture (web).
    async fn greeting_card(&self, watch: &Handle) -> Result<Output, Failure> {
        let steps = pipeline::run_steps(&self.deps.llm, &self.tool, &self.input, watch)
            .await
            .map_err(failure)?;
        let mut outputs = steps.outputs.into_iter();
        let text = outputs.next().unwrap_or_default();
        let prompt = outputs.next().unwrap_or_else(|| text.clone());
        let request = images::Request {
            prompt: prompt.trim().chars().take(1000).collect(),
            negative_prompt: None,
            style: None,
            format: images::Format::Web,
        };
        let number = self.tool.steps.len() + 1;
        watch.step_started(number, "Изображение");
        let id = uuid::Uuid::now_v7().to_string();
        let stored =
            gallery::work::draw(&self.deps.gallery, &self.user_id, &id, &request, watch).await?;
        watch.step_completed(number);
        Ok(Output::Picture {
            stored,
            request,
            text: Some(Produced {
                text,
                body_start: 0,
                provider: steps.provider,
                tokens: steps.tokens,
            }),
        })
    }

    /// A quick run: the tool's prompt in one call.
    async fn quick(&self) -> Result<Produced, pipeline::Failure> {
        let tool = &self.tool;
        let request = tool.request(
            tool.system_prompt.clone(),
            render::render(&tool.user_template, &self.input, &tool.input_schema, &[]),
            Quality::Quick,
        );
        let (provider, response) = self
            .deps
            .llm
            .chat(Some(tool.preferred_provider()), &request)
            .await
            .map_err(pipeline::Failure::Unavailable)?;
        let tokens = response
            .usage
            .or_estimate(&request, &response.text, 0)
            .total_tokens;
        Ok(Produced {
            text: response.text,
            body_start: 0,
            provider,
            tokens,
        })
    }

    /// A text tool's run, quick or standard, with what the server adds or checks.
    async fn text(&self, watch: &Handle) -> Result<Output, pipeline::Failure> {
        let mut produced = match self.mode {
            Mode::Quick => self.quick().await?,
            Mode::Standard => pipeline::run(&self.deps.llm, &self.tool, &self.input, watch).await?,
        };
        if self.tool.output_format == catalogue::OutputFormat::Json {
            return match structured(&produced.text).filter(|v| self.tool.result_fits(v)) {
                Some(result) => Ok(Output::Json {
                    result,
                    provider: produced.provider,
                    tokens: produced.tokens,
                }),
                None => Err(pipeline::Failure::Provider(
                    produced.provider,
                    llm::Error::Malformed("the answer is not the JSON the tool asks for".into()),
                )),
            };
        }
        if self.mode == Mode::Quick {
            (produced.text, produced.body_start) =
                document::assemble(&self.tool, &self.input, &[], &produced.text);
        }
        Ok(Output::Text(produced))
    }
}

#[async_trait::async_trait]
impl Work for Generation {
    type Output = Output;
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

    async fn run(&self, watch: &Handle) -> Result<Output, Failure> {
        match self.tool.id.as_str() {
            "image_generate" => self.image_generate(watch).await,
            "image_upscale" => self.image_upscale(watch).await,
            "greeting_card" => self.greeting_card(watch).await,
            _ => self.text(watch).await.map_err(failure),
        }
    }

    async fn settle(&self, ended: Result<Output, Failure>) -> Result<Session, billing::Error> {
        let (user_id, id) = (self.user_id.clone(), self.session_id.clone());
        let links = self.deps.gallery.links.clone();
        let cost = self.cost;
        let (session, unused) = self
            .deps
            .db
            .write(move |tx| {
                let mut unused = None;
                let session = match ended {
                    Ok(output) => {
                        let (result, provider, tokens, replaced) =
                            record_output(tx, &user_id, &id, cost, output, &links)?;
                        unused = replaced;
                        store::complete(
                            tx,
                            &user_id,
                            &id,
                            &Outcome {
                                result: &result,
                                provider: &provider,
                                tokens,
                            },
                        )?
                    }
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
                Ok::<_, billing::Error>((session, unused))
            })
            .await?;
        gallery::work::remove_replaced(&self.deps.gallery.files, unused).await;
        Ok(session)
    }
}

/// Writes what an output made (a picture's row, an upscale) and returns the session's
/// result, provider and tokens, and a file nothing points at any more (an upscale replaced).
fn record_output(
    tx: &rusqlite::Connection,
    user_id: &str,
    session_id: &str,
    cost: i64,
    output: Output,
    links: &gallery::Links,
) -> Result<(Value, String, i64, Option<String>), billing::Error> {
    Ok(match output {
        Output::Text(produced) => (
            Value::String(produced.text),
            produced.provider.as_str().to_owned(),
            produced.tokens as i64,
            None,
        ),
        Output::Json {
            result,
            provider,
            tokens,
        } => (result, provider.as_str().to_owned(), tokens as i64, None),
        Output::Picture {
            stored,
            request,
            text,
        } => {
            let row = gallery::store::insert_completed(
                tx,
                &gallery::store::NewImage {
                    user_id,
                    prompt: &request.prompt,
                    negative_prompt: request.negative_prompt.as_deref(),
                    style: request.style.as_deref(),
                    format: request.format.as_str(),
                    width: stored.width,
                    height: stored.height,
                    // A card's price is for its text and its picture together.
                    cost: if text.is_some() { 0 } else { cost },
                },
                session_id,
                stored.provider,
                (&stored.id, &stored.relative),
            )?;
            let url = links.url(&row.id, gallery::Variant::Original);
            match text {
                Some(text) => (
                    serde_json::json!({"text": text.text, "image_url": url, "image_id": row.id}),
                    text.provider.as_str().to_owned(),
                    text.tokens as i64,
                    None,
                ),
                None => (
                    serde_json::json!({"image_id": row.id, "url": url}),
                    stored.provider.to_owned(),
                    0,
                    None,
                ),
            }
        }
        Output::Upscaled {
            image_id,
            provider,
            stored,
        } => {
            let unused = gallery::store::set_upscaled(
                tx,
                user_id,
                &image_id,
                &stored.relative,
                (stored.width, stored.height),
            )?;
            let url = links.url(&image_id, gallery::Variant::Upscaled);
            (
                serde_json::json!({"image_id": image_id, "url": url}),
                provider.unwrap_or_else(|| "upscale".into()),
                0,
                unused,
            )
        }
    })
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
                        cost: session.cost_raits,
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

/// The picture an `image_generate` form asks for (the form was checked against its schema).
fn picture_request(input: &Value) -> images::Request {
    let text = |key: &str| {
        input[key]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    images::Request {
        prompt: text("prompt").unwrap_or_default(),
        negative_prompt: text("negative_prompt"),
        style: text("style"),
        format: text("format")
            .and_then(|f| images::Format::parse(&f))
            .unwrap_or(images::Format::Web),
    }
}

/// The JSON object in a model's answer: the whole answer, or the first ```json block of it.
fn structured(answer: &str) -> Option<Value> {
    let trimmed = answer.trim();
    let inner = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(trimmed);
    let start = inner.find('{')?;
    let end = inner.rfind('}')?;
    serde_json::from_str::<Value>(inner.get(start..=end)?)
        .ok()
        .filter(Value::is_object)
}
