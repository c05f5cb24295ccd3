//! The command line's one printer. With `--json` a command prints JSON on stdout (one line for
//! a record, a pretty-printed array for a list); otherwise text for people: fixed-width tables
//! and `key: value` lines. Scripts and tests parse both, so every byte of them is decided here
//! and in the command that builds the values, nowhere else; nothing else in `cli` prints to
//! stdout.

use std::fmt::{self, Display};

use serde_json::Value;

/// JSON or text, as the command's `--json` flag asked.
#[derive(Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// For commands without `--json`: text only.
    pub fn text() -> Self {
        Self::new(false)
    }

    /// One record: `json` on one line, or `text`. Only the one printed is built (a record may
    /// hold a secret shown once: no needless copies of it).
    pub fn record(self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", json());
        } else {
            println!("{}", text());
        }
    }

    /// A list: a pretty-printed JSON array of `json` applied to each item, or `table`.
    pub fn list<T>(self, items: &[T], json: impl Fn(&T) -> Value, table: impl FnOnce() -> Table) {
        if self.json {
            println!("{:#}", Value::Array(items.iter().map(json).collect()));
        } else {
            print!("{}", table());
        }
    }

    /// A line of text: a result or a status (text-only commands).
    pub fn line(self, text: impl Display) {
        println!("{text}");
    }
}

/// `key: value` lines, values aligned one space after the longest key.
pub fn fields(pairs: &[(&str, &str)]) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.len() + 2)
        .max()
        .unwrap_or(0);
    let lines: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{:<width$}{value}", format!("{key}:")))
        .collect();
    lines.join("\n")
}

/// ` (a, b)` after a summary, or nothing when there is no detail.
pub fn parenthesised(details: &[String]) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    }
}

/// A text table: columns of fixed width two spaces apart, the last one unpadded. A longer
/// value pushes the rest of its row to the right; nothing is cut.
pub struct Table {
    columns: Vec<Column>,
    titled: bool,
    rows: Vec<Vec<String>>,
}

struct Column {
    title: &'static str,
    width: usize,
    right: bool,
}

impl Column {
    fn left(title: &'static str, width: usize) -> Self {
        Self {
            title,
            width,
            right: false,
        }
    }
}

impl Table {
    /// A table whose first line holds the column titles; `(title, width)` per column.
    pub fn titled(columns: &[(&'static str, usize)]) -> Self {
        let columns = columns
            .iter()
            .map(|&(title, width)| Column::left(title, width));
        Self::new(columns.collect(), true)
    }

    /// A table without a title line.
    pub fn untitled(widths: &[usize]) -> Self {
        Self::new(
            widths
                .iter()
                .map(|&width| Column::left("", width))
                .collect(),
            false,
        )
    }

    fn new(columns: Vec<Column>, titled: bool) -> Self {
        Self {
            columns,
            titled,
            rows: Vec::new(),
        }
    }

    /// Right-aligns column `index` (counts).
    pub fn right_aligned(mut self, index: usize) -> Self {
        self.columns[index].right = true;
        self
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows
            .push(cells.into_iter().map(|cell| cell.to_string()).collect());
    }

    fn write_line<S: AsRef<str>>(&self, f: &mut fmt::Formatter<'_>, cells: &[S]) -> fmt::Result {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, column)) in cells.iter().zip(&self.columns).enumerate() {
            let (cell, width) = (cell.as_ref(), column.width);
            match (i == last, column.right) {
                (true, _) => write!(f, "{cell}")?,
                (false, true) => write!(f, "{cell:>width$}  ")?,
                (false, false) => write!(f, "{cell:<width$}  ")?,
            }
        }
        writeln!(f)
    }
}

impl Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.titled {
            let titles: Vec<&str> = self.columns.iter().map(|c| c.title).collect();
            self.write_line(f, &titles)?;
        }
        for row in &self.rows {
            self.write_line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_align_values_after_the_longest_key() {
        assert_eq!(
            fields(&[("client_id", "abc"), ("client_secret", "xyz")]),
            "client_id:     abc\nclient_secret: xyz"
        );
    }

    #[test]
    fn table_pads_all_but_the_last_column() {
        let mut table = Table::titled(&[("ID", 4), ("NAME", 6), ("NOTE", 0)]);
        table.row(["1", "ann", "x"]);
        table.row(["12345", "b", "y z"]);
        assert_eq!(
            table.to_string(),
            "ID    NAME    NOTE\n1     ann     x\n12345  b       y z\n"
        );
    }

    #[test]
    fn untitled_table_right_aligns_counts() {
        let mut table = Table::untitled(&[5, 4, 0]).right_aligned(1);
        table.row(["ab", "7", "k1"]);
        assert_eq!(table.to_string(), "ab        7  k1\n");
    }
}
