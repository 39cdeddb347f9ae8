//! The Kubernetes CRI end to end: a CRI client built from the CRI protos against a real agent's
//! CRI socket. A pod with two containers sharing its namespaces, logs in the CRI format and
//! their reopening, ExecSync, stats, events, OOMKilled, stop with a grace period, recovery
//! after kill -9, the same containers seen through the husk API, and teardown that leaves
//! nothing behind.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

#[path = "common/agent.rs"]
mod fixture;
#[path = "common/image.rs"]
mod image;

use fixture::{ok, Agent};
use husk_proto::agent::v1 as pb;
use husk_proto::cri;
use husk_proto::cri::image_service_client::ImageServiceClient;
use husk_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

fn busybox_image(agent: &Agent, files: &Path) {
    let root = files.join("rootfs");
    common::busybox_rootfs(&root);
    let layout = files.join("layout");
    let config = serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}});
    image::oci_layout(&layout, &[image::tar_of(&root)], config, "1");
    ok(agent, &["import", layout.to_str().unwrap(), "--name", "localhost/busybox"]);
}

fn container(name: &str, script: &str, log: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "localhost/busybox:1".into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.into()],
        log_path: log.into(),
        labels: HashMap::from([("app".into(), name.into())]),
        ..Default::default()
    }
}

async fn exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

async fn until_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(rt, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{id} never exited: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a CRI log file, checking every line's shape: `<RFC3339Nano> <stream> <F|P> <text>`.
fn cri_log(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (time, stream, tag, msg) =
                (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            assert_eq!(time.len(), "2026-01-01T00:00:00.000000000Z".len(), "{l}");
            assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{l}");
            assert!(matches!(stream, "stdout" | "stderr") && matches!(tag, "F" | "P"), "{l}");
            (stream.to_string(), tag.to_string(), msg.to_string())
        })
        .collect()
}

