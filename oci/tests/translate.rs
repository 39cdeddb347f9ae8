//! Every mapping of the launch → OCI translation: each rule, each default, each error.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use husk_oci::resources::scalar;
use husk_oci::{translate, Config, ParentContext, Placement};
use husk_proto::agent::v1::{LaunchRequest, SecurityOptions};
use husk_proto::mesos::v1::{
    capability_info::Capability, command_info, container_info, environment, image, linux_info, mount_propagation,
    r_limit_info, value, volume, CapabilityInfo, CommandInfo, ContainerId, ContainerInfo, Environment, Image,
    LinuxInfo, MountPropagation, NetworkInfo, RLimitInfo, SeccompInfo, TtyInfo, Volume,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

struct Fixture {
    _dir: tempfile::TempDir,
    sandbox: PathBuf,
    rootfs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
        .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nvideo:x:44:app\n").unwrap();
    Fixture { _dir: dir, sandbox, rootfs }
}

fn id(v: &str) -> ContainerId {
    ContainerId { value: v.into(), parent: None }
}

fn launch(cmd: &str) -> LaunchRequest {
    LaunchRequest {
        container_id: id("c1"),
        command: Some(CommandInfo { value: Some(cmd.into()), ..Default::default() }),
        ..Default::default()
    }
}

fn mesos_info() -> ContainerInfo {
    ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() }
}

fn host(f: &Fixture) -> Placement {
    Placement { sandbox_dir: f.sandbox.clone(), ..Default::default() }
}

fn image_place(f: &Fixture) -> Placement {
    Placement { sandbox_dir: f.sandbox.clone(), rootfs: Some(f.rootfs.clone()), ..Default::default() }
}

fn spec(req: &LaunchRequest, place: &Placement) -> Spec {
    translate(req, &Config::default(), place).unwrap().spec
}

fn err(req: &LaunchRequest, place: &Placement) -> String {
    translate(req, &Config::default(), place).unwrap_err().to_string()
}

fn env_of(s: &Spec) -> HashMap<String, String> {
    s.process()
        .as_ref()
        .unwrap()
        .env()
        .as_ref()
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn ns_types(s: &Spec) -> Vec<LinuxNamespaceType> {
    s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect()
}

fn mount_at<'a>(s: &'a Spec, dest: &str) -> Option<&'a oci_spec::runtime::Mount> {
    s.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest))
}

#[test]
fn shell_command_runs_through_sh() {
    let f = fixture();
    let s = spec(&launch("echo hi"), &host(&f));
    assert_eq!(s.process().as_ref().unwrap().args().as_ref().unwrap(), &["/bin/sh", "-c", "echo hi"]);
}

#[test]
fn plain_command_uses_value_and_arguments() {
    let f = fixture();
    let mut req = launch("/bin/echo");
    req.command.as_mut().unwrap().shell = Some(false);
    req.command.as_mut().unwrap().arguments = vec!["echo".into(), "a".into(), "b c".into()];
    let s = spec(&req, &host(&f));
    assert_eq!(s.process().as_ref().unwrap().args().as_ref().unwrap(), &["/bin/echo", "a", "b c"]);
    assert_eq!(s.annotations().as_ref().unwrap().get(husk_oci::ANNOTATION_ARGV0).unwrap(), "echo");
    // argv[0] equal to the executable needs no annotation.
    req.command.as_mut().unwrap().arguments = vec!["/bin/echo".into()];
    let s = spec(&req, &host(&f));
    assert!(!s.annotations().as_ref().unwrap().contains_key(husk_oci::ANNOTATION_ARGV0));
}

#[test]
fn host_rootfs_container_sees_host_files_with_its_own_namespaces() {
    let f = fixture();
    let s = spec(&launch("true"), &host(&f));
    assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"), "the bundle's rootfs dir");
    let root = mount_at(&s, "/").expect("the host's / bound as the root");
    assert_eq!(root.source().as_deref(), Some(Path::new("/")));
    assert_eq!(root.options().as_ref().unwrap(), &["rbind", "rslave"]);
    assert_eq!(s.mounts().as_ref().unwrap()[0].destination(), Path::new("/"), "first, under every other mount");
    assert_eq!(
        mount_at(&s, "/sys").unwrap().typ().as_deref(),
        Some("bind"),
        "host network: the host's /sys, read-only"
    );
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.cwd(), &f.sandbox);
    assert_eq!(env_of(&s)["MESOS_SANDBOX"], f.sandbox.display().to_string());
    let ns = ns_types(&s);
    for t in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ] {
        assert!(ns.contains(&t), "{t:?} missing");
    }
    assert!(!ns.contains(&LinuxNamespaceType::Network), "host network is the Mesos default");
    // No sandbox mount: the host path is already there.
    assert!(mount_at(&s, "/mnt/mesos/sandbox").is_none());
}

#[test]
fn rootfs_container_gets_the_sandbox_mounted() {
    let f = fixture();
    let s = spec(&launch("true"), &image_place(&f));
    assert_eq!(s.root().as_ref().unwrap().path(), &f.rootfs);
    let m = mount_at(&s, "/mnt/mesos/sandbox").expect("sandbox mount");
    assert_eq!(m.source().as_ref().unwrap(), &f.sandbox);
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/mnt/mesos/sandbox"));
    assert_eq!(env_of(&s)["MESOS_SANDBOX"], "/mnt/mesos/sandbox");
    let cfg = Config { sandbox_directory: "/sandbox".into(), ..Default::default() };
    let s = translate(&launch("true"), &cfg, &image_place(&f)).unwrap().spec;
    assert!(mount_at(&s, "/sandbox").is_some());
}

#[test]
fn special_mounts_masked_and_readonly_paths() {
    let f = fixture();
    let s = spec(&launch("true"), &image_place(&f));
    for (dest, typ) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "bind"),
    ] {
        let m = mount_at(&s, dest).unwrap_or_else(|| panic!("{dest} missing"));
        assert_eq!(m.typ().as_deref(), Some(typ), "{dest}");
    }
    assert!(mount_at(&s, "/sys").unwrap().options().as_ref().unwrap().contains(&"ro".to_string()));
    assert!(mount_at(&s, "/dev/shm").unwrap().options().as_ref().unwrap().contains(&"size=65536k".to_string()));
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
    assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sysrq-trigger".to_string()));
    let devices = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(!devices[0].allow(), "device cgroup starts from deny-all");
    assert!(devices.iter().any(|d| d.allow() && d.major() == Some(1) && d.minor() == Some(3)));
}

