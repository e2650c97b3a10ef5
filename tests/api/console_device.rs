//! The console's device page over real HTTP: its facts, charts from posted metrics, the
//! command and revocation forms (and that a viewer gets neither, nor gets through with a forged
//! POST), configuration differences, and 404s for foreign and malformed ids.

use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::console::Browser;
use crate::helpers::*;

/// A device of the default tenant with every identifier set; answers `(id, device token)`.
async fn device(app: &TestApp, name: &str) -> (String, String) {
    let body = json!({
        "name": name, "serialNumber": "SN-4711", "macAddress": "aa:bb:cc:dd:ee:0f", "androidId": "a1b2c3d4e5",
        "model": "Signage 55", "manufacturer": "Acme", "location": "Lobby", "tags": ["lobby"],
    });
    let created = expect_json(app.post("/devices", ADMIN_TOKEN, body).await, StatusCode::CREATED).await;
    (created["device"]["id"].as_str().unwrap().to_string(), created["deviceToken"].as_str().unwrap().to_string())
}

/// A certificate for the device's own P-256 key (quick to make); answers its id.
async fn certificate(app: &TestApp, id: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["device.local".to_string()]).unwrap().serialize_request(&key).unwrap();
    let path = format!("/devices/{id}/certificates");
    let issued = expect_json(
        app.request(Method::POST, &path, Some(ADMIN_TOKEN), Some(json!({ "csr": csr.pem().unwrap() }))).await,
        StatusCode::CREATED,
    )
    .await;
    issued["certificate"]["id"].as_str().unwrap().to_string()
}

async fn commands_of(app: &TestApp, id: &str) -> Vec<Value> {
    let list = expect_json(app.get(&format!("/devices/{id}/commands"), ADMIN_TOKEN).await, StatusCode::OK).await;
    list["items"].as_array().unwrap().clone()
}

fn location(response: &reqwest::Response) -> String {
    response.headers().get(LOCATION).unwrap().to_str().unwrap().to_string()
}

