//! Command-line flags and the settings they resolve to.
//!
//! `--quick` only changes defaults; a flag given explicitly always wins. This module performs no
//! I/O beyond locating the workspace for default paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Flags of `herd-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "herd-bench",
    version,
    about = "Fleet simulator and benchmark harness for herd: starts a release herd server on a fresh \
             data directory, provisions simulated devices through the real API and drives HTTP load \
             from this process."
)]
pub struct Args {
    /// A check, or the download phase's static server, to run instead of the benchmark.
    #[command(subcommand)]
    pub command: Option<Check>,

    /// Small fleet, short phases, one run: proves the harness works in under two minutes.
    #[arg(long)]
    pub quick: bool,

    /// Use PostgreSQL: an admin URL (e.g. postgres://postgres@127.0.0.1:5432/postgres). A fresh
    /// database `herd_bench_<random>` is created through it and dropped at the end.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Distinct devices the heartbeat and metrics phases spread their load over, and devices
    /// parked in a long poll by the commands phase [default: 10000, quick: 2000].
    #[arg(long, value_name = "N")]
    pub devices: Option<u64>,

    /// Concurrent keep-alive connections of each load phase.
    #[arg(long, default_value_t = 64, value_name = "C")]
    pub concurrency: usize,

    /// Seconds per measured load run [default: 10, quick: 4].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Repetitions of each measurement; rows show their median and min–max [default: 3, quick: 1].
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,

    /// Phases to run, comma separated [default: all].
    #[arg(long, value_delimiter = ',', value_name = "PHASES")]
    pub phases: Option<Vec<Phase>>,

    /// Devices in the tenant whose stats overview is measured [default: 100000; quick: --devices].
    #[arg(long, value_name = "N")]
    pub overview_devices: Option<u64>,

    /// Samples per request of the metrics phase's batched rows (1–1000, the API's limit)
    /// [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub metrics_batch: Option<u16>,

    /// Metric samples stored before the overview is measured [default: 10000000; quick: 50000].
    #[arg(long, value_name = "N")]
    pub overview_samples: Option<u64>,

    /// Size of the download phase's artifact in MiB [default: 200; quick: 16].
    #[arg(long, value_name = "MIB")]
    pub download_mib: Option<u64>,

    /// Clients downloading the artifact at once in the download phase [default: 100; quick: 10].
    #[arg(long, value_name = "N")]
    pub download_clients: Option<usize>,

    /// Fleet sizes of the presence sweep, comma separated
    /// [default: 100000,1000000; quick: the --devices count].
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    pub sweep_sizes: Option<Vec<u64>>,

    /// Where to write the machine-readable results
    /// [default: bench/results/latest.json, quick: bench/results/quick.json].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,

    /// A herd binary to run instead of building one with `cargo build --release --bin herd`.
    #[arg(long, value_name = "PATH")]
    pub herd_bin: Option<PathBuf>,

    /// The commit to record with the results, when the herd binary was built elsewhere
    /// [default: `git rev-parse --short HEAD` of this workspace, `-dirty` if tracked files changed].
    #[arg(long, value_name = "REV")]
    pub commit: Option<String>,

    /// Keep the server's data directory (and its log) instead of deleting it at the end.
    #[arg(long)]
    pub keep_data: bool,

    /// Skip the seed's stack as a heartbeat peer (`bench/nest-peer`, NestJS + Prisma), which
    /// otherwise runs in the heartbeat phase on PostgreSQL without --quick and needs Node.js and npm.
    #[arg(long)]
    pub no_peer: bool,
}

/// What runs instead of the benchmark: the crash check, and the download phase's static server.
#[derive(Debug, Subcommand)]
pub enum Check {
    /// Crash durability: load, `kill -9` in the middle, restart, and every acknowledged write is
    /// there (SQLite; PostgreSQL too with --database-url). Exits non-zero on any lost write.
    Crash(CrashArgs),
    /// The download phase's ceiling: serves one file on `GET /file` (plain hyper, no auth, no
    /// database), prints `listening on <addr>` and serves until killed. The phase starts it itself.
    StaticServe(StaticServeArgs),
}

/// Flags of `herd-bench static-serve`.
#[derive(Debug, ClapArgs)]
pub struct StaticServeArgs {
    /// The file to serve.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,

    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub addr: std::net::SocketAddr,
}

/// Flags of `herd-bench crash`.
#[derive(Debug, ClapArgs)]
pub struct CrashArgs {
    /// A herd binary to run instead of building one with `cargo build --release --bin herd`.
    #[arg(long, value_name = "PATH")]
    pub herd_bin: Option<PathBuf>,

    /// Also check PostgreSQL: an admin URL through which a fresh database `herd_crash_<pid>` is
    /// created (and dropped at the end). An unreachable server is an error, never a skip.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Kill rounds per engine.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,

    /// Concurrent workers of the load.
    #[arg(long, default_value_t = 8, value_name = "C")]
    pub concurrency: usize,

    /// Keep the data directories (with the server logs) instead of deleting them.
    #[arg(long)]
    pub keep_data: bool,
}

