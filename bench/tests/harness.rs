//! The whole harness, end to end, against `tests/fake-herd/herd.js`: a stand-in server that
//! speaks just enough of herd's API for every phase to run (or, with `FAKE_HERD_ROUTES=minimal`,
//! none). This proves that each phase measures when its endpoint exists, reports
//! `available: false` when it does not, stops the server, and writes the results file. It asserts
//! no timing. Needs Node.js (the fake and the certificate peer).
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use herd_bench::cli::{Phase, Settings};

fn settings(out: PathBuf) -> Settings {
    Settings {
        quick: true,
        database_url: None,
        n_devices: 40,
        concurrency: 4,
        run_duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        runs: 2,
        phases: Phase::ALL.to_vec(),
        out,
        herd_bin: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake-herd/herd.js")),
        commit: None,
        keep_data: false,
        heartbeat_peer: false,
        overview_devices: 60,
        overview_samples: 1_000,
        sweep_sizes: vec![30],
        metrics_batch: 10,
        download_bytes: 300 * 1024,
        download_clients: 3,
        static_server: Some(PathBuf::from(env!("CARGO_BIN_EXE_herd-bench"))),
    }
}

fn out_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("herd-bench-test-{}-{name}.json", std::process::id()))
}

fn phase<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["phases"]
        .as_array()
        .and_then(|phases| phases.iter().find(|phase| phase["name"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {json}"))
}

// One test runs both servers in turn: the fake is started by the harness with environment
// variables, and FAKE_HERD_ROUTES must not leak into a concurrently running test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_measures_when_present_and_is_na_when_absent() {
    let out = out_path("full");
    let report = herd_bench::run(settings(out.clone())).await.expect("harness runs");
    assert!(report.all_phases_ran(), "{}", report.table());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("results written")).expect("JSON");
    let _ = std::fs::remove_file(&out);
    for name in
        ["ceiling", "heartbeat", "commands", "registration", "metrics", "certificates", "overview", "download", "sweep"]
    {
        let phase = phase(&json, name);
        assert_eq!(phase["available"], true, "{name}: {phase}");
        let figures = phase["figures"].as_array().expect("figures");
        assert!(!figures.is_empty(), "{name} has figures");
        for figure in figures {
            assert!(figure["median"].as_f64().is_some(), "{name}: {figure}");
        }
        assert_eq!(phase["requestErrors"], 0, "{name}: {phase}");
    }
    assert_eq!(phase(&json, "heartbeat")["figures"][0]["runs"].as_array().map(Vec::len), Some(2));
    // Two runs, each one bulk command that every parked device received and answered.
    assert_eq!(phase(&json, "commands")["figures"][0]["name"], "bulk create (40 devices)");
    assert_eq!(phase(&json, "commands")["figures"][1]["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(phase(&json, "certificates (seed peer)")["available"], true);
    assert!(phase(&json, "sweep")["notes"].as_array().is_some_and(Vec::is_empty), "sweep counts match");
    // Two runs, each herd and the static route, every download checked.
    assert_eq!(phase(&json, "download")["figures"][1]["name"], "herd download (3 clients × 0.29 MiB)");
    assert_eq!(phase(&json, "download")["figures"][3]["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["database"], "sqlite");
    assert_eq!(json["herdVersion"], "herd-fake 0.0.0");

    std::env::set_var("FAKE_HERD_ROUTES", "minimal");
    let out = out_path("minimal");
    let mut minimal = settings(out.clone());
    minimal.phases = vec![
        Phase::Heartbeat,
        Phase::Commands,
        Phase::Registration,
        Phase::Metrics,
        Phase::Overview,
        Phase::Download,
        Phase::Sweep,
    ];
    let report = herd_bench::run(minimal).await.expect("harness runs");
    std::env::remove_var("FAKE_HERD_ROUTES");
    let _ = std::fs::remove_file(&out);
    assert!(report.all_phases_ran(), "{}", report.table());
    for phase in &report.phases {
        assert!(!phase.available, "{} should be n/a", phase.name);
        assert!(phase.figures.is_empty());
    }
    assert!(report.table().contains("n/a (not in this build)"));
}
