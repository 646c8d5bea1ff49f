//! [`ChunkReader`]: the blocking `Read` end of byte chunks that async gRPC handlers receive, for
//! the blocking image and filesystem code (load, import, copy into a container).

use std::io::Read;

use tokio::sync::mpsc;

/// A blocking reader over chunks sent from async code; ends when the sender is dropped.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
}

impl ChunkReader {
    pub(crate) fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        ChunkReader {
            rx,
            current: Vec::new(),
            position: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.position >= self.current.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.position = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}
