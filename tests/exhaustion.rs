//! Resource exhaustion: a container out of memory, a fork bomb, the work dir's filesystem full
//! (a small tmpfs), and the agent out of file descriptors. Each time the agent keeps serving,
//! the other containers are untouched, checkpoints stay intact and errors say what ran out.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, exec_script, launch, wait, Agent};

use std::time::{Duration, Instant};

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{task_status::Reason, TaskState};
use tonic::transport::Channel;

/// The witness `w` runs as the same process it started as, and answers an exec.
async fn untouched(c: &mut ContainerizerClient<Channel>, pid: Option<u32>) {
    let st = c.status(pb::StatusRequest { container_id: cid("w") }).await.unwrap().into_inner();
    assert_eq!(st.info.as_ref().map(|i| i.state()), Some(pb::ContainerState::Running), "{st:?}");
    assert_eq!(st.status.unwrap().executor_pid, pid);
    let out = exec_script(c, cid("w"), "echo ok").await;
    assert_eq!(out.stdout(), b"ok\n");
}

async fn witness(c: &mut ContainerizerClient<Channel>) -> Option<u32> {
    c.launch(launch("w", "exec sleep 1000")).await.unwrap();
    c.status(pb::StatusRequest { container_id: cid("w") }).await.unwrap().into_inner().status.unwrap().executor_pid
}

