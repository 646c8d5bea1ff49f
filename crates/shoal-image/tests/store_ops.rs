//! Import with changes, tag / remove / gc semantics, history, lookups by reference and id,
//! and the store surviving a reopen.

mod common;

use std::collections::HashSet;
use std::fs;

use common::*;
use shoal_image::{Compression, ImageError, ImageStore, Removed, host_arch};

fn rootfs() -> Vec<u8> {
    Layer::new()
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\n", 0o755)
        .dir("srv", 0o755)
        .build()
}

#[test]
fn import_with_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let changes: Vec<String> = [
        r#"CMD ["serve","--port","80"]"#,
        "ENTRYPOINT /bin/tool",
        "ENV MODE=prod",
        "WORKDIR /srv",
        "USER 1000:1000",
        "EXPOSE 80/tcp",
        "LABEL org.example.team=infra",
        "STOPSIGNAL SIGINT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let summary = store
            .import(&compress(&rootfs(), c)[..], Some("imported:v1"), &changes)
            .unwrap();
        assert_eq!(summary.repo_tags, vec!["imported:v1"]);
        assert_eq!(summary.layers, 1);
        let d = store.inspect("imported:v1").unwrap();
        assert_eq!(d.id, summary.id);
        assert_eq!(d.architecture, host_arch());
        assert_eq!(d.os, "linux");
        // Stored uncompressed: the one layer's DiffID is the tar's own digest.
        assert_eq!(d.diff_ids[0].to_string(), sha256(&rootfs()));
        let cfg = d.config.config().clone().unwrap();
        assert_eq!(cfg.cmd().clone().unwrap(), vec!["serve", "--port", "80"]);
        assert_eq!(
            cfg.entrypoint().clone().unwrap(),
            vec!["/bin/sh", "-c", "/bin/tool"]
        );
        assert_eq!(cfg.env().clone().unwrap(), vec!["MODE=prod"]);
        assert_eq!(cfg.working_dir().as_deref(), Some("/srv"));
        assert_eq!(cfg.user().as_deref(), Some("1000:1000"));
        assert_eq!(cfg.exposed_ports().clone().unwrap(), vec!["80/tcp"]);
        assert_eq!(cfg.labels().clone().unwrap()["org.example.team"], "infra");
        assert_eq!(cfg.stop_signal().as_deref(), Some("SIGINT"));
        let r = store.resolve("imported:v1").unwrap();
        assert!(r.layer_dirs[0].join("bin/tool").is_file());
        let h = store.history("imported:v1").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].id.as_ref(), Some(&summary.id));
        assert_eq!(h[0].comment, "Imported from -");
    }
    // Untagged import.
    let s = store.import(&rootfs()[..], None, &[]).unwrap();
    assert!(s.repo_tags.is_empty());
    assert!(store.inspect(s.id.as_str()).is_ok());
}

