//! The image config applied to a launch, as Mesos' `docker/runtime` isolator applies it.
//!
//! The command, by `CommandInfo.shell`, whether `value` is set, and the image's Entrypoint
//! (E) and Cmd (C), with `arguments` the full argv (argv[0] included) as Mesos passes it:
//!
//! | shell | value | launched                                                                  |
//! |-------|-------|---------------------------------------------------------------------------|
//! | true  | set   | `/bin/sh -c value` (E and C ignored)                                      |
//! | true  | unset | an error                                                                  |
//! | false | set   | E + [value] + argv[1..] when E is set, else `value` with argv as given    |
//! | false | unset | E + (argv if given, else C) when E is set, else argv if given, else C; an error when all are empty |
//!
//! Env: the image's variables go below the user's (the user's win). WorkingDir becomes the
//! working directory unless the launch names one. User becomes the user unless the launch
//! names one.
use husk_proto::mesos::v1::CommandInfo;
use oci_spec::image::ImageConfiguration;

use super::ImageError;

/// What the image adds to a launch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// The command to run, `shell=false` with `value` the executable unless it stays a shell
    /// command.
    pub command: CommandInfo,
    /// The image's environment, below the user's.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

pub fn apply_config(cmd: &CommandInfo, image: &ImageConfiguration) -> Result<Applied, ImageError> {
    let config = image.config().clone().unwrap_or_default();
    let entrypoint = config.entrypoint().clone().unwrap_or_default();
    let image_cmd = config.cmd().clone().unwrap_or_default();
    let value = cmd.value.as_deref().filter(|v| !v.is_empty());
    let mut command = cmd.clone();
    if cmd.shell() {
        if value.is_none() {
            return Err(ImageError::Invalid(
                "command.value: a shell command (shell=true) needs a `value`; set shell=false to run the image's \
                 entrypoint"
                    .into(),
            ));
        }
    } else {
        let argv: Vec<String> = match value {
            Some(v) if !entrypoint.is_empty() => {
                let mut a = entrypoint.clone();
                a.push(v.to_string());
                a.extend(cmd.arguments.iter().skip(1).cloned());
                a
            }
            Some(v) => match cmd.arguments.is_empty() {
                true => vec![v.to_string()],
                false => cmd.arguments.clone(),
            },
            None => {
                let tail = match cmd.arguments.is_empty() {
                    true => image_cmd.clone(),
                    false => cmd.arguments.clone(),
                };
                entrypoint.iter().cloned().chain(tail).collect()
            }
        };
        let executable = match (value, entrypoint.first()) {
            (Some(v), None) => v.to_string(),
            _ => argv.first().cloned().ok_or_else(|| {
                ImageError::Invalid(
                    "command: the image has neither Entrypoint nor Cmd, so the launch must give a command".into(),
                )
            })?,
        };
        command.shell = Some(false);
        command.value = Some(executable);
        command.arguments = argv;
    }
    let env = config
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let working_dir = config.working_dir().clone().filter(|w| !w.is_empty());
    let user = config.user().clone().filter(|u| !u.is_empty());
    Ok(Applied { command, env, working_dir, user })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfiguration {
        let v = |a: &[&str]| (!a.is_empty()).then(|| a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut config = oci_spec::image::Config::default();
        config.set_entrypoint(v(entrypoint));
        config.set_cmd(v(cmd));
        config.set_env(Some(vec!["PATH=/usr/bin:/bin".into(), "MODE=image".into()]));
        config.set_working_dir(Some("/app".into()));
        config.set_user(Some("1000".into()));
        let mut i = ImageConfiguration::default();
        i.set_config(Some(config));
        i
    }

    fn command(shell: bool, value: Option<&str>, args: &[&str]) -> CommandInfo {
        CommandInfo {
            shell: Some(shell),
            value: value.map(str::to_string),
            arguments: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn launched(cmd: CommandInfo, img: &ImageConfiguration) -> Result<(String, Vec<String>), String> {
        apply_config(&cmd, img)
            .map(|a| (a.command.value.unwrap_or_default(), a.command.arguments))
            .map_err(|e| e.to_string())
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mesos_merge_table() {
        let e = image(&["/entry", "-e"], &[]);
        let c = image(&[], &["/cmd", "-c"]);
        let ec = image(&["/entry", "-e"], &["/cmd", "-c"]);
        let none = image(&[], &[]);
        // shell=false, no value, no argv.
        assert!(launched(command(false, None, &[]), &none).is_err());
        assert_eq!(launched(command(false, None, &[]), &c).unwrap(), ("/cmd".into(), s(&["/cmd", "-c"])));
        assert_eq!(launched(command(false, None, &[]), &e).unwrap(), ("/entry".into(), s(&["/entry", "-e"])));
        assert_eq!(
            launched(command(false, None, &[]), &ec).unwrap(),
            ("/entry".into(), s(&["/entry", "-e", "/cmd", "-c"]))
        );
        // shell=false, no value, argv: argv replaces Cmd.
        assert_eq!(launched(command(false, None, &["a0", "a1"]), &c).unwrap(), ("a0".into(), s(&["a0", "a1"])));
        assert_eq!(
            launched(command(false, None, &["a0", "a1"]), &ec).unwrap(),
            ("/entry".into(), s(&["/entry", "-e", "a0", "a1"]))
        );
        // shell=false, value: the value runs, after the entrypoint when there is one.
        assert_eq!(launched(command(false, Some("/v"), &[]), &c).unwrap(), ("/v".into(), s(&["/v"])));
        assert_eq!(
            launched(command(false, Some("/v"), &["v", "x"]), &ec).unwrap(),
            ("/entry".into(), s(&["/entry", "-e", "/v", "x"]))
        );
        assert_eq!(launched(command(false, Some("/v"), &["v0", "x"]), &none).unwrap(), ("/v".into(), s(&["v0", "x"])));
        // shell=true: the image's Entrypoint and Cmd are ignored.
        let shell = apply_config(&command(true, Some("echo hi"), &[]), &ec).unwrap();
        assert_eq!((shell.command.shell, shell.command.value.as_deref()), (Some(true), Some("echo hi")));
        assert!(launched(command(true, None, &[]), &ec).is_err());
    }

    #[test]
    fn env_workdir_and_user() {
        let a = apply_config(&command(true, Some("true"), &[]), &image(&[], &[])).unwrap();
        assert_eq!(a.env, vec![("PATH".into(), "/usr/bin:/bin".into()), ("MODE".into(), "image".into())]);
        assert_eq!(a.working_dir.as_deref(), Some("/app"));
        assert_eq!(a.user.as_deref(), Some("1000"));
    }
}
