//! A Mesos-style launch → an OCI runtime spec.
//!
//! The translation plays the part of Mesos' isolators at `prepare` time: filesystem (root,
//! special mounts, sandbox, volumes), cgroups (cpu, memory, pids), namespaces, linux
//! (capabilities, seccomp, no_new_privs), rlimits and environment. It reads the node (host paths,
//! the rootfs' account databases) but changes nothing; [`Translation::write_bundle`] does.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use husk_proto::agent::v1::{LaunchRequest, SecurityOptions};
use husk_proto::mesos::v1::{
    linux_info, mount_propagation, r_limit_info, volume, CapabilityInfo, CommandInfo, ContainerInfo, LinuxInfo, Volume,
};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp, Mount,
    MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::caps::{self, CapSet};
use crate::config::{Config, Placement, DEFAULT_PATH};
use crate::error::{Error, Result};
use crate::fs::resolve_in_root;
use crate::resources::{self, Amounts, Limits};
use crate::user::{self, ResolvedUser};
use crate::validate::{self, display_id, no_nul, path_of};
use crate::{seccomp, ANNOTATION_ARGV0, ANNOTATION_CONTAINER_ID, ANNOTATION_SANDBOX};

/// The bundle-relative root of a host-filesystem container (`<bundle>/rootfs`).
pub const HOST_ROOTFS_DIR: &str = "rootfs";

/// Mesos' `MIN_MEMORY`: a memory limit is never set below 32 MB.
pub const MIN_MEMORY_MB: f64 = 32.0;
/// Mesos' `CPU_SHARES_PER_CPU` and `MIN_CPU_SHARES`.
pub const CPU_SHARES_PER_CPU: f64 = 1024.0;
pub const MIN_CPU_SHARES: u64 = 2;
/// Mesos' `CPU_CFS_PERIOD` (100 ms) and `MIN_CPU_CFS_QUOTA` (1 ms), in microseconds.
pub const CFS_PERIOD_US: u64 = 100_000;
pub const MIN_CFS_QUOTA_US: i64 = 1_000;
const MIB: f64 = 1024.0 * 1024.0;
/// Linux's NGROUPS_MAX.
const MAX_SUPPLEMENTAL_GROUPS: usize = 65536;

/// Default masked paths: hidden from the container (a file by /dev/null, a dir by an empty tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Default read-only paths.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Container paths no volume may cover: they would shadow the container's own /proc or /sys, or
/// the root itself.
const FORBIDDEN_VOLUME_TARGETS: &[&str] = &["/proc", "/sys"];

/// The result of a translation.
#[derive(Debug, Clone)]
pub struct Translation {
    pub spec: Spec,
    /// The user the command runs as.
    pub user: ResolvedUser,
    /// What the operator should know about requests husk adjusted (e.g. capabilities outside the
    /// allowed set, a memory request raised to the minimum).
    pub warnings: Vec<String>,
    /// Directories inside sandboxes that SANDBOX_PATH volumes mount and that must exist before
    /// the container starts, as (sandbox, path inside it); created by
    /// [`Translation::write_bundle`] without following links.
    pub sandbox_dirs: Vec<(PathBuf, PathBuf)>,
    /// The container runs on the host filesystem: the bundle needs its (empty) `rootfs`
    /// directory as the mount point of the host's `/`.
    pub host_rootfs: bool,
    /// The resource amounts the spec enforces.
    pub requests: Amounts,
    pub limits: Limits,
}

