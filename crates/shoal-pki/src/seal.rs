//! Autolock's keys: the swarm's unlock key (`SHLKEY-1-…`), the raft data-encryption keys a
//! manager keeps with its private key, and the sealing of both under a key derived from the
//! unlock key. How they are laid out in `node.key` is `store`'s business.
//!
//! The unlock key is 256 random bits, so the key-encryption key is derived with HKDF-SHA256
//! (no password stretching is needed); each sealing draws a fresh 128-bit nonce that HKDF mixes
//! into a ChaCha20-Poly1305 key used for that one sealing only.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::base36;
use crate::error::{PkiError, Result};

/// Length of the unlock key and of each data key, in bytes.
pub const KEY_LEN: usize = 32;
/// The unlock key's prefix.
pub const UNLOCK_KEY_PREFIX: &str = "SHLKEY";
/// The only unlock key format version.
pub const UNLOCK_KEY_VERSION: &str = "1";
/// Base36 characters of the key body (36^50 > 2^256).
const UNLOCK_KEY_CHARS: usize = 50;

const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 16;
const EXTRACT_SALT: &[u8] = b"shoal unlock key v1";
const SEAL_AAD: &[u8] = b"shoal sealed node key v1";

/// Why a string (or stored value) is not an unlock key. Messages never repeat the input: it may
/// be a key, or most of one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnlockKeyError {
    #[error("no unlock key given")]
    Empty,
    #[error("invalid unlock key: it must start with {UNLOCK_KEY_PREFIX}-{UNLOCK_KEY_VERSION}-")]
    Prefix,
    #[error(
        "invalid unlock key: expected {UNLOCK_KEY_PREFIX}-{UNLOCK_KEY_VERSION}- followed by {UNLOCK_KEY_CHARS} characters 0-9 and a-z"
    )]
    Body,
    #[error("invalid unlock key: {0} bytes where {KEY_LEN} are expected")]
    Length(usize),
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| PkiError::Random)?;
    Ok(key)
}

/// The key an operator holds to unlock the managers of an autolocked swarm. `Display` gives the
/// text to hand to the operator; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{UNLOCK_KEY_PREFIX}-{UNLOCK_KEY_VERSION}-{}",
            base36::encode(self.0.as_slice(), UNLOCK_KEY_CHARS)
        )
    }
}

impl UnlockKey {
    /// A fresh key from the system's random number generator.
    pub fn generate() -> Result<UnlockKey> {
        random_key().map(UnlockKey)
    }

    /// The key from its raw bytes (as the cluster object stores it).
    pub fn from_bytes(bytes: &[u8]) -> Result<UnlockKey, UnlockKeyError> {
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| UnlockKeyError::Length(bytes.len()))?;
        Ok(UnlockKey(Zeroizing::new(key)))
    }

    /// The raw bytes (what the cluster object stores).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the text `Display` gives. Surrounding whitespace (a typed or piped line's end) is
    /// ignored; nothing else is forgiven.
    pub fn parse(text: &str) -> Result<UnlockKey, UnlockKeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UnlockKeyError::Empty);
        }
        let prefix = format!("{UNLOCK_KEY_PREFIX}-{UNLOCK_KEY_VERSION}-");
        let body = text.strip_prefix(&prefix).ok_or(UnlockKeyError::Prefix)?;
        if body.len() != UNLOCK_KEY_CHARS || !base36::is_base36(body) {
            return Err(UnlockKeyError::Body);
        }
        let bytes = base36::decode(body, KEY_LEN).ok_or(UnlockKeyError::Body)?;
        UnlockKey::from_bytes(&bytes)
    }

    fn sealing_key(&self, nonce: &[u8; NONCE_LEN]) -> Result<LessSafeKey> {
        let prk = Salt::new(HKDF_SHA256, EXTRACT_SALT).extract(self.0.as_slice());
        let info = [b"node key".as_slice(), nonce.as_slice()];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| PkiError::Random)?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

