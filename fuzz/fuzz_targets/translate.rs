//! The launch → OCI translation, on any request the API could be sent: a `LaunchRequest` as
//! protobuf, or as JSON when the input starts with `{` (the form `huskctl launch` reads).
//!
//! Translation may refuse, never panic; what it accepts passes the runtime's own structural
//! checks (`check_spec`) and survives the round trip through `config.json`, as the shim and
//! `husk-runtime` read it back. The placement (host filesystem, an image rootfs, nested in a
//! parent) follows the request: nested in a parent when its id names one, else the host filesystem
//! or an image rootfs by the input's length.
#![no_main]
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use husk_oci::{check, translate, Config, ParentContext, Placement};
use husk_proto::agent::v1::LaunchRequest;
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;
use prost::Message;

struct Node {
    config: Config,
    placements: [Placement; 3],
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("husk-fuzz-translate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = |p: &str| {
            let d = base.join(p);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let rootfs = dir("rootfs");
        dir("rootfs/etc");
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            .unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
        std::os::unix::fs::symlink("/", rootfs.join("escape")).unwrap();
        let profiles = dir("seccomp");
        fs::write(profiles.join("strict.json"), r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}"#).unwrap();
        // Privileged launches are translated too (they read the node's /dev).
        let config = Config { seccomp_profile_dir: Some(profiles), allow_privileged: true, ..Config::default() };
        let sandbox: PathBuf = dir("sandbox");
        let parent = ParentContext {
            sandbox_dir: dir("parent-sandbox"),
            net_ns: "/proc/1/ns/net".into(),
            uts_ns: "/proc/1/ns/uts".into(),
            pid_ns: "/proc/1/ns/pid".into(),
            ipc_ns: "/proc/1/ns/ipc".into(),
            cgroups_path: "/husk/parent".into(),
            privileged: true,
        };
        let placements = [
            Placement { sandbox_dir: sandbox.clone(), ..Default::default() },
            Placement { sandbox_dir: sandbox.clone(), rootfs: Some(rootfs.clone()), ..Default::default() },
            Placement { sandbox_dir: sandbox, rootfs: Some(rootfs), parent: Some(parent), ..Default::default() },
        ];
        Node { config, placements }
    })
}

fuzz_target!(|data: &[u8]| {
    let req = if data.first() == Some(&b'{') {
        match serde_json::from_slice::<LaunchRequest>(data) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        match LaunchRequest::decode(data) {
            Ok(r) => r,
            Err(_) => return,
        }
    };
    let node = node();
    let place = match req.container_id.parent.is_some() {
        true => &node.placements[2],
        false => &node.placements[data.len() % 2],
    };
    let Ok(t) = translate(&req, &node.config, place) else { return };
    if let Err(e) = check::check_spec(&t.spec) {
        panic!("an accepted launch became a spec the runtime refuses: {e}\n{req:?}");
    }
    // A container's cgroup is its own: below the agent's root or a parent outside it, never
    // the root itself or anything of another container's.
    let cgroup = t.spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()).expect("a cgroup path");
    let root = std::path::Path::new("/").join(node.config.cgroup_root.trim_matches('/'));
    let own = cgroup.file_name().map(|n| n.to_string_lossy().into_owned());
    assert_eq!(own.as_deref(), Some(req.container_id.value.as_str()), "{cgroup:?} is not the container's own");
    let parent = cgroup.parent().expect("not the root cgroup");
    if req.cgroup_parent.as_deref().is_some_and(|p| !p.is_empty()) && place.parent.is_none() {
        assert!(parent == root || !parent.starts_with(&root), "{cgroup:?} is another container's below {root:?}");
        assert!(!root.starts_with(&cgroup), "{cgroup:?} holds the agent's root {root:?}");
    } else if place.parent.is_none() {
        assert_eq!(parent, root, "{cgroup:?}");
    }
    assert!(
        cgroup.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))),
        "{cgroup:?} is not clean"
    );
    let json = serde_json::to_vec(&t.spec).expect("a spec serializes");
    let back: Spec = serde_json::from_slice(&json).expect("config.json reads back");
    assert_eq!(back, t.spec, "config.json does not read back as written");
});
