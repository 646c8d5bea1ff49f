//! `StorageCipher`: the authenticated encryption of everything a node writes to its raft storage
//! that carries state (log entries, snapshot data), under the node's data-encryption keys (DEKs).
//!
//! A sealed record is `[SEALED_V1][key id: u32 BE][nonce: 16 bytes][ciphertext ‖ 16-byte tag]`.
//! Every record is sealed with a ChaCha20-Poly1305 key of its own, expanded with HKDF-SHA256
//! from the data key and the record's random 128-bit nonce. Random 96-bit AEAD nonces under one
//! key would cap a data key at about 2^32 records before a repeat becomes a real risk; with a
//! fresh key per record the AEAD nonce can stay fixed and a data key has no such limit.
//!
//! The associated data binds a record to its place: its kind (log entry, snapshot, key check),
//! its header (so the key id cannot be swapped) and its context (a log entry's index, a
//! snapshot's metadata). A record copied to another index, or read as another kind, does not open.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Prk, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a data-encryption key.
pub const DATA_KEY_LEN: usize = 32;

/// First byte of a sealed record.
pub(crate) const SEALED_V1: u8 = 2;
const NONCE_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// HKDF-Extract salt: a fixed label, since the data key is already uniformly random.
const EXTRACT_SALT: &[u8] = b"shoal raft storage v1";
const EXPAND_INFO: &[u8] = b"record key";

/// What a record is; part of its associated data, so one kind never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    LogEntry,
    Snapshot,
    /// A fixed record written when a file is created, so a wrong key is found at open.
    KeyCheck,
}

impl RecordKind {
    fn label(self) -> &'static [u8] {
        match self {
            RecordKind::LogEntry => b"shoal raft log entry",
            RecordKind::Snapshot => b"shoal raft snapshot",
            RecordKind::KeyCheck => b"shoal raft key check",
        }
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CipherError {
    #[error("no data key is loaded")]
    NoKey,
    #[error("sealed with data key {0}, which this node does not have")]
    UnknownKey(u32),
    #[error("not an encrypted record")]
    NotSealed,
    #[error("encrypted record is truncated")]
    Truncated,
    #[error(
        "encrypted record does not authenticate: it is damaged, out of place, or from another key"
    )]
    Forged,
    #[error("the system random number generator failed")]
    Random,
    #[error("encryption failed: {0}")]
    Crypto(&'static str),
}

impl From<CipherError> for std::io::Error {
    fn from(e: CipherError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[derive(Default)]
struct Keyring {
    keys: BTreeMap<u32, Prk>,
}

/// The data keys of one node's raft storage. Cheap to clone; clones share the keys, so a key
/// added through one (a rotation) is used by every store holding another.
///
/// The key with the highest id seals new records; older keys still open what they sealed.
#[derive(Clone)]
pub struct StorageCipher {
    ring: Arc<RwLock<Keyring>>,
    rng: SystemRandom,
}

impl Default for StorageCipher {
    fn default() -> Self {
        StorageCipher {
            ring: Arc::default(),
            rng: SystemRandom::new(),
        }
    }
}

impl fmt::Debug for StorageCipher {
    // Key ids only: key material never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u32> = self.ring.read().keys.keys().copied().collect();
        f.debug_struct("StorageCipher")
            .field("key_ids", &ids)
            .finish()
    }
}

impl StorageCipher {
    /// A cipher with no key yet: it seals nothing and opens nothing until a key is added.
    pub fn new() -> StorageCipher {
        StorageCipher::default()
    }

    /// A cipher holding one key.
    pub fn with_key(id: u32, key: &[u8; DATA_KEY_LEN]) -> StorageCipher {
        let cipher = StorageCipher::new();
        cipher.add_key(id, key);
        cipher
    }

