//! What every image service client shares: the [`Provider`] trait the retry and fallback loop
//! drives, [`Failure`] (one attempt's outcome, classified for that loop), progress reporting
//! that only moves forward, and bounded reading of answers (a hostile or broken service cannot
//! make us buffer more than a cap).

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use serde_json::Value;

use super::{ProviderId, Request};
use crate::llm;
use crate::llm::error::short;

/// A service that draws a picture from a prompt.
#[async_trait::async_trait]
pub(crate) trait Provider: Send + Sync {
    fn id(&self) -> ProviderId;

    /// Draws `request` at about `size` (width, height) and returns the encoded image as the
    /// service sent it (PNG or JPEG; the caller decodes, checks and fits it). One call is one
    /// attempt: submission and polling until done, failed, refused or out of time.
    async fn draw(
        &self,
        request: &Request,
        size: (u32, u32),
        progress: &Part<'_>,
    ) -> Result<Vec<u8>, Failure>;

    /// One cheap real call that proves the credentials (`providers check`).
    async fn check(&self) -> Result<(), Failure>;
}

/// Why one attempt failed. Messages never carry keys, tokens or URLs with secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// A call failed the way text provider calls fail (transport, HTTP status, bad JSON).
    #[error("{0}")]
    Http(llm::Error),
    /// The service's moderation refused the prompt or the picture.
    #[error("refused by moderation: {0}")]
    Refused(String),
    /// Still not done when polling gave up.
    #[error("not done in time")]
    Deadline,
    /// The service is not taking jobs (`DISABLED_BY_QUEUE`, `DISABLED_MANUALLY`).
    #[error("not accepting jobs: {0}")]
    Blocked(String),
    /// The job ended in failure on the service's side.
    #[error("generation failed: {0}")]
    Failed(String),
    /// The answer is not a usable picture (garbage, too large, no image).
    #[error("unusable image: {0}")]
    Picture(String),
}

impl Failure {
    /// Worth another attempt on the same service: transport failures, 5xx and 429 only. A
    /// refusal, a failed or timed-out job and a blocked queue move on to the next provider.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Http(e) if e.is_retryable())
    }

    /// Stable label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Http(e) => e.class(),
            Failure::Refused(_) => "refused",
            Failure::Deadline => "deadline",
            Failure::Blocked(_) => "blocked",
            Failure::Failed(_) => "failed",
            Failure::Picture(_) => "bad_image",
        }
    }
}

impl From<llm::Error> for Failure {
    fn from(e: llm::Error) -> Failure {
        match e {
            llm::Error::Refused(message) => Failure::Refused(message),
            other => Failure::Http(other),
        }
    }
}

/// Progress of one piece of work, reported 0..=100, only ever forward, and 100 only by
/// [`Progress::finish`] once the result exists.
pub(crate) struct Progress<'a> {
    sink: &'a (dyn Fn(u8) + Send + Sync),
    last: AtomicU8,
}

impl<'a> Progress<'a> {
    /// Reports 0 at once: the work is queued.
    pub fn new(sink: &'a (dyn Fn(u8) + Send + Sync)) -> Progress<'a> {
        sink(0);
        Progress {
            sink,
            last: AtomicU8::new(0),
        }
    }

    /// Reports `p` (capped at 99) if it is ahead of what was reported.
    pub fn advance(&self, p: u8) {
        let p = p.min(99);
        if self.last.fetch_max(p, Ordering::Relaxed) < p {
            (self.sink)(p);
        }
    }

    pub fn finish(&self) {
        self.last.store(100, Ordering::Relaxed);
        (self.sink)(100);
    }

    /// The stretch `from..=to` of the whole, which a stage reports as its own 0..=100.
    pub fn part(&self, from: u8, to: u8) -> Part<'_> {
        Part {
            progress: self,
            from,
            to: to.max(from),
        }
    }
}

/// A stage's view of [`Progress`].
pub(crate) struct Part<'a> {
    progress: &'a Progress<'a>,
    from: u8,
    to: u8,
}

impl Part<'_> {
    /// Reports the stage's own progress, 0..=100.
    pub fn set(&self, local: u8) {
        let span = u32::from(self.to - self.from);
        let p = u32::from(self.from) + span * u32::from(local.min(100)) / 100;
        self.progress.advance(p as u8);
    }

    /// Progress while waiting for a job with no progress of its own: it rises quickly at first
    /// and ever more slowly, reaching about 95 % of the stretch when `deadline` is up.
    pub fn waiting(&self, from: u8, elapsed: Duration, deadline: Duration) {
        let fraction = elapsed.as_secs_f64() / deadline.as_secs_f64().max(0.001);
        let eased = 1.0 - (-3.0 * fraction).exp();
        let local = f64::from(from) + (100.0 - f64::from(from)) * eased;
        self.set(local.clamp(0.0, 100.0) as u8);
    }
}

