//! Registrations per second: `POST /devices/auto-register` with fresh identifiers under an
//! enrollment token, at the load concurrency. The devices join the fleet for later phases.

use anyhow::{anyhow, Result};

use crate::context::Bench;
use crate::report::{Aim, Figure, PhaseReport};

/// Runs the registration phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    if let Some(route) = bench.ensure_fleet(1).await? {
        return Ok(vec![PhaseReport::not_in_build("registration", route)]);
    }
    let concurrency = bench.settings.concurrency;
    let runs = bench.settings.runs;
    let addr = bench.addr();
    let mut phase = PhaseReport::new("registration");
    let mut rate = Figure::new(format!("auto-register (c={concurrency})"), "req/s").aim(Aim::AtLeast(2_000.0));
    let mut p50 = Figure::new("auto-register p50", "ms");
    let mut p99 = Figure::new("auto-register p99", "ms");

    let warmup = bench.warmup_plan("registration warm-up", concurrency);
    bench.fleet_mut().ok_or_else(|| anyhow!("fleet vanished"))?.register(addr, &warmup).await?;
    for run in 1..=runs {
        let plan = bench.timed_plan(format!("registration run {run}/{runs}"), concurrency);
        let sampler = bench.server.sample_rss();
        let outcome = bench.fleet_mut().ok_or_else(|| anyhow!("fleet vanished"))?.register(addr, &plan).await?;
        phase.observe_rss(sampler.finish());
        phase.observe_errors(outcome.failed, outcome.first_error.as_ref());
        rate.push(outcome.per_second());
        p50.push(outcome.latency_ms(0.5));
        p99.push(outcome.latency_ms(0.99));
    }
    phase.figures = vec![rate, p50, p99];
    if let Some(fleet) = bench.fleet() {
        phase.notes.push(format!("fleet is now {} devices", fleet.devices().len()));
    }
    Ok(vec![phase])
}
