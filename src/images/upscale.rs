//! The external upscaler behind `UPSCALE_API_URL`, spoken through our own small adapter
//! contract (reference §5.2): multipart `image`, `scale`, `format=png`, an optional bearer key;
//! the answer is the image bytes (200), or a job to poll (202 `{id, status_url}`).
//! The built-in Lanczos3 upscaler is `pixels::fit`; `Images` picks between them.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part as FormPart};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::pixels;
use super::provider::{Failure, Part, check_status, read_body};
use crate::config::{self, Secret};
use crate::llm;

/// The whole call, polling included.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The largest answer read: a maximal PNG (8192×8192) with room to spare.
const MAX_ANSWER: usize = 256 << 20;

/// A configured upscale service.
pub(crate) struct Adapter {
    http: reqwest::Client,
    url: Url,
    key: Option<Secret>,
    poll: Duration,
}

impl Adapter {
    /// `None` when `UPSCALE_API_URL` is not set: the built-in upscaler is used.
    pub fn new(cfg: &config::Upscale, poll: Duration) -> anyhow::Result<Option<Adapter>> {
        let Some(url) = cfg
            .api_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let url = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| anyhow::anyhow!("UPSCALE_API_URL must be an http(s) URL"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(TIMEOUT)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Adapter {
            http,
            url,
            key: cfg.api_key.clone(),
            poll,
        }))
    }

    /// One attempt: the upscaled image's bytes (not yet checked or decoded).
    pub async fn upscale(
        &self,
        png: &[u8],
        scale: u32,
        progress: &Part<'_>,
    ) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        let image = FormPart::bytes(png.to_vec())
            .file_name("image.png")
            .mime_str("image/png")
            .map_err(|e| Failure::Http(llm::Error::Malformed(e.to_string())))?;
        let form = Form::new()
            .part("image", image)
            .text("scale", scale.to_string())
            .text("format", "png");
        let mut request = self.http.post(self.url.clone()).multipart(form);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose().trim());
        }
        let response = request.send().await.map_err(transport)?;
        if response.status() != StatusCode::ACCEPTED {
            let response = check_status(response).await?;
            return read_body(response, MAX_ANSWER).await;
        }
        let job: Value = serde_json::from_slice(&read_body(response, 1 << 20).await?)
            .map_err(|_| malformed("the 202 answer is not JSON"))?;
        let status_url = job["status_url"]
            .as_str()
            .and_then(|u| self.url.join(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| malformed("the 202 answer has no usable status_url"))?;
        // The key goes only where it was configured to go.
        let same_origin = status_url.origin() == self.url.origin();
        progress.set(10);
        loop {
            let remaining = TIMEOUT.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(Failure::Deadline);
            }
            tokio::time::sleep(self.poll.min(remaining)).await;
            let mut poll = self.http.get(status_url.clone());
            if same_origin && let Some(key) = &self.key {
                poll = poll.bearer_auth(key.expose().trim());
            }
            let body = match poll.send().await.map_err(transport) {
                Ok(response) => match check_status(response).await {
                    Ok(response) => read_body(response, MAX_ANSWER).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let body = match body {
                Ok(body) => body,
                Err(e) if e.is_retryable() => continue,
                Err(e) => return Err(e),
            };
            if pixels::sniff(&body).is_some() {
                progress.set(100);
                return Ok(body);
            }
            let state: Value = serde_json::from_slice(&body)
                .map_err(|_| malformed("a poll answer is neither image nor JSON"))?;
            if state["status"].as_str() == Some("failed") {
                let message = state["error"]
                    .as_str()
                    .or_else(|| state["error"]["message"].as_str())
                    .unwrap_or("no reason given");
                return Err(Failure::Failed(llm::error::short(message)));
            }
            progress.waiting(10, started.elapsed(), TIMEOUT);
        }
    }
}

/// A request that ran out of the 120 s is not tried again (that would triple the wait).
fn transport(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Deadline
    } else {
        Failure::Http(llm::Error::from_transport(&e))
    }
}

fn malformed(message: &str) -> Failure {
    Failure::Http(llm::Error::Malformed(message.into()))
}
