//! husk-agent end to end: a real agent process over its unix socket, real shims, real
//! containers, and restarts of the agent.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, exec_script, launch, wait, Agent};

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::mesos::v1::{
    command_info, container_info, task_status::Reason, value, CommandInfo, ContainerInfo, DurationInfo, TaskState,
};

#[tokio::test]
async fn launch_wait_kill_remove() {
    require!(false);
    let agent = Agent::start("agent-life");
    let mut c = agent.client().await;

    let r = c.launch(launch("ok", "echo hello; echo oops >&2")).await.unwrap().into_inner();
    assert_eq!(r.state(), pb::ContainerState::Running);
    let t = wait(&mut c, "ok").await;
    assert_eq!(t.state(), TaskState::TaskFinished);
    assert_eq!((t.exit_code, t.status), (Some(0), Some(0)));
    let logs: Vec<u8> = {
        let mut s =
            c.logs(pb::LogsRequest { container_id: cid("ok"), ..Default::default() }).await.unwrap().into_inner();
        let mut all = Vec::new();
        while let Some(chunk) = s.message().await.unwrap() {
            all.extend(chunk.data.unwrap_or_default());
        }
        all
    };
    assert_eq!(String::from_utf8_lossy(&logs), "hello\noops\n");

    c.launch(launch("fails", "exit 3")).await.unwrap();
    let t = wait(&mut c, "fails").await;
    assert_eq!(t.state(), TaskState::TaskFailed);
    assert_eq!(t.exit_code, Some(3));
    assert_eq!(t.status, Some(3 << 8));

    c.launch(launch("sleeper", "trap 'exit 0' TERM; while true; do sleep 0.1; done")).await.unwrap();
    let st = c.status(pb::StatusRequest { container_id: cid("sleeper") }).await.unwrap().into_inner();
    assert!(st.status.unwrap().executor_pid.unwrap() > 0);
    let usage = c.usage(pb::UsageRequest { container_id: cid("sleeper") }).await.unwrap().into_inner();
    assert!(usage.statistics.unwrap().processes.unwrap() >= 1);

    // Usage numbers move with what the container does.
    c.launch(launch("busy", "while :; do :; done")).await.unwrap();
    let cpu = |u: pb::UsageResponse| {
        let s = u.statistics.unwrap();
        assert!(s.mem_total_bytes.unwrap_or(0) > 0 || s.mem_rss_bytes.unwrap_or(0) > 0, "memory is counted: {s:?}");
        s.cpus_user_time_secs.unwrap() + s.cpus_system_time_secs.unwrap()
    };
    let before = cpu(c.usage(pb::UsageRequest { container_id: cid("busy") }).await.unwrap().into_inner());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = cpu(c.usage(pb::UsageRequest { container_id: cid("busy") }).await.unwrap().into_inner());
        if after > before + 0.1 {
            break;
        }
        assert!(Instant::now() < deadline, "a busy loop's cpu time never grew: {before} -> {after}");
    }
    c.kill(pb::KillRequest { container_id: cid("busy"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "busy").await.state(), TaskState::TaskKilled);
    let err = c.remove(pb::RemoveRequest { container_id: cid("sleeper") }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    c.kill(pb::KillRequest {
        container_id: cid("sleeper"),
        signal: None,
        grace_period: Some(DurationInfo { nanoseconds: 5_000_000_000 }),
    })
    .await
    .unwrap();
    let t = wait(&mut c, "sleeper").await;
    assert_eq!(t.state(), TaskState::TaskKilled, "{t:?}");
    assert_eq!(t.exit_code, Some(0), "SIGTERM was trapped: a graceful stop");

    let list = c.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.containers.len(), 4);
    for id in ["ok", "fails", "sleeper", "busy"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
        assert_eq!(
            c.status(pb::StatusRequest { container_id: cid(id) }).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    assert!(!agent.path("work/containers/ok").exists(), "remove deletes the sandbox and checkpoints");
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.cgroup_mode(), "hybrid");
}

#[tokio::test]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    require!(false);
    let agent = Agent::start("agent-bad");
    let mut c = agent.client().await;
    let mesos = |f: &dyn Fn(&mut ContainerInfo)| {
        let mut info = ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() };
        f(&mut info);
        Some(info)
    };
    let mut cases: Vec<(pb::LaunchRequest, tonic::Code, &str)> = vec![
        (launch("a/b", "true"), tonic::Code::InvalidArgument, "container_id.value: `a/b` contains `/`"),
        (launch("..", "true"), tonic::Code::InvalidArgument, "container_id.value"),
        (launch("", "true"), tonic::Code::InvalidArgument, "container_id.value: must not be empty"),
        (launch(&"x".repeat(300), "true"), tonic::Code::InvalidArgument, "at most 242"),
        (launch("nul", "a\0b"), tonic::Code::InvalidArgument, "command.value: must not contain a NUL byte"),
    ];
    let mut r = launch("res", "true");
    r.resources = vec![husk_oci::resources::scalar("cpus", -1.0)];
    cases.push((r, tonic::Code::InvalidArgument, "resources[0] (cpus): must not be negative"));
    let mut r = launch("lim", "true");
    r.limits = HashMap::from([("mem".into(), value::Scalar { value: f64::NAN })]);
    cases.push((r, tonic::Code::InvalidArgument, "limits[\"mem\"]: must be a number, not NaN"));
    let mut r = launch("docker", "true");
    r.container = Some(ContainerInfo { r#type: container_info::Type::Docker as i32, ..Default::default() });
    cases.push((r, tonic::Code::InvalidArgument, "container.type: DOCKER"));
    let mut r = launch("host", "true");
    r.container = mesos(&|i| i.hostname = Some("bad_name".into()));
    cases.push((r, tonic::Code::InvalidArgument, "container.hostname"));
    let mut r = launch("user", "true");
    r.command.as_mut().unwrap().user = Some("nosuchuser-husk".into());
    cases.push((r, tonic::Code::FailedPrecondition, "command.user: no user `nosuchuser-husk`"));
    let mut r = launch("nested", "true");
    r.container_id.parent = Some(Box::new(cid("p")));
    cases.push((r, tonic::Code::NotFound, "container_id.parent: no container `p`"));
    let mut r = launch("nested-bad", "true");
    r.container_id.parent = Some(Box::new(cid("../p")));
    cases.push((r, tonic::Code::InvalidArgument, "container_id.parent"));
    let mut r = launch("runtime", "true");
    r.runtime = Some("/bin/evil".into());
    cases.push((r, tonic::Code::InvalidArgument, "runtime: `/bin/evil` is not one of"));
    use husk_proto::mesos::v1::{
        environment, linux_info, r_limit_info, tty_info, volume, CapabilityInfo, Environment, LinuxInfo, NetworkInfo,
        RLimitInfo, SeccompInfo, TtyInfo, Volume,
    };
    let with_cmd = |id: &str, f: &dyn Fn(&mut CommandInfo)| {
        let mut r = launch(id, "true");
        f(r.command.as_mut().unwrap());
        r
    };
    let with_info = |id: &str, f: &dyn Fn(&mut ContainerInfo)| {
        let mut r = launch(id, "true");
        r.container = mesos(f);
        r
    };
    let var = |n: &str, v: &str| environment::Variable { name: n.into(), value: Some(v.into()), ..Default::default() };
    let host_volume = |cpath: &str, hpath: &str| Volume {
        mode: volume::Mode::Rw as i32,
        container_path: cpath.into(),
        source: Some(volume::Source {
            r#type: Some(volume::source::Type::HostPath as i32),
            host_path: Some(volume::source::HostPath { path: hpath.into(), mount_propagation: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rlimit = |soft: u64, hard: u64| RLimitInfo {
        rlimits: vec![r_limit_info::RLimit {
            r#type: Some(r_limit_info::r_limit::Type::RlmtNofile as i32),
            soft: Some(soft),
            hard: Some(hard),
        }],
    };
    let inv = tonic::Code::InvalidArgument;
    let more: Vec<(pb::LaunchRequest, tonic::Code, &str)> = vec![
        (launch("a b", "true"), inv, "contains whitespace"),
        (launch("a\\b", "true"), inv, "contains `\\`"),
        (launch("a\tb", "true"), inv, "control character"),
        (launch("a.b", "true"), inv, "contains `.`"),
        (pb::LaunchRequest { container_id: cid("nocmd"), ..Default::default() }, inv, "command: is required"),
        (
            with_cmd("noval", &|c| {
                c.shell = Some(false);
                c.value = None;
            }),
            inv,
            "shell=false needs a `value`",
        ),
        (
            with_cmd("envname", &|c| c.environment = Some(Environment { variables: vec![var("A=B", "x")] })),
            inv,
            "variables[0].name: `A=B` must not contain `=`",
        ),
        (
            with_cmd("envnul", &|c| c.environment = Some(Environment { variables: vec![var("A", "x\0y")] })),
            inv,
            "variables[0].value: must not contain a NUL byte",
        ),
        (
            with_cmd("uris", &|c| {
                c.uris = vec![command_info::Uri {
                    value: "http://127.0.0.1/x".into(),
                    output_file: Some("../x".into()),
                    ..Default::default()
                }]
            }),
            inv,
            "command.uris[0].output_file: `../x` must be a relative path inside the sandbox",
        ),
        (with_info("rlimit", &|i| i.rlimit_info = Some(rlimit(10, 5))), inv, "soft limit 10 is above the hard limit 5"),
        (with_info("volpath", &|i| i.volumes = vec![host_volume("/a/../b", "/tmp")]), inv, "must not contain `..`"),
        (
            with_info("volhost", &|i| i.volumes = vec![host_volume("/tmp", "/nonexistent-husk-volume")]),
            tonic::Code::FailedPrecondition,
            "/nonexistent-husk-volume",
        ),
        (with_info("volrel", &|i| i.volumes = vec![host_volume("/tmp", "relative")]), inv, "must be an absolute path"),
        (
            with_info("volproc", &|i| i.volumes = vec![host_volume("/proc/sys", "/tmp")]),
            inv,
            "would cover the container's /proc",
        ),
        (
            with_info("unconfined", &|i| {
                i.linux_info = Some(LinuxInfo {
                    seccomp: Some(SeccompInfo { unconfined: Some(true), profile_name: None }),
                    ..Default::default()
                })
            }),
            inv,
            "--allow-unconfined-seccomp",
        ),
        (
            with_info("hostpid", &|i| {
                i.linux_info = Some(LinuxInfo { share_pid_namespace: Some(true), ..Default::default() })
            }),
            inv,
            "--allow-host-pid-namespace",
        ),
        (
            with_info("hostipc", &|i| {
                i.linux_info =
                    Some(LinuxInfo { ipc_mode: Some(linux_info::IpcMode::ShareParent as i32), ..Default::default() })
            }),
            inv,
            "--allow-host-ipc-namespace",
        ),
        (
            with_info("cgroups", &|i| {
                i.linux_info = Some(LinuxInfo { share_cgroups: Some(false), ..Default::default() })
            }),
            inv,
            "share_cgroups: cannot be false",
        ),
        (
            with_info("cap", &|i| {
                i.linux_info = Some(LinuxInfo {
                    effective_capabilities: Some(CapabilityInfo { capabilities: vec![42] }),
                    ..Default::default()
                })
            }),
            inv,
            "unknown capability value 42",
        ),
        (
            with_info("net", &|i| {
                i.network_infos = vec![NetworkInfo { name: Some("a/b".into()), ..Default::default() }]
            }),
            inv,
            "network_infos[0].name",
        ),
        (
            with_info("tty", &|i| {
                i.tty_info = Some(TtyInfo { window_size: Some(tty_info::WindowSize { rows: 70000, columns: 1 }) })
            }),
            inv,
            "must fit in 16 bits",
        ),
    ];
    let mut r = launch("below", "true");
    r.resources = vec![husk_oci::resources::scalar("mem", 128.0)];
    r.limits = HashMap::from([("mem".into(), value::Scalar { value: 64.0 })]);
    cases.push((r, inv, "limit 64 is below the request 128"));
    let mut r = launch("limkey", "true");
    r.limits = HashMap::from([("disk".into(), value::Scalar { value: 1.0 })]);
    cases.push((r, inv, "only `cpus` and `mem`"));
    let mut r = launch("dupres", "true");
    r.resources = vec![husk_oci::resources::scalar("cpus", 1.0), husk_oci::resources::scalar("cpus", 1.0)];
    cases.push((r, inv, "duplicate of resources[0]"));
    let mut r = launch("inf", "true");
    r.resources = vec![husk_oci::resources::scalar("cpus", f64::INFINITY)];
    cases.push((r, inv, "must be finite"));
    let mut r = launch("huge", "true");
    r.resources = vec![husk_oci::resources::scalar("mem", 1e300)];
    cases.push((r, inv, "above the largest accepted value"));
    cases.push((
        with_cmd("ftp", &|c| c.uris = vec![command_info::Uri { value: "ftp://h/a.tgz".into(), ..Default::default() }]),
        inv,
        "command.uris[0].value: `ftp://h/a.tgz`: only absolute paths, file://, http:// and https://",
    ));
    cases.push((
        with_cmd("nameless", &|c| c.uris = vec![command_info::Uri { value: "http://h/".into(), ..Default::default() }]),
        inv,
        "command.uris[0].output_file: is required",
    ));
    cases.extend(more);
    let mut r = launch("privileged", "true");
    r.security = Some(pb::SecurityOptions { privileged: Some(true), ..Default::default() });
    cases.push((r, inv, "security.privileged: is not allowed by this agent (see --allow-privileged)"));
    let mut r = launch("slice", "true");
    r.cgroup_parent = Some("kubepods-besteffort.slice".into());
    cases.push((r, inv, "cgroup_parent: `kubepods-besteffort.slice` is a systemd slice"));
    let mut r = launch("climb", "true");
    r.cgroup_parent = Some("/kubepods/../..".into());
    cases.push((r, inv, "cgroup_parent: `/kubepods/../..`: `..` is not a cgroup name"));
    let mut r = launch("inside", "true");
    r.cgroup_parent = Some(format!("/{}/other", agent.cgroups.name));
    cases.push((r, inv, "is inside the agent's cgroup root"));
    assert!(cases.len() >= 30, "a table of at least 30 bad requests ({})", cases.len());
    for (req, code, text) in cases {
        let id = req.container_id.value.clone();
        let e = c.launch(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{id}: {e:?}");
        assert!(e.message().contains(text), "{id}: {:?} lacks {text:?}", e.message());
    }
    let left: Vec<_> =
        std::fs::read_dir(agent.path("work/containers")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "rejected requests create nothing: {left:?}");

    assert_eq!(c.wait(pb::WaitRequest { container_id: cid("nope") }).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(
        c.kill(pb::KillRequest { container_id: cid("nope"), ..Default::default() }).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    c.launch(launch("dup", "sleep 30")).await.unwrap();
    let e = c.launch(launch("dup", "true")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    c.kill(pb::KillRequest { container_id: cid("dup"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "dup").await.state(), TaskState::TaskKilled);
}

#[tokio::test]
async fn failed_launches_and_oom_have_mesos_reasons() {
    require!(false);
    let agent = Agent::start("agent-reasons");
    let mut c = agent.client().await;
    let mut r = launch("nope", "/bin/nope-husk");
    r.command.as_mut().unwrap().shell = Some(false);
    let e = c.launch(r).await.unwrap_err();
    assert!(e.message().contains("exec /bin/nope-husk: no such file or directory"), "{e:?}");
    let t = wait(&mut c, "nope").await;
    assert_eq!(t.reason(), Reason::ContainerLaunchFailed);
    assert!(t.message().contains("exec /bin/nope-husk: no such file or directory"), "{t:?}");

    let mut r = launch("oom", "tail /dev/zero");
    r.resources = vec![husk_oci::resources::scalar("mem", 32.0)];
    c.launch(r).await.unwrap();
    let t = wait(&mut c, "oom").await;
    assert_eq!(t.state(), TaskState::TaskFailed);
    assert_eq!(t.reason(), Reason::ContainerLimitationMemory, "{t:?}");
    assert!(t.message().contains("32 MB"), "{t:?}");
    assert_eq!(t.limited_resources[0].name, "mem");
}

#[tokio::test]
async fn containers_and_exit_statuses_survive_agent_restarts() {
    require!(false);
    let mut agent = Agent::start("agent-restart");
    let mut c = agent.client().await;
    c.launch(launch("long", "sleep 60")).await.unwrap();
    let flag = agent.path("work/containers/short/sandbox/go");
    c.launch(launch("short", "while [ ! -e $MESOS_SANDBOX/go ]; do sleep 0.05; done; exit 5")).await.unwrap();
    c.launch(launch("done", "exit 7")).await.unwrap();
    assert_eq!(wait(&mut c, "done").await.exit_code, Some(7));
    let long_pid = c
        .status(pb::StatusRequest { container_id: cid("long") })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .executor_pid;

    agent.kill9();
    // While the agent is gone, one container exits.
    std::fs::write(&flag, "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    agent.restart();
    let mut c = agent.client().await;

    let st = c.status(pb::StatusRequest { container_id: cid("long") }).await.unwrap().into_inner();
    assert_eq!(st.info.unwrap().state(), pb::ContainerState::Running, "re-attached");
    assert_eq!(st.status.unwrap().executor_pid, long_pid);
    assert_eq!(wait(&mut c, "short").await.exit_code, Some(5), "the exit while the agent was down is kept");
    assert_eq!(wait(&mut c, "done").await.exit_code, Some(7), "an exit recorded before the crash is kept");
    c.kill(pb::KillRequest { container_id: cid("long"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "long").await.state(), TaskState::TaskKilled);

    // A reboot: the boot id changes, and every live container is reported lost.
    c.launch(launch("rebooted", "sleep 60")).await.unwrap();
    agent.kill9();
    std::fs::write(agent.path("work/boot_id"), "a-previous-boot").unwrap();
    agent.restart();
    let mut c = agent.client().await;
    let t = wait(&mut c, "rebooted").await;
    assert_eq!(t.state(), TaskState::TaskGone, "{t:?}");
    assert!(t.message().contains("rebooted"));
    assert_eq!(wait(&mut c, "done").await.exit_code, Some(7), "terminated containers are untouched by a reboot");
    let _ = Path::new("");
}

#[tokio::test]
async fn huskctl_run_streams_output_and_exits_with_the_status() {
    require!(false);
    let agent = Agent::start("agent-ctl");
    let endpoint = format!("unix://{}", agent.socket().display());
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_huskctl"))
            .args(["--endpoint", &endpoint, "run", "--id", "ctl", "--hostname", "demo", "--"])
            .arg("echo hello from $(hostname); echo to-stderr >&2; exit 4"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(4), "{}", out.stderr);
    assert_eq!(out.stdout, "hello from demo\n");
    assert_eq!(out.stderr, "to-stderr\n");
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_huskctl")).args(["--endpoint", &endpoint, "wait", "ctl"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(4));
    let t: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(t["state"], "TASK_FAILED");
    assert_eq!(t["exit_code"], 4);
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_huskctl")).args([
            "--endpoint",
            &endpoint,
            "run",
            "-d",
            "--id",
            "bg",
            "--",
            "sleep 30",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(out.stdout.trim(), "bg", "{}", out.stderr);
    let mut c = agent.client().await;
    c.kill(pb::KillRequest { container_id: cid("bg"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "bg").await.state(), TaskState::TaskKilled);
    let out = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_huskctl")).args(["--endpoint", "unix:///nonexistent/husk.sock", "wait", "x"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("connecting to the agent at /nonexistent/husk.sock"), "{}", out.stderr);
}

#[tokio::test]
async fn watch_update_and_logs() {
    require!(false);
    let agent = Agent::start("agent-watch");
    let mut c = agent.client().await;
    let mut events = c.watch(pb::WatchRequest { container_ids: vec![cid("w")] }).await.unwrap().into_inner();
    let mut r =
        launch("w", "i=0; while [ $i -lt 5 ]; do echo line-$i; i=$((i+1)); done; while true; do sleep 0.1; done");
    r.resources = vec![husk_oci::resources::scalar("mem", 64.0), husk_oci::resources::scalar("cpus", 0.5)];
    c.launch(r).await.unwrap();
    let mut states = Vec::new();
    while states.last() != Some(&pb::ContainerState::Running) {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.container_id.value, "w");
        states.push(e.state());
    }
    assert_eq!(
        states,
        [
            pb::ContainerState::Provisioning,
            pb::ContainerState::Preparing,
            pb::ContainerState::Isolating,
            pb::ContainerState::Fetching,
            pb::ContainerState::Running
        ],
        "every state, in order"
    );

    let memory_file = common::cgroup_mounts()
        .into_iter()
        .find(|m| m.ends_with("memory"))
        .unwrap()
        .join(&agent.cgroups.name)
        .join("w/memory.limit_in_bytes");
    assert_eq!(std::fs::read_to_string(&memory_file).unwrap().trim(), (64u64 << 20).to_string());
    let update = |mem: f64| pb::UpdateRequest {
        container_id: cid("w"),
        resources: vec![husk_oci::resources::scalar("mem", mem), husk_oci::resources::scalar("cpus", 1.0)],
        ..Default::default()
    };
    c.update(update(128.0)).await.unwrap();
    assert_eq!(std::fs::read_to_string(&memory_file).unwrap().trim(), (128u64 << 20).to_string(), "raised live");
    let e = c.update(update(64.0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "lowering needs allow_memory_limit_decrease: {e:?}");
    let mut lower = update(64.0);
    lower.allow_memory_limit_decrease = Some(true);
    c.update(lower).await.unwrap();
    assert_eq!(std::fs::read_to_string(&memory_file).unwrap().trim(), (64u64 << 20).to_string());

    let tail = {
        let mut s = c
            .logs(pb::LogsRequest {
                container_id: cid("w"),
                tail: Some(2),
                stream: Some(pb::logs_request::Stream::Stdout as i32),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut all = Vec::new();
        while let Some(chunk) = s.message().await.unwrap() {
            all.extend(chunk.data.unwrap_or_default());
        }
        String::from_utf8(all).unwrap()
    };
    assert_eq!(tail, "line-3\nline-4\n");
    c.kill(pb::KillRequest { container_id: cid("w"), ..Default::default() }).await.unwrap();
    let last = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message()).await.unwrap().unwrap().unwrap();
        if e.state() == pb::ContainerState::Terminated {
            break e;
        }
    };
    assert_eq!(last.termination.unwrap().state(), TaskState::TaskKilled);
}

#[tokio::test]
async fn launches_beyond_the_nodes_resources_are_refused() {
    require!(false);
    let agent = Agent::start_with("agent-admit", "resources = \"cpus:1;mem:256\"\n");
    let mut c = agent.client().await;
    let with = |id: &str, cpus: f64| {
        let mut r = launch(id, "sleep 30");
        r.resources = vec![husk_oci::resources::scalar("cpus", cpus), husk_oci::resources::scalar("mem", 64.0)];
        r
    };
    c.launch(with("a", 0.6)).await.unwrap();
    let e = c.launch(with("b", 0.6)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("resources: cpus 0.6 requested, 0.4 of 1 unallocated"), "{e:?}");
    assert!(!agent.path("work/containers/b").exists(), "a refused launch creates nothing");
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    let get = |v: &[husk_proto::mesos::v1::Resource], n: &str| {
        v.iter().find(|r| r.name == n).and_then(|r| r.scalar).map(|s| s.value)
    };
    assert_eq!(get(&info.total_resources, "cpus"), Some(1.0));
    assert_eq!(get(&info.allocated_resources, "cpus"), Some(0.6));
    assert_eq!(get(&info.available_resources, "mem"), Some(192.0));
    c.kill(pb::KillRequest { container_id: cid("a"), ..Default::default() }).await.unwrap();
    wait(&mut c, "a").await;
    c.launch(with("b", 0.6)).await.expect("the terminated container's resources are free again");
    c.kill(pb::KillRequest { container_id: cid("b"), ..Default::default() }).await.unwrap();
    wait(&mut c, "b").await;
}

/// A small HTTP/1.1 server on loopback for the fetcher: `/files/<name>` serves a file (counting
/// hits), `/redirect/<name>` redirects to it, `/stall` sends half a body and stops, anything
/// else is a 404.
struct Http {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Http {
    async fn serve(files: HashMap<String, Vec<u8>>) -> Http {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (files, counted) = (std::sync::Arc::new(files), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let (files, hits) = (files.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    *hits.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                    let head = |status: &str, len: usize, extra: &str| {
                        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
                    };
                    let reply = if let Some(name) = path.strip_prefix("/files/") {
                        match files.get(name) {
                            Some(body) => [head("200 OK", body.len(), "").into_bytes(), body.clone()].concat(),
                            None => head("404 Not Found", 0, "").into_bytes(),
                        }
                    } else if let Some(name) = path.strip_prefix("/redirect/") {
                        head("302 Found", 0, &format!("Location: /files/{name}\r\n")).into_bytes()
                    } else if path == "/stall" {
                        let _ = conn.write_all(head("200 OK", 1000, "").as_bytes()).await;
                        let _ = conn.write_all(&[b'x'; 10]).await;
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        return;
                    } else {
                        head("404 Not Found", 0, "").into_bytes()
                    };
                    let _ = conn.write_all(&reply).await;
                });
            }
        });
        Http { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn uris_are_fetched_into_the_sandbox_before_the_command() {
    use std::io::Write;
    require!(false);
    let zip = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("z/readme", zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(b"from zip\n").unwrap();
        w.finish().unwrap().into_inner()
    };
    let http = Http::serve(HashMap::from([
        ("app.tar.gz".to_string(), tar_gz(&[("app/run.sh", b"#!/bin/sh\necho from tar\n", 0o755)])),
        ("docs.zip".to_string(), zip),
        ("tool.sh".to_string(), b"#!/bin/sh\necho from tool\n".to_vec()),
    ]))
    .await;
    let local = tempfile::tempdir().unwrap();
    let note = local.path().join("note.txt.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"from gz\n").unwrap();
    std::fs::write(&note, gz.finish().unwrap()).unwrap();

    let agent = Agent::start_with("agent-fetch", "fetcher_stall_timeout = 2\n");
    let mut c = agent.client().await;
    let uri = |value: String, f: &dyn Fn(&mut command_info::Uri)| {
        let mut u = command_info::Uri { value, ..Default::default() };
        f(&mut u);
        u
    };
    let with_uris = |id: &str, script: &str, uris: Vec<command_info::Uri>| {
        let mut r = launch(id, script);
        r.command.as_mut().unwrap().uris = uris;
        r
    };
    let script = "{ ./app/run.sh; cat z/readme note.txt; ./bin/tool; } > out.txt";
    let uris = vec![
        uri(http.url("/files/app.tar.gz"), &|u| u.cache = Some(true)),
        uri(http.url("/files/docs.zip"), &|_| {}),
        uri(format!("file://{}", note.display()), &|_| {}),
        uri(http.url("/redirect/tool.sh"), &|u| {
            u.executable = Some(true);
            u.output_file = Some("bin/tool".into());
        }),
    ];
    let launched = c.launch(with_uris("fetch", script, uris.clone())).await.unwrap().into_inner();
    assert_eq!(wait(&mut c, "fetch").await.state(), TaskState::TaskFinished);
    let sandbox = PathBuf::from(launched.sandbox_directory.unwrap());
    assert_eq!(
        std::fs::read_to_string(sandbox.join("out.txt")).unwrap(),
        "from tar\nfrom zip\nfrom gz\nfrom tool\n",
        "every URI was in the sandbox before the command ran"
    );
    assert!(sandbox.join("app.tar.gz").exists(), "archives stay beside what they held, as in Mesos");

    // The same URI with `cache` again: served from the cache, not the server.
    c.launch(with_uris("cached", "test -x app/run.sh", uris[..1].to_vec())).await.unwrap();
    assert_eq!(wait(&mut c, "cached").await.state(), TaskState::TaskFinished);
    assert_eq!(http.hits("/files/app.tar.gz"), 1, "the second launch used the cache");

    // Fetched files belong to the container's user.
    let mut r = with_uris("owned", "test -O bin/tool", vec![uris[3].clone()]);
    r.command.as_mut().unwrap().user = Some("nobody".into());
    let owned = c.launch(r).await.unwrap().into_inner();
    assert_eq!(wait(&mut c, "owned").await.state(), TaskState::TaskFinished);
    let meta = std::fs::metadata(PathBuf::from(owned.sandbox_directory.unwrap()).join("bin/tool")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);

    // Failures fail the launch, naming the URI and the reason, and Wait keeps them.
    let failing = [
        ("missing", http.url("/files/nope.tgz"), "HTTP 404 Not Found"),
        ("stalled", http.url("/stall"), "the download stalled"),
        ("nofile", "/nonexistent/husk.tgz".to_string(), "No such file or directory"),
        ("closed", "http://127.0.0.1:1/a.tgz".to_string(), "Connection refused"),
    ];
    for (id, value, why) in failing {
        let mut u = uri(value.clone(), &|_| {});
        if id == "stalled" {
            u.output_file = Some("stall.bin".into());
        }
        let e = c.launch(with_uris(id, "true", vec![u])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{id}: {e:?}");
        assert!(e.message().contains(&format!("fetching `{value}`: ")) && e.message().contains(why), "{id}: {e:?}");
        let t = wait(&mut c, id).await;
        assert_eq!(t.reason(), Reason::ContainerLaunchFailed, "{id}");
        assert!(t.message().contains(why), "{id}: {t:?}");
    }
}

/// `GET path` on a loopback HTTP server; the whole response as text.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

/// Whether `pid` is gone (or a zombie its parent has yet to reap), polling a few seconds.
async fn dead(pid: i32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn orphans_are_destroyed_terminated_sandboxes_collected_and_metrics_served() {
    require!(false);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start_with(
        "agent-orphans",
        &format!("gc_delay = \"2s\"\ngc_disk_headroom = 0.0\nmetrics_address = \"{metrics}\"\n"),
    );
    let mut c = agent.client().await;
    let orphan_pid = c.launch(launch("orphan", "sleep 300")).await.unwrap().into_inner().executor_pid.unwrap();
    c.launch(launch("kept", "sleep 300")).await.unwrap();
    agent.kill9();

    // What a crash can leave that no checkpoint claims: a container whose checkpoint is gone, a
    // cgroup under the agent's root with a process in it, and a half-made container directory
    // with a mount inside.
    std::fs::remove_dir_all(agent.path("work/containers/orphan")).unwrap();
    let pids = common::cgroup_mounts().into_iter().find(|m| m.ends_with("pids")).expect("a pids hierarchy");
    let stray = pids.join(&agent.cgroups.name).join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    let mut stray_proc = Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(stray.join("cgroup.procs"), stray_proc.id().to_string()).unwrap();
    let ghost = agent.path("work/containers/ghost/sandbox/m");
    std::fs::create_dir_all(&ghost).unwrap();
    nix::mount::mount(Some("tmpfs"), &ghost, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();

    agent.restart();
    let mut c = agent.client().await;
    assert!(!agent.path("run/shims/orphan").exists(), "the orphan's shim was destroyed");
    assert!(dead(orphan_pid).await, "the orphan's process was killed");
    assert!(!stray.exists(), "the stray cgroup was removed: {}", agent.log());
    assert!(stray_proc.wait().unwrap().signal().is_some(), "its process was killed");
    assert!(!agent.path("work/containers/ghost").exists(), "the half-made directory was removed: {}", agent.log());
    assert!(common::mounts_under(&agent.path("work")).is_empty(), "and its mount detached first");
    let kept = c.status(pb::StatusRequest { container_id: cid("kept") }).await.unwrap().into_inner();
    assert!(kept.status.unwrap().executor_pid.is_some(), "a claimed container is untouched");

    // A terminated container is garbage collected once gc_delay has passed.
    c.launch(launch("done", "true")).await.unwrap();
    wait(&mut c, "done").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.path("work/containers/done/sandbox").exists() {
        assert!(Instant::now() < deadline, "the terminated sandbox was never collected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!agent.path("work/containers/done/bundle").exists());
    assert_eq!(wait(&mut c, "done").await.state(), TaskState::TaskFinished, "the termination is still there");
    c.remove(pb::RemoveRequest { container_id: cid("done") }).await.unwrap();
    assert!(!agent.path("work/containers/done").exists(), "Remove takes the rest");

    let text = http_get(&metrics, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "husk_agent_containers{state=\"running\"} 1",
        "husk_agent_recoveries_total{outcome=\"reattached\"} 1",
        "husk_agent_orphans_destroyed_total 4",
        "husk_agent_launches_total{result=\"running\"} 1",
        "husk_agent_launch_duration_seconds_count 1",
        "husk_agent_gc_removals_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "metrics lack `{line}`:\n{text}");
    }
    assert!(http_get(&metrics, "/nope").await.starts_with("HTTP/1.1 404"));
    c.kill(pb::KillRequest { container_id: cid("kept"), ..Default::default() }).await.unwrap();
    wait(&mut c, "kept").await;
}

/// A CA, and PEM files of a certificate it signs for `names` (written as `<name>.pem` and
/// `<name>-key.pem` into `dir`).
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join(format!("{name}.pem")), &pem).unwrap();
        Ca { issuer: rcgen::Issuer::new(params, key), pem }
    }

    fn issue(&self, dir: &Path, name: &str, sans: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test]
async fn tcp_with_mutual_tls_and_the_socket_permissions() {
    require!(false);
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f);
    let ca = Ca::new(pki.path(), "ca");
    ca.issue(pki.path(), "agent", &["localhost", "127.0.0.1"]);
    ca.issue(pki.path(), "operator", &[]);
    assert!(ca.pem.contains("BEGIN CERTIFICATE"));
    let rogue = Ca::new(pki.path(), "rogue-ca");
    rogue.issue(pki.path(), "intruder", &[]);

    let port = free_port();
    let daemon_gid = nix::unistd::Group::from_name("daemon").unwrap().expect("a `daemon` group").gid;
    let agent = Agent::start_with(
        "agent-tls",
        &format!(
            "tcp_listen = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n\
             socket_mode = \"0600\"\nsocket_group = \"daemon\"\n",
            p("agent.pem"),
            p("agent-key.pem"),
            p("ca.pem"),
        ),
    );
    let meta = std::fs::metadata(agent.socket()).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket_mode");
    assert_eq!(meta.gid(), daemon_gid.as_raw(), "socket_group");

    let endpoint = format!("https://127.0.0.1:{port}");
    let tls = |cert: &str, ca: &str| husk::client::Tls {
        ca: Some(p(&format!("{ca}.pem"))),
        cert: Some(p(&format!("{cert}.pem"))),
        key: Some(p(&format!("{cert}-key.pem"))),
    };
    let mut c = husk::client::connect_with(&endpoint, &tls("operator", "ca")).await.unwrap();
    c.launch(launch("remote", "exit 3")).await.unwrap();
    assert_eq!(wait(&mut c, "remote").await.exit_code, Some(3), "the whole API over TCP");

    // A client whose certificate another CA signed is turned away.
    let refused = match husk::client::connect_with(&endpoint, &tls("intruder", "ca")).await {
        Err(e) => e.to_string(),
        Ok(mut c) => c.version(pb::VersionRequest {}).await.unwrap_err().to_string(),
    };
    assert!(!refused.is_empty());
    // A client that does not trust the agent's CA refuses it.
    let e = match husk::client::connect_with(&endpoint, &tls("operator", "rogue-ca")).await {
        Err(e) => e.to_string(),
        Ok(mut c) => c.version(pb::VersionRequest {}).await.unwrap_err().to_string(),
    };
    assert!(e.contains("certificate") || e.contains("UnknownIssuer") || e.contains("transport"), "{e}");
    // Without a client certificate there is no connection at all.
    let e = husk::client::connect_with(&endpoint, &husk::client::Tls { ca: Some(p("ca.pem")), ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs --tls-cert"), "{e}");
}

#[tokio::test]
async fn the_isolation_list_decides_what_a_container_gets() {
    require!(false);
    let agent = Agent::start_with(
        "agent-isolation",
        "isolation = [\"filesystem/linux\", \"cgroups/cpu\", \"namespaces/pid\"]\n",
    );
    let mut c = agent.client().await;
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.isolators, ["filesystem/linux", "cgroups/cpu", "namespaces/pid"], "Info reports the list");
    let mut r = launch("loose", "readlink /proc/self/ns/ipc > ipc; grep CapEff /proc/self/status > caps; sleep 30");
    r.resources = vec![husk_oci::resources::scalar("mem", 64.0), husk_oci::resources::scalar("cpus", 0.5)];
    let sandbox = PathBuf::from(c.launch(r).await.unwrap().into_inner().sandbox_directory.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandbox.join("caps").exists() || std::fs::read_to_string(sandbox.join("caps")).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the container never wrote its observations");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cgroup = |controller: &str, file: &str| {
        let mount = common::cgroup_mounts().into_iter().find(|m| m.ends_with(controller)).unwrap();
        std::fs::read_to_string(mount.join(&agent.cgroups.name).join("loose").join(file)).unwrap().trim().to_string()
    };
    assert_ne!(cgroup("memory", "memory.limit_in_bytes"), (64u64 << 20).to_string(), "no cgroups/mem: no limit");
    assert_eq!(cgroup("cpu", "cpu.shares"), "512", "cgroups/cpu is on");
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_eq!(std::fs::read_to_string(sandbox.join("ipc")).unwrap().trim(), host_ipc.to_str().unwrap());
    let caps = std::fs::read_to_string(sandbox.join("caps")).unwrap();
    let eff = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(eff & (1 << 21) != 0, "no linux/capabilities: CAP_SYS_ADMIN is there: {caps}");
    c.kill(pb::KillRequest { container_id: cid("loose"), ..Default::default() }).await.unwrap();
    wait(&mut c, "loose").await;
}

#[tokio::test]
async fn a_kill_cancels_a_launch_and_a_silent_shim_is_reported() {
    require!(false);
    let http = Http::serve(HashMap::new()).await;
    let agent = Agent::start_with("agent-cancel", "fetcher_stall_timeout = 120\n");
    let mut c = agent.client().await;

    // Killed while FETCHING a download that never ends: the launch stops and is destroyed.
    let mut r = launch("slow", "true");
    r.command.as_mut().unwrap().uris =
        vec![command_info::Uri { value: http.url("/stall"), output_file: Some("big".into()), ..Default::default() }];
    let mut launcher = agent.client().await;
    let launching = tokio::spawn(async move { launcher.launch(r).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.status(pb::StatusRequest { container_id: cid("slow") }).await;
        if st.is_ok_and(|s| s.into_inner().info.unwrap().state() == pb::ContainerState::Fetching) {
            break;
        }
        assert!(Instant::now() < deadline, "the launch never reached FETCHING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill(pb::KillRequest { container_id: cid("slow"), ..Default::default() }).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), launching).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    let t = wait(&mut c, "slow").await;
    assert_eq!(t.state(), TaskState::TaskKilled);
    assert!(t.message().contains("while FETCHING"), "{t:?}");
    assert!(!agent.path("run/shims/slow/shim.sock").exists(), "its shim is gone");

    // A shim that stops answering is reported within the deadline, not waited on.
    c.launch(launch("frozen", "sleep 300")).await.unwrap();
    let shim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.path("run/shims/frozen/shim.json")).unwrap()).unwrap();
    let pid = nix::unistd::Pid::from_raw(shim["pid"].as_i64().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(60), c.usage(pb::UsageRequest { container_id: cid("frozen") }))
        .await
        .expect("Usage answered although the shim did not")
        .unwrap_err();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("its shim did not answer within"), "{e:?}");
    c.kill(pb::KillRequest { container_id: cid("frozen"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "frozen").await.state(), TaskState::TaskKilled);
}

#[tokio::test]
async fn a_rootfs_directory_is_shared_through_overlays_and_never_written() {
    require!(false);
    let images = tempfile::tempdir().unwrap();
    let lower = images.path().join("busybox");
    common::busybox_rootfs(&lower);
    let agent = Agent::start("agent-rootfs");
    let mut c = agent.client().await;
    let on_rootfs = |id: &str, script: &str| {
        let mut r = launch(id, script);
        r.rootfs = Some(lower.display().to_string());
        r
    };
    let script =
        "echo mine > /written; cat /written; id -un; ls /bin/busybox; test -d /mnt/mesos/sandbox && echo sandbox";
    c.launch(on_rootfs("one", script)).await.unwrap();
    assert_eq!(wait(&mut c, "one").await.state(), TaskState::TaskFinished);
    c.launch(on_rootfs("two", "test ! -e /written && echo clean")).await.unwrap();
    assert_eq!(wait(&mut c, "two").await.state(), TaskState::TaskFinished);
    let out = |id: &str| std::fs::read_to_string(agent.path(&format!("work/containers/{id}/sandbox/stdout"))).unwrap();
    assert_eq!(out("one"), "mine\nroot\n/bin/busybox\nsandbox\n");
    assert_eq!(out("two"), "clean\n", "each container has its own upper layer");
    assert!(!lower.join("written").exists(), "the shared directory was never written");
    let mut as_app = on_rootfs("app", "id -un; id -u");
    as_app.command.as_mut().unwrap().user = Some("app".into());
    c.launch(as_app).await.unwrap();
    assert_eq!(wait(&mut c, "app").await.state(), TaskState::TaskFinished);
    assert_eq!(out("app"), "app\n1000\n", "users resolve in the rootfs");
    assert!(common::mounts_under(&agent.path("work")).is_empty(), "terminated containers keep no overlay");

    // Bad directories are refused before anything is made.
    let refused = [
        ("rel", "relative/dir", tonic::Code::InvalidArgument, "must be an absolute path"),
        ("missing", "/nonexistent-husk-rootfs", tonic::Code::FailedPrecondition, "No such file"),
        ("host", "/", tonic::Code::InvalidArgument, "leave rootfs unset"),
        ("dots", "/tmp/../etc", tonic::Code::InvalidArgument, "`..`"),
    ];
    for (id, dir, code, text) in refused {
        let mut r = launch(id, "true");
        r.rootfs = Some(dir.into());
        let e = c.launch(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{id}: {e:?}");
        assert!(e.message().contains(text), "{id}: {e:?}");
        assert!(!agent.path(&format!("work/containers/{id}")).exists());
    }
    for id in ["one", "two", "app"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
    assert!(std::fs::read_dir(agent.path("work/containers")).unwrap().next().is_none());
}

/// Runs `huskctl` as uid/gid 65534 with the supplementary `groups`, from a copy of the binary
/// that user may execute.
fn huskctl_as_nobody(bin: &Path, socket: &Path, groups: &[u32], args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let groups: Vec<nix::unistd::Gid> = groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    let mut cmd = Command::new(bin);
    cmd.arg("--endpoint").arg(format!("unix://{}", socket.display())).args(args).env("HOME", "/");
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn the_admin_group_guards_state_changing_calls() {
    require!(false);
    use std::os::unix::fs::PermissionsExt;
    const ADMIN: u32 = 4242;
    // Anyone may open the socket; only root and the admin group may change anything.
    let agent = Agent::start_with("agent-admin", &format!("socket_mode = \"0666\"\nadmin_group = \"{ADMIN}\"\n"));
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let huskctl = bin_dir.path().join("huskctl");
    std::fs::copy(env!("CARGO_BIN_EXE_huskctl"), &huskctl).unwrap();
    let socket = agent.socket();
    let mut c = agent.client().await;
    c.launch(launch("running", "exec sleep 1000")).await.unwrap();

    // Reads work for anyone who can connect.
    for args in [&["ps"][..], &["inspect", "running"], &["version"], &["info"], &["images"]] {
        let out = huskctl_as_nobody(&huskctl, &socket, &[], args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Changes are refused, say why, and change nothing.
    for args in [&["run", "-d", "--id", "intruder", "--", "true"][..], &["kill", "running"], &["rm", "-f", "running"]] {
        let out = huskctl_as_nobody(&huskctl, &socket, &[], args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(stderr.contains("uid 65534") && stderr.contains("neither root nor in the admin group"), "{stderr}");
    }
    let st = c.status(pb::StatusRequest { container_id: cid("running") }).await.unwrap().into_inner();
    assert_eq!(st.info.map(|i| i.state()), Some(pb::ContainerState::Running));
    let all = c.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.containers.len(), 1, "{all:?}");
    assert!(agent.log().contains("refused"), "denials are logged");

    // A member of the admin group (by a supplementary group) may.
    let out = huskctl_as_nobody(&huskctl, &socket, &[100, ADMIN], &["kill", "running"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait(&mut c, "running").await.exit_code, None);
    c.remove(pb::RemoveRequest { container_id: cid("running") }).await.unwrap();
}

/// What a container's process sees of its privileges, one `key=value` line each.
const PRIVILEGE_PROBE: &str = "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \\t' | tr : =; \
     echo sys=$(grep ' /sys ' /proc/mounts | tail -1 | cut -d' ' -f4 | cut -d, -f1); \
     echo devices=$(cat /sys/fs/cgroup/devices/devices.list | tr ' ' _); \
     echo keys_masked=$(grep -c ' /proc/keys ' /proc/mounts)";

/// A launch's cgroup_parent (a kubelet's pod cgroup) holds the container's own cgroup in every
/// hierarchy, with its limits; destroying the container removes that cgroup and leaves the
/// parent, which belongs to the caller.
#[tokio::test]
async fn cgroup_parent_holds_the_containers_cgroup() {
    require!(false);
    let agent = Agent::start("agent-cgparent");
    let owner = common::CgroupRoot::new("cgparent-owner");
    let mut c = agent.client().await;
    let mut r = launch("placed", "sleep 60");
    r.cgroup_parent = Some(format!("/{}/pod1/", owner.name));
    r.resources = vec![husk_oci::resources::scalar("mem", 64.0)];
    c.launch(r).await.unwrap();
    let hierarchies = common::cgroup_mounts();
    let memory = hierarchies.iter().find(|h| h.ends_with("memory")).expect("a memory hierarchy");
    let own = memory.join(&owner.name).join("pod1/placed");
    assert_eq!(std::fs::read_to_string(own.join("memory.limit_in_bytes")).unwrap().trim(), (64u64 << 20).to_string());
    let procs_of = |dir: &std::path::Path| std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let procs = procs_of(&own);
    assert!(!procs.trim().is_empty(), "the container runs in {}", own.display());
    let commands: Vec<String> =
        procs.lines().map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default()).collect();
    assert!(commands.iter().any(|c| c.trim() == "sleep"), "{commands:?}");
    assert!(
        agent.cgroups.leftovers().iter().all(|d| !d.ends_with("placed")),
        "nothing of it under the agent's root: {:?}",
        agent.cgroups.leftovers()
    );

    // A container's cgroup is its own: not one that exists, not around or inside another's,
    // never the agent's root. Each refusal leaves the running container alone.
    let refused = |id: &str, parent: String| {
        let mut r = launch(id, "true");
        r.cgroup_parent = Some(parent);
        r
    };
    std::fs::create_dir(memory.join(&owner.name).join("burstable")).unwrap();
    let e = c.launch(refused("burstable", format!("/{}", owner.name))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("`/{}/burstable` exists already", owner.name)), "{}", e.message());
    let e = c.launch(refused("pod1", format!("/{}", owner.name))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("would overlap container `placed`'s"), "{}", e.message());
    let e = c.launch(refused("inner", format!("/{}/pod1/placed", owner.name))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("would overlap container `placed`'s"), "{}", e.message());
    let e = c.launch(refused(&agent.cgroups.name, "/".into())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("which holds the agent's cgroup root"), "{}", e.message());
    assert!(!procs_of(&own).trim().is_empty(), "still running");

    c.kill(pb::KillRequest { container_id: cid("placed"), ..Default::default() }).await.unwrap();
    wait(&mut c, "placed").await;
    for h in &hierarchies {
        assert!(!h.join(&owner.name).join("pod1/placed").exists(), "the container's cgroup went in {}", h.display());
    }
    assert!(memory.join(&owner.name).join("pod1").is_dir(), "the parent is the caller's");
}

#[tokio::test]
async fn privileged_containers_get_the_agents_capabilities_every_device_and_a_writable_sys() {
    require!(false);
    let agent = Agent::start_with("agent-privileged", "allow_privileged = true\n");
    let mut c = agent.client().await;
    let privileged = |mut r: pb::LaunchRequest| {
        r.security = Some(pb::SecurityOptions { privileged: Some(true), ..Default::default() });
        r
    };
    c.launch(privileged(launch("priv", "sleep 60"))).await.unwrap();
    c.launch(launch("plain", "sleep 60")).await.unwrap();
    // A host device no container gets by default, to look for.
    let device = common::non_default_host_device();
    let probe =
        format!("{PRIVILEGE_PROBE}; echo device=$(stat -c %t:%T {} 2>/dev/null || echo none)", device.path().display());
    let observe = |out: pb::ExecSyncResponse| {
        let stderr = String::from_utf8_lossy(out.stderr.as_deref().unwrap_or_default()).to_string();
        assert_eq!(out.exit.and_then(|e| e.exit_code), Some(0), "{stderr}");
        common::observations(&String::from_utf8_lossy(&out.stdout.unwrap_or_default()))
    };
    let seen = observe(exec_script(&mut c, cid("priv"), &probe).await);
    let own_caps = common::own_effective_caps();
    assert_eq!(seen["CapEff"], own_caps, "every capability the agent (root, as this test) holds: {seen:?}");
    assert_eq!(seen["Seccomp"], "0", "no seccomp filter");
    assert_eq!(seen["NoNewPrivs"], "0", "the agent's no_new_privs is lifted");
    assert_eq!(seen["sys"], "rw");
    assert_eq!(seen["devices"], "a_*:*_rwm", "the device cgroup allows every device");
    assert_eq!(seen["keys_masked"], "0", "nothing masked");
    assert_eq!(seen["device"], format!("{:x}:{:x}", device.major(), device.minor()), "{}", device.path().display());

    let seen = observe(exec_script(&mut c, cid("plain"), &probe).await);
    assert_eq!(seen["CapEff"], "00000000a80425fb", "the default set");
    assert_eq!(seen["Seccomp"], "2");
    assert_eq!(seen["NoNewPrivs"], "1");
    assert_eq!(seen["sys"], "ro");
    assert_ne!(seen["devices"], "a_*:*_rwm");
    assert_eq!(seen["keys_masked"], "1");
    assert_eq!(seen["device"], "none");

    // A directory bound over /dev (as a host /dev is for device plugins) is left as it is: no
    // node of it replaced, none added.
    let fake_dev = tempfile::tempdir().unwrap();
    nix::sys::stat::mknod(
        &fake_dev.path().join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap());
    let null_inode = inode(&fake_dev.path().join("null"));
    let mut r = privileged(launch("devvol", "ls /dev"));
    r.container = Some(ContainerInfo {
        r#type: container_info::Type::Mesos as i32,
        volumes: vec![husk_proto::mesos::v1::Volume {
            mode: husk_proto::mesos::v1::volume::Mode::Rw as i32,
            container_path: "/dev".into(),
            host_path: Some(fake_dev.path().display().to_string()),
            ..Default::default()
        }],
        ..Default::default()
    });
    c.launch(r).await.unwrap();
    let t = wait(&mut c, "devvol").await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    let names: Vec<_> = std::fs::read_dir(fake_dev.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["null"], "nothing made in the volume");
    assert_eq!(inode(&fake_dev.path().join("null")), null_inode, "its node is not replaced");

    // A privileged child only inside a privileged parent.
    let child = |parent: &str| {
        let mut r = privileged(launch("child", "grep CapEff /proc/self/status"));
        r.container_id.parent = Some(Box::new(cid(parent)));
        r
    };
    let e = c.launch(child("plain")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("only inside a privileged parent"), "{e:?}");
    c.launch(child("priv")).await.unwrap();
    let t = tokio::time::timeout(
        Duration::from_secs(60),
        c.wait(pb::WaitRequest { container_id: child("priv").container_id }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    for id in ["priv", "plain"] {
        c.kill(pb::KillRequest { container_id: cid(id), ..Default::default() }).await.unwrap();
        wait(&mut c, id).await;
    }
}
