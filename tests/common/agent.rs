//! A real husk-agent process for end-to-end tests: its own work, runtime and cgroup dirs, a
//! gRPC client over its socket, restarts and kill -9, and a cleanup that fails the test when a
//! container cgroup is left behind. Included by the tests of the root crate as
//! `#[path = "common/agent.rs"] mod fixture;` (the shim crate's tests share `common` but have no
//! agent binary).
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{CommandInfo, ContainerId};
use tonic::transport::Channel;

/// A top-level container id.
pub fn cid(id: &str) -> ContainerId {
    ContainerId { value: id.into(), parent: None }
}

/// A launch of the shell command `script` on the host filesystem.
pub fn launch(id: &str, script: &str) -> pb::LaunchRequest {
    pb::LaunchRequest {
        container_id: cid(id),
        command: Some(CommandInfo { value: Some(script.into()), ..Default::default() }),
        ..Default::default()
    }
}

/// Waits for `id` to terminate (a hang fails the test after two minutes).
pub async fn wait(c: &mut ContainerizerClient<Channel>, id: &str) -> pb::ContainerTermination {
    tokio::time::timeout(Duration::from_secs(120), c.wait(pb::WaitRequest { container_id: cid(id) }))
        .await
        .expect("Wait answered in time")
        .unwrap()
        .into_inner()
}

/// Runs the shell command `script` in container `id` with ExecSync and returns the answer.
pub async fn exec_script(c: &mut ContainerizerClient<Channel>, id: ContainerId, script: &str) -> pb::ExecSyncResponse {
    let command = CommandInfo { value: Some(script.into()), ..Default::default() };
    let process = pb::ExecProcess { container_id: id, command, ..Default::default() };
    c.exec_sync(pb::ExecSyncRequest { process, ..Default::default() }).await.unwrap().into_inner()
}

/// Processes whose command line names `dir` (shims carry their state dir), but `except`.
pub fn processes_under(dir: &std::path::Path, except: Option<u32>) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if Some(pid) == except {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub cgroups: crate::common::CgroupRoot,
    pub process: Option<Child>,
    /// Environment of the next (re)start, e.g. `HUSK_FAILPOINTS`.
    pub env: Vec<(String, String)>,
    /// Bridges of the CNI networks made with [`Agent::cni_bridge`], deleted at the end.
    pub bridges: Vec<String>,
}

impl Agent {
    pub fn start(tag: &str) -> Agent {
        Agent::start_with(tag, "")
    }

