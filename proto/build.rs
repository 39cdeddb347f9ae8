//! Compiles the API protos with a vendored protoc (no system protoc needed) and generates
//! serde implementations with pbjson, so every message also reads Mesos-style JSON
//! (original snake_case field names and camelCase both accepted, enums by name).
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "mesos/v1/mesos.proto",
    "mesos/v1/agent/agent.proto",
    "husk/agent/v1/containerizer.proto",
    "husk/shim/v1/shim.proto",
    "cri/runtime/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("husk_descriptor.bin");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .build_server(true)
        .build_client(true)
        .compile_protos(PROTOS, &["."])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.preserve_proto_field_names().build(&[
        ".mesos.v1",
        ".mesos.v1.agent",
        ".husk.agent.v1",
        ".husk.shim.v1",
        ".runtime.v1",
    ])?;

    // prost names the enum value `Volume.Source.SandboxPath.Type.SELF` `Self_` (a keyword
    // escape); pbjson writes the bare keyword. Align pbjson's output with prost's.
    let serde_file = out_dir.join("mesos.v1.serde.rs");
    let text = std::fs::read_to_string(&serde_file)?;
    let fixed = text
        .replace("Self::Self =>", "Self::Self_ =>")
        .replace("sandbox_path::Type::Self)", "sandbox_path::Type::Self_)");
    if fixed == text {
        return Err("pbjson output changed: the SELF enum value fix no longer applies".into());
    }
    std::fs::write(&serde_file, fixed)?;
    Ok(())
}
