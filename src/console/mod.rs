//! The operator console: server-rendered pages under `/ui/`, for people in a browser.
//!
//! Pages are HTML built with `maud` (checked at compile time) and work without JavaScript;
//! `static/console.js`, herd's own few hundred lines, adds live updates from the event stream
//! and confirmations. Nothing here reaches the database on its own: every page and every
//! action calls the same handler the JSON API runs (made `pub(crate)` for that), with the
//! [`Member`](crate::auth::Member) its session cookie authenticates, so the console can show
//! and do exactly what that member's API calls could, and the server refuses the rest the same
//! way. See `session` for the cookie, the CSRF check and sign-in.

mod access;
mod alerts;
mod assets;
mod certificates;
mod device;
mod devices;
mod events;
mod layout;
mod overview;
mod session;
mod updates;
mod webhooks;

use axum::response::Redirect;
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

/// Every console route. `/` sends a browser to the console.
pub(crate) fn router() -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .merge(assets::router())
        .merge(session::router())
        .merge(overview::router())
        .merge(devices::router())
        .merge(device::router())
        .merge(alerts::router())
        .merge(certificates::router())
        .merge(updates::router())
        .merge(access::router())
        .merge(webhooks::router())
        .merge(events::router());
    pages.layer(axum::middleware::from_fn(session::headers))
}

/// The console's artifact uploads (the package upload form), which `http` bounds like the
/// API's transfers (`HERD_TRANSFER_TIMEOUT` and a stall limit) instead of the request timeout.
pub(crate) fn transfer_router() -> Router<AppState> {
    updates::transfer_router().layer(axum::middleware::from_fn(session::headers))
}