#[test]
fn shm_size_and_ipc_modes() {
    let f = fixture();
    let mut req = launch("true");
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo { shm_size: Some(16), ..Default::default() });
    req.container = Some(info.clone());
    let s = spec(&req, &image_place(&f));
    assert!(mount_at(&s, "/dev/shm").unwrap().options().as_ref().unwrap().contains(&"size=16384k".to_string()));

    info.linux_info = Some(LinuxInfo { ipc_mode: Some(linux_info::IpcMode::ShareParent as i32), ..Default::default() });
    req.container = Some(info.clone());
    assert!(err(&req, &image_place(&f)).contains("see --allow-host-ipc-namespace"), "host IPC is opt-in");
    let host_ipc = Config { allow_host_ipc_namespace: true, ..Default::default() };
    let s = translate(&req, &host_ipc, &image_place(&f)).unwrap().spec;
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Ipc));
    assert_eq!(mount_at(&s, "/dev/shm").unwrap().typ().as_deref(), Some("bind"));

    info.linux_info = Some(LinuxInfo {
        ipc_mode: Some(linux_info::IpcMode::ShareParent as i32),
        shm_size: Some(8),
        ..Default::default()
    });
    req.container = Some(info);
    assert!(
        err(&req, &image_place(&f)).starts_with("container.linux_info.shm_size: can only be set with ipc_mode PRIVATE")
    );
}

#[test]
fn share_pid_namespace_uses_the_hosts() {
    let f = fixture();
    let mut req = launch("true");
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo { share_pid_namespace: Some(true), ..Default::default() });
    req.container = Some(info);
    assert_eq!(
        err(&req, &host(&f)),
        "container.linux_info.share_pid_namespace: would share the host's pid namespace, which this agent does \
         not allow (see --allow-host-pid-namespace)"
    );
    let cfg = Config { allow_host_pid_namespace: true, ..Default::default() };
    let s = translate(&req, &cfg, &host(&f)).unwrap().spec;
    assert!(!ns_types(&s).contains(&LinuxNamespaceType::Pid));
}

#[test]
fn named_network_gets_a_network_namespace() {
    let f = fixture();
    let mut req = launch("true");
    let mut info = mesos_info();
    info.network_infos = vec![NetworkInfo { name: Some("bridge".into()), ..Default::default() }];
    req.container = Some(info.clone());
    let s = spec(&req, &host(&f));
    assert!(ns_types(&s).contains(&LinuxNamespaceType::Network));
    let sys = mount_at(&s, "/sys").unwrap();
    assert_eq!(sys.typ().as_deref(), Some("sysfs"), "its own network: its own sysfs");
    assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
    info.network_infos = vec![NetworkInfo::default()];
    req.container = Some(info);
    assert!(!ns_types(&spec(&req, &host(&f))).contains(&LinuxNamespaceType::Network));
}

fn resources_of(s: &Spec) -> &oci_spec::runtime::LinuxResources {
    s.linux().as_ref().unwrap().resources().as_ref().unwrap()
}

#[test]
fn cpu_shares_follow_mesos() {
    let f = fixture();
    for (cpus, shares) in [(1.0, 1024), (0.5, 512), (2.25, 2304), (0.001, 2), (0.0, 2)] {
        let mut req = launch("true");
        req.resources = vec![scalar("cpus", cpus)];
        let s = spec(&req, &host(&f));
        let cpu = resources_of(&s).cpu().as_ref().unwrap();
        assert_eq!(cpu.shares(), Some(shares), "cpus {cpus}");
        assert_eq!(cpu.quota(), None, "no quota without a limit");
    }
}

#[test]
fn cfs_quota_from_the_limit_or_the_request_when_enabled() {
    let f = fixture();
    let mut req = launch("true");
    req.resources = vec![scalar("cpus", 0.5)];
    req.limits = HashMap::from([("cpus".into(), value::Scalar { value: 1.5 })]);
    let s = spec(&req, &host(&f));
    let cpu = resources_of(&s).cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));

    req.limits = HashMap::from([("cpus".into(), value::Scalar { value: 0.001 })]);
    req.resources = vec![];
    let s = spec(&req, &host(&f));
    assert_eq!(resources_of(&s).cpu().as_ref().unwrap().quota(), Some(1_000), "minimum 1 ms");

    req.limits = HashMap::from([("cpus".into(), value::Scalar { value: f64::INFINITY })]);
    req.resources = vec![scalar("cpus", 1.0)];
    let s = spec(&req, &host(&f));
    assert_eq!(resources_of(&s).cpu().as_ref().unwrap().quota(), None, "infinite limit: no quota");

    req.limits.clear();
    let cfg = Config { enable_cfs: true, ..Default::default() };
    let s = translate(&req, &cfg, &host(&f)).unwrap().spec;
    assert_eq!(resources_of(&s).cpu().as_ref().unwrap().quota(), Some(100_000));
}

#[test]
fn memory_limit_rules() {
    let f = fixture();
    let mb = 1024 * 1024;
    let mut req = launch("true");
    req.resources = vec![scalar("mem", 128.0)];
    let s = spec(&req, &host(&f));
    let mem = resources_of(&s).memory().as_ref().unwrap();
    assert_eq!(mem.limit(), Some(128 * mb));
    assert_eq!(mem.reservation(), Some(128 * mb), "the request is also the soft limit");

    req.resources = vec![scalar("mem", 8.0)];
    let t = translate(&req, &Config::default(), &host(&f)).unwrap();
    assert_eq!(resources_of(&t.spec).memory().as_ref().unwrap().limit(), Some(32 * mb), "at least 32 MB");
    assert!(t.warnings.iter().any(|w| w.contains("raised to the minimum")));

    req.resources = vec![scalar("mem", 64.0)];
    req.limits = HashMap::from([("mem".into(), value::Scalar { value: 256.0 })]);
    let s = spec(&req, &host(&f));
    let mem = resources_of(&s).memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.reservation()), (Some(256 * mb), Some(64 * mb)));

    req.limits = HashMap::from([("mem".into(), value::Scalar { value: f64::INFINITY })]);
    let s = spec(&req, &host(&f));
    assert_eq!(resources_of(&s).memory().as_ref().unwrap().limit(), None);
}

