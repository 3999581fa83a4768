//! Top-ups: payments through YooKassa, Robokassa, CloudPayments and T-Bank, credited exactly
//! once (CONTRACT §4 "Payments", `reference/payments.md`).
//!
//! A payment row is opened `pending` before the provider is asked ([`store`]); the provider
//! modules ([`yookassa`], [`robokassa`], [`cloudpayments`], [`tbank`]) speak each protocol and
//! turn a webhook into a verified [`gateway::Notice`]; the core ([`settle`]) matches the notice
//! to the row and moves the money in one write transaction. [`reconcile`] asks providers about
//! payments whose notification never came.

pub mod cloudpayments;
pub mod gateway;
mod http;
pub mod money;
pub mod reconcile;
pub mod robokassa;
pub mod routes;
pub mod settle;
pub mod store;
pub mod tbank;
pub mod webhook;
pub mod yookassa;

use std::time::Duration;

use crate::config::Config;
pub use gateway::{
    Event, Failure, Find, Incoming, Notice, Order, Outcome, Receipt, Refused, Rejection, Slug,
    Started, State, Taxation, Vat,
};

/// Per request to a payment provider's API.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// What a provider needs to be asked about one of our payments.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    pub payment_id: &'a str,
    pub number: i64,
    pub external_id: Option<&'a str>,
}

/// One configured provider.
pub enum Gateway {
    YooKassa(yookassa::YooKassa),
    Robokassa(robokassa::Robokassa),
    CloudPayments(cloudpayments::CloudPayments),
    TBank(tbank::TBank),
}

impl Gateway {
    pub fn slug(&self) -> Slug {
        match self {
            Gateway::YooKassa(_) => Slug::YooKassa,
            Gateway::Robokassa(_) => Slug::Robokassa,
            Gateway::CloudPayments(_) => Slug::CloudPayments,
            Gateway::TBank(_) => Slug::TBank,
        }
    }

    /// Opens the payment at the provider.
    pub async fn start(&self, order: &Order<'_>) -> Result<Started, Failure> {
        match self {
            Gateway::YooKassa(p) => p.start(order).await,
            Gateway::Robokassa(p) => p.start(order).await,
            Gateway::CloudPayments(p) => p.start(order).await,
            Gateway::TBank(p) => p.start(order).await,
        }
    }

    /// Authenticates and reads a webhook call.
    pub async fn notice(&self, incoming: &Incoming<'_>) -> Result<Notice, Rejection> {
        match self {
            Gateway::YooKassa(p) => p.notice(incoming).await,
            Gateway::Robokassa(p) => p.notice(incoming).await,
            Gateway::CloudPayments(p) => p.notice(incoming).await,
            Gateway::TBank(p) => p.notice(incoming).await,
        }
    }

    /// Asks the provider where a payment stands (reconciliation); `Ok(None)` when the
    /// provider does not know the payment yet.
    pub async fn state(&self, known: Known<'_>) -> Result<Option<State>, Failure> {
        match self {
            Gateway::YooKassa(p) => p.state(known).await,
            Gateway::Robokassa(p) => p.state(known).await,
            Gateway::CloudPayments(p) => p.state(known).await,
            Gateway::TBank(p) => p.state(known).await,
        }
    }
}

/// The configured providers, in the contract's order.
pub fn gateways(config: &Config) -> anyhow::Result<Vec<Gateway>> {
    let http = reqwest::Client::builder()
        .timeout(PROVIDER_TIMEOUT)
        // A payment API that redirects is misconfigured; following would turn a POST into a GET.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut out = Vec::new();
    if let Some(p) = yookassa::YooKassa::from_config(config, http.clone()) {
        out.push(Gateway::YooKassa(p));
    }
    if let Some(p) = robokassa::Robokassa::from_config(config, http.clone()) {
        out.push(Gateway::Robokassa(p));
    }
    if let Some(p) = cloudpayments::CloudPayments::from_config(config, http.clone()) {
        out.push(Gateway::CloudPayments(p));
    }
    if let Some(p) = tbank::TBank::from_config(config, http) {
        out.push(Gateway::TBank(p));
    }
    Ok(out)
}

/// The configured providers with what the routes need around them.
pub struct Payments {
    gateways: Vec<Gateway>,
    pub min_rub: i64,
    pub max_rub: i64,
    pub raits_per_rub: i64,
    receipt: Option<Receipt>,
    frontend_url: String,
    public_url: String,
    /// Payments whose provider was asked lately on their owner's request, so a status page
    /// polling every second asks the provider at most every [`ASK_INTERVAL`].
    asked: moka::sync::Cache<String, ()>,
    /// Refused webhook calls logged per client IP and minute: a flood of forgeries must not
    /// fill the disk with log rows.
    pub refusals_logged: crate::auth::throttle::Throttle,
}

/// Refused webhook calls from one IP logged per minute; the rest are answered, not stored.
pub const REFUSALS_LOGGED_PER_MINUTE: u32 = 60;

/// How often a status request may ask the provider about the same payment.
pub const ASK_INTERVAL: Duration = Duration::from_secs(10);

impl Payments {
    pub fn from_config(config: &Config) -> anyhow::Result<Payments> {
        Ok(Payments {
            gateways: gateways(config)?,
            min_rub: config.payments.payment_min_rub,
            max_rub: config.payments.payment_max_rub,
            raits_per_rub: config.payments.raits_per_rub,
            receipt: config.payments.receipt(),
            frontend_url: config.server.frontend_origin().to_owned(),
            public_url: config.server.public_url(),
            asked: moka::sync::Cache::builder()
                .time_to_live(ASK_INTERVAL)
                // Keys are UUIDs: about 100 bytes each with moka's overhead.
                .weigher(|k: &String, _| u32::try_from(k.len() + 64).unwrap_or(u32::MAX))
                .max_capacity(4 * 1024 * 1024)
                .build(),
            refusals_logged: crate::auth::throttle::Throttle::new(
                Duration::from_secs(60),
                1024 * 1024,
            ),
        })
    }

    pub fn gateway(&self, slug: Slug) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.slug() == slug)
    }

    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }

    /// Where the payer's browser comes back to.
    pub fn return_url(&self, payment_id: &str) -> String {
        format!(
            "{}/payments/return?payment_id={payment_id}",
            self.frontend_url
        )
    }

    /// The webhook URL given to a provider.
    pub fn webhook_url(&self, slug: Slug) -> String {
        format!("{}/api/v1/payments/webhook/{slug}", self.public_url)
    }

    /// True at most once per [`ASK_INTERVAL`] for a payment.
    pub fn may_ask(&self, payment_id: &str) -> bool {
        let entry = self.asked.entry(payment_id.to_owned()).or_insert(());
        entry.is_fresh()
    }
}
