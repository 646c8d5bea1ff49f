//! Hostile archives: each must be refused (or confined) and leave the store exactly as it was.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::json;
use shoal_image::{Compression, ImageError, ImageStore, Limits};
use tar::EntryType;
use tempfile::TempDir;

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("d", 0o755)
        .build()
}

/// A store holding one good image, so "unchanged" covers an existing index and layer.
fn store_with(limits: Limits) -> (TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open_with_limits(dir.path(), limits).unwrap();
    store
        .load(&docker_archive(&[(&TestImage::new(vec![base_layer()]), &["base:1"])])[..])
        .unwrap();
    (dir, store)
}

fn store() -> (TempDir, ImageStore) {
    store_with(Limits::default())
}

fn on_base(top: Vec<u8>) -> Vec<u8> {
    docker_archive(&[(&TestImage::new(vec![base_layer(), top]), &["evil:1"])])
}

/// Loads `archive`, expects an error, and checks nothing on disk changed.
fn refused(dir: &Path, store: &ImageStore, archive: &[u8]) -> ImageError {
    let before = snapshot(dir);
    let listed = store.list();
    let err = store
        .load(archive)
        .expect_err("hostile archive was accepted");
    assert_eq!(snapshot(dir), before, "store changed after refusing: {err}");
    assert!(names(&dir.join("ingest")).is_empty());
    assert_eq!(store.list(), listed);
    err
}

fn assert_unsafe(err: ImageError) {
    assert!(
        matches!(err, ImageError::UnsafePath { .. }),
        "want UnsafePath, got {err}"
    );
}

#[test]
fn parent_dir_components_are_refused() {
    let (dir, store) = store();
    for name in [
        &b"../evil"[..],
        b"a/../../evil",
        b"./../evil",
        b"d/../../../tmp/evil",
        b"..",
        b"/../evil",
    ] {
        let layer = Layer::new()
            .raw(name, b"", EntryType::Regular, 0o644, b"x")
            .build();
        assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    }
    let dirent = Layer::new()
        .raw(b"../evil-dir/", b"", EntryType::Directory, 0o755, b"")
        .build();
    assert_unsafe(refused(dir.path(), &store, &on_base(dirent)));
}

#[test]
fn absolute_paths_are_confined_to_the_layer() {
    let (_dir, store) = store();
    let marker = format!("shoal-image-abs-test-{}", std::process::id());
    let layer = Layer::new()
        .raw(
            format!("/{marker}").as_bytes(),
            b"",
            EntryType::Regular,
            0o644,
            b"x",
        )
        .raw(
            format!("//tmp/{marker}").as_bytes(),
            b"",
            EntryType::Regular,
            0o644,
            b"y",
        )
        .build();
    store.load(&on_base(layer)[..]).unwrap();
    assert!(!Path::new("/").join(&marker).exists());
    assert!(!Path::new("/tmp").join(&marker).exists());
    let top = store.resolve("evil:1").unwrap().layer_dirs[1].clone();
    assert_eq!(fs::read(top.join(&marker)).unwrap(), b"x");
    assert_eq!(fs::read(top.join("tmp").join(&marker)).unwrap(), b"y");
}

