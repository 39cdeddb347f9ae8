//! Images end to end against a real agent: OCI layouts and `docker save` archives built here
//! from busybox-static, imported with huskctl, run through overlay rootfses that share the
//! unpacked layers, the image config applied, and removal and pruning that never take an image
//! a live container runs from.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "common/agent.rs"]
mod fixture;

use fixture::{huskctl, ok, Agent};

#[path = "common/image.rs"]
mod image;
use image::{oci_layout, sha256, tar_of};

/// A tar with whiteouts: `.wh.old` hides the base's `data/old`, an opaque `etc/app.d` hides
/// the base's directory of that name.
fn upper_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("etc/motd", b"layered\n", tar::EntryType::Regular);
    add("data/.wh.old", b"", tar::EntryType::Regular);
    add("etc/app.d/", b"", tar::EntryType::Directory);
    add("etc/app.d/.wh..wh..opq", b"", tar::EntryType::Regular);
    add("etc/app.d/new.conf", b"new\n", tar::EntryType::Regular);
    b.into_inner().unwrap()
}

fn base_layer(files: &Path) -> Vec<u8> {
    let root = files.join("base");
    common::busybox_rootfs(&root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/old"), "old\n").unwrap();
    std::fs::write(root.join("data/keep"), "kept\n").unwrap();
    std::fs::create_dir_all(root.join("etc/app.d")).unwrap();
    std::fs::write(root.join("etc/app.d/old.conf"), "old\n").unwrap();
    tar_of(&root)
}

/// Overlay mounts below `dir` (mountinfo: the mount point is field 5, the type follows `-`).
fn overlay_mounts_under(dir: &Path) -> usize {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4).is_some_and(|m| Path::new(m).starts_with(dir)))
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("overlay ")))
        .count()
}