#[test]
fn import_refuses_unknown_changes_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let before = snapshot(dir.path());
    for bad in ["RUN rm -rf /", "FROM scratch", "COPY a b", "EXPOSE nope"] {
        let err = store
            .import(&rootfs()[..], Some("x:1"), &[bad.to_owned()])
            .unwrap_err();
        assert!(matches!(err, ImageError::InvalidChange { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(bad.split_whitespace().next().unwrap())
        );
    }
    for bad_ref in ["UPPER:1", "x@sha256:1234", "a b"] {
        assert!(matches!(
            store.import(&rootfs()[..], Some(bad_ref), &[]),
            Err(ImageError::InvalidReference { .. })
        ));
    }
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn tag_remove_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let base = TestImage::new(vec![rootfs()]);
    let app = TestImage::new(vec![
        rootfs(),
        Layer::new().file("app", b"a", 0o644).build(),
    ]);
    store
        .load(&docker_archive(&[(&base, &["base:1"])])[..])
        .unwrap();
    store
        .load(&docker_archive(&[(&app, &["app:1"])])[..])
        .unwrap();
    assert_eq!(layer_dirs(dir.path()).len(), 2, "base layer shared");

    store.tag("app:1", "app:2").unwrap();
    store.tag(&app.id(), "localhost:5000/app:prod").unwrap();
    assert_eq!(
        store.inspect("app:1").unwrap().repo_tags,
        vec!["app:1", "app:2", "localhost:5000/app:prod"]
    );
    assert!(matches!(
        store.tag("nope:1", "x:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.tag("app:1", "Bad:1"),
        Err(ImageError::InvalidReference { .. })
    ));

    // An id with several tags needs force; a name only untags.
    let err = store.remove(&app.id(), false).unwrap_err();
    assert!(matches!(err, ImageError::Conflict(_)), "{err}");
    assert_eq!(
        store.remove("app:2", false).unwrap(),
        vec![Removed::Untagged("app:2".into())]
    );
    assert_eq!(
        store
            .remove("localhost:5000/app:prod", false)
            .unwrap()
            .len(),
        1
    );
    // Now one tag left: removing by short id untags and deletes.
    let removed = store.remove(&hex_of(&app.id())[..10], false).unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(removed[0], Removed::Untagged("app:1".into()));
    assert!(matches!(removed[1], Removed::Deleted(ref id) if id.to_string() == app.id()));
    assert!(store.inspect("app:1").is_err());

    // gc keeps what base needs and what containers still use.
    let app_top = {
        store
            .load(&docker_archive(&[(&app, &["app:1"])])[..])
            .unwrap();
        let chains = store.inspect("app:1").unwrap().chain_ids;
        store.remove("app:1", false).unwrap();
        chains[1].clone()
    };
    let in_use: HashSet<String> = [app_top.to_string()].into();
    let report = store.gc(&in_use).unwrap();
    assert!(
        report.removed_layers.is_empty(),
        "in-use layer kept: {report:?}"
    );
    assert!(!report.removed_blobs.is_empty());
    assert!(store.resolve("base:1").is_ok());
    let report = store.gc(&HashSet::new()).unwrap();
    assert_eq!(report.removed_layers, vec![app_top]);
    assert!(report.removed_blobs.is_empty());
    assert_eq!(layer_dirs(dir.path()).len(), 1);
    // Everything base needs is still there and it still saves.
    let mut out = Vec::new();
    store.save(&["base:1"], &mut out).unwrap();

    // Force removes an image with several tags.
    store.tag("base:1", "other/base:2").unwrap();
    assert!(store.remove(&base.id(), false).is_err());
    let removed = store.remove(&base.id(), true).unwrap();
    assert_eq!(removed.len(), 3);
    assert!(store.list().is_empty());
    let report = store.gc(&HashSet::new()).unwrap();
    assert_eq!(report.removed_layers.len(), 1);
    assert!(names(&dir.path().join("blobs/sha256")).is_empty());
    assert!(layer_dirs(dir.path()).is_empty());
}

#[test]
fn lookups_by_reference_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let img = TestImage::new(vec![rootfs()]);
    let loaded = store
        .load(&oci_archive(&[(&img, ref_name("docker.io/library/busybox:1.36"))])[..])
        .unwrap();
    let id = img.id();
    for r in [
        "busybox:1.36",
        "library/busybox:1.36",
        "docker.io/library/busybox:1.36",
        "index.docker.io/library/busybox:1.36",
        id.as_str(),
        hex_of(&id),
        &hex_of(&id)[..6],
        &format!("busybox@{}", loaded[0].manifest_digest),
    ] {
        assert_eq!(store.inspect(r).unwrap().id.to_string(), id, "lookup {r}");
    }
    assert!(matches!(
        store.inspect("busybox"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.inspect("busybox:1.37"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.inspect("Busybox:1.36"),
        Err(ImageError::InvalidReference { .. })
    ));
    assert!(matches!(
        store.inspect("sha256:zz"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.inspect(&format!("other@{}", loaded[0].manifest_digest)),
        Err(ImageError::NotFound(_))
    ));
    let summary = &store.list()[0];
    assert_eq!(summary.repo_tags, vec!["busybox:1.36"]);
    assert_eq!(summary.created.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert!(summary.size > 0);

    // History: newest first, the top row carries the id.
    let h = store.history("busybox:1.36").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].created_by, "layer 0");
    assert_eq!(h[0].id.as_ref().map(|d| d.to_string()), Some(id.clone()));

    // Ambiguous short ids are refused: make a second image whose id shares the first digit.
    let mut n = 0;
    let prefix = loop {
        let mut other = TestImage::new(vec![rootfs()]);
        other.created = format!("2024-05-02T10:00:{:02}Z", n % 60);
        other.cmd = vec![format!("v{n}")];
        n += 1;
        let oid = other.id();
        if hex_of(&id)[..1] == hex_of(&oid)[..1] {
            store.load(&docker_archive(&[(&other, &[])])[..]).unwrap();
            break hex_of(&oid)[..1].to_owned();
        }
    };
    assert!(matches!(
        store.inspect(&prefix),
        Err(ImageError::Ambiguous(_))
    ));
}

#[test]
fn store_survives_reopen_and_cleans_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let img = TestImage::new(vec![rootfs()]);
    {
        let store = ImageStore::open(dir.path()).unwrap();
        store
            .load(&docker_archive(&[(&img, &["keep:1"])])[..])
            .unwrap();
    }
    // What a crash mid-unpack and mid-ingest would leave.
    fs::create_dir_all(dir.path().join("layers/.tmp-abc/fs/etc")).unwrap();
    fs::write(dir.path().join("ingest/tmp-123"), b"partial").unwrap();
    fs::create_dir_all(dir.path().join("ingest/load-xyz")).unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(layer_dirs(dir.path()).len(), 1);
    assert!(names(&dir.path().join("ingest")).is_empty());
    assert_eq!(store.inspect("keep:1").unwrap().id.to_string(), img.id());

    // A layer dir deleted behind the store's back is unpacked again on resolve.
    let r = store.resolve("keep:1").unwrap();
    fs::remove_dir_all(r.layer_dirs[0].parent().unwrap()).unwrap();
    let r2 = store.resolve("keep:1").unwrap();
    assert!(r2.layer_dirs[0].join("bin/tool").is_file());
}
