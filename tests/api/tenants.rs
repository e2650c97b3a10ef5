//! Tenants and the first-start bootstrap.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{engine_tests, expect_json, expect_problem, spawn_app_with, Engine, SpawnOptions, ADMIN_TOKEN};

engine_tests! {
    async fn bootstrap_token_is_platform_admin_and_default_tenant_admin(app) {
        let me = expect_json(app.get("/auth/me", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(me["role"], "admin");
        assert_eq!(me["platformAdmin"], true);
        let tenants = expect_json(app.get("/tenants", ADMIN_TOKEN).await, StatusCode::OK).await;
        let names: Vec<&str> = tenants["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["default"]);
        assert_eq!(me["tenantId"], tenants["items"][0]["id"]);
    }

    async fn platform_admin_creates_tenants_with_an_admin_token(app) {
        let response = app.post("/tenants", ADMIN_TOKEN, json!({ "name": "acme" })).await;
        let body = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(body["tenant"]["name"], "acme");
        let token = body["adminToken"].as_str().unwrap();
        let me = expect_json(app.get("/auth/me", token).await, StatusCode::OK).await;
        assert_eq!(me["role"], "admin");
        assert_eq!(me["platformAdmin"], false);
        assert_eq!(me["tenantId"], body["tenant"]["id"]);

        // Duplicate names conflict; a tenant admin is not a platform admin.
        expect_problem(app.post("/tenants", ADMIN_TOKEN, json!({ "name": "acme" })).await, StatusCode::CONFLICT).await;
        expect_problem(app.post("/tenants", token, json!({ "name": "other" })).await, StatusCode::FORBIDDEN).await;
        expect_problem(app.get("/tenants", token).await, StatusCode::FORBIDDEN).await;
        let response = app.request(reqwest::Method::POST, "/tenants", None, Some(json!({ "name": "x" }))).await;
        assert!(response.headers().contains_key("www-authenticate"));
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
    }

    async fn tenant_bodies_are_validated(app) {
        let problem = expect_problem(app.post("/tenants", ADMIN_TOKEN, json!({ "name": "" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(crate::helpers::error_fields(&problem), vec!["name"]);
        expect_problem(app.post("/tenants", ADMIN_TOKEN, json!({ "name": "x".repeat(65) })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        expect_problem(app.post("/tenants", ADMIN_TOKEN, json!({ "nome": "x" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let tenants = expect_json(app.get("/tenants", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(tenants["items"].as_array().unwrap().len(), 1, "nothing was created");
    }
}

#[tokio::test]
async fn without_a_bootstrap_token_a_random_one_is_written_0600() {
    let app = spawn_app_with(Engine::Sqlite, SpawnOptions { bootstrap_token: None, ..Default::default() }).await;
    let path = app.data_dir().join("initial-admin-token");
    let token = std::fs::read_to_string(&path).expect("token file").trim().to_string();
    assert!(token.starts_with("herd_at_"), "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let me = expect_json(app.get("/auth/me", &token).await, StatusCode::OK).await;
    assert_eq!(me["platformAdmin"], true);
    // A second start keeps the same credentials and does not bootstrap again.
    let app = app.restart().await;
    expect_json(app.get("/auth/me", &token).await, StatusCode::OK).await;
    let tenants = expect_json(app.get("/tenants", &token).await, StatusCode::OK).await;
    assert_eq!(tenants["items"].as_array().unwrap().len(), 1);
}
