//! Password hashing with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing costs ~20 ms of a core, so it runs on the blocking pool behind a semaphore that
//! leaves a core free: a login storm queues instead of starving every other request. A login for
//! an unknown email verifies against a dummy hash, so timing does not tell which emails exist.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP Password Storage Cheat Sheet, argon2id option 2: m=19 MiB, t=2, p=1.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and verifies passwords with bounded parallelism.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    dummy: Arc<OnceLock<String>>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// One hashing slot per core but one (at least one).
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hasher {
            permits: Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))),
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// Hashes a password into a PHC string.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.bounded(move || hash_now(&password)).await?
    }

    /// Verifies `password` against `stored`; with `None` (unknown user, OAuth-only user) it
    /// does the same work against a dummy hash and answers false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let dummy = self.dummy.clone();
        self.bounded(move || {
            let (hash, real) = match &stored {
                Some(hash) => (hash.as_str(), true),
                None => (
                    dummy
                        .get_or_init(|| hash_now("not a password").expect("hashing works"))
                        .as_str(),
                    false,
                ),
            };
            let ok = PasswordHash::new(hash).is_ok_and(|parsed| {
                argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            });
            ok && real
        })
        .await
        .unwrap_or(false)
    }

    async fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        Ok(tokio::task::spawn_blocking(f).await?)
    }
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::new();
        let hash = hasher.hash("test123456".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher.verify("test123456".into(), Some(hash.clone())).await);
        assert!(!hasher.verify("wrong-password".into(), Some(hash)).await);
        assert!(!hasher.verify("not a password".into(), None).await);
        assert!(!hasher.verify("x".into(), Some("garbage".into())).await);
    }
}
