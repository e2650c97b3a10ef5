//! Credentials: API tokens and roles, users and sessions, enrollment tokens.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    engine_tests, error_fields, expect_json, expect_problem, spawn_app_with, ClockExt, Engine, SpawnOptions, TestApp,
    ADMIN_TOKEN,
};

engine_tests! {
    async fn roles_gate_what_a_token_may_do(app) {
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_json(app.get("/devices", &viewer).await, StatusCode::OK).await;
        expect_problem(app.post("/devices", &viewer, json!({ "name": "x" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.post("/devices", &operator, json!({ "name": "x" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.post("/tokens", &operator, json!({ "name": "x", "role": "admin" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get("/tokens", &viewer).await, StatusCode::FORBIDDEN).await;
        // Operators may auto-register devices themselves.
        let (device, _) = app.register(&operator, json!({ "serialNumber": "OP-1" })).await;
        expect_problem(app.delete(&format!("/devices/{}", device["id"].as_str().unwrap()), &viewer).await, StatusCode::FORBIDDEN).await;
        let response = app.delete(&format!("/devices/{}", device["id"].as_str().unwrap()), &operator).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    async fn tokens_are_listed_without_secrets_and_revocation_is_immediate(app) {
        let response = app.post("/tokens", ADMIN_TOKEN, json!({ "name": "ci", "role": "viewer" })).await;
        let created = expect_json(response, StatusCode::CREATED).await;
        let secret = created["secret"].as_str().unwrap().to_string();
        let id = created["token"]["id"].as_str().unwrap().to_string();
        let list = expect_json(app.get("/tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(!list.to_string().contains(&secret), "a secret leaked into the list");
        assert!(list["items"].as_array().unwrap().iter().any(|t| t["id"] == id.as_str()));
        expect_json(app.get("/devices", &secret).await, StatusCode::OK).await;
        assert_eq!(app.delete(&format!("/tokens/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.get("/devices", &secret).await, StatusCode::UNAUTHORIZED).await;
        expect_problem(app.delete(&format!("/tokens/{id}"), ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
    }

    async fn expired_tokens_stop_working(app) {
        let expires = app.clock.now_plus(Duration::hours(1));
        let response = app.post("/tokens", ADMIN_TOKEN, json!({ "name": "short", "role": "viewer", "expiresAt": expires })).await;
        let secret = expect_json(response, StatusCode::CREATED).await["secret"].as_str().unwrap().to_string();
        expect_json(app.get("/devices", &secret).await, StatusCode::OK).await;
        app.clock.advance(Duration::hours(2));
        expect_problem(app.get("/devices", &secret).await, StatusCode::UNAUTHORIZED).await;
        let past = app.clock.now_plus(Duration::hours(-1));
        let problem = expect_problem(
            app.post("/tokens", ADMIN_TOKEN, json!({ "name": "past", "role": "viewer", "expiresAt": past })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ).await;
        assert_eq!(error_fields(&problem), vec!["expiresAt"]);
        let problem = expect_problem(
            app.post("/tokens", ADMIN_TOKEN, json!({ "name": "x", "role": "root" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ).await;
        assert_eq!(error_fields(&problem), vec!["role"]);
    }

    async fn users_log_in_and_out(app) {
        let response = app.post("/users", ADMIN_TOKEN, json!({ "username": "ops@example.com", "password": "a long password", "role": "operator" })).await;
        let user = expect_json(response, StatusCode::CREATED).await;
        assert!(!user.to_string().contains("a long password"));
        expect_problem(
            app.post("/users", ADMIN_TOKEN, json!({ "username": "ops@example.com", "password": "another password", "role": "viewer" })).await,
            StatusCode::CONFLICT,
        ).await;
        let problem = expect_problem(
            app.post("/users", ADMIN_TOKEN, json!({ "username": "short pw", "password": "short", "role": "viewer" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ).await;
        assert_eq!(error_fields(&problem), vec!["username", "password"]);

        let bad = app.request(reqwest::Method::POST, "/auth/login", None, Some(json!({ "username": "ops@example.com", "password": "wrong" }))).await;
        expect_problem(bad, StatusCode::UNAUTHORIZED).await;
        let nobody = app.request(reqwest::Method::POST, "/auth/login", None, Some(json!({ "username": "nobody", "password": "wrong" }))).await;
        expect_problem(nobody, StatusCode::UNAUTHORIZED).await;
        let ok = app.request(reqwest::Method::POST, "/auth/login", None, Some(json!({ "username": "ops@example.com", "password": "a long password" }))).await;
        let session = expect_json(ok, StatusCode::OK).await;
        let token = session["token"].as_str().unwrap().to_string();
        let me = expect_json(app.get("/auth/me", &token).await, StatusCode::OK).await;
        assert_eq!(me["credential"], "session");
        assert_eq!(me["role"], "operator");
        assert_eq!(me["userId"], user["user"]["id"]);

        // Sessions expire with the configured lifetime.
        app.clock.advance(Duration::hours(13));
        expect_problem(app.get("/auth/me", &token).await, StatusCode::UNAUTHORIZED).await;
        app.clock.advance(Duration::hours(-13));

        let response = app.request(reqwest::Method::POST, "/auth/logout", Some(&token), None).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        expect_problem(app.get("/auth/me", &token).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn usernames_are_scoped_to_their_tenant(app) {
        let (acme_id, acme_admin) = app.create_tenant("acme").await;
        let me = expect_json(app.get("/auth/me", ADMIN_TOKEN).await, StatusCode::OK).await;
        let default_id = me["tenantId"].as_str().unwrap().to_string();
        // The same username in two tenants: another tenant's names neither conflict nor show.
        let ours = app.post("/users", ADMIN_TOKEN, json!({ "username": "ops", "password": "default password", "role": "admin" })).await;
        let ours = expect_json(ours, StatusCode::CREATED).await;
        let theirs = app.post("/users", &acme_admin, json!({ "username": "ops", "password": "acme password", "role": "viewer" })).await;
        let theirs = expect_json(theirs, StatusCode::CREATED).await;
        // Within one tenant a username stays unique.
        let again = app.post("/users", &acme_admin, json!({ "username": "ops", "password": "another password", "role": "viewer" })).await;
        expect_problem(again, StatusCode::CONFLICT).await;

        let login = |body: serde_json::Value| app.request(reqwest::Method::POST, "/auth/login", None, Some(body));
        let signed_in = [
            (json!({ "tenant": "acme", "username": "ops", "password": "acme password" }), &acme_id, &theirs),
            (json!({ "tenant": "default", "username": "ops", "password": "default password" }), &default_id, &ours),
            // No tenant named: the default tenant.
            (json!({ "username": "ops", "password": "default password" }), &default_id, &ours),
        ];
        for (body, tenant_id, user) in signed_in {
            let session = expect_json(login(body.clone()).await, StatusCode::OK).await;
            let me = expect_json(app.get("/auth/me", session["token"].as_str().unwrap()).await, StatusCode::OK).await;
            assert_eq!(me["tenantId"].as_str(), Some(tenant_id.as_str()), "{body}");
            assert_eq!(me["userId"], user["user"]["id"], "{body}");
        }

        // A wrong tenant, an unknown tenant and an unknown user read exactly like a wrong password.
        let wrong_password = expect_problem(login(json!({ "tenant": "acme", "username": "ops", "password": "wrong" })).await, StatusCode::UNAUTHORIZED).await;
        for body in [
            json!({ "tenant": "acme", "username": "ops", "password": "default password" }),
            json!({ "username": "ops", "password": "acme password" }),
            json!({ "tenant": "nowhere", "username": "ops", "password": "acme password" }),
            json!({ "tenant": "acme", "username": "nobody", "password": "acme password" }),
        ] {
            let problem = expect_problem(login(body.clone()).await, StatusCode::UNAUTHORIZED).await;
            assert_eq!(problem["detail"], wrong_password["detail"], "{body}");
            assert_eq!(problem["title"], wrong_password["title"], "{body}");
        }
        let problem = expect_problem(login(json!({ "tenant": "", "username": "ops", "password": "x" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_fields(&problem), vec!["tenant"]);
    }

    async fn deleting_a_user_ends_their_sessions(app) {
        let response = app.post("/users", ADMIN_TOKEN, json!({ "username": "temp", "password": "password123", "role": "viewer" })).await;
        let id = expect_json(response, StatusCode::CREATED).await["user"]["id"].as_str().unwrap().to_string();
        let ok = app.request(reqwest::Method::POST, "/auth/login", None, Some(json!({ "username": "temp", "password": "password123" }))).await;
        let token = expect_json(ok, StatusCode::OK).await["token"].as_str().unwrap().to_string();
        let users = expect_json(app.get("/users", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert!(!users.to_string().contains("argon2"), "password hashes must not be served");
        // Used once, so the credential cache holds the session when its user goes.
        expect_json(app.get("/auth/me", &token).await, StatusCode::OK).await;
        assert_eq!(app.delete(&format!("/users/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.get("/auth/me", &token).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn enrollment_tokens_honour_use_limits_expiry_and_revocation(app) {
        let limited = app.enrollment_token(ADMIN_TOKEN, json!({ "name": "two", "maxUses": 2 })).await;
        app.register(&limited, json!({ "serialNumber": "E-1" })).await;
        app.register(&limited, json!({ "serialNumber": "E-2" })).await;
        expect_problem(app.post("/devices/auto-register", &limited, json!({ "serialNumber": "E-3" })).await, StatusCode::UNAUTHORIZED).await;
        let list = expect_json(app.get("/enrollment-tokens", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(list["items"][0]["uses"], 2);

        // A rejected body does not use up a registration.
        let one = app.enrollment_token(ADMIN_TOKEN, json!({ "maxUses": 1 })).await;
        expect_problem(app.post("/devices/auto-register", &one, json!({})).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        app.register(&one, json!({ "serialNumber": "E-4" })).await;

        let expires = app.clock.now_plus(Duration::minutes(10));
        let expiring = app.enrollment_token(ADMIN_TOKEN, json!({ "expiresAt": expires })).await;
        app.register(&expiring, json!({ "serialNumber": "E-5" })).await;
        app.clock.advance(Duration::minutes(11));
        expect_problem(app.post("/devices/auto-register", &expiring, json!({ "serialNumber": "E-6" })).await, StatusCode::UNAUTHORIZED).await;

        let response = app.post("/enrollment-tokens", ADMIN_TOKEN, json!({})).await;
        let created = expect_json(response, StatusCode::CREATED).await;
        let secret = created["secret"].as_str().unwrap();
        let id = created["enrollmentToken"]["id"].as_str().unwrap();
        assert_eq!(app.delete(&format!("/enrollment-tokens/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        expect_problem(app.post("/devices/auto-register", secret, json!({ "serialNumber": "E-7" })).await, StatusCode::UNAUTHORIZED).await;

        // An enrollment token is good for registering and nothing else.
        let fresh = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        expect_problem(app.get("/devices", &fresh).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.post("/enrollment-tokens", ADMIN_TOKEN, json!({ "maxUses": 0 })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    async fn credentials_of_another_tenant_are_invisible(app) {
        let (_, other_admin) = app.create_tenant("other").await;
        let token = expect_json(app.post("/tokens", ADMIN_TOKEN, json!({ "name": "t", "role": "viewer" })).await, StatusCode::CREATED).await;
        let token_id = token["token"]["id"].as_str().unwrap();
        let enrollment = expect_json(app.post("/enrollment-tokens", ADMIN_TOKEN, json!({})).await, StatusCode::CREATED).await;
        let enrollment_id = enrollment["enrollmentToken"]["id"].as_str().unwrap();
        let user = expect_json(app.post("/users", ADMIN_TOKEN, json!({ "username": "u1", "password": "password123", "role": "viewer" })).await, StatusCode::CREATED).await;
        let user_id = user["user"]["id"].as_str().unwrap();

        expect_problem(app.delete(&format!("/tokens/{token_id}"), &other_admin).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.delete(&format!("/enrollment-tokens/{enrollment_id}"), &other_admin).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.delete(&format!("/users/{user_id}"), &other_admin).await, StatusCode::NOT_FOUND).await;
        for path in ["/tokens", "/enrollment-tokens", "/users"] {
            let list = expect_json(app.get(path, &other_admin).await, StatusCode::OK).await;
            let text = list.to_string();
            assert!(!text.contains(token_id) && !text.contains(enrollment_id) && !text.contains(user_id), "{path} leaked: {text}");
        }
        // Still alive for their owner.
        expect_json(app.get("/devices", token["secret"].as_str().unwrap()).await, StatusCode::OK).await;
    }

    async fn malformed_credentials_are_401(app) {
        for header in ["Basic abc", "Bearer", "Bearer    ", "nonsense", "Bearer herd_dt_unknown", "Bearer herd_et_unknown", "Bearer herd_at_unknown"] {
            let response = app.client.get(app.url("/devices")).header("authorization", header).send().await.unwrap();
            expect_problem(response, StatusCode::UNAUTHORIZED).await;
        }
        let long = format!("Bearer {}", "a".repeat(5000));
        let response = app.client.get(app.url("/devices")).header("authorization", long).send().await.unwrap();
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
    }
}

// ---- Login limits (issue 10, finding 3): bounded hashing, rates, locks. ----

/// Runs a login-limits scenario on both engines, with the limits `adjust` sets.
macro_rules! login_limit_tests {
    ($($name:ident => $scenario:ident,)*) => {
        mod login_limits_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$scenario(crate::helpers::Engine::Sqlite).await;
                }
            )*
        }
        mod login_limits_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !crate::helpers::postgres_variant_runs() {
                        return;
                    }
                    super::$scenario(crate::helpers::Engine::Postgres).await;
                }
            )*
        }
    };
}

login_limit_tests! {
    logins_beyond_the_hashing_bound_get_503_with_retry_after => hashing_bound_scenario,
    logins_beyond_the_rate_of_an_address_or_username_get_429 => rate_limit_scenario,
    repeated_failures_lock_a_user_and_the_lock_expires => lock_scenario,
}

async fn limited_app(
    engine: Engine,
    adjust: impl FnOnce(&mut herd::config::LoginLimitSettings) + Send + 'static,
) -> TestApp {
    let options = SpawnOptions {
        adjust: Box::new(move |settings: &mut herd::config::Settings| adjust(&mut settings.login)),
        ..SpawnOptions::default()
    };
    spawn_app_with(engine, options).await
}

async fn login(app: &TestApp, username: &str, password: &str) -> reqwest::Response {
    app.request(reqwest::Method::POST, "/auth/login", None, Some(json!({ "username": username, "password": password })))
        .await
}

/// A refusal with its `Retry-After` (whole seconds, at least one); answers the seconds.
async fn expect_retry_after(response: reqwest::Response, status: StatusCode) -> u64 {
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let problem = expect_problem(response, status).await;
    let seconds: u64 = retry_after.unwrap_or_else(|| panic!("no Retry-After on {problem}")).parse().unwrap();
    assert!(seconds >= 1, "{problem}");
    seconds
}

async fn hashing_bound_scenario(engine: Engine) {
    let app = limited_app(engine, |login| {
        login.hash_concurrency = 1;
        login.hash_queue = 0;
    })
    .await;
    // The only hashing turn is taken and nobody may wait: a login is turned away at once.
    let slot = app.state.login_limits.try_hash_slot().expect("the one turn is free");
    expect_retry_after(login(&app, "nobody", "guess").await, StatusCode::SERVICE_UNAVAILABLE).await;
    drop(slot);
    expect_problem(login(&app, "nobody", "guess").await, StatusCode::UNAUTHORIZED).await;

    // Many at once for unknown users: each is checked (401) or turned away (503 with
    // Retry-After); none waits without bound, none fails otherwise.
    let attempts = (0..24).map(|i| {
        let app = &app;
        async move { login(app, &format!("ghost-{i}"), "guess").await }
    });
    let mut refused = 0;
    for response in futures::future::join_all(attempts).await {
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                expect_retry_after(response, StatusCode::SERVICE_UNAVAILABLE).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused < 24, "the free turn must serve somebody");
}

async fn rate_limit_scenario(engine: Engine) {
    let app = limited_app(engine, |login| {
        login.attempts_per_address_per_minute = 4;
        login.attempts_per_username_per_minute = 2;
    })
    .await;
    // Per username: the third attempt within the minute is refused, whoever the username is.
    expect_problem(login(&app, "target", "one").await, StatusCode::UNAUTHORIZED).await;
    expect_problem(login(&app, "target", "two").await, StatusCode::UNAUTHORIZED).await;
    let seconds = expect_retry_after(login(&app, "target", "three").await, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(seconds <= 60);
    // Per address: four attempts a minute from 127.0.0.1, whatever the usernames.
    expect_problem(login(&app, "other", "x").await, StatusCode::UNAUTHORIZED).await;
    expect_retry_after(login(&app, "third", "x").await, StatusCode::TOO_MANY_REQUESTS).await;
    // The windows end.
    app.clock.advance(Duration::seconds(61));
    expect_problem(login(&app, "target", "four").await, StatusCode::UNAUTHORIZED).await;
}

async fn lock_scenario(engine: Engine) {
    let app = limited_app(engine, |login| {
        login.lock_after = 3;
        login.lock_window = std::time::Duration::from_secs(15 * 60);
        login.lock_duration = std::time::Duration::from_secs(15 * 60);
    })
    .await;
    let response = app
        .post("/users", ADMIN_TOKEN, json!({ "username": "locky", "password": "the right one", "role": "viewer" }))
        .await;
    let user_id = expect_json(response, StatusCode::CREATED).await["user"]["id"].as_str().unwrap().to_string();

    // A success ends a run of failures.
    expect_problem(login(&app, "locky", "wrong").await, StatusCode::UNAUTHORIZED).await;
    expect_problem(login(&app, "locky", "wrong").await, StatusCode::UNAUTHORIZED).await;
    expect_json(login(&app, "locky", "the right one").await, StatusCode::OK).await;
    for _ in 0..3 {
        expect_problem(login(&app, "locky", "wrong").await, StatusCode::UNAUTHORIZED).await;
    }
    // Locked: even the right password is refused, with the time left.
    let seconds = expect_retry_after(login(&app, "locky", "the right one").await, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(seconds > 14 * 60 && seconds <= 15 * 60, "{seconds}");
    let events = expect_json(app.get("/events?type=user.locked", ADMIN_TOKEN).await, StatusCode::OK).await;
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["data"]["userId"], user_id.as_str());
    assert_eq!(items[0]["data"]["username"], "locky");
    let until = chrono::DateTime::parse_from_rfc3339(items[0]["data"]["until"].as_str().unwrap()).unwrap();
    assert_eq!(until.with_timezone(&chrono::Utc), app.clock.now_plus(Duration::minutes(15)));

    // An unknown username locks the same way (a lock tells nothing about who exists), without an event.
    for _ in 0..3 {
        expect_problem(login(&app, "nobody-here", "wrong").await, StatusCode::UNAUTHORIZED).await;
    }
    expect_retry_after(login(&app, "nobody-here", "wrong").await, StatusCode::TOO_MANY_REQUESTS).await;
    let events = expect_json(app.get("/events?type=user.locked", ADMIN_TOKEN).await, StatusCode::OK).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);

    // The lock expires.
    app.clock.advance(Duration::minutes(16));
    expect_json(login(&app, "locky", "the right one").await, StatusCode::OK).await;
}

/// With two instances on one PostgreSQL, a token revoked through one is refused by the other,
/// whose credential cache held it, once `NOTIFY herd_cache` arrives (well under the 5 s allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_another_instance() {
    if !crate::helpers::postgres_variant_runs() {
        return;
    }
    let first = crate::helpers::spawn_app(Engine::Postgres).await;
    let second = first.second_instance().await;
    let response = first.post("/tokens", ADMIN_TOKEN, json!({ "name": "shared", "role": "viewer" })).await;
    let created = expect_json(response, StatusCode::CREATED).await;
    let (secret, id) = (created["secret"].as_str().unwrap(), created["token"]["id"].as_str().unwrap());
    // Once the second instance follows the others (a device's heartbeat is answered from its
    // cache), the token's lookup there is kept in the cache too.
    let enroll = first.enrollment_token(ADMIN_TOKEN, json!({})).await;
    let (_, device_token) = first.register(&enroll, json!({ "serialNumber": "FOLLOW-1" })).await;
    expect_json(second.post("/devices/connect", &device_token, json!({})).await, StatusCode::OK).await;
    crate::devices::heartbeat_from_the_cache(&second, &device_token).await;
    expect_json(second.get("/auth/me", secret).await, StatusCode::OK).await;
    expect_json(second.get("/auth/me", secret).await, StatusCode::OK).await;
    assert_eq!(first.delete(&format!("/tokens/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
    expect_problem(first.get("/auth/me", secret).await, StatusCode::UNAUTHORIZED).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = second.get("/auth/me", secret).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the second instance still answers {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
