//! Seccomp: Docker's default profile as an OCI `LinuxSeccomp`, its compilation to BPF with the
//! pure-Rust `seccompiler`, and installing the result without forcing `no_new_privs`.
//!
//! seccompiler gives one match action per filter, so a profile compiles to a stack of filters: the
//! allow-list (default action on mismatch), then one filter per other action (for instance
//! `clone3 → ENOSYS`). The kernel runs all of them and keeps the strictest verdict; between two
//! `ERRNO` verdicts the filter installed last wins, which is why the special-errno filters go on
//! top. Syscalls named by a non-allow rule are let through by the allow-list so that the rule,
//! not the default action, decides them.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp architecture {0} is not supported")]
    UnsupportedArch(&'static str),
    #[error("seccomp action {0:?} is not supported")]
    UnsupportedAction(LinuxSeccompAction),
    #[error("seccomp operator {0:?} is not supported")]
    UnsupportedOperator(LinuxSeccompOperator),
    #[error("compiling seccomp filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
    #[error("installing seccomp filter: {0}")]
    Install(nix::errno::Errno),
}

/// `CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET` (Docker's 2114060288).
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Syscalls Docker allows unconditionally (`moby/profiles/seccomp/default.json`), all
/// architectures mixed: names a kernel does not have on this architecture are skipped.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // x86_64 only
    "arch_prctl",
    "modify_ldt",
];

/// Syscalls unlocked by one capability, as Docker's profile gates them.
const CAP_GATED: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

fn allow(names: &[&str]) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .expect("names and action are set")
}

/// Docker's default profile for a container holding `caps`.
pub fn default_profile(caps: &Capabilities) -> LinuxSeccomp {
    let mut syscalls = vec![allow(ALLOWED)];
    // personality: only the harmless personas.
    for persona in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(persona)
                        .op(LinuxSeccompOperator::ScmpCmpEq)
                        .build()
                        .expect("arg fields set"),
                ])
                .build()
                .expect("syscall fields set"),
        );
    }
    // socket: anything but AF_VSOCK (40).
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["socket".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(40u64)
                    .op(LinuxSeccompOperator::ScmpCmpNe)
                    .build()
                    .expect("arg fields set"),
            ])
            .build()
            .expect("syscall fields set"),
    );
    let sys_admin = caps.contains(&Capability::SysAdmin);
    if !sys_admin {
        // clone without any CLONE_NEW* flag; clone3 cannot be inspected, so it says ENOSYS and
        // libc falls back to clone.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(CLONE_NAMESPACE_FLAGS)
                        .value_two(0u64)
                        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                        .build()
                        .expect("arg fields set"),
                ])
                .build()
                .expect("syscall fields set"),
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .expect("syscall fields set"),
        );
    }
    for (cap, names) in CAP_GATED {
        if caps.contains(cap) {
            syscalls.push(allow(names));
        }
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .expect("profile fields set")
}

/// A compiled profile: filters to install in order.
#[derive(Clone, Debug)]
pub struct CompiledFilters(pub Vec<BpfProgram>);

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other => return Err(SeccompError::UnsupportedAction(other)),
    })
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        "riscv64" => Ok(TargetArch::riscv64),
        other => Err(SeccompError::UnsupportedArch(other)),
    }
}

fn rule(args: &[oci_spec::runtime::LinuxSeccompArg]) -> Result<Option<SeccompRule>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut conds = Vec::new();
    for a in args {
        let op = match a.op() {
            LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
            LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
            LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
            LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
            LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
            LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
            LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
        };
        // For MASKED_EQ the OCI value is the mask and valueTwo the expected value.
        let value = match a.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
            _ => a.value(),
        };
        conds.push(SeccompCondition::new(
            a.index() as u8,
            SeccompCmpArgLen::Qword,
            op,
            value,
        )?);
    }
    Ok(Some(SeccompRule::new(conds)?))
}

type Chains = BTreeMap<i64, Vec<SeccompRule>>;

/// Rules for one action: per syscall, its conditional rules, or "always" (an empty chain).
#[derive(Default)]
struct Group {
    chains: Chains,
    always: std::collections::BTreeSet<i64>,
}

impl Group {
    fn add(&mut self, nr: i64, r: Option<SeccompRule>) {
        match r {
            None => {
                self.always.insert(nr);
            }
            Some(r) => self.chains.entry(nr).or_default().push(r),
        }
    }

