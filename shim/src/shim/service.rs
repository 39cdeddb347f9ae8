//! The shim's gRPC API (`husk.shim.v1.Shim`) on its unix socket.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_proto::mesos::v1::ResourceStatistics;
use husk_proto::shim::v1 as pb;
use husk_proto::shim::v1::shim_server::Shim;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{watch, Notify};
use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::reaper::Reaper;
use crate::cgroups::{Cgroup, Resources, Stats};
use crate::exit::ExitRecord;
use crate::runtime::state::process_start_time;

/// Every call answers within this, whatever the container does.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
const DESTROY_DEADLINE: Duration = Duration::from_secs(10);

pub struct Shared {
    pub id: String,
    pub state_dir: std::path::PathBuf,
    pub bundle: std::path::PathBuf,
    pub backend: Backend,
    pub reaper: Reaper,
    pub init_pid: i32,
    pub init_start_time: u64,
    pub cgroup: Option<Cgroup>,
    pub exit: watch::Receiver<Option<ExitRecord>>,
    pub started: AtomicBool,
    pub deleted: AtomicBool,
    pub shutdown: Notify,
    /// Execs started so far (names their files).
    pub execs: std::sync::atomic::AtomicU64,
    /// The container's terminal or open stdin, for Attach (one client at a time).
    pub input: Arc<tokio::sync::Mutex<Option<super::exec::Input>>>,
    /// The CRI log file, when the container has one.
    pub cri_log: Option<super::SharedCriLog>,
}

impl Shared {
    fn exited(&self) -> Option<ExitRecord> {
        self.exit.borrow().clone()
    }

    pub(super) fn init_alive(&self) -> bool {
        self.exited().is_none()
            && matches!(process_start_time(self.init_pid), Some((t, false)) if t == self.init_start_time)
    }

    fn cgroup(&self) -> Result<&Cgroup, Status> {
        self.cgroup.as_ref().ok_or_else(|| Status::failed_precondition("the container has no cgroup"))
    }
}

pub fn exit_to_pb(r: &ExitRecord) -> pb::ExitStatus {
    pb::ExitStatus {
        wait_status: r.wait_status,
        exit_code: r.exit_code,
        signal: r.signal,
        oom_killed: r.oom_killed,
        started_at_ns: r.started_at_ns,
        finished_at_ns: r.finished_at_ns,
    }
}

