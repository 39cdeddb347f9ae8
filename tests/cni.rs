//! CNI networking of Mesos launches (`NetworkInfo.name`) with the standard plugins (bridge,
//! host-local, portmap, loopback): addresses reported in the container's status, traffic
//! between two containers, a port published on the host, DEL after an agent crash, and a
//! teardown that leaves no veth, IP, pinned namespace or port mapping behind.
mod common;

#[path = "common/agent.rs"]
mod fixture;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use fixture::{cid, launch, wait, Agent};
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::containerizer_client::ContainerizerClient;

type Client = ContainerizerClient<tonic::transport::Channel>;
use husk_proto::mesos::v1::{container_info, network_info, ContainerId, ContainerInfo, NetworkInfo, TaskState};

const NET: &str = "husknet";
const BRIDGE: &str = "huskcni0";
const GATEWAY: &str = "10.88.78.1";
const HOST_PORT: u32 = 18078;

fn on_network(id: &str, script: &str, ports: &[(u32, u32)]) -> pb::LaunchRequest {
    let mut r = launch(id, script);
    r.container = Some(ContainerInfo {
        r#type: container_info::Type::Mesos as i32,
        network_infos: vec![NetworkInfo {
            name: Some(NET.into()),
            port_mappings: ports
                .iter()
                .map(|&(host_port, container_port)| network_info::PortMapping {
                    host_port,
                    container_port,
                    protocol: Some("tcp".into()),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    });
    r
}

/// The veths on this test's bridge (other containers of the host may come and go).
fn veths() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().filter(|l| l.contains(&format!("master {BRIDGE} "))).map(str::to_string).collect()
}

fn nat_rules() -> String {
    let out = Command::new("iptables").args(["-t", "nat", "-S"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The addresses host-local holds for the network (its files named by IP).
fn leased(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.path("ipam").join(NET))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn ip_of(c: &mut Client, id: ContainerId) -> String {
    let st = c.status(pb::StatusRequest { container_id: id }).await.unwrap().into_inner();
    let infos = st.status.unwrap().network_infos;
    assert_eq!(infos.len(), 1, "{infos:?}");
    assert_eq!(infos[0].name.as_deref(), Some(NET));
    infos[0].ip_addresses[0].ip_address.clone().unwrap()
}

fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn bridge_network_between_containers_with_a_published_port() {
    require!(false);
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "the CNI plugins are missing: apt-get install -y containernetworking-plugins"
    );
    // A plugin of the test's own that refuses ADD (DEL succeeds), beside the real ones.
    let plugins = tempfile::tempdir().unwrap();
    let refuse = plugins.path().join("refuse");
    std::fs::write(
        &refuse,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && { echo '{\"code\":11,\"msg\":\"refused by the test\"}'; exit 1; }\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&refuse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut agent = Agent::start_with("cni", &format!("cni_bin_dir = \"/usr/lib/cni:{}\"", plugins.path().display()));
    let veths_before = veths();
    let mut c = agent.client().await;

    // A network nobody configured is refused, naming the field.
    let e = c.launch(on_network("early", "true", &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("container.network_infos[0].name: no CNI network `husknet`"), "{}", e.message());
    let mut bad_port = on_network("badport", "true", &[(0, 80)]);
    agent.cni_bridge(NET, BRIDGE, "10.88.78.0/24");
    let e = c.launch(bad_port.clone()).await.unwrap_err();
    assert!(e.message().contains("port_mappings[0].host_port: 0 is not a port"), "{}", e.message());
    bad_port
        .container
        .as_mut()
        .unwrap()
        .network_infos
        .push(NetworkInfo { name: Some("x".into()), ..Default::default() });
    let e = c.launch(bad_port).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{}", e.message());
    assert!(leased(&agent).is_empty(), "a refused launch takes no address");

    // ADD failing half-way (the second plugin refuses) fails the launch and undoes the first:
    // no address, veth or pinned namespace, and the id can be used again.
    let mut broken: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.path(&format!("cni/10-{NET}.conflist"))).unwrap()).unwrap();
    broken["name"] = "broken".into();
    broken["plugins"][1] = serde_json::json!({"type": "refuse"});
    std::fs::write(agent.path("cni/20-broken.conflist"), broken.to_string()).unwrap();
    let mut half = on_network("half", "true", &[]);
    half.container.as_mut().unwrap().network_infos[0].name = Some("broken".into());
    let e = c.launch(half).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("CNI plugin `refuse` ADD failed (code 11): refused by the test"), "{}", e.message());
    let addresses = |n: &str| {
        std::fs::read_dir(agent.path("ipam").join(n))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
            .count()
    };
    assert_eq!(addresses("broken"), 0, "the bridge's address was given back");
    assert_eq!(veths(), veths_before);
    assert!(std::fs::read_dir(agent.path("run/netns")).unwrap().next().is_none());
    c.remove(pb::RemoveRequest { container_id: cid("half") }).await.unwrap();
    c.launch(on_network("half", "true", &[])).await.unwrap();
    assert_eq!(wait(&mut c, "half").await.state(), TaskState::TaskFinished);
    c.remove(pb::RemoveRequest { container_id: cid("half") }).await.unwrap();

    // A web server on the network, published on the host.
    let www = agent.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from web\n").unwrap();
    let web = format!("exec busybox httpd -f -p 80 -h {}", www.display());
    c.launch(on_network("web", &web, &[(HOST_PORT, 80)])).await.unwrap();
    let web_ip = ip_of(&mut c, cid("web")).await;
    assert!(web_ip.starts_with("10.88.78."), "{web_ip}");
    assert_eq!(leased(&agent), std::slice::from_ref(&web_ip));
    // Its host port is taken: another launch that publishes it is refused, and so is a launch
    // that publishes one port twice; neither takes an address.
    let e = c.launch(on_network("thief", "true", &[(HOST_PORT + 1, 81), (HOST_PORT, 80)])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let taken = format!(
        "container.network_infos[0].port_mappings[1].host_port: {HOST_PORT}/tcp is published by container `web` already"
    );
    assert!(e.message().contains(&taken), "{}", e.message());
    let e = c.launch(on_network("twice", "true", &[(HOST_PORT + 1, 81), (HOST_PORT + 1, 82)])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("port_mappings[1].host_port: "), "{}", e.message());
    assert!(e.message().contains("/tcp is published by port_mappings[0] already"), "{}", e.message());
    assert_eq!(leased(&agent), std::slice::from_ref(&web_ip));

    // A nested container is on its parent's network.
    let nested = ContainerId { value: "side".into(), parent: Some(Box::new(cid("web"))) };
    let mut r = launch("side", "sleep 600");
    r.container_id = nested.clone();
    c.launch(r).await.unwrap();
    assert_eq!(ip_of(&mut c, nested.clone()).await, web_ip);

    // Another container reaches it over the bridge; its own loopback is up.
    let client = format!(
        "busybox ping -c 1 -W 5 {web_ip} && busybox wget -q -O - http://{web_ip}/index.html && busybox ping -c 1 -W 2 127.0.0.1"
    );
    c.launch(on_network("client", &client, &[])).await.unwrap();
    let t = wait(&mut c, "client").await;
    let logs = agent.path("work/containers/client/sandbox/stdout");
    let out = std::fs::read_to_string(&logs).unwrap_or_default();
    assert_eq!(
        t.state(),
        TaskState::TaskFinished,
        "{t:?}\n{out}\n{}",
        std::fs::read_to_string(logs.with_file_name("stderr")).unwrap_or_default()
    );
    assert!(out.contains("hello from web"), "{out}");
    assert!(out.contains(&format!("64 bytes from {web_ip}")), "{out}");

    // The published port, from the host.
    let page = http_get(&format!("{GATEWAY}:{HOST_PORT}"));
    assert!(page.contains("hello from web"), "{page}");
    assert!(nat_rules().contains("id: \\\"web\\\""), "portmap's rules for web:\n{}", nat_rules());

    // Terminated: its address and veth went at once.
    assert_eq!(leased(&agent), std::slice::from_ref(&web_ip));
    assert_eq!(veths().len(), veths_before.len() + 1, "web's veth only");
    c.remove(pb::RemoveRequest { container_id: cid("client") }).await.unwrap();
    let st = c.status(pb::StatusRequest { container_id: cid("web") }).await.unwrap().into_inner();
    let pid = st.status.unwrap().executor_pid.unwrap();

    // The agent dies; the container ends while it is away. The restarted agent still runs
    // the DEL (from its checkpoint, through the pinned namespace).
    agent.kill9();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.restart();
    let mut c = agent.client().await;
    let t = wait(&mut c, "web").await;
    assert_eq!(t.state(), TaskState::TaskFailed, "{t:?}");
    c.remove(pb::RemoveRequest { container_id: cid("web") }).await.unwrap();

    assert!(leased(&agent).is_empty(), "addresses still leased: {:?}", leased(&agent));
    assert_eq!(veths(), veths_before, "veths left");
    let rules = nat_rules();
    assert!(!rules.contains("id: \\\"web\\\""), "portmap rules left:\n{rules}");
    let pins: Vec<_> = std::fs::read_dir(agent.path("run/netns")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(pins.is_empty(), "pinned namespaces left: {pins:?}");
    assert_eq!(common::mounts_under(agent.dir.path()), Vec::<String>::new());
}
