//! Per-device settings and display configuration: round trips, version conflicts, desired vs
//! reported, validation, roles and tenancy.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{engine_tests, error_fields, expect_json, expect_problem, Engine, TestApp, ADMIN_TOKEN};
use crate::telemetry::device;

async fn put(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.request(Method::PUT, path, Some(token), Some(body)).await
}

engine_tests! {
    async fn settings_round_trip_with_versions(app) {
        let (id, _) = device(&app, ADMIN_TOKEN, "S-1").await;
        let path = format!("/devices/{id}/settings");
        let fresh = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(fresh, json!({ "deviceId": id, "displayName": null, "location": null, "timezone": null, "notes": null, "tags": [], "version": 0, "updatedAt": null }));

        let body = json!({ "displayName": "Lobby left", "location": "Lobby", "timezone": "Asia/Jerusalem", "notes": "Mounted high.\nAsk security.", "tags": ["lobby", "floor-1", "lobby"], "version": 0 });
        let written = expect_json(put(&app, &path, ADMIN_TOKEN, body).await, StatusCode::OK).await;
        assert_eq!(written["version"], 1);
        assert_eq!(written["tags"], json!(["lobby", "floor-1"]));
        assert_eq!(written["notes"], "Mounted high.\nAsk security.");
        assert_eq!(expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await, written);
        // Location and tags are the device's own: the registry and its tag filter see them.
        let device = expect_json(app.get(&format!("/devices/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(device["location"], "Lobby");
        let tagged = expect_json(app.get("/devices?tag=floor-1", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tagged["items"][0]["id"], id.as_str());

        // A stale version is refused and changes nothing; no version means last writer wins.
        let problem = expect_problem(put(&app, &path, ADMIN_TOKEN, json!({ "displayName": "Stale", "version": 0 })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("current version 1"), "{problem}");
        assert_eq!(expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await["displayName"], "Lobby left");
        let second = expect_json(put(&app, &path, ADMIN_TOKEN, json!({ "displayName": "Lobby right", "version": 1 })).await, StatusCode::OK).await;
        assert_eq!(second["version"], 2);
        assert_eq!(second["location"], Value::Null, "PUT replaces the whole document");
        assert_eq!(second["tags"], json!([]));
        let third = expect_json(put(&app, &path, ADMIN_TOKEN, json!({ "timezone": "UTC" })).await, StatusCode::OK).await;
        assert_eq!(third["version"], 3);
        assert_eq!(third["displayName"], Value::Null);
    }

    async fn settings_and_device_fields_are_written_together_or_not_at_all(app) {
        let (id, _) = device(&app, ADMIN_TOKEN, "S-5").await;
        let path = format!("/devices/{id}/settings");
        let first = json!({ "displayName": "Lobby", "location": "Lobby", "tags": ["lobby"], "version": 0 });
        expect_json(put(&app, &path, ADMIN_TOKEN, first).await, StatusCode::OK).await;
        // Make the device half of the write fail: a trigger refuses one location.
        let statements: &[&str] = match app.engine {
            Engine::Sqlite => &["CREATE TRIGGER refuse_location BEFORE UPDATE ON devices WHEN NEW.location = 'Nowhere' \
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
            Engine::Postgres => &[
                "CREATE FUNCTION refuse_location() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                    IF NEW.location = 'Nowhere' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
                "CREATE TRIGGER refuse_location BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION refuse_location()",
            ],
        };
        for statement in statements {
            app.execute_sql(statement).await;
        }
        let refused = json!({ "displayName": "Nowhere", "location": "Nowhere", "tags": ["gone"], "version": 1 });
        expect_problem(put(&app, &path, ADMIN_TOKEN, refused).await, StatusCode::INTERNAL_SERVER_ERROR).await;
        // The document did not move without its location and tags.
        let settings = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!((&settings["version"], &settings["displayName"], &settings["location"]), (&json!(1), &json!("Lobby"), &json!("Lobby")));
        assert_eq!(settings["tags"], json!(["lobby"]));
        // And a version conflict leaves location and tags alone too.
        let stale = json!({ "displayName": "Stale", "location": "Elsewhere", "tags": ["stale"], "version": 0 });
        expect_problem(put(&app, &path, ADMIN_TOKEN, stale).await, StatusCode::CONFLICT).await;
        let device = expect_json(app.get(&format!("/devices/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!((&device["location"], &device["tags"]), (&json!("Lobby"), &json!(["lobby"])));
    }

    async fn settings_are_validated_and_need_an_operator(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "S-2").await;
        let path = format!("/devices/{id}/settings");
        for (body, fields) in [
            (json!({ "timezone": "Mars/Olympus Mons" }), vec!["timezone"]),
            (json!({ "timezone": "Jerusalem" }), vec!["timezone"]),
            (json!({ "displayName": " " }), vec!["displayName"]),
            (json!({ "tags": ["ok", ""] }), vec!["tags[1]"]),
            (json!({ "notes": "x".repeat(4001) }), vec!["notes"]),
            (json!({ "version": -1 }), vec!["version"]),
        ] {
            let problem = expect_problem(put(&app, &path, ADMIN_TOKEN, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), fields, "{body}");
        }
        assert_eq!(expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await["version"], 0);
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        expect_json(app.get(&path, &viewer).await, StatusCode::OK).await;
        expect_problem(put(&app, &path, &viewer, json!({})).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get(&path, &token).await, StatusCode::FORBIDDEN).await;
    }

    async fn configuration_desired_and_reported_round_trip(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "C-1").await;
        let path = format!("/devices/{id}/configuration");
        let fresh = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(fresh["desiredVersion"], 0);
        assert_eq!(fresh["reported"], Value::Null);
        assert_eq!(fresh["inSync"], false);
        let own = expect_json(app.get("/devices/self/configuration", &token).await, StatusCode::OK).await;
        assert_eq!(own["version"], 0);

        let desired = json!({ "resolution": "1920x1080", "orientation": "portrait", "brightness": 80, "volume": 0,
            "screenSchedule": { "onAt": "07:00", "offAt": "22:30", "days": ["mon", "tue", "wed", "thu", "fri"] }, "kioskApp": "com.example.signage" });
        let set = expect_json(put(&app, &path, ADMIN_TOKEN, json!({ "configuration": desired, "version": 0 })).await, StatusCode::OK).await;
        assert_eq!(set["desiredVersion"], 1);
        assert_eq!(set["desired"], desired);
        assert_eq!(set["inSync"], false);

        let own = expect_json(app.get("/devices/self/configuration", &token).await, StatusCode::OK).await;
        assert_eq!(own["version"], 1);
        assert_eq!(own["configuration"], desired);

        // The device applied everything but the brightness.
        let mut applied = desired.clone();
        applied["brightness"] = json!(60);
        let report = expect_json(put(&app, "/devices/self/configuration/reported", &token, json!({ "version": 1, "configuration": applied })).await, StatusCode::OK).await;
        assert_eq!(report["inSync"], false);
        assert_eq!(report["differences"], json!(["brightness"]));
        let status = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(status["reportedVersion"], 1);
        assert_eq!(status["reported"]["brightness"], 60);
        assert_eq!(status["differences"], json!(["brightness"]));

        let report = expect_json(put(&app, "/devices/self/configuration/reported", &token, json!({ "version": 1, "configuration": desired })).await, StatusCode::OK).await;
        assert_eq!(report["inSync"], true);
        assert_eq!(report["differences"], json!([]));

        // A new desired version: the old report is no longer in sync, though the fields match.
        let mut dimmer = desired.clone();
        dimmer["brightness"] = json!(40);
        let set = expect_json(put(&app, &path, ADMIN_TOKEN, json!({ "configuration": dimmer, "version": 1 })).await, StatusCode::OK).await;
        assert_eq!(set["desiredVersion"], 2);
        assert_eq!(set["inSync"], false);
        assert_eq!(set["differences"], json!(["brightness"]));

        // Conflicts: a stale operator write, a version the device was never given.
        let problem = expect_problem(put(&app, &path, ADMIN_TOKEN, json!({ "configuration": {}, "version": 1 })).await, StatusCode::CONFLICT).await;
        assert!(problem["detail"].as_str().unwrap().contains("current version 2"), "{problem}");
        expect_problem(put(&app, "/devices/self/configuration/reported", &token, json!({ "version": 3, "configuration": dimmer })).await, StatusCode::CONFLICT).await;
        assert_eq!(expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await["desired"], dimmer);

        // A report before anything was desired is kept (version 0); null fields are unmanaged.
        let (other, other_token) = device(&app, ADMIN_TOKEN, "C-2").await;
        let report = expect_json(put(&app, "/devices/self/configuration/reported", &other_token, json!({ "version": 0, "configuration": { "volume": 30 } })).await, StatusCode::OK).await;
        assert_eq!(report["inSync"], true);
        let status = expect_json(app.get(&format!("/devices/{other}/configuration"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(status["reported"]["volume"], 30);
        assert_eq!(status["desiredVersion"], 0);
    }

    async fn configurations_are_validated_and_need_the_right_credential(app) {
        let (id, token) = device(&app, ADMIN_TOKEN, "C-3").await;
        let path = format!("/devices/{id}/configuration");
        for (configuration, fields) in [
            (json!({ "resolution": "big" }), vec!["configuration.resolution"]),
            (json!({ "brightness": 101 }), vec!["configuration.brightness"]),
            (json!({ "volume": -1 }), vec!["configuration.volume"]),
            (json!({ "orientation": "diagonal" }), vec!["configuration.orientation"]),
            (json!({ "screenSchedule": { "onAt": "7am", "offAt": "22:00" } }), vec!["configuration.screenSchedule.onAt"]),
            (json!({ "screenSchedule": { "onAt": "07:00", "offAt": "07:00" } }), vec!["configuration.screenSchedule.offAt"]),
            (json!({ "screenSchedule": { "onAt": "07:00", "offAt": "08:00", "days": ["someday"] } }), vec!["configuration.screenSchedule.days[0]"]),
            (json!({ "kioskApp": "not a package" }), vec!["configuration.kioskApp"]),
            (json!({ "brightness": "high" }), vec!["configuration.brightness"]),
        ] {
            let body = json!({ "configuration": configuration });
            let problem = expect_problem(put(&app, &path, ADMIN_TOKEN, body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(error_fields(&problem), fields, "{body}");
        }
        let problem = expect_problem(put(&app, &path, ADMIN_TOKEN, json!({})).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["configuration"]);
        let problem = expect_problem(put(&app, "/devices/self/configuration/reported", &token, json!({ "configuration": {} })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), ["version"]);
        assert_eq!(expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await["desiredVersion"], 0);

        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        expect_json(app.get(&path, &viewer).await, StatusCode::OK).await;
        expect_problem(put(&app, &path, &viewer, json!({ "configuration": {} })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get("/devices/self/configuration", ADMIN_TOKEN).await, StatusCode::FORBIDDEN).await;
        expect_problem(put(&app, "/devices/self/configuration/reported", ADMIN_TOKEN, json!({ "version": 0, "configuration": {} })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get(&path, &token).await, StatusCode::FORBIDDEN).await;
    }

    async fn another_tenants_settings_and_configuration_are_not_found(app) {
        let (id, _) = device(&app, ADMIN_TOKEN, "S-3").await;
        put(&app, &format!("/devices/{id}/settings"), ADMIN_TOKEN, json!({ "displayName": "Mine" })).await;
        put(&app, &format!("/devices/{id}/configuration"), ADMIN_TOKEN, json!({ "configuration": { "volume": 5 } })).await;
        let (_, other) = app.create_tenant("other").await;
        let missing = uuid::Uuid::now_v7();
        for (theirs, absent) in [
            (app.get(&format!("/devices/{id}/settings"), &other).await, app.get(&format!("/devices/{missing}/settings"), &other).await),
            (put(&app, &format!("/devices/{id}/settings"), &other, json!({ "displayName": "Theirs" })).await, put(&app, &format!("/devices/{missing}/settings"), &other, json!({ "displayName": "Theirs" })).await),
            (app.get(&format!("/devices/{id}/configuration"), &other).await, app.get(&format!("/devices/{missing}/configuration"), &other).await),
            (put(&app, &format!("/devices/{id}/configuration"), &other, json!({ "configuration": {} })).await, put(&app, &format!("/devices/{missing}/configuration"), &other, json!({ "configuration": {} })).await),
        ] {
            let theirs = expect_problem(theirs, StatusCode::NOT_FOUND).await;
            let absent = expect_problem(absent, StatusCode::NOT_FOUND).await;
            assert_eq!(theirs["detail"], absent["detail"]);
        }
        let mine = expect_json(app.get(&format!("/devices/{id}/settings"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["displayName"], "Mine");
        assert_eq!(mine["version"], 1);
        let mine = expect_json(app.get(&format!("/devices/{id}/configuration"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["desired"]["volume"], 5);
        assert_eq!(mine["desiredVersion"], 1);
        // A device only ever sees its own configuration.
        let (_, their_device) = device(&app, &other, "S-4").await;
        let own = expect_json(app.get("/devices/self/configuration", &their_device).await, StatusCode::OK).await;
        assert_eq!(own["version"], 0);
    }
}
