//! The console's enrollment & access, webhooks and events pages over real HTTP: what a form
//! creates works through the JSON API (and a revoked token stops working), what a role may not
//! do is refused, and the event history shows only the member's tenant.

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::console::Browser;
use crate::helpers::*;

/// The text of `<code id="new-secret">…</code>` on a result page.
fn new_secret(html: &str) -> Option<String> {
    let start = html.find("<code id=\"new-secret\">")? + "<code id=\"new-secret\">".len();
    Some(html[start..].split('<').next()?.to_string())
}

/// The ids in `action="/ui/…/{id}/{verb}"` forms of a page, in page order.
fn action_ids(html: &str, prefix: &str, verb: &str) -> Vec<String> {
    html.split(&format!("action=\"{prefix}"))
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.strip_suffix(&format!("/{verb}")).map(str::to_string))
        .collect()
}

async fn auto_register(app: &TestApp, token: &str, serial: &str) -> reqwest::Response {
    app.post("/devices/auto-register", token, json!({ "serialNumber": serial, "name": serial })).await
}

async fn list(app: &TestApp, path: &str, token: &str) -> Vec<Value> {
    let body = expect_json(app.get(path, token).await, StatusCode::OK).await;
    body["items"].as_array().expect("items").clone()
}

engine_tests! {
    async fn an_enrollment_token_from_the_form_is_shown_once_with_a_qr_code_and_registers_a_device(app) {
        let admin = Browser::signed_in(&app, "ana", "admin").await;
        let (status, html) = admin.get("/ui/enrollment").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("No enrollment tokens yet"), "{html}");
        assert!(html.contains("href=\"/ui/enrollment/api-tokens\"") && html.contains("href=\"/ui/webhooks\""));

        let created = admin.post("/ui/enrollment", &[("name", "lobby"), ("expiresAt", "24"), ("maxUses", "2")]).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let html = created.text().await.unwrap();
        let secret = new_secret(&html).expect("the secret is shown");
        assert!(secret.starts_with("herd_et_"), "{secret}");
        assert!(html.contains("data-copy=\"new-secret\""));
        assert!(html.contains("<div class=\"qr\"") && html.contains("<svg"), "a QR code: {html}");

        // Shown once: the list shows the token but never its secret.
        let (_, listed) = admin.get("/ui/enrollment").await;
        assert!(listed.contains("lobby") && listed.contains("0 / 2"), "{listed}");
        assert!(!listed.contains(&secret), "the list must not show the secret");

        let registered = auto_register(&app, &secret, "SN-QR-1").await;
        assert_eq!(registered.status(), StatusCode::CREATED);
        let (_, listed) = admin.get("/ui/enrollment").await;
        assert!(listed.contains("1 / 2"), "{listed}");

        // A bad use limit is reported beside its field, and nothing is created.
        let refused = admin.post("/ui/enrollment", &[("name", "bad"), ("maxUses", "0")]).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = refused.text().await.unwrap();
        assert!(html.contains("f-maxUses-error"), "{html}");
        assert_eq!(list(&app, "/enrollment-tokens", ADMIN_TOKEN).await.len(), 1);
    }

    async fn revoking_an_enrollment_token_through_the_form_stops_registrations(app) {
        let admin = Browser::signed_in(&app, "ana", "admin").await;
        let created = admin.post("/ui/enrollment", &[("name", "doomed")]).await;
        let secret = new_secret(&created.text().await.unwrap()).expect("secret");
        let (_, html) = admin.get("/ui/enrollment").await;
        let ids = action_ids(&html, "/ui/enrollment/", "revoke");
        assert_eq!(ids.len(), 1, "{html}");
        assert!(html.contains("data-confirm="));

        let revoked = admin.post(&format!("/ui/enrollment/{}/revoke", ids[0]), &[]).await;
        assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
        assert_eq!(revoked.headers()[LOCATION], "/ui/enrollment");
        assert_eq!(auto_register(&app, &secret, "SN-REVOKED").await.status(), StatusCode::UNAUTHORIZED);
        let (_, html) = admin.get("/ui/enrollment").await;
        assert!(html.contains("s-revoked"), "{html}");
        assert!(action_ids(&html, "/ui/enrollment/", "revoke").is_empty(), "no revoke button on a revoked token");
    }

    async fn operators_and_viewers_see_no_token_forms_and_their_forged_posts_are_refused(app) {
        for role in ["operator", "viewer"] {
            let member = Browser::signed_in(&app, &format!("{role}-1"), role).await;
            for path in ["/ui/enrollment", "/ui/enrollment/api-tokens", "/ui/enrollment/users", "/ui/webhooks"] {
                let (status, html) = member.get(path).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert!(html.contains("needs the admin role"), "{role} on {path}: {html}");
                assert!(!html.contains("action=\"/ui/enrollment") && !html.contains("action=\"/ui/webhooks"),
                    "{role} sees no form on {path}");
            }
            let forged = member.post("/ui/enrollment/api-tokens", &[("name", "mine"), ("role", "admin")]).await;
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{role}");
            let forged = member.post("/ui/enrollment", &[("name", "mine")]).await;
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{role}");
            let forged = member.post("/ui/enrollment/users", &[("username", "evil"), ("password", "a long password"), ("role", "admin")]).await;
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{role}");
        }
        assert!(list(&app, "/tokens", ADMIN_TOKEN).await.iter().all(|t| t["name"] != "mine"), "no token was created");
        assert!(list(&app, "/enrollment-tokens", ADMIN_TOKEN).await.is_empty());
        assert!(Browser::sign_in(&app, "evil", "a long password").await.is_none());

        // An admin's form does create one, shown once.
        let admin = Browser::signed_in(&app, "ana", "admin").await;
        let created = admin.post("/ui/enrollment/api-tokens", &[("name", "ci"), ("role", "operator"), ("expiresAt", "720")]).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let secret = new_secret(&created.text().await.unwrap()).expect("secret");
        let me = expect_json(app.get("/auth/me", &secret).await, StatusCode::OK).await;
        assert_eq!(me["role"], "operator");
        let ci = list(&app, "/tokens", ADMIN_TOKEN).await.into_iter().find(|t| t["name"] == "ci").expect("listed");
        let ci = ci["id"].as_str().unwrap().to_string();
        let (_, html) = admin.get("/ui/enrollment/api-tokens").await;
        assert!(action_ids(&html, "/ui/enrollment/api-tokens/", "revoke").contains(&ci), "{html}");
        let revoked = admin.post(&format!("/ui/enrollment/api-tokens/{ci}/revoke"), &[]).await;
        assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
        assert_eq!(app.get("/auth/me", &secret).await.status(), StatusCode::UNAUTHORIZED);
    }

    async fn a_user_created_through_the_form_signs_in_and_can_be_deleted(app) {
        let admin = Browser::signed_in(&app, "ana", "admin").await;
        let short = admin.post("/ui/enrollment/users", &[("username", "bo"), ("password", "short"), ("role", "viewer")]).await;
        assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(short.text().await.unwrap().contains("f-password-error"));

        let created = admin.post("/ui/enrollment/users", &[("username", "bo"), ("password", "another long one"), ("role", "operator")]).await;
        assert_eq!(created.status(), StatusCode::SEE_OTHER);
        let bo = Browser::sign_in(&app, "bo", "another long one").await.expect("the new user signs in");
        let (_, html) = bo.get("/ui/").await;
        assert!(html.contains(">operator<"), "{html}");

        let taken = admin.post("/ui/enrollment/users", &[("username", "bo"), ("password", "another long one"), ("role", "viewer")]).await;
        assert_eq!(taken.status(), StatusCode::CONFLICT);

        // The admin sees a delete button for bo but not for themself.
        let (_, html) = admin.get("/ui/enrollment/users").await;
        let ids = action_ids(&html, "/ui/enrollment/users/", "delete");
        assert_eq!(ids.len(), 1, "only bo can be deleted: {html}");
        let deleted = admin.post(&format!("/ui/enrollment/users/{}/delete", ids[0]), &[]).await;
        assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
        assert!(Browser::sign_in(&app, "bo", "another long one").await.is_none());
    }

    async fn the_events_page_shows_this_tenants_events_and_filters_by_type(app) {
        let token = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, _) = app.register(&token, json!({ "serialNumber": "SN-EV-1", "name": "lobby screen" })).await;
        let (_, other_admin) = app.create_tenant("other").await;
        let other_token = app.enrollment_token(&other_admin, json!({})).await;
        app.register(&other_token, json!({ "serialNumber": "SN-EV-2", "name": "elsewhere screen" })).await;

        let viewer = Browser::signed_in(&app, "vic", "viewer").await;
        let (status, html) = viewer.get("/ui/events").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("device.registered"), "{html}");
        assert!(html.contains(&format!("href=\"/ui/devices/{}\"", device["id"].as_str().unwrap())), "{html}");
        assert!(html.contains("lobby screen") && html.contains("<details"), "{html}");
        assert!(html.contains("data-live="), "a live region");
        assert!(!html.contains("elsewhere screen"), "another tenant's event leaked");

        let (status, filtered) = viewer.get("/ui/events?type=device.deleted").await;
        assert_eq!(status, StatusCode::OK);
        assert!(!filtered.contains("lobby screen"), "{filtered}");
        assert!(filtered.contains("No event matches"), "{filtered}");
        let (_, filtered) = viewer.get("/ui/events?type=device.registered").await;
        assert!(filtered.contains("lobby screen"));
        let (status, _) = viewer.get("/ui/events?type=no.such").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

