//! husk-agent: the node daemon serving `husk.agent.v1` on a unix socket (and optionally over
//! TCP with mutual TLS).
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use husk::agent::{access, service::Service, Agent, Flags, Settings};
use husk_proto::agent::v1::containerizer_server::ContainerizerServer;
use husk_proto::cri::image_service_server::ImageServiceServer;
use husk_proto::cri::runtime_service_server::RuntimeServiceServer;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Parser)]
#[command(
    name = "husk-agent",
    version,
    about = "husk's node agent: runs Mesos-style container launches, one husk-shim per container",
    long_about = "husk's node agent: runs Mesos-style container launches, one husk-shim per container.\n\n\
        Every setting is a flag or a key of the config file (TOML, the flag's name with `_` for `-`); \
        flags win. Restarting the agent never stops containers: on start it re-attaches to every \
        checkpointed container, reports the ones that ended meanwhile, and destroys what no \
        checkpoint claims.",
    after_help = "Examples:\n  husk-agent\n  husk-agent --work-dir /var/lib/husk --listen unix:///run/husk/husk.sock --resources 'cpus:4;mem:8192'\n  husk-agent --tcp-listen 0.0.0.0:5051 --tls-cert agent.pem --tls-key agent-key.pem --tls-client-ca clients-ca.pem"
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own arena (up to 8 per core), and the
    // blocking pool's threads come and go with the load: under churn the agent's memory then
    // creeps up with each new arena. Two arenas serve two runtime workers; the soak test
    // measures the difference (tests/soak.rs).
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let failpoints = match husk_oci::failpoint::init() {
        Ok(armed) => armed,
        Err(e) => {
            eprintln!("husk-agent: {}: {e}", husk_oci::failpoint::VAR);
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The HPACK decoder of the `:authority` fix logs every header field it decodes at debug:
    // kept quiet unless the level names it.
    let filter = match settings.log_level.contains("loona_hpack") {
        true => filter,
        false => filter.add_directive("loona_hpack=warn".parse().expect("a valid directive")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log_format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
    if !failpoints.is_empty() {
        tracing::warn!("failpoints armed ({}): {}", husk_oci::failpoint::VAR, failpoints.join(", "));
    }
    // One connection per shim, a socket per client: the soft open-file limit (often 1024) would
    // cap the node near a thousand containers. Raised to the hard limit, as the unit in contrib/
    // sets both; containers inherit it unless their launch gives `rlimit_info`, as under Mesos.
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
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

/// glibc gives a heap's free pages back to the kernel only from its top. Under container churn
/// the free space ends up scattered between the few allocations that live on (connections'
/// buffers, the container table), and the agent's resident memory crept up by about a kilobyte
/// per container launched and removed while its live heap stayed near 1.3 MiB (heaptrack,
/// tests/soak.rs). `malloc_trim` also releases the free pages inside the heaps: 0.2 to 1.5 ms
/// every ten seconds in a debug build, and the idle agent gives back what a burst took.
async fn release_freed_memory() {
    let mut tick = tokio::time::interval(husk::agent::HEAP_TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Binds the API socket with its mode and group. Bound only once recovery is done, so a socket
/// that answers is an agent that knows every container.
fn bind_unix(settings: &Settings, socket: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    // Bind under a temporary name, set mode and group, then move it into place: no client ever
    // sees the socket with the wrong permissions.
    let tmp = socket.with_file_name(format!(".{}.tmp", socket.file_name().unwrap_or_default().to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let placed = (|| -> anyhow::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(settings.socket_mode))?;
        if let Some(group) = &settings.socket_group {
            let gid = husk::agent::config::group_id(group, "--socket-group")?;
            nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid)))?;
        }
        std::fs::rename(&tmp, socket)?;
        Ok(())
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let socket = settings.socket.clone();
    let tcp = settings.tcp.clone();
    let metrics_address = settings.metrics_address;
    let agent = Agent::start(settings).await?;
    tokio::spawn(release_freed_memory());
    if let Some(addr) = metrics_address {
        husk::agent::metrics::serve(addr, Arc::downgrade(&agent)).await?;
    }
    // Every listener is bound before the API socket appears: clients (and tests) take the
    // socket as the sign that the agent serves.
    let tcp_listener = match &tcp {
        Some(tcp) => Some(
            tokio::net::TcpListener::bind(tcp.addr)
                .await
                .map_err(|e| anyhow::anyhow!("--tcp-listen {}: {e}", tcp.addr))?,
        ),
        None => None,
    };
    // The CRI socket before the API socket: once the API answers, so does the CRI (a client
    // that waits for the API socket never meets a CRI socket left by the last agent).
    let cri = match agent.settings.cri_socket.clone() {
        None => None,
        Some(path) => {
            let cri = husk::agent::cri::Cri::new(agent.clone())?;
            let listener = bind_unix(&agent.settings, &path)?;
            tracing::info!(socket = %path.display(), "serving the Kubernetes CRI (runtime.v1)");
            Some((cri, listener, path))
        }
    };
    let listener = bind_unix(&agent.settings, &socket).inspect_err(|_| {
        if let Some((_, _, path)) = &cri {
            let _ = std::fs::remove_file(path);
        }
    })?;
    tracing::info!(socket = %socket.display(), containers = agent.all().len(), "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping; containers keep running");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    if let Some((gid, name)) = &agent.settings.admin_group {
        tracing::info!(group = %name, gid, "state-changing calls need root or the admin group");
    }
    let unix = Server::builder()
        .layer(access::AdminOnly { group: agent.settings.admin_group.clone() })
        .add_service(ContainerizerServer::new(Service(agent.clone())))
        .serve_with_incoming_shutdown(access::incoming(listener), stopped(stop_rx.clone()));
    let cri_socket = cri.as_ref().map(|(_, _, path)| path.clone());
    let cri = async {
        let Some((cri, listener, _)) = cri else { return Ok(()) };
        Server::builder()
            .layer(access::AdminOnly { group: agent.settings.admin_group.clone() })
            .add_service(RuntimeServiceServer::new(husk::agent::cri::RuntimeService(cri.clone())))
            .add_service(ImageServiceServer::new(husk::agent::cri::ImageService(cri)))
            .serve_with_incoming_shutdown(access::incoming(listener), stopped(stop_rx.clone()))
            .await
    };
    let unix = async { tokio::try_join!(unix, cri).map(|_| ()) };
    let result = match tcp.zip(tcp_listener) {
        None => unix.await.map_err(anyhow::Error::from),
        Some((tcp, incoming)) => {
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(&tcp.cert_pem, &tcp.key_pem))
                .client_ca_root(Certificate::from_pem(&tcp.client_ca_pem));
            tracing::info!(addr = %tcp.addr, "serving over TCP with mutual TLS");
            let remote = Server::builder()
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key/--tls-client-ca: {e}"))?
                .add_service(ContainerizerServer::new(Service(agent.clone())))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(incoming),
                    stopped(stop_rx.clone()),
                );
            tokio::try_join!(unix, remote).map(|_| ()).map_err(anyhow::Error::from)
        }
    };
    let _ = std::fs::remove_file(&socket);
    if let Some(path) = cri_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}
