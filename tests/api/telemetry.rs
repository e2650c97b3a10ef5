//! Telemetry: ingest (one sample, batches, bad input, idempotency), bucketed history against a
//! hand-computed expectation, retention, a month of samples, and tenancy.

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, ClockExt, TestApp, ADMIN_TOKEN};

/// A fresh device of the admin's tenant: `(device id, device token)`.
pub(crate) async fn device(app: &TestApp, admin: &str, serial: &str) -> (String, String) {
    let enroll = app.enrollment_token(admin, json!({})).await;
    let (device, token) =
        app.register(&enroll, json!({ "serialNumber": serial, "name": format!("Screen {serial}") })).await;
    (device["id"].as_str().expect("id").to_string(), token)
}

/// A second handle on the test app's database, for calling job steps directly.
pub(crate) async fn database(app: &TestApp) -> herd::store::Db {
    let (db, _system) = herd::store::Db::open(&app.settings.database_url).await.expect("database");
    db
}

pub(crate) fn now(app: &TestApp) -> DateTime<Utc> {
    app.clock.now_plus(Duration::zero())
}

pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn at(h: u32, m: u32, s: u32, ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, h, m, s).single().expect("time") + Duration::milliseconds(ms)
}

async fn history(app: &TestApp, token: &str, id: &str, query: &str) -> Value {
    expect_json(app.get(&format!("/devices/{id}/metrics?{query}"), token).await, StatusCode::OK).await
}

