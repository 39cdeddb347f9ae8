//! Mesos-style JSON (snake_case field names, enums by name) decodes as is; proto2 defaults hold;
//! the Mesos agent call's bytes decode as husk's LaunchRequest.
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::agent::{call, Call};
use husk_proto::mesos::v1::{container_info, linux_info, volume, CommandInfo, LinuxInfo, TaskInfo};
use prost::Message;

const LAUNCH_CALL: &str = r#"{
  "type": "LAUNCH_CONTAINER",
  "launch_container": {
    "container_id": {"value": "child", "parent": {"value": "pod"}},
    "command": {
      "value": "echo hello",
      "environment": {"variables": [{"name": "GREETING", "value": "hi"}]},
      "uris": [{"value": "http://127.0.0.1/app.tgz", "extract": false, "output_file": "app.tgz"}]
    },
    "resources": [
      {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
      {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}},
      {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31001}]}}
    ],
    "limits": {"cpus": {"value": 1}, "mem": {"value": 128}},
    "container": {
      "type": "MESOS",
      "hostname": "web",
      "volumes": [{
        "container_path": "/data", "mode": "RO",
        "source": {"type": "HOST_PATH", "host_path": {"path": "/srv/data",
                   "mount_propagation": {"mode": "BIDIRECTIONAL"}}}
      }],
      "linux_info": {
        "effective_capabilities": {"capabilities": ["NET_BIND_SERVICE", "CHOWN"]},
        "ipc_mode": "PRIVATE", "shm_size": 32
      },
      "rlimit_info": {"rlimits": [{"type": "RLMT_NOFILE", "soft": 1024, "hard": 4096}]}
    }
  }
}"#;

#[test]
fn mesos_launch_container_call_json_decodes() {
    let call: Call = serde_json::from_str(LAUNCH_CALL).unwrap();
    assert_eq!(call.r#type(), call::Type::LaunchContainer);
    let launch = call.launch_container.unwrap();
    assert_eq!(launch.container_id.value, "child");
    assert_eq!(launch.container_id.parent.as_ref().unwrap().value, "pod");
    let cmd = launch.command.as_ref().unwrap();
    assert!(cmd.shell(), "shell defaults to true (proto2 default)");
    assert!(!cmd.uris[0].extract());
    assert_eq!(launch.limits["mem"].value, 128.0);
    let info = launch.container.as_ref().unwrap();
    assert_eq!(info.r#type(), container_info::Type::Mesos);
    assert_eq!(info.volumes[0].mode(), volume::Mode::Ro);
    let linux = info.linux_info.as_ref().unwrap();
    assert_eq!(linux.ipc_mode(), linux_info::IpcMode::Private);
    assert_eq!(linux.effective_capabilities.as_ref().unwrap().capabilities.len(), 2);
    assert!(linux.share_cgroups(), "share_cgroups defaults to true");

    // The bytes of the Mesos call's LaunchContainer are a husk LaunchRequest.
    let bytes = launch.encode_to_vec();
    let req = LaunchRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.container_id, launch.container_id);
    assert_eq!(req.command, launch.command);
    assert_eq!(req.container, launch.container);
    assert_eq!(req.resources, launch.resources);
}

#[test]
fn camel_case_json_names_decode_too() {
    let cmd: CommandInfo = serde_json::from_str(r#"{"value": "x", "shell": false, "arguments": ["x"]}"#).unwrap();
    assert!(!cmd.shell());
    let linux: LinuxInfo = serde_json::from_str(r#"{"sharePidNamespace": true, "shareCgroups": false}"#).unwrap();
    assert_eq!(linux.share_pid_namespace, Some(true));
    assert!(!linux.share_cgroups());
}

#[test]
fn uri_extract_defaults_to_true() {
    let cmd: CommandInfo = serde_json::from_str(r#"{"value": "x", "uris": [{"value": "file:///a.tgz"}]}"#).unwrap();
    assert!(cmd.uris[0].extract());
}

#[test]
fn mesos_task_info_json_decodes() {
    let task: TaskInfo = serde_json::from_str(
        r#"{
          "name": "web", "task_id": {"value": "web.1"}, "agent_id": {"value": "S0"},
          "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1},
                         "role": "*", "allocation_info": {"role": "ops"}}],
          "command": {"shell": true, "value": "sleep 10"},
          "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}}},
          "limits": {"mem": {"value": 256}},
          "kill_policy": {"grace_period": {"nanoseconds": 3000000000}}
        }"#,
    )
    .unwrap();
    assert_eq!(task.task_id.value, "web.1");
    let image = task.container.unwrap().mesos.unwrap().image.unwrap();
    assert!(image.cached(), "Image.cached defaults to true");
    assert_eq!(image.docker.unwrap().name, "busybox");
    assert_eq!(task.kill_policy.unwrap().grace_period.unwrap().nanoseconds, 3_000_000_000);
}

#[test]
fn serialization_uses_mesos_field_names() {
    let cmd = CommandInfo { value: Some("x".into()), user: Some("app".into()), ..Default::default() };
    let json = serde_json::to_value(&cmd).unwrap();
    assert_eq!(json["value"], "x");
    let launch: Call = serde_json::from_str(LAUNCH_CALL).unwrap();
    let json = serde_json::to_value(&launch).unwrap();
    assert!(json.get("launch_container").is_some(), "{json}");
    assert!(json["launch_container"].get("container_id").is_some());
}

#[test]
fn malformed_json_is_an_error_not_a_default() {
    assert!(serde_json::from_str::<Call>(r#"{"type": "NO_SUCH_CALL"}"#).is_err());
    assert!(serde_json::from_str::<TaskInfo>(r#"{"name": "x"}"#).is_err(), "required task_id is missing");
    assert!(serde_json::from_str::<CommandInfo>(r#"{"shell": "yes"}"#).is_err());
}
