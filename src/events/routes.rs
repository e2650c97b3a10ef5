//! `GET /events` (history) and `GET /events/stream` (Server-Sent Events), tenant-scoped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, EventRow};
use super::stream::{Credential, StreamPermit};
use crate::app::AppState;
use crate::auth::{Member, Role, TenantScope};
use crate::http::error::ApiError;
use crate::http::extract::{decode_cursor, encode_tagged_cursor, page_of, ApiQuery};
use crate::http::{time, ListResponse};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events)).routes(routes!(stream_events))
}

/// How often an idle stream looks for new events.
const STREAM_POLL: Duration = Duration::from_millis(500);

/// An event as served (DESIGN.md: `{id, type, tenantId, occurredAt, data}`, plus its `seq`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventDto {
    pub id: String,
    /// Position in the tenant's own history (1, 2, 3, … counted per tenant, so another tenant's
    /// activity leaves no gaps); the SSE `id` and what `Last-Event-ID` resumes from.
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub data: Value,
}

impl From<EventRow> for EventDto {
    fn from(row: EventRow) -> Self {
        Self {
            id: row.id.to_string(),
            seq: row.tenant_seq,
            event_type: row.event_type,
            tenant_id: row.tenant_id.to_string(),
            occurred_at: time(row.occurred_at),
            data: serde_json::from_str(&row.data).unwrap_or(Value::Null),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventListParams {
    /// Only these types (comma-separated), e.g. `device.status_changed`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_types(text: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(text) = text else { return Ok(Vec::new()) };
    let mut types = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !super::KNOWN_TYPES.contains(&part) {
            return Err(ApiError::invalid("type", format!("unknown event type {part:?}")));
        }
        types.push(part.to_string());
    }
    Ok(types)
}

/// The tag of cursors over the outbox (ordered by `seq`, not by id).
const EVENT_CURSOR: &str = "e1";

fn decode_event_cursor(cursor: &str) -> Option<i64> {
    decode_cursor(EVENT_CURSOR, cursor)?.parse().ok().filter(|seq: &i64| *seq >= 0)
}

/// The tenant's event history, oldest first (kept for `HERD_EVENT_RETENTION`).
#[utoipa::path(get, path = "/events", operation_id = "listEvents", tag = "events", security(("apiToken" = []), ("sessionToken" = [])), params(EventListParams),
    responses((status = 200, body = ListResponse<EventDto>)))]
pub(crate) async fn list_events(
    member: Member,
    ApiQuery(params): ApiQuery<EventListParams>,
) -> Result<Json<ListResponse<EventDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let (limit, after) = page_of(params.limit, params.cursor.as_deref(), decode_event_cursor)?;
    let types = parse_types(params.event_type.as_deref())?;
    let rows = store::list(scope, after.unwrap_or(0), &types, limit + 1).await?;
    let cursor_of = |row: &store::EventRow| encode_tagged_cursor(EVENT_CURSOR, &row.tenant_seq.to_string());
    Ok(Json(ListResponse::from_rows_with_cursor(rows, limit, cursor_of, EventDto::from)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Only these types (comma-separated).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Start after this `seq` (what `Last-Event-ID` does for a reconnecting client).
    pub after: Option<i64>,
}

/// Live events as Server-Sent Events. Each has `id: <seq>`; reconnect with `Last-Event-ID` to
/// resume without gaps. Without it the stream starts with the next event. Comments keep idle
/// connections alive. The stream ends when its token stops authenticating (re-checked every
/// `HERD_EVENT_STREAM_RECHECK_INTERVAL` and before each batch); a token or tenant with too
/// many open streams gets 429.
#[utoipa::path(get, path = "/events/stream", operation_id = "streamEvents", tag = "events", security(("apiToken" = []), ("sessionToken" = [])), params(StreamParams),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 429, description = "too many open streams for this token or tenant", body = crate::http::error::Problem)))]
pub(crate) async fn stream_events(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let scope = member.require(Role::Viewer)?.clone();
    let authorization = headers
        .get(AUTHORIZATION)
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("an authenticated request without Authorization")))?;
    let types = parse_types(params.event_type.as_deref())?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|seq| *seq >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be the seq of an event"))?,
        ),
        None => None,
    };
    let start = match last_event_id.or(params.after) {
        Some(seq) if seq >= 0 => seq,
        Some(_) => return Err(ApiError::invalid("after", "must not be negative")),
        None => store::latest_tenant_seq(&scope).await?,
    };
    let permit = state.event_streams.open(member.token_id, member.tenant_id())?;
    let credential = Credential::new(authorization, &member, state.settings.event_stream_recheck_interval);
    let stream =
        EventStream { scope, types, cursor: start, buffer: VecDeque::new(), state, credential, _permit: permit };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok(event), stream))
    });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new().interval(Duration::from_secs(crate::config::STREAM_KEEP_ALIVE_SECS)).text("keep-alive"),
    ))
}

struct EventStream {
    scope: TenantScope,
    types: Vec<String>,
    cursor: i64,
    buffer: VecDeque<EventRow>,
    state: AppState,
    /// Presented again every re-check interval and before each batch.
    credential: Credential,
    /// Counts this stream against its token's and tenant's caps until the response ends.
    _permit: StreamPermit,
}

impl EventStream {
    /// The next event, waiting for one if needed; `None` ends the stream (server shutdown, or
    /// a credential that no longer authenticates).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.buffer.is_empty() && self.credential.due() && !self.credential.still_valid(&self.state).await {
                return None;
            }
            if let Some(row) = self.buffer.pop_front() {
                self.cursor = row.tenant_seq;
                let seq = row.tenant_seq;
                let event_type = row.event_type.clone();
                let data = serde_json::to_string(&EventDto::from(row)).unwrap_or_default();
                return Some(SseEvent::default().id(seq.to_string()).event(event_type).data(data));
            }
            match store::list(&self.scope, self.cursor, &self.types, 100).await {
                Ok(rows) if !rows.is_empty() => {
                    // Nothing is sent on a credential revoked since the last check.
                    if !self.credential.still_valid(&self.state).await {
                        return None;
                    }
                    self.buffer.extend(rows);
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "event stream cannot read events; retrying"),
            }
            tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                () = tokio::time::sleep(STREAM_POLL.min(self.state.settings.event_stream_recheck_interval)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_cursors_round_trip_and_refuse_other_lists() {
        assert_eq!(decode_event_cursor(&encode_tagged_cursor(EVENT_CURSOR, "42")), Some(42));
        assert_eq!(decode_event_cursor(&encode_tagged_cursor(EVENT_CURSOR, "-1")), None);
        let id_cursor = crate::http::extract::encode_cursor("0190b0e4-0000-7000-8000-000000000000");
        assert_eq!(decode_event_cursor(&id_cursor), None, "a device list's cursor is not an event cursor");
        assert_eq!(decode_event_cursor("not base64!"), None);
    }
}