impl CrashArgs {
    /// The settings of the crash check.
    pub fn settings(self) -> crate::crash::CrashSettings {
        crate::crash::CrashSettings {
            herd_bin: self.herd_bin,
            database_url: self.database_url,
            rounds: self.rounds,
            concurrency: self.concurrency,
            keep_data: self.keep_data,
        }
    }
}

/// One measured area of the server. The harness always runs them in the order listed here, whatever
/// the order on the command line: commands and the rollout come right after heartbeats, while the
/// tenant holds exactly the `--devices` fleet (so they can target the whole tenant); downloads come
/// after the overview, so the memory they may leave behind does not count in the overview's RSS;
/// the presence sweep comes last because it grows the fleet to a million devices and takes them
/// all offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// `POST /bench/echo` (the HTTP ceiling) and `POST /devices/connect`, interleaved.
    Heartbeat,
    /// `POST /commands` to every device of a fleet parked in `GET /devices/self/commands?wait=`.
    Commands,
    /// A staged rollout (`POST /rollouts`, waves 1/10/50/100 %) taken by a parked fleet.
    Rollout,
    /// `POST /devices/auto-register` with fresh identifiers.
    Registration,
    /// `POST /devices/metrics`, one sample and batches.
    Metrics,
    /// `POST /devices/{id}/certificates` and the Node.js peer.
    Certificates,
    /// `GET /devices/stats/overview` on a large tenant.
    Overview,
    /// `GET /ui/devices` (the console's device list) on the same tenant, signed in with a cookie.
    Console,
    /// `GET /packages/{id}/download` of one large artifact by many clients at once, against a
    /// static route serving the same bytes.
    Download,
    /// `POST /admin/presence/sweep` over 100k and 1M stale devices.
    Sweep,
}

impl Phase {
    /// Every phase, in execution order.
    pub const ALL: [Phase; 10] = [
        Phase::Heartbeat,
        Phase::Commands,
        Phase::Rollout,
        Phase::Registration,
        Phase::Metrics,
        Phase::Certificates,
        Phase::Overview,
        Phase::Console,
        Phase::Download,
        Phase::Sweep,
    ];
}

/// Everything a run needs to know, with `--quick` defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `--quick` was given (recorded in the results).
    pub quick: bool,
    /// PostgreSQL admin URL, or `None` for SQLite.
    pub database_url: Option<String>,
    /// Distinct devices of the heartbeat and metrics phases.
    pub n_devices: u64,
    /// Connections of each load phase.
    pub concurrency: usize,
    /// Length of one measured run.
    pub run_duration: Duration,
    /// Length of the unmeasured warm-up before a phase's first run.
    pub warmup: Duration,
    /// Repetitions of each measurement.
    pub runs: usize,
    /// Phases to run, sorted and without duplicates.
    pub phases: Vec<Phase>,
    /// Results file.
    pub out: PathBuf,
    /// herd binary to run; `None` builds it.
    pub herd_bin: Option<PathBuf>,
    /// Commit to record instead of the workspace's.
    pub commit: Option<String>,
    /// Keep the data directory afterwards.
    pub keep_data: bool,
    /// Whether the heartbeat phase measures the seed's stack too: on PostgreSQL, without
    /// `--quick` (CI runs quick and must not need npm) and without `--no-peer`.
    pub heartbeat_peer: bool,
    /// Devices in the tenant whose stats overview is measured.
    pub overview_devices: u64,
    /// Metric samples stored before the stats overview is measured.
    pub overview_samples: u64,
    /// Fleet sizes of the presence sweep.
    pub sweep_sizes: Vec<u64>,
    /// Samples per request in the batched metrics figure.
    pub metrics_batch: usize,
    /// Bytes of the download phase's artifact.
    pub download_bytes: u64,
    /// Clients downloading it at once.
    pub download_clients: usize,
    /// The `herd-bench` binary that runs `static-serve` for the download phase; `None`: this
    /// executable (tests, whose executable is not herd-bench, name it).
    pub static_server: Option<PathBuf>,
}