    pub fn start_with(tag: &str, config: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // Settings come from the config file too (flags win over it).
        let config = format!("pids_limit = 512\nlog_format = \"json\"\nruntime = \"husk\"\n{config}");
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("cni")).unwrap();
        let mut a = Agent {
            dir,
            cgroups: crate::common::CgroupRoot::new(tag),
            process: None,
            env: Vec::new(),
            bridges: Vec::new(),
        };
        a.restart();
        a
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("husk.sock")
    }

    /// Writes a CNI network `name` (bridge, host-local IPAM in this agent's directory, portmap)
    /// into the agent's CNI configuration directory: the next launch sees it.
    pub fn cni_bridge(&mut self, name: &str, bridge: &str, subnet: &str) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                    "ipam": {
                        "type": "host-local", "ranges": [[{"subnet": subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.path("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(self.path("cni").join(format!("10-{name}.conflist")), conf.to_string()).unwrap();
        self.bridges.push(bridge.into());
    }

    /// (Re)starts the agent process and waits until its socket answers.
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "the agent never served: {}",
            std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
        );
    }

    /// (Re)starts the agent process (a running one is killed first, so no two agents ever
    /// share the directories): whether it served (false: it exited first, its status left for
    /// [`Agent::exited`]).
    pub fn try_restart(&mut self) -> bool {
        self.kill9();
        let agent = PathBuf::from(env!("CARGO_BIN_EXE_husk-agent"));
        let shim = agent.with_file_name("husk-shim");
        assert!(shim.exists(), "{} is missing: build the workspace (cargo test --workspace)", shim.display());
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.path("cri.sock"));
        let child = Command::new(&agent)
            .arg("--config")
            .arg(self.path("agent.toml"))
            .arg("--work-dir")
            .arg(self.path("work"))
            .arg("--runtime-dir")
            .arg(self.path("run"))
            .arg("--listen")
            .arg(format!("unix://{}", self.socket().display()))
            // Never the node's CNI networks: those a test writes with `cni_bridge`.
            .arg("--cni-conf-dir")
            .arg(self.path("cni"))
            .args(["--cgroup-root", &self.cgroups.name, "--log-level", "debug"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.path("agent.log")).unwrap())
            .spawn()
            .unwrap();
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            if self.process.as_mut().unwrap().try_wait().unwrap().is_some() {
                return false;
            }
            assert!(Instant::now() < deadline, "the agent did not serve within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Waits (at most `within`) for the agent process to exit on its own, e.g. at a failpoint.
    pub fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.as_mut()?.try_wait().unwrap() {
                self.process = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub async fn client(&self) -> ContainerizerClient<Channel> {
        self.try_client().await.expect("connecting to the agent")
    }

    /// A client, unless the agent refuses the connection (it is gone).
    pub async fn try_client(&self) -> Option<ContainerizerClient<Channel>> {
        Some(ContainerizerClient::new(unix_channel(self.socket()).await.ok()?))
    }

    /// A channel to the agent's CRI socket (`cri.sock`), once it appears.
    pub async fn cri_channel(&self) -> Channel {
        let socket = self.path("cri.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the CRI socket never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unix_channel(socket).await.expect("connecting to the CRI socket")
    }
}

/// A gRPC channel over the unix socket at `path`.
async fn unix_channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
}

/// Runs huskctl against `agent` (with a deadline, so a hang fails the test instead of CI).
pub fn huskctl(agent: &Agent, args: &[&str]) -> crate::common::Output {
    let out = crate::common::run_with_deadline(&mut huskctl_command(agent, args), Duration::from_secs(120));
    assert!(!out.timed_out, "huskctl {args:?} hung");
    out
}

/// huskctl against `agent`, to run as the caller likes.
pub fn huskctl_command(agent: &Agent, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huskctl"));
    cmd.args(args).env("HUSK_ENDPOINT", format!("unix://{}", agent.socket().display())).env("NO_COLOR", "1");
    cmd
}

/// Runs huskctl and requires success; returns stdout.
pub fn ok(agent: &Agent, args: &[&str]) -> String {
    let out = huskctl(agent, args);
    assert!(out.status.success(), "huskctl {args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        for b in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", b]).stderr(Stdio::null()).status();
        }
        // Whatever the test left: every shim and container goes (husk-shim cleanup per shim).
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_husk-agent")).with_file_name("husk-shim");
        if let Ok(entries) = std::fs::read_dir(self.path("run/shims")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let c = self.path("work/containers").join(&id);
                let _ = Command::new(&shim)
                    .args(["cleanup", "--id", &id, "--bundle"])
                    .arg(c.join("bundle"))
                    .arg("--sandbox")
                    .arg(c.join("sandbox"))
                    .arg("--state-dir")
                    .arg(e.path())
                    .output();
            }
        }
        // Mounts the agent made (rootfs overlays) when the test failed before removing its
        // containers: deepest first, detached, so the temporary directory can go.
        let mut mounts = crate::common::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let leaves: Vec<_> = self
            .cgroups
            .leftovers()
            .into_iter()
            .filter(|p| !p.ends_with(&self.cgroups.name) && !p.ends_with("shims.scope"))
            .collect();
        if !std::thread::panicking() {
            assert!(leaves.is_empty(), "container cgroups left: {leaves:?}");
        }
    }
}
