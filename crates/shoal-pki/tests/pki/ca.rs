//! Root CA generation and loading, node certificate signing, identity parsing, renewal timing.

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use shoal_pki::{
    CLOCK_SKEW_BACKDATE, IssuedCert, NodeIdentity, NodeKey, PkiError, ROOT_CA_COMMON_NAME, Role,
    RootCa, renewal_time,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::util::{CLUSTER_ID, NODE_ID, cert_der, csr_der, pem, request};

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn root_is_a_p256_ca_backdated_for_twenty_years() {
    let root = RootCa::generate().unwrap();
    let der = cert_der(root.cert_pem());
    let cert = parse(&der);
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, [ROOT_CA_COMMON_NAME]);
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let now = secs(SystemTime::now());
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!((now - 3600 - nb).abs() <= 5, "not_before {nb} now {now}");
    assert!((na - now - 20 * 365 * 86400).abs() <= 5);
    assert!(root.verifies(root.cert_pem()), "self-signed");
}

#[test]
fn root_pem_round_trip_keeps_digest_and_signing() {
    let root = RootCa::generate().unwrap();
    assert!(root.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    let loaded = RootCa::from_pem(root.cert_pem(), &root.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem(), root.cert_pem());
    assert_eq!(loaded.digest(), root.digest());
    // A certificate issued by the reloaded CA verifies under the original and vice versa.
    let key = NodeKey::generate().unwrap();
    let issued = loaded
        .sign_node(&key.csr_pem().unwrap(), &request(NODE_ID, Role::Worker))
        .unwrap();
    assert!(root.verifies(&issued.cert_pem));
    let issued = root
        .sign_node(&key.csr_pem().unwrap(), &request(NODE_ID, Role::Worker))
        .unwrap();
    assert!(loaded.verifies(&issued.cert_pem));
}

#[test]
fn root_from_pem_refuses_mismatched_key_and_non_ca() {
    let a = RootCa::generate().unwrap();
    let b = RootCa::generate().unwrap();
    let err = RootCa::from_pem(a.cert_pem(), &b.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");

    let leaf_key = NodeKey::generate().unwrap();
    let leaf = a
        .sign_node(
            &leaf_key.csr_pem().unwrap(),
            &request(NODE_ID, Role::Manager),
        )
        .unwrap();
    let err = RootCa::from_pem(&leaf.cert_pem, &leaf_key.to_pem()).unwrap_err();
    assert_eq!(err.to_string(), "invalid root ca: certificate is not a ca");

    let err = RootCa::from_pem("garbage", &a.key_pem()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid root ca certificate pem"),
        "{err}"
    );
    let err = RootCa::from_pem(a.cert_pem(), "garbage").unwrap_err();
    assert!(err.to_string().starts_with("invalid key"), "{err}");
    let two = format!("{}{}", a.cert_pem(), b.cert_pem());
    let err = RootCa::from_pem(&two, &a.key_pem()).unwrap_err();
    assert!(
        err.to_string().contains("more than one certificate"),
        "{err}"
    );
}

#[test]
fn digest_is_stable_50_base36_chars_and_distinct_per_root() {
    let root = RootCa::generate().unwrap();
    let d = root.digest();
    assert_eq!(d.len(), 50);
    assert!(
        d.bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    );
    assert_eq!(d, root.digest());
    assert_eq!(d, shoal_pki::ca_digest(&cert_der(root.cert_pem())));
    assert_ne!(d, RootCa::generate().unwrap().digest());
}

fn check_node_cert(issued: &IssuedCert, role: Role, validity: Duration) {
    let der = cert_der(&issued.cert_pem);
    let cert = parse(&der);
    let subject = cert.subject();
    let one = |it: Vec<&str>| {
        assert_eq!(it.len(), 1, "{it:?}");
        it[0].to_owned()
    };
    assert_eq!(
        one(subject
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect()),
        NODE_ID
    );
    assert_eq!(
        one(subject
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap())
            .collect()),
        role.as_str()
    );
    assert_eq!(
        one(subject
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect()),
        CLUSTER_ID
    );

    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(s) => s.to_string(),
            other => panic!("unexpected san {other:?}"),
        })
        .collect();
    assert_eq!(sans, [role.dns_name(), NODE_ID]);

    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.code_signing && !eku.any && eku.other.is_empty());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(!cert.is_ca());

    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert_eq!(nb, secs(issued.not_before));
    assert_eq!(na, secs(issued.not_after));
    assert_eq!(na - nb, (validity + CLOCK_SKEW_BACKDATE).as_secs() as i64);
    let now = secs(SystemTime::now());
    assert!((now - 3600 - nb).abs() <= 5);

    // 128 random bits: at most 16 significant bytes, and the hex matches the encoding.
    assert!(!issued.serial_hex.is_empty() && issued.serial_hex.len() <= 32);
    // Whole bytes: a serial whose top byte is below 0x10 keeps its leading zero nibble.
    let mut expected = format!("{:x}", cert.serial);
    if expected.len() % 2 == 1 {
        expected.insert(0, '0');
    }
    assert_eq!(issued.serial_hex, expected);
}

