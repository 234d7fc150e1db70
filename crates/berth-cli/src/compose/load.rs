//! Loading a compose project: finding the files, `.env`, interpolation, YAML anchors and
//! merge keys, `include`, `extends`, merging several files, profiles, checks that name the
//! file and the key path, and the project's name. The model stays JSON (as the Engine API
//! is), normalised where the commands need one shape: `environment` and `labels` as maps,
//! `depends_on` as a map of conditions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

pub const FILE_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs", "include", "models",
];

/// The keys of the mappings inside a service and of the top-level definitions, as the
/// compose specification's JSON schema lists them (a test compares them with the schema
/// when ../shared/specs is beside the checkout); `x-` keys are allowed everywhere.
const NESTED: &[(&str, &[&str])] = &[
    (
        "healthcheck",
        &[
            "disable",
            "interval",
            "retries",
            "start_interval",
            "start_period",
            "test",
            "timeout",
        ],
    ),
    (
        "deploy",
        &[
            "endpoint_mode",
            "labels",
            "mode",
            "placement",
            "replicas",
            "resources",
            "restart_policy",
            "rollback_config",
            "update_config",
        ],
    ),
    (
        "build",
        &[
            "additional_contexts",
            "args",
            "cache_from",
            "cache_to",
            "context",
            "dockerfile",
            "dockerfile_inline",
            "entitlements",
            "extra_hosts",
            "isolation",
            "labels",
            "network",
            "no_cache",
            "platforms",
            "privileged",
            "provenance",
            "pull",
            "sbom",
            "secrets",
            "shm_size",
            "ssh",
            "tags",
            "target",
            "ulimits",
        ],
    ),
    ("depends_on", &["condition", "required", "restart"]),
    (
        "ports",
        &[
            "app_protocol",
            "host_ip",
            "mode",
            "name",
            "protocol",
            "published",
            "target",
        ],
    ),
    (
        "volumes",
        &[
            "bind",
            "consistency",
            "image",
            "read_only",
            "source",
            "target",
            "tmpfs",
            "type",
            "volume",
        ],
    ),
];
const DEFINITIONS: &[(&str, &[&str])] = &[
    (
        "networks",
        &[
            "attachable",
            "driver",
            "driver_opts",
            "enable_ipv4",
            "enable_ipv6",
            "external",
            "internal",
            "ipam",
            "labels",
            "name",
        ],
    ),
    (
        "volumes",
        &["driver", "driver_opts", "external", "labels", "name"],
    ),
    (
        "secrets",
        &[
            "driver",
            "driver_opts",
            "environment",
            "external",
            "file",
            "labels",
            "name",
            "template_driver",
        ],
    ),
    (
        "configs",
        &[
            "content",
            "environment",
            "external",
            "file",
            "labels",
            "name",
            "template_driver",
        ],
    ),
];

fn allowed(
    table: &'static [(&'static str, &'static [&'static str])],
    key: &str,
) -> &'static [&'static str] {
    table
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .unwrap_or(&[])
}

/// Unknown keys of `m` (not in `keys`, not `x-`), as compose words them at `path`.
fn unknown_key(m: &Map<String, Value>, keys: &[&str], path: &str) -> Option<String> {
    m.keys()
        .find(|k| !keys.contains(&k.as_str()) && !k.starts_with("x-"))
        .map(|k| format!("{path} additional properties '{k}' not allowed"))
}

