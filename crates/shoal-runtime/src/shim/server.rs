//! The shim process itself: daemonize, create the container, then one single-threaded `poll`
//! loop over a signalfd (SIGCHLD: reap), the container's output (to the json-file log and every
//! attached client), the container's stdin (what attached clients type), and the control socket;
//! record `exit.json` when the container is gone, linger for `shutdown`.
//!
//! Every socket and pipe the loop writes is non-blocking with a buffer in front: a slow attached
//! client holds back the container's output (as Docker's attach does) rather than the shim, and
//! one that makes no progress for [`ATTACH_STALL`] is dropped so the container cannot wedge.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};

use super::attach::{Frame, FrameDecoder};
use super::log::{LineSplitter, LogWriter};
use super::{ExitRecord, Request, Response, ShimArgs, ShimState};
use crate::container::{self, Bundle, Container, Stdio};

/// Output streams are drained for this long after the init exits, in case a straggler (an exec
/// session, say) still holds them; then the exit is recorded regardless.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Output waiting for an attached client past this size pauses reading the container's output.
const ATTACH_HIGH_WATER: usize = 256 * 1024;

/// An attached client whose pending output has not moved for this long is disconnected.
const ATTACH_STALL: Duration = Duration::from_secs(10);

/// Input waiting for the container's stdin past this size pauses reading attached clients.
const STDIN_HIGH_WATER: usize = 64 * 1024;

/// Runs the shim; returns the process exit code.
pub fn run(args: ShimArgs) -> i32 {
    // Daemonize: the daemon's Command child exits at once, the shim is reparented away from the
    // daemon and survives it. Single-threaded here, so fork is sound.
    // SAFETY: no other thread exists in this process yet; the child continues normally.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => {
            // SAFETY: leave without running destructors that the child's copy still owns.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Child) => {}
        Err(e) => {
            println!("error fork: {e}");
            return 1;
        }
    }
    let _ = setsid();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        println!("error set child subreaper: {e}");
        return 1;
    }
    match Shim::setup(&args) {
        Ok(mut shim) => {
            println!("ok {} {}", std::process::id(), shim.container.pid());
            let _ = std::io::stdout().flush();
            detach_stdio();
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
            trim_clean_file_pages();
            shim.run()
        }
        Err(e) => {
            println!("error {}", e.replace('\n', " "));
            1
        }
    }
}

/// Creating the container touched most of this binary (spec parsing, seccomp, mounts) and none of
/// it runs again. Dropping our mappings of clean, read-only file pages lets the idle loop keep only
/// the pages it really uses (they fault back in from the page cache, unchanged, when needed).
/// Mappings holding any anonymous (copy-on-write) page, such as RELRO, are left alone.
fn trim_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut ranges = Vec::new();
    let mut current: Option<(usize, usize, bool)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            if let Some(r) = current.take() {
                ranges.push(r);
            }
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let candidate = !perms.contains('w') && perms.ends_with('p') && path.starts_with('/');
            current = Some((start, end, candidate));
        } else if first == "Anonymous:"
            && fields.next() != Some("0")
            && let Some(r) = current.as_mut()
        {
            r.2 = false;
        }
    }
    if let Some(r) = current {
        ranges.push(r);
    }
    for (start, end, candidate) in ranges {
        if candidate {
            // SAFETY: the range is a read-only private file mapping with no anonymous pages, so
            // discarding it only drops page-table entries: later accesses re-read identical
            // contents from the file (madvise(2), MADV_DONTNEED on private file mappings).
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(bits) = fcntl(fd, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags));
    }
}

struct Output {
    fd: OwnedFd,
    stream: &'static str,
    split: LineSplitter,
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    waiting: bool,
    closed: bool,
    /// Set once the client asked to attach: the connection carries frames from then on.
    attach: Option<Attached>,
}

struct Attached {
    decoder: FrameDecoder,
    /// Encoded frames the (non-blocking) socket has not taken yet.
    out: Vec<u8>,
    /// When `out` last shrank, or filled from empty: what the stall timeout measures.
    progress: Instant,
    /// The exit frame is queued: close once `out` is written.
    finished: bool,
}

/// The shim's end of the container's stdin: a pipe's write end, or the pty master.
struct StdinSink {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// Close the pipe once `pending` is written (the client's input ended).
    closing: bool,
}

