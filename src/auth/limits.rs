//! Limits on the one door anyone may knock on without a credential: `POST /auth/login`.
//!
//! A login costs an argon2id hash (about 19 MiB of memory and tens of milliseconds of a core),
//! so unbounded concurrent logins exhaust the memory of the host (issue 10, finding 3). This
//! module owns three independent limits, checked in this order by the login handler:
//!
//! 1. **Rate limits** per source address (IPv6 by its /64) and per username: a fixed window of
//!    one minute each; beyond it 429 with `Retry-After`.
//! 2. **Temporary locks**: after `lock_after` consecutive failed logins for one username within
//!    `lock_window`, that username is refused for `lock_duration` without checking a password
//!    (429 with `Retry-After`). Unknown usernames lock exactly like known ones, so a lock tells
//!    an attacker nothing about which usernames exist; only the lock of an existing user is
//!    announced (`user.locked`).
//! 3. **Bounded hashing**: at most `hash_concurrency` hashes run at once (on the blocking pool)
//!    and at most `hash_queue` more wait for a turn; beyond that 503 with `Retry-After`.
//!
//! All state is in memory and per process: a restart forgets windows and locks, and several
//! instances behind a load balancer each count on their own. Every map is bounded by
//! [`MAX_TRACKED`] entries and pruned of expired ones as it is used; when a map is full of live
//! entries, a new key is not tracked (the hashing bound still holds), so filling the map cannot
//! lock anybody out.
//!
//! Time comes from the caller (`now` in milliseconds from the app's clock), so tests drive the
//! windows with the manual clock. This module must not touch the database.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LoginLimitSettings;

/// How many keys each map tracks at most.
pub const MAX_TRACKED: usize = 100_000;

/// The rate limits' window.
const RATE_WINDOW_MS: i64 = 60_000;

/// Why a login is refused before its password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Too many attempts from this address or for this username: 429.
    RateLimited { retry_after: Duration },
    /// The username is temporarily locked after repeated failures: 429.
    Locked { retry_after: Duration },
    /// Every hashing slot and every waiting place is taken: 503.
    Busy { retry_after: Duration },
}

impl From<Refusal> for crate::http::error::ApiError {
    fn from(refusal: Refusal) -> Self {
        use crate::http::error::ApiError;
        match refusal {
            Refusal::RateLimited { retry_after } => {
                ApiError::TooManyRequests { detail: "too many login attempts; retry later".into(), retry_after }
            }
            Refusal::Locked { retry_after } => ApiError::TooManyRequests {
                detail: "too many failed logins for this username; it is locked for a while".into(),
                retry_after,
            },
            Refusal::Busy { retry_after } => {
                ApiError::Overloaded { detail: "too many logins at once; retry later".into(), retry_after }
            }
        }
    }
}

/// What a failed login did to its username's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Still below the threshold.
    Counted,
    /// This failure locked the username until the given time (milliseconds).
    Locked { until: i64 },
}

/// The login limits of one process (in `AppState`).
pub struct LoginLimits {
    settings: LoginLimitSettings,
    /// One permit per concurrent hash.
    hashing: Arc<Semaphore>,
    /// Hashes running plus requests waiting for a permit; bounded by concurrency + queue.
    admitted: Arc<AtomicUsize>,
    /// A std `Mutex`: held only for a map lookup, never across an `.await`.
    per_address: Mutex<Windows<IpAddr>>,
    per_username: Mutex<Windows<String>>,
    failures: Mutex<Failures>,
}

impl std::fmt::Debug for LoginLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimits").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// A turn at hashing: held while the hash runs; dropping it frees the turn.
#[derive(Debug)]
pub struct HashSlot {
    _permit: OwnedSemaphorePermit,
    _admission: Admission,
}

