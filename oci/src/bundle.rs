//! Writing a translated spec out as an OCI bundle directory.
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use oci_spec::runtime::Spec;

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::translate::Translation;

/// The bundle's spec file name.
pub const CONFIG_JSON: &str = "config.json";

impl Translation {
    /// Writes `config.json` into `bundle_dir` (created if missing, mode 0711) atomically, and
    /// creates the sandbox directories that SANDBOX_PATH volumes mount and, for a host-rootfs
    /// container, the `rootfs` mount point.
    pub fn write_bundle(&self, bundle_dir: &Path) -> Result<()> {
        for (root, rel) in &self.sandbox_dirs {
            crate::fs::mkdir_in_root(root, rel, 0o755).map_err(|e| Error::io(root.join(rel), e))?;
        }
        write_spec(bundle_dir, &self.spec)?;
        if self.host_rootfs {
            let root = bundle_dir.join(crate::translate::HOST_ROOTFS_DIR);
            DirBuilder::new().recursive(true).mode(0o755).create(&root).map_err(|e| Error::io(&root, e))?;
        }
        Ok(())
    }
}

/// Writes `spec` as `<bundle_dir>/config.json`, atomically.
pub fn write_spec(bundle_dir: &Path, spec: &Spec) -> Result<()> {
    DirBuilder::new().recursive(true).mode(0o711).create(bundle_dir).map_err(|e| Error::io(bundle_dir, e))?;
    let json = serde_json::to_vec_pretty(spec).map_err(|e| Error::io(bundle_dir, std::io::Error::other(e)))?;
    let path = bundle_dir.join(CONFIG_JSON);
    write_atomic(&path, &json, 0o600).map_err(|e| Error::io(path, e))
}

/// Reads `<bundle_dir>/config.json`.
pub fn read_spec(bundle_dir: &Path) -> Result<Spec> {
    let path = bundle_dir.join(CONFIG_JSON);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(path.display().to_string(), format!("not an OCI runtime spec: {e}")))
}
