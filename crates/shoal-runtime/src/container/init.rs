//! The container init: `clone` with every new namespace at once (so it is PID 1 of its pid
//! namespace), then, in the child, everything up to `execve` in runc's order. Errors travel back to
//! the creator over a CLOEXEC report pipe as one `error <message>` line; `ready` says the child is
//! parked on the exec fifo, and EOF after `start` says `execve` succeeded.
//!
//! Why `clone` rather than fork + unshare + fork: one process fewer, and the child is already in
//! its pid namespace. The cost is that the cgroup namespace (whose root is fixed at creation) must
//! be unshared later, once the parent has moved the child into its cgroup; the child waits on the
//! "go" pipe for that (and for the user namespace maps) before running any code of the image.
#![allow(unsafe_code)]

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sched::{CloneFlags, clone, setns, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Pid, Uid, dup2_stderr, dup2_stdin, dup2_stdout, sethostname, setsid};
use oci_spec::runtime::{PosixRlimitType, Spec};

use super::rootfs::{self, RootfsPlan};
use crate::caps::{self, CapSets};
use crate::cgroups::CgroupPaths;
use crate::seccomp::{self, CompiledFilters};

/// A failed init step, as the creator will read it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InitError(String);

impl InitError {
    pub(crate) fn msg(s: impl Into<String>) -> Self {
        InitError(s.into())
    }
}

/// `result.step(|| "what we were doing")` → `what we were doing: no such file or directory`.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, InitError>;
}

impl<T> Step<T> for Result<T, Errno> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| InitError(format!("{}: {}", what(), e.desc().to_lowercase())))
    }
}

impl<T> Step<T> for Result<T, std::io::Error> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| {
            let text = match e.raw_os_error() {
                Some(n) => Errno::from_raw(n).desc().to_lowercase(),
                None => e.to_string(),
            };
            InitError(format!("{}: {text}", what()))
        })
    }
}

/// The child's standard streams, as the creator hands them over.
pub(crate) enum ChildStdio<'a> {
    Inherit,
    Fds([BorrowedFd<'a>; 3]),
    Tty(BorrowedFd<'a>),
}

/// Everything the init child needs; it lives in the parent and is copied by `clone`.
pub(crate) struct InitPlan<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub stdio: ChildStdio<'a>,
    pub go: RawFd,
    pub report: RawFd,
    /// O_PATH descriptor of the exec fifo, opened by the parent.
    pub fifo: RawFd,
    pub cgroup: &'a CgroupPaths,
    pub filters: Option<&'a CompiledFilters>,
    pub join: &'a [(CloneFlags, OwnedFd)],
    pub flags: CloneFlags,
    pub console: Option<&'a Path>,
}

/// Clones the init. The caller must be single-threaded: the child runs Rust code (and allocates)
/// in a copy of this address space, which is only sound when no other thread held a lock.
pub(crate) fn spawn(plan: &InitPlan<'_>) -> nix::Result<Pid> {
    let mut stack = vec![0u8; 1 << 20];
    // The cgroup namespace is unshared by the child once it sits in its cgroup.
    let flags = plan.flags & !CloneFlags::CLONE_NEWCGROUP;
    // SAFETY: without CLONE_VM the child gets its own copy of memory, so the closure's borrows of
    // `plan` stay valid in it; it never returns into the parent's frames (it execs or _exits),
    // and the caller guarantees the process is single-threaded, so no lock is held in the copy.
    unsafe {
        clone(
            Box::new(|| child_main(plan)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
}

fn child_main(plan: &InitPlan<'_>) -> isize {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| init(plan)));
    let message = match outcome {
        Ok(Err(e)) => e.to_string(),
        Err(_) => "container init panicked".to_string(),
    };
    report(
        plan.report,
        &format!("error {}\n", message.replace('\n', " ")),
    );
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // destructors, which belong to the parent's copy of this state.
    unsafe { libc::_exit(1) }
}

pub(crate) fn report(fd: RawFd, line: &str) {
    // SAFETY: `fd` is the report pipe's write end, open for the life of the child.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, line.as_bytes());
}

/// Default signal dispositions and an empty mask: the shim blocks SIGCHLD for its signalfd and
/// Rust ignores SIGPIPE, and both would be inherited across `execve`.
pub(crate) fn reset_signals() -> Result<(), InitError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .step(|| "reset signal mask".into())?;
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    Ok(())
}

fn wait_go(fd: RawFd) -> Result<(), InitError> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: `fd` is the go pipe's read end, inherited from the parent and still open.
        let f = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::read(f, &mut b) {
            Ok(1) => return Ok(()),
            Ok(_) => {
                // The creator gave up on us: leave without a word.
                // SAFETY: see child_main.
                unsafe { libc::_exit(1) }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).step(|| "wait for the creator".into()),
        }
    }
}

pub(crate) fn setup_stdio(stdio: &ChildStdio<'_>) -> Result<(), InitError> {
    match stdio {
        ChildStdio::Inherit => Ok(()),
        ChildStdio::Fds(fds) => {
            // Move out of 0..2 first so one dup2 cannot clobber another's source.
            let mut high = Vec::new();
            for fd in fds {
                let h = fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(10)).step(|| "dup stdio".into())?;
                high.push(h);
            }
            // SAFETY: each descriptor was just created by F_DUPFD_CLOEXEC and is ours alone.
            let owned: Vec<OwnedFd> = high
                .into_iter()
                .map(|h| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(h) })
                .collect();
            dup2_stdin(&owned[0]).step(|| "dup2 stdin".into())?;
            dup2_stdout(&owned[1]).step(|| "dup2 stdout".into())?;
            dup2_stderr(&owned[2]).step(|| "dup2 stderr".into())?;
            Ok(())
        }
        ChildStdio::Tty(slave) => {
            // SAFETY: TIOCSCTTY takes an integer argument; the slave is a valid tty descriptor.
            let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
            Errno::result(rc).step(|| "set controlling terminal".into())?;
            dup2_stdin(slave).step(|| "dup2 tty".into())?;
            dup2_stdout(slave).step(|| "dup2 tty".into())?;
            dup2_stderr(slave).step(|| "dup2 tty".into())?;
            Ok(())
        }
    }
}

