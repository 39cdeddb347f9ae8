//! CRI RuntimeService: pod sandboxes and containers as husk containers.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_server::Containerizer;
use husk_proto::cri;
use husk_proto::mesos::v1 as mesos;
use tonic::{Request, Response, Status};

use super::streaming::{Opts, Request as StreamRequest};
use super::{matches, now_ns, ContainerRecord, Cri, PodRecord};
use crate::agent::service::Service;

pub struct RuntimeService(pub Arc<Cri>);

/// How long Stop waits for the processes of a container to be gone after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

fn labels(map: &HashMap<String, String>, extra: &[(&str, &str)]) -> Option<mesos::Labels> {
    let mut labels: Vec<mesos::Label> =
        map.iter().map(|(k, v)| mesos::Label { key: k.clone(), value: Some(v.clone()) }).collect();
    labels.extend(extra.iter().map(|(k, v)| mesos::Label { key: k.to_string(), value: Some(v.to_string()) }));
    labels.sort_by(|a, b| a.key.cmp(&b.key));
    labels.dedup_by(|a, b| a.key == b.key);
    Some(mesos::Labels { labels })
}

fn mode(m: Option<&cri::NamespaceOption>, pick: fn(&cri::NamespaceOption) -> i32) -> cri::NamespaceMode {
    m.map(|o| cri::NamespaceMode::try_from(pick(o)).unwrap_or(cri::NamespaceMode::Pod))
        .unwrap_or(cri::NamespaceMode::Pod)
}

fn pod_namespaces(config: &cri::PodSandboxConfig) -> Option<&cri::NamespaceOption> {
    config.linux.as_ref()?.security_context.as_ref()?.namespace_options.as_ref()
}

/// Whether the pod may hold privileged containers (its holder is then privileged too, so the
/// containers' device cgroups, below the pod's, can allow every device).
fn pod_privileged(config: &cri::PodSandboxConfig) -> bool {
    config.linux.as_ref().and_then(|l| l.security_context.as_ref()).is_some_and(|s| s.privileged)
}

/// The resolv.conf of a pod: its DNS config, or the node's when it gives none.
fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<String, Status> {
    let Some(dns) = dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty())) else {
        return std::fs::read_to_string("/etc/resolv.conf")
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(String::new()) } else { Err(e) })
            .map_err(|e| Status::internal(format!("reading the node's /etc/resolv.conf: {e}")));
    };
    let mut text = String::new();
    for (field, values, key) in [
        ("servers", &dns.servers, "nameserver"),
        ("searches", &dns.searches, "search"),
        ("options", &dns.options, "options"),
    ] {
        if let Some(v) = values.iter().find(|v| v.is_empty() || v.contains(['\n', '\r', '\0']) || v.contains(' ')) {
            return Err(Status::invalid_argument(format!(
                "config.dns_config.{field}: `{}` must be one word without spaces or newlines",
                v.escape_debug()
            )));
        }
        match key {
            "nameserver" => values.iter().for_each(|s| text.push_str(&format!("nameserver {s}\n"))),
            _ if !values.is_empty() => text.push_str(&format!("{key} {}\n", values.join(" "))),
            _ => {}
        }
    }
    Ok(text)
}

/// The husk launch of a pod: husk's holder process on the host's filesystem, in the pod's
/// namespaces.
fn pod_launch(cri: &Cri, id: &str, config: &cri::PodSandboxConfig) -> Result<pb::LaunchRequest, Status> {
    let ns = pod_namespaces(config);
    if pod_privileged(config) && !cri.agent.settings.translation.allow_privileged {
        return Err(Status::invalid_argument(
            "config.linux.security_context.privileged: this agent does not allow privileged pods \
             (see husk-agent --allow-privileged)",
        ));
    }
    // The kubelet's pod cgroup (cgroupfs driver): the holder's cgroup goes in it, and the
    // containers' below the holder's.
    let cgroup_parent = match config.linux.as_ref().map(|l| l.cgroup_parent.as_str()).filter(|p| !p.is_empty()) {
        Some(p) => {
            let root = format!("/{}", cri.agent.settings.translation.cgroup_root.trim_matches('/'));
            let checked = husk_oci::translate::cgroup_parent(p, &root)
                .map_err(|e| Status::invalid_argument(format!("config.linux.{e}")))?;
            Some(checked)
        }
        None => None,
    };
    // The pod's AppArmor profile is not the holder's: the kubelet copies it into each
    // container's own security context, and the holder (husk's own process, which only holds
    // the namespaces) runs unconfined, as containerd's pause container may.
    let pod_sc = config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
    selinux(pod_sc.selinux_options.as_ref(), "config.linux.security_context.selinux_options")?;
    let holder = cri.agent.settings.shim_binary.display().to_string();
    let host_network = mode(ns, |o| o.network) == cri::NamespaceMode::Node;
    let mut linux = mesos::LinuxInfo::default();
    if mode(ns, |o| o.ipc) == cri::NamespaceMode::Node {
        linux.ipc_mode = Some(mesos::linux_info::IpcMode::ShareParent as i32);
    }
    if mode(ns, |o| o.pid) == cri::NamespaceMode::Node {
        linux.share_pid_namespace = Some(true);
    }
    let meta = config.metadata.clone().unwrap_or_default();
    // The pod's network: the first CNI network (as the kubelet's CNI plugins pick it), with
    // the pod's host ports (those without one are only documentation) and the pod's identity
    // as CNI_ARGS.
    let network_infos = match host_network {
        true => vec![],
        false => {
            let cni = &cri.agent.settings.cni;
            let net = cni.networks().into_iter().next().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "config.linux.security_context.namespace_options.network: the pod needs a CNI network \
                     and there is none in {} (or use network NODE)",
                    cni.conf_dir.display()
                ))
            })?;
            let mut port_mappings = Vec::new();
            for (i, p) in config.port_mappings.iter().enumerate().filter(|(_, p)| p.host_port > 0) {
                let field = format!("config.port_mappings[{i}]");
                let port = |v: i32, what: &str| {
                    u32::try_from(v)
                        .ok()
                        .filter(|p| (1..=65535).contains(p))
                        .ok_or_else(|| Status::invalid_argument(format!("{field}.{what}: {v} is not a port (1-65535)")))
                };
                if !p.host_ip.is_empty() {
                    return Err(Status::unimplemented(format!("{field}.host_ip: host ports bind every address")));
                }
                port_mappings.push(mesos::network_info::PortMapping {
                    host_port: port(p.host_port, "host_port")?,
                    container_port: port(p.container_port, "container_port")?,
                    protocol: Some(p.protocol().as_str_name().to_ascii_lowercase()),
                });
            }
            let arg = |k: &str, v: &str| mesos::Label { key: k.into(), value: Some(v.into()) };
            let args = vec![
                arg("K8S_POD_NAMESPACE", &meta.namespace),
                arg("K8S_POD_NAME", &meta.name),
                arg("K8S_POD_INFRA_CONTAINER_ID", id),
                arg("K8S_POD_UID", &meta.uid),
            ];
            vec![mesos::NetworkInfo {
                name: Some(net.name),
                port_mappings,
                labels: Some(mesos::Labels { labels: args }),
                ..Default::default()
            }]
        }
    };
    Ok(pb::LaunchRequest {
        container_id: mesos::ContainerId { value: id.to_string(), parent: None },
        command: Some(mesos::CommandInfo {
            shell: Some(false),
            value: Some(holder.clone()),
            arguments: vec![holder, "hold".into()],
            ..Default::default()
        }),
        container: Some(mesos::ContainerInfo {
            r#type: mesos::container_info::Type::Mesos as i32,
            hostname: Some(config.hostname.clone()).filter(|h| !h.is_empty()),
            // A network of its own (the pod's); the host's with host networking.
            network_infos,
            linux_info: Some(linux),
            ..Default::default()
        }),
        // The pod's sysctls go to the namespaces its holder owns, which its containers join.
        security: Some(pb::SecurityOptions {
            sysctls: config.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default(),
            privileged: pod_privileged(config).then_some(true),
            ..Default::default()
        })
        .filter(|s| !s.sysctls.is_empty() || s.privileged()),
        cgroup_parent,
        labels: labels(
            &config.labels,
            &[
                (super::LABEL_KIND, "sandbox"),
                (super::LABEL_POD_NAME, &meta.name),
                (super::LABEL_POD_NAMESPACE, &meta.namespace),
            ],
        ),
        ..Default::default()
    })
}

