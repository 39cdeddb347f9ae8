//! The agent's settings: built-in defaults, overridden by the config file (TOML), overridden by
//! flags.
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Flags; every one may also be set in the config file under the same name with `_` for `-`.
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// Config file (TOML). Missing is fine when it is the default path.
    #[arg(long, value_name = "FILE", default_value = "/etc/husk/agent.toml")]
    pub config: PathBuf,
    /// Work directory: checkpoints, bundles and sandboxes (survives reboots).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Runtime directory: shims and their sockets (a tmpfs, cleared by a reboot).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Where the API listens: `unix:///path/to/socket` (default `unix:///run/husk/husk.sock`).
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// Also serve the API over TCP at HOST:PORT, with mutual TLS (needs --tls-cert, --tls-key and
    /// --tls-client-ca: only clients with a certificate from that CA get in).
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp_listen: Option<String>,
    /// The agent's TLS certificate chain (PEM) for --tcp-listen.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign the certificates of clients allowed over TCP.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Where the Kubernetes CRI (runtime.v1 RuntimeService and ImageService) listens:
    /// `unix:///path/to/socket`, or `none` to not serve it. Default: `cri.sock` beside the API
    /// socket (`unix:///run/husk/cri.sock`). Same mode, group and admin group as the API socket.
    #[arg(long, value_name = "ADDRESS")]
    pub cri_listen: Option<String>,
    /// Where the CRI streaming server (the URLs of Exec, Attach and PortForward) listens, as
    /// HOST:PORT; port 0 picks a free one at each start. The kubelet and crictl connect to it
    /// from the node. Default: 127.0.0.1:0.
    #[arg(long, value_name = "HOST:PORT")]
    pub streaming_listen: Option<String>,
    /// Close a streaming connection (exec, attach, port-forward) that neither sent nor received
    /// anything for this long, as the kubelet's streaming server does; its exec is killed.
    /// Mesos duration form (`30mins`, `4hrs`). Default: 4hrs.
    #[arg(long, value_name = "DURATION")]
    pub streaming_idle_timeout: Option<String>,
    /// CNI network configurations (`*.conflist`, `*.conf`, `*.json`), read at each launch. A
    /// launch's `NetworkInfo.name` picks one; CRI pods get the first in file-name order.
    /// Default: /etc/cni/net.d.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where CNI plugin binaries are looked for, `:`-separated. Default:
    /// /usr/lib/cni:/opt/cni/bin (Debian's containernetworking-plugins, then upstream's).
    #[arg(long, value_name = "DIRS")]
    pub cni_bin_dir: Option<String>,
    /// Mode of the API socket (octal).
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Group owning the API socket (name or gid); its members may call the API.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Only root and members of GROUP (name or gid) may call the RPCs that change state (launch,
    /// kill, update, remove, exec, attach, sessions, image pull, import, removal and pruning);
    /// others who can open the socket may only read (status, list, wait, usage, watch, logs,
    /// info, version, list images). Checked against the credentials the kernel records for each
    /// connection. Unset: whoever can open the socket may call everything.
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Cgroup path prefix of every container (default `husk`). The agent owns it: cgroups below
    /// it that no container claims are destroyed at start (never ones whose name has a `.`,
    /// as every systemd unit's has).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<String>,
    /// Default OCI runtime: `husk` (built in), or `runc`, `crun` or `youki` found on PATH.
    #[arg(long, value_name = "RUNTIME")]
    pub runtime: Option<String>,
    /// Capabilities a container may have (comma-separated, e.g. `CHOWN,NET_RAW`). Privileged
    /// containers, which only --allow-privileged admits, get every capability the agent holds.
    #[arg(long, value_name = "CAPS", value_delimiter = ',')]
    pub allowed_capabilities: Option<Vec<String>>,
    /// pids.max of every container (0: unlimited).
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Where the sandbox appears inside containers with their own rootfs.
    #[arg(long, value_name = "PATH")]
    pub sandbox_directory: Option<PathBuf>,
    /// Let containers share the host's pid namespace (`LinuxInfo.share_pid_namespace`).
    #[arg(long)]
    pub allow_host_pid_namespace: bool,
    /// Let containers share the host's IPC namespace (`ipc_mode: SHARE_PARENT`).
    #[arg(long)]
    pub allow_host_ipc_namespace: bool,
    /// Let containers turn seccomp off (`SeccompInfo.unconfined`).
    #[arg(long)]
    pub allow_unconfined_seccomp: bool,
    /// Let launches ask for privileged containers (`security.privileged`, CRI `privileged`):
    /// every capability, every host device, writable /sys, no seccomp default. Such a
    /// container can take over the node.
    #[arg(long)]
    pub allow_privileged: bool,
    /// Run husk's init as pid 1 of every container (signal forwarding, orphan reaping).
    #[arg(long)]
    pub init: Option<bool>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// The husk-shim binary (default: beside husk-agent).
    #[arg(long, value_name = "FILE")]
    pub shim_binary: Option<PathBuf>,
    /// The node's resources for containers, Mesos' text form (`cpus:8;mem:30000;disk:100000`);
    /// what is not given is detected as Mesos detects it.
    #[arg(long, value_name = "RESOURCES")]
    pub resources: Option<String>,
    /// Admit launches beyond the node's unallocated resources.
    #[arg(long)]
    pub oversubscribe: bool,
    /// Where downloads of URIs with `cache: true` are kept (default: `<work dir>/fetch-cache`).
    #[arg(long, value_name = "DIR")]
    pub fetcher_cache_dir: Option<PathBuf>,
    /// Size cap of the fetcher cache in MB; least recently used entries go first (default 2048).
    #[arg(long, value_name = "MB")]
    pub fetcher_cache_size_mb: Option<u64>,
    /// Seconds a download may receive nothing before it fails (default 60).
    #[arg(long, value_name = "SECONDS")]
    pub fetcher_stall_timeout: Option<u64>,
    /// How long a terminated container's sandbox is kept before it is garbage collected, as
    /// Mesos' `--gc_delay` (e.g. `1weeks`, `12hrs`, `30s`; default 1weeks). The fuller the work
    /// dir's disk, the sooner: the delay is scaled by `1 - headroom - disk usage`.
    #[arg(long, value_name = "DURATION")]
    pub gc_delay: Option<String>,
    /// Fraction of the work dir's disk to keep free (0 to 1, default 0.1): with less free,
    /// terminated sandboxes are collected at once.
    #[arg(long, value_name = "FRACTION")]
    pub gc_disk_headroom: Option<f64>,
    /// Isolators, in the order they run (comma-separated; default: all of them). Leaving one
    /// out leaves its part out of every container, as in Mesos: filesystem/linux (required),
    /// cgroups/cpu, cgroups/mem, cgroups/pids, namespaces/pid, namespaces/ipc,
    /// linux/capabilities, linux/seccomp, linux/nnp, posix/rlimits, environment.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub isolation: Option<Vec<String>>,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`), e.g. `127.0.0.1:9464`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    /// How image containers get their root filesystem: `overlay` (default; layers shared, no
    /// copy) or `copy` (every layer copied, for filesystems overlayfs cannot use).
    #[arg(long, value_name = "BACKEND")]
    pub image_backend: Option<String>,
    /// A registry (`host:port` as in image names) to pull from over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Registry credentials: a Docker `config.json` (`auths`).
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// Keep setuid and setgid bits of image files (dropped by default; with no_new_privs they
    /// would not take effect anyway).
    #[arg(long)]
    pub image_keep_setuid: bool,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    work_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    listen: Option<String>,
    cri_listen: Option<String>,
    streaming_listen: Option<String>,
    streaming_idle_timeout: Option<String>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<String>,
    tcp_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    admin_group: Option<String>,
    cgroup_root: Option<String>,
    runtime: Option<String>,
    allowed_capabilities: Option<Vec<String>>,
    pids_limit: Option<i64>,
    sandbox_directory: Option<PathBuf>,
    allow_host_pid_namespace: Option<bool>,
    allow_host_ipc_namespace: Option<bool>,
    allow_unconfined_seccomp: Option<bool>,
    allow_privileged: Option<bool>,
    init: Option<bool>,
    log_level: Option<String>,
    log_format: Option<String>,
    shim_binary: Option<PathBuf>,
    resources: Option<String>,
    oversubscribe: Option<bool>,
    fetcher_cache_dir: Option<PathBuf>,
    fetcher_cache_size_mb: Option<u64>,
    fetcher_stall_timeout: Option<u64>,
    gc_delay: Option<String>,
    gc_disk_headroom: Option<f64>,
    metrics_address: Option<String>,
    isolation: Option<Vec<String>>,
    image_backend: Option<String>,
    insecure_registries: Option<Vec<String>>,
    registry_config: Option<PathBuf>,
    image_keep_setuid: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct TcpListen {
    pub addr: std::net::SocketAddr,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Vec<u8>,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    pub work_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    /// The CRI socket (None: the CRI is not served).
    pub cri_socket: Option<PathBuf>,
    /// The CRI streaming server's address.
    pub streaming_listen: std::net::SocketAddr,
    /// How long a streaming connection may stay silent both ways.
    pub streaming_idle_timeout: std::time::Duration,
    pub cni: super::cni::Cni,
    /// The TCP address and its TLS material (PEM: certificate chain, key, client CA).
    pub tcp: Option<TcpListen>,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    /// `(gid, name)` of `--admin-group`.
    pub admin_group: Option<(u32, String)>,
    pub runtime: String,
    pub init: bool,
    pub log_level: String,
    pub log_format: String,
    pub shim_binary: PathBuf,
    pub translation: husk_oci::Config,
    /// The node's resources for containers.
    pub total: husk_oci::resources::Amounts,
    pub oversubscribe: bool,
    pub fetcher_cache_dir: PathBuf,
    pub fetcher_cache_bytes: u64,
    pub fetcher_stall_timeout: std::time::Duration,
    pub gc_delay: std::time::Duration,
    pub gc_disk_headroom: f64,
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The isolators' names, in order (checked by [`super::isolators::parse`]).
    pub isolation: Vec<String>,
    pub image_backend: super::images::Backend,
    pub insecure_registries: Vec<String>,
    /// Registry credentials by registry (`user:password`).
    pub registry_auths: std::collections::HashMap<String, String>,
    pub image_keep_setuid: bool,
}

impl Settings {
    pub fn load(flags: &Flags) -> anyhow::Result<Settings> {
        let file = match std::fs::read_to_string(&flags.config) {
            Ok(text) => {
                toml::from_str::<FileConfig>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", flags.config.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && flags.config == Path::new("/etc/husk/agent.toml") => {
                FileConfig::default()
            }
            Err(e) => anyhow::bail!("{}: {e}", flags.config.display()),
        };
        let pick =
            |flag: Option<String>, file: Option<String>, default: &str| flag.or(file).unwrap_or_else(|| default.into());
        let listen = pick(flags.listen.clone(), file.listen, "unix:///run/husk/husk.sock");
        let socket = PathBuf::from(
            listen
                .strip_prefix("unix://")
                .ok_or_else(|| anyhow::anyhow!("--listen `{listen}`: only unix:// addresses are supported"))?,
        );
        let cri_socket = match flags.cri_listen.clone().or(file.cri_listen).as_deref() {
            Some("none") => None,
            Some(a) => Some(PathBuf::from(a.strip_prefix("unix://").ok_or_else(|| {
                anyhow::anyhow!("--cri-listen `{a}`: only unix:// addresses (or `none`) are supported")
            })?)),
            None => Some(socket.with_file_name("cri.sock")),
        };
        if cri_socket.as_ref() == Some(&socket) {
            anyhow::bail!("--cri-listen: the CRI needs a socket of its own, not the API's ({})", socket.display());
        }
        let tcp = match flags.tcp_listen.clone().or(file.tcp_listen) {
            None => None,
            Some(a) => {
                let addr = a.parse().map_err(|e| anyhow::anyhow!("--tcp-listen `{a}`: {e} (want HOST:PORT)"))?;
                let read = |what: &str, path: Option<PathBuf>| -> anyhow::Result<Vec<u8>> {
                    let path = path.ok_or_else(|| {
                        anyhow::anyhow!("--tcp-listen needs --{what}: the API runs containers as root, so TCP is served with mutual TLS only")
                    })?;
                    std::fs::read(&path).map_err(|e| anyhow::anyhow!("--{what} {}: {e}", path.display()))
                };
                Some(TcpListen {
                    addr,
                    cert_pem: read("tls-cert", flags.tls_cert.clone().or(file.tls_cert))?,
                    key_pem: read("tls-key", flags.tls_key.clone().or(file.tls_key))?,
                    client_ca_pem: read("tls-client-ca", flags.tls_client_ca.clone().or(file.tls_client_ca))?,
                })
            }
        };
        let mode_text = pick(flags.socket_mode.clone(), file.socket_mode, "0660");
        let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .map_err(|_| anyhow::anyhow!("--socket-mode `{mode_text}` is not an octal mode"))?;
        let admin_group = match flags.admin_group.clone().or(file.admin_group) {
            Some(g) => Some((group_id(&g, "--admin-group")?, g)),
            None => None,
        };
        let mut translation = husk_oci::Config::default();
        if let Some(root) = flags.cgroup_root.clone().or(file.cgroup_root) {
            let bad = root.trim_matches('/').is_empty()
                || root.split('/').any(|p| p == "." || p == "..")
                || root.contains(char::is_whitespace);
            if bad {
                anyhow::bail!(
                    "--cgroup-root `{root}`: must name a cgroup below the root (e.g. `husk`), without `.`/`..` parts \
                     or spaces; the agent destroys the cgroups below it that no container claims"
                );
            }
            translation.cgroup_root = root;
        }
        if let Some(caps) = flags.allowed_capabilities.clone().or(file.allowed_capabilities) {
            translation.allowed_capabilities = caps
                .iter()
                .map(|c| husk_oci::caps::parse_name(c, "--allowed-capabilities"))
                .collect::<Result<_, _>>()?;
        }
        if let Some(limit) = flags.pids_limit.or(file.pids_limit) {
            translation.default_pids_limit = (limit > 0).then_some(limit);
        }
        if let Some(dir) = flags.sandbox_directory.clone().or(file.sandbox_directory) {
            translation.sandbox_directory = dir;
        }
        translation.allow_host_pid_namespace =
            flags.allow_host_pid_namespace || file.allow_host_pid_namespace.unwrap_or(false);
        translation.allow_host_ipc_namespace =
            flags.allow_host_ipc_namespace || file.allow_host_ipc_namespace.unwrap_or(false);
        translation.allow_unconfined_seccomp =
            flags.allow_unconfined_seccomp || file.allow_unconfined_seccomp.unwrap_or(false);
        translation.allow_privileged = flags.allow_privileged || file.allow_privileged.unwrap_or(false);
        let shim_binary = flags.shim_binary.clone().or(file.shim_binary).unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("husk-shim")))
                .unwrap_or_else(|| PathBuf::from("husk-shim"))
        });
        let work_dir: PathBuf = flags.work_dir.clone().or(file.work_dir).unwrap_or_else(|| "/var/lib/husk".into());
        let given = match flags.resources.clone().or(file.resources) {
            Some(text) => husk_oci::resources::Amounts::of(&husk_oci::resources::parse(&text, "--resources")?),
            None => husk_oci::resources::Amounts::default(),
        };
        let total = husk_oci::resources::Amounts {
            cpus: given.cpus.or_else(detect_cpus),
            mem_mb: given.mem_mb.or_else(detect_mem_mb),
            disk_mb: given.disk_mb.or_else(|| detect_disk_mb(&work_dir)),
            ports: if given.ports.is_empty() { vec![(31000, 32000)] } else { given.ports },
        };
        let runtime = pick(flags.runtime.clone(), file.runtime, "husk");
        if !super::RUNTIMES.contains(&runtime.as_str()) {
            anyhow::bail!("--runtime `{runtime}` is not one of {}", super::RUNTIMES.join(", "));
        }
        let stall = flags.fetcher_stall_timeout.or(file.fetcher_stall_timeout).unwrap_or(60);
        if stall == 0 {
            anyhow::bail!("--fetcher-stall-timeout must be at least 1 second");
        }
        let gc_delay = flags.gc_delay.clone().or(file.gc_delay).unwrap_or_else(|| "1weeks".into());
        let gc_delay = super::sweep::parse_duration(&gc_delay).map_err(|e| anyhow::anyhow!("--gc-delay {e}"))?;
        let gc_disk_headroom = flags.gc_disk_headroom.or(file.gc_disk_headroom).unwrap_or(0.1);
        if !(0.0..=1.0).contains(&gc_disk_headroom) {
            anyhow::bail!("--gc-disk-headroom {gc_disk_headroom} must be between 0 and 1");
        }
        let streaming = pick(flags.streaming_listen.clone(), file.streaming_listen, "127.0.0.1:0");
        let streaming_listen =
            streaming.parse().map_err(|e| anyhow::anyhow!("--streaming-listen `{streaming}`: {e} (want HOST:PORT)"))?;
        let idle = pick(flags.streaming_idle_timeout.clone(), file.streaming_idle_timeout, "4hrs");
        let streaming_idle_timeout =
            super::sweep::parse_duration(&idle).map_err(|e| anyhow::anyhow!("--streaming-idle-timeout {e}"))?;
        if streaming_idle_timeout < std::time::Duration::from_secs(1) {
            anyhow::bail!("--streaming-idle-timeout {idle}: must be at least 1s");
        }
        let metrics_address = match flags.metrics_address.clone().or(file.metrics_address) {
            Some(a) => Some(a.parse().map_err(|e| anyhow::anyhow!("--metrics-address `{a}`: {e} (want HOST:PORT)"))?),
            None => None,
        };
        let isolation = flags
            .isolation
            .clone()
            .or(file.isolation)
            .unwrap_or_else(|| super::isolators::ALL.iter().map(|s| s.to_string()).collect());
        super::isolators::parse(&isolation)?;
        let image_backend = pick(flags.image_backend.clone(), file.image_backend, "overlay")
            .parse()
            .map_err(|e| anyhow::anyhow!("--image-backend: {e}"))?;
        let mut insecure_registries = flags.insecure_registries.clone();
        insecure_registries.extend(file.insecure_registries.unwrap_or_default());
        let registry_auths = match flags.registry_config.clone().or(file.registry_config) {
            Some(path) => super::registry::load_auths(&path).map_err(|e| anyhow::anyhow!("--registry-config {e}"))?,
            None => Default::default(),
        };
        Ok(Settings {
            image_backend,
            insecure_registries,
            registry_auths,
            image_keep_setuid: flags.image_keep_setuid || file.image_keep_setuid.unwrap_or(false),
            isolation,
            tcp,
            metrics_address,
            gc_delay,
            gc_disk_headroom,
            fetcher_cache_dir: flags
                .fetcher_cache_dir
                .clone()
                .or(file.fetcher_cache_dir)
                .unwrap_or_else(|| work_dir.join("fetch-cache")),
            fetcher_cache_bytes: flags.fetcher_cache_size_mb.or(file.fetcher_cache_size_mb).unwrap_or(2048) << 20,
            fetcher_stall_timeout: std::time::Duration::from_secs(stall),
            total,
            oversubscribe: flags.oversubscribe || file.oversubscribe.unwrap_or(false),
            work_dir,
            runtime_dir: flags.runtime_dir.clone().or(file.runtime_dir).unwrap_or_else(|| "/run/husk".into()),
            socket,
            cri_socket,
            streaming_listen,
            streaming_idle_timeout,
            cni: super::cni::Cni {
                conf_dir: flags.cni_conf_dir.clone().or(file.cni_conf_dir).unwrap_or_else(|| "/etc/cni/net.d".into()),
                bin_dirs: flags
                    .cni_bin_dir
                    .clone()
                    .or(file.cni_bin_dir)
                    .unwrap_or_else(|| "/usr/lib/cni:/opt/cni/bin".into())
                    .split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect(),
            },
            socket_mode,
            socket_group: flags.socket_group.clone().or(file.socket_group),
            admin_group,
            runtime,
            init: flags.init.or(file.init).unwrap_or(true),
            log_level: pick(flags.log_level.clone(), file.log_level, "info"),
            log_format: pick(flags.log_format.clone(), file.log_format, "text"),
            shim_binary,
            translation,
        })
    }
}

/// Mesos: the machine's cpus.
fn detect_cpus() -> Option<f64> {
    std::thread::available_parallelism().ok().map(|n| n.get() as f64)
}

/// Mesos: total memory less 1 GiB when there are at least 2 GiB, else half, in MB.
fn detect_mem_mb() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let mb = kb / 1024.0;
    Some(if mb >= 2048.0 { mb - 1024.0 } else { mb / 2.0 })
}

/// Mesos: the work dir's filesystem less 5 GiB when it has at least 10 GiB, else half, in MB.
fn detect_disk_mb(work_dir: &Path) -> Option<f64> {
    let probe = work_dir.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(probe).ok()?;
    let mb = st.blocks() as f64 * st.fragment_size() as f64 / (1024.0 * 1024.0);
    Some(if mb >= 10240.0 { mb - 5120.0 } else { mb / 2.0 })
}

/// A group given by name or number, as its gid.
pub fn group_id(group: &str, flag: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let found = nix::unistd::Group::from_name(group).map_err(|e| anyhow::anyhow!("{flag} `{group}`: {e}"))?;
    Ok(found.ok_or_else(|| anyhow::anyhow!("{flag}: no group `{group}`"))?.gid.as_raw())
}
