//! The seed's stack as a peer: `bench/node-peer/issue-cert.js` issues certificates the way the
//! seed's NestJS DeviceCertificatesService does (Node's `crypto.generateKeyPairSync` + node-forge).
//! This module installs its one dependency with npm when missing and runs it for a while.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// What one peer run measured (the script's JSON line).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRun {
    /// Certificates issued.
    pub count: u64,
    /// Wall time of the loop.
    pub seconds: f64,
    /// Certificates per second (one core).
    pub per_second: f64,
    /// Median time per certificate.
    pub p50ms: Option<f64>,
    /// Node.js version.
    pub node: String,
    /// node-forge version.
    pub forge: String,
}

/// The peer's directory in the workspace.
pub fn directory(workspace: &Path) -> PathBuf {
    workspace.join("bench").join("node-peer")
}

/// Runs `npm install` in the peer's directory unless node-forge is already there.
pub fn install(directory: &Path) -> Result<()> {
    if directory.join("node_modules").join("node-forge").is_dir() {
        return Ok(());
    }
    eprintln!("installing the Node peer's dependencies: npm install (node-forge)");
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-package-lock", "--silent"])
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running npm (Node.js 18+ and npm are needed for the certificate peer)")?;
    if !status.success() {
        bail!("npm install in {} failed ({status})", directory.display());
    }
    Ok(())
}

/// Issues certificates for `duration` on one core and returns what the script measured.
pub fn run(directory: &Path, duration: Duration) -> Result<PeerRun> {
    let output = Command::new("node")
        .arg("issue-cert.js")
        .args(["--seconds", &format!("{:.3}", duration.as_secs_f64())])
        .current_dir(directory)
        .stdin(Stdio::null())
        .output()
        .context("running node issue-cert.js")?;
    if !output.status.success() {
        bail!("node issue-cert.js failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("node issue-cert.js printed {line:?}"))
}
