//! Where a verified notice moves money: one write transaction that finds the payment, checks
//! it against the notice, and credits, fails or refunds it at most once.

use rusqlite::Connection;

use super::store::{self, Payment};
use super::{Event, Notice, Outcome, Refused, Slug};
use crate::billing::{self, Kind, ledger};

/// What [`apply`] did, for the provider's answer and the webhook log.
#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    /// `credited`, `duplicate`, `failed`, `refunded`, `progress`, `checked`, `ignored`, or
    /// `rejected:<why>`.
    pub verdict: &'static str,
    pub payment_id: Option<String>,
    pub detail: Option<String>,
}

impl Applied {
    fn accepted(payment: &Payment, verdict: &'static str) -> Applied {
        Applied {
            outcome: Outcome::Accepted {
                number: payment.number,
            },
            verdict,
            payment_id: Some(payment.id.clone()),
            detail: None,
        }
    }

    fn refused(payment: Option<&Payment>, why: Refused, detail: String) -> Applied {
        Applied {
            outcome: Outcome::Rejected(why),
            verdict: verdict_of(why),
            payment_id: payment.map(|p| p.id.clone()),
            detail: Some(detail),
        }
    }
}

pub fn verdict_of(why: Refused) -> &'static str {
    match why {
        Refused::Forged => "rejected:forged",
        Refused::Malformed => "rejected:malformed",
        Refused::UnknownPayment => "rejected:unknown_payment",
        Refused::Mismatch => "rejected:mismatch",
        Refused::NotPending => "rejected:not_pending",
        Refused::Unverifiable => "rejected:unverifiable",
    }
}

/// The ledger reference of a payment's credit: the provider's name and its id of the payment
/// (Robokassa and T-Bank ids are small integers that could collide across providers).
pub fn credit_reference(payment: &Payment, external_id: Option<&str>) -> String {
    let external = external_id
        .or(payment.external_id.as_deref())
        .map(str::to_owned)
        .unwrap_or_else(|| payment.number.to_string());
    format!("{}:{external}", payment.provider)
}

/// Applies `notice` from `provider` inside `tx`. Nothing changes unless the notice matches
/// the stored payment; a payment is credited only by moving it to `completed` in the same
/// transaction as its `topup` row.
pub fn apply(tx: &Connection, provider: Slug, notice: &Notice) -> Result<Applied, billing::Error> {
    let Some(payment) = store::find(tx, provider, &notice.find)? else {
        return Ok(Applied::refused(
            None,
            Refused::UnknownPayment,
            format!("no {provider} payment matches {:?}", notice.find),
        ));
    };
    if let Some(why) = mismatch(&payment, notice) {
        tracing::warn!(payment.id = %payment.id, %provider, why, "payment notice does not match");
        return Ok(Applied::refused(
            Some(&payment),
            Refused::Mismatch,
            why.into(),
        ));
    }
    match &notice.event {
        Event::Check => {
            if payment.status != "pending" {
                return Ok(Applied::refused(
                    Some(&payment),
                    Refused::NotPending,
                    format!("the payment is {}", payment.status),
                ));
            }
            if notice.amount_kopecks != Some(payment.amount_kopecks) {
                return Ok(amount_mismatch(&payment, notice));
            }
            Ok(Applied::accepted(&payment, "checked"))
        }
        Event::Paid => {
            if notice.amount_kopecks != Some(payment.amount_kopecks) {
                return Ok(amount_mismatch(&payment, notice));
            }
            if !store::complete(
                tx,
                &payment.id,
                notice.external_id.as_deref(),
                &notice.provider_status,
                notice.test,
            )? {
                return Ok(Applied::accepted(&payment, "duplicate"));
            }
            let reference = credit_reference(&payment, notice.external_id.as_deref());
            let description = format!(
                "Пополнение через {} (платёж № {})",
                provider.name(),
                payment.number
            );
            ledger::record(
                tx,
                &ledger::Entry {
                    user_id: &payment.user_id,
                    kind: Kind::Topup,
                    amount: payment.amount_raits,
                    description: Some(&description),
                    payment_id: Some(&payment.id),
                    reference: Some(&reference),
                },
            )?;
            tracing::info!(payment.id = %payment.id, %provider, raits = payment.amount_raits, "payment credited");
            Ok(Applied::accepted(&payment, "credited"))
        }
        Event::Failed => {
            let failed = store::fail(
                tx,
                &payment.id,
                Some(&notice.provider_status),
                &format!("{provider}: {}", notice.provider_status),
            )?;
            Ok(Applied::accepted(
                &payment,
                if failed { "failed" } else { "ignored" },
            ))
        }
        Event::Progress => {
            if payment.status == "pending" {
                store::touch(tx, &payment.id, Some(&notice.provider_status), false)?;
            }
            Ok(Applied::accepted(&payment, "progress"))
        }
        Event::Refunded {
            refund_id,
            amount_kopecks,
        } => refund(tx, provider, &payment, refund_id, *amount_kopecks),
    }
}

