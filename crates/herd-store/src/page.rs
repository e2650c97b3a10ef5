//! Keyset pagination: every list is ordered by id (UUIDv7, so creation order) and resumes
//! after the last id of the previous page.

/// One page of a list: at most `limit` rows with an id greater than `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// How many rows at most (the server validates 1..=500).
    pub limit: u32,
    /// The last id of the previous page, if any.
    pub after: Option<String>,
}