/// Webhooks need private addresses allowed (the receiver is loopback) and the delivery job
/// run by the test, so these spawn the webhook tests' app per engine.
mod webhooks {
    use super::*;
    use crate::webhooks::{deliver, receiver, spawn};

    async fn a_webhook_from_the_form_is_in_the_api_and_lists_its_deliveries(app: TestApp) {
        let hook = receiver(0).await;
        let admin = Browser::signed_in(&app, "ana", "admin").await;
        let (_, html) = admin.get("/ui/webhooks").await;
        assert!(html.contains("No webhooks yet") && html.contains("value=\"device.registered\""), "{html}");

        let created = admin
            .post(
                "/ui/webhooks",
                &[
                    ("url", hook.url.as_str()),
                    ("events", "device.registered"),
                    ("events", "device.deleted"),
                    ("enabled", "true"),
                ],
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let secret = new_secret(&created.text().await.unwrap()).expect("the signing secret is shown once");
        assert!(secret.starts_with("whsec_"), "{secret}");
        let hooks = list(&app, "/webhooks", ADMIN_TOKEN).await;
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0]["url"], hook.url.as_str());
        assert_eq!(hooks[0]["events"], json!(["device.registered", "device.deleted"]));
        assert_eq!(hooks[0]["enabled"], true);
        let id = hooks[0]["id"].as_str().unwrap().to_string();

