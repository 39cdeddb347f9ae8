//! husk-runtime: husk's container runtime behind the OCI runtime command line, so containerd's
//! runc shim, podman and conmon can use it like runc.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use husk_shim::runtime::{self, CreateOptions, Error};
use nix::sys::signal::Signal;

#[derive(Parser)]
#[command(
    name = "husk-runtime",
    version,
    about = "husk's OCI container runtime (runc-compatible command line)",
    after_help = "Example:\n  husk-runtime run --bundle /srv/bundles/web web\n  \
        husk-runtime create --bundle /srv/bundles/web web && husk-runtime start web"
)]
struct Cli {
    /// Directory of the runtime's container state.
    #[arg(long, global = true, default_value = "/run/husk-runtime", value_name = "DIR")]
    root: PathBuf,
    /// Also write errors to this file (containerd reads its runtime's errors from it).
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Use systemd to manage cgroups (not supported: husk writes cgroupfs directly).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container: everything up to the exec of its command, which waits for `start`.
    Create(CreateArgs),
    /// Exec the command of a created container.
    Start { id: String },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or to all its processes.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a stopped container (any container with --force).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and remove it; exits with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the command runs, leaving the container in place.
        #[arg(short, long)]
        detach: bool,
    },
    /// List containers.
    List {
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run a new process inside a running container; exits with its status (as runc exec).
    Exec(ExecArgs),
    /// Print what this runtime supports, as OCI features JSON.
    Features,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  husk-runtime exec web ps\n  \
    husk-runtime exec --detach --pid-file /run/x.pid --process process.json web")]
struct ExecArgs {
    /// The process as runtime-spec `process` JSON; replaces COMMAND and the options below.
    #[arg(short, long, value_name = "FILE")]
    process: Option<PathBuf>,
    /// Unix socket to send the master of the process' terminal to (with --tty).
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Write the process' pid to this file once it runs.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Return once the process runs instead of waiting for it.
    #[arg(short, long)]
    detach: bool,
    /// Give the process a terminal (its master goes to --console-socket).
    #[arg(short, long)]
    tty: bool,
    /// Working directory in the container (default: the container's).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Set an environment variable (NAME=VALUE; repeatable), over the container's.
    #[arg(short, long, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Run as UID[:GID] (default: the container's user).
    #[arg(short, long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// Add a capability (e.g. CAP_NET_ADMIN; repeatable) to the container's.
    #[arg(long, value_name = "CAP")]
    cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    no_new_privs: bool,
    /// Extra descriptors to pass (not supported: must be 0).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the init's pid to this file.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the master of the container's terminal to (with process.terminal).
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (husk always pivots).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    /// Extra descriptors to pass (not supported: must be 0).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

fn parse_signal(s: &str) -> Result<Signal, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::Bundle(format!("unknown signal {n}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| Error::Bundle(format!("unknown signal `{s}`")))
}

fn create_opts(cli: &Cli, a: &CreateArgs) -> Result<CreateOptions, Error> {
    if a.preserve_fds != 0 {
        return Err(Error::Bundle("--preserve-fds is not supported".into()));
    }
    Ok(CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        root: cli.root.clone(),
        pid_file: a.pid_file.clone(),
        stdio: None,
        init_status: None,
        console: a.console_socket.clone().map(husk_shim::runtime::console::ConsoleSocket::Path),
    })
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("husk-runtime: warning: {w}");
    }
}

fn run(cli: &Cli) -> Result<u8, Error> {
    if cli.systemd_cgroup {
        return Err(Error::Bundle("--systemd-cgroup is not supported: husk manages cgroupfs directly".into()));
    }
    match &cli.command {
        Command::Create(a) => {
            let (_, warnings) = runtime::create(&create_opts(cli, a)?)?;
            warn(&warnings);
        }
        Command::Start { id } => runtime::start(&cli.root, id)?,
        Command::State { id } => {
            let st = runtime::state(&cli.root, id)?;
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
        }
        Command::Kill { all, id, signal } => runtime::kill(&cli.root, id, parse_signal(signal)?, *all)?,
        Command::Delete { force, id } => runtime::delete(&cli.root, id, *force)?,
        Command::List { quiet } => {
            for st in runtime::list(&cli.root)? {
                if *quiet {
                    println!("{}", st.id);
                } else {
                    println!("{}\t{}\t{}\t{}", st.id, st.pid.unwrap_or(0), st.status, st.bundle.display());
                }
            }
        }
        Command::Run { create, detach } => {
            let opts = create_opts(cli, create)?;
            let (st, warnings) = runtime::create(&opts)?;
            warn(&warnings);
            if let Err(e) = runtime::start(&cli.root, &opts.id) {
                let _ = runtime::delete(&cli.root, &opts.id, true);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            husk_shim::forward_signals_to(st.pid);
            let code = wait_for(st.pid);
            runtime::delete(&cli.root, &opts.id, true)?;
            return Ok(code);
        }
        Command::Exec(a) => {
            let opts = runtime::ExecOptions {
                process: exec_process(cli, a)?,
                console: a.console_socket.clone().map(husk_shim::runtime::console::ConsoleSocket::Path),
                pid_file: a.pid_file.clone(),
            };
            let (pid, warnings) = runtime::exec(&cli.root, &a.id, &opts)?;
            warn(&warnings);
            if a.detach {
                return Ok(0);
            }
            husk_shim::forward_signals_to(pid);
            return Ok(wait_for(pid));
        }
        Command::Features => println!("{}", features()),
    }
    Ok(0)
}

/// The process an exec runs: `--process` as given, else the container's own process with the
/// command and options of the command line.
fn exec_process(cli: &Cli, a: &ExecArgs) -> Result<oci_spec::runtime::Process, Error> {
    if a.preserve_fds != 0 {
        return Err(Error::Bundle("--preserve-fds is not supported".into()));
    }
    if let Some(path) = &a.process {
        let text = std::fs::read(path).map_err(|e| Error::Bundle(format!("--process {}: {e}", path.display())))?;
        return serde_json::from_slice(&text)
            .map_err(|e| Error::Bundle(format!("--process {}: not a runtime-spec process: {e}", path.display())));
    }
    if a.command.is_empty() {
        return Err(Error::Bundle("exec needs a COMMAND (or --process)".into()));
    }
    let st = runtime::state(&cli.root, &a.id)?;
    let spec = husk_oci::bundle::read_spec(&st.bundle).map_err(|e| Error::Bundle(e.to_string()))?;
    let mut p = spec.process().clone().ok_or_else(|| Error::Bundle("config.json has no process".into()))?;
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let name = kv.split_once('=').map(|(n, _)| n).unwrap_or(kv);
            env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(name));
            env.push(if kv.contains('=') { kv.clone() } else { format!("{kv}=") });
        }
        p.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let bad = || Error::Bundle(format!("--user `{u}`: use UID or UID:GID (numbers)"));
        let (uid, gid) = match u.split_once(':') {
            Some((uid, gid)) => (uid.parse().map_err(|_| bad())?, gid.parse().map_err(|_| bad())?),
            None => (u.parse().map_err(|_| bad())?, 0),
        };
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(None);
        p.set_user(user);
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let cap = husk_oci::caps::to_oci(name)
                .map_err(|_| Error::Bundle(format!("--cap: unknown capability `{name}`")))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Waits for the init (our child: we are its subreaper) and returns the shell's exit status.
fn wait_for(pid: i32) -> u8 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128u8.wrapping_add(sig as u8),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn features() -> String {
    let caps: Vec<String> = husk_oci::caps::all().into_iter().collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.0.2",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "dev", "diratime", "dirsync", "exec", "mand", "noatime", "nodev",
            "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind",
            "relatime", "remount", "ro", "rprivate", "rro", "rshared", "rslave", "runbindable", "rw", "shared",
            "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": [format!("SCMP_ARCH_{}", std::env::consts::ARCH.to_ascii_uppercase())]
            },
            "apparmor": {"enabled": true},
            "selinux": {"enabled": true}
        },
        "annotations": {"io.husk.runtime": env!("CARGO_PKG_VERSION")}
    }))
    .unwrap_or_default()
}

fn log_error(cli: &Cli, e: &Error) {
    let Some(path) = &cli.log else { return };
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) else { return };
    let line = match cli.log_format {
        LogFormat::Json => serde_json::json!({"level": "error", "msg": e.to_string()}).to_string(),
        LogFormat::Text => format!("level=error msg={:?}", e.to_string()),
    };
    let _ = writeln!(f, "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log_error(&cli, &e);
            eprintln!("husk-runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
