//! Bounds on every time a client sends. chrono reads RFC 3339 years from -262143 to 262142,
//! and arithmetic near those ends overflows (`to - 24h` panicked for a `to` in year -262143).
//! A time outside [`EARLIEST`]..=[`LATEST`] (1970 to 9999) is refused while the request is
//! read, as a 422 naming the field, before any handler computes with it.
//!
//! Each request field of type `Option<DateTime<Utc>>` takes one attribute:
//! `#[serde(default, deserialize_with = "crate::http::bounded_time::optional")]` (no request
//! takes a required time today; one would get a `required` twin of [`optional`]).
//! It works for JSON bodies and query strings alike; `tests/api/hardening.rs` sends the extremes
//! to every route that takes a time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

/// The earliest time a request may carry: the Unix epoch (herd stores milliseconds since it).
pub(crate) const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The latest time a request may carry: the end of year 9999 (four-digit years only).
pub(crate) fn latest() -> DateTime<Utc> {
    // 9999-12-31T23:59:59.999Z in milliseconds since the epoch.
    DateTime::from_timestamp_millis(253_402_300_799_999).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Refuses a time outside the bounds (the message reaches the client as the field's 422).
pub(crate) fn check(at: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if at < EARLIEST || at > latest() {
        Err(format!(
            "{} is out of range: times must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            at.to_rfc3339()
        ))
    } else {
        Ok(at)
    }
}

/// `deserialize_with` for an `Option<DateTime<Utc>>` (with `#[serde(default)]`).
pub(crate) fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<DateTime<Utc>>::deserialize(deserializer)? {
        Some(at) => check(at).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "optional")]
        at: Option<DateTime<Utc>>,
    }

    #[test]
    fn times_between_1970_and_9999_pass_and_others_are_refused() {
        for good in ["1970-01-01T00:00:00Z", "2026-01-01T12:00:00+02:00", "9999-12-31T23:59:59.999Z"] {
            let body: Body = serde_json::from_value(serde_json::json!({ "at": good })).unwrap();
            assert!(body.at.is_some(), "{good}");
        }
        for bad in
            ["-262143-01-01T00:00:00Z", "+262142-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"]
        {
            let error = serde_json::from_value::<Body>(serde_json::json!({ "at": bad })).unwrap_err();
            assert!(
                error.to_string().contains("out of range") || error.to_string().contains("input"),
                "{bad}: {error}"
            );
        }
        assert!(serde_json::from_value::<Body>(serde_json::json!({})).unwrap().at.is_none());
        assert!(serde_json::from_value::<Body>(serde_json::json!({ "at": null })).unwrap().at.is_none());
        let query: Body = serde_urlencoded::from_str("at=2026-01-01T00%3A00%3A00Z").unwrap();
        assert!(query.at.is_some());
        assert!(serde_urlencoded::from_str::<Body>("at=-262143-01-01T00%3A00%3A00Z").is_err());
    }
}
