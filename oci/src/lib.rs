//! husk-oci: the pure part of husk. Turns a Mesos-style container launch into an OCI runtime
//! bundle (spec + directory), with Mesos' resource math, validation rules and defaults.
//!
//! ```text
//! LaunchRequest ─ validate ─ translate(Config, Placement) ─▶ Translation{spec, user, warnings}
//!                                                             └─ write_bundle(dir) ─▶ config.json
//! ```
#![deny(unsafe_code)]

pub mod bundle;
pub mod caps;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod exec;
pub mod failpoint;
pub mod fs;
pub mod image;
pub mod lsm;
pub mod resources;
pub mod seccomp;
pub mod translate;
pub mod user;
pub mod validate;

pub use config::{Config, ParentContext, Placement};
pub use error::{Error, Result};
pub use translate::{translate, Translation};

/// Annotation holding the Mesos container id (`parent.child`).
pub const ANNOTATION_CONTAINER_ID: &str = "io.husk.container.id";
/// Annotation holding the container's sandbox directory on the host.
pub const ANNOTATION_SANDBOX: &str = "io.husk.container.sandbox";
/// Annotation holding the argv[0] a launch asked for when it differs from the executable path.
pub const ANNOTATION_ARGV0: &str = "io.husk.process.argv0";
