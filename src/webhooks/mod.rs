//! Webhooks: tenants subscribe a URL to event types; herd delivers each matching event as a
//! signed POST (`X-Herd-Signature: sha256=<hex HMAC-SHA256 of the body>`), retries with
//! exponential backoff and jitter, records every delivery, and switches off a hook that keeps
//! failing (with a `webhook.disabled` event).
//!
//! Delivery is at least once: a delivery row is created once per (webhook, event) — a unique
//! index makes fan-out idempotent — and is retried until it succeeds or runs out of attempts.
//! Receivers deduplicate with `X-Herd-Event-Id`.

pub mod delivery;
pub(crate) mod routes;
pub use herd_store::webhooks as store;

use std::net::IpAddr;

/// Attempts per delivery before it is given up (`dead`).
pub const MAX_ATTEMPTS: i64 = 8;
/// Consecutive failed attempts after which a webhook is disabled.
pub const DISABLE_AFTER_FAILURES: i64 = 20;

/// Checks a webhook URL: http(s), a host, no credentials, at most 2,048 characters, and —
/// unless private targets are allowed — no loopback, private or link-local literal address.
/// (A public name that resolves to a private address is not caught here.)
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
    let host = url.host_str().ok_or("must have a host")?.to_string();
    if !allow_private {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare == "localhost" || bare.ends_with(".localhost") {
            return Err("must not point at this machine".into());
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let private = match ip {
                IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified(),
                IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00,
            };
            if private {
                return Err("must not point at a loopback, private or link-local address".into());
            }
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
        assert!(check_url("not a url", true).is_err());
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
