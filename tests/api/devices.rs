//! The device registry: the seed's three flows, CRUD, filters, pagination and tenancy.

use chrono::Duration;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, ClockExt, ADMIN_TOKEN};

fn id(device: &Value) -> String {
    device["id"].as_str().expect("device id").to_string()
}

/// `herd_device_cache_lookups_total{result="hit"}` on `app`.
pub(crate) async fn cache_hits(app: &crate::helpers::TestApp) -> u64 {
    let text = app.request(Method::GET, "/metrics", None, None).await.text().await.unwrap();
    text.lines()
        .find(|line| line.starts_with("herd_device_cache_lookups_total{result=\"hit\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Heartbeats with `token` until the answer came from the device cache (on PostgreSQL the cache
/// answers once the instance listens for other instances' changes); answers that heartbeat.
pub(crate) async fn heartbeat_from_the_cache(app: &crate::helpers::TestApp, token: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let before = cache_hits(app).await;
        let body = expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
        if cache_hits(app).await > before {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "the device cache never answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

engine_tests! {
    async fn a_warm_cache_follows_every_change_to_the_device(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "CACHE-1" })).await;
        let device = id(&device);
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        let warm = heartbeat_from_the_cache(&app, &token).await;
        assert_eq!((warm["device"]["name"].as_str(), warm["pendingCommands"].as_i64()), (Some("CACHE-1"), Some(0)));

        // An operator's change is in the next heartbeat's answer.
        let path = format!("/devices/{device}");
        expect_json(app.patch(&path, ADMIN_TOKEN, json!({ "name": "Lobby", "tags": ["a"] })).await, StatusCode::OK).await;
        let body = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!((body["device"]["name"].as_str(), body["device"]["tags"].clone()), (Some("Lobby"), json!(["a"])));

        // A queued command is announced at once; fetched, it is no longer waiting.
        heartbeat_from_the_cache(&app, &token).await;
        let sent = app.post(&format!("/devices/{device}/commands"), ADMIN_TOKEN, json!({ "type": "reboot" })).await;
        expect_json(sent, StatusCode::CREATED).await;
        let body = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["pendingCommands"], 1, "{body}");
        heartbeat_from_the_cache(&app, &token).await;
        expect_json(app.get("/devices/self/commands", &token).await, StatusCode::OK).await;
        let body = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["pendingCommands"], 0, "{body}");

        // A command to the whole tenant, then cancelled for everyone.
        heartbeat_from_the_cache(&app, &token).await;
        let bulk = app.post("/commands", ADMIN_TOKEN, json!({ "type": "screenshot", "target": { "all": true } })).await;
        let bulk = expect_json(bulk, StatusCode::CREATED).await;
        let body = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["pendingCommands"], 1, "{body}");
        heartbeat_from_the_cache(&app, &token).await;
        let cancel = app.post(&format!("/commands/{}/cancel", bulk["id"].as_str().unwrap()), ADMIN_TOKEN, json!({})).await;
        assert!(cancel.status().is_success(), "{}", cancel.status());
        let body = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["pendingCommands"], 0, "{body}");

        // Swept offline: the next heartbeat brings it online at once, with its event (not from a
        // cached "online" through the buffer, which would leave it offline until a flush).
        heartbeat_from_the_cache(&app, &token).await;
        app.clock.advance(Duration::minutes(10));
        assert_eq!(herd::presence::run_sweep(&app.state).await.unwrap().marked_offline, 1);
        let offline_then = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(offline_then["status"], "offline");
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        let events = expect_json(app.get("/events?type=device.status_changed&limit=100", ADMIN_TOKEN).await, StatusCode::OK).await;
        let last = events["items"].as_array().unwrap().last().cloned().unwrap();
        assert_eq!((last["data"]["from"].as_str(), last["data"]["to"].as_str()), (Some("offline"), Some("online")), "{events}");

        // Re-registered: the old token is refused on the very next request.
        heartbeat_from_the_cache(&app, &token).await;
        let again = app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "CACHE-1", "deviceToken": token })).await;
        let again = expect_json(again, StatusCode::OK).await;
        let new_token = again["deviceToken"].as_str().unwrap().to_string();
        expect_problem(app.post("/devices/connect", &token, json!({})).await, StatusCode::UNAUTHORIZED).await;

        // Deleted: its token is refused on the very next request.
        heartbeat_from_the_cache(&app, &new_token).await;
        assert_eq!(app.delete(&path, ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.post("/devices/connect", &new_token, json!({})).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn re_registering_with_the_device_token_rotates_it(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let body = json!({ "serialNumber": "SN-1", "macAddress": "AA-BB-CC-00-11-22", "androidId": "a1b2c3", "model": "X96", "manufacturer": "Amlogic", "osVersion": "11", "appVersion": "1.0.0" });
        let first = app.post("/devices/auto-register", &enroll, body.clone()).await;
        let first = expect_json(first, StatusCode::CREATED).await;
        let device = &first["device"];
        assert_eq!(device["status"], "offline");
        assert_eq!(device["lastSeen"], Value::Null);
        assert_eq!(device["macAddress"], "aa:bb:cc:00:11:22");
        assert_eq!(device["name"], "SN-1", "the serial number names an unnamed device");
        let old_token = first["deviceToken"].as_str().unwrap().to_string();
        assert!(old_token.starts_with("herd_dt_"));

        let second = app.post("/devices/auto-register", &enroll, json!({ "macAddress": "aa:bb:cc:00:11:22", "appVersion": "1.1.0", "deviceToken": old_token })).await;
        let second = expect_json(second, StatusCode::OK).await;
        assert_eq!(second["device"]["id"], device["id"]);
        assert_eq!(second["device"]["appVersion"], "1.1.0");
        assert_eq!(second["device"]["serialNumber"], "SN-1");
        let new_token = second["deviceToken"].as_str().unwrap();
        assert_ne!(new_token, old_token);

        expect_problem(app.request(Method::POST, "/devices/connect", Some(&old_token), None).await, StatusCode::UNAUTHORIZED).await;
        expect_json(app.request(Method::POST, "/devices/connect", Some(new_token), None).await, StatusCode::OK).await;
        let list = expect_json(app.get("/devices", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
    }

    async fn the_same_identifiers_in_another_tenant_are_another_device(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        let mine = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        let (a, _) = app.register(&mine, json!({ "serialNumber": "SHARED" })).await;
        let response = app.post("/devices/auto-register", &theirs, json!({ "serialNumber": "SHARED" })).await;
        let b = expect_json(response, StatusCode::CREATED).await;
        assert_ne!(a["id"], b["device"]["id"]);
        let other_list = expect_json(app.get("/devices", &other_admin).await, StatusCode::OK).await;
        assert_eq!(other_list["items"].as_array().unwrap().len(), 1);
        assert_eq!(other_list["items"][0]["id"], b["device"]["id"]);
    }

    async fn identifiers_of_two_devices_conflict(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "ONE" })).await;
        app.register(&enroll, json!({ "androidId": "TWO" })).await;
        let problem = expect_problem(
            app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "ONE", "androidId": "TWO" })).await,
            StatusCode::CONFLICT,
        ).await;
        assert!(problem["detail"].as_str().unwrap().contains("more than one device"));
    }

    async fn admins_create_devices_offline_and_never_seen(app) {
        let response = app.post("/devices", ADMIN_TOKEN, json!({ "name": "Lobby screen", "serialNumber": "LOBBY-1", "location": "Lobby", "tags": ["lobby", "floor-1", "lobby"] })).await;
        let body = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(body["device"]["status"], "offline");
        assert_eq!(body["device"]["lastSeen"], Value::Null);
        assert_eq!(body["device"]["tags"], json!(["lobby", "floor-1"]));
        assert!(body["deviceToken"].as_str().unwrap().starts_with("herd_dt_"));
        let problem = expect_problem(app.post("/devices", ADMIN_TOKEN, json!({ "name": "Dup", "serialNumber": "LOBBY-1" })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("serialNumber"));
    }

    async fn connect_marks_online_with_the_servers_time(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "C-1" })).await;
        let now = app.clock.now_plus(Duration::zero());
        let response = app.post("/devices/connect", &token, json!({ "ipAddress": "10.1.2.3", "appVersion": "2.0.0", "firmwareVersion": "fw-9" })).await;
        let body = expect_json(response, StatusCode::OK).await;
        assert_eq!(body["device"]["status"], "online");
        let last_seen: chrono::DateTime<chrono::Utc> = serde_json::from_value(body["device"]["lastSeen"].clone()).unwrap();
        assert_eq!(last_seen, now);
        assert_eq!(body["device"]["ipAddress"], "10.1.2.3");
        assert_eq!(body["device"]["firmwareVersion"], "fw-9");

        app.clock.advance(Duration::seconds(30));
        let again = expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(again["device"]["ipAddress"], "10.1.2.3", "absent fields are kept");
        let fetched = expect_json(app.get(&format!("/devices/{}", id(&device)), ADMIN_TOKEN).await, StatusCode::OK).await;
        let last_seen: chrono::DateTime<chrono::Utc> = serde_json::from_value(fetched["lastSeen"].clone()).unwrap();
        assert_eq!(last_seen, now + Duration::seconds(30));
        let own = expect_json(app.get("/devices/self", &token).await, StatusCode::OK).await;
        assert_eq!(own["id"], device["id"]);

        // Only a device token connects.
        expect_problem(app.post("/devices/connect", ADMIN_TOKEN, json!({})).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.post("/devices/connect", &enroll, json!({})).await, StatusCode::FORBIDDEN).await;
        let problem = expect_problem(app.post("/devices/connect", &token, json!({ "ipAddress": "999.1.1.1" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["ipAddress"]);
    }

    async fn lists_filter_and_paginate(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let (device, token) = app.register(&enroll, json!({ "serialNumber": format!("LIST-{i}"), "name": format!("Screen {i}") })).await;
            if i % 2 == 0 {
                app.post("/devices/connect", &token, json!({})).await;
            }
            ids.push(id(&device));
        }
        app.patch(&format!("/devices/{}", ids[1]), ADMIN_TOKEN, json!({ "tags": ["kiosk"] })).await;
        app.post("/devices", ADMIN_TOKEN, json!({ "name": "100% real_name", "tags": ["kiosk"] })).await;

        let online = expect_json(app.get("/devices?status=online", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(online["items"].as_array().unwrap().len(), 3);
        let offline = expect_json(app.get("/devices?status=offline", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(offline["items"].as_array().unwrap().len(), 3);
        let search = expect_json(app.get("/devices?q=screen%203", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(search["items"].as_array().unwrap().len(), 1);
        let shouted = expect_json(app.get("/devices?q=SCREEN%203", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(shouted["items"], search["items"], "search ignores case");
        let by_serial = expect_json(app.get("/devices?q=list-4", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(by_serial["items"][0]["id"], ids[4].as_str());
        let wildcard = expect_json(app.get("/devices?q=100%25", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(wildcard["items"].as_array().unwrap().len(), 1, "% is matched literally");
        let underscore = expect_json(app.get("/devices?q=_", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(underscore["items"].as_array().unwrap().len(), 1, "_ is matched literally");
        let tagged = expect_json(app.get("/devices?tag=kiosk", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tagged["items"].as_array().unwrap().len(), 2);

        let mut seen = Vec::new();
        let mut path = "/devices?limit=2".to_string();
        loop {
            let page = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 2);
            seen.extend(items.iter().map(id));
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/devices?limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(&seen[..5], &ids[..], "oldest first, each once");

        let blank = expect_json(app.get("/devices?status=&q=&tag=&cursor=&limit=", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(blank["items"].as_array().unwrap().len(), 6, "empty parameters are absent ones");
        for bad in ["/devices?status=sleeping", "/devices?limit=0", "/devices?limit=501", "/devices?limit=abc", "/devices?cursor=nope"] {
            expect_problem(app.get(bad, ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    }

    async fn patch_changes_only_what_is_given(app) {
        let response = app.post("/devices", ADMIN_TOKEN, json!({ "name": "Old", "serialNumber": "P-1", "model": "M1", "location": "Hall" })).await;
        let device = expect_json(response, StatusCode::CREATED).await["device"].clone();
        let path = format!("/devices/{}", id(&device));
        app.clock.advance(Duration::seconds(5));
        let updated = expect_json(app.patch(&path, ADMIN_TOKEN, json!({ "name": "New", "location": null, "tags": ["a"] })).await, StatusCode::OK).await;
        assert_eq!(updated["name"], "New");
        assert_eq!(updated["location"], Value::Null);
        assert_eq!(updated["model"], "M1");
        assert_eq!(updated["serialNumber"], "P-1");
        assert_eq!(updated["tags"], json!(["a"]));
        assert_ne!(updated["updatedAt"], device["updatedAt"]);
        let problem = expect_problem(app.patch(&path, ADMIN_TOKEN, json!({ "name": "", "macAddress": "nope" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["name", "macAddress"]);
        let unchanged = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(unchanged["name"], "New");
        app.post("/devices", ADMIN_TOKEN, json!({ "name": "Other", "serialNumber": "P-2" })).await;
        expect_problem(app.patch(&path, ADMIN_TOKEN, json!({ "serialNumber": "P-2" })).await, StatusCode::CONFLICT).await;
    }

    async fn deleting_a_device_invalidates_its_token(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "androidId": "DEL-1" })).await;
        let path = format!("/devices/{}", id(&device));
        assert_eq!(app.delete(&path, ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.post("/devices/connect", &token, json!({})).await, StatusCode::UNAUTHORIZED).await;
        expect_problem(app.get(&path, ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.delete(&path, ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        // The identifiers are free again: registering them makes a new device.
        let (again, _) = app.register(&enroll, json!({ "androidId": "DEL-1" })).await;
        assert_ne!(again["id"], device["id"]);
    }

    async fn another_tenants_device_is_indistinguishable_from_a_missing_one(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "MINE" })).await;
        let path = format!("/devices/{}", id(&device));
        let missing = format!("/devices/{}", uuid::Uuid::now_v7());
        for target in [&path, &missing] {
            let theirs = expect_problem(app.get(target, &other_admin).await, StatusCode::NOT_FOUND).await;
            assert_eq!(theirs["detail"], "device not found");
            expect_problem(app.patch(target, &other_admin, json!({ "name": "pwned" })).await, StatusCode::NOT_FOUND).await;
            expect_problem(app.delete(target, &other_admin).await, StatusCode::NOT_FOUND).await;
        }
        let list = expect_json(app.get("/devices", &other_admin).await, StatusCode::OK).await;
        assert_eq!(list["items"], json!([]));
        // Untouched, and its token still works.
        let mine = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["name"], "MINE");
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        // Another tenant's device token cannot register into this tenant's enrollment flow.
        expect_problem(app.post("/devices/auto-register", &token, json!({ "serialNumber": "X" })).await, StatusCode::FORBIDDEN).await;
    }

    async fn bad_bodies_are_rejected_and_change_nothing(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let raw = |body: &'static str, content_type: &'static str| {
            app.client
                .post(app.url("/devices/auto-register"))
                .bearer_auth(&enroll)
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        expect_problem(raw("{\"serialNumber\": ", "application/json").await.unwrap(), StatusCode::BAD_REQUEST).await;
        expect_problem(raw("[1,2", "application/json").await.unwrap(), StatusCode::BAD_REQUEST).await;
        expect_problem(raw("{\"serialNumber\": \"A\"}", "text/plain").await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        let problem = expect_problem(raw("{\"serialNumber\": 42}", "application/json").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["serialNumber"]);
        let problem = expect_problem(raw("[]", "application/json").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(problem["errors"].is_array());
        let problem = expect_problem(app.post("/devices/auto-register", &enroll, json!({ "model": "X" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["serialNumber", "macAddress", "androidId"]);
        let problem = expect_problem(
            app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "S".repeat(129), "name": "N".repeat(201), "macAddress": "00:11" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ).await;
        assert_eq!(error_fields(&problem), vec!["serialNumber", "macAddress", "name"]);
        expect_problem(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "  " })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        expect_problem(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "a\u{0000}b" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let problem = expect_problem(app.post("/devices", ADMIN_TOKEN, json!({ "name": "x", "tags": vec!["t"; 33] })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["tags"]);
        let problem = expect_problem(app.post("/devices", ADMIN_TOKEN, json!({ "tags": ["x"] })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["name"], "{problem}");

        let huge = json!({ "serialNumber": "BIG", "model": "x".repeat(2 * 1024 * 1024) });
        expect_problem(app.post("/devices/auto-register", &enroll, huge).await, StatusCode::PAYLOAD_TOO_LARGE).await;

        let list = expect_json(app.get("/devices", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"], json!([]), "no bad request created anything");
        let tokens = expect_json(app.get("/enrollment-tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tokens["items"][0]["uses"], 0, "no bad request used the enrollment token");
    }

    async fn ids_that_are_not_uuids_are_not_found(app) {
        for path in ["/devices/not-a-uuid", "/devices/1", "/devices/%00"] {
            expect_problem(app.get(path, ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        }
        expect_problem(app.delete("/tokens/zzz", ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
    }

    async fn a_restart_keeps_everything(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({ "maxUses": 5 })).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "KEEP-1" })).await;
        app.post("/devices/connect", &token, json!({ "appVersion": "3.0" })).await;
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let app = app.restart().await;
        let kept = expect_json(app.get(&format!("/devices/{}", id(&device)), &viewer).await, StatusCode::OK).await;
        assert_eq!(kept["serialNumber"], "KEEP-1");
        assert_eq!(kept["status"], "online");
        assert_eq!(kept["appVersion"], "3.0");
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        let (again, _) = app.register(&enroll, json!({ "serialNumber": "KEEP-1", "deviceToken": token })).await;
        assert_eq!(again["id"], device["id"]);
    }
}

/// With two instances on one PostgreSQL, a change made through one reaches the other's device
/// cache by `NOTIFY herd_cache`: a deleted device's token, warm in the other's cache, is refused
/// there too, and a command queued through one is announced by the other's next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_instance_reaches_the_device_cache_of_another() {
    if !crate::helpers::postgres_variant_runs() {
        return;
    }
    let first = crate::helpers::spawn_app(crate::helpers::Engine::Postgres).await;
    let second = first.second_instance().await;
    let enroll = first.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let (device, token) = cached_on(&first, &second, &enroll, "TWO-1").await;

    // Within five seconds (the notification's delivery takes well under one here): without it,
    // the second instance would answer from its cache for as long as the entry lives.
    let eventually = |check: fn(&Value) -> bool| {
        let (client, url, token) = (second.client.clone(), second.url("/devices/connect"), token.clone());
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let response = client.post(url.clone()).bearer_auth(&token).json(&json!({})).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if check(&json!({ "status": status.as_u16(), "body": body })) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "the second instance still answers {status}: {body}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let sent = first.post(&format!("/devices/{device}/commands"), ADMIN_TOKEN, json!({ "type": "reboot" })).await;
    expect_json(sent, StatusCode::CREATED).await;
    eventually(|answer| answer["body"]["pendingCommands"] == 1).await;
    assert_eq!(first.delete(&format!("/devices/{device}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
    eventually(|answer| answer["status"] == 401).await;
}

/// While an instance's notification connection is down it may miss a touch, so when the
/// connection is back its whole cache is dropped: a change it never heard of is not answered
/// from the entry it held. The change here is made by SQL of the test's own, which notifies no
/// one (as a notification lost with the connection would be), so only the reconnection can clear
/// the entry; before it, the stale entry is still answered (that is what makes this test able to
/// fail). Then the cache answers again: the instance follows the others once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_connection_drops_the_cache_when_it_is_back() {
    if !crate::helpers::postgres_variant_runs() {
        return;
    }
    let first = crate::helpers::spawn_app(crate::helpers::Engine::Postgres).await;
    let second = first.second_instance().await;
    let enroll = first.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let (device, token) = cached_on(&first, &second, &enroll, "LOST-1").await;

    let mut sql = first.raw().await;
    let changed = sql.execute("UPDATE devices SET token_hash = 'x' || token_hash WHERE id = $1", &[&device]).await;
    assert_eq!(changed, 1);
    // Nobody was told: the second instance still answers the old token from its cache.
    heartbeat_from_the_cache(&second, &token).await;

    // Both instances' listening backends (the first's connects at its start, so wait for it),
    // then terminate them and wait for two new ones: the old pids may linger for a moment.
    const LISTENERS: &str = "FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    // Listening backends other than those of `$1`, a comma-separated list of pids.
    let listening = format!("SELECT COUNT(*) {LISTENERS} AND NOT pid = ANY(string_to_array($1, ',')::INT[])");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sql.scalar_i64(&listening, &[""]).await < 2 {
        assert!(std::time::Instant::now() < deadline, "the instances never both listened");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let old = sql.scalar_text(&format!("SELECT string_agg(pid::TEXT, ',') {LISTENERS}"), &[]).await;
    let terminated =
        sql.scalar_i64(&format!("SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) {LISTENERS}) AS t"), &[]).await;
    assert_eq!(terminated, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sql.scalar_i64(&listening, &[&old]).await < 2 {
        assert!(std::time::Instant::now() < deadline, "the notification connections never came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sql.close().await;

    // The second answers from its cache again (so it follows the others once more), and the entry
    // it held from before the loss is gone: the old token is refused.
    cached_on(&first, &second, &enroll, "LOST-2").await;
    expect_problem(second.post("/devices/connect", &token, json!({})).await, StatusCode::UNAUTHORIZED).await;
}

/// Registers a device through `first` and heartbeats it through `second` until `second`'s
/// device cache answers it; answers the device's id and token.
async fn cached_on(
    first: &crate::helpers::TestApp,
    second: &crate::helpers::TestApp,
    enroll: &str,
    serial: &str,
) -> (String, String) {
    let (device, token) = first.register(enroll, json!({ "serialNumber": serial })).await;
    expect_json(second.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
    heartbeat_from_the_cache(second, &token).await;
    (id(&device), token)
}
