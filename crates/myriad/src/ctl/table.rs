//! Plain-text tables: a header line, then one line per row, columns
//! left-aligned and separated by two spaces.

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (printed upper-case).
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    /// Control characters in cells are escaped, so server data cannot
    /// break the layout or drive the terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| sanitize(c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, each line ending in `\n`, without trailing
    /// spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn sanitize(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let mut table = Table::new(&["id", "name", "enabled"]);
        table.row(vec!["d1".into(), "Pump".into(), "true".into()]);
        table.row(vec!["device-22".into(), "".into(), "false".into()]);
        assert_eq!(
            table.render(),
            "ID         NAME  ENABLED\n\
             d1         Pump  true\n\
             device-22        false\n"
        );
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(Table::new(&["id"]).render(), "ID\n");
    }

    #[test]
    fn rows_are_padded_or_cut_to_the_headers() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into()]);
        table.row(vec!["1".into(), "2".into(), "3".into()]);
        assert_eq!(table.render(), "A  B\n1\n1  2\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut table = Table::new(&["name"]);
        table.row(vec!["a\nb\u{1b}[31m".into()]);
        assert_eq!(table.render(), "NAME\na\\nb\\u{1b}[31m\n");
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut table = Table::new(&["name", "x"]);
        table.row(vec!["Küche".into(), "1".into()]);
        assert_eq!(table.render(), "NAME   X\nKüche  1\n");
    }
}
