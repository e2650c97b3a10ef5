//! Remote commands fanned out to a parked fleet.
//!
//! N devices (`--devices`; quick mode: the quick fleet) each hold one long poll
//! `GET /devices/self/commands?wait=25s` open on a connection of their own, the way a real fleet
//! waits for work. One run: the harness sends ONE `POST /commands
//! {"type":"reboot","target":{"all":true}}`; every device whose poll returns the command posts
//! `POST /devices/self/commands/{id}/result {"status":"succeeded"}` on the same connection and goes
//! back to polling. Measured, from an `Instant` taken just before the POST is sent: the 201's
//! latency (creating N executions in one request), the time until every device had the command
//! and until every device's result was acknowledged, each device's delivery latency (p50/p99), and
//! the results acknowledged per second. `GET /commands/{id}` must then count N succeeded.
//! `--runs` runs each send a new command to the same parked fleet.
//!
//! Nothing waits without a limit: every request has a timeout, a device whose requests fail
//! [`MAX_DEVICE_FAILURES`] times in a row gives up and fails the phase with its error, and a run
//! that does not finish by [`run_deadline`] fails with its counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::context::Bench;
use crate::fleet::Device;
use crate::http::{Connection, Method, Request, Response, StatusCode};
use crate::load::{expect_success, Stop};
use crate::probe::is_missing_route;
use crate::progress::Progress;
use crate::report::{format_count, Figure, PhaseReport};

const ROUTE: &str = "GET /devices/self/commands (the device's long poll) and POST /commands";

/// How long each device's poll waits for a command (`?wait=`). Below the server's request
/// timeout (the harness starts herd with 300 s), so the server never shortens it.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

/// A request gets this long beyond what it asked to wait before the device calls it lost. Longer
/// than herd's waits for a database connection (10 s on PostgreSQL, 30 s for SQLite's writer,
/// then a 500), so a device does not abandon a connection the server is still working on and open
/// another: at 10,000 devices that storm of new connections overflows the listen queue.
const REQUEST_SLACK: Duration = Duration::from_secs(45);

/// A device that fails this many requests in a row gives up, and the phase fails with its error.
const MAX_DEVICE_FAILURES: u32 = 5;

/// Pause after a device's first failed request; doubled after each further one in a row.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Devices opening their connection (and first poll) at once: a burst of 10,000 connects would
/// overflow the listen queue and wait out SYN retransmits instead of measuring anything.
const PARKING_CONCURRENCY: usize = 256;

/// File descriptors the harness keeps beyond one per parked device (its other connections, the
/// results file, psql).
const SPARE_FILE_DESCRIPTORS: u64 = 256;

/// Extra connections the server is allowed beyond the parked devices (`HERD_MAX_CONNECTIONS` is
/// twice `--devices` plus this): a device whose request timed out reconnects while the server may
/// still hold its old connection.
pub const SPARE_SERVER_CONNECTIONS: usize = 1_024;

/// How long one run may take before it fails: generous, it only keeps a broken run from hanging.
pub fn run_deadline(n_devices: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20).saturating_mul(u32::try_from(n_devices).unwrap_or(u32::MAX))
}