fn init(plan: &InitPlan<'_>) -> Result<Infallible, InitError> {
    reset_signals()?;
    wait_go(plan.go)?;
    let spec = plan.spec;
    let linux = spec.linux().as_ref();
    let userns = plan.flags.contains(CloneFlags::CLONE_NEWUSER);
    if userns {
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .step(|| "become root in the user namespace".into())?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .step(|| "become root in the user namespace".into())?;
    }
    // Join existing namespaces; the mount namespace last, since it changes what paths mean.
    let mut joins: Vec<&(CloneFlags, OwnedFd)> = plan.join.iter().collect();
    joins.sort_by_key(|(f, _)| *f == CloneFlags::CLONE_NEWNS);
    for (flag, fd) in joins {
        setns(fd, *flag).step(|| format!("join namespace {flag:?}"))?;
    }
    if plan.flags.contains(CloneFlags::CLONE_NEWCGROUP) {
        unshare(CloneFlags::CLONE_NEWCGROUP).step(|| "unshare cgroup namespace".into())?;
    }
    setsid().step(|| "setsid".into())?;
    setup_stdio(&plan.stdio)?;

    if plan.flags.contains(CloneFlags::CLONE_NEWUTS) {
        if let Some(h) = spec.hostname() {
            sethostname(h).step(|| format!("set hostname {h}"))?;
        }
        if let Some(d) = spec.domainname() {
            let c = CString::new(d.as_bytes()).map_err(|_| InitError::msg("bad domainname"))?;
            // SAFETY: setdomainname reads `len` bytes from a live C string.
            let rc = unsafe { libc::setdomainname(c.as_ptr(), d.len()) };
            Errno::result(rc).step(|| "set domainname".into())?;
        }
    }

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| InitError::msg("the spec has no process"))?;
    if !plan.flags.contains(CloneFlags::CLONE_NEWNS)
        && !plan.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS)
    {
        return Err(InitError::msg("a mount namespace is required"));
    }
    // umask 0 while we create nodes, so modes are what the spec says.
    umask(Mode::empty());
    rootfs::prepare(&RootfsPlan {
        spec,
        rootfs: plan.rootfs,
        cgroup: plan.cgroup,
        console: plan.console,
        userns,
        cwd: process.cwd(),
    })?;
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).step(|| format!("sysctl {k}"))?;
        }
    }
    rootfs::finish(spec)?;

    finish_process(plan.report, plan.fifo, process, plan.filters, spec)
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    use PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    })
}