/// One admitted request (running or waiting); dropping it gives the place back.
#[derive(Debug)]
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoginLimits {
    pub fn new(settings: LoginLimitSettings) -> Self {
        Self {
            hashing: Arc::new(Semaphore::new(settings.hash_concurrency)),
            admitted: Arc::new(AtomicUsize::new(0)),
            per_address: Mutex::new(Windows::default()),
            per_username: Mutex::new(Windows::default()),
            failures: Mutex::new(Failures::default()),
            settings,
        }
    }

    /// Counts one attempt from `address` for `username` and refuses it if either is over its
    /// rate or the username is locked. `username` is the key the caller chooses (the login
    /// names it; a tenant-qualified name works as well).
    pub fn check_attempt(&self, address: IpAddr, username: &str, now: i64) -> Result<(), Refusal> {
        let address = rate_key(address);
        let (limit_address, limit_username) =
            (self.settings.attempts_per_address_per_minute, self.settings.attempts_per_username_per_minute);
        lock(&self.per_address).hit(address, limit_address, now)?;
        lock(&self.per_username).hit(username.to_string(), limit_username, now)?;
        lock(&self.failures).check(username, now)
    }

    /// Takes a turn at hashing, waiting for one if every slot is busy and a waiting place is
    /// free; refuses at once (503) if every waiting place is taken too.
    pub async fn hash_slot(&self) -> Result<HashSlot, Refusal> {
        let admission = self.admit()?;
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Busy { retry_after: Duration::from_secs(1) })?;
        Ok(HashSlot { _permit: permit, _admission: admission })
    }

    /// Takes a turn at hashing only if one is free now (never waits). For tests and tools.
    pub fn try_hash_slot(&self) -> Result<HashSlot, Refusal> {
        let admission = self.admit()?;
        let permit = self
            .hashing
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy { retry_after: Duration::from_secs(1) })?;
        Ok(HashSlot { _permit: permit, _admission: admission })
    }

    fn admit(&self) -> Result<Admission, Refusal> {
        let bound = self.settings.hash_concurrency + self.settings.hash_queue;
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(self.admitted.clone());
        if before >= bound {
            return Err(Refusal::Busy { retry_after: Duration::from_secs(1) });
        }
        Ok(admission)
    }

    /// Records a failed login for `username`.
    pub fn record_failure(&self, username: &str, now: i64) -> FailureOutcome {
        lock(&self.failures).fail(username, now, &self.settings)
    }

    /// A successful login ends the run of failures.
    pub fn record_success(&self, username: &str) {
        lock(&self.failures).entries.remove(username);
    }
}

/// The address a rate limit counts: IPv4 as it is, IPv6 by its /64 (one host usually holds a
/// whole /64), IPv4-mapped IPv6 as IPv4.
fn rate_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A poisoned lock only means a panic elsewhere while holding it; the counters stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn retry_after_ms(ms: i64) -> Duration {
    // Whole seconds, rounded up, at least one: `Retry-After` counts seconds.
    let secs = (ms.max(0) as u64).div_ceil(1000).max(1);
    Duration::from_secs(secs)
}

/// Fixed one-minute windows: key → (window start, attempts in it).
struct Windows<K> {
    entries: HashMap<K, (i64, u32)>,
    last_prune: i64,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Self { entries: HashMap::new(), last_prune: i64::MIN }
    }
}

