//! Mesos resources: the text form (`cpus:1;mem:128;disk:1024;ports:[31000-31005]`, with an
//! optional `(role)` after the name), the JSON list form (a list of `mesos.v1.Resource`), their
//! validation, and the per-container amounts the cgroup mapping needs.
use std::collections::{BTreeMap, HashMap};

use husk_proto::mesos::v1::{resource, value, Resource};

use crate::error::{Error, Result};

/// Largest cpu amount husk accepts (the kernel's CFS quota is bounded; no node comes close).
pub const MAX_CPUS: f64 = 1_000_000.0;
/// Largest memory or disk amount husk accepts, in MB (1 EiB; byte counts must fit in an i64).
pub const MAX_MB: f64 = (1u64 << 40) as f64;
/// Largest value of any other scalar (integers stay exact in an f64 up to here).
pub const MAX_SCALAR: f64 = (1u64 << 53) as f64;

/// The bound of a named scalar.
pub fn max_for(name: &str) -> f64 {
    match name {
        "cpus" => MAX_CPUS,
        "mem" | "disk" => MAX_MB,
        _ => MAX_SCALAR,
    }
}

/// Role of unreserved resources.
pub const UNRESERVED_ROLE: &str = "*";

/// Parses resources in Mesos' text form or, when the input starts with `[`, the JSON list form.
/// `field` names the input in errors (e.g. `--resources`).
pub fn parse(input: &str, field: &str) -> Result<Vec<Resource>> {
    let trimmed = input.trim();
    let resources = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<Resource>>(trimmed)
            .map_err(|e| Error::invalid(field, format!("not a JSON list of resources: {e}")))?
    } else {
        parse_text(trimmed, field)?
    };
    validate(&resources, field)?;
    Ok(resources)
}

fn parse_text(input: &str, field: &str) -> Result<Vec<Resource>> {
    let mut out = Vec::new();
    for (i, item) in input.split(';').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let at = format!("{field}[{i}]");
        let (key, text) = item
            .split_once(':')
            .ok_or_else(|| Error::invalid(&at, format!("`{item}` is not `name:value` or `name(role):value`")))?;
        let (name, role) = parse_key(key.trim(), &at)?;
        let mut resource = Resource { name: name.to_string(), ..Default::default() };
        let text = text.trim();
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| Error::invalid(&at, format!("ranges `{text}` must end with `]`")))?;
            resource.r#type = value::Type::Ranges as i32;
            resource.ranges = Some(parse_ranges(inner, &at)?);
        } else if let Some(inner) = text.strip_prefix('{') {
            let inner = inner
                .strip_suffix('}')
                .ok_or_else(|| Error::invalid(&at, format!("set `{text}` must end with `}}`")))?;
            resource.r#type = value::Type::Set as i32;
            let item = inner.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            resource.set = Some(value::Set { item });
        } else {
            let number: f64 = text
                .parse()
                .map_err(|_| Error::invalid(&at, format!("`{text}` is not a number, `[ranges]` or `{{set}}`")))?;
            resource.r#type = value::Type::Scalar as i32;
            resource.scalar = Some(value::Scalar { value: number });
        }
        if let Some(role) = role {
            resource.reservations.push(resource::ReservationInfo {
                r#type: Some(resource::reservation_info::Type::Static as i32),
                role: Some(role.to_string()),
                ..Default::default()
            });
        }
        out.push(resource);
    }
    if out.is_empty() {
        return Err(Error::invalid(field, "no resources given"));
    }
    Ok(out)
}

fn parse_key<'a>(key: &'a str, at: &str) -> Result<(&'a str, Option<&'a str>)> {
    match key.split_once('(') {
        None => Ok((key, None)),
        Some((name, rest)) => {
            let role = rest
                .strip_suffix(')')
                .ok_or_else(|| Error::invalid(at, format!("`{key}`: role must be closed with `)`")))?
                .trim();
            if role.is_empty() {
                return Err(Error::invalid(at, format!("`{key}`: empty role")));
            }
            Ok((name.trim(), (role != UNRESERVED_ROLE).then_some(role)))
        }
    }
}

