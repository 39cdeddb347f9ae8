//! Exec, ExecSync and Attach end to end: a real agent, real shims, processes joined into real
//! containers.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use std::time::Duration;

use fixture::{cid, launch, Agent};
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;
use husk_proto::mesos::v1::{container_info, tty_info, CommandInfo, ContainerInfo, DurationInfo, TtyInfo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

type Client = ContainerizerClient<Channel>;

/// No call in these tests may take this long: a hang fails the test instead of CI.
const HANG: Duration = Duration::from_secs(60);

fn process(id: &str, argv: &[&str]) -> pb::ExecProcess {
    pb::ExecProcess {
        container_id: cid(id),
        command: CommandInfo {
            shell: Some(false),
            value: Some(argv[0].into()),
            arguments: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn sync(
    c: &mut Client,
    p: pb::ExecProcess,
    stdin: Option<&str>,
    timeout: Option<Duration>,
) -> pb::ExecSyncResponse {
    let req = pb::ExecSyncRequest {
        process: p,
        timeout: timeout.map(|d| DurationInfo { nanoseconds: d.as_nanos() as i64 }),
        stdin: stdin.map(|s| s.as_bytes().to_vec()),
    };
    tokio::time::timeout(HANG, c.exec_sync(req)).await.expect("ExecSync hung").unwrap().into_inner()
}

fn text(b: &Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()
}

/// An Exec stream: its input and its responses.
struct Session {
    tx: mpsc::Sender<pb::ExecRequest>,
    rx: tonic::Streaming<pb::ExecResponse>,
    pid: u32,
}

impl Session {
    async fn start(c: &mut Client, p: pb::ExecProcess) -> Result<Session, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ExecRequest { request: Some(pb::exec_request::Request::Start(p)) }).await.unwrap();
        let mut rx =
            tokio::time::timeout(HANG, c.exec(ReceiverStream::new(rx))).await.expect("Exec hung")?.into_inner();
        let first = rx.message().await?.expect("a first answer");
        let Some(pb::exec_response::Response::Pid(pid)) = first.response else { panic!("first answer: {first:?}") };
        Ok(Session { tx, rx, pid })
    }

    async fn send(&self, r: pb::exec_request::Request) {
        self.tx.send(pb::ExecRequest { request: Some(r) }).await.unwrap();
    }

    /// Output until the exit.
    async fn finish(mut self) -> (String, pb::ExecExit) {
        let mut out = Vec::new();
        loop {
            let m = tokio::time::timeout(HANG, self.rx.message()).await.expect("exec output hung").unwrap();
            match m.and_then(|m| m.response) {
                Some(pb::exec_response::Response::Stdout(d)) | Some(pb::exec_response::Response::Stderr(d)) => {
                    out.extend(d)
                }
                Some(pb::exec_response::Response::Exit(e)) => return (String::from_utf8_lossy(&out).into_owned(), e),
                Some(pb::exec_response::Response::Pid(_)) => {}
                None => panic!("the stream ended without an exit"),
            }
        }
    }
}

fn zombies_under(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        if fields.first() == Some(&"Z") && fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test]
async fn exec_joins_the_container_and_returns_the_status() {
    require!(false);
    let agent = Agent::start("exec-join");
    let mut c = agent.client().await;
    let mut req = launch("box", "echo made-by-init > $MESOS_SANDBOX/mark; exec sleep 600");
    req.container = Some(ContainerInfo {
        r#type: container_info::Type::Mesos as i32,
        hostname: Some("boxhost".into()),
        ..Default::default()
    });
    req.resources = husk_oci::resources::parse("cpus:0.5;mem:64", "resources").unwrap();
    c.launch(req).await.unwrap();
    let status = c.status(pb::StatusRequest { container_id: cid("box") }).await.unwrap().into_inner();
    let init = status.status.unwrap().executor_pid.unwrap();

    // Its hostname, its pid namespace (few pids, pid 1 is the container's), its sandbox, its
    // memory limit (through its own cgroup view).
    let r = sync(
        &mut c,
        process(
            "box",
            &[
                "sh",
                "-c",
                "hostname; ls /proc | grep -c '^[0-9]'; cat $MESOS_SANDBOX/mark; \
                 cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
        ),
        None,
        None,
    )
    .await;
    assert_eq!(r.exit.as_ref().unwrap().exit_code, Some(0), "{}", text(&r.stderr));
    let lines: Vec<String> = text(&r.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "boxhost");
    assert!(lines[1].parse::<u32>().unwrap() < 10, "the exec sees the container's pids only: {lines:?}");
    assert_eq!(lines[2], "made-by-init");
    assert_eq!(lines[3], (64u64 << 20).to_string());

    // The process is in the container's namespaces and cgroups, as the node sees it.
    let s = Session::start(&mut c, process("box", &["sleep", "100"])).await.unwrap();
    let ns = |pid: u32, t: &str| std::fs::read_link(format!("/proc/{pid}/ns/{t}")).unwrap();
    for t in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
        assert_eq!(ns(s.pid, t), ns(init, t), "{t} namespace");
    }
    let cgroups = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(cgroups(s.pid), cgroups(init));
    s.send(pb::exec_request::Request::Signal(libc::SIGTERM)).await;
    let (_, exit) = s.finish().await;
    assert_eq!(exit.signal, Some(libc::SIGTERM));

    // Exit codes, signals, users, environment, working directory.
    let r = sync(&mut c, process("box", &["sh", "-c", "echo out; echo err >&2; exit 7"]), None, None).await;
    assert_eq!(
        (text(&r.stdout), text(&r.stderr), r.exit.unwrap().exit_code),
        ("out\n".into(), "err\n".into(), Some(7))
    );
    let r = sync(&mut c, process("box", &["sh", "-c", "kill -9 $$"]), None, None).await;
    assert_eq!((r.exit.as_ref().unwrap().signal, r.exit.as_ref().unwrap().exit_code), (Some(9), None));
    let mut p = process("box", &["sh", "-c", "id -u; echo $GREETING; pwd"]);
    p.command.user = Some("nobody".into());
    p.command.environment = Some(husk_proto::mesos::v1::Environment {
        variables: vec![husk_proto::mesos::v1::environment::Variable {
            name: "GREETING".into(),
            value: Some("hi".into()),
            ..Default::default()
        }],
    });
    p.working_dir = Some("/tmp".into());
    let r = sync(&mut c, p, None, None).await;
    assert_eq!(text(&r.stdout), "65534\nhi\n/tmp\n", "{}", text(&r.stderr));

    // Stdin, through ExecSync and through the stream.
    let r = sync(&mut c, process("box", &["cat"]), Some("piped\n"), None).await;
    assert_eq!(text(&r.stdout), "piped\n");
    let mut p = process("box", &["sh", "-c", "read a; read b; echo $b $a"]);
    p.stdin = Some(true);
    let s = Session::start(&mut c, p).await.unwrap();
    s.send(pb::exec_request::Request::Stdin(b"one\n".to_vec())).await;
    s.send(pb::exec_request::Request::Stdin(b"two\n".to_vec())).await;
    s.send(pb::exec_request::Request::CloseStdin(true)).await;
    assert_eq!(s.finish().await.0, "two one\n");

    // Failures before the exec are the runtime's own words; nothing is left running.
    let e = c
        .exec_sync(pb::ExecSyncRequest { process: process("box", &["no-such-program"]), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("exec no-such-program: executable file not found in $PATH"), "{}", e.message());

    c.kill(pb::KillRequest { container_id: cid("box"), ..Default::default() }).await.unwrap();
    c.wait(pb::WaitRequest { container_id: cid("box") }).await.unwrap();
    let e = c
        .exec_sync(pb::ExecSyncRequest { process: process("box", &["true"]), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("`box` is TERMINATED, not RUNNING"), "{}", e.message());
    c.remove(pb::RemoveRequest { container_id: cid("box") }).await.unwrap();
}

#[tokio::test]
async fn terminals_timeouts_dropped_clients_and_zombies() {
    require!(false);
    let agent = Agent::start("exec-tty");
    let mut c = agent.client().await;
    c.launch(launch("t", "exec sleep 600")).await.unwrap();

    // A terminal of the asked size, resized while the process runs.
    let mut p = process("t", &["sh", "-c", "stty size; read x; stty size"]);
    p.tty = Some(true);
    p.stdin = Some(true);
    p.window_size = Some(tty_info::WindowSize { rows: 33, columns: 77 });
    let s = Session::start(&mut c, p).await.unwrap();
    s.send(pb::exec_request::Request::Resize(tty_info::WindowSize { rows: 40, columns: 100 })).await;
    s.send(pb::exec_request::Request::Stdin(b"\n".to_vec())).await;
    let (out, exit) = s.finish().await;
    assert_eq!(exit.exit_code, Some(0));
    let sizes: Vec<&str> = out.lines().map(str::trim).filter(|l| l.contains(' ')).collect();
    assert_eq!(sizes, ["33 77", "40 100"], "{out:?}");

    // The timeout kills the process group; a child that left the group and holds stdout does
    // not hold the call past the drain.
    let r = sync(
        &mut c,
        process("t", &["sh", "-c", "setsid sleep 600 & echo started; exec sleep 600"]),
        None,
        Some(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(r.timed_out, Some(true));
    assert_eq!(r.exit.as_ref().and_then(|e| e.signal), Some(libc::SIGKILL));
    assert_eq!(text(&r.stdout), "started\n");

    // A client that goes away takes its process with it.
    let s = Session::start(&mut c, process("t", &["sleep", "600"])).await.unwrap();
    let pid = s.pid;
    assert!(alive(pid));
    drop(s);
    let deadline = std::time::Instant::now() + HANG;
    while alive(pid) {
        assert!(std::time::Instant::now() < deadline, "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Many execs, some leaving orphans behind: every one is reaped.
    for i in 0..40 {
        let script = if i % 2 == 0 { "sleep 0.05 & true" } else { "true" };
        let r = sync(&mut c, process("t", &["sh", "-c", script]), None, None).await;
        assert_eq!(r.exit.unwrap().exit_code, Some(0));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = husk_shim::shim::ProcessId::load(&agent.path("run/shims/t/shim.json")).unwrap();
    let status = c.status(pb::StatusRequest { container_id: cid("t") }).await.unwrap().into_inner();
    let init = status.status.unwrap().executor_pid.unwrap() as i32;
    assert_eq!(zombies_under(state.pid), Vec::<i32>::new(), "zombies of the shim");
    assert_eq!(zombies_under(init), Vec::<i32>::new(), "zombies of the container's init");

    // Bad requests.
    let e = c
        .exec_sync(pb::ExecSyncRequest { process: process("nope", &["true"]), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut bad = process("t", &["true"]);
    bad.command.user = Some("no-such-user".into());
    let e = c.exec_sync(pb::ExecSyncRequest { process: bad, ..Default::default() }).await.unwrap_err();
    assert!(e.message().starts_with("process.command.user: no user `no-such-user`"), "{}", e.message());
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::ExecRequest { request: Some(pb::exec_request::Request::Stdin(b"x".to_vec())) }).await.unwrap();
    let e = c.exec(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("the first message of an exec must be `start`"), "{}", e.message());

    c.kill(pb::KillRequest { container_id: cid("t"), ..Default::default() }).await.unwrap();
    c.wait(pb::WaitRequest { container_id: cid("t") }).await.unwrap();
    c.remove(pb::RemoveRequest { container_id: cid("t") }).await.unwrap();
    assert!(!agent.path("run/shims/t").exists());
}

async fn attach(
    c: &mut Client,
    id: &str,
    input: bool,
) -> (mpsc::Sender<pb::AttachRequest>, tonic::Streaming<pb::LogChunk>) {
    let (tx, rx) = mpsc::channel(16);
    let start = pb::AttachStart { container_id: cid(id), input: Some(input), stream: None };
    tx.send(pb::AttachRequest { request: Some(pb::attach_request::Request::Start(start)) }).await.unwrap();
    let out = tokio::time::timeout(HANG, c.attach(ReceiverStream::new(rx))).await.unwrap().unwrap().into_inner();
    (tx, out)
}

async fn read_until(out: &mut tonic::Streaming<pb::LogChunk>, want: &str) -> String {
    let mut all = String::new();
    while !all.contains(want) {
        let chunk = tokio::time::timeout(HANG, out.message()).await.expect("attach output hung").unwrap();
        match chunk {
            Some(chunk) => all.push_str(&String::from_utf8_lossy(&chunk.data.unwrap_or_default())),
            None => panic!("the output ended before {want:?}: {all:?}"),
        }
    }
    all
}

#[tokio::test]
async fn attach_follows_output_and_feeds_a_terminal_or_stdin() {
    require!(false);
    let agent = Agent::start("attach");
    let mut c = agent.client().await;

    // Open stdin, no terminal: lines go in, the output comes back live, closing stdin ends it.
    let mut req = launch("cat", "while read l; do echo got $l; done; echo bye");
    req.stdin = Some(true);
    c.launch(req).await.unwrap();
    let (tx, mut out) = attach(&mut c, "cat", true).await;
    // One client at a time.
    let (tx2, rx2) = mpsc::channel(1);
    let start = pb::AttachStart { container_id: cid("cat"), input: Some(true), stream: None };
    tx2.send(pb::AttachRequest { request: Some(pb::attach_request::Request::Start(start)) }).await.unwrap();
    let e = c.attach(ReceiverStream::new(rx2)).await.unwrap_err();
    assert!(e.message().contains("another client is attached"), "{}", e.message());
    tx.send(pb::AttachRequest { request: Some(pb::attach_request::Request::Stdin(b"one\n".to_vec())) }).await.unwrap();
    read_until(&mut out, "got one\n").await;
    tx.send(pb::AttachRequest { request: Some(pb::attach_request::Request::CloseStdin(true)) }).await.unwrap();
    read_until(&mut out, "bye\n").await;
    let t = c.wait(pb::WaitRequest { container_id: cid("cat") }).await.unwrap().into_inner();
    assert_eq!(t.exit_code, Some(0));

    // A terminal: input and window size reach the container's own terminal.
    let mut req = launch("tty", "stty size; read l; echo got $l; stty size; exec sleep 600");
    req.container = Some(ContainerInfo {
        r#type: container_info::Type::Mesos as i32,
        tty_info: Some(TtyInfo { window_size: Some(tty_info::WindowSize { rows: 20, columns: 60 }) }),
        ..Default::default()
    });
    c.launch(req).await.unwrap();
    // The launch's size first: the resize below must not overtake the shell's first `stty`.
    let stdout = agent.path("work/containers/tty/sandbox/stdout");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&stdout).unwrap_or_default().contains("20 60") {
        assert!(std::time::Instant::now() < deadline, "the launch's terminal size never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tx, mut out) = attach(&mut c, "tty", true).await;
    tx.send(pb::AttachRequest {
        request: Some(pb::attach_request::Request::Resize(tty_info::WindowSize { rows: 50, columns: 132 })),
    })
    .await
    .unwrap();
    tx.send(pb::AttachRequest { request: Some(pb::attach_request::Request::Stdin(b"hello\n".to_vec())) })
        .await
        .unwrap();
    read_until(&mut out, "50 132").await;
    let logs = std::fs::read_to_string(agent.path("work/containers/tty/sandbox/stdout")).unwrap();
    assert!(logs.contains("20 60") && logs.contains("got hello"), "{logs:?}");
    drop(tx);

    // Without a terminal or open stdin there is no input to attach to; the output still is.
    c.launch(launch("plain", "exec sleep 600")).await.unwrap();
    let (tx, rx) = mpsc::channel(1);
    let start = pb::AttachStart { container_id: cid("plain"), input: Some(true), stream: None };
    tx.send(pb::AttachRequest { request: Some(pb::attach_request::Request::Start(start)) }).await.unwrap();
    let e = c.attach(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("without a terminal"), "{}", e.message());

    for id in ["tty", "plain"] {
        c.kill(pb::KillRequest { container_id: cid(id), ..Default::default() }).await.unwrap();
        c.wait(pb::WaitRequest { container_id: cid(id) }).await.unwrap();
    }
    for id in ["cat", "tty", "plain"] {
        c.remove(pb::RemoveRequest { container_id: cid(id) }).await.unwrap();
    }
}

#[tokio::test]
async fn huskctl_exec_and_attach() {
    require!(false);
    let agent = Agent::start("ctl-exec");
    fixture::ok(&agent, &["run", "-d", "--id", "web", "--", "exec sleep 600"]);
    let out = fixture::huskctl(&agent, &["exec", "web", "--", "sh", "-c", "echo $0; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", out.stderr);
    assert_eq!(out.stdout, "sh\n");
    let mut cmd =
        fixture::huskctl_command(&agent, &["exec", "-i", "-e", "X=1", "web", "--", "sh", "-c", "cat; echo $X"]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n1\n");
    let out = fixture::huskctl(&agent, &["exec", "web", "--", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("executable file not found"), "{}", out.stderr);

    // attach follows until the container ends, then exits with its status.
    fixture::ok(&agent, &["run", "-d", "--id", "talk", "--", "sleep 1; echo late; exit 3"]);
    let out = fixture::huskctl(&agent, &["attach", "talk"]);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert_eq!(out.stdout, "late\n");
    // Nested containers by `PARENT.ID`.
    fixture::ok(&agent, &["run", "-d", "--parent", "web", "--id", "kid", "--", "exec sleep 600"]);
    assert_eq!(fixture::ok(&agent, &["ps", "--nested", "-q"]).lines().collect::<Vec<_>>(), ["web", "web.kid"]);
    let out = fixture::huskctl(&agent, &["exec", "web.kid", "--", "sh", "-c", "exit 6"]);
    assert_eq!(out.status.code(), Some(6), "{}", out.stderr);
    fixture::ok(&agent, &["rm", "-f", "web", "talk"]);
    assert_eq!(fixture::ok(&agent, &["ps", "-a", "--nested", "-q"]), "");
}
