//! Isolators: the agent's extension seam, as in Mesos. The agent runs an ordered list of them
//! (`--isolation`); at prepare time each one contributes its part of the container's OCI spec,
//! and at destroy time each gets to clean up, in reverse order, every cleanup running even when
//! an earlier one failed.
//!
//! The launch is translated (and validated) whole by husk-oci; an isolator contributes by
//! carrying its part of that translation into the spec the container runs with. Leaving an
//! isolator out leaves its part at what a container gets without it, as in Mesos: no
//! `cgroups/mem` means no memory limit, no `namespaces/pid` the host's pid namespace, no
//! `linux/capabilities` the full capability set of root.
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxNamespaceType, Mount, MountBuilder, Spec};

/// Every isolator husk has, in the order they run by default.
pub const ALL: &[&str] = &[
    "filesystem/linux",
    "cgroups/cpu",
    "cgroups/mem",
    "cgroups/pids",
    "namespaces/pid",
    "namespaces/ipc",
    "linux/capabilities",
    "linux/seccomp",
    "linux/nnp",
    "posix/rlimits",
    "environment",
];

/// What a cleanup is given: where the container's pieces are.
pub struct Placed<'a> {
    pub id: &'a str,
    /// `<work dir>/containers/<id>`: bundle, sandbox, checkpoints.
    pub dir: &'a Path,
    /// The container's cgroup (the spec's `cgroupsPath`), when it has one.
    pub cgroups_path: Option<PathBuf>,
}

pub trait Isolator: Send + Sync {
    fn name(&self) -> &'static str;
    /// Carries this isolator's part of the translated spec `full` into `spec`.
    fn prepare(&self, full: &Spec, spec: &mut Spec) -> Result<(), String>;
    /// Releases what this isolator is responsible for once the container is gone; idempotent.
    fn cleanup(&self, _placed: &Placed) -> Result<(), String> {
        Ok(())
    }
}

/// Parses an `--isolation` list (comma-separated names, in the order to run them).
pub fn parse(list: &[String]) -> anyhow::Result<Vec<Box<dyn Isolator>>> {
    let mut out: Vec<Box<dyn Isolator>> = Vec::new();
    for name in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if out.iter().any(|i| i.name() == name) {
            anyhow::bail!("--isolation: `{name}` is listed twice");
        }
        out.push(match name {
            "filesystem/linux" => Box::new(Filesystem),
            "cgroups/cpu" => Box::new(Cgroups("cgroups/cpu")),
            "cgroups/mem" => Box::new(Cgroups("cgroups/mem")),
            "cgroups/pids" => Box::new(Cgroups("cgroups/pids")),
            "namespaces/pid" => Box::new(Namespace("namespaces/pid", LinuxNamespaceType::Pid)),
            "namespaces/ipc" => Box::new(Namespace("namespaces/ipc", LinuxNamespaceType::Ipc)),
            "linux/capabilities" => Box::new(Process("linux/capabilities")),
            "linux/seccomp" => Box::new(Process("linux/seccomp")),
            "linux/nnp" => Box::new(Process("linux/nnp")),
            "posix/rlimits" => Box::new(Process("posix/rlimits")),
            "environment" => Box::new(Process("environment")),
            other => anyhow::bail!("--isolation: unknown isolator `{other}` (known: {})", ALL.join(", ")),
        });
    }
    if !out.iter().any(|i| i.name() == "filesystem/linux") {
        anyhow::bail!("--isolation: `filesystem/linux` is required (it gives the container its root and sandbox)");
    }
    Ok(out)
}

/// The spec the container runs with: the translation's base (command, user, working directory,
/// hostname, network, cgroup path, devices) and every isolator's part, in order.
pub fn compose(isolators: &[Box<dyn Isolator>], full: &Spec) -> Result<Spec, String> {
    let mut spec = base(full);
    for i in isolators {
        i.prepare(full, &mut spec).map_err(|e| format!("{}: {e}", i.name()))?;
    }
    Ok(spec)
}