/// Translates a launch into an OCI runtime spec.
pub fn translate(req: &LaunchRequest, cfg: &Config, place: &Placement) -> Result<Translation> {
    validate::container_id(&req.container_id, "container_id")?;
    let cmd = req.command.as_ref().ok_or_else(|| Error::invalid("command", "is required"))?;
    validate::command(cmd, "command")?;
    resources::validate(&req.resources, "resources")?;
    let requests = Amounts::of(&req.resources);
    requests.check_totals("resources")?;
    let limits = resources::limits(&req.limits, &requests, "limits")?;
    let default_info =
        ContainerInfo { r#type: husk_proto::mesos::v1::container_info::Type::Mesos as i32, ..Default::default() };
    let info = req.container.as_ref().unwrap_or(&default_info);
    validate::container_type(info, "container")?;
    let nested = req.container_id.parent.is_some();
    if nested != place.parent.is_some() {
        // The agent places a container in its parent exactly when its id names one.
        return Err(Error::unsupported(
            "container_id.parent",
            match nested {
                true => "a nested container without its parent's context",
                false => "a top-level container placed inside a parent",
            },
        ));
    }
    let default_linux = LinuxInfo::default();
    let linux = info.linux_info.as_ref().unwrap_or(&default_linux);

    let default_security = SecurityOptions::default();
    let security = req.security.as_ref().unwrap_or(&default_security);
    let privileged = security.privileged();
    let mut t =
        Translator { cfg, place, info, linux, nested, privileged, warnings: Vec::new(), sandbox_dirs: Vec::new() };
    t.check_privileged()?;
    let rootfs = t.rootfs()?;
    let mut user = match cmd.user.as_deref() {
        Some(u) => user::resolve(rootfs_or_host(&rootfs), u, "command.user")?,
        None => ResolvedUser { uid: 0, gid: 0, additional_gids: Vec::new(), name: Some("root".into()), home: None },
    };
    let mut capabilities = match privileged {
        true => privileged_capabilities()?,
        false => t.capabilities(user.uid)?,
    };
    ambient_capabilities(&mut capabilities.oci, &security.ambient_capabilities)?;
    if security.supplemental_groups.len() > MAX_SUPPLEMENTAL_GROUPS {
        return Err(Error::invalid(
            "security.supplemental_groups",
            format!("{} groups (at most {MAX_SUPPLEMENTAL_GROUPS})", security.supplemental_groups.len()),
        ));
    }
    user.additional_gids.extend(security.supplemental_groups.iter().filter(|g| **g != user.gid));
    user.additional_gids.sort_unstable();
    user.additional_gids.dedup();
    let mut annotations = HashMap::from([
        (ANNOTATION_CONTAINER_ID.to_string(), display_id(&req.container_id)),
        (ANNOTATION_SANDBOX.to_string(), place.sandbox_dir.display().to_string()),
    ]);
    let args = process_args(cmd, &mut annotations);
    let sandbox = t.sandbox_in_container(&rootfs);
    let cwd = match req.working_dir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => working_dir(w, &rootfs)?,
        None => sandbox.clone(),
    };
    let mut process = ProcessBuilder::default()
        .args(args)
        .env(t.environment(cmd, &sandbox))
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(internal)?,
        )
        .capabilities(capabilities.oci)
        .no_new_privileges(no_new_privileges(security, cfg, privileged)?)
        .rlimits(t.rlimits()?)
        .terminal(info.tty_info.is_some())
        .build()
        .map_err(internal)?;
    if let Some(name) = security.apparmor_profile.as_deref() {
        process.set_apparmor_profile(crate::lsm::apparmor_profile(name, "security.apparmor_profile")?);
    }
    if let Some(size) = info.tty_info.as_ref().and_then(|t| t.window_size.as_ref()) {
        process.set_console_size(Some(console_size(size, "container.tty_info.window_size")?));
    }
    if let Some(adj) = security.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(Error::invalid("security.oom_score_adj", format!("{adj} is not within -1000 to 1000")));
        }
        process.set_oom_score_adj(Some(adj));
    }

    let mut hostname = None;
    if let Some(h) = info.hostname.as_deref() {
        validate::hostname(h, "container.hostname")?;
        if nested {
            return Err(Error::invalid("container.hostname", "a nested container shares its parent's hostname"));
        }
        hostname = Some(h.to_string());
    }

    let mut mounts = Vec::new();
    if rootfs.is_none() {
        // The host filesystem as the container's root: a recursive bind of `/` onto the bundle's
        // (empty) rootfs directory, made inside the container's mount namespace by the runtime.
        // pivot_root cannot enter `/` itself, and nothing is mounted on the host.
        mounts.push(
            MountBuilder::default()
                .destination("/")
                .typ("bind")
                .source("/")
                .options(vec!["rbind".to_string(), "rslave".to_string()])
                .build()
                .map_err(internal)?,
        );
    }
    mounts.extend(t.special_mounts()?);
    mounts.extend(t.sandbox_mount(&rootfs)?);
    mounts.extend(t.volumes(&rootfs)?);

    // A privileged container hides and protects only what its launch lists.
    let (masked, readonly) = match privileged {
        true => (&[][..], &[][..]),
        false => (MASKED_PATHS, READONLY_PATHS),
    };
    // rootfsPropagation stays unset: runtimes then make `/` recursively slave (runc, crun and
    // husk's own), and the schema's values only offer the non-recursive "slave".
    let mut linux = LinuxBuilder::default()
        .namespaces(t.namespaces()?)
        .cgroups_path(PathBuf::from(t.cgroups_path(req)?))
        .resources(t.resources(&requests, &limits)?)
        .masked_paths(container_paths(&security.masked_paths, masked, "security.masked_paths")?)
        .readonly_paths(container_paths(&security.readonly_paths, readonly, "security.readonly_paths")?)
        .build()
        .map_err(internal)?;
    if privileged {
        linux.set_devices(Some(host_devices(Path::new("/dev"))?));
    }
    if let Some(profile) = t.seccomp(&capabilities.bounding, security)? {
        linux.set_seccomp(Some(profile));
    }
    if !security.sysctls.is_empty() {
        linux.set_sysctl(Some(t.sysctls(&security.sysctls)?));
    }

    let builder = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs.clone().unwrap_or_else(|| PathBuf::from(HOST_ROOTFS_DIR)))
                .readonly(security.readonly_rootfs())
                .build()
                .map_err(internal)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations);
    // The builder fills unset fields from oci-spec's defaults, whose hostname is "youki": set it
    // (or its absence) explicitly. Without one the container keeps the host's name, as in Mesos.
    let mut spec = builder.build().map_err(internal)?;
    spec.set_hostname(hostname);
    Ok(Translation {
        spec,
        user,
        warnings: t.warnings,
        sandbox_dirs: t.sandbox_dirs,
        host_rootfs: rootfs.is_none(),
        requests,
        limits,
    })
}

/// A terminal's size as the runtime spec holds it; the kernel's are 16 bits each.
pub(crate) fn console_size(
    size: &husk_proto::mesos::v1::tty_info::WindowSize,
    field: &str,
) -> Result<oci_spec::runtime::Box> {
    if size.rows > u16::MAX as u32 || size.columns > u16::MAX as u32 {
        return Err(Error::invalid(field, "rows and columns must fit in 16 bits"));
    }
    oci_spec::runtime::BoxBuilder::default()
        .height(size.rows as u64)
        .width(size.columns as u64)
        .build()
        .map_err(internal)
}

fn internal(e: oci_spec::OciSpecError) -> Error {
    Error::invalid("spec", format!("internal error building the OCI spec: {e}"))
}

fn rootfs_or_host(rootfs: &Option<PathBuf>) -> &Path {
    rootfs.as_deref().unwrap_or(Path::new("/"))
}

/// `shell=true`: `/bin/sh -c value`. Otherwise `value` is the executable and `arguments` the
/// full argv (argv[0] included), as Mesos execs it. OCI has no separate executable field: the
/// executable takes argv[0]'s place, and the requested argv[0] is kept in an annotation for
/// runtimes that honor it.
pub(crate) fn process_args(cmd: &CommandInfo, annotations: &mut HashMap<String, String>) -> Vec<String> {
    let value = cmd.value().to_string();
    if cmd.shell() {
        return vec!["/bin/sh".into(), "-c".into(), value];
    }
    let mut args = vec![value.clone()];
    if let Some((argv0, rest)) = cmd.arguments.split_first() {
        if *argv0 != value {
            annotations.insert(ANNOTATION_ARGV0.to_string(), argv0.clone());
        }
        args.extend(rest.iter().cloned());
    }
    args
}

struct Capabilities {
    oci: LinuxCapabilities,
    bounding: CapSet,
}

struct Translator<'a> {
    cfg: &'a Config,
    place: &'a Placement,
    info: &'a ContainerInfo,
    linux: &'a LinuxInfo,
    nested: bool,
    privileged: bool,
    warnings: Vec<String>,
    sandbox_dirs: Vec<(PathBuf, PathBuf)>,
}

/// The requested working directory: absolute, without `..`; on the host filesystem it must be
/// an existing directory (husk creates nothing on the host), in a root filesystem the agent
/// creates it when missing.
fn working_dir(w: &str, rootfs: &Option<PathBuf>) -> Result<PathBuf> {
    const FIELD: &str = "working_dir";
    validate::volume_path(w, FIELD)?;
    if !w.starts_with('/') {
        return Err(Error::invalid(FIELD, format!("`{}` must be an absolute path", w.escape_debug())));
    }
    if rootfs.is_none() && !Path::new(w).is_dir() {
        return Err(Error::missing(FIELD, format!("`{}` is not a directory on the host", w.escape_debug())));
    }
    Ok(PathBuf::from(w))
}

