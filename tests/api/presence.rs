//! Presence: the sweep's boundaries, exactly-once events with two instances, buffered
//! heartbeats, and the admin trigger.

use std::time::Duration as StdDuration;

use chrono::Duration;
use herd::clock::to_millis;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{engine_tests, expect_json, expect_problem, ClockExt, RawConn, TestApp, ADMIN_TOKEN};

/// The same app with its background heartbeat flush and presence sweep pushed past the test's
/// end: these tests flush and sweep themselves, and the flush loop ticks every second, so a
/// heartbeat the test expects in the buffer could otherwise be written before it looks.
async fn quiet(mut app: TestApp) -> TestApp {
    app.settings.heartbeat_flush_interval = StdDuration::from_secs(24 * 3600);
    app.settings.presence_sweep_interval = StdDuration::from_secs(24 * 3600);
    app.restart().await
}

/// Registers `n` devices and connects each once; answers (device id, token) pairs.
async fn online_devices(app: &TestApp, n: usize, prefix: &str) -> Vec<(String, String)> {
    let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let mut devices = Vec::new();
    for i in 0..n {
        let (device, token) = app.register(&enroll, json!({ "serialNumber": format!("{prefix}-{i}") })).await;
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        devices.push((device["id"].as_str().unwrap().to_string(), token));
    }
    devices
}

