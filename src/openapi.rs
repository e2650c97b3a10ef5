//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa). Each feature's
//! router contributes its paths; [`finish`] adds what every operation shares: the bearer
//! scheme and the problem+json error responses.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, PathItem, Ref, ResponseBuilder};
use utoipa::OpenApi;

use crate::http::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "herd", description = "Self-hosted, multi-tenant device provisioning and fleet management."),
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

const ERRORS: &[(&str, &str)] = &[
    ("400", "The body is not valid JSON"),
    ("401", "Missing, invalid, expired or revoked credential"),
    ("403", "The credential's role or kind does not allow this"),
    ("404", "Not found, or not in the caller's tenant"),
    ("409", "Conflicts with an existing resource"),
    ("413", "The body is too large"),
    ("415", "The body is not JSON"),
    ("422", "The request is well-formed but invalid; `errors` lists the fields"),
    ("500", "Internal error (logged)"),
    ("503", "The database does not answer, or the request timed out"),
];

/// Adds the shared parts to the merged document.
pub(crate) fn finish(mut document: OpenApiDoc) -> OpenApiDoc {
    let components = document.components.get_or_insert_with(Default::default);
    components
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));

    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            for (status, description) in ERRORS {
                if operation.responses.responses.contains_key(*status) {
                    continue;
                }
                let response = ResponseBuilder::new()
                    .description(*description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                    )
                    .build();
                operation.responses.responses.insert((*status).to_string(), response.into());
            }
        }
    }

    let openapi_json = ResponseBuilder::new()
        .description("This document")
        .content("application/json", ContentBuilder::new().build())
        .build();
    let mut operation = Operation::new();
    operation.summary = Some("The OpenAPI 3.1 document of this server".into());
    operation.tags = Some(vec!["health".into()]);
    operation.responses.responses.insert("200".into(), openapi_json.into());
    let item = PathItem::new(utoipa::openapi::HttpMethod::Get, operation);
    document.paths.paths.insert("/openapi.json".into(), item);
    document
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}
