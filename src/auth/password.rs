//! Password hashing with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane).
//!
//! A hash costs ~25 ms of a core, so hashing runs on its own threads, one per core, at a lower
//! CPU priority: alone they use the whole machine (register and login throughput), under load
//! the request workers win, so a login storm slows logins rather than every other request.
//! Each thread keeps its 19 MiB of argon2 memory while busy and frees it after a short idle
//! spell (the binary's jemalloc then returns it to the OS), so an idle server stays small. A login for an unknown email verifies
//! against a dummy hash: timing does not tell which emails exist.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

/// OWASP Password Storage Cheat Sheet, argon2id option 2: m=19 MiB, t=2, p=1.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;
/// Nice value of the hashing threads (request workers run at 0).
const NICENESS: i32 = 10;
/// A hashing thread frees its argon2 memory after this long without work.
const IDLE_RELEASE: Duration = Duration::from_secs(2);

fn params() -> Params {
    Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_LEN)).expect("valid argon2 parameters")
}

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashes and verifies passwords on dedicated low-priority threads.
#[derive(Clone)]
pub struct Hasher {
    jobs: Sender<Job>,
    dummy: Arc<OnceLock<String>>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// Starts one hashing thread per core. They end when the last clone is dropped.
    pub fn new() -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&queue))
                .expect("spawn a hashing thread");
        }
        Hasher {
            jobs,
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.run(move |memory| hash_with(&password, memory)).await?
    }

    /// Verifies `password` against `stored`; with `None` (unknown user, OAuth-only user) it
    /// does the same work against a dummy hash and answers false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let dummy = self.dummy.clone();
        self.run(move |memory| {
            let (hash, real) = match &stored {
                Some(hash) => (hash.as_str(), true),
                None => {
                    let dummy = dummy.get_or_init(|| {
                        hash_with("not a password", memory).expect("hashing works")
                    });
                    (dummy.as_str(), false)
                }
            };
            verify_with(&password, hash, memory) && real
        })
        .await
        .unwrap_or(false)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |memory| {
                let _ = tx.send(f(memory));
            }))
            .map_err(|_| anyhow::anyhow!("password hashing threads are gone"))?;
        Ok(rx.await?)
    }
}

/// A hashing thread: lower its priority, then run jobs, keeping argon2 memory between them.
fn work(queue: &Receiver<Job>) {
    lower_priority();
    let mut memory = Vec::new();
    loop {
        match queue.recv_timeout(IDLE_RELEASE) {
            Ok(job) => job(&mut memory),
            Err(RecvTimeoutError::Timeout) => memory = Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn hash_with(password: &str, memory: &mut Vec<Block>) -> anyhow::Result<String> {
    let params = params();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let output = compute(password, salt_raw, &params, memory)?;
    let output = Output::new(&output).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params)
            .try_into()
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

fn verify_with(password: &str, stored: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    let Ok(stored_params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(params) = Params::new(
        stored_params.m_cost(),
        stored_params.t_cost(),
        stored_params.p_cost(),
        Some(expected.len()),
    ) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    compute(password, salt_raw, &params, memory)
        .ok()
        .and_then(|out| Output::new(&out).ok())
        // `Output` compares in constant time.
        .is_some_and(|out| out == expected)
}

fn compute(
    password: &str,
    salt: &[u8],
    params: &Params,
    memory: &mut Vec<Block>,
) -> anyhow::Result<Vec<u8>> {
    memory.resize(params.block_count(), Block::default());
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = vec![0u8; params.output_len().unwrap_or(OUTPUT_LEN)];
    argon2
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(out)
}

/// Lowers the calling thread's CPU priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; failure only leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICENESS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = Hasher::new();
        let hash = hasher.hash("test123456".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher.verify("test123456".into(), Some(hash.clone())).await);
        assert!(
            !hasher
                .verify("wrong-password".into(), Some(hash.clone()))
                .await
        );
        assert!(!hasher.verify("not a password".into(), None).await);
        assert!(!hasher.verify("x".into(), Some("garbage".into())).await);
        // Hashes made by the reference API verify here and the other way round.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let reference = Argon2::default()
            .hash_password(b"interop pass", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.verify("interop pass".into(), Some(reference)).await);
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"test123456", &parsed)
                .is_ok()
        );
    }
}
