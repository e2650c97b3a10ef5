//! The rollout policy. [`advance`] moves one running rollout as far
//! as it can go now: pause it if a started wave's failures cross the threshold; notify (or skip)
//! the pending devices of the waves so far whose maintenance window is open; once none is
//! pending, start the soak; after the soak, start the next wave — or, in the last wave,
//! complete the rollout once every device has finished. Every write is a conditional transition in the store, so the job may run on every
//! instance at once (and a request may call [`advance`] while the job does): each transition
//! and its event happens once.

use chrono::{DateTime, Timelike, Utc};
use serde_json::json;

use super::store::{self, Candidate, Dispatch, Notification, RolloutRow, WaveFigures};
use crate::app::AppState;
use crate::packages::store::{self as packages, PackageRow};
use herd_domain::event::RolloutChange;
use herd_domain::ids::RolloutId;
use herd_domain::status::RolloutState;
use herd_store::{StoreError, TenantScope};

/// Pending devices read per round trip while notifying a wave.
const CHUNK: i64 = 5_000;
/// How long an `install_package` command waits for its device, and how long a device that
/// fetched it has to report on the update before the command is failed (the update itself
/// stays where the device's reports left it).
const COMMAND_EXPIRY_MS: i64 = 30 * 24 * 3600 * 1000;
const COMMAND_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;

/// What advancing did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// Running rollouts looked at.
    pub rollouts: usize,
    pub notified: usize,
    pub skipped: usize,
}

/// Moves one rollout as far as it can go at `now` (nothing unless it is running).
pub(crate) async fn advance(
    state: &AppState,
    scope: &TenantScope,
    id: RolloutId,
    now: i64,
) -> Result<Advanced, StoreError> {
    let mut done = Advanced { rollouts: 1, ..Advanced::default() };
    // Each turn either stops or starts a later wave, so a rollout of n waves needs n + 1.
    for _ in 0..=super::MAX_WAVES {
        let Some(rollout) = store::get(scope, id).await? else { return Ok(done) };
        if rollout.state != RolloutState::Running {
            return Ok(done);
        }
        let figures = store::figures(scope, id, rollout.failures_since).await?;
        if let Some(reason) = over_threshold(&rollout, &figures) {
            store::conclude(scope, &rollout, RolloutChange::Paused, Some(&reason), now).await?;
            return Ok(done);
        }
        let Some(package) = packages::get(scope, rollout.package_id).await? else {
            store::conclude(scope, &rollout, RolloutChange::Paused, Some("its package was deleted"), now).await?;
            return Ok(done);
        };
        let pending: i64 = figures.iter().filter(|f| f.wave <= rollout.current_wave).map(|f| f.pending).sum();
        if pending > 0 {
            let (notified, skipped, waiting) = notify_pending(state, scope, &rollout, &package, now).await?;
            done.notified += notified;
            done.skipped += skipped;
            if waiting > 0 || notified + skipped == 0 {
                // Outside their maintenance window (or moved by another instance meanwhile).
                return Ok(done);
            }
        }
        let notified_at = match rollout.wave_notified_at {
            Some(at) => at,
            None => {
                store::mark_wave_notified(scope, &rollout, now).await?;
                now
            }
        };
        let soaked = now >= notified_at.saturating_add(rollout.soak_ms);
        let next = figures.iter().find(|f| f.wave > rollout.current_wave);
        match next {
            None => {
                // The last wave with devices: complete once every device has finished
                // (installed, failed, skipped). A device that never answers keeps the rollout
                // running, and visible as such, until an operator cancels it.
                let refreshed = store::figures(scope, id, rollout.failures_since).await?;
                if let Some(reason) = over_threshold(&rollout, &refreshed) {
                    store::conclude(scope, &rollout, RolloutChange::Paused, Some(&reason), now).await?;
                } else if refreshed.iter().all(|f| f.finished == f.devices) {
                    store::conclude(scope, &rollout, RolloutChange::Completed, None, now).await?;
                }
                return Ok(done);
            }
            Some(next) if soaked => {
                if !store::start_wave(scope, &rollout, next.wave, next.devices, now).await? {
                    return Ok(done);
                }
            }
            Some(_) => return Ok(done),
        }
    }
    Ok(done)
}

/// The reason to pause when a started wave's failures (since the last resume) are above the
/// threshold, in percent of its devices that were not skipped.
fn over_threshold(rollout: &RolloutRow, figures: &[WaveFigures]) -> Option<String> {
    let waves = rollout.waves.0.len();
    figures.iter().filter(|f| f.wave <= rollout.current_wave).find_map(|f| {
        let counted = f.devices - f.skipped;
        (counted > 0 && f.failed * 100 > rollout.failure_threshold * counted).then(|| {
            format!(
                "wave {} of {waves}: {} of {counted} devices failed ({} %), above the {} % failure threshold",
                f.wave + 1,
                f.failed,
                f.failed * 100 / counted,
                rollout.failure_threshold
            )
        })
    })
}