/// Runs every cleanup in reverse order; all run, and the failures are returned together.
pub fn cleanup(isolators: &[Box<dyn Isolator>], placed: &Placed) -> Result<(), String> {
    let failures: Vec<String> =
        isolators.iter().rev().filter_map(|i| i.cleanup(placed).err().map(|e| format!("{}: {e}", i.name()))).collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(failures.join("; ")),
    }
}

/// What a container is without any isolator: the translation less every isolator's part.
fn base(full: &Spec) -> Spec {
    let mut spec = full.clone();
    spec.set_mounts(Some(Vec::new()));
    if let Some(p) = spec.process_mut() {
        p.set_env(Some(
            full.process()
                .as_ref()
                .and_then(|p| p.env().clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|v| v.starts_with("PATH=") || v.starts_with("MESOS_SANDBOX="))
                .collect(),
        ));
        p.set_capabilities(Some(all_capabilities()));
        p.set_no_new_privileges(Some(false));
        p.set_rlimits(None);
    }
    if let Some(l) = spec.linux_mut() {
        l.set_seccomp(None);
        l.set_masked_paths(None);
        l.set_readonly_paths(None);
        if let Some(ns) = l.namespaces().clone() {
            l.set_namespaces(Some(
                ns.into_iter()
                    .filter(|n| !matches!(n.typ(), LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc))
                    .collect(),
            ));
        }
        if let Some(r) = l.resources_mut() {
            r.set_cpu(None);
            r.set_memory(None);
            r.set_pids(None);
        }
    }
    spec
}

/// Root's full capability set (the agent's bounding set): what a container has without `linux/capabilities`.
fn all_capabilities() -> LinuxCapabilities {
    // The agent's own bounding set: no container can have more, and naming a capability
    // outside it fails capset(2).
    let all: std::collections::HashSet<Capability> = caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| husk_oci::caps::to_oci(&c.to_string()).ok())
        .collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(all.clone()));
    c.set_effective(Some(all.clone()));
    c.set_permitted(Some(all));
    c.set_inheritable(None);
    c.set_ambient(None);
    c
}

/// `filesystem/linux`: the root, the mounts (host rootfs, /proc, /dev, /sys, the sandbox,
/// volumes), masked and read-only paths; cleanup detaches whatever is still mounted under the
/// container's directory.
struct Filesystem;

impl Isolator for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem/linux"
    }

    fn prepare(&self, full: &Spec, spec: &mut Spec) -> Result<(), String> {
        let ipc_isolated = spec_has_ns(spec, LinuxNamespaceType::Ipc) || !spec_has_ns(full, LinuxNamespaceType::Ipc);
        spec.set_mounts(full.mounts().clone());
        if !ipc_isolated {
            // Without namespaces/ipc (so far) the container shares the host's IPC namespace; a
            // later namespaces/ipc puts the private /dev/shm back.
            share_host_shm(spec)?;
        }
        if let (Some(l), Some(fl)) = (spec.linux_mut(), full.linux()) {
            l.set_masked_paths(fl.masked_paths().clone());
            l.set_readonly_paths(fl.readonly_paths().clone());
        }
        Ok(())
    }

    fn cleanup(&self, placed: &Placed) -> Result<(), String> {
        super::sweep::unmount_all_under(placed.dir).map(|_| ()).map_err(|e| e.to_string())
    }
}

