//! Heartbeats against the HTTP ceiling, in the same run and the same load shape.
//!
//! The ceiling is `POST /bench/echo` (enabled by `HERD_BENCH_ECHO=true`): it parses and echoes a
//! small JSON body through herd's full middleware stack, so it is the most this machine's HTTP
//! path can do. The heartbeat is `POST /devices/connect` as device `job % N` over N distinct
//! devices, after a warm-up that has connected each of them once. Runs alternate echo /
//! heartbeat so drift in the machine hits both alike, and the ratio heartbeat/ceiling is computed
//! per run pair.
//!
//! On PostgreSQL (without `--quick` or `--no-peer`) the seed's own stack is measured too: each
//! run's herd heartbeat is followed by the same load (generator, concurrency, device count,
//! duration) against `bench/nest-peer`, the seed's `POST /devices/connect` in NestJS + Prisma on
//! the same PostgreSQL server (see `nest_peer`), and the ratio herd/peer is computed per run.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use crate::context::Bench;
use crate::http::{send_once, Method, Request, StatusCode};
use crate::load::{LoadPlan, Stop};
use crate::nest_peer::{self, NestPeer};
use crate::phases::{observe, DeviceRequests};
use crate::probe::is_missing_route;
use crate::report::{format_count, Aim, Figure, PhaseReport};

/// A heartbeat as a real device sends it; the echo gets the same bytes.
const HEARTBEAT_BODY: &str = r#"{"ipAddress":"10.0.0.1","appVersion":"1.2.3"}"#;

/// The peer's row in the results.
const PEER_PHASE: &str = "heartbeat (seed peer)";

