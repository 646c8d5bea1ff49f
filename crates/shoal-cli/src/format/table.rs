//! `format/table.rs`: a small tabwriter with Docker's spacing, so tables line up as people
//! who know `docker node ls` expect.

use std::io::{self, Write};

/// Space after the widest cell of a column (Docker's tabwriter padding).
const PADDING: usize = 3;
/// No column is narrower than this, padding included (Docker's tabwriter minwidth).
const MIN_WIDTH: usize = 10;

/// Rows of cells, written with each column padded to its widest cell plus three spaces.
/// The last cell of a row is never padded and does not widen its column, as in Go's tabwriter.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new() -> Self {
        Table::default()
    }

    pub(crate) fn with_header(header: &[&str]) -> Self {
        let mut table = Table::new();
        table.row(header.iter().map(|h| (*h).to_owned()).collect());
        table
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A `Key:  value` line of a pretty view.
    pub(crate) fn kv(&mut self, key: &str, value: impl Into<String>) {
        self.rows.push(vec![key.to_owned(), value.into()]);
    }

    /// A line standing alone (a section heading, a list item); it does not widen any column.
    pub(crate) fn line(&mut self, text: impl Into<String>) {
        self.rows.push(vec![text.into()]);
    }

    pub(crate) fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                if widths.len() <= i {
                    widths.resize(i + 1, 0);
                }
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let width = (widths[i] + PADDING).max(MIN_WIDTH);
                    let pad = width - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_pad_to_widest_plus_three() {
        let mut t = Table::with_header(&["ID", "HOSTNAME", "STATUS"]);
        t.row(vec!["abcdefghijkl *".into(), "n1".into(), "Ready".into()]);
        t.row(vec!["x".into(), "a-long-hostname".into(), "Down".into()]);
        assert_eq!(
            render(&t),
            "ID               HOSTNAME          STATUS\n\
             abcdefghijkl *   n1                Ready\n\
             x                a-long-hostname   Down\n"
        );
    }

    #[test]
    fn narrow_columns_keep_the_minimum_width() {
        let mut t = Table::with_header(&["A", "B"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(render(&t), "A         B\n1         2\n");
    }

    #[test]
    fn empty_last_cells_leave_no_trailing_space() {
        let mut t = Table::with_header(&["NAME", "MANAGER STATUS"]);
        t.row(vec!["w1".into(), String::new()]);
        assert_eq!(render(&t), "NAME      MANAGER STATUS\nw1\n");
    }

    #[test]
    fn short_rows_and_wide_characters() {
        let mut t = Table::new();
        t.row(vec!["Status:".into()]);
        t.row(vec![" État:".into(), "prêt".into()]);
        t.row(vec!["Hostname:".into(), "h".into()]);
        assert_eq!(render(&t), "Status:\n État:      prêt\nHostname:   h\n");
    }
}