#[test]
fn paths_through_symlinks_are_refused() {
    let (dir, store) = store();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();

    // Through a symlink made earlier in the same layer.
    let layer = Layer::new()
        .symlink("esc", &target)
        .file("esc/pwned", b"x", 0o644)
        .build();
    assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    // A relative symlink that stays inside is refused just the same: parents are never followed.
    let layer = Layer::new()
        .symlink("up", "..")
        .file("up/pwned", b"x", 0o644)
        .build();
    assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    // Directory entry and whiteout through a symlink.
    let layer = Layer::new()
        .symlink("esc", &target)
        .dir("esc/sub", 0o755)
        .build();
    assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    if is_root() {
        let layer = Layer::new()
            .symlink("esc", &target)
            .whiteout("esc/x")
            .build();
        assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
        let layer = Layer::new().symlink("esc", &target).opaque("esc").build();
        assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    }
    // Through a symlink a lower layer made.
    let lower = Layer::new().symlink("esc", &target).build();
    let upper = Layer::new().file("esc/pwned", b"x", 0o644).build();
    let img = TestImage::new(vec![base_layer(), lower, upper]);
    assert_unsafe(refused(
        dir.path(),
        &store,
        &docker_archive(&[(&img, &["evil:2"])]),
    ));
    // A lower symlink two layers down, hidden behind nothing, still counts.
    let middle = Layer::new().file("other", b"o", 0o644).build();
    let upper = Layer::new().file("esc/deeper/pwned", b"x", 0o644).build();
    let lower = Layer::new().symlink("esc", &target).build();
    let img = TestImage::new(vec![base_layer(), lower, middle, upper]);
    assert_unsafe(refused(
        dir.path(),
        &store,
        &docker_archive(&[(&img, &["evil:3"])]),
    ));
    assert!(names(outside.path()).is_empty(), "nothing written outside");

    // A symlink replaced by a directory in the upper layer is fine: the dir hides it.
    let lower = Layer::new().symlink("esc", &target).build();
    let upper = Layer::new()
        .dir("esc", 0o755)
        .file("esc/ok", b"x", 0o644)
        .build();
    let img = TestImage::new(vec![base_layer(), lower, upper]);
    store
        .load(&docker_archive(&[(&img, &["fine:1"])])[..])
        .unwrap();
    assert!(names(outside.path()).is_empty());
}

#[test]
fn hardlink_escapes_are_refused() {
    let (dir, store) = store();
    let cases: Vec<Vec<u8>> = vec![
        Layer::new().hardlink("h", "../../etc/passwd").build(),
        // Absolute targets name the layer's own files; this layer has no etc/passwd.
        Layer::new().hardlink("h", "/etc/passwd").build(),
        // Lower layers' files are not this layer's entries.
        Layer::new().hardlink("h", "etc/passwd").build(),
        Layer::new()
            .symlink("d2", "/etc")
            .hardlink("h", "d2/passwd")
            .build(),
        Layer::new().dir("x", 0o755).hardlink("h", "x").build(),
        Layer::new()
            .file("f", b"f", 0o644)
            .hardlink("f", "f")
            .build(),
        Layer::new()
            .raw(b"h", b"", EntryType::Link, 0o644, b"")
            .build(),
    ];
    for layer in cases {
        assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    }
}

