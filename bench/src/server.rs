//! The herd server under test: building the release binary, starting it on a fresh data directory
//! and a free loopback port, waiting for `/readyz`, sampling its RSS, and stopping it.
//!
//! [`HerdServer`] is a guard: dropping it (normal end, error, Ctrl-C, panic unwinding) sends
//! SIGTERM, waits for a graceful exit and kills the process only if it does not go. A benchmark
//! must never leave a server running.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::distributions::{Alphanumeric, DistString};
use tokio::task::JoinHandle;

use crate::http::{send_once, Method, Request, StatusCode};
use crate::machine::proc_field;

/// Builds `target/release/herd` with cargo and returns the path cargo reports for it.
pub fn build_release_herd(workspace: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building herd: cargo build --release --bin herd");
    let output = Command::new(cargo)
        .args(["build", "--release", "--bin", "herd", "--message-format=json-render-diagnostics"])
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build --release --bin herd")?;
    if !output.status.success() {
        bail!("cargo build --release --bin herd failed ({})", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == "herd")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no `herd` executable"))
}

/// `herd --version`, or `herd (unknown version)`.
pub fn herd_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "herd (unknown version)".to_string())
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The herd binary.
    pub binary: PathBuf,
    /// `HERD_DATABASE_URL`, or `None` for the default SQLite file in the data directory.
    pub database_url: Option<String>,
    /// Online devices not seen for this long are stale (`HERD_PRESENCE_THRESHOLD`). Short, so the
    /// sweep phase does not wait five minutes; the periodic sweep is pushed out of the way.
    pub presence_threshold: Duration,
    /// Connections herd serves at once (`HERD_MAX_CONNECTIONS`); herd itself caps it by its
    /// open-file limit.
    pub max_connections: usize,
}

/// How often herd's rollout job runs (`HERD_ROLLOUT_INTERVAL`; herd's default is 5 s), so that
/// the rollout phase's waves start promptly once soaked.
pub const ROLLOUT_INTERVAL: Duration = Duration::from_millis(200);

/// herd's own default of `HERD_MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;

/// A running herd server; stopped when dropped.
pub struct HerdServer {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    bootstrap_token: Arc<str>,
    /// Whether the data directory was made by this guard (and is removed by it unless kept).
    owns_data: bool,
    keep_data: bool,
    /// Set once the process is gone and the data directory handled, so drop after `stop` is a no-op.
    stopped: bool,
}