#[test]
fn pids_limit_and_cgroups_path() {
    let f = fixture();
    let s = spec(&launch("true"), &host(&f));
    assert_eq!(resources_of(&s).pids().as_ref().unwrap().limit(), 4096);
    assert_eq!(s.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/husk/c1")));
    let cfg = Config { default_pids_limit: None, cgroup_root: "/mesos/".into(), ..Default::default() };
    let s = translate(&launch("true"), &cfg, &host(&f)).unwrap().spec;
    assert!(resources_of(&s).pids().is_none());
    assert_eq!(s.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/mesos/c1")));
}

#[test]
fn cgroup_parent_places_a_top_level_container_and_is_checked() {
    let f = fixture();
    let path = |parent: &str| {
        let mut req = launch("true");
        req.cgroup_parent = Some(parent.into());
        spec(&req, &host(&f)).linux().as_ref().unwrap().cgroups_path().clone().unwrap()
    };
    assert_eq!(path("/kubepods/burstable/pod1"), Path::new("/kubepods/burstable/pod1/c1"));
    assert_eq!(path("//kubepods//pod1/"), Path::new("/kubepods/pod1/c1"), "cleaned");
    assert_eq!(path("/husk"), Path::new("/husk/c1"), "the agent's root is the default");
    assert_eq!(path("/huskier/pod"), Path::new("/huskier/pod/c1"), "a sibling of the root is outside it");
    assert_eq!(path("/"), Path::new("/c1"));
    assert_eq!(path(""), Path::new("/husk/c1"), "empty is unset");

    let refused = |parent: &str| {
        let mut req = launch("true");
        req.cgroup_parent = Some(parent.into());
        err(&req, &host(&f))
    };
    assert!(refused("kubepods/pod1").starts_with("cgroup_parent: `kubepods/pod1` must be an absolute"));
    assert!(refused("kubepods-burstable-pod1.slice").contains("is a systemd slice"), "{}", refused("x.slice"));
    assert!(refused("/kubepods/../husk").contains("`..` is not a cgroup name"));
    assert!(refused("/kubepods/./pod").contains("`.` is not a cgroup name"));
    assert!(refused("/kube\npods").contains("control characters"));
    assert!(refused(&format!("/{}", "a".repeat(256))).contains("at most 255 bytes"));
    assert!(refused(&format!("/{}", "a/".repeat(600))).contains("longer than 1024 bytes"));
    let mut req = launch("true");
    req.container_id = id("husk");
    req.cgroup_parent = Some("/".into());
    assert!(err(&req, &host(&f)).contains("would be `/husk`, which holds the agent's cgroup root `/husk`"));
    let cfg = Config { cgroup_root: "/husk/node1".into(), ..Default::default() };
    assert!(translate(&req, &cfg, &host(&f)).unwrap_err().to_string().contains("holds the agent's cgroup root"));
    assert!(
        refused("/husk/other").contains("inside the agent's cgroup root `/husk`"),
        "another container's cgroup is no parent: {}",
        refused("/husk/other")
    );

    // Nested containers live below their parent's cgroup.
    let mut req = launch("true");
    req.container_id = ContainerId { value: "child".into(), parent: Some(Box::new(id("pod"))) };
    req.cgroup_parent = Some("/kubepods".into());
    let place = Placement {
        sandbox_dir: f.sandbox.clone(),
        parent: Some(ParentContext { cgroups_path: "/husk/pod".into(), ..Default::default() }),
        ..Default::default()
    };
    assert!(err(&req, &place).starts_with("cgroup_parent: only for a top-level container"));
}

fn caps_of(s: &Spec) -> &oci_spec::runtime::LinuxCapabilities {
    s.process().as_ref().unwrap().capabilities().as_ref().unwrap()
}

fn names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut v: Vec<String> =
        set.as_ref().unwrap().iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn capinfo(caps: &[Capability]) -> CapabilityInfo {
    CapabilityInfo { capabilities: caps.iter().map(|c| *c as i32).collect() }
}

#[test]
fn default_capabilities_are_the_allowed_set() {
    let f = fixture();
    let s = spec(&launch("true"), &host(&f));
    let c = caps_of(&s);
    assert_eq!(names(c.bounding()).len(), 14);
    assert_eq!(names(c.bounding()), names(c.effective()));
    assert!(names(c.ambient()).is_empty());
}

#[test]
fn requested_capabilities_are_intersected_with_the_allowed_set() {
    let f = fixture();
    let mut req = launch("true");
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo {
        effective_capabilities: Some(capinfo(&[Capability::NetRaw, Capability::SysAdmin])),
        ..Default::default()
    });
    req.container = Some(info);
    let t = translate(&req, &Config::default(), &host(&f)).unwrap();
    let c = caps_of(&t.spec);
    assert_eq!(names(c.effective()), vec!["CAP_NET_RAW"]);
    assert_eq!(names(c.bounding()), vec!["CAP_NET_RAW"]);
    assert!(t.warnings.iter().any(|w| w.contains("CAP_SYS_ADMIN not in the agent's allowed capabilities")));

    // An operator who allows SYS_ADMIN lets it through, and the seccomp profile opens mount.
    let mut cfg = Config::default();
    cfg.allowed_capabilities.insert("CAP_SYS_ADMIN".into());
    let t = translate(&req, &cfg, &host(&f)).unwrap();
    assert_eq!(names(caps_of(&t.spec).effective()), vec!["CAP_NET_RAW", "CAP_SYS_ADMIN"]);
    let seccomp = serde_json::to_value(t.spec.linux().as_ref().unwrap().seccomp()).unwrap();
    assert!(!seccomp["syscalls"][0]["names"].as_array().unwrap().iter().any(|n| n == "mount"));
}

#[test]
fn bounding_and_effective_capabilities() {
    let f = fixture();
    let mut req = launch("true");
    req.command.as_mut().unwrap().user = Some("app".into());
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo {
        bounding_capabilities: Some(capinfo(&[Capability::Chown, Capability::Kill, Capability::NetBindService])),
        effective_capabilities: Some(capinfo(&[Capability::NetBindService])),
        ..Default::default()
    });
    req.container = Some(info.clone());
    let s = spec(&req, &image_place(&f));
    let c = caps_of(&s);
    assert_eq!(names(c.bounding()), vec!["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    assert_eq!(names(c.effective()), vec!["CAP_NET_BIND_SERVICE"]);
    assert_eq!(names(c.ambient()), vec!["CAP_NET_BIND_SERVICE"], "non-root keeps granted caps as ambient");

    info.linux_info = Some(LinuxInfo {
        bounding_capabilities: Some(capinfo(&[Capability::Chown])),
        effective_capabilities: Some(capinfo(&[Capability::Kill])),
        ..Default::default()
    });
    req.container = Some(info.clone());
    assert!(err(&req, &image_place(&f)).contains("CAP_KILL is not in `bounding_capabilities`"));

    info.linux_info =
        Some(LinuxInfo { bounding_capabilities: Some(CapabilityInfo { capabilities: vec![5] }), ..Default::default() });
    req.container = Some(info);
    assert_eq!(
        err(&req, &image_place(&f)),
        "container.linux_info.bounding_capabilities.capabilities[0]: unknown capability value 5"
    );
}

#[test]
fn ambient_capabilities_are_kept_across_exec_only_when_granted() {
    let f = fixture();
    let mut req = launch("true");
    req.command.as_mut().unwrap().user = Some("app".into());
    let ambient = |names: &[&str]| SecurityOptions {
        ambient_capabilities: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    req.security = Some(ambient(&["net_bind_service", "CAP_NET_BIND_SERVICE"]));
    let s = spec(&req, &image_place(&f));
    let c = caps_of(&s);
    assert_eq!(names(c.ambient()), vec!["CAP_NET_BIND_SERVICE"]);
    assert_eq!(names(c.inheritable()), vec!["CAP_NET_BIND_SERVICE"], "ambient needs inheritable");
    assert_eq!(names(c.effective()).len(), 14, "the default set is unchanged");
    husk_oci::check::check_spec(&s).unwrap();

    req.security = Some(ambient(&["SYS_ADMIN"]));
    assert_eq!(
        err(&req, &image_place(&f)),
        "security.ambient_capabilities[0]: CAP_SYS_ADMIN is not among the container's capabilities; grant it too"
    );
    req.security = Some(ambient(&["KILL", "NOPE"]));
    assert_eq!(err(&req, &image_place(&f)), "security.ambient_capabilities[1]: unknown capability `NOPE`");
    req.security = Some(ambient(&["KILL"; 129]));
    assert!(err(&req, &image_place(&f)).contains("129 names (at most 128)"));
}

#[test]
fn apparmor_profile_must_be_loaded_on_the_node() {
    let f = fixture();
    let mut req = launch("true");
    let profile = |name: &str| SecurityOptions { apparmor_profile: Some(name.into()), ..Default::default() };
    req.security = Some(profile("unconfined"));
    assert_eq!(spec(&req, &host(&f)).process().as_ref().unwrap().apparmor_profile(), &None);
    for bad in ["", "two words", "tab\there"] {
        req.security = Some(profile(bad));
        assert_eq!(
            err(&req, &host(&f)),
            "security.apparmor_profile: must be a profile name without spaces or control characters",
            "{bad:?}"
        );
    }
    req.security = Some(profile("husk-test-none"));
    let e = translate(&req, &Config::default(), &host(&f)).unwrap_err();
    assert!(matches!(e, husk_oci::Error::Missing { .. }), "a node matter (FAILED_PRECONDITION): {e}");
    let want = match husk_oci::lsm::apparmor_enabled() {
        false => "security.apparmor_profile: profile `husk-test-none` was asked for, but AppArmor is not enabled on this node",
        true => "security.apparmor_profile: AppArmor profile `husk-test-none` is not loaded on this node (load it with apparmor_parser)",
    };
    assert_eq!(e.to_string(), want);
}

#[test]
fn seccomp_default_unconfined_and_named() {
    let f = fixture();
    let s = spec(&launch("true"), &host(&f));
    assert!(s.linux().as_ref().unwrap().seccomp().is_some(), "default profile on by default");

    let mut req = launch("true");
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo {
        seccomp: Some(SeccompInfo { unconfined: Some(true), profile_name: None }),
        ..Default::default()
    });
    req.container = Some(info.clone());
    assert_eq!(
        err(&req, &host(&f)),
        "container.linux_info.seccomp.unconfined: is not allowed by this agent (see --allow-unconfined-seccomp)"
    );
    let cfg = Config { allow_unconfined_seccomp: true, ..Default::default() };
    let s = translate(&req, &cfg, &host(&f)).unwrap().spec;
    assert!(s.linux().as_ref().unwrap().seccomp().is_none());

    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(profiles.path().join("strict.json"), r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}"#).unwrap();
    let cfg = Config { seccomp_profile_dir: Some(profiles.path().into()), ..Default::default() };
    info.linux_info = Some(LinuxInfo {
        seccomp: Some(SeccompInfo { profile_name: Some("strict".into()), unconfined: None }),
        ..Default::default()
    });
    req.container = Some(info.clone());
    let s = translate(&req, &cfg, &host(&f)).unwrap().spec;
    assert_eq!(serde_json::to_value(s.linux().as_ref().unwrap().seccomp()).unwrap()["defaultAction"], "SCMP_ACT_ERRNO");
    info.linux_info = Some(LinuxInfo {
        seccomp: Some(SeccompInfo { profile_name: Some("../etc".into()), unconfined: None }),
        ..Default::default()
    });
    req.container = Some(info);
    assert!(translate(&req, &cfg, &host(&f)).unwrap_err().to_string().contains("must be a file name"));
}

#[test]
fn security_options() {
    let f = fixture();
    let with = |sec: SecurityOptions| LaunchRequest { security: Some(sec), ..launch("true") };

    // Defaults: a writable root, no_new_privs, husk's masked and read-only paths, no sysctls.
    let s = spec(&launch("true"), &host(&f));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    assert_eq!(s.process().as_ref().unwrap().no_new_privileges(), Some(true));
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
    assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_string()));
    assert!(linux.sysctl().is_none());
    assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), None);

    let s = spec(
        &with(SecurityOptions {
            readonly_rootfs: Some(true),
            masked_paths: vec!["/proc/cpuinfo".into()],
            readonly_paths: vec!["/etc".into()],
            oom_score_adj: Some(-500),
            supplemental_groups: vec![7000, 0, 7000, 5],
            ..Default::default()
        }),
        &image_place(&f),
    );
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    // Root's primary group is not repeated; the rest are sorted and unique.
    assert_eq!(s.process().as_ref().unwrap().user().additional_gids().as_deref(), Some(&[5, 7000][..]));
    let linux = s.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_deref(), Some(&["/proc/cpuinfo".to_string()][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&["/etc".to_string()][..]));
    assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(-500));

    for (sec, want) in [
        (
            SecurityOptions { masked_paths: vec!["proc/kcore".into()], ..Default::default() },
            "security.masked_paths[0]: `proc/kcore` must be an absolute path below `/`",
        ),
        (
            SecurityOptions { readonly_paths: vec!["/etc/../..".into()], ..Default::default() },
            "security.readonly_paths[0]: `/etc/../..` must not contain `..`",
        ),
        (SecurityOptions { oom_score_adj: Some(1001), ..Default::default() }, "security.oom_score_adj: 1001 is not within -1000 to 1000"),
        (
            SecurityOptions { supplemental_groups: vec![1; 65537], ..Default::default() },
            "security.supplemental_groups: 65537 groups (at most 65536)",
        ),
        (
            SecurityOptions { no_new_privileges: Some(false), ..Default::default() },
            "security.no_new_privileges: false is not allowed: this agent sets no_new_privs for every container (--no-new-privileges)",
        ),
    ] {
        assert_eq!(err(&with(sec), &host(&f)), want);
    }
    let cfg = Config { no_new_privileges: false, ..Default::default() };
    let s = translate(&launch("true"), &cfg, &host(&f)).unwrap().spec;
    assert_eq!(s.process().as_ref().unwrap().no_new_privileges(), Some(false));
    let req = with(SecurityOptions { no_new_privileges: Some(true), ..Default::default() });
    let s = translate(&req, &cfg, &host(&f)).unwrap().spec;
    assert_eq!(s.process().as_ref().unwrap().no_new_privileges(), Some(true));
}

