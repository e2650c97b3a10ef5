//! Conversion between the API's `i64` unix seconds and the `time` types rcgen's encoder wants.

use time::OffsetDateTime;

use crate::PkiError;

/// Seconds in one day; validity periods are whole days.
pub(crate) const SECONDS_PER_DAY: i64 = 86_400;

/// Converts unix seconds into a UTC date-time, rejecting instants X.509 cannot encode
/// (before year 0 or after year 9999).
pub(crate) fn from_unix(seconds: i64, what: &str) -> Result<OffsetDateTime, PkiError> {
    let instant = OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| PkiError::InvalidRequest(format!("{what} ({seconds}) is out of range")))?;
    if !(0..=9999).contains(&instant.year()) {
        return Err(PkiError::InvalidRequest(format!(
            "{what} ({seconds}) is outside the years 0000-9999 that X.509 can encode"
        )));
    }
    Ok(instant)
}

/// Returns `start + days`, in unix seconds, or an error when that overflows.
pub(crate) fn add_days(start: i64, days: u32, what: &str) -> Result<i64, PkiError> {
    if days == 0 {
        return Err(PkiError::InvalidRequest(format!("{what} must be at least one day")));
    }
    i64::from(days)
        .checked_mul(SECONDS_PER_DAY)
        .and_then(|span| start.checked_add(span))
        .ok_or_else(|| PkiError::InvalidRequest(format!("{what} of {days} days overflows")))
}
