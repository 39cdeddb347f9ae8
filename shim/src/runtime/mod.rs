//! husk's OCI runtime: runs a bundle with plain blocking code.
//!
//! `create` forks the container's init before any thread exists; the init enters or creates the
//! spec's namespaces (the pid namespace through a second fork), waits until it has been placed
//! in its cgroup, builds its root filesystem, drops privileges and blocks on `exec.fifo` until
//! `start` opens it, then execs the command. Every error of the init before exec comes back to
//! `create` or `start` as text.
pub mod console;
mod container;
mod exec;
mod hooks;
mod init;
pub mod lsm;
pub mod mounts;
mod reaper_init;
pub mod seccomp;
pub mod state;

pub use container::{create, delete, has_hooks, kill, list, start, state, CreateOptions, HookPhase};
pub use exec::{exec, ExecOptions};
pub use state::{OciState, State, Status};

/// What went wrong, in words an operator can act on.
#[cfg(test)]
mod tests {
    #[test]
    fn errors_read_like_strerror() {
        assert_eq!(super::describe(nix::errno::Errno::ENODEV), "no such device");
        assert_eq!(super::describe(std::io::Error::from_raw_os_error(2)), "no such file or directory");
        assert_eq!(super::describe("EBUSY"), "EBUSY");
        assert_eq!(super::describe("ENOENT: No such file or directory"), "no such file or directory");
    }
}

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

/// An error as operators read it: `no such device`, not `ENODEV: No such device`.
pub(crate) fn describe(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let text = match text.split_once(": ") {
        Some((code, rest))
            if code.len() > 1
                && code.starts_with('E')
                && code[1..].chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
        {
            rest.to_string()
        }
        _ => text,
    };
    let text = text
        .strip_suffix(|c: char| c == ')')
        .and_then(|t| t.rsplit_once(" (os error").map(|(a, _)| a.to_string()))
        .unwrap_or(text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if chars.clone().next().is_some_and(|c| c.is_lowercase()) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text,
    }
}

impl Error {
    pub(crate) fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Io(format!("{what}: {e}"))
    }
}
