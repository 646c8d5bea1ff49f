//! Interactive containers end to end: a real daemon, shims and containers, driven through the
//! real CLI sitting on a pseudo-terminal the test owns, as a person at a keyboard would (`run
//! -it`, window sizes, detach keys, `attach`, `exec -it`, re-adoption after a daemon kill -9),
//! plus `-i` with piped stdin and the one-line refusals.
// The test plays the terminal: it makes the CLI a session leader with the pty as its
// controlling terminal (pre_exec) and resizes that terminal (TIOCSWINSZ).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_testkit::Daemon;
use shoal_testkit::fixtures::{can_run_containers, import_busybox};

/// Every wait in these tests ends by then, pass or fail.
const LIMIT: Duration = Duration::from_secs(30);

const IMAGE: &str = "busybox:test";

/// A daemon without a bridge holding `busybox:test`, and a guard that removes every container
/// it ran when the test ends, so no container outlives a failed test.
fn daemon_with_busybox(dir: &std::path::Path) -> (Daemon, Cleanup) {
    let daemon = Daemon::start_in(dir, &["--bridge", "none"]);
    import_busybox(&daemon, dir, IMAGE, &[]);
    let cleanup = Cleanup(daemon.host());
    (daemon, cleanup)
}

/// Force-removes every container of a daemon when dropped (declared after the daemon, so it
/// runs first).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = shoal_testkit::run_cli(&self.0, &["ps", "-a", "-q"], None).stdout;
        for id in ids.split_whitespace() {
            let _ = shoal_testkit::run_cli(&self.0, &["rm", "-f", id], None);
        }
    }
}

/// The CLI running on a pty whose master the test holds: what it types, the CLI reads; what
/// the CLI prints, the test reads. The CLI is killed if the test ends first.
struct Terminal {
    master: OwnedFd,
    child: Option<Child>,
    output: Vec<u8>,
    /// Output before this offset was already matched by [`Terminal::expect`].
    mark: usize,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    fn open(daemon: &Daemon, args: &[&str], rows: u16, cols: u16) -> Terminal {
        let pty = openpty(Some(&winsize(rows, cols)), None).expect("openpty");
        let mut command = Command::new(shoal_testkit::shoal_binary());
        command
            .arg("-H")
            .arg(daemon.host())
            .args(args)
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
        // (setsid, ioctl) and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn shoal on a pty");
        // Our copies of the slave go with the command: the master reads EIO once the CLI is gone.
        drop(command);
        Terminal {
            master: pty.master,
            child: Some(child),
            output: Vec::new(),
            mark: 0,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Reads what is there within `wait`; false once the CLI side is closed.
    fn read_some(&mut self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(Errno::EINTR) => return true,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(&self.master, &mut buf) {
            Ok(0) | Err(Errno::EIO) => false,
            Ok(n) => {
                self.output.extend_from_slice(&buf[..n]);
                true
            }
            Err(Errno::EINTR | Errno::EAGAIN) => true,
            Err(e) => panic!("read pty: {e}"),
        }
    }

    /// Waits for `needle` in the output after the last match.
    #[track_caller]
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let fresh = String::from_utf8_lossy(&self.output[self.mark..]).into_owned();
            if let Some(at) = fresh.find(needle) {
                self.mark += fresh[..at + needle.len()].len();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {LIMIT:?}; the terminal shows {:?}",
                self.text()
            );
            if !self.read_some(Duration::from_millis(100)) {
                panic!(
                    "the CLI went away before {needle:?}; the terminal shows {:?}",
                    self.text()
                );
            }
        }
    }