/// Kubernetes' rule: `command` replaces the image's Entrypoint, `args` its Cmd (and without a
/// `command`, the image's Cmd only goes when `args` is empty).
fn argv(config: &cri::ContainerConfig, image: &oci_spec::image::ImageConfiguration) -> Vec<String> {
    let c = image.config().clone().unwrap_or_default();
    let entrypoint = c.entrypoint().clone().unwrap_or_default();
    let cmd = c.cmd().clone().unwrap_or_default();
    match (config.command.is_empty(), config.args.is_empty()) {
        (false, _) => config.command.iter().chain(&config.args).cloned().collect(),
        (true, false) => entrypoint.into_iter().chain(config.args.iter().cloned()).collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// What the container's Linux config asks for, as Mesos resources and limits.
fn resources(
    r: Option<&cri::LinuxContainerResources>,
) -> Result<(Vec<mesos::Resource>, HashMap<String, mesos::value::Scalar>), Status> {
    let mut requests = Vec::new();
    let mut limits = HashMap::new();
    let Some(r) = r else { return Ok((requests, limits)) };
    if r.cpu_shares < 0 || r.cpu_quota < -1 || r.cpu_period < 0 || r.memory_limit_in_bytes < 0 {
        return Err(Status::invalid_argument(
            "config.linux.resources: cpu_shares, cpu_period and memory_limit_in_bytes must not be negative",
        ));
    }
    if r.cpu_shares > 0 {
        requests.push(husk_oci::resources::scalar("cpus", (r.cpu_shares as f64 / 1024.0).max(0.01)));
    }
    if r.memory_limit_in_bytes > 0 {
        requests.push(husk_oci::resources::scalar("mem", (r.memory_limit_in_bytes as f64 / 1048576.0).max(4.0)));
        limits.insert(
            "mem".into(),
            mesos::value::Scalar { value: (r.memory_limit_in_bytes as f64 / 1048576.0).max(4.0) },
        );
    }
    if r.cpu_quota > 0 && r.cpu_period > 0 {
        limits.insert("cpus".into(), mesos::value::Scalar { value: r.cpu_quota as f64 / r.cpu_period as f64 });
    }
    Ok((requests, limits))
}

/// Checks a CreateContainer request and makes the launch StartContainer will run.
fn container_launch(
    pod: &PodRecord,
    id: &str,
    config: &cri::ContainerConfig,
    image_name: &str,
    image: &oci_spec::image::ImageConfiguration,
    log_path: &str,
) -> Result<pb::LaunchRequest, Status> {
    let argv = argv(config, image);
    if argv.is_empty() {
        return Err(Status::invalid_argument(
            "config.command: the image has neither Entrypoint nor Cmd, so the container must give a command",
        ));
    }
    let meta = config.metadata.clone().unwrap_or_default();
    let environment = mesos::Environment {
        variables: config
            .envs
            .iter()
            .map(|kv| mesos::environment::Variable {
                name: kv.key.clone(),
                value: Some(kv.value.clone()),
                ..Default::default()
            })
            .collect(),
    };
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let user = match (&sc.run_as_user, sc.run_as_username.as_str(), &sc.run_as_group) {
        (Some(u), _, Some(g)) => Some(format!("{}:{}", u.value, g.value)),
        (Some(u), _, None) => Some(u.value.to_string()),
        (None, name, Some(g)) if !name.is_empty() => Some(format!("{name}:{}", g.value)),
        (None, name, _) if !name.is_empty() => Some(name.to_string()),
        _ => None,
    };
    let mut volumes = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        if m.container_path.is_empty() || m.host_path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "config.mounts[{i}]: container_path and host_path are required"
            )));
        }
        volumes.push(mesos::Volume {
            container_path: m.container_path.clone(),
            host_path: Some(m.host_path.clone()),
            mode: if m.readonly { mesos::volume::Mode::Ro } else { mesos::volume::Mode::Rw } as i32,
            ..Default::default()
        });
    }
    let resolv = std::path::Path::new(&pod.sandbox_dir).join("resolv.conf");
    if resolv.is_file() && !config.mounts.iter().any(|m| m.container_path == "/etc/resolv.conf") {
        volumes.push(mesos::Volume {
            container_path: "/etc/resolv.conf".into(),
            host_path: Some(resolv.display().to_string()),
            mode: mesos::volume::Mode::Ro as i32,
            ..Default::default()
        });
    }
    // The container's pid mode, else its pod's: POD shares the pod's namespace, NODE too (the
    // pod's is then the node's), CONTAINER gives it one of its own.
    let pid_mode = match sc.namespace_options.as_ref() {
        Some(o) => cri::NamespaceMode::try_from(o.pid).unwrap_or(cri::NamespaceMode::Pod),
        None => mode(pod_namespaces(&pod.config), |o| o.pid),
    };
    // Each container has limits of its own (the kubelet sets them per container), in a cgroup
    // below its pod's.
    let mut linux_info = mesos::LinuxInfo { share_cgroups: Some(false), ..Default::default() };
    if pid_mode != cri::NamespaceMode::Container {
        linux_info.share_pid_namespace = Some(true);
    }
    if sc.privileged && !pod_privileged(&pod.config) {
        return Err(Status::invalid_argument(
            "config.linux.security_context.privileged: the pod sandbox is not privileged \
             (its linux.security_context.privileged), so it cannot hold a privileged container",
        ));
    }
    // The default set adjusted, as containerd does; the agent's --allowed-capabilities still
    // bounds what a container may get. A privileged container has every capability, whatever
    // these say (containerd's rule too).
    // Ambient capabilities are granted as added ones are, and kept across exec besides.
    let no_caps = cri::Capability::default();
    let caps = sc.capabilities.as_ref().filter(|_| !sc.privileged).unwrap_or(&no_caps);
    if !caps.add_capabilities.is_empty()
        || !caps.drop_capabilities.is_empty()
        || !caps.add_ambient_capabilities.is_empty()
    {
        let field = "config.linux.security_context.capabilities";
        for (i, name) in caps.add_ambient_capabilities.iter().enumerate() {
            let canonical = husk_oci::caps::parse_name(name, &format!("{field}.add_ambient_capabilities[{i}]"))
                .map_err(crate::agent::status_of)?;
            // A named drop wins over any add (`ALL` dropped does not: added ones come back).
            if caps.drop_capabilities.iter().any(|d| husk_oci::caps::parse_name(d, "").is_ok_and(|d| d == canonical)) {
                return Err(Status::invalid_argument(format!(
                    "{field}.add_ambient_capabilities[{i}]: {canonical} is also dropped"
                )));
            }
        }
        let add: Vec<String> = caps.add_capabilities.iter().chain(&caps.add_ambient_capabilities).cloned().collect();
        let capabilities = husk_oci::caps::adjust_default(
            &add,
            &caps.drop_capabilities,
            &format!("{field}.add_capabilities"),
            &format!("{field}.drop_capabilities"),
        )
        .map_err(crate::agent::status_of)?;
        linux_info.bounding_capabilities = Some(mesos::CapabilityInfo { capabilities });
    }
    selinux(sc.selinux_options.as_ref(), "config.linux.security_context.selinux_options")?;
    let apparmor_profile =
        apparmor(sc.apparmor.as_ref(), &sc.apparmor_profile, sc.privileged, "config.linux.security_context")?;
    // A privileged container runs without seccomp, whatever profile it names (containerd's rule).
    let (seccomp, seccomp_profile_path) = match sc.privileged {
        true => (None, None),
        false => seccomp(&sc)?,
    };
    linux_info.seccomp = seccomp;
    let mut supplemental_groups = Vec::with_capacity(sc.supplemental_groups.len());
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        supplemental_groups.push(u32::try_from(*g).map_err(|_| {
            Status::invalid_argument(format!(
                "config.linux.security_context.supplemental_groups[{i}]: {g} is not a group id (0 to 4294967295)"
            ))
        })?);
    }
    let oom_score_adj = linux.resources.as_ref().map(|r| r.oom_score_adj).filter(|a| *a != 0);
    let security = pb::SecurityOptions {
        readonly_rootfs: Some(sc.readonly_rootfs),
        // The agent's --no-new-privileges (the default) already sets it for every container.
        no_new_privileges: sc.no_new_privs.then_some(true),
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        sysctls: HashMap::new(),
        oom_score_adj: match oom_score_adj {
            Some(a) if !(-1000..=1000).contains(&a) => {
                return Err(Status::invalid_argument(format!(
                    "config.linux.resources.oom_score_adj: {a} is not within -1000 to 1000"
                )))
            }
            a => a.map(|a| a as i32),
        },
        seccomp_profile_path,
        supplemental_groups,
        privileged: sc.privileged.then_some(true),
        ambient_capabilities: match sc.privileged {
            true => Vec::new(),
            false => caps.add_ambient_capabilities.clone(),
        },
        apparmor_profile,
    };
    let (requests, limits) = resources(linux.resources.as_ref())?;
    Ok(pb::LaunchRequest {
        container_id: mesos::ContainerId {
            value: id.to_string(),
            parent: Some(Box::new(mesos::ContainerId { value: pod.id.clone(), parent: None })),
        },
        command: Some(mesos::CommandInfo {
            shell: Some(false),
            value: argv.first().cloned(),
            arguments: argv,
            environment: Some(environment),
            user,
            ..Default::default()
        }),
        resources: requests,
        limits,
        container: Some(mesos::ContainerInfo {
            r#type: mesos::container_info::Type::Mesos as i32,
            mesos: Some(mesos::container_info::MesosInfo {
                image: Some(mesos::Image {
                    r#type: mesos::image::Type::Docker as i32,
                    docker: Some(mesos::image::Docker { name: image_name.to_string(), ..Default::default() }),
                    cached: Some(true),
                    ..Default::default()
                }),
            }),
            volumes,
            linux_info: Some(linux_info),
            tty_info: config.tty.then(mesos::TtyInfo::default),
            ..Default::default()
        }),
        labels: labels(
            &config.labels,
            &[
                (super::LABEL_KIND, "container"),
                (super::LABEL_CONTAINER_NAME, &meta.name),
                (super::LABEL_POD_NAME, &pod.config.metadata.clone().unwrap_or_default().name),
                (super::LABEL_POD_NAMESPACE, &pod.config.metadata.clone().unwrap_or_default().namespace),
            ],
        ),
        working_dir: Some(config.working_dir.clone()).filter(|w| !w.is_empty()),
        stdin: Some(config.stdin),
        cri_log_path: Some(log_path.to_string()).filter(|p| !p.is_empty()),
        literal_command: Some(true),
        security: Some(security),
        ..Default::default()
    })
}

