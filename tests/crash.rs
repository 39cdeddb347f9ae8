//! The crash matrix: the agent is crashed (SIGABRT) at every one of its failpoints, and every
//! shim at every one of its own, with containers in every phase around the crash. After a
//! restart, every container must reach a defined state (running and re-attached, or terminated
//! with a reason), every exit status recorded before the crash must be reported, and nothing
//! (process, mount, cgroup, shim, socket, directory) may be left once the containers are gone.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, launch, processes_under, wait, Agent};

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{task_status::Reason, TaskState};
use tonic::transport::Channel;

/// One call that may die with the agent: at most 60 s, its error ignored.
async fn attempt<T>(call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(60), call).await.ok()?.ok()
}

/// Every container's status once none is between states (launching or destroying): the ones
/// a restarted agent is still following get a moment to finish.
async fn settled(c: &mut ContainerizerClient<Channel>) -> HashMap<String, pb::ContainerInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = c.list(pb::ListRequest::default()).await.unwrap().into_inner().containers;
        let unsettled: Vec<_> = list
            .iter()
            .filter(|s| s.termination.is_none() && s.state() != pb::ContainerState::Running)
            .map(|s| format!("{} {:?}", s.container_id.value, s.state()))
            .collect();
        if unsettled.is_empty() {
            return list.into_iter().map(|s| (s.container_id.value.clone(), s)).collect();
        }
        assert!(Instant::now() < deadline, "containers never settled after the restart: {unsettled:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills and removes every container, then checks that nothing of them is left.
async fn destroy_all_and_check_leaks(agent: &Agent, c: &mut ContainerizerClient<Channel>) {
    for (id, s) in settled(c).await {
        if s.termination.is_none() {
            // (It may end on its own meanwhile: Wait below tells.)
            let _ = c.kill(pb::KillRequest { container_id: cid(&id), ..Default::default() }).await;
        }
    }
    for (id, _) in settled(c).await {
        let t = tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest { container_id: cid(&id) }))
            .await
            .expect("Wait answered in time")
            .unwrap();
        drop(t);
        c.remove(pb::RemoveRequest { container_id: cid(&id) }).await.unwrap();
    }
    let leftovers = |p: &str| -> Vec<String> {
        std::fs::read_dir(agent.path(p))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(leftovers("run/shims"), Vec::<String>::new(), "shim directories (sockets, pids) left");
    assert_eq!(leftovers("work/containers"), Vec::<String>::new(), "container directories left");
    assert_eq!(common::mounts_under(agent.dir.path()), Vec::<String>::new(), "mounts left");
    let agent_pid = agent.process.as_ref().map(|p| p.id());
    // Shims exit a moment after their Shutdown.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_under(agent.dir.path(), agent_pid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_under(agent.dir.path(), agent_pid), Vec::<String>::new(), "processes left");
    let cgroups: Vec<_> = agent
        .cgroups
        .leftovers()
        .into_iter()
        .filter(|p| !p.ends_with(&agent.cgroups.name) && !p.ends_with("shims.scope"))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

/// Crashes the agent at `failpoint` with containers in every phase, restarts it, checks.
async fn crash_agent_at(n: usize, failpoint: &str) {
    let mut agent = Agent::start(&format!("crash-agent-{n}"));
    let mut c = agent.client().await;
    // Before the crash: one container ended (its status checkpointed by the agent), one runs,
    // one ends while the agent is down (its status only in its shim's exit.json).
    c.launch(launch("done", "exit 7")).await.unwrap();
    let t = c.wait(pb::WaitRequest { container_id: cid("done") }).await.unwrap().into_inner();
    assert_eq!(t.exit_code, Some(7));
    c.launch(launch("alive", "exec sleep 1000")).await.unwrap();
    c.launch(launch("away", "sleep 0.2; exit 5")).await.unwrap();
    agent.kill9();
    let exit_json = agent.path("run/shims/away/exit.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exit_json.exists() {
        assert!(Instant::now() < deadline, "`away` never exited");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The crash: recovery, a launch, an exit, a kill and a removal, until the failpoint fires.
    agent.env = vec![("HUSK_FAILPOINTS".into(), format!("{failpoint}=abort"))];
    if let (true, Some(mut c)) = (agent.try_restart(), agent.try_client().await) {
        attempt(c.launch(launch("target", "exec sleep 1000"))).await;
        if attempt(c.launch(launch("short", "exit 3"))).await.is_some() {
            attempt(c.wait(pb::WaitRequest { container_id: cid("short") })).await;
        }
        attempt(c.kill(pb::KillRequest { container_id: cid("target"), ..Default::default() })).await;
        attempt(c.remove(pb::RemoveRequest { container_id: cid("done") })).await;
    }
    let status = agent.exited(Duration::from_secs(60)).unwrap_or_else(|| panic!("{failpoint} never fired"));
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{failpoint}: the agent crashed there: {status:?}");
    assert!(agent.log().contains(&format!("husk: failpoint {failpoint}: abort")), "{failpoint}: {}", agent.log());

    agent.env.clear();
    agent.restart();
    let mut c = agent.client().await;
    let all = settled(&mut c).await;
    let what = |id: &str| all.get(id).unwrap_or_else(|| panic!("{failpoint}: `{id}` was lost: {all:?}"));
    // Exit statuses recorded before the crash are reported after it (a container the restarted
    // agent is still following shows RUNNING a moment longer: Wait tells).
    for (id, code) in [("done", 7), ("away", 5)] {
        what(id);
        let t = wait(&mut c, id).await;
        assert_eq!(t.exit_code, Some(code), "{failpoint}: {id}: {t:?}");
    }
    assert_eq!(what("alive").state(), pb::ContainerState::Running, "{failpoint}: re-attached");
    if all.get("short").is_some_and(|s| s.termination.is_none()) {
        let t = wait(&mut c, "short").await;
        assert_eq!(t.exit_code, Some(3), "{failpoint}: `short` exited 3: {t:?}");
    }
    // Containers of the crashed agent's own workload (a failpoint hit during recovery may crash
    // it anywhere in that workload): each runs, or ended with its own status or a reason.
    for (id, s) in &all {
        let Some(t) = &s.termination else { continue };
        let cut_short =
            t.reason() == Reason::ContainerLaunchFailed && t.message().contains("the agent stopped during the launch");
        let expected = match id.as_str() {
            "short" => t.exit_code == Some(3) || cut_short,
            "target" => t.state() == TaskState::TaskKilled || cut_short,
            _ => true,
        };
        assert!(expected, "{failpoint}: `{id}` ended up {t:?}");
    }
    let target = all.get("target").map(|s| (s.state(), s.termination.as_ref().map(|t| t.state())));
    match failpoint {
        "agent.launch.accepted" | "agent.launch.bundle-written" | "agent.launch.shim-started" => {
            assert_eq!(target.and_then(|t| t.1), Some(TaskState::TaskFailed), "{failpoint}: the launch is destroyed")
        }
        "agent.launch.half-checkpointed" => assert_eq!(target, None, "{failpoint}: a launch never answered is swept"),
        "agent.launch.running" => assert_eq!(target, Some((pb::ContainerState::Running, None)), "{failpoint}"),
        "agent.kill.checkpointed" => {
            // The restarted agent sends the kill that was checkpointed but maybe never sent.
            let t =
                tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest { container_id: cid("target") }))
                    .await
                    .expect("Wait answered in time")
                    .unwrap()
                    .into_inner();
            assert_eq!(t.state(), TaskState::TaskKilled, "{failpoint}: the kill is carried out: {t:?}")
        }
        _ => {}
    }
    // The same agent goes on serving: a new container runs and exits with its own status.
    c.launch(launch("after", "exit 4")).await.unwrap();
    let t = c.wait(pb::WaitRequest { container_id: cid("after") }).await.unwrap().into_inner();
    assert_eq!(t.exit_code, Some(4));
    destroy_all_and_check_leaks(&agent, &mut c).await;
}