fn close(actual: &Value, expected: f64) {
    let actual = actual.as_f64().unwrap_or_else(|| panic!("not a number: {actual}"));
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

engine_tests! {
    async fn concurrent_single_samples_are_each_answered_for_their_own_rows(app) {
        // Requests in flight together are written as one group: each still learns what *it*
        // stored, a request repeated concurrently stores its sample once, and a device deleted
        // while its samples are in flight fails only its own requests.
        let (kept, kept_token) = device(&app, ADMIN_TOKEN, "G-1").await;
        let (doomed, doomed_token) = device(&app, ADMIN_TOKEN, "G-2").await;
        let post = |token: &str, minutes: i64| {
            let (client, url, token) = (app.client.clone(), app.url("/devices/metrics"), token.to_string());
            let body = json!({ "cpu": 1, "ram": 2, "storage": 3, "recordedAt": rfc3339(now(&app) - Duration::minutes(minutes)) });
            tokio::spawn(async move {
                let response = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            })
        };
        let mut kept_requests = Vec::new();
        let mut doomed_requests = Vec::new();
        for minute in 1..=40 {
            // Every sample of the kept device twice, at once.
            kept_requests.push(post(&kept_token, minute));
            kept_requests.push(post(&kept_token, minute));
            doomed_requests.push(post(&doomed_token, minute));
        }
        let deleted = app.delete(&format!("/devices/{doomed}"), ADMIN_TOKEN).await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        let (mut accepted, mut duplicates) = (0, 0);
        for request in kept_requests {
            let (status, body) = request.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            accepted += body["accepted"].as_i64().unwrap();
            duplicates += body["duplicates"].as_i64().unwrap();
        }
        assert_eq!((accepted, duplicates), (40, 40), "each sample stored once and reported once as stored");
        for request in doomed_requests {
            let (status, body) = request.await.unwrap();
            assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED, "{status}: {body}");
        }
        let stored = history(&app, ADMIN_TOKEN, &kept, "bucket=1h").await;
        let samples: i64 = stored["buckets"].as_array().unwrap().iter().map(|b| b["samples"].as_i64().unwrap()).sum();
        assert_eq!(samples, 40, "{stored}");
    }

    async fn one_sample_or_a_batch_is_stored_once(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-1").await;
        let one = expect_json(app.post("/devices/metrics", &token, json!({ "cpu": 12.5, "ram": 40, "storage": 70, "temperature": 45 })).await, StatusCode::OK).await;
        assert_eq!(one, json!({ "accepted": 1, "duplicates": 0 }));
        let samples: Vec<Value> = (1..=3)
            .map(|i| json!({ "cpu": i, "ram": i, "storage": i, "recordedAt": rfc3339(now(&app) - Duration::minutes(i)) }))
            .collect();
        let batch = expect_json(app.post("/devices/metrics", &token, json!({ "samples": samples })).await, StatusCode::OK).await;
        assert_eq!(batch, json!({ "accepted": 3, "duplicates": 0 }));
        // A retry of the same batch stores nothing twice.
        let retry = expect_json(app.post("/devices/metrics", &token, json!({ "samples": samples })).await, StatusCode::OK).await;
        assert_eq!(retry, json!({ "accepted": 0, "duplicates": 3 }));

        let body = history(&app, ADMIN_TOKEN, &id, "bucket=1h").await;
        let buckets = body["buckets"].as_array().unwrap();
        let total: i64 = buckets.iter().map(|b| b["samples"].as_i64().unwrap()).sum();
        assert_eq!(total, 4);
        assert_eq!(body["bucket"], "1h");
        close(&body["latest"]["cpu"], 12.5);
        close(&body["latest"]["temperature"], 45.0);
    }

    async fn history_buckets_match_a_hand_computed_expectation(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-2").await;
        let samples = json!({ "samples": [
            { "recordedAt": rfc3339(at(11, 0, 10, 0)), "cpu": 10, "ram": 20, "storage": 30, "temperature": 40 },
            { "recordedAt": rfc3339(at(11, 1, 0, 0)), "cpu": 30, "ram": 40, "storage": 50 },
            { "recordedAt": rfc3339(at(11, 4, 59, 999)), "cpu": 20, "ram": 60, "storage": 70, "temperature": 50 },
            { "recordedAt": rfc3339(at(11, 5, 0, 0)), "cpu": 90, "ram": 10, "storage": 10 },
        ]});
        expect_json(app.post("/devices/metrics", &token, samples).await, StatusCode::OK).await;

        let query = format!("from={}&to={}&bucket=5m", rfc3339(at(11, 0, 0, 0)), rfc3339(at(12, 0, 0, 0)));
        let body = history(&app, ADMIN_TOKEN, &id, &query.replace('+', "%2B")).await;
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 2, "{body}");
        let first = &buckets[0];
        assert_eq!(first["start"], "2026-01-01T11:00:00Z");
        assert_eq!(first["samples"], 3);
        for (metric, avg, min, max) in [("cpu", 20.0, 10.0, 30.0), ("ram", 40.0, 20.0, 60.0), ("storage", 50.0, 30.0, 70.0), ("temperature", 45.0, 40.0, 50.0)] {
            close(&first[metric]["avg"], avg);
            close(&first[metric]["min"], min);
            close(&first[metric]["max"], max);
        }
        let second = &buckets[1];
        assert_eq!(second["start"], "2026-01-01T11:05:00Z");
        assert_eq!(second["samples"], 1);
        close(&second["cpu"]["avg"], 90.0);
        assert_eq!(second["temperature"], Value::Null, "no sample of the bucket had a temperature");

        // 1m buckets over [11:01, 11:05): from is inclusive, to exclusive.
        let query = format!("from={}&to={}&bucket=1m", rfc3339(at(11, 1, 0, 0)), rfc3339(at(11, 5, 0, 0)));
        let body = history(&app, ADMIN_TOKEN, &id, &query).await;
        let starts: Vec<&str> = body["buckets"].as_array().unwrap().iter().map(|b| b["start"].as_str().unwrap()).collect();
        assert_eq!(starts, ["2026-01-01T11:01:00Z", "2026-01-01T11:04:00Z"]);

        // Bad queries name the parameter.
        let problem = expect_problem(app.get(&format!("/devices/{id}/metrics?bucket=2m"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["bucket"]);
        let query = format!("from={}&to={}", rfc3339(at(12, 0, 0, 0)), rfc3339(at(11, 0, 0, 0)));
        let problem = expect_problem(app.get(&format!("/devices/{id}/metrics?{query}"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["from"]);
        let problem = expect_problem(app.get(&format!("/devices/{id}/metrics?from=yesterday"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["from"]);
        let query = format!("from={}&bucket=1m", rfc3339(at(12, 0, 0, 0) - Duration::days(29)));
        let problem = expect_problem(app.get(&format!("/devices/{id}/metrics?{query}"), ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["bucket"], "too many buckets");
    }

    async fn bad_samples_are_422_naming_the_field_and_a_batch_is_all_or_nothing(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-3").await;
        let cases = [
            (json!({ "cpu": 100.5, "ram": 1, "storage": 1 }), vec!["cpu"]),
            (json!({ "cpu": -1, "ram": 1, "storage": 1 }), vec!["cpu"]),
            (json!({ "cpu": 1, "storage": 1 }), vec!["ram"]),
            (json!({ "cpu": 1, "ram": 1, "storage": 1, "temperature": 151 }), vec!["temperature"]),
            (json!({ "cpu": "high", "ram": 1, "storage": 1 }), vec!["cpu"]),
            (json!({ "cpu": 1, "ram": 1, "storage": 1, "recordedAt": "last tuesday" }), vec!["recordedAt"]),
            (json!({ "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) + Duration::minutes(10)) }), vec!["recordedAt"]),
            (json!({ "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::days(31)) }), vec!["recordedAt"]),
            (json!({ "samples": [] }), vec!["samples"]),
            (json!({ "samples": [{ "cpu": 1, "ram": 1, "storage": 1 }], "cpu": 1 }), vec!["samples"]),
            (json!({ "samples": [
                { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::minutes(2)) },
                { "cpu": 1, "ram": 1, "storage": 1 },
            ]}), vec!["samples[1].recordedAt"]),
            (json!({ "samples": [
                { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::minutes(2)) },
                { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::minutes(2)) },
            ]}), vec!["samples[1].recordedAt"]),
            (json!({ "samples": [
                { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::minutes(3)) },
                { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::minutes(2)) },
                { "cpu": 1, "ram": 1, "storage": -0.5, "recordedAt": rfc3339(now(&app) - Duration::minutes(1)) },
            ]}), vec!["samples[2].storage"]),
            (json!({ "samples": [{ "cpu": 1, "ram": "x", "storage": 1 }] }), vec!["samples[0].ram"]),
        ];
        for (body, fields) in cases {
            let problem = expect_problem(app.post("/devices/metrics", &token, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), fields, "{body}");
        }
        let too_many: Vec<Value> = (0..1001)
            .map(|i| json!({ "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(now(&app) - Duration::seconds(i)) }))
            .collect();
        let problem = expect_problem(app.post("/devices/metrics", &token, json!({ "samples": too_many })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["samples"]);
        expect_problem(app.post("/devices/metrics", &token, json!("not an object")).await, StatusCode::UNPROCESSABLE_ENTITY).await;

        // Nothing of any rejected request was stored.
        let body = history(&app, ADMIN_TOKEN, &id, "bucket=1h").await;
        assert_eq!(body["buckets"], json!([]));
        assert_eq!(body["latest"], Value::Null);

        // Only a device token posts samples; only members read history.
        expect_problem(app.post("/devices/metrics", ADMIN_TOKEN, json!({ "cpu": 1, "ram": 1, "storage": 1 })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.request(reqwest::Method::POST, "/devices/metrics", None, Some(json!({ "cpu": 1, "ram": 1, "storage": 1 }))).await, StatusCode::UNAUTHORIZED).await;
        expect_problem(app.get(&format!("/devices/{id}/metrics"), &token).await, StatusCode::FORBIDDEN).await;
        // A deleted device's token stops working.
        app.delete(&format!("/devices/{id}"), ADMIN_TOKEN).await;
        expect_problem(app.post("/devices/metrics", &token, json!({ "cpu": 1, "ram": 1, "storage": 1 })).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn retention_purges_old_samples_only(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-4").await;
        let start = now(&app);
        let samples = json!({ "samples": [
            { "cpu": 1, "ram": 1, "storage": 1, "recordedAt": rfc3339(start - Duration::hours(2)) },
            { "cpu": 2, "ram": 2, "storage": 2, "recordedAt": rfc3339(start - Duration::hours(1)) },
            { "cpu": 3, "ram": 3, "storage": 3, "recordedAt": rfc3339(start) },
        ]});
        expect_json(app.post("/devices/metrics", &token, samples).await, StatusCode::OK).await;
        let db = database(&app).await;
        let retention = StdDuration::from_secs(30 * 86_400);
        let later = start + Duration::days(30) - Duration::minutes(90);
        let purged = herd::telemetry::purge_expired(&db, herd::clock::to_millis(later), retention).await.unwrap();
        assert_eq!(purged, 1, "only the sample older than 30 days before `later` goes");
        let query = format!("from={}&to={}&bucket=1h", rfc3339(start - Duration::hours(3)), rfc3339(start + Duration::hours(1)));
        let body = history(&app, ADMIN_TOKEN, &id, &query).await;
        let starts: Vec<&str> = body["buckets"].as_array().unwrap().iter().map(|b| b["start"].as_str().unwrap()).collect();
        assert_eq!(starts, ["2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"]);
        let again = herd::telemetry::purge_expired(&db, herd::clock::to_millis(later), retention).await.unwrap();
        assert_eq!(again, 0);
        let everything = herd::telemetry::purge_expired(&db, herd::clock::to_millis(start + Duration::days(31)), retention).await.unwrap();
        assert_eq!(everything, 2);
        db.close().await;
    }

    async fn a_month_of_one_a_minute_samples_queries_fast(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-5").await;
        let end = now(&app);
        let minutes = 30 * 24 * 60 - 1;
        let started = Instant::now();
        for chunk in (0..minutes).collect::<Vec<i64>>().chunks(1000) {
            let samples: Vec<Value> = chunk
                .iter()
                .map(|m| json!({ "cpu": (m % 100) as f64, "ram": 50, "storage": 50, "recordedAt": rfc3339(end - Duration::minutes(*m)) }))
                .collect();
            let body = expect_json(app.post("/devices/metrics", &token, json!({ "samples": samples })).await, StatusCode::OK).await;
            assert_eq!(body["accepted"].as_u64().unwrap(), chunk.len() as u64);
        }
        eprintln!("stored {minutes} samples in {:?}", started.elapsed());
        let query = format!("from={}&to={}&bucket=1h", rfc3339(end - Duration::days(30)), rfc3339(end + Duration::minutes(1)));
        let started = Instant::now();
        let body = history(&app, ADMIN_TOKEN, &id, &query).await;
        let elapsed = started.elapsed();
        eprintln!("a month of 1h buckets over {minutes} samples in {elapsed:?}");
        let buckets = body["buckets"].as_array().unwrap();
        let total: i64 = buckets.iter().map(|b| b["samples"].as_i64().unwrap()).sum();
        assert_eq!(total, minutes);
        assert!(buckets.len() >= 720 && buckets.len() <= 721, "{}", buckets.len());
        // A wall-clock bound depends on the machine and its load, so CI never applies it: set
        // HERD_TEST_TIMING=1 to check it on a quiet machine (herd-bench measures for real).
        if std::env::var_os("HERD_TEST_TIMING").is_some() {
            assert!(elapsed < StdDuration::from_secs(2), "history took {elapsed:?}");
        }
    }

    async fn history_of_another_tenants_device_is_not_found(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "T-6").await;
        expect_json(app.post("/devices/metrics", &token, json!({ "cpu": 1, "ram": 1, "storage": 1 })).await, StatusCode::OK).await;
        let (_, other_admin) = app.create_tenant("other").await;
        let problem = expect_problem(app.get(&format!("/devices/{id}/metrics"), &other_admin).await, StatusCode::NOT_FOUND).await;
        let missing = expect_problem(app.get(&format!("/devices/{}/metrics", uuid::Uuid::now_v7()), &other_admin).await, StatusCode::NOT_FOUND).await;
        assert_eq!(problem["detail"], missing["detail"], "another tenant's device answers like a missing one");
        expect_problem(app.get("/devices/not-a-uuid/metrics", ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
    }
}