#[test]
fn signs_csr_with_the_cas_policy() {
    let root = RootCa::generate().unwrap();
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_pem().unwrap();
    for role in [Role::Manager, Role::Worker] {
        let req = request(NODE_ID, role);
        let issued = root.sign_node(&csr, &req).unwrap();
        check_node_cert(&issued, role, req.validity);
        assert!(root.verifies(&issued.cert_pem));

        let id = NodeIdentity::from_pem(&issued.cert_pem).unwrap();
        assert_eq!(id.node_id, NODE_ID);
        assert_eq!(id.role, role);
        assert_eq!(id.cluster_id, CLUSTER_ID);
        assert_eq!(id.serial_hex, issued.serial_hex);
        assert_eq!(id.not_before, issued.not_before);
        assert_eq!(id.not_after, issued.not_after);
        assert_eq!(
            NodeIdentity::from_der(&cert_der(&issued.cert_pem)).unwrap(),
            id
        );
    }
}

#[test]
fn serials_differ() {
    let root = RootCa::generate().unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
    let a = root
        .sign_node(&csr, &request(NODE_ID, Role::Worker))
        .unwrap();
    let b = root
        .sign_node(&csr, &request(NODE_ID, Role::Worker))
        .unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
}

#[test]
fn node_id_that_is_not_a_dns_label_gets_only_the_role_san() {
    let root = RootCa::generate().unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
    let issued = root
        .sign_node(&csr, &request("Node_7", Role::Worker))
        .unwrap();
    let der = cert_der(&issued.cert_pem);
    let cert = parse(&der);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert_eq!(NodeIdentity::from_der(&der).unwrap().node_id, "Node_7");
}

#[test]
fn csr_claims_are_ignored() {
    // A worker's CSR that asks to be a manager CA of another cluster, with extra SANs and EKUs.
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["shoal-manager".to_owned(), "evil.example".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "someone-else");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "manager");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "other-cluster");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let root = RootCa::generate().unwrap();
    let req = request(NODE_ID, Role::Worker);
    let issued = root.sign_node(&csr, &req).unwrap();
    check_node_cert(&issued, Role::Worker, req.validity);
    // The certificate carries the CSR's key and nothing else from it.
    let der = cert_der(&issued.cert_pem);
    assert_eq!(
        parse(&der).public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn tampered_csr_is_refused() {
    let key = NodeKey::generate().unwrap();
    let mut der = csr_der(&key.csr_pem().unwrap());
    // The last byte belongs to the ECDSA signature's s value: structure intact, signature broken.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let root = RootCa::generate().unwrap();
    let err = root
        .sign_node(
            &pem("CERTIFICATE REQUEST", &der),
            &request(NODE_ID, Role::Worker),
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid certificate signing request: signature does not verify"
    );

    // A CSR whose public key was swapped for another key's does not verify either.
    let other = NodeKey::generate().unwrap();
    let der = csr_der(&key.csr_pem().unwrap());
    let (old, new) = (key.public_key_der(), other.public_key_der());
    let pos = der
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .unwrap();
    let mut swapped = der.clone();
    swapped[pos..pos + old.len()].copy_from_slice(&new);
    let err = root
        .sign_node(
            &pem("CERTIFICATE REQUEST", &swapped),
            &request(NODE_ID, Role::Worker),
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrSignature), "{err}");
}

#[test]
fn garbage_csr_is_refused() {
    let root = RootCa::generate().unwrap();
    for bad in [
        "",
        "not a pem",
        &pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
    ] {
        let err = root
            .sign_node(bad, &request(NODE_ID, Role::Worker))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid certificate signing request"),
            "{err}"
        );
    }
}

#[test]
fn non_p256_csr_is_refused() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let root = RootCa::generate().unwrap();
    let err = root
        .sign_node(&csr, &request(NODE_ID, Role::Worker))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid certificate signing request: public key is not ecdsa p-256"
    );
}