        // An event it subscribes to becomes a delivery (to a receiver of the test's, on loopback).
        let token = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&token, json!({ "serialNumber": "SN-WH-1" })).await;
        deliver(&app).await;
        let (status, page) = admin.get(&format!("/ui/webhooks/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(&hook.url), "{page}");
        assert!(page.contains("<code>device.registered</code>"), "a delivery row: {page}");
        assert!(!page.contains("No deliveries yet"), "{page}");

        // Disable, then delete, through the forms.
        let disabled = admin.post(&format!("/ui/webhooks/{id}/disable"), &[]).await;
        assert_eq!(disabled.status(), StatusCode::SEE_OTHER);
        assert_eq!(list(&app, "/webhooks", ADMIN_TOKEN).await[0]["enabled"], false);
        let deleted = admin.post(&format!("/ui/webhooks/{id}/delete"), &[]).await;
        assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
        assert!(list(&app, "/webhooks", ADMIN_TOKEN).await.is_empty());

        // An unknown event type is refused and nothing is created; a viewer's forged form is 403.
        let refused = admin.post("/ui/webhooks", &[("url", "http://127.0.0.1:9/hook"), ("events", "no.such")]).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let viewer = Browser::signed_in(&app, "vic", "viewer").await;
        let forged = viewer.post("/ui/webhooks", &[("url", "http://127.0.0.1:9/hook")]).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        assert!(list(&app, "/webhooks", ADMIN_TOKEN).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_webhook_from_the_form_is_in_the_api_and_lists_its_deliveries() {
        a_webhook_from_the_form_is_in_the_api_and_lists_its_deliveries(spawn(Engine::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_webhook_from_the_form_is_in_the_api_and_lists_its_deliveries() {
        if !postgres_variant_runs() {
            return;
        }
        a_webhook_from_the_form_is_in_the_api_and_lists_its_deliveries(spawn(Engine::Postgres).await).await;
    }
}
