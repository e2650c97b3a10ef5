//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa). Each feature's
//! router contributes its paths; [`finish`] adds what the annotations cannot say well: one
//! security scheme per kind of credential, the problem+json error responses each operation can
//! actually answer, `security: []` on public routes, `servers`, list item `$ref`s, binary bodies,
//! `format: uuid` on ids and the typed event payloads. The API test `tests/api/openapi.rs` and
//! `.ci/openapi` (Redocly lint, generated Python and TypeScript clients) hold it to that.

use serde_json::{json, Map, Value};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::OpenApi;

use crate::events::schema::{event_schema_name, payload_schemas, EVENT_PAYLOADS};
use crate::http::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "herd", description = "Self-hosted, multi-tenant device provisioning and fleet management."),
    servers((url = "/", description = "The server that serves this document")),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "devices", description = "The device registry"),
        (name = "auth", description = "Users, sessions, API and enrollment tokens"),
        (name = "tenants", description = "Tenants (platform admin)"),
        (name = "health", description = "Probes and metrics"),
        (name = "presence", description = "Online/offline status"),
        (name = "events", description = "The event history, stream and webhooks"),
        (name = "commands", description = "Remote commands: queued, delivered by long poll, acknowledged and reported"),
    )
)]
struct BaseDoc;

/// The document before the features' routers add their paths.
pub(crate) fn base_document() -> OpenApiDoc {
    BaseDoc::openapi()
}

/// The kinds of credential (DESIGN.md "Who may do what"), each its own scheme so that the
/// document says which one an operation takes. All are `Authorization: Bearer …`; the token's
/// prefix names its kind.
const SECURITY_SCHEMES: &[(&str, &str)] = &[
    ("apiToken", "A tenant member's API token (`herd_at_…`, from `POST /tokens`; the role decides what it may do)"),
    ("sessionToken", "A login session of a tenant member (`herd_at_…`, from `POST /auth/login`)"),
    ("deviceToken", "A device's own token (`herd_dt_…`, from registration)"),
    ("enrollmentToken", "An enrollment token (`herd_et_…`, from `POST /enrollment-tokens`) that devices register with"),
    ("platformAdminToken", "A platform admin's member token (the bootstrap token from the first start)"),
    ("metricsToken", "`HERD_METRICS_TOKEN`, needed for `/metrics` only when it is set"),
];

/// Error statuses and what they mean. Which of them an operation lists is decided by
/// [`error_statuses`]; an annotation may list others (409, 429) with its own description.
const ERRORS: &[(&str, &str)] = &[
    ("400", "The body is not valid JSON"),
    ("401", "Missing, invalid, expired or revoked credential"),
    ("403", "The credential's role or kind does not allow this"),
    ("404", "Not found, or not in the caller's tenant"),
    ("409", "Conflicts with an existing resource"),
    ("413", "The body is too large"),
    ("415", "The body is not JSON"),
    ("422", "The request is well-formed but invalid; `errors` lists the fields"),
    ("429", "Too many requests; `Retry-After` says when to retry"),
    ("500", "Internal error (logged)"),
    ("503", "The database does not answer, or the request timed out"),
];

/// Operations outside the features' annotations: `(method, path, operationId)`.
const EXTRA_OPERATION_IDS: &[(&str, &str, &str)] =
    &[("get", "/metrics", "getPrometheusMetrics"), ("get", "/openapi.json", "getOpenApiDocument")];

/// Adds the shared parts to the merged document, and answers it as JSON (what is served).
pub(crate) fn finish(document: OpenApiDoc) -> Value {
    // utoipa's document types are plain data with string keys; serializing them cannot fail.
    let mut document = serde_json::to_value(&document).unwrap_or_default();
    add_openapi_json_path(&mut document);
    add_security_schemes(&mut document);
    for (path, method, operation) in operations_mut(&mut document) {
        finish_operation(&path, &method, operation);
    }
    if let Some(schemas) = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        reference_list_items(schemas);
        add_event_schemas(schemas);
    }
    mark_ids_as_uuids(&mut document);
    document
}

fn add_openapi_json_path(document: &mut Value) {
    document["paths"]["/openapi.json"] = json!({
        "get": {
            "tags": ["health"],
            "summary": "The OpenAPI 3.1 document of this server",
            "responses": { "200": {
                "description": "This document",
                "content": { "application/json": { "schema": { "type": "object" } } },
            } },
        }
    });
}

