//! The registration protocol (security finding 1): a registration that matches an existing
//! device proves it is that device (its token, or a signature by its registered key) or becomes
//! a claim that an operator decides; a server-generated key reaches the device once.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{engine_tests, expect_json, expect_problem, TestApp, ADMIN_TOKEN};

fn s(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_string()
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let page = expect_json(app.get(&format!("/events?limit=500&type={kind}"), ADMIN_TOKEN).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

/// A device key as a device keeps it, and its `PUBLIC KEY` PEM.
fn device_key() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = key.public_key_pem();
    (key, pem)
}

async fn challenge(app: &TestApp, enroller: &str) -> String {
    let body =
        expect_json(app.post("/devices/auto-register/challenge", enroller, json!({})).await, StatusCode::CREATED).await;
    assert!(body["expiresAt"].is_string());
    s(&body["challenge"])
}

fn sign(key: &rcgen::KeyPair, challenge: &str) -> String {
    let signature = rcgen::SigningKey::sign(key, challenge.as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(signature)
}

engine_tests! {
    async fn an_enrollment_token_and_known_identifiers_cannot_take_a_device_over(app) {
        // The reported attack: an admin-made device with a MAC and a server-key certificate.
        let created = expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": "Lobby", "macAddress": "aa:bb:cc:11:22:33" })).await, StatusCode::CREATED).await;
        let device_id = s(&created["device"]["id"]);
        let victim_token = s(&created["deviceToken"]);
        let issued = expect_json(app.request(Method::POST, &format!("/devices/{device_id}/certificates"), Some(ADMIN_TOKEN), None).await, StatusCode::CREATED).await;
        assert!(issued["privateKeyPem"].is_string(), "the issuing admin gets the key");
        let first = expect_json(app.get("/devices/self/certificate", &victim_token).await, StatusCode::OK).await;
        assert_eq!(first["privateKeyPem"], issued["privateKeyPem"], "the device's first fetch delivers it");
        let second = expect_json(app.get("/devices/self/certificate", &victim_token).await, StatusCode::OK).await;
        assert!(second.get("privateKeyPem").is_none(), "and never again: {second}");

        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let attack = app.post("/devices/auto-register", &enroll, json!({ "macAddress": "aa-bb-cc-11-22-33", "name": "pwned" })).await;
        let attack = expect_json(attack, StatusCode::ACCEPTED).await;
        let claim = &attack["claim"];
        assert_eq!(claim["status"], "pending");
        assert_eq!(claim["deviceId"], device_id.as_str());
        let attacker_token = s(&attack["deviceToken"]);

        // Nothing about the device changed; the real device keeps working.
        let device = expect_json(app.get(&format!("/devices/{device_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(device["name"], "Lobby");
        expect_json(app.post("/devices/connect", &victim_token, json!({})).await, StatusCode::OK).await;
        // The claimant's token waits, and says why.
        let waiting = expect_problem(app.get("/devices/self/certificate", &attacker_token).await, StatusCode::FORBIDDEN).await;
        assert!(s(&waiting["detail"]).contains("awaiting approval"), "{waiting}");
        expect_problem(app.get("/devices/self", &attacker_token).await, StatusCode::FORBIDDEN).await;

        let created_events = events_of(&app, "device.claim_created").await;
        assert_eq!(created_events.len(), 1);
        assert_eq!(created_events[0]["data"]["claimId"], claim["id"]);
        assert!(events_of(&app, "device.reregistered").await.is_empty());

        // The operator rejects it: the claimant's token never works.
        let claim_id = s(&claim["id"]);
        let listed = expect_json(app.get("/device-claims?status=pending", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        let rejected = expect_json(app.post(&format!("/device-claims/{claim_id}/reject"), ADMIN_TOKEN, json!({})).await, StatusCode::OK).await;
        assert_eq!(rejected["claim"]["status"], "rejected");
        assert!(rejected["claim"]["decidedAt"].is_string());
        expect_problem(app.get("/devices/self", &attacker_token).await, StatusCode::UNAUTHORIZED).await;
        expect_json(app.post("/devices/connect", &victim_token, json!({})).await, StatusCode::OK).await;
        expect_problem(app.post(&format!("/device-claims/{claim_id}/approve"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        assert_eq!(events_of(&app, "device.claim_rejected").await.len(), 1);
    }

    // Registrations that arrive together are written in groups (herd_store::registrations);
    // each still gets its own answer: new identifiers 201, known ones a claim, a token's last
    // use to exactly one of the racers, and every written device its one event.
    async fn registrations_at_once_get_each_their_own_answer(app) {
        let open = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&open, json!({ "serialNumber": "AT-ONCE-KNOWN" })).await;
        let serials: Vec<String> = (0..30)
            .map(|i| format!("AT-ONCE-{i}"))
            .chain(["AT-ONCE-KNOWN".to_string(), "AT-ONCE-TWICE".to_string(), "AT-ONCE-TWICE".to_string()])
            .collect();
        let posts = serials.iter().map(|serial| {
            let (app, open) = (&app, &open);
            async move { app.post("/devices/auto-register", open, json!({ "serialNumber": serial })).await.status() }
        });
        let statuses = futures::future::join_all(posts).await;
        assert!(statuses[..30].iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
        assert_eq!(statuses[30], StatusCode::ACCEPTED, "known identifiers without proof make a claim");
        let mut twice = statuses[31..].to_vec();
        twice.sort();
        assert_eq!(twice, [StatusCode::CREATED, StatusCode::ACCEPTED], "one of two racers for one serial wins");
        let devices = expect_json(app.get("/devices?limit=100&q=AT-ONCE", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(devices["items"].as_array().unwrap().len(), 32);
        assert_eq!(events_of(&app, "device.registered").await.len(), 32);
        let tokens = expect_json(app.get("/enrollment-tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tokens["items"][0]["uses"], 34, "every registration and claim counts one use");

        let limited = app.enrollment_token(ADMIN_TOKEN, json!({ "maxUses": 5 })).await;
        let posts = (0..20).map(|i| {
            let (app, limited) = (&app, &limited);
            async move {
                app.post("/devices/auto-register", limited, json!({ "serialNumber": format!("LIMIT-{i}") })).await.status()
            }
        });
        let statuses = futures::future::join_all(posts).await;
        let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
        let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
        assert_eq!((created, refused), (5, 15), "{statuses:?}");
        let devices = expect_json(app.get("/devices?limit=100&q=LIMIT-", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(devices["items"].as_array().unwrap().len(), 5);
        assert_eq!(events_of(&app, "device.registered").await.len(), 37);
    }

    async fn an_approved_claim_hands_the_device_to_the_claimant(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, old_token) = app.register(&enroll, json!({ "serialNumber": "RESET-1" })).await;
        expect_json(app.post("/devices/connect", &old_token, json!({})).await, StatusCode::OK).await;
        // A factory reset lost the token: the device asks again, without proof.
        let (_, pem) = device_key();
        let pending = expect_json(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "RESET-1", "appVersion": "2.0", "publicKey": pem })).await, StatusCode::ACCEPTED).await;
        let claim_id = s(&pending["claim"]["id"]);
        let new_token = s(&pending["deviceToken"]);
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        expect_json(app.get(&format!("/device-claims/{claim_id}"), &viewer).await, StatusCode::OK).await;
        expect_problem(app.post(&format!("/device-claims/{claim_id}/approve"), &viewer, json!({})).await, StatusCode::FORBIDDEN).await;
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        let approved = expect_json(app.post(&format!("/device-claims/{claim_id}/approve"), &operator, json!({})).await, StatusCode::OK).await;
        assert_eq!(approved["claim"]["status"], "approved");
        assert_eq!(approved["device"]["id"], device["id"]);
        assert_eq!(approved["device"]["appVersion"], "2.0");
        expect_json(app.post("/devices/connect", &new_token, json!({})).await, StatusCode::OK).await;
        expect_problem(app.post("/devices/connect", &old_token, json!({})).await, StatusCode::UNAUTHORIZED).await;
        let decided = events_of(&app, "device.claim_approved").await;
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0]["data"]["claimId"], claim_id.as_str());
        assert_eq!(events_of(&app, "device.reregistered").await.len(), 1);
        expect_problem(app.post(&format!("/device-claims/{claim_id}/reject"), &operator, json!({})).await, StatusCode::CONFLICT).await;
    }

    async fn a_signature_by_the_registered_key_proves_the_device(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({ "maxUses": 10 })).await;
        let (key, pem) = device_key();
        let first = expect_json(app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "publicKey": pem })).await, StatusCode::CREATED).await;
        let device_id = s(&first["device"]["id"]);
        let old_token = s(&first["deviceToken"]);

        // A wrong signature, a forged challenge and a replayed one change nothing (401).
        let (other_key, _) = device_key();
        let c = challenge(&app, &enroll).await;
        let bad = app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "proof": { "challenge": c, "signature": sign(&other_key, &c) } })).await;
        let problem = expect_problem(bad, StatusCode::UNAUTHORIZED).await;
        assert!(s(&problem["detail"]).contains("signature"), "{problem}");
        let made_up = "herd-register-v1.made-up";
        let forged = app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "proof": { "challenge": made_up, "signature": sign(&key, made_up) } })).await;
        expect_problem(forged, StatusCode::UNAUTHORIZED).await;
        expect_json(app.post("/devices/connect", &old_token, json!({})).await, StatusCode::OK).await;

        let c = challenge(&app, &enroll).await;
        let proven = app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "appVersion": "9", "proof": { "challenge": c, "signature": sign(&key, &c) } })).await;
        let proven = expect_json(proven, StatusCode::OK).await;
        assert_eq!(proven["device"]["id"], device_id.as_str());
        assert_eq!(proven["device"]["appVersion"], "9");
        expect_problem(app.post("/devices/connect", &old_token, json!({})).await, StatusCode::UNAUTHORIZED).await;
        expect_json(app.post("/devices/connect", &s(&proven["deviceToken"]), json!({})).await, StatusCode::OK).await;
        let replay = app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "proof": { "challenge": c, "signature": sign(&key, &c) } })).await;
        expect_problem(replay, StatusCode::UNAUTHORIZED).await;

        // A challenge from another tenant proves nothing here.
        let (_, other_admin) = app.create_tenant("elsewhere").await;
        let theirs = app.enrollment_token(&other_admin, json!({})).await;
        let foreign = challenge(&app, &theirs).await;
        let crossed = app.post("/devices/auto-register", &enroll, json!({ "androidId": "sig-1", "proof": { "challenge": foreign, "signature": sign(&key, &foreign) } })).await;
        expect_problem(crossed, StatusCode::UNAUTHORIZED).await;

        // Failed proofs did not use up the enrollment token: 2 successful uses so far.
        let tokens = expect_json(app.get("/enrollment-tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tokens["items"][0]["uses"], 2, "{tokens}");
    }

    async fn a_wrong_device_token_is_refused_and_bad_proofs_are_422(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (_, token) = app.register(&enroll, json!({ "serialNumber": "TOK-1" })).await;
        let (_, other) = app.register(&enroll, json!({ "serialNumber": "TOK-2" })).await;
        let wrong = app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "TOK-1", "deviceToken": other })).await;
        expect_problem(wrong, StatusCode::UNAUTHORIZED).await;
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        for (body, field) in [
            (json!({ "serialNumber": "TOK-1", "publicKey": "not a key" }), "publicKey"),
            (json!({ "serialNumber": "TOK-1", "deviceToken": "herd_at_nope" }), "deviceToken"),
            (json!({ "serialNumber": "TOK-1", "proof": { "challenge": "sign me", "signature": "AAAA" } }), "proof.challenge"),
            (json!({ "serialNumber": "TOK-1", "proof": { "challenge": "herd-register-v1.x", "signature": "***" } }), "proof.signature"),
        ] {
            let problem = expect_problem(app.post("/devices/auto-register", &enroll, body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert!(crate::helpers::error_fields(&problem).contains(&field.to_string()), "{field}: {problem}");
        }
        let truncated = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMEh\n-----END PUBLIC KEY-----\n";
        expect_problem(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "NEW", "publicKey": truncated })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    async fn the_tenant_may_approve_claims_on_devices_never_seen_online(app) {
        let policy = expect_json(app.get("/device-claims/policy", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(policy["claimPolicy"], "manual");
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_problem(app.request(Method::PUT, "/device-claims/policy", Some(&operator), Some(json!({ "claimPolicy": "approve_never_seen" }))).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.request(Method::PUT, "/device-claims/policy", Some(ADMIN_TOKEN), Some(json!({ "claimPolicy": "anything" }))).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        expect_json(app.request(Method::PUT, "/device-claims/policy", Some(ADMIN_TOKEN), Some(json!({ "claimPolicy": "approve_never_seen" }))).await, StatusCode::OK).await;

        // An admin made this box; it has never been online. Its first enrollment takes it.
        let made = expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": "Unboxed", "serialNumber": "NEVER-1" })).await, StatusCode::CREATED).await;
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let taken = expect_json(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "NEVER-1" })).await, StatusCode::OK).await;
        assert_eq!(taken["device"]["id"], made["device"]["id"]);
        let approved = events_of(&app, "device.claim_approved").await;
        assert_eq!(approved.len(), 1);
        assert_eq!(approved[0]["data"]["decidedBy"], "policy");

        // Once it has been online, a claim waits for an operator again.
        expect_json(app.post("/devices/connect", &s(&taken["deviceToken"]), json!({})).await, StatusCode::OK).await;
        expect_json(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "NEVER-1" })).await, StatusCode::ACCEPTED).await;
        // An operator's own registration is proof enough.
        expect_json(app.post("/devices/auto-register", &operator, json!({ "serialNumber": "NEVER-1" })).await, StatusCode::OK).await;
    }

    async fn an_approval_that_would_duplicate_an_identifier_changes_nothing(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (device, token) = app.register(&enroll, json!({ "serialNumber": "DUP-1" })).await;
        let pending = expect_json(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "DUP-1", "macAddress": "aa:bb:cc:dd:ee:01" })).await, StatusCode::ACCEPTED).await;
        let claim_id = s(&pending["claim"]["id"]);
        // Meanwhile another device takes the MAC address the claim would add.
        expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": "Other", "macAddress": "aa:bb:cc:dd:ee:01" })).await, StatusCode::CREATED).await;
        expect_problem(app.post(&format!("/device-claims/{claim_id}/approve"), ADMIN_TOKEN, json!({})).await, StatusCode::CONFLICT).await;
        let claim = expect_json(app.get(&format!("/device-claims/{claim_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(claim["status"], "pending", "the failed approval rolled back");
        expect_json(app.post("/devices/connect", &token, json!({})).await, StatusCode::OK).await;
        let kept = expect_json(app.get(&format!("/devices/{}", s(&device["id"])), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(kept["macAddress"], Value::Null);
        assert!(events_of(&app, "device.claim_approved").await.is_empty());
    }

    async fn another_tenants_claims_answer_like_missing_ones(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        app.register(&enroll, json!({ "serialNumber": "MINE" })).await;
        let pending = expect_json(app.post("/devices/auto-register", &enroll, json!({ "serialNumber": "MINE" })).await, StatusCode::ACCEPTED).await;
        let claim_id = s(&pending["claim"]["id"]);
        let (_, other_admin) = app.create_tenant("nosy").await;
        expect_problem(app.get(&format!("/device-claims/{claim_id}"), &other_admin).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.post(&format!("/device-claims/{claim_id}/approve"), &other_admin, json!({})).await, StatusCode::NOT_FOUND).await;
        let theirs = expect_json(app.get("/device-claims", &other_admin).await, StatusCode::OK).await;
        assert!(theirs["items"].as_array().unwrap().is_empty());
        let mine = expect_json(app.get(&format!("/device-claims/{claim_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(mine["status"], "pending");
    }
}
