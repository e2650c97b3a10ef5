//! The console's alerts, monitoring rules and certificates pages over real HTTP: what they list
//! (and what they do not: another tenant's), their forms, and that the server refuses a
//! viewer's forged form whatever the page drew. Every change is checked through the JSON API.

use chrono::Duration;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::console::Browser;
use crate::helpers::*;
use crate::telemetry::{device, now, rfc3339};

/// Opens one alert: a sample over the default "CPU > 90" warning rule (under the critical 95).
async fn open_cpu_alert(app: &TestApp, serial: &str) -> (String, Value) {
    let (device_id, token) = device(app, ADMIN_TOKEN, serial).await;
    let sample =
        json!({ "cpu": 92.5, "ram": 10, "storage": 10, "recordedAt": rfc3339(now(app) - Duration::seconds(30)) });
    expect_json(app.post("/devices/metrics", &token, sample).await, StatusCode::OK).await;
    let alerts =
        expect_json(app.get(&format!("/alerts?deviceId={device_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
    let items = alerts["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{alerts}");
    (device_id, items[0].clone())
}

async fn alert(app: &TestApp, id: &str) -> Value {
    expect_json(app.get(&format!("/alerts/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

async fn rule(app: &TestApp, id: &str) -> Value {
    expect_json(app.get(&format!("/monitoring-rules/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

/// The default tenant's "CPU > 90" warning rule (the seed's first).
async fn cpu_warning_rule(app: &TestApp) -> Value {
    let rules = expect_json(app.get("/monitoring-rules", ADMIN_TOKEN).await, StatusCode::OK).await;
    rules["items"].as_array().expect("items").iter().find(|r| r["threshold"] == 90.0).expect("the seed rule").clone()
}

/// A device of the admin's tenant with a certificate for a CSR of its own: `(device id, certificate)`.
async fn certified_device(app: &TestApp, admin: &str, name: &str) -> (String, Value) {
    let created = expect_json(app.post("/devices", admin, json!({ "name": name })).await, StatusCode::CREATED).await;
    let device_id = created["device"]["id"].as_str().expect("id").to_string();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["device.local".to_string()]).expect("params");
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    let path = format!("/devices/{device_id}/certificates");
    let issued = app.request(Method::POST, &path, Some(admin), Some(json!({ "csr": csr }))).await;
    let bundle = expect_json(issued, StatusCode::CREATED).await;
    (device_id, bundle["certificate"].clone())
}

async fn certificate(app: &TestApp, id: &str) -> Value {
    expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await
}

fn s(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

engine_tests! {
    async fn the_alerts_page_lists_an_opened_alert_and_only_operators_acknowledge_it(app) {
        let viewer = Browser::signed_in(&app, "vera", "viewer").await;
        let (status, empty) = viewer.get("/ui/alerts").await;
        assert_eq!(status, StatusCode::OK);
        assert!(empty.contains("No alerts") && empty.contains("href=\"/ui/alerts/rules\""), "{empty}");

        let (device_id, opened) = open_cpu_alert(&app, "AL-1").await;
        let alert_id = s(&opened["id"]).to_string();
        let (other_device, _) = {
            let (_, other_admin) = app.create_tenant("other").await;
            device(&app, &other_admin, "FOREIGN-1").await
        };

        let (status, page) = viewer.get("/ui/alerts").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("Screen AL-1"), "{page}");
        assert!(page.contains(&format!("href=\"/ui/devices/{device_id}\"")));
        assert!(page.contains("92.5 %") && page.contains("&gt; 90 %"), "value / threshold: {page}");
        assert!(page.contains("badge s-warning") && page.contains("badge s-open"));
        assert!(page.contains("data-live=\"alert.opened alert.resolved\""));
        assert!(!page.contains("/acknowledge\"") && !page.contains(">Acknowledge</button>"), "a viewer gets no acknowledge button");
        assert!(!page.contains(&other_device));

        // Filters go to the API: a state with no alert, and a severity it refuses.
        let (_, resolved) = viewer.get("/ui/alerts?status=resolved").await;
        assert!(resolved.contains("No alert matches these filters") && !resolved.contains("Screen AL-1"));
        let (_, critical) = viewer.get("/ui/alerts?severity=critical").await;
        assert!(!critical.contains("Screen AL-1"));
        let (_, by_device) = viewer.get(&format!("/ui/alerts?device={device_id}&severity=warning")).await;
        assert!(by_device.contains("Screen AL-1"));
        let (status, bad) = viewer.get("/ui/alerts?severity=dreadful").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.contains("must be info, warning or critical"));

        // The viewer's forged form is refused by the API handler, and changes nothing.
        let forged = viewer.post(&format!("/ui/alerts/{alert_id}/acknowledge"), &[]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert!(alert(&app, &alert_id).await["acknowledgedAt"].is_null());

        let operator = Browser::signed_in(&app, "otto", "operator").await;
        let (_, page) = operator.get("/ui/alerts?status=open").await;
        assert!(page.contains(&format!("action=\"/ui/alerts/{alert_id}/acknowledge\"")), "{page}");
        let acknowledged = operator.post(&format!("/ui/alerts/{alert_id}/acknowledge"), &[("status", "open")]).await;
        assert_eq!(acknowledged.status(), StatusCode::SEE_OTHER);
        assert_eq!(acknowledged.headers()[LOCATION], "/ui/alerts?status=open");
        let after = alert(&app, &alert_id).await;
        assert!(after["acknowledgedAt"].is_string(), "{after}");
        assert_eq!(after["status"], "open", "acknowledging does not resolve");
        let (_, page) = operator.get("/ui/alerts").await;
        assert!(page.contains("badge s-acknowledged") && page.contains("by you"), "{page}");
        assert!(!page.contains(&format!("action=\"/ui/alerts/{alert_id}/acknowledge\"")), "no second acknowledgement");
        // Another tenant's alert id is not found.
        let missing = operator.post("/ui/alerts/0190a0a0-0000-7000-8000-000000000000/acknowledge", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    async fn an_admin_changes_a_rules_threshold_and_a_bad_one_is_a_field_error(app) {
        let seed = cpu_warning_rule(&app).await;
        let rule_id = s(&seed["id"]).to_string();
        let admin = Browser::signed_in(&app, "ada", "admin").await;
        let (status, page) = admin.get("/ui/alerts/rules").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(&format!("action=\"/ui/alerts/rules/{rule_id}\"")), "{page}");
        assert!(page.contains("&gt; 90 %"));

        let edit = |threshold: &'static str| {
            [("name", "CPU busy"), ("operator", "gte"), ("threshold", threshold), ("severity", "critical"), ("enabled", "on")]
        };
        let saved = admin.post(&format!("/ui/alerts/rules/{rule_id}"), &edit("80")).await;
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
        assert_eq!(saved.headers()[LOCATION], "/ui/alerts/rules");
        let changed = rule(&app, &rule_id).await;
        assert_eq!(changed["threshold"], 80.0);
        assert_eq!(changed["operator"], "gte");
        assert_eq!(changed["severity"], "critical");
        assert_eq!(changed["name"], "CPU busy");

        // Out of the metric's range: the API's message beside the rule's threshold field, 422.
        let refused = admin.post(&format!("/ui/alerts/rules/{rule_id}"), &edit("150")).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = refused.text().await.unwrap();
        assert!(html.contains(&format!("id=\"r-{rule_id}-threshold-error\"")), "{html}");
        assert!(html.contains("must be 0–100 percent"), "{html}");
        assert!(html.contains("value=\"150\""), "the form keeps what was typed");
        let not_a_number = admin.post(&format!("/ui/alerts/rules/{rule_id}"), &edit("lots")).await;
        assert_eq!(not_a_number.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(not_a_number.text().await.unwrap().contains("must be a number"));
        assert_eq!(rule(&app, &rule_id).await["threshold"], 80.0, "nothing changed");

        // Unticked, the rule is disabled.
        let off = admin.post(&format!("/ui/alerts/rules/{rule_id}"), &[("name", "CPU busy"), ("operator", "gte"), ("threshold", "80"), ("severity", "critical")]).await;
        assert_eq!(off.status(), StatusCode::SEE_OTHER);
        assert_eq!(rule(&app, &rule_id).await["enabled"], false);

        // Create and delete through the forms.
        let created = admin.post("/ui/alerts/rules", &[("name", "Hot"), ("metric", "temperature"), ("operator", "gt"), ("threshold", "70"), ("severity", "warning"), ("tags", "lobby, shop"), ("enabled", "on")]).await;
        assert_eq!(created.status(), StatusCode::SEE_OTHER);
        let rules = expect_json(app.get("/monitoring-rules", ADMIN_TOKEN).await, StatusCode::OK).await;
        let hot = rules["items"].as_array().unwrap().iter().find(|r| r["name"] == "Hot").expect("created").clone();
        assert_eq!(hot["tags"], json!(["lobby", "shop"]));
        let bad_new = admin.post("/ui/alerts/rules", &[("name", "Frozen"), ("metric", "offline"), ("operator", "lt"), ("threshold", "5"), ("severity", "info")]).await;
        assert_eq!(bad_new.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad_new.text().await.unwrap().contains("id=\"r-new-operator-error\""));
        let deleted = admin.post(&format!("/ui/alerts/rules/{}/delete", s(&hot["id"])), &[]).await;
        assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
        assert_eq!(app.get(&format!("/monitoring-rules/{}", s(&hot["id"])), ADMIN_TOKEN).await.status(), StatusCode::NOT_FOUND);

        // A viewer reads the rules, gets no form, and a forged one changes nothing.
        let viewer = Browser::signed_in(&app, "vera", "viewer").await;
        let (status, page) = viewer.get("/ui/alerts/rules").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("CPU busy"));
        assert!(!page.contains("Save changes") && !page.contains("Create rule") && !page.contains(">Delete<"), "{page}");
        let forged = viewer.post(&format!("/ui/alerts/rules/{rule_id}"), &edit("10")).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let forged = viewer.post(&format!("/ui/alerts/rules/{rule_id}/delete"), &[]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert_eq!(rule(&app, &rule_id).await["threshold"], 80.0);
        // An operator may acknowledge alerts but not change rules.
        let operator = Browser::signed_in(&app, "otto", "operator").await;
        assert_eq!(operator.post(&format!("/ui/alerts/rules/{rule_id}"), &edit("10")).await.status(), StatusCode::FORBIDDEN);
    }

    async fn the_certificates_page_lists_the_tenants_certificates_and_admins_revoke_them(app) {
        let (device_id, mine) = certified_device(&app, ADMIN_TOKEN, "cert-screen").await;
        let (_, other_admin) = app.create_tenant("other").await;
        let (_, foreign) = certified_device(&app, &other_admin, "foreign-screen").await;
        let (id, serial) = (s(&mine["id"]).to_string(), s(&mine["serialNumber"]).to_string());

        let viewer = Browser::signed_in(&app, "vera", "viewer").await;
        let (status, page) = viewer.get("/ui/certificates").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(&serial) && page.contains("cert-screen"), "{page}");
        assert!(page.contains(&format!("href=\"/ui/devices/{device_id}\"")));
        assert!(page.contains("badge s-active") && page.contains("in 36"), "{page}");
        assert!(!page.contains(s(&foreign["serialNumber"])) && !page.contains("foreign-screen"));
        assert!(page.contains("href=\"/ca/certificate\"") && page.contains("href=\"/ca/crl?format=pem\""));
        assert!(!page.contains(">Revoke</button>") && !page.contains("name=\"reason\""), "a viewer gets no revoke form");
        // Expiring within 30 days: not this one; revoked: none yet.
        let (_, soon) = viewer.get("/ui/certificates?expiring=30").await;
        assert!(!soon.contains(&serial) && soon.contains("No certificate matches these filters"));
        let (_, year) = viewer.get("/ui/certificates?expiring=400&status=active").await;
        assert!(year.contains(&serial));
        let (status, bad) = viewer.get("/ui/certificates?status=lost").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.contains("must be pending, active, expired or revoked"));

        let forged = viewer.post(&format!("/ui/certificates/{id}/revoke"), &[("reason", "keyCompromise")]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert_eq!(certificate(&app, &id).await["status"], "active");

        let admin = Browser::signed_in(&app, "ada", "admin").await;
        let (_, page) = admin.get("/ui/certificates").await;
        assert!(page.contains(&format!("action=\"/ui/certificates/{id}/revoke\"")), "{page}");
        assert!(page.contains(">Revoke</button>") && page.contains("<option value=\"keyCompromise\">"));
        assert!(!page.contains("value=\"certificateHold\""), "only final reasons");
        // A reason that is not RFC 5280's, or one that is not final, is refused beside the field.
        let odd = admin.post(&format!("/ui/certificates/{id}/revoke"), &[("reason", "boredom")]).await;
        assert_eq!(odd.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(odd.text().await.unwrap().contains("unknown revocation reason"));
        assert_eq!(certificate(&app, &id).await["status"], "active");

        let revoked = admin.post(&format!("/ui/certificates/{id}/revoke"), &[("reason", "keyCompromise"), ("status", "active")]).await;
        assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
        assert_eq!(revoked.headers()[LOCATION], "/ui/certificates?status=active");
        let after = certificate(&app, &id).await;
        assert_eq!(after["status"], "revoked");
        assert_eq!(after["revocationReason"], "keyCompromise");
        let (_, page) = admin.get("/ui/certificates").await;
        assert!(page.contains("badge s-revoked") && !page.contains(&format!("action=\"/ui/certificates/{id}/revoke\"")));
        // Revoking again is the API's conflict, shown on the page.
        let again = admin.post(&format!("/ui/certificates/{id}/revoke"), &[("reason", "superseded")]).await;
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert!(again.text().await.unwrap().contains("already revoked"));
        // Another tenant's certificate is not found, and stays active.
        let theirs = admin.post(&format!("/ui/certificates/{}/revoke", s(&foreign["id"])), &[("reason", "keyCompromise")]).await;
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
        let foreign_after = expect_json(app.get(&format!("/certificates/{}", s(&foreign["id"])), &other_admin).await, StatusCode::OK).await;
        assert_eq!(foreign_after["status"], "active");
    }
}
