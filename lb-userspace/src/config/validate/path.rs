//! The field a byte offset of the file belongs to, as the validator names fields
//! (`vip[1].backend[0].weight`): for the parser's own errors (types, unknown and missing fields),
//! which come with a position only.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table};

/// Where each key and table header of a file is, with its field path.
pub(super) struct Fields {
    /// (span of the key through its value, or of a table's header; the field; the field of the
    /// table it is in), by start.
    entries: Vec<(Range<usize>, String, String)>,
}

impl Fields {
    /// The fields of `text`, or none if it is not TOML at all.
    pub(super) fn of(text: &str) -> Self {
        let mut entries = Vec::new();
        if let Ok(doc) = ImDocument::parse(text) {
            collect(doc.as_table(), "", &mut entries);
        }
        entries.sort_by_key(|(span, _, _)| span.start);
        Self { entries }
    }

    /// The field at byte `offset`: the key or header there, else the table the offset lies in
    /// (after the last key before it). Empty before the first field.
    pub(super) fn at(&self, offset: usize) -> &str {
        let before = self.entries.partition_point(|(span, _, _)| span.start <= offset);
        match before.checked_sub(1).map(|i| &self.entries[i]) {
            Some((span, field, _)) if offset < span.end.max(span.start + 1) => field,
            Some((_, _, table)) => table,
            None => "",
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

fn collect(table: &Table, prefix: &str, out: &mut Vec<(Range<usize>, String, String)>) {
    for (key, item) in table {
        let field = join(prefix, key);
        let key_span = table.key(key).and_then(toml_edit::Key::span);
        match item {
            Item::Table(t) => {
                if let Some(header) = t.span() {
                    out.push((header, field.clone(), field.clone()));
                }
                collect(t, &field, out);
            }
            Item::ArrayOfTables(tables) => {
                for (i, t) in tables.iter().enumerate() {
                    let element = format!("{field}[{i}]");
                    if let Some(header) = t.span() {
                        out.push((header, element.clone(), element.clone()));
                    }
                    collect(t, &element, out);
                }
            }
            Item::Value(_) | Item::None => {
                let span = match (key_span, item.span()) {
                    (Some(k), Some(v)) => k.start..v.end,
                    (k, v) => match k.or(v) {
                        Some(span) => span,
                        None => continue,
                    },
                };
                out.push((span, field, prefix.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_name_keys_headers_and_tables() {
        let text = "[instance]\nname = \"a\"\n\n[[vip]]\nport = \"80\"\n\n[[vip]]\nname = \"b\"\n\n[[vip.backend]]\naddress = 1\n";
        let fields = Fields::of(text);
        let at = |needle: &str| fields.at(text.find(needle).unwrap()).to_string();
        assert_eq!(at("\"a\""), "instance.name");
        assert_eq!(at("\"80\""), "vip[0].port");
        assert_eq!(at("[[vip]]\nname"), "vip[1]");
        assert_eq!(at("address"), "vip[1].backend[0].address");
        assert_eq!(at("[instance]"), "instance");
        // Between keys: the table the offset is in.
        assert_eq!(fields.at(text.find("\n\n[[vip]]\nname").unwrap() + 1), "vip[0]");
    }
}
