//! The shim's attach channel with real containers (root only): stdin in and output out with and
//! without a tty, resize, several clients at once, late and re-adopting attachers, the exit frame
//! last, and no output lost to a client that reads slowly.

mod support;

use std::time::{Duration, Instant};

use shoal_runtime::shim::attach::{AttachReader, AttachWriter, Frame};
use support::{Env, config, read_log, stdout_of};

const LIMIT: Duration = Duration::from_secs(20);

fn attach(r: &support::Running) -> (AttachReader, AttachWriter) {
    let stream = r.client().attach().expect("attach");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.split().unwrap()
}

/// What one client received, read until `done` says enough (or the exit frame arrives).
#[derive(Debug, Default)]
struct Seen {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<i32>,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn read_until(reader: &mut AttachReader, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done(seen) {
        assert!(Instant::now() < deadline, "timed out; so far {seen:?}");
        match reader.next_frame().expect("frame") {
            Some(Frame::Stdout(b)) => seen.stdout.extend(b),
            Some(Frame::Stderr(b)) => seen.stderr.extend(b),
            Some(Frame::Exit(r)) => {
                seen.exit = Some(r.exit_code);
                // The shim closes the connection right after the exit frame.
                assert_eq!(reader.next_frame().unwrap(), None);
                return;
            }
            Some(other) => panic!("the shim sent {other:?}"),
            None => panic!("connection closed without an exit frame; so far {seen:?}"),
        }
    }
}

fn until_exit(reader: &mut AttachReader) -> Seen {
    let mut seen = Seen::default();
    read_until(reader, &mut seen, |s| s.exit.is_some());
    seen
}

fn interactive(env: &Env, id: &str, args: &[&str], tty: bool) -> support::Running {
    let mut c = config(args);
    c.tty = tty;
    let bundle = env.bundle(id, c);
    let mut shim_args = env.shim_args(id, &bundle, tty);
    shim_args.open_stdin = true;
    if tty {
        shim_args.console_size = Some((31, 97));
    }
    env.spawn_args(shim_args).expect("spawn shim")
}

#[test]
fn stdin_pipe_closes_on_request_and_streams_stay_apart() {
    require_root!();
    let env = Env::new();
    let r = interactive(
        &env,
        "cat",
        &["sh", "-c", "cat; echo to-stderr >&2; exit 5"],
        false,
    );
    // Attached before start: nothing the container says is missed.
    let (mut reader, mut writer) = attach(&r);
    r.client().start().unwrap();
    writer.stdin(b"hello\n").unwrap();
    let mut seen = Seen::default();
    read_until(&mut reader, &mut seen, |s| s.stdout.ends_with(b"hello\n"));
    writer.stdin(b"partial").unwrap();
    writer.close_stdin().unwrap();
    read_until(&mut reader, &mut seen, |s| s.exit.is_some());
    assert_eq!(seen.text(), "hello\npartial");
    assert_eq!(seen.stderr, b"to-stderr\n");
    assert_eq!(seen.exit, Some(5));
    // The log has it all too.
    assert_eq!(stdout_of(&read_log(&env.log_path("cat"))), "hello\npartial");
}

#[test]
fn tty_has_the_initial_size_resizes_and_echoes() {
    require_root!();
    let env = Env::new();
    let r = interactive(&env, "tty", &["sh"], true);
    let (mut reader, mut writer) = attach(&r);
    r.client().start().unwrap();
    writer.stdin(b"stty size\n").unwrap();
    let mut seen = Seen::default();
    read_until(&mut reader, &mut seen, |s| s.text().contains("31 97"));
    writer.resize(50, 120).unwrap();
    writer.stdin(b"stty size; echo $((6*7))\n").unwrap();
    read_until(&mut reader, &mut seen, |s| {
        s.text().contains("50 120") && s.text().contains("42")
    });
    // A tty has one stream, and its input is echoed by the terminal.
    assert!(seen.stderr.is_empty());
    assert!(seen.text().contains("echo $((6*7))"), "{}", seen.text());
    // Closing stdin does not end a terminal: ^D (or exit) does.
    writer.close_stdin().unwrap();
    writer.stdin(b"exit 4\n").unwrap();
    read_until(&mut reader, &mut seen, |s| s.exit.is_some());
    assert_eq!(seen.exit, Some(4));
}

#[test]
fn every_client_gets_output_and_late_ones_only_new_output() {
    require_root!();
    let env = Env::new();
    let r = interactive(
        &env,
        "multi",
        &["sh", "-c", "read a; echo first $a; read b; echo second $b"],
        false,
    );
    let (mut a_reader, mut a_writer) = attach(&r);
    let (mut b_reader, _b_writer) = attach(&r);
    r.client().start().unwrap();
    a_writer.stdin(b"one\n").unwrap();
    let (mut a_seen, mut b_seen) = (Seen::default(), Seen::default());
    read_until(&mut a_reader, &mut a_seen, |s| {
        s.text().contains("first one")
    });
    read_until(&mut b_reader, &mut b_seen, |s| {
        s.text().contains("first one")
    });
    // A late client: no history. Any client's input reaches the container.
    let (mut c_reader, mut c_writer) = attach(&r);
    c_writer.stdin(b"two\n").unwrap();
    let c_seen = until_exit(&mut c_reader);
    assert_eq!(c_seen.text(), "second two\n");
    assert_eq!(c_seen.exit, Some(0));
    for (reader, seen) in [(&mut a_reader, &mut a_seen), (&mut b_reader, &mut b_seen)] {
        read_until(reader, seen, |s| s.exit.is_some());
        assert_eq!(seen.text(), "first one\nsecond two\n");
    }
}

#[test]
fn detaching_leaves_the_container_running_and_a_new_client_can_attach() {
    require_root!();
    let env = Env::new();
    let r = interactive(&env, "detach", &["sh"], true);
    let (mut reader, mut writer) = attach(&r);
    r.client().start().unwrap();
    writer.stdin(b"echo $((2+3))\n").unwrap();
    let mut seen = Seen::default();
    read_until(&mut reader, &mut seen, |s| s.text().contains("\n5\r\n"));
    drop((reader, writer));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.client().state().unwrap().status, "running");
    // As a restarted daemon would: a new client on the same socket.
    let again = shoal_runtime::ShimClient::connect(r.client().socket()).unwrap();
    let stream = again.attach().unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let (mut reader, mut writer) = stream.split().unwrap();
    writer.stdin(b"echo again; exit 6\n").unwrap();
    let seen = until_exit(&mut reader);
    assert!(seen.text().contains("again"), "{seen:?}");
    assert_eq!(seen.exit, Some(6));
    // After the exit, an attach gets only the exit record.
    let late = again.attach().unwrap();
    late.set_read_timeout(Some(LIMIT)).unwrap();
    let (mut reader, _w) = late.split().unwrap();
    let seen = until_exit(&mut reader);
    assert!(seen.stdout.is_empty());
    assert_eq!(seen.exit, Some(6));
}

#[test]
fn a_slow_reader_loses_nothing() {
    require_root!();
    let env = Env::new();
    // About 1.3 MB: several times what the shim buffers for one client.
    let r = interactive(&env, "slow", &["seq", "1", "200000"], false);
    let (mut reader, _writer) = attach(&r);
    r.client().start().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let seen = until_exit(&mut reader);
    assert_eq!(seen.exit, Some(0));
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(seen.stdout.len(), expected.len());
    assert!(seen.text() == expected);
}

#[test]
fn without_open_stdin_input_is_dropped() {
    require_root!();
    let env = Env::new();
    let mut r = env
        .spawn("closed", config(&["sh", "-c", "cat; echo eof"]))
        .unwrap();
    let (mut reader, mut writer) = attach(&r);
    r.client().start().unwrap();
    // stdin is /dev/null: cat ends at once, whatever is sent.
    let _ = writer.stdin(b"ignored\n");
    let seen = until_exit(&mut reader);
    assert_eq!(seen.text(), "eof\n");
    r.shutdown();
}