/// Crashes the shim at `failpoint` while another container (started before) runs.
async fn crash_shim_at(n: usize, failpoint: &str) {
    let mut agent = Agent::start(&format!("crash-shim-{n}"));
    let mut c = agent.client().await;
    c.launch(launch("alive", "exec sleep 1000")).await.unwrap();
    // The shims of this agent's launches inherit the failpoint.
    agent.kill9();
    agent.env = vec![("HUSK_FAILPOINTS".into(), format!("{failpoint}=abort"))];
    agent.restart();
    let mut c = agent.client().await;
    let launched = c.launch(launch("target", "sleep 0.2; exit 3")).await;
    let t = tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest { container_id: cid("target") }))
        .await
        .expect("Wait answered in time")
        .unwrap()
        .into_inner();
    let reason = Some(t.reason());
    match failpoint {
        "shim.created" | "shim.started" => {
            let e = launched.unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{failpoint}: {e:?}");
            let why =
                if failpoint == "shim.created" { "the shim exited before it served" } else { "did not answer Start" };
            assert!(e.message().contains(why), "{failpoint}: {e:?}");
            assert_eq!((t.state(), reason), (TaskState::TaskFailed, Some(Reason::ContainerLaunchFailed)), "{t:?}");
        }
        "shim.reaped" => {
            launched.unwrap();
            assert_eq!((t.state(), reason), (TaskState::TaskFailed, Some(Reason::ExecutorTerminated)), "{t:?}");
            assert!(t.message().contains("without recording an exit status"), "{t:?}");
        }
        "shim.exit-recorded" => {
            launched.unwrap();
            assert_eq!(t.exit_code, Some(3), "{failpoint}: exit.json was written before the crash: {t:?}");
        }
        other => panic!("no crash scenario for the shim failpoint {other}"),
    }
    // The other container and the agent are untouched.
    let alive = c.status(pb::StatusRequest { container_id: cid("alive") }).await.unwrap().into_inner();
    assert_eq!(alive.info.as_ref().map(|i| i.state()), Some(pb::ContainerState::Running), "{failpoint}: {alive:?}");
    let usage = c.usage(pb::UsageRequest { container_id: cid("alive") }).await.unwrap().into_inner();
    assert!(usage.statistics.unwrap().processes.unwrap_or(0) >= 1);
    agent.env.clear();
    destroy_all_and_check_leaks(&agent, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_matrix() {
    require!(false);
    for (n, failpoint) in husk_oci::failpoint::AGENT.iter().enumerate() {
        eprintln!("crashing the agent at {failpoint}");
        crash_agent_at(n, failpoint).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_crash_matrix() {
    require!(false);
    for (n, failpoint) in husk_oci::failpoint::SHIM.iter().enumerate() {
        eprintln!("crashing a shim at {failpoint}");
        crash_shim_at(n, failpoint).await;
    }
}

/// A stalled agent step (a slow disk, a stuck shim start) stalls that launch only: the agent
/// answers other calls meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_launch_stalls_nothing_else() {
    require!(false);
    let mut agent = Agent::start("crash-stall");
    agent.kill9();
    agent.env = vec![("HUSK_FAILPOINTS".into(), "agent.launch.bundle-written=sleep(10000)".into())];
    agent.restart();
    let mut c = agent.client().await;
    let mut slow = c.clone();
    let launch = tokio::spawn(async move { slow.launch(launch("slow", "exit 0")).await });
    // The launch has reached the stall once its state is past PREPARING's bundle write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("failpoint agent.launch.bundle-written: sleeping") {
        assert!(Instant::now() < deadline, "the failpoint never fired: {}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = c.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.containers.len(), 1);
    assert_eq!(list.containers[0].state(), pb::ContainerState::Preparing, "answered during the stall: {}", agent.log());
    assert!(!launch.is_finished(), "the stall was not over yet when List answered");
    launch.await.unwrap().unwrap();
    destroy_all_and_check_leaks(&agent, &mut c).await;
}

/// A shim killed while the agent is down: the restarted agent finds it dead with no exit
/// recorded, destroys what is left of its container and reports why; a shim that recorded its
/// container's exit before it died still has that exit reported; the other container is
/// re-attached; nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shims_killed_while_the_agent_is_down() {
    require!(false);
    let mut agent = Agent::start("crash-shim-down");
    let mut c = agent.client().await;
    for (id, script) in [("victim", "exec sleep 1000"), ("witness", "exec sleep 1000"), ("ended", "exit 6")] {
        c.launch(launch(id, script)).await.unwrap();
    }
    assert_eq!(wait(&mut c, "ended").await.exit_code, Some(6));
    c.launch(launch("ends-later", "sleep 0.3; exit 4")).await.unwrap();
    let st = c.status(pb::StatusRequest { container_id: cid("victim") }).await.unwrap().into_inner();
    let victim_pid = st.status.unwrap().executor_pid.unwrap();
    agent.kill9();

    // The shims of `victim` and (once its container exited) `ends-later` die with the agent away.
    let shim_of = |id: &str| {
        let path = agent.path("run").join("shims").join(id).join(husk_shim::shim::SHIM_FILE);
        let shim: husk_shim::shim::ProcessId = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(shim.alive(), "{id}'s shim runs on while the agent is down");
        nix::unistd::Pid::from_raw(shim.pid)
    };
    let victim_shim = shim_of("victim");
    let later_shim = shim_of("ends-later");
    let exit_json = agent.path("run").join("shims").join("ends-later").join("exit.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exit_json.exists() {
        assert!(Instant::now() < deadline, "ends-later never recorded its exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for shim in [victim_shim, later_shim] {
        nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGKILL).unwrap();
    }

    agent.restart();
    let mut c = agent.client().await;
    let t = wait(&mut c, "victim").await;
    assert_eq!((t.state(), t.reason()), (TaskState::TaskFailed, Reason::ExecutorTerminated), "{t:?}");
    assert!(t.message().contains("without recording an exit status"), "{t:?}");
    assert_eq!(wait(&mut c, "ends-later").await.exit_code, Some(4), "the exit recorded before the shim died");
    assert_eq!(wait(&mut c, "ended").await.exit_code, Some(6));
    let w = c.status(pb::StatusRequest { container_id: cid("witness") }).await.unwrap().into_inner();
    assert_eq!(w.info.as_ref().map(|i| i.state()), Some(pb::ContainerState::Running), "{w:?}");
    // The victim's own process went with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{victim_pid}")).exists() {
        assert!(Instant::now() < deadline, "the victim's init {victim_pid} outlived its destruction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    destroy_all_and_check_leaks(&agent, &mut c).await;
}
