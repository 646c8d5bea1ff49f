//! Container filesystems: `diff` lines and committed layers from a real overlay upper dir,
//! and confined access (stat, archive, extract) that a hostile tree cannot steer outside.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use shoal_image::{
    CommitOptions, ConfinedRoot, ExtractOptions, FsError, ImageConfig, ImageStore, changes,
};
use tar::EntryType;

fn base_image() -> TestImage {
    let l1 = Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/tool", b"tool", 0o755)
        .dir("tmp", 0o1777)
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .dir("var/lib/app", 0o755)
        .file("var/lib/app/state", b"s", 0o644)
        .file("var/lib/app/cache", b"c", 0o644)
        .dir("gone", 0o755)
        .file("gone/inside", b"g", 0o644)
        .build();
    TestImage::new(vec![l1])
}

fn mount(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> bool {
    let lowers: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper.display(),
            work.display()
        ))
        .arg(target)
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(target: &Path) {
    let _ = Command::new("umount").arg(target).status();
}

/// A store holding `base:1` and a "container": an overlay of its layers with its own upper
/// dir, changed through the mount the way a process in the container would change it.
struct Container {
    _dir: tempfile::TempDir,
    store: ImageStore,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
}

fn container_with_changes() -> Option<Container> {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    store
        .load(&docker_archive(&[(&base_image(), &["base:1"])])[..])
        .unwrap();
    let layers = store.resolve("base:1").unwrap().layer_dirs;
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    if !mount(&layers, &upper, &work, &merged) {
        eprintln!("skipping: overlay mount unavailable");
        return None;
    }
    let changed = std::panic::catch_unwind(|| {
        fs::write(merged.join("tmp/new"), b"written in the container").unwrap();
        fs::write(merged.join("etc/passwd"), b"changed\n").unwrap();
        fs::remove_file(merged.join("bin/tool")).unwrap();
        fs::remove_dir_all(merged.join("gone")).unwrap();
        // Deleted and re-created: overlayfs makes the new directory opaque.
        fs::remove_dir_all(merged.join("var/lib/app")).unwrap();
        fs::create_dir(merged.join("var/lib/app")).unwrap();
        fs::write(merged.join("var/lib/app/state"), b"fresh").unwrap();
        fs::create_dir_all(merged.join("srv/www")).unwrap();
        fs::write(merged.join("srv/www/index"), b"hi").unwrap();
        fs::hard_link(merged.join("srv/www/index"), merged.join("srv/www/alias")).unwrap();
    });
    umount(&merged);
    changed.unwrap();
    Some(Container {
        lowers: layers.into_iter().rev().collect(),
        upper,
        store,
        _dir: dir,
    })
}

#[test]
fn diff_reports_docker_lines_from_a_real_upper_dir() {
    require_root!();
    let Some(c) = container_with_changes() else {
        return;
    };
    let lines: Vec<String> = changes(&c.upper, &c.lowers)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "C /bin",
            "D /bin/tool",
            "C /etc",
            "C /etc/passwd",
            "D /gone",
            "A /srv",
            "A /srv/www",
            "A /srv/www/alias",
            "A /srv/www/index",
            "C /tmp",
            "A /tmp/new",
            "C /var",
            "C /var/lib",
            "C /var/lib/app",
            "D /var/lib/app/cache",
            "C /var/lib/app/state",
        ],
        "{lines:#?}"
    );
    // Nothing changed, nothing reported.
    let empty = tempfile::tempdir().unwrap();
    assert!(changes(empty.path(), &c.lowers).unwrap().is_empty());
}

fn tar_entries(bytes: &[u8]) -> BTreeMap<String, (EntryType, Vec<u8>, String)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(name.trim_end_matches('/').to_owned(), (kind, data, link));
    }
    out
}

