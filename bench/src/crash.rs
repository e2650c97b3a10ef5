//! `herd-bench crash`: the crash-durability check. Every write herd acknowledged survives a
//! `kill -9`.
//!
//! For each engine (SQLite always, PostgreSQL when an admin URL is given) a release herd runs on
//! its own data directory (and its own fresh database). Each kill round drives a bounded
//! concurrent load: workers register fresh devices through an enrollment token, post metric
//! batches as those devices, and have a certificate issued for each (a server-generated key for
//! even serials, a CSR for odd ones). Every response that acknowledged a write is put in a ledger.
//! In the middle of the load herd gets SIGKILL; it is restarted on the same data directory and
//! database, and everything in the ledger (all rounds so far) is looked up through the API:
//!
//! - each registered device: `GET /devices/{id}`;
//! - each acknowledged metric batch: its minute bucket of `GET /devices/{id}/metrics` holds all
//!   of its samples (every batch of a device has a minute of its own);
//! - each issued certificate: `GET /certificates/{id}`; for a server-generated key, the file
//!   store's `<data-dir>/certificates/devices/private/{deviceId}-key.pem` is the key herd
//!   answered, and it pairs with the certificate (checked with `openssl` once). Each device gets
//!   one certificate, so that certificate is always its newest.
//!
//! Any lost write, any unexpected answer before the kill, and any failure to restart is an error
//! (non-zero exit). Requests in flight at the kill have unknown outcomes and are only counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::http::{send_once, Connection, Method, Request, Response, StatusCode};
use crate::postgres::FreshDatabase;
use crate::server::{HerdServer, ServerOptions};

/// Samples per metric batch.
const BATCH_SAMPLES: u64 = 20;
/// Metric batches each device posts before its certificate is issued.
const BATCHES_PER_DEVICE: u64 = 2;
/// How long a round's load runs at least before the kill; the kill comes at a random moment
/// between these two bounds (once every kind of write has been acknowledged at least once).
const KILL_AFTER: (Duration, Duration) = (Duration::from_millis(1_500), Duration::from_millis(3_000));
/// A round whose load has not acknowledged every kind of write by then fails.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// What `herd-bench crash` was asked to do.
#[derive(Debug, Clone)]
pub struct CrashSettings {
    /// herd binary to run; `None` builds it.
    pub herd_bin: Option<PathBuf>,
    /// PostgreSQL admin URL: also check PostgreSQL, on a fresh database `herd_crash_<pid>`.
    pub database_url: Option<String>,
    /// Kill rounds per engine.
    pub rounds: usize,
    /// Concurrent workers of the load.
    pub concurrency: usize,
    /// Keep the data directories (and server logs) instead of deleting them.
    pub keep_data: bool,
}

/// The figures of one kill round.
#[derive(Debug, Clone)]
pub struct RoundFigures {
    /// Load time before the kill.
    pub killed_after: Duration,
    /// Writes acknowledged in this round.
    pub acknowledged: Counts,
    /// Requests whose answer the kill cut off (outcome unknown, not checked).
    pub in_flight: u64,
    /// Restart until `/readyz` answered.
    pub restart: Duration,
    /// Acknowledged writes of all rounds so far that were looked up after this restart.
    pub checked: Counts,
    /// Of those, how many were missing or wrong, with a description of each.
    pub lost: Vec<String>,
}

/// Acknowledged writes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices registered (201).
    pub devices: u64,
    /// Metric batches stored (200, all samples accepted).
    pub batches: u64,
    /// Certificates with a server-generated key (201).
    pub server_keys: u64,
    /// Certificates for a CSR (201).
    pub csrs: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.devices + self.batches + self.server_keys + self.csrs
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} devices, {} metric batches ({} samples), {} certificates with server keys, {} with CSRs",
            self.devices,
            self.batches,
            self.batches * BATCH_SAMPLES,
            self.server_keys,
            self.csrs
        )
    }
}

/// The outcome of one engine.
#[derive(Debug, Clone)]
pub struct EngineOutcome {
    /// `sqlite` or `postgresql`.
    pub engine: &'static str,
    /// One entry per kill round.
    pub rounds: Vec<RoundFigures>,
}

impl EngineOutcome {
    /// Whether every acknowledged write was found after every restart.
    pub fn nothing_lost(&self) -> bool {
        self.rounds.iter().all(|round| round.lost.is_empty())
    }
}

