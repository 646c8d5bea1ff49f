//! The manager's error type and its mapping onto gRPC status codes, so that every refusal
//! reaches the user as one line that says what was wrong.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A write lost a race with another write to the same object.
    #[error("{0}")]
    Conflict(String),
    /// No leader could take the request (election in progress, quorum lost).
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ManagerError> for Status {
    fn from(error: ManagerError) -> Status {
        let code = match &error {
            ManagerError::NotFound(_) => Code::NotFound,
            ManagerError::AlreadyExists(_) => Code::AlreadyExists,
            ManagerError::InvalidArgument(_) => Code::InvalidArgument,
            ManagerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ManagerError::Conflict(_) => Code::Aborted,
            ManagerError::Unavailable(_) => Code::Unavailable,
            ManagerError::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

impl From<shoal_api::validate::InvalidInput> for ManagerError {
    fn from(error: shoal_api::validate::InvalidInput) -> Self {
        ManagerError::InvalidArgument(error.to_string())
    }
}

impl From<shoal_store::LookupError> for ManagerError {
    fn from(error: shoal_store::LookupError) -> Self {
        match error {
            shoal_store::LookupError::NotFound { .. } => ManagerError::NotFound(error.to_string()),
            _ => ManagerError::InvalidArgument(error.to_string()),
        }
    }
}
