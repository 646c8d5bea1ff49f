//! Attach and exec sessions: a gRPC client's stdin, resizes and close-stdin carried to a
//! container (through its shim's attach channel) or to an exec (through the `shoal runtime exec`
//! helper), and their output and exit code carried back.
//!
//! An attach that arrives before its container runs (`run` attaches, then starts) waits in
//! [`PendingAttaches`]; `start` opens its shim connection after the shim exists and before the
//! container runs, so not a byte of early output (a shell's first prompt) is missed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::v1::{ExecSpec, StdioInput, StdioOutput, TerminalSize, stdio_input, stdio_output};
use shoal_runtime::ShimClient;
use shoal_runtime::shim::attach::{AttachStream, Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::{Engine, EngineError};

pub(crate) type OutputStream =
    Pin<Box<dyn Stream<Item = Result<StdioOutput, Status>> + Send + 'static>>;
type Outbox = mpsc::Sender<Result<StdioOutput, Status>>;

/// How long an attach waits for its container to start.
const START_WAIT: Duration = Duration::from_secs(60);

/// How long, after the exit frame, the engine may take to record the exit before the session
/// reports the shim's code on its own.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Attaches waiting for their container's next start, by container ID.
#[derive(Default)]
pub(crate) struct PendingAttaches(
    std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<AttachStream>>>>,
);

impl PendingAttaches {
    fn add(&self, id: &str) -> oneshot::Receiver<AttachStream> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Clients that gave up (or containers removed meanwhile) leave closed senders behind.
        map.retain(|_, waiting| {
            waiting.retain(|w| !w.is_closed());
            !waiting.is_empty()
        });
        map.entry(id.to_owned()).or_default().push(tx);
        rx
    }

    fn take(&self, id: &str) -> Vec<oneshot::Sender<AttachStream>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id).unwrap_or_default()
    }
}

/// Where an attach gets its shim connection.
enum Target {
    Running(Arc<ShimClient>),
    NextStart(oneshot::Receiver<AttachStream>),
}

impl Engine {
    /// Hands every attach waiting for container `id` a connection to its (new) shim.
    pub(crate) async fn serve_pending_attaches(&self, id: &str, shim: &Arc<ShimClient>) {
        for waiting in self.pending_attaches.take(id) {
            if waiting.is_closed() {
                continue;
            }
            let shim = shim.clone();
            match tokio::task::spawn_blocking(move || shim.attach()).await {
                Ok(Ok(stream)) => {
                    let _ = waiting.send(stream);
                }
                Ok(Err(error)) => {
                    tracing::warn!(container = %id, %error, "attaching to the shim failed");
                }
                Err(error) => tracing::warn!(container = %id, %error, "attach task failed"),
            }
        }
    }

    /// The running shim of `id`, or a place in line for its next start.
    async fn attach_target(&self, id: &str) -> Result<Target, EngineError> {
        let table = self.containers.lock().await;
        let entry = table
            .get(id)
            .ok_or_else(|| EngineError::NoSuchContainer(id.to_owned()))?;
        // Decided under the table lock, which `start` holds when it sets the shim: an attach
        // either sees the shim or is in line before `start` serves the line.
        Ok(match &entry.shim {
            Some(shim) => Target::Running(shim.clone()),
            None => Target::NextStart(self.pending_attaches.add(id)),
        })
    }
}