/// Runs the commands phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let limit = raise_open_file_limit(bench.settings.n_devices)?;
    let (n_devices, limited) = devices_that_fit(bench.settings.n_devices, limit, bench.settings.quick)?;
    if let Some(route) = bench.ensure_fleet(n_devices).await? {
        return Ok(vec![PhaseReport::not_in_build("commands", route)]);
    }
    let fleet_size = bench.fleet().map_or(0, |fleet| fleet.devices().len() as u64);
    let devices: Vec<Device> = bench
        .fleet()
        .map(|fleet| fleet.devices().iter().take(usize::try_from(n_devices).unwrap_or(usize::MAX)).cloned().collect())
        .unwrap_or_default();
    let Some(first) = devices.first() else { bail!("the fleet has no devices") };
    let addr = bench.addr();

    let mut operator = Connection::new(addr)?;
    if !probe(&mut operator, bench.admin_token(), first).await? {
        return Ok(vec![PhaseReport::not_in_build("commands", ROUTE)]);
    }
    let n = devices.len() as u64;
    let target = target(fleet_size, &devices)?;
    let mut phase = PhaseReport::new("commands");
    phase.notes.extend(limited);
    let mut create_ms = Figure::new(format!("bulk create ({} devices)", format_count(n)), "ms");
    let mut all_delivered = Figure::new("fan-out until all delivered", "s");
    let mut all_succeeded = Figure::new("fan-out until all succeeded", "s");
    let mut delivery_p50 = Figure::new("delivery latency p50", "ms");
    let mut delivery_p99 = Figure::new("delivery latency p99", "ms");
    let mut results_rate = Figure::new("result throughput", "results/s");

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
    park(&mut inbox, n).await?;
    // The last devices sent their long poll just now; give the server a moment to register them
    // all as waiting, so every run starts from a fleet that is parked.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let runs = bench.settings.runs;
    for run in 1..=runs {
        let label = format!("commands run {run}/{runs}: results of {} devices", format_count(n));
        let outcome = fan_out(&mut operator, bench.admin_token(), &target, n, &mut inbox, label).await?;
        create_ms.push(outcome.create.as_secs_f64() * 1000.0);
        all_delivered.push(outcome.last_delivered.as_secs_f64());
        all_succeeded.push(outcome.last_succeeded.as_secs_f64());
        delivery_p50.push(outcome.delivery_us.value_at_quantile(0.5) as f64 / 1000.0);
        delivery_p99.push(outcome.delivery_us.value_at_quantile(0.99) as f64 / 1000.0);
        let window = outcome.last_succeeded.saturating_sub(outcome.first_delivered).as_secs_f64();
        if window > 0.0 {
            results_rate.push(n as f64 / window);
        }
        confirm(&mut operator, bench.admin_token(), &outcome.command_id, n).await?;
        if outcome.foreign_events > 0 {
            phase.notes.push(format!(
                "run {run}: {} deliveries or results of another command than the one sent",
                format_count(outcome.foreign_events)
            ));
        }
    }
    // Dropping the tasks closes every device's connection (and with it its open poll).
    fleet.abort_all();
    phase.observe_rss(sampler.finish());
    phase.observe_errors(inbox.retried, inbox.first_retry_error.as_ref());

    phase.figures = vec![create_ms, all_delivered, all_succeeded, delivery_p50, delivery_p99, results_rate];
    phase.notes.push(format!(
        "{} devices each holding one long poll (wait={}s) on a connection of its own; one POST /commands \
         {{type: reboot, target: {}}} per run; times from just before that POST",
        format_count(n),
        POLL_WAIT.as_secs(),
        target.describe()
    ));
    phase.notes.push(
        "result throughput: results acknowledged per second, from the first delivery to the last acknowledged result"
            .to_string(),
    );
    Ok(vec![phase])
}

/// Whether the routes exist: the operator's command list and a device's poll (that answers at
/// once with `wait=0`). Warms the operator's connection as a side effect.
async fn probe(operator: &mut Connection, admin_token: Arc<str>, device: &Device) -> Result<bool> {
    let list = Request::new(Method::GET, "/commands?limit=1").bearer(admin_token);
    let response = operator.send(&list).await?;
    if is_missing_route(response.status) {
        return Ok(false);
    }
    expect_success(&response).map_err(|error| anyhow!("GET /commands: {error}"))?;
    let poll = poll_request(&device.token, Duration::ZERO);
    let response = operator.send(&poll).await?;
    if is_missing_route(response.status) {
        return Ok(false);
    }
    expect_success(&response).map_err(|error| anyhow!("GET /devices/self/commands: {error}"))?;
    Ok(true)
}