/// Looks `arg0` up the way execvp would, inside the container's root. Done before parking on the
/// fifo so `create` (not a later `start`) reports a missing binary.
pub(crate) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, InitError> {
    let check = |p: &Path| -> Result<(), Errno> {
        let meta = std::fs::metadata(p)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        if meta.is_dir() {
            return Err(Errno::EACCES);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
    };
    if arg0.is_empty() {
        return Err(InitError::msg("exec: no command given"));
    }
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match check(&p) {
            Ok(()) => Ok(p),
            Err(e) => Err(InitError(format!(
                "exec \"{arg0}\": {}",
                e.desc().to_lowercase()
            ))),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::spec::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        if check(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(InitError(format!(
        "exec: \"{arg0}\": executable file not found in $PATH"
    )))
}

/// The part shared with `exec`: rlimits, no_new_privs, seccomp, user, capabilities, cwd, fds,
/// then park on the fifo (if any) and `execve`.
pub(crate) fn finish_process(
    report_fd: RawFd,
    fifo: RawFd,
    process: &oci_spec::runtime::Process,
    filters: Option<&CompiledFilters>,
    _spec: &Spec,
) -> Result<Infallible, InitError> {
    for r in process.rlimits().as_deref().unwrap_or_default() {
        if let Some(res) = rlimit_resource(r.typ()) {
            setrlimit(res, r.soft(), r.hard()).step(|| format!("setrlimit {:?}", r.typ()))?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .step(|| "set oom_score_adj".into())?;
    }
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let arg0 = args.first().cloned().unwrap_or_default();
    let cwd = process.cwd();
    std::env::set_current_dir(cwd).step(|| format!("chdir {}", cwd.display()))?;
    let exe = find_executable(&arg0, &env)?;

    let nnp = process.no_new_privileges() == Some(true);
    if nnp {
        nix::sys::prctl::set_no_new_privs().step(|| "set no_new_privs".into())?;
    }
    // Without no_new_privs installing a filter needs CAP_SYS_ADMIN: do it while we have it.
    if let Some(f) = filters
        && !nnp
    {
        seccomp::install(f).map_err(|e| InitError(e.to_string()))?;
    }

    let user = process.user();
    let sets = process
        .capabilities()
        .as_ref()
        .map(CapSets::from_spec)
        .unwrap_or_default();
    caps::drop_bounding(sets.bounding).step(|| "drop bounding capabilities".into())?;
    nix::sys::prctl::set_keepcaps(true).step(|| "keep capabilities".into())?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is refused in a user namespace whose setgroups file says deny.
    match nix::unistd::setgroups(&groups) {
        Err(Errno::EPERM) if groups.is_empty() => {}
        r => r.step(|| "setgroups".into())?,
    }
    let (gid, uid) = (Gid::from_raw(user.gid()), Uid::from_raw(user.uid()));
    nix::unistd::setresgid(gid, gid, gid).step(|| format!("setgid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).step(|| format!("setuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).step(|| "clear keepcaps".into())?;
    caps::apply(&sets).step(|| "apply capabilities".into())?;
    umask(Mode::from_bits_truncate(
        user.umask().unwrap_or(0o022) as libc::mode_t
    ));

    // Every descriptor past stdio closes at execve (the report pipe says "exec'd" that way).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc).step(|| "close_range".into())?;

    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| InitError::msg("argument contains a NUL byte"))?;
    let envp: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| InitError::msg("environment contains a NUL byte"))?;
    let exe_c = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| InitError::msg("path contains a NUL byte"))?;

    if fifo >= 0 {
        report(report_fd, "ready\n");
        wait_start(fifo)?;
    }
    if let Some(f) = filters
        && nnp
    {
        // As late as possible, so the filter constrains only the container's own code.
        seccomp::install(f).map_err(|e| InitError(e.to_string()))?;
    }
    let err = nix::unistd::execve(&exe_c, &argv, &envp).unwrap_err();
    let msg = format!("error exec \"{arg0}\": {}\n", err.desc().to_lowercase());
    // The creator may be gone (OCI create then exit): a write to a closed pipe must not kill us.
    // SAFETY: ignoring SIGPIPE runs no code in signal context.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    report(report_fd, &msg);
    // SAFETY: see child_main.
    unsafe { libc::_exit(if err == Errno::ENOENT { 127 } else { 126 }) }
}

/// Blocks until `start` opens the fifo for reading, then hands it a byte.
fn wait_start(fifo: RawFd) -> Result<(), InitError> {
    let path = format!("/proc/self/fd/{fifo}");
    let fd = loop {
        match open(
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Err(Errno::EINTR) => continue,
            r => break r.step(|| "open exec fifo".into())?,
        }
    };
    let mut f = std::fs::File::from(fd);
    f.write_all(b"0").step(|| "write exec fifo".into())?;
    Ok(())
}
