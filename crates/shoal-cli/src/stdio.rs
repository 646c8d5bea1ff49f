//! `stdio.rs`: the process's standard streams as the verbs see them (buffers and flags in
//! tests), the threads that read stdin and input files without blocking the runtime, and the
//! terminal: raw mode while attached with `-it`, and its size for resize messages.

use std::io::{self, Read};
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use shoal_api::v1::{StdioInput, TerminalSize, stdio_input};
use tokio::sync::{mpsc, oneshot};

use crate::attach::DetachKeys;
use crate::commands::Out;

/// Where a verb reads its standard input from.
pub(crate) enum Input {
    /// The process's stdin.
    Process,
    /// Fixed bytes (tests).
    #[cfg(test)]
    Bytes(Vec<u8>),
    /// Any reader, once (tests).
    #[cfg(test)]
    Reader(Option<Box<dyn Read + Send>>),
}

impl Input {
    /// A reader for the input; `Bytes` hands its contents over once.
    pub(crate) fn take_reader(&mut self) -> Box<dyn Read + Send> {
        match self {
            Input::Process => Box::new(io::stdin()),
            #[cfg(test)]
            Input::Bytes(bytes) => Box::new(io::Cursor::new(std::mem::take(bytes))),
            #[cfg(test)]
            Input::Reader(reader) => reader.take().unwrap_or_else(|| Box::new(io::empty())),
        }
    }

    /// Whether this is the process's own stdin (only then can the terminal be put in raw mode).
    pub(crate) fn is_process(&self) -> bool {
        matches!(self, Input::Process)
    }
}

/// The standard streams of one verb.
pub(crate) struct Stdio<'a> {
    pub(crate) out: Out<'a>,
    pub(crate) err: Out<'a>,
    pub(crate) input: Input,
    /// Stdin is a terminal.
    pub(crate) stdin_tty: bool,
    /// Stdout is a terminal.
    pub(crate) stdout_tty: bool,
}

/// Copies `reader` into `tx` as stdin messages on a plain thread — a blocking read of a
/// terminal cannot be cancelled, and a detached thread does not hold up the process's exit the
/// way a runtime's blocking task would. End of input (or a read error) closes the process's
/// stdin when `close_at_end`; the thread ends once the stream is gone. With `detach`, the
/// detach keys end the forwarding instead (stdin stays open) and say so on the channel.
pub(crate) fn forward_stdin(
    mut reader: Box<dyn Read + Send>,
    tx: mpsc::Sender<StdioInput>,
    close_at_end: bool,
    mut detach: Option<(DetachKeys, oneshot::Sender<()>)>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let (bytes, detached) = match detach.as_mut() {
                Some((keys, _)) => keys.scan(&buf[..n]),
                None => (buf[..n].to_vec(), false),
            };
            if !bytes.is_empty() {
                let message = StdioInput {
                    input: Some(stdio_input::Input::Stdin(bytes)),
                };
                if tx.blocking_send(message).is_err() {
                    return;
                }
            }
            if detached && let Some((_, done)) = detach.take() {
                let _ = done.send(());
                return;
            }
        }
        if close_at_end {
            let _ = tx.blocking_send(StdioInput {
                input: Some(stdio_input::Input::CloseStdin(true)),
            });
        }
    });
}

