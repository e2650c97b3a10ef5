//! The stats overview: `GET /devices/stats/overview` latency for a tenant with 100,000 devices and
//! ~10M metric samples (quick mode: the quick fleet and 50k samples), one request at a time so the
//! figure is the query's cost, not queueing. Also reports the server's RSS at that fleet size.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::context::Bench;
use crate::http::{send_once, Method, Request, Response};
use crate::load::{expect_success, Workload};
use crate::phases::metrics;
use crate::probe::is_missing_route;
use crate::report::{format_count, Aim, Figure, PhaseReport};

const ROUTE: &str = "GET /devices/stats/overview";

/// Runs the overview phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let request = Request::new(Method::GET, "/devices/stats/overview").bearer(bench.admin_token());
    let response = send_once(bench.addr(), &request).await?;
    if is_missing_route(response.status) {
        return Ok(vec![PhaseReport::not_in_build("overview", ROUTE)]);
    }
    if let Err(error) = expect_success(&response) {
        bail!("{ROUTE}: {error}");
    }

    let n_devices = bench.settings.overview_devices;
    if let Some(route) = bench.ensure_fleet(n_devices).await? {
        return Ok(vec![PhaseReport::not_in_build("overview", route)]);
    }
    let mut phase = PhaseReport::new("overview");
    let tokens = bench.fleet().map(|fleet| fleet.tokens(n_devices)).unwrap_or_else(|| Arc::from(Vec::new()));
    let target_samples = bench.settings.overview_samples;
    if bench.samples_stored < target_samples {
        if metrics::available(bench, &tokens).await? {
            let missing = target_samples - bench.samples_stored;
            metrics::store_samples(bench, tokens, missing).await?;
        } else {
            phase.notes.push(format!("no metric samples stored: {} is not in this build", metrics::ROUTE));
        }
    }
    let fleet_size = bench.fleet().map_or(0, |fleet| fleet.devices().len());
    phase.notes.push(format!(
        "tenant with {} devices and {} metric samples; one request at a time",
        format_count(fleet_size as u64),
        format_count(bench.samples_stored)
    ));

    let workload = Arc::new(Overview { admin_token: bench.admin_token() });
    let mut p50 = Figure::new("overview p50 (c=1)", "ms").aim(Aim::Below(20.0));
    let mut p99 = Figure::new("overview p99 (c=1)", "ms").aim(Aim::Below(20.0));
    let mut rate = Figure::new("overview throughput (c=1)", "req/s");
    let rss_name = format!("server RSS with {} devices", format_count(fleet_size as u64));
    let mut rss = if fleet_size >= 100_000 {
        Figure::new(rss_name, "MiB").aim(Aim::Below(150.0))
    } else {
        Figure::new(rss_name, "MiB")
    };

    bench.measure(Arc::clone(&workload), &bench.warmup_plan("overview warm-up", 1)).await?;
    let runs = bench.settings.runs;
    for run in 1..=runs {
        let plan = bench.timed_plan(format!("overview run {run}/{runs}"), 1);
        let measured = bench.measure(Arc::clone(&workload), &plan).await?;
        super::observe(&mut phase, &measured);
        p50.push(measured.outcome.latency_ms(0.5));
        p99.push(measured.outcome.latency_ms(0.99));
        rate.push(measured.outcome.per_second());
        if let Some(peak) = measured.rss_peak_mib {
            rss.push(peak);
        }
    }
    phase.figures = vec![p50, p99, rate, rss];
    Ok(vec![phase])
}

struct Overview {
    admin_token: Arc<str>,
}

impl Workload for Overview {
    fn request(&self, _job: u64) -> Request {
        Request::new(Method::GET, "/devices/stats/overview").bearer(Arc::clone(&self.admin_token))
    }

    fn accept(&self, _job: u64, response: &Response) -> Result<(), String> {
        expect_success(response)
    }
}
