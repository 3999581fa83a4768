//! `/admin/tools`: per tool, what its runs of the last 7, 30 or 90 UTC days brought in against
//! what they cost at the providers — tokens used × the configured per-provider token prices
//! (`kopecks_per_1k_tokens`, estimates; 0 = unknown). One aggregate query grouped by tool and
//! provider; every sum stays in integers (raits, tokens, thousandths of a kopeck) until the
//! figures are formatted. Image providers have no configured price: their cost is «—».

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::Value;
use rusqlite::Connection;
use serde::Serialize;

use super::{Admin, context, view};
use crate::app::AppState;
use crate::config::Config;
use crate::db;
use crate::llm::ProviderId;
use crate::payments::money::roubles as rub;

/// The periods offered, in UTC days (today included); anything else asked for is the default.
const PERIODS: [i64; 3] = [7, 30, 90];
const DEFAULT_DAYS: i64 = 30;

/// Finished runs since `?1`, per tool and provider. `created_at >= ?1` is a range on the
/// `generation_sessions_created` index (migration 0009); no index covers the summed columns,
/// so each session in the period is read once from the table. The `+` keeps the planner off
/// `generation_sessions_tool`, which would spare the grouping sort by reading every session
/// ever made.
const GROUPS_SQL: &str = "select tool_id, provider_used,
            sum(status = 'completed'), sum(status = 'failed'), sum(tokens_used),
            sum(case when status = 'completed' then tokens_used else 0 end),
            sum(case when status = 'completed' then cost_raits else 0 end)
     from generation_sessions
     where created_at >= ?1 and status in ('completed', 'failed')
     group by +tool_id, provider_used";

/// One tool's runs through one provider (`None`: failed before any provider answered).
#[derive(Debug, Clone, PartialEq)]
struct Group {
    tool_id: String,
    provider: Option<String>,
    completed: i64,
    failed: i64,
    tokens: i64,
    completed_tokens: i64,
    revenue_raits: i64,
}