impl Settings {
    /// Applies defaults (full or quick) and checks the flags for consistency.
    pub fn from_args(args: Args) -> Result<Settings> {
        let quick = args.quick;
        let n_devices = args.devices.unwrap_or(if quick { 2_000 } else { 10_000 });
        let seconds = args.duration.unwrap_or(if quick { 4.0 } else { 10.0 });
        let runs = args.runs.unwrap_or(if quick { 1 } else { 3 });
        if n_devices == 0 {
            bail!("--devices must be at least 1");
        }
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let download_mib = args.download_mib.unwrap_or(if quick { 16 } else { 200 });
        let download_clients = args.download_clients.unwrap_or(if quick { 10 } else { 100 });
        if download_mib == 0 || download_clients == 0 {
            bail!("--download-mib and --download-clients must be at least 1");
        }
        if args.sweep_sizes.as_ref().is_some_and(|sizes| sizes.contains(&0)) {
            bail!("--sweep-sizes must be positive");
        }
        let mut phases = args.phases.unwrap_or_else(|| Phase::ALL.to_vec());
        phases.sort();
        phases.dedup();

        let results = workspace_root().join("bench").join("results");
        let out = args.out.unwrap_or_else(|| results.join(if quick { "quick.json" } else { "latest.json" }));
        let heartbeat_peer = !args.no_peer && !quick && args.database_url.is_some();
        Ok(Settings {
            quick,
            database_url: args.database_url,
            n_devices,
            concurrency: args.concurrency,
            run_duration: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64((seconds / 5.0).clamp(0.5, 2.0)),
            runs,
            phases,
            out,
            herd_bin: args.herd_bin,
            commit: args.commit,
            keep_data: args.keep_data,
            heartbeat_peer,
            // Quick mode measures the overview and the sweep on the fleet it already has, so the
            // harness is exercised end to end without the minutes that 100k devices take.
            overview_devices: args.overview_devices.unwrap_or(if quick { n_devices } else { 100_000.max(n_devices) }),
            overview_samples: args.overview_samples.unwrap_or(if quick { 50_000 } else { 10_000_000 }),
            sweep_sizes: args.sweep_sizes.unwrap_or_else(|| {
                if quick {
                    vec![n_devices]
                } else {
                    vec![100_000, 1_000_000]
                }
            }),
            metrics_batch: args.metrics_batch.map_or(100, usize::from),
            download_bytes: download_mib.saturating_mul(1024 * 1024),
            download_clients,
            static_server: None,
        })
    }

    /// Whether `phase` was asked for.
    pub fn runs_phase(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// The cargo workspace that holds this crate (its parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Settings {
        let mut argv = vec!["herd-bench"];
        argv.extend_from_slice(flags);
        Settings::from_args(Args::parse_from(argv)).expect("valid flags")
    }

    #[test]
    fn quick_changes_defaults_but_explicit_flags_win() {
        let quick = parse(&["--quick"]);
        assert_eq!(quick.n_devices, 2_000);
        assert_eq!(quick.runs, 1);
        assert!(quick.out.ends_with("bench/results/quick.json"));
        assert_eq!(quick.sweep_sizes, vec![2_000]);

        let explicit = parse(&["--quick", "--devices", "500", "--runs", "2"]);
        assert_eq!(explicit.n_devices, 500);
        assert_eq!(explicit.runs, 2);

        let full = parse(&[]);
        assert_eq!(full.n_devices, 10_000);
        assert_eq!(full.runs, 3);
        assert_eq!(full.sweep_sizes, vec![100_000, 1_000_000]);
        assert_eq!(full.overview_samples, 10_000_000);
        assert_eq!((full.download_bytes, full.download_clients), (200 * 1024 * 1024, 100));
        assert_eq!((quick.download_bytes, quick.download_clients), (16 * 1024 * 1024, 10));
        let small = parse(&["--download-mib", "1", "--download-clients", "3"]);
        assert_eq!((small.download_bytes, small.download_clients), (1024 * 1024, 3));
    }

    #[test]
    fn the_heartbeat_peer_runs_only_on_postgresql_without_quick() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        assert!(parse(&["--database-url", url]).heartbeat_peer);
        assert!(!parse(&["--database-url", url, "--quick"]).heartbeat_peer);
        assert!(!parse(&["--database-url", url, "--no-peer"]).heartbeat_peer);
        assert!(!parse(&[]).heartbeat_peer);
    }

    #[test]
    fn phases_run_in_fixed_order() {
        let settings = parse(&["--phases", "sweep,heartbeat,sweep"]);
        assert_eq!(settings.phases, vec![Phase::Heartbeat, Phase::Sweep]);
        let settings = parse(&["--phases", "sweep,download,overview"]);
        assert_eq!(settings.phases, vec![Phase::Overview, Phase::Download, Phase::Sweep]);
        let settings = parse(&["--phases", "registration,commands,heartbeat"]);
        assert_eq!(settings.phases, vec![Phase::Heartbeat, Phase::Commands, Phase::Registration]);
        assert!(parse(&[]).runs_phase(Phase::Commands));
        assert!(!settings.runs_phase(Phase::Metrics));
    }

    #[test]
    fn crash_is_a_subcommand_with_its_own_flags() {
        let args = Args::parse_from(["herd-bench", "crash", "--herd-bin", "h", "--rounds", "2"]);
        let Some(Check::Crash(crash)) = args.command else { panic!("crash subcommand not parsed") };
        let settings = crash.settings();
        assert_eq!(settings.rounds, 2);
        assert_eq!(settings.concurrency, 8);
        assert!(settings.database_url.is_none());
        assert!(Args::parse_from(["herd-bench", "--quick"]).command.is_none());
        let args = Args::parse_from(["herd-bench", "static-serve", "--file", "f"]);
        let Some(Check::StaticServe(serve)) = args.command else { panic!("static-serve not parsed") };
        assert_eq!(serve.file, PathBuf::from("f"));
        assert_eq!(serve.addr.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn rejects_nonsense() {
        let args = Args::parse_from(["herd-bench", "--duration", "0"]);
        assert!(Settings::from_args(args).is_err());
        let args = Args::parse_from(["herd-bench", "--download-clients", "0"]);
        assert!(Settings::from_args(args).is_err());
    }
}