/// One of a manager's raft data-encryption keys, with the id that names it in sealed records.
#[derive(Clone)]
pub struct DataKey {
    id: u32,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A fresh key named `id`.
    pub fn generate(id: u32) -> Result<DataKey> {
        Ok(DataKey {
            id,
            key: random_key()?,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    pub(crate) fn from_parts(id: u32, bytes: &[u8]) -> Option<DataKey> {
        let key: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(DataKey {
            id,
            key: Zeroizing::new(key),
        })
    }
}

/// What `node.key` keeps beside the private key, and how: the manager's raft data keys (none
/// on a worker), in clear, or sealed together with the private key under the unlock key.
#[derive(Debug, Clone, Default)]
pub struct KeyProtection {
    /// Oldest first; the last one seals new raft records.
    pub data_keys: Vec<DataKey>,
    /// `Some` while the swarm is autolocked: the key file is then sealed under it.
    pub unlock_key: Option<UnlockKey>,
    /// Version (raft index) of the cluster object whose unlock key this protection follows
    /// (0: none yet). A manager replaying its log at start sees older cluster objects again;
    /// their keys are stale and must not re-seal the file.
    pub key_version: u64,
}

impl KeyProtection {
    /// The id a new data key gets: one past the highest so far (ids start at 1).
    pub fn next_data_key_id(&self) -> u32 {
        self.data_keys
            .iter()
            .map(DataKey::id)
            .max()
            .map_or(1, |id| id.saturating_add(1))
    }
}

/// Seals `plain` under `unlock`: `[SEALED_V1][nonce][ciphertext ‖ tag]`.
pub(crate) fn seal(unlock: &UnlockKey, plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| PkiError::Random)?;
    let mut body = Zeroizing::new(plain.to_vec());
    // The derived key seals this one value, so the AEAD nonce never repeats under it.
    unlock
        .sealing_key(&nonce)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(SEAL_AAD),
            &mut *body,
        )
        .map_err(|_| PkiError::Random)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not a sealed value of a version this build knows.
    Malformed,
    /// It does not authenticate under this key: another key, or damage.
    WrongKey,
}

/// Opens what [`seal`] produced.
pub(crate) fn open(unlock: &UnlockKey, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let Some((&SEALED_V1, rest)) = sealed.split_first() else {
        return Err(OpenError::Malformed);
    };
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Malformed)?;
    let key = unlock
        .sealing_key(&nonce)
        .map_err(|_| OpenError::Malformed)?;
    let mut body = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(SEAL_AAD),
            body.as_mut_slice(),
        )
        .map_err(|_| OpenError::WrongKey)?
        .len();
    body.truncate(len);
    Ok(body)
}

/// The private key (PKCS#8 DER), the data keys and the key version as one value to seal:
/// `[der length u32 BE][der][count u32 BE]([id u32 BE][key])*[key version u64 BE]`.
pub(crate) fn encode_secrets(
    der: &[u8],
    data_keys: &[DataKey],
    key_version: u64,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(16 + der.len() + data_keys.len() * 36));
    out.extend_from_slice(&(der.len() as u32).to_be_bytes());
    out.extend_from_slice(der);
    out.extend_from_slice(&(data_keys.len() as u32).to_be_bytes());
    for key in data_keys {
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(key.bytes());
    }
    out.extend_from_slice(&key_version.to_be_bytes());
    out
}

/// The secrets of one sealed key file: private key (DER), data keys, key version.
pub(crate) type Secrets = (Zeroizing<Vec<u8>>, Vec<DataKey>, u64);