async fn until_logged(path: &Path, line: &str) -> Vec<(String, String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let entries = cri_log(path);
        if entries.iter().any(|(_, _, m)| m == line) {
            return entries;
        }
        assert!(std::time::Instant::now() < deadline, "`{line}` never reached {}: {entries:?}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pod_of_two_containers_through_the_cri() {
    require!(false);
    // portmap behind a wrapper whose DEL fails while `del-fails` exists, to see a failed
    // teardown reported by StopPodSandbox.
    let plugins = tempfile::tempdir().unwrap();
    let flaky = plugins.path().join("flakyportmap");
    let marker = plugins.path().join("del-fails");
    std::fs::write(
        &flaky,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ] && [ -e {} ]; then cat >/dev/null; \
             echo '{{\"code\":11,\"msg\":\"DEL refused by the test\"}}'; exit 1; fi\nexec /usr/lib/cni/portmap\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&flaky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut agent = Agent::start_with("cri", &format!("cni_bin_dir = \"/usr/lib/cni:{}\"\n", plugins.path().display()));
    let files = tempfile::tempdir().unwrap();
    busybox_image(&agent, files.path());
    let logs = files.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);
    let mut img = ImageServiceClient::new(agent.cri_channel().await);

    // What crictl asks first.
    let v = rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!((v.version.as_str(), v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("0.1.0", "husk", "v1"));
    assert!(!v.runtime_version.is_empty());
    let fs = img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
    let st = rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner().status.unwrap();
    assert!(st.conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status));

    // Images: the store as the CRI sees it; an absent image is an empty answer.
    let images = img.list_images(cri::ListImagesRequest::default()).await.unwrap().into_inner().images;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, ["localhost/busybox:1"]);
    let present = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: "localhost/busybox:1".into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(present.image.unwrap().id, images[0].id);
    let absent = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: "localhost/nothing:1".into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(absent.image.is_none());
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec { image: "localhost/nothing:1".into(), ..Default::default() }),
    })
    .await
    .expect("removing an absent image is not an error");

    // A pod: its own hostname, DNS and log directory.
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "podhost".into(),
        log_directory: logs.display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.10.10.10".into()],
            searches: vec!["example.com".into()],
            options: vec!["ndots:8".into()],
        }),
        labels: HashMap::from([("tier".into(), "front".into())]),
        ..Default::default()
    };
    let bad = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("config.metadata"), "{}", bad.message());
    // Without a CNI network the node is not network-ready and a pod (not on the host's
    // network) is refused; with one, pods get their address from it.
    let network_ready = |st: &cri::RuntimeStatus| st.conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status);
    assert!(!network_ready(&st), "{st:?}");
    let no_net = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(no_net.code(), tonic::Code::FailedPrecondition);
    assert!(no_net.message().contains("needs a CNI network"), "{}", no_net.message());
    let veths_before = veths();
    agent.cni_bridge("husk-pods", "huskcri0", "10.88.77.0/24");
    let conf = agent.path("cni/10-husk-pods.conflist");
    let text = std::fs::read_to_string(&conf).unwrap().replace("\"type\":\"portmap\"", "\"type\":\"flakyportmap\"");
    assert!(text.contains("flakyportmap"), "{text}");
    std::fs::write(&conf, text).unwrap();
    let st = rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner().status.unwrap();
    assert!(network_ready(&st), "{st:?}");
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let again = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let ps = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod[..13].into(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(ps.id, pod, "a unique prefix names the pod");
    assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32);
    let pod_ip = ps.network.unwrap().ip;
    assert!(pod_ip.starts_with("10.88.77."), "{pod_ip}");

    let mut events = rt.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();

    // Two containers; created, not started.
    let create = |config: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let app_script = "echo hello; echo oops >&2; \
        while true; do if [ -f /tmp/go ]; then rm /tmp/go; echo after; fi; sleep 0.05; done";
    let app =
        rt.create_container(create(container("app", app_script, "app/0.log"))).await.unwrap().into_inner().container_id;
    let side = rt
        .create_container(create(container("side", "trap '' TERM; while true; do sleep 0.1; done", "side/0.log")))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let dup = rt.create_container(create(container("app", "true", "x.log"))).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{}", dup.message());
    let escape = rt.create_container(create(container("esc", "true", "../../etc/x.log"))).await.unwrap_err();
    assert_eq!(escape.code(), tonic::Code::InvalidArgument);
    assert!(escape.message().contains("config.log_path"), "{}", escape.message());
    let mut no_image = container("noimg", "true", "n.log");
    no_image.image = Some(cri::ImageSpec { image: "localhost/nothing:1".into(), ..Default::default() });
    let e = rt.create_container(create(no_image)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    assert_eq!(status(&mut rt, &app).await.state, cri::ContainerState::ContainerCreated as i32);
    let mut broken = container("broken", "", "broken.log");
    (broken.command, broken.args) = (vec!["/no/such/program".into()], vec![]);
    let broken = rt.create_container(create(broken)).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: broken.clone() }).await.unwrap_err();
    let s = until_exited(&mut rt, &broken).await;
    assert_eq!((s.reason.as_str(), s.exit_code), ("StartError", 128), "{s:?}");
    assert!(s.message.contains("/no/such/program"), "{}", s.message);

    rt.start_container(cri::StartContainerRequest { container_id: app.clone() }).await.unwrap();
    rt.start_container(cri::StartContainerRequest { container_id: side.clone() }).await.unwrap();
    let again = rt.start_container(cri::StartContainerRequest { container_id: app.clone() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let s = status(&mut rt, &app).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at > 0 && s.created_at > 0);
    let app_log = logs.join("app/0.log");
    assert_eq!(s.log_path, app_log.display().to_string());

    // They share the pod's network, IPC and UTS namespaces; DNS is the pod's.
    let ns = "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts; hostname";
    let a = exec(&mut rt, &app, ns).await;
    let b = exec(&mut rt, &side, ns).await;
    assert_eq!(a.exit_code, 0, "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).ends_with("podhost\n"));
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(!String::from_utf8_lossy(&a.stdout).contains(&*host_net.to_string_lossy()), "the pod's own network");
    let resolv = exec(&mut rt, &app, "cat /etc/resolv.conf").await;
    assert_eq!(
        String::from_utf8_lossy(&resolv.stdout),
        "nameserver 10.10.10.10\nsearch example.com\noptions ndots:8\n"
    );
    assert_eq!(exec(&mut rt, &app, "exit 3").await.exit_code, 3);

    // Capabilities: the default set adjusted (drop ALL, then add KILL: CAP_KILL alone).
    let with_caps = |name: &str, add: &[&str], drop: &[&str]| {
        let mut c = container(name, "sleep 600", &format!("{name}.log"));
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let e = rt.create_container(create(with_caps("badcap", &["FLY"], &[]))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("capabilities.add_capabilities[0]: unknown capability `FLY`"), "{}", e.message());
    let capped =
        rt.create_container(create(with_caps("capped", &["KILL"], &["ALL"]))).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: capped.clone() }).await.unwrap();
    let bnd = exec(&mut rt, &capped, "grep CapBnd /proc/self/status").await;
    assert_eq!(String::from_utf8_lossy(&bnd.stdout), "CapBnd:\t0000000000000020\n");
    rt.remove_container(cri::RemoveContainerRequest { container_id: capped }).await.unwrap();

    // A second pod on the same network: the two reach each other by address.
    let mut db_config = pod_config.clone();
    db_config.metadata.as_mut().unwrap().name = "db".into();
    db_config.hostname = "dbhost".into();
    let db = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(db_config.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let db_ip = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: db.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    assert!(db_ip.starts_with("10.88.77.") && db_ip != pod_ip, "{db_ip} {pod_ip}");
    let ping = exec(&mut rt, &app, &format!("ping -c 1 -W 5 {db_ip}")).await;
    assert_eq!(ping.exit_code, 0, "{}{}", String::from_utf8_lossy(&ping.stdout), String::from_utf8_lossy(&ping.stderr));
    assert_eq!(leased(&agent, "husk-pods").len(), 2);
    // A DEL that fails makes StopPodSandbox fail (the kubelet retries it), until it works.
    std::fs::write(&marker, "").unwrap();
    let e = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: db.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("CNI plugin `flakyportmap` DEL failed (code 11): DEL refused by the test"), "{e:?}");
    let e = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: db.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "still failing: {e:?}");
    std::fs::remove_file(&marker).unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: db.clone() }).await.unwrap();
    let stopped = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: db.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.network.unwrap().ip, "", "a stopped pod has no address");
    assert_eq!(leased(&agent, "husk-pods"), std::slice::from_ref(&pod_ip), "db's address went back");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: db.clone() }).await.unwrap();
    let slow = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: app.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(slow.code(), tonic::Code::DeadlineExceeded, "{}", slow.message());

    // Logs in the CRI format; a rotation (rename + ReopenContainerLog) starts a fresh file.
    let entries = until_logged(&app_log, "hello").await;
    assert!(entries.contains(&("stdout".into(), "F".into(), "hello".into())), "{entries:?}");
    until_logged(&app_log, "oops").await;
    assert!(cri_log(&app_log).contains(&("stderr".into(), "F".into(), "oops".into())));
    std::fs::rename(&app_log, logs.join("app/0.log.1")).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: app.clone() }).await.unwrap();
    exec(&mut rt, &app, "touch /tmp/go").await;
    let fresh = until_logged(&app_log, "after").await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(!cri_log(&logs.join("app/0.log.1")).iter().any(|(_, _, m)| m == "after"));

    // Stats.
    let stats = rt.container_stats(cri::ContainerStatsRequest { container_id: app.clone() }).await.unwrap();
    let stats = stats.into_inner().stats.unwrap();
    assert!(stats.memory.unwrap().usage_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());
    let all = rt.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.stats.len(), 2, "the running ones");
    let pod_stats = rt.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(pod_stats.into_inner().stats.unwrap().linux.unwrap().containers.len(), 2);

    // The same containers through the husk API: the pod and its nested containers.
    let mut husk = agent.client().await;
    let list = husk.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    let mut ids: Vec<String> =
        list.containers.iter().map(|i| husk_oci::validate::display_id(&i.container_id)).collect();
    ids.sort();
    let mut want = vec![pod.clone(), format!("{pod}.{app}"), format!("{pod}.{side}"), format!("{pod}.{broken}")];
    want.sort();
    assert_eq!(ids, want);

    // The OOM killer's victim says so.
    let mut hog = container("hog", "exec tail /dev/zero", "hog/0.log");
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 16 << 20, ..Default::default() }),
        ..Default::default()
    });
    let hog = rt.create_container(create(hog)).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: hog.clone() }).await.unwrap();
    let s = until_exited(&mut rt, &hog).await;
    assert_eq!((s.reason.as_str(), s.exit_code), ("OOMKilled", 137), "{s:?}");

    // Stop: SIGTERM, which the container ignores, then SIGKILL after the grace period.
    let started = std::time::Instant::now();
    rt.stop_container(cri::StopContainerRequest { container_id: side.clone(), timeout: 1 }).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let s = status(&mut rt, &side).await;
    assert_eq!((s.state, s.exit_code, s.reason.as_str()), (cri::ContainerState::ContainerExited as i32, 137, "Error"));
    rt.stop_container(cri::StopContainerRequest { container_id: side.clone(), timeout: 1 }).await.unwrap();
    let running = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [app.as_str()]);

    // The event stream saw them created, started and stopped.
    let mut seen: Vec<(String, i32)> = Vec::new();
    let want_stopped = (side.clone(), cri::ContainerEventType::ContainerStoppedEvent as i32);
    while !seen.contains(&want_stopped) {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message()).await.unwrap().unwrap().unwrap();
        seen.push((e.container_id, e.container_event_type));
    }
    for kind in [cri::ContainerEventType::ContainerCreatedEvent, cri::ContainerEventType::ContainerStartedEvent] {
        assert!(seen.contains(&(side.clone(), kind as i32)), "{seen:?}");
    }

    // A restarted agent knows every pod and container again.
    drop((rt, img, husk));
    agent.kill9();
    agent.restart();
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);
    assert_eq!(status(&mut rt, &app).await.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(status(&mut rt, &hog).await.reason, "OOMKilled");
    assert_eq!(exec(&mut rt, &app, "echo still").await.stdout, b"still\n");

    // Removal: a running container is stopped first; removing twice is fine.
    rt.remove_container(cri::RemoveContainerRequest { container_id: app.clone() }).await.unwrap();
    rt.remove_container(cri::RemoveContainerRequest { container_id: app.clone() }).await.unwrap();
    let e = rt.container_status(cri::ContainerStatusRequest { container_id: app.clone(), verbose: false }).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let pods = rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert!(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());
    assert!(rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .is_empty());
    let mut husk = agent.client().await;
    let list = husk.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    assert!(std::fs::read_dir(agent.path("work/cri/pods")).unwrap().next().is_none());
    assert!(std::fs::read_dir(agent.path("work/cri/containers")).unwrap().next().is_none());
    assert!(std::fs::read_dir(agent.path("work/containers")).unwrap().next().is_none(), "no sandbox left");
    // The kubelet owns the log files: they stay.
    assert!(app_log.exists());
    // The network is left as found: no address leased, no veth, no pinned namespace.
    assert!(leased(&agent, "husk-pods").is_empty());
    assert_eq!(veths(), veths_before);
    assert!(std::fs::read_dir(agent.path("run/netns")).unwrap().next().is_none());
}

