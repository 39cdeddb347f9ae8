//! CNI networking: the network configurations in `--cni-conf-dir`, the plugins in
//! `--cni-bin-dir`, run as the CNI specification says (ADD on setup, DEL on teardown, each
//! plugin of a list in turn with the previous one's result).
//!
//! A container on a CNI network runs in a network namespace the agent makes and pins to
//! `<runtime dir>/netns/<id>` before the container is created; the container joins it by path.
//! What ADD was given and answered is checkpointed in the container's directory first, so a
//! restarted agent (or one after a reboot, with the namespace gone) still runs the DEL that
//! gives the IP back and takes the port mappings down.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tonic::Status;

/// The interface the container sees.
pub const IFNAME: &str = "eth0";
/// The checkpoint in the container's directory.
pub const STATE_FILE: &str = "network.json";
/// A plugin that has not answered by then is killed and the operation fails.
const PLUGIN_DEADLINE: Duration = Duration::from_secs(60);

/// Where networks come from.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

/// One network: a `.conflist`, or a single-plugin `.conf`/`.json` made into a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The file it was read from.
    pub file: PathBuf,
}

/// A port mapping, as the portmap plugin's `runtimeConfig.portMappings` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The checkpoint of a container's network: everything DEL needs, even with the configuration
/// directory changed since.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub network: Network,
    pub container_id: String,
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    /// `CNI_ARGS` (`K=V;K=V`).
    #[serde(default)]
    pub args: String,
    /// The last plugin's answer to ADD (absent until ADD succeeded).
    pub result: Option<Value>,
}

impl Attachment {
    /// The container's addresses, without prefix length (`10.88.0.5`).
    pub fn ips(&self) -> Vec<String> {
        let ips = self.result.as_ref().and_then(|r| r.get("ips")).and_then(Value::as_array);
        ips.into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect()
    }

    pub fn load(dir: &Path) -> std::io::Result<Option<Attachment>> {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        husk_oci::checkpoint::write_atomic(&dir.join(STATE_FILE), &json, 0o600)
    }
}

fn read_network(path: &Path) -> Result<Network, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let name = field("name").filter(|n| !n.is_empty()).ok_or("no `name`")?;
    let cni_version = field("cniVersion").unwrap_or_else(|| "0.4.0".into());
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        Some(_) => return Err("`plugins` must be a non-empty list".into()),
        None if field("type").is_some() => vec![v.clone()],
        None => return Err("neither `plugins` nor `type`".into()),
    };
    for (i, p) in plugins.iter().enumerate() {
        let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
        if t.is_empty() || t.contains('/') || t.starts_with('.') {
            return Err(format!("plugins[{i}].type must name a plugin binary"));
        }
    }
    Ok(Network { name, cni_version, plugins, file: path.to_path_buf() })
}

impl Cni {
    /// The networks of the configuration directory, in file-name order (the first is the
    /// default, as for the kubelet). Read at each use: an edit applies to the next launch.
    /// Files that do not parse are skipped with an error logged.
    pub fn networks(&self) -> Vec<Network> {
        let Ok(entries) = std::fs::read_dir(&self.conf_dir) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf" || e == "json"))
            .collect();
        files.sort();
        let mut out: Vec<Network> = Vec::new();
        for f in files {
            match read_network(&f) {
                Ok(n) if out.iter().any(|o| o.name == n.name) => {
                    tracing::warn!("CNI config {}: network `{}` is already defined; ignored", f.display(), n.name)
                }
                Ok(n) => out.push(n),
                Err(e) => tracing::error!("CNI config {}: {e}; ignored", f.display()),
            }
        }
        out
    }

    /// The network called `name`, with an error that names the field and what is configured.
    pub fn network(&self, name: &str, field: &str) -> Result<Network, Status> {
        let all = self.networks();
        all.iter().find(|n| n.name == name).cloned().ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
            Status::invalid_argument(format!(
                "{field}: no CNI network `{}` in {} (configured: {})",
                name.escape_debug(),
                self.conf_dir.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })
    }

