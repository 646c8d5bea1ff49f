//! Join tokens `SHTKN-1-<root digest>-<secret>`: generation, strict parsing, secret comparison
//! and pinning a fetched root CA against the token's digest.

use std::fmt;
use std::str::FromStr;

use crate::base36;
use crate::ca::{DIGEST_LEN, ca_digest};
use crate::error::{PkiError, Result};
use crate::pem::cert_der_from_pem_or_der;

/// The token prefix.
pub const TOKEN_PREFIX: &str = "SHTKN";
/// The only token format version.
pub const TOKEN_VERSION: &str = "1";
/// Length of the secret in base36 characters (128 bits).
pub const SECRET_LEN: usize = 25;

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid join token: empty")]
    Empty,
    #[error("invalid join token: expected 4 dash-separated parts, found {0}")]
    Parts(usize),
    #[error("invalid join token: prefix must be {TOKEN_PREFIX}")]
    Prefix,
    #[error("invalid join token: unsupported version {0:?}")]
    Version(String),
    #[error("invalid join token: root ca digest must be {DIGEST_LEN} characters, found {0}")]
    DigestLength(usize),
    #[error("invalid join token: secret must be {SECRET_LEN} characters, found {0}")]
    SecretLength(usize),
    #[error("invalid join token: {0} contains characters other than 0-9 and a-z")]
    Alphabet(&'static str),
    #[error("invalid join token: {0} is out of range")]
    Range(&'static str),
}

/// A join token. `Debug` hides the secret; `Display` gives the full token to hand to an operator.
#[derive(Clone)]
pub struct JoinToken {
    digest: String,
    secret: String,
}

impl JoinToken {
    /// A new token pinning `root_digest` (from [`crate::RootCa::digest`]) with a fresh
    /// 128-bit secret. Rotation is calling this again with the same digest.
    pub fn generate(root_digest: &str) -> JoinToken {
        let secret: [u8; 16] = rand::random();
        JoinToken {
            digest: root_digest.to_owned(),
            secret: base36::encode(&secret, SECRET_LEN),
        }
    }

    /// Parses a token exactly as printed by `Display`; nothing is trimmed or case-folded.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let parts: Vec<&str> = s.split('-').collect();
        let [prefix, version, digest, secret] = parts.as_slice() else {
            return Err(TokenError::Parts(parts.len()));
        };
        if *prefix != TOKEN_PREFIX {
            return Err(TokenError::Prefix);
        }
        if *version != TOKEN_VERSION {
            return Err(TokenError::Version((*version).to_owned()));
        }
        let digest_len = digest.chars().count();
        if digest_len != DIGEST_LEN {
            return Err(TokenError::DigestLength(digest_len));
        }
        let secret_len = secret.chars().count();
        if secret_len != SECRET_LEN {
            return Err(TokenError::SecretLength(secret_len));
        }
        if !base36::is_base36(digest) {
            return Err(TokenError::Alphabet("root ca digest"));
        }
        if !base36::is_base36(secret) {
            return Err(TokenError::Alphabet("secret"));
        }
        if base36::decode(digest, 32).is_none() {
            return Err(TokenError::Range("root ca digest"));
        }
        if base36::decode(secret, 16).is_none() {
            return Err(TokenError::Range("secret"));
        }
        Ok(JoinToken {
            digest: (*digest).to_owned(),
            secret: (*secret).to_owned(),
        })
    }

    /// A new token for the same root with a fresh secret.
    pub fn rotate(&self) -> JoinToken {
        JoinToken::generate(&self.digest)
    }

    /// The root CA digest this token pins.
    pub fn root_digest(&self) -> &str {
        &self.digest
    }

    /// True when both tokens carry the same secret. Constant time in the secret's content, so a
    /// caller probing tokens learns nothing from response timing.
    pub fn matches_secret(&self, other: &JoinToken) -> bool {
        constant_time_eq(self.secret.as_bytes(), other.secret.as_bytes())
    }

    /// Checks that a root CA certificate (PEM or DER) is the one this token pins.
    pub fn pins(&self, ca_cert: &[u8]) -> Result<()> {
        let der = cert_der_from_pem_or_der(ca_cert, "root ca certificate")?;
        let actual = ca_digest(&der);
        if constant_time_eq(actual.as_bytes(), self.digest.as_bytes()) {
            Ok(())
        } else {
            Err(PkiError::CaMismatch {
                expected: self.digest.clone(),
                actual,
            })
        }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.digest, self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("root_digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<JoinToken, TokenError> {
        JoinToken::parse(s)
    }
}

/// Compares without an early exit; only the (public) lengths affect timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
