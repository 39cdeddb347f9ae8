//! The CRI streaming server end to end: Exec, Attach and PortForward URLs from a real agent,
//! used by a client built on the libraries client-go's executors use (moby/spdystream for
//! SPDY/3.1, gorilla/websocket), as crictl and the kubelet do. Covers stdin, stdout, stderr,
//! exit codes, a terminal and its size, both transports and protocol versions, forwarding to a
//! port only the pod's loopback has, single-use URLs, a client that hangs up, and teardown.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

#[path = "common/agent.rs"]
mod fixture;
#[path = "common/image.rs"]
mod image;

use fixture::{ok, Agent};
use husk_proto::agent::v1 as pb;
use husk_proto::cri;
use husk_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const BRIDGE: &str = "huskcri2";

/// The Go client (tests/streaming-client), built once per test binary from Debian's Go
/// packages (golang-go, golang-github-docker-spdystream-dev, golang-github-gorilla-websocket-dev).
fn go_client() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("streaming-client");
            let status = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/streaming-client"))
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"))
                .status()
                .unwrap_or_else(|e| {
                    panic!(
                        "go: {e}: install golang-go golang-github-docker-spdystream-dev \
                         golang-github-gorilla-websocket-dev (.ci/run does)"
                    )
                });
            assert!(status.success(), "building tests/streaming-client failed");
            out
        })
        .clone()
}

