//! OCI `linux.seccomp` → BPF programs (seccompiler), loaded last before exec.
//!
//! seccompiler builds one program per action, so a profile becomes one program that lets every
//! rule's syscalls through and applies the default action to the rest, plus one program per
//! other action that applies it to its rules and lets everything else through. The kernel runs
//! them all and keeps the strictest verdict (the last loaded among equals), which is exactly
//! the profile's meaning.
use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use super::Error;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, Error> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Bundle("linux.seccomp: SCMP_ACT_NOTIFY is not supported".into()));
        }
    })
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn conditions(args: &[oci_spec::runtime::LinuxSeccompArg]) -> Result<Vec<SeccompCondition>, Error> {
    args.iter()
        .map(|a| {
            let index = u8::try_from(a.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| Error::Bundle(format!("linux.seccomp: argument index {} is not 0-5", a.index())))?;
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    (SeccompCmpOp::MaskedEq(a.value()), a.value_two().unwrap_or(0))
                }
            };
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| Error::Bundle(format!("linux.seccomp: {e}")))
        })
        .collect()
}

/// Rules being collected: `None` for a syscall matched unconditionally.
type Acc = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(acc: &mut Acc, nr: i64, conds: &[SeccompCondition]) -> Result<(), Error> {
    let rule = || SeccompRule::new(conds.to_vec()).map_err(|e| Error::Bundle(format!("linux.seccomp: {e}")));
    match acc.get_mut(&nr) {
        None if conds.is_empty() => {
            acc.insert(nr, None);
        }
        None => {
            acc.insert(nr, Some(vec![rule()?]));
        }
        Some(None) => {}
        Some(slot @ Some(_)) if conds.is_empty() => *slot = None,
        Some(Some(rules)) => rules.push(rule()?),
    }
    Ok(())
}

/// seccompiler's form: an empty rule list matches every call.
fn finish(acc: Acc) -> Rules {
    acc.into_iter().map(|(nr, rules)| (nr, rules.unwrap_or_default())).collect()
}

/// Compiles `profile` for this machine's architecture. Syscall names this architecture does not
/// have are skipped, as libseccomp-based runtimes do.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, Error> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| Error::Bundle(format!("linux.seccomp: unsupported architecture {}", std::env::consts::ARCH)))?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut all: Acc = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, Acc)> = Vec::new();
    for syscall in profile.syscalls().iter().flatten() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        let conds = conditions(syscall.args().as_deref().unwrap_or(&[]))?;
        let group = match by_action.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                by_action.push((act.clone(), BTreeMap::new()));
                by_action.len() - 1
            }
        };
        for name in syscall.names() {
            let Ok(nr) = syscalls::Sysno::from_str(name) else { continue };
            let nr = i64::from(nr.id());
            add(&mut all, nr, &conds)?;
            add(&mut by_action[group].1, nr, &conds)?;
        }
    }
    let build = |rules: Rules, mismatch: SeccompAction, matched: SeccompAction| -> Result<BpfProgram, Error> {
        let filter = SeccompFilter::new(rules, mismatch, matched, arch)
            .map_err(|e| Error::Bundle(format!("linux.seccomp: {e}")))?;
        BpfProgram::try_from(filter).map_err(|e| Error::Bundle(format!("linux.seccomp: {e}")))
    };
    let mut programs: Vec<BpfProgram> = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(finish(all), default.clone(), SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        if act != SeccompAction::Allow && !rules.is_empty() {
            programs.push(build(finish(rules), SeccompAction::Allow, act)?);
        }
    }
    programs.iter_mut().for_each(guard_x32);
    Ok(programs)
}

/// Loads the programs into the calling thread (and its future children).
pub fn load(programs: &[BpfProgram]) -> Result<(), Error> {
    for p in programs {
        crate::sys::load_seccomp(p).map_err(|e| Error::Process(format!("loading the seccomp filter: {e}")))?;
    }
    Ok(())
}

/// x32 syscalls carry the x86_64 architecture with bit 30 set in their number: without this
/// guard a deny rule for a syscall is bypassed through its x32 number. Refuse them all
/// (ENOSYS) ahead of every program. Jumps inside a BPF program are relative, so prepending is
/// safe.
fn guard_x32(program: &mut BpfProgram) {
    if std::env::consts::ARCH != "x86_64" {
        return;
    }
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| seccompiler::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let guard = [
        // A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // if (A & X32_SYSCALL_BIT) fall through to the return, else skip it
        seccompiler::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    program.splice(0..0, guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles() {
        let caps = husk_oci::caps::DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect();
        let programs = compile(&husk_oci::seccomp::default_profile(&caps)).unwrap();
        assert_eq!(programs.len(), 2, "EPERM and ENOSYS programs; the default is allow");
    }

    #[test]
    fn every_program_refuses_x32_syscalls_first() {
        let caps = husk_oci::caps::DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect();
        for p in compile(&husk_oci::seccomp::default_profile(&caps)).unwrap() {
            if std::env::consts::ARCH == "x86_64" {
                assert_eq!(p[0].k, 0, "loads the syscall number");
                assert_eq!(p[1].k, 0x4000_0000, "tests the x32 bit");
                assert_eq!(p[2].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
            }
        }
    }

    #[test]
    fn allowlist_profile_compiles_with_a_default_program() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
            ]
        }))
        .unwrap();
        assert_eq!(compile(&profile).unwrap().len(), 1);
        let bad: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }))
        .unwrap();
        assert!(compile(&bad).unwrap_err().to_string().contains("argument index 7"));
    }
}
