//! The seed's stack as a heartbeat peer: `bench/nest-peer` is the seed's `POST /devices/connect`
//! (NestJS 11, class-validator DTO, Prisma 7 on the `pg` driver adapter) run as a Node cluster
//! of [`WORKERS`] processes on the same PostgreSQL server as herd, in a fresh database of its own.
//!
//! This module installs the peer's npm packages (`npm ci` from the committed lock file, only when
//! `node_modules` is missing), generates the Prisma client and compiles the TypeScript, creates and
//! seeds the peer's database, starts the server on a free loopback port and measures it with the
//! harness's own load generator. Nothing here downloads anything beyond npm packages: the table
//! comes from `schema.sql` through `psql`, and `prisma generate` is pointed at a schema engine
//! that does not exist (`/bin/false`), so the Prisma CLI never fetches one.
//!
//! [`NestPeer`] is a guard: dropping it stops every process of the peer's process group (SIGTERM,
//! then SIGKILL) before its database is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::context::Measured;
use crate::http::{Method, Request};
use crate::load::{run_load, LoadPlan, Workload};
use crate::phases::pick;
use crate::postgres::FreshDatabase;
use crate::server::{log_tail, wait_ready, RssSampler};

/// Node cluster workers: the benchmark machine's two cores, which herd uses too.
pub const WORKERS: usize = 2;

/// How long the peer may take to answer `GET /readyz` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the peer's primary gets to stop its workers after SIGTERM before the group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The peer's directory in the workspace.
pub fn directory(workspace: &Path) -> PathBuf {
    workspace.join("bench").join("nest-peer")
}

/// Installs the npm packages when `node_modules` is missing, generates the Prisma client and
/// compiles the server to `dist/`. Blocking; run it on the blocking pool.
pub fn prepare(directory: &Path) -> Result<()> {
    if !directory.join("node_modules").is_dir() {
        eprintln!("installing the heartbeat peer's npm packages: npm ci (NestJS, Prisma, pg)");
        // `--ignore-scripts`: no install script runs, so no Prisma engine is fetched on install.
        run_quietly(
            Command::new("npm").args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]),
            directory,
            "npm ci",
        )
        .context("the heartbeat peer needs Node.js >= 20.19 and npm (or pass --no-peer)")?;
    }
    run_quietly(
        Command::new(directory.join("node_modules/.bin/prisma"))
            .arg("generate")
            .env("PRISMA_SCHEMA_ENGINE_BINARY", "/bin/false")
            .env("PRISMA_HIDE_UPDATE_MESSAGE", "1")
            .env("CHECKPOINT_DISABLE", "1"),
        directory,
        "prisma generate",
    )?;
    run_quietly(Command::new(directory.join("node_modules/.bin/tsc")).args(["-p", "tsconfig.json"]), directory, "tsc")?;
    Ok(())
}

/// What ran, for the results' notes: the versions installed and what the peer does per request.
pub fn describe(directory: &Path) -> String {
    let version = |package: &str| {
        std::fs::read_to_string(directory.join("node_modules").join(package).join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| json["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".to_string())
    };
    let node = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "?".to_string());
    format!(
        "node {node}, NestJS {} (express), class-validator {}, Prisma {} with @prisma/adapter-pg on pg {}; \
         {WORKERS} cluster workers, a pool of 10 connections each, in a fresh database on herd's PostgreSQL server; \
         per request: validate the DTO, one UPDATE of status, lastSeen, IP and version by serial number, \
         answer the device as JSON; no authentication",
        version("@nestjs/core"),
        version("class-validator"),
        version("@prisma/client"),
        version("pg"),
    )
}

/// The running peer and its database. Fields drop in order: the processes stop before the
/// database is dropped.
pub struct NestPeer {
    process: PeerProcess,
    /// Dropped after `process`: DROP DATABASE once nothing is connected.
    _database: FreshDatabase,
    /// Devices seeded into the peer's table.
    n_devices: u64,
}

impl NestPeer {
    /// Creates a fresh database through `admin_url`, creates the table from `schema.sql`, seeds
    /// `n_devices` devices (serial numbers [`serial_number`]`(0..n)`, offline, never seen) and
    /// starts the server. Call [`prepare`] first.
    pub async fn start(directory: &Path, admin_url: &str, n_devices: u64) -> Result<NestPeer> {
        let database = FreshDatabase::create(admin_url)?;
        database.execute_file(&directory.join("schema.sql")).context("creating the peer's table")?;
        let last = n_devices.checked_sub(1).context("the peer needs at least one device")?;
        // Every device belongs to one owner (the seed's userId), as the bench fleet belongs to one tenant.
        database
            .execute(&format!(
                "INSERT INTO devices (id, user_id, serial_number, name, updated_at) \
                 SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', \
                        'bench-' || lpad(i::text, 8, '0'), 'Device ' || i, now() \
                 FROM generate_series(0, {last}) AS i; ANALYZE devices"
            ))
            .context("seeding the peer's devices")?;
        let process = PeerProcess::start(directory, database.url()).await?;
        Ok(NestPeer { process, _database: database, n_devices })
    }

    /// Where the peer listens.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// `POST /devices/connect` as device `job % n`, the same body as herd's heartbeat plus the
    /// serial number that names the device.
    pub fn heartbeats(&self) -> Arc<PeerHeartbeats> {
        let bodies: Vec<Bytes> = (0..self.n_devices)
            .map(|index| {
                Bytes::from(format!(
                    r#"{{"serialNumber":"{}","ipAddress":"10.0.0.1","appVersion":"1.2.3"}}"#,
                    serial_number(index)
                ))
            })
            .collect();
        Arc::new(PeerHeartbeats { bodies: Arc::from(bodies) })
    }

