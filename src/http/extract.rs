//! Request extractors whose failures are [`ApiError`]s (problem+json) instead of axum's
//! plain-text rejections: JSON bodies, query strings and ids in the path.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
pub(crate) use herd_store::Page;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;

/// A request body that can check itself after it has been parsed.
pub(crate) trait Validate {
    /// Returns a 422 listing every invalid field, or normalises nothing and answers `Ok`.
    fn validate(&self) -> Result<(), ApiError>;
}

/// A JSON body: 415 without a JSON content type, 413 over the body limit, 400 if it is not
/// JSON, 422 (naming the field) if it is JSON of the wrong shape or fails [`Validate`].
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType("expected Content-Type: application/json".into()));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(body_error)?;
        ApiJson::validated(parse_json(&bytes)?)
    }
}

impl<T: Validate> ApiJson<T> {
    /// A body built in process (the console's forms) passed through the same checks the
    /// extractor makes of a parsed one, so a handler never sees an unvalidated body.
    pub(crate) fn validated(value: T) -> Result<Self, ApiError> {
        value.validate()?;
        Ok(ApiJson(value))
    }
}

/// An optional JSON body: an empty body (with or without a content type) is `None`.
#[derive(Debug)]
pub(crate) struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = has_json_content_type(request.headers());
        let bytes = Bytes::from_request(request, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType("expected Content-Type: application/json".into()));
        }
        let value: T = parse_json(&bytes)?;
        value.validate()?;
        Ok(OptionalJson(Some(value)))
    }
}

fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(0)
    } else {
        ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
    }
}

/// Parses JSON, telling syntax errors (400) from value errors (422 with the field's path).
///
/// The body is first parsed into a [`serde_json::Value`]: only text that is not JSON fails
/// there (400). Every string in it is then checked for control characters (see
/// [`check_control_characters`]), and only then is the value turned into `T`, so that a wrong
/// type, a `null` where a value is needed or an unknown enum text is always a 422 naming the
/// field, whatever serde_json would have classified it as when reading the text directly.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|inner| ApiError::BadRequest(format!("the body is not valid JSON: {inner}")))?;
    check_control_characters(&value)?;
    from_value(value, "")
}

/// Turns an already checked JSON value into `T`; a mismatch is a 422 naming the field by its
/// path below `prefix` (`""` for a whole body, e.g. `"payload"` for a part of one).
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let parent = match (prefix, field.as_str()) {
            ("", ".") => String::new(),
            (prefix, ".") => prefix.to_string(),
            ("", field) => field.to_string(),
            (prefix, field) => format!("{prefix}.{field}"),
        };
        let message = strip_position(&error.into_inner().to_string());
        // serde reports a missing field at its parent; name the field itself.
        let field = match message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
            Some(name) if parent.is_empty() => name.to_string(),
            Some(name) => format!("{parent}.{name}"),
            None if parent.is_empty() => "body".to_string(),
            None => parent,
        };
        ApiError::invalid(field, message)
    })
}

/// The control characters free text may hold: tab, line feed and carriage return. Every other
/// C0 character (NUL above all: PostgreSQL cannot store it in `TEXT`, SQLite would) is refused.
fn allowed_in_free_text(c: char) -> bool {
    !matches!(c, '\0'..='\x1f') || matches!(c, '\t' | '\n' | '\r')
}

/// How many offending fields one answer lists at most.
const MAX_REPORTED_FIELDS: usize = 20;

/// Refuses (422, naming each field by its JSON path) any string value holding a C0 control
/// character other than tab, line feed and carriage return, and any object key holding a
/// control character at all. Names and identifiers are held to the stricter rule (no control
/// character at all) by each body's [`Validate`] (`FieldErrors::text`).
pub(crate) fn check_control_characters(value: &serde_json::Value) -> Result<(), ApiError> {
    let mut errors = super::error::FieldErrors::new();
    let mut count = 0;
    walk_strings(value, &mut String::new(), &mut |path, text, is_key| {
        let bad = if is_key { text.chars().any(char::is_control) } else { !text.chars().all(allowed_in_free_text) };
        if bad && count < MAX_REPORTED_FIELDS {
            count += 1;
            let field = if path.is_empty() { "body".to_string() } else { path.to_string() };
            errors.add(field, "must not contain control characters");
        }
    });
    errors.finish()
}