#[test]
fn sysctls_only_in_namespaces_of_the_containers_own() {
    let f = fixture();
    let with = |pairs: &[(&str, &str)], network: bool| {
        let mut req = LaunchRequest {
            security: Some(SecurityOptions {
                sysctls: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
            ..launch("true")
        };
        if network {
            let mut info = mesos_info();
            info.network_infos = vec![NetworkInfo { name: Some("net".into()), ..Default::default() }];
            req.container = Some(info);
        }
        req
    };
    let s = spec(&with(&[("kernel.shmmax", "1000000"), ("net.ipv4.ip_forward", "1")], true), &host(&f));
    let sysctl = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
    assert_eq!(sysctl.get("kernel.shmmax").map(String::as_str), Some("1000000"));
    assert_eq!(sysctl.get("net.ipv4.ip_forward").map(String::as_str), Some("1"));

    for (pairs, network, want) in [
        (
            &[("net.ipv4.ip_forward", "1")][..],
            false,
            "security.sysctls[net.ipv4.ip_forward]: the container shares that namespace with the host, so it would change the host",
        ),
        (
            &[("kernel.pid_max", "10")][..],
            true,
            "security.sysctls[kernel.pid_max]: is not scoped by a namespace of the container's own (only IPC, net.* and UTS sysctls are); it would change the host",
        ),
        (
            &[("net.ipv4/../../x", "1")][..],
            true,
            "security.sysctls: `net.ipv4/../../x` is not a sysctl name (dot-separated parts of letters, digits, `_` and `-`)",
        ),
        (&[("net..x", "1")][..], true, "security.sysctls: `net..x` is not a sysctl name (dot-separated parts of letters, digits, `_` and `-`)"),
    ] {
        assert_eq!(err(&with(pairs, network), &host(&f)), want);
    }
}

#[test]
fn a_seccomp_profile_file_on_the_node() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[]}"#).unwrap();
    let with = |path: &str| LaunchRequest {
        security: Some(SecurityOptions { seccomp_profile_path: Some(path.into()), ..Default::default() }),
        ..launch("true")
    };
    let s = spec(&with(file.to_str().unwrap()), &host(&f));
    assert_eq!(serde_json::to_value(s.linux().as_ref().unwrap().seccomp()).unwrap()["defaultAction"], "SCMP_ACT_LOG");
    assert_eq!(err(&with("p.json"), &host(&f)), "security.seccomp_profile_path: `p.json` must be an absolute path");
    let missing = dir.path().join("none.json");
    assert!(err(&with(missing.to_str().unwrap()), &host(&f)).starts_with("security.seccomp_profile_path: "));
    std::fs::write(&file, "not json").unwrap();
    assert!(err(&with(file.to_str().unwrap()), &host(&f)).contains("is not an OCI seccomp profile"));
    let mut req = with(file.to_str().unwrap());
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo {
        seccomp: Some(SeccompInfo { unconfined: Some(true), profile_name: None }),
        ..Default::default()
    });
    req.container = Some(info);
    assert_eq!(err(&req, &host(&f)), "security.seccomp_profile_path: set either it or container.linux_info.seccomp");
}

