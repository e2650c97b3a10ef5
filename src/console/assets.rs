//! The console's static files, compiled into the binary: one stylesheet, one script (herd's
//! own; no third-party code) and the icon. Served with an `ETag` so a browser revalidates
//! cheaply and never runs a stale script after an upgrade.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::app::AppState;

pub(crate) const CSS_URL: &str = "/ui/static/console.css";
pub(crate) const JS_URL: &str = "/ui/static/console.js";
pub(crate) const ICON_URL: &str = "/ui/static/herd.svg";

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");
pub(crate) const ICON_SVG: &str = include_str!("static/herd.svg");

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(CSS_URL, get(|headers: HeaderMap| async move { serve(&headers, CSS, "text/css; charset=utf-8") }))
        .route(JS_URL, get(|headers: HeaderMap| async move { serve(&headers, JS, "text/javascript; charset=utf-8") }))
        .route(ICON_URL, get(|headers: HeaderMap| async move { serve(&headers, ICON_SVG, "image/svg+xml") }))
}

fn serve(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    // A hash of a few KiB per request costs microseconds, and keeps the tag true by construction.
    let digest = hex::encode(&Sha256::digest(body.as_bytes())[..12]);
    let tag = HeaderValue::from_str(&format!("\"{digest}\"")).expect("hex is header-safe");
    let cached = headers.get(header::IF_NONE_MATCH).is_some_and(|value| value == tag);
    let mut response = if cached { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    out.insert(header::ETAG, tag);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
