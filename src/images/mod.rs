//! Pictures from prompts: the image providers (Kandinsky through FusionBrain, Yandex ART) behind
//! retries and fallback in `EASY_WRITER_IMAGE_PROVIDER_ORDER`, the contract's formats at their
//! exact delivered sizes, and 2×/4× upscaling (an external service, else built-in Lanczos3).
//!
//! Like `llm`, this knows nothing of users, money, storage or routes: callers hand in a prompt
//! and get PNG bytes back, or one [`Error`] whose [`Error::code`] is the contract's. Decoding,
//! resizing and encoding run on the blocking pool, a few at a time (`pixels`).

mod kandinsky;
mod pixels;
mod provider;
mod upscale;
mod yandexart;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::llm;
use crate::llm::metrics::Metrics;
pub use pixels::MAX_PIXELS;
use pixels::Rgb;
use provider::{Failure, Part, Progress, Provider};

/// The formats of CONTRACT §4 "Images".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Web,
    Messenger,
    Banner,
    Print,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Web,
        Format::Messenger,
        Format::Banner,
        Format::Print,
    ];

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Web => "web",
            Format::Messenger => "messenger",
            Format::Banner => "banner",
            Format::Print => "print",
        }
    }

    /// The delivered size, exact: what the user gets and the API reports.
    pub fn size(self) -> (u32, u32) {
        let ((w, h), scale) = (self.draw_size(), self.scale());
        (w * scale, h * scale)
    }

    /// What a provider is asked to draw: Kandinsky draws at most 1024 px a side, so banner is
    /// drawn at 1024×512 and print at 512×512 (the spec's mandatory 4×).
    pub fn draw_size(self) -> (u32, u32) {
        match self {
            Format::Web => (1024, 1024),
            Format::Messenger | Format::Print => (512, 512),
            Format::Banner => (1024, 512),
        }
    }

    /// The upscale from the drawn size to the delivered one.
    pub fn scale(self) -> u32 {
        match self {
            Format::Web | Format::Messenger => 1,
            Format::Banner => 2,
            Format::Print => 4,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The image providers this build speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderId {
    Kandinsky,
    YandexArt,
}

impl ProviderId {
    pub const ALL: [ProviderId; 2] = [ProviderId::Kandinsky, ProviderId::YandexArt];

    /// The name used in configuration, images, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Kandinsky => "kandinsky",
            ProviderId::YandexArt => "yandexart",
        }
    }

    pub fn parse(name: &str) -> Option<ProviderId> {
        ProviderId::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct Request {
    /// Cut to each provider's limit (Kandinsky 1000 characters, Yandex ART 500).
    pub prompt: String,
    /// Kandinsky only; Yandex ART has none.
    pub negative_prompt: Option<String>,
    /// A Kandinsky style preset (`ANIME`, `UHD`, …); Yandex ART gets it in words.
    pub style: Option<String>,
    pub format: Format,
}

/// A drawn picture at its format's exact delivered size.
#[derive(Clone)]
pub struct Picture {
    /// Who drew it (the fallback when the first provider failed).
    pub provider: ProviderId,
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl fmt::Debug for Picture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picture")
            .field("provider", &self.provider)
            .field("png", &format_args!("{} bytes", self.png.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// An upscaled PNG, exactly the source's size times the scale.
#[derive(Clone)]
pub struct Png {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl fmt::Debug for Png {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Png")
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// One failed attempt, for logs: never keys, tokens or URLs with secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `kandinsky`, `yandexart` or `upscale`.
    pub provider: &'static str,
    /// The failure class, as in the metrics (`timeout`, `server`, `refused`, `deadline`, …).
    pub class: &'static str,
    pub message: String,
}

/// Why no picture came out. The `Display` text is safe to show a user; [`Error::attempts`]
/// has the details for logs.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A provider's moderation refused the prompt or its picture, and no other provider drew
    /// it: rephrasing helps, retrying does not.
    #[error("the image service refused this prompt")]
    ContentRefused { attempts: Vec<Attempt> },
    /// The last provider tried did not finish within `FUSIONBRAIN_TIMEOUT_SECS`.
    #[error("the image service did not finish the picture in time")]
    Timeout { attempts: Vec<Attempt> },
    /// Every provider failed, or none is configured.
    #[error("no image service could draw the picture")]
    Unavailable { attempts: Vec<Attempt> },
    /// The image given to upscale cannot be used (not a PNG/JPEG, too large, a bad scale).
    #[error("the image cannot be processed: {0}")]
    Picture(String),
}

impl Error {
    /// The contract's error code (CONTRACT §5 `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::ContentRefused { .. } => "content_refused",
            Error::Timeout { .. } => "timeout",
            Error::Unavailable { .. } | Error::Picture(_) => "providers_unavailable",
        }
    }

    /// Every failed attempt in order (empty for [`Error::Picture`]).
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Error::ContentRefused { attempts }
            | Error::Timeout { attempts }
            | Error::Unavailable { attempts } => attempts,
            Error::Picture(_) => &[],
        }
    }

    /// A refusal anywhere wins (the prompt is the likely cause, whatever else failed); then a
    /// timeout when it was the last word; else the providers are unavailable.
    fn from_attempts(attempts: Vec<Attempt>) -> Error {
        if attempts.iter().any(|a| a.class == "refused") {
            Error::ContentRefused { attempts }
        } else if attempts.last().is_some_and(|a| a.class == "deadline") {
            Error::Timeout { attempts }
        } else {
            Error::Unavailable { attempts }
        }
    }
}

/// The configured image providers and upscaler.
pub struct Images {
    /// In `EASY_WRITER_IMAGE_PROVIDER_ORDER`; only the configured ones.
    providers: Vec<Arc<dyn Provider>>,
    /// `UPSCALE_API_URL`; `None` means the built-in upscaler.
    upscaler: Option<upscale::Adapter>,
    retry_base: Duration,
    metrics: Arc<Metrics>,
    /// Pixel work at once. The largest (print upscaled 4×) holds a few hundred MB, so the
    /// blocking pool's hundreds of threads must not all do it together.
    pixel_slots: Arc<Semaphore>,
}

impl Images {
    /// Builds the clients; no network. `metrics` is the registry `/metrics` renders (the LLM
    /// router's), where image calls get their own `easy_writer_image_…` families.
    ///
    /// Only providers named in `EASY_WRITER_IMAGE_PROVIDER_ORDER` are used: Yandex ART rides
    /// on the YandexGPT credentials, so leaving it out of the order is how an operator who
    /// uses YandexGPT for text keeps it from drawing.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Images> {
        let timeout = Duration::from_secs(config.llm.provider_timeout_secs.max(1));
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        for name in &config.images.image_provider_order {
            let Some(id) = ProviderId::parse(name) else {
                continue;
            };
            if providers.iter().any(|p| p.id() == id) {
                continue;
            }
            let client: Option<Arc<dyn Provider>> = match id {
                ProviderId::Kandinsky => kandinsky::Kandinsky::new(&config.fusionbrain, timeout)?
                    .map(|c| Arc::new(c) as Arc<dyn Provider>),
                ProviderId::YandexArt => yandexart::YandexArt::new(config, timeout)?
                    .map(|c| Arc::new(c) as Arc<dyn Provider>),
            };
            providers.extend(client);
        }
        let poll = Duration::from_millis(config.fusionbrain.poll_ms.max(1));
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Images {
            providers,
            upscaler: upscale::Adapter::new(&config.upscale, poll)?,
            retry_base: Duration::from_millis(config.llm.retry_base_ms),
            metrics,
            pixel_slots: Arc::new(Semaphore::new(slots)),
        })
    }

    /// No image provider is configured: every `generate` would fail.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The configured providers, in the order they are tried.
    pub fn configured(&self) -> Vec<ProviderId> {
        self.providers.iter().map(|p| p.id()).collect()
    }

    /// Draws `request` at its format's draw size, then upscales to the exact delivered size,
    /// as PNG. Providers are tried in order, each up to three times for retryable failures
    /// (as text providers are); any other failure moves to the next provider — a refusal by
    /// one provider's moderation too, since another's rules may allow the prompt.
    ///
    /// `progress` gets 0..=100, only forward: queued, polling, upscaling, encoding; 100 only
    /// once the picture exists.
    pub async fn generate(
        &self,
        request: &Request,
        progress: &(dyn Fn(u8) + Send + Sync),
    ) -> Result<Picture, Error> {
        let progress = Progress::new(progress);
        let format = request.format;
        let scale = format.scale();
        let drawn_at = if scale > 1 { 60 } else { 90 };
        let (provider, drawn) = self
            .draw(request, format.draw_size(), &progress.part(0, drawn_at))
            .await?;
        let image = if scale > 1 {
            self.enlarge(Arc::new(drawn), None, scale, &progress.part(drawn_at, 92))
                .await?
        } else {
            drawn
        };
        let (width, height) = (image.width, image.height);
        let png = self.pixels(move || pixels::encode_png(&image)).await?;
        progress.finish();
        Ok(Picture {
            provider,
            png,
            width,
            height,
        })
    }

    /// 2× or 4× of a stored PNG (or JPEG): the external service when `UPSCALE_API_URL` is set,
    /// falling back to the built-in Lanczos3 when it fails; else built-in. The result is
    /// exactly the source's size times `scale`, at most [`MAX_PIXELS`].
    pub async fn upscale(
        &self,
        image: &[u8],
        scale: u32,
        progress: &(dyn Fn(u8) + Send + Sync),
    ) -> Result<Png, Error> {
        if !matches!(scale, 2 | 4) {
            return Err(Error::Picture(format!("scale {scale} is not 2 or 4")));
        }
        let progress = Progress::new(progress);
        let bytes = image.to_vec();
        let (source, bytes) = self
            .pixels(move || pixels::decode(&bytes, MAX_PIXELS).map(|rgb| (rgb, bytes)))
            .await?;
        progress.advance(10);
        let image = self
            .enlarge(Arc::new(source), Some(bytes), scale, &progress.part(10, 90))
            .await?;
        let (width, height) = (image.width, image.height);
        let png = self.pixels(move || pixels::encode_png(&image)).await?;
        progress.finish();
        Ok(Png {
            bytes: png,
            width,
            height,
        })
    }

    /// One cheap real call per configured provider (`providers check`): Kandinsky lists its
    /// pipelines; Yandex ART reads a missing operation (see `yandexart`).
    pub async fn check(&self) -> Vec<(ProviderId, Result<(), String>)> {
        let mut out = Vec::new();
        for provider in &self.providers {
            let result = provider.check().await.map_err(|f| f.to_string());
            out.push((provider.id(), result));
        }
        out
    }

    /// Tries each provider in order until one draws; the picture is decoded and fitted to
    /// `size` inside the attempt, so an unusable answer moves on like any failure.
    async fn draw(
        &self,
        request: &Request,
        size: (u32, u32),
        part: &Part<'_>,
    ) -> Result<(ProviderId, Rgb), Error> {
        let mut attempts = Vec::new();
        for provider in &self.providers {
            let id = provider.id();
            let drawn = self
                .retrying(id.as_str(), &mut attempts, || async move {
                    let bytes = provider.draw(request, size, part).await?;
                    self.fit_answer(bytes, pixels::MAX_DRAWN_PIXELS, size).await
                })
                .await;
            if let Some(image) = drawn {
                tracing::info!(image.provider = %id, "picture drawn");
                return Ok((id, image));
            }
        }
        Err(Error::from_attempts(attempts))
    }

    /// `scale`× of `image`: through the upscale service when one is configured (sending
    /// `encoded` when the caller has the image's bytes already), else — or when it fails —
    /// with Lanczos3 here.
    async fn enlarge(
        &self,
        image: Arc<Rgb>,
        encoded: Option<Vec<u8>>,
        scale: u32,
        part: &Part<'_>,
    ) -> Result<Rgb, Error> {
        let target = (
            image.width.saturating_mul(scale),
            image.height.saturating_mul(scale),
        );
        pixels::check_size(target.0, target.1).map_err(|e| Error::Picture(e.0))?;
        if let Some(adapter) = &self.upscaler {
            let encoded = match encoded {
                Some(bytes) => bytes,
                None => {
                    let image = image.clone();
                    self.pixels(move || pixels::encode_png(&image)).await?
                }
            };
            let mut attempts = Vec::new();
            let encoded = &encoded;
            let upscaled = self
                .retrying("upscale", &mut attempts, || async move {
                    let bytes = adapter.upscale(encoded, scale, part).await?;
                    self.fit_answer(bytes, MAX_PIXELS, target).await
                })
                .await;
            if let Some(upscaled) = upscaled {
                part.set(100);
                return Ok(upscaled);
            }
            tracing::warn!(
                image.provider = "upscale",
                "the upscale service failed; using the built-in upscaler"
            );
        }
        let upscaled = self
            .pixels(move || {
                let image = Arc::try_unwrap(image).unwrap_or_else(|shared| (*shared).clone());
                pixels::fit(image, target.0, target.1)
            })
            .await?;
        part.set(100);
        Ok(upscaled)
    }

    /// Decodes a provider's answer (refusing one over `max_pixels`) and fits it to exactly
    /// `size`, on the blocking pool.
    async fn fit_answer(
        &self,
        bytes: Vec<u8>,
        max_pixels: u64,
        size: (u32, u32),
    ) -> Result<Rgb, Failure> {
        self.pixels(move || {
            pixels::decode(&bytes, max_pixels).and_then(|rgb| pixels::fit(rgb, size.0, size.1))
        })
        .await
        .map_err(|e| Failure::Picture(e.to_string()))
    }

    /// Runs `call` up to three times while it fails retryably (the text router's back-off,
    /// `llm::router::backoff`), recording each attempt in the metrics and in `attempts`.
    async fn retrying<T, F, Fut>(
        &self,
        provider: &'static str,
        attempts: &mut Vec<Attempt>,
        mut call: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = call().await;
            let elapsed = started.elapsed();
            match result {
                Ok(value) => {
                    self.metrics.record_image(provider, "ok", elapsed);
                    return Some(value);
                }
                Err(failure) => {
                    self.metrics
                        .record_image(provider, failure.class(), elapsed);
                    tracing::warn!(
                        image.provider = provider, attempt, duration_ms = elapsed.as_millis() as u64,
                        error.class = failure.class(), error = %failure, "image call failed"
                    );
                    let wait = match &failure {
                        Failure::Http(e) => llm::router::backoff(self.retry_base, attempt + 1, e),
                        _ => None,
                    };
                    attempts.push(Attempt {
                        provider,
                        class: failure.class(),
                        message: failure.to_string(),
                    });
                    match wait {
                        Some(wait) => {
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    /// Runs pixel work on the blocking pool, at most one per core at a time, in the caller's
    /// tracing span.
    async fn pixels<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, pixels::Bad> + Send + 'static,
    ) -> Result<T, Error> {
        let _slot = self
            .pixel_slots
            .acquire()
            .await
            .map_err(|_| Error::Picture("image processing is shut down".into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|_| Error::Picture("image processing failed".into()))?
            .map_err(|e| Error::Picture(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_deliver_the_contract_sizes() {
        let sizes: Vec<_> = Format::ALL.iter().map(|f| (f.as_str(), f.size())).collect();
        assert_eq!(
            sizes,
            [
                ("web", (1024, 1024)),
                ("messenger", (512, 512)),
                ("banner", (2048, 1024)),
                ("print", (2048, 2048)),
            ]
        );
        assert_eq!(Format::Banner.draw_size(), (1024, 512));
        assert_eq!(Format::Print.draw_size(), (512, 512));
        assert_eq!(Format::parse("print"), Some(Format::Print));
        assert_eq!(Format::parse("Print"), None);
        assert_eq!(ProviderId::parse("yandexart"), Some(ProviderId::YandexArt));
    }

    /// Callers spawn these futures on the runtime.
    #[allow(dead_code)]
    fn futures_are_send(images: &Images, request: &Request) {
        fn send<T: Send>(_: T) {}
        send(images.generate(request, &|_| {}));
        send(images.upscale(&[], 2, &|_| {}));
        send(images.check());
    }

    fn attempt(class: &'static str) -> Attempt {
        Attempt {
            provider: "kandinsky",
            class,
            message: String::new(),
        }
    }

    #[test]
    fn error_codes_follow_the_attempts() {
        let refused = Error::from_attempts(vec![attempt("refused"), attempt("server")]);
        assert_eq!(refused.code(), "content_refused");
        let late = Error::from_attempts(vec![attempt("server"), attempt("deadline")]);
        assert_eq!(late.code(), "timeout");
        let down = Error::from_attempts(vec![attempt("deadline"), attempt("server")]);
        assert_eq!(down.code(), "providers_unavailable");
        assert_eq!(Error::from_attempts(vec![]).code(), "providers_unavailable");
        assert_eq!(Error::Picture("x".into()).code(), "providers_unavailable");
    }
}
