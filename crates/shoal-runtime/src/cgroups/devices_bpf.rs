//! The cgroup v2 device controller: OCI device rules compiled into a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attached to the container's cgroup, because v2 has
//! no `devices.allow`/`devices.deny` files.
//!
//! The program reproduces v1's semantics: the rules are read in order, the last rule that
//! matches an access decides it, and an access no rule matches takes the default set by the last
//! "all devices" rule (deny when there is none). The generated code therefore tests the rules
//! from last to first and returns at the first match.
// bpf(2) has no safe wrapper in nix; the calls are confined to `bpf` and the fd adoptions.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// One device rule in the form the program tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    /// `None` matches both kinds.
    pub kind: Option<DeviceKind>,
    /// `None` is `*`.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACCESS_*` bits.
    pub access: u32,
    pub allow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Char,
}

// The kernel's `bpf_cgroup_dev_ctx` encodings (include/uapi/linux/bpf.h).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
pub const ACCESS_MKNOD: u32 = 1;
pub const ACCESS_READ: u32 = 2;
pub const ACCESS_WRITE: u32 = 4;
const ACCESS_ALL: u32 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

impl DeviceRule {
    /// Parses v1's rule syntax, `c 1:3 rwm`, `b *:* m`, `a`.
    pub fn parse(text: &str, allow: bool) -> Option<DeviceRule> {
        let mut parts = text.split_whitespace();
        let kind = match parts.next()? {
            "a" => None,
            "b" => Some(DeviceKind::Block),
            "c" => Some(DeviceKind::Char),
            _ => return None,
        };
        let (major, minor) = match parts.next() {
            None => (None, None),
            Some(numbers) => {
                let (major, minor) = numbers.split_once(':')?;
                let number = |n: &str| -> Option<Option<u32>> {
                    if n == "*" {
                        Some(None)
                    } else {
                        n.parse().ok().map(Some)
                    }
                };
                (number(major)?, number(minor)?)
            }
        };
        let access = match parts.next() {
            None => ACCESS_ALL,
            Some(letters) => parse_access(letters)?,
        };
        Some(DeviceRule {
            kind,
            major,
            minor,
            access,
            allow,
        })
    }

    /// The rule an OCI `linux.resources.devices` entry describes.
    pub fn from_oci(rule: &LinuxDeviceCgroup) -> Option<DeviceRule> {
        let kind = match rule.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some(DeviceKind::Block),
            // `u` (unbuffered char) is a char device to the kernel; `p` (fifo) needs no rule.
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DeviceKind::Char),
            Some(LinuxDeviceType::P) => return None,
        };
        let number = |n: Option<i64>| match n {
            None => Some(None),
            Some(n) if n < 0 => Some(None),
            Some(n) => u32::try_from(n).ok().map(Some),
        };
        Some(DeviceRule {
            kind,
            major: number(rule.major())?,
            minor: number(rule.minor())?,
            access: match rule.access() {
                None => ACCESS_ALL,
                Some(letters) => parse_access(letters)?,
            },
            allow: rule.allow(),
        })
    }

    /// A rule over every device and every access, which v1 treats as resetting the list.
    fn is_everything(&self) -> bool {
        self.kind.is_none() && self.major.is_none() && self.minor.is_none()
    }
}

fn parse_access(letters: &str) -> Option<u32> {
    let mut access = 0;
    for letter in letters.chars() {
        access |= match letter {
            'r' => ACCESS_READ,
            'w' => ACCESS_WRITE,
            'm' => ACCESS_MKNOD,
            _ => return None,
        };
    }
    (access != 0).then_some(access)
}

/// One eBPF instruction as the kernel reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Instruction {
    code: u8,
    /// dst in the low nibble, src in the high nibble.
    registers: u8,
    offset: i16,
    immediate: i32,
}

// Opcodes (include/uapi/linux/bpf_common.h, bpf.h).
const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

// Registers: r1 holds the context on entry; the program keeps the request in r2..r5.
const R0: u8 = 0;
const R1: u8 = 1;
const KIND: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

fn op(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
    Instruction {
        code,
        registers: (src << 4) | dst,
        offset,
        immediate,
    }
}

