//! Generated config.json files validate against the OCI runtime-spec JSON schema (read from the
//! shared copy beside the repository, or from `HUSK_OCI_SCHEMA_DIR`).
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use husk_oci::resources::scalar;
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::{
    capability_info::Capability, container_info, r_limit_info, tty_info, value, volume, CapabilityInfo, CommandInfo,
    ContainerId, ContainerInfo, LinuxInfo, NetworkInfo, RLimitInfo, TtyInfo, Volume,
};

fn schema_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HUSK_OCI_SCHEMA_DIR") {
        return Some(PathBuf::from(dir));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/oci-runtime-spec-schema");
    dir.join("config-schema.json").exists().then(|| dir.canonicalize().unwrap())
}

fn validator() -> Option<jsonschema::Validator> {
    let Some(dir) = schema_dir() else {
        if std::env::var("HUSK_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no OCI runtime-spec schema (set HUSK_OCI_SCHEMA_DIR)");
            return None;
        }
        panic!("no OCI runtime-spec schema beside the repository; set HUSK_OCI_SCHEMA_DIR or HUSK_ALLOW_SKIP=1");
    };
    let path = dir.join("config-schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    Some(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .with_base_uri(format!("file://{}", path.display()))
            .with_retriever(SchemaFiles)
            .build(&schema)
            .expect("the OCI schema compiles"),
    )
}

/// Reads referenced schema files from disk. The shared copy carries only the Linux parts; the
/// other platforms' sections (vm, solaris, windows, zos), which husk never writes, are accepted
/// as anything so the Linux rules still apply in full.
struct SchemaFiles;

impl jsonschema::Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = PathBuf::from(uri.path().as_str());
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(serde_json::from_str(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let section = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.strip_prefix("config-"));
                match section {
                    Some(name @ ("vm" | "solaris" | "windows" | "zos")) => Ok(serde_json::json!({ name: {} })),
                    _ => Err(format!("{}: {e}", path.display()).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn assert_valid(v: &jsonschema::Validator, spec: &serde_json::Value) {
    let errors: Vec<String> = v.iter_errors(spec).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "config.json is not valid OCI: {errors:#?}\n{spec:#}");
}

fn full_launch(data: &str) -> LaunchRequest {
    use r_limit_info::{r_limit::Type, RLimit};
    LaunchRequest {
        container_id: ContainerId { value: "schema".into(), parent: None },
        command: Some(CommandInfo {
            shell: Some(false),
            value: Some("/bin/echo".into()),
            arguments: vec!["echo".into(), "hi".into()],
            user: Some("app".into()),
            ..Default::default()
        }),
        resources: vec![scalar("cpus", 1.5), scalar("mem", 100.0)],
        limits: HashMap::from([
            ("cpus".into(), value::Scalar { value: 2.0 }),
            ("mem".into(), value::Scalar { value: 200.0 }),
        ]),
        container: Some(ContainerInfo {
            r#type: container_info::Type::Mesos as i32,
            hostname: Some("schema".into()),
            volumes: vec![Volume {
                mode: volume::Mode::Rw as i32,
                container_path: "/data".into(),
                source: Some(volume::Source {
                    r#type: Some(volume::source::Type::HostPath as i32),
                    host_path: Some(volume::source::HostPath { path: data.into(), mount_propagation: None }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            network_infos: vec![NetworkInfo { name: Some("net".into()), ..Default::default() }],
            linux_info: Some(LinuxInfo {
                effective_capabilities: Some(CapabilityInfo { capabilities: vec![Capability::NetRaw as i32] }),
                shm_size: Some(32),
                ..Default::default()
            }),
            rlimit_info: Some(RLimitInfo {
                rlimits: vec![
                    RLimit { r#type: Some(Type::RlmtNofile as i32), soft: Some(10), hard: Some(20) },
                    RLimit { r#type: Some(Type::RlmtCore as i32), soft: None, hard: None },
                ],
            }),
            tty_info: Some(TtyInfo { window_size: Some(tty_info::WindowSize { rows: 24, columns: 80 }) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn generated_specs_validate_against_the_oci_schema() {
    let Some(v) = validator() else { return };
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/passwd"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
    let sandbox = work.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();

    let image = Placement { sandbox_dir: sandbox.clone(), rootfs: Some(rootfs), ..Default::default() };
    let t = translate(&full_launch(data.to_str().unwrap()), &Config::default(), &image).unwrap();
    assert_valid(&v, &serde_json::to_value(&t.spec).unwrap());

    let host = Placement { sandbox_dir: sandbox, ..Default::default() };
    let mut req = full_launch(data.to_str().unwrap());
    req.command.as_mut().unwrap().user = None;
    req.container.as_mut().unwrap().volumes.clear();
    let t = translate(&req, &Config::default(), &host).unwrap();
    let json = serde_json::to_value(&t.spec).unwrap();
    assert_valid(&v, &json);

    // The check can fail: a spec without its version is rejected.
    let mut broken = json;
    broken.as_object_mut().unwrap().remove("ociVersion");
    assert!(!v.is_valid(&broken));
}
