//! YandexGPT through the native Foundation Models API (`…/foundationModels/v1`): `Api-Key` or
//! IAM `Bearer` auth, `modelUri` `gpt://<folder>/<model>/latest`, int64 numbers sent and read as
//! JSON strings. Streaming is not SSE: the body is newline-delimited JSON objects shaped like
//! the sync answer, each carrying the whole text so far, so deltas are computed here.
//! Prompts are users' texts: requests ask Yandex not to log them, and nothing here logs them.

use std::fmt;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny};
use serde_json::{Value, json};

use super::error::{retry_after, short};
use super::{
    ChatRequest, ChatResponse, ChatStream, Error, Provider, ProviderId, Quality, StreamEvent, Usage,
};
use crate::config::{self, Secret};

/// The longest stream line accepted; each line repeats the whole answer so far, which stays far
/// below this for any model's output limit.
const MAX_LINE: usize = 4 << 20;

/// A configured YandexGPT folder.
pub struct Client {
    /// Sends the credential, the folder (IAM tokens) and the no-logging header on every call.
    http: reqwest::Client,
    base_url: String,
    folder_id: String,
    /// For [`Quality::Quick`] and token counting.
    model: String,
    /// For [`Quality::Standard`].
    model_quality: String,
}

impl Client {
    /// `timeout` is the longest wait for a byte (connect, first byte, or between stream chunks).
    /// An API key wins over an IAM token when both are set.
    pub fn new(cfg: &config::YandexGpt, timeout: Duration) -> Result<Client, Error> {
        let (headers, folder_id) = auth_headers(cfg)?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("easy-writer/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| Error::NotConfigured(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base_url: cfg.base_url.trim_end_matches('/').to_owned(),
            folder_id,
            model: cfg.model.clone(),
            model_quality: cfg.model_quality.clone(),
        })
    }

    /// `gpt://<folder>/<model>/latest`. A model given with a branch (`yandexgpt/rc`) or as a
    /// whole URI is used as it is.
    fn model_uri(&self, model: &str) -> String {
        if model.starts_with("gpt://") {
            model.to_owned()
        } else if model.contains('/') {
            format!("gpt://{}/{model}", self.folder_id)
        } else {
            format!("gpt://{}/{model}/latest", self.folder_id)
        }
    }

    fn chat_model<'a>(&'a self, request: &'a ChatRequest) -> &'a str {
        match (&request.model, request.quality) {
            (Some(model), _) => model,
            (None, Quality::Quick) => &self.model,
            (None, Quality::Standard) => &self.model_quality,
        }
    }

    fn body(request: &ChatRequest, uri: &str, stream: bool) -> Value {
        let mut options = json!({ "stream": stream });
        if let Some(t) = request.temperature {
            options["temperature"] = json!(t);
        }
        if let Some(n) = request.max_tokens {
            // int64 in the protobuf JSON mapping, so a string.
            options["maxTokens"] = json!(n.to_string());
        }
        json!({
            "modelUri": uri,
            "completionOptions": options,
            "messages": [
                {"role": "system", "text": request.system},
                {"role": "user", "text": request.user},
            ],
        })
    }

    async fn post(&self, method: &str, body: &Value) -> Result<reqwest::Response, Error> {
        let response = self
            .http
            .post(format!("{}/{method}", self.base_url))
            .json(body)
            .send()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        check_status(response).await
    }
}

/// What [`ChatResponse::model`] says: `yandexgpt-lite/latest@09.02.2025`, without the folder.
fn answered_by(uri: &str, folder_id: &str, version: &str) -> String {
    let path = uri
        .strip_prefix("gpt://")
        .and_then(|rest| rest.strip_prefix(folder_id))
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(uri);
    if version.is_empty() {
        path.to_owned()
    } else {
        format!("{path}@{version}")
    }
}

