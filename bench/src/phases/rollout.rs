//! A staged rollout taken by a parked fleet (issue 12: "10,000 simulated devices take an update
//! in waves; report the time per wave and the state-report throughput").
//!
//! N devices (`--devices`; quick mode: the quick fleet) each hold one long poll
//! `GET /devices/self/commands?wait=25s` on a connection of their own, as in the commands phase.
//! One run: the harness uploads a small package (`POST /packages`, [`PACKAGE_BYTES`] bytes, a new
//! `versionCode` per run) and creates a started rollout of it to the whole fleet, `waves
//! [1, 10, 50, 100]`, failure threshold 100 % and a soak of [`soak_seconds`] (herd runs its
//! rollout job every [`crate::server::ROLLOUT_INTERVAL`]). Every device whose poll hands it the
//! `install_package` command reports `downloading`, downloads the package
//! (`GET /devices/self/packages/{id}/download`, its length checked), reports `installing` and
//! `installed`, and polls again.
//!
//! Why a soak: herd starts the next wave once every device of the waves so far has been
//! *notified* and the soak has passed — not once they installed. With `soakSeconds: 0` the
//! request that starts the rollout notifies every wave at once (the engine loops through the
//! waves in one step), so there would be no waves to time. The soak spaces them; each wave's
//! time is measured from its own `startedAt` (herd's clock, `GET /rollouts/{id}`) to the last
//! `installed` report of its devices acknowledged (the harness's clock, the same machine), so it
//! includes the job noticing the wave, the fan-out to the woken polls, the downloads and three
//! reports per device — and, when a wave takes longer than the soak, sharing the server with
//! the next wave (the notes say when that happened).
//!
//! A run ends when every device's `installed` was acknowledged and herd reports the rollout
//! `completed`; it must then count `installed == total == N` and no failure, or the phase fails.
//! Which device is in which wave is read from `GET /rollouts/{id}/devices?wave=`. Nothing waits
//! without a limit: requests have timeouts, a device gives up after [`MAX_DEVICE_FAILURES`]
//! failures in a row (a 409 on a report is a failure), and a run has a deadline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::commands::{devices_that_fit, raise_open_file_limit, POLL_WAIT};
use crate::context::Bench;
use crate::fleet::Device;
use crate::http::{Connection, Method, Request, Response, StatusCode};
use crate::load::{expect_success, Stop};
use crate::probe::is_missing_route;
use crate::progress::Progress;
use crate::report::{format_count, Figure, PhaseReport};

const ROUTE: &str = "POST /rollouts and GET /devices/self/commands";

/// The rollout's waves: cumulative percentages of the fleet (issue 12's).
pub const WAVES: [u64; 4] = [1, 10, 50, 100];

/// Size of the uploaded package: small, the phase measures the rollout, not the transfer.
pub const PACKAGE_BYTES: usize = 4 * 1024;

/// The package's name (its `versionCode` is the run number).
const PACKAGE_NAME: &str = "bench.app";

/// The states each device reports, in order; the package is downloaded after the first.
const REPORTS: [&str; 3] = ["downloading", "installing", "installed"];

/// A request gets this long beyond what it asked to wait before the device calls it lost (as in
/// the commands phase: longer than herd's waits for a database connection).
const REQUEST_SLACK: Duration = Duration::from_secs(45);

/// A device that fails this many requests in a row gives up, and the phase fails with its error.
const MAX_DEVICE_FAILURES: u32 = 5;

/// Pause after a device's first failed request; doubled after each further one in a row.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Devices opening their connection (and first poll) at once.
const PARKING_CONCURRENCY: usize = 256;

/// How often the harness reads `GET /rollouts/{id}` during a run.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Seconds each wave soaks before the next starts: long enough, on the reference machine with
/// SQLite, for a wave of the full fleet to install before the next one starts; short in quick
/// mode, where only the harness's working is checked.
pub fn soak_seconds(quick: bool) -> u64 {
    if quick {
        2
    } else {
        15
    }
}

/// How long one run may take before it fails: generous, it only keeps a broken run from hanging.
pub fn run_deadline(n_devices: u64, soak: u64) -> Duration {
    let waves = WAVES.len() as u64;
    Duration::from_secs(120 + soak * waves)
        + Duration::from_millis(50).saturating_mul(u32::try_from(n_devices).unwrap_or(u32::MAX))
}