fn spec_has_ns(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

/// Replaces a private /dev/shm (and /dev/mqueue) with the host's /dev/shm.
fn share_host_shm(spec: &mut Spec) -> Result<(), String> {
    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut out: Vec<Mount> = Vec::new();
    for m in mounts {
        let dest = m.destination().clone();
        if dest == Path::new("/dev/mqueue") {
            continue;
        }
        if dest == Path::new("/dev/shm") && m.typ().as_deref() == Some("tmpfs") {
            out.push(
                MountBuilder::default()
                    .destination("/dev/shm")
                    .typ("bind")
                    .source("/dev/shm")
                    .options(["rbind", "nosuid", "noexec", "nodev"].map(String::from).to_vec())
                    .build()
                    .map_err(|e| e.to_string())?,
            );
            continue;
        }
        out.push(m);
    }
    spec.set_mounts(Some(out));
    Ok(())
}

/// `cgroups/cpu`, `cgroups/mem`, `cgroups/pids`: the limits of one controller. Every container
/// has its cgroup whatever the list (it is how husk finds, counts and kills its processes);
/// cleanup removes it if the shim left it behind.
struct Cgroups(&'static str);

impl Isolator for Cgroups {
    fn name(&self) -> &'static str {
        self.0
    }

    fn prepare(&self, full: &Spec, spec: &mut Spec) -> Result<(), String> {
        let Some(fr) = full.linux().as_ref().and_then(|l| l.resources().clone()) else { return Ok(()) };
        let Some(r) = spec.linux_mut().as_mut().and_then(|l| l.resources_mut().as_mut()) else { return Ok(()) };
        match self.0 {
            "cgroups/cpu" => r.set_cpu(fr.cpu().clone()),
            "cgroups/mem" => r.set_memory(*fr.memory()),
            _ => r.set_pids(*fr.pids()),
        };
        Ok(())
    }

    fn cleanup(&self, placed: &Placed) -> Result<(), String> {
        use husk_shim::cgroups::{Cgroup, Layout};
        let Some(path) = &placed.cgroups_path else { return Ok(()) };
        let cg = Layout::detect().and_then(|l| Cgroup::new(l, path)).map_err(|e| e.to_string())?;
        if cg.dirs().iter().all(|d| !d.exists()) {
            return Ok(());
        }
        tracing::warn!(container = placed.id, cgroup = %path.display(), "removing a cgroup the shim left");
        cg.kill_all(Duration::from_secs(10)).and_then(|_| cg.remove(Duration::from_secs(10))).map_err(|e| e.to_string())
    }
}

/// `namespaces/pid`, `namespaces/ipc`: the container's own namespace of that kind (or its
/// parent's, for a nested container), as the launch asked.
struct Namespace(&'static str, LinuxNamespaceType);

impl Isolator for Namespace {
    fn name(&self) -> &'static str {
        self.0
    }

    fn prepare(&self, full: &Spec, spec: &mut Spec) -> Result<(), String> {
        let wanted: Vec<_> = full
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.typ() == self.1)
            .collect();
        if let Some(l) = spec.linux_mut() {
            let mut ns = l.namespaces().clone().unwrap_or_default();
            ns.retain(|n| n.typ() != self.1);
            ns.extend(wanted);
            l.set_namespaces(Some(ns));
        }
        if self.1 == LinuxNamespaceType::Ipc && spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
            // After filesystem/linux: its IPC mounts are the translation's again.
            let shm: Vec<Mount> = full
                .mounts()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.destination() == Path::new("/dev/shm") || m.destination() == Path::new("/dev/mqueue"))
                .collect();
            let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
            mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
            let at = mounts.iter().position(|m| m.destination().starts_with("/sys")).unwrap_or(mounts.len());
            mounts.splice(at..at, shm);
            spec.set_mounts(Some(mounts));
        }
        Ok(())
    }
}

