//! `format/progress.rs`: Docker's pull and push progress — on a terminal one line per layer,
//! redrawn in place with a progress bar; elsewhere one line per status change, without bars.

use std::io::{self, Write};

use shoal_api::v1::ImageProgress;

use crate::format::units::human_size;

/// Width of the bar between the brackets, as Docker draws it.
const BAR_WIDTH: u64 = 50;

/// Renders a stream of progress messages.
pub(crate) struct ProgressDisplay {
    tty: bool,
    /// Ids with a line on screen, top to bottom (terminal mode).
    ids: Vec<String>,
}

impl ProgressDisplay {
    pub(crate) fn new(tty: bool) -> ProgressDisplay {
        ProgressDisplay {
            tty,
            ids: Vec::new(),
        }
    }

    pub(crate) fn show(&mut self, out: &mut dyn Write, message: &ImageProgress) -> io::Result<()> {
        let transferring = matches!(message.status.as_str(), "Downloading" | "Pushing");
        if !self.tty {
            // Without a terminal, bars would only repeat the same line with other numbers.
            if !transferring {
                writeln!(out, "{}", plain_line(message))?;
            }
            return Ok(());
        }
        let line = if transferring && message.total > 0 {
            format!(
                "{}: {} {} {}/{}",
                message.id,
                message.status,
                bar(message.current, message.total),
                human_size(message.current),
                human_size(message.total)
            )
        } else {
            plain_line(message)
        };
        if message.id.is_empty() {
            return writeln!(out, "{line}");
        }
        match self.ids.iter().position(|id| *id == message.id) {
            Some(index) => {
                let up = self.ids.len() - index;
                // Up to the layer's line, clear it, rewrite it, and back down.
                write!(out, "\x1b[{up}A\r\x1b[2K{line}\r\x1b[{up}B")?;
            }
            None => {
                self.ids.push(message.id.clone());
                writeln!(out, "{line}")?;
            }
        }
        out.flush()
    }
}

fn plain_line(message: &ImageProgress) -> String {
    if message.id.is_empty() {
        message.status.clone()
    } else {
        format!("{}: {}", message.id, message.status)
    }
}

/// `[=====>      ]`: Docker's bar.
fn bar(current: u64, total: u64) -> String {
    let filled = (current.min(total) * BAR_WIDTH / total.max(1)) as usize;
    let width = BAR_WIDTH as usize;
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    if filled >= width {
        s.push_str(&"=".repeat(width));
    } else {
        s.push_str(&"=".repeat(filled));
        s.push('>');
        s.push_str(&" ".repeat(width - filled - 1));
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, status: &str, current: u64, total: u64) -> ImageProgress {
        ImageProgress {
            id: id.into(),
            status: status.into(),
            current,
            total,
            ..Default::default()
        }
    }

    #[test]
    fn plain_output_has_one_line_per_status_and_no_bars() {
        let mut out = Vec::new();
        let mut display = ProgressDisplay::new(false);
        for m in [
            msg("latest", "Pulling from library/busybox", 0, 0),
            msg("abc", "Pulling fs layer", 0, 0),
            msg("abc", "Downloading", 10, 100),
            msg("abc", "Download complete", 0, 0),
            msg("", "The push refers to repository [r/x]", 0, 0),
        ] {
            display.show(&mut out, &m).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "latest: Pulling from library/busybox\nabc: Pulling fs layer\nabc: Download complete\nThe push refers to repository [r/x]\n"
        );
    }

    #[test]
    fn terminal_output_redraws_the_layers_line() {
        let mut out = Vec::new();
        let mut display = ProgressDisplay::new(true);
        display
            .show(&mut out, &msg("a", "Pulling fs layer", 0, 0))
            .unwrap();
        display
            .show(&mut out, &msg("b", "Pulling fs layer", 0, 0))
            .unwrap();
        out.clear();
        display
            .show(&mut out, &msg("a", "Downloading", 500_000, 1_000_000))
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("\x1b[2A\r\x1b[2Ka: Downloading [="),
            "{text:?}"
        );
        assert!(text.contains("=>"), "{text:?}");
        assert!(text.ends_with("500kB/1MB\r\x1b[2B"), "{text:?}");
        assert_eq!(bar(0, 10).len(), 52);
        assert_eq!(bar(10, 10), format!("[{}]", "=".repeat(50)));
    }
}