/// Runs the check on SQLite, then on PostgreSQL when a URL was given. Errors (other than lost
/// writes, which are in the outcomes) stop the run.
pub async fn run(settings: CrashSettings) -> Result<Vec<EngineOutcome>> {
    if settings.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if settings.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let binary = match &settings.herd_bin {
        Some(path) => std::fs::canonicalize(path).with_context(|| format!("--herd-bin {}", path.display()))?,
        None => {
            let workspace = crate::cli::workspace_root();
            tokio::task::spawn_blocking(move || crate::server::build_release_herd(&workspace))
                .await
                .context("cargo build task")??
        }
    };
    eprintln!("{}", crate::server::herd_version(&binary));
    let csrs = tokio::task::spawn_blocking(crate::phases::certificates::make_csrs).await.context("CSR task")??;

    let mut outcomes = Vec::new();
    outcomes.push(run_engine(&settings, &binary, None, Arc::clone(&csrs)).await?);
    if let Some(admin_url) = &settings.database_url {
        outcomes.push(run_engine(&settings, &binary, Some(admin_url), csrs).await?);
    }
    for outcome in &outcomes {
        for (index, round) in outcome.rounds.iter().enumerate() {
            let verdict =
                if round.lost.is_empty() { "all found".to_string() } else { format!("{} LOST", round.lost.len()) };
            println!(
                "{:<10} round {}: killed after {:.1} s; acknowledged {} writes ({} in flight at the kill); \
                 after restart checked {} writes of all rounds: {verdict}",
                outcome.engine,
                index + 1,
                round.killed_after.as_secs_f64(),
                round.acknowledged.total(),
                round.in_flight,
                round.checked.total(),
            );
        }
    }
    Ok(outcomes)
}

/// A data directory removed when dropped (unless kept).
struct DataDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the data directory: {}", self.path.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("herd-bench: removing {}: {error}", self.path.display());
        }
    }
}

async fn run_engine(
    settings: &CrashSettings,
    binary: &Path,
    admin_url: Option<&str>,
    csrs: Arc<[Bytes]>,
) -> Result<EngineOutcome> {
    let engine = if admin_url.is_some() { "postgresql" } else { "sqlite" };
    eprintln!("== crash check on {engine}: {} kill rounds, {} workers", settings.rounds, settings.concurrency);
    let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 10);
    let data_dir =
        DataDir { path: std::env::temp_dir().join(format!("herd-crash-{suffix}")), keep: settings.keep_data };
    std::fs::create_dir_all(&data_dir.path).with_context(|| format!("creating {}", data_dir.path.display()))?;
    // Declared after the data directory and before the server: dropped before the first and
    // after the second.
    let database = match admin_url {
        Some(url) => Some(FreshDatabase::create_named(url, format!("herd_crash_{}", std::process::id()))?),
        None => None,
    };
    let options = ServerOptions {
        binary: binary.to_path_buf(),
        database_url: database.as_ref().map(|database| database.url().to_string()),
        presence_threshold: Duration::from_secs(300),
        max_connections: crate::server::DEFAULT_MAX_CONNECTIONS,
    };
    let admin: Arc<str> = Alphanumeric.sample_string(&mut rand::thread_rng(), 48).into();
    let mut server = HerdServer::start_in(&options, &data_dir.path, Arc::clone(&admin)).await?;
    eprintln!("herd listening on {} (pid {}, data in {})", server.addr(), server.pid(), data_dir.path.display());

    let response = send_once(
        server.addr(),
        &Request::new(Method::POST, "/enrollment-tokens")
            .bearer(Arc::clone(&admin))
            .json(&json!({ "name": "herd-crash", "maxUses": 10_000_000u64 })),
    )
    .await?;
    if response.status != StatusCode::CREATED {
        bail!("POST /enrollment-tokens answered {}: {}", response.status, response.excerpt());
    }
    let secret: Arc<str> = response.json()?["secret"]
        .as_str()
        .ok_or_else(|| anyhow!("POST /enrollment-tokens: no `secret` in {}", response.excerpt()))?
        .into();

    let load = Arc::new(Load {
        admin: Arc::clone(&admin),
        secret,
        csrs,
        tag: Alphanumeric.sample_string(&mut rand::thread_rng(), 6).to_uppercase(),
        next_serial: AtomicU64::new(0),
        ledger: Mutex::new(Ledger::default()),
    });
    let mut rounds = Vec::new();
    for round in 1..=settings.rounds {
        let (figures, restarted) =
            kill_round(&load, server, &options, &data_dir.path, round, settings).await.map_err(|error| {
                anyhow!("{engine} round {round}: {error:#}\nserver log ends:\n{}", log_tail(&data_dir.path))
            })?;
        server = restarted;
        eprintln!(
            "  round {round}/{}: killed after {:.1} s with {} requests in flight; acknowledged {}; \
             restarted in {:.1} s; checked {} acknowledged writes of all rounds: {}",
            settings.rounds,
            figures.killed_after.as_secs_f64(),
            figures.in_flight,
            figures.acknowledged,
            figures.restart.as_secs_f64(),
            figures.checked.total(),
            if figures.lost.is_empty() { "all found".to_string() } else { format!("{} LOST", figures.lost.len()) }
        );
        for lost in figures.lost.iter().take(20) {
            eprintln!("    lost: {lost}");
        }
        rounds.push(figures);
    }
    server.stop()?;
    drop(database);
    drop(data_dir);
    Ok(EngineOutcome { engine, rounds })
}

