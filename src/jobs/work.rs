//! The one path every kind of paid work takes from its debit to its settlement: a quick run on
//! the caller's request, a queued job, and recovery at start-up.
//!
//! A kind (a generation session, an image, an article) implements [`Work`]: how to call its
//! providers, how to mark its row started, and how to settle it — the result recorded, or the
//! failure with its refund, in one write. Everything between is here, once: progress on the
//! hub, the runner's slots, the quick deadline, shutdown's `interrupted`, and a panic caught
//! and settled like any failure. So "paid work always ends completed or refunded" holds in
//! this file for every kind. Rows are opened (with their `spend`) by each kind's own code,
//! in the transaction that claims the `Idempotency-Key`; that key's answer is stored by
//! `settle` through `idempotency::finish_work`, so a quick run, a job and recovery all leave
//! a retried key an answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::hub::Event;
use super::{Handle, Runner};

/// Why paid work failed, as its row and its watchers are told (CONTRACT §5 `error`).
#[derive(Debug, Clone)]
pub struct Failure {
    /// `providers_unavailable`, `provider_error`, `content_refused`, `timeout` or
    /// `interrupted`.
    pub code: &'static str,
    pub message: String,
    /// The provider that failed last, when one did.
    pub provider: Option<&'static str>,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            provider: None,
        }
    }

    /// Shutdown's grace period ran out (or a crash, seen at the next start).
    pub fn interrupted() -> Failure {
        Failure::new(
            "interrupted",
            "The server stopped before the work finished; the raits were refunded",
        )
    }

    fn timeout() -> Failure {
        Failure::new("timeout", "The work took too long; the raits were refunded")
    }

    fn panicked() -> Failure {
        Failure::new(
            "provider_error",
            "The work failed unexpectedly; the raits were refunded",
        )
    }
}

/// A row settled: what the caller and the watchers are told.
pub trait Settled: Send + 'static {
    /// The final WebSocket event (`completed` or `error`).
    fn final_event(&self) -> Event<'_>;
}

/// One kind of paid work whose row is open and paid for.
#[async_trait::async_trait]
pub trait Work: Send + Sync + 'static {
    /// What a successful run hands to [`settle`](Work::settle).
    type Output: Send + 'static;
    /// The settled row.
    type Settled: Settled;
    /// An error of the store (the row could not be written).
    type Error: std::fmt::Display + Send + 'static;

    /// `generation`, `image`, … for logs.
    fn kind(&self) -> &'static str;
    /// The row's id; also the hub key watchers find it by.
    fn id(&self) -> &str;
    /// Only the owner may watch.
    fn user_id(&self) -> &str;

    /// Queued → running, in one write; false when the row is no longer queued.
    async fn start(&self) -> Result<bool, Self::Error>;
    /// Calls the providers, publishing progress to `watch`.
    async fn run(&self, watch: &Handle) -> Result<Self::Output, Failure>;
    /// In one write: the output recorded, or the failure with its refund (and, either way, the
    /// answer for the `Idempotency-Key` that opened the row, if it has none yet). A row
    /// already settled is left as it is.
    async fn settle(
        &self,
        ended: Result<Self::Output, Failure>,
    ) -> Result<Self::Settled, Self::Error>;
}

impl Runner {
    /// Runs opened, paid work now (a quick run) under `deadline`, settles and announces it.
    /// Call it from a runner task ([`Runner::spawn`]), so that neither a client hanging up
    /// nor shutdown can stop it between the debit and the settlement.
    pub async fn run_now<W: Work>(
        &self,
        work: W,
        deadline: Duration,
    ) -> Result<W::Settled, W::Error> {
        let watch = self.hub().register(work.id(), work.user_id());
        watch.mark_started();
        self.drive(&work, &watch, Some(deadline)).await
    }

    /// Queues opened, paid work: watchable at once, run when a slot is free. At shutdown
    /// before it starts, it stays queued for [`recover`] at the next start.
    pub fn enqueue<W: Work>(&self, work: W) {
        let watch = self.hub().register(work.id(), work.user_id());
        let runner = self.clone();
        self.spawn(async move {
            let Some(_slot) = runner.slot().await else {
                runner.hub().remove(work.id());
                return;
            };
            match work.start().await {
                Ok(true) => watch.mark_started(),
                Ok(false) => {
                    // Settled meanwhile (it cannot be: only this task runs it).
                    runner.hub().remove(work.id());
                    return;
                }
                Err(e) => return runner.announce_unsettled(&work, &watch, &e),
            }
            let _ = runner.drive(&work, &watch, None).await;
        });
    }

    /// Runs, settles and announces: a panic or the end of the grace period becomes a
    /// failure like any other, so the row is settled and refunded whatever happens.
    async fn drive<W: Work>(
        &self,
        work: &W,
        watch: &Arc<Handle>,
        deadline: Option<Duration>,
    ) -> Result<W::Settled, W::Error> {
        let running = AssertUnwindSafe(work.run(watch)).catch_unwind();
        let bounded = async {
            match deadline {
                Some(deadline) => tokio::time::timeout(deadline, running)
                    .await
                    .unwrap_or_else(|_| Ok(Err(Failure::timeout()))),
                None => running.await,
            }
        };
        let ended = tokio::select! {
            outcome = bounded => outcome.unwrap_or_else(|_| {
                tracing::error!(work.kind = work.kind(), work.id = %work.id(), "work panicked");
                Err(Failure::panicked())
            }),
            () = self.interrupted() => Err(Failure::interrupted()),
        };
        if let Err(failure) = &ended {
            tracing::warn!(work.kind = work.kind(), work.id = %work.id(),
                code = failure.code, "work failed; refunding");
        }
        let settled = work.settle(ended).await;
        match &settled {
            Ok(settled) => {
                watch.finish(&settled.final_event());
                self.hub().remove(work.id());
            }
            Err(e) => self.announce_unsettled(work, watch, e),
        }
        settled
    }

    /// Work whose settlement could not be written: its watchers hear it failed, and start-up
    /// recovery refunds it (its row is still running).
    fn announce_unsettled<W: Work>(&self, work: &W, watch: &Handle, error: &dyn std::fmt::Display) {
        tracing::error!(work.kind = work.kind(), work.id = %work.id(), error = %error,
            "cannot settle paid work");
        watch.finish(&Event::Error {
            code: "interrupted",
            message: "The work could not be saved; the raits will be refunded",
        });
        self.hub().remove(work.id());
    }
}

/// A kind's start-up recovery: its rows a crash left running are failed and refunded (their
/// provider calls are lost) with the answer stored for their keys, and its queued rows are
/// queued again.
#[async_trait::async_trait]
pub trait Recover: Send + Sync {
    /// `generation`, `image`, … for logs.
    fn kind(&self) -> &'static str;
    /// Returns how many rows were refunded and how many queued again.
    async fn recover(&self, runner: &Runner) -> anyhow::Result<(usize, usize)>;
}

/// Recovers every kind of paid work, before the server accepts requests.
pub async fn recover(runner: &Runner, kinds: &[&dyn Recover]) -> anyhow::Result<()> {
    for kind in kinds {
        let (refunded, requeued) = kind.recover(runner).await?;
        if refunded > 0 || requeued > 0 {
            tracing::warn!(
                work.kind = kind.kind(),
                refunded,
                requeued,
                "recovered paid work left by the last run"
            );
        }
    }
    Ok(())
}
