//! Package downloads (issue 12): N clients (100; quick: 10) download one artifact (200 MiB;
//! quick: 16 MiB) at once, from herd and from a plain static route serving the same bytes in the
//! same run (the ceiling), and the server's RSS before and during the downloads.
//!
//! The artifact is pseudo-random bytes (nothing compresses or deduplicates them), written once to
//! a directory in the server's data directory (removed at the end of the phase), uploaded with
//! `POST /packages?kind=file&name=bench-dl&version=1&versionCode=1` (streamed from the file) and
//! served by `herd-bench static-serve` in a child process. Each run: every client opens its
//! connection, then all start together; herd's clients send `GET /packages/{id}/download` with
//! the admin (member) token — the serving code of the device route
//! `GET /devices/self/packages/{id}/download`, which requires a rollout assignment — and the
//! ceiling's `GET /file`. Every download's status, `Content-Length` and byte count are checked and
//! the first client's bytes are hashed against the package's SHA-256, so a broken server cannot
//! look fast. Bodies are streamed and dropped frame by frame: the clients hold no artifact.
//! Throughput is the bytes of all clients over the time until the last one finished.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, StatusCode};
use rand::distributions::{Alphanumeric, DistString};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::context::Bench;
use crate::probe::is_missing_route;
use crate::report::{format_count, Figure, PhaseReport};
use crate::server::{cpu_seconds, RssSampler};
use crate::static_serve::{self, DownloadConnection, StaticServer};

const ROUTE: &str = "POST /packages and GET /packages/{id}/download";

const MIB: u64 = 1024 * 1024;

/// The artifact is written in pieces of this size (and hashed along the way).
const WRITE_PIECE: usize = 1024 * 1024;

