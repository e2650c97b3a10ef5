//! Background jobs. Each job is a loop around one public step function (zero2prod's
//! `try_execute_task`): tests call the step directly with a chosen `now`; the loop here only
//! schedules it and stops when the shutdown token is cancelled.
//!
//! Every job acts as [`crate::auth::System`]: no request is behind it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::shutdown::CancellationToken;
use crate::telemetry_metrics::HttpMetrics;

/// Starts every background job of the server. Add a job by adding one `run_every_from` line.
pub fn spawn_all(state: &AppState, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
    let mut jobs: Vec<JoinHandle<()>> = Vec::new();
    let metrics = JobObserver::of(state);
    jobs.push(crate::certificates::monitor::spawn(state, shutdown));
    let (db, clock, retention) = (state.db.clone(), state.clock.clone(), state.settings.metrics_retention);
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "metrics-retention",
        crate::telemetry::RETENTION_INTERVAL,
        shutdown.clone(),
        move || {
            let (db, now) = (db.clone(), crate::clock::to_millis(clock.now()));
            async move { crate::telemetry::purge_expired(&db, now, retention).await.map(drop).map_err(Into::into) }
        },
    ));
    let (db, system, clock) = (state.db.clone(), state.system.clone(), state.clock.clone());
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "offline-rules",
        state.settings.presence_sweep_interval,
        shutdown.clone(),
        move || {
            let (db, system, now) = (db.clone(), system.clone(), crate::clock::to_millis(clock.now()));
            async move { crate::monitoring::evaluate_offline(&db, &system, now).await.map(drop).map_err(Into::into) }
        },
    ));
    let presence = state.clone();
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "presence-sweep",
        state.settings.presence_sweep_interval,
        shutdown.clone(),
        move || {
            let state = presence.clone();
            async move { crate::presence::run_sweep(&state).await.map(drop).map_err(Into::into) }
        },
    ));
    let (db, system, heartbeats) = (state.db.clone(), state.system.clone(), state.heartbeats.clone());
    // The buffer is empty at start, so the first flush waits one interval (and a test that sets
    // a long interval flushes itself without racing this loop).
    let interval = state.settings.heartbeat_flush_interval;
    jobs.push(run_every_from(metrics.clone(), interval, "heartbeat-flush", interval, shutdown.clone(), move || {
        let (db, system, heartbeats) = (db.clone(), system.clone(), heartbeats.clone());
        async move { heartbeats.flush(&db, &system).await.map(drop).map_err(Into::into) }
    }));
    let (db, clock, retention) = (state.db.clone(), state.clock.clone(), state.settings.event_retention);
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "event-retention",
        Duration::from_secs(3600),
        shutdown.clone(),
        move || {
            let db = db.clone();
            let before =
                crate::clock::to_millis(clock.now()) - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            async move { crate::events::store::purge(&db, before).await.map(drop).map_err(Into::into) }
        },
    ));
    let webhooks = state.clone();
    let client = state.webhook_client.clone();
    // Its first run waits one interval, like every later one: a test that sets a long interval
    // drives deliveries itself and never races this loop.
    let interval = state.settings.webhook_delivery_interval;
    jobs.push(run_every_from(metrics.clone(), interval, "webhooks", interval, shutdown.clone(), move || {
        let (state, client) = (webhooks.clone(), client.clone());
        async move {
            let now = crate::clock::to_millis(state.clock.now());
            crate::webhooks::delivery::fan_out(&state.db, &state.system, now).await?;
            crate::webhooks::delivery::deliver_due(&state.db, &state.system, &client, &state.metrics, now).await?;
            Ok(())
        }
    }));
    let commands = state.clone();
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "command-expiry",
        state.settings.command_expiry_interval,
        shutdown.clone(),
        move || {
            let state = commands.clone();
            async move {
                let now = crate::clock::to_millis(state.clock.now());
                crate::commands::expire_due(&state, now).await.map(drop).map_err(Into::into)
            }
        },
    ));
    let rollouts = state.clone();
    jobs.push(run_every_from(
        metrics.clone(),
        Duration::ZERO,
        "rollouts",
        state.settings.rollout_interval,
        shutdown.clone(),
        move || {
            let state = rollouts.clone();
            async move {
                let now = crate::clock::to_millis(state.clock.now());
                crate::rollouts::run_due(&state, now).await.map(drop).map_err(Into::into)
            }
        },
    ));
    jobs.push(tokio::spawn(crate::listen::follow_other_instances(
        state.db.clone(),
        state.command_waiters.clone(),
        shutdown.clone(),
    )));
    jobs
}

/// Runs `step` at once and then every `interval` until `shutdown` is cancelled. A failing step
/// is logged and retried at the next tick; it never ends the loop.
pub fn run_every<F, Fut>(name: &'static str, interval: Duration, shutdown: CancellationToken, step: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    schedule(Duration::ZERO, name, interval, shutdown, None, step)
}

/// Where a job's steps are recorded: the app's metrics, and its clock for the time of the last
/// success.
#[derive(Clone)]
pub struct JobObserver {
    pub metrics: Arc<HttpMetrics>,
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl JobObserver {
    /// The observer of `state`'s jobs.
    pub fn of(state: &AppState) -> JobObserver {
        JobObserver { metrics: state.metrics.clone(), clock: state.clock.clone() }
    }
}

/// [`run_every`] with the first run `first_after` from now (`Duration::ZERO`: at once), recording
/// each step through `observer` (`herd_job_*`: runs by outcome, duration, how late the step
/// started after its tick was due, the time of the last success).
pub fn run_every_from<F, Fut>(
    observer: JobObserver,
    first_after: Duration,
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    step: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    schedule(first_after, name, interval, shutdown, Some(observer), step)
}

fn schedule<F, Fut>(
    first_after: Duration,
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    observer: Option<JobObserver>,
    mut step: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first_after, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = tokio::select! {
                () = shutdown.cancelled() => break,
                due = ticker.tick() => due,
            };
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                result = step() => result,
            };
            if let Some(JobObserver { metrics, clock }) = &observer {
                let lag = started.saturating_duration_since(due);
                let finished_at = result.is_ok().then(|| clock.now());
                metrics.observe_job(name, lag, started.elapsed(), finished_at);
            }
            if let Err(error) = result {
                tracing::error!(job = name, error = format!("{error:#}"), "background job step failed");
            }
        }
        tracing::debug!(job = name, "background job stopped");
    })
}
