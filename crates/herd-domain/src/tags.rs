//! Device tags: free-form labels that group devices (rules, rollouts and filters select by
//! them). One definition of their limits and their normal form for every feature.

/// At most this many tags on one device, rule or filter.
pub const MAX_TAGS: usize = 32;
/// At most this many characters in one tag.
pub const MAX_TAG_LEN: usize = 64;

/// The stored form of a tag list: each tag trimmed, duplicates dropped, first occurrence kept.
pub fn normalize(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags.iter().map(|tag| tag.trim().to_string()) {
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_trimmed_and_deduplicated_in_order() {
        let given = [" lobby", "kitchen ", "lobby", "hall"].map(String::from);
        assert_eq!(normalize(&given), ["lobby", "kitchen", "hall"]);
        assert!(normalize(&[]).is_empty());
    }
}
