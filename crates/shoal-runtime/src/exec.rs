//! Exec into a running container: an intermediate process joins the container's namespaces, then
//! clones the exec process with `CLONE_PARENT` (so it lands in the container's pid namespace yet
//! stays the caller's child to wait on); the caller moves it into the container's cgroup before it
//! runs, and it applies the exec process's user, capabilities, no_new_privs and the container's
//! seccomp profile before `execve`. Like [`crate::container::create`], call it from a
//! single-threaded process.
#![allow(unsafe_code)]

use std::convert::Infallible;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, clone, setns};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};
use oci_spec::runtime::{ContainerState, Process, Spec};

use crate::container::init::{self, ChildStdio, InitError, Step};
use crate::container::{Container, ContainerError, Stdio};
use crate::seccomp::{self, CompiledFilters};

/// Namespaces an exec joins, in the order it joins them.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The container's own process with `args` in place of its command (Docker's exec defaults).
pub fn process_for(
    container: &Container,
    args: Vec<String>,
    tty: bool,
) -> Result<Process, ContainerError> {
    let spec = Spec::load(container.bundle().join("config.json"))?;
    let mut p = spec
        .process()
        .clone()
        .ok_or_else(|| ContainerError::Bundle("config.json has no process".into()))?;
    p.set_args(Some(args));
    p.set_terminal(Some(tty));
    Ok(p)
}

/// Starts `process` inside `container`; returns its pid (a child of the caller).
pub fn exec(container: &Container, process: &Process, stdio: Stdio) -> Result<Pid, ContainerError> {
    let status = container.status();
    if status != ContainerState::Running && status != ContainerState::Created {
        return Err(ContainerError::InvalidState {
            id: container.id().to_string(),
            status: status.to_string(),
        });
    }
    let spec = Spec::load(container.bundle().join("config.json"))?;
    let filters = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(seccomp::compile)
        .transpose()?;
    let pid = container.pid();
    let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = match (
            std::fs::read_link(&theirs),
            std::fs::read_link(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), _) => continue, // the kernel lacks this namespace type
            _ => false,
        };
        if same {
            continue;
        }
        let f =
            File::open(&theirs).map_err(|e| ContainerError::io("open", Path::new(&theirs), e))?;
        join.push((*flag, f.into()));
    }

    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::sys("pipe", e))?;
    let (rep_r, rep_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::sys("pipe", e))?;
    let (pid_r, pid_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::sys("pipe", e))?;
    let child_stdio = match &stdio {
        Stdio::Inherit => ChildStdio::Inherit,
        Stdio::Fds {
            stdin,
            stdout,
            stderr,
        } => ChildStdio::Fds([stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]),
        Stdio::Tty { slave } => ChildStdio::Tty(slave.as_fd()),
    };
    let plan = ExecPlan {
        process,
        stdio: child_stdio,
        go: go_r.as_raw_fd(),
        report: rep_w.as_raw_fd(),
        filters: filters.as_ref(),
    };

    // SAFETY: the caller is single-threaded (documented requirement), so the forked intermediate
    // may run arbitrary code; it ends with _exit and never returns into the caller's frames.
    let intermediate = match unsafe { fork() }.map_err(|e| ContainerError::sys("fork", e))? {
        ForkResult::Child => intermediate_main(&join, &plan, pid_w.as_raw_fd()),
        ForkResult::Parent { child } => child,
    };
    drop((go_r, rep_w, pid_w, join, stdio));
    // Exactly four bytes: the exec child inherited the write end too and keeps it until execve,
    // so waiting for EOF here would wait for the container to end.
    let mut pid_bytes = Vec::new();
    let mut pid_file = File::from(pid_r);
    let mut chunk = [0u8; 4];
    while pid_bytes.len() < 4 {
        match pid_file.read(&mut chunk[..4 - pid_bytes.len()]) {
            Ok(0) => break,
            Ok(n) => pid_bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = waitpid(intermediate, None);
    let mut report = File::from(rep_r);
    let exec_pid = match <[u8; 4]>::try_from(pid_bytes.as_slice()) {
        Ok(b) => Pid::from_raw(i32::from_ne_bytes(b)),
        Err(_) => {
            let mut msg = String::new();
            let _ = report.read_to_string(&mut msg);
            let msg = msg
                .trim()
                .strip_prefix("error ")
                .unwrap_or(msg.trim())
                .to_string();
            return Err(ContainerError::Init(if msg.is_empty() {
                "exec: the intermediate process failed".into()
            } else {
                msg
            }));
        }
    };
    if let Err(e) = container.cgroup().add_task(exec_pid) {
        let _ = kill(exec_pid, Signal::SIGKILL);
        let _ = waitpid(exec_pid, None);
        return Err(e.into());
    }
    nix::unistd::write(&go_w, b"1").map_err(|e| ContainerError::sys("signal exec", e))?;
    drop(go_w);
    let mut msg = String::new();
    let _ = report.read_to_string(&mut msg);
    if !msg.trim().is_empty() {
        let _ = waitpid(exec_pid, None);
        let msg = msg.trim();
        return Err(ContainerError::Init(
            msg.strip_prefix("error ").unwrap_or(msg).to_string(),
        ));
    }
    tracing::debug!(id = container.id(), pid = exec_pid.as_raw(), "exec started");
    Ok(exec_pid)
}

/// The exit code of a finished exec (or any child): the code, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 255,
    }
}