#[test]
fn images_import_run_share_layers_and_prune() {
    require!(false);
    let mut agent = Agent::start("images");
    let files = tempfile::tempdir().unwrap();
    let layout = files.path().join("layout");
    let config = serde_json::json!({"config": {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo from the image; cat /etc/motd"],
        "Env": ["PATH=/bin", "FROM_IMAGE=yes", "MODE=image"],
        "WorkingDir": "/work",
    }});
    let digest = oci_layout(&layout, &[base_layer(files.path()), upper_layer()], config, "1");

    // A bare tag needs a name.
    let out = huskctl(&agent, &["import", layout.to_str().unwrap()]);
    assert!(out.status.code() == Some(1) && out.stderr.contains("--name"), "{}", out.stderr);
    let imported = ok(&agent, &["import", layout.to_str().unwrap(), "--name", "localhost/test"]);
    assert_eq!(imported, format!("localhost/test:1 {digest}\n"));
    let listed: serde_json::Value = serde_json::from_str(&ok(&agent, &["images", "-o", "json"])).unwrap();
    assert_eq!(listed["images"][0]["names"][0], "localhost/test:1", "{listed}");
    assert_eq!(listed["images"][0]["layers"], 2);

    // The image's entrypoint and cmd, in its working directory.
    let out = ok(&agent, &["run", "--rm", "--image", "localhost/test:1"]);
    assert_eq!(out, "from the image\nlayered\n");
    // A shell command instead; the image's environment below the user's; whiteouts applied;
    // the rootfs writable.
    let script = "pwd; echo $FROM_IMAGE $MODE; test -e /data/old || echo whiteout; cat /data/keep; \
                  ls /etc/app.d; echo new > /data/new && echo writable";
    let out = ok(&agent, &["run", "--rm", "--image", "localhost/test:1", "-e", "MODE=user", "--", script]);
    assert_eq!(out, "/work\nyes user\nwhiteout\nkept\nnew.conf\nwritable\n");
    // Entrypoint plus an argv with --no-shell.
    let out = ok(&agent, &["run", "--rm", "--image", "localhost/test:1", "--no-shell", "--", "echo argv"]);
    assert_eq!(out, "argv\n");

    // Two containers share the unpacked layers: overlays over the same directories, no copy.
    for id in ["one", "two"] {
        ok(&agent, &["run", "-d", "--id", id, "--image", "localhost/test:1", "--", "touch /written; sleep 300"]);
    }
    let layers = agent.path("work/images/layers");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 2, "each layer unpacked once");
    for id in ["one", "two"] {
        let dir = agent.path("work/containers").join(id);
        assert_eq!(overlay_mounts_under(&dir), 1, "{id} runs on an overlay");
        for _ in 0..100 {
            if dir.join("rootfs.layer/upper/written").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(dir.join("rootfs.layer/upper/written").exists(), "writes land in the container's own layer");
        assert!(!dir.join("rootfs.layer/upper/bin").exists(), "nothing of the image is copied");
    }
    for l in std::fs::read_dir(&layers).unwrap().flatten() {
        assert!(!l.path().join("written").exists() && !l.path().join("data/new").exists(), "layers untouched");
    }
    let listed: serde_json::Value = serde_json::from_str(&ok(&agent, &["images", "-o", "json"])).unwrap();
    assert_eq!(listed["images"][0]["containers"], 2);

    // An agent killed and restarted: the containers run on, on their overlays, and still hold
    // their image.
    agent.kill9();
    agent.restart();
    assert_eq!(ok(&agent, &["ps", "-q"]).lines().count(), 2);
    for id in ["one", "two"] {
        let dir = agent.path("work/containers").join(id);
        assert_eq!(overlay_mounts_under(&dir), 1, "{id} kept its rootfs");
        assert!(dir.join("rootfs.layer/upper/written").exists());
    }
    // In use: rmi refuses, prune keeps it.
    let out = huskctl(&agent, &["rmi", "localhost/test:1"]);
    assert!(out.status.code() == Some(1) && out.stderr.contains("used by a live container"), "{}", out.stderr);
    assert!(!ok(&agent, &["prune"]).contains("removed"));
    // Destroyed: the rootfs is unmounted and removed with its layer; the sandbox stays until
    // the container is removed.
    ok(&agent, &["stop", "one"]);
    let one = agent.path("work/containers/one");
    assert_eq!(overlay_mounts_under(&one), 0, "unmounted with the container");
    assert!(!one.join("rootfs").exists() && !one.join("rootfs.layer").exists());
    assert!(one.join("sandbox/stdout").exists());
    ok(&agent, &["rm", "-f", "one", "two"]);
    assert_eq!(overlay_mounts_under(&agent.path("work/containers/two")), 0, "unmounted with the container");
    // Excluded: kept; then removed with its content.
    assert!(!ok(&agent, &["prune", "--exclude", "localhost/test:1"]).contains("removed"));
    let out = ok(&agent, &["prune"]);
    assert!(out.contains("removed localhost/test:1"), "{out}");
    assert_eq!(ok(&agent, &["images", "-q"]), "");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(agent.path("work/images/blobs/sha256")).unwrap().count(), 0);

    // A launch from an image the store lacks and no registry has fails, and changes nothing.
    let out = huskctl(&agent, &["run", "--image", "localhost:1/none:1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("container.mesos.image.docker.name"), "{}", out.stderr);
    assert_eq!(ok(&agent, &["ps", "-aq"]), "");
}

#[test]
fn docker_save_archives_and_the_copy_backend() {
    require!(false);
    let agent = Agent::start_with("images-copy", "image_backend = \"copy\"\n");
    let files = tempfile::tempdir().unwrap();
    // `docker save` layout: manifest.json, the config, `<id>/layer.tar`.
    let save = files.path().join("save");
    std::fs::create_dir_all(save.join("l1")).unwrap();
    std::fs::create_dir_all(save.join("l2")).unwrap();
    let (base, upper) = (base_layer(files.path()), upper_layer());
    std::fs::write(save.join("l1/layer.tar"), &base).unwrap();
    std::fs::write(save.join("l2/layer.tar"), &upper).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", "cat /etc/motd; ls /etc/app.d; test -e /data/old || echo whiteout"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&base)), format!("sha256:{}", sha256(&upper))]}});
    std::fs::write(save.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let list = serde_json::json!([{"Config": "config.json", "RepoTags": ["saved:v2"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]);
    std::fs::write(save.join("manifest.json"), serde_json::to_vec(&list).unwrap()).unwrap();
    let archive = files.path().join("saved.tar");
    std::fs::write(&archive, tar_of(&save)).unwrap();

    let out = ok(&agent, &["import", archive.to_str().unwrap()]);
    assert!(out.starts_with("docker.io/library/saved:v2 sha256:"), "{out}");
    // The copy backend: the same view, as a plain directory.
    let out = ok(&agent, &["run", "--rm", "--image", "saved:v2"]);
    assert_eq!(out, "layered\nnew.conf\nwhiteout\n");
    ok(&agent, &["run", "-d", "--id", "c", "--image", "saved:v2", "--", "sleep 300"]);
    let dir = agent.path("work/containers/c");
    assert_eq!(overlay_mounts_under(&dir), 0);
    assert!(dir.join("rootfs/bin/busybox").exists(), "the layers were copied");
    ok(&agent, &["stop", "-t", "0", "c"]);
    assert!(!dir.join("rootfs").exists(), "the copy goes when the container is destroyed");
    ok(&agent, &["rm", "c"]);
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(agent.path("work/images/tmp")).unwrap().count(), 0, "nothing staged is left");
    let out = ok(&agent, &["rmi", "saved:v2"]);
    assert!(out.contains("untagged docker.io/library/saved:v2") && out.contains("freed"), "{out}");
}

/// Debian's `docker-registry` on a loopback port, storing in a temporary directory.
struct Registry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        // Owned (and killed on drop) before anything can fail.
        let registry = Registry { child, _dir: dir, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {}", registry.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_from_a_registry_on_loopback() {
    require!(false);
    for tool in ["docker-registry", "skopeo"] {
        if common::which(tool).is_none() {
            if std::env::var("HUSK_ALLOW_SKIP").as_deref() == Ok("1") {
                eprintln!("SKIPPED: {tool} is not installed");
                return;
            }
            panic!("{tool} is not installed (apt-get install -y docker-registry skopeo)");
        }
    }
    let registry = Registry::start();
    let files = tempfile::tempdir().unwrap();
    let layout = files.path().join("layout");
    let config = serde_json::json!({"config": {"Cmd": ["/bin/sh", "-c", "echo pulled; cat /etc/motd"]}});
    oci_layout(&layout, &[base_layer(files.path()), upper_layer()], config, "1");
    let name = format!("{}/team/app:1", registry.addr);
    let seeded = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(seeded.status.success(), "skopeo: {}", String::from_utf8_lossy(&seeded.stderr));

    let agent = Agent::start_with("images-pull", &format!("insecure_registries = [\"{}\"]\n", registry.addr));
    let out = ok(&agent, &["pull", &name]);
    assert!(out.starts_with(&format!("{name} sha256:")), "{out}");
    // A second pull finds every blob in the store.
    ok(&agent, &["pull", &name]);
    assert_eq!(std::fs::read_dir(agent.path("work/images/layers")).unwrap().count(), 2);
    let out = ok(&agent, &["run", "--rm", "--image", &name]);
    assert_eq!(out, "pulled\nlayered\n");
    // Not there: NotFound, nothing named.
    let out = huskctl(&agent, &["pull", &format!("{}/team/app:nope", registry.addr)]);
    assert!(out.status.code() == Some(1) && out.stderr.contains("NotFound"), "{}", out.stderr);
    assert_eq!(ok(&agent, &["images", "-q"]).lines().count(), 1);
    // Without --insecure-registry the agent speaks TLS, which the registry does not.
    let strict = Agent::start("images-strict");
    let out = huskctl(&strict, &["pull", &name]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(strict.path("work/images/blobs/sha256")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(strict.path("work/images/tmp")).unwrap().count(), 0);
}

/// A registry serving an OCI layout anonymously over plain HTTP that, while `stall` is set,
/// holds every layer's transfer halfway: what a hung registry is to a pull. Each time it starts
/// holding one it says so on `stalled`.
struct StallingRegistry {
    addr: String,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::mpsc::Receiver<()>,
}

impl StallingRegistry {
    fn start(layout: &Path) -> StallingRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, stalled) = std::sync::mpsc::channel();
        let (layout, held) = (layout.to_path_buf(), stall.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (layout, held, tx) = (layout.clone(), held.clone(), tx.clone());
                std::thread::spawn(move || Self::serve(conn, &layout, &held, &tx));
            }
        });
        StallingRegistry { addr, stall, stalled }
    }

    fn serve(
        mut conn: std::net::TcpStream,
        layout: &Path,
        stall: &std::sync::atomic::AtomicBool,
        stalled: &std::sync::mpsc::Sender<()>,
    ) {
        use std::io::{BufRead, Write};
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut request = String::new();
        let _ = reader.read_line(&mut request);
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
        let path = request.split_whitespace().nth(1).unwrap_or_default().to_string();
        let blob = |digest: &str| std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let (body, kind, digest) = if path.contains("/manifests/") {
            let digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
            (blob(&digest).ok(), "application/vnd.oci.image.manifest.v1+json", digest)
        } else if let Some((_, digest)) = path.split_once("/blobs/") {
            (blob(digest).ok(), "application/octet-stream", digest.to_string())
        } else {
            (None, "", String::new())
        };
        let Some(body) = body else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nDocker-Content-Digest: {digest}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let layer = body.len() > 64 * 1024;
        if layer && stall.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = conn.write_all(&body[..body.len() / 2]);
            let _ = conn.flush();
            let _ = stalled.send(());
            while stall.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let _ = conn.write_all(&body);
    }

    /// Waits until a layer's transfer is being held.
    fn wait_stalled(&self) {
        self.stalled.recv_timeout(Duration::from_secs(60)).expect("the pull never reached a layer");
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Whether `dir` gets an entry within 30 s.
fn gets_entries(dir: &Path) -> bool {
    (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        entries(dir) > 0
    })
}

#[test]
fn a_pull_interrupted_by_kill_or_by_the_agent_dying_leaves_a_reusable_store() {
    require!(false);
    let files = tempfile::tempdir().unwrap();
    let layout = files.path().join("layout");
    let config = serde_json::json!({"config": {"Cmd": ["/bin/echo", "pulled at last"]}});
    oci_layout(&layout, &[base_layer(files.path())], config, "1");
    let registry = StallingRegistry::start(&layout);
    let name = format!("{}/slow/app:1", registry.addr);
    let mut agent = Agent::start_with("images-cancel", &format!("insecure_registries = [\"{}\"]\n", registry.addr));
    let tmp = agent.path("work/images/tmp");

    // A Kill of a launch whose image is on its way: the launch ends ABORTED, the half-written
    // layer goes, no container is left.
    let run = fixture::huskctl_command(&agent, &["run", "-d", "--id", "slow", "--image", &name, "--", "true"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    registry.wait_stalled();
    assert!(gets_entries(&tmp), "the layer is being written under tmp/");
    // The id is taken meanwhile.
    let out = huskctl(&agent, &["run", "-d", "--id", "slow", "--", "true"]);
    assert!(out.status.code() == Some(1) && out.stderr.contains("already in use"), "{}", out.stderr);
    ok(&agent, &["kill", "slow"]);
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cancelled") && stderr.contains("image"), "{stderr}");
    assert_eq!(entries(&tmp), 0, "nothing half-written is left");
    assert_eq!(ok(&agent, &["ps", "-aq"]), "");
    assert_eq!(ok(&agent, &["images", "-q"]), "");
    let out = huskctl(&agent, &["kill", "slow"]);
    assert!(out.status.code() == Some(1) && out.stderr.contains("NotFound"), "{}", out.stderr);

    // The agent killed during a pull: the next start empties tmp/.
    let pull = fixture::huskctl_command(&agent, &["pull", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    registry.wait_stalled();
    assert!(gets_entries(&tmp));
    agent.kill9();
    let mut pull = pull;
    assert!(!pull.wait().unwrap().success(), "the pull died with the agent");
    agent.restart();
    assert_eq!(entries(&tmp), 0, "the restarted agent discarded the interrupted write");

    // And reuses the store: the pull completes, the container runs.
    registry.stall.store(false, std::sync::atomic::Ordering::SeqCst);
    let out = ok(&agent, &["run", "--rm", "--image", &name]);
    assert_eq!(out, "pulled at last\n");
    assert_eq!(entries(&agent.path("work/images/layers")), 1);
    assert_eq!(entries(&tmp), 0);
}
