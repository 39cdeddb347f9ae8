//! husk-shim: the per-container shim. `start` creates the container and leaves a daemon behind
//! that serves `husk.shim.v1` on `<state dir>/shim.sock`; `cleanup` destroys what a dead shim
//! left.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use husk_shim::shim::{self, Backend, Options};

#[derive(Parser)]
#[command(
    name = "husk-shim",
    version,
    about = "husk's per-container shim",
    after_help = "Example:\n  husk-shim start --id web --bundle /var/lib/husk/containers/web/bundle \\\n    \
        --sandbox /var/lib/husk/containers/web/sandbox --state-dir /run/husk/shims/web"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the container and serve it; prints the socket once the shim answers.
    Start(Common),
    /// Destroy what is left of a container whose shim is gone (idempotent).
    Cleanup(Common),
    /// Hold a pod's namespaces: the process a Kubernetes pod sandbox runs (husk's own "pause").
    /// Sleeps, reaps the orphans of a shared pid namespace, exits on SIGTERM or SIGINT.
    Hold,
}

#[derive(Args)]
struct Common {
    /// The container id.
    #[arg(long)]
    id: String,
    /// The OCI bundle.
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// The container's sandbox (its stdout and stderr go there).
    #[arg(long, value_name = "DIR")]
    sandbox: PathBuf,
    /// The shim's state directory (socket, pids, exit.json); created by start.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The runtime: `husk` (built in) or an OCI runtime command line (runc, crun, a path).
    #[arg(long, default_value = "husk")]
    runtime: String,
    /// The runtime's state root (default: `<state dir>/runtime`).
    #[arg(long, value_name = "DIR")]
    runtime_root: Option<PathBuf>,
    /// Run husk's init as the container's pid 1: it forwards signals to the command and reaps
    /// orphaned processes (built-in runtime only).
    #[arg(long)]
    init: bool,
    /// Keep the container's stdin open, for clients to attach to (without a terminal).
    #[arg(long)]
    stdin: bool,
    /// Move the shim itself into this cgroup (a path like `/husk/shims`, created if missing).
    #[arg(long, value_name = "PATH")]
    shim_cgroup: Option<PathBuf>,
    /// Also write the container's output to this file in the Kubernetes CRI log format
    /// (`<time> <stream> <F|P> <text>` per line), reopened on ReopenLog.
    #[arg(long, value_name = "PATH")]
    cri_log: Option<PathBuf>,
}

fn options(c: &Common) -> Options {
    let root = c.runtime_root.clone().unwrap_or_else(|| c.state_dir.join("runtime"));
    let backend = Backend::named(&c.runtime, root, &c.state_dir);
    Options {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        sandbox: c.sandbox.clone(),
        state_dir: c.state_dir.clone(),
        backend,
        init: c.init,
        stdin: c.stdin,
        shim_cgroup: c.shim_cgroup.clone(),
        cri_log: c.cri_log.clone(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Start(c) => shim::start(&options(c)).map(|socket| println!("{}", socket.display())),
        Command::Cleanup(c) => shim::cleanup(&options(c)),
        Command::Hold => shim::hold(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
