//! Results: figures with their repeated runs, phases, the printed table and the JSON file.
//!
//! A figure is never invented: a phase whose endpoint the server lacks is recorded with
//! `available: false` and printed as `n/a (not in this build)`; a run that failed records no value.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::MachineInfo;

/// What a figure aims for (reported, never asserted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aim {
    /// The median should be at least this.
    AtLeast(f64),
    /// The median should be below this.
    Below(f64),
}

impl Aim {
    fn met_by(self, value: f64) -> bool {
        match self {
            Aim::AtLeast(target) => value >= target,
            Aim::Below(target) => value < target,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Aim::AtLeast(target) => format!("≥ {}", format_value(target, unit)),
            Aim::Below(target) => format!("< {}", format_value(target, unit)),
        }
    }
}

/// One measured quantity, e.g. heartbeat p99 latency, over all runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    /// What was measured, e.g. `heartbeat p99 (c=64)`.
    pub name: String,
    /// Unit of the values: `req/s`, `ms`, `s`, `MiB`, `x`, …
    pub unit: String,
    /// One value per run, in run order.
    pub runs: Vec<f64>,
    /// Median of `runs`.
    pub median: Option<f64>,
    /// Smallest run.
    pub min: Option<f64>,
    /// Largest run.
    pub max: Option<f64>,
    /// The aim, in words.
    pub aim: Option<String>,
    /// Whether the median meets the aim.
    pub aim_met: Option<bool>,
    #[serde(skip)]
    aim_rule: Option<Aim>,
}

impl Figure {
    /// A figure with no runs yet.
    pub fn new(name: impl Into<String>, unit: impl Into<String>) -> Figure {
        Figure {
            name: name.into(),
            unit: unit.into(),
            runs: Vec::new(),
            median: None,
            min: None,
            max: None,
            aim: None,
            aim_met: None,
            aim_rule: None,
        }
    }

    /// Sets the aim.
    pub fn aim(mut self, aim: Aim) -> Figure {
        self.aim = Some(aim.describe(&self.unit));
        self.aim_rule = Some(aim);
        self
    }

    /// Adds one run's value and updates the summary.
    pub fn push(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.runs.push(value);
        let summary = Summary::of(&self.runs);
        self.median = summary.map(|s| s.median);
        self.min = summary.map(|s| s.min);
        self.max = summary.map(|s| s.max);
        self.aim_met = match (self.aim_rule, self.median) {
            (Some(aim), Some(median)) => Some(aim.met_by(median)),
            _ => None,
        };
    }

    /// A figure with runs and the values already pushed.
    pub fn with_runs(mut self, values: impl IntoIterator<Item = f64>) -> Figure {
        for value in values {
            self.push(value);
        }
        self
    }
}

/// Median, min and max of some runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The middle value (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let (first, last) = (sorted.first()?, sorted.last()?);
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Summary { median, min: *first, max: *last })
    }
}

/// One phase's results.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    /// Phase name, e.g. `heartbeat`.
    pub name: String,
    /// `false` when the server does not have the phase's endpoint (404/405 on the probe).
    pub available: bool,
    /// Why the phase is unavailable, or how it failed.
    pub reason: Option<String>,
    /// `true` when the phase ran into an error (the harness exits non-zero).
    pub failed: bool,
    /// The figures.
    pub figures: Vec<Figure>,
    /// Largest server RSS sampled during the phase, in MiB.
    pub rss_peak_mib: Option<f64>,
    /// Requests that failed during measured runs.
    pub request_errors: u64,
    /// The first such failure.
    pub first_request_error: Option<String>,
    /// Context: fleet size, concurrency, dataset.
    pub notes: Vec<String>,
}

impl PhaseReport {
    /// An available phase with no figures yet.
    pub fn new(name: impl Into<String>) -> PhaseReport {
        PhaseReport {
            name: name.into(),
            available: true,
            reason: None,
            failed: false,
            figures: Vec::new(),
            rss_peak_mib: None,
            request_errors: 0,
            first_request_error: None,
            notes: Vec::new(),
        }
    }

    /// A phase the server cannot run yet; `needs` says which endpoint it lacks.
    pub fn not_in_build(name: impl Into<String>, needs: impl Into<String>) -> PhaseReport {
        let mut report = PhaseReport::new(name);
        report.available = false;
        report.reason = Some(needs.into());
        report
    }

    /// A phase that stopped on an error.
    pub fn failed(name: impl Into<String>, error: &anyhow::Error) -> PhaseReport {
        let mut report = PhaseReport::new(name);
        report.failed = true;
        report.reason = Some(format!("{error:#}"));
        report
    }

