//! The snapshot format's constants and its byte encoding.

use prost::Message;
use shoal_api::v1::StoreSnapshot;

use crate::error::RestoreError;

/// The snapshot format this build writes and the only one it reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Protobuf bytes of a snapshot.
pub fn encode_snapshot(snapshot: &StoreSnapshot) -> Vec<u8> {
    snapshot.encode_to_vec()
}

/// Parses protobuf bytes; the format and content are checked by `Store::restore`.
pub fn decode_snapshot(bytes: &[u8]) -> Result<StoreSnapshot, RestoreError> {
    Ok(StoreSnapshot::decode(bytes)?)
}
