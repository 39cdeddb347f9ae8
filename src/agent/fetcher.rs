//! The fetcher: a launch's `CommandInfo.uris`, put into its sandbox before the command starts,
//! as Mesos' fetcher does it.
//!
//! - Sources: absolute local paths, `file:///path`, `http://` and `https://` (redirects followed,
//!   the system's CA certificates trusted). A download that receives nothing for the stall
//!   timeout fails.
//! - Each URI is written to `<sandbox>/<output_file>` (default: the last segment of its path);
//!   `executable` makes it mode 0755 and is never extracted; otherwise, with `extract` (the
//!   default), a `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`/`.tbz2`, `.tar.xz`/`.txz` or `.zip` is
//!   unpacked beside it and a lone `.gz` is decompressed beside it. No archive entry lands
//!   outside the sandbox, whatever its name or the links before it.
//! - `cache`: the download is kept under the cache directory keyed by (user, URI), the least
//!   recently used entries evicted beyond the size cap.
//! - Everything fetched belongs to the container's user.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use husk_proto::mesos::v1::command_info::Uri;

pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A file removed when dropped (a download on its way into the cache).
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Redirects followed at most for one download.
const MAX_REDIRECTS: usize = 10;

/// Numbers temporary files so concurrent fetches never share one.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Who the fetched files belong to.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The cache key's user part.
    pub name: String,
}

pub struct Fetcher {
    cache_dir: PathBuf,
    cache_max_bytes: u64,
    stall: Duration,
    client: Result<HttpClient, String>,
    /// Serializes lookups and insertions of the cache (downloads run outside it).
    cache_lock: tokio::sync::Mutex<()>,
}

/// What went wrong with one URI, as the launch failure reports it.
type Failure = String;

impl Fetcher {
    pub fn new(cache_dir: PathBuf, cache_max_bytes: u64, stall: Duration) -> Fetcher {
        let client = http_client();
        Fetcher { cache_dir, cache_max_bytes, stall, client, cache_lock: tokio::sync::Mutex::new(()) }
    }

