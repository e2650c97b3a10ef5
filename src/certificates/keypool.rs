//! A small pool of pre-generated RSA device keys.
//!
//! RSA-2048 key generation takes ~45 ms of CPU (aws-lc-rs on this machine), far longer than
//! signing a certificate (~0.2 ms). It never runs on the async runtime's worker threads: one
//! dedicated thread keeps up to `size` keys ready in a bounded channel, and a request that finds
//! the pool empty generates its key with `spawn_blocking`. The thread starts on the first
//! request for a key (a server whose devices all bring CSRs never spends CPU on it) and ends
//! when the pool is dropped (its channel closes). At most one on-demand generation per core
//! runs at once; further requests wait for a turn (security finding 3: costly work is bounded).

use std::sync::{Mutex, OnceLock};

use herd_pki::DeviceKeyPair;
use tokio::sync::{mpsc, Semaphore};

/// Pre-generated keys of one size.
pub struct KeyPool {
    bits: u32,
    size: usize,
    /// Created with the refill thread on first use. A std `Mutex`: it is held only for a
    /// non-blocking `try_recv`, never across an await.
    ready: OnceLock<Mutex<mpsc::Receiver<DeviceKeyPair>>>,
    /// Turns for on-demand generation: one per core.
    generating: Semaphore,
}

impl KeyPool {
    /// A pool of `size` RSA keys of `bits` bits; `size` 0 generates every key on demand.
    pub fn new(bits: u32, size: usize) -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Self { bits, size, ready: OnceLock::new(), generating: Semaphore::new(cores) }
    }

    /// A fresh key: from the pool when one is ready, else generated off the async workers.
    pub async fn take(&self) -> anyhow::Result<DeviceKeyPair> {
        if let Some(ready) = self.receiver() {
            let key = ready.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).try_recv().ok();
            if let Some(key) = key {
                return Ok(key);
            }
        }
        let _turn = self.generating.acquire().await?;
        let bits = self.bits;
        let key = tokio::task::spawn_blocking(move || herd_pki::generate_rsa_key(bits)).await??;
        Ok(key)
    }

    /// How many on-demand generations could start right now.
    pub fn free_generation_turns(&self) -> usize {
        self.generating.available_permits()
    }

    fn receiver(&self) -> Option<&Mutex<mpsc::Receiver<DeviceKeyPair>>> {
        if self.size == 0 {
            return None;
        }
        Some(self.ready.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(self.size);
            let bits = self.bits;
            let spawned = std::thread::Builder::new().name("herd-key-pool".into()).spawn(move || loop {
                match herd_pki::generate_rsa_key(bits) {
                    Ok(key) => {
                        // Blocks while the pool is full; fails once the pool is dropped.
                        if sender.blocking_send(key).is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "the key pool cannot generate RSA keys");
                        std::thread::sleep(std::time::Duration::from_secs(5));
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start the key pool thread; keys are generated on demand");
            }
            Mutex::new(receiver)
        }))
    }
}