/// Runs the download phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let addr = bench.addr();
    let token = bench.admin_token();
    let (status, body) = static_serve::get_small(addr, "/packages?limit=1", Some(&token)).await?;
    if is_missing_route(status) {
        return Ok(vec![PhaseReport::not_in_build("download", ROUTE)]);
    }
    if !status.is_success() {
        bail!("GET /packages answered {status}: {}", excerpt(&body));
    }

    let size = bench.settings.download_bytes;
    let clients = bench.settings.download_clients;
    let rss_before = bench.server.rss_mib();
    let workdir = WorkDir::create(bench.server.data_dir())?;
    let file = workdir.path().join("artifact.bin");
    let started = Instant::now();
    let sha256 = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || write_artifact(&file, size, rand::random()))
            .await
            .context("artifact writer task")??
    };
    eprintln!("  wrote a {} artifact in {:.1} s", mib_label(size), started.elapsed().as_secs_f64());

    let upload_path = "/packages?kind=file&name=bench-dl&version=1&versionCode=1";
    let sampler = bench.server.sample_rss();
    let started = Instant::now();
    let (status, body) = static_serve::upload_file(addr, upload_path, &token, &file).await?;
    let upload_seconds = started.elapsed().as_secs_f64();
    let upload_rss = sampler.finish();
    if is_missing_route(status) {
        return Ok(vec![PhaseReport::not_in_build("download", ROUTE)]);
    }
    if status != StatusCode::CREATED {
        bail!("POST /packages answered {status}: {}", excerpt(&body));
    }
    let package: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("POST /packages answered {}", excerpt(&body)))?;
    let id = package["id"].as_str().ok_or_else(|| anyhow!("POST /packages: no id in {package}"))?;
    if package["sha256"].as_str() != Some(sha256.as_str()) || package["size"].as_u64() != Some(size) {
        bail!(
            "POST /packages stored sha256 {} and size {}, the artifact has {sha256} and {size}",
            package["sha256"],
            package["size"]
        );
    }
    let herd_path = format!("/packages/{id}/download");

    let binary = match &bench.settings.static_server {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("locating herd-bench for static-serve")?,
    };
    let ceiling = StaticServer::start(&binary, &file).await?;

    let mut phase = PhaseReport::new("download");
    let of = format!("{clients} clients × {}", mib_label(size));
    let mut upload = Figure::new(format!("upload of {}", mib_label(size)), "MiB/s");
    upload.push(size as f64 / MIB as f64 / upload_seconds);
    let mut herd_rate = Figure::new(format!("herd download ({of})"), "MiB/s");
    let mut ceiling_rate = Figure::new("static route, same bytes (ceiling)", "MiB/s");
    let mut ratio = Figure::new("herd / ceiling", "x");
    let mut slowest = Figure::new("herd: slowest client's download", "s");
    let mut herd_cpu = Figure::new("herd CPU per GiB served", "ms");
    let mut ceiling_cpu = Figure::new("static route CPU per GiB served", "ms");
    let mut rss_before_figure = Figure::new("server RSS before the phase", "MiB");
    let mut rss_peak = Figure::new("server RSS peak while downloading", "MiB");
    if let Some(rss) = rss_before {
        rss_before_figure.push(rss);
    }
    phase.observe_rss(upload_rss);
    let mut ceiling_rss: Option<f64> = None;

    let download = Download { size, sha256: sha256.clone(), bearer: Some(token.to_string()), clients };
    let runs = bench.settings.runs;
    for run in 1..=runs {
        // The order alternates run by run, so drift in the machine hits both alike.
        let ceiling_first = run % 2 == 0;
        let mut plain = None;
        if ceiling_first {
            plain = Some(download_ceiling(&ceiling, &download, run, runs, &mut ceiling_rss).await?);
        }
        let sampler = bench.server.sample_rss();
        let cpu_before = cpu_seconds(bench.server.pid());
        let herd = download.run(addr, &herd_path, &format!("herd download run {run}/{runs}")).await?;
        if let Some(ms) = cpu_ms_per_gib(cpu_before, cpu_seconds(bench.server.pid()), herd.bytes) {
            herd_cpu.push(ms);
        }
        let peak = sampler.finish();
        phase.observe_rss(peak);
        if let Some(peak) = peak {
            rss_peak.push(peak);
        }
        let plain = match plain {
            Some(plain) => plain,
            None => download_ceiling(&ceiling, &download, run, runs, &mut ceiling_rss).await?,
        };
        if let Some(ms) = plain.cpu_ms_per_gib {
            ceiling_cpu.push(ms);
        }
        herd_rate.push(herd.mib_per_second());
        ceiling_rate.push(plain.mib_per_second());
        slowest.push(herd.elapsed.as_secs_f64());
        if plain.mib_per_second() > 0.0 {
            ratio.push(herd.mib_per_second() / plain.mib_per_second());
        }
    }
    drop(ceiling);
    workdir.remove()?;

    phase.figures =
        vec![upload, herd_rate, ceiling_rate, ratio, slowest, herd_cpu, ceiling_cpu, rss_before_figure, rss_peak];
    phase.notes.push(format!(
        "{clients} clients at once, each with a connection of its own, download the whole {}-byte artifact \
         (pseudo-random) per run; herd: GET /packages/{{id}}/download with a member (admin) token, the serving \
         code of GET /devices/self/packages/{{id}}/download, whose device route requires a rollout \
         assignment; every download's byte count checked, one client's SHA-256 checked",
        format_count(size)
    ));
    phase.notes.push(format!(
        "ceiling: herd-bench static-serve in a child process (hyper HTTP/1.1, GET /file, the file read with \
         tokio in {} KiB chunks like herd's blob store; no auth, no database){}",
        static_serve::READ_CHUNK / 1024,
        ceiling_rss.map(|rss| format!("; its RSS peaked at {rss:.0} MiB")).unwrap_or_default()
    ));
    phase.notes.push(format!(
        "upload: POST /packages streamed from the file in {upload_seconds:.2} s; the blob store hashes and \
         fsyncs it"
    ));
    Ok(vec![phase])
}

