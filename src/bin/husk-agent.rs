//! husk-agent: the node daemon serving `husk.agent.v1` on a unix socket.
use std::process::ExitCode;

use clap::Parser;
use husk::agent::{service::Service, Agent, Flags, Settings};
use husk_proto::agent::v1::containerizer_server::ContainerizerServer;

#[derive(Parser)]
#[command(
    name = "husk-agent",
    version,
    about = "husk's node agent: runs Mesos-style container launches, one husk-shim per container",
    after_help = "Example:\n  husk-agent --work-dir /var/lib/husk --runtime-dir /run/husk --listen unix:///run/husk/husk.sock"
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log_format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("husk-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let socket = settings.socket.clone();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(settings.socket_mode))?;
        if let Some(group) = &settings.socket_group {
            let gid = match group.parse::<u32>() {
                Ok(g) => nix::unistd::Gid::from_raw(g),
                Err(_) => {
                    nix::unistd::Group::from_name(group)?
                        .ok_or_else(|| anyhow::anyhow!("--socket-group: no group `{group}`"))?
                        .gid
                }
            };
            nix::unistd::chown(&socket, None, Some(gid))?;
        }
    }
    let agent = Agent::start(settings).await?;
    tracing::info!(socket = %socket.display(), containers = agent.all().len(), "serving");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping; containers keep running");
    };
    tonic::transport::Server::builder()
        .add_service(ContainerizerServer::new(Service(agent)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