/// Runs the rollout phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let limit = raise_open_file_limit(bench.settings.n_devices)?;
    let (n_devices, limited) = devices_that_fit(bench.settings.n_devices, limit, bench.settings.quick)?;
    if let Some(route) = bench.ensure_fleet(n_devices).await? {
        return Ok(vec![PhaseReport::not_in_build("rollout", route)]);
    }
    let fleet_size = bench.fleet().map_or(0, |fleet| fleet.devices().len() as u64);
    let devices: Vec<Device> = bench
        .fleet()
        .map(|fleet| fleet.devices().iter().take(usize::try_from(n_devices).unwrap_or(usize::MAX)).cloned().collect())
        .unwrap_or_default();
    if devices.is_empty() {
        bail!("the fleet has no devices");
    }
    let addr = bench.addr();
    let admin = bench.admin_token();
    let mut operator = Connection::new(addr)?;
    if !probe(&mut operator, &admin).await? {
        return Ok(vec![PhaseReport::not_in_build("rollout", ROUTE)]);
    }
    let n = devices.len() as u64;
    let target = target(fleet_size, &devices)?;
    let soak = soak_seconds(bench.settings.quick);
    let sizes = wave_sizes(n, &WAVES);

    let mut phase = PhaseReport::new("rollout");
    phase.notes.extend(limited);
    let mut create_ms = Figure::new("POST /rollouts (create + start wave 1)", "ms");
    let mut wave_figures: Vec<Figure> = WAVES
        .iter()
        .zip(&sizes)
        .enumerate()
        .map(|(index, (percent, size))| {
            Figure::new(
                format!("wave {} ({percent} %, {} devices): start → all installed", index + 1, format_count(*size)),
                "s",
            )
        })
        .collect();
    let mut completed_s = Figure::new("rollout: start → completed", "s");
    let mut busiest_rate = Figure::new("state reports, largest wave", "reports/s");
    let mut overall_rate = Figure::new("state reports, whole rollout (soaks included)", "reports/s");
    let mut report_p50 = Figure::new("state report latency p50", "ms");
    let mut report_p99 = Figure::new("state report latency p99", "ms");

    let sampler = bench.server.sample_rss();
    let (events, receiver) = mpsc::unbounded_channel();
    let mut inbox = Inbox { receiver, n_devices: n, retried: 0, first_retry_error: None };
    let mut fleet = JoinSet::new();
    let parking = Arc::new(Semaphore::new(PARKING_CONCURRENCY));
    for device in &devices {
        let simulated =
            SimulatedDevice { addr, device: device.clone(), events: events.clone(), parking: Arc::clone(&parking) };
        fleet.spawn(simulated.run());
    }
    drop(events);
    park(&mut inbox, n, soak).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let runs = bench.settings.runs;
    for run in 1..=runs {
        let package = upload(&mut operator, &admin, run).await?;
        let label = format!("rollout run {run}/{runs}: devices installed, of {}", format_count(n));
        let outcome = roll_out(&mut operator, &admin, &package, &target, soak, n, &mut inbox, label).await?;
        let waves = wave_of_devices(&mut operator, &admin, &outcome.rollout_id).await?;
        let timing = wave_timing(&outcome.starts_ms, &outcome.installs, &waves)?;
        create_ms.push(outcome.create.as_secs_f64() * 1000.0);
        for (figure, wave) in wave_figures.iter_mut().zip(&timing) {
            if let Some(seconds) = wave.seconds() {
                figure.push(seconds);
            }
        }
        completed_s.push(outcome.completed_seconds);
        if let Some(rate) = timing.iter().max_by_key(|wave| wave.devices).and_then(WaveTiming::report_rate) {
            busiest_rate.push(rate);
        }
        if let Some(rate) = overall_report_rate(&outcome.installs) {
            overall_rate.push(rate);
        }
        report_p50.push(outcome.report_us.value_at_quantile(0.5) as f64 / 1000.0);
        report_p99.push(outcome.report_us.value_at_quantile(0.99) as f64 / 1000.0);
        let overlapped = overlaps(&timing);
        if !overlapped.is_empty() {
            phase.notes.push(format!(
                "run {run}: wave(s) {} had not all installed when the next wave started (the soak is {soak} s); \
                 their times include sharing the server with it",
                overlapped.iter().map(|wave| (wave + 1).to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if outcome.repeats > 0 {
            phase.notes.push(format!(
                "run {run}: the update was handed out again to devices that had installed it {} times",
                format_count(outcome.repeats)
            ));
        }
    }
    fleet.abort_all();
    phase.observe_rss(sampler.finish());
    phase.observe_errors(inbox.retried, inbox.first_retry_error.as_ref());

    phase.figures = vec![create_ms];
    phase.figures.extend(wave_figures);
    phase.figures.extend([completed_s, busiest_rate, overall_rate, report_p50, report_p99]);
    phase.notes.push(format!(
        "{} devices each holding one long poll (wait={}s); per run one {} B package and one rollout \
         {{target: {}, waves: {WAVES:?}, soakSeconds: {soak}, failureThreshold: 100, start: true}}; herd's rollout \
         job every {} ms",
        format_count(n),
        POLL_WAIT.as_secs(),
        PACKAGE_BYTES,
        target.describe(),
        crate::server::ROLLOUT_INTERVAL.as_millis()
    ));
    phase.notes.push(
        "a wave's time: from its startedAt (herd) to the last of its devices' `installed` acknowledged; each device \
         reports downloading, downloads the package, reports installing and installed (3 reports); completed: \
         herd's startedAt → finishedAt"
            .to_string(),
    );
    phase.notes.push(
        "state reports/s: 3 per device over the window from the first report sent to the last acknowledged \
         (the largest wave's own window, and the whole rollout's including the soaks)"
            .to_string(),
    );
    Ok(vec![phase])
}

/// Whether the rollout routes exist (`GET /rollouts`, `GET /packages`).
async fn probe(operator: &mut Connection, admin: &Arc<str>) -> Result<bool> {
    for path in ["/rollouts?limit=1", "/packages?limit=1"] {
        let response = operator.send(&Request::new(Method::GET, path).bearer(Arc::clone(admin))).await?;
        if is_missing_route(response.status) {
            return Ok(false);
        }
        expect_success(&response).map_err(|error| anyhow!("GET {path}: {error}"))?;
    }
    Ok(true)
}

/// Whom the rollout targets.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// The whole tenant: the fleet is exactly the parked devices.
    All,
    /// These devices: the fleet is larger than the parked devices (an earlier phase grew it).
    Devices(Vec<Arc<str>>),
}

impl Target {
    fn json(&self) -> Value {
        match self {
            Target::All => json!({ "all": true }),
            Target::Devices(ids) => json!({ "deviceIds": ids.iter().map(|id| id.as_ref()).collect::<Vec<_>>() }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::All => "all".to_string(),
            Target::Devices(ids) => format!("{} deviceIds", format_count(ids.len() as u64)),
        }
    }
}

/// `{"all": true}` when the tenant holds only the parked devices; their ids when it holds more
/// (a rollout names at most 10,000).
fn target(fleet_size: u64, devices: &[Device]) -> Result<Target> {
    if fleet_size == devices.len() as u64 {
        return Ok(Target::All);
    }
    if devices.len() > 10_000 {
        bail!(
            "the tenant has {} devices but only {} would poll; a rollout names at most 10,000 devices, so run the \
             rollout phase with --devices at most 10000 or before a phase that grows the fleet",
            format_count(fleet_size),
            format_count(devices.len() as u64)
        );
    }
    Ok(Target::Devices(devices.iter().map(|device| Arc::clone(&device.id)).collect()))
}

/// The body of `POST /rollouts`.
fn rollout_body(package_id: &str, target: &Target, soak: u64) -> Value {
    json!({
        "packageId": package_id,
        "name": format!("herd-bench {package_id}"),
        "target": target.json(),
        "waves": WAVES,
        "soakSeconds": soak,
        "failureThreshold": 100,
        "start": true,
    })
}

/// Devices per wave, the way herd cuts them: wave i ends at `ceil(total · percent_i / 100)`
/// devices (the last at all of them). Used for the figures' names only; the devices of each
/// wave are read from herd.
fn wave_sizes(total: u64, waves: &[u64]) -> Vec<u64> {
    let mut previous = 0;
    waves
        .iter()
        .map(|percent| {
            let end = (total * percent).div_ceil(100).min(total);
            let size = end.saturating_sub(previous);
            previous = previous.max(end);
            size
        })
        .collect()
}

/// An uploaded package.
struct Package {
    id: String,
}

/// Uploads a new version of the bench package (`versionCode` = the run number, above the last).
async fn upload(operator: &mut Connection, admin: &Arc<str>, run: usize) -> Result<Package> {
    let mut body = vec![0u8; PACKAGE_BYTES];
    rand::thread_rng().fill_bytes(&mut body);
    let path = format!("/packages?kind=apk&name={PACKAGE_NAME}&version=1.{run}&versionCode={run}");
    let request = Request::new(Method::POST, path).bearer(Arc::clone(admin)).json_bytes(Bytes::from(body));
    let response = operator.send(&request).await?;
    if response.status != StatusCode::CREATED {
        bail!("POST /packages answered {}: {}", response.status, response.excerpt());
    }
    let body = response.json()?;
    let id = body["id"].as_str().ok_or_else(|| anyhow!("POST /packages: no `id` in {}", response.excerpt()))?;
    let size = body["size"].as_u64().ok_or_else(|| anyhow!("POST /packages: no `size` in {}", response.excerpt()))?;
    if size != PACKAGE_BYTES as u64 {
        bail!("POST /packages stored {size} bytes of {PACKAGE_BYTES}");
    }
    Ok(Package { id: id.to_string() })
}

/// Milliseconds since the epoch, now.
fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}

/// An RFC 3339 time as milliseconds since the epoch.
fn rfc3339_ms(text: &str) -> Result<f64> {
    let at = chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("not an RFC 3339 time: {text}"))?;
    Ok(at.timestamp_micros() as f64 / 1000.0)
}

/// `waves[i].startedAt` of a rollout, as milliseconds since the epoch (`None`: not started).
fn wave_starts(rollout: &Value) -> Result<Vec<Option<f64>>> {
    let waves = rollout["waves"].as_array().ok_or_else(|| anyhow!("a rollout without `waves`: {rollout}"))?;
    waves.iter().map(|wave| wave["startedAt"].as_str().map(rfc3339_ms).transpose()).collect()
}

/// The checks that make a run count: herd says the rollout completed, with every device
/// installed and none failed or skipped.
fn check_final(rollout: &Value, n_devices: u64) -> Result<()> {
    let counts = &rollout["counts"];
    let installed = counts["installed"].as_u64();
    if rollout["state"] != "completed"
        || rollout["total"].as_u64() != Some(n_devices)
        || installed != Some(n_devices)
        || counts["failed"].as_u64() != Some(0)
        || counts["skipped"].as_u64() != Some(0)
    {
        bail!(
            "expected the rollout completed with {n_devices} of {n_devices} installed, got state {}, total {} and \
             counts {counts}",
            rollout["state"],
            rollout["total"]
        );
    }
    Ok(())
}

/// When one device's update was done.
#[derive(Debug, Clone)]
struct Install {
    device: Arc<str>,
    /// When its first report was sent (ms since the epoch).
    first_report_ms: f64,
    /// When its `installed` was acknowledged (ms since the epoch).
    installed_ms: f64,
}

/// What one run measured.
struct RolledOut {
    rollout_id: String,
    create: Duration,
    /// `waves[i].startedAt`, ms since the epoch.
    starts_ms: Vec<Option<f64>>,
    /// herd's startedAt → finishedAt.
    completed_seconds: f64,
    installs: Vec<Install>,
    report_us: Histogram<u64>,
    /// Deliveries of the update to a device that had already installed it.
    repeats: u64,
}

/// Creates and starts one rollout, then waits until every device installed it and herd says it
/// completed; checks herd's counts.
#[allow(clippy::too_many_arguments)]
async fn roll_out(
    operator: &mut Connection,
    admin: &Arc<str>,
    package: &Package,
    target: &Target,
    soak: u64,
    n_devices: u64,
    inbox: &mut Inbox,
    label: String,
) -> Result<RolledOut> {
    let request = Request::new(Method::POST, "/rollouts").bearer(Arc::clone(admin)).json(&rollout_body(
        &package.id,
        target,
        soak,
    ));
    let installed = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, Arc::clone(&installed), Stop::Jobs(n_devices));
    let sent = Instant::now();
    let response = tokio::time::timeout(REQUEST_SLACK * 4, operator.send(&request))
        .await
        .map_err(|_| anyhow!("POST /rollouts: no answer within {} s", (REQUEST_SLACK * 4).as_secs()))??;
    let create = sent.elapsed();
    if response.status != StatusCode::CREATED {
        bail!("POST /rollouts answered {}: {}", response.status, response.excerpt());
    }
    let body = response.json()?;
    let rollout_id =
        body["id"].as_str().ok_or_else(|| anyhow!("POST /rollouts: no `id` in {}", response.excerpt()))?.to_string();
    if body["total"].as_u64() != Some(n_devices) {
        bail!("POST /rollouts targeted {} devices, expected {n_devices}", body["total"]);
    }
    let status_path = format!("/rollouts/{rollout_id}");
    let status = Request::new(Method::GET, status_path.as_str()).bearer(Arc::clone(admin));

    let mut report_us = Histogram::new_with_bounds(1, 600_000_000, 3).context("creating latency histogram")?;
    let mut installs = Vec::with_capacity(usize::try_from(n_devices).unwrap_or(0));
    let mut done: HashSet<Arc<str>> = HashSet::new();
    let mut repeats = 0;
    let mut completed = false;
    let mut last_status = body;
    let deadline = tokio::time::Instant::now() + run_deadline(n_devices, soak);
    let mut next_status = tokio::time::Instant::now() + STATUS_EVERY;
    while !(completed && done.len() as u64 == n_devices) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "rollout {rollout_id}: after {} s, {} of {} devices had installed it; herd says {} with counts {}",
                run_deadline(n_devices, soak).as_secs(),
                format_count(done.len() as u64),
                format_count(n_devices),
                last_status["state"],
                last_status["counts"]
            );
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_status) => {
                let response = tokio::time::timeout(REQUEST_SLACK, operator.send(&status))
                    .await
                    .map_err(|_| anyhow!("GET {status_path}: no answer within {} s", REQUEST_SLACK.as_secs()))??;
                expect_success(&response).map_err(|error| anyhow!("GET {status_path}: {error}"))?;
                last_status = response.json()?;
                match last_status["state"].as_str() {
                    Some("running") => {}
                    Some("completed") => completed = true,
                    other => bail!(
                        "rollout {rollout_id} is {} ({}), counts {}",
                        other.unwrap_or("?"),
                        last_status["reason"],
                        last_status["counts"]
                    ),
                }
                next_status = tokio::time::Instant::now() + STATUS_EVERY;
            }
            event = inbox.next(deadline) => match event? {
                Event::Reported { rollout, latency } if rollout == rollout_id => {
                    report_us.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
                }
                Event::Installed { rollout, install } if rollout == rollout_id => {
                    if done.insert(Arc::clone(&install.device)) {
                        installed.fetch_add(1, Ordering::Relaxed);
                        installs.push(install);
                    }
                }
                Event::Repeated { rollout } if rollout == rollout_id => repeats += 1,
                other => bail!("rollout {rollout_id}: a device reported on something else: {other:?}"),
            },
        }
    }
    progress.finish();
    let response = operator.send(&status).await?;
    expect_success(&response).map_err(|error| anyhow!("GET {status_path}: {error}"))?;
    let rollout = response.json()?;
    check_final(&rollout, n_devices).with_context(|| format!("rollout {rollout_id}"))?;
    let starts_ms = wave_starts(&rollout)?;
    let started = rollout["startedAt"].as_str().map(rfc3339_ms).transpose()?;
    let finished = rollout["finishedAt"].as_str().map(rfc3339_ms).transpose()?;
    let (Some(started), Some(finished)) = (started, finished) else {
        bail!("rollout {rollout_id}: completed without startedAt and finishedAt");
    };
    Ok(RolledOut {
        rollout_id,
        create,
        starts_ms,
        completed_seconds: (finished - started) / 1000.0,
        installs,
        report_us,
        repeats,
    })
}