/// Mesos' `ResourceStatistics` from cgroup stats.
pub fn statistics(s: &Stats) -> ResourceStatistics {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ResourceStatistics {
        timestamp: now.as_secs_f64(),
        processes: Some(s.processes),
        threads: Some(s.threads),
        cpus_user_time_secs: s.cpus_user_time_secs,
        cpus_system_time_secs: s.cpus_system_time_secs,
        cpus_nr_periods: s.cpus_nr_periods.map(|v| v.min(u32::MAX as u64) as u32),
        cpus_nr_throttled: s.cpus_nr_throttled.map(|v| v.min(u32::MAX as u64) as u32),
        cpus_throttled_time_secs: s.cpus_throttled_time_secs,
        mem_total_bytes: s.mem_total_bytes,
        mem_total_memsw_bytes: s.mem_total_memsw_bytes,
        mem_limit_bytes: s.mem_limit_bytes,
        mem_soft_limit_bytes: s.mem_soft_limit_bytes,
        mem_cache_bytes: s.mem_cache_bytes,
        mem_rss_bytes: s.mem_rss_bytes,
        mem_mapped_file_bytes: s.mem_mapped_file_bytes,
        mem_swap_bytes: s.mem_swap_bytes,
        mem_unevictable_bytes: s.mem_unevictable_bytes,
        ..Default::default()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, Status> {
    match tokio::time::timeout(CALL_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {CALL_DEADLINE:?}"))),
        Ok(Err(e)) => Err(Status::internal(e.to_string())),
        Ok(Ok(Err(e))) => Err(Status::internal(e.to_string())),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

pub struct Service(pub Arc<Shared>);

#[tonic::async_trait]
impl Shim for Service {
    async fn state(&self, _: Request<pb::StateRequest>) -> Result<Response<pb::StateResponse>, Status> {
        let s = &self.0;
        let exit = s.exited();
        let status = if exit.is_some() || !s.init_alive() {
            pb::Status::Stopped
        } else if !s.started.load(Ordering::SeqCst) {
            pb::Status::Created
        } else if s
            .cgroup
            .as_ref()
            .and_then(|c| c.dir("freezer").or_else(|| c.dir("")))
            .and_then(|d| {
                std::fs::read_to_string(d.join("freezer.state"))
                    .or_else(|_| std::fs::read_to_string(d.join("cgroup.freeze")))
                    .ok()
            })
            .is_some_and(|v| v.trim() == "FROZEN" || v.trim() == "1")
        {
            pb::Status::Paused
        } else {
            pb::Status::Running
        };
        Ok(Response::new(pb::StateResponse {
            id: s.id.clone(),
            bundle: s.bundle.display().to_string(),
            status: status as i32,
            pid: s.init_pid as u32,
            pid_start_time: s.init_start_time,
            exit: exit.as_ref().map(exit_to_pb),
            runtime: s.backend.name(),
            shim_pid: std::process::id(),
        }))
    }

    async fn start(&self, _: Request<pb::StartRequest>) -> Result<Response<pb::StartResponse>, Status> {
        let s = &self.0;
        if s.started.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("the container was already started"));
        }
        if !s.init_alive() {
            return Err(Status::failed_precondition("the container's init has exited"));
        }
        match tokio::time::timeout(CALL_DEADLINE * 2, s.backend.start(&s.reaper, &s.id)).await {
            Err(_) => return Err(Status::deadline_exceeded("start did not finish in time")),
            Ok(Err(e)) => return Err(Status::failed_precondition(e)),
            Ok(Ok(())) => {}
        }
        s.started.store(true, Ordering::SeqCst);
        husk_oci::failpoint::hit("shim.started");
        Ok(Response::new(pb::StartResponse { pid: s.init_pid as u32 }))
    }

    async fn wait(&self, _: Request<pb::WaitRequest>) -> Result<Response<pb::ExitStatus>, Status> {
        let mut rx = self.0.exit.clone();
        // exit.json is on disk before the value is published.
        let record = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Status::unavailable("the shim is shutting down"))?
            .clone()
            .unwrap();
        Ok(Response::new(exit_to_pb(&record)))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<pb::KillResponse>, Status> {
        let req = req.into_inner();
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| Status::invalid_argument(format!("signal: {} is not a signal", req.signal)))?;
        let s = &self.0;
        if req.all {
            let cg = s.cgroup()?.clone();
            let pids = blocking(move || cg.procs()).await?;
            for pid in pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
        } else {
            if !s.init_alive() {
                return Err(Status::failed_precondition("the container's init has exited"));
            }
            nix::sys::signal::kill(Pid::from_raw(s.init_pid), sig)
                .map_err(|e| Status::internal(format!("kill {}: {e}", s.init_pid)))?;
        }
        Ok(Response::new(pb::KillResponse {}))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let cg = self.0.cgroup()?.clone();
        let stats = blocking(move || cg.stats()).await?;
        Ok(Response::new(pb::StatsResponse { statistics: Some(statistics(&stats)) }))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        let r = req.into_inner();
        let field = |v: i64, name: &str| -> Result<Option<i64>, Status> {
            match v {
                0 => Ok(None),
                -1 => Ok(Some(-1)),
                v if v > 0 => Ok(Some(v)),
                v => Err(Status::invalid_argument(format!("{name}: {v} must be positive, -1 or 0 (unchanged)"))),
            }
        };
        let res = Resources {
            cpu_shares: (r.cpu_shares != 0).then_some(r.cpu_shares.max(2)),
            cpu_quota: field(r.cpu_quota_us, "cpu_quota_us")?,
            cpu_period: (r.cpu_period_us != 0).then_some(r.cpu_period_us),
            memory_limit: field(r.memory_limit_bytes, "memory_limit_bytes")?,
            memory_reservation: field(r.memory_reservation_bytes, "memory_reservation_bytes")?,
            memory_swap: None,
            pids_limit: field(r.pids_limit, "pids_limit")?,
            devices: Vec::new(),
        };
        let cg = self.0.cgroup()?.clone();
        blocking(move || cg.apply(&res)).await?;
        Ok(Response::new(pb::UpdateResponse {}))
    }

    async fn pids(&self, _: Request<pb::PidsRequest>) -> Result<Response<pb::PidsResponse>, Status> {
        let cg = self.0.cgroup()?.clone();
        let pids = blocking(move || cg.procs()).await?;
        let processes = pids
            .into_iter()
            .map(|pid| pb::ProcessInfo {
                pid: pid as u32,
                command: std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string(),
            })
            .collect();
        Ok(Response::new(pb::PidsResponse { processes }))
    }

    async fn pause(&self, _: Request<pb::PauseRequest>) -> Result<Response<pb::PauseResponse>, Status> {
        let cg = self.0.cgroup()?.clone();
        blocking(move || cg.set_frozen(true, DESTROY_DEADLINE)).await?;
        Ok(Response::new(pb::PauseResponse {}))
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeResponse>, Status> {
        let cg = self.0.cgroup()?.clone();
        blocking(move || cg.set_frozen(false, DESTROY_DEADLINE)).await?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let s = &self.0;
        if let Some(cg) = s.cgroup.clone() {
            blocking(move || cg.kill_all(DESTROY_DEADLINE)).await?;
        } else if s.init_alive() {
            let _ = nix::sys::signal::kill(Pid::from_raw(s.init_pid), Signal::SIGKILL);
        }
        // The init is gone: wait (bounded) for the reaper to record its exit.
        let mut rx = s.exit.clone();
        let exit = match tokio::time::timeout(DESTROY_DEADLINE, rx.wait_for(|e| e.is_some())).await {
            Ok(Ok(e)) => e.clone(),
            _ => return Err(Status::deadline_exceeded("the container's init was not reaped in time")),
        };
        match tokio::time::timeout(CALL_DEADLINE, s.backend.delete(&s.reaper, &s.id)).await {
            Err(_) => return Err(Status::deadline_exceeded("the runtime's delete did not finish in time")),
            Ok(Err(e)) => return Err(Status::internal(e)),
            Ok(Ok(())) => {}
        }
        if let Some(cg) = s.cgroup.clone() {
            blocking(move || cg.remove(DESTROY_DEADLINE)).await?;
        }
        s.deleted.store(true, Ordering::SeqCst);
        Ok(Response::new(pb::DeleteResponse { exit: exit.as_ref().map(exit_to_pb) }))
    }

    type ExecStream = super::exec::Outputs;

    async fn exec(&self, req: Request<tonic::Streaming<pb::ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(super::exec::exec(self.0.clone(), req.into_inner()).await?))
    }

    type AttachStream = tokio_stream::wrappers::ReceiverStream<Result<pb::AttachResponse, Status>>;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = self
            .0
            .input
            .clone()
            .try_lock_owned()
            .map_err(|_| Status::failed_precondition("another client is attached to the container's input"))?;
        if input.is_none() {
            return Err(Status::failed_precondition("the container has no terminal or open stdin to attach to"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send(Ok(pb::AttachResponse {})).await;
        let stream = req.into_inner();
        tokio::spawn(async move {
            if let Some(input) = input.as_mut() {
                let gone = {
                    let tx = tx.clone();
                    async move { tx.closed().await }
                };
                if let Err(e) = super::exec::attach(input, stream, gone).await {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn reopen_log(&self, _: Request<pb::ReopenLogRequest>) -> Result<Response<pb::ReopenLogResponse>, Status> {
        let Some(log) = &self.0.cri_log else {
            return Err(Status::failed_precondition("the container has no CRI log file"));
        };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.reopen().map_err(|e| Status::internal(format!("reopening {}: {e}", log.path().display())))?;
        Ok(Response::new(pb::ReopenLogResponse {}))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownResponse>, Status> {
        let s = &self.0;
        if !s.deleted.load(Ordering::SeqCst) && s.init_alive() {
            return Err(Status::failed_precondition("the container is still running: delete it first"));
        }
        s.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}
