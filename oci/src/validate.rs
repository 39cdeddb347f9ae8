//! Request validation that needs nothing but the request: container ids, commands, environment,
//! volumes, Linux settings, rlimits. Checks that need the node (host paths, users in a rootfs)
//! happen during translation.
use husk_proto::mesos::v1::{command_info, container_info, environment, r_limit_info, CommandInfo, ContainerId};

use crate::error::{Error, Result};
use crate::fs::has_parent_component;

/// Mesos' `MAX_CONTAINER_ID_LENGTH`.
pub const MAX_CONTAINER_ID_LENGTH: usize = 242;
/// Deepest nesting of container ids husk accepts (Mesos has no bound; paths do).
pub const MAX_NESTING_DEPTH: usize = 16;
/// Longest string husk accepts in a command, argument or environment value.
pub const MAX_STRING_LENGTH: usize = 1 << 20;
/// Most arguments or environment variables in one command.
pub const MAX_LIST_LENGTH: usize = 16 * 1024;

/// Validates a container id and its parent chain with Mesos' rules.
pub fn container_id(id: &ContainerId, field: &str) -> Result<()> {
    let mut current = Some(id);
    let mut field = format!("{field}.value");
    let mut depth = 0;
    while let Some(id) = current {
        depth += 1;
        if depth > MAX_NESTING_DEPTH {
            return Err(Error::invalid(field, format!("containers nest at most {MAX_NESTING_DEPTH} deep")));
        }
        let v = &id.value;
        if v.is_empty() {
            return Err(Error::invalid(&field, "must not be empty"));
        }
        if v.len() > MAX_CONTAINER_ID_LENGTH {
            return Err(Error::invalid(
                &field,
                format!("is {} bytes long; at most {MAX_CONTAINER_ID_LENGTH} are allowed", v.len()),
            ));
        }
        if v.starts_with('-') {
            // Ids are arguments of the shim's and the runtime's command lines.
            return Err(Error::invalid(
                &field,
                format!("`{}` starts with `-`, which would read as a command-line option", v.escape_debug()),
            ));
        }
        if let Some(c) = v.chars().find(|c| c.is_control() || matches!(c, '.' | '/' | '\\' | ' ') || c.is_whitespace())
        {
            return Err(Error::invalid(
                &field,
                format!(
                    "`{}` contains {}; ids may not contain `.`, `/`, `\\`, spaces or control characters",
                    v.escape_debug(),
                    describe(c)
                ),
            ));
        }
        current = id.parent.as_deref();
        field = field.replace(".value", ".parent.value");
    }
    Ok(())
}

fn describe(c: char) -> String {
    if c.is_control() {
        format!("the control character {:?}", c)
    } else if c.is_whitespace() {
        "whitespace".to_string()
    } else {
        format!("`{c}`")
    }
}

/// The printable form of a container id: `root.child.grandchild`, as Mesos prints it.
pub fn display_id(id: &ContainerId) -> String {
    path_of(id).join(".")
}

/// The id chain from the root container down to `id`.
pub fn path_of(id: &ContainerId) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut current = Some(id);
    while let Some(id) = current {
        parts.push(id.value.as_str());
        current = id.parent.as_deref();
    }
    parts.reverse();
    parts
}

pub(crate) fn no_nul(s: &str, field: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::invalid(field, "must not contain a NUL byte"));
    }
    if s.len() > MAX_STRING_LENGTH {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long; at most {MAX_STRING_LENGTH} are allowed", s.len()),
        ));
    }
    Ok(())
}

/// Validates a command: its value, arguments, environment and URIs.
pub fn command(cmd: &CommandInfo, field: &str) -> Result<()> {
    match cmd.value.as_deref() {
        None | Some("") if cmd.shell() => {
            return Err(Error::invalid(format!("{field}.value"), "a shell command (shell=true) needs a `value`"));
        }
        None | Some("") => {
            return Err(Error::invalid(format!("{field}.value"), "shell=false needs a `value`: the executable to run"));
        }
        Some(v) => no_nul(v, &format!("{field}.value"))?,
    }
    if cmd.arguments.len() > MAX_LIST_LENGTH {
        return Err(Error::invalid(
            format!("{field}.arguments"),
            format!("at most {MAX_LIST_LENGTH} arguments are allowed"),
        ));
    }
    for (i, a) in cmd.arguments.iter().enumerate() {
        no_nul(a, &format!("{field}.arguments[{i}]"))?;
    }
    if let Some(env) = &cmd.environment {
        environment(env, &format!("{field}.environment"))?;
    }
    for (i, uri) in cmd.uris.iter().enumerate() {
        self::uri(uri, &format!("{field}.uris[{i}]"))?;
    }
    Ok(())
}