/// The AppArmor profile a security context (`field`) asks for, as `SecurityOptions`
/// names it: `Localhost` is a profile loaded on the node (the launch checks that it is), and
/// `Unconfined` or nothing runs the process as the agent runs. husk loads no profile of its own,
/// so `RuntimeDefault` is refused, except for a privileged container, which containerd runs
/// without its default profile too. `deprecated` is the string field of CRI < 1.30:
/// "runtime/default", "unconfined" or "localhost/<name>".
fn apparmor(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
    privileged: bool,
    field: &str,
) -> Result<Option<String>, Status> {
    use cri::security_profile::ProfileType;
    let (kind, name, at) = match profile {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(kind) if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "{field}.apparmor.localhost_ref: only a Localhost profile names one"
                )))
            }
            Ok(kind) => (kind, p.localhost_ref.as_str(), format!("{field}.apparmor")),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "{field}.apparmor.profile_type: unknown type {}",
                    p.profile_type
                )))
            }
        },
        None => match deprecated {
            "" | "unconfined" => (ProfileType::Unconfined, "", String::new()),
            "runtime/default" => (ProfileType::RuntimeDefault, "", format!("{field}.apparmor_profile")),
            p => match p.strip_prefix("localhost/") {
                Some(name) => (ProfileType::Localhost, name, format!("{field}.apparmor_profile")),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "{field}.apparmor_profile: `{}` is none of runtime/default, unconfined, localhost/<name>",
                        p.escape_debug()
                    )))
                }
            },
        },
    };
    match kind {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault if privileged => Ok(None),
        ProfileType::RuntimeDefault if !husk_oci::lsm::apparmor_enabled() => Err(Status::failed_precondition(format!(
            "{at}: RuntimeDefault was asked for, but AppArmor is not enabled on this node"
        ))),
        ProfileType::RuntimeDefault => Err(Status::failed_precondition(format!(
            "{at}: husk has no default AppArmor profile of its own; name a profile loaded on the node \
             (Localhost) or ask for Unconfined"
        ))),
        ProfileType::Localhost => {
            // containerd takes the name with or without the prefix.
            let name = name.strip_prefix("localhost/").unwrap_or(name);
            if name.is_empty() {
                return Err(Status::invalid_argument(format!("{at}: a Localhost profile needs a name")));
            }
            husk_oci::lsm::apparmor_profile(name, &at).map_err(crate::agent::status_of)
        }
    }
}

