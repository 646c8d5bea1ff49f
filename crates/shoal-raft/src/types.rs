//! The openraft type configuration and the versioned byte encoding of everything we persist or send.
//!
//! Nothing here is public: openraft's types stay inside this crate so its API churn never leaks.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

openraft::declare_raft_types!(
    /// shoal's instantiation of openraft: opaque proposals in, opaque replies out.
    pub(crate) TypeConfig:
        D = Proposals,
        R = Replies,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub(crate) type Raft = openraft::Raft<TypeConfig, crate::state_machine::SmStore>;

/// One opaque proposal, serialized as a byte string (not a sequence of numbers) so postcard stores
/// it as length + raw bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl<'de> serde::de::Visitor<'de> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Blob(out))
            }
        }
        deserializer.deserialize_byte_buf(BlobVisitor)
    }
}

/// The application data of one log entry: one or more proposals (several under group commit),
/// applied in order at the entry's index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proposals(pub(crate) Vec<Blob>);

impl Proposals {
    pub(crate) fn byte_len(&self) -> usize {
        self.0.iter().map(|b| b.0.len() + 8).sum()
    }
}

impl fmt::Display for Proposals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} proposal(s), {} bytes", self.0.len(), self.byte_len())
    }
}

/// The state machine's answers for one entry, one per proposal, in proposal order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Replies(pub(crate) Vec<Blob>);

/// The first byte of every encoded record and RPC payload (a sealed record wraps an encoded one,
/// see `at_rest`). A reader refuses any other value, so a file or peer from an unknown version
/// is rejected instead of misread.
pub(crate) const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("empty {what} record")]
    Empty { what: &'static str },
    #[error("{what} record has unsupported format version {found} (this build reads {FORMAT_V1})")]
    Version { what: &'static str, found: u8 },
    #[error("malformed {what} record: {source}")]
    Malformed {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, vec![FORMAT_V1])
        .map_err(|source| CodecError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty { what })?;
    if version != FORMAT_V1 {
        return Err(CodecError::Version {
            what,
            found: version,
        });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Malformed { what, source })
}

/// A rough wire size of an entry, used to keep AppendEntries messages under the transport limit.
pub(crate) fn approx_entry_size(entry: &Entry) -> usize {
    const OVERHEAD: usize = 64;
    match &entry.payload {
        openraft::EntryPayload::Normal(p) => OVERHEAD + p.byte_len(),
        openraft::EntryPayload::Membership(m) => {
            OVERHEAD + m.nodes().map(|(_, n)| n.addr.len() + 24).sum::<usize>()
        }
        openraft::EntryPayload::Blank => OVERHEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_is_compact() {
        let p = Proposals(vec![Blob(vec![7; 300]), Blob(vec![])]);
        let bytes = encode("proposals", &p).unwrap();
        // format byte + seq len + (len varint + bytes) per blob
        assert_eq!(bytes.len(), 1 + 1 + (2 + 300) + 1);
        let back: Proposals = decode("proposals", &bytes).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = encode("proposals", &Proposals::default()).unwrap();
        bytes[0] = 9;
        let err = decode::<Proposals>("log entry", &bytes).unwrap_err();
        assert!(
            err.to_string().contains("unsupported format version 9"),
            "{err}"
        );
    }
}
