//! The attach channel's wire format and its blocking client ends: after `{"op":"attach"}` is
//! answered `{"type":"ok"}`, a shim connection carries [`Frame`]s both ways — stdin, close-stdin
//! and resize from the client; stdout, stderr and finally the exit record from the shim.
//!
//! A frame is a 5-byte header, `[kind: u8][payload length: u32 big-endian]`, then the payload.
//! A tty container's output is one stream, sent as `Stdout`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::{ExitRecord, ShimError};

/// The largest payload a frame may carry; a peer announcing more is broken or hostile.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

const KIND_STDIN: u8 = 0;
const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_EXIT: u8 = 3;
const KIND_CLOSE_STDIN: u8 = 4;
const KIND_RESIZE: u8 = 5;

/// One message on an attach connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Client → shim: bytes for the container's stdin (dropped unless it was started with
    /// `--stdin`).
    Stdin(Vec<u8>),
    /// Client → shim: no more input; the container's stdin pipe is closed once what was sent is
    /// written (a tty keeps its terminal: there, end of input is the user's ^D).
    CloseStdin,
    /// Client → shim: the terminal's new size.
    Resize { rows: u16, cols: u16 },
    /// Shim → client: output (all of a tty's output).
    Stdout(Vec<u8>),
    /// Shim → client: the stderr of a container without a tty.
    Stderr(Vec<u8>),
    /// Shim → client: the container has exited and every byte of its output was sent; the shim
    /// closes the connection after this frame.
    Exit(ExitRecord),
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(b) => (KIND_STDIN, b.into()),
            Frame::CloseStdin => (KIND_CLOSE_STDIN, (&[][..]).into()),
            Frame::Resize { rows, cols } => {
                let mut b = rows.to_be_bytes().to_vec();
                b.extend_from_slice(&cols.to_be_bytes());
                (KIND_RESIZE, b.into())
            }
            Frame::Stdout(b) => (KIND_STDOUT, b.into()),
            Frame::Stderr(b) => (KIND_STDERR, b.into()),
            Frame::Exit(r) => (KIND_EXIT, serde_json::to_vec(r).unwrap_or_default().into()),
        };
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn decode(kind: u8, payload: &[u8]) -> Result<Frame, ShimError> {
        let bad = |what: &str| ShimError::Protocol(format!("attach frame: {what}"));
        Ok(match kind {
            KIND_STDIN => Frame::Stdin(payload.to_vec()),
            KIND_STDOUT => Frame::Stdout(payload.to_vec()),
            KIND_STDERR => Frame::Stderr(payload.to_vec()),
            KIND_CLOSE_STDIN => Frame::CloseStdin,
            KIND_RESIZE => {
                let [r0, r1, c0, c1] =
                    <[u8; 4]>::try_from(payload).map_err(|_| bad("a resize carries 4 bytes"))?;
                Frame::Resize {
                    rows: u16::from_be_bytes([r0, r1]),
                    cols: u16::from_be_bytes([c0, c1]),
                }
            }
            KIND_EXIT => Frame::Exit(
                serde_json::from_slice(payload).map_err(|e| bad(&format!("exit record: {e}")))?,
            ),
            other => return Err(bad(&format!("unknown kind {other}"))),
        })
    }
}

/// Cuts a byte stream into frames, whatever sizes it arrives in.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` until one has arrived; an error leaves the stream
    /// unusable (the caller drops the connection).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ShimError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(ShimError::Protocol(format!(
                "attach frame of {len} bytes is over the {MAX_PAYLOAD}-byte limit"
            )));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let frame = Frame::decode(self.buf[0], &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        frame.map(Some)
    }

    /// Bytes received but not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// An open attach connection (blocking). Split it to read and write from two threads, or take
/// the socket with [`AttachStream::into_unix_stream`] to drive it asynchronously with
/// [`Frame::encode`] and [`FrameDecoder`].
#[derive(Debug)]
pub struct AttachStream {
    stream: UnixStream,
}

impl AttachStream {
    pub(crate) fn new(stream: UnixStream) -> AttachStream {
        AttachStream { stream }
    }

    pub fn into_unix_stream(self) -> UnixStream {
        self.stream
    }

    /// Bounds each blocking read (both halves share it); `None` waits for ever.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// A reader of the shim's frames and a writer of ours, over the same connection.
    pub fn split(self) -> Result<(AttachReader, AttachWriter), ShimError> {
        let writer = AttachWriter {
            stream: self.stream.try_clone()?,
        };
        Ok((
            AttachReader {
                stream: self.stream,
                decoder: FrameDecoder::default(),
            },
            writer,
        ))
    }
}

/// The receiving half of an [`AttachStream`].
#[derive(Debug)]
pub struct AttachReader {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl AttachReader {
    /// Blocks for the next frame; `Ok(None)` when the shim closed the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ShimError> {
        let mut buf = [0u8; 32 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.stream.read(&mut buf) {
                Ok(0) if self.decoder.buffered() == 0 => return Ok(None),
                Ok(0) => return Err(ShimError::Protocol("attach stream cut mid-frame".into())),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The sending half of an [`AttachStream`]; dropping both halves detaches.
#[derive(Debug)]
pub struct AttachWriter {
    stream: UnixStream,
}

impl AttachWriter {
    pub fn send(&mut self, frame: &Frame) -> Result<(), ShimError> {
        self.stream.write_all(&frame.encode())?;
        Ok(())
    }

    pub fn stdin(&mut self, data: &[u8]) -> Result<(), ShimError> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.send(&Frame::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    pub fn close_stdin(&mut self) -> Result<(), ShimError> {
        self.send(&Frame::CloseStdin)
    }

    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ShimError> {
        self.send(&Frame::Resize { rows, cols })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::CloseStdin,
            Frame::Resize {
                rows: 40,
                cols: 132,
            },
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
            Frame::Exit(ExitRecord {
                exit_code: 3,
                signal: None,
                oom_killed: false,
                finished_at: "t".into(),
                pid: 9,
            }),
        ]
    }

    #[test]
    fn frames_round_trip_whatever_the_read_sizes() {
        let frames = all_kinds();
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_into(&mut wire);
        }
        for step in [1, 2, 5, 7, wire.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "read size {step}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut d = FrameDecoder::default();
        d.push(&[9, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.push(&[KIND_STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().unwrap_err().to_string().contains("limit"));
        let mut d = FrameDecoder::default();
        d.push(&[KIND_RESIZE, 0, 0, 0, 1, 7]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.push(&[KIND_EXIT, 0, 0, 0, 2, b'{', b'x']);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn blocking_halves_talk_over_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut reader, _w) = AttachStream::new(a).split().unwrap();
        let (_r, mut writer) = AttachStream::new(b).split().unwrap();
        writer.stdin(b"hello").unwrap();
        writer.resize(3, 4).unwrap();
        writer.close_stdin().unwrap();
        assert_eq!(
            reader.next_frame().unwrap(),
            Some(Frame::Stdin(b"hello".to_vec()))
        );
        assert_eq!(
            reader.next_frame().unwrap(),
            Some(Frame::Resize { rows: 3, cols: 4 })
        );
        assert_eq!(reader.next_frame().unwrap(), Some(Frame::CloseStdin));
        drop((writer, _r));
        assert_eq!(reader.next_frame().unwrap(), None);
    }
}
