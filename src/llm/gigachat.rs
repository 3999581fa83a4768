//! GigaChat (Sber): OAuth access tokens, chat completions (whole and streamed), token counts.
//!
//! Sber's hosts are signed by the Russian Trusted Root CA, which common trust stores lack, so
//! this client owns a dedicated `reqwest::Client` that trusts the system roots plus that CA
//! file; no other traffic trusts it. The access token lives 30 minutes and is fetched once
//! however many generations want it at the same moment (a `moka` single-flight cache).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use moka::Expiry;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{retry_after, short};
use super::wire::Completion;
use super::{
    ChatRequest, ChatResponse, ChatStream, Error, Provider, ProviderId, Quality, StreamEvent,
    Usage, sse,
};
use crate::config::{self, Secret};

/// Where the CA file is looked for when `GIGACHAT_CA_CERT` is unset (CONTRACT §2).
const DEFAULT_CA_FILE: &str = "certificates/russian_trusted_root_ca.cer";

/// The spec's token TTL; Sber's tokens live 30 minutes.
const TOKEN_TTL: Duration = Duration::from_secs(25 * 60);

/// A token is not used in its last minute, as the official SDK does, so that a call started
/// just before expiry does not reach the API with a dead token.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A configured GigaChat account.
pub struct Client {
    http: reqwest::Client,
    auth_url: String,
    base_url: String,
    /// `Basic <authorization key>`, marked sensitive so it never shows in debug output.
    basic: HeaderValue,
    scope: String,
    model: String,
    model_quality: String,
    ca_cert: Option<PathBuf>,
    /// One entry (key `()`): the current access token. `try_get_with` makes concurrent callers
    /// share a single token request.
    tokens: moka::future::Cache<(), Arc<Token>>,
}

/// An access token and the moment it stops being worth using.
struct Token {
    value: Secret,
    fresh_until: Instant,
}

/// Expires each token at its own `fresh_until`, on insert and on replacement alike (moka's
/// default for a replacement would keep the old, already passed, deadline).
struct UntilStale;

