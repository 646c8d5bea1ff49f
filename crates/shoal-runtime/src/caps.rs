//! Linux capabilities: names and bit numbers, Docker's default set, and the raw `capset`/`prctl`
//! calls that drop the bounding set and install the permitted, effective, inheritable and ambient
//! sets in a container process.
#![allow(unsafe_code)]

use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Docker's 14 default capabilities (`moby:daemon/pkg/oci/caps/defaults.go`).
pub const DOCKER_DEFAULTS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows, with its kernel bit number.
pub const ALL: [(Capability, u32); 41] = [
    (Capability::Chown, 0),
    (Capability::DacOverride, 1),
    (Capability::DacReadSearch, 2),
    (Capability::Fowner, 3),
    (Capability::Fsetid, 4),
    (Capability::Kill, 5),
    (Capability::Setgid, 6),
    (Capability::Setuid, 7),
    (Capability::Setpcap, 8),
    (Capability::LinuxImmutable, 9),
    (Capability::NetBindService, 10),
    (Capability::NetBroadcast, 11),
    (Capability::NetAdmin, 12),
    (Capability::NetRaw, 13),
    (Capability::IpcLock, 14),
    (Capability::IpcOwner, 15),
    (Capability::SysModule, 16),
    (Capability::SysRawio, 17),
    (Capability::SysChroot, 18),
    (Capability::SysPtrace, 19),
    (Capability::SysPacct, 20),
    (Capability::SysAdmin, 21),
    (Capability::SysBoot, 22),
    (Capability::SysNice, 23),
    (Capability::SysResource, 24),
    (Capability::SysTime, 25),
    (Capability::SysTtyConfig, 26),
    (Capability::Mknod, 27),
    (Capability::Lease, 28),
    (Capability::AuditWrite, 29),
    (Capability::AuditControl, 30),
    (Capability::Setfcap, 31),
    (Capability::MacOverride, 32),
    (Capability::MacAdmin, 33),
    (Capability::Syslog, 34),
    (Capability::WakeAlarm, 35),
    (Capability::BlockSuspend, 36),
    (Capability::AuditRead, 37),
    (Capability::Perfmon, 38),
    (Capability::Bpf, 39),
    (Capability::CheckpointRestore, 40),
];

/// The kernel bit number of `cap`.
pub fn number(cap: Capability) -> u32 {
    ALL.iter()
        .find(|(c, _)| *c == cap)
        .map(|(_, n)| *n)
        .unwrap_or(u32::MAX)
}

/// Parses `CAP_SYS_ADMIN`, `SYS_ADMIN` or `sys_admin`.
pub fn parse(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().ok()
}

/// A set as a bit mask (bits beyond 63 are ignored: the kernel has 41 today).
pub fn mask(set: &Capabilities) -> u64 {
    set.iter()
        .map(|c| number(*c))
        .filter(|n| *n < 64)
        .fold(0, |m, n| m | (1u64 << n))
}

/// The highest capability this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The five capability sets of a process, as masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    /// Masks from an OCI capabilities object (a missing set is empty, as runc treats it).
    pub fn from_spec(caps: &LinuxCapabilities) -> Self {
        let m = |s: &Option<Capabilities>| s.as_ref().map(mask).unwrap_or(0);
        CapSets {
            bounding: m(caps.bounding()),
            effective: m(caps.effective()),
            permitted: m(caps.permitted()),
            inheritable: m(caps.inheritable()),
            ambient: m(caps.ambient()),
        }
    }
}

/// Drops every capability not in `keep` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding(keep: u64) -> Result<(), Errno> {
    for cap in 0..=last_cap().min(63) {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a plain integer and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = Errno::last();
            // A kernel older than our table rejects unknown numbers: nothing to drop there.
            if err != Errno::EINVAL {
                return Err(err);
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Installs the effective, permitted and inheritable sets of the calling thread, then raises the
/// ambient ones (those not also permitted and inheritable are skipped).
pub fn apply(sets: &CapSets) -> Result<(), Errno> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| [(m & 0xffff_ffff) as u32, (m >> 32) as u32];
    let (e, p, i) = (
        split(sets.effective),
        split(sets.permitted),
        split(sets.inheritable),
    );
    let data = [
        CapData {
            effective: e[0],
            permitted: p[0],
            inheritable: i[0],
        },
        CapData {
            effective: e[1],
            permitted: p[1],
            inheritable: i[1],
        },
    ];
    // SAFETY: capset reads one header and two data structs (version 3 layout), both live and
    // correctly laid out (#[repr(C)]) for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    Errno::result(rc)?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes only integers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(rc)?;
    for cap in 0..64u32 {
        if sets.ambient & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: PR_CAP_AMBIENT_RAISE takes only integers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        // Like runc: an ambient capability that is not also inheritable (a common spec mistake)
        // cannot be raised; that is not worth failing the container for.
        if let Err(e) = Errno::result(rc) {
            tracing::warn!(cap, error = %e, "cannot raise ambient capability");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults_mask_matches_docker() {
        let set: Capabilities = DOCKER_DEFAULTS.iter().copied().collect();
        assert_eq!(mask(&set), 0xa804_25fb);
    }

    #[test]
    fn parses_names() {
        assert_eq!(parse("CAP_SYS_ADMIN"), Some(Capability::SysAdmin));
        assert_eq!(parse("net_admin"), Some(Capability::NetAdmin));
        assert_eq!(parse("nope"), None);
        assert!(ALL.iter().enumerate().all(|(i, (_, n))| *n == i as u32));
    }
}
