//! Conformance: bundles written by husk-oci run unchanged under real runc and under
//! husk-runtime, and in both the container observes exactly what the launch asked for.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{busybox_rootfs, observations, run_with_deadline, CgroupRoot};
use husk_oci::resources::scalar;
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::{
    capability_info::Capability, container_info, environment, r_limit_info, value, volume, CapabilityInfo, CommandInfo,
    ContainerId, ContainerInfo, Environment, LinuxInfo, RLimitInfo, Volume,
};

/// Prints what the container sees as `key=value` lines; written for both busybox sh and dash.
const PROBE: &str = r#"
echo hostname=$(cat /proc/sys/kernel/hostname)
echo uid=$(id -u)
echo gid=$(id -g)
echo groups=$(id -G)
grep -E '^(CapEff|CapBnd|CapPrm|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
echo shares=$(cat /sys/fs/cgroup/cpu/cpu.shares)
echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
echo period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
echo pids=$(cat /sys/fs/cgroup/pids/pids.max)
echo nofile_soft=$(ulimit -n)
echo nofile_hard=$(ulimit -H -n)
echo pid=$$
echo nprocs=$(ls /proc | grep -c '^[0-9]')
echo cwd=$(pwd)
echo sandbox=$MESOS_SANDBOX
echo probe > "$MESOS_SANDBOX/probe" && echo sandbox_write=ok
echo volume=$(cat /data/hello)
(echo x > /data/new) 2>/dev/null && echo volume_write=yes || echo volume_write=no
(echo x > /data/sub/new) 2>/dev/null && echo submount_write=yes || echo submount_write=no
echo greeting=$GREETING
[ -c /proc/keys ] && echo keys=masked || echo keys=visible
echo fds=$(ls /proc/self/fd | tr '\n' ' ')
grep -E '^(SigIgn|SigBlk):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo proc_sys_ro=$( (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo no || echo yes)
"#;

