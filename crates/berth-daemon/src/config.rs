//! The daemon's settings: dockerd's flags and `daemon.json` keys, so a Docker setup
//! carries over. As in dockerd, a setting given both as a flag and in the file is an
//! error, and a key dockerd does not know is an error; keys dockerd knows but Berth does
//! not act on yet are accepted with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_CONFIG: &str = "/etc/berth/daemon.json";

/// What `daemon.json` may set (dockerd's key names).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct File {
    pub hosts: Option<Vec<String>>,
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub log_level: Option<String>,
    pub debug: Option<bool>,
    pub group: Option<String>,
    pub insecure_registries: Option<Vec<String>>,
    pub registry_mirrors: Option<Vec<String>>,
    pub max_concurrent_downloads: Option<usize>,
    pub max_concurrent_uploads: Option<usize>,
    pub bip: Option<String>,
    pub iptables: Option<bool>,
    pub live_restore: Option<bool>,
    pub default_ulimits: Option<BTreeMap<String, Value>>,
    pub log_driver: Option<String>,
    pub log_opts: Option<BTreeMap<String, String>>,
    pub default_address_pools: Option<Vec<AddressPool>>,
    pub ipv6: Option<bool>,
    pub fixed_cidr_v6: Option<String>,
    pub tls: Option<bool>,
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
}

/// One of `default-address-pools`: subnets of `size` bits cut from `base`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AddressPool {
    pub base: String,
    pub size: u8,
}

/// `--default-address-pool base=10.10.0.0/16,size=24`.
pub fn parse_address_pool(s: &str) -> Result<AddressPool, String> {
    let mut base = None;
    let mut size = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("base", v)) => base = Some(v.to_string()),
            Some(("size", v)) => size = v.parse::<u8>().ok(),
            _ => return Err(format!("invalid default address pool: {s}")),
        }
    }
    match (base, size) {
        (Some(base), Some(size)) => Ok(AddressPool { base, size }),
        _ => Err(format!(
            "invalid default address pool: {s} (base=CIDR,size=N)"
        )),
    }
}

/// Keys of dockerd's daemon.json that Berth accepts without acting on them (yet).
const IGNORED: &[&str] = &[
    "storage-driver",
    "storage-opts",
    "exec-opts",
    "features",
    "experimental",
    "metrics-addr",
    "dns",
    "dns-opts",
    "dns-search",
    "mtu",
    "fixed-cidr",
    "userland-proxy",
    "icc",
    "ip-forward",
    "ip-masq",
    "ip",
    "shutdown-timeout",
    "max-download-attempts",
    "default-runtime",
    "runtimes",
    "cgroup-parent",
    "seccomp-profile",
    "selinux-enabled",
    "userns-remap",
    "labels",
    "containerd",
    "no-new-privileges",
    "default-shm-size",
    "init",
    "log-format",
    "authorization-plugins",
    "default-cgroupns-mode",
    "default-ipc-mode",
    "builder",
    "proxies",
    "raw-logs",
    "api-cors-header",
    "oom-score-adjust",
];

/// Settings after flags and file are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub hosts: Vec<String>,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub config_file: PathBuf,
    pub log_level: String,
    pub group: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: Vec<String>,
    /// `<host:port>/ca.crt` and client certificates, beside the configuration file (as
    /// Docker keeps /etc/docker/certs.d beside /etc/docker/daemon.json).
    pub certs_dir: PathBuf,
    pub max_concurrent_downloads: usize,
    pub max_concurrent_uploads: usize,
    pub bip: Option<String>,
    /// Where networks without a subnet get theirs (Docker's pools when empty).
    pub default_address_pools: Vec<AddressPool>,
    /// IPv6 on the default bridge, on this subnet (`ipv6` + `fixed-cidr-v6`).
    pub fixed_cidr_v6: Option<String>,
    /// TLS for tcp hosts (`--tls`/`--tlsverify` and the three files).
    pub tls: Option<crate::tls::TlsFiles>,
    pub iptables: bool,
    pub live_restore: bool,
    /// name -> (soft, hard)
    pub default_ulimits: BTreeMap<String, (i64, i64)>,
    pub log_driver: String,
    pub log_opts: BTreeMap<String, String>,
}