#[test]
fn user_is_resolved_in_the_rootfs() {
    let f = fixture();
    let mut req = launch("id");
    req.command.as_mut().unwrap().user = Some("app".into());
    let s = spec(&req, &image_place(&f));
    let u = s.process().as_ref().unwrap().user();
    assert_eq!((u.uid(), u.gid()), (1000, 1000));
    assert_eq!(u.additional_gids().as_deref(), Some(&[44][..]));
    req.command.as_mut().unwrap().user = Some("4000:4000".into());
    let s = spec(&req, &image_place(&f));
    assert_eq!(s.process().as_ref().unwrap().user().uid(), 4000);
    req.command.as_mut().unwrap().user = Some("nosuchuser".into());
    assert_eq!(err(&req, &image_place(&f)), "command.user: no user `nosuchuser` in the container's /etc/passwd");
}

#[test]
fn environment_precedence_and_default_path() {
    let f = fixture();
    let mut req = launch("env");
    let var = |n: &str, v: &str| environment::Variable { name: n.into(), value: Some(v.into()), ..Default::default() };
    req.command.as_mut().unwrap().environment =
        Some(Environment { variables: vec![var("A", "user"), var("MESOS_SANDBOX", "/mine"), var("B", "b")] });
    let place =
        Placement { agent_environment: vec![("A".into(), "agent".into()), ("C".into(), "agent".into())], ..host(&f) };
    let s = spec(&req, &place);
    let env = env_of(&s);
    assert_eq!(env["A"], "user", "user variables win over the agent's");
    assert_eq!(env["C"], "agent");
    assert_eq!(env["MESOS_SANDBOX"], "/mine", "and over MESOS_SANDBOX");
    assert_eq!(env["PATH"], husk_oci::config::DEFAULT_PATH);
    req.command.as_mut().unwrap().environment = Some(Environment { variables: vec![var("PATH", "/x")] });
    assert_eq!(env_of(&spec(&req, &host(&f)))["PATH"], "/x");
}