/// The headers every Yandex Foundation Models call carries — the credential (`Api-Key`, or an
/// IAM `Bearer` token with `x-folder-id`) and the no-logging request — and the folder id that
/// model URIs name. An API key wins over an IAM token when both are set. Yandex ART
/// (`images::yandexart`) signs in with the same credentials through this function.
pub(crate) fn auth_headers(cfg: &config::YandexGpt) -> Result<(HeaderMap, String), Error> {
    let folder_id = cfg
        .folder_id
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| Error::NotConfigured("YANDEXGPT_FOLDER_ID is not set".into()))?
        .to_owned();
    let mut headers = HeaderMap::new();
    match (&cfg.api_key, &cfg.iam_token) {
        (Some(key), _) => {
            headers.insert(
                AUTHORIZATION,
                credential("Api-Key", key, "YANDEXGPT_API_KEY")?,
            );
        }
        (None, Some(token)) => {
            headers.insert(
                AUTHORIZATION,
                credential("Bearer", token, "YANDEXGPT_IAM_TOKEN")?,
            );
            // A user's IAM token is not bound to a folder; a service account's is, and the
            // header then names the same folder as `modelUri`.
            let folder = HeaderValue::from_str(&folder_id).map_err(|_| {
                Error::NotConfigured("YANDEXGPT_FOLDER_ID is not a valid folder id".into())
            })?;
            headers.insert(HeaderName::from_static("x-folder-id"), folder);
        }
        (None, None) => {
            return Err(Error::NotConfigured(
                "neither YANDEXGPT_API_KEY nor YANDEXGPT_IAM_TOKEN is set".into(),
            ));
        }
    }
    headers.insert(
        HeaderName::from_static("x-data-logging-enabled"),
        HeaderValue::from_static("false"),
    );
    Ok((headers, folder_id))
}

/// `<scheme> <secret>` as a header value that `Debug` masks.
fn credential(scheme: &str, secret: &Secret, env: &str) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("{scheme} {}", secret.expose().trim()))
        .map_err(|_| {
            Error::NotConfigured(format!(
                "{env} contains characters not allowed in an HTTP header"
            ))
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Turns a non-2xx answer into an [`Error`], reading either error body shape.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let message = match error_message(&body) {
        Some(message) => message.to_owned(),
        None if text.trim().is_empty() => status.canonical_reason().unwrap_or_default().to_owned(),
        None => short(&text),
    };
    Err(Error::from_status(status.as_u16(), retry, message))
}

/// The message of gRPC-gateway's `{"error":{"grpcCode","httpCode","message"}}` or of the shorter
/// `{"code","message"}`; a streaming endpoint may wrap either in a one-element array.
fn error_message(body: &Value) -> Option<&str> {
    let body = body
        .as_array()
        .and_then(|items| items.first())
        .unwrap_or(body);
    body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
}

/// An error object inside a 200 body (a stream that failed after it started): classified by
/// its `httpCode`, or by its gRPC code when that is all there is.
fn error_in_body(body: &Value) -> Error {
    let error = if body["error"].is_object() {
        &body["error"]
    } else {
        body
    };
    let status = error["httpCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or_else(|| {
            http_status_of_grpc(
                error["grpcCode"]
                    .as_u64()
                    .or_else(|| error["code"].as_u64()),
            )
        });
    let message = error["message"]
        .as_str()
        .unwrap_or("error in the response body");
    Error::from_status(status, None, message.to_owned())
}

/// The HTTP status gRPC-gateway gives each gRPC code.
fn http_status_of_grpc(code: Option<u64>) -> u16 {
    match code {
        Some(3 | 9 | 11) => 400,
        Some(16) => 401,
        Some(7) => 403,
        Some(5) => 404,
        Some(8) => 429,
        Some(14) => 503,
        Some(4) => 504,
        _ => 500,
    }
}

