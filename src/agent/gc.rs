//! What the agent cleans up on its own: after recovery, everything no checkpoint claims (shims,
//! cgroups, mounts, half-made container directories); while it runs, the sandboxes of
//! terminated containers once their time is up.
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk_shim::cgroups::{Cgroup, Layout};

use super::container::LAUNCH_FILE;
use super::{sweep, Agent};

/// How often the garbage collector looks at terminated containers.
const GC_INTERVAL: Duration = Duration::from_secs(60);

impl Agent {
    /// Ids of the containers that still need their shim, cgroup and mounts.
    fn live_ids(&self) -> HashSet<String> {
        self.containers.lock().unwrap().values().filter(|c| c.terminated().is_none()).map(|c| c.id.clone()).collect()
    }

    /// Destroys what no checkpoint claims: shims of unknown or terminated containers, their
    /// cgroups under the cgroup root, mounts under their directories, and container
    /// directories that never got as far as a checkpointed launch. Returns what it destroyed.
    pub(super) async fn sweep_orphans(&self) -> Vec<String> {
        let mut destroyed = Vec::new();
        let mut live = self.live_ids();
        let known: HashSet<String> = self.containers.lock().unwrap().keys().cloned().collect();
        let containers = self.settings.work_dir.join("containers");
        // A container whose checkpoint could not be read is still claimed by it: its shim,
        // cgroup and mounts stay until an operator looks (the error is in the log).
        for entry in std::fs::read_dir(&containers).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&id) && entry.path().join(LAUNCH_FILE).exists() {
                tracing::error!(container = %id, "its checkpoint is unreadable: leaving its shim, cgroup and files alone");
                live.insert(id);
            }
        }

        // Shims first: they would recreate nothing, but they hold the container processes.
        if let Ok(entries) = std::fs::read_dir(self.settings.runtime_dir.join("shims")) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if live.contains(&id) {
                    continue;
                }
                // The runtime it was launched with, when its launch is still readable.
                let runtime = self
                    .containers
                    .lock()
                    .unwrap()
                    .get(&id)
                    .and_then(|c| c.launch.runtime.clone())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| self.settings.runtime.clone());
                let out = tokio::process::Command::new(&self.settings.shim_binary)
                    .arg("cleanup")
                    .args(["--id", &id, "--runtime", &runtime, "--bundle"])
                    .arg(containers.join(&id).join("bundle"))
                    .arg("--sandbox")
                    .arg(containers.join(&id).join("sandbox"))
                    .arg("--state-dir")
                    .arg(entry.path())
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                let failure = match tokio::time::timeout(super::SHIM_DEADLINE, out).await {
                    Ok(Ok(o)) if o.status.success() => None,
                    Ok(Ok(o)) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("did not finish within a minute".into()),
                };
                if let Some(why) = failure {
                    // Its state dir stays: it is how the next start finds the shim again.
                    tracing::error!(container = %id, "orphan shim cleanup failed, kept for the next try: {why}");
                    continue;
                }
                match sweep::remove_tree(&entry.path()) {
                    Ok(()) => destroyed.push(format!("shim {id}")),
                    Err(e) => tracing::error!(container = %id, "removing {}: {e}", entry.path().display()),
                }
            }
        }

        // Cgroups under the root that no live container owns (the shims' own cgroup excepted).
        let root = self.settings.translation.cgroup_root.trim_matches('/').to_string();
        if let Ok(layout) = Layout::detect() {
            let mut ids = HashSet::new();
            if let Ok(probe) = Cgroup::new(layout.clone(), &Path::new("/").join(&root)) {
                for dir in probe.dirs() {
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            ids.insert(e.file_name().to_string_lossy().into_owned());
                        }
                    }
                }
            }
            // Only names a container could have: never the shims' cgroup, never a systemd unit
            // (every unit name has a `.`, no container id has).
            let claimable = |id: &String| {
                let cid = husk_proto::mesos::v1::ContainerId { value: id.clone(), parent: None };
                husk_oci::validate::container_id(&cid, "id").is_ok()
            };
            for id in ids.into_iter().filter(|id| claimable(id) && !live.contains(id)) {
                let Ok(cg) = Cgroup::new(layout.clone(), &Path::new("/").join(&root).join(&id)) else { continue };
                let killed = tokio::task::spawn_blocking(move || {
                    cg.kill_all(Duration::from_secs(10)).and_then(|_| cg.remove(Duration::from_secs(10)))
                })
                .await;
                match killed {
                    Ok(Ok(())) => destroyed.push(format!("cgroup {id}")),
                    Ok(Err(e)) => tracing::error!(container = %id, "removing the orphan cgroup: {e}"),
                    Err(e) => tracing::error!(container = %id, "removing the orphan cgroup: {e}"),
                }
            }
        }

        // Container directories: mounts of containers that are not live go; a directory
        // without its launch checkpoint (the agent died creating it) goes entirely.
        for entry in std::fs::read_dir(&containers).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&id) {
                continue;
            }
            match sweep::unmount_all_under(&entry.path()) {
                Ok(0) => {}
                Ok(n) => destroyed.push(format!("{n} mount(s) of {id}")),
                Err(e) => tracing::error!(container = %id, "unmounting: {e}"),
            }
            if !known.contains(&id) && !entry.path().join(LAUNCH_FILE).exists() {
                match sweep::remove_tree(&entry.path()) {
                    Ok(()) => destroyed.push(format!("directory {id}")),
                    Err(e) => tracing::error!(container = %id, "removing {}: {e}", entry.path().display()),
                }
            }
        }
        for what in &destroyed {
            tracing::warn!("destroyed an orphan: {what}");
        }
        destroyed
    }

    /// How long terminated sandboxes are kept now: Mesos' `gc_delay * max(0, 1 - headroom -
    /// disk usage)` of the work dir's filesystem.
    pub(super) fn gc_age(&self) -> Duration {
        let usage = sweep::disk_usage(&self.settings.work_dir);
        self.settings.gc_delay.mul_f64((1.0 - self.settings.gc_disk_headroom - usage).max(0.0))
    }

    /// Removes the sandbox and bundle of every terminated container whose termination is older
    /// than the current GC age. The small record stays, so Wait and Status still answer, until
    /// Remove.
    pub(super) async fn collect_garbage(&self) {
        let age = self.gc_age();
        let now = super::now_ns();
        let due: Vec<_> = self
            .all()
            .into_iter()
            .filter(|c| c.terminated().is_some())
            .filter(|c| {
                let cp = c.checkpoint.lock().unwrap();
                let at = cp.terminated_ns.unwrap_or(cp.created_ns);
                cp.collected_ns.is_none() && now.saturating_sub(at) >= age.as_nanos().min(i64::MAX as u128) as i64
            })
            .collect();
        for c in due {
            let _op = c.op.lock().await;
            // Everything large: the sandbox, the bundle, the rootfs overlay's writable layer.
            let dirs = [c.sandbox(), c.bundle(), c.shim_dir.clone(), c.dir.join("rootfs"), c.dir.join("rootfs.layer")];
            let removed = tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| sweep::remove_tree(d)))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let recorded = removed.and_then(|_| {
                let mut cp = c.checkpoint.lock().unwrap();
                cp.collected_ns = Some(now);
                super::container::save(&c.dir, &cp)
            });
            match recorded {
                Ok(()) => {
                    tracing::info!(container = %c.id, after = ?age, "garbage collected its sandbox");
                    self.metrics.gc_removals.inc();
                }
                Err(e) => {
                    self.metrics.destroy_errors.inc();
                    tracing::error!(container = %c.id, "garbage collection: {e}");
                }
            }
        }
    }

    /// Runs the garbage collector every minute (or sooner when the delay is shorter).
    pub(super) fn spawn_gc(self: &Arc<Self>) {
        let agent = Arc::downgrade(self);
        let every = GC_INTERVAL.min(self.settings.gc_delay.max(Duration::from_millis(200)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(agent) = agent.upgrade() else { return };
                agent.collect_garbage().await;
            }
        });
    }
}