impl Translator<'_> {
    fn rootfs(&self) -> Result<Option<PathBuf>> {
        let image = self.info.mesos.as_ref().and_then(|m| m.image.as_ref());
        if let Some(image) = image {
            use husk_proto::mesos::v1::image::Type;
            match image.r#type() {
                Type::Docker if image.docker.as_ref().is_some_and(|d| !d.name.is_empty()) => {}
                Type::Docker => {
                    return Err(Error::invalid("container.mesos.image.docker.name", "is required for a DOCKER image"))
                }
                Type::Appc => return Err(Error::unsupported("container.mesos.image.type", "APPC")),
            }
            if self.place.rootfs.is_none() {
                return Err(Error::unsupported("container.mesos.image", "an image without a provisioned rootfs"));
            }
        }
        match &self.place.rootfs {
            None => Ok(None),
            Some(root) => {
                if !root.is_absolute() {
                    return Err(Error::invalid("rootfs", format!("`{}` must be an absolute path", root.display())));
                }
                let meta = std::fs::metadata(root)
                    .map_err(|e| Error::missing("rootfs", format!("`{}`: {e}", root.display())))?;
                if !meta.is_dir() {
                    return Err(Error::invalid("rootfs", format!("`{}` is not a directory", root.display())));
                }
                Ok(Some(root.clone()))
            }
        }
    }

    /// Where the sandbox is inside the container: the sandbox mount point when the container has
    /// its own rootfs, else the host sandbox itself (Mesos' rule; also the working directory).
    fn sandbox_in_container(&self, rootfs: &Option<PathBuf>) -> PathBuf {
        match rootfs {
            Some(_) => self.cfg.sandbox_directory.clone(),
            None => self.place.sandbox_dir.clone(),
        }
    }

    /// Environment in Mesos' precedence: agent-supplied variables, then `MESOS_SANDBOX`, then the
    /// user's variables (which win); `PATH` defaulted.
    fn environment(&self, cmd: &CommandInfo, sandbox: &Path) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        let mut values: HashMap<String, String> = HashMap::new();
        {
            let mut set = |k: &str, v: &str| {
                if values.insert(k.to_string(), v.to_string()).is_none() {
                    order.push(k.to_string());
                }
            };
            for (k, v) in &self.place.agent_environment {
                set(k, v);
            }
            set("MESOS_SANDBOX", &sandbox.display().to_string());
            if let Some(env) = &cmd.environment {
                for var in &env.variables {
                    set(&var.name, var.value());
                }
            }
        }
        if !order.iter().any(|k| k == "PATH") {
            order.push("PATH".to_string());
            values.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        }
        order.into_iter().map(|k| format!("{k}={}", values[&k])).collect()
    }

    /// A privileged launch: allowed by the agent, inside a privileged parent, and without
    /// capability fields (it has every capability).
    fn check_privileged(&self) -> Result<()> {
        if !self.privileged {
            return Ok(());
        }
        let at = "security.privileged";
        if !self.cfg.allow_privileged {
            return Err(Error::invalid(at, "is not allowed by this agent (see --allow-privileged)"));
        }
        if self.place.parent.as_ref().is_some_and(|p| !p.privileged) {
            return Err(Error::invalid(
                at,
                "a nested container can be privileged only inside a privileged parent (its device cgroup \
                 bounds the child's)",
            ));
        }
        #[allow(deprecated)]
        let fields = [
            ("container.linux_info.capability_info", self.linux.capability_info.is_some()),
            ("container.linux_info.effective_capabilities", self.linux.effective_capabilities.is_some()),
            ("container.linux_info.bounding_capabilities", self.linux.bounding_capabilities.is_some()),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, set)| *set) {
            return Err(Error::invalid(*field, "a privileged container has every capability; leave it unset"));
        }
        Ok(())
    }

    fn capabilities(&mut self, uid: u32) -> Result<Capabilities> {
        #[allow(deprecated)]
        let legacy = self.linux.capability_info.as_ref();
        if legacy.is_some() && self.linux.effective_capabilities.is_some() {
            return Err(Error::invalid(
                "container.linux_info.capability_info",
                "is deprecated; set only `effective_capabilities`",
            ));
        }
        let effective_req = self.linux.effective_capabilities.as_ref().or(legacy);
        let field_e = if legacy.is_some() {
            "container.linux_info.capability_info"
        } else {
            "container.linux_info.effective_capabilities"
        };
        let effective_req = effective_req.map(|c| cap_set(c, field_e)).transpose()?;
        let bounding_req = self
            .linux
            .bounding_capabilities
            .as_ref()
            .map(|c| cap_set(c, "container.linux_info.bounding_capabilities"))
            .transpose()?;
        if let (Some(e), Some(b)) = (&effective_req, &bounding_req) {
            if let Some(extra) = e.difference(b).next() {
                return Err(Error::invalid(
                    "container.linux_info.effective_capabilities",
                    format!("{extra} is not in `bounding_capabilities`; effective capabilities must be a subset"),
                ));
            }
        }
        let allowed = &self.cfg.allowed_capabilities;
        let mut clamp = |set: CapSet, what: &str| -> CapSet {
            let dropped: Vec<_> = set.difference(allowed).cloned().collect();
            if !dropped.is_empty() {
                self.warnings
                    .push(format!("{what}: {} not in the agent's allowed capabilities, dropped", dropped.join(", ")));
            }
            set.intersection(allowed).cloned().collect()
        };
        let explicit = effective_req.is_some();
        let (effective, bounding) = match (effective_req, bounding_req) {
            (None, None) => (allowed.clone(), allowed.clone()),
            (Some(e), None) => {
                let e = clamp(e, "container.linux_info.effective_capabilities");
                (e.clone(), e)
            }
            (None, Some(b)) => {
                let b = clamp(b, "container.linux_info.bounding_capabilities");
                (b.clone(), b)
            }
            (Some(e), Some(b)) => (
                clamp(e, "container.linux_info.effective_capabilities"),
                clamp(b, "container.linux_info.bounding_capabilities"),
            ),
        };
        let to_oci = |set: &CapSet| -> Result<oci_spec::runtime::Capabilities> {
            set.iter()
                .map(|n| caps::to_oci(n).map_err(|e| Error::invalid("capabilities", format!("{n}: {e}"))))
                .collect()
        };
        // A non-root user keeps explicitly granted capabilities across exec only as ambient ones.
        let ambient = if explicit && uid != 0 { effective.clone() } else { CapSet::new() };
        let inheritable = if explicit { effective.clone() } else { CapSet::new() };
        let oci = LinuxCapabilitiesBuilder::default()
            .bounding(to_oci(&bounding)?)
            .effective(to_oci(&effective)?)
            .permitted(to_oci(&effective)?)
            .inheritable(to_oci(&inheritable)?)
            .ambient(to_oci(&ambient)?)
            .build()
            .map_err(internal)?;
        Ok(Capabilities { oci, bounding })
    }

    fn rlimits(&self) -> Result<Vec<PosixRlimit>> {
        let Some(info) = &self.info.rlimit_info else { return Ok(Vec::new()) };
        validate::rlimits(info, "container.rlimit_info")?;
        info.rlimits
            .iter()
            .map(|r| {
                use r_limit_info::r_limit::Type as T;
                let typ = match r.r#type() {
                    T::RlmtAs => PosixRlimitType::RlimitAs,
                    T::RlmtCore => PosixRlimitType::RlimitCore,
                    T::RlmtCpu => PosixRlimitType::RlimitCpu,
                    T::RlmtData => PosixRlimitType::RlimitData,
                    T::RlmtFsize => PosixRlimitType::RlimitFsize,
                    T::RlmtLocks => PosixRlimitType::RlimitLocks,
                    T::RlmtMemlock => PosixRlimitType::RlimitMemlock,
                    T::RlmtMsgqueue => PosixRlimitType::RlimitMsgqueue,
                    T::RlmtNice => PosixRlimitType::RlimitNice,
                    T::RlmtNofile => PosixRlimitType::RlimitNofile,
                    T::RlmtNproc => PosixRlimitType::RlimitNproc,
                    T::RlmtRss => PosixRlimitType::RlimitRss,
                    T::RlmtRtprio => PosixRlimitType::RlimitRtprio,
                    T::RlmtRttime => PosixRlimitType::RlimitRttime,
                    T::RlmtSigpending => PosixRlimitType::RlimitSigpending,
                    T::RlmtStack => PosixRlimitType::RlimitStack,
                    T::Unknown => unreachable!("validated above"),
                };
                // Neither bound set means unlimited (RLIM_INFINITY).
                let (soft, hard) = (r.soft.unwrap_or(u64::MAX), r.hard.unwrap_or(u64::MAX));
                PosixRlimitBuilder::default().typ(typ).soft(soft).hard(hard).build().map_err(internal)
            })
            .collect()
    }

    fn ipc_private(&self) -> Result<bool> {
        let mode = match self.linux.ipc_mode {
            // Mesos: a nested container without an ipc_mode shares its parent's.
            None if self.nested => linux_info::IpcMode::ShareParent,
            None => linux_info::IpcMode::Private,
            Some(v) => linux_info::IpcMode::try_from(v)
                .map_err(|_| Error::invalid("container.linux_info.ipc_mode", format!("unknown mode {v}")))?,
        };
        match mode {
            linux_info::IpcMode::Private => Ok(true),
            linux_info::IpcMode::ShareParent => {
                if self.linux.shm_size.is_some() {
                    return Err(Error::invalid(
                        "container.linux_info.shm_size",
                        "can only be set with ipc_mode PRIVATE (a shared IPC namespace shares /dev/shm)",
                    ));
                }
                if !self.nested && !self.cfg.allow_host_ipc_namespace {
                    return Err(Error::invalid(
                        "container.linux_info.ipc_mode",
                        "SHARE_PARENT would share the host's IPC namespace, which this agent does not allow \
                         (see --allow-host-ipc-namespace)",
                    ));
                }
                Ok(false)
            }
            linux_info::IpcMode::Unknown => {
                Err(Error::invalid("container.linux_info.ipc_mode", "must be PRIVATE or SHARE_PARENT"))
            }
        }
    }

    fn special_mounts(&self) -> Result<Vec<Mount>> {
        // A privileged container may write /sys and its own cgroups.
        let ro: &[&str] = if self.privileged { &[] } else { &["ro"] };
        let m = |dest: &str, typ: &str, source: &str, opts: &[&str]| -> Result<Mount> {
            MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(source)
                .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .build()
                .map_err(internal)
        };
        let mut mounts = vec![
            m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
            m("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
            m(
                "/dev/pts",
                "devpts",
                "devpts",
                &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            )?,
        ];
        // A nested container sharing its parent's IPC namespace shares its SysV IPC and message
        // queues; its parent's /dev/shm is a tmpfs inside the parent's mount namespace, which
        // the kernel does not let another namespace bind, so it gets a /dev/shm of its own.
        if self.ipc_private()? || self.place.parent.is_some() {
            let shm_mb = self.linux.shm_size.unwrap_or(self.cfg.default_shm_size_mb);
            if shm_mb == 0 {
                return Err(Error::invalid("container.linux_info.shm_size", "must be at least 1 (MB)"));
            }
            let size = format!("size={}k", u64::from(shm_mb) * 1024);
            mounts.push(m("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", &size])?);
            mounts.push(m("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?);
        } else {
            // The host's IPC namespace, and its /dev/shm.
            mounts.push(m("/dev/shm", "bind", "/dev/shm", &["rbind", "nosuid", "noexec", "nodev"])?);
        }
        if self.has_own_network()? {
            mounts.push(m("/sys", "sysfs", "sysfs", &[&["nosuid", "noexec", "nodev"], ro].concat())?);
        } else {
            // sysfs shows the network namespace that mounts it, and the kernel refuses a second
            // mount of the host's sysfs over itself (EBUSY on a host rootfs). Bind the host's
            // /sys instead, without its submounts (debugfs, securityfs, bpf, ...).
            mounts.push(m("/sys", "bind", "/sys", &[&["bind", "nosuid", "noexec", "nodev"], ro].concat())?);
        }
        let cgroup_opts = [&["nosuid", "noexec", "nodev", "relatime"], ro].concat();
        mounts.push(m("/sys/fs/cgroup", "cgroup", "cgroup", &cgroup_opts)?);
        Ok(mounts)
    }

    fn sandbox_mount(&self, rootfs: &Option<PathBuf>) -> Result<Option<Mount>> {
        let sandbox = &self.place.sandbox_dir;
        if !sandbox.is_absolute() {
            return Err(Error::invalid("sandbox", format!("`{}` must be an absolute path", sandbox.display())));
        }
        if !sandbox.is_dir() {
            return Err(Error::missing("sandbox", format!("`{}` is not a directory", sandbox.display())));
        }
        if rootfs.is_none() {
            // A host-rootfs container sees its sandbox where it is on the host.
            return Ok(None);
        }
        Ok(Some(
            MountBuilder::default()
                .destination(self.cfg.sandbox_directory.clone())
                .typ("bind")
                .source(sandbox.clone())
                .options(vec!["rbind".to_string(), "rw".to_string(), "rprivate".to_string()])
                .build()
                .map_err(internal)?,
        ))
    }

    fn volumes(&mut self, rootfs: &Option<PathBuf>) -> Result<Vec<Mount>> {
        let mut out = Vec::new();
        for (i, v) in self.info.volumes.iter().enumerate() {
            out.push(self.volume(v, &format!("container.volumes[{i}]"), rootfs)?);
        }
        Ok(out)
    }

    fn volume(&mut self, v: &Volume, field: &str, rootfs: &Option<PathBuf>) -> Result<Mount> {
        let mode =
            volume::Mode::try_from(v.mode).map_err(|_| Error::invalid(format!("{field}.mode"), "must be RW or RO"))?;
        let cpath_field = format!("{field}.container_path");
        validate::volume_path(&v.container_path, &cpath_field)?;
        let in_sandbox = self.sandbox_in_container(rootfs);
        let target = if v.container_path.starts_with('/') {
            PathBuf::from(&v.container_path)
        } else {
            in_sandbox.join(&v.container_path)
        };
        let normalized = Path::new(&target);
        if normalized.parent().is_none() {
            return Err(Error::invalid(&cpath_field, "a volume cannot be mounted over `/`"));
        }
        for forbidden in FORBIDDEN_VOLUME_TARGETS {
            if normalized.starts_with(forbidden) {
                return Err(Error::invalid(
                    &cpath_field,
                    format!("`{}` would cover the container's {forbidden}", v.container_path.escape_debug()),
                ));
            }
        }
        if rootfs.is_none() && v.container_path.starts_with('/') && !target.exists() {
            // A host-rootfs container's mount points are host paths: husk does not create them.
            return Err(Error::missing(
                &cpath_field,
                format!(
                    "`{}` does not exist on the host (a container without an image mounts volumes on existing paths)",
                    target.display()
                ),
            ));
        }

        let (source, propagation) = self.volume_source(v, field)?;
        let mut options = vec!["rbind".to_string(), propagation.to_string()];
        if mode == volume::Mode::Ro {
            // `ro` alone leaves the volume's submounts writable; `rro` makes the whole tree
            // read-only (mount_setattr, Linux 5.12; runc 1.1, crun 1.4 and husk's runtime).
            options.extend(["ro".to_string(), "rro".to_string()]);
        } else {
            options.push("rw".to_string());
        }
        MountBuilder::default()
            .destination(target)
            .typ("bind")
            .source(source)
            .options(options)
            .build()
            .map_err(internal)
    }

    fn volume_source(&mut self, v: &Volume, field: &str) -> Result<(PathBuf, &'static str)> {
        use volume::source::{sandbox_path, Type};
        if v.image.is_some() {
            return Err(Error::unsupported(format!("{field}.image"), "an image volume"));
        }
        let legacy = v.host_path.as_deref();
        let Some(source) = &v.source else {
            let Some(host) = legacy else {
                return Err(Error::invalid(format!("{field}.source"), "is required (or the legacy `host_path`)"));
            };
            return Ok((host_path(host, &format!("{field}.host_path"))?, "rprivate"));
        };
        if legacy.is_some() {
            return Err(Error::invalid(format!("{field}.host_path"), "set either `host_path` or `source`, not both"));
        }
        let ty = Type::try_from(source.r#type.unwrap_or(0)).unwrap_or(Type::Unknown);
        match ty {
            Type::HostPath => {
                let hp = source.host_path.as_ref().ok_or_else(|| {
                    Error::invalid(format!("{field}.source.host_path"), "is required for type HOST_PATH")
                })?;
                let path = host_path(&hp.path, &format!("{field}.source.host_path.path"))?;
                let mode =
                    hp.mount_propagation.as_ref().map(|p| p.mode()).unwrap_or(mount_propagation::Mode::HostToContainer);
                let propagation = match mode {
                    mount_propagation::Mode::Bidirectional => "rshared",
                    _ => "rslave",
                };
                Ok((path, propagation))
            }
            Type::SandboxPath => {
                let sp = source.sandbox_path.as_ref().ok_or_else(|| {
                    Error::invalid(format!("{field}.source.sandbox_path"), "is required for type SANDBOX_PATH")
                })?;
                let at = format!("{field}.source.sandbox_path.path");
                validate::volume_path(&sp.path, &at)?;
                if sp.path.starts_with('/') {
                    return Err(Error::invalid(&at, "must be relative to the sandbox"));
                }
                let root = match sp.r#type() {
                    sandbox_path::Type::Self_ => self.place.sandbox_dir.clone(),
                    sandbox_path::Type::Parent => match &self.place.parent {
                        Some(p) => p.sandbox_dir.clone(),
                        None => {
                            return Err(Error::invalid(
                                format!("{field}.source.sandbox_path.type"),
                                "PARENT needs a nested container",
                            ));
                        }
                    },
                    sandbox_path::Type::Unknown => {
                        return Err(Error::invalid(
                            format!("{field}.source.sandbox_path.type"),
                            "must be SELF or PARENT",
                        ));
                    }
                };
                // Sandboxes are written by containers: resolve links as if the sandbox were `/`.
                let path =
                    resolve_in_root(&root, Path::new(&sp.path)).map_err(|e| Error::invalid(&at, e.to_string()))?;
                let rel = path.strip_prefix(&root).unwrap_or(Path::new("")).to_path_buf();
                self.sandbox_dirs.push((root, rel));
                Ok((path, "rprivate"))
            }
            Type::DockerVolume => Err(Error::unsupported(format!("{field}.source.type"), "DOCKER_VOLUME")),
            Type::Secret => Err(Error::unsupported(format!("{field}.source.type"), "SECRET")),
            Type::CsiVolume => Err(Error::unsupported(format!("{field}.source.type"), "CSI_VOLUME")),
            Type::Unknown => Err(Error::invalid(format!("{field}.source.type"), "must be HOST_PATH or SANDBOX_PATH")),
        }
    }

    fn namespaces(&self) -> Result<Vec<LinuxNamespace>> {
        let ns = |typ: LinuxNamespaceType, path: Option<&Path>| -> Result<LinuxNamespace> {
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(p) = path {
                b = b.path(p.to_path_buf());
            }
            b.build().map_err(internal)
        };
        let parent = self.place.parent.as_ref();
        let mut out = vec![ns(LinuxNamespaceType::Mount, None)?, ns(LinuxNamespaceType::Cgroup, None)?];
        if self.linux.share_pid_namespace() {
            // Top-level: the host's pid namespace (no entry). Nested: the parent's.
            match parent {
                Some(p) => out.push(ns(LinuxNamespaceType::Pid, Some(&p.pid_ns))?),
                None if !self.cfg.allow_host_pid_namespace => {
                    return Err(Error::invalid(
                        "container.linux_info.share_pid_namespace",
                        "would share the host's pid namespace, which this agent does not allow \
                         (see --allow-host-pid-namespace)",
                    ));
                }
                None => {}
            }
        } else {
            out.push(ns(LinuxNamespaceType::Pid, None)?);
        }
        if self.ipc_private()? {
            out.push(ns(LinuxNamespaceType::Ipc, None)?);
        } else if let Some(p) = parent {
            out.push(ns(LinuxNamespaceType::Ipc, Some(&p.ipc_ns))?);
        }
        match parent {
            Some(p) => {
                out.push(ns(LinuxNamespaceType::Uts, Some(&p.uts_ns))?);
                out.push(ns(LinuxNamespaceType::Network, Some(&p.net_ns))?);
                if !self.info.network_infos.is_empty() {
                    return Err(Error::invalid(
                        "container.network_infos",
                        "a nested container joins its parent's network",
                    ));
                }
            }
            None => {
                out.push(ns(LinuxNamespaceType::Uts, None)?);
                if self.network_isolated()? {
                    out.push(ns(LinuxNamespaceType::Network, self.place.network_ns.as_deref())?);
                }
            }
        }
        Ok(out)
    }

    /// Whether the container has a network namespace of its own (not the host's).
    fn has_own_network(&self) -> Result<bool> {
        match &self.place.parent {
            Some(_) => Ok(false),
            None => self.network_isolated(),
        }
    }

    /// Mesos' default is the host network; a `NetworkInfo` naming a (CNI) network asks for the
    /// container's own network namespace.
    fn network_isolated(&self) -> Result<bool> {
        let mut isolated = false;
        for (i, n) in self.info.network_infos.iter().enumerate() {
            let at = format!("container.network_infos[{i}]");
            match n.name.as_deref() {
                Some(name) => {
                    if name.is_empty() || name.len() > 128 || name.contains('/') || name.contains('\0') {
                        return Err(Error::invalid(
                            format!("{at}.name"),
                            "must be 1-128 characters without `/` or NUL",
                        ));
                    }
                    isolated = true;
                }
                None if !n.port_mappings.is_empty() => {
                    return Err(Error::invalid(format!("{at}.port_mappings"), "need a named network (`name`)"));
                }
                None => {}
            }
        }
        Ok(isolated)
    }

    /// Every container has a cgroup of its own: killing or removing it never touches another
    /// container. A nested container's is below its parent's, so with `share_cgroups` (and no
    /// limits of its own) it shares the parent's limits, hierarchically.
    ///
    /// A top-level container's is `<cgroup_parent>/<id>` when the launch names a parent (a
    /// kubelet's pod cgroup), else `<cgroup root>/<id>`.
    fn cgroups_path(&self, req: &LaunchRequest) -> Result<String> {
        let asked = req.cgroup_parent.as_deref().filter(|p| !p.is_empty());
        if let Some(p) = &self.place.parent {
            if asked.is_some() {
                return Err(Error::invalid(
                    "cgroup_parent",
                    "only for a top-level container (a nested container's cgroup is below its parent's)",
                ));
            }
            return Ok(format!("{}/{}", p.cgroups_path.trim_end_matches('/'), req.container_id.value));
        }
        let root = format!("/{}", self.cfg.cgroup_root.trim_matches('/'));
        if let Some(parent) = asked {
            return placed_cgroup(parent, &req.container_id.value, &root);
        }
        let mut path = root;
        for part in path_of(&req.container_id) {
            path.push('/');
            path.push_str(part);
        }
        Ok(path)
    }

    fn resources(&mut self, req: &Amounts, lim: &Limits) -> Result<oci_spec::runtime::LinuxResources> {
        if !self.nested && !self.linux.share_cgroups() {
            return Err(Error::invalid(
                "container.linux_info.share_cgroups",
                "cannot be false for a top-level container (it has its own cgroups)",
            ));
        }
        let mut b = LinuxResourcesBuilder::default().devices(default_device_rules(self.privileged)?);
        if self.nested && self.linux.share_cgroups() {
            // The parent's cgroup above holds the limits; this one only groups the processes.
            return b.build().map_err(internal);
        }
        let mut cpu = LinuxCpuBuilder::default();
        let mut cpu_set = false;
        if let Some(cpus) = req.cpus {
            cpu = cpu.shares(((CPU_SHARES_PER_CPU * cpus) as u64).max(MIN_CPU_SHARES));
            cpu_set = true;
        }
        let quota_cpus = match lim.cpus {
            Some(l) if l.is_infinite() => None,
            Some(l) => Some(l),
            None if self.cfg.enable_cfs => req.cpus,
            None => None,
        };
        if let Some(q) = quota_cpus {
            cpu = cpu.quota(((CFS_PERIOD_US as f64 * q) as i64).max(MIN_CFS_QUOTA_US)).period(CFS_PERIOD_US);
            cpu_set = true;
        }
        if cpu_set {
            b = b.cpu(cpu.build().map_err(internal)?);
        }
        let limit_mb = match lim.mem_mb {
            Some(l) if l.is_infinite() => None,
            Some(l) => Some(l),
            None => req.mem_mb,
        };
        if limit_mb.is_some() || req.mem_mb.is_some() {
            let mut mem = LinuxMemoryBuilder::default();
            if let Some(l) = limit_mb {
                if l < MIN_MEMORY_MB {
                    self.warnings.push(format!("memory limit {l} MB raised to the minimum of {MIN_MEMORY_MB} MB"));
                }
                mem = mem.limit((l.max(MIN_MEMORY_MB) * MIB) as i64);
            }
            if let Some(r) = req.mem_mb {
                // The request is the soft limit (memory.soft_limit_in_bytes), as Mesos sets it.
                mem = mem.reservation((r.max(MIN_MEMORY_MB) * MIB) as i64);
            }
            b = b.memory(mem.build().map_err(internal)?);
        }
        if let Some(pids) = self.cfg.default_pids_limit {
            b = b.pids(LinuxPidsBuilder::default().limit(pids).build().map_err(internal)?);
        }
        b.build().map_err(internal)
    }

    /// The kernel parameters to set: each scoped by a namespace the container has of its own.
    fn sysctls(&self, sysctls: &HashMap<String, String>) -> Result<HashMap<String, String>> {
        let field = "security.sysctls";
        if self.nested {
            return Err(Error::invalid(field, "a nested container shares its parent's namespaces; set them there"));
        }
        for (key, value) in sysctls {
            let own = match validate::sysctl(key, value, field)? {
                validate::SysctlScope::Ipc => self.ipc_private()?,
                validate::SysctlScope::Network => self.has_own_network()?,
                validate::SysctlScope::Uts => true,
            };
            if !own {
                return Err(Error::invalid(
                    format!("{field}[{key}]"),
                    "the container shares that namespace with the host, so it would change the host",
                ));
            }
        }
        Ok(sysctls.clone())
    }

    fn seccomp(&self, bounding: &CapSet, security: &SecurityOptions) -> Result<Option<LinuxSeccomp>> {
        if let Some(path) = security.seccomp_profile_path.as_deref() {
            let at = "security.seccomp_profile_path";
            if self.linux.seccomp.is_some() {
                return Err(Error::invalid(at, "set either it or container.linux_info.seccomp"));
            }
            no_nul(path, at)?;
            if !path.starts_with('/') {
                return Err(Error::invalid(at, format!("`{}` must be an absolute path", path.escape_debug())));
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::missing(at, format!("{path}: {e}")))?;
            let profile: LinuxSeccomp = serde_json::from_str(&text)
                .map_err(|e| Error::invalid(at, format!("{path} is not an OCI seccomp profile: {e}")))?;
            return Ok(Some(profile));
        }
        // A privileged container runs without husk's default profile; one it names still applies.
        let default = match self.privileged {
            true => None,
            false => Some(seccomp::default_profile(bounding)),
        };
        let Some(info) = &self.linux.seccomp else {
            return Ok(default);
        };
        if info.unconfined() {
            if info.profile_name.is_some() {
                return Err(Error::invalid(
                    "container.linux_info.seccomp",
                    "set either `unconfined` or `profile_name`",
                ));
            }
            if !self.cfg.allow_unconfined_seccomp && !self.privileged {
                return Err(Error::invalid(
                    "container.linux_info.seccomp.unconfined",
                    "is not allowed by this agent (see --allow-unconfined-seccomp)",
                ));
            }
            return Ok(None);
        }
        let Some(name) = info.profile_name.as_deref() else {
            return Ok(default);
        };
        let at = "container.linux_info.seccomp.profile_name";
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
            return Err(Error::invalid(at, "must be a file name (no `/`, not starting with `.`)"));
        }
        let Some(dir) = &self.cfg.seccomp_profile_dir else {
            return Err(Error::unsupported(at, "a named profile (the agent has no seccomp profile directory)"));
        };
        let file = dir.join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&file).map_err(|e| Error::missing(at, format!("{}: {e}", file.display())))?;
        let profile: LinuxSeccomp = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(at, format!("{} is not an OCI seccomp profile: {e}", file.display())))?;
        Ok(Some(profile))
    }
}