/// SELinux labels a security context (`field`) asks for. On a node without SELinux they mean
/// nothing and are ignored (containerd's rule). husk does not label containers, so on a node
/// that runs SELinux they are refused rather than left unapplied.
fn selinux(options: Option<&cri::SeLinuxOption>, field: &str) -> Result<(), Status> {
    let asked = options.is_some_and(|o| [&o.user, &o.role, &o.r#type, &o.level].iter().any(|v| !v.is_empty()));
    if asked && husk_oci::lsm::selinux_enabled() {
        return Err(Status::failed_precondition(format!(
            "{field}: husk does not apply SELinux labels, and this node runs SELinux"
        )));
    }
    Ok(())
}

/// The container's seccomp profile, as Mesos' SeccompInfo or a profile file on the node.
/// Unset is RuntimeDefault (husk's default profile). Unconfined needs the agent's
/// --allow-unconfined-seccomp, as for any launch.
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<(Option<mesos::SeccompInfo>, Option<String>), Status> {
    let unconfined = Some(mesos::SeccompInfo { unconfined: Some(true), profile_name: None });
    let localhost = |path: &str, field: &str| {
        if !path.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "{field}: `{}` must be an absolute path on the node",
                path.escape_debug()
            )));
        }
        Ok((None, Some(path.to_string())))
    };
    match &sc.seccomp {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok((None, None)),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok((unconfined, None)),
            Ok(cri::security_profile::ProfileType::Localhost) => {
                localhost(&p.localhost_ref, "config.linux.security_context.seccomp.localhost_ref")
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "config.linux.security_context.seccomp.profile_type: unknown type {}",
                p.profile_type
            ))),
        },
        // The field before `seccomp` (CRI < 1.23): "runtime/default", "unconfined",
        // "localhost/<path>".
        None => match sc.seccomp_profile_path.as_str() {
            "" | "runtime/default" | "docker/default" => Ok((None, None)),
            "unconfined" => Ok((unconfined, None)),
            p => match p.strip_prefix("localhost/") {
                Some(path) => localhost(path, "config.linux.security_context.seccomp_profile_path"),
                None => Err(Status::invalid_argument(format!(
                    "config.linux.security_context.seccomp_profile_path: `{}` is none of runtime/default, \
                     unconfined, localhost/<path>",
                    p.escape_debug()
                ))),
            },
        },
    }
}

/// The CRI state of a container, its termination and when it started.
fn state_of(cri: &Cri, r: &ContainerRecord) -> (cri::ContainerState, Option<pb::ContainerTermination>, i64) {
    if let Some(e) = &r.start_error {
        let t = pb::ContainerTermination { message: Some(e.clone()), exit_code: Some(128), ..Default::default() };
        return (cri::ContainerState::ContainerExited, Some(t), 0);
    }
    if !r.started {
        return (cri::ContainerState::ContainerCreated, None, 0);
    }
    match cri.agent.get(&r.husk_key()) {
        Ok(c) => {
            let started = c.checkpoint.lock().unwrap().created_ns;
            match c.terminated() {
                Some(t) => (cri::ContainerState::ContainerExited, Some(t), started),
                None => (cri::ContainerState::ContainerRunning, None, started),
            }
        }
        // Removed through the husk API.
        Err(_) => (cri::ContainerState::ContainerUnknown, None, 0),
    }
}

fn exit_code(t: &pb::ContainerTermination) -> i32 {
    match (t.exit_code, t.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 128 + libc::SIGKILL,
    }
}

