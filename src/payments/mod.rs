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
pub mod money;
pub mod robokassa;
pub mod tbank;
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

    /// Asks the provider where a payment stands; `Ok(None)` when this provider cannot be
    /// asked (Robokassa) or does not know the payment yet.
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
