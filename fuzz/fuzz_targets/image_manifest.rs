//! What a registry or an image archive hands husk before any layer: the first byte picks the
//! parser, the rest is its input.
//! - 0: an index or a manifest (`platform_manifest`, then `parse_manifest`);
//! - 1: an image config, then applied to a launch's command the way the docker runtime
//!   isolator does;
//! - 2: an image reference, which once parsed renders back to itself.
//!
//! Nothing may panic, and a manifest husk accepts names only digests it can later open.
#![no_main]
use husk_oci::image::{self, store, Reference};
use husk_proto::mesos::v1::CommandInfo;
use libfuzzer_sys::fuzz_target;
use oci_spec::image::ImageConfiguration;

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(Some(next)) = store::platform_manifest(rest, DIGEST) {
                image::check_digest(&next).expect("an index entry husk follows has a valid digest");
            }
            if let Ok(m) = store::parse_manifest(rest, DIGEST) {
                image::check_digest(m.config().digest().as_ref()).expect("the config digest was checked");
                for l in m.layers() {
                    image::layer_compression(l.media_type().as_ref()).expect("layer media types were checked");
                }
            }
        }
        1 => {
            let Ok(config) = serde_json::from_slice::<ImageConfiguration>(rest) else { return };
            for shell in [false, true] {
                for value in [None, Some("run")] {
                    let cmd = CommandInfo {
                        shell: Some(shell),
                        value: value.map(str::to_string),
                        arguments: vec!["argv0".into(), "a".into()],
                        ..Default::default()
                    };
                    if let Ok(applied) = image::apply_config(&cmd, &config) {
                        assert!(
                            applied.command.value.is_some() || !applied.command.arguments.is_empty(),
                            "an applied config always has something to run: {applied:?}"
                        );
                    }
                }
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let Ok(r) = Reference::parse(text) else { return };
            let mut rendered = r.name();
            if let Some(t) = &r.tag {
                rendered = format!("{rendered}:{t}");
            }
            if let Some(d) = &r.digest {
                rendered = format!("{rendered}@{d}");
            }
            let again = Reference::parse(&rendered)
                .unwrap_or_else(|e| panic!("`{text}` parsed, but its full form `{rendered}` does not: {e}"));
            assert_eq!(again, r, "`{text}` → `{rendered}`");
        }
    }
});
