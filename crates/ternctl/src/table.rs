//! Plain-text tables and key/value blocks for the human-readable output.

use std::fmt::Write;

/// Columns separated by two spaces, each as wide as its widest cell; the last column
/// is not padded, so lines carry no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut cells: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(&c))
            .take(self.headers.len())
            .collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, or `empty` (a line saying there is nothing) when it has no row.
    pub fn render_or(&self, empty: &str) -> String {
        if self.is_empty() {
            format!("{empty}\n")
        } else {
            self.render()
        }
    }

    /// The table as text, one line per row after the header line.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers[i])
                    .chain(self.rows.iter().map(|r| &r[i]))
                    .map(|c| width(c))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    let _ = write!(line, "{cell}{}  ", " ".repeat(widths[i] - width(cell)));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned; pairs with an empty value are left out.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let shown: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    let key_width = shown.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in shown {
        let _ = writeln!(
            out,
            "{key}:{}  {}",
            " ".repeat(key_width - width(key)),
            one_line(value)
        );
    }
    out
}

/// The text of a JSON value in a cell: strings bare, `null` blank, the rest as JSON.
pub fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Characters, not bytes: what a terminal shows for the text the API returns.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// A cell never breaks the layout: line breaks and tabs become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut table = Table::new(["id", "status", "queue"]);
        table.row(["a1".to_string(), "succeeded".into(), "default".into()]);
        table.row(["b22222".to_string(), "dead".into(), "q".into()]);
        assert_eq!(
            table.render(),
            "ID      STATUS     QUEUE\n\
             a1      succeeded  default\n\
             b22222  dead       q\n"
        );
    }

    #[test]
    fn short_long_and_multiline_rows() {
        let mut table = Table::new(["a", "b"]);
        table.row(["only".to_string()]);
        table.row(["x".to_string(), "two\nlines".into(), "dropped".into()]);
        table.row(["é€".to_string(), "".into()]);
        assert_eq!(table.render(), "A     B\nonly\nx     two lines\né€\n");
        assert!(!table.is_empty());
        assert!(Table::new(["a"]).is_empty());
        assert_eq!(Table::new(["a"]).render_or("nothing"), "nothing\n");
        assert_eq!(table.render_or("nothing"), table.render());
        assert_eq!(Table::new(["a", "bb"]).render(), "A  BB\n");
    }

    #[test]
    fn key_values_align_and_skip_empty_values() {
        let text = key_values(&[
            ("task", "019a".into()),
            ("status", "queued".into()),
            ("last error", String::new()),
            ("url", "http://x\ty".into()),
        ]);
        assert_eq!(
            text,
            "task:    019a\nstatus:  queued\nurl:     http://x y\n"
        );
        assert_eq!(key_values(&[]), "");
    }

    #[test]
    fn json_cells() {
        use serde_json::json;
        assert_eq!(text(&json!(null)), "");
        assert_eq!(text(&json!("queued")), "queued");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(text(&json!({"per_second": 0.5})), r#"{"per_second":0.5}"#);
    }
}