async fn end(c: &mut ContainerizerClient<Channel>, ids: &[&str]) {
    for id in ids {
        let _ = c.kill(pb::KillRequest { container_id: cid(id), ..Default::default() }).await;
        wait(c, id).await;
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_and_fork_bomb_stay_in_their_container() {
    require!(false);
    // The fixture's agent caps every container at 512 processes.
    let agent = Agent::start("exhaust-procs");
    let mut c = agent.client().await;
    let pid = witness(&mut c).await;

    let mut r = launch("oom", "tail /dev/zero");
    r.resources = vec![husk_oci::resources::scalar("mem", 32.0)];
    c.launch(r).await.unwrap();
    let t = wait(&mut c, "oom").await;
    assert_eq!((t.state(), t.reason()), (TaskState::TaskFailed, Reason::ContainerLimitationMemory), "{t:?}");
    untouched(&mut c, pid).await;

    // A fork flood reaches the pids limit; the node and the witness do not notice. A shell
    // whose fork fails dies (busybox ash raises "can't fork"), so a self-replicating bomb
    // settles below the limit once its last generation dies, and a sample can miss the peak.
    // Here a subshell forks sleepers until the kernel refuses one and then dies, leaving every
    // sleeper holding its slot: the container stays at the limit for the whole check.
    let bomb = launch("bomb", "(while :; do sleep 1000 & done) 2>/dev/null; exec sleep 1000");
    c.launch(bomb).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = c.usage(pb::UsageRequest { container_id: cid("bomb") }).await;
        let procs = u.ok().and_then(|u| u.into_inner().statistics).and_then(|s| s.processes).unwrap_or(0);
        if procs >= 400 {
            assert!(procs <= 512, "the pids limit holds: {procs}");
            break;
        }
        assert!(Instant::now() < deadline, "the bomb never grew: {procs} processes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    untouched(&mut c, pid).await;
    c.kill(pb::KillRequest { container_id: cid("bomb"), ..Default::default() }).await.unwrap();
    assert_eq!(wait(&mut c, "bomb").await.state(), TaskState::TaskKilled);
    end(&mut c, &["w"]).await;
    for id in ["oom", "bomb"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_work_dir_fails_launches_clearly_and_loses_nothing() {
    require!(false);
    let mut agent = Agent::start("exhaust-disk");
    agent.kill9();
    // The work dir on a 24 MiB tmpfs of its own.
    let work = agent.path("work");
    nix::mount::mount(Some("tmpfs"), &work, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=24m")).unwrap();
    agent.restart();
    let mut c = agent.client().await;
    let pid = witness(&mut c).await;
    c.launch(launch("done", "exit 3")).await.unwrap();
    assert_eq!(wait(&mut c, "done").await.exit_code, Some(3));

    // A container fills the filesystem its sandbox is on.
    c.launch(launch("filler", "dd if=/dev/zero of=$MESOS_SANDBOX/fill bs=1M; exec sleep 1000")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while nix::sys::statvfs::statvfs(&work).unwrap().blocks_available() > 0 {
        assert!(Instant::now() < deadline, "the filler never filled the work dir");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A launch now fails, saying why, and leaves nothing.
    let before: Vec<_> = std::fs::read_dir(work.join("containers")).unwrap().flatten().map(|e| e.file_name()).collect();
    let e = c.launch(launch("late", "true")).await.unwrap_err();
    assert!(e.message().contains("No space left on device"), "{e:?}");
    let after: Vec<_> = std::fs::read_dir(work.join("containers")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(before.len(), after.len(), "a failed launch leaves no directory");
    untouched(&mut c, pid).await;
    let e = c.status(pb::StatusRequest { container_id: cid("late") }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Space again: the filler is killed and removed, then everything works, also after a
    // restart (the checkpoints written before the filesystem filled are intact).
    c.kill(pb::KillRequest { container_id: cid("filler"), ..Default::default() }).await.unwrap();
    wait(&mut c, "filler").await;
    c.remove(pb::RemoveRequest { container_id: cid("filler") }).await.unwrap();
    agent.kill9();
    agent.restart();
    let mut c = agent.client().await;
    untouched(&mut c, pid).await;
    assert_eq!(wait(&mut c, "done").await.exit_code, Some(3));
    c.launch(launch("late", "exit 0")).await.unwrap();
    assert_eq!(wait(&mut c, "late").await.exit_code, Some(0));
    end(&mut c, &["w", "done", "late"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_out_of_file_descriptors_recovers() {
    require!(false);
    let agent = Agent::start("exhaust-fds");
    let mut c = agent.client().await;
    let pid = witness(&mut c).await;
    let agent_pid = agent.process.as_ref().unwrap().id();
    let fds = || std::fs::read_dir(format!("/proc/{agent_pid}/fd")).unwrap().count() as u64;
    // Room for a few more descriptors only.
    let limit = fds() + 16;
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={agent_pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(set.success());
    // Many clients at once: the agent runs out of descriptors.
    let mut hogs = Vec::new();
    for _ in 0..64 {
        if let Ok(s) = tokio::net::UnixStream::connect(agent.socket()).await {
            hogs.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fds() >= limit - 1, "the agent's descriptors were exhausted ({} of {limit})", fds());
    // Meanwhile a launch fails with an error (or waits), it does not crash the agent.
    let mut c2 = c.clone();
    let attempt = tokio::time::timeout(Duration::from_secs(5), c2.launch(launch("during", "exit 0"))).await;
    drop(hogs);
    assert!(agent.socket().exists());
    // Descriptors back: the agent serves again, the witness untouched.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        if let Some(mut c) = agent.try_client().await {
            if c.list(pb::ListRequest::default()).await.is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the agent never served again: {}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut agent = agent;
    assert!(agent.exited(Duration::ZERO).is_none(), "the agent is still running");
    untouched(&mut c, pid).await;
    if let Ok(Ok(_)) = attempt {
        assert_eq!(wait(&mut c, "during").await.exit_code, Some(0));
        c.remove(pb::RemoveRequest { container_id: cid("during") }).await.unwrap();
    } else if c.status(pb::StatusRequest { container_id: cid("during") }).await.is_ok() {
        wait(&mut c, "during").await;
        c.remove(pb::RemoveRequest { container_id: cid("during") }).await.unwrap();
    }
    c.launch(launch("after", "exit 0")).await.unwrap();
    assert_eq!(wait(&mut c, "after").await.exit_code, Some(0));
    end(&mut c, &["w", "after"]).await;
}
