//! One container as the agent keeps it: its launch, its state, its termination, checkpointed
//! under `<work dir>/containers/<id>/` so a restarted agent finds it again.
use std::path::{Path, PathBuf};

use husk_proto::agent::v1::{ContainerState, ContainerTermination, LaunchRequest};
use husk_proto::mesos::v1::{task_status::Reason, TaskState};
use husk_shim::exit::ExitRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

pub const LAUNCH_FILE: &str = "launch.json";
pub const STATE_FILE: &str = "state.json";

/// What is checkpointed besides the launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub state: i32,
    /// A Kill was asked for: the termination is TASK_KILLED.
    #[serde(default)]
    pub killed: bool,
    pub created_ns: i64,
    /// The memory limit in MB, for the OOM message.
    #[serde(default)]
    pub mem_limit_mb: Option<f64>,
    /// The termination, once there is one (protobuf JSON).
    #[serde(default)]
    pub termination: Option<serde_json::Value>,
    /// When the agent recorded the termination (the garbage collector's clock).
    #[serde(default)]
    pub terminated_ns: Option<i64>,
    /// When the garbage collector removed the sandbox and bundle (the record stays until Remove).
    #[serde(default)]
    pub collected_ns: Option<i64>,
    /// The manifest digest of the image the container runs from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    pub shim_dir: PathBuf,
    pub launch: LaunchRequest,
    /// Serializes the calls that change this container (never held across a wait).
    pub op: Mutex<()>,
    pub checkpoint: std::sync::Mutex<Checkpoint>,
    pub termination: watch::Sender<Option<ContainerTermination>>,
    /// Set by a Kill during the launch: the launch stops where it is and is destroyed.
    pub cancel: watch::Sender<bool>,
}

impl Container {
    pub fn new(id: &str, dir: PathBuf, shim_dir: PathBuf, launch: LaunchRequest, checkpoint: Checkpoint) -> Container {
        let term = checkpoint.termination.clone().and_then(|v| serde_json::from_value(v).ok());
        Container {
            id: id.to_string(),
            dir,
            shim_dir,
            launch,
            op: Mutex::new(()),
            checkpoint: std::sync::Mutex::new(checkpoint),
            termination: watch::channel(term).0,
            cancel: watch::channel(false).0,
        }
    }

    pub fn sandbox(&self) -> PathBuf {
        self.dir.join("sandbox")
    }

    /// The agent's key of the parent of a nested container.
    pub fn parent(&self) -> Option<String> {
        self.launch.container_id.parent.as_deref().map(husk_oci::validate::display_id)
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    pub fn socket(&self) -> PathBuf {
        self.shim_dir.join(husk_shim::shim::SOCKET)
    }

    pub fn state(&self) -> ContainerState {
        ContainerState::try_from(self.checkpoint.lock().unwrap().state).unwrap_or(ContainerState::Unknown)
    }

    /// Records a state change. The states recovery tells apart (RUNNING; PROVISIONING and
    /// TERMINATED are written by the launch and the termination) are checkpointed before anyone
    /// sees them; the steps between are not: recovery treats a launch that had not reached
    /// RUNNING alike whichever step it was in, and a destroy as the RUNNING container it was,
    /// so their fsyncs would only slow every launch.
    pub fn set_state(&self, state: ContainerState) -> std::io::Result<()> {
        let mut c = self.checkpoint.lock().unwrap();
        c.state = state as i32;
        match state {
            ContainerState::Running => save(&self.dir, &c),
            _ => Ok(()),
        }
    }

    pub fn set_killed(&self) -> std::io::Result<()> {
        let mut c = self.checkpoint.lock().unwrap();
        c.killed = true;
        save(&self.dir, &c)
    }

    /// Records the termination (checkpointed first) and wakes every waiter. Waiters are woken
    /// also when the checkpoint cannot be written (a full disk): the container did end, and a
    /// restarted agent finds its exit again in the shim's exit.json.
    pub fn terminate(&self, t: ContainerTermination) -> std::io::Result<()> {
        let saved = {
            let mut c = self.checkpoint.lock().unwrap();
            c.state = ContainerState::Terminated as i32;
            c.termination = serde_json::to_value(&t).ok();
            c.terminated_ns = Some(super::now_ns());
            save(&self.dir, &c)
        };
        self.termination.send_replace(Some(t));
        saved
    }

    pub fn terminated(&self) -> Option<ContainerTermination> {
        self.termination.borrow().clone()
    }
}

pub fn save(dir: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let json = serde_json::to_vec(c)?;
    husk_oci::checkpoint::write_atomic(&dir.join(STATE_FILE), &json, 0o600)
}

/// The Mesos termination of a container whose init exited with `exit`.
pub fn termination_of(exit: &ExitRecord, killed: bool, mem_limit_mb: Option<f64>) -> ContainerTermination {
    let mut t = ContainerTermination {
        status: Some(exit.wait_status),
        exit_code: exit.exit_code,
        signal: exit.signal,
        oom_killed: Some(exit.oom_killed),
        started_at_ns: Some(exit.started_at_ns),
        finished_at_ns: Some(exit.finished_at_ns),
        ..Default::default()
    };
    if exit.oom_killed {
        t.state = Some(TaskState::TaskFailed as i32);
        t.reason = Some(Reason::ContainerLimitationMemory as i32);
        t.message = Some(match mem_limit_mb {
            Some(mb) => format!("Memory limit exceeded: the container used more than its {mb} MB limit"),
            None => "Memory limit exceeded".into(),
        });
        if let Some(mb) = mem_limit_mb {
            t.limited_resources.push(husk_oci::resources::scalar("mem", mb));
        }
    } else if killed {
        t.state = Some(TaskState::TaskKilled as i32);
        t.message = Some(describe(exit, "Killed on request: "));
    } else if exit.exit_code == Some(0) {
        t.state = Some(TaskState::TaskFinished as i32);
        t.message = Some("Command exited with status 0".into());
    } else {
        t.state = Some(TaskState::TaskFailed as i32);
        t.reason = Some(Reason::CommandExecutorFailed as i32);
        t.message = Some(describe(exit, ""));
    }
    t
}

fn describe(exit: &ExitRecord, prefix: &str) -> String {
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("{prefix}Command exited with status {code}"),
        (None, Some(sig)) => {
            let name =
                nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or(sig.to_string());
            format!("{prefix}Command terminated by signal {name}")
        }
        _ => format!("{prefix}Command terminated"),
    }
}

/// A termination that did not come from the container's own exit.
pub fn termination_with(state: TaskState, reason: Reason, message: String) -> ContainerTermination {
    ContainerTermination {
        state: Some(state as i32),
        reason: Some(reason as i32),
        message: Some(message),
        ..Default::default()
    }
}