/// Each device's wave, from `GET /rollouts/{id}/devices?wave=i` (paged).
async fn wave_of_devices(operator: &mut Connection, admin: &Arc<str>, rollout: &str) -> Result<HashMap<String, usize>> {
    let mut waves = HashMap::new();
    for wave in 0..WAVES.len() {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/rollouts/{rollout}/devices?wave={wave}&limit=500");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let response = operator.send(&Request::new(Method::GET, path.as_str()).bearer(Arc::clone(admin))).await?;
            expect_success(&response).map_err(|error| anyhow!("GET {path}: {error}"))?;
            let page = response.json()?;
            let items = page["items"].as_array().ok_or_else(|| anyhow!("GET {path}: no `items`"))?;
            for item in items {
                let device =
                    item["deviceId"].as_str().ok_or_else(|| anyhow!("GET {path}: an item without deviceId"))?;
                waves.insert(device.to_string(), wave);
            }
            match page["nextCursor"].as_str() {
                Some(next) if !items.is_empty() => cursor = Some(next.to_string()),
                _ => break,
            }
        }
    }
    Ok(waves)
}

/// One wave's times, ms since the epoch.
#[derive(Debug, Clone, PartialEq)]
struct WaveTiming {
    devices: u64,
    started_ms: Option<f64>,
    first_report_ms: Option<f64>,
    last_installed_ms: Option<f64>,
}

