//! The container record and the parts of the create body Berth acts on, in the Engine
//! API's shapes (so inspect can hand them back as clients sent them).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `Cmd`, `Entrypoint` and `Shell` are arrays, but old clients send a plain string.
fn str_or_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::One(s)) => Some(vec![s]),
        Some(Either::Many(v)) => Some(v),
    })
}

/// Docker clients send `null` for most things they leave unset; drop those keys so that
/// `#[serde(default)]` applies (recursively, in objects only).
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Config {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Vec<String>,
    #[serde(deserialize_with = "str_or_vec")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    pub image: String,
    pub volumes: Option<BTreeMap<String, Value>>,
    pub working_dir: String,
    #[serde(deserialize_with = "str_or_vec")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub network_disabled: bool,
    pub on_build: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    #[serde(
        deserialize_with = "str_or_vec",
        skip_serializing_if = "Option::is_none"
    )]
    pub shell: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: String,
    pub maximum_retry_count: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    #[serde(rename = "Type")]
    pub kind: String,
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub binds: Option<Vec<String>>,
    pub network_mode: String,
    pub port_bindings: BTreeMap<String, Value>,
    pub publish_all_ports: bool,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub log_config: LogConfig,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub dns: Vec<String>,
    pub dns_options: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Option<Vec<String>>,
    pub ipc_mode: String,
    pub pid_mode: String,
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub security_opt: Option<Vec<String>>,
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub shm_size: i64,
    pub sysctls: Option<BTreeMap<String, String>>,
    pub init: Option<bool>,
    pub memory: i64,
    pub memory_swap: i64,
    pub memory_reservation: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub pids_limit: Option<i64>,
    pub ulimits: Option<Vec<Ulimit>>,
    pub oom_kill_disable: Option<bool>,
    pub mounts: Option<Vec<Value>>,
    pub group_add: Option<Vec<String>>,
    pub devices: Option<Vec<DeviceMapping>>,
    /// [height, width] of the terminal the client runs on, for a pty of that size from the
    /// first byte (resizes come later, after the program may have asked).
    pub console_size: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

/// The create body: the container config with HostConfig and NetworkingConfig beside it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    #[serde(flatten)]
    pub config: Config,
    pub host_config: HostConfig,
    pub networking_config: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct State {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Value>,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl State {
    pub fn created() -> State {
        State {
            status: "created".into(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            ..State::default()
        }
    }
}

/// A volume mounted into a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub destination: String,
    pub rw: bool,
    /// Created for this container (removed with it by `rm -v`).
    pub anonymous: bool,
    /// `nocopy`: do not copy the image's content into a new volume.
    #[serde(default)]
    pub nocopy: bool,
}

/// What the daemon keeps of a container (`<data-root>/containers/<id>/container.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Without the leading '/'.
    pub name: String,
    pub created: String,
    /// The image ID (`sha256:` + config digest).
    pub image: String,
    pub path: String,
    pub args: Vec<String>,
    pub config: Config,
    pub host_config: HostConfig,
    pub state: State,
    pub restart_count: u32,
    /// Snapshot ids of the image's layers, bottom first.
    pub layers: Vec<String>,
    /// Set by stop/kill from a user, so restart policies leave the container down.
    #[serde(default)]
    pub stopped_by_user: bool,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// The networks it is connected to beside its network mode, and what it asked of
    /// each (`--ip`, aliases); kept while it is stopped.
    #[serde(default)]
    pub networks: BTreeMap<String, crate::networks::EndpointRequest>,
    /// While running on a bridge: its namespace, addresses and published ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::networks::Attachment>,
}

impl Record {
    /// The `Status` column of `docker ps`: "Up 3 minutes", "Exited (0) 2 seconds ago".
    pub fn status_text(&self, now: i64) -> String {
        let since = |t: &str| {
            berth_types::time::parse_rfc3339(t)
                .map(|s| berth_types::time::human_duration(now - s))
                .unwrap_or_default()
        };
        match self.state.status.as_str() {
            "running" if self.state.paused => {
                format!("Up {} (Paused)", since(&self.state.started_at))
            }
            "running" => {
                let health = match self
                    .state
                    .health
                    .as_ref()
                    .and_then(|h| h["Status"].as_str())
                {
                    Some("starting") => " (health: starting)",
                    Some("healthy") => " (healthy)",
                    Some("unhealthy") => " (unhealthy)",
                    _ => "",
                };
                format!("Up {}{health}", since(&self.state.started_at))
            }
            "exited" => format!(
                "Exited ({}) {} ago",
                self.state.exit_code,
                since(&self.state.finished_at)
            ),
            "restarting" => format!(
                "Restarting ({}) {} ago",
                self.state.exit_code,
                since(&self.state.finished_at)
            ),
            "created" => "Created".into(),
            "removing" => "Removal In Progress".into(),
            "dead" => "Dead".into(),
            other => other.to_string(),
        }
    }

    pub fn running(&self) -> bool {
        self.state.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_takes_nulls_strings_and_unknown_fields() {
        let mut v: Value = serde_json::from_str(
            r#"{"Image":"busybox","Cmd":"echo hi","Entrypoint":null,"Env":null,
                "HostConfig":{"Binds":null,"Memory":0,"AutoRemove":true,"Whatever":1},
                "Unknown":{"x":1}}"#,
        )
        .unwrap();
        strip_nulls(&mut v);
        let b: CreateBody = serde_json::from_value(v).unwrap();
        assert_eq!(b.config.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(b.config.entrypoint, None);
        assert!(b.host_config.auto_remove);
    }

    #[test]
    fn wrong_types_are_errors() {
        let v: Value = serde_json::from_str(r#"{"HostConfig":{"Memory":"lots"}}"#).unwrap();
        let e = serde_json::from_value::<CreateBody>(v).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn durations_read_as_docker_writes_them() {
        assert_eq!(berth_types::time::human_duration(0), "Less than a second");
        assert_eq!(berth_types::time::human_duration(5), "5 seconds");
        assert_eq!(berth_types::time::human_duration(90), "About a minute");
        assert_eq!(berth_types::time::human_duration(600), "10 minutes");
        assert_eq!(berth_types::time::human_duration(3 * 3600), "3 hours");
    }
}