pub(super) fn status_of(cri: &Cri, r: &ContainerRecord) -> cri::ContainerStatus {
    let (state, t, started) = state_of(cri, r);
    let launch_failed = t.as_ref().is_some_and(|t| {
        t.reason.is_some() && t.reason() == husk_proto::mesos::v1::task_status::Reason::ContainerLaunchFailed
    });
    let (reason, message) = match (&t, &r.start_error) {
        (_, Some(e)) => ("StartError".to_string(), e.clone()),
        (Some(t), None) if launch_failed => ("StartError".to_string(), t.message().to_string()),
        (Some(t), None) if t.oom_killed() => ("OOMKilled".to_string(), t.message().to_string()),
        (Some(t), None) if exit_code(t) == 0 => ("Completed".to_string(), String::new()),
        (Some(t), None) => ("Error".to_string(), t.message().to_string()),
        (None, None) => (String::new(), String::new()),
    };
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: state as i32,
        created_at: r.created_at_ns,
        started_at: t.as_ref().and_then(|t| t.started_at_ns).filter(|s| *s > 0).unwrap_or(started),
        finished_at: t.as_ref().and_then(|t| t.finished_at_ns).unwrap_or(0),
        exit_code: match launch_failed {
            true => 128,
            false => t.as_ref().map(exit_code).unwrap_or(0),
        },
        image: Some(cri::ImageSpec { image: r.image.clone(), ..Default::default() }),
        image_ref: r.image_ref.clone(),
        reason,
        message,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r.log_path.clone(),
        ..Default::default()
    }
}

/// The pod's IPs, as CNI ADD gave them (none on the host network or once it is stopped).
fn pod_network(cri: &Cri, p: &PodRecord) -> cri::PodSandboxNetworkStatus {
    let ips: Vec<String> = match cri.agent.get(&p.id) {
        Ok(c) => {
            cri.agent.network_infos(&c).into_iter().flat_map(|n| n.ip_addresses).filter_map(|a| a.ip_address).collect()
        }
        Err(_) => Vec::new(),
    };
    let mut ips = ips.into_iter();
    cri::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
    }
}