/// The process-level isolators: capabilities, seccomp, no_new_privs, rlimits, environment.
struct Process(&'static str);

impl Isolator for Process {
    fn name(&self) -> &'static str {
        self.0
    }

    fn prepare(&self, full: &Spec, spec: &mut Spec) -> Result<(), String> {
        let (Some(fp), Some(p)) = (full.process().as_ref(), spec.process_mut().as_mut()) else { return Ok(()) };
        match self.0 {
            "linux/capabilities" => p.set_capabilities(fp.capabilities().clone()),
            "linux/nnp" => p.set_no_new_privileges(fp.no_new_privileges()),
            "posix/rlimits" => p.set_rlimits(fp.rlimits().clone()),
            "environment" => p.set_env(fp.env().clone()),
            _ => {
                let seccomp = full.linux().as_ref().and_then(|l| l.seccomp().clone());
                if let Some(l) = spec.linux_mut() {
                    l.set_seccomp(seccomp);
                }
                return Ok(());
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated() -> Spec {
        use husk_proto::mesos::v1::{CommandInfo, ContainerId};
        let req = husk_proto::agent::v1::LaunchRequest {
            container_id: ContainerId { value: "iso".into(), parent: None },
            command: Some(CommandInfo { value: Some("true".into()), ..Default::default() }),
            resources: vec![husk_oci::resources::scalar("mem", 64.0), husk_oci::resources::scalar("cpus", 0.5)],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let place = husk_oci::Placement { sandbox_dir: dir.path().to_path_buf(), ..Default::default() };
        husk_oci::translate(&req, &husk_oci::Config::default(), &place).unwrap().spec
    }

    fn all() -> Vec<Box<dyn Isolator>> {
        parse(&ALL.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn every_isolator_together_is_the_translation() {
        let full = translated();
        let composed = compose(&all(), &full).unwrap();
        let json = |s: &Spec| {
            let mut v = serde_json::to_value(s).unwrap();
            // Namespace order is not meaningful.
            if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
                ns.sort_by_key(|n| n["type"].as_str().unwrap_or_default().to_string());
            }
            v
        };
        assert_eq!(json(&composed), json(&full));
    }

    #[test]
    fn a_missing_isolator_leaves_its_part_out() {
        let full = translated();
        let list: Vec<String> =
            ["filesystem/linux", "cgroups/cpu", "namespaces/pid"].iter().map(|s| s.to_string()).collect();
        let spec = compose(&parse(&list).unwrap(), &full).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let r = linux.resources().as_ref().unwrap();
        assert!(r.memory().is_none() && r.pids().is_none() && r.cpu().is_some());
        assert!(spec_has_ns(&spec, LinuxNamespaceType::Pid) && !spec_has_ns(&spec, LinuxNamespaceType::Ipc));
        assert!(linux.seccomp().is_none());
        let shm = spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")), "the host's /dev/shm with its IPC");
        let p = spec.process().as_ref().unwrap();
        assert!(p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap().contains(&Capability::SysAdmin));
        assert_eq!(p.no_new_privileges(), Some(false));
    }

    #[test]
    fn the_list_is_checked() {
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = |l: &[&str]| parse(&names(l)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&["cgroups/cpu"]).contains("filesystem/linux` is required"));
        assert!(err(&["filesystem/linux", "network/cni"]).contains("unknown isolator `network/cni`"));
        assert!(err(&["filesystem/linux", "filesystem/linux"]).contains("listed twice"));
        assert!(err(&["filesystem/linux"]).is_empty());
    }

    struct Failing(&'static str, std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Isolator for Failing {
        fn name(&self) -> &'static str {
            self.0
        }
        fn prepare(&self, _: &Spec, _: &mut Spec) -> Result<(), String> {
            Ok(())
        }
        fn cleanup(&self, _: &Placed) -> Result<(), String> {
            self.1.lock().unwrap().push(self.0);
            if self.0 == "b" {
                return Err("cannot".into());
            }
            Ok(())
        }
    }

    #[test]
    fn cleanups_run_in_reverse_and_all_of_them() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let list: Vec<Box<dyn Isolator>> = vec![
            Box::new(Failing("a", log.clone())),
            Box::new(Failing("b", log.clone())),
            Box::new(Failing("c", log.clone())),
        ];
        let dir = tempfile::tempdir().unwrap();
        let err = cleanup(&list, &Placed { id: "x", dir: dir.path(), cgroups_path: None }).unwrap_err();
        assert_eq!(err, "b: cannot");
        assert_eq!(*log.lock().unwrap(), vec!["c", "b", "a"]);
    }
}
