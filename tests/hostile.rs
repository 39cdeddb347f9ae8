//! Hostile requests: a table of malformed and malicious calls to every RPC, each answered with
//! the right status and a message naming the field and the rule, and none changing anything:
//! no container, file or directory appears, a running container is untouched, and the agent
//! goes on serving. (The launch validation table of `tests/agent.rs` adds its own cases.)
mod common;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{cid, launch, Agent};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{
    command_info, container_info, environment, image, linux_info, r_limit_info, tty_info, value, volume,
    CapabilityInfo, CommandInfo, ContainerId, ContainerInfo, DurationInfo, Environment, Image, LinuxInfo, RLimitInfo,
    SeccompInfo, TtyInfo, Volume,
};
use tonic::transport::Channel;
use tonic::Code;

type Call = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

fn with_info(id: &str, f: impl FnOnce(&mut ContainerInfo)) -> pb::LaunchRequest {
    let mut r = launch(id, "true");
    let mut info = ContainerInfo { r#type: container_info::Type::Mesos as i32, ..Default::default() };
    f(&mut info);
    r.container = Some(info);
    r
}

fn sandbox_volume(path: &str, parent: bool) -> Volume {
    use volume::source::sandbox_path::Type;
    Volume {
        mode: volume::Mode::Rw as i32,
        container_path: "/mnt".into(),
        source: Some(volume::Source {
            r#type: Some(volume::source::Type::SandboxPath as i32),
            sandbox_path: Some(volume::source::SandboxPath {
                r#type: Some(if parent { Type::Parent } else { Type::Self_ } as i32),
                path: path.into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exec(id: &str, f: impl FnOnce(&mut pb::ExecProcess)) -> pb::ExecSyncRequest {
    let mut p = pb::ExecProcess {
        container_id: cid(id),
        command: CommandInfo { value: Some("true".into()), ..Default::default() },
        ..Default::default()
    };
    f(&mut p);
    pb::ExecSyncRequest { process: p, ..Default::default() }
}

fn var(name: &str, value: &str) -> environment::Variable {
    environment::Variable { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// What the agent has: its containers' ids and states, and the files under its work dir.
async fn snapshot(agent: &Agent, c: &mut ContainerizerClient<Channel>) -> (Vec<String>, Vec<String>) {
    let mut containers: Vec<String> = c
        .list(pb::ListRequest { show_nested: Some(true), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .containers
        .iter()
        .map(|i| format!("{}:{:?}:{:?}", i.container_id.value, i.state(), i.termination.as_ref().map(|t| t.state())))
        .collect();
    containers.sort();
    let mut files = Vec::new();
    let mut stack = vec![agent.path("work/containers"), agent.path("run/shims")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            // The running witness's output grows, and the GC may touch nothing else.
            if p.ends_with("stdout") || p.ends_with("stderr") || p.to_string_lossy().contains("/stdout.") {
                continue;
            }
            files.push(p.display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) && !p.ends_with("rootfs") {
                stack.push(p);
            }
        }
    }
    files.sort();
    (containers, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_precisely_and_change_nothing() {
    require!(false);
    let agent = Agent::start("hostile");
    let mut c = agent.client().await;
    // Witnesses: a running container and a terminated one.
    c.launch(launch("w", "exec sleep 1000")).await.unwrap();
    c.launch(launch("done", "exit 0")).await.unwrap();
    c.wait(pb::WaitRequest { container_id: cid("done") }).await.unwrap();
    let w_pid =
        c.status(pb::StatusRequest { container_id: cid("w") }).await.unwrap().into_inner().status.unwrap().executor_pid;
    let before = snapshot(&agent, &mut c).await;

    let inv = Code::InvalidArgument;
    let huge = "x".repeat(10 << 20);
    let big = "y".repeat((1 << 20) + 1);
    let nested = |child: &str, parent: ContainerId| ContainerId { value: child.into(), parent: Some(Box::new(parent)) };
    let mut deep = cid("w");
    for i in 0..17 {
        deep = nested(&format!("d{i}"), deep);
    }

    let l = |r: pb::LaunchRequest| -> Call {
        let mut c = c.clone();
        Box::pin(async move { c.launch(r).await.map(drop) })
    };
    let x = |r: pb::ExecSyncRequest| -> Call {
        let mut c = c.clone();
        Box::pin(async move { c.exec_sync(r).await.map(drop) })
    };
    let kill = |id: &str, signal: Option<i32>, grace: Option<i64>| -> Call {
        let mut c = c.clone();
        let r = pb::KillRequest {
            container_id: cid(id),
            signal,
            grace_period: grace.map(|n| DurationInfo { nanoseconds: n }),
        };
        Box::pin(async move { c.kill(r).await.map(drop) })
    };
    let update = |id: &str, f: &dyn Fn(&mut pb::UpdateRequest)| -> Call {
        let mut c = c.clone();
        let mut r = pb::UpdateRequest { container_id: cid(id), ..Default::default() };
        f(&mut r);
        Box::pin(async move { c.update(r).await.map(drop) })
    };
    let launch_cmd = |id: &str, f: &dyn Fn(&mut CommandInfo)| -> Call {
        let mut r = launch(id, "true");
        f(r.command.as_mut().unwrap());
        l(r)
    };

    let mut cases: Vec<(&str, Call, Code, &str)> = vec![
        // Ids, in every RPC that takes one.
        ("id -rf", l(launch("-rf", "true")), inv, "starts with `-`"),
        ("id --help", l(launch("--help", "true")), inv, "starts with `-`"),
        ("id 10 MB", l(launch(&huge, "true")), Code::OutOfRange, ""),
        ("id 1 MB", l(launch(&big[..1 << 20], "true")), inv, "at most 242"),
        ("id ..", l(launch("..", "true")), inv, "contains `.`"),
        ("id /etc", l(launch("/etc", "true")), inv, "contains `/`"),
        ("id NUL", l(launch("a\0b", "true")), inv, "control character"),
        ("id newline", l(launch("a\nb", "true")), inv, "control character"),
        ("id DEL", l(launch("\u{7f}", "true")), inv, "control character"),
        ("id 17 deep", l(pb::LaunchRequest { container_id: deep, ..launch("x", "true") }), inv, "nest at most 16"),
        (
            "wait ../w",
            {
                let mut c = c.clone();
                Box::pin(async move { c.wait(pb::WaitRequest { container_id: cid("../w") }).await.map(drop) })
            },
            inv,
            "container_id.value",
        ),
        (
            "status empty id",
            {
                let mut c = c.clone();
                Box::pin(async move { c.status(pb::StatusRequest { container_id: cid("") }).await.map(drop) })
            },
            inv,
            "container_id.value: must not be empty",
        ),
        (
            "remove w/x",
            {
                let mut c = c.clone();
                Box::pin(async move { c.remove(pb::RemoveRequest { container_id: cid("w/x") }).await.map(drop) })
            },
            inv,
            "contains `/`",
        ),
        (
            "usage unknown",
            {
                let mut c = c.clone();
                Box::pin(async move { c.usage(pb::UsageRequest { container_id: cid("nope") }).await.map(drop) })
            },
            Code::NotFound,
            "container_id: no container `nope`",
        ),
        (
            "logs ..",
            {
                let mut c = c.clone();
                Box::pin(async move {
                    c.logs(pb::LogsRequest { container_id: cid(".."), ..Default::default() }).await.map(drop)
                })
            },
            inv,
            "contains `.`",
        ),
        // Commands.
        (
            "command 1 MB + 1",
            launch_cmd("big", &|c| c.value = Some(big.clone())),
            inv,
            "command.value: is 1048577 bytes long",
        ),
        (
            "argument NUL",
            launch_cmd("argnul", &|c| {
                c.shell = Some(false);
                c.value = Some("/bin/true".into());
                c.arguments = vec!["true".into(), "a\0b".into()];
            }),
            inv,
            "command.arguments[1]: must not contain a NUL byte",
        ),
        (
            "20k arguments",
            launch_cmd("args", &|c| {
                c.shell = Some(false);
                c.value = Some("/bin/true".into());
                c.arguments = vec!["a".into(); 20_000];
            }),
            inv,
            "command.arguments",
        ),
        (
            "20k variables",
            launch_cmd("vars", &|c| {
                c.environment =
                    Some(Environment { variables: (0..20_000).map(|i| var(&format!("V{i}"), "x")).collect() })
            }),
            inv,
            "command.environment.variables",
        ),
        (
            "variable without name",
            launch_cmd("noname", &|c| c.environment = Some(Environment { variables: vec![var("", "x")] })),
            inv,
            "command.environment.variables[0].name: must not be empty",
        ),
        (
            "secret variable",
            launch_cmd("secret", &|c| {
                let mut v = var("S", "");
                v.r#type = Some(environment::variable::Type::Secret as i32);
                v.value = None;
                c.environment = Some(Environment { variables: vec![v] })
            }),
            inv,
            "variables[0].type: SECRET (no secret resolver is configured) is not supported",
        ),
        (
            "user ../root",
            launch_cmd("userdots", &|c| c.user = Some("../root".into())),
            inv,
            "command.user: `../root` has",
        ),
        ("user NUL", launch_cmd("usernul", &|c| c.user = Some("root\0".into())), inv, "command.user"),
        (
            "uri NUL",
            launch_cmd("urinul", &|c| {
                c.uris = vec![command_info::Uri { value: "/tmp/a\0b".into(), ..Default::default() }]
            }),
            inv,
            "command.uris[0].value: must not contain a NUL byte",
        ),
        (
            "uri output /etc",
            launch_cmd("uriabs", &|c| {
                c.uris = vec![command_info::Uri {
                    value: "http://127.0.0.1/x".into(),
                    output_file: Some("/etc/cron.d/x".into()),
                    ..Default::default()
                }]
            }),
            inv,
            "command.uris[0].output_file",
        ),
        // Resources.
        (
            "mem NaN",
            l(pb::LaunchRequest {
                resources: vec![husk_oci::resources::scalar("mem", f64::NAN)],
                ..launch("nan", "true")
            }),
            inv,
            "resources[0] (mem)",
        ),
        (
            "disk negative",
            l(pb::LaunchRequest {
                resources: vec![husk_oci::resources::scalar("disk", -5.0)],
                ..launch("disk", "true")
            }),
            inv,
            "must not be negative",
        ),
        (
            "cpus 1e308",
            l(pb::LaunchRequest {
                resources: vec![husk_oci::resources::scalar("cpus", 1e308)],
                ..launch("cpus", "true")
            }),
            inv,
            "above the largest accepted value",
        ),
        (
            "limit -inf",
            l(pb::LaunchRequest {
                limits: HashMap::from([("cpus".into(), value::Scalar { value: f64::NEG_INFINITY })]),
                ..launch("neginf", "true")
            }),
            inv,
            "limits[\"cpus\"]",
        ),
        // Volumes and paths.
        (
            "sandbox volume ../..",
            l(with_info("sbdots", |i| i.volumes = vec![sandbox_volume("../../etc", false)])),
            inv,
            "must not contain `..`",
        ),
        (
            "sandbox volume /etc",
            l(with_info("sbabs", |i| i.volumes = vec![sandbox_volume("/etc", false)])),
            inv,
            "must be relative to the sandbox",
        ),
        (
            "PARENT without parent",
            l(with_info("sbparent", |i| i.volumes = vec![sandbox_volume("x", true)])),
            inv,
            "PARENT needs a nested container",
        ),
        (
            "volume onto /proc",
            l(with_info("proc", |i| {
                let mut v = sandbox_volume("data", false);
                v.container_path = "/proc".into();
                i.volumes = vec![v]
            })),
            inv,
            "container_path",
        ),
        (
            "volume relative host path",
            l(with_info("hostrel", |i| {
                let mut v = sandbox_volume("x", false);
                v.source = Some(volume::Source {
                    r#type: Some(volume::source::Type::HostPath as i32),
                    host_path: Some(volume::source::HostPath { path: "etc".into(), mount_propagation: None }),
                    ..Default::default()
                });
                i.volumes = vec![v]
            })),
            inv,
            "must be an absolute path",
        ),
        (
            "docker volume",
            l(with_info("dockervol", |i| {
                let mut v = sandbox_volume("x", false);
                v.source = Some(volume::Source {
                    r#type: Some(volume::source::Type::DockerVolume as i32),
                    ..Default::default()
                });
                i.volumes = vec![v]
            })),
            inv,
            "DOCKER_VOLUME",
        ),
        // Linux settings.
        (
            "seccomp profile ../",
            l(with_info("seccomp", |i| {
                i.linux_info = Some(LinuxInfo {
                    seccomp: Some(SeccompInfo { unconfined: None, profile_name: Some("../../etc/passwd".into()) }),
                    ..Default::default()
                })
            })),
            inv,
            "container.linux_info.seccomp.profile_name",
        ),
        (
            "rlimit type 999",
            l(with_info("rl", |i| {
                i.rlimit_info = Some(RLimitInfo {
                    rlimits: vec![r_limit_info::RLimit { r#type: Some(999), soft: Some(1), hard: Some(1) }],
                })
            })),
            inv,
            "rlimits[0].type",
        ),
        (
            "rlimit twice",
            l(with_info("rl2", |i| {
                let r = r_limit_info::RLimit {
                    r#type: Some(r_limit_info::r_limit::Type::RlmtNofile as i32),
                    soft: Some(10),
                    hard: Some(10),
                };
                i.rlimit_info = Some(RLimitInfo { rlimits: vec![r, r] })
            })),
            inv,
            "more than once",
        ),
        ("hostname 100 chars", l(with_info("hn", |i| i.hostname = Some("h".repeat(100)))), inv, "container.hostname"),
        (
            "container type 99",
            l(pb::LaunchRequest {
                container: Some(ContainerInfo { r#type: 99, ..Default::default() }),
                ..launch("ty", "true")
            }),
            inv,
            "unknown container type 99",
        ),
        (
            "capability 999",
            l(with_info("cap", |i| {
                i.linux_info = Some(LinuxInfo {
                    bounding_capabilities: Some(CapabilityInfo { capabilities: vec![999] }),
                    ..Default::default()
                })
            })),
            inv,
            "capability",
        ),
        (
            "ipc mode 42",
            l(with_info("ipc", |i| i.linux_info = Some(LinuxInfo { ipc_mode: Some(42), ..Default::default() }))),
            inv,
            "ipc_mode",
        ),
        (
            "tty 0 columns",
            l(with_info("tty", |i| {
                i.tty_info = Some(TtyInfo { window_size: Some(tty_info::WindowSize { rows: 10, columns: 1 << 20 }) })
            })),
            inv,
            "16 bits",
        ),
        // Images.
        (
            "image bad reference",
            l(with_info("img", |i| {
                i.mesos = Some(container_info::MesosInfo {
                    image: Some(Image {
                        r#type: image::Type::Docker as i32,
                        docker: Some(image::Docker { name: "UP//x".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                })
            })),
            inv,
            "container.mesos.image",
        ),
        (
            "image bad digest",
            l(with_info("imgdig", |i| {
                i.mesos = Some(container_info::MesosInfo {
                    image: Some(Image {
                        r#type: image::Type::Docker as i32,
                        docker: Some(image::Docker { name: "busybox@sha256:zz".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                })
            })),
            inv,
            "container.mesos.image",
        ),
        (
            "import relative path",
            {
                let mut c = c.clone();
                Box::pin(async move {
                    c.import_image(pb::ImportImageRequest { path: "../../etc/shadow".into(), name: None })
                        .await
                        .map(drop)
                })
            },
            inv,
            "path",
        ),
        (
            "import /etc/shadow",
            {
                let mut c = c.clone();
                Box::pin(async move {
                    c.import_image(pb::ImportImageRequest { path: "/etc/shadow".into(), name: Some("x".into()) })
                        .await
                        .map(drop)
                })
            },
            Code::FailedPrecondition,
            "/etc/shadow is not an image archive: not a tar file",
        ),
        (
            "pull NUL",
            {
                let mut c = c.clone();
                Box::pin(async move { c.pull_image(pb::PullImageRequest { name: "a\0b".into() }).await.map(drop) })
            },
            inv,
            "name",
        ),
        (
            "remove image unknown",
            {
                let mut c = c.clone();
                Box::pin(async move {
                    c.remove_image(pb::RemoveImageRequest { name: "nosuch/image:v9".into(), force: None })
                        .await
                        .map(drop)
                })
            },
            Code::NotFound,
            "nosuch/image:v9",
        ),
        // Kill, Update, Remove of a live container.
        ("signal 0", kill("w", Some(0), None), inv, "signal: 0 is not a signal"),
        ("signal 65", kill("w", Some(65), None), inv, "signal: 65 is not a signal"),
        ("signal -9", kill("w", Some(-9), None), inv, "signal: -9 is not a signal"),
        ("grace -1", kill("w", None, Some(-1)), inv, "grace_period.nanoseconds: must not be negative"),
        ("kill terminated", kill("done", None, None), Code::FailedPrecondition, "has already terminated"),
        (
            "update cpus -1",
            update("w", &|r| r.resources = vec![husk_oci::resources::scalar("cpus", -1.0)]),
            inv,
            "resources[0] (cpus)",
        ),
        (
            "update mem NaN",
            update("w", &|r| r.limits = HashMap::from([("mem".into(), value::Scalar { value: f64::NAN })])),
            inv,
            "limits[\"mem\"]",
        ),
        (
            "update terminated",
            update("done", &|r| r.resources = vec![husk_oci::resources::scalar("cpus", 1.0)]),
            Code::FailedPrecondition,
            "done",
        ),
        (
            "remove running",
            {
                let mut c = c.clone();
                Box::pin(async move { c.remove(pb::RemoveRequest { container_id: cid("w") }).await.map(drop) })
            },
            Code::FailedPrecondition,
            "only a terminated container can be removed",
        ),
        // Exec.
        ("exec unknown", x(exec("nope", |_| {})), Code::NotFound, "no container `nope`"),
        ("exec terminated", x(exec("done", |_| {})), Code::FailedPrecondition, "done"),
        (
            "exec no user",
            x(exec("w", |p| p.command.user = Some("nosuchuser-husk".into()))),
            Code::FailedPrecondition,
            "nosuchuser-husk",
        ),
        ("exec relative cwd", x(exec("w", |p| p.working_dir = Some("tmp".into()))), inv, "working_dir"),
        ("exec cwd NUL", x(exec("w", |p| p.working_dir = Some("/tmp\0".into()))), inv, "working_dir"),
        (
            "exec SYS_ADMIN",
            x(exec("w", |p| p.capabilities = Some(CapabilityInfo { capabilities: vec![21] }))),
            inv,
            "capabilities",
        ),
        (
            "exec no value",
            x(exec("w", |p| {
                p.command.shell = Some(false);
                p.command.value = None;
            })),
            inv,
            "command.value",
        ),
        (
            "exec env =",
            x(exec("w", |p| p.command.environment = Some(Environment { variables: vec![var("A=B", "1")] }))),
            inv,
            "must not contain `=`",
        ),
        (
            "exec timeout -1",
            x(pb::ExecSyncRequest { timeout: Some(DurationInfo { nanoseconds: -1 }), ..exec("w", |_| {}) }),
            inv,
            "timeout",
        ),
        (
            "exec tty 70000 rows",
            x(exec("w", |p| {
                p.tty = Some(true);
                p.window_size = Some(tty_info::WindowSize { rows: 70000, columns: 80 });
            })),
            inv,
            "process.tty: ExecSync collects output",
        ),
        (
            "exec 10 MB stdin",
            x(pb::ExecSyncRequest { stdin: Some(huge.clone().into_bytes()), ..exec("w", |_| {}) }),
            Code::OutOfRange,
            "",
        ),
        (
            "launch session field",
            l(pb::LaunchRequest { session: Some(true), ..launch("sess", "true") }),
            inv,
            "session",
        ),
        (
            "ipc share without parent",
            l(with_info("ipcshare", |i| {
                i.linux_info =
                    Some(LinuxInfo { ipc_mode: Some(linux_info::IpcMode::ShareParent as i32), ..Default::default() })
            })),
            inv,
            "--allow-host-ipc-namespace",
        ),
    ];
    assert!(cases.len() >= 50, "a table of at least 50 hostile requests ({})", cases.len());
    eprintln!("trying {} hostile requests", cases.len());
    let mut failures = Vec::new();
    for (name, call, code, text) in cases.drain(..) {
        match tokio::time::timeout(Duration::from_secs(60), call).await {
            Err(_) => failures.push(format!("{name}: no answer within 60 s")),
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) => {
                // An oversized message is refused by the transport before the agent sees it.
                let code_ok = e.code() == code || (code == Code::OutOfRange && e.code() == Code::ResourceExhausted);
                if !code_ok || !e.message().contains(text) {
                    failures.push(format!("{name}: got {:?} {:?}, want {code:?} with {text:?}", e.code(), e.message()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} hostile requests were mishandled:\n{}", failures.len(), failures.join("\n"));

    // Nothing changed, the witness still runs as the same process, the agent still serves.
    assert_eq!(snapshot(&agent, &mut c).await, before, "a refused request changed the agent's state");
    let st = c.status(pb::StatusRequest { container_id: cid("w") }).await.unwrap().into_inner();
    assert_eq!(st.status.unwrap().executor_pid, w_pid);
    let out = c.exec_sync(exec("w", |p| p.command.value = Some("echo still here".into()))).await.unwrap().into_inner();
    assert_eq!(out.stdout(), b"still here\n");
    c.kill(pb::KillRequest { container_id: cid("w"), ..Default::default() }).await.unwrap();
    c.wait(pb::WaitRequest { container_id: cid("w") }).await.unwrap();
    for id in ["w", "done"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
}
