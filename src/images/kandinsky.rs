//! Kandinsky through FusionBrain's pipelines API (reference §4): discover the `TEXT2IMAGE`
//! pipeline, run it with a multipart request whose `params` part is JSON, poll its status, and
//! take the image the moment it is `DONE` (the result can be read only once). The legacy
//! `text2image` routes are used only when the pipelines list answers 404.
//! Every call carries `X-Key: Key …` and `X-Secret: Secret …`; neither is ever logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::multipart::{Form, Part as FormPart};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use super::provider::{
    Failure, Part, Provider, check_status, decode_base64, path_id, read_body, read_json,
    status_failure, truncate,
};
use super::{ProviderId, Request};
use crate::config;
use crate::llm;

/// A status answer carries the image as base64: a 1024×1024 picture is a few MB.
const MAX_ANSWER: usize = 32 << 20;
const MAX_IMAGE: usize = 24 << 20;
/// Lists and run answers are small.
const MAX_SMALL: usize = 1 << 20;
/// FusionBrain's limit on the prompt, in characters.
const MAX_PROMPT: usize = 1000;

/// Which API the key speaks, with the id its run requests name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// `pipeline/run` with `pipeline_id`.
    Pipeline(String),
    /// The legacy `text2image/run` with `model_id`.
    Legacy(String),
}

impl Route {
    fn run_path(&self) -> &'static str {
        match self {
            Route::Pipeline(_) => "/key/api/v1/pipeline/run",
            Route::Legacy(_) => "/key/api/v1/text2image/run",
        }
    }

    fn status_path(&self, uuid: &str) -> String {
        match self {
            Route::Pipeline(_) => format!("/key/api/v1/pipeline/status/{uuid}"),
            Route::Legacy(_) => format!("/key/api/v1/text2image/status/{uuid}"),
        }
    }

    fn form(&self, params: String) -> Result<Form, Failure> {
        let params = FormPart::text(params)
            .mime_str("application/json")
            .map_err(|e| Failure::Http(llm::Error::Malformed(e.to_string())))?;
        let form = match self {
            Route::Pipeline(id) => Form::new().text("pipeline_id", id.clone()),
            Route::Legacy(id) => Form::new().text("model_id", id.clone()),
        };
        Ok(form.part("params", params))
    }
}

/// A configured FusionBrain key.
pub(crate) struct Kandinsky {
    /// Carries the key and secret headers on every call.
    http: reqwest::Client,
    base_url: String,
    poll: Duration,
    deadline: Duration,
    /// The route found by the last discovery; dropped when a run answers 404.
    route: Mutex<Option<Route>>,
}