/// Reads a daemon.json. A missing default file is an empty config; a missing file that
/// was named explicitly is an error.
pub fn read_file(path: &Path, explicit: bool) -> Result<(File, Vec<String>), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((File::default(), Vec::new()))
        }
        Err(e) => {
            return Err(format!(
                "unable to configure the daemon with file {}: {e}",
                path.display()
            ))
        }
    };
    if text.trim().is_empty() {
        return Ok((File::default(), Vec::new()));
    }
    let raw: serde_json::Map<String, Value> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "unable to configure the daemon with file {}: {e}",
            path.display()
        )
    })?;
    let known = [
        "hosts",
        "data-root",
        "exec-root",
        "pidfile",
        "log-level",
        "debug",
        "group",
        "insecure-registries",
        "registry-mirrors",
        "max-concurrent-downloads",
        "max-concurrent-uploads",
        "bip",
        "iptables",
        "live-restore",
        "default-ulimits",
        "log-driver",
        "log-opts",
        "default-address-pools",
        "ipv6",
        "fixed-cidr-v6",
        "tls",
        "tlsverify",
        "tlscacert",
        "tlscert",
        "tlskey",
    ];
    let mut unknown = Vec::new();
    let mut warnings = Vec::new();
    let mut kept = serde_json::Map::new();
    for (k, v) in raw {
        if known.contains(&k.as_str()) {
            kept.insert(k, v);
        } else if IGNORED.contains(&k.as_str()) {
            warnings.push(format!(
                "{k} in {} is not supported by Berth yet; ignored",
                path.display()
            ));
        } else {
            unknown.push(k);
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "the following directives don't match any configuration option: {}",
            unknown.join(", ")
        ));
    }
    let file: File = serde_json::from_value(Value::Object(kept)).map_err(|e| {
        format!(
            "unable to configure the daemon with file {}: {e}",
            path.display()
        )
    })?;
    Ok((file, warnings))
}

/// Parses `--default-ulimit nofile=1024:2048` (soft[:hard]).
pub fn parse_ulimit(s: &str) -> Result<(String, (i64, i64)), String> {
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid ulimit argument: {s}"))?;
    let (soft, hard) = vals.split_once(':').unwrap_or((vals, vals));
    let n = |x: &str| {
        x.parse::<i64>()
            .map_err(|_| format!("invalid ulimit argument: {s}"))
    };
    Ok((name.to_string(), (n(soft)?, n(hard)?)))
}

/// The flags of `berth daemon`, each None when not given.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub hosts: Vec<String>,
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub debug: bool,
    pub group: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: Vec<String>,
    pub max_concurrent_downloads: Option<usize>,
    pub max_concurrent_uploads: Option<usize>,
    pub bip: Option<String>,
    pub default_address_pools: Vec<String>,
    pub ipv6: bool,
    pub fixed_cidr_v6: Option<String>,
    pub tls: bool,
    pub tlsverify: bool,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub iptables: Option<bool>,
    pub live_restore: Option<bool>,
    pub default_ulimits: Vec<String>,
    pub log_driver: Option<String>,
    pub log_opts: Vec<String>,
}

