//! The content-addressed store: blobs verified on write, layers unpacked once, names.
//!
//! Every write goes to `tmp/` first and is renamed into place only once complete and verified,
//! so a crash or a failed transfer leaves nothing half-written where readers look; `tmp/` is
//! emptied when the store opens. Concurrent unpacks of one layer wait for each other and share
//! the result. Garbage collection is the caller's to serialize against pulls (it removes what
//! no name and no `keep` digest reaches).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{check_digest, layer, layer_compression, Compression, ImageError, Reference, Result};

const REFS: &str = "refs.json";

/// What a name points at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The platform's manifest.
    pub digest: String,
    /// The index it was picked from, when the image came as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Unix nanoseconds of when the name was set.
    pub created_ns: i64,
}

/// An image in the store, ready to run.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: Option<String>,
    pub digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// The unpacked layers' diff ids, bottom first.
    pub diff_ids: Vec<String>,
    /// Compressed size: the config and the layers as the manifest gives them.
    pub size: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pruned {
    pub names: Vec<String>,
    pub blobs: u64,
    pub layers: u64,
    pub bytes: u64,
}

pub struct Store {
    root: PathBuf,
    opts: layer::Options,
    refs: Mutex<()>,
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    counter: AtomicU64,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |e| ImageError::io(context, e)
}

