//! The HTTP edge: probes, metrics, OpenAPI, unknown routes, request ids.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{engine_tests, expect_json, expect_problem, spawn_app_with, Engine, SpawnOptions, ADMIN_TOKEN};

engine_tests! {
    async fn probes_need_no_credential(app) {
        let health = expect_json(app.request(Method::GET, "/healthz", None, None).await, StatusCode::OK).await;
        assert_eq!(health["status"], "ok");
        expect_json(app.request(Method::GET, "/readyz", None, None).await, StatusCode::OK).await;
    }

    async fn metrics_count_requests_and_devices(app) {
        let enroll = app.enrollment_token(ADMIN_TOKEN, json!({})).await;
        let (_, token) = app.register(&enroll, json!({ "serialNumber": "M-1" })).await;
        app.register(&enroll, json!({ "serialNumber": "M-2" })).await;
        app.post("/devices/connect", &token, json!({})).await;
        let response = app.request(Method::GET, "/metrics", None, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        assert!(text.contains(r#"herd_http_requests_total{method="POST",route="/devices/auto-register",status="201"} 2"#), "{text}");
        assert!(text.contains(r#"herd_devices{status="online"} 1"#), "{text}");
        assert!(text.contains(r#"herd_devices{status="offline"} 1"#), "{text}");
        assert!(text.contains("herd_http_request_duration_seconds_bucket"), "{text}");
    }

    async fn openapi_documents_every_route(app) {
        let doc = expect_json(app.request(Method::GET, "/openapi.json", None, None).await, StatusCode::OK).await;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/devices/auto-register", "post"), ("/devices", "post"), ("/devices", "get"), ("/devices/connect", "post"),
            ("/devices/{id}", "get"), ("/devices/{id}", "patch"), ("/devices/{id}", "delete"), ("/devices/self", "get"),
            ("/tenants", "post"), ("/tenants", "get"), ("/auth/login", "post"), ("/auth/logout", "post"), ("/auth/me", "get"),
            ("/tokens", "post"), ("/tokens", "get"), ("/tokens/{id}", "delete"),
            ("/enrollment-tokens", "post"), ("/enrollment-tokens", "get"), ("/enrollment-tokens/{id}", "delete"),
            ("/users", "post"), ("/users", "get"), ("/users/{id}", "delete"),
            ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/openapi.json", "get"),
        ] {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
        }
        let error = &paths["/devices"]["post"]["responses"]["422"]["content"]["application/problem+json"];
        assert!(error.is_object(), "errors are documented as problem+json");
        for schema in ["DeviceDto", "AutoRegisterDto", "CreateDeviceDto", "ConnectDeviceDto", "Problem"] {
            assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema} missing");
        }
    }

    async fn unknown_routes_and_methods_are_problems(app) {
        expect_problem(app.get("/nope", ADMIN_TOKEN).await, StatusCode::NOT_FOUND).await;
        expect_problem(app.request(Method::PUT, "/devices", Some(ADMIN_TOKEN), None).await, StatusCode::METHOD_NOT_ALLOWED).await;
        let response = app.get("/devices", ADMIN_TOKEN).await;
        assert!(response.headers().contains_key("x-request-id"), "every response carries a request id");
    }
}

const SCRAPE_TOKEN: &str = "scrape-token-for-tests-0123";

/// With `HERD_METRICS_TOKEN` set, `/metrics` answers only the scrape token (not even a tenant
/// admin's token, since the figures cover every tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_is_required_when_configured() {
    let options = SpawnOptions {
        adjust: Box::new(|settings| settings.metrics_token = Some(SCRAPE_TOKEN.into())),
        ..Default::default()
    };
    let app = spawn_app_with(Engine::Sqlite, options).await;
    for token in [None, Some(ADMIN_TOKEN), Some("scrape-token-for-tests-012"), Some("scrape-token-for-tests-01234")] {
        let response = app.request(Method::GET, "/metrics", token, None).await;
        assert!(response.headers().contains_key("www-authenticate"), "{token:?}");
        let problem = expect_problem(response, StatusCode::UNAUTHORIZED).await;
        assert!(!problem.to_string().contains("herd_devices"), "{problem}");
    }
    let response = app.request(Method::GET, "/metrics", Some(SCRAPE_TOKEN), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("herd_devices"));
}

/// Without `HERD_METRICS_TOKEN`, `/metrics` stays public, as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_public_without_a_token() {
    let app = spawn_app_with(Engine::Sqlite, SpawnOptions::default()).await;
    assert!(app.settings.metrics_token.is_none());
    let response = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("herd_devices"));
}
