//! The json-file log: one `{"log","stream","time"}` object per line, lines split at 16 KiB like
//! Docker's copier (a partial chunk has no trailing newline), size-based rotation
//! (`<log>`, `<log>.1`, ... `<log>.<max_files-1>`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Docker's copier buffer: a longer line is logged as 16 KiB partial chunks.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Serialize)]
struct Entry<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

/// Appends entries to the log file, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    max_size: Option<u64>,
    max_files: u32,
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogWriter {
    pub fn open(path: &Path, max_size: Option<u64>, max_files: u32) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_owned(),
            max_size,
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    /// Writes one entry; `chunk` is a line with its `\n`, or a partial chunk without.
    pub fn write(&mut self, stream: &str, chunk: &[u8], time: &str) -> io::Result<()> {
        let text = String::from_utf8_lossy(chunk);
        let mut line = serde_json::to_vec(&Entry {
            log: &text,
            stream,
            time,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        if let Some(max) = self.max_size
            && self.size > 0
            && self.size + line.len() as u64 > max
        {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let numbered = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        for i in (1..self.max_files - 1).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Cuts a byte stream into log chunks: whole lines, or [`MAX_LINE`] bytes of a longer one.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            let window = &rest[..rest.len().min(MAX_LINE)];
            if let Some(pos) = window.iter().position(|b| *b == b'\n') {
                emit(&rest[..=pos]);
                start += pos + 1;
            } else if rest.len() >= MAX_LINE {
                emit(&rest[..MAX_LINE]);
                start += MAX_LINE;
            } else {
                break;
            }
        }
        self.buf.drain(..start);
        if self.buf.capacity() > 4 * MAX_LINE && self.buf.len() < MAX_LINE {
            self.buf.shrink_to(MAX_LINE);
        }
    }

    /// Emits what is left (at EOF) as a partial chunk.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
        self.buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in input {
            s.push(chunk, |c| out.push(c.to_vec()));
        }
        s.flush(|c| out.push(c.to_vec()));
        out
    }

    #[test]
    fn splits_lines_and_long_chunks() {
        assert_eq!(
            split(&[b"a\nb", b"c\n", b"tail"]),
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"tail".to_vec()]
        );
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_LINE);
        assert!(!out[0].ends_with(b"\n"));
        assert_eq!(out[2], [vec![b'x'; 10], vec![b'\n']].concat());
    }

    #[test]
    fn writes_json_lines_and_rotates() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.log");
        let mut w = LogWriter::open(&path, Some(200), 3).unwrap();
        for i in 0..20 {
            w.write(
                "stdout",
                format!("line {i}\n").as_bytes(),
                "2024-01-01T00:00:00.000000000Z",
            )
            .unwrap();
        }
        let live = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(live.lines().next().unwrap()).unwrap();
        assert_eq!(first["stream"], "stdout");
        assert!(first["log"].as_str().unwrap().ends_with('\n'));
        assert!(live.len() <= 200);
        assert!(d.path().join("c.log.1").exists());
        assert!(d.path().join("c.log.2").exists());
        assert!(!d.path().join("c.log.3").exists());
        // The newest lines are in the live file, the oldest kept ones in .2.
        assert!(live.contains("line 19"));
        let oldest = std::fs::read_to_string(d.path().join("c.log.2")).unwrap();
        assert!(!oldest.contains("line 19"));

        let mut one = LogWriter::open(&d.path().join("one.log"), Some(100), 1).unwrap();
        for _ in 0..10 {
            one.write("stderr", b"0123456789\n", "t").unwrap();
        }
        assert!(std::fs::metadata(d.path().join("one.log")).unwrap().len() <= 100);
        assert!(!d.path().join("one.log.1").exists());
    }
}
