//! Webhooks: tenants subscribe a URL to event types; herd delivers each matching event as a
//! signed POST, retries with exponential backoff and jitter, records every delivery, and
//! switches off a hook that keeps failing (with a `webhook.disabled` event).
//!
//! Signatures follow the Standard Webhooks scheme: `webhook-id` (the event id),
//! `webhook-timestamp` (seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed by the webhook's secret; `X-Herd-Signature:
//! sha256=<hex>` carries the same MAC (docs/webhooks.md shows the receiver's check).
//!
//! Targets: unless `HERD_WEBHOOK_ALLOW_PRIVATE` is on, a delivery connects only to public
//! addresses, checked after resolution on every connection (`client`, `address`);
//! [`check_url`] refuses the obvious cases at registration as a courtesy.
//!
//! Delivery is at least once: a delivery row is created once per (webhook, event) — a unique
//! index makes fan-out idempotent — and is retried until it succeeds or runs out of attempts.
//! Receivers deduplicate with `webhook-id` (= `X-Herd-Event-Id`).

pub mod address;
pub mod client;
pub mod delivery;
pub(crate) mod routes;
pub use herd_store::webhooks as store;

use std::net::IpAddr;

/// Attempts per delivery before it is given up (`dead`).
pub const MAX_ATTEMPTS: i64 = 8;
/// Consecutive failed attempts after which a webhook is disabled.
pub const DISABLE_AFTER_FAILURES: i64 = 20;

/// Checks a webhook URL: http(s), a host, no credentials, at most 2,048 characters, and —
/// unless private targets are allowed — neither a literal address that is not public nor a
/// `localhost` name (in any spelling the URL parser normalises: `LOCALHOST`, `localhost.`,
/// `localhost%2e`, `2130706433`, `[::ffff:7f00:1]` …). A courtesy only: a name that resolves
/// to a private address is caught when a delivery connects (`client`), not here.
pub fn check_url(text: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if text.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; use the signing secret instead".into());
    }
    let host = url.host_str().ok_or("must have a host")?;
    if !allow_private {
        if address::is_localhost_name(host) {
            return Err("must not point at this machine".into());
        }
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.parse::<IpAddr>().is_ok_and(|ip| !address::is_public(ip)) {
            return Err("must be a public address (not loopback, private, link-local, shared or reserved)".into());
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/herd", false).is_ok());
        assert!(check_url("ftp://example.com", false).is_err());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/x", false).is_err());
        assert!(check_url("http://10.1.2.3/x", false).is_err());
        assert!(check_url("http://[::1]/x", false).is_err());
        assert!(check_url("http://localhost/x", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/x", true).is_ok());
        assert!(check_url("http://[::ffff:127.0.0.1]/x", true).is_ok());
        assert!(check_url("https://8.8.8.8/x", false).is_ok());
        assert!(check_url("https://[2606:4700:4700::1111]/x", false).is_ok());
        assert!(check_url("not a url", true).is_err());
    }

    /// Every target of the issue that registration accepted, each refused with private targets
    /// off (and accepted with them on).
    #[test]
    fn the_issues_targets_are_refused_at_registration() {
        for target in [
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fe80::1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://localhost./",
            "http://localhost%2e/",
            "http://LOCALHOST%2E:8080/",
            "http://100.64.0.1/",
            "http://0.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[fec0::1]/",
            "http://[fd00::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
        ] {
            assert!(check_url(target, false).is_err(), "{target}");
            assert!(check_url(target, true).is_ok(), "{target}");
        }
    }

    #[test]
    fn signing_secrets_never_show_in_debug_output() {
        let secret = "whsec_do-not-print-0123456789";
        let row = store::WebhookRow {
            id: herd_domain::ids::WebhookId::new(),
            tenant_id: herd_domain::ids::TenantId::new(),
            url: "https://hooks.example.com/herd".into(),
            events: herd_store::Json(vec![]),
            secret: secret.into(),
            enabled: true,
            disabled_reason: None,
            last_seq: 0,
            consecutive_failures: 0,
            created_at: 0,
            updated_at: 0,
        };
        let create = routes::CreateWebhookRequest { url: row.url.clone(), events: vec![], secret: Some(secret.into()) };
        let update = routes::UpdateWebhookRequest { secret: Some(secret.into()), ..Default::default() };
        let created = routes::CreatedWebhook { webhook: row.clone().into(), secret: secret.into() };
        for printed in [format!("{row:?}"), format!("{create:?}"), format!("{update:?}"), format!("{created:#?}")] {
            assert!(!printed.contains(secret), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
        }
    }
}
