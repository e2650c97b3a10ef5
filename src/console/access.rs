//! (Being written.)

use axum::Router;

use crate::app::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
}
