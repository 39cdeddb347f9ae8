//! husk-shim: the per-container shim and husk's OCI runtime.
//!
//! This crate holds what the shim persists about its container; the runtime, the reaper and the
//! shim's API server build on it.
#![deny(unsafe_code)]

pub mod cgroups;
pub mod cri_log;
pub mod exit;
pub mod logs;
pub mod runtime;
pub mod shim;
mod sys;

pub use sys::{pidfd_open, pidfd_signal};

pub use sys::{forward_signals_to, peer_groups};
