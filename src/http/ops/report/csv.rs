//! A small CSV writer for the security report's downloads (RFC 4180: comma-separated, CRLF
//! line ends, fields quoted when they hold a comma, a quote or a line break).
//!
//! Every field is also defended against CSV injection: a spreadsheet treats a cell that
//! starts with `=`, `+`, `-` or `@` as a formula (tab and carriage return can smuggle one in),
//! and client names and purposes are chosen by integrations. Such a cell is prefixed with
//! `'`, which spreadsheets show as text.

/// The characters that make a spreadsheet read a cell as a formula.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Builds a CSV document in memory, one row at a time.
#[derive(Default)]
pub struct CsvWriter {
    out: String,
}

impl CsvWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            write_cell(&mut self.out, cell.as_ref());
        }
        self.out.push_str("\r\n");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_cell(out: &mut String, cell: &str) {
    let defused = cell.starts_with(FORMULA_STARTS);
    let quoted = cell.contains([',', '"', '\n', '\r']);
    if quoted {
        out.push('"');
    }
    if defused {
        out.push('\'');
    }
    for c in cell.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_row(cells: &[&str]) -> String {
        let mut csv = CsvWriter::new();
        csv.row(cells);
        csv.finish()
    }

    #[test]
    fn plain_cells_are_written_as_they_are() {
        assert_eq!(
            one_row(&["issued", "42", "https://graph.microsoft.com", ""]),
            "issued,42,https://graph.microsoft.com,\r\n"
        );
    }

    #[test]
    fn commas_quotes_and_line_breaks_are_quoted() {
        assert_eq!(one_row(&["a,b"]), "\"a,b\"\r\n");
        assert_eq!(one_row(&["say \"hi\""]), "\"say \"\"hi\"\"\"\r\n");
        assert_eq!(one_row(&["two\nlines"]), "\"two\nlines\"\r\n");
        assert_eq!(one_row(&["a\r\nb"]), "\"a\r\nb\"\r\n");
    }

    #[test]
    fn formula_starts_are_prefixed_with_an_apostrophe() {
        for cell in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            let written = one_row(&[cell]);
            assert!(
                written.starts_with('\'') || written.starts_with("\"'"),
                "{cell:?} became {written:?}"
            );
        }
        assert_eq!(
            one_row(&["=HYPERLINK(\"http://evil.example\",\"x\")"]),
            "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\"\r\n"
        );
        // Only the first character matters: a formula sign inside a cell is harmless.
        assert_eq!(one_row(&["a=b", "x-y"]), "a=b,x-y\r\n");
    }

    #[test]
    fn rows_end_with_crlf() {
        let mut csv = CsvWriter::new();
        csv.row(["a", "b"]);
        csv.row(["c", "d"]);
        assert_eq!(csv.finish(), "a,b\r\nc,d\r\n");
    }
}