    fn type_in(&self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match nix::unistd::write(&self.master, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR | Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("write pty: {e}"),
            }
        }
    }

    /// Resizes the terminal as a terminal emulator does; the kernel tells the CLI (SIGWINCH),
    /// and so does the test, in case the CLI is not in the terminal's foreground group.
    fn resize(&self, rows: u16, cols: u16) {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize that lives across the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", io::Error::last_os_error());
        let _ = kill(self.pid(), Signal::SIGWINCH);
    }

    /// The CLI's exit code, reading its output meanwhile so it never blocks on a full pty.
    #[track_caller]
    fn finish(&mut self) -> i32 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("wait for the CLI") {
                self.child = None;
                while self.read_some(Duration::from_millis(10)) {}
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the CLI did not exit within {LIMIT:?}; the terminal shows {:?}",
                self.text()
            );
            if !self.read_some(Duration::from_millis(50)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn status(daemon: &Daemon, container: &str) -> String {
    let inspect: serde_json::Value =
        serde_json::from_str(daemon.cli(&["inspect", container]).ok()).unwrap();
    inspect[0]["State"]["Status"].as_str().unwrap().to_owned()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn run_it_gives_a_shell_and_its_exit_code() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    let mut term = Terminal::open(&daemon, &["run", "-it", "--rm", IMAGE, "sh"], 24, 80);
    // The first prompt: attached before the start, so it is not lost.
    term.expect("# ");
    term.type_in(b"echo $((6*7))\n");
    term.expect("42");
    term.expect("# ");
    // Keystroke echo through both terminals, the CLI, the daemon and the shim.
    let mut samples = Vec::new();
    for _ in 0..20 {
        let before = term.output.len();
        let typed = Instant::now();
        term.type_in(b"z");
        while !term.output[before..].contains(&b'z') {
            assert!(typed.elapsed() < LIMIT, "no echo: {:?}", term.text());
            term.read_some(Duration::from_millis(100));
        }
        samples.push(typed.elapsed());
    }
    eprintln!(
        "keystroke echo latency over {} keys: median {:?}, max {:?}",
        samples.len(),
        median(samples.clone()),
        samples.iter().max().unwrap()
    );
    // ^U clears the typed line.
    term.type_in(b"\x15exit 3\n");
    assert_eq!(term.finish(), 3, "{:?}", term.text());
    // --rm: nothing left.
    let deadline = Instant::now() + LIMIT;
    while !daemon.cli(&["ps", "-a", "-q"]).ok().is_empty() {
        assert!(Instant::now() < deadline, "the --rm container stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_terminal_size_is_there_from_the_start_and_follows_resizes() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    let mut term = Terminal::open(&daemon, &["run", "-it", "--rm", IMAGE, "sh"], 37, 101);
    // Asked as the very first command: the size was set before the shell started.
    term.type_in(b"stty size\n");
    term.expect("37 101");
    term.resize(50, 132);
    let deadline = Instant::now() + LIMIT;
    loop {
        term.type_in(b"stty size\n");
        term.expect("# ");
        if term.text().contains("50 132") {
            break;
        }
        assert!(Instant::now() < deadline, "no resize: {:?}", term.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    term.type_in(b"exit 0\n");
    assert_eq!(term.finish(), 0);
}

#[test]
fn interactive_stdin_without_a_tty_is_piped_and_closed() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    let out = daemon.cli_with_stdin(&["run", "-i", "--rm", IMAGE, "cat"], Some(b"hi\n"));
    assert_eq!(out.ok(), "hi\n");
    // More than any buffer on the way, and the exact count arrives.
    let big = vec![b'x'; 3 << 20];
    let out = daemon.cli_with_stdin(&["run", "-i", "--rm", IMAGE, "wc", "-c"], Some(&big));
    assert_eq!(out.ok().trim(), (3 << 20).to_string());
    // Without -i the container's stdin is empty, whatever we pipe.
    let out = daemon.cli_with_stdin(&["run", "--rm", IMAGE, "cat"], Some(b"ignored\n"));
    assert_eq!(out.ok(), "");
    // `start -ai` attaches before the start, as `run` does: on a new container, then again
    // on the exited one.
    daemon
        .cli(&[
            "create",
            "-i",
            "--name",
            "later",
            IMAGE,
            "sh",
            "-c",
            "cat; exit 2",
        ])
        .ok();
    for input in ["first\n", "second\n"] {
        let out = daemon.cli_with_stdin(&["start", "-ai", "later"], Some(input.as_bytes()));
        assert_eq!((out.code, out.stdout.as_str()), (2, input), "{out:?}");
    }
    daemon.cli(&["rm", "later"]).ok();
}

#[test]
fn attach_leaves_stdin_open_for_the_next_client() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    let script = "while read l; do echo got $l; done; echo closed; exit 9";
    daemon
        .cli(&["run", "-di", "--name", "pipe", IMAGE, "sh", "-c", script])
        .ok();
    // Piped input that ends: `attach` forwards it but leaves the container's stdin open.
    let out = std::fs::File::create(dir.path().join("attach.out")).unwrap();
    let mut child = Command::new(shoal_testkit::shoal_binary())
        .args(["-H", &daemon.host(), "attach", "pipe"])
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child);
    {
        use std::io::Write;
        let mut stdin = guard.0.stdin.take().unwrap();
        stdin.write_all(b"one\n").unwrap();
    }
    let deadline = Instant::now() + LIMIT;
    while !daemon.cli(&["logs", "pipe"]).ok().contains("got one") {
        assert!(Instant::now() < deadline, "the input did not arrive");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&daemon, "pipe"), "running");
    assert!(guard.0.try_wait().unwrap().is_none(), "attach ended early");
    // `run -i`'s own session is the one whose end of input closes stdin.
    daemon.cli(&["stop", "-t", "1", "pipe"]).ok();
    let code = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "attach did not end with the container"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(code, Some(9), "stdin was closed");
    let seen = std::fs::read_to_string(dir.path().join("attach.out")).unwrap();
    assert_eq!(seen, "got one\n");
}

/// Kills a child process the test started if the test ends first.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn detach_keys_leave_it_running_and_attach_comes_back() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    let mut term = Terminal::open(&daemon, &["run", "-it", "--name", "keeper", IMAGE], 24, 80);
    term.type_in(b"echo ready-$((1+1))\n");
    term.expect("ready-2");
    // Ctrl-P Ctrl-Q: Docker's default detach keys.
    term.type_in(b"\x10\x11");
    assert_eq!(term.finish(), 0, "{:?}", term.text());
    assert!(
        term.text().ends_with("read escape sequence\r\n"),
        "{:?}",
        term.text()
    );
    assert_eq!(status(&daemon, "keeper"), "running");

    // Back in, with detach keys of our own; the shell's state is still there.
    let mut term = Terminal::open(
        &daemon,
        &["attach", "--detach-keys", "ctrl-a,d", "keeper"],
        24,
        80,
    );
    term.type_in(b"X=kept; echo again-$((2+3))\n");
    term.expect("again-5");
    // Only our keys detach now.
    term.type_in(b"\x01d");
    assert_eq!(term.finish(), 0, "{:?}", term.text());
    assert_eq!(status(&daemon, "keeper"), "running");

    let mut term = Terminal::open(&daemon, &["attach", "keeper"], 24, 80);
    term.type_in(b"echo $X-$((3*3))\n");
    term.expect("kept-9");
    term.type_in(b"exit 6\n");
    assert_eq!(term.finish(), 6, "{:?}", term.text());
    assert_eq!(status(&daemon, "keeper"), "exited");
    daemon.cli(&["rm", "keeper"]).ok();
}