impl Expiry<(), Arc<Token>> for UntilStale {
    fn expire_after_create(
        &self,
        _: &(),
        token: &Arc<Token>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(token.fresh_until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &(),
        token: &Arc<Token>,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(token.fresh_until.saturating_duration_since(updated_at))
    }
}

impl Client {
    /// `data_dir` is where the default CA file is looked for; `timeout` is the longest wait for
    /// a byte (connect, first byte, or between stream chunks).
    ///
    /// A CA file that is configured (or present at the default path) but missing, unreadable
    /// or not a certificate is [`Error::NotConfigured`] with a message naming the path: that
    /// text is what `providers check` prints.
    pub fn new(
        cfg: &config::GigaChat,
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<Client, Error> {
        let api_key = cfg
            .api_key
            .as_ref()
            .ok_or_else(|| Error::NotConfigured("GIGACHAT_API_KEY is not set".into()))?;
        let mut basic =
            HeaderValue::from_str(&format!("Basic {}", api_key.expose())).map_err(|_| {
                Error::NotConfigured(
                    "GIGACHAT_API_KEY contains characters not allowed in an HTTP header".into(),
                )
            })?;
        basic.set_sensitive(true);

        let ca_cert = cfg.ca_cert.clone().or_else(|| {
            let default = data_dir.join(DEFAULT_CA_FILE);
            default.exists().then_some(default)
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &ca_cert {
            for cert in load_ca(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| match &ca_cert {
            // The CA is the only part of this client's TLS set-up that comes from outside;
            // rustls parses a DER file only here.
            Some(path) => Error::NotConfigured(format!(
                "GigaChat CA certificate {} is not a usable certificate (PEM or DER expected): {}",
                path.display(),
                with_sources(&e)
            )),
            None => Error::NotConfigured(format!("HTTP client: {}", with_sources(&e))),
        })?;

        Ok(Client {
            http,
            auth_url: cfg.auth_url.clone(),
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            basic,
            scope: cfg.scope.clone(),
            model: cfg.model.clone(),
            model_quality: cfg.model_quality.clone(),
            ca_cert,
            tokens: moka::future::Cache::builder()
                .expire_after(UntilStale)
                .build(),
        })
    }

    /// The CA file this client trusts besides the system roots, if any (for diagnostics).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The cached access token, or a new one; concurrent callers share one token request.
    async fn token(&self) -> Result<Arc<Token>, Error> {
        self.tokens
            .try_get_with((), self.fetch_token())
            .await
            .map_err(|e| Error::clone(&e))
    }

    /// `POST auth_url` with the authorization key and a fresh `RqUID` (a uuid v4, required).
    async fn fetch_token(&self) -> Result<Arc<Token>, Error> {
        // The crate's uuid is built without the `v4` feature; random bytes make the same thing.
        let rquid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let response = self
            .http
            .post(&self.auth_url)
            .header(AUTHORIZATION, self.basic.clone())
            .header("RqUID", rquid.to_string())
            .header(ACCEPT, "application/json")
            .form(&[("scope", &self.scope)])
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let response = check_status(response).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let wire: WireToken = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Malformed(format!("access token: {e}")))?;
        let ttl = token_ttl(wire.expires_at, SystemTime::now());
        tracing::debug!(
            llm.provider = "gigachat",
            ttl_s = ttl.as_secs(),
            "fetched an access token"
        );
        Ok(Arc::new(Token {
            value: Secret::new(wire.access_token),
            fresh_until: Instant::now() + ttl,
        }))
    }

    /// Drops `used` from the cache unless another caller has already replaced it.
    async fn forget(&self, used: &Token) {
        if let Some(current) = self.tokens.get(&()).await
            && current.value.expose() == used.value.expose()
        {
            self.tokens.invalidate(&()).await;
        }
    }

    /// Sends an API request with a Bearer token. A 401 means the token died early (revoked,
    /// clock skew): it is dropped, a fresh one fetched and the call sent once more; a 401 with
    /// the fresh token is an [`Error::Auth`].
    async fn send<F>(&self, request: F) -> Result<reqwest::Response, Error>
    where
        F: Fn(&str) -> reqwest::RequestBuilder + Send + Sync,
    {
        let token = self.token().await?;
        let response = request(token.value.expose())
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return check_status(response).await;
        }
        drop(response);
        self.forget(&token).await;
        let token = self.token().await?;
        let response = request(token.value.expose())
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        check_status(response).await
    }

    /// `GIGACHAT_MODEL` for quick work, `GIGACHAT_MODEL_QUALITY` for standard mode and tools
    /// that need a pro model.
    fn chat_model<'a>(&'a self, request: &'a ChatRequest) -> &'a str {
        match (&request.model, request.quality) {
            (Some(model), _) => model,
            (None, Quality::Quick) => &self.model,
            (None, Quality::Standard) => &self.model_quality,
        }
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut body = json!({
            "model": self.chat_model(request),
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
            "stream": stream,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(n) = request.max_tokens {
            body["max_tokens"] = json!(n);
        }
        body
    }

    async fn post_chat(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = self.body(request, stream);
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.send(|token| {
            self.http
                .post(&url)
                .bearer_auth(token)
                .header(ACCEPT, accept)
                .json(&body)
        })
        .await
    }
}

/// Reads the CA file: PEM (one or more certificates) or DER (a Windows `.cer`).
fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let bad = |why: String| {
        Error::NotConfigured(format!("GigaChat CA certificate {}: {why}", path.display()))
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let certs = if is_pem {
        reqwest::Certificate::from_pem_bundle(&bytes)
            .map_err(|_| bad("not a valid PEM certificate".into()))?
    } else if bytes.first() != Some(&0x30) {
        // Every DER certificate starts with an ASN.1 SEQUENCE.
        return Err(bad("neither a PEM nor a DER certificate".into()));
    } else {
        // Not checked here with the rustls backend; `ClientBuilder::build` parses it.
        vec![
            reqwest::Certificate::from_der(&bytes)
                .map_err(|_| bad("not a valid DER certificate".into()))?,
        ]
    };
    if certs.is_empty() {
        return Err(bad(
            "no certificate in the file (PEM or DER expected)".into()
        ));
    }
    Ok(certs)
}

/// How long a token may be used: 25 minutes, or until a minute before `expires_at`, whichever
/// comes first. `expires_at` is Unix time in milliseconds (the documented form) or, when it is
/// small enough to be, seconds (the older `exp` of some docs).
fn token_ttl(expires_at: u64, now: SystemTime) -> Duration {
    let expires = if expires_at > 1_000_000_000_000 {
        UNIX_EPOCH + Duration::from_millis(expires_at)
    } else {
        UNIX_EPOCH + Duration::from_secs(expires_at)
    };
    let left = expires.duration_since(now).unwrap_or_default();
    left.saturating_sub(TOKEN_MARGIN).min(TOKEN_TTL)
}

/// An error and its sources on one line (reqwest's builder errors keep the reason in a source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    short(&text)
}

/// Turns a non-2xx answer into an [`Error`]. The API answers `{"status","message"}` and the
/// token endpoint `{"code","message"}`; both keep the text in `message`.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let retry = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| short(&text));
    Err(Error::from_status(status, retry, message))
}

/// The token endpoint's answer; older flows name the fields `tok` and `exp`.
#[derive(Deserialize)]
struct WireToken {
    #[serde(alias = "tok")]
    access_token: String,
    #[serde(alias = "exp")]
    expires_at: u64,
}

#[derive(Deserialize)]
struct TokenCount {
    tokens: u64,
}

/// Decides what a finished answer means. Only `stop` and `length` are answers; `blacklist` is
/// GigaChat declining the topic (its text is a canned apology, not an answer), and any other
/// reason (`function_call`, or one not documented) is not something this client asked for.
fn finish(
    text: String,
    finish_reason: Option<&str>,
    usage: Usage,
    model: String,
) -> Result<ChatResponse, Error> {
    match finish_reason {
        Some("blacklist") => Err(Error::Refused(
            "GigaChat declined the topic (finish_reason blacklist)".into(),
        )),
        Some(reason @ ("stop" | "length")) => {
            if text.trim().is_empty() {
                return Err(Error::Malformed("empty answer".into()));
            }
            Ok(ChatResponse {
                text,
                usage,
                model,
                truncated: reason == "length",
            })
        }
        Some(other) => Err(Error::Malformed(short(&format!(
            "unexpected finish_reason {other:?}"
        )))),
        None => Err(Error::Malformed("no finish_reason".into())),
    }
}

#[async_trait::async_trait]
impl Provider for Client {
    fn model_for(&self, request: &ChatRequest) -> String {
        self.chat_model(request).to_owned()
    }

    fn id(&self) -> ProviderId {
        ProviderId::GigaChat
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, Error> {
        let response = self.post_chat(request, false).await?;
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
        finish(
            message.content.unwrap_or_default(),
            choice.finish_reason.as_deref(),
            completion.usage.map(Usage::from).unwrap_or_default(),
            completion.model,
        )
    }

    /// Deltas already yielded stay yielded when the stream ends in an error (a `blacklist`
    /// finish, a cut connection): the caller must treat the final `Err` as the outcome.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, Error> {
        let response = self.post_chat(request, true).await?;
        let mut lines = Box::pin(sse::data_lines(response));
        let stream = async_stream::try_stream! {
            let mut text = String::new();
            let mut usage = Usage::default();
            let mut model = String::new();
            let mut reason: Option<String> = None;
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
                    }
                }
            }
            if reason.is_none() {
                Err(Error::Malformed("the stream ended before the answer did".into()))?;
            }
            yield StreamEvent::Done(finish(text, reason.as_deref(), usage, model)?);
        };
        Ok(Box::pin(stream))
    }