    fn finish(mut self) -> Chains {
        for nr in self.always {
            self.chains.insert(nr, Vec::new());
        }
        self.chains
    }
}

/// Compiles an OCI seccomp profile for this architecture.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilters, SeccompError> {
    let arch = target_arch()?;
    let default_errno = profile.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(profile.default_action(), None, default_errno)?;
    let mut allow = Group::default();
    // Other actions, in first-seen order; equal actions share a filter.
    let mut others: Vec<(SeccompAction, Group)> = Vec::new();
    let table = syscall_table();
    for sc in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(sc.action(), sc.errno_ret(), default_errno)?;
        if act == default {
            continue;
        }
        let args = sc.args().as_deref().unwrap_or_default();
        for name in sc.names() {
            let Some(&nr) = table.get(name.as_str()) else {
                tracing::trace!(syscall = %name, "syscall unknown on this architecture, skipped");
                continue;
            };
            let r = rule(args)?;
            let group = if act == SeccompAction::Allow {
                &mut allow
            } else {
                let idx = match others.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        others.push((act.clone(), Group::default()));
                        others.len() - 1
                    }
                };
                &mut others[idx].1
            };
            group.add(nr, r);
        }
    }
    // Let the later filters decide the syscalls they name unconditionally.
    for (_, g) in &others {
        for nr in &g.always {
            allow.add(*nr, None);
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        let f = SeccompFilter::new(allow.finish(), default.clone(), SeccompAction::Allow, arch)?;
        programs.push(BpfProgram::try_from(f)?);
    }
    for (act, group) in others {
        let f = SeccompFilter::new(group.finish(), SeccompAction::Allow, act, arch)?;
        programs.push(BpfProgram::try_from(f)?);
    }
    Ok(CompiledFilters(programs))
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Installs the filters on the calling thread. Without `no_new_privs` this needs CAP_SYS_ADMIN,
/// which is why the container init installs it before dropping capabilities in that case.
pub fn install(filters: &CompiledFilters) -> Result<(), SeccompError> {
    for prog in &filters.0 {
        let fprog = SockFprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_ptr(),
        };
        // SAFETY: the kernel copies the program (copy_from_user) during the call; `fprog` and the
        // instructions it points to outlive it, and sock_filter is #[repr(C)] like the kernel's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const SockFprog,
            )
        };
        nix::errno::Errno::result(rc).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// Syscall names to numbers for this architecture.