impl WaveTiming {
    /// Start → last installed, in seconds.
    fn seconds(&self) -> Option<f64> {
        Some((self.last_installed_ms? - self.started_ms?) / 1000.0)
    }

    /// Reports per second over the wave's own window (first report sent → last installed).
    fn report_rate(&self) -> Option<f64> {
        let window = (self.last_installed_ms? - self.first_report_ms?) / 1000.0;
        (window > 0.0).then(|| (self.devices * REPORTS.len() as u64) as f64 / window)
    }
}

/// Groups the installs by wave: each wave's start, first report and last install. Every install
/// must belong to a wave herd lists.
fn wave_timing(
    starts_ms: &[Option<f64>],
    installs: &[Install],
    waves: &HashMap<String, usize>,
) -> Result<Vec<WaveTiming>> {
    let mut timing: Vec<WaveTiming> = starts_ms
        .iter()
        .map(|started| WaveTiming { devices: 0, started_ms: *started, first_report_ms: None, last_installed_ms: None })
        .collect();
    for install in installs {
        let wave = waves
            .get(install.device.as_ref())
            .and_then(|wave| timing.get_mut(*wave))
            .ok_or_else(|| anyhow!("device {} installed but is in no wave of the rollout", install.device))?;
        wave.devices += 1;
        wave.first_report_ms =
            Some(wave.first_report_ms.map_or(install.first_report_ms, |first| first.min(install.first_report_ms)));
        wave.last_installed_ms =
            Some(wave.last_installed_ms.map_or(install.installed_ms, |last| last.max(install.installed_ms)));
    }
    Ok(timing)
}