/// Runs one round's load, kills herd in the middle, restarts it and checks the whole ledger.
async fn kill_round(
    load: &Arc<Load>,
    server: HerdServer,
    options: &ServerOptions,
    data_dir: &Path,
    round: usize,
    settings: &CrashSettings,
) -> Result<(RoundFigures, HerdServer)> {
    let before = load.counts();
    let killing = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicU64::new(0));
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut workers = JoinSet::new();
    for _ in 0..settings.concurrency {
        let worker = Worker {
            load: Arc::clone(load),
            connection: Connection::new(server.addr())?,
            killing: Arc::clone(&killing),
            in_flight: Arc::clone(&in_flight),
            unexpected: Arc::clone(&unexpected),
        };
        workers.spawn(worker.run());
    }

    let started = Instant::now();
    let kill_at = rand::thread_rng().gen_range(KILL_AFTER.0..KILL_AFTER.1);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !lock(&unexpected).is_empty() {
            break;
        }
        let now = load.counts();
        let every_kind = now.devices > before.devices
            && now.batches > before.batches
            && now.server_keys > before.server_keys
            && now.csrs > before.csrs;
        if every_kind && started.elapsed() >= kill_at {
            break;
        }
        if started.elapsed() > PROGRESS_TIMEOUT {
            killing.store(true, Ordering::SeqCst);
            bail!("the load did not acknowledge every kind of write within {} s: {now}", PROGRESS_TIMEOUT.as_secs());
        }
    }
    let killed_after = started.elapsed();
    killing.store(true, Ordering::SeqCst);
    server.kill()?;
    while let Some(joined) = workers.join_next().await {
        joined.context("load worker panicked")?;
    }
    let unexpected = std::mem::take(&mut *lock(&unexpected));
    if let Some(first) = unexpected.first() {
        bail!("{} unexpected answers before the kill; the first: {first}", unexpected.len());
    }
    let after = load.counts();
    let acknowledged = Counts {
        devices: after.devices - before.devices,
        batches: after.batches - before.batches,
        server_keys: after.server_keys - before.server_keys,
        csrs: after.csrs - before.csrs,
    };

    eprintln!("  round {round}: SIGKILL after {:.1} s; restarting herd on the same data", killed_after.as_secs_f64());
    let restart_started = Instant::now();
    let restarted = HerdServer::start_in(options, data_dir, Arc::clone(&load.admin)).await?;
    let restart = restart_started.elapsed();
    let (checked, lost) = verify(load, restarted.addr(), data_dir, settings.concurrency).await?;
    let figures = RoundFigures {
        killed_after,
        acknowledged,
        in_flight: in_flight.load(Ordering::SeqCst),
        restart,
        checked,
        lost,
    };
    Ok((figures, restarted))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_tail(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What every worker shares: credentials, CSRs, the serial counter and the ledger.
struct Load {
    admin: Arc<str>,
    secret: Arc<str>,
    csrs: Arc<[Bytes]>,
    /// Makes identifiers unique to this run.
    tag: String,
    next_serial: AtomicU64,
    ledger: Mutex<Ledger>,
}

impl Load {
    fn counts(&self) -> Counts {
        let ledger = lock(&self.ledger);
        Counts {
            devices: ledger.devices.len() as u64,
            batches: ledger.devices.iter().map(|device| device.batches.len() as u64).sum(),
            server_keys: ledger.certificates.iter().filter(|c| c.key.is_some()).count() as u64,
            csrs: ledger.certificates.iter().filter(|c| c.key.is_none()).count() as u64,
        }
    }
}

/// Every acknowledged write.
#[derive(Default)]
struct Ledger {
    devices: Vec<AckedDevice>,
    certificates: Vec<AckedCertificate>,
}

struct AckedDevice {
    id: String,
    /// Start (Unix ms) of the minute of each acknowledged batch.
    batches: Vec<i64>,
}

struct AckedCertificate {
    id: String,
    device_id: String,
    /// For a server-generated key: the key herd answered, and the certificate.
    key: Option<ServerKey>,
}

struct ServerKey {
    private_key_pem: String,
    certificate_pem: String,
    /// Whether `openssl` has confirmed that the two pair up.
    pair_checked: bool,
}

/// Why a worker's cycle ended early.
enum Stopped {
    /// The server is being killed (or the round is over).
    Killed,
}

struct Worker {
    load: Arc<Load>,
    connection: Connection,
    killing: Arc<AtomicBool>,
    in_flight: Arc<AtomicU64>,
    unexpected: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    async fn run(mut self) {
        while !self.killing.load(Ordering::SeqCst) {
            let serial = self.load.next_serial.fetch_add(1, Ordering::SeqCst);
            match self.cycle(serial).await {
                Ok(()) => {}
                Err(Stopped::Killed) => return,
            }
        }
    }

    /// Sends `request`; `Err` when the kill cut it off (counted) or it failed before the kill
    /// (recorded as unexpected, which fails the round).
    async fn send(&mut self, request: &Request) -> Result<Response, Stopped> {
        match self.connection.send(request).await {
            Ok(response) => Ok(response),
            Err(error) => {
                if self.killing.load(Ordering::SeqCst) {
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.unexpected(format!("{error:#}"));
                }
                Err(Stopped::Killed)
            }
        }
    }

    fn unexpected(&self, what: String) {
        lock(&self.unexpected).push(what);
        // Stop the whole round: the kill follows at once.
        self.killing.store(true, Ordering::SeqCst);
    }

    fn reject(&self, what: &str, response: &Response) -> Stopped {
        self.unexpected(format!("{what} answered {}: {}", response.status, response.excerpt()));
        Stopped::Killed
    }

    /// Registers a fresh device, posts its metric batches and has its certificate issued.
    async fn cycle(&mut self, serial: u64) -> Result<(), Stopped> {
        let tag = self.load.tag.clone();
        let mac = serial.to_be_bytes();
        let registration =
            Request::new(Method::POST, "/devices/auto-register").bearer(Arc::clone(&self.load.secret)).json(&json!({
                "serialNumber": format!("CRASH-{tag}-{serial:09}"),
                "macAddress": format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[3], mac[4], mac[5], mac[6], mac[7]),
                "androidId": format!("c{}{serial:010x}", tag.to_lowercase()),
                "model": "HerdBox 4K",
                "manufacturer": "herd-bench crash",
                "osVersion": "Android TV 12",
                "appVersion": "1.0.0",
                "name": format!("crash-{serial}"),
            }));
        let response = self.send(&registration).await?;
        if response.status != StatusCode::CREATED {
            return Err(self.reject("POST /devices/auto-register", &response));
        }
        let body = response.json().map_err(|error| {
            self.unexpected(format!("POST /devices/auto-register: {error:#}"));
            Stopped::Killed
        })?;
        let (Some(device_id), Some(device_token)) = (id_of(&body["device"]["id"]), body["deviceToken"].as_str()) else {
            return Err(self.reject("POST /devices/auto-register (no device.id or deviceToken)", &response));
        };
        let device_token: Arc<str> = device_token.into();
        let index = {
            let mut ledger = lock(&self.load.ledger);
            ledger.devices.push(AckedDevice { id: device_id.clone(), batches: Vec::new() });
            ledger.devices.len() - 1
        };

        // Each batch in a minute of its own, a few minutes back, so its bucket is its alone.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let this_minute = now_ms - now_ms.rem_euclid(60_000);
        for batch in 0..BATCHES_PER_DEVICE {
            let minute = this_minute - 60_000 * (i64::try_from(batch).unwrap_or(0) + 2);
            let samples: Vec<Value> = (0..BATCH_SAMPLES)
                .map(|k| {
                    let at = chrono::DateTime::from_timestamp_millis(minute + i64::try_from(k).unwrap_or(0) * 2_000)
                        .unwrap_or_default();
                    json!({
                        "cpu": (serial * 7 + k) % 100,
                        "ram": 40,
                        "storage": 70,
                        "temperature": 45,
                        "recordedAt": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    })
                })
                .collect();
            let request = Request::new(Method::POST, "/devices/metrics")
                .bearer(Arc::clone(&device_token))
                .json(&json!({ "samples": samples }));
            let response = self.send(&request).await?;
            let accepted = response.json().ok().and_then(|body| body["accepted"].as_u64());
            if response.status != StatusCode::OK || accepted != Some(BATCH_SAMPLES) {
                return Err(self.reject("POST /devices/metrics", &response));
            }
            lock(&self.load.ledger).devices[index].batches.push(minute);
        }

        let server_key = serial.is_multiple_of(2);
        let mut request = Request::new(Method::POST, format!("/devices/{device_id}/certificates"))
            .bearer(Arc::clone(&self.load.admin));
        if !server_key {
            let csrs = &self.load.csrs;
            if let Some(csr) = csrs.get(usize::try_from(serial).unwrap_or(0) % csrs.len().max(1)) {
                request = request.json_bytes(csr.clone());
            }
        }
        let response = self.send(&request).await?;
        if response.status != StatusCode::CREATED {
            return Err(self.reject("POST /devices/{id}/certificates", &response));
        }
        let body = response.json().unwrap_or(Value::Null);
        let id = id_of(&body["certificate"]["id"]);
        let certificate_pem = body["certificatePem"].as_str();
        let private_key_pem = body["privateKeyPem"].as_str();
        let (Some(id), Some(certificate_pem)) = (id, certificate_pem) else {
            return Err(self.reject("POST /devices/{id}/certificates (no certificate.id or certificatePem)", &response));
        };
        if private_key_pem.is_some() != server_key {
            return Err(
                self.reject("POST /devices/{id}/certificates (privateKeyPem present for a CSR or missing)", &response)
            );
        }
        let key = private_key_pem.map(|pem| ServerKey {
            private_key_pem: pem.to_string(),
            certificate_pem: certificate_pem.to_string(),
            pair_checked: false,
        });
        lock(&self.load.ledger).certificates.push(AckedCertificate { id, device_id, key });
        Ok(())
    }
}

fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(id) => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// One lookup after a restart.
enum Check {
    Device { id: String, batches: Vec<i64> },
    Certificate { index: usize },
}

/// Looks up everything in the ledger through the restarted server. Returns how many writes were
/// checked and a description of each one missing.
async fn verify(
    load: &Arc<Load>,
    addr: SocketAddr,
    data_dir: &Path,
    concurrency: usize,
) -> Result<(Counts, Vec<String>)> {
    let checks: Arc<Vec<Check>> = {
        let ledger = lock(&load.ledger);
        let devices = ledger
            .devices
            .iter()
            .map(|device| Check::Device { id: device.id.clone(), batches: device.batches.clone() });
        let certificates = (0..ledger.certificates.len()).map(|index| Check::Certificate { index });
        Arc::new(devices.chain(certificates).collect())
    };
    let checked = load.counts();
    let next = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (checks, next, lost, load) = (Arc::clone(&checks), Arc::clone(&next), Arc::clone(&lost), Arc::clone(load));
        let data_dir = data_dir.to_path_buf();
        let mut connection = Connection::new(addr)?;
        tasks.spawn(async move {
            loop {
                let index = usize::try_from(next.fetch_add(1, Ordering::SeqCst)).unwrap_or(usize::MAX);
                let Some(check) = checks.get(index) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let problems = match check {
                    Check::Device { id, batches } => check_device(&mut connection, &load.admin, id, batches).await?,
                    Check::Certificate { index } => {
                        check_certificate(&mut connection, &load, *index, &data_dir).await?
                    }
                };
                lock(&lost).extend(problems);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("verification task panicked")??;
    }
    let lost = std::mem::take(&mut *lock(&lost));
    Ok((checked, lost))
}

async fn check_device(connection: &mut Connection, admin: &Arc<str>, id: &str, batches: &[i64]) -> Result<Vec<String>> {
    let mut lost = Vec::new();
    let response =
        connection.send(&Request::new(Method::GET, format!("/devices/{id}")).bearer(Arc::clone(admin))).await?;
    if response.status != StatusCode::OK {
        lost.push(format!("device {id}: GET /devices/{id} answered {}", response.status));
        return Ok(lost);
    }
    let (Some(first), Some(last)) = (batches.iter().min(), batches.iter().max()) else {
        return Ok(lost);
    };
    let stamp = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace('+', "%2B")
    };
    let path = format!("/devices/{id}/metrics?bucket=1m&from={}&to={}", stamp(*first), stamp(last + 60_000));
    let response = connection.send(&Request::new(Method::GET, path.as_str()).bearer(Arc::clone(admin))).await?;
    if response.status != StatusCode::OK {
        lost.push(format!("device {id}: GET {path} answered {}: {}", response.status, response.excerpt()));
        return Ok(lost);
    }
    let body = response.json()?;
    let buckets = body["buckets"].as_array().cloned().unwrap_or_default();
    for minute in batches {
        let samples = buckets
            .iter()
            .find(|bucket| {
                bucket["start"]
                    .as_str()
                    .and_then(|start| chrono::DateTime::parse_from_rfc3339(start).ok())
                    .is_some_and(|start| start.timestamp_millis() == *minute)
            })
            .and_then(|bucket| bucket["samples"].as_u64())
            .unwrap_or(0);
        if samples != BATCH_SAMPLES {
            lost.push(format!(
                "device {id}: the metric batch of minute {} has {samples} of its {BATCH_SAMPLES} samples",
                stamp(*minute)
            ));
        }
    }
    Ok(lost)
}

async fn check_certificate(
    connection: &mut Connection,
    load: &Load,
    index: usize,
    data_dir: &Path,
) -> Result<Vec<String>> {
    let (id, device_id, key) = {
        let ledger = lock(&load.ledger);
        let certificate = ledger.certificates.get(index).context("certificate index out of range")?;
        let key = certificate
            .key
            .as_ref()
            .map(|key| (key.private_key_pem.clone(), key.certificate_pem.clone(), key.pair_checked));
        (certificate.id.clone(), certificate.device_id.clone(), key)
    };
    let mut lost = Vec::new();
    let response = connection
        .send(&Request::new(Method::GET, format!("/certificates/{id}")).bearer(Arc::clone(&load.admin)))
        .await?;
    if response.status != StatusCode::OK {
        lost.push(format!(
            "certificate {id} of device {device_id}: GET /certificates/{id} answered {}",
            response.status
        ));
        return Ok(lost);
    }
    let body = response.json()?;
    if id_of(&body["deviceId"]).as_deref() != Some(device_id.as_str()) {
        lost.push(format!("certificate {id}: deviceId is {} instead of {device_id}", body["deviceId"]));
    }
    let Some((private_key_pem, certificate_pem, pair_checked)) = key else {
        return Ok(lost);
    };
    let path = data_dir.join("certificates").join("devices").join("private").join(format!("{device_id}-key.pem"));
    let stored = match std::fs::read_to_string(&path) {
        Ok(stored) => stored,
        Err(error) => {
            lost.push(format!("certificate {id}: the server-generated key {}: {error}", path.display()));
            return Ok(lost);
        }
    };
    if stored.trim() != private_key_pem.trim() {
        lost.push(format!("certificate {id}: {} is not the key herd answered", path.display()));
        return Ok(lost);
    }
    if !pair_checked {
        let pairs = tokio::task::spawn_blocking(move || key_matches_certificate(&path, &certificate_pem))
            .await
            .context("openssl task")??;
        if !pairs {
            lost.push(format!("certificate {id}: the stored key does not match the certificate's public key"));
        } else if let Some(key) = lock(&load.ledger).certificates.get_mut(index).and_then(|c| c.key.as_mut()) {
            key.pair_checked = true;
        }
    }
    Ok(lost)
}

/// Whether the private key at `key_path` has the certificate's public key (`openssl`).
fn key_matches_certificate(key_path: &Path, certificate_pem: &str) -> Result<bool> {
    let from_key = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(key_path)
        .stdin(Stdio::null())
        .output()
        .context("running openssl pkey")?;
    let from_certificate = openssl_with_input(&["x509", "-noout", "-pubkey"], certificate_pem)?;
    Ok(from_key.status.success() && !from_key.stdout.is_empty() && from_key.stdout == from_certificate)
}

fn openssl_with_input(args: &[&str], input: &str) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running openssl")?;
    child.stdin.take().context("openssl stdin")?.write_all(input.as_bytes()).context("writing to openssl")?;
    let output = child.wait_with_output().context("waiting for openssl")?;
    if !output.status.success() {
        bail!("openssl {} failed ({})", args.join(" "), output.status);
    }
    Ok(output.stdout)
}
