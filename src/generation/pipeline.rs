//! Standard mode: a tool's steps run in order, each one streamed provider call whose output
//! feeds the next as `{previous}` (for example Анализ → План → Текст → Редактура).
//!
//! A step with `per_section` runs once per line of the previous output (the plan), so a long
//! text is written in parts that each fit a provider's answer limit; the parts are joined.
//! Progress within a step is an estimate: sections done, or characters streamed against the
//! length of the previous step's output.

use serde_json::Value;

use crate::jobs::Handle;
use crate::llm::{self, ChatRequest, ProviderId, Quality, StreamEvent};
use crate::tools::Tool;
use crate::tools::catalogue::Step;
use crate::tools::render;

/// More plan lines than this are grouped, so a runaway plan cannot multiply the calls.
const MAX_SECTIONS: usize = 30;
/// The length a streamed step is expected to reach when nothing better is known.
const EXPECTED_CHARS: usize = 1500;

/// What the pipeline produced.
pub struct Produced {
    pub text: String,
    /// The provider of the last call.
    pub provider: ProviderId,
    pub tokens: u64,
}

/// Why it stopped.
#[derive(Debug)]
pub enum Failure {
    /// No provider could start a call.
    Unavailable(llm::router::Unavailable),
    /// A provider failed after it had started answering, or answered nothing.
    Provider(ProviderId, llm::Error),
}

/// Runs every step; the result is the last step's text.
pub async fn run(
    router: &llm::LlmRouter,
    tool: &Tool,
    input: &Value,
    watch: &Handle,
) -> Result<Produced, Failure> {
    let steps = run_steps(router, tool, input, watch).await?;
    Ok(Produced {
        text: steps.outputs.into_iter().last().unwrap_or_default(),
        provider: steps.provider,
        tokens: steps.tokens,
    })
}

/// What every step wrote, in order (a greeting card needs its text and its picture's prompt).
pub struct Steps {
    pub outputs: Vec<String>,
    /// The provider of the last call.
    pub provider: ProviderId,
    pub tokens: u64,
}

/// Runs every step, keeping each one's text.
pub async fn run_steps(
    router: &llm::LlmRouter,
    tool: &Tool,
    input: &Value,
    watch: &Handle,
) -> Result<Steps, Failure> {
    let preferred = tool.preferred_provider();
    let mut outputs: Vec<String> = Vec::with_capacity(tool.steps.len());
    let mut previous = String::new();
    let mut tokens = 0;
    let mut provider = preferred;
    for (i, step) in tool.steps.iter().enumerate() {
        let number = i + 1;
        watch.step_started(number, &step.name);
        let call = Call {
            router,
            tool,
            step,
            number,
            input,
            preferred,
            watch,
        };
        let text = if step.per_section {
            let sections = sections(&previous);
            let mut parts = Vec::with_capacity(sections.len());
            for (k, section) in sections.iter().enumerate() {
                if k > 0 {
                    watch.delta(number, "\n\n");
                }
                let out = call.generate(&previous, Some(section), false).await?;
                tokens += out.tokens;
                provider = out.provider;
                parts.push(out.text);
                watch.step_progress(number, percent(k + 1, sections.len()));
            }
            parts.join("\n\n")
        } else {
            let out = call.generate(&previous, None, true).await?;
            tokens += out.tokens;
            provider = out.provider;
            out.text
        };
        watch.step_completed(number);
        previous.clone_from(&text);
        outputs.push(text);
    }
    Ok(Steps {
        outputs,
        provider,
        tokens,
    })
}

/// One step's provider calls.
struct Call<'a> {
    router: &'a llm::LlmRouter,
    tool: &'a Tool,
    step: &'a Step,
    number: usize,
    input: &'a Value,
    preferred: ProviderId,
    watch: &'a Handle,
}

impl Call<'_> {
    async fn generate(
        &self,
        previous: &str,
        section: Option<&str>,
        report_progress: bool,
    ) -> Result<Produced, Failure> {
        let mut extra = vec![("previous", previous)];
        if let Some(section) = section {
            extra.push(("section", section));
        }
        let request = ChatRequest {
            system: self.step.system_prompt.clone(),
            user: render::render(
                &self.step.user_template,
                self.input,
                &self.tool.input_schema,
                &extra,
            ),
            quality: Quality::Standard,
            ..Default::default()
        };
        let (provider, mut stream) = self
            .router
            .chat_stream(Some(self.preferred), &request)
            .await
            .map_err(Failure::Unavailable)?;
        let expected = previous.chars().count().max(EXPECTED_CHARS);
        let (mut text, mut streamed, mut reported) = (String::new(), 0usize, 0u8);
        let mut tokens = 0;
        use futures_util::StreamExt;
        while let Some(event) = stream.next().await {
            match event {
                Ok(StreamEvent::Delta(delta)) => {
                    self.watch.delta(self.number, &delta);
                    text.push_str(&delta);
                    streamed += delta.chars().count();
                    // Reported in tens, never 100 before the step is done.
                    let estimate = (percent(streamed, expected).min(90) / 10) * 10;
                    if report_progress && estimate > reported {
                        reported = estimate;
                        self.watch.step_progress(self.number, estimate);
                    }
                }
                Ok(StreamEvent::Done(response)) => {
                    tokens = response.usage.total_tokens;
                    if text.is_empty() {
                        text = response.text;
                    }
                }
                Err(e) => return Err(Failure::Provider(provider, e)),
            }
        }
        if text.trim().is_empty() {
            return Err(Failure::Provider(
                provider,
                llm::Error::Malformed("empty answer".into()),
            ));
        }
        Ok(Produced {
            text,
            provider,
            tokens,
        })
    }
}

fn percent(done: usize, total: usize) -> u8 {
    (done.saturating_mul(100) / total.max(1)).min(100) as u8
}

/// The non-empty lines of a plan, grouped into at most [`MAX_SECTIONS`] sections.
fn sections(plan: &str) -> Vec<String> {
    let lines: Vec<&str> = plan
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return vec![plan.trim().to_owned()];
    }
    let per = lines.len().div_ceil(MAX_SECTIONS);
    lines.chunks(per).map(|group| group.join("\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_becomes_one_section_per_line_up_to_the_cap() {
        assert_eq!(
            sections("1. Введение\n\n  2. Глава  \n3. Вывод\n"),
            vec!["1. Введение", "2. Глава", "3. Вывод"]
        );
        let long: String = (1..=61).map(|i| format!("{i}\n")).collect();
        let grouped = sections(&long);
        assert_eq!(grouped.len(), 21, "61 lines in threes");
        assert_eq!(grouped[0], "1\n2\n3");
        assert_eq!(sections("   "), vec![String::new()]);
    }
}
