//! CRI ImageService over husk's image store.
use std::sync::Arc;

use husk_oci::image::reference::Reference;
use husk_proto::cri;
use tonic::{Request, Response, Status};

use super::Cri;
use crate::agent::images;

pub struct ImageService(pub Arc<Cri>);

/// The stored image an ImageSpec names (a name, a digest or a unique digest prefix): a name it
/// has (for the launch), its manifest digest and its config.
pub(super) async fn local(
    cri: &Cri,
    wanted: &str,
) -> Result<(String, String, oci_spec::image::ImageConfiguration), Status> {
    let store = cri.agent.images.store.clone();
    let wanted = wanted.to_string();
    tokio::task::spawn_blocking(move || {
        let (name, record) = store.lookup(&wanted).map_err(|e| match e {
            husk_oci::image::ImageError::NotFound(_) => Status::not_found(format!(
                "config.image.image: image `{}` is not present on the node; pull it first",
                wanted.escape_debug()
            )),
            e => images::status("config.image.image", e),
        })?;
        let name = match name {
            Some(n) => n,
            None => store
                .refs()
                .map_err(|e| images::status("the image store", e))?
                .into_iter()
                .find(|(_, r)| r.digest == record.digest)
                .map(|(n, _)| n)
                .ok_or_else(|| Status::not_found(format!("config.image.image: image {} has no name", record.digest)))?,
        };
        let image = store.image_of(None, &record.digest).map_err(|e| images::status("config.image.image", e))?;
        Ok((name, record.digest, image.config))
    })
    .await
    .map_err(|e| Status::internal(format!("looking up the image: {e}")))?
}

fn image_of(i: husk_proto::agent::v1::Image, config: Option<&oci_spec::image::ImageConfiguration>) -> cri::Image {
    let digest = i.digest.clone().unwrap_or_default();
    let (mut repo_tags, mut repo_digests) = (Vec::new(), Vec::new());
    for n in &i.names {
        match Reference::parse(n) {
            Ok(r) if r.digest.is_some() => repo_digests.push(n.clone()),
            _ => repo_tags.push(n.clone()),
        }
    }
    // The kubelet matches images by `repo@digest` too.
    for n in &repo_tags {
        if let Ok(r) = Reference::parse(n) {
            let by_digest = format!("{}/{}@{digest}", r.registry, r.repository);
            if !repo_digests.contains(&by_digest) {
                repo_digests.push(by_digest);
            }
        }
    }
    let user = config.and_then(|c| c.config().as_ref()).and_then(|c| c.user().clone()).unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default().to_string();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user),
    };
    cri::Image {
        id: digest.clone(),
        repo_tags,
        repo_digests,
        size: i.size.unwrap_or(0),
        uid,
        username,
        spec: Some(cri::ImageSpec { image: digest, ..Default::default() }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let cri = &self.0;
        let only = req.into_inner().filter.and_then(|f| f.image).map(|i| i.image).filter(|i| !i.is_empty());
        let in_use = crate::agent::images_in_use(&cri.agent.all());
        let listed = match cri.agent.images.list(&in_use, only.as_deref()) {
            Ok(l) => l,
            // A filter naming no image lists nothing.
            Err(e) if e.code() == tonic::Code::NotFound && only.is_some() => vec![],
            Err(e) => return Err(e),
        };
        Ok(Response::new(cri::ListImagesResponse { images: listed.into_iter().map(|i| image_of(i, None)).collect() }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let wanted = req.image.map(|i| i.image).unwrap_or_default();
        if wanted.is_empty() {
            return Err(Status::invalid_argument("image.image: is required"));
        }
        // An absent image is an empty answer, not an error: the kubelet pulls then.
        let (_, digest, config) = match local(cri, &wanted).await {
            Ok(found) => found,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(cri::ImageStatusResponse::default()));
            }
            Err(e) => return Err(e),
        };
        let in_use = crate::agent::images_in_use(&cri.agent.all());
        let image = cri.agent.images.list(&in_use, Some(&digest))?.into_iter().next();
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), serde_json::json!({ "imageSpec": config }).to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse { image: image.map(|i| image_of(i, Some(&config))), info }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let cri = &self.0;
        let req = req.into_inner();
        let wanted = req.image.map(|i| i.image).unwrap_or_default();
        let reference = Reference::parse(&wanted).map_err(|e| images::status("image.image", e))?;
        if let Some(auth) = req.auth.filter(|a| *a != cri::AuthConfig::default()) {
            // Credentials go with this pull only, for the image's registry.
            let user_password = match (auth.username.as_str(), auth.auth.as_str()) {
                (_, a) if !a.is_empty() => {
                    use base64::Engine;
                    let bad = || Status::invalid_argument("auth.auth: must be base64 of `user:password`");
                    let raw = base64::engine::general_purpose::STANDARD.decode(a).map_err(|_| bad())?;
                    String::from_utf8(raw).ok().filter(|s| s.contains(':')).ok_or_else(bad)?
                }
                (u, _) if !u.is_empty() => format!("{u}:{}", auth.password),
                _ => return Err(Status::invalid_argument(
                    "auth: only username/password or `auth` credentials are supported (no identity or registry tokens)",
                )),
            };
            let digest = cri.agent.images.pull_with_credentials(&reference, user_password).await?;
            return Ok(Response::new(cri::PullImageResponse { image_ref: digest }));
        }
        let digest = cri.agent.images.pull(&reference, None).await?;
        Ok(Response::new(cri::PullImageResponse { image_ref: digest }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let cri = &self.0;
        let wanted = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        if wanted.is_empty() {
            return Err(Status::invalid_argument("image.image: is required"));
        }
        let keep: std::collections::HashSet<String> =
            crate::agent::images_in_use(&cri.agent.all()).into_keys().collect();
        match cri.agent.images.remove(&wanted, keep, false).await {
            Ok(_) => Ok(Response::new(cri::RemoveImageResponse {})),
            // Idempotent: an image that is not there is removed.
            Err(e) if e.code() == tonic::Code::NotFound => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) => Err(e),
        }
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let cri = &self.0;
        let store = cri.agent.images.store.clone();
        let root = store.root().to_path_buf();
        let (used, inodes) = tokio::task::spawn_blocking(move || (store.disk_usage(), count_inodes(&root)))
            .await
            .map_err(|e| Status::internal(format!("measuring the image store: {e}")))?;
        let usage = |mountpoint: String| cri::FilesystemUsage {
            timestamp: super::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
            used_bytes: Some(cri::UInt64Value { value: used }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(cri.agent.images.store.root().display().to_string())],
            container_filesystems: vec![],
        }))
    }
}

/// Files and directories under `root` (bounded walk; links are not followed).
fn count_inodes(root: &std::path::Path) -> u64 {
    let mut n = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            n += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}
