//! husk-bench: husk side by side with the tools an operator would otherwise use, in one run on
//! one machine. It builds what it needs (a busybox-static rootfs, OCI bundles, an image, a private
//! husk-agent and, when containerd is installed, a private containerd), measures, prints a
//! table and writes the figures as JSON. Run as root:
//!
//! ```sh
//! cargo run --release --bin husk-bench     # or: bash .ci/bench, which installs runc and containerd
//! ```
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{container_info, image, CommandInfo, ContainerId, ContainerInfo, Image};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "husk-bench",
    about = "Benchmarks husk against runc (and containerd when installed) on this machine",
    long_about = "Benchmarks husk against runc (and containerd when installed), in one run on this \
                  machine: launch latency, burst launches, shim and agent memory, 1000 containers on \
                  the node, agent recovery, image rootfs overhead. Needs root, runc and \
                  busybox-static; prints a table and writes the figures as JSON. Nothing it starts \
                  outlives it."
)]
struct Args {
    /// Launch→exit runs per tool (latency percentiles).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(10..))]
    runs: u32,
    /// Containers launched at once in the burst (and whose shims are measured).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    burst: u32,
    /// Running containers when the agent is killed and restarted.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    recovery: u32,
    /// Sleeping containers on the node for the scale figures (at least --recovery).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    scale: u32,
    /// Where the JSON goes (default: husk-bench.json in the binaries' target directory).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Leave containerd out even when it is installed.
    #[arg(long)]
    no_containerd: bool,
}

/// Percentiles of a sample, in milliseconds.
#[derive(Clone, Copy, serde::Serialize)]
struct Dist {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        v.sort_by(|a, b| a.total_cmp(b));
        // Nearest rank: the smallest value with at least p of the sample at or below it (of 50
        // runs, p99 is the slowest).
        let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        Dist { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: v.iter().sum::<f64>() / v.len() as f64 }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// What a process holds, in KiB (`smaps_rollup`).
#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    /// Anonymous memory: what is the process's own, not pages of files shared with others.
    anon: u64,
}

/// The number after `key` in a `/proc` table of `Key:   value kB` lines (0 when missing).
fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory_of(pid: i32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Mem { rss: kib(&text, "Rss"), pss: kib(&text, "Pss"), anon: kib(&text, "Anonymous") }
}