#[test]
fn short_validity_and_bad_names_are_refused() {
    let root = RootCa::generate().unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
    let mut req = request(NODE_ID, Role::Worker);
    req.validity = Duration::from_secs(3599);
    let err = root.sign_node(&csr, &req).unwrap_err();
    assert!(matches!(err, PkiError::ValidityTooShort { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "certificate validity 3599s is below the minimum of 3600s"
    );
    req.validity = Duration::from_secs(3600);
    root.sign_node(&csr, &req).unwrap();

    let mut req = request("", Role::Worker);
    assert_eq!(
        root.sign_node(&csr, &req).unwrap_err().to_string(),
        "invalid certificate request: node id is empty"
    );
    req.node_id = NODE_ID.into();
    req.cluster_id = "a\nb".into();
    assert!(
        root.sign_node(&csr, &req)
            .unwrap_err()
            .to_string()
            .contains("control characters")
    );
    req.cluster_id = "x".repeat(65);
    assert!(
        root.sign_node(&csr, &req)
            .unwrap_err()
            .to_string()
            .contains("longer than 64")
    );
}

#[test]
fn validity_is_capped_at_the_roots_end() {
    let root = RootCa::generate().unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
    let mut req = request(NODE_ID, Role::Worker);
    req.validity = Duration::from_secs(30 * 365 * 86400);
    let issued = root.sign_node(&csr, &req).unwrap();
    let root_der = cert_der(root.cert_pem());
    assert_eq!(
        secs(issued.not_after),
        parse(&root_der).validity().not_after.timestamp()
    );
}

#[test]
fn verifies_refuses_certificates_of_other_roots() {
    let a = RootCa::generate().unwrap();
    let b = RootCa::generate().unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
    let issued = b.sign_node(&csr, &request(NODE_ID, Role::Manager)).unwrap();
    assert!(b.verifies(&issued.cert_pem));
    assert!(!a.verifies(&issued.cert_pem));
    assert!(
        a.verify_issued(&issued.cert_pem)
            .unwrap_err()
            .to_string()
            .starts_with("certificate was not issued by this root ca")
    );
    assert!(!a.verifies("not a certificate"));
}

#[test]
fn identity_requires_subject_fields() {
    let root = RootCa::generate().unwrap();
    // The root itself has a CN but no OU/O.
    let err = NodeIdentity::from_pem(root.cert_pem()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("certificate does not carry a node identity"),
        "{err}"
    );

    // A certificate with an OU that is not a role.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, NODE_ID);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "admin");
    params
        .distinguished_name
        .push(DnType::OrganizationName, CLUSTER_ID);
    let cert = params.self_signed(&key).unwrap();
    let err = NodeIdentity::from_der(cert.der()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate does not carry a node identity: unknown role \"admin\""
    );

    assert!(
        NodeIdentity::from_der(b"junk")
            .unwrap_err()
            .to_string()
            .starts_with("invalid certificate")
    );
}

#[test]
fn role_strings() {
    assert_eq!("manager".parse::<Role>().unwrap(), Role::Manager);
    assert_eq!("worker".parse::<Role>().unwrap(), Role::Worker);
    assert_eq!(Role::Worker.to_string(), "worker");
    assert_eq!(
        "Manager".parse::<Role>().unwrap_err().to_string(),
        "unknown role \"Manager\": expected manager or worker"
    );
}

#[test]
fn renewal_time_is_within_50_to_80_percent() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for life_secs in [3600u64, 7 * 86400, 90 * 86400, 1, 0] {
        let life = Duration::from_secs(life_secs);
        let na = nb + life;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for _ in 0..2000 {
            let t = renewal_time(nb, na, &mut rng);
            assert!(t >= nb + life / 2, "{t:?} before 50% of {life:?}");
            assert!(t <= nb + life.mul_f64(0.8), "{t:?} after 80% of {life:?}");
            if life_secs > 0 {
                let f = t.duration_since(nb).unwrap().as_secs_f64() / life.as_secs_f64();
                lo = lo.min(f);
                hi = hi.max(f);
            }
        }
        if life_secs >= 3600 {
            // Spread over the whole window, not stuck at one end.
            assert!(lo < 0.52 && hi > 0.78, "{lo} {hi}");
        }
    }
    // A backwards certificate is due at once.
    assert_eq!(renewal_time(nb, nb - Duration::from_secs(5), &mut rng), nb);
    // Works with the thread rng too.
    let t = renewal_time(nb, nb + Duration::from_secs(100), &mut rand::rng());
    assert!(t >= nb + Duration::from_secs(50) && t <= nb + Duration::from_secs(80));
}

#[test]
fn signing_between_chosen_dates_keeps_the_policy_on_names_only() {
    let root = RootCa::generate().unwrap();
    let key = shoal_pki::NodeKey::generate().unwrap();
    let csr = key.csr_pem().unwrap();
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let na = nb + Duration::from_secs(60);
    let issued = root
        .sign_node_valid_between(&csr, &request(NODE_ID, Role::Worker), nb, na)
        .unwrap();
    assert_eq!((issued.not_before, issued.not_after), (nb, na));
    let identity = shoal_pki::NodeIdentity::from_pem(&issued.cert_pem).unwrap();
    assert_eq!((identity.not_before, identity.not_after), (nb, na));
    assert!(root.verifies(&issued.cert_pem));
    // Backwards dates and bad names are still refused.
    assert!(
        root.sign_node_valid_between(&csr, &request(NODE_ID, Role::Worker), na, nb)
            .is_err()
    );
    assert!(
        root.sign_node_valid_between(&csr, &request("", Role::Worker), nb, na)
            .is_err()
    );
}
