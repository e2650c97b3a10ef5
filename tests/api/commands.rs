//! Remote commands: every transition and each forbidden one, expiry and timeouts by the job
//! with the manual clock, redelivery, long polls woken in process and across instances, bulk
//! commands with mixed outcomes, payload validation, roles and cross-tenant 404s.

use std::time::Duration as StdDuration;

use chrono::Duration;
use futures::StreamExt;
use herd::clock::to_millis;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, ClockExt, TestApp, ADMIN_TOKEN};

/// The same app with the expiry job pushed past the test's end (tests run its step themselves).
async fn quiet(mut app: TestApp) -> TestApp {
    app.settings.command_expiry_interval = StdDuration::from_secs(24 * 3600);
    app.restart().await
}

/// Registers `n` devices (with `tags` on the first `tagged`); answers (id, token) pairs.
async fn devices(app: &TestApp, n: usize, prefix: &str) -> Vec<(String, String)> {
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let mut out = Vec::new();
    for i in 0..n {
        let (device, token) = app.register(&enroll, json!({ "serialNumber": format!("{prefix}-{i}") })).await;
        out.push((device["id"].as_str().unwrap().to_string(), token));
    }
    out
}

async fn send(app: &TestApp, token: &str, device: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/devices/{device}/commands"), token, body).await
}

async fn send_ok(app: &TestApp, device: &str, body: Value) -> String {
    let sent = expect_json(send(app, ADMIN_TOKEN, device, body).await, StatusCode::CREATED).await;
    assert_eq!(sent["state"], "queued", "{sent}");
    sent["commandId"].as_str().unwrap().to_string()
}

async fn poll(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let body = expect_json(app.get(&format!("/devices/self/commands{query}"), token).await, StatusCode::OK).await;
    body["items"].as_array().unwrap().clone()
}