/// `Attach`: the container's live output, our stdin and resizes to it, its exit code last.
pub(crate) async fn attach(
    engine: Arc<Engine>,
    input: Streaming<StdioInput>,
    reference: &str,
) -> Result<OutputStream, Status> {
    let id = engine.resolve(reference).await?;
    let target = engine.attach_target(&id).await?;
    let exit_rx = engine
        .exit_watch(&id)
        .await
        .ok_or_else(|| EngineError::NoSuchContainer(id.clone()))?;
    let guard = engine.attach_guard(&id).await;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let _guard = guard;
        let stream = match target {
            Target::Running(shim) => match tokio::task::spawn_blocking(move || shim.attach()).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let _ = tx.send(Err(EngineError::from(error).into())).await;
                    return;
                }
                Err(error) => {
                    let _ = tx.send(Err(Status::internal(error.to_string()))).await;
                    return;
                }
            },
            Target::NextStart(next) => {
                tokio::select! {
                    stream = tokio::time::timeout(START_WAIT, next) => match stream {
                        Ok(Ok(stream)) => stream,
                        // Removed, failed to start, or never started.
                        _ => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        };
        relay_attach(stream, input, tx, exit_rx).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Terminal sizes are 16-bit in the kernel; larger values are clamped, not wrapped.
fn clamp(size: &TerminalSize) -> (u16, u16) {
    let c = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    (c(size.rows), c(size.cols))
}

/// The frame a client's message becomes on an attach channel, if any.
fn attach_frame(message: StdioInput) -> Option<Frame> {
    match message.input? {
        stdio_input::Input::Stdin(data) => Some(Frame::Stdin(data)),
        stdio_input::Input::CloseStdin(true) => Some(Frame::CloseStdin),
        stdio_input::Input::Resize(size) => {
            let (rows, cols) = clamp(&size);
            Some(Frame::Resize { rows, cols })
        }
        _ => None,
    }
}

/// Carries one attach between the client and the shim until the container exits (exit code
/// sent) or the client goes away (detached: the container runs on).
async fn relay_attach(
    stream: AttachStream,
    mut input: Streaming<StdioInput>,
    tx: Outbox,
    mut exit_rx: watch::Receiver<Option<i32>>,
) {
    let socket = stream.into_unix_stream();
    let socket = match socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(socket))
    {
        Ok(socket) => socket,
        Err(error) => {
            let _ = tx.send(Err(Status::internal(error.to_string()))).await;
            return;
        }
    };
    let (mut from_shim, mut to_shim) = socket.into_split();
    // Its own task, so a container that does not read its stdin cannot hold up its output.
    let forward = tokio::spawn(async move {
        while let Some(Ok(message)) = input.next().await {
            if let Some(frame) = attach_frame(message)
                && to_shim.write_all(&frame.encode()).await.is_err()
            {
                break;
            }
        }
        // The client's input ended, not the session: dropping the write half would shut the
        // connection down, so it is kept until the session ends and aborts this task.
        std::future::pending::<()>().await;
        drop(to_shim);
    });
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let exit = 'session: loop {
        let n = tokio::select! {
            read = from_shim.read(&mut buf) => match read {
                Ok(0) | Err(_) => break 'session None,
                Ok(n) => n,
            },
            // The client went away: a detach, and the container runs on.
            _ = tx.closed() => break 'session None,
        };
        decoder.push(&buf[..n]);
        loop {
            let output = match decoder.next_frame() {
                Ok(Some(Frame::Stdout(bytes))) => stdio_output::Output::Stdout(bytes),
                Ok(Some(Frame::Stderr(bytes))) => stdio_output::Output::Stderr(bytes),
                Ok(Some(Frame::Exit(record))) => break 'session Some(record.exit_code),
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "attach stream from the shim");
                    break 'session None;
                }
            };
            let message = StdioOutput {
                output: Some(output),
            };
            if tx.send(Ok(message)).await.is_err() {
                break 'session None;
            }
        }
    };
    forward.abort();
    if tx.is_closed() {
        return;
    }
    let Some(shim_code) = exit else {
        let _ = tx
            .send(Err(Status::unavailable(
                "lost the connection to the container's output",
            )))
            .await;
        return;
    };
    // The engine's record is the truth (`inspect` right after agrees with it); the shim's code
    // stands in if recording takes too long, or `--rm` removed the container meanwhile.
    let settled = tokio::time::timeout(SETTLE_WAIT, async {
        loop {
            if let Some(code) = *exit_rx.borrow_and_update() {
                return Some(code);
            }
            if exit_rx.changed().await.is_err() {
                return *exit_rx.borrow();
            }
        }
    })
    .await
    .ok()
    .flatten();
    let code = settled.unwrap_or(shim_code);
    let _ = tx
        .send(Ok(StdioOutput {
            output: Some(stdio_output::Output::ExitCode(code)),
        }))
        .await;
}