/// A privileged container's capabilities: every one the agent holds, in the bounding,
/// effective and permitted sets, none inheritable or ambient (as containerd gives them since
/// CVE-2022-24769).
fn privileged_capabilities() -> Result<Capabilities> {
    let all = caps::current()?;
    let oci: oci_spec::runtime::Capabilities = all
        .iter()
        .map(|n| caps::to_oci(n).map_err(|e| Error::invalid("capabilities", format!("{n}: {e}"))))
        .collect::<Result<_>>()?;
    let oci = LinuxCapabilitiesBuilder::default()
        .bounding(oci.clone())
        .effective(oci.clone())
        .permitted(oci)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(internal)?;
    Ok(Capabilities { oci, bounding: all })
}

/// `requested` (absolute container paths) when given, else `default`.
fn container_paths(requested: &[String], default: &[&str], field: &str) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    for (i, p) in requested.iter().enumerate() {
        let at = format!("{field}[{i}]");
        validate::volume_path(p, &at)?;
        if !p.starts_with('/') || p == "/" {
            return Err(Error::invalid(at, format!("`{}` must be an absolute path below `/`", p.escape_debug())));
        }
    }
    Ok(requested.to_vec())
}

/// no_new_privs: the agent's setting, which a launch may add but not lift. A privileged
/// container gets it only when it asks (Kubernetes refuses privileged without privilege
/// escalation, and a privileged container's setuid binaries are meant to work).
fn no_new_privileges(security: &SecurityOptions, cfg: &Config, privileged: bool) -> Result<bool> {
    match security.no_new_privileges {
        None if privileged => Ok(false),
        Some(false) if privileged => Ok(false),
        None => Ok(cfg.no_new_privileges),
        Some(true) => Ok(true),
        Some(false) if cfg.no_new_privileges => Err(Error::invalid(
            "security.no_new_privileges",
            "false is not allowed: this agent sets no_new_privs for every container (--no-new-privileges)",
        )),
        Some(false) => Ok(false),
    }
}

