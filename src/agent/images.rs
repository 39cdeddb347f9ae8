//! The agent's side of images: provisioning a launch's `container.mesos.image` (the store, a
//! registry pull when the store lacks it or `cached` is false), the rootfs over the image's
//! layers, and the image RPCs' logic (pull, import, list, remove, prune).
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use husk_oci::image::{store::Store, ImageError, Reference};
use oci_spec::image::ImageConfiguration;
use tonic::Status;

use super::registry::{Progress, Registry};

/// How a container's root filesystem is made from the image's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An overlay: the layers read-only below, the container's own layer on top (no copy).
    Overlay,
    /// A copy of every layer into the container's directory, for filesystems overlayfs cannot
    /// sit on.
    Copy,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "overlay" => Ok(Backend::Overlay),
            "copy" => Ok(Backend::Copy),
            other => Err(format!("image backend `{other}`: not one of overlay, copy")),
        }
    }
}

/// An image ready for a container.
pub struct Provisioned {
    pub name: String,
    pub digest: String,
    pub config: ImageConfiguration,
    /// The unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

pub struct Images {
    pub store: Arc<Store>,
    /// Pulls, imports and launches from an image hold it shared while they work; removal and
    /// pruning hold it alone, so they never take what a launch is about to mount.
    pub gc: tokio::sync::RwLock<()>,
    pub backend: Backend,
    registry: Registry,
    /// One pull per reference at a time: concurrent requests for an image share its download.
    pulling: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The gRPC status of an image error, prefixed with what it is about.
pub fn status(context: &str, e: ImageError) -> Status {
    let message = format!("{context}: {e}");
    match e {
        ImageError::Invalid(_) => Status::invalid_argument(message),
        ImageError::NotFound(_) => Status::not_found(message),
        ImageError::Corrupt(_) => Status::failed_precondition(message),
        ImageError::Io { .. } => Status::internal(message),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("image task: {e}")))
}

impl Images {
    pub fn new(store: Store, backend: Backend, registry: Registry) -> Images {
        Images {
            store: Arc::new(store),
            gc: tokio::sync::RwLock::new(()),
            backend,
            registry,
            pulling: Default::default(),
        }
    }

    /// The image of a launch, pulled first when the store lacks it or `cached` is false (as
    /// Mesos' `Image.cached`). The caller holds `gc` shared.
    pub async fn provision(&self, name: &str, cached: bool) -> Result<Provisioned, Status> {
        const FIELD: &str = "container.mesos.image.docker.name";
        let reference = Reference::parse(name).map_err(|e| status(FIELD, e))?;
        let store = self.store.clone();
        let known = match (cached, &reference.digest) {
            // A reference with a digest is that image, whatever its names are now.
            (true, Some(d)) => {
                let (store, d, name) = (store.clone(), d.clone(), reference.to_string());
                blocking(move || {
                    // A manifest's digest, else (an index's) the name it was stored under.
                    store
                        .image_of(None, &d)
                        .ok()
                        .map(|i| i.digest)
                        .or_else(|| store.lookup(&name).ok().map(|(_, r)| r.digest))
                })
                .await?
            }
            (true, None) => store.lookup(&reference.to_string()).ok().map(|(_, r)| r.digest),
            (false, _) => None,
        };
        let digest = match known {
            Some(d) => d,
            None => self
                .pull(&reference, None)
                .await
                .map_err(|e| Status::new(e.code(), format!("{FIELD}: {}", e.message())))?,
        };
        let full = reference.to_string();
        blocking(move || {
            let image = store.image_of(Some(full.clone()), &digest)?;
            let layers = store.unpack(&image)?;
            Ok::<_, ImageError>(Provisioned { name: full, digest, config: image.config, layers })
        })
        .await?
        .map_err(|e| status(FIELD, e))
    }

    /// Pulls `reference` into the store and names it; returns the manifest digest. Concurrent
    /// pulls of one reference wait for the first and reuse what it stored.
    pub async fn pull(&self, reference: &Reference, progress: Option<&Progress>) -> Result<String, Status> {
        self.pull_from(&self.registry, reference, progress).await
    }

