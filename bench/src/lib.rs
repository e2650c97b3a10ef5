//! herd-bench: the fleet simulator and benchmark harness of herd.
//!
//! [`run`] builds (or takes) a release herd binary, starts it on a fresh data directory (SQLite,
//! or a fresh PostgreSQL database), provisions simulated devices through the real API and drives
//! HTTP load from this process over loopback, phase by phase; then prints a table and writes the
//! JSON results. It never asserts timings: aims are reported, and a phase whose endpoint the
//! server lacks is `n/a (not in this build)`.
//!
//! `crash` is the crash-durability check (`herd-bench crash`), which shares the server, client and
//! database guards.
//!
//! Code map: `cli` (flags), `server` (the process under test), `postgres` (fresh database),
//! `http` + `load` (client and load generator), `fleet` (registered devices), `context` (what
//! phases share), `phases::*` (one module per measured area), `node_peer` and `nest_peer` (the
//! seed's stack as peers: certificates, heartbeats), `report` (figures, table, JSON), `machine`
//! (where it ran), `static_serve` (the download phase's ceiling, `herd-bench static-serve`, and
//! its streaming client).

#![forbid(unsafe_code)]

pub mod cli;
pub mod context;
pub mod crash;
pub mod fleet;
pub mod http;
pub mod load;
pub mod machine;
pub mod nest_peer;
pub mod node_peer;
pub mod phases;
pub mod postgres;
pub mod probe;
pub mod progress;
pub mod report;
pub mod server;
pub mod static_serve;

use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::cli::{Phase, Settings};
use crate::context::Bench;
use crate::machine::MachineInfo;
use crate::postgres::FreshDatabase;
use crate::report::{PhaseReport, Report, ReportSettings};
use crate::server::{HerdServer, ServerOptions};

/// [`run`], abandoned on Ctrl-C or SIGTERM. Abandoning drops the server guard (SIGTERM to herd)
/// and the database guard (DROP DATABASE), so an interrupted benchmark leaves nothing behind.
pub async fn run_until_interrupted(settings: Settings) -> Result<Report> {
    tokio::select! {
        result = run(settings) => result,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}; the server was stopped")),
    }
}

/// [`crash::run`], abandoned on Ctrl-C or SIGTERM (the guards stop herd and drop the database).
pub async fn crash_until_interrupted(settings: crash::CrashSettings) -> Result<Vec<crash::EngineOutcome>> {
    tokio::select! {
        result = crash::run(settings) => result,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}; the server was stopped")),
    }
}

async fn interrupted() -> &'static str {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// Runs the whole benchmark and writes the results file.
pub async fn run(settings: Settings) -> Result<Report> {
    let started = Instant::now();
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let workspace = cli::workspace_root();
    let machine = MachineInfo::collect();
    let commit = settings.commit.clone().unwrap_or_else(|| machine::commit(&workspace));

    let binary = match &settings.herd_bin {
        Some(path) => std::fs::canonicalize(path).with_context(|| format!("--herd-bin {}", path.display()))?,
        None => {
            let workspace = workspace.clone();
            tokio::task::spawn_blocking(move || server::build_release_herd(&workspace))
                .await
                .context("cargo build task")??
        }
    };
    let herd_version = server::herd_version(&binary);

    // Declared before the server so it is dropped after it: the database outlives its user.
    let database = match &settings.database_url {
        Some(admin_url) => Some(FreshDatabase::create(admin_url)?),
        None => None,
    };
    let options = ServerOptions {
        binary,
        database_url: database.as_ref().map(|database| database.url().to_string()),
        presence_threshold: phases::sweep::PRESENCE_THRESHOLD,
        // The commands and rollout phases park one long poll per device, each on a connection of its own.
        max_connections: usize::try_from(settings.n_devices)
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(phases::commands::SPARE_SERVER_CONNECTIONS)
            .max(server::DEFAULT_MAX_CONNECTIONS),
    };
    if settings.runs_phase(Phase::Commands) || settings.runs_phase(Phase::Rollout) {
        // Before herd starts, so that it inherits a hard limit raised for the parked devices; a
        // limit that cannot be raised far enough fails the commands phase, with this message.
        if let Err(error) = phases::commands::raise_open_file_limit(settings.n_devices) {
            eprintln!("herd-bench: {error:#}");
        }
    }
    let server = HerdServer::start(&options, settings.keep_data).await?;
    eprintln!(
        "{herd_version} listening on {} (pid {}, data in {})",
        server.addr(),
        server.pid(),
        server.data_dir().display()
    );

    let mut report = Report {
        schema: 1,
        date,
        commit,
        machine,
        herd_version,
        database: if settings.database_url.is_some() { "postgresql".to_string() } else { "sqlite".to_string() },
        mode: if settings.quick { "quick" } else { "full" }.to_string(),
        settings: ReportSettings {
            devices: settings.n_devices,
            concurrency: settings.concurrency,
            run_seconds: settings.run_duration.as_secs_f64(),
            runs: settings.runs,
        },
        complete: false,
        phases: Vec::new(),
        server_peak_rss_mib: None,
        wall_seconds: 0.0,
    };
    let mut bench = Bench::new(settings.clone(), server);
    for phase in settings.phases.iter().copied() {
        eprintln!("== phase {phase:?}");
        let result = match phase {
            Phase::Heartbeat => phases::heartbeat::run(&mut bench).await,
            Phase::Commands => phases::commands::run(&mut bench).await,
            Phase::Rollout => phases::rollout::run(&mut bench).await,
            Phase::Registration => phases::registration::run(&mut bench).await,
            Phase::Metrics => phases::metrics::run(&mut bench).await,
            Phase::Certificates => phases::certificates::run(&mut bench).await,
            Phase::Overview => phases::overview::run(&mut bench).await,
            Phase::Console => phases::console::run(&mut bench).await,
            Phase::Download => phases::download::run(&mut bench).await,
            Phase::Sweep => phases::sweep::run(&mut bench).await,
        };
        match result {
            Ok(reports) => report.phases.extend(reports),
            Err(error) => {
                eprintln!("phase {phase:?} failed: {error:#}");
                eprintln!("server log ends:\n{}", bench.server.log_tail());
                report.phases.push(PhaseReport::failed(format!("{phase:?}").to_lowercase(), &error));
            }
        }
        // Written after every phase (`"complete": false`), so a long run that is interrupted
        // still leaves the phases it finished.
        report.server_peak_rss_mib = bench.server.peak_rss_mib();
        report.wall_seconds = started.elapsed().as_secs_f64();
        report.write_json(&settings.out)?;
    }
    report.server_peak_rss_mib = bench.server.peak_rss_mib();
    bench.server.stop()?;
    drop(database);

    report.complete = true;
    report.wall_seconds = started.elapsed().as_secs_f64();
    println!("{}", report.table());
    report.write_json(&settings.out)?;
    eprintln!("results written to {} ({:.0} s in all)", settings.out.display(), report.wall_seconds);
    Ok(report)
}
