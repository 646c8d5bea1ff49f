//! On-disk node identity: round trip, file modes, and refusal of damaged or mismatched files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_pki::{
    CERT_FILE, FileKind, KEY_FILE, NodeCertificates, NodeKey, PkiError, ROOT_CA_FILE, Role, RootCa,
};

use crate::util::{NODE_ID, node};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn saved() -> (tempfile::TempDir, std::path::PathBuf, RootCa) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("certificates");
    let root = RootCa::generate().unwrap();
    node(&root, NODE_ID, Role::Manager).save(&dir).unwrap();
    (tmp, dir, root)
}

#[test]
fn save_load_round_trip_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("certificates");
    let root = RootCa::generate().unwrap();
    let certs = node(&root, NODE_ID, Role::Manager);
    certs.save(&dir).unwrap();

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CERT_FILE)), 0o644);
    assert_eq!(mode(&dir.join(ROOT_CA_FILE)), 0o644);
    // Nothing but the three files: temp files were renamed away.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [ROOT_CA_FILE, CERT_FILE, KEY_FILE]);

    let loaded = NodeCertificates::load(&dir).unwrap();
    assert_eq!(loaded.cert_pem, certs.cert_pem);
    assert_eq!(loaded.root_ca_pem, certs.root_ca_pem);
    assert_eq!(loaded.key.to_pem(), certs.key.to_pem());
    let id = loaded.identity().unwrap();
    assert_eq!((id.node_id.as_str(), id.role), (NODE_ID, Role::Manager));

    // Saving again (renewal with a new key) replaces everything atomically.
    let renewed = node(&root, NODE_ID, Role::Worker);
    renewed.save(&dir).unwrap();
    let loaded = NodeCertificates::load(&dir).unwrap();
    assert_eq!(loaded.cert_pem, renewed.cert_pem);
    assert_eq!(loaded.identity().unwrap().role, Role::Worker);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);
}

#[test]
fn missing_files_are_named() {
    for (file, kind) in [
        (KEY_FILE, FileKind::Key),
        (CERT_FILE, FileKind::Certificate),
        (ROOT_CA_FILE, FileKind::RootCa),
    ] {
        let (_tmp, dir, _root) = saved();
        fs::remove_file(dir.join(file)).unwrap();
        let err = NodeCertificates::load(&dir).unwrap_err();
        match &err {
            PkiError::FileMissing { kind: k, path } => {
                assert_eq!(*k, kind);
                assert_eq!(path, &dir.join(file));
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            err.to_string(),
            format!("{kind} file {} is missing", dir.join(file).display())
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let err = NodeCertificates::load(&tmp.path().join("never-joined")).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::FileMissing {
                kind: FileKind::Key,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupt_files_are_named() {
    for (file, kind) in [
        (KEY_FILE, FileKind::Key),
        (CERT_FILE, FileKind::Certificate),
        (ROOT_CA_FILE, FileKind::RootCa),
    ] {
        for garbage in [
            &b"garbage"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"\xff\xfe",
        ] {
            let (_tmp, dir, _root) = saved();
            fs::write(dir.join(file), garbage).unwrap();
            let err = NodeCertificates::load(&dir).unwrap_err();
            assert!(
                matches!(&err, PkiError::FileCorrupt { kind: k, .. } if *k == kind),
                "{file} {garbage:?}: {err}"
            );
            let want = format!("{kind} file {} is corrupt: ", dir.join(file).display());
            assert!(err.to_string().starts_with(&want), "{err}");
        }
    }
}

#[test]
fn truncated_certificate_is_corrupt() {
    let (_tmp, dir, _root) = saved();
    let path = dir.join(CERT_FILE);
    let pem = fs::read_to_string(&path).unwrap();
    fs::write(&path, &pem[..pem.len() / 2]).unwrap();
    let err = NodeCertificates::load(&dir).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("certificate file {} is corrupt", path.display())),
        "{err}"
    );
}

#[test]
fn mismatched_key_is_refused() {
    let (_tmp, dir, _root) = saved();
    fs::write(dir.join(KEY_FILE), NodeKey::generate().unwrap().to_pem()).unwrap();
    let err = NodeCertificates::load(&dir).unwrap_err();
    assert!(matches!(err, PkiError::StoredKeyMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "certificate file {} does not match key file {}",
            dir.join(CERT_FILE).display(),
            dir.join(KEY_FILE).display()
        )
    );
}

#[test]
fn certificate_from_another_root_is_refused() {
    let (_tmp, dir, _root) = saved();
    // A consistent key + cert pair, but issued by a different root than the stored ca.crt.
    let other = node(&RootCa::generate().unwrap(), NODE_ID, Role::Manager);
    fs::write(dir.join(KEY_FILE), other.key.to_pem()).unwrap();
    fs::write(dir.join(CERT_FILE), &other.cert_pem).unwrap();
    let err = NodeCertificates::load(&dir).unwrap_err();
    assert!(
        matches!(err, PkiError::StoredCertNotFromRoot { .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "certificate file {} was not issued by the root ca in {}",
            dir.join(CERT_FILE).display(),
            dir.join(ROOT_CA_FILE).display()
        )),
        "{err}"
    );
}

#[test]
fn root_that_is_not_a_ca_is_corrupt() {
    let (_tmp, dir, _root) = saved();
    let cert = fs::read_to_string(dir.join(CERT_FILE)).unwrap();
    fs::write(dir.join(ROOT_CA_FILE), cert).unwrap();
    let err = NodeCertificates::load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::FileCorrupt {
                kind: FileKind::RootCa,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn save_refuses_an_inconsistent_set_and_leaves_disk_alone() {
    let (_tmp, dir, root) = saved();
    let before = fs::read_to_string(dir.join(CERT_FILE)).unwrap();
    let mut bad = node(&root, NODE_ID, Role::Worker);
    bad.key = NodeKey::generate().unwrap();
    assert!(matches!(bad.save(&dir).unwrap_err(), PkiError::KeyMismatch));
    let foreign = node(&RootCa::generate().unwrap(), NODE_ID, Role::Worker);
    let mixed = NodeCertificates {
        key: foreign.key,
        cert_pem: foreign.cert_pem,
        root_ca_pem: root.cert_pem().to_owned(),
    };
    assert!(matches!(
        mixed.save(&dir).unwrap_err(),
        PkiError::NotIssuedByRoot(_)
    ));
    assert_eq!(fs::read_to_string(dir.join(CERT_FILE)).unwrap(), before);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);
}

#[test]
fn loose_key_permissions_still_load() {
    // Only a warning: refusing would take a node down over something an operator can fix live.
    let (_tmp, dir, _root) = saved();
    fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
    NodeCertificates::load(&dir).unwrap();
}