    /// Pulls with credentials for this pull only (`user:password` for the image's registry).
    pub async fn pull_with_credentials(&self, reference: &Reference, user_password: String) -> Result<String, Status> {
        let registry = self.registry.with_credentials(&reference.registry, user_password);
        self.pull_from(&registry, reference, None).await
    }

    async fn pull_from(
        &self,
        registry: &Registry,
        reference: &Reference,
        progress: Option<&Progress>,
    ) -> Result<String, Status> {
        let key = reference.to_string();
        let lock = self.pulling.lock().unwrap().entry(key.clone()).or_default().clone();
        let _one = lock.lock().await;
        let (digest, index) = registry.pull(&self.store, reference, progress).await?;
        let store = self.store.clone();
        let d = digest.clone();
        blocking(move || {
            let image = store.image_of(Some(key.clone()), &d)?;
            store.unpack(&image)?;
            store.tag(&key, &d, index)
        })
        .await?
        .map_err(|e| status(&reference.to_string(), e))?;
        Ok(digest)
    }

    pub async fn import(
        &self,
        path: PathBuf,
        name: Option<String>,
    ) -> Result<Vec<husk_oci::image::import::Imported>, Status> {
        let store = self.store.clone();
        let shown = path.display().to_string();
        blocking(move || husk_oci::image::import::import(&store, &path, name.as_deref()))
            .await?
            .map_err(|e| status(&shown, e))
    }

    /// Every image, grouped by manifest, with how many of `in_use` run from it.
    pub fn list(
        &self,
        in_use: &HashMap<String, u32>,
        only: Option<&str>,
    ) -> Result<Vec<husk_proto::agent::v1::Image>, Status> {
        let refs = self.store.refs().map_err(|e| status("the image store", e))?;
        let wanted = match only {
            Some(o) => Some(self.store.lookup(o).map_err(|e| status("name", e))?.1.digest),
            None => None,
        };
        let mut by_digest: std::collections::BTreeMap<String, husk_proto::agent::v1::Image> = Default::default();
        for (name, record) in refs {
            if wanted.as_ref().is_some_and(|w| *w != record.digest) {
                continue;
            }
            let entry = by_digest.entry(record.digest.clone()).or_insert_with(|| {
                let image = self.store.image_of(None, &record.digest).ok();
                husk_proto::agent::v1::Image {
                    digest: Some(record.digest.clone()),
                    size: image.as_ref().map(|i| i.size),
                    layers: image.as_ref().map(|i| i.diff_ids.len() as u32),
                    containers: Some(in_use.get(&record.digest).copied().unwrap_or(0)),
                    config_json: match only {
                        Some(_) => image.and_then(|i| serde_json::to_string(&i.config).ok()),
                        None => None,
                    },
                    ..Default::default()
                }
            });
            entry.names.push(name);
            entry.created_ns = Some(entry.created_ns.unwrap_or(0).max(record.created_ns));
        }
        Ok(by_digest.into_values().collect())
    }

    /// Removes names, then whatever nothing reaches any more (but `keep`).
    pub async fn remove(&self, name: &str, keep: HashSet<String>, force: bool) -> Result<(Vec<String>, u64), Status> {
        let _alone = self.gc.write().await;
        let (_, record) = self.store.lookup(name).map_err(|e| status("name", e))?;
        if keep.contains(&record.digest) && !force {
            return Err(Status::failed_precondition(format!(
                "name: image `{name}` ({}) is used by a live container (force removes its name; its content stays \
                 until the container is gone)",
                record.digest
            )));
        }
        let store = self.store.clone();
        let name = name.to_string();
        blocking(move || {
            let untagged = store.untag(&name)?;
            let pruned = store.collect(&keep, &HashSet::new(), false)?;
            Ok::<_, ImageError>((untagged, pruned.bytes))
        })
        .await?
        .map_err(|e| status("the image store", e))
    }

    pub async fn prune(&self, keep: HashSet<String>, excluded: Vec<String>) -> Result<(Vec<String>, u64), Status> {
        let _alone = self.gc.write().await;
        let store = self.store.clone();
        let exclude: HashSet<String> = excluded.into_iter().collect();
        let pruned =
            blocking(move || store.collect(&keep, &exclude, true)).await?.map_err(|e| status("the image store", e))?;
        Ok((pruned.names, pruned.bytes))
    }
}
