//! Property: every valid launch translates to a spec that serializes, reads back as the same
//! spec, passes husk's spec checks, and keeps Mesos' resource rules.
use std::collections::HashMap;

use husk_oci::check::check_spec;
use husk_oci::resources::scalar;
use husk_oci::{translate, Config, Placement};
use husk_proto::agent::v1::LaunchRequest;
use husk_proto::mesos::v1::{
    capability_info::Capability, container_info, environment, r_limit_info, tty_info, value, CapabilityInfo,
    CommandInfo, ContainerId, ContainerInfo, Environment, LinuxInfo, RLimitInfo, TtyInfo,
};
use oci_spec::runtime::Spec;
use proptest::prelude::*;

fn id_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
}

fn env_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Z_][A-Z0-9_]{0,15}", "[ -~]{0,32}"), 0..8)
}

fn rlimit_strategy() -> impl Strategy<Value = Vec<r_limit_info::RLimit>> {
    prop::collection::btree_map(1i32..=16, (any::<u32>(), any::<u32>(), any::<bool>()), 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(ty, (a, b, unlimited))| {
                let (soft, hard) = (a.min(b) as u64, a.max(b) as u64);
                r_limit_info::RLimit {
                    r#type: Some(ty),
                    soft: (!unlimited).then_some(soft),
                    hard: (!unlimited).then_some(hard),
                }
            })
            .collect()
    })
}

fn caps_strategy() -> impl Strategy<Value = Option<Vec<i32>>> {
    prop::option::of(prop::collection::btree_set(1000i32..=1040, 0..10).prop_map(|s| s.into_iter().collect()))
}

prop_compose! {
    fn launch_strategy()(
        id in id_strategy(),
        shell in any::<bool>(),
        value in "[a-z/][ -~]{0,40}",
        arguments in prop::collection::vec("[ -~]{0,16}", 0..5),
        env in env_strategy(),
        cpus in prop::option::of(0.0f64..64.0),
        mem in prop::option::of(0.0f64..65536.0),
        cpu_extra in prop::option::of(prop_oneof![Just(f64::INFINITY), 0.0f64..8.0]),
        mem_extra in prop::option::of(prop_oneof![Just(f64::INFINITY), 0.0f64..4096.0]),
        rlimits in rlimit_strategy(),
        hostname in prop::option::of("[a-z][a-z0-9-]{0,20}[a-z0-9]"),
        effective in caps_strategy(),
        shm in prop::option::of(1u32..1024),
        share_pid in any::<bool>(),
        tty in prop::option::of((1u32..500, 1u32..500)),
    ) -> LaunchRequest {
        let mut resources = Vec::new();
        if let Some(c) = cpus { resources.push(scalar("cpus", c)); }
        if let Some(m) = mem { resources.push(scalar("mem", m)); }
        let mut limits = HashMap::new();
        // A limit is never below its request; a positive extra keeps it so.
        if let Some(extra) = cpu_extra {
            limits.insert("cpus".to_string(), value::Scalar { value: cpus.unwrap_or(0.0) + extra + 0.01 });
        }
        if let Some(extra) = mem_extra {
            limits.insert("mem".to_string(), value::Scalar { value: mem.unwrap_or(0.0) + extra + 1.0 });
        }
        LaunchRequest {
            container_id: ContainerId { value: id, parent: None },
            command: Some(CommandInfo {
                shell: Some(shell),
                value: Some(value),
                arguments,
                environment: Some(Environment {
                    variables: env.into_iter().map(|(name, value)| environment::Variable {
                        name, value: Some(value), ..Default::default()
                    }).collect(),
                }),
                ..Default::default()
            }),
            resources,
            limits,
            container: Some(ContainerInfo {
                r#type: container_info::Type::Mesos as i32,
                hostname,
                rlimit_info: Some(RLimitInfo { rlimits }),
                tty_info: tty.map(|(rows, columns)| TtyInfo { window_size: Some(tty_info::WindowSize { rows, columns }) }),
                linux_info: Some(LinuxInfo {
                    effective_capabilities: effective.map(|capabilities| CapabilityInfo { capabilities }),
                    shm_size: shm,
                    share_pid_namespace: Some(share_pid),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_launches_make_valid_specs(req in launch_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let place = Placement { sandbox_dir: dir.path().to_path_buf(), ..Default::default() };
        // share_pid_namespace is in the strategy: an agent that allows it.
        let cfg = Config { allow_host_pid_namespace: true, ..Config::default() };
        let t = translate(&req, &cfg, &place).map_err(|e| TestCaseError::fail(e.to_string()))?;

        let json = serde_json::to_string(&t.spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &t.spec);
        check_spec(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;

        let res = t.spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        if let Some(cpus) = t.requests.cpus {
            prop_assert_eq!(res.cpu().as_ref().unwrap().shares(), Some(((1024.0 * cpus) as u64).max(2)));
        }
        if let Some(mem) = res.memory() {
            if let Some(limit) = mem.limit() {
                prop_assert!(limit >= 32 * 1024 * 1024);
            }
        }
        let caps = t.spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        let allowed: std::collections::BTreeSet<String> = cfg.allowed_capabilities.clone();
        for c in caps.bounding().iter().flatten() {
            let name = serde_json::to_value(c).unwrap().as_str().unwrap().to_string();
            prop_assert!(allowed.contains(&name), "{} escaped the allowed set", name);
        }
    }

    #[test]
    fn resource_text_round_trips(cpus in 0u32..10_000, mem in 0u32..1_000_000, lo in 1u64..30_000, span in 0u64..1000) {
        let text = format!("cpus:{};mem:{};ports:[{}-{}]", f64::from(cpus) / 100.0, mem, lo, lo + span);
        let parsed = husk_oci::resources::parse(&text, "r").unwrap();
        let again = husk_oci::resources::parse(&husk_oci::resources::to_text(&parsed), "r").unwrap();
        prop_assert_eq!(parsed, again);
    }

    #[test]
    fn resource_parser_never_panics(input in "\\PC{0,64}") {
        let _ = husk_oci::resources::parse(&input, "r");
    }
}

#[test]
fn every_capability_maps() {
    for c in 1000..=1040 {
        let cap = Capability::try_from(c).unwrap();
        let name = husk_oci::caps::from_mesos(cap as i32, "f").unwrap();
        husk_oci::caps::to_oci(&name).unwrap();
    }
}