    /// Folds an RSS sample (MiB) into the phase peak.
    pub fn observe_rss(&mut self, rss_mib: Option<f64>) {
        if let Some(rss) = rss_mib {
            self.rss_peak_mib = Some(self.rss_peak_mib.map_or(rss, |peak| peak.max(rss)));
        }
    }

    /// Counts a run's request failures.
    pub fn observe_errors(&mut self, failed: u64, first_error: Option<&String>) {
        self.request_errors += failed;
        if self.first_request_error.is_none() {
            self.first_request_error = first_error.cloned();
        }
    }
}

/// The whole run: where, what, and every phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Version of this file's layout.
    pub schema: u32,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// `git rev-parse --short HEAD`, with `-dirty` if the tree had changes.
    pub commit: String,
    /// The machine.
    pub machine: MachineInfo,
    /// `herd --version`.
    pub herd_version: String,
    /// `sqlite` or `postgresql`.
    pub database: String,
    /// `quick` or `full`.
    pub mode: String,
    /// The settings that shape the figures.
    pub settings: ReportSettings,
    /// `false` while the run is still going (the file is rewritten after every phase) or when it
    /// was interrupted.
    pub complete: bool,
    /// Phases in execution order.
    pub phases: Vec<PhaseReport>,
    /// The server's VmHWM at the end of the run, in MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Total wall time of the run, in seconds.
    pub wall_seconds: f64,
}

/// Settings recorded with the results.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSettings {
    /// Distinct devices of the heartbeat and metrics phases.
    pub devices: u64,
    /// Load concurrency.
    pub concurrency: usize,
    /// Seconds per measured run.
    pub run_seconds: f64,
    /// Repetitions.
    pub runs: usize,
}

impl Report {
    /// Whether every phase ran (available or honestly n/a) without an error.
    pub fn all_phases_ran(&self) -> bool {
        self.phases.iter().all(|phase| !phase.failed)
    }

    /// Writes the JSON file atomically (temporary file, then rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("serializing results")?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, json + "\n").with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
    }

    /// The results table (Markdown, readable as plain text too) with a header naming the run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        let _ = writeln!(
            out,
            "herd-bench {} · {} · commit {} · {} · {} · nproc {} · {} MiB · {}",
            self.mode,
            self.date,
            self.commit,
            self.herd_version,
            self.database,
            machine.nproc,
            machine.memory_mib,
            machine.cpu_model
        );
        let _ = writeln!(
            out,
            "{} devices · concurrency {} · {} s per run · {} run(s) · median (min–max) · load average at start {}\n",
            format_count(self.settings.devices),
            self.settings.concurrency,
            self.settings.run_seconds,
            self.settings.runs,
            machine.load_average
        );
        let header = ["phase", "figure", "median", "min–max", "aim", "server RSS"];
        let mut rows: Vec<[String; 6]> = Vec::new();
        for phase in &self.phases {
            let rss = phase.rss_peak_mib.map(|mib| format!("{mib:.0} MiB")).unwrap_or_else(|| "–".to_string());
            if !phase.available {
                rows.push([
                    phase.name.clone(),
                    "n/a (not in this build)".to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
            if phase.failed && phase.figures.is_empty() {
                let reason = phase.reason.clone().unwrap_or_default();
                let reason: String = reason.chars().take(80).collect();
                rows.push([
                    phase.name.clone(),
                    format!("FAILED: {reason}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    rss,
                ]);
                continue;
            }
            for (index, figure) in phase.figures.iter().enumerate() {
                let median = figure.median.map(|v| format_value(v, &figure.unit)).unwrap_or_else(|| "n/a".to_string());
                let range = match (figure.min, figure.max, figure.runs.len()) {
                    (Some(min), Some(max), n) if n > 1 => {
                        format!("{}–{}", format_number(min, &figure.unit), format_number(max, &figure.unit))
                    }
                    _ => String::new(),
                };
                let aim = match (&figure.aim, figure.aim_met) {
                    (Some(aim), Some(true)) => format!("{aim} ✓"),
                    (Some(aim), Some(false)) => format!("{aim} ✗"),
                    (Some(aim), None) => aim.clone(),
                    (None, _) => String::new(),
                };
                rows.push([
                    if index == 0 { phase.name.clone() } else { String::new() },
                    figure.name.clone(),
                    median,
                    range,
                    aim,
                    if index == 0 { rss.clone() } else { String::new() },
                ]);
            }
        }
        render_markdown_table(&mut out, &header, &rows);
        for phase in &self.phases {
            if !phase.available {
                if let Some(reason) = &phase.reason {
                    let _ = writeln!(out, "- {}: n/a, needs {reason}", phase.name);
                }
            } else if phase.failed {
                let _ = writeln!(out, "- {}: FAILED: {}", phase.name, phase.reason.as_deref().unwrap_or(""));
            }
            if phase.request_errors > 0 {
                let _ = writeln!(
                    out,
                    "- {}: {} failed requests, first: {}",
                    phase.name,
                    format_count(phase.request_errors),
                    phase.first_request_error.as_deref().unwrap_or("")
                );
            }
            for note in &phase.notes {
                let _ = writeln!(out, "- {}: {note}", phase.name);
            }
        }
        if let Some(peak) = self.server_peak_rss_mib {
            let _ = writeln!(out, "- server peak RSS over the whole run (VmHWM): {peak:.0} MiB");
        }
        out
    }
}

fn render_markdown_table(out: &mut String, header: &[&str; 6], rows: &[[String; 6]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row.to_vec()));
    }
}