engine_tests! {
    async fn the_page_shows_the_device_and_its_identifiers_and_hides_other_tenants(app) {
        let (id, _) = device(&app, "lobby-screen").await;
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let (status, html) = browser.get(&format!("/ui/devices/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains("<h1>lobby-screen</h1>"), "{html}");
        for text in ["SN-4711", "aa:bb:cc:dd:ee:0f", "a1b2c3d4e5", "Signage 55", "Acme", "Lobby", "href=\"/ui/devices?tag=lobby\""] {
            assert!(html.contains(text), "{text} missing");
        }
        assert!(html.contains("id=\"device-status\""), "the status is a live region");
        assert!(html.contains("Send command"), "an operator may send commands");
        assert!(html.contains("has not sent metrics in the last 1 h"), "no metrics yet: the empty state");

        let (_, other_admin) = app.create_tenant("other").await;
        let foreign = expect_json(app.post("/devices", &other_admin, json!({ "name": "foreign" })).await, StatusCode::CREATED).await;
        let foreign_id = foreign["device"]["id"].as_str().unwrap();
        let (status, html) = browser.get(&format!("/ui/devices/{foreign_id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!html.contains("foreign"), "nothing of the other tenant's device shows");
        let (status, _) = browser.get("/ui/devices/not-a-device-id").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = browser.get(&format!("/ui/devices/{foreign_id}/commands/{foreign_id}/screenshot")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    async fn posted_metrics_appear_as_charts(app) {
        let (id, token) = device(&app, "metered").await;
        for (cpu, temperature) in [(12.5, 41.0), (55.0, 48.5)] {
            let body = json!({ "cpu": cpu, "ram": 40, "storage": 70, "temperature": temperature });
            expect_json(app.post("/devices/metrics", &token, body).await, StatusCode::OK).await;
            app.clock.advance(chrono::Duration::minutes(2));
        }
        let browser = Browser::signed_in(&app, "watcher", "viewer").await;
        for range in ["", "?range=24h", "?range=7d"] {
            let (status, html) = browser.get(&format!("/ui/devices/{id}{range}")).await;
            assert_eq!(status, StatusCode::OK);
            for metric in ["cpu", "ram", "storage", "temperature"] {
                let start = html.find(&format!("data-metric=\"{metric}\"")).unwrap_or_else(|| panic!("no {metric} chart: {html}"));
                let points: usize = html[start..].split("data-points=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
                assert!(points > 0, "{metric} has points");
            }
            assert!(html.contains("55.0 %"), "the current CPU value is in the card title");
        }
        let (_, html) = browser.get(&format!("/ui/devices/{id}?range=24h")).await;
        assert!(html.contains("aria-label=\"CPU (%) over the last 24 h\""));
        assert!(html.contains("aria-current=\"true\">24 h<"), "the chosen range is marked");
    }

    async fn a_command_sent_through_the_form_is_queued_and_listed(app) {
        let (id, _) = device(&app, "screen").await;
        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let sent = browser.post(&format!("/ui/devices/{id}/commands"), &[("type", "screenshot"), ("payload", "")]).await;
        assert_eq!(sent.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&sent), format!("/ui/devices/{id}#commands"));
        let queued = commands_of(&app, &id).await;
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0]["type"], "screenshot");
        assert_eq!(queued[0]["state"], "queued");
        let (_, html) = browser.get(&format!("/ui/devices/{id}")).await;
        let list = &html[html.find("id=\"commands\"").unwrap()..];
        assert!(list.contains("screenshot") && list.contains("s-queued"), "{list}");
        assert!(list.contains(">Cancel<"), "a queued command can be cancelled");

        // A payload the API refuses: the message beside the field, the typed value kept, nothing queued.
        let bad = browser.post(&format!("/ui/devices/{id}/commands"), &[("type", "screenshot"), ("payload", "{\"format\": \"gif\"}")]).await;
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = bad.text().await.unwrap();
        let error = html.split("id=\"f-payload-error\"").nth(1).unwrap_or_else(|| panic!("no payload error: {html}"));
        assert!(error.split("</p>").next().unwrap().contains("format"), "{error}");
        let not_json = browser.post(&format!("/ui/devices/{id}/commands"), &[("type", "open_url"), ("payload", "{url")]).await;
        assert_eq!(not_json.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(not_json.text().await.unwrap().contains("is not valid JSON"));
        assert_eq!(commands_of(&app, &id).await.len(), 1, "nothing more was queued");

        // A viewer's forged POST is refused by the API's role check.
        let viewer = Browser::signed_in(&app, "watcher", "viewer").await;
        let forged = viewer.post(&format!("/ui/devices/{id}/commands"), &[("type", "reboot")]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert_eq!(commands_of(&app, &id).await.len(), 1);
    }

    async fn revoking_through_the_form_revokes_and_a_viewer_cannot(app) {
        let (id, _) = device(&app, "secured").await;
        let first = certificate(&app, &id).await;
        let second = certificate(&app, &id).await;

        let viewer = Browser::signed_in(&app, "watcher", "viewer").await;
        let (status, html) = viewer.get(&format!("/ui/devices/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("s-active"), "the viewer sees the certificates");
        for control in ["Send command", ">Revoke<", "Issue certificate", "Save configuration", "Save settings"] {
            assert!(!html.contains(control), "a viewer is not shown {control}");
        }
        let forged = viewer.post(&format!("/ui/devices/{id}/certificates/{first}/revoke"), &[("reason", "keyCompromise")]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let record = expect_json(app.get(&format!("/certificates/{first}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record["status"], "active", "the viewer revoked nothing");

        let admin = Browser::signed_in(&app, "boss", "admin").await;
        let (_, html) = admin.get(&format!("/ui/devices/{id}")).await;
        assert!(html.contains(">Revoke<") && html.contains("data-confirm=\"Revoke this certificate? Devices using it lose access.\""));
        let revoked = admin.post(&format!("/ui/devices/{id}/certificates/{first}/revoke"), &[("reason", "keyCompromise")]).await;
        assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&revoked), format!("/ui/devices/{id}#certificates"));
        let record = expect_json(app.get(&format!("/certificates/{first}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record["status"], "revoked");
        assert_eq!(record["revocationReason"], "keyCompromise");

        // Refused by the API: shown beside the reason, and the certificate stays active.
        let refused = admin.post(&format!("/ui/devices/{id}/certificates/{second}/revoke"), &[("reason", "removeFromCRL")]).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(refused.text().await.unwrap().contains("reversible"));
        let record = expect_json(app.get(&format!("/certificates/{second}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record["status"], "active");
        // Already revoked: a conflict, on the page.
        let again = admin.post(&format!("/ui/devices/{id}/certificates/{first}/revoke"), &[("reason", "superseded")]).await;
        assert_eq!(again.status(), StatusCode::CONFLICT);
        // A certificate of another device is not found under this one.
        let other = expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": "other" })).await, StatusCode::CREATED).await;
        let other = other["device"]["id"].as_str().unwrap();
        let wrong = admin.post(&format!("/ui/devices/{other}/certificates/{second}/revoke"), &[("reason", "superseded")]).await;
        assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
    }

    async fn configuration_differences_are_marked_and_the_desired_one_can_be_edited(app) {
        let (id, token) = device(&app, "display").await;
        let desired = json!({ "brightness": 80, "orientation": "portrait" });
        let path = format!("/devices/{id}/configuration");
        expect_json(app.request(Method::PUT, &path, Some(ADMIN_TOKEN), Some(json!({ "configuration": desired }))).await, StatusCode::OK).await;
        let applied = json!({ "version": 1, "configuration": { "brightness": 60, "orientation": "portrait" } });
        expect_json(app.request(Method::PUT, "/devices/self/configuration/reported", Some(&token), Some(applied)).await, StatusCode::OK).await;

        let browser = Browser::signed_in(&app, "ops", "operator").await;
        let (_, html) = browser.get(&format!("/ui/devices/{id}")).await;
        let table = &html[html.find("id=\"configuration\"").unwrap()..];
        let brightness = table.split("<tr").find(|row| row.contains("Brightness")).unwrap();
        assert!(brightness.contains("class=\"differs\"") && brightness.contains(">differs<"), "{brightness}");
        let orientation = table.split("<tr").find(|row| row.contains("Orientation")).unwrap();
        assert!(!orientation.contains("differs"), "{orientation}");

        // An invalid desired value: the API's message beside the field.
        let bad = browser.post(&format!("/ui/devices/{id}/configuration"), &[("configuration", "{\"brightness\": 140}"), ("version", "1")]).await;
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = bad.text().await.unwrap();
        let error = html.split("id=\"f-configuration-error\"").nth(1).unwrap_or_else(|| panic!("{html}"));
        assert!(error.split("</p>").next().unwrap().contains("brightness: must be a percentage"), "{error}");
        let saved = browser.post(&format!("/ui/devices/{id}/configuration"), &[("configuration", "{\"brightness\": 60}"), ("version", "1")]).await;
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
        let status = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(status["desired"]["brightness"], 60);
        assert_eq!(status["desiredVersion"], 2);
        // A stale version is a conflict.
        let stale = browser.post(&format!("/ui/devices/{id}/configuration"), &[("configuration", "{}"), ("version", "1")]).await;
        assert_eq!(stale.status(), StatusCode::CONFLICT);

        // Settings through their form.
        let saved = browser.post(&format!("/ui/devices/{id}/settings"), &[("display_name", "Front door"), ("timezone", "Europe/Berlin"), ("tags", "lobby, north"), ("location", ""), ("notes", "")]).await;
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
        let settings = expect_json(app.get(&format!("/devices/{id}/settings"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(settings["displayName"], "Front door");
        assert_eq!(settings["tags"], json!(["lobby", "north"]));
        let bad = browser.post(&format!("/ui/devices/{id}/settings"), &[("timezone", "Berlin")]).await;
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.text().await.unwrap().contains("id=\"f-timezone-error\""));
    }
}
