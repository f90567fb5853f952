//! The one error type of the client library.

use tonic::{Code, Status};

/// What went wrong with a call or a session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoints were given.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not a valid `host:port`.
    #[error("bad endpoint {endpoint:?}: {source}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// The session is gone: the cluster no longer knows it (it expired) or
    /// it was closed. It is never re-created behind the caller's back; build
    /// a new client to start over.
    #[error("session lost: {0}")]
    SessionLost(String),
    /// The cluster answered with an error status (see DESIGN §8 for codes).
    /// Boxed: a status is large and errors travel in every `Result`.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
    /// The cluster's answer lacked a field it always sends.
    #[error("the cluster's answer has no {0}")]
    Malformed(&'static str),
}

impl Error {
    /// The gRPC status code this error stands for.
    pub fn code(&self) -> Code {
        match self {
            Error::NoEndpoints | Error::BadEndpoint { .. } => Code::InvalidArgument,
            Error::SessionLost(_) => Code::NotFound,
            Error::Status(status) => status.code(),
            Error::Malformed(_) => Code::Internal,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Status(Box::new(status))
    }
}

impl Error {
    /// The status the cluster answered, if this error is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }
}

/// Results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