fn add_security_schemes(document: &mut Value) {
    let mut schemes = Map::new();
    for (name, description) in SECURITY_SCHEMES {
        schemes.insert((*name).into(), json!({ "type": "http", "scheme": "bearer", "description": description }));
    }
    document["components"]["securitySchemes"] = Value::Object(schemes);
}

/// Every operation with its path and method.
fn operations_mut(document: &mut Value) -> Vec<(String, String, &mut Value)> {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else { return Vec::new() };
    let mut found = Vec::new();
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation));
            }
        }
    }
    found
}

fn finish_operation(path: &str, method: &str, operation: &mut Value) {
    if let Some((_, _, id)) = EXTRA_OPERATION_IDS.iter().find(|(m, p, _)| *m == method && *p == path) {
        operation["operationId"] = json!(id);
    }
    if path == "/metrics" {
        // Public unless `HERD_METRICS_TOKEN` is set: `{}` is "no credential".
        operation["security"] = json!([{}, { "metricsToken": [] }]);
    }
    if operation.get("security").is_none() {
        operation["security"] = json!([]);
    }
    unwrap_optional_body(operation);
    describe_binary_bodies(operation);
    if path == "/events/stream" {
        describe_event_stream(operation);
    }

    let statuses = error_statuses(path, operation);
    let responses = operation["responses"].as_object_mut();
    let Some(responses) = responses else { return };
    for status in statuses {
        responses.entry(status).or_insert_with(|| json!({}));
    }
    for (status, response) in responses.iter_mut() {
        if !(status.starts_with('4') || status.starts_with('5')) {
            continue;
        }
        let described = response.get("description").and_then(Value::as_str).is_some_and(|d| !d.is_empty());
        if !described {
            let default =
                ERRORS.iter().find(|(s, _)| *s == status.as_str()).map_or("Error", |(_, description)| description);
            response["description"] = json!(default);
        }
        response["content"] = json!({
            "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } }
        });
    }
}

/// The error statuses an operation can answer, from what it takes: a credential (401, and 403
/// for a member's role), a body (400, 413, 415, 422), query parameters (422), an id in the path
/// (404, also for an id that does not parse). Every operation but the liveness probe can fail
/// inside (500) or time out (503).
fn error_statuses(path: &str, operation: &Value) -> Vec<String> {
    if path == "/healthz" || path == "/openapi.json" {
        return Vec::new();
    }
    let mut statuses = vec!["500", "503"];
    let schemes: Vec<&str> = operation["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().map(String::as_str))
        .collect();
    if !schemes.is_empty() {
        statuses.push("401");
    }
    if schemes.iter().any(|scheme| ["apiToken", "sessionToken", "platformAdminToken"].contains(scheme)) {
        statuses.push("403");
    }
    if operation.get("requestBody").is_some() {
        statuses.extend(["400", "413", "415", "422"]);
    }
    let parameters: Vec<&Value> = operation["parameters"].as_array().into_iter().flatten().collect();
    if parameters.iter().any(|p| p["in"] == "query") {
        statuses.push("422");
    }
    if path.contains('{') {
        statuses.push("404");
    }
    statuses.into_iter().map(String::from).collect()
}

/// An optional JSON body is `required: false` with the plain schema; utoipa writes it as
/// `oneOf: [null, X]`, which generated clients send as a literal `null` or trip over.
fn unwrap_optional_body(operation: &mut Value) {
    let Some(schema) = operation.pointer_mut("/requestBody/content/application~1json/schema") else { return };
    let Some(choices) = schema.get("oneOf").and_then(Value::as_array) else { return };
    let not_null: Vec<&Value> = choices.iter().filter(|choice| choice["type"] != "null").collect();
    if choices.len() == 2 && not_null.len() == 1 {
        *schema = not_null[0].clone();
        operation["requestBody"]["required"] = json!(false);
    }
}

/// `Vec<u8>` bodies (DER, PNG, packages) are bytes, not arrays of integers.
fn describe_binary_bodies(operation: &mut Value) {
    let mut contents: Vec<&mut Value> = Vec::new();
    let Some(object) = operation.as_object_mut() else { return };
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "requestBody" => contents.extend(value.get_mut("content")),
            "responses" => contents.extend(
                value.as_object_mut().into_iter().flat_map(|r| r.values_mut()).filter_map(|r| r.get_mut("content")),
            ),
            _ => {}
        }
    }
    for content in contents {
        for media in content.as_object_mut().into_iter().flat_map(|c| c.values_mut()) {
            let Some(schema) = media.get_mut("schema") else { continue };
            if schema["type"] == "array" && schema["items"]["type"] == "integer" {
                *schema = json!({ "type": "string", "format": "binary" });
            }
        }
    }
}