#[test]
fn rlimits_map_to_posix_rlimits() {
    let f = fixture();
    let mut req = launch("true");
    let mut info = mesos_info();
    use r_limit_info::{r_limit::Type, RLimit};
    info.rlimit_info = Some(RLimitInfo {
        rlimits: vec![
            RLimit { r#type: Some(Type::RlmtNofile as i32), soft: Some(100), hard: Some(200) },
            RLimit { r#type: Some(Type::RlmtCore as i32), soft: None, hard: None },
        ],
    });
    req.container = Some(info);
    let s = spec(&req, &host(&f));
    let r = serde_json::to_value(s.process().as_ref().unwrap().rlimits()).unwrap();
    assert_eq!(r[0]["type"], "RLIMIT_NOFILE");
    assert_eq!((r[0]["soft"].as_u64(), r[0]["hard"].as_u64()), (Some(100), Some(200)));
    assert_eq!(r[1]["type"], "RLIMIT_CORE");
    assert_eq!(r[1]["soft"].as_u64(), Some(u64::MAX), "unset bounds mean unlimited");
}

#[test]
fn hostname_terminal_and_annotations() {
    let f = fixture();
    assert_eq!(spec(&launch("true"), &host(&f)).hostname(), &None, "no hostname unless asked for");
    let mut req = launch("true");
    let mut info = mesos_info();
    info.hostname = Some("web-1".into());
    info.tty_info =
        Some(TtyInfo { window_size: Some(husk_proto::mesos::v1::tty_info::WindowSize { rows: 40, columns: 120 }) });
    req.container = Some(info.clone());
    let s = spec(&req, &host(&f));
    assert_eq!(s.hostname().as_deref(), Some("web-1"));
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.console_size().unwrap().height(), 40);
    assert_eq!(s.annotations().as_ref().unwrap()[husk_oci::ANNOTATION_CONTAINER_ID], "c1");
    assert_eq!(p.no_new_privileges(), Some(true));
    info.hostname = Some("bad_host".into());
    req.container = Some(info);
    assert!(err(&req, &host(&f)).starts_with("container.hostname:"));
}

fn host_volume(container_path: &str, host: &str, mode: volume::Mode) -> Volume {
    Volume {
        mode: mode as i32,
        container_path: container_path.into(),
        source: Some(volume::Source {
            r#type: Some(volume::source::Type::HostPath as i32),
            host_path: Some(volume::source::HostPath { path: host.into(), mount_propagation: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sandbox_volume(container_path: &str, path: &str, ty: volume::source::sandbox_path::Type) -> Volume {
    Volume {
        mode: volume::Mode::Rw as i32,
        container_path: container_path.into(),
        source: Some(volume::Source {
            r#type: Some(volume::source::Type::SandboxPath as i32),
            sandbox_path: Some(volume::source::SandboxPath { r#type: Some(ty as i32), path: path.into() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_volumes(vols: Vec<Volume>) -> LaunchRequest {
    let mut req = launch("true");
    let mut info = mesos_info();
    info.volumes = vols;
    req.container = Some(info);
    req
}

#[test]
fn host_path_volumes() {
    let f = fixture();
    let data = f.rootfs.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();
    let req = with_volumes(vec![
        host_volume("/data", data.to_str().unwrap(), volume::Mode::Ro),
        host_volume("cache", data.to_str().unwrap(), volume::Mode::Rw),
    ]);
    let s = spec(&req, &image_place(&f));
    let m = mount_at(&s, "/data").unwrap();
    assert_eq!(m.options().as_ref().unwrap(), &["rbind", "rslave", "ro", "rro"]);
    assert!(mount_at(&s, "/mnt/mesos/sandbox/cache").is_some(), "relative paths are under the sandbox");

    let mut v = host_volume("/data", data.to_str().unwrap(), volume::Mode::Rw);
    v.source.as_mut().unwrap().host_path.as_mut().unwrap().mount_propagation =
        Some(MountPropagation { mode: Some(mount_propagation::Mode::Bidirectional as i32) });
    let s = spec(&with_volumes(vec![v]), &image_place(&f));
    assert_eq!(mount_at(&s, "/data").unwrap().options().as_ref().unwrap(), &["rbind", "rshared", "rw"]);
}

#[test]
fn volume_errors() {
    let f = fixture();
    let cases: Vec<(Volume, &str)> = vec![
        (
            host_volume("/data", "/nonexistent-husk-path", volume::Mode::Rw),
            "container.volumes[0].source.host_path.path: `/nonexistent-husk-path`",
        ),
        (host_volume("/data", "relative/dir", volume::Mode::Rw), "must be an absolute path"),
        (host_volume("/data", "/tmp/../etc", volume::Mode::Rw), "must not contain `..`"),
        (
            host_volume("/a/../b", "/tmp", volume::Mode::Rw),
            "container.volumes[0].container_path: `/a/../b` must not contain `..`",
        ),
        (host_volume("", "/tmp", volume::Mode::Rw), "container.volumes[0].container_path: must not be empty"),
        (host_volume("/", "/tmp", volume::Mode::Rw), "cannot be mounted over `/`"),
        (host_volume("/proc/sys", "/tmp", volume::Mode::Rw), "would cover the container's /proc"),
        (host_volume("/sys", "/tmp", volume::Mode::Rw), "would cover the container's /sys"),
        (sandbox_volume("/x", "/abs", volume::source::sandbox_path::Type::Self_), "must be relative to the sandbox"),
        (sandbox_volume("/x", "a/../../b", volume::source::sandbox_path::Type::Self_), "must not contain `..`"),
        (sandbox_volume("/x", "a", volume::source::sandbox_path::Type::Parent), "PARENT needs a nested container"),
    ];
    for (v, expected) in cases {
        let e = err(&with_volumes(vec![v]), &image_place(&f));
        assert!(e.contains(expected), "{e:?} should contain {expected:?}");
    }
    let mut v = host_volume("/x", "/tmp", volume::Mode::Rw);
    v.mode = 9;
    assert!(err(&with_volumes(vec![v]), &image_place(&f)).contains("mode: must be RW or RO"));
    let v = Volume { mode: 1, container_path: "/x".into(), ..Default::default() };
    assert!(err(&with_volumes(vec![v]), &image_place(&f)).contains("source: is required"));
    let mut v = host_volume("/x", "/tmp", volume::Mode::Rw);
    v.source.as_mut().unwrap().r#type = Some(volume::source::Type::Secret as i32);
    assert!(err(&with_volumes(vec![v]), &image_place(&f)).contains("SECRET is not supported"));
    // A host-rootfs container mounts only on paths that already exist on the host.
    let e = err(&with_volumes(vec![host_volume("/husk-no-such-dir", "/tmp", volume::Mode::Rw)]), &host(&f));
    assert!(e.contains("does not exist on the host"), "{e}");
}

#[test]
fn sandbox_path_volume_symlink_stays_in_the_sandbox() {
    let f = fixture();
    std::os::unix::fs::symlink("/etc", f.sandbox.join("escape")).unwrap();
    let t = translate(
        &with_volumes(vec![sandbox_volume("/shared", "escape/x", volume::source::sandbox_path::Type::Self_)]),
        &Config::default(),
        &image_place(&f),
    )
    .unwrap();
    let m = mount_at(&t.spec, "/shared").unwrap();
    assert_eq!(m.source().as_ref().unwrap(), &f.sandbox.join("etc/x"), "the link resolves inside the sandbox");
    assert_eq!(t.sandbox_dirs, vec![(f.sandbox.clone(), PathBuf::from("etc/x"))]);
}

#[test]
fn nested_container_joins_its_parent() {
    let f = fixture();
    let parent_sandbox = f.sandbox.clone();
    let child_sandbox = f.sandbox.join("containers/child");
    std::fs::create_dir_all(&child_sandbox).unwrap();
    let mut req = with_volumes(vec![sandbox_volume("shared", "data", volume::source::sandbox_path::Type::Parent)]);
    req.container_id = ContainerId { value: "child".into(), parent: Some(Box::new(id("pod"))) };
    let place = Placement {
        sandbox_dir: child_sandbox.clone(),
        parent: Some(ParentContext {
            sandbox_dir: parent_sandbox.clone(),
            net_ns: "/proc/42/ns/net".into(),
            uts_ns: "/proc/42/ns/uts".into(),
            pid_ns: "/proc/42/ns/pid".into(),
            ipc_ns: "/proc/42/ns/ipc".into(),
            cgroups_path: "/husk/pod".into(),
            privileged: false,
        }),
        ..Default::default()
    };
    let s = spec(&req, &place);
    let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
    let path_of = |t: LinuxNamespaceType| ns.iter().find(|n| n.typ() == t).and_then(|n| n.path().clone());
    assert_eq!(path_of(LinuxNamespaceType::Network), Some("/proc/42/ns/net".into()));
    assert_eq!(path_of(LinuxNamespaceType::Uts), Some("/proc/42/ns/uts".into()));
    assert_eq!(path_of(LinuxNamespaceType::Pid), None, "own pid namespace unless share_pid_namespace");
    assert_eq!(
        s.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new("/husk/pod/child")),
        "a cgroup of its own below the parent's: deleting it never kills the parent"
    );
    assert!(resources_of(&s).memory().is_none(), "no limits of its own with share_cgroups");
    assert_eq!(path_of(LinuxNamespaceType::Ipc), Some("/proc/42/ns/ipc".into()), "nested: the parent's IPC by default");
    assert_eq!(
        mount_at(&s, &format!("{}/shared", child_sandbox.display())).unwrap().source().as_ref().unwrap(),
        &parent_sandbox.join("data")
    );
    assert_eq!(s.annotations().as_ref().unwrap()[husk_oci::ANNOTATION_CONTAINER_ID], "pod.child");

    // share_cgroups=false gives the child its own cgroup under the parent's.
    let mut info = req.container.clone().unwrap();
    info.linux_info = Some(LinuxInfo {
        share_cgroups: Some(false),
        share_pid_namespace: Some(true),
        ipc_mode: Some(linux_info::IpcMode::ShareParent as i32),
        ..Default::default()
    });
    req.container = Some(info);
    let s = spec(&req, &place);
    assert_eq!(s.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/husk/pod/child")));
    let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
    assert_eq!(
        ns.iter().find(|n| n.typ() == LinuxNamespaceType::Pid).unwrap().path().as_deref(),
        Some(Path::new("/proc/42/ns/pid"))
    );
    let ipc = ns.iter().find(|n| n.typ() == LinuxNamespaceType::Ipc).unwrap();
    assert_eq!(ipc.path().as_deref(), Some(Path::new("/proc/42/ns/ipc")));
    let shm = mount_at(&s, "/dev/shm").unwrap();
    assert_eq!(
        shm.typ().as_deref(),
        Some("tmpfs"),
        "a /dev/shm of its own: the parent's lives in the parent's mount namespace, which cannot be bound"
    );

    // Without the parent's context, a nested launch is refused.
    assert!(err(&req, &host(&f)).starts_with("container_id.parent:"));
}

#[test]
fn request_level_errors_name_the_field() {
    let f = fixture();
    let place = host(&f);
    let mut req = launch("true");
    req.container_id = id("a.b");
    assert!(err(&req, &place).starts_with("container_id.value: `a.b` contains `.`"));

    let mut req = launch("true");
    req.command = None;
    assert_eq!(err(&req, &place), "command: is required");

    let mut req = launch("true");
    req.container = Some(ContainerInfo { r#type: container_info::Type::Docker as i32, ..Default::default() });
    assert!(err(&req, &place).starts_with("container.type: DOCKER (the Docker containerizer)"));

    let mut req = launch("true");
    req.resources = vec![scalar("cpus", -1.0)];
    assert_eq!(err(&req, &place), "resources[0] (cpus): must not be negative (got -1)");

    let mut req = launch("true");
    req.resources = vec![scalar("mem", f64::NAN)];
    assert!(err(&req, &place).contains("NaN"));

    let mut req = launch("true");
    req.limits = HashMap::from([("mem".into(), value::Scalar { value: -5.0 })]);
    assert!(err(&req, &place).starts_with("limits[\"mem\"]"));

    let mut req = launch("true");
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo { share_cgroups: Some(false), ..Default::default() });
    req.container = Some(info);
    assert!(
        err(&req, &place).starts_with("container.linux_info.share_cgroups: cannot be false for a top-level container")
    );

    let mut req = launch("true");
    let mut info = mesos_info();
    info.mesos = Some(container_info::MesosInfo {
        image: Some(Image {
            r#type: image::Type::Docker as i32,
            docker: Some(image::Docker { name: "busybox".into(), ..Default::default() }),
            ..Default::default()
        }),
    });
    req.container = Some(info);
    assert!(
        err(&req, &place).starts_with("container.mesos.image: an image without a provisioned rootfs is not supported")
    );

    let mut req = launch("true");
    let mut info = mesos_info();
    info.network_infos = vec![NetworkInfo { name: Some("a/b".into()), ..Default::default() }];
    req.container = Some(info);
    assert!(err(&req, &place).starts_with("container.network_infos[0].name"));

    let req = launch("true");
    let missing = Placement { sandbox_dir: "/nonexistent-husk-sandbox".into(), ..Default::default() };
    assert!(err(&req, &missing).starts_with("sandbox:"));
    let rel = Placement { sandbox_dir: f.sandbox.clone(), rootfs: Some("rel/rootfs".into()), ..Default::default() };
    assert!(err(&req, &rel).starts_with("rootfs: `rel/rootfs` must be an absolute path"));
}

#[test]
fn uri_fields_are_validated_at_launch() {
    let f = fixture();
    let mut req = launch("true");
    req.command.as_mut().unwrap().uris = vec![command_info::Uri { value: String::new(), ..Default::default() }];
    assert_eq!(err(&req, &host(&f)), "command.uris[0].value: must not be empty");
}

#[test]
fn bundle_is_written_atomically_and_reads_back() {
    let f = fixture();
    let t = translate(&launch("true"), &Config::default(), &image_place(&f)).unwrap();
    let bundle = f.sandbox.parent().unwrap().join("bundle");
    t.write_bundle(&bundle).unwrap();
    let back = husk_oci::bundle::read_spec(&bundle).unwrap();
    assert_eq!(back, t.spec);
    let entries: Vec<_> = std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("config.json")]);

    let t = translate(&launch("true"), &Config::default(), &host(&f)).unwrap();
    let bundle = f.sandbox.parent().unwrap().join("host-bundle");
    t.write_bundle(&bundle).unwrap();
    assert!(bundle.join("rootfs").is_dir(), "a host-rootfs bundle has its mount point");
}

#[test]
fn privileged_containers() {
    let f = fixture();
    let privileged = |sec: SecurityOptions| LaunchRequest {
        security: Some(SecurityOptions { privileged: Some(true), ..sec }),
        ..launch("true")
    };
    let allowed = Config { allow_privileged: true, ..Default::default() };

    // Only an agent that allows it.
    assert_eq!(
        err(&privileged(Default::default()), &host(&f)),
        "security.privileged: is not allowed by this agent (see --allow-privileged)"
    );

    let s = translate(&privileged(Default::default()), &allowed, &image_place(&f)).unwrap().spec;
    let process = s.process().as_ref().unwrap();
    let caps = process.capabilities().as_ref().unwrap();
    let n = husk_oci::caps::current().unwrap().len();
    assert!(n >= husk_oci::caps::DEFAULT_ALLOWED.len());
    assert_eq!(caps.bounding().as_ref().unwrap().len(), n, "every capability the agent holds");
    assert_eq!(caps.effective().as_ref().unwrap().len(), n);
    assert_eq!(caps.permitted().as_ref().unwrap().len(), n);
    assert!(caps.inheritable().as_ref().unwrap().is_empty(), "none inheritable (CVE-2022-24769)");
    assert!(caps.ambient().as_ref().unwrap().is_empty());
    assert_eq!(process.no_new_privileges(), Some(false), "the agent's no_new_privs is lifted");
    let linux = s.linux().as_ref().unwrap();
    assert!(linux.seccomp().is_none(), "no default seccomp profile");
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].typ() == Some(oci_spec::runtime::LinuxDeviceType::A));
    let devices = linux.devices().as_ref().unwrap();
    let null = devices.iter().find(|d| d.path() == Path::new("/dev/null")).expect("the host's /dev/null");
    assert_eq!((null.major(), null.minor()), (1, 3));
    assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts") && d.path() != Path::new("/dev/console")));
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let opts = mount_at(&s, dest).unwrap().options().as_ref().unwrap();
        assert!(!opts.iter().any(|o| o == "ro"), "{dest} is writable: {opts:?}");
    }
    // Without it, /sys is read-only.
    let s = spec(&launch("true"), &image_place(&f));
    assert!(mount_at(&s, "/sys").unwrap().options().as_ref().unwrap().iter().any(|o| o == "ro"));
    assert!(s.linux().as_ref().unwrap().devices().is_none());

    // Paths it lists are still masked; no_new_privs when it asks; a named profile applies.
    let sec = SecurityOptions {
        masked_paths: vec!["/proc/kcore".into()],
        no_new_privileges: Some(true),
        seccomp_profile_path: Some("/nonexistent/profile.json".into()),
        ..Default::default()
    };
    let e = translate(&privileged(sec.clone()), &allowed, &host(&f)).unwrap_err().to_string();
    assert!(e.starts_with("security.seccomp_profile_path: /nonexistent/profile.json"), "{e}");
    let s = translate(&privileged(SecurityOptions { seccomp_profile_path: None, ..sec }), &allowed, &host(&f))
        .unwrap()
        .spec;
    assert_eq!(s.linux().as_ref().unwrap().masked_paths().as_deref(), Some(&["/proc/kcore".to_string()][..]));
    assert_eq!(s.process().as_ref().unwrap().no_new_privileges(), Some(true));

    // Capability fields contradict it.
    let mut req = privileged(Default::default());
    let mut info = mesos_info();
    info.linux_info = Some(LinuxInfo {
        bounding_capabilities: Some(CapabilityInfo { capabilities: vec![Capability::Chown as i32] }),
        ..Default::default()
    });
    req.container = Some(info);
    assert_eq!(
        translate(&req, &allowed, &host(&f)).unwrap_err().to_string(),
        "container.linux_info.bounding_capabilities: a privileged container has every capability; leave it unset"
    );

    // A nested container only inside a privileged parent.
    let mut req = privileged(Default::default());
    req.container_id = ContainerId { value: "child".into(), parent: Some(Box::new(id("p"))) };
    let parent = |privileged| ParentContext {
        sandbox_dir: f.sandbox.clone(),
        net_ns: "/proc/42/ns/net".into(),
        uts_ns: "/proc/42/ns/uts".into(),
        pid_ns: "/proc/42/ns/pid".into(),
        ipc_ns: "/proc/42/ns/ipc".into(),
        cgroups_path: "/husk/p".into(),
        privileged,
    };
    let place = |privileged| Placement { parent: Some(parent(privileged)), ..host(&f) };
    assert!(translate(&req, &allowed, &place(false))
        .unwrap_err()
        .to_string()
        .starts_with("security.privileged: a nested container can be privileged only inside a privileged parent"));
    translate(&req, &allowed, &place(true)).unwrap();
}

#[test]
fn host_devices_lists_devices_not_links_or_private_dirs() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("pts")).unwrap();
    std::fs::create_dir_all(d.join("snd")).unwrap();
    mknod(&d.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    mknod(&d.join("snd/timer"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o660), makedev(116, 33)).unwrap();
    mknod(&d.join("loop7"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(7, 7)).unwrap();
    mknod(&d.join("pts/0"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o620), makedev(136, 0)).unwrap();
    mknod(&d.join("console"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(5, 1)).unwrap();
    std::os::unix::fs::symlink("null", d.join("link")).unwrap();
    std::fs::write(d.join("file"), "").unwrap();
    // Nothing under a mount point is looked at (it could be a hung network mount).
    std::fs::create_dir_all(d.join("mnt dir")).unwrap();
    nix::mount::mount(Some("tmpfs"), &d.join("mnt dir"), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
        .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(d.join("mnt dir"));
    mknod(&d.join("mnt dir/zero"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 5)).unwrap();
    // mknod honours the umask.
    for (name, mode) in [("null", 0o666), ("snd/timer", 0o660), ("loop7", 0o660)] {
        std::fs::set_permissions(d.join(name), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let got: Vec<_> = husk_oci::translate::host_devices(d)
        .unwrap()
        .into_iter()
        .map(|dev| {
            let rel = dev.path().strip_prefix(d).unwrap().display().to_string();
            (rel, dev.typ(), dev.major(), dev.minor(), dev.file_mode())
        })
        .collect();
    use oci_spec::runtime::LinuxDeviceType::{B, C};
    assert_eq!(
        got,
        [
            ("loop7".to_string(), B, 7, 7, Some(0o660)),
            ("null".to_string(), C, 1, 3, Some(0o666)),
            ("snd/timer".to_string(), C, 116, 33, Some(0o660)),
        ]
    );
}
