//! `LlmRouter`: picks providers for a task, retries, falls back, limits concurrency and takes
//! failing providers out of rotation for a while (CONTRACT §4 "Tools and generation").
//!
//! Order: the preferred provider (a tool's `recommended_provider`, else [`preferred_for`]),
//! then the other configured providers in `EASY_WRITER_PROVIDER_ORDER`. Each gets up to three
//! attempts, waiting 1 and 2 units of `EASY_WRITER_RETRY_BASE_MS`, for retryable failures only;
//! a 429 waits for its `Retry-After`, and one over ten seconds moves on at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use super::{ChatRequest, ChatResponse, ChatStream, Error, Provider, ProviderId, StreamEvent};
use crate::config::Config;

/// Attempts per provider.
pub const ATTEMPTS: u32 = 3;
/// A `Retry-After` longer than this moves on to the next provider instead of waiting.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Which provider a tool prefers when it names none (CONTRACT §4): academic work and every
/// marketing tool go to OpenAI, everything else (simple everyday Russian tasks first of all)
/// to GigaChat.
pub fn preferred_for(tab: &str, tool: &str) -> ProviderId {
    match (tab, tool) {
        ("marketing", _) | (_, "essay_academic" | "report" | "abstract") => ProviderId::OpenAi,
        _ => ProviderId::GigaChat,
    }
}

/// How long to wait before attempt `next` (2 or 3) after `error`, or `None` to move on: 1 and
/// 2 units of `retry_base`, never before a 429's `Retry-After`, and not at all for a failure
/// that is not retryable or a `Retry-After` over [`MAX_RETRY_AFTER`]. Image providers share it.
pub fn backoff(retry_base: Duration, next: u32, error: &Error) -> Option<Duration> {
    if next > ATTEMPTS || !error.is_retryable() {
        return None;
    }
    let base = retry_base * (next - 1);
    match error {
        Error::RateLimited {
            retry_after: Some(after),
        } if *after > MAX_RETRY_AFTER => None,
        Error::RateLimited {
            retry_after: Some(after),
        } => Some(base.max(*after)),
        _ => Some(base),
    }
}

/// Router settings, from `[llm]` and the per-provider concurrency limits.
#[derive(Clone, Debug)]
pub struct Settings {
    pub order: Vec<ProviderId>,
    pub retry_base: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_concurrency: HashMap<ProviderId, usize>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            order: config
                .llm
                .provider_order
                .iter()
                .filter_map(|n| ProviderId::parse(n))
                .collect(),
            retry_base: Duration::from_millis(config.llm.retry_base_ms),
            breaker_failures: config.llm.breaker_failures.max(1),
            breaker_cooldown: Duration::from_secs(config.llm.breaker_cooldown_secs),
            max_concurrency: HashMap::from([
                (
                    ProviderId::GigaChat,
                    config.gigachat.max_concurrency.max(1) as usize,
                ),
                (
                    ProviderId::YandexGpt,
                    config.yandexgpt.max_concurrency.max(1) as usize,
                ),
                (
                    ProviderId::OpenAi,
                    config.openai.max_concurrency.max(1) as usize,
                ),
            ]),
        }
    }
}

/// One failed attempt, for the caller and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: ProviderId,
    pub error: Error,
}

