//! What every payment provider module speaks: an [`Order`] to start, the [`Started`] payment,
//! an [`Incoming`] webhook call turned into a verified [`Notice`] (or a [`Rejection`]), and the
//! [`Outcome`] each provider answers in its own way.
//!
//! Provider modules know protocols, not users or money: they never touch the database. The
//! core ([`super::settle`]) matches a notice to the stored payment and moves the money.

use axum::http::{HeaderMap, Method};

/// Provider slugs (CONTRACT §4 "Payments").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slug {
    YooKassa,
    Robokassa,
    CloudPayments,
    TBank,
}

impl Slug {
    pub const ALL: [Slug; 4] = [
        Slug::YooKassa,
        Slug::Robokassa,
        Slug::CloudPayments,
        Slug::TBank,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Slug::YooKassa => "yookassa",
            Slug::Robokassa => "robokassa",
            Slug::CloudPayments => "cloudpayments",
            Slug::TBank => "tbank",
        }
    }

    /// The name a payer knows.
    pub fn name(self) -> &'static str {
        match self {
            Slug::YooKassa => "ЮKassa",
            Slug::Robokassa => "Robokassa",
            Slug::CloudPayments => "CloudPayments",
            Slug::TBank => "Т-Банк",
        }
    }

    pub fn parse(s: &str) -> Option<Slug> {
        Slug::ALL.into_iter().find(|slug| slug.as_str() == s)
    }
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A top-up to start at a provider: the payment row already exists (`pending`).
#[derive(Debug, Clone)]
pub struct Order<'a> {
    /// Our payment id (UUID v7, 36 characters): YooKassa `metadata.payment_id`, CloudPayments
    /// `InvoiceId`, T-Bank `OrderId`, Robokassa `Shp_payment_id`.
    pub payment_id: &'a str,
    /// Our integer number of the payment, unique, 1 … 2^31−1: Robokassa's `InvId`.
    pub number: i64,
    pub user_id: &'a str,
    /// The payer's email (receipts, CloudPayments `Email`).
    pub email: &'a str,
    /// Whole roubles × 100.
    pub amount_kopecks: i64,
    /// Shown to the payer, at most 100 characters.
    pub description: &'a str,
    /// Where the browser goes back: `FRONTEND_URL/payments/return?payment_id=<id>`.
    pub return_url: &'a str,
    /// Our webhook for this provider: `<public url>/api/v1/payments/webhook/<slug>`.
    pub webhook_url: &'a str,
    /// The fiscal receipt to attach, when `EASY_WRITER_RECEIPTS=on`.
    pub receipt: Option<&'a Receipt>,
}

/// The seller's side of a fiscal receipt (CONTRACT §2, reference §5); the item is the order's
/// amount, quantity 1, and the customer the order's email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub taxation: Taxation,
    pub vat: Vat,
    pub item_name: String,
}

/// Tax systems (`EASY_WRITER_RECEIPT_TAXATION`), spelled as Robokassa and T-Bank spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taxation {
    Osn,
    UsnIncome,
    UsnIncomeOutcome,
    Esn,
    Patent,
}

impl Taxation {
    pub const ALL: [Taxation; 5] = [
        Taxation::Osn,
        Taxation::UsnIncome,
        Taxation::UsnIncomeOutcome,
        Taxation::Esn,
        Taxation::Patent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Taxation::Osn => "osn",
            Taxation::UsnIncome => "usn_income",
            Taxation::UsnIncomeOutcome => "usn_income_outcome",
            Taxation::Esn => "esn",
            Taxation::Patent => "patent",
        }
    }

    pub fn parse(s: &str) -> Option<Taxation> {
        Taxation::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// VAT codes (`EASY_WRITER_RECEIPT_VAT`), spelled as Robokassa spells them; `Vat22`/`Vat122`
/// since 1 January 2026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vat {
    None,
    Vat0,
    Vat5,
    Vat7,
    Vat10,
    Vat20,
    Vat22,
    Vat105,
    Vat107,
    Vat110,
    Vat120,
    Vat122,
}

impl Vat {
    pub const ALL: [Vat; 12] = [
        Vat::None,
        Vat::Vat0,
        Vat::Vat5,
        Vat::Vat7,
        Vat::Vat10,
        Vat::Vat20,
        Vat::Vat22,
        Vat::Vat105,
        Vat::Vat107,
        Vat::Vat110,
        Vat::Vat120,
        Vat::Vat122,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Vat::None => "none",
            Vat::Vat0 => "vat0",
            Vat::Vat5 => "vat5",
            Vat::Vat7 => "vat7",
            Vat::Vat10 => "vat10",
            Vat::Vat20 => "vat20",
            Vat::Vat22 => "vat22",
            Vat::Vat105 => "vat105",
            Vat::Vat107 => "vat107",
            Vat::Vat110 => "vat110",
            Vat::Vat120 => "vat120",
            Vat::Vat122 => "vat122",
        }
    }

    pub fn parse(s: &str) -> Option<Vat> {
        Vat::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A payment the provider has opened.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's id of the payment (YooKassa `id`, T-Bank `PaymentId`, CloudPayments
    /// order `Id`; Robokassa: our number as text). Unique per provider.
    pub external_id: String,
    /// Where to send the payer.
    pub payment_url: String,
    /// The provider's own status word, as it said it (`pending`, `NEW`, …).
    pub provider_status: String,
    /// CloudPayments: the parameters for its JS widget.
    pub widget: Option<serde_json::Value>,
}

