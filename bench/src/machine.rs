//! What machine and which code produced the figures: `nproc`, memory, CPU model and the commit.
//! Read from `/proc` and `git`; anything unreadable is recorded as `unknown`, never guessed.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineInfo {
    /// Logical CPUs available to this process (`nproc`).
    pub nproc: usize,
    /// `MemTotal` from `/proc/meminfo`, in MiB.
    pub memory_mib: u64,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The 1, 5 and 15 minute load averages when the run started (`/proc/loadavg`): anything else
    /// busy on the machine (a build, say) skews the figures, and this shows it.
    pub load_average: String,
}

impl MachineInfo {
    /// Reads the current machine.
    pub fn collect() -> MachineInfo {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| proc_field(&text, "MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "unknown".to_string());
        MachineInfo { nproc, memory_mib, cpu_model, load_average }
    }
}

/// The value after `key` on the line that starts with it (`/proc/*/status` and `/proc/meminfo`).
pub fn proc_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| line.strip_prefix(key)).map(str::trim)
}

/// `git rev-parse --short HEAD` in `workspace`, with `-dirty` when tracked files changed.
pub fn commit(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|status| !status.is_empty());
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let status = "Name:\therd\nVmHWM:\t  51200 kB\nVmRSS:\t  40960 kB\n";
        assert_eq!(proc_field(status, "VmRSS:"), Some("40960 kB"));
        assert_eq!(proc_field(status, "VmSwap:"), None);
    }

    #[test]
    fn this_machine_is_readable() {
        let machine = MachineInfo::collect();
        assert!(machine.nproc >= 1);
    }
}
