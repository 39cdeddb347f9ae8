//! A bundle's `config.json` as `husk-runtime create` reads it: parsing and the structural checks
//! never panic, whatever the file holds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<Spec>(data) {
        let _ = husk_oci::check::check_spec(&spec);
    }
});
