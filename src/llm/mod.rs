//! AI text generation: one [`Provider`] interface, a client per service (GigaChat, YandexGPT,
//! OpenAI and OpenAI-compatible servers), and the router that retries, falls back and keeps
//! per-provider health and metrics.
//!
//! Knows nothing about users, tools or billing: callers hand in a prompt and get text back, or
//! one typed error that says which providers were tried and why (ARCHITECTURE.md, "LLM").

pub mod error;
pub mod gigachat;
pub mod metrics;
pub mod openai;
pub mod router;
pub mod sse;
mod wire;
pub mod yandexgpt;

use std::fmt;
use std::pin::Pin;

use futures_util::Stream;
use serde::Serialize;

pub use error::Error;
pub use router::LlmRouter;

/// The providers this build speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderId {
    GigaChat,
    YandexGpt,
    OpenAi,
}

impl ProviderId {
    pub const ALL: [ProviderId; 3] = [
        ProviderId::GigaChat,
        ProviderId::YandexGpt,
        ProviderId::OpenAi,
    ];

    /// The name used in configuration, sessions, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::GigaChat => "gigachat",
            ProviderId::YandexGpt => "yandexgpt",
            ProviderId::OpenAi => "openai",
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

/// How much the caller cares about quality over speed; picks the model where a provider has
/// two (YandexGPT Lite for quick work, Pro for standard mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quality {
    #[default]
    Quick,
    Standard,
}

/// How capable a model is. A tool that needs more than a "lite" model (contracts, academic
/// texts, long essays) says `min_tier: pro`, and the router never sends it to a lite one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Lite,
    Pro,
}

impl Tier {
    /// A model's tier from its name: the small models of each family (`yandexgpt-lite`,
    /// `GigaChat` / `GigaChat-2` — Sber's Lite —, `gpt-4o-mini`, `*-nano`) are lite, anything
    /// else is taken as pro.
    pub fn of_model(model: &str) -> Tier {
        let name = model.to_ascii_lowercase();
        let name = name.trim_end_matches("/latest").trim_end_matches(":latest");
        let lite = ["lite", "mini", "nano"].iter().any(|w| name.contains(w))
            || name == "gigachat"
            || name == "gigachat-2";
        if lite { Tier::Lite } else { Tier::Pro }
    }
}

/// One chat generation: a system prompt and a user message.
#[derive(Clone, Debug, Default)]
pub struct ChatRequest {
    pub system: String,
    pub user: String,
    /// Overrides the provider's configured model.
    pub model: Option<String>,
    pub quality: Quality,
    /// 0..1 is understood by every provider.
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Providers whose model for this request is below this tier are passed over.
    pub min_tier: Tier,
}

/// Tokens a generation used, as the provider counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// The provider's count, or — when it reported none (some OpenAI-compatible servers do not
    /// when streaming) — an estimate: about three characters a token for the prompt and the
    /// answer, and never fewer answer tokens than the stream delivered deltas.
    pub fn or_estimate(self, request: &ChatRequest, answer: &str, deltas: u64) -> Usage {
        if self.total_tokens > 0 {
            return self;
        }
        let estimate = |text: &str| (text.chars().count() as u64).div_ceil(3);
        let prompt_tokens = estimate(&request.system) + estimate(&request.user);
        let completion_tokens = estimate(answer).max(deltas);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatResponse {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, as the provider names it (may carry a version suffix).
    pub model: String,
    /// Cut short by a length limit; still a success when `text` is not empty.
    pub truncated: bool,
}

/// What a streaming generation yields: text deltas, then the finished response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Delta(String),
    Done(ChatResponse),
}

pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Error>> + Send>>;

/// A chat-completion service.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    fn id(&self) -> ProviderId;

    /// The model a request goes to (its own `model`, else the configured one for its quality).
    fn model_for(&self, request: &ChatRequest) -> String;

    /// Generates a whole answer.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, Error>;

    /// Generates an answer as a stream of deltas ending with [`StreamEvent::Done`].
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, Error>;

    /// Counts the tokens of `text` for the configured model.
    async fn count_tokens(&self, text: &str) -> Result<u64, Error>;

    /// One cheap real call that proves credentials and TLS work (`providers check`).
    async fn check(&self) -> Result<(), Error>;
}

/// A provider client, or why it could not be built.
pub type Built = Result<std::sync::Arc<dyn Provider>, Error>;

/// Builds a client for every provider whose credentials are set, in `ProviderId::ALL` order.
/// A provider with credentials but a broken setting (an unreadable CA file, a bad proxy URL)
/// comes back as an error, so `serve` can log it and `providers check` can print it.
pub fn providers_from_config(config: &crate::config::Config) -> Vec<(ProviderId, Built)> {
    use std::sync::Arc;
    let timeout = std::time::Duration::from_secs(config.llm.provider_timeout_secs.max(1));
    let configured: std::collections::HashMap<_, _> =
        config.configured_services().into_iter().collect();
    let mut out: Vec<(ProviderId, Built)> = Vec::new();
    for id in ProviderId::ALL {
        if !configured.get(id.as_str()).copied().unwrap_or(false) {
            continue;
        }
        let client: Built = match id {
            ProviderId::GigaChat => {
                gigachat::Client::new(&config.gigachat, &config.server.data_dir, timeout)
                    .map(|c| Arc::new(c) as Arc<dyn Provider>)
            }
            ProviderId::YandexGpt => yandexgpt::Client::new(&config.yandexgpt, timeout)
                .map(|c| Arc::new(c) as Arc<dyn Provider>),
            ProviderId::OpenAi => openai::Client::new(&config.openai, timeout)
                .map(|c| Arc::new(c) as Arc<dyn Provider>),
        };
        out.push((id, client));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_model_of_each_family_is_lite() {
        for lite in [
            "yandexgpt-lite",
            "gpt://b1g/yandexgpt-lite/latest",
            "GigaChat",
            "GigaChat-2",
            "gpt-4o-mini",
            "gpt-4.1-nano",
        ] {
            assert_eq!(Tier::of_model(lite), Tier::Lite, "{lite}");
        }
        for pro in [
            "yandexgpt",
            "gpt://b1g/yandexgpt/rc",
            "GigaChat-2-Pro",
            "GigaChat-Max",
            "gpt-4o",
        ] {
            assert_eq!(Tier::of_model(pro), Tier::Pro, "{pro}");
        }
    }

    #[test]
    fn a_missing_usage_is_estimated_and_never_zero() {
        let request = ChatRequest {
            system: "Ты редактор.".into(),
            user: "Исправь: превет".into(),
            ..Default::default()
        };
        let reported = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        assert_eq!(reported.or_estimate(&request, "Привет", 1), reported);
        let estimated = Usage::default().or_estimate(&request, "Привет", 4);
        assert_eq!(estimated.prompt_tokens, 4 + 5);
        assert_eq!(
            estimated.completion_tokens, 4,
            "the deltas, more than 6 / 3"
        );
        assert_eq!(estimated.total_tokens, 13);
    }
}