    /// The first plugin binary missing from the plugin directories, if any.
    pub fn missing_plugin(&self, n: &Network) -> Option<String> {
        n.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .find(|t| self.plugin(t).is_none())
            .map(str::to_string)
    }

    fn plugin(&self, typ: &str) -> Option<PathBuf> {
        self.bin_dirs.iter().map(|d| d.join(typ)).find(|p| p.is_file())
    }

    /// ADD of every plugin of the attachment's network, in order; the last result.
    /// The namespace's loopback device comes up first (the `loopback` plugin, when the network
    /// does not run it itself), as containerd and CRI-O do.
    pub async fn add(&self, a: &Attachment) -> Result<Value, String> {
        let has_loopback = a.network.plugins.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("loopback"));
        if !has_loopback && self.plugin("loopback").is_some() {
            self.exec("ADD", a, &json!({"type": "loopback"}), None).await?;
        }
        let mut prev: Option<Value> = None;
        for p in &a.network.plugins {
            let r = self.exec("ADD", a, p, prev.as_ref()).await?;
            prev = Some(r);
        }
        prev.ok_or_else(|| "the network has no plugins".into())
    }

    /// DEL of every plugin, in reverse order, each with the ADD's result. Every plugin is
    /// asked even when one fails; the first failure is returned.
    pub async fn del(&self, a: &Attachment) -> Result<(), String> {
        let mut first = None;
        for p in a.network.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", a, p, a.result.as_ref()).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn exec(&self, command: &str, a: &Attachment, plugin: &Value, prev: Option<&Value>) -> Result<Value, String> {
        let typ = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
        let bin = self.plugin(typ).ok_or_else(|| format!("CNI plugin `{typ}` is not in {}", self.path_var()))?;
        let conf = plugin_config(&a.network, plugin, prev, &a.port_mappings);
        // Not a pinned namespace (gone after a reboot, or a pin cut short): DEL still runs, with
        // no namespace, so the IP goes back to the pool.
        let netns = match is_pinned(&a.netns) {
            true => a.netns.display().to_string(),
            false => String::new(),
        };
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", self.path_var())
            .env("CNI_ARGS", &a.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("running {}: {e}", bin.display()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = serde_json::to_vec(&conf).map_err(|e| e.to_string())?;
        let out = tokio::time::timeout(PLUGIN_DEADLINE, async move {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&input).await?;
            drop(stdin);
            child.wait_with_output().await
        })
        .await
        .map_err(|_| format!("CNI plugin `{typ}` {command} did not finish within a minute"))?
        .map_err(|e| format!("CNI plugin `{typ}` {command}: {e}"))?;
        if !out.status.success() {
            return Err(plugin_error(typ, command, &out.stdout, &out.stderr));
        }
        if command == "DEL" || out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(prev.cloned().unwrap_or(Value::Null));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("CNI plugin `{typ}` {command}: its answer is not JSON: {e}"))
    }

    fn path_var(&self) -> String {
        self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    }
}

/// What a plugin reads on stdin: its own section, with the list's `name` and `cniVersion`, the
/// previous plugin's result, and the runtime config its `capabilities` ask for.
fn plugin_config(n: &Network, plugin: &Value, prev: Option<&Value>, ports: &[PortMapping]) -> Value {
    let mut conf = plugin.clone();
    let Some(m) = conf.as_object_mut() else { return conf };
    m.insert("name".into(), json!(n.name));
    m.insert("cniVersion".into(), json!(n.cni_version));
    if let Some(p) = prev.filter(|p| !p.is_null()) {
        m.insert("prevResult".into(), p.clone());
    }
    let wants_ports =
        plugin.get("capabilities").and_then(|c| c.get("portMappings")).and_then(Value::as_bool).unwrap_or(false);
    if wants_ports && !ports.is_empty() {
        m.insert("runtimeConfig".into(), json!({ "portMappings": ports }));
    }
    conf
}