/// Whom the bulk command targets.
#[derive(Debug, Clone)]
enum Target {
    /// The whole tenant: the fleet is exactly the parked devices.
    All,
    /// These devices: the fleet is larger than the parked devices (an earlier phase grew it).
    Devices(Vec<Arc<str>>),
}

impl Target {
    fn body(&self) -> Value {
        let target = match self {
            Target::All => json!({ "all": true }),
            Target::Devices(ids) => json!({ "deviceIds": ids.iter().map(|id| id.as_ref()).collect::<Vec<_>>() }),
        };
        json!({ "type": "reboot", "target": target })
    }

    fn describe(&self) -> String {
        match self {
            Target::All => "all".to_string(),
            Target::Devices(ids) => format!("{} deviceIds", format_count(ids.len() as u64)),
        }
    }
}

/// The brief's `{"all": true}` when the tenant holds only the parked devices; their ids when it
/// holds more (a bulk command names at most 10,000).
fn target(fleet_size: u64, devices: &[Device]) -> Result<Target> {
    if fleet_size == devices.len() as u64 {
        return Ok(Target::All);
    }
    if devices.len() > 10_000 {
        bail!(
            "the tenant has {} devices but only {} would poll; a bulk command names at most 10,000 devices, \
             so run the commands phase with --devices at most 10000 or before a phase that grows the fleet",
            format_count(fleet_size),
            format_count(devices.len() as u64)
        );
    }
    Ok(Target::Devices(devices.iter().map(|device| Arc::clone(&device.id)).collect()))
}

/// Raises this process's soft open-file limit to the hard limit and answers the limit. When the
/// hard limit is too low for `n_devices` parked devices, it is raised too where the process may
/// (with CAP_SYS_RESOURCE); the harness calls this once before it starts herd, so the server
/// inherits the raised limits.
pub fn raise_open_file_limit(n_devices: u64) -> Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit (RLIMIT_NOFILE)")?;
    if limit >= n_devices + SPARE_FILE_DESCRIPTORS {
        return Ok(limit);
    }
    // Room for herd too: one connection per device, reconnections, its own descriptors.
    let wanted = n_devices.saturating_mul(2).saturating_add(SPARE_SERVER_CONNECTIONS as u64);
    Ok(if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted).is_ok() { wanted } else { limit })
}

/// How many devices to park under an open-file limit of `limit`: all `n_devices` if they fit;
/// in quick mode (a check that the harness works, where CI's limit is what it is) as many as fit,
/// with a note; otherwise an error that says what to raise.
pub fn devices_that_fit(n_devices: u64, limit: u64, quick: bool) -> Result<(u64, Option<String>)> {
    let fits = limit.saturating_sub(SPARE_FILE_DESCRIPTORS);
    if n_devices <= fits {
        return Ok((n_devices, None));
    }
    if quick && fits > 0 {
        let note = format!(
            "parked {} devices, not {}: the open-file limit is {limit} (raise it with ulimit -Hn)",
            format_count(fits),
            format_count(n_devices)
        );
        return Ok((fits, Some(note)));
    }
    bail!(
        "the open-file limit is {limit}, and {} parked devices need {} descriptors: raise the hard limit \
         (ulimit -Hn) or lower --devices",
        format_count(n_devices),
        n_devices + SPARE_FILE_DESCRIPTORS
    )
}

/// What a simulated device tells the coordinator.
#[derive(Debug)]
enum Event {
    /// Its connection is open and its first poll answered; its long poll goes out next.
    Parked,
    /// A poll handed it this command.
    Delivered { command: String, at: Instant },
    /// The server acknowledged its result for this command.
    Succeeded { command: String, at: Instant },
    /// One of its requests failed; it tries again (up to [`MAX_DEVICE_FAILURES`] in a row).
    Retried { error: String },
    /// It failed [`MAX_DEVICE_FAILURES`] requests in a row and stopped.
    GaveUp { device: Arc<str>, error: String },
}

