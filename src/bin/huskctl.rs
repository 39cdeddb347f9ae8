//! huskctl: the operator's command line for husk.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use husk::ctl::{self, Format};
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::{self as pb, LaunchRequest};
use husk_proto::mesos::v1::{container_info, environment, value, CommandInfo, ContainerId, ContainerInfo, Environment};

#[derive(Parser)]
#[command(name = "huskctl", version, about = "The operator's command line for husk, a node-level container runtime")]
struct Cli {
    /// The agent's API endpoint: `unix:///path/to/socket` or `https://host:port` (mutual TLS).
    #[arg(long, global = true, env = "HUSK_ENDPOINT", default_value = husk::client::DEFAULT_ENDPOINT)]
    endpoint: String,
    /// CA certificate (PEM) of an `https://` endpoint's agent.
    #[arg(long, global = true, env = "HUSK_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for an `https://` endpoint.
    #[arg(long, global = true, env = "HUSK_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// Client key (PEM) for an `https://` endpoint.
    #[arg(long, global = true, env = "HUSK_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds to wait for each answer of the agent (0: no limit). Following commands (run,
    /// wait, logs -f, stats) wait as long as their container lives.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the OCI bundle (config.json) that husk makes of a Mesos-style launch.
    ///
    /// The launch comes from a JSON file (-f: a Mesos LAUNCH_CONTAINER call, its bare
    /// launch_container object, or a Mesos TaskInfo) or from the flags and the command after
    /// `--`. Any OCI runtime runs the result: `runc run --bundle DIR ID`.
    #[command(after_help = "Examples:\n  \
        huskctl bundle --bundle /tmp/b --resources 'cpus:0.5;mem:64' -- echo hello\n  \
        runc run --bundle /tmp/b demo\n\n  \
        huskctl bundle --bundle /tmp/b --rootfs /srv/busybox -f launch.json")]
    Bundle(Box<BundleArgs>),
    /// Launch a container on the agent; unless -d, stream its output and exit with its status.
    #[command(after_help = "Examples:\n  \
        huskctl run -- echo hello\n  \
        huskctl run --id web -d --resources 'cpus:0.5;mem:128' -- 'python3 -m http.server'")]
    Run(Box<RunArgs>),
    /// Pull an image from its registry into the agent's store, with progress.
    #[command(after_help = "Examples:\n  huskctl pull busybox\n  huskctl pull localhost:5000/app:v1")]
    Pull {
        name: String,
        /// Print only the digest.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Import images from an archive on this node: an OCI image layout (directory or tar, as
    /// `skopeo copy` writes it) or a `docker save` archive.
    #[command(
        after_help = "Examples:\n  huskctl import busybox.tar\n  huskctl import ./layout --name localhost/busybox"
    )]
    Import {
        path: PathBuf,
        /// Name for an image the archive does not name (or a new name for its only image).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the agent's store.
    #[command(after_help = "Examples:\n  huskctl images\n  huskctl images -o json")]
    Images {
        /// Only digests.
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Remove images (names or digests); their content goes once no container uses it.
    #[command(after_help = "Examples:\n  huskctl rmi busybox\n  huskctl rmi -f 3f2a9c1b7d4e")]
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove the name even while a live container runs from the image.
        #[arg(short, long)]
        force: bool,
    },
    /// Remove every image no live container uses (Mesos PRUNE_IMAGES).
    #[command(after_help = "Example:\n  huskctl prune --exclude busybox")]
    Prune {
        /// Keep this image (name or digest; repeatable).
        #[arg(long = "exclude", value_name = "NAME")]
        excluded: Vec<String>,
    },
    /// Launch a container from a Mesos launch document and print its id (`run -d -f`).
    #[command(after_help = "Examples:\n  \
        huskctl launch -f launch.json\n  \
        huskctl launch -f task.json --id web-1")]
    Launch(LaunchArgs),
    /// List containers: the live ones, or all with -a.
    #[command(
        after_help = "Examples:\n  huskctl ps\n  huskctl ps -a --state terminated -q\n  huskctl ps --label team=web -o json"
    )]
    Ps(PsArgs),
    /// Show one container: state, command, resources, pid, termination, sandbox and bundle.
    #[command(after_help = "Example:\n  huskctl inspect web -o yaml")]
    Inspect {
        id: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        output: Format,
    },
    /// Print a container's output (stdout and stderr, from its sandbox).
    #[command(
        after_help = "Examples:\n  huskctl logs web\n  huskctl logs -f --tail 20 --stream stderr web\n  huskctl logs --since 10m web"
    )]
    Logs(LogsArgs),
    /// Resource usage: a table refreshed every --interval seconds, or one with --no-stream.
    #[command(after_help = "Examples:\n  huskctl stats\n  huskctl stats --no-stream -o json web")]
    Stats(StatsArgs),
    /// Stop containers: SIGTERM, SIGKILL after -t seconds, and wait until they terminated.
    #[command(after_help = "Example:\n  huskctl stop -t 30 web")]
    Stop {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
    },
    /// Send a signal to a container's init (default KILL).
    #[command(after_help = "Examples:\n  huskctl kill web\n  huskctl kill -s HUP web")]
    Kill {
        id: String,
        /// Signal: a name (TERM, SIGHUP) or a number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Remove terminated containers: sandbox, bundle and checkpoints (-f stops live ones first).
    #[command(after_help = "Examples:\n  huskctl rm web\n  huskctl rm -f $(huskctl ps -aq)")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Kill a live container first.
        #[arg(short, long)]
        force: bool,
    },
    /// Wait for a container to terminate and print its termination; exits with its status.
    #[command(after_help = "Example:\n  huskctl wait web; echo $?")]
    Wait {
        id: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        output: Format,
    },
    /// Change a live container's cpu and memory (memory only grows unless --allow-decrease).
    #[command(after_help = "Example:\n  huskctl update web --cpus 2 --mem 512")]
    Update {
        id: String,
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory in MB.
        #[arg(long)]
        mem: Option<f64>,
        #[arg(long)]
        allow_decrease: bool,
    },
    /// The node: resources (total, allocated, available), runtime, cgroup mode, isolators.
    Info {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Versions of huskctl and of the agent (when it answers).
    Version {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Look at shims directly, through the runtime dir and their own sockets (works while the
    /// agent is down).
    #[command(subcommand)]
    Shim(ShimCommand),
    /// Run a command inside a running container (its namespaces, cgroups and root), exiting
    /// with its status.
    #[command(after_help = "Examples:\n  huskctl exec web -- ps\n  huskctl exec -it web -- sh\n  \
        huskctl exec -u app -w /tmp -e DEBUG=1 web -- sh -c 'echo $DEBUG'")]
    Exec(ExecArgs),
    /// Follow a running container's output; with -i also send it your input (a container
    /// launched with -t or -i). Detach with Ctrl-P Ctrl-Q; exits with the container's status
    /// when it ends.
    #[command(after_help = "Examples:\n  huskctl attach web\n  huskctl attach -i shell")]
    Attach {
        id: String,
        /// Send stdin to the container's terminal or open stdin.
        #[arg(short, long)]
        interactive: bool,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  huskctl completion bash > /etc/bash_completion.d/huskctl")]
    Completion { shell: clap_complete::Shell },
}

#[derive(Args)]
struct ExecArgs {
    /// Stream stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (raw mode here while it runs; window size followed).
    #[arg(short, long)]
    tty: bool,
    /// User to run as (name, uid, name:group or uid:gid), resolved in the container's
    /// /etc/passwd. Default: the container's.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory (absolute). Default: the container's.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Environment variable NAME=VALUE over the container's (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The command's capabilities instead of the container's (e.g. NET_ADMIN; repeatable).
    #[arg(long = "cap", value_name = "CAP")]
    caps: Vec<String>,
    /// The container.
    id: String,
    /// The command and its arguments (exec'd directly: use `sh -c '...'` for a script).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum ShimCommand {
    /// List the shims under the runtime dir with their state.
    #[command(after_help = "Example:\n  huskctl shim ls --runtime-dir /run/husk")]
    Ls {
        #[arg(long, env = "HUSK_RUNTIME_DIR", default_value = "/run/husk", value_name = "DIR")]
        runtime_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// One shim: its container's state and init pid, processes, usage and exit status.
    #[command(after_help = "Example:\n  huskctl shim inspect web")]
    Inspect {
        id: String,
        #[arg(long, env = "HUSK_RUNTIME_DIR", default_value = "/run/husk", value_name = "DIR")]
        runtime_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        output: Format,
    },
}

#[derive(Args)]
struct LaunchArgs {
    /// Launch document (JSON; `-` for standard input): a Mesos LAUNCH_CONTAINER call, its bare
    /// launch_container object, or a Mesos TaskInfo.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    file: String,
    /// Container id (default: the document's; a TaskInfo's is generated).
    #[arg(long)]
    id: Option<String>,
    /// OCI runtime: husk (default), runc, crun or youki.
    #[arg(long)]
    runtime: Option<String>,
}

#[derive(Args)]
struct PsArgs {
    /// All containers, terminated ones too.
    #[arg(short, long)]
    all: bool,
    /// Only containers in this state (e.g. running, terminated, fetching).
    #[arg(long, value_name = "STATE")]
    state: Option<String>,
    /// Only containers with this label (KEY=VALUE, repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Nested containers too (shown as PARENT.CHILD).
    #[arg(long)]
    nested: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

#[derive(Args)]
struct LogsArgs {
    id: String,
    /// Keep printing as the container writes, until it terminates.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<u64>,
    /// Only output written since a time: a duration back from now (10m, 1h30m, 2d) or an
    /// RFC 3339 time (2026-11-21T09:30:00Z). Precise to a second.
    #[arg(long, value_name = "WHEN", value_parser = ctl::parse_since)]
    since: Option<i64>,
    #[arg(long, value_enum, default_value = "both")]
    stream: LogStream,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogStream {
    Both,
    Stdout,
    Stderr,
}

#[derive(Args)]
struct StatsArgs {
    /// Containers (default: every live one).
    ids: Vec<String>,
    /// Print one table and exit.
    #[arg(long)]
    no_stream: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

/// What a launch is made of, for `bundle` and `run` alike.
#[derive(Args)]
struct LaunchFlags {
    /// Launch document (JSON; `-` for standard input): a Mesos LAUNCH_CONTAINER call, its bare
    /// launch_container object, or a Mesos TaskInfo.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with_all = [
            "command", "resources", "limits", "hostname", "user", "env", "no_shell", "cpus", "mem",
            "env_files", "volumes", "cap_add", "cap_drop", "uris", "network", "publish", "read_only",
            "sysctls", "oom_score_adj", "seccomp_profile", "group_add", "privileged", "cgroup_parent",
            "apparmor_profile"
        ]
    )]
    file: Option<String>,
    /// Container id (default: the launch document's; else `bundle` uses `husk-bundle`, `run`
    /// generates one).
    #[arg(long)]
    id: Option<String>,
    /// Resources in Mesos' text form, e.g. `cpus:1;mem:128`.
    #[arg(long, value_name = "RESOURCES")]
    resources: Option<String>,
    /// CPUs (shares; a limit too with --limit cpus=N).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Memory in MB (the limit too, unless --limit mem=...).
    #[arg(long, value_name = "MB")]
    mem: Option<f64>,
    /// Read environment variables from a file of NAME=VALUE lines (`#` comments; repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Bind a host path: HOST:CONTAINER[:ro|rw] (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volumes: Vec<String>,
    /// Add a capability to the default set (e.g. NET_ADMIN; the agent must allow it, see its
    /// --allowed-capabilities). Capabilities are root's: other users do not gain them.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from the default set (e.g. CHOWN).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Fetch a URI into the sandbox first: URL[,executable][,no-extract][,cache][,output=NAME]
    /// (repeatable).
    #[arg(long = "uri", value_name = "URI")]
    uris: Vec<String>,
    /// A limit above the request, e.g. `cpus=2` or `mem=inf` (repeatable).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Hostname of the container.
    #[arg(long)]
    hostname: Option<String>,
    /// Put the container on this CNI network (a configuration's `name` in the agent's
    /// --cni-conf-dir), in a network namespace of its own. Default: the host's network.
    #[arg(long, value_name = "NAME")]
    network: Option<String>,
    /// Publish a container port on the host (portmap plugin): HOST:CONTAINER[/tcp|udp|sctp]
    /// (repeatable; needs --network).
    #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER[/PROTO]", requires = "network")]
    publish: Vec<String>,
    /// Mount the container's root filesystem read-only (volumes keep their own mode).
    #[arg(long = "read-only")]
    read_only: bool,
    /// Set a kernel parameter in the container's own namespaces, e.g. net.ipv4.ip_forward=1
    /// (repeatable; IPC sysctls, net.* with --network, kernel.hostname/domainname).
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctls: Vec<String>,
    /// The process's oom_score_adj (-1000 to 1000; the kernel kills higher scores first).
    #[arg(long = "oom-score-adj", value_name = "N", allow_hyphen_values = true)]
    oom_score_adj: Option<i32>,
    /// Apply this seccomp profile (an OCI seccomp JSON file on the agent's node, absolute path)
    /// instead of husk's default one.
    #[arg(long = "seccomp-profile", value_name = "PATH")]
    seccomp_profile: Option<String>,
    /// Run the process under this AppArmor profile (loaded on the agent's node), or
    /// `unconfined`. A node without AppArmor refuses it.
    #[arg(long = "apparmor-profile", value_name = "NAME")]
    apparmor_profile: Option<String>,
    /// Give the process this group id too, besides its user's own groups (repeatable).
    #[arg(long = "group-add", value_name = "GID")]
    group_add: Vec<u32>,
    /// Run privileged: every capability, every host device, writable /sys, no default
    /// seccomp profile or masked paths. The agent must run with --allow-privileged; such a
    /// container can take over the node.
    #[arg(long, conflicts_with_all = ["cap_add", "cap_drop"])]
    privileged: bool,
    /// Make the container's cgroup under this one (`/PATH/<id>` in every hierarchy) instead of
    /// under the agent's cgroup root, as Docker's --cgroup-parent: an absolute cgroupfs path.
    /// Missing parts are created and left for you to remove.
    #[arg(long = "cgroup-parent", value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// User to run as (name, uid, name:group or uid:gid), resolved in the container's rootfs.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Run COMMAND... as an argv instead of through `/bin/sh -c`.
    #[arg(long)]
    no_shell: bool,
    /// The command to run: its words joined with spaces form the `sh -c` script (quote as for a
    /// shell), or, with --no-shell, its argv.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl LaunchFlags {
    /// The launch: from the file (its id replaced by `file_id` when given; a TaskInfo's is
    /// `id`), or from the flags and the command with id `id`.
    fn request(&self, file_id: Option<&str>, id: &str) -> Result<LaunchRequest> {
        match &self.file {
            Some(file) => husk::launch_file::read(file, file_id, id),
            None => launch_from_flags(self, id, false),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Return once the container runs (print its id) instead of following it.
    #[arg(short, long)]
    detach: bool,
    /// OCI runtime: husk (default), runc, crun or youki.
    #[arg(long)]
    runtime: Option<String>,
    /// Remove the container (sandbox included) once it terminated.
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Run on this root filesystem directory instead of the host's (through an overlay: the
    /// directory itself is never written).
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Run from this image (a Docker reference: `busybox`, `localhost:5000/app:v1`), pulled
    /// unless the store has it. Without a command the image's entrypoint and cmd run; a
    /// command runs through `/bin/sh -c` unless --no-shell (then after the entrypoint).
    #[arg(long, value_name = "REF", conflicts_with = "rootfs")]
    image: Option<String>,
    /// Launch a nested container under this running one: it joins the parent's network and
    /// hostname (and its pid and IPC namespaces as its launch asks), gets its sandbox under the
    /// parent's, is destroyed before it, and is addressed as `PARENT.ID`.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// Keep the command's stdin open and attach to it (with --tty, a terminal).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal of this terminal's size.
    #[arg(short, long)]
    tty: bool,
    /// Pull the image even when the store has it (Mesos `Image.cached=false`).
    #[arg(long, requires = "image")]
    pull: bool,
    /// Working directory of the command inside the container (absolute; default: the sandbox).
    /// Created in a --rootfs container when missing; on the host filesystem it must exist.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    #[command(flatten)]
    launch: LaunchFlags,
}

#[derive(Args)]
struct BundleArgs {
    /// Directory to write config.json into (created if missing).
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// Root filesystem directory; without it the container runs on the host filesystem with its
    /// own mount, pid, ipc and uts namespaces (Mesos' default).
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Host sandbox directory (MESOS_SANDBOX); default `<bundle>/sandbox`, created if missing.
    #[arg(long, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    /// Cgroup path prefix of the container.
    #[arg(long, default_value = "husk", value_name = "PATH")]
    cgroup_root: String,
    /// pids.max of the container (0 for unlimited).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pids_limit: i64,
    /// Mount point of the sandbox inside a container with a rootfs.
    #[arg(long, default_value = husk_oci::config::DEFAULT_SANDBOX_DIRECTORY, value_name = "PATH")]
    sandbox_directory: PathBuf,
    #[command(flatten)]
    launch: LaunchFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoint = Api {
        endpoint: cli.endpoint.clone(),
        tls: husk::client::Tls { ca: cli.tls_ca.clone(), cert: cli.tls_cert.clone(), key: cli.tls_key.clone() },
        timeout: (cli.timeout > 0).then(|| std::time::Duration::from_secs(cli.timeout)),
    };
    let api = &endpoint;
    let result = match cli.command {
        Command::Bundle(args) => bundle(*args),
        Command::Run(args) => return finish(block_on(run(api, *args))),
        Command::Wait { id, output } => return finish(block_on(wait(api, &id, output))),
        Command::Launch(a) => block_on(launch(api, a)),
        Command::Ps(a) => block_on(ps(api, a)),
        Command::Inspect { id, output } => block_on(inspect(api, &id, output)),
        Command::Logs(a) => block_on(logs(api, a)),
        Command::Stats(a) => block_on(stats(api, a)),
        Command::Stop { ids, time } => block_on(stop(api, &ids, time)),
        Command::Kill { id, signal } => block_on(kill(api, &id, &signal)),
        Command::Rm { ids, force } => block_on(rm(api, &ids, force)),
        Command::Update { id, cpus, mem, allow_decrease } => block_on(update(api, &id, cpus, mem, allow_decrease)),
        Command::Info { output } => block_on(info(api, output)),
        Command::Version { output } => block_on(version(api, output)),
        Command::Shim(c) => block_on(shim(c)),
        Command::Exec(a) => return finish(block_on(exec(api, a))),
        Command::Attach { id, interactive } => return finish(block_on(attach(api, &id, interactive))),
        Command::Pull { name, quiet } => block_on(pull(api, &name, quiet)),
        Command::Import { path, name } => block_on(import(api, &path, name)),
        Command::Images { quiet, output } => block_on(images(api, quiet, output)),
        Command::Rmi { names, force } => block_on(rmi(api, &names, force)),
        Command::Prune { excluded } => block_on(prune(api, excluded)),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "huskctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("huskctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The launch the flags describe; with `image_command`, no command: the image's runs.
fn launch_from_flags(args: &LaunchFlags, id: &str, image_command: bool) -> Result<LaunchRequest> {
    if args.command.is_empty() && !image_command {
        bail!("give a launch file with -f FILE, or a command after `--`");
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for file in &args.env_files {
        let text = std::fs::read_to_string(file).with_context(|| format!("--env-file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .with_context(|| format!("--env-file {} line {}: `{line}` is not NAME=VALUE", file.display(), n + 1))?;
            pairs.push((name.trim().to_string(), value.to_string()));
        }
    }
    for kv in &args.env {
        let (name, value) = kv.split_once('=').with_context(|| format!("--env `{kv}` is not NAME=VALUE"))?;
        pairs.push((name.to_string(), value.to_string()));
    }
    let variables: Vec<_> = pairs
        .into_iter()
        .map(|(name, value)| environment::Variable { name, value: Some(value), ..Default::default() })
        .collect();
    let (shell, value, arguments) = if image_command {
        (false, None, Vec::new())
    } else if args.no_shell {
        (false, Some(args.command[0].clone()), args.command.clone())
    } else {
        (true, Some(args.command.join(" ")), Vec::new())
    };
    let mut resources = match &args.resources {
        Some(text) => husk_oci::resources::parse(text, "--resources")?,
        None => Vec::new(),
    };
    for (name, v) in [("cpus", args.cpus), ("mem", args.mem)] {
        if let Some(v) = v {
            if resources.iter().any(|r| r.name == name) {
                bail!("--{name} and --resources both give `{name}`");
            }
            resources.push(husk_oci::resources::scalar(name, v));
        }
    }
    let volumes = args.volumes.iter().map(|v| volume(v)).collect::<Result<Vec<_>>>()?;
    let uris = args.uris.iter().map(|u| uri(u)).collect::<Result<Vec<_>>>()?;
    let linux_info = capabilities(&args.cap_add, &args.cap_drop)?;
    let mut sysctls = std::collections::HashMap::new();
    for kv in &args.sysctls {
        let (k, v) = kv.split_once('=').with_context(|| format!("--sysctl `{kv}` is not NAME=VALUE"))?;
        if sysctls.insert(k.to_string(), v.to_string()).is_some() {
            bail!("--sysctl `{k}` is given twice");
        }
    }
    let security = husk_proto::agent::v1::SecurityOptions {
        readonly_rootfs: args.read_only.then_some(true),
        sysctls,
        oom_score_adj: args.oom_score_adj,
        seccomp_profile_path: args.seccomp_profile.clone(),
        apparmor_profile: args.apparmor_profile.clone(),
        supplemental_groups: args.group_add.clone(),
        privileged: args.privileged.then_some(true),
        ..Default::default()
    };
    let mut limits = std::collections::HashMap::new();
    for l in &args.limits {
        let (name, v) = l.split_once('=').with_context(|| format!("--limit `{l}` is not NAME=VALUE"))?;
        let v: f64 = v.parse().with_context(|| format!("--limit `{l}`: `{v}` is not a number or `inf`"))?;
        if limits.insert(name.to_string(), value::Scalar { value: v }).is_some() {
            bail!("--limit `{name}` is given twice");
        }
    }
    Ok(LaunchRequest {
        container_id: ContainerId { value: id.to_string(), parent: None },
        command: Some(CommandInfo {
            shell: Some(shell),
            value,
            arguments,
            user: args.user.clone(),
            environment: (!variables.is_empty()).then_some(Environment { variables }),
            uris,
        }),
        resources,
        limits,
        container: Some(ContainerInfo {
            r#type: container_info::Type::Mesos as i32,
            hostname: args.hostname.clone(),
            volumes,
            linux_info,
            network_infos: match &args.network {
                Some(name) => vec![husk_proto::mesos::v1::NetworkInfo {
                    name: Some(name.clone()),
                    port_mappings: args.publish.iter().map(|p| port_mapping(p)).collect::<Result<_>>()?,
                    ..Default::default()
                }],
                None => vec![],
            },
            ..Default::default()
        }),
        security: (security != Default::default()).then_some(security),
        cgroup_parent: args.cgroup_parent.clone(),
        ..Default::default()
    })
}

/// `-p HOST:CONTAINER[/PROTO]`.
fn port_mapping(spec: &str) -> Result<husk_proto::mesos::v1::network_info::PortMapping> {
    let (ports, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    match ports.split_once(':').map(|(h, c)| (parse(h), parse(c))) {
        Some((Some(host), Some(container))) => Ok(husk_proto::mesos::v1::network_info::PortMapping {
            host_port: host.into(),
            container_port: container.into(),
            protocol: Some(protocol.to_string()),
        }),
        _ => bail!("-p `{spec}`: want HOST:CONTAINER[/tcp|udp|sctp] with ports 1-65535"),
    }
}

/// `-v HOST:CONTAINER[:ro|rw]`.
fn volume(spec: &str) -> Result<husk_proto::mesos::v1::Volume> {
    use husk_proto::mesos::v1::volume::Mode;
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, Mode::Rw),
        [h, c, "ro"] => (*h, *c, Mode::Ro),
        [h, c, "rw"] => (*h, *c, Mode::Rw),
        _ => bail!("-v `{spec}`: want HOST:CONTAINER[:ro|rw]"),
    };
    if !host.starts_with('/') {
        bail!("-v `{spec}`: the host path must be absolute");
    }
    Ok(husk_proto::mesos::v1::Volume {
        mode: mode as i32,
        container_path: container.to_string(),
        host_path: Some(host.to_string()),
        ..Default::default()
    })
}

/// `--uri URL[,executable][,no-extract][,cache][,output=NAME]`.
fn uri(spec: &str) -> Result<husk_proto::mesos::v1::command_info::Uri> {
    let mut parts = spec.split(',');
    let mut u = husk_proto::mesos::v1::command_info::Uri {
        value: parts.next().unwrap_or_default().to_string(),
        ..Default::default()
    };
    for opt in parts {
        match opt {
            "executable" => u.executable = Some(true),
            "no-extract" => u.extract = Some(false),
            "cache" => u.cache = Some(true),
            o if o.starts_with("output=") => u.output_file = Some(o["output=".len()..].to_string()),
            o => bail!("--uri `{spec}`: unknown option `{o}` (executable, no-extract, cache, output=NAME)"),
        }
    }
    Ok(u)
}

/// `--cap-add`/`--cap-drop`: the container's capability set (its bounding set, which root gets
/// and other users cannot gain) is the agent's default one changed so. Nothing is granted to a
/// non-root user: explicit effective capabilities would be.
fn capabilities(add: &[String], drop: &[String]) -> Result<Option<husk_proto::mesos::v1::LinuxInfo>> {
    if add.is_empty() && drop.is_empty() {
        return Ok(None);
    }
    let capabilities = husk_oci::caps::adjust_default(add, drop, "--cap-add", "--cap-drop")?;
    Ok(Some(husk_proto::mesos::v1::LinuxInfo {
        bounding_capabilities: Some(husk_proto::mesos::v1::CapabilityInfo { capabilities }),
        ..Default::default()
    }))
}

fn bundle(args: BundleArgs) -> Result<()> {
    let req = args.launch.request(args.launch.id.as_deref(), args.launch.id.as_deref().unwrap_or("husk-bundle"))?;
    let bundle = absolute(&args.bundle)?;
    let sandbox = match &args.sandbox {
        Some(s) => absolute(s)?,
        None => bundle.join("sandbox"),
    };
    // The translation checks the sandbox exists; what is created for it is removed again when
    // the launch is refused, so a refused launch leaves nothing behind.
    let mut created = Vec::new();
    for dir in sandbox.ancestors().collect::<Vec<_>>().into_iter().rev() {
        if !dir.exists() {
            std::fs::create_dir(dir).with_context(|| format!("creating the sandbox {}", sandbox.display()))?;
            created.push(dir.to_path_buf());
        }
    }
    let result = write(&args, &req, &bundle, &sandbox);
    if result.is_err() {
        for dir in created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn write(args: &BundleArgs, req: &LaunchRequest, bundle: &Path, sandbox: &Path) -> Result<()> {
    let rootfs = args.rootfs.as_deref().map(absolute).transpose()?;
    let cfg = Config {
        cgroup_root: args.cgroup_root.clone(),
        default_pids_limit: (args.pids_limit > 0).then_some(args.pids_limit),
        sandbox_directory: args.sandbox_directory.clone(),
        // No agent stands between the operator and their own bundle: --privileged is theirs.
        allow_privileged: true,
        ..Default::default()
    };
    let place = Placement { sandbox_dir: sandbox.to_path_buf(), rootfs, ..Default::default() };
    let t = translate(req, &cfg, &place)?;
    for w in &t.warnings {
        eprintln!("huskctl: warning: {w}");
    }
    t.write_bundle(bundle)?;
    println!("{}", bundle.join(husk_oci::bundle::CONFIG_JSON).display());
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("reading the current directory")?.join(p))
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Exits with the container's status, or 1 with the error.
fn finish(result: Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("huskctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// The shell's exit status for a termination.
fn exit_status(t: &husk_proto::agent::v1::ContainerTermination) -> u8 {
    match (t.exit_code, t.signal) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Where the agent is and how to reach it.
struct Api {
    endpoint: String,
    tls: husk::client::Tls,
    /// Deadline of each unary call (`--timeout`).
    timeout: Option<std::time::Duration>,
}

type Client = pb::containerizer_client::ContainerizerClient<tonic::transport::Channel>;

impl Api {
    async fn connect(&self) -> Result<Client> {
        let connecting = husk::client::connect_with(&self.endpoint, &self.tls);
        match self.timeout {
            None => connecting.await,
            Some(t) => tokio::time::timeout(t, connecting).await.map_err(|_| {
                anyhow::anyhow!("the agent at {} did not answer within {}s", self.endpoint, t.as_secs())
            })?,
        }
    }

    /// One unary call, within --timeout; errors carry the gRPC status and message.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let answer = match self.timeout {
            None => call.await,
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| anyhow::anyhow!("DeadlineExceeded: no answer within {}s (--timeout)", t.as_secs()))?,
        };
        answer.map(tonic::Response::into_inner).map_err(status_error)
    }
}

/// A container id as operators write it: `web`, or `web.debug` for a nested container.
fn cid(id: &str) -> ContainerId {
    id.split('.')
        .fold(None, |parent: Option<ContainerId>, value| {
            Some(ContainerId { value: value.to_string(), parent: parent.map(Box::new) })
        })
        .unwrap_or_else(|| ContainerId { value: String::new(), parent: None })
}

async fn run(endpoint: &Api, a: RunArgs) -> Result<u8> {
    // --id, else the launch document's own, else a fresh one.
    let generated = a.launch.id.clone().unwrap_or_else(new_id);
    let mut req = match (&a.image, a.launch.command.is_empty() && a.launch.file.is_none()) {
        // The image's own entrypoint and cmd.
        (Some(_), true) => launch_from_flags(&a.launch, &generated, true)?,
        _ => a.launch.request(a.launch.id.as_deref(), &generated)?,
    };
    if let Some(name) = &a.image {
        use husk_proto::mesos::v1::{container_info, image, ContainerInfo, Image};
        let container = req
            .container
            .get_or_insert_with(|| ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() });
        container.mesos = Some(container_info::MesosInfo {
            image: Some(Image {
                r#type: image::Type::Docker as i32,
                docker: Some(image::Docker { name: name.clone(), ..Default::default() }),
                cached: Some(!a.pull),
                ..Default::default()
            }),
        });
    }
    if let Some(parent) = &a.parent {
        req.container_id.parent = Some(Box::new(cid(parent)));
    }
    if a.tty {
        use husk_proto::mesos::v1::{tty_info, TtyInfo};
        let size = husk::terminal::window_size().map(|(rows, columns)| tty_info::WindowSize { rows, columns });
        req.container
            .get_or_insert_with(|| ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() })
            .tty_info = Some(TtyInfo { window_size: size });
    }
    if a.interactive {
        req.stdin = Some(true);
    }
    let id = husk_oci::validate::display_id(&req.container_id);
    req.runtime = a.runtime.clone();
    if let Some(dir) = &a.rootfs {
        req.rootfs = Some(absolute(dir)?.display().to_string());
    }
    if a.workdir.is_some() {
        req.working_dir = a.workdir.clone();
    }
    let mut client = endpoint.connect().await?;
    // No --timeout here: a launch may fetch URIs and start a shim for longer.
    if let Err(e) = client.launch(req).await {
        // A launch that failed past validation is a terminated container: --rm takes it too.
        if a.rm && e.code() == tonic::Code::FailedPrecondition {
            let _ = endpoint.call(client.remove(pb::RemoveRequest { container_id: cid(&id) })).await;
        }
        return Err(status_error(e).context(format!("container `{id}`")));
    }
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    let container_id = cid(&id);
    if a.interactive {
        // The output from here on and the input, as `attach -i` gives them.
        if let husk::session::Attached::Detached =
            husk::session::attach(&mut client, container_id.clone(), true).await?
        {
            return Ok(0);
        }
        let t = client
            .wait(pb::WaitRequest { container_id: container_id.clone() })
            .await
            .map_err(status_error)?
            .into_inner();
        if a.rm {
            endpoint.call(client.remove(pb::RemoveRequest { container_id })).await?;
        }
        return Ok(exit_status(&t));
    }
    let mut logs = client
        .logs(pb::LogsRequest { container_id: container_id.clone(), follow: Some(true), ..Default::default() })
        .await
        .map_err(status_error)?
        .into_inner();
    follow_logs(&mut logs).await?;
    let t =
        client.wait(pb::WaitRequest { container_id: container_id.clone() }).await.map_err(status_error)?.into_inner();
    if a.rm {
        endpoint.call(client.remove(pb::RemoveRequest { container_id })).await?;
    }
    Ok(exit_status(&t))
}

fn new_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("husk-{nanos:x}")
}

/// Copies a log stream to stdout and stderr until it ends.
async fn follow_logs(logs: &mut tonic::Streaming<pb::LogChunk>) -> Result<()> {
    use std::io::Write;
    while let Some(chunk) = logs.message().await.map_err(status_error)? {
        let data = chunk.data.unwrap_or_default();
        if chunk.stream == Some(pb::logs_request::Stream::Stderr as i32) {
            let mut err = std::io::stderr().lock();
            err.write_all(&data)?;
            err.flush()?;
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn exec(api: &Api, a: ExecArgs) -> Result<u8> {
    let mut variables = Vec::new();
    for kv in &a.env {
        let (name, value) = kv.split_once('=').with_context(|| format!("--env `{kv}` is not NAME=VALUE"))?;
        variables.push(environment::Variable { name: name.into(), value: Some(value.into()), ..Default::default() });
    }
    let capabilities = match a.caps.is_empty() {
        true => None,
        false => Some(husk_proto::mesos::v1::CapabilityInfo {
            capabilities: a
                .caps
                .iter()
                .map(|c| {
                    let canonical = husk_oci::caps::parse_name(c, "--cap")?;
                    husk_proto::mesos::v1::capability_info::Capability::from_str_name(
                        canonical.trim_start_matches("CAP_"),
                    )
                    .map(|c| c as i32)
                    .with_context(|| format!("{canonical} has no Mesos capability value"))
                })
                .collect::<Result<_>>()?,
        }),
    };
    let start = pb::ExecProcess {
        container_id: cid(&a.id),
        command: CommandInfo {
            shell: Some(false),
            value: Some(a.command[0].clone()),
            arguments: a.command.clone(),
            user: a.user.clone(),
            environment: (!variables.is_empty()).then_some(Environment { variables }),
            uris: Vec::new(),
        },
        working_dir: a.workdir.clone(),
        tty: Some(a.tty),
        window_size: None,
        stdin: Some(a.interactive),
        capabilities,
    };
    let mut client = api.connect().await?;
    husk::session::exec(&mut client, start).await.with_context(|| format!("exec in `{}`", a.id))
}

async fn attach(api: &Api, id: &str, interactive: bool) -> Result<u8> {
    let mut client = api.connect().await?;
    match husk::session::attach(&mut client, cid(id), interactive).await.with_context(|| format!("attach to `{id}`"))? {
        husk::session::Attached::Detached => Ok(0),
        husk::session::Attached::Ended => {
            let t = api.call(client.wait(pb::WaitRequest { container_id: cid(id) })).await?;
            Ok(exit_status(&t))
        }
    }
}

async fn wait(endpoint: &Api, id: &str, output: Format) -> Result<u8> {
    let mut client = endpoint.connect().await?;
    let t = client.wait(pb::WaitRequest { container_id: cid(id) }).await.map_err(status_error)?.into_inner();
    ctl::print(&t, output, || format!("{id}  {}\n", ctl::termination(&t)))?;
    Ok(exit_status(&t))
}

async fn launch(api: &Api, a: LaunchArgs) -> Result<()> {
    let generated = a.id.clone().unwrap_or_else(new_id);
    let mut req = husk::launch_file::read(&a.file, a.id.as_deref(), &generated)?;
    req.runtime = a.runtime;
    let id = req.container_id.value.clone();
    let mut client = api.connect().await?;
    // No --timeout here: a launch may fetch URIs and start a shim for longer.
    client.launch(req).await.map_err(|e| status_error(e).context(format!("container `{id}`")))?;
    println!("{id}");
    Ok(())
}

async fn ps(api: &Api, a: PsArgs) -> Result<()> {
    let mut labels = Vec::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--label `{l}` is not KEY=VALUE"))?;
        labels.push((k.to_string(), v.to_string()));
    }
    let wanted_state = a.state.as_deref().map(|s| s.to_ascii_uppercase());
    if let Some(s) = &wanted_state {
        if pb::ContainerState::from_str_name(s).is_none() {
            bail!(
                "--state `{}`: not one of provisioning, preparing, isolating, fetching, running, destroying, terminated",
                s.to_lowercase()
            );
        }
    }
    let mut client = api.connect().await?;
    let list = api.call(client.list(pb::ListRequest { show_nested: Some(a.nested), ..Default::default() })).await?;
    let shown: Vec<pb::ContainerInfo> = list
        .containers
        .into_iter()
        .filter(|c| a.all || wanted_state.is_some() || c.termination.is_none())
        .filter(|c| wanted_state.as_deref().is_none_or(|s| c.state().as_str_name() == s))
        .filter(|c| {
            labels.iter().all(|(k, v)| {
                c.labels.as_ref().is_some_and(|l| l.labels.iter().any(|x| x.key == *k && x.value.as_deref() == Some(v)))
            })
        })
        .collect();
    if a.quiet {
        for c in &shown {
            println!("{}", husk_oci::validate::display_id(&c.container_id));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|c| {
            vec![
                husk_oci::validate::display_id(&c.container_id),
                ctl::status(c),
                ctl::resources(&c.resources),
                c.runtime.clone().unwrap_or_else(|| "-".into()),
                c.created_at_ns.map(ctl::ago).unwrap_or_default(),
            ]
        })
        .collect();
    ctl::print(&shown, a.output, || ctl::table(&["ID", "STATUS", "RESOURCES", "RUNTIME", "CREATED"], &rows))
}

async fn inspect(api: &Api, id: &str, output: Format) -> Result<()> {
    let mut client = api.connect().await?;
    let st = api.call(client.status(pb::StatusRequest { container_id: cid(id) })).await?;
    let info = st.info.context("the agent sent no container info")?;
    ctl::print(&info, output, || {
        let mut rows = vec![
            vec!["id".into(), husk_oci::validate::display_id(&info.container_id)],
            vec!["status".into(), ctl::status(&info)],
            vec![
                "pid".into(),
                info.container_status
                    .as_ref()
                    .and_then(|s| s.executor_pid)
                    .map(|p| p.to_string())
                    .unwrap_or("-".into()),
            ],
            vec!["resources".into(), ctl::resources(&info.resources)],
            vec!["sandbox".into(), info.sandbox_directory.clone().unwrap_or_default()],
            vec!["bundle".into(), info.bundle_directory.clone().unwrap_or_default()],
        ];
        if let Some(t) = &info.termination {
            rows.push(vec!["message".into(), t.message().to_string()]);
        }
        ctl::table(&["FIELD", "VALUE"], &rows)
    })
}

async fn logs(api: &Api, a: LogsArgs) -> Result<()> {
    let stream = match a.stream {
        LogStream::Both => pb::logs_request::Stream::Both,
        LogStream::Stdout => pb::logs_request::Stream::Stdout,
        LogStream::Stderr => pb::logs_request::Stream::Stderr,
    };
    let mut client = api.connect().await?;
    let req = pb::LogsRequest {
        container_id: cid(&a.id),
        stream: Some(stream as i32),
        tail: a.tail,
        follow: Some(a.follow),
        since_ns: a.since,
    };
    let mut logs = match a.follow {
        true => client.logs(req).await.map_err(status_error)?.into_inner(),
        false => api.call(client.logs(req)).await?,
    };
    follow_logs(&mut logs).await
}

/// One row of `stats`, kept for JSON and YAML output.
#[derive(serde::Serialize)]
struct StatRow {
    id: String,
    cpu_percent: Option<f64>,
    mem_bytes: Option<u64>,
    mem_limit_bytes: Option<u64>,
    processes: Option<u32>,
    /// CPU time used so far (user + system).
    cpu_seconds: Option<f64>,
}

async fn stats(api: &Api, a: StatsArgs) -> Result<()> {
    let mut client = api.connect().await?;
    let interval = std::time::Duration::from_secs(a.interval.max(1));
    let mut previous: std::collections::HashMap<String, (std::time::Instant, f64)> = Default::default();
    loop {
        let ids: Vec<String> = match a.ids.is_empty() {
            false => a.ids.clone(),
            true => api
                .call(client.list(pb::ListRequest::default()))
                .await?
                .containers
                .into_iter()
                .filter(|c| c.state() == pb::ContainerState::Running)
                .map(|c| husk_oci::validate::display_id(&c.container_id))
                .collect(),
        };
        let mut rows = Vec::new();
        for id in &ids {
            let usage = api.call(client.usage(pb::UsageRequest { container_id: cid(id) })).await;
            let s = match (usage, a.ids.is_empty()) {
                (Ok(u), _) => u.statistics.unwrap_or_default(),
                // A container that ended between the list and the call just leaves the table.
                (Err(_), true) => continue,
                (Err(e), false) => return Err(e.context(format!("container `{id}`"))),
            };
            let cpu = s.cpus_user_time_secs.zip(s.cpus_system_time_secs).map(|(u, s)| u + s);
            let now = std::time::Instant::now();
            // The rate since the last sample: none on the first, or when the counter went back
            // (the id now names another container).
            let percent = match (cpu, previous.get(id)) {
                (Some(c), Some((t, p))) if c >= *p => Some(100.0 * (c - p) / now.duration_since(*t).as_secs_f64()),
                _ => None,
            };
            if let Some(c) = cpu {
                previous.insert(id.clone(), (now, c));
            }
            rows.push(StatRow {
                id: id.clone(),
                cpu_percent: percent,
                mem_bytes: s.mem_rss_bytes.or(s.mem_total_bytes),
                mem_limit_bytes: s.mem_limit_bytes,
                processes: s.processes,
                cpu_seconds: cpu,
            });
        }
        let table = || {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.cpu_percent.map(|p| format!("{p:.1}%")).unwrap_or("-".into()),
                        r.cpu_seconds.map(|c| format!("{c:.2}s")).unwrap_or("-".into()),
                        r.mem_bytes.map(ctl::bytes).unwrap_or("-".into()),
                        r.mem_limit_bytes.map(ctl::bytes).unwrap_or("-".into()),
                        r.processes.map(|p| p.to_string()).unwrap_or("-".into()),
                    ]
                })
                .collect();
            ctl::table(&["ID", "CPU%", "CPU TIME", "MEM", "LIMIT", "PIDS"], &cells)
        };
        if a.no_stream {
            return ctl::print(&rows, a.output, table);
        }
        // A live view: clear the screen and draw again (CPU is the rate since the last draw).
        if a.output == Format::Table {
            print!("\x1b[2J\x1b[H");
        }
        ctl::print(&rows, a.output, table)?;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Kills a live container (with a grace period: TERM first) and waits until it terminated. A
/// container that ends on its own meanwhile is stopped all the same.
async fn stop_one(api: &Api, client: &mut Client, id: &str, grace: Option<u64>) -> Result<()> {
    let terminated = |st: &pb::StatusResponse| st.info.as_ref().is_some_and(|i| i.termination.is_some());
    let st = api.call(client.status(pb::StatusRequest { container_id: cid(id) })).await?;
    if terminated(&st) {
        return Ok(());
    }
    let grace_period =
        grace.map(|s| husk_proto::mesos::v1::DurationInfo { nanoseconds: (s as i64).saturating_mul(1_000_000_000) });
    let req = pb::KillRequest { container_id: cid(id), signal: None, grace_period };
    if let Err(e) = api.call(client.kill(req)).await {
        // Refused because it was ending? Then it is (or soon is) terminated: wait for it.
        let st = api.call(client.status(pb::StatusRequest { container_id: cid(id) })).await?;
        let ending = st.info.as_ref().is_some_and(|i| i.state() == pb::ContainerState::Destroying);
        if !terminated(&st) && !ending {
            return Err(e);
        }
    }
    client.wait(pb::WaitRequest { container_id: cid(id) }).await.map_err(status_error)?;
    Ok(())
}

async fn stop(api: &Api, ids: &[String], secs: u64) -> Result<()> {
    let mut client = api.connect().await?;
    let mut failed = 0;
    for id in ids {
        match stop_one(api, &mut client, id, Some(secs)).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("huskctl: error: {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} containers were not stopped", ids.len());
    }
    Ok(())
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
fn parse_signal(s: &str) -> Result<i32> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| anyhow::anyhow!("--signal {n}: not a signal"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("--signal `{s}`: not a signal"))
}

async fn kill(api: &Api, id: &str, signal: &str) -> Result<()> {
    let signal = parse_signal(signal)?;
    let mut client = api.connect().await?;
    api.call(client.kill(pb::KillRequest { container_id: cid(id), signal: Some(signal), grace_period: None })).await?;
    println!("{id}");
    Ok(())
}

async fn rm(api: &Api, ids: &[String], force: bool) -> Result<()> {
    let mut client = api.connect().await?;
    let mut failed = 0;
    for id in ids {
        let removed = async {
            if force {
                stop_one(api, &mut client, id, None).await?;
            }
            api.call(client.remove(pb::RemoveRequest { container_id: cid(id) })).await
        };
        match removed.await {
            Ok(_) => println!("{id}"),
            Err(e) => {
                eprintln!("huskctl: error: {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} containers were not removed", ids.len());
    }
    Ok(())
}

async fn update(api: &Api, id: &str, cpus: Option<f64>, mem: Option<f64>, allow_decrease: bool) -> Result<()> {
    if cpus.is_none() && mem.is_none() {
        bail!("give --cpus and/or --mem");
    }
    let mut resources = Vec::new();
    if let Some(c) = cpus {
        resources.push(husk_oci::resources::scalar("cpus", c));
    }
    if let Some(m) = mem {
        resources.push(husk_oci::resources::scalar("mem", m));
    }
    let mut client = api.connect().await?;
    let req = pb::UpdateRequest {
        container_id: cid(id),
        resources,
        allow_memory_limit_decrease: Some(allow_decrease),
        ..Default::default()
    };
    api.call(client.update(req)).await?;
    println!("{id}");
    Ok(())
}

async fn info(api: &Api, output: Format) -> Result<()> {
    let mut client = api.connect().await?;
    let i = api.call(client.info(pb::InfoRequest {})).await?;
    ctl::print(&i, output, || {
        let rows = vec![
            vec!["hostname".into(), i.hostname().into()],
            vec!["kernel".into(), i.kernel_version().into()],
            vec!["cgroups".into(), i.cgroup_mode().into()],
            vec!["runtime".into(), i.default_runtime().into()],
            vec!["work dir".into(), i.work_dir().into()],
            vec!["runtime dir".into(), i.runtime_dir().into()],
            vec!["containers".into(), i.containers().to_string()],
            vec!["total".into(), ctl::resources(&i.total_resources)],
            vec!["allocated".into(), ctl::resources(&i.allocated_resources)],
            vec!["available".into(), ctl::resources(&i.available_resources)],
            vec!["isolators".into(), i.isolators.join(",")],
            vec![
                "image store".into(),
                format!("{} ({} images, {})", i.image_store(), i.images(), ctl::bytes(i.image_store_bytes())),
            ],
        ];
        ctl::table(&["FIELD", "VALUE"], &rows)
    })
}

async fn version(api: &Api, output: Format) -> Result<()> {
    let agent = match api.connect().await {
        Ok(mut client) => api.call(client.version(pb::VersionRequest {})).await.ok(),
        Err(_) => None,
    };
    let both = serde_json::json!({ "huskctl": env!("CARGO_PKG_VERSION"), "agent": agent });
    ctl::print(&both, output, || {
        let mut rows = vec![vec!["huskctl".into(), env!("CARGO_PKG_VERSION").into()]];
        match &agent {
            Some(v) => {
                rows.push(vec!["agent".into(), v.version().into()]);
                rows.push(vec!["api".into(), v.api_version().into()]);
                rows.push(vec!["runtime".into(), format!("{} {}", v.runtime_name(), v.runtime_version())]);
            }
            None => rows.push(vec!["agent".into(), format!("not reachable at {}", api.endpoint)]),
        }
        ctl::table(&["COMPONENT", "VERSION"], &rows)
    })
}

/// What `huskctl shim` reports of one shim, read from its directory and its socket.
#[derive(serde::Serialize)]
struct ShimView {
    id: String,
    shim_pid: Option<i32>,
    shim_alive: bool,
    state: Option<husk_proto::shim::v1::StateResponse>,
    processes: Option<Vec<husk_proto::shim::v1::ProcessInfo>>,
    statistics: Option<husk_proto::mesos::v1::ResourceStatistics>,
    exit: Option<husk_shim::exit::ExitRecord>,
    error: Option<String>,
}

async fn shim_view(dir: &Path, id: &str, deep: bool) -> ShimView {
    use husk_proto::shim::v1 as shim_pb;
    let pid = husk_shim::shim::ProcessId::load(&dir.join(husk_shim::shim::SHIM_FILE));
    let mut view = ShimView {
        id: id.to_string(),
        shim_pid: pid.map(|p| p.pid),
        shim_alive: pid.is_some_and(|p| p.alive()),
        state: None,
        processes: None,
        statistics: None,
        exit: husk_shim::exit::ExitRecord::load(dir).ok().flatten(),
        error: None,
    };
    if !view.shim_alive {
        return view;
    }
    let deadline = std::time::Duration::from_secs(5);
    let answered = tokio::time::timeout(deadline, async {
        let mut client =
            husk_shim::shim::connect(&dir.join(husk_shim::shim::SOCKET)).await.map_err(|e| e.to_string())?;
        view.state =
            Some(client.state(shim_pb::StateRequest {}).await.map_err(|e| e.message().to_string())?.into_inner());
        if deep {
            view.processes = client.pids(shim_pb::PidsRequest {}).await.ok().map(|p| p.into_inner().processes);
            view.statistics = client.stats(shim_pb::StatsRequest {}).await.ok().and_then(|s| s.into_inner().statistics);
        }
        Ok::<_, String>(())
    })
    .await;
    view.error = match answered {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer within {deadline:?}")),
    };
    view
}

async fn shim(c: ShimCommand) -> Result<()> {
    match c {
        ShimCommand::Ls { runtime_dir, output, quiet } => {
            let shims = runtime_dir.join("shims");
            let mut ids: Vec<String> = match std::fs::read_dir(&shims) {
                Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => bail!("{}: {e}", shims.display()),
            };
            ids.sort();
            if quiet {
                ids.iter().for_each(|id| println!("{id}"));
                return Ok(());
            }
            let mut views = Vec::new();
            for id in &ids {
                views.push(shim_view(&shims.join(id), id, false).await);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let status = match (&v.state, &v.error, v.shim_alive) {
                        (Some(s), _, _) => husk_proto::shim::v1::Status::try_from(s.status)
                            .map(|s| s.as_str_name().to_lowercase())
                            .unwrap_or_else(|_| "unknown".into()),
                        (None, Some(e), _) => format!("not answering: {e}"),
                        (None, None, false) => "shim gone".into(),
                        (None, None, true) => "-".into(),
                    };
                    vec![
                        v.id.clone(),
                        v.shim_pid.map(|p| p.to_string()).unwrap_or("-".into()),
                        v.state.as_ref().map(|s| s.pid.to_string()).unwrap_or("-".into()),
                        status,
                        v.exit
                            .as_ref()
                            .map(|e| e.exit_code.map(|c| c.to_string()).unwrap_or("signal".into()))
                            .unwrap_or("-".into()),
                    ]
                })
                .collect();
            ctl::print(&views, output, || ctl::table(&["ID", "SHIM PID", "INIT PID", "STATUS", "EXIT"], &rows))
        }
        ShimCommand::Inspect { id, runtime_dir, output } => {
            husk_oci::validate::container_id(&cid(&id), "ID")?;
            let dir = runtime_dir.join("shims").join(&id);
            if !dir.is_dir() {
                bail!("no shim `{id}` under {}", runtime_dir.join("shims").display());
            }
            let view = shim_view(&dir, &id, true).await;
            ctl::print(&view, output, || {
                let rows = vec![
                    vec!["id".into(), view.id.clone()],
                    vec!["shim pid".into(), view.shim_pid.map(|p| p.to_string()).unwrap_or("-".into())],
                    vec!["shim alive".into(), view.shim_alive.to_string()],
                    vec!["init pid".into(), view.state.as_ref().map(|s| s.pid.to_string()).unwrap_or("-".into())],
                    vec![
                        "processes".into(),
                        view.processes.as_ref().map(|p| p.len().to_string()).unwrap_or("-".into()),
                    ],
                    vec!["exit".into(), view.exit.as_ref().map(|e| format!("{e:?}")).unwrap_or("-".into())],
                    vec!["error".into(), view.error.clone().unwrap_or("-".into())],
                ];
                ctl::table(&["FIELD", "VALUE"], &rows)
            })
        }
    }
}

fn short_digest(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

async fn pull(api: &Api, name: &str, quiet: bool) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let mut client = api.connect().await?;
    let mut stream =
        client.pull_image(pb::PullImageRequest { name: name.to_string() }).await.map_err(status_error)?.into_inner();
    let bars = !quiet && std::io::stderr().is_terminal();
    let mut last_line = String::new();
    while let Some(m) = stream.message().await.map_err(status_error)? {
        if let Some(image) = m.image {
            if bars && !last_line.is_empty() {
                eprintln!();
            }
            match quiet {
                true => println!("{}", image.digest()),
                false => println!("{} {}", image.names.join(","), image.digest()),
            }
            return Ok(());
        }
        let (bytes, total) = (m.bytes(), m.total().max(1));
        let done = bytes >= total;
        let line = format!(
            "{} {} {}/{}  layers {}/{}",
            short_digest(m.digest()),
            ctl::bar(bytes as f64 / total as f64, 30),
            ctl::bytes(bytes),
            ctl::bytes(m.total()),
            m.layers_done(),
            m.layers_total()
        );
        if bars {
            // One line per blob, redrawn in place.
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{line:<last$}", last = last_line.len());
            if done {
                let _ = writeln!(err);
                last_line.clear();
            } else {
                last_line = line;
            }
            let _ = err.flush();
        } else if done && !quiet {
            eprintln!("{line}");
        }
    }
    bail!("the agent ended the pull without naming the image")
}

async fn import(api: &Api, path: &std::path::Path, name: Option<String>) -> Result<()> {
    let path = absolute(path)?;
    let mut client = api.connect().await?;
    // No --timeout: a large archive takes its time.
    let r = client
        .import_image(pb::ImportImageRequest { path: path.display().to_string(), name })
        .await
        .map_err(status_error)?
        .into_inner();
    for i in r.images {
        println!("{} {}", i.names.join(","), i.digest());
    }
    Ok(())
}

async fn images(api: &Api, quiet: bool, output: Format) -> Result<()> {
    let mut client = api.connect().await?;
    let list = api.call(client.list_images(pb::ListImagesRequest::default())).await?;
    if quiet {
        for i in &list.images {
            println!("{}", i.digest());
        }
        return Ok(());
    }
    ctl::print(&list, output, || {
        let mut rows = Vec::new();
        for i in &list.images {
            for n in &i.names {
                rows.push(vec![
                    n.clone(),
                    short_digest(i.digest()),
                    ctl::bytes(i.size()),
                    i.layers().to_string(),
                    i.containers().to_string(),
                    ctl::ago(i.created_ns()),
                ]);
            }
        }
        ctl::table(&["NAME", "DIGEST", "SIZE", "LAYERS", "CONTAINERS", "CREATED"], &rows)
    })
}

async fn rmi(api: &Api, names: &[String], force: bool) -> Result<()> {
    let mut client = api.connect().await?;
    let mut failed = 0;
    for name in names {
        match api.call(client.remove_image(pb::RemoveImageRequest { name: name.clone(), force: Some(force) })).await {
            Ok(r) => {
                for u in &r.untagged {
                    println!("untagged {u}");
                }
                if r.bytes_freed() > 0 {
                    println!("freed {}", ctl::bytes(r.bytes_freed()));
                }
            }
            Err(e) => {
                eprintln!("huskctl: error: {e:#}");
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => bail!("{n} of {} images not removed", names.len()),
    }
}

async fn prune(api: &Api, excluded: Vec<String>) -> Result<()> {
    let mut client = api.connect().await?;
    let r = api.call(client.prune_images(pb::PruneImagesRequest { excluded })).await?;
    for name in &r.removed {
        println!("removed {name}");
    }
    println!("freed {}", ctl::bytes(r.bytes_freed()));
    Ok(())
}