/// A value with its unit, e.g. `12,345 req/s`, `3.21 ms`, `0.52x`.
pub fn format_value(value: f64, unit: &str) -> String {
    let number = format_number(value, unit);
    match unit {
        "x" => format!("{number}x"),
        "" => number,
        unit => format!("{number} {unit}"),
    }
}

/// A number in the precision its unit deserves.
pub fn format_number(value: f64, unit: &str) -> String {
    match unit {
        "ms" | "s" | "x" => {
            if value.abs() < 1.0 && unit == "s" {
                format!("{value:.3}")
            } else if value.abs() >= 1_000.0 {
                format_count(value.round() as u64)
            } else if value.abs() >= 100.0 {
                format!("{value:.0}")
            } else if value.abs() >= 10.0 {
                format!("{value:.1}")
            } else {
                format!("{value:.2}")
            }
        }
        "MiB" => format!("{value:.0}"),
        _ if value.abs() >= 100.0 => format_count(value.round() as u64),
        _ => format!("{value:.1}"),
    }
}

/// An integer with thousands separators: `1234567` → `1,234,567`.
pub fn format_count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        assert_eq!(Summary::of(&[]), None);
        let odd = Summary::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn figures_judge_their_aim_on_the_median() {
        let mut latency = Figure::new("p99", "ms").aim(Aim::Below(20.0));
        latency.push(10.0);
        latency.push(30.0);
        latency.push(15.0);
        assert_eq!(latency.median, Some(15.0));
        assert_eq!(latency.aim_met, Some(true));
        assert_eq!(latency.aim.as_deref(), Some("< 20.0 ms"));
        let rate = Figure::new("rate", "req/s").aim(Aim::AtLeast(2_000.0)).with_runs([1_500.0]);
        assert_eq!(rate.aim_met, Some(false));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_value(12_345.4, "req/s"), "12,345 req/s");
        assert_eq!(format_value(3.214, "ms"), "3.21 ms");
        assert_eq!(format_value(31_736.4, "ms"), "31,736 ms");
        assert_eq!(format_value(0.5, "x"), "0.50x");
    }

    #[test]
    fn unavailable_phases_print_as_not_in_this_build() {
        let report = Report {
            schema: 1,
            date: "2025-01-01T00:00:00Z".into(),
            commit: "abc1234".into(),
            machine: MachineInfo {
                nproc: 2,
                memory_mib: 1024,
                cpu_model: "test cpu".into(),
                load_average: "0.00 0.00 0.00".into(),
            },
            herd_version: "herd 0.1.0".into(),
            database: "sqlite".into(),
            mode: "quick".into(),
            settings: ReportSettings { devices: 10, concurrency: 2, run_seconds: 1.0, runs: 1 },
            phases: vec![PhaseReport::not_in_build("sweep", "POST /admin/presence/sweep"), {
                let mut phase = PhaseReport::new("heartbeat");
                phase.figures.push(Figure::new("rate", "req/s").with_runs([100.0, 200.0]));
                phase
            }],
            complete: true,
            server_peak_rss_mib: Some(42.0),
            wall_seconds: 1.0,
        };
        let table = report.table();
        assert!(table.contains("| sweep     | n/a (not in this build)"), "{table}");
        assert!(table.contains("150 req/s"), "{table}");
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["phases"][0]["available"], false);
        assert_eq!(json["phases"][1]["figures"][0]["median"], 150.0);
    }
}
