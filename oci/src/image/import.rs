//! Importing images from files: OCI image layouts (directories or tarballs, as `skopeo copy`,
//! `umoci` and `docker save` since Docker 25 write them) and classic `docker save` archives
//! (`manifest.json` with `RepoTags`, `<id>/layer.tar`).
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::store::Store;
use super::{check_digest, ImageError, Reference, Result};

/// An image the import named.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub name: String,
    pub digest: String,
}

/// Imports every image in `path` (a directory or a tar, gzipped or not). `name` names the
/// images whose archive gives none (an OCI layout's bare tag), or renames the one image of an
/// archive with a single image. Layers are unpacked, so a broken layer fails the import.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Vec<Imported>> {
    if let Some(n) = name {
        Reference::parse(n)?;
    }
    let meta = std::fs::metadata(path).map_err(|e| ImageError::NotFound(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        return import_dir(store, path, name);
    }
    let scratch = store.scratch_dir("import")?;
    let result = (|| {
        let mut file = File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let mut magic = [0u8; 2];
        let n = file.read(&mut magic).map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
        let file = File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        let stream: Box<dyn Read> = match (n, magic) {
            (2, [0x1f, 0x8b]) => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file))),
            _ => Box::new(io::BufReader::new(file)),
        };
        // A tar's first header has the ustar magic. Anything else is refused before the tar
        // reader sees it: its errors quote the bytes they choke on (the file's content).
        let mut stream = stream;
        let mut head = Vec::with_capacity(512);
        (&mut stream)
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| ImageError::Corrupt(format!("reading {}: {e}", path.display())))?;
        if head.get(257..262) != Some(b"ustar".as_slice()) {
            return Err(ImageError::Corrupt(format!(
                "{} is not an image archive: not a tar file (nor a gzipped one)",
                path.display()
            )));
        }
        let stream = io::Cursor::new(head).chain(stream);
        // The archive's files, confined to the scratch directory like a layer's.
        super::layer::unpack(stream, &scratch, Default::default())
            .map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))?;
        import_dir(store, &scratch, name)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// `dir/rel` for a path an archive gives: relative, without `..`.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(ImageError::Corrupt(format!("archive path `{}` leaves the archive", rel.escape_debug())));
    }
    Ok(dir.join(p))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let f = File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut data = Vec::new();
    f.take(super::MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    if data.len() as u64 > super::MAX_MANIFEST_BYTES {
        return Err(ImageError::Corrupt(format!("{} is over {} bytes", path.display(), super::MAX_MANIFEST_BYTES)));
    }
    serde_json::from_slice(&data).map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))
}

fn import_dir(store: &Store, dir: &Path, name: Option<&str>) -> Result<Vec<Imported>> {
    let imported = if dir.join("index.json").is_file() {
        import_layout(store, dir, name)?
    } else if dir.join("manifest.json").is_file() {
        import_docker(store, dir, name)?
    } else {
        return Err(ImageError::Invalid(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            dir.display()
        )));
    };
    if imported.is_empty() {
        return Err(ImageError::Invalid(format!("{}: the archive holds no image", dir.display())));
    }
    Ok(imported)
}

/// Copies the blob `digest` of an OCI layout into the store, verified.
fn copy_blob(store: &Store, layout: &Path, digest: &str, size: Option<u64>) -> Result<()> {
    let hex = check_digest(digest).map_err(ImageError::Corrupt)?;
    let path = layout.join("blobs/sha256").join(hex);
    let mut f = File::open(&path).map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))?;
    store.put_blob(digest, size, &mut f).map(|_| ())
}

fn descriptor(v: &serde_json::Value) -> Result<(String, Option<u64>)> {
    let digest = v.get("digest").and_then(|d| d.as_str()).unwrap_or_default().to_string();
    check_digest(&digest).map_err(ImageError::Corrupt)?;
    Ok((digest, v.get("size").and_then(|s| s.as_u64())))
}

