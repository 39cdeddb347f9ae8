//! husk: the agent and the operator's command line. Shared pieces of the two binaries live here.
#![deny(unsafe_code)]

pub mod agent;
pub mod client;
pub mod ctl;
pub mod launch_file;
pub mod session;
pub mod terminal;