fn environment(env: &husk_proto::mesos::v1::Environment, field: &str) -> Result<()> {
    if env.variables.len() > MAX_LIST_LENGTH {
        return Err(Error::invalid(
            format!("{field}.variables"),
            format!("at most {MAX_LIST_LENGTH} variables are allowed"),
        ));
    }
    for (i, var) in env.variables.iter().enumerate() {
        let at = format!("{field}.variables[{i}]");
        env_name(&var.name, &format!("{at}.name"))?;
        match var.r#type() {
            environment::variable::Type::Secret => {
                return Err(Error::unsupported(format!("{at}.type"), "SECRET (no secret resolver is configured)"));
            }
            environment::variable::Type::Unknown => {
                return Err(Error::invalid(format!("{at}.type"), "must be VALUE"));
            }
            environment::variable::Type::Value => {}
        }
        if var.secret.is_some() {
            return Err(Error::invalid(format!("{at}.secret"), "only SECRET variables may have a `secret`"));
        }
        no_nul(var.value(), &format!("{at}.value"))?;
    }
    Ok(())
}

/// An environment variable name: non-empty, without `=` or NUL.
pub fn env_name(name: &str, field: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.contains('=') {
        return Err(Error::invalid(field, format!("`{}` must not contain `=`", name.escape_debug())));
    }
    no_nul(name, field)
}

fn uri(uri: &command_info::Uri, field: &str) -> Result<()> {
    if uri.value.is_empty() {
        return Err(Error::invalid(format!("{field}.value"), "must not be empty"));
    }
    no_nul(&uri.value, &format!("{field}.value"))?;
    let value = uri.value.as_str();
    let local = value.starts_with('/') || value.starts_with("file://");
    if !local && !value.starts_with("http://") && !value.starts_with("https://") {
        return Err(Error::invalid(
            format!("{field}.value"),
            format!("`{}`: only absolute paths, file://, http:// and https:// URIs are fetched", value.escape_debug()),
        ));
    }
    if let Some(rest) = value.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(Error::invalid(
                format!("{field}.value"),
                format!("`{}`: a file:// URI names a local absolute path (file:///path)", value.escape_debug()),
            ));
        }
    }
    if uri.output_file.is_none() && file_name_of(value).is_none() {
        return Err(Error::invalid(
            format!("{field}.output_file"),
            format!("is required: `{}` does not end in a file name", value.escape_debug()),
        ));
    }
    if let Some(out) = uri.output_file.as_deref() {
        let at = format!("{field}.output_file");
        no_nul(out, &at)?;
        if out.is_empty() || out.starts_with('/') || has_parent_component(out) {
            return Err(Error::invalid(
                at,
                format!("`{}` must be a relative path inside the sandbox, without `..`", out.escape_debug()),
            ));
        }
    }
    Ok(())
}

/// The file name a URI is fetched as when it has no `output_file`: the last segment of its
/// path, without query or fragment; `None` when there is none (or it is `.` or `..`).
pub fn file_name_of(uri: &str) -> Option<&str> {
    let path = match uri.split_once("://") {
        Some((_, rest)) => rest.split(['?', '#']).next().unwrap_or("").split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => uri,
    };
    match path.rsplit('/').next() {
        Some("" | "." | "..") | None => None,
        Some(name) => Some(name),
    }
}

/// A path field of a volume: non-empty, free of `..` and NUL.
pub fn volume_path(path: &str, field: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    no_nul(path, field)?;
    if has_parent_component(path) {
        return Err(Error::invalid(field, format!("`{}` must not contain `..`", path.escape_debug())));
    }
    Ok(())
}

/// A hostname (RFC 1123 labels, at most 64 bytes as the kernel allows).
pub fn hostname(name: &str, field: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::invalid(field, "must be 1 to 64 characters long"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(Error::invalid(
                field,
                format!(
                    "`{}` is not a valid hostname (letters, digits and `-` in dot-separated labels)",
                    name.escape_debug()
                ),
            ));
        }
    }
    Ok(())
}

/// The namespace that scopes a kernel parameter a container may set (runc's rule): setting any
/// other would change the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlScope {
    Ipc,
    Network,
    Uts,
}

