//! husk's API: the subset of Mesos' `mesos.proto` that husk accepts, the agent service
//! (`husk.agent.v1`), the per-container shim service (`husk.shim.v1`) and the Kubernetes CRI
//! (`runtime.v1`) the agent also serves.
//!
//! Every message implements `serde::Serialize`/`Deserialize` in the protobuf JSON mapping
//! (pbjson). Serialization uses the original proto field names (`container_id`, as Mesos writes
//! them); deserialization accepts both those and the lowerCamelCase JSON names, so the JSON a
//! Mesos framework or tool writes decodes as is.
#![deny(unsafe_code)]
#![allow(clippy::all, missing_docs)]

pub mod mesos {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.serde.rs"));

        /// The container calls of the Mesos agent operator API (`Call`, `Response`).
        pub mod agent {
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.agent.rs"));
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.agent.serde.rs"));
        }
    }
}

// The generated code refers to other packages by relative paths (`super::super::...`), so the
// module tree mirrors the proto packages; `agent` and `shim` are short re-exports.
pub mod husk {
    pub mod agent {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/husk.agent.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/husk.agent.v1.serde.rs"));
        }
    }

    pub mod shim {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/husk.shim.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/husk.shim.v1.serde.rs"));
        }
    }
}

pub use husk::{agent, shim};

/// The Kubernetes Container Runtime Interface, v1 (package `runtime.v1`): RuntimeService and
/// ImageService, as crictl and the kubelet call them.
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of all husk protos, for gRPC reflection and tooling.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/husk_descriptor.bin"));