/// Runs the client with `args`, feeding it `input`.
async fn client(args: &[&str], input: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(go_client())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the streaming client hung")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn exec_url(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
    flags: (bool, bool, bool, bool),
) -> String {
    let (stdin, stdout, stderr, tty) = flags;
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout,
        stderr,
        tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

async fn running_in(rt: &mut RuntimeServiceClient<Channel>, id: &str, pattern: &str) -> bool {
    let out = rt
        .exec_sync(cri::ExecSyncRequest { container_id: id.into(), cmd: vec!["ps".into()], timeout: 0 })
        .await
        .unwrap()
        .into_inner();
    text(&out.stdout).lines().any(|l| l.contains(pattern))
}

#[tokio::test]
async fn exec_attach_and_port_forward_through_the_streaming_server() {
    require!(false);
    let client_bin = go_client();
    assert!(client_bin.exists());
    // Long enough for every session below but the silent one.
    let mut agent = Agent::start_with("cri-streaming", "streaming_idle_timeout = \"5secs\"\n");
    agent.cni_bridge("husk-streams", BRIDGE, "10.88.79.0/24");
    let files = tempfile::tempdir().unwrap();
    let root = files.path().join("rootfs");
    common::busybox_rootfs(&root);
    let layout = files.path().join("layout");
    image::oci_layout(
        &layout,
        &[image::tar_of(&root)],
        serde_json::json!({"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}),
        "1",
    );
    ok(&agent, &["import", layout.to_str().unwrap(), "--name", "localhost/busybox"]);
    let mut rt = RuntimeServiceClient::new(agent.cri_channel().await);

    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "streams".into(),
            uid: "uid-streams".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: files.path().join("logs").display().to_string(),
        ..Default::default()
    };
    std::fs::create_dir_all(files.path().join("logs")).unwrap();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let start = |name: &str, script: &str, stdin: bool, stdin_once: bool| {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "localhost/busybox:1".into(), ..Default::default() }),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            log_path: format!("{name}.log"),
            stdin,
            stdin_once,
            labels: HashMap::from([("app".into(), name.into())]),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let mut rt = rt.clone();
        async move {
            let id = rt.create_container(req).await.unwrap().into_inner().container_id;
            rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
            id
        }
    };
    // A web server on the pod's loopback only, and a shell that echoes its input.
    let web = start(
        "web",
        "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
        false,
        false,
    )
    .await;
    let echo = "while read l; do echo \"got:$l\"; done; echo bye";
    // Attach to `shell` leaves its stdin open when it ends; `once` (stdin_once) closes it.
    let shell = start("shell", echo, true, false).await;
    let once = start("once", echo, true, true).await;

    // SPDY: stdout, stderr and the exit code.
    let url =
        exec_url(&mut rt, &web, &["sh", "-c", "echo out; echo err >&2; exit 3"], (false, true, true, false)).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let out = client(&["-url", &url, "-stderr"], b"").await;
    assert_eq!((out.status.code(), text(&out.stdout), text(&out.stderr)), (Some(3), "out\n".into(), "err\n".into()));
    // The URL was used: a second try finds nothing; neither does a made-up one.
    let out = client(&["-url", &url], b"").await;
    assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("404"), "{}", text(&out.stderr));
    let forged = format!("{}/exec/{}", url.rsplit_once("/exec/").unwrap().0, "0".repeat(32));
    assert!(text(&client(&["-url", &forged], b"").await.stderr).starts_with("404"));

    // SPDY: stdin to its end (cat stops at EOF), then exit 0.
    let url = exec_url(&mut rt, &web, &["tr", "a-z", "A-Z"], (true, true, false, false)).await;
    let out = client(&["-url", &url, "-stdin"], b"hello\nworld\n").await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "HELLO\nWORLD\n".into()), "{}", text(&out.stderr));

    // SPDY: a terminal that takes the client's size.
    let script =
        "for i in $(seq 100); do s=$(stty size); [ \"$s\" = '45 123' ] && break; sleep 0.05; done; echo size=$s; tty";
    let url = exec_url(&mut rt, &web, &["sh", "-c", script], (false, true, false, true)).await;
    let out = client(&["-url", &url, "-tty", "-cols", "123", "-rows", "45"], b"").await;
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown} {}", text(&out.stderr));
    assert!(shown.contains("size=45 123") && shown.contains("/dev/pts/"), "{shown:?}");

    // Websocket, v5: stdin closed by the close signal, stderr, the exit code.
    let url = exec_url(&mut rt, &web, &["sh", "-c", "tr a-z A-Z; echo e >&2; exit 4"], (true, true, true, false)).await;
    let out = client(&["-transport", "websocket", "-url", &url, "-stdin", "-stderr"], b"abc\n").await;
    assert_eq!((out.status.code(), text(&out.stdout), text(&out.stderr)), (Some(4), "ABC\n".into(), "e\n".into()));
    // Websocket, v4 only (no close signal, so no stdin).
    let url = exec_url(&mut rt, &web, &["sh", "-c", "echo v4"], (false, true, false, false)).await;
    let out = client(&["-transport", "websocket", "-protocols", "v4.channel.k8s.io", "-url", &url], b"").await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "v4\n".into()), "{}", text(&out.stderr));
    // Protocols husk does not speak are refused before anything runs.
    let url = exec_url(&mut rt, &web, &["touch", "/refused"], (false, true, false, false)).await;
    let out = client(&["-url", &url, "-protocols", "channel.k8s.io"], b"").await;
    assert!(text(&out.stderr).starts_with("403"), "{}", text(&out.stderr));
    let url = exec_url(&mut rt, &web, &["touch", "/refused"], (false, true, false, false)).await;
    let out = client(&["-transport", "websocket", "-url", &url, "-protocols", "base64.channel.k8s.io"], b"").await;
    assert_eq!(out.status.code(), Some(102), "{}", text(&out.stderr));
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec!["ls".into(), "/refused".into()],
            timeout: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(out.exit_code, 0, "a refused stream ran its command");

    // A client that hangs up takes its process with it.
    // It is sent more input than it reads (more than the pipe and husk buffer), which must not
    // keep husk from seeing the client leave.
    let url = exec_url(&mut rt, &web, &["sleep", "737"], (true, true, false, false)).await;
    let out = client(&["-url", &url, "-stdin", "-hangup", "2s"], &vec![b'x'; 4 << 20]).await;
    assert_eq!(out.status.code(), Some(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running_in(&mut rt, &web, "sleep 737").await {
        assert!(std::time::Instant::now() < deadline, "the exec outlived its client: {}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A session silent both ways for the idle timeout is closed, and its exec killed.
    let url = exec_url(&mut rt, &web, &["sleep", "739"], (false, true, false, false)).await;
    let began = std::time::Instant::now();
    let out = client(&["-url", &url], b"").await;
    assert_ne!(out.status.code(), Some(0), "the stream was cut, not finished: {}", text(&out.stderr));
    assert!(began.elapsed() >= Duration::from_secs(5), "not before the timeout: {:?}", began.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running_in(&mut rt, &web, "sleep 739").await {
        assert!(std::time::Instant::now() < deadline, "the idle exec outlived its connection: {}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.log().contains("closing a streaming connection idle for"), "{}", agent.log());

    // Attach: input reaches the container's stdin and its output comes back. The end of the
    // client's input leaves the container's open for the next attach...
    let attach = |id: String| {
        let mut rt = rt.clone();
        async move {
            let req = cri::AttachRequest { container_id: id, stdin: true, stdout: true, stderr: true, tty: false };
            rt.attach(req).await.unwrap().into_inner().url
        }
    };
    let out = client(&["-url", &attach(shell.clone()).await, "-stdin", "-stderr", "-until", "got:one"], b"one\n").await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "got:one\n".into()), "{}", text(&out.stderr));
    let out = client(&["-url", &attach(shell.clone()).await, "-stdin", "-stderr", "-until", "got:two"], b"two\n").await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "got:two\n".into()), "{}", text(&out.stderr));
    // ...unless the container asked for stdin_once: then it closes, the shell says bye and
    // exits, and the stream ends with the container.
    let out = client(&["-url", &attach(once.clone()).await, "-stdin", "-stderr"], b"ping\n").await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "got:ping\nbye\n".into()), "{}", text(&out.stderr));

    // Port forwarding reaches a port only the pod's loopback has.
    let url = rt
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out =
        client(&["-mode", "portforward", "-url", &url, "-port", "8080"], b"GET /index.html HTTP/1.0\r\n\r\n").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.starts_with("HTTP/1.") && page.ends_with("hello-from-the-pod\n"), "{page:?}");
    // A closed port: the error stream says so.
    let url = rt
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = client(&["-mode", "portforward", "-url", &url, "-port", "8081"], b"x").await;
    assert_eq!(out.status.code(), Some(100));
    assert!(text(&out.stderr).contains("error forwarding port 8081"), "{}", text(&out.stderr));
    // Port forwarding is SPDY only.
    let url = rt
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![80] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = client(&["-transport", "websocket", "-url", &url], b"").await;
    assert!(text(&out.stderr).starts_with("400"), "{}", text(&out.stderr));

    // Bad requests, refused by the RPC with the field and the rule.
    let e =
        rt.exec(cri::ExecRequest { container_id: web.clone(), stdout: true, ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "cmd: must not be empty"));
    let e = rt
        .exec(cri::ExecRequest {
            container_id: web.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("tty, stderr"), "{}", e.message());
    let e = rt
        .exec(cri::ExecRequest { container_id: web.clone(), cmd: vec!["true".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = rt
        .exec(cri::ExecRequest {
            container_id: once.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "`once` exited: {e:?}");
    let e = rt
        .attach(cri::AttachRequest { container_id: web.clone(), stdin: true, stdout: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().starts_with("stdin: container"), "{}", e.message());
    let e =
        rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![70000] }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("port: 70000"), "{}", e.message());
    let e = rt
        .attach(cri::AttachRequest { container_id: "nope".into(), stdout: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let mut husk = agent.client().await;
    let list = husk.list(pb::ListRequest { show_nested: Some(true), ..Default::default() }).await.unwrap().into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    let veths = std::process::Command::new("ip").args(["-o", "link", "show", "master", BRIDGE]).output().unwrap();
    assert!(text(&veths.stdout).trim().is_empty(), "{}", text(&veths.stdout));
}