/// Why a provider call failed: down, timed out, refused (4xx) or answered something we cannot
/// read. The message is for the log: it never holds a secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

/// A webhook call as it arrived, before anything is trusted.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub method: &'a Method,
    /// The raw query string (Robokassa's GET ResultURL), without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The raw body bytes, exactly as sent.
    pub body: &'a [u8],
    /// CloudPayments: the notification type from the path (`check`, `pay`, `fail`,
    /// `confirm`, `refund`, `cancel`); `None` for the other providers.
    pub kind: Option<&'a str>,
}

/// How the core finds the payment a notice is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Find {
    /// Our payment id (CloudPayments `InvoiceId`, T-Bank `OrderId`, YooKassa metadata).
    Id(String),
    /// Our number (Robokassa `InvId`).
    Number(i64),
    /// The provider's id ([`Started::external_id`]).
    External(String),
}

/// What a verified notification says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CloudPayments Check: may this payment go ahead? (Answered, nothing changes.)
    Check,
    /// Money taken, final (YooKassa `succeeded`, Robokassa ResultURL, CloudPayments Pay or
    /// Confirm with `Completed`, T-Bank `CONFIRMED` with `Success`).
    Paid,
    /// The payment ended without money (YooKassa `canceled`, T-Bank `REJECTED`, `CANCELED`,
    /// `DEADLINE_EXPIRED`, `AUTH_FAIL`, `REVERSED`).
    Failed,
    /// Nothing final: recorded, acknowledged, no money moves (T-Bank `AUTHORIZED`, a
    /// CloudPayments Fail of one attempt the payer may retry, …).
    Progress,
    /// The provider returned money to the payer; `refund_id` is unique per refund at the
    /// provider (a payment may be refunded in parts).
    Refunded {
        refund_id: String,
        amount_kopecks: i64,
    },
}

/// A notification whose authenticity is established (signature checked, or for YooKassa the
/// payment re-fetched from its API with our credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub find: Find,
    pub event: Event,
    /// The amount the provider says was paid; must equal the stored amount for `Paid` and
    /// `Check` (`None` only where the provider does not state it for this event).
    pub amount_kopecks: Option<i64>,
    /// Must be `RUB` when stated.
    pub currency: Option<String>,
    /// The provider's payment id, cross-checked against the stored one when both exist.
    pub external_id: Option<String>,
    /// Our payment id as the provider echoes it beside `find` (Robokassa's signed
    /// `Shp_payment_id`); must be the payment's id when stated, so a number reused after a
    /// restore from backup cannot credit another payment.
    pub payment_id: Option<String>,
    /// The payer's account as the provider echoes it (CloudPayments `AccountId`); must be the
    /// payment's user when stated.
    pub account: Option<String>,
    /// The provider's own status word, stored for the operator.
    pub provider_status: String,
    /// The provider says this was a test payment (stored for the operator).
    pub test: bool,
}

/// Why a webhook call is refused; nothing changes either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Signature missing or wrong; for YooKassa, the payment does not exist at the provider.
    #[error("forged: {0}")]
    Forged(String),
    /// Not the provider's format (bad JSON, missing fields, unknown notification type).
    #[error("malformed: {0}")]
    Malformed(String),
    /// We could not ask the provider (YooKassa re-fetch failed): the provider should retry.
    #[error("unverifiable: {0}")]
    Unverifiable(String),
}

/// What the core decided about a call, for the provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Processed (or already processed): the provider should stop sending it. `number` is the
    /// payment's number (Robokassa answers `OK<InvId>`).
    Accepted {
        number: i64,
    },
    Rejected(Refused),
}

/// Why the core (or the provider module) refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Forged,
    Malformed,
    /// No payment of ours matches.
    UnknownPayment,
    /// Amount, currency, account or provider id differ from the stored payment.
    Mismatch,
    /// CloudPayments Check of a payment that is no longer pending.
    NotPending,
    /// We could not verify it now; the provider should retry.
    Unverifiable,
}

impl From<&Rejection> for Refused {
    fn from(r: &Rejection) -> Refused {
        match r {
            Rejection::Forged(_) => Refused::Forged,
            Rejection::Malformed(_) => Refused::Malformed,
            Rejection::Unverifiable(_) => Refused::Unverifiable,
        }
    }
}

/// What the provider says about a payment when asked (reconciliation); `None` from
/// [`Gateway::state`](super::Gateway::state) when the provider cannot be asked.
pub type State = Notice;
