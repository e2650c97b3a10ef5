//! Hardening of the HTTP edge (issue 10): control characters in text, wrong JSON values,
//! bounded times, file modes of the data directory, event-stream re-authentication and caps,
//! and the connection limits (header-read timeout, connection cap).

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    engine_tests, expect_json, expect_problem, spawn_app_with, Engine, SpawnOptions, TestApp, ADMIN_TOKEN,
};

/// The `field`s of a 422 problem.
fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|f| f["field"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A registered device of the default tenant; answers its id.
async fn device(app: &TestApp, serial: &str) -> String {
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let (device, _) = app.register(&enroll, json!({ "serialNumber": serial })).await;
    device["id"].as_str().unwrap().to_string()
}

async fn put(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.request(Method::PUT, path, Some(ADMIN_TOKEN), Some(body)).await
}

engine_tests! {
    async fn a_nul_or_control_character_in_text_is_a_422_and_changes_nothing(app) {
        let id = device(&app, "CTRL-1").await;
        let path = format!("/devices/{id}/settings");
        expect_json(put(&app, &path, json!({ "notes": "first\nline\tok" })).await, StatusCode::OK).await;

        let problem = expect_problem(put(&app, &path, json!({ "notes": "a\u{0000}b" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["notes"], "{problem}");
        let problem = expect_problem(put(&app, &path, json!({ "notes": "bell\u{0007}", "tags": ["x\u{001b}"] })).await,
            StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["notes", "tags[0]"], "{problem}");
        let settings = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(settings["notes"], "first\nline\tok", "nothing changed: {settings}");
        assert_eq!(settings["version"], 1);

        // Names hold no control character at all, not even a tab or DEL.
        for name in ["a\u{0001}b", "tab\tname", "del\u{007f}", "c1\u{0085}"] {
            let response = app.patch(&format!("/devices/{id}"), ADMIN_TOKEN, json!({ "name": name })).await;
            let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(fields(&problem), ["name"], "{name:?}: {problem}");
        }
        let problem = expect_problem(
            app.post("/devices", ADMIN_TOKEN, json!({ "name": "x\u{0000}", "serialNumber": "CTRL-2" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ).await;
        assert!(fields(&problem).contains(&"name".to_string()), "{problem}");
        let device = expect_json(app.get(&format!("/devices/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(!device["name"].as_str().unwrap().chars().any(char::is_control), "{device}");

        // Query strings and the enrollment path too.
        let problem = expect_problem(app.get("/devices?q=a%00b", ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["q"], "{problem}");
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let response = app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "NUL\u{0000}" })).await;
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["serialNumber"], "{problem}");
        let list = expect_json(app.get("/devices", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "no device was made: {list}");
    }

    async fn valid_json_with_a_wrong_value_is_a_422_naming_the_field(app) {
        let id = device(&app, "VAL-1").await;
        let cases = [
            (Method::POST, "/tokens".to_string(), json!({ "name": "t", "role": null }), "role"),
            (Method::POST, "/tokens".to_string(), json!({ "name": "t", "role": 3 }), "role"),
            (Method::POST, "/tokens".to_string(), json!({ "name": "t", "role": "emperor" }), "role"),
            (Method::POST, "/tokens".to_string(), json!({ "name": 5, "role": "viewer" }), "name"),
            (Method::PUT, format!("/devices/{id}/settings"), json!({ "tags": "one" }), "tags"),
            (Method::PUT, format!("/devices/{id}/settings"), json!({ "version": "1" }), "version"),
            (Method::PATCH, format!("/devices/{id}"), json!({ "tags": [1] }), "tags[0]"),
            (Method::POST, "/devices".to_string(), json!({ "serialNumber": true }), "serialNumber"),
            (Method::POST, "/monitoring-rules".to_string(),
                json!({ "name": "cpu", "metric": null, "operator": "gt", "threshold": 90, "severity": "warning" }), "metric"),
            (Method::POST, "/monitoring-rules".to_string(),
                json!({ "name": "cpu", "metric": "cpu", "operator": "gt", "threshold": "high", "severity": "warning" }), "threshold"),
            (Method::POST, "/enrollment-tokens".to_string(), json!({ "maxUses": -1 }), "maxUses"),
            (Method::POST, "/tenants".to_string(), json!({ "name": ["acme"] }), "name"),
        ];
        for (method, path, body, field) in cases {
            let response = app.request(method.clone(), &path, Some(ADMIN_TOKEN), Some(body.clone())).await;
            let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(fields(&problem), [field], "{method} {path} {body}: {problem}");
        }
        // Only text that is not JSON is a 400.
        let response = app.client.post(app.url("/tokens")).bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json").body(r#"{"role": nul}"#).send().await.unwrap();
        expect_problem(response, StatusCode::BAD_REQUEST).await;
        let tokens = expect_json(app.get("/tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(tokens["items"].as_array().unwrap().iter().all(|t| t["name"] != "t"), "no token was made: {tokens}");
    }

    async fn every_time_a_client_sends_is_bounded(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, device_token) = app.register(&enroll, json!({ "serialNumber": "TIME-1" })).await;
        let id = device["id"].as_str().unwrap();
        let extremes = ["-262143-01-01T00:00:00Z", "+262142-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"];
        for at in extremes {
            let q = at.replace('+', "%2B").replace(':', "%3A");
            for (path, field) in [
                (format!("/devices/{id}/metrics?to={q}"), "to"),
                (format!("/devices/{id}/metrics?from={q}"), "from"),
                (format!("/alerts?since={q}"), "since"),
            ] {
                let problem = expect_problem(app.get(&path, ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
                assert_eq!(fields(&problem), [field], "{path}: {problem}");
            }
            for (token, path, body, field) in [
                (device_token.as_str(), "/devices/metrics", json!({ "cpu": 1.0, "recordedAt": at }), "recordedAt"),
                (device_token.as_str(), "/devices/metrics", json!({ "samples": [{ "cpu": 1.0 }, { "cpu": 2.0, "recordedAt": at }] }), "samples[1].recordedAt"),
                (ADMIN_TOKEN, "/tokens", json!({ "name": "t", "role": "viewer", "expiresAt": at }), "expiresAt"),
                (ADMIN_TOKEN, "/enrollment-tokens", json!({ "expiresAt": at }), "expiresAt"),
            ] {
                let problem = expect_problem(app.post(path, token, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
                assert_eq!(fields(&problem), [field], "{path} {body}: {problem}");
            }
        }
        // The ends of the range itself are times like any other.
        let path = format!("/devices/{id}/metrics?from=1970-01-01T00%3A00%3A00Z&to=1970-01-02T00%3A00%3A00Z");
        expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        let path = format!("/devices/{id}/metrics?to=1970-01-01T00%3A00%3A00Z");
        expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        expect_json(app.get("/alerts?since=9999-12-31T23%3A59%3A59Z", ADMIN_TOKEN).await, StatusCode::OK).await;
        let history = expect_json(app.get(&format!("/devices/{id}/metrics"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(history["latest"].is_null(), "no sample was stored: {history}");
    }

    async fn the_data_directory_and_database_files_are_private(app) {
        // The test app's own data directory comes from tempfile (already 0700): start a second
        // app on a directory that does not exist yet, as a first start would.
        let engine = app.engine;
        drop(app);
        let app = spawn_app_with(engine, SpawnOptions {
            adjust: Box::new(move |settings| {
                settings.data_dir = settings.data_dir.join("fresh").join("herd-data");
                if engine == Engine::Sqlite {
                    settings.database_url = format!("sqlite://{}", settings.data_dir.join("herd.db").display()).into();
                }
            }),
            ..SpawnOptions::default()
        }).await;
        // Write something, so that the WAL and shared-memory files exist.
        device(&app, "MODE-1").await;
        let data_dir = app.settings.data_dir.clone();
        let modes = modes_under(&data_dir);
        assert_eq!(mode_of(&data_dir), 0o700, "{modes:?}");
        if engine == Engine::Sqlite {
            for name in ["herd.db", "herd.db-wal", "herd.db-shm"] {
                assert_eq!(mode_of(&data_dir.join(name)), 0o600, "{name}: {modes:?}");
            }
        }
        for (path, mode) in &modes {
            let name = path.file_name().unwrap().to_str().unwrap();
            if path.is_dir() {
                assert_eq!(*mode, 0o700, "{}", path.display());
            } else if !(name.ends_with("cert.pem") || name.ends_with(".crl")) {
                // Keys, the database and everything else herd writes: the owner's only.
                assert_eq!(*mode & 0o077, 0, "{} is {mode:o}", path.display());
            }
        }
        assert!(modes.iter().any(|(p, m)| p.to_str().unwrap().ends_with("key.pem") && *m == 0o600), "{modes:?}");

        // A database left 0644 by an earlier version is made private at the next start.
        if engine == Engine::Sqlite {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir.join("herd.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
            let app = app.restart().await;
            assert_eq!(mode_of(&data_dir.join("herd.db")), 0o600);
            expect_json(app.get("/devices", ADMIN_TOKEN).await, StatusCode::OK).await;
        }
    }

    async fn revoking_a_token_ends_its_open_event_streams(app) {
        let app = with_settings(app, |s| s.event_stream_recheck_interval = Duration::from_millis(200)).await;
        let (id, token) = api_token(&app, "viewer").await;
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;

        // A stream that is idle when the token is revoked ends within the re-check interval.
        let idle = app.get("/events/stream", &token).await;
        assert_eq!(idle.status(), StatusCode::OK);
        // A stream that is busy sends what was committed before the revocation and nothing after.
        let busy = app.get("/events/stream", &token).await;
        let mut busy = Box::pin(busy.bytes_stream());
        app.register(&enroll, json!({ "serialNumber": "BEFORE-REVOKE" })).await;
        let before = read_until(&mut busy, |text| text.contains("BEFORE-REVOKE")).await;
        assert!(before.is_some(), "the live stream delivers");

        assert_eq!(app.delete(&format!("/tokens/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        app.register(&enroll, json!({ "serialNumber": "AFTER-REVOKE" })).await;
        let rest = read_to_end(&mut busy).await;
        assert!(!rest.contains("AFTER-REVOKE"), "an event after the revocation was sent: {rest}");
        let rest = read_to_end(&mut Box::pin(idle.bytes_stream())).await;
        assert!(!rest.contains("AFTER-REVOKE"), "{rest}");
        expect_problem(app.get("/events/stream", &token).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn open_event_streams_are_capped_per_token_and_per_tenant(app) {
        let app = with_settings(app, |s| {
            s.event_streams_per_token = 2;
            s.event_streams_per_tenant = 3;
            s.event_stream_recheck_interval = Duration::from_millis(200);
        }).await;
        let (_, a) = api_token(&app, "viewer").await;
        let (b_id, b) = api_token(&app, "viewer").await;
        let (_, c) = api_token(&app, "viewer").await;
        let mut open = Vec::new();
        for token in [&a, &a] {
            let response = app.get("/events/stream", token).await;
            assert_eq!(response.status(), StatusCode::OK);
            open.push(response);
        }
        let problem = expect_problem(app.get("/events/stream", &a).await, StatusCode::TOO_MANY_REQUESTS).await;
        assert!(problem["detail"].as_str().unwrap().contains("token"), "{problem}");
        let b_stream = app.get("/events/stream", &b).await;
        assert_eq!(b_stream.status(), StatusCode::OK);
        let problem = expect_problem(app.get("/events/stream", &c).await, StatusCode::TOO_MANY_REQUESTS).await;
        assert!(problem["detail"].as_str().unwrap().contains("tenant"), "{problem}");
        // Another tenant has caps of its own.
        let (_, other_admin) = app.create_tenant("other").await;
        assert_eq!(app.get("/events/stream", &other_admin).await.status(), StatusCode::OK);

        // A stream that ends gives its place back.
        assert_eq!(app.delete(&format!("/tokens/{b_id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        read_to_end(&mut Box::pin(b_stream.bytes_stream())).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = app.get("/events/stream", &c).await;
            if response.status() == StatusCode::OK {
                break;
            }
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(tokio::time::Instant::now() < deadline, "the ended stream's place was not given back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(open);
    }
}

/// Restarts `app` with changed settings (same database and data directory).
async fn with_settings(app: TestApp, change: impl FnOnce(&mut herd::config::Settings)) -> TestApp {
    let mut app = app;
    change(&mut app.settings);
    app.restart().await
}

/// A new API token of the default tenant: `(id, secret)`.
async fn api_token(app: &TestApp, role: &str) -> (String, String) {
    let response = app.post("/tokens", ADMIN_TOKEN, json!({ "name": format!("{role} stream"), "role": role })).await;
    let body = expect_json(response, StatusCode::CREATED).await;
    (body["token"]["id"].as_str().unwrap().to_string(), body["secret"].as_str().unwrap().to_string())
}

/// Reads until `done` holds for the text so far (10 s at most); `None` if the stream ended first.
async fn read_until<B: AsRef<[u8]>>(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    done: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&text) {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("the stream went quiet")?;
        text.push_str(&String::from_utf8_lossy(chunk.ok()?.as_ref()));
    }
    Some(text)
}

/// Reads a stream to its end, which must come within a generous 10 s; answers what it sent.
async fn read_to_end<B: AsRef<[u8]>>(stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin)) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await.expect("the stream did not end") {
            Some(Ok(chunk)) => text.push_str(&String::from_utf8_lossy(chunk.as_ref())),
            Some(Err(_)) | None => return text,
        }
    }
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every directory and file under `dir`, with its mode.
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        found.push((path.clone(), mode_of(&path)));
        if path.is_dir() {
            found.extend(modes_under(&path));
        }
    }
    found
}

/// An app on SQLite with changed settings (the connection limits do not depend on the engine).
async fn app_with(change: impl FnOnce(&mut herd::config::Settings) + Send + 'static) -> TestApp {
    spawn_app_with(Engine::Sqlite, SpawnOptions { adjust: Box::new(change), ..SpawnOptions::default() }).await
}

/// Reads what the server sends until it closes the connection, which must happen within a
/// generous 10 s.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("the server kept the connection open")
        {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = app_with(|s| s.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: herd\r\nX-Slow: ").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // A connection that sends nothing at all goes the same way.
    let mut silent = tokio::net::TcpStream::connect(app.address).await.unwrap();
    read_until_closed(&mut silent).await;
    // And the server still answers others.
    expect_json(app.request(Method::GET, "/healthz", None, None).await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_stalls_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    // The request timeout (30 s) would end it too, but much later.
    let app = app_with(|s| s.idle_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /tokens HTTP/1.1\r\nHost: herd\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(!answer.contains("201 Created"), "{answer}");
    expect_json(app.request(Method::GET, "/healthz", None, None).await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_others_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app_with(|s| {
        s.max_connections = 2;
        s.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    // Two connections that hold their slots (they never send a request).
    let holders = [
        tokio::net::TcpStream::connect(app.address).await.unwrap(),
        tokio::net::TcpStream::connect(app.address).await.unwrap(),
    ];
    let mut waiting = tokio::net::TcpStream::connect(app.address).await.unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut byte)).await;
    assert!(early.is_err(), "a connection beyond the cap was served: {early:?}");

    drop(holders);
    let answer = read_until_closed(&mut waiting).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let fresh = reqwest::Client::new();
    let response = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