#[test]
fn hardlink_to_an_outward_symlink_stays_a_symlink() {
    let (_dir, store) = store();
    let layer = Layer::new()
        .symlink("s", "/etc/shadow")
        .hardlink("h", "s")
        .file("real", b"data", 0o644)
        .hardlink("h2", "real")
        .build();
    store.load(&on_base(layer)[..]).unwrap();
    let top = store.resolve("evil:1").unwrap().layer_dirs[1].clone();
    let m = fs::symlink_metadata(top.join("h")).unwrap();
    assert!(
        m.file_type().is_symlink(),
        "linked the symlink itself, not what it points to"
    );
    assert_eq!(
        fs::read_link(top.join("h")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(fs::read(top.join("h2")).unwrap(), b"data");
}

#[test]
fn bad_whiteout_names_are_refused() {
    let (dir, store) = store();
    for name in [&b".wh.."[..], b"d/.wh..", b".wh."] {
        let layer = Layer::new()
            .raw(name, b"", EntryType::Regular, 0o644, b"")
            .build();
        assert_unsafe(refused(dir.path(), &store, &on_base(layer)));
    }
}

#[test]
fn decompression_bombs_are_bounded() {
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        max_layer_entries: 50,
        ..Limits::default()
    };
    let (dir, store) = store_with(limits);
    let zeros = vec![0u8; 8 << 20];
    let big = Layer::new().file("big", &zeros, 0o644).build();
    for c in [Compression::Gzip, Compression::Zstd] {
        let img = TestImage::new(vec![base_layer(), big.clone()]).compressed(c);
        let archive = docker_archive(&[(&img, &["bomb:1"])]);
        assert!(archive.len() < 1 << 20, "the bomb is small compressed");
        let err = refused(dir.path(), &store, &archive);
        assert!(matches!(err, ImageError::LimitExceeded { .. }), "{err}");
    }
    let mut many = Layer::new();
    for i in 0..100 {
        many = many.file(&format!("f{i}"), b"", 0o644);
    }
    let err = refused(dir.path(), &store, &on_base(many.build()));
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded {
                what: "layer entry count",
                ..
            }
        ),
        "{err}"
    );
    // An imported rootfs is bounded the same way.
    let before = snapshot(dir.path());
    let err = store
        .import(&compress(&big, Compression::Gzip)[..], Some("bomb:2"), &[])
        .unwrap_err();
    assert!(matches!(err, ImageError::LimitExceeded { .. }), "{err}");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn archive_and_metadata_sizes_are_bounded() {
    let limits = Limits {
        max_json_bytes: 2048,
        max_archive_entries: 8,
        max_archive_bytes: 1 << 20,
        ..Limits::default()
    };
    let (dir, store) = store_with(limits);
    let mut fat = TestImage::new(vec![base_layer()]);
    fat.cmd = vec!["x".repeat(4096)];
    let err = refused(dir.path(), &store, &docker_archive(&[(&fat, &["fat:1"])]));
    assert!(matches!(err, ImageError::LimitExceeded { .. }), "{err}");
    let err = refused(
        dir.path(),
        &store,
        &oci_archive(&[(&fat, ref_name("fat:1"))]),
    );
    assert!(matches!(err, ImageError::LimitExceeded { .. }), "{err}");

    let mut a = Archive::new();
    for i in 0..20 {
        a = a.file(&format!("junk{i}"), b"");
    }
    let err = refused(dir.path(), &store, &a.build());
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded {
                what: "archive entry count",
                ..
            }
        ),
        "{err}"
    );

    let huge = Archive::new().file("junk", &vec![0u8; 4 << 20]).build();
    let err = refused(dir.path(), &store, &compress(&huge, Compression::Gzip));
    assert!(
        matches!(
            err,
            ImageError::LimitExceeded {
                what: "archive size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn digests_are_verified() {
    let (dir, store) = store();
    // DiffID in the config does not match the layer.
    let mut img = TestImage::new(vec![
        base_layer(),
        Layer::new().file("x", b"x", 0o644).build(),
    ]);
    let mut ids = img.diff_ids();
    ids[1] = sha256(b"something else");
    img.diff_ids_override = Some(ids);
    let err = refused(dir.path(), &store, &docker_archive(&[(&img, &["bad:1"])]));
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    // A new blob claiming the DiffID of a layer already unpacked is still checked.
    let impostor = Layer::new()
        .file("etc/passwd", b"evil::0:0::/:/bin/sh\n", 0o644)
        .build();
    let mut img = TestImage::new(vec![impostor]).compressed(Compression::Gzip);
    img.diff_ids_override = Some(vec![sha256(&base_layer())]);
    let err = refused(dir.path(), &store, &docker_archive(&[(&img, &["bad:2"])]));
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

    // A blob whose content does not match the digest it is filed under.
    let good = TestImage::new(vec![
        base_layer(),
        Layer::new().file("y", b"y", 0o644).build(),
    ]);
    let manifest = good.manifest();
    let blobs = good.blobs();
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len()}]}))
    .unwrap();
    let corrupt_layer = Layer::new().file("y", b"Y", 0o644).build();
    let archive = Archive::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .blob(&blobs[0].0)
        .file(
            &format!("blobs/sha256/{}", hex_of(&sha256(&blobs[1].0))),
            &corrupt_layer,
        )
        .blob(&good.config())
        .blob(&manifest)
        .file("index.json", &index)
        .build();
    let err = refused(dir.path(), &store, &archive);
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");

    // A descriptor whose size lies.
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len() + 1}]}))
    .unwrap();
    let mut a = Archive::new().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (b, _) in &blobs {
        a = a.blob(b);
    }
    let archive = a
        .blob(&good.config())
        .blob(&manifest)
        .file("index.json", &index)
        .build();
    let err = refused(dir.path(), &store, &archive);
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");

    // A digest that tries to be a path never parses.
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../etc/passwd","size":1}]}"#;
    let archive = Archive::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", index)
        .build();
    refused(dir.path(), &store, &archive);
}