/// The inverse of [`encode_secrets`]; `None` when the value is not shaped as one.
pub(crate) fn decode_secrets(bytes: &[u8]) -> Option<Secrets> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn u32_of(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    let mut rest = bytes;
    let der_len = u32_of(&mut rest)? as usize;
    let der = Zeroizing::new(take(&mut rest, der_len)?.to_vec());
    let count = u32_of(&mut rest)? as usize;
    // Each key takes 36 bytes: a count the rest cannot hold is refused before allocating.
    if rest.len() != count.checked_mul(4 + KEY_LEN)?.checked_add(8)? {
        return None;
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let id = u32_of(&mut rest)?;
        keys.push(DataKey::from_parts(id, take(&mut rest, KEY_LEN)?)?);
    }
    let version = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
    Some((der, keys, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlock_key_text_round_trips() {
        let key = UnlockKey::generate().unwrap();
        let text = key.to_string();
        assert!(text.starts_with("SHLKEY-1-"), "{text}");
        assert_eq!(text.len(), "SHLKEY-1-".len() + UNLOCK_KEY_CHARS);
        assert_eq!(UnlockKey::parse(&text).unwrap(), key);
        // A typed or piped line's whitespace is forgiven.
        assert_eq!(UnlockKey::parse(&format!("  {text}\n")).unwrap(), key);
        assert_eq!(UnlockKey::from_bytes(key.as_bytes()).unwrap(), key);
        assert_ne!(UnlockKey::generate().unwrap(), key);
        assert_eq!(format!("{key:?}"), "UnlockKey(..)");
    }

    #[test]
    fn bad_unlock_keys_are_one_line_refusals_that_do_not_echo() {
        let good = UnlockKey::generate().unwrap().to_string();
        let body = &good["SHLKEY-1-".len()..];
        let cases = [
            ("", UnlockKeyError::Empty),
            (" \n", UnlockKeyError::Empty),
            ("SWMKEY-1-abc", UnlockKeyError::Prefix),
            ("SHLKEY-2-abc", UnlockKeyError::Prefix),
            ("shlkey-1-abc", UnlockKeyError::Prefix),
            ("SHLKEY-1-", UnlockKeyError::Body),
        ];
        for (input, expected) in cases {
            assert_eq!(UnlockKey::parse(input).unwrap_err(), expected, "{input:?}");
        }
        let short = format!("SHLKEY-1-{}", &body[1..]);
        let long = format!("SHLKEY-1-{body}0");
        let upper = format!("SHLKEY-1-{}", body.to_uppercase());
        // 36^50 exceeds 2^256: the largest body does not fit in 32 bytes.
        let overflow = format!("SHLKEY-1-{}", "z".repeat(UNLOCK_KEY_CHARS));
        let inner_space = format!("SHLKEY-1-{} {}", &body[..10], &body[11..]);
        for input in [short, long, upper, overflow, inner_space] {
            let err = UnlockKey::parse(&input).unwrap_err();
            assert_eq!(err, UnlockKeyError::Body, "{input:?}");
            let line = err.to_string();
            assert!(!line.contains('\n'));
            assert!(!line.contains(&body[..10]), "{line}");
        }
        assert_eq!(
            UnlockKey::from_bytes(&[0; 31]).unwrap_err(),
            UnlockKeyError::Length(31)
        );
    }

    #[test]
    fn sealing_round_trips_and_refuses_other_keys_and_damage() {
        let key = UnlockKey::generate().unwrap();
        let data = [DataKey::generate(1).unwrap(), DataKey::generate(7).unwrap()];
        let plain = encode_secrets(b"pkcs8 der bytes", &data, 42);
        let sealed = seal(&key, &plain).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"pkcs8 der"));
        let opened = open(&key, &sealed).unwrap();
        let (der, keys, version) = decode_secrets(&opened).unwrap();
        assert_eq!(der.as_slice(), b"pkcs8 der bytes");
        assert_eq!(version, 42);
        assert_eq!(keys.len(), 2);
        assert_eq!((keys[1].id(), keys[1].bytes()), (7, data[1].bytes()));

        let other = UnlockKey::generate().unwrap();
        assert_eq!(open(&other, &sealed).unwrap_err(), OpenError::WrongKey);
        for at in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x80;
            assert_eq!(open(&key, &bad).unwrap_err(), OpenError::WrongKey, "{at}");
        }
        let mut bad = sealed.clone();
        bad[0] = 9;
        assert_eq!(open(&key, &bad).unwrap_err(), OpenError::Malformed);
        assert_eq!(open(&key, &sealed[..20]).unwrap_err(), OpenError::Malformed);
    }

    #[test]
    fn secrets_decoding_refuses_any_other_shape() {
        let data = [DataKey::generate(3).unwrap()];
        let good = encode_secrets(b"der", &data, 7);
        for len in 0..good.len() {
            assert!(decode_secrets(&good[..len]).is_none(), "{len}");
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert!(decode_secrets(&longer).is_none());
        // A count that claims more keys than there are bytes.
        let mut lying = good.to_vec();
        let at = 4 + 3;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_secrets(&lying).is_none());
        assert_eq!(
            KeyProtection {
                data_keys: data.to_vec(),
                unlock_key: None,
                key_version: 0,
            }
            .next_data_key_id(),
            4
        );
        assert_eq!(KeyProtection::default().next_data_key_id(), 1);
    }
}