    /// Fetches every URI into `sandbox` in order; the first failure names its URI. Downloads
    /// land first in `work` (a directory of the agent's own on the sandbox's filesystem, which
    /// no container can write to), then move into the sandbox.
    pub async fn fetch_all(&self, uris: &[Uri], sandbox: &Path, work: &Path, owner: &Owner) -> Result<(), Failure> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(work)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(|e| format!("{}: {e}", work.display()))?;
        let fetched = self.fetch_each(uris, sandbox, work, owner).await;
        let _ = std::fs::remove_dir_all(work);
        fetched
    }

    async fn fetch_each(&self, uris: &[Uri], sandbox: &Path, work: &Path, owner: &Owner) -> Result<(), Failure> {
        for uri in uris {
            self.fetch(uri, sandbox, work, owner).await.map_err(|e| format!("fetching `{}`: {e}", uri.value))?;
        }
        let (sandbox, owner) = (sandbox.to_path_buf(), owner.clone());
        tokio::task::spawn_blocking(move || chown_tree(&sandbox, owner.uid, owner.gid))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("giving the sandbox to uid {}: {e}", owner.uid))
    }

    async fn fetch(&self, uri: &Uri, sandbox: &Path, work: &Path, owner: &Owner) -> Result<(), Failure> {
        let name = match uri.output_file.as_deref() {
            Some(out) => out.to_string(),
            None => husk_oci::validate::file_name_of(&uri.value).ok_or("the URI has no file name")?.to_string(),
        };
        let tmp = work.join(format!("uri-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let got = match uri.cache() {
            true => self.fetch_cached(uri, &tmp, owner).await,
            false => self.download(&uri.value, &tmp).await,
        };
        if let Err(e) = got {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (sandbox, uri) = (sandbox.to_path_buf(), uri.clone());
        let placed = tokio::task::spawn_blocking(move || {
            let placed = place(&sandbox, &tmp, &name, &uri);
            let _ = std::fs::remove_file(&tmp);
            placed
        });
        placed.await.map_err(|e| e.to_string())?
    }

    /// Copies `uri` into `dest` from the cache, downloading it into the cache first on a miss.
    async fn fetch_cached(&self, uri: &Uri, dest: &Path, owner: &Owner) -> Result<(), Failure> {
        let key = format!("{}\n{}", owner.name, uri.value);
        let entry = self.cache_dir.join(format!("{:016x}", fnv1a(key.as_bytes())));
        let key_file = entry.with_extension("key");
        {
            let _held = self.cache_lock.lock().await;
            if std::fs::read(&key_file).is_ok_and(|k| k == key.as_bytes()) && entry.is_file() {
                tracing::debug!(uri = %uri.value, "fetcher cache hit");
                let _ = File::options().append(true).open(&entry).and_then(|f| f.set_modified(SystemTime::now()));
                return std::fs::copy(&entry, dest).map(|_| ()).map_err(|e| format!("copying from the cache: {e}"));
            }
        }
        std::fs::create_dir_all(&self.cache_dir).map_err(|e| format!("{}: {e}", self.cache_dir.display()))?;
        // Removed whatever happens, a cancelled launch included; renamed away when cached.
        let partial = Partial(self.cache_dir.join(format!(".partial-{}", NEXT.fetch_add(1, Ordering::Relaxed))));
        self.download(&uri.value, &partial.0).await?;
        std::fs::copy(&partial.0, dest).map_err(|e| format!("copying the download: {e}"))?;
        let size = std::fs::metadata(&partial.0).map(|m| m.len()).unwrap_or(0);
        if size > self.cache_max_bytes {
            tracing::info!(uri = %uri.value, size, "not cached: larger than the whole fetcher cache");
            return Ok(());
        }
        let _held = self.cache_lock.lock().await;
        // A cache that cannot be written is the cache's problem, not the launch's.
        match husk_oci::checkpoint::write_atomic(&key_file, key.as_bytes(), 0o600)
            .and_then(|_| std::fs::rename(&partial.0, &entry))
        {
            Ok(()) => evict(&self.cache_dir, self.cache_max_bytes),
            Err(e) => tracing::warn!(uri = %uri.value, "caching the download: {e}"),
        }
        Ok(())
    }

    /// Writes the resource `value` names into `dest`.
    async fn download(&self, value: &str, dest: &Path) -> Result<(), Failure> {
        if let Some(path) = value.strip_prefix("file://").or(value.starts_with('/').then_some(value)) {
            let (src, dest) = (PathBuf::from(path), dest.to_path_buf());
            return tokio::task::spawn_blocking(move || copy_local(&src, &dest)).await.map_err(|e| e.to_string())?;
        }
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut target: hyper::Uri = value.parse().map_err(|e| format!("not a valid URI: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let request = hyper::Request::get(target.clone())
                .header(hyper::header::USER_AGENT, concat!("husk-fetcher/", env!("CARGO_PKG_VERSION")))
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let response = tokio::time::timeout(self.stall, client.request(request))
                .await
                .map_err(|_| format!("no response within {:?}", self.stall))?
                .map_err(|e| crate::client::chain(&e))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("HTTP {status} without a Location"))?;
                target = redirect(&target, location)?;
                continue;
            }
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            let mut file = tokio::fs::File::create(dest).await.map_err(|e| format!("{}: {e}", dest.display()))?;
            let mut body = response.into_body();
            loop {
                let frame = tokio::time::timeout(self.stall, body.frame())
                    .await
                    .map_err(|_| format!("the download stalled: nothing received for {:?}", self.stall))?;
                match frame {
                    None => break,
                    Some(Err(e)) => return Err(format!("reading the response: {e}")),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            tokio::io::AsyncWriteExt::write_all(&mut file, &data)
                                .await
                                .map_err(|e| format!("{}: {e}", dest.display()))?;
                        }
                    }
                }
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| format!("{}: {e}", dest.display()))?;
            return Ok(());
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }
}

/// An HTTP(S) client trusting the system's CAs.
pub(crate) fn http_client() -> Result<HttpClient, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map(|b| {
            let connector = b.https_or_http().enable_http1().build();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
        })
        .map_err(|e| format!("no trusted CA certificates on this node: {e}"))
}

/// Where a redirect from `from` to `location` (absolute or relative) goes.
pub(crate) fn redirect(from: &hyper::Uri, location: &str) -> Result<hyper::Uri, Failure> {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}://{}{location}", from.scheme_str().unwrap_or("http"), from.authority().map_or("", |a| a.as_str()))
    } else {
        return Err(format!("redirect to `{location}`, which is not an http(s) URI"));
    };
    absolute.parse().map_err(|e| format!("redirect to `{location}`: {e}"))
}

fn copy_local(src: &Path, dest: &Path) -> Result<(), Failure> {
    let meta = std::fs::metadata(src).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::copy(src, dest).map(|_| ()).map_err(|e| e.to_string())
}

/// The archive kinds the fetcher unpacks, by file name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Archive {
    Tar,
    TarGz,
    TarBz2,
    TarXz,
    Zip,
    Gz,
}