    /// Runs `workload` against the peer as `plan` says while sampling the RSS of all its
    /// processes (the primary and every worker, summed).
    pub async fn measure<W: Workload>(&self, workload: Arc<W>, plan: &LoadPlan) -> Result<Measured> {
        let group = self.process.group;
        let sampler = RssSampler::start_with(move || group_rss_kib(group));
        let outcome = run_load(self.addr(), workload, plan).await?;
        Ok(Measured { outcome, rss_peak_mib: sampler.finish() })
    }

    /// Whether the server is still up (it exits if a worker dies).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.process.child.try_wait().context("checking on the peer")? {
            bail!("the heartbeat peer exited ({status}); its log ends:\n{}", self.process.log_tail());
        }
        Ok(())
    }
}

/// The serial number of the peer's device `index`.
pub fn serial_number(index: u64) -> String {
    format!("bench-{index:08}")
}

/// The peer's heartbeat workload.
pub struct PeerHeartbeats {
    /// One JSON body per device; never empty.
    bodies: Arc<[Bytes]>,
}

impl Workload for PeerHeartbeats {
    fn request(&self, job: u64) -> Request {
        let body = pick(&self.bodies, job).cloned().unwrap_or_default();
        Request::new(Method::POST, "/devices/connect").json_bytes(body)
    }
}

/// The Node cluster's primary process and, through its process group, its workers.
struct PeerProcess {
    child: Child,
    /// The process group the primary leads (its pid): every worker is in it.
    group: i32,
    addr: SocketAddr,
    log_path: PathBuf,
    stopped: bool,
}

impl PeerProcess {
    async fn start(directory: &Path, database_url: &str) -> Result<PeerProcess> {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port for the peer")?;
            listener.local_addr().context("reading the free port")?
        };
        let log_path = std::env::temp_dir().join(format!("herd-bench-nest-peer-{}.log", std::process::id()));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("node")
            .arg("dist/main.js")
            .current_dir(directory)
            .env("DATABASE_URL", database_url)
            .env("PORT", addr.port().to_string())
            .env("PEER_WORKERS", WORKERS.to_string())
            .env("NODE_ENV", "production")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the peer's log file")?)
            .stderr(log)
            // Its own process group, so the guard can stop the workers too, by group id.
            .process_group(0)
            .spawn()
            .context("running node dist/main.js (the heartbeat peer)")?;
        let group = i32::try_from(child.id()).context("the peer's pid does not fit a pid_t")?;
        let mut process = PeerProcess { child, group, addr, log_path, stopped: false };
        process.wait_ready().await?;
        eprintln!("heartbeat peer (NestJS + Prisma, {WORKERS} workers) listening on {addr} (pid {group})");
        Ok(process)
    }

    /// Waits until the primary has printed `ready` (every worker listens) and `/readyz` answers.
    async fn wait_ready(&mut self) -> Result<()> {
        let log_path = self.log_path.clone();
        let all_listening = || std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("ready "));
        wait_ready("the heartbeat peer", &mut self.child, self.addr, &self.log_path, STARTUP_TIMEOUT, all_listening)
            .await
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// SIGTERM to the group, a grace period for the primary, then SIGKILL to whatever of the
    /// group is left.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = Pid::from_raw(self.group);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Workers outlive a primary that was killed; the group id stays theirs while any is alive.
        if !group_members(self.group).is_empty() {
            eprintln!("the heartbeat peer did not stop within {} s of SIGTERM; killing it", STOP_TIMEOUT.as_secs());
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Summed VmRSS (KiB) of every process in process group `group`.
fn group_rss_kib(group: i32) -> Option<u64> {
    let members = group_members(group);
    let total: u64 = members.iter().filter_map(|pid| vm_rss_kib(*pid)).sum();
    (total > 0).then_some(total)
}

/// The pids of live processes whose process group is `group`, from `/proc/<pid>/stat`.
fn group_members(group: i32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| stat_group(&stat).is_some_and(|(state, pgrp)| pgrp == group && state != "Z"))
        })
        .collect()
}

/// State (field 3) and process group (field 5) of a `/proc/<pid>/stat` line; fields are counted
/// after the command name's last `)`, which may itself hold spaces.
fn stat_group(stat: &str) -> Option<(&str, i32)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` in `directory` with its output captured; a failure shows the output's end.
fn run_quietly(command: &mut Command, directory: &Path, what: &str) -> Result<()> {
    let output = command
        .current_dir(directory)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} in {}", directory.display()))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = text.lines().collect();
        bail!("{what} failed ({}):\n{}", output.status, lines[lines.len().saturating_sub(20)..].join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_group_from_proc_stat() {
        let stat = "1234 (node) S 1 1200 1200 0 -1 4194560 2893 0 0 0 750 125";
        assert_eq!(stat_group(stat), Some(("S", 1200)));
        let odd = "99 (a (b) c) Z 1 77 99 0";
        assert_eq!(stat_group(odd), Some(("Z", 77)));
        assert_eq!(stat_group("99 (short) R"), None);
    }

    #[test]
    fn this_process_is_in_its_own_group_listing() {
        let group = nix::unistd::getpgrp().as_raw();
        assert!(group_members(group).contains(&std::process::id()));
        assert!(group_rss_kib(group).is_some());
    }

    #[test]
    fn heartbeat_bodies_name_the_device_by_serial_number() {
        let heartbeats = PeerHeartbeats { bodies: Arc::from(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]) };
        let request = heartbeats.request(3);
        assert_eq!(request.path, "/devices/connect");
        assert_eq!(request.body, Some(Bytes::from_static(b"b")));
        assert!(request.bearer.is_none());
        assert_eq!(serial_number(42), "bench-00000042");
    }
}
