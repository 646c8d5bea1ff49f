//! Test images made from Debian's `busybox-static`: a root filesystem tarball holding the static
//! busybox binary, a link per applet, and the few files a container expects.

use std::path::Path;
use std::process::Command;

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets this busybox provides (from `busybox --list`).
pub fn applets() -> Vec<String> {
    let output = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("{BUSYBOX} --list: {e} (install Debian's busybox-static)"));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(str::to_owned)
        .collect()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(size);
    header
}

/// A root filesystem tarball: `/bin/busybox`, `/bin/<applet>` links to it, `/etc/passwd`,
/// `/etc/group`, and empty `/proc`, `/sys`, `/dev`, `/tmp`, `/root`, `/var`.
pub fn busybox_rootfs_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("home", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        builder
            .append_data(&mut h, dir, std::io::empty())
            .expect("append directory");
    }
    let binary = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX}: {e} (install Debian's busybox-static)"));
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    builder
        .append_data(&mut h, "bin/busybox", binary.as_slice())
        .expect("append busybox");
    for applet in applets() {
        if applet == "busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("append applet link");
    }
    let files: [(&str, &str); 3] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "busybox\n"),
    ];
    for (path, content) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        builder
            .append_data(&mut h, path, content.as_bytes())
            .expect("append file");
    }
    builder.into_inner().expect("finish rootfs tar")
}

/// Writes [`busybox_rootfs_tar`] to `path`.
pub fn write_busybox_rootfs_tar(path: &Path) {
    std::fs::write(path, busybox_rootfs_tar()).expect("write busybox rootfs tar");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_holds_busybox_and_its_applets() {
        if !Path::new(BUSYBOX).exists() {
            eprintln!("skipped: {BUSYBOX} is missing");
            return;
        }
        let tar = busybox_rootfs_tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for expected in ["bin/busybox", "bin/sh", "bin/echo", "etc/passwd", "tmp"] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == expected),
                "{expected}"
            );
        }
    }
}