fn archive_of(name: &str) -> Option<Archive> {
    let n = name.to_ascii_lowercase();
    let kinds = [
        (".tar.gz", Archive::TarGz),
        (".tgz", Archive::TarGz),
        (".tar.bz2", Archive::TarBz2),
        (".tbz2", Archive::TarBz2),
        (".tar.xz", Archive::TarXz),
        (".txz", Archive::TarXz),
        (".tar", Archive::Tar),
        (".zip", Archive::Zip),
        (".gz", Archive::Gz),
    ];
    kinds.into_iter().find(|(ext, _)| n.ends_with(ext)).map(|(_, k)| k)
}

/// Moves the fetched `tmp` to `<sandbox>/<name>` and unpacks it there when asked to.
fn place(sandbox: &Path, tmp: &Path, name: &str, uri: &Uri) -> Result<(), Failure> {
    let rel = Path::new(name);
    let dir_rel = rel.parent().unwrap_or(Path::new(""));
    husk_oci::fs::mkdir_in_root(sandbox, dir_rel, 0o755).map_err(|e| format!("output_file `{name}`: {e}"))?;
    let dir = sandbox.join(dir_rel);
    let dest = sandbox.join(rel);
    if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
        return Err(format!("output_file `{name}` is a directory in the sandbox"));
    }
    let mode = if uri.executable() { 0o755 } else { 0o644 };
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    // rename() replaces a link at `dest` itself and never follows it.
    std::fs::rename(tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if uri.executable() || !uri.extract() {
        return Ok(());
    }
    let Some(kind) = archive_of(name) else { return Ok(()) };
    let file = File::open(&dest).map_err(|e| e.to_string())?;
    let unpacked = match kind {
        Archive::Tar => untar(file, &dir),
        Archive::TarGz => untar(flate2::read::MultiGzDecoder::new(file), &dir),
        Archive::TarBz2 => untar(bzip2::read::MultiBzDecoder::new(file), &dir),
        Archive::TarXz => untar(liblzma::read::XzDecoder::new_multi_decoder(file), &dir),
        Archive::Zip => unzip(file, &dir),
        Archive::Gz => {
            let stem = rel.file_name().and_then(|n| n.to_str()).map(|n| &n[..n.len() - 3]).unwrap_or_default();
            if stem.is_empty() {
                return Err(format!("`{name}` has no name left once `.gz` is taken off"));
            }
            write_new(&dir, Path::new(stem), &mut flate2::read::MultiGzDecoder::new(file), 0o644)
        }
    };
    unpacked.map_err(|e| format!("extracting `{name}`: {e}"))
}

/// Unpacks a tar stream into `dir`. The tar crate refuses entries that name a path outside
/// `dir` (absolute or with `..`) or that would be written through a link leading out of it.
fn untar(stream: impl Read, dir: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) {
            return Err(io::Error::other(format!("`{}`: device and fifo entries are not extracted", path.display())));
        }
        if !entry.unpack_in(dir)? {
            return Err(io::Error::other(format!("`{}` would land outside the sandbox", path.display())));
        }
    }
    Ok(())
}

/// Unpacks a zip archive into `dir`: directories and regular files only, each created without
/// following a link, so nothing lands outside `dir`.
fn unzip(file: File, dir: &Path) -> io::Result<()> {
    let mut archive = zip::ZipArchive::new(file).map_err(io::Error::other)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(io::Error::other)?;
        let raw = entry.name().to_string();
        let rel =
            entry.enclosed_name().ok_or_else(|| io::Error::other(format!("`{raw}` would land outside the sandbox")))?;
        if entry.is_dir() {
            husk_oci::fs::mkdir_in_root(dir, &rel, 0o755)?;
        } else if entry.is_symlink() {
            return Err(io::Error::other(format!("`{raw}`: symbolic links in zip archives are not extracted")));
        } else {
            if let Some(parent) = rel.parent() {
                husk_oci::fs::mkdir_in_root(dir, parent, 0o755)?;
            }
            let mode = entry.unix_mode().map(|m| m & 0o777).unwrap_or(0o644);
            write_new(dir, &rel, &mut entry, mode)?;
        }
    }
    Ok(())
}

/// Writes `content` to `dir/rel` (parents already made without links), replacing a regular
/// file there but never writing through a link.
fn write_new(dir: &Path, rel: &Path, content: &mut impl Read, mode: u32) -> io::Result<()> {
    let path = dir.join(rel);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path)?;
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    io::copy(content, &mut out)?;
    out.flush()
}

