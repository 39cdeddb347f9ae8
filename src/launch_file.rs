//! Reading a container launch from a JSON document as Mesos tools write it.
//!
//! Accepted forms (snake_case or camelCase field names, enums by name):
//! - a Mesos agent API call: `{"type": "LAUNCH_CONTAINER", "launch_container": {...}}`;
//! - the bare `launch_container` object (`{"container_id": ..., "command": ...}`);
//! - a Mesos `TaskInfo` (`{"name": ..., "task_id": ..., "command": ...}`), which becomes a
//!   standalone container with the task's command, container, resources and limits.
use anyhow::{bail, Context, Result};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::agent::{call, Call};
use husk_proto::mesos::v1::{ContainerId, TaskInfo};
use prost::Message;

/// Largest launch document read (a launch is a few KiB; this bounds hostile input).
pub const MAX_LAUNCH_FILE: u64 = 4 << 20;

/// Decodes a launch document. `id` overrides the container id; a `TaskInfo` without `id` gets
/// `task_default`.
pub fn parse(text: &str, id: Option<&str>, task_default: &str) -> Result<LaunchRequest> {
    let value: serde_json::Value = serde_json::from_str(text).context("not a JSON document")?;
    let obj = value.as_object().context("a launch document must be a JSON object")?;
    let mut req =
        if obj.contains_key("launch_container") || obj.contains_key("launchContainer") || obj.contains_key("type") {
            let call: Call = serde_json::from_value(value).context("not a Mesos agent Call")?;
            if call.r#type() != call::Type::LaunchContainer {
                bail!("the Mesos call is {}, not LAUNCH_CONTAINER", call.r#type().as_str_name());
            }
            let launch = call.launch_container.context("a LAUNCH_CONTAINER call needs `launch_container`")?;
            // Same field numbers: the Mesos message's bytes are a husk LaunchRequest.
            LaunchRequest::decode(launch.encode_to_vec().as_slice()).context("re-encoding the launch")?
        } else if obj.contains_key("task_id") || obj.contains_key("taskId") {
            let task: TaskInfo = serde_json::from_value(value).context("not a Mesos TaskInfo")?;
            // A task's id is not a container id (Mesos makes one up): `task_default` when no id
            // is given.
            let id = id.unwrap_or(task_default);
            LaunchRequest {
                container_id: ContainerId { value: id.to_string(), parent: None },
                command: task.command,
                resources: task.resources,
                container: task.container,
                limits: task.limits,
                labels: task.labels,
                ..Default::default()
            }
        } else {
            serde_json::from_value(value).context("not a Mesos LaunchContainer")?
        };
    if let Some(id) = id {
        req.container_id = ContainerId { value: id.to_string(), parent: req.container_id.parent.take() };
    }
    Ok(req)
}

/// Reads and decodes a launch document from a file (`-` for standard input).
pub fn read(path: &str, id: Option<&str>, task_default: &str) -> Result<LaunchRequest> {
    use std::io::Read;
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().take(MAX_LAUNCH_FILE + 1).read_to_string(&mut text).context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {path}"))?
            .take(MAX_LAUNCH_FILE + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {path}"))?;
    }
    if text.len() as u64 > MAX_LAUNCH_FILE {
        bail!("{path}: larger than {MAX_LAUNCH_FILE} bytes");
    }
    parse(&text, id, task_default).with_context(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        let call = r#"{"type":"LAUNCH_CONTAINER","launch_container":{"container_id":{"value":"a"},"command":{"value":"true"}}}"#;
        assert_eq!(parse(call, None, "dflt").unwrap().container_id.value, "a");
        let bare = r#"{"container_id":{"value":"b"},"command":{"value":"true"},"resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":1}}]}"#;
        let req = parse(bare, None, "dflt").unwrap();
        assert_eq!(req.resources.len(), 1);
        let task = r#"{"name":"t","task_id":{"value":"t.1"},"agent_id":{"value":"S"},"command":{"value":"true"},"limits":{"mem":{"value":64}}}"#;
        assert_eq!(parse(task, None, "dflt").unwrap().container_id.value, "dflt");
        let req = parse(task, Some("t1"), "dflt").unwrap();
        assert_eq!(req.container_id.value, "t1");
        assert_eq!(req.limits["mem"].value, 64.0);
    }

    #[test]
    fn other_calls_and_junk_are_refused() {
        let wait = r#"{"type":"WAIT_CONTAINER","wait_container":{"container_id":{"value":"a"}}}"#;
        assert!(parse(wait, None, "dflt").unwrap_err().to_string().contains("not LAUNCH_CONTAINER"));
        assert!(parse("[]", None, "dflt").is_err());
        assert!(parse("{", None, "dflt").is_err());
    }
}
