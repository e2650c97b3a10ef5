//! Monitoring: default rules, rule CRUD and validation, evaluation at the thresholds, dedupe and
//! auto-resolve, late samples, offline rules on an injected clock, alerts, the stats overview,
//! and tenancy for every route.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    engine_tests, error_fields, expect_json, expect_problem, postgres_variant_runs, spawn_app_with, Engine,
    SpawnOptions, TestApp, ADMIN_TOKEN,
};
use crate::telemetry::{database, device, now, rfc3339};

async fn sample(app: &TestApp, token: &str, body: Value) {
    expect_json(app.post("/devices/metrics", token, body).await, StatusCode::OK).await;
}

/// A single sample recorded `seconds_ago` before the clock, with quiet values unless given.
fn reading(app: &TestApp, seconds_ago: i64, values: Value) -> Value {
    let mut body = json!({ "cpu": 10, "ram": 10, "storage": 10, "recordedAt": rfc3339(now(app) - Duration::seconds(seconds_ago)) });
    for (key, value) in values.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

async fn alerts(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let body = expect_json(app.get(&format!("/alerts?{query}"), token).await, StatusCode::OK).await;
    body["items"].as_array().expect("items").clone()
}

async fn create_rule(app: &TestApp, token: &str, body: Value) -> Value {
    expect_json(app.post("/monitoring-rules", token, body).await, StatusCode::CREATED).await
}

/// The default tenant's alert events, oldest first: `(type, data)`.
async fn alert_events(app: &TestApp) -> Vec<(String, Value)> {
    let path = "/events?type=alert.opened,alert.resolved&limit=500";
    let page = expect_json(app.get(path, ADMIN_TOKEN).await, StatusCode::OK).await;
    let items = page["items"].as_array().expect("items");
    items.iter().map(|item| (item["type"].as_str().expect("type").to_string(), item["data"].clone())).collect()
}

/// The overview's `alertsLast24h` as `token`'s tenant sees it.
async fn alert_count(app: &TestApp, token: &str) -> i64 {
    let overview = expect_json(app.get("/devices/stats/overview", token).await, StatusCode::OK).await;
    overview["alertsLast24h"].as_i64().expect("count")
}

engine_tests! {
    async fn every_tenant_starts_with_the_seed_rules_once(app) {
        let (_, admin) = app.create_tenant("fresh").await;
        // Concurrent first reads seed once.
        let reads = (0..4).map(|_| app.get("/monitoring-rules", &admin));
        for response in futures::future::join_all(reads).await {
            expect_json(response, StatusCode::OK).await;
        }
        let body = expect_json(app.get("/monitoring-rules", &admin).await, StatusCode::OK).await;
        let rules: Vec<(String, String, f64, String)> = body["items"].as_array().unwrap().iter().map(|r| (
            r["metric"].as_str().unwrap().to_string(), r["operator"].as_str().unwrap().to_string(),
            r["threshold"].as_f64().unwrap(), r["severity"].as_str().unwrap().to_string(),
        )).collect();
        assert_eq!(rules, vec![
            ("cpu".into(), "gt".into(), 90.0, "warning".into()),
            ("ram".into(), "gt".into(), 85.0, "warning".into()),
            ("cpu".into(), "gt".into(), 95.0, "critical".into()),
            ("ram".into(), "gt".into(), 95.0, "critical".into()),
        ]);
        assert!(body["items"].as_array().unwrap().iter().all(|r| r["enabled"] == true));
        // A deleted default stays deleted.
        let first = body["items"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(app.delete(&format!("/monitoring-rules/{first}"), &admin).await.status(), StatusCode::NO_CONTENT);
        let body = expect_json(app.get("/monitoring-rules", &admin).await, StatusCode::OK).await;
        assert_eq!(body["items"].as_array().unwrap().len(), 3);
        let page = expect_json(app.get("/monitoring-rules?limit=2", &admin).await, StatusCode::OK).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        let cursor = page["nextCursor"].as_str().unwrap();
        let rest = expect_json(app.get(&format!("/monitoring-rules?limit=2&cursor={cursor}"), &admin).await, StatusCode::OK).await;
        assert_eq!(rest["items"].as_array().unwrap().len(), 1);
        assert_eq!(rest["nextCursor"], Value::Null);
    }

    async fn rules_fire_strictly_above_gt_and_at_gte_thresholds(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "M-1").await;
        // The seed's CPU > 90: equal and just below do not breach, just above does.
        sample(&app, &token, reading(&app, 300, json!({ "cpu": 90 }))).await;
        sample(&app, &token, reading(&app, 240, json!({ "cpu": 89.99 }))).await;
        assert!(alerts(&app, ADMIN_TOKEN, "").await.is_empty());
        sample(&app, &token, reading(&app, 180, json!({ "cpu": 90.01 }))).await;
        let open = alerts(&app, ADMIN_TOKEN, "status=open").await;
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0]["metric"], "cpu");
        assert_eq!(open[0]["severity"], "warning");
        assert_eq!(open[0]["deviceId"], id.as_str());
        assert_eq!(open[0]["deviceName"], "Screen M-1");
        assert_eq!(open[0]["value"], 90.01);
        assert_eq!(open[0]["threshold"], 90.0);

        // gte and lte fire at the threshold itself, not just before it.
        create_rule(&app, ADMIN_TOKEN, json!({ "name": "Disk nearly full", "metric": "storage", "operator": "gte", "threshold": 80, "severity": "critical" })).await;
        create_rule(&app, ADMIN_TOKEN, json!({ "name": "Too cold", "metric": "temperature", "operator": "lte", "threshold": 5, "severity": "info" })).await;
        sample(&app, &token, reading(&app, 120, json!({ "storage": 79.99, "temperature": 5.01 }))).await;
        assert!(alerts(&app, ADMIN_TOKEN, "status=open&severity=critical").await.is_empty());
        assert!(alerts(&app, ADMIN_TOKEN, "status=open&severity=info").await.is_empty());
        sample(&app, &token, reading(&app, 60, json!({ "storage": 80, "temperature": 5 }))).await;
        let critical = alerts(&app, ADMIN_TOKEN, "status=open&severity=critical").await;
        assert_eq!(critical.len(), 1);
        assert_eq!(critical[0]["metric"], "storage");
        let info = alerts(&app, ADMIN_TOKEN, "status=open&severity=info").await;
        assert_eq!(info.len(), 1);
        assert_eq!(info[0]["metric"], "temperature");
        // A sample without a temperature neither breaches nor resolves the temperature rule.
        sample(&app, &token, reading(&app, 30, json!({ "storage": 10 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=open&severity=info").await.len(), 1);
        assert!(alerts(&app, ADMIN_TOKEN, "status=open&severity=critical").await.is_empty());
    }

    async fn repeated_breaches_update_one_alert_and_recovery_resolves_it(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "M-2").await;
        sample(&app, &token, reading(&app, 300, json!({ "ram": 86 }))).await;
        sample(&app, &token, reading(&app, 240, json!({ "ram": 88 }))).await;
        // Breaches that only continue the open alert leave the device's cached credential
        // alone (its `alerting` stays true): the next heartbeat is still answered from the cache.
        crate::devices::heartbeat_from_the_cache(&app, &token).await;
        sample(&app, &token, json!({ "samples": [
            reading(&app, 200, json!({ "ram": 87 })),
            reading(&app, 180, json!({ "ram": 89 })),
        ]})).await;
        let hits = crate::devices::cache_hits(&app).await;
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        assert_eq!(crate::devices::cache_hits(&app).await, hits + 1, "a continuing alert evicted the device");
        let all = alerts(&app, ADMIN_TOKEN, "").await;
        assert_eq!(all.len(), 1, "one alert per (device, rule): {all:?}");
        let alert = &all[0];
        assert_eq!(alert["status"], "open");
        assert_eq!(alert["value"], 86.0);
        assert_eq!(alert["lastValue"], 89.0);
        assert_eq!(alert["breachCount"], 4);

        sample(&app, &token, reading(&app, 120, json!({ "ram": 85 }))).await;
        let all = alerts(&app, ADMIN_TOKEN, "").await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["status"], "resolved");
        assert!(all[0]["resolvedAt"].is_string());
        assert!(alerts(&app, ADMIN_TOKEN, "status=open").await.is_empty());

        // A new breach after the recovery is a new alert.
        sample(&app, &token, reading(&app, 60, json!({ "ram": 99 }))).await;
        let open = alerts(&app, ADMIN_TOKEN, "status=open").await;
        assert_eq!(open.len(), 2, "warning and critical RAM: {open:?}");
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=resolved").await.len(), 1);
        assert_eq!(alerts(&app, ADMIN_TOKEN, &format!("deviceId={id}")).await.len(), 3);

        let events = alert_events(&app).await;
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, ["alert.opened", "alert.resolved", "alert.opened", "alert.opened"]);
        assert_eq!(events[0].1["deviceId"], id.as_str());
        assert_eq!(events[0].1["metric"], "ram");
        assert_eq!(events[1].1["reason"], "recovered");
        assert_eq!(events[1].1["value"], 85.0);
    }

    async fn late_samples_are_stored_but_do_not_change_alerts(app) {
        let (_, token) = device(&app, ADMIN_TOKEN, "M-3").await;
        sample(&app, &token, reading(&app, 60, json!({ "cpu": 99 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=open").await.len(), 2);
        // Older than the newest sample: history only.
        sample(&app, &token, reading(&app, 600, json!({ "cpu": 10 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=open").await.len(), 2);
        sample(&app, &token, reading(&app, 0, json!({ "cpu": 10 }))).await;
        assert!(alerts(&app, ADMIN_TOKEN, "status=open").await.is_empty());
        sample(&app, &token, reading(&app, 30, json!({ "cpu": 99 }))).await;
        assert!(alerts(&app, ADMIN_TOKEN, "status=open").await.is_empty(), "a late breach opens nothing");
    }

    async fn disabling_or_deleting_a_rule_resolves_its_alerts(app) {
        let (_, token) = device(&app, ADMIN_TOKEN, "M-6").await;
        let rule = create_rule(&app, ADMIN_TOKEN, json!({ "name": "Warm", "metric": "temperature", "operator": "gt", "threshold": 60, "severity": "warning" })).await;
        let rule_id = rule["id"].as_str().unwrap();
        sample(&app, &token, reading(&app, 60, json!({ "temperature": 70, "cpu": 99 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=open").await.len(), 3);
        let patched = expect_json(app.patch(&format!("/monitoring-rules/{rule_id}"), ADMIN_TOKEN, json!({ "enabled": false })).await, StatusCode::OK).await;
        assert_eq!(patched["enabled"], false);
        assert_eq!(patched["threshold"], 60.0, "a patch keeps what it does not name");
        let open = alerts(&app, ADMIN_TOKEN, "status=open").await;
        assert_eq!(open.len(), 2);
        assert!(open.iter().all(|a| a["metric"] == "cpu"));
        // A disabled rule does not fire.
        sample(&app, &token, reading(&app, 30, json!({ "temperature": 80, "cpu": 99 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "status=open").await.len(), 2);

        let cpu_rule = open[0]["ruleId"].as_str().unwrap().to_string();
        assert_eq!(app.delete(&format!("/monitoring-rules/{cpu_rule}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        let resolved = alerts(&app, ADMIN_TOKEN, "status=resolved").await;
        let deleted = resolved.iter().find(|a| a["ruleName"] == open[0]["ruleName"]).expect("the deleted rule's alert");
        assert_eq!(deleted["ruleId"], Value::Null, "history outlives the rule");
        expect_problem(app.get(&format!("/monitoring-rules/{cpu_rule}"), ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        let reasons: Vec<String> = alert_events(&app).await.into_iter().filter(|(kind, _)| kind == "alert.resolved").map(|(_, data)| data["reason"].as_str().unwrap().to_string()).collect();
        assert_eq!(reasons, ["rule_disabled", "rule_deleted"]);
    }

    async fn rules_are_validated_and_need_an_admin(app) {
        let cases = [
            (json!({ "name": "x", "metric": "disk", "operator": "gt", "threshold": 1, "severity": "info" }), vec!["metric"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "above", "threshold": 1, "severity": "info" }), vec!["operator"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 101, "severity": "info" }), vec!["threshold"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": "high", "severity": "info" }), vec!["threshold"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "urgent" }), vec!["severity"]),
            (json!({ "name": " ", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info" }), vec!["name"]),
            (json!({ "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info" }), vec!["name"]),
            (json!({ "name": "x", "metric": "offline", "operator": "lt", "threshold": 10, "severity": "info" }), vec!["operator"]),
            (json!({ "name": "x", "metric": "offline", "operator": "gt", "threshold": 0, "severity": "info" }), vec!["threshold"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info", "deviceIds": ["nope"] }), vec!["deviceIds[0]"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info", "tags": [] }), vec!["tags"]),
            (json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info", "tags": ["a"], "deviceIds": [uuid::Uuid::now_v7().to_string()] }), vec!["tags"]),
        ];
        for (body, fields) in cases {
            let problem = expect_problem(app.post("/monitoring-rules", ADMIN_TOKEN, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), fields, "{body}");
        }
        let rule = create_rule(&app, ADMIN_TOKEN, json!({ "name": "Hot CPU", "metric": "cpu", "operator": "gte", "threshold": 70, "severity": "info" })).await;
        let path = format!("/monitoring-rules/{}", rule["id"].as_str().unwrap());
        // A patch is checked against the merged rule.
        let problem = expect_problem(app.patch(&path, ADMIN_TOKEN, json!({ "metric": "offline", "operator": "lt" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["operator"]);
        let problem = expect_problem(app.patch(&path, ADMIN_TOKEN, json!({ "threshold": -1 })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["threshold"]);
        let patched = expect_json(app.patch(&path, ADMIN_TOKEN, json!({ "threshold": 75.5, "tags": ["lobby"] })).await, StatusCode::OK).await;
        assert_eq!(patched["threshold"], 75.5);
        assert_eq!(patched["tags"], json!(["lobby"]));
        assert_eq!(patched["name"], "Hot CPU");
        let cleared = expect_json(app.patch(&path, ADMIN_TOKEN, json!({ "tags": null })).await, StatusCode::OK).await;
        assert_eq!(cleared["tags"], Value::Null);

        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_json(app.get("/monitoring-rules", &viewer).await, StatusCode::OK).await;
        expect_json(app.get(&path, &viewer).await, StatusCode::OK).await;
        expect_problem(app.post("/monitoring-rules", &operator, json!({ "name": "x", "metric": "cpu", "operator": "gt", "threshold": 1, "severity": "info" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.patch(&path, &operator, json!({ "enabled": false })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.delete(&path, &operator).await, StatusCode::FORBIDDEN).await;
    }

    async fn rules_scoped_to_devices_or_tags_watch_only_those(app) {
        let (a, a_token) = device(&app, ADMIN_TOKEN, "M-7").await;
        let (b, b_token) = device(&app, ADMIN_TOKEN, "M-8").await;
        app.patch(&format!("/devices/{b}"), ADMIN_TOKEN, json!({ "tags": ["lobby"] })).await;
        create_rule(&app, ADMIN_TOKEN, json!({ "name": "A's storage", "metric": "storage", "operator": "gt", "threshold": 50, "severity": "info", "deviceIds": [a] })).await;
        create_rule(&app, ADMIN_TOKEN, json!({ "name": "Lobby storage", "metric": "storage", "operator": "gt", "threshold": 60, "severity": "critical", "tags": ["lobby"] })).await;
        sample(&app, &a_token, reading(&app, 10, json!({ "storage": 70 }))).await;
        sample(&app, &b_token, reading(&app, 10, json!({ "storage": 70 }))).await;
        let a_alerts = alerts(&app, ADMIN_TOKEN, &format!("deviceId={a}")).await;
        assert_eq!(a_alerts.len(), 1);
        assert_eq!(a_alerts[0]["ruleName"], "A's storage");
        let b_alerts = alerts(&app, ADMIN_TOKEN, &format!("deviceId={b}")).await;
        assert_eq!(b_alerts.len(), 1);
        assert_eq!(b_alerts[0]["ruleName"], "Lobby storage");

        // Tags given after the device's credential was cached (by its first sample) count at once.
        let (c, c_token) = device(&app, ADMIN_TOKEN, "M-10").await;
        sample(&app, &c_token, reading(&app, 20, json!({ "storage": 10 }))).await;
        app.patch(&format!("/devices/{c}"), ADMIN_TOKEN, json!({ "tags": ["lobby"] })).await;
        sample(&app, &c_token, reading(&app, 10, json!({ "storage": 70 }))).await;
        let c_alerts = alerts(&app, ADMIN_TOKEN, &format!("deviceId={c}")).await;
        assert_eq!(c_alerts.len(), 1, "{c_alerts:?}");
        assert_eq!(c_alerts[0]["ruleName"], "Lobby storage");
    }

    async fn alerts_filter_page_and_acknowledge(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "M-9").await;
        sample(&app, &token, reading(&app, 60, json!({ "cpu": 99, "ram": 99 }))).await;
        assert_eq!(alerts(&app, ADMIN_TOKEN, "").await.len(), 4);
        assert_eq!(alerts(&app, ADMIN_TOKEN, "severity=critical").await.len(), 2);
        let since = rfc3339(now(&app) + Duration::seconds(1)).replace('+', "%2B");
        assert!(alerts(&app, ADMIN_TOKEN, &format!("since={since}")).await.is_empty());
        let page = expect_json(app.get("/alerts?limit=3", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 3);
        let cursor = page["nextCursor"].as_str().unwrap();
        let rest = expect_json(app.get(&format!("/alerts?limit=3&cursor={cursor}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(rest["items"].as_array().unwrap().len(), 1);
        let newest_first: Vec<String> = page["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
        let mut sorted = newest_first.clone();
        sorted.sort_by(|x, y| y.cmp(x));
        assert_eq!(newest_first, sorted);

        for (query, field) in [("status=closed", "status"), ("severity=loud", "severity"), ("deviceId=x", "deviceId"), ("since=soon", "since"), ("limit=0", "limit")] {
            let problem = expect_problem(app.get(&format!("/alerts?{query}"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), [field], "{query}");
        }

        let alert_id = newest_first[0].clone();
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_problem(app.post(&format!("/alerts/{alert_id}/acknowledge"), &viewer, json!({})).await, StatusCode::FORBIDDEN).await;
        let acked = expect_json(app.post(&format!("/alerts/{alert_id}/acknowledge"), &operator, json!({})).await, StatusCode::OK).await;
        assert!(acked["acknowledgedAt"].is_string());
        assert_eq!(acked["status"], "open", "acknowledging does not resolve");
        let first_by = acked["acknowledgedBy"].clone();
        app.clock.advance(Duration::minutes(1));
        let again = expect_json(app.post(&format!("/alerts/{alert_id}/acknowledge"), ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(again["acknowledgedAt"], acked["acknowledgedAt"]);
        assert_eq!(again["acknowledgedBy"], first_by);
        let one = expect_json(app.get(&format!("/alerts/{alert_id}"), &viewer).await, StatusCode::OK).await;
        assert_eq!(one["deviceId"], id.as_str());
        expect_problem(app.post(&format!("/alerts/{}/acknowledge", uuid::Uuid::now_v7()), ADMIN_TOKEN, json!({})).await, StatusCode::NOT_FOUND).await;
    }

    async fn the_overview_counts_a_scripted_scenario(app) {
        let (_, admin) = app.create_tenant("overview").await;
        let empty = expect_json(app.get("/devices/stats/overview", &admin).await, StatusCode::OK).await;
        let no_updates = json!({ "ready": 0, "running": 0, "paused": 0, "completed": 0, "cancelled": 0, "devices": {
            "pending": 0, "notified": 0, "downloading": 0, "downloaded": 0, "installing": 0, "installed": 0,
            "failed": 0, "skipped": 0, "cancelled": 0 } });
        assert_eq!(empty, json!({ "total": 0, "active": 0, "offline": 0, "alertsLast24h": 0, "recentAlerts": [], "updates": no_updates }));

        let (a, a_token) = device(&app, &admin, "O-1").await;
        let (_, b_token) = device(&app, &admin, "O-2").await;
        device(&app, &admin, "O-3").await;
        expect_json(app.post("/devices/connect", &a_token, json!({})).await, StatusCode::OK).await;
        expect_json(app.post("/devices/connect", &b_token, json!({})).await, StatusCode::OK).await;
        // Yesterday's alert (more than 24 hours ago) counts in recentAlerts but not alertsLast24h.
        sample(&app, &a_token, reading(&app, 10, json!({ "ram": 90 }))).await;
        sample(&app, &a_token, reading(&app, 5, json!({ "ram": 10 }))).await;
        app.clock.advance(Duration::hours(25));
        expect_json(app.post("/devices/connect", &a_token, json!({})).await, StatusCode::OK).await;
        expect_json(app.post("/devices/connect", &b_token, json!({})).await, StatusCode::OK).await;
        sample(&app, &a_token, reading(&app, 10, json!({ "cpu": 96 }))).await;

        let overview = expect_json(app.get("/devices/stats/overview", &admin).await, StatusCode::OK).await;
        assert_eq!(overview["total"], 3);
        assert_eq!(overview["active"], 2);
        assert_eq!(overview["offline"], 1);
        assert_eq!(overview["alertsLast24h"], 2, "CPU warning and critical; not yesterday's RAM: {overview}");
        let recent = overview["recentAlerts"].as_array().unwrap();
        assert_eq!(recent.len(), 3);
        for alert in recent {
            let keys: Vec<&str> = alert.as_object().unwrap().keys().map(String::as_str).collect();
            for key in ["id", "deviceId", "deviceName", "metric", "value", "threshold", "severity", "createdAt"] {
                assert!(keys.contains(&key), "{key} missing in {alert}");
            }
            assert_eq!(alert["deviceId"], a.as_str());
            assert_eq!(alert["deviceName"], "Screen O-1");
        }
        assert_eq!(recent[2]["metric"], "ram", "newest first: {recent:?}");
        assert!(recent[..2].iter().all(|a| a["metric"] == "cpu" && a["value"] == 96.0));
        let severities: Vec<&str> = recent[..2].iter().map(|a| a["severity"].as_str().unwrap()).collect();
        assert!(severities.contains(&"warning") && severities.contains(&"critical"));

        let viewer = app.api_token(&admin, "viewer").await;
        expect_json(app.get("/devices/stats/overview", &viewer).await, StatusCode::OK).await;
        expect_problem(app.get("/devices/stats/overview", &a_token).await, StatusCode::FORBIDDEN).await;
    }

    async fn the_overviews_alert_count_follows_opens_resolves_deletes_and_the_window(app) {
        // alertsLast24h comes from maintained counters (migration 0014) plus the window's first
        // bucket counted from the alerts themselves: it must equal "alerts created in the last
        // 24 hours" after every kind of write, and at the window's edge to the millisecond.
        let (_, admin) = app.create_tenant("counted").await;
        let (_, a_token) = device(&app, &admin, "C-1").await;
        let (b, b_token) = device(&app, &admin, "C-2").await;
        // Mid-bucket, so the window's start falls inside a ten-minute bucket.
        app.clock.advance(Duration::milliseconds(3 * 60_000 + 7_123));
        let opened_at = now(&app);
        sample(&app, &a_token, reading(&app, 0, json!({ "cpu": 96 }))).await;
        assert_eq!(alert_count(&app, &admin).await, 2, "CPU warning and critical opened");
        sample(&app, &a_token, reading(&app, 0, json!({ "cpu": 10 }))).await;
        assert_eq!(alert_count(&app, &admin).await, 2, "resolving an alert does not uncount it");
        app.clock.advance(Duration::hours(5));
        sample(&app, &b_token, reading(&app, 0, json!({ "ram": 90 }))).await;
        assert_eq!(alert_count(&app, &admin).await, 3);
        assert_eq!(alert_count(&app, ADMIN_TOKEN).await, 0, "another tenant's alerts are not counted");

        // The retention step drops only buckets that left the window.
        let db = database(&app).await;
        let retention = std::time::Duration::from_secs(30 * 86_400);
        herd::telemetry::purge_expired(&db, herd::clock::to_millis(now(&app)), retention).await.unwrap();
        assert_eq!(alert_count(&app, &admin).await, 3);

        // Deleting a device deletes its alerts, and they leave the count.
        assert_eq!(app.delete(&format!("/devices/{b}"), &admin).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(alert_count(&app, &admin).await, 2);

        // An alert counts while created_at > now - 24 h: still at 24 h - 1 ms, gone at 24 h.
        let edge = opened_at + Duration::hours(24);
        app.clock.advance(edge - now(&app) - Duration::milliseconds(1));
        assert_eq!(alert_count(&app, &admin).await, 2);
        app.clock.advance(Duration::milliseconds(1));
        assert_eq!(alert_count(&app, &admin).await, 0);
        app.clock.advance(Duration::minutes(25));
        herd::telemetry::purge_expired(&db, herd::clock::to_millis(now(&app)), retention).await.unwrap();
        assert_eq!(alert_count(&app, &admin).await, 0);
        sample(&app, &a_token, reading(&app, 0, json!({ "ram": 99 }))).await;
        assert_eq!(alert_count(&app, &admin).await, 2, "RAM warning and critical");
        herd::telemetry::purge_expired(&db, herd::clock::to_millis(now(&app)), retention).await.unwrap();
        assert_eq!(alert_count(&app, &admin).await, 2);
        db.close().await;
    }

    async fn alerts_opened_by_concurrent_requests_are_all_counted(app) {
        // On PostgreSQL concurrent ingest transactions upsert counter shards at once.
        let (_, admin) = app.create_tenant("busy").await;
        let mut tokens = Vec::new();
        for i in 0..12 {
            tokens.push(device(&app, &admin, &format!("B-{i}")).await.1);
        }
        let posts = tokens.iter().map(|token| app.post("/devices/metrics", token, reading(&app, 0, json!({ "cpu": 96 }))));
        for response in futures::future::join_all(posts).await {
            expect_json(response, StatusCode::OK).await;
        }
        let listed = alerts(&app, &admin, "limit=100").await.len();
        assert_eq!(listed, 24);
        let overview = expect_json(app.get("/devices/stats/overview", &admin).await, StatusCode::OK).await;
        assert_eq!(overview["alertsLast24h"], 24);
    }

    async fn another_tenants_rules_and_alerts_answer_like_missing_ones(app) {
        let (a, token) = device(&app, ADMIN_TOKEN, "M-10").await;
        sample(&app, &token, reading(&app, 10, json!({ "cpu": 99 }))).await;
        let alert = alerts(&app, ADMIN_TOKEN, "").await[0]["id"].as_str().unwrap().to_string();
        let rule = create_rule(&app, ADMIN_TOKEN, json!({ "name": "Mine", "metric": "cpu", "operator": "gt", "threshold": 50, "severity": "info" })).await;
        let rule = rule["id"].as_str().unwrap().to_string();
        let (_, other) = app.create_tenant("other").await;
        let missing = uuid::Uuid::now_v7();

        for (theirs, absent) in [
            (app.get(&format!("/monitoring-rules/{rule}"), &other).await, app.get(&format!("/monitoring-rules/{missing}"), &other).await),
            (app.patch(&format!("/monitoring-rules/{rule}"), &other, json!({ "enabled": false })).await, app.patch(&format!("/monitoring-rules/{missing}"), &other, json!({ "enabled": false })).await),
            (app.delete(&format!("/monitoring-rules/{rule}"), &other).await, app.delete(&format!("/monitoring-rules/{missing}"), &other).await),
            (app.get(&format!("/alerts/{alert}"), &other).await, app.get(&format!("/alerts/{missing}"), &other).await),
            (app.post(&format!("/alerts/{alert}/acknowledge"), &other, json!({})).await, app.post(&format!("/alerts/{missing}/acknowledge"), &other, json!({})).await),
        ] {
            let theirs = expect_problem(theirs, StatusCode::NOT_FOUND).await;
            let absent = expect_problem(absent, StatusCode::NOT_FOUND).await;
            assert_eq!(theirs["detail"], absent["detail"]);
        }
        assert!(alerts(&app, &other, "").await.is_empty());
        assert!(alerts(&app, &other, &format!("deviceId={a}")).await.is_empty());
        let rules = expect_json(app.get("/monitoring-rules", &other).await, StatusCode::OK).await;
        assert!(rules["items"].as_array().unwrap().iter().all(|r| r["id"] != rule.as_str()));
        let overview = expect_json(app.get("/devices/stats/overview", &other).await, StatusCode::OK).await;
        assert_eq!(overview["total"], 0);
        assert_eq!(overview["alertsLast24h"], 0);
        // Nothing changed in the owner's tenant.
        let mine = expect_json(app.get(&format!("/monitoring-rules/{rule}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["enabled"], true);
        let mine = expect_json(app.get(&format!("/alerts/{alert}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["acknowledgedAt"], Value::Null);
    }
}

/// Offline rules on the injected clock. Not in `engine_tests!`: the app's own presence sweep
/// must not run while the clock jumps, so it gets an hour-long interval.
async fn offline_rules_scenario(engine: Engine) {
    let options = SpawnOptions {
        adjust: Box::new(|settings| settings.presence_sweep_interval = std::time::Duration::from_secs(3600)),
        ..SpawnOptions::default()
    };
    let app = spawn_app_with(engine, options).await;
    let (id, token) = device(&app, ADMIN_TOKEN, "M-4").await;
    let (other, other_token) = device(&app, ADMIN_TOKEN, "M-5").await;
    app.patch(&format!("/devices/{other}"), ADMIN_TOKEN, json!({ "tags": ["spare"] })).await;
    expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
    let rule = create_rule(&app, ADMIN_TOKEN, json!({ "name": "Gone quiet", "metric": "offline", "operator": "gt", "threshold": 30, "severity": "critical", "tags": ["spare"] })).await;
    let everyone = create_rule(&app, ADMIN_TOKEN, json!({ "name": "Gone an hour", "metric": "offline", "operator": "gte", "threshold": 60, "severity": "warning" })).await;
    let db = database(&app).await;
    let at = |app: &TestApp| herd::clock::to_millis(now(app));

    // 30 minutes exactly is not "longer than 30".
    app.clock.advance(Duration::minutes(30));
    let outcome = herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap();
    assert_eq!(outcome.opened, 0);
    app.clock.advance(Duration::seconds(1));
    let outcome = herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap();
    assert_eq!(outcome.opened, 1, "only the tagged, offline device");
    let open = alerts(&app, ADMIN_TOKEN, "status=open").await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["deviceId"], other.as_str());
    assert_eq!(open[0]["metric"], "offline");
    assert_eq!(open[0]["ruleId"], rule["id"]);
    assert_eq!(open[0]["value"], 30.0);
    // Running again (or on a second instance) opens nothing twice.
    assert_eq!(
        herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap(),
        herd::monitoring::OfflineOutcome::default()
    );

    // The online device is never an offline alert, whatever its age; at 60 minutes (gte)
    // the other rule fires for the offline device.
    app.clock.advance(Duration::minutes(29) + Duration::seconds(59));
    let outcome = herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap();
    assert_eq!(outcome.opened, 1);
    let open = alerts(&app, ADMIN_TOKEN, "status=open").await;
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|a| a["deviceId"] == other.as_str()));
    assert!(open.iter().any(|a| a["ruleId"] == everyone["id"]));
    assert!(alerts(&app, ADMIN_TOKEN, &format!("deviceId={id}")).await.is_empty());

    // Back online: both resolve at the next sweep, each announced once.
    expect_json(app.post("/devices/connect", &other_token, json!({})).await, StatusCode::OK).await;
    let outcome = herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap();
    assert_eq!(outcome.resolved, 2);
    assert!(alerts(&app, ADMIN_TOKEN, "status=open").await.is_empty());
    assert_eq!(herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap().resolved, 0);
    let kinds: Vec<String> = alert_events(&app).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["alert.opened", "alert.opened", "alert.resolved", "alert.resolved"]);

    app.clock.advance(Duration::minutes(120));
    let outcome = herd::monitoring::evaluate_offline(&db, &app.state.system, at(&app)).await.unwrap();
    assert_eq!(outcome.opened, 0, "both devices are online");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_offline_rules_fire_after_their_threshold_and_resolve_when_back() {
    offline_rules_scenario(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_offline_rules_fire_after_their_threshold_and_resolve_when_back() {
    if !postgres_variant_runs() {
        return;
    }
    offline_rules_scenario(Engine::Postgres).await;
}