async fn execution(app: &TestApp, device: &str, command: &str) -> Value {
    expect_json(app.get(&format!("/devices/{device}/commands/{command}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let page = expect_json(app.get(&format!("/events?type={kind}&limit=500"), ADMIN_TOKEN).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

/// Waits (up to 10 s) until `n` devices' polls wait on `app`: a poll is registered before the
/// command it should wake is sent, whatever the machine's speed.
async fn until_waiting(app: &TestApp, n: usize) {
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while app.state.command_waiters.waiting() != n {
        assert!(std::time::Instant::now() < deadline, "{n} polls never waited");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

async fn expire(app: &TestApp) -> herd::store::commands::ExpiryOutcome {
    herd::commands::expire_due(&app.state, to_millis(herd::clock::Clock::now(app.clock.as_ref()))).await.unwrap()
}

engine_tests! {
    async fn a_command_goes_from_queued_to_succeeded_with_one_event_per_transition(app) {
        let fleet = devices(&app, 1, "life").await;
        let (device, token) = &fleet[0];
        let connected = expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
        assert_eq!(connected["pendingCommands"], 0);

        let command = send_ok(&app, device, json!({ "type": "set_volume", "payload": { "volume": 30 } })).await;
        let connected = expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
        assert_eq!(connected["pendingCommands"], 1, "the heartbeat says a command waits");

        let items = poll(&app, token, "").await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"], command.as_str());
        assert_eq!(items[0]["type"], "set_volume");
        assert_eq!(items[0]["payload"], json!({ "volume": 30 }));
        assert_eq!(items[0]["state"], "delivered");
        assert!(items[0]["resultDueBy"].is_string());
        assert!(poll(&app, token, "").await.is_empty(), "a delivered command is not handed out again at once");
        let connected = expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
        assert_eq!(connected["pendingCommands"], 0);

        let path = format!("/devices/self/commands/{command}");
        let running = expect_json(app.post(&format!("{path}/progress"), token, json!({ "progress": 40, "message": "fading" })).await, StatusCode::OK).await;
        assert_eq!(running["state"], "running");
        expect_json(app.post(&format!("{path}/progress"), token, json!({ "progress": 80 })).await, StatusCode::OK).await;
        let seen = execution(&app, device, &command).await;
        assert_eq!((seen["state"].as_str(), seen["progress"].as_i64(), seen["message"].as_str()), (Some("running"), Some(80), Some("fading")));

        let done = expect_json(app.post(&format!("{path}/result"), token, json!({ "status": "succeeded", "result": { "volume": 30 } })).await, StatusCode::OK).await;
        assert_eq!(done["state"], "succeeded");
        // The same report again is a no-op; a different one is a conflict.
        expect_json(app.post(&format!("{path}/result"), token, json!({ "status": "succeeded" })).await, StatusCode::OK).await;
        expect_problem(app.post(&format!("{path}/result"), token, json!({ "status": "failed", "error": "late" })).await, StatusCode::CONFLICT).await;
        expect_problem(app.post(&format!("{path}/progress"), token, json!({})).await, StatusCode::CONFLICT).await;

        let seen = execution(&app, device, &command).await;
        assert_eq!(seen["state"], "succeeded");
        assert_eq!(seen["result"], json!({ "volume": 30 }));
        for field in ["queuedAt", "deliveredAt", "startedAt", "finishedAt"] {
            assert!(seen[field].is_string(), "{field} is set: {seen}");
        }
        for kind in ["command.queued", "command.delivered", "command.running", "command.succeeded"] {
            let events = events_of(&app, kind).await;
            assert_eq!(events.len(), 1, "{kind}: {events:?}");
            assert_eq!(events[0]["data"]["commandId"], command.as_str());
        }
        assert!(events_of(&app, "command.failed").await.is_empty());
    }

    async fn a_devices_commands_list_newest_first_when_asked(app) {
        let fleet = devices(&app, 1, "order").await;
        let device = &fleet[0].0;
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.push(send_ok(&app, device, json!({ "type": "reboot" })).await);
        }
        let ids = |page: &Value| -> Vec<String> {
            page["items"].as_array().unwrap().iter().map(|e| e["commandId"].as_str().unwrap().to_string()).collect()
        };
        let oldest = expect_json(app.get(&format!("/devices/{device}/commands"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(ids(&oldest), sent, "oldest first by default");
        let path = format!("/devices/{device}/commands?order=newest&limit=2");
        let first = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(ids(&first), vec![sent[2].clone(), sent[1].clone()]);
        let cursor = first["nextCursor"].as_str().expect("a second page").to_string();
        let second =
            expect_json(app.get(&format!("{path}&cursor={cursor}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(ids(&second), vec![sent[0].clone()]);
        assert!(second["nextCursor"].is_null());
        let bad = expect_problem(app.get(&format!("/devices/{device}/commands?order=sideways"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&bad), vec!["order"]);
    }

    async fn transitions_the_state_does_not_allow_are_conflicts(app) {
        let fleet = devices(&app, 1, "forbid").await;
        let (device, token) = &fleet[0];
        let first = send_ok(&app, device, json!({ "type": "reboot" })).await;
        // Not yet delivered: the device cannot report on it.
        let path = format!("/devices/self/commands/{first}");
        expect_problem(app.post(&format!("{path}/result"), token, json!({ "status": "succeeded" })).await, StatusCode::CONFLICT).await;
        expect_problem(app.post(&format!("{path}/progress"), token, json!({})).await, StatusCode::CONFLICT).await;
        // Cancelled before delivery: never handed out, and nothing can be reported on it.
        let cancel = format!("/devices/{device}/commands/{first}/cancel");
        let cancelled = expect_json(app.post(&cancel, ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(cancelled["state"], "cancelled");
        expect_problem(app.post(&cancel, ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        assert!(poll(&app, token, "").await.is_empty());
        expect_problem(app.post(&format!("{path}/result"), token, json!({ "status": "succeeded" })).await, StatusCode::CONFLICT).await;
        assert_eq!(events_of(&app, "command.cancelled").await.len(), 1);

        // Delivered: too late to cancel; a failure is recorded with its message.
        let second = send_ok(&app, device, json!({ "type": "screenshot" })).await;
        assert_eq!(poll(&app, token, "").await.len(), 1);
        let cancel = format!("/devices/{device}/commands/{second}/cancel");
        expect_problem(app.post(&cancel, ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        let path = format!("/devices/self/commands/{second}");
        let failed = expect_json(app.post(&format!("{path}/result"), token, json!({ "status": "failed", "error": "no display" })).await, StatusCode::OK).await;
        assert_eq!(failed["state"], "failed");
        let seen = execution(&app, device, &second).await;
        assert_eq!(seen["error"], "no display");
        // A succeeded result cannot carry an error; a result too large is refused; nothing changes.
        let third = send_ok(&app, device, json!({ "type": "reboot" })).await;
        poll(&app, token, "").await;
        let path = format!("/devices/self/commands/{third}/result");
        let problem = expect_problem(app.post(&path, token, json!({ "status": "succeeded", "error": "x" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["error"]);
        let big = "x".repeat(70 * 1024);
        let problem = expect_problem(app.post(&path, token, json!({ "status": "succeeded", "result": big })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["result"]);
        assert_eq!(execution(&app, device, &third).await["state"], "delivered");
    }

    async fn undelivered_commands_expire_and_silent_ones_time_out_by_the_job(app) {
        let app = quiet(app).await;
        let fleet = devices(&app, 1, "expire").await;
        let (device, token) = &fleet[0];
        let expires_at = app.clock.now_plus(Duration::hours(1));
        let stale = send_ok(&app, device, json!({ "type": "reboot", "expiresAt": expires_at })).await;
        let slow = send_ok(&app, device, json!({ "type": "clear_cache", "timeoutSeconds": 60 })).await;

        app.clock.advance(Duration::minutes(59));
        assert_eq!(expire(&app).await, herd::store::commands::ExpiryOutcome::default(), "nothing is due yet");
        // `stale` is delivered (oldest first) just before its expiry, so it never expires.
        let items = poll(&app, token, "?limit=1").await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"], stale.as_str(), "oldest first");
        // A fresh command that may wait one minute stays queued and expires; `slow` is delivered
        // and then says nothing for longer than its 60-second timeout.
        let expiring = send_ok(&app, device, json!({ "type": "reboot", "expiresAt": app.clock.now_plus(Duration::minutes(1)) })).await;
        let handed = poll(&app, token, "?limit=1").await;
        assert_eq!(handed[0]["id"], slow.as_str());
        app.clock.advance(Duration::minutes(2));
        let outcome = expire(&app).await;
        assert_eq!((outcome.expired, outcome.timed_out), (1, 1), "{outcome:?}");
        assert_eq!(execution(&app, device, &expiring).await["state"], "expired");
        let timed_out = execution(&app, device, &slow).await;
        assert_eq!(timed_out["state"], "failed");
        assert_eq!(timed_out["error"], herd::store::commands::TIMEOUT_ERROR);
        assert_eq!(execution(&app, device, &stale).await["state"], "delivered", "its hour-long timeout has not passed");
        let items = poll(&app, token, "").await;
        let ids: Vec<&str> = items.iter().map(|item| item["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![stale.as_str()], "only the unacknowledged `stale` comes again; an expired command never");
        assert_eq!(expire(&app).await, herd::store::commands::ExpiryOutcome::default(), "each execution ends once");
        assert_eq!(events_of(&app, "command.expired").await.len(), 1);
        let failed = events_of(&app, "command.failed").await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["data"]["error"], herd::store::commands::TIMEOUT_ERROR);
    }

    async fn an_unacknowledged_command_is_delivered_again_after_a_minute(app) {
        let fleet = devices(&app, 1, "redeliver").await;
        let (device, token) = &fleet[0];
        let command = send_ok(&app, device, json!({ "type": "restart_app", "payload": { "package": "com.example.player" } })).await;
        assert_eq!(poll(&app, token, "").await.len(), 1);
        app.clock.advance(Duration::seconds(59));
        assert!(poll(&app, token, "").await.is_empty());
        app.clock.advance(Duration::seconds(2));
        let again = poll(&app, token, "").await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["id"], command.as_str());
        assert_eq!(execution(&app, device, &command).await["deliveries"], 2);
        assert_eq!(events_of(&app, "command.delivered").await.len(), 1, "a redelivery is not a transition");
        // Acknowledged: never handed out again.
        expect_json(app.post(&format!("/devices/self/commands/{command}/progress"), token, json!({})).await, StatusCode::OK).await;
        app.clock.advance(Duration::minutes(5));
        assert!(poll(&app, token, "").await.is_empty());
    }

    async fn a_long_poll_returns_as_soon_as_a_command_is_queued(app) {
        let fleet = devices(&app, 2, "wake").await;
        let (device, token) = fleet[0].clone();
        let waiting = {
            let (client, url, token) = (app.client.clone(), app.url("/devices/self/commands?wait=20s"), token.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let response = client.get(url).bearer_auth(token).send().await.unwrap();
                (response.status(), response.json::<Value>().await.unwrap(), started.elapsed())
            })
        };
        until_waiting(&app, 1).await;
        assert!(!waiting.is_finished(), "an empty poll waits");
        let metrics = app.request(reqwest::Method::GET, "/metrics", None, None).await.text().await.unwrap();
        assert!(metrics.contains("herd_command_polls_waiting 1"), "{metrics}");
        // Another device's command does not end this poll.
        send_ok(&app, &fleet[1].0, json!({ "type": "reboot" })).await;
        until_waiting(&app, 1).await;
        assert!(!waiting.is_finished(), "another device's command does not end this poll");
        let sent = send(&app, ADMIN_TOKEN, &device, json!({ "type": "open_url", "payload": { "url": "https://example.com/lobby" } })).await;
        let sent = expect_json(sent, StatusCode::CREATED).await;
        // The waiting poll may take the command before its answer is read back.
        assert!(sent["state"] == "queued" || sent["state"] == "delivered", "{sent}");
        let command = sent["commandId"].as_str().unwrap().to_string();
        let (status, body, elapsed) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"][0]["id"], command.as_str(), "{body}");
        assert!(elapsed < StdDuration::from_secs(20), "woken, not timed out: {elapsed:?}");
        // An empty poll with a short wait answers empty.
        assert!(poll(&app, &token, "?wait=100ms").await.is_empty());
    }

    async fn a_bulk_command_to_a_tag_counts_mixed_outcomes_and_cancels_the_rest(app) {
        let fleet = devices(&app, 5, "bulk").await;
        for (id, _) in &fleet[..4] {
            expect_json(app.patch(&format!("/devices/{id}"), ADMIN_TOKEN, json!({ "tags": ["lobby"] })).await, StatusCode::OK).await;
        }
        let created = expect_json(app.post("/commands", ADMIN_TOKEN, json!({ "type": "reboot", "target": { "tag": "lobby" } })).await, StatusCode::CREATED).await;
        assert_eq!(created["total"], 4);
        assert_eq!(created["counts"]["queued"], 4);
        let command = created["id"].as_str().unwrap().to_string();
        assert!(poll(&app, &fleet[4].1, "").await.is_empty(), "the untagged device got nothing");

        // Device 0 succeeds, 1 fails, 2 is running, 3 never asks.
        for (i, (_, token)) in fleet[..3].iter().enumerate() {
            let items = poll(&app, token, "").await;
            assert_eq!(items[0]["id"], command.as_str());
            let path = format!("/devices/self/commands/{command}");
            match i {
                0 => expect_json(app.post(&format!("{path}/result"), token, json!({ "status": "succeeded" })).await, StatusCode::OK).await,
                1 => expect_json(app.post(&format!("{path}/result"), token, json!({ "status": "failed", "error": "busy" })).await, StatusCode::OK).await,
                _ => expect_json(app.post(&format!("{path}/progress"), token, json!({ "progress": 10 })).await, StatusCode::OK).await,
            };
        }
        let summary = expect_json(app.get(&format!("/commands/{command}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(summary["counts"], json!({ "queued": 1, "delivered": 0, "running": 1, "succeeded": 1, "failed": 1, "expired": 0, "cancelled": 0 }));
        assert_eq!(summary["done"], false);
        let failed = expect_json(app.get(&format!("/commands/{command}/executions?state=failed"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let failed = failed["items"].as_array().unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["deviceId"], fleet[1].0.as_str());
        assert_eq!(failed[0]["error"], "busy");

        // Pages of executions cover every device once.
        let mut seen = Vec::new();
        let mut path = format!("/commands/{command}/executions?limit=3");
        loop {
            let page = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
            seen.extend(page["items"].as_array().unwrap().iter().map(|e| e["deviceId"].as_str().unwrap().to_string()));
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/commands/{command}/executions?limit=3&cursor={cursor}"),
                None => break,
            }
        }
        let mut expected: Vec<String> = fleet[..4].iter().map(|(id, _)| id.clone()).collect();
        expected.sort();
        assert_eq!(seen, expected);

        let cancelled = expect_json(app.post(&format!("/commands/{command}/cancel"), ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(cancelled["counts"]["cancelled"], 1);
        assert_eq!(cancelled["counts"]["running"], 1, "a delivered execution runs on");
        assert!(cancelled["cancelledAt"].is_string());
        assert!(poll(&app, &fleet[3].1, "").await.is_empty());
        let again = expect_json(app.post(&format!("/commands/{command}/cancel"), ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(again["counts"]["cancelled"], 1);
        let events = events_of(&app, "command.cancelled").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["data"]["cancelled"], 1);
        let listed = expect_json(app.get("/commands", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    }

    async fn bulk_targets_by_ids_status_and_the_whole_tenant(app) {
        let fleet = devices(&app, 3, "targets").await;
        expect_json(app.post("/devices/connect", &fleet[0].1, json!({})).await, StatusCode::OK).await;
        let online = expect_json(app.post("/commands", ADMIN_TOKEN, json!({ "type": "screenshot", "target": { "status": "online" } })).await, StatusCode::CREATED).await;
        assert_eq!(online["total"], 1);
        let all = expect_json(app.post("/commands", ADMIN_TOKEN, json!({ "type": "reboot", "target": { "all": true } })).await, StatusCode::CREATED).await;
        assert_eq!(all["total"], 3);
        let unknown = "0190b6c0-0000-7000-8000-000000000000";
        let ids = json!({ "type": "reboot", "target": { "deviceIds": [fleet[1].0, fleet[2].0, unknown] } });
        let by_ids = expect_json(app.post("/commands", ADMIN_TOKEN, ids).await, StatusCode::CREATED).await;
        assert_eq!(by_ids["total"], 2, "an id of no device is ignored");
        // Targets that are wrong or match nothing are refused.
        for (target, field) in [
            (json!({}), "target"),
            (json!({ "all": true, "tag": "x" }), "target"),
            (json!({ "deviceIds": [] }), "target.deviceIds"),
            (json!({ "deviceIds": ["nope"] }), "target.deviceIds[0]"),
            (json!({ "tag": "nobody-has-this" }), "target"),
            (json!({ "status": "sleeping" }), "target.status"),
        ] {
            let problem = expect_problem(app.post("/commands", ADMIN_TOKEN, json!({ "type": "reboot", "target": target })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), vec![field.to_string()], "{target}");
        }
        assert_eq!(expect_json(app.get("/commands", ADMIN_TOKEN).await, StatusCode::OK).await["items"].as_array().unwrap().len(), 3);
    }

    async fn each_type_validates_its_payload_and_names_the_field(app) {
        let fleet = devices(&app, 1, "payload").await;
        let device = &fleet[0].0;
        let cases = [
            (json!({ "type": "reboot", "payload": { "now": true } }), "payload.now"),
            (json!({ "type": "restart_app", "payload": { "package": "x" } }), "payload.package"),
            (json!({ "type": "launch_app", "payload": {} }), "payload.package"),
            (json!({ "type": "open_url", "payload": { "url": "ftp://example.com" } }), "payload.url"),
            (json!({ "type": "set_volume", "payload": { "volume": 101 } }), "payload.volume"),
            (json!({ "type": "set_brightness", "payload": { "brightness": "max" } }), "payload.brightness"),
            (json!({ "type": "screenshot", "payload": { "format": "gif" } }), "payload.format"),
            (json!({ "type": "clear_cache", "payload": { "package": "1bad.name" } }), "payload.package"),
            (json!({ "type": "install_package", "payload": { "url": "https://example.com/a.apk", "sha256": "00" } }), "payload.sha256"),
            (json!({ "type": "custom", "payload": { "name": "acme", "payload": "x".repeat(17 * 1024) } }), "payload.payload"),
            (json!({ "type": "self_destruct" }), "type"),
            (json!({ "type": "reboot", "timeoutSeconds": 0 }), "timeoutSeconds"),
            (json!({ "type": "reboot", "expiresAt": "2020-01-01T00:00:00Z" }), "expiresAt"),
        ];
        for (body, field) in cases {
            let problem = expect_problem(send(&app, ADMIN_TOKEN, device, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), vec![field.to_string()], "{body}");
        }
        let listed = expect_json(app.get(&format!("/devices/{device}/commands"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(listed["items"].as_array().unwrap().is_empty(), "nothing was queued");
        // Each valid payload is accepted and stored normalised.
        for body in [
            json!({ "type": "launch_app", "payload": { "package": "com.example.player" } }),
            json!({ "type": "install_package", "payload": { "url": "https://example.com/a.apk", "sha256": "a".repeat(64), "versionCode": 42 } }),
            json!({ "type": "custom", "payload": { "name": "acme.led", "payload": { "on": true } } }),
        ] {
            send_ok(&app, device, body).await;
        }
    }

    async fn viewers_read_operators_send_and_devices_see_only_their_own(app) {
        let fleet = devices(&app, 2, "roles").await;
        let (viewer, operator) = (app.api_token(ADMIN_TOKEN, "viewer").await, app.api_token(ADMIN_TOKEN, "operator").await);
        let (device, token) = &fleet[0];
        expect_problem(send(&app, &viewer, device, json!({ "type": "reboot" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.post("/commands", &viewer, json!({ "type": "reboot", "target": { "all": true } })).await, StatusCode::FORBIDDEN).await;
        let sent = expect_json(send(&app, &operator, device, json!({ "type": "reboot" })).await, StatusCode::CREATED).await;
        let command = sent["commandId"].as_str().unwrap();
        expect_json(app.get(&format!("/devices/{device}/commands/{command}"), &viewer).await, StatusCode::OK).await;
        expect_json(app.get(&format!("/commands/{command}"), &viewer).await, StatusCode::OK).await;
        expect_problem(app.post(&format!("/commands/{command}/cancel"), &viewer, json!({})).await, StatusCode::FORBIDDEN).await;
        // The other device of the same tenant can neither see nor answer it.
        let other = &fleet[1].1;
        assert!(poll(&app, other, "").await.is_empty());
        expect_problem(app.get(&format!("/devices/self/commands/{command}"), other).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.post(&format!("/devices/self/commands/{command}/progress"), other, json!({})).await, StatusCode::NOT_FOUND).await;
        // Member tokens cannot use the device routes, nor device tokens the operators'.
        expect_problem(app.get("/devices/self/commands", ADMIN_TOKEN).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get("/commands", token).await, StatusCode::FORBIDDEN).await;
    }

    async fn another_tenants_commands_are_not_found_on_every_route(app) {
        let fleet = devices(&app, 1, "tenancy").await;
        let (device, token) = &fleet[0];
        let command = send_ok(&app, device, json!({ "type": "reboot" })).await;
        let (_, other_admin) = app.create_tenant("other").await;
        let enroll = app.enrollment_token(&other_admin, json!({})).await;
        let (_, other_token) = app.register(&enroll, json!({ "serialNumber": "other-1" })).await;

        for path in [
            format!("/devices/{device}/commands"),
            format!("/devices/{device}/commands/{command}"),
            format!("/commands/{command}"),
            format!("/commands/{command}/executions"),
        ] {
            let problem = expect_problem(app.get(&path, &other_admin).await, StatusCode::NOT_FOUND).await;
            assert!(problem["detail"].as_str().unwrap().contains("not found") || problem["detail"].is_string());
        }
        expect_problem(send(&app, &other_admin, device, json!({ "type": "reboot" })).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.post(&format!("/devices/{device}/commands/{command}/cancel"), &other_admin, json!({})).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.post(&format!("/commands/{command}/cancel"), &other_admin, json!({})).await, StatusCode::NOT_FOUND).await;
        let ids = json!({ "type": "reboot", "target": { "deviceIds": [device] } });
        expect_problem(app.post("/commands", &other_admin, ids).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        // The other tenant's device sees nothing of it and cannot answer it.
        assert!(poll(&app, &other_token, "").await.is_empty());
        expect_problem(app.post(&format!("/devices/self/commands/{command}/result"), &other_token, json!({ "status": "succeeded" })).await, StatusCode::NOT_FOUND).await;
        // The owner's command is untouched.
        assert_eq!(execution(&app, device, &command).await["state"], "queued");
        assert_eq!(poll(&app, token, "").await.len(), 1);
        let answers = [
            app.get(&format!("/commands/{command}"), &other_admin).await.text().await.unwrap(),
            app.get("/commands/0190b6c0-0000-7000-8000-000000000000", &other_admin).await.text().await.unwrap(),
        ];
        let detail = |text: &str| serde_json::from_str::<Value>(text).unwrap()["detail"].clone();
        assert_eq!(detail(&answers[0]), detail(&answers[1]), "another tenant's command reads like a missing one");
    }
    async fn a_screenshot_is_uploaded_checked_and_read_back(app) {
        let mut app = app;
        app.settings.screenshot_max_bytes = 4096;
        let app = app.restart().await;
        let fleet = devices(&app, 2, "shot").await;
        let (device, token) = &fleet[0];
        let command = send_ok(&app, device, json!({ "type": "screenshot" })).await;
        let upload = |bytes: Vec<u8>, content_type: &'static str, token: String, command: String| {
            let request = app.client.put(app.url(&format!("/devices/self/commands/{command}/screenshot")));
            async move { request.bearer_auth(token).header("content-type", content_type).body(bytes).send().await.unwrap() }
        };
        let png: Vec<u8> = b"\x89PNG\r\n\x1a\n".iter().copied().chain((0..200u8).cycle().take(1000)).collect();
        // Not delivered yet: refused before the body is read.
        expect_problem(upload(png.clone(), "image/png", token.clone(), command.clone()).await, StatusCode::CONFLICT).await;
        assert_eq!(poll(&app, token, "").await.len(), 1);
        // Wrong type, wrong bytes, too large, another device: refused, nothing attached.
        expect_problem(upload(png.clone(), "text/plain", token.clone(), command.clone()).await, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        let problem = expect_problem(upload(png.clone(), "image/jpeg", token.clone(), command.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["body"]);
        let mut big = png.clone();
        big.resize(5000, 0);
        expect_problem(upload(big, "image/png", token.clone(), command.clone()).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        expect_problem(upload(png.clone(), "image/png", fleet[1].1.clone(), command.clone()).await, StatusCode::NOT_FOUND).await;
        assert!(execution(&app, device, &command).await["screenshot"].is_null());

        let uploaded = expect_json(upload(png.clone(), "image/png", token.clone(), command.clone()).await, StatusCode::OK).await;
        assert_eq!(uploaded["state"], "delivered");
        expect_json(app.post(&format!("/devices/self/commands/{command}/result"), token, json!({ "status": "succeeded", "result": { "width": 1920 } })).await, StatusCode::OK).await;
        let seen = execution(&app, device, &command).await;
        assert_eq!(seen["screenshot"]["contentType"], "image/png");
        assert_eq!(seen["screenshot"]["size"], png.len());
        let url = seen["screenshot"]["url"].as_str().unwrap().to_string();
        let image = app.get(&url, ADMIN_TOKEN).await;
        assert_eq!(image.status(), StatusCode::OK);
        assert_eq!(image.headers()["content-type"], "image/png");
        assert_eq!(image.bytes().await.unwrap().to_vec(), png);
        // Finished: no more uploads; another tenant cannot read it.
        expect_problem(upload(png.clone(), "image/png", token.clone(), command.clone()).await, StatusCode::CONFLICT).await;
        let (_, other_admin) = app.create_tenant("peeking").await;
        expect_problem(app.get(&url, &other_admin).await, StatusCode::NOT_FOUND).await;
        // Only a screenshot command takes an image.
        let reboot = send_ok(&app, device, json!({ "type": "reboot" })).await;
        poll(&app, token, "").await;
        expect_problem(upload(png.clone(), "image/png", token.clone(), reboot).await, StatusCode::CONFLICT).await;
    }

    async fn a_slow_screenshot_upload_outlasts_the_request_timeout_but_a_stalled_one_fails(app) {
        let mut app = app;
        app.settings.request_timeout = StdDuration::from_secs(1);
        let app = app.restart().await;
        let fleet = devices(&app, 1, "slowshot").await;
        let (device, token) = &fleet[0];
        let png: Vec<u8> = b"\x89PNG\r\n\x1a\n".iter().copied().chain((0..200u8).cycle().take(3000)).collect();
        let upload = |command: String, pauses: Vec<u64>| {
            let chunks: Vec<(u64, Vec<u8>)> = pauses.into_iter().zip(png.chunks(1000).map(<[u8]>::to_vec)).collect();
            let body = futures::stream::iter(chunks).then(|(pause, chunk)| async move {
                tokio::time::sleep(StdDuration::from_millis(pause)).await;
                Ok::<_, std::io::Error>(chunk)
            });
            app.client.put(app.url(&format!("/devices/self/commands/{command}/screenshot"))).bearer_auth(token)
                .header("content-type", "image/png").body(reqwest::Body::wrap_stream(body)).send()
        };
        // A stalled body (3 s without a byte, the bound is 1 s): 408, nothing attached.
        let stalled = send_ok(&app, device, json!({ "type": "screenshot" })).await;
        poll(&app, token, "").await;
        let problem = expect_problem(upload(stalled.clone(), vec![0, 3000, 0, 0]).await.unwrap(), StatusCode::REQUEST_TIMEOUT).await;
        assert!(problem["detail"].as_str().unwrap().contains("nothing was stored"), "{problem}");
        assert!(execution(&app, device, &stalled).await["screenshot"].is_null());
        // Four pauses of 400 ms: 1.6 s in all, past the request timeout, each under it.
        let uploaded = expect_json(upload(stalled.clone(), vec![400, 400, 400, 400]).await.unwrap(), StatusCode::OK).await;
        assert_eq!(uploaded["state"], "delivered");
        expect_json(app.post(&format!("/devices/self/commands/{stalled}/result"), token, json!({ "status": "succeeded" })).await, StatusCode::OK).await;
        assert_eq!(execution(&app, device, &stalled).await["screenshot"]["size"], png.len());
    }

    async fn a_deleted_devices_commands_go_with_it(app) {
        let fleet = devices(&app, 2, "gone").await;
        let created = expect_json(app.post("/commands", ADMIN_TOKEN, json!({ "type": "reboot", "target": { "all": true } })).await, StatusCode::CREATED).await;
        let command = created["id"].as_str().unwrap();
        assert_eq!(app.delete(&format!("/devices/{}", fleet[0].0), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        let summary = expect_json(app.get(&format!("/commands/{command}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(summary["counts"]["queued"], 1, "{summary}");
        assert_eq!(summary["total"], 2, "the total says how many it was sent to");
    }
}

/// With two instances on one PostgreSQL, a command queued through one wakes the device's long
/// poll waiting on the other (LISTEN/NOTIFY), well before the poll's wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_on_one_instance_wakes_a_poll_on_another() {
    if !crate::helpers::postgres_variant_runs() {
        return;
    }
    let first = crate::helpers::spawn_app(crate::helpers::Engine::Postgres).await;
    let second = first.second_instance().await;
    let fleet = devices(&first, 1, "cluster").await;
    let (device, token) = fleet[0].clone();
    // The second instance's listener connects at its start; should it still be connecting, it
    // wakes every poll once connected, so the test passes either way, but this gives the NOTIFY
    // path the time it needs to be the one tested.
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let waiting = {
        let (client, url) = (second.client.clone(), second.url("/devices/self/commands?wait=25s"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            (response.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    until_waiting(&second, 1).await;
    assert!(!waiting.is_finished());
    // The answer may already say `delivered`: the poll it wakes can take the command before the
    // POST reads its execution back.
    let sent =
        expect_json(send(&first, ADMIN_TOKEN, &device, json!({ "type": "reboot" })).await, StatusCode::CREATED).await;
    assert!(sent["state"] == "queued" || sent["state"] == "delivered", "{sent}");
    let command = sent["commandId"].as_str().unwrap().to_string();
    let (body, elapsed) = waiting.await.unwrap();
    assert_eq!(body["items"][0]["id"], command.as_str(), "{body}");
    assert!(elapsed < StdDuration::from_secs(25), "woken by the other instance: {elapsed:?}");
    // A bulk command wakes every waiting device of the tenant on the other instance too.
    let token = fleet[0].1.clone();
    let waiting = {
        let (client, url) = (second.client.clone(), second.url("/devices/self/commands?wait=25s"));
        tokio::spawn(
            async move { client.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap() },
        )
    };
    until_waiting(&second, 1).await;
    let bulk = expect_json(
        first.post("/commands", ADMIN_TOKEN, json!({ "type": "screenshot", "target": { "all": true } })).await,
        StatusCode::CREATED,
    )
    .await;
    let body = waiting.await.unwrap();
    assert_eq!(body["items"][0]["id"], bulk["id"], "{body}");
}
