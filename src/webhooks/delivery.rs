//! The delivery worker's two steps, called by the `webhooks` job every second and directly by
//! tests: [`fan_out`] turns new events into delivery rows, [`deliver_due`] sends the due ones.
//!
//! Both are safe with several instances on one PostgreSQL: fan-out locks each webhook row
//! with `SKIP LOCKED` and deliveries are unique per (webhook, event); deliveries are claimed
//! with a lease by a conditional UPDATE (`SKIP LOCKED`), so each attempt is made by one
//! instance. A worker that dies mid-attempt leaves a lease that runs out and is retried.

use std::time::Instant;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use super::client::WebhookClient;
use super::store::{self, AttemptResult, DeliveryRow};
use super::{DISABLE_AFTER_FAILURES, MAX_ATTEMPTS};
use crate::events::routes::EventDto;
use crate::events::Event;
use crate::store::{Db, StoreError};
use herd_store::{System, TenantScope};

/// How long a claimed delivery belongs to its worker.
const LEASE_MS: i64 = 60_000;
/// Deliveries claimed per step.
const CLAIM: i64 = 32;

/// The MAC of one delivery: HMAC-SHA256 under `key` of `{id}.{timestamp}.{body}`, the signed
/// content of the Standard Webhooks scheme. Binding the id and the timestamp lets a receiver
/// refuse a replayed delivery (an old timestamp) and an id moved onto another body.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot happen.
        Err(_) => return Vec::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The signature headers of a delivery: `webhook-signature: v1,<base64>` (Standard Webhooks)
/// and `X-Herd-Signature: sha256=<hex>`, both of the same [`sign`] MAC. The key is the webhook's
/// secret as shown at creation, its UTF-8 bytes.
pub fn signature_headers(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> (String, String) {
    let mac = sign(secret.as_bytes(), id, timestamp, body);
    (format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(&mac)), format!("sha256={}", hex::encode(&mac)))
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
        let Some(last) = rows.last().map(|r| r.tenant_seq) else { continue };
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
    client: &WebhookClient,
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

/// One POST of one event at `now` (milliseconds; the timestamp headers are it in seconds).
/// Network failures and non-2xx answers are failures, not errors. A failure records the status
/// code and a fixed message, never anything the receiver sent.
async fn attempt(
    db: &Db,
    system: &System,
    client: &WebhookClient,
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
    let Ok(url) = reqwest::Url::parse(&webhook.url) else {
        return Ok((false, None, Some("the webhook's stored URL does not parse".into()), 0));
    };
    let body = serde_json::to_vec(&EventDto::from(event)).unwrap_or_default();
    let id = delivery.event_id.to_string();
    let timestamp = now.div_euclid(1000);
    let (standard_signature, herd_signature) = signature_headers(&webhook.secret, &id, timestamp, &body);
    let headers = [
        ("content-type", "application/json".to_string()),
        ("webhook-id", id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", standard_signature),
        ("x-herd-signature", herd_signature),
        ("x-herd-event-id", id),
        ("x-herd-event-type", delivery.event_type.clone()),
        ("x-herd-delivery-id", delivery.id.to_string()),
        ("x-herd-timestamp", timestamp.to_string()),
    ];
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        // Ids, numbers and known event types: always valid header values.
        let Ok(value) = HeaderValue::try_from(value) else {
            return Ok((false, None, Some(format!("could not build the {name} header")), 0));
        };
        map.insert(HeaderName::from_static(name), value);
    }
    let started = Instant::now();
    let sent = client.post(&url, map, body).await;
    let duration_ms = elapsed_ms(started);
    Ok(match sent {
        Ok(status) if status.is_success() => (true, Some(i64::from(status.as_u16())), None, duration_ms),
        // The status line's canonical text (from the code), not the reason phrase the receiver sent.
        Ok(status) => (false, Some(i64::from(status.as_u16())), Some(format!("answered {status}")), duration_ms),
        Err(error) => (false, None, Some(error.to_string()), duration_ms),
    })
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_scheme() {
        // The example of the Standard Webhooks specification (its key is the base64 part of
        // its `whsec_` secret; herd's key is its secret's bytes, which `signature_headers` uses).
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mac = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(mac),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn both_signature_headers_carry_one_mac_over_id_timestamp_and_body() {
        let (standard, herd) = signature_headers("Jefe", "evt", 1_700_000_000, b"{}");
        let mac = sign(b"Jefe", "evt", 1_700_000_000, b"{}");
        assert_eq!(standard, format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(&mac)));
        assert_eq!(herd, format!("sha256={}", hex::encode(&mac)));
        // Each part is covered.
        assert_ne!(signature_headers("Jefe", "evt", 1_700_000_001, b"{}"), (standard.clone(), herd.clone()));
        assert_ne!(signature_headers("Jefe", "evu", 1_700_000_000, b"{}"), (standard.clone(), herd.clone()));
        assert_ne!(signature_headers("Jefe", "evt", 1_700_000_000, b"{ }"), (standard.clone(), herd.clone()));
        assert_ne!(signature_headers("Jeff", "evt", 1_700_000_000, b"{}"), (standard, herd));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((4_000..=6_000).contains(&backoff(0)));
        assert!((8_000..=12_000).contains(&backoff(1)));
        assert!(backoff(30) <= 4_320_000);
    }
}
