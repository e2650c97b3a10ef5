//! The certificate monitor (the seed's `startMonitoring`): one public step, [`run_once`], that
//! `jobs` schedules every `HERD_CERT_MONITOR_INTERVAL` and tests call after moving the clock.
//!
//! Each step activates due `pending` certificates, expires those past `notAfter`
//! (`certificate.expired`), warns once about those entering the last
//! `HERD_CERT_RENEWAL_WARNING_DAYS` (`certificate.expiring`), auto-renews server-key
//! certificates at `HERD_CERT_AUTO_RENEWAL_DAYS` (`certificate.renewed` + `certificate.issued`),
//! and re-signs the CRL before its `nextUpdate`.
//!
//! Exactly once with several instances on one database: every transition is a conditional
//! UPDATE whose WHERE re-checks the state it changes (`status`, `warned_at IS NULL`), so a row
//! moved by one instance no longer matches for another; auto-renewal claims rows (`FOR UPDATE
//! SKIP LOCKED` on PostgreSQL) and commits the successor only if the old record is still
//! unreplaced. The monitor acts as the system principal, in each record's own tenant.

use super::{CertificateService, NewKey};
use crate::auth::{System, TenantScope};
use crate::events::Event;
use crate::ids::{CertificateId, DeviceId, TenantId};
use crate::store::StoreError;

/// Rows one transaction moves at most.
const BATCH: i64 = 500;
/// An auto-renewal claim older than this is taken again (its instance probably died).
const RECLAIM_AFTER_MS: i64 = 10 * 60 * 1000;
const DAY_MS: i64 = 86_400_000;

/// What one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MonitorOutcome {
    pub activated: u64,
    pub expired: usize,
    pub warned: usize,
    pub renewed: usize,
    /// Renewals that failed or lost a race (logged).
    pub renewals_skipped: usize,
    pub crl_published: bool,
}

/// One monitor step at `now` (milliseconds).
pub async fn run_once(service: &CertificateService, system: &System, now: i64) -> anyhow::Result<MonitorOutcome> {
    let db = &service.db;
    let mut outcome =
        MonitorOutcome { activated: super::store::activate_due(db, system, now).await?, ..Default::default() };

    loop {
        let mut tx = db.begin().await?;
        let rows = super::store::expire_due(&mut tx, system, now, BATCH).await?;
        for row in &rows {
            let (tenant_id, certificate_id, device_id) = ids(row)?;
            let event = Event::CertificateExpired { certificate_id, device_id, not_after: row.not_after };
            tx.record(tenant_id, &event, now);
        }
        tx.commit().await?;
        outcome.expired += rows.len();
        if (rows.len() as i64) < BATCH {
            break;
        }
    }

    let warn_before = now + i64::from(service.renewal_warning_days) * DAY_MS;
    loop {
        let mut tx = db.begin().await?;
        let rows = super::store::warn_due(&mut tx, system, now, warn_before, BATCH).await?;
        for row in &rows {
            let (tenant_id, certificate_id, device_id) = ids(row)?;
            let days_left = (row.not_after - now).div_euclid(DAY_MS);
            let event = Event::CertificateExpiring { certificate_id, device_id, not_after: row.not_after, days_left };
            tx.record(tenant_id, &event, now);
        }
        tx.commit().await?;
        outcome.warned += rows.len();
        if (rows.len() as i64) < BATCH {
            break;
        }
    }

    let renew_before = now + i64::from(service.auto_renewal_days) * DAY_MS;
    loop {
        let claimed =
            super::store::claim_renewals(db, system, now, renew_before, now - RECLAIM_AFTER_MS, BATCH).await?;
        for row in &claimed {
            let (tenant_id, certificate_id, device_id) = ids(row)?;
            let scope = TenantScope::for_system(system, db, tenant_id);
            match service.issue(&scope, device_id, NewKey::Generated, Some(certificate_id), now).await {
                Ok(_) => outcome.renewed += 1,
                Err(error) => {
                    outcome.renewals_skipped += 1;
                    tracing::warn!(certificate = %certificate_id, %error, "auto-renewal skipped");
                }
            }
        }
        if (claimed.len() as i64) < BATCH {
            break;
        }
    }

    let state = super::store::crl_state(db).await?;
    let now_seconds = now.div_euclid(1000);
    let due = state.stale
        || state.der_base64.is_none()
        || state.next_update.is_none_or(|next| next - now_seconds <= super::CRL_REFRESH_MARGIN_SECONDS);
    if due {
        service.publish_crl(now).await?;
        outcome.crl_published = true;
    }
    Ok(outcome)
}

fn ids(row: &super::store::Transition) -> Result<(TenantId, CertificateId, DeviceId), StoreError> {
    Ok((row.tenant_id, row.id, row.device_id))
}

/// Schedules [`run_once`] every `HERD_CERT_MONITOR_INTERVAL` (first run at startup).
pub fn spawn(
    state: &crate::app::AppState,
    shutdown: &crate::shutdown::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    crate::jobs::run_every_from(
        crate::jobs::JobObserver::of(&state),
        std::time::Duration::ZERO,
        "certificate-monitor",
        state.settings.cert_monitor_interval,
        shutdown.clone(),
        move || {
            let state = state.clone();
            async move {
                let now = crate::clock::to_millis(state.clock.now());
                let outcome = run_once(&state.certificates, &state.system, now).await?;
                if outcome != MonitorOutcome::default() {
                    tracing::info!(?outcome, "certificate monitor");
                }
                Ok(())
            }
        },
    )
}