/// The nested mappings of service `name` and their values the schema constrains.
fn validate_nested(name: &str, svc: &Map<String, Value>) -> Result<(), String> {
    let at = |k: &str| format!("services.{name}.{k}");
    for key in ["healthcheck", "deploy", "build"] {
        if let Some(Value::Object(m)) = svc.get(key) {
            if let Some(e) = unknown_key(m, allowed(NESTED, key), &at(key)) {
                return Err(e);
            }
        }
    }
    if let Some(Value::Object(h)) = svc.get("healthcheck") {
        if h.get("retries").is_some_and(|r| !r.is_u64()) {
            return Err(format!("{}.retries must be a integer", at("healthcheck")));
        }
        if h.get("disable").is_some_and(|r| !r.is_boolean()) {
            return Err(format!("{}.disable must be a boolean", at("healthcheck")));
        }
    }
    if let Some(Value::Object(dep)) = svc.get("deploy") {
        if dep.get("replicas").is_some_and(|r| !r.is_u64()) {
            return Err(format!("{}.replicas must be a integer", at("deploy")));
        }
    }
    if let Some(Value::Object(deps)) = svc.get("depends_on") {
        for (dep, d) in deps {
            let path = format!("{}.{dep}", at("depends_on"));
            let Value::Object(d) = d else {
                return Err(format!("{path} must be a mapping"));
            };
            if let Some(e) = unknown_key(d, allowed(NESTED, "depends_on"), &path) {
                return Err(e);
            }
            if let Some(c) = d.get("condition") {
                const CONDITIONS: [&str; 3] = [
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                ];
                if !c.as_str().is_some_and(|c| CONDITIONS.contains(&c)) {
                    return Err(format!(
                        "{path}.condition must be one of the following: \"{}\"",
                        CONDITIONS.join("\", \"")
                    ));
                }
            }
        }
    }
    for key in ["ports", "volumes"] {
        for (i, item) in svc
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("{}.{i}", at(key));
            match item {
                Value::Object(m) => {
                    if let Some(e) = unknown_key(m, allowed(NESTED, key), &path) {
                        return Err(e);
                    }
                    if key == "volumes" {
                        const TYPES: [&str; 6] =
                            ["bind", "volume", "tmpfs", "cluster", "npipe", "image"];
                        match m.get("type").and_then(Value::as_str) {
                            None => return Err(format!("{path} type is required")),
                            Some(t) if !TYPES.contains(&t) => {
                                return Err(format!(
                                    "{path}.type must be one of the following: \"{}\"",
                                    TYPES.join("\", \"")
                                ))
                            }
                            _ => {}
                        }
                    }
                }
                Value::String(_) => {}
                Value::Number(_) if key == "ports" => {}
                other => {
                    return Err(format!(
                        "{path} must be a string or mapping, not {}",
                        type_name(other)
                    ))
                }
            }
        }
    }
    Ok(())
}

/// The service keys of the compose specification.
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
    "models",
    "use_api_socket",
];

/// Keys whose lists several files add up (the others replace).
const APPENDED: &[&str] = &[
    "ports",
    "expose",
    "dns",
    "dns_search",
    "dns_opt",
    "tmpfs",
    "cap_add",
    "cap_drop",
    "extra_hosts",
    "env_file",
    "devices",
    "security_opt",
    "external_links",
    "group_add",
    "volumes",
    "profiles",
];

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    pub project_dir: Option<PathBuf>,
    pub env_files: Vec<PathBuf>,
    pub profiles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// `services`, `networks`, `volumes` (each a map, present even when empty).
    pub model: Value,
    /// Services left out by profiles (still known, so their containers are not orphans).
    pub inactive: Vec<String>,
    /// The interpolation environment (`.env` under the process's): secrets and configs
    /// given as `environment: VAR` take their values from it.
    pub env: HashMap<String, String>,
}

impl Project {
    pub fn services(&self) -> &Map<String, Value> {
        self.model["services"]
            .as_object()
            .expect("services is a map")
    }
}

/// Finds a compose file in `dir` or the nearest directory above it that has one.
pub fn discover(dir: &Path) -> Result<PathBuf, String> {
    let mut d = Some(dir);
    while let Some(here) = d {
        for n in FILE_NAMES {
            let p = here.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
        d = here.parent();
    }
    Err(format!(
        "no configuration file provided: not found (looked for {} in {} and above)",
        FILE_NAMES.join(", "),
        dir.display()
    ))
}

/// `KEY=VALUE` lines (comments, blanks, `export ` prefixes, quotes), as compose reads
/// `.env` and `env_file`.
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        let v = if (v.starts_with('"') && v.ends_with('"') && v.len() >= 2)
            || (v.starts_with('\'') && v.ends_with('\'') && v.len() >= 2)
        {
            v[1..v.len() - 1].to_string()
        } else {
            // An unquoted value ends at an inline comment.
            v.split(" #").next().unwrap_or(v).trim().to_string()
        };
        out.insert(k.to_string(), v);
    }
    out
}

