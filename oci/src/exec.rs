//! An exec request → the runtime-spec `process` to run: the container's own process (its
//! environment, user, capabilities, rlimits, no_new_privs) with the request's command and
//! options over it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use husk_proto::agent::v1::ExecProcess;
use oci_spec::runtime::{Capabilities, LinuxCapabilities, Process};

use crate::error::{Error, Result};
use crate::{caps, user, validate};

/// The process for `req` in a container whose own process is `base`; `root` is the
/// container's root as the node sees it (for resolving `command.user` in its /etc/passwd).
pub fn exec_process(base: &Process, req: &ExecProcess, root: &Path) -> Result<Process> {
    let cmd = &req.command;
    validate::command(cmd, "start.command")?;
    if !cmd.uris.is_empty() {
        return Err(Error::invalid("start.command.uris", "an exec fetches nothing: launch a container for that"));
    }
    let mut p = base.clone();
    p.set_args(Some(crate::translate::process_args(cmd, &mut HashMap::new())));

    let mut env = p.env().clone().unwrap_or_default();
    for var in cmd.environment.iter().flat_map(|e| &e.variables) {
        env.retain(|kv| kv.split_once('=').map(|(n, _)| n) != Some(var.name.as_str()));
        env.push(format!("{}={}", var.name, var.value()));
    }
    p.set_env(Some(env));

    if let Some(u) = cmd.user.as_deref() {
        let resolved = user::resolve(root, u, "start.command.user")?;
        let mut user = p.user().clone();
        user.set_uid(resolved.uid);
        user.set_gid(resolved.gid);
        user.set_additional_gids(Some(resolved.additional_gids));
        p.set_user(user);
        if let Some(home) = resolved.home {
            let mut env = p.env().clone().unwrap_or_default();
            env.retain(|kv| !kv.starts_with("HOME="));
            env.push(format!("HOME={home}"));
            p.set_env(Some(env));
        }
    }
    if let Some(w) = req.working_dir.as_deref().filter(|w| !w.is_empty()) {
        validate::volume_path(w, "start.working_dir")?;
        if !w.starts_with('/') {
            return Err(Error::invalid(
                "start.working_dir",
                format!("`{}` must be an absolute path", w.escape_debug()),
            ));
        }
        p.set_cwd(PathBuf::from(w));
    }
    p.set_terminal(Some(req.tty()));
    p.set_console_size(None);
    if let Some(size) = &req.window_size {
        if !req.tty() {
            return Err(Error::invalid("start.window_size", "needs `tty`"));
        }
        p.set_console_size(Some(crate::translate::console_size(size, "start.window_size")?));
    }
    if let Some(info) = &req.capabilities {
        // Never more than the container has: its bounding set is what the agent allowed it.
        let bounding = base.capabilities().as_ref().and_then(|c| c.bounding().clone()).unwrap_or_default();
        let mut set = Capabilities::new();
        for (i, c) in info.capabilities.iter().enumerate() {
            let at = format!("start.capabilities.capabilities[{i}]");
            let name = caps::from_mesos(*c, &at)?;
            let cap = caps::to_oci(&name).map_err(|_| Error::invalid(&at, format!("unknown capability {name}")))?;
            if !bounding.contains(&cap) {
                return Err(Error::invalid(&at, format!("{name} is not in the container's bounding set")));
            }
            set.insert(cap);
        }
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(set.clone()));
        c.set_effective(Some(set.clone()));
        c.set_permitted(Some(set));
        c.set_inheritable(Some(Capabilities::new()));
        c.set_ambient(Some(Capabilities::new()));
        p.set_capabilities(Some(c));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::mesos::v1::{environment, CapabilityInfo, CommandInfo, ContainerId, Environment};

    fn base() -> Process {
        let mut p = Process::default();
        p.set_args(Some(vec!["/bin/sh".into(), "-c".into(), "sleep 100".into()]));
        p.set_env(Some(vec!["PATH=/bin".into(), "MESOS_SANDBOX=/sb".into(), "KEEP=1".into()]));
        p.set_cwd("/sb".into());
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some([oci_spec::runtime::Capability::NetRaw, oci_spec::runtime::Capability::Chown].into()));
        p.set_capabilities(Some(caps));
        p
    }

    fn req(cmd: CommandInfo) -> ExecProcess {
        ExecProcess {
            container_id: ContainerId { value: "c".into(), parent: None },
            command: cmd,
            ..Default::default()
        }
    }

    fn var(name: &str, value: &str) -> environment::Variable {
        environment::Variable { name: name.into(), value: Some(value.into()), ..Default::default() }
    }

    #[test]
    fn the_container_process_with_the_request_over_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "app:x:1000:1000:app:/home/app:/bin/sh\n").unwrap();
        std::fs::write(root.path().join("etc/group"), "app:x:1000:\nvideo:x:44:app\n").unwrap();
        let mut r = req(CommandInfo {
            value: Some("ps".into()),
            arguments: vec!["ps".into(), "-o".into(), "pid".into()],
            shell: Some(false),
            user: Some("app".into()),
            environment: Some(Environment { variables: vec![var("KEEP", "2"), var("NEW", "x")] }),
            ..Default::default()
        });
        r.working_dir = Some("/tmp".into());
        r.tty = Some(true);
        r.window_size = Some(husk_proto::mesos::v1::tty_info::WindowSize { rows: 40, columns: 120 });
        r.capabilities = Some(CapabilityInfo {
            capabilities: vec![husk_proto::mesos::v1::capability_info::Capability::NetRaw as i32],
        });
        let p = exec_process(&base(), &r, root.path()).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["ps", "-o", "pid"]);
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"KEEP=2".to_string()) && !env.contains(&"KEEP=1".to_string()), "{env:?}");
        assert!(env.contains(&"NEW=x".to_string()) && env.contains(&"MESOS_SANDBOX=/sb".to_string()));
        assert!(env.contains(&"HOME=/home/app".to_string()));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[44]);
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.console_size().unwrap().height(), 40);
        let c = p.capabilities().as_ref().unwrap();
        assert_eq!(c.effective().as_ref().unwrap().len(), 1);
        assert!(c.ambient().as_ref().unwrap().is_empty());

        let shell = exec_process(
            &base(),
            &req(CommandInfo { value: Some("echo $HOME".into()), ..Default::default() }),
            root.path(),
        )
        .unwrap();
        assert_eq!(shell.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo $HOME"]);
        assert_eq!(shell.cwd(), Path::new("/sb"));
        assert_eq!(shell.terminal(), Some(false));
    }

    #[test]
    fn bad_requests_name_their_field() {
        let root = tempfile::tempdir().unwrap();
        let cases: Vec<(ExecProcess, &str)> = vec![
            (req(CommandInfo::default()), "start.command.value"),
            (
                req(CommandInfo { value: Some("a\0b".into()), ..Default::default() }),
                "start.command.value: must not contain a NUL byte",
            ),
            (
                req(CommandInfo { value: Some("true".into()), user: Some("nobody-here".into()), ..Default::default() }),
                "start.command.user",
            ),
            (
                ExecProcess {
                    working_dir: Some("tmp".into()),
                    ..req(CommandInfo { value: Some("true".into()), ..Default::default() })
                },
                "start.working_dir: `tmp` must be an absolute path",
            ),
            (
                ExecProcess {
                    working_dir: Some("/a/../b".into()),
                    ..req(CommandInfo { value: Some("true".into()), ..Default::default() })
                },
                "start.working_dir",
            ),
            (
                ExecProcess {
                    window_size: Some(husk_proto::mesos::v1::tty_info::WindowSize { rows: 1, columns: 1 }),
                    ..req(CommandInfo { value: Some("true".into()), ..Default::default() })
                },
                "start.window_size: needs `tty`",
            ),
            (
                ExecProcess {
                    capabilities: Some(CapabilityInfo {
                        capabilities: vec![husk_proto::mesos::v1::capability_info::Capability::SysAdmin as i32],
                    }),
                    ..req(CommandInfo { value: Some("true".into()), ..Default::default() })
                },
                "start.capabilities.capabilities[0]: CAP_SYS_ADMIN is not in the container's bounding set",
            ),
            (
                req(CommandInfo {
                    value: Some("true".into()),
                    uris: vec![husk_proto::mesos::v1::command_info::Uri {
                        value: "http://x/y".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                "start.command.uris",
            ),
        ];
        for (r, want) in cases {
            let e = exec_process(&base(), &r, root.path()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e} (wanted {want})");
        }
    }
}