pub(super) fn pod_status_of(cri: &Cri, p: &PodRecord) -> cri::PodSandboxStatus {
    let ns = pod_namespaces(&p.config).cloned().unwrap_or_default();
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: cri.pod_state(p) as i32,
        created_at: p.created_at_ns,
        network: Some(pod_network(cri, p)),
        linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

fn check_metadata(name: &str, field: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    if name.len() > 253 || name.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{field}: `{}` must be at most 253 characters without control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Waits (bounded) until a husk container has terminated.
async fn terminated(cri: &Cri, key: &str, within: Duration) -> Result<(), Status> {
    let Ok(c) = cri.agent.get(key) else { return Ok(()) };
    let mut rx = c.termination.subscribe();
    let waited = tokio::time::timeout(within, rx.wait_for(|t| t.is_some())).await.is_ok();
    match waited {
        true => Ok(()),
        false => Err(Status::deadline_exceeded(format!("`{key}` did not terminate within {within:?}"))),
    }
}

/// Kills a husk container (SIGTERM first when `grace` is set) and waits until it has
/// terminated. A container that already terminated, or is gone, is fine.
async fn stop(cri: &Cri, key: &str, grace: Option<Duration>) -> Result<(), Status> {
    let Ok(c) = cri.agent.get(key) else { return Ok(()) };
    if c.terminated().is_some() {
        return Ok(());
    }
    match cri.agent.kill(key, None, grace).await {
        Ok(()) => {}
        // Terminated meanwhile, or already being destroyed: wait for the end below.
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {}
        Err(e) => return Err(e),
    }
    terminated(cri, key, grace.unwrap_or_default() + KILL_WAIT).await
}

/// NetworkReady: a CNI network to put pods on, with all its plugins installed.
fn network_condition(cni: &crate::agent::cni::Cni) -> cri::RuntimeCondition {
    let not_ready = |message: String| cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status: false,
        reason: "NetworkPluginNotReady".into(),
        message,
    };
    let Some(net) = cni.networks().into_iter().next() else {
        return not_ready(format!("no CNI network configuration in {}", cni.conf_dir.display()));
    };
    match cni.missing_plugin(&net) {
        Some(p) => not_ready(format!(
            "CNI network `{}` ({}) needs plugin `{p}`, which is in none of {:?}",
            net.name,
            net.file.display(),
            cni.bin_dirs
        )),
        None => cri::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
    }
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: super::CRI_VERSION.into(),
            runtime_name: super::RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: super::RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config: is required"))?;
        let meta = config.metadata.clone().ok_or_else(|| Status::invalid_argument("config.metadata: is required"))?;
        check_metadata(&meta.name, "config.metadata.name")?;
        check_metadata(&meta.namespace, "config.metadata.namespace")?;
        if !req.runtime_handler.is_empty() && req.runtime_handler != "husk" {
            return Err(Status::invalid_argument(format!(
                "runtime_handler: `{}` is not a handler of this runtime (only `husk` or empty)",
                req.runtime_handler.escape_debug()
            )));
        }
        let resolv = resolv_conf(config.dns_config.as_ref())?;
        let _ops = cri.ops.lock().await;
        {
            let pods = cri.pods.lock().unwrap();
            if let Some(p) = pods.values().find(|p| {
                p.config.metadata.as_ref().is_some_and(|m| {
                    m.name == meta.name
                        && m.namespace == meta.namespace
                        && m.uid == meta.uid
                        && m.attempt == meta.attempt
                })
            }) {
                return Err(Status::already_exists(format!(
                    "config.metadata: pod {}/{} (uid `{}`, attempt {}) already exists as {}",
                    meta.namespace, meta.name, meta.uid, meta.attempt, p.id
                )));
            }
        }
        let id = cri.new_id()?;
        let launch = pod_launch(cri, &id, &config)?;
        let mut record = PodRecord {
            id: id.clone(),
            config,
            created_at_ns: now_ns(),
            runtime_handler: req.runtime_handler,
            sandbox_dir: String::new(),
        };
        // Recorded first: a crash during the launch leaves a NOTREADY pod the kubelet removes,
        // never a container no record claims.
        cri.save_pod(&record)?;
        let launched = Service(cri.agent.clone()).launch(Request::new(launch)).await;
        let launched = match launched {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let _ = cri.agent.remove(&id).await;
                let _ = cri.forget_pod(&id);
                return Err(e);
            }
        };
        record.sandbox_dir = launched.sandbox_directory.unwrap_or_default();
        let written = husk_oci::checkpoint::write_atomic(
            &std::path::Path::new(&record.sandbox_dir).join("resolv.conf"),
            resolv.as_bytes(),
            0o644,
        );
        if let Err(e) = written
            .map_err(|e| Status::internal(format!("writing the pod's resolv.conf: {e}")))
            .and_then(|_| cri.save_pod(&record))
        {
            let _ = stop(cri, &id, None).await;
            let _ = cri.agent.remove(&id).await;
            let _ = cri.forget_pod(&id);
            return Err(e);
        }
        tracing::info!(pod = %id, name = %meta.name, namespace = %meta.namespace, "pod sandbox ready");
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let cri = &self.0;
        let pod = match cri.pod(&req.into_inner().pod_sandbox_id, "pod_sandbox_id") {
            Ok(p) => p,
            // Idempotent: a pod that is gone is stopped.
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(Response::new(cri::StopPodSandboxResponse {})),
            Err(e) => return Err(e),
        };
        for c in cri.containers_of(&pod.id) {
            stop(cri, &c.husk_key(), None).await?;
        }
        stop(cri, &pod.id, None).await?;
        // The pod's network is gone when this answers OK (the kubelet counts on its IP being
        // free): a DEL that failed at the pod's end is tried again, and its failure returned.
        match cri.agent.release_network(&pod.id).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(Status::unavailable(format!("pod sandbox `{}`: {}", pod.id, e.message()))),
        }
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let cri = &self.0;
        let pod = match cri.pod(&req.into_inner().pod_sandbox_id, "pod_sandbox_id") {
            Ok(p) => p,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(Response::new(cri::RemovePodSandboxResponse {})),
            Err(e) => return Err(e),
        };
        let _ops = cri.ops.lock().await;
        stop(cri, &pod.id, None).await?;
        // Removing the pod's husk container removes its nested containers' too.
        match cri.agent.remove(&pod.id).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e),
        }
        for c in cri.containers_of(&pod.id) {
            cri.forget_container(&c.id)?;
            cri.event(&c, cri::ContainerEventType::ContainerDeletedEvent);
        }
        cri.forget_pod(&pod.id)?;
        tracing::info!(pod = %pod.id, "pod sandbox removed");
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let pod = cri.pod(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let mut info = HashMap::new();
        if req.verbose {
            let detail = serde_json::json!({
                "huskContainerId": pod.id,
                "sandboxDirectory": pod.sandbox_dir,
                "config": pod.config,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        let containers_statuses = match req.verbose {
            true => cri.containers_of(&pod.id).iter().map(|c| status_of(cri, c)).collect(),
            false => vec![],
        };
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(pod_status_of(cri, &pod)),
            info,
            containers_statuses,
            timestamp: now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let pods: Vec<PodRecord> = cri.pods.lock().unwrap().values().cloned().collect();
        let mut items: Vec<cri::PodSandbox> = pods
            .iter()
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| matches(&p.config.labels, &filter.label_selector))
            .map(|p| cri::PodSandbox {
                id: p.id.clone(),
                metadata: p.config.metadata.clone(),
                state: cri.pod_state(p) as i32,
                created_at: p.created_at_ns,
                labels: p.config.labels.clone(),
                annotations: p.config.annotations.clone(),
                runtime_handler: p.runtime_handler.clone(),
            })
            .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == p.state))
            .collect();
        items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config: is required"))?;
        let meta = config.metadata.clone().ok_or_else(|| Status::invalid_argument("config.metadata: is required"))?;
        check_metadata(&meta.name, "config.metadata.name")?;
        let wanted = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if wanted.is_empty() {
            return Err(Status::invalid_argument("config.image.image: is required"));
        }
        let _ops = cri.ops.lock().await;
        let mut pod = cri.pod(&req.pod_sandbox_id, "pod_sandbox_id")?;
        if cri.pod_state(&pod) != cri::PodSandboxState::SandboxReady {
            return Err(Status::failed_precondition(format!("pod_sandbox_id: pod {} is not ready", pod.id)));
        }
        // A RunPodSandbox whose caller went away may not have recorded the directory.
        if pod.sandbox_dir.is_empty() {
            pod.sandbox_dir = cri.agent.get(&pod.id)?.sandbox().display().to_string();
        }
        if let Some(other) = cri
            .containers_of(&pod.id)
            .iter()
            .find(|c| c.config.metadata.as_ref().is_some_and(|m| m.name == meta.name && m.attempt == meta.attempt))
        {
            return Err(Status::already_exists(format!(
                "config.metadata: container `{}` (attempt {}) already exists in pod {} as {}",
                meta.name, meta.attempt, pod.id, other.id
            )));
        }
        let (name, image_ref, image_config) = super::image::local(cri, &wanted).await?;
        let log_path = match (pod.config.log_directory.as_str(), config.log_path.as_str()) {
            ("", _) | (_, "") => String::new(),
            (dir, rel) => {
                if rel.starts_with('/') || rel.split('/').any(|p| p == ".." || p == ".") {
                    return Err(Status::invalid_argument(format!(
                        "config.log_path: `{}` must be relative to the pod's log directory, without `.` or `..`",
                        rel.escape_debug()
                    )));
                }
                if !dir.starts_with('/') || dir.split('/').any(|p| p == ".." || p == ".") || dir.contains('\0') {
                    return Err(Status::invalid_argument(format!(
                        "sandbox_config.log_directory: `{}` must be an absolute path without `.` or `..`",
                        dir.escape_debug()
                    )));
                }
                let path = std::path::Path::new(dir).join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Status::internal(format!("creating {}: {e}", parent.display())))?;
                }
                path.display().to_string()
            }
        };
        let id = cri.new_id()?;
        // Started from the image it was created from (its digest), even if the name moves to
        // another image in between.
        let mut pinned = husk_oci::image::Reference::parse(&name)
            .map_err(|e| Status::internal(format!("the image's name `{name}`: {e}")))?;
        pinned.digest = Some(image_ref.clone());
        // `repo@digest`: a pull at start must not store `repo:tag@digest` as a name of its own.
        pinned.tag = None;
        let launch = container_launch(&pod, &id, &config, &pinned.to_string(), &image_config, &log_path)?;
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config,
            created_at_ns: now_ns(),
            image: wanted,
            image_ref,
            log_path,
            launch,
            started: false,
            start_error: None,
        };
        cri.save_container(&record)?;
        cri.event(&record, cri::ContainerEventType::ContainerCreatedEvent);
        Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let cri = &self.0;
        let mut r = {
            let _ops = cri.ops.lock().await;
            let mut r = cri.container(&req.into_inner().container_id, "container_id")?;
            if r.started || r.start_error.is_some() {
                return Err(Status::failed_precondition(format!(
                    "container_id: container {} was already started; create a new one",
                    r.id
                )));
            }
            r.started = true;
            cri.save_container(&r)?;
            r
        };
        match Service(cri.agent.clone()).launch(Request::new(r.launch.clone())).await {
            Ok(_) => {
                cri.event(&r, cri::ContainerEventType::ContainerStartedEvent);
                cri.follow(&r);
                Ok(Response::new(cri::StartContainerResponse {}))
            }
            Err(e) => {
                // Failed once the husk container existed: it has terminated, and says so.
                cri.follow(&r);
                // Refused before the husk container existed: the record keeps why.
                if cri.agent.get(&r.husk_key()).is_err() {
                    r.start_error = Some(e.message().to_string());
                    let _ = cri.save_container(&r);
                }
                Err(e)
            }
        }
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = match cri.container(&req.container_id, "container_id") {
            Ok(r) => r,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(Response::new(cri::StopContainerResponse {})),
            Err(e) => return Err(e),
        };
        let grace = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        stop(cri, &r.husk_key(), grace).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let cri = &self.0;
        let r = match cri.container(&req.into_inner().container_id, "container_id") {
            Ok(r) => r,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(Response::new(cri::RemoveContainerResponse {})),
            Err(e) => return Err(e),
        };
        let _ops = cri.ops.lock().await;
        let key = r.husk_key();
        stop(cri, &key, None).await?;
        match cri.agent.remove(&key).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e),
        }
        cri.forget_container(&r.id)?;
        cri.event(&r, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let mut containers: Vec<cri::Container> =
            records_matching(cri, &filter.id, &filter.pod_sandbox_id, &filter.label_selector)
                .iter()
                .map(|r| {
                    let (state, _, _) = state_of(cri, r);
                    cri::Container {
                        id: r.id.clone(),
                        pod_sandbox_id: r.pod_id.clone(),
                        metadata: r.config.metadata.clone(),
                        image: Some(cri::ImageSpec { image: r.image.clone(), ..Default::default() }),
                        image_ref: r.image_ref.clone(),
                        state: state as i32,
                        created_at: r.created_at_ns,
                        labels: r.config.labels.clone(),
                        annotations: r.config.annotations.clone(),
                        ..Default::default()
                    }
                })
                .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state))
                .collect();
        containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = cri.container(&req.container_id, "container_id")?;
        let mut info = HashMap::new();
        if req.verbose {
            let detail = serde_json::json!({
                "huskContainerId": r.husk_key(),
                "podSandboxId": r.pod_id,
                "launch": r.launch,
                "config": r.config,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(status_of(cri, &r)), info }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = cri.container(&req.container_id, "container_id")?;
        let (resources, limits) = resources(req.linux.as_ref())?;
        Service(cri.agent.clone())
            .update(Request::new(pb::UpdateRequest {
                container_id: r.husk_id(),
                resources,
                limits,
                allow_memory_limit_decrease: Some(true),
            }))
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let cri = &self.0;
        let r = cri.container(&req.into_inner().container_id, "container_id")?;
        if r.log_path.is_empty() {
            return Err(Status::failed_precondition(format!("container_id: container {} has no log path", r.id)));
        }
        cri.agent.reopen_log(&r.husk_key()).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = cri.container(&req.container_id, "container_id")?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        let out = Service(cri.agent.clone())
            .exec_sync(Request::new(pb::ExecSyncRequest {
                process: pb::ExecProcess {
                    container_id: r.husk_id(),
                    command: mesos::CommandInfo {
                        shell: Some(false),
                        value: req.cmd.first().cloned(),
                        arguments: req.cmd.clone(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                timeout: (req.timeout > 0).then(|| mesos::DurationInfo { nanoseconds: req.timeout * 1_000_000_000 }),
                stdin: None,
            }))
            .await?
            .into_inner();
        if out.timed_out() {
            return Err(Status::deadline_exceeded(format!(
                "command {:?} timed out after {}s and was killed",
                req.cmd, req.timeout
            )));
        }
        let exit = out.exit.unwrap_or_default();
        let exit_code = match (exit.exit_code, exit.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => -1,
        };
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout.unwrap_or_default(),
            stderr: out.stderr.unwrap_or_default(),
            exit_code,
        }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = cri.container(&req.container_id, "container_id")?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        let opts = Opts { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
        opts.check()?;
        running(cri, &r)?;
        let url = cri.streaming.url(StreamRequest::Exec { container: r.husk_id(), cmd: req.cmd, opts })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let r = cri.container(&req.container_id, "container_id")?;
        let opts = Opts { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
        opts.check()?;
        running(cri, &r)?;
        if req.stdin && !r.config.stdin && !r.config.tty {
            return Err(Status::failed_precondition(format!(
                "stdin: container {} was created without stdin (config.stdin) or a terminal (config.tty)",
                r.id
            )));
        }
        let close_stdin = r.config.stdin_once && !r.config.tty;
        let url = cri.streaming.url(StreamRequest::Attach { container: r.husk_key(), opts, close_stdin })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let p = cri.pod(&req.pod_sandbox_id, "pod_sandbox_id")?;
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!("port: {bad} is not a TCP port (1-65535)")));
        }
        if cri.pod_state(&p) != cri::PodSandboxState::SandboxReady {
            return Err(Status::failed_precondition(format!("pod_sandbox_id: pod {} is not ready", p.id)));
        }
        let url = cri.streaming.url(StreamRequest::PortForward { pod: p.id.clone() })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let cri = &self.0;
        let r = cri.container(&req.into_inner().container_id, "container_id")?;
        let stats = usage(cri, &r.husk_id()).await?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(container_stats(&r, stats)) }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for r in records_matching(cri, &filter.id, &filter.pod_sandbox_id, &filter.label_selector)
            .iter()
            .filter(|r| state_of(cri, r).0 == cri::ContainerState::ContainerRunning)
        {
            // A container that ends meanwhile is left out.
            if let Ok(s) = usage(cri, &r.husk_id()).await {
                stats.push(container_stats(r, s));
            }
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let cri = &self.0;
        let pod = cri.pod(&req.into_inner().pod_sandbox_id, "pod_sandbox_id")?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(pod_stats(cri, &pod).await?) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let cri = &self.0;
        let filter = req.into_inner().filter.unwrap_or_default();
        let pods: Vec<PodRecord> = cri.pods.lock().unwrap().values().cloned().collect();
        let mut stats = Vec::new();
        for p in pods
            .iter()
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| matches(&p.config.labels, &filter.label_selector))
            .filter(|p| cri.pod_state(p) == cri::PodSandboxState::SandboxReady)
        {
            if let Ok(s) = pod_stats(cri, p).await {
                stats.push(s);
            }
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr =
            req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        tracing::info!(pod_cidr = %cidr, "the kubelet updated the runtime config");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        let cri = &self.0;
        let conditions = vec![
            cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() },
            network_condition(&cri.agent.settings.cni),
        ];
        let mut info = HashMap::new();
        if req.into_inner().verbose {
            let detail = serde_json::json!({
                "workDir": cri.agent.settings.work_dir,
                "pods": cri.pods.lock().unwrap().len(),
                "containers": cri.containers.lock().unwrap().len(),
            });
            info.insert("config".to_string(), detail.to_string());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            }],
            features: Some(cri::RuntimeFeatures::default()),
        }))
    }

    type GetContainerEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio_stream::StreamExt;
        let rx = self.0.events.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }
}