struct ExecPlan<'a> {
    process: &'a Process,
    stdio: ChildStdio<'a>,
    go: RawFd,
    report: RawFd,
    filters: Option<&'a CompiledFilters>,
}

fn intermediate_main(join: &[(CloneFlags, OwnedFd)], plan: &ExecPlan<'_>, pid_w: RawFd) -> ! {
    let result = (|| -> Result<Pid, InitError> {
        for (flag, fd) in join {
            setns(fd, *flag).step(|| format!("exec: join namespace {flag:?}"))?;
        }
        let mut stack = vec![0u8; 1 << 20];
        // SAFETY: as in container::init::spawn — no CLONE_VM, single-threaded process, the child
        // never returns (it execs or _exits).
        unsafe {
            clone(
                Box::new(|| exec_child(plan)),
                &mut stack,
                CloneFlags::CLONE_PARENT,
                Some(libc::SIGCHLD),
            )
        }
        .step(|| "exec: clone".into())
    })();
    match result {
        Ok(pid) => {
            // SAFETY: pid_w is the write end of a pipe this process owns.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(pid_w) };
            let _ = nix::unistd::write(fd, &pid.as_raw().to_ne_bytes());
        }
        Err(e) => init::report(plan.report, &format!("error {e}\n")),
    }
    // SAFETY: the intermediate owns nothing that needs a destructor; leave at once.
    unsafe { libc::_exit(0) }
}

fn exec_child(plan: &ExecPlan<'_>) -> isize {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_exec(plan)));
    let message = match outcome {
        Ok(Err(e)) => e.to_string(),
        Err(_) => "exec panicked".to_string(),
    };
    init::report(
        plan.report,
        &format!("error {}\n", message.replace('\n', " ")),
    );
    // SAFETY: see container::init::child_main.
    unsafe { libc::_exit(1) }
}

fn run_exec(plan: &ExecPlan<'_>) -> Result<Infallible, InitError> {
    init::reset_signals()?;
    let mut b = [0u8; 1];
    // SAFETY: the go pipe's read end stays open in this process until exec.
    let go = unsafe { std::os::fd::BorrowedFd::borrow_raw(plan.go) };
    if nix::unistd::read(go, &mut b).step(|| "exec: wait for the caller".into())? != 1 {
        // SAFETY: the caller gave up; leave quietly.
        unsafe { libc::_exit(1) }
    }
    setsid().step(|| "setsid".into())?;
    init::setup_stdio(&plan.stdio)?;
    let spec = Spec::default();
    init::finish_process(plan.report, -1, plan.process, plan.filters, &spec)
}