/// A sysctl's name (dot-separated parts of letters, digits, `_` and `-`, so that its path under
/// `/proc/sys` stays there) and value, and the namespace that scopes it.
pub fn sysctl(key: &str, value: &str, field: &str) -> Result<SysctlScope> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let well_formed = !key.is_empty()
        && key.len() <= 256
        && key
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    if !well_formed {
        return Err(Error::invalid(
            field,
            format!(
                "`{}` is not a sysctl name (dot-separated parts of letters, digits, `_` and `-`)",
                key.escape_debug()
            ),
        ));
    }
    if value.len() > 4096 || value.contains('\0') {
        return Err(Error::invalid(format!("{field}[{key}]"), "the value must be at most 4096 bytes, without NUL"));
    }
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Ok(SysctlScope::Ipc)
    } else if key.starts_with("net.") {
        Ok(SysctlScope::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Ok(SysctlScope::Uts)
    } else {
        Err(Error::invalid(
            format!("{field}[{key}]"),
            "is not scoped by a namespace of the container's own (only IPC, net.* and UTS sysctls are); \
             it would change the host",
        ))
    }
}

/// Validates rlimits: a known type, at most once each, both bounds or none, soft <= hard.
pub fn rlimits(info: &husk_proto::mesos::v1::RLimitInfo, field: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in info.rlimits.iter().enumerate() {
        let at = format!("{field}.rlimits[{i}]");
        let ty = r.r#type();
        if ty == r_limit_info::r_limit::Type::Unknown {
            return Err(Error::invalid(format!("{at}.type"), "must be one of RLMT_AS .. RLMT_STACK"));
        }
        if !seen.insert(ty) {
            return Err(Error::invalid(format!("{at}.type"), format!("{} is given more than once", ty.as_str_name())));
        }
        match (r.soft, r.hard) {
            (Some(soft), Some(hard)) if soft > hard => {
                return Err(Error::invalid(at, format!("soft limit {soft} is above the hard limit {hard}")));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::invalid(at, "set both `soft` and `hard`, or neither for unlimited"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The container type must be MESOS (or unset).
pub fn container_type(info: &husk_proto::mesos::v1::ContainerInfo, field: &str) -> Result<()> {
    match container_info::Type::try_from(info.r#type) {
        Ok(container_info::Type::Mesos) => Ok(()),
        Ok(container_info::Type::Docker) => Err(Error::unsupported(
            format!("{field}.type"),
            "DOCKER (the Docker containerizer); use type MESOS, with `mesos.image` for an image",
        )),
        Err(_) => Err(Error::invalid(format!("{field}.type"), format!("unknown container type {}", info.r#type))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: &str) -> ContainerId {
        ContainerId { value: v.to_string(), parent: None }
    }

    fn nested(child: &str, parent: &str) -> ContainerId {
        ContainerId { value: child.to_string(), parent: Some(Box::new(id(parent))) }
    }

    fn id_err(c: &ContainerId) -> String {
        container_id(c, "container_id").unwrap_err().to_string()
    }

    #[test]
    fn container_id_rules() {
        assert!(container_id(&id("web-1_A"), "container_id").is_ok());
        assert!(container_id(&id(&"x".repeat(242)), "container_id").is_ok());
        assert_eq!(id_err(&id("")), "container_id.value: must not be empty");
        assert!(id_err(&id(&"x".repeat(243))).contains("at most 242"));
        for bad in [".", "..", "a.b", "a/b", "a\\b", "a b", "a\0b", "a\nb", "a\tb", "\u{7f}", "-rf", "--help"] {
            assert!(container_id(&id(bad), "container_id").is_err(), "{bad:?} must be rejected");
        }
        assert!(id_err(&id("a/b")).contains("`/`"));
        assert_eq!(
            id_err(&nested("ok", "bad.parent")),
            "container_id.parent.value: `bad.parent` contains `.`; ids may not contain `.`, `/`, `\\`, spaces or control characters"
        );
        let mut deep = id("root");
        for i in 0..20 {
            deep = ContainerId { value: format!("c{i}"), parent: Some(Box::new(deep)) };
        }
        assert!(id_err(&deep).contains("nest at most"));
    }

    #[test]
    fn display_is_dotted_from_the_root() {
        let c = ContainerId { value: "c".into(), parent: Some(Box::new(nested("b", "a"))) };
        assert_eq!(display_id(&c), "a.b.c");
    }

    fn cmd(shell: bool, value: Option<&str>) -> CommandInfo {
        CommandInfo { shell: Some(shell), value: value.map(str::to_string), ..Default::default() }
    }

    #[test]
    fn command_rules() {
        assert!(command(&cmd(true, Some("echo hi")), "command").is_ok());
        assert_eq!(
            command(&cmd(false, None), "command").unwrap_err().to_string(),
            "command.value: shell=false needs a `value`: the executable to run"
        );
        assert!(command(&cmd(true, Some("")), "command").is_err());
        assert!(command(&cmd(true, Some("a\0b")), "command").unwrap_err().to_string().contains("NUL"));
        let mut c = cmd(false, Some("/bin/echo"));
        c.arguments = vec!["echo".into(), "x\0".into()];
        assert_eq!(command(&c, "command").unwrap_err().field(), Some("command.arguments[1]"));
    }

    #[test]
    fn environment_rules() {
        let var = |name: &str, value: &str| environment::Variable {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        };
        let mut c = cmd(true, Some("true"));
        c.environment = Some(husk_proto::mesos::v1::Environment { variables: vec![var("A", "1"), var("B=C", "2")] });
        assert_eq!(
            command(&c, "command").unwrap_err().to_string(),
            "command.environment.variables[1].name: `B=C` must not contain `=`"
        );
        c.environment = Some(husk_proto::mesos::v1::Environment { variables: vec![var("", "1")] });
        assert!(command(&c, "command").is_err());
        let mut secret = var("S", "");
        secret.r#type = Some(environment::variable::Type::Secret as i32);
        c.environment = Some(husk_proto::mesos::v1::Environment { variables: vec![secret] });
        assert!(command(&c, "command").unwrap_err().to_string().contains("SECRET"));
    }

    #[test]
    fn uri_output_file_stays_in_the_sandbox() {
        let mut c = cmd(true, Some("true"));
        c.uris = vec![command_info::Uri {
            value: "http://x/a".into(),
            output_file: Some("../a".into()),
            ..Default::default()
        }];
        assert_eq!(command(&c, "command").unwrap_err().field(), Some("command.uris[0].output_file"));
        c.uris[0].output_file = Some("/etc/passwd".into());
        assert!(command(&c, "command").is_err());
        c.uris[0].output_file = Some("dir/a.tgz".into());
        assert!(command(&c, "command").is_ok());
    }

    #[test]
    fn uri_schemes_and_names() {
        let mut c = cmd(true, Some("true"));
        let check = |c: &CommandInfo| command(c, "command").map_err(|e| e.to_string());
        for ok in ["/opt/a.tgz", "file:///opt/a.tgz", "http://h/a.tgz?x=1", "https://h:8443/p/a.zip"] {
            c.uris = vec![command_info::Uri { value: ok.into(), ..Default::default() }];
            assert!(check(&c).is_ok(), "{ok}: {:?}", check(&c));
        }
        for bad in ["hdfs://n/a", "ftp://h/a", "a.tgz", "file://host/a"] {
            c.uris = vec![command_info::Uri { value: bad.into(), ..Default::default() }];
            assert!(check(&c).unwrap_err().contains("command.uris[0].value"), "{bad}");
        }
        for nameless in ["http://h", "http://h/", "http://h/dir/", "/opt/..", "http://h/?a/b"] {
            c.uris = vec![command_info::Uri { value: nameless.into(), ..Default::default() }];
            assert!(check(&c).unwrap_err().contains("command.uris[0].output_file"), "{nameless}");
            c.uris[0].output_file = Some("x".into());
            assert!(check(&c).is_ok(), "{nameless}");
        }
        assert_eq!(file_name_of("http://h/d/a.tar.gz?sig=1#f"), Some("a.tar.gz"));
        assert_eq!(file_name_of("/opt/bin/tool"), Some("tool"));
    }

    #[test]
    fn hostnames() {
        assert!(hostname("web-1.example", "h").is_ok());
        for bad in ["", "-a", "a-", "a..b", "a_b", &"a".repeat(65), "a b"] {
            assert!(hostname(bad, "h").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rlimit_rules() {
        use r_limit_info::{r_limit::Type, RLimit};
        let r = |t: Type, soft: Option<u64>, hard: Option<u64>| RLimit { r#type: Some(t as i32), soft, hard };
        let info = |v: Vec<RLimit>| husk_proto::mesos::v1::RLimitInfo { rlimits: v };
        assert!(
            rlimits(&info(vec![r(Type::RlmtNofile, Some(10), Some(20)), r(Type::RlmtCore, None, None)]), "x").is_ok()
        );
        assert_eq!(
            rlimits(&info(vec![r(Type::RlmtNofile, Some(30), Some(20))]), "x").unwrap_err().to_string(),
            "x.rlimits[0]: soft limit 30 is above the hard limit 20"
        );
        assert!(rlimits(&info(vec![r(Type::RlmtNofile, Some(3), None)]), "x").is_err());
        assert!(rlimits(&info(vec![r(Type::Unknown, None, None)]), "x").is_err());
        assert!(rlimits(&info(vec![r(Type::RlmtAs, None, None), r(Type::RlmtAs, None, None)]), "x")
            .unwrap_err()
            .to_string()
            .contains("more than once"));
    }
}
