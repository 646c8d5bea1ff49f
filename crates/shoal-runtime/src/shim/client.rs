//! The daemon's side of the shim socket. Blocking calls (the daemon runs them on a blocking
//! thread); each call is one connection, so a client is only a socket path and re-adopting a shim
//! after a daemon restart is `ShimClient::connect(path)`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::attach::AttachStream;
use super::{ExitRecord, Request, Response, ShimError, ShimState};
use crate::cgroups::Stats;

/// How long a non-waiting call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A handle on one shim.
#[derive(Clone, Debug)]
pub struct ShimClient {
    socket: PathBuf,
}

impl ShimClient {
    /// Connects to the shim at `socket` and checks it answers.
    pub fn connect(socket: impl AsRef<Path>) -> Result<ShimClient, ShimError> {
        let c = ShimClient {
            socket: socket.as_ref().to_owned(),
        };
        c.state()?;
        Ok(c)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call(&self, req: &Request, timeout: Option<Duration>) -> Result<Response, ShimError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| ShimError::Connect {
            path: self.socket.clone(),
            source: e,
        })?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut line = serde_json::to_vec(req).map_err(|e| ShimError::Protocol(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        match reader.read_line(&mut answer) {
            Ok(0) => return Err(ShimError::Protocol("shim closed the connection".into())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ShimError::Timeout);
            }
            Err(e) => return Err(e.into()),
        }
        match serde_json::from_str(&answer) {
            Ok(Response::Error { message }) => Err(ShimError::Remote(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(ShimError::Protocol(format!("bad answer {answer:?}: {e}"))),
        }
    }

    fn expect_ok(&self, req: Request) -> Result<(), ShimError> {
        match self.call(&req, Some(CALL_TIMEOUT))? {
            Response::Ok => Ok(()),
            other => Err(ShimError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Lets the container run its program; fails with the exec error if it could not.
    pub fn start(&self) -> Result<(), ShimError> {
        self.expect_ok(Request::Start)
    }

    pub fn state(&self) -> Result<ShimState, ShimError> {
        match self.call(&Request::State, Some(CALL_TIMEOUT))? {
            Response::State(s) => Ok(s),
            other => Err(ShimError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Signals the container's init.
    pub fn kill(&self, signal: i32) -> Result<(), ShimError> {
        self.expect_ok(Request::Kill { signal })
    }

    /// Blocks until the container has exited.
    pub fn wait(&self) -> Result<ExitRecord, ShimError> {
        match self.call(&Request::Wait, None)? {
            Response::Exit(r) => Ok(r),
            other => Err(ShimError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Like [`ShimClient::wait`], giving up after `timeout` with `Ok(None)`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitRecord>, ShimError> {
        match self.call(&Request::Wait, Some(timeout.max(Duration::from_millis(1)))) {
            Ok(Response::Exit(r)) => Ok(Some(r)),
            Ok(other) => Err(ShimError::Protocol(format!("unexpected answer {other:?}"))),
            Err(ShimError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `docker stop`: `signal`, then SIGKILL after `grace`.
    pub fn stop(&self, signal: i32, grace: Duration) -> Result<ExitRecord, ShimError> {
        let started = Instant::now();
        match self.kill(signal) {
            Ok(()) => {}
            // Already gone: the record is what the caller wants.
            Err(ShimError::Remote(_)) => return self.wait(),
            Err(e) => return Err(e),
        }
        if let Some(r) = self.wait_timeout(grace.saturating_sub(started.elapsed()))? {
            return Ok(r);
        }
        match self.kill(libc::SIGKILL) {
            Ok(()) | Err(ShimError::Remote(_)) => {}
            Err(e) => return Err(e),
        }
        self.wait()
    }

    /// Opens the attach channel: live output from now on, and stdin and resizes to send (see
    /// [`super::attach`]). Any number may be open; the container is unaffected by their coming
    /// and going.
    pub fn attach(&self) -> Result<AttachStream, ShimError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| ShimError::Connect {
            path: self.socket.clone(),
            source: e,
        })?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut line = serde_json::to_vec(&Request::Attach).unwrap_or_default();
        line.push(b'\n');
        stream.write_all(&line)?;
        // Byte by byte: frames may follow the answer at once, and none may be read ahead here.
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Err(ShimError::Protocol("shim closed the connection".into())),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if answer.len() > 64 * 1024 => {
                    return Err(ShimError::Protocol("overlong answer".into()));
                }
                Ok(_) => answer.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ShimError::Timeout);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match serde_json::from_slice(&answer) {
            Ok(Response::Ok) => {}
            Ok(Response::Error { message }) => return Err(ShimError::Remote(message)),
            Ok(other) => {
                return Err(ShimError::Protocol(format!("unexpected answer {other:?}")));
            }
            Err(e) => return Err(ShimError::Protocol(format!("bad answer: {e}"))),
        }
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(AttachStream::new(stream))
    }

    /// Sets the tty size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError> {
        self.expect_ok(Request::Resize { rows, cols })
    }

    pub fn stats(&self) -> Result<Stats, ShimError> {
        match self.call(&Request::Stats, Some(CALL_TIMEOUT))? {
            Response::Stats(s) => Ok(s),
            other => Err(ShimError::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    pub fn pause(&self) -> Result<(), ShimError> {
        self.expect_ok(Request::Pause)
    }

    pub fn resume(&self) -> Result<(), ShimError> {
        self.expect_ok(Request::Resume)
    }

    /// Ends the shim: it cleans up the container (killing it first if `force`) and its state
    /// directory, then exits.
    pub fn shutdown(&self, force: bool) -> Result<(), ShimError> {
        self.expect_ok(Request::Shutdown { force })
    }
}