/// The coordinator's end of the devices' events: counts retried requests on the way and turns a
/// device that gave up into the phase's error.
struct Inbox {
    receiver: mpsc::UnboundedReceiver<Event>,
    n_devices: u64,
    /// Requests that failed and were tried again, and the first such failure.
    retried: u64,
    first_retry_error: Option<String>,
}

impl Inbox {
    /// The next delivery, result or parking, or the error that ends the phase; `late` says what
    /// was missing when `deadline` passes first.
    async fn next(&mut self, deadline: tokio::time::Instant, late: impl Fn() -> anyhow::Error) -> Result<Event> {
        loop {
            let event = match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => bail!("every simulated device stopped"),
                Err(_) => return Err(late()),
            };
            match event {
                Event::Retried { error } => {
                    self.retried += 1;
                    self.first_retry_error.get_or_insert(error);
                }
                Event::GaveUp { device, error } => {
                    bail!(
                        "simulated device {device} gave up: {error} (with {} parked polls: is the server's \
                         connection limit, HERD_MAX_CONNECTIONS or its open-file limit, below that?)",
                        format_count(self.n_devices)
                    )
                }
                event => return Ok(event),
            }
        }
    }
}

/// One device: polls, reports every command it gets as succeeded, polls again, until aborted.
struct SimulatedDevice {
    addr: SocketAddr,
    device: Device,
    events: mpsc::UnboundedSender<Event>,
    /// Limits how many devices connect at once.
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
        let first = {
            let _permit = self.parking.acquire().await.context("parking semaphore closed")?;
            self.send(&mut connection, &poll_request(&self.device.token, Duration::ZERO), Duration::ZERO).await?
        };
        let _ = self.events.send(Event::Parked);
        let (mut answered_at, mut answer) = first;
        loop {
            for command in commands_in(&answer)? {
                let _ = self.events.send(Event::Delivered { command: command.clone(), at: answered_at });
                let result = Request::new(Method::POST, format!("/devices/self/commands/{command}/result"))
                    .bearer(Arc::clone(&self.device.token))
                    .json(&json!({ "status": "succeeded" }));
                self.send(&mut connection, &result, Duration::ZERO).await?;
                let _ = self.events.send(Event::Succeeded { command, at: Instant::now() });
            }
            (answered_at, answer) =
                self.send(&mut connection, &poll_request(&self.device.token, POLL_WAIT), POLL_WAIT).await?;
        }
    }

    /// Sends `request` until it answers 2xx, at most [`MAX_DEVICE_FAILURES`] times, each within
    /// `wait` + [`REQUEST_SLACK`]. Returns when the answer arrived, and the answer.
    async fn send(
        &self,
        connection: &mut Connection,
        request: &Request,
        wait: Duration,
    ) -> Result<(Instant, Response)> {
        let mut failures = 0;
        loop {
            let error = match tokio::time::timeout(wait + REQUEST_SLACK, connection.send(request)).await {
                Ok(Ok(response)) if response.status.is_success() => return Ok((Instant::now(), response)),
                Ok(Ok(response)) => {
                    format!("{} {}: {}: {}", request.method, request.path, response.status, response.excerpt())
                }
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => {
                    // The abandoned request leaves the connection mid-exchange: start afresh.
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

fn poll_request(token: &Arc<str>, wait: Duration) -> Request {
    Request::new(Method::GET, format!("/devices/self/commands?wait={}s&limit=10", wait.as_secs()))
        .bearer(Arc::clone(token))
}

/// The command ids of a poll's answer `{items: [{id, …}]}`.
fn commands_in(response: &Response) -> Result<Vec<String>> {
    let body = response.json()?;
    let items = body["items"]
        .as_array()
        .ok_or_else(|| anyhow!("GET /devices/self/commands: no `items` in {}", response.excerpt()))?;
    items
        .iter()
        .map(|item| {
            item["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("GET /devices/self/commands: an item without `id` in {}", response.excerpt()))
        })
        .collect()
}

/// Waits until every device has its connection open and its first poll answered.
async fn park(inbox: &mut Inbox, n_devices: u64) -> Result<()> {
    let parked = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        format!("parking {} devices", format_count(n_devices)),
        Arc::clone(&parked),
        Stop::Jobs(n_devices),
    );
    let deadline = tokio::time::Instant::now() + run_deadline(n_devices);
    while parked.load(Ordering::Relaxed) < n_devices {
        let late = || {
            anyhow!(
                "only {} of {} devices could open a connection and poll within {} s",
                format_count(parked.load(Ordering::Relaxed)),
                format_count(n_devices),
                run_deadline(n_devices).as_secs()
            )
        };
        if let Event::Parked = inbox.next(deadline, late).await? {
            parked.fetch_add(1, Ordering::Relaxed);
        }
    }
    progress.finish();
    Ok(())
}

/// What one run measured, relative to just before the POST.
struct FanOut {
    command_id: String,
    create: Duration,
    first_delivered: Duration,
    last_delivered: Duration,
    last_succeeded: Duration,
    delivery_us: Histogram<u64>,
    /// Deliveries or results of a command other than this run's.
    foreign_events: u64,
}

/// Sends one bulk command and waits until every device's result for it was acknowledged.
async fn fan_out(
    operator: &mut Connection,
    admin_token: Arc<str>,
    target: &Target,
    n_devices: u64,
    inbox: &mut Inbox,
    label: String,
) -> Result<FanOut> {
    let request = Request::new(Method::POST, "/commands").bearer(admin_token).json(&target.body());
    let succeeded = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, Arc::clone(&succeeded), Stop::Jobs(n_devices));
    let sent = Instant::now();
    let response = tokio::time::timeout(REQUEST_SLACK * 4, operator.send(&request))
        .await
        .map_err(|_| anyhow!("POST /commands: no answer within {} s", (REQUEST_SLACK * 4).as_secs()))??;
    let create = sent.elapsed();
    if response.status != StatusCode::CREATED {
        bail!("POST /commands answered {}: {}", response.status, response.excerpt());
    }
    let body = response.json()?;
    let command_id =
        body["id"].as_str().ok_or_else(|| anyhow!("POST /commands: no `id` in {}", response.excerpt()))?.to_string();
    if body["total"].as_u64() != Some(n_devices) {
        bail!("POST /commands queued the command for {} devices, expected {n_devices}", body["total"]);
    }

    let mut delivery_us = Histogram::new_with_bounds(1, 600_000_000, 3).context("creating latency histogram")?;
    let mut delivered = 0;
    let mut first_delivered = None;
    let mut last_delivered = Duration::ZERO;
    let mut last_succeeded = Duration::ZERO;
    let mut foreign_events = 0;
    let deadline = tokio::time::Instant::now() + run_deadline(n_devices);
    while succeeded.load(Ordering::Relaxed) < n_devices {
        let late = || {
            anyhow!(
                "command {command_id}: after {} s, {} of {} devices had it and {} results were acknowledged",
                run_deadline(n_devices).as_secs(),
                format_count(delivered),
                format_count(n_devices),
                format_count(succeeded.load(Ordering::Relaxed))
            )
        };
        match inbox.next(deadline, late).await? {
            Event::Delivered { command, at } if command == command_id => {
                let latency = at.saturating_duration_since(sent);
                delivery_us.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
                delivered += 1;
                first_delivered = Some(first_delivered.map_or(latency, |first: Duration| first.min(latency)));
                last_delivered = last_delivered.max(latency);
            }
            Event::Succeeded { command, at } if command == command_id => {
                last_succeeded = last_succeeded.max(at.saturating_duration_since(sent));
                succeeded.fetch_add(1, Ordering::Relaxed);
            }
            Event::Delivered { .. } | Event::Succeeded { .. } => foreign_events += 1,
            Event::Parked | Event::Retried { .. } | Event::GaveUp { .. } => {}
        }
    }
    progress.finish();
    if delivered != n_devices {
        // A redelivery (the server hands a command out again when its result is late) shows as
        // more deliveries than devices; fewer cannot happen once every result is in.
        eprintln!("  command {command_id} was delivered {delivered} times to {n_devices} devices");
    }
    Ok(FanOut {
        command_id,
        create,
        first_delivered: first_delivered.unwrap_or_default(),
        last_delivered,
        last_succeeded,
        delivery_us,
        foreign_events,
    })
}

/// `GET /commands/{id}` must count every device as succeeded.
async fn confirm(operator: &mut Connection, admin_token: Arc<str>, command_id: &str, n_devices: u64) -> Result<()> {
    let request = Request::new(Method::GET, format!("/commands/{command_id}")).bearer(admin_token);
    let response = tokio::time::timeout(REQUEST_SLACK * 4, operator.send(&request))
        .await
        .map_err(|_| anyhow!("GET /commands/{command_id}: no answer within {} s", (REQUEST_SLACK * 4).as_secs()))??;
    expect_success(&response).map_err(|error| anyhow!("GET /commands/{command_id}: {error}"))?;
    let body = response.json()?;
    let succeeded = body["counts"]["succeeded"].as_u64();
    if succeeded != Some(n_devices) || body["done"] != Value::Bool(true) {
        bail!(
            "GET /commands/{command_id}: expected {n_devices} succeeded and done, got counts {} and done {}",
            body["counts"],
            body["done"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<Device> {
        (0..n).map(|i| Device { id: format!("dev-{i}").into(), token: format!("tok-{i}").into() }).collect()
    }

    #[test]
    fn targets_the_whole_tenant_only_when_it_is_the_parked_fleet() {
        let parked = devices(3);
        assert_eq!(target(3, &parked).expect("target").body()["target"], json!({ "all": true }));
        let ids = target(5, &parked).expect("target").body();
        assert_eq!(ids["target"]["deviceIds"], json!(["dev-0", "dev-1", "dev-2"]));
        assert_eq!(ids["type"], "reboot");
        assert!(target(20_000, &devices(10_001)).is_err());
    }

    #[test]
    fn reads_command_ids_from_a_poll() {
        let response =
            Response { status: StatusCode::OK, body: r#"{"items":[{"id":"c1","type":"reboot"},{"id":"c2"}]}"#.into() };
        assert_eq!(commands_in(&response).expect("ids"), vec!["c1", "c2"]);
        let empty = Response { status: StatusCode::OK, body: r#"{"items":[]}"#.into() };
        assert!(commands_in(&empty).expect("ids").is_empty());
        let broken = Response { status: StatusCode::OK, body: r#"{"items":[{"type":"reboot"}]}"#.into() };
        assert!(commands_in(&broken).is_err());
    }

    #[test]
    fn parks_what_the_open_file_limit_allows_only_in_quick_mode() {
        assert_eq!(devices_that_fit(10_000, 20_000, false).expect("fits"), (10_000, None));
        assert!(devices_that_fit(2_000, 1_024, false).is_err());
        let (parked, note) = devices_that_fit(2_000, 1_024, true).expect("quick parks fewer");
        assert_eq!(parked, 768);
        assert!(note.is_some_and(|note| note.contains("1024")));
        assert!(devices_that_fit(2_000, 100, true).is_err());
    }

    #[test]
    fn every_run_has_a_deadline() {
        assert_eq!(run_deadline(2_000), Duration::from_secs(100));
        assert_eq!(run_deadline(10_000), Duration::from_secs(260));
        // A device gives up within a bounded time: its retries back off 0.25, 0.5, 1, 2 s.
        let backoff: Duration = (1..MAX_DEVICE_FAILURES).map(|failures| RETRY_BACKOFF * 2u32.pow(failures - 1)).sum();
        assert_eq!(backoff, Duration::from_millis(3_750));
    }
}
