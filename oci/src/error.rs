//! The one error type of husk-oci. Every rejection names the request field it is about and the
//! rule it broke, so the agent can map it to a gRPC status without rewording it.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: `field` broke `rule` (gRPC `INVALID_ARGUMENT`).
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// The request is well formed but asks for something husk does not do (gRPC
    /// `INVALID_ARGUMENT` as well: the caller must change the request, as Mesos' NOT_SUPPORTED).
    #[error("{field}: {what} is not supported")]
    Unsupported { field: String, what: String },
    /// The request refers to something that does not exist on this node (e.g. a host path or a
    /// user), gRPC `FAILED_PRECONDITION`.
    #[error("{field}: {what}")]
    Missing { field: String, what: String },
    /// Writing or reading the bundle failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), rule: rule.into() }
    }

    pub fn unsupported(field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Unsupported { field: field.into(), what: what.into() }
    }

    pub fn missing(field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Missing { field: field.into(), what: what.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// The request field this error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } | Error::Unsupported { field, .. } | Error::Missing { field, .. } => {
                Some(field)
            }
            Error::Io { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
