//! Architecture invariants that no type can carry, checked over the source tree (see
//! ARCHITECTURE.md): each test names the rule it keeps and fails with the offending lines.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// Lines of the production sources (server, store, domain) that contain any of `needles`,
/// skipping `exempt` files and everything after a `#[cfg(test)]`.
fn offending_lines(needles: &[&str], exempt: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["src", "crates/herd-store/src", "crates/herd-domain/src"] {
        for file in rust_files(&root.join(dir)) {
            let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if exempt.contains(&relative.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break;
                }
                if !line.trim_start().starts_with("//") && needles.iter().any(|needle| line.contains(needle)) {
                    found.push(format!("{relative}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn nothing_reads_the_wall_clock_but_the_clock() {
    let found =
        offending_lines(&["Utc::now()", "SystemTime::now()", "Local::now()"], &["crates/herd-domain/src/clock.rs"]);
    assert!(found.is_empty(), "take `now` from AppState::clock and pass it in:\n{}", found.join("\n"));
}

#[test]
fn only_the_store_crate_runs_sql() {
    let found = offending_lines(&["sqlx::query"], &[]);
    let outside: Vec<&String> = found.iter().filter(|line| !line.starts_with("crates/herd-store/")).collect();
    assert!(
        outside.is_empty(),
        "SQL belongs in herd-store:\n{}",
        outside.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(!found.is_empty(), "the scan found no query at all: it is not looking where the SQL is");
}

#[test]
fn only_jobs_act_as_the_system_principal() {
    // Where a job (or the shutdown sequence) acts for every tenant. A request handler that
    // reached for `AppState::system` could name any tenant: it must go through its caller's
    // scope instead.
    let allowed = [
        "src/app.rs",
        "src/jobs.rs",
        "src/certificates/monitor.rs",
        "src/commands/expiry.rs",
        "src/monitoring/mod.rs",
        "src/presence/mod.rs",
        "src/rollouts/job.rs",
        "src/webhooks/delivery.rs",
    ];
    let found = offending_lines(&[".system", "&System", "for_system("], &[]);
    let outside: Vec<&String> = found
        .iter()
        .filter(|line| line.starts_with("src/") && !allowed.iter().any(|file| line.starts_with(&format!("{file}:"))))
        .collect();
    assert!(
        outside.is_empty(),
        "the system principal outside a job:\n{}",
        outside.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(found.iter().any(|line| line.starts_with("src/jobs.rs:")), "the scan does not see the jobs");
}

#[test]
fn devices_reach_packages_only_through_device_package() {
    // `packages::download::device_package` decides what a device may download (today: its
    // tenant's package for its model; later: what a rollout assigned it). A device route that
    // read a package with the device's scope itself would skip that decision.
    let found = offending_lines(&["store::get(&device", "packages::get(&device", "packages::store::get(&device"], &[]);
    let reads: Vec<&String> = found.iter().filter(|line| line.starts_with("src/")).collect();
    assert_eq!(reads.len(), 1, "read packages for a device through device_package:\n{reads:#?}");
    assert!(reads[0].starts_with("src/packages/download.rs:"), "{reads:#?}");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/packages/download.rs")).unwrap();
    let body = text.split("async fn device_package(").nth(1).expect("device_package is in download.rs");
    let body = body.split("\n}\n").next().unwrap();
    assert!(body.contains("store::get(&device"), "the one read is device_package's own");
    for handler in ["async fn device_download(", "async fn device_download_url("] {
        let handler_body = text.split(handler).nth(1).unwrap_or_else(|| panic!("{handler} is in download.rs"));
        let handler_body = handler_body.split("\n}\n").next().unwrap();
        assert!(handler_body.contains("device_package(&device, id)"), "{handler} must call device_package");
    }
}

#[test]
fn the_console_reaches_data_only_through_the_apis_handlers() {
    // The console authorises nothing itself: every read and action is the API's handler,
    // called with the session's `Member`. A store, the database or the system principal used
    // from src/console/ would be a second, unchecked path to a tenant's rows.
    let needles = ["herd_store", "::store", ".db", "state.system", "TenantScope", "for_system("];
    let found = offending_lines(&needles, &[]);
    let console: Vec<&String> = found.iter().filter(|line| line.starts_with("src/console/")).collect();
    assert!(
        console.is_empty(),
        "the console calls the API's handlers, not the store:\n{}",
        console.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(
        found.iter().any(|line| line.starts_with("src/")),
        "the scan found no store use anywhere in src/: it is not looking where the code is"
    );
}

/// ARCHITECTURE.md: the CLI client speaks only HTTP. Nothing in `src/client/` reaches the
/// database, the server's settings or its modules; `files` (private, atomic writes) is the one
/// piece it shares.
#[test]
fn the_cli_client_reaches_herd_only_over_http() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let files = rust_files(&root.join("src/client"));
    assert!(files.len() >= 3, "the scan found no client sources: it is not looking where the code is");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let server_side = ["herd_store", "sqlx", "Settings", "AppState", "Db::"].iter().any(|n| code.contains(n));
            let crate_path = code.match_indices("crate::").any(|(at, _)| !code[at..].starts_with("crate::files::"));
            if server_side || crate_path {
                found.push(format!("{}:{}: {}", file.display(), number + 1, code));
            }
        }
    }
    assert!(found.is_empty(), "the client must use only the HTTP API (and crate::files):\n{}", found.join("\n"));
}

/// ARCHITECTURE.md: the credential cache never outlives a write. Every store function whose SQL
/// writes `devices`, `command_executions`, `alerts` or what a member token's lookup depends on
/// (`api_tokens`, `users`, `tenants`) touches the cache (`tx.touch`,
/// `tx.touch_here`; `Tx::commit` applies them however its future ends), or says why it need not
/// with a `cache: untouched — ` comment.
#[test]
fn every_credential_write_in_the_store_touches_the_credential_cache() {
    const WRITES: [&str; 16] = [
        "INSERT INTO devices (",
        "UPDATE devices ",
        "DELETE FROM devices ",
        "INSERT INTO command_executions ",
        "UPDATE command_executions ",
        "DELETE FROM command_executions ",
        // Member tokens: API tokens and sessions, the users sessions belong to, their tenants.
        "INSERT INTO api_tokens ",
        "UPDATE api_tokens ",
        "DELETE FROM api_tokens ",
        "UPDATE users ",
        "DELETE FROM users ",
        "UPDATE tenants ",
        "DELETE FROM tenants ",
        // Whether a device has an open alert of a sampled metric (`alerting`).
        "INSERT INTO alerts ",
        "UPDATE alerts ",
        "DELETE FROM alerts ",
    ];
    const TOUCHES: [&str; 3] = [".touch(", ".touch_here(", "cache: untouched — "];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut untouched = Vec::new();
    let mut writes = 0;
    for file in rust_files(&root.join("crates/herd-store/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().take_while(|line| !line.trim_start().starts_with("#[cfg(test)]")).collect();
        for (number, line) in lines.iter().enumerate() {
            if !WRITES.iter().any(|write| line.contains(write)) {
                continue;
            }
            writes += 1;
            // The enclosing function: the nearest `fn` above, to the `}` at its indentation.
            let is_fn = |l: &str| {
                let t = l.trim_start();
                ["fn ", "pub fn ", "async fn ", "pub async fn ", "pub(crate) async fn ", "pub(crate) fn "]
                    .iter()
                    .any(|start| t.starts_with(start))
            };
            let Some(start) = (0..=number).rev().find(|&i| is_fn(lines[i])) else {
                untouched.push(format!("{}:{}: outside any function", file.display(), number + 1));
                continue;
            };
            let indent = lines[start].len() - lines[start].trim_start().len();
            let closing = format!("{}}}", " ".repeat(indent));
            let end = (start + 1..lines.len()).find(|&i| lines[i] == closing).unwrap_or(lines.len());
            let body = &lines[start..end];
            if !body.iter().any(|l| TOUCHES.iter().any(|touch| l.contains(touch))) {
                let relative = file.strip_prefix(root).unwrap().display().to_string();
                untouched.push(format!("{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(writes >= 24, "the scan found only {writes} writes: has the SQL's spelling changed?");
    assert!(
        untouched.is_empty(),
        "these writes leave the credential cache stale (touch it after the write, or say why not):\n{}",
        untouched.join("\n")
    );
}
