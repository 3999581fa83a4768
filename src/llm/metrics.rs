//! Per-provider metrics: requests by outcome, latency, tokens — exposed at `GET /metrics` in
//! Prometheus text format (CONTRACT §3) with names prefixed `easy_writer_`. Image providers
//! (`images`) record their calls here too, in their own `easy_writer_image_…` families, so one
//! registry renders everything; this module knows them only as label values.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::ProviderId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    provider: String,
    /// `ok`, or the error class (`timeout`, `server`, `rate_limited`, `auth`, …).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Provider {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tokens {
    provider: String,
    /// `prompt` or `completion`.
    kind: String,
}

/// The LLM and image provider metrics and the registry that renders them.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Outcome, Counter>,
    duration: Family<Provider, Histogram>,
    tokens: Family<Tokens, Counter>,
    image_requests: Family<Outcome, Counter>,
    image_duration: Family<Provider, Histogram>,
    /// The same calls summed per provider, for the admin dashboard.
    totals: Mutex<std::collections::BTreeMap<(&'static str, String), Totals>>,
}

/// A provider's calls since start: how many, how many failed, and their summed latency.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// One provider's [`Totals`], `kind` being `text` or `image`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderTotals {
    pub kind: &'static str,
    pub provider: String,
    pub requests: u64,
    pub errors: u64,
    /// Mean latency in milliseconds.
    pub mean_ms: u64,
}

/// Latency buckets in seconds; an image job polls for up to minutes.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 90.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<Outcome, Counter>::default();
        let duration =
            Family::<Provider, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        let image_requests = Family::<Outcome, Counter>::default();
        let image_duration = Family::<Provider, Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS.into_iter().chain([120.0, 180.0]))
        });
        let tokens = Family::<Tokens, Counter>::default();
        let mut registry = Registry::with_prefix("easy_writer");
        registry.register(
            "llm_requests",
            "Provider calls (attempts) by outcome",
            requests.clone(),
        );
        registry.register(
            "llm_request_duration_seconds",
            "Provider call latency",
            duration.clone(),
        );
        registry.register("llm_tokens", "Tokens used, by kind", tokens.clone());
        registry.register(
            "image_requests",
            "Image provider calls (attempts, polling included) by outcome",
            image_requests.clone(),
        );
        registry.register(
            "image_request_duration_seconds",
            "Image provider call latency, polling included",
            image_duration.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            duration,
            tokens,
            image_requests,
            image_duration,
            totals: Mutex::default(),
        }
    }
}

impl Metrics {
    fn total(&self, kind: &'static str, provider: &str, outcome: &str, elapsed: Duration) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let t = totals.entry((kind, provider.to_owned())).or_default();
        t.requests += 1;
        t.errors += u64::from(outcome != "ok");
        t.seconds += elapsed.as_secs_f64();
    }

    /// Calls per provider since start, by kind (`image`, `text`) and name.
    pub fn totals(&self) -> Vec<ProviderTotals> {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .iter()
            .map(|((kind, provider), t)| ProviderTotals {
                kind,
                provider: provider.clone(),
                requests: t.requests,
                errors: t.errors,
                mean_ms: if t.requests == 0 {
                    0
                } else {
                    (t.seconds * 1000.0 / t.requests as f64) as u64
                },
            })
            .collect()
    }

    /// Records one provider call.
    pub fn record(&self, provider: ProviderId, outcome: &str, elapsed: Duration) {
        self.total("text", provider.as_str(), outcome, elapsed);
        self.requests
            .get_or_create(&Outcome {
                provider: provider.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
        self.duration
            .get_or_create(&Provider {
                provider: provider.as_str().into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one image provider call (`provider` is its configuration name, `outcome` `ok` or
    /// the failure class).
    pub fn record_image(&self, provider: &str, outcome: &str, elapsed: Duration) {
        self.total("image", provider, outcome, elapsed);
        self.image_requests
            .get_or_create(&Outcome {
                provider: provider.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.image_duration
            .get_or_create(&Provider {
                provider: provider.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_tokens(&self, provider: ProviderId, usage: &super::Usage) {
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&Tokens {
                    provider: provider.as_str().into(),
                    kind: kind.into(),
                })
                .inc_by(n);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