fn import_layout(store: &Store, dir: &Path, name: Option<&str>) -> Result<Vec<Imported>> {
    let index = read_json(&dir.join("index.json"))?;
    let entries = index.get("manifests").and_then(|m| m.as_array()).cloned().unwrap_or_default();
    let mut imported = Vec::new();
    for entry in &entries {
        let (top, size) = descriptor(entry)?;
        copy_blob(store, dir, &top, size)?;
        // Follow an index to this platform's manifest, copying only what that needs.
        let mut digest = top.clone();
        for _ in 0..4 {
            let data = store.read_blob(&digest, super::MAX_MANIFEST_BYTES)?;
            let Some(next) = super::store::platform_manifest(&data, &digest)? else { break };
            copy_blob(store, dir, &next, None)?;
            digest = next;
        }
        let manifest = store.manifest(&digest)?;
        copy_blob(store, dir, manifest.config().digest().as_ref(), Some(manifest.config().size()))?;
        for l in manifest.layers() {
            copy_blob(store, dir, l.digest().as_ref(), Some(l.size()))?;
        }
        let image = store.image_of(None, &digest)?;
        store.unpack(&image)?;
        let annotations = entry.get("annotations");
        let get = |k: &str| annotations.and_then(|a| a.get(k)).and_then(|v| v.as_str()).map(str::to_string);
        let full = get("io.containerd.image.name");
        let ref_name = get("org.opencontainers.image.ref.name");
        let named = match (name, full, ref_name) {
            (Some(n), _, Some(tag)) if entries.len() == 1 && !has_tag(n) && !tag.contains(['/', ':']) => {
                format!("{}:{tag}", Reference::parse(n)?.name())
            }
            (Some(n), _, _) if entries.len() == 1 => n.to_string(),
            (_, Some(full), _) => full,
            (_, None, Some(r)) if r.contains(['/', ':']) => r,
            (Some(n), None, Some(tag)) => format!("{}:{tag}", Reference::parse(n)?.name()),
            (None, None, Some(tag)) => {
                return Err(ImageError::Invalid(format!(
                    "{}: the image is tagged only `{tag}`; give it a name (huskctl import --name REPO)",
                    dir.display()
                )))
            }
            (_, None, None) => {
                return Err(ImageError::Invalid(format!(
                    "{}: the image has no name; give it one (huskctl import --name REPO[:TAG])",
                    dir.display()
                )))
            }
        };
        let index = (top != digest).then(|| top.clone());
        let name = store.tag(&named, &digest, index)?;
        imported.push(Imported { name, digest });
    }
    Ok(imported)
}

