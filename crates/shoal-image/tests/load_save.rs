//! Loading docker-save and OCI-layout archives (plain, gzip, zstd layers, multi-platform
//! indexes) and save → load round trips.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;

use common::*;
use shoal_image::{Compression, ImageError, ImageStore, host_arch};

fn busybox_rootfs() -> Vec<u8> {
    let bin =
        fs::read("/bin/busybox").unwrap_or_else(|_| b"#!/bin/sh\necho fake busybox\n".to_vec());
    Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &bin, 0o755)
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ls", "bin/busybox")
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777)
        .build()
}

fn app_layer() -> Vec<u8> {
    Layer::new()
        .dir("app", 0o755)
        .file("app/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .build()
}

#[test]
fn loads_legacy_docker_save_archive() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = TestImage::new(vec![busybox_rootfs(), app_layer()]);
    let loaded = store
        .load(&docker_archive(&[(&img, &["busybox:latest", "localhost:5000/team/app:v1"])])[..])
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id.to_string(), img.id());
    assert_eq!(
        loaded[0].references,
        vec!["busybox:latest", "localhost:5000/team/app:v1"]
    );

    let list = store.list();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].repo_tags,
        vec!["busybox:latest", "localhost:5000/team/app:v1"]
    );
    assert_eq!(list[0].layers, 2);

    let details = store.inspect("busybox").unwrap();
    assert_eq!(details.id.to_string(), img.id());
    assert_eq!(details.os, "linux");
    assert_eq!(details.architecture, host_arch());
    assert_eq!(
        details
            .diff_ids
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        img.diff_ids()
    );
    assert_eq!(
        details
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .clone()
            .unwrap(),
        vec!["/bin/sh"]
    );

    let resolved = store.resolve("docker.io/library/busybox:latest").unwrap();
    assert_eq!(resolved.layer_dirs.len(), 2);
    let base = &resolved.layer_dirs[0];
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let meta_ls = fs::metadata(base.join("bin/ls")).unwrap();
    let meta_bb = fs::metadata(base.join("bin/busybox")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta_ls.ino(), meta_bb.ino(), "hardlink preserved");
    assert_eq!(meta_bb.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert!(resolved.layer_dirs[1].join("app/run.sh").is_file());
    assert!(
        !resolved.layer_dirs[1].join("bin").exists(),
        "layers are stored as diffs"
    );
    // No leftovers.
    assert!(names(&dir.path().join("ingest")).is_empty());
}

#[test]
fn detects_gzip_and_zstd_layers_by_magic_in_both_formats() {
    for c in [Compression::Gzip, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let img = TestImage::new(vec![busybox_rootfs(), app_layer()]).compressed(c);
        // Legacy format names every layer `layer.tar` whatever it holds.
        store
            .load(&docker_archive(&[(&img, &["a:1"])])[..])
            .unwrap();
        let oci = oci_archive(&[(
            &img,
            BTreeMap::from([(
                "io.containerd.image.name".to_owned(),
                "docker.io/library/b:2".to_owned(),
            )]),
        )]);
        let loaded = store.load(&oci[..]).unwrap();
        assert_eq!(loaded[0].id.to_string(), img.id());
        let ids: Vec<_> = store.list().iter().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, vec![img.id()], "{c:?}: same config, same image");
        assert_eq!(store.list()[0].repo_tags, vec!["a:1", "b:2"]);
        let r = store.resolve("b:2").unwrap();
        assert!(r.layer_dirs[1].join("app/run.sh").is_file());
        // Saved layers come out uncompressed with digest = DiffID.
        let mut out = Vec::new();
        store.save(&["b:2"], &mut out).unwrap();
        let names = archive_names(&out);
        for d in img.diff_ids() {
            assert!(names.contains(&format!("blobs/sha256/{}", hex_of(&d))));
        }
    }
}