fn cap_set(info: &CapabilityInfo, field: &str) -> Result<CapSet> {
    info.capabilities
        .iter()
        .enumerate()
        .map(|(i, c)| caps::from_mesos(*c, &format!("{field}.capabilities[{i}]")))
        .collect()
}

fn host_path(path: &str, field: &str) -> Result<PathBuf> {
    validate::volume_path(path, field)?;
    if !path.starts_with('/') {
        return Err(Error::invalid(field, format!("`{}` must be an absolute path", path.escape_debug())));
    }
    let p = PathBuf::from(path);
    std::fs::symlink_metadata(&p).map_err(|e| Error::missing(field, format!("`{path}`: {e}")))?;
    no_nul(path, field)?;
    Ok(p)
}

/// The device cgroup: deny everything, then allow the devices every container gets; a
/// privileged container may use every device.
fn default_device_rules(privileged: bool) -> Result<Vec<LinuxDeviceCgroup>> {
    let rule = |allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().map_err(internal)
    };
    if privileged {
        return Ok(vec![rule(true, LinuxDeviceType::A, None, None, "rwm")?]);
    }
    let c = LinuxDeviceType::C;
    Ok(vec![
        rule(false, LinuxDeviceType::A, None, None, "rwm")?,
        rule(true, c, Some(1), Some(3), "rwm")?, // null
        rule(true, c, Some(1), Some(5), "rwm")?, // zero
        rule(true, c, Some(1), Some(7), "rwm")?, // full
        rule(true, c, Some(1), Some(8), "rwm")?, // random
        rule(true, c, Some(1), Some(9), "rwm")?, // urandom
        rule(true, c, Some(5), Some(0), "rwm")?, // tty
        rule(true, c, Some(5), Some(1), "rwm")?, // console
        rule(true, c, Some(5), Some(2), "rwm")?, // ptmx
        rule(true, c, Some(136), None, "rwm")?,  // pts/*
    ])
}