/// A failed plugin's error: the spec's `{code, msg, details}` on stdout, else its stderr.
fn plugin_error(typ: &str, command: &str, stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        let code = v.get("code").and_then(Value::as_u64).unwrap_or_default();
        if !msg.is_empty() {
            let details = if details.is_empty() { String::new() } else { format!(" ({details})") };
            return format!("CNI plugin `{typ}` {command} failed (code {code}): {msg}{details}");
        }
    }
    let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
    format!("CNI plugin `{typ}` {command} failed: {}", text.trim())
}

/// Whether `path` is a namespace (nsfs) mounted there, not just the empty file under it.
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes a network namespace and pins it to `path` (a bind mount of the namespace on an
/// empty file), from a thread of its own: unsharing changes only that thread's namespace,
/// and the thread ends right after.
pub fn pin_new_netns(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // The caller owns the id: anything there is a stale pin of an earlier container.
    unpin_netns(path)?;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(path)?;
    let target = path.to_path_buf();
    let pinned = std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?;
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// Unpins (the namespace goes once nothing else holds it) and removes the file. Absent: done.
pub fn unpin_netns(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn networks_in_file_order_single_plugin_files_become_lists() {
        let d = dir_with(&[
            ("20-b.conf", r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#),
            ("10-a.conflist", r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#),
            ("30-dup.conflist", r#"{"name":"a","plugins":[{"type":"x"}]}"#),
            ("40-bad.conflist", r#"{"name":"c","plugins":[{"type":"../../bin/sh"}]}"#),
            ("50-broken.json", "{"),
            ("README", "not a config"),
        ]);
        let cni = Cni { conf_dir: d.path().into(), bin_dirs: vec![] };
        let nets = cni.networks();
        let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(nets[0].plugins.len(), 2);
        assert_eq!(nets[1].plugins[0]["type"], "bridge");
        let e = cni.network("zzz", "container.network_infos[0].name").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("container.network_infos[0].name: no CNI network `zzz`"), "{}", e.message());
        assert!(e.message().contains("configured: a, b"), "{}", e.message());
        assert_eq!(cni.missing_plugin(&nets[0]).as_deref(), Some("bridge"));
    }

    #[test]
    fn plugin_config_carries_name_version_prev_result_and_asked_for_ports() {
        let n = Network { name: "net".into(), cni_version: "1.0.0".into(), plugins: vec![], file: PathBuf::from("x") };
        let ports =
            [PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() }];
        let prev = json!({"ips": [{"address": "10.1.0.2/24"}]});
        let c =
            plugin_config(&n, &json!({"type": "portmap", "capabilities": {"portMappings": true}}), Some(&prev), &ports);
        assert_eq!(c["name"], "net");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(
            c["runtimeConfig"]["portMappings"][0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
        let c = plugin_config(&n, &json!({"type": "bridge"}), None, &ports);
        assert!(c.get("runtimeConfig").is_none() && c.get("prevResult").is_none());
    }

    #[test]
    fn plugin_errors_use_the_spec_error_else_stderr() {
        let e = plugin_error("bridge", "ADD", br#"{"code":7,"msg":"bad config","details":"x"}"#, b"");
        assert_eq!(e, "CNI plugin `bridge` ADD failed (code 7): bad config (x)");
        assert_eq!(plugin_error("p", "DEL", b"", b" boom \n"), "CNI plugin `p` DEL failed: boom");
    }

    #[test]
    fn ips_drop_the_prefix_length() {
        let a = Attachment {
            network: Network { name: "n".into(), cni_version: "1.0.0".into(), plugins: vec![], file: "f".into() },
            container_id: "c".into(),
            netns: "/nonexistent".into(),
            port_mappings: vec![],
            args: String::new(),
            result: Some(json!({"ips": [{"address": "10.1.0.2/24"}, {"address": "fd00::2/64"}]})),
        };
        assert_eq!(a.ips(), ["10.1.0.2", "fd00::2"]);
    }
}
