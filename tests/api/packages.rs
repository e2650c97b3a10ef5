//! Software packages: upload with metadata, version-code monotonicity, validation before the
//! body, size limits and failed uploads that store nothing, range downloads for members and
//! the devices a rollout sent the package (resume, ETag, If-Range, 416), roles, cross-tenant 404s
//! and deletion; signed download links (no token, ranges, expiry, tampering, restarts, tenants)
//! and transfer bounds (an upload outlasts the request timeout but not a stall).

use std::path::Path;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, TestApp, ADMIN_TOKEN};

fn artifact(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn upload(app: &TestApp, token: &str, query: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/packages?{query}")))
        .bearer_auth(token)
        .header("content-type", "application/vnd.android.package-archive")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn download(app: &TestApp, path: &str, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path)).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Files under `<data-dir>/blobs`, temporary ones left out.
fn blob_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".tmp") {
                0
            } else if path.is_dir() {
                blob_files(&path)
            } else {
                1
            }
        })
        .sum()
}

async fn package_count(app: &TestApp, token: &str) -> usize {
    expect_json(app.get("/packages", token).await, StatusCode::OK).await["items"].as_array().unwrap().len()
}

/// A signed link's `(path without query, expires, signature)`.
fn link_parts(url: &str) -> (String, String, String) {
    let (path, query) = url.split_once('?').expect("a query");
    let mut expires = String::new();
    let mut signature = String::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = v.to_string(),
            Some(("signature", v)) => signature = v.to_string(),
            _ => panic!("unexpected {pair}"),
        }
    }
    (path.to_string(), expires, signature)
}