/// The container records a list filter selects: id and pod id by prefix, labels exactly.
/// The CRI container runs (a stream can only reach a running process).
fn running(cri: &Cri, r: &ContainerRecord) -> Result<(), Status> {
    match state_of(cri, r).0 {
        cri::ContainerState::ContainerRunning => Ok(()),
        state => Err(Status::failed_precondition(format!(
            "container_id: container {} is {}, not running",
            r.id,
            state.as_str_name()
        ))),
    }
}

fn records_matching(cri: &Cri, id: &str, pod: &str, labels: &HashMap<String, String>) -> Vec<ContainerRecord> {
    let records = cri.containers.lock().unwrap();
    records
        .values()
        .filter(|r| r.id.starts_with(id) && r.pod_id.starts_with(pod) && matches(&r.config.labels, labels))
        .cloned()
        .collect()
}

async fn usage(cri: &Cri, id: &mesos::ContainerId) -> Result<mesos::ResourceStatistics, Status> {
    let r = Service(cri.agent.clone()).usage(Request::new(pb::UsageRequest { container_id: id.clone() })).await?;
    Ok(r.into_inner().statistics.unwrap_or_default())
}

fn cpu_and_memory(s: &mesos::ResourceStatistics) -> (cri::CpuUsage, cri::MemoryUsage) {
    let ts = (s.timestamp * 1e9) as i64;
    let cpu_ns = ((s.cpus_user_time_secs.unwrap_or(0.0) + s.cpus_system_time_secs.unwrap_or(0.0)) * 1e9) as u64;
    let usage = s.mem_total_bytes.unwrap_or(0);
    let cpu = cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu_ns }),
        usage_nano_cores: None,
    };
    let memory = cri::MemoryUsage {
        timestamp: ts,
        // The kubelet's working set: usage without the page cache it can drop.
        working_set_bytes: Some(cri::UInt64Value { value: usage.saturating_sub(s.mem_cache_bytes.unwrap_or(0)) }),
        usage_bytes: Some(cri::UInt64Value { value: usage }),
        rss_bytes: s.mem_rss_bytes.map(|value| cri::UInt64Value { value }),
        ..Default::default()
    };
    (cpu, memory)
}

