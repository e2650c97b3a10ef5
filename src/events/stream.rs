//! What keeps an open `GET /events/stream` honest: the caps on open streams per token and per
//! tenant ([`StreamLimits`]), and the re-check of the stream's credential ([`Credential`]), so
//! that revoking a token (or a session expiring, or a role being lowered) ends its streams
//! within `HERD_EVENT_STREAM_RECHECK_INTERVAL` and before they send another batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::{header::AUTHORIZATION, HeaderValue};
use herd_domain::ids::{TenantId, TokenId};

use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::http::error::ApiError;

/// What a stream refused at its cap is told to wait before trying again.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Counts of open event streams on this instance, against the caps of the settings
/// (`HERD_EVENT_STREAMS_PER_TOKEN`, `HERD_EVENT_STREAMS_PER_TENANT`).
pub struct StreamLimits {
    per_token: usize,
    per_tenant: usize,
    /// A std mutex: it is held only to change two counters, never across an await.
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    by_token: HashMap<TokenId, usize>,
    by_tenant: HashMap<TenantId, usize>,
}

impl StreamLimits {
    pub(crate) fn new(per_token: usize, per_tenant: usize) -> Self {
        Self { per_token, per_tenant, open: Mutex::new(OpenStreams::default()) }
    }

    /// Counts one more stream of `token` in `tenant`, or answers 429 if either is at its cap.
    /// The stream is counted until the returned permit is dropped (when its response ends).
    pub(crate) fn open(self: &Arc<Self>, token: TokenId, tenant: TenantId) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.by_token.get(&token).copied().unwrap_or(0) >= self.per_token {
            return Err(ApiError::TooManyRequests {
                detail: format!("this token already has {} event streams open; close one first", self.per_token),
                retry_after: STREAM_RETRY_AFTER,
            });
        }
        if open.by_tenant.get(&tenant).copied().unwrap_or(0) >= self.per_tenant {
            return Err(ApiError::TooManyRequests {
                detail: format!("this tenant already has {} event streams open; close one first", self.per_tenant),
                retry_after: STREAM_RETRY_AFTER,
            });
        }
        *open.by_token.entry(token).or_default() += 1;
        *open.by_tenant.entry(tenant).or_default() += 1;
        Ok(StreamPermit { limits: self.clone(), token, tenant })
    }

    fn close(&self, token: TokenId, tenant: TenantId) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        decrement(&mut open.by_token, token);
        decrement(&mut open.by_tenant, tenant);
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

/// One open stream, counted against its token's and tenant's caps until dropped.
pub(crate) struct StreamPermit {
    limits: Arc<StreamLimits>,
    token: TokenId,
    tenant: TenantId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limits.close(self.token, self.tenant);
    }
}

/// The credential a stream was opened with, to be presented again while it runs.
pub(crate) struct Credential {
    authorization: HeaderValue,
    token: TokenId,
    tenant: TenantId,
    every: Duration,
    checked: Instant,
}

impl Credential {
    pub(crate) fn new(authorization: HeaderValue, member: &Member, every: Duration) -> Self {
        Self { authorization, token: member.token_id, tenant: member.tenant_id(), every, checked: Instant::now() }
    }

    /// True when the last check is older than the re-check interval.
    pub(crate) fn due(&self) -> bool {
        self.checked.elapsed() >= self.every
    }

    /// Authenticates the stream's bearer token again, exactly as a new request would be (the
    /// `Member` extractor), and answers whether it is still the same member of the same tenant
    /// with at least the viewer role. Any failure, a database error included, ends the stream
    /// (fail closed: a client resumes with `Last-Event-ID`).
    pub(crate) async fn still_valid(&mut self, state: &AppState) -> bool {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        parts.headers.insert(AUTHORIZATION, self.authorization.clone());
        let valid = match Member::from_request_parts(&mut parts, state).await {
            Ok(member) => {
                member.token_id == self.token
                    && member.tenant_id() == self.tenant
                    && member.require(Role::Viewer).is_ok()
            }
            Err(ApiError::Internal(error)) => {
                tracing::warn!(error = format!("{error:#}"), "cannot re-check an event stream's credential; ending it");
                false
            }
            Err(_) => false,
        };
        self.checked = Instant::now();
        if !valid {
            tracing::info!(token = %self.token, "event stream ended: its credential no longer authenticates");
        }
        valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_token_and_per_tenant_and_permits_give_back() {
        let limits = Arc::new(StreamLimits::new(2, 3));
        let (tenant, other_tenant) = (TenantId::new(), TenantId::new());
        let (a, b, c) = (TokenId::new(), TokenId::new(), TokenId::new());
        let first = limits.open(a, tenant).unwrap();
        let _second = limits.open(a, tenant).unwrap();
        assert!(matches!(limits.open(a, tenant), Err(ApiError::TooManyRequests { .. })), "per token");
        let _third = limits.open(b, tenant).unwrap();
        assert!(matches!(limits.open(c, tenant), Err(ApiError::TooManyRequests { .. })), "per tenant");
        let _elsewhere = limits.open(c, other_tenant).unwrap();
        drop(first);
        let _again = limits.open(c, tenant).unwrap();
        assert!(limits.open(a, tenant).is_err(), "the tenant is full again");
    }
}
