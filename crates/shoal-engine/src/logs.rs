//! Reading a container's json-file log (the live file and its rotated predecessors), for
//! `logs`, `logs --tail` and `logs -f`.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_api::v1::LogEntry;

#[derive(Deserialize)]
struct Line {
    log: String,
    stream: String,
    time: String,
}

fn to_entry(text: &str) -> Option<LogEntry> {
    let line: Line = serde_json::from_str(text).ok()?;
    Some(LogEntry {
        stream: line.stream,
        line: line.log.into_bytes(),
        time: crate::parse_rfc3339(&line.time),
    })
}

/// The entries of every complete line `reader` holds, and the bytes they took. A line
/// without its newline is still being written: it is left for the next read.
fn complete_lines(mut reader: impl BufRead) -> (Vec<LogEntry>, u64) {
    let mut entries = Vec::new();
    let mut consumed = 0u64;
    let mut text = String::new();
    loop {
        text.clear();
        match reader.read_line(&mut text) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !text.ends_with('\n') {
                    break;
                }
                consumed += n as u64;
                if let Some(entry) = to_entry(text.trim_end()) {
                    entries.push(entry);
                }
            }
        }
    }
    (entries, consumed)
}

/// The log files of `live`, oldest first (`<log>.N` … `<log>.1`, `<log>`).
fn files(live: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (live.parent(), live.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(n) = file
                    .strip_prefix(&prefix)
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    rotated.push((n, entry.path()));
                }
            }
        }
    }
    rotated.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    all.push(live.to_owned());
    all
}

/// Every entry written so far (the last `tail` when `tail >= 0`), and the live file's
/// length at that point, from where a follower continues.
pub(crate) fn read_existing(live: &Path, tail: i64) -> (Vec<LogEntry>, u64) {
    let mut entries = Vec::new();
    let mut offset = 0;
    for path in files(live) {
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let (found, consumed) = complete_lines(BufReader::new(file));
        entries.extend(found);
        if path == live {
            offset = consumed;
        }
    }
    if tail >= 0 && entries.len() > tail as usize {
        entries.drain(..entries.len() - tail as usize);
    }
    (entries, offset)
}

/// Entries appended to the live file after `offset`; returns them and the new offset. When
/// the file was rotated (it is now shorter than `offset`) reading restarts at its beginning.
pub(crate) fn read_from(live: &Path, offset: u64) -> (Vec<LogEntry>, u64) {
    let Ok(mut file) = std::fs::File::open(live) else {
        return (Vec::new(), offset);
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if length < offset { 0 } else { offset };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return (Vec::new(), offset);
    }
    let (entries, consumed) = complete_lines(BufReader::new(file));
    let position = start + consumed;
    (entries, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, stream: &str) -> String {
        format!(
            "{{\"log\":\"{text}\\n\",\"stream\":\"{stream}\",\"time\":\"2026-11-23T10:00:00.123456789Z\"}}\n"
        )
    }

    #[test]
    fn reads_rotated_files_in_order_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("c-json.log");
        std::fs::write(dir.path().join("c-json.log.2"), line("one", "stdout")).unwrap();
        std::fs::write(dir.path().join("c-json.log.1"), line("two", "stderr")).unwrap();
        std::fs::write(
            &live,
            format!("{}{{\"log\":\"partial", line("three", "stdout")),
        )
        .unwrap();
        let (all, offset) = read_existing(&live, -1);
        let texts: Vec<String> = all
            .iter()
            .map(|e| String::from_utf8_lossy(&e.line).into_owned())
            .collect();
        assert_eq!(texts, ["one\n", "two\n", "three\n"]);
        assert_eq!(all[1].stream, "stderr");
        assert_eq!(all[0].time.unwrap().nanos, 123_456_789);
        let (last, _) = read_existing(&live, 1);
        assert_eq!(last.len(), 1);

        // The partial line is picked up once complete.
        let mut text = std::fs::read_to_string(&live).unwrap();
        text.push_str("\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-23T10:00:01Z\"}\n");
        std::fs::write(&live, text).unwrap();
        let (more, _) = read_from(&live, offset);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].line, b"partial\n");
    }
}
