//! huskctl: the operator's command line for husk.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
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
    /// Wait for a container to terminate and print its termination; exits with its status.
    Wait { id: String },
    /// Print huskctl's version.
    Version,
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
        conflicts_with_all = ["command", "resources", "limits", "hostname", "user", "env", "no_shell"]
    )]
    file: Option<String>,
    /// Container id (default: the launch document's; else `bundle` uses `husk-bundle`, `run`
    /// generates one).
    #[arg(long)]
    id: Option<String>,
    /// Resources in Mesos' text form, e.g. `cpus:1;mem:128`.
    #[arg(long, value_name = "RESOURCES")]
    resources: Option<String>,
    /// A limit above the request, e.g. `cpus=2` or `mem=inf` (repeatable).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Hostname of the container.
    #[arg(long)]
    hostname: Option<String>,
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
            None => launch_from_flags(self, id),
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
    };
    let result = match cli.command {
        Command::Bundle(args) => bundle(*args),
        Command::Run(args) => return finish(block_on(run(&endpoint, *args))),
        Command::Wait { id } => return finish(block_on(wait(&endpoint, &id))),
        Command::Version => {
            println!("huskctl {}", env!("CARGO_PKG_VERSION"));
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

fn launch_from_flags(args: &LaunchFlags, id: &str) -> Result<LaunchRequest> {
    if args.command.is_empty() {
        bail!("give a launch file with -f FILE, or a command after `--`");
    }
    let variables = args
        .env
        .iter()
        .map(|kv| {
            let (name, value) = kv.split_once('=').with_context(|| format!("--env `{kv}` is not NAME=VALUE"))?;
            Ok(environment::Variable { name: name.into(), value: Some(value.into()), ..Default::default() })
        })
        .collect::<Result<Vec<_>>>()?;
    let (shell, value, arguments) = if args.no_shell {
        (false, args.command[0].clone(), args.command.clone())
    } else {
        (true, args.command.join(" "), Vec::new())
    };
    let resources = match &args.resources {
        Some(text) => husk_oci::resources::parse(text, "--resources")?,
        None => Vec::new(),
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
            value: Some(value),
            arguments,
            user: args.user.clone(),
            environment: (!variables.is_empty()).then_some(Environment { variables }),
            ..Default::default()
        }),
        resources,
        limits,
        container: Some(ContainerInfo {
            r#type: container_info::Type::Mesos as i32,
            hostname: args.hostname.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
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
}

impl Api {
    async fn connect(
        &self,
    ) -> Result<husk_proto::agent::v1::containerizer_client::ContainerizerClient<tonic::transport::Channel>> {
        husk::client::connect_with(&self.endpoint, &self.tls).await
    }
}

async fn run(endpoint: &Api, a: RunArgs) -> Result<u8> {
    use husk_proto::agent::v1 as pb;
    // --id, else the launch document's own, else a fresh one.
    let generated = a.launch.id.clone().unwrap_or_else(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("husk-{nanos:x}")
    });
    let mut req = a.launch.request(a.launch.id.as_deref(), &generated)?;
    let id = req.container_id.value.clone();
    req.runtime = a.runtime.clone();
    let mut client = endpoint.connect().await?;
    client.launch(req).await.map_err(status_error)?;
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    let container_id = husk_proto::mesos::v1::ContainerId { value: id.clone(), parent: None };
    let mut logs = client
        .logs(pb::LogsRequest { container_id: container_id.clone(), follow: Some(true), ..Default::default() })
        .await
        .map_err(status_error)?
        .into_inner();
    use std::io::Write;
    while let Some(chunk) = logs.message().await.map_err(status_error)? {
        let data = chunk.data.unwrap_or_default();
        if chunk.stream == Some(pb::logs_request::Stream::Stderr as i32) {
            let _ = std::io::stderr().write_all(&data);
        } else {
            let _ = std::io::stdout().write_all(&data);
        }
    }
    let t = client.wait(pb::WaitRequest { container_id }).await.map_err(status_error)?.into_inner();
    Ok(exit_status(&t))
}

async fn wait(endpoint: &Api, id: &str) -> Result<u8> {
    use husk_proto::agent::v1 as pb;
    let mut client = endpoint.connect().await?;
    let container_id = husk_proto::mesos::v1::ContainerId { value: id.to_string(), parent: None };
    let t = client.wait(pb::WaitRequest { container_id }).await.map_err(status_error)?.into_inner();
    println!("{}", serde_json::to_string_pretty(&t)?);
    Ok(exit_status(&t))
}