/// What the ceiling's run measured.
struct CeilingRound {
    round: Round,
    /// The static server's CPU time per GiB it served.
    cpu_ms_per_gib: Option<f64>,
}

impl CeilingRound {
    fn mib_per_second(&self) -> f64 {
        self.round.mib_per_second()
    }
}

/// One run of the ceiling's downloads, folding the static server's RSS peak into `rss`.
async fn download_ceiling(
    ceiling: &StaticServer,
    download: &Download,
    run: usize,
    runs: usize,
    rss: &mut Option<f64>,
) -> Result<CeilingRound> {
    let sampler = RssSampler::start(ceiling.pid());
    let cpu_before = cpu_seconds(ceiling.pid());
    let anonymous = Download { bearer: None, ..download.clone() };
    let round =
        anonymous.run(ceiling.addr(), static_serve::FILE_PATH, &format!("static route run {run}/{runs}")).await?;
    let cpu_ms_per_gib = cpu_ms_per_gib(cpu_before, cpu_seconds(ceiling.pid()), round.bytes);
    if let Some(peak) = sampler.finish() {
        *rss = Some(rss.map_or(peak, |max| max.max(peak)));
    }
    Ok(CeilingRound { round, cpu_ms_per_gib })
}

/// CPU milliseconds a server spent per GiB it served, from its CPU seconds before and after.
pub fn cpu_ms_per_gib(before: Option<f64>, after: Option<f64>, bytes: u64) -> Option<f64> {
    let spent = after? - before?;
    (bytes > 0 && spent >= 0.0).then(|| spent * 1000.0 / (bytes as f64 / (1024.0 * MIB as f64)))
}

/// One round of downloads: what to fetch, how many clients, what every body must be.
#[derive(Debug, Clone)]
struct Download {
    size: u64,
    sha256: String,
    bearer: Option<String>,
    clients: usize,
}

/// What one round measured.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Bytes received by all clients.
    pub bytes: u64,
    /// From the moment all clients were released until the last body ended.
    pub elapsed: Duration,
}

impl Round {
    /// Aggregate throughput in MiB/s.
    pub fn mib_per_second(&self) -> f64 {
        mib_per_second(self.bytes, self.elapsed)
    }
}

/// A size in MiB, with decimals only when it is not a whole number of MiB.
pub fn mib_label(bytes: u64) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", format_count(bytes / MIB))
    } else {
        format!("{:.2} MiB", bytes as f64 / MIB as f64)
    }
}

/// `bytes` over `elapsed` in MiB/s (0 for no time).
pub fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        bytes as f64 / MIB as f64 / seconds
    } else {
        0.0
    }
}

/// How long a round may take before it fails: it only keeps a broken server from hanging the
/// harness (20 MiB/s per client would be very slow on loopback), never judges a timing.
pub fn round_deadline(size: u64, clients: usize) -> Duration {
    let total = size.saturating_mul(clients as u64);
    Duration::from_secs(60) + Duration::from_secs(total / (20 * MIB))
}

impl Download {
    /// Opens `clients` connections, releases them together, and checks every body.
    async fn run(&self, addr: SocketAddr, path: &str, label: &str) -> Result<Round> {
        let deadline = round_deadline(self.size, self.clients);
        let received = Arc::new(AtomicU64::new(0));
        let progress = spawn_progress(label.to_string(), Arc::clone(&received), self.size * self.clients as u64);
        let outcome = tokio::time::timeout(deadline, self.round(addr, path, Arc::clone(&received))).await;
        progress.abort();
        match outcome {
            Ok(round) => round,
            Err(_) => bail!(
                "{label}: not finished within {} s ({} of {} bytes received)",
                deadline.as_secs(),
                format_count(received.load(Ordering::Relaxed)),
                format_count(self.size * self.clients as u64)
            ),
        }
    }

