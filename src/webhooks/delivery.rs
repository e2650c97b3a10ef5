//! The delivery worker's two steps, called by the `webhooks` job every second and directly by
//! tests: [`fan_out`] turns new events into delivery rows, [`deliver_due`] sends the due ones.
//!
//! Both are safe with several instances on one PostgreSQL: fan-out locks each webhook row
//! with `SKIP LOCKED` and deliveries are unique per (webhook, event); deliveries are claimed
//! with a lease by a conditional UPDATE (`SKIP LOCKED`), so each attempt is made by one
//! instance. A worker that dies mid-attempt leaves a lease that runs out and is retried.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use super::store::{self, AttemptResult, DeliveryRow};
use super::{DISABLE_AFTER_FAILURES, MAX_ATTEMPTS};
use crate::events::routes::EventDto;
use crate::events::Event;
use crate::store::{Db, StoreError};
use herd_store::{System, TenantScope};

/// Per-request timeout of a delivery.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// At most this much of a receiver's answer is read (and the first 200 bytes kept on failure).
pub const RESPONSE_CAP: usize = 64 * 1024;
/// How long a claimed delivery belongs to its worker.
const LEASE_MS: i64 = 60_000;
/// Deliveries claimed per step.
const CLAIM: i64 = 32;

/// The HTTP client deliveries use: no redirects (a redirect could lead anywhere), a timeout.
/// Built once at start-up, which fails if it cannot be: a default client would silently
/// follow redirects and wait forever.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .user_agent(concat!("herd-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Exponential backoff with ±20 % jitter: 5 s, 10 s, 20 s … capped at one hour.
pub fn backoff(attempt: i64) -> i64 {
    let base: i64 = 5_000i64.saturating_mul(1i64 << attempt.clamp(0, 20)).min(3_600_000);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    (base as f64 * jitter) as i64
}

/// Creates the delivery rows for events that happened since each webhook last looked.
/// Answers how many deliveries were created.
pub async fn fan_out(db: &Db, system: &System, now: i64) -> Result<usize, StoreError> {
    let mut created = 0;
    for id in store::enabled_ids(db, system).await? {
        let mut tx = db.begin().await?;
        let webhook = match store::lock_for_fan_out(&mut tx, system, db.engine(), id).await {
            Ok(Some(webhook)) => webhook,
            Ok(None) => continue,
            // Not "every event": a webhook whose stored row does not decode (its event filter,
            // say) gets nothing until it is fixed, and the others go on.
            Err(error) if error.is_decode() => {
                tracing::error!(webhook = %id, %error, "the webhook's stored row does not decode; skipping it");
                continue;
            }
            Err(error) => return Err(error),
        };
        let scope = TenantScope::for_system(system, db, webhook.tenant_id);
        let rows = crate::events::store::list(&scope, webhook.last_seq, &webhook.events.0, 500).await?;
        let Some(last) = rows.last().map(|r| r.seq) else { continue };
        for row in &rows {
            store::insert_delivery(&mut tx, &webhook, row.seq, row.id, &row.event_type, now).await?;
            created += 1;
        }
        store::advance(&mut tx, webhook.id, last).await?;
        tx.commit().await?;
    }
    Ok(created)
}

/// What one delivery step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliverOutcome {
    pub succeeded: usize,
    pub failed: usize,
    pub disabled_webhooks: usize,
}

