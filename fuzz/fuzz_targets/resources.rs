//! The resources parser (`--resources` text form and the JSON list form): never panics, and what
//! the text form accepts renders back (`to_text`) into text that parses to the same resources.
#![no_main]
use husk_oci::resources::{self, Amounts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = resources::parse(text, "resources") else { return };
    let amounts = Amounts::of(&parsed);
    let _ = amounts.check_totals("resources");
    if text.trim_start().starts_with('[') {
        return;
    }
    let rendered = resources::to_text(&parsed);
    let again = resources::parse(&rendered, "resources")
        .unwrap_or_else(|e| panic!("`{text}` parsed, but its rendering `{rendered}` does not: {e}"));
    assert_eq!(again, parsed, "`{text}` → `{rendered}` parses to other resources");
});
