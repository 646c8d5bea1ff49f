//! `format/`: how results are written — tables, JSON, times, sizes — independent of any
//! request, so every output shape is unit-testable against a `Vec<u8>`.

pub(crate) mod base64;
pub(crate) mod container;
pub(crate) mod progress;
pub(crate) mod table;
pub(crate) mod time;
pub(crate) mod units;

use std::io::{self, Write};

use serde::Serialize;

/// Inspect output: pretty JSON with Docker's four-space indent, then a newline.
pub(crate) fn write_json_pretty<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    value: &T,
) -> io::Result<()> {
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, formatter);
    value.serialize(&mut ser).map_err(io::Error::other)?;
    writeln!(out)
}

/// `inspect` output for objects that also have a `--pretty` form: the pretty blocks separated
/// by blank lines, or one JSON array of their views.
pub(crate) fn write_inspected<T, V: Serialize>(
    out: &mut (dyn Write + Send),
    found: &[T],
    pretty: bool,
    write_pretty: impl Fn(&mut (dyn Write + Send), &T) -> io::Result<()>,
    view: impl Fn(&T) -> V,
) -> io::Result<()> {
    if pretty {
        for (i, item) in found.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            write_pretty(out, item)?;
        }
        Ok(())
    } else {
        let views: Vec<V> = found.iter().map(view).collect();
        write_json_pretty(out, &views)
    }
}

/// Listing output for programs: one compact JSON object per line, like `docker … ls --format json`.
pub(crate) fn write_json_lines<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row).map_err(io::Error::other)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Which shape a listing is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ListFormat {
    /// Aligned columns for people
    #[default]
    Table,
    /// One JSON object per line for programs
    Json,
}

/// Inspect and info take `--format json` only (their default for programs is already JSON
/// for inspect); templates are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum JsonFormat {
    /// JSON
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_uses_four_spaces() {
        let mut out = Vec::new();
        write_json_pretty(&mut out, &serde_json::json!([{"ID": "x"}])).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[\n    {\n        \"ID\": \"x\"\n    }\n]\n"
        );
    }

    #[test]
    fn json_lines_are_compact() {
        let mut out = Vec::new();
        write_json_lines(
            &mut out,
            &[serde_json::json!({"a": 1}), serde_json::json!({"a": 2})],
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    }
}
