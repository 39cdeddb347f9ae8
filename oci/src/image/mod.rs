//! Container images: a content-addressed store of OCI and Docker images, layers unpacked once
//! (whiteouts as overlayfs writes them) and shared by every container, import of OCI layouts and
//! `docker save` archives, and the image config applied to a launch as Mesos' docker runtime
//! isolator does.
//!
//! ```text
//! <store>/blobs/sha256/<hex>   manifests, indexes, configs, compressed layers (verified on write)
//! <store>/layers/<hex>/        a layer unpacked, named by its diff id (the uncompressed digest)
//! <store>/refs.json            image names → manifest digests
//! <store>/tmp/                 writes in progress; emptied when the store opens
//! ```
pub mod config;
pub mod import;
pub mod layer;
pub mod reference;
pub mod store;

pub use config::{apply_config, Applied};
pub use reference::Reference;
pub use store::{Image, Store};

/// Manifests, indexes and configs bigger than this are refused (a registry or archive that
/// sends more is broken or hostile).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The request is wrong (a bad reference, a missing name): the caller's to fix.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// What came in is wrong: a digest mismatch, a truncated blob, an unknown media type, a
    /// layer that tries to escape. Nothing of it is kept.
    #[error("{0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ImageError {
        ImageError::Io { context: context.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// A `sha256:<64 lowercase hex>` digest (the only algorithm the store keeps).
pub fn check_digest(d: &str) -> std::result::Result<&str, String> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        Some(_) => Err(format!("digest `{}` is not sha256 and 64 lowercase hex digits", d.escape_debug())),
        None => Err(format!("digest `{}`: only sha256 digests are supported", d.escape_debug())),
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn layer_compression(media_type: &str) -> Result<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | MEDIA_DOCKER_LAYER => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | MEDIA_DOCKER_LAYER_GZIP
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(ImageError::Corrupt(format!("unknown layer media type `{}`", other.escape_debug()))),
    }
}

/// The platform images are picked for: this machine's, in Go's names as image indexes use them.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_media_types() {
        let good = format!("sha256:{}", "0f".repeat(32));
        assert!(check_digest(&good).is_ok());
        assert!(check_digest(&good.to_uppercase()).is_err());
        assert!(check_digest("sha512:abc").is_err());
        assert!(check_digest(&format!("sha256:{}", "0".repeat(63))).is_err());
        assert_eq!(layer_compression(MEDIA_DOCKER_LAYER_GZIP).unwrap(), Compression::Gzip);
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(), Compression::Zstd);
        assert!(matches!(layer_compression("text/html"), Err(ImageError::Corrupt(_))));
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