async fn status_events(app: &TestApp, token: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = "/events?type=device.status_changed&limit=500".to_string();
    loop {
        let page = expect_json(app.get(&path, token).await, StatusCode::OK).await;
        events.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/events?type=device.status_changed&limit=500&cursor={cursor}"),
            None => return events,
        }
    }
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let device = expect_json(app.get(&format!("/devices/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
    device["status"].as_str().unwrap().to_string()
}

/// Holds the device's row (PostgreSQL) and the one writer connection (SQLite) until the
/// returned transaction is dropped, so that a flush in flight waits for it.
async fn hold_device(app: &TestApp, id: &str) -> RawConn {
    let mut conn = app.raw().await;
    conn.begin_write().await;
    conn.execute("UPDATE devices SET updated_at = updated_at WHERE id = $1", &[id]).await;
    conn
}

/// Waits up to ten seconds for `condition`; answers whether it came true.
async fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

async fn last_seen(app: &TestApp, id: &str) -> chrono::DateTime<chrono::Utc> {
    let device = expect_json(app.get(&format!("/devices/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
    serde_json::from_value(device["lastSeen"].clone()).unwrap()
}

/// A device's id and its tenant's, for recording heartbeats directly.
async fn ids_of(app: &TestApp, id: &str) -> (herd::ids::DeviceId, herd::ids::TenantId) {
    let mut conn = app.raw().await;
    let tenant = conn.scalar_text("SELECT tenant_id FROM devices WHERE id = $1", &[id]).await;
    conn.close().await;
    (id.parse().unwrap(), tenant.parse().unwrap())
}

engine_tests! {
    async fn the_sweep_honours_the_threshold_exactly(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 3, "B").await;
        // Device 0 reports again a minute later (through the heartbeat buffer).
        app.clock.advance(Duration::minutes(1));
        expect_json(app.post("/devices/connect", &devices[0].1, json!({})).await, StatusCode::OK).await;
        // Exactly at the threshold nobody is offline: lastSeen == now - 5m is not older than it.
        app.clock.advance(Duration::minutes(4));
        assert_eq!(herd::presence::run_sweep(&app.state).await.unwrap().marked_offline, 0);
        // One millisecond past it, the two silent devices go offline; device 0 stays.
        app.clock.advance(Duration::milliseconds(1));
        assert_eq!(herd::presence::run_sweep(&app.state).await.unwrap().marked_offline, 2);
        assert_eq!(status_of(&app, &devices[0].0).await, "online");
        assert_eq!(status_of(&app, &devices[1].0).await, "offline");
        assert_eq!(status_of(&app, &devices[2].0).await, "offline");
        // A second sweep finds nothing more, and each change was announced once.
        assert_eq!(herd::presence::run_sweep(&app.state).await.unwrap().marked_offline, 0);
        let offline: Vec<Value> = status_events(&app, ADMIN_TOKEN).await.into_iter().filter(|e| e["data"]["to"] == "offline").collect();
        assert_eq!(offline.len(), 2);
        for event in &offline {
            assert_eq!(event["data"]["from"], "online");
            assert!(event["data"]["lastSeen"].is_string());
        }
    }

    async fn a_swept_device_that_reconnects_comes_back_online_with_an_event(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 1, "R").await;
        app.clock.advance(Duration::minutes(6));
        assert_eq!(herd::presence::run_sweep(&app.state).await.unwrap().marked_offline, 1);
        let body = expect_json(app.post("/devices/connect", &devices[0].1, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["device"]["status"], "online");
        let events = status_events(&app, ADMIN_TOKEN).await;
        let transitions: Vec<(String, String)> = events
            .iter()
            .map(|e| (e["data"]["from"].as_str().unwrap().to_string(), e["data"]["to"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(transitions, vec![
            ("offline".to_string(), "online".to_string()),
            ("online".to_string(), "offline".to_string()),
            ("offline".to_string(), "online".to_string()),
        ]);
    }

    async fn a_buffered_heartbeat_racing_the_sweep_revives_the_device(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 1, "H").await;
        // The device was silent for ten minutes, then its heartbeat lands in the buffer …
        app.clock.advance(Duration::minutes(10));
        expect_json(app.post("/devices/connect", &devices[0].1, json!({})).await, StatusCode::OK).await;
        assert_eq!(app.state.heartbeats.len(), 1);
        // … while another instance (which cannot see this buffer) sweeps it offline.
        let now = to_millis(app.clock.now_plus(Duration::zero()));
        let swept = herd::store::presence::sweep(&app.state.db, &app.state.system, app.settings.presence_threshold, now).await.unwrap();
        assert_eq!(swept.marked_offline, 1);
        // The flush then finds it offline and brings it back, announcing it.
        let flushed = app.state.heartbeats.flush(&app.state.db, &app.state.system).await.unwrap();
        assert_eq!(flushed.revived, 1);
        assert_eq!(status_of(&app, &devices[0].0).await, "online");
        let events = status_events(&app, ADMIN_TOKEN).await;
        assert_eq!(events.last().unwrap()["data"]["to"], "online");
        assert_eq!(events.len(), 3, "online, offline, online again");
    }

    async fn buffered_heartbeats_reach_the_database(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 2, "F").await;
        app.clock.advance(Duration::seconds(30));
        for (_, token) in &devices {
            expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
        }
        let outcome = app.state.heartbeats.flush(&app.state.db, &app.state.system).await.unwrap();
        assert_eq!(outcome.written, 2);
        assert!(app.state.heartbeats.is_empty());
        // A second instance reads the database, not the first one's buffer.
        let other = app.second_instance().await;
        let device = expect_json(other.get(&format!("/devices/{}", devices[1].0), ADMIN_TOKEN).await, StatusCode::OK).await;
        let last_seen: chrono::DateTime<chrono::Utc> = serde_json::from_value(device["lastSeen"].clone()).unwrap();
        assert_eq!(last_seen, app.clock.now_plus(Duration::zero()));
    }

    async fn two_instances_announce_each_change_exactly_once(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 120, "X").await;
        let other = app.second_instance().await;
        // The second instance's sweep job runs once as it starts. Wait for that run: on a loaded
        // machine it can otherwise come after the clock moves and take every device first.
        let mut started = false;
        for _ in 0..500 {
            let metrics = other.request(reqwest::Method::GET, "/metrics", None, None).await.text().await.unwrap();
            started = metrics.lines().any(|line| {
                line.starts_with("herd_presence_sweep_duration_seconds_count ") && !line.ends_with(" 0")
            });
            if started {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        assert!(started, "the second instance's start-up sweep ran");
        app.clock.advance(Duration::minutes(6));
        let now = to_millis(app.clock.now_plus(Duration::zero()));
        let threshold = app.settings.presence_threshold;
        let (a, b) = tokio::join!(
            herd::store::presence::sweep(&app.state.db, &app.state.system, threshold, now),
            herd::store::presence::sweep(&other.state.db, &other.state.system, threshold, now),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.marked_offline + b.marked_offline, devices.len());
        let offline = status_events(&app, ADMIN_TOKEN).await.into_iter().filter(|e| e["data"]["to"] == "offline").count();
        assert_eq!(offline, devices.len());
    }

    async fn device_counts_follow_every_status_change(app) {
        let app = quiet(app).await;
        let devices = online_devices(&app, 3, "N").await;
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "N-never" })).await;
        let (_, other_admin) = app.create_tenant("other").await;
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        app.register(&theirs, json!({ "serialNumber": "N-theirs" })).await;
        let counts = |app: &TestApp| {
            let url = app.url("/devices/stats/overview");
            let client = app.client.clone();
            async move {
                let body: Value = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
                (body["total"].as_i64().unwrap(), body["active"].as_i64().unwrap(), body["offline"].as_i64().unwrap())
            }
        };
        assert_eq!(counts(&app).await, (4, 3, 1));
        // Devices 1 and 2 fall silent; device 0's heartbeat is buffered when the sweep runs
        // elsewhere, then revived by the flush.
        app.clock.advance(Duration::minutes(10));
        expect_json(app.post("/devices/connect", &devices[0].1, json!({})).await, StatusCode::OK).await;
        let now = to_millis(app.clock.now_plus(Duration::zero()));
        herd::store::presence::sweep(&app.state.db, &app.state.system, app.settings.presence_threshold, now).await.unwrap();
        assert_eq!(counts(&app).await, (4, 0, 4));
        app.state.heartbeats.flush(&app.state.db, &app.state.system).await.unwrap();
        assert_eq!(counts(&app).await, (4, 1, 3));
        app.delete(&format!("/devices/{}", devices[1].0), ADMIN_TOKEN).await;
        assert_eq!(counts(&app).await, (3, 1, 2));
        let listed = expect_json(app.get("/devices?status=offline", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 2, "the counters agree with the rows");
        let theirs: Value = app.client.get(app.url("/devices/stats/overview")).bearer_auth(&other_admin).send().await.unwrap().json().await.unwrap();
        assert_eq!((theirs["total"].as_i64(), theirs["offline"].as_i64()), (Some(1), Some(1)));
    }

    async fn device_counts_stay_exact_over_a_sweep_of_several_batches(app) {
        let app = quiet(app).await;
        let (other_tenant, other_admin) = app.create_tenant("other").await;
        let mut raw = app.raw().await;
        let default_tenant = raw.scalar_text("SELECT id FROM tenants WHERE name = 'default'", &[]).await;
        let now = to_millis(app.clock.now_plus(Duration::zero()));
        let stale = now - 10 * 60 * 1000;
        // More than two sweep batches of stale devices, the two tenants interleaved, so batches
        // span tenants; among them devices the sweep must leave alone (fresh, or offline
        // already), between the stale ones in row order and in `lastSeen` order. Inserted
        // directly: registering thousands of devices through the API takes minutes, and the
        // insert trigger counts them like any other insert.
        let mut n_stale = 0;
        let mut rows = Vec::new();
        let mut expected = [(0_i64, 0_i64, 0_i64); 2]; // per tenant: (total, online, offline)
        for i in 0..2 * herd::store::presence::SWEEP_BATCH + 1000 {
            let tenant = i % 2;
            let (status, last_seen) = match i % 50 {
                7 => ("online", now),
                13 => ("offline", stale),
                // Last seen in an order unrelated to the rows' (as after an outage).
                _ => ("online", stale + (i as i64 * 7_919) % 100_003),
            };
            if status == "online" && last_seen < now {
                n_stale += 1;
            }
            let tenant_id = if tenant == 0 { &default_tenant } else { &other_tenant };
            rows.push(format!(
                "('{}', '{tenant_id}', 'd{i}', '{status}', {last_seen}, {now}, {now})",
                uuid::Uuid::now_v7()
            ));
            expected[tenant].0 += 1;
            if status == "online" && last_seen == now {
                expected[tenant].1 += 1;
            } else {
                expected[tenant].2 += 1;
            }
        }
        for chunk in rows.chunks(1000) {
            let sql = format!(
                "INSERT INTO devices (id, tenant_id, name, status, last_seen, created_at, updated_at) VALUES {}",
                chunk.join(", ")
            );
            raw.execute(&sql, &[]).await;
        }
        let overview = |admin: String| {
            let url = app.url("/devices/stats/overview");
            let client = app.client.clone();
            async move {
                let body: Value = client.get(url).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
                (body["total"].as_i64().unwrap(), body["active"].as_i64().unwrap(), body["offline"].as_i64().unwrap())
            }
        };

        let outcome =
            herd::store::presence::sweep(&app.state.db, &app.state.system, app.settings.presence_threshold, now).await.unwrap();
        assert_eq!(outcome.marked_offline, n_stale);
        assert_eq!(overview(ADMIN_TOKEN.to_string()).await, expected[0]);
        assert_eq!(overview(other_admin.clone()).await, expected[1]);
        // The counters agree with the rows, and each flipped device has exactly one event.
        for (tenant, (total, online, offline)) in [(&default_tenant, expected[0]), (&other_tenant, expected[1])] {
            let count = |status: &'static str| {
                format!("SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND status = '{status}'")
            };
            assert_eq!(raw.scalar_i64(&count("online"), &[tenant.as_str()]).await, online);
            assert_eq!(raw.scalar_i64(&count("offline"), &[tenant.as_str()]).await, offline);
            assert_eq!(online + offline, total);
        }
        let events = "SELECT COUNT(*) FROM events WHERE type = 'device.status_changed'";
        assert_eq!(raw.scalar_i64(events, &[]).await, n_stale as i64);
        let distinct = "SELECT COUNT(DISTINCT data) FROM events WHERE type = 'device.status_changed'";
        assert_eq!(raw.scalar_i64(distinct, &[]).await, n_stale as i64);
        raw.close().await;

        let again =
            herd::store::presence::sweep(&app.state.db, &app.state.system, app.settings.presence_threshold, now).await.unwrap();
        assert_eq!(again.marked_offline, 0);
        assert_eq!(overview(ADMIN_TOKEN.to_string()).await, expected[0]);
    }

    async fn admins_can_run_the_sweep_now(app) {
        let app = quiet(app).await;
        online_devices(&app, 2, "S").await;
        app.clock.advance(Duration::minutes(10));
        let (_, tenant_admin) = app.create_tenant("other").await;
        expect_problem(app.post("/admin/presence/sweep", &tenant_admin, json!({})).await, StatusCode::FORBIDDEN).await;
        let body = expect_json(app.post("/admin/presence/sweep", ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(body["markedOffline"], 2);
        let metrics = app.request(reqwest::Method::GET, "/metrics", None, None).await.text().await.unwrap();
        assert!(metrics.contains("herd_presence_marked_offline_total 2"), "{metrics}");
        assert!(metrics.contains("herd_presence_sweep_duration_seconds_count"), "{metrics}");
    }

    async fn a_flush_job_cancelled_mid_flight_gives_its_heartbeats_back(app) {
        let devices = online_devices(&app, 1, "C").await;
        let (device, tenant) = ids_of(&app, &devices[0].0).await;
        // A buffer and a flush job of its own, so that the server's jobs leave them alone.
        let buffer = std::sync::Arc::new(herd::presence::HeartbeatBuffer::default());
        let seen = to_millis(app.clock.now_plus(Duration::seconds(30)));
        buffer.record(device, tenant, seen);
        let held = hold_device(&app, &devices[0].0).await;
        let stop = herd::shutdown::CancellationToken::new();
        let (db, system, flushed) = (app.state.db.clone(), app.state.system.clone(), buffer.clone());
        let job = herd::jobs::run_every("test-flush", std::time::Duration::from_secs(3600), stop.clone(), move || {
            let (db, system, buffer) = (db.clone(), system.clone(), flushed.clone());
            async move { buffer.flush(&db, &system).await.map(drop).map_err(Into::into) }
        });
        // The job's first step takes the heartbeat and waits for the device's row; a shutdown
        // cancels it there.
        assert!(eventually(|| buffer.is_empty()).await, "the flush job took the heartbeat");
        stop.cancel();
        job.await.unwrap();
        assert_eq!(buffer.pending_last_seen(&device), Some(seen), "the cancelled flush dropped its heartbeat");
        held.rollback().await;
        // (On PostgreSQL the cancelled statement may still have run; writing again is harmless.)
        buffer.flush(&app.state.db, &app.state.system).await.unwrap();
        assert!(buffer.is_empty());
        assert_eq!(to_millis(last_seen(&app, &devices[0].0).await), seen);
    }

    async fn heartbeats_taken_by_a_flush_cancelled_at_shutdown_are_still_written(app) {
        let devices = online_devices(&app, 1, "Z").await;
        app.clock.advance(Duration::seconds(30));
        expect_json(app.post("/devices/connect", &devices[0].1, json!({})).await, StatusCode::OK).await;
        let seen = app.clock.now_plus(Duration::zero());
        assert_eq!(app.state.heartbeats.len(), 1);
        // The server's flush job takes the heartbeat and waits for the device's row …
        let held = hold_device(&app, &devices[0].0).await;
        assert!(eventually(|| app.state.heartbeats.is_empty()).await, "the flush job took the heartbeat");
        // … when a graceful shutdown cancels it. The server's final flush (which then waits for
        // the row too) must still write it.
        app.state.shutdown.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        held.rollback().await;
        let app = app.restart().await;
        assert_eq!(last_seen(&app, &devices[0].0).await, seen);
    }

    async fn a_failed_flush_keeps_its_heartbeats_with_the_newest_last_seen(app) {
        let devices = online_devices(&app, 1, "E").await;
        let id = &devices[0].0;
        let (device, tenant) = ids_of(&app, id).await;
        // A buffer of its own, so that the server's flush job leaves it alone.
        let buffer = herd::presence::HeartbeatBuffer::default();
        let first = to_millis(app.clock.now_plus(Duration::seconds(10)));
        let second = to_millis(app.clock.now_plus(Duration::seconds(20)));
        buffer.record(device, tenant, first);
        let statements: &[&str] = match app.engine {
            crate::helpers::Engine::Sqlite => &["CREATE TRIGGER refuse_last_seen BEFORE UPDATE OF last_seen ON devices \
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
            crate::helpers::Engine::Postgres => &[
                "CREATE FUNCTION refuse_last_seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                    RAISE EXCEPTION 'refused by the test'; END $$",
                "CREATE TRIGGER refuse_last_seen BEFORE UPDATE OF last_seen ON devices FOR EACH ROW EXECUTE FUNCTION refuse_last_seen()",
            ],
        };
        for statement in statements {
            app.execute_sql(statement).await;
        }
        // A newer heartbeat arrives while the (failing) flush is in flight.
        let held = hold_device(&app, id).await;
        let flush = buffer.flush(&app.state.db, &app.state.system);
        tokio::pin!(flush);
        assert!(futures::poll!(flush.as_mut()).is_pending());
        assert!(buffer.is_empty(), "the flush took the heartbeat");
        buffer.record(device, tenant, second);
        held.rollback().await;
        flush.await.expect_err("the trigger refuses the write");
        assert_eq!(buffer.pending_last_seen(&device), Some(second));
        let drop_trigger = match app.engine {
            crate::helpers::Engine::Sqlite => "DROP TRIGGER refuse_last_seen",
            crate::helpers::Engine::Postgres => "DROP TRIGGER refuse_last_seen ON devices",
        };
        app.execute_sql(drop_trigger).await;
        assert_eq!(buffer.flush(&app.state.db, &app.state.system).await.unwrap().written, 1);
        assert_eq!(to_millis(last_seen(&app, id).await), second);
    }
}