/// Sends every due delivery once (concurrently) and records the outcomes.
pub async fn deliver_due(
    db: &Db,
    system: &System,
    client: &reqwest::Client,
    metrics: &crate::telemetry_metrics::HttpMetrics,
    now: i64,
) -> Result<DeliverOutcome, StoreError> {
    let claimed = store::claim_due(db, system, now, LEASE_MS, CLAIM).await?;
    let attempts = claimed.iter().map(|delivery| attempt(db, system, client, delivery, now));
    let results = futures::future::join_all(attempts).await;
    let mut outcome = DeliverOutcome::default();
    for (delivery, result) in claimed.iter().zip(results) {
        let (succeeded, status_code, error, duration_ms) = match result {
            Ok(sent) => sent,
            Err(error) => (false, None, Some(error.to_string()), 0),
        };
        let attempts_made = delivery.attempts + 1;
        let retry_at =
            if succeeded || attempts_made >= MAX_ATTEMPTS { None } else { Some(now + backoff(attempts_made - 1)) };
        let result = AttemptResult {
            delivery_id: delivery.id,
            webhook_id: delivery.webhook_id,
            succeeded,
            status_code,
            error,
            duration_ms,
            retry_at,
        };
        let mut tx = db.begin().await?;
        let streak = store::record_attempt(&mut tx, &result, now).await?;
        if succeeded {
            outcome.succeeded += 1;
        } else {
            outcome.failed += 1;
            metrics.observe_webhook_failure();
            if streak >= DISABLE_AFTER_FAILURES {
                let reason = format!("{streak} consecutive failed deliveries");
                if store::disable(&mut tx, delivery.webhook_id, &reason, now).await? {
                    if let Some(webhook) = store::webhook_by_id(db, system, delivery.webhook_id).await? {
                        let event = Event::WebhookDisabled { webhook_id: webhook.id, url: webhook.url, reason };
                        tx.record(delivery.tenant_id, &event, now);
                    }
                    outcome.disabled_webhooks += 1;
                }
            }
        }
        tx.commit().await?;
    }
    Ok(outcome)
}

type Sent = (bool, Option<i64>, Option<String>, i64);

/// One POST of one event at `now` (milliseconds; `X-Herd-Timestamp` is it in seconds).
/// Network failures and non-2xx answers are failures, not errors.
async fn attempt(
    db: &Db,
    system: &System,
    client: &reqwest::Client,
    delivery: &DeliveryRow,
    now: i64,
) -> Result<Sent, StoreError> {
    let Some(webhook) = store::webhook_by_id(db, system, delivery.webhook_id).await? else {
        return Ok((false, None, Some("the webhook was deleted".into()), 0));
    };
    let Some(event) =
        crate::events::store::get(&TenantScope::for_system(system, db, delivery.tenant_id), delivery.event_seq).await?
    else {
        return Ok((false, None, Some("the event is past its retention".into()), 0));
    };
    let body = serde_json::to_vec(&EventDto::from(event)).unwrap_or_default();
    let started = Instant::now();
    let response = client
        .post(&webhook.url)
        .header("content-type", "application/json")
        .header("x-herd-signature", signature(&webhook.secret, &body))
        .header("x-herd-event-id", delivery.event_id.to_string())
        .header("x-herd-event-type", &delivery.event_type)
        .header("x-herd-delivery-id", delivery.id.to_string())
        .header("x-herd-timestamp", now.div_euclid(1000).to_string())
        .body(body)
        .send()
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(error) => {
            let kind = if error.is_timeout() { "timed out" } else { "could not connect" };
            return Ok((false, None, Some(format!("{kind}: {error}")), elapsed_ms(started)));
        }
    };
    let status = response.status();
    // Read (and discard) at most RESPONSE_CAP bytes so a huge answer cannot tie us up.
    let mut kept = Vec::new();
    let mut read = 0usize;
    while read < RESPONSE_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                if kept.len() < 200 {
                    kept.extend_from_slice(&chunk[..chunk.len().min(200 - kept.len())]);
                }
            }
            _ => break,
        }
    }
    let duration_ms = elapsed_ms(started);
    if status.is_success() {
        Ok((true, Some(i64::from(status.as_u16())), None, duration_ms))
    } else {
        let text = String::from_utf8_lossy(&kept).to_string();
        Ok((false, Some(i64::from(status.as_u16())), Some(format!("answered {status}: {text}")), duration_ms))
    }
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let mac = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(mac, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((4_000..=6_000).contains(&backoff(0)));
        assert!((8_000..=12_000).contains(&backoff(1)));
        assert!(backoff(30) <= 4_320_000);
    }
}