/// Writes `data` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// Reads `r`, hashing what passes.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A blob on its way into the store: write it, then `commit` verifies and places it.
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    digest: String,
    expected_size: Option<u64>,
    hasher: sha2::Sha256,
    n: u64,
    done: bool,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(max) = self.expected_size {
            if self.n + buf.len() as u64 > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is longer than its declared {max} bytes", self.digest),
                ));
            }
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.n
    }

    /// Verifies the size and digest and moves the blob into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        if let Some(size) = self.expected_size.filter(|s| *s != self.n) {
            return Err(ImageError::Corrupt(format!(
                "{}: {} bytes arrived, the descriptor says {size} (truncated?)",
                self.digest, self.n
            )));
        }
        let got = format!("sha256:{}", super::hex(&std::mem::take(&mut self.hasher).finalize()));
        if got != self.digest {
            return Err(ImageError::Corrupt(format!("digest mismatch: expected {}, got {got}", self.digest)));
        }
        self.file.sync_all().map_err(io_err("syncing a blob"))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io_err(format!("placing {}", self.dest.display())))?;
        self.done = true;
        if let Some(dir) = self.dest.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Store {
    /// Opens (creating) the store at `root`, discarding whatever an interrupted write left.
    pub fn open(root: &Path, opts: layer::Options) -> Result<Store> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(format!("creating {}", root.join(d).display())))?;
        }
        let tmp = root.join("tmp");
        let leftovers = std::fs::read_dir(&tmp).map_err(io_err(format!("reading {}", tmp.display())))?;
        let dir = layer::open_dir(&tmp).map_err(io_err(format!("opening {}", tmp.display())))?;
        for e in leftovers.flatten() {
            use std::os::fd::AsFd;
            layer::remove_at(dir.as_fd(), &e.file_name())
                .map_err(io_err(format!("cleaning {}", e.path().display())))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            opts,
            refs: Mutex::new(()),
            unpacking: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{hint}-{}-{n}", std::process::id()))
    }

    /// A scratch directory under the store (same filesystem), for imports.
    pub fn scratch_dir(&self, hint: &str) -> Result<PathBuf> {
        let p = self.tmp_path(hint);
        std::fs::create_dir(&p).map_err(io_err(format!("creating {}", p.display())))?;
        Ok(p)
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = check_digest(digest).map_err(ImageError::Corrupt)?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        let hex = check_digest(diff_id).map_err(ImageError::Corrupt)?;
        Ok(self.root.join("layers").join(hex))
    }

    pub fn begin_blob(&self, digest: &str, expected_size: Option<u64>) -> Result<BlobWriter> {
        let dest = self.blob_path(digest)?;
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        Ok(BlobWriter {
            file,
            tmp,
            dest,
            digest: digest.to_string(),
            expected_size,
            hasher: sha2::Sha256::new(),
            n: 0,
            done: false,
        })
    }

    /// Stores the blob `digest` from `content` unless the store has it.
    pub fn put_blob(&self, digest: &str, expected_size: Option<u64>, content: &mut impl Read) -> Result<PathBuf> {
        if self.has_blob(digest) {
            return self.blob_path(digest);
        }
        let mut w = self.begin_blob(digest, expected_size)?;
        io::copy(content, &mut w).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => ImageError::Corrupt(e.to_string()),
            _ => ImageError::io(format!("writing {digest}"), e),
        })?;
        w.commit()
    }

    /// Stores `data`; returns its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", super::sha256_hex(data));
        self.put_blob(&digest, Some(data.len() as u64), &mut &data[..])?;
        Ok(digest)
    }

    /// A small blob (manifest, index, config), verified again as it is read: a blob damaged on
    /// disk is removed and reported, never used.
    pub fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(format!("blob {digest} is not in the store")))
            }
            Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
        };
        let mut data = Vec::new();
        f.take(max + 1).read_to_end(&mut data).map_err(io_err(format!("reading {}", path.display())))?;
        if data.len() as u64 > max {
            return Err(ImageError::Corrupt(format!("{digest} is over the {max}-byte bound for its kind")));
        }
        if format!("sha256:{}", super::sha256_hex(&data)) != digest {
            let _ = std::fs::remove_file(&path);
            return Err(ImageError::Corrupt(format!("{digest} was damaged in the store and is removed")));
        }
        Ok(data)
    }

    /// The manifest `digest` names for this machine: itself, or the host platform's entry when
    /// it is an index.
    pub fn resolve(&self, digest: &str) -> Result<String> {
        let mut digest = digest.to_string();
        for _ in 0..4 {
            let data = self.read_blob(&digest, super::MAX_MANIFEST_BYTES)?;
            match platform_manifest(&data, &digest)? {
                Some(next) => digest = next,
                None => return Ok(digest),
            }
        }
        Err(ImageError::Corrupt(format!("{digest}: indexes nested too deep")))
    }

    /// The manifest `digest`, checked: known layer and config media types.
    pub fn manifest(&self, digest: &str) -> Result<ImageManifest> {
        let data = self.read_blob(digest, super::MAX_MANIFEST_BYTES)?;
        parse_manifest(&data, digest)
    }

    pub fn config(&self, manifest: &ImageManifest) -> Result<ImageConfiguration> {
        let digest = manifest.config().digest().to_string();
        let data = self.read_blob(&digest, super::MAX_CONFIG_BYTES)?;
        serde_json::from_slice(&data).map_err(|e| ImageError::Corrupt(format!("image config {digest}: {e}")))
    }

    /// The image a manifest digest describes, its layers unpacked (bottom first).
    pub fn image_of(&self, name: Option<String>, digest: &str) -> Result<Image> {
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest)?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Corrupt(format!(
                "{digest}: the manifest has {} layers, its config {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let size = manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(Image { name, digest: digest.to_string(), manifest, config, diff_ids, size })
    }

    /// Unpacks every layer of `image` not unpacked yet; returns the layer directories, bottom
    /// first.
    pub fn unpack(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for (desc, diff_id) in image.manifest.layers().iter().zip(&image.diff_ids) {
            dirs.push(self.unpack_layer(desc.digest().as_ref(), desc.media_type().as_ref(), diff_id)?);
        }
        Ok(dirs)
    }

    /// Unpacks one layer blob into `layers/<diff id>`, verifying the uncompressed stream against
    /// the diff id. One unpack per layer at a time; others wait and share it.
    pub fn unpack_layer(&self, blob: &str, media_type: &str, diff_id: &str) -> Result<PathBuf> {
        let dest = self.layer_path(diff_id)?;
        let compression = layer_compression(media_type)?;
        let lock = self.unpacking.lock().unwrap().entry(diff_id.to_string()).or_default().clone();
        let _held = lock.lock().unwrap();
        if dest.exists() {
            return Ok(dest);
        }
        let src = self.blob_path(blob)?;
        let file = File::open(&src).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::NotFound(format!("layer blob {blob} is not in the store")),
            _ => ImageError::io(format!("opening {}", src.display()), e),
        })?;
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(io::BufReader::new(file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file))),
            Compression::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(io::BufReader::new(file))
                    .map_err(|e| ImageError::Corrupt(format!("layer {blob}: not zstd: {e}")))?,
            ),
        };
        let mut hashing = Hashing { inner: reader, hasher: sha2::Sha256::new(), n: 0 };
        let tmp = self.scratch_dir("layer")?;
        let result = (|| {
            let unpacked = layer::unpack(&mut hashing, &tmp, self.opts)
                .map_err(|e| ImageError::Corrupt(format!("layer {blob}: {e}")))?;
            // Whatever follows the tar's end counts toward the digest too.
            io::copy(&mut hashing, &mut io::sink())
                .map_err(|e| ImageError::Corrupt(format!("layer {blob}: decompressing: {e}")))?;
            let got = format!("sha256:{}", super::hex(&hashing.hasher.clone().finalize()));
            if got != diff_id {
                return Err(ImageError::Corrupt(format!(
                    "layer {blob}: its content is {got}, the image config says {diff_id}"
                )));
            }
            let dir = layer::open_dir(&tmp).map_err(io_err("opening the layer"))?;
            nix::unistd::syncfs(&dir).map_err(|e| ImageError::io("syncing the layer", e.into()))?;
            std::fs::rename(&tmp, &dest).map_err(io_err(format!("placing {}", dest.display())))?;
            Ok(unpacked)
        })();
        match result {
            Ok(_) => Ok(dest),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn load_refs(&self) -> Result<BTreeMap<String, Record>> {
        match std::fs::read(self.root.join(REFS)) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| ImageError::Corrupt(format!("{REFS}: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io(format!("reading {REFS}"), e)),
        }
    }

    fn save_refs(&self, refs: &BTreeMap<String, Record>) -> Result<()> {
        let data = serde_json::to_vec_pretty(refs).map_err(|e| ImageError::io(REFS, io::Error::other(e)))?;
        write_atomic(&self.root.join(REFS), &data).map_err(io_err(format!("writing {REFS}")))
    }

    /// Names `digest` (a manifest) `name` (normalized); returns the normalized name.
    pub fn tag(&self, name: &str, digest: &str, index: Option<String>) -> Result<String> {
        let name = Reference::parse(name)?.to_string();
        check_digest(digest).map_err(ImageError::Invalid)?;
        let _g = self.refs.lock().unwrap();
        let mut refs = self.load_refs()?;
        refs.insert(name.clone(), Record { digest: digest.to_string(), index, created_ns: now_ns() });
        self.save_refs(&refs)?;
        Ok(name)
    }

    pub fn refs(&self) -> Result<BTreeMap<String, Record>> {
        let _g = self.refs.lock().unwrap();
        self.load_refs()
    }

    /// The record of a name (`busybox`, `localhost:5000/app:v1`), or of a manifest digest or
    /// an unambiguous prefix of one (12 hex digits at least).
    pub fn lookup(&self, name_or_digest: &str) -> Result<(Option<String>, Record)> {
        let refs = self.refs()?;
        if let Ok(r) = Reference::parse(name_or_digest) {
            if let Some(rec) = refs.get(&r.to_string()) {
                return Ok((Some(r.to_string()), rec.clone()));
            }
        }
        let hex = name_or_digest.strip_prefix("sha256:").unwrap_or(name_or_digest);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matching: Vec<_> = refs.iter().filter(|(_, r)| r.digest["sha256:".len()..].starts_with(hex)).collect();
            let digests: HashSet<&str> = matching.iter().map(|(_, r)| r.digest.as_str()).collect();
            match digests.len() {
                1 => return Ok((None, matching[0].1.clone())),
                0 => {}
                _ => return Err(ImageError::Invalid(format!("`{name_or_digest}` matches more than one image"))),
            }
        }
        Err(ImageError::NotFound(format!("no image `{}` in the store", name_or_digest.escape_debug())))
    }

    /// Removes names: `name_or_digest` as `lookup` takes it (a digest removes all its names).
    /// Returns the names removed.
    pub fn untag(&self, name_or_digest: &str) -> Result<Vec<String>> {
        let (name, record) = self.lookup(name_or_digest)?;
        let _g = self.refs.lock().unwrap();
        let mut refs = self.load_refs()?;
        let removed: Vec<String> = match name {
            Some(n) => vec![n],
            None => refs.iter().filter(|(_, r)| r.digest == record.digest).map(|(n, _)| n.clone()).collect(),
        };
        for n in &removed {
            refs.remove(n);
        }
        self.save_refs(&refs)?;
        Ok(removed)
    }

    /// Garbage collection. With `drop_names`, first removes every name whose image is not in
    /// `keep` and not in `exclude` (image pruning); then removes every blob and layer that no
    /// remaining name and no `keep` manifest digest reaches.
    pub fn collect(&self, keep: &HashSet<String>, exclude: &HashSet<String>, drop_names: bool) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let live_refs = {
            let _g = self.refs.lock().unwrap();
            let mut refs = self.load_refs()?;
            if drop_names {
                let excluded: HashSet<String> =
                    exclude.iter().filter_map(|e| Reference::parse(e).ok()).map(|r| r.to_string()).collect();
                let before: Vec<String> = refs.keys().cloned().collect();
                refs.retain(|n, r| keep.contains(&r.digest) || excluded.contains(n) || exclude.contains(&r.digest));
                pruned.names = before.into_iter().filter(|n| !refs.contains_key(n)).collect();
                if !pruned.names.is_empty() {
                    self.save_refs(&refs)?;
                }
            }
            refs
        };
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        let roots = live_refs.values().flat_map(|r| [Some(r.digest.clone()), r.index.clone()]).flatten();
        for digest in roots.chain(keep.iter().cloned()) {
            blobs.insert(digest.clone());
            // An index reaches the platform manifest it was resolved to (held by the record).
            let Ok(manifest) = self.manifest(&digest) else { continue };
            blobs.insert(manifest.config().digest().to_string());
            blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
            if let Ok(config) = self.config(&manifest) {
                layers.extend(config.rootfs().diff_ids().iter().cloned());
            }
        }
        for (dir, reached) in [("blobs/sha256", &blobs), ("layers", &layers)] {
            let path = self.root.join(dir);
            for e in std::fs::read_dir(&path).map_err(io_err(format!("reading {}", path.display())))?.flatten() {
                let name = format!("sha256:{}", e.file_name().to_string_lossy());
                if reached.contains(&name) {
                    continue;
                }
                pruned.bytes += disk_usage(&e.path());
                let d = layer::open_dir(&path).map_err(io_err(format!("opening {}", path.display())))?;
                use std::os::fd::AsFd;
                layer::remove_at(d.as_fd(), &e.file_name())
                    .map_err(io_err(format!("removing {}", e.path().display())))?;
                match dir {
                    "layers" => pruned.layers += 1,
                    _ => pruned.blobs += 1,
                }
            }
        }
        Ok(pruned)
    }

    /// Bytes the store holds on disk.
    pub fn disk_usage(&self) -> u64 {
        disk_usage(&self.root)
    }
}

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

