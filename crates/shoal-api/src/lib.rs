//! shoal's wire contract: the generated protobuf types and gRPC stubs, object IDs, name
//! validation and the task-state order. Depends on nothing else of ours.

pub mod id;
pub mod object;
pub mod task_state;
pub mod validate;

/// Generated code for the `shoal.v1` protobuf package.
#[allow(clippy::all, unreachable_pub, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use prost;
pub use prost_types;
pub use tonic;