/// One sync answer or one stream object: `{"result":{…}}`, or an error.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    result: Option<Completion>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Completion {
    #[serde(default)]
    alternatives: Vec<Alternative>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    model_version: String,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    message: Option<Message>,
    /// Omitted by protobuf JSON when it is the zero value, `ALTERNATIVE_STATUS_UNSPECIFIED`.
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default, deserialize_with = "int64")]
    input_text_tokens: u64,
    #[serde(default, deserialize_with = "int64")]
    completion_tokens: u64,
    #[serde(default, deserialize_with = "int64")]
    total_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            prompt_tokens: u.input_text_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u
                .total_tokens
                .max(u.input_text_tokens + u.completion_tokens),
        }
    }
}

#[derive(Deserialize)]
struct Tokens {
    /// Omitted by protobuf JSON when empty.
    #[serde(default)]
    tokens: Vec<IgnoredAny>,
}

/// An int64 counter: a JSON string per the protobuf JSON mapping, or a number; null is zero.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Int64;
    impl de::Visitor<'_> for Int64 {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer, or a string holding one")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a negative counter"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim()
                .parse()
                .map_err(|_| E::custom("a counter string that is not a number"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
            Ok(0)
        }
    }
    d.deserialize_any(Int64)
}

/// Parses a sync answer or one stream object, surfacing an error object as an [`Error`].
fn parse_completion(bytes: &[u8], what: &str) -> Result<Completion, Error> {
    let envelope: Envelope = serde_json::from_slice(bytes)
        .map_err(|e| Error::Malformed(short(&format!("{what}: {e}"))))?;
    if envelope.result.is_none() && (envelope.error.is_some() || envelope.message.is_some()) {
        let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        return Err(error_in_body(&body));
    }
    envelope
        .result
        .ok_or_else(|| Error::Malformed(format!("{what}: no result")))
}

/// The first alternative's status and text.
fn first_alternative(completion: &mut Completion) -> Result<(String, String), Error> {
    if completion.alternatives.is_empty() {
        return Err(Error::Malformed("no alternatives".into()));
    }
    let alternative = completion.alternatives.swap_remove(0);
    let text = alternative.message.map(|m| m.text).unwrap_or_default();
    Ok((alternative.status, text))
}

/// The status without its `ALTERNATIVE_STATUS_` prefix.
fn status_name(status: &str) -> &str {
    status.strip_prefix("ALTERNATIVE_STATUS_").unwrap_or(status)
}

/// Ends a stream: every status but `PARTIAL` is the last one.
fn is_last(status: &str) -> bool {
    status_name(status) != "PARTIAL"
}

/// Decides what a finished answer means: success, truncated success, a refusal, or nonsense.
fn finish(status: &str, text: String, usage: Usage, model: String) -> Result<ChatResponse, Error> {
    let truncated = match status_name(status) {
        "FINAL" => false,
        "TRUNCATED_FINAL" => true,
        // The text is then a canned refusal, not an answer.
        "CONTENT_FILTER" => {
            return Err(Error::Refused(
                "the provider's content filter stopped the answer".into(),
            ));
        }
        "" => return Err(Error::Malformed("no alternative status".into())),
        other => {
            return Err(Error::Malformed(short(&format!(
                "unexpected alternative status {other}"
            ))));
        }
    };
    if text.trim().is_empty() {
        return Err(Error::Malformed("empty answer".into()));
    }
    Ok(ChatResponse {
        text,
        usage,
        model,
        truncated,
    })
}

/// The answer so far, rebuilt from stream objects that each carry the whole text.
#[derive(Default)]
struct Cumulative {
    text: String,
}

impl Cumulative {
    /// Takes one object's text and returns what is new. Text that does not continue the
    /// answer so far is taken as a delta (some fronts may send deltas) and appended.
    fn update(&mut self, text: String) -> String {
        if let Some(new) = text.strip_prefix(self.text.as_str()) {
            let delta = new.to_owned();
            self.text = text;
            delta
        } else {
            self.text.push_str(&text);
            text
        }
    }
}