impl Kandinsky {
    /// `None` when the key or the secret is not set. `timeout` bounds each HTTP call.
    pub fn new(cfg: &config::FusionBrain, timeout: Duration) -> anyhow::Result<Option<Kandinsky>> {
        let (Some(key), Some(secret)) = (&cfg.api_key, &cfg.secret_key) else {
            return Ok(None);
        };
        let mut headers = HeaderMap::new();
        for (name, value, env) in [
            (
                "x-key",
                format!("Key {}", key.expose().trim()),
                "FUSIONBRAIN_API_KEY",
            ),
            (
                "x-secret",
                format!("Secret {}", secret.expose().trim()),
                "FUSIONBRAIN_SECRET_KEY",
            ),
        ] {
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                anyhow::anyhow!("{env} contains characters not allowed in an HTTP header")
            })?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static(name), value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()?;
        Ok(Some(Kandinsky {
            http,
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            poll: Duration::from_millis(cfg.poll_ms.max(1)),
            deadline: Duration::from_secs(cfg.timeout_secs.max(1)),
            route: Mutex::new(None),
        }))
    }

    async fn get(&self, path: &str) -> Result<Response, Failure> {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .map_err(|e| Failure::Http(llm::Error::from_transport(&e)))
    }

    /// The cached route, or a fresh discovery when `fresh` or none is cached.
    async fn route(&self, fresh: bool) -> Result<Route, Failure> {
        if !fresh && let Some(route) = self.cached() {
            return Ok(route);
        }
        let route = self.discover().await?;
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(route.clone());
        Ok(route)
    }

    fn cached(&self) -> Option<Route> {
        self.route.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first active `TEXT2IMAGE` pipeline; the legacy model list when the pipelines list
    /// answers 404 (CONTRACT §2).
    async fn discover(&self) -> Result<Route, Failure> {
        let response = self.get("/key/api/v1/pipelines").await?;
        if response.status() == StatusCode::NOT_FOUND {
            tracing::info!(
                image.provider = "kandinsky",
                "the pipelines API answers 404: using the legacy text2image routes"
            );
            let response = check_status(self.get("/key/api/v1/models").await?).await?;
            let list = read_json(response, MAX_SMALL).await?;
            return pick(&list, false).map(Route::Legacy);
        }
        let list = read_json(check_status(response).await?, MAX_SMALL).await?;
        pick(&list, true).map(Route::Pipeline)
    }

    /// Submits the job: its uuid and the suggested first wait, or `None` when the route
    /// answered 404 (a pipeline id gone stale).
    async fn run(
        &self,
        route: &Route,
        request: &Request,
        size: (u32, u32),
    ) -> Result<Option<(String, Option<u64>)>, Failure> {
        let form = route.form(params(route, request, size).to_string())?;
        let response = self
            .http
            .post(format!("{}{}", self.base_url, route.run_path()))
            .multipart(form)
            .send()
            .await
            .map_err(|e| Failure::Http(llm::Error::from_transport(&e)))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let retry = llm::error::retry_after(response.headers());
        let body = read_body(response, MAX_SMALL).await?;
        let text = String::from_utf8_lossy(&body);
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        // The service says it is not taking jobs in the body, whatever the status.
        if let Some(blocked) = blocked(&json) {
            return Err(Failure::Blocked(blocked.to_owned()));
        }
        if !status.is_success() {
            return Err(status_failure(status, retry, &text));
        }
        let uuid = json["uuid"].as_str().ok_or_else(|| {
            Failure::Http(llm::Error::Malformed("the run answer has no uuid".into()))
        })?;
        Ok(Some((
            path_id(uuid)?.to_owned(),
            json["status_time"].as_u64(),
        )))
    }

    /// Polls until the job is done, failed, refused or out of time.
    async fn wait(
        &self,
        route: &Route,
        uuid: &str,
        status_time: Option<u64>,
        progress: &Part<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        // The service suggests when to look first; never more than ten poll intervals.
        let mut wait = status_time
            .map(Duration::from_secs)
            .unwrap_or(self.poll)
            .clamp(self.poll, self.poll * 10);
        progress.set(10);
        loop {
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(Failure::Deadline);
            }
            tokio::time::sleep(wait.min(remaining)).await;
            wait = self.poll;
            let answer = match self.get(&route.status_path(uuid)).await {
                Ok(response) => match check_status(response).await {
                    Ok(response) => read_json(response, MAX_ANSWER).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let answer = match answer {
                Ok(answer) => answer,
                // The job goes on while one poll fails in transit; the deadline still holds.
                Err(e) if e.is_retryable() => {
                    tracing::debug!(image.provider = "kandinsky", error = %e, "status poll failed");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match job_state(&answer)? {
                State::Done(image) => {
                    progress.set(100);
                    return Ok(image);
                }
                State::Queued => progress.set(10),
                State::Processing => progress.waiting(15, started.elapsed(), self.deadline),
            }
        }
    }
}

#[async_trait::async_trait]
impl Provider for Kandinsky {
    fn id(&self) -> ProviderId {
        ProviderId::Kandinsky
    }

    async fn draw(
        &self,
        request: &Request,
        size: (u32, u32),
        progress: &Part<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let route = self.route(false).await?;
        let (route, job) = match self.run(&route, request, size).await? {
            Some(job) => (route, job),
            None => {
                let route = self.route(true).await?;
                let job = self.run(&route, request, size).await?.ok_or_else(|| {
                    Failure::Http(llm::Error::BadRequest {
                        status: 404,
                        message: "the run route answers 404".into(),
                    })
                })?;
                (route, job)
            }
        };
        progress.set(5);
        let (uuid, status_time) = job;
        self.wait(&route, &uuid, status_time, progress).await
    }

    async fn check(&self) -> Result<(), Failure> {
        self.route(true).await.map(drop)
    }
}

/// The `params` part: the legacy API names the negative prompt differently.
fn params(route: &Route, request: &Request, (width, height): (u32, u32)) -> Value {
    let mut params = json!({
        "type": "GENERATE",
        "numImages": 1,
        "width": width,
        "height": height,
        "generateParams": { "query": truncate(&request.prompt, MAX_PROMPT) },
    });
    if let Some(style) = request
        .style
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        params["style"] = json!(style.to_ascii_uppercase());
    }
    if let Some(negative) = request
        .negative_prompt
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let key = match route {
            Route::Pipeline(_) => "negativePromptDecoder",
            Route::Legacy(_) => "negativePromptUnclip",
        };
        params[key] = json!(truncate(negative, MAX_PROMPT));
    }
    params
}

/// The id of the first `TEXT2IMAGE` entry (active, for pipelines), read from `id` or `uuid`.
fn pick(list: &Value, pipelines: bool) -> Result<String, Failure> {
    let entries = list.as_array().ok_or_else(|| {
        Failure::Http(llm::Error::Malformed(
            "the pipeline list is not a list".into(),
        ))
    })?;
    let text2image = |e: &&Value| {
        e["type"]
            .as_str()
            .is_none_or(|t| t.eq_ignore_ascii_case("TEXT2IMAGE"))
    };
    let active = |e: &&Value| !pipelines || e["status"].as_str() == Some("ACTIVE");
    let Some(entry) = entries.iter().filter(text2image).find(active) else {
        return Err(if entries.iter().any(|e| text2image(&e)) {
            Failure::Blocked("no TEXT2IMAGE pipeline is active".into())
        } else {
            Failure::Failed("the key offers no TEXT2IMAGE pipeline".into())
        });
    };
    let id = match (&entry["id"], &entry["uuid"]) {
        (Value::String(id), _) | (_, Value::String(id)) => id.clone(),
        (Value::Number(id), _) | (_, Value::Number(id)) => id.to_string(),
        _ => {
            return Err(Failure::Http(llm::Error::Malformed(
                "the pipeline has no id".into(),
            )));
        }
    };
    Ok(path_id(&id)?.to_owned())
}

/// `pipeline_status` (documented) or `model_status` (the SDK) saying `DISABLED_…`.
fn blocked(answer: &Value) -> Option<&str> {
    ["pipeline_status", "model_status", "status"]
        .iter()
        .filter_map(|key| answer[key].as_str())
        .find(|status| status.starts_with("DISABLED"))
}

enum State {
    Queued,
    Processing,
    Done(Vec<u8>),
}

/// Reads a status answer of either API: `result.files` / `result.censored`, or the legacy
/// top-level `images` / `censored`.
fn job_state(answer: &Value) -> Result<State, Failure> {
    let censored = answer["result"]["censored"]
        .as_bool()
        .or_else(|| answer["censored"].as_bool())
        .unwrap_or(false);
    match answer["status"].as_str().unwrap_or_default() {
        "DONE" if censored => Err(Failure::Refused(
            "Kandinsky's moderation blocked the prompt or the picture".into(),
        )),
        "DONE" => {
            let file = answer["result"]["files"][0]
                .as_str()
                .or_else(|| answer["images"][0].as_str())
                .ok_or_else(|| Failure::Picture("the finished job has no image".into()))?;
            decode_base64(file, MAX_IMAGE).map(State::Done)
        }
        "FAIL" if censored => Err(Failure::Refused(
            "Kandinsky's moderation blocked the prompt or the picture".into(),
        )),
        "FAIL" => Err(Failure::Failed(llm::error::short(
            answer["errorDescription"]
                .as_str()
                .unwrap_or("no reason given"),
        ))),
        "INITIAL" => Ok(State::Queued),
        _ => Ok(State::Processing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_reads_id_then_uuid_and_wants_an_active_text2image() {
        let list = json!([
            {"id": "a", "type": "TEXT2IMAGE", "status": "DISABLED_MANUALLY"},
            {"uuid": "b", "type": "IMAGE2IMAGE", "status": "ACTIVE"},
            {"uuid": "c", "type": "TEXT2IMAGE", "status": "ACTIVE"},
        ]);
        assert_eq!(pick(&list, true).unwrap(), "c");
        let none_active = json!([{"id": "a", "type": "TEXT2IMAGE", "status": "DISABLED_BY_QUEUE"}]);
        assert!(matches!(pick(&none_active, true), Err(Failure::Blocked(_))));
        let legacy = json!([{"id": 4, "name": "Kandinsky", "type": "TEXT2IMAGE"}]);
        assert_eq!(pick(&legacy, false).unwrap(), "4");
        assert!(pick(&json!({"not": "a list"}), true).is_err());
        assert!(
            pick(
                &json!([{"id": "../x", "type": "TEXT2IMAGE", "status": "ACTIVE"}]),
                true
            )
            .is_err()
        );
    }

    #[test]
    fn states_of_both_apis() {
        assert!(matches!(
            job_state(&json!({"status": "INITIAL"})),
            Ok(State::Queued)
        ));
        assert!(matches!(
            job_state(&json!({"status": "PROCESSING"})),
            Ok(State::Processing)
        ));
        let done = json!({"status": "DONE", "result": {"files": ["aGk="], "censored": false}});
        assert!(matches!(job_state(&done), Ok(State::Done(b)) if b == b"hi"));
        let legacy = json!({"status": "DONE", "images": ["aGk="], "censored": false});
        assert!(matches!(job_state(&legacy), Ok(State::Done(b)) if b == b"hi"));
        let censored = json!({"status": "DONE", "result": {"files": [], "censored": true}});
        assert!(matches!(job_state(&censored), Err(Failure::Refused(_))));
        let failed = json!({"status": "FAIL", "errorDescription": "boom"});
        assert_eq!(
            job_state(&failed).err(),
            Some(Failure::Failed("boom".into()))
        );
        let empty = json!({"status": "DONE", "result": {"files": []}});
        assert!(matches!(job_state(&empty), Err(Failure::Picture(_))));
    }

    #[test]
    fn blocked_answers_are_recognised_under_either_key() {
        assert_eq!(
            blocked(&json!({"pipeline_status": "DISABLED_BY_QUEUE"})),
            Some("DISABLED_BY_QUEUE")
        );
        assert_eq!(
            blocked(&json!({"model_status": "DISABLED_MANUALLY"})),
            Some("DISABLED_MANUALLY")
        );
        assert_eq!(blocked(&json!({"uuid": "x", "status": "INITIAL"})), None);
    }
}