/// `Exec`: a process in a running container through the `shoal runtime exec` helper. With a
/// tty the helper's stdin carries attach frames (input and resizes) and its stdout is the
/// terminal's output; without one its three streams are the process's.
pub(crate) async fn exec(
    engine: Arc<Engine>,
    mut input: Streaming<StdioInput>,
    spec: ExecSpec,
) -> Result<OutputStream, Status> {
    if spec.cmd.is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    let (id, _shim) = engine.shim(&spec.container).await?;
    let mut child = exec_command(&engine, &id, &spec)
        .spawn()
        .map_err(|e| Status::internal(format!("cannot start the exec helper: {e}")))?;
    let mut stdin = child.stdin.take();
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Status::internal("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Status::internal("no stderr"))?;
    let (tx, rx) = mpsc::channel::<Result<StdioOutput, Status>>(256);
    let (tty, open_stdin) = (spec.tty, spec.open_stdin);
    tokio::spawn(async move {
        while let Some(Ok(message)) = input.next().await {
            let bytes = match message.input {
                Some(stdio_input::Input::Stdin(data)) if !open_stdin => {
                    drop(data);
                    continue;
                }
                Some(stdio_input::Input::Stdin(data)) if tty => Frame::Stdin(data).encode(),
                Some(stdio_input::Input::Stdin(data)) => data,
                Some(stdio_input::Input::Resize(size)) if tty => {
                    let (rows, cols) = clamp(&size);
                    Frame::Resize { rows, cols }.encode()
                }
                // A terminal's input ends with a ^D typed on it, as in Docker.
                Some(stdio_input::Input::CloseStdin(true)) if !tty => {
                    stdin = None;
                    continue;
                }
                _ => continue,
            };
            if let Some(pipe) = stdin.as_mut()
                && pipe.write_all(&bytes).await.is_err()
            {
                stdin = None;
            }
        }
    });
    let out_tx = tx.clone();
    let pump_out = tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        while let Ok(n) = stdout.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let message = StdioOutput {
                output: Some(stdio_output::Output::Stdout(buffer[..n].to_vec())),
            };
            if out_tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
    });
    let err_tx = tx.clone();
    let pump_err = tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let message = StdioOutput {
                output: Some(stdio_output::Output::Stderr(buffer[..n].to_vec())),
            };
            if err_tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = pump_out.await;
        let _ = pump_err.await;
        let code = match status {
            Ok(status) => status.code().unwrap_or(255),
            Err(_) => 255,
        };
        let _ = tx
            .send(Ok(StdioOutput {
                output: Some(stdio_output::Output::ExitCode(code)),
            }))
            .await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// `shoal runtime --root R exec …`: processes join a container from a single-threaded helper,
/// never from the async daemon.
fn exec_command(engine: &Engine, id: &str, spec: &ExecSpec) -> tokio::process::Command {
    use std::process::Stdio;
    let mut command = tokio::process::Command::new(engine.shoal_binary());
    command
        .arg("runtime")
        .arg("--root")
        .arg(engine.runtime_root())
        .arg("exec");
    if spec.tty {
        command.arg("--tty").arg("--stdin-frames");
        if let Some(size) = &spec.console_size {
            let (rows, cols) = clamp(size);
            if rows > 0 && cols > 0 {
                command.arg("--console-size").arg(format!("{rows}x{cols}"));
            }
        }
    }
    if !spec.working_dir.is_empty() {
        command.arg("--cwd").arg(&spec.working_dir);
    }
    for env in &spec.env {
        command.arg("--env").arg(env);
    }
    if !spec.user.is_empty() {
        command.arg("--user").arg(&spec.user);
    }
    command
        .arg(id)
        .arg("--")
        .args(&spec.cmd)
        // A tty's resizes travel on stdin, so it is open even without `-i`.
        .stdin(if spec.open_stdin || spec.tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_become_frames() {
        let message = |input| StdioInput { input: Some(input) };
        assert_eq!(
            attach_frame(message(stdio_input::Input::Stdin(b"ls\n".to_vec()))),
            Some(Frame::Stdin(b"ls\n".to_vec()))
        );
        assert_eq!(
            attach_frame(message(stdio_input::Input::CloseStdin(true))),
            Some(Frame::CloseStdin)
        );
        assert_eq!(
            attach_frame(message(stdio_input::Input::Resize(TerminalSize {
                rows: 70_000,
                cols: 80
            }))),
            Some(Frame::Resize {
                rows: u16::MAX,
                cols: 80
            })
        );
        assert_eq!(
            attach_frame(message(stdio_input::Input::CloseStdin(false))),
            None
        );
        assert_eq!(attach_frame(StdioInput { input: None }), None);
    }

    #[test]
    fn pending_attaches_are_served_once_and_pruned() {
        let pending = PendingAttaches::default();
        let first = pending.add("c1");
        drop(first);
        let _second = pending.add("c1");
        // The dropped one was pruned when the second was added.
        assert_eq!(pending.take("c1").len(), 1);
        assert!(pending.take("c1").is_empty());
    }
}