/// Reports per second over the whole rollout: first report sent → last installed.
fn overall_report_rate(installs: &[Install]) -> Option<f64> {
    let first = installs.iter().map(|install| install.first_report_ms).min_by(f64::total_cmp)?;
    let last = installs.iter().map(|install| install.installed_ms).max_by(f64::total_cmp)?;
    let window = (last - first) / 1000.0;
    (window > 0.0).then(|| (installs.len() * REPORTS.len()) as f64 / window)
}

/// The waves (0-based) whose last install came after the next wave had started.
fn overlaps(timing: &[WaveTiming]) -> Vec<usize> {
    timing
        .windows(2)
        .enumerate()
        .filter_map(|(index, pair)| match (pair[0].last_installed_ms, pair[1].started_ms) {
            (Some(last), Some(next)) if last > next => Some(index),
            _ => None,
        })
        .collect()
}

/// What a simulated device tells the coordinator.
#[derive(Debug)]
enum Event {
    /// Its connection is open and its first poll answered.
    Parked,
    /// One of its reports was acknowledged after `latency`.
    Reported { rollout: String, latency: Duration },
    /// Its `installed` was acknowledged.
    Installed { rollout: String, install: Install },
    /// A poll handed it an update it had already installed (and it did nothing).
    Repeated { rollout: String },
    /// It answered a command that was not an update (left over from another phase).
    Other,
    /// One of its requests failed; it tries again (up to [`MAX_DEVICE_FAILURES`] in a row).
    Retried { error: String },
    /// It failed [`MAX_DEVICE_FAILURES`] requests in a row and stopped.
    GaveUp { device: Arc<str>, error: String },
}