/// The veths on the test's bridge (other containers of the host may come and go).
fn veths() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().filter(|l| l.contains("master huskcri0 ")).map(str::to_string).collect()
}

/// The addresses host-local holds for `network` (its files named by IP).
fn leased(agent: &Agent, network: &str) -> Vec<String> {
    let dir = std::fs::read_dir(agent.path("ipam").join(network));
    let names = dir.into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
    names.filter(|n| n.parse::<std::net::IpAddr>().is_ok()).collect()
}

/// The security context and the pod's sysctls: a read-only root, replaced masked paths,
/// oom_score_adj, a Localhost seccomp profile, and the refusals of what husk does not allow.
#[tokio::test]
async fn security_context_through_the_cri() {
    require!(false);
    let agent = Agent::start("cri-security");
    let files = tempfile::tempdir().unwrap();
    busybox_image(&agent, files.path());
    let logs = files.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);

    // On the node's network (no CNI needed), with an IPC namespace of its own for its sysctl.
    let node = cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() };
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "sec".into(),
            uid: "uid-sec".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(node),
                ..Default::default()
            }),
            sysctls: HashMap::from([("kernel.shmmax".into(), "12345678".into())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A net.* sysctl would change the node's network: refused, and nothing is left.
    let mut host_sysctl = pod_config.clone();
    host_sysctl.linux.as_mut().unwrap().sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(host_sysctl), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("net.ipv4.ip_forward"), "{}", e.message());
    assert!(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());

    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |config: cri::ContainerConfig| cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let with_security = |name: &str, script: &str, sc: cri::LinuxContainerSecurityContext, oom: i64| {
        let mut c = container(name, script, &format!("{name}.log"));
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            resources: Some(cri::LinuxContainerResources { oom_score_adj: oom, ..Default::default() }),
        });
        c
    };

    let locked = with_security(
        "locked",
        "echo oom=$(cat /proc/self/oom_score_adj) shm=$(cat /proc/sys/kernel/shmmax) \
         uptime=$(wc -c < /proc/uptime) groups=$(id -G | tr ' ' ,); touch /x 2>/dev/null || echo read-only; \
         exec sleep 1000",
        cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            masked_paths: vec!["/proc/uptime".into()],
            no_new_privs: true,
            supplemental_groups: vec![3000, 44],
            ..Default::default()
        },
        321,
    );
    let locked = rt.create_container(create(locked)).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: locked.clone() }).await.unwrap();
    until_logged(&logs.join("locked.log"), "oom=321 shm=12345678 uptime=0 groups=0,44,3000").await;
    until_logged(&logs.join("locked.log"), "read-only").await;
    // The pod's IPC namespace has the value; the node's is untouched.
    assert_ne!(std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap().trim(), "12345678");

    // A Localhost profile that denies mkdir (the root is writable here).
    let profile = files.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        })
        .to_string(),
    )
    .unwrap();
    let localhost = |path: &str| cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: path.into(),
        }),
        ..Default::default()
    };
    let confined = with_security(
        "confined",
        "mkdir /d 2>/dev/null && echo made || echo denied; touch /f && echo touched; exec sleep 1000",
        localhost(profile.to_str().unwrap()),
        0,
    );
    let confined = rt.create_container(create(confined)).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: confined.clone() }).await.unwrap();
    let lines = until_logged(&logs.join("confined.log"), "touched").await;
    assert!(lines.iter().any(|(_, _, m)| m == "denied"), "{lines:?}");

    // A user other than root keeps an ambient capability across exec, and only that one: an
    // added one without ambient is gone once its shell execs (bits 10 NET_BIND_SERVICE, 13
    // NET_RAW).
    let caps_probe = "echo $(grep -E '^Cap(Amb|Eff)' /proc/self/status | tr -d '\t' | tr '\n' ' '); exec sleep 1000";
    let ambient = cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["NET_RAW".into()],
            add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let amb = rt.create_container(create(with_security("ambient", caps_probe, ambient, 0))).await.unwrap();
    let amb = amb.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: amb.clone() }).await.unwrap();
    until_logged(&logs.join("ambient.log"), "CapEff:0000000000000400 CapAmb:0000000000000400").await;
    let dropped = cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["net_bind_service".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = rt.create_container(create(with_security("amb-drop", "true", dropped, 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "config.linux.security_context.capabilities.add_ambient_capabilities[0]: CAP_NET_BIND_SERVICE is also dropped"
    );

    // Refusals: a relative profile path and an out-of-range oom_score_adj at create; an
    // unconfined container at start (this agent does not allow it); privileged.
    let e = rt.create_container(create(with_security("rel", "true", localhost("p.json"), 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("seccomp.localhost_ref: `p.json` must be an absolute path"), "{}", e.message());
    let bad_group = cri::LinuxContainerSecurityContext { supplemental_groups: vec![-1], ..Default::default() };
    let e = rt.create_container(create(with_security("gid", "true", bad_group, 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("supplemental_groups[0]: -1 is not a group id"), "{}", e.message());
    let e = rt.create_container(create(with_security("oom", "true", Default::default(), 5000))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("oom_score_adj: 5000"), "{}", e.message());

    // AppArmor: a Localhost profile must be loaded on a node that runs AppArmor, and husk has
    // no RuntimeDefault profile; Unconfined runs as the agent does. SELinux labels mean nothing
    // on a node without SELinux and are ignored there (containerd's rule).
    let apparmor = |kind: cri::security_profile::ProfileType, name: &str| cri::LinuxContainerSecurityContext {
        apparmor: Some(cri::SecurityProfile { profile_type: kind as i32, localhost_ref: name.into() }),
        ..Default::default()
    };
    use cri::security_profile::ProfileType;
    let field = "config.linux.security_context";
    let not_here = match husk_oci::lsm::apparmor_enabled() {
        false => "was asked for, but AppArmor is not enabled on this node",
        true => "is not loaded on this node",
    };
    let e = rt
        .create_container(create(with_security("aa", "true", apparmor(ProfileType::Localhost, "husk-test-none"), 0)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with(&format!("{field}.apparmor: ")), "{}", e.message());
    assert!(e.message().contains(&format!("`husk-test-none` {not_here}")), "{}", e.message());
    let old_style = cri::LinuxContainerSecurityContext {
        apparmor_profile: "localhost/husk-test-none".into(),
        ..Default::default()
    };
    let e = rt.create_container(create(with_security("aa", "true", old_style, 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with(&format!("{field}.apparmor_profile: ")), "{}", e.message());
    let e = rt
        .create_container(create(with_security("aa", "true", apparmor(ProfileType::RuntimeDefault, ""), 0)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with(&format!("{field}.apparmor: ")), "{}", e.message());
    let bogus = cri::LinuxContainerSecurityContext { apparmor_profile: "docker-default".into(), ..Default::default() };
    let e = rt.create_container(create(with_security("aa", "true", bogus, 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(
        e.message(),
        format!("{field}.apparmor_profile: `docker-default` is none of runtime/default, unconfined, localhost/<name>")
    );
    let e = rt
        .create_container(create(with_security("aa", "true", apparmor(ProfileType::Unconfined, "mine"), 0)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "config.linux.security_context.apparmor.localhost_ref: only a Localhost profile names one"
        )
    );
    let mut free_to_run = apparmor(ProfileType::Unconfined, "");
    free_to_run.selinux_options = Some(cri::SeLinuxOption {
        user: "system_u".into(),
        role: "system_r".into(),
        r#type: "container_t".into(),
        level: "s0:c1,c2".into(),
    });
    let unconfined_aa = rt.create_container(create(with_security("aa-free", "echo ran", free_to_run, 0))).await;
    if husk_oci::lsm::selinux_enabled() {
        assert_eq!(unconfined_aa.unwrap_err().code(), tonic::Code::FailedPrecondition);
    } else {
        let id = unconfined_aa.unwrap().into_inner().container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        until_logged(&logs.join("aa-free.log"), "ran").await;
        assert_eq!(until_exited(&mut rt, &id).await.exit_code, 0);
    }
    let unconfined = cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let free = rt
        .create_container(create(with_security("free", "true", unconfined, 0)))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let e = rt.start_container(cri::StartContainerRequest { container_id: free.clone() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("--allow-unconfined-seccomp"), "{}", e.message());
    // A container starts from the image it was created from, even when its name has moved to
    // another image since.
    let pinned = rt
        .create_container(create(container("pinned", "cat /marker 2>/dev/null || echo original", "pinned.log")))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let marker = files.path().join("marker");
    std::fs::create_dir_all(&marker).unwrap();
    std::fs::write(marker.join("marker"), "moved\n").unwrap();
    let layout = files.path().join("layout2");
    let config = serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}});
    image::oci_layout(&layout, &[image::tar_of(&files.path().join("rootfs")), image::tar_of(&marker)], config, "1");
    ok(&agent, &["import", layout.to_str().unwrap(), "--name", "localhost/busybox"]);
    rt.start_container(cri::StartContainerRequest { container_id: pinned.clone() }).await.unwrap();
    until_logged(&logs.join("pinned.log"), "original").await;
    let moved = rt
        .create_container(create(container("moved", "cat /marker 2>/dev/null || echo original", "moved.log")))
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: moved.clone() }).await.unwrap();
    until_logged(&logs.join("moved.log"), "moved").await;

    let privileged = cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() };
    let e = rt.create_container(create(with_security("priv", "true", privileged.clone(), 0))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("privileged: the pod sandbox is not privileged"), "{}", e.message());

    // A privileged pod: only when the agent allows it.
    let mut privileged_pod = pod_config.clone();
    privileged_pod.metadata.as_mut().unwrap().name = "privileged".into();
    privileged_pod.linux.as_mut().unwrap().sysctls.clear();
    privileged_pod.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    let run_privileged = cri::RunPodSandboxRequest { config: Some(privileged_pod.clone()), ..Default::default() };
    let e = rt.run_pod_sandbox(run_privileged.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("see husk-agent --allow-privileged"), "{}", e.message());
    let mut agent = agent;
    let config = std::fs::read_to_string(agent.path("agent.toml")).unwrap();
    std::fs::write(agent.path("agent.toml"), format!("{config}allow_privileged = true\n")).unwrap();
    agent.restart();
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);
    let ppod = rt.run_pod_sandbox(run_privileged).await.unwrap().into_inner().pod_sandbox_id;
    // Capabilities and seccomp it asks for are moot: it has every capability, no filter.
    let mut everything = privileged.clone();
    everything.capabilities = Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() });
    let mut c = with_security(
        "priv",
        "echo $(grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d ' \t') \
         devices=$(cat /sys/fs/cgroup/devices/devices.list | tr ' ' _); exec sleep 1000",
        everything,
        0,
    );
    c.log_path = "priv.log".into();
    let pc = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: ppod.clone(),
            config: Some(c),
            sandbox_config: Some(privileged_pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: pc.clone() }).await.unwrap();
    let own_caps = common::own_effective_caps();
    until_logged(&logs.join("priv.log"), &format!("CapEff:{own_caps} Seccomp:0 devices=a_*:*_rwm")).await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: ppod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: ppod }).await.unwrap();

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let mut husk = agent.client().await;
    let list = husk.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    assert!(std::fs::read_dir(agent.path("work/cri/containers")).unwrap().next().is_none());
}

/// The kubelet's pod cgroup (`cgroup_parent`, cgroupfs driver) holds the pod: its holder's
/// cgroup, and below it its containers'. Removing the pod leaves the kubelet's cgroup as it
/// was. A systemd slice is refused naming the field and the driver to use.
#[tokio::test]
async fn the_pods_cgroup_parent_holds_its_cgroups() {
    require!(false);
    let agent = Agent::start("cri-cgparent");
    let owner = common::CgroupRoot::new("cri-cgparent-kubepods");
    let files = tempfile::tempdir().unwrap();
    busybox_image(&agent, files.path());
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);
    let node = cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() };
    let pod_config = |parent: &str| cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "cg".into(),
            uid: "uid-cg".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: files.path().display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(node.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("kubepods-besteffort-poduid_cg.slice")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("config.linux.cgroup_parent: `kubepods-besteffort-poduid_cg.slice` is a systemd slice")
            && e.message().contains("--cgroup-driver=cgroupfs"),
        "{}",
        e.message()
    );
    assert!(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());

    let parent = format!("/{}/kubepods/besteffort/poduid-cg", owner.name);
    let config = pod_config(&parent);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container("app", "exec sleep 1000", "app.log")),
            sandbox_config: Some(config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: created.clone() }).await.unwrap();

    let memory = common::cgroup_mounts().into_iter().find(|h| h.ends_with("memory")).expect("a memory hierarchy");
    let pod_cgroup = memory.join(parent.trim_start_matches('/')).join(&pod);
    let holding = |dir: &Path, comm: &str| {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm))
    };
    assert!(holding(&pod_cgroup, "husk-shim"), "the pod's holder runs in {}", pod_cgroup.display());
    let children: Vec<_> =
        std::fs::read_dir(&pod_cgroup).unwrap().flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect();
    assert!(children.iter().any(|d| holding(d, "sleep")), "the container's cgroup is below the pod's: {children:?}");

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    assert!(!pod_cgroup.exists(), "the pod's cgroups went with it");
    assert!(pod_cgroup.parent().unwrap().is_dir(), "the kubelet's cgroup stays");
}
