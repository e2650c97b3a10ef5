//! How the CLI shows an answer: aligned columns (or `field  value` lines for one record) for
//! people, or the API's JSON unchanged with `--json` for scripts.

use serde_json::Value;

/// One column of a table: its heading and the JSON field (camelCase, `a.b` for nested) it shows.
pub(crate) type Column = (&'static str, &'static str);

/// A field's value as a table cell: strings bare, null or absent as `-`, the rest as JSON.
fn cell(item: &Value, field: &str) -> String {
    let mut value = item;
    for part in field.split('.') {
        match value.get(part) {
            Some(inner) => value = inner,
            None => return "-".into(),
        }
    }
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.replace(['\n', '\t'], " "),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(",")
            }
        }
        other => other.to_string(),
    }
}

/// Renders rows under headings, each column as wide as its widest cell, two spaces apart.
pub(crate) fn table(items: &[Value], columns: &[Column]) -> String {
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| columns.iter().map(|(_, f)| cell(item, f)).collect()).collect();
    let mut widths: Vec<usize> = columns.iter().map(|(heading, _)| heading.chars().count()).collect();
    for row in &rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let headings: Vec<String> = columns.iter().map(|(heading, _)| heading.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&headings).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (text, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(text);
            } else {
                line.push_str(text);
                line.push_str(&" ".repeat(width - text.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders one record as `field  value` lines, `id` first and the rest by name (nested objects
/// as JSON).
pub(crate) fn record(item: &Value) -> String {
    let Some(fields) = item.as_object() else { return format!("{item}\n") };
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort_by_key(|key| (key.as_str() != "id", key.as_str()));
    let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for key in keys {
        let value = cell(item, key);
        out.push_str(&format!("{key:<width$}  {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_and_missing_values_show_a_dash() {
        let items = vec![
            json!({"id": "a1", "name": "lobby screen", "status": "online", "tags": ["x", "y"]}),
            json!({"id": "b22222", "name": null, "status": "offline", "tags": []}),
        ];
        let shown = table(&items, &[("ID", "id"), ("NAME", "name"), ("TAGS", "tags"), ("STATUS", "status")]);
        assert_eq!(
            shown,
            "ID      NAME          TAGS  STATUS\n\
             a1      lobby screen  x,y   online\n\
             b22222  -             -     offline\n"
        );
    }

    #[test]
    fn a_record_shows_one_field_a_line() {
        let shown = record(&json!({"id": "a1", "lastSeen": null, "counts": {"failed": 1}}));
        assert_eq!(shown, "id        a1\ncounts    {\"failed\":1}\nlastSeen  -\n");
    }
}
