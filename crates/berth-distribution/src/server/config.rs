//! `berth registry serve --config FILE`: a YAML file; command-line flags override it.
//!
//! ```yaml
//! addr: 127.0.0.1:5000
//! root: /var/lib/berth/registry
//! storage: filesystem          # or memory
//! readonly: false
//! limits: { blob: 10GiB, manifest: 4MiB }
//! tls: { cert: server.pem, key: server-key.pem }
//! auth:
//!   htpasswd: /etc/berth/htpasswd     # bcrypt entries
//!   realm: Berth Registry
//!   token:                            # bearer tokens from the built-in issuer at /token
//!     service: berth-registry
//!     issuer: berth-registry
//!     expiry: 300                     # seconds
//!   access:                           # none: every signed-in account may do everything
//!     - { account: alice, name: "alice/*", actions: [pull, push, delete] }
//!     - { account: "*", name: "*", actions: [pull] }   # any signed-in account
//!     - { account: anonymous, name: "public/*", actions: [pull] }
//! log: { access: stderr }             # off, stderr or a file
//! shutdown_timeout: 30                # seconds in-flight requests get after SIGTERM
//! upload_max_age: 168                 # hours before `gc` purges an abandoned upload
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Filesystem,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest blob an upload may make (bytes); none when unset.
    #[serde(deserialize_with = "size_opt")]
    pub blob: Option<u64>,
    /// Largest manifest body.
    #[serde(deserialize_with = "size")]
    pub manifest: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            blob: None,
            manifest: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients get tokens; this registry's own `/token` when unset.
    pub realm: Option<String>,
    pub service: String,
    pub issuer: String,
    pub expiry: u64,
    /// A file holding the signing key; a fresh random key each start when unset (tokens
    /// then end with the process, and clients simply ask again).
    pub key: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> TokenConfig {
        TokenConfig {
            realm: None,
            service: "berth-registry".into(),
            issuer: "berth-registry".into(),
            expiry: 300,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// An account, `*` for any signed-in one, `anonymous` for requests without credentials.
    pub account: String,
    /// A repository name, or a pattern with `*` (any run of characters, `/` included).
    pub name: String,
    /// `pull`, `push`, `delete`, or `*` for all three.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub htpasswd: Option<PathBuf>,
    pub realm: Option<String>,
    pub token: Option<TokenConfig>,
    pub access: Vec<AccessRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `off`, `stderr` or a file to append JSON lines to.
    pub access: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access: "stderr".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub storage: StorageKind,
    pub readonly: bool,
    pub limits: Limits,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
    pub log: LogConfig,
    pub shutdown_timeout: u64,
    pub upload_max_age: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            root: PathBuf::from("/var/lib/berth/registry"),
            storage: StorageKind::Filesystem,
            readonly: false,
            limits: Limits::default(),
            tls: None,
            auth: None,
            log: LogConfig::default(),
            shutdown_timeout: 30,
            upload_max_age: 168,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Config::parse(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let c: Config = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.auth {
            if a.htpasswd.is_none() {
                return Err(ConfigError::Invalid(
                    "auth needs an htpasswd file (auth.htpasswd)".into(),
                ));
            }
            for r in &a.access {
                for act in &r.actions {
                    if !matches!(act.as_str(), "pull" | "push" | "delete" | "*") {
                        return Err(ConfigError::Invalid(format!(
                            "access rule for {}: unknown action {act:?} (pull, push, delete, *)",
                            r.account
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `512`, `4MiB`, `10GB`, `1g`: bytes (binary and decimal units, as Docker's flags take).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("invalid size {s:?}")),
    };
    Ok((n * mult as f64) as u64)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Number(u64),
    Text(String),
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Number(n) => Ok(n),
        SizeValue::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

fn size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1500);
        assert_eq!(parse_size("2g").unwrap(), 2_000_000_000);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn the_documented_file_parses_and_bad_ones_say_why() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&doc).unwrap();
        assert_eq!(c.limits.blob, Some(10 << 30));
        assert_eq!(c.limits.manifest, 4 << 20);
        let a = c.auth.unwrap();
        assert_eq!(a.access.len(), 3);
        assert_eq!(a.token.unwrap().expiry, 300);
        assert_eq!(Config::parse("").unwrap().addr.port(), 5000);
        assert!(Config::parse("adr: x")
            .unwrap_err()
            .contains("unknown field"));
        assert!(Config::parse("storage: s3")
            .unwrap_err()
            .contains("unknown variant"));
        let e =
            Config::parse("auth: {htpasswd: /x, access: [{account: a, name: b, actions: [fly]}]}")
                .unwrap_err();
        assert!(e.contains("unknown action"), "{e}");
        assert!(Config::parse("auth: {}").unwrap_err().contains("htpasswd"));
    }
}
