//! Certificate issuance: herd's `POST /devices/{id}/certificates` with a server-generated RSA-2048
//! key and with a CSR, against the seed's own stack run as a peer in the same run (the Node script
//! under `bench/node-peer`). The peer is single-threaded, so herd's comparable figure is the
//! one-request-at-a-time rate (c=1, one server core); c=2 uses both cores of the benchmark
//! machine, and CSR signing is also driven at the load concurrency.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::json;

use crate::context::Bench;
use crate::http::{send_once, Method, Request, Response, StatusCode};
use crate::load::Workload;
use crate::node_peer;
use crate::phases::{observe, pick};
use crate::probe::is_missing_route;
use crate::report::{Aim, Figure, PhaseReport};

/// CSRs are made once, with this many distinct RSA-2048 keys, and reused round-robin.
const CSR_POOL: usize = 8;

/// Runs herd's certificate phase and the Node peer.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let n_devices = bench.settings.n_devices;
    let missing_fleet = bench.ensure_fleet(n_devices).await?;
    let device_ids: Arc<[Arc<str>]> = bench
        .fleet()
        .map(|fleet| fleet.devices().iter().map(|d| Arc::clone(&d.id)).collect())
        .unwrap_or_else(|| Arc::from(Vec::new()));

    let herd_missing = match (missing_fleet, device_ids.first()) {
        (Some(route), _) => Some(route),
        (None, None) => Some("a registered device".to_string()),
        (None, Some(device_id)) => {
            let request =
                Request::new(Method::POST, format!("/devices/{device_id}/certificates")).bearer(bench.admin_token());
            let response = send_once(bench.addr(), &request).await?;
            if is_missing_route(response.status) {
                Some("POST /devices/{id}/certificates".to_string())
            } else if response.status != StatusCode::CREATED {
                bail!("POST /devices/{{id}}/certificates answered {}: {}", response.status, response.excerpt());
            } else {
                None
            }
        }
    };

    let workspace = crate::cli::workspace_root();
    let peer_dir = node_peer::directory(&workspace);
    let peer_ready = tokio::task::spawn_blocking({
        let peer_dir = peer_dir.clone();
        move || node_peer::install(&peer_dir)
    })
    .await
    .context("npm install task")?;

    let mut herd_phase = match &herd_missing {
        Some(route) => PhaseReport::not_in_build("certificates", route.clone()),
        None => PhaseReport::new("certificates"),
    };
    let mut peer_phase = match &peer_ready {
        Ok(()) => PhaseReport::new("certificates (seed peer)"),
        Err(error) => PhaseReport::failed("certificates (seed peer)", error),
    };

    let csrs = if herd_missing.is_none() {
        Some(tokio::task::spawn_blocking(make_csrs).await.context("CSR task")??)
    } else {
        None
    };
    let next_device = Arc::new(AtomicU64::new(1));
    let issue = |csrs: Option<Arc<[Bytes]>>| {
        Arc::new(IssueCertificate {
            admin_token: bench.admin_token(),
            device_ids: Arc::clone(&device_ids),
            next_device: Arc::clone(&next_device),
            csrs,
        })
    };
    let generated = issue(None);
    let signed = issue(csrs);
    let concurrency = bench.settings.concurrency;

    let mut keygen_c1 = Figure::new("server-generated RSA-2048 key, c=1 (one core)", "certs/s");
    let mut keygen_c1_p50 = Figure::new("server-generated key p50 (c=1)", "ms").aim(Aim::Below(5.0));
    let mut keygen_c2 = Figure::new("server-generated RSA-2048 key, c=2", "certs/s");
    let mut csr_c1 = Figure::new("CSR signing, c=1 (one core)", "certs/s");
    let mut csr_c1_p50 = Figure::new("CSR signing p50 (c=1)", "ms");
    let mut csr_cn = Figure::new(format!("CSR signing, c={concurrency}"), "certs/s").aim(Aim::AtLeast(3_000.0));
    let mut ratio = Figure::new("herd / seed stack, per core", "x").aim(Aim::AtLeast(2.0));
    let mut peer_rate = Figure::new("Node crypto + node-forge, one core", "certs/s");
    let mut peer_p50 = Figure::new("Node crypto + node-forge p50", "ms");

    if herd_missing.is_none() {
        bench.measure(Arc::clone(&generated), &bench.warmup_plan("certificate warm-up", 1)).await?;
    }
    let runs = bench.settings.runs;
    for run in 1..=runs {
        let mut herd_per_core = None;
        if herd_missing.is_none() {
            let plan = bench.timed_plan(format!("issue c=1 run {run}/{runs}"), 1);
            let measured = bench.measure(Arc::clone(&generated), &plan).await?;
            observe(&mut herd_phase, &measured);
            herd_per_core = Some(measured.outcome.per_second());
            keygen_c1.push(measured.outcome.per_second());
            keygen_c1_p50.push(measured.outcome.latency_ms(0.5));
        }
        if peer_ready.is_ok() {
            let duration = bench.settings.run_duration;
            let peer_dir = peer_dir.clone();
            let peer = tokio::task::spawn_blocking(move || node_peer::run(&peer_dir, duration))
                .await
                .context("node peer task")??;
            if run == 1 {
                peer_phase.notes.push(format!(
                    "node {} with node-forge {}; {} certificates in {:.1} s in the first run",
                    peer.node, peer.forge, peer.count, peer.seconds
                ));
            }
            peer_rate.push(peer.per_second);
            if let Some(p50) = peer.p50ms {
                peer_p50.push(p50);
            }
            if let Some(herd) = herd_per_core.filter(|_| peer.per_second > 0.0) {
                ratio.push(herd / peer.per_second);
            }
        }
        if herd_missing.is_none() {
            let plan = bench.timed_plan(format!("issue c=2 run {run}/{runs}"), 2);
            let measured = bench.measure(Arc::clone(&generated), &plan).await?;
            observe(&mut herd_phase, &measured);
            keygen_c2.push(measured.outcome.per_second());

            let plan = bench.timed_plan(format!("CSR c=1 run {run}/{runs}"), 1);
            let measured = bench.measure(Arc::clone(&signed), &plan).await?;
            observe(&mut herd_phase, &measured);
            csr_c1.push(measured.outcome.per_second());
            csr_c1_p50.push(measured.outcome.latency_ms(0.5));

            let plan = bench.timed_plan(format!("CSR c={concurrency} run {run}/{runs}"), concurrency);
            let measured = bench.measure(Arc::clone(&signed), &plan).await?;
            observe(&mut herd_phase, &measured);
            csr_cn.push(measured.outcome.per_second());
        }
    }
    if herd_missing.is_none() {
        herd_phase.figures = vec![keygen_c1, keygen_c1_p50, keygen_c2, csr_c1, csr_c1_p50, csr_cn];
        if peer_ready.is_ok() {
            herd_phase.figures.push(ratio);
        }
        herd_phase.notes.push(format!(
            "each certificate for a different device where the fleet allows; CSRs from {CSR_POOL} RSA-2048 keys made with openssl"
        ));
    }
    if peer_ready.is_ok() {
        peer_phase.figures = vec![peer_rate, peer_p50];
    }
    Ok(vec![herd_phase, peer_phase])
}

