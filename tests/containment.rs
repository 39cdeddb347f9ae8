//! Containment: a container with default settings tries to escape (tests/containment/probe.c,
//! built static here) and every attempt must fail: mounts, writes to /proc/sysrq-trigger,
//! /proc/sys, /sys and the cgroup tree, loading a module, opening the host's block device,
//! seeing or signalling a host pid, unshare and the keyring syscalls. A setuid binary gains
//! nothing under no_new_privs, and a sandbox path through a link never leaves the sandbox.
mod common;

#[path = "common/agent.rs"]
mod fixture;
#[path = "common/image.rs"]
mod image;

use fixture::{cid, Agent};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{
    container_info, image as mesos_image, volume, CommandInfo, ContainerId, ContainerInfo, Image, TaskState, Volume,
};
use tonic::transport::Channel;

/// Every attempt the probe makes (it prints one line each).
const ATTEMPTS: &[&str] = &[
    "mount-tmpfs",
    "unmount-proc-mask",
    "remount-proc-sys-rw",
    "write-sysrq-trigger",
    "write-proc-sys",
    "write-sys",
    "mkdir-cgroup",
    "load-module",
    "open-raw-block-device",
    "signal-host-pid",
    "see-host-pid",
    "unshare-user",
    "unshare-mount",
    "keyctl",
    "add-key",
];