/// Notifies or skips the pending devices of the waves so far whose window is open. Answers
/// (notified, skipped, still waiting for their window).
async fn notify_pending(
    state: &AppState,
    scope: &TenantScope,
    rollout: &RolloutRow,
    package: &PackageRow,
    now: i64,
) -> Result<(usize, usize, usize), StoreError> {
    let payload = json!({
        "url": format!("/devices/self/packages/{}/download", package.id),
        "sha256": package.sha256,
        "size": package.size,
        "packageName": package.name,
        "versionCode": package.version_code,
        "version": package.version,
        "packageId": package.id,
        "rolloutId": rollout.id,
    })
    .to_string();
    let notification = Notification {
        payload: &payload,
        expires_at: now.saturating_add(COMMAND_EXPIRY_MS),
        timeout_ms: COMMAND_TIMEOUT_MS,
        origin: state.command_waiters.origin(),
    };
    let at = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
    let (mut notified, mut skipped, mut waiting) = (0, 0, 0);
    let mut after = None;
    loop {
        let candidates =
            store::candidates(scope, rollout.id, rollout.current_wave, &package.name, after, CHUNK).await?;
        let Some(last) = candidates.last() else { break };
        after = Some(last.device_id);
        let full = i64::try_from(candidates.len()).unwrap_or(i64::MAX) >= CHUNK;
        let mut dispatch = Dispatch::default();
        for candidate in &candidates {
            match decide(rollout, package, candidate, at) {
                Decision::Notify => dispatch.notify.push(candidate.device_id),
                Decision::Skip(reason) => match dispatch.skip.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, devices)) => devices.push(candidate.device_id),
                    None => dispatch.skip.push((reason, vec![candidate.device_id])),
                },
                Decision::Wait => waiting += 1,
            }
        }
        let (moved, s) = store::dispatch(scope, rollout, &dispatch, &notification, now).await?;
        // Only the devices that got a command: waking the tenant's every parked poll would
        // send a fleet of 10,000 to the database for a wave of 100.
        for device in &moved {
            state.command_waiters.wake_device(*device);
        }
        notified += moved.len();
        skipped += s;
        if !full {
            break;
        }
    }
    Ok((notified, skipped, waiting))
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Notify,
    Skip(String),
    /// Outside the maintenance window in its own time zone: stays pending.
    Wait,
}

/// Whether a pending device gets the package now: skipped when the package does not target
/// its model or it already has this version code (or a newer one, unless downgrades are
/// allowed); held while its local time is outside the rollout's maintenance window.
fn decide(rollout: &RolloutRow, package: &PackageRow, candidate: &Candidate, at: DateTime<Utc>) -> Decision {
    if !package.targets(candidate.model.as_deref()) {
        return Decision::Skip(format!(
            "model {} is not among the package's target models",
            candidate.model.as_deref().unwrap_or("(unknown)")
        ));
    }
    match candidate.installed_code {
        Some(code) if code == package.version_code => {
            return Decision::Skip(format!("already at versionCode {code}"));
        }
        Some(code) if code > package.version_code && !rollout.allow_downgrade => {
            return Decision::Skip(format!(
                "has versionCode {code}, newer than {}; the rollout does not allow downgrades",
                package.version_code
            ));
        }
        _ => {}
    }
    match rollout.window_start.zip(rollout.window_end) {
        Some((start, end)) if !in_window(local_minute(candidate.timezone.as_deref(), at), start, end) => Decision::Wait,
        _ => Decision::Notify,
    }
}

/// Minutes since local midnight at `at` in `timezone` (an IANA name; unknown or none: UTC).
fn local_minute(timezone: Option<&str>, at: DateTime<Utc>) -> i64 {
    let zone = timezone.and_then(|name| name.parse::<chrono_tz::Tz>().ok()).unwrap_or(chrono_tz::UTC);
    let local = at.with_timezone(&zone);
    i64::from(local.hour()) * 60 + i64::from(local.minute())
}

/// Whether `minute` is within `[start, end)`, a window that may span midnight.
fn in_window(minute: i64, start: i64, end: i64) -> bool {
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_may_span_midnight() {
        assert!(in_window(150, 120, 300));
        assert!(!in_window(300, 120, 300), "the end is excluded");
        assert!(!in_window(60, 120, 300));
        // 22:00–04:00
        assert!(in_window(23 * 60, 22 * 60, 4 * 60));
        assert!(in_window(60, 22 * 60, 4 * 60));
        assert!(!in_window(12 * 60, 22 * 60, 4 * 60));
    }

    #[test]
    fn local_time_follows_the_device_time_zone() {
        let at = Utc.with_ymd_and_hms(2026, 7, 1, 1, 30, 0).unwrap();
        assert_eq!(local_minute(None, at), 90);
        assert_eq!(local_minute(Some("UTC"), at), 90);
        // Berlin is UTC+2 in July; Los Angeles UTC-7.
        assert_eq!(local_minute(Some("Europe/Berlin"), at), 3 * 60 + 30);
        assert_eq!(local_minute(Some("America/Los_Angeles"), at), 18 * 60 + 30);
        assert_eq!(local_minute(Some("Not/AZone"), at), 90, "unknown zones are read as UTC");
    }
}