/// Runs the ceiling and heartbeat phases, and the seed's stack as a peer where settings allow.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let n_devices = bench.settings.n_devices;
    let concurrency = bench.settings.concurrency;
    let addr = bench.addr();
    let body = Bytes::from_static(HEARTBEAT_BODY.as_bytes());

    let missing_fleet = bench.ensure_fleet(n_devices).await?;
    let heartbeat_tokens = bench.fleet().map(|fleet| fleet.tokens(n_devices));

    // The echo carries a bearer header of the same length, so both request shapes match byte
    // for byte; the echo route ignores it.
    let echo_tokens: Arc<[Arc<str>]> = match &heartbeat_tokens {
        Some(tokens) if !tokens.is_empty() => Arc::clone(tokens),
        _ => Arc::from(vec![Arc::<str>::from("herd_dt_".to_string() + &"x".repeat(40))]),
    };
    let echo = Arc::new(DeviceRequests { path: "/bench/echo", tokens: echo_tokens, body: body.clone() });
    let echo_available = probe_echo(bench, &body).await?;

    let heartbeat = match (&missing_fleet, heartbeat_tokens) {
        (None, Some(tokens)) if !tokens.is_empty() => {
            let probe =
                Request::new(Method::POST, "/devices/connect").bearer(Arc::clone(&tokens[0])).json_bytes(body.clone());
            let response = send_once(addr, &probe).await?;
            if is_missing_route(response.status) {
                None
            } else if response.status != StatusCode::OK {
                bail!("POST /devices/connect answered {}: {}", response.status, response.excerpt());
            } else {
                Some(Arc::new(DeviceRequests { path: "/devices/connect", tokens, body }))
            }
        }
        _ => None,
    };

    let mut ceiling_phase = if echo_available {
        PhaseReport::new("ceiling")
    } else {
        PhaseReport::not_in_build("ceiling", "POST /bench/echo (enabled by HERD_BENCH_ECHO=true)")
    };
    let mut heartbeat_phase = if heartbeat.is_some() {
        PhaseReport::new("heartbeat")
    } else {
        PhaseReport::not_in_build("heartbeat", missing_fleet.unwrap_or_else(|| "POST /devices/connect".to_string()))
    };

    let label = |what: &str| format!("{what} (c={concurrency})");
    let mut echo_rate = Figure::new(label("echo throughput"), "req/s");
    let mut echo_p50 = Figure::new("echo p50", "ms");
    let mut echo_p99 = Figure::new("echo p99", "ms");
    let mut beat_rate =
        Figure::new(format!("connect throughput (c={concurrency}, {} devices)", format_count(n_devices)), "req/s");
    let mut beat_p50 = Figure::new("connect p50", "ms");
    let mut beat_p99 = Figure::new("connect p99", "ms").aim(Aim::Below(20.0));
    let mut ratio = Figure::new("heartbeat / ceiling", "x").aim(Aim::AtLeast(0.5));

    // The peer is built, seeded and warmed up first, so that herd's warm-up stays right before
    // herd's measured runs, as without the peer.
    let mut peer_phase = None;
    let mut peer = None;
    if bench.settings.heartbeat_peer && heartbeat.is_some() {
        match start_peer(bench, concurrency).await {
            Ok((started, description)) => {
                let mut phase = PhaseReport::new(PEER_PHASE);
                phase.notes.push(description);
                peer_phase = Some(phase);
                peer = Some(started);
            }
            Err(error) => peer_phase = Some(PhaseReport::failed(PEER_PHASE, &error)),
        }
    }
    let peer_heartbeats = peer.as_ref().map(NestPeer::heartbeats);
    let mut peer_rate =
        Figure::new(format!("seed stack connect (c={concurrency}, {} devices)", format_count(n_devices)), "req/s");
    let mut peer_p50 = Figure::new("seed stack connect p50", "ms");
    let mut peer_p99 = Figure::new("seed stack connect p99", "ms");
    let mut herd_over_peer = Figure::new("herd / seed stack", "x");

    if echo_available {
        bench.measure(Arc::clone(&echo), &bench.warmup_plan("echo warm-up", concurrency)).await?;
    }
    if let Some(heartbeat) = &heartbeat {
        // The warm-up connects every device once, so the measured runs see the steady state of a
        // fleet that is online (a device's first connect is a status change with an event; later
        // ones only advance lastSeen).
        let n_heartbeat_devices = heartbeat.tokens.len() as u64;
        let plan = LoadPlan {
            label: "heartbeat warm-up: every device once".to_string(),
            concurrency,
            stop: Stop::Jobs(n_heartbeat_devices),
        };
        bench.measure(Arc::clone(heartbeat), &plan).await?;
    }
    let runs = bench.settings.runs;
    for run in 1..=runs {
        let mut echo_per_second = None;
        if echo_available {
            let plan = bench.timed_plan(format!("echo run {run}/{runs}"), concurrency);
            let measured = bench.measure(Arc::clone(&echo), &plan).await?;
            observe(&mut ceiling_phase, &measured);
            let outcome = &measured.outcome;
            echo_per_second = Some(outcome.per_second());
            echo_rate.push(outcome.per_second());
            echo_p50.push(outcome.latency_ms(0.5));
            echo_p99.push(outcome.latency_ms(0.99));
        }
        if let Some(heartbeat) = &heartbeat {
            let plan = bench.timed_plan(format!("heartbeat run {run}/{runs}"), concurrency);
            let measured = bench.measure(Arc::clone(heartbeat), &plan).await?;
            observe(&mut heartbeat_phase, &measured);
            let outcome = &measured.outcome;
            beat_rate.push(outcome.per_second());
            beat_p50.push(outcome.latency_ms(0.5));
            beat_p99.push(outcome.latency_ms(0.99));
            if let Some(ceiling) = echo_per_second.filter(|rate| *rate > 0.0) {
                ratio.push(outcome.per_second() / ceiling);
            }
            let herd_per_second = outcome.per_second();
            if let (Some(running), Some(workload), Some(phase)) = (&mut peer, &peer_heartbeats, &mut peer_phase) {
                let plan = bench.timed_plan(format!("seed peer heartbeat run {run}/{runs}"), concurrency);
                let measured = match running.check_running() {
                    Ok(()) => running.measure(Arc::clone(workload), &plan).await,
                    Err(error) => Err(error),
                };
                match measured {
                    Ok(measured) => {
                        observe(phase, &measured);
                        let outcome = &measured.outcome;
                        peer_rate.push(outcome.per_second());
                        peer_p50.push(outcome.latency_ms(0.5));
                        peer_p99.push(outcome.latency_ms(0.99));
                        if outcome.per_second() > 0.0 {
                            herd_over_peer.push(herd_per_second / outcome.per_second());
                        }
                    }
                    Err(error) => {
                        // herd's figures stand; the peer's row says what went wrong.
                        eprintln!("the heartbeat peer failed: {error:#}");
                        *phase = PhaseReport::failed(PEER_PHASE, &error);
                        peer = None;
                    }
                }
            }
        }
    }
    // Stops the peer's processes and drops its database before the report is assembled.
    drop(peer);
    if echo_available {
        ceiling_phase.figures = vec![echo_rate, echo_p50, echo_p99];
        ceiling_phase.notes.push(format!(
            "POST /bench/echo: parse and echo the heartbeat's {}-byte JSON body; no auth, no database",
            HEARTBEAT_BODY.len()
        ));
    }
    if heartbeat.is_some() {
        heartbeat_phase.figures = vec![beat_rate, beat_p50, beat_p99];
        if echo_available {
            heartbeat_phase.figures.push(ratio);
        }
        if !herd_over_peer.runs.is_empty() {
            heartbeat_phase.figures.push(herd_over_peer);
        }
    }
    let mut phases = vec![ceiling_phase, heartbeat_phase];
    if let Some(mut phase) = peer_phase {
        if !phase.failed {
            phase.figures = vec![peer_rate, peer_p50, peer_p99];
        }
        phases.push(phase);
    }
    Ok(phases)
}