#[test]
fn commit_turns_the_upper_dir_into_a_layer_that_runs() {
    require_root!();
    let Some(c) = container_with_changes() else {
        return;
    };
    let config: ImageConfig = serde_json::from_str(r#"{"Cmd":["sh"],"Env":["A=1"]}"#).unwrap();
    let options = CommitOptions {
        base: "base:1".into(),
        config,
        changes: vec!["ENV B=2".into(), "LABEL made=commit".into()],
        author: Some("tester".into()),
        comment: Some("snapshot".into()),
        created_by: "sh -c work".into(),
        reference: Some("committed:1".into()),
    };
    let summary = c.store.commit(&c.upper, &options).unwrap();
    assert_eq!(summary.repo_tags, ["committed:1"]);
    assert_eq!(summary.layers, 2);

    let details = c.store.inspect("committed:1").unwrap();
    let exec = details.config.config().clone().unwrap();
    assert_eq!(exec.cmd().clone().unwrap(), ["sh"]);
    assert_eq!(exec.env().clone().unwrap(), ["A=1", "B=2"]);
    assert_eq!(exec.labels().clone().unwrap()["made"], "commit");
    assert_eq!(details.config.author().as_deref(), Some("tester"));
    let history = c.store.history("committed:1").unwrap();
    assert_eq!(history[0].created_by, "sh -c work");
    assert_eq!(history[0].comment, "snapshot");
    assert!(!history[0].empty_layer);

    // The layer blob: gzip, whiteouts as `.wh.` entries, the opaque marker, a hardlink.
    assert!(
        !c.store.content().contains(&details.diff_ids[1]),
        "stored compressed, so the DiffID is not the blob digest"
    );
    let resolved = c.store.resolve("committed:1").unwrap();
    let top = &resolved.layer_dirs[1];
    assert!(
        fs::symlink_metadata(top.join("bin/tool"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(
        fs::symlink_metadata(top.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        xattr::get(top.join("var/lib/app"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        fs::read(top.join("tmp/new")).unwrap(),
        b"written in the container"
    );
    assert_eq!(
        fs::metadata(top.join("srv/www/index")).unwrap().ino(),
        fs::metadata(top.join("srv/www/alias")).unwrap().ino()
    );

    // The new image's stack merges to what the container saw.
    let mnt = c.upper.parent().unwrap().join("check");
    fs::create_dir(&mnt).unwrap();
    let lowers: Vec<String> = resolved
        .layer_dirs
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowers.join(":")))
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok);
    let merged = std::panic::catch_unwind(|| {
        assert!(!mnt.join("bin/tool").exists());
        assert!(!mnt.join("gone").exists());
        assert_eq!(fs::read(mnt.join("etc/passwd")).unwrap(), b"changed\n");
        assert!(!mnt.join("var/lib/app/cache").exists());
        assert_eq!(fs::read(mnt.join("var/lib/app/state")).unwrap(), b"fresh");
        assert_eq!(fs::read(mnt.join("etc/group")).unwrap(), b"root:x:0:\n");
    });
    umount(&mnt);
    merged.unwrap();

    // A container that changed nothing commits to an image with no new layer.
    let empty = tempfile::tempdir().unwrap();
    let same = c
        .store
        .commit(
            empty.path(),
            &CommitOptions {
                base: "base:1".into(),
                reference: Some("same:1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(same.layers, 1);
    assert!(c.store.history("same:1").unwrap()[0].empty_layer);
}

#[test]
fn commit_refuses_bad_changes_and_digest_references() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    store
        .load(&docker_archive(&[(&base_image(), &["base:1"])])[..])
        .unwrap();
    let upper = tempfile::tempdir().unwrap();
    let with = |changes: Vec<String>, reference: Option<String>| CommitOptions {
        base: "base:1".into(),
        changes,
        reference,
        ..Default::default()
    };
    assert!(
        store
            .commit(upper.path(), &with(vec!["RUN rm -rf /".into()], None))
            .is_err()
    );
    let digest = format!("app@sha256:{}", "a".repeat(64));
    assert!(
        store
            .commit(upper.path(), &with(vec![], Some(digest)))
            .is_err()
    );
    assert!(
        store
            .commit(
                upper.path(),
                &CommitOptions {
                    base: "missing:1".into(),
                    ..Default::default()
                }
            )
            .is_err()
    );
    // An ENTRYPOINT change drops the inherited CMD, as in a Dockerfile.
    let summary = store
        .commit(
            upper.path(),
            &CommitOptions {
                base: "base:1".into(),
                config: serde_json::from_str(r#"{"Cmd":["sh"]}"#).unwrap(),
                changes: vec![r#"ENTRYPOINT ["/bin/app"]"#.into()],
                ..Default::default()
            },
        )
        .unwrap();
    let exec = store
        .inspect(summary.id.as_str())
        .unwrap()
        .config
        .config()
        .clone()
        .unwrap();
    assert_eq!(exec.entrypoint().clone().unwrap(), ["/bin/app"]);
    assert!(exec.cmd().is_none());
}

/// A root with hostile symlinks, next to a "host" file and directory it must never reach.
struct Hostile {
    dir: tempfile::TempDir,
}

impl Hostile {
    fn new() -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("data/sub")).unwrap();
        fs::write(root.join("etc/passwd"), b"inside").unwrap();
        fs::write(root.join("data/file"), b"contents").unwrap();
        fs::write(root.join("data/sub/deep"), b"deep").unwrap();
        symlink("/", root.join("evil")).unwrap();
        symlink("../../../../etc", root.join("up")).unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        symlink("..", root.join("dotdot")).unwrap();
        symlink("../host", root.join("sibling")).unwrap();
        symlink("file", root.join("data/link")).unwrap();
        // A directory of the root with the host directory's name: where escapes must land.
        fs::create_dir_all(root.join("host")).unwrap();
        fs::create_dir_all(dir.path().join("host")).unwrap();
        fs::write(dir.path().join("host/secret"), b"host secret").unwrap();
        Hostile { dir }
    }

    fn root_path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn root(&self) -> ConfinedRoot {
        ConfinedRoot::open(&self.root_path()).unwrap()
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }
}

fn archive(root: &ConfinedRoot, path: &str) -> BTreeMap<String, (EntryType, Vec<u8>, String)> {
    let bytes = root.source(path).unwrap().write_tar(Vec::new()).unwrap();
    tar_entries(&bytes)
}

#[test]
fn paths_resolve_inside_the_root_whatever_the_symlinks_say() {
    let h = Hostile::new();
    let root = h.root();
    // `/evil -> /`: following it lands on the root, never on the host's `/`.
    let evil = archive(&root, "/evil/");
    assert!(evil.contains_key("evil/etc/passwd"), "{:?}", evil.keys());
    assert!(!evil.keys().any(|k| k.contains("secret")));
    // `up -> ../../../../etc` stops at the root: it is the root's /etc.
    let up = archive(&root, "/up/passwd");
    assert_eq!(up["passwd"].1, b"inside");
    assert_eq!(root.stat("/abs").unwrap().link_target, "/etc/passwd");
    assert_eq!(root.stat("/up").unwrap().link_target, "/etc");
    assert_eq!(root.stat("/evil").unwrap().link_target, "/");
    assert_eq!(root.stat("/sibling").unwrap().link_target, "/host");
    // `..` in the path itself is cleaned at the root, as Docker does.
    assert_eq!(
        archive(&root, "/../../../etc/passwd")["passwd"].1,
        b"inside"
    );
    // The host file is out of reach by any route.
    for path in [
        "/sibling/secret",
        "/dotdot/host/secret",
        "/dotdot/dotdot/host/secret",
        "/evil/../host/secret",
    ] {
        assert!(
            matches!(root.stat(path), Err(FsError::NotFound(_))),
            "{path} must not be found"
        );
    }
    // A symlink named without a trailing slash is the symlink itself.
    let link = archive(&root, "/data/link");
    assert_eq!(link["link"].0, EntryType::Symlink);
    assert_eq!(link["link"].2, "file");
    assert!(matches!(root.stat("/missing"), Err(FsError::NotFound(_))));
    assert!(matches!(
        root.stat("/data/file/x"),
        Err(FsError::NotFound(_))
    ));
}

#[test]
fn archives_are_named_like_docker_cp() {
    let h = Hostile::new();
    let root = h.root();
    let dir = archive(&root, "/data");
    assert_eq!(
        dir.keys().collect::<Vec<_>>(),
        [
            "data",
            "data/file",
            "data/link",
            "data/sub",
            "data/sub/deep"
        ]
    );
    assert_eq!(dir["data/file"].1, b"contents");
    let contents = archive(&root, "/data/.");
    assert_eq!(
        contents.keys().collect::<Vec<_>>(),
        ["file", "link", "sub", "sub/deep"]
    );
    let stat = root.stat("/data/.").unwrap();
    assert_eq!(stat.name, ".");
    assert!(stat.is_dir());
    let file = root.stat("/data/file").unwrap();
    assert_eq!((file.name.as_str(), file.size), ("file", 8));
    // The whole tree, for export: relative names, no entry for the root itself.
    let all = tar_entries(&root.export(Vec::new()).unwrap());
    assert!(all.contains_key("etc/passwd") && all.contains_key("evil"));
    assert_eq!(all["evil"].0, EntryType::Symlink);
}

fn extract(root: &ConfinedRoot, dir: &str, layer: Vec<u8>) -> Result<(), FsError> {
    root.extract(dir, &layer[..], &ExtractOptions::default())
        .map(drop)
}

#[test]
fn extraction_is_confined_to_the_root() {
    require_root!();
    let h = Hostile::new();
    let root = h.root();
    let host_before = fs::read_dir(h.host()).unwrap().count();

    // `..` is refused outright.
    let err = extract(
        &root,
        "/data",
        Layer::new()
            .raw(b"../../host/pwned", b"", EntryType::Regular, 0o644, b"x")
            .build(),
    )
    .unwrap_err();
    assert!(matches!(err, FsError::UnsafePath { .. }), "{err}");
    // Absolute names are relative to the destination.
    extract(
        &root,
        "/data",
        Layer::new()
            .raw(b"/abs-name", b"", EntryType::Regular, 0o644, b"a")
            .build(),
    )
    .unwrap();
    assert_eq!(fs::read(h.root_path().join("data/abs-name")).unwrap(), b"a");
    // Through the container's own symlinks: `/evil -> /` is the root's `/`.
    extract(
        &root,
        "/",
        Layer::new().file("evil/through-evil", b"e", 0o644).build(),
    )
    .unwrap();
    assert!(h.root_path().join("through-evil").exists());
    // A symlink the archive itself plants, then an entry through it.
    extract(
        &root,
        "/data",
        Layer::new()
            .symlink("planted", "/../../host")
            .file("planted/pwned", b"p", 0o644)
            .build(),
    )
    .ok();
    extract(
        &root,
        "/data",
        Layer::new()
            .symlink("rel", "../../../../../../host")
            .file("rel/pwned", b"p", 0o644)
            .build(),
    )
    .ok();
    // The destination itself through a symlink pointing out.
    extract(
        &root,
        "/sibling",
        Layer::new().file("pwned", b"p", 0o644).build(),
    )
    .ok();
    extract(
        &root,
        "/dotdot/dotdot/host",
        Layer::new().file("pwned", b"p", 0o644).build(),
    )
    .ok();
    // Hardlinks to host files by any name.
    for target in ["/host/secret", "../../host/secret", "evil/../host/secret"] {
        let _ = extract(&root, "/data", Layer::new().hardlink("hl", target).build());
    }
    // Device nodes are refused.
    let err = extract(
        &root,
        "/data",
        Layer::new().device("sda", EntryType::Block, 8, 0).build(),
    )
    .unwrap_err();
    assert!(matches!(err, FsError::Refused(_)), "{err}");

    assert_eq!(fs::read_dir(h.host()).unwrap().count(), host_before);
    assert_eq!(fs::read(h.host().join("secret")).unwrap(), b"host secret");
    assert_eq!(fs::metadata(h.host().join("secret")).unwrap().nlink(), 1);
    // What was planted lives inside the root.
    assert!(h.root_path().join("host/pwned").exists());
}

#[test]
fn extraction_keeps_docker_cp_overwrite_rules_and_ownership() {
    require_root!();
    let h = Hostile::new();
    let root = h.root();
    let err = extract(&root, "/", Layer::new().file("data", b"x", 0o644).build()).unwrap_err();
    assert!(
        err.to_string().contains("cannot overwrite directory"),
        "{err}"
    );
    let err = extract(&root, "/data", Layer::new().dir("file", 0o755).build()).unwrap_err();
    assert!(
        err.to_string().contains("cannot overwrite non-directory"),
        "{err}"
    );
    assert!(matches!(
        extract(
            &root,
            "/nowhere",
            Layer::new().file("x", b"", 0o644).build()
        ),
        Err(FsError::NotFound(_))
    ));
    assert!(matches!(
        extract(
            &root,
            "/data/file",
            Layer::new().file("x", b"", 0o644).build()
        ),
        Err(FsError::NotADirectory(_))
    ));

    let archive = Layer::new()
        .owned_dir("tree", 0o750, 1000, 1000)
        .owned_file("tree/f", b"new", 0o4755, 1000, 1000)
        .symlink("tree/l", "f")
        .hardlink("tree/h", "tree/f")
        .build();
    root.extract("/data", &archive[..], &ExtractOptions::default())
        .unwrap();
    let f = fs::metadata(h.root_path().join("data/tree/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (0, 0), "owned by root without -a");
    assert_eq!(f.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(f.nlink(), 2);
    assert_eq!(
        fs::metadata(h.root_path().join("data/tree"))
            .unwrap()
            .mode()
            & 0o7777,
        0o750
    );
    assert_eq!(
        fs::read_link(h.root_path().join("data/tree/l")).unwrap(),
        Path::new("f")
    );
    // An existing file is replaced; with -a the archive's owner is kept.
    root.extract(
        "/data",
        &archive[..],
        &ExtractOptions {
            keep_ownership: true,
        },
    )
    .unwrap();
    let f = fs::metadata(h.root_path().join("data/tree/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1000));
    assert_eq!(fs::read(h.root_path().join("data/tree/f")).unwrap(), b"new");
}

#[test]
fn a_tree_swapped_for_symlinks_is_not_followed_when_archived() {
    let h = Hostile::new();
    // A directory replaced by a symlink to the host: archived as the symlink, never walked.
    fs::remove_dir_all(h.root_path().join("data/sub")).unwrap();
    symlink(h.host(), h.root_path().join("data/sub")).unwrap();
    let entries = archive(&h.root(), "/data");
    assert_eq!(entries["data/sub"].0, EntryType::Symlink);
    assert!(!entries.keys().any(|k| k.contains("secret")));
}
