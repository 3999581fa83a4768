//! The in-process job runner that stands in for the original Celery workers.
//!
//! A job's row in SQLite is the truth (a generation session, later an image); the runner only
//! holds what is in flight: a bounded number of slots (`EASY_WRITER_JOB_CONCURRENCY`), the
//! tasks it must wait for on shutdown, and the [`hub`] where watchers follow each job. Work
//! that was paid for must always end settled or refunded, so shutdown is two steps: stop
//! starting queued jobs (they stay `pending` and run after the next start), then give running
//! ones `EASY_WRITER_SHUTDOWN_GRACE_SECS` before [`Runner::interrupted`] fires and they fail
//! and refund themselves.

pub mod hub;
pub mod work;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use hub::{Handle, Hub};

/// Cheap to clone; every clone is the same runner.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Fired when shutdown begins: queued jobs stay queued.
    closing: CancellationToken,
    /// Fired when the grace period is over: running work fails with `interrupted`.
    interrupt: CancellationToken,
    grace: Duration,
}

impl Runner {
    pub fn new(concurrency: usize, grace: Duration) -> Runner {
        Runner {
            inner: Arc::new(Inner {
                hub: Hub::default(),
                slots: Arc::new(Semaphore::new(concurrency.max(1))),
                tasks: TaskTracker::new(),
                closing: CancellationToken::new(),
                interrupt: CancellationToken::new(),
                grace,
            }),
        }
    }

    /// Where running jobs publish their events and watchers subscribe.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Runs `work` as a task that shutdown waits for.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(work);
    }

    /// Waits for a free slot; `None` once shutdown has begun (the job stays queued).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            () = self.inner.closing.cancelled() => None,
            permit = self.inner.slots.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Resolves when running work must stop and settle as `interrupted`.
    pub async fn interrupted(&self) {
        self.inner.interrupt.cancelled().await;
    }

    /// Stops starting queued jobs, waits up to the grace period for running ones, then
    /// interrupts the rest and waits for them to settle.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closing.cancel();
        inner.tasks.close();
        if inner.tasks.is_empty() {
            return;
        }
        tracing::info!(
            jobs = inner.tasks.len(),
            grace_secs = inner.grace.as_secs(),
            "waiting for running jobs"
        );
        if tokio::time::timeout(inner.grace, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                jobs = inner.tasks.len(),
                "grace period over: interrupting running jobs"
            );
            inner.interrupt.cancel();
            inner.tasks.wait().await;
        }
    }
}