/// Gives everything under `root` to uid:gid, walking from directory handles: each entry is
/// changed relative to its directory's handle without following links, and each directory is
/// entered with `O_NOFOLLOW`, so no link, planted before or during the walk, leads outside.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let dir = open(root, flags, Mode::empty()).map_err(io::Error::from)?;
    nix::unistd::fchown(&dir, Some(uid.into()), Some(gid.into())).map_err(io::Error::from)?;
    chown_below(dir, uid, gid, 0)
}

fn chown_below(dir: std::os::fd::OwnedFd, uid: u32, gid: u32, depth: usize) -> io::Result<()> {
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::Mode;
    if depth > 256 {
        return Err(io::Error::other("the sandbox is nested more than 256 directories deep"));
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut names = Vec::new();
    {
        let listing = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io::Error::from)?;
        for entry in listing {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
    }
    for name in names {
        match nix::unistd::fchownat(
            &dir,
            name.as_c_str(),
            Some(uid.into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match openat(&dir, name.as_c_str(), flags, Mode::empty()) {
            Ok(sub) => chown_below(sub, uid, gid, depth + 1)?,
            // Not a directory, a link, or gone meanwhile: nothing to enter.
            Err(nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes the least recently used cache entries until the cache fits in `max` bytes.
fn evict(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_none() && !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        tracing::info!(entry = %path.display(), len, "evicting from the fetcher cache");
        let _ = std::fs::remove_file(path.with_extension("key"));
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// FNV-1a, 64 bits: a stable file name for a cache key (the key itself is stored beside it).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_kinds_by_name() {
        assert_eq!(archive_of("a.tar.gz"), Some(Archive::TarGz));
        assert_eq!(archive_of("A.TGZ"), Some(Archive::TarGz));
        assert_eq!(archive_of("a.tbz2"), Some(Archive::TarBz2));
        assert_eq!(archive_of("a.tar.xz"), Some(Archive::TarXz));
        assert_eq!(archive_of("a.tar"), Some(Archive::Tar));
        assert_eq!(archive_of("a.zip"), Some(Archive::Zip));
        assert_eq!(archive_of("a.gz"), Some(Archive::Gz));
        assert_eq!(archive_of("a.txt"), None);
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let from: hyper::Uri = "http://127.0.0.1:8080/a/b".parse().unwrap();
        assert_eq!(redirect(&from, "/c").unwrap().to_string(), "http://127.0.0.1:8080/c");
        assert_eq!(redirect(&from, "https://h/d").unwrap().to_string(), "https://h/d");
        assert!(redirect(&from, "ftp://h/d").is_err());
    }

    fn uri(value: &str) -> Uri {
        Uri { value: value.into(), ..Default::default() }
    }

    #[test]
    fn tar_entries_never_leave_the_sandbox() {
        let outside = tempfile::tempdir().unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        // An archive with a link out of the sandbox, then a file written through it.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "out", outside.path()).unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(3);
        file.set_mode(0o644);
        builder.append_data(&mut file, "out/pwned", &b"bad"[..]).unwrap();
        let tmp = sandbox.path().join(".tmp");
        std::fs::write(&tmp, builder.into_inner().unwrap()).unwrap();
        let err = place(sandbox.path(), &tmp, "evil.tar", &uri("http://h/evil.tar")).unwrap_err();
        assert!(err.contains("extracting `evil.tar`"), "{err}");
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn gz_is_decompressed_beside_the_download() {
        let sandbox = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello\n").unwrap();
        let tmp = sandbox.path().join(".tmp");
        std::fs::write(&tmp, gz.finish().unwrap()).unwrap();
        place(sandbox.path(), &tmp, "sub/greeting.txt.gz", &uri("/x/greeting.txt.gz")).unwrap();
        assert_eq!(std::fs::read_to_string(sandbox.path().join("sub/greeting.txt")).unwrap(), "hello\n");
        assert!(sandbox.path().join("sub/greeting.txt.gz").exists());
    }

    #[test]
    fn zip_entries_are_confined() {
        let sandbox = tempfile::tempdir().unwrap();
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("../escape", zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(b"x").unwrap();
        let tmp = sandbox.path().join(".tmp");
        std::fs::write(&tmp, w.finish().unwrap().into_inner()).unwrap();
        let err = place(sandbox.path(), &tmp, "a.zip", &uri("/a.zip")).unwrap_err();
        assert!(err.contains("outside the sandbox"), "{err}");
        assert!(!sandbox.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn the_cache_keeps_the_most_recent_within_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            std::fs::write(p.with_extension("key"), name).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            File::options().append(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        evict(dir.path(), 250);
        assert!(!dir.path().join("a").exists() && !dir.path().join("a.key").exists());
        assert!(dir.path().join("b").exists() && dir.path().join("c").exists());
    }
}
