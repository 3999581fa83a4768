//! Attempt throttles: logins, registrations, password checks and mail requests, counted per
//! key over a fixed window that starts at the key's first attempt (CONTRACT §4 "Throttling").
//!
//! An attempt is counted *before* it is checked ([`Throttle::attempt`]), so forty concurrent
//! guesses are limited exactly like forty sequential ones: the counter is taken atomically
//! and only the first `max` get through. An attempt that turns out to be legitimate (a correct
//! password) is given back with [`Throttle::forgive`].
//!
//! Keys are fixed-size digests of what they name, so a client sending huge emails cannot grow
//! the memory; each cache is bounded in bytes on top of that. In memory on purpose: a restart
//! forgets the counts, which costs an attacker nothing they could not get by waiting, and keeps
//! failed attempts off the database writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use sha2::{Digest, Sha256};

/// What one key names: a 128-bit digest of its kind and parts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key([u8; 16]);

impl Key {
    /// A key for `kind` (e.g. `"email"`, `"ip"`) over `parts`, each length-prefixed so that
    /// no two different part lists share a digest by concatenation.
    pub fn new(kind: &str, parts: &[&[u8]]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(kind.as_bytes());
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        Key(key)
    }
}

struct Window {
    started: Instant,
    attempts: AtomicU32,
}

/// Roughly what one entry costs: the key, the window, moka's bookkeeping.
const ENTRY_BYTES: u32 = 160;

/// Attempt counters over one window length.
#[derive(Clone)]
pub struct Throttle {
    window: Duration,
    windows: Cache<Key, Arc<Window>>,
}

impl Throttle {
    /// Counters over `window`, holding at most about `max_bytes` of them. When full, the
    /// cache's admission policy keeps the keys that are hit often (an attacker's) over a
    /// spray of one-off keys.
    pub fn new(window: Duration, max_bytes: u64) -> Throttle {
        Throttle {
            window,
            windows: Cache::builder()
                .time_to_live(window)
                .weigher(|_, _| ENTRY_BYTES)
                .max_capacity(max_bytes)
                .build(),
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts one attempt on `key`; `Err(retry_after)` when it is beyond the `max` its window
    /// allows.
    pub fn attempt(&self, key: Key, max: u32) -> Result<(), Duration> {
        let window = self.windows.get_with(key, || {
            Arc::new(Window {
                started: Instant::now(),
                attempts: AtomicU32::new(0),
            })
        });
        let before = window.attempts.fetch_add(1, Ordering::AcqRel);
        if before < max {
            Ok(())
        } else {
            let left = self.window.saturating_sub(window.started.elapsed());
            Err(left.max(Duration::from_secs(1)))
        }
    }

    /// Counts one attempt on each key (all of them, so that none is left uncounted) and
    /// refuses when any is over its limit, with the longest wait.
    pub fn attempt_all(&self, keys: &[(Key, u32)]) -> Result<(), Duration> {
        let mut refused: Option<Duration> = None;
        for &(key, max) in keys {
            if let Err(wait) = self.attempt(key, max) {
                refused = Some(refused.map_or(wait, |w| w.max(wait)));
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Gives back one attempt on `key` (it was legitimate).
    pub fn forgive(&self, key: Key) {
        if let Some(window) = self.windows.get(&key) {
            let _ = window
                .attempts
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Forgets `key` altogether.
    pub fn reset(&self, key: Key) {
        self.windows.invalidate(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(900);

    fn key(s: &str) -> Key {
        Key::new("email", &[s.as_bytes()])
    }

    #[test]
    fn counts_before_checking_forgives_and_resets() {
        let t = Throttle::new(WINDOW, 1 << 20);
        for _ in 0..3 {
            assert!(t.attempt(key("a"), 3).is_ok());
        }
        let retry = t.attempt(key("a"), 3).unwrap_err();
        assert!(retry > Duration::from_secs(800) && retry <= WINDOW);
        assert!(t.attempt(key("b"), 3).is_ok());
        t.forgive(key("a"));
        t.forgive(key("a"));
        assert!(t.attempt(key("a"), 3).is_ok());
        t.reset(key("a"));
        for _ in 0..3 {
            assert!(t.attempt(key("a"), 3).is_ok());
        }
    }

    #[test]
    fn concurrent_attempts_pass_exactly_max() {
        let t = Throttle::new(WINDOW, 1 << 20);
        let passed = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        if t.attempt(key("x"), 5).is_ok() {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn every_key_of_a_group_is_counted() {
        let t = Throttle::new(WINDOW, 1 << 20);
        let (a, b) = (key("a"), Key::new("ip", &[b"1.2.3.4"]));
        assert!(t.attempt_all(&[(a, 1), (b, 10)]).is_ok());
        assert!(t.attempt_all(&[(a, 1), (b, 10)]).is_err());
        // `b` was counted even though `a` refused: 8 left of 10.
        for _ in 0..8 {
            assert!(t.attempt(b, 10).is_ok());
        }
        assert!(t.attempt(b, 10).is_err());
    }

    #[test]
    fn parts_do_not_collide_by_concatenation() {
        assert_ne!(Key::new("k", &[b"ab", b"c"]), Key::new("k", &[b"a", b"bc"]));
        assert_ne!(Key::new("email", &[b"x"]), Key::new("ip", &[b"x"]));
    }
}
