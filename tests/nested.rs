//! Nested containers (Mesos `ContainerID.parent`): a real agent runs a parent and children that
//! join its namespaces, see its sandbox, are destroyed before it and removed on their own.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use std::time::Duration;

use fixture::{cid, exec_script, Agent};
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{
    container_info, volume, CommandInfo, ContainerId, ContainerInfo, LinuxInfo, TaskState, Volume,
};
use tonic::transport::Channel;

type Client = ContainerizerClient<Channel>;

fn child_id(parent: &str, id: &str) -> ContainerId {
    ContainerId { value: id.into(), parent: Some(Box::new(cid(parent))) }
}

fn launch(id: ContainerId, script: &str) -> pb::LaunchRequest {
    pb::LaunchRequest {
        container_id: id,
        command: Some(CommandInfo { value: Some(script.into()), ..Default::default() }),
        ..Default::default()
    }
}

fn mesos(f: impl FnOnce(&mut ContainerInfo)) -> Option<ContainerInfo> {
    let mut info = ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() };
    f(&mut info);
    Some(info)
}

async fn init_pid(c: &mut Client, id: ContainerId) -> u32 {
    c.status(pb::StatusRequest { container_id: id }).await.unwrap().into_inner().status.unwrap().executor_pid.unwrap()
}

async fn wait(c: &mut Client, id: ContainerId) -> pb::ContainerTermination {
    tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest { container_id: id }))
        .await
        .expect("Wait answered in time")
        .unwrap()
        .into_inner()
}

fn ns(pid: u32, t: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{t}")).unwrap()
}

