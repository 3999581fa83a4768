//! Payments whose notification never came: asked about on a timer and when their owner asks
//! for their status, so a lost webhook never loses money; and the payments a stop cut off
//! before their provider answered.

use std::sync::Arc;
use std::time::Duration;

use super::settle::{self, Applied};
use super::store::{self, Call, Payment};
use super::{Known, Payments};
use crate::db::Db;
use crate::{idempotency, timestamp};

/// A notification normally arrives within seconds; the timer leaves new payments to it.
const GRACE: time::Duration = time::Duration::minutes(2);
/// How often the timer asks about the same pending payment.
const RECHECK: time::Duration = time::Duration::minutes(5);
/// A payment still pending after this is given up (`failed`, "expired"); a notification that
/// arrives later still credits it.
const EXPIRY: time::Duration = time::Duration::hours(24);
const TICK: Duration = Duration::from_secs(60);
const PER_TICK: i64 = 50;

/// Asks the provider about `payment` and applies the answer as a notification would be
/// applied. `Ok(None)` when the provider cannot be asked or does not know the payment.
pub async fn check(
    db: &Db,
    payments: &Payments,
    payment: &Payment,
) -> anyhow::Result<Option<Applied>> {
    let Some(gateway) = payments.gateway(payment.provider) else {
        return Ok(None);
    };
    let known = Known {
        payment_id: &payment.id,
        number: payment.number,
        external_id: payment.external_id.as_deref(),
    };
    let state = gateway.state(known).await;
    let id = payment.id.clone();
    let provider = payment.provider;
    let applied = db
        .write(move |tx| {
            store::touch(tx, &id, None, true)?;
            let Ok(Some(notice)) = state else {
                return Ok::<_, crate::billing::Error>(None);
            };
            let applied = settle::apply(tx, provider, &notice)?;
            if applied.verdict != "progress" {
                store::log_call(
                    tx,
                    &Call {
                        provider: provider.as_str(),
                        payment_id: Some(&id),
                        remote_ip: None,
                        method: "RECONCILE",
                        headers: "{}",
                        body: &format!("{notice:?}"),
                        verdict: applied.verdict,
                        detail: applied.detail.as_deref(),
                    },
                )?;
            }
            Ok(Some(applied))
        })
        .await?;
    Ok(applied)
}

/// Webhook log rows kept at most (besides the 90-day limit).
const LOG_KEEP: i64 = 200_000;

/// Runs the timer (and, hourly, the webhook log's pruning) until aborted.
pub fn spawn(db: Db, payments: Arc<Payments>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            tick.tick().await;
            if let Err(e) = sweep(&db, &payments).await {
                tracing::warn!(error = %e, "payment reconciliation");
            }
            if n % 60 == 0 {
                match db.write(|tx| store::prune_calls(tx, LOG_KEEP)).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(rows, "pruned the payment webhook log"),
                    Err(e) => tracing::warn!(error = %e, "pruning the payment webhook log"),
                }
            }
        }
    })
}

/// One pass over the pending payments that are due.
pub async fn sweep(db: &Db, payments: &Payments) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let before = timestamp::format(now - GRACE);
    let asked_before = timestamp::format(now - RECHECK);
    let due = db
        .read(move |c| store::due(c, &before, &asked_before, PER_TICK))
        .await?;
    let expired_before = timestamp::format(now - EXPIRY);
    for payment in due {
        let outcome = check(db, payments, &payment).await;
        if let Err(e) = &outcome {
            tracing::warn!(payment.id = %payment.id, error = %e, "cannot reconcile a payment");
        }
        let settled = matches!(&outcome, Ok(Some(a)) if a.verdict != "progress");
        if !settled && payment.created_at < expired_before {
            let id = payment.id.clone();
            db.write(move |tx| store::fail(tx, &id, None, "expired: no payment within 24 hours"))
                .await?;
        }
    }
    Ok(())
}

/// Fails the payments whose create a stop cut off (opened, provider never answered) and
/// stores the refused answer for the `Idempotency-Key` that opened them. Runs at start-up,
/// before the server answers anything.
pub async fn recover(db: &Db) -> anyhow::Result<usize> {
    let ids = db.read(store::unstarted).await?;
    let count = ids.len();
    for id in ids {
        db.write(move |tx| {
            if store::fail(tx, &id, None, "interrupted: the server stopped during the create")? {
                let body = serde_json::json!({
                    "detail": "The server stopped before the payment provider answered; nothing was charged",
                    "code": "interrupted",
                });
                idempotency::finish_work(tx, &id, 503, &body.to_string())?;
            }
            Ok::<_, crate::db::Error>(())
        })
        .await?;
    }
    if count > 0 {
        tracing::warn!(count, "payments cut off during their create marked failed");
    }
    Ok(count)
}