/// Calls `visit(path, text, is_key)` for every string and object key in `value`. The depth is
/// bounded by serde_json's own recursion limit (128), so the recursion is too.
fn walk_strings(value: &serde_json::Value, path: &mut String, visit: &mut dyn FnMut(&str, &str, bool)) {
    use serde_json::Value;
    match value {
        Value::String(text) => visit(path, text, false),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(item, path, visit);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                // A key with control characters is named by its escaped form.
                path.push_str(&key.escape_default().to_string());
                visit(path, key, true);
                walk_strings(item, path, visit);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// serde_json appends " at line 1 column 7" to messages; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// A query string; a malformed one is a 422.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        // An empty parameter (`?q=&limit=10`, as forms send) means the parameter is absent.
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        // Query parameters are names, filters, ids and times: no control character belongs in
        // one (a NUL would even fail on PostgreSQL instead of matching nothing).
        let mut errors = super::error::FieldErrors::new();
        for (key, value) in &pairs {
            if key.chars().any(char::is_control) || value.chars().any(char::is_control) {
                errors.add(key.escape_default().to_string(), "must not contain control characters");
            }
        }
        errors.finish()?;
        let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(encoded.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(ApiQuery).map_err(|error| {
            let field = error.path().to_string();
            ApiError::invalid(if field == "." { "query".into() } else { field }, error.into_inner().to_string())
        })
    }
}

/// Two ids in the path (`/devices/{id}/commands/{commandId}`), in order. Anything that does not
/// parse is a 404, as for [`IdPath`].
#[derive(Debug)]
pub(crate) struct IdsPath<A, B>(pub A, pub B);

impl<S, A, B> FromRequestParts<S> for IdsPath<A, B>
where
    S: Send + Sync,
    A: FromStr + Send,
    B: FromStr + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((a, b)): axum::extract::Path<(String, String)> =
            axum::extract::Path::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found("resource"))?;
        match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok(IdsPath(a, b)),
            _ => Err(ApiError::not_found("resource")),
        }
    }
}

/// One id in the path. Anything that does not parse is a 404: such a resource cannot exist.
#[derive(Debug)]
pub(crate) struct IdPath<T>(pub T);

impl<S, T> FromRequestParts<S> for IdPath<T>
where
    S: Send + Sync,
    T: FromStr + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw): axum::extract::Path<String> =
            axum::extract::Path::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found("resource"))?;
        raw.parse().map(IdPath).map_err(|_| ApiError::not_found("resource"))
    }
}

/// `limit` and `cursor` of every list (DESIGN.md: default 50, at most 500; opaque cursor).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// A page of a list ordered by id (the cursor is the last id of the previous page).
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        let (limit, after) = page_of(self.limit, self.cursor.as_deref(), |cursor| {
            let id = decode_cursor(ID_CURSOR, cursor)?;
            uuid::Uuid::parse_str(&id).ok()?;
            Some(id)
        })?;
        Ok(Page { limit, after })
    }
}

/// The tag of cursors over id-ordered lists.
const ID_CURSOR: &str = "v1";

/// Checks `limit` (1–500, default 50) and decodes `cursor` with `decode` (a cursor it refuses
/// is a 422): every paged list, whatever its order, goes through here.
pub(crate) fn page_of<K>(
    limit: Option<u32>,
    cursor: Option<&str>,
    decode: impl Fn(&str) -> Option<K>,
) -> Result<(u32, Option<K>), ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let after = match cursor {
        None => None,
        Some(cursor) => {
            Some(decode(cursor).ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this server issued"))?)
        }
    };
    Ok((limit, after))
}