/// `POST /devices/{id}/certificates` as the tenant admin, cycling through the fleet's devices.
struct IssueCertificate {
    admin_token: Arc<str>,
    device_ids: Arc<[Arc<str>]>,
    /// Shared across the generated-key and CSR workloads so consecutive certificates go to
    /// different devices even between runs.
    next_device: Arc<AtomicU64>,
    /// `None`: the server generates the key; otherwise CSRs to cycle through.
    csrs: Option<Arc<[Bytes]>>,
}

impl Workload for IssueCertificate {
    fn request(&self, job: u64) -> Request {
        let index = self.next_device.fetch_add(1, Ordering::Relaxed);
        let device = pick(&self.device_ids, index).map_or("missing", |id| id.as_ref());
        let request =
            Request::new(Method::POST, format!("/devices/{device}/certificates")).bearer(Arc::clone(&self.admin_token));
        match self.csrs.as_deref().and_then(|csrs| pick(csrs, job)) {
            Some(body) => request.json_bytes(body.clone()),
            None => request,
        }
    }

    fn accept(&self, _job: u64, response: &Response) -> Result<(), String> {
        if response.status == StatusCode::CREATED {
            Ok(())
        } else {
            Err(format!("expected 201, got {}: {}", response.status, response.excerpt()))
        }
    }
}

/// `{"csr": "<PEM>"}` bodies for [`CSR_POOL`] fresh RSA-2048 keys, made with the openssl CLI.
pub(crate) fn make_csrs() -> Result<Arc<[Bytes]>> {
    let directory = std::env::temp_dir();
    (0..CSR_POOL)
        .map(|index| {
            let key = directory.join(format!("herd-bench-csr-{}-{index}.key", std::process::id()));
            let csr = openssl_csr(&key, index);
            let _ = std::fs::remove_file(&key);
            let pem = csr?;
            Ok(Bytes::from(json!({ "csr": pem }).to_string()))
        })
        .collect()
}

fn openssl_csr(key_path: &Path, index: usize) -> Result<String> {
    let output = Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout"])
        .arg(key_path)
        .args(["-subj", &format!("/CN=herd-bench-{index}/O=BTManagement/C=IL")])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running openssl req (the openssl CLI makes the benchmark's CSRs)")?;
    if !output.status.success() {
        bail!("openssl req failed ({})", output.status);
    }
    let pem = String::from_utf8(output.stdout).context("openssl printed non-UTF-8")?;
    if !pem.contains("BEGIN CERTIFICATE REQUEST") {
        bail!("openssl req printed no CSR");
    }
    Ok(pem)
}