#[test]
fn loads_oci_layout_with_ref_name_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let a = TestImage::new(vec![busybox_rootfs()]);
    let mut b = TestImage::new(vec![busybox_rootfs(), app_layer()]);
    b.cmd = vec!["/app/run.sh".into()];
    let archive = oci_archive(&[
        (&a, ref_name("registry.example:5000/base:1.0")),
        (&b, ref_name("latest")),
    ]);
    let loaded = store.load(&archive[..]).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].references, vec!["registry.example:5000/base:1.0"]);
    assert!(
        loaded[1].references.is_empty(),
        "a bare tag names no repository"
    );
    // Both images share the base layer: unpacked once.
    assert_eq!(layer_dirs(dir.path()).len(), 2);
    let ra = store.resolve("registry.example:5000/base:1.0").unwrap();
    let rb = store.resolve(&b.id()).unwrap();
    assert_eq!(ra.layer_dirs[0], rb.layer_dirs[0]);
    assert_eq!(ra.chain_ids[0], rb.chain_ids[0]);
    // Short ids work too.
    assert_eq!(
        store
            .inspect(&hex_of(&b.id())[..12])
            .unwrap()
            .id
            .to_string(),
        b.id()
    );
}

#[test]
fn picks_this_platform_from_a_nested_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = TestImage::new(vec![app_layer()]);
    let manifest = img.manifest();
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let missing = format!("sha256:{}", "e".repeat(64));
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            // Blobs of other platforms are absent: choosing them would fail the load.
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
             "platform": {"architecture": other_arch, "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
             "platform": {"architecture": "unknown", "os": "unknown"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len(),
             "platform": {"architecture": host_arch(), "os": "linux"}},
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(&nested),
                       "size": nested.len(), "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}],
    }))
    .unwrap();
    let mut a = Archive::new().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (b, _) in img.blobs() {
        a = a.blob(&b);
    }
    let archive = a
        .blob(&img.config())
        .blob(&manifest)
        .blob(&nested)
        .file("index.json", &index)
        .build();
    let loaded = store.load(&archive[..]).unwrap();
    assert_eq!(loaded[0].id.to_string(), img.id());
    assert_eq!(loaded[0].references, vec!["multi:1"]);

    // An index with no entry for this platform is refused.
    let only_other = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
                       "platform": {"architecture": other_arch, "os": "linux"}}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(&only_other), "size": only_other.len()}],
    }))
    .unwrap();
    let archive = Archive::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .blob(&only_other)
        .file("index.json", &index)
        .build();
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = ImageStore::open(dir2.path()).unwrap();
    assert!(matches!(
        store2.load(&archive[..]),
        Err(ImageError::NoMatchingPlatform(_))
    ));
}

fn archive_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn archive_file(tar_bytes: &[u8], name: &str) -> Vec<u8> {
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("{name} not in archive");
}

