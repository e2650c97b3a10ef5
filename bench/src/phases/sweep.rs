//! The presence sweep: time to mark 100,000 and 1,000,000 stale devices offline, with their
//! `device.status_changed` events (quick mode: the quick fleet).
//!
//! The server runs with a short `HERD_PRESENCE_THRESHOLD` and its periodic sweep pushed out to a
//! day, and exposes the sweep step as `POST /admin/presence/sweep` (platform admin). One run:
//! wait out the threshold and sweep (untimed) so nothing else is online; heartbeat exactly N
//! devices so they are online; wait out the threshold again; then time one sweep request.
//! The response's count of devices marked offline is checked against N when the server gives one,
//! and its own `durationMs` (the sweep without HTTP) is reported beside the client's timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::context::Bench;
use crate::http::{send_once, Method, Request, Response};
use crate::load::{expect_success, LoadPlan, Stop};
use crate::phases::DeviceRequests;
use crate::probe::is_missing_route;
use crate::report::{format_count, Aim, Figure, PhaseReport};

/// What herd is started with (`HERD_PRESENCE_THRESHOLD`).
pub const PRESENCE_THRESHOLD: Duration = Duration::from_secs(2);

/// From this fleet size on, the sweep is measured in one run instead of `--runs`.
const MANY_DEVICES: u64 = 1_000_000;

const ROUTE: &str = "POST /admin/presence/sweep (platform admin; runs one presence sweep step now \
                     and answers 200 with the number of devices marked offline)";

/// Runs the sweep phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    // The probe is itself a sweep; harmless at any point of the run.
    let probe = sweep(bench).await?;
    if is_missing_route(probe.status) {
        return Ok(vec![PhaseReport::not_in_build("sweep", ROUTE)]);
    }
    if let Err(error) = expect_success(&probe) {
        bail!("POST /admin/presence/sweep: {error}");
    }

    let mut phase = PhaseReport::new("sweep");
    let sizes = bench.settings.sweep_sizes.clone();
    for size in sizes {
        if let Some(route) = bench.ensure_fleet(size).await? {
            return Ok(vec![PhaseReport::not_in_build("sweep", route)]);
        }
        let tokens = bench.fleet().map(|fleet| fleet.tokens(size)).unwrap_or_else(|| Arc::from(Vec::new()));
        let name = format!("mark {} stale devices offline", format_count(size));
        let mut seconds =
            if size >= 1_000_000 { Figure::new(name, "s").aim(Aim::Below(10.0)) } else { Figure::new(name, "s") };
        let mut server_seconds = Figure::new("  the same, as timed inside the server", "s");
        // Each run brings every device online again first; at a million that is minutes of
        // heartbeats per run, so the largest sizes are swept once.
        let runs = if size >= MANY_DEVICES { 1 } else { bench.settings.runs };
        for run in 1..=runs {
            wait_out_threshold().await;
            let cleared = sweep(bench).await?;
            expect_success(&cleared).map_err(|error| anyhow::anyhow!("clearing sweep: {error}"))?;

            // In a shuffled order, as a fleet comes back from an outage: each device's
            // `lastSeen` then says nothing of where its row lies, as in a real fleet, where
            // devices heartbeat whenever their own timers fire. Brought online in registration
            // order, the stale devices come out of the presence index in row order, and the
            // sweep's batches rewrote neighbouring rows (17.7 s for a million on SQLite against
            // ~120 s replayed in a shuffled order; BENCHMARKS.md, "The sweep in row order").
            let mut order = tokens.to_vec();
            order.shuffle(&mut StdRng::seed_from_u64(run as u64));
            let connect = Arc::new(DeviceRequests {
                path: "/devices/connect",
                tokens: Arc::from(order),
                body: Bytes::from_static(b"{}"),
            });
            let plan = LoadPlan {
                label: format!("bringing {} devices online (run {run}/{runs})", format_count(size)),
                concurrency: bench.settings.concurrency,
                stop: Stop::Jobs(size),
            };
            let online = bench.measure(connect, &plan).await?;
            phase.observe_errors(online.outcome.failed, online.outcome.first_error.as_ref());
            wait_out_threshold().await;

            let sampler = bench.server.sample_rss();
            let started = Instant::now();
            let response = sweep(bench).await?;
            let elapsed = started.elapsed();
            phase.observe_rss(sampler.finish());
            expect_success(&response).map_err(|error| anyhow::anyhow!("timed sweep: {error}"))?;
            seconds.push(elapsed.as_secs_f64());
            if let Some(duration_ms) = response.json().ok().and_then(|body| body["durationMs"].as_f64()) {
                server_seconds.push(duration_ms / 1000.0);
            }
            if let Some(marked) = marked_offline(&response) {
                if marked != online.outcome.completed {
                    phase.notes.push(format!(
                        "run {run}: the sweep marked {} offline, {} were brought online",
                        format_count(marked),
                        format_count(online.outcome.completed)
                    ));
                }
            }
        }
        phase.figures.push(seconds);
        if !server_seconds.runs.is_empty() {
            phase.figures.push(server_seconds);
        }
    }
    Ok(vec![phase])
}

async fn sweep(bench: &Bench) -> Result<Response> {
    let request = Request::new(Method::POST, "/admin/presence/sweep").bearer(bench.admin_token()).json(&json!({}));
    send_once(bench.addr(), &request).await
}

async fn wait_out_threshold() {
    tokio::time::sleep(PRESENCE_THRESHOLD + Duration::from_secs(1)).await;
}

/// The count in the sweep's answer, under whichever of the plausible names the server uses.
fn marked_offline(response: &Response) -> Option<u64> {
    let body = response.json().ok()?;
    ["markedOffline", "marked", "count", "devices", "swept"].iter().find_map(|key| body.get(key)?.as_u64())
}