/// `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
/// `${VAR:+alt}`, `${VAR+alt}`, `$$` for a dollar; defaults may hold more of the same.
pub fn interpolate(s: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = s[i..].chars().next().unwrap_or('$');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                // The matching brace, counting nested ones.
                let mut depth = 0;
                let mut j = i + 1;
                while j < b.len() {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= b.len() {
                    return Err(format!(
                        "invalid interpolation format for {s:?}: no closing brace"
                    ));
                }
                out.push_str(&expand(&s[i + 2..j], env, s)?);
                i = j + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push_str(env.get(&s[i + 1..j]).map(String::as_str).unwrap_or(""));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn expand(inner: &str, env: &HashMap<String, String>, whole: &str) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() {
        return Err(format!("invalid interpolation format for {whole:?}"));
    }
    let val = env.get(name);
    let set = val.is_some();
    let non_empty = val.is_some_and(|v| !v.is_empty());
    let v = || val.cloned().unwrap_or_default();
    let arg = |n: usize| interpolate(&rest[n..], env);
    Ok(match rest {
        "" => v(),
        r if r.starts_with(":-") => {
            if non_empty {
                v()
            } else {
                arg(2)?
            }
        }
        r if r.starts_with('-') => {
            if set {
                v()
            } else {
                arg(1)?
            }
        }
        r if r.starts_with(":?") => {
            if non_empty {
                v()
            } else {
                return Err(format!(
                    "required variable {name} is missing a value: {}",
                    arg(2)?
                ));
            }
        }
        r if r.starts_with('?') => {
            if set {
                v()
            } else {
                return Err(format!(
                    "required variable {name} is missing a value: {}",
                    arg(1)?
                ));
            }
        }
        r if r.starts_with(":+") => {
            if non_empty {
                arg(2)?
            } else {
                String::new()
            }
        }
        r if r.starts_with('+') => {
            if set {
                arg(1)?
            } else {
                String::new()
            }
        }
        _ => return Err(format!("invalid interpolation format for {whole:?}")),
    })
}

fn interpolate_all(v: &mut Value, env: &HashMap<String, String>, path: &str) -> Result<(), String> {
    match v {
        Value::String(s) => {
            *s = interpolate(s, env).map_err(|e| format!("{path}: {e}"))?;
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                interpolate_all(x, env, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_all(x, env, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// YAML (anchors, aliases and `<<` merge keys applied) as JSON.
pub fn parse_yaml(text: &str, file: &Path) -> Result<Value, String> {
    let mut y: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{}: {e}", file.display()))?;
    y.apply_merge()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let v: Value = serde_json::to_value(&y).map_err(|e| format!("{}: {e}", file.display()))?;
    match v {
        Value::Null => Ok(json!({})),
        Value::Object(_) => Ok(v),
        _ => Err(format!(
            "{}: top-level object must be a mapping",
            file.display()
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The checks compose's schema makes that matter most, with its wording: unknown keys
/// and wrong types, naming the file and the key path.
pub fn validate(v: &Value, file: &Path) -> Result<(), String> {
    let fail = |msg: String| Err(format!("validating {}: {msg}", file.display()));
    let top = v.as_object().expect("a mapping");
    for k in top.keys() {
        if !TOP_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
            return fail(format!("additional properties '{k}' not allowed"));
        }
    }
    for (key, want) in [
        ("services", "object"),
        ("networks", "object"),
        ("volumes", "object"),
    ] {
        if let Some(x) = top.get(key) {
            if !x.is_null() && type_name(x) != want {
                return fail(format!("{key} must be a {want}"));
            }
        }
    }
    for (name, svc) in top
        .get("services")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(svc) = svc.as_object() else {
            return fail(format!("services.{name} must be a mapping"));
        };
        if let Some(e) = unknown_key(svc, SERVICE_KEYS, &format!("services.{name}")) {
            return fail(e);
        }
        for (k, x) in svc {
            let ok = match k.as_str() {
                "ports" | "expose" | "volumes" | "cap_add" | "cap_drop" | "devices"
                | "security_opt" | "profiles" | "configs" | "secrets" | "volumes_from"
                | "group_add" => x.is_array(),
                "environment" | "labels" | "extra_hosts" | "sysctls" | "depends_on"
                | "networks" => x.is_array() || x.is_object(),
                "command" | "entrypoint" | "dns" | "tmpfs" | "env_file" | "dns_search" => {
                    x.is_array() || x.is_string() || x.is_null()
                }
                "image" | "container_name" | "hostname" | "user" | "working_dir" | "restart"
                | "stop_signal" | "stop_grace_period" | "network_mode" | "pid" | "ipc" => {
                    x.is_string()
                }
                "init" | "privileged" | "read_only" | "tty" | "stdin_open" => x.is_boolean(),
                "healthcheck" | "deploy" | "logging" | "ulimits" | "extends" => {
                    x.is_object() || (k == "extends" && x.is_string())
                }
                "build" => x.is_string() || x.is_object(),
                _ => true,
            };
            if !ok {
                let want = match k.as_str() {
                    "ports" | "expose" | "volumes" | "cap_add" | "cap_drop" | "devices"
                    | "security_opt" | "profiles" | "configs" | "secrets" => "array",
                    "init" | "privileged" | "read_only" | "tty" | "stdin_open" => "boolean",
                    "image" | "container_name" | "hostname" | "user" | "working_dir"
                    | "restart" | "stop_signal" | "stop_grace_period" => "string",
                    "command" | "entrypoint" | "dns" | "tmpfs" | "env_file" | "dns_search" => {
                        "string or array"
                    }
                    "environment" | "labels" | "extra_hosts" | "sysctls" | "depends_on"
                    | "networks" => "object or array",
                    _ => "valid value",
                };
                return fail(format!(
                    "services.{name}.{k} must be a {want}, not {}",
                    type_name(x)
                ));
            }
        }
        if let Err(e) = validate_nested(name, svc) {
            return fail(e);
        }
    }
    for (section, keys) in DEFINITIONS {
        for (name, def) in top
            .get(*section)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            match def {
                Value::Null => {}
                Value::Object(m) => {
                    if let Some(e) = unknown_key(m, keys, &format!("{section}.{name}")) {
                        return fail(e);
                    }
                }
                other => {
                    return fail(format!(
                        "{section}.{name} must be a mapping, not {}",
                        type_name(other)
                    ))
                }
            }
        }
    }
    Ok(())
}

/// `KEY=V` lists and maps alike, as a map (a bare `KEY` in a list takes the value from
/// `env`, and is left out when unset, as compose does for `environment`).
fn list_or_map(v: &Value, env: Option<&HashMap<String, String>>) -> Map<String, Value> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                let s = match x {
                    Value::Null => env
                        .and_then(|e| e.get(k))
                        .map(|s| Value::String(s.clone()))
                        .unwrap_or(Value::Null),
                    Value::String(_) => x.clone(),
                    other => Value::String(other.to_string()),
                };
                (k.clone(), s)
            })
            .filter(|(_, x)| !x.is_null())
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .filter_map(|s| match s.split_once('=') {
                Some((k, v)) => Some((k.to_string(), Value::String(v.to_string()))),
                None => env
                    .and_then(|e| e.get(s))
                    .map(|v| (s.to_string(), Value::String(v.clone()))),
            })
            .collect(),
        _ => Map::new(),
    }
}

/// Merges `over` onto `base` by the specification's rules: mappings key by key, the
/// appended lists added up (without duplicates), anything else replaced.
pub fn merge(base: &mut Value, over: &Value, key: &str) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if !v.is_null() => merge(existing, v, k),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if APPENDED.contains(&key) => {
            for x in o {
                if !b.contains(x) {
                    b.push(x.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Brings `environment`, `labels`, `depends_on`, `networks`, `extra_hosts`, `sysctls` to
/// one shape before merging, so a list in one file and a map in another merge.
fn normalize_service(svc: &mut Value, env: &HashMap<String, String>) {
    let Some(m) = svc.as_object_mut() else {
        return;
    };
    if let Some(e) = m.get("environment") {
        let e = list_or_map(e, Some(env));
        m.insert("environment".into(), Value::Object(e));
    }
    for k in ["labels", "sysctls", "annotations"] {
        if let Some(x) = m.get(k) {
            let x = list_or_map(x, None);
            m.insert(k.into(), Value::Object(x));
        }
    }
    if let Some(Value::Array(a)) = m.get("depends_on") {
        let d: Map<String, Value> = a
            .iter()
            .filter_map(|s| s.as_str())
            .map(|s| {
                (
                    s.to_string(),
                    json!({"condition": "service_started", "required": true}),
                )
            })
            .collect();
        m.insert("depends_on".into(), Value::Object(d));
    }
    if let Some(Value::Object(d)) = m.get_mut("depends_on") {
        for c in d.values_mut() {
            if c.is_null() {
                *c = json!({});
            }
            if c.get("condition").is_none() {
                c["condition"] = json!("service_started");
            }
        }
    }
    if let Some(Value::Array(a)) = m.get("networks") {
        let n: Map<String, Value> = a
            .iter()
            .filter_map(|s| s.as_str())
            .map(|s| (s.to_string(), Value::Null))
            .collect();
        m.insert("networks".into(), Value::Object(n));
    }
    if let Some(Value::Object(h)) = m.get("extra_hosts") {
        let list: Vec<Value> = h
            .iter()
            .map(|(k, v)| json!(format!("{k}:{}", v.as_str().unwrap_or(""))))
            .collect();
        m.insert("extra_hosts".into(), Value::Array(list));
    }
    for k in ["dns", "tmpfs", "env_file", "dns_search"] {
        if let Some(Value::String(s)) = m.get(k) {
            let one = json!([s]);
            m.insert(k.into(), one);
        }
    }
}

struct Loader<'a> {
    env: &'a HashMap<String, String>,
    seen: BTreeSet<PathBuf>,
}

impl Loader<'_> {
    /// One file, its `include`s merged first; every service normalised.
    fn file(&mut self, path: &Path) -> Result<Value, String> {
        let path = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !self.seen.insert(path.clone()) {
            return Err(format!(
                "{}: included more than once (a cycle?)",
                path.display()
            ));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut v = parse_yaml(&text, &path)?;
        interpolate_all(&mut v, self.env, "").map_err(|e| format!("{}: {e}", path.display()))?;
        validate(&v, &path)?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        for svc in v["services"]
            .as_object_mut()
            .into_iter()
            .flatten()
            .map(|(_, s)| s)
        {
            normalize_service(svc, self.env);
        }
        let mut out = json!({});
        if let Some(inc) = v.as_object_mut().and_then(|m| m.remove("include")) {
            let list: Vec<Value> = match inc {
                Value::Array(a) => a,
                other => vec![other],
            };
            for item in list {
                let p = match &item {
                    Value::String(s) => s.clone(),
                    Value::Object(m) => match &m.get("path") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(a)) => {
                            a.first().and_then(Value::as_str).unwrap_or("").to_string()
                        }
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                if p.is_empty() {
                    return Err(format!("{}: include needs a path", path.display()));
                }
                let included = self.file(&dir.join(p))?;
                merge(&mut out, &included, "");
            }
        }
        // `extends` of another file is read relative to this one.
        for (_, svc) in v["services"].as_object_mut().into_iter().flatten() {
            if let Some(Value::Object(ext)) = svc.get_mut("extends") {
                if let Some(Value::String(f)) = ext.get("file") {
                    let abs = dir.join(f).display().to_string();
                    ext.insert("file".into(), json!(abs));
                }
            }
        }
        merge(&mut out, &v, "");
        Ok(out)
    }
}

/// `extends`: the base service (from this model or another file) under this one.
fn resolve_extends(model: &mut Value, env: &HashMap<String, String>) -> Result<(), String> {
    let names: Vec<String> = model["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for name in names {
        let mut chain = vec![name.clone()];
        loop {
            let svc = model["services"][&name].clone();
            let Some(ext) = svc.get("extends").cloned() else {
                break;
            };
            let (file, base_name) = match &ext {
                Value::String(s) => (None, s.clone()),
                Value::Object(m) => (
                    m.get("file").and_then(Value::as_str).map(String::from),
                    m.get("service")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                _ => (None, String::new()),
            };
            let base = match &file {
                Some(f) => {
                    let mut l = Loader {
                        env,
                        seen: BTreeSet::new(),
                    };
                    let other = l.file(Path::new(f))?;
                    other["services"][&base_name].clone()
                }
                None => {
                    if chain.contains(&base_name) {
                        return Err(format!(
                            "services.{name}.extends: circular reference through {base_name}"
                        ));
                    }
                    chain.push(base_name.clone());
                    model["services"][&base_name].clone()
                }
            };
            if !base.is_object() {
                return Err(format!(
                    "services.{name}.extends: cannot extend service {base_name:?}: not found"
                ));
            }
            let mut merged = base;
            if let Some(m) = merged.as_object_mut() {
                // What makes a service depend on others is not inherited.
                m.remove("depends_on");
            }
            let mut own = svc;
            own.as_object_mut().map(|m| m.remove("extends"));
            merge(&mut merged, &own, "");
            model["services"][&name] = merged;
        }
    }
    Ok(())
}

/// Dependency order (dependencies first); a cycle is an error naming it.
pub fn order(services: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a str,
        s: &'a Map<String, Value>,
        state: &mut HashMap<&'a str, u8>,
        out: &mut Vec<String>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                path.push(n);
                let from = path.iter().position(|p| *p == n).unwrap_or(0);
                return Err(format!(
                    "dependency cycle detected: {}",
                    path[from..].join(" -> ")
                ));
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for (dep, _) in s[n]["depends_on"].as_object().into_iter().flatten() {
            if !s.contains_key(dep) {
                continue;
            }
            visit(dep, s, state, out, path)?;
        }
        path.pop();
        state.insert(n, 2);
        out.push(n.to_string());
        Ok(())
    }
    for n in services.keys() {
        visit(n, services, &mut state, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// A project name as compose makes one: lower case, `[a-z0-9_-]`, starting with a letter
/// or digit.
pub fn normalize_name(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect::<String>()
        .trim_start_matches(['_', '-'])
        .to_string()
}

/// Loads the project: files, env, merge, extends, profiles, checks.
pub fn load(
    opts: &Options,
    process_env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Project, String> {
    let files: Vec<PathBuf> = if opts.files.is_empty() {
        vec![discover(cwd)?]
    } else {
        opts.files.iter().map(|f| cwd.join(f)).collect()
    };
    let dir = match &opts.project_dir {
        Some(d) => cwd.join(d),
        None => files[0].parent().unwrap_or(Path::new("/")).to_path_buf(),
    };
    // .env (or --env-file), then the process's environment over it.
    let mut env: HashMap<String, String> = HashMap::new();
    let env_files: Vec<PathBuf> = if opts.env_files.is_empty() {
        vec![dir.join(".env")]
    } else {
        opts.env_files.iter().map(|f| cwd.join(f)).collect()
    };
    for f in &env_files {
        match std::fs::read_to_string(f) {
            Ok(t) => env.extend(parse_env_file(&t)),
            Err(e) if !opts.env_files.is_empty() => {
                return Err(format!("{}: {e}", f.display()));
            }
            Err(_) => {}
        }
    }
    env.extend(process_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut model = json!({});
    for f in &files {
        let mut l = Loader {
            env: &env,
            seen: BTreeSet::new(),
        };
        let v = l.file(f)?;
        merge(&mut model, &v, "");
    }
    for k in ["services", "networks", "volumes"] {
        if !model[k].is_object() {
            model[k] = json!({});
        }
    }
    resolve_extends(&mut model, &env)?;
    // Profiles: a service with profiles runs only when one of them is on.
    let mut active: Vec<String> = opts.profiles.clone();
    if active.is_empty() {
        if let Some(p) = env.get("COMPOSE_PROFILES") {
            active = p
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    let mut inactive = Vec::new();
    if let Some(services) = model["services"].as_object_mut() {
        services.retain(|name, svc| {
            let profiles: Vec<&str> = svc["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let on = profiles.is_empty()
                || profiles
                    .iter()
                    .any(|p| active.iter().any(|a| a == p || a == "*"));
            if !on {
                inactive.push(name.clone());
            }
            on
        });
    }
    let services = model["services"].as_object().cloned().unwrap_or_default();
    for (name, svc) in &services {
        if svc.get("image").is_none() && svc.get("build").is_none() {
            return Err(format!(
                "service {name:?} has neither an image nor a build context specified"
            ));
        }
        for dep in svc["depends_on"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(d, _)| d)
        {
            if !services.contains_key(dep) {
                let required = svc["depends_on"][dep]["required"].as_bool().unwrap_or(true);
                if required && !inactive.contains(dep) {
                    return Err(format!(
                        "service {name:?} depends on undefined service {dep:?}"
                    ));
                }
            }
        }
    }
    order(&services)?;
    let name = opts
        .project_name
        .clone()
        .or_else(|| env.get("COMPOSE_PROJECT_NAME").cloned())
        .or_else(|| model["name"].as_str().map(String::from))
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".into())
        });
    let name = normalize_name(&name);
    if name.is_empty() {
        return Err("project name must not be empty".into());
    }
    Ok(Project {
        name,
        dir,
        files,
        model,
        inactive,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation_has_every_form() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        let i = |s: &str| interpolate(s, &e);
        assert_eq!(i("$A ${A} $$A").unwrap(), "x x $A");
        assert_eq!(
            i("${NOPE:-d} ${EMPTY:-d} ${EMPTY-d} ${NOPE-d}").unwrap(),
            "d d  d"
        );
        assert_eq!(
            i("${A:+y} ${EMPTY:+y} ${EMPTY+y} ${NOPE+y}").unwrap(),
            "y  y "
        );
        assert_eq!(i("${NOPE:-${A}}").unwrap(), "x");
        assert_eq!(i("cost: 5$").unwrap(), "cost: 5$");
        assert!(i("${NOPE:?must be set}")
            .unwrap_err()
            .contains("required variable NOPE is missing a value: must be set"));
        assert!(i("${EMPTY?set}").is_ok());
        assert!(i("${A").is_err());
    }

    #[test]
    fn env_files_read_like_compose() {
        let m = parse_env_file(
            "# c\nA=1\nexport B = two \nC=\"q # not a comment\"\nD=v # comment\nE\n",
        );
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two");
        assert_eq!(m["C"], "q # not a comment");
        assert_eq!(m["D"], "v");
        assert_eq!(m["E"], "");
    }

    #[test]
    fn anchors_merge_keys_and_lists_merge() {
        let v = parse_yaml(
            "x-base: &base\n  image: busybox\n  environment: [A=1]\nservices:\n  a:\n    <<: *base\n    command: true\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(v["services"]["a"]["image"], "busybox");
        let mut base = json!({"ports": ["80"], "command": ["a"], "environment": {"A": "1"}});
        merge(
            &mut base,
            &json!({"ports": ["81", "80"], "command": ["b"], "environment": {"B": "2"}}),
            "",
        );
        assert_eq!(base["ports"], json!(["80", "81"]));
        assert_eq!(base["command"], json!(["b"]));
        assert_eq!(base["environment"], json!({"A": "1", "B": "2"}));
    }

    #[test]
    fn validation_names_the_key_path() {
        let f = Path::new("/p/compose.yaml");
        let err = validate(&json!({"services": {"web": {"imagee": "x"}}}), f).unwrap_err();
        assert_eq!(
            err,
            "validating /p/compose.yaml: services.web additional properties 'imagee' not allowed"
        );
        let err = validate(&json!({"services": {"web": {"ports": "80:80"}}}), f).unwrap_err();
        assert!(
            err.contains("services.web.ports must be a array, not string"),
            "{err}"
        );
        let err = validate(&json!({"servics": {}}), f).unwrap_err();
        assert!(
            err.contains("additional properties 'servics' not allowed"),
            "{err}"
        );
        assert!(validate(
            &json!({"x-any": 1, "services": {"w": {"image": "b", "x-y": 2}}}),
            f
        )
        .is_ok());
        // Inside services and in the top-level definitions too.
        for (doc, want) in [
            (
                json!({"services": {"w": {"image": "b", "healthcheck": {"tset": ["CMD"]}}}}),
                "services.w.healthcheck additional properties 'tset' not allowed",
            ),
            (
                json!({"services": {"w": {"image": "b", "depends_on": {"db": {"condition": "service_ready"}}}}}),
                "services.w.depends_on.db.condition must be one of the following",
            ),
            (
                json!({"services": {"w": {"image": "b", "volumes": [{"source": "x", "target": "/x"}]}}}),
                "services.w.volumes.0 type is required",
            ),
            (
                json!({"services": {"w": {"image": "b", "ports": [{"target": 80, "publish": 8080}]}}}),
                "services.w.ports.0 additional properties 'publish' not allowed",
            ),
            (
                json!({"services": {"w": {"image": "b", "deploy": {"replicas": "two"}}}}),
                "services.w.deploy.replicas must be a integer",
            ),
            (
                json!({"services": {"w": {"image": "b"}}, "networks": {"n": {"drvier": "bridge"}}}),
                "networks.n additional properties 'drvier' not allowed",
            ),
            (
                json!({"services": {"w": {"image": "b"}}, "secrets": {"s": {"envirnoment": "X"}}}),
                "secrets.s additional properties 'envirnoment' not allowed",
            ),
        ] {
            let err = validate(&doc, f).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    /// Our key lists against the compose specification's JSON schema, when the specs are
    /// beside the checkout (they are not shipped with Berth).
    #[test]
    fn key_lists_match_the_compose_schema() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/specs/compose/compose-spec.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipped: no {}", path.display());
            return;
        };
        let schema: Value = serde_json::from_str(&text).unwrap();
        let names = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        let sorted = |v: &[&str]| -> Vec<String> {
            let mut k: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            k.sort();
            k
        };
        let defs = &schema["definitions"];
        assert_eq!(sorted(TOP_KEYS), names(&schema), "top-level keys");
        assert_eq!(
            sorted(SERVICE_KEYS),
            names(&defs["service"]),
            "service keys"
        );
        assert_eq!(
            sorted(allowed(NESTED, "healthcheck")),
            names(&defs["healthcheck"])
        );
        assert_eq!(
            sorted(allowed(NESTED, "deploy")),
            names(&defs["deployment"])
        );
        let svc = &defs["service"]["properties"];
        let object_of = |v: &Value| -> Value {
            v["oneOf"]
                .as_array()
                .or(v["items"]["oneOf"].as_array())
                .and_then(|a| a.iter().find(|o| o["type"] == "object").cloned())
                .unwrap_or_default()
        };
        assert_eq!(
            sorted(allowed(NESTED, "build")),
            names(&object_of(&svc["build"]))
        );
        assert_eq!(
            sorted(allowed(NESTED, "ports")),
            names(&object_of(&svc["ports"]))
        );
        assert_eq!(
            sorted(allowed(NESTED, "volumes")),
            names(&object_of(&svc["volumes"]))
        );
        let dep = svc["depends_on"]["oneOf"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["type"] == "object"))
            .and_then(|o| o["patternProperties"].as_object())
            .and_then(|p| p.values().next().cloned())
            .unwrap_or_default();
        assert_eq!(sorted(allowed(NESTED, "depends_on")), names(&dep));
        for (section, def) in [
            ("networks", "network"),
            ("volumes", "volume"),
            ("secrets", "secret"),
            ("configs", "config"),
        ] {
            assert_eq!(
                sorted(allowed(DEFINITIONS, section)),
                names(&defs[def]),
                "{section}"
            );
        }
    }

    #[test]
    fn order_puts_dependencies_first_and_finds_cycles() {
        let s = json!({"web": {"depends_on": {"db": {}}}, "db": {}, "cli": {"depends_on": {"web": {}}}});
        assert_eq!(
            order(s.as_object().unwrap()).unwrap(),
            vec!["db", "web", "cli"]
        );
        let c = json!({"a": {"depends_on": {"b": {}}}, "b": {"depends_on": {"a": {}}}});
        let err = order(c.as_object().unwrap()).unwrap_err();
        assert!(
            err.starts_with("dependency cycle detected: a -> b -> a"),
            "{err}"
        );
    }

    #[test]
    fn include_extends_profiles_and_several_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.yaml"), "services:\n  common:\n    image: busybox\n    environment: [FROM=base]\n    labels: {tier: base}\n").unwrap();
        std::fs::write(
            d.join("db.yaml"),
            "services:\n  db:\n    image: busybox:${DB_TAG:-1}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("compose.yaml"),
            "include: [db.yaml]\nservices:\n  web:\n    extends: {file: base.yaml, service: common}\n    environment: {OWN: '1'}\n    depends_on: [db]\n  local:\n    extends: web\n    command: 'true'\n  dbg:\n    image: busybox\n    profiles: [debug]\n",
        )
        .unwrap();
        std::fs::write(
            d.join("override.yaml"),
            "services:\n  web:\n    environment: {OWN: '2'}\n    ports: ['80']\n",
        )
        .unwrap();
        let opts = Options {
            files: vec!["compose.yaml".into(), "override.yaml".into()],
            ..Options::default()
        };
        let p = load(&opts, &env(&[("DB_TAG", "7")]), d).unwrap();
        let s = p.services();
        assert_eq!(s["db"]["image"], "busybox:7", "included, interpolated");
        assert_eq!(s["web"]["image"], "busybox", "extended from another file");
        assert_eq!(s["web"]["environment"], json!({"FROM": "base", "OWN": "2"}));
        assert_eq!(s["web"]["ports"], json!(["80"]));
        assert_eq!(
            s["local"]["environment"]["OWN"], "2",
            "extends within the model"
        );
        assert!(
            s["local"].get("depends_on").is_none(),
            "depends_on is not inherited"
        );
        assert!(!s.contains_key("dbg") && p.inactive == vec!["dbg".to_string()]);
        assert_eq!(
            p.name,
            normalize_name(&d.file_name().unwrap().to_string_lossy())
        );
        let with = Options {
            profiles: vec!["debug".into()],
            project_name: Some("Demo".into()),
            ..opts
        };
        let p = load(&with, &HashMap::new(), d).unwrap();
        assert!(p.services().contains_key("dbg"));
        assert_eq!(p.name, "demo");
        assert_eq!(p.services()["db"]["image"], "busybox:1");
    }

    #[test]
    fn services_normalise_lists_and_maps() {
        let mut s = json!({"environment": ["A=1", "HOMEVAR"], "depends_on": ["db"], "networks": ["front"],
            "extra_hosts": {"h": "1.2.3.4"}, "dns": "8.8.8.8", "labels": {"n": 5}});
        normalize_service(&mut s, &env(&[("HOMEVAR", "h")]));
        assert_eq!(s["environment"], json!({"A": "1", "HOMEVAR": "h"}));
        assert_eq!(s["depends_on"]["db"]["condition"], "service_started");
        assert_eq!(s["networks"], json!({"front": null}));
        assert_eq!(s["extra_hosts"], json!(["h:1.2.3.4"]));
        assert_eq!(s["dns"], json!(["8.8.8.8"]));
        assert_eq!(s["labels"]["n"], "5");
        assert_eq!(normalize_name("My App!"), "myapp");
    }
}