/// How many entries [`host_devices`] reads at most (a node with thousands of disks has a few
/// thousand).
pub const MAX_HOST_DEVICE_ENTRIES: usize = 65536;

/// The mount points strictly below `dir`, from the agent's mount table.
fn mount_points_under(dir: &Path) -> std::collections::HashSet<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if d[0] <= b'3' => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every character and block device under the host's `dir` (`/dev`), as a privileged container
/// gets them (containerd's and runc's host device list): not the terminals and the
/// filesystems the container has of its own (`pts`, `shm`, `mqueue`), nor `console` (the
/// container's terminal, when it has one).
///
/// Nothing mounted under `dir` is entered or even looked at (a stat of a hung network or FUSE
/// mount would hang the launch), names that are not UTF-8 are skipped (a bundle cannot name
/// them), and the walk stops with an error past [`MAX_HOST_DEVICE_ENTRIES`] entries.
pub fn host_devices(dir: &Path) -> Result<Vec<LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const SKIP_DIRS: &[&str] = &["pts", "shm", "mqueue", "fd", ".lxc", ".lxd-mounts", ".udev"];
    let mounted = mount_points_under(dir);
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // A directory that went away (udev renames) or that we may not read is skipped.
            Err(_) if d != dir => continue,
            Err(e) => return Err(Error::missing("security.privileged", format!("{}: {e}", d.display()))),
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_HOST_DEVICE_ENTRIES {
                return Err(Error::unsupported(
                    "security.privileged",
                    format!("{} holds more than {MAX_HOST_DEVICE_ENTRIES} entries", dir.display()),
                ));
            }
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if mounted.contains(&path) {
                continue;
            }
            // The directory entry's own type, without a stat; links are names, not devices
            // (their targets are listed themselves).
            let Ok(ft) = entry.file_type() else { continue };
            if !(ft.is_dir() || ft.is_char_device() || ft.is_block_device()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                if !SKIP_DIRS.contains(&name.as_ref()) {
                    pending.push(path);
                }
                continue;
            }
            let typ = match () {
                _ if ft.is_char_device() => LinuxDeviceType::C,
                _ if ft.is_block_device() => LinuxDeviceType::B,
                _ => continue,
            };
            if d == dir && name == "console" {
                continue;
            }
            let rdev = meta.rdev();
            let device = LinuxDeviceBuilder::default()
                .path(path.clone())
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(internal)?;
            out.push(device);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