impl<K: Hash + Eq> Windows<K> {
    fn hit(&mut self, key: K, limit: u32, now: i64) -> Result<(), Refusal> {
        if now.saturating_sub(self.last_prune) >= RATE_WINDOW_MS || self.entries.len() >= MAX_TRACKED {
            self.entries.retain(|_, (start, _)| now.saturating_sub(*start) < RATE_WINDOW_MS);
            self.last_prune = now;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED {
            return Ok(());
        }
        let (start, count) = self.entries.entry(key).or_insert((now, 0));
        if now.saturating_sub(*start) >= RATE_WINDOW_MS || now < *start {
            *start = now;
            *count = 0;
        }
        if *count >= limit {
            return Err(Refusal::RateLimited { retry_after: retry_after_ms(*start + RATE_WINDOW_MS - now) });
        }
        *count += 1;
        Ok(())
    }
}

/// Consecutive failures per username, and locks.
#[derive(Default)]
struct Failures {
    entries: HashMap<String, FailureRun>,
    last_prune: i64,
}

#[derive(Debug, Clone, Copy)]
struct FailureRun {
    /// When the first failure of the current run happened.
    first_at: i64,
    count: u32,
    locked_until: Option<i64>,
}

impl Failures {
    fn check(&mut self, username: &str, now: i64) -> Result<(), Refusal> {
        match self.entries.get(username).and_then(|run| run.locked_until) {
            Some(until) if now < until => Err(Refusal::Locked { retry_after: retry_after_ms(until - now) }),
            Some(_) => {
                // The lock ran out: the next run of failures starts from zero.
                self.entries.remove(username);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn fail(&mut self, username: &str, now: i64, settings: &LoginLimitSettings) -> FailureOutcome {
        if settings.lock_after == 0 {
            return FailureOutcome::Counted;
        }
        let window = settings.lock_window.as_millis() as i64;
        let duration = settings.lock_duration.as_millis() as i64;
        if now.saturating_sub(self.last_prune) >= window || self.entries.len() >= MAX_TRACKED {
            self.entries.retain(|_, run| match run.locked_until {
                Some(until) => now < until,
                None => now.saturating_sub(run.first_at) < window,
            });
            self.last_prune = now;
        }
        if !self.entries.contains_key(username) && self.entries.len() >= MAX_TRACKED {
            return FailureOutcome::Counted;
        }
        let run = self.entries.entry(username.to_string()).or_insert(FailureRun {
            first_at: now,
            count: 0,
            locked_until: None,
        });
        if run.locked_until.is_some() {
            return FailureOutcome::Counted;
        }
        if now.saturating_sub(run.first_at) >= window {
            *run = FailureRun { first_at: now, count: 0, locked_until: None };
        }
        run.count += 1;
        if run.count >= settings.lock_after {
            let until = now.saturating_add(duration);
            run.locked_until = Some(until);
            return FailureOutcome::Locked { until };
        }
        FailureOutcome::Counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LoginLimitSettings {
        LoginLimitSettings {
            hash_concurrency: 1,
            hash_queue: 1,
            attempts_per_address_per_minute: 3,
            attempts_per_username_per_minute: 100,
            lock_after: 2,
            lock_window: Duration::from_secs(600),
            lock_duration: Duration::from_secs(300),
        }
    }

    #[test]
    fn addresses_are_limited_per_window_and_ipv6_by_its_64() {
        let limits = LoginLimits::new(settings());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for i in 0..3 {
            limits.check_attempt(a, &format!("u{i}"), 0).unwrap();
        }
        assert_eq!(
            limits.check_attempt(b, "other", 1_500),
            Err(Refusal::RateLimited { retry_after: Duration::from_secs(59) })
        );
        limits.check_attempt("192.0.2.1".parse().unwrap(), "x", 1_500).unwrap();
        limits.check_attempt(a, "again", 60_000).unwrap();
    }

    #[test]
    fn failures_lock_and_the_lock_expires() {
        let limits = LoginLimits::new(settings());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limits.record_failure("alice", 0), FailureOutcome::Counted);
        assert_eq!(limits.record_failure("alice", 1_000), FailureOutcome::Locked { until: 301_000 });
        assert_eq!(
            limits.check_attempt(address, "alice", 1_000),
            Err(Refusal::Locked { retry_after: Duration::from_secs(300) })
        );
        limits.check_attempt(address, "bob", 1_000).unwrap();
        assert!(limits.check_attempt(address, "alice", 301_000).is_ok());
        // A success ends a run: one failure after it does not lock.
        let limits = LoginLimits::new(settings());
        limits.record_failure("carol", 0);
        limits.record_success("carol");
        assert_eq!(limits.record_failure("carol", 1), FailureOutcome::Counted);
    }

    #[tokio::test]
    async fn hashing_is_bounded_and_waiting_too() {
        let limits = LoginLimits::new(settings());
        let running = limits.try_hash_slot().unwrap();
        assert!(matches!(limits.try_hash_slot(), Err(Refusal::Busy { .. })));
        let limits = Arc::new(limits);
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.hash_slot().await.map(drop) })
        };
        // The one waiting place is taken (or about to be): spin until it is, then the next is refused.
        while limits.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(limits.hash_slot().await, Err(Refusal::Busy { .. })));
        drop(running);
        waiter.await.unwrap().unwrap();
        assert_eq!(limits.admitted.load(Ordering::Acquire), 0);
        limits.try_hash_slot().unwrap();
    }
}
