//! On-disk node identity: round trip, file modes, and refusal of damaged or mismatched files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_pki::{
    CERT_FILE, DataKey, FileKind, KEY_FILE, KeyProtection, NodeCertificates, NodeKey, PkiError,
    ROOT_CA_FILE, Role, RootCa, UnlockKey,
};

use crate::util::{NODE_ID, node};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn saved() -> (tempfile::TempDir, std::path::PathBuf, RootCa) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("certificates");
    let root = RootCa::generate().unwrap();
    node(&root, NODE_ID, Role::Manager)
        .save(&dir, &KeyProtection::default())
        .unwrap();
    (tmp, dir, root)
}

#[test]
fn save_load_round_trip_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("certificates");
    let root = RootCa::generate().unwrap();
    let certs = node(&root, NODE_ID, Role::Manager);
    certs.save(&dir, &KeyProtection::default()).unwrap();

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
    renewed.save(&dir, &KeyProtection::default()).unwrap();
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
    assert!(matches!(
        bad.save(&dir, &KeyProtection::default()).unwrap_err(),
        PkiError::KeyMismatch
    ));
    let foreign = node(&RootCa::generate().unwrap(), NODE_ID, Role::Worker);
    let mixed = NodeCertificates {
        key: foreign.key,
        cert_pem: foreign.cert_pem,
        root_ca_pem: root.cert_pem().to_owned(),
    };
    assert!(matches!(
        mixed.save(&dir, &KeyProtection::default()).unwrap_err(),
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

fn protection(unlock_key: Option<UnlockKey>) -> KeyProtection {
    KeyProtection {
        data_keys: vec![DataKey::generate(1).unwrap(), DataKey::generate(2).unwrap()],
        unlock_key,
        key_version: 17,
    }
}

fn key_ids(protection: &KeyProtection) -> Vec<(u32, [u8; 32])> {
    protection
        .data_keys
        .iter()
        .map(|k| (k.id(), *k.bytes()))
        .collect()
}

#[test]
fn data_keys_ride_with_the_key_in_clear() {
    let (_tmp, dir, root) = saved();
    let certs = node(&root, NODE_ID, Role::Manager);
    let kept = protection(None);
    certs.save(&dir, &kept).unwrap();
    assert!(!NodeCertificates::is_sealed(&dir).unwrap());
    let text = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    assert_eq!(
        text.matches("-----BEGIN SHOAL RAFT DATA KEY-----").count(),
        2
    );

    let (loaded, found) = NodeCertificates::load_protected(&dir, None).unwrap();
    assert_eq!(loaded.key.to_pem(), certs.key.to_pem());
    assert_eq!(key_ids(&found), key_ids(&kept));
    assert_eq!(found.key_version, 17);
    assert!(found.unlock_key.is_none());
    // The plain loader still reads the key; an unlock key given for a clear file changes nothing.
    NodeCertificates::load(&dir).unwrap();
    let (_, found) =
        NodeCertificates::load_protected(&dir, Some(&UnlockKey::generate().unwrap())).unwrap();
    assert!(found.unlock_key.is_none());
    assert_eq!(found.next_data_key_id(), 3);
}

#[test]
fn a_sealed_key_file_needs_its_unlock_key() {
    let (_tmp, dir, root) = saved();
    let certs = node(&root, NODE_ID, Role::Manager);
    let unlock = UnlockKey::generate().unwrap();
    let kept = protection(Some(unlock.clone()));
    certs.save(&dir, &kept).unwrap();
    assert!(NodeCertificates::is_sealed(&dir).unwrap());
    let sealed = fs::read(dir.join(KEY_FILE)).unwrap();
    let text = String::from_utf8(sealed.clone()).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(!text.contains("RAFT DATA KEY"), "{text}");
    // Neither the private key nor a data key appears, in any encoding we write.
    let pem_line = {
        let pem = certs.key.to_pem();
        pem.lines().nth(1).unwrap().to_owned()
    };
    assert!(!text.contains(&pem_line));
    for (_, key) in key_ids(&kept) {
        assert!(!text.to_lowercase().contains(&hex_of(&key)));
    }

    let err = NodeCertificates::load(&dir).unwrap_err();
    assert!(matches!(err, PkiError::KeySealed { .. }), "{err}");
    assert!(
        err.to_string().contains("needs the swarm's unlock key"),
        "{err}"
    );
    let other = UnlockKey::generate().unwrap();
    let err = NodeCertificates::load_protected(&dir, Some(&other)).unwrap_err();
    assert!(matches!(err, PkiError::WrongUnlockKey { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
    // Refusals leave the file as it was.
    assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap(), sealed);

    let (loaded, found) = NodeCertificates::load_protected(&dir, Some(&unlock)).unwrap();
    assert_eq!(loaded.key.to_pem(), certs.key.to_pem());
    assert_eq!(key_ids(&found), key_ids(&kept));
    assert_eq!(found.key_version, 17);
    assert_eq!(found.unlock_key.as_ref(), Some(&unlock));

    // Re-sealing under a new key (rotation), then opening it up again (autolock off).
    let rotated = UnlockKey::generate().unwrap();
    let mut next = found.clone();
    next.unlock_key = Some(rotated.clone());
    loaded.save(&dir, &next).unwrap();
    assert!(matches!(
        NodeCertificates::load_protected(&dir, Some(&unlock)).unwrap_err(),
        PkiError::WrongUnlockKey { .. }
    ));
    let (loaded, found) = NodeCertificates::load_protected(&dir, Some(&rotated)).unwrap();
    next = found;
    next.unlock_key = None;
    loaded.save(&dir, &next).unwrap();
    assert!(!NodeCertificates::is_sealed(&dir).unwrap());
    let (_, found) = NodeCertificates::load_protected(&dir, None).unwrap();
    assert_eq!(key_ids(&found), key_ids(&kept));
    assert_eq!(found.key_version, 17);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn damaged_key_files_are_refused_not_misread() {
    let (_tmp, dir, root) = saved();
    let certs = node(&root, NODE_ID, Role::Manager);
    certs.save(&dir, &protection(None)).unwrap();
    let clear = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    let key_pem = certs.key.to_pem();
    let data_block = &clear[key_pem.len()..];
    let first_data_block = data_block
        .split_inclusive("-----END SHOAL RAFT DATA KEY-----\n")
        .next()
        .unwrap()
        .to_owned();
    let cases = [
        ("two private keys", format!("{key_pem}{key_pem}")),
        (
            "an unknown block",
            format!("{key_pem}-----BEGIN OTHER-----\nab\n-----END OTHER-----\n"),
        ),
        (
            "an unterminated block",
            format!("{key_pem}-----BEGIN SHOAL RAFT DATA KEY-----\nab\n"),
        ),
        ("text outside blocks", format!("junk\n{clear}")),
        (
            "a duplicate data key id",
            format!("{clear}{first_data_block}"),
        ),
        (
            "a data key that is not hex",
            format!(
                "{key_pem}-----BEGIN SHOAL RAFT DATA KEY-----\nzz\n-----END SHOAL RAFT DATA KEY-----\n"
            ),
        ),
        (
            "a short data key",
            format!(
                "{key_pem}-----BEGIN SHOAL RAFT DATA KEY-----\n0001\n-----END SHOAL RAFT DATA KEY-----\n"
            ),
        ),
        ("no private key", data_block.to_owned()),
        (
            "a short key version",
            format!(
                "{clear}-----BEGIN SHOAL KEY VERSION-----\n01\n-----END SHOAL KEY VERSION-----\n"
            ),
        ),
        (
            "a sealed block beside a key",
            format!(
                "{key_pem}-----BEGIN SHOAL SEALED NODE KEY-----\n01\n-----END SHOAL SEALED NODE KEY-----\n"
            ),
        ),
    ];
    for (what, text) in cases {
        fs::write(dir.join(KEY_FILE), &text).unwrap();
        let err = NodeCertificates::load_protected(&dir, None).unwrap_err();
        assert!(
            matches!(
                err,
                PkiError::FileCorrupt {
                    kind: FileKind::Key,
                    ..
                }
            ),
            "{what}: {err}"
        );
        assert!(!err.to_string().contains('\n'), "{what}: {err}");
    }

    // A sealed file with one bit flipped does not open: damage and a wrong key look alike to
    // authenticated encryption, and either way nothing is read from it.
    let unlock = UnlockKey::generate().unwrap();
    certs.save(&dir, &protection(Some(unlock.clone()))).unwrap();
    let sealed = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    let at = sealed.find("-----\n").unwrap() + 40;
    let mut damaged = sealed.into_bytes();
    damaged[at] = if damaged[at] == b'0' { b'1' } else { b'0' };
    fs::write(dir.join(KEY_FILE), &damaged).unwrap();
    let err = NodeCertificates::load_protected(&dir, Some(&unlock)).unwrap_err();
    assert!(matches!(err, PkiError::WrongUnlockKey { .. }), "{err}");
}
