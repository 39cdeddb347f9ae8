//! The operator's settings that shape every translation, and where one container's files are.
use std::path::PathBuf;

use crate::caps::{CapSet, DEFAULT_ALLOWED};

/// The default `PATH` of a container whose launch does not set one (Mesos uses the host default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the sandbox appears inside a container that has its own rootfs (Mesos'
/// `--sandbox_directory`).
pub const DEFAULT_SANDBOX_DIRECTORY: &str = "/mnt/mesos/sandbox";

/// Agent-wide translation settings (each is an agent flag).
#[derive(Debug, Clone)]
pub struct Config {
    /// Mount point of the sandbox inside containers with a rootfs.
    pub sandbox_directory: PathBuf,
    /// Cgroup path prefix of every container (`/<root>/<id>`).
    pub cgroup_root: String,
    /// Capabilities a container may have; requests are intersected with this set.
    pub allowed_capabilities: CapSet,
    /// pids.max of every container (`None`: unlimited).
    pub default_pids_limit: Option<i64>,
    /// Apply a CFS quota equal to the cpu request when the launch gives no cpu limit.
    pub enable_cfs: bool,
    /// Whether a launch may turn seccomp off with `SeccompInfo.unconfined`.
    pub allow_unconfined_seccomp: bool,
    /// Directory of named seccomp profiles (OCI `linux.seccomp` JSON, `<name>.json`), for
    /// `SeccompInfo.profile_name`.
    pub seccomp_profile_dir: Option<PathBuf>,
    /// Size of a private `/dev/shm` when the launch does not give `LinuxInfo.shm_size`, in MB.
    pub default_shm_size_mb: u32,
    /// Set `no_new_privileges` on every container (Mesos' `linux/nnp` isolator).
    pub no_new_privileges: bool,
    /// Whether a top-level container may share the host's pid namespace
    /// (`LinuxInfo.share_pid_namespace`); the opposite of Mesos'
    /// `--disallow_sharing_agent_pid_namespace`, and off by default.
    pub allow_host_pid_namespace: bool,
    /// Whether a top-level container may share the host's IPC namespace and `/dev/shm`
    /// (`ipc_mode: SHARE_PARENT`); off by default.
    pub allow_host_ipc_namespace: bool,
    /// Whether a launch may ask for a privileged container (`SecurityOptions.privileged`); off
    /// by default.
    pub allow_privileged: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sandbox_directory: PathBuf::from(DEFAULT_SANDBOX_DIRECTORY),
            cgroup_root: "husk".to_string(),
            allowed_capabilities: DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect(),
            default_pids_limit: Some(4096),
            enable_cfs: false,
            allow_unconfined_seccomp: false,
            seccomp_profile_dir: None,
            default_shm_size_mb: 64,
            no_new_privileges: true,
            allow_host_pid_namespace: false,
            allow_host_ipc_namespace: false,
            allow_privileged: false,
        }
    }
}

/// Where one container's pieces are on the host.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The sandbox on the host (`MESOS_SANDBOX` of a host-rootfs container). Must exist.
    pub sandbox_dir: PathBuf,
    /// The container's root filesystem, or `None` for the host filesystem (Mesos' default for a
    /// launch without an image).
    pub rootfs: Option<PathBuf>,
    /// For a nested container: what it shares with its parent.
    pub parent: Option<ParentContext>,
    /// Variables the agent supplies (executor environment), below the user's in precedence.
    pub agent_environment: Vec<(String, String)>,
    /// For a top-level container on a named network: the network namespace it joins (one the
    /// agent made and pinned for CNI), instead of a new one.
    pub network_ns: Option<PathBuf>,
}

/// What a nested container needs of its parent: its sandbox, its namespaces (as
/// `/proc/<pid>/ns/<type>` paths of its init) and its cgroup path.
#[derive(Debug, Clone, Default)]
pub struct ParentContext {
    pub sandbox_dir: PathBuf,
    pub net_ns: PathBuf,
    pub uts_ns: PathBuf,
    pub pid_ns: PathBuf,
    pub ipc_ns: PathBuf,
    pub cgroups_path: String,
    /// Whether the parent is privileged: a child's device cgroup cannot allow more than its
    /// parent's, so only a privileged parent can hold a privileged child.
    pub privileged: bool,
}
