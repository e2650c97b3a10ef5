//! Whether the server under test has an endpoint yet. herd grows feature by feature; a phase whose
//! route answers 404 or 405 is reported as `n/a (not in this build)`, never measured or faked.

use crate::http::StatusCode;

/// Either the thing a probe produced, or the route the server lacks.
#[derive(Debug)]
pub enum Probe<T> {
    /// The endpoint exists.
    Available(T),
    /// The endpoint is missing; the text names it (e.g. `POST /devices/metrics`).
    Missing(String),
}

/// 404 and 405 mean "no such route" on an axum router (405 when another method has the path).
pub fn is_missing_route(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED
}