/// The coordinator's end of the devices' events (retries counted, a device that gave up is the
/// phase's error).
struct Inbox {
    receiver: mpsc::UnboundedReceiver<Event>,
    n_devices: u64,
    retried: u64,
    first_retry_error: Option<String>,
}

impl Inbox {
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Event> {
        loop {
            let event = match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => bail!("every simulated device stopped"),
                Err(_) => bail!("no word from any device before the deadline"),
            };
            match event {
                Event::Retried { error } => {
                    self.retried += 1;
                    self.first_retry_error.get_or_insert(error);
                }
                Event::GaveUp { device, error } => bail!(
                    "simulated device {device} gave up: {error} (with {} parked polls)",
                    format_count(self.n_devices)
                ),
                Event::Other => {}
                event => return Ok(event),
            }
        }
    }
}

/// Waits until every device has its connection open and its first poll answered.
async fn park(inbox: &mut Inbox, n_devices: u64, soak: u64) -> Result<()> {
    let parked = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        format!("parking {} devices", format_count(n_devices)),
        Arc::clone(&parked),
        Stop::Jobs(n_devices),
    );
    let deadline = tokio::time::Instant::now() + run_deadline(n_devices, soak);
    while parked.load(Ordering::Relaxed) < n_devices {
        match inbox.next(deadline).await {
            Ok(Event::Parked) => {
                parked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => bail!("a device reported before the rollout: {other:?}"),
            Err(error) => {
                return Err(error.context(format!(
                    "only {} of {} devices could open a connection and poll",
                    format_count(parked.load(Ordering::Relaxed)),
                    format_count(n_devices)
                )))
            }
        }
    }
    progress.finish();
    Ok(())
}

/// An `install_package` command's payload, as far as the device needs it.
#[derive(Debug, Clone, PartialEq)]
struct Update {
    rollout: String,
    url: String,
    size: u64,
}

/// What a poll's answer `{items: [{id, type, payload}]}` asks of the device: the updates, and the
/// ids of any other commands.
fn poll_items(response: &Response) -> Result<(Vec<Update>, Vec<String>)> {
    let body = response.json()?;
    let items = body["items"]
        .as_array()
        .ok_or_else(|| anyhow!("GET /devices/self/commands: no `items` in {}", response.excerpt()))?;
    let (mut updates, mut others) = (Vec::new(), Vec::new());
    for item in items {
        let bad = || anyhow!("GET /devices/self/commands: an unreadable item in {}", response.excerpt());
        if item["type"] == "install_package" {
            let payload = &item["payload"];
            updates.push(Update {
                rollout: payload["rolloutId"].as_str().ok_or_else(bad)?.to_string(),
                url: payload["url"].as_str().ok_or_else(bad)?.to_string(),
                size: payload["size"].as_u64().ok_or_else(bad)?,
            });
        } else {
            others.push(item["id"].as_str().ok_or_else(bad)?.to_string());
        }
    }
    Ok((updates, others))
}

/// One device: polls; takes every update it is sent; polls again, until aborted.
struct SimulatedDevice {
    addr: SocketAddr,
    device: Device,
    events: mpsc::UnboundedSender<Event>,
    parking: Arc<Semaphore>,
}

impl SimulatedDevice {
    async fn run(self) {
        if let Err(error) = self.serve().await {
            let _ =
                self.events.send(Event::GaveUp { device: Arc::clone(&self.device.id), error: format!("{error:#}") });
        }
    }

