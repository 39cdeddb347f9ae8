//! The default seccomp profile, in OCI form.
//!
//! Allow by default and refuse (EPERM) the syscalls a container has no business making: kernel
//! and module loading, reboot, swap, clock setting, the keyring, accounting, raw I/O ports, and
//! the mount/namespace/tracing families unless the container holds the capability that would
//! make them meaningful (as Docker's default profile conditions them). The kernel checks the
//! capabilities too; seccomp closes the attack surface of the syscall code before that check.
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};

use crate::caps::CapSet;

/// Syscalls refused to every container.
const ALWAYS_DENIED: &[&str] = &[
    "add_key",
    "create_module",
    "get_kernel_syms",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "nfsservctl",
    "query_module",
    "request_key",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Syscalls refused unless the container holds the capability in the first column.
const DENIED_WITHOUT: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_MODULE", &["delete_module", "finit_module", "init_module"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    ("CAP_SYS_TIME", &["adjtimex", "clock_adjtime", "clock_settime", "settimeofday", "stime"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "move_pages", "set_mempolicy"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// errno returned for a refused syscall.
pub const DENIED_ERRNO: u32 = libc::EPERM as u32;

/// clone(2) flags that create namespaces: refused without CAP_SYS_ADMIN, like unshare(2).
const NAMESPACE_CLONE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The syscalls the default profile refuses to a container whose bounding set is `caps`.
pub fn denied_syscalls(caps: &CapSet) -> Vec<String> {
    let mut names: Vec<String> = ALWAYS_DENIED.iter().map(|s| s.to_string()).collect();
    for (cap, syscalls) in DENIED_WITHOUT {
        if !caps.contains(*cap) {
            names.extend(syscalls.iter().map(|s| s.to_string()));
        }
    }
    names.sort_unstable();
    names
}

/// The default profile for a container whose bounding set is `caps`.
pub fn default_profile(caps: &CapSet) -> LinuxSeccomp {
    let mut rules = vec![rule(denied_syscalls(caps), DENIED_ERRNO, None)];
    if !caps.contains("CAP_SYS_ADMIN") {
        // clone3 passes its flags in memory, where seccomp cannot look: ENOSYS makes libc fall
        // back to clone(2), whose flags it can check.
        rules.push(rule(vec!["clone3".to_string()], libc::ENOSYS as u32, None));
        for flag in NAMESPACE_CLONE_FLAGS {
            rules.push(rule(vec!["clone".to_string()], DENIED_ERRNO, Some(*flag)));
        }
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchArm,
        ])
        .syscalls(rules)
        .build()
        .expect("seccomp profile has every required field")
}

/// Refuse `names` with `errno`; with `flag`, only calls whose first argument has that bit set.
fn rule(names: Vec<String>, errno: u32, flag: Option<u64>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default().names(names).action(LinuxSeccompAction::ScmpActErrno).errno_ret(errno);
    if let Some(bit) = flag {
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(bit)
            .value_two(bit)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .expect("seccomp argument has every required field");
        b = b.args(vec![arg]);
    }
    b.build().expect("syscall rule has every required field")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_container_is_denied_the_dangerous_families() {
        let caps: CapSet = crate::caps::DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect();
        let denied = denied_syscalls(&caps);
        for name in [
            "kexec_load",
            "init_module",
            "finit_module",
            "reboot",
            "swapon",
            "keyctl",
            "add_key",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "ptrace",
            "pivot_root",
            "open_tree",
        ] {
            assert!(denied.iter().any(|d| d == name), "{name} must be denied");
        }
        assert!(denied.iter().any(|d| d == "io_uring_setup"));
        for name in ["read", "write", "clone", "execve", "chown", "setuid", "kill"] {
            assert!(!denied.iter().any(|d| d == name), "{name} must be allowed");
        }
    }

    #[test]
    fn capabilities_lift_their_family_only() {
        let caps: CapSet = ["CAP_SYS_ADMIN".to_string()].into();
        let denied = denied_syscalls(&caps);
        assert!(!denied.contains(&"mount".to_string()));
        assert!(denied.contains(&"reboot".to_string()));
        assert!(denied.contains(&"keyctl".to_string()), "the keyring stays closed whatever the capabilities");
    }

    #[test]
    fn profile_serializes_as_oci() {
        let json = serde_json::to_value(default_profile(&CapSet::new())).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(json["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(json["syscalls"][0]["errnoRet"], 1);
        assert_eq!(json["syscalls"][1]["names"][0], "clone3");
        assert_eq!(json["syscalls"][1]["errnoRet"], libc::ENOSYS);
        let clone_rules: Vec<_> =
            json["syscalls"].as_array().unwrap().iter().filter(|r| r["names"][0] == "clone").collect();
        assert_eq!(clone_rules.len(), 7, "one rule per namespace flag");
        let newuser = clone_rules.iter().find(|r| r["args"][0]["value"] == libc::CLONE_NEWUSER as u64).unwrap();
        assert_eq!(newuser["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(newuser["args"][0]["valueTwo"], libc::CLONE_NEWUSER as u64);
        // With CAP_SYS_ADMIN the namespace rules go.
        let admin = serde_json::to_value(default_profile(&["CAP_SYS_ADMIN".to_string()].into())).unwrap();
        assert_eq!(admin["syscalls"].as_array().unwrap().len(), 1);
    }
}
