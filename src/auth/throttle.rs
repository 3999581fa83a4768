//! Login throttling: failed attempts counted per email and per client IP over a fixed
//! 15-minute window that starts at the first failure.
//!
//! In memory on purpose: a restart forgets the counts, which costs an attacker nothing they
//! could not get by waiting, and keeps a failed login off the database writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

struct Window {
    started: Instant,
    failures: AtomicU32,
}

/// Failure counters keyed by `email:<address>` or `ip:<address>`.
#[derive(Clone)]
pub struct Throttle {
    windows: Cache<String, Arc<Window>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            // Entries expire with their window; the cap bounds memory under a spray of emails.
            windows: Cache::builder()
                .time_to_live(WINDOW)
                .max_capacity(200_000)
                .build(),
        }
    }
}

impl Throttle {
    /// `Err(retry_after)` when `key` has reached `max` failures in its window.
    pub fn check(&self, key: &str, max: u32) -> Result<(), Duration> {
        match self.windows.get(key) {
            Some(w) if w.failures.load(Ordering::Relaxed) >= max => {
                let left = WINDOW.saturating_sub(w.started.elapsed());
                Err(left.max(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, key: &str) {
        let window = self.windows.get_with(key.to_owned(), || {
            Arc::new(Window {
                started: Instant::now(),
                failures: AtomicU32::new(0),
            })
        });
        window.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reset(&self, key: &str) {
        self.windows.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_and_resets() {
        let t = Throttle::default();
        for _ in 0..3 {
            assert!(t.check("email:a", 3).is_ok());
            t.record_failure("email:a");
        }
        let retry = t.check("email:a", 3).unwrap_err();
        assert!(retry > Duration::from_secs(800) && retry <= WINDOW);
        assert!(t.check("email:b", 3).is_ok());
        t.reset("email:a");
        assert!(t.check("email:a", 3).is_ok());
    }
}