    async fn count_tokens(&self, text: &str) -> Result<u64, Error> {
        let url = format!("{}/tokens/count", self.base_url);
        let body = json!({"model": self.model, "input": [text]});
        let response = self
            .send(|token| {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .header(ACCEPT, "application/json")
                    .json(&body)
            })
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let counts: Vec<TokenCount> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Malformed(format!("token count: {e}")))?;
        counts
            .first()
            .map(|c| c.tokens)
            .ok_or_else(|| Error::Malformed("token count: empty list".into()))
    }

    /// Proves the key, the scope and TLS to both hosts: a token, then `GET /models`.
    async fn check(&self) -> Result<(), Error> {
        let url = format!("{}/models", self.base_url);
        self.send(|token| {
            self.http
                .get(&url)
                .bearer_auth(token)
                .header(ACCEPT, "application/json")
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ttl_reads_milliseconds_and_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_30_min = 1_700_000_000 + 30 * 60;
        assert_eq!(token_ttl(in_30_min * 1000, now), TOKEN_TTL);
        assert_eq!(token_ttl(in_30_min, now), TOKEN_TTL);
        let in_10_min = 1_700_000_000 + 10 * 60;
        assert_eq!(
            token_ttl(in_10_min * 1000, now),
            Duration::from_secs(9 * 60)
        );
        assert_eq!(token_ttl(in_10_min, now), Duration::from_secs(9 * 60));
        assert_eq!(token_ttl((1_700_000_000 + 30) * 1000, now), Duration::ZERO);
        assert_eq!(token_ttl(1_600_000_000, now), Duration::ZERO);
    }
}
