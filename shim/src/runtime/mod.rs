//! husk's OCI runtime: runs a bundle with plain blocking code.
//!
//! `create` forks the container's init before any thread exists; the init enters or creates the
//! spec's namespaces (the pid namespace through a second fork), waits until it has been placed
//! in its cgroup, builds its root filesystem, drops privileges and blocks on `exec.fifo` until
//! `start` opens it, then execs the command. Every error of the init before exec comes back to
//! `create` or `start` as text.
mod container;
mod hooks;
mod init;
pub mod mounts;
pub mod seccomp;
mod state;

pub use container::{create, delete, kill, list, start, state, CreateOptions};
pub use state::{OciState, State, Status};

/// What went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle or its spec is unusable (nothing was created).
    #[error("{0}")]
    Bundle(String),
    /// The container's init failed before exec (its own words).
    #[error("{0}")]
    Process(String),
    #[error("container `{0}` does not exist")]
    NotFound(String),
    #[error("container `{0}` already exists")]
    Exists(String),
    /// The operation does not fit the container's status.
    #[error("container `{id}` is {status}: {what}")]
    Status { id: String, status: String, what: String },
    #[error("{0}")]
    Io(String),
}

impl Error {
    pub(crate) fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Io(format!("{what}: {e}"))
    }
}