    /// Adds (or replaces) data key `id`. From now on the highest id seals new records.
    pub fn add_key(&self, id: u32, key: &[u8; DATA_KEY_LEN]) {
        let prk = Salt::new(HKDF_SHA256, EXTRACT_SALT).extract(key);
        self.ring.write().keys.insert(id, prk);
    }

    /// The id of the key that seals new records.
    pub fn current_key_id(&self) -> Option<u32> {
        self.ring.read().keys.keys().next_back().copied()
    }

    fn record_key(prk: &Prk, nonce: &[u8; NONCE_LEN]) -> Result<LessSafeKey, CipherError> {
        let info = [EXPAND_INFO, nonce.as_slice()];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| CipherError::Crypto("key derivation refused its length"))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }

    fn aad(kind: RecordKind, header: &[u8], context: &[u8]) -> Vec<u8> {
        let label = kind.label();
        let mut aad = Vec::with_capacity(label.len() + 1 + header.len() + context.len());
        aad.extend_from_slice(label);
        aad.push(0);
        aad.extend_from_slice(header);
        aad.extend_from_slice(context);
        aad
    }

    /// Seals `plaintext` as a record of `kind` at `context` under the current key.
    pub(crate) fn seal(
        &self,
        kind: RecordKind,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        let (id, prk) = {
            let ring = self.ring.read();
            let (id, prk) = ring.keys.iter().next_back().ok_or(CipherError::NoKey)?;
            (*id, prk.clone())
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CipherError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_V1);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = Self::aad(kind, &out, context);
        let mut body = plaintext.to_vec();
        // Each derived key seals exactly this one record, so a fixed AEAD nonce never repeats
        // under a key.
        Self::record_key(&prk, &nonce)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CipherError::Crypto("record too large"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a record sealed by [`StorageCipher::seal`] with the same `kind` and `context`.
    pub(crate) fn open(
        &self,
        kind: RecordKind,
        context: &[u8],
        record: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        match record.first() {
            Some(&SEALED_V1) => {}
            Some(_) => return Err(CipherError::NotSealed),
            None => return Err(CipherError::Truncated),
        }
        if record.len() < HEADER_LEN + TAG_LEN {
            return Err(CipherError::Truncated);
        }
        let (header, body) = record.split_at(HEADER_LEN);
        let id = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes"));
        let nonce: [u8; NONCE_LEN] = header[5..].try_into().expect("nonce length");
        let prk = self
            .ring
            .read()
            .keys
            .get(&id)
            .cloned()
            .ok_or(CipherError::UnknownKey(id))?;
        let aad = Self::aad(kind, header, context);
        let mut body = body.to_vec();
        let plain = Self::record_key(&prk, &nonce)?
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CipherError::Forged)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; DATA_KEY_LEN] = [7; DATA_KEY_LEN];
    const KEY_B: [u8; DATA_KEY_LEN] = [9; DATA_KEY_LEN];

    fn index(i: u64) -> [u8; 8] {
        i.to_be_bytes()
    }

    #[test]
    fn round_trip_hides_the_plaintext() {
        let cipher = StorageCipher::with_key(1, &KEY_A);
        let plain = b"secret config data: MARKER-1234";
        let sealed = cipher.seal(RecordKind::LogEntry, &index(5), plain).unwrap();
        assert_eq!(sealed[0], SEALED_V1);
        assert_eq!(sealed.len(), HEADER_LEN + plain.len() + TAG_LEN);
        assert!(!sealed.windows(6).any(|w| w == b"MARKER"));
        let opened = cipher
            .open(RecordKind::LogEntry, &index(5), &sealed)
            .unwrap();
        assert_eq!(opened, plain);
        // Two seals of the same value differ (fresh nonce each time).
        let again = cipher.seal(RecordKind::LogEntry, &index(5), plain).unwrap();
        assert_ne!(sealed, again);
        // The empty value is a record too.
        let empty = cipher.seal(RecordKind::Snapshot, b"", b"").unwrap();
        assert!(
            cipher
                .open(RecordKind::Snapshot, b"", &empty)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn any_tampering_is_refused() {
        let cipher = StorageCipher::with_key(1, &KEY_A);
        let sealed = cipher
            .seal(RecordKind::LogEntry, &index(5), b"payload")
            .unwrap();
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            let err = cipher
                .open(RecordKind::LogEntry, &index(5), &bad)
                .unwrap_err();
            // A flipped key id names a key this node lacks; anything else fails authentication.
            assert!(
                matches!(
                    err,
                    CipherError::Forged | CipherError::UnknownKey(_) | CipherError::NotSealed
                ),
                "byte {at}: {err:?}"
            );
        }
        for len in [0, 1, HEADER_LEN, HEADER_LEN + TAG_LEN - 1] {
            let err = cipher
                .open(RecordKind::LogEntry, &index(5), &sealed[..len])
                .unwrap_err();
            assert_eq!(err, CipherError::Truncated, "length {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            cipher
                .open(RecordKind::LogEntry, &index(5), &longer)
                .unwrap_err(),
            CipherError::Forged
        );
    }

    #[test]
    fn wrong_key_is_refused() {
        let sealed = StorageCipher::with_key(1, &KEY_A)
            .seal(RecordKind::LogEntry, &index(5), b"payload")
            .unwrap();
        // Same id, other key material: authentication fails.
        let other = StorageCipher::with_key(1, &KEY_B);
        assert_eq!(
            other
                .open(RecordKind::LogEntry, &index(5), &sealed)
                .unwrap_err(),
            CipherError::Forged
        );
        // A key id this node does not hold is named as such.
        let other = StorageCipher::with_key(2, &KEY_A);
        assert_eq!(
            other
                .open(RecordKind::LogEntry, &index(5), &sealed)
                .unwrap_err(),
            CipherError::UnknownKey(1)
        );
        // No key at all: nothing seals.
        assert_eq!(
            StorageCipher::new()
                .seal(RecordKind::LogEntry, &index(1), b"x")
                .unwrap_err(),
            CipherError::NoKey
        );
    }

    #[test]
    fn a_record_does_not_open_elsewhere() {
        let cipher = StorageCipher::with_key(1, &KEY_A);
        let sealed = cipher
            .seal(RecordKind::LogEntry, &index(5), b"payload")
            .unwrap();
        // Moved to another index.
        assert_eq!(
            cipher
                .open(RecordKind::LogEntry, &index(6), &sealed)
                .unwrap_err(),
            CipherError::Forged
        );
        // Read as another kind of record with the same context.
        assert_eq!(
            cipher
                .open(RecordKind::Snapshot, &index(5), &sealed)
                .unwrap_err(),
            CipherError::Forged
        );
        // A clear record is not mistaken for a sealed one.
        assert_eq!(
            cipher
                .open(RecordKind::LogEntry, &index(5), &[1, 0, 0])
                .unwrap_err(),
            CipherError::NotSealed
        );
    }

    #[test]
    fn rotation_keeps_old_records_readable() {
        let cipher = StorageCipher::with_key(1, &KEY_A);
        let old = cipher.seal(RecordKind::Snapshot, b"m", b"old").unwrap();
        let shared = cipher.clone();
        shared.add_key(2, &KEY_B);
        assert_eq!(cipher.current_key_id(), Some(2));
        let new = cipher.seal(RecordKind::Snapshot, b"m", b"new").unwrap();
        assert_eq!(u32::from_be_bytes(new[1..5].try_into().unwrap()), 2);
        assert_eq!(
            cipher.open(RecordKind::Snapshot, b"m", &old).unwrap(),
            b"old"
        );
        assert_eq!(
            cipher.open(RecordKind::Snapshot, b"m", &new).unwrap(),
            b"new"
        );
        // Debug output names ids, never key bytes.
        let debug = format!("{cipher:?}");
        assert!(debug.contains("[1, 2]"), "{debug}");
    }
}