/// A GET without an `Authorization` header.
async fn anonymous(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// An upload whose body comes in `chunks` with `pause` before each.
async fn slow_upload(
    app: &TestApp,
    query: &str,
    chunks: Vec<Vec<u8>>,
    pause: std::time::Duration,
) -> Result<reqwest::Response, reqwest::Error> {
    let body = futures::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(chunk)
    });
    app.client
        .post(app.url(&format!("/packages?{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
}

engine_tests! {
    async fn a_package_is_uploaded_and_downloaded_in_ranges(app) {
        let bytes = artifact(300_000);
        let query = "name=player&version=2.4.1&versionCode=241&kind=apk&targetModels=X96,H96&notes=Faster";
        let created = expect_json(upload(&app, ADMIN_TOKEN, query, bytes.clone()).await, StatusCode::CREATED).await;
        assert_eq!(created["sha256"], hex_sha256(&bytes));
        assert_eq!(created["size"], bytes.len());
        assert_eq!(created["kind"], "apk");
        assert_eq!(created["versionCode"], 241);
        assert_eq!(created["targetModels"], json!(["X96", "H96"]));
        assert_eq!(created["notes"], "Faster");
        let id = created["id"].as_str().unwrap();
        assert_eq!(expect_json(app.get(&format!("/packages/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await["sha256"], created["sha256"]);
        let listed = expect_json(app.get("/packages?name=player", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        assert_eq!(expect_json(app.get("/packages?name=other", ADMIN_TOKEN).await, StatusCode::OK).await["items"], json!([]));

        let path = format!("/packages/{id}/download");
        let whole = download(&app, &path, ADMIN_TOKEN, &[]).await;
        assert_eq!(whole.status(), StatusCode::OK);
        let etag = whole.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", hex_sha256(&bytes)));
        assert_eq!(whole.headers()["accept-ranges"], "bytes");
        assert_eq!(whole.headers()["content-type"], "application/vnd.android.package-archive");
        assert_eq!(whole.headers()["content-length"], bytes.len().to_string().as_str());
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
        assert_eq!(whole.headers()["repr-digest"], format!("sha-256=:{b64}:").as_str());
        assert_eq!(whole.headers()["digest"], format!("sha-256={b64}").as_str());
        assert_eq!(whole.bytes().await.unwrap().to_vec(), bytes);

        let size = bytes.len();
        for (range, from, to) in [("bytes=0-9", 0, 10), ("bytes=1000-1999", 1000, 2000), ("bytes=299990-", 299_990, size), ("bytes=-5", size - 5, size), ("bytes=299999-500000", 299_999, size)] {
            let part = download(&app, &path, ADMIN_TOKEN, &[("range", range)]).await;
            assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(part.headers()["content-range"], format!("bytes {from}-{}/{size}", to - 1).as_str());
            assert_eq!(part.bytes().await.unwrap().to_vec(), bytes[from..to].to_vec(), "{range}");
        }
        let unsatisfiable = download(&app, &path, ADMIN_TOKEN, &[("range", "bytes=300000-")]).await;
        assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(unsatisfiable.headers()["content-range"], format!("bytes */{size}").as_str());
        let several = download(&app, &path, ADMIN_TOKEN, &[("range", "bytes=0-1,5-6")]).await;
        assert_eq!(several.status(), StatusCode::OK);

        // A download interrupted at 123,457 bytes resumes from there (If-Range with the ETag)
        // and the pieces hash to the artifact's SHA-256.
        let first = download(&app, &path, ADMIN_TOKEN, &[("range", "bytes=0-123456")]).await.bytes().await.unwrap();
        let rest = download(&app, &path, ADMIN_TOKEN, &[("range", "bytes=123457-"), ("if-range", &etag)]).await;
        assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
        let mut hasher = Sha256::new();
        hasher.update(&first);
        hasher.update(rest.bytes().await.unwrap());
        assert_eq!(hex::encode(hasher.finalize()), created["sha256"].as_str().unwrap());
        // If-Range with another ETag: the whole artifact. If-None-Match with this one: 304.
        let changed = download(&app, &path, ADMIN_TOKEN, &[("range", "bytes=5-"), ("if-range", "\"other\"")]).await;
        assert_eq!(changed.status(), StatusCode::OK);
        assert_eq!(changed.bytes().await.unwrap().len(), size);
        let cached = download(&app, &path, ADMIN_TOKEN, &[("if-none-match", &etag)]).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()["etag"], etag.as_str());
    }

    async fn devices_download_only_packages_a_rollout_sent_them(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (x96_device, x96) = app.register(&enroll, json!({ "serialNumber": "pkg-1", "model": "X96" })).await;
        let (other_device, other) = app.register(&enroll, json!({ "serialNumber": "pkg-2", "model": "T95" })).await;
        let bytes = artifact(5000);
        let targeted = expect_json(upload(&app, ADMIN_TOKEN, "name=fw&version=1&versionCode=1&kind=firmware&targetModels=X96", bytes.clone()).await, StatusCode::CREATED).await;
        let path = format!("/devices/self/packages/{}/download", targeted["id"].as_str().unwrap());
        // Before a rollout sends it, no device may fetch it, whatever its model.
        expect_problem(download(&app, &path, &x96, &[]).await, StatusCode::NOT_FOUND).await;
        let body = json!({ "packageId": targeted["id"], "target": { "deviceIds": [x96_device["id"], other_device["id"]] }, "waves": [100], "start": true });
        let rollout = expect_json(app.post("/rollouts", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
        // The T95 box was skipped (the package targets X96 only): still 404 for it.
        assert_eq!(rollout["counts"]["skipped"], 1, "{rollout}");
        expect_problem(download(&app, &path, &other, &[]).await, StatusCode::NOT_FOUND).await;
        let got = download(&app, &path, &x96, &[("range", "bytes=100-")]).await;
        assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.bytes().await.unwrap().to_vec(), bytes[100..].to_vec());
        // A member token is not a device token, and another tenant's device sees nothing.
        assert_eq!(download(&app, &path, ADMIN_TOKEN, &[]).await.status(), StatusCode::FORBIDDEN);
        let (_, other_admin) = app.create_tenant("pkg-other").await;
        let enroll = app.enrollment_token(&other_admin, json!({})).await;
        let (_, foreign) = app.register(&enroll, json!({ "serialNumber": "pkg-3", "model": "X96" })).await;
        expect_problem(download(&app, &path, &foreign, &[]).await, StatusCode::NOT_FOUND).await;
    }

    async fn version_codes_only_go_up_and_metadata_is_checked_before_the_body(app) {
        expect_json(upload(&app, ADMIN_TOKEN, "name=player&version=1.0&versionCode=10&kind=apk", artifact(100)).await, StatusCode::CREATED).await;
        for code in ["10", "9"] {
            let query = format!("name=player&version=0.9&versionCode={code}&kind=apk");
            expect_problem(upload(&app, ADMIN_TOKEN, &query, artifact(101)).await, StatusCode::CONFLICT).await;
        }
        expect_json(upload(&app, ADMIN_TOKEN, "name=player&version=1.1&versionCode=11&kind=apk", artifact(102)).await, StatusCode::CREATED).await;
        let blobs = app.data_dir().join("blobs");
        let before = blob_files(&blobs);
        for (query, field) in [
            ("version=1&versionCode=1&kind=apk", "name"),
            ("name=bad name&version=1&versionCode=1&kind=apk", "name"),
            ("name=a&versionCode=1&kind=apk", "version"),
            ("name=a&version=1&versionCode=x&kind=apk", "versionCode"),
            ("name=a&version=1&versionCode=-1&kind=apk", "versionCode"),
            ("name=a&version=1&versionCode=1&kind=deb", "kind"),
            ("name=a&version=1&versionCode=1", "kind"),
        ] {
            let problem = expect_problem(upload(&app, ADMIN_TOKEN, query, artifact(103)).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), vec![field.to_string()], "{query}");
        }
        assert_eq!(package_count(&app, ADMIN_TOKEN).await, 2);
        assert_eq!(blob_files(&blobs), before, "nothing stored");
    }

    async fn too_large_and_broken_uploads_store_nothing(app) {
        let mut app = app;
        app.settings.package_max_bytes = 4096;
        let app = app.restart().await;
        let blobs = app.data_dir().join("blobs");
        expect_problem(upload(&app, ADMIN_TOKEN, "name=big&version=1&versionCode=1&kind=file", artifact(5000)).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        // Without a Content-Length the limit is enforced while streaming.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|_| Ok(artifact(1000))).collect();
        let response = app.client.post(app.url("/packages?name=big&version=1&versionCode=1&kind=file")).bearer_auth(ADMIN_TOKEN)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).send().await.unwrap();
        expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
        // A body that fails halfway.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(artifact(1000)), Ok(artifact(1000)), Err(std::io::Error::other("cut"))];
        let sent = app.client.post(app.url("/packages?name=cut&version=1&versionCode=1&kind=file")).bearer_auth(ADMIN_TOKEN)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))).send().await;
        if let Ok(response) = sent {
            assert!(!response.status().is_success(), "{}", response.status());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(package_count(&app, ADMIN_TOKEN).await, 0);
        assert_eq!(blob_files(&blobs), 0, "nothing stored");
        expect_json(upload(&app, ADMIN_TOKEN, "name=cut&version=1&versionCode=1&kind=file", artifact(4096)).await, StatusCode::CREATED).await;
    }

    async fn roles_tenants_and_deletion(app) {
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_problem(upload(&app, &viewer, "name=a&version=1&versionCode=1&kind=file", artifact(10)).await, StatusCode::FORBIDDEN).await;
        let bytes = artifact(2000);
        let first = expect_json(upload(&app, &operator, "name=a&version=1&versionCode=1&kind=file", bytes.clone()).await, StatusCode::CREATED).await;
        // The same content under another version shares the blob.
        let second = expect_json(upload(&app, &operator, "name=a&version=2&versionCode=2&kind=file", bytes.clone()).await, StatusCode::CREATED).await;
        let (first, second) = (first["id"].as_str().unwrap().to_string(), second["id"].as_str().unwrap().to_string());
        assert_eq!(download(&app, &format!("/packages/{first}/download"), &viewer, &[]).await.status(), StatusCode::OK);
        expect_problem(app.delete(&format!("/packages/{first}"), &viewer).await, StatusCode::FORBIDDEN).await;

        let (_, other) = app.create_tenant("pkg-peek").await;
        expect_problem(app.get(&format!("/packages/{first}"), &other).await, StatusCode::NOT_FOUND).await;
        expect_problem(download(&app, &format!("/packages/{first}/download"), &other, &[]).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.delete(&format!("/packages/{first}"), &other).await, StatusCode::NOT_FOUND).await;
        assert_eq!(package_count(&app, &other).await, 0);

        assert_eq!(app.delete(&format!("/packages/{first}"), &operator).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.get(&format!("/packages/{first}"), ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        let kept = download(&app, &format!("/packages/{second}/download"), ADMIN_TOKEN, &[]).await;
        assert_eq!(kept.bytes().await.unwrap().to_vec(), bytes, "the shared blob is kept");
        let blobs = app.data_dir().join("blobs");
        assert_eq!(blob_files(&blobs), 1);
        assert_eq!(app.delete(&format!("/packages/{second}"), &operator).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(blob_files(&blobs), 0, "the last package's blob is deleted");
        let events = expect_json(app.get("/events?type=package.deleted", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(events["items"].as_array().unwrap().len(), 2);
        let events = expect_json(app.get("/events?type=package.created", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(events["items"].as_array().unwrap().len(), 2);
    }

    async fn signed_links_download_without_a_token_until_they_expire(app) {
        let bytes = artifact(70_000);
        let created = expect_json(upload(&app, ADMIN_TOKEN, "name=fw&version=1&versionCode=1&kind=firmware&targetModels=X96", bytes.clone()).await, StatusCode::CREATED).await;
        let id = created["id"].as_str().unwrap().to_string();
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (x96_device, x96) = app.register(&enroll, json!({ "serialNumber": "sig-1", "model": "X96" })).await;
        let (t95_device, t95) = app.register(&enroll, json!({ "serialNumber": "sig-2", "model": "T95" })).await;
        // No link before a rollout sends the package to the device.
        expect_problem(app.get(&format!("/devices/self/packages/{id}/download-url"), &x96).await, StatusCode::NOT_FOUND).await;
        let body = json!({ "packageId": id, "target": { "deviceIds": [x96_device["id"], t95_device["id"]] }, "waves": [100], "start": true });
        let rollout = expect_json(app.post("/rollouts", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;

        // A device gets a link for a package a rollout sent it (the T95 box was skipped: the
        // package targets X96), and only for that.
        let device_link = expect_json(app.get(&format!("/devices/self/packages/{id}/download-url"), &x96).await, StatusCode::OK).await;
        expect_problem(app.get(&format!("/devices/self/packages/{id}/download-url"), &t95).await, StatusCode::NOT_FOUND).await;
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let member_link = expect_json(app.get(&format!("/packages/{id}/download-url"), &viewer).await, StatusCode::OK).await;
        // Same package, same minute: the same URL, so a cache keyed on it holds one copy.
        assert_eq!(device_link["url"], member_link["url"]);
        let url = device_link["url"].as_str().unwrap().to_string();
        assert!(url.starts_with(&format!("/downloads/packages/{id}?")), "{url}");
        // Valid for 15 minutes (rounded up to the minute): the clock is at 12:00:00.
        assert_eq!(device_link["expiresAt"], "2026-01-01T12:16:00Z");

        let whole = anonymous(&app, &url, &[]).await;
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(whole.headers()["cache-control"], "public, max-age=960");
        assert_eq!(whole.headers()["etag"], format!("\"{}\"", hex_sha256(&bytes)).as_str());
        assert!(whole.headers().contains_key("repr-digest"));
        assert_eq!(whole.bytes().await.unwrap().to_vec(), bytes);
        let part = anonymous(&app, &url, &[("range", "bytes=1000-1999")]).await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()["content-range"], "bytes 1000-1999/70000");
        assert_eq!(part.bytes().await.unwrap().to_vec(), bytes[1000..2000].to_vec());
        let etag = format!("\"{}\"", hex_sha256(&bytes));
        assert_eq!(anonymous(&app, &url, &[("if-none-match", &etag)]).await.status(), StatusCode::NOT_MODIFIED);

        // Altered links send no byte: another signature, a later expiry, another package.
        let (path, expires, signature) = link_parts(&url);
        let mut flipped = signature.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let other = expect_json(upload(&app, ADMIN_TOKEN, "name=other&version=1&versionCode=1&kind=file", artifact(10)).await, StatusCode::CREATED).await;
        let later: i64 = expires.parse::<i64>().unwrap() + 3600;
        for altered in [
            format!("{path}?expires={expires}&signature={flipped}"),
            format!("{path}?expires={later}&signature={signature}"),
            format!("/downloads/packages/{}?expires={expires}&signature={signature}", other["id"].as_str().unwrap()),
            format!("{path}?expires={expires}"),
            format!("{path}?signature={signature}"),
            format!("{path}?expires=soon&signature={signature}"),
        ] {
            let problem = expect_problem(anonymous(&app, &altered, &[]).await, StatusCode::FORBIDDEN).await;
            assert!(problem["detail"].as_str().unwrap().contains("not valid"), "{altered}: {problem}");
        }

        // Expired: refused, with no byte.
        app.clock.advance(chrono::Duration::seconds(959));
        let last = anonymous(&app, &url, &[("range", "bytes=0-0")]).await;
        assert_eq!(last.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(last.headers()["cache-control"], "public, max-age=1");
        app.clock.advance(chrono::Duration::seconds(1));
        let problem = expect_problem(anonymous(&app, &url, &[]).await, StatusCode::FORBIDDEN).await;
        assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");

        // A deleted package's link is refused too; the token routes still answer as before.
        let fresh = expect_json(app.get(&format!("/packages/{id}/download-url"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let cancel = format!("/rollouts/{}/cancel", rollout["id"].as_str().unwrap());
        expect_json(app.post(&cancel, ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(app.delete(&format!("/packages/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(anonymous(&app, fresh["url"].as_str().unwrap(), &[]).await, StatusCode::FORBIDDEN).await;
    }

    async fn signed_links_survive_restarts_and_serve_from_every_instance(app) {
        let bytes = artifact(3000);
        let created = expect_json(upload(&app, ADMIN_TOKEN, "name=a&version=1&versionCode=1&kind=file", bytes.clone()).await, StatusCode::CREATED).await;
        let id = created["id"].as_str().unwrap().to_string();
        let link = expect_json(app.get(&format!("/packages/{id}/download-url"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let url = link["url"].as_str().unwrap().to_string();
        if app.engine == crate::helpers::Engine::Postgres {
            let second = app.second_instance().await;
            assert_eq!(anonymous(&second, &url, &[]).await.bytes().await.unwrap().to_vec(), bytes, "another instance");
        }
        let mut app = app;
        app.settings.public_url = Some("https://herd.example".into());
        let app = app.restart().await;
        let again = anonymous(&app, &url, &[]).await;
        assert_eq!(again.status(), StatusCode::OK, "after a restart");
        assert_eq!(again.bytes().await.unwrap().to_vec(), bytes);
        // With HERD_PUBLIC_URL the link is absolute under it (else a path to resolve).
        let absolute = expect_json(app.get(&format!("/packages/{id}/download-url"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(absolute["url"].as_str().unwrap(), format!("https://herd.example{url}"));
    }

    async fn another_tenant_gets_no_link_to_a_package(app) {
        let created = expect_json(upload(&app, ADMIN_TOKEN, "name=a&version=1&versionCode=1&kind=file", artifact(100)).await, StatusCode::CREATED).await;
        let id = created["id"].as_str().unwrap();
        let (_, other_admin) = app.create_tenant("sig-other").await;
        expect_problem(app.get(&format!("/packages/{id}/download-url"), &other_admin).await, StatusCode::NOT_FOUND).await;
        let enroll = app.enrollment_token(&other_admin, json!({})).await;
        let (_, foreign) = app.register(&enroll, json!({ "serialNumber": "sig-3" })).await;
        expect_problem(app.get(&format!("/devices/self/packages/{id}/download-url"), &foreign).await, StatusCode::NOT_FOUND).await;
        // A member token is not a device token; no token at all is 401.
        assert_eq!(app.get(&format!("/devices/self/packages/{id}/download-url"), ADMIN_TOKEN).await.status(), StatusCode::FORBIDDEN);
        expect_problem(anonymous(&app, &format!("/packages/{id}/download-url"), &[]).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn uploads_outlast_the_request_timeout_but_not_a_stall(app) {
        let mut app = app;
        app.settings.request_timeout = std::time::Duration::from_secs(1);
        let app = app.restart().await;
        let blobs = app.data_dir().join("blobs");
        // Six pauses of 400 ms: 2.4 s in all, over the 1 s request timeout, each under it.
        let chunks: Vec<Vec<u8>> = (0..6).map(|_| artifact(1000)).collect();
        let whole: Vec<u8> = chunks.concat();
        let response = slow_upload(&app, "name=slow&version=1&versionCode=1&kind=file", chunks, std::time::Duration::from_millis(400)).await.unwrap();
        let created = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(created["sha256"], hex_sha256(&whole));
        // Any other route keeps the 1 s request timeout: a JSON body sent as slowly is cut off.
        let json_chunks: Vec<Vec<u8>> = vec![b"{\"name\":".to_vec(), b"\"slow\",".to_vec(), b"\"role\":\"viewer\"}".to_vec()];
        let body = futures::stream::iter(json_chunks).then(|chunk| async move {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            Ok::<_, std::io::Error>(chunk)
        });
        let response = app.client.post(app.url("/tokens")).bearer_auth(ADMIN_TOKEN).header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body)).send().await.unwrap();
        expect_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;

        // A body that stops for 3 s fails after 1 s with a 408, and stores nothing.
        let before = blob_files(&blobs);
        let chunks = vec![artifact(1000), artifact(1000)];
        let started = std::time::Instant::now();
        let body = futures::stream::iter(chunks.into_iter().enumerate()).then(|(i, chunk)| async move {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            Ok::<_, std::io::Error>(chunk)
        });
        let sent = app.client.post(app.url("/packages?name=stalled&version=1&versionCode=1&kind=file")).bearer_auth(ADMIN_TOKEN)
            .body(reqwest::Body::wrap_stream(body)).send().await;
        match sent {
            Ok(response) => {
                let problem = expect_problem(response, StatusCode::REQUEST_TIMEOUT).await;
                assert!(problem["detail"].as_str().unwrap().contains("no byte"), "{problem}");
                assert!(started.elapsed() < std::time::Duration::from_millis(2900), "answered at the stall bound");
            }
            Err(error) => panic!("the stalled upload got no answer: {error}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let listed = expect_json(app.get("/packages?name=stalled", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"], json!([]));
        assert_eq!(blob_files(&blobs), before, "nothing stored");

        // HERD_TRANSFER_TIMEOUT bounds the whole upload: 8 × 400 ms is past a 2 s bound.
        let mut app = app;
        app.settings.transfer_timeout = std::time::Duration::from_secs(2);
        let app = app.restart().await;
        let chunks: Vec<Vec<u8>> = (0..8).map(|_| artifact(1000)).collect();
        let response = slow_upload(&app, "name=long&version=1&versionCode=1&kind=file", chunks, std::time::Duration::from_millis(400)).await.unwrap();
        expect_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let listed = expect_json(app.get("/packages?name=long", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"], json!([]));
        assert_eq!(blob_files(&blobs), before, "nothing stored");
    }
}