/// Flags over file over defaults; a setting in both is dockerd's error.
pub fn merge(flags: &Flags, file: &File) -> Result<Settings, String> {
    let mut both = Vec::new();
    let mut check = |name: &str, flag: bool, in_file: bool| {
        if flag && in_file {
            both.push(name.to_string());
        }
    };
    check("hosts", !flags.hosts.is_empty(), file.hosts.is_some());
    check(
        "data-root",
        flags.data_root.is_some(),
        file.data_root.is_some(),
    );
    check(
        "exec-root",
        flags.exec_root.is_some(),
        file.exec_root.is_some(),
    );
    check("pidfile", flags.pidfile.is_some(), file.pidfile.is_some());
    check(
        "log-level",
        flags.log_level.is_some(),
        file.log_level.is_some(),
    );
    check("group", flags.group.is_some(), file.group.is_some());
    check("bip", flags.bip.is_some(), file.bip.is_some());
    check(
        "max-concurrent-downloads",
        flags.max_concurrent_downloads.is_some(),
        file.max_concurrent_downloads.is_some(),
    );
    check(
        "max-concurrent-uploads",
        flags.max_concurrent_uploads.is_some(),
        file.max_concurrent_uploads.is_some(),
    );
    check(
        "default-address-pools",
        !flags.default_address_pools.is_empty(),
        file.default_address_pools.is_some(),
    );
    check(
        "iptables",
        flags.iptables.is_some(),
        file.iptables.is_some(),
    );
    check(
        "live-restore",
        flags.live_restore.is_some(),
        file.live_restore.is_some(),
    );
    check(
        "log-driver",
        flags.log_driver.is_some(),
        file.log_driver.is_some(),
    );
    check(
        "log-opts",
        !flags.log_opts.is_empty(),
        file.log_opts.is_some(),
    );
    check(
        "default-ulimits",
        !flags.default_ulimits.is_empty(),
        file.default_ulimits.is_some(),
    );
    if !both.is_empty() {
        return Err(format!(
            "the following directives are specified both as a flag and in the configuration file: {}",
            both.join(", ")
        ));
    }
    let mut ulimits = BTreeMap::new();
    for (name, v) in file.default_ulimits.iter().flatten() {
        let soft = v["Soft"]
            .as_i64()
            .ok_or_else(|| format!("default-ulimits {name}: Soft"))?;
        let hard = v["Hard"]
            .as_i64()
            .ok_or_else(|| format!("default-ulimits {name}: Hard"))?;
        ulimits.insert(name.clone(), (soft, hard));
    }
    for u in &flags.default_ulimits {
        let (name, v) = parse_ulimit(u)?;
        ulimits.insert(name, v);
    }
    let mut log_opts: BTreeMap<String, String> = file.log_opts.clone().unwrap_or_default();
    for o in &flags.log_opts {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("invalid log-opt: {o}"))?;
        log_opts.insert(k.into(), v.into());
    }
    let log_level = if flags.debug || file.debug == Some(true) {
        "debug".to_string()
    } else {
        flags
            .log_level
            .clone()
            .or_else(|| file.log_level.clone())
            .unwrap_or_else(|| "info".into())
    };
    if !matches!(
        log_level.as_str(),
        "debug" | "info" | "warn" | "error" | "fatal"
    ) {
        return Err(format!("unable to parse logging level: {log_level}"));
    }
    let log_driver = flags
        .log_driver
        .clone()
        .or_else(|| file.log_driver.clone())
        .unwrap_or_else(|| "json-file".into());
    if !matches!(log_driver.as_str(), "json-file" | "none" | "local") {
        return Err(format!(
            "failed to set log opts: logging driver {log_driver:?} is not supported (json-file, none)"
        ));
    }
    let hosts = if !flags.hosts.is_empty() {
        flags.hosts.clone()
    } else {
        file.hosts
            .clone()
            .unwrap_or_else(|| vec!["unix:///run/berth/berth.sock".into()])
    };
    Ok(Settings {
        hosts,
        data_root: flags
            .data_root
            .clone()
            .or_else(|| file.data_root.clone())
            .unwrap_or_else(|| "/var/lib/berth".into()),
        exec_root: flags
            .exec_root
            .clone()
            .or_else(|| file.exec_root.clone())
            .unwrap_or_else(|| "/run/berth".into()),
        pidfile: flags.pidfile.clone().or_else(|| file.pidfile.clone()),
        config_file: flags
            .config_file
            .clone()
            .unwrap_or_else(|| DEFAULT_CONFIG.into()),
        log_level,
        group: flags.group.clone().or_else(|| file.group.clone()),
        insecure_registries: [
            flags.insecure_registries.clone(),
            file.insecure_registries.clone().unwrap_or_default(),
        ]
        .concat(),
        registry_mirrors: [
            flags.registry_mirrors.clone(),
            file.registry_mirrors.clone().unwrap_or_default(),
        ]
        .concat(),
        certs_dir: flags
            .config_file
            .clone()
            .unwrap_or_else(|| DEFAULT_CONFIG.into())
            .parent()
            .map(|p| p.join("certs.d"))
            .unwrap_or_else(|| "/etc/berth/certs.d".into()),
        max_concurrent_downloads: flags
            .max_concurrent_downloads
            .or(file.max_concurrent_downloads)
            .unwrap_or(3)
            .max(1),
        max_concurrent_uploads: flags
            .max_concurrent_uploads
            .or(file.max_concurrent_uploads)
            .unwrap_or(5)
            .max(1),
        bip: flags.bip.clone().or_else(|| file.bip.clone()),
        default_address_pools: match &file.default_address_pools {
            Some(p) => p.clone(),
            None => flags
                .default_address_pools
                .iter()
                .map(|p| parse_address_pool(p))
                .collect::<Result<_, _>>()?,
        },
        fixed_cidr_v6: {
            let on = flags.ipv6 || file.ipv6 == Some(true);
            let cidr = flags
                .fixed_cidr_v6
                .clone()
                .or_else(|| file.fixed_cidr_v6.clone());
            match (on, cidr) {
                (true, Some(c)) => Some(c),
                (true, None) => {
                    return Err(
                        "ipv6 on the default bridge needs fixed-cidr-v6 (an IPv6 subnet)".into(),
                    )
                }
                (false, _) => None,
            }
        },
        tls: {
            // dockerd's defaults: the files in ~/.docker.
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            let pick = |flag: &Option<PathBuf>, file: &Option<PathBuf>, name: &str| {
                flag.clone()
                    .or_else(|| file.clone())
                    .unwrap_or_else(|| PathBuf::from(format!("{home}/.docker/{name}")))
            };
            let verify = flags.tlsverify || file.tlsverify == Some(true);
            let on = verify || flags.tls || file.tls == Some(true);
            on.then(|| crate::tls::TlsFiles {
                verify,
                ca: pick(&flags.tlscacert, &file.tlscacert, "ca.pem"),
                cert: pick(&flags.tlscert, &file.tlscert, "cert.pem"),
                key: pick(&flags.tlskey, &file.tlskey, "key.pem"),
            })
        },
        iptables: flags.iptables.or(file.iptables).unwrap_or(true),
        live_restore: flags.live_restore.or(file.live_restore).unwrap_or(true),
        default_ulimits: ulimits,
        log_driver: if log_driver == "local" {
            "json-file".into()
        } else {
            log_driver
        },
        log_opts,
    })
}