#[test]
fn exec_it_gets_a_terminal_of_the_right_size() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    daemon
        .cli(&["run", "-d", "--name", "host", IMAGE, "sleep", "600"])
        .ok();
    let mut term = Terminal::open(&daemon, &["exec", "-it", "host", "sh"], 33, 77);
    term.type_in(b"stty size; echo $((7*6))\n");
    term.expect("33 77");
    term.expect("42");
    term.resize(40, 100);
    let deadline = Instant::now() + LIMIT;
    loop {
        term.type_in(b"stty size\n");
        term.expect("# ");
        if term.text().contains("40 100") {
            break;
        }
        assert!(Instant::now() < deadline, "no resize: {:?}", term.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    term.type_in(b"exit 4\n");
    assert_eq!(term.finish(), 4, "{:?}", term.text());
    // -i without -t: a pipe, closed at the end of our input.
    let out = daemon.cli_with_stdin(&["exec", "-i", "host", "cat"], Some(b"piped\n"));
    assert_eq!(out.ok(), "piped\n");
    daemon.cli(&["rm", "-f", "host"]).ok();
}

#[test]
fn attach_works_after_the_daemon_is_killed_and_restarted() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, _cleanup) = daemon_with_busybox(dir.path());
    daemon
        .cli(&["run", "-dit", "--name", "survivor", IMAGE, "sh"])
        .ok();
    daemon.kill9();
    daemon.start_again();
    assert_eq!(status(&daemon, "survivor"), "running");
    let mut term = Terminal::open(&daemon, &["attach", "survivor"], 24, 80);
    term.type_in(b"echo back-$((5*5))\n");
    term.expect("back-25");
    term.type_in(b"exit 5\n");
    assert_eq!(term.finish(), 5, "{:?}", term.text());
}

#[test]
fn bad_input_gets_one_line() {
    if !can_run_containers() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _cleanup) = daemon_with_busybox(dir.path());
    // Our stdin is not a terminal here.
    let line = daemon
        .cli(&["run", "-it", "--rm", IMAGE, "sh"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("the input device is not a TTY"), "{line}");
    daemon
        .cli(&["run", "-d", "--name", "box", IMAGE, "sleep", "600"])
        .ok();
    let line = daemon
        .cli(&["exec", "-it", "box", "sh"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("the input device is not a TTY"), "{line}");
    for keys in ["ctrl-", "ctrl-1", "ab", "ctrl-p,"] {
        let line = daemon
            .cli(&["attach", "--detach-keys", keys, "box"])
            .one_line_error()
            .to_owned();
        assert!(line.contains("invalid detach keys"), "{keys}: {line}");
    }
    let line = daemon
        .cli(&["run", "--detach-keys", "nope", "--rm", IMAGE, "true"])
        .one_line_error()
        .to_owned();
    assert!(line.contains("invalid detach keys"), "{line}");
    daemon.cli(&["rm", "-f", "box"]).ok();
    // A stopped container, and one never started.
    daemon.cli(&["run", "--name", "done", IMAGE, "true"]).ok();
    daemon
        .cli(&["create", "--name", "fresh", IMAGE, "true"])
        .ok();
    for name in ["done", "fresh"] {
        let line = daemon.cli(&["attach", name]).one_line_error().to_owned();
        assert!(
            line.contains("cannot attach to a stopped container"),
            "{line}"
        );
    }
}