    async fn serve(&self) -> Result<()> {
        let mut connection = Connection::new(self.addr)?;
        let mut answer = {
            let _permit = self.parking.acquire().await.context("parking semaphore closed")?;
            self.send(&mut connection, &self.poll(Duration::ZERO), Duration::ZERO).await?
        };
        let _ = self.events.send(Event::Parked);
        let mut installed: HashSet<String> = HashSet::new();
        loop {
            let (updates, others) = poll_items(&answer)?;
            for update in updates {
                if installed.contains(&update.rollout) {
                    let _ = self.events.send(Event::Repeated { rollout: update.rollout });
                    continue;
                }
                self.install(&mut connection, &update).await?;
                installed.insert(update.rollout);
            }
            for command in others {
                let result = Request::new(Method::POST, format!("/devices/self/commands/{command}/result"))
                    .bearer(Arc::clone(&self.device.token))
                    .json(&json!({ "status": "succeeded" }));
                self.send(&mut connection, &result, Duration::ZERO).await?;
                let _ = self.events.send(Event::Other);
            }
            answer = self.send(&mut connection, &self.poll(POLL_WAIT), POLL_WAIT).await?;
        }
    }

    /// Reports downloading, downloads, reports installing and installed.
    async fn install(&self, connection: &mut Connection, update: &Update) -> Result<()> {
        let first_report_ms = unix_ms();
        let mut installed_ms = first_report_ms;
        for (index, state) in REPORTS.iter().enumerate() {
            let report = Request::new(Method::POST, format!("/devices/self/updates/{}", update.rollout))
                .bearer(Arc::clone(&self.device.token))
                .json(&json!({ "state": state }));
            let sent = Instant::now();
            self.send(connection, &report, Duration::ZERO).await?;
            let latency = sent.elapsed();
            installed_ms = unix_ms();
            let _ = self.events.send(Event::Reported { rollout: update.rollout.clone(), latency });
            if index == 0 {
                let download = Request::new(Method::GET, update.url.as_str()).bearer(Arc::clone(&self.device.token));
                let response = self.send(connection, &download, Duration::ZERO).await?;
                if response.body.len() as u64 != update.size {
                    bail!("GET {}: {} bytes, the command said {}", update.url, response.body.len(), update.size);
                }
            }
        }
        let install = Install { device: Arc::clone(&self.device.id), first_report_ms, installed_ms };
        let _ = self.events.send(Event::Installed { rollout: update.rollout.clone(), install });
        Ok(())
    }

    fn poll(&self, wait: Duration) -> Request {
        Request::new(Method::GET, format!("/devices/self/commands?wait={}s&limit=10", wait.as_secs()))
            .bearer(Arc::clone(&self.device.token))
    }

