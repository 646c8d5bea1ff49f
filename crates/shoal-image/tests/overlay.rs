//! Layers unpack in overlay upperdir form (whiteouts as 0:0 char devices, opaque dirs as
//! xattrs), keep ownership and special bits as root, and merge right under a real overlay mount.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use shoal_image::{ImageError, ImageStore};
use tar::EntryType;

fn three_layers() -> TestImage {
    let l1 = Layer::new()
        .dir("etc", 0o755)
        .file("etc/a", b"a1", 0o644)
        .file("etc/b", b"b1", 0o644)
        .dir("opt", 0o755)
        .file("opt/x", b"x", 0o644)
        .file("opt/y", b"y", 0o644)
        .dir("keep", 0o700)
        .file("keep/k", b"k", 0o644)
        .dir("gone", 0o755)
        .file("gone/g", b"g", 0o644)
        .dir("shared", 0o1777)
        .build();
    // No `keep/` entry here: the implicit dir must take over the lower one's mode.
    let l2 = Layer::new()
        .whiteout("etc/a")
        .file("etc/c", b"c2", 0o644)
        .opaque("opt")
        .file("opt/new", b"new", 0o644)
        .file("keep/k2", b"k2", 0o644)
        .whiteout("gone")
        .file("shared/s", b"s", 0o644)
        .build();
    let l3 = Layer::new()
        .file("etc/a", b"a3", 0o644)
        // `.wh.new` then `new/` in one layer: a fresh directory showing its own children
        // and none of the lower ones.
        .whiteout("opt/new")
        .dir("opt/new", 0o755)
        .file("opt/new/inner", b"i", 0o644)
        .build();
    TestImage::new(vec![l1, l2, l3])
}

