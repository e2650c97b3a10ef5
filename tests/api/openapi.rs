//! The OpenAPI document as client generators read it (issue 15): properties that, when lost,
//! make generated clients worse. `.ci/openapi` runs the generators and Redocly themselves; these
//! checks keep the document honest between CI runs. The document does not depend on the storage
//! engine, so one engine is enough.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{expect_json, spawn_app_with, Engine, SpawnOptions};

async fn document() -> Value {
    let app = spawn_app_with(Engine::Sqlite, SpawnOptions::default()).await;
    expect_json(app.request(Method::GET, "/openapi.json", None, None).await, StatusCode::OK).await
}

/// `(path, method, operation)` for every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    found
}

fn error_statuses(operation: &Value) -> BTreeSet<String> {
    operation["responses"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|s| s.starts_with('4') || s.starts_with('5'))
        .cloned()
        .collect()
}

fn security_schemes(operation: &Value) -> BTreeSet<String> {
    operation["security"].as_array().unwrap().iter().flat_map(|r| r.as_object().unwrap().keys().cloned()).collect()
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                refs.push(reference.clone());
            }
            object.values().for_each(|child| collect_refs(child, refs));
        }
        Value::Array(items) => items.iter().for_each(|child| collect_refs(child, refs)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_operation_ids_are_unique_camel_case_verbs() {
    let doc = document().await;
    let mut seen = BTreeMap::new();
    for (path, method, operation) in operations(&doc) {
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        let camel =
            id.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && id.chars().all(|c| c.is_ascii_alphanumeric());
        assert!(camel, "{method} {path}: operationId {id} is not camelCase");
        assert!(
            id.chars().any(|c| c.is_ascii_uppercase()),
            "{method} {path}: {id} is a bare verb; say what it acts on"
        );
        if let Some(other) = seen.insert(id.to_string(), format!("{method} {path}")) {
            panic!("operationId {id} is used by {other} and {method} {path}");
        }
    }
    for (id, route) in [
        ("listDevices", "get /devices"),
        ("registerDevice", "post /devices/auto-register"),
        ("getDevice", "get /devices/{id}"),
        ("connectDevice", "post /devices/connect"),
        ("reportMetrics", "post /devices/metrics"),
    ] {
        assert_eq!(seen.get(id).map(String::as_str), Some(route), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_errors_have_problem_bodies_and_only_the_statuses_an_operation_can_answer() {
    let doc = document().await;
    // Answers that the rules below would not expect, each said by its handler's annotation: a
    // device without a certificate, a signed download link that expired.
    let explained = [("get /devices/self/certificate", "404"), ("get /downloads/packages/{id}", "403")];
    for (path, method, operation) in operations(&doc) {
        let route = format!("{method} {path}");
        let mut statuses = error_statuses(&operation);
        for status in &statuses {
            let schema = &operation["responses"][status]["content"]["application/problem+json"]["schema"];
            assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{route} {status} has no problem+json body");
        }
        statuses.retain(|status| !explained.contains(&(route.as_str(), status.as_str())));
        if operation.get("requestBody").is_none() {
            for status in ["400", "413", "415"] {
                assert!(!statuses.contains(status), "{route} takes no body but lists {status}");
            }
        }
        if !path.contains('{') {
            assert!(!statuses.contains("404"), "{route} looks up no id but lists 404");
        }
        if security_schemes(&operation).is_empty() {
            assert!(!statuses.contains("401") && !statuses.contains("403"), "{route} is public but lists 401/403");
        }
    }
    let paths = &doc["paths"];
    assert!(error_statuses(&paths["/healthz"]["get"]).is_empty(), "/healthz answers no error");
    let ready = error_statuses(&paths["/readyz"]["get"]);
    assert!(!ready.contains("401") && !ready.contains("403"), "{ready:?}");
    assert!(ready.contains("503"), "/readyz answers 503 when the database does not");
    assert!(error_statuses(&paths["/devices/{id}"]["get"]).contains("404"));
    assert!(error_statuses(&paths["/certificates/{id}/revoke"]["post"]).contains("409"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_names_the_credential_each_operation_takes() {
    let doc = document().await;
    let schemes: BTreeSet<String> = doc["components"]["securitySchemes"].as_object().unwrap().keys().cloned().collect();
    let expected = ["apiToken", "sessionToken", "deviceToken", "enrollmentToken", "platformAdminToken", "metricsToken"];
    assert_eq!(schemes, expected.iter().map(|s| s.to_string()).collect());
    let mut used = BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        assert!(operation["security"].is_array(), "{method} {path} says nothing about credentials");
        used.extend(security_schemes(&operation));
    }
    assert_eq!(used, schemes, "every scheme is used");
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/auth/login", "post"),
        ("/ca/certificate", "get"),
        ("/ca/crl", "get"),
    ] {
        assert_eq!(doc["paths"][path][method]["security"], serde_json::json!([]), "{method} {path} is public");
    }
    let security = |path: &str, method: &str| security_schemes(&doc["paths"][path][method]);
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(security("/devices", "get"), set(&["apiToken", "sessionToken"]));
    assert_eq!(security("/devices/connect", "post"), set(&["deviceToken"]));
    assert_eq!(security("/devices/auto-register", "post"), set(&["enrollmentToken"]));
    assert_eq!(security("/tenants", "post"), set(&["platformAdminToken"]));
    assert!(!doc["servers"].as_array().unwrap().is_empty(), "servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_refs_resolve_and_every_component_is_used() {
    let doc = document().await;
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for reference in &refs {
        let name =
            reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        assert!(schemas.contains_key(name), "$ref {reference} resolves to nothing");
    }
    for name in schemas.keys() {
        // A schema's own $refs to itself would not count as a use; herd has no recursive schemas.
        assert!(refs.contains(&format!("#/components/schemas/{name}")), "component {name} is never referenced");
    }
    // Lists point at their item's schema instead of copying it.
    assert_eq!(
        schemas["ListResponse_DeviceDto"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/DeviceDto"
    );
    // Ids are UUIDs, enums carry the wire texts, metrics their bounds, DER bytes are binary.
    assert_eq!(schemas["DeviceDto"]["properties"]["id"]["format"], "uuid");
    assert_eq!(schemas["DeviceStatus"]["enum"], serde_json::json!(["online", "offline"]));
    assert_eq!(schemas["CertificateDto"]["properties"]["keySource"]["$ref"], "#/components/schemas/KeySource");
    assert_eq!(schemas["MetricsBody"]["properties"]["cpu"]["maximum"], 100.0);
    let der = &doc["paths"]["/ca/crl"]["get"]["responses"]["200"]["content"]["application/pkix-crl"]["schema"];
    assert_eq!(der, &serde_json::json!({ "type": "string", "format": "binary" }));
    let stream = &doc["paths"]["/events/stream"]["get"]["responses"]["200"]["content"];
    assert!(stream.get("text/event-stream").is_some() && stream.as_object().unwrap().len() == 1, "{stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_event_payloads_cover_every_event_type() {
    let doc = document().await;
    let schemas = &doc["components"]["schemas"];
    let event = &schemas["EventDto"];
    assert_eq!(event["discriminator"]["propertyName"], "type");
    let mapping = event["discriminator"]["mapping"].as_object().unwrap();
    let documented: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
    let emitted: BTreeSet<&str> = herd_domain::event::KNOWN_TYPES.iter().copied().collect();
    assert_eq!(documented, emitted, "EventDto's oneOf must cover exactly the event types herd emits");
    let choices: BTreeSet<&str> =
        event["oneOf"].as_array().unwrap().iter().map(|c| c["$ref"].as_str().unwrap()).collect();
    for (event_type, target) in mapping {
        assert!(choices.contains(target.as_str().unwrap()), "{event_type}: {target} is not in oneOf");
        let name = target.as_str().unwrap().trim_start_matches("#/components/schemas/");
        let schema = &schemas[name];
        assert_eq!(schema["properties"]["type"]["const"], event_type.as_str(), "{name}");
        let payload =
            schema["properties"]["data"]["$ref"].as_str().unwrap().trim_start_matches("#/components/schemas/");
        assert_eq!(schemas[payload]["type"], "object", "{event_type}: payload {payload}");
    }
}
