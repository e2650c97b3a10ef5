//! `herd` as a CLI client: the real binary, run as a person or a script would, against a real
//! server over HTTP, with its login file in a temporary directory (`HERD_CLI_CONFIG`).

use std::path::{Path, PathBuf};
use std::process::Output;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{engine_tests, expect_json, TestApp, ADMIN_TOKEN};

/// Runs `herd ARGS…` with this login file and standard input, and none of the caller's HERD_*
/// client variables.
async fn herd_with_stdin(config: &Path, args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env("HERD_CLI_CONFIG", config)
        .env_remove("HERD_SERVER")
        .env_remove("HERD_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the herd binary runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    child.wait_with_output().await.expect("herd finishes")
}

async fn herd(config: &Path, args: &[&str]) -> Output {
    herd_with_stdin(config, args, "").await
}

/// Runs `herd ARGS…`, insists that it succeeded, and answers its standard output.
async fn herd_ok(config: &Path, args: &[&str]) -> String {
    let output = herd(config, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "herd {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn herd_json(config: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = herd_ok(config, &args).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("herd {args:?} printed no JSON ({e}): {stdout}"))
}

fn config_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("herd").join("client.toml")
}

fn server(app: &TestApp) -> String {
    format!("http://{}", app.address)
}

engine_tests! {
    async fn the_cli_manages_a_device_from_login_to_delete(app) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let server = server(&app);

        // Not signed in: a clear message, a non-zero exit, and no request made.
        let output = herd(&config, &["devices", "list"]).await;
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("herd login"), "{output:?}");

        let shown = herd_ok(&config, &["login", "--server", &server, "--token", ADMIN_TOKEN]).await;
        assert!(shown.contains("signed in") && shown.contains("admin"), "{shown}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(config.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }

        // The enrollment token's secret alone on standard output, ready for `$(…)`.
        let secret = herd_ok(&config, &["enrollment-tokens", "create", "--name", "lobby", "--max-uses", "5"]).await;
        let secret = secret.trim();
        let (device, _) = app.register(secret, json!({ "serialNumber": "SN-CLI-1", "name": "lobby screen", "model": "X96" })).await;
        let device_id = device["id"].as_str().unwrap().to_string();

        let table = herd_ok(&config, &["devices", "list"]).await;
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("ID") && lines[0].contains("NAME") && lines[0].contains("STATUS"), "{table}");
        assert!(lines[1].starts_with(&device_id) && lines[1].contains("lobby screen") && lines[1].contains("SN-CLI-1"), "{table}");
        // The columns line up: NAME starts where the name does.
        assert_eq!(lines[0].find("NAME"), lines[1].find("lobby screen"), "{table}");

        let listed = herd_json(&config, &["devices", "list", "--status", "offline"]).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed["items"][0]["id"], device_id.as_str());
        let listed = herd_json(&config, &["devices", "list", "--status", "online"]).await;
        assert_eq!(listed["items"], json!([]), "{listed}");

        let shown = herd_ok(&config, &["devices", "get", &device_id]).await;
        assert!(shown.lines().any(|l| l.starts_with("serialNumber") && l.ends_with("SN-CLI-1")), "{shown}");

        let sent = herd_json(&config, &["commands", "send", &device_id, "set_volume", "--params", r#"{"volume": 30}"#]).await;
        assert_eq!(sent["type"], "set_volume", "{sent}");
        assert_eq!(sent["payload"]["volume"], 30, "{sent}");
        let queued = expect_json(app.get(&format!("/devices/{device_id}/commands"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(queued["items"][0]["commandId"], sent["commandId"], "{queued}");
        let command_id = sent["commandId"].as_str().unwrap();
        let fetched = herd_json(&config, &["commands", "get", &device_id, command_id]).await;
        assert_eq!(fetched["commandId"], command_id);

        let issued = herd_json(&config, &["certificates", "issue", &device_id]).await;
        assert!(issued["certificatePem"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{issued}");
        let certificate_id = issued["certificate"]["id"].as_str().unwrap().to_string();
        let out_dir = dir.path().join("bundle");
        herd_ok(&config, &["certificates", "issue", &device_id, "--out-dir", out_dir.to_str().unwrap()]).await;
        assert!(std::fs::read_to_string(out_dir.join("certificate.pem")).unwrap().contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out_dir.join("private-key.pem")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let listed = herd_json(&config, &["certificates", "list", "--device", &device_id]).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
        let table = herd_ok(&config, &["certificates", "list", "--status", "active"]).await;
        assert!(table.contains(&certificate_id), "{table}");
        let revoked = herd_json(&config, &["certificates", "revoke", &certificate_id, "--reason", "keyCompromise"]).await;
        assert_eq!(revoked["status"], "revoked", "{revoked}");
        assert_eq!(revoked["revocationReason"], "keyCompromise", "{revoked}");
        // Revoking again is the server's 409, shown from its problem+json with a non-zero exit.
        let output = herd(&config, &["certificates", "revoke", &certificate_id]).await;
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("(409)"), "{output:?}");

        let shown = herd_ok(&config, &["devices", "delete", &device_id]).await;
        assert!(shown.contains("deleted"), "{shown}");
        let response = app.get(&format!("/devices/{device_id}"), ADMIN_TOKEN).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let output = herd(&config, &["devices", "get", &device_id]).await;
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("(404)"), "{output:?}");

        herd_ok(&config, &["logout"]).await;
        assert!(!config.exists());
    }

    async fn the_cli_shows_the_servers_errors_and_fails(app) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let server = server(&app);

        // A bad token is refused at login, and nothing is stored.
        let output = herd(&config, &["login", "--server", &server, "--token", "not-a-real-token"]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("(401)") && stderr.contains("herd login"), "{stderr}");
        assert!(!config.exists());

        // A bad token given to one command: the same clear error.
        let output = herd(&config, &["devices", "list", "--server", &server, "--token", "not-a-real-token"]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("(401)"), "{output:?}");

        // A validation error names the field.
        herd_ok(&config, &["login", "--server", &server, "--token", ADMIN_TOKEN]).await;
        let output = herd(&config, &["enrollment-tokens", "create", "--max-uses", "0"]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("(422)") && stderr.contains("maxUses: must be between"), "{stderr}");

        // Nothing listens: a clear message naming the server.
        let output = herd(&config, &["devices", "list", "--server", "http://127.0.0.1:9", "--token", "x"]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach herd at http://127.0.0.1:9"), "{output:?}");

        // The stored token is never sent to another server than the one it was stored for.
        let output = herd(&config, &["devices", "list", "--server", "http://127.0.0.1:9"]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("the stored login is for"), "{output:?}");
    }

    async fn a_password_login_is_a_session_that_logout_ends(app) {
        let response = app.post("/users", ADMIN_TOKEN, json!({ "username": "ops", "password": "a long password", "role": "operator" })).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let server = server(&app);

        let output = herd_with_stdin(&config, &["login", "--server", &server, "--username", "ops", "--password-stdin"], "wrong password\n").await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(!config.exists());

        let output = herd_with_stdin(&config, &["login", "--server", &server, "--username", "ops", "--password-stdin"], "a long password\n").await;
        assert!(output.status.success(), "{output:?}");
        let stored = std::fs::read_to_string(&config).unwrap();
        assert!(stored.contains("credential = \"session\""), "{stored}");
        let token = stored.lines().find_map(|l| l.strip_prefix("token = \"")).unwrap().trim_end_matches('"').to_string();
        let me = expect_json(app.get("/auth/me", &token).await, StatusCode::OK).await;
        assert_eq!(me["role"], "operator");
        herd_json(&config, &["devices", "list"]).await;

        herd_ok(&config, &["logout"]).await;
        assert!(!config.exists());
        assert_eq!(app.get("/auth/me", &token).await.status(), StatusCode::UNAUTHORIZED);
    }

    async fn the_server_subcommands_and_completions_stay(app) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let _ = &app;
        let help = herd_ok(&config, &["certificates", "--help"]).await;
        for verb in ["migrate-store", "issue", "revoke", "list"] {
            assert!(help.contains(verb), "{help}");
        }
        let version = herd_ok(&config, &["version"]).await;
        assert!(version.starts_with("herd "), "{version}");
        let script = herd_ok(&config, &["completions", "bash"]).await;
        assert!(script.contains("enrollment-tokens") && script.contains("complete"), "{script}");
    }

    async fn the_cli_uploads_a_package_and_steers_a_rollout(app) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        herd_ok(&config, &["login", "--server", &server(&app), "--token", ADMIN_TOKEN]).await;

        // An operator token made with the CLI works for the CLI.
        let operator = herd_ok(&config, &["tokens", "create", "--name", "ci", "--role", "operator"]).await;
        let operator = operator.trim().to_string();
        let me = expect_json(app.get("/auth/me", &operator).await, StatusCode::OK).await;
        assert_eq!(me["role"], "operator", "{me}");
        let tokens = herd_ok(&config, &["tokens", "list"]).await;
        assert!(tokens.lines().any(|l| l.contains("ci") && l.contains("operator")), "{tokens}");

        let enroll = herd_ok(&config, &["enrollment-tokens", "create"]).await;
        let (device, _) = app.register(enroll.trim(), json!({ "serialNumber": "SN-ROLL-1", "model": "X96" })).await;
        let device_id = device["id"].as_str().unwrap();

        let artifact = dir.path().join("app.apk");
        std::fs::write(&artifact, vec![7u8; 200_000]).unwrap();
        let uploaded = herd_json(&config, &[
            "packages", "upload", artifact.to_str().unwrap(), "--kind", "apk", "--name", "com.example.signage",
            "--version", "2.4.1", "--version-code", "241", "--token", &operator,
        ]).await;
        assert_eq!(uploaded["size"], 200_000, "{uploaded}");
        let package_id = uploaded["id"].as_str().unwrap().to_string();
        let listed = herd_ok(&config, &["packages", "list"]).await;
        assert!(listed.contains(&package_id) && listed.contains("com.example.signage"), "{listed}");

        // No target: refused by the CLI before any request.
        let output = herd(&config, &["rollouts", "create", "--package", &package_id]).await;
        assert!(!output.status.success());
        let created = herd_json(&config, &["rollouts", "create", "--package", &package_id, "--device", device_id, "--waves", "100"]).await;
        assert_eq!(created["state"], "ready", "{created}");
        let rollout_id = created["id"].as_str().unwrap().to_string();
        assert_eq!(herd_json(&config, &["rollouts", "start", &rollout_id]).await["state"], "running");
        let paused = herd_json(&config, &["rollouts", "pause", &rollout_id, "--reason", "checking the logs"]).await;
        assert_eq!(paused["state"], "paused", "{paused}");
        assert_eq!(paused["reason"], "checking the logs", "{paused}");
        assert_eq!(herd_json(&config, &["rollouts", "resume", &rollout_id]).await["state"], "running");
        assert_eq!(herd_json(&config, &["rollouts", "cancel", &rollout_id]).await["state"], "cancelled");
        let shown = herd_ok(&config, &["rollouts", "get", &rollout_id]).await;
        assert!(shown.lines().any(|l| l.starts_with("state") && l.ends_with("cancelled")), "{shown}");
        let listed = herd_ok(&config, &["rollouts", "list"]).await;
        assert!(listed.contains(&rollout_id), "{listed}");
        // Cancelling twice: the server's 409, a non-zero exit.
        let output = herd(&config, &["rollouts", "cancel", &rollout_id]).await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
    }
}
