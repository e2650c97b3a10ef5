//! The CLI's HTTP side: one request to herd's public API, a problem+json answer turned into an
//! error a person can read. It speaks HTTP to any instance and never opens a database.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A failed call: the server's problem+json answer, or no answer at all.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The server answered with an error status.
    Problem { status: StatusCode, title: Option<String>, detail: Option<String>, fields: Vec<(String, String)> },
    /// The request did not get an answer (refused connection, timeout, bad URL).
    Transport(String),
    /// The answer was not what the API documents (e.g. not JSON).
    Unexpected(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Problem { status, title, detail, fields } => {
                let title = title.clone().unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
                write!(f, "{title} ({})", status.as_u16())?;
                if let Some(detail) = detail {
                    write!(f, ": {detail}")?;
                }
                for (field, message) in fields {
                    write!(f, "\n  {field}: {message}")?;
                }
                if *status == StatusCode::UNAUTHORIZED {
                    write!(f, "\n  (run `herd login` to sign in again)")?;
                }
                Ok(())
            }
            ApiError::Transport(message) | ApiError::Unexpected(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ApiError {}

/// A server and, once signed in, the token to send it.
pub(crate) struct Api {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

/// How long one call may take (uploads get no overall bound, only this for connecting).
const TIMEOUT: Duration = Duration::from_secs(60);

impl Api {
    pub(crate) fn new(server: &str, token: Option<String>) -> Result<Self, ApiError> {
        let server = server.trim_end_matches('/').to_string();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ApiError::Transport(format!(
                "the server address {server:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("herd-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { http, server, token })
    }

    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// Sends a JSON request (or none) and answers the response body: JSON, or `Null` for 204.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut request = self.request(method, path).query(query).timeout(TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// Starts a request to `path` with the token, if any.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends a prepared request and reads its answer as [`Api::call`] does.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Transport(format!("cannot reach herd at {}: {}", self.server, error_chain(&e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(format!("the answer from {} broke off: {e}", self.server)))?;
        if !status.is_success() {
            return Err(problem(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Unexpected(format!("{} answered {status} with a body that is not JSON: {e}", self.server))
        })
    }
}

/// Reads an error answer: problem+json when the server sent one, the status alone otherwise.
fn problem(status: StatusCode, bytes: &[u8]) -> ApiError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
    let fields = body
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let field = e.get("field").and_then(Value::as_str).unwrap_or("?").to_string();
                    let message = e.get("message").and_then(Value::as_str).unwrap_or("invalid").to_string();
                    (field, message)
                })
                .collect()
        })
        .unwrap_or_default();
    ApiError::Problem { status, title: text("title"), detail: text("detail"), fields }
}

/// reqwest's error with its causes, which name what actually went wrong (refused, DNS, TLS).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_shows_title_status_detail_and_fields() {
        let body = br#"{"type":"about:blank","title":"Validation failed","status":422,"detail":"the body is invalid","errors":[{"field":"name","message":"must not be empty"}]}"#;
        let shown = problem(StatusCode::UNPROCESSABLE_ENTITY, body).to_string();
        assert_eq!(shown, "Validation failed (422): the body is invalid\n  name: must not be empty");
        let shown = problem(StatusCode::NOT_FOUND, b"not json").to_string();
        assert_eq!(shown, "Not Found (404)");
    }
}