fn describe_event_stream(operation: &mut Value) {
    operation["description"] = json!(
        "A Server-Sent Events stream that does not end: each message's `data` is one `EventDto` as JSON, \
         its `id` the event's `seq` (send it back as `Last-Event-ID` to resume). Read it with an SSE \
         client, not a generated JSON client, which would wait for the end of the body."
    );
    operation["responses"]["200"] = json!({
        "description": "The stream (`text/event-stream`), open until the client closes it or the server stops",
        "content": { "text/event-stream": { "schema": {
            "type": "string",
            "description": "`id: <seq>`, `event: <type>`, `data: <EventDto as JSON>` messages, and `:` keep-alive comments",
        } } },
    });
}

/// utoipa writes a generic `ListResponse<T>` with `T`'s schema copied into it; generated clients
/// then have a class per list instead of one per item. Point at the item's own schema instead.
fn reference_list_items(schemas: &mut Map<String, Value>) {
    let lists: Vec<String> = schemas.keys().filter(|name| name.starts_with("ListResponse_")).cloned().collect();
    for list in lists {
        let item = list.trim_start_matches("ListResponse_").to_string();
        let Some(inline) = schemas.get(&list).and_then(|s| s.pointer("/properties/items/items")).cloned() else {
            continue;
        };
        if inline.get("$ref").is_some() {
            continue;
        }
        schemas.entry(item.clone()).or_insert(inline);
        schemas[&list]["properties"]["items"]["items"] = json!({ "$ref": format!("#/components/schemas/{item}") });
    }
}

/// `EventDto` as a `oneOf` of one schema per event type, discriminated by `type`, each with
/// its typed `data`.
fn add_event_schemas(schemas: &mut Map<String, Value>) {
    let envelope = schemas.get("EventDto").cloned().unwrap_or_else(|| json!({}));
    let mut mapping = Map::new();
    let mut choices = Vec::new();
    for (event_type, payload) in EVENT_PAYLOADS {
        let name = event_schema_name(event_type);
        let mut schema = envelope.clone();
        schema["description"] = json!(format!("A `{event_type}` event."));
        schema["properties"]["type"] = json!({ "type": "string", "const": event_type });
        schema["properties"]["data"] = json!({ "$ref": format!("#/components/schemas/{payload}") });
        let reference = format!("#/components/schemas/{name}");
        mapping.insert((*event_type).to_string(), json!(reference.clone()));
        choices.push(json!({ "$ref": reference }));
        schemas.insert(name, schema);
    }
    schemas.extend(payload_schemas());
    schemas.insert(
        "EventDto".into(),
        json!({
            "description": envelope.get("description").cloned().unwrap_or(Value::Null),
            "oneOf": choices,
            "discriminator": { "propertyName": "type", "mapping": mapping },
        }),
    );
}

/// herd's ids are UUIDs (herd-domain `ids`): a string property or path parameter named `id` or
/// `…Id` is one, except a device's `androidId`, which is the device's own identifier.
fn mark_ids_as_uuids(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Object(properties)) = object.get_mut("properties") {
                for (name, property) in properties.iter_mut() {
                    mark_if_id(name, property);
                }
            }
            if object.get("in").and_then(Value::as_str) == Some("path") {
                if let Some(name) = object.get("name").and_then(Value::as_str).map(str::to_string) {
                    if let Some(schema) = object.get_mut("schema") {
                        mark_if_id(&name, schema);
                    }
                }
            }
            for child in object.values_mut() {
                mark_ids_as_uuids(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark_ids_as_uuids),
        _ => {}
    }
}

fn mark_if_id(name: &str, schema: &mut Value) {
    let is_id = name == "id" || (name.ends_with("Id") && name != "androidId");
    let is_string = schema["type"] == "string" || schema["type"] == json!(["string", "null"]);
    if is_id && is_string && schema.get("format").is_none() {
        schema["format"] = json!("uuid");
    }
}
