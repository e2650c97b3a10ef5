//! Staged rollouts: a rollout across its waves with the manual clock, automatic pause when a
//! wave's failures cross the threshold (and nothing sent to later waves), resume and cancel,
//! skip and downgrade rules, maintenance windows in each device's time zone, device reports
//! that make no sense (409), downloads only for devices a rollout sent the package, roles,
//! cross-tenant 404s, and one transition per wave with two instances running the job.

use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Timelike, Utc};
use herd::clock::to_millis;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, TestApp, ADMIN_TOKEN};

/// The same app with the rollout and command jobs pushed past the test's end (tests run the
/// rollout step themselves, at the manual clock's time).
async fn quiet(mut app: TestApp) -> TestApp {
    app.settings.rollout_interval = StdDuration::from_secs(24 * 3600);
    app.settings.command_expiry_interval = StdDuration::from_secs(24 * 3600);
    app.restart().await
}

/// Registers `n` devices with `model`; answers (id, token) pairs.
async fn fleet(app: &TestApp, admin: &str, n: usize, prefix: &str, model: &str) -> Vec<(String, String)> {
    let enroll = app.enrollment_token(admin, json!({})).await;
    let mut out = Vec::new();
    for i in 0..n {
        let (device, token) =
            app.register(&enroll, json!({ "serialNumber": format!("{prefix}-{i}"), "model": model })).await;
        out.push((device["id"].as_str().unwrap().to_string(), token));
    }
    out
}

async fn package(app: &TestApp, admin: &str, query: &str) -> String {
    let response = app
        .client
        .post(app.url(&format!("/packages?{query}")))
        .bearer_auth(admin)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    expect_json(response, StatusCode::CREATED).await["id"].as_str().unwrap().to_string()
}

async fn create(app: &TestApp, body: Value) -> Value {
    expect_json(app.post("/rollouts", ADMIN_TOKEN, body).await, StatusCode::CREATED).await
}

async fn act(app: &TestApp, id: &str, action: &str) -> Value {
    expect_json(app.post(&format!("/rollouts/{id}/{action}"), ADMIN_TOKEN, json!({})).await, StatusCode::OK).await
}

