//! Capability names: Mesos' `CapabilityInfo.Capability` enum, operator configuration text, and
//! the OCI `CAP_*` names.
use std::collections::BTreeSet;

use husk_proto::mesos::v1::capability_info::Capability as MesosCap;
use oci_spec::runtime::Capability;

use crate::error::{Error, Result};

/// The container default set (Docker's and containerd's): what a container gets when neither
/// the operator nor the launch says otherwise.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// A set of capabilities by their canonical `CAP_*` names, kept sorted for stable output.
pub type CapSet = BTreeSet<String>;

/// Parses one capability name as an operator writes it: `CAP_SYS_ADMIN`, `SYS_ADMIN` or
/// `sys_admin`. `ALL` is not a capability here; callers expand it.
pub fn parse_name(name: &str, field: &str) -> Result<String> {
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    to_oci(&canonical).map_err(|_| Error::invalid(field, format!("unknown capability `{}`", name.escape_debug())))?;
    Ok(canonical)
}

/// The default set adjusted as containerd's CRI does it: `ALL` in `add` starts from every
/// capability, `ALL` in `drop` from none; then the named ones are added, then the named ones
/// dropped (so `drop: [ALL], add: [KILL]` is KILL alone). As Mesos capability values, for
/// `LinuxInfo.bounding_capabilities`; errors name `add_field[i]` or `drop_field[i]`.
pub fn adjust_default(add: &[String], drop: &[String], add_field: &str, drop_field: &str) -> Result<Vec<i32>> {
    let is_all = |n: &String| n.trim().eq_ignore_ascii_case("ALL");
    let mut set: CapSet = DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect();
    if add.iter().any(is_all) {
        set = all();
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for (i, name) in add.iter().enumerate().filter(|(_, n)| !is_all(n)) {
        set.insert(parse_name(name, &format!("{add_field}[{i}]"))?);
    }
    for (i, name) in drop.iter().enumerate().filter(|(_, n)| !is_all(n)) {
        set.remove(&parse_name(name, &format!("{drop_field}[{i}]"))?);
    }
    set.iter()
        .map(|c| {
            MesosCap::from_str_name(c.trim_start_matches("CAP_"))
                .map(|c| c as i32)
                .ok_or_else(|| Error::invalid(add_field, format!("{c} has no Mesos capability value")))
        })
        .collect()
}

/// Every capability the kernel knows of (as Mesos enumerates them).
pub fn all() -> CapSet {
    (1000..=1040).filter_map(|n| MesosCap::try_from(n).ok()).map(|c| format!("CAP_{}", c.as_str_name())).collect()
}

/// The capabilities this process holds (its effective set, from `/proc/self/status`): what a
/// privileged container gets, since nothing can hand on more (containerd's rule). A host or a
/// container that runs the agent without some capability runs its privileged containers
/// without it too.
pub fn current() -> Result<CapSet> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::missing("capabilities", format!("/proc/self/status: {e}")))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| Error::missing("capabilities", "/proc/self/status has no CapEff"))?;
    let mask = u64::from_str_radix(hex.trim(), 16)
        .map_err(|e| Error::invalid("capabilities", format!("CapEff `{}`: {e}", hex.trim())))?;
    Ok(of_mask(mask))
}

/// The capabilities whose bits are set in a kernel capability mask (bit n is Mesos' 1000 + n).
pub fn of_mask(mask: u64) -> CapSet {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .filter_map(|bit| MesosCap::try_from(1000 + bit).ok())
        .map(|c| format!("CAP_{}", c.as_str_name()))
        .collect()
}

/// The `CAP_*` name of a Mesos capability enum value.
pub fn from_mesos(value: i32, field: &str) -> Result<String> {
    match MesosCap::try_from(value) {
        Ok(MesosCap::Unknown) | Err(_) => Err(Error::invalid(field, format!("unknown capability value {value}"))),
        Ok(c) => Ok(format!("CAP_{}", c.as_str_name())),
    }
}

/// The OCI capability for a canonical `CAP_*` name.
pub fn to_oci(name: &str) -> std::result::Result<Capability, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_spelling() {
        assert_eq!(parse_name("sys_admin", "f").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(parse_name("CAP_NET_RAW", "f").unwrap(), "CAP_NET_RAW");
        assert_eq!(parse_name("Chown", "f").unwrap(), "CAP_CHOWN");
        assert_eq!(parse_name("CAP_FLY", "caps[0]").unwrap_err().to_string(), "caps[0]: unknown capability `CAP_FLY`");
    }

    #[test]
    fn default_set_adjusted_by_add_and_drop() {
        let names = |v: Vec<i32>| v.into_iter().map(|c| from_mesos(c, "f").unwrap()).collect::<CapSet>();
        let s = names(adjust_default(&["net_admin".into()], &["CHOWN".into()], "add", "drop").unwrap());
        assert!(s.contains("CAP_NET_ADMIN") && !s.contains("CAP_CHOWN") && s.contains("CAP_KILL"));
        assert_eq!(s.len(), DEFAULT_ALLOWED.len());
        let s = names(adjust_default(&["KILL".into()], &["ALL".into()], "add", "drop").unwrap());
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["CAP_KILL"], "drop ALL, then the named adds");
        let s = names(adjust_default(&["ALL".into()], &["CHOWN".into()], "add", "drop").unwrap());
        assert_eq!(s.len(), 40);
        assert_eq!(adjust_default(&["ALL".into()], &[], "add", "drop").unwrap().len(), 41);
        let e = adjust_default(&[], &["x".into(), "FLY".into()], "add", "drop").unwrap_err();
        assert_eq!(e.to_string(), "drop[0]: unknown capability `x`");
    }

    #[test]
    fn kernel_masks() {
        assert_eq!(of_mask(0), CapSet::new());
        assert_eq!(of_mask(1).into_iter().collect::<Vec<_>>(), ["CAP_CHOWN"]);
        assert_eq!(
            of_mask(1 << 21 | 1 << 40).into_iter().collect::<Vec<_>>(),
            ["CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN"]
        );
        assert_eq!(of_mask(u64::MAX), all(), "bits the kernel may grow beyond 40 are not capabilities yet");
        assert_eq!(of_mask(0x1ff_feff_ffff).len(), 40);
        assert!(!of_mask(0x1ff_feff_ffff).contains("CAP_SYS_RESOURCE"));
        // The test runs as root: it holds at least the container default set.
        let current = current().unwrap();
        assert!(DEFAULT_ALLOWED.iter().all(|c| current.contains(*c)), "{current:?}");
    }

    #[test]
    fn mesos_enum_maps_to_oci_names() {
        assert_eq!(from_mesos(MesosCap::Chown as i32, "f").unwrap(), "CAP_CHOWN");
        assert_eq!(from_mesos(MesosCap::CheckpointRestore as i32, "f").unwrap(), "CAP_CHECKPOINT_RESTORE");
        assert!(from_mesos(0, "f").is_err());
        assert!(from_mesos(7, "f").is_err());
        // Every Mesos capability is a capability oci-spec (and so the runtime) knows.
        for name in all() {
            to_oci(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(all().len(), 41);
        for name in DEFAULT_ALLOWED {
            assert!(all().contains(*name));
        }
    }
}