/// The capabilities a launch asks to keep across exec (`security.ambient_capabilities`, the
/// CRI's `add_ambient_capabilities`): each must be one the process has; it is raised in the
/// ambient and inheritable sets, which is how a process of a user other than root keeps it.
fn ambient_capabilities(oci: &mut LinuxCapabilities, asked: &[String]) -> Result<()> {
    const FIELD: &str = "security.ambient_capabilities";
    if asked.is_empty() {
        return Ok(());
    }
    if asked.len() > 128 {
        return Err(Error::invalid(FIELD, format!("{} names (at most 128)", asked.len())));
    }
    let mut ambient = oci.ambient().clone().unwrap_or_default();
    let mut inheritable = oci.inheritable().clone().unwrap_or_default();
    for (i, name) in asked.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let canonical = caps::parse_name(name, &field)?;
        let cap = caps::to_oci(&canonical).map_err(|e| Error::invalid(&field, e.to_string()))?;
        if !oci.effective().as_ref().is_some_and(|e| e.contains(&cap)) {
            return Err(Error::invalid(
                field,
                format!("{canonical} is not among the container's capabilities; grant it too"),
            ));
        }
        ambient.insert(cap);
        inheritable.insert(cap);
    }
    oci.set_ambient(Some(ambient));
    oci.set_inheritable(Some(inheritable));
    Ok(())
}