#[test]
fn save_then_load_round_trips_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let base = TestImage::new(vec![busybox_rootfs()]).compressed(Compression::Gzip);
    let mut app = TestImage::new(vec![busybox_rootfs(), app_layer()]).compressed(Compression::Zstd);
    app.cmd = vec!["/app/run.sh".into()];
    store
        .load(&docker_archive(&[(&base, &["busybox:latest"])])[..])
        .unwrap();
    store
        .load(&docker_archive(&[(&app, &["app:1", "app:2"])])[..])
        .unwrap();

    let mut out = Vec::new();
    store
        .save(&["busybox", "app:1", "app:2"], &mut out)
        .unwrap();
    let names = archive_names(&out);
    for n in ["oci-layout", "index.json", "manifest.json", "repositories"] {
        assert!(names.contains(&n.to_owned()), "{n} missing from {names:?}");
    }
    // The shared base layer is written once.
    let base_diff = format!("blobs/sha256/{}", hex_of(&base.diff_ids()[0]));
    assert_eq!(names.iter().filter(|n| **n == base_diff).count(), 1);
    let manifest: serde_json::Value =
        serde_json::from_slice(&archive_file(&out, "manifest.json")).unwrap();
    assert_eq!(
        manifest[1]["RepoTags"],
        serde_json::json!(["app:1", "app:2"])
    );
    assert_eq!(
        manifest[1]["Config"],
        format!("blobs/sha256/{}", hex_of(&app.id()))
    );
    let index: serde_json::Value =
        serde_json::from_slice(&archive_file(&out, "index.json")).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/busybox:latest"
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );

    // The combined archive loads into a fresh store with the same ids and tags.
    let dir2 = tempfile::tempdir().unwrap();
    let fresh = ImageStore::open(dir2.path()).unwrap();
    let loaded = fresh.load(&out[..]).unwrap();
    let ids: Vec<String> = loaded.iter().map(|l| l.id.to_string()).collect();
    assert_eq!(ids, vec![base.id(), app.id()]);
    assert_eq!(fresh.list().len(), 2);
    assert_eq!(
        fresh.inspect(&app.id()).unwrap().repo_tags,
        vec!["app:1", "app:2"]
    );
    assert_eq!(
        fresh.inspect("busybox").unwrap().diff_ids,
        store.inspect("busybox").unwrap().diff_ids
    );

    // As a Docker-only archive (what older `docker load` reads) it loads the same.
    let mut docker_only = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(&out[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "oci-layout" || name == "index.json" {
            continue;
        }
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        docker_only.append_data(&mut h, &name, &data[..]).unwrap();
    }
    let docker_only = docker_only.into_inner().unwrap();
    let dir3 = tempfile::tempdir().unwrap();
    let third = ImageStore::open(dir3.path()).unwrap();
    let loaded = third.load(&docker_only[..]).unwrap();
    let ids: Vec<String> = loaded.iter().map(|l| l.id.to_string()).collect();
    assert_eq!(ids, vec![base.id(), app.id()]);
    assert_eq!(third.inspect("app:2").unwrap().id.to_string(), app.id());

    // Saving by id writes no tags; saving nothing is refused.
    let mut by_id = Vec::new();
    store.save(&[&app.id()], &mut by_id).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&archive_file(&by_id, "manifest.json")).unwrap();
    assert!(manifest[0]["RepoTags"].is_null());
    assert!(store.save(&[], &mut Vec::new()).is_err());
    assert!(matches!(
        store.save(&["nope"], &mut Vec::new()),
        Err(ImageError::NotFound(_))
    ));

    // A gzip-compressed archive loads too.
    let gz = compress(&out, Compression::Gzip);
    let dir4 = tempfile::tempdir().unwrap();
    assert_eq!(
        ImageStore::open(dir4.path())
            .unwrap()
            .load(&gz[..])
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn reloading_the_same_image_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = TestImage::new(vec![busybox_rootfs()]);
    let archive = docker_archive(&[(&img, &["x:1"])]);
    store.load(&archive[..]).unwrap();
    let before = snapshot(dir.path());
    store.load(&archive[..]).unwrap();
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn duplicate_paths_in_a_layer_last_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let layer = Layer::new()
        .dir("x", 0o755)
        .file("x/inner", b"i", 0o644)
        .file("x", b"now a file", 0o600)
        .file("y", b"first", 0o644)
        .dir("y", 0o711)
        .file("y/z", b"z", 0o644)
        .symlink("s", "/nowhere")
        .file("s", b"real", 0o644)
        .file("f", b"one", 0o644)
        .file("f", b"two", 0o644)
        .build();
    store
        .load(&docker_archive(&[(&TestImage::new(vec![layer]), &["dup:1"])])[..])
        .unwrap();
    let fs_dir = store.resolve("dup:1").unwrap().layer_dirs[0].clone();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::read(fs_dir.join("x")).unwrap(), b"now a file");
    assert_eq!(
        fs::metadata(fs_dir.join("x")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(fs_dir.join("y")).unwrap().mode() & 0o7777,
        0o711
    );
    assert_eq!(fs::read(fs_dir.join("y/z")).unwrap(), b"z");
    assert!(fs::symlink_metadata(fs_dir.join("s")).unwrap().is_file());
    assert_eq!(fs::read(fs_dir.join("f")).unwrap(), b"two");
}
