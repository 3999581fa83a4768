//! Yandex ART (reference §4.8), the image fallback: `imageGenerationAsync` starts an operation,
//! `/operations/{id}` is polled until it is done, and the answer is one base64 JPEG whose size
//! follows the aspect ratio asked for (the caller crops and resizes it to the exact size).
//! It signs in with the YandexGPT credentials, through `llm::yandexgpt::auth_headers`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::provider::{
    Failure, Part, Provider, check_status, decode_base64, path_id, read_json, truncate,
};
use super::{ProviderId, Request};
use crate::config::Config;
use crate::llm;

/// The operation answer carries the image as base64 JPEG.
const MAX_ANSWER: usize = 32 << 20;
const MAX_IMAGE: usize = 24 << 20;
/// Yandex ART's limit on the prompt, in characters.
const MAX_PROMPT: usize = 500;

/// Yandex ART in the folder of the YandexGPT credentials.
pub(crate) struct YandexArt {
    /// Carries the credential headers on every call.
    http: reqwest::Client,
    base_url: String,
    /// `art://<folder>/<model>`.
    model_uri: String,
    poll: Duration,
    deadline: Duration,
}

impl YandexArt {
    /// `None` unless the YandexGPT credential and folder are set. It polls as often and as
    /// long as Kandinsky (`FUSIONBRAIN_POLL_MS`, `FUSIONBRAIN_TIMEOUT_SECS`): the contract has
    /// one pair of image polling settings.
    pub fn new(config: &Config, timeout: Duration) -> anyhow::Result<Option<YandexArt>> {
        let cfg = &config.yandexgpt;
        if (cfg.api_key.is_none() && cfg.iam_token.is_none()) || cfg.folder_id.is_none() {
            return Ok(None);
        }
        let (headers, folder_id) =
            llm::yandexgpt::auth_headers(cfg).map_err(|e| anyhow::anyhow!("Yandex ART: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()?;
        let model = config.yandexart.model.trim();
        let model_uri = if model.starts_with("art://") {
            model.to_owned()
        } else {
            format!("art://{folder_id}/{model}")
        };
        Ok(Some(YandexArt {
            http,
            base_url: config.yandexart.base_url.trim_end_matches('/').to_owned(),
            model_uri,
            poll: Duration::from_millis(config.fusionbrain.poll_ms.max(1)),
            deadline: Duration::from_secs(config.fusionbrain.timeout_secs.max(1)),
        }))
    }

    fn body(&self, request: &Request, (width, height): (u32, u32)) -> Value {
        let (w, h) = ratio(width, height);
        // No style parameter and no negative prompt: a style is said in words.
        let text = match request
            .style
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("default"))
        {
            Some(style) => format!("{}. Стиль: {style}", request.prompt.trim()),
            None => request.prompt.trim().to_owned(),
        };
        json!({
            "modelUri": self.model_uri,
            "generationOptions": {
                "mimeType": "image/jpeg",
                // int64 in the protobuf JSON mapping, so a string.
                "seed": (rand::random::<u64>() >> 1).to_string(),
                "aspectRatio": { "widthRatio": w.to_string(), "heightRatio": h.to_string() },
            },
            "messages": [{ "text": truncate(&text, MAX_PROMPT), "weight": "1" }],
        })
    }

    async fn operation(&self, id: &str) -> Result<Value, Failure> {
        let response = self
            .http
            .get(format!("{}/operations/{id}", self.base_url))
            .send()
            .await
            .map_err(|e| Failure::Http(llm::Error::from_transport(&e)))?;
        read_json(check_status(response).await?, MAX_ANSWER).await
    }
}

#[async_trait::async_trait]
impl Provider for YandexArt {
    fn id(&self) -> ProviderId {
        ProviderId::YandexArt
    }