fn meminfo_kib(key: &str) -> u64 {
    kib(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default(), key)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

/// A busybox-static root filesystem: every applet under /bin and the usual mount points.
fn busybox_rootfs(dir: &Path) -> Result<()> {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "mnt/mesos/sandbox", "root"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying /bin/busybox")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

fn launch_request(id: &str, argv: &[&str]) -> pb::LaunchRequest {
    pb::LaunchRequest {
        container_id: ContainerId { value: id.into(), parent: None },
        command: Some(CommandInfo {
            shell: Some(false),
            value: Some(argv[0].into()),
            arguments: argv.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An OCI bundle (husk's own translation) running `argv` in `rootfs`, in cgroup
/// `<cgroup_root>/<id>`.
fn bundle(dir: &Path, rootfs: &Path, cgroup_root: &str, id: &str, argv: &[&str]) -> Result<PathBuf> {
    let sandbox = dir.join("sandbox");
    std::fs::create_dir_all(&sandbox)?;
    let cfg = husk_oci::Config { cgroup_root: cgroup_root.into(), ..Default::default() };
    let place = husk_oci::Placement { sandbox_dir: sandbox, rootfs: Some(rootfs.to_path_buf()), ..Default::default() };
    let b = dir.join(id);
    husk_oci::translate(&launch_request(id, argv), &cfg, &place)?.write_bundle(&b)?;
    Ok(b)
}

/// The namespaces a bundle's container gets, as clone flags.
fn namespaces_of(bundle: &Path) -> Result<nix::sched::CloneFlags> {
    use nix::sched::CloneFlags;
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let mut flags = CloneFlags::empty();
    for ns in spec["linux"]["namespaces"].as_array().into_iter().flatten() {
        flags |= match ns["type"].as_str().unwrap_or_default() {
            "mount" => CloneFlags::CLONE_NEWNS,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "network" => CloneFlags::CLONE_NEWNET,
            "pid" => CloneFlags::CLONE_NEWPID,
            "cgroup" => CloneFlags::CLONE_NEWCGROUP,
            _ => CloneFlags::empty(),
        };
    }
    Ok(flags)
}

/// The kernel's floor for one container: fork, unshare the bundle's namespaces, fork into the
/// new pid namespace, chroot into the rootfs and exec `/bin/true`; until it is reaped. Called
/// before any thread is started.
#[allow(unsafe_code)]
fn floor_once(rootfs: &CString, flags: nix::sched::CloneFlags) -> Result<f64> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let argv = [CString::new("/bin/true")?];
    let start = Instant::now();
    // SAFETY: the process has one thread, and the children only make system calls before exec.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = (|| {
                nix::sched::unshare(flags).ok()?;
                // SAFETY: as above.
                match unsafe { fork() }.ok()? {
                    ForkResult::Child => {
                        nix::unistd::chroot(rootfs.as_c_str()).ok()?;
                        nix::unistd::chdir("/").ok()?;
                        let _ = nix::unistd::execv(&argv[0], &argv);
                        None
                    }
                    ForkResult::Parent { child } => match waitpid(child, None).ok()? {
                        WaitStatus::Exited(_, c) => Some(c),
                        _ => None,
                    },
                }
            })()
            .unwrap_or(127);
            // SAFETY: _exit is async-signal-safe; nothing of the parent's state is flushed.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(ms(start)),
            other => bail!("the floor's /bin/true ended {other:?}"),
        },
    }
}

/// Launch→exit latencies of `<runtime> run` of the bundle, in ms.
fn runtime_runs(runtime: &Path, bundle: &Path, state: &Path, tag: &str, runs: u32) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        let status = Command::new(runtime)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("bench-{tag}-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        out.push(ms(start));
        if !status.success() {
            bail!("{} run failed ({status})", runtime.display());
        }
    }
    Ok(out)
}

/// A husk-agent of the benchmark's own: its work dir, socket and cgroup root.
struct AgentProcess {
    binary: PathBuf,
    dir: PathBuf,
    cgroup_root: String,
    child: Option<std::process::Child>,
}

impl AgentProcess {
    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("agent.sock").display())
    }

    fn start(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join("agent.sock"));
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(self.dir.join("none.toml"))
            .arg("--work-dir")
            .arg(self.dir.join("work"))
            .arg("--runtime-dir")
            .arg(self.dir.join("run"))
            .arg("--listen")
            .arg(self.endpoint())
            .args(["--cgroup-root", &self.cgroup_root, "--runtime", "husk", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log"))?)
            .spawn()
            .context("starting husk-agent")?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client, once the socket answers.
    async fn client(&mut self, within: Duration) -> Result<ContainerizerClient<Channel>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("husk-agent exited ({status}); see {}", self.dir.join("agent.log").display());
            }
            if self.dir.join("agent.sock").exists() {
                if let Ok(c) = husk::client::connect(&self.endpoint()).await {
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                bail!("husk-agent did not answer within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The mean time between a launch's request (`sent`, by container id) and each state the agent
/// reported for it, step by step.
fn phases(sent: &BTreeMap<String, i64>, events: &[pb::ContainerEvent]) -> Vec<(String, f64)> {
    use pb::ContainerState as S;
    let order = [S::Provisioning, S::Preparing, S::Isolating, S::Fetching, S::Running, S::Destroying, S::Terminated];
    let mut sums = vec![0.0; order.len()];
    let mut counted = 0;
    for (id, t0) in sent {
        let at =
            |s: S| events.iter().find(|e| e.container_id.value == *id && e.state() == s).and_then(|e| e.timestamp_ns);
        let Some(times) = order.iter().map(|s| at(*s)).collect::<Option<Vec<i64>>>() else { continue };
        let mut prev = *t0;
        for (sum, t) in sums.iter_mut().zip(&times) {
            *sum += (t - prev) as f64 / 1e6;
            prev = *t;
        }
        counted += 1;
    }
    let steps = [
        "request → PROVISIONING (gRPC, validation, checkpoint, rootfs mount)",
        "PROVISIONING → PREPARING",
        "PREPARING → ISOLATING (bundle written, sandbox chowned)",
        "ISOLATING → FETCHING (husk-shim start: container created)",
        "FETCHING → RUNNING (shim Start: the command runs)",
        "RUNNING → DESTROYING (/bin/true runs and exits, shim delete)",
        "DESTROYING → TERMINATED (shim cleanup, isolators, rootfs)",
    ];
    match counted {
        0 => Vec::new(),
        n => steps.iter().zip(sums).map(|(s, sum)| (s.to_string(), sum / n as f64)).collect(),
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn cid(id: &str) -> ContainerId {
    ContainerId { value: id.into(), parent: None }
}

/// Launch + Wait of one container through the agent; ms.
async fn launch_and_wait(c: &mut ContainerizerClient<Channel>, req: pb::LaunchRequest) -> Result<f64> {
    let id = req.container_id.clone();
    let start = Instant::now();
    c.launch(req).await.context("Launch")?;
    let t = c.wait(pb::WaitRequest { container_id: id.clone() }).await.context("Wait")?.into_inner();
    let took = ms(start);
    if t.state() != husk_proto::mesos::v1::TaskState::TaskFinished {
        bail!("container {} ended {:?}: {}", id.value, t.state(), t.message());
    }
    c.remove(pb::RemoveRequest { container_id: id }).await.context("Remove")?;
    Ok(took)
}

/// Launches `ids` (sleeping) through the agent, `parallel` at a time; returns the wall time, ms.
async fn launch_sleepers(c: &ContainerizerClient<Channel>, ids: Vec<String>, parallel: usize) -> Result<f64> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for id in ids {
        let (mut c, permits) = (c.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire().await;
            c.launch(launch_request(&id, &["/bin/sleep", "3600"])).await.with_context(|| format!("launching {id}"))
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(ms(start))
}

/// Kills, waits for and removes every container the agent has.
async fn destroy_all(c: &ContainerizerClient<Channel>) -> Result<()> {
    let list = c.clone().list(pb::ListRequest::default()).await?.into_inner();
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    for info in list.containers {
        let (mut c, permits) = (c.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire().await;
            let id = info.container_id;
            let _ = c.kill(pb::KillRequest { container_id: id.clone(), ..Default::default() }).await;
            let _ = c.wait(pb::WaitRequest { container_id: id.clone() }).await;
            c.remove(pb::RemoveRequest { container_id: id }).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Pids of the shims of the agent's containers.
fn shim_pids(agent_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("run/shims")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| husk_shim::shim::ProcessId::load(&e.path().join(husk_shim::shim::SHIM_FILE)))
        .map(|p| p.pid)
        .collect()
}

/// The benchmark image's name.
const IMAGE: &str = "localhost/husk-bench:1";

/// Writes an OCI image layout of `rootfs` (one gzipped layer) to `dir`, named [`IMAGE`].
fn image_layout(rootfs: &Path, dir: &Path) -> Result<()> {
    use sha2::Digest;
    use std::io::Write;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let hex: String = sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(blobs.join(&hex), data)?;
        Ok((format!("sha256:{hex}"), data.len()))
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", rootfs)?;
    let tar = tar.into_inner()?;
    let diff_id: String = sha2::Sha256::digest(&tar).iter().map(|b| format!("{b:02x}")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    let (layer, layer_size) = put(&gz.finish()?)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let (config, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "1", "io.containerd.image.name": IMAGE}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// The whole report, as written to JSON.
#[derive(Default, serde::Serialize)]
struct Report {
    machine: BTreeMap<String, String>,
    latency_ms: BTreeMap<String, Dist>,
    latency_ratio_to_runc_p50: BTreeMap<String, f64>,
    burst: BTreeMap<String, serde_json::Value>,
    memory_kib: BTreeMap<String, serde_json::Value>,
    scale: BTreeMap<String, serde_json::Value>,
    recovery: BTreeMap<String, serde_json::Value>,
    image_ms: BTreeMap<String, Dist>,
    /// Mean time of each step of an agent launch of /bin/true, from the agent's state events.
    launch_phases_ms: Vec<(String, f64)>,
    notes: Vec<String>,
}

fn machine() -> BTreeMap<String, String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = format!("{:.1} GiB", meminfo_kib("MemTotal") as f64 / 1048576.0);
    let cgroup =
        match (Path::new("/sys/fs/cgroup/cgroup.controllers").exists(), Path::new("/sys/fs/cgroup/unified").exists()) {
            (true, _) => "v2",
            (false, true) => "v1 hybrid",
            _ => "v1",
        };
    BTreeMap::from([
        ("cpu".into(), format!("{cpu}, {cores} cores")),
        ("memory".into(), mem),
        ("kernel".into(), first_line("uname", &["-r"])),
        ("cgroups".into(), cgroup.into()),
        ("runc".into(), first_line("runc", &["--version"])),
    ])
}

fn row(name: &str, d: &Dist, runc: Option<&Dist>) {
    let ratio = runc.map(|r| format!("{:.2}x", d.p50 / r.p50)).unwrap_or_default();
    println!("  {name:<34} {:>9.2} {:>9.2} {:>9.2} {:>9}", d.p50, d.p90, d.p99, ratio);
}

/// The directory of husk's binaries: the one husk-bench is in. Under `cargo run` (which builds
/// only this package), the workspace's other binaries are built first, so that one command
/// measures fresh ones.
fn binaries() -> Result<PathBuf> {
    let dir = std::env::current_exe()?.parent().map(Path::to_path_buf).context("no binary directory")?;
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) {
        let mut build = Command::new(cargo);
        build.args(["build", "--workspace", "--bins", "--quiet"]).current_dir(manifest);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        if !build.status().context("running cargo build")?.success() {
            bail!("cargo build of the workspace failed");
        }
    }
    for b in ["husk-agent", "husk-shim", "husk-runtime"] {
        if !dir.join(b).exists() {
            bail!("{} is missing beside husk-bench: build the workspace first (cargo build --release)", b);
        }
    }
    Ok(dir)
}

/// The benchmark's directory and cgroups, taken away however the run ends.
struct Leftovers {
    dir: tempfile::TempDir,
    cgroup_root: String,
}

impl Leftovers {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = husk::agent::sweep::unmount_all_under(self.dir.path());
        remove_cgroups(&self.cgroup_root);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("husk-bench needs root: it creates namespaces, cgroups and mounts");
    }
    let missing: Vec<&str> =
        [("runc", which("runc").is_some()), ("busybox-static", Path::new("/bin/busybox").exists())]
            .iter()
            .filter(|(_, there)| !there)
            .map(|(p, _)| *p)
            .collect();
    if !missing.is_empty() {
        bail!("missing: {} (apt-get install -y {})", missing.join(", "), missing.join(" "));
    }
    let bin = binaries()?;
    let scale = args.scale.max(args.recovery).max(args.burst);
    let cgroup_root = format!("husk-bench-{}", std::process::id());
    let work =
        Leftovers { dir: tempfile::Builder::new().prefix("husk-bench-").tempdir()?, cgroup_root: cgroup_root.clone() };
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs)?;
    let bundles = work.path().join("bundles");
    // Runtime state lives on a tmpfs, as /run is on a real node (the runtimes' state and the
    // agent's runtime dir; checkpoints that must survive a reboot stay on disk).
    for d in ["state", "agent/run"] {
        let dir = work.path().join(d);
        std::fs::create_dir_all(&dir)?;
        nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0755"))
            .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    }
    let mut report = Report { machine: machine(), ..Default::default() };
    println!("husk-bench on {}", report.machine.values().cloned().collect::<Vec<_>>().join("; "));

    // 1. Launch→exit of /bin/true, sequential, runtimes first (no thread exists yet: the floor
    // forks). Every tool gets a warm-up round.
    let runs = args.runs;
    let truth = bundle(&bundles, &rootfs, &cgroup_root, "true", &["/bin/true"])?;
    let flags = namespaces_of(&truth)?;
    let root_c = CString::new(rootfs.as_os_str().as_encoded_bytes())?;
    let mut floor = Vec::new();
    for i in 0..runs * 2 {
        let t = floor_once(&root_c, flags)?;
        if i >= runs {
            floor.push(t);
        }
    }
    let husk_runtime = bin.join("husk-runtime");
    let runc = which("runc").context("runc")?;
    let state = work.path().join("state");
    runtime_runs(&husk_runtime, &truth, &state.join("warm-husk"), "wh", runs.min(10))?;
    runtime_runs(&runc, &truth, &state.join("warm-runc"), "wr", runs.min(10))?;
    let h = runtime_runs(&husk_runtime, &truth, &state.join("husk"), "h", runs)?;
    let r = runtime_runs(&runc, &truth, &state.join("runc"), "r", runs)?;
    report.latency_ms.insert("kernel floor (unshare + exec)".into(), Dist::of(floor));
    report.latency_ms.insert("husk-runtime run".into(), Dist::of(h));
    report.latency_ms.insert("runc run".into(), Dist::of(r));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut agent = AgentProcess {
        binary: bin.join("husk-agent"),
        dir: work.path().join("agent"),
        cgroup_root: cgroup_root.clone(),
        child: None,
    };
    std::fs::create_dir_all(&agent.dir)?;
    std::fs::write(agent.dir.join("none.toml"), "")?;
    let containerd = match args.no_containerd {
        true => None,
        false => containerd::Containerd::start(work.path(), &rootfs),
    };
    let result = rt.block_on(agent_sections(
        &args,
        scale,
        &mut agent,
        &rootfs,
        &bundles,
        &cgroup_root,
        &mut report,
        containerd.as_ref(),
    ));
    // Whatever happened: nothing outlives the run.
    rt.block_on(async {
        if let Ok(c) = agent.client(Duration::from_secs(30)).await {
            let _ = destroy_all(&c).await;
        }
    });
    agent.kill9();
    drop(containerd);
    cleanup_runc(&work.path().join("state/burst"), &runc);
    result?;
    print_report(&report, args.runs);
    let json = args.json.unwrap_or_else(|| bin.parent().unwrap_or(&bin).join("husk-bench.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", json.display());
    drop(work);
    Ok(())
}

/// Deletes whatever runc containers are left under `state`.
fn cleanup_runc(state: &Path, runc: &Path) {
    let Ok(out) = Command::new(runc).arg("--root").arg(state).args(["list", "-q"]).output() else { return };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new(runc).arg("--root").arg(state).args(["delete", "-f", id]).output();
    }
}

/// Removes the benchmark's cgroup subtree in every hierarchy (the agent's containers and shims,
/// runc's and containerd's containers are all in it), deepest first.
fn remove_cgroups(name: &str) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines().filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup"))) {
        let Some(base) = line.split(' ').nth(4) else { continue };
        let root = Path::new(base).join(name);
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
                dirs.push(d);
            }
        }
        // Whatever still runs in them (an agent that died leaves its containers and shims):
        // killed first, or the directories cannot go.
        for d in &dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
        for d in dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn agent_sections(
    args: &Args,
    scale: u32,
    agent: &mut AgentProcess,
    rootfs: &Path,
    bundles: &Path,
    cgroup_root: &str,
    report: &mut Report,
    containerd: Option<&Result<containerd::Containerd>>,
) -> Result<()> {
    let runs = args.runs;
    agent.start()?;
    let mut c = agent.client(Duration::from_secs(30)).await?;
    let rootfs_text = rootfs.display().to_string();
    let with_rootfs =
        |id: &str| pb::LaunchRequest { rootfs: Some(rootfs_text.clone()), ..launch_request(id, &["/bin/true"]) };

    // 1 (cont.). Through the agent: Launch + Wait of /bin/true on the same rootfs (an overlay
    // of it, as a launch with `rootfs` gets).
    for i in 0..runs.min(10) {
        launch_and_wait(&mut c, with_rootfs(&format!("warm-{i}"))).await?;
    }
    let agent_rss_idle = memory_of(agent.pid()).rss;
    // Where the time goes: the agent's state events, timestamped as it enters each state.
    let mut stream = c.watch(pb::WatchRequest::default()).await?.into_inner();
    let events = Arc::new(std::sync::Mutex::new(Vec::<pb::ContainerEvent>::new()));
    let collector = tokio::spawn({
        let events = events.clone();
        async move {
            while let Ok(Some(e)) = stream.message().await {
                events.lock().unwrap().push(e);
            }
        }
    });
    let mut grpc = Vec::new();
    let mut sent = BTreeMap::new();
    for i in 0..runs {
        let id = format!("true-{i}");
        sent.insert(id.clone(), now_ns());
        grpc.push(launch_and_wait(&mut c, with_rootfs(&id)).await?);
    }
    report.latency_ms.insert("husk-agent Launch+Wait (gRPC)".into(), Dist::of(grpc));
    tokio::time::sleep(Duration::from_millis(100)).await;
    collector.abort();
    report.launch_phases_ms = phases(&sent, &events.lock().unwrap());
    match containerd {
        Some(Ok(ctrd)) => {
            ctrd.run_rm("warm", runs.min(10))?;
            report.latency_ms.insert("containerd ctr run --rm".into(), Dist::of(ctrd.run_rm("r", runs)?));
        }
        Some(Err(e)) => report.notes.push(format!("containerd left out: {e:#}")),
        None if args.no_containerd => report.notes.push("containerd left out (--no-containerd)".into()),
        None => report.notes.push("containerd: not installed (apt-get install -y containerd)".into()),
    }
    let runc_p50 = report.latency_ms["runc run"].p50;
    report.latency_ratio_to_runc_p50 = report.latency_ms.iter().map(|(k, d)| (k.clone(), d.p50 / runc_p50)).collect();

    // 6. Image rootfs over host rootfs: the same /bin/true from the host filesystem, from the
    // rootfs directory (an overlay of it) and from an imported image (an overlay of its layer).
    let layout = bundles.join("layout");
    image_layout(rootfs, &layout)?;
    let imported = c
        .import_image(pb::ImportImageRequest { path: layout.display().to_string(), name: None })
        .await
        .context("importing the benchmark image")?
        .into_inner();
    let name = imported.images.first().and_then(|i| i.names.first().cloned()).context("the import named nothing")?;
    let from_image = |id: &str| {
        let mut req = launch_request(id, &["/bin/true"]);
        req.container = Some(ContainerInfo {
            r#type: container_info::Type::Mesos as i32,
            mesos: Some(container_info::MesosInfo {
                image: Some(Image {
                    r#type: image::Type::Docker as i32,
                    docker: Some(image::Docker { name: name.clone(), ..Default::default() }),
                    cached: Some(true),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        });
        req
    };
    for i in 0..runs.min(10) {
        launch_and_wait(&mut c, from_image(&format!("warm-image-{i}"))).await?;
        launch_and_wait(&mut c, launch_request(&format!("warm-host-{i}"), &["/bin/true"])).await?;
    }
    let (mut host, mut dir, mut img) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so drift in the machine's state hits all three alike.
    for i in 0..runs {
        host.push(launch_and_wait(&mut c, launch_request(&format!("host-{i}"), &["/bin/true"])).await?);
        dir.push(launch_and_wait(&mut c, with_rootfs(&format!("dir-{i}"))).await?);
        img.push(launch_and_wait(&mut c, from_image(&format!("image-{i}"))).await?);
    }
    report.image_ms.insert("host filesystem".into(), Dist::of(host));
    report.image_ms.insert("rootfs directory (overlay)".into(), Dist::of(dir));
    report.image_ms.insert("image (overlay of its layers)".into(), Dist::of(img));

    // 2. Burst: N launches at once until all run; then runc run -d of N bundles at once.
    let baseline = meminfo_kib("MemAvailable");
    let ids: Vec<String> = (0..args.burst).map(|i| format!("s-{i}")).collect();
    let took = launch_sleepers(&c, ids, args.burst as usize).await?;
    let husk_rate = args.burst as f64 / (took / 1000.0);
    let mut runc_bundles = Vec::new();
    for i in 0..args.burst {
        runc_bundles.push(bundle(bundles, rootfs, cgroup_root, &format!("rb-{i}"), &["/bin/sleep", "3600"])?);
    }
    let runc = which("runc").context("runc")?;
    let runc_state = bundles.parent().unwrap_or(bundles).join("state/burst");
    let start = Instant::now();
    let children: Vec<_> = runc_bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Command::new(&runc)
                .arg("--root")
                .arg(&runc_state)
                .args(["run", "-d", "--bundle"])
                .arg(b)
                .arg(format!("rb-{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut runc_failed = 0;
    for mut child in children {
        if !child.wait()?.success() {
            runc_failed += 1;
        }
    }
    let runc_took = ms(start);
    cleanup_runc(&runc_state, &runc);
    if runc_failed > 0 {
        report.notes.push(format!("burst: {runc_failed} of {} `runc run -d` failed", args.burst));
    }
    let runc_rate = (args.burst - runc_failed) as f64 / (runc_took / 1000.0);
    report.burst.insert("containers".into(), args.burst.into());
    report.burst.insert("husk_seconds".into(), (took / 1000.0).into());
    report.burst.insert("husk_per_second".into(), husk_rate.into());
    report.burst.insert("runc_seconds".into(), (runc_took / 1000.0).into());
    report.burst.insert("runc_per_second".into(), runc_rate.into());

    // 3. Memory: the shims of the burst's containers, the agent idle and with them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shims: Vec<Mem> = shim_pids(&agent.dir).into_iter().map(memory_of).collect();
    if shims.is_empty() {
        bail!("no shim found under {}", agent.dir.join("run/shims").display());
    }
    let avg = |f: fn(&Mem) -> u64| (shims.iter().map(f).sum::<u64>() as f64 / shims.len() as f64).round();
    let agent_rss_n = memory_of(agent.pid()).rss;
    report.memory_kib.insert("husk_shim_one_rss".into(), shims[0].rss.into());
    report.memory_kib.insert("husk_shim_one_pss".into(), shims[0].pss.into());
    report.memory_kib.insert("husk_shim_avg_rss".into(), avg(|m| m.rss).into());
    report.memory_kib.insert("husk_shim_avg_pss".into(), avg(|m| m.pss).into());
    report.memory_kib.insert("husk_shim_avg_anonymous".into(), avg(|m| m.anon).into());
    report.memory_kib.insert("husk_shims".into(), shims.len().into());
    report.memory_kib.insert("agent_rss_idle".into(), agent_rss_idle.into());
    report.memory_kib.insert(format!("agent_rss_with_{}", args.burst), agent_rss_n.into());
    if let Some(Ok(ctrd)) = containerd {
        let m = ctrd.shim_memory()?;
        report.memory_kib.insert("containerd_shim_rss".into(), m.rss.into());
        report.memory_kib.insert("containerd_shim_pss".into(), m.pss.into());
        report.memory_kib.insert("containerd_shim_anonymous".into(), m.anon.into());
    }

    // 5. Recovery: --recovery containers running, the agent killed and restarted.
    let more: Vec<String> = (args.burst..args.recovery.max(args.burst)).map(|i| format!("s-{i}")).collect();
    launch_sleepers(&c, more, 16).await?;
    let running = args.recovery.max(args.burst);
    agent.kill9();
    let start = Instant::now();
    agent.start()?;
    c = agent.client(Duration::from_secs(600)).await?;
    let answering = ms(start);
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..running {
        let (mut c, permits) = (c.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire().await;
            let id = format!("s-{i}");
            let s = c.status(pb::StatusRequest { container_id: cid(&id) }).await?.into_inner();
            match s.info.map(|i| i.state()) {
                Some(pb::ContainerState::Running) => Ok(()),
                other => bail!("{id} is {other:?} after the restart"),
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let recovered = ms(start);
    report.recovery.insert("containers".into(), running.into());
    report.recovery.insert("seconds_until_socket_answers".into(), (answering / 1000.0).into());
    report.recovery.insert("seconds_until_status_of_all".into(), (recovered / 1000.0).into());

    // 4. Scale: --scale sleeping containers; List and Status latencies; memory.
    let more: Vec<String> = (running..scale).map(|i| format!("s-{i}")).collect();
    let fill = launch_sleepers(&c, more, 16).await?;
    let mut list = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let n = c.list(pb::ListRequest::default()).await?.into_inner().containers.len();
        list.push(ms(start));
        if n != scale as usize {
            bail!("List gave {n} containers, not {scale}");
        }
    }
    let mut status = Vec::new();
    for i in 0..500 {
        let id = format!("s-{}", (i * 7919) % scale);
        let start = Instant::now();
        c.status(pb::StatusRequest { container_id: cid(&id) }).await?;
        status.push(ms(start));
    }
    let shims: Vec<Mem> = shim_pids(&agent.dir).into_iter().map(memory_of).collect();
    let agent_rss = memory_of(agent.pid()).rss;
    report.scale.insert("containers".into(), scale.into());
    report.scale.insert("fill_seconds".into(), (fill / 1000.0).into());
    report.scale.insert("list_ms".into(), serde_json::to_value(Dist::of(list))?);
    report.scale.insert("status_ms".into(), serde_json::to_value(Dist::of(status))?);
    report.scale.insert("agent_rss_kib".into(), agent_rss.into());
    report.scale.insert("shims_pss_total_kib".into(), shims.iter().map(|m| m.pss).sum::<u64>().into());
    report.scale.insert("node_memory_used_kib".into(), baseline.saturating_sub(meminfo_kib("MemAvailable")).into());
    let start = Instant::now();
    destroy_all(&c).await?;
    report.scale.insert("destroy_all_seconds".into(), (ms(start) / 1000.0).into());
    Ok(())
}

/// A figure for the table: whole numbers as they are, others to two decimals.
fn shown(v: &serde_json::Value) -> String {
    match (v.as_u64(), v.as_f64()) {
        (Some(n), _) => n.to_string(),
        (None, Some(f)) if f.fract() == 0.0 => format!("{f:.0}"),
        (None, Some(f)) => format!("{f:.2}"),
        _ => v.to_string(),
    }
}

fn print_report(r: &Report, runs: u32) {
    println!("\n1. launch→exit of /bin/true, {runs} runs each (ms)");
    println!("  {:<34} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p90", "p99", "÷ runc");
    let runc = r.latency_ms.get("runc run");
    for (name, d) in &r.latency_ms {
        row(name, d, runc);
    }
    let num = |m: &BTreeMap<String, serde_json::Value>, k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    println!(
        "\n2. burst of {} launches at once, until all run: husk {:.2} s ({:.0}/s), runc run -d {:.2} s ({:.0}/s)",
        num(&r.burst, "containers"),
        num(&r.burst, "husk_seconds"),
        num(&r.burst, "husk_per_second"),
        num(&r.burst, "runc_seconds"),
        num(&r.burst, "runc_per_second"),
    );
    println!("\n3. memory (KiB)");
    for (k, v) in &r.memory_kib {
        println!("  {k:<34} {:>9}", shown(v));
    }
    println!(
        "\n4. scale: {} sleeping containers (filled in {:.1} s)",
        num(&r.scale, "containers"),
        num(&r.scale, "fill_seconds")
    );
    for (k, v) in &r.scale {
        match v.get("p99") {
            Some(_) => println!(
                "  {k:<34} p50 {:.2}  p90 {:.2}  p99 {:.2}",
                v["p50"].as_f64().unwrap_or(0.0),
                v["p90"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0)
            ),
            None if k != "containers" && k != "fill_seconds" => println!("  {k:<34} {:>9}", shown(v)),
            None => {}
        }
    }
    println!(
        "\n5. recovery: agent killed with {} containers running; socket answers after {:.2} s, Status of all after {:.2} s",
        num(&r.recovery, "containers"),
        num(&r.recovery, "seconds_until_socket_answers"),
        num(&r.recovery, "seconds_until_status_of_all"),
    );
    println!("\n6. image rootfs over host rootfs, Launch+Wait of /bin/true through the agent (ms)");
    println!("  {:<34} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p90", "p99", "÷ host");
    let host = r.image_ms.get("host filesystem");
    for (name, d) in &r.image_ms {
        row(name, d, host);
    }
    if !r.launch_phases_ms.is_empty() {
        println!("\nwhere an agent launch's time goes (mean ms; the rest is Wait's answer and Remove)");
        for (step, t) in &r.launch_phases_ms {
            println!("  {step:<70} {t:>7.2}");
        }
    }
    for n in &r.notes {
        println!("\nnote: {n}");
    }
}

/// A containerd of the benchmark's own (its root, state and socket under the work dir, the CRI
/// plugin off), with the benchmark image imported, driven with `ctr`.
mod containerd {
    use super::*;

    pub struct Containerd {
        child: std::process::Child,
        dir: PathBuf,
        namespace: String,
    }

    impl Containerd {
        /// `None` when containerd or ctr is not installed.
        pub fn start(work: &Path, rootfs: &Path) -> Option<Result<Containerd>> {
            let daemon = which("containerd")?;
            which("ctr")?;
            which("containerd-shim-runc-v2")?;
            Some(Self::start_at(&daemon, &work.join("containerd"), rootfs))
        }

        fn start_at(daemon: &Path, dir: &Path, rootfs: &Path) -> Result<Containerd> {
            std::fs::create_dir_all(dir)?;
            let config = format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
                dir.display()
            );
            std::fs::write(dir.join("config.toml"), config)?;
            let child = Command::new(daemon)
                .arg("--config")
                .arg(dir.join("config.toml"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("containerd.log"))?)
                .spawn()
                .context("starting containerd")?;
            let c =
                Containerd { child, dir: dir.to_path_buf(), namespace: format!("husk-bench-{}", std::process::id()) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.ctr(&["version"]).is_err() {
                if Instant::now() > deadline {
                    bail!("containerd did not answer; see {}", dir.join("containerd.log").display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // The same image husk runs, as an OCI layout tarball.
            let layout = dir.join("layout");
            image_layout(rootfs, &layout)?;
            let mut tar = tar::Builder::new(Vec::new());
            tar.append_dir_all(".", &layout)?;
            std::fs::write(dir.join("layout.tar"), tar.into_inner()?)?;
            c.ctr(&["images", "import", &dir.join("layout.tar").display().to_string()])?;
            Ok(c)
        }

        fn ctr(&self, args: &[&str]) -> Result<String> {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(self.dir.join("containerd.sock"))
                .args(["--namespace", &self.namespace])
                .args(args)
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }

        /// Launch→exit latencies of `ctr run --rm` of /bin/true, in ms.
        pub fn run_rm(&self, tag: &str, runs: u32) -> Result<Vec<f64>> {
            let mut out = Vec::new();
            for i in 0..runs {
                let start = Instant::now();
                self.ctr(&["run", "--rm", IMAGE, &format!("{tag}-{i}"), "/bin/true"])?;
                out.push(ms(start));
            }
            Ok(out)
        }

        /// The memory of the shim of one sleeping container.
        pub fn shim_memory(&self) -> Result<Mem> {
            self.ctr(&["run", "-d", IMAGE, "sleeper", "/bin/sleep", "3600"])?;
            let measured = (|| {
                let tasks = self.ctr(&["tasks", "ls"])?;
                let pid: i32 = tasks
                    .lines()
                    .find(|l| l.starts_with("sleeper "))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
                    .context("the sleeper's pid")?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
                let ppid: i32 = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
                    .context("the shim's pid")?;
                std::thread::sleep(Duration::from_millis(500));
                Ok(memory_of(ppid))
            })();
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", "sleeper"]);
            for _ in 0..100 {
                if self.ctr(&["tasks", "delete", "sleeper"]).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.ctr(&["containers", "delete", "sleeper"]);
            measured
        }
    }

    /// Stops the daemon, its shims (with whatever container they hold) and takes away what it
    /// mounted.
    impl Drop for Containerd {
        fn drop(&mut self) {
            let child = &mut self.child;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let marker = format!("-namespace\0{}\0", self.namespace);
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
            let _ = husk::agent::sweep::unmount_all_under(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_tables_are_read_by_key() {
        let text = "Rss:                4468 kB\nPss:                2280 kB\nPss_Anon:            494 kB\n";
        assert_eq!((kib(text, "Rss"), kib(text, "Pss"), kib(text, "Pss_Anon")), (4468, 2280, 494));
        assert_eq!(kib(text, "Anonymous"), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank_of_the_sorted_sample() {
        let d = Dist::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((d.p50, d.p90, d.p99, d.mean), (50.0, 90.0, 99.0, 50.5));
        let fifty = Dist::of((1..=50).map(f64::from).collect());
        assert_eq!((fifty.p50, fifty.p90, fifty.p99), (25.0, 45.0, 50.0));
        let one = Dist::of(vec![3.0]);
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
    }

    #[test]
    fn phases_follow_each_launch_from_its_request() {
        use pb::ContainerState as S;
        let event = |id: &str, s: S, t: i64| pb::ContainerEvent {
            container_id: cid(id),
            state: Some(s as i32),
            timestamp_ns: Some(t),
            ..Default::default()
        };
        let states =
            [S::Provisioning, S::Preparing, S::Isolating, S::Fetching, S::Running, S::Destroying, S::Terminated];
        let mut events = Vec::new();
        for (id, base) in [("a", 0), ("b", 1_000_000_000)] {
            for (i, s) in states.iter().enumerate() {
                // Step i takes (i + 1) ms for a, (i + 1) * 3 ms for b.
                let scale = if id == "a" { 1 } else { 3 };
                let at: i64 = (0..=i as i64).map(|k| (k + 1) * scale * 1_000_000).sum();
                events.push(event(id, *s, base + at));
            }
        }
        // A launch whose events are incomplete is left out.
        events.push(event("c", S::Provisioning, 5));
        let sent = BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 1_000_000_000), ("c".to_string(), 0)]);
        let p = phases(&sent, &events);
        assert_eq!(p.len(), 7);
        for (i, (_, ms)) in p.iter().enumerate() {
            assert!((ms - (i as f64 + 1.0) * 2.0).abs() < 1e-9, "step {i}: {ms}");
        }
        assert!(phases(&sent, &[]).is_empty());
    }
}