/// Whether a name as given carries its own tag or digest (`app:v1`, `host:5000/app@sha256:..`).
fn has_tag(name: &str) -> bool {
    name.contains('@') || name.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

/// A classic `docker save` archive: the manifest is synthesized (Docker image manifest v2,
/// schema 2) from the config and layer files it lists.
fn import_docker(store: &Store, dir: &Path, name: Option<&str>) -> Result<Vec<Imported>> {
    let list = read_json(&dir.join("manifest.json"))?;
    let images = list.as_array().cloned().unwrap_or_default();
    let mut imported = Vec::new();
    for image in &images {
        let config_path = image.get("Config").and_then(|c| c.as_str()).unwrap_or_default();
        let config = inside(dir, config_path)?;
        let (config_digest, config_size) = put_file(store, &config)?;
        let mut layers = Vec::new();
        for l in image.get("Layers").and_then(|l| l.as_array()).into_iter().flatten() {
            let path = inside(dir, l.as_str().unwrap_or_default())?;
            let (digest, size) = put_file(store, &path)?;
            let mut magic = [0u8; 4];
            let n = File::open(&path).and_then(|mut f| f.read(&mut magic)).unwrap_or(0);
            let media = match (n, magic) {
                (4, [0x1f, 0x8b, _, _]) => super::MEDIA_DOCKER_LAYER_GZIP,
                (4, [0x28, 0xb5, 0x2f, 0xfd]) => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => super::MEDIA_DOCKER_LAYER,
            };
            layers.push(serde_json::json!({"mediaType": media, "size": size, "digest": digest}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": super::MEDIA_DOCKER_CONFIG, "size": config_size, "digest": config_digest},
            "layers": layers,
        });
        let digest = store.put_bytes(&serde_json::to_vec(&manifest).unwrap_or_default())?;
        let image_record = store.image_of(None, &digest)?;
        store.unpack(&image_record)?;
        let tags: Vec<String> = image
            .get("RepoTags")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let names = match (name, tags.is_empty()) {
            (Some(n), _) if images.len() == 1 => vec![n.to_string()],
            (_, false) => tags,
            (_, true) => {
                return Err(ImageError::Invalid(format!(
                    "{}: an image has no RepoTags; give it a name (huskctl import --name REPO[:TAG])",
                    dir.display()
                )))
            }
        };
        for n in names {
            let name = store.tag(&n, &digest, None)?;
            imported.push(Imported { name, digest: digest.clone() });
        }
    }
    Ok(imported)
}

fn put_file(store: &Store, path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| ImageError::Corrupt(format!("{}: {e}", path.display())))?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let size = io::copy(&mut f, &mut hasher).map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    let digest = format!("sha256:{}", super::hex(&sha2::Digest::finalize(hasher)));
    let mut f = File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    store.put_blob(&digest, Some(size), &mut f)?;
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::tests::TarBuilder;

    /// Writes an OCI layout holding one single-layer image into `dir`.
    fn layout(dir: &Path, annotations: serde_json::Value, layer: &[u8]) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let hex = crate::image::sha256_hex(data);
            std::fs::write(blobs.join(&hex), data).unwrap();
            format!("sha256:{hex}")
        };
        let l = put(layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": [l]},
        }))
        .unwrap();
        let c = put(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::image::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer.len()}],
        }))
        .unwrap();
        let m = put(&manifest);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": crate::image::MEDIA_OCI_MANIFEST, "digest": m, "size": manifest.len(), "annotations": annotations}
        ]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    }

    #[test]
    fn oci_layouts_by_name_or_tag() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path(), Default::default()).unwrap();
        let src = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new().file("hello", b"hi\n", 0o644).build();
        layout(src.path(), serde_json::json!({"org.opencontainers.image.ref.name": "v1"}), &layer);
        let e = import(&store, src.path(), None).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        let got = import(&store, src.path(), Some("localhost/hello")).unwrap();
        assert_eq!(got[0].name, "localhost/hello:v1");
        let image = store.image_of(None, &got[0].digest).unwrap();
        assert_eq!(std::fs::read_to_string(store.unpack(&image).unwrap()[0].join("hello")).unwrap(), "hi\n");

        // The same layout as a tarball, named by the containerd annotation.
        let src2 = tempfile::tempdir().unwrap();
        layout(src2.path(), serde_json::json!({"io.containerd.image.name": "docker.io/team/hello:2"}), &layer);
        let tarball = src.path().join("image.tar");
        let mut b = tar::Builder::new(File::create(&tarball).unwrap());
        b.append_dir_all(".", src2.path()).unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(import(&store, &tarball, None).unwrap()[0].name, "docker.io/team/hello:2");
        assert_eq!(std::fs::read_dir(store_dir.path().join("tmp")).unwrap().count(), 0, "scratch removed");

        // A layout whose blob does not match its digest: nothing named, nothing kept.
        let bad = tempfile::tempdir().unwrap();
        layout(bad.path(), serde_json::json!({"io.containerd.image.name": "bad:1"}), b"not a tar at all");
        let blobs: Vec<_> = std::fs::read_dir(bad.path().join("blobs/sha256")).unwrap().flatten().collect();
        for b in &blobs {
            let data = std::fs::read(b.path()).unwrap();
            if data == b"not a tar at all" {
                std::fs::write(b.path(), b"NOT A TAR AT ALL").unwrap();
            }
        }
        let before = store.refs().unwrap().len();
        assert!(matches!(import(&store, bad.path(), None), Err(ImageError::Corrupt(_))));
        assert_eq!(store.refs().unwrap().len(), before);
    }

    #[test]
    fn docker_save_archives() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path(), Default::default()).unwrap();
        let src = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new().file("bin/app", b"app\n", 0o755).build();
        let diff = format!("sha256:{}", crate::image::sha256_hex(&layer));
        std::fs::create_dir(src.path().join("abc")).unwrap();
        std::fs::write(src.path().join("abc/layer.tar"), &layer).unwrap();
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/app"]},
            "rootfs": {"type": "layers", "diff_ids": [diff]}});
        std::fs::write(src.path().join("cfg.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let list = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["app:1", "app:latest"], "Layers": ["abc/layer.tar"]}]);
        std::fs::write(src.path().join("manifest.json"), serde_json::to_vec(&list).unwrap()).unwrap();
        let got = import(&store, src.path(), None).unwrap();
        let names: Vec<&str> = got.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/app:1", "docker.io/library/app:latest"]);
        let image = store.image_of(None, &got[0].digest).unwrap();
        assert_eq!(image.config.config().as_ref().unwrap().cmd().as_deref(), Some(&["/bin/app".to_string()][..]));
        // Paths in manifest.json may not leave the archive.
        let list = serde_json::json!([{"Config": "../../etc/passwd", "RepoTags": ["x:1"], "Layers": []}]);
        std::fs::write(src.path().join("manifest.json"), serde_json::to_vec(&list).unwrap()).unwrap();
        assert!(matches!(import(&store, src.path(), None), Err(ImageError::Corrupt(ref m)) if m.contains("leaves")));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(import(&store, empty.path(), None), Err(ImageError::Invalid(_))));
    }
}