/// The cgroup of top-level container `id` placed under `parent` (a launch's `cgroup_parent`),
/// `<parent>/<id>`, checked: never the agent's cgroup root `root` or above it (`/` and id `husk`
/// would be the root itself, holding every container's cgroup).
pub fn placed_cgroup(parent: &str, id: &str, root: &str) -> Result<String> {
    let path = format!("{}/{id}", cgroup_parent(parent, root)?.trim_end_matches('/'));
    if path == root || root.starts_with(&format!("{path}/")) {
        return Err(Error::invalid(
            "cgroup_parent",
            format!(
                "with this id the container's cgroup would be `{path}`, which holds the agent's cgroup root `{root}`"
            ),
        ));
    }
    Ok(path)
}

/// A launch's `cgroup_parent`, checked: an absolute cgroupfs path (`/kubepods/burstable/pod1`)
/// of plain names, outside the agent's cgroup root `root` (whose children are its containers'
/// own cgroups; the root itself is the default). Returned without a trailing `/`, except `/`.
pub fn cgroup_parent(parent: &str, root: &str) -> Result<String> {
    const FIELD: &str = "cgroup_parent";
    if !parent.starts_with('/') {
        let parent = parent.escape_debug();
        let why = if parent.to_string().ends_with(".slice") {
            format!(
                "`{parent}` is a systemd slice; husk manages cgroupfs paths (run the kubelet with \
                 --cgroup-driver=cgroupfs)"
            )
        } else {
            format!("`{parent}` must be an absolute cgroup path such as /kubepods/pod1")
        };
        return Err(Error::invalid(FIELD, why));
    }
    if parent.len() > 1024 {
        return Err(Error::invalid(FIELD, "is longer than 1024 bytes"));
    }
    let parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
    for part in &parts {
        if *part == "." || *part == ".." || part.len() > 255 || part.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "`{}`: `{}` is not a cgroup name (no `.`, `..` or control characters, at most 255 bytes)",
                    parent.escape_debug(),
                    part.escape_debug()
                ),
            ));
        }
    }
    let clean = format!("/{}", parts.join("/"));
    if clean != root && (root == "/" || clean.starts_with(&format!("{root}/"))) {
        return Err(Error::invalid(
            FIELD,
            format!("`{parent}` is inside the agent's cgroup root `{root}`, where its containers' own cgroups are"),
        ));
    }
    Ok(clean)
}