/// Reads a whole body, refusing one longer than `max` bytes as soon as it gets there.
pub(crate) async fn read_body(response: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(Failure::Picture(format!("the answer is over {max} bytes")));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| Failure::Http(llm::Error::from_transport(&e)))?;
        if body.len() + piece.len() > max {
            return Err(Failure::Picture(format!("the answer is over {max} bytes")));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// Parses a JSON answer read with [`read_body`].
pub(crate) async fn read_json(response: reqwest::Response, max: usize) -> Result<Value, Failure> {
    let body = read_body(response, max).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::Http(llm::Error::Malformed(short(&format!("not JSON: {e}")))))
}

/// Turns a non-2xx answer into a classified failure, with the service's message when its body
/// has one.
pub(crate) async fn check_status(
    response: reqwest::Response,
) -> Result<reqwest::Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry = llm::error::retry_after(response.headers());
    let text = read_body(response, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Err(status_failure(status, retry, &text))
}

/// Classifies a non-2xx status the way the text router does (`llm::Error::from_status`).
pub(crate) fn status_failure(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    text: &str,
) -> Failure {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let message = error_message(&body).map(str::to_owned).unwrap_or_else(|| {
        if text.trim().is_empty() {
            status.canonical_reason().unwrap_or_default().to_owned()
        } else {
            short(text)
        }
    });
    Failure::Http(llm::Error::from_status(
        status.as_u16(),
        retry_after,
        message,
    ))
}

/// The message of an error body: `error.message`, `message`, `errorDescription` or `error`.
pub(crate) fn error_message(body: &Value) -> Option<&str> {
    body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .or_else(|| body["errorDescription"].as_str())
        .or_else(|| body["error"].as_str())
}

/// Decodes base64 image data, refusing text that would decode to more than `max` bytes before
/// decoding it. Accepts a `data:…;base64,` prefix and line breaks.
pub(crate) fn decode_base64(text: &str, max: usize) -> Result<Vec<u8>, Failure> {
    let text = text
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,").map(|(_, data)| data))
        .unwrap_or(text);
    if text.len() / 4 * 3 > max {
        return Err(Failure::Picture(format!("the image is over {max} bytes")));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        engine.decode(compact)
    } else {
        engine.decode(text)
    };
    decoded.map_err(|_| Failure::Picture("the image is not valid base64".into()))
}

/// Keeps an id from an answer safe to put in a URL path: ids are letters, digits, `-` and `_`.
pub(crate) fn path_id(id: &str) -> Result<&str, Failure> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(Failure::Http(llm::Error::Malformed(
            "the job id in the answer is not a plain id".into(),
        )))
    }
}

/// The first `max` characters.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn progress_only_moves_forward_and_ends_at_100() {
        let seen = Mutex::new(Vec::new());
        let sink = |p: u8| seen.lock().unwrap().push(p);
        let progress = Progress::new(&sink);
        let draw = progress.part(0, 70);
        draw.set(50);
        draw.set(10);
        draw.set(100);
        progress.part(0, 70).set(30);
        progress.part(70, 100).set(100);
        progress.finish();
        assert_eq!(*seen.lock().unwrap(), vec![0, 35, 70, 99, 100]);
    }

    #[test]
    fn base64_is_capped_before_decoding() {
        assert_eq!(decode_base64("aGVsbG8=", 100).unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8=", 100).unwrap(), b"hello");
        assert_eq!(
            decode_base64("data:image/png;base64,aGVsbG8=", 100).unwrap(),
            b"hello"
        );
        assert!(matches!(
            decode_base64(&"A".repeat(1000), 100),
            Err(Failure::Picture(_))
        ));
        assert!(matches!(
            decode_base64("!!!!", 100),
            Err(Failure::Picture(_))
        ));
    }

    #[test]
    fn ids_from_answers_stay_plain() {
        assert!(path_id("0195b1c2-aa_9").is_ok());
        assert!(path_id("../pipelines").is_err());
        assert!(path_id("a/b").is_err());
        assert!(path_id("").is_err());
    }
}