/// Compiles `rules` (in v1 order) into a device program.
pub fn compile(rules: &[DeviceRule]) -> Vec<Instruction> {
    // Only the rules after the last "everything" rule matter; that rule sets the default.
    let (default_allow, rules) = match rules.iter().rposition(DeviceRule::is_everything) {
        Some(at) => (
            rules[at].allow && rules[at].access == ACCESS_ALL,
            &rules[at + 1..],
        ),
        None => (false, rules),
    };
    let mut program = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type /* access << 16 | type */; u32 major; u32 minor; }
        op(LDX_MEM_W, KIND, R1, 0, 0),
        op(ALU32_AND_K, KIND, 0, 0, 0xffff),
        op(LDX_MEM_W, ACCESS, R1, 0, 0),
        op(ALU32_RSH_K, ACCESS, 0, 0, 16),
        op(LDX_MEM_W, MAJOR, R1, 4, 0),
        op(LDX_MEM_W, MINOR, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut block: Vec<Instruction> = Vec::new();
        // Each test jumps past the rest of the block when it fails; the offsets are patched
        // once the block's length is known.
        let mut tests: Vec<usize> = Vec::new();
        if let Some(kind) = rule.kind {
            let code = match kind {
                DeviceKind::Block => DEV_BLOCK,
                DeviceKind::Char => DEV_CHAR,
            };
            tests.push(block.len());
            block.push(op(JMP_JNE_K, KIND, 0, 0, code));
        }
        if rule.access != ACCESS_ALL {
            // The rule covers the request only if every requested bit is in the rule.
            block.push(op(ALU32_MOV_X, R1, ACCESS, 0, 0));
            block.push(op(ALU32_AND_K, R1, 0, 0, rule.access as i32));
            tests.push(block.len());
            block.push(op(JMP_JNE_X, R1, ACCESS, 0, 0));
        }
        if let Some(major) = rule.major {
            tests.push(block.len());
            block.push(op(JMP_JNE_K, MAJOR, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            tests.push(block.len());
            block.push(op(JMP_JNE_K, MINOR, 0, 0, minor as i32));
        }
        block.push(op(ALU64_MOV_K, R0, 0, 0, i32::from(rule.allow)));
        block.push(op(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for at in tests {
            block[at].offset = (len - at - 1) as i16;
        }
        program.extend(block);
    }
    program.push(op(ALU64_MOV_K, R0, 0, 0, i32::from(default_allow)));
    program.push(op(JMP_EXIT, 0, 0, 0, 0));
    program
}

// bpf(2) commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// `union bpf_attr` is larger on newer kernels; the kernel accepts a shorter, zero-tailed one.
const ATTR_SIZE: usize = 128;

fn bpf(command: libc::c_long, attr: &mut [u8; ATTR_SIZE]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr of ATTR_SIZE bytes that outlives the call; any
    // pointers inside it point at buffers the caller keeps alive across the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), ATTR_SIZE) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn put_u32(attr: &mut [u8; ATTR_SIZE], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; ATTR_SIZE], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

/// Loads `program` into the kernel; the verifier's complaint is part of the error.
fn load(program: &[Instruction]) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE);
    put_u32(&mut attr, 4, program.len() as u32);
    put_u64(&mut attr, 8, program.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1);
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(error) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let verifier = verifier.trim();
            if verifier.is_empty() {
                Err(error)
            } else {
                Err(io::Error::new(
                    error.kind(),
                    format!("{error}: {}", verifier.replace('\n', "; ")),
                ))
            }
        }
    }
}

/// The ids of the device programs attached to `cgroup` itself.
fn attached_programs(cgroup: RawFd) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, cgroup as u32);
    put_u32(&mut attr, 4, BPF_CGROUP_DEVICE);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes(attr[24..28].try_into().expect("four bytes")) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

fn program_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: a successful BPF_PROG_GET_FD_BY_ID returns a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn attach_or_detach(command: libc::c_long, cgroup: RawFd, program: RawFd) -> io::Result<()> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, cgroup as u32);
    put_u32(&mut attr, 4, program as u32);
    put_u32(&mut attr, 8, BPF_CGROUP_DEVICE);
    // Multi mode lets a manager like systemd keep its own program next to ours; recent kernels
    // refuse any flag on detach.
    if command == BPF_PROG_ATTACH {
        put_u32(&mut attr, 12, BPF_F_ALLOW_MULTI);
    }
    bpf(command, &mut attr).map(|_| ())
}