/// Installs, builds and starts the seed's stack on a fresh database of the same PostgreSQL
/// server, then connects each of its devices once (the warm-up herd's fleet had). Returns the
/// peer and a note saying what ran.
async fn start_peer(bench: &Bench, concurrency: usize) -> Result<(NestPeer, String)> {
    let admin_url = bench.settings.database_url.clone().context("the heartbeat peer needs --database-url")?;
    let directory = nest_peer::directory(&crate::cli::workspace_root());
    tokio::task::spawn_blocking({
        let directory = directory.clone();
        move || nest_peer::prepare(&directory)
    })
    .await
    .context("heartbeat peer build task")??;
    let n_devices = bench.settings.n_devices;
    let peer = NestPeer::start(&directory, &admin_url, n_devices).await?;
    let plan = LoadPlan {
        label: "seed peer warm-up: every device once".to_string(),
        concurrency,
        stop: Stop::Jobs(n_devices),
    };
    let warm_up = peer.measure(peer.heartbeats(), &plan).await?;
    if warm_up.outcome.failed > 0 {
        bail!(
            "the heartbeat peer failed {} of {n_devices} warm-up heartbeats: {}",
            warm_up.outcome.failed,
            warm_up.outcome.first_error.unwrap_or_default()
        );
    }
    Ok((peer, nest_peer::describe(&directory)))
}

/// Whether `POST /bench/echo` exists and really echoes.
async fn probe_echo(bench: &Bench, body: &Bytes) -> Result<bool> {
    let request = Request::new(Method::POST, "/bench/echo").json_bytes(body.clone());
    let response = send_once(bench.addr(), &request).await?;
    if is_missing_route(response.status) {
        return Ok(false);
    }
    let sent: serde_json::Value = serde_json::from_slice(body)?;
    if response.status != StatusCode::OK || response.json().ok() != Some(sent) {
        bail!("POST /bench/echo should answer 200 with the same JSON, got {}: {}", response.status, response.excerpt());
    }
    Ok(true)
}