fn parse_ranges(inner: &str, at: &str) -> Result<value::Ranges> {
    let mut range = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (begin, end) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| Error::invalid(at, format!("range bound `{}` is not a non-negative integer", s.trim())))
        };
        range.push(value::Range { begin: parse(begin)?, end: parse(end)? });
    }
    Ok(value::Ranges { range })
}

/// The role a resource is reserved to (`*` when unreserved).
pub fn role(resource: &Resource) -> &str {
    if let Some(last) = resource.reservations.last() {
        return last.role.as_deref().unwrap_or(UNRESERVED_ROLE);
    }
    // Pre-refinement resources (Mesos < 1.5 JSON) carry their role in the deprecated field.
    #[allow(deprecated)]
    let legacy = resource.role.as_deref();
    legacy.unwrap_or(UNRESERVED_ROLE)
}

/// Validates a list of resources: known value types with their value present, finite
/// non-negative scalars, well-formed non-overlapping ranges, sets without repeats, and no
/// resource named twice for the same role.
pub fn validate(resources: &[Resource], field: &str) -> Result<()> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if r.name.is_empty() {
            return Err(Error::invalid(format!("{at}.name"), "must not be empty"));
        }
        if !r.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')) {
            return Err(Error::invalid(
                format!("{at}.name"),
                format!("`{}` may only have ASCII letters, digits, `_`, `-`, `.` and `/`", r.name.escape_debug()),
            ));
        }
        #[allow(deprecated)]
        let legacy = r.role.as_deref().map(|role| (format!("{at}.role"), role));
        let reserved = r
            .reservations
            .iter()
            .enumerate()
            .filter_map(|(j, x)| Some((format!("{at}.reservations[{j}].role"), x.role.as_deref()?)));
        for (role_field, role) in legacy.into_iter().chain(reserved) {
            check_role(role, &role_field)?;
        }
        let at = format!("{at} ({})", r.name);
        match value::Type::try_from(r.r#type) {
            Ok(value::Type::Scalar) => {
                let v = r.scalar.as_ref().ok_or_else(|| Error::invalid(&at, "type SCALAR needs `scalar`"))?.value;
                check_scalar(v, &at)?;
                if v > max_for(&r.name) {
                    return Err(Error::invalid(
                        &at,
                        format!("{v} is above the largest accepted value {}", max_for(&r.name)),
                    ));
                }
            }
            Ok(value::Type::Ranges) => {
                let ranges = r.ranges.as_ref().ok_or_else(|| Error::invalid(&at, "type RANGES needs `ranges`"))?;
                let mut sorted: Vec<_> = ranges.range.iter().map(|x| (x.begin, x.end)).collect();
                for (b, e) in &sorted {
                    if b > e {
                        return Err(Error::invalid(&at, format!("range {b}-{e} ends before it begins")));
                    }
                }
                sorted.sort_unstable();
                for pair in sorted.windows(2) {
                    if pair[1].0 <= pair[0].1 {
                        return Err(Error::invalid(
                            &at,
                            format!("ranges {}-{} and {}-{} overlap", pair[0].0, pair[0].1, pair[1].0, pair[1].1),
                        ));
                    }
                }
            }
            Ok(value::Type::Set) => {
                let set = r.set.as_ref().ok_or_else(|| Error::invalid(&at, "type SET needs `set`"))?;
                if let Some(bad) = set.item.iter().find(|x| {
                    x.is_empty() || x.chars().any(|c| c.is_control() || c.is_whitespace() || ",;{}".contains(c))
                }) {
                    return Err(Error::invalid(
                        &at,
                        format!(
                            "set item `{}` must be non-empty, without spaces, control characters, `,`, `;`, `{{` or `}}`",
                            bad.escape_debug()
                        ),
                    ));
                }
                let mut items: Vec<_> = set.item.iter().collect();
                items.sort_unstable();
                if let Some(pair) = items.windows(2).find(|p| p[0] == p[1]) {
                    return Err(Error::invalid(&at, format!("set item `{}` appears twice", pair[0])));
                }
            }
            Ok(value::Type::Text) | Err(_) => {
                return Err(Error::invalid(&at, "type must be SCALAR, RANGES or SET"));
            }
        }
        if let Some(first) = seen.insert((r.name.as_str(), role(r)), i) {
            return Err(Error::invalid(
                &at,
                format!("duplicate of {field}[{first}]: `{}` is given twice for role `{}`", r.name, role(r)),
            ));
        }
    }
    Ok(())
}