/// Why `notice` cannot be about `payment`, if it cannot.
fn mismatch(payment: &Payment, notice: &Notice) -> Option<&'static str> {
    if notice
        .currency
        .as_deref()
        .is_some_and(|c| !c.eq_ignore_ascii_case("RUB"))
    {
        return Some("currency is not RUB");
    }
    if notice
        .payment_id
        .as_deref()
        .is_some_and(|id| id != payment.id)
    {
        return Some("payment id differs");
    }
    if notice
        .account
        .as_deref()
        .is_some_and(|a| a != payment.user_id)
    {
        return Some("account is not the payment's user");
    }
    if let (Some(theirs), Some(ours)) = (
        notice.external_id.as_deref(),
        payment.external_id.as_deref(),
    ) && theirs != ours
    {
        return Some("provider payment id differs");
    }
    None
}

fn amount_mismatch(payment: &Payment, notice: &Notice) -> Applied {
    tracing::warn!(
        payment.id = %payment.id,
        expected = payment.amount_kopecks,
        stated = ?notice.amount_kopecks,
        "payment notice amount differs; not credited"
    );
    Applied::refused(
        Some(payment),
        Refused::Mismatch,
        format!(
            "amount {:?} kopecks, expected {}",
            notice.amount_kopecks, payment.amount_kopecks
        ),
    )
}

/// Takes back the raits a refund returned to the payer, never below a zero balance; what is
/// missing is recorded on the payment as a shortfall for the operator.
fn refund(
    tx: &Connection,
    provider: Slug,
    payment: &Payment,
    refund_id: &str,
    amount_kopecks: i64,
) -> Result<Applied, billing::Error> {
    if store::refund_seen(tx, provider, refund_id)? {
        return Ok(Applied::accepted(payment, "duplicate"));
    }
    if !matches!(payment.status.as_str(), "completed" | "refunded") {
        return Ok(Applied::accepted(payment, "ignored"));
    }
    if amount_kopecks <= 0 || payment.refunded_kopecks + amount_kopecks > payment.amount_kopecks {
        return Ok(Applied::refused(
            Some(payment),
            Refused::Mismatch,
            format!(
                "refund of {amount_kopecks} kopecks exceeds what is left of {}",
                payment.amount_kopecks - payment.refunded_kopecks
            ),
        ));
    }
    // The payment's own rate, so a full refund takes back exactly what it bought.
    let wanted = i64::try_from(
        i128::from(payment.amount_raits) * i128::from(amount_kopecks)
            / i128::from(payment.amount_kopecks),
    )
    .unwrap_or(payment.amount_raits);
    let balance: i64 = tx.query_row(
        "select balance from users where id = ?1",
        [&payment.user_id],
        |r| r.get(0),
    )?;
    let taken = wanted.min(balance).max(0);
    let shortfall = wanted - taken;
    if taken > 0 {
        let reference = format!("{provider}-refund:{refund_id}");
        let description = format!("Возврат платежа № {} ({})", payment.number, provider.name());
        ledger::record(
            tx,
            &ledger::Entry {
                user_id: &payment.user_id,
                kind: Kind::Adjustment,
                amount: -taken,
                description: Some(&description),
                payment_id: Some(&payment.id),
                reference: Some(&reference),
            },
        )?;
    }
    store::add_refund(
        tx,
        provider,
        refund_id,
        payment,
        amount_kopecks,
        taken,
        shortfall,
    )?;
    if shortfall > 0 {
        tracing::warn!(
            payment.id = %payment.id,
            user.id = %payment.user_id,
            shortfall,
            "refunded payment's raits were already spent: shortfall for the operator"
        );
    }
    let mut applied = Applied::accepted(payment, "refunded");
    applied.detail = Some(format!("debited {taken} raits, shortfall {shortfall}"));
    Ok(applied)
}