/// Splits a body that arrives in arbitrary pieces into lines.
#[derive(Default)]
struct Lines {
    buffer: Vec<u8>,
    /// How much of `buffer` is known to hold no newline.
    scanned: usize,
}

impl Lines {
    fn push(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() > MAX_LINE {
            return Err(Error::Malformed("a stream line is too long".into()));
        }
        Ok(())
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        match self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let line = self.buffer.drain(..=self.scanned + at).collect();
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }
}

/// The lines of a newline-delimited body, blank ones skipped; a last line without its newline
/// is still yielded (a cut-off object then fails to parse rather than vanishing).
fn ndjson(response: reqwest::Response) -> impl Stream<Item = Result<Vec<u8>, Error>> + Send {
    let mut body = Box::pin(response.bytes_stream());
    async_stream::try_stream! {
        let mut lines = Lines::default();
        while let Some(piece) = body.next().await {
            lines.push(&piece.map_err(|e| Error::from_transport(&e))?)?;
            while let Some(line) = lines.next_line() {
                if !line.trim_ascii().is_empty() {
                    yield line;
                }
            }
        }
        if !lines.buffer.trim_ascii().is_empty() {
            yield lines.buffer;
        }
    }
}

#[async_trait::async_trait]
impl Provider for Client {
    fn model_for(&self, request: &ChatRequest) -> String {
        self.chat_model(request).to_owned()
    }

    fn id(&self) -> ProviderId {
        ProviderId::YandexGpt
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, Error> {
        let uri = self.model_uri(self.chat_model(request));
        let response = self
            .post("completion", &Self::body(request, &uri, false))
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let mut completion = parse_completion(&bytes, "completion")?;
        let (status, text) = first_alternative(&mut completion)?;
        finish(
            &status,
            text,
            completion.usage.map(Usage::from).unwrap_or_default(),
            answered_by(&uri, &self.folder_id, &completion.model_version),
        )
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, Error> {
        let uri = self.model_uri(self.chat_model(request));
        let response = self
            .post("completion", &Self::body(request, &uri, true))
            .await?;
        let mut lines = Box::pin(ndjson(response));
        let folder_id = self.folder_id.clone();
        let stream = async_stream::try_stream! {
            let mut answer = Cumulative::default();
            let mut usage = Usage::default();
            let mut version = String::new();
            let mut last_status = None;
            while let Some(line) = lines.next().await {
                let mut completion = parse_completion(&line?, "stream object")?;
                if let Some(u) = completion.usage {
                    usage = u.into();
                }
                if !completion.model_version.is_empty() {
                    version = std::mem::take(&mut completion.model_version);
                }
                let (status, text) = first_alternative(&mut completion)?;
                if status_name(&status) == "CONTENT_FILTER" {
                    Err(Error::Refused("the provider's content filter stopped the answer".into()))?;
                }
                let delta = answer.update(text);
                if !delta.is_empty() {
                    yield StreamEvent::Delta(delta);
                }
                if is_last(&status) {
                    last_status = Some(status);
                    break;
                }
            }
            let status = last_status
                .ok_or_else(|| Error::Malformed("the stream ended before the answer did".into()))?;
            let model = answered_by(&uri, &folder_id, &version);
            yield StreamEvent::Done(finish(&status, answer.text, usage, model)?);
        };
        Ok(Box::pin(stream))
    }

    async fn count_tokens(&self, text: &str) -> Result<u64, Error> {
        let body = json!({ "modelUri": self.model_uri(&self.model), "text": text });
        let response = self.post("tokenize", &body).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_transport(&e))?;
        let tokens: Tokens = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Malformed(short(&format!("tokenize: {e}"))))?;
        Ok(tokens.tokens.len() as u64)
    }

    async fn check(&self) -> Result<(), Error> {
        // Tokenizing costs nothing and needs both a valid credential and the right folder.
        self.count_tokens("Проверка связи").await.map(drop)
    }
}
