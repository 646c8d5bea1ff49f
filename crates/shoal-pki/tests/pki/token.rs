//! Join token format, parsing strictness, secret comparison and root pinning.

use shoal_pki::{JoinToken, PkiError, RootCa, TokenError};

use crate::util::cert_der;

fn digest() -> String {
    "0".repeat(10) + &"a1b2c3d4e5".repeat(4)
}

#[test]
fn generate_display_parse_round_trip() {
    let root = RootCa::generate().unwrap();
    let token = JoinToken::generate(&root.digest());
    let s = token.to_string();
    assert!(s.starts_with("SHTKN-1-"));
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[2], root.digest());
    assert_eq!(parts[3].len(), 25);
    assert!(
        parts[3]
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    );

    let parsed = JoinToken::parse(&s).unwrap();
    assert_eq!(parsed.to_string(), s);
    assert_eq!(parsed.root_digest(), root.digest());
    assert!(parsed.matches_secret(&token));
    assert_eq!(s.parse::<JoinToken>().unwrap().to_string(), s);
}

#[test]
fn debug_hides_the_secret() {
    let token = JoinToken::generate(&digest());
    let secret = token.to_string().rsplit('-').next().unwrap().to_owned();
    let dbg = format!("{token:?}");
    assert!(!dbg.contains(&secret), "{dbg}");
    assert!(dbg.contains("redacted"));
}

#[test]
fn rotation_keeps_digest_and_changes_secret() {
    let token = JoinToken::generate(&digest());
    let rotated = token.rotate();
    assert_eq!(rotated.root_digest(), token.root_digest());
    assert!(!rotated.matches_secret(&token));
    assert_ne!(rotated.to_string(), token.to_string());
    let again = JoinToken::generate(token.root_digest());
    assert!(!again.matches_secret(&token));
}

#[test]
fn secret_comparison() {
    let d = digest();
    let a = JoinToken::parse(&format!("SHTKN-1-{d}-{}", "1".repeat(25))).unwrap();
    let same = JoinToken::parse(&format!("SHTKN-1-{d}-{}", "1".repeat(25))).unwrap();
    let last_differs = JoinToken::parse(&format!("SHTKN-1-{d}-{}2", "1".repeat(24))).unwrap();
    let first_differs = JoinToken::parse(&format!("SHTKN-1-{d}-2{}", "1".repeat(24))).unwrap();
    assert!(a.matches_secret(&same));
    assert!(!a.matches_secret(&last_differs));
    assert!(!a.matches_secret(&first_differs));
    // Only secrets are compared: the same secret under another digest still matches.
    let other_digest = JoinToken::parse(&format!(
        "SHTKN-1-{}-{}",
        "z".repeat(49) + "0",
        "1".repeat(25)
    ));
    assert!(
        matches!(other_digest, Err(TokenError::Range(_))),
        "50 z's overflow 256 bits"
    );
    let other_digest =
        JoinToken::parse(&format!("SHTKN-1-{}-{}", "1".repeat(50), "1".repeat(25))).unwrap();
    assert!(a.matches_secret(&other_digest));
}

#[test]
fn malformed_tokens_are_refused_with_clear_messages() {
    let d = digest();
    let s = "0123456789abcdefghijklmno";
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "invalid join token: empty"),
        (
            "SHTKN".into(),
            "invalid join token: expected 4 dash-separated parts, found 1",
        ),
        (
            format!("SHTKN-1-{d}"),
            "invalid join token: expected 4 dash-separated parts, found 3",
        ),
        (
            format!("SHTKN-1-{d}-{s}-x"),
            "invalid join token: expected 4 dash-separated parts, found 5",
        ),
        (
            format!("SWMTKN-1-{d}-{s}"),
            "invalid join token: prefix must be SHTKN",
        ),
        (
            format!("shtkn-1-{d}-{s}"),
            "invalid join token: prefix must be SHTKN",
        ),
        (
            format!("SHTKN-2-{d}-{s}"),
            "invalid join token: unsupported version \"2\"",
        ),
        (
            format!("SHTKN--{d}-{s}"),
            "invalid join token: unsupported version \"\"",
        ),
        (
            format!("SHTKN-1-{}-{s}", &d[1..]),
            "invalid join token: root ca digest must be 50 characters, found 49",
        ),
        (
            format!("SHTKN-1-{d}0-{s}"),
            "invalid join token: root ca digest must be 50 characters, found 51",
        ),
        (
            format!("SHTKN-1-{d}-{}", &s[1..]),
            "invalid join token: secret must be 25 characters, found 24",
        ),
        (
            format!("SHTKN-1-{d}-{s}p"),
            "invalid join token: secret must be 25 characters, found 26",
        ),
        (
            format!("SHTKN-1-{}-{s}", d.to_uppercase()),
            "invalid join token: root ca digest contains characters other than 0-9 and a-z",
        ),
        (
            format!("SHTKN-1-{}_-{s}", &d[1..]),
            "invalid join token: root ca digest contains characters other than 0-9 and a-z",
        ),
        (
            format!("SHTKN-1-{d}-{}é", &s[1..]),
            "invalid join token: secret contains characters other than 0-9 and a-z",
        ),
        (
            format!("SHTKN-1-{d}-{}", s.to_uppercase()),
            "invalid join token: secret contains characters other than 0-9 and a-z",
        ),
        (
            format!("SHTKN-1-{d}-{}", "z".repeat(25)),
            "invalid join token: secret is out of range",
        ),
        (
            format!(" SHTKN-1-{d}-{s}"),
            "invalid join token: prefix must be SHTKN",
        ),
        (
            format!("SHTKN-1-{d}-{}\n", &s[1..]),
            "invalid join token: secret contains characters other than 0-9 and a-z",
        ),
    ];
    for (input, want) in cases {
        let err = JoinToken::parse(&input).unwrap_err();
        assert_eq!(err.to_string(), want, "input {input:?}");
        // And through the crate error, unchanged.
        assert_eq!(PkiError::from(err).to_string(), want);
    }
    // The good one parses.
    JoinToken::parse(&format!("SHTKN-1-{d}-{s}")).unwrap();
}

#[test]
fn pin_accepts_the_right_root_only() {
    let root = RootCa::generate().unwrap();
    let token = JoinToken::generate(&root.digest());
    token.pins(root.cert_pem().as_bytes()).unwrap();
    token.pins(&cert_der(root.cert_pem())).unwrap();

    let other = RootCa::generate().unwrap();
    let err = token.pins(other.cert_pem().as_bytes()).unwrap_err();
    assert!(matches!(err, PkiError::CaMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "root ca does not match the join token: token pins {}, root ca digest is {}",
            root.digest(),
            other.digest()
        )
    );
    assert!(token.pins(&cert_der(other.cert_pem())).is_err());
    assert!(
        token
            .pins(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
            .is_err()
    );
    assert!(token.pins(b"").is_err());
    // A token parsed from text pins exactly like the original.
    let parsed = JoinToken::parse(&token.to_string()).unwrap();
    parsed.pins(root.cert_pem().as_bytes()).unwrap();
}