struct Run {
    status: std::process::ExitStatus,
    seen: HashMap<String, String>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn succeeded(self) -> Self {
        assert!(
            self.status.success(),
            "runc run failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The runtimes every bundle runs under.
fn runtimes() -> [(&'static str, PathBuf); 2] {
    [("runc", PathBuf::from("runc")), ("husk", PathBuf::from(env!("CARGO_BIN_EXE_husk-runtime")))]
}

/// Translates `req`, writes the bundle, runs it under `runtime run` and returns what it printed,
/// after checking that the runtime left no cgroup, mount or state behind.
fn run_under(runtime: &Path, tag: &str, req: &LaunchRequest, place: &Placement, work: &Path) -> Run {
    let tag = format!("{tag}-{}", runtime.file_name().unwrap().to_string_lossy());
    let tag = tag.as_str();
    let work = &work.join(tag);
    std::fs::create_dir_all(work).unwrap();
    let cgroups = CgroupRoot::new(tag);
    let cfg = Config {
        cgroup_root: cgroups.name.clone(),
        default_pids_limit: Some(64),
        allow_privileged: true,
        ..Default::default()
    };
    let t = translate(req, &cfg, place).expect("translation");
    assert!(t.warnings.is_empty(), "unexpected warnings: {:?}", t.warnings);
    let bundle = work.join("bundle");
    t.write_bundle(&bundle).unwrap();
    let state = work.join("runc-state");
    let id = format!("husk-conformance-{tag}-{}", std::process::id());
    let out = run_with_deadline(
        Command::new(runtime).arg("--root").arg(&state).arg("run").arg("--bundle").arg(&bundle).arg(&id),
        Duration::from_secs(60),
    );
    // Whatever happened, nothing may stay behind.
    let _ = Command::new(runtime).arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    let states: Vec<_> =
        std::fs::read_dir(&state).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(states.is_empty(), "{} left state: {states:?}", runtime.display());
    let leaf_left: Vec<_> = cgroups.leftovers().into_iter().filter(|p| p.ends_with(&req.container_id.value)).collect();
    assert!(leaf_left.is_empty(), "runc left cgroups: {leaf_left:?}");
    drop(cgroups);
    let left: Vec<_> = common::mounts_under(work).into_iter().filter(|m| !m.ends_with("data/sub")).collect();
    assert!(left.is_empty(), "mounts left under {}: {left:?}", work.display());
    assert!(!out.timed_out, "runc run did not finish in time\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    Run { status: out.status, seen: observations(&out.stdout), stdout: out.stdout, stderr: out.stderr }
}

/// Unmounts a test's own mount when dropped.
struct MountGuard(std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A sandbox owned by `uid`, and a host directory holding `hello` with a tmpfs mounted at
/// `sub`, for the RO volume (read-only must reach its submounts too).
fn sandbox_and_volume(work: &Path, uid: u32, gid: u32) -> (std::path::PathBuf, std::path::PathBuf, MountGuard) {
    let sandbox = work.join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    chown(&sandbox, Some(uid), Some(gid)).unwrap();
    let data = work.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("hello"), "volume-content").unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0777", "tmpfs"]).arg(data.join("sub")).status();
    assert!(status.unwrap().success(), "mounting the test's tmpfs");
    let guard = MountGuard(data.join("sub"));
    (sandbox, data, guard)
}

fn cap_mask(caps: &[u32]) -> String {
    format!("{:016x}", caps.iter().fold(0u64, |m, c| m | (1 << c)))
}

fn base_launch(id: &str) -> LaunchRequest {
    LaunchRequest {
        container_id: ContainerId { value: id.into(), parent: None },
        command: Some(CommandInfo {
            value: Some(PROBE.into()),
            environment: Some(Environment {
                variables: vec![environment::Variable {
                    name: "GREETING".into(),
                    value: Some("hello husk".into()),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        resources: vec![scalar("cpus", 0.5), scalar("mem", 64.0)],
        limits: HashMap::from([("cpus".into(), value::Scalar { value: 1.0 })]),
        ..Default::default()
    }
}

fn container(volume_src: &Path, caps: &[Capability], hostname: &str) -> ContainerInfo {
    use r_limit_info::{r_limit::Type, RLimit};
    ContainerInfo {
        r#type: container_info::Type::Mesos as i32,
        hostname: Some(hostname.into()),
        volumes: vec![Volume {
            mode: volume::Mode::Ro as i32,
            container_path: "/data".into(),
            source: Some(volume::Source {
                r#type: Some(volume::source::Type::HostPath as i32),
                host_path: Some(volume::source::HostPath {
                    path: volume_src.display().to_string(),
                    mount_propagation: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        linux_info: Some(LinuxInfo {
            bounding_capabilities: Some(CapabilityInfo { capabilities: caps.iter().map(|c| *c as i32).collect() }),
            effective_capabilities: Some(CapabilityInfo { capabilities: caps.iter().map(|c| *c as i32).collect() }),
            ..Default::default()
        }),
        rlimit_info: Some(RLimitInfo {
            rlimits: vec![RLimit { r#type: Some(Type::RlmtNofile as i32), soft: Some(512), hard: Some(1024) }],
        }),
        ..Default::default()
    }
}

fn assert_common(seen: &HashMap<String, String>, stderr: &str) {
    let get =
        |k: &str| seen.get(k).map(String::as_str).unwrap_or_else(|| panic!("no `{k}` in {seen:?}\nstderr: {stderr}"));
    assert_eq!(get("mem"), (64u64 << 20).to_string(), "memory limit = mem request");
    assert_eq!(get("shares"), "512", "cpu.shares = 1024 × 0.5");
    assert_eq!(get("quota"), "100000", "CFS quota = 100 ms × limit 1");
    assert_eq!(get("period"), "100000");
    assert_eq!(get("pids"), "64");
    assert_eq!(get("nofile_soft"), "512");
    assert_eq!(get("nofile_hard"), "1024");
    assert_eq!(get("pid"), "1", "the command is pid 1 of its own pid namespace");
    let nprocs: u32 = get("nprocs").parse().unwrap();
    assert!(nprocs < 10, "the container sees only its own processes, saw {nprocs}");
    assert_eq!(get("sandbox_write"), "ok");
    assert_eq!(get("volume"), "volume-content");
    assert_eq!(get("volume_write"), "no", "an RO volume is read-only");
    assert_eq!(get("submount_write"), "no", "and so are its submounts");
    assert_eq!(get("greeting"), "hello husk");
    assert_eq!(get("NoNewPrivs"), "1");
    assert_eq!(get("proc_sys_ro"), "yes", "/proc/sys is read-only");
    assert_eq!(get("keys"), "masked", "/proc/keys is masked (/dev/null over it)");
    assert_eq!(get("fds"), "0 1 2 3", "only stdio (and ls's own directory) reach the command");
    let ignored = u64::from_str_radix(get("SigIgn"), 16).unwrap();
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE is not ignored (Rust's runtime ignores it)");
    assert_eq!(get("SigBlk"), "0000000000000000", "no blocked signals either");
}

/// Runs `req` under every runtime, checks each with `check`, and checks that husk-runtime and
/// runc showed the container the same things.
fn under_every_runtime(
    tag: &str,
    req: &LaunchRequest,
    place: &Placement,
    work: &Path,
    check: impl Fn(&str, &HashMap<String, String>, &str),
) {
    let mut seen_by = Vec::new();
    for (name, runtime) in runtimes() {
        let _ = std::fs::remove_file(place.sandbox_dir.join("probe"));
        let Run { seen, stderr, .. } = run_under(&runtime, tag, req, place, work).succeeded();
        assert_common(&seen, &stderr);
        check(name, &seen, &stderr);
        assert_eq!(
            std::fs::read_to_string(place.sandbox_dir.join("probe")).unwrap(),
            "probe\n",
            "{name}: the sandbox is the host's"
        );
        seen_by.push((name, seen));
    }
    let (runc, husk) = (&seen_by[0].1, &seen_by[1].1);
    for (k, v) in runc {
        // runc (Go) leaves signal 32 ignored; husk resets every disposition.
        if k != "nprocs" && k != "SigIgn" {
            assert_eq!(husk.get(k), Some(v), "husk-runtime and runc disagree on `{k}`");
        }
    }
}

#[test]
fn busybox_rootfs_bundle_runs_as_asked() {
    require!(true);
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let (sandbox, data, _submount) = sandbox_and_volume(work.path(), common::APP_UID, common::APP_GID);

    let mut req = base_launch("busybox");
    req.command.as_mut().unwrap().user = Some("app".into());
    req.container = Some(container(&data, &[Capability::NetBindService, Capability::Chown], "conformance"));
    let place = Placement { sandbox_dir: sandbox.clone(), rootfs: Some(rootfs), ..Default::default() };
    under_every_runtime("busybox", &req, &place, work.path(), |name, seen, _| {
        assert_eq!(seen["hostname"], "conformance", "{name}");
        assert_eq!(seen["uid"], "1000", "{name}");
        assert_eq!(seen["gid"], "1000", "{name}");
        let groups: Vec<&str> = seen["groups"].split_whitespace().collect();
        assert!(groups.contains(&"44"), "{name}: supplementary group from /etc/group: {groups:?}");
        let granted = cap_mask(&[0, 10]); // CAP_CHOWN, CAP_NET_BIND_SERVICE
        assert_eq!(seen["CapBnd"], granted, "{name}: bounding set is exactly what was asked");
        assert_eq!(seen["CapEff"], granted, "{name}: a non-root user keeps granted capabilities (ambient)");
        assert_eq!(seen["CapAmb"], granted, "{name}");
        assert_eq!(seen["cwd"], "/mnt/mesos/sandbox", "{name}");
        assert_eq!(seen["sandbox"], "/mnt/mesos/sandbox", "{name}");
    });
    assert!(!data.join("new").exists());
}

#[test]
fn host_rootfs_bundle_runs_as_asked() {
    require!(true);
    let work = tempfile::tempdir().unwrap();
    let (sandbox, data, _submount) = sandbox_and_volume(work.path(), 65534, 65534);
    let marker = work.path().join("host-marker");
    std::fs::write(&marker, "from the host").unwrap();

    let mut req = base_launch("hostfs");
    let cmd = req.command.as_mut().unwrap();
    cmd.user = Some("nobody".into());
    let probe = PROBE.replace("/data/", &format!("{}/", data.display()));
    cmd.value = Some(format!("{probe}\necho marker=$(cat {})", marker.display()));
    // Only KILL is left: every default capability but that one is dropped.
    let mut info = container(&data, &[Capability::Kill], "hostfs");
    // A host-rootfs container mounts volumes on paths that exist on the host.
    info.volumes[0].container_path = data.display().to_string();
    req.container = Some(info);
    let place = Placement { sandbox_dir: sandbox.clone(), ..Default::default() };
    under_every_runtime("hostfs", &req, &place, work.path(), |name, seen, _| {
        assert_eq!(seen["hostname"], "hostfs", "{name}");
        assert_eq!(seen["uid"], "65534", "{name}: `nobody` resolved from the host's /etc/passwd");
        assert_eq!(seen["marker"], "from the host", "{name}: the host filesystem is the container's root");
        assert_eq!(seen["CapBnd"], cap_mask(&[5]), "{name}");
        assert_eq!(seen["CapEff"], cap_mask(&[5]), "{name}");
        assert_eq!(seen["cwd"], sandbox.display().to_string(), "{name}: cwd is the host sandbox");
        assert_eq!(seen["sandbox"], sandbox.display().to_string(), "{name}");
    });
}

/// A work directory with a busybox rootfs and an empty sandbox, placed for a launch.
fn busybox_placement() -> (tempfile::TempDir, Placement) {
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let sandbox = work.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    (work, Placement { sandbox_dir: sandbox, rootfs: Some(rootfs), ..Default::default() })
}

#[test]
fn failing_command_exit_code_reaches_the_caller() {
    require!(true);
    let (work, place) = busybox_placement();
    for (script, code) in [("exit 42", 42), ("true", 0)] {
        let mut req = base_launch("exitcode");
        req.command.as_mut().unwrap().value = Some(script.into());
        for (name, runtime) in runtimes() {
            let run = run_under(&runtime, "exitcode", &req, &place, work.path());
            assert_eq!(run.status.code(), Some(code), "{name} `{script}`: stderr: {}", run.stderr);
        }
    }
}

#[test]
fn privileged_bundle_runs_alike_under_runc_and_husk() {
    require!(true);
    let (work, place) = busybox_placement();
    // A host device no container gets by default, to look for.
    let device = common::non_default_host_device();
    let mut req = base_launch("privileged");
    req.container = None;
    req.command.as_mut().unwrap().value = Some(format!(
        r#"grep -E '^(CapEff|CapBnd|CapInh|Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \t' | sed 's/:/=/'
echo devices=$(tr ' ' _ < /sys/fs/cgroup/devices/devices.list)
echo sys=$(grep ' /sys ' /proc/mounts | tail -1 | cut -d' ' -f4 | cut -d, -f1)
[ -c /proc/keys ] && echo keys=masked || echo keys=visible
echo proc_sys_ro=$( (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo no || echo yes)
echo device=$(stat -c %t:%T {})"#,
        device.path().display()
    ));
    req.security = Some(husk_proto::agent::v1::SecurityOptions { privileged: Some(true), ..Default::default() });
    let own_caps = common::own_effective_caps();
    let mut seen_by = Vec::new();
    for (name, runtime) in runtimes() {
        let Run { seen, .. } = run_under(&runtime, "privileged", &req, &place, work.path()).succeeded();
        assert_eq!(seen["CapEff"], own_caps, "{name}: every capability the caller holds");
        assert_eq!(seen["CapBnd"], own_caps, "{name}");
        assert_eq!(seen["CapInh"], "0000000000000000", "{name}");
        assert_eq!(seen["Seccomp"], "0", "{name}");
        assert_eq!(seen["NoNewPrivs"], "0", "{name}");
        assert_eq!(seen["devices"], "a_*:*_rwm", "{name}");
        assert_eq!(seen["sys"], "rw", "{name}");
        assert_eq!(seen["keys"], "visible", "{name}");
        assert_eq!(seen["proc_sys_ro"], "no", "{name}");
        assert_eq!(seen["device"], format!("{:x}:{:x}", device.major(), device.minor()), "{name}");
        seen_by.push(seen);
    }
    assert_eq!(seen_by[0], seen_by[1], "husk-runtime and runc agree");
}

/// A bundle as `runc spec` writes it (the starting point of most hand-made bundles) around a
/// busybox rootfs, its process running `script`; returns the bundle directory.
fn runc_spec_bundle(work: &Path, script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let bundle = work.join("bundle");
    busybox_rootfs(&bundle.join("rootfs"));
    let spec = Command::new("runc").arg("spec").current_dir(&bundle).output().unwrap();
    assert!(spec.status.success(), "runc spec: {}", String::from_utf8_lossy(&spec.stderr));
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

/// Runs `bundle` under `runtime` as container `id`, then deletes it whatever happened and
/// checks that its state and cgroup are gone.
fn run_bundle(name: &str, runtime: &Path, work: &Path, bundle: &Path, id: &str) -> common::Output {
    let state = work.join(format!("state-{name}"));
    let out = run_with_deadline(
        Command::new(runtime).arg("--root").arg(&state).arg("run").arg("--bundle").arg(bundle).arg(id),
        Duration::from_secs(60),
    );
    let _ = Command::new(runtime).arg("--root").arg(&state).args(["delete", "--force", id]).output();
    let states: Vec<_> =
        std::fs::read_dir(&state).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(states.is_empty(), "{name} left state: {states:?}");
    // Without a cgroupsPath runc puts the container at /<id>, husk at /husk-runtime/<id>; both
    // remove it (husk's parent stays, as a slice would).
    for cgroup in [id.to_string(), format!("husk-runtime/{id}")] {
        assert!(!Path::new("/sys/fs/cgroup/memory").join(&cgroup).exists(), "{name} left its cgroup {cgroup}");
    }
    out
}

/// Removes husk-runtime's default cgroup parent on drop when it did not exist before (a test
/// leaves the node as it found it).
struct DefaultParent(bool);

impl DefaultParent {
    fn new() -> Self {
        DefaultParent(Path::new("/sys/fs/cgroup/memory/husk-runtime").exists())
    }
}

impl Drop for DefaultParent {
    fn drop(&mut self) {
        if !self.0 {
            for h in common::cgroup_mounts() {
                let _ = std::fs::remove_dir(h.join("husk-runtime"));
            }
        }
    }
}

/// `runc spec`'s own default bundle, which users start from, runs under both runtimes and the
/// container gets the same credentials. Its ambient set names CAP_NET_BIND_SERVICE without the
/// inheritable set: the kernel cannot raise that, and neither runtime refuses the bundle for it.
/// Its device rules deny everything: both runtimes still allow the default devices.
#[test]
fn runc_spec_default_bundle_runs_alike() {
    require!(true);
    let _parent = DefaultParent::new();
    let work = tempfile::tempdir().unwrap();
    let script = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \\t' \
                  | sed 's/:/=/'; echo uid=$(id -u) hostname=$(hostname); echo x > /dev/null && echo devnull=ok";
    let bundle = runc_spec_bundle(work.path(), script, |config| {
        let ambient = &config["process"]["capabilities"]["ambient"];
        assert_eq!(ambient, &serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]));
        assert!(config["process"]["capabilities"].get("inheritable").is_none());
    });
    let mut seen_by = Vec::new();
    for (name, runtime) in runtimes() {
        let id = format!("husk-conformance-runc-spec-{name}-{}", std::process::id());
        let out = run_bundle(name, &runtime, work.path(), &bundle, &id);
        assert!(out.status.success(), "{name}: {}\n{}", out.stdout, out.stderr);
        let seen = observations(&out.stdout.replace(' ', "\n"));
        // Audit write, kill, net bind service: permitted and effective, none ambient.
        assert_eq!(seen["CapEff"], cap_mask(&[29, 5, 10]), "{name}");
        assert_eq!(seen["CapAmb"], "0000000000000000", "{name}");
        assert_eq!(seen["hostname"], "runc", "{name}");
        assert_eq!(seen["devnull"], "ok", "{name}: the spec denies every device; the defaults stay usable");
        seen_by.push(seen);
    }
    assert_eq!(seen_by[0], seen_by[1], "husk-runtime and runc agree");
    assert_eq!(common::mounts_under(work.path()), Vec::<String>::new());
}

/// An AppArmor profile or SELinux label the node cannot apply fails the container under both
/// runtimes, and nothing is left; husk-runtime says which field before forking anything.
#[test]
fn security_modules_the_node_lacks_fail_the_container() {
    require!(true);
    let cases = [
        (
            "apparmorProfile",
            "husk-test-none",
            husk_oci::lsm::apparmor_enabled(),
            "AppArmor is not enabled on this host",
        ),
        (
            "selinuxLabel",
            "system_u:system_r:container_t:s0",
            husk_oci::lsm::selinux_enabled(),
            "SELinux is not enabled on this host",
        ),
    ];
    for (field, value, enabled, why) in cases {
        if field == "selinuxLabel" && enabled {
            continue; // a real label on a host with SELinux: both may well run it
        }
        let work = tempfile::tempdir().unwrap();
        let bundle = runc_spec_bundle(work.path(), "echo ran", |config| config["process"][field] = value.into());
        for (name, runtime) in runtimes() {
            let id = format!("husk-conformance-lsm-{name}-{}", std::process::id());
            let out = run_bundle(name, &runtime, work.path(), &bundle, &id);
            assert!(!out.status.success(), "{name} ran a container with {field} {value}: {}", out.stdout);
            assert!(!out.stdout.contains("ran"), "{name}: {}", out.stdout);
            if name == "husk" && !enabled {
                assert!(
                    out.stderr.contains(&format!("process.{field}: ")) && out.stderr.contains(why),
                    "{}",
                    out.stderr
                );
            }
        }
        assert_eq!(common::mounts_under(work.path()), Vec::<String>::new());
    }
}

/// A container below a parent cgroup that does not allow what runc's implicit rules allow (a
/// pod holder made by an older husk: no mknod of every device) still starts: the rules the
/// parent refuses are left out, and the parent's policy holds in the child.
#[test]
fn implicit_device_rules_yield_to_the_parent() {
    require!(true);
    let devices = Path::new("/sys/fs/cgroup/devices");
    if !devices.is_dir() {
        eprintln!("no v1 devices hierarchy: nothing to check");
        return;
    }
    let parent = common::CgroupRoot::new("implicit-devices");
    let dir = devices.join(&parent.name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("devices.deny"), "a").unwrap();
    for rule in [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ] {
        std::fs::write(dir.join("devices.allow"), rule).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let id = format!("husk-conformance-implicit-{}", std::process::id());
    let cgroups_path = format!("/{}/{id}", parent.name);
    let script = "echo devices=$(tr ' ' _ < /sys/fs/cgroup/devices/devices.list | tr '\\n' ,); echo x > /dev/null && echo devnull=ok";
    let bundle =
        runc_spec_bundle(work.path(), script, |config| config["linux"]["cgroupsPath"] = cgroups_path.clone().into());
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk-runtime"));
    let state = work.path().join("state");
    let out = run_with_deadline(
        Command::new(&husk).arg("--root").arg(&state).arg("run").arg("--bundle").arg(&bundle).arg(&id),
        Duration::from_secs(60),
    );
    let _ = Command::new(&husk).arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let seen = observations(&out.stdout);
    assert_eq!(seen["devnull"], "ok");
    assert!(
        !seen["devices"].contains("*:*_m"),
        "mknod of every device is not granted below this parent: {}",
        seen["devices"]
    );
    assert!(!dir.join(&id).exists(), "the container's cgroup is gone");
}
