//! A layer tar unpacked as husk unpacks every image layer: whatever the entries say (`..`,
//! absolute paths, symlinks and hard links planted to redirect later entries, devices, setuid
//! bits), nothing lands outside the layer directory, no device node is created (whiteouts are
//! 0/0 character devices) and no setuid or setgid bit survives.
//!
//! Each input is unpacked into `<tmp>/husk-fuzz-layer-<pid>/layer`, beside an empty `outside`
//! directory and a `canary` file that must stay as they are.
#![no_main]
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use husk_oci::image::layer::{self, Options};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"untouched\n";

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("husk-fuzz-layer-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside")).unwrap();
        fs::write(base.join("canary"), CANARY).unwrap();
        base
    })
}

fn check_tree(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let ft = meta.file_type();
        if ft.is_char_device() {
            assert_eq!(meta.rdev(), 0, "{}: only 0/0 whiteouts are device nodes", entry.path().display());
        }
        assert!(!ft.is_block_device(), "{}: a block device", entry.path().display());
        if ft.is_file() {
            assert_eq!(meta.permissions().mode() & 0o6000, 0, "{}: setuid/setgid kept", entry.path().display());
        }
        if ft.is_dir() {
            check_tree(&entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let dest = base.join("layer");
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir(&dest).unwrap();
    let _ = layer::unpack(data, &dest, Options::default());

    let mut names: Vec<_> = fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["canary", "layer", "outside"], "an entry escaped the layer directory");
    assert_eq!(fs::read_dir(base.join("outside")).unwrap().count(), 0, "an entry landed in a sibling directory");
    assert_eq!(fs::read(base.join("canary")).unwrap(), CANARY, "a file beside the layer was overwritten");
    let canary = fs::symlink_metadata(base.join("canary")).unwrap();
    assert!(canary.file_type().is_file() && canary.nlink() == 1, "the file beside the layer was linked: {canary:?}");
    check_tree(&dest);
});