    /// Sends `request` until it answers 2xx, at most [`MAX_DEVICE_FAILURES`] times, each within
    /// `wait` + [`REQUEST_SLACK`].
    async fn send(&self, connection: &mut Connection, request: &Request, wait: Duration) -> Result<Response> {
        let mut failures = 0;
        loop {
            let error = match tokio::time::timeout(wait + REQUEST_SLACK, connection.send(request)).await {
                Ok(Ok(response)) if response.status.is_success() => return Ok(response),
                Ok(Ok(response)) => {
                    format!("{} {}: {}: {}", request.method, request.path, response.status, response.excerpt())
                }
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => {
                    *connection = Connection::new(self.addr)?;
                    format!(
                        "{} {}: no answer within {} s",
                        request.method,
                        request.path,
                        (wait + REQUEST_SLACK).as_secs()
                    )
                }
            };
            failures += 1;
            if failures >= MAX_DEVICE_FAILURES {
                bail!("{failures} failures in a row, the last: {error}");
            }
            let _ = self.events.send(Event::Retried { error });
            tokio::time::sleep(RETRY_BACKOFF * 2u32.pow(failures - 1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<Device> {
        (0..n).map(|i| Device { id: format!("dev-{i}").into(), token: format!("tok-{i}").into() }).collect()
    }

    fn install(device: &str, first_report_ms: f64, installed_ms: f64) -> Install {
        Install { device: device.into(), first_report_ms, installed_ms }
    }

    #[test]
    fn the_body_asks_for_the_issue_waves_started_at_once() {
        let body = rollout_body("pkg-1", &target(3, &devices(3)).expect("target"), 15);
        assert_eq!(body["target"], json!({ "all": true }));
        assert_eq!(body["waves"], json!([1, 10, 50, 100]));
        assert_eq!(body["soakSeconds"], 15);
        assert_eq!(body["failureThreshold"], 100);
        assert_eq!(body["start"], true);
        assert_eq!(body["packageId"], "pkg-1");
        let named = rollout_body("pkg-1", &target(5, &devices(2)).expect("target"), 0);
        assert_eq!(named["target"], json!({ "deviceIds": ["dev-0", "dev-1"] }));
        assert!(target(20_000, &devices(10_001)).is_err());
    }

    #[test]
    fn wave_sizes_add_up_to_the_fleet() {
        assert_eq!(wave_sizes(10_000, &WAVES), vec![100, 900, 4_000, 5_000]);
        assert_eq!(wave_sizes(2_000, &WAVES), vec![20, 180, 800, 1_000]);
        // A tiny fleet: 1 % of 3 rounds up to one device; no wave is negative.
        assert_eq!(wave_sizes(3, &WAVES), vec![1, 0, 1, 1]);
        assert_eq!(wave_sizes(3, &WAVES).iter().sum::<u64>(), 3);
    }

    #[test]
    fn reads_updates_and_other_commands_from_a_poll() {
        let body = r#"{"items":[
            {"id":"c1","type":"install_package","payload":{"rolloutId":"r1","url":"/devices/self/packages/p/download","size":4096}},
            {"id":"c2","type":"reboot","payload":{}}]}"#;
        let response = Response { status: StatusCode::OK, body: body.into() };
        let (updates, others) = poll_items(&response).expect("items");
        assert_eq!(
            updates,
            vec![Update { rollout: "r1".into(), url: "/devices/self/packages/p/download".into(), size: 4096 }]
        );
        assert_eq!(others, vec!["c2"]);
        let broken = Response {
            status: StatusCode::OK,
            body: r#"{"items":[{"id":"c1","type":"install_package","payload":{}}]}"#.into(),
        };
        assert!(poll_items(&broken).is_err());
    }

    #[test]
    fn a_run_counts_only_when_herd_says_every_device_installed() {
        let good = json!({"state":"completed","total":4,"counts":{"installed":4,"failed":0,"skipped":0}});
        assert!(check_final(&good, 4).is_ok());
        let short = json!({"state":"completed","total":4,"counts":{"installed":3,"failed":0,"skipped":0}});
        assert!(check_final(&short, 4).is_err());
        let running = json!({"state":"running","total":4,"counts":{"installed":4,"failed":0,"skipped":0}});
        assert!(check_final(&running, 4).is_err());
        let failed = json!({"state":"completed","total":4,"counts":{"installed":4,"failed":1,"skipped":0}});
        assert!(check_final(&failed, 4).is_err());
        assert!(check_final(&json!({}), 4).is_err());
    }

    #[test]
    fn wave_starts_are_read_from_the_rollout() {
        let rollout = json!({"waves":[
            {"startedAt":"2026-12-05T08:00:00.250Z"},{"startedAt":"2026-12-05T08:00:01Z"},{"startedAt":null}]});
        let starts = wave_starts(&rollout).expect("starts");
        assert_eq!(starts.len(), 3);
        assert_eq!(starts[1].expect("started") - starts[0].expect("started"), 750.0);
        assert_eq!(starts[2], None);
        assert!(wave_starts(&json!({"waves":[{"startedAt":"yesterday"}]})).is_err());
    }

    #[test]
    fn times_each_wave_from_its_start_to_its_last_install() {
        let waves: HashMap<String, usize> = [("a", 0), ("b", 1), ("c", 1)].map(|(d, w)| (d.to_string(), w)).into();
        let installs = [install("a", 1_100.0, 1_400.0), install("b", 3_100.0, 3_500.0), install("c", 3_050.0, 4_000.0)];
        let timing = wave_timing(&[Some(1_000.0), Some(3_000.0)], &installs, &waves).expect("timing");
        assert_eq!(timing[0].seconds(), Some(0.4));
        assert_eq!(timing[1].seconds(), Some(1.0));
        assert_eq!(timing[1].devices, 2);
        // 2 devices × 3 reports over 3,050 → 4,000 ms.
        let rate = timing[1].report_rate().expect("rate");
        assert!((rate - 6.0 / 0.95).abs() < 1e-9);
        // 9 reports over 1,100 → 4,000 ms.
        assert!((overall_report_rate(&installs).expect("rate") - 9.0 / 2.9).abs() < 1e-9);
        assert!(overlaps(&timing).is_empty());

        let late = [install("a", 1_100.0, 3_200.0), install("b", 3_100.0, 3_500.0)];
        let timing = wave_timing(&[Some(1_000.0), Some(3_000.0)], &late, &waves).expect("timing");
        assert_eq!(overlaps(&timing), vec![0]);

        let stranger = [install("zz", 1.0, 2.0)];
        assert!(wave_timing(&[Some(0.0)], &stranger, &waves).is_err());
        let unstarted = wave_timing(&[None, None], &[], &waves).expect("timing");
        assert_eq!(unstarted[0].seconds(), None);
    }

    #[test]
    fn every_run_has_a_deadline() {
        assert_eq!(soak_seconds(true), 2);
        assert_eq!(run_deadline(2_000, 2), Duration::from_secs(128 + 100));
        assert_eq!(run_deadline(10_000, 15), Duration::from_secs(180 + 500));
    }
}