#[test]
fn whiteouts_and_opaque_dirs_in_upperdir_form() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = three_layers();
    store
        .load(&docker_archive(&[(&img, &["ovl:1"])])[..])
        .unwrap();
    let r = store.resolve("ovl:1").unwrap();
    let (l1, l2, l3) = (&r.layer_dirs[0], &r.layer_dirs[1], &r.layer_dirs[2]);

    let wh = fs::symlink_metadata(l2.join("etc/a")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(
        !l2.join("etc/.wh.a").exists(),
        "whiteout files are never materialised"
    );
    assert_eq!(
        xattr::get(l2.join("opt"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l2.join("opt/.wh..wh..opq").exists());
    assert_eq!(
        xattr::get(l2.join("etc"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert!(
        fs::symlink_metadata(l2.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // Implicit parent dirs copy the lower dir's attributes.
    assert_eq!(
        fs::metadata(l2.join("keep")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        fs::metadata(l2.join("shared")).unwrap().mode() & 0o7777,
        0o1777
    );
    // The root of a layer without a `./` entry keeps the lower root's mode.
    assert_eq!(
        fs::metadata(l2).unwrap().mode() & 0o7777,
        fs::metadata(l1).unwrap().mode() & 0o7777
    );
    // Same layer: whiteout then directory of that name → an opaque directory.
    assert!(fs::metadata(l3.join("opt/new")).unwrap().is_dir());
    assert_eq!(
        xattr::get(l3.join("opt/new"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    // Mount the stack and look at the merged view.
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    if !mount_overlay(&r.layer_dirs, &mnt) {
        eprintln!("skipping merged-view checks: overlay mount unavailable");
        return;
    }
    let merged = std::panic::catch_unwind(|| {
        assert_eq!(names(&mnt.join("etc")), vec!["a", "b", "c"]);
        assert_eq!(fs::read(mnt.join("etc/a")).unwrap(), b"a3");
        assert_eq!(names(&mnt.join("opt")), vec!["new"]);
        assert_eq!(names(&mnt.join("opt/new")), vec!["inner"]);
        assert_eq!(names(&mnt.join("keep")), vec!["k", "k2"]);
        assert!(!mnt.join("gone").exists());
        assert_eq!(
            fs::metadata(mnt.join("keep")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            fs::metadata(mnt.join("shared")).unwrap().mode() & 0o7777,
            0o1777
        );
    });
    let _ = Command::new("umount").arg(&mnt).status();
    merged.unwrap();
}

fn mount_overlay(layers: &[PathBuf], mnt: &Path) -> bool {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn runs_busybox_from_the_merged_rootfs() {
    require_root!();
    let Ok(bin) = fs::read("/bin/busybox") else {
        eprintln!("skipping: /bin/busybox not present");
        return;
    };
    let base = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &bin, 0o755)
        .symlink("bin/sh", "busybox")
        .symlink("bin/cat", "busybox")
        .dir("etc", 0o755)
        .file("etc/motd", b"old\n", 0o644)
        .build();
    let top = Layer::new()
        .whiteout("etc/motd")
        .file("etc/hello", b"hello from layer 2\n", 0o644)
        .build();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    store
        .load(&docker_archive(&[(&TestImage::new(vec![base, top]), &["bb:1"])])[..])
        .unwrap();
    let r = store.resolve("bb:1").unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    if !mount_overlay(&r.layer_dirs, &mnt) {
        eprintln!("skipping: overlay mount unavailable");
        return;
    }
    let out = Command::new("chroot")
        .arg(&mnt)
        .args([
            "/bin/sh",
            "-c",
            "cat /etc/hello; cat /etc/motd 2>/dev/null || echo no-motd",
        ])
        .output();
    let _ = Command::new("umount").arg(&mnt).status();
    let out = out.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer 2\nno-motd\n"
    );
}

#[test]
fn ownership_modes_devices_and_xattrs_as_root() {
    require_root!();
    let layer = Layer::new()
        .owned_dir("home", 0o755, 0, 0)
        .owned_dir("home/u", 0o750, 1000, 1000)
        .owned_file("home/u/f", b"f", 0o640, 1000, 1000)
        .owned_file("usr-bin-su", b"su", 0o4755, 0, 0)
        .owned_file("sgid", b"g", 0o2755, 0, 42)
        .device("dev-null", EntryType::Char, 1, 3)
        .device("not-a-whiteout", EntryType::Char, 0, 0)
        .device("blk", EntryType::Block, 7, 0)
        .raw(b"fifo", b"", EntryType::Fifo, 0o600, b"")
        .pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.security.capability", &CAP_NET_RAW),
        ])
        .file("ping", b"ping", 0o755)
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .dir("sneaky", 0o755)
        .build();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    store
        .load(&docker_archive(&[(&TestImage::new(vec![layer]), &["own:1"])])[..])
        .unwrap();
    let fs_dir = store.resolve("own:1").unwrap().layer_dirs[0].clone();
    let m = fs::metadata(fs_dir.join("home/u")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o750));
    let m = fs::metadata(fs_dir.join("home/u/f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));
    assert_eq!(
        fs::metadata(fs_dir.join("usr-bin-su")).unwrap().mode() & 0o7777,
        0o4755
    );
    let m = fs::metadata(fs_dir.join("sgid")).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (42, 0o2755));
    let m = fs::symlink_metadata(fs_dir.join("dev-null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(
        fs::symlink_metadata(fs_dir.join("blk"))
            .unwrap()
            .file_type()
            .is_block_device()
    );
    assert!(
        !fs_dir.join("not-a-whiteout").exists(),
        "a literal 0:0 char device is skipped"
    );
    assert!(
        fs::symlink_metadata(fs_dir.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        xattr::get(fs_dir.join("ping"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        xattr::get(fs_dir.join("ping"), "security.capability")
            .unwrap()
            .as_deref(),
        Some(&CAP_NET_RAW[..])
    );
    // trusted.* from a layer is never applied.
    assert_eq!(
        xattr::get(fs_dir.join("sneaky"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(
        xattr::get(fs_dir.join("sneaky"), "trusted.overlay.redirect").unwrap(),
        None
    );
    assert_eq!(fs::read(fs_dir.join("home/u/f")).unwrap(), b"f");
}

/// A VFS_CAP_REVISION_2 `security.capability` value granting cap_net_raw (bit 13), permitted.
const CAP_NET_RAW: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn whiteouts_need_root() {
    if is_root() {
        eprintln!("skipping: checks the unprivileged refusal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = TestImage::new(vec![
        Layer::new().file("a", b"a", 0o644).build(),
        Layer::new().whiteout("a").build(),
    ]);
    assert!(matches!(
        store.load(&docker_archive(&[(&img, &["w:1"])])[..]),
        Err(ImageError::NeedsRoot(_))
    ));
}