/// The host platform's manifest in an index, or `None` when `data` is a manifest.
pub fn platform_manifest(data: &[u8], digest: &str) -> Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| ImageError::Corrupt(format!("{digest}: not JSON: {e}")))?;
    if v.get("layers").is_some() && v.get("config").is_some() {
        return Ok(None);
    }
    let Some(entries) = v.get("manifests").and_then(|m| m.as_array()) else {
        return Err(ImageError::Corrupt(format!("{digest}: neither an image manifest nor an index")));
    };
    let (os, arch) = super::host_platform();
    let platform_of = |e: &serde_json::Value| {
        let p = e.get("platform");
        let get = |k: &str| p.and_then(|p| p.get(k)).and_then(|v| v.as_str()).map(str::to_string);
        (get("os"), get("architecture"))
    };
    let chosen = entries
        .iter()
        .find(|e| platform_of(e) == (Some(os.into()), Some(arch.into())))
        .or_else(|| match entries.as_slice() {
            [only] if platform_of(only) == (None, None) => Some(only),
            _ => None,
        })
        .ok_or_else(|| {
            let offered: Vec<String> = entries
                .iter()
                .map(platform_of)
                .map(|(o, a)| format!("{}/{}", o.unwrap_or_default(), a.unwrap_or_default()))
                .collect();
            ImageError::NotFound(format!("{digest}: no {os}/{arch} image in the index (it has {})", offered.join(", ")))
        })?;
    let next = chosen.get("digest").and_then(|d| d.as_str()).unwrap_or_default();
    check_digest(next).map_err(|e| ImageError::Corrupt(format!("{digest}: {e}")))?;
    Ok(Some(next.to_string()))
}