pub fn syscall_table() -> HashMap<&'static str, i64> {
    let mut m: HashMap<&'static str, i64> = HashMap::with_capacity(512);
    // The kernel numbers syscalls from 424 on identically on every architecture.
    const UNIFIED: &[(&str, i64)] = &[
        ("pidfd_send_signal", 424),
        ("io_uring_setup", 425),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("open_tree", 428),
        ("move_mount", 429),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("pidfd_open", 434),
        ("clone3", 435),
        ("close_range", 436),
        ("openat2", 437),
        ("pidfd_getfd", 438),
        ("faccessat2", 439),
        ("process_madvise", 440),
        ("epoll_pwait2", 441),
        ("mount_setattr", 442),
        ("quotactl_fd", 443),
        ("landlock_create_ruleset", 444),
        ("landlock_add_rule", 445),
        ("landlock_restrict_self", 446),
        ("memfd_secret", 447),
        ("process_mrelease", 448),
        ("futex_waitv", 449),
        ("set_mempolicy_home_node", 450),
        ("cachestat", 451),
        ("fchmodat2", 452),
        ("map_shadow_stack", 453),
        ("futex_wake", 454),
        ("futex_wait", 455),
        ("futex_requeue", 456),
        ("statmount", 457),
        ("listmount", 458),
        ("lsm_get_self_attr", 459),
        ("lsm_set_self_attr", 460),
        ("lsm_list_modules", 461),
        ("mseal", 462),
        ("setxattrat", 463),
        ("getxattrat", 464),
        ("listxattrat", 465),
        ("removexattrat", 466),
    ];
    for (n, nr) in UNIFIED {
        m.insert(n, *nr);
    }
    // Present on every architecture we build for (the asm-generic table plus x86_64's).
    {
        let pairs: &[(&'static str, i64)] = &[
            ("accept", libc::SYS_accept),
            ("accept4", libc::SYS_accept4),
            ("acct", libc::SYS_acct),
            ("adjtimex", libc::SYS_adjtimex),
            ("bind", libc::SYS_bind),
            ("bpf", libc::SYS_bpf),
            ("brk", libc::SYS_brk),
            ("capget", libc::SYS_capget),
            ("capset", libc::SYS_capset),
            ("chdir", libc::SYS_chdir),
            ("chroot", libc::SYS_chroot),
            ("clock_adjtime", libc::SYS_clock_adjtime),
            ("clock_getres", libc::SYS_clock_getres),
            ("clock_gettime", libc::SYS_clock_gettime),
            ("clock_nanosleep", libc::SYS_clock_nanosleep),
            ("clock_settime", libc::SYS_clock_settime),
            ("clone", libc::SYS_clone),
            ("close", libc::SYS_close),
            ("connect", libc::SYS_connect),
            ("copy_file_range", libc::SYS_copy_file_range),
            ("delete_module", libc::SYS_delete_module),
            ("dup", libc::SYS_dup),
            ("dup3", libc::SYS_dup3),
            ("epoll_create1", libc::SYS_epoll_create1),
            ("epoll_ctl", libc::SYS_epoll_ctl),
            ("epoll_pwait", libc::SYS_epoll_pwait),
            ("eventfd2", libc::SYS_eventfd2),
            ("execve", libc::SYS_execve),
            ("execveat", libc::SYS_execveat),
            ("exit", libc::SYS_exit),
            ("exit_group", libc::SYS_exit_group),
            ("faccessat", libc::SYS_faccessat),
            ("fallocate", libc::SYS_fallocate),
            ("fanotify_init", libc::SYS_fanotify_init),
            ("fanotify_mark", libc::SYS_fanotify_mark),
            ("fchdir", libc::SYS_fchdir),
            ("fchmod", libc::SYS_fchmod),
            ("fchmodat", libc::SYS_fchmodat),
            ("fchown", libc::SYS_fchown),
            ("fchownat", libc::SYS_fchownat),
            ("fcntl", libc::SYS_fcntl),
            ("fdatasync", libc::SYS_fdatasync),
            ("fgetxattr", libc::SYS_fgetxattr),
            ("finit_module", libc::SYS_finit_module),
            ("flistxattr", libc::SYS_flistxattr),
            ("flock", libc::SYS_flock),
            ("fremovexattr", libc::SYS_fremovexattr),
            ("fsetxattr", libc::SYS_fsetxattr),
            ("fstat", libc::SYS_fstat),
            ("fstatfs", libc::SYS_fstatfs),
            ("fsync", libc::SYS_fsync),
            ("ftruncate", libc::SYS_ftruncate),
            ("futex", libc::SYS_futex),
            ("get_mempolicy", libc::SYS_get_mempolicy),
            ("get_robust_list", libc::SYS_get_robust_list),
            ("getcpu", libc::SYS_getcpu),
            ("getcwd", libc::SYS_getcwd),
            ("getdents64", libc::SYS_getdents64),
            ("getegid", libc::SYS_getegid),
            ("geteuid", libc::SYS_geteuid),
            ("getgid", libc::SYS_getgid),
            ("getgroups", libc::SYS_getgroups),
            ("getitimer", libc::SYS_getitimer),
            ("getpeername", libc::SYS_getpeername),
            ("getpgid", libc::SYS_getpgid),
            ("getpid", libc::SYS_getpid),
            ("getppid", libc::SYS_getppid),
            ("getpriority", libc::SYS_getpriority),
            ("getrandom", libc::SYS_getrandom),
            ("getresgid", libc::SYS_getresgid),
            ("getresuid", libc::SYS_getresuid),
            ("getrlimit", libc::SYS_getrlimit),
            ("getrusage", libc::SYS_getrusage),
            ("getsid", libc::SYS_getsid),
            ("getsockname", libc::SYS_getsockname),
            ("getsockopt", libc::SYS_getsockopt),
            ("gettid", libc::SYS_gettid),
            ("gettimeofday", libc::SYS_gettimeofday),
            ("getuid", libc::SYS_getuid),
            ("getxattr", libc::SYS_getxattr),
            ("init_module", libc::SYS_init_module),
            ("inotify_add_watch", libc::SYS_inotify_add_watch),
            ("inotify_init1", libc::SYS_inotify_init1),
            ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
            ("io_cancel", libc::SYS_io_cancel),
            ("io_destroy", libc::SYS_io_destroy),
            ("io_getevents", libc::SYS_io_getevents),
            ("io_setup", libc::SYS_io_setup),
            ("io_submit", libc::SYS_io_submit),
            ("ioctl", libc::SYS_ioctl),
            ("ioprio_get", libc::SYS_ioprio_get),
            ("ioprio_set", libc::SYS_ioprio_set),
            ("kcmp", libc::SYS_kcmp),
            ("kill", libc::SYS_kill),
            ("lgetxattr", libc::SYS_lgetxattr),
            ("linkat", libc::SYS_linkat),
            ("listen", libc::SYS_listen),
            ("listxattr", libc::SYS_listxattr),
            ("llistxattr", libc::SYS_llistxattr),
            ("lookup_dcookie", libc::SYS_lookup_dcookie),
            ("lremovexattr", libc::SYS_lremovexattr),
            ("lseek", libc::SYS_lseek),
            ("lsetxattr", libc::SYS_lsetxattr),
            ("madvise", libc::SYS_madvise),
            ("mbind", libc::SYS_mbind),
            ("membarrier", libc::SYS_membarrier),
            ("memfd_create", libc::SYS_memfd_create),
            ("mincore", libc::SYS_mincore),
            ("mkdirat", libc::SYS_mkdirat),
            ("mknodat", libc::SYS_mknodat),
            ("mlock", libc::SYS_mlock),
            ("mlock2", libc::SYS_mlock2),
            ("mlockall", libc::SYS_mlockall),
            ("mmap", libc::SYS_mmap),
            ("mount", libc::SYS_mount),
            ("mprotect", libc::SYS_mprotect),
            ("mq_getsetattr", libc::SYS_mq_getsetattr),
            ("mq_notify", libc::SYS_mq_notify),
            ("mq_open", libc::SYS_mq_open),
            ("mq_timedreceive", libc::SYS_mq_timedreceive),
            ("mq_timedsend", libc::SYS_mq_timedsend),
            ("mq_unlink", libc::SYS_mq_unlink),
            ("mremap", libc::SYS_mremap),
            ("msgctl", libc::SYS_msgctl),
            ("msgget", libc::SYS_msgget),
            ("msgrcv", libc::SYS_msgrcv),
            ("msgsnd", libc::SYS_msgsnd),
            ("msync", libc::SYS_msync),
            ("munlock", libc::SYS_munlock),
            ("munlockall", libc::SYS_munlockall),
            ("munmap", libc::SYS_munmap),
            ("name_to_handle_at", libc::SYS_name_to_handle_at),
            ("nanosleep", libc::SYS_nanosleep),
            ("newfstatat", libc::SYS_newfstatat),
            ("openat", libc::SYS_openat),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("personality", libc::SYS_personality),
            ("pipe2", libc::SYS_pipe2),
            ("pkey_alloc", libc::SYS_pkey_alloc),
            ("pkey_free", libc::SYS_pkey_free),
            ("pkey_mprotect", libc::SYS_pkey_mprotect),
            ("ppoll", libc::SYS_ppoll),
            ("prctl", libc::SYS_prctl),
            ("pread64", libc::SYS_pread64),
            ("preadv", libc::SYS_preadv),
            ("preadv2", libc::SYS_preadv2),
            ("prlimit64", libc::SYS_prlimit64),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("pselect6", libc::SYS_pselect6),
            ("ptrace", libc::SYS_ptrace),
            ("pwrite64", libc::SYS_pwrite64),
            ("pwritev", libc::SYS_pwritev),
            ("pwritev2", libc::SYS_pwritev2),
            ("quotactl", libc::SYS_quotactl),
            ("read", libc::SYS_read),
            ("readahead", libc::SYS_readahead),
            ("readlinkat", libc::SYS_readlinkat),
            ("readv", libc::SYS_readv),
            ("reboot", libc::SYS_reboot),
            ("recvfrom", libc::SYS_recvfrom),
            ("recvmmsg", libc::SYS_recvmmsg),
            ("recvmsg", libc::SYS_recvmsg),
            ("remap_file_pages", libc::SYS_remap_file_pages),
            ("removexattr", libc::SYS_removexattr),
            ("renameat", libc::SYS_renameat),
            ("renameat2", libc::SYS_renameat2),
            ("restart_syscall", libc::SYS_restart_syscall),
            ("rseq", libc::SYS_rseq),
            ("rt_sigaction", libc::SYS_rt_sigaction),
            ("rt_sigpending", libc::SYS_rt_sigpending),
            ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
            ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
            ("rt_sigreturn", libc::SYS_rt_sigreturn),
            ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
            ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
            ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
            ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
            ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
            ("sched_getaffinity", libc::SYS_sched_getaffinity),
            ("sched_getattr", libc::SYS_sched_getattr),
            ("sched_getparam", libc::SYS_sched_getparam),
            ("sched_getscheduler", libc::SYS_sched_getscheduler),
            ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
            ("sched_setaffinity", libc::SYS_sched_setaffinity),
            ("sched_setattr", libc::SYS_sched_setattr),
            ("sched_setparam", libc::SYS_sched_setparam),
            ("sched_setscheduler", libc::SYS_sched_setscheduler),
            ("sched_yield", libc::SYS_sched_yield),
            ("seccomp", libc::SYS_seccomp),
            ("semctl", libc::SYS_semctl),
            ("semget", libc::SYS_semget),
            ("semop", libc::SYS_semop),
            ("semtimedop", libc::SYS_semtimedop),
            ("sendfile", libc::SYS_sendfile),
            ("sendmmsg", libc::SYS_sendmmsg),
            ("sendmsg", libc::SYS_sendmsg),
            ("sendto", libc::SYS_sendto),
            ("set_mempolicy", libc::SYS_set_mempolicy),
            ("set_robust_list", libc::SYS_set_robust_list),
            ("set_tid_address", libc::SYS_set_tid_address),
            ("setdomainname", libc::SYS_setdomainname),
            ("setfsgid", libc::SYS_setfsgid),
            ("setfsuid", libc::SYS_setfsuid),
            ("setgid", libc::SYS_setgid),
            ("setgroups", libc::SYS_setgroups),
            ("sethostname", libc::SYS_sethostname),
            ("setitimer", libc::SYS_setitimer),
            ("setns", libc::SYS_setns),
            ("setpgid", libc::SYS_setpgid),
            ("setpriority", libc::SYS_setpriority),
            ("setregid", libc::SYS_setregid),
            ("setresgid", libc::SYS_setresgid),
            ("setresuid", libc::SYS_setresuid),
            ("setreuid", libc::SYS_setreuid),
            ("setrlimit", libc::SYS_setrlimit),
            ("setsid", libc::SYS_setsid),
            ("setsockopt", libc::SYS_setsockopt),
            ("settimeofday", libc::SYS_settimeofday),
            ("setuid", libc::SYS_setuid),
            ("setxattr", libc::SYS_setxattr),
            ("shmat", libc::SYS_shmat),
            ("shmctl", libc::SYS_shmctl),
            ("shmdt", libc::SYS_shmdt),
            ("shmget", libc::SYS_shmget),
            ("shutdown", libc::SYS_shutdown),
            ("sigaltstack", libc::SYS_sigaltstack),
            ("signalfd4", libc::SYS_signalfd4),
            ("socket", libc::SYS_socket),
            ("socketpair", libc::SYS_socketpair),
            ("splice", libc::SYS_splice),
            ("statfs", libc::SYS_statfs),
            ("statx", libc::SYS_statx),
            ("symlinkat", libc::SYS_symlinkat),
            ("sync", libc::SYS_sync),
            ("sync_file_range", libc::SYS_sync_file_range),
            ("syncfs", libc::SYS_syncfs),
            ("sysinfo", libc::SYS_sysinfo),
            ("syslog", libc::SYS_syslog),
            ("tee", libc::SYS_tee),
            ("tgkill", libc::SYS_tgkill),
            ("timer_create", libc::SYS_timer_create),
            ("timer_delete", libc::SYS_timer_delete),
            ("timer_getoverrun", libc::SYS_timer_getoverrun),
            ("timer_gettime", libc::SYS_timer_gettime),
            ("timer_settime", libc::SYS_timer_settime),
            ("timerfd_create", libc::SYS_timerfd_create),
            ("timerfd_gettime", libc::SYS_timerfd_gettime),
            ("timerfd_settime", libc::SYS_timerfd_settime),
            ("times", libc::SYS_times),
            ("tkill", libc::SYS_tkill),
            ("truncate", libc::SYS_truncate),
            ("umask", libc::SYS_umask),
            ("umount2", libc::SYS_umount2),
            ("uname", libc::SYS_uname),
            ("unlinkat", libc::SYS_unlinkat),
            ("unshare", libc::SYS_unshare),
            ("utimensat", libc::SYS_utimensat),
            ("vhangup", libc::SYS_vhangup),
            ("vmsplice", libc::SYS_vmsplice),
            ("wait4", libc::SYS_wait4),
            ("waitid", libc::SYS_waitid),
            ("write", libc::SYS_write),
            ("writev", libc::SYS_writev),
        ];
        m.extend(pairs.iter().copied());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let legacy: &[(&'static str, i64)] = &[
            ("access", libc::SYS_access),
            ("alarm", libc::SYS_alarm),
            ("arch_prctl", libc::SYS_arch_prctl),
            ("chmod", libc::SYS_chmod),
            ("chown", libc::SYS_chown),
            ("creat", libc::SYS_creat),
            ("dup2", libc::SYS_dup2),
            ("epoll_create", libc::SYS_epoll_create),
            ("epoll_ctl_old", libc::SYS_epoll_ctl_old),
            ("epoll_wait", libc::SYS_epoll_wait),
            ("epoll_wait_old", libc::SYS_epoll_wait_old),
            ("eventfd", libc::SYS_eventfd),
            ("fadvise64", libc::SYS_fadvise64),
            ("fork", libc::SYS_fork),
            ("futimesat", libc::SYS_futimesat),
            ("get_thread_area", libc::SYS_get_thread_area),
            ("getdents", libc::SYS_getdents),
            ("getpgrp", libc::SYS_getpgrp),
            ("inotify_init", libc::SYS_inotify_init),
            ("ioperm", libc::SYS_ioperm),
            ("iopl", libc::SYS_iopl),
            ("lchown", libc::SYS_lchown),
            ("link", libc::SYS_link),
            ("lstat", libc::SYS_lstat),
            ("mkdir", libc::SYS_mkdir),
            ("mknod", libc::SYS_mknod),
            ("modify_ldt", libc::SYS_modify_ldt),
            ("open", libc::SYS_open),
            ("pause", libc::SYS_pause),
            ("pipe", libc::SYS_pipe),
            ("poll", libc::SYS_poll),
            ("readlink", libc::SYS_readlink),
            ("rename", libc::SYS_rename),
            ("rmdir", libc::SYS_rmdir),
            ("select", libc::SYS_select),
            ("set_thread_area", libc::SYS_set_thread_area),
            ("signalfd", libc::SYS_signalfd),
            ("stat", libc::SYS_stat),
            ("symlink", libc::SYS_symlink),
            ("time", libc::SYS_time),
            ("unlink", libc::SYS_unlink),
            ("utime", libc::SYS_utime),
            ("utimes", libc::SYS_utimes),
            ("vfork", libc::SYS_vfork),
        ];
        m.extend(legacy.iter().copied());
        m.insert("io_pgetevents", 333);
    }
    #[cfg(target_arch = "aarch64")]
    m.insert("io_pgetevents", 292);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles() {
        let caps: Capabilities = crate::caps::DOCKER_DEFAULTS.iter().copied().collect();
        let profile = default_profile(&caps);
        let compiled = compile(&profile).unwrap();
        // The allow-list and the clone3 → ENOSYS layer.
        assert_eq!(compiled.0.len(), 2);
        assert!(compiled.0[0].len() < 4096);
        let table = syscall_table();
        assert_eq!(table["read"], libc::SYS_read);
        assert_eq!(table["clone3"], 435);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(table["open"], libc::SYS_open);
    }

    #[test]
    fn sys_admin_unlocks_namespaces() {
        let mut caps: Capabilities = crate::caps::DOCKER_DEFAULTS.iter().copied().collect();
        caps.insert(Capability::SysAdmin);
        let profile = default_profile(&caps);
        let names: Vec<&str> = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect();
        assert!(names.contains(&"unshare") && names.contains(&"clone3"));
        assert_eq!(compile(&profile).unwrap().0.len(), 1);
    }
}