    async fn round(&self, addr: SocketAddr, path: &str, received: Arc<AtomicU64>) -> Result<Round> {
        let mut connections = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            connections.push(static_serve::connect::<Empty<Bytes>>(addr).await?);
        }
        let start = Arc::new(Barrier::new(self.clients + 1));
        let mut tasks = JoinSet::new();
        for (index, connection) in connections.into_iter().enumerate() {
            let request = static_serve::request(addr, Method::GET, path, self.bearer.as_deref(), Empty::new())?;
            let start = Arc::clone(&start);
            let received = Arc::clone(&received);
            let size = self.size;
            // The first client hashes what it gets; the others only count.
            let hash = index == 0;
            tasks.spawn(async move {
                start.wait().await;
                fetch(connection, request, size, hash, &received).await.map(|digest| (Instant::now(), digest))
            });
        }
        start.wait().await;
        let started = Instant::now();
        let mut last = started;
        let mut digests = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (finished, digest) = joined.context("download task panicked")??;
            last = last.max(finished);
            digests.extend(digest);
        }
        match digests.as_slice() {
            [digest] if *digest == self.sha256 => {}
            [digest] => bail!("GET {path}: the body's SHA-256 is {digest}, the artifact's is {}", self.sha256),
            _ => bail!("GET {path}: no body was hashed"),
        }
        Ok(Round { bytes: self.size * self.clients as u64, elapsed: last - started })
    }
}

/// Sends one download request and streams the body, counting (and maybe hashing) it; fails
/// unless the answer is a 200 whose `Content-Length` and byte count are `size`.
async fn fetch(
    mut connection: DownloadConnection,
    request: hyper::Request<Empty<Bytes>>,
    size: u64,
    hash: bool,
    received: &AtomicU64,
) -> Result<Option<String>> {
    let path = request.uri().to_string();
    connection.ready().await.with_context(|| format!("GET {path}: connection"))?;
    let response = connection.send_request(request).await.with_context(|| format!("GET {path}"))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
        bail!("GET {path} answered {status}: {}", excerpt(&body));
    }
    let length = response.headers().get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    check_length(length, size).map_err(|error| anyhow!("GET {path}: {error}"))?;
    let mut body = response.into_body();
    let mut hasher = hash.then(Sha256::new);
    let mut got: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("GET {path}: body after {got} bytes"))?;
        if let Some(data) = frame.data_ref() {
            got += data.len() as u64;
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(hasher) = &mut hasher {
                hasher.update(data);
            }
        }
    }
    check_length(Some(got), size).map_err(|error| anyhow!("GET {path}: body: {error}"))?;
    Ok(hasher.map(|hasher| hex(&hasher.finalize())))
}