#[tokio::test]
async fn nested_containers_share_their_parent_and_go_before_it() {
    require!(false);
    let mut agent = Agent::start("nested");
    let mut c = agent.client().await;
    let mut parent = launch(cid("pod"), "mkdir -p $MESOS_SANDBOX/shared; exec sleep 600");
    parent.container = mesos(|i| i.hostname = Some("podhost".into()));
    c.launch(parent).await.unwrap();
    let pod = init_pid(&mut c, cid("pod")).await;

    // A child on the parent's network and hostname, with the parent's sandbox as a volume.
    let mut req = launch(child_id("pod", "app"), "echo from-child > parent/note; hostname > own; exec sleep 600");
    req.container = mesos(|i| {
        i.volumes = vec![Volume {
            container_path: "parent".into(),
            mode: volume::Mode::Rw as i32,
            source: Some(volume::Source {
                r#type: Some(volume::source::Type::SandboxPath as i32),
                sandbox_path: Some(volume::source::SandboxPath {
                    r#type: Some(volume::source::sandbox_path::Type::Parent as i32),
                    path: "shared".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]
    });
    let r = c.launch(req).await.unwrap().into_inner();
    assert_eq!(r.state(), pb::ContainerState::Running);
    let pod_sandbox = agent.path("work/containers/pod/sandbox");
    // Its own sandbox in its own directory: never a path its parent can redirect.
    let app_sandbox = agent.path("work/containers/pod.app/sandbox");
    assert_eq!(r.sandbox_directory.as_deref(), Some(app_sandbox.to_str().unwrap()));
    let app = init_pid(&mut c, child_id("pod", "app")).await;
    assert_eq!(ns(app, "net"), ns(pod, "net"));
    assert_eq!(ns(app, "uts"), ns(pod, "uts"));
    assert_eq!(ns(app, "ipc"), ns(pod, "ipc"), "a nested container shares its parent's IPC by default");
    assert_ne!(ns(app, "pid"), ns(pod, "pid"), "its own pid namespace unless it asks");
    assert_ne!(ns(app, "mnt"), ns(pod, "mnt"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !app_sandbox.join("own").exists() || !pod_sandbox.join("shared/note").exists() {
        assert!(std::time::Instant::now() < deadline, "the child never wrote its files");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_to_string(pod_sandbox.join("shared/note")).unwrap(), "from-child\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(std::fs::read_to_string(app_sandbox.join("own")).unwrap(), "podhost\n");

    // One sharing the parent's pid namespace sees the parent's processes; exec reaches it.
    let mut req = launch(child_id("pod", "peek"), "exec sleep 600");
    req.container = mesos(|i| i.linux_info = Some(LinuxInfo { share_pid_namespace: Some(true), ..Default::default() }));
    c.launch(req).await.unwrap();
    let peek = init_pid(&mut c, child_id("pod", "peek")).await;
    assert_eq!(ns(peek, "pid"), ns(pod, "pid"));
    let ps = exec_script(&mut c, child_id("pod", "peek"), "cat /proc/[0-9]*/comm | sort | uniq -c").await;
    let seen = String::from_utf8_lossy(ps.stdout()).into_owned();
    assert!(seen.contains("2 sleep") || seen.contains("sleep"), "{seen}");

    // Listed with show_nested only, with their parent in the id.
    let list = c.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.containers.iter().map(|i| i.container_id.value.as_str()).collect::<Vec<_>>(), ["pod"]);
    let list = c.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    let mut ids: Vec<String> =
        list.containers.iter().map(|i| husk_oci::validate::display_id(&i.container_id)).collect();
    ids.sort();
    assert_eq!(ids, ["pod", "pod.app", "pod.peek"]);

    // A terminated nested container is removed on its own; its parent lives on.
    c.launch(launch(child_id("pod", "once"), "exit 4")).await.unwrap();
    assert_eq!(wait(&mut c, child_id("pod", "once")).await.exit_code, Some(4));
    assert!(agent.path("work/containers/pod.once/sandbox").is_dir());
    c.remove(pb::RemoveRequest { container_id: child_id("pod", "once") }).await.unwrap();
    assert!(!agent.path("work/containers/pod.once").exists());

    // Bad nested launches.
    let e = c.launch(launch(child_id("ghost", "x"), "true")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("container_id.parent: no container `ghost`"), "{}", e.message());
    let mut bad = launch(child_id("pod", "named"), "true");
    bad.container = mesos(|i| i.hostname = Some("other".into()));
    let e = c.launch(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("container.hostname"), "{}", e.message());
    assert!(!agent.path("work/containers/pod.named").exists(), "a refused launch leaves nothing");
    let e = c.launch(launch(child_id("pod", "app"), "true")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);

    // A restarted agent finds the children again, under their parent.
    agent.kill9();
    agent.restart();
    let mut c = agent.client().await;
    let list = c.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    let running: Vec<String> = list
        .containers
        .iter()
        .filter(|i| i.state() == pb::ContainerState::Running)
        .map(|i| husk_oci::validate::display_id(&i.container_id))
        .collect();
    assert_eq!(running.len(), 3, "{running:?}");
    let st = c.status(pb::StatusRequest { container_id: child_id("pod", "app") }).await.unwrap().into_inner();
    assert_eq!(st.info.unwrap().sandbox_directory.as_deref(), Some(app_sandbox.to_str().unwrap()));

    // Destroying the parent destroys its children first.
    let mut events = c.watch(pb::WatchRequest::default()).await.unwrap().into_inner();
    c.kill(pb::KillRequest { container_id: cid("pod"), ..Default::default() }).await.unwrap();
    let mut order = Vec::new();
    while order.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(60), events.message()).await.unwrap().unwrap().unwrap();
        if e.state() == pb::ContainerState::Terminated {
            order.push(husk_oci::validate::display_id(&e.container_id));
        }
    }
    assert_eq!(order.last().map(String::as_str), Some("pod"), "{order:?}");
    for id in [child_id("pod", "app"), child_id("pod", "peek")] {
        assert_eq!(wait(&mut c, id).await.state(), TaskState::TaskKilled);
    }
    for pid in [pod, app, peek] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                s.contains(") Z")
            }
        );
    }
    // Removing the parent takes its children's records and sandboxes.
    c.remove(pb::RemoveRequest { container_id: cid("pod") }).await.unwrap();
    let list = c.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    for d in ["pod", "pod.app", "pod.peek"] {
        assert!(!agent.path(&format!("work/containers/{d}")).exists(), "{d} left behind");
        assert!(!agent.path(&format!("run/shims/{d}")).exists(), "{d}'s shim dir left behind");
    }
}

#[tokio::test]
async fn a_child_without_an_image_runs_on_its_parents_root() {
    require!(false);
    let agent = Agent::start("nested-root");
    let rootfs = agent.path("busybox");
    common::busybox_rootfs(&rootfs);
    let mut c = agent.client().await;
    let mut parent = launch(cid("img"), "echo parent-wrote > /marker; exec sleep 600");
    parent.rootfs = Some(rootfs.display().to_string());
    c.launch(parent).await.unwrap();
    let out = exec_script(&mut c, cid("img"), "while [ ! -f /marker ]; do sleep 0.01; done").await;
    assert_eq!(out.exit.unwrap().exit_code, Some(0));
    c.launch(launch(
        child_id("img", "kid"),
        "cat /marker > $MESOS_SANDBOX/seen; ls /mnt/mesos/sandbox > $MESOS_SANDBOX/ls",
    ))
    .await
    .unwrap();
    let t = wait(&mut c, child_id("img", "kid")).await;
    assert_eq!(t.exit_code, Some(0), "{t:?}");
    let kid = agent.path("work/containers/img.kid/sandbox");
    assert_eq!(std::fs::read_to_string(kid.join("seen")).unwrap(), "parent-wrote\n");
    assert!(std::fs::read_to_string(kid.join("ls")).unwrap().contains("seen"), "its own sandbox is its MESOS_SANDBOX");
    c.kill(pb::KillRequest { container_id: cid("img"), ..Default::default() }).await.unwrap();
    wait(&mut c, cid("img")).await;
    c.remove(pb::RemoveRequest { container_id: cid("img") }).await.unwrap();
    assert!(common::mounts_under(agent.dir.path()).is_empty(), "{:?}", common::mounts_under(agent.dir.path()));
}

#[tokio::test]
async fn a_session_container_lives_as_long_as_its_stream() {
    require!(false);
    let agent = Agent::start("session");
    let mut c = agent.client().await;
    c.launch(launch(cid("host"), "exec sleep 600")).await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let send = |r: pb::session_request::Request| pb::SessionRequest { request: Some(r) };
    tx.send(send(pb::session_request::Request::Launch(launch(
        child_id("host", "dbg"),
        "while read l; do echo echo:$l; done",
    ))))
    .await
    .unwrap();
    let mut out = c.launch_session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(send(pb::session_request::Request::Stdin(b"ping\n".to_vec()))).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("echo:ping\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), out.message()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.data.unwrap_or_default()));
    }
    let dbg = init_pid(&mut c, child_id("host", "dbg")).await;
    // The client goes away: so does the session's container (its parent stays).
    drop(out);
    drop(tx);
    let t = wait(&mut c, child_id("host", "dbg")).await;
    assert_eq!(t.state(), TaskState::TaskKilled, "{t:?}");
    assert!(std::fs::read_to_string(format!("/proc/{dbg}/stat")).map(|s| s.contains(") Z")).unwrap_or(true));
    let st = c.status(pb::StatusRequest { container_id: cid("host") }).await.unwrap().into_inner();
    assert_eq!(st.info.unwrap().state(), pb::ContainerState::Running);

    // A session is a nested container, and only LaunchSession makes one.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(send(pb::session_request::Request::Launch(launch(cid("top"), "true")))).await.unwrap();
    let e = c.launch_session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("launch.container_id.parent"), "{}", e.message());
    let mut r = launch(child_id("host", "fake"), "true");
    r.session = Some(true);
    let e = c.launch(r).await.unwrap_err();
    assert!(e.message().contains("session: set by LaunchSession only"), "{}", e.message());

    c.kill(pb::KillRequest { container_id: cid("host"), ..Default::default() }).await.unwrap();
    wait(&mut c, cid("host")).await;
    c.remove(pb::RemoveRequest { container_id: cid("host") }).await.unwrap();
}