fn groups(c: &Connection, since: &str) -> Result<Vec<Group>, db::Error> {
    c.prepare_cached(GROUPS_SQL)?
        .query_map([since], |r| {
            Ok(Group {
                tool_id: r.get(0)?,
                provider: r.get(1)?,
                completed: r.get(2)?,
                failed: r.get(3)?,
                tokens: r.get(4)?,
                completed_tokens: r.get(5)?,
                revenue_raits: r.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db::Error::from)
}

/// The first `days=` of the query if it is one of [`PERIODS`]; anything else is the default
/// (read from the raw query, so that no query string can make the page an error).
fn period(raw: Option<&str>) -> i64 {
    let pairs: Vec<(String, String)> = raw
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    pairs
        .iter()
        .find(|(k, _)| k == "days")
        .and_then(|(_, v)| v.trim().parse::<i64>().ok())
        .filter(|d| PERIODS.contains(d))
        .unwrap_or(DEFAULT_DAYS)
}

/// The start of the period: midnight UTC `days - 1` days before `today`.
fn since(today: time::Date, days: i64) -> String {
    format!("{}T00:00:00Z", today - time::Duration::days(days - 1))
}

/// A provider's configured price in kopecks per 1,000 tokens; `None` when it is 0 (unknown)
/// or the provider is not a text provider (image providers have no token price).
fn price(config: &Config, provider: &str) -> Option<i64> {
    let kopecks = match ProviderId::parse(provider)? {
        ProviderId::OpenAi => config.openai.kopecks_per_1k_tokens,
        ProviderId::GigaChat => config.gigachat.kopecks_per_1k_tokens,
        ProviderId::YandexGpt => config.yandexgpt.kopecks_per_1k_tokens,
    };
    (kopecks > 0).then_some(kopecks)
}

/// What the report needs to know about a tool from the catalogue.
struct ToolInfo {
    name: Option<String>,
    image: bool,
}

/// Sums of a set of runs, in integers.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sums {
    completed: i64,
    failed: i64,
    tokens: i64,
    completed_tokens: i64,
    revenue_raits: i64,
    /// Tokens × kopecks per 1,000 tokens: thousandths of a kopeck, rounded only when shown.
    cost_millikopecks: i64,
    /// Runs through a provider with a price.
    priced_runs: i64,
    /// Runs through a provider without one (image providers, a price of 0).
    unpriced_runs: i64,
}

impl Sums {
    fn add(&mut self, g: &Group, price: Option<i64>) {
        self.completed += g.completed;
        self.failed += g.failed;
        self.tokens += g.tokens;
        self.completed_tokens += g.completed_tokens;
        self.revenue_raits += g.revenue_raits;
        let runs = g.completed + g.failed;
        match (price, &g.provider) {
            (Some(kopecks), _) => {
                self.cost_millikopecks += g.tokens * kopecks;
                self.priced_runs += runs;
            }
            // Failed before any provider answered: nothing to pay for.
            (None, None) => {}
            (None, Some(_)) => self.unpriced_runs += runs,
        }
    }

    fn add_sums(&mut self, other: &Sums) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.tokens += other.tokens;
        self.completed_tokens += other.completed_tokens;
        self.revenue_raits += other.revenue_raits;
        self.cost_millikopecks += other.cost_millikopecks;
        self.priced_runs += other.priced_runs;
        self.unpriced_runs += other.unpriced_runs;
    }

    /// The provider cost in kopecks, or `None` when none of the runs could be priced.
    fn cost_kopecks(&self) -> Option<i64> {
        (self.unpriced_runs == 0 || self.priced_runs > 0)
            .then(|| div_round(self.cost_millikopecks, 1000))
    }
}

/// `a / b` rounded half up, for `a >= 0`, `b > 0`.
fn div_round(a: i64, b: i64) -> i64 {
    (a + b / 2) / b
}

/// A tenth-precise quotient as text: `7 / 2` → `3.5`.
fn tenths(a: i64, b: i64) -> String {
    let t = div_round(a * 10, b);
    format!("{}.{}", t / 10, t % 10)
}

/// One line of the report, formatted for the template.
#[derive(Debug, Serialize, PartialEq)]
struct Line {
    tool_id: String,
    name: Option<String>,
    completed: i64,
    failed: i64,
    tokens: i64,
    revenue_raits: i64,
    revenue_rub: String,
    /// `None` is shown as «—»: image tools, providers without a price.
    cost_rub: Option<String>,
    margin_rub: Option<String>,
    negative: bool,
    /// Some runs went through a provider without a price: cost is a lower bound.
    partial: bool,
    unpriced_runs: i64,
    avg_price_raits: Option<String>,
    avg_tokens: Option<i64>,
}

fn line(tool_id: String, name: Option<String>, s: &Sums, raits_per_rub: i64, image: bool) -> Line {
    let revenue_kopecks = div_round(s.revenue_raits * 100, raits_per_rub);
    let cost = if image { None } else { s.cost_kopecks() };
    let margin = cost.map(|c| revenue_kopecks - c);
    Line {
        tool_id,
        name,
        completed: s.completed,
        failed: s.failed,
        tokens: s.tokens,
        revenue_raits: s.revenue_raits,
        revenue_rub: rub(revenue_kopecks),
        cost_rub: cost.map(rub),
        margin_rub: margin.map(rub),
        negative: margin.is_some_and(|m| m < 0),
        partial: cost.is_some() && s.unpriced_runs > 0,
        unpriced_runs: s.unpriced_runs,
        avg_price_raits: (s.completed > 0).then(|| tenths(s.revenue_raits, s.completed)),
        avg_tokens: (s.completed > 0).then(|| div_round(s.completed_tokens, s.completed)),
    }
}

/// One provider's runs in the period.
#[derive(Debug, Serialize, PartialEq)]
struct ProviderLine {
    /// `None`: runs that failed before any provider answered.
    provider: Option<String>,
    runs: i64,
    tokens: i64,
    /// The configured price, roubles per 1,000 tokens.
    price_rub: Option<String>,
    cost_rub: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Report {
    tools: Vec<Line>,
    total: Line,
    providers: Vec<ProviderLine>,
}

/// The report from the grouped rows; `info` tells a tool's name and whether it draws pictures.
fn report(
    rows: &[Group],
    price: impl Fn(&str) -> Option<i64>,
    info: impl Fn(&str) -> ToolInfo,
    raits_per_rub: i64,
) -> Report {
    let mut by_tool: std::collections::BTreeMap<&str, Sums> = Default::default();
    let mut by_provider: std::collections::BTreeMap<Option<&str>, (i64, i64)> = Default::default();
    for g in rows {
        let p = g.provider.as_deref().and_then(&price);
        by_tool.entry(&g.tool_id).or_default().add(g, p);
        let entry = by_provider.entry(g.provider.as_deref()).or_default();
        entry.0 += g.completed + g.failed;
        entry.1 += g.tokens;
    }
    let mut total = Sums::default();
    let mut tools: Vec<Line> = by_tool
        .into_iter()
        .map(|(id, sums)| {
            let tool = info(id);
            let mut counted = sums;
            if tool.image {
                // Pictures have no token price: their runs never count as priced.
                counted.unpriced_runs += counted.priced_runs;
                counted.priced_runs = 0;
                counted.cost_millikopecks = 0;
            }
            total.add_sums(&counted);
            line(
                id.to_owned(),
                tool.name,
                &counted,
                raits_per_rub,
                tool.image,
            )
        })
        .collect();
    tools.sort_by(|a, b| {
        b.revenue_raits
            .cmp(&a.revenue_raits)
            .then_with(|| a.tool_id.cmp(&b.tool_id))
    });
    let providers = by_provider
        .into_iter()
        .map(|(provider, (runs, tokens))| {
            let p = provider.and_then(&price);
            ProviderLine {
                provider: provider.map(str::to_owned),
                runs,
                tokens,
                price_rub: p.map(rub),
                cost_rub: match (provider, p) {
                    (Some(_), Some(kopecks)) => Some(rub(div_round(tokens * kopecks, 1000))),
                    (None, _) => Some(rub(0)),
                    (Some(_), None) => None,
                },
            }
        })
        .collect();
    Report {
        tools,
        total: line(String::new(), None, &total, raits_per_rub, false),
        providers,
    }
}

pub async fn page(State(state): State<AppState>, admin: Admin, RawQuery(q): RawQuery) -> Response {
    let days = period(q.as_deref());
    let today = time::OffsetDateTime::now_utc().date();
    let from = since(today, days);
    let rows = {
        let from = from.clone();
        state.db.read(move |c| groups(c, &from)).await
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "admin tools report");
            return view::page_with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error.html",
                Value::from_iter([("message", "Не удалось прочитать базу данных")]),
            );
        }
    };
    let catalogue = state.tools.get();
    let config = &state.config;
    let report = report(
        &rows,
        |provider| price(config, provider),
        |id| match catalogue.tool(id) {
            Some(tool) => ToolInfo {
                name: Some(tool.name.clone()),
                image: tool.is_image_tool(),
            },
            None => ToolInfo {
                name: None,
                image: false,
            },
        },
        config.payments.raits_per_rub,
    );
    view::page(
        "tools.html",
        context(
            &admin,
            "tools",
            vec![
                ("report", Value::from_serialize(&report)),
                ("days", Value::from(days)),
                ("periods", Value::from_iter(PERIODS)),
                ("first_day", Value::from(from[..10].to_owned())),
                ("last_day", Value::from(today.to_string())),
                ("raits_per_rub", Value::from(config.payments.raits_per_rub)),
            ],
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(
        tool: &str,
        provider: Option<&str>,
        runs: (i64, i64),
        tokens: (i64, i64),
        raits: i64,
    ) -> Group {
        Group {
            tool_id: tool.into(),
            provider: provider.map(str::to_owned),
            completed: runs.0,
            failed: runs.1,
            tokens: tokens.0,
            completed_tokens: tokens.1,
            revenue_raits: raits,
        }
    }

    fn prices(provider: &str) -> Option<i64> {
        match provider {
            "openai" => Some(250),
            "gigachat" => Some(150),
            _ => None,
        }
    }

    fn info(id: &str) -> ToolInfo {
        ToolInfo {
            name: Some(format!("Имя {id}")),
            image: id == "image_generate",
        }
    }

    #[test]
    fn the_period_is_one_of_three_and_never_an_error() {
        assert_eq!(period(None), 30);
        assert_eq!(period(Some("days=7")), 7);
        assert_eq!(period(Some("days=90&x=1")), 90);
        assert_eq!(period(Some("days=abc")), 30);
        assert_eq!(period(Some("days=31")), 30);
        assert_eq!(period(Some("days=-7")), 30);
        assert_eq!(period(Some("days=7&days=90")), 7, "the first one");
        assert_eq!(period(Some("%zz=&&=")), 30);
        let today = time::macros::date!(2026 - 11 - 27);
        assert_eq!(since(today, 7), "2026-11-21T00:00:00Z");
        assert_eq!(since(today, 30), "2026-10-29T00:00:00Z");
    }

    #[test]
    fn money_reads_in_roubles_and_kopecks() {
        assert_eq!(rub(0), "0.00");
        assert_eq!(rub(5), "0.05");
        assert_eq!(rub(-150), "-1.50");
        assert_eq!(rub(123_456), "1234.56");
        assert_eq!(tenths(7, 2), "3.5");
        assert_eq!(tenths(10, 3), "3.3");
        assert_eq!(div_round(1500, 1000), 2);
        assert_eq!(div_round(1499, 1000), 1);
    }

    #[test]
    fn cost_is_tokens_times_each_providers_price() {
        let rows = [
            // 2 runs at 5 raits through OpenAI, 90 tokens (45 each); one failed with 10 tokens.
            group("spell_check", Some("openai"), (2, 1), (100, 90), 10),
            // A fallback to GigaChat: 1,000 tokens at 1.50 ₽.
            group("spell_check", Some("gigachat"), (1, 0), (1000, 1000), 5),
            // Failed before any provider: no cost.
            group("spell_check", None, (0, 1), (0, 0), 0),
            group("image_generate", Some("kandinsky"), (3, 0), (0, 0), 30),
            group("letter", Some("yandexgpt"), (1, 0), (700, 700), 1),
            group("abstract", Some("openai"), (1, 0), (20_000, 20_000), 50),
        ];
        let r = report(&rows, prices, info, 10);
        let ids: Vec<&str> = r.tools.iter().map(|l| l.tool_id.as_str()).collect();
        assert_eq!(
            ids,
            ["abstract", "image_generate", "spell_check", "letter"],
            "by revenue"
        );

        let spell = &r.tools[2];
        assert_eq!(spell.name.as_deref(), Some("Имя spell_check"));
        assert_eq!((spell.completed, spell.failed, spell.tokens), (3, 2, 1100));
        assert_eq!(spell.revenue_raits, 15);
        assert_eq!(spell.revenue_rub, "1.50");
        // 100 × 2.50 ₽ / 1000 + 1000 × 1.50 ₽ / 1000 = 0.25 + 1.50.
        assert_eq!(spell.cost_rub.as_deref(), Some("1.75"));
        assert_eq!(spell.margin_rub.as_deref(), Some("-0.25"));
        assert!(spell.negative && !spell.partial);
        assert_eq!(spell.avg_price_raits.as_deref(), Some("5.0"));
        assert_eq!(spell.avg_tokens, Some(363), "1090 / 3");

        let image = &r.tools[1];
        assert_eq!(image.cost_rub, None, "pictures have no token price");
        assert_eq!(image.margin_rub, None);
        assert_eq!(image.revenue_rub, "3.00");

        let letter = &r.tools[3];
        assert_eq!(letter.cost_rub, None, "YandexGPT has no price here");
        assert!(!letter.negative);

        let abs = &r.tools[0];
        assert_eq!(abs.cost_rub.as_deref(), Some("50.00"));
        assert_eq!(abs.margin_rub.as_deref(), Some("-45.00"));

        // Totals: priced cost of the text tools, flagged as partial (4 unpriced runs).
        assert_eq!(r.total.revenue_raits, 96);
        assert_eq!(r.total.revenue_rub, "9.60");
        assert_eq!(r.total.cost_rub.as_deref(), Some("51.75"));
        assert_eq!(r.total.margin_rub.as_deref(), Some("-42.15"));
        assert!(r.total.partial && r.total.negative);
        assert_eq!(r.total.unpriced_runs, 4);
        assert_eq!((r.total.completed, r.total.failed), (8, 2));

        let providers: Vec<(Option<&str>, i64, i64, Option<&str>)> = r
            .providers
            .iter()
            .map(|p| {
                (
                    p.provider.as_deref(),
                    p.runs,
                    p.tokens,
                    p.cost_rub.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            providers,
            [
                (None, 1, 0, Some("0.00")),
                (Some("gigachat"), 1, 1000, Some("1.50")),
                (Some("kandinsky"), 3, 0, None),
                (Some("openai"), 4, 20_100, Some("50.25")),
                (Some("yandexgpt"), 1, 700, None),
            ]
        );
    }

    #[test]
    fn a_tool_partly_priced_shows_a_lower_bound() {
        let rows = [
            group("letter", Some("openai"), (1, 0), (1000, 1000), 3),
            group("letter", Some("yandexgpt"), (1, 0), (1000, 1000), 3),
        ];
        let r = report(&rows, prices, info, 10);
        let l = &r.tools[0];
        assert_eq!(l.cost_rub.as_deref(), Some("2.50"));
        assert!(l.partial);
        assert_eq!(l.unpriced_runs, 1);
        assert_eq!(l.margin_rub.as_deref(), Some("-1.90"));
    }

    #[test]
    fn prices_come_from_the_configuration_and_zero_is_unknown() {
        let mut config = Config::default();
        config.openai.kopecks_per_1k_tokens = 250;
        config.yandexgpt.kopecks_per_1k_tokens = 0;
        assert_eq!(price(&config, "openai"), Some(250));
        assert_eq!(price(&config, "gigachat"), Some(150));
        assert_eq!(price(&config, "yandexgpt"), None);
        assert_eq!(price(&config, "kandinsky"), None);
    }

    /// The period's sessions are found through the `created_at` index, not a table scan.
    #[test]
    fn the_report_reads_the_period_through_an_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate::apply(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("explain query plan {GROUPS_SQL}"))
            .unwrap()
            .query_map(["2026-01-01T00:00:00Z"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join(" | ");
        assert!(
            plan.contains("USING INDEX generation_sessions_created (created_at>?)"),
            "{plan}"
        );
        groups(&conn, "2026-01-01T00:00:00Z").unwrap();
    }
}