/// A descriptor the loop polls, and what it stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Signals,
    Listener,
    Output(usize),
    Client(usize),
    Stdin,
}

struct Shim {
    id: String,
    state_root: std::path::PathBuf,
    socket: std::path::PathBuf,
    container: Container,
    outputs: Vec<Output>,
    tty_master: Option<OwnedFd>,
    stdin: Option<StdinSink>,
    log: Option<LogWriter>,
    signals: SignalFd,
    listener: UnixListener,
    clients: Vec<Client>,
    exit_status: Option<WaitStatus>,
    exited_at: Option<Instant>,
    record: Option<ExitRecord>,
    finalized_at: Option<Instant>,
    exit_timeout: Duration,
    shutdown: Option<bool>,
}

impl Shim {
    fn setup(args: &ShimArgs) -> Result<Shim, String> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;

        let _ = std::fs::remove_file(&args.socket);
        if let Some(parent) = args.socket.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        let listener = UnixListener::bind(&args.socket)
            .map_err(|e| format!("bind {}: {e}", args.socket.display()))?;
        let _ = std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        let log = LogWriter::open(&args.log.path, args.log.max_size, args.log.max_files)
            .map_err(|e| format!("open log {}: {e}", args.log.path.display()))?;

        let bundle = Bundle::load(&args.bundle).map_err(|e| e.to_string())?;
        let mut outputs = Vec::new();
        let mut tty_master = None;
        let mut stdin = None;
        let sink = |fd: OwnedFd| StdinSink {
            fd,
            pending: Vec::new(),
            closing: false,
        };
        let stdio = if args.tty {
            let size = args.console_size.map(|(rows, cols)| nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty =
                nix::pty::openpty(size.as_ref(), None).map_err(|e| format!("openpty: {e}"))?;
            let _ = fcntl(
                &pty.master,
                FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            set_nonblocking(&pty.master);
            let dup = pty
                .master
                .try_clone()
                .map_err(|e| format!("dup pty: {e}"))?;
            outputs.push(Output {
                fd: dup,
                stream: "stdout",
                split: LineSplitter::default(),
            });
            if args.open_stdin {
                let input = pty
                    .master
                    .try_clone()
                    .map_err(|e| format!("dup pty: {e}"))?;
                stdin = Some(sink(input));
            }
            tty_master = Some(pty.master);
            Stdio::Tty { slave: pty.slave }
        } else {
            let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            set_nonblocking(&out_r);
            set_nonblocking(&err_r);
            outputs.push(Output {
                fd: out_r,
                stream: "stdout",
                split: LineSplitter::default(),
            });
            outputs.push(Output {
                fd: err_r,
                stream: "stderr",
                split: LineSplitter::default(),
            });
            let input: OwnedFd = if args.open_stdin {
                // The write end is close-on-exec: the container must not hold its own stdin open.
                let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
                set_nonblocking(&in_w);
                stdin = Some(sink(in_w));
                in_r
            } else {
                std::fs::File::open("/dev/null")
                    .map_err(|e| format!("/dev/null: {e}"))?
                    .into()
            };
            Stdio::Fds {
                stdin: input,
                stdout: out_w,
                stderr: err_w,
            }
        };
        let container =
            container::create(&args.id, &bundle, &args.state_root, stdio).map_err(|e| {
                let _ = std::fs::remove_file(&args.socket);
                e.to_string()
            })?;
        Ok(Shim {
            id: args.id.clone(),
            state_root: args.state_root.clone(),
            socket: args.socket.clone(),
            container,
            outputs,
            tty_master,
            stdin,
            log: Some(log),
            signals,
            listener,
            clients: Vec::new(),
            exit_status: None,
            exited_at: None,
            record: None,
            finalized_at: None,
            exit_timeout: args.exit_timeout,
            shutdown: None,
        })
    }

    fn run(&mut self) -> i32 {
        loop {
            self.drop_stalled_clients();
            // Before polling: whatever closed a client (an exit frame written, say) takes effect
            // now, not at the next wakeup.
            self.clients.retain(|c| !c.closed);
            let timeout = self.poll_timeout();
            // Backpressure both ways: a full client pauses the container's output, a full stdin
            // pauses the clients' input.
            let outputs_paused = self.output_paused();
            let stdin_full = self
                .stdin
                .as_ref()
                .is_some_and(|s| s.pending.len() >= STDIN_HIGH_WATER);
            let mut ready: Vec<(Slot, PollFlags)> = Vec::new();
            {
                let mut slots = vec![Slot::Signals, Slot::Listener];
                let mut fds = vec![
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                if !outputs_paused {
                    for (i, o) in self.outputs.iter().enumerate() {
                        slots.push(Slot::Output(i));
                        fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                for (i, c) in self.clients.iter().enumerate() {
                    let mut flags = PollFlags::empty();
                    if c.attach.is_none() || !stdin_full {
                        flags |= PollFlags::POLLIN;
                    }
                    if c.attach.as_ref().is_some_and(|a| !a.out.is_empty()) {
                        flags |= PollFlags::POLLOUT;
                    }
                    if !flags.is_empty() {
                        slots.push(Slot::Client(i));
                        fds.push(PollFd::new(c.stream.as_fd(), flags));
                    }
                }
                if let Some(s) = &self.stdin
                    && !s.pending.is_empty()
                {
                    slots.push(Slot::Stdin);
                    fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLOUT));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => tracing::warn!(error = %e, "poll"),
                }
                for (slot, fd) in slots.into_iter().zip(&fds) {
                    if let Some(r) = fd.revents().filter(|r| !r.is_empty()) {
                        ready.push((slot, r));
                    }
                }
            }
            if ready.iter().any(|(s, _)| *s == Slot::Signals) {
                self.handle_signals();
            }
            // Highest index first: draining one to EOF removes it from the list.
            for (slot, _) in ready.iter().rev() {
                if let Slot::Output(i) = *slot {
                    self.drain_output(i);
                }
            }
            if ready.iter().any(|(s, _)| *s == Slot::Stdin) {
                self.flush_stdin();
            }
            for (slot, events) in &ready {
                let Slot::Client(i) = *slot else { continue };
                if events.intersects(PollFlags::POLLOUT | PollFlags::POLLERR) {
                    self.flush_client(i);
                }
                if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    && !self.clients[i].closed
                {
                    self.read_client(i);
                }
            }
            if ready.iter().any(|(s, _)| *s == Slot::Listener) {
                self.accept();
            }
            self.maybe_finalize();
            if let Some(code) = self.maybe_exit() {
                return code;
            }
        }
    }

    fn poll_timeout(&self) -> PollTimeout {
        let mut millis: Option<u128> = None;
        if self.exit_status.is_some() && self.record.is_none() {
            millis = Some(100);
        } else if let Some(at) = self.finalized_at {
            let left = self.exit_timeout.saturating_sub(at.elapsed());
            millis = Some(left.as_millis().min(60_000) + 1);
        }
        // Wake up to notice a stalled client even when nothing else happens.
        if self
            .clients
            .iter()
            .any(|c| c.attach.as_ref().is_some_and(|a| !a.out.is_empty()))
        {
            millis = Some(millis.unwrap_or(1000).min(1000));
        }
        match millis {
            Some(ms) => PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::NONE),
            None => PollTimeout::NONE,
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo != libc::SIGCHLD as u32 {
                // The shim stops only through `shutdown`: a stray SIGTERM (say, a service
                // manager stopping the daemon's cgroup) must not take the container's log down.
                tracing::debug!(signal = info.ssi_signo, "ignored signal");
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(self.container.pid()) && self.exit_status.is_none() {
                        self.exit_status = Some(status);
                        self.exited_at = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Whether some attached client has so much output queued that reading more must wait.
    fn output_paused(&self) -> bool {
        self.clients.iter().any(|c| {
            c.attach
                .as_ref()
                .is_some_and(|a| a.out.len() >= ATTACH_HIGH_WATER)
        })
    }

    fn drop_stalled_clients(&mut self) {
        for c in &mut self.clients {
            if let Some(a) = &c.attach
                && !a.out.is_empty()
                && a.progress.elapsed() > ATTACH_STALL
            {
                tracing::warn!(id = %self.id, queued = a.out.len(), "dropping a stalled attached client");
                c.closed = true;
            }
        }
    }

    fn drain_output(&mut self, i: usize) {
        let mut buf = [0u8; 32 * 1024];
        loop {
            if self.output_paused() {
                return;
            }
            let out = &mut self.outputs[i];
            match nix::unistd::read(&out.fd, &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    // EOF (pipe) or EIO (pty with no slave left).
                    let now = crate::timefmt::now();
                    let mut out = self.outputs.remove(i);
                    let log = &mut self.log;
                    out.split.flush(|c| write_log(log, out.stream, c, &now));
                    return;
                }
                Ok(n) => {
                    let now = crate::timefmt::now();
                    let log = &mut self.log;
                    let stream = out.stream;
                    out.split
                        .push(&buf[..n], |c| write_log(log, stream, c, &now));
                    let chunk = buf[..n].to_vec();
                    self.broadcast(&if stream == "stderr" {
                        Frame::Stderr(chunk)
                    } else {
                        Frame::Stdout(chunk)
                    });
                    if n < buf.len() {
                        return;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return, // EAGAIN: drained
            }
        }
    }

    /// Queues `frame` for every attached client and writes what each socket takes now.
    fn broadcast(&mut self, frame: &Frame) {
        if !self.clients.iter().any(|c| c.attach.is_some()) {
            return;
        }
        let bytes = frame.encode();
        for i in 0..self.clients.len() {
            self.queue(i, &bytes);
        }
    }

    fn queue(&mut self, i: usize, bytes: &[u8]) {
        let Some(a) = self.clients[i].attach.as_mut() else {
            return;
        };
        if a.out.is_empty() {
            a.progress = Instant::now();
        }
        a.out.extend_from_slice(bytes);
        self.flush_client(i);
    }

    fn flush_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(a) = c.attach.as_mut() else {
            return;
        };
        while !a.out.is_empty() {
            match c.stream.write(&a.out) {
                Ok(0) => {
                    c.closed = true;
                    return;
                }
                Ok(n) => {
                    a.out.drain(..n);
                    a.progress = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.closed = true;
                    return;
                }
            }
        }
        if a.out.capacity() > ATTACH_HIGH_WATER {
            a.out = Vec::new();
        }
        if a.finished {
            c.closed = true;
        }
    }

    /// Writes what the container's stdin takes now; closes it once asked and drained.
    fn flush_stdin(&mut self) {
        let Some(s) = self.stdin.as_mut() else {
            return;
        };
        while !s.pending.is_empty() {
            match nix::unistd::write(&s.fd, &s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    // EPIPE: nothing in the container reads its stdin any more.
                    tracing::debug!(id = %self.id, error = %e, "container stdin closed");
                    self.stdin = None;
                    return;
                }
            }
        }
        if s.closing {
            self.stdin = None;
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                    self.clients.push(Client {
                        stream,
                        buf: Vec::new(),
                        waiting: false,
                        closed: false,
                        attach: None,
                    });
                }
                Err(_) => return,
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; 16 * 1024];
        let n = match self.clients[i].stream.read(&mut buf) {
            Ok(0) => {
                self.clients[i].closed = true;
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(_) => {
                self.clients[i].closed = true;
                return;
            }
        };
        if let Some(a) = self.clients[i].attach.as_mut() {
            a.decoder.push(&buf[..n]);
            self.attached_input(i);
            return;
        }
        self.clients[i].buf.extend_from_slice(&buf[..n]);
        while let Some(pos) = self.clients[i].buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.clients[i].buf.drain(..=pos).collect();
            let response = match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Attach) => {
                    self.begin_attach(i);
                    return;
                }
                Ok(req) => self.handle(i, req),
                Err(e) => Some(Response::Error {
                    message: format!("bad request: {e}"),
                }),
            };
            if let Some(r) = response {
                self.respond(i, &r);
            }
        }
        if self.clients[i].buf.len() > 64 * 1024 {
            self.clients[i].closed = true;
        }
    }

    /// Turns control connection `i` into an attach channel: `ok`, then frames both ways.
    fn begin_attach(&mut self, i: usize) {
        self.respond(i, &Response::Ok);
        let c = &mut self.clients[i];
        if c.closed || c.stream.set_nonblocking(true).is_err() {
            c.closed = true;
            return;
        }
        let mut decoder = FrameDecoder::default();
        // Frames the client sent right behind its request arrived with it.
        decoder.push(&std::mem::take(&mut c.buf));
        c.attach = Some(Attached {
            decoder,
            out: Vec::new(),
            progress: Instant::now(),
            finished: false,
        });
        tracing::debug!(id = %self.id, "client attached");
        if let Some(record) = self.record.clone() {
            // Too late for output: the client learns how it ended, and that is all.
            self.finish_attached(i, &record);
        }
        self.attached_input(i);
    }

    fn finish_attached(&mut self, i: usize, record: &ExitRecord) {
        if let Some(a) = self.clients[i].attach.as_mut() {
            a.finished = true;
        }
        self.queue(i, &Frame::Exit(record.clone()).encode());
    }

    /// Acts on the whole frames attached client `i` has sent.
    fn attached_input(&mut self, i: usize) {
        loop {
            let next = match self.clients[i].attach.as_mut() {
                Some(a) => a.decoder.next_frame(),
                None => return,
            };
            match next {
                Ok(None) => break,
                Ok(Some(Frame::Stdin(data))) => {
                    if let Some(s) = self.stdin.as_mut()
                        && !s.closing
                    {
                        s.pending.extend_from_slice(&data);
                    }
                }
                Ok(Some(Frame::CloseStdin)) => {
                    // A terminal stays: its end of input is a ^D the user types.
                    if let Some(s) = self.stdin.as_mut()
                        && self.tty_master.is_none()
                    {
                        s.closing = true;
                    }
                }
                Ok(Some(Frame::Resize { rows, cols })) => {
                    if let Err(e) = self.resize(rows, cols) {
                        tracing::debug!(id = %self.id, error = %e, "attach resize");
                    }
                }
                Ok(Some(other)) => {
                    tracing::debug!(id = %self.id, frame = ?other, "attached client sent an output frame");
                    self.clients[i].closed = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(id = %self.id, error = %e, "attached client");
                    self.clients[i].closed = true;
                    break;
                }
            }
        }
        self.flush_stdin();
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let Some(m) = &self.tty_master else {
            return Err("container has no tty".into());
        };
        set_winsize(m, rows, cols).map_err(|e| format!("resize: {e}"))
    }

    fn respond(&mut self, i: usize, r: &Response) {
        let mut line = serde_json::to_vec(r).unwrap_or_default();
        line.push(b'\n');
        if self.clients[i].stream.write_all(&line).is_err() {
            self.clients[i].closed = true;
        }
    }

    fn status_text(&self) -> String {
        if self.exit_status.is_some() {
            "stopped".into()
        } else {
            self.container.status().to_string()
        }
    }

    fn handle(&mut self, client: usize, req: Request) -> Option<Response> {
        let err = |message: String| Some(Response::Error { message });
        match req {
            Request::Start => {
                if self.exit_status.is_some() {
                    let why = self.container.init_error();
                    return err(why.unwrap_or_else(|| "container has exited".into()));
                }
                match self.container.start() {
                    Ok(()) => Some(Response::Ok),
                    Err(e) => err(e.to_string()),
                }
            }
            Request::State => Some(Response::State(ShimState {
                id: self.id.clone(),
                pid: self.container.pid().as_raw(),
                status: self.status_text(),
                exit: self.record.clone(),
            })),
            Request::Kill { signal } => {
                let Ok(sig) = Signal::try_from(signal) else {
                    return err(format!("invalid signal {signal}"));
                };
                if self.exit_status.is_some() {
                    return err(format!("container {} is stopped", self.id));
                }
                match nix::sys::signal::kill(self.container.pid(), sig) {
                    Ok(()) => Some(Response::Ok),
                    Err(e) => err(format!("kill: {e}")),
                }
            }
            Request::Wait => match &self.record {
                Some(r) => Some(Response::Exit(r.clone())),
                None => {
                    self.clients[client].waiting = true;
                    None
                }
            },
            Request::Resize { rows, cols } => match self.resize(rows, cols) {
                Ok(()) => Some(Response::Ok),
                Err(e) => err(e),
            },
            // Read before a request is handled: an attach changes the connection itself.
            Request::Attach => err("attach must be the connection's last request".into()),
            Request::Stats => match self.container.cgroup().stats() {
                Ok(s) => Some(Response::Stats(s)),
                Err(e) => err(e.to_string()),
            },
            Request::Pause => match self.container.pause() {
                Ok(()) => Some(Response::Ok),
                Err(e) => err(e.to_string()),
            },
            Request::Resume => match self.container.resume() {
                Ok(()) => Some(Response::Ok),
                Err(e) => err(e.to_string()),
            },
            Request::Shutdown { force } => {
                if self.exit_status.is_none() {
                    if !force {
                        return err(format!("container {} is running", self.id));
                    }
                    let _ = self.container.resume();
                    let _ = nix::sys::signal::kill(self.container.pid(), Signal::SIGKILL);
                }
                self.shutdown = Some(true);
                Some(Response::Ok)
            }
        }
    }

    fn maybe_finalize(&mut self) {
        let Some(status) = self.exit_status else {
            return;
        };
        if self.record.is_some() {
            return;
        }
        let drained = self.outputs.is_empty();
        let late = self.exited_at.is_some_and(|t| t.elapsed() > DRAIN_GRACE);
        if !drained && !late {
            return;
        }
        let now = crate::timefmt::now();
        for mut out in self.outputs.drain(..) {
            let log = &mut self.log;
            out.split.flush(|c| write_log(log, out.stream, c, &now));
        }
        self.log = None;
        let cgroup = self.container.cgroup();
        let oom_killed = cgroup.oom_kill_count().unwrap_or(0) > 0;
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let record = ExitRecord {
            exit_code,
            signal,
            oom_killed,
            finished_at: now,
            pid: self.container.pid().as_raw(),
        };
        if let Err(e) = write_exit(&self.state_root.join(&self.id), &record) {
            tracing::warn!(error = %e, "writing exit.json");
        }
        self.record = Some(record.clone());
        self.finalized_at = Some(Instant::now());
        tracing::info!(id = %self.id, exit_code, oom_killed, "container exited");
        // Nothing reads the container's stdin any more.
        self.stdin = None;
        for i in 0..self.clients.len() {
            if self.clients[i].waiting {
                self.clients[i].waiting = false;
                self.respond(i, &Response::Exit(record.clone()));
            }
            if self.clients[i].attach.is_some() {
                self.finish_attached(i, &record);
            }
        }
        // The exit is on disk and answered: the cgroup has nothing left to tell.
        if let Err(e) = cgroup.remove() {
            tracing::warn!(error = %e, "removing cgroup");
        }
    }

    fn maybe_exit(&mut self) -> Option<i32> {
        self.record.as_ref()?;
        let timed_out = self
            .finalized_at
            .is_some_and(|t| t.elapsed() >= self.exit_timeout);
        if self.shutdown.is_none() && !timed_out {
            return None;
        }
        // The last output and the exit frame reach attached clients before the shim goes.
        for c in &mut self.clients {
            if let Some(a) = &c.attach
                && !a.out.is_empty()
                && !c.closed
            {
                let _ = c.stream.set_nonblocking(false);
                let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = c.stream.write_all(&a.out);
            }
        }
        let full = self.shutdown.is_some();
        if self.container.record().rootfs_mounted
            && let Err(e) = container::unmount_overlay_rootfs(&self.container.record().rootfs)
        {
            tracing::warn!(error = %e, "unmounting rootfs");
        }
        let state_dir = self.state_root.join(&self.id);
        if full {
            let _ = std::fs::remove_dir_all(&state_dir);
        } else {
            // exit.json stays for a daemon that comes back later.
            let _ = std::fs::remove_file(state_dir.join("exec.fifo"));
        }
        let _ = std::fs::remove_file(&self.socket);
        Some(0)
    }
}

/// `TIOCSWINSZ`: the terminal's new size; its foreground process group gets SIGWINCH.
pub(crate) fn set_winsize(pty: &impl AsFd, rows: u16, cols: u16) -> Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives across the call.
    let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(rc).map(drop)
}

fn write_log(log: &mut Option<LogWriter>, stream: &str, chunk: &[u8], time: &str) {
    if let Some(l) = log
        && let Err(e) = l.write(stream, chunk, time)
    {
        tracing::warn!(error = %e, "writing container log");
    }
}

fn write_exit(dir: &Path, record: &ExitRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("exit.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("exit.json"))
}
