//! OpenAI Chat Completions, and every server that speaks it (Ollama, llama.cpp, vLLM) through
//! `OPENAI_BASE_URL`. Traffic may go through `OPENAI_PROXY_URL` (http, https or socks5).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::error::{retry_after, short};
use super::wire::Completion;
use super::{
    ChatRequest, ChatResponse, ChatStream, Error, Provider, ProviderId, StreamEvent, Usage, sse,
};
use crate::config::{self, Secret};

/// A configured OpenAI-compatible endpoint.
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    model: String,
}

impl Client {
    /// `timeout` is the longest wait for a byte (connect, first byte, or between stream chunks).
    pub fn new(cfg: &config::OpenAi, timeout: Duration) -> Result<Client, Error> {
        let api_key = cfg
            .api_key
            .clone()
            .ok_or_else(|| Error::NotConfigured("OPENAI_API_KEY is not set".into()))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = &cfg.proxy_url {
            let proxy = reqwest::Proxy::all(proxy.expose()).map_err(|_| {
                Error::NotConfigured("OPENAI_PROXY_URL is not a valid proxy URL".into())
            })?;
            builder = builder.proxy(proxy);
        }
        let http = builder
            .build()
            .map_err(|e| Error::NotConfigured(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            api_key,
            model: cfg.model.clone(),
        })
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut body = json!({
            "model": request.model.as_deref().unwrap_or(&self.model),
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        // `max_tokens` rather than the newer `max_completion_tokens`: gpt-4o accepts both and
        // OpenAI-compatible servers know only the older name.
        if let Some(n) = request.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn post(&self, body: &Value) -> Result<reqwest::Response, Error> {
        let response = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .bearer_auth(self.api_key.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        check_status(response).await
    }
}

/// Turns a non-2xx answer into an [`Error`], reading OpenAI's `{"error":{…}}` body.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let retry = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = error["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| short(&text));
    let code = error["error"]["code"].as_str().unwrap_or_default();
    let kind = error["error"]["type"].as_str().unwrap_or_default();
    // A 429 that says the account has no money is not going to pass on retry.
    if status == 429 && (code == "insufficient_quota" || kind == "insufficient_quota") {
        return Err(Error::Quota(short(&message)));
    }
    if code == "content_filter" {
        return Err(Error::Refused(short(&message)));
    }
    Err(Error::from_status(status, retry, message))
}

/// Decides what a finished answer means: success, truncated success, or a refusal.
fn finish(
    text: String,
    finish_reason: Option<&str>,
    usage: Usage,
    model: String,
) -> Result<ChatResponse, Error> {
    match finish_reason {
        Some("content_filter") => Err(Error::Refused(
            "the provider's content filter stopped the answer".into(),
        )),
        _ if text.trim().is_empty() => Err(Error::Malformed("empty answer".into())),
        reason => Ok(ChatResponse {
            text,
            usage,
            model,
            truncated: reason == Some("length"),
        }),
    }
}

#[async_trait::async_trait]
impl Provider for Client {
    fn model_for(&self, request: &ChatRequest) -> String {
        request.model.clone().unwrap_or_else(|| self.model.clone())
    }

    fn id(&self) -> ProviderId {
        ProviderId::OpenAi
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, Error> {
        let response = self.post(&self.body(request, false)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let completion: Completion = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Malformed(format!("chat completion: {e}")))?;
        let choice = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| Error::Malformed("no choices".into()))?;
        let message = choice
            .message
            .ok_or_else(|| Error::Malformed("no message".into()))?;
        if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
            return Err(Error::Refused(short(&refusal)));
        }
        finish(
            message.content.unwrap_or_default(),
            choice.finish_reason.as_deref(),
            completion.usage.map(Usage::from).unwrap_or_default(),
            completion.model,
        )
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, Error> {
        let response = self.post(&self.body(request, true)).await?;
        let mut lines = Box::pin(sse::data_lines(response));
        let stream = async_stream::try_stream! {
            let mut text = String::new();
            let mut usage = Usage::default();
            let mut model = String::new();
            let mut reason: Option<String> = None;
            let mut finished = false;
            while let Some(line) = lines.next().await {
                let chunk: Completion = serde_json::from_str(&line?)
                    .map_err(|e| Error::Malformed(format!("stream chunk: {e}")))?;
                if !chunk.model.is_empty() {
                    model = chunk.model;
                }
                if let Some(u) = chunk.usage {
                    usage = u.into();
                }
                for choice in chunk.choices {
                    if let Some(delta) = choice.delta.and_then(|d| d.content).filter(|d| !d.is_empty()) {
                        text.push_str(&delta);
                        yield StreamEvent::Delta(delta);
                    }
                    if let Some(r) = choice.finish_reason {
                        reason = Some(r);
                        finished = true;
                    }
                }
            }
            if !finished {
                Err(Error::Malformed("the stream ended before the answer did".into()))?;
            }
            yield StreamEvent::Done(finish(text, reason.as_deref(), usage, model)?);
        };
        Ok(Box::pin(stream))
    }

    async fn count_tokens(&self, text: &str) -> Result<u64, Error> {
        // The Chat Completions API has no tokenizer endpoint; estimate as OpenAI's docs do
        // (about four characters a token for English, fewer for Cyrillic).
        Ok(estimate_tokens(text))
    }

    async fn check(&self) -> Result<(), Error> {
        let response = self
            .http
            .get(format!("{}/models", self.base_url))
            .bearer_auth(self.api_key.expose())
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        check_status(response).await.map(drop)
    }
}

/// A rough token count: ~4 characters a token for Latin text, ~2.5 for other scripts.
pub fn estimate_tokens(text: &str) -> u64 {
    let (ascii, other) = text.chars().fold((0u64, 0u64), |(a, o), c| {
        if c.is_ascii() { (a + 1, o) } else { (a, o + 1) }
    });
    (ascii.div_ceil(4) + (other * 2).div_ceil(5)).max(u64::from(!text.is_empty()))
}
