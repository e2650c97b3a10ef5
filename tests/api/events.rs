//! Events: the outbox's history, atomicity, the SSE stream and tenant isolation.

use std::time::Duration as StdDuration;

use chrono::Duration;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{engine_tests, expect_json, expect_problem, ClockExt, TestApp, ADMIN_TOKEN};

async fn all_events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let page = expect_json(app.get(&format!("/events?limit=500{query}"), token).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

/// Reads SSE frames until `n` events arrived (or 10 s passed); answers (seq, type) pairs.
async fn read_sse(response: reqwest::Response, n: usize) -> Vec<(i64, String, Value)> {
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE events in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                }
                if let Some(v) = line.strip_prefix("event:") {
                    kind = Some(v.trim().to_string());
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                events.push((id, kind, data));
            }
        }
    }
    events
}

engine_tests! {
    async fn every_change_is_recorded_in_order(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "EV-1" })).await;
        app.register(&enroll, json!({ "serialNumber": "EV-1", "deviceToken": token })).await;
        app.post("/devices/connect", &token, json!({})).await;
        app.delete(&format!("/devices/{}", device["id"].as_str().unwrap()), ADMIN_TOKEN).await;
        let events = all_events(&app, ADMIN_TOKEN, "").await;
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["device.registered", "device.reregistered", "device.deleted"],
            "the reregistration rotated the token, so the connect with the old one failed");
        for event in &events {
            assert_eq!(event["data"]["deviceId"], device["id"]);
            assert!(event["id"].is_string() && event["occurredAt"].is_string() && event["tenantId"].is_string());
        }
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let only = all_events(&app, ADMIN_TOKEN, "&type=device.deleted").await;
        assert_eq!(only.len(), 1);
        expect_problem(app.get("/events?type=device.exploded", ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        expect_problem(app.get("/events?cursor=xyz", ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;

        // Pages of one follow each other without gaps.
        let mut seen = Vec::new();
        let mut path = "/events?limit=1".to_string();
        loop {
            let page = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
            seen.extend(page["items"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()));
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/events?limit=1&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, seqs);
    }

    async fn a_failed_change_leaves_no_event(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.post("/devices", ADMIN_TOKEN, json!({ "name": "a", "serialNumber": "DUP" })).await;
        let before = all_events(&app, ADMIN_TOKEN, "").await.len();
        // The insert fails on the unique serial number after the event would have been written.
        expect_problem(app.post("/devices", ADMIN_TOKEN, json!({ "name": "b", "serialNumber": "DUP" })).await, StatusCode::CONFLICT).await;
        assert_eq!(all_events(&app, ADMIN_TOKEN, "").await.len(), before);

        // And inside one transaction: an event recorded, then an error, rolls back both.
        let (device, _) = app.register(&enroll, json!({ "serialNumber": "TX-1" })).await;
        let before = all_events(&app, ADMIN_TOKEN, "").await.len();
        let tenant: herd::ids::TenantId = device_tenant(&app).await;
        let device_id: herd::ids::DeviceId = device["id"].as_str().unwrap().parse().unwrap();
        {
            let mut tx = app.state.db.begin().await.unwrap();
            let event = herd::events::Event::DeviceDeleted { device_id };
            tx.record(tenant, &event, 0);
            // Dropped without commit, as any `?` after the change would do.
        }
        assert_eq!(all_events(&app, ADMIN_TOKEN, "").await.len(), before);
    }

    async fn events_are_private_to_their_tenant(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "PRIV" })).await;
        assert!(all_events(&app, &other_admin, "").await.is_empty());
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        app.register(&theirs, json!({ "serialNumber": "THEIRS" })).await;
        let mine = all_events(&app, ADMIN_TOKEN, "").await;
        assert_eq!(mine.len(), 1);
        let response = app.client.get(app.url("/events/stream")).bearer_auth(&other_admin).header("last-event-id", "0").send().await.unwrap();
        let events = read_sse(response, 1).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].2["data"]["name"], "THEIRS");
        expect_problem(app.get("/events", &enroll).await, StatusCode::FORBIDDEN).await;
    }

    async fn event_positions_count_only_the_tenants_own_events(app) {
        // Security finding 9: a global seq let one tenant count another's activity from gaps.
        let (_, other_admin) = app.create_tenant("counted").await;
        let mine = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        app.register(&mine, json!({ "serialNumber": "MINE-0" })).await;
        for i in 0..5 {
            app.register(&theirs, json!({ "serialNumber": format!("THEIRS-{i}") })).await;
        }
        app.register(&mine, json!({ "serialNumber": "MINE-1" })).await;
        let seqs: Vec<i64> = all_events(&app, ADMIN_TOKEN, "").await.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, vec![1, 2], "the other tenant's five events leave no gap");
        let theirs_seqs: Vec<i64> =
            all_events(&app, &other_admin, "").await.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(theirs_seqs, vec![1, 2, 3, 4, 5]);
        // Purging every old event does not restart the count: a client's cursor stays valid.
        app.clock.advance(Duration::days(8));
        let before = herd::clock::to_millis(app.clock.now_plus(Duration::zero()));
        herd::events::store::purge(&app.state.db, before).await.unwrap();
        app.register(&mine, json!({ "serialNumber": "MINE-2" })).await;
        let after: Vec<i64> = all_events(&app, ADMIN_TOKEN, "").await.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(after, vec![3]);
        let response = app.client.get(app.url("/events/stream")).bearer_auth(ADMIN_TOKEN).header("last-event-id", "2").send().await.unwrap();
        let streamed = read_sse(response, 1).await;
        assert_eq!(streamed[0].0, 3);
        assert_eq!(streamed[0].2["data"]["name"], "MINE-2");
    }

    async fn the_stream_resumes_after_a_disconnect_without_gaps(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "OLD" })).await;
        let response = app.client.get(app.url("/events/stream")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        for i in 0..2 {
            app.register(&enroll, json!({ "serialNumber": format!("LIVE-{i}") })).await;
        }
        let first = read_sse(response, 2).await;
        assert_eq!(first.iter().map(|e| e.2["data"]["name"].as_str().unwrap()).collect::<Vec<_>>(), vec!["LIVE-0", "LIVE-1"],
            "a fresh stream starts after what already happened");
        let last_id = first.last().unwrap().0;
        // Disconnected; meanwhile three more events happen.
        for i in 2..5 {
            app.register(&enroll, json!({ "serialNumber": format!("LIVE-{i}") })).await;
        }
        let response = app.client.get(app.url("/events/stream")).bearer_auth(ADMIN_TOKEN)
            .header("last-event-id", last_id.to_string()).send().await.unwrap();
        let resumed = read_sse(response, 3).await;
        assert_eq!(resumed.iter().map(|e| e.2["data"]["name"].as_str().unwrap()).collect::<Vec<_>>(), vec!["LIVE-2", "LIVE-3", "LIVE-4"]);
        assert!(resumed[0].0 > last_id);
        assert_eq!(resumed[0].1, "device.registered");
        let response = app.client.get(app.url("/events/stream")).bearer_auth(ADMIN_TOKEN).header("last-event-id", "x").send().await.unwrap();
        expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    async fn old_events_are_purged_after_the_retention(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "AGED" })).await;
        app.clock.advance(Duration::days(8));
        app.register(&enroll, json!({ "serialNumber": "FRESH" })).await;
        let before = herd::clock::to_millis(app.clock.now_plus(Duration::days(-7)));
        let purged = herd::events::store::purge(&app.state.db, before).await.unwrap();
        assert_eq!(purged, 1);
        let events = all_events(&app, ADMIN_TOKEN, "").await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["data"]["name"], "FRESH");
    }
}

async fn device_tenant(app: &TestApp) -> herd::ids::TenantId {
    let me = expect_json(app.get("/auth/me", ADMIN_TOKEN).await, StatusCode::OK).await;
    me["tenantId"].as_str().unwrap().parse().unwrap()
}