fn container_stats(r: &ContainerRecord, s: mesos::ResourceStatistics) -> cri::ContainerStats {
    let (cpu, memory) = cpu_and_memory(&s);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        ..Default::default()
    }
}

async fn pod_stats(cri: &Cri, p: &PodRecord) -> Result<cri::PodSandboxStats, Status> {
    // The pod's cgroup holds its containers' (hierarchical accounting).
    let s = usage(cri, &mesos::ContainerId { value: p.id.clone(), parent: None }).await?;
    let (cpu, memory) = cpu_and_memory(&s);
    let mut containers = Vec::new();
    for r in cri.containers_of(&p.id) {
        if state_of(cri, &r).0 == cri::ContainerState::ContainerRunning {
            if let Ok(cs) = usage(cri, &r.husk_id()).await {
                containers.push(container_stats(&r, cs));
            }
        }
    }
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: p.id.clone(),
            metadata: p.config.metadata.clone(),
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            process: s.processes.map(|n| cri::ProcessUsage {
                timestamp: (s.timestamp * 1e9) as i64,
                process_count: Some(cri::UInt64Value { value: n as u64 }),
            }),
            containers,
            ..Default::default()
        }),
        windows: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> oci_spec::image::ImageConfiguration {
        let config = oci_spec::image::ConfigBuilder::default()
            .entrypoint(entrypoint.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        oci_spec::image::ImageConfigurationBuilder::default().config(config).build().unwrap()
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kubernetes_command_rules() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(argv(&config(&[], &[]), &img), ["/entry", "default"]);
        assert_eq!(argv(&config(&[], &["x"]), &img), ["/entry", "x"]);
        assert_eq!(argv(&config(&["/bin/sh"], &[]), &img), ["/bin/sh"], "a command drops the image's Cmd too");
        assert_eq!(argv(&config(&["/bin/sh"], &["-c", "true"]), &img), ["/bin/sh", "-c", "true"]);
        assert!(argv(&config(&[], &[]), &image(&[], &[])).is_empty());
    }

    #[test]
    fn resolv_conf_from_the_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.10.10.10".into()],
            searches: vec!["google.com".into()],
            options: vec!["ndots:8".into()],
        };
        assert_eq!(resolv_conf(Some(&dns)).unwrap(), "nameserver 10.10.10.10\nsearch google.com\noptions ndots:8\n");
        let bad = cri::DnsConfig { servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()], ..Default::default() };
        let e = resolv_conf(Some(&bad)).unwrap_err();
        assert!(e.message().starts_with("config.dns_config.servers:"), "{}", e.message());
    }

    #[test]
    fn kubelet_resources_map_to_mesos() {
        let (req, limits) = resources(Some(&cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(husk_oci::resources::to_text(&req), "cpus:0.5;mem:64");
        assert_eq!(limits["cpus"].value, 0.5);
        assert_eq!(limits["mem"].value, 64.0);
        let e = resources(Some(&cri::LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() }))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