/// Loads `program` and makes it the device filter of the cgroup at `dir`, replacing the one a
/// previous call attached. The new program is attached before the old ones go, so the cgroup is
/// never without a filter; the kernel keeps it alive after our descriptors close.
pub fn attach(dir: &Path, program: &[Instruction]) -> io::Result<()> {
    let cgroup = std::fs::File::open(dir)?;
    let previous = attached_programs(cgroup.as_raw_fd())?;
    let loaded = load(program)?;
    attach_or_detach(BPF_PROG_ATTACH, cgroup.as_raw_fd(), loaded.as_raw_fd())?;
    for id in previous {
        let old = program_by_id(id)?;
        attach_or_detach(BPF_PROG_DETACH, cgroup.as_raw_fd(), old.as_raw_fd())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` over one request, as the kernel would, for the instructions we emit.
    fn interpret(program: &[Instruction], kind: i32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.registers & 0xf) as usize, (i.registers >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => reg[dst] = u64::from(ctx[i.offset as usize / 4]),
                ALU32_AND_K => reg[dst] = (reg[dst] as u32 & i.immediate as u32) as u64,
                ALU32_RSH_K => reg[dst] = (reg[dst] as u32 >> i.immediate) as u64,
                ALU32_MOV_X => reg[dst] = reg[src] as u32 as u64,
                ALU64_MOV_K => reg[dst] = i.immediate as i64 as u64,
                JMP_JNE_K if reg[dst] != i.immediate as u32 as u64 => {
                    pc += i.offset as usize;
                }
                JMP_JNE_X if reg[dst] != reg[src] => pc += i.offset as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return reg[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rules(list: &[(&str, bool)]) -> Vec<DeviceRule> {
        list.iter()
            .map(|(text, allow)| DeviceRule::parse(text, *allow).unwrap())
            .collect()
    }

    #[test]
    fn default_profile_allows_only_the_listed_nodes() {
        let program = compile(&rules(&[
            ("a", false),
            ("c 1:3 rwm", true),
            ("c 136:* rw", true),
            ("c *:* m", true),
        ]));
        let rw = ACCESS_READ | ACCESS_WRITE;
        assert_eq!(interpret(&program, DEV_CHAR, rw, 1, 3), 1, "/dev/null");
        assert_eq!(interpret(&program, DEV_CHAR, rw, 136, 7), 1, "a pts");
        assert_eq!(interpret(&program, DEV_CHAR, rw, 1, 5), 0, "/dev/zero");
        assert_eq!(interpret(&program, DEV_BLOCK, ACCESS_READ, 8, 0), 0, "sda");
        assert_eq!(interpret(&program, DEV_CHAR, ACCESS_MKNOD, 10, 200), 1);
        assert_eq!(interpret(&program, DEV_BLOCK, ACCESS_MKNOD, 8, 0), 0);
        // Neither `rw` nor `m` alone covers a request for all three.
        assert_eq!(interpret(&program, DEV_CHAR, rw | ACCESS_MKNOD, 136, 0), 0);
    }

    #[test]
    fn last_matching_rule_wins_and_everything_resets() {
        let program = compile(&rules(&[
            ("c 1:3 rwm", true),
            ("a", true),
            ("c 10:229 rwm", false),
        ]));
        assert_eq!(interpret(&program, DEV_CHAR, ACCESS_READ, 10, 229), 0);
        assert_eq!(interpret(&program, DEV_BLOCK, ACCESS_READ, 8, 0), 1);
        let program = compile(&rules(&[("c 1:5 rwm", true), ("c 1:5 w", false)]));
        assert_eq!(interpret(&program, DEV_CHAR, ACCESS_READ, 1, 5), 1);
        assert_eq!(interpret(&program, DEV_CHAR, ACCESS_WRITE, 1, 5), 0);
        assert_eq!(interpret(&program, DEV_CHAR, ACCESS_READ, 1, 6), 0);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(DeviceRule::parse("x 1:3 rwm", true).is_none());
        assert!(DeviceRule::parse("c 1-3 rwm", true).is_none());
        assert!(DeviceRule::parse("c 1:3 rwx", true).is_none());
        assert!(DeviceRule::parse("", true).is_none());
    }

    /// The kernel verifies and enforces the program: on a host with a cgroup2 mount (this
    /// machine has one at /sys/fs/cgroup/unified, without controllers, which is enough for
    /// device programs), a child in the cgroup can open /dev/null and not /dev/zero.
    #[test]
    fn kernel_enforces_the_program() {
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| {
                nix::sys::statfs::statfs(*p)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            });
        let Some(unified) = unified else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = unified.join(format!("shoal-devices-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let program = compile(&rules(&[("a", false), ("c 1:3 rwm", true)]));
        attach(&dir, &program).unwrap();
        // Attaching again replaces the program rather than stacking a second one.
        attach(&dir, &program).unwrap();
        let cgroup = std::fs::File::open(&dir).unwrap();
        assert_eq!(attached_programs(cgroup.as_raw_fd()).unwrap().len(), 1);
        let script = format!(
            "echo $$ > {}/cgroup.procs && cat /dev/null && ! head -c1 /dev/zero 2>/dev/null",
            dir.display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(status.success(), "device filter not enforced as expected");
    }
}