async fn rollout(app: &TestApp, id: &str) -> Value {
    expect_json(app.get(&format!("/rollouts/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

async fn step(app: &TestApp) {
    let now = to_millis(herd::clock::Clock::now(app.clock.as_ref()));
    herd::rollouts::run_due(&app.state, now).await.unwrap();
}

/// The device's update state in the rollout (as the operator sees it).
async fn states(app: &TestApp, id: &str) -> Vec<(String, String, i64)> {
    let page =
        expect_json(app.get(&format!("/rollouts/{id}/devices?limit=500"), ADMIN_TOKEN).await, StatusCode::OK).await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["deviceId"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
                d["wave"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn report(app: &TestApp, token: &str, rollout: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/devices/self/updates/{rollout}"), token, body).await
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let page = expect_json(app.get(&format!("/events?type={kind}&limit=500"), ADMIN_TOKEN).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

fn token_of<'a>(devices: &'a [(String, String)], id: &str) -> &'a str {
    &devices.iter().find(|(d, _)| d == id).unwrap().1
}

/// Installs the update on every device of `wave` that was notified, as a device would: poll
/// the command, report downloading, then installed.
async fn install_wave(app: &TestApp, devices: &[(String, String)], id: &str, wave: i64) -> usize {
    let mut n = 0;
    for (device, state, w) in states(app, id).await {
        if w != wave || state != "notified" {
            continue;
        }
        let token = token_of(devices, &device);
        let polled = expect_json(app.get("/devices/self/commands", token).await, StatusCode::OK).await;
        let command = &polled["items"][0];
        assert_eq!(command["type"], "install_package", "{polled}");
        assert_eq!(command["payload"]["rolloutId"], id);
        let url = command["payload"]["url"].as_str().unwrap();
        assert_eq!(app.get(url, token).await.status(), StatusCode::OK, "a notified device may download");
        expect_json(report(app, token, id, json!({ "state": "downloading", "progress": 40 })).await, StatusCode::OK)
            .await;
        let done = expect_json(report(app, token, id, json!({ "state": "installed" })).await, StatusCode::OK).await;
        assert_eq!(done["state"], "installed");
        n += 1;
    }
    n
}

engine_tests! {
    async fn a_rollout_goes_through_its_waves_after_each_soak_and_completes(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 10, "wave", "X96").await;
        let pkg = package(&app, ADMIN_TOKEN, "kind=apk&name=com.example.player&version=2.0&versionCode=20").await;
        let created = create(&app, json!({
            "packageId": pkg, "target": { "all": true }, "waves": [10, 50, 100], "soakSeconds": 600, "failureThreshold": 50,
        })).await;
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["state"], "ready");
        assert_eq!(created["total"], 10);
        assert_eq!(created["currentWave"], Value::Null);
        let sizes: Vec<i64> = created["waves"].as_array().unwrap().iter().map(|w| w["devices"].as_i64().unwrap()).collect();
        assert_eq!(sizes, vec![1, 4, 5]);
        assert_eq!(created["counts"]["pending"], 10);
        // Nothing is sent before the start, however often the job runs.
        step(&app).await;
        assert_eq!(rollout(&app, &id).await["counts"]["notified"], 0);

        let started = act(&app, &id, "start").await;
        assert_eq!(started["state"], "running");
        assert_eq!(started["currentWave"], 0);
        assert_eq!(started["waves"][0]["counts"]["notified"], 1, "{started}");
        assert_eq!(started["counts"]["pending"], 9);
        // The heartbeat tells the notified device a command waits, and no other.
        for (device, state, _) in states(&app, &id).await {
            let connected = expect_json(app.post("/devices/connect", token_of(&devices, &device), json!({})).await, StatusCode::OK).await;
            assert_eq!(connected["pendingCommands"], i64::from(state == "notified"), "{device} {state}");
        }
        assert_eq!(install_wave(&app, &devices, &id, 0).await, 1);
        // Not soaked yet: wave 1 waits.
        app.clock.advance(Duration::seconds(599));
        step(&app).await;
        assert_eq!(rollout(&app, &id).await["currentWave"], 0);
        app.clock.advance(Duration::seconds(2));
        step(&app).await;
        step(&app).await;
        let second = rollout(&app, &id).await;
        assert_eq!(second["currentWave"], 1);
        assert_eq!(second["waves"][1]["counts"]["notified"], 4, "{second}");
        assert!(second["waves"][1]["startedAt"].is_string());
        assert_eq!(second["waves"][2]["counts"]["pending"], 5);
        assert_eq!(install_wave(&app, &devices, &id, 1).await, 4);
        app.clock.advance(Duration::seconds(601));
        step(&app).await;
        assert_eq!(install_wave(&app, &devices, &id, 2).await, 5);
        // Every device has finished: the rollout completes without waiting for the last soak.
        step(&app).await;
        let done = rollout(&app, &id).await;
        assert_eq!(done["state"], "completed", "{done}");
        assert_eq!(done["counts"]["installed"], 10);
        assert!(done["finishedAt"].is_string());

        // One event per transition, and the installed version is the devices' now.
        assert_eq!(events_of(&app, "rollout.started").await.len(), 1);
        assert_eq!(events_of(&app, "rollout.wave_started").await.len(), 2);
        assert_eq!(events_of(&app, "rollout.completed").await.len(), 1);
        // pending→notified, →downloading, →installed: three per device.
        assert_eq!(events_of(&app, "device.update_state_changed").await.len(), 30);
        let installed = expect_json(app.get(&format!("/devices/{}/packages", devices[0].0), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(installed["items"], json!([{ "name": "com.example.player", "versionCode": 20, "version": "2.0", "updatedAt": installed["items"][0]["updatedAt"] }]));
        // The install_package commands ended when the devices took the update on.
        let succeeded = events_of(&app, "command.succeeded").await;
        assert_eq!(succeeded.len(), 10);
    }

    async fn failures_over_the_threshold_pause_the_rollout_and_later_waves_get_nothing(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 10, "fail", "X96").await;
        let pkg = package(&app, ADMIN_TOKEN, "kind=apk&name=com.example.bad&version=1&versionCode=1").await;
        let created = create(&app, json!({
            "packageId": pkg, "target": { "all": true }, "waves": [20, 100], "soakSeconds": 60, "failureThreshold": 25, "start": true,
        })).await;
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["state"], "running");
        let wave0: Vec<String> = states(&app, &id).await.into_iter().filter(|(_, s, _)| s == "notified").map(|(d, _, _)| d).collect();
        assert_eq!(wave0.len(), 2);
        // One of two fails: 50 % > 25 %. The failure report pauses the rollout at once.
        let failing = token_of(&devices, &wave0[0]);
        expect_json(report(&app, failing, &id, json!({ "state": "downloading" })).await, StatusCode::OK).await;
        let failed = expect_json(report(&app, failing, &id, json!({ "state": "failed", "reason": "INSTALL_FAILED_INSUFFICIENT_STORAGE" })).await, StatusCode::OK).await;
        assert_eq!(failed["state"], "failed");
        assert_eq!(failed["reason"], "INSTALL_FAILED_INSUFFICIENT_STORAGE");
        let paused = rollout(&app, &id).await;
        assert_eq!(paused["state"], "paused", "{paused}");
        let reason = paused["reason"].as_str().unwrap();
        assert!(reason.contains("wave 1 of 2") && reason.contains("1 of 2 devices failed") && reason.contains("25 %"), "{reason}");
        let event = &events_of(&app, "rollout.paused").await[0];
        assert_eq!(event["data"]["reason"], reason);
        assert_eq!(event["data"]["by"], Value::Null, "herd paused it, not an operator");

        // However long the soak and often the job: the later wave is never sent.
        app.clock.advance(Duration::seconds(3600));
        step(&app).await;
        step(&app).await;
        let later: Vec<(String, String, i64)> = states(&app, &id).await.into_iter().filter(|(_, _, w)| *w == 1).collect();
        assert_eq!(later.len(), 8);
        assert!(later.iter().all(|(_, s, _)| s == "pending"), "{later:?}");
        for (device, _, _) in &later {
            let token = token_of(&devices, device);
            let updates = expect_json(app.get("/devices/self/updates", token).await, StatusCode::OK).await;
            assert_eq!(updates["items"], json!([]));
            let connected = expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
            assert_eq!(connected["pendingCommands"], 0);
        }
        // Pausing again, or starting, is a conflict.
        expect_problem(app.post(&format!("/rollouts/{id}/pause"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        expect_problem(app.post(&format!("/rollouts/{id}/start"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;

        // Resume accepts the failure so far: wave 1 (soaked long ago) starts at once.
        let resumed = act(&app, &id, "resume").await;
        assert_eq!(resumed["state"], "running");
        assert_eq!(resumed["reason"], Value::Null);
        assert_eq!(resumed["currentWave"], 1, "{resumed}");
        assert_eq!(resumed["waves"][1]["counts"]["notified"], 8);

        // An operator's pause keeps its reason; cancel ends the devices not yet downloading.
        let starting = &later[0].0;
        expect_json(report(&app, token_of(&devices, starting), &id, json!({ "state": "downloading" })).await, StatusCode::OK).await;
        let paused = expect_json(app.post(&format!("/rollouts/{id}/pause"), ADMIN_TOKEN, json!({ "reason": "checking logs" })).await, StatusCode::OK).await;
        assert_eq!(paused["reason"], "checking logs");
        let cancelled = act(&app, &id, "cancel").await;
        assert_eq!(cancelled["state"], "cancelled");
        assert_eq!(cancelled["counts"]["cancelled"], 8, "{cancelled}");
        assert_eq!(cancelled["counts"]["downloading"], 1);
        // A cancelled device's report is refused; the one already downloading may still finish.
        let stopped = &later[1].0;
        let problem = expect_problem(report(&app, token_of(&devices, stopped), &id, json!({ "state": "downloading" })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("cancelled"), "{problem}");
        expect_json(report(&app, token_of(&devices, starting), &id, json!({ "state": "installed" })).await, StatusCode::OK).await;
        // Its undelivered install_package commands were cancelled with it.
        let polled = expect_json(app.get("/devices/self/commands", token_of(&devices, stopped)).await, StatusCode::OK).await;
        assert_eq!(polled["items"], json!([]));
        expect_problem(app.post(&format!("/rollouts/{id}/resume"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        expect_problem(app.post(&format!("/rollouts/{id}/cancel"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
    }

    async fn devices_at_or_above_the_version_are_skipped_and_downgrades_only_when_asked(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 3, "skip", "X96").await;
        let t95 = fleet(&app, ADMIN_TOKEN, 1, "skip-t95", "T95").await;
        let (same, newer, fresh) = (&devices[0], &devices[1], &devices[2]);
        let pkg = package(&app, ADMIN_TOKEN, "kind=apk&name=com.example.app&version=5&versionCode=5&targetModels=X96").await;
        let put = |token: String, body: Value| {
            let app = &app;
            async move { app.client.put(app.url("/devices/self/packages")).bearer_auth(token).json(&body).send().await.unwrap() }
        };
        assert_eq!(put(same.1.clone(), json!({ "packages": [{ "name": "com.example.app", "versionCode": 5 }] })).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(put(newer.1.clone(), json!({ "packages": [{ "name": "com.example.app", "versionCode": 7, "version": "7" }, { "name": "other", "versionCode": 1 }] })).await.status(), StatusCode::NO_CONTENT);
        let bad = put(fresh.1.clone(), json!({ "packages": [{ "name": "bad name", "versionCode": -1 }] })).await;
        let problem = expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["packages[0].name", "packages[0].versionCode"]);

        let created = create(&app, json!({ "packageId": pkg, "target": { "all": true }, "waves": [100], "start": true })).await;
        let id = created["id"].as_str().unwrap();
        let by_device: std::collections::HashMap<String, String> = states(&app, id).await.into_iter().map(|(d, s, _)| (d, s)).collect();
        assert_eq!(by_device[&same.0], "skipped");
        assert_eq!(by_device[&newer.0], "skipped");
        assert_eq!(by_device[&fresh.0], "notified");
        assert_eq!(by_device[&t95[0].0], "skipped");
        let reasons = expect_json(app.get(&format!("/rollouts/{id}/devices?state=skipped"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let reason_of = |device: &str| reasons["items"].as_array().unwrap().iter().find(|d| d["deviceId"] == device).unwrap()["reason"].as_str().unwrap().to_string();
        assert!(reason_of(&same.0).contains("already at versionCode 5"));
        assert!(reason_of(&newer.0).contains("does not allow downgrades"));
        assert!(reason_of(&t95[0].0).contains("model T95"));
        // A skipped device has nothing to report and may not download the package.
        let problem = expect_problem(report(&app, &same.1, id, json!({ "state": "downloading" })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("skipped"), "{problem}");
        let download = format!("/devices/self/packages/{pkg}/download");
        expect_problem(app.get(&download, &same.1).await, StatusCode::NOT_FOUND).await;
        // The fresh device has not finished and the soak (an hour by default) has not passed:
        // the rollout stays running.
        step(&app).await;
        assert_eq!(rollout(&app, id).await["state"], "running");
        // Nor after it: a device that has not answered keeps the rollout running (visible as
        // such) until it finishes or an operator cancels.
        app.clock.advance(Duration::hours(2));
        step(&app).await;
        assert_eq!(rollout(&app, id).await["state"], "running");
        expect_json(report(&app, &fresh.1, id, json!({ "state": "installed" })).await, StatusCode::OK).await;
        step(&app).await;
        let done = rollout(&app, id).await;
        assert_eq!(done["state"], "completed", "{done}");
        assert_eq!((done["counts"]["installed"].as_i64(), done["counts"]["skipped"].as_i64()), (Some(1), Some(3)));

        // With downgrades allowed, the newer device gets it; the one at the version still not.
        let created = create(&app, json!({ "packageId": pkg, "target": { "deviceIds": [same.0, newer.0] }, "waves": [100], "allowDowngrade": true, "start": true })).await;
        let id = created["id"].as_str().unwrap();
        let by_device: std::collections::HashMap<String, String> = states(&app, id).await.into_iter().map(|(d, s, _)| (d, s)).collect();
        assert_eq!(by_device.len(), 2);
        assert_eq!(by_device[&newer.0], "notified");
        assert_eq!(by_device[&same.0], "skipped");
        // The package may not be deleted while a rollout sends it.
        expect_problem(app.delete(&format!("/packages/{pkg}"), ADMIN_TOKEN).await, StatusCode::CONFLICT).await;
    }

    async fn device_reports_move_forward_only_and_bad_reports_change_nothing(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 2, "rep", "X96").await;
        let pkg = package(&app, ADMIN_TOKEN, "kind=file&name=cfg&version=1&versionCode=1").await;
        let created = create(&app, json!({ "packageId": pkg, "target": { "deviceIds": [devices[0].0] }, "waves": [100], "start": true })).await;
        let id = created["id"].as_str().unwrap();
        let token = &devices[0].1;
        let open = expect_json(app.get("/devices/self/updates", token).await, StatusCode::OK).await;
        assert_eq!(open["items"][0]["state"], "notified");
        assert_eq!(open["items"][0]["package"]["versionCode"], 1);
        assert_eq!(open["items"][0]["package"]["downloadUrl"], format!("/devices/self/packages/{pkg}/download"));
        for (body, fields) in [
            (json!({ "state": "pending" }), vec!["state"]),
            (json!({ "state": "failed" }), vec!["reason"]),
            (json!({ "state": "downloading", "progress": 101 }), vec!["progress"]),
            (json!({ "state": "failed", "reason": "" }), vec!["reason"]),
        ] {
            let problem = expect_problem(report(&app, token, id, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), fields, "{body}");
        }
        expect_problem(report(&app, token, id, json!({ "state": "sideways" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let installing = expect_json(report(&app, token, id, json!({ "state": "installing" })).await, StatusCode::OK).await;
        assert_eq!(installing["state"], "installing");
        // Backwards is a conflict; the same state again only updates the progress.
        let problem = expect_problem(report(&app, token, id, json!({ "state": "downloading" })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("installing"), "{problem}");
        let again = expect_json(report(&app, token, id, json!({ "state": "installing", "progress": 80 })).await, StatusCode::OK).await;
        assert_eq!(again["progress"], 80);
        expect_json(report(&app, token, id, json!({ "state": "installed" })).await, StatusCode::OK).await;
        expect_json(report(&app, token, id, json!({ "state": "installed" })).await, StatusCode::OK).await;
        expect_problem(report(&app, token, id, json!({ "state": "failed", "reason": "late" })).await, StatusCode::CONFLICT).await;
        // Exactly three transitions were recorded (notified, installing, installed).
        assert_eq!(events_of(&app, "device.update_state_changed").await.len(), 3);
        // A device the rollout does not include: 404 on its routes, and no download.
        let other = &devices[1].1;
        expect_problem(report(&app, other, id, json!({ "state": "downloading" })).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.get(&format!("/devices/self/updates/{id}"), other).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.get(&format!("/devices/self/packages/{pkg}/download"), other).await, StatusCode::NOT_FOUND).await;
        // Creation errors: every bad field named, nothing created.
        let problem = expect_problem(app.post("/rollouts", ADMIN_TOKEN, json!({
            "packageId": "nope", "target": { "tag": "a", "all": true }, "waves": [50, 40], "soakSeconds": -1,
            "failureThreshold": 101, "maintenanceWindow": { "start": "25:00", "end": "03:00" },
        })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["packageId", "target", "waves", "soakSeconds", "failureThreshold", "maintenanceWindow.start"]);
        let problem = expect_problem(app.post("/rollouts", ADMIN_TOKEN, json!({ "packageId": pkg, "target": { "tag": "nobody" } })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["target"]);
        let missing = herd::ids::PackageId::new().to_string();
        expect_problem(app.post("/rollouts", ADMIN_TOKEN, json!({ "packageId": missing, "target": { "all": true } })).await, StatusCode::NOT_FOUND).await;
        let list = expect_json(app.get("/rollouts", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
    }

    async fn maintenance_windows_wait_for_each_devices_local_time(app) {
        let app = quiet(app).await;
        // 01:30 UTC on a summer day: 03:30 in Berlin (UTC+2).
        app.clock.set(Utc.with_ymd_and_hms(2026, 7, 1, 1, 30, 0).unwrap());
        let devices = fleet(&app, ADMIN_TOKEN, 2, "win", "X96").await;
        let (berlin, utc) = (&devices[0], &devices[1]);
        let settings = |device: &str, zone: &str| {
            let app = &app;
            let (path, body) = (format!("/devices/{device}/settings"), json!({ "timezone": zone }));
            async move { app.client.put(app.url(&path)).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap() }
        };
        assert_eq!(settings(&berlin.0, "Europe/Berlin").await.status(), StatusCode::OK);
        let pkg = package(&app, ADMIN_TOKEN, "kind=file&name=night&version=1&versionCode=1").await;
        // 03:00–05:00 local: open in Berlin (03:30), closed in UTC (01:30).
        let created = create(&app, json!({
            "packageId": pkg, "target": { "all": true }, "waves": [100], "soakSeconds": 0,
            "maintenanceWindow": { "start": "03:00", "end": "05:00" }, "start": true,
        })).await;
        let id = created["id"].as_str().unwrap();
        assert_eq!(created["maintenanceWindow"], json!({ "start": "03:00", "end": "05:00" }));
        let by_device = |list: Vec<(String, String, i64)>| list.into_iter().map(|(d, s, _)| (d, s)).collect::<std::collections::HashMap<_, _>>();
        let now = by_device(states(&app, id).await);
        assert_eq!(now[&berlin.0], "notified");
        assert_eq!(now[&utc.0], "pending");
        app.clock.advance(Duration::minutes(89));
        step(&app).await;
        assert_eq!(by_device(states(&app, id).await)[&utc.0], "pending", "02:59 UTC is still outside");
        app.clock.advance(Duration::minutes(2));
        assert_eq!(herd::clock::Clock::now(app.clock.as_ref()).hour(), 3);
        step(&app).await;
        assert_eq!(by_device(states(&app, id).await)[&utc.0], "notified");
    }

    async fn roles_and_tenants_fence_every_rollout_route(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 1, "fence", "X96").await;
        let pkg = package(&app, ADMIN_TOKEN, "kind=file&name=fence&version=1&versionCode=1").await;
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let body = json!({ "packageId": pkg, "target": { "all": true }, "waves": [100] });
        expect_problem(app.post("/rollouts", &viewer, body.clone()).await, StatusCode::FORBIDDEN).await;
        let created = create(&app, body).await;
        let id = created["id"].as_str().unwrap();
        for action in ["start", "pause", "resume", "cancel"] {
            expect_problem(app.post(&format!("/rollouts/{id}/{action}"), &viewer, json!({})).await, StatusCode::FORBIDDEN).await;
        }
        expect_json(app.get(&format!("/rollouts/{id}"), &viewer).await, StatusCode::OK).await;
        expect_json(app.get(&format!("/rollouts/{id}/devices"), &viewer).await, StatusCode::OK).await;
        act(&app, id, "start").await;

        let (_, other) = app.create_tenant("rollout-other").await;
        let foreign = fleet(&app, &other, 1, "fence-other", "X96").await;
        for path in [format!("/rollouts/{id}"), format!("/rollouts/{id}/devices"), format!("/devices/{}/packages", devices[0].0)] {
            expect_problem(app.get(&path, &other).await, StatusCode::NOT_FOUND).await;
        }
        for action in ["start", "pause", "resume", "cancel"] {
            expect_problem(app.post(&format!("/rollouts/{id}/{action}"), &other, json!({})).await, StatusCode::NOT_FOUND).await;
        }
        let listed = expect_json(app.get("/rollouts", &other).await, StatusCode::OK).await;
        assert_eq!(listed["items"], json!([]));
        expect_problem(app.post("/rollouts", &other, json!({ "packageId": pkg, "target": { "all": true } })).await, StatusCode::NOT_FOUND).await;
        let token = &foreign[0].1;
        expect_problem(report(&app, token, id, json!({ "state": "downloading" })).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.get(&format!("/devices/self/updates/{id}"), token).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.get(&format!("/devices/self/packages/{pkg}/download"), token).await, StatusCode::NOT_FOUND).await;
        // A member token on a device route and a device token on a member route are refused.
        assert_eq!(app.get("/devices/self/updates", ADMIN_TOKEN).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(app.request(Method::GET, "/rollouts", Some(&devices[0].1), None).await.status(), StatusCode::FORBIDDEN);
        // The overview counts the tenant's own update work only.
        let overview = expect_json(app.get("/devices/stats/overview", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(overview["updates"]["running"], 1, "{overview}");
        assert_eq!(overview["updates"]["devices"]["notified"], 1);
        let theirs = expect_json(app.get("/devices/stats/overview", &other).await, StatusCode::OK).await;
        assert_eq!(theirs["updates"]["running"], 0);
        assert_eq!(theirs["updates"]["devices"]["notified"], 0);
    }

    async fn two_instances_running_the_job_make_each_wave_transition_once(app) {
        let app = quiet(app).await;
        let devices = fleet(&app, ADMIN_TOKEN, 40, "twin", "X96").await;
        // Two instances on PostgreSQL; on SQLite (one process serves a database) two job steps
        // of one instance at once.
        let second = match app.engine {
            crate::helpers::Engine::Postgres => Some(app.second_instance().await),
            crate::helpers::Engine::Sqlite => None,
        };
        let other_state = second.as_ref().map_or(&app.state, |second| &second.state);
        let pkg = package(&app, ADMIN_TOKEN, "kind=file&name=twin&version=1&versionCode=1").await;
        let created = create(&app, json!({ "packageId": pkg, "target": { "all": true }, "waves": [25, 50, 75, 100], "soakSeconds": 60, "start": true })).await;
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["counts"]["notified"], 10);
        // Each round both instances find the same soaked wave: one of them starts it.
        for _ in 0..3 {
            app.clock.advance(Duration::seconds(61));
            let now = to_millis(herd::clock::Clock::now(app.clock.as_ref()));
            let (a, b) = tokio::join!(
                herd::rollouts::run_due(&app.state, now),
                herd::rollouts::run_due(other_state, now),
            );
            a.unwrap();
            b.unwrap();
        }
        let done = rollout(&app, &id).await;
        assert_eq!(done["currentWave"], 3, "{done}");
        assert_eq!(done["counts"]["notified"], 40);
        assert_eq!(events_of(&app, "rollout.wave_started").await.len(), 3);
        let notified = events_of(&app, "device.update_state_changed").await;
        assert_eq!(notified.len(), 40, "one event per device");
        // A step that read the same pending devices before another moved them moves none and
        // queues nothing (the store's dispatch, called as a late step would).
        let me = expect_json(app.get("/auth/me", ADMIN_TOKEN).await, StatusCode::OK).await;
        let tenant: herd::ids::TenantId = me["tenantId"].as_str().unwrap().parse().unwrap();
        let scope = herd::store::TenantScope::for_system(&app.state.system, &app.state.db, tenant);
        let row = herd::store::rollouts::get(&scope, id.parse().unwrap()).await.unwrap().unwrap();
        let late = herd::store::rollouts::Dispatch {
            notify: vec![devices[0].0.parse().unwrap()],
            skip: vec![("late".into(), vec![devices[1].0.parse().unwrap()])],
        };
        let notification = herd::store::rollouts::Notification { payload: "{}", expires_at: i64::MAX / 2, timeout_ms: 1000, origin: "test" };
        let now = to_millis(herd::clock::Clock::now(app.clock.as_ref()));
        let (moved, skipped) = herd::store::rollouts::dispatch(&scope, &row, &late, &notification, now).await.unwrap();
        assert!(moved.is_empty() && skipped == 0, "{moved:?} {skipped}");
        // Every device got exactly one install_package command.
        for (_, token) in &devices {
            let polled = expect_json(app.get("/devices/self/commands", token).await, StatusCode::OK).await;
            assert_eq!(polled["items"].as_array().unwrap().len(), 1);
        }
    }
}