    async fn draw(
        &self,
        request: &Request,
        size: (u32, u32),
        progress: &Part<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let response = self
            .http
            .post(format!(
                "{}/foundationModels/v1/imageGenerationAsync",
                self.base_url
            ))
            .json(&self.body(request, size))
            .send()
            .await
            .map_err(|e| Failure::Http(llm::Error::from_transport(&e)))?;
        let operation =
            read_json(check_status(response).await.map_err(moderated)?, MAX_ANSWER).await?;
        progress.set(10);
        let started = Instant::now();
        let id = path_id(operation["id"].as_str().unwrap_or_default())?.to_owned();
        let mut operation = operation;
        loop {
            if operation["done"].as_bool() == Some(true) {
                let image = finished(&operation)?;
                progress.set(100);
                return Ok(image);
            }
            let remaining = self.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(Failure::Deadline);
            }
            tokio::time::sleep(self.poll.min(remaining)).await;
            operation = match self.operation(&id).await {
                Ok(operation) => operation,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(image.provider = "yandexart", error = %e, "operation poll failed");
                    continue;
                }
                Err(e) => return Err(moderated(e)),
            };
            progress.waiting(15, started.elapsed(), self.deadline);
        }
    }

    /// Yandex ART has no listing or free call that needs its role; reading an operation that
    /// does not exist proves the credential is accepted (401 otherwise) without drawing
    /// anything. Whether the account may draw (`ai.imageGeneration.user`) only a paid
    /// generation would show.
    async fn check(&self) -> Result<(), Failure> {
        let response = self
            .http
            .get(format!("{}/operations/easy-writer-check", self.base_url))
            .send()
            .await
            .map_err(|e| Failure::Http(llm::Error::from_transport(&e)))?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(()),
            s if s.is_success() => Ok(()),
            _ => check_status(response).await.map(drop),
        }
    }
}

/// The picture of a done operation, or its error.
fn finished(operation: &Value) -> Result<Vec<u8>, Failure> {
    if let Some(error) = operation.get("error").filter(|e| e.is_object()) {
        let message = error["message"].as_str().unwrap_or("no reason given");
        let failure = Failure::Failed(llm::error::short(message));
        return Err(if refusal(message) {
            Failure::Refused(llm::error::short(message))
        } else {
            failure
        });
    }
    let image = operation["response"]["image"]
        .as_str()
        .ok_or_else(|| Failure::Picture("the finished operation has no image".into()))?;
    decode_base64(image, MAX_IMAGE)
}

/// Yandex refuses prompts it finds unacceptable with a 400 (or an operation error) whose
/// message speaks of its terms of use; that is moderation, not a bad request.
fn moderated(failure: Failure) -> Failure {
    match failure {
        Failure::Http(llm::Error::BadRequest { message, .. }) if refusal(&message) => {
            Failure::Refused(message)
        }
        other => other,
    }
}

fn refusal(message: &str) -> bool {
    let message = message.to_lowercase();
    ["terms of use", "violate", "ethic", "moderation", "unsafe"]
        .iter()
        .any(|word| message.contains(word))
}

/// The smallest whole ratio: 1024×512 → 2:1.
fn ratio(width: u32, height: u32) -> (u32, u32) {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let d = gcd(width, height).max(1);
    (width / d, height / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_reduced() {
        assert_eq!(ratio(1024, 512), (2, 1));
        assert_eq!(ratio(512, 512), (1, 1));
        assert_eq!(ratio(1024, 1024), (1, 1));
    }

    #[test]
    fn finished_operations() {
        let ok = json!({"done": true, "response": {"image": "aGk="}});
        assert_eq!(finished(&ok).unwrap(), b"hi");
        let refused = json!({"done": true, "error": {"code": 3, "message": "it is not possible to generate an image from this request because it may violate the terms of use"}});
        assert!(matches!(finished(&refused), Err(Failure::Refused(_))));
        let failed = json!({"done": true, "error": {"code": 13, "message": "internal"}});
        assert!(matches!(finished(&failed), Err(Failure::Failed(_))));
        let empty = json!({"done": true, "response": {}});
        assert!(matches!(finished(&empty), Err(Failure::Picture(_))));
    }
}