/// Reads `reader` on a plain thread in chunks of exactly `chunk_size` bytes (the last one
/// shorter), so uploads are framed the same whatever the source's own read sizes. A read
/// error is passed on and ends the stream; so does end of input.
pub(crate) fn read_chunks(
    mut reader: Box<dyn Read + Send>,
    chunk_size: usize,
) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(2);
    std::thread::spawn(move || {
        loop {
            let mut chunk = vec![0u8; chunk_size];
            let mut filled = 0;
            while filled < chunk_size {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let _ = tx.blocking_send(Err(err));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            chunk.truncate(filled);
            let last = filled < chunk_size;
            if tx.blocking_send(Ok(chunk)).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// A terminal in raw mode until dropped, when its previous settings come back.
pub(crate) struct RawMode<F: AsFd> {
    fd: F,
    saved: Termios,
}

impl<F: AsFd> RawMode<F> {
    pub(crate) fn enable(fd: F) -> io::Result<Self> {
        let saved = termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl<F: AsFd> Drop for RawMode<F> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal on stdout, else on stdin; `None` when neither is one.
pub(crate) fn terminal_size() -> Option<TerminalSize> {
    winsize::of(io::stdout()).or_else(|| winsize::of(io::stdin()))
}

mod winsize {
    // The one ioctl nix offers no safe wrapper for.
    #![allow(unsafe_code)]

    use std::os::fd::{AsFd, AsRawFd};

    use nix::libc;
    use shoal_api::v1::TerminalSize;

    /// `TIOCGWINSZ` on `fd`: rows and columns, or `None` if it is not a terminal.
    pub(crate) fn of(fd: impl AsFd) -> Option<TerminalSize> {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live,
        // properly aligned local; the descriptor is borrowed for the duration of the call.
        let result =
            unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &raw mut size) };
        (result == 0 && size.ws_row > 0 && size.ws_col > 0).then(|| TerminalSize {
            rows: u32::from(size.ws_row),
            cols: u32::from(size.ws_col),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::pty::{Winsize, openpty};
    use nix::sys::termios::LocalFlags;

    #[test]
    fn raw_mode_is_restored_and_sizes_are_read() {
        let size = Winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).unwrap();
        assert_eq!(
            winsize::of(&pty.slave),
            Some(TerminalSize {
                rows: 33,
                cols: 101
            })
        );
        let canonical = |fd| {
            termios::tcgetattr(fd)
                .unwrap()
                .local_flags
                .contains(LocalFlags::ICANON)
        };
        assert!(canonical(&pty.slave));
        {
            let _raw = RawMode::enable(&pty.slave).unwrap();
            assert!(!canonical(&pty.slave));
        }
        assert!(canonical(&pty.slave));
        // Not a terminal: no size, and raw mode is refused.
        let file = tempfile::tempfile().unwrap();
        assert_eq!(winsize::of(&file), None);
        assert!(RawMode::enable(&file).is_err());
    }

    #[tokio::test]
    async fn chunks_are_full_except_the_last() {
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        // A reader that hands out at most 7 bytes a call, like a slow pipe.
        struct Trickle(io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(7);
                self.0.read(&mut buf[..n])
            }
        }
        let mut rx = read_chunks(Box::new(Trickle(io::Cursor::new(data.clone()))), 1000);
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.unwrap();
            sizes.push(chunk.len());
            all.extend(chunk);
        }
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(all, data);

        let mut rx = read_chunks(Box::new(io::empty()), 1000);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn stdin_ends_with_close() {
        let (tx, mut rx) = mpsc::channel(4);
        forward_stdin(Box::new(io::Cursor::new(b"hi".to_vec())), tx, true, None);
        let first = rx.recv().await.unwrap().input.unwrap();
        assert_eq!(first, stdio_input::Input::Stdin(b"hi".to_vec()));
        let second = rx.recv().await.unwrap().input.unwrap();
        assert_eq!(second, stdio_input::Input::CloseStdin(true));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn detach_keys_end_forwarding_without_closing_stdin() {
        let (tx, mut rx) = mpsc::channel(4);
        let (done, detached) = oneshot::channel();
        let keys = DetachKeys::new(vec![16, 17]).unwrap();
        let typed = vec![b'l', b's', 16, 17, b'x'];
        forward_stdin(
            Box::new(io::Cursor::new(typed)),
            tx,
            true,
            Some((keys, done)),
        );
        let first = rx.recv().await.unwrap().input.unwrap();
        assert_eq!(first, stdio_input::Input::Stdin(b"ls".to_vec()));
        detached.await.unwrap();
        // Nothing after the keys, and no close_stdin.
        assert!(rx.recv().await.is_none());
    }
}