/// Every provider failed (or none is configured): the API answers `503 providers_unavailable`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no provider could answer: {}", summary(.attempts, .skipped))]
pub struct Unavailable {
    /// Failed attempts in order.
    pub attempts: Vec<Attempt>,
    /// Providers passed over without a call, and why (`out of rotation`).
    pub skipped: Vec<(ProviderId, &'static str)>,
}

fn summary(attempts: &[Attempt], skipped: &[(ProviderId, &'static str)]) -> String {
    let mut parts: Vec<String> = attempts
        .iter()
        .map(|a| format!("{}: {}", a.provider, a.error))
        .collect();
    parts.extend(skipped.iter().map(|(p, why)| format!("{p}: {why}")));
    if parts.is_empty() {
        "no provider is configured".into()
    } else {
        parts.join("; ")
    }
}

/// Consecutive failures of one provider; open (out of rotation) until a moment.
struct Breaker {
    failures: AtomicU32,
    open_until: std::sync::Mutex<Option<Instant>>,
}

struct Slot {
    provider: Arc<dyn Provider>,
    permits: Arc<Semaphore>,
    breaker: Breaker,
}

/// The configured providers behind retry, fallback, concurrency limits and breakers.
pub struct LlmRouter {
    slots: HashMap<ProviderId, Slot>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl LlmRouter {
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> LlmRouter {
        let slots = providers
            .into_iter()
            .map(|provider| {
                let id = provider.id();
                let permits = settings.max_concurrency.get(&id).copied().unwrap_or(1);
                (
                    id,
                    Slot {
                        provider,
                        permits: Arc::new(Semaphore::new(permits)),
                        breaker: Breaker {
                            failures: AtomicU32::new(0),
                            open_until: std::sync::Mutex::new(None),
                        },
                    },
                )
            })
            .collect();
        LlmRouter {
            slots,
            settings,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True when no provider is configured: every call would fail.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Why no configured provider can take work that needs `tier`, when none can: callers
    /// refuse it before any debit. A pro tool asks for standard quality (`Tool::request`).
    pub fn cannot_serve(&self, tier: super::Tier) -> Option<&'static str> {
        let probe = ChatRequest {
            quality: super::Quality::Standard,
            ..Default::default()
        };
        let serves = |slot: &Slot| super::Tier::of_model(&slot.provider.model_for(&probe)) >= tier;
        if self.slots.is_empty() {
            Some("No AI provider for this tool is configured on this server")
        } else if !self.slots.values().any(serves) {
            Some("This tool needs a pro model, and only lite models are configured on this server")
        } else {
            None
        }
    }

    /// Configured providers, in fallback order.
    pub fn configured(&self) -> Vec<ProviderId> {
        self.plan(None)
    }

    /// A provider's breaker: consecutive failures now, and how long it stays out of rotation
    /// (`None` while in rotation). `None` for an unconfigured provider.
    pub fn breaker(&self, id: ProviderId) -> Option<(u32, Option<std::time::Duration>)> {
        let slot = self.slots.get(&id)?;
        let failures = slot.breaker.failures.load(Ordering::Relaxed);
        let open_until = *slot
            .breaker
            .open_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let left = open_until.and_then(|until| until.checked_duration_since(Instant::now()));
        Some((failures, left))
    }

    /// The provider itself, for `providers check`.
    pub fn provider(&self, id: ProviderId) -> Option<&Arc<dyn Provider>> {
        self.slots.get(&id).map(|s| &s.provider)
    }

    /// `preferred` first, then the configured order; unconfigured providers are not listed.
    fn plan(&self, preferred: Option<ProviderId>) -> Vec<ProviderId> {
        let mut plan = Vec::new();
        for id in preferred
            .into_iter()
            .chain(self.settings.order.iter().copied())
            .chain(ProviderId::ALL)
        {
            if self.slots.contains_key(&id) && !plan.contains(&id) {
                plan.push(id);
            }
        }
        plan
    }

    fn in_rotation(&self, slot: &Slot) -> bool {
        let open_until = *slot
            .breaker
            .open_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open_until.is_none_or(|until| Instant::now() >= until)
    }

    fn record_outcome(
        &self,
        id: ProviderId,
        slot: &Slot,
        result: Result<(), &Error>,
        elapsed: Duration,
    ) {
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) => e.class(),
        };
        self.metrics.record(id, outcome, elapsed);
        match result {
            Ok(()) => {
                slot.breaker.failures.store(0, Ordering::Relaxed);
                *slot
                    .breaker
                    .open_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            // One user's refused content or a request the provider found bad says nothing
            // about the provider; it neither opens nor resets the breaker.
            Err(e) if !e.is_provider_side() => {}
            Err(_) => {
                let failures = slot.breaker.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.settings.breaker_failures {
                    *slot
                        .breaker
                        .open_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now() + self.settings.breaker_cooldown);
                    tracing::warn!(llm.provider = %id, failures, "provider taken out of rotation");
                }
            }
        }
    }

    fn backoff(&self, next: u32, error: &Error) -> Option<Duration> {
        backoff(self.settings.retry_base, next, error)
    }

    /// Tries the providers in plan order, each up to [`ATTEMPTS`] times, until `call` succeeds;
    /// a provider whose model for `request` is below its `min_tier` is passed over.
    /// `call` makes one attempt; this records its outcome, logs failures and waits between
    /// attempts.
    async fn run<'a, T, F, Fut>(
        &'a self,
        preferred: Option<ProviderId>,
        request: &ChatRequest,
        mut call: F,
    ) -> Result<(ProviderId, T), Unavailable>
    where
        F: FnMut(ProviderId, &'a Slot) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + 'a,
    {
        let mut attempts = Vec::new();
        let mut skipped = Vec::new();
        for id in self.plan(preferred) {
            let slot = &self.slots[&id];
            if super::Tier::of_model(&slot.provider.model_for(request)) < request.min_tier {
                skipped.push((id, "its model is below the tool's tier"));
                continue;
            }
            if !self.in_rotation(slot) {
                skipped.push((id, "out of rotation after repeated failures"));
                continue;
            }
            let mut attempt = 1;
            loop {
                let started = Instant::now();
                let result = call(id, slot).await;
                let elapsed = started.elapsed();
                match result {
                    Ok(value) => {
                        self.record_outcome(id, slot, Ok(()), elapsed);
                        return Ok((id, value));
                    }
                    Err(error) => {
                        self.record_outcome(id, slot, Err(&error), elapsed);
                        tracing::warn!(
                            llm.provider = %id, attempt, duration_ms = elapsed.as_millis() as u64,
                            error.class = error.class(), error = %error, "generation failed"
                        );
                        let wait = self.backoff(attempt + 1, &error);
                        attempts.push(Attempt {
                            provider: id,
                            error,
                        });
                        match wait {
                            Some(wait) => {
                                tokio::time::sleep(wait).await;
                                attempt += 1;
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        Err(Unavailable { attempts, skipped })
    }

    /// Generates with retries and fallback; returns who answered.
    pub async fn chat(
        &self,
        preferred: Option<ProviderId>,
        request: &ChatRequest,
    ) -> Result<(ProviderId, ChatResponse), Unavailable> {
        self.run(preferred, request, |id, slot| async move {
            let started = Instant::now();
            let _permit = slot.permits.acquire().await.expect("never closed");
            let response = slot.provider.chat(request).await?;
            self.metrics.record_tokens(id, &response.usage);
            tracing::info!(
                llm.provider = %id, llm.model = %response.model,
                duration_ms = started.elapsed().as_millis() as u64,
                tokens = response.usage.total_tokens, truncated = response.truncated,
                "generation succeeded"
            );
            Ok(response)
        })
        .await
    }

    /// Streams with the same retries and fallback, as long as no text has been delivered; a
    /// failure after the first delta ends the stream with that error. The permit is held for
    /// as long as the stream lives; tokens are counted when it finishes.
    pub async fn chat_stream(
        &self,
        preferred: Option<ProviderId>,
        request: &ChatRequest,
    ) -> Result<(ProviderId, ChatStream), Unavailable> {
        self.run(preferred, request, |id, slot| async move {
            let permit = slot
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let mut stream = slot.provider.chat_stream(request).await?;
            // Wait for the first event so that a failure before any text can be retried.
            let first = match stream.next().await {
                Some(Ok(first)) => first,
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Malformed("empty stream".into())),
            };
            let metrics = self.metrics.clone();
            let stream = futures_util::stream::once(async move { Ok(first) })
                .chain(stream)
                .inspect(move |event| {
                    if let Ok(StreamEvent::Done(response)) = event {
                        metrics.record_tokens(id, &response.usage);
                    }
                })
                .map(move |event| {
                    let _ = &permit;
                    event
                });
            Ok(Box::pin(stream) as ChatStream)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_follows_the_contract() {
        assert_eq!(
            preferred_for("everyday", "spell_check"),
            ProviderId::GigaChat
        );
        assert_eq!(
            preferred_for("education", "essay_academic"),
            ProviderId::OpenAi
        );
        assert_eq!(preferred_for("education", "report"), ProviderId::OpenAi);
        assert_eq!(preferred_for("education", "abstract"), ProviderId::OpenAi);
        assert_eq!(preferred_for("marketing", "slogan"), ProviderId::OpenAi);
        assert_eq!(
            preferred_for("business", "contract_generate"),
            ProviderId::GigaChat
        );
        assert_eq!(preferred_for("special", "toast"), ProviderId::GigaChat);
    }
}