/// Wraps the last id of a page into an opaque cursor.
pub(crate) fn encode_cursor(last_id: &str) -> String {
    encode_tagged_cursor(ID_CURSOR, last_id)
}

/// An opaque cursor: `tag:value`, base64url. The tag says which order the value belongs to,
/// so a cursor of one list is refused by another.
pub(crate) fn encode_tagged_cursor(tag: &str, value: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tag}:{value}"))
}

/// The value of a cursor made by [`encode_tagged_cursor`] with `tag`.
pub(crate) fn decode_cursor(tag: &str, cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.strip_prefix(tag)?.strip_prefix(':')?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Sample {
        serial_number: String,
        tags: Vec<String>,
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_name_the_field() {
        assert!(matches!(parse_json::<Sample>(b"{not json"), Err(ApiError::BadRequest(_))));
        match parse_json::<Sample>(br#"{"serialNumber": 5, "tags": []}"#) {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, "serialNumber"),
            other => panic!("{other:?}"),
        }
        match parse_json::<Sample>(br#"{"serialNumber": "a", "tags": ["x", 3]}"#) {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, "tags[1]"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Sample>(br#"{"serialNumber": "a", "tags": []} trailing"#),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct WithRole {
        role: herd_domain::status::Role,
        count: Option<u32>,
    }

    fn field_names(result: Result<impl std::fmt::Debug, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn valid_json_with_a_wrong_value_is_a_422_naming_the_field() {
        // serde_json classifies `null` where an enum is expected as a syntax error when it reads
        // the text directly; through a `Value` it is the data error it is.
        assert_eq!(field_names(parse_json::<WithRole>(br#"{"role": null}"#)), ["role"]);
        assert_eq!(field_names(parse_json::<WithRole>(br#"{"role": 7}"#)), ["role"]);
        assert_eq!(field_names(parse_json::<WithRole>(br#"{"role": "emperor"}"#)), ["role"]);
        assert_eq!(field_names(parse_json::<WithRole>(br#"{"role": "admin", "count": -1}"#)), ["count"]);
        assert_eq!(field_names(parse_json::<WithRole>(br#"{"role": "admin", "count": 1e99}"#)), ["count"]);
        assert_eq!(field_names(parse_json::<WithRole>(br#""text""#)), ["body"]);
        assert!(matches!(parse_json::<WithRole>(br#"{"role": nul}"#), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_json::<WithRole>(b""), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn control_characters_are_refused_in_every_string_and_key() {
        let nul = br#"{"serialNumber": "a\u0000b", "tags": ["ok", "x\u001by"]}"#;
        assert_eq!(field_names(parse_json::<Sample>(nul)), ["serialNumber", "tags[1]"]);
        let nested = br#"{"serialNumber": "a", "tags": [], "extra": {"deep": ["\u0007"]}}"#;
        assert_eq!(field_names(parse_json::<Sample>(nested)), ["extra.deep[0]"]);
        let key = br#"{"serialNumber": "a", "tags": [], "k\u0000": 1}"#;
        assert_eq!(field_names(parse_json::<Sample>(key)), ["k\\u{0}"]);
        // Tab, line feed and carriage return are free text's own; DEL and C1 are left to the
        // stricter per-field checks of names.
        let fine = br#"{"serialNumber": "line one\r\n\tline two \u007f \u0085", "tags": []}"#;
        assert!(parse_json::<Sample>(fine).is_ok());
    }

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let id = uuid::Uuid::now_v7().to_string();
        let page = PageParams { limit: None, cursor: Some(encode_cursor(&id)) }.page().unwrap();
        assert_eq!(page.after.as_deref(), Some(id.as_str()));
        assert_eq!(page.limit, 50);
        assert!(PageParams { limit: None, cursor: Some("garbage".into()) }.page().is_err());
        assert!(PageParams { limit: Some(501), cursor: None }.page().is_err());
        assert!(PageParams { limit: Some(0), cursor: None }.page().is_err());
    }
}