/// A length (a `Content-Length`, or the bytes received) against the artifact's size.
pub fn check_length(length: Option<u64>, size: u64) -> Result<(), String> {
    match length {
        Some(length) if length == size => Ok(()),
        Some(length) => Err(format!("{length} bytes, the artifact has {size}")),
        None => Err("no Content-Length".to_string()),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `size` pseudo-random bytes (from `seed`) to `path` in pieces, never holding more than one
/// piece, and answers their SHA-256 (lowercase hex).
pub fn write_artifact(path: &Path, size: u64, seed: u64) -> Result<String> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(WRITE_PIECE, file);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut piece = vec![0u8; WRITE_PIECE];
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(WRITE_PIECE);
        rng.fill_bytes(&mut piece[..n]);
        hasher.update(&piece[..n]);
        writer.write_all(&piece[..n]).with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    writer.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

/// A directory for the artifact inside the server's data directory; removed by [`WorkDir::remove`]
/// or when dropped (an error or an interrupt on the way).
struct WorkDir {
    path: PathBuf,
    removed: bool,
}

impl WorkDir {
    fn create(parent: &Path) -> Result<WorkDir> {
        let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 8);
        let path = parent.join(format!("bench-download-{suffix}"));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, removed: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path).with_context(|| format!("removing {}", self.path.display()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Prints MiB received and the rate over the last second, once a second, until aborted.
fn spawn_progress(label: String, received: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut previous = 0;
        loop {
            ticker.tick().await;
            let now = received.load(Ordering::Relaxed);
            eprintln!(
                "  [{label}] {} of {} MiB ({:.0} s), {} MiB/s",
                format_count(now / MIB),
                format_count(total / MIB),
                started.elapsed().as_secs_f64(),
                format_count(now.saturating_sub(previous) / MIB)
            );
            previous = now;
        }
    })
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_bytes_over_time() {
        assert_eq!(mib_per_second(200 * MIB, Duration::from_secs(2)), 100.0);
        assert_eq!(mib_per_second(MIB, Duration::ZERO), 0.0);
        let round = Round { bytes: 100 * 200 * MIB, elapsed: Duration::from_secs(10) };
        assert_eq!(round.mib_per_second(), 2_000.0);
    }

    #[test]
    fn cpu_is_per_gib_served() {
        assert_eq!(cpu_ms_per_gib(Some(1.0), Some(3.0), 4 * 1024 * MIB), Some(500.0));
        assert_eq!(cpu_ms_per_gib(None, Some(3.0), MIB), None);
        assert_eq!(cpu_ms_per_gib(Some(1.0), Some(3.0), 0), None);
    }

    #[test]
    fn sizes_read_in_mib() {
        assert_eq!(mib_label(200 * MIB), "200 MiB");
        assert_eq!(mib_label(300 * 1024), "0.29 MiB");
    }

    #[test]
    fn lengths_must_match_the_artifact() {
        assert!(check_length(Some(10), 10).is_ok());
        assert!(check_length(Some(9), 10).is_err_and(|error| error.contains("9 bytes")));
        assert!(check_length(None, 10).is_err());
    }

    #[test]
    fn deadline_grows_with_the_bytes() {
        assert_eq!(round_deadline(16 * MIB, 10), Duration::from_secs(68));
        assert_eq!(round_deadline(200 * MIB, 100), Duration::from_secs(1_060));
    }

    #[test]
    fn artifact_is_seeded_random_and_its_hash_is_the_files() {
        let dir = std::env::temp_dir().join(format!("herd-bench-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        let size = 3 * WRITE_PIECE as u64 + 5;
        let hash_a = write_artifact(&a, size, 7).expect("a");
        let hash_b = write_artifact(&b, size, 7).expect("b");
        let hash_c = write_artifact(&c, size, 8).expect("c");
        let bytes = std::fs::read(&a).expect("read");
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(hash_a, hex(&Sha256::digest(&bytes)));
        assert_eq!(hash_a, hash_b);
        assert_ne!(hash_a, hash_c);
        // Not a constant fill: pseudo-random bytes take all values.
        assert!(bytes[..4096].iter().collect::<std::collections::HashSet<_>>().len() > 200);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// The static server and the streaming client, end to end over loopback: every client gets
    /// the whole file, the hash checks out, and a wrong hash or size fails the round.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn static_route_serves_the_file_to_every_client() {
        let dir = std::env::temp_dir().join(format!("herd-bench-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("artifact");
        let size = 2 * static_serve::READ_CHUNK as u64 + 123;
        let sha256 = write_artifact(&file, size, 1).expect("artifact");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(static_serve::serve(listener, file.clone()));

        let download = Download { size, sha256: sha256.clone(), bearer: None, clients: 4 };
        let round = download.run(addr, static_serve::FILE_PATH, "test").await.expect("round");
        assert_eq!(round.bytes, 4 * size);
        let wrong_hash = Download { sha256: "00".repeat(32), ..download.clone() };
        assert!(wrong_hash.run(addr, static_serve::FILE_PATH, "test").await.is_err());
        let wrong_size = Download { size: size + 1, ..download.clone() };
        assert!(wrong_size.run(addr, static_serve::FILE_PATH, "test").await.is_err());
        let missing = download.run(addr, "/other", "test").await.expect_err("404");
        assert!(format!("{missing:#}").contains("404"), "{missing:#}");
        server.abort();
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
