//! Image references as Docker writes them, normalized as Docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `localhost:5000/app@sha256:...` keeps its digest.
use std::fmt;

use super::ImageError;

pub const DEFAULT_REGISTRY: &str = "docker.io";
const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `registry.example.com`.
    pub registry: String,
    /// `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

fn bad(r: &str, rule: &str) -> ImageError {
    ImageError::Invalid(format!("image reference `{}`: {rule}", r.escape_debug()))
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(bad(s, "must be 1 to 4096 characters long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                super::check_digest(d).map_err(|e| bad(s, &e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last `:` that comes after the last `/` (a registry port is not).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(s, "a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with `.` or `-`"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            return Err(bad(s, "the registry must be a host name with an optional port"));
        }
        let repository = match repository.contains('/') || registry != DEFAULT_REGISTRY {
            true => repository,
            false => format!("library/{repository}"),
        };
        for part in repository.split('/') {
            let ok = !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    s,
                    "repository path components are lowercase letters, digits and `._-`, \
                     starting and ending with a letter or digit",
                ));
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The name without tag or digest: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// `host`, `host:port`, `[v6]:port`: labels of letters, digits and `-`, a numeric port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) if !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') => {
                (None, rest.strip_prefix(':'))
            }
            _ => return false,
        },
        None => match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        },
    };
    let host_ok = host.is_none_or(|h| {
        h.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-'))
    });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("team/app", "docker.io/team/app:latest"),
            ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c:x"),
        ];
        for (given, want) in cases {
            assert_eq!(Reference::parse(given).unwrap().to_string(), want, "{given}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/app@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (None, d.as_str()));
        let r = Reference::parse(&format!("app:v2@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("v2"), d.as_str()));
    }

    #[test]
    fn refuses_what_docker_refuses() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "app:",
            "app:-x",
            "app@sha256:short",
            "app@md5:0123",
            "../etc",
            "a/../b",
            "app:t/x",
            "bad host!/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(Reference::parse(&"a".repeat(5000)).is_err());
    }
}