/// A manifest, checked for what husk can run.
pub fn parse_manifest(data: &[u8], digest: &str) -> Result<ImageManifest> {
    let m: ImageManifest =
        serde_json::from_slice(data).map_err(|e| ImageError::Corrupt(format!("manifest {digest}: {e}")))?;
    let config_type = m.config().media_type().to_string();
    if !matches!(config_type.as_str(), "application/vnd.oci.image.config.v1+json" | super::MEDIA_DOCKER_CONFIG) {
        return Err(ImageError::Corrupt(format!(
            "manifest {digest}: config media type `{}` is not an image config",
            config_type.escape_debug()
        )));
    }
    check_digest(m.config().digest().as_ref()).map_err(|e| ImageError::Corrupt(format!("manifest {digest}: {e}")))?;
    for l in m.layers() {
        layer_compression(l.media_type().as_ref())?;
        check_digest(l.digest().as_ref()).map_err(|e| ImageError::Corrupt(format!("manifest {digest}: {e}")))?;
    }
    Ok(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::layer::tests::TarBuilder;

    /// Writes an image (layers as tars, gzipped) into `store` the way an import does; returns
    /// the manifest digest.
    pub fn put_image(store: &Store, layers: &[Vec<u8>], config: serde_json::Value) -> String {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            diff_ids.push(format!("sha256:{}", crate::image::sha256_hex(tar)));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            let gz = gz.finish().unwrap();
            let d = store.put_bytes(&gz).unwrap();
            descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": gz.len(), "digest": d}));
        }
        let mut config = config;
        config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
        config["architecture"] = "amd64".into();
        config["os"] = "linux".into();
        let config = serde_json::to_vec(&config).unwrap();
        let cd = store.put_bytes(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": cd},
            "layers": descs,
        });
        store.put_bytes(&serde_json::to_vec(&manifest).unwrap()).unwrap()
    }

    #[test]
    fn blobs_are_verified_and_nothing_half_written_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let r = store.put_blob(&wrong, Some(5), &mut &b"hello"[..]);
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("digest mismatch")), "{r:?}");
        let r = store.put_blob(&wrong, Some(9), &mut &b"hello"[..]);
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("truncated")), "{r:?}");
        let r = store.put_blob(&wrong, Some(2), &mut &b"hello"[..]);
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("longer")), "{r:?}");
        assert!(!store.has_blob(&wrong));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temporary left");
        // Damage on disk is caught on read.
        std::fs::write(store.blob_path(&d).unwrap(), b"HELLO").unwrap();
        assert!(matches!(store.read_blob(&d, 100), Err(ImageError::Corrupt(_))));
        assert!(!store.has_blob(&d), "a damaged blob is removed");
        // Over the bound.
        let big = store.put_bytes(&[b'x'; 200]).unwrap();
        assert!(matches!(store.read_blob(&big, 100), Err(ImageError::Corrupt(ref m)) if m.contains("bound")));
        // A reopened store drops leftovers of interrupted writes.
        std::fs::write(dir.path().join("tmp/blob-1-1"), b"partial").unwrap();
        drop(Store::open(dir.path(), Default::default()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn layers_unpack_once_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Default::default()).unwrap());
        let base = TarBuilder::new().file("etc/os", b"base\n", 0o644).build();
        let top = TarBuilder::new().file("etc/app", b"app\n", 0o644).file("etc/.wh.os", b"", 0).build();
        let digest = put_image(&store, &[base, top], serde_json::json!({"config": {"Cmd": ["/bin/sh"]}}));
        let image = store.image_of(None, &digest).unwrap();
        // Concurrent unpacks share one result.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, image) = (store.clone(), image.clone());
                std::thread::spawn(move || store.unpack(&image).unwrap())
            })
            .collect();
        let all: Vec<Vec<PathBuf>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(all.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(std::fs::read_to_string(all[0][0].join("etc/os")).unwrap(), "base\n");
        assert_eq!(std::fs::read_dir(dir.path().join("layers")).unwrap().count(), 2);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // A layer whose content is not its diff id is refused, and not kept.
        let evil = TarBuilder::new().file("x", b"x", 0o644).build();
        let blob = store.put_bytes(&evil).unwrap();
        let r =
            store.unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar", &format!("sha256:{}", "1".repeat(64)));
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("image config says")), "{r:?}");
        assert!(!dir.path().join("layers").join("1".repeat(64)).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // Unknown media types are refused before any work.
        let r = store.unpack_layer(&blob, "application/x-rar", &format!("sha256:{}", "1".repeat(64)));
        assert!(matches!(r, Err(ImageError::Corrupt(ref m)) if m.contains("media type")));
    }

    #[test]
    fn zstd_and_plain_layers_unpack_as_gzip_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let tar = TarBuilder::new().file("etc/os", b"zstd\n", 0o644).file("bin/.wh.gone", b"", 0).build();
        let diff_id = format!("sha256:{}", crate::image::sha256_hex(&tar));
        let zstd = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
        assert_ne!(zstd, tar);
        let blob = store.put_bytes(&zstd).unwrap();
        let layer = store.unpack_layer(&blob, "application/vnd.oci.image.layer.v1.tar+zstd", &diff_id).unwrap();
        assert_eq!(std::fs::read_to_string(layer.join("etc/os")).unwrap(), "zstd\n");
        assert!(std::fs::symlink_metadata(layer.join("bin/gone")).is_ok(), "the whiteout became overlayfs's");
        // The same content uncompressed is the same layer (one diff id, one directory).
        let plain = store.put_bytes(&tar).unwrap();
        let again = store.unpack_layer(&plain, "application/vnd.docker.image.rootfs.diff.tar", &diff_id).unwrap();
        assert_eq!(again, layer);
        // zstd that is not: refused, nothing kept.
        let bogus = store.put_bytes(b"\x28\xb5\x2f\xfd not really").unwrap();
        let other = format!("sha256:{}", "3".repeat(64));
        let r = store.unpack_layer(&bogus, "application/vnd.oci.image.layer.v1.tar+zstd", &other);
        assert!(matches!(r, Err(ImageError::Corrupt(_))), "{r:?}");
        assert!(!dir.path().join("layers").join("3".repeat(64)).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn names_lookup_and_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let a = put_image(&store, &[TarBuilder::new().file("a", b"a", 0o644).build()], serde_json::json!({}));
        let b = put_image(&store, &[TarBuilder::new().file("b", b"b", 0o644).build()], serde_json::json!({}));
        store.unpack(&store.image_of(None, &a).unwrap()).unwrap();
        store.unpack(&store.image_of(None, &b).unwrap()).unwrap();
        assert_eq!(store.tag("a", &a, None).unwrap(), "docker.io/library/a:latest");
        store.tag("localhost:5000/b:v1", &b, None).unwrap();
        assert_eq!(store.lookup("a:latest").unwrap().1.digest, a);
        assert_eq!(store.lookup(&a["sha256:".len()..][..12]).unwrap().1.digest, a);
        assert!(matches!(store.lookup("nope"), Err(ImageError::NotFound(_))));
        // Nothing unreached: collection removes nothing.
        assert_eq!(store.collect(&HashSet::new(), &HashSet::new(), false).unwrap(), Pruned::default());
        // Untagged but in use (`keep`): kept.
        store.untag("localhost:5000/b:v1").unwrap();
        let keep = HashSet::from([b.clone()]);
        assert_eq!(store.collect(&keep, &HashSet::new(), false).unwrap().blobs, 0);
        // No longer in use: its blobs (manifest, config, layer) and unpacked layer go.
        let p = store.collect(&HashSet::new(), &HashSet::new(), false).unwrap();
        assert_eq!((p.blobs, p.layers), (3, 1));
        assert!(store.image_of(None, &a).is_ok());
        // Pruning drops names not excluded.
        let p = store.collect(&HashSet::new(), &HashSet::from(["a".to_string()]), true).unwrap();
        assert!(p.names.is_empty());
        let p = store.collect(&HashSet::new(), &HashSet::new(), true).unwrap();
        assert_eq!(p.names, vec!["docker.io/library/a:latest".to_string()]);
        assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("layers")).unwrap().count(), 0);
    }

    #[test]
    fn indexes_resolve_to_this_platform() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let m = put_image(&store, &[], serde_json::json!({}));
        let (os, arch) = crate::image::host_platform();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": crate::image::MEDIA_OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "2".repeat(64)),
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": crate::image::MEDIA_OCI_MANIFEST, "size": 1, "digest": m, "platform": {"os": os, "architecture": arch}},
        ]});
        let i = store.put_bytes(&serde_json::to_vec(&index).unwrap()).unwrap();
        assert_eq!(store.resolve(&i).unwrap(), m);
        let other =
            serde_json::json!({"manifests": [{"digest": m, "platform": {"os": "windows", "architecture": "amd64"}}]});
        let o = store.put_bytes(&serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(matches!(store.resolve(&o), Err(ImageError::NotFound(ref e)) if e.contains("windows/amd64")));
        let junk = store.put_bytes(b"{\"hello\": 1}").unwrap();
        assert!(matches!(store.resolve(&junk), Err(ImageError::Corrupt(_))));
    }
}