/// The gid of a group in /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(json: &str) -> Result<(File, Vec<String>), String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.json");
        std::fs::write(&p, json).unwrap();
        read_file(&p, true)
    }

    #[test]
    fn address_pools_from_the_file_or_flags_not_both() {
        let (f, w) =
            file_of(r#"{"default-address-pools": [{"base": "10.1.0.0/16", "size": 24}]}"#).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let s = merge(&Flags::default(), &f).unwrap();
        assert_eq!(
            s.default_address_pools,
            vec![AddressPool {
                base: "10.1.0.0/16".into(),
                size: 24
            }]
        );
        let flags = Flags {
            default_address_pools: vec!["base=10.2.0.0/16,size=20".into()],
            ..Flags::default()
        };
        let s = merge(&flags, &File::default()).unwrap();
        assert_eq!(s.default_address_pools[0].size, 20);
        assert!(merge(&flags, &f)
            .unwrap_err()
            .contains("default-address-pools"));
        assert!(parse_address_pool("base=10.0.0.0/8").is_err());
        assert!(parse_address_pool("size=24,base=10.0.0.0/8").is_ok());
    }

    #[test]
    fn docker_daemon_json_carries_over() {
        let (f, warnings) = file_of(
            r#"{"data-root": "/srv/berth", "log-driver": "json-file",
                "log-opts": {"max-size": "5m"}, "storage-driver": "overlay2",
                "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1024, "Hard": 2048}},
                "live-restore": false}"#,
        )
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let s = merge(&Flags::default(), &f).unwrap();
        assert_eq!(s.data_root, PathBuf::from("/srv/berth"));
        assert_eq!(s.log_opts.get("max-size").unwrap(), "5m");
        assert_eq!(s.default_ulimits.get("nofile"), Some(&(1024, 2048)));
        assert!(!s.live_restore);
        assert_eq!(s.exec_root, PathBuf::from("/run/berth"));
    }

    #[test]
    fn unknown_keys_and_doubled_settings_are_errors() {
        let e = file_of(r#"{"data-rot": "/x"}"#).unwrap_err();
        assert!(
            e.contains("don't match any configuration option: data-rot"),
            "{e}"
        );
        let (f, _) = file_of(r#"{"data-root": "/x"}"#).unwrap();
        let flags = Flags {
            data_root: Some("/y".into()),
            ..Flags::default()
        };
        let e = merge(&flags, &f).unwrap_err();
        assert!(
            e.contains("both as a flag and in the configuration file: data-root"),
            "{e}"
        );
        assert!(file_of("{not json").is_err());
        assert!(read_file(Path::new("/nonexistent/daemon.json"), false).is_ok());
        assert!(read_file(Path::new("/nonexistent/daemon.json"), true).is_err());
    }
}