/// Roles as Mesos names them (`*`, `web`, `eng/frontend`), kept to what the text form and
/// metrics labels can carry.
fn check_role(role: &str, field: &str) -> Result<()> {
    if role == UNRESERVED_ROLE {
        return Ok(());
    }
    let chars = role.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    let parts = role.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if !chars || !parts || role.starts_with('-') {
        return Err(Error::invalid(
            field,
            format!(
                "role `{}` must be `*` or `/`-separated parts of ASCII letters, digits, `_`, `-` and `.` \
                 (no empty, `.` or `..` part, not starting with `-`)",
                role.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn check_scalar(v: f64, at: &str) -> Result<()> {
    if v.is_nan() {
        return Err(Error::invalid(at, "must be a number, not NaN"));
    }
    if v.is_infinite() {
        return Err(Error::invalid(at, "must be finite"));
    }
    if v < 0.0 {
        return Err(Error::invalid(at, format!("must not be negative (got {v})")));
    }
    Ok(())
}

/// The amounts of a container's resource requests that husk enforces, summed over roles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Amounts {
    pub cpus: Option<f64>,
    /// Megabytes (MiB, as Mesos counts them).
    pub mem_mb: Option<f64>,
    pub disk_mb: Option<f64>,
    pub ports: Vec<(u64, u64)>,
}

impl Amounts {
    pub fn of(resources: &[Resource]) -> Self {
        let mut a = Amounts::default();
        for r in resources {
            let scalar = r.scalar.as_ref().map(|s| s.value);
            let add = |slot: &mut Option<f64>| {
                if let Some(v) = scalar {
                    *slot = Some(slot.unwrap_or(0.0) + v);
                }
            };
            match r.name.as_str() {
                "cpus" => add(&mut a.cpus),
                "mem" => add(&mut a.mem_mb),
                "disk" => add(&mut a.disk_mb),
                "ports" => {
                    if let Some(ranges) = &r.ranges {
                        a.ports.extend(ranges.range.iter().map(|x| (x.begin, x.end)));
                    }
                }
                _ => {}
            }
        }
        a.ports.sort_unstable();
        a
    }
}

impl Amounts {
    /// Checks the totals over all roles against the same bounds as single resources.
    pub fn check_totals(&self, field: &str) -> Result<()> {
        for (name, v) in [("cpus", self.cpus), ("mem", self.mem_mb), ("disk", self.disk_mb)] {
            if let Some(v) = v {
                if v > max_for(name) {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "{name} adds up to {v} over all roles, above the largest accepted value {}",
                            max_for(name)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Resource limits (`limits` of a launch): `cpus` and `mem`, where infinity means no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub mem_mb: Option<f64>,
}

/// Validates a launch's `limits` map against its requests: only `cpus` and `mem`, positive (or
/// infinite), and never below the request.
pub fn limits(map: &HashMap<String, value::Scalar>, requests: &Amounts, field: &str) -> Result<Limits> {
    let sorted: BTreeMap<_, _> = map.iter().collect();
    let mut out = Limits::default();
    for (key, scalar) in sorted {
        let at = format!("{field}[\"{}\"]", key.escape_debug());
        let v = scalar.value;
        if v.is_nan() {
            return Err(Error::invalid(&at, "must be a number, not NaN"));
        }
        if v <= 0.0 {
            return Err(Error::invalid(&at, format!("must be positive or infinity (got {v})")));
        }
        if v.is_finite() && v > max_for(key) {
            return Err(Error::invalid(&at, format!("{v} is above the largest accepted value {}", max_for(key))));
        }
        let (slot, request) = match key.as_str() {
            "cpus" => (&mut out.cpus, requests.cpus),
            "mem" => (&mut out.mem_mb, requests.mem_mb),
            other => {
                return Err(Error::invalid(&at, format!("`{other}` has no limit; only `cpus` and `mem` do")));
            }
        };
        if let Some(request) = request {
            if v < request {
                return Err(Error::invalid(&at, format!("limit {v} is below the request {request}")));
            }
        }
        *slot = Some(v);
    }
    Ok(out)
}

/// Renders resources in Mesos' text form (the inverse of [`parse`] for scalars, ranges and sets).
pub fn to_text(resources: &[Resource]) -> String {
    let mut parts = Vec::with_capacity(resources.len());
    for r in resources {
        let role = role(r);
        let key = if role == UNRESERVED_ROLE { r.name.clone() } else { format!("{}({role})", r.name) };
        let text = match value::Type::try_from(r.r#type) {
            Ok(value::Type::Ranges) => {
                let ranges = r.ranges.as_ref().map(|x| x.range.as_slice()).unwrap_or_default();
                let body: Vec<_> = ranges.iter().map(|x| format!("{}-{}", x.begin, x.end)).collect();
                format!("[{}]", body.join(","))
            }
            Ok(value::Type::Set) => format!("{{{}}}", r.set.as_ref().map(|s| s.item.join(",")).unwrap_or_default()),
            _ => format!("{}", r.scalar.as_ref().map(|s| s.value).unwrap_or(0.0)),
        };
        parts.push(format!("{key}:{text}"));
    }
    parts.join(";")
}

/// A scalar resource, for building requests in code and tests.
pub fn scalar(name: &str, v: f64) -> Resource {
    Resource {
        name: name.to_string(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: v }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_with_role_ranges_and_set() {
        let r = parse("cpus:1.5;mem(web):128; disk:1024;ports:[31000-31005, 32000-32000];zones:{a,b}", "--resources")
            .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].scalar.as_ref().unwrap().value, 1.5);
        assert_eq!(role(&r[1]), "web");
        assert_eq!(role(&r[0]), "*");
        assert_eq!(r[3].ranges.as_ref().unwrap().range.len(), 2);
        assert_eq!(r[4].set.as_ref().unwrap().item, vec!["a", "b"]);
        let a = Amounts::of(&r);
        assert_eq!(a.cpus, Some(1.5));
        assert_eq!(a.mem_mb, Some(128.0));
        assert_eq!(a.disk_mb, Some(1024.0));
        assert_eq!(a.ports, vec![(31000, 31005), (32000, 32000)]);
    }

    #[test]
    fn text_round_trips() {
        let text = "cpus:2;mem(web):256;ports:[31000-31005]";
        assert_eq!(to_text(&parse(text, "r").unwrap()), text);
    }

    #[test]
    fn json_list_form_with_mesos_field_names() {
        let json = r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":0.5}},
                      {"name":"ports","type":"RANGES","ranges":{"range":[{"begin":80,"end":81}]}},
                      {"name":"mem","type":"SCALAR","scalar":{"value":64},"role":"ops"}]"#;
        let r = parse(json, "resources").unwrap();
        let a = Amounts::of(&r);
        assert_eq!(a.cpus, Some(0.5));
        assert_eq!(a.ports, vec![(80, 81)]);
        assert_eq!(role(&r[2]), "ops");
    }

    fn err(input: &str) -> String {
        parse(input, "--resources").unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_values_with_the_field_and_rule() {
        assert_eq!(err("cpus:-1"), "--resources[0] (cpus): must not be negative (got -1)");
        assert_eq!(err("cpus:NaN"), "--resources[0] (cpus): must be a number, not NaN");
        assert_eq!(err("mem:inf"), "--resources[0] (mem): must be finite");
        assert_eq!(err("mem:infinity"), "--resources[0] (mem): must be finite");
        assert!(err("cpus:1;cpus:2").contains("duplicate of --resources[0]"), "{}", err("cpus:1;cpus:2"));
        assert!(err("cpus").contains("is not `name:value`"));
        assert!(err("cpus:abc").contains("is not a number"));
        assert!(err("ports:[5-3]").contains("ends before it begins"));
        assert!(err("ports:[1-10,5-20]").contains("overlap"));
        assert!(err("ports:[1-10").contains("must end with `]`"));
        assert!(err("ports:[a-b]").contains("not a non-negative integer"));
        assert!(err("cpus():1").contains("empty role"));
        assert!(err("cpus(x:1").contains("must be closed"));
        assert!(err("s:{a,a}").contains("appears twice"));
        // Names, roles and set items stay within what the text form can carry back.
        assert!(err("a,b:1").contains("may only have ASCII letters"), "{}", err("a,b:1"));
        assert_eq!(
            err(r#"[{"name":"a b","type":"SCALAR","scalar":{"value":1}}]"#),
            "--resources[0].name: `a b` may only have ASCII letters, digits, `_`, `-`, `.` and `/`"
        );
        assert!(err("cpus(a;b):1").contains("is not `name:value`"));
        assert!(err("cpus(..):1").contains("role `..` must be `*`"), "{}", err("cpus(..):1"));
        assert!(err("cpus(-x):1").contains("not starting with `-`"));
        assert!(err(r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":1},"role":"a)"}]"#)
            .starts_with("--resources[0].role: role `a)`"));
        assert!(err(r#"[{"name":"s","type":"SET","set":{"item":["a}"]}}]"#).contains("set item `a}`"));
        assert!(err(r#"[{"name":"s","type":"SET","set":{"item":[""]}}]"#).contains("must be non-empty"));
        assert_eq!(err(""), "--resources: no resources given");
        assert!(err("cpus:2000000").contains("above the largest accepted value"));
        assert!(err("mem:1e300").contains("above the largest accepted value"));
        assert!(parse("cpus:1000000;mem:1099511627776", "r").is_ok(), "the bounds themselves are fine");
        assert!(
            err("[{\"name\":\"cpus\",\"type\":\"SCALAR\"}]").contains("needs `scalar`"),
            "{}",
            err("[{\"name\":\"cpus\",\"type\":\"SCALAR\"}]")
        );
        assert!(err("[{\"name\":\"cpus\"}]").contains("missing field `type`"));
        assert!(err("[1,2]").contains("not a JSON list of resources"));
        assert!(err("[{\"name\":\"cpus\",\"type\":\"TEXT\"}]").contains("SCALAR, RANGES or SET"));
    }

    #[test]
    fn same_name_in_two_roles_is_fine_and_summed() {
        let r = parse("cpus:1;cpus(web):2", "r").unwrap();
        assert_eq!(Amounts::of(&r).cpus, Some(3.0));
        let r = parse("cpus:1000000;cpus(web):1", "r").unwrap();
        assert!(Amounts::of(&r).check_totals("resources").unwrap_err().to_string().contains("adds up to 1000001"));
    }

    #[test]
    fn limits_rules() {
        let requests = Amounts { cpus: Some(1.0), mem_mb: Some(128.0), ..Default::default() };
        let m = |k: &str, v: f64| HashMap::from([(k.to_string(), value::Scalar { value: v })]);
        assert_eq!(limits(&m("cpus", 2.0), &requests, "limits").unwrap().cpus, Some(2.0));
        assert_eq!(limits(&m("mem", f64::INFINITY), &requests, "limits").unwrap().mem_mb, Some(f64::INFINITY));
        assert_eq!(
            limits(&m("cpus", 0.5), &requests, "limits").unwrap_err().to_string(),
            "limits[\"cpus\"]: limit 0.5 is below the request 1"
        );
        assert!(limits(&m("cpus", f64::NAN), &requests, "limits").unwrap_err().to_string().contains("NaN"));
        assert!(limits(&m("mem", -1.0), &requests, "limits").unwrap_err().to_string().contains("positive"));
        assert!(limits(&m("disk", 1.0), &requests, "limits")
            .unwrap_err()
            .to_string()
            .contains("only `cpus` and `mem`"));
        assert!(limits(&m("cpus", 1e12), &requests, "limits").unwrap_err().to_string().contains("largest accepted"));
    }
}
