//! An article as paid work ([`Work`]): `seo_article` in standard mode through the shared
//! pipeline, settled as completed (Markdown and its post HTML) or failed with the owner's
//! refund; [`Recovery`] is its start-up recovery. The path from debit to settlement itself
//! lives in `jobs::work`, shared with every other kind of paid work.

use std::sync::Arc;

use serde_json::{Value, json};

use super::store::{self, Written};
use super::{ArticleError, Length, html};
use crate::billing;
use crate::db::Db;
use crate::generation::pipeline::{self, Produced};
use crate::generation::run;
use crate::jobs::hub::Event;
use crate::jobs::work::{Failure, Recover, Settled, Work};
use crate::jobs::{Handle, Runner};
use crate::llm::LlmRouter;
use crate::tools::{Tool, catalogue};

/// What article work needs.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub llm: Arc<LlmRouter>,
}

/// The `seo_article` input for an article: the title as the topic, the keywords (the title
/// when there are none), the length in words, and — for a language other than Russian — the
/// language named where the form has room for it, the audience.
pub fn tool_input(title: &str, keywords: &[String], language: &str, length: Length) -> Value {
    let keywords: Vec<&str> = if keywords.is_empty() {
        vec![title]
    } else {
        keywords.iter().map(String::as_str).collect()
    };
    let mut input = json!({
        "topic": title,
        "keywords": keywords,
        "length_words": length.words(),
    });
    if !language.eq_ignore_ascii_case("ru") {
        input["audience"] = json!(format!(
            "Читатели сайта на языке «{language}»; вся статья — на этом языке"
        ));
    }
    input
}

/// An open, paid `pending` article.
pub struct Article {
    pub deps: Deps,
    pub article_id: String,
    /// The hub's owner of this work: `site:<id>`, which no user token can match (articles
    /// have no WebSocket watchers).
    pub watcher: String,
    pub tool: Arc<Tool>,
    pub input: Value,
}

impl Article {
    /// Work for an opened article row.
    pub fn new(deps: Deps, tool: Arc<Tool>, row: &store::Row, input: Value) -> Article {
        Article {
            deps,
            article_id: row.article.id.clone(),
            watcher: format!("site:{}", row.site_id.as_deref().unwrap_or("")),
            tool,
            input,
        }
    }
}

/// A settled article, for its final event.
pub struct Done {
    result: Value,
    error: Option<ArticleError>,
}

impl Settled for Done {
    fn final_event(&self) -> Event<'_> {
        match &self.error {
            None => Event::Completed {
                result: &self.result,
            },
            Some(error) => Event::Error {
                code: &error.code,
                message: &error.message,
            },
        }
    }
}

#[async_trait::async_trait]
impl Work for Article {
    type Output = Produced;
    type Settled = Done;
    type Error = billing::Error;

    fn kind(&self) -> &'static str {
        "article"
    }

    fn id(&self) -> &str {
        &self.article_id
    }

    fn user_id(&self) -> &str {
        &self.watcher
    }

    async fn start(&self) -> Result<bool, billing::Error> {
        let id = self.article_id.clone();
        Ok(self.deps.db.write(move |tx| store::start(tx, &id)).await?)
    }

    async fn run(&self, watch: &Handle) -> Result<Produced, Failure> {
        pipeline::run(&self.deps.llm, &self.tool, &self.input, watch)
            .await
            .map_err(run::failure)
    }

    async fn settle(&self, ended: Result<Produced, Failure>) -> Result<Done, billing::Error> {
        let id = self.article_id.clone();
        // Rendering is CPU work on untrusted text: on the blocking pool, before the write.
        let ended = match ended {
            Ok(produced) => tokio::task::spawn_blocking(move || {
                let content = html::render(produced.body());
                (produced, content)
            })
            .await
            .map_err(|_| Failure::new("provider_error", "The article could not be rendered")),
            Err(failure) => Err(failure),
        };
        let row = self
            .deps
            .db
            .write(move |tx| match &ended {
                Ok((produced, content)) => Ok(store::complete(
                    tx,
                    &id,
                    &Written {
                        markdown: &produced.text,
                        content,
                        provider: produced.provider.as_str(),
                        tokens: i64::try_from(produced.tokens).unwrap_or(i64::MAX),
                    },
                )?),
                Err(failure) => store::fail(
                    tx,
                    &id,
                    &ArticleError {
                        code: failure.code.into(),
                        message: failure.message.clone(),
                    },
                    failure.provider,
                ),
            })
            .await?;
        let article = row.map(|r| r.article);
        Ok(match article {
            Some(a) if a.error.is_none() => Done {
                result: Value::String(a.content.unwrap_or_default()),
                error: None,
            },
            Some(a) => Done {
                result: Value::Null,
                error: a.error,
            },
            None => Done {
                result: Value::Null,
                error: Some(ArticleError {
                    code: "interrupted".into(),
                    message: "The article is gone".into(),
                }),
            },
        })
    }
}

/// Start-up recovery of articles: running ones are failed and refunded (their provider calls
/// are lost); queued ones are queued again while `seo_article` still offers standard mode.
pub struct Recovery {
    pub deps: Deps,
    pub tools: catalogue::Current,
}

#[async_trait::async_trait]
impl Recover for Recovery {
    fn kind(&self) -> &'static str {
        "article"
    }

    async fn recover(&self, runner: &Runner) -> anyhow::Result<(usize, usize)> {
        let (refunded, queued) = self
            .deps
            .db
            .write(|tx| {
                let refunded = store::interrupt_running(
                    tx,
                    &ArticleError {
                        code: "interrupted".into(),
                        message: "The server restarted before the article was ready; the raits were refunded".into(),
                    },
                )?;
                Ok::<_, billing::Error>((refunded, store::queued(tx)?))
            })
            .await?;
        let catalogue = self.tools.get();
        let tool = catalogue
            .tool(super::TOOL)
            .filter(|t| t.supports_modes.contains(&catalogue::Mode::Standard))
            .cloned();
        let (mut requeued, mut dropped) = (0, 0);
        for row in queued {
            let length = Length::parse(&row.article.length).unwrap_or(Length::Medium);
            let a = &row.article;
            let input = tool_input(&a.title, &a.keywords, &a.language, length);
            match &tool {
                Some(tool) if tool.validate(&input).is_empty() => {
                    runner.enqueue(Article::new(self.deps.clone(), tool.clone(), &row, input));
                    requeued += 1;
                }
                _ => {
                    let id = a.id.clone();
                    let error = ArticleError {
                        code: "interrupted".into(),
                        message: "Articles cannot be written now; the raits were refunded".into(),
                    };
                    self.deps
                        .db
                        .write(move |tx| store::fail(tx, &id, &error, None))
                        .await?;
                    dropped += 1;
                }
            }
        }
        Ok((refunded + dropped, requeued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_fits_the_tool() {
        let input = tool_input("Как выбрать пылесос", &[], "ru", Length::Short);
        assert_eq!(
            input,
            json!({"topic": "Как выбрать пылесос", "keywords": ["Как выбрать пылесос"], "length_words": 800})
        );
        let input = tool_input("Title", &["a".into(), "b".into()], "en", Length::Long);
        assert_eq!(input["keywords"], json!(["a", "b"]));
        assert_eq!(input["length_words"], 2500);
        assert!(input["audience"].as_str().unwrap().contains("«en»"));
    }
}
