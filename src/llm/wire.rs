//! The OpenAI-style chat-completion shapes that OpenAI and GigaChat's classic API both answer
//! with (whole answers under `message`, stream chunks under `delta`).

use serde::Deserialize;

use super::Usage;

#[derive(Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub delta: Option<Message>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub struct Message {
    #[serde(default)]
    pub content: Option<String>,
    /// OpenAI's refusal text; GigaChat never sends it.
    #[serde(default)]
    pub refusal: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
        }
    }
}