#[test]
fn metadata_paths_must_stay_inside_the_archive() {
    let (dir, store) = store();
    let img = TestImage::new(vec![base_layer()]);
    let config = img.config();
    let layer = img.blobs()[0].0.clone();
    for (cfg_path, layer_path) in [
        ("../../etc/passwd", "l/layer.tar"),
        ("/etc/passwd", "l/layer.tar"),
        ("c.json", "../l/layer.tar"),
        ("c.json", "/l/layer.tar"),
        ("c.json", "l/../../layer.tar"),
    ] {
        let manifest = json!([{"Config": cfg_path, "RepoTags": ["m:1"], "Layers": [layer_path]}]);
        let archive = Archive::new()
            .file("c.json", &config)
            .file("l/layer.tar", &layer)
            .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
            .build();
        assert_unsafe(refused(dir.path(), &store, &archive));
    }
    // A file the metadata names that the archive lacks.
    let manifest = json!([{"Config": "missing.json", "RepoTags": ["m:1"], "Layers": []}]);
    let archive = Archive::new()
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .build();
    assert!(matches!(
        refused(dir.path(), &store, &archive),
        ImageError::InvalidArchive(_)
    ));
}

#[test]
fn archive_members_cannot_escape() {
    let (dir, store) = store();
    let archive = Archive::new()
        .raw(b"../evil", b"", EntryType::Regular, b"x")
        .build();
    assert_unsafe(refused(dir.path(), &store, &archive));
    let archive = Archive::new()
        .raw(b"a/../../evil", b"", EntryType::Regular, b"x")
        .build();
    assert_unsafe(refused(dir.path(), &store, &archive));
    // Member symlinks (old docker save deduplicated layers so) must stay inside.
    let img = TestImage::new(vec![base_layer()]);
    let config = img.config();
    for target in ["../../../etc/passwd", "/etc/passwd", "../../x"] {
        let manifest =
            json!([{"Config": "c.json", "RepoTags": ["m:1"], "Layers": ["l/layer.tar"]}]);
        let archive = Archive::new()
            .file("c.json", &config)
            .symlink("l/layer.tar", target)
            .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
            .build();
        assert_unsafe(refused(dir.path(), &store, &archive));
    }
    // ... and when they do, they work.
    let manifest = json!([{"Config": "c.json", "RepoTags": ["m:1"], "Layers": ["l2/layer.tar"]}]);
    let archive = Archive::new()
        .file("c.json", &config)
        .file("l1/layer.tar", &img.blobs()[0].0)
        .symlink("l2/layer.tar", "../l1/layer.tar")
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .build();
    store.load(&archive[..]).unwrap();
    // Duplicate members with different content are refused.
    let archive = Archive::new()
        .file("manifest.json", b"[]")
        .file("manifest.json", b"[ ]")
        .build();
    assert!(matches!(
        refused(dir.path(), &store, &archive),
        ImageError::InvalidArchive(_)
    ));
}

#[test]
fn a_bad_image_leaves_no_part_of_the_archive_behind() {
    let (dir, store) = store();
    let good = TestImage::new(vec![Layer::new().file("good", b"g", 0o644).build()]);
    let mut bad = TestImage::new(vec![
        base_layer(),
        Layer::new().file("bad", b"b", 0o644).build(),
    ]);
    let mut ids = bad.diff_ids();
    ids[1] = sha256(b"wrong");
    bad.diff_ids_override = Some(ids);
    let err = refused(
        dir.path(),
        &store,
        &docker_archive(&[(&good, &["good:1"]), (&bad, &["bad:1"])]),
    );
    assert!(matches!(err, ImageError::DigestMismatch { .. }));
    assert!(store.inspect("good:1").is_err());

    // A layer that is not a tar at all.
    let garbage = b"this is not a tar archive, just some bytes that go on and on".repeat(20);
    refused(dir.path(), &store, &on_base(garbage));
    // Unsupported compression is named as such.
    let xz = [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], &[0u8; 600]].concat();
    assert!(matches!(
        refused(dir.path(), &store, &on_base(xz)),
        ImageError::Unsupported(_)
    ));
    // Neither format at all.
    let err = refused(
        dir.path(),
        &store,
        &Archive::new().file("hello", b"x").build(),
    );
    assert!(matches!(err, ImageError::InvalidArchive(_)));
    // Import of a hostile rootfs is refused the same way.
    let before = snapshot(dir.path());
    let rootfs = Layer::new()
        .raw(b"../escape", b"", EntryType::Regular, 0o644, b"x")
        .build();
    assert_unsafe(store.import(&rootfs[..], Some("imp:1"), &[]).unwrap_err());
    assert_eq!(snapshot(dir.path()), before);
}