fn with_image(id: &str, argv: &[&str], user: Option<&str>) -> pb::LaunchRequest {
    pb::LaunchRequest {
        container_id: cid(id),
        command: Some(CommandInfo {
            shell: Some(false),
            value: Some(argv[0].into()),
            arguments: argv.iter().map(|a| a.to_string()).collect(),
            user: user.map(str::to_string),
            ..Default::default()
        }),
        container: Some(ContainerInfo {
            r#type: container_info::Type::Mesos as i32,
            mesos: Some(container_info::MesosInfo {
                image: Some(Image {
                    r#type: mesos_image::Type::Docker as i32,
                    docker: Some(mesos_image::Docker { name: "localhost/probe:1".into(), ..Default::default() }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn output(c: &mut ContainerizerClient<Channel>, id: &str) -> (pb::ContainerTermination, String) {
    let t = tokio::time::timeout(Duration::from_secs(60), c.wait(pb::WaitRequest { container_id: cid(id) }))
        .await
        .expect("Wait answered in time")
        .unwrap()
        .into_inner();
    let mut s = c.logs(pb::LogsRequest { container_id: cid(id), ..Default::default() }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        out.extend(chunk.data.unwrap_or_default());
    }
    (t, String::from_utf8_lossy(&out).into_owned())
}

/// The first block device of the node (`major:minor`), as /proc/partitions lists it.
fn a_block_device() -> Option<String> {
    let text = std::fs::read_to_string("/proc/partitions").ok()?;
    text.lines().skip(2).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 4).then(|| format!("{}:{}", f[0], f[1]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_container_cannot_escape() {
    require!(false);
    let files = tempfile::tempdir().unwrap();
    let probe = files.path().join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containment/probe.c");
    let built = Command::new("gcc").args(["-static", "-O1", "-o"]).arg(&probe).arg(&src).output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("gcc -static failed (is libc6-dev installed?): {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("gcc: {e} (install gcc and libc6-dev)"),
    }
    // An image: busybox and the probe.
    let root = files.path().join("rootfs");
    common::busybox_rootfs(&root);
    std::fs::copy(&probe, root.join("probe")).unwrap();
    let layout = files.path().join("layout");
    image::oci_layout(&layout, &[image::tar_of(&root)], serde_json::json!({"config": {"Env": ["PATH=/bin"]}}), "1");

    let agent = Agent::start("containment");
    let mut c = agent.client().await;
    c.import_image(pb::ImportImageRequest { path: layout.display().to_string(), name: Some("localhost/probe".into()) })
        .await
        .unwrap();

    // Root in the container, default capabilities, seccomp and namespaces.
    let device = a_block_device().unwrap_or_else(|| "7:0".into());
    let me = std::process::id().to_string();
    c.launch(with_image("probe", &["/probe", &device, &me], None)).await.unwrap();
    let (t, out) = output(&mut c, "probe").await;
    assert_eq!(t.exit_code, Some(0), "{t:?}\n{out}");
    let mut seen = Vec::new();
    for line in out.lines() {
        let mut f = line.splitn(3, ' ');
        let (name, verdict) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        assert_eq!(verdict, "contained", "an escape: {line}\n{out}");
        seen.push(name.to_string());
    }
    assert_eq!(seen, ATTEMPTS, "every attempt ran and reported:\n{out}");
    assert!(!Path::new("/sys/fs/cgroup/memory/husk-escape").exists());

    // no_new_privs: a setuid-root binary run by an unprivileged user stays unprivileged.
    c.launch(with_image(
        "nnp",
        &["/bin/sh", "-c", "while [ ! -e /mnt/mesos/sandbox/go ]; do sleep 0.05; done; grep NoNewPrivs /proc/self/status; /mnt/mesos/sandbox/suid euid"],
        Some("65534"),
    ))
    .await
    .unwrap();
    let sandbox = agent.path("work/containers/nnp/sandbox");
    let suid = sandbox.join("suid");
    std::fs::copy(&probe, &suid).unwrap();
    nix::unistd::chown(&suid, Some(0.into()), Some(0.into())).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(sandbox.join("go"), "").unwrap();
    let (t, out) = output(&mut c, "nnp").await;
    assert_eq!(t.exit_code, Some(0), "{t:?}\n{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("euid 65534"), "the setuid bit gave nothing: {out}");

    // A sandbox path through a link the parent planted resolves inside the parent's sandbox.
    let host_root = pb::LaunchRequest {
        container_id: cid("parent"),
        command: Some(CommandInfo {
            value: Some("ln -s / $MESOS_SANDBOX/root; ln -s /etc $MESOS_SANDBOX/etc-link; exec sleep 1000".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.launch(host_root).await.unwrap();
    let parent_sandbox = agent.path("work/containers/parent/sandbox");
    for _ in 0..500 {
        if parent_sandbox.join("etc-link").symlink_metadata().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (n, path) in ["root/etc", "etc-link", "root/etc-link"].iter().enumerate() {
        let id = format!("n{n}");
        let r = pb::LaunchRequest {
            container_id: ContainerId { value: id.clone(), parent: Some(Box::new(cid("parent"))) },
            command: Some(CommandInfo { value: Some("test ! -e /mnt/passwd".into()), ..Default::default() }),
            container: Some(ContainerInfo {
                r#type: container_info::Type::Mesos as i32,
                volumes: vec![Volume {
                    mode: volume::Mode::Rw as i32,
                    container_path: "/mnt".into(),
                    source: Some(volume::Source {
                        r#type: Some(volume::source::Type::SandboxPath as i32),
                        sandbox_path: Some(volume::source::SandboxPath {
                            r#type: Some(volume::source::sandbox_path::Type::Parent as i32),
                            path: path.to_string(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let launched = c.launch(r).await;
        let nested = ContainerId { value: id.clone(), parent: Some(Box::new(cid("parent"))) };
        if let Err(e) = launched {
            // Refused is contained too; it must name the field.
            assert!(e.message().contains("sandbox_path.path"), "{path}: {e:?}");
            continue;
        }
        let t = c.wait(pb::WaitRequest { container_id: nested }).await.unwrap().into_inner();
        assert_eq!(t.exit_code, Some(0), "{path}: the host's /etc/passwd was reachable through the link: {t:?}");
    }
    assert!(Path::new("/etc/passwd").exists());
    c.kill(pb::KillRequest { container_id: cid("parent"), ..Default::default() }).await.unwrap();
    let t = c.wait(pb::WaitRequest { container_id: cid("parent") }).await.unwrap().into_inner();
    assert_eq!(t.state(), TaskState::TaskKilled);
    for id in ["probe", "nnp", "parent"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
}