impl HerdServer {
    /// Starts `herd serve` on a fresh data directory and waits until `/readyz` answers 200.
    pub async fn start(options: &ServerOptions, keep_data: bool) -> Result<HerdServer> {
        let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 10);
        let data_dir = std::env::temp_dir().join(format!("herd-bench-{suffix}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let bootstrap_token: Arc<str> = Alphanumeric.sample_string(&mut rand::thread_rng(), 48).into();
        let mut server = match HerdServer::start_in(options, &data_dir, bootstrap_token).await {
            Ok(server) => server,
            Err(error) => {
                if !keep_data {
                    let _ = std::fs::remove_dir_all(&data_dir);
                }
                return Err(error);
            }
        };
        server.owns_data = true;
        server.keep_data = keep_data;
        Ok(server)
    }

    /// Starts `herd serve` on an existing data directory (which the caller owns: it is never
    /// removed by this guard) with the given bootstrap token, on a free loopback port, and waits
    /// until `/readyz` answers 200. The crash check restarts herd this way after killing it.
    pub async fn start_in(options: &ServerOptions, data_dir: &Path, bootstrap_token: Arc<str>) -> Result<HerdServer> {
        let data_dir = data_dir.to_path_buf();
        let log_path = data_dir.join("server.log");
        // Appended to, so the log of a killed server survives its restart.
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening server log {}", log_path.display()))?;
        let log_for_stderr = log.try_clone().context("duplicating the server log handle")?;
        let addr = free_loopback_port()?;

        let mut command = Command::new(&options.binary);
        command
            .arg("serve")
            .env("HERD_DATA_DIR", &data_dir)
            .env("HERD_LISTEN", addr.to_string())
            .env("HERD_BOOTSTRAP_TOKEN", bootstrap_token.as_ref())
            .env("HERD_BENCH_ECHO", "true")
            .env("HERD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env("HERD_PRESENCE_THRESHOLD", format!("{}s", options.presence_threshold.as_secs().max(1)))
            .env("HERD_PRESENCE_SWEEP_INTERVAL", "24h")
            // A sweep of a million devices is one long request; measure it instead of cutting
            // it off at the default 30 s.
            .env("HERD_REQUEST_TIMEOUT", "300s")
            .env("HERD_MAX_CONNECTIONS", options.max_connections.to_string())
            .env("HERD_ROLLOUT_INTERVAL", format!("{}ms", ROLLOUT_INTERVAL.as_millis()))
            // herd reads ./herd.toml when present; run it where there is none.
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        match &options.database_url {
            Some(url) => command.env("HERD_DATABASE_URL", url),
            None => command.env_remove("HERD_DATABASE_URL"),
        };
        let child = command.spawn().with_context(|| format!("starting {} serve", options.binary.display()))?;
        let mut server = HerdServer {
            child,
            addr,
            data_dir,
            log_path,
            bootstrap_token,
            owns_data: false,
            keep_data: true,
            stopped: false,
        };
        wait_ready("herd", &mut server.child, server.addr, &server.log_path, Duration::from_secs(60), || true).await?;
        Ok(server)
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The platform-admin (and `default`-tenant admin) token.
    pub fn admin_token(&self) -> Arc<str> {
        Arc::clone(&self.bootstrap_token)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (kept only with `--keep-data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's current RSS in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        read_status_kib(self.pid(), "VmRSS:").map(kib_to_mib)
    }

    /// The server's peak RSS over its lifetime (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        read_status_kib(self.pid(), "VmHWM:").map(kib_to_mib)
    }

    /// Samples RSS every 100 ms until the returned sampler is finished.
    pub fn sample_rss(&self) -> RssSampler {
        RssSampler::start(self.pid())
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and removes the data directory.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    /// Kills the server with SIGKILL (no shutdown of any kind: what a power cut leaves) and waits
    /// for it to be gone. The data directory is left as the process left it.
    pub fn kill(mut self) -> Result<()> {
        self.stopped = true;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            kill(Pid::from_raw(pid), Signal::SIGKILL).context("sending SIGKILL to herd")?;
        }
        self.child.wait().context("waiting for the killed herd")?;
        Ok(())
    }

    fn terminate(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.child.try_wait().ok().flatten().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match self.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("herd did not stop within 10 s of SIGTERM; killing it");
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        break;
                    }
                }
            }
        }
        if !self.owns_data {
            Ok(())
        } else if self.keep_data {
            eprintln!("kept the server's data directory: {}", self.data_dir.display());
            Ok(())
        } else {
            std::fs::remove_dir_all(&self.data_dir).with_context(|| format!("removing {}", self.data_dir.display()))
        }
    }
}

impl Drop for HerdServer {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            eprintln!("herd-bench: {error:#}");
        }
    }
}

/// Asks the kernel for a free port on 127.0.0.1. The port is released before herd binds it, which
/// leaves a tiny window for another process to take it; startup then fails loudly.
fn free_loopback_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    listener.local_addr().context("reading the free port")
}

fn read_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_field(&status, key)?.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: Linux's USER_HZ, 100 on every
/// architecture herd runs on (the kernel's ABI, whatever its internal HZ).
const USER_HZ: f64 = 100.0;

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so fields are counted after
/// its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name: field 3 (state) is the first; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits until `child` (called `name` in errors) answers `GET /readyz` at `addr` with 200 once
/// `also_ready` holds; fails early, with the end of its log, if it exits or `timeout` passes.
pub(crate) async fn wait_ready(
    name: &str,
    child: &mut Child,
    addr: SocketAddr,
    log_path: &Path,
    timeout: Duration,
    also_ready: impl Fn() -> bool,
) -> Result<()> {
    let started = Instant::now();
    let probe = Request::new(Method::GET, "/readyz");
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("checking on {name}"))? {
            bail!("{name} exited during startup ({status}); its log ends:\n{}", log_tail(log_path));
        }
        if also_ready() {
            if let Ok(response) = send_once(addr, &probe).await {
                if response.status == StatusCode::OK {
                    return Ok(());
                }
            }
        }
        if started.elapsed() > timeout {
            bail!("{name} was not ready within {} s; its log ends:\n{}", timeout.as_secs(), log_tail(log_path));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Samples a process's VmRSS (or any RSS reading) every 100 ms and keeps the largest value.
pub struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling the process `pid`.
    pub fn start(pid: u32) -> RssSampler {
        RssSampler::start_with(move || read_status_kib(pid, "VmRSS:"))
    }

    /// Starts sampling whatever `read_kib` reads (an RSS in KiB; the heartbeat peer sums its
    /// processes').
    pub fn start_with(read_kib: impl Fn() -> Option<u64> + Send + 'static) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(read_kib().unwrap_or(0)));
        let peak = Arc::clone(&peak_kib);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticker.tick().await;
                if let Some(rss) = read_kib() {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak_kib, task }
    }

    /// Stops sampling and returns the peak in MiB (`None` if nothing could be read).
    pub fn finish(self) -> Option<f64> {
        self.task.abort();
        let peak = self.peak_kib.load(Ordering::Relaxed);
        (peak > 0).then(|| kib_to_mib(peak))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_from_proc_stat() {
        let stat = "1234 (herd) S 1 1234 1234 0 -1 4194560 2893 0 0 0 750 125 0 0 20 0 55 0 \
                    6011 123456789 6000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(875));
        // A command name with spaces and parentheses does not shift the fields.
        let odd = "99 (a (b) c) R 1 99 99 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1";
        assert_eq!(stat_cpu_ticks(odd), Some(7));
        assert_eq!(stat_cpu_ticks("99 (short) R 1"), None);
        assert_eq!(stat_cpu_ticks("no name here"), None);
        // This process has a stat file whose times parse.
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
