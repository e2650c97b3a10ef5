//! The console's software updates pages over real HTTP: the list of packages and rollouts, the
//! multipart upload form (streamed into the API's upload, CSRF-checked from its first field),
//! the rollout form and its field errors, the rollout page's actions, roles and tenants.

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::console::Browser;
use crate::helpers::{engine_tests, expect_json, TestApp, ADMIN_TOKEN};

const BOUNDARY: &str = "herd-test-boundary-5c0ffee";

/// A `multipart/form-data` body with `fields` in order, then the file (when given).
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    if let Some((file_name, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
                 Content-Type: application/vnd.android.package-archive\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// POSTs the upload form as a browser would (no redirects followed).
async fn post_upload(app: &TestApp, browser: &Browser, body: Vec<u8>) -> reqwest::Response {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    client
        .post(app.url("/ui/updates/packages"))
        .header(COOKIE, &browser.cookie)
        .header(CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn artifact(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 17 % 253) as u8).collect()
}

async fn packages(app: &TestApp, token: &str) -> Vec<Value> {
    expect_json(app.get("/packages", token).await, StatusCode::OK).await["items"].as_array().unwrap().clone()
}

async fn rollouts(app: &TestApp, token: &str) -> Vec<Value> {
    expect_json(app.get("/rollouts", token).await, StatusCode::OK).await["items"].as_array().unwrap().clone()
}

async fn api_package(app: &TestApp, token: &str, name: &str, bytes: Vec<u8>) -> Value {
    let response = app
        .client
        .post(app.url(&format!("/packages?kind=apk&name={name}&version=2.0&versionCode=20&targetModels=X96")))
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    expect_json(response, StatusCode::CREATED).await
}

/// Registers `n` X96 devices; answers (id, device token) pairs.
async fn fleet(app: &TestApp, admin: &str, n: usize, prefix: &str) -> Vec<(String, String)> {
    let enroll = app.enrollment_token(admin, json!({})).await;
    let mut out = Vec::new();
    for i in 0..n {
        let (device, token) =
            app.register(&enroll, json!({ "serialNumber": format!("{prefix}-{i}"), "model": "X96" })).await;
        out.push((device["id"].as_str().unwrap().to_string(), token));
    }
    out
}

async fn api_rollout(app: &TestApp, token: &str, body: Value) -> Value {
    expect_json(app.post("/rollouts", token, body).await, StatusCode::CREATED).await
}

async fn state_of(app: &TestApp, id: &str) -> Value {
    expect_json(app.get(&format!("/rollouts/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

engine_tests! {
    async fn the_updates_page_lists_packages_and_rollouts_and_says_what_to_do_when_empty(app) {
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let (status, empty) = browser.get("/ui/updates").await;
        assert_eq!(status, StatusCode::OK);
        assert!(empty.contains("No packages yet") && empty.contains("Upload a package first"), "{empty}");

        fleet(&app, ADMIN_TOKEN, 2, "list").await;
        let package = api_package(&app, ADMIN_TOKEN, "com.example.player", artifact(4096)).await;
        let sha = package["sha256"].as_str().unwrap();
        let rollout = api_rollout(&app, ADMIN_TOKEN, json!({
            "packageId": package["id"], "target": { "all": true }, "waves": [50, 100], "start": true,
        })).await;
        let (status, html) = browser.get("/ui/updates").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("com.example.player") && html.contains("X96"), "{html}");
        assert!(html.contains("4.0 KiB"), "a human-readable size");
        assert!(html.contains(&format!("title=\"{sha}\"")) && html.contains(&format!("{}…", &sha[..12])), "the short hash, whole in its title");
        assert!(html.contains(&format!("href=\"/ui/updates/rollouts/{}\"", rollout["id"].as_str().unwrap())));
        assert!(html.contains("s-running") && html.contains("1 / 2"), "state badge and wave");
        assert!(html.contains("<progress") && html.contains("0 of 2 finished"));
        assert!(html.contains("data-live=\"rollout."), "the rollouts refresh on rollout events");
    }

    async fn an_upload_through_the_form_streams_into_a_package_and_needs_the_csrf_token(app) {
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let (status, form) = browser.get("/ui/updates/packages/new").await;
        assert_eq!(status, StatusCode::OK);
        assert!(form.contains("enctype=\"multipart/form-data\""));
        let first_input = form.split("action=\"/ui/updates/packages\"").nth(1).unwrap();
        assert!(first_input.split("<input").nth(1).unwrap().contains("name=\"_csrf\""), "the token is the form's first field");

        let metadata = [
            ("kind", "apk"), ("name", "com.example.player"), ("version", "2.4.1"), ("versionCode", "241"),
            ("targetModels", "X96, H96"), ("notes", "Faster start"),
        ];

        // Without the token, with a wrong one, or with the token after the file's fields: refused, nothing stored.
        // These are refused at the first field, before the file is read, and the connection is
        // closed; a file that fits the socket buffers lets the client finish writing and read
        // the 403 (a larger one may meet the closed connection mid-write: a broken pipe).
        let file = artifact(64 * 1024);
        let missing = post_upload(&app, &browser, multipart(&metadata, Some(("player.apk", &file)))).await;
        assert_eq!(missing.status(), StatusCode::FORBIDDEN);
        let mut wrong_fields = vec![("_csrf", "0000")];
        wrong_fields.extend_from_slice(&metadata);
        let wrong = post_upload(&app, &browser, multipart(&wrong_fields, Some(("player.apk", &file)))).await;
        assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
        let mut late_fields = metadata.to_vec();
        late_fields.push(("_csrf", browser.csrf.as_str()));
        let late = post_upload(&app, &browser, multipart(&late_fields, Some(("player.apk", &file)))).await;
        assert_eq!(late.status(), StatusCode::FORBIDDEN);
        assert!(packages(&app, ADMIN_TOKEN).await.is_empty(), "refused uploads create nothing");
        // Larger than the server's 1 MiB body limit: the file is streamed, not buffered.
        let file = artifact(3 * 1024 * 1024 + 5);

        // A bad field is shown beside its input (the API's message), and nothing is stored.
        let mut bad = vec![("_csrf", browser.csrf.as_str())];
        bad.extend(metadata.iter().map(|&(k, v)| if k == "versionCode" { (k, "soon") } else { (k, v) }));
        let refused = post_upload(&app, &browser, multipart(&bad, Some(("player.apk", &file)))).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let page = refused.text().await.unwrap();
        assert!(page.contains("f-versionCode-error") && page.contains("must be a non-negative integer"), "{page}");
        assert!(page.contains("value=\"com.example.player\""), "the form keeps what was typed");
        assert!(packages(&app, ADMIN_TOKEN).await.is_empty());

        let mut fields = vec![("_csrf", browser.csrf.as_str())];
        fields.extend_from_slice(&metadata);
        let uploaded = post_upload(&app, &browser, multipart(&fields, Some(("player.apk", &file)))).await;
        assert_eq!(uploaded.status(), StatusCode::SEE_OTHER);
        assert_eq!(uploaded.headers()[LOCATION], "/ui/updates");
        let list = packages(&app, ADMIN_TOKEN).await;
        assert_eq!(list.len(), 1);
        let package = &list[0];
        assert_eq!(package["sha256"], hex::encode(Sha256::digest(&file)));
        assert_eq!(package["size"], file.len() as u64);
        assert_eq!(package["versionCode"], 241);
        assert_eq!(package["targetModels"], json!(["X96", "H96"]));
        assert_eq!(package["notes"], "Faster start");
        assert_eq!(package["contentType"], "application/vnd.android.package-archive");
        let downloaded = app.get(&format!("/packages/{}/download", package["id"].as_str().unwrap()), ADMIN_TOKEN).await;
        assert_eq!(downloaded.bytes().await.unwrap().as_ref(), file.as_slice());

        // The same version code again: the API's 409, shown on the form.
        let again = post_upload(&app, &browser, multipart(&fields, Some(("player.apk", &file)))).await;
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert!(again.text().await.unwrap().contains("versionCode must be above 241"));
        // No file chosen.
        let no_file = post_upload(&app, &browser, multipart(&fields, None)).await;
        assert_eq!(no_file.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(no_file.text().await.unwrap().contains("choose the file to upload"));
        assert_eq!(packages(&app, ADMIN_TOKEN).await.len(), 1);
    }

    async fn creating_a_rollout_through_the_form_shows_the_apis_field_errors(app) {
        fleet(&app, ADMIN_TOKEN, 3, "form").await;
        let package = api_package(&app, ADMIN_TOKEN, "com.example.player", artifact(1000)).await;
        let package_id = package["id"].as_str().unwrap();
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let (status, form) = browser.get(&format!("/ui/updates/rollouts/new?package={package_id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(form.contains(&format!("value=\"{package_id}\" selected")), "{form}");

        let fields = |waves: &'static str| {
            vec![
                ("package_id", package_id.to_string()), ("target", "all".into()), ("waves", waves.into()),
                ("soak_seconds", "60".into()), ("failure_threshold", "20".into()), ("start", "true".into()),
            ]
        };
        let send = |fields: Vec<(&'static str, String)>| {
            let browser = &browser;
            async move {
                let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                browser.post("/ui/updates/rollouts", &pairs).await
            }
        };
        // The API's own message for waves that do not end at 100, beside the waves input.
        let bad = send(fields("10,50")).await;
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let page = bad.text().await.unwrap();
        assert!(page.contains("f-waves-error") && page.contains("strictly increasing percentages"), "{page}");
        assert!(page.contains("value=\"10,50\""), "the form keeps what was typed");
        // Not numbers at all.
        let words = send(fields("some,most")).await;
        assert_eq!(words.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(words.text().await.unwrap().contains("f-waves-error"));
        // A tag target without a tag: the API's target.tag error beside the tag input.
        let mut no_tag = fields("50,100");
        no_tag[1].1 = "tag".into();
        let no_tag = send(no_tag).await;
        assert_eq!(no_tag.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(no_tag.text().await.unwrap().contains("f-target-tag-error"));
        assert!(rollouts(&app, ADMIN_TOKEN).await.is_empty(), "failed forms create nothing");

        let created = send(fields("50,100")).await;
        assert_eq!(created.status(), StatusCode::SEE_OTHER);
        let location = created.headers()[LOCATION].to_str().unwrap().to_string();
        let list = rollouts(&app, ADMIN_TOKEN).await;
        assert_eq!(list.len(), 1);
        assert_eq!(location, format!("/ui/updates/rollouts/{}", list[0]["id"].as_str().unwrap()));
        assert_eq!(list[0]["state"], "running");
        assert_eq!(list[0]["soakSeconds"], 60);
        assert_eq!(list[0]["failureThreshold"], 20);
        assert_eq!(list[0]["waves"].as_array().unwrap().len(), 2);
        let (status, page) = browser.get(&location).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("the whole tenant") && page.contains("com.example.player 2.0"), "{page}");
    }

    async fn pause_resume_and_cancel_through_the_forms_change_the_rollout(app) {
        let devices = fleet(&app, ADMIN_TOKEN, 2, "act").await;
        let package = api_package(&app, ADMIN_TOKEN, "com.example.player", artifact(1000)).await;
        let rollout = api_rollout(&app, ADMIN_TOKEN, json!({
            "packageId": package["id"], "target": { "all": true }, "waves": [100], "failureThreshold": 100, "start": true,
        })).await;
        let id = rollout["id"].as_str().unwrap().to_string();
        // One device fails: the page lists it with its reason.
        let (_, token) = &devices[0];
        let report_path = format!("/devices/self/updates/{id}");
        let report = |state: Value| app.post(&report_path, token, state);
        expect_json(report(json!({ "state": "downloading" })).await, StatusCode::OK).await;
        expect_json(report(json!({ "state": "failed", "reason": "INSTALL_FAILED_NO_SPACE" })).await, StatusCode::OK).await;

        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let page_path = format!("/ui/updates/rollouts/{id}");
        let (status, page) = browser.get(&page_path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("INSTALL_FAILED_NO_SPACE") && page.contains(&devices[0].0), "{page}");
        assert!(page.contains("1 failed") && page.contains("1 of 2 finished"));
        assert!(page.contains(&format!("action=\"{page_path}/pause\"")) && page.contains(&format!("action=\"{page_path}/cancel\"")));
        assert!(!page.contains(&format!("action=\"{page_path}/resume\"")));
        assert!(page.contains("data-confirm="), "cancel asks first");

        let paused = browser.post(&format!("{page_path}/pause"), &[("reason", "checking the failure")]).await;
        assert_eq!(paused.status(), StatusCode::SEE_OTHER);
        assert_eq!(paused.headers()[LOCATION], page_path.as_str());
        let now = state_of(&app, &id).await;
        assert_eq!(now["state"], "paused");
        assert_eq!(now["reason"], "checking the failure");
        let (_, page) = browser.get(&page_path).await;
        assert!(page.contains("checking the failure") && page.contains(&format!("action=\"{page_path}/resume\"")));
        // Pausing again is the API's 409, shown on the page.
        let twice = browser.post(&format!("{page_path}/pause"), &[]).await;
        assert_eq!(twice.status(), StatusCode::CONFLICT);
        assert!(twice.text().await.unwrap().contains("cannot pause a rollout that is paused"));

        let resumed = browser.post(&format!("{page_path}/resume"), &[]).await;
        assert_eq!(resumed.status(), StatusCode::SEE_OTHER);
        assert_eq!(state_of(&app, &id).await["state"], "running");

        // The package cannot go while the rollout sends it: the API's 409 message.
        let package_id = package["id"].as_str().unwrap();
        let in_use = browser.post(&format!("/ui/updates/packages/{package_id}/delete"), &[]).await;
        assert_eq!(in_use.status(), StatusCode::CONFLICT);
        assert!(in_use.text().await.unwrap().contains("cancel it first"));

        let cancelled = browser.post(&format!("{page_path}/cancel"), &[]).await;
        assert_eq!(cancelled.status(), StatusCode::SEE_OTHER);
        assert_eq!(state_of(&app, &id).await["state"], "cancelled");
        let (_, page) = browser.get(&page_path).await;
        assert!(!page.contains(&format!("action=\"{page_path}/")), "a cancelled rollout has no buttons");

        let deleted = browser.post(&format!("/ui/updates/packages/{package_id}/delete"), &[]).await;
        assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
        assert!(packages(&app, ADMIN_TOKEN).await.is_empty());
        let (_, page) = browser.get(&page_path).await;
        assert!(page.contains("deleted package"));
        let unknown = browser.post(&format!("{page_path}/explode"), &[]).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }

    async fn a_viewer_sees_no_controls_and_its_forged_posts_are_refused(app) {
        fleet(&app, ADMIN_TOKEN, 1, "view").await;
        let package = api_package(&app, ADMIN_TOKEN, "com.example.player", artifact(1000)).await;
        let package_id = package["id"].as_str().unwrap();
        let rollout = api_rollout(&app, ADMIN_TOKEN, json!({
            "packageId": package_id, "target": { "all": true }, "waves": [100], "start": true,
        })).await;
        let id = rollout["id"].as_str().unwrap();
        let viewer = Browser::signed_in(&app, "watcher", "viewer").await;
        let (status, list) = viewer.get("/ui/updates").await;
        assert_eq!(status, StatusCode::OK);
        assert!(list.contains("com.example.player"));
        for control in ["/ui/updates/packages/new", "/delete", "/ui/updates/rollouts/new"] {
            assert!(!list.contains(control), "a viewer sees no {control}");
        }
        let (_, page) = viewer.get(&format!("/ui/updates/rollouts/{id}")).await;
        assert!(!page.contains(&format!("action=\"/ui/updates/rollouts/{id}/")), "no buttons for a viewer");
        assert_eq!(viewer.get("/ui/updates/packages/new").await.0, StatusCode::FORBIDDEN);
        assert_eq!(viewer.get("/ui/updates/rollouts/new").await.0, StatusCode::FORBIDDEN);

        for action in ["pause", "cancel"] {
            let forged = viewer.post(&format!("/ui/updates/rollouts/{id}/{action}"), &[]).await;
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{action}");
        }
        assert_eq!(state_of(&app, id).await["state"], "running");
        let forged = viewer.post(&format!("/ui/updates/packages/{package_id}/delete"), &[]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let forged = viewer
            .post("/ui/updates/rollouts", &[("package_id", package_id), ("target", "all"), ("waves", "100")])
            .await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert_eq!(rollouts(&app, ADMIN_TOKEN).await.len(), 1);
        let upload = multipart(
            &[("_csrf", viewer.csrf.as_str()), ("kind", "apk"), ("name", "com.example.other"), ("version", "1"), ("versionCode", "1")],
            Some(("other.apk", &artifact(100))),
        );
        assert_eq!(post_upload(&app, &viewer, upload).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(packages(&app, ADMIN_TOKEN).await.len(), 1);
    }

    async fn another_tenants_rollout_is_not_found(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        fleet(&app, &other_admin, 1, "other").await;
        let package = api_package(&app, &other_admin, "com.other.app", artifact(1000)).await;
        let rollout = api_rollout(&app, &other_admin, json!({
            "packageId": package["id"], "target": { "all": true }, "waves": [100], "start": true,
        })).await;
        let id = rollout["id"].as_str().unwrap();

        let browser = Browser::signed_in(&app, "ops", "admin").await;
        let (status, _) = browser.get(&format!("/ui/updates/rollouts/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(browser.get("/ui/updates/rollouts/not-an-id").await.0, StatusCode::NOT_FOUND);
        let (_, list) = browser.get("/ui/updates").await;
        assert!(!list.contains("com.other.app") && !list.contains(id));
        let cancel = browser.post(&format!("/ui/updates/rollouts/{id}/cancel"), &[]).await;
        assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
        let delete = browser.post(&format!("/ui/updates/packages/{}/delete", package["id"].as_str().unwrap()), &[]).await;
        assert_eq!(delete.status(), StatusCode::NOT_FOUND);
        let theirs = expect_json(app.get(&format!("/rollouts/{id}"), &other_admin).await, StatusCode::OK).await;
        assert_eq!(theirs["state"], "running");
    }
}
