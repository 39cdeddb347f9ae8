//! husk-shim end to end: a real shim, a real container, over its unix socket.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{busybox_rootfs, CgroupRoot};
use husk_oci::resources::scalar;
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::{environment, CommandInfo, ContainerId, Environment};
use husk_proto::shim::v1 as pb;
use husk_shim::shim::{connect, ProcessId, SHIM_FILE};

struct Shim {
    work: tempfile::TempDir,
    cgroups: CgroupRoot,
    id: String,
    runtime: String,
    init: bool,
}

impl Shim {
    /// Writes a busybox bundle running `script` (with `env` and `mem` MB) and starts a shim.
    fn start(tag: &str, runtime: &str, script: &str, env: &[(&str, &str)], mem: Option<f64>) -> (Shim, PathBuf) {
        Shim::start_edited(tag, runtime, script, env, mem, |_| {})
    }

    /// The same, with `edit` applied to the bundle's config.json before the shim starts.
    fn start_edited(
        tag: &str,
        runtime: &str,
        script: &str,
        env: &[(&str, &str)],
        mem: Option<f64>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> (Shim, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        busybox_rootfs(&work.path().join("rootfs"));
        std::fs::create_dir(work.path().join("sandbox")).unwrap();
        let init = runtime.ends_with("+init");
        let tty = runtime.ends_with("+tty");
        let runtime = runtime.trim_end_matches("+init").trim_end_matches("+tty");
        let shim = Shim {
            cgroups: CgroupRoot::new(tag),
            id: format!("{tag}-{}", std::process::id()),
            work,
            runtime: runtime.into(),
            init,
        };
        let variables = env
            .iter()
            .map(|(k, v)| environment::Variable {
                name: k.to_string(),
                value: Some(v.to_string()),
                ..Default::default()
            })
            .collect();
        let req = LaunchRequest {
            container_id: ContainerId { value: shim.id.clone(), parent: None },
            command: Some(CommandInfo {
                value: Some(script.into()),
                environment: Some(Environment { variables }),
                ..Default::default()
            }),
            resources: mem.map(|m| vec![scalar("mem", m)]).unwrap_or_default(),
            container: tty.then(|| husk_proto::mesos::v1::ContainerInfo {
                r#type: husk_proto::mesos::v1::container_info::Type::Mesos as i32,
                tty_info: Some(husk_proto::mesos::v1::TtyInfo {
                    window_size: Some(husk_proto::mesos::v1::tty_info::WindowSize { rows: 30, columns: 100 }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cfg = Config { cgroup_root: shim.cgroups.name.clone(), ..Default::default() };
        let place =
            Placement { sandbox_dir: shim.path("sandbox"), rootfs: Some(shim.path("rootfs")), ..Default::default() };
        translate(&req, &cfg, &place).unwrap().write_bundle(&shim.path("bundle")).unwrap();
        let config = shim.path("bundle/config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        edit(&mut spec);
        std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        let out = common::run_with_deadline(&mut shim.command("start"), Duration::from_secs(60));
        assert!(out.status.success(), "husk-shim start: {}", out.stderr);
        let socket = PathBuf::from(out.stdout.trim());
        assert_eq!(socket, shim.path("state/shim.sock"));
        (shim, socket)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.work.path().join(p)
    }

    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk-shim"));
        cmd.arg(verb)
            .args(["--id", &self.id, "--bundle"])
            .arg(self.path("bundle"))
            .arg("--sandbox")
            .arg(self.path("sandbox"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--runtime", &self.runtime]);
        if self.init && verb == "start" {
            cmd.arg("--init");
        }
        if verb == "start" {
            cmd.arg("--shim-cgroup").arg(format!("/{}/shims", self.cgroups.name));
        }
        cmd
    }

    fn shim_pid(&self) -> ProcessId {
        ProcessId::load(&self.path("state").join(SHIM_FILE)).expect("shim.json")
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_default()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Whatever happened: the destroy path leaves nothing.
        let _ = common::run_with_deadline(&mut self.command("cleanup"), Duration::from_secs(30));
        let leaves: Vec<_> = self.cgroups.leftovers().into_iter().filter(|p| p.ends_with(&self.id)).collect();
        if !std::thread::panicking() {
            assert!(leaves.is_empty(), "cgroups left: {leaves:?}");
        }
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn lifecycle(runtime: &str) {
    let script = "echo out; echo err >&2; while [ ! -e /mnt/mesos/sandbox/go ]; do sleep 0.05; done; exit 3";
    let (shim, socket) = Shim::start(&format!("life-{runtime}"), runtime, script, &[], Some(64.0));
    let mut c = connect(&socket).await.unwrap();
    let st = c.state(pb::StateRequest {}).await.unwrap().into_inner();
    assert_eq!(st.status(), pb::Status::Created);
    assert_eq!(st.id, shim.id);
    assert!(st.pid > 0 && st.shim_pid > 0);
    assert_eq!(st.runtime, if runtime == "husk" { "husk" } else { runtime });
    assert!(shim.read("sandbox/stdout").is_empty(), "created, not started");

    c.start(pb::StartRequest {}).await.unwrap();
    assert_eq!(c.state(pb::StateRequest {}).await.unwrap().into_inner().status(), pb::Status::Running);
    assert!(c.start(pb::StartRequest {}).await.unwrap_err().message().contains("already started"));
    let stats = c.stats(pb::StatsRequest {}).await.unwrap().into_inner().statistics.unwrap();
    assert!(stats.processes.unwrap() >= 1);
    assert_eq!(stats.mem_limit_bytes, Some(64 << 20));
    // `runc start` returns once its init was told to go, which may be just before the init
    // execs the command (until then it is `runc:[2:INIT]`).
    let mut pids = Default::default();
    for _ in 0..200 {
        pids = c.pids(pb::PidsRequest {}).await.unwrap().into_inner();
        if pids.processes.iter().any(|p| p.pid == st.pid && p.command == "sh") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(pids.processes.iter().any(|p| p.pid == st.pid && p.command == "sh"), "{pids:?}");

    c.update(pb::UpdateRequest { memory_limit_bytes: 96 << 20, pids_limit: 50, ..Default::default() }).await.unwrap();
    let stats = c.stats(pb::StatsRequest {}).await.unwrap().into_inner().statistics.unwrap();
    assert_eq!(stats.mem_limit_bytes, Some(96 << 20), "update is live");
    let bad = c.update(pb::UpdateRequest { pids_limit: -7, ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    c.pause(pb::PauseRequest {}).await.unwrap();
    assert_eq!(c.state(pb::StateRequest {}).await.unwrap().into_inner().status(), pb::Status::Paused);
    c.resume(pb::ResumeRequest {}).await.unwrap();

    // Neither SIGTERM nor SIGHUP ends the shim.
    let me = shim.shim_pid();
    let own_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", me.pid)).unwrap();
    assert!(
        own_cgroup.contains(&format!("/{}/shims", shim.cgroups.name)),
        "the shim moved to its cgroup: {own_cgroup}"
    );
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(me.pid), sig).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(me.alive(), "the shim survived SIGTERM and SIGHUP");

    // Let the command finish.
    std::fs::write(shim.path("sandbox/go"), "").unwrap();
    let exit = c.wait(pb::WaitRequest {}).await.unwrap().into_inner();
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    let on_disk =
        husk_shim::exit::ExitRecord::load(&shim.path("state")).unwrap().expect("exit.json before Wait answers");
    assert_eq!(on_disk.exit_code, Some(3));
    assert!(on_disk.finished_at_ns >= on_disk.started_at_ns);
    assert_eq!(shim.read("sandbox/stdout"), "out\n");
    assert_eq!(shim.read("sandbox/stderr"), "err\n");
    assert_eq!(c.state(pb::StateRequest {}).await.unwrap().into_inner().status(), pb::Status::Stopped);

    let del = c.delete(pb::DeleteRequest {}).await.unwrap().into_inner();
    assert_eq!(del.exit.unwrap().exit_code, Some(3));
    c.delete(pb::DeleteRequest {}).await.expect("delete is idempotent");
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    wait_until("the shim to exit", || !me.alive()).await;
    assert!(!socket.exists(), "the socket goes with the shim");
}

#[tokio::test]
async fn lifecycle_with_the_builtin_runtime() {
    require!(false);
    lifecycle("husk").await;
}

/// Without hooks the shim starts and deletes a husk container itself; with poststart and
/// poststop hooks it runs those steps through husk-runtime, so that its reaper does not take
/// the hooks' exits from the step waiting for them. Either way the hooks run, with the state.
#[tokio::test]
async fn poststart_and_poststop_hooks_run_from_the_shim() {
    require!(false);
    let work = tempfile::tempdir().unwrap();
    let record = |name: &str| {
        let file = work.path().join(format!("hook-{name}"));
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", file.display())]})
    };
    let hooks = serde_json::json!({"poststart": [record("poststart")], "poststop": [record("poststop")]});
    let (shim, socket) = Shim::start_edited("hooks", "husk", "exit 0", &[], None, |s| s["hooks"] = hooks);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    let started: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("hook-poststart")).unwrap()).unwrap();
    assert_eq!(started["id"], shim.id.as_str());
    assert_eq!(started["status"], "running");
    assert!(!work.path().join("hook-poststop").exists());
    assert_eq!(c.wait(pb::WaitRequest {}).await.unwrap().into_inner().exit_code, Some(0));
    c.delete(pb::DeleteRequest {}).await.unwrap();
    let stopped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("hook-poststop")).unwrap()).unwrap();
    assert_eq!(stopped["id"], shim.id.as_str());
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
}

#[tokio::test]
async fn lifecycle_with_runc() {
    require!(true);
    lifecycle("runc").await;
}

#[tokio::test]
async fn oom_kill_is_reported_as_oom() {
    require!(false);
    let (_shim, socket) = Shim::start("oom", "husk", "tail /dev/zero", &[], Some(32.0));
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    let exit =
        tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest {})).await.unwrap().unwrap().into_inner();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    c.delete(pb::DeleteRequest {}).await.unwrap();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
}

#[tokio::test]
async fn kill_is_reported_as_the_signal_and_shutdown_waits_for_delete() {
    require!(false);
    let (shim, socket) = Shim::start("kill", "husk", "sleep 60 & exec sleep 60", &[], None);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    let err = c.shutdown(pb::ShutdownRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    c.kill(pb::KillRequest { signal: 9, all: false }).await.unwrap();
    let exit = c.wait(pb::WaitRequest {}).await.unwrap().into_inner();
    assert_eq!((exit.signal, exit.oom_killed), (Some(9), false));
    // The background sleep outlived the init: Delete kills it.
    let del = c.delete(pb::DeleteRequest {}).await.unwrap().into_inner();
    assert_eq!(del.exit.unwrap().signal, Some(9));
    let err = c.kill(pb::KillRequest { signal: 15, all: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        c.kill(pb::KillRequest { signal: 999, all: false }).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let me = shim.shim_pid();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    wait_until("the shim to exit", || !me.alive()).await;
}

#[tokio::test]
async fn logs_rotate_by_size() {
    require!(false);
    let env = [("CONTAINER_LOGGER_MAX_STDOUT_SIZE", "4KB"), ("CONTAINER_LOGGER_LOGROTATE_STDOUT_OPTIONS", "rotate 2")];
    let script = "i=0; while [ $i -lt 400 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done";
    let (shim, socket) = Shim::start("logs", "husk", script, &env, None);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    assert_eq!(c.wait(pb::WaitRequest {}).await.unwrap().into_inner().exit_code, Some(0));
    let (live, one, two) = (shim.read("sandbox/stdout"), shim.read("sandbox/stdout.1"), shim.read("sandbox/stdout.2"));
    assert!(!one.is_empty() && !two.is_empty(), "rotated files exist");
    assert!(!shim.path("sandbox/stdout.3").exists(), "rotate 2 keeps two old files");
    assert!(one.len() <= 4096 && two.len() <= 4096);
    assert!(live.ends_with("line-399-xxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"), "the newest output is in stdout");
    c.delete(pb::DeleteRequest {}).await.unwrap();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
}

#[tokio::test]
async fn cleanup_destroys_what_a_dead_shim_left() {
    require!(false);
    let (shim, socket) = Shim::start("orphan", "husk", "exec sleep 60", &[], None);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    let init = c.state(pb::StateRequest {}).await.unwrap().into_inner();
    let init = ProcessId { pid: init.pid as i32, start_time: init.pid_start_time };
    let me = shim.shim_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(me.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the shim to die", || !me.alive()).await;
    assert!(init.alive(), "the container outlives its shim");
    let out = common::run_with_deadline(&mut shim.command("cleanup"), Duration::from_secs(30));
    assert!(out.status.success(), "cleanup: {}", out.stderr);
    wait_until("the init to go", || !init.alive()).await;
    assert!(!socket.exists());
    let again = common::run_with_deadline(&mut shim.command("cleanup"), Duration::from_secs(30));
    assert!(again.status.success(), "cleanup is idempotent: {}", again.stderr);
}

#[tokio::test]
async fn a_failed_create_reports_the_reason_and_leaves_nothing() {
    require!(false);
    let work = tempfile::tempdir().unwrap();
    let sandbox = work.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let bundle = work.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), b"{}").unwrap();
    let state = work.path().join("state");
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_husk-shim"))
            .args(["start", "--id", "broken", "--bundle"])
            .arg(&bundle)
            .arg("--sandbox")
            .arg(&sandbox)
            .arg("--state-dir")
            .arg(&state),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("husk-shim: "), "{}", out.stderr);
    assert!(!state.exists(), "a failed start leaves no state");
    let _ = Path::new("");
}

#[tokio::test]
async fn the_init_reaps_orphans_and_forwards_signals() {
    require!(false);
    let script = r#"
        (sleep 0.1 &)
        sleep 0.5
        echo pid1=$(cat /proc/1/comm) me=$$
        echo zombies=$(for s in /proc/[0-9]*/stat; do cut -d' ' -f3 $s; done | grep -c Z)
        trap 'echo got TERM; exit 7' TERM
        touch /mnt/mesos/sandbox/ready
        while true; do sleep 0.05; done
    "#;
    let (shim, socket) = Shim::start("init", "husk+init", script, &[], None);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    wait_until("the command to be ready", || shim.path("sandbox/ready").exists()).await;
    // SIGTERM goes to pid 1, husk's init, which passes it on to the command.
    c.kill(pb::KillRequest { signal: 15, all: false }).await.unwrap();
    let exit = c.wait(pb::WaitRequest {}).await.unwrap().into_inner();
    assert_eq!(exit.exit_code, Some(7), "the command's own exit status: {exit:?}");
    let out = shim.read("sandbox/stdout");
    assert!(out.contains("pid1=husk-shim me=2"), "husk's init is pid 1: {out}");
    assert!(out.contains("zombies=0"), "the orphan was reaped: {out}");
    assert!(out.contains("got TERM"), "{out}");
    c.delete(pb::DeleteRequest {}).await.unwrap();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();

    // Without an init, the command itself is pid 1.
    let (shim, socket) = Shim::start("noinit", "husk", script, &[], None);
    let mut c = connect(&socket).await.unwrap();
    c.start(pb::StartRequest {}).await.unwrap();
    wait_until("the command to be ready", || shim.path("sandbox/ready").exists()).await;
    assert!(shim.read("sandbox/stdout").contains("pid1=sh me=1"), "{}", shim.read("sandbox/stdout"));
    c.kill(pb::KillRequest { signal: 9, all: true }).await.unwrap();
    c.wait(pb::WaitRequest {}).await.unwrap();
    c.delete(pb::DeleteRequest {}).await.unwrap();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
}

#[tokio::test]
async fn init_needs_the_builtin_runtime() {
    require!(true);
    let work = tempfile::tempdir().unwrap();
    busybox_rootfs(&work.path().join("rootfs"));
    std::fs::create_dir(work.path().join("sandbox")).unwrap();
    let req = LaunchRequest {
        container_id: ContainerId { value: "initrunc".into(), parent: None },
        command: Some(CommandInfo { value: Some("true".into()), ..Default::default() }),
        ..Default::default()
    };
    let cgroups = CgroupRoot::new("initrunc");
    let cfg = Config { cgroup_root: cgroups.name.clone(), ..Default::default() };
    let place = Placement {
        sandbox_dir: work.path().join("sandbox"),
        rootfs: Some(work.path().join("rootfs")),
        ..Default::default()
    };
    translate(&req, &cfg, &place).unwrap().write_bundle(&work.path().join("bundle")).unwrap();
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_husk-shim"))
            .args(["start", "--id", "initrunc", "--runtime", "runc", "--init", "--bundle"])
            .arg(work.path().join("bundle"))
            .arg("--sandbox")
            .arg(work.path().join("sandbox"))
            .arg("--state-dir")
            .arg(work.path().join("state")),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("--init needs husk's runtime"), "{}", out.stderr);
    assert!(!work.path().join("state").exists());
}

#[tokio::test]
async fn a_terminal_container_writes_through_its_pty() {
    require!(true);
    for runtime in ["husk", "runc"] {
        let script = "tty; stty size; echo to-stderr >&2";
        let (shim, socket) = Shim::start(&format!("tty-{runtime}"), &format!("{runtime}+tty"), script, &[], None);
        let mut c = connect(&socket).await.unwrap();
        c.start(pb::StartRequest {}).await.unwrap();
        assert_eq!(c.wait(pb::WaitRequest {}).await.unwrap().into_inner().exit_code, Some(0));
        let out = shim.read("sandbox/stdout");
        assert!(out.contains("/dev/pts/0"), "{runtime}: the command's terminal is a pty: {out:?}");
        assert!(out.contains("30 100"), "{runtime}: with the launch's window size: {out:?}");
        assert!(out.contains("to-stderr"), "{runtime}: stderr goes to the terminal too: {out:?}");
        c.delete(pb::DeleteRequest {}).await.unwrap();
        c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    }
}
